//! What a member does when asked: API commands from this host's operator (token, revoke,
//! leave) and requests from other hosts over streams (join admission, full sync, push),
//! with the directory updates they bring ([`Member::apply_bundle`]) and the directory
//! they answer with ([`Member::bundle`]).

use std::net::SocketAddr;

use keys::{Name, PublicKey};
use protocol::records::{Applied, MemberState, RecordError};

use super::gossip::{TAG_MEMBER, TAG_REVOCATION, tagged};
use super::{Member, lock, own_record};
use crate::control::admin::{Issuer, JoinAsk, Refused};
use crate::control::msg::{Bundle, Request, Response};
use crate::control::tls::Remote;
use crate::control::{ApiFailure, Command, now_unix};

impl Member {
    /// Applies records received over a stream; what was new is gossiped on.
    /// `sync`: from a full sync, where copies older than ours are expected (a member's
    /// directory lags behind ours) and are not worth a warning.
    pub(super) fn apply_bundle(&mut self, bundle: &Bundle, sync: bool) {
        let mut fresh = Vec::new();
        {
            let mut dir = lock(&self.dir);
            for bytes in &bundle.revocations {
                match dir.apply_revocation_bytes(bytes) {
                    Ok(Applied::Unchanged) => {}
                    Ok(_) => fresh.push(tagged(TAG_REVOCATION, bytes)),
                    Err(e) => self.throttle.warn("refused a revocation", &e),
                }
            }
            for bytes in &bundle.members {
                if bytes.is_empty() {
                    continue;
                }
                match dir.apply_member_bytes(bytes, now_unix()) {
                    Ok(Applied::Unchanged) => {}
                    Ok(_) => fresh.push(tagged(TAG_MEMBER, bytes)),
                    Err(
                        e @ (RecordError::Replay { .. } | RecordError::OlderCertificate { .. }),
                    ) if sync => tracing::debug!(error = %e, "ignored a stale record in a sync"),
                    Err(e) => self.throttle.warn("refused a member record", &e),
                }
            }
        }
        if !fresh.is_empty() {
            self.dirty = true;
        }
        for item in fresh {
            if let Err(e) = self.foca.add_broadcast(&item) {
                tracing::debug!(error = %e, "cannot gossip a record");
            }
        }
    }

    pub(super) fn bundle(&self) -> Bundle {
        let dir = self.now_dir();
        Bundle {
            members: dir.member_records().map(|r| r.to_bytes()).collect(),
            revocations: dir.revocations().map(|r| r.to_bytes()).collect(),
        }
    }

    pub(super) fn request(&mut self, remote: Remote, request: Request) -> Response {
        match (remote, request) {
            (Remote::Member(_), Request::Sync(theirs)) => {
                self.apply_bundle(&theirs, true);
                Response::Sync(self.bundle())
            }
            (Remote::Member(_), Request::Push(theirs)) => {
                self.apply_bundle(&theirs, false);
                Response::Ack
            }
            (
                Remote::Joiner,
                Request::Join {
                    secret,
                    name,
                    wireguard_key,
                    control_key,
                    subnet,
                    proof,
                },
            ) => {
                let ask = JoinAsk {
                    secret: keys::TokenSecret::from_bytes(secret),
                    name,
                    wireguard_key,
                    control_key,
                    subnet,
                    proof: keys::JoinProof::from_bytes(proof),
                };
                match self.admit(&ask) {
                    Ok(certificate) => {
                        tracing::info!(name = %ask.name, "admitted a new member");
                        Response::Joined {
                            certificate,
                            cidr: self.net.cidr,
                            ranges: self.net.ranges.clone(),
                            subnet_prefix: self.net.subnet_prefix,
                            bundle: self.bundle(),
                        }
                    }
                    Err(e) => {
                        self.throttle.warn("refused a join", &e);
                        Response::Refused(e.0)
                    }
                }
            }
            (Remote::Joiner, _) => Response::Refused("join first".into()),
            (Remote::Member(_), Request::Join { .. }) => Response::Refused(
                "this host is already a member; a join needs no certificate".into(),
            ),
        }
    }

