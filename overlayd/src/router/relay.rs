//! Relays through a member: when two peers cannot reach each other (both behind NATs that
//! pick a new port per destination), their WireGuard datagrams go through a third member
//! both reach, framed with a 12-byte header. The relay forwards them as they are: it has
//! no key of their session, so it can never decrypt them; the tunnel stays end to end.
//!
//! Wire format (one UDP datagram, on the tunnels' port):
//!
//! ```text
//! [type: 0x10 to a relay | 0x11 from a relay] [0, 0, 0] [key id: 8 bytes] [WireGuard message]
//! ```
//!
//! The key id is the first 8 bytes of a member's WireGuard public key: the destination's on
//! the way to the relay, the source's on the way from it. Neither type has QUIC's fixed bit
//! (0x40) nor is a WireGuard type (1 to 4), so the one-port demux tells all three apart by
//! the first byte (`datapath`).
//!
//! The relay is no open reflector (the rule, in [`Router::forward_relayed`]): it forwards
//! only a datagram whose source is the current endpoint of one of its peers (a current
//! member: a revoked one is no peer from the moment its revocation arrives), only to the
//! current endpoint of the peer the key id names (never to an address the sender picks),
//! never back to the sender, one datagram out per datagram in and never larger, and at
//! most [`RELAY_BYTES_PER_SECOND`] from each source (refilled by the tick only, never by
//! a rebuild of the map, which an endpoint change causes at most [`REBUILDS_PER_TICK`]
//! times between ticks). A host with `[control] relay = false` forwards nothing. A
//! receiver accepts a datagram from a relay only from the endpoint of a peer on the relay
//! list, and then only what authenticates as WireGuard (boringtun decides, as for any
//! datagram).
//!
//! Choosing the path (in [`Router::tick`], sans-IO: the router's clock, no socket): a peer
//! with an initiation out and no session for [`RELAY_AFTER_MS`] gets the first relay of
//! the control plane's list ([`Router::set_relays`]) that this host reaches directly, and
//! the initiation is sent again through it (and again every [`RELAY_RESEND_MS`] until a
//! session is up). While relayed, an initiation goes straight to
//! the peer's own endpoint every [`DIRECT_PROBE_MS`]: if it is answered directly, the
//! answer (authenticated) moves the peer back to direct, as roaming does. A relay that is
//! no longer on the list (down, left, revoked), that does not bring a session within
//! [`RELAY_RETRY_MS`], or through which data goes out while nothing comes back for
//! [`RELAY_SILENT_MS`] (it died before the control plane noticed) is replaced by the next
//! one. A flow that only goes one way hears WireGuard's passive keepalive every 10 s, so
//! it is moved to the next relay every few seconds: a handshake each time, no loss.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use boringtun::noise::TunnResult;
use keys::PublicKey;

use super::peers::{Peer, PeerState, PeerTable};
use super::{Router, handshakes};

/// First byte of a datagram for a relay to forward.
pub const TO_RELAY: u8 = 0x10;
/// First byte of a datagram a relay forwarded.
pub const FROM_RELAY: u8 = 0x11;
/// Bytes of a key id.
pub const KEY_ID_LEN: usize = 8;
/// Bytes of the relay header before the WireGuard message.
pub const HEADER_LEN: usize = 4 + KEY_ID_LEN;
/// What a relay forwards from one source at most, a second.
pub const RELAY_BYTES_PER_SECOND: i64 = 500_000_000;
/// The router's ticks a second (its timers run every 250 ms).
const TICKS_PER_SECOND: i64 = 4;
/// How often the relay map may be rebuilt between two ticks because an endpoint changed
/// (a peer roamed): enough for a few real roams to be followed at once, while a member
/// that changes its source port on every datagram cannot make each one cost a walk over
/// every peer (the next tick rebuilds the map anyway).
pub const REBUILDS_PER_TICK: u32 = 8;
/// A peer with an initiation out and no session this long goes through a relay.
pub const RELAY_AFTER_MS: u64 = 1500;
/// A relay that has not brought a session this long is replaced by the next.
pub const RELAY_RETRY_MS: u64 = 3000;
/// Relayed data going out and nothing heard back this long: the relay is taken for dead.
pub const RELAY_SILENT_MS: u64 = 4000;
/// While a relay has brought no session yet, how often the initiation is sent through it
/// again (the relay may have dropped the first: it did not know the sender yet, or took
/// the relayed datagram before the one that proved where the sender is).
pub const RELAY_RESEND_MS: u64 = 1000;
/// While relayed, how often an initiation goes straight to the peer.
pub const DIRECT_PROBE_MS: u64 = 10_000;
/// A session younger than this is one (WireGuard's REJECT_AFTER_TIME).
const SESSION_MS: u128 = 180_000;

