//! Two routers back to back (as `router::tests`), B rotating its key while packets are in
//! flight both ways: nothing is lost, and after the hand-over B refuses its old key.

use super::super::tests::{A_ADDR, B_ADDR, Pair, ipv4, peer, pump, send};
use super::*;
use crate::router::{Inbound, Outbound};
use boringtun::noise::{Tunn, TunnResult};
use std::net::SocketAddr;

fn pair_with(ka: &PrivateKey, kb: &PrivateKey) -> Pair {
    let pair = Pair {
        a: Router::new(ka, &[peer(kb, "10.42.2.0/24", Some(B_ADDR))]),
        b: Router::new(kb, &[peer(ka, "10.42.1.0/24", Some(A_ADDR))]),
    };
    pair.a
        .set_local_networks(&["10.42.1.0/24".parse().unwrap()]);
    pair.b
        .set_local_networks(&["10.42.2.0/24".parse().unwrap()]);
    pair
}

/// An initiation from `from` to the key `to`, as a stale peer would send it.
fn initiation(from: &PrivateKey, to: &PublicKey) -> Vec<u8> {
    let mut tunn = Tunn::new(from.to_static_secret(), to.to_dalek(), None, None, 77, None);
    let mut buf = vec![0u8; 256];
    match tunn.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(b) => b.to_vec(),
        _ => panic!("no initiation"),
    }
}

#[test]
fn a_rotation_loses_no_packet_either_way_and_retires_the_old_key() {
    let (ka, kb, kb2) = (
        PrivateKey::generate(),
        PrivateKey::generate(),
        PrivateKey::generate(),
    );
    let pair = pair_with(&ka, &kb);
    super::super::tests::handshake(&pair);
    // Encrypted on the old sessions before the rotation, delivered after it.
    let early_ab = send(
        &pair.a,
        A_ADDR,
        &ipv4("10.42.1.2", "10.42.2.2", b"ab-early"),
    );
    let early_ba = send(
        &pair.b,
        B_ADDR,
        &ipv4("10.42.2.2", "10.42.1.2", b"ba-early"),
    );
    assert_eq!((early_ab.len(), early_ba.len()), (1, 1));

    pair.b.rotate_own_key(&kb2, Duration::from_secs(60));
    assert_eq!(pair.b.own_key(), kb2.public_key());
    assert_eq!(pair.b.old_own_key(), Some(kb.public_key()));
    // A learns B's new key (its record): a new peer takes the routes, the old one stays.
    let spec = PeerSpec {
        public_key: kb2.public_key(),
        name: None,
        endpoint: Some(B_ADDR.parse().unwrap()),
        subnets: vec!["10.42.2.0/24".parse().unwrap()],
        groups: Vec::new(),
        persistent_keepalive: None,
        advertised: true,
    };
    assert!(matches!(
        pair.a
            .rotate_peer(&kb.public_key(), spec, Duration::from_secs(60)),
        Ok(Upserted::Added { .. })
    ));
    let old_peer = pair.a.peer(&kb.public_key()).expect("kept");
    assert!(old_peer.is_predecessor() && old_peer.subnets().is_empty());

    // What was in flight arrives: B decrypts on its old tunnel, A on its predecessor.
    let (_, to_b) = pump(&pair, early_ab);
    assert_eq!(to_b.len(), 1, "A's early packet lost");
    let (to_a, _) = pump(&pair, early_ba);
    assert_eq!(to_a.len(), 1, "B's early packet lost");
    // B still sends on its old session until A greets the new key; A takes it.
    let (to_a, _) = pump(
        &pair,
        send(&pair.b, B_ADDR, &ipv4("10.42.2.2", "10.42.1.2", b"ba-old")),
    );
    assert_eq!(to_a.len(), 1, "B's packet on the old session lost");
    // A's next packet goes to the new key: it waits in the tunnel for the handshake, then
    // arrives.
    let p = ipv4("10.42.1.2", "10.42.2.2", b"ab-new");
    let (_, to_b) = pump(&pair, send(&pair.a, A_ADDR, &p));
    assert_eq!(to_b, vec![p]);
    let q = ipv4("10.42.2.2", "10.42.1.2", b"ba-new");
    let (to_a, _) = pump(&pair, send(&pair.b, B_ADDR, &q));
    assert_eq!(to_a, vec![q]);
    assert!(
        pair.a
            .peer(&kb2.public_key())
            .unwrap()
            .handshakes
            .completed()
            > 0
    );

    // Every peer of B is on the new key: its next tick forgets the old one.
    let mut buf = vec![0u8; 2048];
    pair.b.tick_at(250, &mut buf, &mut |_, _| {});
    assert_eq!(pair.b.old_own_key(), None);
    // A handshake to the old key is refused and counted, a security event.
    let mut out = vec![0u8; 2048];
    let from: SocketAddr = A_ADDR.parse().unwrap();
    let r = pair.b.decapsulate(
        from,
        &initiation(&ka, &kb.public_key()),
        &mut out,
        &mut |_, _| panic!("answered a handshake to a retired key"),
    );
    assert_eq!(r, Inbound::Dropped(DropReason::RetiredKey));
    assert_eq!(pair.b.total_drops().get(&DropReason::RetiredKey), Some(&1));
    assert!(
        pair.b
            .events
            .after(0)
            .iter()
            .any(|e| e.kind == EventKind::RetiredKeyKnocking)
    );
    // A drops its old tunnel once the new one has a session and the old one fell silent.
    pair.a.tick_at(250, &mut buf, &mut |_, _| {});
    assert!(pair.a.peer(&kb.public_key()).is_some(), "not silent yet");
    pair.a
        .tick_at(250 + SILENT_MS + 1, &mut buf, &mut |_, _| {});
    assert!(pair.a.peer(&kb.public_key()).is_none());
    assert_eq!(pair.a.peers().len(), 1);
    // And traffic goes on.
    let p = ipv4("10.42.1.2", "10.42.2.2", b"after");
    let (_, to_b) = pump(&pair, send(&pair.a, A_ADDR, &p));
    assert_eq!(to_b, vec![p]);
}