    fn issuer(&self) -> Option<Issuer<'_>> {
        Some(Issuer {
            ca: self.ca_key.as_ref()?,
            network: &self.net.network,
            cidr: self.net.cidr,
            ranges: &self.net.ranges,
            subnet_prefix: self.net.subnet_prefix,
            certificate_days: self.ctx.config.control.certificate_days,
        })
    }

    fn admit(&mut self, ask: &JoinAsk) -> Result<Vec<u8>, Refused> {
        let Some(mut admin) = self.admin.clone() else {
            return Err(Refused(
                "this host is not an admin of the network; use a token from the host that made it"
                    .into(),
            ));
        };
        let cert = {
            let issuer = self.issuer().ok_or_else(|| Refused("no CA key".into()))?;
            let dir = self.now_dir();
            let wireguard_key = &self.ctx.config.private_key;
            issuer.admit(&mut admin, &dir, ask, wireguard_key, now_unix())?
        };
        // Remember the token is used before anyone hears of the certificate.
        self.ctx
            .state
            .save_admin(&admin)
            .map_err(|e| Refused(format!("the admin cannot save its state: {e:#}")))?;
        self.admin = Some(admin);
        Ok(cert.to_bytes())
    }

    /// Handles an API command; `true` when the member loop must end (left the network).
    pub(super) async fn command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Init(_, reply) | Command::Join(_, reply) => {
                let _ = reply.send(Err(ApiFailure::conflict(format!(
                    "this host is already member {} of network {}; run `overlayctl leave` first",
                    self.me.node, self.net.network
                ))));
                false
            }
            Command::Token(req, reply) => {
                let _ = reply.send(self.create_token(req));
                false
            }
            Command::Revoke(req, reply) => {
                let _ = reply.send(self.revoke(req).await);
                false
            }
            Command::Leave(reply) => {
                let result = self.leave().await;
                let _ = reply.send(result);
                // Left, even if the files could not all be removed (the answer says so).
                self.net.left
            }
        }
    }

    fn create_token(
        &mut self,
        req: protocol::api::TokenRequest,
    ) -> Result<protocol::api::TokenResponse, ApiFailure> {
        let groups = req
            .groups
            .iter()
            .map(|g| {
                Name::new(g.as_str()).map_err(|e| ApiFailure::bad(format!("group {g:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let endpoint = SocketAddr::new(self.advertise, self.ctx.config.control.listen_port);
        let mut admin = self.admin.clone().ok_or_else(|| {
            ApiFailure::conflict(
                "this host is not an admin (it has no CA key); create tokens on the host that ran `overlayctl init`",
            )
        })?;
        let token = {
            let issuer = self
                .issuer()
                .ok_or_else(|| ApiFailure::conflict("no CA key"))?;
            issuer
                .create_token(&mut admin, vec![endpoint], req.ttl_s, groups, now_unix())
                .map_err(|e| ApiFailure::bad(e.0))?
        };
        self.ctx
            .state
            .save_admin(&admin)
            .map_err(|e| ApiFailure::internal(format!("{e:#}")))?;
        self.admin = Some(admin);
        Ok(protocol::api::TokenResponse {
            token: token.to_text().to_string(),
            expires_unix: token.expires_unix(),
        })
    }

    async fn revoke(
        &mut self,
        req: protocol::api::RevokeRequest,
    ) -> Result<protocol::api::RevokeResponse, ApiFailure> {
        let name = Name::new(req.name.as_str()).map_err(|e| ApiFailure::bad(format!("{e}")))?;
        if name == self.me.node {
            return Err(ApiFailure::bad(
                "an admin cannot revoke itself; revoke it from another admin, or `overlayctl leave`",
            ));
        }
        let revocation = {
            let issuer = self.issuer().ok_or_else(|| {
                ApiFailure::conflict(
                    "this host is not an admin (it has no CA key); revoke on the host that ran `overlayctl init`",
                )
            })?;
            let admin = self.admin.as_ref().ok_or_else(|| {
                ApiFailure::conflict(
                    "this host is not an admin (it has no admin.json); revoke on the host that ran `overlayctl init`",
                )
            })?;
            let dir = self.now_dir();
            issuer
                .revoke(admin, &dir, &name, now_unix())
                .map_err(|e| ApiFailure::not_found(e.0))?
        };
        let bytes = revocation.to_bytes();
        let applied = lock(&self.dir).apply_revocation(&revocation);
        if let Err(e) = applied {
            return Err(ApiFailure::internal(e.to_string()));
        }
        let _ = self.foca.add_broadcast(&tagged(TAG_REVOCATION, &bytes));
        let bundle = Bundle {
            members: Vec::new(),
            revocations: vec![bytes],
        };
        self.push_all(bundle).await;
        self.dirty = true;
        self.sync_peers().await;
        self.save();
        self.update_view();
        let r = revocation.revocation();
        tracing::info!(name = %r.node, serial = r.serial, "revoked a member");
        Ok(protocol::api::RevokeResponse {
            name: r.node.to_string(),
            serial: r.serial,
            public_key: r.wireguard_key,
        })
    }

    async fn leave(&mut self) -> Result<protocol::api::Status, ApiFailure> {
        self.net.record_version += 1;
        let record = own_record(
            &self.net,
            &self.ctx,
            self.advertise,
            MemberState::Left,
            &self.control_key,
        )
        .map_err(|e| ApiFailure::internal(format!("{e:#}")))?;
        let _ = lock(&self.dir).apply_member(&record, now_unix());
        let bytes = record.to_bytes();
        let _ = self.foca.add_broadcast(&tagged(TAG_MEMBER, &bytes));
        self.push_all(Bundle {
            members: vec![bytes],
            revocations: Vec::new(),
        })
        .await;
        let _ = self.foca.leave_cluster(&mut self.rt);
        self.drain();
        // Tunnels and routes to every member go.
        let keys: Vec<PublicKey> = self.routed.keys().copied().collect();
        for key in keys {
            self.unroute(&key).await;
        }
        // Saved first: should the files below not all go, the daemon does not rejoin, and
        // its next start removes them (`control::run`).
        self.net.left = true;
        if let Err(e) = self.ctx.state.save_network(&self.net) {
            tracing::warn!(error = %format!("{e:#}"), "cannot save the state after leaving");
        }
        if let Some(endpoint) = self.ctx.endpoint.get() {
            endpoint.set_server_config(None);
        }
        for conn in self.conns.values() {
            conn.close(0u32.into(), b"left the network");
        }
        // Nothing of the network stays in use: not this host's control key, which its
        // certificates name, and not its CA key (on an admin: moved to `former/`, not
        // destroyed, see `control::state`).
        let forgotten = self.ctx.state.forget_network();
        let mut view = lock(&self.view);
        if let Some(m) = view.membership.as_mut() {
            m.left = true;
            m.member_count = 0;
        }
        view.members.clear();
        let network = &self.net.network;
        match forgotten {
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), %network, "left the network but cannot remove its files");
                return Err(ApiFailure::internal(format!(
                    "left network {network}, but cannot remove its files from {}: {e:#}; remove them by hand",
                    self.ctx.state.root().display()
                )));
            }
            Ok(Some(ca)) => {
                tracing::warn!(%network, ca_key = %ca.display(), "left the network; this host was an admin: the network's CA key was moved aside, not destroyed (if no other admin holds it, keep it to recover the network)")
            }
            Ok(None) => {
                tracing::info!(%network, "left the network and removed its files (keys, certificate, directory)")
            }
        }
        Ok(view.status_stub())
    }
}
