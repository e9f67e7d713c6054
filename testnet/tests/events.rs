//! End-to-end: security events (issue 17, item 3). Each attack or change below must show
//! up in `overlayctl events --json` on the host it concerns, with its stable `kind`:
//!
//! - `certificate_expiring`: the admin issues certificates for 20 days (`[control]
//!   certificate_days = 20`), so every member's expires within 30;
//! - `spoofed_source`: h2-c1 pings h1-c1 from 10.42.200.1, no host's address;
//! - `unknown_key`: a stock WireGuard host (wireguard-go in `P-evout`, a namespace of this
//!   test) with a key of its own and h1 as its peer sends to h1-c1;
//! - `handshake_flood_started` / `_ended`: `P-evout` sends h1 300 valid-mac1 handshake
//!   initiations a second for 3 s (h1 answers more than 100 a second with cookies), then
//!   stops;
//! - `join_refused`: h3 joins with a token, h4 tries the same token;
//! - `member_down` / `member_up`: h3's daemon is killed (-9), then started again.
//!
//! ```text
//!                          P-ul: br0 (underlay switch)
//!      +---------------+---------------+---------------+---------------+
//!      |               |               |               |               |
//!  P-h1 .11        P-h2 .12        P-h3 .13        P-h4 .14       P-evout 198.19.255.79/15
//!  admin           member          joins with      tries the      wireguard-go (own key,
//!  br0 10.42.1.1   br0 10.42.2.1   a token, is     used token     peer h1), then a flood
//!   h1-c1 .1.2      h2-c1 .2.2     killed and                     of forged initiations
//!                   (+10.42.200.1) restarted
//! ```

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::forge::{forged, mac1_key};
use common::stock::{WireguardGo, require_tools, udp_in};
use common::{NetnsGuard, enter_netns, pings, root};
use protocol::api::{EventKind, SecurityEvent};
use testnet::{LISTEN_PORT, Options, Testnet};

/// The outsider's address on the underlay's /15 (no host has it).
const OUTSIDER_ADDR: &str = "198.19.255.79";
/// The inner source h2-c1 forges: in no host's subnet.
const FORGED_SOURCE: &str = "10.42.200.1";
/// The stock peer's address on its WireGuard interface.
const STOCK_SOURCE: &str = "10.42.250.1";
/// Forged initiations a second, and for how long: three times h1's limit of 100.
const FLOOD_PER_S: u64 = 300;
const FLOOD_FOR: Duration = Duration::from_secs(3);

/// Host `i`'s events (`overlayctl events --json`).
fn events(net: &Testnet, i: usize) -> Vec<SecurityEvent> {
    let out = net
        .overlayctl_ok(i, &["events", "--json"])
        .expect("overlayctl events --json");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event line {l:?}: {e}")))
        .collect()
}

