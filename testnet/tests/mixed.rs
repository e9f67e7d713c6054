//! End-to-end: a static external peer beside gossiped members (issue 3, item 10). h1, h2
//! and h3 form the network (h1 ran `overlayctl init`, h2 and h3 joined with tokens); h4 is
//! not in the network: its `overlayd` runs in static mode with one `[[peer]]`, h1, and h1's
//! config lists h4 as a static `[[peer]]` beside its membership. Real daemons, real kernels
//! (root).
//!
//! ```text
//!                          P-ul: br0 (underlay switch)
//!      +-----------------+-----------------+-----------------+
//!      |                 |                 |                 |
//!  P-h1 .11          P-h2 .12          P-h3 .13          P-h4 .14        198.18.0.x/15
//!  admin (CA)        member            member            static mode, not a member
//!  [[peer]] h4       (no route to      (no route to      [[peer]] h1
//!   10.42.4.0/24      10.42.4.0/24)     10.42.4.0/24)     10.42.1.0/24
//!      |   \____ gossip (QUIC 51821) and tunnels ____/       |
//!      |                                                     |
//!      +============ static WireGuard tunnel (UDP 51820) =====+
//!      |                 |                 |                 |
//!    h1-c1             h2-c1             h3-c1             h4-c1      10.42.I.2
//! ```
//!
//! `Options::configure` cannot write these configs: it runs before any daemon starts but
//! does not see the other hosts' public keys. So the test builds the run with
//! `start_daemons = false`, writes h1's and h4's configs from `gossip_config` and
//! `static_config`, starts the daemons and forms the network as `up` does with
//! `members: Some(3)` (init on h1, token and join for h2 and h3).

mod common;

use std::time::{Duration, Instant};

use common::{Pinger, now_s, pings, pings_once, root};
use testnet::{LISTEN_PORT, MemberState, Options, Testnet};

/// h4's container subnet, routed to it only by h1.
const H4_SUBNET: &str = "10.42.4.0/24";

/// Container `c1` of host `i`.
fn c1(i: usize) -> String {
    format!("h{i}-c1")
}

/// Its overlay address, `10.42.I.2`.
fn c1_addr(net: &Testnet, i: usize) -> String {
    net.addr(&c1(i)).expect("addr").to_string()
}

/// Four hosts with one container each: h1..h3 a gossip network, h4 a static peer of h1.
fn up_mixed() -> Testnet {
    let mut opts = Options::new(4, 1);
    opts.start_daemons = false;
    let mut net = Testnet::up(opts).expect("testnet up (gossip mode, no daemons yet)");

    // h4: static mode, one peer (h1, its key, 198.18.0.11:51820, 10.42.1.0/24).
    let mut h4 = net.static_config(4).expect("h4 static config");
    h4.peers.retain(|p| p.host == 1);
    assert_eq!(h4.peers.len(), 1, "h4's static config has no peer h1");
    assert_eq!(h4.peers[0].subnets, ["10.42.1.0/24"]);
    assert_eq!(
        h4.peers[0].endpoint,
        Some(([198, 18, 0, 11], LISTEN_PORT).into())
    );
    net.write_config(4, &h4).expect("write h4's config");

    // h1: gossip mode plus one static peer (h4, its key, 198.18.0.14:51820, 10.42.4.0/24).
    let mut h1 = net.gossip_config(1).expect("h1 gossip config");
    h1.peers = net
        .static_config(1)
        .expect("h1 static config")
        .peers
        .into_iter()
        .filter(|p| p.host == 4)
        .collect();
    assert_eq!(h1.peers.len(), 1, "h1's static config has no peer h4");
    assert_eq!(h1.peers[0].subnets, [H4_SUBNET]);
    net.write_config(1, &h1).expect("write h1's config");

    for i in 1..=4 {
        net.start_daemon(i)
            .unwrap_or_else(|e| panic!("start h{i}'s daemon: {e:#}"));
    }
    // What `up` does with `members: Some(3)`.
    net.init_network().expect("overlayctl init on h1");
    for i in [2, 3] {
        net.join_host(i)
            .unwrap_or_else(|e| panic!("h{i} joins: {e:#}"));
    }
    net.wait_converged(&[1, 2, 3], Duration::from_secs(30))
        .expect("h1..h3 see each other alive and ping");
    net
}

