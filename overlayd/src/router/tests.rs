//! Two routers wired back to back in memory, with real boringtun handshakes:
//!
//! ```text
//!   A (10.42.1.0/24) @198.18.0.11:51820  <== datagrams ==>  B (10.42.2.0/24) @198.18.0.12:51820
//! ```

use super::*;
use std::net::Ipv4Addr;
use std::time::Duration;

pub(crate) const A_ADDR: &str = "198.18.0.11:51820";
pub(crate) const B_ADDR: &str = "198.18.0.12:51820";

pub(crate) struct Pair {
    pub(crate) a: Router,
    pub(crate) b: Router,
}

pub(crate) fn peer(key: &PrivateKey, subnet: &str, endpoint: Option<&str>) -> PeerConfig {
    PeerConfig {
        public_key: key.public_key(),
        name: None,
        endpoint: endpoint.map(|e| e.parse().unwrap()),
        subnets: vec![subnet.parse().unwrap()],
        persistent_keepalive: None,
    }
}

pub(crate) fn pair() -> Pair {
    let ka = PrivateKey::generate();
    let kb = PrivateKey::generate();
    let pair = Pair {
        a: Router::new(&ka, &[peer(&kb, "10.42.2.0/24", Some(B_ADDR))]),
        b: Router::new(&kb, &[peer(&ka, "10.42.1.0/24", Some(A_ADDR))]),
    };
    pair.a
        .set_local_networks(&["10.42.1.0/24".parse().unwrap()]);
    pair.b
        .set_local_networks(&["10.42.2.0/24".parse().unwrap()]);
    pair
}

/// An IPv4 header (no payload checks are made by the tunnel) plus `payload`.
pub(crate) fn ipv4(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    let total = (20 + payload.len()) as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.parse::<Ipv4Addr>().unwrap().octets());
    p[16..20].copy_from_slice(&dst.parse::<Ipv4Addr>().unwrap().octets());
    p.extend_from_slice(payload);
    p
}

pub(crate) type Wire = Vec<(SocketAddr, SocketAddr, Vec<u8>)>; // (from, to, bytes)

/// Delivers datagrams until none are left; returns plaintext written to each TUN.
pub(crate) fn pump(pair: &Pair, mut wire: Wire) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    let a_addr: SocketAddr = A_ADDR.parse().unwrap();
    let mut rounds = 0;
    while let Some((from, to, bytes)) = wire.pop() {
        rounds += 1;
        assert!(rounds < 100, "datagrams keep bouncing");
        let (router, tun) = if to == a_addr {
            (&pair.a, &mut to_a)
        } else {
            (&pair.b, &mut to_b)
        };
        let mut out = vec![0u8; 2048];
        let mut replies = Vec::new();
        let r = router.decapsulate(from, &bytes, &mut out, &mut |dst, b| {
            replies.push((to, dst, b.to_vec()))
        });
        if let Inbound::ToTun { len } = r {
            tun.push(out[..len].to_vec());
        }
        wire.extend(replies);
    }
    (to_a, to_b)
}

pub(crate) fn send(router: &Router, from: &str, packet: &[u8]) -> Wire {
    let mut out = vec![0u8; 2048];
    match router.encapsulate(packet, &mut out) {
        Outbound::Send { endpoint, len, .. } => {
            vec![(from.parse().unwrap(), endpoint, out[..len].to_vec())]
        }
        Outbound::Queued => Vec::new(),
        Outbound::Dropped(r) => panic!("dropped: {r:?}"),
    }
}

pub(crate) fn handshake(pair: &Pair) {
    let mut wire = Vec::new();
    let mut buf = vec![0u8; 2048];
    pair.a.initiate_all(&mut buf, &mut |dst, b| {
        wire.push((A_ADDR.parse().unwrap(), dst, b.to_vec()))
    });
    assert_eq!(wire.len(), 1);
    pump(pair, wire);
}

