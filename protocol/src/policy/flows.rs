//! The flows a policy allowed (connection tracking): a flow one rule allowed lets its
//! replies in without another check, until it has been idle for its protocol's timeout
//! (Nebula's defaults: TCP 12 minutes once both sides spoke, 1 minute before; UDP
//! 3 minutes; ICMP 10 s; other protocols 10 minutes).
//!
//! Bounded: when the table holds `capacity` flows, a new one pushes out the flow idle the
//! longest among the oldest (second chance: a flow used since it was queued goes to the
//! back of the queue instead), counted in [`FlowTable::evicted`]. Each operation costs
//! O(1) amortised; time comes in as `now`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::packet::FlowKey;
use super::{RuleId, proto};

/// Idle timeouts per protocol and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP once the responder has answered.
    pub tcp_established: Duration,
    /// TCP before any answer (a SYN nobody answered), and after FIN or RST.
    pub tcp_half_open: Duration,
    /// UDP.
    pub udp: Duration,
    /// ICMP echo.
    pub icmp: Duration,
    /// Any other protocol.
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            tcp_established: Duration::from_secs(12 * 60),
            tcp_half_open: Duration::from_secs(60),
            udp: Duration::from_secs(3 * 60),
            icmp: Duration::from_secs(10),
            other: Duration::from_secs(10 * 60),
        }
    }
}

/// The default bound on tracked flows.
pub const DEFAULT_CAPACITY: usize = 65_536;

#[derive(Debug, Clone)]
struct Entry {
    rule: RuleId,
    last_seen: Instant,
    /// The responder has sent a packet.
    answered: bool,
    /// A FIN or RST was seen.
    closing: bool,
    /// When it was (re)queued: a later `last_seen` means it was used since.
    queued_at: Instant,
}

/// What the table knows of a packet's flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    /// A packet from the side that opened the flow; the rule that allowed it.
    Forward(RuleId),
    /// A packet from the other side: a reply.
    Reply(RuleId),
    /// Not tracked (or expired): a new flow, for the policy to decide.
    New,
}

/// How long the last flow looked up may skip the map: its `last_seen` is then at most this
/// stale, far below the shortest timeout (10 s).
const RECENT: Duration = Duration::from_secs(1);

/// The fast path's flow: its key as packets carry it, what the map said, when the map
/// was last touched for it and when a packet of it last came.
#[derive(Debug, Clone, Copy)]
struct Recent {
    key: FlowKey,
    tracked: Tracked,
    touched: Instant,
    seen: Instant,
}

/// The tracked flows of one host (or of one peer of it).
#[derive(Debug)]
pub struct FlowTable {
    flows: HashMap<FlowKey, Entry>,
    /// The last packet's flow key as it came, what the map said, and when: a stream of
    /// packets of one flow (a TCP transfer) costs one comparison a packet instead of a
    /// hash lookup, the map being touched once a [`RECENT`].
    recent: Option<Recent>,
    queue: VecDeque<FlowKey>,
    capacity: usize,
    timeouts: Timeouts,
    evicted: u64,
}

impl FlowTable {
    /// An empty table of at most `capacity` (at least 1) flows.
    pub fn new(capacity: usize, timeouts: Timeouts) -> FlowTable {
        FlowTable {
            flows: HashMap::new(),
            recent: None,
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            timeouts,
            evicted: 0,
        }
    }

