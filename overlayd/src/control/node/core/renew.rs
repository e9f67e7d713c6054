//! Certificate renewal, without I/O: when this host asks an admin for a re-issued
//! certificate, how it retries, how it installs one (its own renewal, or one an admin
//! pushed after `overlayctl node groups`), and the admin's side of both.
//!
//! A member asks once two thirds of its certificate's lifetime have passed
//! ([`renew_at`]): a `Request::Renew` on the connection to an admin (the hosts it joined
//! through first, then any member, since non-admins refuse), answered with
//! `Response::Renewed`. The admin re-issues the certificate the member proved in the TLS
//! handshake of that very connection (same name, keys, subnets, number; new serial and
//! expiry; see `admin::Issuer::reissue`), so a member can only ever renew what it holds.
//! A failure is retried with back-off (1 s doubling to a minute, never past a quarter of
//! the time left). An admin renews its own without asking anyone.
//!
//! Installing a certificate ([`Core::install_certificate`]) checks it names this host as
//! it is (CA, name, both keys, subnets, number) with a higher serial, then: this host's
//! record is signed again with it and gossiped and pushed, the membership is saved, and the
//! driver switches the control plane's TLS identity ([`Action::Identity`]). The data plane
//! is untouched: the WireGuard key and subnets are the same, so no tunnel changes.
//!
//! Peers follow a renewal on connections already open ([`Core::follow_renewals`]): the
//! certificate a link's peer proved is replaced by the renewed one in the directory (same
//! name, number and control key, the key the TLS handshake proved), so the link outlives
//! the first certificate's expiry.
//!
//! Within [`WARN_BEFORE_S`] of its expiry this host logs a warning every hour; a host whose
//! certificate expired (it was offline past it) logs one error telling the operator to
//! join again.

use std::time::{Duration, Instant};

use keys::{NodeCertificate, SignedCertificate};

use protocol::api::{NodeGroupsRequest, NodeGroupsResponse};

use super::{Action, Core, LinkId, Now};
use crate::control::ApiFailure;
use crate::control::admin::{NOT_BEFORE_SLACK_S, Refused};
use crate::control::msg::Response;

/// How long before its expiry a host warns of it, every [`WARN_EVERY`].
pub const WARN_BEFORE_S: u64 = 7 * 86_400;
/// How often the warning repeats.
const WARN_EVERY: Duration = Duration::from_secs(3600);
/// The first retry after a failed renewal; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long an answer to a renewal may take before it counts as failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The unix second at which a certificate is renewed: two thirds into its lifetime, counted
/// from its issue (its `not_before` is [`NOT_BEFORE_SLACK_S`] earlier).
pub fn renew_at(cert: &NodeCertificate) -> u64 {
    let issued = cert
        .not_before
        .saturating_add(NOT_BEFORE_SLACK_S)
        .min(cert.not_after);
    issued + (cert.not_after - issued) / 3 * 2
}

/// Where a renewal stands.
#[derive(Debug, Default)]
pub(super) struct Renewal {
    /// A `Request::Renew` out since then, on this link.
    asking: Option<(LinkId, Instant)>,
    /// No attempt before this.
    not_before: Option<Instant>,
    /// The wait after the next failure.
    backoff: Duration,
    /// Attempts since the last success: which member to ask next.
    attempts: usize,
    /// When the expiry warning last went out.
    warned: Option<Instant>,
    /// The serial whose expiry was reported as final.
    expired_reported: Option<u64>,
}

