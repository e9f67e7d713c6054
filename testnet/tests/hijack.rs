//! An outsider cannot steer a tunnel (issue 14, item 1, the issue's bar): a machine on the
//! underlay that is no member and knows only h1's WireGuard public key floods h1's tunnel
//! port for 10 s with handshake initiations and forged handshake responses, all with a valid
//! mac1, while h1-c1 pings h2-c1 every 50 ms. h1's view of h2's endpoint must never change,
//! ping loss must stay at or under 1 %, and the outsider must get nothing but cookie replies.
//!
//! Before the fix, forged responses drew cookie replies from h1 once it was under load, and
//! the router took that write as an authenticated handshake: h2's endpoint moved to the
//! outsider and h1's packets for h2 went there.
//!
//! ```text
//!                          P-ul: br0 (underlay switch)
//!          +-------------------+-------------------------+
//!          |                   |                         |
//!   P-h1 198.18.0.11    P-h2 198.18.0.12     outsider 198.19.255.66/15 (a namespace of
//!   UDP 51820 <========================== this test, no member): valid-mac1 initiations
//!   br0 10.42.1.1/24    br0 10.42.2.1/24     (300/s) and forged responses (4,000/s,
//!     |                   |                  receiver indices 0..0x1000) for 10 s
//!   h1-c1 .1.2  ping -> h2-c1 .2.2 (every 50 ms, 200 pings)
//! ```
//!
//! The forged messages are built from the public key alone, as WireGuard defines mac1
//! (whitepaper §5.4.4): key = BLAKE2s-256("mac1----" || receiver's public key), mac1 =
//! keyed BLAKE2s-128 over the message before the MACs; mac2 is left zero. boringtun's
//! receiver index of a peer is `(peer table slot << 8) | low byte`, so indices 0..0x1000
//! reach the first 16 slots, h2's among them.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::forge::{forged, mac1_key};
use common::{NetnsGuard, root};
use protocol::drops::DropReason;
use testnet::{LISTEN_PORT, Options, Testnet};

/// How long the outsider floods h1.
const ATTACK: Duration = Duration::from_secs(10);
/// Valid-mac1 handshake initiations a second: three times h1's handshake limit (100 a
/// second, `overlayd::router::HANDSHAKE_RATE_LIMIT`) on their own.
const INITIATIONS_PER_S: u64 = 300;
/// Forged handshake responses a second (the issue's reviewer saw the hijack with ~3,700).
const RESPONSES_PER_S: u64 = 4_000;
/// Receiver indices of the forged responses cycle through `0..RECEIVER_INDICES`.
const RECEIVER_INDICES: u32 = 0x1000;
/// Pings from h1-c1 to h2-c1, and their interval (`ping -i`): 10 s in all.
const PINGS: u32 = 200;
const PING_INTERVAL: &str = "0.05";
/// The most ping loss allowed, in percent.
const MAX_LOSS_PERCENT: f64 = 1.0;
/// How often h1's `overlayctl peers --json` is sampled during the attack.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// The outsider's address on the underlay's /15 (no host has it).
const OUTSIDER_ADDR: &str = "198.19.255.66";
/// Message type of a WireGuard cookie reply, and of a data packet.
const COOKIE_REPLY: u8 = 3;
const DATA: u8 = 4;

/// What the outsider did and saw.
#[derive(Debug, Default)]
struct FloodReport {
    /// Datagrams sent in each second of the attack: (initiations, responses).
    per_second: Vec<(u64, u64)>,
    /// Sends the kernel refused.
    send_errors: u64,
    /// How long it ran.
    took: Duration,
    /// Datagrams it received, by WireGuard message type (anything else under 0).
    received: BTreeMap<u8, u64>,
}

impl FloodReport {
    fn initiations(&self) -> u64 {
        self.per_second.iter().map(|s| s.0).sum()
    }
    fn responses(&self) -> u64 {
        self.per_second.iter().map(|s| s.1).sum()
    }
}

/// The outsider's flood, on a thread that entered its namespace; stopped and joined on drop
/// (also when the test panics).
struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<FloodReport>>,
}

