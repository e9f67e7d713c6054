//! CA rotation in the member core, without I/O (docs/ca-rotation.md).
//!
//! An admin rotates ([`Core::prepare_ca_rotation`], then [`Core::commit_ca_rotation`] once the
//! driver has saved the new key beside the old): a new CA, a transition record signed by
//! both (`protocol::records::ca`), the revocations and the policy signed again by the new
//! CA, unused tokens voided (they pin the old CA), its own certificate re-issued at once,
//! and all of it pushed to every member.
//!
//! Every member that takes the transition ([`Core::apply_ca_transition`], from a push or a
//! full sync) trusts both CAs until its end, saves it, presents and checks TLS with both
//! ([`Action::Trust`]), passes it on, and renews its own certificate under the new CA at
//! once (`renew`). At the end ([`Core::ca_tick`], once a second) the old CA is retired:
//! what it signed is dropped and refused, connections of members still on it close, and an
//! admin forgets what it issued under it, so that such a member can join again with a token.

use keys::CaKey;
use protocol::api::{CaRotateResponse, CaStatus};
use protocol::policy::SignedPolicy;
use protocol::records::ca::{CaTransition, SignedCaTransition};

use super::gossip::{TAG_REVOCATION, tagged};
use super::{Action, Core, LinkId, Now};
use crate::control::ApiFailure;
use crate::control::msg::Bundle;

/// A CA rotation prepared by [`Core::prepare_ca_rotation`]: save [`CaRotation::key`] (as the
/// next CA key), then hand it to [`Core::commit_ca_rotation`].
#[derive(Debug)]
#[must_use = "save the key, then commit it"]
pub struct CaRotation {
    key: CaKey,
    transition: SignedCaTransition,
}

impl CaRotation {
    /// The new CA key, to save before the rotation is committed.
    pub fn key(&self) -> &CaKey {
        &self.key
    }
}

/// The CA key this host's saved certificate is checked with at start: the network's, or
/// during a CA transition the retiring one if the certificate is still of it (not renewed
/// yet). `Err`: the one sentence for a certificate of a CA retired since.
pub fn own_certificate_ca(
    net: &crate::control::state::NetworkState,
    now_unix: u64,
) -> Result<keys::VerifyingKey, String> {
    let Ok(me) = net.certificate.unverified_body() else {
        return Ok(net.ca);
    };
    if me.ca_fingerprint == net.ca.fingerprint() {
        return Ok(net.ca);
    }
    let transition = net
        .ca_transition
        .as_deref()
        .and_then(|bytes| SignedCaTransition::from_bytes(bytes).ok());
    match transition.as_ref().map(SignedCaTransition::transition) {
        Some(t) if t.old.fingerprint() == me.ca_fingerprint && now_unix < t.end_unix => Ok(t.old),
        Some(t) if t.old.fingerprint() == me.ca_fingerprint => Err(format!(
            "this host's certificate (serial {}) is of CA {}, which the network retired at {} before this host renewed it; it cannot rejoin by itself: `overlayctl leave`, then join again with a token of the new CA, `overlayctl join TOKEN` (make one on an admin with `overlayctl token create`)",
            me.serial,
            me.ca_fingerprint,
            keys::Utc(t.end_unix)
        )),
        _ => Ok(net.ca),
    }
}

impl Core {
    /// The CA transition held, as bytes for a bundle.
    pub(super) fn transition_bytes(&self) -> Option<Vec<u8>> {
        self.dir().ca_transition().map(SignedCaTransition::to_bytes)
    }

    /// Whether this host's certificate is of another CA than the one in force (a
    /// transition is under way and it has not renewed yet).
    pub(super) fn needs_new_ca(&self) -> bool {
        self.me.ca_fingerprint != self.net.ca.fingerprint()
    }

    /// What `overlayctl status` shows of the CAs.
    pub(super) fn ca_status(&self) -> CaStatus {
        let previous = self.dir().trust().previous;
        CaStatus {
            certificate_ca: self.me.ca_fingerprint.to_string(),
            retiring_ca: previous.map(|(key, _)| key.fingerprint().to_string()),
            retires_unix: previous.map(|(_, end)| end),
        }
    }