#[test]
fn packet_crosses_after_handshake_both_ways() {
    let pair = pair();
    handshake(&pair);
    let p = ipv4("10.42.1.2", "10.42.2.2", b"hello");
    let (_, to_b) = pump(&pair, send(&pair.a, A_ADDR, &p));
    assert_eq!(to_b, vec![p]);
    let q = ipv4("10.42.2.2", "10.42.1.2", b"back");
    let (to_a, _) = pump(&pair, send(&pair.b, B_ADDR, &q));
    assert_eq!(to_a, vec![q]);
    assert_eq!(pair.b.peers()[0].rx_bytes.load(Ordering::Relaxed), 25);
    assert!(pair.a.peers()[0].handshake_age_and_endpoint().0.is_some());
}

#[test]
fn packet_sent_before_handshake_is_queued_then_delivered() {
    let pair = pair();
    let p = ipv4("10.42.1.2", "10.42.2.9", b"early");
    let wire = send(&pair.a, A_ADDR, &p); // a handshake initiation; the packet waits
    assert_eq!(wire.len(), 1);
    let (_, to_b) = pump(&pair, wire);
    assert_eq!(to_b, vec![p]);
}

#[test]
fn initiate_and_send_hands_initiations_to_the_socket() {
    use crate::datapath::fake::{FakeNet, Fault};
    let pair = pair();
    let net = FakeNet::new();
    let a_udp = net.bind(A_ADDR.parse().unwrap());
    let b_udp = net.bind(B_ADDR.parse().unwrap());
    let b_key = pair.a.peers()[0].public_key;
    // A stranger's key: nothing to start.
    pair.a.initiate_and_send(
        Initiate::Peer(&PrivateKey::generate().public_key()),
        &*a_udp,
    );
    assert!(a_udp.sent().is_empty());
    pair.a.initiate_and_send(Initiate::Peer(&b_key), &*a_udp);
    let sent = a_udp.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, B_ADDR.parse().unwrap());
    assert_eq!(
        (sent[0].1[0], sent[0].1.len()),
        (1, MIN_BUFFER_LEN),
        "an initiation"
    );
    // One under way: neither way starts another.
    pair.a.initiate_and_send(Initiate::Peer(&b_key), &*a_udp);
    pair.a.initiate_and_send(Initiate::All, &*a_udp);
    assert_eq!(a_udp.sent().len(), 1);
    // What arrived at B completes the handshake.
    assert_eq!(b_udp.queued(), 1);
    pump(
        &pair,
        vec![(A_ADDR.parse().unwrap(), sent[0].0, sent[0].1.clone())],
    );
    assert!(pair.b.peers()[0].handshake_age_and_endpoint().0.is_some());
    // A failed send is not an error for the caller: the timers retry.
    b_udp.fail_next_send(Fault::Os(libc::ENOBUFS));
    let a_key = pair.b.peers()[0].public_key;
    pair.b.initiate_and_send(Initiate::Peer(&a_key), &*b_udp);
    assert!(b_udp.sent().is_empty());
}

#[test]
fn ciphertext_does_not_contain_plaintext() {
    let pair = pair();
    handshake(&pair);
    let marker = b"MARKER-0123456789-MARKER";
    let wire = send(&pair.a, A_ADDR, &ipv4("10.42.1.2", "10.42.2.2", marker));
    assert!(!wire[0].2.windows(marker.len()).any(|w| w == marker));
}

#[test]
fn forged_inner_source_is_dropped_and_counted() {
    let pair = pair();
    handshake(&pair);
    // A claims a source in B's own subnet, and one in a third subnet.
    for forged in ["10.42.2.7", "10.42.3.7"] {
        let wire = send(&pair.a, A_ADDR, &ipv4(forged, "10.42.2.2", b"x"));
        let (_, to_b) = pump(&pair, wire);
        assert!(to_b.is_empty());
    }
    assert_eq!(pair.b.peers()[0].drops.get(DropReason::SourceNotAllowed), 2);
    // One security event for both (the same peer within a second), counted twice.
    let events = pair.b.events.after(0);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, protocol::api::EventKind::SpoofedSource);
    assert_eq!(events[0].count, 2);
    assert_eq!(events[0].endpoint, Some(A_ADDR.parse().unwrap()));
    assert!(
        events[0].detail.contains("10.42.2.7"),
        "{}",
        events[0].detail
    );
}

