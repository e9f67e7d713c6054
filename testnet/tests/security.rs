//! Security tests of the control plane against real daemons (issue 3, item 8): a hostile
//! client, run in a host's namespace, speaks the control protocol with stolen, forged or
//! missing credentials. Each attack must be refused with a clear (rate-limited) log line on
//! the daemon it targets, and change nobody's routes (`ip -4 route`) nor the endpoints and
//! subnets of `overlayctl peers --json`. Joins with bad tokens are in `control.rs`. A member
//! whose certificate lapses (revoked, or expired: a short certificate made with h1's CA key)
//! loses the connections it already has, and nothing more is taken from them or sent on them
//! (issue 14, item 4).
//!
//! ```text
//!                    P-ul: br0 (underlay switch)
//!          +-----------------+-----------------+
//!          |                 |                 |
//!      P-h1 .11          P-h2 .12          P-h3 .13          198.18.0.x/15
//!      admin (CA)        member            member, turned attacker: the test
//!      UDP 51821 QUIC    UDP 51821         reads its state dir (control.key,
//!      control plane     control plane     network.json) and attacks from P-h3
//!      ovl0              ovl0              ovl0            no containers
//! ```
//!
//! The hostile client (`common/hostile.rs`) enters a host's namespace on a thread of its own
//! (`setns`), so its QUIC traffic stays on the underlay. Each refusal is awaited by polling
//! the target's `overlayd.log`; since the daemons log a kind of refusal at most once a
//! second, an attack is repeated until its line shows (bounded).

mod common;
#[path = "common/hostile.rs"]
mod hostile;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::root;
use hostile::{
    Credentials, GOSSIP_TAG_MEMBER, Link, gossip_datagram, joiner_config, member_config, now_unix,
    push, raw_config, read_directory, record_of, run_in_netns, send_gossip, x509_of,
};
use ipnet::IpNet;
use keys::{CaKey, Name, NodeCertificate, SignedCertificate, SigningKey};
use overlayd::control::msg::{self, Bundle, Request, Response};
use overlayd::control::tls;
use protocol::records::{MemberRecord, MemberState as RecordState, SignedMemberRecord};
use testnet::{CONTROL_PORT, LISTEN_PORT, MemberState, NETWORK, Options, Testnet};

/// How long an attack is repeated before its refusal must have been logged.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(12);
/// How long one attempt waits for the log line before the attack is repeated (above the
/// daemons' one-second log throttle).
const ATTEMPT_WAIT: Duration = Duration::from_millis(1500);

/// Three hosts in gossip mode, all members, no containers.
fn up() -> Testnet {
    Testnet::up(Options::new(3, 0)).expect("testnet up (gossip mode, 3 members)")
}

/// Host `i`'s control endpoint on the underlay.
fn control_addr(net: &Testnet, i: usize) -> SocketAddr {
    SocketAddr::new(
        net.addr(&format!("h{i}")).expect("host addr"),
        net.control_port(),
    )
}

/// Host `i`'s WireGuard endpoint on the underlay (what an attacker would advertise).
fn tunnel_addr(net: &Testnet, i: usize) -> SocketAddr {
    SocketAddr::new(net.addr(&format!("h{i}")).expect("host addr"), LISTEN_PORT)
}

fn credentials(net: &Testnet, i: usize) -> Credentials {
    Credentials::read(&net.state_dir(i)).unwrap_or_else(|e| panic!("h{i}'s credentials: {e:#}"))
}

/// One peer as `peers --json` lists it: name, WireGuard key, endpoint, subnets.
type PeerLine = (Option<String>, String, Option<SocketAddr>, Vec<IpNet>);

/// What must not change on a host: its routes, and who its peers are, where, for what.
#[derive(Debug, PartialEq)]
struct HostView {
    routes: String,
    peers: Vec<PeerLine>,
}

fn views(net: &Testnet, hosts: &[usize]) -> Vec<(usize, HostView)> {
    hosts
        .iter()
        .map(|&i| {
            let mut peers: Vec<_> = net
                .peers_json(i)
                .expect("peers --json")
                .into_iter()
                .map(|p| (p.name, p.public_key.to_string(), p.endpoint, p.subnets))
                .collect();
            peers.sort();
            let routes = net.routes(i).expect("ip -4 route");
            (i, HostView { routes, peers })
        })
        .collect()
}

