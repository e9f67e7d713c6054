//! What a reload changes: the config in force against the file as read again, both
//! validated. Pure: [`Diff::between`] names each setting that differs, as one that the
//! daemon changes live or one that waits for a restart (with why), and [`merge`] makes
//! the config in force after the reload: the file's values, but the running ones for
//! every setting that needs a restart. `reload` (the daemon's side) applies the
//! difference; `docs/reload.md` has the table for operators.
//!
//! Live: this host's `address` and `subnets`, `[tuning] socket_buffer`, the `[control]`
//! timings foca can change while it runs (suspicion, gossip, full sync, rejoin), the
//! certificate lifetime an admin issues, `policy_flows` (from the next policy version),
//! `[metrics]`, `[flows]`, `[mirror]` and the static `[[peer]]`s. Restart: everything
//! made once at start ([`RESTART`]).

use std::fmt::{Debug, Display};

use super::{Config, PeerConfig};

/// The settings that need a restart, and why, as the reload names them.
pub const RESTART: &[(&str, &str)] = &[
    (
        "private_key_file",
        "every tunnel and this host's certificate are made with the key",
    ),
    (
        "listen_port",
        "the tunnels' UDP socket is bound at start, and members advertise the port in their records",
    ),
    ("tun_name", "the TUN device is made at start"),
    (
        "mtu",
        "the TUN and the data path's buffers are sized at start",
    ),
    (
        "api_socket",
        "the API socket is bound at start (this reload came through it or by SIGHUP)",
    ),
    (
        "offload",
        "the offloads are set on the TUN and the UDP socket when they are made",
    ),
    (
        "[tuning] tun_offload",
        "the TUN's offload is set when it is made",
    ),
    (
        "[tuning] udp_gso",
        "GSO is probed on the UDP socket when it is made",
    ),
    (
        "[tuning] udp_gro",
        "GRO is set on the UDP socket when it is made",
    ),
    (
        "[tuning] sched_batch",
        "the data-plane threads take their scheduling policy when they start",
    ),
    (
        "state_dir",
        "the control plane's keys and membership and the peers added with overlayctl are kept there",
    ),
    (
        "[control] listen_port",
        "the control plane's socket is bound at start, and this host's signed record names the port",
    ),
    (
        "[control] advertise",
        "this host's signed record names the address",
    ),
    (
        "[control] relay",
        "this host's signed record says whether it relays",
    ),
    (
        "[control] probe_period_ms",
        "foca (SWIM) cannot change its probe period while it runs",
    ),
    (
        "[control] probe_timeout_ms",
        "foca (SWIM) cannot change its probe timeout while it runs",
    ),
    (
        "[dns]",
        "the DNS server takes its address on the TUN and its cap once, at start",
    ),
    (
        "[docker]",
        "stopping the Docker plugin could cut one of dockerd's calls half way (bridges, veths and nftables half made), and dockerd never replays calls",
    ),
];

/// The settings that differ between the config in force and the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Applied without a restart, one line each ("mtu 1420 -> 1380" style).
    pub live: Vec<String>,
    /// Waiting for a restart, one line each naming the setting and why; they keep their
    /// running values.
    pub restart: Vec<String>,
    /// The config's static peers changed (added, removed or changed).
    pub peers: bool,
    /// `address` or `subnets` changed.
    pub addresses: bool,
    /// A `[control]` setting that the member changes live changed.
    pub control: bool,
    /// `[tuning] socket_buffer` changed.
    pub socket_buffer: bool,
    /// `[metrics]` changed.
    pub metrics: bool,
    /// `[flows]` changed.
    pub flows: bool,
    /// `[mirror]` changed.
    pub mirror: bool,
}

