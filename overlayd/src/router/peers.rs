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
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use boringtun::noise::Tunn;
use ipnet::IpNet;
use keys::{Name, PublicKey};
use protocol::policy::flowlog::FlowWindow;
use protocol::routing::RoutingTable;

use super::policy::{ActivePolicy, PeerPolicyState};
use super::{DropCounters, HandshakeCounters, Router, relay};

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
    /// When the last persistent keepalive went (the router's clock, ms); `None`: one is
    /// due at the next tick (the interval was just set or changed, as `wg set` does).
    pub(super) keepalive_sent_ms: Option<u64>,
    /// The relay its datagrams go through (that member's endpoint), if they do
    /// (`relay.rs`); `endpoint` then stays the peer's own, for direct probes.
    pub via: Option<SocketAddr>,
    /// When it took its relay (the router's clock, ms).
    pub(super) via_since_ms: u64,
    /// Since when an initiation is out without a session, on the direct path.
    pub(super) stuck_since_ms: Option<u64>,
    /// When an initiation last went straight to it while relayed.
    pub(super) probed_ms: u64,
    /// When its last authenticated message came (the router's clock, ms).
    pub(super) heard_ms: u64,
    /// When a data packet last went to it through a relay.
    pub(super) sent_relayed_ms: u64,
    /// When the initiation last went through its relay again for want of a session.
    pub(super) relay_resent_ms: u64,
    /// A new address its record gave while the tunnel had a session, held back
    /// (`PeerSpec::advertised`): tried once the tunnel is stuck without one.
    pub(super) held_endpoint: Option<SocketAddr>,
    /// The source of its last authenticated datagram that came straight from it (not
    /// through a relay): the only address this host relays to it at (`relay.rs`), so that
    /// no member can make a relay send to an address it merely wrote in its record.
    pub(super) proven_endpoint: Option<SocketAddr>,
    /// The rotation of this host's key its tunnel is on (`rotation.rs`).
    pub(super) key_generation: u64,
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

/// Whether upserting `spec` (with its normalized `subnets`) would leave the peer with its
/// key in `table` exactly as it is (what [`Router::update`] would answer `Unchanged` for).
fn unchanged(table: &PeerTable, spec: &PeerSpec, subnets: &[IpNet]) -> bool {
    let Some(peer) = table.by_key(&spec.public_key) else {
        return false;
    };
    let info = peer.info.load();
    info.subnets == subnets
        && info.name == spec.name
        && info.groups == spec.groups
        && peer.keepalive.load(Ordering::Relaxed) == spec.persistent_keepalive.unwrap_or(0)
        && peer.lock().configured_endpoint == spec.endpoint
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
    /// Persistent keepalive interval in seconds, 0 for none. The router sends these
    /// keepalives itself (`Router::tick`), not boringtun, whose interval is fixed when
    /// its `Tunn` is made: so the interval changes without touching the tunnel.
    keepalive: AtomicU16,
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
    /// The index of the peer that replaced it (its member's new key; `usize::MAX`: none),
    /// see `rotation.rs`.
    pub(super) successor: AtomicUsize,
}

