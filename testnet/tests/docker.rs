//! End-to-end test of the Docker network driver and IPAM plugin: real `dockerd`s (Debian's
//! `docker.io`), one per testnet host, each finding the `overlayd` plugin of its own host;
//! real containers from a busybox image made with `docker import` (no registry). Root only;
//! skips without root or without `/usr/sbin/dockerd`, `/usr/bin/docker`, `/bin/busybox`.
//!
//! ```text
//!                       P-ul: br0 (underlay switch; tcpdump here)
//!               +----------------------+----------------------+
//!   P-h1 198.18.0.11 (admin)                    P-h2 198.18.0.12 (member)
//!   overlayd: ovl0, plugin socket D/h1/plugins/overlayd.sock
//!   dockerd (own mount ns: D/h1/plugins bound on /run/docker/plugins,
//!            --data-root/--exec-root/-H/--pidfile under D/h1, --iptables=false --bridge=none)
//!   bridge ovdb<id> 10.42.1.1/24 (network "ovl")   bridge ovdb<id> 10.42.2.1/24
//!      |          |                                    |
//!     c1 .2      c2 .3   (veths ovdh*/ovdc*, MTU 1420)  c3 10.42.2.2
//! ```
//!
//! Both hosts run the same `docker network create -d overlayd --ipam-driver overlayd
//! --subnet 10.42.0.0/16 ovl`; each hands out addresses only from its certificate subnet.
//! testnet's own container bridge `br0` is removed first: the plugin's bridge takes its place.
//!
//! The overlay network is made with an extra range (`overlayctl init --range
//! 10.43.0.0/16`), so host I also holds `10.43.I.0/24`. The segmentation test puts a
//! second Docker network on it:
//!
//! ```text
//!   P-h1                                         P-h2
//!   net a (10.42.0.0/16): ovdb<a> 10.42.1.1      ovdb<a> 10.42.2.1
//!       a1 .2   a3 .3                               a2 10.42.2.2
//!   net b (10.43.0.0/16): ovdb<b> 10.43.1.1      ovdb<b> 10.43.2.1
//!       b1 10.43.1.2                                b2 10.43.2.2
//!   nft table inet overlayd_docker on each host: a <-/-> b, same host and across
//! ```

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::docker::*;
use common::root;

