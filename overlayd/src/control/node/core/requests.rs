//! What a member does when asked: requests from other hosts over streams (join admission,
//! full sync, push), with the directory updates they bring ([`Core::apply_bundle`]) and the
//! directory they answer with ([`Core::bundle`]), and API commands from this host's
//! operator (token, revoke, leave).
//!
//! An admin's state must be on disk before anyone hears of what changed it (a token it
//! issued, a token a join used): such an answer comes as an [`AdminChange`], which the
//! driver saves and then hands back to [`Core::commit`].

use keys::Name;
use protocol::api::{RevokeRequest, RevokeResponse, TokenRequest, TokenResponse};
use protocol::records::{Applied, MemberState, RecordError, SignedMemberRecord};

use super::gossip::{TAG_MEMBER, TAG_REVOCATION, tagged};
use super::{Core, LinkId, Now};
use crate::control::ApiFailure;
use crate::control::admin::{Issuer, JoinAsk, Refused};
use crate::control::msg::{Bundle, Request, Response};
use crate::control::state::AdminState;

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A member, on this link.
    Member(LinkId),
    /// A host that came to join; it has proven nothing yet.
    Joiner,
}

/// The answer to a request ([`Core::handle_request`]).
#[derive(Debug)]
pub enum Answer {
    /// Send this.
    Reply(Response),
    /// Send this once the admin's state is saved ([`AdminChange`]); if it cannot be, the
    /// join is refused ([`Core::refuse_join`]).
    AfterSave(AdminChange<Admission>),
    /// Send nothing: the member's link has lapsed since it sent the request.
    Drop,
}

/// An answer that holds only once `admin` is saved: save [`AdminChange::admin`], then
/// hand it to [`Core::commit`] for the answer. Dropped unsaved, it changes nothing.
#[derive(Debug)]
#[must_use = "save it, then commit it"]
pub struct AdminChange<T> {
    pub(super) admin: AdminState,
    pub(super) answer: T,
}

impl<T> AdminChange<T> {
    /// The admin's state to save.
    pub fn admin(&self) -> &AdminState {
        &self.admin
    }
}

/// A joining host admitted: who, and the answer it gets.
#[derive(Debug)]
pub struct Admission {
    /// The name it was admitted as.
    pub name: Name,
    /// `Response::Joined`.
    pub response: Response,
}

impl Core {
    /// A request came on a stream `from` a member link or a joiner. A member's request is
    /// taken only while its link is current; otherwise the member's connections are closed
    /// and it gets no answer.
    pub fn handle_request(&mut self, from: Origin, request: Request, now: Now) -> Answer {
        self.enter(now);
        let answer = match from {
            Origin::Member(link) if !self.is_current(link, now) => {
                self.close_lapsed(now);
                Answer::Drop
            }
            _ => self.request(from, request, now),
        };
        self.finish(now);
        answer
    }

    /// The answer to a full sync this host asked for ([`super::Action::Sync`]), checked by
    /// the driver as it checks a bundle in a request.
    pub fn handle_bundle(&mut self, bundle: &Bundle, now: Now) {
        self.enter(now);
        self.apply_bundle(bundle, true, now);
        self.finish(now);
    }

    /// Takes the admin's state of a change that has been saved, and returns its answer.
    pub fn commit<T>(&mut self, change: AdminChange<T>) -> T {
        self.admin = Some(change.admin);
        change.answer
    }

    /// The answer to a join that was refused after all (the admin's state could not be
    /// saved); logged as every refused join is.
    pub fn refuse_join(&mut self, refused: Refused, now: Now) -> Response {
        self.throttle.warn(now.instant, "refused a join", &refused);
        Response::Refused(refused.0)
    }