#[test]
fn no_route_is_dropped_and_counted() {
    let pair = pair();
    let mut out = vec![0u8; 2048];
    let r = pair
        .a
        .encapsulate(&ipv4("10.42.1.2", "10.99.0.1", b"x"), &mut out);
    assert_eq!(r, Outbound::Dropped(DropReason::NoRoute));
    assert_eq!(pair.a.drops.get(DropReason::NoRoute), 1);
    let r = pair.a.encapsulate(&[0x10, 0, 0], &mut out);
    assert_eq!(r, Outbound::Dropped(DropReason::NotIp));
}

#[test]
fn stranger_cannot_handshake() {
    let pair = pair();
    let stranger_key = PrivateKey::generate();
    let b_key_public = pair.a.peers()[0].public_key;
    // The stranger knows B's public key, but B does not know the stranger.
    let stranger = Router::new(
        &stranger_key,
        &[PeerConfig {
            public_key: b_key_public,
            name: None,
            endpoint: Some(B_ADDR.parse().unwrap()),
            subnets: vec!["10.42.2.0/24".parse().unwrap()],
            persistent_keepalive: None,
        }],
    );
    let mut buf = vec![0u8; 2048];
    let mut wire = Vec::new();
    stranger.initiate_all(&mut buf, &mut |dst, b| wire.push((dst, b.to_vec())));
    let mut out = vec![0u8; 2048];
    let mut replies = 0;
    let r = pair.b.decapsulate(
        "198.18.0.66:51820".parse().unwrap(),
        &wire[0].1,
        &mut out,
        &mut |_, _| replies += 1,
    );
    assert_eq!(r, Inbound::Dropped(DropReason::UnknownPeer));
    assert_eq!(replies, 0);
    let events = pair.b.events.after(0);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, protocol::api::EventKind::UnknownKey);
    assert!(
        events[0]
            .detail
            .contains(&stranger_key.public_key().to_string())
    );
}

#[test]
fn garbage_and_truncated_messages_are_counted_not_fatal() {
    let pair = pair();
    handshake(&pair);
    let good = send(&pair.a, A_ADDR, &ipv4("10.42.1.2", "10.42.2.2", b"payload"))[0]
        .2
        .clone();
    let from: SocketAddr = "198.18.0.99:4000".parse().unwrap();
    let mut out = vec![0u8; 2048];
    let mut seed = 7u32;
    for len in 0..200usize {
        let mut junk: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (seed >> 16) as u8
            })
            .collect();
        if len > 0 {
            junk[0] = (len % 5) as u8; // hit every message type, 0..=4
        }
        let r = pair.b.decapsulate(from, &junk, &mut out, &mut |_, _| {});
        assert!(matches!(r, Inbound::Dropped(_)), "len {len}: {r:?}");
    }
    for cut in 0..good.len() {
        let r = pair
            .b
            .decapsulate(from, &good[..cut], &mut out, &mut |_, _| {});
        assert!(matches!(r, Inbound::Dropped(_)), "cut {cut}: {r:?}");
    }
    assert!(pair.b.total_drops().values().sum::<u64>() >= 200);
    // the real packet still passes, and the peer's endpoint did not move to the attacker
    let (_, to_b) = pump(
        &pair,
        vec![(A_ADDR.parse().unwrap(), B_ADDR.parse().unwrap(), good)],
    );
    assert_eq!(to_b.len(), 1);
    assert_eq!(
        pair.b.peers()[0].handshake_age_and_endpoint().1,
        Some(A_ADDR.parse().unwrap())
    );
}

