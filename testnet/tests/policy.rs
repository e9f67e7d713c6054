//! End-to-end: the network policy (issue 16). One policy, signed by the network's CA,
//! spread to every member and enforced on both sides of every tunnel, statefully. Real
//! daemons, real kernels (root).
//!
//! ```text
//!                      P-ul: br0 (underlay switch)
//!      +-----------------+-----------------+-----------------+
//!      |                 |                 |                 |
//!  P-h1 .11          P-h2 .12          P-h3 .13          P-h4 .14        198.18.0.x/15
//!  admin (CA),       group web         group web         group db
//!  no groups
//!  br0 10.42.1.1/24  br0 10.42.2.1/24  br0 10.42.3.1/24  br0 10.42.4.1/24
//!    h1-c1 .2          h2-c1 .2          h3-c1 .2          h4-c1 .2
//! ```
//!
//! The policy: web may reach db on tcp/5432, tcp/5433, udp/20000-60000 and ping it;
//! nothing else. Checked: what it allows works both ways (replies), what it does not is
//! dropped on the sending host (counted as `policy_denied`); a policy whose own tests fail
//! is refused and changes nothing; a new version cuts a live connection it no longer
//! allows within 5 s and keeps one it still allows; a member restarted while the policy
//! changed never lets through what the policy denies; a flood of 200,000 UDP flows leaves
//! the flow table at its bound (`[control] policy_flows`) and other flows working.

mod common;
#[path = "common/hostile.rs"]
mod hostile;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{enter_netns, pings, pings_once, root};
use hostile::{Credentials, Link, member_config, run_in_netns};
use overlayd::control::msg::{Bundle, Request, Response};
use protocol::api::PolicyShown;
use protocol::policy::SignedPolicy;
use testnet::{Options, Testnet};

const POLICY: &str = r#"
[[allow]]
from  = ["group:web"]
to    = ["group:db"]
ports = ["tcp/5432", "tcp/5433", "udp/20000-60000", "icmp"]

[[test]]
from   = "group:web"
to     = "group:db"
port   = "tcp/5432"
expect = "allow"

[[test]]
from   = "group:db"
to     = "group:web"
port   = "tcp/80"
expect = "deny"
"#;

/// The same, without tcp/5433: the second version.
const POLICY_V2: &str = r#"
[[allow]]
from  = ["group:web"]
to    = ["group:db"]
ports = ["tcp/5432", "udp/20000-60000", "icmp"]
"#;

/// The flows each host tracks per peer at most (`[control] policy_flows`), below the
/// 200,000 of the flood so that the bound is reached.
const FLOW_BOUND: usize = 10_000;

/// How long a policy may take to reach every member and be applied.
const SPREAD: Duration = Duration::from_secs(5);

fn groups_of(i: usize) -> &'static str {
    match i {
        2 | 3 => "web",
        _ => "db",
    }
}

/// h1 inits; h2..h4 join with tokens that give them their groups.
fn network() -> Testnet {
    let net = Testnet::up(Options {
        members: Some(1),
        configure: Some(Box::new(|_, config| {
            if let Some(control) = config.control.as_mut() {
                control.extra.push(format!("policy_flows = {FLOW_BOUND}"));
            }
        })),
        ..Options::new(4, 1)
    })
    .expect("testnet up");
    for i in 2..=4 {
        let out = net
            .overlayctl_ok(
                1,
                &["token", "create", "--ttl", "10m", "--groups", groups_of(i)],
            )
            .expect("token create");
        let token = String::from_utf8(out.stdout).expect("UTF-8 token");
        let joined = net.join_with(i, token.trim()).expect("join");
        assert!(
            joined.status.success(),
            "h{i} join: {}",
            String::from_utf8_lossy(&joined.stderr)
        );
    }
    net.wait_converged(&[1, 2, 3, 4], Duration::from_secs(30))
        .expect("the four members see each other");
    net
}

fn write_policy(net: &Testnet, name: &str, text: &str) -> String {
    let path = net.run_dir().join(name);
    std::fs::write(&path, text).expect("write the policy file");
    path.display().to_string()
}

fn shown(net: &Testnet, i: usize) -> PolicyShown {
    let out = net
        .overlayctl_ok(i, &["policy", "show", "--json"])
        .expect("policy show");
    serde_json::from_slice(&out.stdout).expect("policy show --json")
}

