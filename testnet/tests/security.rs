//! Security tests of the control plane against real daemons (issue 3, item 8): a hostile
//! client, run in a host's namespace, speaks the control protocol with stolen, forged or
//! missing credentials. Each attack must be refused with a clear (rate-limited) log line on
//! the daemon it targets, and change nobody's routes (`ip -4 route`) nor the endpoints and
//! subnets of `overlayctl peers --json`. Joins with bad tokens are in `control.rs`.
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
use overlayd::control::msg::{Bundle, Request, Response};
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
    SocketAddr::new(net.addr(&format!("h{i}")).expect("host addr"), CONTROL_PORT)
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
        Ok(Response::Ack) => {}
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
        ca_fingerprint: ca.fingerprint(),
    })
    .expect("the foreign CA signs")
}

/// The signed bytes of every member record host `i` holds, sorted.
fn held_records(net: &Testnet, i: usize) -> Vec<Vec<u8>> {
    let dir = read_directory(&net.state_dir(i)).expect("directory.json");
    let mut records: Vec<Vec<u8>> = dir.member_records().map(|r| r.to_bytes()).collect();
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