impl Peer {
    /// Locks the peer's tunnel state. A poisoned lock means a panic inside boringtun on
    /// another thread; the state is still the best we have, so keep going.
    pub fn lock(&self) -> MutexGuard<'_, PeerState> {
        crate::util::lock(&self.state)
    }

    /// Its persistent keepalive interval in seconds, if any.
    pub fn persistent_keepalive(&self) -> Option<u16> {
        match self.keepalive.load(Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        }
    }

    /// Seconds since the last handshake, and the current endpoint.
    pub fn handshake_age_and_endpoint(&self) -> (Option<Duration>, Option<SocketAddr>) {
        let st = self.lock();
        (st.tunn.stats().0, st.endpoint)
    }

    /// The relay its datagrams go through now (that member's endpoint), if any.
    pub fn via(&self) -> Option<SocketAddr> {
        self.lock().via
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

    /// Takes its subnets away (a predecessor's, `rotation.rs`): routed elsewhere.
    pub(super) fn set_subnets_none(&self) {
        let info = self.info.load_full();
        self.info.store(Arc::new(PeerInfo::new(
            info.name.clone(),
            Vec::new(),
            info.groups.clone(),
        )));
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
    /// Persistent keepalive interval in seconds; a change takes effect at once, on the
    /// tunnel as it is.
    pub persistent_keepalive: Option<u16>,
    /// Whether `endpoint` is what the peer's own record says (the control plane), not the
    /// operator's config: then a new one does not move a tunnel that has a session (its
    /// endpoint was proved by an authenticated packet, and a record's address may be one a
    /// lying member made the peer publish); it is tried once the tunnel has no session.
    pub advertised: bool,
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
    /// An existing peer, its tunnel kept. All `false` when only the name changed.
    Updated {
        /// The given endpoint was new and is now where its packets go.
        endpoint_changed: bool,
        /// Its subnets changed (routes rebuilt).
        subnets_changed: bool,
        /// Its persistent keepalive interval changed.
        keepalive_changed: bool,
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

    /// Whether the peer at `index` is present (not removed from this table).
    pub(super) fn has_index(&self, index: usize) -> bool {
        self.peers.get(index).is_some_and(Option::is_some)
    }

    /// The peer at `index`, if present.
    pub(super) fn peer_at(&self, index: usize) -> Option<&Arc<Peer>> {
        self.peers.get(index).and_then(Option::as_ref)
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

    pub(super) fn rebuild_routes(&mut self) {
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
    /// and counters stay): name, subnets (routes rebuilt), keepalive interval, and endpoint
    /// when it differs from the one last given for this peer, so that an endpoint learnt
    /// from the peer's authenticated packets is not overwritten by the same stale
    /// advertisement again. Refuses this host's own key and subnets that overlap another
    /// peer's; then nothing changes.
    pub fn upsert_peer(&self, spec: PeerSpec) -> Result<Upserted, RouterError> {
        let mut done = self.change_peers(&[], vec![spec])?;
        Ok(done.pop().unwrap_or(Upserted::Unchanged))
    }

    /// Removes the peers with the keys in `remove` and adds or updates each of `upsert`
    /// (as [`Router::upsert_peer`] does) in one step: checked as a whole first (see
    /// [`Router::check_changes`]), then published as one table, so that a subnet may move
    /// from one peer to another, or two peers swap theirs. On a refusal nothing changes.
    /// Returns what happened to each of `upsert`, in order.
    pub fn change_peers(
        &self,
        remove: &[PublicKey],
        upsert: Vec<PeerSpec>,
    ) -> Result<Vec<Upserted>, RouterError> {
        let _writer = crate::util::lock(&self.writer);
        let current = self.table.load_full();
        let upsert: Vec<(PeerSpec, Vec<IpNet>)> = upsert
            .into_iter()
            .map(|spec| {
                let subnets = normalized(&spec.subnets);
                (spec, subnets)
            })
            .collect();
        // The common case (a member list synced again, nothing new): every spec is what its
        // peer already has, so nothing would change and no check can fail (the table as it
        // is passed them). Answered without the O(peers) check and table copy per spec,
        // which at 100 members made every directory change cost O(peers^2).
        if remove.is_empty()
            && upsert
                .iter()
                .all(|(spec, subnets)| unchanged(&current, spec, subnets))
        {
            return Ok(vec![Upserted::Unchanged; upsert.len()]);
        }
        self.check_in(&current, remove, &upsert)?;
        let mut next = PeerTable::clone(&current);
        let mut removed = Vec::new();
        for key in remove {
            if let Some(index) = next.by_key.remove(key.as_bytes())
                && let Some(peer) = next.peers[index].take()
            {
                removed.push(peer);
            }
        }
        let mut rebuild = !removed.is_empty();
        let mut done = Vec::with_capacity(upsert.len());
        for (spec, subnets) in upsert {
            match next.by_key(&spec.public_key).cloned() {
                Some(peer) => {
                    let (upserted, routes_changed) = self.update(&peer, spec, subnets);
                    rebuild |= routes_changed;
                    done.push(upserted);
                }
                None => {
                    done.push(self.add(&mut next, spec, subnets));
                    rebuild = true;
                }
            }
        }
        if rebuild {
            next.rebuild_routes();
            self.table.store(Arc::new(next));
        }
        // An endpoint given may have changed: the relay map follows.
        self.relay_map_changed();
        let retired = !removed.is_empty();
        for peer in removed {
            self.retire(&peer);
        }
        if retired {
            self.refresh_relay_map(&self.table.load());
        }
        Ok(done)
    }

    /// Whether [`Router::change_peers`] would take these changes now, without making them:
    /// none of `upsert` has this host's key, and once the peers in `remove` are gone and
    /// `upsert` applied, no subnet of one of `upsert` overlaps a subnet of another peer.
    pub fn check_changes(
        &self,
        remove: &[PublicKey],
        upsert: &[PeerSpec],
    ) -> Result<(), RouterError> {
        let _writer = crate::util::lock(&self.writer);
        let upsert: Vec<(PeerSpec, Vec<IpNet>)> = upsert
            .iter()
            .map(|spec| (spec.clone(), normalized(&spec.subnets)))
            .collect();
        self.check_in(&self.table.load(), remove, &upsert)
    }

    pub(super) fn check_in(
        &self,
        current: &PeerTable,
        remove: &[PublicKey],
        upsert: &[(PeerSpec, Vec<IpNet>)],
    ) -> Result<(), RouterError> {
        // Every peer after the change: (name, key, subnets).
        let mut after: Vec<(Option<String>, PublicKey, Vec<IpNet>)> = current
            .present()
            .filter(|p| {
                !remove.contains(&p.public_key)
                    && !upsert.iter().any(|(s, _)| s.public_key == p.public_key)
            })
            .map(|p| {
                let info = p.info.load();
                (info.name.clone(), p.public_key, info.subnets.clone())
            })
            .collect();
        let mut new = 0;
        for (spec, subnets) in upsert {
            if spec.public_key == self.keys.load().key {
                return Err(RouterError::OwnKey {
                    peer: label(spec.name.as_deref(), &spec.public_key),
                });
            }
            if current.by_key(&spec.public_key).is_none() {
                new += 1;
            }
            after.push((spec.name.clone(), spec.public_key, subnets.clone()));
        }
        if current.peers.len() + new > MAX_PEER_INDICES {
            let (spec, _) = &upsert[upsert.len() - 1];
            return Err(RouterError::IndicesExhausted {
                peer: label(spec.name.as_deref(), &spec.public_key),
            });
        }
        for (spec, subnets) in upsert {
            for (name, key, theirs) in &after {
                if *key == spec.public_key {
                    continue;
                }
                for subnet in subnets {
                    if let Some(other) = theirs.iter().find(|t| overlaps(subnet, t)) {
                        return Err(RouterError::SubnetOverlap {
                            peer: label(spec.name.as_deref(), &spec.public_key),
                            subnet: *subnet,
                            other: label(name.as_deref(), key),
                            other_subnet: *other,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Puts a new peer into `next`, the table being built.
    pub(super) fn add(
        &self,
        next: &mut PeerTable,
        spec: PeerSpec,
        subnets: Vec<IpNet>,
    ) -> Upserted {
        // Below MAX_PEER_INDICES: checked by `check_in` (fits 24 bits).
        let index = next.peers.len();
        let keys = self.keys.load();
        let tunn = Tunn::new(
            keys.secret.clone(),
            spec.public_key.to_dalek(),
            None,
            // Persistent keepalives are the router's (`Peer::keepalive`).
            None,
            index as u32,
            Some(keys.mac1_only.clone()),
        );
        let who = label(spec.name.as_deref(), &spec.public_key);
        let peer = Arc::new(Peer {
            index,
            public_key: spec.public_key,
            keepalive: AtomicU16::new(spec.persistent_keepalive.unwrap_or(0)),
            info: ArcSwap::from_pointee(PeerInfo::new(spec.name, subnets, spec.groups)),
            state: Mutex::new(PeerState {
                tunn,
                endpoint: spec.endpoint,
                configured_endpoint: spec.endpoint,
                removed: false,
                policy: None,
                handshake_pending: false,
                flows: None,
                // As boringtun did: the first keepalive one interval after the tunnel is
                // made (the handshake at start or on adding comes from `initiate`).
                keepalive_sent_ms: Some(self.clock_ms.load(Ordering::Relaxed)),
                via: None,
                via_since_ms: 0,
                stuck_since_ms: None,
                probed_ms: 0,
                heard_ms: 0,
                sent_relayed_ms: 0,
                relay_resent_ms: 0,
                held_endpoint: None,
                proven_endpoint: None,
                key_generation: keys.generation,
            }),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            drops: DropCounters::default(),
            handshakes: HandshakeCounters::default(),
            successor: AtomicUsize::new(usize::MAX),
        });
        next.peers.push(Some(peer));
        next.by_key.insert(*spec.public_key.as_bytes(), index);
        tracing::debug!(peer = %who, index, "peer added");
        Upserted::Added { index }
    }

    /// Updates `peer` in place; also returns whether its routes must be rebuilt.
    fn update(&self, peer: &Arc<Peer>, spec: PeerSpec, subnets: Vec<IpNet>) -> (Upserted, bool) {
        let info = peer.info.load_full();
        let subnets_changed = info.subnets != subnets;
        let name_changed = info.name != spec.name || info.groups != spec.groups;
        let keepalive = spec.persistent_keepalive.unwrap_or(0);
        let keepalive_changed = peer.keepalive.swap(keepalive, Ordering::Relaxed) != keepalive;
        let endpoint_changed = {
            let mut st = peer.lock();
            if keepalive_changed {
                st.keepalive_sent_ms = None;
            }
            if st.configured_endpoint == spec.endpoint {
                false
            } else {
                st.configured_endpoint = spec.endpoint;
                let proved = spec.advertised && st.endpoint.is_some() && relay::has_session(&st);
                st.held_endpoint = spec
                    .endpoint
                    .filter(|ep| proved && st.endpoint != Some(*ep));
                match spec.endpoint {
                    Some(ep) if st.endpoint != Some(ep) && !proved => {
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
        let upserted = if endpoint_changed || subnets_changed || name_changed || keepalive_changed {
            Upserted::Updated {
                endpoint_changed,
                subnets_changed,
                keepalive_changed,
            }
        } else {
            Upserted::Unchanged
        };
        (upserted, subnets_changed)
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
        let next = Arc::new(next);
        self.table.store(next.clone());
        self.retire(&peer);
        // Nothing more is relayed from or to it (a revocation takes effect here).
        self.refresh_relay_map(&next);
        true
    }

    /// Removes `peer` (a predecessor, `rotation.rs`) if it is still the peer of its key.
    pub(super) fn remove_predecessor(&self, peer: &Peer) -> bool {
        let current = self.peer(&peer.public_key);
        if current.is_some_and(|p| p.index == peer.index) {
            self.remove_peer(&peer.public_key)
        } else {
            false
        }
    }

    /// Marks a peer just taken out of the published table as removed (see
    /// [`Router::remove_peer`]).
    fn retire(&self, peer: &Peer) {
        {
            let mut st = peer.lock();
            st.removed = true;
            st.endpoint = None;
            st.via = None;
            self.park_flows(peer, &mut st);
        }
        for (reason, n) in peer.drops.snapshot() {
            self.drops.add_many(reason, n);
        }
        let key = &peer.public_key;
        tracing::debug!(peer = %label(peer.name().as_deref(), key), index = peer.index, "peer removed");
    }
}

/// Subnets with their host bits cleared, sorted, without repeats.
pub(super) fn normalized(subnets: &[IpNet]) -> Vec<IpNet> {
    let mut subnets: Vec<IpNet> = subnets.iter().map(IpNet::trunc).collect();
    subnets.sort();
    subnets.dedup();
    subnets
}

#[cfg(test)]
mod tests;