fn assert_unchanged(what: &str, before: &[(usize, HostView)], net: &Testnet) {
    let hosts: Vec<usize> = before.iter().map(|(i, _)| *i).collect();
    for ((i, old), (_, new)) in before.iter().zip(views(net, &hosts)) {
        assert_eq!(old.routes, new.routes, "{what}: the routes of h{i} changed");
        assert_eq!(
            old.peers, new.peers,
            "{what}: the peers (keys, endpoints, subnets) of h{i} changed"
        );
    }
}

/// `text` without ANSI colour sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Host `i`'s log from byte `from` on.
fn log_since(net: &Testnet, i: usize, from: usize) -> String {
    let bytes = std::fs::read(net.log_path(i)).unwrap_or_default();
    strip_ansi(&String::from_utf8_lossy(
        bytes.get(from..).unwrap_or_default(),
    ))
}

fn log_len(net: &Testnet, i: usize) -> usize {
    std::fs::metadata(net.log_path(i)).map_or(0, |m| m.len() as usize)
}

/// Runs `attack` until host `target` logs, after the first attempt began, a line holding
/// every one of `needles`; returns that line. Fails after [`REFUSAL_DEADLINE`] with what the
/// host logged meanwhile.
fn expect_logged(
    net: &Testnet,
    target: usize,
    what: &str,
    needles: &[&str],
    mut attack: impl FnMut(),
) -> String {
    let mark = log_len(net, target);
    let started = Instant::now();
    loop {
        attack();
        let attempt = Instant::now();
        loop {
            if let Some(line) = log_since(net, target, mark)
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                eprintln!(
                    "{what}: h{target} logged after {:.2} s: {}",
                    started.elapsed().as_secs_f64(),
                    line.trim()
                );
                return line.to_owned();
            }
            if attempt.elapsed() >= ATTEMPT_WAIT {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            started.elapsed() < REFUSAL_DEADLINE,
            "{what}: h{target} logged no line with {needles:?} within {} s; it logged:\n{}",
            REFUSAL_DEADLINE.as_secs(),
            log_since(net, target, mark)
        );
    }
}

/// Pushes `records` from host `from`'s namespace to host `to` as member `who`; panics
/// unless the daemon answers (a push is acknowledged whatever it held).
fn push_as(
    net: &Testnet,
    who: &Credentials,
    from: usize,
    to: usize,
    records: &[&SignedMemberRecord],
) {
    let config = member_config(&who.identity());
    let target = control_addr(net, to);
    let members: Vec<Vec<u8>> = records.iter().map(|r| r.to_bytes()).collect();
    let answer = run_in_netns(&net.host_ns(from), move || push(config, target, members));
    match answer {
        // `Seen` is an acknowledgement that also says where the push came from.
        Ok(Response::Ack | Response::Seen(_)) => {}
        other => panic!(
            "h{to} did not acknowledge a push from {}: {other:?}",
            who.certificate.node
        ),
    }
}

/// A member record with `certificate`, signed by `key`, advertising `endpoint`.
fn record(
    certificate: &SignedCertificate,
    version: u64,
    endpoint: SocketAddr,
    key: &SigningKey,
) -> SignedMemberRecord {
    MemberRecord {
        certificate: certificate.clone(),
        version,
        state: RecordState::Alive,
        control_port: CONTROL_PORT,
        endpoints: vec![endpoint],
        relay: None,
    }
    .sign(key)
    .expect("a signable record")
}

/// A certificate of network `testnet` from `ca` (not the network's).
fn foreign_certificate(
    ca: &CaKey,
    node: &str,
    subnet: &str,
    wireguard_key: keys::PublicKey,
    control_key: &SigningKey,
) -> SignedCertificate {
    let now = now_unix();
    ca.sign(&NodeCertificate {
        network: Name::new(NETWORK).expect("network name"),
        node: Name::new(node).expect("node name"),
        wireguard_key,
        control_key: control_key.verifying_key(),
        subnets: vec![subnet.parse().expect("subnet")],
        groups: Vec::new(),
        not_before: now - 60,
        not_after: now + 86_400,
        serial: 1000,
        number: 1000,
        ca_fingerprint: ca.fingerprint(),
    })
    .expect("the foreign CA signs")
}

/// The signed bytes of every member record host `i` holds, sorted.
/// What host `i` holds of every member, but the version: its certificate, state, control
/// port and endpoints. A member that rejoins on its own (a false down under load renews
/// its identity and signs a new version) changes nothing here; an attacker's record does.
fn held_records(net: &Testnet, i: usize) -> Vec<String> {
    let dir = read_directory(&net.state_dir(i)).expect("directory.json");
    let mut records: Vec<String> = dir
        .member_records()
        .map(|r| {
            let m = r.record();
            format!(
                "{:?} {:?} {} {:?}",
                m.certificate.to_bytes(),
                m.state,
                m.control_port,
                m.endpoints
            )
        })
        .collect();
    records.sort();
    records
}

