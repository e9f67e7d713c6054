//! Rate limits the core and the driver share: a token bucket, and the per-member limit on
//! how often a member's record may change ([`RecordUpdates`]). Pure: the caller passes the
//! time.

use std::collections::HashMap;
use std::time::Instant;

use keys::Name;

/// A token bucket (`rate` tokens a second, at most `burst` saved): what a source may do,
/// on average and at once.
#[derive(Debug, Clone)]
pub(in crate::control::node) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub(in crate::control::node) fn new((rate, burst): (f64, f64), now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes one token at `now`, if there is one.
    pub(in crate::control::node) fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a token could be taken at `now` (none is).
    pub(in crate::control::node) fn has(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Whether the bucket is full at `now` (nothing to remember about its source).
    pub(in crate::control::node) fn full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now.max(self.at);
    }
}

/// New versions of one member's record taken per second, and in a burst. A member changes
/// its record when it starts, rejoins, leaves or its addresses change: a few times, rarely
/// twice in a second. A member that signs new versions as fast as it can (it holds its own
/// key, so every one is valid) would otherwise make every host verify, save and gossip on
/// each, and stall their failure detectors (the flood test's attack (e)).
pub(super) const RECORD_UPDATES: (f64, f64) = (1.0, 10.0);

/// How often each member's record may change here: a bucket per member, charged only for a
/// change that was applied (a copy, a stale or a forged record costs its member nothing, so
/// no one can spend another member's share).
#[derive(Default)]
pub(super) struct RecordUpdates {
    buckets: HashMap<Name, TokenBucket>,
}

impl RecordUpdates {
    /// Whether a new version of `name`'s record may be applied at `now`.
    pub(super) fn allows(&mut self, name: &Name, now: Instant) -> bool {
        self.buckets.get_mut(name).is_none_or(|b| b.has(now))
    }

    /// Charges `name` for a change applied at `now`.
    pub(super) fn charge(&mut self, name: &Name, now: Instant) {
        if self.buckets.len() >= 1024 {
            // Only verified members are charged; forget those with nothing to remember.
            self.buckets.retain(|_, b| !b.full(now));
        }
        self.buckets
            .entry(name.clone())
            .or_insert_with(|| TokenBucket::new(RECORD_UPDATES, now))
            .take(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_member_changes_its_record_at_most_at_its_rate() {
        let t0 = Instant::now();
        let (a, b): (Name, Name) = ("a".parse().unwrap(), "b".parse().unwrap());
        let mut limit = RecordUpdates::default();
        let mut taken = 0;
        for _ in 0..100 {
            if limit.allows(&a, t0) {
                limit.charge(&a, t0);
                taken += 1;
            }
        }
        assert_eq!(taken, RECORD_UPDATES.1 as usize, "the burst, then nothing");
        assert!(limit.allows(&b, t0), "another member's share is its own");
        assert!(!limit.allows(&a, t0 + Duration::from_millis(500)));
        assert!(
            limit.allows(&a, t0 + Duration::from_millis(1000)),
            "refilled"
        );
    }
}
