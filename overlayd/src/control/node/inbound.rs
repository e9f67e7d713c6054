//! What one member may make this host hold or do, whatever it sends: its gossip waits in a
//! queue of its own, drained round-robin with every other member's ([`FairQueue`]); it has
//! at most one large frame (a sync) being read at a time ([`LargeFrames`]); and a bundle
//! of records it sends is checked on a blocking thread ([`prefilter`]) before the member
//! task, which runs SWIM, applies what is left. These are the per-member bounds of issue
//! 14 item 7; the connection and stream caps are in `net` and `tls`.
//!
//! Fair queueing as in memberlist/Serf's per-node handling is not available to foca; the
//! queue follows the classic deficit-free round robin of per-flow queues (Nagle's "fair
//! queueing", RFC 970): one member's backlog costs the others at most one turn.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use protocol::policy::{PolicyRecordError, SignedPolicy};
use protocol::records::{Directory, RecordError, SignedMemberRecord, SignedRevocation};
use tokio::sync::Notify;

pub(super) use super::core::TokenBucket;
use super::core::{Now, Throttle};
use super::lock;
use crate::control::msg::Bundle;

/// Gossip datagrams queued per member at most; more from it are dropped (SWIM tolerates
/// loss). A member's SWIM traffic is a few datagrams per probe period.
pub(super) const QUEUED_PER_MEMBER: usize = 64;

/// Per-member bounded queues drained round-robin; cloned by every producer.
pub(super) struct FairQueue<T> {
    state: Arc<Mutex<Queues<T>>>,
    ready: Arc<Notify>,
    per_key: usize,
}

impl<T> Clone for FairQueue<T> {
    fn clone(&self) -> Self {
        FairQueue {
            state: self.state.clone(),
            ready: self.ready.clone(),
            per_key: self.per_key,
        }
    }
}

struct Queues<T> {
    queues: HashMap<u32, VecDeque<T>>,
    /// Keys with something queued, in the order they are served.
    turn: VecDeque<u32>,
}

impl<T> FairQueue<T> {
    pub(super) fn new(per_key: usize) -> FairQueue<T> {
        FairQueue {
            state: Arc::new(Mutex::new(Queues {
                queues: HashMap::new(),
                turn: VecDeque::new(),
            })),
            ready: Arc::new(Notify::new()),
            per_key,
        }
    }

    /// Queues `item` from `key`; `false` (and dropped) if `key`'s queue is full.
    pub(super) fn push(&self, key: u32, item: T) -> bool {
        {
            let mut state = lock(&self.state);
            let Queues { queues, turn } = &mut *state;
            let queue = queues.entry(key).or_default();
            if queue.len() >= self.per_key {
                return false;
            }
            if queue.is_empty() {
                turn.push_back(key);
            }
            queue.push_back(item);
        }
        self.ready.notify_one();
        true
    }

    /// The next item, taking one from each key in turn.
    pub(super) fn pop(&self) -> Option<T> {
        let mut state = lock(&self.state);
        let Queues { queues, turn } = &mut *state;
        let key = turn.pop_front()?;
        let queue = queues.get_mut(&key)?;
        let item = queue.pop_front();
        if queue.is_empty() {
            queues.remove(&key);
        } else {
            turn.push_back(key);
        }
        item
    }

    /// Waits for the next item.
    pub(super) async fn recv(&self) -> T {
        loop {
            if let Some(item) = self.pop() {
                return item;
            }
            self.ready.notified().await;
        }
    }
}

/// Gossip datagrams one member connection may hand on per second, and in a burst; more are
/// dropped before they cost the member task anything (SWIM sends a member a few datagrams
/// per probe period; a full sync is a stream, not gossip).
pub(super) const GOSSIP_RATE: (f64, f64) = (100.0, 200.0);

/// Which members have a large frame being read; one each at a time.
#[derive(Clone, Default)]
pub(super) struct LargeFrames(Arc<Mutex<HashSet<u32>>>);

impl LargeFrames {
    /// The right to read one large frame from member `node`, if it has none being read.
    pub(super) fn take(&self, node: u32) -> Option<LargeFrame> {
        lock(&self.0).insert(node).then(|| LargeFrame {
            frames: self.clone(),
            node,
        })
    }
}

/// Given back on drop.
pub(super) struct LargeFrame {
    frames: LargeFrames,
    node: u32,
}

impl Drop for LargeFrame {
    fn drop(&mut self) {
        lock(&self.frames.0).remove(&self.node);
    }
}

/// The version and bytes of the policy a member holds.
type HeldPolicy = (u64, Vec<u8>);