/// Polls until every host in `hosts` holds a record of `name` newer than `version`.
fn wait_newer_record(net: &Testnet, hosts: &[usize], name: &str, version: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for &i in hosts {
        loop {
            let held = read_directory(&net.state_dir(i))
                .ok()
                .and_then(|d| record_of(&d, name))
                .map(|r| r.record().version);
            if held.is_some_and(|v| v > version) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "h{i} holds {name}'s record at version {held:?}, not above {version}, 15 s after {name} restarted"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn forged_and_replayed_member_records_are_refused() {
    if !root() {
        return;
    }
    let mut net = up();
    // h2's record as the others hold it now; h2's restart makes it stale (version bump).
    let stale = record_of(
        &read_directory(&net.state_dir(1)).expect("h1's directory"),
        "h2",
    )
    .expect("h1 holds h2's record");
    let stale_version = stale.record().version;
    net.restart_daemon(2).expect("restart h2");
    wait_newer_record(&net, &[1, 2, 3], "h2", stale_version);
    net.wait_converged(&[1, 2, 3], Duration::from_secs(30))
        .expect("h2 is back");
    let before = views(&net, &[1, 2, 3]);
    let held_before = held_records(&net, 1);

    let h3 = credentials(&net, 3);
    let h2 = credentials(&net, 2);
    let h1 = credentials(&net, 1);
    let attacker_endpoint = tunnel_addr(&net, 3);

    // 1a. h2's certificate with the attacker's endpoint, signed by h3's key.
    let forged = record(
        &h2.network.certificate,
        stale_version + 1000,
        attacker_endpoint,
        &h3.control_key,
    );
    expect_logged(
        &net,
        1,
        "h2's certificate signed by h3, pushed",
        &["refused a member record", "member record for h2 is forged"],
        || push_as(&net, &h3, 3, 1, &[&forged]),
    );

    // The same forgery piggy-backed on a SWIM datagram, as gossip carries records.
    let mut item = vec![GOSSIP_TAG_MEMBER];
    item.extend_from_slice(&forged.to_bytes());
    let datagram = gossip_datagram(h3.node_id(), h1.node_id(), &[item]);
    expect_logged(
        &net,
        1,
        "h2's certificate signed by h3, gossiped in a datagram",
        &[
            "refused a gossiped record",
            "member record for h2 is forged",
        ],
        || {
            let (config, to, datagram) = (
                member_config(&h3.identity()),
                control_addr(&net, 1),
                datagram.clone(),
            );
            run_in_netns(&net.host_ns(3), move || send_gossip(config, to, datagram))
                .expect("send the gossip datagram");
        },
    );

    // The same datagram, but claiming to come from h2 (SWIM messages name their sender;
    // h3 could otherwise suspect, refute or leave in h2's name).
    let mut item = vec![GOSSIP_TAG_MEMBER];
    item.extend_from_slice(&forged.to_bytes());
    let spoofed = gossip_datagram(h2.node_id(), h1.node_id(), &[item]);
    expect_logged(
        &net,
        1,
        "a gossip datagram in h2's name over h3's connection",
        &["dropped gossip sent in another member's name"],
        || {
            let (config, to, datagram) = (
                member_config(&h3.identity()),
                control_addr(&net, 1),
                spoofed.clone(),
            );
            run_in_netns(&net.host_ns(3), move || send_gossip(config, to, datagram))
                .expect("send the spoofed gossip datagram");
        },
    );

    // 1b. A certificate for h2's subnet with h3's keys, from a CA the attacker made.
    let own_ca = CaKey::generate();
    let fake = foreign_certificate(
        &own_ca,
        "h3",
        "10.42.2.0/24",
        h3.certificate.wireguard_key,
        &h3.control_key,
    );
    let hijack = record(&fake, 1_000_000, attacker_endpoint, &h3.control_key);
    expect_logged(
        &net,
        1,
        "h2's subnet in a certificate from the attacker's CA",
        &[
            "refused a member record",
            "its certificate is not from this network's CA",
        ],
        || push_as(&net, &h3, 3, 1, &[&hijack]),
    );

    // 1c. h2's record from before its restart, replayed.
    let replay_text = format!("member record for h2 refused: version {stale_version} is not newer");
    expect_logged(
        &net,
        1,
        "h2's older record replayed",
        &["refused a member record", &replay_text],
        || push_as(&net, &h3, 3, 1, &[&stale]),
    );

    assert_eq!(
        held_records(&net, 1),
        held_before,
        "h1's directory changed after the forged and replayed records"
    );
    assert_unchanged("after forged and replayed records", &before, &net);
    net.down().expect("down");
}

/// What a client saw of a connection: the error opening it or talking on it, or why the
/// server closed it; `None` if it stayed open and answered.
async fn refusal_seen(config: quinn::ClientConfig, to: SocketAddr) -> Option<String> {
    let link = match Link::open(config, to).await {
        Ok(link) => link,
        Err(e) => return Some(format!("{e:#}")),
    };
    // A refused client may finish its handshake before the server checks it: ask something.
    let asked = link.ask(&Request::Push(Bundle::default())).await;
    let seen = match (asked, link.closed().await) {
        (_, Some(closed)) => Some(closed.to_string()),
        (Err(e), None) => Some(format!("{e:#}")),
        (Ok(_), None) => None,
    };
    link.close().await;
    seen
}

#[test]
fn clients_without_a_valid_certificate_are_refused() {
    if !root() {
        return;
    }
    let net = up();
    let before = views(&net, &[1, 2, 3]);
    let held_before = held_records(&net, 1);
    let h1 = credentials(&net, 1);
    let h3 = credentials(&net, 3);
    let target = control_addr(&net, 1);
    let ns = net.host_ns(3);

    // 2a. No certificate on the control ALPN: closed with the reason, and logged.
    let mut closes = Vec::new();
    expect_logged(
        &net,
        1,
        "no client certificate",
        &[
            "refused a control connection",
            "a valid node certificate of this network is required",
        ],
        || {
            let config = raw_config(tls::ALPN_CONTROL, None);
            let closed = run_in_netns(&ns, move || async move {
                let link = Link::open(config, target).await.expect("handshake");
                let closed = link.closed().await;
                link.close().await;
                closed
            });
            closes.push(closed);
        },
    );
    let close = closes.first().cloned().flatten();
    match &close {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(
                close.error_code,
                tls::CLOSE_NOT_AUTHORIZED,
                "closed with another code: {close}"
            );
            let reason = String::from_utf8_lossy(&close.reason);
            assert!(
                reason.contains("node certificate"),
                "the close does not say why: {reason}"
            );
        }
        other => panic!(
            "a control connection without a certificate was not closed by the server: {other:?}"
        ),
    }

    // 2b. A certificate from another CA, carried as overlayd carries it.
    let foreign = CaKey::generate();
    let stranger_key = SigningKey::generate();
    let stranger = foreign_certificate(
        &foreign,
        "h9",
        "10.42.9.0/24",
        keys::PrivateKey::generate().public_key(),
        &stranger_key,
    );
    let seen = std::cell::RefCell::new(Vec::new());
    let attempt = |ca: keys::VerifyingKey| {
        let config = raw_config(
            tls::ALPN_CONTROL,
            Some(x509_of(&ca, &stranger, &stranger_key)),
        );
        let refusal = run_in_netns(&ns, move || refusal_seen(config, target));
        seen.borrow_mut().push(refusal);
    };
    expect_logged(
        &net,
        1,
        "a certificate of another CA",
        &[
            "refused a control connection",
            "but this network's CA is",
            "belongs to another network",
        ],
        || attempt(foreign.verifying_key()),
    );
    // The same certificate claiming (in the X.509 extension) to be under this network's CA.
    expect_logged(
        &net,
        1,
        "a certificate of another CA, shown as this network's",
        &[
            "refused a control connection",
            "get a certificate from this network's CA",
        ],
        || attempt(h1.network.ca),
    );
    for refusal in seen.borrow().iter() {
        let text = refusal
            .as_deref()
            .expect("a client with another CA's certificate was served");
        eprintln!("the client with another CA's certificate saw: {text}");
        assert!(
            text.contains("CA"),
            "the refused client is not told why: {text}"
        );
    }

    // 2c. A joiner (no certificate, ALPN join) that syncs and pushes instead of joining.
    let forged = record(
        &credentials(&net, 2).network.certificate,
        1_000_000,
        tunnel_addr(&net, 3),
        &h3.control_key,
    );
    let bundle = Bundle {
        members: vec![forged.to_bytes()],
        revocations: Vec::new(),
        policy: None,
        names: Vec::new(),
        ca_transition: None,
    };
    let config = joiner_config(&h1.network);
    let answers = run_in_netns(&ns, move || async move {
        let link = Link::open(config, target).await.expect("joiner handshake");
        let sync = link.ask(&Request::Sync(bundle.clone())).await;
        let push = link.ask(&Request::Push(bundle)).await;
        // A joiner may send only a small request: a 1 MiB one is cut off unread.
        let big = Bundle {
            members: vec![vec![0u8; 1 << 20]],
            revocations: Vec::new(),
            policy: None,
            names: Vec::new(),
            ca_transition: None,
        };
        let oversized = link.ask(&Request::Push(big)).await;
        link.close().await;
        ([sync, push], oversized)
    });
    let (answers, oversized) = answers;
    assert!(
        oversized.is_err(),
        "a joiner's 1 MiB request got an answer: {oversized:?}"
    );
    for (what, answer) in ["Sync", "Push"].iter().zip(answers) {
        match answer {
            Ok(Response::Refused(reason)) => {
                eprintln!("a joiner's {what}: refused: {reason}");
                assert!(
                    !reason.is_empty(),
                    "a joiner's {what} refused without a reason"
                );
            }
            other => panic!("a joiner's {what} was not refused: {other:?}"),
        }
    }

    assert_eq!(
        held_records(&net, 1),
        held_before,
        "h1's directory changed after connections without a valid certificate"
    );
    assert_unchanged("after clients without a valid certificate", &before, &net);
    net.down().expect("down");
}

#[test]
fn revoked_member_can_neither_connect_nor_push() {
    if !root() {
        return;
    }
    let mut net = up();
    let h3 = credentials(&net, 3);
    let h2 = credentials(&net, 2);
    net.overlayctl_ok(1, &["revoke", "h3"])
        .expect("overlayctl revoke h3 on h1");
    for observer in [1, 2] {
        net.wait_member_state(observer, 3, MemberState::Revoked, Duration::from_secs(10))
            .expect("h3 revoked");
    }
    // From now on only the test speaks with h3's credentials.
    net.stop_daemon(3).expect("stop h3");
    let deadline = Instant::now() + Duration::from_secs(10);
    while [1, 2]
        .iter()
        .any(|&o| net.has_route_to(o, 3).unwrap_or(true))
    {
        assert!(
            Instant::now() < deadline,
            "a member still routes h3's subnet 10 s after its revocation"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // h3's own namespace is left out: its daemon is stopped.
    let before = views(&net, &[1, 2]);
    let fresh = record(
        &h3.network.certificate,
        h3.network.record_version + 100,
        tunnel_addr(&net, 3),
        &h3.control_key,
    );

    // 3a. h3's certificate opens no control connection to any member.
    for target in [1, 2] {
        let mut seen = Vec::new();
        expect_logged(
            &net,
            target,
            "h3's revoked certificate",
            &[
                "refused a control connection",
                "is revoked by the network's CA",
            ],
            || {
                let (config, to, bytes) = (
                    member_config(&h3.identity()),
                    control_addr(&net, target),
                    fresh.to_bytes(),
                );
                let refusal = run_in_netns(&net.host_ns(3), move || async move {
                    match push(config, to, vec![bytes]).await {
                        Ok(answer) => Err(answer),
                        Err(e) => Ok(format!("{e:#}")),
                    }
                });
                seen.push(refusal);
            },
        );
        for refusal in seen {
            let text = refusal.unwrap_or_else(|answer| {
                panic!("h{target} answered a push from revoked h3: {answer:?}")
            });
            eprintln!("h3's client, refused by h{target}, saw: {text}");
            assert!(
                text.contains("revoked"),
                "h3 is not told that it is revoked: {text}"
            );
        }
    }

    // 3b. h3's fresh record, relayed by a member in good standing, is refused too.
    let refused = format!(
        "member record for h3 refused: its certificate (serial {})",
        h3.certificate.serial
    );
    expect_logged(
        &net,
        1,
        "h3's record relayed by h2",
        &["refused a member record", &refused, "is revoked"],
        || push_as(&net, &h2, 2, 1, &[&fresh]),
    );

    for observer in [1, 2] {
        assert_eq!(
            net.member_state(observer, 3).expect("peers"),
            Some(MemberState::Revoked),
            "h{observer} no longer lists h3 as revoked"
        );
    }
    assert_unchanged("after the revoked member's attempts", &before, &net);
    net.down().expect("down");
}

/// What a hostile client saw on one member connection: datagrams and streams the daemon
/// sent it, and the close, each with when. It answers like a member (an `Ack` to a push, an
/// empty directory to a sync), so that it looks alive.
#[derive(Debug, Default)]
struct Seen {
    datagrams: Vec<Instant>,
    /// Streams the daemon opened, and what it asked on them.
    streams: Vec<(Instant, String)>,
    /// When the connection closed, and why.
    closed: Option<(Instant, quinn::ConnectionError)>,
}

type Shared<T> = std::sync::Arc<std::sync::Mutex<T>>;

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records what the daemon sends on `conn` into `seen` until the connection closes.
async fn observe(conn: quinn::Connection, seen: Shared<Seen>) {
    let closed = loop {
        tokio::select! {
            d = conn.read_datagram() => match d {
                Ok(_) => locked(&seen).datagrams.push(Instant::now()),
                Err(e) => break e,
            },
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    let at = Instant::now();
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let asked = answer(send, recv).await;
                        locked(&seen).streams.push((at, asked));
                    });
                }
                Err(e) => break e,
            },
        }
    };
    locked(&seen).closed = Some((Instant::now(), closed));
}

