//! Datagrams into `overlayd::router::Router`, both directions, after a real handshake.
//!
//! ```text
//!   A (10.42.1.0/24) @198.18.0.11:51820  <== datagrams ==>  B (10.42.2.0/24) @198.18.0.12:51820
//!     routes 10.42.2.0/24 and 10.99.0.0/16 to B
//!                                   stranger @198.18.0.66:4000 ==> B
//! ```
//!
//! Inputs run on a pair with a completed handshake (as in overlayd/src/router/tests.rs),
//! made fresh for the first input of a process and reused for up to 500 inputs or 60 s
//! while both endpoints stay where they started (the handshake is most of the cost of an
//! input); every property checked holds whatever the pair went through before, so a crash
//! reproduces from its input alone on a fresh pair. The first byte picks a mode:
//!
//! 0. raw bytes into B's `decapsulate`, from A's address;
//! 1. raw bytes into B, from a stranger's address;
//! 2. a genuine data packet of A's (payload from the input), cut and flipped as the input
//!    says, into B from A or from the stranger;
//! 3. the input as a TUN packet into A's `encapsulate`, what A sends into B, and the same
//!    the other way;
//! 4. a fresh genuine handshake initiation of A's, cut and flipped, into B, replies pumped;
//! 5. a sequence of raw datagrams (length-prefixed), each to A or B, from peer or stranger;
//! 6. the input behind a relay header (to a relay or from one, naming A or B) into B, from
//!    A or the stranger: B forwards nothing (with two peers every key id names the sender
//!    or no one), and nothing reaches its TUN or moves an endpoint.
//!
//! Checked: nothing panics; raw bytes never reach a TUN and never move an endpoint; a
//! packet a router writes to its TUN is exactly what the other's TUN gave, comes from the
//! subnets the receiver routes to the sender (for A, B's are 10.42.2.0/24 and
//! 10.99.0.0/16) and goes to the receiver's own subnet (B must not deliver what A sends
//! to 10.99.0.0/16); a changed data packet, or a handshake message changed where its MACs
//! cover it, never moves an endpoint; replies go only to the sender or to the peer's known
//! endpoint.
#![no_main]

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use overlay_fuzz::{chunks, wireguard_key};
use overlayd::config::PeerConfig;
use overlayd::router::{Inbound, Outbound, Router};

const A_ADDR: &str = "198.18.0.11:51820";
const B_ADDR: &str = "198.18.0.12:51820";
const STRANGER: &str = "198.18.0.66:4000";
/// Each router's own subnet (`set_local_networks`), and what A routes to B beyond it.
const A_LOCAL: &str = "10.42.1.0/24";
const B_LOCAL: &str = "10.42.2.0/24";
const B_EXTRA: &str = "10.99.0.0/16";
/// Where a handshake initiation's mac1 ends: bytes before it are covered by mac1, mac1 by
/// mac2, and mac2 (not checked when the host is not under load) by nothing.
const INITIATION_MAC2_OFFSET: usize = 132;
const DATA_TYPE: u8 = 4;

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("a fixture address")
}

fn net(text: &str) -> ipnet::IpNet {
    text.parse().expect("a fixture subnet")
}

/// Datagrams in flight: (from, to, bytes).
type Wire = Vec<(SocketAddr, SocketAddr, Vec<u8>)>;

struct Pair {
    a: Router,
    b: Router,
}

impl Pair {
    fn new() -> Pair {
        let (ka, kb) = (wireguard_key(41), wireguard_key(42));
        let peer = |key: &keys::PrivateKey, subnets: &[&str], endpoint: &str| PeerConfig {
            public_key: key.public_key(),
            name: None,
            endpoint: Some(addr(endpoint)),
            subnets: subnets
                .iter()
                .map(|s| s.parse().expect("a fixture subnet"))
                .collect(),
            persistent_keepalive: None,
        };
        // A routes more to B than B's own subnet (as a peer with allowed-ips 0.0.0.0/0
        // would): B must deliver only what is for its own subnet.
        let pair = Pair {
            a: Router::new(&ka, &[peer(&kb, &["10.42.2.0/24", B_EXTRA], B_ADDR)]),
            b: Router::new(&kb, &[peer(&ka, &["10.42.1.0/24"], A_ADDR)]),
        };
        pair.a.set_local_networks(&[net(A_LOCAL)]);
        pair.b.set_local_networks(&[net(B_LOCAL)]);
        let mut wire = Vec::new();
        let mut buf = vec![0u8; 2048];
        pair.a.initiate_all(&mut buf, &mut |dst, b| {
            wire.push((addr(A_ADDR), dst, b.to_vec()))
        });
        pair.pump(wire);
        assert_eq!(pair.endpoint_at_b(), Some(addr(A_ADDR)), "handshake failed");
        pair
    }

