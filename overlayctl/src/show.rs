//! Text renderings of API answers.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use protocol::api::{PeerStatus, Status};
use protocol::drops::DropReason;

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

/// `overlayctl status`.
pub fn status(s: &Status) -> String {
    let mut out = String::new();
    let nets: Vec<String> = s.subnets.iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "public key:   {}", s.public_key);
    let _ = writeln!(out, "listen port:  {}", s.listen_port);
    let _ = writeln!(out, "interface:    {} (mtu {})", s.tun_name, s.mtu);
    let _ = writeln!(
        out,
        "address:      {}",
        s.address.map_or("-".to_owned(), |a| a.to_string())
    );
    let _ = writeln!(
        out,
        "subnets:      {}",
        if nets.is_empty() {
            "-".to_owned()
        } else {
            nets.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "offload:      tun {} / udp gso {}",
        on(s.tun_offload),
        on(s.udp_gso)
    );
    let _ = writeln!(out, "peers:        {}", s.peer_count);
    let _ = writeln!(out, "uptime:       {}s", s.uptime_s);
    let _ = writeln!(out, "drops:        {}", drops(&s.drops));
    out
}

fn on(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// `overlayctl peers`.
pub fn peers(list: &[PeerStatus]) -> String {
    let header = [
        "PUBLIC KEY",
        "ENDPOINT",
        "SUBNETS",
        "HANDSHAKE",
        "RX",
        "TX",
        "DROPS",
    ];
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|p| {
            [
                p.public_key.to_string(),
                p.endpoint.map_or("-".to_owned(), |e| e.to_string()),
                p.subnets
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
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
        let _ = writeln!(out, "(no peers configured)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_units() {
        assert_eq!(bytes(12), "12 B");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn peers_table_has_every_column() {
        let key = keys::PrivateKey::generate().public_key();
        let p = PeerStatus {
            name: None,
            state: None,
            public_key: key,
            endpoint: Some("198.18.0.12:51820".parse().unwrap()),
            subnets: vec!["10.42.2.0/24".parse().unwrap()],
            last_handshake_s: Some(3.2),
            rx_bytes: 1000,
            tx_bytes: 3 << 20,
            persistent_keepalive: None,
            drops: [(DropReason::SourceNotAllowed, 4)].into_iter().collect(),
        };
        let text = peers(&[p]);
        for needle in [
            &key.to_string()[..],
            "198.18.0.12:51820",
            "10.42.2.0/24",
            "3s ago",
            "1000 B",
            "3.0 MiB",
            "source_not_allowed=4",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
