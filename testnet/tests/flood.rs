//! An insider's flood cannot exhaust a member's memory nor starve its failure detector
//! (issue 14, item 7): a hostile client with h4's credentials floods h1 for 20 s with
//! (a) request frames that announce 8 MiB, send all but the last byte and then hold the
//! stream, on as many streams as h1 allows, (b) as many connections as it can open,
//! (c) gossip datagrams (each carrying h4's own signed record, which h1 verifies) as fast
//! as QUIC lets it, (d) syncs of 8 MiB made of copies of h4's record, and (e) gossip
//! datagrams each carrying a new version of h4's record, validly signed. The resident
//! memory of h1, h2 and h3 must stay within 20 MiB of what it was before, and none of h1,
//! h2, h3 may see another of them `down`.
//!
//! ```text
//!                    P-ul: br0 (underlay switch)
//!          +-----------------+-----------------+-----------------+
//!          |                 |                 |                 |
//!      P-h1 .11          P-h2 .12          P-h3 .13          P-h4 .14       198.18.0.x/15
//!      admin (CA)        member            member            member; the hostile client
//!      target            watched           watched           runs in its namespace with
//!      UDP 51821 QUIC control plane on each                  its certificate and key
//! ```
//!
//! The hostile client (`common/hostile.rs`) runs on a thread that entered P-h4. h4's own
//! daemon keeps running: the attacker is a member in good standing.

mod common;
#[path = "common/hostile.rs"]
mod hostile;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::root;
use hostile::{
    Credentials, GOSSIP_TAG_MEMBER, Link, gossip_datagram, member_config, read_directory,
    record_of, run_in_netns,
};
use keys::SigningKey;
use overlayd::control::msg::{self, Bundle, Request};
use protocol::membership::NodeId;
use protocol::records::SignedMemberRecord;
use testnet::{MemberState, Options, Testnet};

/// How long the attack lasts.
const ATTACK: Duration = Duration::from_secs(20);
/// How much a watched daemon's RSS may grow under the attack.
const RSS_SLACK_KIB: u64 = 20 * 1024;
/// The length a flooding frame announces: the largest frame the daemon took before.
const ANNOUNCED: usize = 8 << 20;
/// Connections the frame flood and the gossip flood use each.
const FLOOD_LINKS: usize = 4;
/// Connections opened at once by the connection flood (the daemon's per-source cap on
/// handshakes in flight).
const OPEN_AT_ONCE: usize = 4;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What the attacker managed.
#[derive(Debug, Default)]
struct Counters {
    streams: AtomicU64,
    frame_bytes: AtomicU64,
    connections: AtomicU64,
    connections_refused: AtomicU64,
    datagrams: AtomicU64,
    versions: AtomicU64,
    syncs_sent: AtomicU64,
    syncs_answered: AtomicU64,
}

impl Counters {
    fn line(&self) -> String {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "streams {}, frame bytes {} MiB, connections {} ({} failed), datagrams {}, new versions {}, syncs {} ({} answered)",
            n(&self.streams),
            n(&self.frame_bytes) >> 20,
            n(&self.connections),
            n(&self.connections_refused),
            n(&self.datagrams),
            n(&self.versions),
            n(&self.syncs_sent),
            n(&self.syncs_answered),
        )
    }
}

