//! The epoll set the data-plane workers wait in: readiness of the TUN and the UDP socket,
//! one event per wake-up, each fd re-armed by hand (`EPOLLONESHOT`). It reads and writes
//! no packets.

use std::io;
use std::time::Duration;

/// The epoll set both workers wait in: the TUN and the UDP socket, each armed
/// `EPOLLONESHOT`, so an event goes to one worker and the fd stays quiet until that
/// worker has drained it and re-arms it.
///
/// Why one set for both directions rather than a thread per direction: a worker that has
/// just sent a packet and finds the answer already queued when it next looks (the peer,
/// woken on this CPU, ran and answered first) takes it without sleeping, where a thread
/// per direction always needs a wake-up, often of a halted vCPU (see docs/performance.md,
/// "Latency").
pub(super) struct Poller {
    epoll: std::os::fd::OwnedFd,
    fds: [std::os::fd::RawFd; 2],
}

impl Poller {
    /// The TUN's slot.
    pub(super) const TUN: usize = 0;
    /// The UDP socket's slot.
    pub(super) const UDP: usize = 1;

    /// Both fds, armed.
    pub(super) fn new(tun: std::os::fd::RawFd, udp: std::os::fd::RawFd) -> io::Result<Poller> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall; the fd is owned below.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `ep` is a new fd that nothing else owns.
        let epoll = unsafe { std::os::fd::OwnedFd::from_raw_fd(ep) };
        let poller = Poller {
            epoll,
            fds: [tun, udp],
        };
        poller.ctl(libc::EPOLL_CTL_ADD, Poller::TUN, libc::EPOLLIN as u32)?;
        poller.ctl(libc::EPOLL_CTL_ADD, Poller::UDP, libc::EPOLLIN as u32)?;
        Ok(poller)
    }

    fn ctl(&self, op: i32, which: usize, events: u32) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut ev = libc::epoll_event {
            events: events | libc::EPOLLONESHOT as u32,
            u64: which as u64,
        };
        // SAFETY: valid fds and a valid event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, self.fds[which], &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Blocks until one fd is readable; which one (`TUN` or `UDP`), or `None` after a
    /// signal.
    pub(super) fn wait(&self) -> Option<usize> {
        self.wait_for(-1)
    }

    /// As [`Poller::wait`], for at most `timeout_ms` (-1: no limit); `None` also when the
    /// time is up.
    pub(super) fn wait_for(&self, timeout_ms: libc::c_int) -> Option<usize> {
        use std::os::fd::AsRawFd;
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: one valid event buffer for the duration of the call.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), &mut ev, 1, timeout_ms) };
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // Not expected on a valid epoll fd; never spin on it.
            tracing::debug!(error = %io::Error::last_os_error(), "epoll_wait failed");
            std::thread::sleep(Duration::from_millis(1));
        }
        (n == 1).then_some(ev.u64 as usize)
    }

    /// Wakes one waiting worker when the fd is (or becomes) readable.
    pub(super) fn arm(&self, which: usize) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, which, libc::EPOLLIN as u32)
    }

    /// Keeps the workers asleep whatever the fd gets, until the next `arm`.
    pub(super) fn disarm(&self, which: usize) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, which, 0)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::Poller;
    use crate::datapath::fake::{FakeTun, FakeUdp};

    /// The fakes' fds stand in for the TUN and the socket: readable while they hold
    /// something.
    fn fakes() -> (FakeTun, FakeUdp, Poller) {
        let tun = FakeTun::new();
        let udp = FakeUdp::new("198.18.0.11:51820".parse().unwrap());
        let poller = Poller::new(tun.as_raw_fd(), udp.as_raw_fd()).unwrap();
        (tun, udp, poller)
    }

    #[test]
    fn one_event_per_arming() {
        let (tun, _udp, poller) = fakes();
        assert_eq!(poller.wait_for(0), None, "nothing readable yet");
        tun.push(b"packet");
        assert_eq!(poller.wait_for(0), Some(Poller::TUN));
        // Still readable, but the event went to one waiter: quiet until re-armed.
        assert_eq!(poller.wait_for(0), None);
        // Re-arming reports what is still there.
        poller.arm(Poller::TUN).unwrap();
        assert_eq!(poller.wait_for(0), Some(Poller::TUN));
    }

    #[test]
    fn a_disarmed_fd_stays_quiet_until_armed() {
        let (tun, udp, poller) = fakes();
        poller.disarm(Poller::TUN).unwrap();
        tun.push(b"packet");
        udp.deliver("198.18.0.12:51820".parse().unwrap(), b"datagram");
        assert_eq!(
            poller.wait_for(0),
            Some(Poller::UDP),
            "the socket still wakes"
        );
        assert_eq!(poller.wait_for(0), None, "the TUN does not");
        poller.arm(Poller::TUN).unwrap();
        assert_eq!(poller.wait_for(0), Some(Poller::TUN));
    }
}
