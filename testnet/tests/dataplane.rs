//! End-to-end tests of the data plane: the real `overlayd` in every host namespace,
//! static peers (forged keys, unknown keys and wireguard-go need configs written by hand),
//! real kernels (root). The 3-host mesh also runs in gossip mode (init, token, join).
//!
//! ```text
//!                         P-ul: br0 (underlay switch; tcpdump on its ports)
//!          +-------------------+-------------------+
//!          |                   |                   |
//!   P-h1 198.18.0.11    P-h2 198.18.0.12    P-h3 198.18.0.13     UDP 51820, WireGuard
//!   ovl0 (overlayd)     ovl0 (overlayd)     ovl0 (overlayd)
//!   br0 10.42.1.1/24    br0 10.42.2.1/24    br0 10.42.3.1/24
//!    |         |         |         |         |         |
//!  h1-c1     h1-c2     h2-c1     h2-c2     h3-c1     h3-c2
//!  .1.2      .1.3      .2.2      .2.3      .3.2      .3.3
//! ```

mod common;

use std::net::IpAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{pings, pings_once, root};
use serde_json::Value;
use testnet::{Mode, Options, Testnet};

const TCP_PORT: &str = "7000";

fn up(hosts: usize, containers: usize) -> Testnet {
    Testnet::up(Options::static_mode(hosts, containers)).expect("testnet up")
}

fn addr(net: &Testnet, name: &str) -> String {
    net.addr(name).expect("addr").to_string()
}

fn json(net: &Testnet, host: usize, what: &str) -> Value {
    let out = net
        .overlayctl(host, &[what, "--json"])
        .expect("run overlayctl");
    assert!(
        out.status.success(),
        "overlayctl {what} on h{host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("overlayctl JSON")
}

/// The entry for host `peer` in host `host`'s `overlayctl peers --json`.
fn peer_entry(net: &Testnet, host: usize, peer: usize) -> Value {
    let key = net.public_key(peer).unwrap().to_string();
    json(net, host, "peers")
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["public_key"] == key.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("h{host} does not list h{peer}"))
}

fn drop_count(entry: &Value, reason: &str) -> u64 {
    entry["drops"][reason].as_u64().unwrap_or(0)
}

fn containers(net: &Testnet) -> Vec<(usize, String)> {
    (1..=net.hosts())
        .flat_map(|i| (1..=net.containers()).map(move |j| (i, format!("h{i}-c{j}"))))
        .collect()
}

