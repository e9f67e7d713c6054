//! Stalled QUIC handshakes cannot shut the control plane (issue 14, item 3): an outsider on
//! the underlay starts handshakes with every member's control port and never finishes them
//! (200 at once on each member, then 20 more a second), while a new host joins and a
//! member restarts. Both must take about as long as they take without the attack, measured
//! first in the same run.
//!
//! Before the fix the accept loop awaited each handshake to its end before it took the next
//! connection: one silent client held it for the idle timeout (8 s), 200 for half an hour,
//! and joins and reconnections waited behind them until they gave up.
//!
//! ```text
//!                          P-ul: br0 (underlay switch)
//!      +-----------+-----------+-----------+-----------+--------------------------+
//!      |           |           |           |           |                          |
//!  P-h1 .11    P-h2 .12    P-h3 .13    P-h4 .14    P-h5 .15       outsider 198.19.254.1-50/15
//!  admin       member      member      joins       joins          (a namespace of this test, no
//!  UDP 51821 QUIC control plane        (baseline)  (attacked)     member): QUIC Initials to
//!      ^           ^           ^           ^                       h1-h4:51821 from 50 addresses;
//!      +-----------+-----------+-----------+-- stalled handshakes  nft drops every answer, so
//!                                                                  no handshake ever finishes
//! ```
//!
//! The outsider sends genuine QUIC Initials (made by quinn, each a new connection with its
//! ClientHello) from plain UDP sockets that never send anything else, and its namespace drops
//! everything the members send back: each handshake stays open on the member until the
//! member gives up on it. h2 restarts with and without the attack; the time until h1 and
//! h3 hold its new record (pushed over a fresh control connection) is its reconnection time.

mod common;
#[path = "common/hostile.rs"]
mod hostile;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{NetnsGuard, root};
use hostile::{raw_config, read_directory, record_of};
use overlayd::control::tls;
use testnet::{CONTROL_PORT, Options, Testnet};

/// Addresses the outsider attacks from: 198.19.254.1 to .50.
const SOURCES: u8 = 50;
/// Handshakes each source starts with each target at once: 4 × 50 = 200 per member.
const BURST_PER_SOURCE: usize = 4;
/// After the burst, every this often, [`ROTATING_SOURCES`] sources start one more handshake
/// with each target (a restarted member is stalled again at once).
const ROUND: Duration = Duration::from_millis(100);
const ROTATING_SOURCES: usize = 2;
/// How much longer than without the attack a join or a reconnection may take under it.
const SLACK: Duration = Duration::from_secs(2);
/// Validity of the join tokens (overlayctl's duration syntax).
const JOIN_TOKEN_TTL: &str = "10m";
/// How long a reconnection is waited for before it counts as failed.
const RECONNECT_GIVE_UP: Duration = Duration::from_secs(20);

/// Five hosts, gossip mode, no containers; h1 to h3 form the network, h4 and h5 join later.
fn up() -> Testnet {
    let mut opts = Options::new(5, 0);
    // The stall drops the control port's datagrams only: two ports (TESTNET_ONE_PORT does
    // not apply; with one port the tunnels would stall too).
    opts.one_port = false;
    opts.members = Some(3);
    Testnet::up(opts).expect("testnet up (gossip mode, 3 of 5 members)")
}

/// The outsider's source addresses.
fn sources() -> Vec<IpAddr> {
    (1..=SOURCES)
        .map(|i| IpAddr::V4(Ipv4Addr::new(198, 19, 254, i)))
        .collect()
}

/// A namespace on the underlay switch that is no member (veth `stall` on the switch's
/// `br0`, `eth0` inside with every address of [`sources`]), whose nftables drop every UDP
/// datagram from a control port: what the members answer never reaches the outsider's QUIC
/// stack. Deleted on drop (with its veth and rules).
fn outsider(net: &Testnet) -> (NetnsGuard, String) {
    let ns = format!("{}-stall", net.prefix());
    let guard = NetnsGuard::add(std::slice::from_ref(&ns));
    let switch = net.underlay_ns();
    common::ip(&[
        "link", "add", "stall", "netns", &switch, "type", "veth", "peer", "name", "eth0", "netns",
        &ns,
    ]);
    common::ip(&["-n", &switch, "link", "set", "stall", "master", "br0", "up"]);
    for source in sources() {
        common::ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{source}/15"),
            "dev",
            "eth0",
        ]);
    }
    common::ip(&["-n", &ns, "link", "set", "eth0", "up"]);
    common::ip(&["-n", &ns, "link", "set", "lo", "up"]);
    let rules = format!(
        "table inet stall {{\n chain input {{\n  type filter hook input priority 0;\n  udp sport {CONTROL_PORT} counter drop\n }}\n}}\n"
    );
    nft(&ns, &["-f", "-"], Some(&rules));
    (guard, ns)
}

