//! End-to-end: every member has an overlay address of its own with no `address` in its
//! config (issue 13): the first address of its certificate subnet, `10.42.I.1`, on its TUN
//! as a /32 and the preferred source of its routes to the other members, so the hosts
//! themselves (no container) ping each other across the overlay. Applied live by `init`
//! and `join`, back after a restart (state from disk), gone after `leave`. Real daemons,
//! real kernels (root).
//!
//! ```text
//!                        P-ul: br0 (underlay switch)
//!        +---------------------+---------------------+
//!        |                     |                     |
//!    P-h1 .11              P-h2 .12              P-h3 .13          198.18.0.x/15
//!    admin (CA)            member                member
//!    ovl0 10.42.1.1/32     ovl0 10.42.2.1/32     ovl0 10.42.3.1/32  (from the certificates)
//!    br0  10.42.1.1/24     br0  10.42.2.1/24     br0  10.42.3.1/24  (testnet's, no containers)
//!    ping 10.42.J.1 from the host namespaces, through the tunnels
//! ```

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::root;
use testnet::{Options, Testnet};

/// Host `i`'s overlay address by the convention: `10.42.I.1`.
fn overlay(i: usize) -> IpAddr {
    format!("10.42.{i}.1").parse().expect("an address")
}

/// Host `i`'s `address` in `overlayctl status --json`.
fn status_address(net: &Testnet, i: usize) -> Option<IpAddr> {
    net.status_json(i).expect("status --json").address
}