/// One raw plugin call on host `i`'s socket: (HTTP status line, body).
fn plugin_call(run: &Run, i: usize, method: &str, body: &str) -> (String, String) {
    let path = run.root.join(format!("h{i}/plugins/overlayd.sock"));
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("plugin socket");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "POST /{method} HTTP/1.1\r\nHost: \r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read answer");
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[test]
fn docker_containers_on_two_hosts_share_the_encrypted_overlay() {
    if !root() || !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let mut run = up();
    eprintln!("setup (testnet, 2 dockerds, image) took {:?}", t0.elapsed());

    // The plugin answers the handshake.
    let (status, body) = plugin_call(&run, 1, "Plugin.Activate", "");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, r#"{"Implements":["NetworkDriver","IpamDriver"]}"#);

    // ---- bad input before the network exists: clear errors, nothing changes
    let e = run.fails(
        1,
        &[
            "network",
            "create",
            "-d",
            "overlayd",
            "--ipam-driver",
            "overlayd",
            "nosub",
        ],
    );
    assert!(e.contains("overlayd needs --subnet"), "{e}");
    let e = run.fails(1, &[CREATE, &["-o", "foo=bar", "badopt"]].concat());
    assert!(e.contains("unknown option -o foo"), "{e}");
    let e = run.fails(1, &[&CREATE[..7], &["10.44.0.0/16", "elsewhere"]].concat());
    assert!(e.contains("does not contain this host's subnet"), "{e}");

    // ---- the same command on both hosts
    let t = Instant::now();
    for i in 1..=2 {
        run.ok(i, &[CREATE, &["ovl"]].concat());
    }
    eprintln!("network create on both hosts: {:?}", t.elapsed());
    let e = run.fails(1, &[CREATE, &["ovl2"]].concat());
    assert!(e.contains("overlaps") && e.contains("10.42.1.0/24"), "{e}");
    let e = run.fails(1, &[&CREATE[..7], &["10.42.0.0/20", "ovl3"]].concat());
    assert!(e.contains("overlaps"), "{e}");
    let nets = run.ok(1, &["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        !nets.contains("ovl2") && !nets.contains("badopt") && !nets.contains("nosub"),
        "{nets}"
    );

    // ---- containers
    let t = Instant::now();
    for (i, name) in [(1, "c1"), (1, "c2"), (2, "c3")] {
        run.ok(
            i,
            &[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "ovl",
                IMAGE,
                "sleep",
                "1d",
            ],
        );
    }
    eprintln!("3 containers started in {:?}", t.elapsed());
    let (a1, a2, a3) = (run.ip_of(1, "c1"), run.ip_of(1, "c2"), run.ip_of(2, "c3"));
    assert_eq!(
        (a1.as_str(), a2.as_str(), a3.as_str()),
        ("10.42.1.2", "10.42.1.3", "10.42.2.2")
    );
    assert_eq!(
        run.ok(1, &["exec", "c1", "cat", "/sys/class/net/eth0/mtu"]),
        "1420"
    );
    let routes = run.ok(1, &["exec", "c1", "ip", "route"]);
    assert!(routes.contains("default via 10.42.1.1"), "{routes}");
    let e = run.fails(
        1,
        &[
            "run",
            "--rm",
            "--network",
            "ovl",
            "--ip",
            "10.42.2.50",
            IMAGE,
            "true",
        ],
    );
    assert!(e.contains("outside this host's subnet 10.42.1.0/24"), "{e}");
    let e = run.fails(
        1,
        &[
            "run",
            "--rm",
            "--network",
            "ovl",
            "-p",
            "8080:80/sctp",
            IMAGE,
            "true",
        ],
    );
    assert!(
        e.contains("overlayd publishes tcp and udp ports only"),
        "{e}"
    );

    // ---- unknown network or endpoint, asked directly
    let unknown = format!(
        r#"{{"NetworkID":"{}","EndpointID":"{}"}}"#,
        "f".repeat(64),
        "e".repeat(64)
    );
    let (status, body) = plugin_call(&run, 1, "NetworkDriver.Join", &unknown);
    assert!(
        status.contains("500") && body.contains("does not know network"),
        "{status} {body}"
    );
    let (status, body) = plugin_call(&run, 1, "NetworkDriver.EndpointOperInfo", &unknown);
    assert!(
        status.contains("500") && body.contains("does not know network"),
        "{status} {body}"
    );
    let (status, body) = plugin_call(
        &run,
        1,
        "IpamDriver.RequestAddress",
        r#"{"PoolID":"overlayd:10.99.0.0/16","Address":"","Options":null}"#,
    );
    assert!(
        status.contains("500") && body.contains("does not know pool"),
        "{status} {body}"
    );

    // ---- connectivity: across hosts (tunnel) and on one host (bridge)
    let t = Instant::now();
    assert!(
        run.pings(1, "c1", &a3, Duration::from_secs(10)),
        "c1 -> c3 across hosts"
    );
    eprintln!("first cross-host ping after {:?}", t.elapsed());
    assert!(run.pings(2, "c3", &a1, Duration::from_secs(5)), "c3 -> c1");
    assert!(
        run.pings(1, "c1", &a2, Duration::from_secs(5)),
        "c1 -> c2 on one host"
    );
    let via = run.ip(1, &["route", "get", &a2]);
    assert!(
        via.contains("dev ovdb"),
        "same-host traffic must stay on the bridge: {via}"
    );

    // ---- data through the tunnel, and no plaintext on the underlay
    let mut tcpdump = run
        .net
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
                &run.root.join("ul.pcap").display().to_string(),
            ],
        )
        .expect("tcpdump");
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
    loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l.contains("listening on") => break,
            Ok(_) => continue,
            Err(_) => {
                let _ = tcpdump.kill();
                let _ = tcpdump.wait();
                panic!("tcpdump did not start");
            }
        }
    }
    let marker = "DOCKER-OVERLAY-PLAINTEXT-MARKER-51c2";
    run.ok(
        2,
        // stdin held open: busybox nc closes the connection when its stdin ends, and a
        // `docker exec -d` stdin ends at once, which cut a 72 kB transfer at 9,216 bytes.
        &[
            "exec",
            "-d",
            "c3",
            "sh",
            "-c",
            "sleep 60 | nc -l -p 5000 > /tmp/got",
        ],
    );
    // Wait until it listens: port 5000 (0x1388), state 0A, in /proc/net/tcp or tcp6.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !run
        .ok(2, &["exec", "c3", "cat", "/proc/net/tcp", "/proc/net/tcp6"])
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(":1388") && f[3] == "0A"
        })
    {
        assert!(Instant::now() < deadline, "nc -l did not listen in c3");
        std::thread::sleep(Duration::from_millis(50));
    }
    // 72 kB: many segments, so GSO/GRO batches on both sides are crossed.
    let payload = marker.repeat(2000);
    let t = Instant::now();
    let sent = run.docker(
        1,
        &[
            "exec",
            "c1",
            "sh",
            "-c",
            &format!("echo {payload} | nc -w 2 {a3} 5000"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = run.ok(2, &["exec", "c3", "cat", "/tmp/got"]);
        if got.len() >= payload.len() || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        got == payload,
        "the data did not arrive whole: {} of {} bytes, nc said {:?} ({})",
        got.len(),
        payload.len(),
        String::from_utf8_lossy(&sent.stderr),
        sent.status
    );
    eprintln!(
        "moved {} bytes c1 -> c3 with nc in {:?}",
        payload.len(),
        t.elapsed()
    );
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(tcpdump.id() as i32, libc::SIGINT) };
    let _ = tcpdump.wait();
    let pcap = std::fs::read(run.root.join("ul.pcap")).expect("pcap");
    assert!(
        pcap.len() > 7_000,
        "the capture saw no tunnel traffic ({} bytes)",
        pcap.len()
    );
    assert!(
        !pcap.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "plaintext on the underlay"
    );

    // ---- egress: a container reaches a machine on the hosts' LAN that is no member and has
    // no route to the overlay, through its host's masquerade (as on Docker's own bridges);
    // overlay traffic keeps its container source (the peers check it: c1 -> c3 above).
    let lan = "198.19.255.250";
    let outsider = run.outsider(lan);
    assert!(
        run.pings(1, "c1", lan, Duration::from_secs(5)),
        "c1 -> {lan} (a LAN machine outside the overlay) through h1's masquerade"
    );
    let (ok, rules) = run.nft(1, &["list", "chain", "inet", "overlayd_docker", "egress"]);
    assert!(
        ok && rules.contains("masquerade") && !rules.contains("packets 0 "),
        "h1's egress rule did not count the ping:\n{rules}"
    );
    let routes = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-n", &outsider, "route"])
            .output()
            .expect("ip route")
            .stdout,
    )
    .into_owned();
    assert!(
        !routes.contains("10.42."),
        "the outsider must have no route to the overlay: {routes}"
    );

    // ---- -p: the LAN machine reaches a container's port through h1's address
    run.ok(
        1,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "ovl",
            "-p",
            "8080:5000",
            IMAGE,
        ]
        .iter()
        .chain(&PONG_SERVER)
        .copied()
        .collect::<Vec<_>>(),
    );
    let h1 = run
        .net
        .addr("h1")
        .expect("h1's underlay address")
        .to_string();
    let t = Instant::now();
    let mut answer = String::new();
    while t.elapsed() < Duration::from_secs(10) {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &outsider, BUSYBOX, "nc", "-w", "2", &h1, "8080",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("nc from the outsider");
        answer = String::from_utf8_lossy(&out.stdout).into_owned();
        if answer.contains("pong") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        answer.contains("pong"),
        "{lan} -> {h1}:8080 (published by web) got no pong: {answer:?}"
    );
    eprintln!(
        "-p 8080:5000 answered the LAN machine after {:?}",
        t.elapsed()
    );
    let e = run.fails(
        1,
        &[
            "run",
            "-d",
            "--name",
            "web2",
            "--network",
            "ovl",
            "-p",
            "8080:5000",
            IMAGE,
            "sleep",
            "1d",
        ],
    );
    assert!(e.contains("host port 8080/tcp is already published"), "{e}");
    let _ = run.docker(1, &["rm", "-f", "web2"]);
    let e = run.fails(
        1,
        &[
            "run",
            "-d",
            "--name",
            "web3",
            "--network",
            "ovl",
            "-p",
            "5000",
            IMAGE,
            "sleep",
            "1d",
        ],
    );
    assert!(e.contains("without a host port"), "{e}");
    let _ = run.docker(1, &["rm", "-f", "web3"]);
    // Removing a container leaves its neighbours' gateway as it was: the bridge keeps its
    // MAC (a bridge whose MAC was never set takes its lowest port's, and c1's ARP entry for
    // the gateway then pointed nowhere for seconds).
    let mac = || {
        let links = run.ip(1, &["-br", "link"]);
        links
            .lines()
            .find(|l| l.starts_with("ovdb"))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_default()
            .to_owned()
    };
    let before = mac();
    run.ok(1, &["rm", "-f", "web"]);
    assert_eq!(
        mac(),
        before,
        "the bridge's MAC changed with a container's removal"
    );
    let out = run.docker(
        1,
        &[
            "exec", "c1", "ping", "-c", "10", "-i", "0.1", "-W", "1", &a3,
        ],
    );
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let received: u32 = report
        .split(" packets received")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        received >= 8,
        "c1 -> c3 right after another container's removal: {received} of 10 replies\n{report}"
    );
    let (ok, rules) = run.nft(1, &["list", "chain", "inet", "overlayd_docker", "publish"]);
    assert!(
        ok && !rules.contains("dport 8080"),
        "web's port is still forwarded:\n{rules}"
    );

    // ---- restart overlayd while containers run
    // A ping every 0.1 s runs in c1 across the restart; the longest run of missing
    // replies is how long the container was cut off.
    run.ok(
        1,
        &[
            "exec",
            "-d",
            "c1",
            "sh",
            "-c",
            &format!("ping -i 0.1 -w 7 {a3} > /tmp/restart-ping.log 2>&1"),
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    run.net.restart_daemon(1).expect("restart overlayd on h1");
    let ready = t.elapsed();
    std::thread::sleep(Duration::from_secs(7));
    let log = run.ok(1, &["exec", "c1", "cat", "/tmp/restart-ping.log"]);
    let seqs: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split("seq=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    let Some(&last) = seqs.last() else {
        panic!("c1's pings across the restart got no reply at all:\n{log}");
    };
    let longest_gap = seqs.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(1);
    let gap = Duration::from_millis(100 * longest_gap.saturating_sub(1));
    eprintln!(
        "overlayd restart: ready after {ready:?}; c1 -> c3 pings every 0.1 s: {} replies, up to seq {last}, longest outage {gap:?}",
        seqs.len()
    );
    assert!(
        last >= 60,
        "c1 -> c3 did not come back after the overlayd restart: replies stop at seq {last}\n{log}"
    );
    assert!(
        gap <= Duration::from_secs(2),
        "connectivity took {gap:?} to come back (limit 2 s)\n{log}"
    );
    run.ok(
        1,
        &[
            "run",
            "-d",
            "--name",
            "c4",
            "--network",
            "ovl",
            IMAGE,
            "sleep",
            "1d",
        ],
    );
    let a4 = run.ip_of(1, "c4");
    assert_eq!(a4, "10.42.1.4", "a fresh address after the restart");
    assert!(run.pings(1, "c4", &a3, Duration::from_secs(5)), "c4 -> c3");
    assert!(run.pings(1, "c4", &a1, Duration::from_secs(5)), "c4 -> c1");

    // ---- restart dockerd on h1: its containers stop; the network is still there and works
    let t = Instant::now();
    run.dockerds[0].restart();
    eprintln!("dockerd restart on h1 took {:?}", t.elapsed());
    run.ok(1, &["start", "c1", "c4"]);
    let (b1, b4) = (run.ip_of(1, "c1"), run.ip_of(1, "c4"));
    assert_ne!(b1, b4, "two containers, one address");
    assert!(
        run.pings(1, "c1", &a3, Duration::from_secs(5)),
        "c1 -> c3 after dockerd restart"
    );
    run.ok(
        1,
        &[
            "run",
            "-d",
            "--name",
            "c5",
            "--network",
            "ovl",
            IMAGE,
            "sleep",
            "1d",
        ],
    );
    let b5 = run.ip_of(1, "c5");
    assert!(![&b1, &b4].contains(&&b5), "c5 got an address in use: {b5}");
    assert!(run.pings(2, "c3", &b5, Duration::from_secs(5)), "c3 -> c5");

    // ---- a container removed while overlayd is down: dockerd's DeleteEndpoint and
    // ReleaseAddress fail and it only warns, so the address leaked; overlayd frees it when it
    // starts again, once dockerd's API lists no container holding it.
    run.ok(
        1,
        &[
            "run",
            "-d",
            "--name",
            "c6",
            "--network",
            "ovl",
            IMAGE,
            "sleep",
            "1d",
        ],
    );
    let a6 = run.ip_of(1, "c6");
    run.net.stop_daemon(1).expect("stop overlayd on h1");
    let t = Instant::now();
    let out = run.docker(1, &["rm", "-f", "c6"]);
    eprintln!(
        "docker rm -f with overlayd down took {:?} ({})",
        t.elapsed(),
        out.status
    );
    // dockerd may finish removing it just after `rm -f` returns (seen once in CI under
    // load, after its 60 s of plugin retries): wait for it, bounded.
    let gone = Instant::now();
    while run.docker(1, &["inspect", "c6"]).status.success() {
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "c6 is still there 10 s after docker rm -f: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    run.net.start_daemon(1).expect("start overlayd on h1");
    let t = Instant::now();
    let mut reused = None;
    while t.elapsed() < Duration::from_secs(20) {
        let out = run.docker(
            1,
            &[
                "run",
                "-d",
                "--name",
                "c7",
                "--network",
                "ovl",
                "--ip",
                &a6,
                IMAGE,
                "sleep",
                "1d",
            ],
        );
        if out.status.success() {
            reused = Some(t.elapsed());
            break;
        }
        let _ = run.docker(1, &["rm", "-f", "c7"]);
        std::thread::sleep(Duration::from_millis(500));
    }
    let reused = reused.unwrap_or_else(|| {
        panic!("the address {a6} of a container removed while overlayd was down is still held 20 s after overlayd started")
    });
    eprintln!("leaked address {a6} free again {reused:?} after overlayd started");
    assert_eq!(run.ip_of(1, "c7"), a6);
    assert!(run.pings(1, "c7", &a3, Duration::from_secs(5)), "c7 -> c3");

    // ---- 50 create/run/rm cycles leave links and addresses as they were
    let before = run.footprint(1);
    let t = Instant::now();
    for n in 0..50 {
        let out = run.docker(1, &["run", "--rm", "--network", "ovl", IMAGE, "true"]);
        assert!(
            out.status.success(),
            "cycle {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let took = t.elapsed();
    let after = run.footprint(1);
    eprintln!(
        "50 run/rm cycles in {took:?}; links/addresses before {:?} after {:?}",
        (before.0, before.1),
        (after.0, after.1)
    );
    assert_eq!(before, after, "cycles left links or addresses behind");

    // ---- removal leaves nothing of the plugin behind
    for (i, names) in [(1, "c1 c2 c4 c5 c7"), (2, "c3")] {
        let mut args = vec!["rm", "-f"];
        args.extend(names.split(' '));
        run.ok(i, &args);
        run.ok(i, &["network", "rm", "ovl"]);
        let (_, _, ours) = run.footprint(i);
        assert!(ours.is_empty(), "h{i}: links left: {ours:?}");
        let addrs = run.ip(i, &["-o", "-4", "addr"]);
        assert!(
            !addrs.contains(&format!("10.42.{i}.1/24")),
            "h{i}: address left: {addrs}"
        );
        let routes = run.ip(i, &["route"]);
        assert!(
            !routes.contains(&format!("10.42.{i}.0/24")),
            "h{i}: route left: {routes}"
        );
    }
    let state =
        std::fs::read_to_string(run.net.state_dir(1).join("docker.json")).expect("docker.json");
    let state: serde_json::Value = serde_json::from_str(&state).expect("docker.json is JSON");
    for key in ["pools", "networks", "endpoints"] {
        assert!(
            state[key].as_object().is_some_and(|m| m.is_empty()),
            "{key} left in the state: {state}"
        );
    }
    // The network can be made again after its removal.
    run.ok(1, &[CREATE, &["ovl"]].concat());
    assert!(
        run.nft(1, &["list", "table", "inet", "overlayd_docker"]).0,
        "a network has its isolation table"
    );
    run.ok(1, &["network", "rm", "ovl"]);
    assert!(
        !run.nft(1, &["list", "table", "inet", "overlayd_docker"]).0,
        "the isolation table goes with the last network"
    );
    eprintln!("whole test took {:?}", t0.elapsed());
}

#[test]
fn docker_networks_on_different_ranges_cannot_reach_each_other() {
    if !root() || !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let mut run = up();
    eprintln!("setup (testnet, 2 dockerds, image) took {:?}", t0.elapsed());

    // ---- the same two commands on both hosts: one network per range of the overlay
    for i in 1..=2 {
        run.ok(i, &[CREATE, &["a"]].concat());
        run.ok(i, &[&CREATE[..7], &[EXTRA_RANGE, "b"]].concat());
    }
    let e = run.fails(1, &[&CREATE[..7], &["10.42.0.0/15", "both"]].concat());
    assert!(
        e.contains("contains several of this host's subnets (10.42.1.0/24, 10.43.1.0/24)"),
        "{e}"
    );
    let e = run.fails(1, &[&CREATE[..7], &["10.43.0.0/20", "b2"]].concat());
    assert!(e.contains("overlaps") && e.contains("10.43.1.0/24"), "{e}");
    let (ok, rules) = run.nft(1, &["list", "table", "inet", "overlayd_docker"]);
    assert!(ok, "no isolation table on h1");
    for needle in ["ip daddr != 10.42.0.0/16", "ip saddr != 10.43.0.0/16"] {
        assert!(rules.contains(needle), "{needle} missing in\n{rules}");
    }

    // ---- containers, each answering `pong` on TCP 5000
    let t = Instant::now();
    for (i, name, net) in [
        (1, "a1", "a"),
        (1, "a3", "a"),
        (1, "b1", "b"),
        (2, "a2", "a"),
        (2, "b2", "b"),
    ] {
        run.ok(
            i,
            &["run", "-d", "--name", name, "--network", net, IMAGE]
                .iter()
                .chain(&PONG_SERVER)
                .copied()
                .collect::<Vec<_>>(),
        );
    }
    eprintln!("5 containers started in {:?}", t.elapsed());
    let ip = |i, c| run.ip_of(i, c);
    let (a1, a3, b1, a2, b2) = (
        ip(1, "a1"),
        ip(1, "a3"),
        ip(1, "b1"),
        ip(2, "a2"),
        ip(2, "b2"),
    );
    assert_eq!(
        [&a1, &a3, &b1, &a2, &b2],
        [
            "10.42.1.2",
            "10.42.1.3",
            "10.43.1.2",
            "10.42.2.2",
            "10.43.2.2"
        ]
    );

    // ---- the same network reaches itself: on one host and across hosts, both ways
    let t = Instant::now();
    assert!(
        run.pings(1, "a1", &a2, Duration::from_secs(10)),
        "a1 -> a2 (across)"
    );
    assert!(
        run.pings(2, "b2", &b1, Duration::from_secs(10)),
        "b2 -> b1 (across)"
    );
    eprintln!(
        "same-network pings across hosts answered after {:?}",
        t.elapsed()
    );
    for (i, c, to, what) in [
        (2, "a2", &a1, "a2 -> a1 (across)"),
        (1, "b1", &b2, "b1 -> b2 (across)"),
        (1, "a1", &a3, "a1 -> a3 (same host)"),
        (1, "a3", &a1, "a3 -> a1 (same host)"),
    ] {
        assert!(run.pings(i, c, to, Duration::from_secs(5)), "{what}");
    }
    for (i, c, to, what) in [
        (1, "a1", &a2, "a1 -> a2"),
        (2, "a2", &a1, "a2 -> a1"),
        (2, "b2", &b1, "b2 -> b1"),
        (1, "b1", &b2, "b1 -> b2"),
        (1, "a3", &a1, "a3 -> a1"),
    ] {
        assert!(run.tcp(i, c, to), "TCP {what} must work");
    }

    // ---- different networks never: same host and across, both ways, ping and TCP
    let t = Instant::now();
    for (i, c, to, what) in [
        (1, "a1", &b1, "a1 -> b1 (same host)"),
        (1, "b1", &a1, "b1 -> a1 (same host)"),
        (1, "a1", &b2, "a1 -> b2 (across)"),
        (2, "b2", &a1, "b2 -> a1 (across)"),
        (1, "b1", &a2, "b1 -> a2 (across)"),
        (2, "a2", &b1, "a2 -> b1 (across)"),
    ] {
        let ping = run.docker(i, &["exec", c, "ping", "-c1", "-W1", to]);
        assert!(!ping.status.success(), "ping {what} must not answer");
        assert!(!run.tcp(i, c, to), "TCP {what} must not connect");
    }
    eprintln!("12 refused probes took {:?}", t.elapsed());
    let (_, rules) = run.nft(1, &["list", "table", "inet", "overlayd_docker"]);
    let dropped: u64 = rules
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "packets")
        .filter_map(|w| w[1].parse::<u64>().ok())
        .sum();
    assert!(dropped > 0, "the isolation rules dropped nothing:\n{rules}");

    // ---- the rules survive an overlayd restart (rebuilt from docker.json)
    run.net.restart_daemon(1).expect("restart overlayd on h1");
    assert!(
        run.pings(1, "a1", &a2, Duration::from_secs(10)),
        "a1 -> a2 after restart"
    );
    let ping = run.docker(1, &["exec", "a1", "ping", "-c1", "-W1", &b1]);
    assert!(
        !ping.status.success(),
        "a1 -> b1 after restart must not answer"
    );
    assert!(
        !run.tcp(1, "a1", &b2),
        "TCP a1 -> b2 after restart must not connect"
    );

    // ---- removing one network keeps the other isolated; the last one takes the table
    for i in 1..=2 {
        let names: &[&str] = if i == 1 {
            &["a1", "a3", "b1"]
        } else {
            &["a2", "b2"]
        };
        run.ok(i, &[&["rm", "-f"][..], names].concat());
        run.ok(i, &["network", "rm", "b"]);
    }
    let (ok, rules) = run.nft(1, &["list", "table", "inet", "overlayd_docker"]);
    assert!(
        ok && rules.contains("10.42.0.0/16") && !rules.contains("10.43.0.0/16"),
        "{rules}"
    );
    for i in 1..=2 {
        run.ok(i, &["network", "rm", "a"]);
        assert!(
            !run.nft(i, &["list", "table", "inet", "overlayd_docker"]).0,
            "h{i}: the isolation table outlived the last network"
        );
    }
    eprintln!("segmentation test took {:?}", t0.elapsed());
}
