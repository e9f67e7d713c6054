//! End-to-end tests of the control plane: the real `overlayd` in every host namespace in
//! gossip mode (h1 ran `overlayctl init`, the others joined with tokens from h1), real
//! kernels (root). Each test has its own run (prefix) and measures how long things take;
//! the timings are printed and named in the assertion messages.
//!
//! ```text
//!                          P-ul: br0 (underlay switch)
//!      +-----------+-----------+-----------+-----------+-----------+
//!      |           |           |           |           |           |
//!  P-h1 .11    P-h2 .12    P-h3 .13    P-h4 .14    P-h5 .15    P-h6 .16   198.18.0.x/15
//!  admin (CA)  member      member      member      (6 hosts only in the partition test)
//!  UDP 51820 WireGuard, UDP 51821 QUIC control plane; state in /run/testnet/P/hI/state
//!  ovl0, br0 10.42.I.1/24
//!      |           |           |           |
//!    h1-c1       h2-c1       h3-c1       h4-c1       one container per host: 10.42.I.2
//! ```
//!
//! Partition: nft drop rules between {h1,h2,h3} and {h4,h5,h6} (`Testnet::partition`).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Pinger, now_s, pings, pings_once, root};
use testnet::{MemberState, NETWORK, Options, Testnet};

/// Gossip mode, one container per host; hosts 1 to `members` form the network.
fn up(hosts: usize, members: usize) -> Testnet {
    let mut opts = Options::new(hosts, 1);
    opts.members = Some(members);
    Testnet::up(opts).expect("testnet up (gossip mode)")
}

/// Container `c1` of host `i`.
fn c1(i: usize) -> String {
    format!("h{i}-c1")
}

/// Its overlay address, `10.42.I.2`.
fn c1_addr(net: &Testnet, i: usize) -> String {
    net.addr(&c1(i)).expect("addr").to_string()
}