/// Polls (50 ms) until host `i`'s status shows `want`, up to 5 s; returns how long it took.
fn wait_status_address(net: &Testnet, i: usize, want: Option<IpAddr>, when: &str) -> Duration {
    let start = Instant::now();
    loop {
        let seen = status_address(net, i);
        if seen == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{when}: h{i}'s status shows address {seen:?}, not {want:?}, after 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The output of `cmd` run in host `i`'s namespace, which must succeed.
fn host_out(net: &Testnet, i: usize, cmd: &[&str]) -> String {
    let out = net.exec(&format!("h{i}"), cmd).expect("run in a host");
    assert!(
        out.status.success(),
        "h{i}: `{}` failed: {}",
        cmd.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether host `i`'s TUN holds `addr` as a /32.
fn tun_holds(net: &Testnet, i: usize, addr: IpAddr) -> bool {
    host_out(net, i, &["ip", "-o", "-4", "addr", "show", "dev", "ovl0"])
        .contains(&format!("inet {addr}/32 "))
}

/// Asserts, for every host in `hosts`: its status (JSON and text) shows `10.42.I.1`, its
/// TUN holds it, its route to every other host prefers it as source, its peers list the
/// others' addresses, and `ping -c 3 -W 2 10.42.J.1` from its namespace succeeds.
fn assert_overlay_addresses(net: &Testnet, hosts: &[usize], when: &str) {
    for &i in hosts {
        let own = overlay(i);
        assert_eq!(status_address(net, i), Some(own), "{when}: h{i}'s status");
        let text =
            String::from_utf8_lossy(&net.overlayctl_ok(i, &["status"]).expect("status").stdout)
                .into_owned();
        assert!(
            text.lines().any(|l| l == format!("address:      {own}")),
            "{when}: h{i}'s `overlayctl status` does not show {own}:\n{text}"
        );
        assert!(
            tun_holds(net, i, own),
            "{when}: h{i}'s ovl0 does not hold {own}/32"
        );
        let peers = net.peers_json(i).expect("peers --json");
        let table =
            String::from_utf8_lossy(&net.overlayctl_ok(i, &["peers"]).expect("peers").stdout)
                .into_owned();
        for &j in hosts.iter().filter(|&&j| j != i) {
            let name = Testnet::member_name(j);
            let listed = peers
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()));
            assert_eq!(
                listed.and_then(|p| p.address),
                Some(overlay(j)),
                "{when}: h{i}'s peers --json: {listed:?}"
            );
            assert!(
                table
                    .lines()
                    .any(|l| l.starts_with(&format!("{name} "))
                        && l.contains(&overlay(j).to_string())),
                "{when}: h{i}'s `overlayctl peers` shows no address {} for {name}:\n{table}",
                overlay(j)
            );
            let target = overlay(j).to_string();
            let route = host_out(net, i, &["ip", "route", "get", &target]);
            assert!(
                route.contains(" dev ovl0 ") && route.contains(&format!(" src {own} ")),
                "{when}: h{i}'s route to {target} is not through ovl0 from {own}: {route}"
            );
            let started = Instant::now();
            let out = net
                .exec(&format!("h{i}"), &["ping", "-c", "3", "-W", "2", &target])
                .expect("run ping");
            assert!(
                out.status.success(),
                "{when}: h{i} cannot ping h{j}'s overlay address {target} ({:.1} s): {}",
                started.elapsed().as_secs_f64(),
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

#[test]
fn every_member_has_the_first_address_of_its_subnet() {
    if !root() {
        return;
    }
    let began = Instant::now();
    let mut opts = Options::new(3, 0);
    opts.members = Some(0);
    let mut net = Testnet::up(opts).expect("testnet up (gossip mode, no network yet)");
    let hosts = [1, 2, 3];
    for i in hosts {
        let config = std::fs::read_to_string(net.config_path(i)).expect("config");
        assert!(
            !config.contains("address"),
            "h{i}'s gossip-mode config sets an address:\n{config}"
        );
        // In no network: no subnet, so no address.
        assert_eq!(status_address(&net, i), None, "h{i} before init");
        assert!(!tun_holds(&net, i, overlay(i)), "h{i}'s ovl0 before init");
    }

    // init and join apply it at once, without a restart.
    net.init_network().expect("overlayctl init on h1");
    let took = wait_status_address(&net, 1, Some(overlay(1)), "after init");
    eprintln!(
        "h1's address shown {:.2} s after init returned",
        took.as_secs_f64()
    );
    assert!(tun_holds(&net, 1, overlay(1)), "h1's ovl0 after init");
    assert_eq!(status_address(&net, 2), None, "h2 before its join");
    for i in [2, 3] {
        net.join_host(i)
            .unwrap_or_else(|e| panic!("h{i} joins: {e:#}"));
        let took = wait_status_address(&net, i, Some(overlay(i)), "after join");
        eprintln!(
            "h{i}'s address shown {:.2} s after join returned",
            took.as_secs_f64()
        );
    }
    // No containers: this pings host to host (10.42.J.1 from hI).
    let took = net
        .wait_converged(&hosts, Duration::from_secs(30))
        .expect("the hosts see each other alive and ping each other's overlay address");
    eprintln!(
        "hosts alive and pinging {:.2} s after the joins",
        took.as_secs_f64()
    );
    assert_overlay_addresses(&net, &hosts, "after the joins");

    // Restarted, h2 takes its address again from the certificate in its state dir.
    net.restart_daemon(2).expect("restart h2");
    let restarted = Instant::now();
    wait_status_address(&net, 2, Some(overlay(2)), "after h2 restarted");
    let took = net
        .wait_converged(&hosts, Duration::from_secs(30))
        .expect("the hosts ping each other again after h2 restarted");
    eprintln!(
        "after h2 restarted: alive and pinging in {:.2} s",
        restarted.elapsed().as_secs_f64().max(took.as_secs_f64())
    );
    assert_overlay_addresses(&net, &hosts, "after h2 restarted");

    // Leaving gives it back: no subnet any more.
    net.overlayctl_ok(3, &["leave"])
        .expect("overlayctl leave on h3");
    wait_status_address(&net, 3, None, "after h3 left");
    assert!(
        !tun_holds(&net, 3, overlay(3)),
        "h3's ovl0 still holds {} after it left",
        overlay(3)
    );
    // None of it went wrong quietly (a route that kept its old source, an address refused).
    for i in hosts {
        let log = std::fs::read_to_string(net.log_path(i)).expect("daemon log");
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("address"))
            .collect();
        assert!(
            warnings.is_empty(),
            "h{i}'s daemon warned about addresses:\n{}",
            warnings.join("\n")
        );
    }
    eprintln!("whole test: {:.2} s", began.elapsed().as_secs_f64());
    net.down().expect("down");
}
