//! Text renderings of API answers. Pure: the current time comes in as `now_unix`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ipnet::IpNet;
use protocol::api::{ConfigInForce, Membership, PeerPath, PeerStatus, Status};
use protocol::drops::DropReason;

use crate::when;

fn drops(map: &BTreeMap<DropReason, u64>) -> String {
    if map.is_empty() {
        return "-".to_owned();
    }
    map.iter()
        .map(|(r, n)| format!("{}={n}", r.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Bytes in B, KiB, MiB or GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn age(seconds: Option<f64>) -> String {
    match seconds {
        None => "never".to_owned(),
        Some(s) if s < 120.0 => format!("{s:.0}s ago"),
        Some(s) if s < 7200.0 => format!("{:.0}m ago", s / 60.0),
        Some(s) => format!("{:.0}h ago", s / 3600.0),
    }
}

/// Comma-separated, or `-` for none.
pub fn list<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        return "-".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `overlayctl status`.
pub fn status(s: &Status, now_unix: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "public key:   {}", s.public_key);
    let _ = writeln!(out, "listen port:  {}", s.listen_port);
    let _ = writeln!(out, "interface:    {} (mtu {})", s.tun_name, s.mtu);
    let _ = writeln!(
        out,
        "address:      {}",
        s.address.map_or("-".to_owned(), |a| a.to_string())
    );
    let _ = writeln!(out, "subnets:      {}", list::<IpNet>(&s.subnets));
    let _ = writeln!(
        out,
        "offload:      tun {} / udp gso {}",
        on(s.tun_offload),
        on(s.udp_gso)
    );
    let _ = writeln!(out, "peers:        {}", s.peer_count);
    let _ = writeln!(out, "uptime:       {}s", s.uptime_s);
    let _ = writeln!(out, "drops:        {}", drops(&s.drops));
    if let Some(c) = &s.config {
        config_in_force(&mut out, c, now_unix);
    }
    match &s.member {
        Some(m) => membership(&mut out, m, now_unix),
        None => {
            let _ = writeln!(
                out,
                "network:      none (static peers only; `overlayctl init` or `overlayctl join` to be a member)"
            );
        }
    }
    out
}

/// The config part of `overlayctl status`: the file in force, and the last reload.
fn config_in_force(out: &mut String, c: &ConfigInForce, now_unix: u64) {
    let _ = writeln!(
        out,
        "config:       {} (sha256 {}, read {})",
        c.path,
        crate::manage::short(&c.sha256),
        when::ago(c.loaded_unix, now_unix)
    );
    for line in &c.restart_required {
        let _ = writeln!(out, "  waiting for a restart: {line}");
    }
    match &c.last_reload {
        None => {}
        Some(r) if r.applied => {
            let _ = writeln!(
                out,
                "last reload:  applied {} ({})",
                when::ago(r.at_unix, now_unix),
                if r.changed.is_empty() {
                    "nothing changed".to_owned()
                } else {
                    r.changed.join("; ")
                }
            );
        }
        Some(r) => {
            let _ = writeln!(
                out,
                "last reload:  refused {}: {}",
                when::ago(r.at_unix, now_unix),
                r.error.as_deref().unwrap_or("-")
            );
        }
    }
}

/// The member part of `overlayctl status`.
fn membership(out: &mut String, m: &Membership, now_unix: u64) {
    let _ = writeln!(out, "network:      {}", m.network);
    if m.left {
        let _ = writeln!(
            out,
            "membership:   left (the other members have dropped this host)"
        );
    }
    let _ = writeln!(out, "network cidr: {}", m.cidr);
    if !m.ranges.is_empty() {
        let _ = writeln!(out, "extra ranges: {}", list(&m.ranges));
    }
    let _ = writeln!(out, "node name:    {}", m.name);
    let _ = writeln!(out, "node subnets: {}", list(&m.subnets));
    let _ = writeln!(out, "groups:       {}", list(&m.groups));
    let _ = writeln!(out, "network CA:   {}", m.ca_fingerprint);
    if let Some(ca) = &m.ca {
        if ca.certificate_ca != m.ca_fingerprint {
            let _ = writeln!(
                out,
                "certificate CA: {} (renewing under the network CA)",
                ca.certificate_ca
            );
        }
        if let (Some(old), Some(at)) = (&ca.retiring_ca, ca.retires_unix) {
            let _ = writeln!(
                out,
                "CA rotation:  {old} trusted until {}, then retired",
                crate::when::utc(at)
            );
        }
    }
    let _ = writeln!(
        out,
        "certificate:  expires {} ({})",
        when::utc(m.certificate_expires_unix),
        when::until(m.certificate_expires_unix, now_unix)
    );
    if m.certificate_serial != 0 {
        let renewed = match m.certificate_renewed_unix {
            Some(t) => format!("last renewed {}", when::utc(t)),
            None => "not renewed yet".to_string(),
        };
        let _ = writeln!(
            out,
            "renewal:      serial {}, {renewed}; next {}",
            m.certificate_serial,
            when::utc(m.certificate_renew_at_unix)
        );
    }
    let _ = writeln!(
        out,
        "admin:        {}",
        if m.admin {
            "yes (holds the network CA key)"
        } else {
            "no"
        }
    );
    let _ = writeln!(out, "control port: {}", m.control_port);
    let _ = writeln!(out, "members:      {} alive", m.member_count);
}

fn on(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// `overlayctl peers`: ADDRESS is the peer's overlay address (the first of its first
/// subnet), ENDPOINT its underlay one, PATH how its datagrams go (`direct`, `punched`
/// through a NAT, or `relayed(NAME)` through member NAME).
pub fn peers(peers: &[PeerStatus]) -> String {
    let header = [
        "NAME",
        "STATE",
        "PUBLIC KEY",
        "ENDPOINT",
        "PATH",
        "ADDRESS",
        "SUBNETS",
        "HANDSHAKE",
        "RX",
        "TX",
        "DROPS",
    ];
    let rows: Vec<[String; 11]> = peers
        .iter()
        .map(|p| {
            [
                p.name.clone().unwrap_or_else(|| "-".to_owned()),
                p.state.map_or("-", |s| s.as_str()).to_owned(),
                p.public_key.to_string(),
                p.endpoint.map_or("-".to_owned(), |e| e.to_string()),
                match (p.path, &p.relay) {
                    (Some(PeerPath::Relayed), Some(relay)) => format!("relayed({relay})"),
                    (Some(path), _) => path.as_str().to_owned(),
                    (None, _) => "-".to_owned(),
                },
                p.address.map_or("-".to_owned(), |a| a.to_string()),
                if p.subnets.is_empty() {
                    "-".to_owned()
                } else {
                    p.subnets
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                },
                age(p.last_handshake_s),
                bytes(p.rx_bytes),
                bytes(p.tx_bytes),
                drops(&p.drops),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, "{:<w$}  ", c, w = widths[i]);
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(&mut out, &header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&mut out, &cells);
    }
    if rows.is_empty() {
        let _ = writeln!(out, "(no peers)");
    }
    out
}

/// `overlayctl names`: one line per name, this host's first within a name.
pub fn names(names: &[protocol::api::NameInfo]) -> String {
    let header = ["NAME", "ALIASES", "ADDRESS", "NETWORK", "OWNER", "AGE"];
    let rows: Vec<[String; 6]> = names
        .iter()
        .map(|n| {
            [
                n.name.clone(),
                list(&n.aliases),
                n.address.to_string(),
                format!("{} ({})", n.network, n.range),
                if n.local {
                    format!("{} (this host)", n.owner)
                } else {
                    n.owner.clone()
                },
                age(Some(n.age_s as f64)),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, "{:<w$}  ", c, w = widths[i]);
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(&mut out, &header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&mut out, &cells);
    }
    if rows.is_empty() {
        let _ = writeln!(out, "(no names)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::api::MemberState;

    #[test]
    fn names_show_owner_and_age() {
        let n = protocol::api::NameInfo {
            name: "web".into(),
            aliases: vec!["api".into()],
            address: "10.42.2.2".parse().unwrap(),
            network: "ovl".into(),
            range: "10.42.0.0/16".parse().unwrap(),
            owner: "h2".into(),
            local: false,
            age_s: 7,
        };
        let out = names(&[n]);
        assert!(out.starts_with("NAME"), "{out}");
        assert!(
            out.contains("web   api      10.42.2.2  ovl (10.42.0.0/16)  h2     7s ago"),
            "{out}"
        );
        assert_eq!(names(&[]).lines().last(), Some("(no names)"));
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(12), "12 B");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    fn static_peer(key: keys::PublicKey) -> PeerStatus {
        PeerStatus {
            name: None,
            state: None,
            address: Some("10.42.2.1".parse().unwrap()),
            public_key: key,
            endpoint: Some("198.18.0.12:51820".parse().unwrap()),
            subnets: vec!["10.42.2.0/24".parse().unwrap()],
            last_handshake_s: Some(3.2),
            rx_bytes: 1000,
            tx_bytes: 3 << 20,
            persistent_keepalive: None,
            drops: [(DropReason::SourceNotAllowed, 4)].into_iter().collect(),
            origin: None,
            path: Some(PeerPath::Direct),
            relay: None,
        }
    }

    #[test]
    fn peers_table_has_every_column() {
        let key = keys::PrivateKey::generate().public_key();
        let member_key = keys::PrivateKey::generate().public_key();
        let member = PeerStatus {
            name: Some("node-b".to_owned()),
            state: Some(MemberState::Suspect),
            endpoint: None,
            address: None,
            subnets: vec![],
            last_handshake_s: None,
            drops: BTreeMap::new(),
            path: None,
            ..static_peer(member_key)
        };
        let relayed = PeerStatus {
            name: Some("node-c".to_owned()),
            state: Some(MemberState::Alive),
            path: Some(PeerPath::Relayed),
            relay: Some("node-r".to_owned()),
            ..static_peer(member_key)
        };
        let text = peers(&[static_peer(key), member, relayed]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[3].contains("198.18.0.12:51820  relayed(node-r)  10.42.2.1"),
            "{text}"
        );
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NAME",
                "STATE",
                "PUBLIC",
                "KEY",
                "ENDPOINT",
                "PATH",
                "ADDRESS",
                "SUBNETS",
                "HANDSHAKE",
                "RX",
                "TX",
                "DROPS"
            ]
        );
        let static_row = lines[1];
        assert!(static_row.starts_with("-       -        "), "{text}");
        for needle in [
            &key.to_string()[..],
            "198.18.0.12:51820  direct ",
            "10.42.2.1  10.42.2.0/24",
            "3s ago",
            "1000 B",
            "3.0 MiB",
            "source_not_allowed=4",
        ] {
            assert!(static_row.contains(needle), "{needle} missing in\n{text}");
        }
        let member_row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            member_row,
            [
                "node-b",
                "suspect",
                &member_key.to_string()[..],
                "-",
                "-",
                "-",
                "-",
                "never",
                "1000",
                "B",
                "3.0",
                "MiB",
                "-"
            ]
        );
    }

    #[test]
    fn empty_peers_table() {
        assert!(peers(&[]).ends_with("(no peers)\n"));
    }

    fn status_of(member: Option<Membership>) -> Status {
        Status {
            version: "0.1.0".to_owned(),
            public_key: keys::PrivateKey::generate().public_key(),
            listen_port: 51820,
            tun_name: "ovl0".to_owned(),
            mtu: 1420,
            address: Some("10.42.1.1".parse().unwrap()),
            subnets: vec!["10.42.1.0/24".parse().unwrap()],
            tun_offload: true,
            udp_gso: false,
            peer_count: 2,
            uptime_s: 42,
            drops: BTreeMap::new(),
            member,
            config: None,
        }
    }

    fn member() -> Membership {
        Membership {
            network: "prod".to_owned(),
            cidr: "10.42.0.0/16".parse().unwrap(),
            ranges: Vec::new(),
            ca_fingerprint: "sha256:3f2a".to_owned(),
            name: "node-a".to_owned(),
            subnets: vec!["10.42.1.0/24".parse().unwrap()],
            groups: vec!["web".to_owned(), "db".to_owned()],
            certificate_expires_unix: NOW + 89 * 86_400 + 60,
            certificate_serial: 0,
            certificate_renewed_unix: None,
            certificate_renew_at_unix: 0,
            admin: true,
            control_port: 51821,
            member_count: 3,
            left: false,
            ca: None,
        }
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn status_of_a_member_shows_every_field() {
        let text = status(&status_of(Some(member())), NOW);
        for line in [
            "listen port:  51820",
            "interface:    ovl0 (mtu 1420)",
            "address:      10.42.1.1",
            "offload:      tun on / udp gso off",
            "network:      prod",
            "network cidr: 10.42.0.0/16",
            "node name:    node-a",
            "node subnets: 10.42.1.0/24",
            "groups:       web, db",
            "network CA:   sha256:3f2a",
            "certificate:  expires 2024-02-11 22:14:20 UTC (in 89 days)",
            "admin:        yes (holds the network CA key)",
            "control port: 51821",
            "members:      3 alive",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        assert!(!text.contains("left"), "{text}");
    }

    #[test]
    fn status_of_a_member_that_left_with_an_expired_certificate() {
        let m = Membership {
            admin: false,
            left: true,
            groups: vec![],
            certificate_expires_unix: NOW - 1,
            certificate_serial: 0,
            certificate_renewed_unix: None,
            certificate_renew_at_unix: 0,
            ..member()
        };
        let text = status(&status_of(Some(m)), NOW);
        for line in [
            "membership:   left (the other members have dropped this host)",
            "groups:       -",
            "admin:        no",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        assert!(text.contains("UTC (expired)"), "{text}");
    }

    #[test]
    fn status_in_static_mode() {
        let text = status(&status_of(None), NOW);
        assert!(
            text.contains("network:      none (static peers only"),
            "{text}"
        );
        assert!(!text.contains("node name"), "{text}");
    }
}