/// Answers a request the daemon sent as a member would; what it asked.
async fn answer(mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> String {
    let asked = match msg::read::<Request>(&mut recv).await {
        Ok(Request::Push(bundle)) => {
            let _ = msg::write(&mut send, &Response::Ack).await;
            format!(
                "a push of {} records and {} revocations",
                bundle.members.len(),
                bundle.revocations.len()
            )
        }
        Ok(Request::Sync(_)) => {
            let _ = msg::write(&mut send, &Response::Sync(Bundle::default())).await;
            "a sync".to_owned()
        }
        Ok(_) => "another request".to_owned(),
        Err(e) => format!("an unreadable request ({e:#})"),
    };
    let _ = send.finish();
    asked
}

/// A `Sync` on `conn`: `Ok(records)` if the daemon answered with its directory.
async fn sync_on(conn: &quinn::Connection) -> Result<usize, String> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        msg::write(&mut send, &Request::Sync(Bundle::default())).await?;
        send.finish()?;
        msg::read::<Response>(&mut recv).await
    };
    match tokio::time::timeout(Duration::from_secs(3), exchange).await {
        Ok(Ok(Response::Sync(theirs))) => Ok(theirs.members.len()),
        Ok(Ok(other)) => Err(format!("answered {other:?}")),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("no answer within 3 s".to_owned()),
    }
}

