//! Underlay faults without daemons: partitions and loss (nft table `testnet` in the host
//! namespaces) and roaming (moving a host's address on `ul0`), checked with pings.
//!
//! ```text
//!                  P-ul: br0
//!        +-----h1-------h2-------h3-----+
//!              |        |        |
//!         P-h1 .11  P-h2 .12  P-h3 .13     198.18.0.x/15 on ul0
//!                   roams to 198.19.0.99
//! ```

mod common;

use std::net::Ipv4Addr;

use common::{pings, pings_once, root};
use testnet::{Options, Testnet};

fn three_hosts() -> Testnet {
    let mut opts = Options::new(3, 0);
    opts.start_daemons = false;
    Testnet::up(opts).expect("up")
}

#[test]
fn partition_cuts_both_directions_and_heal_restores() {
    if !root() {
        return;
    }
    let net = three_hosts();
    assert!(pings(&net, "h1", "198.18.0.12"));
    assert!(pings(&net, "h2", "198.18.0.13"));

    net.partition(&[1], &[2]).unwrap();
    assert!(!pings_once(&net, "h1", "198.18.0.12"));
    assert!(!pings_once(&net, "h2", "198.18.0.11"));
    assert!(pings(&net, "h1", "198.18.0.13"), "h3 is on neither side");
    assert!(pings(&net, "h2", "198.18.0.13"));
    // Partitions add up.
    net.partition(&[3], &[1, 2]).unwrap();
    assert!(!pings_once(&net, "h3", "198.18.0.11"));
    assert!(net.partition(&[1], &[1]).is_err());
    assert!(net.partition(&[1], &[4]).is_err());

    net.heal().unwrap();
    assert!(pings(&net, "h1", "198.18.0.12"));
    assert!(pings(&net, "h2", "198.18.0.11"));
    assert!(pings(&net, "h3", "198.18.0.11"));
    net.heal().unwrap();
    net.down().unwrap();
}

#[test]
fn loss_drops_at_random_and_zero_removes_it() {
    if !root() {
        return;
    }
    let net = three_hosts();
    assert!(pings(&net, "h1", "198.18.0.13"));
    net.set_loss(3, 100).unwrap();
    assert!(!pings_once(&net, "h1", "198.18.0.13"));
    assert!(pings(&net, "h1", "198.18.0.12"), "only h3 is lossy");
    // A partition's heal leaves the loss in place.
    net.partition(&[1], &[2]).unwrap();
    net.heal().unwrap();
    assert!(!pings_once(&net, "h1", "198.18.0.13"));
    net.set_loss(3, 30).unwrap();
    let rules = net
        .exec("h3", &["nft", "list", "table", "inet", "testnet"])
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(rules.contains("numgen random mod 100 < 30"), "{rules}");
    assert_eq!(
        rules.matches("drop").count(),
        2,
        "replaced, not added: {rules}"
    );
    net.set_loss(3, 0).unwrap();
    assert!(pings(&net, "h1", "198.18.0.13"));
    assert!(net.set_loss(3, 101).is_err());
    net.down().unwrap();
}

#[test]
fn roaming_moves_the_underlay_address() {
    if !root() {
        return;
    }
    let mut net = three_hosts();
    let new = Ipv4Addr::new(198, 19, 0, 99);
    net.set_underlay_addr(2, new).unwrap();
    assert_eq!(net.addr("h2").unwrap(), std::net::IpAddr::V4(new));
    assert!(pings(&net, "h1", "198.19.0.99"));
    assert!(!pings_once(&net, "h1", "198.18.0.12"));
    assert!(
        net.set_underlay_addr(2, Ipv4Addr::new(10, 0, 0, 1))
            .is_err()
    );
    assert!(
        net.set_underlay_addr(2, Ipv4Addr::new(198, 18, 0, 11))
            .is_err()
    );
    // The new address is recorded for the CLI.
    let state = std::fs::read_to_string(net.run_dir().join("state.json")).unwrap();
    assert!(state.contains("198.19.0.99"));
    net.down().unwrap();
}
