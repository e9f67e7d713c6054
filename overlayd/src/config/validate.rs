//! The checks that turn the file as written ([`RawConfig`]) into a [`Config`]: each
//! refusal is one sentence that names the key and says what to do.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use keys::PublicKey;

use super::raw::{RawConfig, RawDocker, one_line};
use super::{
    Config, ConfigError, Control, DEFAULT_CONTROL_PORT, DEFAULT_DOCKER_SOCKET,
    DEFAULT_DOCKERD_SOCKET, DEFAULT_MTU, Dns, Docker, Flows, Metrics, PeerConfig,
};

/// The shortest certificate lifetime: a member renews at two thirds of it and needs a few
/// seconds for the round trip and the retries.
pub const MIN_CERTIFICATE_LIFETIME_S: u64 = 30;
/// The longest: ten years.
pub const MAX_CERTIFICATE_LIFETIME_S: u64 = 3650 * 86_400;

impl Config {
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
        let dns = Dns::check(raw.dns, docker.enabled).map_err(&invalid)?;
        if let Some(m) = &raw.metrics {
            m.check().map_err(&invalid)?;
        }
        raw.flows.check().map_err(&invalid)?;
        let mirror = raw.mirror.check(&raw.tun_name).map_err(&invalid)?;
        if raw.state_dir.is_relative() {
            return Err(invalid(format!(
                "state_dir {} must be an absolute path",
                raw.state_dir.display()
            )));
        }
        let own_public = private_key.public_key();
        check_peers(
            &own_public,
            &raw.subnets,
            raw.peers
                .iter()
                .map(|p| (&p.public_key, p.subnets.as_slice(), p.persistent_keepalive)),
        )
        .map_err(&invalid)?;
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
            dns,
            metrics: raw.metrics,
            flows: raw.flows,
            mirror,
            cli_peers: Vec::new(),
            peers: raw
                .peers
                .into_iter()
                .map(|p| {
                    let name = match p.name {
                        Some(n) => Some(keys::Name::new(n.as_str()).map_err(|e| {
                            invalid(format!(
                                "[[peer]] {}: name {n:?}: {e}",
                                p.public_key.short()
                            ))
                        })?),
                        None => None,
                    };
                    Ok(PeerConfig {
                        public_key: p.public_key,
                        name,
                        endpoint: p.endpoint,
                        subnets: p.subnets,
                        persistent_keepalive: p.persistent_keepalive,
                    })
                })
                .collect::<Result<_, ConfigError>>()?,
        })
    }
}

/// The rules every static peer follows, the config's `[[peer]]`s and those added with
/// `overlayctl peer add` alike (given together): not this host's key, each key once, at
/// least one subnet, no keepalive of 0, and no subnet that overlaps another peer's or
/// one of `own_subnets`. `Err` is one sentence.
pub(crate) fn check_peers<'a>(
    own_public: &PublicKey,
    own_subnets: &[IpNet],
    peers: impl Iterator<Item = (&'a PublicKey, &'a [IpNet], Option<u16>)>,
) -> Result<(), String> {
    let peers: Vec<(&PublicKey, &[IpNet], Option<u16>)> = peers.collect();
    // (subnet, owner): owner 0 is this host, i + 1 is peer i.
    let mut claims: Vec<(IpNet, usize)> = own_subnets.iter().map(|n| (n.trunc(), 0)).collect();
    for (i, (key, subnets, keepalive)) in peers.iter().enumerate() {
        if *key == own_public {
            return Err(format!(
                "peer {key} has this host's own public key; remove it"
            ));
        }
        if let Some((dup, _, _)) = peers[..i].iter().find(|p| p.0 == *key) {
            return Err(format!(
                "peer {dup} is listed twice; merge the two [[peer]] sections"
            ));
        }
        if subnets.is_empty() {
            return Err(format!(
                "peer {key} has no subnets; give it at least one (e.g. its container subnet)"
            ));
        }
        if *keepalive == Some(0) {
            return Err(format!(
                "peer {key}: persistent_keepalive 0 is not allowed; omit it to turn keepalives off"
            ));
        }
        claims.extend(subnets.iter().map(|n| (n.trunc(), i + 1)));
    }
    if let Some((a, b)) = protocol::routing::first_overlap(&claims) {
        let owner = |net: IpNet| match claims.iter().find(|(n, _)| *n == net) {
            Some((_, 0)) | None => "this host".to_owned(),
            Some((_, i)) => format!("peer {}", peers[i - 1].0),
        };
        return Err(format!(
            "subnets overlap: {a} ({}) and {b} ({}); give every host its own subnet",
            owner(a),
            owner(b)
        ));
    }
    Ok(())
}