impl Diff {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.restart.is_empty()
    }

    /// What differs between `running` (the config in force) and `file` (the file as read
    /// again).
    pub fn between(running: &Config, file: &Config) -> Diff {
        let mut d = Diff::default();
        if running.private_key.public_key() != file.private_key.public_key() {
            d.restart_change(
                "private_key_file",
                running.private_key_file.display(),
                file.private_key_file.display(),
            );
        }
        d.restart_if("listen_port", &running.listen_port, &file.listen_port);
        d.restart_if("tun_name", &running.tun_name, &file.tun_name);
        d.restart_if("mtu", &running.mtu, &file.mtu);
        d.restart_if(
            "api_socket",
            &running.api_socket.display().to_string(),
            &file.api_socket.display().to_string(),
        );
        d.restart_if("offload", &running.offload, &file.offload);
        let (rt, ft) = (&running.tuning, &file.tuning);
        d.restart_if("[tuning] tun_offload", &rt.tun_offload, &ft.tun_offload);
        d.restart_if("[tuning] udp_gso", &rt.udp_gso, &ft.udp_gso);
        d.restart_if("[tuning] udp_gro", &rt.udp_gro, &ft.udp_gro);
        d.restart_if("[tuning] sched_batch", &rt.sched_batch, &ft.sched_batch);
        d.restart_if(
            "state_dir",
            &running.state_dir.display().to_string(),
            &file.state_dir.display().to_string(),
        );
        let (rc, fc) = (&running.control, &file.control);
        d.restart_if(
            "[control] listen_port",
            &running.control_port(),
            &file.control_port(),
        );
        d.restart_if(
            "[control] advertise",
            &Shown(rc.advertise),
            &Shown(fc.advertise),
        );
        d.restart_if("[control] relay", &Shown(rc.relay), &Shown(fc.relay));
        d.restart_if(
            "[control] probe_period_ms",
            &rc.probe_period_ms,
            &fc.probe_period_ms,
        );
        d.restart_if(
            "[control] probe_timeout_ms",
            &rc.probe_timeout_ms,
            &fc.probe_timeout_ms,
        );
        if running.dns != file.dns {
            d.restart.push(format!(
                "[dns] changed and needs a restart: {}",
                reason("[dns]")
            ));
        }
        if running.docker != file.docker {
            d.restart.push(format!(
                "[docker] changed and needs a restart: {}",
                reason("[docker]")
            ));
        }

        d.addresses |= d.live_if("address", &Shown(running.address), &Shown(file.address));
        d.addresses |= d.live_if(
            "subnets",
            &format!("{:?}", running.subnets),
            &format!("{:?}", file.subnets),
        );
        d.socket_buffer = d.live_if(
            "[tuning] socket_buffer",
            &rt.socket_buffer,
            &ft.socket_buffer,
        );
        for (name, old, new) in [
            (
                "[control] suspect_timeout_ms",
                rc.suspect_timeout_ms,
                fc.suspect_timeout_ms,
            ),
            (
                "[control] gossip_interval_ms",
                rc.gossip_interval_ms,
                fc.gossip_interval_ms,
            ),
            (
                "[control] sync_interval_ms",
                rc.sync_interval_ms,
                fc.sync_interval_ms,
            ),
            (
                "[control] rejoin_interval_ms",
                rc.rejoin_interval_ms,
                fc.rejoin_interval_ms,
            ),
        ] {
            d.control |= d.live_if(name, &old, &new);
        }
        d.control |= d.live_if(
            "[control] certificate_days",
            &rc.certificate_days,
            &fc.certificate_days,
        );
        if rc.certificate_lifetime_s != fc.certificate_lifetime_s {
            d.control |= d.live_if(
                "[control] certificate_lifetime_s",
                &rc.certificate_lifetime(),
                &fc.certificate_lifetime(),
            );
        }
        if rc.ca_transition_s != fc.ca_transition_s {
            d.live.push(format!(
                "[control] ca_transition_s {} -> {} (for the next `overlayctl ca rotate`)",
                rc.ca_transition_s, fc.ca_transition_s
            ));
        }
        if rc.key_rotation_days != fc.key_rotation_days {
            let days = |d: Option<u32>| d.map_or("off".to_string(), |d| d.to_string());
            d.control |= d.live_if(
                "[control] key_rotation_days",
                &days(rc.key_rotation_days),
                &days(fc.key_rotation_days),
            );
        }
        d.live_if(
            "[control] key_rotation_grace_s",
            &rc.key_rotation_grace_s,
            &fc.key_rotation_grace_s,
        );
        if rc.policy_flows != fc.policy_flows {
            d.live.push(format!(
                "[control] policy_flows {} -> {} (from the next policy version; the flows tracked now are kept)",
                rc.policy_flows, fc.policy_flows
            ));
        }
        d.metrics = d.live_if(
            "[metrics]",
            &Shown(running.metrics.map(|m| m.listen)),
            &Shown(file.metrics.map(|m| m.listen)),
        );
        if !d.metrics && running.metrics != file.metrics {
            d.metrics = true;
            d.live.push("[metrics] allow_all_interfaces changed".into());
        }
        if running.flows != file.flows {
            d.flows = true;
            d.live.push(format!(
                "[flows] {} -> {}",
                flows(&running.flows),
                flows(&file.flows)
            ));
        }
        if running.mirror != file.mirror {
            d.mirror = true;
            d.live.push(format!(
                "[mirror] {} -> {}",
                mirror(running.mirror.as_ref()),
                mirror(file.mirror.as_ref())
            ));
        }
        let peer_lines = peers(&running.peers, &file.peers);
        d.peers = !peer_lines.is_empty();
        d.live.extend(peer_lines);
        d
    }

    fn restart_if<T: PartialEq + Display + ?Sized>(&mut self, name: &str, old: &T, new: &T) {
        if old != new {
            self.restart_change(name, old, new);
        }
    }

    fn restart_change(&mut self, name: &str, old: impl Display, new: impl Display) {
        self.restart.push(format!(
            "{name} {old} -> {new} needs a restart: {}",
            reason(name)
        ));
    }

    fn live_if<T: PartialEq + Display + ?Sized>(&mut self, name: &str, old: &T, new: &T) -> bool {
        if old == new {
            return false;
        }
        self.live.push(format!("{name} {old} -> {new}"));
        true
    }
}

