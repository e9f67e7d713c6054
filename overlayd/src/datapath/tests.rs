//! The workers' logic on the in-memory TUN and UDP fakes, without root: what leaves for
//! which peer, what reaches the TUN, the hand-off from the socket side to the TUN side,
//! re-arming, and drops on error paths. The routers are the two of `router/tests.rs`:
//!
//! ```text
//!   TUN a ─ A (10.42.1.0/24) @198.18.0.11:51820  <== FakeNet ==>  B (10.42.2.0/24) @198.18.0.12:51820 ─ TUN b
//! ```
//!
//! Most tests drive one host's workers on the test thread: wait for an event with a
//! timeout, then `handle` it, as a worker thread would. The last one spawns the real
//! threads.

use std::sync::Arc;
use std::time::Duration;

use protocol::drops::DropReason;
use protocol::policy::enforce::Direction;

use super::fake::{FakeNet, FakeTun, FakeUdp, Fault};
use super::poller::Poller;
use super::{Shared, handle, lock};
use crate::router::Router;
use crate::router::tests::{A_ADDR, B_ADDR, Pair, handshake, ipv4, pair, send};

const MTU: u16 = 1420;
/// Long enough for any event that is already due; only a failing test waits this long.
const DUE: libc::c_int = 5_000;

fn addr(text: &str) -> std::net::SocketAddr {
    text.parse().unwrap()
}

/// One host's data path on fakes.
struct Host {
    tun: Arc<FakeTun>,
    udp: Arc<FakeUdp>,
    router: Arc<Router>,
    shared: Shared<FakeTun, FakeUdp>,
}

impl Host {
    fn new(router: Arc<Router>, udp: Arc<FakeUdp>) -> Host {
        let tun = Arc::new(FakeTun::new());
        let shared = Shared::new(tun.clone(), udp.clone(), router.clone(), MTU).unwrap();
        Host {
            tun,
            udp,
            router,
            shared,
        }
    }

    /// Serves the next event, as a worker woken by it would; which fd it was.
    fn serve(&self) -> usize {
        let which = self.shared.poller.wait_for(DUE).expect("an event");
        handle(&self.shared, which);
        which
    }

    /// Serves events while any is due; how many.
    fn serve_due(&self) -> usize {
        let mut served = 0;
        while let Some(which) = self.shared.poller.wait_for(0) {
            handle(&self.shared, which);
            served += 1;
        }
        served
    }

    /// Whether no event is due.
    fn quiet(&self) -> bool {
        self.shared.poller.wait_for(0).is_none()
    }
}

/// A's data path on fakes, with B's router beside it, after an in-memory handshake; A's
/// socket is on no net, so what it sends is only recorded.
fn a_after_handshake() -> (Host, Arc<Router>) {
    let pair = pair();
    handshake(&pair);
    let Pair { a, b } = pair;
    let a = Host::new(Arc::new(a), Arc::new(FakeUdp::new(addr(A_ADDR))));
    (a, Arc::new(b))
}

/// A datagram B sends to A, carrying `packet`.
fn from_b(b: &Router, packet: &[u8]) -> Vec<u8> {
    let wire = send(b, B_ADDR, packet);
    assert_eq!(wire.len(), 1);
    wire[0].2.clone()
}

/// Decrypts at B what A sent.
fn open_at_b(b: &Router, datagram: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 2048];
    match b.decapsulate(addr(A_ADDR), datagram, &mut out, &mut |_, _| {}) {
        crate::router::Inbound::ToTun { len } => out[..len].to_vec(),
        other => panic!("B did not accept A's datagram: {other:?}"),
    }
}

