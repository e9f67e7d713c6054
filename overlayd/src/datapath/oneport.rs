//! One UDP port for the tunnels and the control plane: the data path's socket also carries
//! QUIC, told apart per datagram, and quinn sees it through an `AsyncUdpSocket` of its own.
//!
//! Telling them apart needs one byte. Every QUIC packet sets the fixed bit (0x40) of its
//! first byte (RFC 9000, 17.2 and 17.3; greasing it, RFC 9287, happens only towards a peer
//! that advertised it, and no endpoint of this daemon does: see [`endpoint_config`]).
//! Every WireGuard message starts with its type, 1 to 4, and three zero bytes, so its first
//! byte never has that bit. So a datagram whose first byte has 0x40 goes to quinn, every
//! other one to the router (which drops and counts what is no WireGuard message either).
//! A third kind shares the port: WireGuard messages framed for a relay, whose first byte
//! is 0x10 or 0x11 followed by three zero bytes (`router::relay`), also without the bit;
//! the data path tells them from WireGuard's by that byte, after this check.
//!
//! Receiving stays the data path's: its workers `recvmmsg` (+GRO) in batches and look at
//! each datagram's first byte ([`is_quic`]) before the router does; QUIC's are copied into
//! a bounded [`QuicInbox`] (the control plane's traffic is small; when quinn falls
//! behind, the newest are dropped and counted, as a full socket buffer would) and quinn
//! takes them from [`SharedQuicSocket::poll_recv`]. Sending goes straight to the socket from
//! quinn's task ([`SharedQuicSocket::try_send`]): a UDP socket takes sends from several
//! threads at once. The data path's cost is one branch per datagram.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use super::udp::Bind;
use crate::util::lock;

/// QUIC's fixed bit, in the first byte of every packet.
const QUIC_FIXED_BIT: u8 = 0x40;
/// QUIC datagrams waiting for quinn at most; past it the newest are dropped.
pub const INBOX_LEN: usize = 4096;

/// Whether a datagram that came to the shared port is QUIC's (its first byte has the fixed
/// bit); every other one is the router's.
#[inline]
pub fn is_quic(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & QUIC_FIXED_BIT != 0)
}

/// The QUIC endpoint settings of every endpoint of this daemon: the fixed bit is never
/// greased, so that a peer never sends this host a QUIC packet that [`is_quic`] would hand
/// to the router (quinn greases it only towards peers that advertised they accept it).
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.grease_quic_bit(false);
    config
}

/// QUIC datagrams the data path took off the shared socket, waiting for quinn.
#[derive(Default)]
pub struct QuicInbox {
    /// Whether quinn reads it: until the control plane makes its endpoint (a host with
    /// only static peers never does), QUIC's datagrams are dropped, not kept.
    open: std::sync::atomic::AtomicBool,
    inner: Mutex<Inbox>,
    /// Datagrams dropped because quinn had [`INBOX_LEN`] waiting.
    dropped: AtomicU64,
}

#[derive(Default)]
struct Inbox {
    queue: VecDeque<(SocketAddr, Bytes)>,
    /// quinn's receive task, when it found the queue empty.
    waker: Option<Waker>,
}

