//! `overlayd`'s TOML configuration: parsed into typed values, validated as a whole before
//! the daemon touches the system, and printable with secrets redacted.
//!
//! Validation refuses, with one sentence naming the problem: unknown keys, malformed keys,
//! a private key file readable by group or others, subnets claimed by two peers or by a
//! peer and this host, a peer with this host's own key, and out-of-range values.
//!
//! - `raw`: the file as written (serde, `deny_unknown_fields`, defaults).
//! - `validate`: the checks that make a [`Config`] of it ([`Config::parse`]).
//! - `mirror`: the `[mirror]` table.
//! - `print`: the redacted TOML `overlayd --check-config` prints ([`Config::redacted`]).
//! - here: the validated types.

pub mod diff;
mod mirror;
pub mod peers_file;
mod print;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use keys::{PrivateKey, PublicKey};
use serde::Deserialize;

/// Default UDP port, WireGuard's.
pub const DEFAULT_LISTEN_PORT: u16 = 51820;
/// Default TUN MTU: 1500 minus the outer IPv6 (40), UDP (8) and WireGuard (32) headers.
pub const DEFAULT_MTU: u16 = 1420;
/// Default TUN name.
pub const DEFAULT_TUN_NAME: &str = "ovl0";
/// Default state directory (network membership, control key, CA key on admins).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/overlayd";
/// The control plane's (QUIC) own UDP port in the two-port layout of earlier versions;
/// by default it shares the tunnels' port.
pub const DEFAULT_CONTROL_PORT: u16 = 51821;
/// Default socket of the Docker plugin: dockerd finds plugin `overlayd` there.
pub const DEFAULT_DOCKER_SOCKET: &str = "/run/docker/plugins/overlayd.sock";
/// Default socket of dockerd's API (asked what leaked while the plugin was down).
pub const DEFAULT_DOCKERD_SOCKET: &str = "/var/run/docker.sock";

/// Errors in a configuration file. Each is one sentence naming the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, a wrong type, or a malformed value.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, flattened to one line.
        message: String,
    },
    /// The private key file is missing, unreadable, too open or not a key.
    #[error("config {path}: {source}")]
    Key {
        /// The config file.
        path: PathBuf,
        /// The key file problem.
        source: keys::KeyError,
    },
    /// A value that parses but cannot work.
    #[error("config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
}

/// The control plane's settings (`[control]`): where it listens, the address it tells
/// other members, and its timings. The timings default to memberlist's LAN profile, made
/// for clusters of up to a few hundred hosts on one site; the comments say what each
/// trades.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    /// UDP port of the control plane (QUIC): gossip, full syncs, joins. Unset or equal to
    /// the tunnels' `listen_port`: one port for both (see [`Config::control_port`]).
    pub listen_port: Option<u16>,
    /// The underlay address other members reach this host at; default: the source
    /// address the kernel picks towards the bootstrap host (on `init`: the first global
    /// address of this host).
    pub advertise: Option<IpAddr>,
    /// How often each member probes one other (SWIM). Shorter: a crash is suspected
    /// sooner; every member sends a ping and gets an ack per period.
    pub probe_period_ms: u64,
    /// How long a direct probe waits for its ack before asking others to probe
    /// indirectly. Must cover the underlay's round trip; below `probe_period_ms`.
    pub probe_timeout_ms: u64,
    /// How long a suspected member has to refute before it is declared down and its
    /// routes withdrawn. Most of the detection time of a crash, and the guard against
    /// false downs on a lossy underlay.
    pub suspect_timeout_ms: u64,
    /// How often updates in flight are gossiped (to 3 members). Shorter spreads joins,
    /// leaves and records faster, costing bytes only while there are updates.
    pub gossip_interval_ms: u64,
    /// How often a member swaps its whole directory with one random member over a QUIC
    /// stream (anti-entropy, memberlist's push/pull). Catches anything gossip missed.
    pub sync_interval_ms: u64,
    /// How often a member announces itself to a member it believes down, and to members
    /// of its directory it has not heard from. This is what heals a partition and brings
    /// a restarted member back; each round costs one small datagram.
    pub rejoin_interval_ms: u64,
    /// How many days the certificates this host issues as admin are valid. Members renew
    /// theirs by themselves once two thirds of it has passed (docs/pki.md).
    pub certificate_days: u32,
    /// The same in seconds, in place of `certificate_days` when set: for tests of renewal
    /// (at least 30 s, at most 3650 days).
    pub certificate_lifetime_s: Option<u64>,
    /// How long a CA rotation (`overlayctl ca rotate`, without `--transition`) trusts the
    /// old CA beside the new one while every member renews, in seconds (docs/ca-rotation.md).
    pub ca_transition_s: u64,
    /// Under a network policy: the most flows tracked per peer (connection tracking); past
    /// it, a new flow pushes out that peer's flow idle the longest.
    pub policy_flows: usize,
    /// Relaying for members that cannot reach each other (both behind NATs that pick a new
    /// port per destination): `true` names this host a relay, which members choose before
    /// any other; `false`: it never relays; unset: it relays when members see it at its own
    /// address (a public one). See docs/nat.md.
    pub relay: Option<bool>,
    /// Rotate this host's WireGuard key by itself when it is this many days old (as
    /// `overlayctl rotate-key` does; docs/key-rotation.md). Unset (the default): only
    /// when asked.
    pub key_rotation_days: Option<u32>,
    /// After a rotation, how long this host still answers handshakes to its old key while
    /// peers have not moved to the new one, in seconds (1 to 86,400); then the old key is
    /// forgotten and its handshakes are refused.
    pub key_rotation_grace_s: u64,
}

