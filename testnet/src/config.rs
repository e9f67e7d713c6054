//! The `overlayd.toml` written for each host, as a value tests may change before the daemon
//! starts: in static mode with a `[[peer]]` table per other host, in gossip mode with a state
//! directory and a `[control]` table instead; the host keys and the [`Testnet`] methods that
//! make and write configs.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{LISTEN_PORT, MTU, Mode, Testnet};

/// One host's `overlayd` configuration. [`HostConfig::to_toml`] writes it the way `overlayd`
/// reads it; fields left `None` are not written (the daemon's default applies).
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    /// `private_key_file`: the host's key, `/run/testnet/P/hI/private.key`.
    pub private_key_file: PathBuf,
    /// `listen_port`.
    pub listen_port: u16,
    /// `tun_name`.
    pub tun_name: String,
    /// `mtu`.
    pub mtu: u32,
    /// `address`: the host's overlay address, `10.42.I.1`, in static mode; `None` (not
    /// written) in gossip mode, where the daemon takes the same address from its certificate
    /// subnet by default, so every gossip-mode run exercises that default.
    pub address: Option<Ipv4Addr>,
    /// `subnets`: the host's container subnet, `10.42.I.0/24`, in static mode; empty (not
    /// written) in gossip mode, where the subnet comes from the host's certificate.
    pub subnets: Vec<String>,
    /// `api_socket`: `/run/testnet/P/hI/overlayd.sock`.
    pub api_socket: PathBuf,
    /// `offload`; `Some(false)` turns TUN/UDP offloads off.
    pub offload: Option<bool>,
    /// `state_dir`: where the daemon keeps its network state (gossip mode),
    /// `/run/testnet/P/hI/state`; `None` is not written (the daemon's default applies).
    pub state_dir: Option<PathBuf>,
    /// Further top-level TOML lines, written verbatim before the tables (e.g. `"foo = 1"`).
    pub extra: Vec<String>,
    /// The `[control]` table (gossip mode); `None` is not written.
    pub control: Option<ControlConfig>,
    /// `[[peer]]` tables: one per other host in static mode, none in gossip mode (tests may
    /// add static external peers beside the gossiped members).
    pub peers: Vec<PeerConfig>,
}

/// The `[control]` table: where the control plane (QUIC) listens and is reached.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    /// `listen_port`: UDP port of the control plane, [`Testnet::control_port`].
    pub listen_port: u16,
    /// `advertise`: the underlay address other hosts reach this one at; `None` leaves it
    /// out, so the daemon finds (and follows) its address itself.
    pub advertise: Option<IpAddr>,
    /// Further TOML lines for this table, written verbatim (e.g. timings).
    pub extra: Vec<String>,
}

/// A `[[peer]]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    /// Which host of the run this peer is (1-based); not written. Lets a test find or drop a
    /// peer, e.g. `cfg.peers.retain(|p| p.host != 3)` for a host nobody knows.
    pub host: usize,
    /// `public_key` (base64).
    pub public_key: String,
    /// `endpoint`.
    pub endpoint: Option<SocketAddr>,
    /// `subnets`.
    pub subnets: Vec<String>,
    /// `persistent_keepalive` in seconds.
    pub persistent_keepalive: Option<u16>,
    /// Further TOML lines for this table, written verbatim.
    pub extra: Vec<String>,
}