impl QuicInbox {
    /// Queues a copy of `datagram` from `src` for quinn and wakes it; dropped (and counted)
    /// when [`INBOX_LEN`] are waiting.
    pub fn deliver(&self, src: SocketAddr, datagram: &[u8]) {
        if !self.open.load(Ordering::Relaxed) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let waker = {
            let mut inbox = lock(&self.inner);
            if inbox.queue.len() >= INBOX_LEN {
                drop(inbox);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            inbox
                .queue
                .push_back((src, Bytes::copy_from_slice(datagram)));
            inbox.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// From now on, keeps QUIC's datagrams for quinn (its endpoint is made).
    pub fn open(&self) {
        self.open.store(true, Ordering::Relaxed);
    }

    /// Datagrams dropped because quinn did not take them fast enough, or had no endpoint.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Fills `bufs` and `meta` with waiting datagrams (one per buffer), or registers `cx` to
    /// be woken by the next [`QuicInbox::deliver`].
    fn poll_take(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<usize> {
        let mut inbox = lock(&self.inner);
        if inbox.queue.is_empty() {
            // Stored under the queue's lock: a datagram delivered after this check finds it.
            inbox.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut filled = 0;
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()) {
            let Some((src, datagram)) = inbox.queue.pop_front() else {
                break;
            };
            // quinn's buffers hold a full UDP payload; a longer one is cut, as recv would.
            let len = datagram.len().min(buf.len());
            buf[..len].copy_from_slice(&datagram[..len]);
            *meta = RecvMeta {
                addr: src,
                len,
                stride: len,
                ecn: None,
                dst_ip: None,
            };
            filled += 1;
        }
        Poll::Ready(filled)
    }
}

/// The shared socket as quinn sees it: receives from the [`QuicInbox`] the data path fills,
/// sends on the data path's socket.
pub struct SharedQuicSocket<U> {
    udp: Arc<U>,
    inbox: Arc<QuicInbox>,
    local: SocketAddr,
}

impl<U: Bind> SharedQuicSocket<U> {
    /// quinn's view of `udp` (bound to `local`), receiving what the data path puts in
    /// `inbox`.
    pub fn new(udp: Arc<U>, inbox: Arc<QuicInbox>, local: SocketAddr) -> SharedQuicSocket<U> {
        SharedQuicSocket { udp, inbox, local }
    }

    /// quinn reads it from now on: QUIC's datagrams are kept for it.
    pub fn open(&self) {
        self.inbox.open();
    }
}

impl<U> fmt::Debug for SharedQuicSocket<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedQuicSocket")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// Sends never wait for readiness: the socket is a blocking one with 16 MiB of buffer (the
/// data path's sends block the same way), so a send only waits while that is full.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl<U: Bind + 'static> AsyncUdpSocket for SharedQuicSocket<U> {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    /// A failed send is a lost datagram, as quinn's own socket treats it: only
    /// `WouldBlock` goes back to quinn, since any other error would end the connection
    /// (a firewall's drop on output is `EPERM`; an unreachable network, `ENETUNREACH`:
    /// both pass when the path comes back, and QUIC's loss recovery resends).
    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let sent = match transmit.segment_size {
            Some(size) if size > 0 && size < transmit.contents.len() => {
                let segments: Vec<&[u8]> = transmit.contents.chunks(size).collect();
                self.udp.send_segments(transmit.destination, &segments)
            }
            _ => self.udp.send_to(transmit.destination, transmit.contents),
        };
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            Err(e) => {
                tracing::debug!(error = %e, endpoint = %transmit.destination, "QUIC send failed; the datagram is lost");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inbox.poll_take(cx, bufs, meta).map(Ok)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    #[test]
    fn wireguard_and_quic_are_told_apart_by_the_first_byte() {
        // WireGuard: initiation, response, cookie reply, data.
        for t in 1u8..=4 {
            assert!(!is_quic(&[t, 0, 0, 0, 9, 9]));
        }
        // QUIC long headers (Initial, Handshake) and short headers.
        for b in [0xc0u8, 0xc3, 0xe1, 0x40, 0x5f, 0x7f] {
            assert!(is_quic(&[b, 1, 2, 3]));
        }
        assert!(!is_quic(&[]));
        assert!(
            !is_quic(&[0x80]),
            "a long header without the fixed bit is no QUIC"
        );
    }

    struct Count(AtomicU64);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_inbox_wakes_quinn_hands_datagrams_in_order_and_drops_past_its_bound() {
        let inbox = QuicInbox::default();
        // Nothing is kept before quinn reads it.
        inbox.deliver("198.18.0.11:51820".parse().unwrap(), &[0xc0]);
        assert_eq!(inbox.dropped(), 1);
        inbox.open();
        let woken = Arc::new(Count(AtomicU64::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut storage = [[0u8; 32]; 3];
        let mut meta = [RecvMeta::default(); 3];
        let take = |storage: &mut [[u8; 32]; 3], meta: &mut [RecvMeta; 3], cx: &mut Context| {
            let mut bufs: Vec<IoSliceMut> =
                storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            inbox.poll_take(cx, &mut bufs, meta)
        };
        assert_eq!(take(&mut storage, &mut meta, &mut cx), Poll::Pending);
        let a: SocketAddr = "198.18.0.11:51820".parse().unwrap();
        let b: SocketAddr = "198.18.0.12:40000".parse().unwrap();
        inbox.deliver(a, &[0xc0, 1]);
        assert_eq!(woken.0.load(Ordering::Relaxed), 1, "quinn is woken");
        inbox.deliver(b, &[0x41; 40]);
        assert_eq!(take(&mut storage, &mut meta, &mut cx), Poll::Ready(2));
        assert_eq!((meta[0].addr, meta[0].len), (a, 2));
        assert_eq!(&storage[0][..2], &[0xc0, 1]);
        assert_eq!((meta[1].addr, meta[1].len, meta[1].stride), (b, 32, 32));
        assert_eq!(take(&mut storage, &mut meta, &mut cx), Poll::Pending);

        for _ in 0..INBOX_LEN + 5 {
            inbox.deliver(a, &[0x40]);
        }
        assert_eq!(inbox.dropped(), 1 + 5);
        let mut taken = 0;
        while let Poll::Ready(n) = take(&mut storage, &mut meta, &mut cx) {
            taken += n;
        }
        assert_eq!(taken, INBOX_LEN);
    }

    #[test]
    fn no_endpoint_of_this_daemon_greases_the_fixed_bit() {
        let text = format!("{:?}", endpoint_config());
        assert!(text.contains("grease_quic_bit: false"), "{text}");
    }
}