    /// B's view of A's endpoint.
    fn endpoint_at_b(&self) -> Option<SocketAddr> {
        self.b.peers()[0].handshake_age_and_endpoint().1
    }

    /// A's view of B's endpoint.
    fn endpoint_at_a(&self) -> Option<SocketAddr> {
        self.a.peers()[0].handshake_age_and_endpoint().1
    }

    /// Delivers one datagram to the router at `to`; returns what it gave the TUN and the
    /// replies it sent, as (from, to, bytes).
    fn deliver(
        &self,
        from: SocketAddr,
        to: SocketAddr,
        bytes: &[u8],
    ) -> (Inbound, Option<Vec<u8>>, Wire) {
        let router = if to == addr(A_ADDR) { &self.a } else { &self.b };
        let mut out = vec![0u8; bytes.len().max(overlayd::router::MIN_BUFFER_LEN) + 64];
        let mut replies = Vec::new();
        let r = router.decapsulate(from, bytes, &mut out, &mut |dst, b| {
            replies.push((to, dst, b.to_vec()))
        });
        for (_, dst, _) in &replies {
            let known = if to == addr(A_ADDR) {
                self.endpoint_at_a()
            } else {
                self.endpoint_at_b()
            };
            assert!(
                *dst == from || Some(*dst) == known,
                "a reply went to {dst}, neither the sender {from} nor the known endpoint {known:?}"
            );
        }
        let tun = match r {
            Inbound::ToTun { len } => Some(out[..len].to_vec()),
            _ => None,
        };
        (r, tun, replies)
    }

    /// Delivers datagrams and their replies until none are left (bounded); returns the
    /// packets each TUN got. Datagrams to the stranger are dropped.
    fn pump(&self, mut wire: Wire) -> Vec<Vec<u8>> {
        let mut tun = Vec::new();
        for _ in 0..32 {
            let Some((from, to, bytes)) = wire.pop() else {
                return tun;
            };
            if to != addr(A_ADDR) && to != addr(B_ADDR) {
                continue;
            }
            let (_, got, replies) = self.deliver(from, to, &bytes);
            tun.extend(got);
            wire.extend(replies);
        }
        tun
    }

    /// Encrypts `packet` on `router`; the datagram it would send, if any.
    fn encapsulate(router: &Router, packet: &[u8]) -> Option<Vec<u8>> {
        let mut out = vec![0u8; packet.len().max(overlayd::router::MIN_BUFFER_LEN) + 64];
        match router.encapsulate(packet, &mut out) {
            Outbound::Send { len, .. } => Some(out[..len].to_vec()),
            Outbound::Queued | Outbound::Dropped(_) => None,
        }
    }
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    let total = u16::try_from(20 + payload.len()).unwrap_or(u16::MAX);
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// How the input changes a genuine message: cut to `cut` bytes (0: keep the length), then
/// XOR `xor` into the byte at `position` (modulo the length).
struct Mutation {
    cut: usize,
    position: usize,
    xor: u8,
}

impl Mutation {
    fn read(data: &[u8]) -> (Mutation, &[u8]) {
        let (head, rest) = data.split_at(data.len().min(4));
        let byte = |i: usize| head.get(i).copied().unwrap_or(0);
        let m = Mutation {
            cut: usize::from(u16::from_be_bytes([byte(0), byte(1)])),
            position: usize::from(byte(2)),
            xor: byte(3),
        };
        (m, rest)
    }

