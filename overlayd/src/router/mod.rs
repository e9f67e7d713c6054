//! The tunnel router: one boringtun `Tunn` per peer, cryptokey routing both ways, and
//! the drop counters (`drops.rs`). It does no I/O of its own: callers hand it packets and
//! buffers, and it says what to send where (`Outbound`, `Inbound`, and a `reply` callback
//! for the rare control messages); only [`Router::initiate_and_send`] sends, through the
//! socket seam it is given. The driver loops in `datapath` do the sockets and the TUN;
//! tests wire two routers back to back in memory.
//!
//! Locking: the peers, their keys and the routes form one [`PeerTable`] behind an
//! `ArcSwap`. The hot path takes no global lock: `encapsulate` and `decapsulate` read the
//! table with one atomic load (the data path loads it once per batch and passes it to the
//! `_with` variants), then lock the one peer's mutex around its `Tunn` and endpoint
//! (boringtun needs `&mut` for every call). Peer changes (`upsert_peer`, `remove_peer`,
//! in `peers.rs`) are serialized by a writer mutex, build the next table from the
//! current one and publish it; a removal also marks the peer under its own mutex, so a
//! batch still holding the old table sends and accepts nothing more for it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use keys::{PrivateKey, PublicKey};
use protocol::drops::DropReason;

use crate::config::PeerConfig;
use crate::datapath::udp::Bind;
use crate::events::{Events, now_unix_ms};
use protocol::api::EventKind;
use protocol::policy::enforce::Direction;

mod drops;
mod flood;
mod flows;
mod handshakes;
mod peers;
mod policy;
pub mod relay;
mod rotation;

pub use drops::{DropCounters, LogLimiter};
pub use flows::PeerFlows;
pub use handshakes::HandshakeCounters;
pub use peers::{MAX_PEER_INDICES, Peer, PeerSpec, PeerState, PeerTable, RouterError, Upserted};
pub use policy::ActivePolicy;

/// Handshake initiations per second, over all peers, above which the daemon answers
/// with cookies instead of doing Diffie-Hellman (boringtun's device uses the same).
pub const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// How long one cookie secret lives: WireGuard's responder changes the secret it derives
/// cookies from every two minutes (whitepaper §5.4.7, `COOKIE_SECRET_MAX_AGE` in the
/// kernel's cookie.c). boringtun's limiter only mixes a 128 s time counter into a secret
/// fixed at start, so the router replaces the limiter, and with it the secret, this often.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);

/// Message type of a WireGuard cookie reply.
const COOKIE_REPLY_TYPE: u8 = 3;

/// Smallest buffer a `Tunn` call may write into: a handshake initiation.
pub const MIN_BUFFER_LEN: usize = 148;

/// What to do with a packet read from the TUN.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    /// Send `len` bytes of the output buffer to `endpoint`, for peer `peer`.
    Send {
        /// Peer index.
        peer: usize,
        /// Destination.
        endpoint: SocketAddr,
        /// Bytes written into the output buffer.
        len: usize,
    },
    /// Queued inside the tunnel until a handshake completes (nothing to send now).
    Queued,
    /// Dropped and counted.
    Dropped(DropReason),
}

/// What to do with a datagram read from the UDP socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Write `len` bytes of the output buffer (an IP packet) to the TUN.
    ToTun {
        /// Packet length.
        len: usize,
    },
    /// Handled (handshake, keepalive, cookie); nothing for the TUN.
    Consumed,
    /// Dropped and counted.
    Dropped(DropReason),
}

/// What the control plane knows of a key that is no peer ([`Router::set_known_keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KnownKey {
    /// A member's (by its name) that this host does not route now: down, or just admitted.
    Member(String),
    /// A revoked member's (by its name).
    Revoked(String),
}

