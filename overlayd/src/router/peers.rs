//! The router's peers and how they change at runtime: the copy-on-write [`PeerTable`],
//! [`Peer`] and its locked [`PeerState`], and the writers [`Router::upsert_peer`] and
//! [`Router::remove_peer`]. A writer builds the next table from the current one under the
//! router's writer mutex and publishes it with one atomic store; the data path keeps
//! reading whichever table it loaded, without a lock.
//!
//! A peer's index is the upper 24 bits of its boringtun session indices and is never
//! reused while the process runs: a removed peer leaves an empty slot, so a datagram for
//! one of its sessions finds no peer rather than a newer one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use boringtun::noise::Tunn;
use ipnet::IpNet;
use keys::{Name, PublicKey};
use protocol::policy::flowlog::FlowWindow;
use protocol::routing::RoutingTable;

use super::policy::{ActivePolicy, PeerPolicyState};
use super::{DropCounters, HandshakeCounters, Router};

/// Peer indices available to one process: boringtun keeps 24 bits for them.
pub const MAX_PEER_INDICES: usize = 1 << 24;

/// What a peer's mutex guards.
pub struct PeerState {
    /// The WireGuard state machine.
    pub tunn: Tunn,
    /// Where its packets go now: the last endpoint given for it, or the source of its
    /// latest authenticated packet, whichever came later.
    pub endpoint: Option<SocketAddr>,
    /// The endpoint last given by config or control plane; a new one replaces `endpoint`
    /// only when it differs from this, so a stale advertisement does not undo roaming.
    pub(super) configured_endpoint: Option<SocketAddr>,
    /// Set under this lock by `remove_peer`: from then on nothing is sent to or accepted
    /// from the peer, even by a batch that loaded the table before the removal.
    pub(super) removed: bool,
    /// The policy's rules for this peer and its tracked flows, while a policy is in force.
    pub(super) policy: Option<PeerPolicyState>,
    /// This host sent an initiation that has not completed yet: if boringtun gives up on
    /// it, that is a failed handshake (`handshakes.rs`).
    pub(super) handshake_pending: bool,
    /// Its flows since the flow log last took them, while the flow log is on.
    pub(super) flows: Option<FlowWindow>,
}

/// What may change about a peer without touching its tunnel; swapped whole.
pub(super) struct PeerInfo {
    pub(super) name: Option<String>,
    pub(super) subnets: Vec<IpNet>,
    /// Its name as the policy's `node:` selectors see it (`None`: not a valid node name).
    pub(super) policy_name: Option<Name>,
    /// Its certificate's groups (none for a static peer).
    pub(super) groups: Vec<Name>,
}

impl PeerInfo {
    fn new(name: Option<String>, subnets: Vec<IpNet>, groups: Vec<Name>) -> PeerInfo {
        PeerInfo {
            policy_name: name.as_deref().and_then(|n| Name::new(n).ok()),
            name,
            subnets,
            groups,
        }
    }
}

/// A peer: its tunnel, counters, and what it is known as.
pub struct Peer {
    /// Its slot in the peer table; also the upper 24 bits of its session indices.
    pub index: usize,
    /// Its static public key.
    pub public_key: PublicKey,
    /// Keepalive interval, fixed when its tunnel was made.
    pub persistent_keepalive: Option<u16>,
    info: ArcSwap<PeerInfo>,
    state: Mutex<PeerState>,
    /// Payload bytes received.
    pub rx_bytes: AtomicU64,
    /// Payload bytes sent.
    pub tx_bytes: AtomicU64,
    /// Drops attributed to this peer.
    pub drops: DropCounters,
    /// Handshakes initiated, completed and failed.
    pub handshakes: HandshakeCounters,
}

