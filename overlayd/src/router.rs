//! The tunnel router: one boringtun `Tunn` per peer, cryptokey routing both ways, and
//! the drop counters. It does no I/O: callers hand it packets and buffers, and it says
//! what to send where (`Outbound`, `Inbound`, and a `reply` callback for the rare
//! control messages). The driver loops in `datapath` do the sockets and the TUN; tests
//! wire two routers back to back in memory.
//!
//! Locking: one mutex per peer around its `Tunn` and endpoint (boringtun needs `&mut`
//! for every call). The peer list and routing table are immutable after start, so the
//! hot path takes no global lock.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use ipnet::IpNet;
use keys::{PrivateKey, PublicKey};
use protocol::drops::DropReason;
use protocol::routing::RoutingTable;

use crate::config::PeerConfig;

/// Handshake initiations per second, over all peers, above which the daemon answers
/// with cookies instead of doing Diffie-Hellman (boringtun's device uses the same).
pub const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// Smallest buffer a `Tunn` call may write into: a handshake initiation.
pub const MIN_BUFFER_LEN: usize = 148;

/// Drop counters, one per [`DropReason`].
#[derive(Debug, Default)]
pub struct DropCounters([AtomicU64; DropReason::ALL.len()]);

impl DropCounters {
    /// Counts one drop.
    pub fn add(&self, reason: DropReason) {
        self.0[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The current count for a reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()].load(Ordering::Relaxed)
    }

    /// Non-zero counts, by reason.
    pub fn snapshot(&self) -> std::collections::BTreeMap<DropReason, u64> {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Logs a line per reason at most once per second, with how many were suppressed.
#[derive(Debug)]
pub struct LogLimiter {
    start: Instant,
    last_ms: [AtomicU64; DropReason::ALL.len()],
    suppressed: [AtomicU64; DropReason::ALL.len()],
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter {
            start: Instant::now(),
            last_ms: Default::default(),
            suppressed: Default::default(),
        }
    }
}

impl LogLimiter {
    /// Logs `reason` for a packet from or to `addr`, unless one was logged in the last second.
    pub fn log(&self, reason: DropReason, addr: Option<SocketAddr>, peer: Option<&PublicKey>) {
        let now = self.start.elapsed().as_millis() as u64 + 1000;
        let slot = &self.last_ms[reason.index()];
        let last = slot.load(Ordering::Relaxed);
        if now < last + 1000
            || slot
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed[reason.index()].fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.suppressed[reason.index()].swap(0, Ordering::Relaxed);
        let peer = peer.map(PublicKey::short);
        tracing::info!(
            reason = reason.as_str(),
            endpoint = ?addr,
            peer = peer.as_deref(),
            suppressed,
            "dropped packet (logged at most once a second per reason)"
        );
    }
}

/// What a peer's mutex guards.
pub struct PeerState {
    /// The WireGuard state machine.
    pub tunn: Tunn,
    /// Where its packets go now.
    pub endpoint: Option<SocketAddr>,
}

/// A configured peer.
pub struct Peer {
    /// Position in the router's peer list; also the upper 24 bits of its session indices.
    pub index: usize,
    /// Its static public key.
    pub public_key: PublicKey,
    /// Its subnets.
    pub subnets: Vec<IpNet>,
    /// Keepalive interval.
    pub persistent_keepalive: Option<u16>,
    state: Mutex<PeerState>,
    /// Payload bytes received.
    pub rx_bytes: AtomicU64,
    /// Payload bytes sent.
    pub tx_bytes: AtomicU64,
    /// Drops attributed to this peer.
    pub drops: DropCounters,
}

impl Peer {
    /// Locks the peer's tunnel state. A poisoned lock means a panic inside boringtun on
    /// another thread; the state is still the best we have, so keep going.
    pub fn lock(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seconds since the last handshake, and the current endpoint.
    pub fn handshake_age_and_endpoint(&self) -> (Option<Duration>, Option<SocketAddr>) {
        let st = self.lock();
        (st.tunn.stats().0, st.endpoint)
    }
}

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

/// The peers, the routing table and the shared handshake rate limiter.
pub struct Router {
    private_key: boringtun::x25519::StaticSecret,
    public_key: boringtun::x25519::PublicKey,
    peers: Vec<Arc<Peer>>,
    by_key: HashMap<[u8; 32], usize>,
    routes: RoutingTable<usize>,
    rate_limiter: Arc<RateLimiter>,
    /// Drops not attributable to a peer.
    pub drops: DropCounters,
    /// Rate-limited logging of drops.
    pub log: LogLimiter,
}

impl Router {
    /// Builds the router for `private_key` and static `peers` (already validated).
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
        let secret = private_key.to_static_secret();
        let public = boringtun::x25519::PublicKey::from(&secret);
        let rate_limiter = Arc::new(RateLimiter::new(&public, limit));
        let mut list = Vec::with_capacity(peers.len());
        let mut by_key = HashMap::new();
        let mut routes = RoutingTable::new();
        for (index, p) in peers.iter().enumerate() {
            let tunn = Tunn::new(
                private_key.to_static_secret(),
                p.public_key.to_dalek(),
                None,
                p.persistent_keepalive,
                index as u32,
                Some(rate_limiter.clone()),
            );
            for net in &p.subnets {
                routes.insert(*net, index);
            }
            by_key.insert(*p.public_key.as_bytes(), index);
            list.push(Arc::new(Peer {
                index,
                public_key: p.public_key,
                subnets: p.subnets.clone(),
                persistent_keepalive: p.persistent_keepalive,
                state: Mutex::new(PeerState {
                    tunn,
                    endpoint: p.endpoint,
                }),
                rx_bytes: AtomicU64::new(0),
                tx_bytes: AtomicU64::new(0),
                drops: DropCounters::default(),
            }));
        }
        Router {
            private_key: secret,
            public_key: public,
            peers: list,
            by_key,
            routes,
            rate_limiter,
            drops: DropCounters::default(),
            log: LogLimiter::default(),
        }
    }