/// A member's key id: the first [`KEY_ID_LEN`] bytes of its WireGuard key.
pub fn key_id(key: &PublicKey) -> [u8; KEY_ID_LEN] {
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&key.as_bytes()[..KEY_ID_LEN]);
    id
}

/// The relay type of `datagram` ([`TO_RELAY`] or [`FROM_RELAY`]) when it has a relay
/// header; `None` for anything else.
#[inline]
pub fn relay_kind(datagram: &[u8]) -> Option<u8> {
    match datagram {
        [kind @ (TO_RELAY | FROM_RELAY), 0, 0, 0, ..] if datagram.len() > HEADER_LEN => Some(*kind),
        _ => None,
    }
}

/// Writes a relay header of `kind` for key id `id` into `head` ([`HEADER_LEN`] bytes).
fn write_header(head: &mut [u8], kind: u8, id: &[u8; KEY_ID_LEN]) {
    head[..4].copy_from_slice(&[kind, 0, 0, 0]);
    head[4..HEADER_LEN].copy_from_slice(id);
}

/// What this host forwards as a relay: its peers' current direct endpoints, rebuilt every
/// tick and at every removal (so a revoked member is out at once). Each peer's budget is
/// refilled only by the tick: a rebuild between ticks carries it over, or a member could
/// refill its own by moving.
#[derive(Default)]
pub(super) struct RelayMap {
    by_addr: HashMap<SocketAddr, usize>,
    by_id: HashMap<[u8; KEY_ID_LEN], usize>,
    entries: HashMap<usize, Entry>,
    /// The endpoints of the peers on the relay list ([`Router::set_relays`]): the only
    /// sources this host takes [`FROM_RELAY`] datagrams from.
    relays: HashSet<SocketAddr>,
}

struct Entry {
    endpoint: SocketAddr,
    id: [u8; KEY_ID_LEN],
    /// Bytes it may still have forwarded until the next tick.
    budget: AtomicI64,
}

impl RelayMap {
    fn insert(&mut self, index: usize, key: &PublicKey, endpoint: SocketAddr, budget: i64) {
        let id = key_id(key);
        self.by_addr.insert(endpoint, index);
        self.by_id.insert(id, index);
        self.entries.insert(
            index,
            Entry {
                endpoint,
                id,
                budget: AtomicI64::new(budget),
            },
        );
    }

    /// Whether `addr` is the direct endpoint of a peer on the relay list.
    pub(super) fn is_relay(&self, addr: &SocketAddr) -> bool {
        self.relays.contains(addr)
    }
}

/// What the relay did, counted.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Datagrams forwarded for others.
    pub forwarded: AtomicU64,
    /// Datagrams refused: the source is no peer's endpoint (a stranger, a revoked member),
    /// or this host does not relay.
    pub refused_source: AtomicU64,
    /// Datagrams refused: the key id names no peer with an endpoint, or the sender itself.
    pub refused_destination: AtomicU64,
    /// Datagrams refused: the source sent more than [`RELAY_BYTES_PER_SECOND`].
    pub refused_rate: AtomicU64,
    /// Datagrams from a relay refused: the relay is no peer's endpoint.
    pub refused_from: AtomicU64,
    /// Times the relay map was rebuilt between ticks because an endpoint changed.
    pub rebuilds: AtomicU64,
}

/// A relay this host can use now: a peer it reaches directly.
#[derive(Debug, Clone, Copy)]
pub(super) struct Candidate {
    index: usize,
    endpoint: SocketAddr,
}

/// Whether the peer's tunnel has a session now.
pub(super) fn has_session(st: &PeerState) -> bool {
    st.tunn
        .stats()
        .0
        .is_some_and(|age| age.as_millis() < SESSION_MS)
}

/// Sends `bytes` to `peer` on its path now: straight to its endpoint, or framed to its
/// relay. Returns whether it went (`false`: no endpoint).
pub(super) fn send_on_path(
    peer: &Peer,
    st: &PeerState,
    bytes: &[u8],
    send: &mut dyn FnMut(SocketAddr, &[u8]),
) -> bool {
    match (st.via, st.endpoint) {
        (Some(relay), _) => {
            send_framed(relay, &key_id(&peer.public_key), bytes, send);
            true
        }
        (None, Some(endpoint)) => {
            send(endpoint, bytes);
            true
        }
        (None, None) => false,
    }
}