    /// Everything this host knows: every member record and revocation, the policy, and
    /// as many name sets as fit the rest of a frame (`names::fit_names`).
    pub fn bundle(&self) -> Bundle {
        let dir = self.dir();
        let mut bundle = Bundle {
            members: dir.member_records().map(|r| r.to_bytes()).collect(),
            revocations: dir.revocations().map(|r| r.to_bytes()).collect(),
            policy: dir.policy().map(|(_, signed)| signed.to_bytes()),
            names: Vec::new(),
            ca_transition: dir.ca_transition().map(|t| t.to_bytes()),
        };
        let records: usize = (bundle.members.iter())
            .chain(&bundle.revocations)
            .chain(&bundle.policy)
            .chain(&bundle.ca_transition)
            .map(|b| b.len() + super::names::FRAMING)
            .sum();
        let start = self
            .names_cursor
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bundle.names = super::names::fit_names(
            self.all_names(),
            super::names::NAMES_BUDGET.saturating_sub(records),
            start,
        );
        bundle
    }

    /// Applies records received over a stream; what was new is gossiped on.
    /// `sync`: from a full sync, where copies older than ours are expected (a member's
    /// directory lags behind ours) and are not worth a warning.
    pub(super) fn apply_bundle(&mut self, bundle: &Bundle, sync: bool, now: Now) {
        if let Some(bytes) = &bundle.ca_transition {
            self.apply_ca_transition(bytes, now);
        }
        if let Some(bytes) = &bundle.policy {
            self.apply_policy_bytes(bytes, sync, now);
        }
        let mut fresh = Vec::new();
        {
            let mut dir = super::lock(&self.dir);
            for bytes in &bundle.revocations {
                match dir.apply_revocation_bytes(bytes) {
                    Ok(Applied::Unchanged) => {}
                    Ok(_) => fresh.push(tagged(TAG_REVOCATION, bytes)),
                    Err(e) => self.throttle.warn(now.instant, "refused a revocation", &e),
                }
            }
            for bytes in &bundle.members {
                if bytes.is_empty() {
                    continue;
                }
                // The same limit as gossip on how often a member's record changes.
                let name = SignedMemberRecord::from_bytes(bytes)
                    .ok()
                    .and_then(|r| r.record().certificate.unverified_body().ok())
                    .map(|c| c.node);
                let mut shared = super::lock(&self.shared);
                if let Some(name) = &name
                    && !shared.updates.allows(name, now.instant)
                {
                    self.throttle.warn(
                        now.instant,
                        "dropped a member's record update",
                        &format_args!("{name} changes its record too often"),
                    );
                    continue;
                }
                match dir.apply_member_bytes(bytes, now.unix) {
                    Ok(Applied::Unchanged) => {}
                    Ok(_) => {
                        if let Some(name) = &name {
                            shared.updates.charge(name, now.instant);
                        }
                        fresh.push(tagged(TAG_MEMBER, bytes));
                    }
                    Err(
                        e @ (RecordError::Replay { .. } | RecordError::OlderCertificate { .. }),
                    ) if sync => tracing::debug!(error = %e, "ignored a stale record in a sync"),
                    Err(e) => self
                        .throttle
                        .warn(now.instant, "refused a member record", &e),
                }
            }
        }
        if !fresh.is_empty() {
            self.dirty = true;
        }
        self.apply_names(&bundle.names, sync, now);
        for item in fresh {
            if let Err(e) = self.foca.add_broadcast(&item) {
                tracing::debug!(error = %e, "cannot gossip a record");
            }
        }
    }