#[test]
fn endpoint_roams_to_source_of_authenticated_packet() {
    let pair = pair();
    handshake(&pair);
    let moved: SocketAddr = "198.18.1.11:51820".parse().unwrap();
    let wire = send(&pair.a, A_ADDR, &ipv4("10.42.1.2", "10.42.2.2", b"x"));
    let mut out = vec![0u8; 2048];
    let r = pair
        .b
        .decapsulate(moved, &wire[0].2, &mut out, &mut |_, _| {});
    assert!(matches!(r, Inbound::ToTun { .. }));
    assert_eq!(
        pair.b.peers()[0].handshake_age_and_endpoint().1,
        Some(moved)
    );
}

#[test]
fn handshake_flood_gets_cookie_replies() {
    let pair = pair();
    let mut buf = vec![0u8; 2048];
    let mut cookies = 0;
    let mut under_load = 0;
    // Fresh initiations from A (force resend gives a new message each time).
    for _ in 0..(HANDSHAKE_RATE_LIMIT * 3) {
        let init = {
            let peer = pair.a.peers()[0].clone();
            let mut st = peer.lock();
            match st.tunn.format_handshake_initiation(&mut buf, true) {
                TunnResult::WriteToNetwork(b) => b.to_vec(),
                other => panic!("{other:?}"),
            }
        };
        let mut out = vec![0u8; 2048];
        let r = pair
            .b
            .decapsulate(A_ADDR.parse().unwrap(), &init, &mut out, &mut |_, b| {
                if b.len() == 64 {
                    cookies += 1;
                }
            });
        if r == Inbound::Dropped(DropReason::UnderLoad) {
            under_load += 1;
        }
    }
    assert!(
        under_load > 0 && cookies == under_load,
        "under_load {under_load} cookies {cookies}"
    );
    assert_eq!(pair.b.cookie_replies_sent(), cookies);
}

#[test]
fn handshakes_are_counted_on_both_sides() {
    let pair = pair();
    let mut buf = vec![0u8; 2048];
    let mut wire = Vec::new();
    pair.a.initiate_all(&mut buf, &mut |dst, b| {
        wire.push((A_ADDR.parse().unwrap(), dst, b.to_vec()))
    });
    let replayed = wire[0].2.clone();
    pump(&pair, wire);
    let (on_a, on_b) = (pair.a.peers().remove(0), pair.b.peers().remove(0));
    let counts = |p: &Peer| {
        let h = &p.handshakes;
        (h.initiated(), h.completed(), h.failed())
    };
    assert_eq!(counts(&on_a), (1, 1, 0), "A started and completed one");
    assert_eq!(counts(&on_b), (0, 1, 0), "B answered one");
    // The same initiation again (a replay): B refuses it, a failed handshake for A.
    let (r, replies) = deliver(&pair.b, A_ADDR, &replayed);
    assert!(matches!(r, Inbound::Dropped(_)), "{r:?}");
    assert!(replies.is_empty());
    assert_eq!(counts(&on_b), (0, 1, 1));
    // Data does not count.
    let p = ipv4("10.42.1.2", "10.42.2.2", b"data");
    pump(&pair, send(&pair.a, A_ADDR, &p));
    assert_eq!(counts(&on_a), (1, 1, 0));
    assert_eq!(pair.a.cookie_replies_sent(), 0);
}

proptest::proptest! {
    /// Whatever bytes arrive at the port, from wherever, the router answers without
    /// panicking, drops what is not an authenticated message for a known peer, and never
    /// hands it to the TUN.
    #[test]
    fn arbitrary_datagrams_never_panic_or_reach_the_tun(
        datagrams in proptest::collection::vec(
            (0u8..6, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)),
            1..40,
        ),
    ) {
        let pair = pair();
        handshake(&pair);
        let from: SocketAddr = "198.18.0.99:4000".parse().unwrap();
        let mut out = vec![0u8; 2048];
        for (kind, mut bytes) in datagrams {
            if !bytes.is_empty() && kind > 0 {
                bytes[0] = kind; // often a valid message type, so parsing goes deep
            }
            let r = pair.b.decapsulate(from, &bytes, &mut out, &mut |_, _| {});
            proptest::prop_assert!(matches!(r, Inbound::Dropped(_)), "{:?}", r);
        }
    }
}

