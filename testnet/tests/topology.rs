//! The namespaces, links and addresses `Testnet::up` builds, and that every way of ending a
//! run (down, drop, a failed up, cleanup of a dead run) leaves nothing behind. No daemons.
//!
//! ```text
//!                      P-ul: br0 (bridge, no address)
//!            +--------------h1-----------h2-----------h3---------+
//!                           |            |            |
//!          P-h1 ul0 198.18.0.11  P-h2 ul0 .12   P-h3 ul0 .13     (/15)
//!               br0 10.42.1.1         br0 10.42.2.1  br0 10.42.3.1
//!               |        |            |      |       |      |
//!          P-h1-c1  P-h1-c2      P-h2-c1 P-h2-c2 P-h3-c1 P-h3-c2
//!          10.42.1.2 10.42.1.3   10.42.2.2  .3   10.42.3.2  .3
//! ```
//!
//! Root is required; without it each test prints a skip message and passes.

mod common;

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use common::{NetnsGuard, namespaces_of, pings, root};
use testnet::{Options, Testnet};

#[test]
fn three_hosts_two_containers_reach_each_other_and_down_removes_everything() {
    if !root() {
        return;
    }
    // Static mode: the configs list the peers (checked below).
    let mut opts = Options::static_mode(3, 2);
    opts.start_daemons = false;
    let net = Testnet::up(opts).expect("up");
    let prefix = net.prefix().to_owned();
    assert_eq!(namespaces_of(&prefix).len(), 1 + 3 + 3 * 2);

    for i in 1..=3 {
        // Containers on the same host reach each other over the host's bridge.
        let c1 = format!("h{i}-c1");
        let c2 = format!("h{i}-c2");
        let c2_addr = net.addr(&c2).unwrap().to_string();
        let c1_addr = net.addr(&c1).unwrap().to_string();
        assert!(pings(&net, &c1, &c2_addr), "{c1} -> {c2}");
        assert!(pings(&net, &c2, &c1_addr), "{c2} -> {c1}");
        // Each host reaches every other host on the underlay.
        for k in (1..=3).filter(|&k| k != i) {
            let other = net.addr(&format!("h{k}")).unwrap().to_string();
            assert!(pings(&net, &format!("h{i}"), &other), "h{i} -> h{k}");
        }
    }

    assert_eq!(
        net.addr("h2").unwrap(),
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 12))
    );
    assert_eq!(
        net.addr("h3-c2").unwrap(),
        IpAddr::V4(Ipv4Addr::new(10, 42, 3, 3))
    );
    assert_eq!(
        net.addr(&format!("{prefix}-h1-c1")).unwrap(),
        IpAddr::V4(Ipv4Addr::new(10, 42, 1, 2))
    );
    assert!(net.addr("h4").is_err());
    assert!(net.addr("h1-c3").is_err());
    assert!(net.addr("ul").is_err());
    assert_eq!(net.resolve("h2-c1").unwrap(), format!("{prefix}-h2-c1"));
    assert_eq!(net.resolve("ul").unwrap(), format!("{prefix}-ul"));

    // The container side: MTU, address, default route, forwarding on the host.
    let link = net
        .exec("h1-c2", &["ip", "-o", "addr", "show", "eth0"])
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("10.42.1.3/24"), "{link}");
    let mtu = net
        .exec("h1-c2", &["cat", "/sys/class/net/eth0/mtu"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "1420");
    let route = net
        .exec("h1-c2", &["ip", "route", "show", "default"])
        .unwrap();
    assert!(String::from_utf8_lossy(&route.stdout).contains("via 10.42.1.1"));
    let forward = net
        .exec("h2", &["sysctl", "-n", "net.ipv4.ip_forward"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&forward.stdout).trim(), "1");
    let bridge = net
        .exec("h3", &["ip", "-o", "addr", "show", "br0"])
        .unwrap();
    assert!(String::from_utf8_lossy(&bridge.stdout).contains("10.42.3.1/24"));

    // Keys, configs and state are in the run directory; the key is private.
    let key_mode = fs::metadata(net.key_path(1)).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
        0o600
    );
    let config = fs::read_to_string(net.config_path(2)).unwrap();
    assert!(config.contains(&format!("public_key = \"{}\"", net.public_key(1).unwrap())));
    assert!(config.contains("endpoint = \"198.18.0.13:51820\""));
    assert!(!config.contains(&net.public_key(2).unwrap().to_string()));
    assert!(net.run_dir().join("state.json").exists());

    // No interface of the run lives in the root namespace.
    let root_links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let root_links = String::from_utf8_lossy(&root_links.stdout);
    assert!(!root_links.contains("ul0@"), "{root_links}");

    let run_dir = net.run_dir();
    net.down().expect("down");
    assert_eq!(namespaces_of(&prefix), Vec::<String>::new());
    assert!(!run_dir.exists());
}

#[test]
fn drop_without_down_cleans_up_also_processes_left_running() {
    if !root() {
        return;
    }
    let mut opts = Options::new(2, 1);
    opts.start_daemons = false;
    let net = Testnet::up(opts).expect("up");
    let prefix = net.prefix().to_owned();
    let run_dir = net.run_dir();
    // A process the test forgot: teardown must end it before deleting the namespace.
    let mut sleeper = net.spawn("h2-c1", &["sleep", "600"]).unwrap();
    assert_eq!(namespaces_of(&prefix).len(), 1 + 2 + 2);
    drop(net);
    assert_eq!(namespaces_of(&prefix), Vec::<String>::new());
    assert!(!run_dir.exists());
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the sleeper was killed");
}