/// Polls `check(observer)` for every observer until it holds for all of them or
/// `give_up` has passed since `start`; returns, per observer, how long after `start` the
/// first check that held began (`None`: never).
fn times_until(
    start: Instant,
    observers: &[usize],
    give_up: Duration,
    check: impl Fn(usize) -> bool,
) -> Vec<(usize, Option<Duration>)> {
    let mut times: Vec<(usize, Option<Duration>)> = observers.iter().map(|&o| (o, None)).collect();
    loop {
        for (observer, time) in times.iter_mut().filter(|(_, t)| t.is_none()) {
            // The time the check began: a check that pings may take its timeout to answer.
            let asked = start.elapsed();
            if check(*observer) {
                *time = Some(asked);
            }
        }
        if times.iter().all(|(_, t)| t.is_some()) || start.elapsed() >= give_up {
            return times;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `h1 2.31 s, h2 never (gave up after 20 s)`.
fn show_times(times: &[(usize, Option<Duration>)], give_up: Duration) -> String {
    times
        .iter()
        .map(|(o, t)| match t {
            Some(t) => format!("h{o} {:.2} s", t.as_secs_f64()),
            None => format!("h{o} never (gave up after {} s)", give_up.as_secs()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Asserts every observer got there within `limit`; prints the timings either way.
fn assert_all_within(
    what: &str,
    times: &[(usize, Option<Duration>)],
    limit: Duration,
    give_up: Duration,
) {
    let shown = show_times(times, give_up);
    eprintln!("{what}: {shown}");
    assert!(
        times.iter().all(|(_, t)| t.is_some_and(|t| t <= limit)),
        "{what}: not within {} s on every host: {shown}",
        limit.as_secs_f64()
    );
}

/// Whether `observer` sees member `member` in `state` and has no route to its subnet.
fn gone(net: &Testnet, observer: usize, member: usize, state: MemberState) -> bool {
    net.member_state(observer, member).ok().flatten() == Some(state)
        && net.has_route_to(observer, member).is_ok_and(|has| !has)
}

/// For each pinger, seconds from `at` (unix s) to its first reply after it, waiting until
/// `deadline`; asserts all are within `limit` seconds.
fn assert_replies_within(
    what: &str,
    pingers: &mut [Pinger],
    at: f64,
    limit: f64,
    deadline: Instant,
) {
    let gaps: Vec<(String, Option<f64>)> = pingers
        .iter_mut()
        .map(|p| {
            let gap = p.first_reply_after(at, deadline).map(|t| t - at);
            (format!("{} -> {}", p.from, p.to), gap)
        })
        .collect();
    let shown = gaps
        .iter()
        .map(|(pair, gap)| match gap {
            Some(g) => format!("{pair} {g:.2} s"),
            None => format!("{pair} never"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!("{what}: {shown}");
    assert!(
        gaps.iter().all(|(_, g)| g.is_some_and(|g| g <= limit)),
        "{what}: not every pair got a reply within {limit} s: {shown}"
    );
}

/// Every host's `ip -4 route show`, index 0 is h1.
fn all_routes(net: &Testnet) -> Vec<String> {
    (1..=net.hosts())
        .map(|i| net.routes(i).expect("ip route"))
        .collect()
}

fn assert_routes_unchanged(what: &str, before: &[String], net: &Testnet) {
    for (index, (old, new)) in before.iter().zip(all_routes(net)).enumerate() {
        assert_eq!(old, &new, "{what}: the routes of h{} changed", index + 1);
    }
}

#[test]
fn joined_host_is_reachable_within_3_s_of_join() {
    if !root() {
        return;
    }
    let net = up(4, 3);
    let target = c1_addr(&net, 4);
    let mut pingers: Vec<Pinger> = (1..=3)
        .map(|i| Pinger::start(&net, &c1(i), &target))
        .collect();
    let began = Instant::now();
    let joined = net.join_host(4).expect("join h4");
    let at = now_s() - joined.elapsed().as_secs_f64();
    eprintln!(
        "token and join took {:.2} s",
        (joined - began).as_secs_f64()
    );
    assert_replies_within(
        "h4's container reachable after join",
        &mut pingers,
        at,
        3.0,
        Instant::now() + Duration::from_secs(10),
    );
    // and it sees every member alive
    for member in 1..=3 {
        net.wait_member_state(4, member, MemberState::Alive, Duration::from_secs(5))
            .expect("h4 sees the members");
    }
    drop(pingers);
    net.down().expect("down");
}

#[test]
fn killed_daemon_is_marked_down_and_comes_back_after_restart() {
    if !root() {
        return;
    }
    let mut net = up(4, 4);
    let others = [1, 2, 3];
    net.kill_daemon(4).expect("kill -9 h4's daemon");
    let killed = Instant::now();
    let give_up = Duration::from_secs(30);
    let times = times_until(killed, &others, give_up, |o| {
        gone(&net, o, 4, MemberState::Down)
    });
    assert_all_within(
        "after kill -9 of h4: down and route to 10.42.4.0/24 gone",
        &times,
        Duration::from_secs(10),
        give_up,
    );

    let target = c1_addr(&net, 4);
    let mut pingers: Vec<Pinger> = others
        .iter()
        .map(|&i| Pinger::start(&net, &c1(i), &target))
        .collect();
    let restarted = Instant::now();
    let at = now_s();
    net.start_daemon(4).expect("start h4 again");
    eprintln!(
        "h4's daemon was ready {:.2} s after the restart began",
        restarted.elapsed().as_secs_f64()
    );
    let give_up = Duration::from_secs(20);
    let times = times_until(restarted, &others, give_up, |o| {
        net.member_state(o, 4).ok().flatten() == Some(MemberState::Alive)
            && net.has_route_to(o, 4).unwrap_or(false)
    });
    assert_all_within(
        "after restarting h4: alive with a route",
        &times,
        Duration::from_secs(5),
        give_up,
    );
    assert_replies_within(
        "h4's container reachable after restart",
        &mut pingers,
        at,
        5.0,
        Instant::now() + Duration::from_secs(10),
    );
    drop(pingers);
    net.down().expect("down");
}

#[test]
fn partition_3_3_heals_within_10_s() {
    if !root() {
        return;
    }
    let net = up(6, 6);
    let (a, b) = ([1, 2, 3], [4, 5, 6]);
    net.partition(&a, &b).expect("partition");
    let cut = Instant::now();
    // Wait until each side sees the other down, or 20 s (not a bar: the heal is the test).
    let all: Vec<usize> = a.iter().chain(&b).copied().collect();
    let give_up = Duration::from_secs(20);
    let times = times_until(cut, &all, give_up, |o| {
        let far: &[usize] = if a.contains(&o) { &b } else { &a };
        far.iter()
            .all(|&m| net.member_state(o, m).ok().flatten() == Some(MemberState::Down))
    });
    eprintln!(
        "partition: the other side seen down: {}",
        show_times(&times, give_up)
    );
    // Ping every cross pair, both ways, through the heal.
    let mut pingers = Vec::new();
    for &x in &a {
        for &y in &b {
            pingers.push(Pinger::start(&net, &c1(x), &c1_addr(&net, y)));
            pingers.push(Pinger::start(&net, &c1(y), &c1_addr(&net, x)));
        }
    }
    let at = now_s();
    net.heal().expect("heal");
    assert_replies_within(
        "after healing the 3/3 partition",
        &mut pingers,
        at,
        10.0,
        Instant::now() + Duration::from_secs(20),
    );
    drop(pingers);
    let took = net
        .wait_converged(&all, Duration::from_secs(30))
        .expect("everyone alive again");
    eprintln!(
        "after healing: every host sees every other alive and pings ({:.2} s after the checks above)",
        took.as_secs_f64()
    );
    net.down().expect("down");
}

#[test]
fn leaving_host_is_dropped_at_once() {
    if !root() {
        return;
    }
    let net = up(4, 4);
    net.overlayctl_ok(4, &["leave"])
        .expect("overlayctl leave on h4");
    let left = Instant::now();
    let give_up = Duration::from_secs(15);
    let times = times_until(left, &[1, 2, 3], give_up, |o| {
        gone(&net, o, 4, MemberState::Left)
    });
    assert_all_within(
        "after h4 left: left and route to 10.42.4.0/24 gone",
        &times,
        Duration::from_secs(2),
        give_up,
    );
    let status = net.status_json(4).expect("h4 status");
    let member = status.member.expect("h4 still reports the network it left");
    assert!(member.left, "h4 does not say it left: {member:?}");
    for i in 1..=3 {
        assert!(
            !pings_once(&net, &c1(i), &c1_addr(&net, 4)),
            "h{i}-c1 still reaches h4-c1 after h4 left"
        );
    }
    net.down().expect("down");
}

/// Asserts h3 is revoked with no route on every host in `members`, and that no container
/// gets through to or from h3's.
fn assert_h3_cut_off(net: &Testnet, members: &[usize], when: &str) {
    for &o in members {
        assert_eq!(
            net.member_state(o, 3).expect("peers"),
            Some(MemberState::Revoked),
            "{when}: h{o} no longer lists h3 as revoked"
        );
        assert!(
            !net.has_route_to(o, 3).expect("routes"),
            "{when}: h{o} routes 10.42.3.0/24 again"
        );
        assert!(
            !pings_once(net, &c1(o), &c1_addr(net, 3)),
            "{when}: h{o}-c1 reaches h3-c1"
        );
        assert!(
            !pings_once(net, &c1(3), &c1_addr(net, o)),
            "{when}: h3-c1 reaches h{o}-c1"
        );
    }
}

#[test]
fn revoked_host_is_cut_off_and_stays_out() {
    if !root() {
        return;
    }
    let mut net = up(4, 4);
    let members = [1, 2, 4];
    net.overlayctl_ok(1, &["revoke", "h3"])
        .expect("overlayctl revoke h3 on h1");
    let revoked = Instant::now();
    let give_up = Duration::from_secs(15);
    let times = times_until(revoked, &members, give_up, |o| {
        gone(&net, o, 3, MemberState::Revoked) && !pings_once(&net, &c1(o), &c1_addr(&net, 3))
    });
    assert_all_within(
        "after revoking h3: revoked, no route, h3-c1 unreachable",
        &times,
        Duration::from_secs(5),
        give_up,
    );
    assert_h3_cut_off(&net, &members, "after the revocation");

    // h3 restarting from its state dir does not bring it back: watch it for 5 s.
    net.restart_daemon(3).expect("restart h3");
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(5) {
        for &o in &members {
            assert!(
                gone(&net, o, 3, MemberState::Revoked),
                "{:.2} s after h3 restarted, h{o} lists it as {:?} or routes it",
                watch.elapsed().as_secs_f64(),
                net.member_state(o, 3)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_h3_cut_off(&net, &members, "after h3 restarted");

    // The revocation survives restarts of every member.
    for &o in &members {
        net.restart_daemon(o).expect("restart a member");
    }
    let took = net
        .wait_converged(&members, Duration::from_secs(30))
        .expect("members find each other again after their restarts");
    eprintln!(
        "members alive and pinging again {:.2} s after their restarts",
        took.as_secs_f64()
    );
    assert_h3_cut_off(&net, &members, "after every member restarted");
    net.down().expect("down");
}

#[test]
fn members_keep_working_while_the_admin_is_down() {
    if !root() {
        return;
    }
    let mut net = up(4, 4);
    net.stop_daemon(1).expect("stop h1 (SIGTERM)");
    let rest = [2, 3, 4];
    for &x in &rest {
        for &y in rest.iter().filter(|&&y| y != x) {
            assert!(
                pings(&net, &c1(x), &c1_addr(&net, y)),
                "with h1 down, h{x}-c1 cannot ping h{y}-c1"
            );
        }
    }
    // h2 restarts from its state dir while the admin (the bootstrap host) is down.
    let mut pingers = vec![
        Pinger::start(&net, &c1(2), &c1_addr(&net, 3)),
        Pinger::start(&net, &c1(3), &c1_addr(&net, 2)),
    ];
    net.stop_daemon(2).expect("stop h2");
    let restarted = Instant::now();
    let at = now_s();
    net.start_daemon(2).expect("start h2 from its state dir");
    assert_replies_within(
        "h2 <-> h3 after h2 restarted with h1 down",
        &mut pingers,
        at,
        5.0,
        Instant::now() + Duration::from_secs(15),
    );
    drop(pingers);
    for member in [3, 4] {
        net.wait_member_state(2, member, MemberState::Alive, Duration::from_secs(5))
            .unwrap_or_else(|e| {
                panic!(
                    "{:.2} s after h2 restarted: {e:#}",
                    restarted.elapsed().as_secs_f64()
                )
            });
    }
    assert!(
        pings(&net, &c1(2), &c1_addr(&net, 4)),
        "h2-c1 cannot ping h4-c1 after h2 restarted with h1 down"
    );
    net.down().expect("down");
}

/// Asserts `join` on host `i` with `token` is refused: exit `code` (2 for a usage error
/// overlayctl catches itself, 1 for a refusal), one line `overlayctl: ...` on stderr
/// (containing `word` if given), no host's routes changed, host `i` in no network.
fn assert_join_refused(
    net: &Testnet,
    i: usize,
    what: &str,
    token: &str,
    code: i32,
    word: Option<&str>,
) {
    let before = all_routes(net);
    let started = Instant::now();
    let out = net.join_with(i, token).expect("run overlayctl join");
    let took = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let message = stderr.trim();
    eprintln!(
        "join with {what}: {:?} after {took:.2} s: {message}",
        out.status.code()
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "join with {what}: exit {:?}, not {code} (after {took:.2} s); stderr: {message}",
        out.status.code()
    );
    assert!(
        message.starts_with("overlayctl: ") && message.lines().count() == 1,
        "join with {what}: not one line `overlayctl: ...`: {message:?}"
    );
    assert!(
        message.len() > "overlayctl: ".len() + 10,
        "join with {what}: the error says nothing: {message:?}"
    );
    if let Some(word) = word {
        assert!(
            message.to_lowercase().contains(word),
            "join with {what}: the error does not say {word:?}: {message}"
        );
    }
    assert_routes_unchanged(&format!("join with {what}"), &before, net);
    let status = net.status_json(i).expect("status");
    assert!(
        status.member.is_none(),
        "join with {what}: h{i} is in a network after all: {:?}",
        status.member
    );
}

#[test]
fn join_is_refused_without_a_valid_token() {
    if !root() {
        return;
    }
    // h1 and h2 are members; h3 and h4 run daemons that are in no network.
    let net = up(4, 2);
    assert_join_refused(&net, 3, "an empty token", "", 2, Some("no token"));
    assert_join_refused(
        &net,
        3,
        "a garbage token",
        "ovljoin1.not-a-token",
        1,
        Some("token"),
    );
    assert_join_refused(
        &net,
        3,
        "a token of random words",
        "hello world",
        1,
        Some("token"),
    );

    let expired = net.create_token("1s").expect("token with ttl 1s");
    // The token must be past its expiry: there is no event to poll for.
    std::thread::sleep(Duration::from_secs(2));
    assert_join_refused(&net, 3, "an expired token", &expired, 1, Some("expire"));

    // Another network: a CA of its own, the right name and h1's control endpoint.
    let stranger = keys::CaKey::generate();
    let endpoint = SocketAddr::new(net.addr("h1").expect("h1 addr"), net.control_port());
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let foreign = keys::JoinToken::new(
        keys::Name::new(NETWORK).expect("network name"),
        vec![endpoint],
        stranger.fingerprint(),
        keys::TokenSecret::generate(),
        expires,
        Vec::new(),
    )
    .expect("a well-formed token");
    assert_join_refused(
        &net,
        3,
        "a token of another CA",
        &foreign.to_text(),
        1,
        Some("ca"),
    );

    // A token used once is spent: h3 joins with it, then h4 is refused.
    let token = net.create_token("10m").expect("token");
    let out = net.join_with(3, &token).expect("run join");
    assert!(
        out.status.success(),
        "h3 could not join with a fresh token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    net.wait_converged(&[1, 2, 3], Duration::from_secs(10))
        .expect("h3 joined");
    assert_join_refused(&net, 4, "a token already used", &token, 1, Some("used"));
    net.down().expect("down");
}

/// A member whose config leaves `advertise` out follows its own address: after it moves,
/// it publishes a new record, so a member that restarts (and rebuilds its tunnels from its
/// saved directory) reaches it at the new address.
#[test]
fn moved_member_announces_its_new_address() {
    if !root() {
        return;
    }
    let mut opts = Options::new(3, 1);
    opts.configure = Some(Box::new(|i, cfg| {
        if i == 2
            && let Some(control) = cfg.control.as_mut()
        {
            control.advertise = None;
        }
    }));
    let mut net = Testnet::up(opts).expect("testnet up (gossip mode)");
    let new_addr = "198.18.1.12".parse().expect("address");
    net.set_underlay_addr(2, new_addr).expect("move h2");
    let moved = Instant::now();
    // Every member learns the new record (and saves it with its directory).
    let times = times_until(moved, &[1, 3], Duration::from_secs(10), |o| {
        saved_endpoint(&net, o, "h2").is_some_and(|e| e.ip().to_string() == "198.18.1.12")
    });
    assert_all_within(
        "h2's new address in every directory",
        &times,
        Duration::from_secs(10),
        Duration::from_secs(10),
    );
    // h3 restarts: it rebuilds its tunnel to h2 from the saved record, at the new address.
    net.restart_daemon(3).expect("restart h3");
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(5);
    while !pings_once(&net, &c1(3), &c1_addr(&net, 2)) {
        assert!(
            Instant::now() < deadline,
            "h3-c1 cannot reach h2-c1 5 s after h3 restarted; h2 moved to 198.18.1.12"
        );
    }
    eprintln!(
        "h3 reached the moved h2 {:.2} s after restarting",
        restarted.elapsed().as_secs_f64()
    );
    net.down().expect("down");
}

/// The first endpoint of `member`'s record in `observer`'s saved directory.
fn saved_endpoint(net: &Testnet, observer: usize, member: &str) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(net.state_dir(observer).join("directory.json")).ok()?;
    let dir: protocol::records::Directory = serde_json::from_str(&text).ok()?;
    let name = keys::Name::new(member).ok()?;
    dir.live_member(&name)?.endpoints.first().copied()
}

/// The full sync (anti-entropy) repairs what gossip cannot: h3 is stopped while h4 leaves,
/// and by the time h3 is back nobody gossips h4's departure any more; h3's saved directory
/// still has h4 alive. Only a sync with another member tells h3 that h4 left. The sync
/// interval is set to 2 s for the test (default 30 s).
#[test]
fn full_sync_repairs_what_gossip_missed() {
    if !root() {
        return;
    }
    let mut opts = Options::new(4, 1);
    opts.configure = Some(Box::new(|_, cfg| {
        if let Some(control) = cfg.control.as_mut() {
            control.extra.push("sync_interval_ms = 2000".into());
        }
    }));
    let mut net = Testnet::up(opts).expect("testnet up (gossip mode)");
    net.stop_daemon(3).expect("stop h3");
    net.overlayctl_ok(4, &["leave"])
        .expect("overlayctl leave on h4");
    let give_up = Duration::from_secs(15);
    let times = times_until(Instant::now(), &[1, 2], give_up, |o| {
        gone(&net, o, 4, MemberState::Left)
    });
    assert_all_within(
        "h4 left (h3 stopped)",
        &times,
        Duration::from_secs(2),
        give_up,
    );
    // Let every gossip transmission of the leave run out before h3 comes back.
    std::thread::sleep(Duration::from_secs(6));
    net.start_daemon(3).expect("start h3 from its state dir");
    let started = Instant::now();
    let times = times_until(started, &[3], give_up, |o| {
        gone(&net, o, 4, MemberState::Left)
    });
    assert_all_within(
        "h3, back, learns that h4 left (by a full sync every 2 s)",
        &times,
        Duration::from_secs(6),
        give_up,
    );
    net.down().expect("down");
}