/// Waits until every member runs `version`; returns how long it took.
fn wait_version(net: &Testnet, version: u64) -> Duration {
    let started = Instant::now();
    loop {
        let behind: Vec<usize> = (1..=4)
            .filter(|&i| shown(net, i).version != Some(version))
            .collect();
        if behind.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < SPREAD,
            "policy version {version} not in force on h{behind:?} after {SPREAD:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `policy_denied` drops that host `i` counts for its peer `peer`.
fn denied(net: &Testnet, i: usize, peer: usize) -> u64 {
    let name = Testnet::member_name(peer);
    net.peers_json(i)
        .expect("peers")
        .iter()
        .find(|p| p.name.as_deref() == Some(name.as_str()))
        .and_then(|p| {
            p.drops
                .get(&protocol::drops::DropReason::PolicyDenied)
                .copied()
        })
        .unwrap_or(0)
}

fn container_addr(net: &Testnet, host: usize) -> std::net::IpAddr {
    net.addr(&format!("h{host}-c1")).expect("container address")
}

/// Whether a TCP connection from `from`'s container to `to`'s on `port` opens within 2 s
/// (a listener runs there for the check).
fn tcp_opens(net: &Testnet, from: usize, to: usize, port: u16) -> bool {
    let server_ns = net.container_ns(to, 1);
    let listening = Arc::new(AtomicBool::new(false));
    let ready = listening.clone();
    let server = std::thread::spawn(move || {
        enter_netns(&server_ns);
        let l = TcpListener::bind(("0.0.0.0", port)).expect("listen");
        l.set_nonblocking(true).expect("nonblocking");
        ready.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if l.accept().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    while !listening.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let client_ns = net.container_ns(from, 1);
    let addr = SocketAddr::new(container_addr(net, to), port);
    let opened = std::thread::spawn(move || {
        enter_netns(&client_ns);
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
    })
    .join()
    .expect("client thread");
    server.join().expect("server thread");
    opened
}

/// A TCP connection that carries a few bytes every 100 ms from h2-c1 to h4-c1 on `port`;
/// `last` is when the server last received some (ms since `epoch`).
struct Stream {
    last: Arc<AtomicU64>,
    epoch: Instant,
    stop: Arc<AtomicBool>,
}

impl Stream {
    fn start(net: &Testnet, port: u16) -> Stream {
        let epoch = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (server_ns, client_ns) = (net.container_ns(4, 1), net.container_ns(2, 1));
        let addr = SocketAddr::new(container_addr(net, 4), port);
        let (seen, done) = (last.clone(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            enter_netns(&server_ns);
            let l = TcpListener::bind(("0.0.0.0", port)).expect("listen");
            tx.send(()).expect("ready");
            let (mut s, _) = l.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_millis(200))).ok();
            let mut buf = [0u8; 256];
            while !done.load(Ordering::SeqCst) {
                match s.read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => seen.store(epoch.elapsed().as_millis() as u64, Ordering::SeqCst),
                    Err(_) => {}
                }
            }
        });
        rx.recv().expect("server ready");
        let done = stop.clone();
        std::thread::spawn(move || {
            enter_netns(&client_ns);
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect");
            s.set_write_timeout(Some(Duration::from_millis(500))).ok();
            while !done.load(Ordering::SeqCst) {
                let _ = s.write_all(b"tick\n");
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Stream { last, epoch, stop }
    }

    /// Whether the server received something in the last `within`.
    fn flowing(&self, within: Duration) -> bool {
        let last = Duration::from_millis(self.last.load(Ordering::SeqCst));
        self.epoch.elapsed().saturating_sub(last) < within
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn one_signed_policy_decides_who_reaches_whom_on_every_host() {
    if !root() {
        return;
    }
    let mut net = network();
    let (db, web) = (
        container_addr(&net, 4).to_string(),
        container_addr(&net, 2).to_string(),
    );

    // No policy: everyone reaches everyone.
    assert!(
        pings(&net, "h4-c1", &web),
        "before any policy, db pings web"
    );
    assert_eq!(shown(&net, 2).version, None);

    // A policy whose own test fails is refused, naming the test; nothing changes.
    let wrong = POLICY.replace(
        "port   = \"tcp/80\"\nexpect = \"deny\"",
        "port   = \"tcp/80\"\nexpect = \"allow\"",
    );
    let file = write_policy(&net, "wrong.toml", &wrong);
    let refused = net
        .overlayctl(1, &["policy", "set", &file])
        .expect("run overlayctl");
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    eprintln!("refused: {said}");
    assert!(!refused.status.success());
    assert!(said.contains("test at line 13 failed"), "{said}");
    assert_eq!(shown(&net, 1).version, None);
    // A malformed file: a usage error naming the line, before any daemon is asked.
    let file = write_policy(
        &net,
        "bad.toml",
        "[[allow]]\nfrom = [\"grp:web\"]\nto = [\"any\"]\nports = [\"any\"]\n",
    );
    let bad = net
        .overlayctl(1, &["policy", "set", &file])
        .expect("run overlayctl");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("policy line 2"));
    // Only an admin signs policies.
    let file = write_policy(&net, "policy.toml", POLICY);
    let member = net
        .overlayctl(2, &["policy", "set", &file])
        .expect("run overlayctl");
    assert!(!member.status.success(), "a member set the policy");

    net.overlayctl_ok(1, &["policy", "set", &file])
        .expect("policy set on the admin");
    let took = wait_version(&net, 1);
    eprintln!(
        "policy version 1 in force everywhere after {:.2} s",
        took.as_secs_f64()
    );

    // web -> db: ping and tcp/5432 work (replies come back); tcp/22 does not.
    assert!(pings(&net, "h2-c1", &db), "web pings db");
    assert!(tcp_opens(&net, 2, 4, 5432), "web opens tcp/5432 on db");
    let before = denied(&net, 2, 4);
    assert!(!tcp_opens(&net, 2, 4, 22), "web opened tcp/22 on db");
    assert!(
        denied(&net, 2, 4) > before,
        "h2 did not count the denied SYN to h4"
    );
    // db -> web: denied on db, the sender.
    let before = denied(&net, 4, 2);
    assert!(!pings_once(&net, "h4-c1", &web), "db pinged web");
    assert!(
        denied(&net, 4, 2) > before,
        "h4 did not count its denied ping to h2"
    );
    // The admin has no group: nothing reaches it, it reaches nothing.
    assert!(!pings_once(&net, "h1-c1", &db));
    let check = net
        .overlayctl_ok(3, &["policy", "check", "node:h3", &db, "tcp/5432"])
        .expect("policy check");
    let line = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(
        line.starts_with("allow: ") && line.contains("line 2"),
        "{line}"
    );

    // A member (h4's credentials) pushes h2 a policy another CA signed, and one the
    // network's CA signed as version 1 again with other rules (a replay of an older
    // version): both are refused with a log line each, and h2 keeps its version 1.
    forged_and_older_pushes_change_nothing(&net);

    // A new version cuts the connection on 5433 within 5 s, keeps the one on 5432.
    let kept = Stream::start(&net, 5432);
    let cut = Stream::start(&net, 5433);
    std::thread::sleep(Duration::from_millis(500));
    assert!(kept.flowing(Duration::from_millis(400)) && cut.flowing(Duration::from_millis(400)));
    let file = write_policy(&net, "v2.toml", POLICY_V2);
    let set_at = Instant::now();
    net.overlayctl_ok(1, &["policy", "set", &file])
        .expect("policy set v2");
    wait_version(&net, 2);
    while cut.flowing(Duration::from_millis(400)) {
        assert!(
            set_at.elapsed() < SPREAD,
            "the 5433 connection still flows 5 s after v2"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "tcp/5433 cut {:.2} s after policy set",
        set_at.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        kept.flowing(Duration::from_millis(400)),
        "the 5432 connection stopped"
    );
    drop((kept, cut));

    // A member restarted while the policy changed never lets a denied flow through.
    net.stop_daemon(4).expect("stop h4");
    let file = write_policy(&net, "v3.toml", &format!("{POLICY_V2}\n# v3\n"));
    net.overlayctl_ok(1, &["policy", "set", &file])
        .expect("policy set v3");
    // db -> web on udp/7: denied by every version. A listener on web counts what arrives
    // while db's daemon comes back.
    let listening = Arc::new(AtomicBool::new(true));
    let leaked = Arc::new(AtomicU64::new(0));
    let listener = {
        let (ns, on, count) = (net.container_ns(2, 1), listening.clone(), leaked.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            enter_netns(&ns);
            let s = UdpSocket::bind("0.0.0.0:7").expect("bind udp/7");
            s.set_read_timeout(Some(Duration::from_millis(100))).ok();
            tx.send(()).expect("ready");
            let mut buf = [0u8; 64];
            while on.load(Ordering::SeqCst) {
                if s.recv(&mut buf).is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        rx.recv().expect("listener ready");
        handle
    };
    let probing = Arc::new(AtomicBool::new(true));
    let prober = {
        let (ns, web, on) = (net.container_ns(4, 1), web.clone(), probing.clone());
        std::thread::spawn(move || {
            enter_netns(&ns);
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            while on.load(Ordering::SeqCst) {
                let _ = s.send_to(b"probe", (web.as_str(), 7));
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    net.start_daemon(4).expect("restart h4");
    wait_version(&net, 3);
    std::thread::sleep(Duration::from_secs(1));
    probing.store(false, Ordering::SeqCst);
    prober.join().expect("prober");
    listening.store(false, Ordering::SeqCst);
    listener.join().expect("listener");
    assert_eq!(
        leaked.load(Ordering::SeqCst),
        0,
        "denied probes reached web while the restarted db came back"
    );
    assert!(pings(&net, "h2-c1", &db), "web pings the restarted db");

    // A flood of 200,000 UDP flows from web to db: the table stays at its bound, RSS flat,
    // other flows keep working.
    let pid = net.daemon_pid(4).expect("h4's pid");
    let rss_before = rss_kib(pid);
    let (ns, dst) = (net.container_ns(2, 1), container_addr(&net, 4));
    std::thread::spawn(move || {
        enter_netns(&ns);
        // Five source ports times 40,000 destination ports: 200,000 flows.
        let sockets: Vec<UdpSocket> = (0..5)
            .map(|_| UdpSocket::bind("0.0.0.0:0").expect("bind"))
            .collect();
        for i in 0..200_000u32 {
            let port = 20_000 + (i % 40_000) as u16;
            let s = &sockets[(i / 40_000) as usize];
            let _ = s.send_to(&i.to_be_bytes(), (dst, port));
        }
    })
    .join()
    .expect("flood");
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = rss_kib(pid);
    let flows = shown(&net, 4).tracked_flows;
    eprintln!("after 200,000 flows: h4 tracks {flows} flows, RSS {rss_before} -> {rss_after} KiB");
    assert!(
        flows as usize <= FLOW_BOUND + 64,
        "{flows} tracked flows, above the bound {FLOW_BOUND} (and the few of other peers)"
    );
    assert!(
        flows as usize >= FLOW_BOUND / 2,
        "the flood never filled the table: {flows}"
    );
    assert!(
        rss_after < rss_before + 40 * 1024,
        "RSS grew {} KiB",
        rss_after - rss_before
    );
    assert!(pings(&net, "h3-c1", &db), "web (h3) still pings db");
    assert!(
        tcp_opens(&net, 2, 4, 5432),
        "web still opens tcp/5432 on db"
    );
}

/// h4, a member, pushes h2 a policy signed by another CA (version 99) and one signed by
/// the network's CA (read from h1's state directory) as version 1 with other rules: h2's
/// policy stays as it was, and its log says why for each.
fn forged_and_older_pushes_change_nothing(net: &Testnet) {
    let h4 = Credentials::read(&net.state_dir(4)).expect("h4's credentials");
    let allow_all = "[[allow]]\nfrom = [\"any\"]\nto = [\"any\"]\nports = [\"any\"]\n";
    let forged = SignedPolicy::sign(
        &keys::CaKey::generate(),
        &h4.network.network,
        99,
        0,
        allow_all,
    )
    .expect("a policy signs");
    let ca = overlayd::control::state::StateDir::open(&net.state_dir(1))
        .and_then(|d| d.ca_key())
        .expect("h1's state directory")
        .expect("h1, the admin, holds the CA key");
    let older =
        SignedPolicy::sign(&ca, &h4.network.network, 1, 0, allow_all).expect("a policy signs");
    let config = member_config(&h4.identity());
    let to = SocketAddr::new(net.addr("h2").expect("h2's address"), testnet::CONTROL_PORT);
    let answers: Vec<String> = run_in_netns(&net.host_ns(4), move || async move {
        let link = Link::open(config, to)
            .await
            .expect("a member connection to h2");
        let mut answers = Vec::new();
        for policy in [forged, older] {
            let push = Request::Push(Bundle {
                policy: Some(policy.to_bytes()),
                ..Bundle::default()
            });
            answers.push(format!(
                "{:?}",
                link.ask(&push).await.map_err(|e| e.to_string())
            ));
        }
        link.close().await;
        answers
    });
    eprintln!("forged and older policies pushed to h2: {answers:?}");
    let ack = format!("Ok({:?})", Response::Ack);
    assert!(answers.iter().all(|a| *a == ack), "{answers:?}");
    assert_eq!(
        shown(net, 2).version,
        Some(1),
        "h2 took a forged or older policy"
    );
    let log = std::fs::read_to_string(net.log_path(2)).unwrap_or_default();
    for why in ["not signed by this network's CA", "is already in force"] {
        assert!(
            log.lines()
                .any(|l| l.contains("refused a policy") && l.contains(why)),
            "h2 did not log a refusal saying {why:?}:\n{log}"
        );
    }
}