/// Sends `bytes` to `relay` behind a [`TO_RELAY`] header for key id `id`.
pub(super) fn send_framed(
    relay: SocketAddr,
    id: &[u8; KEY_ID_LEN],
    bytes: &[u8],
    send: &mut dyn FnMut(SocketAddr, &[u8]),
) {
    // Handshake messages and keepalives are small; a queued data packet fits too, unless
    // the MTU is a jumbo one.
    let mut stack = [0u8; 2048];
    let mut heap;
    let framed: &mut [u8] = if bytes.len() + HEADER_LEN <= stack.len() {
        &mut stack[..bytes.len() + HEADER_LEN]
    } else {
        heap = vec![0u8; bytes.len() + HEADER_LEN];
        &mut heap
    };
    write_header(framed, TO_RELAY, id);
    framed[HEADER_LEN..].copy_from_slice(bytes);
    send(relay, framed);
}

/// Writes the [`TO_RELAY`] header for `peer` in front of an encrypted message.
pub(super) fn frame_in_place(peer: &Peer, head: &mut [u8]) {
    write_header(head, TO_RELAY, &key_id(&peer.public_key));
}

impl Router {
    /// The relays of the network, best first (the control plane's choice: members named
    /// `relay = true`, then members with a public address). This host goes through them in
    /// that order (unless it is one itself: every member reaches a public host, and a relay
    /// that went through another for some peer could not forward for that peer), and takes
    /// datagrams "from a relay" only from them: any other member could otherwise move a
    /// peer's path to itself with a datagram it saw on the way. Taken from the next tick.
    pub fn set_relays(&self, relays: Vec<PublicKey>) {
        if **self.relay_prefs.load() != relays {
            self.relay_prefs.store(std::sync::Arc::new(relays));
            self.relay_map_changed();
        }
    }

    /// This host's WireGuard key.
    pub fn own_key(&self) -> PublicKey {
        self.keys.load().key
    }