/// Asserts `a-c1` and `b-c1` ping each other (each way polled up to 5 s).
fn assert_pings_both_ways(net: &Testnet, a: usize, b: usize, when: &str) {
    assert!(
        pings(net, &c1(a), &c1_addr(net, b)),
        "{when}: h{a}-c1 cannot ping h{b}-c1"
    );
    assert!(
        pings(net, &c1(b), &c1_addr(net, a)),
        "{when}: h{b}-c1 cannot ping h{a}-c1"
    );
}

/// Asserts h1 lists h4 as a static peer: in the raw `peers --json`, `name` and `state` are
/// null, the key is h4's, the subnet 10.42.4.0/24, the endpoint 198.18.0.14:51820, the
/// overlay address 10.42.4.1 (the first of its subnet).
fn assert_h4_static_on_h1(net: &Testnet, when: &str) {
    let out = net
        .overlayctl_ok(1, &["peers", "--json"])
        .expect("peers --json on h1");
    let peers: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("h1's peers --json is a JSON list");
    let key = net.public_key(4).expect("h4's key").to_string();
    let h4: Vec<&serde_json::Value> = peers
        .iter()
        .filter(|p| p["public_key"].as_str() == Some(key.as_str()))
        .collect();
    assert_eq!(h4.len(), 1, "{when}: h1 lists h4's key {} times", h4.len());
    let h4 = h4[0];
    assert!(
        h4["name"].is_null() && h4["state"].is_null(),
        "{when}: h1 lists h4 with a name or state, not as a static peer: {h4}"
    );
    assert_eq!(
        h4["subnets"],
        serde_json::json!([H4_SUBNET]),
        "{when}: {h4}"
    );
    assert_eq!(
        h4["endpoint"].as_str(),
        Some("198.18.0.14:51820"),
        "{when}: {h4}"
    );
    assert_eq!(h4["address"].as_str(), Some("10.42.4.1"), "{when}: {h4}");
}

/// Asserts host `i` (a member other than h1) neither lists h4's key nor routes 10.42.4.0/24,
/// and its container cannot reach h4's.
fn assert_h4_unknown_to(net: &Testnet, i: usize, when: &str) {
    let key = net.public_key(4).expect("h4's key");
    let peers = net.peers_json(i).expect("peers --json");
    assert!(
        peers.iter().all(|p| p.public_key != key),
        "{when}: h{i} lists h4 (a static peer of h1 only) as a peer"
    );
    assert!(
        !net.has_route_to(i, 4).expect("routes"),
        "{when}: h{i} routes {H4_SUBNET}:\n{}",
        net.routes(i).unwrap_or_default()
    );
    assert!(
        !pings_once(net, &c1(i), &c1_addr(net, 4)),
        "{when}: h{i}-c1 reaches h4-c1"
    );
}