/// Why `seen`'s connection was closed, if the daemon closed it with an application code:
/// `(code, reason)`.
fn closed_by_daemon(seen: &Seen) -> Option<(Instant, quinn::VarInt, String)> {
    match &seen.closed {
        Some((at, quinn::ConnectionError::ApplicationClosed(close))) => Some((
            *at,
            close.error_code,
            String::from_utf8_lossy(&close.reason).into_owned(),
        )),
        _ => None,
    }
}

/// Checks that the daemon closed `seen`'s connection with [`tls::CLOSE_NOT_AUTHORIZED`]
/// and a reason holding `why`, at most `limit` after `applied` (by when the daemon had the
/// revocation, or the certificate had expired); prints when, from `began` (the revocation
/// asked for, or the expiry). Each failure is pushed on `failures`.
fn check_closed(
    what: &str,
    seen: &Seen,
    (began, applied): (Instant, Instant),
    limit: Duration,
    why: &str,
    failures: &mut Vec<String>,
) {
    let Some((at, code, reason)) = closed_by_daemon(seen) else {
        failures.push(format!(
            "{what}: the daemon did not close the connection (it ended as {:?})",
            seen.closed.as_ref().map(|(_, e)| e.to_string())
        ));
        return;
    };
    let since = |from: Instant| match at.checked_duration_since(from) {
        Some(after) => format!("{:.3} s after", after.as_secs_f64()),
        None => format!("{:.3} s before", (from - at).as_secs_f64()),
    };
    eprintln!(
        "{what}: closed {} it lapsed, code {code}: {reason}",
        since(began)
    );
    if code != tls::CLOSE_NOT_AUTHORIZED || !reason.contains(why) {
        failures.push(format!(
            "{what}: closed with code {code} and reason {reason:?}, not {} and {why:?}",
            tls::CLOSE_NOT_AUTHORIZED
        ));
    }
    if at > applied + limit {
        failures.push(format!(
            "{what}: closed only {} the daemon had the lapse",
            since(applied)
        ));
    }
}

