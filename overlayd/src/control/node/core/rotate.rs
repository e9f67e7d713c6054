//! WireGuard key rotation, without I/O (`overlayctl rotate-key`, `[control]
//! key_rotation_days`; see `docs/key-rotation.md`).
//!
//! The driver makes the new key (the core has no key randomness) and saves it beside the
//! key file before it hands it to [`Core::rotate_key`]. A member then asks an admin on a
//! member connection (`Request::Rekey`, the same candidates as a renewal) with a proof that
//! it holds the new key, made to the admin's WireGuard key from the certificate the
//! connection proved. The admin checks the proof against the certificate the connection
//! proved and re-issues it with the new key ([`Core::rekey_member`], `admin::rekey`),
//! saved before it answers. An admin re-issues its own.
//!
//! The member installs the certificate (a re-issue of its own with the new key), signs
//! and gossips its record, saves the membership, and only then queues
//! [`Action::WireguardKey`]: the driver replaces the key file and switches the router,
//! which keeps answering handshakes to the old key for the grace (`router::rotation`).
//! A crash in between leaves the certificate naming the key saved beside the key file,
//! which the next start takes (`control::rotate_files`).

use std::time::{Duration, Instant};

use keys::{PrivateKey, PublicKey, RekeyProof};
use protocol::api::RotateKeyResponse;

use super::{Action, AdminChange, Core, LinkId, Now};
use crate::control::ApiFailure;
use crate::control::admin::{Refused, RekeyAsk, rekey_claim};
use crate::control::msg::{Request, Response};

/// How long an answer to a rotation may take before it counts as failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an automatic rotation waits after a failed one.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Where a rotation stands.
#[derive(Debug, Default)]
pub(super) struct Rotation {
    /// The new key, while a `Request::Rekey` for it is out on this link since then.
    asking: Option<(PrivateKey, LinkId, Instant)>,
    /// No automatic rotation before this.
    not_before: Option<Instant>,
    /// An automatic rotation was asked of the driver and has not come back yet.
    requested: bool,
}

impl Core {
    /// `overlayctl rotate-key` (or an automatic rotation): rotates this host's WireGuard
    /// key to `new`. An admin re-issues its own certificate: the change to save, then
    /// [`Core::commit_rotation`]. A member asks an admin: `Ok(None)`, and the outcome comes
    /// from [`Core::handle_rekeyed`].
    pub fn rotate_key(
        &mut self,
        new: PrivateKey,
        now: Now,
    ) -> Result<Option<AdminChange<(PrivateKey, keys::SignedCertificate)>>, ApiFailure> {
        self.rotation.requested = false;
        if self.rotation.asking.is_some() {
            return Err(ApiFailure::conflict(
                "a key rotation is already under way; wait for it to finish",
            ));
        }
        if self.ca_key.is_some() {
            let (Some(issuer), Some(admin)) = (self.issuer(), self.admin.as_ref()) else {
                return Err(ApiFailure::internal("no CA key"));
            };
            let mut admin = admin.clone();
            let cert = issuer
                .rekey(
                    &mut admin,
                    &self.dir(),
                    &self.me,
                    new.public_key(),
                    now.unix,
                )
                .map_err(|e| ApiFailure::conflict(e.0))?;
            return Ok(Some(AdminChange {
                admin,
                answer: (new, cert),
            }));
        }
        let Some(link) = self.rekey_target() else {
            for addr in self.net.bootstrap.clone() {
                self.connect(addr);
            }
            return Err(ApiFailure::remote(
                "no admin is connected to ask for a certificate with the new key; try again once the network is reachable",
            ));
        };
        let admin_key = self.links[&link].peer.wireguard_key;
        let proof = RekeyProof::prove(&rekey_claim(&self.me), &new, &admin_key)
            .map_err(|e| ApiFailure::internal(e.to_string()))?;
        let request = Request::Rekey {
            wireguard_key: new.public_key(),
            proof: proof.to_bytes(),
        };
        tracing::info!(new_key = %new.public_key(), "asking for a certificate with a new WireGuard key");
        self.rotation.asking = Some((new, link, now.instant));
        self.queue(Action::Rekey { link, request });
        Ok(None)
    }

    /// The link to ask: the renewal's choice (a bootstrap host first).
    fn rekey_target(&mut self) -> Option<LinkId> {
        self.renewal_target()
    }

    /// Takes a saved rotation of an admin's own key.
    pub fn commit_rotation(
        &mut self,
        change: AdminChange<(PrivateKey, keys::SignedCertificate)>,
        now: Now,
    ) -> Result<RotateKeyResponse, ApiFailure> {
        self.enter(now);
        let (new, cert) = self.commit(change);
        let result = self
            .install_rotated(new, &cert.to_bytes(), now)
            .map_err(ApiFailure::internal);
        self.finish(now);
        result
    }

