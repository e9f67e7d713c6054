//! `overlayd`'s TOML configuration: parsed into typed values, validated as a whole before
//! the daemon touches the system, and printable with secrets redacted.
//!
//! Validation refuses, with one sentence naming the problem: unknown keys, malformed keys,
//! a private key file readable by group or others, subnets claimed by two peers or by a
//! peer and this host, a peer with this host's own key, and out-of-range values.

use std::fmt::Write as _;
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
/// Default UDP port of the control plane (QUIC).
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

/// The file as written (before validation).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    private_key_file: PathBuf,
    #[serde(default = "default_listen_port")]
    listen_port: u16,
    #[serde(default = "default_tun_name")]
    tun_name: String,
    #[serde(default = "default_mtu")]
    mtu: u16,
    #[serde(default)]
    address: Option<IpAddr>,
    #[serde(default)]
    subnets: Vec<IpNet>,
    #[serde(default = "default_api_socket")]
    api_socket: PathBuf,
    #[serde(default = "default_true")]
    offload: bool,
    #[serde(default)]
    tuning: Tuning,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default)]
    control: Control,
    #[serde(default)]
    docker: RawDocker,
    #[serde(default, rename = "peer")]
    peers: Vec<RawPeer>,
}

/// The control plane's settings (`[control]`): where it listens, the address it tells
/// other members, and its timings. The timings default to memberlist's LAN profile, made
/// for clusters of up to a few hundred hosts on one site; the comments say what each
/// trades.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    /// UDP port of the control plane (QUIC): gossip, full syncs, joins.
    pub listen_port: u16,
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
    /// How many days the certificates this host issues as admin are valid.
    pub certificate_days: u32,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            listen_port: DEFAULT_CONTROL_PORT,
            advertise: None,
            probe_period_ms: 1000,
            probe_timeout_ms: 500,
            suspect_timeout_ms: 4000,
            gossip_interval_ms: 200,
            sync_interval_ms: 30_000,
            rejoin_interval_ms: 2000,
            certificate_days: 365,
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

    fn check(&self, wireguard_port: u16) -> Result<(), String> {
        if self.listen_port == 0 {
            return Err("[control] listen_port 0 is not allowed: members need a fixed port".into());
        }
        if self.listen_port == wireguard_port {
            return Err(format!(
                "[control] listen_port {} is also listen_port of the tunnels; use another (default {DEFAULT_CONTROL_PORT})",
                self.listen_port
            ));
        }
        if let Some(a) = self.advertise
            && (a.is_unspecified() || a.is_multicast())
        {
            return Err(format!(
                "[control] advertise {a} is not an address other hosts can reach; give this host's underlay address"
            ));
        }
        if self.certificate_days == 0 {
            return Err("[control] certificate_days must be at least 1".into());
        }
        let membership = self.membership();
        membership.to_foca().map_err(|e| format!("[control] {e}"))?;
        for (name, v) in [
            ("sync_interval_ms", self.sync_interval_ms),
            ("rejoin_interval_ms", self.rejoin_interval_ms),
        ] {
            if v == 0 {
                return Err(format!("[control] {name} must be above 0"));
            }
        }
        Ok(())
    }
}