impl HostConfig {
    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "private_key_file = {}",
            path_str(&self.private_key_file)
        );
        let _ = writeln!(out, "listen_port = {}", self.listen_port);
        let _ = writeln!(out, "tun_name = {}", toml_str(&self.tun_name));
        let _ = writeln!(out, "mtu = {}", self.mtu);
        if let Some(address) = self.address {
            let _ = writeln!(out, "address = \"{address}\"");
        }
        if !self.subnets.is_empty() {
            let _ = writeln!(out, "subnets = {}", toml_list(&self.subnets));
        }
        let _ = writeln!(out, "api_socket = {}", path_str(&self.api_socket));
        if let Some(offload) = self.offload {
            let _ = writeln!(out, "offload = {offload}");
        }
        if let Some(dir) = &self.state_dir {
            let _ = writeln!(out, "state_dir = {}", path_str(dir));
        }
        for line in &self.extra {
            let _ = writeln!(out, "{line}");
        }
        if let Some(control) = &self.control {
            let _ = writeln!(out, "\n[control]");
            let _ = writeln!(out, "listen_port = {}", control.listen_port);
            if let Some(advertise) = control.advertise {
                let _ = writeln!(out, "advertise = \"{advertise}\"");
            }
            for line in &control.extra {
                let _ = writeln!(out, "{line}");
            }
        }
        for peer in &self.peers {
            let _ = writeln!(out, "\n[[peer]]");
            let _ = writeln!(out, "public_key = {}", toml_str(&peer.public_key));
            if let Some(endpoint) = peer.endpoint {
                let _ = writeln!(out, "endpoint = \"{endpoint}\"");
            }
            let _ = writeln!(out, "subnets = {}", toml_list(&peer.subnets));
            if let Some(keepalive) = peer.persistent_keepalive {
                let _ = writeln!(out, "persistent_keepalive = {keepalive}");
            }
            for line in &peer.extra {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }
}

impl Testnet {
    /// The config [`Testnet::up`] writes for host `i` before [`crate::Options`] changes it, in
    /// the run's mode: [`Testnet::static_config`] or [`Testnet::gossip_config`].
    pub fn default_config(&self, i: usize) -> Result<HostConfig> {
        match self.mode() {
            Mode::Static => self.static_config(i),
            Mode::Gossip => self.gossip_config(i),
        }
    }

    /// Host `i`'s gossip-mode config: its key, state directory and `[control]` table (port
    /// [`Testnet::control_port`], advertising its current underlay address unless it is behind a
    /// NAT); no address (the daemon
    /// takes `10.42.I.1`, the first of its certificate subnet), no subnets and no peers.
    pub fn gossip_config(&self, i: usize) -> Result<HostConfig> {
        let host = self.host(i)?;
        Ok(HostConfig {
            private_key_file: self.key_path(i),
            listen_port: LISTEN_PORT,
            tun_name: "ovl0".to_owned(),
            mtu: MTU,
            address: None,
            subnets: Vec::new(),
            api_socket: self.socket_path(i),
            offload: None,
            state_dir: Some(self.state_dir(i)),
            extra: Vec::new(),
            control: Some(ControlConfig {
                listen_port: self.control_port(),
                // Behind a NAT a host does not know the address the others see it at: it
                // finds its own and learns the rest from its peers.
                advertise: host.nat.is_none().then_some(host.underlay.into()),
                extra: Vec::new(),
            }),
            peers: Vec::new(),
        })
    }

    /// Host `i`'s static-mode config: its key, address and subnet, and one peer per other
    /// host.
    pub fn static_config(&self, i: usize) -> Result<HostConfig> {
        let host = self.host(i)?;
        let peers = self
            .state
            .host
            .iter()
            .enumerate()
            .map(|(index, peer)| (index + 1, peer))
            .filter(|(k, _)| *k != i)
            .map(|(k, peer)| PeerConfig {
                host: k,
                public_key: peer.public_key.clone(),
                endpoint: Some(SocketAddr::new(
                    peer.nat.map_or(peer.underlay, |n| n.public).into(),
                    LISTEN_PORT,
                )),
                subnets: vec![peer.subnet.clone()],
                persistent_keepalive: None,
                extra: Vec::new(),
            })
            .collect();
        Ok(HostConfig {
            private_key_file: self.key_path(i),
            listen_port: LISTEN_PORT,
            tun_name: "ovl0".to_owned(),
            mtu: MTU,
            address: Some(host.overlay),
            subnets: vec![host.subnet.clone()],
            api_socket: self.socket_path(i),
            offload: None,
            state_dir: None,
            extra: Vec::new(),
            control: None,
            peers,
        })
    }

    /// Writes host `i`'s config; the daemon reads it at its next start.
    pub fn write_config(&self, i: usize, config: &HostConfig) -> Result<()> {
        self.write_config_text(i, &config.to_toml())
    }

