//! In-memory stand-ins for the TUN and the UDP socket, as wireguard-go's `tun/tuntest`
//! and `conn/bindtest`: [`FakeTun`], and [`FakeUdp`] sockets on a [`FakeNet`]. Each has a
//! real fd for readiness (an eventfd that is readable exactly while it holds something
//! to read), so the real epoll set and the real workers run on them unchanged, without
//! root. A [`Fault`] makes the next call of one kind fail or panic, to reach the error
//! paths. Test code only: built for this crate's tests and with the `test-util` feature.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use tun_rs::GROTable;

use super::tun::Tun;
use super::udp::{Bind, RecvBatch};
use crate::util::lock;

/// What the next call of one kind does instead of its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails with this `errno` (`libc::EIO`, `libc::EBADFD`, ...).
    Os(i32),
    /// Panics, as a bug on the worker's path would.
    Panic,
}

/// Faults waiting for one kind of call, used up in order.
#[derive(Default)]
struct Faults(Mutex<VecDeque<Fault>>);

impl Faults {
    fn push(&self, fault: Fault) {
        lock(&self.0).push_back(fault);
    }

    /// The next fault as the call's outcome, or `Ok` when none waits.
    fn next(&self) -> io::Result<()> {
        let fault = lock(&self.0).pop_front();
        match fault {
            None => Ok(()),
            Some(Fault::Os(errno)) => Err(io::Error::from_raw_os_error(errno)),
            Some(Fault::Panic) => panic!("a fault the test injected"),
        }
    }
}

/// A FIFO whose fd is readable exactly while it holds something: the eventfd's count is
/// set to 1 when the queue stops being empty and read back to 0 when it becomes empty,
/// both under the queue's lock.
struct Queue<T> {
    items: Mutex<VecDeque<T>>,
    ready: OwnedFd,
}

impl<T> Queue<T> {
    fn new() -> Queue<T> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
        Queue {
            items: Mutex::new(VecDeque::new()),
            // SAFETY: a new fd that nothing else owns.
            ready: unsafe { OwnedFd::from_raw_fd(fd) },
        }
    }

    fn push(&self, item: T) {
        let mut items = lock(&self.items);
        if items.is_empty() {
            let one = 1u64;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd.
            let n = unsafe { libc::write(self.ready.as_raw_fd(), (&one as *const u64).cast(), 8) };
            assert_eq!(n, 8, "eventfd write: {}", io::Error::last_os_error());
        }
        items.push_back(item);
    }

    /// Runs `take` on the queue; if it emptied the queue, the fd stops being readable.
    fn take<R>(&self, take: impl FnOnce(&mut VecDeque<T>) -> R) -> R {
        let mut items = lock(&self.items);
        let had = !items.is_empty();
        let result = take(&mut items);
        if had && items.is_empty() {
            let mut count = 0u64;
            // SAFETY: reads 8 bytes into a live u64 from our eventfd.
            let n =
                unsafe { libc::read(self.ready.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
            assert_eq!(n, 8, "eventfd read: {}", io::Error::last_os_error());
        }
        result
    }

    fn len(&self) -> usize {
        lock(&self.items).len()
    }
}

/// What a fake handed out, in order, with a way to wait for it.
struct Record<T> {
    items: Mutex<Vec<T>>,
    grew: Condvar,
}

impl<T: Clone> Record<T> {
    fn new() -> Record<T> {
        Record {
            items: Mutex::new(Vec::new()),
            grew: Condvar::new(),
        }
    }

    fn push(&self, item: T) {
        lock(&self.items).push(item);
        self.grew.notify_all();
    }

    fn all(&self) -> Vec<T> {
        lock(&self.items).clone()
    }

    /// Everything so far, once there are at least `n` or `timeout` has passed.
    fn wait(&self, n: usize, timeout: Duration) -> Vec<T> {
        let deadline = Instant::now() + timeout;
        let mut items = lock(&self.items);
        while items.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            items = match self.grew.wait_timeout(items, left) {
                Ok((items, _)) => items,
                Err(e) => e.into_inner().0,
            };
        }
        items.clone()
    }
}

/// A TUN device in memory: the test plays the host's network stack, pushing packets in
/// ([`FakeTun::push`]) and reading what the workers wrote ([`FakeTun::written`]).
pub struct FakeTun {
    inbound: Queue<Vec<u8>>,
    written: Record<Vec<u8>>,
    read_faults: Faults,
    write_faults: Faults,
}

impl Default for FakeTun {
    fn default() -> Self {
        FakeTun::new()
    }
}

impl FakeTun {
    /// An empty device.
    pub fn new() -> FakeTun {
        FakeTun {
            inbound: Queue::new(),
            written: Record::new(),
            read_faults: Faults::default(),
            write_faults: Faults::default(),
        }
    }

    /// A packet the host routes into the TUN: the workers read it next.
    pub fn push(&self, packet: &[u8]) {
        self.inbound.push(packet.to_vec());
    }

    /// Packets pushed and not read yet.
    pub fn queued(&self) -> usize {
        self.inbound.len()
    }

    /// Every packet the workers wrote, in order, without the virtio-net header room.
    pub fn written(&self) -> Vec<Vec<u8>> {
        self.written.all()
    }

    /// As [`FakeTun::written`], once at least `n` were written or `timeout` has passed.
    pub fn wait_written(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        self.written.wait(n, timeout)
    }

    /// The next read does `fault` instead (and leaves the queue as it is).
    pub fn fail_next_read(&self, fault: Fault) {
        self.read_faults.push(fault);
    }

