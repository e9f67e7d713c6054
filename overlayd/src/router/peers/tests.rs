//! Peers added, changed and removed at runtime, on two routers wired back to back in
//! memory (the helpers and picture of `router/tests.rs`), starting without static peers:
//!
//! ```text
//!   A (10.42.1.0/24) @198.18.0.11:51820  <== datagrams ==>  B (10.42.2.0/24) @198.18.0.12:51820
//! ```

use crate::router::tests::{A_ADDR, B_ADDR, Pair, Wire, ipv4, pump, send};
use crate::router::*;
use ipnet::IpNet;
use std::time::Duration;

struct Keys {
    a: PrivateKey,
    b: PrivateKey,
}

fn spec(key: &PrivateKey, name: &str, subnets: &[&str], endpoint: Option<&str>) -> PeerSpec {
    PeerSpec {
        public_key: key.public_key(),
        name: Some(name.to_owned()),
        endpoint: endpoint.map(|e| e.parse().unwrap()),
        groups: Vec::new(),
        subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
        persistent_keepalive: None,
        advertised: false,
    }
}

/// Two routers that learn each other at runtime, before any handshake.
fn empty_pair_then_added() -> (Pair, Keys) {
    let keys = Keys {
        a: PrivateKey::generate(),
        b: PrivateKey::generate(),
    };
    let pair = Pair {
        a: Router::new(&keys.a, &[]),
        b: Router::new(&keys.b, &[]),
    };
    assert!(pair.a.peers().is_empty());
    // A moves to other subnets in some tests: both take the whole range as their own
    for r in [&pair.a, &pair.b] {
        r.set_local_networks(&["10.42.0.0/16".parse().unwrap()]);
    }
    let added = pair
        .a
        .upsert_peer(spec(&keys.b, "b", &["10.42.2.0/24"], Some(B_ADDR)))
        .unwrap();
    assert_eq!(added, Upserted::Added { index: 0 });
    let added = pair
        .b
        .upsert_peer(spec(&keys.a, "a", &["10.42.1.0/24"], Some(A_ADDR)))
        .unwrap();
    assert_eq!(added, Upserted::Added { index: 0 });
    (pair, keys)
}

/// `from` starts a handshake with `key` through `initiate`, and the pair completes it.
fn initiate(pair: &Pair, from_a: bool, key: &PublicKey) {
    let (router, addr) = if from_a {
        (&pair.a, A_ADDR)
    } else {
        (&pair.b, B_ADDR)
    };
    let mut wire: Wire = Vec::new();
    let mut buf = vec![0u8; 2048];
    let sent = router.initiate(key, &mut buf, &mut |dst, b| {
        wire.push((addr.parse().unwrap(), dst, b.to_vec()))
    });
    assert!(sent);
    assert_eq!(wire.len(), 1);
    pump(pair, wire);
}

fn both_ways(pair: &Pair, a_src: &str, b_src: &str) {
    let p = ipv4(a_src, b_src, b"there");
    let (_, to_b) = pump(pair, send(&pair.a, A_ADDR, &p));
    assert_eq!(to_b, vec![p]);
    let q = ipv4(b_src, a_src, b"back");
    let (to_a, _) = pump(pair, send(&pair.b, B_ADDR, &q));
    assert_eq!(to_a, vec![q]);
}

/// A data packet from A to B sealed on A's current session, as it reaches B.
fn sealed_from_a(pair: &Pair, src: &str, dst: &str) -> Vec<u8> {
    let wire = send(&pair.a, A_ADDR, &ipv4(src, dst, b"sealed"));
    assert_eq!(wire.len(), 1);
    wire.into_iter().next().unwrap().2
}

fn decapsulate_at_b(pair: &Pair, datagram: &[u8]) -> Inbound {
    let mut out = vec![0u8; 2048];
    pair.b
        .decapsulate(A_ADDR.parse().unwrap(), datagram, &mut out, &mut |_, _| {})
}