#[test]
fn a_packet_from_the_tun_leaves_encrypted_for_its_peer() {
    let (a, b) = a_after_handshake();
    let packet = ipv4("10.42.1.2", "10.42.2.2", b"to b");
    a.tun.push(&packet);
    assert_eq!(a.serve(), Poller::TUN);
    let sent = a.udp.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, addr(B_ADDR), "to B's endpoint");
    assert_ne!(sent[0].1, packet);
    assert_eq!(open_at_b(&b, &sent[0].1), packet);
    assert_eq!(a.tun.queued(), 0);
    // The TUN was re-armed: the next packet wakes a worker again.
    assert!(a.quiet());
    a.tun.push(&packet);
    assert_eq!(a.serve(), Poller::TUN);
    assert_eq!(a.udp.sent().len(), 2);
}

#[test]
fn a_batch_of_equal_packets_leaves_in_order() {
    let (a, b) = a_after_handshake();
    let packets: Vec<Vec<u8>> = (0..5u8)
        .map(|i| ipv4("10.42.1.2", "10.42.2.2", &[i; 100]))
        .collect();
    for p in &packets {
        a.tun.push(p);
    }
    a.serve();
    let sent = a.udp.sent();
    let opened: Vec<Vec<u8>> = sent.iter().map(|(_, d)| open_at_b(&b, d)).collect();
    assert_eq!(opened, packets);
}

#[test]
fn a_datagram_from_the_socket_is_decrypted_into_the_tun() {
    let (a, b) = a_after_handshake();
    let packet = ipv4("10.42.2.2", "10.42.1.2", b"to a");
    a.udp.deliver(addr(B_ADDR), &from_b(&b, &packet));
    assert_eq!(a.serve(), Poller::UDP);
    assert_eq!(a.tun.written(), vec![packet.clone()]);
    // The socket was re-armed.
    assert!(a.quiet());
    a.udp.deliver(addr(B_ADDR), &from_b(&b, &packet));
    assert_eq!(a.serve(), Poller::UDP);
    assert_eq!(a.tun.written().len(), 2);
}

/// A mirror sink that hands copies to the test.
struct Copies(std::sync::mpsc::Sender<(Direction, Vec<u8>)>);
impl crate::mirror::Sink for Copies {
    fn write_packet(&mut self, direction: Direction, packet: &[u8]) -> std::io::Result<()> {
        let _ = self.0.send((direction, packet.to_vec()));
        Ok(())
    }
}

#[test]
fn the_mirror_copies_what_passes_both_ways_and_nothing_dropped() {
    let (a, b) = a_after_handshake();
    let (tx, copies) = std::sync::mpsc::channel();
    let spec = crate::mirror::MirrorSpec {
        interface: "test0".into(),
        filter: Default::default(),
    };
    a.router.mirror.start_with(spec, || Ok(Copies(tx))).unwrap();
    let next = || copies.recv_timeout(Duration::from_secs(5)).expect("a copy");

    // Outbound: the plaintext, before encryption.
    let out = ipv4("10.42.1.2", "10.42.2.2", b"MARKER out");
    a.tun.push(&out);
    assert_eq!(a.serve(), Poller::TUN);
    assert_eq!(a.udp.sent().len(), 1);
    assert_eq!(next(), (Direction::Outbound, out));
    // Inbound: the plaintext the router accepted.
    let inbound = ipv4("10.42.2.2", "10.42.1.2", b"MARKER in");
    a.udp.deliver(addr(B_ADDR), &from_b(&b, &inbound));
    assert_eq!(a.serve(), Poller::UDP);
    assert_eq!(next(), (Direction::Inbound, inbound));
    // What the router drops is not copied: no route, and a forged inner source.
    a.tun.push(&ipv4("10.42.1.2", "10.99.0.1", b"nowhere"));
    a.serve();
    a.udp.deliver(
        addr(B_ADDR),
        &from_b(&b, &ipv4("10.42.3.3", "10.42.1.2", b"forged")),
    );
    a.serve();
    assert!(copies.recv_timeout(Duration::from_millis(100)).is_err());

    // Stopped: nothing more.
    a.router.mirror.stop().unwrap();
    a.tun.push(&ipv4("10.42.1.2", "10.42.2.2", b"after"));
    a.serve();
    assert_eq!(a.udp.sent().len(), 2);
    assert!(copies.recv_timeout(Duration::from_millis(100)).is_err());
}