/// `[docker]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    dockerd_socket: Option<PathBuf>,
    #[serde(default)]
    mtu: Option<u16>,
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

    fn check(raw: RawDocker, tun_mtu: u16) -> Result<Docker, String> {
        let socket = raw
            .socket
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKER_SOCKET));
        if socket.is_relative() {
            return Err(format!(
                "[docker] socket {} must be an absolute path (default {DEFAULT_DOCKER_SOCKET})",
                socket.display()
            ));
        }
        if socket.extension().is_none_or(|e| e != "sock") {
            return Err(format!(
                "[docker] socket {} must end in .sock: dockerd names the plugin after the file",
                socket.display()
            ));
        }
        let dockerd_socket = raw
            .dockerd_socket
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKERD_SOCKET));
        if dockerd_socket.is_relative() {
            return Err(format!(
                "[docker] dockerd_socket {} must be an absolute path (default {DEFAULT_DOCKERD_SOCKET})",
                dockerd_socket.display()
            ));
        }
        let mtu = raw.mtu.unwrap_or(tun_mtu);
        if !(576..=tun_mtu).contains(&mtu) {
            return Err(format!(
                "[docker] mtu {mtu} is out of range: use 576 to the TUN's mtu {tun_mtu}, so container packets fit the tunnel"
            ));
        }
        let docker = Docker {
            enabled: raw.enabled,
            socket,
            dockerd_socket,
            mtu,
        };
        if docker.plugin_name() == "overlay" {
            return Err(
                "[docker] socket must not be named overlay.sock: `overlay` is Docker's built-in driver; use overlayd.sock".into(),
            );
        }
        Ok(docker)
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
    /// instead of wake-up preemption; see `sched.rs`).
    pub sched_batch: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            tun_offload: true,
            udp_gso: true,
            udp_gro: true,
            socket_buffer: crate::udp::SOCKET_BUFFER_LEN,
            sched_batch: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    public_key: PublicKey,
    #[serde(default)]
    endpoint: Option<SocketAddr>,
    subnets: Vec<IpNet>,
    #[serde(default)]
    persistent_keepalive: Option<u16>,
}

fn default_listen_port() -> u16 {
    DEFAULT_LISTEN_PORT
}
fn default_tun_name() -> String {
    DEFAULT_TUN_NAME.to_owned()
}
fn default_mtu() -> u16 {
    DEFAULT_MTU
}
fn default_api_socket() -> PathBuf {
    PathBuf::from(protocol::api::DEFAULT_SOCKET)
}
fn default_true() -> bool {
    true
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

/// A validated configuration.
#[derive(Debug)]
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
    /// Static peers.
    pub peers: Vec<PeerConfig>,
}

/// A validated static peer.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Its WireGuard public key.
    pub public_key: PublicKey,
    /// Where to reach it first; learnt from its packets when absent.
    pub endpoint: Option<SocketAddr>,
    /// Its subnets: routed to it, and accepted as inner source from it.
    pub subnets: Vec<IpNet>,
    /// Keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
}

impl Config {
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

