//! Relays: h2 and h3 each behind a symmetric NAT (a new port per destination) cannot punch
//! through to each other; their tunnel goes through h4 (`[control] relay = true`), which
//! forwards their WireGuard datagrams and cannot read them. When h4 dies the pair moves to
//! h1 (public, chosen automatically).
//!
//! ```text
//!                                  P-ul: br0
//!        +-------h1--------------------n2---------------------n3-----------h4--------+
//!       P-h1 198.18.0.11      P-n2 198.18.0.12 symmetric  P-n3 198.18.0.13 symm.  P-h4 198.18.0.14
//!       (admin, public)             |                          |            (relay = true,
//!                             P-h2 198.19.2.2            P-h3 198.19.3.2    tcpdump here)
//!                             h2-c1 10.42.2.2            h3-c1 10.42.3.2
//! ```

mod common;

use std::time::{Duration, Instant};

use common::{Capture, Pinger, now_s, prefix, root};
use protocol::api::PeerPath;
use testnet::{NatKind, NatSpec, Options, Testnet};

/// The ICMP payload pattern h2-c1 and h3-c1 send each other ("relay-marker-y20", hex).
const MARKER: &[u8] = b"relay-marker-y20";
const MARKER_HEX: &str = "72656c61792d6d61726b65722d793230";

fn symmetric(host: usize) -> NatSpec {
    NatSpec {
        host,
        kind: NatKind::Symmetric,
    }
}

/// How `observer` reaches `member` now: its path and relay.
fn path(net: &Testnet, observer: usize, member: &str) -> (Option<PeerPath>, Option<String>) {
    let peers = net.peers_json(observer).expect("peers");
    peers
        .iter()
        .find(|p| p.name.as_deref() == Some(member))
        .map_or((None, None), |p| (p.path, p.relay.clone()))
}

/// Waits until `observer` reaches `member` as `done` says; the path it saw last.
fn wait_path(
    net: &Testnet,
    observer: usize,
    member: &str,
    limit: Duration,
    done: impl Fn(&(Option<PeerPath>, Option<String>)) -> bool,
) -> (Option<PeerPath>, Option<String>) {
    let start = Instant::now();
    loop {
        let seen = path(net, observer, member);
        if done(&seen) || start.elapsed() > limit {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the file at `path` holds `needle` anywhere.
fn file_holds(path: &std::path::Path, needle: &[u8]) -> bool {
    let bytes = std::fs::read(path).expect("read the capture");
    bytes.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn two_members_behind_symmetric_nats_talk_through_a_relay_that_cannot_read_them() {
    if !root() {
        return;
    }
    let mut opts = Options::new(4, 1);
    opts.prefix = Some(prefix('y'));
    opts.one_port = true;
    opts.nat = vec![symmetric(2), symmetric(3)];
    opts.members = Some(1);
    opts.configure = Some(Box::new(|i, cfg| {
        if i == 4
            && let Some(control) = cfg.control.as_mut()
        {
            control.extra.push("relay = true".to_owned());
        }
    }));
    let mut net = Testnet::up(opts).expect("up");
    net.join_host(4).expect("h4 joins");
    // The relay's capture (its own namespace) and, to show the marker is there to find, one
    // in h3's, which has the plaintext on its TUN.
    let mut at_relay = Capture::start(&net, "h4", "any");
    let mut at_h3 = Capture::start(&net, "h3", "any");

    net.join_host(2).expect("h2 joins");
    net.join_host(3).expect("h3 joins");
    let both = now_s();
    let mut there = Pinger::start(&net, "h2-c1", "10.42.3.2");
    let mut back = Pinger::start(&net, "h3-c1", "10.42.2.2");
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = [
        there.first_reply_after(both, deadline),
        back.first_reply_after(both, deadline),
    ];
    let since =
        |t: Option<f64>, from: f64| t.map_or("never".to_owned(), |t| format!("{:.2} s", t - from));
    eprintln!(
        "after both joined: h2-c1 -> h3-c1 {}, h3-c1 -> h2-c1 {}",
        since(first[0], both),
        since(first[1], both)
    );
    let seen = wait_path(&net, 2, "h3", Duration::from_secs(2), |p| {
        p.0 == Some(PeerPath::Relayed)
    });
    eprintln!("h2 reaches h3: {seen:?}");
    if seen != (Some(PeerPath::Relayed), Some("h4".to_owned())) {
        for i in [2, 3, 4] {
            eprintln!("h{i} peers: {:?}", net.peers_json(i));
            let log = std::fs::read_to_string(net.log_path(i)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "h{i} log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    assert_eq!(seen, (Some(PeerPath::Relayed), Some("h4".to_owned())));
    let seen = path(&net, 3, "h2");
    assert_eq!(seen, (Some(PeerPath::Relayed), Some("h4".to_owned())));
    assert!(
        first.iter().all(|t| t.is_some_and(|t| t - both <= 5.0)),
        "h2 and h3 did not reach each other within 5 s of both joining"
    );

    // The marker, both ways, through the relay.
    for (from, to) in [("h2-c1", "10.42.3.2"), ("h3-c1", "10.42.2.2")] {
        let out = net
            .exec(
                from,
                &[
                    "ping", "-c", "3", "-i", "0.2", "-W", "2", "-p", MARKER_HEX, to,
                ],
            )
            .expect("ping with the marker");
        assert!(out.status.success(), "{from} -> {to}: {out:?}");
    }
    at_relay.stop();
    at_h3.stop();
    let relayed = at_relay.count("udp and host 198.18.0.12 and port 51820");
    eprintln!("the relay's capture: {relayed} datagrams with h2's NAT");
    assert!(relayed > 10, "nothing went through h4: {relayed}");
    let relay_file = net.run_dir().join("capture-h4-any.pcap");
    let h3_file = net.run_dir().join("capture-h3-any.pcap");
    assert!(
        file_holds(&h3_file, MARKER),
        "the marker is not even in h3's capture: the check would prove nothing"
    );
    assert!(
        !file_holds(&relay_file, MARKER),
        "the relay's capture holds the marker"
    );

    // The relay dies: within 10 s the pair goes through h1 (or direct).
    net.kill_daemon(4).expect("kill h4");
    let killed = now_s();
    let deadline = Instant::now() + Duration::from_secs(15);
    let resumed = [
        there.first_reply_after(killed + 0.5, deadline),
        back.first_reply_after(killed + 0.5, deadline),
    ];
    eprintln!(
        "after h4 died: h2-c1 -> h3-c1 {}, h3-c1 -> h2-c1 {}",
        since(resumed[0], killed),
        since(resumed[1], killed)
    );
    let seen = path(&net, 2, "h3");
    eprintln!("h2 reaches h3: {seen:?}");
    assert!(
        resumed
            .iter()
            .all(|t| t.is_some_and(|t| t - killed <= 10.0)),
        "traffic did not resume within 10 s of the relay's death"
    );
    assert!(
        seen == (Some(PeerPath::Relayed), Some("h1".to_owned()))
            || seen.0 == Some(PeerPath::Punched),
        "{seen:?}"
    );
    drop((there, back));
    net.down().expect("down");
}