fn reason(name: &str) -> &'static str {
    RESTART
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("it is set at start", |(_, why)| why)
}

/// An optional value as the report shows it (`none` when absent).
struct Shown<T>(Option<T>);

impl<T: Display> Display for Shown<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("none"),
        }
    }
}

impl<T: PartialEq> PartialEq for Shown<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

fn flows(f: &super::Flows) -> String {
    if !f.enabled {
        return "off".into();
    }
    format!(
        "on (file {}, max_bytes {}, window_s {})",
        f.file
            .as_ref()
            .map_or("none".to_owned(), |p| p.display().to_string()),
        f.max_bytes,
        f.window_s
    )
}

fn mirror(m: Option<&crate::mirror::MirrorSpec>) -> String {
    match m {
        None => "off".into(),
        Some(m) => format!(
            "{} (cidrs {:?}, ports {:?})",
            m.interface, m.filter.cidrs, m.filter.ports
        ),
    }
}

/// One line per static peer of the file added, removed or changed.
fn peers(running: &[PeerConfig], file: &[PeerConfig]) -> Vec<String> {
    let mut lines = Vec::new();
    for old in running {
        if !file.iter().any(|p| p.public_key == old.public_key) {
            lines.push(format!("peer {} removed", old.public_key));
        }
    }
    for new in file {
        match running.iter().find(|p| p.public_key == new.public_key) {
            None => lines.push(format!("peer {} added", new.public_key)),
            Some(old) if old != new => {
                let mut what = Vec::new();
                if old.endpoint != new.endpoint {
                    what.push(format!(
                        "endpoint {} -> {}",
                        Shown(old.endpoint),
                        Shown(new.endpoint)
                    ));
                }
                if old.subnets != new.subnets {
                    what.push(format!("subnets {:?} -> {:?}", old.subnets, new.subnets));
                }
                if old.persistent_keepalive != new.persistent_keepalive {
                    what.push(format!(
                        "persistent_keepalive {} -> {}",
                        Shown(old.persistent_keepalive),
                        Shown(new.persistent_keepalive)
                    ));
                }
                if old.name != new.name {
                    what.push(format!(
                        "name {} -> {}",
                        Shown(old.name.as_ref()),
                        Shown(new.name.as_ref())
                    ));
                }
                lines.push(format!("peer {}: {}", new.public_key, what.join(", ")));
            }
            Some(_) => {}
        }
    }
    lines
}

/// The config in force after a reload: `file`'s values, but `running`'s for every setting
/// that needs a restart ([`RESTART`]), so that the daemon and what it shows agree. `Err`
/// when the two do not fit together (one sentence): a `[mirror] interface` named like the
/// running TUN.
pub fn merge(running: &Config, mut file: Config) -> Result<Config, String> {
    file.private_key = running.private_key.clone();
    file.private_key_file = running.private_key_file.clone();
    file.listen_port = running.listen_port;
    file.tun_name = running.tun_name.clone();
    file.mtu = running.mtu;
    file.api_socket = running.api_socket.clone();
    file.offload = running.offload;
    file.tuning = super::Tuning {
        socket_buffer: file.tuning.socket_buffer,
        ..running.tuning
    };
    file.state_dir = running.state_dir.clone();
    file.control.listen_port = running.control.listen_port;
    file.control.advertise = running.control.advertise;
    file.control.relay = running.control.relay;
    file.control.probe_period_ms = running.control.probe_period_ms;
    file.control.probe_timeout_ms = running.control.probe_timeout_ms;
    file.docker = running.docker.clone();
    file.dns = running.dns.clone();
    if let Some(m) = &file.mirror
        && m.interface == file.tun_name
    {
        return Err(format!(
            "[mirror] interface {:?} is the running tunnel's tun_name; give the mirror its own (e.g. \"ovlmirror0\")",
            m.interface
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests;