#[test]
fn peer_added_at_runtime_passes_traffic_both_ways() {
    let (pair, keys) = empty_pair_then_added();
    initiate(&pair, true, &keys.b.public_key());
    both_ways(&pair, "10.42.1.2", "10.42.2.2");
    let a_at_b = pair.b.peer(&keys.a.public_key()).unwrap();
    assert_eq!(a_at_b.name().as_deref(), Some("a"));
    assert_eq!(
        a_at_b.subnets(),
        vec!["10.42.1.0/24".parse::<IpNet>().unwrap()]
    );
    assert_eq!(a_at_b.rx_bytes.load(Ordering::Relaxed), 25);
    assert!(pair.b.peer(&keys.b.public_key()).is_none());
}

#[test]
fn removed_peer_is_neither_routed_nor_accepted_even_on_an_open_session() {
    let (pair, keys) = empty_pair_then_added();
    initiate(&pair, true, &keys.b.public_key());
    both_ways(&pair, "10.42.1.2", "10.42.2.2");
    let in_flight = pair.b.table(); // a batch that loaded the table before the removal
    let sealed = sealed_from_a(&pair, "10.42.1.2", "10.42.2.2");

    assert!(pair.b.remove_peer(&keys.a.public_key()));
    assert!(!pair.b.remove_peer(&keys.a.public_key()));
    assert!(pair.b.peers().is_empty());
    assert!(pair.b.peer(&keys.a.public_key()).is_none());

    // To its subnet: no route, from the current table and from the one in flight.
    let mut out = vec![0u8; 2048];
    let to_a = ipv4("10.42.2.2", "10.42.1.2", b"x");
    assert_eq!(
        pair.b.encapsulate(&to_a, &mut out),
        Outbound::Dropped(DropReason::NoRoute)
    );
    assert_eq!(
        pair.b.encapsulate_with(&in_flight, &to_a, &mut out),
        Outbound::Dropped(DropReason::NoRoute)
    );
    assert_eq!(pair.b.drops.get(DropReason::NoRoute), 2);

    // From it, on the session it still has: unknown peer, both ways too.
    let mut replies = 0;
    let from = A_ADDR.parse().unwrap();
    let r = pair
        .b
        .decapsulate_with(&in_flight, from, &sealed, &mut out, &mut |_, _| {
            replies += 1
        });
    assert_eq!(r, Inbound::Dropped(DropReason::UnknownPeer));
    let again = sealed_from_a(&pair, "10.42.1.2", "10.42.2.2");
    assert_eq!(
        decapsulate_at_b(&pair, &again),
        Inbound::Dropped(DropReason::UnknownPeer)
    );
    // And it cannot handshake again.
    let mut wire: Wire = Vec::new();
    let mut buf = vec![0u8; 2048];
    {
        let b_at_a = pair.a.peers()[0].clone();
        let mut st = b_at_a.lock();
        if let TunnResult::WriteToNetwork(init) =
            st.tunn.format_handshake_initiation(&mut buf, true)
        {
            wire.push((from, B_ADDR.parse().unwrap(), init.to_vec()));
        }
    }
    assert_eq!(
        decapsulate_at_b(&pair, &wire[0].2),
        Inbound::Dropped(DropReason::UnknownPeer)
    );
    assert_eq!(replies, 0);
    assert_eq!(pair.b.drops.get(DropReason::UnknownPeer), 3);
    assert_eq!(pair.b.total_drops()[&DropReason::UnknownPeer], 3);
    // Its timers no longer run either.
    let mut sent = 0;
    pair.b.tick(&mut buf, &mut |_, _| sent += 1);
    pair.b.initiate_all(&mut buf, &mut |_, _| sent += 1);
    assert_eq!(sent, 0);
}