#[test]
fn after_writing_to_the_tun_the_socket_side_sends_what_waits_there() {
    let (a, b) = a_after_handshake();
    // The host's answer is already in the TUN when the worker writes B's packet.
    let answer = ipv4("10.42.1.2", "10.42.2.2", b"answer");
    a.tun.push(&answer);
    a.udp.deliver(
        addr(B_ADDR),
        &from_b(&b, &ipv4("10.42.2.2", "10.42.1.2", b"q")),
    );
    handle(&a.shared, Poller::UDP);
    assert_eq!(a.tun.written().len(), 1);
    let sent = a.udp.sent();
    assert_eq!(sent.len(), 1, "the answer left from the socket side");
    assert_eq!(open_at_b(&b, &sent[0].1), answer);
    // The TUN was armed again afterwards: a new packet wakes a worker.
    a.tun.push(&answer);
    assert_eq!(a.serve(), Poller::TUN);
}

#[test]
fn the_hand_off_is_skipped_while_another_worker_has_the_tun() {
    let (a, b) = a_after_handshake();
    let answer = ipv4("10.42.1.2", "10.42.2.2", b"answer");
    a.tun.push(&answer);
    {
        let _other = lock(&a.shared.outside);
        a.udp.deliver(
            addr(B_ADDR),
            &from_b(&b, &ipv4("10.42.2.2", "10.42.1.2", b"q")),
        );
        handle(&a.shared, Poller::UDP);
        assert_eq!(a.tun.written().len(), 1);
        assert!(a.udp.sent().is_empty());
        assert_eq!(a.tun.queued(), 1);
        // A TUN event while the other holds it is dropped: the holder re-arms.
        assert_eq!(a.serve(), Poller::TUN);
        assert_eq!(a.tun.queued(), 1);
    }
    a.shared.arm_tun();
    assert_eq!(a.serve(), Poller::TUN);
    assert_eq!(a.udp.sent().len(), 1);
}

#[test]
fn a_packet_before_the_handshake_waits_for_it_and_then_arrives() {
    let Pair { a, b } = pair();
    let net = FakeNet::new();
    let a = Host::new(Arc::new(a), net.bind(addr(A_ADDR)));
    let b = Host::new(Arc::new(b), net.bind(addr(B_ADDR)));
    let packet = ipv4("10.42.1.2", "10.42.2.2", b"early");
    a.tun.push(&packet);
    // initiation, response, then the packet that waited for them
    let mut rounds = 0;
    while b.tun.written().is_empty() {
        rounds += 1;
        assert!(rounds < 10, "the packet did not arrive");
        a.serve_due();
        b.serve_due();
    }
    assert_eq!(b.tun.written(), vec![packet]);
    let answer = ipv4("10.42.2.2", "10.42.1.2", b"late");
    b.tun.push(&answer);
    b.serve_due();
    a.serve_due();
    assert_eq!(a.tun.written(), vec![answer]);
    assert!(a.router.total_drops().is_empty() && b.router.total_drops().is_empty());
}

#[test]
fn a_failed_send_is_counted_and_the_next_packet_leaves() {
    let (a, _b) = a_after_handshake();
    // One run of three equal datagrams, one send call: all three are lost.
    a.udp.fail_next_send(Fault::Os(libc::ENOBUFS));
    for _ in 0..3 {
        a.tun.push(&ipv4("10.42.1.2", "10.42.2.2", b"lost"));
    }
    a.serve();
    assert!(a.udp.sent().is_empty());
    assert_eq!(a.router.drops.get(DropReason::WriteFailed), 3);
    a.tun.push(&ipv4("10.42.1.2", "10.42.2.2", b"next"));
    a.serve();
    assert_eq!(a.udp.sent().len(), 1);
}