/// Which peers [`Router::initiate_and_send`] starts a handshake with.
#[derive(Debug, Clone, Copy)]
pub enum Initiate<'a> {
    /// Every peer that has an endpoint.
    All,
    /// The peer with this key, if it has an endpoint and no handshake is under way.
    Peer(&'a PublicKey),
    /// The peer with this key, if it has an endpoint and no session: a handshake under way
    /// is sent again now rather than at its retry (a path to the peer just opened).
    Punch(&'a PublicKey),
}

/// The peer table (swapped whole on every change), the writers' lock, and the shared
/// handshake rate limiter.
pub struct Router {
    /// This host's WireGuard key; replaced by a rotation ([`Router::rotate_own_key`]).
    keys: ArcSwap<rotation::OwnKeys>,
    /// This host's old key during a rotation's grace, and peers replaced by new keys.
    rotation: rotation::Rotation,
    /// Read with one `load` per call or per batch; replaced, never changed in place.
    table: ArcSwap<PeerTable>,
    /// Serializes writers (`upsert_peer`, `remove_peer`): each builds the next table from
    /// the current one and publishes it. Readers never take it. It guards no data, so
    /// dropping it signals nothing.
    writer: Mutex<()>,
    /// The shared handshake limiter: every handshake message (initiation and response)
    /// passes it exactly once, here, before its peer's `Tunn` sees it. Replaced every
    /// [`COOKIE_SECRET_LIFETIME`] (a new cookie secret).
    rate_limiter: ArcSwap<RateLimiter>,
    /// When the limiter's secret was made, and its message limit (for the next one).
    limiter_born: Mutex<Instant>,
    handshake_limit: u64,
    /// Drops not attributable to a peer, and those of removed peers.
    pub drops: DropCounters,
    /// Rate-limited logging of drops.
    pub log: LogLimiter,
    /// Cookie replies the shared limiter sent (handshakes refused under load until their
    /// sender proves its address). Not per peer: under load the sender of an initiation
    /// is not known, since finding it is the Diffie-Hellman the cookie saves.
    cookie_replies: std::sync::atomic::AtomicU64,
    /// The host's security events (spoofed sources, policy denials; the control plane
    /// adds its own).
    pub events: Arc<Events>,
    /// Handshake messages and cookie replies a second: when a flood starts and ends.
    flood: flood::FloodWatch,
    /// Keys the control plane knows that are no peers ([`Router::set_known_keys`]); read
    /// only for a handshake from a key that is no peer.
    known: ArcSwap<HashMap<PublicKey, KnownKey>>,
    /// The mirror of decrypted traffic, if one runs. The router never touches it: it is
    /// here because the data path and the API both hold the router; the data path copies
    /// what the router passed (`datapath`).
    pub mirror: crate::mirror::MirrorSlot,
    /// A clock for the policy's flow table that costs a load a packet: milliseconds since
    /// `epoch`, advanced by every [`Router::tick`] (250 ms); flows time out after 10 s at
    /// the least.
    clock_ms: std::sync::atomic::AtomicU64,
    epoch: Instant,
    /// Flow log windows of peers removed since the flow log last took them.
    flows_parked: Mutex<Vec<PeerFlows>>,
    /// What this host forwards as a relay (`relay.rs`): rebuilt every tick and removal.
    relay_map: ArcSwap<relay::RelayMap>,
    /// The relays this host may use, best first ([`Router::set_relays`]).
    relay_prefs: ArcSwap<Vec<PublicKey>>,
    /// Whether this host forwards for others ([`Router::set_relay_serve`]).
    relay_serve: std::sync::atomic::AtomicBool,
    /// What it relayed and refused.
    relay_counts: relay::RelayCounters,
    /// A peer's endpoint or relay changed since the relay map was built.
    relay_dirty: std::sync::atomic::AtomicBool,
    /// How many more times the relay map may be rebuilt for a changed endpoint before the
    /// next tick ([`relay::REBUILDS_PER_TICK`] each tick).
    relay_rebuilds_left: std::sync::atomic::AtomicU32,
    /// When the relays in use last heard from this host (the router's clock, ms).
    relays_touched_ms: std::sync::atomic::AtomicU64,
}

impl Router {
    /// Builds the router for `private_key` and static `peers` (validated by the config
    /// loader; one that is not, an overlap or this host's own key, is skipped and logged).
    pub fn new(private_key: &PrivateKey, peers: &[PeerConfig]) -> Router {
        Self::with_handshake_limit(private_key, peers, HANDSHAKE_RATE_LIMIT)
    }

    /// Like [`Router::new`], with `limit` handshake messages a second before cookies
    /// (benchmarks set it out of the way).
    pub fn with_handshake_limit(
        private_key: &PrivateKey,
        peers: &[PeerConfig],
        limit: u64,
    ) -> Router {
        // Each `Tunn` gets `OwnKeys::mac1_only` as its limiter: it checks mac1 and never
        // answers with a cookie (its limit is never reached), so a `Tunn` writes to the
        // network only after a handshake message authenticated. Load and cookies are the
        // shared limiter's job.
        let keys = rotation::OwnKeys::new(private_key, 0);
        let public = keys.public;
        let router = Router {
            keys: ArcSwap::from_pointee(keys),
            rotation: rotation::Rotation::default(),
            table: ArcSwap::from_pointee(PeerTable::default()),
            writer: Mutex::new(()),
            rate_limiter: ArcSwap::from_pointee(RateLimiter::new(&public, limit)),
            limiter_born: Mutex::new(Instant::now()),
            handshake_limit: limit,
            drops: DropCounters::default(),
            log: LogLimiter::default(),
            cookie_replies: std::sync::atomic::AtomicU64::new(0),
            events: Arc::new(Events::default()),
            flood: flood::FloodWatch::new(Instant::now()),
            known: ArcSwap::default(),
            mirror: crate::mirror::MirrorSlot::default(),
            clock_ms: std::sync::atomic::AtomicU64::new(0),
            epoch: Instant::now(),
            flows_parked: Mutex::new(Vec::new()),
            relay_map: ArcSwap::default(),
            relay_prefs: ArcSwap::default(),
            relay_serve: std::sync::atomic::AtomicBool::new(true),
            relay_counts: relay::RelayCounters::default(),
            relay_dirty: std::sync::atomic::AtomicBool::new(false),
            relay_rebuilds_left: std::sync::atomic::AtomicU32::new(relay::REBUILDS_PER_TICK),
            relays_touched_ms: std::sync::atomic::AtomicU64::new(0),
        };
        for p in peers {
            let spec = PeerSpec {
                public_key: p.public_key,
                name: p.name.as_ref().map(ToString::to_string),
                endpoint: p.endpoint,
                subnets: p.subnets.clone(),
                groups: Vec::new(),
                persistent_keepalive: p.persistent_keepalive,
                advertised: false,
            };
            if let Err(e) = router.upsert_peer(spec) {
                tracing::error!(error = %e, "static peer skipped");
            }
        }
        router
    }

    /// The current peer table: load it once per batch and pass it to
    /// [`Router::encapsulate_with`] / [`Router::decapsulate_with`]. A table held after a
    /// peer was removed still lists it, but its packets are dropped (see `remove_peer`).
    pub fn table(&self) -> Arc<PeerTable> {
        self.table.load_full()
    }

    /// The peers now, by index.
    pub fn peers(&self) -> Vec<Arc<Peer>> {
        self.table.load().present().cloned().collect()
    }

    /// The peer with `key`, if it is one now.
    pub fn peer(&self, key: &PublicKey) -> Option<Arc<Peer>> {
        self.table.load().by_key(key).cloned()
    }

    /// Drops over all peers and the router (which holds those of removed peers), by reason.
    pub fn total_drops(&self) -> std::collections::BTreeMap<DropReason, u64> {
        let mut total = self.drops.snapshot();
        for p in self.table.load().present() {
            for (r, n) in p.drops.snapshot() {
                *total.entry(r).or_default() += n;
            }
        }
        total
    }

    /// Cookie replies sent so far (see the field).
    pub fn cookie_replies_sent(&self) -> u64 {
        self.cookie_replies.load(Ordering::Relaxed)
    }

    fn drop_global(&self, reason: DropReason, addr: Option<SocketAddr>) {
        self.drops.add(reason);
        self.log.log(reason, addr, None);
    }

    fn drop_peer(&self, peer: &Peer, reason: DropReason, addr: Option<SocketAddr>) {
        peer.drops.add(reason);
        self.log.log(reason, addr, Some(&peer.public_key));
    }

    /// [`Router::encapsulate_with`] on the current table (one `load`).
    pub fn encapsulate(&self, packet: &[u8], out: &mut [u8]) -> Outbound {
        self.encapsulate_with(&self.table.load(), packet, out)
    }

    /// Encrypts an IP packet read from the TUN into `out` (at least `packet.len() + 32`
    /// and [`MIN_BUFFER_LEN`] bytes). The destination picks the peer in `table`.
    pub fn encapsulate_with(&self, table: &PeerTable, packet: &[u8], out: &mut [u8]) -> Outbound {
        let Some(dst) = destination(packet) else {
            self.drop_global(DropReason::NotIp, None);
            return Outbound::Dropped(DropReason::NotIp);
        };
        let Some(peer) = table.route(dst) else {
            if dst.is_multicast() {
                // The kernel's own IPv6 router solicitations and MLD reports on a new
                // TUN: counted, but not worth a log line.
                self.drops.add(DropReason::NoRoute);
            } else {
                self.drop_global(DropReason::NoRoute, None);
            }
            return Outbound::Dropped(DropReason::NoRoute);
        };
        let mut st = peer.lock();
        if st.removed {
            // Removed after this batch loaded its table: its routes are gone.
            drop(st);
            self.drop_global(DropReason::NoRoute, None);
            return Outbound::Dropped(DropReason::NoRoute);
        }
        if !self.police(table, peer, &mut st, Direction::Outbound, packet) {
            drop(st);
            self.drop_peer(peer, DropReason::PolicyDenied, None);
            return Outbound::Dropped(DropReason::PolicyDenied);
        }
        let Some(endpoint) = st.via.or(st.endpoint) else {
            drop(st);
            self.drop_peer(peer, DropReason::NoEndpoint, None);
            return Outbound::Dropped(DropReason::NoEndpoint);
        };
        // Through a relay: the message goes behind a relay header (room for it is in
        // `out`: the data path's buffers have 64 bytes to spare).
        let head = if st.via.is_some() {
            relay::HEADER_LEN
        } else {
            0
        };
        let (framing, body) = out.split_at_mut(head);
        match st.tunn.encapsulate(packet, body) {
            TunnResult::WriteToNetwork(b) => {
                let len = b.len() + head;
                if head > 0 {
                    relay::frame_in_place(peer, framing);
                    st.sent_relayed_ms = self.clock_ms.load(Ordering::Relaxed);
                }
                // Without a session this is an initiation (the packet waits in the tunnel);
                // a data packet costs one byte compare here.
                handshakes::note_sent(peer, &mut st, b);
                peer.tx_bytes
                    .fetch_add(packet.len() as u64, Ordering::Relaxed);
                Outbound::Send {
                    peer: peer.index,
                    endpoint,
                    len,
                }
            }
            TunnResult::Done => Outbound::Queued,
            TunnResult::Err(_)
            | TunnResult::WriteToTunnelV4(..)
            | TunnResult::WriteToTunnelV6(..) => {
                drop(st);
                self.drop_peer(peer, DropReason::WriteFailed, Some(endpoint));
                Outbound::Dropped(DropReason::WriteFailed)
            }
        }
    }

    /// [`Router::decapsulate_with`] on the current table (one `load`).
    pub fn decapsulate(
        &self,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        reply: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Inbound {
        self.decapsulate_with(&self.table.load(), src, datagram, out, reply)
    }

    /// Handles one datagram from `src`, for the peers in `table`. Plaintext for the TUN
    /// lands at the start of `out` (at least `datagram.len()` and [`MIN_BUFFER_LEN`]
    /// bytes). Handshake answers, cookies and packets queued during a handshake are
    /// passed to `reply`.
    pub fn decapsulate_with(
        &self,
        table: &PeerTable,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        reply: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Inbound {
        self.decapsulate_path(table, src, false, datagram, out, reply)
    }

    /// As [`Router::decapsulate_with`], for a datagram a relay at `src` forwarded (its
    /// [`relay::FROM_RELAY`] header still on): accepted only from a peer's endpoint; what
    /// authenticates moves its sender to that relay, and answers go back through it.
    pub fn decapsulate_relayed_with(
        &self,
        table: &PeerTable,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        reply: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Inbound {
        if relay::relay_kind(datagram) != Some(relay::FROM_RELAY) || !self.knows_relay(&src) {
            self.drops.add(DropReason::UnknownPeer);
            return Inbound::Dropped(DropReason::UnknownPeer);
        }
        self.decapsulate_path(table, src, true, &datagram[relay::HEADER_LEN..], out, reply)
    }

    /// Handles one WireGuard message from `src`: the peer itself, or with `relayed` the
    /// relay that forwarded it.
    fn decapsulate_path(
        &self,
        table: &PeerTable,
        src: SocketAddr,
        relayed: bool,
        datagram: &[u8],
        out: &mut [u8],
        reply: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Inbound {
        let packet = match Tunn::parse_incoming_packet(datagram) {
            Ok(p) => p,
            Err(_) => {
                self.drop_global(DropReason::Malformed, Some(src));
                return Inbound::Dropped(DropReason::Malformed);
            }
        };
        let is_handshake = matches!(
            packet,
            Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)
        );
        // Which of this host's keys a handshake is addressed to: the current one, or the
        // old one during a rotation's grace (`rotation.rs`).
        let mut old_key = None;
        if is_handshake {
            // Check mac1 and load before any Diffie-Hellman, once per message: under a
            // flood this answers with a cookie (to `src`, and nothing else happens).
            match self
                .rate_limiter
                .load()
                .verify_packet(Some(src.ip()), datagram, out)
            {
                Ok(_) => self.flood.handshake(),
                Err(TunnResult::Err(WireGuardError::InvalidMac)) => {
                    match self.addressed(datagram, out) {
                        rotation::Addressed::Old(old) => {
                            self.flood.handshake();
                            old_key = Some(old);
                        }
                        rotation::Addressed::Retired(key) => {
                            self.refuse_retired(key, src);
                            return Inbound::Dropped(DropReason::RetiredKey);
                        }
                        rotation::Addressed::Neither => {
                            self.drop_global(DropReason::AuthFailed, Some(src));
                            return Inbound::Dropped(DropReason::AuthFailed);
                        }
                    }
                }
                Err(TunnResult::WriteToNetwork(cookie)) => {
                    self.flood.handshake();
                    self.flood.cookie();
                    // Through a relay the sender is not known before the Diffie-Hellman
                    // the cookie saves, so there is no one to frame it for: dropped.
                    if !relayed {
                        reply(src, cookie);
                    }
                    self.cookie_replies.fetch_add(1, Ordering::Relaxed);
                    self.drop_global(DropReason::UnderLoad, Some(src));
                    return Inbound::Dropped(DropReason::UnderLoad);
                }
                Err(_) => {
                    self.drop_global(DropReason::AuthFailed, Some(src));
                    return Inbound::Dropped(DropReason::AuthFailed);
                }
            }
        }
        let peer = match &packet {
            Packet::HandshakeInit(init) => {
                let keys = self.keys.load();
                let (secret, public) = match &old_key {
                    Some(old) => (&old.keys.secret, &old.keys.public),
                    None => (&keys.secret, &keys.public),
                };
                match parse_handshake_anon(secret, public, init) {
                    Ok(half) => {
                        let peer = table.by_key_bytes(&half.peer_static_public);
                        if peer.is_none() {
                            // It authenticated its static key to us: a key we do not know
                            // (a revoked member, a host of another network, a scanner).
                            self.stranger(PublicKey::from_bytes(half.peer_static_public), src);
                        }
                        peer
                    }
                    Err(_) => {
                        self.drop_global(DropReason::AuthFailed, Some(src));
                        return Inbound::Dropped(DropReason::AuthFailed);
                    }
                }
            }
            Packet::HandshakeResponse(p) => table.by_receiver_index(p.receiver_idx),
            Packet::PacketCookieReply(p) => table.by_receiver_index(p.receiver_idx),
            Packet::PacketData(p) => table.by_receiver_index(p.receiver_idx),
        };
        let is_data = matches!(packet, Packet::PacketData(_));
        let Some(peer) = peer else {
            self.drop_global(DropReason::UnknownPeer, Some(src));
            return Inbound::Dropped(DropReason::UnknownPeer);
        };
        let mut st = peer.lock();
        if st.removed || (relayed && st.endpoint == Some(src)) {
            // Removed after this batch loaded its table: nothing more from it. (Or a
            // member "relaying" its own messages: it would become its own relay.)
            drop(st);
            self.drop_global(DropReason::UnknownPeer, Some(src));
            return Inbound::Dropped(DropReason::UnknownPeer);
        }
        if matches!(packet, Packet::HandshakeInit(_))
            && !self.follow_own_rotation(&mut st, old_key.as_deref())
        {
            // To the old key, from a peer whose tunnel is already on the new one.
            drop(st);
            self.drop_peer(peer, DropReason::AuthFailed, Some(src));
            return Inbound::Dropped(DropReason::AuthFailed);
        }
        match st.tunn.decapsulate(Some(src.ip()), datagram, out) {
            TunnResult::WriteToNetwork(b) => {
                // The Tunn's limiter never answers with a cookie (`mac1_only`), so a write
                // here follows a handshake message that authenticated (its answer, or the
                // first keepalive of the new session): the peer is at `src` now. Checked
                // all the same: the endpoint moves only on cryptographic proof, as
                // WireGuard's does (whitepaper §6.5: roaming on authenticated packets).
                if is_handshake && b.first() != Some(&COOKIE_REPLY_TYPE) {
                    self.set_path(&mut st, src, relayed);
                    // A response to our initiation (we answer with a keepalive), or our
                    // response to theirs: either way a new session.
                    handshakes::note_completed(peer, &mut st);
                }
                let id = relay::key_id(&peer.public_key);
                let mut answer = |b: &[u8]| {
                    if relayed {
                        relay::send_framed(src, &id, b, reply);
                    } else {
                        reply(src, b);
                    }
                };
                answer(b);
                // Packets queued while the handshake was under way.
                while let TunnResult::WriteToNetwork(b) = st.tunn.decapsulate(None, &[], out) {
                    answer(b);
                }
                Inbound::Consumed
            }
            TunnResult::WriteToTunnelV4(b, addr) => {
                self.accept(table, peer, &mut st, (src, relayed), IpAddr::V4(addr), b)
            }
            TunnResult::WriteToTunnelV6(b, addr) => {
                self.accept(table, peer, &mut st, (src, relayed), IpAddr::V6(addr), b)
            }
            TunnResult::Done => {
                if is_data {
                    // an authenticated keepalive
                    self.set_path(&mut st, src, relayed);
                }
                Inbound::Consumed
            }
            TunnResult::Err(e) => {
                let reason = match e {
                    WireGuardError::NoCurrentSession => {
                        // Data for a session we do not have: we restarted, or the peer
                        // kept an old one. Start a fresh handshake rather than wait for
                        // the peer's rekey timeout; only towards the endpoint we know, as
                        // this packet is not authenticated and its source may be forged.
                        if st.via.or(st.endpoint).is_some()
                            && let TunnResult::WriteToNetwork(init) =
                                st.tunn.format_handshake_initiation(out, false)
                        {
                            handshakes::note_sent(peer, &mut st, init);
                            relay::send_on_path(peer, &st, init, reply);
                        }
                        DropReason::NoSession
                    }
                    WireGuardError::UnderLoad => DropReason::UnderLoad,
                    WireGuardError::WrongIndex | WireGuardError::WrongKey => {
                        DropReason::UnknownPeer
                    }
                    WireGuardError::InvalidPacket
                    | WireGuardError::IncorrectPacketLength
                    | WireGuardError::WrongPacketType => DropReason::Malformed,
                    _ => DropReason::AuthFailed,
                };
                if is_handshake {
                    handshakes::note_refused(peer);
                }
                drop(st);
                self.drop_peer(peer, reason, Some(src));
                Inbound::Dropped(reason)
            }
        }
    }

    /// Inbound checks: the decrypted packet's source must belong to the peer that sent it,
    /// and its destination to this host (its own subnets and addresses): a member may not
    /// use this host as a gateway to its LAN, other bridges or the internet.
    fn accept(
        &self,
        table: &PeerTable,
        peer: &Peer,
        st: &mut PeerState,
        (src, relayed): (SocketAddr, bool),
        inner_source: IpAddr,
        packet: &[u8],
    ) -> Inbound {
        let (len, inner_destination) = (packet.len(), destination(packet));
        // It decrypted under this peer's session: authenticated, so it may roam.
        self.set_path(st, src, relayed);
        let owner = table.routes.lookup(inner_source);
        // A peer replaced by its member's new key still delivers what its sessions carry,
        // from the new peer's subnets (`rotation.rs`).
        if owner != Some(peer.index) && (owner.is_none() || owner != peer.successor()) {
            self.drop_peer(peer, DropReason::SourceNotAllowed, Some(src));
            let name = peer.name();
            self.events.emit(
                EventKind::SpoofedSource,
                name.as_deref(),
                Some(src),
                || format!("a packet from {inner_source}, outside the peer's subnets"),
                now_unix_ms(),
            );
            return Inbound::Dropped(DropReason::SourceNotAllowed);
        }
        if !inner_destination.is_some_and(|d| table.is_local(d)) {
            self.drop_peer(peer, DropReason::DestinationNotAllowed, Some(src));
            return Inbound::Dropped(DropReason::DestinationNotAllowed);
        }
        if !self.police(table, peer, st, Direction::Inbound, packet) {
            self.drop_peer(peer, DropReason::PolicyDenied, Some(src));
            return Inbound::Dropped(DropReason::PolicyDenied);
        }
        peer.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
        Inbound::ToTun { len }
    }

    /// Runs every peer's timers (handshake retries, keepalives, rekeys, expiry); call
    /// every ~250 ms. Messages due go to `send`.
    pub fn tick(&self, buf: &mut [u8], send: &mut dyn FnMut(SocketAddr, &[u8])) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.tick_at(ms, buf, send);
    }

    /// [`Router::tick`] at `ms` on the router's clock (tests drive it by hand).
    pub fn tick_at(&self, ms: u64, buf: &mut [u8], send: &mut dyn FnMut(SocketAddr, &[u8])) {
        self.clock_ms.store(ms, Ordering::Relaxed);
        let table = self.table.load_full();
        let candidates = self.relay_candidates(&table);
        // Peers whose path just changed, and the relays in use.
        let mut switched = Vec::new();
        let mut in_use = Vec::new();
        for peer in table.present() {
            let mut st = peer.lock();
            if st.removed {
                continue;
            }
            self.tick_policy(peer, &mut st);
            if self.manage_path(peer, &mut st, ms, &candidates, buf, send) {
                switched.push(peer.clone());
            }
            if let Some(via) = st.via
                && !in_use.contains(&via)
            {
                in_use.push(via);
            }
            let idle = match st.tunn.update_timers(buf) {
                TunnResult::WriteToNetwork(b) => {
                    if st.via.or(st.endpoint).is_some() {
                        handshakes::note_sent(peer, &mut st, b);
                        relay::send_on_path(peer, &st, b, send);
                    }
                    false
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => {
                    handshakes::note_expired(peer, &mut st);
                    false
                }
                TunnResult::Done => true,
                _ => false,
            };
            if idle {
                self.persistent_keepalive(peer, &mut st, ms, buf, send);
            }
        }
        // The relays in use hear from this host every second, and at once when a peer just
        // took one: before the initiation it is to forward.
        let due = ms.saturating_sub(self.relays_touched_ms.load(Ordering::Relaxed)) >= 1000;
        if due || !switched.is_empty() {
            self.relays_touched_ms.store(ms, Ordering::Relaxed);
            self.touch_relays(&table, &in_use, buf, send);
        }
        for peer in switched {
            self.initiate_on_path(&peer, buf, send);
        }
        self.rotation_tick(&table, ms);
        self.refill_relay_map(&table);
    }

    /// Sends `peer` a persistent keepalive when its interval has passed since the last
    /// (boringtun's rule, which this replaces: every interval, while no handshake is under
    /// way; without a session, the keepalive starts one). `now_ms` is the router's clock.
    fn persistent_keepalive(
        &self,
        peer: &Peer,
        st: &mut PeerState,
        now_ms: u64,
        buf: &mut [u8],
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) {
        let Some(interval) = peer.persistent_keepalive() else {
            return;
        };
        let due = st
            .keepalive_sent_ms
            .is_none_or(|sent| now_ms.saturating_sub(sent) >= u64::from(interval) * 1000);
        if !due || st.handshake_pending {
            return;
        }
        st.keepalive_sent_ms = Some(now_ms);
        if st.via.or(st.endpoint).is_none() {
            return;
        }
        if let TunnResult::WriteToNetwork(b) = st.tunn.encapsulate(&[], buf) {
            handshakes::note_sent(peer, st, b);
            relay::send_on_path(peer, st, b, send);
        }
    }

    /// The WireGuard keys the control plane knows besides the peers: revoked members' (a
    /// handshake from one is reported as `revoked_knocking`) and members' this host does
    /// not route now (down, or admitted a moment ago: their handshakes are no event). A
    /// handshake from any of them is refused all the same: none is a peer.
    pub fn set_known_keys(&self, known: HashMap<PublicKey, KnownKey>) {
        if **self.known.load() != known {
            self.known.store(Arc::new(known));
        }
    }

    /// What the control plane knows of `key` (a member's, a revoked member's), if it is
    /// no routed member or is one ([`Router::set_known_keys`]).
    pub fn known_key(&self, key: &PublicKey) -> Option<KnownKey> {
        self.known.load().get(key).cloned()
    }

    /// A handshake initiation from `key` at `src` authenticated its static key, but `key`
    /// is no peer: an event, unless it is a member this host does not route now.
    fn stranger(&self, key: PublicKey, src: SocketAddr) {
        match self.known.load().get(&key) {
            Some(KnownKey::Member(node)) => {
                tracing::debug!(peer = %node, endpoint = %src, "a handshake from a member this host does not route now");
            }
            Some(KnownKey::Revoked(node)) => self.events.emit(
                EventKind::RevokedKnocking,
                Some(node),
                Some(src),
                || {
                    format!(
                        "a handshake from key {key} of {node}, whose certificate the network's CA revoked"
                    )
                },
                now_unix_ms(),
            ),
            // A host of another network, a scanner, a member of old whose record is gone.
            None => self.events.emit(
                EventKind::UnknownKey,
                None,
                Some(src),
                || format!("a handshake from key {key}, which is no peer of this host"),
                now_unix_ms(),
            ),
        }
    }

    /// Resets the handshake rate limiter's count; call once a second. Once the cookie
    /// secret is [`COOKIE_SECRET_LIFETIME`] old (by `now`), a new limiter with a fresh
    /// secret replaces it: cookies handed out before stop validating mac2. A flood's start
    /// (the first cookie replies) and end (none for a few seconds) become security events.
    pub fn reset_rate_limiter(&self, now: Instant) {
        match self.flood.second(now) {
            Some(flood::FloodChange::Started { rate, cookies }) => self.events.emit(
                EventKind::HandshakeFloodStarted,
                None,
                None,
                || {
                    format!(
                        "handshake flood: {rate} handshake messages a second, over the limit of {}; answering with cookie replies ({cookies} in the last second) instead of handshakes",
                        self.handshake_limit
                    )
                },
                now_unix_ms(),
            ),
            Some(flood::FloodChange::Ended {
                seconds,
                peak_rate,
                cookies,
            }) => self.events.emit(
                EventKind::HandshakeFloodEnded,
                None,
                None,
                || {
                    format!(
                        "handshake flood over: no cookie reply for {} s; it lasted {seconds} s, peaked at {peak_rate} handshake messages a second and drew {cookies} cookie replies",
                        flood::QUIET_SECONDS
                    )
                },
                now_unix_ms(),
            ),
            None => {}
        }
        let mut born = crate::util::lock(&self.limiter_born);
        if now.saturating_duration_since(*born) >= COOKIE_SECRET_LIFETIME {
            self.rate_limiter.store(Arc::new(RateLimiter::new(
                &self.keys.load().public,
                self.handshake_limit,
            )));
            *born = now;
        } else {
            self.rate_limiter.load().reset_count();
        }
    }

    /// Starts handshakes as [`Router::initiate_all`] or [`Router::initiate`] do, and sends
    /// each initiation through `udp` at once ([`Bind::send_message`]: best effort). For
    /// the timers thread at start-up, a change of this host's addresses, and a peer the
    /// control plane adds.
    pub fn initiate_and_send(&self, which: Initiate<'_>, udp: &impl Bind) {
        let mut buf = [0u8; MIN_BUFFER_LEN];
        let mut send = |dst: SocketAddr, bytes: &[u8]| udp.send_message(dst, bytes);
        match which {
            Initiate::All => self.initiate_all(&mut buf, &mut send),
            Initiate::Peer(key) => {
                self.initiate(key, &mut buf, &mut send);
            }
            Initiate::Punch(key) => {
                if let Some(peer) = self.table.load().by_key(key) {
                    punch_peer(peer, &mut buf, &mut send);
                }
            }
        }
    }

    /// Starts a handshake with every peer that has an endpoint (at start-up, so that a
    /// restarted daemon replaces the sessions its peers still hold at once, and when this
    /// host's address changes).
    pub fn initiate_all(&self, buf: &mut [u8], send: &mut dyn FnMut(SocketAddr, &[u8])) {
        for peer in self.table.load().present() {
            initiate_peer(peer, buf, send);
        }
    }

    /// Starts a handshake with the peer with `key` now (right after adding it, or after
    /// its endpoint changed), if it has an endpoint and no handshake is under way.
    /// Returns whether an initiation went to `send`.
    pub fn initiate(
        &self,
        key: &PublicKey,
        buf: &mut [u8],
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> bool {
        match self.table.load().by_key(key) {
            Some(peer) => initiate_peer(peer, buf, send),
            None => false,
        }
    }
}

fn initiate_peer(peer: &Peer, buf: &mut [u8], send: &mut dyn FnMut(SocketAddr, &[u8])) -> bool {
    let mut st = peer.lock();
    if st.removed {
        return false;
    }
    if st.via.or(st.endpoint).is_some()
        && let TunnResult::WriteToNetwork(b) = st.tunn.format_handshake_initiation(buf, false)
    {
        handshakes::note_sent(peer, &mut st, b);
        relay::send_on_path(peer, &st, b, send);
        return true;
    }
    false
}

/// Sends a handshake initiation to `peer` now, a new one or the one under way again,
/// unless it has a session (a handshake within the last 180 s) on a direct path, or no
/// endpoint. For a path that just opened through NATs: the retry of a handshake whose
/// first attempts the far NAT dropped would come up to 5 s later. It goes to the peer's
/// own endpoint, also while it is relayed: answered directly, it moves the peer off the
/// relay.
fn punch_peer(peer: &Peer, buf: &mut [u8], send: &mut dyn FnMut(SocketAddr, &[u8])) -> bool {
    let mut st = peer.lock();
    if st.removed || (st.via.is_none() && relay::has_session(&st)) {
        return false;
    }
    let Some(ep) = st.endpoint else {
        return false;
    };
    if let TunnResult::WriteToNetwork(b) = st.tunn.format_handshake_initiation(buf, true) {
        handshakes::note_sent(peer, &mut st, b);
        send(ep, b);
        return true;
    }
    false
}

impl Router {
    /// Where an authenticated message from `src` says the peer is now: at `src` itself,
    /// or, `relayed`, behind the relay at `src` (its own endpoint is kept for direct
    /// probes). A change is noted for the relay map.
    fn set_path(&self, st: &mut PeerState, src: SocketAddr, relayed: bool) {
        let before = (st.endpoint, st.via);
        st.heard_ms = self.clock_ms.load(Ordering::Relaxed);
        if relayed {
            st.via = Some(src);
        } else {
            st.endpoint = Some(src);
            st.proven_endpoint = Some(src);
            st.via = None;
        }
        if (st.endpoint, st.via) != before {
            self.relay_map_changed();
        }
    }
}

/// The destination address of an IPv4 or IPv6 packet.
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[16..20].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[24..40].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

// `pub(crate)`: the data path's tests reuse its two routers.
#[cfg(test)]
pub(crate) mod tests;
