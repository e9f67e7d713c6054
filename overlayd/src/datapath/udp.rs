//! The underlay UDP socket with batched system calls: `recvmmsg` with UDP GRO (one
//! receive may carry many coalesced datagrams of one size), `sendmsg` with UDP GSO (one
//! send carries up to 64 equal-size datagrams, one iovec each, no copy), `sendmmsg` when
//! GSO is off, and socket buffers of 16 MiB (`SO_*BUFFORCE` works inside a namespace,
//! where `rmem_max` cannot be raised).
//!
//! Each offload is probed at bind time and turned off, for good, the first time the
//! kernel refuses it; `offload = false` in the config turns them off from the start.
//! IPv4 underlay only for now.
//!
//! [`Bind`] is the outside seam: what the workers and the router need from the socket,
//! with this socket as its real implementation and `datapath::fake::FakeUdp` as the
//! in-memory one.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
const SO_SNDBUFFORCE: libc::c_int = 32;
const SO_RCVBUFFORCE: libc::c_int = 33;

/// Socket buffer size asked for, each way.
pub const SOCKET_BUFFER_LEN: usize = 16 << 20;
/// Most datagrams in one GSO send (the kernel's UDP_MAX_SEGMENTS is 64 on older kernels).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes in one GSO send.
pub const MAX_GSO_BYTES: usize = 65_000;
/// Size of each receive buffer: room for a full GRO batch.
pub const RECV_BUFFER_LEN: usize = 65_536;

/// The underlay socket.
pub struct Udp {
    sock: UdpSocket,
    gso: AtomicBool,
    gro: bool,
}

/// Sets `buffer`-byte buffers each way on `fd`.
fn set_buffers(fd: std::os::fd::RawFd, buffer: usize) {
    let len = libc::c_int::try_from(buffer).unwrap_or(libc::c_int::MAX);
    // FORCE needs CAP_NET_ADMIN; without it the plain call is capped by rmem_max.
    if setsockopt_int(fd, libc::SOL_SOCKET, SO_RCVBUFFORCE, len).is_err() {
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, len);
    }
    if setsockopt_int(fd, libc::SOL_SOCKET, SO_SNDBUFFORCE, len).is_err() {
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, len);
    }
}

fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a live c_int and its length is given exactly.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl AsRawFd for Udp {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }
}

impl Udp {
    /// Binds `0.0.0.0:port` with all the levers on: 16 MiB buffers, GRO, GSO if the
    /// kernel has them.
    pub fn bind(port: u16, offload: bool) -> io::Result<Udp> {
        Self::bind_with(port, offload, offload, SOCKET_BUFFER_LEN)
    }

    /// Binds `0.0.0.0:port`, sets `buffer`-byte socket buffers (0: the kernel's default)
    /// and turns on GRO and GSO where asked and the kernel has them.
    pub fn bind_with(port: u16, gso: bool, gro: bool, buffer: usize) -> io::Result<Udp> {
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
        let fd = sock.as_raw_fd();
        if buffer > 0 {
            set_buffers(fd, buffer);
        }
        let gro = gro && setsockopt_int(fd, SOL_UDP, UDP_GRO, 1).is_ok();
        // Setting a zero segment size is accepted exactly when the kernel knows UDP_SEGMENT.
        let gso = gso && setsockopt_int(fd, SOL_UDP, UDP_SEGMENT, 0).is_ok();
        Ok(Udp {
            sock,
            gso: AtomicBool::new(gso),
            gro,
        })
    }

    /// Sets `buffer`-byte socket buffers each way on the running socket (a reload); 0 is
    /// taken as the kernel's default size (`net.core.rmem_default`/`wmem_default`).
    pub fn set_buffers(&self, buffer: usize) {
        let fd = self.sock.as_raw_fd();
        if buffer > 0 {
            set_buffers(fd, buffer);
        } else {
            for (option, default) in [
                (libc::SO_RCVBUF, "/proc/sys/net/core/rmem_default"),
                (libc::SO_SNDBUF, "/proc/sys/net/core/wmem_default"),
            ] {
                let len = std::fs::read_to_string(default)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(212_992);
                let _ = setsockopt_int(fd, libc::SOL_SOCKET, option, len / 2);
            }
        }
    }