#[test]
fn a_malformed_datagram_is_counted_and_the_next_one_is_delivered() {
    let (a, b) = a_after_handshake();
    let packet = ipv4("10.42.2.2", "10.42.1.2", b"good");
    a.udp.deliver(addr(B_ADDR), b"\x04junk");
    a.udp.deliver(addr(B_ADDR), &from_b(&b, &packet));
    a.serve();
    assert_eq!(a.router.drops.get(DropReason::Malformed), 1);
    assert_eq!(a.tun.written(), vec![packet]);
}

#[test]
fn a_failed_tun_write_is_counted_and_the_next_one_is_delivered() {
    let (a, b) = a_after_handshake();
    let packet = ipv4("10.42.2.2", "10.42.1.2", b"x");
    a.tun.fail_next_write(Fault::Os(libc::EIO));
    a.udp.deliver(addr(B_ADDR), &from_b(&b, &packet));
    a.serve();
    assert!(a.tun.written().is_empty());
    assert_eq!(a.router.drops.get(DropReason::WriteFailed), 1);
    a.udp.deliver(addr(B_ADDR), &from_b(&b, &packet));
    a.serve();
    assert_eq!(a.tun.written(), vec![packet]);
}

#[test]
fn a_failed_receive_is_retried_from_epoll() {
    let (a, b) = a_after_handshake();
    let packet = ipv4("10.42.2.2", "10.42.1.2", b"x");
    a.udp.fail_next_recv(Fault::Os(libc::ENOMEM));
    a.udp.deliver(addr(B_ADDR), &from_b(&b, &packet));
    assert_eq!(a.serve(), Poller::UDP);
    assert!(a.tun.written().is_empty());
    assert_eq!(
        a.serve(),
        Poller::UDP,
        "re-armed with the datagram still queued"
    );
    assert_eq!(a.tun.written(), vec![packet]);
}

#[test]
fn a_failed_tun_read_is_retried_and_a_gone_tun_stays_disarmed() {
    let (a, b) = a_after_handshake();
    let packet = ipv4("10.42.1.2", "10.42.2.2", b"x");
    a.tun.fail_next_read(Fault::Os(libc::EIO));
    a.tun.push(&packet);
    assert_eq!(a.serve(), Poller::TUN);
    assert!(a.udp.sent().is_empty());
    assert_eq!(
        a.serve(),
        Poller::TUN,
        "re-armed with the packet still queued"
    );
    assert_eq!(a.udp.sent().len(), 1);
    // The device goes away: its side stops for good, the socket side carries on.
    a.tun.fail_next_read(Fault::Os(libc::EBADFD));
    a.tun.push(&packet);
    assert_eq!(a.serve(), Poller::TUN);
    assert!(a.quiet(), "the TUN is not re-armed");
    let inbound = ipv4("10.42.2.2", "10.42.1.2", b"y");
    a.udp.deliver(addr(B_ADDR), &from_b(&b, &inbound));
    assert_eq!(a.serve(), Poller::UDP);
    assert_eq!(a.tun.written(), vec![inbound]);
    assert_eq!(a.tun.queued(), 1, "and no hand-off reads the gone TUN");
    assert!(a.quiet());
}

#[test]
fn a_panic_on_the_path_re_arms_both_fds() {
    let (a, b) = a_after_handshake();
    a.tun.fail_next_read(Fault::Panic);
    a.tun.push(&ipv4("10.42.1.2", "10.42.2.2", b"x"));
    assert_eq!(a.serve(), Poller::TUN);
    assert!(a.udp.sent().is_empty());
    // Both fds armed again, the TUN's buffers usable despite the poisoned lock.
    assert_eq!(a.serve(), Poller::TUN);
    assert_eq!(a.udp.sent().len(), 1);
    let packet = ipv4("10.42.2.2", "10.42.1.2", b"y");
    a.udp.deliver(addr(B_ADDR), &from_b(&b, &packet));
    assert_eq!(a.serve(), Poller::UDP);
    assert_eq!(a.tun.written(), vec![packet]);
}