    /// A CA transition received (a push or a full sync): taken if it follows from the CA
    /// in force (see `Directory::apply_transition`), then passed on to every member
    /// connected, and this host renews its certificate under the new CA.
    pub(super) fn apply_ca_transition(&mut self, bytes: &[u8], now: Now) {
        let applied = self.dir().apply_transition_bytes(bytes, Some(now.unix));
        match applied {
            Ok(false) => {}
            Ok(true) => {
                self.trust_changed();
                let (old, end) = self.dir().trust().previous.unwrap_or((self.net.ca, 0));
                tracing::info!(
                    new_ca = %self.net.ca.fingerprint(),
                    old_ca = %old.fingerprint(),
                    retires = %keys::Utc(end),
                    "the network's CA is being rotated; renewing this host's certificate under the new CA"
                );
                self.push_connected(
                    Bundle {
                        ca_transition: Some(bytes.to_vec()),
                        ..Bundle::default()
                    },
                    false,
                );
            }
            Err(e) => self
                .throttle
                .warn(now.instant, "refused a CA transition", &e),
        }
    }

    /// The CAs the directory trusts changed: the membership follows (saved), TLS follows,
    /// and a certificate of the old CA is renewed at once.
    fn trust_changed(&mut self) {
        let (ca, transition, previous) = {
            let dir = self.dir();
            (
                *dir.ca(),
                dir.ca_transition().map(SignedCaTransition::to_bytes),
                dir.trust().previous,
            )
        };
        self.net.ca = ca;
        self.net.ca_transition = transition;
        self.queue(Action::SaveNetwork(self.net.clone()));
        self.queue(Action::Trust { ca, previous });
        if self.needs_new_ca() {
            self.renew_soon();
        }
        self.dirty = true;
    }

    /// Presents this host's current certificate in TLS handshakes from now on (it kept its
    /// old-CA one during a transition: `renew`).
    fn present_current_identity(&mut self) {
        self.identity_deferred = None;
        self.queue(Action::Identity(self.net.certificate.clone()));
    }

    /// Once a second: retires the old CA at the end of a transition.
    pub(super) fn ca_tick(&mut self, now: Now) {
        if let Some(until) = self.identity_deferred
            && (self.dir().trust().previous.is_none()
                || now.unix.saturating_add(super::renew::IDENTITY_MARGIN_S) >= until)
        {
            self.present_current_identity();
        }
        let Some(old) = self.dir().trust().previous else {
            return;
        };
        let Some(dropped) = self.dir().retire(now.unix) else {
            return;
        };
        let network = self.net.network.clone();
        if self.admins.keep_signed_by(&self.net.ca, &network) {
            // Admin records of the retired CA (not signed again): refused from now on.
            self.queue(Action::SaveAdmins(self.admins.to_bytes()));
        }
        tracing::info!(
            retired_ca = %old.0.fingerprint(),
            ca = %self.net.ca.fingerprint(),
            members = ?dropped,
            "retired the network's old CA; members that did not renew under the new one are dropped and must join again with a token"
        );
        if let Some(admin) = self.admin.as_mut() {
            // Their certificates are void: the names are free for a join with a token.
            let mut changed = false;
            for name in &dropped {
                changed |= admin.issued.remove(name).is_some();
            }
            if changed {
                let admin = admin.clone();
                self.queue(Action::SaveAdmin(admin));
            }
        }
        self.trust_changed();
        if self.identity_deferred.is_some() {
            self.present_current_identity();
        }
        if self.needs_new_ca() {
            tracing::error!(
                name = %self.me.node,
                serial = self.me.serial,
                "this host's certificate (serial {}) is of CA {}, which the network retired at {} before this host renewed it; it cannot rejoin by itself: `overlayctl leave`, then join again with a token of the new CA, `overlayctl join TOKEN` (make one on an admin with `overlayctl token create`)",
                self.me.serial,
                self.me.ca_fingerprint,
                keys::Utc(old.1)
            );
        }
    }

    /// Another admin's rotation reached this admin: takes the new CA `key` (received over
    /// the admins' channel, saved with `StateDir::save_next_ca_key`) once this host holds
    /// the transition that puts it in force; the driver then calls
    /// `StateDir::finish_ca_rotation`. Until then this admin issues nothing (see
    /// [`Core::issuer`]), since its old key's certificates would be refused at the end.
    pub fn install_ca_key(&mut self, key: CaKey) -> Result<(), ApiFailure> {
        if self.admin.is_none() {
            return Err(ApiFailure::NotAdmin {
                action: "take a CA key",
            });
        }
        if key.verifying_key() != self.net.ca {
            return Err(ApiFailure::conflict(format!(
                "CA key {} is not the network's CA {}; it is taken once the transition to it has arrived",
                key.fingerprint(),
                self.net.ca.fingerprint()
            )));
        }
        self.ca_key = Some(key);
        if let Some(admin) = self.admin.as_mut() {
            admin.tokens.retain(|t| t.used_by.is_some());
            let admin = admin.clone();
            self.queue(Action::SaveAdmin(admin));
        }
        if self.needs_new_ca() {
            self.renew_soon();
        }
        Ok(())
    }

