//! The router and kernel routes kept in step with the directory and the failure detector
//! ([`Member::sync_peers`]), and this host's own address followed when it is not set in
//! the config ([`Member::follow_address`]).

use std::collections::HashSet;

use ipnet::IpNet;
use keys::PublicKey;

use super::Member;
use crate::router::{Initiate, PeerSpec, Upserted};

impl Member {
    /// This host moved (a new underlay address, found as the source address towards another
    /// member): publish a new record so members and restarts reach it at the new address.
    pub(super) fn follow_address(&mut self) {
        let towards = {
            let dir = self.now_dir();
            dir.live_members()
                .filter(|m| *m.name != self.me.node)
                .find_map(|m| m.endpoints.first().copied())
        };
        let Some(towards) = towards else { return };
        let Ok(ip) = crate::control::detect_address(Some(towards), &self.ctx.config.tun_name)
        else {
            return;
        };
        if ip == self.advertise {
            return;
        }
        tracing::info!(old = %self.advertise, new = %ip, "this host's underlay address changed; announcing it");
        self.advertise = ip;
        self.net.record_version += 1;
        self.publish_own_record();
    }

    /// Brings the router and kernel routes in line with the directory and liveness.
    pub(super) async fn sync_peers(&mut self) {
        let desired: Vec<(PeerSpec, u32)> = {
            let dir = self.now_dir();
            dir.live_members()
                .filter(|m| *m.name != self.me.node)
                .filter(|m| {
                    self.liveness
                        .get(&(m.serial as u32))
                        .is_none_or(|(_, up)| *up)
                })
                .map(|m| {
                    (
                        PeerSpec {
                            public_key: *m.wireguard_key,
                            name: Some(m.name.to_string()),
                            endpoint: m.endpoints.first().copied(),
                            subnets: m.subnets.to_vec(),
                            groups: m.groups.to_vec(),
                            persistent_keepalive: None,
                        },
                        m.serial as u32,
                    )
                })
                .collect()
        };
        let wanted: HashSet<PublicKey> = desired.iter().map(|(s, _)| s.public_key).collect();
        let gone: Vec<PublicKey> = self
            .routed
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for key in gone {
            self.unroute(&key).await;
        }
        for (spec, _) in desired {
            let key = spec.public_key;
            let subnets = spec.subnets.clone();
            match self.ctx.router.upsert_peer(spec) {
                Ok(Upserted::Added { .. }) => {
                    self.route(&key, &subnets).await;
                    self.ctx
                        .router
                        .initiate_and_send(Initiate::Peer(&key), &*self.ctx.udp);
                }
                Ok(Upserted::Updated {
                    subnets_changed: true,
                    ..
                }) => {
                    self.unroute_kernel(&key).await;
                    self.route(&key, &subnets).await;
                }
                Ok(_) => {
                    self.routed.entry(key).or_insert(subnets);
                }
                Err(e) => self.throttle.warn("cannot add a member's tunnel", &e),
            }
        }
    }

    async fn route(&mut self, key: &PublicKey, subnets: &[IpNet]) {
        let mut routes = self.ctx.routes.lock().await;
        // Read under the routes lock, which `Ctx::apply_address` holds while it changes it.
        let source = self.ctx.address();
        for net in subnets {
            if let Err(e) = routes.add(*net, self.ctx.if_index, source).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot add a member's route");
            }
        }
        self.routed.insert(*key, subnets.to_vec());
    }

    async fn unroute_kernel(&mut self, key: &PublicKey) {
        if let Some(subnets) = self.routed.remove(key) {
            let mut routes = self.ctx.routes.lock().await;
            for net in subnets {
                routes.remove(net).await;
            }
        }
    }

    pub(super) async fn unroute(&mut self, key: &PublicKey) {
        self.ctx.router.remove_peer(key);
        self.unroute_kernel(key).await;
    }
}
