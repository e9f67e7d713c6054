//! The data plane threads: the one place packets meet the kernel.
//!
//! - *outside → inside* (`Inside::drain`): `recvmmsg` (+GRO) a batch from the UDP socket,
//!   decrypt each datagram straight into a TUN buffer behind the virtio-net header room,
//!   write the batch with one `send_multiple` (which coalesces TCP segments, GRO).
//! - *inside → outside* (`Outside::pump`): `recv_multiple` from the TUN (one TSO super-packet
//!   split into MTU-size packets), encrypt each, and send runs of equal-size datagrams to
//!   one endpoint with one GSO `sendmsg`.
//! - timers: every 250 ms the router's timers; every second the rate limiter's reset.
//!
//! The workers see the TUN through [`tun::Tun`] and the socket through [`udp::Bind`], as
//! generic parameters (monomorphised: no `dyn` per packet); `fake` has in-memory ones,
//! on which `tests.rs` runs the workers' logic without root.
//!
//! Two worker threads wait in one epoll set holding the TUN and the UDP socket, each
//! armed `EPOLLONESHOT` (`Poller`): an event goes to one worker, which drains that fd
//! (nonblocking reads until the kernel has nothing more, or for the socket until a batch
//! comes back short) and re-arms it; re-arming reports anything that came meanwhile. A direction's
//! buffers sit behind a mutex, allocated once, so each direction is worked by one thread
//! at a time and packets of a flow leave in order; under load each worker settles on one
//! direction. Right after writing to the TUN, the worker that drained the socket also
//! reads the TUN (`try_lock`, with the TUN disarmed meanwhile): the kernel answers packets
//! (echo replies, TCP ACKs) inside that write, and sending the answer from the thread
//! that is awake saves a wake-up per round trip. The other locks are the per-peer tunnel
//! mutexes. Each batch loads the router's peer table once (an atomic load, no lock), so
//! peers added, changed or removed at runtime count from the next batch. The mirror
//! (`crate::mirror`) is loaded the same way, once per batch: when one runs, each packet the
//! router passed, either way, is offered to its queue (never waited for).

#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod oneport;
mod poller;
pub mod sched;
pub mod tun;
pub mod udp;

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use protocol::drops::DropReason;
use protocol::policy::enforce::Direction;
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::router::{Inbound, Initiate, MIN_BUFFER_LEN, Outbound, Router, relay};
use crate::util::lock;
use oneport::QuicInbox;
use poller::Poller;
use tun::Tun;
use udp::{Bind, MAX_GSO_BYTES, MAX_GSO_SEGMENTS, RecvBatch};

/// Room kept before each packet written to the TUN, for the virtio-net header.
const TUN_OFFSET: usize = VIRTIO_NET_HDR_LEN;
/// Largest TUN read: a 64 KiB super-packet and its header.
const TUN_READ_LEN: usize = VIRTIO_NET_HDR_LEN + 65_535;
/// Packets written to the TUN per `send_multiple` at most.
const TUN_WRITE_BATCH: usize = 256;

/// Starts the two data-plane workers and the timer thread. They run until the process
/// exits. Generic rather than `dyn`: each device's calls compile into the per-packet loops.
/// With `quic`, the socket is shared with the control plane: QUIC's datagrams go there
/// (see [`oneport`]).
pub fn spawn<T: Tun + 'static, U: Bind + 'static>(
    tun: Arc<T>,
    udp: Arc<U>,
    router: Arc<Router>,
    mtu: u16,
    sched_batch: bool,
    quic: Option<Arc<QuicInbox>>,
) -> io::Result<()> {
    // Reads never block: the workers wait in epoll, and whoever holds a direction's
    // buffers reads until the kernel has nothing more. TUN writes never wait.
    tun.set_nonblocking()?;
    {
        let mut shared = Shared::new(tun, udp.clone(), router.clone(), mtu)?;
        shared.quic = quic;
        let shared = Arc::new(shared);
        for i in 0..WORKERS {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("datapath{i}"))
                .spawn(move || worker(&shared, sched_batch))?;
        }
    }
    std::thread::Builder::new()
        .name("timers".into())
        .spawn(move || timers(&*udp, &router))?;
    Ok(())
}

/// Data-plane worker threads. Either may take either direction; a direction is only ever
/// worked by one of them at a time (its fd is armed `EPOLLONESHOT` and its buffers sit
/// behind a mutex), so packets of a flow keep their order.
const WORKERS: usize = 2;

/// What the workers share.
struct Shared<T, U> {
    outside: Mutex<Outside>,
    inside: Mutex<Inside>,
    poller: Poller,
    /// Set once the TUN is gone: it then stays disarmed, and the error is logged once.
    tun_gone: std::sync::atomic::AtomicBool,
    tun: Arc<T>,
    udp: Arc<U>,
    router: Arc<Router>,
    /// One-port mode: where QUIC's datagrams go.
    quic: Option<Arc<QuicInbox>>,
}