impl Core {
    /// Once a second: warns of a near expiry, reports an expired certificate, and asks for
    /// a renewal when one is due.
    pub(super) fn renewal_tick(&mut self, now: Now) {
        let me = &self.me;
        if now.unix > me.not_after {
            if self.renewal.expired_reported != Some(me.serial) {
                self.renewal.expired_reported = Some(me.serial);
                tracing::error!(
                    name = %me.node,
                    serial = me.serial,
                    not_after = me.not_after,
                    "{}",
                    expired_sentence(me)
                );
            }
            return;
        }
        let left = me.not_after - now.unix;
        if left <= WARN_BEFORE_S
            && self
                .renewal
                .warned
                .is_none_or(|t| now.instant >= t + WARN_EVERY)
        {
            self.renewal.warned = Some(now.instant);
            tracing::warn!(
                name = %me.node,
                serial = me.serial,
                not_after = me.not_after,
                "this host's certificate expires in {} days {} h {} s and is not renewed yet; it is renewed automatically from an admin: check that an admin is up and reachable",
                left / 86_400,
                left % 86_400 / 3600,
                left % 3600,
            );
        }
        // Due two thirds into its lifetime, or at once under a new CA (a CA transition).
        if now.unix < renew_at(&self.me) && !self.needs_new_ca() {
            return;
        }
        if let Some((link, since)) = self.renewal.asking {
            if now.instant < since + ANSWER_TIMEOUT {
                return;
            }
            self.renewal.asking = None;
            self.renewal_failed(link, "no answer", now);
        }
        if self.renewal.not_before.is_some_and(|t| now.instant < t) {
            return;
        }
        if self.ca_key.is_some() {
            self.renew_own(now);
            return;
        }
        let Some(link) = self.renewal_target() else {
            // Nobody to ask yet: reach for the bootstrap hosts (the admin).
            for addr in self.net.bootstrap.clone() {
                self.connect(addr);
            }
            self.renewal_failed_quietly(now);
            return;
        };
        tracing::debug!(serial = self.me.serial, "asking for a renewed certificate");
        self.renewal.asking = Some((link, now.instant));
        self.renewal.attempts += 1;
        self.queue(Action::Renew { link });
    }

