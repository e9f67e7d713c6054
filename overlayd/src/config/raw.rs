//! The configuration file as written, before validation: serde with
//! `deny_unknown_fields` and the defaults of every key left out.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use keys::PublicKey;
use serde::Deserialize;

use super::{
    Control, DEFAULT_LISTEN_PORT, DEFAULT_MTU, DEFAULT_STATE_DIR, DEFAULT_TUN_NAME, Flows, Metrics,
    Tuning,
};

/// The file as written (before validation).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) private_key_file: PathBuf,
    #[serde(default = "default_listen_port")]
    pub(super) listen_port: u16,
    #[serde(default = "default_tun_name")]
    pub(super) tun_name: String,
    #[serde(default = "default_mtu")]
    pub(super) mtu: u16,
    #[serde(default)]
    pub(super) address: Option<IpAddr>,
    #[serde(default)]
    pub(super) subnets: Vec<IpNet>,
    #[serde(default = "default_api_socket")]
    pub(super) api_socket: PathBuf,
    #[serde(default = "default_true")]
    pub(super) offload: bool,
    #[serde(default)]
    pub(super) tuning: Tuning,
    #[serde(default = "default_state_dir")]
    pub(super) state_dir: PathBuf,
    #[serde(default)]
    pub(super) control: Control,
    #[serde(default)]
    pub(super) docker: RawDocker,
    #[serde(default)]
    pub(super) dns: RawDns,
    #[serde(default)]
    pub(super) metrics: Option<Metrics>,
    #[serde(default)]
    pub(super) flows: Flows,
    #[serde(default)]
    pub(super) mirror: super::mirror::RawMirror,
    #[serde(default, rename = "peer")]
    pub(super) peers: Vec<RawPeer>,
}

/// `[docker]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDocker {
    #[serde(default)]
    pub(super) enabled: bool,
    #[serde(default)]
    pub(super) socket: Option<PathBuf>,
    #[serde(default)]
    pub(super) dockerd_socket: Option<PathBuf>,
    #[serde(default)]
    pub(super) mtu: Option<u16>,
}

/// `[dns]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    #[serde(default)]
    pub(super) enabled: Option<bool>,
    #[serde(default)]
    pub(super) address: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    pub(super) max_names: Option<usize>,
}

/// One `[[peer]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    pub(super) public_key: PublicKey,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) endpoint: Option<SocketAddr>,
    pub(super) subnets: Vec<IpNet>,
    #[serde(default)]
    pub(super) persistent_keepalive: Option<u16>,
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

/// toml's messages span several lines (with a caret under the column); keep them on one.
pub(super) fn one_line(message: &str) -> String {
    let mut parts: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '|' || c == '^' || c == ' '))
        .collect();
    parts.dedup();
    parts.join(": ").replace(": |", ":")
}