/// Polls `check` every 50 ms until it holds or `give_up` has passed since `start`; returns
/// how long after `start` the first check that held began.
fn time_until(start: Instant, give_up: Duration, check: impl Fn() -> bool) -> Option<Duration> {
    loop {
        let asked = start.elapsed();
        if check() {
            return Some(asked);
        }
        if start.elapsed() >= give_up {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The longest stretch of `from..to` (unix s) in which `pinger` got no reply, to the
/// nearest 0.1 s above.
fn longest_gap(pinger: &mut Pinger, from: f64, to: f64) -> f64 {
    const STEP: f64 = 0.1;
    let (mut longest, mut run) = (0.0_f64, 0.0_f64);
    let mut t = from;
    while t < to {
        if pinger.replied_between(t, t + STEP) {
            run = 0.0;
        } else {
            run += STEP;
            longest = longest.max(run);
        }
        t += STEP;
    }
    longest
}

#[test]
fn static_peer_works_beside_gossiped_members() {
    if !root() {
        return;
    }
    let began = Instant::now();
    let mut net = up_mixed();
    eprintln!(
        "h1..h3 formed the network, h4 static: {:.2} s",
        began.elapsed().as_secs_f64()
    );

    // The static tunnel and the gossiped ones, both ways.
    assert_pings_both_ways(&net, 1, 4, "static tunnel");
    assert_pings_both_ways(&net, 1, 2, "gossiped tunnel");
    assert_pings_both_ways(&net, 1, 3, "gossiped tunnel");
    // h1 has no `address` in its config: it got 10.42.1.1 from its certificate after its
    // route to the static peer was made, and that route prefers it as source too, so the
    // hosts themselves reach each other (h4 has `address = 10.42.4.1`, static mode).
    let route = net
        .exec("h1", &["ip", "route", "get", "10.42.4.1"])
        .expect("ip route get");
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains(" dev ovl0 ") && route.contains(" src 10.42.1.1 "),
        "h1's route to h4 does not prefer h1's overlay address: {route}"
    );
    assert!(
        pings(&net, "h1", "10.42.4.1"),
        "h1 cannot ping h4's overlay address"
    );
    assert!(
        pings(&net, "h4", "10.42.1.1"),
        "h4 cannot ping h1's overlay address"
    );

    // h1 lists h4 as static, h2 and h3 as alive members.
    assert_h4_static_on_h1(&net, "after up");
    for member in [2, 3] {
        assert_eq!(
            net.member_state(1, member).expect("peers on h1"),
            Some(MemberState::Alive),
            "h1 does not list h{member} as an alive member"
        );
    }
    assert!(
        net.has_route_to(1, 4).expect("routes"),
        "h1 does not route {H4_SUBNET}"
    );
    // h4 knows only h1, statically, and is in no network.
    let h4_peers = net.peers_json(4).expect("peers on h4");
    let h1_key = net.public_key(1).expect("h1's key");
    assert!(
        h4_peers.len() == 1
            && h4_peers[0].public_key == h1_key
            && h4_peers[0].name.is_none()
            && h4_peers[0].state.is_none(),
        "h4 should list exactly h1, static: {h4_peers:?}"
    );
    assert!(
        net.status_json(4).expect("status on h4").member.is_none(),
        "h4 is in a network"
    );
    // Static peers are local to the host that configures them.
    for i in [2, 3] {
        assert_h4_unknown_to(&net, i, "after up");
    }

    // kill -9 h2: h1 withdraws it within 10 s; the static tunnel carries on throughout.
    let mut pingers = vec![
        Pinger::start(&net, &c1(1), &c1_addr(&net, 4)),
        Pinger::start(&net, &c1(4), &c1_addr(&net, 1)),
    ];
    let warmed = pingers.iter_mut().all(|p| {
        p.first_reply_after(0.0, Instant::now() + Duration::from_secs(5))
            .is_some()
    });
    assert!(
        warmed,
        "h1-c1 <-> h4-c1 pingers got no reply before the kill"
    );
    let killed_at = now_s();
    net.kill_daemon(2).expect("kill -9 h2's daemon");
    let killed = Instant::now();
    let give_up = Duration::from_secs(30);
    let down = time_until(killed, give_up, || {
        net.member_state(1, 2).ok().flatten() == Some(MemberState::Down)
            && net.has_route_to(1, 2).is_ok_and(|has| !has)
    });
    eprintln!("after kill -9 of h2: h1 sees it down, route withdrawn: {down:?}");
    assert!(
        down.is_some_and(|t| t <= Duration::from_secs(10)),
        "h1 did not mark h2 down and withdraw 10.42.2.0/24 within 10 s: {down:?}; h1's routes:\n{}",
        net.routes(1).unwrap_or_default()
    );
    let down_at = now_s();
    for pinger in &mut pingers {
        let gap = longest_gap(pinger, killed_at, down_at);
        eprintln!(
            "{} -> {}: longest gap between replies while h2 went down: {gap:.1} s",
            pinger.from, pinger.to
        );
        assert!(
            gap < 1.5,
            "{} -> {} went {gap:.1} s without a reply while h2 went down",
            pinger.from,
            pinger.to
        );
    }
    drop(pingers);
    assert_h4_static_on_h1(&net, "with h2 down");
    assert_pings_both_ways(&net, 1, 4, "with h2 down");
    assert_pings_both_ways(&net, 1, 3, "with h2 down");

    // Restarted, h2 is alive again on h1 and reachable; still nothing of h4 on h2.
    let restarted = Instant::now();
    net.start_daemon(2).expect("start h2 again");
    let alive = time_until(restarted, Duration::from_secs(20), || {
        net.member_state(1, 2).ok().flatten() == Some(MemberState::Alive)
            && net.has_route_to(1, 2).unwrap_or(false)
    });
    eprintln!("after restarting h2: h1 sees it alive with a route: {alive:?}");
    assert!(
        alive.is_some_and(|t| t <= Duration::from_secs(5)),
        "h1 does not see h2 alive with a route within 5 s of the restart: {alive:?}"
    );
    assert_pings_both_ways(&net, 1, 2, "after h2 restarted");
    assert_pings_both_ways(&net, 1, 4, "after h2 restarted");
    assert_h4_static_on_h1(&net, "after h2 restarted");
    assert_h4_unknown_to(&net, 2, "after h2 restarted");
    eprintln!("whole test: {:.2} s", began.elapsed().as_secs_f64());
    net.down().expect("down");
}