    /// Flows tracked now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Flows pushed out because the table was full, since it was made.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn timeout(&self, key: &FlowKey, e: &Entry) -> Duration {
        match key.proto {
            proto::TCP if e.answered && !e.closing => self.timeouts.tcp_established,
            proto::TCP => self.timeouts.tcp_half_open,
            proto::UDP => self.timeouts.udp,
            proto::ICMP | proto::ICMPV6 => self.timeouts.icmp,
            _ => self.timeouts.other,
        }
    }

    fn live(&self, key: &FlowKey, now: Instant) -> bool {
        self.flows
            .get(key)
            .is_some_and(|e| now.saturating_duration_since(e.last_seen) < self.timeout(key, e))
    }

    /// Looks up the flow of a packet with `key` and, when tracked, marks it used at `now`
    /// (`closing` for a TCP FIN or RST). Does not add: see [`insert`](Self::insert).
    pub fn track(&mut self, key: &FlowKey, closing: bool, now: Instant) -> Tracked {
        if !closing
            && let Some(recent) = &mut self.recent
            && recent.key == *key
            && now.saturating_duration_since(recent.touched) < RECENT
        {
            recent.seen = now;
            return recent.tracked;
        }
        let tracked = self.track_in_map(key, closing, now);
        self.recent = (tracked != Tracked::New && !closing).then_some(Recent {
            key: *key,
            tracked,
            touched: now,
            seen: now,
        });
        tracked
    }

    fn track_in_map(&mut self, key: &FlowKey, closing: bool, now: Instant) -> Tracked {
        if self.live(key, now) {
            let e = self.flows.get_mut(key).expect("live() found it");
            e.last_seen = now;
            e.closing |= closing;
            return Tracked::Forward(e.rule);
        }
        let back = key.reversed();
        if self.live(&back, now) {
            let e = self.flows.get_mut(&back).expect("live() found it");
            e.last_seen = now;
            e.answered = true;
            e.closing |= closing;
            return Tracked::Reply(e.rule);
        }
        Tracked::New
    }

    /// Whether the flow an ICMP error reports on (`about`, as its packet was sent) is
    /// tracked either way.
    pub fn related(&self, about: &FlowKey, now: Instant) -> Option<RuleId> {
        [*about, about.reversed()]
            .iter()
            .find(|k| self.live(k, now))
            .and_then(|k| self.flows.get(k))
            .map(|e| e.rule)
    }

    /// Tracks a new flow `key` that `rule` allowed, pushing out an old one if the table is
    /// full.
    pub fn insert(&mut self, key: FlowKey, rule: RuleId, closing: bool, now: Instant) {
        if let Some(e) = self.flows.get_mut(&key) {
            // Expired but not yet swept: it starts again.
            *e = Entry {
                rule,
                last_seen: now,
                answered: false,
                closing,
                queued_at: e.queued_at,
            };
            return;
        }
        while self.flows.len() >= self.capacity {
            self.evict_one(now);
        }
        self.flows.insert(
            key,
            Entry {
                rule,
                last_seen: now,
                answered: false,
                closing,
                queued_at: now,
            },
        );
        self.queue.push_back(key);
    }

    /// Removes the first queued flow that was not used since it was queued (or has
    /// expired); a used one goes to the back once.
    fn evict_one(&mut self, now: Instant) {
        // The flow the fast path serves was used since its `last_seen` says.
        if let Some(recent) = self.recent {
            for k in [recent.key, recent.key.reversed()] {
                if let Some(e) = self.flows.get_mut(&k) {
                    e.last_seen = e.last_seen.max(recent.seen);
                }
            }
        }
        while let Some(key) = self.queue.pop_front() {
            let Some(e) = self.flows.get(&key) else {
                continue;
            };
            let expired = now.saturating_duration_since(e.last_seen) >= self.timeout(&key, e);
            if !expired && e.last_seen > e.queued_at {
                if let Some(e) = self.flows.get_mut(&key) {
                    e.queued_at = now;
                }
                self.queue.push_back(key);
                continue;
            }
            self.flows.remove(&key);
            self.forget_recent(&key);
            if !expired {
                self.evicted += 1;
            }
            return;
        }
    }

    /// Forgets expired flows, looking at no more than `budget` of the oldest queued. Call
    /// it now and then (the daemon: every second) so that memory follows the live flows.
    pub fn sweep(&mut self, now: Instant, budget: usize) {
        for _ in 0..budget {
            let Some(key) = self.queue.pop_front() else {
                return;
            };
            match self.flows.get(&key) {
                None => {}
                Some(e) if now.saturating_duration_since(e.last_seen) >= self.timeout(&key, e) => {
                    self.flows.remove(&key);
                    self.forget_recent(&key);
                }
                Some(_) => {
                    self.queue.push_back(key);
                }
            }
        }
    }

    /// Checks every tracked flow again under a new policy: `allows` answers the rule that
    /// allows a flow now, or `None`; flows no rule allows any more are dropped. Returns how
    /// many were.
    pub fn recheck(&mut self, mut allows: impl FnMut(&FlowKey) -> Option<RuleId>) -> usize {
        self.recent = None;
        let before = self.flows.len();
        self.flows.retain(|key, e| match allows(key) {
            Some(rule) => {
                e.rule = rule;
                true
            }
            None => false,
        });
        self.queue.retain(|k| self.flows.contains_key(k));
        before - self.flows.len()
    }

    /// Drops the fast path if it names flow `key` (either way).
    fn forget_recent(&mut self, key: &FlowKey) {
        if self
            .recent
            .as_ref()
            .is_some_and(|r| r.key == *key || r.key.reversed() == *key)
        {
            self.recent = None;
        }
    }

    /// Forgets every flow.
    pub fn clear(&mut self) {
        self.recent = None;
        self.flows.clear();
        self.queue.clear();
    }
}
