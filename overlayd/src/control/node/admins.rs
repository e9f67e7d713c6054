//! The member task's side of more than one admin (`control::admins`, `core::admins`):
//! `overlayctl admin add/remove/list`, the CA key sent to a new admin ([`send_ca_key`],
//! reusable when the CA key changes) and taken by one, and the exchange of admin records
//! at every full sync.
//!
//! The CA key crosses only the member connection to the new admin: QUIC, so TLS 1.3 with
//! both sides proving a certificate of the network's CA, and the new admin's the one its
//! grant record names (by member number). No extra layer of encryption is added: it
//! would be keyed by the same two certificates' keys that the TLS handshake already
//! proved. The key is sent as a request by the admin, never as an answer, so no member can
//! ask for it.

use std::sync::Arc;

use super::core::AdminKey;
use super::net;
use super::{Event, Member, now};
use crate::control::msg::{Request, Response};
use crate::control::{ApiFailure, Command, Traffic};
use keys::CaKey;
use tokio::sync::oneshot;

/// Sends the CA key `key` (base64) and the admin records `records` to the member on
/// `conn`; `Ok` once it has saved the key. Called for `admin add`, and again for every
/// admin when the CA key changes.
pub(super) async fn send_ca_key(
    conn: quinn::Connection,
    key: String,
    records: Vec<Vec<u8>>,
    traffic: Arc<Traffic>,
) -> Result<(), String> {
    let request = Request::AdminKey {
        key: zeroize::Zeroizing::new(key).to_string(),
        admins: records,
    };
    match net::ask(conn, request, traffic).await {
        Ok(Response::Ack) => Ok(()),
        Ok(Response::Refused(why)) => Err(why),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e),
    }
}

impl Member {
    /// `overlayctl admin ...`; `None` if `cmd` is no such command (handed back).
    pub(super) async fn admin_command(&mut self, cmd: Command) -> Option<Command> {
        let now = now();
        match cmd {
            Command::Admins(reply) => {
                let _ = reply.send(Ok(self.core.admins_shown()));
            }
            Command::AdminRemove(req, reply) => {
                let answer = self.core.retire_admin(&req.name).and_then(|change| {
                    self.save_admins_change(&change)?;
                    let _ = self.core.commit_admins(change, now);
                    tracing::info!(name = %req.name, "removed an admin");
                    Ok(self.core.admins_shown())
                });
                self.execute().await;
                let _ = reply.send(answer);
            }
            Command::AdminAdd(req, reply) => {
                let sent = self.core.grant_admin(&req.name, now).and_then(|change| {
                    self.save_admins_change(&change)?;
                    Ok(self.core.commit_admins(change, now))
                });
                self.execute().await;
                let (link, key, records) = match sent {
                    Ok(Some(sent)) => sent,
                    Ok(None) => {
                        let _ = reply.send(Err(ApiFailure::internal("no CA key to send")));
                        return None;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return None;
                    }
                };
                let Some(conn) = self.conns.get(&link).cloned() else {
                    let _ = reply.send(Err(ApiFailure::remote(format!(
                        "{} is not connected now; run `overlayctl admin add {}` again",
                        req.name, req.name
                    ))));
                    return None;
                };
                let shown = self.core.admins_shown();
                let traffic = self.ctx.traffic.clone();
                let name = req.name;
                tokio::spawn(async move {
                    let answer = match send_ca_key(conn, key, records, traffic).await {
                        Ok(()) => {
                            tracing::info!(%name, "made a member an admin: it holds the CA key");
                            Ok(shown)
                        }
                        Err(why) => Err(ApiFailure::remote(format!(
                            "{name} did not take the CA key ({why}); its grant is signed: run `overlayctl admin add {name}` again"
                        ))),
                    };
                    let _ = reply.send(answer);
                });
            }
            other => return Some(other),
        }
        None
    }

    /// Saves what a grant or retirement changes, before anyone hears of it.
    fn save_admins_change(
        &self,
        change: &crate::control::node::core::AdminsChange,
    ) -> Result<(), ApiFailure> {
        let internal = |e: anyhow::Error| ApiFailure::internal(format!("{e:#}"));
        if let Some(admin) = change.admin() {
            self.ctx.state.save_admin(admin).map_err(internal)?;
        }
        self.ctx
            .state
            .save_admins(change.records())
            .map_err(internal)
    }

    /// A CA key from a member (`Request::AdminKey`): checked by the core, saved (key 0600,
    /// atomically; then `admin.json` and the records), then in force.
    pub(super) fn take_admin_key(
        &mut self,
        link: super::core::LinkId,
        key: String,
        records: Vec<Vec<u8>>,
        reply: oneshot::Sender<Response>,
    ) {
        let now = now();
        let key = zeroize::Zeroizing::new(key);
        let response = match self.core.check_admin_key(link, &key, &records, now) {
            Ok(AdminKey::Held) => Response::Ack,
            Ok(AdminKey::Rotated(ca)) => match self.take_rotated_key(ca) {
                Ok(()) => {
                    tracing::info!(ca = %self.core.network().ca.fingerprint(), "took the network's new CA key from another admin");
                    Response::Ack
                }
                Err(why) => {
                    tracing::warn!(reason = %why, "cannot take the new CA key sent to this host");
                    Response::Refused(why)
                }
            },
            Ok(AdminKey::Granted(ca, admin)) => match self.save_admin_key(&ca, &admin) {
                Ok(()) => {
                    self.core.become_admin(ca, admin, now);
                    Response::Ack
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot save the CA key sent to this host");
                    Response::Refused(format!("cannot save the CA key: {e:#}"))
                }
            },
            Err(refused) => {
                tracing::warn!(reason = %refused, "refused a CA key sent to this host");
                Response::Refused(refused.0)
            }
        };
        let _ = reply.send(response);
    }

