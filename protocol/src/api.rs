//! Types of `overlayd`'s local API (HTTP/1.1 with JSON bodies on a root-only unix
//! socket), shared by the daemon and `overlayctl`.
//!
//! Routes: `GET /v1/status` → [`Status`], `GET /v1/peers` → `Vec<`[`PeerStatus`]`>`.
//! Errors come back as a non-2xx status with an [`ApiError`] body.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use keys::PublicKey;
use serde::{Deserialize, Serialize};

use crate::drops::DropReason;

/// Path of the status route.
pub const STATUS_PATH: &str = "/v1/status";
/// Path of the peers route.
pub const PEERS_PATH: &str = "/v1/peers";
/// Default path of the API socket.
pub const DEFAULT_SOCKET: &str = "/run/overlayd/overlayd.sock";

/// This host's daemon: identity, interface and totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's version.
    pub version: String,
    /// This host's WireGuard public key.
    pub public_key: PublicKey,
    /// UDP port the tunnels listen on.
    pub listen_port: u16,
    /// Name of the TUN device.
    pub tun_name: String,
    /// MTU of the TUN device.
    pub mtu: u16,
    /// This host's overlay address, if it has one.
    pub address: Option<IpAddr>,
    /// This host's container subnets.
    pub subnets: Vec<IpNet>,
    /// Whether TUN offload (virtio-net header, TSO/GRO) is in use.
    pub tun_offload: bool,
    /// Whether UDP GSO is in use for sends.
    pub udp_gso: bool,
    /// Number of configured peers.
    pub peer_count: usize,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Packets dropped, by reason, over all peers and those with no peer.
    pub drops: BTreeMap<DropReason, u64>,
}

/// One peer as this host sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's WireGuard public key.
    pub public_key: PublicKey,
    /// Where its packets go now: configured, or learnt from its latest authenticated packet.
    pub endpoint: Option<SocketAddr>,
    /// Subnets routed to it, and accepted as inner source addresses from it.
    pub subnets: Vec<IpNet>,
    /// Seconds since the last completed handshake, if any.
    pub last_handshake_s: Option<f64>,
    /// Payload bytes received from it (decrypted).
    pub rx_bytes: u64,
    /// Payload bytes sent to it (before encryption).
    pub tx_bytes: u64,
    /// Persistent keepalive interval in seconds, if set.
    pub persistent_keepalive: Option<u16>,
    /// Packets from or to this peer dropped, by reason.
    pub drops: BTreeMap<DropReason, u64>,
}

/// The body of an error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// One sentence saying what went wrong and what to do.
    pub error: String,
}
