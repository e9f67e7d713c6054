//! The mirror's interface: a TAP device made for it. Each copy is written as an Ethernet
//! frame carrying the IP packet unchanged; the kernel *receives* what is written to a TAP,
//! so every packet tap on the interface (tcpdump, ngrep, Suricata, Zeek, a bridge that
//! an IDS container is on) sees it.
//!
//! Why a TAP and not a TUN: the copies must never be delivered to a local socket nor
//! routed anywhere, and whether a TUN's packets are depends on settings outside this
//! daemon (`ip_forward`, which a container host has on; `rp_filter`, which many
//! distributions set to loose mode, where a copy addressed to this host would reach its
//! sockets a second time). A frame whose destination MAC is not the interface's is marked
//! "for another host" (`PACKET_OTHERHOST`), and IPv4 and IPv6 drop such frames before
//! routing, whatever the sysctls say, after the packet taps have seen them: a switch's
//! mirror port, in software. The interface gets no address; IPv6 is turned off on it so
//! that the kernel sends nothing into it (router solicitations, MLD) that nobody reads.
//!
//! The MAC addresses say which way a packet went: `02:6f:76:6c:00:01` is the tunnel
//! (the peers), `02:6f:76:6c:00:02` this host (its containers); an inbound copy goes
//! from `:01` to `:02`, an outbound one from `:02` to `:01` (`tcpdump -e` shows them). The
//! interface's own MAC is `02:6f:76:6c:00:00`, neither of them.

use std::io;

use protocol::policy::enforce::Direction;
use tun_rs::{DeviceBuilder, Layer, SyncDevice};

use super::Sink;

/// The interface's own MAC address (locally administered; "ovl" in the middle).
pub const INTERFACE_MAC: [u8; 6] = [0x02, 0x6f, 0x76, 0x6c, 0x00, 0x00];
/// The MAC address of the tunnel's side (the peers).
pub const TUNNEL_MAC: [u8; 6] = [0x02, 0x6f, 0x76, 0x6c, 0x00, 0x01];
/// The MAC address of this host's side (its containers).
pub const HOST_MAC: [u8; 6] = [0x02, 0x6f, 0x76, 0x6c, 0x00, 0x02];

/// Ethernet header length.
const ETHERNET_HEADER_LEN: usize = 14;

/// The Ethernet header of a copy of `packet` that went `direction`; `None` when it is not
/// an IP packet (the router lets no other through).
pub fn ethernet_header(direction: Direction, packet: &[u8]) -> Option<[u8; ETHERNET_HEADER_LEN]> {
    let ethertype: u16 = match packet.first()? >> 4 {
        4 => 0x0800,
        6 => 0x86dd,
        _ => return None,
    };
    let (dst, src) = match direction {
        Direction::Inbound => (HOST_MAC, TUNNEL_MAC),
        Direction::Outbound => (TUNNEL_MAC, HOST_MAC),
    };
    let mut header = [0u8; ETHERNET_HEADER_LEN];
    header[..6].copy_from_slice(&dst);
    header[6..12].copy_from_slice(&src);
    header[12..].copy_from_slice(&ethertype.to_be_bytes());
    Some(header)
}

/// The mirror's TAP device; the interface disappears when it is dropped.
pub struct MirrorTap {
    device: SyncDevice,
    /// One frame, reused.
    frame: Vec<u8>,
    /// The interface's name, as the kernel knows it (for its index).
    name: std::ffi::CString,
}

impl MirrorTap {
    /// Makes TAP device `name` with MTU `mtu`, no address and IPv6 off, and brings it up.
    pub fn open(name: &str, mtu: u16) -> io::Result<MirrorTap> {
        let device = DeviceBuilder::new()
            .name(name)
            .layer(Layer::L2)
            .mac_addr(INTERFACE_MAC)
            .enable(false)
            .build_sync()?;
        // Before it is up: no IPv6 link-local address, no solicitations into it.
        let ipv6 = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        match std::fs::write(&ipv6, "1") {
            Ok(()) => {}
            // A kernel without IPv6 has no such file: nothing to turn off.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, interface = name, "cannot turn IPv6 off on the mirror interface; the kernel may send it router solicitations");
            }
        }
        device.set_mtu(mtu)?;
        device.enabled(true)?;
        Ok(MirrorTap {
            device,
            frame: Vec::with_capacity(ETHERNET_HEADER_LEN + usize::from(mtu) + 64),
            name: std::ffi::CString::new(name)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        })
    }
}

impl Sink for MirrorTap {
    fn write_packet(&mut self, direction: Direction, packet: &[u8]) -> io::Result<()> {
        let Some(header) = ethernet_header(direction, packet) else {
            return Err(io::Error::from(io::ErrorKind::InvalidData));
        };
        self.frame.clear();
        self.frame.extend_from_slice(&header);
        self.frame.extend_from_slice(packet);
        self.device.send(&self.frame).map(|_| ())
    }

    fn has_reader(&self) -> Option<bool> {
        // SAFETY: a NUL-terminated name that lives across the call.
        let index = unsafe { libc::if_nametoindex(self.name.as_ptr()) };
        if index == 0 {
            return None;
        }
        let table = std::fs::read_to_string("/proc/net/packet").ok()?;
        Some(packet_socket_on(&table, index))
    }
}

/// Whether `/proc/net/packet` (this network namespace's packet sockets: tcpdump, ngrep,
/// an IDS) lists one bound to interface `index` or to every interface (0, `tcpdump -i
/// any`). Its columns: `sk RefCnt Type Proto Iface R Rmem User Inode`.
pub fn packet_socket_on(table: &str, index: u32) -> bool {
    table.lines().skip(1).any(|line| {
        line.split_whitespace()
            .nth(4)
            .and_then(|iface| iface.parse::<u32>().ok())
            .is_some_and(|iface| iface == index || iface == 0)
    })
}