impl<T: Tun, U: Bind> Shared<T, U> {
    /// The buffers of both directions and the epoll set, both fds armed.
    fn new(tun: Arc<T>, udp: Arc<U>, router: Arc<Router>, mtu: u16) -> io::Result<Self> {
        Ok(Shared {
            outside: Mutex::new(Outside::new(mtu)),
            inside: Mutex::new(Inside::new(udp.gro())),
            poller: Poller::new(tun.as_raw_fd(), udp.as_raw_fd())?,
            tun_gone: std::sync::atomic::AtomicBool::new(false),
            tun,
            udp,
            router,
            quic: None,
        })
    }

    /// Re-arms the TUN, unless it is gone.
    fn arm_tun(&self) {
        if !self.tun_gone.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = self.poller.arm(Poller::TUN);
        }
    }
}

/// The inside → outside path's buffers. Whoever holds its mutex is the only reader of
/// the TUN, so packets of a flow leave in the order they came.
struct Outside {
    original: Vec<u8>,
    packets: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    sealed: Vec<Vec<u8>>,
    sends: Vec<(SocketAddr, usize, usize)>,
}

impl Outside {
    fn new(mtu: u16) -> Outside {
        let packet_len = usize::from(mtu) + 64;
        Outside {
            original: vec![0u8; TUN_READ_LEN],
            packets: vec![vec![0u8; packet_len]; IDEAL_BATCH_SIZE],
            sizes: vec![0usize; IDEAL_BATCH_SIZE],
            sealed: vec![vec![0u8; (packet_len + 32).max(MIN_BUFFER_LEN)]; IDEAL_BATCH_SIZE],
            sends: Vec::with_capacity(IDEAL_BATCH_SIZE),
        }
    }

    /// Reads one batch from the TUN without blocking, encrypts it and sends it.
    /// `WouldBlock` when the TUN has nothing.
    fn pump(&mut self, tun: &impl Tun, udp: &impl Bind, router: &Router) -> io::Result<usize> {
        let n = tun.recv_batch(&mut self.original, &mut self.packets, &mut self.sizes)?;
        self.sends.clear();
        // One table load per batch: peer changes take effect from the next batch (a
        // removed peer's packets are dropped at once all the same, see `remove_peer`).
        let table = router.table();
        // Once per batch too: off, the mirror costs this load and one branch a packet.
        let mirror = router.mirror.load();
        let mut copier = mirror.as_ref().map(|m| m.copier(Direction::Outbound));
        for i in 0..n {
            let packet = &self.packets[i][..self.sizes[i]];
            let passed = match router.encapsulate_with(&table, packet, &mut self.sealed[i]) {
                Outbound::Send { endpoint, len, .. } => {
                    self.sends.push((endpoint, i, len));
                    true
                }
                // Passed the policy; it leaves once the handshake is done.
                Outbound::Queued => true,
                Outbound::Dropped(_) => false,
            };
            if passed && let Some(c) = copier.as_mut() {
                c.copy(packet);
            }
        }
        drop(copier); // wakes the mirror's writer
        send_runs(udp, router, &self.sends, &self.sealed);
        Ok(n)
    }
}

/// The outside → inside path's buffers: a receive batch, the decrypted packets waiting
/// for one TUN write, and the GRO table that coalesces them.
struct Inside {
    batch: RecvBatch,
    bufs: Vec<Vec<u8>>,
    gro: GROTable,
    /// Datagrams this host forwards as a relay, sent at the end of each batch, in runs
    /// (GSO) as the encrypted ones are.
    relayed: Vec<Vec<u8>>,
    relay_sends: Vec<(SocketAddr, usize, usize)>,
}

impl Inside {
    fn new(udp_gro: bool) -> Inside {
        Inside {
            batch: RecvBatch::new(if udp_gro { 32 } else { 128 }),
            bufs: (0..TUN_WRITE_BATCH)
                .map(|_| Vec::with_capacity(TUN_READ_LEN + TUN_OFFSET))
                .collect(),
            gro: GROTable::default(),
            relayed: Vec::new(),
            relay_sends: Vec::new(),
        }
    }