/// What of `bundle` is worth the member task's time, decided without holding it up: every
/// record that parses and is signed by a member of this network under the CA (checked on a
/// scratch directory), one per member (the newest), and none this directory already holds;
/// revocations likewise, once each. What is refused is logged (rate-limited) as the member
/// task would; the policy, if signed by the CA for this network and not the one held.
/// Call it on a blocking thread: it verifies every record, at `now`.
pub(super) fn prefilter(
    bundle: Bundle,
    dir: &Mutex<Directory>,
    log: &Mutex<Throttle>,
    now: Now,
) -> Bundle {
    let (mut scratch, held, held_policy): (Directory, HashSet<Vec<u8>>, Option<HeldPolicy>) = {
        let dir = lock(dir);
        let held_policy = dir
            .policy()
            .map(|(_, signed)| (signed.version(), signed.to_bytes()));
        let held = dir
            .member_records()
            .map(|r| r.to_bytes())
            .chain(dir.revocations().map(|r| r.to_bytes()))
            .collect();
        (dir.empty_like(), held, held_policy)
    };
    // A transition first: the records of the new CA in this very bundle need it.
    let ca_transition = bundle.ca_transition.filter(|bytes| {
        match scratch.apply_transition_bytes(bytes, Some(now.unix)) {
            Ok(_) => true,
            Err(e) => {
                lock(log).warn(now.instant, "refused a CA transition", &e);
                false
            }
        }
    });
    // A policy passes on only if the CA signed it for this network (its signature and its
    // text checked here, off the member task); a copy of the one held is dropped, one not
    // newer than it goes on for the member task to say so (a replay, or a stale sync).
    let policy = bundle.policy.filter(|bytes| {
        if held_policy.as_ref().is_some_and(|(_, held)| held == bytes) {
            return false;
        }
        let version = held_policy.as_ref().map(|(v, _)| *v);
        match SignedPolicy::from_bytes(bytes).and_then(|p| {
            let trust = scratch.trust();
            let ca = trust.key(p.ca(), now.unix).unwrap_or(scratch.ca());
            p.verify(ca, scratch.network(), version).map(|_| ())
        }) {
            Ok(()) | Err(PolicyRecordError::NotNewer { .. }) => true,
            Err(e) => {
                lock(log).warn(now.instant, "refused a policy", &e);
                false
            }
        }
    });
    let mut revocations = Vec::new();
    let mut seen = HashSet::new();
    // Name sets are verified by the member task against its directory (they need the
    // member records of this very bundle); here only copies are dropped.
    let names: Vec<Vec<u8>> = bundle
        .names
        .into_iter()
        .filter(|bytes| seen.insert(bytes.clone()))
        .collect();
    for bytes in bundle.revocations {
        if held.contains(&bytes) || !seen.insert(bytes.clone()) {
            continue;
        }
        match SignedRevocation::from_bytes(&bytes).and_then(|r| scratch.apply_revocation(&r)) {
            Ok(_) => revocations.push(bytes),
            Err(e) => lock(log).warn(now.instant, "refused a revocation", &e),
        }
    }
    // The newest record of each member: (serial, version) → bytes.
    let mut newest: HashMap<String, ((u64, u64), Vec<u8>)> = HashMap::new();
    for bytes in bundle.members {
        if bytes.is_empty() || held.contains(&bytes) || !seen.insert(bytes.clone()) {
            continue;
        }
        let signed = match SignedMemberRecord::from_bytes(&bytes) {
            Ok(signed) => signed,
            Err(e) => {
                lock(log).warn(now.instant, "refused a member record", &e);
                continue;
            }
        };
        let Ok(cert) = signed.record().certificate.unverified_body() else {
            continue;
        };
        let rank = (cert.serial, signed.record().version);
        if newest
            .get(cert.node.as_str())
            .is_some_and(|(held, _)| *held >= rank)
        {
            continue;
        }
        // Only whether it is authentic is asked here; the rules against the real
        // directory (replays, conflicts) are the member task's.
        match scratch.apply_member(&signed, now.unix) {
            Ok(_)
            | Err(
                RecordError::Replay { .. }
                | RecordError::OlderCertificate { .. }
                | RecordError::KeyInUse { .. }
                | RecordError::SubnetOverlap { .. },
            ) => {
                newest.insert(cert.node.to_string(), (rank, bytes));
            }
            Err(e) => lock(log).warn(now.instant, "refused a member record", &e),
        }
    }
    Bundle {
        members: newest.into_values().map(|(_, bytes)| bytes).collect(),
        revocations,
        policy,
        names,
        ca_transition,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_member_costs_the_others_one_turn() {
        let queue = FairQueue::new(3);
        for i in 0..10 {
            let _ = queue.push(4, (4, i));
        }
        assert!(!queue.push(4, (4, 99)), "over its share: dropped");
        assert!(queue.push(2, (2, 0)));
        assert!(queue.push(3, (3, 0)));
        let order: Vec<_> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(
            order,
            vec![(4, 0), (2, 0), (3, 0), (4, 1), (4, 2)],
            "round-robin, member 4 held to 3"
        );
        assert!(queue.pop().is_none());
        // Drained keys start again at the back of the turn.
        assert!(queue.push(4, (4, 5)));
        assert_eq!(queue.pop(), Some((4, 5)));
    }

    #[tokio::test]
    async fn recv_waits_for_a_push() {
        let queue = FairQueue::new(2);
        let producer = queue.clone();
        let waiter = tokio::spawn(async move { queue.recv().await });
        tokio::task::yield_now().await;
        assert!(producer.push(7, "gossip"));
        assert_eq!(waiter.await.unwrap(), "gossip");
    }

    #[test]
    fn one_large_frame_per_member() {
        let frames = LargeFrames::default();
        let first = frames.take(4).expect("a first slot");
        assert!(frames.take(4).is_none());
        assert!(frames.take(2).is_some(), "other members have their own");
        drop(first);
        assert!(frames.take(4).is_some());
    }

    #[test]
    fn a_token_bucket_allows_its_burst_then_its_rate() {
        let start = std::time::Instant::now();
        let mut b = TokenBucket::new((2.0, 4.0), start);
        assert_eq!((0..10).filter(|_| b.take(start)).count(), 4, "the burst");
        assert!(!b.full(start));
        let later = start + std::time::Duration::from_millis(1500);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3, "1.5 s at 2/s");
        let much_later = later + std::time::Duration::from_secs(60);
        assert!(b.full(much_later));
        assert_eq!(
            (0..10).filter(|_| b.take(much_later)).count(),
            4,
            "never more than the burst"
        );
        // time going backwards takes nothing and gives nothing
        assert!(!b.take(start), "an earlier time refills nothing");
    }
}