// ---- issue 14, item 1: an outsider who knows a public key cannot steer a tunnel ----

const FORGER: &str = "198.19.66.66:40000";

/// WireGuard's mac1 over `msg` (everything before the two MACs) for a receiver whose
/// public key is `to`: what anyone who knows that key can compute.
fn mac1(to: &PublicKey, msg: &[u8]) -> [u8; 16] {
    use blake2::digest::{FixedOutput, KeyInit, Update};
    use blake2::{Blake2s256, Blake2sMac, Digest, digest::consts::U16};
    let key = Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(to.as_bytes())
        .finalize();
    let mut mac = Blake2sMac::<U16>::new_from_slice(&key).unwrap();
    Update::update(&mut mac, msg);
    mac.finalize_fixed().into()
}

/// A handshake message of `kind` (1 initiation, 2 response) with random contents, a valid
/// mac1 for `to` and no mac2; a response goes to `receiver_idx`.
fn forged(kind: u8, to: &PublicKey, receiver_idx: u32, salt: u32) -> Vec<u8> {
    let len = if kind == 1 { 148 } else { 92 };
    let mut m = vec![0u8; len];
    m[0] = kind;
    m[4..8].copy_from_slice(&salt.wrapping_mul(2_654_435_761).to_le_bytes());
    if kind == 2 {
        m[8..12].copy_from_slice(&receiver_idx.to_le_bytes());
    }
    for (i, b) in m[12..len - 32].iter_mut().enumerate() {
        *b = (i as u32 ^ salt).wrapping_mul(31) as u8;
    }
    let mac = mac1(to, &m[..len - 32]);
    m[len - 32..len - 16].copy_from_slice(&mac);
    m
}

/// A fresh initiation from `from` to its only peer.
fn initiation(from: &Router) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let peer = from.peers()[0].clone();
    let mut st = peer.lock();
    match st.tunn.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(b) => b.to_vec(),
        other => panic!("{other:?}"),
    }
}

/// Delivers `bytes` from `src` to `router`; returns the replies as (destination, bytes).
fn deliver(router: &Router, src: &str, bytes: &[u8]) -> (Inbound, Vec<(SocketAddr, Vec<u8>)>) {
    let mut out = vec![0u8; 2048];
    let mut replies = Vec::new();
    let r = router.decapsulate(src.parse().unwrap(), bytes, &mut out, &mut |d, b| {
        replies.push((d, b.to_vec()))
    });
    (r, replies)
}

fn endpoint_of_only_peer(router: &Router) -> Option<SocketAddr> {
    router.peers()[0].handshake_age_and_endpoint().1
}