#[test]
fn the_old_key_is_answered_during_the_grace_and_refused_after_it() {
    let (ka, kb, kb2) = (
        PrivateKey::generate(),
        PrivateKey::generate(),
        PrivateKey::generate(),
    );
    let pair = pair_with(&ka, &kb);
    pair.b.rotate_own_key(&kb2, Duration::from_millis(200));
    // A has not heard of the new key: its handshake to the old one is answered.
    let p = ipv4("10.42.1.2", "10.42.2.2", b"stale");
    let wire = send(&pair.a, A_ADDR, &p);
    let (_, to_b) = pump(&pair, wire);
    assert_eq!(to_b, vec![p], "a handshake to the old key during the grace");
    // The grace ends with A still on the old key: B's tunnel to A starts over on the new
    // key and the old key is forgotten.
    std::thread::sleep(Duration::from_millis(250));
    let mut buf = vec![0u8; 2048];
    pair.b.tick_at(250, &mut buf, &mut |_, _| {});
    assert_eq!(pair.b.old_own_key(), None);
    let mut out = vec![0u8; 2048];
    let r = pair.b.decapsulate(
        A_ADDR.parse().unwrap(),
        &initiation(&ka, &kb.public_key()),
        &mut out,
        &mut |_, _| panic!("answered"),
    );
    assert_eq!(r, Inbound::Dropped(DropReason::RetiredKey));
    // Not routed anywhere by mistake: B's packets to A now need a new handshake.
    let mut out = vec![0u8; 2048];
    assert!(matches!(
        pair.b
            .encapsulate(&ipv4("10.42.2.2", "10.42.1.2", b"x"), &mut out),
        Outbound::Send { .. } | Outbound::Queued
    ));
}