impl Peer {
    /// Locks the peer's tunnel state. A poisoned lock means a panic inside boringtun on
    /// another thread; the state is still the best we have, so keep going.
    pub fn lock(&self) -> MutexGuard<'_, PeerState> {
        crate::util::lock(&self.state)
    }

    /// Seconds since the last handshake, and the current endpoint.
    pub fn handshake_age_and_endpoint(&self) -> (Option<Duration>, Option<SocketAddr>) {
        let st = self.lock();
        (st.tunn.stats().0, st.endpoint)
    }

    /// Its subnets now: routed to it, and the only inner sources accepted from it.
    pub fn subnets(&self) -> Vec<IpNet> {
        self.info.load().subnets.clone()
    }

    /// Its name, for display.
    pub fn name(&self) -> Option<String> {
        self.info.load().name.clone()
    }

    /// Its groups (from its certificate), as the policy sees them.
    pub fn groups(&self) -> Vec<Name> {
        self.info.load().groups.clone()
    }

    pub(super) fn info_full(&self) -> Arc<PeerInfo> {
        self.info.load_full()
    }

    /// Whether `remove_peer` removed it (a snapshot taken before may still hold it).
    pub fn is_removed(&self) -> bool {
        self.lock().removed
    }
}

/// A peer as the control plane (or the config file) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Its WireGuard public key: the identity, never changes for a peer.
    pub public_key: PublicKey,
    /// For display (logs, API).
    pub name: Option<String>,
    /// Where to reach it; `None` waits for it to initiate (and never forgets one known).
    pub endpoint: Option<SocketAddr>,
    /// Routed to it, and accepted as inner sources from it.
    pub subnets: Vec<IpNet>,
    /// Its certificate's groups, for the policy (none for a static peer).
    pub groups: Vec<Name>,
    /// Keepalive interval in seconds; only used when the peer is added.
    pub persistent_keepalive: Option<u16>,
}

/// What [`Router::upsert_peer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    /// A new peer, with a fresh tunnel at this index; no handshake yet (see
    /// [`Router::initiate`]).
    Added {
        /// Its index.
        index: usize,
    },
    /// An existing peer, its tunnel kept. Both `false` when only the name changed.
    Updated {
        /// The given endpoint was new and is now where its packets go.
        endpoint_changed: bool,
        /// Its subnets changed (routes rebuilt).
        subnets_changed: bool,
    },
    /// Nothing changed.
    Unchanged,
}

/// Why a peer change was refused; the peer table is as before.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// The peer has this router's own public key.
    #[error("peer {peer} has this host's own public key; a host cannot be its own peer")]
    OwnKey {
        /// The peer, by name and key.
        peer: String,
    },
    /// One of the peer's subnets overlaps a subnet of another peer.
    #[error(
        "peer {peer} cannot have subnet {subnet}: it overlaps subnet {other_subnet} of peer {other}; each address must route to one peer"
    )]
    SubnetOverlap {
        /// The peer being added or updated.
        peer: String,
        /// Its subnet.
        subnet: IpNet,
        /// The peer that has the other subnet.
        other: String,
        /// The other peer's subnet.
        other_subnet: IpNet,
    },
    /// Every peer index of this process has been handed out.
    #[error(
        "cannot add peer {peer}: all {MAX_PEER_INDICES} peer indices of this process are used; restart overlayd"
    )]
    IndicesExhausted {
        /// The peer.
        peer: String,
    },
}

/// The peers at one moment: slots by index (`None` once removed, never reused), the
/// index of each key, and the routes. Never changed once published.
#[derive(Default, Clone)]
pub struct PeerTable {
    peers: Vec<Option<Arc<Peer>>>,
    by_key: HashMap<[u8; 32], usize>,
    pub(super) routes: RoutingTable<usize>,
    /// This host's own subnets and addresses: the only destinations a decrypted packet
    /// may have ([`Router::set_local_networks`]).
    local: Arc<[IpNet]>,
    /// The network policy in force ([`Router::set_policy`]); `None`: all may talk.
    pub(super) policy: Option<Arc<ActivePolicy>>,
    /// Whether packets are counted in the flow log ([`Router::set_flow_log`]).
    pub(super) flow_log: bool,
}

impl PeerTable {
    /// The peers present, by index.
    pub fn present(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.peers.iter().flatten()
    }

