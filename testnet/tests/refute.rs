//! Forged failure reports about third parties (issue 14, item 5). A member may speak in
//! SWIM only for itself (its connection's certificate binds the sender), but its messages
//! carry updates about others: h3, turned attacker, tells h1 that h2 is `Down`.
//!
//! - With a generation h2 never signed (h2's own + 1000): h1 ignores the update (and logs
//!   it, rate-limited); h2's routes stay everywhere.
//! - With h2's current generation (what h2's signed record allows): h2 hears it is down,
//!   takes a new generation, signs a record that allows it and comes back; no host goes
//!   without h2's route for longer than one suspicion timeout.
//!
//! ```text
//!                    P-ul: br0 (underlay switch)
//!          +-----------------+-----------------+
//!          |                 |                 |
//!      P-h1 .11          P-h2 .12          P-h3 .13          198.18.0.x/15
//!      admin (CA)        member, victim    member, turned attacker: the test
//!      UDP 51821 QUIC    UDP 51821         reads its state dir (control.key,
//!      control plane     control plane     network.json) and sends h1 SWIM
//!      ovl0              ovl0              datagrams in its name
//! ```

mod common;
#[path = "common/hostile.rs"]
mod hostile;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::root;
use hostile::{Credentials, member_config, run_in_netns, send_gossip};
use protocol::membership::NodeId;
use testnet::{MemberState, Options, Testnet};

/// The daemons' default `suspect_timeout_ms`: the longest a false `Down` may cost a route.
const SUSPICION: Duration = Duration::from_secs(4);
/// How long routes are watched after an attack.
const WATCH: Duration = Duration::from_secs(8);

fn control_addr(net: &Testnet, i: usize) -> SocketAddr {
    SocketAddr::new(
        net.addr(&format!("h{i}")).expect("host addr"),
        net.control_port(),
    )
}

fn credentials(net: &Testnet, i: usize) -> Credentials {
    Credentials::read(&net.state_dir(i)).unwrap_or_else(|e| panic!("h{i}'s credentials: {e:#}"))
}

/// A SWIM `Gossip` message from `src` to `dst` in foca's encoding carrying one update:
/// `victim` is `Down`.
fn down_datagram(src: NodeId, dst: NodeId, victim: NodeId) -> Vec<u8> {
    use foca::Codec as _;
    let header = foca::Header {
        src,
        src_incarnation: 0,
        dst,
        message: foca::Message::Gossip,
    };
    let mut out = Vec::new();
    foca::PostcardCodec
        .encode_header(&header, &mut out)
        .expect("encode a foca header");
    out.extend_from_slice(&1u16.to_be_bytes());
    foca::PostcardCodec
        .encode_member(&foca::Member::new(victim, 0, foca::State::Down), &mut out)
        .expect("encode a foca member");
    out
}

/// Sends, as h3 over its own member connection, `datagram` to h1.
fn attack(net: &Testnet, attacker: &Credentials, datagram: &[u8]) {
    let (config, to, datagram) = (
        member_config(&attacker.identity()),
        control_addr(net, 1),
        datagram.to_vec(),
    );
    run_in_netns(&net.host_ns(3), move || send_gossip(config, to, datagram))
        .expect("send the gossip datagram");
}

