//! The data plane threads: the one place packets meet the kernel.
//!
//! - *outside → inside* (`inbound`): `recvmmsg` (+GRO) a batch from the UDP socket,
//!   decrypt each datagram straight into a TUN buffer behind the virtio-net header room,
//!   write the batch with one `send_multiple` (which coalesces TCP segments, GRO).
//! - *inside → outside* (`outbound`): `recv_multiple` from the TUN (one TSO super-packet
//!   split into MTU-size packets), encrypt each, and send runs of equal-size datagrams to
//!   one endpoint with one GSO `sendmsg`.
//! - timers: every 250 ms the router's timers; every second the rate limiter's reset.
//!
//! Each direction runs on its own OS thread with buffers allocated once. The inbound
//! thread blocks in `recvmmsg`; the TUN is nonblocking and the outbound thread waits in
//! epoll (`TunWaiter`), because right after writing to the TUN the inbound thread also reads it: the
//! kernel answers packets (echo replies, TCP ACKs) inside that write, and sending the
//! answer from the thread that is awake saves a wake-up per round trip. The outbound
//! buffers sit behind a mutex taken by whichever thread reads the TUN (the inbound thread
//! only `try_lock`s it), so packets of a flow leave in order; the other locks are the
//! per-peer tunnel mutexes. Each batch loads the router's peer table once (an atomic
//! load, no lock), so peers added, changed or removed at runtime count from the next batch.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use protocol::drops::DropReason;
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN};

use crate::router::{Inbound, MIN_BUFFER_LEN, Outbound, Router};
use crate::udp::{MAX_GSO_BYTES, MAX_GSO_SEGMENTS, RecvBatch, Udp};

/// Room kept before each packet written to the TUN, for the virtio-net header.
const TUN_OFFSET: usize = VIRTIO_NET_HDR_LEN;
/// Largest TUN read: a 64 KiB super-packet and its header.
const TUN_READ_LEN: usize = VIRTIO_NET_HDR_LEN + 65_535;
/// Packets written to the TUN per `send_multiple` at most.
const TUN_WRITE_BATCH: usize = 256;

/// Creates the TUN device, with offload when asked and the kernel allows it. Its MTU,
/// address and state are set through netlink afterwards (`netlink::Routes::configure_link`).
pub fn open_tun(name: &str, offload: bool) -> io::Result<SyncDevice> {
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .offload(offload)
            .build_sync()
    };
    if offload {
        match build(true) {
            Ok(dev) => return Ok(dev),
            Err(e)
                if e.raw_os_error() == Some(libc::EPERM)
                    || e.raw_os_error() == Some(libc::EBUSY) =>
            {
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the kernel refused TUN offload; running without it");
            }
        }
    }
    build(false)
}

/// Starts the inbound, outbound and timer threads. They run until the process exits.
pub fn spawn(tun: Arc<SyncDevice>, udp: Arc<Udp>, router: Arc<Router>, mtu: u16) -> io::Result<()> {
    // Reads never block: the outbound thread waits in epoll, so that the inbound thread
    // can also take packets from the TUN (see `Outside::pump`). TUN writes never wait.
    tun.set_nonblocking(true)?;
    let outside = Arc::new(Mutex::new(Outside::new(mtu)));
    let waiter = Arc::new(TunWaiter::new(std::os::fd::AsRawFd::as_raw_fd(&*tun))?);
    {
        let (tun, udp, router, outside, waiter) = (
            tun.clone(),
            udp.clone(),
            router.clone(),
            outside.clone(),
            waiter.clone(),
        );
        std::thread::Builder::new()
            .name("outbound".into())
            .spawn(move || outbound(&tun, &udp, &router, &outside, &waiter))?;
    }
    {
        let (udp, router) = (udp.clone(), router.clone());
        std::thread::Builder::new()
            .name("inbound".into())
            .spawn(move || inbound(&tun, &udp, &router, &outside, &waiter))?;
    }
    std::thread::Builder::new()
        .name("timers".into())
        .spawn(move || timers(&udp, &router))?;
    Ok(())
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
    fn pump(&mut self, tun: &SyncDevice, udp: &Udp, router: &Router) -> io::Result<usize> {
        let n = tun.recv_multiple(&mut self.original, &mut self.packets, &mut self.sizes, 0)?;
        self.sends.clear();
        // One table load per batch: peer changes take effect from the next batch (a
        // removed peer's packets are dropped at once all the same, see `remove_peer`).
        let table = router.table();
        for i in 0..n {
            if let Outbound::Send { endpoint, len, .. } = router.encapsulate_with(
                &table,
                &self.packets[i][..self.sizes[i]],
                &mut self.sealed[i],
            ) {
                self.sends.push((endpoint, i, len));
            }
        }
        send_runs(udp, router, &self.sends, &self.sealed);
        Ok(n)
    }
}

fn lock(outside: &Mutex<Outside>) -> MutexGuard<'_, Outside> {
    // A panic while holding it leaves only buffers behind, which are rewritten before use.
    outside.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where the outbound thread waits for the TUN: an epoll set holding the TUN with
/// `EPOLLONESHOT`. The inbound thread disarms it while it writes to the TUN and then reads
/// the kernel's answers itself (see `inbound`), so the outbound thread is not woken for
/// packets it would find gone (perf: 46k such wake-ups, 9.5 % of a vCPU, in 8 s of one
/// TCP stream). Re-arming re-checks readiness, so no packet waits unnoticed.
struct TunWaiter {
    epoll: std::os::fd::OwnedFd,
    tun: std::os::fd::RawFd,
}

