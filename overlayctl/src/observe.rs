//! `overlayctl events` and `overlayctl flows`: the daemon's security events and flow log,
//! once or followed (`--follow` asks for what is new every second, like `tail -f`).
//!
//! The renderings are pure; the handlers do the I/O.

use std::path::Path;
use std::time::Duration;

use protocol::api::{EVENTS_PATH, FLOWS_PATH, FlowLogEntry, SecurityEvent};
use serde::de::DeserializeOwned;

use crate::client;
use crate::when;

/// How often `--follow` asks.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Something with a sequence number, printed as a line (of a table, when it has a header).
trait Line {
    fn seq(&self) -> u64;
    fn line(&self) -> String;
    fn header() -> Option<&'static str> {
        None
    }
}

impl Line for SecurityEvent {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn line(&self) -> String {
        event_line(self)
    }
}

impl Line for FlowLogEntry {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn line(&self) -> String {
        flow_line(self)
    }
    fn header() -> Option<&'static str> {
        Some(FLOW_HEADER)
    }
}

/// `overlayctl events [--follow] [--json]`.
pub fn events(socket: &Path, follow: bool, json: bool) -> anyhow::Result<()> {
    print_since::<SecurityEvent>(socket, EVENTS_PATH, follow, json)
}

/// `overlayctl flows [--follow] [--json]`.
pub fn flows(socket: &Path, follow: bool, json: bool) -> anyhow::Result<()> {
    print_since::<FlowLogEntry>(socket, FLOWS_PATH, follow, json)
}

fn print_since<T: DeserializeOwned + serde::Serialize + Line>(
    socket: &Path,
    path: &str,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut after = 0;
    if let Some(header) = T::header().filter(|_| !json) {
        println!("{header}");
    }
    loop {
        let items: Vec<T> = client::get(socket, &format!("{path}?after={after}"))?;
        for item in &items {
            if json {
                println!("{}", serde_json::to_string(item)?);
            } else {
                println!("{}", item.line());
            }
            after = after.max(item.seq());
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

fn time(unix_ms: u64) -> String {
    let utc = when::utc(unix_ms / 1000);
    // `2026-11-26 14:21:47 UTC` -> `2026-11-26 14:21:47.123`
    format!("{}.{:03}", utc.trim_end_matches(" UTC"), unix_ms % 1000)
}

fn event_line(e: &SecurityEvent) -> String {
    let mut line = format!("{} {}", time(e.time_unix_ms), e.kind.as_str());
    if let Some(peer) = &e.peer {
        line += &format!(" peer={peer}");
    }
    if let Some(endpoint) = e.endpoint {
        line += &format!(" endpoint={endpoint}");
    }
    if e.count > 1 {
        line += &format!(" count={}", e.count);
    }
    line + ": " + &e.detail
}

/// The flow table's header; [`flow_line`] pads its columns to it.
const FLOW_HEADER: &str = "TIME                    DIR PROTO SOURCE                -> DESTINATION           PEER          PACKETS        BYTES VERDICT RULE GROUPS";

fn flow_line(f: &FlowLogEntry) -> String {
    let proto = match f.proto {
        Some(6) => "tcp".to_string(),
        Some(17) => "udp".to_string(),
        Some(1 | 58) => "icmp".to_string(),
        Some(p) => format!("p{p}"),
        None => "*".to_string(),
    };
    // The overflow line (flows past the window's bound) has no addresses.
    let addr =
        |a: Option<std::net::SocketAddr>| a.map_or_else(|| "(more)".to_string(), |a| a.to_string());
    let rule = f.rule.map_or_else(|| "-".to_string(), |r| r.to_string());
    let groups = if f.peer_groups.is_empty() {
        "-".to_string()
    } else {
        f.peer_groups.join(",")
    };
    format!(
        "{:<23} {:<3} {:<5} {:<21} -> {:<21} {:<12} {:>8} {:>12} {:<7} {:<4} {}",
        time(f.start_unix_ms),
        f.direction,
        proto,
        addr(f.src),
        addr(f.dst),
        f.peer,
        f.packets,
        f.bytes,
        f.verdict,
        rule,
        groups
    )
}

#[cfg(test)]
mod tests {
    use protocol::api::EventKind;

    use super::*;

    #[test]
    fn an_event_is_one_line_with_its_kind() {
        let e = SecurityEvent {
            seq: 3,
            time_unix_ms: 1_764_547_200_123,
            kind: EventKind::SpoofedSource,
            peer: Some("h2".into()),
            endpoint: Some("198.18.0.12:51820".parse().unwrap()),
            detail: "a packet from 10.42.9.2, outside h2's subnets".into(),
            count: 40,
        };
        assert_eq!(
            event_line(&e),
            "2025-12-01 00:00:00.123 spoofed_source peer=h2 endpoint=198.18.0.12:51820 count=40: a packet from 10.42.9.2, outside h2's subnets"
        );
    }

    #[test]
    fn a_flow_is_one_line() {
        let f = FlowLogEntry {
            seq: 1,
            start_unix_ms: 1_764_547_200_000,
            end_unix_ms: 1_764_547_204_000,
            proto: Some(6),
            src: Some("10.42.1.2:40000".parse().unwrap()),
            dst: Some("10.42.3.2:5432".parse().unwrap()),
            peer: "h3".into(),
            peer_groups: vec!["db".into()],
            direction: "out".into(),
            packets: 12,
            bytes: 3400,
            verdict: "allow".into(),
            rule: Some(2),
        };
        let line = flow_line(&f);
        assert_eq!(
            line,
            "2025-12-01 00:00:00.000 out tcp   10.42.1.2:40000       -> 10.42.3.2:5432        h3                 12         3400 allow   2    db"
        );
        // The columns line up under the header.
        for column in [
            "DIR",
            "PROTO",
            "SOURCE",
            "DESTINATION",
            "PEER",
            "VERDICT",
            "RULE",
            "GROUPS",
        ] {
            let at = FLOW_HEADER.find(column).unwrap();
            assert_ne!(line.as_bytes()[at], b' ', "{column}");
            assert_eq!(line.as_bytes()[at - 1], b' ', "{column}");
        }
        for column in ["PACKETS", "BYTES"] {
            let end = FLOW_HEADER.find(column).unwrap() + column.len();
            assert_ne!(line.as_bytes()[end - 1], b' ', "{column} right-aligned");
        }
    }
}