    /// The changed message and whether the bytes in `covered` (or the length) changed.
    fn apply(&self, message: &[u8], covered: usize) -> (Vec<u8>, bool) {
        let mut m = message.to_vec();
        if self.cut != 0 {
            m.truncate(self.cut);
        }
        let mut changed = m.len() != message.len();
        if !m.is_empty() {
            let at = self.position % m.len();
            m[at] ^= self.xor;
            changed |= self.xor != 0 && at < covered;
        }
        (m, changed)
    }
}

fn raw(pair: &Pair, from: SocketAddr, to: SocketAddr, datagram: &[u8]) {
    let (before_a, before_b) = (pair.endpoint_at_a(), pair.endpoint_at_b());
    let (r, tun, _) = pair.deliver(from, to, datagram);
    assert!(tun.is_none(), "raw bytes reached a TUN: {r:?}");
    assert_eq!(
        pair.endpoint_at_a(),
        before_a,
        "raw bytes moved A's endpoint"
    );
    assert_eq!(
        pair.endpoint_at_b(),
        before_b,
        "raw bytes moved B's endpoint"
    );
}

/// How many inputs one pair serves, and for how long, before a fresh one is made: its
/// handshake costs most of an input's time, and boringtun's sessions expire after 180 s.
const PAIR_USES: u32 = 500;
const PAIR_LIFETIME: Duration = Duration::from_secs(60);

thread_local! {
    /// The pair the next input runs on, with when it was made and how often it served.
    static PAIR: RefCell<Option<(Pair, Instant, u32)>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let (pair, born, uses) = PAIR
        .with(|p| p.borrow_mut().take())
        .unwrap_or_else(|| (Pair::new(), Instant::now(), 0));
    pair.a.reset_rate_limiter(Instant::now());
    pair.b.reset_rate_limiter(Instant::now());
    run(&pair, mode, data);
    // Reused only while it is as a fresh pair would be where it matters: both endpoints
    // where they started (an input may move one with a genuine packet from elsewhere).
    let clean =
        pair.endpoint_at_a() == Some(addr(B_ADDR)) && pair.endpoint_at_b() == Some(addr(A_ADDR));
    if clean && uses + 1 < PAIR_USES && born.elapsed() < PAIR_LIFETIME {
        PAIR.with(|p| *p.borrow_mut() = Some((pair, born, uses + 1)));
    }
});

