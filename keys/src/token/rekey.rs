//! Proof that a member holds the private half of the new WireGuard key it asks a
//! certificate for when it rotates its key (`overlayctl rotate-key`). As at a join
//! ([`super::JoinProof`]), a public key proves nothing, so the member sends a MAC keyed by
//! the X25519 agreement of its new key and the admin's WireGuard key (the one in the
//! certificate the admin showed in the TLS handshake), over everything the rotation asks
//! for ([`RekeyClaim`]):
//!
//! ```text
//! dh    = X25519(new private, admin public)              refused if all zero
//! key   = HMAC-SHA256(key = "ovl-rekey-proof/1", dh)
//! proof = HMAC-SHA256(key, "ovl-rekey-proof/1" | network | CA fingerprint | name | number
//!                          | serial | old public | new public | admin public | control key)
//! ```
//!
//! Its own label keeps a rekey proof from ever passing for a join proof and back. The
//! serial and the old key bind it to the one certificate the member holds now (the one
//! its TLS handshake proved): replayed after the rotation, it names a certificate that is
//! no longer current and is refused.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::ProofError;
use crate::ed25519::{Fingerprint, VerifyingKey};
use crate::name::Name;
use crate::wire::Writer;
use crate::{KEY_LEN, PrivateKey, PublicKey};

/// Length of a [`RekeyProof`] in bytes.
pub const REKEY_PROOF_LEN: usize = 32;

const LABEL: &[u8] = b"ovl-rekey-proof/1";

/// What a rotation asks for, as both sides see it; the proof covers all of it.
#[derive(Debug, Clone, Copy)]
pub struct RekeyClaim<'a> {
    /// The network.
    pub network: &'a Name,
    /// Its CA's fingerprint.
    pub ca: Fingerprint,
    /// The member's name.
    pub name: &'a Name,
    /// The member's number.
    pub number: u32,
    /// The serial of the certificate it holds now.
    pub serial: u64,
    /// The WireGuard key that certificate names.
    pub old_key: &'a PublicKey,
    /// The member's control key.
    pub control_key: &'a VerifyingKey,
}

/// A member's proof that it holds its new WireGuard private key, bound to one rotation.
/// Compared only in constant time, by [`RekeyProof::verify`].
#[derive(Clone, Copy)]
pub struct RekeyProof([u8; REKEY_PROOF_LEN]);

impl RekeyProof {
    /// The member's side: proves it holds `new` to the admin whose WireGuard key is
    /// `admin`, for `claim`.
    pub fn prove(
        claim: &RekeyClaim<'_>,
        new: &PrivateKey,
        admin: &PublicKey,
    ) -> Result<RekeyProof, ProofError> {
        let key = agreement(new, admin)?;
        Ok(RekeyProof(
            mac(key.as_slice(), claim, &new.public_key(), admin)
                .finalize()
                .into_bytes()
                .into(),
        ))
    }

    /// The admin's side: whether this proves that the sender holds the private half of
    /// `new`, for `claim`, to the admin whose private WireGuard key is `admin`.
    pub fn verify(
        &self,
        claim: &RekeyClaim<'_>,
        new: &PublicKey,
        admin: &PrivateKey,
    ) -> Result<(), ProofError> {
        let key = agreement(admin, new)?;
        mac(key.as_slice(), claim, new, &admin.public_key())
            .verify_slice(&self.0)
            .map_err(|_| ProofError::Mismatch(*new))
    }

    /// Wraps the bytes a member sent.
    pub fn from_bytes(bytes: [u8; REKEY_PROOF_LEN]) -> RekeyProof {
        RekeyProof(bytes)
    }

    /// The raw bytes, to send.
    pub fn to_bytes(&self) -> [u8; REKEY_PROOF_LEN] {
        self.0
    }
}

impl fmt::Debug for RekeyProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RekeyProof(..)")
    }
}

fn agreement(
    mine: &PrivateKey,
    theirs: &PublicKey,
) -> Result<Zeroizing<[u8; KEY_LEN]>, ProofError> {
    let secret = mine.to_static_secret();
    let shared = secret.diffie_hellman(&theirs.to_dalek());
    if !shared.was_contributory() {
        return Err(ProofError::LowOrderKey(*theirs));
    }
    let mut extract = new_mac(LABEL);
    extract.update(shared.as_bytes());
    Ok(Zeroizing::new(extract.finalize().into_bytes().into()))
}

fn mac(key: &[u8], claim: &RekeyClaim<'_>, new: &PublicKey, admin: &PublicKey) -> Hmac<Sha256> {
    let mut w = Writer::with_capacity(LABEL.len() + 2 * 64 + 32 + 12 + 4 * KEY_LEN);
    w.bytes(LABEL);
    w.name(claim.network);
    w.bytes(claim.ca.as_bytes());
    w.name(claim.name);
    w.u32(claim.number);
    w.u64(claim.serial);
    w.bytes(claim.old_key.as_bytes());
    w.bytes(new.as_bytes());
    w.bytes(admin.as_bytes());
    w.bytes(claim.control_key.as_bytes());
    let mut mac = new_mac(key);
    mac.update(&w.finish());
    mac
}

fn new_mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;

    #[test]
    fn a_rekey_proof_binds_the_new_key_the_admin_and_the_certificate() {
        let network: Name = "prod".parse().unwrap();
        let name: Name = "h2".parse().unwrap();
        let control = SigningKey::from_seed([2; 32]).verifying_key();
        let old = PrivateKey::generate().public_key();
        let claim = RekeyClaim {
            network: &network,
            ca: SigningKey::from_seed([1; 32]).verifying_key().fingerprint(),
            name: &name,
            number: 7,
            serial: 9,
            old_key: &old,
            control_key: &control,
        };
        let new = PrivateKey::generate();
        let admin = PrivateKey::generate();
        let proof = RekeyProof::prove(&claim, &new, &admin.public_key()).unwrap();
        proof.verify(&claim, &new.public_key(), &admin).unwrap();
        // Someone else's key: the member does not hold it.
        let other = PrivateKey::generate().public_key();
        assert!(proof.verify(&claim, &other, &admin).is_err());
        // Another admin, another serial: refused.
        assert!(
            proof
                .verify(&claim, &new.public_key(), &PrivateKey::generate())
                .is_err()
        );
        let later = RekeyClaim {
            serial: 10,
            ..claim
        };
        assert!(proof.verify(&later, &new.public_key(), &admin).is_err());
        assert_eq!(format!("{proof:?}"), "RekeyProof(..)");
    }
}