/// A certificate of this network for `node` from the network's own CA (the admin's
/// `ca.key`), valid until `not_after`.
fn short_certificate(
    ca: &CaKey,
    node: &str,
    serial: u64,
    control_key: &SigningKey,
    not_after: u64,
) -> SignedCertificate {
    ca.sign(&NodeCertificate {
        network: Name::new(NETWORK).expect("network name"),
        node: Name::new(node).expect("node name"),
        wireguard_key: keys::PrivateKey::generate().public_key(),
        control_key: control_key.verifying_key(),
        subnets: vec!["10.42.9.0/24".parse().expect("subnet")],
        groups: Vec::new(),
        not_before: now_unix() - 60,
        not_after,
        serial,
        number: serial as u32,
        ca_fingerprint: ca.fingerprint(),
    })
    .expect("the CA signs")
}

/// What a client with a lapsing certificate saw on each of its connections.
struct Probe {
    /// Answered `Sync`s (records) or why not, before the certificate lapsed.
    sync_before: Result<usize, String>,
    /// The same after it lapsed.
    sync_after: Result<usize, String>,
    /// The gossip datagram sent after it lapsed: sent, or why not.
    gossip_after: Result<(), String>,
    seen: Shared<Seen>,
}

/// Issue 14, item 4: a member's connections opened before its certificate lapsed (expired,
/// or revoked) are closed at once by every daemon, which answers nothing on them after.
#[test]
fn lapsed_certificates_lose_their_open_connections() {
    if !root() {
        return;
    }
    let mut net = up();
    let h1 = credentials(&net, 1);
    let h3 = credentials(&net, 3);
    let limit = Duration::from_secs(2);
    let mut failures = Vec::new();

    // 1. Expiry: a member "h9" whose certificate (from the network's CA) lasts 4 s more.
    let ca_key = keys::read_signing_key_file(&net.state_dir(1).join("ca.key"))
        .map(CaKey::from_signing_key)
        .expect("h1's ca.key");
    let h9_key = SigningKey::generate();
    let not_after = now_unix() + 4;
    let identity = tls::TlsIdentity {
        ca: h1.network.ca,
        network: h1.network.network.clone(),
        certificate: short_certificate(&ca_key, "h9", 1000, &h9_key, not_after),
        control_key: h9_key,
        previous_ca: None,
    };
    let (config, to) = (member_config(&identity), control_addr(&net, 1));
    let (probe, expired) = run_in_netns(&net.host_ns(3), move || async move {
        let link = Link::open(config, to).await.expect("h9's connection to h1");
        let seen = Shared::default();
        tokio::spawn(observe(link.conn.clone(), seen.clone()));
        let sync_before = sync_on(&link.conn).await;
        while now_unix() <= not_after {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let expired = Instant::now();
        let sync_after = sync_on(&link.conn).await;
        let _ = tokio::time::timeout(Duration::from_secs(3), link.conn.closed()).await;
        let probe = Probe {
            sync_before,
            sync_after,
            gossip_after: Ok(()),
            seen,
        };
        link.close().await;
        (probe, expired)
    });
    let seen = locked(&probe.seen);
    eprintln!(
        "h9 (expiring): sync before {:?}, after {:?}; h1 sent {} datagrams, streams {:?}",
        probe.sync_before,
        probe.sync_after,
        seen.datagrams.len(),
        seen.streams
            .iter()
            .map(|(_, what)| what.as_str())
            .collect::<Vec<_>>()
    );
    assert!(
        probe.sync_before.is_ok(),
        "h1 did not serve h9 while its certificate was valid: {:?}",
        probe.sync_before
    );
    check_closed(
        "h9's connection to h1",
        &seen,
        (expired, expired),
        limit,
        "expired",
        &mut failures,
    );
    if let Ok(records) = probe.sync_after {
        failures.push(format!(
            "h1 answered a Sync from h9 after its certificate expired, with {records} records"
        ));
    }
    drop(seen);

    // 2. Revocation: h3's credentials on h3's own control port (its daemon stopped), so
    // that h1 and h2 take the client for h3 and send it what they send h3.
    net.stop_daemon(3).expect("stop h3");
    let targets = [(1, control_addr(&net, 1)), (2, control_addr(&net, 2))];
    // A SWIM datagram on h3's link that names the other target as its sender: the member
    // task logs it ("dropped gossip sent in another member's name") as soon as it takes it,
    // before foca, so the log shows whether a datagram from h3's link was still taken.
    let (h1_id, h2_id) = (h1.node_id(), credentials(&net, 2).node_id());
    let datagrams = vec![
        gossip_datagram(h2_id, h1_id, &[]),
        gossip_datagram(h1_id, h2_id, &[]),
    ];
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (config, ns) = (member_config(&h3.identity()), net.host_ns(3));
    let client = std::thread::spawn(move || {
        run_in_netns(&ns, move || async move {
            let bind = SocketAddr::from(([0, 0, 0, 0], CONTROL_PORT));
            let endpoint = quinn::Endpoint::client(bind).expect("h3's control port");
            let mut links = Vec::new();
            for (_, to) in targets {
                let conn = endpoint
                    .connect_with(config.clone(), to, tls::SERVER_NAME)
                    .expect("connect")
                    .await
                    .expect("h3's connection");
                let seen = Shared::default();
                tokio::spawn(observe(conn.clone(), seen.clone()));
                links.push((conn, seen));
            }
            let mut before = Vec::new();
            for (conn, _) in &links {
                before.push(sync_on(conn).await);
            }
            // Let the daemons talk SWIM to "h3" for a moment.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let _ = ready_tx.send(());
            let _ = go_rx.await;
            let mut probes = Vec::new();
            for (((conn, seen), sync_before), datagram) in
                links.into_iter().zip(before).zip(datagrams)
            {
                let gossip_after = conn
                    .send_datagram(datagram.into())
                    .map_err(|e| e.to_string());
                let sync_after = sync_on(&conn).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                probes.push(Probe {
                    sync_before,
                    sync_after,
                    gossip_after,
                    seen,
                });
            }
            endpoint.close(0u32.into(), b"done");
            probes
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the client with h3's credentials connects to h1 and h2");
    let marks: Vec<usize> = [1, 2].iter().map(|&i| log_len(&net, i)).collect();
    let revoking = Instant::now();
    net.overlayctl_ok(1, &["revoke", "h3"])
        .expect("overlayctl revoke h3 on h1");
    let revoked_on_h1 = Instant::now();
    net.wait_member_state(2, 3, MemberState::Revoked, Duration::from_secs(10))
        .expect("h2 learns that h3 is revoked");
    let revoked_on_h2 = Instant::now();
    eprintln!(
        "revoke took {:.2} s on h1; h2 listed h3 revoked {:.2} s after it began",
        (revoked_on_h1 - revoking).as_secs_f64(),
        (revoked_on_h2 - revoking).as_secs_f64()
    );
    let _ = go_tx.send(());
    let probes = client
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    for (((target, probe), applied), mark) in [1, 2]
        .into_iter()
        .zip(&probes)
        .zip([revoked_on_h1, revoked_on_h2])
        .zip(marks)
    {
        let what = format!("h3's connection to h{target}, opened before the revocation");
        let seen = locked(&probe.seen);
        let datagrams_after = seen.datagrams.iter().filter(|t| **t > applied).count();
        let streams_after: Vec<&str> = seen
            .streams
            .iter()
            .filter(|(t, _)| *t > revoking)
            .map(|(_, what)| what.as_str())
            .collect();
        eprintln!(
            "{what}: sync before {:?}, after {:?}; datagrams from h{target} {} before, {datagrams_after} after; streams h{target} opened after the revoke began {streams_after:?}; gossip sent after: {:?}",
            probe.sync_before,
            probe.sync_after,
            seen.datagrams.len() - datagrams_after,
            probe.gossip_after
        );
        assert!(
            probe.sync_before.is_ok(),
            "h{target} did not serve h3 before its revocation: {:?}",
            probe.sync_before
        );
        check_closed(
            &what,
            &seen,
            (revoking, applied),
            limit,
            "revoked",
            &mut failures,
        );
        if let Ok(records) = probe.sync_after {
            failures.push(format!(
                "{what}: h{target} answered a Sync after the revocation, with {records} records"
            ));
        }
        if datagrams_after > 0 {
            failures.push(format!(
                "{what}: h{target} sent {datagrams_after} datagrams after the revocation"
            ));
        }
        if !streams_after.is_empty() {
            failures.push(format!(
                "{what}: h{target} opened streams after the revocation: {streams_after:?}"
            ));
        }
        let log = log_since(&net, target, mark);
        let from_h3 = format!("the connection of node {} sent", h3.certificate.number);
        if let Some(line) = log.lines().find(|l| {
            l.contains("dropped gossip sent in another member's name") && l.contains(&from_h3)
        }) {
            failures.push(format!(
                "{what}: h{target} took a gossip datagram after the revocation: {}",
                line.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "a lapsed certificate kept its connections:\n{}",
        failures.join("\n")
    );
    net.down().expect("down");
}