impl Control {
    /// How long the certificates this host issues as admin are valid, in seconds:
    /// `certificate_lifetime_s`, else `certificate_days`.
    pub fn certificate_lifetime(&self) -> u64 {
        self.certificate_lifetime_s
            .unwrap_or(u64::from(self.certificate_days) * 86_400)
    }
}

impl Default for Control {
    fn default() -> Self {
        Control {
            listen_port: None,
            advertise: None,
            probe_period_ms: 1000,
            probe_timeout_ms: 500,
            suspect_timeout_ms: 4000,
            gossip_interval_ms: 200,
            sync_interval_ms: 30_000,
            rejoin_interval_ms: 2000,
            certificate_days: 365,
            certificate_lifetime_s: None,
            ca_transition_s: 86_400,
            policy_flows: protocol::policy::flows::DEFAULT_CAPACITY,
            relay: None,
            key_rotation_days: None,
            key_rotation_grace_s: 60,
        }
    }
}

impl Control {
    /// The SWIM timings as `protocol::membership` takes them.
    pub fn membership(&self) -> protocol::membership::Config {
        use std::time::Duration;
        let mut m = protocol::membership::Config::lan(16);
        m.probe_period = Duration::from_millis(self.probe_period_ms);
        m.probe_rtt = Duration::from_millis(self.probe_timeout_ms);
        m.suspect_to_down_after = Duration::from_millis(self.suspect_timeout_ms);
        m.gossip_interval = Duration::from_millis(self.gossip_interval_ms);
        m.announce_to_down_interval = Some(Duration::from_millis(self.rejoin_interval_ms));
        // Members are told they were declared down, renew their identity and come back.
        m.notify_down_members = true;
        m
    }
}

/// The Docker network driver and IPAM plugin (`[docker]`), served by this daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Docker {
    /// Serve the plugin.
    pub enabled: bool,
    /// Its unix socket; dockerd takes the plugin's name from the file name (`overlayd`).
    pub socket: PathBuf,
    /// dockerd's API socket, asked which containers still hold addresses when the plugin
    /// starts (to free what leaked while it was down).
    pub dockerd_socket: PathBuf,
    /// MTU of the container bridges and veths; at most the TUN's `mtu` (its default).
    pub mtu: u16,
}

