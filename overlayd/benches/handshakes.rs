//! Handshakes per second on one core: a responder `Router` answers pre-made handshake
//! initiations from 64 peers (mac1 check, peer lookup by static key, Noise IK with its
//! two Diffie-Hellman operations, the response). The rate limiter is set out of the way,
//! so this measures the work a flood below the cookie threshold costs.
//!
//! Run: `cargo bench -p overlayd --bench handshakes` (prints one JSON line last).

use std::net::SocketAddr;
use std::time::Instant;

use boringtun::noise::TunnResult;
use keys::PrivateKey;
use overlayd::config::PeerConfig;
use overlayd::router::{Inbound, Router};

const PEERS: usize = 64;
const ROUNDS: usize = 60;

fn peer(key: &PrivateKey, n: usize) -> PeerConfig {
    PeerConfig {
        public_key: key.public_key(),
        name: None,
        endpoint: Some(format!("198.18.1.{}:51820", n + 1).parse().unwrap()),
        subnets: vec![format!("10.42.{}.0/24", n + 1).parse().unwrap()],
        persistent_keepalive: None,
    }
}

fn main() {
    let responder_key = PrivateKey::generate();
    let initiator_keys: Vec<PrivateKey> = (0..PEERS).map(|_| PrivateKey::generate()).collect();
    let responder = Router::with_handshake_limit(
        &responder_key,
        &initiator_keys
            .iter()
            .enumerate()
            .map(|(n, k)| peer(k, n))
            .collect::<Vec<_>>(),
        u64::MAX,
    );
    let initiators: Vec<Router> = initiator_keys
        .iter()
        .map(|k| Router::new(k, &[peer(&responder_key, 200)]))
        .collect();
    // Pre-make the initiations: ROUNDS per initiator, each newer than the last.
    let mut buf = vec![0u8; 2048];
    let mut messages: Vec<(SocketAddr, Vec<u8>)> = Vec::with_capacity(PEERS * ROUNDS);
    for _ in 0..ROUNDS {
        for (n, r) in initiators.iter().enumerate() {
            let peer = r.peers()[0].clone();
            let mut st = peer.lock();
            if let TunnResult::WriteToNetwork(b) =
                st.tunn.format_handshake_initiation(&mut buf, true)
            {
                messages.push((
                    format!("198.18.1.{}:51820", n + 1).parse().unwrap(),
                    b.to_vec(),
                ));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(2)); // strictly newer timestamps
    }
    let mut out = vec![0u8; 2048];
    let mut answered = 0usize;
    let start = Instant::now();
    for (src, msg) in &messages {
        let mut replied = false;
        let r = responder.decapsulate(*src, msg, &mut out, &mut |_, b| replied = b.len() == 92);
        if r == Inbound::Consumed && replied {
            answered += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = answered as f64 / secs;
    eprintln!(
        "{answered} of {} handshake initiations answered in {secs:.3} s on one core",
        messages.len()
    );
    assert!(
        answered * 10 >= messages.len() * 9,
        "too few handshakes answered: {answered}"
    );
    println!("{{\"handshakes_per_s\":{rate:.0},\"answered\":{answered}}}");
}