    /// The next batch write does `fault` instead (and writes nothing).
    pub fn fail_next_write(&self, fault: Fault) {
        self.write_faults.push(fault);
    }
}

impl AsRawFd for FakeTun {
    fn as_raw_fd(&self) -> RawFd {
        self.inbound.ready.as_raw_fd()
    }
}

impl Tun for FakeTun {
    fn set_nonblocking(&self) -> io::Result<()> {
        Ok(())
    }

    /// Every queued packet that fits the batch, as one read of a TSO super-packet gives
    /// many; a packet longer than its buffer is cut.
    fn recv_batch(
        &self,
        _original: &mut [u8],
        packets: &mut [Vec<u8>],
        sizes: &mut [usize],
    ) -> io::Result<usize> {
        self.read_faults.next()?;
        let n = self.inbound.take(|queue| {
            let n = queue.len().min(packets.len());
            for (i, packet) in queue.drain(..n).enumerate() {
                let len = packet.len().min(packets[i].len());
                packets[i][..len].copy_from_slice(&packet[..len]);
                sizes[i] = len;
            }
            n
        });
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn send_batch(
        &self,
        _gro: &mut GROTable,
        packets: &mut [Vec<u8>],
        offset: usize,
    ) -> io::Result<()> {
        self.write_faults.next()?;
        for packet in packets {
            self.written.push(packet[offset..].to_vec());
        }
        Ok(())
    }
}

/// An underlay in memory: datagrams sent from one [`FakeUdp`] to the address of another
/// on the same net arrive in its receive queue, from the sender's address; datagrams to
/// any other address are lost (and recorded by the sender all the same).
#[derive(Default)]
pub struct FakeNet {
    sockets: Mutex<HashMap<SocketAddr, Weak<FakeUdp>>>,
}

impl FakeNet {
    /// An empty net.
    pub fn new() -> Arc<FakeNet> {
        Arc::default()
    }

    /// A socket at `addr` on this net.
    pub fn bind(self: &Arc<Self>, addr: SocketAddr) -> Arc<FakeUdp> {
        let socket = Arc::new(FakeUdp::with_net(addr, Some(self.clone())));
        lock(&self.sockets).insert(addr, Arc::downgrade(&socket));
        socket
    }

    fn socket(&self, addr: SocketAddr) -> Option<Arc<FakeUdp>> {
        lock(&self.sockets).get(&addr).and_then(Weak::upgrade)
    }
}

/// A UDP socket in memory, at `addr`: the test delivers datagrams to it
/// ([`FakeUdp::deliver`]) and reads what the workers sent ([`FakeUdp::sent`]). No GRO: a
/// receive entry holds one datagram.
pub struct FakeUdp {
    addr: SocketAddr,
    net: Option<Arc<FakeNet>>,
    inbox: Queue<(SocketAddr, Vec<u8>)>,
    sent: Record<(SocketAddr, Vec<u8>)>,
    recv_faults: Faults,
    send_faults: Faults,
}

impl FakeUdp {
    /// A socket at `addr` on no net: what it sends is only recorded.
    pub fn new(addr: SocketAddr) -> FakeUdp {
        FakeUdp::with_net(addr, None)
    }

    fn with_net(addr: SocketAddr, net: Option<Arc<FakeNet>>) -> FakeUdp {
        FakeUdp {
            addr,
            net,
            inbox: Queue::new(),
            sent: Record::new(),
            recv_faults: Faults::default(),
            send_faults: Faults::default(),
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A datagram from `src` arrives: the workers receive it next.
    pub fn deliver(&self, src: SocketAddr, datagram: &[u8]) {
        self.inbox.push((src, datagram.to_vec()));
    }

    /// Datagrams arrived and not received yet.
    pub fn queued(&self) -> usize {
        self.inbox.len()
    }

    /// Every datagram sent, in order, with its destination.
    pub fn sent(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.sent.all()
    }

    /// As [`FakeUdp::sent`], once at least `n` were sent or `timeout` has passed.
    pub fn wait_sent(&self, n: usize, timeout: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
        self.sent.wait(n, timeout)
    }

    /// The next receive does `fault` instead (and leaves the queue as it is).
    pub fn fail_next_recv(&self, fault: Fault) {
        self.recv_faults.push(fault);
    }

    /// The next send call (one datagram, or one run of segments) does `fault` instead.
    pub fn fail_next_send(&self, fault: Fault) {
        self.send_faults.push(fault);
    }

    fn transmit(&self, dst: SocketAddr, datagram: &[u8]) {
        self.sent.push((dst, datagram.to_vec()));
        if let Some(peer) = self.net.as_ref().and_then(|net| net.socket(dst)) {
            peer.deliver(self.addr, datagram);
        }
    }
}

impl AsRawFd for FakeUdp {
    fn as_raw_fd(&self) -> RawFd {
        self.inbox.ready.as_raw_fd()
    }
}

impl Bind for FakeUdp {
    fn gro(&self) -> bool {
        false
    }

    fn try_recv(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        self.recv_faults.next()?;
        let n = self.inbox.take(|queue| {
            let n = queue.len().min(batch.capacity());
            for (i, (src, datagram)) in queue.drain(..n).enumerate() {
                batch.put(i, src, &datagram);
            }
            n
        });
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn send_segments(&self, dst: SocketAddr, segments: &[&[u8]]) -> io::Result<()> {
        self.send_faults.next()?;
        for segment in segments {
            self.transmit(dst, segment);
        }
        Ok(())
    }

    fn send_to(&self, dst: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        self.send_faults.next()?;
        self.transmit(dst, bytes);
        Ok(())
    }
}