fn run(pair: &Pair, mode: u8, data: &[u8]) {
    let (a, b, stranger) = (addr(A_ADDR), addr(B_ADDR), addr(STRANGER));
    match mode % 7 {
        0 => raw(pair, a, b, data),
        1 => raw(pair, stranger, b, data),
        2 => {
            let (m, rest) = Mutation::read(data);
            let (from_stranger, payload) = match rest.split_first() {
                Some((&flag, payload)) => (flag & 1 == 1, payload),
                None => (false, rest),
            };
            let packet = ipv4(
                Ipv4Addr::new(10, 42, 1, 2),
                Ipv4Addr::new(10, 42, 2, 2),
                payload,
            );
            let genuine = Pair::encapsulate(&pair.a, &packet).expect("A sends after a handshake");
            assert_eq!(genuine[0], DATA_TYPE);
            let (changed, is_changed) = m.apply(&genuine, genuine.len());
            let from = if from_stranger { stranger } else { a };
            let (r, tun, _) = pair.deliver(from, b, &changed);
            if is_changed {
                assert!(
                    tun.is_none(),
                    "a changed data packet reached B's TUN: {r:?}"
                );
                assert_eq!(
                    pair.endpoint_at_b(),
                    Some(a),
                    "a changed data packet moved A's endpoint"
                );
            } else {
                assert_eq!(
                    tun.as_deref(),
                    Some(packet.as_slice()),
                    "a genuine packet was lost: {r:?}"
                );
                assert_eq!(pair.endpoint_at_b(), Some(from));
            }
        }
        3 => {
            // (sender, from, to, the sender's subnets as the receiver has them, the
            // receiver's own subnet)
            let directions: [(&Router, _, _, &[&str], _); 2] = [
                (&pair.a, a, b, &[A_LOCAL], B_LOCAL),
                (&pair.b, b, a, &[B_LOCAL, B_EXTRA], A_LOCAL),
            ];
            for (router, from, to, sources, local) in directions {
                let Some(datagram) = Pair::encapsulate(router, data) else {
                    continue;
                };
                let (r, tun, _) = pair.deliver(from, to, &datagram);
                if let Some(tun) = tun {
                    assert!(
                        data.starts_with(&tun),
                        "the receiving TUN got other bytes than the sending TUN gave: {r:?}"
                    );
                    let (source, destination) = match tun[0] >> 4 {
                        4 => (
                            IpAddr::from(<[u8; 4]>::try_from(&tun[12..16]).unwrap()),
                            IpAddr::from(<[u8; 4]>::try_from(&tun[16..20]).unwrap()),
                        ),
                        _ => (
                            IpAddr::from(<[u8; 16]>::try_from(&tun[8..24]).unwrap()),
                            IpAddr::from(<[u8; 16]>::try_from(&tun[24..40]).unwrap()),
                        ),
                    };
                    assert!(
                        sources.iter().any(|s| net(s).contains(&source)),
                        "delivered a packet from {source}, outside the sender's {sources:?}"
                    );
                    assert!(
                        net(local).contains(&destination),
                        "delivered a packet to {destination}, outside the receiver's {local}"
                    );
                }
            }
        }
        4 => {
            let (m, rest) = Mutation::read(data);
            let from_stranger = rest.first().is_some_and(|f| f & 1 == 1);
            let mut initiation = Vec::new();
            let mut buf = vec![0u8; 2048];
            pair.a
                .initiate_all(&mut buf, &mut |_, bytes| initiation = bytes.to_vec());
            if initiation.is_empty() {
                return; // a handshake is under way: A sends none
            }
            let (changed, is_changed) = m.apply(&initiation, INITIATION_MAC2_OFFSET);
            let from = if from_stranger { stranger } else { a };
            let (_, tun, replies) = pair.deliver(from, b, &changed);
            assert!(tun.is_none(), "a handshake message reached a TUN");
            if is_changed {
                assert_eq!(
                    pair.endpoint_at_b(),
                    Some(a),
                    "a changed initiation moved A's endpoint"
                );
            }
            let got = pair.pump(replies);
            assert!(got.is_empty(), "a handshake put packets on a TUN");
        }
        6 => relayed(pair, data),
        _ => {
            for chunk in chunks(data) {
                let Some((&how, datagram)) = chunk.split_first() else {
                    continue;
                };
                let to = if how & 1 == 0 { b } else { a };
                let peer = if to == b { a } else { b };
                let from = if how & 2 == 0 { peer } else { stranger };
                raw(pair, from, to, datagram);
            }
        }
    }
}

/// Mode 6 (see the module docs).
fn relayed(pair: &Pair, data: &[u8]) {
    use overlayd::router::relay::{FROM_RELAY, TO_RELAY, key_id};
    let Some((&how, rest)) = data.split_first() else {
        return;
    };
    let from = if how & 1 == 0 {
        addr(A_ADDR)
    } else {
        addr(STRANGER)
    };
    let datagram = if how & 8 == 0 {
        let kind = if how & 2 == 0 { TO_RELAY } else { FROM_RELAY };
        let named = if how & 4 == 0 { &pair.a } else { &pair.b };
        let mut d = vec![kind, 0, 0, 0];
        d.extend_from_slice(&key_id(&named.own_key()));
        d.extend_from_slice(rest);
        d
    } else {
        rest.to_vec()
    };
    let table = pair.b.table();
    let mut out = Vec::new();
    assert_eq!(
        pair.b.forward_relayed(&table, from, &datagram, &mut out),
        None,
        "B relayed a datagram with two peers"
    );
    let before = (pair.endpoint_at_a(), pair.endpoint_at_b());
    let mut plain = vec![0u8; datagram.len().max(overlayd::router::MIN_BUFFER_LEN) + 64];
    let r = pair
        .b
        .decapsulate_relayed_with(&table, from, &datagram, &mut plain, &mut |_, _| {});
    assert!(
        !matches!(r, Inbound::ToTun { .. }),
        "relay-framed bytes reached B's TUN"
    );
    assert_eq!(
        (pair.endpoint_at_a(), pair.endpoint_at_b()),
        before,
        "relay-framed bytes moved an endpoint"
    );
}
