//! Members behind NATs: h1 public (the admin), h2 and h3 each behind a cone NAT of its own,
//! one UDP port. Each learns the address the others see it at (its NAT's) from h1 and
//! publishes it; h2 and h3 then reach each other directly, through both NATs, with no
//! relay: the capture on the underlay switch shows datagrams between the two NATs' public
//! addresses. A flush of h2's NAT (every mapping gone at once) costs at most a few seconds.
//!
//! ```text
//!                                  P-ul: br0 (tcpdump)
//!        +-------h1-------------------n2---------------------n3---------+
//!       P-h1 198.18.0.11      P-n2 198.18.0.12 cone   P-n3 198.18.0.13 cone
//!       h1-c1 10.42.1.2            |                       |
//!                            P-h2 198.19.2.2          P-h3 198.19.3.2
//!                            h2-c1 10.42.2.2          h3-c1 10.42.3.2
//! ```

mod common;

use std::time::{Duration, Instant};

use common::{Capture, Pinger, now_s, root};
use testnet::{NatKind, NatSpec, Options, Testnet};

fn cone(host: usize) -> NatSpec {
    NatSpec {
        host,
        kind: NatKind::Cone,
    }
}

/// Waits until `observer` lists `member` with `endpoint`; how long it took.
fn wait_endpoint(net: &Testnet, observer: usize, member: &str, endpoint: &str) -> Duration {
    let start = Instant::now();
    loop {
        let peers = net.peers_json(observer).expect("peers");
        let seen = peers
            .iter()
            .find(|p| p.name.as_deref() == Some(member))
            .and_then(|p| p.endpoint);
        if seen.map(|e| e.to_string()).as_deref() == Some(endpoint) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "h{observer} still sees {member} at {seen:?}, not {endpoint}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_members_behind_cone_nats_talk_directly() {
    if !root() {
        return;
    }
    let mut opts = Options::new(3, 1);
    opts.one_port = true;
    opts.nat = vec![cone(2), cone(3)];
    opts.members = Some(1);
    let net = Testnet::up(opts).expect("up");
    let mut capture = Capture::start(&net, "ul", "any");

    net.join_host(2).expect("h2 joins");
    net.join_host(3).expect("h3 joins");
    let both = now_s();
    let mut there = Pinger::start(&net, "h2-c1", "10.42.3.2");
    let mut back = Pinger::start(&net, "h3-c1", "10.42.2.2");
    let deadline = Instant::now() + Duration::from_secs(10);
    let first_there = there.first_reply_after(both, deadline);
    let first_back = back.first_reply_after(both, deadline);
    let since =
        |t: Option<f64>, from: f64| t.map_or("never".to_owned(), |t| format!("{:.2} s", t - from));
    let took = |t: Option<f64>| since(t, both);
    eprintln!(
        "after both joined: h2-c1 -> h3-c1 {}, h3-c1 -> h2-c1 {}",
        took(first_there),
        took(first_back)
    );
    // Discovery: each NATed member is published at its NAT's address, seen by the others.
    let published = wait_endpoint(&net, 1, "h2", "198.18.0.12:51820");
    wait_endpoint(&net, 1, "h3", "198.18.0.13:51820");
    wait_endpoint(&net, 2, "h3", "198.18.0.13:51820");
    wait_endpoint(&net, 3, "h2", "198.18.0.12:51820");
    eprintln!(
        "h1 lists h2 at its NAT's address (checked after the pings, waited {:.2} s)",
        published.as_secs_f64()
    );
    assert!(
        first_there.is_some_and(|t| t - both <= 5.0) && first_back.is_some_and(|t| t - both <= 5.0),
        "h2 and h3 did not reach each other within 5 s of both joining"
    );

    // A mapping expiry: every mapping of h2's NAT dropped at once.
    let flushed = now_s();
    net.flush_nat(2).expect("flush h2's NAT");
    let deadline = Instant::now() + Duration::from_secs(10);
    let resumed = [
        there.first_reply_after(flushed + 0.2, deadline),
        back.first_reply_after(flushed + 0.2, deadline),
    ];
    eprintln!(
        "after the flush: h2-c1 -> h3-c1 {}, h3-c1 -> h2-c1 {}",
        since(resumed[0], flushed),
        since(resumed[1], flushed)
    );
    assert!(
        resumed
            .iter()
            .all(|t| t.is_some_and(|t| t - flushed <= 5.0)),
        "traffic did not resume within 5 s of the flush"
    );
    drop((there, back));
    capture.stop();

    // Direct: datagrams between the two NATs' public addresses, both ways, on the shared
    // port; none between the hosts' own addresses.
    let direct = |src: &str, dst: &str| {
        capture.count(&format!(
            "udp and src host {src} and dst host {dst} and src port 51820 and dst port 51820"
        ))
    };
    let (to3, to2) = (
        direct("198.18.0.12", "198.18.0.13"),
        direct("198.18.0.13", "198.18.0.12"),
    );
    eprintln!("captured between the NATs: {to3} datagrams n2 -> n3, {to2} n3 -> n2");
    assert!(to3 > 10 && to2 > 10, "{to3} n2 -> n3, {to2} n3 -> n2");
    // (ARP asks for them: h1 tries their own addresses too, which no one on the switch has.)
    let private = capture.lines("ip and net 198.19.0.0/16");
    assert!(
        private.is_empty(),
        "behind a NAT, yet on the switch: {private:?}"
    );
    net.down().expect("down");
}
