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
//! Each direction runs on its own OS thread with blocking calls and buffers allocated
//! once; the only locks taken are the per-peer tunnel mutexes.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
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

/// Creates the TUN device, with offload when asked and the kernel allows it.
pub fn open_tun(
    name: &str,
    mtu: u16,
    address: Option<std::net::IpAddr>,
    offload: bool,
) -> io::Result<SyncDevice> {
    let build = |offload: bool| {
        let mut b = tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .offload(offload);
        match address {
            Some(std::net::IpAddr::V4(a)) => b = b.ipv4(a, 32u8, None),
            Some(std::net::IpAddr::V6(a)) => b = b.ipv6(a, 128u8),
            None => {}
        }
        b.build_sync()
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
    {
        let (tun, udp, router) = (tun.clone(), udp.clone(), router.clone());
        std::thread::Builder::new()
            .name("outbound".into())
            .spawn(move || outbound(&tun, &udp, &router, mtu))?;
    }
    {
        let (udp, router) = (udp.clone(), router.clone());
        std::thread::Builder::new()
            .name("inbound".into())
            .spawn(move || inbound(&tun, &udp, &router))?;
    }
    std::thread::Builder::new()
        .name("timers".into())
        .spawn(move || timers(&udp, &router))?;
    Ok(())
}

fn outbound(tun: &SyncDevice, udp: &Udp, router: &Router, mtu: u16) {
    let packet_len = usize::from(mtu) + 64;
    let mut original = vec![0u8; TUN_READ_LEN];
    let mut packets = vec![vec![0u8; packet_len]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut sealed = vec![vec![0u8; (packet_len + 32).max(MIN_BUFFER_LEN)]; IDEAL_BATCH_SIZE];
    let mut sends: Vec<(SocketAddr, usize, usize)> = Vec::with_capacity(IDEAL_BATCH_SIZE);
    loop {
        let n = match tun.recv_multiple(&mut original, &mut packets, &mut sizes, 0) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if e.raw_os_error() == Some(libc::EBADFD) {
                    tracing::error!(error = %e, "TUN device is gone; outbound path stops");
                    return;
                }
                tracing::debug!(error = %e, "TUN read failed");
                continue;
            }
        };
        sends.clear();
        for i in 0..n {
            if let Outbound::Send { endpoint, len, .. } =
                router.encapsulate(&packets[i][..sizes[i]], &mut sealed[i])
            {
                sends.push((endpoint, i, len));
            }
        }
        send_runs(udp, router, &sends, &sealed);
    }
}

/// Sends encrypted datagrams, one GSO send per run of equal-size datagrams to one
/// endpoint (the last of a run may be shorter).
fn send_runs(udp: &Udp, router: &Router, sends: &[(SocketAddr, usize, usize)], sealed: &[Vec<u8>]) {
    let mut segments: Vec<&[u8]> = Vec::with_capacity(MAX_GSO_SEGMENTS);
    let mut start = 0;
    while start < sends.len() {
        let (endpoint, first, size) = sends[start];
        segments.clear();
        segments.push(&sealed[first][..size]);
        let mut bytes = size;
        let mut end = start + 1;
        while end < sends.len() && segments.len() < MAX_GSO_SEGMENTS {
            let (ep, idx, len) = sends[end];
            if ep != endpoint || len > size || bytes + len > MAX_GSO_BYTES {
                break;
            }
            segments.push(&sealed[idx][..len]);
            bytes += len;
            end += 1;
            if len < size {
                break; // a shorter datagram closes the run
            }
        }
        if let Err(e) = udp.send_segments(endpoint, &segments) {
            for _ in 0..segments.len() {
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

fn inbound(tun: &SyncDevice, udp: &Udp, router: &Router) {
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
        for i in 0..n {
            let (src, datagrams) = batch.datagrams(i);
            let Some(src) = src else { continue };
            for datagram in datagrams {
                if filled == bufs.len() {
                    write_tun(tun, router, &mut gro, &mut bufs[..filled]);
                    filled = 0;
                }
                let buf = &mut bufs[filled];
                buf.clear();
                buf.resize(TUN_OFFSET + datagram.len().max(MIN_BUFFER_LEN), 0);
                if let Inbound::ToTun { len } =
                    router.decapsulate(src, datagram, &mut buf[TUN_OFFSET..], &mut reply)
                {
                    buf.truncate(TUN_OFFSET + len);
                    filled += 1;
                }
            }
        }
        write_tun(tun, router, &mut gro, &mut bufs[..filled]);
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