    /// Receives, decrypts and writes to the TUN until the socket has nothing more. The
    /// caller re-arms the socket, which reports anything that arrives after the last read.
    fn drain<T: Tun, U: Bind>(&mut self, shared: &Shared<T, U>) {
        let (tun, udp, router) = (&*shared.tun, &*shared.udp, &*shared.router);
        let quic = shared.quic.as_deref();
        let mut reply = |dst: SocketAddr, bytes: &[u8]| udp.send_message(dst, bytes);
        loop {
            let n = match udp.try_recv(&mut self.batch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Re-armed by the caller: a lasting error is retried from epoll, after
                    // a pause so that it cannot spin.
                    tracing::debug!(error = %e, "UDP receive failed");
                    std::thread::sleep(Duration::from_millis(1));
                    return;
                }
            };
            // A batch with room to spare emptied the socket: no read to confirm it (the
            // caller's re-arm reports anything that came since), one system call less on
            // each hop of an idle round trip.
            let emptied = n < self.batch.capacity();
            let mut filled = 0;
            let table = router.table(); // once per batch, as in `Outside::pump`
            let mirror = router.mirror.load();
            let mut copier = mirror.as_ref().map(|m| m.copier(Direction::Inbound));
            for i in 0..n {
                let (src, datagrams) = self.batch.datagrams(i);
                let Some(src) = src else { continue };
                for datagram in datagrams {
                    // One port: QUIC's datagrams are the control plane's (one branch each).
                    if let Some(quic) = quic
                        && oneport::is_quic(datagram)
                    {
                        quic.deliver(src, datagram);
                        continue;
                    }
                    // Relay framing (one more compare each; see `router::relay`).
                    let relayed = relay::relay_kind(datagram);
                    if relayed == Some(relay::TO_RELAY) {
                        let at = self.relay_sends.len();
                        if at == self.relayed.len() {
                            self.relayed.push(Vec::with_capacity(datagram.len()));
                        }
                        let out = &mut self.relayed[at];
                        if let Some(dst) = router.forward_relayed(&table, src, datagram, out) {
                            self.relay_sends.push((dst, at, out.len()));
                            if self.relay_sends.len() == MAX_GSO_SEGMENTS {
                                send_runs(udp, router, &self.relay_sends, &self.relayed);
                                self.relay_sends.clear();
                            }
                        }
                        continue;
                    }
                    if filled == self.bufs.len() {
                        write_tun(tun, router, &mut self.gro, &mut self.bufs[..filled]);
                        filled = 0;
                    }
                    let buf = &mut self.bufs[filled];
                    // No clear first: resize only zero-fills what the last packet left
                    // short (zero-filling whole buffers showed in the receiver's profile,
                    // docs/performance.md).
                    // The header room is written by tun-rs and the plaintext by the router.
                    buf.resize(TUN_OFFSET + datagram.len().max(MIN_BUFFER_LEN), 0);
                    let inbound = if relayed.is_some() {
                        router.decapsulate_relayed_with(
                            &table,
                            src,
                            datagram,
                            &mut buf[TUN_OFFSET..],
                            &mut reply,
                        )
                    } else {
                        router.decapsulate_with(
                            &table,
                            src,
                            datagram,
                            &mut buf[TUN_OFFSET..],
                            &mut reply,
                        )
                    };
                    if let Inbound::ToTun { len } = inbound {
                        buf.truncate(TUN_OFFSET + len);
                        // Accepted by the router: its source, destination and policy.
                        if let Some(c) = copier.as_mut() {
                            c.copy(&buf[TUN_OFFSET..]);
                        }
                        filled += 1;
                    }
                }
            }
            drop(copier); // wakes the mirror's writer
            if !self.relay_sends.is_empty() {
                send_runs(udp, router, &self.relay_sends, &self.relayed);
                self.relay_sends.clear();
            }
            if filled == 0 {
                if emptied {
                    return;
                }
                continue;
            }
            // Writing to the TUN runs the kernel's stack at once: an answer (an echo reply,
            // a TCP ACK) may already wait in the TUN. Send it now from this thread, which
            // is awake, rather than wake the other worker: one wake-up less per round
            // trip. Only when no one else reads the TUN, so flows keep their order; and
            // then the TUN is disarmed meanwhile, so its answers wake no one (under one TCP
            // stream those wake-ups cost a good share of a vCPU). Re-arming re-checks
            // readiness, so no packet waits unnoticed.
            // (A gone TUN is left alone: even disarmed, epoll reports its error state.)
            let out = if shared.tun_gone.load(std::sync::atomic::Ordering::Relaxed) {
                None
            } else {
                try_lock(&shared.outside)
            };
            match out {
                Some(mut out) => {
                    let _ = shared.poller.disarm(Poller::TUN);
                    write_tun(tun, router, &mut self.gro, &mut self.bufs[..filled]);
                    let _ = out.pump(tun, udp, router);
                    drop(out);
                    shared.arm_tun();
                }
                None => write_tun(tun, router, &mut self.gro, &mut self.bufs[..filled]),
            }
            if emptied {
                return;
            }
        }
    }
}