    /// Reads and validates `path`, including the private key file it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: one_line(&e.to_string()),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let key_file = if raw.private_key_file.is_relative() {
            path.parent()
                .unwrap_or(Path::new("."))
                .join(&raw.private_key_file)
        } else {
            raw.private_key_file.clone()
        };
        let private_key =
            keys::read_private_key_file(&key_file).map_err(|source| ConfigError::Key {
                path: path.to_owned(),
                source,
            })?;
        if !(576..=9000).contains(&raw.mtu) {
            return Err(invalid(format!(
                "mtu {} is out of range: use 576..=9000 (default {DEFAULT_MTU})",
                raw.mtu
            )));
        }
        // The name goes into nft scripts and netlink: letters, digits, '_', '-', '.' only
        // (what `ip link` names usually are; quotes, spaces or '/' could break out of them).
        if raw.tun_name.is_empty()
            || raw.tun_name.len() > 15
            || raw.tun_name.starts_with(['.', '-'])
            || !raw
                .tun_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(invalid(format!(
                "tun_name {:?} is not an interface name: use 1 to 15 letters, digits, '_', '-' or '.' (default \"ovl0\")",
                raw.tun_name
            )));
        }
        if raw.listen_port == 0 {
            return Err(invalid(
                "listen_port 0 is not allowed: peers need a fixed port".into(),
            ));
        }
        raw.control.check(raw.listen_port).map_err(&invalid)?;
        let docker = Docker::check(raw.docker, raw.mtu).map_err(&invalid)?;
        if raw.state_dir.is_relative() {
            return Err(invalid(format!(
                "state_dir {} must be an absolute path",
                raw.state_dir.display()
            )));
        }
        let own_public = private_key.public_key();
        // (subnet, owner): owner 0 is this host, i + 1 is peer i.
        let mut claims: Vec<(IpNet, usize)> = raw.subnets.iter().map(|n| (n.trunc(), 0)).collect();
        for (i, peer) in raw.peers.iter().enumerate() {
            if peer.public_key == own_public {
                return Err(invalid(format!(
                    "peer {} has this host's own public key; remove it",
                    peer.public_key
                )));
            }
            if let Some(dup) = raw.peers[..i]
                .iter()
                .find(|p| p.public_key == peer.public_key)
            {
                return Err(invalid(format!(
                    "peer {} is listed twice; merge the two [[peer]] sections",
                    dup.public_key
                )));
            }
            if peer.subnets.is_empty() {
                return Err(invalid(format!(
                    "peer {} has no subnets; give it at least one (e.g. its container subnet)",
                    peer.public_key
                )));
            }
            if peer.persistent_keepalive == Some(0) {
                return Err(invalid(format!(
                    "peer {}: persistent_keepalive 0 is not allowed; omit it to turn keepalives off",
                    peer.public_key
                )));
            }
            claims.extend(peer.subnets.iter().map(|n| (n.trunc(), i + 1)));
        }
        if let Some((a, b)) = protocol::routing::first_overlap(&claims) {
            let owner = |net: IpNet| match claims.iter().find(|(n, _)| *n == net) {
                Some((_, 0)) | None => "this host".to_owned(),
                Some((_, i)) => format!("peer {}", raw.peers[i - 1].public_key),
            };
            return Err(invalid(format!(
                "subnets overlap: {a} ({}) and {b} ({}); give every host its own subnet",
                owner(a),
                owner(b)
            )));
        }
        Ok(Config {
            path: path.to_owned(),
            private_key_file: key_file,
            private_key,
            listen_port: raw.listen_port,
            tun_name: raw.tun_name,
            mtu: raw.mtu,
            address: raw.address,
            subnets: raw.subnets,
            api_socket: raw.api_socket,
            offload: raw.offload,
            tuning: raw.tuning,
            state_dir: raw.state_dir,
            control: raw.control,
            docker,
            peers: raw
                .peers
                .into_iter()
                .map(|p| PeerConfig {
                    public_key: p.public_key,
                    endpoint: p.endpoint,
                    subnets: p.subnets,
                    persistent_keepalive: p.persistent_keepalive,
                })
                .collect(),
        })
    }

    /// The configuration as TOML, with the private key shown as `(redacted)` and the
    /// derived public key added as a comment.
    pub fn redacted(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# {}", self.path.display());
        let _ = writeln!(out, "# public_key = {}", self.private_key.public_key());
        let _ = writeln!(
            out,
            "private_key_file = {:?}",
            self.private_key_file.display().to_string()
        );
        let _ = writeln!(out, "# private_key = (redacted)");
        let _ = writeln!(out, "listen_port = {}", self.listen_port);
        let _ = writeln!(out, "tun_name = {:?}", self.tun_name);
        let _ = writeln!(out, "mtu = {}", self.mtu);
        if let Some(a) = self.address {
            let _ = writeln!(out, "address = \"{a}\"");
        }
        let _ = writeln!(out, "subnets = {}", list(&self.subnets));
        let _ = writeln!(
            out,
            "api_socket = {:?}",
            self.api_socket.display().to_string()
        );
        let _ = writeln!(out, "offload = {}", self.offload);
        let _ = writeln!(
            out,
            "state_dir = {:?}",
            self.state_dir.display().to_string()
        );
        if self.tuning != Tuning::default() {
            let t = self.tuning;
            let _ = writeln!(
                out,
                "\n[tuning]\ntun_offload = {}\nudp_gso = {}\nudp_gro = {}\nsocket_buffer = {}\nsched_batch = {}",
                t.tun_offload, t.udp_gso, t.udp_gro, t.socket_buffer, t.sched_batch
            );
        }
        let c = &self.control;
        let _ = writeln!(out, "\n[control]\nlisten_port = {}", c.listen_port);
        if let Some(a) = c.advertise {
            let _ = writeln!(out, "advertise = \"{a}\"");
        }
        let _ = writeln!(
            out,
            "probe_period_ms = {}\nprobe_timeout_ms = {}\nsuspect_timeout_ms = {}\ngossip_interval_ms = {}\nsync_interval_ms = {}\nrejoin_interval_ms = {}\ncertificate_days = {}",
            c.probe_period_ms,
            c.probe_timeout_ms,
            c.suspect_timeout_ms,
            c.gossip_interval_ms,
            c.sync_interval_ms,
            c.rejoin_interval_ms,
            c.certificate_days
        );
        let d = &self.docker;
        let _ = writeln!(
            out,
            "\n[docker]\nenabled = {}\nsocket = {:?}\ndockerd_socket = {:?}\nmtu = {}",
            d.enabled,
            d.socket.display().to_string(),
            d.dockerd_socket.display().to_string(),
            d.mtu
        );
        for p in &self.peers {
            let _ = writeln!(out, "\n[[peer]]\npublic_key = \"{}\"", p.public_key);
            if let Some(e) = p.endpoint {
                let _ = writeln!(out, "endpoint = \"{e}\"");
            }
            let _ = writeln!(out, "subnets = {}", list(&p.subnets));
            if let Some(k) = p.persistent_keepalive {
                let _ = writeln!(out, "persistent_keepalive = {k}");
            }
        }
        out
    }
}

