//! Hole punching at a time agreed through a third member: h1 public (the admin), h2 and h3
//! each behind a cone NAT of its own, one UDP port (the layout of `punch.rs`). This time
//! each NAT drops what its host sends to the other NAT for the first 2 s after h3 joins,
//! so the dials each side makes on learning the other's record miss (QUIC's next
//! retransmission of them comes ~3 s after they started), and so does the first
//! rendezvous (asked ~1 s after, fired 0.3 s later). The second, 1 s after the first,
//! connects them directly: `overlayctl peers` says `punched` (with a session) on both
//! sides within 5 s of h3 joining, and the daemon logs the connection as the punch's.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{prefix, root};
use protocol::api::PeerPath;
use testnet::{NatKind, NatSpec, Options, Testnet};

/// The table that blocks what a host behind a NAT sends to the other NAT.
const BLOCK: &str = "rendezvous_block";
/// How long after h3 joins the block is lifted.
const BLOCKED: Duration = Duration::from_millis(2000);

fn cone(host: usize) -> NatSpec {
    NatSpec {
        host,
        kind: NatKind::Cone,
    }
}

fn nft(net: &Testnet, host: usize, script: &str) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.nat_ns(host), "nft", "-f", "-"]);
    cmd.stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("nft runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("nft reads");
    assert!(child.wait().expect("nft ends").success(), "nft: {script}");
}

/// The NAT of `host` drops what its host sends to `other`'s public address.
fn block(net: &Testnet, host: usize, other: usize) {
    let to = net.public_addr(other).expect("a public address");
    nft(
        net,
        host,
        &format!(
            "add table ip {BLOCK}\n\
             add chain ip {BLOCK} forward {{ type filter hook forward priority -10; policy accept; }}\n\
             add rule ip {BLOCK} forward ip saddr 198.19.{host}.0/24 ip daddr {to} drop\n"
        ),
    );
}

fn unblock(net: &Testnet, host: usize) {
    nft(net, host, &format!("delete table ip {BLOCK}\n"));
}

/// The path `observer` shows for `member`, once their tunnel has a session (before, the
/// path only says where its handshakes go).
fn path(net: &Testnet, observer: usize, member: &str) -> Option<PeerPath> {
    let peers = net.peers_json(observer).ok()?;
    peers
        .iter()
        .find(|p| p.name.as_deref() == Some(member))
        .filter(|p| p.last_handshake_s.is_some())
        .and_then(|p| p.path)
}

#[test]
fn a_rendezvous_through_a_third_member_punches_when_the_first_dials_miss() {
    if !root() {
        return;
    }
    let mut opts = Options::new(3, 1);
    opts.prefix = Some(prefix('z'));
    opts.one_port = true;
    opts.nat = vec![cone(2), cone(3)];
    opts.members = Some(1);
    let net = Testnet::up(opts).expect("up");
    block(&net, 2, 3);
    block(&net, 3, 2);

    net.join_host(2).expect("h2 joins");
    let joined = net.join_host(3).expect("h3 joins");
    let mut lifted = false;
    let mut both = None;
    while both.is_none() && joined.elapsed() < Duration::from_secs(10) {
        if !lifted && joined.elapsed() >= BLOCKED {
            unblock(&net, 2);
            unblock(&net, 3);
            lifted = true;
            eprintln!(
                "block lifted {:.2} s after h3 joined",
                joined.elapsed().as_secs_f64()
            );
        }
        let (to3, to2) = (path(&net, 2, "h3"), path(&net, 3, "h2"));
        if !lifted {
            assert_ne!(to3, Some(PeerPath::Punched), "through the block");
            assert_ne!(to2, Some(PeerPath::Punched), "through the block");
        }
        if to3 == Some(PeerPath::Punched) && to2 == Some(PeerPath::Punched) {
            both = Some(joined.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let paths = (path(&net, 2, "h3"), path(&net, 3, "h2"));
    let Some(took) = both else {
        panic!("h2 and h3 not punched 10 s after h3 joined: {paths:?}");
    };
    eprintln!(
        "h2 and h3 punched {:.2} s after h3 joined",
        took.as_secs_f64()
    );
    assert!(took <= Duration::from_secs(5), "{took:?}");
    // The connection came from the rendezvous: a punch at the agreed time.
    let logs: String = [2, 3]
        .iter()
        .map(|&i| std::fs::read_to_string(net.log_path(i)).unwrap_or_default())
        .collect();
    let credited = logs
        .lines()
        .filter(|l| l.contains("by a punch at the agreed time"))
        .count();
    eprintln!("connections logged as a punch's at the agreed time: {credited}");
    assert!(credited >= 1, "no connection came from a rendezvous");
    // And it stays direct.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        assert_eq!(path(&net, 2, "h3"), Some(PeerPath::Punched));
        std::thread::sleep(Duration::from_millis(200));
    }
    net.down().expect("down");
}