#[test]
fn forged_and_replayed_handshake_responses_never_move_the_endpoint() {
    for under_load in [false, true] {
        let pair = pair();
        let a_key = pair.a.own_key();
        // A initiates; B's genuine response is captured (and delivered) on the way.
        let init = initiation(&pair.a);
        let a_idx = u32::from_le_bytes(init[4..8].try_into().unwrap());
        let (_, replies) = deliver(&pair.b, A_ADDR, &init);
        let response = replies[0].1.clone();
        assert_eq!(response[0], 2, "B answers with a handshake response");
        let (r, _) = deliver(&pair.a, B_ADDR, &response);
        assert_eq!(r, Inbound::Consumed);
        let b_addr: SocketAddr = B_ADDR.parse().unwrap();
        assert_eq!(endpoint_of_only_peer(&pair.a), Some(b_addr));

        if under_load {
            // valid-mac1 initiations from nowhere push A over its handshake limit
            for i in 0..(HANDSHAKE_RATE_LIMIT as u32 + 10) {
                deliver(&pair.a, FORGER, &forged(1, &a_key, 0, i));
            }
        }
        // the genuine response replayed, and forged ones to A's indices, from the forger
        let mut attacks = vec![response.clone()];
        for i in 0..64 {
            attacks.push(forged(2, &a_key, a_idx, i));
            attacks.push(forged(2, &a_key, (a_idx & !0xff) | i, 1000 + i));
        }
        for m in &attacks {
            let (r, replies) = deliver(&pair.a, FORGER, m);
            assert!(
                !matches!(r, Inbound::ToTun { .. }),
                "under_load={under_load}: a forged response reached the TUN"
            );
            for (dst, b) in &replies {
                assert!(
                    b[0] == 3 && b.len() == 64,
                    "under_load={under_load}: the forger got more than a cookie reply: type {} to {dst}",
                    b[0]
                );
            }
            assert_eq!(
                endpoint_of_only_peer(&pair.a),
                Some(b_addr),
                "under_load={under_load}: a forged response moved B's endpoint to the forger"
            );
        }
        // and the tunnel still works both ways
        let (_, to_b) = pump(
            &pair,
            send(&pair.a, A_ADDR, &ipv4("10.42.1.2", "10.42.2.2", b"x")),
        );
        assert_eq!(to_b.len(), 1, "under_load={under_load}");
    }
}

#[test]
fn every_handshake_message_counts_once_against_the_limit() {
    // with a limit of 2, two genuine initiations in the same second are both answered
    let ka = PrivateKey::generate();
    let kb = PrivateKey::generate();
    let a = Router::new(&ka, &[peer(&kb, "10.42.2.0/24", Some(B_ADDR))]);
    let b = Router::with_handshake_limit(&kb, &[peer(&ka, "10.42.1.0/24", Some(A_ADDR))], 2);
    for n in 0..2 {
        let (r, replies) = deliver(&b, A_ADDR, &initiation(&a));
        assert_eq!(r, Inbound::Consumed, "initiation {n}");
        assert_eq!(
            replies[0].1[0], 2,
            "initiation {n} answered with a response, not a cookie"
        );
    }
    let (r, _) = deliver(&b, A_ADDR, &initiation(&a));
    assert_eq!(
        r,
        Inbound::Dropped(DropReason::UnderLoad),
        "the third is over the limit"
    );
}
#[test]
fn a_handshake_flood_is_reported_when_cookies_start_and_when_they_stop() {
    let ka = PrivateKey::generate();
    let kb = PrivateKey::generate();
    let a = Router::new(&ka, &[peer(&kb, "10.42.2.0/24", Some(B_ADDR))]);
    let b = Router::with_handshake_limit(&kb, &[peer(&ka, "10.42.1.0/24", Some(A_ADDR))], 2);
    let start = Instant::now();
    let kinds = |b: &Router| -> Vec<protocol::api::EventKind> {
        b.events.after(0).iter().map(|e| e.kind).collect()
    };
    for _ in 0..5 {
        deliver(&b, A_ADDR, &initiation(&a));
    }
    b.reset_rate_limiter(start + Duration::from_secs(1));
    assert_eq!(
        kinds(&b),
        vec![protocol::api::EventKind::HandshakeFloodStarted]
    );
    let started = &b.events.after(0)[0].detail;
    assert!(
        started.contains("5 handshake messages a second") && started.contains("3 in the last"),
        "{started}"
    );
    for s in 2..=4 {
        b.reset_rate_limiter(start + Duration::from_secs(s));
    }
    assert_eq!(
        kinds(&b),
        vec![
            protocol::api::EventKind::HandshakeFloodStarted,
            protocol::api::EventKind::HandshakeFloodEnded
        ]
    );
}

