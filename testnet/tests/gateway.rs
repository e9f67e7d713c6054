//! A member cannot use a host as a gateway (issue 14, item 6, the issue's test): a stock
//! WireGuard peer (wireguard-go) with a member's key (h2's) and `allowed-ips 0.0.0.0/0`
//! sends through h1 to h1's LAN, to a neighbour on h1's uplink and to "the internet". h1's
//! kernel forwards (ip_forward = 1, a default route, a LAN), so only overlayd stands in the
//! way: nothing may leave h1's uplink or reach its LAN (tcpdump on both, and a listener at
//! every destination), h1's `destination_not_allowed` counter rises by at least the number
//! sent, table `inet overlayd` holds the forward rule, and what the attacker sends to h1's
//! own addresses (10.42.1.1, h1-c1) still arrives: the tunnel works, only the rest is
//! dropped.
//!
//! Before the fix h1 delivered every decrypted packet whose source was the peer's, and its
//! kernel forwarded them: the LAN, the underlay neighbour and the internet got them all.
//!
//! h2's overlayd keeps running (were it stopped, h1 would drop h2 from its peers once it
//! saw it down): the attacker is a second holder of h2's key elsewhere on the underlay, and
//! h1 takes its authenticated packets as h2's (its endpoint for h2 may move there). The
//! router drops the packets first, so the nft rule's own counter stays at 0 here; the test
//! checks that the rule is in place.
//!
//! ```text
//!                               P-ul: br0 (underlay switch)
//!        +---------------------+----------------------+----------------------+
//!        |                     |                      |                      |
//!  P-h1 198.18.0.11/15   P-h2 198.18.0.12       P-gwatk 198.19.255.77/32 P-gwwan 198.19.0.99/15
//!  overlayd (ovl0)       overlayd (member,      wireguard-go with h2's   "the internet":
//!  ip_forward = 1        left running)          key, peer h1 (endpoint   8.8.8.8/32 on lo
//!  default via           br0 10.42.2.1/24       198.18.0.11:51820),      (the underlay
//!   198.19.0.99          h2-c1 .2.2             allowed-ips 0.0.0.0/0;   neighbour and the
//!  br0 10.42.1.1/24                             wg: 10.42.2.1/32,        default route's
//!   h1-c1 .1.2                                  default dev wg           end)
//!  lan0 192.0.2.1/24 ---- veth ---- P-gwlan eth0 192.0.2.2/24 (h1's LAN)
//! ```
//!
//! Every namespace is this test's: 8.8.8.8 is an address of P-gwwan, so no packet can leave
//! them (checked with `ip route get` before anything is sent). UDP port [`PORT`] has a
//! listener at every destination; each datagram names its destination, so each listener
//! counts what was meant for it.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::stock::{WireguardGo, kill, require_tools, run_in, udp_in, wait_until};
use common::{NetnsGuard, root};
use serde_json::Value;
use testnet::{LISTEN_PORT, MemberState, Options, Testnet};

/// The UDP port every listener of the test binds.
const PORT: u16 = 7777;
/// The port of the probes h1 sends on its uplink and LAN itself (nobody listens).
const PROBE_PORT: u16 = 7778;
/// Datagrams the attacker sends to each destination.
const PER_TARGET: u64 = 10;
/// The attacker's underlay address (no host has it); its only underlay route is to h1.
const ATTACKER_ADDR: &str = "198.19.255.77";
/// The inner source the attacker sends from: h2's overlay address, inside h2's subnet, so
/// h1's source check passes.
const INNER_SOURCE: &str = "10.42.2.1";
/// h1's side of its LAN, and the LAN host.
const LAN_H1: &str = "192.0.2.1";
const LAN_HOST: &str = "192.0.2.2";
/// The neighbour on h1's uplink (the underlay switch), also h1's default gateway.
const UPLINK_NEIGHBOUR: &str = "198.19.0.99";
/// "The internet": behind h1's default route, an address of the neighbour's namespace.
const INTERNET: &str = "8.8.8.8";
/// h1's overlay address and h1-c1's.
const H1_OVERLAY: &str = "10.42.1.1";
const H1_C1: &str = "10.42.1.2";
/// How long the attacker's first datagram may take to get through, and again after h1's
/// daemon was restarted (see the warm-up).
const FIRST_WARMUP: Duration = Duration::from_secs(2);
const SECOND_WARMUP: Duration = Duration::from_secs(10);

