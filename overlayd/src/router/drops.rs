//! What the router counts and logs of the packets it drops: [`DropCounters`] (one atomic
//! per [`DropReason`], for the router and for each peer) and [`LogLimiter`] (at most one
//! line a second per reason). It decides nothing about packets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use keys::PublicKey;
use protocol::drops::DropReason;

/// Drop counters, one per [`DropReason`].
#[derive(Debug, Default)]
pub struct DropCounters([AtomicU64; DropReason::ALL.len()]);

impl DropCounters {
    /// Counts one drop.
    pub fn add(&self, reason: DropReason) {
        self.0[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` drops (a removed peer's, moved to the router).
    pub fn add_many(&self, reason: DropReason, n: u64) {
        self.0[reason.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// The current count for a reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()].load(Ordering::Relaxed)
    }

    /// Non-zero counts, by reason.
    pub fn snapshot(&self) -> std::collections::BTreeMap<DropReason, u64> {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Logs a line per reason at most once per second, with how many were suppressed.
#[derive(Debug)]
pub struct LogLimiter {
    start: Instant,
    last_ms: [AtomicU64; DropReason::ALL.len()],
    suppressed: [AtomicU64; DropReason::ALL.len()],
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter {
            start: Instant::now(),
            last_ms: Default::default(),
            suppressed: Default::default(),
        }
    }
}

impl LogLimiter {
    /// Logs `reason` for a packet from or to `addr`, unless one was logged in the last second.
    pub fn log(&self, reason: DropReason, addr: Option<SocketAddr>, peer: Option<&PublicKey>) {
        let now = self.start.elapsed().as_millis() as u64 + 1000;
        let slot = &self.last_ms[reason.index()];
        let last = slot.load(Ordering::Relaxed);
        if now < last + 1000
            || slot
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed[reason.index()].fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.suppressed[reason.index()].swap(0, Ordering::Relaxed);
        let peer = peer.map(PublicKey::short);
        tracing::info!(
            reason = reason.as_str(),
            endpoint = ?addr,
            peer = peer.as_deref(),
            suppressed,
            "dropped packet (logged at most once a second per reason)"
        );
    }
}
