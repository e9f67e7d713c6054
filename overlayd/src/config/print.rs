//! The validated configuration printed back as TOML (`overlayd --check-config`), secrets
//! redacted; what it prints parses again to the same configuration.

use std::fmt::Write as _;

use ipnet::IpNet;

use super::{Config, Tuning};

impl Config {
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
        let _ = writeln!(out, "\n[control]\nlisten_port = {}", self.control_port());
        if let Some(a) = c.advertise {
            let _ = writeln!(out, "advertise = \"{a}\"");
        }
        if let Some(relay) = c.relay {
            let _ = writeln!(out, "relay = {relay}");
        }
        let _ = writeln!(
            out,
            "probe_period_ms = {}\nprobe_timeout_ms = {}\nsuspect_timeout_ms = {}\ngossip_interval_ms = {}\nsync_interval_ms = {}\nrejoin_interval_ms = {}\ncertificate_days = {}\npolicy_flows = {}",
            c.probe_period_ms,
            c.probe_timeout_ms,
            c.suspect_timeout_ms,
            c.gossip_interval_ms,
            c.sync_interval_ms,
            c.rejoin_interval_ms,
            c.certificate_days,
            c.policy_flows
        );
        if let Some(s) = c.certificate_lifetime_s {
            let _ = writeln!(out, "certificate_lifetime_s = {s}");
        }
        let _ = writeln!(out, "ca_transition_s = {}", c.ca_transition_s);
        if let Some(days) = c.key_rotation_days {
            let _ = writeln!(out, "key_rotation_days = {days}");
        }
        let _ = writeln!(out, "key_rotation_grace_s = {}", c.key_rotation_grace_s);
        let d = &self.docker;
        let _ = writeln!(
            out,
            "\n[docker]\nenabled = {}\nsocket = {:?}\ndockerd_socket = {:?}\nmtu = {}",
            d.enabled,
            d.socket.display().to_string(),
            d.dockerd_socket.display().to_string(),
            d.mtu
        );
        let _ = writeln!(
            out,
            "\n[dns]\nenabled = {}\nmax_names = {}",
            self.dns.enabled, self.dns.max_names
        );
        match self.dns.address {
            Some(a) => {
                let _ = writeln!(out, "address = \"{a}\"");
            }
            None => {
                let _ = writeln!(out, "# address: the network's main range's last but one");
            }
        }
        if let Some(m) = &self.metrics {
            let _ = writeln!(out, "\n[metrics]\nlisten = \"{}\"", m.listen);
            if m.allow_all_interfaces {
                let _ = writeln!(out, "allow_all_interfaces = true");
            }
        }
        let f = &self.flows;
        let _ = writeln!(out, "\n[flows]\nenabled = {}", f.enabled);
        if let Some(file) = &f.file {
            let _ = writeln!(out, "file = {:?}", file.display().to_string());
        }
        let _ = writeln!(
            out,
            "max_bytes = {}\nwindow_s = {}",
            f.max_bytes, f.window_s
        );
        super::mirror::print(&mut out, self.mirror.as_ref());
        for p in &self.peers {
            let _ = writeln!(out, "\n[[peer]]\npublic_key = \"{}\"", p.public_key);
            if let Some(name) = &p.name {
                let _ = writeln!(out, "name = \"{name}\"");
            }
            if let Some(e) = p.endpoint {
                let _ = writeln!(out, "endpoint = \"{e}\"");
            }
            let _ = writeln!(out, "subnets = {}", list(&p.subnets));
            if let Some(k) = p.persistent_keepalive {
                let _ = writeln!(out, "persistent_keepalive = {k}");
            }
        }
        if !self.cli_peers.is_empty() {
            // Comments: they are not the file's, and what is printed parses to the file.
            let _ = writeln!(
                out,
                "\n# Static peers added with overlayctl, kept in {} (`overlayctl peer`):",
                super::peers_file::path(&self.state_dir).display()
            );
        }
        for p in &self.cli_peers {
            let _ = writeln!(out, "# [[peer]]\n# public_key = \"{}\"", p.public_key);
            if let Some(name) = &p.name {
                let _ = writeln!(out, "# name = \"{name}\"");
            }
            if let Some(e) = p.endpoint {
                let _ = writeln!(out, "# endpoint = \"{e}\"");
            }
            let _ = writeln!(out, "# subnets = {}", list(&p.subnets));
            if let Some(k) = p.persistent_keepalive {
                let _ = writeln!(out, "# persistent_keepalive = {k}");
            }
        }
        out
    }
}

fn list(nets: &[IpNet]) -> String {
    let items: Vec<String> = nets.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", items.join(", "))
}
