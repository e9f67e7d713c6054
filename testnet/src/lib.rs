//! Many overlay hosts on one machine, built from network namespaces, each running the real
//! `overlayd`; plus the faults the end-to-end tests need (partitions, random loss, crashes,
//! roaming). The end-to-end tests (`testnet/tests/`) and the demo script (through the
//! `testnet` CLI) build hosts the same way, with this library.
//!
//! This crate owns namespaces, veths, bridges, nft rules and the processes it starts, and
//! nothing else: it shells out to `ip`, `nft` and `sysctl`, touches only namespaces named
//! with its own per-run prefix, and ends only processes it started, by PID. Test traffic stays
//! inside its namespaces: underlay 198.18.0.0/15, overlay 10.42.0.0/16.
//!
//! # Topology
//!
//! Every namespace name starts with the run's prefix `P` (the CLI's default is `tn`; the
//! library makes a unique one, `t` and 5 random hex digits, so parallel test runs never
//! collide). No interface of a run ever lives in the root namespace.
//!
//! ```text
//!                          namespace P-ul: the underlay switch
//!            +----------------------------------------------------+
//!            |                 br0 (bridge, no address)           |
//!            +------h1----------------h2----------------hN--------+
//!                   |                 |                 |           veth pairs
//!   namespace P-h1  |    P-h2         |    P-hN         |
//!  +----------------+-----+  +--------+-------+  +-----+---------+
//!  | ul0 198.18.0.11/15   |  | ul0 198.18.0.12 |  | ul0 198.18.0.(10+N)
//!  | overlayd: ovl0 (TUN),|  |  ...            |  |  ...
//!  |   UDP 51820          |  +-----------------+  +---------------+
//!  | ip_forward = 1       |
//!  | br0 10.42.1.1/24     |    containers on each host's br0, MTU 1420
//!  +---c1----------c2-----+
//!      |           |           veth pairs (eth0 in the container, cJ on the host)
//!  P-h1-c1      P-h1-c2
//!  eth0          eth0
//!  10.42.1.2/24  10.42.1.3/24  default via 10.42.1.1
//! ```
//!
//! Host `I` (1-based): namespace `P-hI`, underlay `198.18.0.(10+I)/15` on `ul0`, container
//! bridge `br0` with `10.42.I.1/24`. Container `J` of host `I`: namespace `P-hI-cJ`,
//! `10.42.I.(1+J)/24` on `eth0`. Hosts may have no containers. A host put behind a NAT
//! ([`Options::nat`]) has `198.19.I.2/24` on `ul0` instead, linked to its own router
//! namespace `P-nI`, which has `198.18.0.(10+I)` on the switch and masquerades it (see
//! [`nat`]).
//!
//! # Modes
//!
//! - [`Mode::Gossip`] (the default) builds the network as an operator would: every config
//!   has a state directory and a `[control]` table but no peers; once the daemons run,
//!   `overlayctl init` on h1 creates network [`NETWORK`] ([`NETWORK_CIDR`]), and each other
//!   host joins with a token made on h1 (`overlayctl token create`, `overlayctl join`).
//!   [`Testnet::up`] returns once every member lists every other as alive and containers
//!   ping across hosts.
//! - [`Mode::Static`] writes a `[[peer]]` table per other host into every config (the data
//!   plane on its own, no control plane).
//!
//! # State on disk
//!
//! `/run/testnet/P/` holds `state.json` (prefix, sizes, mode, addresses, the PIDs of the
//! daemons and of the process that owns the run) and per host `hI/private.key` (0600),
//! `hI/overlayd.toml`, `hI/overlayd.sock` (API), `hI/overlayd.log` and, in gossip mode,
//! `hI/state/` (the daemon's state directory, 0700). The CLI records its current run's
//! prefix in `/run/testnet/current`.
//!
//! # The kernel's neighbour table
//!
//! One IPv4 neighbour (ARP) table serves every namespace, and a full mesh of N hosts needs
//! N × (N − 1) of its entries (1,024 by default). [`Testnet::up`] raises the limits when a run
//! needs more and the last run relying on them puts them back (see `neigh.rs`).
//!
//! # Cleanup
//!
//! [`Testnet`] tears everything down on drop (also when [`Testnet::up`] fails halfway) unless
//! [`Testnet::persist`] was called, as the CLI does. [`Testnet::cleanup_leftovers`] removes
//! the namespaces and state of runs whose owner and daemons are gone (a crashed test).
//!
//! # Example
//!
//! ```no_run
//! let net = testnet::Testnet::up(testnet::Options::new(2, 2))?;
//! let out = net.exec("h1-c1", &["ping", "-c1", "-W1", "10.42.2.2"])?;
//! assert!(out.status.success());
//! net.down()?;
//! # Ok::<(), anyhow::Error>(())
//! ```

mod api;
mod cleanup;
pub mod cli;
mod cmd;
mod config;
mod daemon;
mod faults;
mod gossip;
mod names;
pub mod nat;
mod neigh;
mod proc;
pub mod scale;
mod state;
mod testnet;
mod topology;

pub use config::{ControlConfig, HostConfig, PeerConfig};
pub use faults::NFT_TABLE;
pub use names::{RUN_ROOT, validate_prefix};
pub use nat::{NatKind, NatSpec};
pub use protocol::api::{MemberState, PeerStatus, Status};
pub use testnet::{ConfigHook, Mode, Options, Testnet, UpTimings};

/// Largest number of hosts: host `I`'s underlay address is `198.18.0.(10+I)`.
pub const MAX_HOSTS: usize = 245;
/// Largest number of containers per host: container `J`'s address is `10.42.I.(1+J)`.
pub const MAX_CONTAINERS: usize = 253;
/// MTU of the container bridges and veths (and the default TUN MTU).
pub const MTU: u32 = 1420;
/// UDP port every `overlayd` listens on.
pub const LISTEN_PORT: u16 = 51820;
/// UDP port of every `overlayd`'s control plane (QUIC) in gossip mode.
pub const CONTROL_PORT: u16 = 51821;
/// Name of the network `overlayctl init` creates on h1 in gossip mode.
pub const NETWORK: &str = "testnet";
/// Address range of that network; host `I` gets `10.42.I.0/24` of it.
pub const NETWORK_CIDR: &str = "10.42.0.0/16";
