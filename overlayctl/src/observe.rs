//! `overlayctl events`: the daemon's security events, once or followed (`--follow` asks
//! for what is new every second, like `tail -f`).
//!
//! The renderings are pure; the handlers do the I/O.

use std::path::Path;
use std::time::Duration;

use protocol::api::{EVENTS_PATH, SecurityEvent};
use serde::de::DeserializeOwned;

use crate::client;
use crate::when;

/// How often `--follow` asks.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Something with a sequence number, printed as a line.
trait Line {
    fn seq(&self) -> u64;
    fn line(&self) -> String;
}

impl Line for SecurityEvent {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn line(&self) -> String {
        event_line(self)
    }
}

/// `overlayctl events [--follow] [--json]`.
pub fn events(socket: &Path, follow: bool, json: bool) -> anyhow::Result<()> {
    print_since::<SecurityEvent>(socket, EVENTS_PATH, follow, json)
}

fn print_since<T: DeserializeOwned + serde::Serialize + Line>(
    socket: &Path,
    path: &str,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut after = 0;
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
}