impl TunWaiter {
    fn new(tun: std::os::fd::RawFd) -> io::Result<TunWaiter> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall; the fd is owned below.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `ep` is a new fd that nothing else owns.
        let epoll = unsafe { std::os::fd::OwnedFd::from_raw_fd(ep) };
        let waiter = TunWaiter { epoll, tun };
        waiter.ctl(libc::EPOLL_CTL_ADD, 0)?;
        Ok(waiter)
    }

    fn ctl(&self, op: i32, events: u32) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut ev = libc::epoll_event {
            events: events | libc::EPOLLONESHOT as u32,
            u64: 0,
        };
        // SAFETY: valid fds and a valid event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, self.tun, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Arms the TUN and blocks until it is readable (or a signal arrives).
    fn wait(&self) {
        use std::os::fd::AsRawFd;
        if self.arm().is_err() {
            return;
        }
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: one valid event buffer for the duration of the call.
        unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), &mut ev, 1, -1) };
    }

    /// Wakes the waiting thread when the TUN is (or becomes) readable.
    fn arm(&self) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, libc::EPOLLIN as u32)
    }

    /// Keeps the waiting thread asleep whatever the TUN gets, until the next `arm`.
    fn disarm(&self) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, 0)
    }
}

fn outbound(
    tun: &SyncDevice,
    udp: &Udp,
    router: &Router,
    outside: &Mutex<Outside>,
    waiter: &TunWaiter,
) {
    loop {
        let result = lock(outside).pump(tun, udp, router);
        match result {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => waiter.wait(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if e.raw_os_error() == Some(libc::EBADFD) {
                    tracing::error!(error = %e, "TUN device is gone; outbound path stops");
                    return;
                }
                tracing::debug!(error = %e, "TUN read failed");
            }
        }
    }
}

/// Sends encrypted datagrams, one GSO send per run of equal-size datagrams to one
/// endpoint (the last of a run may be shorter).
fn send_runs(udp: &Udp, router: &Router, sends: &[(SocketAddr, usize, usize)], sealed: &[Vec<u8>]) {
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

fn inbound(
    tun: &SyncDevice,
    udp: &Udp,
    router: &Router,
    outside: &Mutex<Outside>,
    waiter: &TunWaiter,
) {
    let mut batch = RecvBatch::new(if udp.gro() { 32 } else { 128 });
    let mut bufs: Vec<Vec<u8>> = (0..TUN_WRITE_BATCH)
        .map(|_| Vec::with_capacity(TUN_READ_LEN + TUN_OFFSET))
        .collect();
    let mut gro = GROTable::default();
    let mut reply = |dst: SocketAddr, bytes: &[u8]| {
        if let Err(e) = udp.send_to(dst, bytes) {
            tracing::debug!(error = %e, endpoint = %dst, "UDP send of a handshake message failed");
        }
    };
    loop {
        let n = match udp.recv(&mut batch) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        let mut filled = 0;
        let table = router.table(); // once per batch, as in `Outside::pump`
        for i in 0..n {
            let (src, datagrams) = batch.datagrams(i);
            let Some(src) = src else { continue };
            for datagram in datagrams {
                if filled == bufs.len() {
                    write_tun(tun, router, &mut gro, &mut bufs[..filled]);
                    filled = 0;
                }
                let buf = &mut bufs[filled];
                // No clear first: resize only zero-fills what the last packet left short
                // (perf: zero-filling whole buffers was 2.2 % of the receiver). The header
                // room is written by tun-rs and the plaintext by the router.
                buf.resize(TUN_OFFSET + datagram.len().max(MIN_BUFFER_LEN), 0);
                if let Inbound::ToTun { len } = router.decapsulate_with(
                    &table,
                    src,
                    datagram,
                    &mut buf[TUN_OFFSET..],
                    &mut reply,
                ) {
                    buf.truncate(TUN_OFFSET + len);
                    filled += 1;
                }
            }
        }
        if filled == 0 {
            continue;
        }
        // Writing to the TUN runs the kernel's stack at once: an answer (an echo reply, a
        // TCP ACK) may already wait in the TUN. Send it now from this thread, which is
        // awake, rather than wake the outbound thread: one wake-up less per round trip.
        // Only when the outbound thread is not at work, so flows keep their order; and
        // then the outbound thread is kept asleep meanwhile (`TunWaiter`).
        match outside.try_lock() {
            Ok(mut out) => {
                let _ = waiter.disarm();
                write_tun(tun, router, &mut gro, &mut bufs[..filled]);
                let _ = out.pump(tun, udp, router);
                drop(out);
                let _ = waiter.arm();
            }
            Err(_) => write_tun(tun, router, &mut gro, &mut bufs[..filled]),
        }
    }
}

fn write_tun(tun: &SyncDevice, router: &Router, gro: &mut GROTable, bufs: &mut [Vec<u8>]) {
    if bufs.is_empty() {
        return;
    }
    if let Err(e) = tun.send_multiple(gro, bufs, TUN_OFFSET) {
        router.drops.add(DropReason::WriteFailed);
        router.log.log(DropReason::WriteFailed, None, None);
        tracing::debug!(error = %e, "TUN write failed");
    }
}

fn timers(udp: &Udp, router: &Router) {
    let mut buf = vec![0u8; 2048];
    let mut last_reset = Instant::now();
    let mut send = |dst: SocketAddr, bytes: &[u8]| {
        if let Err(e) = udp.send_to(dst, bytes) {
            tracing::debug!(error = %e, endpoint = %dst, "UDP send of a timer message failed");
        }
    };
    router.initiate_all(&mut buf, &mut send);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        router.tick(&mut buf, &mut send);
        if last_reset.elapsed() >= Duration::from_secs(1) {
            router.reset_rate_limiter();
            last_reset = Instant::now();
        }
    }
}
