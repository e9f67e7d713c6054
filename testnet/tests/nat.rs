//! testnet's NAT routers, without daemons: h2 behind a cone NAT, h3 behind a symmetric one,
//! h1 public. UDP sockets opened inside the namespaces show what each NAT maps (the source
//! address h1 sees, and the router's conntrack listing), what it lets in, and that a flush
//! of its mappings shuts the door again; partitions, loss and roaming still work.
//!
//! ```text
//!                              P-ul: br0
//!        +--------h1----------------n2-----------------n3---------+
//!                 |                 |                  |
//!       P-h1 198.18.0.11   P-n2 wan0 198.18.0.12  P-n3 wan0 198.18.0.13
//!                               cone NAT            symmetric NAT
//!                               lan0 198.19.2.1     lan0 198.19.3.1
//!                                   |                   |
//!                          P-h2 ul0 198.19.2.2   P-h3 ul0 198.19.3.2
//! ```

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use common::{enter_netns, pings, pings_once, root};
use testnet::nat::mapped_port;
use testnet::{NatKind, NatSpec, Options, Testnet};

const H1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const NAT2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
const NAT3: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 13);
/// The port the hosts behind the NATs send from.
const INSIDE_PORT: u16 = 40000;

/// A UDP socket bound to `port` inside namespace `ns` (opened on a thread that entered
/// it; the socket stays in that namespace wherever it is used from).
fn socket_in(ns: &str, port: u16) -> UdpSocket {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter_netns(&ns);
        let sock = UdpSocket::bind(("0.0.0.0", port)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        sock
    })
    .join()
    .expect("socket thread")
}

/// The next datagram's payload and source, if one comes within the read timeout.
fn receive(sock: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 1500];
    let (n, from) = sock.recv_from(&mut buf).ok()?;
    Some((buf[..n].to_vec(), from))
}

/// Where `sock` (behind a NAT) is seen from h1 when it sends to h1's `port`.
fn seen_at(sock: &UdpSocket, h1: &UdpSocket, port: u16) -> SocketAddr {
    sock.send_to(b"hello", (H1, port)).expect("send");
    let (payload, from) = receive(h1).expect("h1 receives the datagram");
    assert_eq!(payload, b"hello");
    from
}