#[test]
fn one_port_hands_quic_to_the_inbox_and_wireguard_to_the_router() {
    let (mut a, b) = a_after_handshake();
    let inbox = Arc::new(super::oneport::QuicInbox::default());
    inbox.open();
    a.shared.quic = Some(inbox.clone());
    let packet = ipv4("10.42.2.2", "10.42.1.2", b"from b");
    let quic_initial = [0xc3u8, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    a.udp.deliver(addr(B_ADDR), &quic_initial);
    a.udp.deliver(addr(B_ADDR), &from_b(&b, &packet));
    a.udp.deliver(addr("198.18.0.13:4433"), &[0x45, 1, 2]);
    assert_eq!(a.serve(), Poller::UDP);
    // The tunnel's datagram reached the TUN, and nothing QUIC's was counted as malformed.
    assert_eq!(a.tun.written(), vec![packet]);
    assert_eq!(a.router.drops.get(DropReason::Malformed), 0);
    let woken = Arc::new(NoWake);
    let waker = std::task::Waker::from(woken);
    let mut cx = std::task::Context::from_waker(&waker);
    let socket = super::oneport::SharedQuicSocket::new(a.udp.clone(), inbox, addr(A_ADDR));
    let mut storage = [[0u8; 64]; 4];
    let mut bufs: Vec<std::io::IoSliceMut> = storage
        .iter_mut()
        .map(|b| std::io::IoSliceMut::new(b))
        .collect();
    let mut meta = [quinn::udp::RecvMeta::default(); 4];
    let got = quinn::AsyncUdpSocket::poll_recv(&socket, &mut cx, &mut bufs, &mut meta);
    assert!(matches!(got, std::task::Poll::Ready(Ok(2))), "{got:?}");
    assert_eq!(
        (meta[0].addr, meta[0].len),
        (addr(B_ADDR), quic_initial.len())
    );
    assert_eq!(meta[1].addr, addr("198.18.0.13:4433"));
    // quinn's sends leave on the same socket.
    let transmit = quinn::udp::Transmit {
        destination: addr(B_ADDR),
        ecn: None,
        contents: &[0x41, 7, 7],
        segment_size: None,
        src_ip: None,
    };
    quinn::AsyncUdpSocket::try_send(&socket, &transmit).unwrap();
    assert_eq!(
        a.udp.sent().last().unwrap(),
        &(addr(B_ADDR), vec![0x41, 7, 7])
    );
}

struct NoWake;
impl std::task::Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

#[test]
fn without_one_port_a_quic_looking_datagram_is_the_routers_junk() {
    let (a, _b) = a_after_handshake();
    a.udp.deliver(addr(B_ADDR), &[0xc3u8, 0, 0, 0, 1, 8, 1, 2]);
    assert_eq!(a.serve(), Poller::UDP);
    assert!(a.tun.written().is_empty());
    assert_eq!(a.router.drops.get(DropReason::Malformed), 1);
}

#[test]
fn spawned_workers_carry_packets_both_ways() {
    // The threads run until the test process exits, as they do in the daemon.
    let Pair { a, b } = pair();
    let net = FakeNet::new();
    let (a_tun, b_tun) = (Arc::new(FakeTun::new()), Arc::new(FakeTun::new()));
    for (tun, router, at) in [(&a_tun, a, A_ADDR), (&b_tun, b, B_ADDR)] {
        super::spawn(
            tun.clone(),
            net.bind(addr(at)),
            Arc::new(router),
            MTU,
            false,
            None,
        )
        .unwrap();
    }
    let wait = Duration::from_secs(10);
    let there = ipv4("10.42.1.2", "10.42.2.2", b"there");
    a_tun.push(&there);
    assert_eq!(b_tun.wait_written(1, wait), vec![there]);
    let back = ipv4("10.42.2.2", "10.42.1.2", b"back");
    b_tun.push(&back);
    assert_eq!(a_tun.wait_written(1, wait), vec![back]);
}