    /// The peer with `key`.
    pub fn by_key(&self, key: &PublicKey) -> Option<&Arc<Peer>> {
        self.by_key_bytes(key.as_bytes())
    }

    pub(super) fn by_key_bytes(&self, key: &[u8; 32]) -> Option<&Arc<Peer>> {
        self.by_key.get(key).and_then(|i| self.peers[*i].as_ref())
    }

    /// The peer whose session has `receiver_index` (boringtun: peer index << 8 | n).
    pub(super) fn by_receiver_index(&self, receiver_index: u32) -> Option<&Arc<Peer>> {
        self.peers
            .get((receiver_index >> 8) as usize)
            .and_then(Option::as_ref)
    }

    /// Whether `dst` is one of this host's own subnets or addresses.
    pub(super) fn is_local(&self, dst: IpAddr) -> bool {
        self.local.iter().any(|n| n.contains(&dst))
    }

    /// The peer that `dst` routes to.
    pub(super) fn route(&self, dst: IpAddr) -> Option<&Arc<Peer>> {
        let index = self.routes.lookup(dst)?;
        self.peers.get(index).and_then(Option::as_ref)
    }

    fn rebuild_routes(&mut self) {
        let mut routes = RoutingTable::new();
        for p in self.peers.iter().flatten() {
            for net in &p.info.load().subnets {
                routes.insert(*net, p.index);
            }
        }
        self.routes = routes;
    }
}