    /// The receive buffer's size as the kernel reports it (twice what was asked).
    pub fn receive_buffer(&self) -> io::Result<usize> {
        let mut len: libc::c_int = 0;
        let mut size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `len` and `size` are valid for the call; the fd is this socket's.
        let rc = unsafe {
            libc::getsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut len as *mut libc::c_int).cast(),
                &mut size,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(len).unwrap_or(0))
    }

    /// Whether sends use GSO now.
    pub fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Whether receives use GRO.
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Sends one datagram.
    pub fn send_to(&self, dst: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        self.sock.send_to(bytes, dst).map(|_| ())
    }

    /// Sends `segments` (all of one size but the last, which may be shorter) to `dst`:
    /// one GSO send when possible, else one `sendmmsg`.
    pub fn send_segments(&self, dst: SocketAddr, segments: &[&[u8]]) -> io::Result<()> {
        match segments {
            [] => Ok(()),
            [one] => self.send_to(dst, one),
            _ if self.gso() => match self.send_gso(dst, segments) {
                Ok(()) => Ok(()),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                    ) =>
                {
                    tracing::warn!(error = %e, "UDP GSO send refused by the kernel; sending datagrams one by one from now on");
                    self.gso.store(false, Ordering::Relaxed);
                    self.send_many(dst, segments)
                }
                Err(e) => Err(e),
            },
            _ => self.send_many(dst, segments),
        }
    }

    fn send_gso(&self, dst: SocketAddr, segments: &[&[u8]]) -> io::Result<()> {
        let (mut name, name_len) = sockaddr_from(dst);
        let mut iovs: [libc::iovec; MAX_GSO_SEGMENTS] =
            // SAFETY: iovec is plain data; all-zero is a valid (empty) value.
            unsafe { zeroed() };
        let count = segments.len().min(MAX_GSO_SEGMENTS);
        for (iov, seg) in iovs.iter_mut().zip(&segments[..count]) {
            iov.iov_base = seg.as_ptr() as *mut libc::c_void;
            iov.iov_len = seg.len();
        }
        // cmsg space for one u16: CMSG_SPACE(2) is 24 on 64-bit Linux; 32 aligned bytes suffice.
        let mut control = [0u64; 4];
        // SAFETY: msghdr is plain data; all pointers set below outlive the sendmsg call.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = name_len;
        msg.msg_iov = iovs.as_mut_ptr();
        msg.msg_iovlen = count;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_* compute sizes and walk the control buffer we own, which is large
        // enough for one cmsghdr carrying a u16.
        unsafe {
            msg.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = SOL_UDP;
            (*cmsg).cmsg_type = UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(
                libc::CMSG_DATA(cmsg).cast::<u16>(),
                segments[0].len() as u16,
            );
        }
        // SAFETY: msg points at live buffers (above) for the duration of the call.
        let rc = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &msg, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if count < segments.len() {
            return self.send_segments(dst, &segments[count..]);
        }
        Ok(())
    }

    fn send_many(&self, dst: SocketAddr, segments: &[&[u8]]) -> io::Result<()> {
        let (mut name, name_len) = sockaddr_from(dst);
        let mut sent = 0;
        while sent < segments.len() {
            let chunk = &segments[sent..(sent + MAX_GSO_SEGMENTS).min(segments.len())];
            // SAFETY: plain data; filled below.
            let mut iovs: [libc::iovec; MAX_GSO_SEGMENTS] = unsafe { zeroed() };
            // SAFETY: plain data; filled below.
            let mut hdrs: [libc::mmsghdr; MAX_GSO_SEGMENTS] = unsafe { zeroed() };
            for (i, seg) in chunk.iter().enumerate() {
                iovs[i].iov_base = seg.as_ptr() as *mut libc::c_void;
                iovs[i].iov_len = seg.len();
                hdrs[i].msg_hdr.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
                hdrs[i].msg_hdr.msg_namelen = name_len;
                hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
                hdrs[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: every header points at live buffers for the duration of the call.
            let rc = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    chunk.len() as u32,
                    0,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            sent += (rc as usize).max(1);
        }
        Ok(())
    }

    /// Receives up to `batch.capacity()` datagrams (each possibly a GRO batch), blocking
    /// until at least one arrives. Returns how many entries of `batch` are filled.
    pub fn recv(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        self.recv_with(batch, libc::MSG_WAITFORONE)
    }

    /// As [`Udp::recv`], but never blocks: `WouldBlock` when nothing is queued.
    pub fn try_recv(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        self.recv_with(batch, libc::MSG_DONTWAIT)
    }

    fn recv_with(&self, batch: &mut RecvBatch, flags: libc::c_int) -> io::Result<usize> {
        let n = batch.bufs.len();
        for i in 0..n {
            batch.iovs[i].iov_base = batch.bufs[i].as_mut_ptr().cast();
            batch.iovs[i].iov_len = batch.bufs[i].len();
            let hdr = &mut batch.hdrs[i].msg_hdr;
            hdr.msg_name = (&mut batch.names[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut batch.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = batch.controls[i].as_mut_ptr().cast();
            hdr.msg_controllen = size_of::<[u64; 8]>();
            hdr.msg_flags = 0;
            batch.hdrs[i].msg_len = 0;
        }
        let rc = loop {
            // SAFETY: the headers point into buffers owned by `batch`, which outlives the call.
            let rc = unsafe {
                libc::recvmmsg(
                    self.sock.as_raw_fd(),
                    batch.hdrs.as_mut_ptr(),
                    n as u32,
                    flags,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        for i in 0..rc {
            let len = batch.hdrs[i].msg_len as usize;
            let src = sockaddr_to(&batch.names[i]);
            let mut segment = len;
            let hdr = &batch.hdrs[i].msg_hdr;
            // SAFETY: the kernel filled msg_control/msg_controllen for this header; the
            // CMSG_* macros stay within it.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                        let size =
                            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                        if size > 0 {
                            segment = size as usize;
                        }
                    }
                    cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
                }
            }
            batch.meta[i] = RecvMeta {
                len,
                src,
                segment_len: segment.max(1),
            };
        }
        Ok(rc)
    }
}

/// The underlay socket as the workers and the router use it (wireguard-go's `conn.Bind`).
/// Its fd (`AsRawFd`) is what the workers' epoll set waits on: readable exactly when
/// [`Bind::try_recv`] has something to return.
pub trait Bind: AsRawFd + Send + Sync {
    /// Whether receives coalesce datagrams (GRO): fewer, larger entries per batch.
    fn gro(&self) -> bool;

    /// Receives up to `batch.capacity()` entries without blocking; returns how many are
    /// filled. `WouldBlock` when nothing is queued.
    fn try_recv(&self, batch: &mut RecvBatch) -> io::Result<usize>;

    /// Sends `segments` (all of one size but the last, which may be shorter) to `dst`.
    fn send_segments(&self, dst: SocketAddr, segments: &[&[u8]]) -> io::Result<()>;

    /// Sends one datagram.
    fn send_to(&self, dst: SocketAddr, bytes: &[u8]) -> io::Result<()>;

    /// Sends one message the router hands out outside a batch: a handshake message, a
    /// cookie reply, a keepalive, a packet that waited for a handshake. A failure is only
    /// logged: WireGuard's timers resend what matters.
    fn send_message(&self, dst: SocketAddr, bytes: &[u8]) {
        if let Err(e) = self.send_to(dst, bytes) {
            tracing::debug!(error = %e, endpoint = %dst, "UDP send of a WireGuard message failed");
        }
    }
}

impl Bind for Udp {
    fn gro(&self) -> bool {
        Udp::gro(self)
    }

    fn try_recv(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        Udp::try_recv(self, batch)
    }

    fn send_segments(&self, dst: SocketAddr, segments: &[&[u8]]) -> io::Result<()> {
        Udp::send_segments(self, dst, segments)
    }

    fn send_to(&self, dst: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        Udp::send_to(self, dst, bytes)
    }
}

/// One received entry: `len` bytes from `src`, made of datagrams of `segment_len` bytes
/// (the last may be shorter).
#[derive(Debug, Clone, Copy)]
pub struct RecvMeta {
    /// Bytes in the buffer.
    pub len: usize,
    /// Sender.
    pub src: Option<SocketAddr>,
    /// Size of each coalesced datagram.
    pub segment_len: usize,
}

/// Buffers and headers for [`Udp::recv`]. The headers hold raw pointers into the batch's
/// own heap buffers, rewritten before every receive.
pub struct RecvBatch {
    bufs: Vec<Box<[u8]>>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; 8]>,
    hdrs: Vec<libc::mmsghdr>,
    meta: Vec<RecvMeta>,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` point only into heap buffers owned by
// the same `RecvBatch` (which do not move when it moves) and are rewritten at the start of
// every receive; nothing else holds them. Moving the batch to another thread is sound;
// sharing it is not offered (no `Sync`).
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Room for `count` receive buffers of [`RECV_BUFFER_LEN`] bytes.
    pub fn new(count: usize) -> RecvBatch {
        RecvBatch {
            bufs: (0..count)
                .map(|_| vec![0u8; RECV_BUFFER_LEN].into_boxed_slice())
                .collect(),
            // SAFETY: plain C structs; all-zero is valid and every field used is set in recv.
            iovs: (0..count).map(|_| unsafe { zeroed() }).collect(),
            // SAFETY: as above.
            names: (0..count).map(|_| unsafe { zeroed() }).collect(),
            controls: vec![[0u64; 8]; count],
            // SAFETY: as above.
            hdrs: (0..count).map(|_| unsafe { zeroed() }).collect(),
            meta: vec![
                RecvMeta {
                    len: 0,
                    src: None,
                    segment_len: 1
                };
                count
            ],
        }
    }

    /// How many entries one receive can fill.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// Fills entry `i` as a receive of one `datagram` from `src` would (the in-memory
    /// fake socket's receive); a datagram longer than a buffer is cut, as the kernel does.
    #[cfg(any(test, feature = "test-util"))]
    pub(super) fn put(&mut self, i: usize, src: SocketAddr, datagram: &[u8]) {
        let len = datagram.len().min(RECV_BUFFER_LEN);
        self.bufs[i][..len].copy_from_slice(&datagram[..len]);
        self.meta[i] = RecvMeta {
            len,
            src: Some(src),
            segment_len: len.max(1),
        };
    }

    /// Entry `i` of the last receive: its metadata and the datagrams in it.
    pub fn datagrams(&self, i: usize) -> (Option<SocketAddr>, std::slice::Chunks<'_, u8>) {
        let m = self.meta[i];
        (m.src, self.bufs[i][..m.len].chunks(m.segment_len))
    }
}

fn sockaddr_from(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data large enough for either family.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (storage, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            (storage, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

fn sockaddr_to(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(offload: bool) -> (Udp, Udp) {
        let a = Udp::bind(0, offload).unwrap();
        let b = Udp::bind(0, offload).unwrap();
        (a, b)
    }

    fn loopback(u: &Udp) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, u.local_addr().unwrap().port()))
    }

    fn roundtrip(offload: bool) {
        let (a, b) = pair(offload);
        let dst = loopback(&b);
        let segs: Vec<Vec<u8>> = (0..10u8)
            .map(|i| vec![i; if i == 9 { 100 } else { 1200 }])
            .collect();
        let refs: Vec<&[u8]> = segs.iter().map(|s| s.as_slice()).collect();
        a.send_segments(dst, &refs).unwrap();
        let mut batch = RecvBatch::new(16);
        let mut got: Vec<Vec<u8>> = Vec::new();
        while got.len() < 10 {
            let n = b.recv(&mut batch).unwrap();
            for i in 0..n {
                let (src, dgrams) = batch.datagrams(i);
                assert_eq!(src, Some(loopback(&a)));
                got.extend(dgrams.map(<[u8]>::to_vec));
            }
        }
        assert_eq!(got, segs);
    }

    #[test]
    fn batched_send_and_receive_with_offload() {
        roundtrip(true);
    }

    #[test]
    fn batched_send_and_receive_without_offload() {
        roundtrip(false);
    }

    #[test]
    fn sockaddr_conversion_round_trips() {
        for a in ["198.18.0.1:51820", "[fd00::1]:443"] {
            let addr: SocketAddr = a.parse().unwrap();
            let (s, _) = sockaddr_from(addr);
            assert_eq!(sockaddr_to(&s), Some(addr));
        }
    }

    #[test]
    fn socket_buffers_change_on_the_running_socket() {
        let udp = Udp::bind_with(0, false, false, 1 << 20).unwrap();
        // SAFETY: geteuid(2) has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            // The kernel reports twice what was set (its bookkeeping share).
            assert_eq!(udp.receive_buffer().unwrap(), 2 << 20);
        }
        udp.set_buffers(256 << 10);
        if root {
            assert_eq!(udp.receive_buffer().unwrap(), 512 << 10);
        }
        udp.set_buffers(0);
        let default: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_default")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let now = udp.receive_buffer().unwrap();
        assert!(
            now.abs_diff(default) <= 2,
            "0 gives the kernel's default {default}, not {now}"
        );
    }
}
