//! The mirror's filter, queue, writer and slot, on in-memory sinks.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::tap::{HOST_MAC, TUNNEL_MAC, ethernet_header};
use super::*;

fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&[0, 8, 0, 0]);
    p
}

/// One copy through a copier of its own (a batch of one).
fn copy(m: &Mirror, direction: Direction, packet: &[u8]) {
    m.copier(direction).copy(packet);
}

fn spec(filter: MirrorFilter) -> MirrorSpec {
    MirrorSpec {
        interface: DEFAULT_INTERFACE.into(),
        filter,
    }
}

/// Polls `done` for up to 5 s; panics if it never holds.
fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "not within 5 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct Channel(mpsc::Sender<(Direction, Vec<u8>)>);
impl Sink for Channel {
    fn write_packet(&mut self, direction: Direction, packet: &[u8]) -> io::Result<()> {
        let _ = self.0.send((direction, packet.to_vec()));
        Ok(())
    }
}

/// A sink that never returns: the writer is stuck.
struct Stuck;
impl Sink for Stuck {
    fn write_packet(&mut self, _: Direction, _: &[u8]) -> io::Result<()> {
        std::thread::sleep(Duration::from_secs(3600));
        Ok(())
    }
}

/// A sink that takes 100 µs a packet: far slower than the data path.
struct Slow;
impl Sink for Slow {
    fn write_packet(&mut self, _: Direction, _: &[u8]) -> io::Result<()> {
        std::thread::sleep(Duration::from_micros(100));
        Ok(())
    }
}

#[test]
fn the_filter_takes_addresses_and_ports() {
    let f = MirrorFilter {
        cidrs: vec!["10.42.2.0/24".parse().unwrap()],
        ports: vec![53],
    };
    assert!(f.matches(&udp([10, 42, 1, 2], [10, 42, 2, 2], 4000, 53)));
    assert!(!f.matches(&udp([10, 42, 1, 2], [10, 42, 3, 2], 4000, 53)));
    assert!(!f.matches(&udp([10, 42, 1, 2], [10, 42, 2, 2], 4000, 80)));
    assert!(MirrorFilter::default().matches(&[1, 2, 3]));
    assert!(!f.matches(&[0x45]));
}

#[test]
fn names_and_ports_are_checked() {
    assert!(check_interface_name("ovlmirror0").is_ok());
    for bad in ["", "a/b", "-x", "sixteen_chars_xx", "a b", "x\"y"] {
        let e = check_interface_name(bad).unwrap_err();
        assert!(
            e.contains("not an interface name") && !e.contains('\n'),
            "{e}"
        );
    }
    assert!(check_ports(&[53, 443]).is_ok());
    assert!(check_ports(&[0]).unwrap_err().contains("port 0"));
}

#[test]
fn copies_reach_the_sink_in_order_with_their_direction() {
    let (tx, rx) = mpsc::channel();
    let m = Mirror::start(spec(MirrorFilter::default()), Channel(tx)).unwrap();
    for port in 0..100 {
        let direction = if port % 2 == 0 {
            Direction::Inbound
        } else {
            Direction::Outbound
        };
        copy(
            &m,
            direction,
            &udp([10, 42, 1, 2], [10, 42, 2, 2], port, 53),
        );
    }
    m.wake();
    for port in 0..100u16 {
        let (direction, p) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(&p[20..22], &port.to_be_bytes());
        assert_eq!(direction == Direction::Inbound, port % 2 == 0);
    }
    // The count follows the write.
    wait_until(|| m.counters() == (100, 0, 0));
    m.stop();
    copy(
        &m,
        Direction::Inbound,
        &udp([10, 42, 1, 2], [10, 42, 2, 2], 1, 53),
    );
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
}

#[test]
fn the_filter_decides_what_is_queued() {
    let (tx, rx) = mpsc::channel();
    let filter = MirrorFilter {
        cidrs: vec![],
        ports: vec![53],
    };
    let m = Mirror::start(spec(filter), Channel(tx)).unwrap();
    copy(
        &m,
        Direction::Inbound,
        &udp([10, 42, 1, 2], [10, 42, 2, 2], 4000, 80),
    );
    copy(
        &m,
        Direction::Inbound,
        &udp([10, 42, 1, 2], [10, 42, 2, 2], 4000, 53),
    );
    m.wake();
    let (_, p) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(&p[22..24], &53u16.to_be_bytes());
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    wait_until(|| m.counters() == (1, 0, 0));
}