#[test]
fn changed_subnets_move_the_routes_and_the_accepted_sources() {
    let (pair, keys) = empty_pair_then_added();
    initiate(&pair, true, &keys.b.public_key());
    let changed = pair
        .b
        .upsert_peer(spec(&keys.a, "a", &["10.42.3.0/24"], Some(A_ADDR)))
        .unwrap();
    assert_eq!(
        changed,
        Upserted::Updated {
            endpoint_changed: false,
            subnets_changed: true,
            keepalive_changed: false,
        }
    );
    let a_at_b = pair.b.peer(&keys.a.public_key()).unwrap();
    assert_eq!(
        a_at_b.subnets(),
        vec!["10.42.3.0/24".parse::<IpNet>().unwrap()]
    );
    assert_eq!(a_at_b.index, 0, "the same peer, updated in place");
    let mut out = vec![0u8; 2048];
    assert_eq!(
        pair.b
            .encapsulate(&ipv4("10.42.2.2", "10.42.1.2", b"x"), &mut out),
        Outbound::Dropped(DropReason::NoRoute)
    );
    // The old source is refused, the new one accepted, on the session kept from before.
    let old = sealed_from_a(&pair, "10.42.1.2", "10.42.2.2");
    assert_eq!(
        decapsulate_at_b(&pair, &old),
        Inbound::Dropped(DropReason::SourceNotAllowed)
    );
    assert_eq!(a_at_b.drops.get(DropReason::SourceNotAllowed), 1);
    both_ways(&pair, "10.42.3.2", "10.42.2.2");
    // The same spec again changes nothing.
    let same = spec(&keys.a, "a", &["10.42.3.0/24"], Some(A_ADDR));
    assert_eq!(pair.b.upsert_peer(same).unwrap(), Upserted::Unchanged);
}

#[test]
fn readded_peer_gets_a_fresh_index_and_a_new_handshake() {
    let (pair, keys) = empty_pair_then_added();
    initiate(&pair, true, &keys.b.public_key());
    both_ways(&pair, "10.42.1.2", "10.42.2.2");
    let a_key = keys.a.public_key();
    assert!(pair.b.remove_peer(&a_key));
    let readded = pair
        .b
        .upsert_peer(spec(&keys.a, "a", &["10.42.1.0/24"], Some(A_ADDR)))
        .unwrap();
    assert_eq!(readded, Upserted::Added { index: 1 });
    let a_at_b = pair.b.peer(&a_key).unwrap();
    assert!(
        a_at_b.handshake_age_and_endpoint().0.is_none(),
        "a new tunnel"
    );
    // A still seals for B's old session (index 0): B no longer knows it.
    let old = sealed_from_a(&pair, "10.42.1.2", "10.42.2.2");
    assert_eq!(
        decapsulate_at_b(&pair, &old),
        Inbound::Dropped(DropReason::UnknownPeer)
    );
    // B handshakes at once, as the control plane does right after adding a peer.
    initiate(&pair, false, &a_key);
    assert!(a_at_b.handshake_age_and_endpoint().0.is_some());
    both_ways(&pair, "10.42.1.2", "10.42.2.2");
    assert_eq!(pair.b.peers().len(), 1);
    assert_eq!(pair.b.peers()[0].index, 1);
}

#[test]
fn overlapping_subnets_and_own_key_are_refused() {
    let (pair, keys) = empty_pair_then_added();
    let c = PrivateKey::generate();
    let err = pair
        .a
        .upsert_peer(spec(&c, "c", &["10.42.9.0/24", "10.42.2.128/25"], None))
        .unwrap_err();
    assert!(matches!(err, RouterError::SubnetOverlap { .. }));
    let message = err.to_string();
    for part in ["c (key", "10.42.2.128/25", "b (key", "10.42.2.0/24"] {
        assert!(message.contains(part), "{message}");
    }
    // Wider, and IPv6 against IPv6.
    assert!(
        pair.a
            .upsert_peer(spec(&c, "c", &["10.0.0.0/8"], None))
            .is_err()
    );
    pair.a
        .upsert_peer(spec(
            &keys.b,
            "b",
            &["10.42.2.0/24", "fd00:42:2::/64"],
            None,
        ))
        .unwrap();
    assert!(
        pair.a
            .upsert_peer(spec(&c, "c", &["fd00:42::/32"], None))
            .is_err()
    );
    // A peer's own subnets may change among themselves; another family never overlaps.
    pair.a
        .upsert_peer(spec(&keys.b, "b", &["10.42.2.0/23"], None))
        .unwrap();
    pair.a
        .upsert_peer(spec(&c, "c", &["fd00:42::/32"], None))
        .unwrap();
    let own = pair
        .a
        .upsert_peer(spec(&keys.a, "self", &["10.42.7.0/24"], None))
        .unwrap_err();
    assert!(matches!(own, RouterError::OwnKey { .. }));
    assert!(own.to_string().contains("own public key"), "{own}");
    assert_eq!(pair.a.peers().len(), 2, "nothing was added by the refusals");
}