/// "name (key abcd…)" or "key abcd…", for messages.
fn label(name: Option<&str>, key: &PublicKey) -> String {
    match name {
        Some(n) => format!("{n} (key {})", key.short()),
        None => format!("key {}", key.short()),
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl Router {
    /// Sets this host's own subnets and addresses (its container subnets, its overlay
    /// address): a decrypted packet is delivered only if its destination lies in one of
    /// them. Until they are set, nothing is delivered. Returns whether they changed.
    pub fn set_local_networks(&self, nets: &[IpNet]) -> bool {
        let _writer = crate::util::lock(&self.writer);
        let mut local: Vec<IpNet> = nets.iter().map(IpNet::trunc).collect();
        local.sort();
        local.dedup();
        let current = self.table.load_full();
        if *current.local == *local {
            return false;
        }
        let mut next = PeerTable::clone(&current);
        next.local = local.into();
        self.table.store(Arc::new(next));
        true
    }

    /// This host's own subnets and addresses, as last set.
    pub fn local_networks(&self) -> Vec<IpNet> {
        self.table.load().local.to_vec()
    }

    /// Adds a peer, or updates the one with the same key in place (its tunnel, sessions
    /// and counters stay): name, subnets (routes rebuilt), and endpoint when it differs
    /// from the one last given for this peer, so that an endpoint learnt from the peer's
    /// authenticated packets is not overwritten by the same stale advertisement again.
    /// `persistent_keepalive` is only used for a new peer. Refuses this host's own key
    /// and subnets that overlap another peer's; then nothing changes.
    pub fn upsert_peer(&self, spec: PeerSpec) -> Result<Upserted, RouterError> {
        let _writer = crate::util::lock(&self.writer);
        let who = || label(spec.name.as_deref(), &spec.public_key);
        if spec.public_key == self.own_key {
            return Err(RouterError::OwnKey { peer: who() });
        }
        let mut subnets: Vec<IpNet> = spec.subnets.iter().map(IpNet::trunc).collect();
        subnets.sort();
        subnets.dedup();
        let current = self.table.load_full();
        for other in current.present() {
            if other.public_key == spec.public_key {
                continue;
            }
            let info = other.info.load();
            for subnet in &subnets {
                if let Some(theirs) = info.subnets.iter().find(|t| overlaps(subnet, t)) {
                    return Err(RouterError::SubnetOverlap {
                        peer: who(),
                        subnet: *subnet,
                        other: label(info.name.as_deref(), &other.public_key),
                        other_subnet: *theirs,
                    });
                }
            }
        }
        match current.by_key(&spec.public_key) {
            Some(peer) => Ok(self.update(&current, peer, spec, subnets)),
            None => {
                let who = who();
                self.add(&current, spec, subnets, who)
            }
        }
    }

    fn add(
        &self,
        current: &PeerTable,
        spec: PeerSpec,
        subnets: Vec<IpNet>,
        who: String,
    ) -> Result<Upserted, RouterError> {
        let index = current.peers.len();
        if index >= MAX_PEER_INDICES {
            return Err(RouterError::IndicesExhausted { peer: who });
        }
        let tunn = Tunn::new(
            self.private_key.clone(),
            spec.public_key.to_dalek(),
            None,
            spec.persistent_keepalive,
            // fits: index < 2^24, checked above
            index as u32,
            Some(self.mac1_only.clone()),
        );
        let peer = Arc::new(Peer {
            index,
            public_key: spec.public_key,
            persistent_keepalive: spec.persistent_keepalive,
            info: ArcSwap::from_pointee(PeerInfo::new(spec.name, subnets, spec.groups)),
            state: Mutex::new(PeerState {
                tunn,
                endpoint: spec.endpoint,
                configured_endpoint: spec.endpoint,
                removed: false,
                policy: None,
                handshake_pending: false,
                flows: None,
            }),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            drops: DropCounters::default(),
            handshakes: HandshakeCounters::default(),
        });
        let mut next = current.clone();
        next.peers.push(Some(peer));
        next.by_key.insert(*spec.public_key.as_bytes(), index);
        next.rebuild_routes();
        self.table.store(Arc::new(next));
        tracing::debug!(peer = %who, index, "peer added");
        Ok(Upserted::Added { index })
    }

    fn update(
        &self,
        current: &PeerTable,
        peer: &Arc<Peer>,
        spec: PeerSpec,
        subnets: Vec<IpNet>,
    ) -> Upserted {
        let info = peer.info.load_full();
        let subnets_changed = info.subnets != subnets;
        let name_changed = info.name != spec.name || info.groups != spec.groups;
        let endpoint_changed = {
            let mut st = peer.lock();
            if st.configured_endpoint == spec.endpoint {
                false
            } else {
                st.configured_endpoint = spec.endpoint;
                match spec.endpoint {
                    Some(ep) if st.endpoint != Some(ep) => {
                        st.endpoint = Some(ep);
                        true
                    }
                    _ => false,
                }
            }
        };
        if subnets_changed || name_changed {
            peer.info
                .store(Arc::new(PeerInfo::new(spec.name, subnets, spec.groups)));
        }
        if subnets_changed {
            let mut next = current.clone();
            next.rebuild_routes();
            self.table.store(Arc::new(next));
        }
        if endpoint_changed || subnets_changed || name_changed {
            Upserted::Updated {
                endpoint_changed,
                subnets_changed,
            }
        } else {
            Upserted::Unchanged
        }
    }

    /// Removes the peer with `key`: its routes go, and from when this returns nothing is
    /// encrypted to it or accepted from it, on any session (a batch that loaded the table
    /// before may still finish the packet it is on). Its index is not reused; its drop
    /// counts move to the router's. Returns whether it was a peer.
    pub fn remove_peer(&self, key: &PublicKey) -> bool {
        let _writer = crate::util::lock(&self.writer);
        let current = self.table.load_full();
        let Some(&index) = current.by_key.get(key.as_bytes()) else {
            return false;
        };
        let mut next = (*current).clone();
        next.by_key.remove(key.as_bytes());
        let Some(peer) = next.peers[index].take() else {
            return false;
        };
        next.rebuild_routes();
        self.table.store(Arc::new(next));
        {
            let mut st = peer.lock();
            st.removed = true;
            st.endpoint = None;
            self.park_flows(&peer, &mut st);
        }
        for (reason, n) in peer.drops.snapshot() {
            self.drops.add_many(reason, n);
        }
        tracing::debug!(peer = %label(peer.name().as_deref(), key), index, "peer removed");
        true
    }
}

#[cfg(test)]
mod tests;
