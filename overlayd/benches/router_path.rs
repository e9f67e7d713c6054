//! The router's per-packet cost on one core, and what loading the peer table per packet
//! (`encapsulate`/`decapsulate`) costs over loading it once per batch and passing it in
//! (`encapsulate_with`/`decapsulate_with`, what the datapath threads do). Two routers
//! with 64 peers each, one session, 1,420-byte packets, batches of 64 as from the TUN;
//! the two ways alternate in rounds so the machine's noise hits both alike.
//!
//! Run: `cargo bench -p overlayd --bench router_path` (prints one JSON line last).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keys::PrivateKey;
use overlayd::config::PeerConfig;
use overlayd::router::{Inbound, Outbound, Router};

const PEERS: usize = 64;
const PACKET_LEN: usize = 1420;
const BATCH: usize = 64;
const BATCHES: usize = 300;
const ROUNDS: usize = 12; // after two warm-up rounds

fn peer(key: &PrivateKey, n: usize) -> PeerConfig {
    PeerConfig {
        public_key: key.public_key(),
        name: None,
        endpoint: Some(format!("198.18.1.{}:51820", n + 1).parse().unwrap()),
        subnets: vec![format!("10.42.{}.0/24", n + 1).parse().unwrap()],
        persistent_keepalive: None,
    }
}

fn ipv4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0u8; PACKET_LEN];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(PACKET_LEN as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

/// Routers A and B, each with B (A) as peer 0 among 63 others, after a handshake.
fn routers() -> (Router, Router) {
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let others: Vec<PrivateKey> = (1..PEERS).map(|_| PrivateKey::generate()).collect();
    let with = |first: PeerConfig| {
        let mut list = vec![first];
        list.extend(others.iter().enumerate().map(|(n, k)| peer(k, n + 1)));
        list
    };
    let a = Router::new(&ka, &with(peer(&kb, 0)));
    let mut b_peers = with(peer(&ka, 0));
    b_peers[0].endpoint = Some("198.18.1.100:51820".parse().unwrap());
    let b = Router::new(&kb, &b_peers);
    // the packets go to 10.42.1.2: each side's own address (the destination check runs)
    for r in [&a, &b] {
        r.set_local_networks(&["10.42.1.2/32".parse().unwrap()]);
    }
    let a_addr: SocketAddr = "198.18.1.100:51820".parse().unwrap();
    let b_addr: SocketAddr = "198.18.1.1:51820".parse().unwrap();
    let mut wire = Vec::new();
    let mut buf = vec![0u8; 2048];
    a.initiate_all(&mut buf, &mut |dst, m| {
        if dst == b_addr {
            wire.push((b_addr, m.to_vec()));
        }
    });
    let mut out = vec![0u8; 2048];
    while let Some((to, m)) = wire.pop() {
        let (router, from) = if to == b_addr {
            (&b, a_addr)
        } else {
            (&a, b_addr)
        };
        let mut replies = Vec::new();
        router.decapsulate(from, &m, &mut out, &mut |dst, r| {
            replies.push((dst, r.to_vec()))
        });
        wire.extend(replies);
    }
    (a, b)
}

fn main() {
    let (a, b) = routers();
    let packet = ipv4([10, 42, 1, 3], [10, 42, 1, 2]); // peer 0 has 10.42.1.0/24 on both
    let from: SocketAddr = "198.18.1.100:51820".parse().unwrap();
    let mut sealed = vec![vec![0u8; PACKET_LEN + 32]; BATCH * BATCHES];
    let mut lens = vec![0usize; BATCH * BATCHES];
    let mut out = vec![0u8; 2048];
    let (mut enc, mut dec) = ([Duration::ZERO; 2], [Duration::ZERO; 2]);
    for round in 0..ROUNDS + 2 {
        let counted = round >= 2;
        let per_batch = round % 2; // 0: a load per packet, 1: a load per batch
        let start = Instant::now();
        for batch in sealed.chunks_mut(BATCH).zip(lens.chunks_mut(BATCH)) {
            let table = a.table();
            for (buf, len) in batch.0.iter_mut().zip(batch.1.iter_mut()) {
                let r = if per_batch == 1 {
                    a.encapsulate_with(&table, &packet, buf)
                } else {
                    a.encapsulate(&packet, buf)
                };
                let Outbound::Send { len: n, .. } = r else {
                    panic!("not sealed: {r:?}")
                };
                *len = n;
            }
        }
        if counted {
            enc[per_batch] += start.elapsed();
        }
        let start = Instant::now();
        for batch in sealed.chunks(BATCH).zip(lens.chunks(BATCH)) {
            let table = b.table();
            for (buf, len) in batch.0.iter().zip(batch.1) {
                let r = if per_batch == 1 {
                    b.decapsulate_with(&table, from, &buf[..*len], &mut out, &mut |_, _| {})
                } else {
                    b.decapsulate(from, &buf[..*len], &mut out, &mut |_, _| {})
                };
                assert!(matches!(r, Inbound::ToTun { .. }), "not opened: {r:?}");
            }
        }
        if counted {
            dec[per_batch] += start.elapsed();
        }
    }
    let packets = (BATCH * BATCHES * ROUNDS / 2) as f64;
    let ns = |d: Duration| d.as_nanos() as f64 / packets;
    eprintln!(
        "ns per {PACKET_LEN}-byte packet, table loaded per packet / per batch of {BATCH}: \
         encapsulate {:.0} / {:.0}, decapsulate {:.0} / {:.0}",
        ns(enc[0]),
        ns(enc[1]),
        ns(dec[0]),
        ns(dec[1])
    );
    println!(
        "{{\"encapsulate_ns\":{{\"per_packet_load\":{:.0},\"per_batch_load\":{:.0}}},\
         \"decapsulate_ns\":{{\"per_packet_load\":{:.0},\"per_batch_load\":{:.0}}}}}",
        ns(enc[0]),
        ns(enc[1]),
        ns(dec[0]),
        ns(dec[1])
    );
}