#[test]
fn advertised_endpoint_applies_once_and_does_not_undo_roaming() {
    let (pair, keys) = empty_pair_then_added();
    initiate(&pair, true, &keys.b.public_key());
    let a_at_b = pair.b.peer(&keys.a.public_key()).unwrap();
    // A roams: its authenticated packet comes from a new address.
    let moved: SocketAddr = "198.18.1.11:51820".parse().unwrap();
    let sealed = sealed_from_a(&pair, "10.42.1.2", "10.42.2.2");
    let mut out = vec![0u8; 2048];
    let r = pair.b.decapsulate(moved, &sealed, &mut out, &mut |_, _| {});
    assert!(matches!(r, Inbound::ToTun { .. }));
    assert_eq!(a_at_b.handshake_age_and_endpoint().1, Some(moved));
    // The control plane repeats the stale endpoint: ignored, the learnt one stays.
    let stale = spec(&keys.a, "a", &["10.42.1.0/24"], Some(A_ADDR));
    assert_eq!(pair.b.upsert_peer(stale).unwrap(), Upserted::Unchanged);
    assert_eq!(a_at_b.handshake_age_and_endpoint().1, Some(moved));
    // A new advertised endpoint applies, keeping the tunnel.
    let newer = spec(&keys.a, "a", &["10.42.1.0/24"], Some("198.18.2.11:51820"));
    assert_eq!(
        pair.b.upsert_peer(newer).unwrap(),
        Upserted::Updated {
            endpoint_changed: true,
            subnets_changed: false,
            keepalive_changed: false,
        }
    );
    let (age, endpoint) = a_at_b.handshake_age_and_endpoint();
    assert_eq!(endpoint, Some("198.18.2.11:51820".parse().unwrap()));
    assert!(age.is_some(), "the session was kept");
    // A new name only.
    let renamed = spec(&keys.a, "a2", &["10.42.1.0/24"], Some("198.18.2.11:51820"));
    assert_eq!(
        pair.b.upsert_peer(renamed).unwrap(),
        Upserted::Updated {
            endpoint_changed: false,
            subnets_changed: false,
            keepalive_changed: false,
        }
    );
    assert_eq!(a_at_b.name().as_deref(), Some("a2"));
}

#[test]
fn static_peers_are_table_entries() {
    let pair = crate::router::tests::pair();
    let peers = pair.a.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].index, 0);
    assert_eq!(peers[0].name(), None);
    assert_eq!(
        peers[0].subnets(),
        vec!["10.42.2.0/24".parse::<IpNet>().unwrap()]
    );
}

