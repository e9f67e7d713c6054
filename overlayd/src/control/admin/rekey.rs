//! The admin's side of a WireGuard key rotation (`overlayctl rotate-key`, see
//! `docs/key-rotation.md`): a member asks, on a connection whose TLS handshake proved its
//! certificate, for that certificate with a new WireGuard key; the admin checks the
//! member's proof that it holds the new key ([`RekeyAsk::verify`]) and re-issues the
//! certificate with it ([`Issuer::rekey`]): the same name, control key, subnets, groups
//! and number, a new serial and expiry.
//!
//! A key is certified to one member once: never a key another member holds, one that was
//! revoked, or one any member rotated away from (kept in [`AdminState::retired_keys`]), so
//! that a stolen old key, or a member re-using a key another retired, gets no certificate.

use keys::{
    Name, NodeCertificate, PrivateKey, PublicKey, RekeyClaim, RekeyProof, SignedCertificate,
};
use protocol::records::Directory;

use super::{Issuer, Refused, holders};
use crate::control::state::AdminState;

/// The most retired keys an admin remembers; the oldest go first (a key that old has
/// long been out of every certificate that is still valid).
const MAX_RETIRED_KEYS: usize = 100_000;

/// What a member's `Request::Rekey` asks for.
#[derive(Debug, Clone, Copy)]
pub struct RekeyAsk {
    /// The new WireGuard key.
    pub wireguard_key: PublicKey,
    /// The proof that the member holds it.
    pub proof: RekeyProof,
}

impl RekeyAsk {
    /// Checks the proof for the member whose current certificate is `current` (the one its
    /// connection proved), made to the admin whose WireGuard key is `admin`.
    pub fn verify(&self, current: &NodeCertificate, admin: &PrivateKey) -> Result<(), Refused> {
        let claim = claim(current);
        self.proof
            .verify(&claim, &self.wireguard_key, admin)
            .map_err(|_| {
                Refused(format!(
                    "key rotation refused: {} did not prove that it holds the private key of WireGuard key {}",
                    current.node, self.wireguard_key
                ))
            })
    }
}

/// What a rotation's proof covers, from the certificate the member holds now.
pub fn claim(current: &NodeCertificate) -> RekeyClaim<'_> {
    RekeyClaim {
        network: &current.network,
        ca: current.ca_fingerprint,
        name: &current.node,
        number: current.number,
        serial: current.serial,
        old_key: &current.wireguard_key,
        control_key: &current.control_key,
    }
}

impl Issuer<'_> {
    /// Re-issues `current` (verified by the caller: proven in a TLS handshake, or the
    /// admin's own) with the WireGuard key `new`, as [`Issuer::reissue`] would otherwise,
    /// and remembers the old key as retired. Refused for a key that is the current one, one
    /// that was revoked or retired, or one another member holds; and for all that
    /// `reissue` refuses (a name given away, a member that left or was revoked).
    pub fn rekey(
        &self,
        admin: &mut AdminState,
        dir: &Directory,
        current: &NodeCertificate,
        new: PublicKey,
        now: u64,
    ) -> Result<SignedCertificate, Refused> {
        let name = &current.node;
        if new == current.wireguard_key {
            return Err(Refused(format!(
                "key rotation refused: WireGuard key {new} is the one {name} holds now; rotate to a new key"
            )));
        }
        if dir.is_revoked(&new) {
            return Err(Refused(format!(
                "key rotation refused: WireGuard key {new} was revoked"
            )));
        }
        if let Some((owner, _)) = admin.retired_keys.iter().find(|(_, k)| *k == new) {
            return Err(Refused(format!(
                "key rotation refused: WireGuard key {new} was retired by {owner}; a retired key is never certified again"
            )));
        }
        if let Some((other, _)) = holders(admin, dir, now)
            .into_iter()
            .find(|(_, k)| **k == new)
        {
            return Err(Refused(format!(
                "key rotation refused: WireGuard key {new} is held by member {other}; every host needs its own key"
            )));
        }
        let mut next = admin.clone();
        let reissued = self.reissue(&mut next, dir, current, None, now)?;
        let mut cert = reissued
            .unverified_body()
            .map_err(|e| Refused(format!("cannot read the certificate just issued: {e}")))?;
        cert.wireguard_key = new;
        let signed = self
            .ca
            .sign(&cert)
            .map_err(|e| Refused(format!("cannot sign the certificate: {e}")))?;
        if let Some(issued) = next.issued.get_mut(name) {
            issued.wireguard_key = new;
        }
        retire(&mut next, name, current.wireguard_key);
        *admin = next;
        Ok(signed)
    }
}

/// Remembers that `name` rotated away from `key`.
fn retire(admin: &mut AdminState, name: &Name, key: PublicKey) {
    if admin.retired_keys.iter().any(|(_, k)| *k == key) {
        return;
    }
    if admin.retired_keys.len() >= MAX_RETIRED_KEYS {
        admin.retired_keys.remove(0);
    }
    admin.retired_keys.push((name.clone(), key));
}