fn list(nets: &[IpNet]) -> String {
    let items: Vec<String> = nets.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// toml's messages span several lines (with a caret under the column); keep them on one.
fn one_line(message: &str) -> String {
    let mut parts: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '|' || c == '^' || c == ' '))
        .collect();
    parts.dedup();
    parts.join(": ").replace(": |", ":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Fixture {
        dir: tempfile::TempDir,
        key: PrivateKey,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate();
        keys::write_private_key_file(&dir.path().join("private.key"), &key).unwrap();
        Fixture { dir, key }
    }

    fn parse(f: &Fixture, body: &str) -> Result<Config, ConfigError> {
        let path = f.dir.path().join("overlayd.toml");
        let text = format!("private_key_file = \"private.key\"\n{body}");
        Config::parse(&path, &text)
    }

    fn peer(subnets: &str) -> String {
        format!(
            "[[peer]]\npublic_key = \"{}\"\nsubnets = {subnets}\n",
            PrivateKey::generate().public_key()
        )
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let f = fixture();
        let c = parse(&f, "subnets = [\"10.42.1.0/24\"]\n").unwrap();
        assert_eq!(c.listen_port, 51820);
        assert_eq!(c.mtu, 1420);
        assert_eq!(c.tun_name, "ovl0");
        assert!(c.offload);
        assert!(c.peers.is_empty());
    }

    #[test]
    fn full_config_round_trips_through_redacted() {
        let f = fixture();
        let body = format!(
            "listen_port = 5000\nmtu = 1400\naddress = \"10.42.1.1\"\nsubnets = [\"10.42.1.0/24\"]\n{}endpoint = \"198.18.0.12:51820\"\npersistent_keepalive = 25\n",
            peer("[\"10.42.2.0/24\"]")
        );
        let c = parse(&f, &body).unwrap();
        assert_eq!(
            c.peers[0].endpoint,
            Some("198.18.0.12:51820".parse().unwrap())
        );
        let shown = c.redacted();
        assert!(!shown.contains(f.key.to_base64().as_str()));
        assert!(shown.contains("(redacted)"));
        // the redacted form is itself a valid config
        let again = Config::parse(&c.path, &shown).unwrap();
        assert_eq!(again.peers.len(), 1);
        assert_eq!(again.mtu, 1400);
    }

    #[test]
    fn tuning_levers_and_the_offload_switch() {
        let f = fixture();
        let c = parse(
            &f,
            "[tuning]\nudp_gso = false\nsocket_buffer = 0\nsched_batch = false\n",
        )
        .unwrap();
        let t = c.effective_tuning();
        assert!(t.tun_offload && !t.udp_gso && t.udp_gro && t.socket_buffer == 0 && !t.sched_batch);
        assert!(Tuning::default().sched_batch);
        assert!(Config::parse(&c.path, &c.redacted()).unwrap().tuning == c.tuning);
        let c = parse(&f, "offload = false\n").unwrap();
        let t = c.effective_tuning();
        assert!(!t.tun_offload && !t.udp_gso && !t.udp_gro);
        assert!(parse(&f, "[tuning]\nudp_gs0 = false\n").is_err());
    }

    #[test]
    fn docker_table_is_validated_and_round_trips() {
        let f = fixture();
        let c = parse(&f, "").unwrap();
        assert!(!c.docker.enabled);
        assert_eq!(c.docker.socket, PathBuf::from(DEFAULT_DOCKER_SOCKET));
        assert_eq!(
            c.docker.dockerd_socket,
            PathBuf::from(DEFAULT_DOCKERD_SOCKET)
        );
        assert_eq!(c.docker.mtu, c.mtu);
        assert_eq!(c.docker.plugin_name(), "overlayd");
        let c = parse(
            &f,
            "mtu = 1400\n[docker]\nenabled = true\nsocket = \"/tmp/p/overlayd.sock\"\nmtu = 1380\n",
        )
        .unwrap();
        assert!(c.docker.enabled && c.docker.mtu == 1380);
        let again = Config::parse(&c.path, &c.redacted()).unwrap();
        assert_eq!(again.docker, c.docker);
        for (body, needle) in [
            ("[docker]\nmtu = 1500\n", "mtu 1500"),
            ("[docker]\nsocket = \"rel.sock\"\n", "absolute"),
            (
                "[docker]\ndockerd_socket = \"docker.sock\"\n",
                "dockerd_socket docker.sock must be an absolute path",
            ),
            ("[docker]\nsocket = \"/run/docker/plugins/x\"\n", ".sock"),
            (
                "[docker]\nsocket = \"/run/docker/plugins/overlay.sock\"\n",
                "built-in",
            ),
            ("[docker]\nenable = true\n", "enable"),
        ] {
            let err = parse(&f, body).unwrap_err().to_string();
            assert!(err.contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let f = fixture();
        let err = parse(&f, "listen_prot = 5\n").unwrap_err().to_string();
        assert!(err.contains("listen_prot"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn malformed_peer_key_is_named() {
        let f = fixture();
        let err = parse(
            &f,
            "[[peer]]\npublic_key = \"nope\"\nsubnets = [\"10.42.2.0/24\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a WireGuard key"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn overlapping_subnets_are_refused() {
        let f = fixture();
        let body = format!(
            "{}{}",
            peer("[\"10.42.0.0/16\"]"),
            peer("[\"10.42.2.0/24\"]")
        );
        let err = parse(&f, &body).unwrap_err().to_string();
        assert!(err.contains("overlap"), "{err}");
        let body = format!(
            "subnets = [\"10.42.2.0/24\"]\n{}",
            peer("[\"10.42.2.0/25\"]")
        );
        let err = parse(&f, &body).unwrap_err().to_string();
        assert!(err.contains("this host"), "{err}");
    }

    #[test]
    fn open_key_file_is_refused() {
        let f = fixture();
        let key = f.dir.path().join("private.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = parse(&f, "").unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn own_key_as_peer_and_bad_values_are_refused() {
        let f = fixture();
        let own = format!(
            "[[peer]]\npublic_key = \"{}\"\nsubnets = [\"10.9.0.0/24\"]\n",
            f.key.public_key()
        );
        assert!(
            parse(&f, &own)
                .unwrap_err()
                .to_string()
                .contains("own public key")
        );
        assert!(
            parse(&f, "mtu = 100\n")
                .unwrap_err()
                .to_string()
                .contains("mtu")
        );
        assert!(parse(&f, "tun_name = \"waytoolonganame0\"\n").is_err());
        // the name goes into nft scripts: nothing that could break out of a quoted word
        for bad in ["ovl0\\\" drop", "a b", "ovl/0", "-ovl", ".", "ovl;0", ""] {
            let err = parse(&f, &format!("tun_name = {bad:?}\n")).unwrap_err();
            assert!(
                err.to_string().contains("not an interface name"),
                "{bad:?}: {err}"
            );
        }
        for good in ["ovl0", "wg-overlay", "tun_1.2"] {
            assert!(
                parse(&f, &format!("tun_name = {good:?}\n")).is_ok(),
                "{good}"
            );
        }
    }
}