/// One thread adds, updates and removes peers in a loop while another moves packets
/// between A and B: no panic, no deadlock, and the traffic between A and B (whose entries
/// are never touched) keeps flowing.
#[test]
fn peer_changes_race_the_data_path() {
    const CHANGES: usize = 2_000;
    let (pair, keys) = empty_pair_then_added();
    initiate(&pair, true, &keys.b.public_key());
    let done = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            let others: Vec<PrivateKey> = (0..8).map(|_| PrivateKey::generate()).collect();
            for n in 0..CHANGES {
                let key = &others[n % others.len()];
                let subnet = format!("10.43.{}.0/24", n % 200);
                let endpoint = format!("198.18.3.{}:51820", n % 250 + 1);
                let _ = pair
                    .b
                    .upsert_peer(spec(key, "x", &[&subnet], Some(&endpoint)));
                if n % 3 == 0 {
                    pair.b
                        .remove_peer(&others[(n / 3) % others.len()].public_key());
                }
                if n % 7 == 0 {
                    // A's entry, unchanged: must not disturb its tunnel.
                    let same = spec(&keys.a, "a", &["10.42.1.0/24"], Some(A_ADDR));
                    assert_eq!(pair.b.upsert_peer(same).unwrap(), Upserted::Unchanged);
                }
            }
            done.store(true, Ordering::Relaxed);
        });
        s.spawn(|| {
            let mut delivered = 0;
            let mut rounds = 0;
            let mut out = vec![0u8; 2048];
            while !done.load(Ordering::Relaxed) || rounds < 50 {
                rounds += 1;
                let (_, to_b) = pump(
                    &pair,
                    send(&pair.a, A_ADDR, &ipv4("10.42.1.2", "10.42.2.2", b"r")),
                );
                delivered += to_b.len();
                // Towards the churned subnets: routed or not, never a panic.
                let _ = pair
                    .b
                    .encapsulate(&ipv4("10.42.2.2", "10.43.5.9", b"c"), &mut out);
                let (to_a, _) = pump(
                    &pair,
                    send(&pair.b, B_ADDR, &ipv4("10.42.2.2", "10.42.1.2", b"r")),
                );
                delivered += to_a.len();
            }
            assert_eq!(delivered, 2 * rounds, "A and B kept talking");
        });
    });
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(pair.b.peers().len() <= 9);
}

/// Datagrams `router` sends on one tick.
fn tick(router: &Router) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    router.tick(&mut buf, &mut |_, b| out.push(b.to_vec()));
    out
}

#[test]
fn a_keepalive_changes_on_the_open_tunnel() {
    let (pair, keys) = empty_pair_then_added();
    initiate(&pair, true, &keys.b.public_key());
    both_ways(&pair, "10.42.1.2", "10.42.2.2");
    let b_at_a = pair.a.peer(&keys.b.public_key()).unwrap();
    assert_eq!(b_at_a.persistent_keepalive(), None);
    let initiated = b_at_a.handshakes.initiated();
    assert!(tick(&pair.a).is_empty(), "no keepalive before one is set");
    // Turned on: one keepalive at the next tick (as `wg set` sends one at once), a data
    // message of the session that is open, then none until the interval has passed.
    let mut with = spec(&keys.b, "b", &["10.42.2.0/24"], Some(B_ADDR));
    with.persistent_keepalive = Some(25);
    assert_eq!(
        pair.a.upsert_peer(with.clone()).unwrap(),
        Upserted::Updated {
            endpoint_changed: false,
            subnets_changed: false,
            keepalive_changed: true,
        }
    );
    assert_eq!(b_at_a.persistent_keepalive(), Some(25));
    let sent = tick(&pair.a);
    assert_eq!(sent.len(), 1, "one keepalive");
    assert_eq!(sent[0][0], 4, "a data message (type 4), not a handshake");
    assert_eq!(sent[0].len(), 32, "an empty one: a keepalive");
    assert!(tick(&pair.a).is_empty(), "the next is 25 s away");
    assert_eq!(pair.a.upsert_peer(with).unwrap(), Upserted::Unchanged);
    // B takes it on the same session.
    let mut out = vec![0u8; 2048];
    assert_eq!(
        pair.b
            .decapsulate(A_ADDR.parse().unwrap(), &sent[0], &mut out, &mut |_, _| {}),
        Inbound::Consumed
    );
    assert_eq!(b_at_a.handshakes.initiated(), initiated, "no new handshake");
    // Off again: nothing more.
    let off = spec(&keys.b, "b", &["10.42.2.0/24"], Some(B_ADDR));
    assert!(matches!(
        pair.a.upsert_peer(off).unwrap(),
        Upserted::Updated {
            keepalive_changed: true,
            ..
        }
    ));
    assert!(tick(&pair.a).is_empty());
    both_ways(&pair, "10.42.1.2", "10.42.2.2");
}