    /// Whether this host forwards datagrams for others (`[control] relay`, on by default).
    pub fn set_relay_serve(&self, on: bool) {
        self.relay_serve
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// What this host relayed and refused so far.
    pub fn relay_counters(&self) -> &RelayCounters {
        &self.relay_counts
    }

    /// Forwards a [`TO_RELAY`] datagram from `src` (see the module docs for the rule): on
    /// success `out` holds the datagram to send (a [`FROM_RELAY`] header naming the
    /// source, and the WireGuard message unchanged) and the destination is returned.
    pub fn forward_relayed(
        &self,
        table: &PeerTable,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<SocketAddr> {
        let counts = &self.relay_counts;
        if relay_kind(datagram) != Some(TO_RELAY) {
            counts.refused_destination.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.refresh_relay_map_if_changed();
        let map = self.relay_map.load();
        let source = match map.by_addr.get(&src) {
            Some(&s) if self.relay_serve.load(Ordering::Relaxed) && table.has_index(s) => s,
            _ => {
                counts.refused_source.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&datagram[4..HEADER_LEN]);
        let (Some(&dst), Some(from)) = (map.by_id.get(&id), map.entries.get(&source)) else {
            counts.refused_destination.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let Some(to) = map
            .entries
            .get(&dst)
            .filter(|_| dst != source && table.has_index(dst))
        else {
            counts.refused_destination.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let len = i64::try_from(datagram.len()).unwrap_or(i64::MAX);
        if from.budget.fetch_sub(len, Ordering::Relaxed) < len {
            counts.refused_rate.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        out.clear();
        out.extend_from_slice(&[FROM_RELAY, 0, 0, 0]);
        out.extend_from_slice(&from.id);
        out.extend_from_slice(&datagram[HEADER_LEN..]);
        counts.forwarded.fetch_add(1, Ordering::Relaxed);
        Some(to.endpoint)
    }

    /// Whether `src` may send this host datagrams [`FROM_RELAY`]: it is the direct
    /// endpoint of a peer on the relay list.
    pub(super) fn knows_relay(&self, src: &SocketAddr) -> bool {
        self.refresh_relay_map_if_changed();
        let known = self.relay_map.load().is_relay(src);
        if !known {
            self.relay_counts
                .refused_from
                .fetch_add(1, Ordering::Relaxed);
        }
        known
    }

    /// The relays of the control plane's list this host reaches directly now, best first.
    /// Locks each one in turn: call with no peer locked.
    pub(super) fn relay_candidates(&self, table: &PeerTable) -> Vec<Candidate> {
        let prefs = self.relay_prefs.load();
        if prefs.contains(&self.own_key()) {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(prefs.len());
        for key in prefs.iter() {
            let Some(peer) = table.by_key(key) else {
                continue;
            };
            let st = peer.lock();
            if st.removed || st.via.is_some() {
                continue;
            }
            if let Some(endpoint) = st.endpoint {
                out.push(Candidate {
                    index: peer.index,
                    endpoint,
                });
            }
        }
        // The list's order, session or not: both sides of a pair then take the same relay
        // (one without a session gets an initiation before it is used, `touch_relays`).
        out
    }

    /// Rebuilds the map of what this host relays if an endpoint changed since it was built
    /// (a peer roamed): a relayed datagram right behind the packet that moved its sender
    /// finds it. Call with no peer locked.
    /// At most [`REBUILDS_PER_TICK`] times between two ticks: past that, a change waits
    /// for the next tick.
    fn refresh_relay_map_if_changed(&self) {
        if !self.relay_dirty.load(Ordering::Relaxed) {
            return;
        }
        let allowed = self
            .relay_rebuilds_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if allowed && self.relay_dirty.swap(false, Ordering::Relaxed) {
            self.relay_counts.rebuilds.fetch_add(1, Ordering::Relaxed);
            self.refresh_relay_map(&self.table.load());
        }
    }

    /// Notes that a peer's endpoint or relay changed: the map is rebuilt before the next
    /// datagram is relayed or accepted from a relay.
    pub(super) fn relay_map_changed(&self) {
        self.relay_dirty.store(true, Ordering::Relaxed);
    }

    /// Rebuilds the map of what this host relays from `table` (locks each peer in turn),
    /// each peer keeping what is left of its budget.
    pub(super) fn refresh_relay_map(&self, table: &PeerTable) {
        self.build_relay_map(table, false);
    }

    /// The tick's rebuild: every peer's budget full again, and [`REBUILDS_PER_TICK`] more
    /// rebuilds allowed before the next tick.
    pub(super) fn refill_relay_map(&self, table: &PeerTable) {
        self.relay_rebuilds_left
            .store(REBUILDS_PER_TICK, Ordering::Relaxed);
        self.relay_dirty.store(false, Ordering::Relaxed);
        self.build_relay_map(table, true);
    }

    fn build_relay_map(&self, table: &PeerTable, refill: bool) {
        let full = RELAY_BYTES_PER_SECOND / TICKS_PER_SECOND;
        let old = self.relay_map.load();
        let prefs = self.relay_prefs.load();
        let listed: HashSet<&PublicKey> = prefs.iter().collect();
        let mut map = RelayMap::default();
        for peer in table.present() {
            let st = peer.lock();
            // Only an endpoint its own authenticated datagrams came from: one its record
            // merely names (any address its member chose) is never relayed to.
            if let (false, None, Some(endpoint)) = (st.removed, st.via, st.endpoint)
                && st.proven_endpoint == Some(endpoint)
            {
                let budget = match old.entries.get(&peer.index) {
                    Some(e) if !refill => e.budget.load(Ordering::Relaxed).min(full),
                    _ => full,
                };
                map.insert(peer.index, &peer.public_key, endpoint, budget);
                if listed.contains(&peer.public_key) {
                    map.relays.insert(endpoint);
                }
            }
        }
        self.relay_map.store(std::sync::Arc::new(map));
    }

    /// Moves `peer` to a relay, to another relay, or back to direct, as the module docs
    /// say; `now_ms` is the router's clock. Returns whether its path changed: the caller
    /// then touches its relay ([`Router::touch_relays`]) and sends it an initiation on the
    /// new path ([`Router::initiate_on_path`]), in that order, once no peer is locked.
    pub(super) fn manage_path(
        &self,
        peer: &Peer,
        st: &mut PeerState,
        now_ms: u64,
        candidates: &[Candidate],
        buf: &mut [u8],
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> bool {
        let fresh = has_session(st);
        let usable = |c: &&Candidate| c.index != peer.index;
        match st.via {
            Some(relay) => {
                let listed = candidates
                    .iter()
                    .filter(usable)
                    .any(|c| c.endpoint == relay);
                let since = |t: u64| now_ms.saturating_sub(t);
                // No session through it yet; or data goes out through it and nothing has
                // come back for a while (the relay died: SWIM would say so only later).
                let stale =
                    (!fresh && st.handshake_pending && since(st.via_since_ms) >= RELAY_RETRY_MS)
                        || (since(st.sent_relayed_ms) < 1000
                            && since(st.heard_ms) >= RELAY_SILENT_MS
                            && since(st.via_since_ms) >= RELAY_SILENT_MS);
                if !listed || stale {
                    // The next relay after this one (or the first again), or direct.
                    let mut usable: Vec<&Candidate> = candidates.iter().filter(usable).collect();
                    if let Some(at) = usable.iter().position(|c| c.endpoint == relay) {
                        usable.rotate_left(at + 1);
                    }
                    let next = usable.first().copied().copied();
                    st.via = next.map(|c| c.endpoint);
                    st.via_since_ms = now_ms;
                    tracing::info!(peer = ?peer.name(), relay = ?st.via, reason = if listed { "no session through it" } else { "relay gone" }, "peer's relay replaced");
                    self.relay_map_changed();
                    return true;
                } else if !fresh
                    && st.handshake_pending
                    && since(st.via_since_ms.max(st.relay_resent_ms)) >= RELAY_RESEND_MS
                {
                    // The caller touches the relay and sends the initiation through it again.
                    st.relay_resent_ms = now_ms;
                    return true;
                } else if st.endpoint.is_some()
                    && now_ms.saturating_sub(st.probed_ms) >= DIRECT_PROBE_MS
                {
                    st.probed_ms = now_ms;
                    if let (Some(endpoint), TunnResult::WriteToNetwork(init)) =
                        (st.endpoint, st.tunn.format_handshake_initiation(buf, true))
                    {
                        handshakes::note_sent(peer, st, init);
                        send(endpoint, init);
                    }
                }
                false
            }
            None => {
                if st.endpoint.is_none() || fresh || !st.handshake_pending {
                    st.stuck_since_ms = None;
                    return false;
                }
                let since = *st.stuck_since_ms.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) < RELAY_AFTER_MS {
                    return false;
                }
                // First the address the peer's record gives, if the tunnel kept another
                // while it had a session (`PeerSpec::advertised`).
                if let Some(advertised) = st.held_endpoint.take() {
                    st.endpoint = Some(advertised);
                    st.stuck_since_ms = None;
                    self.relay_map_changed();
                    return true;
                }
                st.stuck_since_ms = None;
                // A relay itself (public): it is reached directly, once the first
                // initiation that reached it before it knew this host is sent again.
                if candidates.iter().any(|c| c.index == peer.index) {
                    return true;
                }
                let Some(c) = candidates.iter().find(usable) else {
                    return false;
                };
                st.via = Some(c.endpoint);
                st.via_since_ms = now_ms;
                st.probed_ms = now_ms;
                tracing::info!(peer = ?peer.name(), relay = %c.endpoint, "no direct path to the peer; going through a relay");
                self.relay_map_changed();
                true
            }
        }
    }

    /// Sends `peer` an initiation now on its path (a new one or the one under way again).
    pub(super) fn initiate_on_path(
        &self,
        peer: &Peer,
        buf: &mut [u8],
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) {
        let mut st = peer.lock();
        if st.removed {
            return;
        }
        if let TunnResult::WriteToNetwork(init) = st.tunn.format_handshake_initiation(buf, true) {
            handshakes::note_sent(peer, &mut st, init);
            send_on_path(peer, &st, init, send);
        }
    }

    /// Sends each relay at an address of `in_use` an authenticated keepalive (an
    /// initiation if it has no session): its NAT mapping stays open, and the relay learns
    /// where this host is now (an endpoint from a record, right only for the member that
    /// saw it, is replaced by the source of an authenticated packet). Call with no peer
    /// locked, before relaying through it.
    pub(super) fn touch_relays(
        &self,
        table: &PeerTable,
        in_use: &[SocketAddr],
        buf: &mut [u8],
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) {
        for key in self.relay_prefs.load().iter() {
            let Some(peer) = table.by_key(key) else {
                continue;
            };
            let mut st = peer.lock();
            let Some(endpoint) = st.endpoint.filter(|e| !st.removed && in_use.contains(e)) else {
                continue;
            };
            // Without a session, a new initiation each time (every second): the relay may
            // have dropped the last one because it did not know this host yet (it learns
            // new members by gossip, a moment after they learn it), and boringtun would
            // send it again only after 5 s, when the peer waiting on this relay has given
            // it up (`RELAY_RETRY_MS`).
            let message = if has_session(&st) {
                st.tunn.encapsulate(&[], buf)
            } else {
                st.tunn.format_handshake_initiation(buf, true)
            };
            if let TunnResult::WriteToNetwork(b) = message {
                handshakes::note_sent(peer, &mut st, b);
                send(endpoint, b);
            }
        }
    }
}

#[cfg(test)]
mod tests;