/// Runs `nft ARGS` in namespace `ns` (with `stdin` as its input); its stdout.
fn nft(ns: &str, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    let mut input = child.stdin.take().expect("nft stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("write nft's input");
    drop(input);
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many datagrams from the members the outsider's rule has dropped so far.
fn answers_dropped(ns: &str) -> u64 {
    let table = nft(ns, &["list", "table", "inet", "stall"], None);
    table
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// What the outsider did.
#[derive(Debug, Default)]
struct StallReport {
    /// Handshakes started (Initials sent), per target.
    started: Vec<(SocketAddr, u64)>,
    /// Initials that could not be made or sent (none expected).
    errors: u64,
}

/// The outsider's stalled handshakes, on a thread that entered its namespace; stopped and
/// joined on drop (also when the test panics).
struct Stall {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<StallReport>>,
}

impl Stall {
    /// Starts stalling handshakes with `targets` from namespace `netns`; returns once the
    /// first burst is out.
    fn start(netns: &str, targets: Vec<SocketAddr>) -> Stall {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (burst_tx, burst_rx) = std::sync::mpsc::channel();
        let netns_name = netns.to_owned();
        let thread = std::thread::spawn(move || {
            common::enter_netns(&netns_name);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(stall(targets, flag, burst_tx))
        });
        burst_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the outsider's first burst");
        Stall {
            stop,
            thread: Some(thread),
        }
    }

    fn join(mut self) -> StallReport {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("joined once");
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Makes genuine QUIC Initials, each a new connection's first datagram with its
/// ClientHello: quinn starts a handshake with a loopback socket of this thread, which
/// catches the datagram; the handshake is then dropped. An Initial can be sent once to
/// each member, from any address.
struct Initials {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
}

impl Initials {
    fn new() -> Initials {
        Initials {
            endpoint: quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .expect("a client endpoint on lo"),
            // The members' ALPN without a certificate: the server learns that the client
            // has none only from the client's second flight, which never comes.
            config: raw_config(tls::ALPN_CONTROL, None),
        }
    }

    async fn make(&self) -> Option<Vec<u8>> {
        let catcher = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .ok()?;
        let to = catcher.local_addr().ok()?;
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), to, tls::SERVER_NAME)
            .ok()?;
        let mut datagram = vec![0u8; 2048];
        let (len, _) =
            tokio::time::timeout(Duration::from_secs(2), catcher.recv_from(&mut datagram))
                .await
                .ok()?
                .ok()?;
        drop(connecting);
        datagram.truncate(len);
        Some(datagram)
    }
}

/// Sends Initials to `targets` from every source (a UDP socket each, never read) until
/// `stop`: a burst of [`BURST_PER_SOURCE`] per source and target, then one per target from
/// [`ROTATING_SOURCES`] sources every [`ROUND`]. Nothing else is ever sent: each is a
/// client that sent its ClientHello and went silent.
async fn stall(
    targets: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    burst_done: std::sync::mpsc::Sender<()>,
) -> StallReport {
    let initials = Initials::new();
    let sockets: Vec<std::net::UdpSocket> = sources()
        .into_iter()
        .map(|ip| std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).expect("a source socket"))
        .collect();
    let mut report = StallReport {
        started: targets.iter().map(|&t| (t, 0)).collect(),
        errors: 0,
    };
    for socket in &sockets {
        for _ in 0..BURST_PER_SOURCE {
            send_initial(&initials, socket, &mut report).await;
        }
    }
    let _ = burst_done.send(());
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(ROUND).await;
        for _ in 0..ROTATING_SOURCES {
            send_initial(&initials, &sockets[next % sockets.len()], &mut report).await;
            next += 1;
        }
    }
    report
}

/// Sends one new Initial from `socket` to each target of `report`.
async fn send_initial(initials: &Initials, socket: &std::net::UdpSocket, report: &mut StallReport) {
    let Some(initial) = initials.make().await else {
        report.errors += 1;
        return;
    };
    for (target, started) in report.started.iter_mut() {
        match socket.send_to(&initial, *target) {
            Ok(_) => *started += 1,
            Err(_) => report.errors += 1,
        }
    }
}

/// Host `i`'s control endpoint on the underlay.
fn control_addr(net: &Testnet, i: usize) -> SocketAddr {
    SocketAddr::new(net.addr(&format!("h{i}")).expect("host addr"), CONTROL_PORT)
}

/// Token on h1 and `overlayctl join` on host `i`: how long it took, or why it failed.
fn timed_join(net: &Testnet, i: usize) -> Result<Duration, String> {
    let token = net
        .create_token(JOIN_TOKEN_TTL)
        .map_err(|e| format!("{e:#}"))?;
    let started = Instant::now();
    let out = net.join_with(i, &token).map_err(|e| format!("{e:#}"))?;
    let took = started.elapsed();
    if out.status.success() {
        Ok(took)
    } else {
        Err(format!(
            "`overlayctl join` failed after {:.2} s: {}",
            took.as_secs_f64(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The version of `name`'s record host `i` holds (on disk), if any.
fn held_version(net: &Testnet, i: usize, name: &str) -> Option<u64> {
    read_directory(&net.state_dir(i))
        .ok()
        .and_then(|d| record_of(&d, name))
        .map(|r| r.record().version)
}

/// Restarts h2 and measures, from the moment its daemon is started again, how long until
/// h1 and h3 both hold its new record, which it pushes over a new control connection to
/// each member it knows. `Err` says what they held when it gave up.
fn timed_reconnection(net: &mut Testnet) -> Result<Duration, String> {
    net.stop_daemon(2).map_err(|e| format!("stop h2: {e:#}"))?;
    let before: Vec<Option<u64>> = [1, 3].iter().map(|&o| held_version(net, o, "h2")).collect();
    let started = Instant::now();
    net.start_daemon(2)
        .map_err(|e| format!("start h2: {e:#}"))?;
    loop {
        let now: Vec<Option<u64>> = [1, 3].iter().map(|&o| held_version(net, o, "h2")).collect();
        if now.iter().zip(&before).all(|(now, old)| now > old) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > RECONNECT_GIVE_UP {
            return Err(format!(
                "h1 and h3 hold h2's record at versions {now:?} (before the restart {before:?}) {} s after h2 started again",
                RECONNECT_GIVE_UP.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn show(result: &Result<Duration, String>) -> String {
    match result {
        Ok(took) => format!("{:.2} s", took.as_secs_f64()),
        Err(e) => format!("failed: {e}"),
    }
}

#[test]
fn stalled_handshakes_delay_neither_joins_nor_reconnections() {
    if !root() {
        return;
    }
    let mut net = up();

    // Without the attack.
    let join_quiet = timed_join(&net, 4).expect("h4 joins without the attack");
    let reconnect_quiet = timed_reconnection(&mut net).expect("h2 reconnects without the attack");
    eprintln!(
        "without the attack: join {:.2} s, h2's reconnection {:.2} s",
        join_quiet.as_secs_f64(),
        reconnect_quiet.as_secs_f64()
    );

    // Under it.
    let (_outsider, ns) = outsider(&net);
    // Every member's control port: a restarted member could be reached through any of them.
    let members: Vec<SocketAddr> = (1..=4).map(|i| control_addr(&net, i)).collect();
    let attack = Stall::start(&ns, members);
    let join_attacked = timed_join(&net, 5);
    let reconnect_attacked = timed_reconnection(&mut net);
    // The members already connected keep each other.
    let h3_alive = net.wait_member_state(1, 3, testnet::MemberState::Alive, Duration::from_secs(5));
    let report = attack.join();
    let dropped = answers_dropped(&ns);
    let started: Vec<String> = report
        .started
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    eprintln!(
        "under the attack: join {}, h2's reconnection {}; handshakes started: {} ({} refused locally); answers from the members dropped unread: {dropped}",
        show(&join_attacked),
        show(&reconnect_attacked),
        started.join(", "),
        report.errors
    );
    for (what, quiet, attacked) in [
        ("`overlayctl join`", join_quiet, &join_attacked),
        (
            "h2's reconnection after a restart",
            reconnect_quiet,
            &reconnect_attacked,
        ),
    ] {
        let limit = quiet + SLACK;
        assert!(
            attacked.as_ref().is_ok_and(|t| *t <= limit),
            "{what} under stalled handshakes: {} (without them {:.2} s; allowed {:.2} s)",
            show(attacked),
            quiet.as_secs_f64(),
            limit.as_secs_f64()
        );
    }
    assert!(
        dropped > 0,
        "the members never answered the stalled handshakes: the attack did not reach them"
    );
    h3_alive.expect("h1 still sees h3 alive after the attack");
    net.down().expect("down");
}