impl Control {
    fn check(&self, wireguard_port: u16) -> Result<(), String> {
        if self.listen_port == Some(0) {
            return Err(format!(
                "[control] listen_port 0 is not allowed: members need a fixed port; leave it out to share the tunnels' port {wireguard_port}, or give another (e.g. {DEFAULT_CONTROL_PORT})"
            ));
        }
        if let Some(a) = self.advertise
            && !protocol::records::reachable_unicast(a)
        {
            return Err(format!(
                "[control] advertise {a} is not an address other hosts can reach (loopback, link-local, unspecified, multicast and broadcast are not); give this host's underlay address"
            ));
        }
        if self.certificate_days == 0 {
            return Err("[control] certificate_days must be at least 1".into());
        }
        if let Some(s) = self.certificate_lifetime_s
            && !(MIN_CERTIFICATE_LIFETIME_S..=MAX_CERTIFICATE_LIFETIME_S).contains(&s)
        {
            return Err(format!(
                "[control] certificate_lifetime_s = {s} is out of range; give {MIN_CERTIFICATE_LIFETIME_S} to {MAX_CERTIFICATE_LIFETIME_S} seconds (or leave it out and set certificate_days)"
            ));
        }
        if !(protocol::records::ca::MIN_TRANSITION_S..=protocol::records::ca::MAX_TRANSITION_S)
            .contains(&self.ca_transition_s)
        {
            return Err(format!(
                "[control] ca_transition_s = {} is out of range; give {} to {} seconds (default 86400)",
                self.ca_transition_s,
                protocol::records::ca::MIN_TRANSITION_S,
                protocol::records::ca::MAX_TRANSITION_S
            ));
        }
        if self.key_rotation_days == Some(0) {
            return Err("[control] key_rotation_days must be at least 1 (or left out: rotate only when asked)".into());
        }
        if !(1..=86_400).contains(&self.key_rotation_grace_s) {
            return Err(format!(
                "[control] key_rotation_grace_s = {} is out of range; give 1 to 86400 seconds (default 60)",
                self.key_rotation_grace_s
            ));
        }
        if self.policy_flows == 0 {
            return Err("[control] policy_flows must be at least 1 (default 65536)".into());
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

impl Metrics {
    fn check(&self) -> Result<(), String> {
        let ip = self.listen.ip();
        if ip.is_unspecified() && !self.allow_all_interfaces {
            return Err(format!(
                "[metrics] listen {} would serve every peer's name, key and traffic on all interfaces, the underlay too; use 127.0.0.1 or this host's overlay address, or set allow_all_interfaces = true",
                self.listen
            ));
        }
        if ip.is_multicast() {
            return Err(format!(
                "[metrics] listen {} is a multicast address; use 127.0.0.1 or this host's overlay address",
                self.listen
            ));
        }
        if self.listen.port() == 0 {
            return Err(format!(
                "[metrics] listen {} has port 0; Prometheus needs a fixed port (9586 is usual)",
                self.listen
            ));
        }
        Ok(())
    }
}

impl Dns {
    fn check(raw: super::raw::RawDns, docker: bool) -> Result<Dns, String> {
        let max_names = raw
            .max_names
            .unwrap_or(protocol::records::names::DEFAULT_MAX_NAMES);
        if !(1..=protocol::records::names::MAX_ENTRIES).contains(&max_names) {
            return Err(format!(
                "[dns] max_names {max_names} is out of range: use 1 to {} (default {})",
                protocol::records::names::MAX_ENTRIES,
                protocol::records::names::DEFAULT_MAX_NAMES
            ));
        }
        if let Some(a) = raw.address
            && (a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast())
        {
            return Err(format!(
                "[dns] address {a} cannot be served to containers: use an unused address of the overlay's range (default: its last but one, e.g. 10.42.255.254)"
            ));
        }
        Ok(Dns {
            enabled: raw.enabled.unwrap_or(docker),
            address: raw.address,
            max_names,
        })
    }
}

impl Docker {
    fn check(raw: RawDocker, tun_mtu: u16) -> Result<Docker, String> {
        let socket = absolute("socket", raw.socket, DEFAULT_DOCKER_SOCKET)?;
        if socket.extension().is_none_or(|e| e != "sock") {
            return Err(format!(
                "[docker] socket {} must end in .sock: dockerd names the plugin after the file",
                socket.display()
            ));
        }
        let dockerd_socket =
            absolute("dockerd_socket", raw.dockerd_socket, DEFAULT_DOCKERD_SOCKET)?;
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

impl Flows {
    fn check(&self) -> Result<(), String> {
        if let Some(file) = &self.file {
            if file.is_relative() {
                return Err(format!(
                    "[flows] file {} must be an absolute path (e.g. /var/log/overlayd/flows.jsonl)",
                    file.display()
                ));
            }
            if file.as_os_str().to_string_lossy().ends_with('/') || file.file_name().is_none() {
                return Err(format!(
                    "[flows] file {} names a folder; name the file (e.g. {}flows.jsonl)",
                    file.display(),
                    file.display()
                ));
            }
        }
        if self.max_bytes < 4096 {
            return Err(format!(
                "[flows] max_bytes {} is too small: use at least 4096 (default {})",
                self.max_bytes,
                super::DEFAULT_FLOWS_MAX_BYTES
            ));
        }
        if !(1..=300).contains(&self.window_s) {
            return Err(format!(
                "[flows] window_s {} is out of range: use 1..=300 (default 5)",
                self.window_s
            ));
        }
        Ok(())
    }
}

/// `[docker] key`, or `default` when left out; refused unless absolute.
fn absolute(key: &str, path: Option<PathBuf>, default: &str) -> Result<PathBuf, String> {
    let path = path.unwrap_or_else(|| PathBuf::from(default));
    if path.is_relative() {
        return Err(format!(
            "[docker] {key} {} must be an absolute path (default {default})",
            path.display()
        ));
    }
    Ok(path)
}