    /// The link to ask: a connection to a bootstrap host (the admin this host joined
    /// through) first, then the other connected members in turn.
    pub(super) fn renewal_target(&mut self) -> Option<LinkId> {
        let mut candidates: Vec<LinkId> = self
            .net
            .bootstrap
            .iter()
            .filter_map(|addr| self.conns.get(addr).copied())
            .collect();
        let mut others: Vec<LinkId> = self
            .conns
            .values()
            .filter(|l| !candidates.contains(l))
            .copied()
            .collect();
        others.sort();
        candidates.extend(others);
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.renewal.attempts % candidates.len()])
    }

    /// The answer to [`Action::Renew`] on `link` (`Err`: the request failed).
    pub fn handle_renewed(&mut self, link: LinkId, answer: Result<Response, String>, now: Now) {
        if self.renewal.asking.map(|(l, _)| l) != Some(link) {
            return;
        }
        self.renewal.asking = None;
        self.enter(now);
        match answer {
            Ok(Response::Renewed { certificate }) => {
                match self.install_certificate(&certificate, now) {
                    Ok(()) => self.renewal_succeeded(),
                    Err(e) => self.renewal_failed(link, &e, now),
                }
            }
            Ok(Response::Refused(reason)) => self.renewal_failed(link, &reason, now),
            Ok(other) => self.renewal_failed(link, &format!("unexpected answer {other:?}"), now),
            Err(e) => self.renewal_failed(link, &e, now),
        }
        self.finish(now);
    }

    fn renewal_succeeded(&mut self) {
        self.renewal.not_before = None;
        self.renewal.backoff = FIRST_BACKOFF;
        self.renewal.attempts = 0;
    }

    fn renewal_failed(&mut self, link: LinkId, reason: &str, now: Now) {
        let peer = self.links.get(&link).map(|l| l.peer.node.to_string());
        self.throttle.warn(
            now.instant,
            "certificate renewal failed; retrying",
            &format_args!("asked {}: {reason}", peer.as_deref().unwrap_or("a member")),
        );
        self.renewal_failed_quietly(now);
    }

    fn renewal_failed_quietly(&mut self, now: Now) {
        let backoff = self.renewal.backoff.max(FIRST_BACKOFF);
        let left = Duration::from_secs(self.me.not_after.saturating_sub(now.unix));
        let wait = backoff.min((left / 4).max(FIRST_BACKOFF));
        self.renewal.not_before = Some(now.instant + wait);
        self.renewal.backoff = (backoff * 2).min(MAX_BACKOFF);
    }

    /// Renew at the next tick, whatever the back-off (a CA transition began).
    pub(super) fn renew_soon(&mut self) {
        self.renewal.not_before = None;
        self.renewal.backoff = FIRST_BACKOFF;
    }

    /// An admin renews its own certificate.
    pub(super) fn renew_own(&mut self, now: Now) {
        let me = self.me.clone();
        match self.reissue(&me, None, now) {
            Ok((admin, cert)) => {
                self.admin = Some(admin.clone());
                self.queue(Action::SaveAdmin(admin));
                match self.install_certificate(&cert.to_bytes(), now) {
                    Ok(()) => self.renewal_succeeded(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot install this admin's own renewed certificate");
                        self.renewal_failed_quietly(now);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.0, "cannot renew this admin's own certificate");
                self.renewal_failed_quietly(now);
            }
        }
    }

    /// Re-issues `current` (an admin only): the admin's state with it remembered (to save
    /// before anyone sees the certificate), and the certificate.
    pub(super) fn reissue(
        &self,
        current: &NodeCertificate,
        groups: Option<Vec<keys::Name>>,
        now: Now,
    ) -> Result<(crate::control::state::AdminState, SignedCertificate), Refused> {
        let (Some(issuer), Some(admin)) = (self.issuer(), self.admin.as_ref()) else {
            return Err(Refused(
                "this host is not an admin of the network; ask the host that made it".into(),
            ));
        };
        let mut admin = admin.clone();
        let cert = issuer.reissue(&mut admin, &self.dir(), current, groups, now.unix)?;
        Ok((admin, cert))
    }

    /// Takes `bytes` (a `SignedCertificate`) as this host's certificate, if it is a
    /// re-issue of the current one: see the module docs.
    pub(super) fn install_certificate(&mut self, bytes: &[u8], now: Now) -> Result<(), String> {
        let signed = SignedCertificate::from_bytes(bytes).map_err(|e| e.to_string())?;
        let cert = signed
            .verify(&self.net.ca, now.unix)
            .map_err(|e| e.to_string())?;
        let me = &self.me;
        if cert.network != me.network
            || cert.node != me.node
            || cert.number != me.number
            || cert.control_key != me.control_key
            || cert.wireguard_key != me.wireguard_key
            || cert.subnets != me.subnets
        {
            return Err(format!(
                "the certificate offered (of {}, number {}) is not a re-issue of this host's ({}, number {})",
                cert.node, cert.number, me.node, me.number
            ));
        }
        if cert.serial <= me.serial {
            return Err(format!(
                "the certificate offered (serial {}) is not newer than this host's (serial {})",
                cert.serial, me.serial
            ));
        }
        let groups_changed = cert.groups != me.groups;
        tracing::info!(
            name = %cert.node,
            serial = cert.serial,
            old_serial = me.serial,
            not_after = cert.not_after,
            groups = ?cert.groups,
            "installed a re-issued certificate for this host"
        );
        // During a CA transition a member (not an admin: joiners pin the new CA) goes on
        // presenting its old-CA certificate in TLS handshakes until the end, while its
        // record carries the new one: every member trusts the old CA until then, and a
        // member that was down when the rotation started and comes back during it trusts
        // only the old CA until it learns the transition, from whoever it reaches first.
        let keep_presenting = match (self.admin.is_some(), self.dir().trust().previous) {
            (false, Some((old, end))) => {
                let until = self.identity_deferred.unwrap_or(self.me.not_after);
                let presents_old =
                    self.identity_deferred.is_some() || self.me.ca_fingerprint == old.fingerprint();
                (presents_old && until > end.saturating_add(IDENTITY_MARGIN_S)).then_some(until)
            }
            _ => None,
        };
        self.me = cert;
        self.net.certificate = signed.clone();
        self.net.renewed_unix = Some(now.unix);
        self.net.record_version += 1;
        match keep_presenting {
            Some(until) => self.identity_deferred = Some(until),
            None => {
                self.identity_deferred = None;
                self.queue(Action::Identity(signed));
            }
        }
        // Saves the membership, signs, gossips and pushes the record with the new certificate.
        self.publish_own_record(now);
        if groups_changed {
            // The policy names this host's groups: hand it again.
            self.policy_handed = None;
        }
        self.renewal.warned = None;
        Ok(())
    }

    /// A member asks on `link` for its certificate to be renewed: the admin re-issues the
    /// certificate the link's peer proved (or the renewal of it held since).
    pub(super) fn renew_member(
        &mut self,
        link: LinkId,
        now: Now,
    ) -> Result<super::AdminChange<super::Admission>, Refused> {
        let Some(peer) = self.links.get(&link).map(|l| l.peer.clone()) else {
            return Err(Refused("renewal refused: the connection is gone".into()));
        };
        let (admin, cert) = self.reissue(&peer, None, now)?;
        Ok(super::AdminChange {
            admin,
            answer: super::Admission {
                name: peer.node,
                response: Response::Renewed {
                    certificate: cert.to_bytes(),
                },
            },
        })
    }

    /// Replaces the certificate of each link's peer by a renewal of it that the directory
    /// holds (same name, number and control key, higher serial): a connection outlives the
    /// certificate shown in its handshake when its member renews.
    pub(super) fn follow_renewals(&mut self) {
        let dir = super::lock(&self.dir);
        for link in self.links.values_mut() {
            if let Some(cert) = dir.member_certificate(&link.peer.node)
                && cert.number == link.peer.number
                && cert.control_key == link.peer.control_key
                && cert.serial > link.peer.serial
            {
                link.peer = cert.clone();
            }
        }
    }
}