/// A listener at one or more destinations; every datagram's text is kept.
struct Sink {
    /// What it stands for, in messages.
    what: &'static str,
    socket: UdpSocket,
    got: Vec<String>,
}

impl Sink {
    fn new(what: &'static str, ns: &str, bind: SocketAddr) -> Sink {
        Sink {
            what,
            socket: udp_in(ns, bind),
            got: Vec::new(),
        }
    }

    /// Takes in what has arrived.
    fn drain(&mut self) {
        let mut buf = [0u8; 1500];
        loop {
            match self.socket.recv_from(&mut buf) {
                Ok((n, _)) => self
                    .got
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("{}: recv: {e}", self.what),
            }
        }
    }

    /// Datagrams received whose text starts with `kind` and is meant for `to`.
    fn count(&self, kind: &str, to: &str) -> u64 {
        let prefix = format!("{kind} to {to} ");
        self.got.iter().filter(|m| m.starts_with(&prefix)).count() as u64
    }
}

/// Sends `text` to `to`:[`PORT`] from `socket`; panics if the kernel refuses.
fn send(socket: &UdpSocket, to: &str, text: &str) {
    let ip: IpAddr = to.parse().expect("an address");
    socket
        .send_to(text.as_bytes(), SocketAddr::new(ip, PORT))
        .unwrap_or_else(|e| panic!("send to {to}: {e}"));
}

/// tcpdump on one interface of a namespace, printing a line per packet that matches its
/// filter (read as they come, by a thread); killed on drop (also when the test panics).
struct Capture {
    child: Option<Child>,
    rx: std::sync::mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Capture {
    /// Starts it and waits until its capture is attached ("listening on").
    fn start(net: &Testnet, host: &str, iface: &str, filter: &str) -> Capture {
        use std::io::BufRead;
        let mut child = net
            .spawn(
                host,
                &[
                    "tcpdump",
                    "--immediate-mode",
                    "-l",
                    "-nn",
                    "-i",
                    iface,
                    filter,
                ],
            )
            .expect("start tcpdump");
        let stderr = child.stderr.take().expect("tcpdump stderr");
        let stdout = child.stdout.take().expect("tcpdump stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let capture = Capture {
            child: Some(child),
            rx,
            lines: Vec::new(),
        };
        let (tx, said) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match said.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("listening on") => break,
                Ok(_) => {}
                // dropping `capture` on the way out stops it
                Err(_) => panic!("tcpdump on {host}'s {iface} did not start listening"),
            }
        }
        capture
    }

    /// Waits up to `limit` for a printed packet that contains `text`.
    fn wait_for(&mut self, text: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            self.lines.extend(self.rx.try_iter());
            if self.lines.iter().any(|l| l.contains(text)) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.lines.push(line),
                Err(_) => return false,
            }
        }
    }

    /// Stops it (SIGINT, as a user would) and returns every packet it printed.
    fn stop(mut self) -> Vec<String> {
        let mut child = self.child.take().expect("stopped once");
        // SAFETY: kill(2) on the PID of our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _ = child.wait();
        // The reader ends at tcpdump's end of output.
        while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(2)) {
            self.lines.push(line);
        }
        std::mem::take(&mut self.lines)
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            kill(child);
        }
    }
}

/// The attacker's WireGuard interface `ifname` in namespace `ns`: h2's private key, port
/// 51820, one peer (h1 at its underlay address) with allowed-ips 0.0.0.0/0; 10.42.2.1/32 on
/// it and the default route through it.
fn wireguard_go(net: &Testnet, ns: &str, ifname: &str) -> WireguardGo {
    let wg = WireguardGo::start(net, ns, ifname, "wireguard-go.log");
    set_peer_h1(net, &wg);
    wg.up(&format!("{INNER_SOURCE}/32"));
    common::ip(&["-n", ns, "route", "add", "default", "dev", ifname]);
    wg
}

