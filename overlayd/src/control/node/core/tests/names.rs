//! Container names through the cores: published, spread by push, withdrawn, and no longer
//! served once their member is declared down.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use protocol::records::names::NameEntry;

use super::super::Action;
use super::sim::Sim;
use super::{converged, secs};

/// Host `host`'s containers are now `names` (addresses .2, .3, ... of its subnet, alias
/// `api` each).
fn publish(sim: &mut Sim, host: usize, names: &[&str]) {
    let membership = sim.hosts[host].view.membership.clone().expect("a member");
    let IpNet::V4(subnet) = membership.subnets[0] else {
        panic!("an IPv4 subnet");
    };
    let entries = names
        .iter()
        .enumerate()
        .map(|(k, name)| NameEntry {
            name: name.to_string(),
            aliases: vec!["api".into()],
            address: IpAddr::V4(Ipv4Addr::from(u32::from(subnet.network()) + 2 + k as u32)),
            network: "ovl".into(),
            range: "10.42.0.0/16".parse().unwrap(),
        })
        .collect();
    let now = sim.now();
    sim.hosts[host].core().set_names(entries, now);
    let actions: Vec<Action> =
        std::iter::from_fn(|| sim.hosts[host].core().poll_action()).collect();
    sim.apply(host, actions);
}

/// What host `host` serves: (owner, name, this host's), sorted.
fn served(sim: &Sim, host: usize) -> Vec<(String, String, bool)> {
    let mut names: Vec<_> = sim.hosts[host]
        .view
        .names
        .iter()
        .map(|n| (n.owner.clone(), n.entry.name.clone(), n.local))
        .collect();
    names.sort();
    names
}

fn names(list: &[(&str, &str, bool)]) -> Vec<(String, String, bool)> {
    list.iter()
        .map(|(o, n, l)| (o.to_string(), n.to_string(), *l))
        .collect()
}

#[test]
fn names_spread_go_with_their_containers_and_with_a_member_down() {
    let mut sim = converged(3);
    publish(&mut sim, 0, &["web"]);
    publish(&mut sim, 1, &["db"]);
    sim.run(secs(1));
    assert_eq!(
        served(&sim, 0),
        names(&[("h0", "web", true), ("h1", "db", false)])
    );
    assert_eq!(
        served(&sim, 2),
        names(&[("h0", "web", false), ("h1", "db", false)])
    );
    // The container went: its name goes everywhere.
    publish(&mut sim, 0, &[]);
    sim.run(secs(1));
    for host in [1, 2] {
        assert_eq!(
            served(&sim, host),
            names(&[("h1", "db", host == 1)]),
            "h{host}"
        );
    }
    // h1 crashes: once declared down its names are not served; its set is kept, so they
    // come back with it.
    sim.crash(1);
    sim.run(secs(15));
    assert_eq!(served(&sim, 0), Vec::new());
    assert_eq!(served(&sim, 2), Vec::new());
}

/// A host that (re)starts learns every set at its first full sync.
#[test]
fn a_late_member_gets_the_names_by_sync() {
    let mut sim = converged(2);
    publish(&mut sim, 1, &["db", "cache"]);
    sim.run(secs(1));
    sim.restart(0);
    sim.run(secs(5));
    assert_eq!(
        served(&sim, 0),
        names(&[("h1", "cache", false), ("h1", "db", false)])
    );
}