    /// The answer to [`Action::Rekey`] on `link` (`Err`: the request failed). The outcome
    /// goes to the driver as [`Action::RotationDone`], for the operator who asked.
    pub fn handle_rekeyed(&mut self, link: LinkId, answer: Result<Response, String>, now: Now) {
        if self.rotation.asking.as_ref().map(|(_, l, _)| *l) != Some(link) {
            return;
        }
        let Some((new, _, _)) = self.rotation.asking.take() else {
            return;
        };
        self.enter(now);
        let result = match answer {
            Ok(Response::Renewed { certificate }) => self.install_rotated(new, &certificate, now),
            Ok(Response::Refused(reason)) => Err(reason),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e),
        };
        self.rotation_done(result, now);
        self.finish(now);
    }

    fn rotation_done(&mut self, result: Result<RotateKeyResponse, String>, now: Now) {
        if let Err(e) = &result {
            tracing::warn!(error = %e, "WireGuard key rotation failed; the key is unchanged");
            self.rotation.not_before = Some(now.instant + RETRY_AFTER);
        }
        self.queue(Action::RotationDone(result));
    }

    /// Installs `bytes`, this host's certificate re-issued with the WireGuard key `new`,
    /// and queues the switch of the key file and the tunnels.
    fn install_rotated(
        &mut self,
        new: PrivateKey,
        bytes: &[u8],
        now: Now,
    ) -> Result<RotateKeyResponse, String> {
        let old = self.me.wireguard_key;
        // A re-issue of this certificate with the new key is what `install_certificate`
        // checks for once it expects the new key.
        self.me.wireguard_key = new.public_key();
        if let Err(e) = self.install_certificate(bytes, now) {
            self.me.wireguard_key = old;
            return Err(e);
        }
        self.net.wireguard_key_since = Some(now.unix);
        self.queue(Action::SaveNetwork(self.net.clone()));
        self.wireguard_key = new.clone();
        tracing::info!(old_key = %old, new_key = %new.public_key(), serial = self.me.serial, "rotated this host's WireGuard key");
        self.queue(Action::WireguardKey(new.clone()));
        Ok(RotateKeyResponse {
            public_key: new.public_key(),
            old_public_key: old,
            serial: self.me.serial,
        })
    }

    /// Once a second: asks the driver for an automatic rotation when the key is
    /// `key_rotation_s` old, and gives up on an answer that does not come.
    pub(super) fn rotation_tick(&mut self, now: Now) {
        if let Some((_, _, since)) = &self.rotation.asking
            && now.instant >= *since + ANSWER_TIMEOUT
        {
            self.rotation.asking = None;
            self.rotation_done(Err("the admin did not answer".into()), now);
            return;
        }
        let Some(every) = self.settings.key_rotation_s else {
            return;
        };
        if self.rotation.asking.is_some()
            || self.rotation.requested
            || self.rotation.not_before.is_some_and(|t| now.instant < t)
        {
            return;
        }
        let since = *self.net.wireguard_key_since.get_or_insert(now.unix);
        if now.unix >= since.saturating_add(every) {
            self.rotation.requested = true;
            self.rotation.not_before = Some(now.instant + RETRY_AFTER);
            tracing::info!(
                age_s = now.unix - since,
                "this host's WireGuard key is due for rotation ([control] key_rotation_days)"
            );
            self.queue(Action::RotateKey);
        }
    }

    /// A member asks on `link` for its certificate with a new WireGuard key: the admin
    /// checks the proof against the certificate the link proved (or its renewal held
    /// since) and re-issues it with the key.
    pub(super) fn rekey_member(
        &mut self,
        link: LinkId,
        wireguard_key: PublicKey,
        proof: [u8; keys::REKEY_PROOF_LEN],
        now: Now,
    ) -> Result<AdminChange<super::Admission>, Refused> {
        let Some(peer) = self.links.get(&link).map(|l| l.peer.clone()) else {
            return Err(Refused(
                "key rotation refused: the connection is gone".into(),
            ));
        };
        if self.ca_key.is_none() {
            return Err(Refused(
                "this host is not an admin of the network; ask the host that made it".into(),
            ));
        }
        RekeyAsk {
            wireguard_key,
            proof: RekeyProof::from_bytes(proof),
        }
        .verify(&peer, &self.wireguard_key)?;
        let (Some(issuer), Some(admin)) = (self.issuer(), self.admin.as_ref()) else {
            return Err(Refused("no CA key".into()));
        };
        let mut admin = admin.clone();
        let cert = issuer.rekey(&mut admin, &self.dir(), &peer, wireguard_key, now.unix)?;
        tracing::info!(name = %peer.node, old_key = %peer.wireguard_key, new_key = %wireguard_key, "re-issued a member's certificate with its new WireGuard key");
        Ok(AdminChange {
            admin,
            answer: super::Admission {
                name: peer.node,
                response: Response::Renewed {
                    certificate: cert.to_bytes(),
                },
            },
        })
    }
}