/// Gives the attacker's interface h2's private key and port 51820, and (again) its one peer:
/// h1 at its underlay address, allowed-ips 0.0.0.0/0. Set again after a removal, the peer
/// starts afresh: wireguard-go initiates a handshake with the next packet.
fn set_peer_h1(net: &Testnet, wg: &WireguardGo) {
    let h1_key = net.public_key(1).expect("h1's key").to_string();
    let h1 = SocketAddr::new(net.addr("h1").expect("h1's address"), LISTEN_PORT);
    wg.set_peer(&net.key_path(2), LISTEN_PORT, &h1_key, h1, "0.0.0.0/0");
}

/// Sends a warm-up datagram from the attacker to h1-c1 every 80 ms until one arrives or
/// `limit` has passed; whether one did. `sent` counts them.
fn warm_up(tunnel: &UdpSocket, c1_sink: &mut Sink, limit: Duration, sent: &mut u32) -> bool {
    wait_until(limit, || {
        *sent += 1;
        send(tunnel, H1_C1, &format!("warmup to {H1_C1} {sent}"));
        std::thread::sleep(Duration::from_millis(80));
        c1_sink.drain();
        c1_sink.count("warmup", H1_C1) > 0
    })
}

/// A veth from namespace `a` (named `a_name`) to `b` (`b_name`).
fn veth(a: &str, a_name: &str, b: &str, b_name: &str) {
    common::ip(&[
        "link", "add", a_name, "netns", a, "type", "veth", "peer", "name", b_name, "netns", b,
    ]);
}

/// The test's own namespaces, wired as the picture shows: the attacker and the neighbour
/// ("the internet") on the underlay switch, the LAN behind h1; h1 gets its LAN address and a
/// default route to the neighbour. Returns (attacker, LAN, neighbour) and the guard that
/// deletes them.
fn build(net: &Testnet) -> (String, String, String, NetnsGuard) {
    let [attacker, lan, wan] = ["gwatk", "gwlan", "gwwan"].map(|n| format!("{}-{n}", net.prefix()));
    let guard = NetnsGuard::add(&[attacker.clone(), lan.clone(), wan.clone()]);
    let (switch, h1) = (net.underlay_ns(), net.host_ns(1));
    for ns in [&attacker, &lan, &wan] {
        common::ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    // h1's LAN: lan0 192.0.2.1/24 in h1, eth0 192.0.2.2/24 in the LAN, which answers
    // overlay sources through h1 (so that its kernel would take what h1 forwards).
    veth(&h1, "lan0", &lan, "eth0");
    common::ip(&[
        "-n",
        &h1,
        "addr",
        "add",
        &format!("{LAN_H1}/24"),
        "dev",
        "lan0",
    ]);
    common::ip(&["-n", &h1, "link", "set", "lan0", "up"]);
    common::ip(&[
        "-n",
        &lan,
        "addr",
        "add",
        &format!("{LAN_HOST}/24"),
        "dev",
        "eth0",
    ]);
    common::ip(&["-n", &lan, "link", "set", "eth0", "up"]);
    common::ip(&["-n", &lan, "route", "add", "10.42.0.0/16", "via", LAN_H1]);
    // The neighbour on the uplink, h1's default gateway, with "the internet" on its lo.
    let h1_underlay = net.addr("h1").expect("h1's address").to_string();
    veth(&switch, "gwwan", &wan, "eth0");
    common::ip(&["-n", &switch, "link", "set", "gwwan", "master", "br0", "up"]);
    let neighbour = format!("{UPLINK_NEIGHBOUR}/15");
    common::ip(&["-n", &wan, "addr", "add", &neighbour, "dev", "eth0"]);
    common::ip(&["-n", &wan, "link", "set", "eth0", "up"]);
    common::ip(&[
        "-n",
        &wan,
        "addr",
        "add",
        &format!("{INTERNET}/32"),
        "dev",
        "lo",
    ]);
    common::ip(&[
        "-n",
        &wan,
        "route",
        "add",
        "10.42.0.0/16",
        "via",
        &h1_underlay,
    ]);
    common::ip(&[
        "-n",
        &h1,
        "route",
        "add",
        "default",
        "via",
        UPLINK_NEIGHBOUR,
        "dev",
        "ul0",
    ]);
    // The attacker: on the switch, but its only underlay route is to h1; everything else
    // goes into its tunnel.
    veth(&switch, "gwatk", &attacker, "eth0");
    common::ip(&["-n", &switch, "link", "set", "gwatk", "master", "br0", "up"]);
    let own = format!("{ATTACKER_ADDR}/32");
    common::ip(&["-n", &attacker, "addr", "add", &own, "dev", "eth0"]);
    common::ip(&["-n", &attacker, "link", "set", "eth0", "up"]);
    let to_h1 = format!("{h1_underlay}/32");
    common::ip(&["-n", &attacker, "route", "add", &to_h1, "dev", "eth0"]);
    (attacker, lan, wan, guard)
}

/// `ip -n ns route get to`, one line.
fn route_get(ns: &str, to: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "route", "get", to])
        .output()
        .expect("ip route get");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// h1's drop counter `reason`: over all peers, and h2's own.