/// Watches, for [`WATCH`], whether `observers` have a route to h2; returns, per observer,
/// the longest time it went without one and whether it has one at the end.
fn watch_routes(net: &Testnet, observers: &[usize]) -> Vec<(usize, Duration, bool)> {
    let start = Instant::now();
    let mut lost_since: Vec<Option<Instant>> = vec![None; observers.len()];
    let mut longest = vec![Duration::ZERO; observers.len()];
    let mut present = vec![true; observers.len()];
    while start.elapsed() < WATCH {
        for (k, &i) in observers.iter().enumerate() {
            let now = Instant::now();
            present[k] = net.has_route_to(i, 2).expect("ip -4 route");
            match (present[k], lost_since[k]) {
                (false, None) => {
                    eprintln!(
                        "h{i} withdrew h2's route {:.2} s after the attack",
                        start.elapsed().as_secs_f64()
                    );
                    lost_since[k] = Some(now);
                }
                (true, Some(since)) => {
                    eprintln!(
                        "h{i} routes h2 again {:.2} s after the attack",
                        start.elapsed().as_secs_f64()
                    );
                    longest[k] = longest[k].max(now - since);
                    lost_since[k] = None;
                }
                _ => {}
            }
            if let Some(since) = lost_since[k] {
                longest[k] = longest[k].max(now - since);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    observers
        .iter()
        .enumerate()
        .map(|(k, &i)| (i, longest[k], present[k]))
        .collect()
}

/// Host `i`'s log from byte `from` on.
fn log_since(net: &Testnet, i: usize, from: usize) -> String {
    let bytes = std::fs::read(net.log_path(i)).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(from..).unwrap_or_default()).into_owned()
}

fn log_len(net: &Testnet, i: usize) -> usize {
    std::fs::metadata(net.log_path(i)).map_or(0, |m| m.len() as usize)
}

/// Watches h1's and h3's routes to h2 and fails if either went without one for longer
/// than `allowed`, or has none at the end; h2 must be alive to both.
fn assert_routes_kept(net: &Testnet, what: &str, allowed: Duration) {
    for (i, longest, present) in watch_routes(net, &[1, 3]) {
        eprintln!(
            "{what}: h{i} went without h2's route for at most {:.2} s",
            longest.as_secs_f64()
        );
        assert!(
            present,
            "{what}: h{i} has no route to h2 {} s after the attack",
            WATCH.as_secs()
        );
        assert!(
            longest <= allowed,
            "{what}: h{i} went without h2's route for {:.2} s (allowed: {:.1} s)",
            longest.as_secs_f64(),
            allowed.as_secs_f64()
        );
    }
    for i in [1, 3] {
        net.wait_member_state(i, 2, MemberState::Alive, SUSPICION)
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    }
}

#[test]
fn forged_down_of_a_third_party_costs_no_route() {
    if !root() {
        return;
    }
    let net = Testnet::up(Options::new(3, 0)).expect("testnet up (gossip mode, 3 members)");
    let took = net
        .wait_converged(&[1, 2, 3], Duration::from_secs(30))
        .expect("converged");
    eprintln!("converged in {:.2} s", took.as_secs_f64());
    let attacker = credentials(&net, 3);

    // 1. `Down` for generations h2 never signed: ignored by h1 (logged), so no host loses
    //    h2's route even for a moment and h2 need not take a new generation. (Before the
    //    fix, h1 took it; h2 renewed its identity once per round trip until it passed the
    //    forged one, 1,000 rejoins for + 1000, and about 32,000 for + 32,000.)
    for ahead in [1000, 32_000] {
        let what = format!("Down for h2's generation + {ahead}");
        let mut forged = credentials(&net, 2).node_id();
        forged.generation += ahead;
        let datagram = down_datagram(attacker.node_id(), credentials(&net, 1).node_id(), forged);
        let (h1_mark, h2_mark) = (log_len(&net, 1), log_len(&net, 2));
        attack(&net, &attacker, &datagram);
        eprintln!("{what}: sent to h1");
        assert_routes_kept(&net, &what, Duration::ZERO);
        let logged = log_since(&net, 1, h1_mark);
        assert!(
            logged.contains("ignored a SWIM update"),
            "{what}: h1 logged no refusal; it logged:\n{logged}"
        );
        let victim = log_since(&net, 2, h2_mark);
        assert!(
            !victim.contains("rejoined"),
            "{what}: h2 had to rejoin; it logged:\n{victim}"
        );
    }

    // 2. `Down` for h2's current generation (one its record allows): h2 hears of it,
    //    takes a new generation, signs a record that allows it, and is routed again
    //    within one suspicion timeout.
    let victim = credentials(&net, 2).node_id();
    let datagram = down_datagram(attacker.node_id(), credentials(&net, 1).node_id(), victim);
    let (h1_mark, h2_mark) = (log_len(&net, 1), log_len(&net, 2));
    attack(&net, &attacker, &datagram);
    eprintln!(
        "Down for h2's current generation {}: sent to h1",
        victim.generation
    );
    assert_routes_kept(&net, "Down for h2's current generation", SUSPICION);
    // The `Down` was taken (this is the refutation path, not a filter) and refuted.
    let taken = log_since(&net, 1, h1_mark);
    assert!(
        taken.contains("member declared down"),
        "h1 did not take the Down for h2's current generation; it logged:\n{taken}"
    );
    let refuted = log_since(&net, 2, h2_mark);
    assert!(
        refuted.contains("rejoined"),
        "h2 did not take a new generation; it logged:\n{refuted}"
    );
    let renewed = credentials(&net, 2).node_id();
    eprintln!(
        "h2 came back as generation {} (its record allows it)",
        renewed.generation
    );
    assert!(renewed.is_newer_than(&victim));

    net.down().expect("testnet down");
}