    /// The peers, by index.
    pub fn peers(&self) -> &[Arc<Peer>] {
        &self.peers
    }

    /// Drops over all peers and the router, by reason.
    pub fn total_drops(&self) -> std::collections::BTreeMap<DropReason, u64> {
        let mut total = self.drops.snapshot();
        for p in &self.peers {
            for (r, n) in p.drops.snapshot() {
                *total.entry(r).or_default() += n;
            }
        }
        total
    }

    fn drop_global(&self, reason: DropReason, addr: Option<SocketAddr>) {
        self.drops.add(reason);
        self.log.log(reason, addr, None);
    }

    fn drop_peer(&self, peer: &Peer, reason: DropReason, addr: Option<SocketAddr>) {
        peer.drops.add(reason);
        self.log.log(reason, addr, Some(&peer.public_key));
    }

    /// Encrypts an IP packet read from the TUN into `out` (at least `packet.len() + 32`
    /// and [`MIN_BUFFER_LEN`] bytes). The destination picks the peer.
    pub fn encapsulate(&self, packet: &[u8], out: &mut [u8]) -> Outbound {
        let Some(dst) = destination(packet) else {
            self.drop_global(DropReason::NotIp, None);
            return Outbound::Dropped(DropReason::NotIp);
        };
        let Some(index) = self.routes.lookup(dst) else {
            if dst.is_multicast() {
                // The kernel's own IPv6 router solicitations and MLD reports on a new
                // TUN: counted, but not worth a log line.
                self.drops.add(DropReason::NoRoute);
            } else {
                self.drop_global(DropReason::NoRoute, None);
            }
            return Outbound::Dropped(DropReason::NoRoute);
        };
        let peer = &self.peers[index];
        let mut st = peer.lock();
        let Some(endpoint) = st.endpoint else {
            drop(st);
            self.drop_peer(peer, DropReason::NoEndpoint, None);
            return Outbound::Dropped(DropReason::NoEndpoint);
        };
        match st.tunn.encapsulate(packet, out) {
            TunnResult::WriteToNetwork(b) => {
                let len = b.len();
                peer.tx_bytes
                    .fetch_add(packet.len() as u64, Ordering::Relaxed);
                Outbound::Send {
                    peer: index,
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

    /// Handles one datagram from `src`. Plaintext for the TUN lands at the start of `out`
    /// (at least `datagram.len()` and [`MIN_BUFFER_LEN`] bytes). Handshake answers,
    /// cookies and packets queued during a handshake are passed to `reply`.
    pub fn decapsulate(
        &self,
        src: SocketAddr,
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
        let index = match &packet {
            Packet::HandshakeInit(init) => {
                // Check mac1 and load before the Diffie-Hellman in parse_handshake_anon:
                // under a flood this answers with a cookie instead.
                match self
                    .rate_limiter
                    .verify_packet(Some(src.ip()), datagram, out)
                {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        reply(src, cookie);
                        self.drop_global(DropReason::UnderLoad, Some(src));
                        return Inbound::Dropped(DropReason::UnderLoad);
                    }
                    Err(_) => {
                        self.drop_global(DropReason::AuthFailed, Some(src));
                        return Inbound::Dropped(DropReason::AuthFailed);
                    }
                }
                match parse_handshake_anon(&self.private_key, &self.public_key, init) {
                    Ok(half) => match self.by_key.get(&half.peer_static_public) {
                        Some(i) => *i,
                        None => {
                            self.drop_global(DropReason::UnknownPeer, Some(src));
                            return Inbound::Dropped(DropReason::UnknownPeer);
                        }
                    },
                    Err(_) => {
                        self.drop_global(DropReason::AuthFailed, Some(src));
                        return Inbound::Dropped(DropReason::AuthFailed);
                    }
                }
            }
            Packet::HandshakeResponse(p) => (p.receiver_idx >> 8) as usize,
            Packet::PacketCookieReply(p) => (p.receiver_idx >> 8) as usize,
            Packet::PacketData(p) => (p.receiver_idx >> 8) as usize,
        };
        let is_data = matches!(packet, Packet::PacketData(_));
        let Some(peer) = self.peers.get(index) else {
            self.drop_global(DropReason::UnknownPeer, Some(src));
            return Inbound::Dropped(DropReason::UnknownPeer);
        };
        let mut st = peer.lock();
        match st.tunn.decapsulate(Some(src.ip()), datagram, out) {
            TunnResult::WriteToNetwork(b) => {
                // A handshake message authenticated: the peer is at `src` now.
                st.endpoint = Some(src);
                reply(src, b);
                // Packets queued while the handshake was under way.
                while let TunnResult::WriteToNetwork(b) = st.tunn.decapsulate(None, &[], out) {
                    reply(src, b);
                }
                Inbound::Consumed
            }
            TunnResult::WriteToTunnelV4(b, addr) => {
                let len = b.len();
                self.accept(peer, &mut st, src, IpAddr::V4(addr), len)
            }
            TunnResult::WriteToTunnelV6(b, addr) => {
                let len = b.len();
                self.accept(peer, &mut st, src, IpAddr::V6(addr), len)
            }
            TunnResult::Done => {
                if is_data {
                    // an authenticated keepalive
                    st.endpoint = Some(src);
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
                        if let Some(endpoint) = st.endpoint
                            && let TunnResult::WriteToNetwork(init) =
                                st.tunn.format_handshake_initiation(out, false)
                        {
                            reply(endpoint, init);
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
                drop(st);
                self.drop_peer(peer, reason, Some(src));
                Inbound::Dropped(reason)
            }
        }
    }

    /// Inbound check: the decrypted packet's source must belong to the peer that sent it.
    fn accept(
        &self,
        peer: &Peer,
        st: &mut PeerState,
        src: SocketAddr,
        inner_source: IpAddr,
        len: usize,
    ) -> Inbound {
        // It decrypted under this peer's session: authenticated, so it may roam.
        st.endpoint = Some(src);
        if self.routes.lookup(inner_source) != Some(peer.index) {
            self.drop_peer(peer, DropReason::SourceNotAllowed, Some(src));
            return Inbound::Dropped(DropReason::SourceNotAllowed);
        }
        peer.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
        Inbound::ToTun { len }
    }

    /// Runs every peer's timers (handshake retries, keepalives, rekeys, expiry); call
    /// every ~250 ms. Messages due go to `send`.
    pub fn tick(&self, buf: &mut [u8], send: &mut dyn FnMut(SocketAddr, &[u8])) {
        for peer in &self.peers {
            let mut st = peer.lock();
            let endpoint = st.endpoint;
            if let TunnResult::WriteToNetwork(b) = st.tunn.update_timers(buf)
                && let Some(ep) = endpoint
            {
                send(ep, b);
            }
        }
    }

    /// Resets the handshake rate limiter's count; call once a second.
    pub fn reset_rate_limiter(&self) {
        self.rate_limiter.reset_count();
    }

    /// Starts a handshake with every peer that has an endpoint (at start-up, so that a
    /// restarted daemon replaces the sessions its peers still hold at once).
    pub fn initiate_all(&self, buf: &mut [u8], send: &mut dyn FnMut(SocketAddr, &[u8])) {
        for peer in &self.peers {
            let mut st = peer.lock();
            let endpoint = st.endpoint;
            if let Some(ep) = endpoint
                && let TunnResult::WriteToNetwork(b) =
                    st.tunn.format_handshake_initiation(buf, false)
            {
                send(ep, b);
            }
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

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