    /// Writes host `i`'s config file verbatim (for configs [`HostConfig`] cannot express).
    pub fn write_config_text(&self, i: usize, text: &str) -> Result<()> {
        self.host(i)?;
        let path = self.config_path(i);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Makes a key per host, written 0600 into its directory.
    pub(crate) fn write_keys(&mut self) -> Result<()> {
        for i in 1..=self.state.hosts {
            let dir = self.host_dir(i);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let key = keys::PrivateKey::generate();
            keys::write_private_key_file(&self.key_path(i), &key)?;
            self.state.host[i - 1].public_key = key.public_key().to_string();
        }
        Ok(())
    }

    /// Creates host `i`'s state directory (0700) if it is missing.
    pub(crate) fn create_state_dir(&self, i: usize) -> Result<()> {
        let dir = self.state_dir(i);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))
    }
}

/// A TOML basic string.
fn toml_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn path_str(path: &Path) -> String {
    toml_str(&path.to_string_lossy())
}

fn toml_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_documented_shape() {
        let cfg = HostConfig {
            private_key_file: "/run/testnet/tn/h1/private.key".into(),
            listen_port: 51820,
            tun_name: "ovl0".into(),
            mtu: 1420,
            address: Some(Ipv4Addr::new(10, 42, 1, 1)),
            subnets: vec!["10.42.1.0/24".into()],
            api_socket: "/run/testnet/tn/h1/overlayd.sock".into(),
            offload: None,
            state_dir: None,
            extra: vec![],
            control: None,
            peers: vec![PeerConfig {
                host: 2,
                public_key: "KEY=".into(),
                endpoint: Some("198.18.0.12:51820".parse().unwrap()),
                subnets: vec!["10.42.2.0/24".into()],
                persistent_keepalive: None,
                extra: vec![],
            }],
        };
        let expected = r#"private_key_file = "/run/testnet/tn/h1/private.key"
listen_port = 51820
tun_name = "ovl0"
mtu = 1420
address = "10.42.1.1"
subnets = ["10.42.1.0/24"]
api_socket = "/run/testnet/tn/h1/overlayd.sock"

[[peer]]
public_key = "KEY="
endpoint = "198.18.0.12:51820"
subnets = ["10.42.2.0/24"]
"#;
        assert_eq!(cfg.to_toml(), expected);

        let mut cfg = cfg;
        cfg.offload = Some(false);
        cfg.peers[0].persistent_keepalive = Some(25);
        let text = cfg.to_toml();
        assert!(
            text.contains("api_socket = \"/run/testnet/tn/h1/overlayd.sock\"\noffload = false\n")
        );
        assert!(text.ends_with("persistent_keepalive = 25\n"));
        assert_eq!(toml_str("a\"b\\c"), r#""a\"b\\c""#);
    }

    #[test]
    fn gossip_mode_has_state_dir_and_control_but_no_address_subnets_or_peers() {
        let cfg = HostConfig {
            private_key_file: "/run/testnet/tn/h2/private.key".into(),
            listen_port: 51820,
            tun_name: "ovl0".into(),
            mtu: 1420,
            address: None,
            subnets: vec![],
            api_socket: "/run/testnet/tn/h2/overlayd.sock".into(),
            offload: Some(false),
            state_dir: Some("/run/testnet/tn/h2/state".into()),
            extra: vec!["# extra".into()],
            control: Some(ControlConfig {
                listen_port: 51821,
                advertise: Some("198.18.0.12".parse().unwrap()),
                extra: vec![],
            }),
            peers: vec![],
        };
        let expected = r#"private_key_file = "/run/testnet/tn/h2/private.key"
listen_port = 51820
tun_name = "ovl0"
mtu = 1420
api_socket = "/run/testnet/tn/h2/overlayd.sock"
offload = false
state_dir = "/run/testnet/tn/h2/state"
# extra

[control]
listen_port = 51821
advertise = "198.18.0.12"
"#;
        assert_eq!(cfg.to_toml(), expected);
    }
}
