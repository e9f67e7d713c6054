//! Security events (issue 17): what an operator is told about attacks and about the
//! network's health, kept in memory (the last [`CAPACITY`]), logged at `warn` with a
//! stable `kind` field, and served to `overlayctl events [--follow]`.
//!
//! Bounded in every way: a flood of one kind about one peer (a spoofing peer, a handshake
//! storm) becomes one event per second with a count, and one log line per second; the
//! ring forgets the oldest. Emitting is cheap enough for the packet path's slow branches
//! (a drop, a refused handshake): one mutex and, at most once a second per kind and peer,
//! one log line.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;

use protocol::api::{EventKind, SecurityEvent};

use crate::util::lock;

/// Events kept in memory.
pub const CAPACITY: usize = 1000;
/// Events of one kind about one peer within this many milliseconds are summed.
const AGGREGATE_MS: u64 = 1000;

/// Now, in unix milliseconds (the events' clock).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The host's security events.
#[derive(Debug, Default)]
pub struct Events {
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    events: VecDeque<SecurityEvent>,
    next_seq: u64,
    /// Per kind and peer: the seq of the event still summing, and when it started.
    open: HashMap<(EventKind, Option<String>), (u64, u64)>,
}

impl Events {
    /// Records an event at `now_ms` (unix milliseconds). Within a second of an event of the
    /// same kind about the same peer, it is counted into that one instead.
    pub fn emit(
        &self,
        kind: EventKind,
        peer: Option<&str>,
        endpoint: Option<SocketAddr>,
        detail: impl FnOnce() -> String,
        now_ms: u64,
    ) {
        let mut ring = lock(&self.inner);
        let key = (kind, peer.map(str::to_owned));
        if let Some(&(seq, started)) = ring.open.get(&key)
            && now_ms.saturating_sub(started) < AGGREGATE_MS
            && let Some(e) = ring.events.iter_mut().rev().find(|e| e.seq == seq)
        {
            e.count += 1;
            return;
        }
        ring.next_seq += 1;
        let event = SecurityEvent {
            seq: ring.next_seq,
            time_unix_ms: now_ms,
            kind,
            peer: key.1.clone(),
            endpoint,
            detail: detail(),
            count: 1,
        };
        tracing::warn!(
            kind = kind.as_str(),
            peer = event.peer.as_deref().unwrap_or(""),
            endpoint = event.endpoint.map(|e| e.to_string()).unwrap_or_default(),
            "{}",
            event.detail
        );
        ring.open.insert(key, (event.seq, now_ms));
        if ring.open.len() > CAPACITY {
            ring.open
                .retain(|_, (_, started)| now_ms.saturating_sub(*started) < AGGREGATE_MS);
        }
        ring.events.push_back(event);
        while ring.events.len() > CAPACITY {
            ring.events.pop_front();
        }
    }

    /// The events after `seq` (all kept for 0), oldest first.
    pub fn after(&self, seq: u64) -> Vec<SecurityEvent> {
        lock(&self.inner)
            .events
            .iter()
            .filter(|e| e.seq > seq)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_one_kind_about_one_peer_is_one_event_a_second() {
        let events = Events::default();
        for ms in 0..2500 {
            events.emit(
                EventKind::SpoofedSource,
                Some("h2"),
                None,
                || "spoofed".into(),
                ms,
            );
        }
        events.emit(
            EventKind::SpoofedSource,
            Some("h3"),
            None,
            || "spoofed".into(),
            10,
        );
        let all = events.after(0);
        assert_eq!(all.len(), 4, "{all:?}");
        let h2: Vec<u64> = all
            .iter()
            .filter(|e| e.peer.as_deref() == Some("h2"))
            .map(|e| e.count)
            .collect();
        assert_eq!(h2, vec![1000, 1000, 500]);
        assert_eq!(events.after(all[1].seq).len(), 2);
    }

    #[test]
    fn the_ring_keeps_the_last_thousand() {
        let events = Events::default();
        for i in 0..1500u64 {
            events.emit(
                EventKind::MemberDown,
                Some(&format!("h{i}")),
                None,
                || "down".into(),
                i,
            );
        }
        let all = events.after(0);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].seq, 501);
        assert_eq!(all.last().unwrap().seq, 1500);
    }
}
