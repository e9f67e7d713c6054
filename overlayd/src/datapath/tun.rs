//! The inside seam: what the data-plane workers need from a TUN device ([`Tun`]), its real
//! implementation on tun-rs's `SyncDevice`, and how the daemon opens one. The in-memory
//! fake is `datapath::fake::FakeTun`. Nothing here routes or encrypts.

use std::io;
use std::os::fd::AsRawFd;

use tun_rs::{GROTable, SyncDevice};

/// A TUN device as the workers use it (wireguard-go's `tun.Device`). Its fd (`AsRawFd`)
/// is what the workers' epoll set waits on: readable exactly when [`Tun::recv_batch`]
/// has something to return.
pub trait Tun: AsRawFd + Send + Sync {
    /// Makes reads return `WouldBlock` rather than wait (the workers wait in epoll).
    fn set_nonblocking(&self) -> io::Result<()>;

    /// Reads what one read of the device gives, without blocking: one packet, or with
    /// offload one TCP super-packet read into `original` and split into MTU-size packets.
    /// Packet `i` lands at the start of `packets[i]`, its length in `sizes[i]`; returns
    /// how many. `WouldBlock` when nothing is queued.
    fn recv_batch(
        &self,
        original: &mut [u8],
        packets: &mut [Vec<u8>],
        sizes: &mut [usize],
    ) -> io::Result<usize>;

    /// Writes `packets`, each starting `offset` bytes in (room for the virtio-net header),
    /// coalescing TCP segments through `gro` when the device has offload. Never waits.
    fn send_batch(
        &self,
        gro: &mut GROTable,
        packets: &mut [Vec<u8>],
        offset: usize,
    ) -> io::Result<()>;
}

impl Tun for SyncDevice {
    fn set_nonblocking(&self) -> io::Result<()> {
        SyncDevice::set_nonblocking(self, true)
    }

    fn recv_batch(
        &self,
        original: &mut [u8],
        packets: &mut [Vec<u8>],
        sizes: &mut [usize],
    ) -> io::Result<usize> {
        self.recv_multiple(original, packets, sizes, 0)
    }

    fn send_batch(
        &self,
        gro: &mut GROTable,
        packets: &mut [Vec<u8>],
        offset: usize,
    ) -> io::Result<()> {
        self.send_multiple(gro, packets, offset).map(|_| ())
    }
}

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