    /// After a CA rotation this admin made: what goes to every other admin, each on its
    /// newest current link (only members an active admin record names): the transition
    /// (sent first and awaited, so the receiver trusts the new CA), then the new CA key
    /// (base64) with the admin records signed by it. `None` with no other admin connected.
    /// With `only`: to that link alone, if it is an admin's, and only while the transition
    /// runs (at every full sync: an admin that was away at the rotation gets the key then;
    /// one that holds it already answers so).
    #[allow(clippy::type_complexity)]
    pub fn ca_key_handoff(
        &self,
        only: Option<LinkId>,
        now: Now,
    ) -> Option<(Vec<LinkId>, Bundle, String, Vec<Vec<u8>>)> {
        let key = self.ca_key.as_ref()?;
        if key.verifying_key() != self.net.ca {
            return None;
        }
        let mut links = self.admin_links(now);
        if let Some(only) = only {
            // Only while a transition runs.
            self.dir().trust().previous?;
            links.retain(|l| *l == only);
        }
        if links.is_empty() {
            return None;
        }
        let bundle = Bundle {
            ca_transition: self.transition_bytes(),
            ..Bundle::default()
        };
        Some((
            links,
            bundle,
            key.signing_key().to_base64().to_string(),
            self.admins.to_bytes(),
        ))
    }

    /// `overlayctl ca rotate` on an admin: a new CA and the transition to it, ending
    /// `transition_s` seconds from `now`. Refused on a member that is no admin, and while
    /// a transition is under way.
    pub fn prepare_ca_rotation(
        &self,
        transition_s: u64,
        now: Now,
    ) -> Result<CaRotation, ApiFailure> {
        let old = self.ca_key.as_ref().ok_or(ApiFailure::NotAdmin {
            action: "rotate the CA",
        })?;
        if let Some((_, end)) = self.dir().trust().previous {
            return Err(ApiFailure::conflict(format!(
                "a CA transition is under way until {}; rotate again after it",
                keys::Utc(end)
            )));
        }
        let key = CaKey::generate();
        let transition = CaTransition {
            network: self.net.network.clone(),
            old: old.verifying_key(),
            new: key.verifying_key(),
            start_unix: now.unix,
            end_unix: now.unix.saturating_add(transition_s),
        }
        .sign(old, &key)
        .map_err(|e| ApiFailure::bad(format!("{e} (give --transition of 10 s to a year)")))?;
        Ok(CaRotation { key, transition })
    }

    /// Puts a prepared rotation in force (see the module docs) once its key is saved; the
    /// driver then saves the membership and the admin's state (queued) and replaces the old
    /// CA key by the new one on disk.
    pub fn commit_ca_rotation(
        &mut self,
        rotation: CaRotation,
        now: Now,
    ) -> Result<CaRotateResponse, ApiFailure> {
        self.enter(now);
        let result = self.rotate(rotation, now);
        self.finish(now);
        result
    }

