//! One UDP port per host: the tunnels and the control plane both on 51820 (overlayd's
//! default; testnet's runs keep the two-port layout unless asked, see `Options::one_port`).
//! A capture on the underlay switch while h2 restarts and the containers ping shows QUIC
//! (fixed bit set) and WireGuard (types 1-4) between the hosts, all of it from and to port
//! 51820, and each daemon holds one UDP socket.
//!
//! ```text
//!                     P-ul: br0 (tcpdump -i any)
//!          +-------------------+-------------------+
//!   P-h1 198.18.0.11    P-h2 198.18.0.12    P-h3 198.18.0.13     UDP 51820: WireGuard and QUIC
//!   h1-c1 10.42.1.2     h2-c1 10.42.2.2     h3-c1 10.42.3.2
//! ```
//!
//! Every other end-to-end test runs the same way with `TESTNET_ONE_PORT=1`.

mod common;

use std::time::{Duration, Instant};

use common::{Capture, pings, root};
use testnet::{LISTEN_PORT, MemberState, Options, Testnet};

#[test]
fn tunnels_and_control_plane_share_one_port() {
    if !root() {
        return;
    }
    let mut opts = Options::new(3, 1);
    opts.one_port = true;
    let mut net = Testnet::up(opts).expect("up");
    assert_eq!(net.control_port(), LISTEN_PORT);
    let status = net.status_json(2).expect("status");
    assert_eq!(status.member.expect("a member").control_port, LISTEN_PORT);

    let mut capture = Capture::start(&net, "ul", "any");
    // A restart: QUIC connections, gossip, a sync and fresh handshakes all go over the port.
    net.restart_daemon(2).expect("restart h2");
    let started = Instant::now();
    net.wait_member_state(1, 2, MemberState::Alive, Duration::from_secs(10))
        .expect("h1 sees h2 alive again");
    assert!(pings(&net, "h1-c1", "10.42.2.2"));
    assert!(pings(&net, "h3-c1", "10.42.2.2"));
    eprintln!(
        "h2 back and pinged from h1 and h3 {:.2} s after its restart",
        started.elapsed().as_secs_f64()
    );
    capture.stop();

    let udp = capture.count("udp");
    let quic = capture.count("udp and udp[8] & 0x40 != 0");
    let wireguard = capture.count("udp and udp[8] & 0x40 == 0 and udp[8] >= 1 and udp[8] <= 4");
    let elsewhere = capture.lines("udp and not (src port 51820 and dst port 51820)");
    eprintln!("captured {udp} UDP datagrams: {quic} QUIC, {wireguard} WireGuard");
    assert!(
        quic > 0 && wireguard > 0,
        "both kinds: {quic} QUIC, {wireguard} WireGuard"
    );
    assert_eq!(quic + wireguard, udp, "every datagram is one or the other");
    assert!(elsewhere.is_empty(), "UDP not on port 51820: {elsewhere:?}");

    for i in 1..=3 {
        let out = net
            .exec(&format!("h{i}"), &["ss", "-Huanp"])
            .expect("run ss");
        let sockets: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("overlayd"))
            .map(str::to_owned)
            .collect();
        assert_eq!(sockets.len(), 1, "h{i}: {sockets:?}");
        assert!(sockets[0].contains(":51820 "), "h{i}: {sockets:?}");
    }
    net.down().expect("down");
}