fn drops(net: &Testnet, reason: &str) -> (u64, u64) {
    let json = |what: &str| -> Value {
        let out = net
            .overlayctl_ok(1, &[what, "--json"])
            .unwrap_or_else(|e| panic!("{e:#}"));
        serde_json::from_slice(&out.stdout).expect("overlayctl JSON")
    };
    let total = json("status")["drops"][reason].as_u64().unwrap_or(0);
    let h2_key = net.public_key(2).expect("h2's key").to_string();
    let h2 = json("peers")
        .as_array()
        .expect("a list of peers")
        .iter()
        .find(|p| p["public_key"].as_str() == Some(h2_key.as_str()))
        .map_or(0, |p| p["drops"][reason].as_u64().unwrap_or(0));
    (total, h2)
}

/// h1's view of h2's endpoint.
fn endpoint_of_h2(net: &Testnet) -> Option<SocketAddr> {
    net.peers_json(1)
        .ok()?
        .into_iter()
        .find(|p| p.name.as_deref() == Some("h2"))?
        .endpoint
}

#[test]
fn a_member_cannot_send_through_a_host_to_its_lan_or_beyond() {
    if !root() {
        return;
    }
    require_tools(&["wireguard-go", "wg", "tcpdump", "nft"]);
    let began = Instant::now();
    let mut net = Testnet::up(Options::new(2, 1)).expect("testnet up (gossip mode, 2 members)");
    let ready = began.elapsed();
    let (attacker, lan, wan, guard) = build(&net);
    let h1 = net.host_ns(1);
    // The attacker: wireguard-go with h2's key (h2's overlayd runs on as a member); started
    // first, as its handshake may take a while (see the warm-up below).
    let ifname = format!("wg{}", net.prefix());
    let ifname = &ifname[..ifname.len().min(15)];
    let wg = wireguard_go(&net, &attacker, ifname);
    let h1_key = net.public_key(1).expect("h1's key").to_string();

    // ---- h1's kernel would forward: to its LAN, its uplink and the internet, all of them
    // inside this test's namespaces.
    let forward = run_in(&h1, &["sysctl", "-n", "net.ipv4.ip_forward"]);
    assert_eq!(forward.trim(), "1", "ip_forward is off in h1");
    let routes = [
        (h1.as_str(), LAN_HOST, format!("dev lan0 src {LAN_H1}")),
        (h1.as_str(), UPLINK_NEIGHBOUR, "dev ul0".to_owned()),
        (
            h1.as_str(),
            INTERNET,
            format!("via {UPLINK_NEIGHBOUR} dev ul0"),
        ),
        // the internet ends in the neighbour's namespace
        (wan.as_str(), INTERNET, format!("local {INTERNET} dev lo")),
    ];
    for (ns, to, want) in &routes {
        let got = route_get(ns, to);
        assert!(got.contains(want.as_str()), "{ns}: route to {to}: {got}");
    }
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT));
    let mut lan_sink = Sink::new("the LAN", &lan, any);
    let mut wan_sink = Sink::new("the uplink neighbour", &wan, any);
    let h1_overlay: IpAddr = H1_OVERLAY.parse().expect("an address");
    let mut h1_sink = Sink::new("h1", &h1, SocketAddr::new(h1_overlay, PORT));
    let h1_c1 = net.container_ns(1, 1);
    let mut c1_sink = Sink::new("h1-c1", &h1_c1, any);
    // h1 does forward for its own containers: h1-c1 reaches every destination.
    let container = udp_in(&h1_c1, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let forbidden = [LAN_HOST, UPLINK_NEIGHBOUR, INTERNET];
    for to in forbidden {
        send(&container, to, &format!("control to {to} from h1-c1"));
    }
    let controls_arrived = wait_until(Duration::from_secs(5), || {
        lan_sink.drain();
        wan_sink.drain();
        lan_sink.count("control", LAN_HOST) == 1
            && wan_sink.count("control", UPLINK_NEIGHBOUR) == 1
            && wan_sink.count("control", INTERNET) == 1
    });
    assert!(
        controls_arrived,
        "h1 does not forward from h1-c1 to its LAN, uplink and default route: LAN got {:?}, neighbour got {:?}",
        lan_sink.got, wan_sink.got
    );

    // ---- the attacker's tunnel: sends until a datagram reaches h1-c1 (the handshake with
    // h1 done). h1 may refuse wireguard-go's initiations: boringtun stamps handshakes with
    // TAI64N base 2^62 + 37, wireguard-go with 2^62 + 10, so if h2's overlayd initiated to
    // h1 while the network formed (a race), h1 takes wireguard-go's stamps for replays
    // (WrongTai64nTimestamp, counted as auth_failed) for 27 s. Rather than wait, h1's
    // daemon is restarted then (its tunnel to h2 starts afresh, h1 initiating) and
    // wireguard-go's peer set again, so that it initiates at once.
    let source = SocketAddr::new(INNER_SOURCE.parse().expect("an address"), 0);
    let tunnel = udp_in(&attacker, source);
    let warm_began = Instant::now();
    let (auth_failed_before, _) = drops(&net, "auth_failed");
    let mut warmups = 0;
    let mut through = warm_up(&tunnel, &mut c1_sink, FIRST_WARMUP, &mut warmups);
    let mut restarted = None;
    if !through {
        let (auth_failed, _) = drops(&net, "auth_failed");
        let restart_began = Instant::now();
        net.restart_daemon(1).expect("restart h1's daemon");
        net.wait_member_state(1, 2, MemberState::Alive, Duration::from_secs(15))
            .expect("h1 sees h2 alive after its restart");
        assert!(
            wait_until(Duration::from_secs(10), || net
                .has_route_to(1, 2)
                .unwrap_or(false)),
            "h1 has no route to h2 after its restart"
        );
        wg.remove_peer(&h1_key);
        set_peer_h1(&net, &wg);
        restarted = Some((auth_failed - auth_failed_before, restart_began.elapsed()));
        through = warm_up(&tunnel, &mut c1_sink, SECOND_WARMUP, &mut warmups);
    }
    let warm_took = warm_began.elapsed();
    assert!(
        through,
        "nothing the attacker sent through its tunnel reached h1-c1 in {:.1} s ({warmups} tries, h1 restarted: {restarted:?}); wireguard-go's log:\n{}",
        warm_took.as_secs_f64(),
        std::fs::read_to_string(net.run_dir().join("wireguard-go.log")).unwrap_or_default()
    );
    let h2_seen_at = endpoint_of_h2(&net);

    // ---- the attack, watched on h1's uplink and LAN: any packet with an overlay source
    // there came out of the tunnel (the tunnel itself is UDP between underlay addresses).
    // The probes, sent by h1 itself at the end, show that the captures saw everything.
    let filter = format!("ip and (src net 10.42.0.0/16 or udp dst port {PROBE_PORT})");
    let filter = filter.as_str();
    let uplink = Capture::start(&net, "h1", "ul0", filter);
    let lan_link = Capture::start(&net, "h1", "lan0", filter);
    let (before, h2_before) = drops(&net, "destination_not_allowed");
    let attack_began = Instant::now();
    let targets = [LAN_HOST, UPLINK_NEIGHBOUR, INTERNET, H1_OVERLAY, H1_C1];
    for seq in 0..PER_TARGET {
        for to in targets {
            send(&tunnel, to, &format!("attack to {to} {seq}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // What is for h1 itself arrives in order with the rest; then the counter.
    let own_arrived = wait_until(Duration::from_secs(5), || {
        h1_sink.drain();
        c1_sink.drain();
        h1_sink.count("attack", H1_OVERLAY) >= PER_TARGET
            && c1_sink.count("attack", H1_C1) >= PER_TARGET
    });
    let forbidden_sent = PER_TARGET * forbidden.len() as u64;
    let mut after = (before, h2_before);
    wait_until(Duration::from_secs(2), || {
        after = drops(&net, "destination_not_allowed");
        after.0 >= before + forbidden_sent
    });
    // Stragglers: whatever h1 let through has had time to arrive.
    std::thread::sleep(Duration::from_millis(300));
    for sink in [&mut lan_sink, &mut wan_sink, &mut h1_sink, &mut c1_sink] {
        sink.drain();
    }
    let attack_took = attack_began.elapsed();
    let (mut uplink, mut lan_link) = (uplink, lan_link);
    let prober = udp_in(&h1, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let probe_marker = format!(".{PROBE_PORT}: ");
    let mut probed = Vec::new();
    for (capture, to) in [(&mut uplink, UPLINK_NEIGHBOUR), (&mut lan_link, LAN_HOST)] {
        let ip: IpAddr = to.parse().expect("an address");
        prober
            .send_to(b"probe", SocketAddr::new(ip, PROBE_PORT))
            .unwrap_or_else(|e| panic!("probe to {to}: {e}"));
        probed.push(capture.wait_for(&probe_marker, Duration::from_secs(3)));
    }
    let is_probe = |l: &String| l.contains(&probe_marker) && !l.contains(" IP 10.42.");
    let (on_uplink, on_lan): (Vec<String>, Vec<String>) = (
        uplink.stop().into_iter().filter(|l| !is_probe(l)).collect(),
        lan_link
            .stop()
            .into_iter()
            .filter(|l| !is_probe(l))
            .collect(),
    );
    let nft = Command::new("ip")
        .args([
            "netns", "exec", &h1, "nft", "list", "table", "inet", "overlayd",
        ])
        .output()
        .expect("run nft");
    let table = String::from_utf8_lossy(&nft.stdout).into_owned();
    drop(wg);

    // ---- the figures, before any verdict
    let received = |sink: &Sink, to: &str| sink.count("attack", to);
    eprintln!(
        "testnet up in {:.1} s; attacker {attacker} ({ATTACKER_ADDR}, wireguard-go {ifname} with h2's key, inner source {INNER_SOURCE})",
        ready.as_secs_f64()
    );
    match restarted {
        None => eprintln!(
            "attacker's tunnel through to h1-c1 after {:.1} s ({warmups} warm-up datagrams); h1's endpoint for h2 then: {h2_seen_at:?}",
            warm_took.as_secs_f64()
        ),
        Some((auth_failed, took)) => eprintln!(
            "attacker's tunnel through to h1-c1 after {:.1} s ({warmups} warm-up datagrams): none in {:.0} s, h1's auth_failed +{auth_failed} (wireguard-go's TAI64N stamps taken for replays if h2's overlayd had initiated), so h1's daemon was restarted ({:.1} s); h1's endpoint for h2 then: {h2_seen_at:?}",
            warm_took.as_secs_f64(),
            FIRST_WARMUP.as_secs_f64(),
            took.as_secs_f64()
        ),
    }
    eprintln!(
        "attacker sent {PER_TARGET} datagrams to each of {targets:?} in {:.2} s (with the wait for them)",
        attack_took.as_secs_f64()
    );
    for (sink, to) in [
        (&lan_sink, LAN_HOST),
        (&wan_sink, UPLINK_NEIGHBOUR),
        (&wan_sink, INTERNET),
        (&h1_sink, H1_OVERLAY),
        (&c1_sink, H1_C1),
    ] {
        eprintln!(
            "  {} received {} of {PER_TARGET} sent to {to}",
            sink.what,
            received(sink, to)
        );
    }
    eprintln!(
        "h1's destination_not_allowed: {} -> {} (h2's: {} -> {}), {forbidden_sent} sent to forbidden destinations",
        before, after.0, h2_before, after.1
    );
    eprintln!(
        "tcpdump on h1's ul0 ({filter}): {} packets besides h1's probe (probe seen: {})",
        on_uplink.len(),
        probed[0]
    );
    for line in on_uplink.iter().take(10) {
        eprintln!("  {line}");
    }
    eprintln!(
        "tcpdump on h1's lan0 ({filter}): {} packets besides h1's probe (probe seen: {})",
        on_lan.len(),
        probed[1]
    );
    for line in on_lan.iter().take(10) {
        eprintln!("  {line}");
    }
    eprintln!(
        "nft list table inet overlayd on h1 ({}):\n{}{}",
        nft.status,
        table,
        String::from_utf8_lossy(&nft.stderr).trim()
    );
    eprintln!("test ran {:.1} s", began.elapsed().as_secs_f64());

    // ---- the verdict, every failed check at once, what leaks first
    let mut failed = Vec::new();
    for (sink, to) in [
        (&lan_sink, LAN_HOST),
        (&wan_sink, UPLINK_NEIGHBOUR),
        (&wan_sink, INTERNET),
    ] {
        let n = received(sink, to);
        if n > 0 {
            failed.push(format!(
                "{} received {n} of the {PER_TARGET} packets the attacker sent to {to} through h1",
                sink.what
            ));
        }
    }
    for ((iface, lines), probe_seen) in [("uplink ul0", &on_uplink), ("LAN lan0", &on_lan)]
        .into_iter()
        .zip(&probed)
    {
        if !probe_seen {
            failed.push(format!(
                "tcpdump on h1's {iface} did not see h1's own probe to port {PROBE_PORT}: the capture did not work"
            ));
        }
        if !lines.is_empty() {
            failed.push(format!(
                "{} packets from overlay sources left h1 on its {iface}, first: {}",
                lines.len(),
                lines[0]
            ));
        }
    }
    if after.0 < before + forbidden_sent {
        failed.push(format!(
            "h1's destination_not_allowed rose by {} (h2's by {}), not by at least the {forbidden_sent} packets sent to forbidden destinations",
            after.0 - before,
            after.1 - h2_before
        ));
    }
    let rule = table.lines().any(|l| {
        l.contains("iifname \"ovl0\"")
            && l.contains("ip daddr !=")
            && l.contains("10.42.1.0/24")
            && l.trim_end().ends_with("drop")
    });
    if !nft.status.success() || !table.contains("hook forward") || !rule {
        failed.push(format!(
            "h1 has no table inet overlayd whose forward chain drops what comes from ovl0 for anything but 10.42.1.0/24 ({}): {}{}",
            nft.status,
            table.trim(),
            String::from_utf8_lossy(&nft.stderr).trim()
        ));
    }
    if !own_arrived {
        failed.push(format!(
            "of what the attacker sent to h1's own addresses, h1 got {} of {PER_TARGET} and h1-c1 {} of {PER_TARGET}",
            received(&h1_sink, H1_OVERLAY),
            received(&c1_sink, H1_C1)
        ));
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    drop(guard);
    net.down().expect("down");
}