#[test]
fn cookie_secret_rotates_every_two_minutes() {
    // B is always under load: an initiation needs a valid mac2, i.e. a current cookie
    let ka = PrivateKey::generate();
    let kb = PrivateKey::generate();
    let a = Router::new(&ka, &[peer(&kb, "10.42.2.0/24", Some(B_ADDR))]);
    let b = Router::with_handshake_limit(&kb, &[peer(&ka, "10.42.1.0/24", Some(A_ADDR))], 0);
    let start = Instant::now();
    let (r, replies) = deliver(&b, A_ADDR, &initiation(&a));
    assert_eq!(r, Inbound::Dropped(DropReason::UnderLoad));
    assert_eq!(replies[0].1[0], 3, "a cookie reply");
    deliver(&a, B_ADDR, &replies[0].1); // A takes the cookie
    let answered = |b: &Router| deliver(b, A_ADDR, &initiation(&a)).1[0].1[0];
    assert_eq!(
        answered(&b),
        2,
        "with the cookie the initiation is answered"
    );
    b.reset_rate_limiter(start + Duration::from_secs(60));
    assert_eq!(answered(&b), 2, "a minute later the cookie still holds");
    b.reset_rate_limiter(start + Duration::from_secs(121));
    assert_eq!(
        answered(&b),
        3,
        "after two minutes the secret changed: a new cookie is needed"
    );
}

// ---- issue 14, item 6: a member cannot use a host as a gateway ----

#[test]
fn packets_for_anything_but_this_hosts_own_networks_are_dropped_and_counted() {
    // A is hostile: it routes everything to B (wg's allowed-ips 0.0.0.0/0)
    let ka = PrivateKey::generate();
    let kb = PrivateKey::generate();
    let pair = Pair {
        a: Router::new(&ka, &[peer(&kb, "0.0.0.0/0", Some(B_ADDR))]),
        b: Router::new(&kb, &[peer(&ka, "10.42.1.0/24", Some(A_ADDR))]),
    };
    pair.b
        .set_local_networks(&["10.42.2.0/24".parse().unwrap()]);
    handshake(&pair);
    // from A's own subnet, so the source check passes: to B's LAN, the internet, B's
    // underlay address, a broadcast, another member's subnet
    for dst in [
        "192.168.1.10",
        "8.8.8.8",
        "198.18.0.12",
        "255.255.255.255",
        "10.42.3.2",
    ] {
        let (_, to_b) = pump(&pair, send(&pair.a, A_ADDR, &ipv4("10.42.1.2", dst, b"x")));
        assert!(to_b.is_empty(), "a packet for {dst} reached B's TUN");
    }
    assert_eq!(
        pair.b.total_drops().get(&DropReason::DestinationNotAllowed),
        Some(&5)
    );
    // B's own subnet still gets through
    let (_, to_b) = pump(
        &pair,
        send(&pair.a, A_ADDR, &ipv4("10.42.1.2", "10.42.2.2", b"x")),
    );
    assert_eq!(to_b.len(), 1);
}

#[test]
fn nothing_is_delivered_before_the_local_networks_are_known() {
    let pair = pair();
    pair.b.set_local_networks(&[]);
    handshake(&pair);
    let (_, to_b) = pump(
        &pair,
        send(&pair.a, A_ADDR, &ipv4("10.42.1.2", "10.42.2.2", b"x")),
    );
    assert!(to_b.is_empty());
    pair.b
        .set_local_networks(&["10.42.2.1/32".parse().unwrap()]);
    let (_, to_b) = pump(
        &pair,
        send(&pair.a, A_ADDR, &ipv4("10.42.1.2", "10.42.2.1", b"x")),
    );
    assert_eq!(to_b.len(), 1, "the host's own address is local");
    let (_, to_b) = pump(
        &pair,
        send(&pair.a, A_ADDR, &ipv4("10.42.1.2", "10.42.2.2", b"x")),
    );
    assert!(to_b.is_empty(), "but not the rest of its subnet");
}