    fn request(&mut self, from: Origin, request: Request, now: Now) -> Answer {
        let response = match (from, request) {
            (Origin::Member(_), Request::Sync(theirs)) => {
                self.apply_bundle(&theirs, true, now);
                Response::Sync(self.bundle())
            }
            (Origin::Member(link), Request::Push(theirs)) => {
                self.apply_bundle(&theirs, false, now);
                self.seen_answer(link)
            }
            (Origin::Member(_), Request::Join { .. }) => Response::Refused(
                "this host is already a member; a join needs no certificate".into(),
            ),
            (Origin::Member(link), Request::Renew) => match self.renew_member(link, now) {
                Ok(change) => return Answer::AfterSave(change),
                Err(e) => {
                    self.throttle
                        .warn(now.instant, "refused a certificate renewal", &e);
                    Response::Refused(e.0)
                }
            },
            (Origin::Member(_), Request::Reissued(bytes)) => {
                match self.install_certificate(&bytes, now) {
                    Ok(()) => Response::Ack,
                    Err(e) => {
                        self.throttle
                            .warn(now.instant, "refused a re-issued certificate", &e);
                        Response::Refused(format!("certificate not taken: {e}"))
                    }
                }
            }
            (Origin::Member(link), Request::Rendezvous { with, delay_ms }) => {
                self.handle_rendezvous(link, with, delay_ms, now)
            }
            (Origin::Member(link), Request::Punch { from, delay_ms }) => {
                self.handle_punch(link, from, delay_ms, now)
            }
            (Origin::Member(link), Request::Admins(records)) => {
                return self.admins_request(link, &records, now);
            }
            // Taken by the driver, which saves the key (`Core::check_admin_key`).
            (Origin::Member(_), Request::AdminKey { .. }) => {
                Response::Refused("admin key refused".into())
            }
            (
                Origin::Member(link),
                Request::Rekey {
                    wireguard_key,
                    proof,
                },
            ) => match self.rekey_member(link, wireguard_key, proof, now) {
                Ok(change) => return Answer::AfterSave(change),
                Err(e) => {
                    self.throttle
                        .warn(now.instant, "refused a WireGuard key rotation", &e);
                    Response::Refused(e.0)
                }
            },
            (Origin::Joiner, request) => match JoinAsk::from_request(request) {
                Some(ask) => match self.admit(&ask, now) {
                    Ok(change) => return Answer::AfterSave(change),
                    Err(e) => self.refuse_join(e, now),
                },
                None => Response::Refused("join first".into()),
            },
        };
        Answer::Reply(response)
    }