/// Waits up to `limit` for an event of `kind` on host `i` (about `peer`, if given) with a
/// sequence number above `after`; panics listing host `i`'s events if none comes.
fn wait_event(
    net: &Testnet,
    i: usize,
    kind: EventKind,
    peer: Option<&str>,
    after: u64,
    limit: Duration,
) -> SecurityEvent {
    let started = Instant::now();
    loop {
        let all = events(net, i);
        if let Some(e) = all.iter().find(|e| {
            e.seq > after && e.kind == kind && (peer.is_none() || e.peer.as_deref() == peer)
        }) {
            eprintln!(
                "h{i}: {} after {:.1} s: {}",
                kind.as_str(),
                started.elapsed().as_secs_f64(),
                serde_json::to_string(e).expect("an event serializes")
            );
            return e.clone();
        }
        assert!(
            started.elapsed() < limit,
            "no {} event{} on h{i} within {limit:?}; its events:\n{}",
            kind.as_str(),
            peer.map(|p| format!(" about {p}")).unwrap_or_default(),
            all.iter()
                .map(|e| serde_json::to_string(e).expect("an event serializes"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The newest sequence number on host `i` (0 if none).
fn last_seq(net: &Testnet, i: usize) -> u64 {
    events(net, i).last().map_or(0, |e| e.seq)
}

/// A namespace on the underlay switch that is no member: veth `evout` on the switch's
/// `br0`, `eth0` with [`OUTSIDER_ADDR`]/15 inside. Deleted on drop (with its veth).
fn outsider(net: &Testnet) -> (String, NetnsGuard) {
    let ns = format!("{}-evout", net.prefix());
    let guard = NetnsGuard::add(std::slice::from_ref(&ns));
    let switch = net.underlay_ns();
    common::ip(&[
        "link", "add", "evout", "netns", &switch, "type", "veth", "peer", "name", "eth0", "netns",
        &ns,
    ]);
    common::ip(&["-n", &switch, "link", "set", "evout", "master", "br0", "up"]);
    let addr = format!("{OUTSIDER_ADDR}/15");
    common::ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
    common::ip(&["-n", &ns, "link", "set", "eth0", "up"]);
    common::ip(&["-n", &ns, "link", "set", "lo", "up"]);
    (ns, guard)
}

/// h2-c1 pings h1-c1 from [`FORGED_SOURCE`] (h2's kernel lets it out: rp_filter off).
fn forge_a_source(net: &Testnet) {
    for sysctl in [
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.br0.rp_filter=0",
    ] {
        net.exec("h2", &["sysctl", "-qw", sysctl]).expect("sysctl");
    }
    let added = net
        .exec(
            "h2-c1",
            &[
                "ip",
                "addr",
                "add",
                &format!("{FORGED_SOURCE}/32"),
                "dev",
                "eth0",
            ],
        )
        .expect("ip addr add");
    assert!(added.status.success(), "cannot add the forged address");
    let target = net.addr("h1-c1").expect("h1-c1's address").to_string();
    let ping = net
        .exec(
            "h2-c1",
            &[
                "ping",
                "-c3",
                "-i",
                "0.2",
                "-W1",
                "-I",
                FORGED_SOURCE,
                &target,
            ],
        )
        .expect("run ping");
    assert!(
        !ping.status.success(),
        "a ping from the forged source {FORGED_SOURCE} got an answer"
    );
}

/// wireguard-go in `ns` with a fresh key of its own, h1 its one peer; sends UDP to h1-c1
/// every 100 ms for up to `limit` or until `done` holds. Returns its key.
fn stranger_knocks(net: &Testnet, ns: &str, mut done: impl FnMut() -> bool) -> String {
    let key_file = net.run_dir().join("stranger.key");
    let key = std::process::Command::new("wg")
        .arg("genkey")
        .output()
        .expect("wg genkey");
    assert!(key.status.success(), "wg genkey failed");
    std::fs::write(&key_file, &key.stdout).expect("write the stranger's key");
    let public = {
        use std::io::Write;
        let mut child = std::process::Command::new("wg")
            .arg("pubkey")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("wg pubkey");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&key.stdout)
            .expect("write to wg pubkey");
        let out = child.wait_with_output().expect("wg pubkey");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let ifname = format!("wg{}", net.prefix());
    let ifname = &ifname[..ifname.len().min(15)];
    let wg = WireguardGo::start(net, ns, ifname, "wireguard-go-stranger.log");
    let h1_key = net.public_key(1).expect("h1's key").to_string();
    let h1 = SocketAddr::new(net.addr("h1").expect("h1's address"), LISTEN_PORT);
    wg.set_peer(&key_file, LISTEN_PORT, &h1_key, h1, "10.42.0.0/16");
    wg.up(&format!("{STOCK_SOURCE}/32"));
    common::ip(&["-n", ns, "route", "add", "10.42.0.0/16", "dev", ifname]);
    let socket = udp_in(ns, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let to = SocketAddr::new(net.addr("h1-c1").expect("h1-c1's address"), 7);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() && Instant::now() < deadline {
        let _ = socket.send_to(b"knock", to);
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(wg);
    public
}

/// [`FLOOD_PER_S`] forged initiations a second to h1 from `ns` for [`FLOOD_FOR`]; how many
/// were sent.
fn flood(net: &Testnet, ns: &str) -> u64 {
    let key = mac1_key(net.public_key(1).expect("h1's key").as_bytes());
    let to = SocketAddr::new(net.addr("h1").expect("h1's address"), LISTEN_PORT);
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter_netns(&ns);
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < FLOOD_FOR {
            // Catch up to the rate every 10 ms.
            let due = started.elapsed().as_millis() as u64 * FLOOD_PER_S / 1000;
            while sent < due {
                let _ = socket.send_to(&forged(1, &key, sent as u32, 0), to);
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        sent
    })
    .join()
    .expect("flood thread")
}

#[test]
fn attacks_and_changes_each_produce_their_event() {
    if !root() {
        return;
    }
    require_tools(&["wireguard-go", "wg"]);
    let began = Instant::now();
    let mut net = Testnet::up(Options {
        members: Some(2),
        configure: Some(Box::new(|_, config| {
            if let Some(control) = config.control.as_mut() {
                control.extra.push("certificate_days = 20".into());
            }
        })),
        ..Options::new(4, 1)
    })
    .expect("testnet up");
    let (ns, guard) = outsider(&net);

    // This host's certificate expires in 20 days: warned once, of 30 days.
    let expiring = wait_event(
        &net,
        1,
        EventKind::CertificateExpiring,
        Some("h1"),
        0,
        Duration::from_secs(5),
    );
    assert!(
        expiring.detail.contains("less than 30 days"),
        "{}",
        expiring.detail
    );
    wait_event(
        &net,
        2,
        EventKind::CertificateExpiring,
        Some("h2"),
        0,
        Duration::from_secs(5),
    );

    // A forged inner source, from a member: h1 drops it and tells.
    let h1_c1 = net.addr("h1-c1").expect("h1-c1's address").to_string();
    assert!(pings(&net, "h2-c1", &h1_c1), "h2-c1 pings h1-c1");
    let after = last_seq(&net, 1);
    forge_a_source(&net);
    let spoofed = wait_event(
        &net,
        1,
        EventKind::SpoofedSource,
        Some("h2"),
        after,
        Duration::from_secs(5),
    );
    assert!(spoofed.detail.contains(FORGED_SOURCE), "{}", spoofed.detail);

    // A handshake from a key no member holds.
    let after = last_seq(&net, 1);
    let mut seen = None;
    let stranger = stranger_knocks(&net, &ns, || {
        seen = events(&net, 1)
            .into_iter()
            .find(|e| e.seq > after && e.kind == EventKind::UnknownKey);
        seen.is_some()
    });
    let unknown = seen.unwrap_or_else(|| {
        wait_event(
            &net,
            1,
            EventKind::UnknownKey,
            None,
            after,
            Duration::from_secs(1),
        )
    });
    eprintln!(
        "h1: unknown_key: {}",
        serde_json::to_string(&unknown).expect("an event serializes")
    );
    assert!(unknown.detail.contains(&stranger), "{}", unknown.detail);
    assert_eq!(
        unknown.endpoint.map(|e| e.ip().to_string()).as_deref(),
        Some(OUTSIDER_ADDR)
    );

    // A handshake flood: cookie mode entered with its rate, then left.
    let after = last_seq(&net, 1);
    let sent = flood(&net, &ns);
    eprintln!("flood: {sent} forged initiations to h1 in {FLOOD_FOR:?}");
    let started = wait_event(
        &net,
        1,
        EventKind::HandshakeFloodStarted,
        None,
        after,
        Duration::from_secs(3),
    );
    assert!(
        started.detail.contains("handshake messages a second"),
        "{}",
        started.detail
    );
    wait_event(
        &net,
        1,
        EventKind::HandshakeFloodEnded,
        None,
        started.seq,
        Duration::from_secs(8),
    );
    drop(guard);

    // A token used once, then again: the admin refuses the second and says why.
    let token = net
        .overlayctl_ok(1, &["token", "create", "--ttl", "10m"])
        .expect("token create");
    let token = String::from_utf8(token.stdout).expect("UTF-8 token");
    let joined = net.join_with(3, token.trim()).expect("join h3");
    assert!(
        joined.status.success(),
        "h3 join: {}",
        String::from_utf8_lossy(&joined.stderr)
    );
    let after = last_seq(&net, 1);
    let refused = net.join_with(4, token.trim()).expect("join h4");
    assert!(!refused.status.success(), "h4 joined with a used token");
    let event = wait_event(
        &net,
        1,
        EventKind::JoinRefused,
        Some("h4"),
        after,
        Duration::from_secs(5),
    );
    assert!(event.detail.contains("already used"), "{}", event.detail);

    // A member killed, then back.
    net.wait_converged(&[1, 2, 3], Duration::from_secs(30))
        .expect("h1..h3 see each other");
    let after = last_seq(&net, 1);
    net.kill_daemon(3).expect("kill h3's daemon");
    wait_event(
        &net,
        1,
        EventKind::MemberDown,
        Some("h3"),
        after,
        Duration::from_secs(20),
    );
    net.start_daemon(3).expect("start h3's daemon");
    wait_event(
        &net,
        1,
        EventKind::MemberUp,
        Some("h3"),
        after,
        Duration::from_secs(20),
    );

    // The log carries them too, with their kind.
    let log = std::fs::read_to_string(net.log_path(1)).unwrap_or_default();
    for kind in ["spoofed_source", "unknown_key", "handshake_flood_started"] {
        assert!(log.contains(kind), "h1's log has no {kind} line");
    }
    eprintln!("h1's events:");
    for e in events(&net, 1) {
        eprintln!(
            "  {}",
            serde_json::to_string(&e).expect("an event serializes")
        );
    }
    eprintln!("test ran {:.1} s", began.elapsed().as_secs_f64());
    net.down().expect("down");
}
