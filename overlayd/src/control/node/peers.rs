//! The router and kernel routes kept in step with the members the core routes
//! ([`Member::sync_peers`], for [`super::core::Action::Peers`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use keys::PublicKey;

use super::Member;
use crate::router::{Initiate, PeerSpec, Upserted};

impl Member {
    /// Brings the router and kernel routes in line with `desired`: each is added or
    /// updated, and every member tunnel and route added before and not in it is withdrawn.
    pub(super) async fn sync_peers(&mut self, desired: Vec<PeerSpec>) {
        let wanted: HashSet<PublicKey> = desired.iter().map(|s| s.public_key).collect();
        let mut gone: Vec<PublicKey> = self
            .routed
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        self.follow_rotations(&mut gone, &desired);
        for key in gone {
            self.unroute(&key).await;
        }
        for spec in desired {
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
                Err(e) => self
                    .throttle
                    .warn(Instant::now(), "cannot add a member's tunnel", &e),
            }
        }
    }

    /// Members whose record names a new WireGuard key (`overlayctl rotate-key`): of the
    /// keys `gone`, each whose member (by name) is in `desired` with a new key and the
    /// same subnets hands its tunnel over to the new key (`router::rotation`) rather than
    /// going: the kernel routes stay as they are, and the new key is greeted at once.
    fn follow_rotations(&mut self, gone: &mut Vec<PublicKey>, desired: &[PeerSpec]) {
        let router = &self.ctx.router;
        let grace = Duration::from_secs(self.ctx.config().control.key_rotation_grace_s);
        gone.retain(|old| {
            let Some(name) = router.peer(old).and_then(|p| p.name()) else {
                return true;
            };
            let Some(subnets) = self.routed.get(old) else {
                return true;
            };
            let Some(spec) = desired.iter().find(|s| {
                s.name.as_deref() == Some(name.as_str())
                    && s.subnets == *subnets
                    && router.peer(&s.public_key).is_none()
            }) else {
                return true;
            };
            match router.rotate_peer(old, spec.clone(), grace) {
                Ok(_) => {
                    let subnets = self.routed.remove(old).unwrap_or_default();
                    self.routed.insert(spec.public_key, subnets);
                    router.initiate_and_send(Initiate::Peer(&spec.public_key), &*self.ctx.udp);
                    false
                }
                Err(e) => {
                    self.throttle
                        .warn(Instant::now(), "cannot follow a member's new key", &e);
                    true
                }
            }
        });
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

    async fn unroute(&mut self, key: &PublicKey) {
        self.ctx.router.remove_peer(key);
        self.unroute_kernel(key).await;
    }
}