    /// What issues certificates, tokens and revocations on an admin: `None` on a member,
    /// and on an admin whose CA key is not the network's (another admin rotated the CA and
    /// the new key has not reached this one: `ca::install_ca_key`).
    pub(super) fn issuer(&self) -> Option<Issuer<'_>> {
        Some(Issuer {
            ca: self
                .ca_key
                .as_ref()
                .filter(|key| key.verifying_key() == self.net.ca)?,
            network: &self.net.network,
            cidr: self.net.cidr,
            ranges: &self.net.ranges,
            subnet_prefix: self.net.subnet_prefix,
            certificate_lifetime_s: self.settings.certificate_lifetime_s,
        })
    }

    fn admit(&self, ask: &JoinAsk, now: Now) -> Result<AdminChange<Admission>, Refused> {
        let Some(mut admin) = self.admin.clone() else {
            return Err(Refused(
                "this host is not an admin of the network; use a token from the host that made it"
                    .into(),
            ));
        };
        let cert = {
            let issuer = self.issuer().ok_or_else(|| Refused("no CA key".into()))?;
            let dir = self.dir();
            issuer.admit(&mut admin, &dir, ask, &self.wireguard_key, now.unix)?
        };
        let response = Response::Joined {
            certificate: cert.to_bytes(),
            cidr: self.net.cidr,
            ranges: self.net.ranges.clone(),
            subnet_prefix: self.net.subnet_prefix,
            bundle: self.bundle(),
        };
        Ok(AdminChange {
            admin,
            answer: Admission {
                name: ask.name.clone(),
                response,
            },
        })
    }

    /// `overlayctl token create`: a token naming this host and every other admin as its
    /// bootstrap hosts (this one first). The driver sends its record to the other admins
    /// ([`Core::token_record`]) before it prints it.
    pub fn create_token(
        &self,
        req: TokenRequest,
        now: Now,
    ) -> Result<AdminChange<TokenResponse>, ApiFailure> {
        let groups = req
            .groups
            .iter()
            .map(|g| {
                Name::new(g.as_str()).map_err(|e| ApiFailure::bad(format!("group {g:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // This admin first, then every other admin: a join works while any one is up.
        let endpoints: Vec<std::net::SocketAddr> = std::iter::once(std::net::SocketAddr::new(
            self.advertise,
            self.settings.control_port,
        ))
        .chain(
            self.admins
                .records()
                .filter(|r| !r.retired && r.node != self.me.node)
                .filter_map(|r| self.addr_of_node(r.number)),
        )
        .take(keys::MAX_ENDPOINTS)
        .collect();
        let mut admin = self.admin.clone().ok_or(ApiFailure::NotAdmin {
            action: "create tokens",
        })?;
        let token = {
            let issuer = self
                .issuer()
                .ok_or_else(|| ApiFailure::conflict("no CA key"))?;
            issuer
                .create_token(&mut admin, endpoints, req.ttl_s, groups, now.unix)
                .map_err(|e| ApiFailure::bad(e.0))?
        };
        Ok(AdminChange {
            admin,
            answer: TokenResponse {
                token: token.to_text().to_string(),
                expires_unix: token.expires_unix(),
            },
        })
    }

    /// `overlayctl revoke NAME`: signs the revocation, applies it (the member's connections
    /// close, its tunnel goes) and pushes it to every member, waiting for their acks.
    pub fn revoke(&mut self, req: RevokeRequest, now: Now) -> Result<RevokeResponse, ApiFailure> {
        self.enter(now);
        let result = self.revoke_member(req, now);
        self.finish(now);
        result
    }

    fn revoke_member(
        &mut self,
        req: RevokeRequest,
        now: Now,
    ) -> Result<RevokeResponse, ApiFailure> {
        let name = Name::new(req.name.as_str()).map_err(|e| ApiFailure::bad(format!("{e}")))?;
        if name == self.me.node {
            return Err(ApiFailure::bad(
                "an admin cannot revoke itself; revoke it from another admin, or `overlayctl leave`",
            ));
        }
        let revocation = {
            let issuer = self
                .issuer()
                .ok_or(ApiFailure::NotAdmin { action: "revoke" })?;
            let admin = self.admin.as_ref().ok_or_else(|| {
                ApiFailure::conflict(
                    "this host is not an admin (it has no admin.json); revoke on the host that ran `overlayctl init`",
                )
            })?;
            let dir = self.dir();
            issuer
                .revoke(admin, &dir, &name, now.unix)
                .map_err(|e| ApiFailure::not_found(e.0))?
        };
        let bytes = revocation.to_bytes();
        let applied = self.dir().apply_revocation(&revocation);
        if let Err(e) = applied {
            return Err(ApiFailure::internal(e.to_string()));
        }
        let _ = self.foca.add_broadcast(&tagged(TAG_REVOCATION, &bytes));
        self.push_all(
            Bundle {
                members: Vec::new(),
                revocations: vec![bytes],
                policy: None,
                names: Vec::new(),
                ca_transition: None,
            },
            now,
        );
        self.dirty = true;
        let r = revocation.revocation();
        tracing::info!(name = %r.node, serial = r.serial, "revoked a member");
        Ok(RevokeResponse {
            name: r.node.to_string(),
            serial: r.serial,
            public_key: r.wireguard_key,
        })
    }

    /// `overlayctl leave`: signs and spreads a record that says this host left (pushed to
    /// every member, waiting for their acks), leaves SWIM, withdraws every member's tunnel
    /// and route, saves the membership as left, and closes the connections. The driver then
    /// forgets the network; the core is done.
    pub fn leave(&mut self, now: Now) -> Result<(), ApiFailure> {
        self.enter(now);
        self.net.record_version += 1;
        let bundle = self
            .sign_own_record(MemberState::Left, now)
            .map_err(|e| ApiFailure::internal(e.to_string()))?;
        self.push_all(bundle, now);
        let _ = self.foca.leave_cluster(&mut self.rt);
        self.drain(now);
        // Tunnels and routes to every member go. Saved first: should the files not all go
        // afterwards, the daemon does not rejoin, and its next start removes them
        // (`control::run`).
        self.net.left = true;
        self.queue(super::Action::Peers(Vec::new()));
        self.queue(super::Action::SaveNetwork(self.net.clone()));
        self.close_all();
        Ok(())
    }

    /// Sends `bundle` to every connected member and waits (bounded) for their acks; first
    /// closes the connections of members revoked or expired, which get nothing more, and
    /// reaches for the members not connected.
    pub(super) fn push_all(&mut self, bundle: Bundle, now: Now) {
        self.close_lapsed(now);
        for addr in self.control_addrs() {
            self.connect(addr);
        }
        self.push_connected(bundle, true);
    }
}