#[test]
fn hosts_without_containers() {
    if !root() {
        return;
    }
    let mut opts = Options::new(2, 0);
    opts.start_daemons = false;
    let net = Testnet::up(opts).expect("up");
    assert_eq!(namespaces_of(net.prefix()).len(), 3);
    assert!(pings(&net, "h1", "198.18.0.12"));
    assert!(net.addr("h1-c1").is_err());
    net.down().unwrap();
}

#[test]
fn failed_up_leaves_nothing_behind() {
    if !root() {
        return;
    }
    let prefix = common::prefix('f');
    let mut opts = Options::new(2, 1);
    opts.prefix = Some(prefix.clone());
    opts.overlayd = Some("/nonexistent/overlayd".into());
    // The daemons fail to start after the whole topology has been built.
    let err = Testnet::up(opts).err().expect("up must fail");
    assert!(format!("{err:#}").contains("overlayd"), "{err:#}");
    assert_eq!(namespaces_of(&prefix), Vec::<String>::new());
    assert!(
        !std::path::Path::new(testnet::RUN_ROOT)
            .join(&prefix)
            .exists()
    );
}

#[test]
fn a_prefix_in_use_is_refused() {
    if !root() {
        return;
    }
    let prefix = common::prefix('d');
    let mut opts = Options::new(1, 0);
    opts.prefix = Some(prefix.clone());
    opts.start_daemons = false;
    let net = Testnet::up(opts).expect("up");
    let mut again = Options::new(1, 0);
    again.prefix = Some(prefix.clone());
    again.start_daemons = false;
    let err = Testnet::up(again).err().expect("second up must fail");
    assert!(format!("{err}").contains("testnet down"), "{err}");
    // The refused `up` must not have touched the first run.
    assert_eq!(namespaces_of(&prefix).len(), 2);
    net.down().unwrap();
}

#[test]
fn cleanup_leftovers_removes_dead_runs_only() {
    if !root() {
        return;
    }
    // A dead run: namespaces named like testnet's, a run directory without a state (so no
    // live owner), a process still inside one namespace.
    let dead = common::prefix('c');
    let _dead_ns = NetnsGuard::add(&["ul", "h1", "h1-c1"].map(|n| format!("{dead}-{n}")));
    let dead_dir = std::path::Path::new(testnet::RUN_ROOT).join(&dead);
    fs::create_dir_all(dead_dir.join("h1")).unwrap();
    let mut leftover = Command::new("ip")
        .args(["netns", "exec", &format!("{dead}-h1"), "sleep", "600"])
        .spawn()
        .unwrap();
    // Namespaces named like ours whose prefix has no run directory: only an explicit
    // request may remove them.
    let orphan = common::prefix('o');
    let _orphan_ns = NetnsGuard::add(&[format!("{orphan}-h1")]);
    // A live run (its owner is this process).
    let mut opts = Options::new(1, 1);
    opts.start_daemons = false;
    let live = Testnet::up(opts).expect("up");

    // Named prefixes keep these tests from removing other people's dead runs; the search
    // over /run/testnet (`None`) differs only in which prefixes it considers.
    let removed = Testnet::cleanup_leftovers(Some(&dead)).expect("cleanup");
    // All three namespaces went, whatever the order.
    let mut expected: Vec<String> = ["h1-c1", "h1", "ul"]
        .iter()
        .map(|n| format!("{dead}-{n}"))
        .collect();
    expected.sort();
    let mut removed_sorted = removed.clone();
    removed_sorted.sort();
    assert_eq!(removed_sorted, expected);
    assert_eq!(namespaces_of(&dead), Vec::<String>::new());
    assert!(!dead_dir.exists());
    assert!(
        !leftover.wait().unwrap().success(),
        "the leftover was killed"
    );

    assert_eq!(
        Testnet::cleanup_leftovers(Some(live.prefix())).unwrap(),
        Vec::<String>::new(),
        "a live run stays"
    );
    assert_eq!(namespaces_of(live.prefix()).len(), 3);

    let removed = Testnet::cleanup_leftovers(Some(&orphan)).unwrap();
    assert_eq!(removed, vec![format!("{orphan}-h1")]);
    assert!(Testnet::cleanup_leftovers(Some("Bad-name")).is_err());
    live.down().unwrap();
}

#[test]
fn gossip_mode_writes_control_configs_and_state_dirs() {
    if !root() {
        return;
    }
    let mut opts = Options::new(2, 0);
    opts.start_daemons = false;
    // The config of two ports is what is checked (TESTNET_ONE_PORT does not apply).
    opts.one_port = false;
    let net = Testnet::up(opts).expect("up");
    assert_eq!(net.mode(), testnet::Mode::Gossip);
    let config = fs::read_to_string(net.config_path(2)).unwrap();
    let state_dir = net.state_dir(2);
    assert!(
        config.contains(&format!("state_dir = \"{}\"", state_dir.display())),
        "{config}"
    );
    assert!(
        config.contains("\n[control]\nlisten_port = 51821\nadvertise = \"198.18.0.12\"\n"),
        "{config}"
    );
    // No address: the daemon takes the first of its certificate subnet (tests/address.rs).
    assert!(
        !config.contains("[[peer]]")
            && !config.contains("subnets")
            && !config.contains("\naddress ="),
        "{config}"
    );
    let mode = fs::metadata(&state_dir).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o700
    );
    let state = fs::read_to_string(net.run_dir().join("state.json")).unwrap();
    assert!(state.contains("\"mode\": \"gossip\""), "{state}");
    net.down().unwrap();
}