#[test]
fn a_copy_without_a_wake_up_still_arrives() {
    // A missed wake-up delays a copy by at most IDLE_PARK, never for good.
    let (tx, rx) = mpsc::channel();
    let m = Mirror::start(spec(MirrorFilter::default()), Channel(tx)).unwrap();
    std::thread::sleep(Duration::from_millis(30)); // the writer parks
    copy(
        &m,
        Direction::Inbound,
        &udp([10, 42, 1, 2], [10, 42, 2, 2], 1, 53),
    );
    assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
}

#[test]
fn a_stuck_writer_never_blocks_the_data_path() {
    let m = Mirror::start(spec(MirrorFilter::default()), Stuck).unwrap();
    let packet = udp([10, 42, 1, 2], [10, 42, 2, 2], 1, 53);
    let started = Instant::now();
    for _ in 0..100_000 {
        copy(&m, Direction::Inbound, &packet);
        m.wake();
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let dropped = m.stats.dropped.load(Ordering::Relaxed);
    assert!(dropped >= 100_000 - QUEUE as u64 - 1, "{dropped}");
    // One batch of many: what does not fit is dropped at once.
    let mut c = m.copier(Direction::Outbound);
    for _ in 0..QUEUE + 10 {
        c.copy(&packet);
    }
    drop(c);
    assert!(m.stats.dropped.load(Ordering::Relaxed) >= dropped + 10);
}

#[test]
fn a_slow_writer_drops_and_counts_what_it_cannot_take() {
    let m = Mirror::start(spec(MirrorFilter::default()), Slow).unwrap();
    let packet = udp([10, 42, 1, 2], [10, 42, 2, 2], 1, 53);
    for _ in 0..20 {
        for _ in 0..1_000 {
            copy(&m, Direction::Outbound, &packet);
        }
        m.wake();
    }
    let (copied, dropped, errors) = m.counters();
    assert!(dropped > 0, "copied {copied}, dropped {dropped}");
    assert_eq!(errors, 0);
    // Everything offered is written, dropped, or still queued (a batch being written
    // counts as queued until its end).
    let queued = m.queued.load(Ordering::Relaxed) as u64;
    assert!(copied + dropped <= 20_000, "{copied} + {dropped}");
    assert!(
        copied + dropped + queued >= 20_000,
        "{copied} + {dropped} + {queued}"
    );
}

#[test]
fn the_slot_starts_replaces_and_stops_a_mirror() {
    let slot = MirrorSlot::default();
    assert!(slot.load().is_none());
    assert!(slot.shown().is_none());
    assert_eq!(slot.stop().unwrap(), None);

    let (tx, rx) = mpsc::channel();
    slot.start_with(spec(MirrorFilter::default()), || Ok(Channel(tx)))
        .unwrap();
    let packet = udp([10, 42, 1, 2], [10, 42, 2, 2], 1, 53);
    {
        let guard = slot.load();
        let m = guard.as_ref().expect("a mirror");
        copy(m, Direction::Inbound, &packet);
        m.wake();
    }
    assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
    wait_until(|| slot.shown().unwrap().copied == 1);

    // A second start replaces the first: its writer (and sink) is gone first.
    let (tx2, rx2) = mpsc::channel();
    let ports = MirrorFilter {
        cidrs: vec![],
        ports: vec![53],
    };
    slot.start_with(spec(ports.clone()), || Ok(Channel(tx2)))
        .unwrap();
    assert!(
        matches!(rx.recv(), Err(mpsc::RecvError)),
        "the old sink is dropped"
    );
    assert_eq!(slot.shown().unwrap().spec.filter, ports);
    assert_eq!(slot.shown().unwrap().copied, 0);

    let last = slot.stop().unwrap().expect("it ran");
    assert_eq!(last.spec.filter, ports);
    assert!(slot.load().is_none());
    assert!(
        matches!(rx2.recv(), Err(mpsc::RecvError)),
        "the sink is dropped"
    );

    // A sink that cannot be made leaves no mirror.
    let e = slot
        .start_with(spec(MirrorFilter::default()), || -> io::Result<Channel> {
            Err(io::Error::from(io::ErrorKind::PermissionDenied))
        })
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot make mirror interface ovlmirror0")
    );
    assert!(slot.load().is_none());
}