/// A certificate an admin re-issued with new groups (`overlayctl node groups`), to commit
/// once the admin's state is saved ([`Core::commit_groups`]).
#[derive(Debug)]
pub struct GroupsChange {
    response: NodeGroupsResponse,
    number: u32,
    certificate: SignedCertificate,
}

impl Core {
    /// `overlayctl node groups NAME g1,g2` on an admin: re-issues the member's certificate
    /// (the one its record in the directory carries) with these groups. Save the admin's
    /// state, then hand it to [`Core::commit_groups`].
    pub fn change_groups(
        &self,
        req: &NodeGroupsRequest,
        now: Now,
    ) -> Result<super::AdminChange<GroupsChange>, ApiFailure> {
        let name = keys::Name::new(req.name.as_str())
            .map_err(|e| ApiFailure::bad(format!("node name {:?}: {e}", req.name)))?;
        let groups = req
            .groups
            .iter()
            .map(|g| {
                keys::Name::new(g.as_str())
                    .map_err(|e| ApiFailure::bad(format!("group {g:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if groups.len() > keys::MAX_GROUPS {
            return Err(ApiFailure::bad(format!(
                "{} groups given; a certificate holds at most {}",
                groups.len(),
                keys::MAX_GROUPS
            )));
        }
        if self.ca_key.is_none() {
            return Err(ApiFailure::NotAdmin {
                action: "change a member's groups",
            });
        }
        let current = if name == self.me.node {
            self.me.clone()
        } else {
            let dir = self.dir();
            let cert = dir.member_certificate(&name).cloned();
            let alive = dir.live_member(&name).is_some();
            match cert {
                Some(cert) if alive => cert,
                _ => {
                    return Err(ApiFailure::not_found(format!(
                        "no current member named {name} is known; `overlayctl peers` lists the members"
                    )));
                }
            }
        };
        let (admin, certificate) = self
            .reissue(&current, Some(groups.clone()), now)
            .map_err(|e| ApiFailure::conflict(e.0))?;
        let serial = admin.issued.get(&name).map_or(0, |i| i.serial);
        Ok(super::AdminChange {
            admin,
            answer: GroupsChange {
                response: NodeGroupsResponse {
                    name: name.to_string(),
                    serial,
                    groups: groups.iter().map(|g| g.to_string()).collect(),
                    own: name == self.me.node,
                },
                number: current.number,
                certificate,
            },
        })
    }

    /// Takes a saved [`GroupsChange`]: this host's own certificate is installed at once; a
    /// member's is pushed to it (`Request::Reissued`) and again every second until it has
    /// taken it (its record shows the serial) or a later certificate replaces it.
    pub fn commit_groups(
        &mut self,
        change: super::AdminChange<GroupsChange>,
        now: Now,
    ) -> Result<NodeGroupsResponse, ApiFailure> {
        self.enter(now);
        let change = self.commit(change);
        let result = if change.response.own {
            self.install_certificate(&change.certificate.to_bytes(), now)
                .map_err(ApiFailure::internal)
        } else {
            tracing::info!(
                name = %change.response.name,
                serial = change.response.serial,
                groups = ?change.response.groups,
                "re-issued a member's certificate with new groups; pushing it"
            );
            self.deliveries.insert(
                change.number,
                (change.certificate.to_bytes(), change.response.serial, false),
            );
            self.deliver_pending(now);
            Ok(())
        };
        self.finish(now);
        result.map(|()| change.response)
    }

    /// Sends each re-issued certificate not yet taken to its member (see
    /// [`Core::commit_groups`]).
    pub(super) fn deliver_pending(&mut self, now: Now) {
        let _ = now;
        let numbers: Vec<u32> = self.deliveries.keys().copied().collect();
        for number in numbers {
            let taken = {
                let dir = self.dir();
                let serial = self.deliveries[&number].1;
                dir.all_members()
                    .any(|(m, _)| m.number == number && m.serial >= serial)
            };
            if taken {
                self.deliveries.remove(&number);
                continue;
            }
            if self.deliveries[&number].2 {
                continue;
            }
            let Some(addr) = self.addr_of_node(number) else {
                continue;
            };
            let Some(link) = self.conns.get(&addr).copied() else {
                self.connect(addr);
                continue;
            };
            if let Some(entry) = self.deliveries.get_mut(&number) {
                entry.2 = true;
                let certificate = entry.0.clone();
                self.queue(Action::Deliver {
                    link,
                    number,
                    certificate,
                });
            }
        }
    }

    /// The answer of member `number` to [`Action::Deliver`] (`Err`: the request failed).
    pub fn handle_delivered(&mut self, number: u32, answer: Result<Response, String>, now: Now) {
        let Some(entry) = self.deliveries.get_mut(&number) else {
            return;
        };
        match answer {
            Ok(Response::Ack) => {
                self.deliveries.remove(&number);
            }
            Ok(Response::Refused(reason)) => {
                // It will not take it (e.g. it holds a later one): stop.
                self.throttle.warn(
                    now.instant,
                    "a member refused its re-issued certificate",
                    &reason,
                );
                self.deliveries.remove(&number);
            }
            _ => entry.2 = false,
        }
    }
}

/// How long before its expiry a certificate still presented in TLS (during a CA
/// transition) is replaced by the current one.
pub(super) const IDENTITY_MARGIN_S: u64 = 60;

/// The one sentence for a host whose certificate expired before it could renew it.
pub fn expired_sentence(me: &NodeCertificate) -> String {
    format!(
        "this host's certificate (serial {}) expired at {} before it could be renewed (the host was offline, or no admin answered); it cannot rejoin by itself: join again with a new token, `overlayctl join TOKEN` (make one on an admin with `overlayctl token create`)",
        me.serial,
        keys::Utc(me.not_after)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_two_thirds_into_the_lifetime_from_the_issue() {
        let issued = 1_000_000;
        let mut cert = NodeCertificate {
            network: keys::Name::new("net").unwrap(),
            node: keys::Name::new("h1").unwrap(),
            wireguard_key: keys::PublicKey::from_bytes([1; 32]),
            control_key: keys::SigningKey::generate().verifying_key(),
            subnets: Vec::new(),
            groups: Vec::new(),
            not_before: 0,
            not_after: 0,
            serial: 1,
            number: 1,
            ca_fingerprint: keys::SigningKey::generate().verifying_key().fingerprint(),
        };
        cert.not_before = issued - NOT_BEFORE_SLACK_S;
        cert.not_after = issued + 60;
        assert_eq!(renew_at(&cert), issued + 40);
        cert.not_after = issued + 365 * 86_400;
        assert_eq!(renew_at(&cert), issued + 365 * 86_400 / 3 * 2);
        // A certificate shorter than the slack (not issued by this code): due at once.
        cert.not_before = issued;
        cert.not_after = issued + 10;
        assert!(renew_at(&cert) <= issued + 10);
    }
}
