//! End-to-end: `overlayctl leave` forgets the network it left (issue 14, item 8). After
//! `leave`, on the admin and on a member alike, the state directory holds nothing of the
//! old network: no `network.json`, `directory.json`, `ca.key`, `admin.json`, and no
//! `control.key` (the old network's certificates name it: whoever holds it could still
//! speak as the member that left until its certificate expires). A later `join` with a
//! token of another network makes the host a plain member of that one: not an admin, no
//! tokens from the old CA. Real daemons, real kernels (root).
//!
//! ```text
//!                  P-ul: br0 (underlay switch)
//!          +-----------------------+
//!          |                       |
//!      P-h1 .11                P-h2 .12                 198.18.0.x/15
//!      network `testnet`:      network `testnet`:       (made by testnet up)
//!        admin (CA 1)            member
//!      leave                   leave
//!      network `second`:       network `second`:        (h2 `init`, h1 `join`)
//!        member                  admin (CA 2)
//!      br0 10.42.1.1/24        br0 10.42.2.1/24
//!        h1-c1 .2                h2-c1 .2               ping h1-c1 -> h2-c1 over `second`
//! ```

mod common;

use std::time::{Duration, Instant};

use common::{pings, root};
use testnet::{MemberState, Options, Testnet};

/// What a state directory may hold of a network; none of it may stay after `leave`.
const NETWORK_FILES: [&str; 5] = [
    "network.json",
    "directory.json",
    "ca.key",
    "admin.json",
    "control.key",
];

/// The files of [`NETWORK_FILES`] (and their `.tmp` copies) in host `i`'s state dir.
fn leftovers(net: &Testnet, i: usize) -> Vec<String> {
    let dir = net.state_dir(i);
    NETWORK_FILES
        .iter()
        .flat_map(|f| [f.to_string(), format!("{f}.tmp")])
        .filter(|f| dir.join(f).exists())
        .collect()
}

/// Runs `overlayctl leave` on host `i` and records what stayed of the network.
fn leave(net: &Testnet, i: usize, role: &str, failures: &mut Vec<String>) {
    let started = Instant::now();
    net.overlayctl_ok(i, &["leave"])
        .unwrap_or_else(|e| panic!("overlayctl leave on h{i}: {e:#}"));
    let left = leftovers(net, i);
    eprintln!(
        "h{i} ({role}) left in {:.2} s; state dir keeps {left:?}",
        started.elapsed().as_secs_f64()
    );
    if !left.is_empty() {
        failures.push(format!(
            "after `leave`, h{i} ({role}) still holds {} of the old network in {}",
            left.join(", "),
            net.state_dir(i).display()
        ));
    }
}

#[test]
fn leave_forgets_the_network_and_a_later_join_is_a_plain_member() {
    if !root() {
        return;
    }
    let net = Testnet::up(Options::new(2, 1)).expect("testnet up (h1 admin, h2 member)");
    let old_ca = net
        .status_json(1)
        .expect("h1 status")
        .member
        .expect("h1 is a member")
        .ca_fingerprint;
    let mut failures = Vec::new();
    leave(&net, 2, "member", &mut failures);
    leave(&net, 1, "admin", &mut failures);

    // A second network, made by the former member; the former admin joins it.
    let init = [
        "init",
        "--network",
        "second",
        "--cidr",
        "10.42.0.0/16",
        "--name",
        "h2",
        "--subnet",
        "10.42.2.0/24",
    ];
    net.overlayctl_ok(2, &init).expect("init on h2");
    let token = net
        .overlayctl_ok(2, &["token", "create", "--ttl", "10m"])
        .expect("token create on h2");
    let token = String::from_utf8(token.stdout).expect("a UTF-8 token");
    let started = Instant::now();
    let joined = net
        .overlayctl_ok(
            1,
            &[
                "join",
                token.trim(),
                "--name",
                "h1",
                "--subnet",
                "10.42.1.0/24",
            ],
        )
        .expect("join on h1 with a token of network second");
    let join_took = started.elapsed();
    let summary = String::from_utf8_lossy(&joined.stdout);
    let first_line = summary.lines().next().unwrap_or_default();
    eprintln!(
        "h1 joined in {:.2} s: {first_line}",
        join_took.as_secs_f64()
    );
    if !first_line.starts_with("joined network second ") {
        failures.push(format!(
            "`overlayctl join` on h1 does not show network second: {first_line:?}"
        ));
    }
    let h1 = net
        .status_json(1)
        .expect("h1 status")
        .member
        .expect("h1 is a member");
    let h2 = net
        .status_json(2)
        .expect("h2 status")
        .member
        .expect("h2 is a member");
    eprintln!(
        "h1: network {}, CA {}, admin {}; h2: CA {}; the old CA was {old_ca}",
        h1.network, h1.ca_fingerprint, h1.admin, h2.ca_fingerprint
    );
    if h1.network != "second" || h1.ca_fingerprint != h2.ca_fingerprint {
        failures.push(format!(
            "h1 is in network {} with CA {}, not in network second with CA {}",
            h1.network, h1.ca_fingerprint, h2.ca_fingerprint
        ));
    }
    if h1.admin {
        failures.push("h1 says it is an admin of network second, which h2 made".into());
    }
    let dir = net.state_dir(1);
    let admin_files: Vec<&str> = ["ca.key", "admin.json"]
        .into_iter()
        .filter(|f| dir.join(f).exists())
        .collect();
    if !admin_files.is_empty() {
        failures.push(format!(
            "h1, a plain member of network second, holds {}",
            admin_files.join(", ")
        ));
    }
    let out = net
        .overlayctl(1, &["token", "create", "--ttl", "10m"])
        .expect("run token create on h1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "token create on h1: {:?}: {}",
        out.status.code(),
        stderr.trim()
    );
    if out.status.success() || !stderr.contains("not an admin") {
        failures.push(format!(
            "token create on h1 (a plain member) did not say it is not an admin: exit {:?}, stdout {:?}, stderr {:?}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim(),
            stderr.trim()
        ));
    }

    // The new network works: each sees the other alive, the containers ping.
    for (observer, member) in [(1, 2), (2, 1)] {
        net.wait_member_state(
            observer,
            member,
            MemberState::Alive,
            Duration::from_secs(10),
        )
        .expect("h1 and h2 see each other in network second");
    }
    let h2_c1 = net.addr("h2-c1").expect("h2-c1's address").to_string();
    assert!(
        pings(&net, "h1-c1", &h2_c1),
        "h1-c1 cannot ping h2-c1 over network second"
    );
    eprintln!(
        "network second: h1 and h2 alive to each other and h1-c1 pings h2-c1 {:.2} s after the join began",
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    net.down().expect("down");
}