#[test]
fn frames_carry_the_direction_and_the_ethertype() {
    let v4 = udp([10, 42, 1, 2], [10, 42, 2, 2], 1, 53);
    let h = ethernet_header(Direction::Inbound, &v4).unwrap();
    assert_eq!(
        (&h[..6], &h[6..12], &h[12..]),
        (&HOST_MAC[..], &TUNNEL_MAC[..], &[8u8, 0][..])
    );
    let mut v6 = vec![0x60u8; 40];
    v6[0] = 0x60;
    let h = ethernet_header(Direction::Outbound, &v6).unwrap();
    assert_eq!(
        (&h[..6], &h[6..12], &h[12..]),
        (&TUNNEL_MAC[..], &HOST_MAC[..], &[0x86u8, 0xdd][..])
    );
    assert!(ethernet_header(Direction::Inbound, &[0x10]).is_none());
    assert!(ethernet_header(Direction::Inbound, &[]).is_none());
}

#[test]
fn written_buffers_come_back_to_their_direction() {
    let (tx, rx) = mpsc::channel();
    let m = Mirror::start(spec(MirrorFilter::default()), Channel(tx)).unwrap();
    let packet = udp([10, 42, 1, 2], [10, 42, 2, 2], 1, 53);
    {
        let mut c = m.copier(Direction::Outbound);
        for _ in 0..3 {
            c.copy(&packet);
        }
    }
    for _ in 0..3 {
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }
    // The next copies of that direction reuse them (handed back right after the write);
    // the other direction has none.
    let outbound = crate::util::lock(&m.spare[side(Direction::Outbound)]);
    let mut back = Vec::new();
    wait_until(|| {
        while let Ok(batch) = outbound.returned.try_recv() {
            back.extend(batch);
        }
        back.len() == 3
    });
    assert!(back.iter().all(|b| b.capacity() >= COPY_CAPACITY));
    assert!(
        crate::util::lock(&m.spare[side(Direction::Inbound)])
            .returned
            .try_recv()
            .is_err()
    );
}

/// A sink whose reader comes and goes (`reader`), like tcpdump started and stopped.
struct Watched {
    tx: mpsc::Sender<(Direction, Vec<u8>)>,
    reader: Arc<AtomicBool>,
}
impl Sink for Watched {
    fn write_packet(&mut self, direction: Direction, packet: &[u8]) -> io::Result<()> {
        let _ = self.tx.send((direction, packet.to_vec()));
        Ok(())
    }
    fn has_reader(&self) -> Option<bool> {
        Some(self.reader.load(Ordering::Relaxed))
    }
}

#[test]
fn nothing_is_copied_while_nobody_reads_and_it_is_counted() {
    let (tx, rx) = mpsc::channel();
    let reader = Arc::new(AtomicBool::new(false));
    let m = Mirror::start(
        spec(MirrorFilter::default()),
        Watched {
            tx,
            reader: reader.clone(),
        },
    )
    .unwrap();
    let packet = udp([10, 42, 1, 2], [10, 42, 2, 2], 4000, 53);
    for _ in 0..10 {
        copy(&m, Direction::Inbound, &packet);
    }
    m.wake();
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    assert_eq!(m.counters(), (0, 10, 0), "counted dropped, never queued");
    // A reader appears: within a check or two, copies are made again.
    reader.store(true, Ordering::Relaxed);
    wait_until(|| {
        copy(&m, Direction::Outbound, &packet);
        m.wake();
        rx.try_recv().is_ok()
    });
}

#[test]
fn a_packet_socket_on_the_interface_or_on_all_is_a_reader() {
    let table = "sk       RefCnt Type Proto  Iface R Rmem   User   Inode\n\
                 ffff0001 3      3    0003   7     1 0      0      100\n";
    assert!(super::tap::packet_socket_on(table, 7));
    assert!(!super::tap::packet_socket_on(table, 8));
    let any = "sk       RefCnt Type Proto  Iface R Rmem   User   Inode\n\
               ffff0002 3      2    0003   0     1 0      0      101\n";
    assert!(super::tap::packet_socket_on(any, 8));
    assert!(!super::tap::packet_socket_on(
        "sk RefCnt Type Proto Iface R Rmem User Inode\n",
        8
    ));
}