#[test]
fn cone_and_symmetric_nats_map_filter_and_flush() {
    if !root() {
        return;
    }
    let mut opts = Options::new(3, 0);
    opts.start_daemons = false;
    opts.nat = vec![
        NatSpec {
            host: 2,
            kind: NatKind::Cone,
        },
        "h3:symmetric".parse().unwrap(),
    ];
    let mut net = Testnet::up(opts).expect("up");
    assert_eq!(net.nat_kind(1).unwrap(), None);
    assert_eq!(net.nat_kind(2).unwrap(), Some(NatKind::Cone));
    assert_eq!(net.nat_kind(3).unwrap(), Some(NatKind::Symmetric));
    assert_eq!(net.public_addr(2).unwrap(), NAT2);
    assert_eq!(net.addr("h2").unwrap(), Ipv4Addr::new(198, 19, 2, 2));
    assert_eq!(net.addr("n3").unwrap(), NAT3);
    assert!(net.addr("n1").is_err(), "h1 has no NAT");
    assert!(net.flush_nat(1).is_err());

    // Out through the NATs; h1 reaches the routers' public side but not the hosts behind.
    assert!(pings(&net, "h2", "198.18.0.11"));
    assert!(pings(&net, "h3", "198.18.0.11"));
    assert!(pings(&net, "h1", "198.18.0.12"));
    assert!(!pings_once(&net, "h1", "198.19.2.2"));

    let h1_a = socket_in(&net.host_ns(1), 5000);
    let h1_b = socket_in(&net.host_ns(1), 5001);
    let h2 = socket_in(&net.host_ns(2), INSIDE_PORT);
    let h3 = socket_in(&net.host_ns(3), INSIDE_PORT);

    // Nothing gets in before the host behind the NAT has sent anything.
    h1_a.send_to(b"unasked", (NAT2, INSIDE_PORT)).unwrap();
    assert_eq!(
        receive(&h2),
        None,
        "a cone NAT let in an unsolicited datagram"
    );

    // Cone: one public address and port, the inside port, whatever the destination.
    let cone_a = seen_at(&h2, &h1_a, 5000);
    let cone_b = seen_at(&h2, &h1_b, 5001);
    assert_eq!(cone_a, SocketAddr::from((NAT2, INSIDE_PORT)));
    assert_eq!(cone_b, cone_a, "the cone NAT mapped per destination");
    // Symmetric: another random port per destination.
    let sym_a = seen_at(&h3, &h1_a, 5000);
    let sym_b = seen_at(&h3, &h1_b, 5001);
    let sym_c = {
        let h1_c = socket_in(&net.host_ns(1), 5002);
        seen_at(&h3, &h1_c, 5002)
    };
    assert!(sym_a.ip() == std::net::IpAddr::V4(NAT3) && sym_b.ip() == std::net::IpAddr::V4(NAT3));
    assert!(
        sym_a.port() != sym_b.port() || sym_b.port() != sym_c.port(),
        "the symmetric NAT kept one port for three destinations: {sym_a} {sym_b} {sym_c}"
    );

    // The routers' own listings show the same mappings.
    let listed = net.nat_mappings(2).unwrap();
    let to = |port| SocketAddrV4::new(H1, port);
    for port in [5000, 5001] {
        assert_eq!(
            mapped_port(&listed, INSIDE_PORT, to(port)),
            Some(INSIDE_PORT),
            "{listed}"
        );
    }
    let listed = net.nat_mappings(3).unwrap();
    for (port, seen) in [(5000, sym_a), (5001, sym_b), (5002, sym_c)] {
        assert_eq!(
            mapped_port(&listed, INSIDE_PORT, to(port)),
            Some(seen.port()),
            "{listed}"
        );
    }

    // Filtering: the answer from the address and port written to gets in; the same host
    // from a port nobody wrote to does not (port-dependent filtering).
    h1_a.send_to(b"answer", cone_a).unwrap();
    assert_eq!(
        receive(&h2),
        Some((b"answer".to_vec(), SocketAddr::from((H1, 5000))))
    );
    let h1_other = socket_in(&net.host_ns(1), 5009);
    h1_other.send_to(b"stranger", cone_a).unwrap();
    assert_eq!(receive(&h2), None, "the NAT let in a port nobody wrote to");
    h1_a.send_to(b"answer", sym_a).unwrap();
    assert_eq!(receive(&h3).map(|(p, _)| p), Some(b"answer".to_vec()));

    // A flush is a mapping expiry: the answer no longer gets in until h2 sends again.
    net.flush_nat(2).unwrap();
    assert_eq!(
        mapped_port(&net.nat_mappings(2).unwrap(), INSIDE_PORT, to(5000)),
        None
    );
    h1_a.send_to(b"late", cone_a).unwrap();
    assert_eq!(
        receive(&h2),
        None,
        "a flushed mapping still let a datagram in"
    );
    assert_eq!(seen_at(&h2, &h1_a, 5000), cone_a, "the port is free again");

    // Faults: a partition names the NAT's public address; loss on the host's own link.
    net.partition(&[1], &[2]).unwrap();
    assert!(!pings_once(&net, "h2", "198.18.0.11"));
    assert!(!pings_once(&net, "h1", "198.18.0.12"));
    assert!(pings(&net, "h3", "198.18.0.11"));
    net.heal().unwrap();
    assert!(pings(&net, "h2", "198.18.0.11"));
    net.set_loss(2, 100).unwrap();
    assert!(!pings_once(&net, "h2", "198.18.0.11"));
    net.set_loss(2, 0).unwrap();

    // Roaming a host behind a NAT moves the NAT's public address; the host keeps its own.
    let moved = Ipv4Addr::new(198, 19, 0, 77);
    assert!(
        net.set_underlay_addr(2, Ipv4Addr::new(198, 19, 3, 9))
            .is_err()
    );
    net.set_underlay_addr(2, moved).unwrap();
    assert_eq!(net.public_addr(2).unwrap(), moved);
    assert_eq!(net.addr("h2").unwrap(), Ipv4Addr::new(198, 19, 2, 2));
    assert!(pings(&net, "h2", "198.18.0.11"));
    assert_eq!(seen_at(&h2, &h1_a, 5000).ip(), moved);

    let prefix = net.prefix().to_owned();
    net.down().unwrap();
    assert!(common::namespaces_of(&prefix).is_empty());
}