/// (a) On one connection: open streams as fast as the daemon lets (it caps them), each with
/// a frame announcing [`ANNOUNCED`] bytes, filled but for the last byte, then held.
async fn flood_frames(link: Arc<Link>, stop: Arc<AtomicBool>, counters: Arc<Counters>) {
    let chunk = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok((mut send, _recv))) =
            tokio::time::timeout(Duration::from_secs(1), link.conn.open_bi()).await
        else {
            if link.conn.close_reason().is_some() {
                return;
            }
            continue;
        };
        counters.streams.fetch_add(1, Ordering::Relaxed);
        let stop = stop.clone();
        let counters = counters.clone();
        let chunk = chunk.clone();
        tokio::spawn(async move {
            if send
                .write_all(&(ANNOUNCED as u32).to_be_bytes())
                .await
                .is_err()
            {
                return;
            }
            let mut sent = 0;
            while sent + chunk.len() < ANNOUNCED && !stop.load(Ordering::Relaxed) {
                if send.write_all(&chunk).await.is_err() {
                    return;
                }
                sent += chunk.len();
                counters
                    .frame_bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            // Hold the stream (and what the daemon buffered for it) open.
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if send.write_all(&[0]).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// (b) Opens member connections, [`OPEN_AT_ONCE`] at a time, and keeps them all.
async fn flood_connections(
    config: quinn::ClientConfig,
    to: SocketAddr,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) -> Vec<Link> {
    let mut kept = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let opening: Vec<_> = (0..OPEN_AT_ONCE)
            .map(|_| tokio::spawn(Link::open(config.clone(), to)))
            .collect();
        for link in opening {
            match link.await.expect("an opening task") {
                Ok(link) => {
                    counters.connections.fetch_add(1, Ordering::Relaxed);
                    kept.push(link);
                }
                Err(_) => {
                    counters.connections_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    kept
}

/// (c) Gossip datagrams on one connection, as fast as QUIC's congestion control sends them.
async fn flood_gossip(
    link: Arc<Link>,
    datagram: Vec<u8>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) {
    while !stop.load(Ordering::Relaxed) {
        if link
            .conn
            .send_datagram_wait(datagram.clone().into())
            .await
            .is_err()
        {
            return;
        }
        counters.datagrams.fetch_add(1, Ordering::Relaxed);
    }
}

/// (e) Gossip datagrams on one connection, each carrying a new version of h4's own record,
/// validly signed with its control key: every one is news to h1, which verifies it, applies
/// it and spreads it to h2 and h3.
async fn flood_versions(
    link: Arc<Link>,
    record: SignedMemberRecord,
    key: SigningKey,
    ids: (NodeId, NodeId),
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) {
    let mut body = record.record().clone();
    while !stop.load(Ordering::Relaxed) {
        body.version += 1;
        let Ok(signed) = body.sign(&key) else { return };
        let mut item = vec![GOSSIP_TAG_MEMBER];
        item.extend_from_slice(&signed.to_bytes());
        let datagram = gossip_datagram(ids.0, ids.1, &[item]);
        if link.conn.send_datagram_wait(datagram.into()).await.is_err() {
            return;
        }
        counters.versions.fetch_add(1, Ordering::Relaxed);
    }
}

/// (d) Syncs of ~8 MiB made of copies of h4's own (valid) record, one after another.
async fn flood_syncs(
    link: Arc<Link>,
    record: Vec<u8>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) {
    let copies = (ANNOUNCED - 4096) / (record.len() + 3);
    let request = Request::Sync(Bundle {
        members: vec![record; copies],
        revocations: Vec::new(),
        policy: None,
        names: Vec::new(),
        ca_transition: None,
    });
    while !stop.load(Ordering::Relaxed) {
        let exchange = async {
            let (mut send, mut recv) = link.conn.open_bi().await?;
            msg::write(&mut send, &request).await?;
            send.finish()?;
            counters.syncs_sent.fetch_add(1, Ordering::Relaxed);
            msg::read::<overlayd::control::msg::Response>(&mut recv).await
        };
        match tokio::time::timeout(Duration::from_secs(10), exchange).await {
            Ok(Ok(_)) => {
                counters.syncs_answered.fetch_add(1, Ordering::Relaxed);
            }
            _ if link.conn.close_reason().is_some() => return,
            _ => {}
        }
    }
}

/// Runs the whole attack on h1 from h4's namespace until `stop`.
fn attack(net: &Testnet, stop: Arc<AtomicBool>, counters: Arc<Counters>) {
    let h4 = Credentials::read(&net.state_dir(4)).expect("h4's credentials");
    let h1 = Credentials::read(&net.state_dir(1)).expect("h1's credentials");
    let signed = record_of(
        &read_directory(&net.state_dir(4)).expect("h4's directory"),
        &Testnet::member_name(4),
    )
    .expect("h4's own record");
    let record = signed.to_bytes();
    let mut item = vec![GOSSIP_TAG_MEMBER];
    item.extend_from_slice(&record);
    let datagram = gossip_datagram(h4.node_id(), h1.node_id(), &[item]);
    let config = member_config(&h4.identity());
    let to = SocketAddr::new(net.addr("h1").expect("h1's address"), net.control_port());
    run_in_netns(&net.host_ns(4), move || async move {
        let mut tasks = Vec::new();
        for i in 0..FLOOD_LINKS {
            let Ok(frames) = Link::open(config.clone(), to).await else {
                eprintln!("flood: frame link {i} refused");
                continue;
            };
            tasks.push(tokio::spawn(flood_frames(
                Arc::new(frames),
                stop.clone(),
                counters.clone(),
            )));
            let Ok(gossip) = Link::open(config.clone(), to).await else {
                eprintln!("flood: gossip link {i} refused");
                continue;
            };
            // Half the gossip links replay one record, half send new versions of it.
            if i % 2 == 0 {
                tasks.push(tokio::spawn(flood_gossip(
                    Arc::new(gossip),
                    datagram.clone(),
                    stop.clone(),
                    counters.clone(),
                )));
            } else {
                tasks.push(tokio::spawn(flood_versions(
                    Arc::new(gossip),
                    signed.clone(),
                    h4.control_key.clone(),
                    (h4.node_id(), h1.node_id()),
                    stop.clone(),
                    counters.clone(),
                )));
            }
        }
        if let Ok(syncs) = Link::open(config.clone(), to).await {
            tasks.push(tokio::spawn(flood_syncs(
                Arc::new(syncs),
                record.clone(),
                stop.clone(),
                counters.clone(),
            )));
        }
        let kept = flood_connections(config, to, stop.clone(), counters).await;
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        for link in kept {
            link.conn.close(0u32.into(), b"done");
        }
    });
}

/// Every `(observer, member, state)` among h1..h3 that is not alive right now.
fn not_alive(net: &Testnet) -> Vec<(usize, usize, MemberState)> {
    let mut seen = Vec::new();
    for observer in 1..=3 {
        let Ok(peers) = net.peers_json(observer) else {
            continue;
        };
        for member in (1..=3).filter(|m| *m != observer) {
            let name = Testnet::member_name(member);
            let state = peers
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| p.state);
            if let Some(state) = state
                && state != MemberState::Alive
            {
                seen.push((observer, member, state));
            }
        }
    }
    seen
}

/// The largest RSS of each of h1..h3 over `span`, sampled every 250 ms.
fn peak_rss(pids: &[u32], span: Duration) -> Vec<u64> {
    let mut peak = vec![0; pids.len()];
    let end = Instant::now() + span;
    while Instant::now() < end {
        for (p, pid) in peak.iter_mut().zip(pids) {
            *p = (*p).max(rss_kib(*pid));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    peak
}

#[test]
fn one_members_flood_neither_grows_the_others_nor_downs_them() {
    if !root() {
        return;
    }
    let net = Testnet::up(Options::new(4, 0)).expect("testnet up (gossip mode, 4 members)");
    net.wait_converged(&[1, 2, 3, 4], Duration::from_secs(30))
        .expect("the four members converge");
    let pids: Vec<u32> = (1..=3)
        .map(|i| net.daemon_pid(i).expect("daemon pid"))
        .collect();
    let quiet = peak_rss(&pids, Duration::from_secs(3));
    eprintln!("flood: quiet RSS of h1..h3: {quiet:?} KiB");

    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let attacker = std::thread::scope(|scope| {
        let attacker = scope.spawn(|| attack(&net, stop.clone(), counters.clone()));
        let mut peak = vec![0; pids.len()];
        let mut downs = Vec::new();
        let mut suspects = 0;
        let mut timeline = Vec::new();
        while started.elapsed() < ATTACK {
            for (p, pid) in peak.iter_mut().zip(&pids) {
                *p = (*p).max(rss_kib(*pid));
            }
            for (observer, member, state) in not_alive(&net) {
                match state {
                    MemberState::Suspect => suspects += 1,
                    _ => downs.push((started.elapsed().as_secs_f64(), observer, member, state)),
                }
            }
            let h1 = rss_kib(pids[0]);
            if timeline
                .last()
                .is_none_or(|(t, _): &(f64, u64)| started.elapsed().as_secs_f64() - t >= 2.0)
            {
                timeline.push((started.elapsed().as_secs_f64(), h1));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        stop.store(true, Ordering::Relaxed);
        let _ = attacker.join();
        (peak, downs, suspects, timeline)
    });
    let (peak, downs, suspects, timeline) = attacker;
    eprintln!("flood: attacker: {}", counters.line());
    eprintln!("flood: h1 RSS over the attack (s, KiB): {timeline:?}");
    let growth: Vec<i64> = peak
        .iter()
        .zip(&quiet)
        .map(|(p, q)| *p as i64 - *q as i64)
        .collect();
    eprintln!(
        "flood: peak RSS of h1..h3 under attack: {peak:?} KiB; growth {growth:?} KiB; suspect samples {suspects}; false downs {downs:?}"
    );
    println!(
        "{{\"quiet_rss_kib\":{quiet:?},\"attack_rss_kib\":{peak:?},\"false_downs\":{},\"suspect_samples\":{suspects}}}",
        downs.len()
    );
    for (i, (p, q)) in peak.iter().zip(&quiet).enumerate() {
        assert!(
            *p <= q + RSS_SLACK_KIB,
            "h{}'s RSS grew from {q} KiB to {p} KiB under h4's flood (> 20 MiB)",
            i + 1
        );
    }
    if !downs.is_empty() {
        // What the members did around it, for whoever reads the failure.
        for i in 1..=3 {
            let log = std::fs::read_to_string(net.log_path(i)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("flood: the last lines of h{i}'s log:\n{tail}");
        }
    }
    assert!(
        downs.is_empty(),
        "h1..h3 saw each other down under h4's flood: {downs:?}"
    );
    net.down().expect("down");
}