    /// The new CA key of a rotation another admin made: saved beside the old one (0600),
    /// in force, then it replaces the old one on disk (`network.json` names it already).
    fn take_rotated_key(&mut self, ca: CaKey) -> Result<(), String> {
        self.ctx
            .state
            .save_next_ca_key(&ca)
            .map_err(|e| format!("cannot save the new CA key: {e:#}"))?;
        self.core.install_ca_key(ca).map_err(|e| format!("{e}"))?;
        if let Err(e) = self.ctx.state.finish_ca_rotation(&self.core.network().ca) {
            tracing::error!(error = %format!("{e:#}"), "cannot replace the old CA key by the new one; it is done at the next start");
        }
        Ok(())
    }

    /// After this admin rotated the CA: the transition, then the new key with the admin
    /// records, to every other admin connected (each in its own task; the result logged).
    /// With `only`: to that link, if it is an admin's, while the transition runs.
    pub(super) fn hand_off_ca_key(&self, only: Option<super::core::LinkId>) {
        let Some((links, bundle, key, records)) = self.core.ca_key_handoff(only, now()) else {
            return;
        };
        let key = zeroize::Zeroizing::new(key);
        for link in links {
            let Some(conn) = self.conns.get(&link).cloned() else {
                continue;
            };
            let (bundle, key, records, traffic) = (
                bundle.clone(),
                key.to_string(),
                records.clone(),
                self.ctx.traffic.clone(),
            );
            tokio::spawn(async move {
                let peer = conn.remote_address();
                // The transition first: the receiver takes the key only once it holds it.
                let pushed = net::ask(conn.clone(), Request::Push(bundle), traffic.clone()).await;
                if let Err(e) = pushed {
                    tracing::warn!(%peer, error = %e, "cannot send the CA transition to an admin");
                    return;
                }
                match send_ca_key(conn, key, records, traffic).await {
                    Ok(()) => tracing::debug!(%peer, "an admin holds the new CA key"),
                    Err(why) => {
                        tracing::warn!(%peer, reason = %why, "an admin did not take the new CA key")
                    }
                }
            });
        }
    }

    fn save_admin_key(
        &self,
        ca: &CaKey,
        admin: &crate::control::state::AdminState,
    ) -> anyhow::Result<()> {
        self.ctx.state.save_admin(admin)?;
        self.ctx.state.save_admins(self.core.admin_records())?;
        self.ctx.state.install_ca_key(ca)
    }

    /// Sends token records to every other admin connected, and waits (at most
    /// `PUSH_WAIT`) for their answers, which come back as events: what must be out
    /// before a token is printed or a joiner answered (`control::admins::tokens`).
    /// Returns how many admins were asked; the future, how many took them.
    pub(super) fn share_tokens(
        &self,
        records: Vec<Vec<u8>>,
    ) -> (
        usize,
        impl std::future::Future<Output = usize> + Send + 'static,
    ) {
        let conns: Vec<quinn::Connection> = if records.is_empty() {
            Vec::new()
        } else {
            (self.core.admin_links(now()).iter())
                .filter_map(|l| self.conns.get(l).cloned())
                .collect()
        };
        let asked = conns.len();
        let (tx, traffic) = (self.events_tx.clone(), self.ctx.traffic.clone());
        let all = futures::future::join_all(conns.into_iter().map(move |conn| {
            let (request, tx, traffic) = (
                Request::Admins(records.clone()),
                tx.clone(),
                traffic.clone(),
            );
            async move {
                match net::ask(conn, request, traffic).await {
                    Ok(Response::Admins(theirs)) => {
                        if !theirs.is_empty() {
                            let _ = tx.send(Event::Admins(theirs));
                        }
                        true
                    }
                    _ => false,
                }
            }
        }));
        let done = async move {
            tokio::time::timeout(super::PUSH_WAIT, all)
                .await
                .map_or(0, |took| took.into_iter().filter(|t| *t).count())
        };
        (asked, done)
    }

    /// Swaps admin records (and, between admins, token records) with the member on
    /// `link` (at every full sync).
    pub(super) fn exchange_admins(&self, link: super::core::LinkId) {
        self.hand_off_ca_key(Some(link));
        let Some(conn) = self.conns.get(&link).cloned() else {
            return;
        };
        let request = Request::Admins(self.core.admin_records_for(link, now()));
        let (tx, traffic) = (self.events_tx.clone(), self.ctx.traffic.clone());
        tokio::spawn(async move {
            if let Ok(Response::Admins(records)) = net::ask(conn, request, traffic).await
                && !records.is_empty()
            {
                let _ = tx.send(Event::Admins(records));
            }
        });
    }
}