/// As [`lock`], without waiting: `None` while another thread holds it.
fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

fn worker<T: Tun, U: Bind>(shared: &Shared<T, U>, sched_batch: bool) {
    let mut handoff = sched::Handoff::new(sched_batch);
    loop {
        let Some(which) = shared.poller.wait() else {
            continue;
        };
        handle(shared, which);
        handoff.woke();
    }
}

/// Serves one wake-up for `which` fd (`Poller::TUN` or `Poller::UDP`) and re-arms it.
fn handle<T: Tun, U: Bind>(shared: &Shared<T, U>, which: usize) {
    // A panic here would be a bug; it must not leave an fd disarmed for good (the
    // other worker would sleep forever), so it is caught, logged, and both fds re-armed.
    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match which {
        Poller::TUN => {
            // Whoever holds the TUN side re-arms the TUN when it lets go (and re-arming
            // re-checks readiness), so this event can be dropped; waiting for the lock
            // instead could leave both workers on the TUN and the socket unserved.
            if let Some(out) = try_lock(&shared.outside) {
                drain_tun(shared, out);
                shared.arm_tun();
            }
        }
        _ => {
            lock(&shared.inside).drain(shared);
            let _ = shared.poller.arm(Poller::UDP);
        }
    }));
    if handled.is_err() {
        tracing::error!(
            "a data-plane worker panicked (a bug: please report it with this log); it carries on"
        );
        shared.arm_tun();
        let _ = shared.poller.arm(Poller::UDP);
    }
}

/// Reads, encrypts and sends until the TUN has nothing more.
fn drain_tun<T: Tun, U: Bind>(shared: &Shared<T, U>, mut out: MutexGuard<'_, Outside>) {
    let (tun, udp, router) = (&*shared.tun, &*shared.udp, &*shared.router);
    loop {
        match out.pump(tun, udp, router) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if e.raw_os_error() == Some(libc::EBADFD) {
                    use std::sync::atomic::Ordering;
                    if !shared.tun_gone.swap(true, Ordering::Relaxed) {
                        tracing::error!(error = %e, "TUN device is gone; the inside → outside path stops");
                    }
                    return;
                }
                // Re-armed by the caller: a lasting error is retried from epoll.
                tracing::debug!(error = %e, "TUN read failed");
                return;
            }
        }
    }
}

/// Sends encrypted datagrams, one GSO send per run of equal-size datagrams to one
/// endpoint (the last of a run may be shorter).
fn send_runs(
    udp: &impl Bind,
    router: &Router,
    sends: &[(SocketAddr, usize, usize)],
    sealed: &[Vec<u8>],
) {
    // On the stack: no allocation per batch.
    let mut segments: [&[u8]; MAX_GSO_SEGMENTS] = [&[]; MAX_GSO_SEGMENTS];
    let mut start = 0;
    while start < sends.len() {
        let (endpoint, first, size) = sends[start];
        segments[0] = &sealed[first][..size];
        let mut count = 1;
        let mut bytes = size;
        let mut end = start + 1;
        while end < sends.len() && count < MAX_GSO_SEGMENTS {
            let (ep, idx, len) = sends[end];
            if ep != endpoint || len > size || bytes + len > MAX_GSO_BYTES {
                break;
            }
            segments[count] = &sealed[idx][..len];
            count += 1;
            bytes += len;
            end += 1;
            if len < size {
                break; // a shorter datagram closes the run
            }
        }
        if let Err(e) = udp.send_segments(endpoint, &segments[..count]) {
            for _ in 0..count {
                router.drops.add(DropReason::WriteFailed);
            }
            router
                .log
                .log(DropReason::WriteFailed, Some(endpoint), None);
            tracing::debug!(error = %e, %endpoint, "UDP send failed");
        }
        start = end;
    }
}

fn write_tun(tun: &impl Tun, router: &Router, gro: &mut GROTable, bufs: &mut [Vec<u8>]) {
    if bufs.is_empty() {
        return;
    }
    if let Err(e) = tun.send_batch(gro, bufs, TUN_OFFSET) {
        router.drops.add(DropReason::WriteFailed);
        router.log.log(DropReason::WriteFailed, None, None);
        tracing::debug!(error = %e, "TUN write failed");
    }
}

fn timers(udp: &impl Bind, router: &Router) {
    let mut buf = vec![0u8; 2048];
    let mut last_reset = Instant::now();
    let mut send = |dst: SocketAddr, bytes: &[u8]| udp.send_message(dst, bytes);
    router.initiate_and_send(Initiate::All, udp);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        router.tick(&mut buf, &mut send);
        if last_reset.elapsed() >= Duration::from_secs(1) {
            router.reset_rate_limiter(Instant::now());
            last_reset = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests;