/// A TCP server (`nc -lk`) in a container; its output is what clients sent.
fn tcp_server(net: &Testnet, name: &str) -> Child {
    let mut child = net.spawn(name, &["nc", "-lk", TCP_PORT]).expect("start nc");
    let deadline = Instant::now() + Duration::from_secs(5);
    let listening = loop {
        let out = net.exec(name, &["ss", "-Htln", "sport = :7000"]).unwrap();
        if !out.stdout.is_empty() {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !listening {
        let _ = child.kill();
        let _ = child.wait();
        panic!("nc did not listen in {name}");
    }
    child
}

fn tcp_send(net: &Testnet, from: &str, to: &str, message: &str) -> bool {
    let script = format!("printf '%s\\n' '{message}' | nc -N -w 3 {to} {TCP_PORT}");
    net.exec(from, &["sh", "-c", &script])
        .unwrap()
        .status
        .success()
}

fn stop(mut child: Child) -> String {
    // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn full_mesh(mode: Mode, offload: bool) {
    let mut opts = Options::new(3, 2);
    opts.mode = mode;
    opts.offload = Some(offload);
    let net = Testnet::up(opts).expect("testnet up");
    let all = containers(&net);
    // ping: every container to every other container, same host (direct) or not (tunnel)
    for (hi, from) in &all {
        for (hj, to) in &all {
            if from == to {
                continue;
            }
            let target = addr(&net, to);
            assert!(
                pings(&net, from, &target),
                "{from} (h{hi}) cannot ping {to} (h{hj}) at {target}"
            );
        }
    }
    // TCP: every container opens a connection to every container on other hosts
    let servers: Vec<(String, Child)> = all
        .iter()
        .map(|(_, n)| (n.clone(), tcp_server(&net, n)))
        .collect();
    for (hi, from) in &all {
        for (hj, to) in &all {
            if hi == hj {
                continue;
            }
            let msg = format!("from-{from}-to-{to}");
            assert!(
                tcp_send(&net, from, &addr(&net, to), &msg),
                "TCP {from} -> {to} failed"
            );
        }
    }
    for (name, child) in servers {
        let got = stop(child);
        let (server_host, _) = all.iter().find(|(_, n)| *n == name).unwrap();
        for (hi, from) in &all {
            if hi != server_host {
                let msg = format!("from-{from}-to-{name}");
                assert!(
                    got.contains(&msg),
                    "{name} did not receive {msg:?}; got {got:?}"
                );
            }
        }
    }
    // every host sees both peers with a handshake and bytes both ways
    for i in 1..=3 {
        let status = json(&net, i, "status");
        match mode {
            Mode::Static => assert_eq!(status["peer_count"], 2),
            Mode::Gossip => assert_eq!(status["member"]["member_count"], 3, "h{i}: {status}"),
        }
        assert_eq!(status["tun_offload"], offload, "h{i} offload state");
        for j in (1..=3).filter(|j| *j != i) {
            let p = peer_entry(&net, i, j);
            if mode == Mode::Gossip {
                assert_eq!(p["name"], format!("h{j}").as_str(), "{p}");
                assert_eq!(p["state"], "alive", "{p}");
            }
            assert!(
                p["last_handshake_s"].is_number(),
                "h{i} has no handshake with h{j}: {p}"
            );
            assert!(
                p["rx_bytes"].as_u64().unwrap() > 0 && p["tx_bytes"].as_u64().unwrap() > 0,
                "{p}"
            );
        }
    }
    // the private keys never reach the logs
    for i in 1..=3 {
        let key = std::fs::read_to_string(net.key_path(i)).unwrap();
        let log = std::fs::read_to_string(net.log_path(i)).unwrap();
        assert!(
            !log.contains(key.trim()),
            "h{i}'s private key is in its log"
        );
    }
    net.down().expect("down");
}

#[test]
fn three_hosts_full_mesh_ping_and_tcp() {
    if root() {
        full_mesh(Mode::Static, true);
    }
}

#[test]
fn three_hosts_full_mesh_without_offloads() {
    if root() {
        full_mesh(Mode::Static, false);
    }
}

#[test]
fn three_hosts_full_mesh_ping_and_tcp_in_gossip_mode() {
    if root() {
        full_mesh(Mode::Gossip, true);
    }
}

#[test]
fn underlay_carries_only_tunnel_udp_and_never_the_marker() {
    if !root() {
        return;
    }
    let net = up(2, 1);
    let pcap = net.run_dir().join("underlay.pcap");
    let pcap_arg = pcap.display().to_string();
    let mut tcpdump = net
        .spawn(
            "ul",
            &[
                "tcpdump",
                "--immediate-mode",
                "-i",
                "any",
                "-U",
                "-s",
                "0",
                "-w",
                &pcap_arg,
            ],
        )
        .expect("start tcpdump");
    // tcpdump says "listening on" once its capture is attached.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = tcpdump.stderr.take().expect("tcpdump stderr");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("listening on") => break,
            Ok(_) => continue,
            Err(_) => {
                let _ = tcpdump.kill();
                let _ = tcpdump.wait();
                panic!("tcpdump did not start listening");
            }
        }
    }
    let marker = "OVERLAY-PLAINTEXT-MARKER-7f3a9c";
    let server = tcp_server(&net, "h2-c1");
    assert!(tcp_send(
        &net,
        "h1-c1",
        &addr(&net, "h2-c1"),
        &marker.repeat(20)
    ));
    // and in ICMP payloads: ping -p fills the payload with a pattern
    let ok = net
        .exec(
            "h1-c1",
            &[
                "ping",
                "-c3",
                "-i",
                "0.2",
                "-p",
                "4f564c4d41524b4552",
                &addr(&net, "h2-c1"),
            ],
        )
        .unwrap();
    assert!(ok.status.success());
    let got = stop(server);
    assert!(got.contains(marker), "the marker did not arrive: {got:?}");
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(tcpdump.id() as i32, libc::SIGINT) };
    tcpdump.wait().unwrap();
    let said: Vec<String> = rx.try_iter().collect();
    eprintln!("tcpdump: {said:?}");
    let bytes = std::fs::read(&pcap).unwrap();
    for needle in [marker.as_bytes(), b"OVLMARKER".as_slice()] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "plaintext on the underlay"
        );
    }
    let read = |filter: &str| {
        let out = Command::new("tcpdump")
            .args(["-nn", "-r", &pcap_arg, filter])
            .output()
            .expect("tcpdump -r");
        assert!(
            out.status.success(),
            "tcpdump -r: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tunnel = read("udp src port 51820 and udp dst port 51820");
    assert!(
        tunnel.lines().count() >= 4,
        "no tunnel traffic captured ({} bytes of pcap); all of it:\n{}",
        bytes.len(),
        read("")
    );
    // Every IPv4 packet is tunnel UDP between the hosts' overlay ports, except the IGMP
    // reports the switch's own bridge sends to link-local multicast when it comes up.
    let other = read(
        "ip and not (udp src port 51820 and udp dst port 51820) and not (igmp and dst net 224.0.0.0/24)",
    );
    assert!(
        other.trim().is_empty(),
        "IPv4 traffic other than the tunnel on the underlay:\n{other}"
    );
    net.down().unwrap();
}

#[test]
fn forged_source_address_gets_nothing_through_and_is_counted() {
    if !root() {
        return;
    }
    let net = up(3, 1);
    let target = addr(&net, "h3-c1");
    assert!(pings(&net, "h1-c1", &target));
    let before = drop_count(&peer_entry(&net, 3, 1), "source_not_allowed");
    // h1-c1 claims an address of h2's subnet, then one of no host's.
    for sysctl in [
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.br0.rp_filter=0",
    ] {
        net.exec("h1", &["sysctl", "-qw", sysctl]).unwrap();
    }
    for forged in ["10.42.2.77", "10.42.200.1"] {
        let out = net
            .exec(
                "h1-c1",
                &["ip", "addr", "add", &format!("{forged}/32"), "dev", "eth0"],
            )
            .unwrap();
        assert!(out.status.success());
        let ping = net
            .exec(
                "h1-c1",
                &["ping", "-c3", "-i", "0.2", "-W1", "-I", forged, &target],
            )
            .unwrap();
        assert!(
            !ping.status.success(),
            "a forged source from {forged} got an answer"
        );
    }
    let after = drop_count(&peer_entry(&net, 3, 1), "source_not_allowed");
    assert!(
        after >= before + 6,
        "source_not_allowed went from {before} to {after}"
    );
    // the honest source still works
    assert!(pings_once(&net, "h1-c1", &target));
    net.down().unwrap();
}

#[test]
fn host_with_unknown_key_gets_nothing_through() {
    if !root() {
        return;
    }
    let mut opts = Options::static_mode(3, 1);
    // h1 and h2 do not know h3; h3 knows them (it has their keys and endpoints).
    opts.configure = Some(Box::new(|i, cfg| {
        if i != 3 {
            cfg.peers.retain(|p| p.host != 3);
        }
    }));
    let net = Testnet::up(opts).expect("up");
    assert!(pings(&net, "h1-c1", &addr(&net, "h2-c1")));
    for target in ["h1-c1", "h2-c1"] {
        assert!(
            !pings_once(&net, "h3-c1", &addr(&net, target)),
            "h3 reached {target}"
        );
    }
    let drops = &json(&net, 1, "status")["drops"];
    assert!(
        drops["unknown_peer"].as_u64().unwrap_or(0) > 0,
        "h1 did not count the stranger: {drops}"
    );
    net.down().unwrap();
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Reply timestamps from `ping -D` output.
fn reply_times(ping_output: &str) -> Vec<f64> {
    ping_output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

/// Runs `ping -D -i 0.05` from `from` to `to` for `seconds`, calling `fault` after
/// `fault_after` seconds; returns (time of the fault, reply timestamps).
fn ping_through_fault(
    net: &mut Testnet,
    from: &str,
    to: &str,
    seconds: u32,
    fault_after: Duration,
    fault: impl FnOnce(&mut Testnet),
) -> (f64, Vec<f64>) {
    let child = net
        .spawn(
            from,
            &[
                "ping",
                "-D",
                "-n",
                "-i",
                "0.05",
                "-W",
                "1",
                "-w",
                &seconds.to_string(),
                to,
            ],
        )
        .expect("start ping");
    std::thread::sleep(fault_after);
    let at = now_s();
    fault(net);
    let out = child.wait_with_output().expect("ping");
    (at, reply_times(&String::from_utf8_lossy(&out.stdout)))
}

fn assert_resumed_within(what: &str, at: f64, replies: &[f64], limit: f64) {
    assert!(
        replies.iter().any(|t| *t < at),
        "{what}: no replies before the fault"
    );
    let first_after = replies.iter().copied().find(|t| *t > at);
    let Some(first) = first_after else {
        panic!("{what}: traffic never resumed");
    };
    let gap = first - at;
    eprintln!("{what}: traffic resumed {gap:.2} s after the fault");
    assert!(
        gap <= limit,
        "{what}: traffic resumed after {gap:.2} s (limit {limit} s)"
    );
}

#[test]
fn roaming_host_is_followed_within_two_seconds() {
    if !root() {
        return;
    }
    let mut net = up(2, 1);
    let target = addr(&net, "h2-c1");
    assert!(pings(&net, "h1-c1", &target));
    let new_addr = "198.18.1.12".parse().unwrap();
    let (at, replies) = ping_through_fault(
        &mut net,
        "h1-c1",
        &target,
        6,
        Duration::from_secs(2),
        |net| net.set_underlay_addr(2, new_addr).expect("move h2"),
    );
    assert_resumed_within("roaming", at, &replies, 2.0);
    // h1 followed by itself: its config is unchanged, its view of h2's endpoint moved
    let endpoint = peer_entry(&net, 1, 2)["endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(endpoint, "198.18.1.12:51820");
    net.down().unwrap();
}

fn restart_case(kill: bool) {
    let mut net = up(2, 1);
    let target = addr(&net, "h2-c1");
    assert!(pings(&net, "h1-c1", &target));
    let (at, replies) = ping_through_fault(
        &mut net,
        "h1-c1",
        &target,
        6,
        Duration::from_secs(1),
        |net| {
            if kill {
                net.kill_daemon(2).expect("kill -9");
            } else {
                net.stop_daemon(2).expect("stop");
                // SIGTERM removed the TUN and the routes it made
                let link = net.exec("h2", &["ip", "link", "show", "ovl0"]).unwrap();
                assert!(!link.status.success(), "ovl0 is still there after SIGTERM");
                let routes = net
                    .exec("h2", &["ip", "route", "show", "10.42.1.0/24"])
                    .unwrap();
                assert!(
                    routes.stdout.is_empty(),
                    "routes left: {}",
                    String::from_utf8_lossy(&routes.stdout)
                );
            }
            net.start_daemon(2).expect("start again");
        },
    );
    assert_resumed_within(
        if kill {
            "kill -9 and restart"
        } else {
            "restart"
        },
        at,
        &replies,
        2.0,
    );
    net.down().unwrap();
}

#[test]
fn restarted_daemon_resumes_within_two_seconds() {
    if root() {
        restart_case(false);
    }
}

#[test]
fn crashed_and_restarted_daemon_resumes_within_two_seconds() {
    if root() {
        restart_case(true);
    }
}

#[test]
fn junk_at_the_udp_port_is_counted_and_the_daemon_keeps_serving() {
    if !root() {
        return;
    }
    let mut net = up(2, 1);
    let target = addr(&net, "h2-c1");
    assert!(pings(&net, "h1-c1", &target));
    let h2: IpAddr = net.underlay_addr(2).unwrap().into();
    // Random datagrams of every length (without QUIC's fixed bit 0x40: with one port, the
    // default, those are QUIC's and go to quinn), then every message type truncated at every
    // length, then QUIC-looking junk (the router's in the two-port layout).
    let script = format!(
        "import os, random, socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         dst = ('{h2}', 51820)\n\
         for _ in range(3000):\n    b = bytearray(os.urandom(random.randint(1, 1500)))\n    b[0] &= 0xbf\n    s.sendto(b, dst)\n\
         for t in (1, 2, 3, 4):\n    for n in range(0, 160, 2):\n        s.sendto(bytes([t, 0, 0, 0]) + os.urandom(n), dst)\n\
         for _ in range(1000):\n    s.sendto(bytes([0x40 | random.randint(0, 255)]) + os.urandom(random.randint(0, 1400)), dst)\n"
    );
    let started = Instant::now();
    let out = net
        .exec("h1", &["python3", "-c", &script])
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(net.daemon_alive(2), "overlayd died on junk input");
    assert!(
        pings(&net, "h1-c1", &target),
        "the tunnel stopped working after junk input"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let dropped = loop {
        let drops = json(&net, 2, "status")["drops"].clone();
        let total: u64 = drops
            .as_object()
            .unwrap()
            .values()
            .filter_map(Value::as_u64)
            .sum();
        if total >= 3000 || Instant::now() > deadline {
            break total;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(dropped >= 3000, "only {dropped} drops counted");
    let log = std::fs::read_to_string(net.log_path(2)).unwrap();
    let lines = log.lines().filter(|l| l.contains("dropped packet")).count();
    let seconds = started.elapsed().as_secs() as usize + 2;
    assert!(
        lines <= seconds * 10,
        "{lines} drop log lines in {seconds} s: not rate-limited"
    );
    net.down().unwrap();
}

#[test]
fn stock_wireguard_go_peer_interoperates() {
    if !root() {
        return;
    }
    if Command::new("wireguard-go")
        .arg("--version")
        .output()
        .is_err()
        || Command::new("wg").arg("--version").output().is_err()
    {
        panic!(
            "wireguard-go and wg are needed (apt-get install wireguard-go wireguard-tools; scripts/setup does)"
        );
    }
    let mut net = up(2, 1);
    net.stop_daemon(2).unwrap();
    // h2 becomes a stock WireGuard host with the same key, port and subnet.
    let ifname = format!("wg{}", net.prefix());
    let ifname = &ifname[..ifname.len().min(15)];
    let sock = format!("/var/run/wireguard/{ifname}.sock");
    let mut wggo = net
        .command("h2", &["wireguard-go", "-f", ifname])
        .unwrap()
        .env("WG_PROCESS_FOREGROUND", "1")
        .spawn()
        .expect("start wireguard-go");
    let cleanup = |wggo: &mut Child| {
        let _ = wggo.kill();
        let _ = wggo.wait();
        let _ = std::fs::remove_file(&sock);
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::path::Path::new(&sock).exists() {
            assert!(Instant::now() < deadline, "wireguard-go did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let key = net.key_path(2).display().to_string();
        let h1_key = net.public_key(1).unwrap().to_string();
        let run = |args: &[&str]| {
            let out = net.exec("h2", args).unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "wg",
            "set",
            ifname,
            "private-key",
            &key,
            "listen-port",
            "51820",
            "peer",
            &h1_key,
            "endpoint",
            "198.18.0.11:51820",
            "allowed-ips",
            "10.42.1.0/24",
        ]);
        run(&["ip", "addr", "add", "10.42.2.1/32", "dev", ifname]);
        run(&["ip", "link", "set", ifname, "mtu", "1420", "up"]);
        run(&["ip", "route", "add", "10.42.1.0/24", "dev", ifname]);
        // h1 still holds the session of h2's stopped overlayd and would send on it until
        // WireGuard's timers give up on it (15 s without an answer), as any WireGuard peer
        // would; and it takes wireguard-go's initiations for replays meanwhile (boringtun's
        // TAI64N stamps run 27 s ahead of wireguard-go's, see the policy test). A restart
        // of h1 handshakes with its peers at once, as after any restart.
        net.restart_daemon(1).unwrap();
        assert!(
            pings(&net, "h1-c1", &addr(&net, "h2-c1")),
            "overlayd -> wireguard-go failed"
        );
        assert!(
            pings(&net, "h2-c1", &addr(&net, "h1-c1")),
            "wireguard-go -> overlayd failed"
        );
        let server = tcp_server(&net, "h2-c1");
        assert!(tcp_send(&net, "h1-c1", &addr(&net, "h2-c1"), "interop"));
        assert!(stop(server).contains("interop"));
    }));
    cleanup(&mut wggo);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    net.down().unwrap();
}

#[test]
fn peer_without_endpoint_is_reached_once_it_has_initiated() {
    if !root() {
        return;
    }
    let mut opts = Options::static_mode(2, 1);
    // h1 does not know where h2 is; h2 knows h1's endpoint and handshakes at start.
    opts.configure = Some(Box::new(|i, cfg| {
        if i == 1 {
            for p in &mut cfg.peers {
                p.endpoint = None;
            }
        }
    }));
    let net = Testnet::up(opts).expect("up");
    assert!(pings(&net, "h1-c1", &addr(&net, "h2-c1")));
    let endpoint = peer_entry(&net, 1, 2)["endpoint"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        endpoint, "198.18.0.12:51820",
        "h1 learnt h2's endpoint from its handshake"
    );
    net.down().unwrap();
}