impl Flood {
    /// Starts flooding `target` from namespace `netns` with messages for public key `key`.
    fn start(netns: &str, target: SocketAddr, key: [u8; 32]) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let netns_name = netns.to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            common::enter_netns(&netns_name);
            flood(target, &mac1_key(&key), &flag)
        });
        Flood {
            stop,
            thread: Some(thread),
        }
    }

    fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    fn join(mut self) -> FloodReport {
        let thread = self.thread.take().expect("joined once");
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends paced initiations and responses to `target` for [`ATTACK`] (or until `stop`) from
/// a socket of the calling thread's namespace, counting what comes back on it.
fn flood(target: SocketAddr, key: &[u8; 32], stop: &AtomicBool) -> FloodReport {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("the outsider's UDP socket");
    let receiver = socket.try_clone().expect("clone the socket");
    receiver
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let done = Arc::new(AtomicBool::new(false));
    let listening = done.clone();
    let counter = std::thread::spawn(move || {
        let mut received = BTreeMap::new();
        let mut buf = [0u8; 2048];
        while !listening.load(Ordering::Relaxed) {
            if let Ok((n, _)) = receiver.recv_from(&mut buf) {
                let kind = if n > 0 && (1..=4).contains(&buf[0]) {
                    buf[0]
                } else {
                    0
                };
                *received.entry(kind).or_insert(0u64) += 1;
            }
        }
        received
    });
    let mut report = FloodReport::default();
    let (mut initiations, mut responses, mut errors) = (0u64, 0u64, 0u64);
    let send = |bytes: &[u8], errors: &mut u64| {
        let sent = socket.send_to(bytes, target).is_ok();
        *errors += u64::from(!sent);
        sent
    };
    let start = Instant::now();
    let mut second = 0;
    let mut at_second = (0u64, 0u64);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= ATTACK || stop.load(Ordering::Relaxed) {
            break;
        }
        if elapsed.as_secs() > second {
            report
                .per_second
                .push((initiations - at_second.0, responses - at_second.1));
            at_second = (initiations, responses);
            second = elapsed.as_secs();
        }
        let micros = elapsed.as_micros() as u64;
        // Interleaved, so that both kinds hit h1 in every part of each second.
        let due_initiations = micros * INITIATIONS_PER_S / 1_000_000;
        let due_responses = micros * RESPONSES_PER_S / 1_000_000;
        while initiations < due_initiations {
            let n = initiations as u32;
            if send(
                &forged(1, key, n.wrapping_mul(2_654_435_761), 0),
                &mut errors,
            ) {
                initiations += 1;
            } else {
                break;
            }
        }
        while responses < due_responses {
            let n = responses as u32;
            let receiver = n % RECEIVER_INDICES;
            if send(
                &forged(2, key, n.wrapping_mul(2_246_822_519), receiver),
                &mut errors,
            ) {
                responses += 1;
            } else {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    report
        .per_second
        .push((initiations - at_second.0, responses - at_second.1));
    report.took = start.elapsed();
    report.send_errors = errors;
    // Answers to the last messages may still be on their way.
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Relaxed);
    report.received = counter.join().expect("the outsider's receiver");
    report
}

/// A child process killed on drop (also when the test panics).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A namespace on the underlay switch that is no member: veth `out` on the switch's `br0`,
/// `eth0` with [`OUTSIDER_ADDR`]/15 inside. Deleted on drop (with its veth).
fn outsider(net: &Testnet) -> NetnsGuard {
    let ns = format!("{}-outsider", net.prefix());
    let guard = NetnsGuard::add(std::slice::from_ref(&ns));
    let switch = net.underlay_ns();
    common::ip(&[
        "link", "add", "out", "netns", &switch, "type", "veth", "peer", "name", "eth0", "netns",
        &ns,
    ]);
    common::ip(&["-n", &switch, "link", "set", "out", "master", "br0", "up"]);
    let addr = format!("{OUTSIDER_ADDR}/15");
    common::ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
    common::ip(&["-n", &ns, "link", "set", "eth0", "up"]);
    common::ip(&["-n", &ns, "link", "set", "lo", "up"]);
    guard
}

/// Whether namespace `ns` reaches `to` by ping within [`common::PING_DEADLINE`].
fn reaches(ns: &str, to: &str) -> bool {
    let deadline = Instant::now() + common::PING_DEADLINE;
    loop {
        let ok = Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-c1", "-W1", "-q", to])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok || Instant::now() >= deadline {
            return ok;
        }
    }
}

/// h1's view of h2's endpoint.
fn endpoint_of_h2(net: &Testnet) -> Option<SocketAddr> {
    net.peers_json(1)
        .expect("h1's peers --json")
        .into_iter()
        .find(|p| p.name.as_deref() == Some("h2"))
        .expect("h1 lists h2")
        .endpoint
}

/// `N packets transmitted, M received` from ping's summary.
fn ping_counts(summary: &str) -> Option<(u32, u32)> {
    let line = summary
        .lines()
        .find(|l| l.contains("packets transmitted"))?;
    let mut numbers = line
        .split(',')
        .map(|part| part.split_whitespace().next()?.parse::<u32>().ok());
    Some((numbers.next()??, numbers.next()??))
}

#[test]
fn an_outsider_flooding_forged_handshakes_cannot_move_an_endpoint() {
    if !root() {
        return;
    }
    let began = Instant::now();
    let net = Testnet::up(Options::new(2, 1)).expect("testnet up (gossip mode, 2 members)");
    let ready = began.elapsed();
    let outsider = outsider(&net);
    let ns = outsider.0[0].clone();
    let h1 = net.addr("h1").expect("h1's underlay address");
    assert!(
        reaches(&ns, &h1.to_string()),
        "the outsider does not reach h1 on the underlay"
    );
    // All the outsider knows: h1's public key (every member, revoked ones too, knows it).
    let status = net.status_json(1).expect("h1's status --json");
    let key = *status.public_key.as_bytes();
    let drops_before = status.drops;
    let genuine = SocketAddr::new(net.addr("h2").expect("h2's address"), LISTEN_PORT);
    assert_eq!(
        endpoint_of_h2(&net),
        Some(genuine),
        "h1's view of h2's endpoint before the attack"
    );
    let to = net.addr("h2-c1").expect("h2-c1's address").to_string();
    let count = PINGS.to_string();
    let ping = net
        .spawn(
            "h1-c1",
            &[
                "ping",
                "-c",
                &count,
                "-i",
                PING_INTERVAL,
                "-W",
                "1",
                "-q",
                &to,
            ],
        )
        .expect("start ping");
    let mut ping = Killed(ping);
    let attack_began = Instant::now();
    let flood = Flood::start(&ns, SocketAddr::new(h1, LISTEN_PORT), key);

    // h1's view of h2's endpoint, every SAMPLE_EVERY until the flood and the pings are over.
    let mut samples: Vec<(Duration, Option<SocketAddr>)> = Vec::new();
    let mut ping_exit = None;
    loop {
        let t = attack_began.elapsed();
        samples.push((t, endpoint_of_h2(&net)));
        if ping_exit.is_none() {
            ping_exit = ping.0.try_wait().expect("ping's status");
        }
        if ping_exit.is_some() && flood.finished() {
            break;
        }
        assert!(
            t < ATTACK + Duration::from_secs(15),
            "the pings or the flood did not end 15 s after the attack"
        );
        std::thread::sleep(SAMPLE_EVERY.saturating_sub(attack_began.elapsed() - t));
    }
    let report = flood.join();
    samples.push((attack_began.elapsed(), endpoint_of_h2(&net)));
    let mut summary = String::new();
    if let Some(stdout) = ping.0.stdout.as_mut() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut summary);
    }
    let drops_after = net.status_json(1).expect("h1's status --json").drops;

    // ---- the figures of the run, before any verdict
    let secs = report.took.as_secs_f64();
    eprintln!(
        "testnet up in {:.1} s; attack from {ns} ({OUTSIDER_ADDR}) on {h1}:{LISTEN_PORT} for {secs:.2} s",
        ready.as_secs_f64()
    );
    eprintln!(
        "outsider sent {} initiations ({:.0}/s) and {} forged responses ({:.0}/s), {} sends refused",
        report.initiations(),
        report.initiations() as f64 / secs,
        report.responses(),
        report.responses() as f64 / secs,
        report.send_errors
    );
    for (i, (init, resp)) in report.per_second.iter().enumerate() {
        eprintln!("  second {i}: {init} initiations, {resp} responses");
    }
    eprintln!(
        "outsider received, by message type (3 cookie reply, 4 data, 0 other): {:?}",
        report.received
    );
    let (sent, answered) = ping_counts(&summary).unwrap_or((0, 0));
    let loss = if sent == 0 {
        100.0
    } else {
        100.0 * f64::from(sent - answered) / f64::from(sent)
    };
    eprintln!("h1-c1 -> h2-c1: {answered} of {sent} pings answered, {loss:.1} % loss");
    eprintln!("ping: {}", summary.trim().replace('\n', " | "));
    let moved: Vec<_> = samples
        .iter()
        .filter(|(_, e)| *e != Some(genuine))
        .collect();
    eprintln!(
        "h1's view of h2's endpoint: {} samples over {:.1} s, {} not {genuine}",
        samples.len(),
        samples.last().map_or(0.0, |s| s.0.as_secs_f64()),
        moved.len()
    );
    for (t, endpoint) in &moved {
        eprintln!("  at {:.2} s: {endpoint:?}", t.as_secs_f64());
    }
    let rose = |reason: DropReason| -> u64 {
        let before = drops_before.get(&reason).copied().unwrap_or(0);
        drops_after.get(&reason).copied().unwrap_or(0) - before
    };
    let deltas: BTreeMap<String, u64> = drops_after
        .iter()
        .map(|(r, n)| {
            let before = drops_before.get(r).copied().unwrap_or(0);
            (r.as_str().to_owned(), n - before)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    eprintln!("h1's drop counters, rise during the attack: {deltas:?}");
    eprintln!("test ran {:.1} s", began.elapsed().as_secs_f64());

    // ---- the verdict, every failed check at once
    let mut failed = Vec::new();
    // the attack ran as planned, and h1 felt it
    let planned = ATTACK.as_secs() * (INITIATIONS_PER_S + RESPONSES_PER_S);
    let done = report.initiations() + report.responses();
    if done * 10 < planned * 9 {
        failed.push(format!(
            "the outsider sent {done} datagrams, under 90 % of the {planned} planned"
        ));
    }
    for reason in [
        DropReason::UnderLoad,
        DropReason::AuthFailed,
        DropReason::UnknownPeer,
    ] {
        if rose(reason) == 0 {
            failed.push(format!(
                "h1's drop counter {} did not rise during the attack",
                reason.as_str()
            ));
        }
    }
    // nothing moved, nothing lost, the outsider got nothing but cookie replies
    if let Some((t, endpoint)) = moved.first() {
        failed.push(format!(
            "h1's view of h2's endpoint left {genuine} in {} of {} samples (first at {:.2} s: {endpoint:?})",
            moved.len(),
            samples.len(),
            t.as_secs_f64()
        ));
    }
    if sent != PINGS {
        failed.push(format!("ping sent {sent} of {PINGS}: {summary}"));
    }
    if loss > MAX_LOSS_PERCENT {
        failed.push(format!(
            "{loss:.1} % of h1-c1's pings to h2-c1 were lost during the attack (at most {MAX_LOSS_PERCENT} %)"
        ));
    }
    if report.received.keys().any(|kind| *kind != COOKIE_REPLY) {
        failed.push(format!(
            "h1 sent the outsider more than cookie replies ({} data packets): {:?}",
            report.received.get(&DATA).copied().unwrap_or(0),
            report.received
        ));
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    drop(outsider);
    net.down().expect("down");
}