#[test]
fn changes_are_checked_whole_and_made_as_one() {
    let (pair, keys) = empty_pair_then_added();
    initiate(&pair, true, &keys.b.public_key());
    let c = PrivateKey::generate();
    let d = PrivateKey::generate();
    let c_spec = |subnet: &str| spec(&c, "c", &[subnet], None);
    pair.a.upsert_peer(c_spec("10.42.3.0/24")).unwrap();
    // C and a new D swap nothing yet: D asks for C's subnet while C keeps it: refused,
    // nothing changed.
    let e = pair
        .a
        .change_peers(&[], vec![spec(&d, "d", &["10.42.3.0/25"], None)])
        .unwrap_err();
    assert!(matches!(e, RouterError::SubnetOverlap { .. }), "{e}");
    assert!(pair.a.peer(&d.public_key()).is_none());
    assert_eq!(
        pair.a
            .check_changes(&[], &[spec(&d, "d", &["10.42.3.0/25"], None)]),
        Err(e)
    );
    // C's subnet moves to D while C moves on, in one change; B's tunnel is untouched.
    let before = pair.a.table();
    let done = pair
        .a
        .change_peers(
            &[],
            vec![
                spec(&d, "d", &["10.42.3.0/24"], None),
                c_spec("10.42.4.0/24"),
            ],
        )
        .unwrap();
    assert!(matches!(done[0], Upserted::Added { .. }));
    assert!(matches!(
        done[1],
        Upserted::Updated {
            subnets_changed: true,
            ..
        }
    ));
    assert!(!std::sync::Arc::ptr_eq(&before, &pair.a.table()));
    // Removing C and giving its subnet to D, too.
    pair.a
        .change_peers(
            &[c.public_key()],
            vec![spec(&d, "d", &["10.42.4.0/24"], None)],
        )
        .unwrap();
    assert!(pair.a.peer(&c.public_key()).is_none());
    assert_eq!(
        pair.a.peer(&d.public_key()).unwrap().subnets(),
        vec!["10.42.4.0/24".parse::<IpNet>().unwrap()]
    );
    // This host's own key, among others: refused whole.
    let own = spec(&keys.a, "me", &["10.42.8.0/24"], None);
    let e = pair
        .a
        .change_peers(&[d.public_key()], vec![own])
        .unwrap_err();
    assert!(matches!(e, RouterError::OwnKey { .. }));
    assert!(
        pair.a.peer(&d.public_key()).is_some(),
        "the removal was not made"
    );
    both_ways(&pair, "10.42.1.2", "10.42.2.2");
}

/// A member list synced again with nothing new (every directory change does it, for every
/// member): no table is built or published, and each spec is `Unchanged`; a spec that
/// differs in anything still goes through the full path.
#[test]
fn an_unchanged_upsert_publishes_no_new_table() {
    let (pair, keys) = empty_pair_then_added();
    let before = pair.a.table.load_full();
    let same = spec(&keys.b, "b", &["10.42.2.0/24"], Some(B_ADDR));
    let done = pair.a.change_peers(&[], vec![same.clone(), same]).unwrap();
    assert_eq!(done, vec![Upserted::Unchanged; 2]);
    assert!(Arc::ptr_eq(&before, &pair.a.table.load_full()));
    let moved = spec(&keys.b, "b", &["10.42.3.0/24"], Some(B_ADDR));
    assert!(matches!(
        pair.a.upsert_peer(moved).unwrap(),
        Upserted::Updated {
            subnets_changed: true,
            ..
        }
    ));
    assert!(!Arc::ptr_eq(&before, &pair.a.table.load_full()));
    let keepalive = PeerSpec {
        persistent_keepalive: Some(25),
        ..spec(&keys.b, "b", &["10.42.3.0/24"], Some(B_ADDR))
    };
    assert!(matches!(
        pair.a.upsert_peer(keepalive).unwrap(),
        Upserted::Updated {
            keepalive_changed: true,
            ..
        }
    ));
}