impl Docker {
    /// The plugin's name as dockerd sees it: the socket's file name without `.sock`.
    pub fn plugin_name(&self) -> String {
        self.socket
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Container names by DNS (`[dns]`, see `crate::dns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// Serve names; by default when the Docker plugin is enabled.
    pub enabled: bool,
    /// The address served on every host; `None`: the last but one of the network's main
    /// range (`10.42.255.254` in `10.42.0.0/16`).
    pub address: Option<std::net::Ipv4Addr>,
    /// The most names one member may publish; a larger set is refused whole.
    pub max_names: usize,
}

/// The Prometheus endpoint (`[metrics]`): `GET /metrics` over plain HTTP on `listen`.
/// Absent: no endpoint. The metrics name every peer, its key and its traffic, so the
/// address is this host's loopback or overlay address (reached only through the tunnels);
/// all interfaces (`0.0.0.0`, `::`), the underlay included, only when asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Address and port, e.g. `127.0.0.1:9586` or this host's overlay address.
    pub listen: SocketAddr,
    /// Allow an unspecified `listen` address (every interface). Off: such an address is
    /// refused.
    #[serde(default)]
    pub allow_all_interfaces: bool,
}

/// The flow log (`[flows]`): packets and bytes per flow, direction and verdict, summed
/// over windows of `window_s`, kept in memory for `overlayctl flows` and, with `file`,
/// appended to a file as JSON lines. Off by default: it costs a little on every packet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Flows {
    /// Log flows.
    pub enabled: bool,
    /// Where to append the records as JSON lines; `None`: only in memory (the API).
    pub file: Option<PathBuf>,
    /// Size past which the file is rotated (`file.1` .. `file.3` kept, as logrotate does).
    pub max_bytes: u64,
    /// Length of a window in seconds: how often records are written, and how late.
    pub window_s: u64,
}

/// Default size of the flow log file before rotation: 10 MiB.
pub const DEFAULT_FLOWS_MAX_BYTES: u64 = 10 << 20;

impl Default for Flows {
    fn default() -> Self {
        Flows {
            enabled: false,
            file: None,
            max_bytes: DEFAULT_FLOWS_MAX_BYTES,
            window_s: 5,
        }
    }
}

/// The data path's levers, one by one, for measuring what each is worth (`scripts/levers`).
/// The defaults are the fastest; `offload = false` turns the three offloads off at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tuning {
    /// TUN offload: virtio-net header, TSO/GRO super-packets, batched TUN reads and writes.
    pub tun_offload: bool,
    /// UDP GSO: one send carries many datagrams.
    pub udp_gso: bool,
    /// UDP GRO: one receive carries many datagrams.
    pub udp_gro: bool,
    /// UDP socket buffer size in bytes, each way; 0 keeps the kernel's default.
    pub socket_buffer: usize,
    /// Data-plane workers run `SCHED_BATCH` while the CPU is not contended (hand-offs
    /// instead of wake-up preemption; see `datapath/sched.rs`).
    pub sched_batch: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            tun_offload: true,
            udp_gso: true,
            udp_gro: true,
            socket_buffer: crate::datapath::udp::SOCKET_BUFFER_LEN,
            sched_batch: true,
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Where the private key was read from.
    pub private_key_file: PathBuf,
    /// This host's private key.
    pub private_key: PrivateKey,
    /// UDP port of the tunnels.
    pub listen_port: u16,
    /// TUN device name.
    pub tun_name: String,
    /// TUN MTU.
    pub mtu: u16,
    /// This host's overlay address (on the TUN; preferred source of the routes), an
    /// override: without it a member takes the first address of its certificate's first
    /// subnet ([`crate::address::effective`]), and a host in no network has none.
    pub address: Option<IpAddr>,
    /// This host's container subnets.
    pub subnets: Vec<IpNet>,
    /// Local API socket.
    pub api_socket: PathBuf,
    /// Use TUN and UDP offloads when the kernel has them.
    pub offload: bool,
    /// The levers as asked for (before `offload = false` turns the offloads off).
    pub tuning: Tuning,
    /// Where the control plane keeps its state.
    pub state_dir: PathBuf,
    /// The control plane's settings.
    pub control: Control,
    /// The Docker plugin's settings.
    pub docker: Docker,
    /// The DNS server's settings.
    pub dns: Dns,
    /// The Prometheus endpoint, if any.
    pub metrics: Option<Metrics>,
    /// The flow log's settings.
    pub flows: Flows,
    /// The mirror of decrypted traffic to start with the daemon (`[mirror]`); off: `None`.
    pub mirror: Option<crate::mirror::MirrorSpec>,
    /// Static peers: the file's `[[peer]]`s.
    pub peers: Vec<PeerConfig>,
    /// Static peers added with `overlayctl peer add`, as kept in the state directory
    /// ([`peers_file`]); read by [`Config::load`], empty from [`Config::parse`].
    pub cli_peers: Vec<PeerConfig>,
}

/// A validated static peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its WireGuard public key.
    pub public_key: PublicKey,
    /// Its name: what the network policy's `node:` selectors match (a static peer has no
    /// certificate, hence no groups), and what logs and `overlayctl peers` show.
    pub name: Option<keys::Name>,
    /// Where to reach it first; learnt from its packets when absent.
    pub endpoint: Option<SocketAddr>,
    /// Its subnets: routed to it, and accepted as inner source from it.
    pub subnets: Vec<IpNet>,
    /// Keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
}

impl Config {
    /// UDP port of the control plane: `[control] listen_port`, by default the tunnels'.
    pub fn control_port(&self) -> u16 {
        self.control.listen_port.unwrap_or(self.listen_port)
    }

    /// Whether the tunnels and the control plane share one UDP port (the default): the
    /// data path's socket then carries QUIC too (`datapath::oneport`).
    pub fn one_port(&self) -> bool {
        self.control_port() == self.listen_port
    }

    /// The levers in force: the offloads only where `offload` allows them.
    pub fn effective_tuning(&self) -> Tuning {
        Tuning {
            tun_offload: self.offload && self.tuning.tun_offload,
            udp_gso: self.offload && self.tuning.udp_gso,
            udp_gro: self.offload && self.tuning.udp_gro,
            socket_buffer: self.tuning.socket_buffer,
            sched_batch: self.tuning.sched_batch,
        }
    }

    /// Reads and validates `path`, including the private key file it names, and the
    /// static peers added with `overlayctl` (`state_dir/peers.json`, checked with the
    /// file's: a key in both is an error).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_text(path).map(|(config, _)| config)
    }

    /// [`Config::load`], and the file's text as read.
    pub fn load_with_text(path: &Path) -> Result<(Config, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(path, &text)?;
        let file = peers_file::path(&config.state_dir);
        let cli = peers_file::read(&file).map_err(|message| ConfigError::Invalid {
            path: file.clone(),
            message,
        })?;
        config
            .check_cli_peers(&cli)
            .map_err(|message| ConfigError::Invalid {
                path: path.to_owned(),
                message,
            })?;
        config.cli_peers = cli;
        Ok((config, text))
    }

    /// Whether `cli` (the static peers added with `overlayctl`) fit this config: no key
    /// also a `[[peer]]` of the file, and the rules of every static peer over both
    /// ([`validate::check_peers`]). `Err` is one sentence.
    pub fn check_cli_peers(&self, cli: &[PeerConfig]) -> Result<(), String> {
        if let Some(p) = cli
            .iter()
            .find(|p| self.peers.iter().any(|c| c.public_key == p.public_key))
        {
            return Err(format!(
                "peer {} is a [[peer]] of this file and also one added with overlayctl ({}); remove it from one of them (`overlayctl peer remove {}`)",
                p.public_key,
                peers_file::path(&self.state_dir).display(),
                p.public_key
            ));
        }
        validate::check_peers(
            &self.private_key.public_key(),
            &self.subnets,
            self.peers
                .iter()
                .chain(cli)
                .map(|p| (&p.public_key, p.subnets.as_slice(), p.persistent_keepalive)),
        )
    }

    /// Every static peer: the file's, then those added with `overlayctl`.
    pub fn static_peers(&self) -> impl Iterator<Item = &PeerConfig> {
        self.peers.iter().chain(&self.cli_peers)
    }
}