    fn rotate(&mut self, rotation: CaRotation, now: Now) -> Result<CaRotateResponse, ApiFailure> {
        let CaRotation { key, transition } = rotation;
        self.dir()
            .apply_transition(&transition, Some(now.unix))
            .map_err(|e| ApiFailure::internal(e.to_string()))?;
        let old = self.ca_key.replace(key);
        let Some(new) = self.ca_key.as_ref() else {
            return Err(ApiFailure::internal("no CA key"));
        };
        // What the old CA signed and the network keeps after it is retired: signed again.
        let (revocations, policy) = {
            let dir = self.dir();
            let old = old.as_ref().map(CaKey::fingerprint);
            let revocations: Vec<_> = dir
                .revocations()
                .filter(|r| Some(*r.ca()) == old)
                .map(|r| r.revocation().sign(new))
                .collect();
            let policy = dir
                .policy()
                .filter(|(_, signed)| Some(*signed.ca()) == old)
                .map(|(_, signed)| {
                    SignedPolicy::sign(
                        new,
                        &self.net.network,
                        signed.version() + 1,
                        now.unix,
                        signed.text(),
                    )
                })
                .transpose()
                .map_err(|e| ApiFailure::internal(e.to_string()))?;
            (revocations, policy)
        };
        {
            let mut dir = self.dir();
            for r in &revocations {
                let _ = dir.apply_revocation(r);
            }
            if let Some(policy) = &policy {
                let _ = dir.apply_policy(policy);
            }
        }
        for r in &revocations {
            let _ = self
                .foca
                .add_broadcast(&tagged(TAG_REVOCATION, &r.to_bytes()));
        }
        if let Some(admin) = self.admin.as_mut() {
            // Unused tokens pin the old CA: void.
            admin.tokens.retain(|t| t.used_by.is_some());
            let admin = admin.clone();
            self.queue(Action::SaveAdmin(admin));
        }
        self.trust_changed();
        if !self.admins.is_empty() {
            // The admin records, signed again by the new CA (the old CA's are dropped at the
            // end); token records are signed when sent, so by the new CA from now on.
            if let Some(new) = self.ca_key.as_ref() {
                self.admins.resign(new);
            }
            self.queue(Action::SaveAdmins(self.admins.to_bytes()));
            self.send_admin_records();
        }
        // This admin's own certificate under the new CA, at once.
        self.renew_own(now);
        let t = transition.transition().clone();
        tracing::info!(
            old_ca = %t.old.fingerprint(),
            new_ca = %t.new.fingerprint(),
            retires = %keys::Utc(t.end_unix),
            revocations = revocations.len(),
            policy = policy.is_some(),
            "rotated the network's CA; members renew under the new one until the old one is retired"
        );
        // Pushed without waiting for acks: this task keeps answering SWIM probes meanwhile
        // (a member down would hold it up for the whole wait). Members not connected get it
        // with this host's record when a connection comes up, and in every full sync.
        let bundle = Bundle {
            revocations: revocations.iter().map(|r| r.to_bytes()).collect(),
            policy: policy.as_ref().map(SignedPolicy::to_bytes),
            ca_transition: Some(transition.to_bytes()),
            ..self.own_bundle()
        };
        for addr in self.control_addrs() {
            self.connect(addr);
        }
        self.push_connected(bundle, false);
        Ok(CaRotateResponse {
            old_ca: t.old.fingerprint().to_string(),
            new_ca: t.new.fingerprint().to_string(),
            retires_unix: t.end_unix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::state::NetworkState;
    use keys::{Name, NodeCertificate, PrivateKey, SigningKey};

    fn net(old: &CaKey, new: &CaKey, end: u64) -> NetworkState {
        let certificate = old
            .sign(&NodeCertificate {
                network: Name::new("net").unwrap(),
                node: Name::new("h2").unwrap(),
                wireguard_key: PrivateKey::generate().public_key(),
                control_key: SigningKey::generate().verifying_key(),
                subnets: vec!["10.42.2.0/24".parse().unwrap()],
                groups: Vec::new(),
                not_before: 0,
                not_after: 10_000,
                serial: 2,
                number: 2,
                ca_fingerprint: old.fingerprint(),
            })
            .unwrap();
        let transition = CaTransition {
            network: Name::new("net").unwrap(),
            old: old.verifying_key(),
            new: new.verifying_key(),
            start_unix: 1000,
            end_unix: end,
        }
        .sign(old, new)
        .unwrap();
        NetworkState {
            network: Name::new("net").unwrap(),
            cidr: "10.42.0.0/16".parse().unwrap(),
            ranges: Vec::new(),
            subnet_prefix: 24,
            ca: new.verifying_key(),
            certificate,
            generation: 1,
            record_version: 1,
            left: false,
            renewed_unix: None,
            bootstrap: Vec::new(),
            ca_transition: Some(transition.to_bytes()),
            wireguard_key_since: None,
        }
    }

    #[test]
    fn a_certificate_not_renewed_yet_starts_until_the_end_then_is_told_to_join_again() {
        let (old, new) = (CaKey::generate(), CaKey::generate());
        let state = net(&old, &new, 1030);
        // Restarted during the transition: checked against the retiring CA.
        assert_eq!(own_certificate_ca(&state, 1010), Ok(old.verifying_key()));
        // After it: the one clear sentence.
        let e = own_certificate_ca(&state, 1030).unwrap_err();
        assert!(
            e.contains("retired") && e.contains("overlayctl join"),
            "{e}"
        );
        // Without a transition saved (an old state dir): the network's CA, as before.
        let mut plain = state.clone();
        plain.ca_transition = None;
        assert_eq!(own_certificate_ca(&plain, 1010), Ok(new.verifying_key()));
    }
}
