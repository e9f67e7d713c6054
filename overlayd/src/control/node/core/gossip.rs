//! What rides on SWIM: gossiped items (a member record or a revocation, tagged by its
//! first byte), the key foca uses to drop an item a newer one replaces, and the broadcast
//! handler that verifies and applies each through the directory. Also foca's timers and
//! the throttle that keeps a flood of bad input to one warning a second. No I/O, no clock:
//! the time is the caller's.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foca::{BroadcastHandler, Invalidates, Timer};
use keys::Name;
use protocol::membership::NodeId;
use protocol::records::{Applied, Directory, RecordError, SignedMemberRecord, SignedRevocation};

use super::limits::RecordUpdates;
use super::{Now, lock};

/// Tag of a member record in a gossiped item.
pub(super) const TAG_MEMBER: u8 = 0;
/// Tag of a revocation.
pub(super) const TAG_REVOCATION: u8 = 1;

/// Identifies a gossiped item, so that foca stops spreading an item a newer one replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordKey {
    tag: u8,
    name: Name,
    serial: u64,
    version: u64,
}

impl Invalidates for RecordKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.tag == other.tag
            && self.name == other.name
            && (self.serial, self.version) >= (other.serial, other.version)
    }
}

/// What the core and its broadcast handler (owned by foca) share: the time of the event
/// being handled, set by the core before it calls foca, and whether the handler changed
/// the directory, for the core to act on.
pub(super) struct Shared {
    pub(super) now: Now,
    pub(super) changed: bool,
    /// How often each member's record may change, whichever way it comes.
    pub(super) updates: RecordUpdates,
}

/// foca's hook for piggy-backed records: verifies and applies each (through the
/// directory, at the time in [`Shared`]) and tells foca to pass on only what was new.
pub(super) struct RecordHandler {
    dir: Arc<Mutex<Directory>>,
    shared: Arc<Mutex<Shared>>,
    throttle: Throttle,
}

impl RecordHandler {
    pub(super) fn new(dir: Arc<Mutex<Directory>>, shared: Arc<Mutex<Shared>>) -> RecordHandler {
        RecordHandler {
            dir,
            shared,
            throttle: Throttle::default(),
        }
    }
}

impl BroadcastHandler<NodeId> for RecordHandler {
    type Key = RecordKey;
    type Error = std::convert::Infallible;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeId>,
    ) -> Result<Option<RecordKey>, Self::Error> {
        let now = lock(&self.shared).now;
        let Some(key) = item_key(data) else {
            self.throttle.warn(
                now.instant,
                "dropped a malformed gossiped record",
                &"undecodable",
            );
            return Ok(None);
        };
        if sender.is_none() {
            // Added by this host, which applied it already: spread it.
            return Ok(Some(key));
        }
        if key.tag == TAG_MEMBER && !lock(&self.shared).updates.allows(&key.name, now.instant) {
            self.throttle.warn(
                now.instant,
                "dropped a member's record update",
                &format_args!("{} changes its record too often", key.name),
            );
            return Ok(None);
        }
        let mut dir = lock(&self.dir);
        match apply_item(&mut dir, data, now.unix) {
            Ok(Applied::Unchanged) => Ok(None),
            Ok(_) => {
                let mut shared = lock(&self.shared);
                shared.changed = true;
                if key.tag == TAG_MEMBER {
                    shared.updates.charge(&key.name, now.instant);
                }
                Ok(Some(key))
            }
            // A stale copy still making its rounds after the member moved on: normal.
            Err(e @ RecordError::Replay { .. }) => {
                tracing::debug!(error = %e, "ignored a stale gossiped record");
                Ok(None)
            }
            Err(e) => {
                self.throttle
                    .warn(now.instant, "refused a gossiped record", &e);
                Ok(None)
            }
        }
    }
}

pub(super) fn tagged(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(tag);
    out.extend_from_slice(bytes);
    out
}

fn item_key(data: &[u8]) -> Option<RecordKey> {
    let (&tag, rest) = data.split_first()?;
    match tag {
        TAG_MEMBER => {
            let r = SignedMemberRecord::from_bytes(rest).ok()?;
            let body = r.record();
            let cert = body.certificate.unverified_body().ok()?;
            Some(RecordKey {
                tag,
                name: cert.node,
                serial: cert.serial,
                version: body.version,
            })
        }
        TAG_REVOCATION => {
            let r = SignedRevocation::from_bytes(rest).ok()?;
            Some(RecordKey {
                tag,
                name: r.revocation().node.clone(),
                serial: r.revocation().serial,
                version: 0,
            })
        }
        _ => None,
    }
}

fn apply_item(dir: &mut Directory, data: &[u8], now_unix: u64) -> Result<Applied, RecordError> {
    match data.split_first() {
        Some((&TAG_MEMBER, rest)) => dir.apply_member_bytes(rest, now_unix),
        Some((&TAG_REVOCATION, rest)) => dir.apply_revocation_bytes(rest),
        _ => Err(RecordError::Malformed { part: "item tag" }),
    }
}

/// Logs one line per kind at most once a second, with how many were suppressed.
#[derive(Default)]
pub struct Throttle {
    last: HashMap<&'static str, (Instant, u64)>,
}

impl Throttle {
    /// Warns `what: detail`, unless `what` was logged in the second before `now`.
    pub fn warn(&mut self, now: Instant, what: &'static str, detail: &dyn std::fmt::Display) {
        let entry = self
            .last
            .entry(what)
            .or_insert((now - Duration::from_secs(2), 0));
        if now.duration_since(entry.0) < Duration::from_secs(1) {
            entry.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut entry.1);
        entry.0 = now;
        tracing::warn!(suppressed, "{what}: {detail}");
    }
}

/// The timers foca asked for, each due at an instant.
#[derive(Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: HashMap<u64, Timer<NodeId>>,
    seq: u64,
}

impl Timers {
    pub(super) fn add(&mut self, at: Instant, timer: Timer<NodeId>) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq)));
        self.pending.insert(self.seq, timer);
    }

    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the timers due at `now`, earliest first.
    pub(super) fn due(&mut self, now: Instant) -> Vec<Timer<NodeId>> {
        let mut out = Vec::new();
        while let Some(Reverse((at, seq))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if let Some(t) = self.pending.remove(&seq) {
                out.push(t);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use keys::{CaKey, PrivateKey, SigningKey};
    use protocol::records::{MemberRecord, MemberState, Revocation};

    use super::*;
    use crate::control::admin::Issuer;
    use crate::control::now_unix;

    fn key(tag: u8, name: &str, serial: u64, version: u64) -> RecordKey {
        RecordKey {
            tag,
            name: Name::new(name).unwrap(),
            serial,
            version,
        }
    }

    #[test]
    fn a_newer_record_invalidates_an_older_one_of_the_same_member_only() {
        let old = key(TAG_MEMBER, "a", 1, 3);
        let new = key(TAG_MEMBER, "a", 1, 4);
        assert!(new.invalidates(&old));
        assert!(!old.invalidates(&new));
        // The same item again replaces itself (foca keeps one copy).
        assert!(old.invalidates(&old.clone()));
        // A new certificate counts before the version: serial 2 version 0 is newer.
        assert!(key(TAG_MEMBER, "a", 2, 0).invalidates(&new));
        assert!(!new.invalidates(&key(TAG_MEMBER, "a", 2, 0)));
        // Another member, or a revocation of the same one, is another item.
        assert!(!new.invalidates(&key(TAG_MEMBER, "b", 1, 3)));
        assert!(!new.invalidates(&key(TAG_REVOCATION, "a", 1, 0)));
        assert!(!key(TAG_REVOCATION, "a", 1, 0).invalidates(&old));
    }

    struct Network {
        ca: CaKey,
        network: Name,
    }

    impl Network {
        fn new() -> Network {
            Network {
                ca: CaKey::generate(),
                network: Name::new("testnet").unwrap(),
            }
        }

        /// A signed record of member `name` (certificate `serial`) at `version`.
        fn record(&self, name: &str, serial: u64, version: u64) -> SignedMemberRecord {
            let control = SigningKey::generate();
            let issuer = Issuer {
                ca: &self.ca,
                network: &self.network,
                cidr: "10.42.0.0/16".parse().unwrap(),
                ranges: &[],
                subnet_prefix: 24,
                certificate_lifetime_s: 365 * 86_400,
            };
            let certificate = issuer
                .issue(
                    &Name::new(name).unwrap(),
                    PrivateKey::generate().public_key(),
                    control.verifying_key(),
                    vec!["10.42.1.0/24".parse().unwrap()],
                    Vec::new(),
                    serial,
                    now_unix(),
                )
                .unwrap();
            MemberRecord {
                certificate,
                version,
                state: MemberState::Alive,
                control_port: 51821,
                endpoints: vec!["198.18.0.11:51820".parse().unwrap()],
                relay: None,
            }
            .sign(&control)
            .unwrap()
        }

        fn revocation(&self, name: &str, serial: u64) -> SignedRevocation {
            Revocation {
                network: self.network.clone(),
                node: Name::new(name).unwrap(),
                serial,
                wireguard_key: PrivateKey::generate().public_key(),
                revoked_at: now_unix(),
            }
            .sign(&self.ca)
        }
    }

    #[test]
    fn tagged_items_are_keyed_by_member_serial_and_version() {
        let net = Network::new();
        let record = net.record("a", 7, 3);
        let item = tagged(TAG_MEMBER, &record.to_bytes());
        assert_eq!(item_key(&item), Some(key(TAG_MEMBER, "a", 7, 3)));
        let revocation = net.revocation("b", 9);
        let item = tagged(TAG_REVOCATION, &revocation.to_bytes());
        assert_eq!(item_key(&item), Some(key(TAG_REVOCATION, "b", 9, 0)));
    }

    #[test]
    fn a_malformed_item_has_no_key_and_is_not_applied() {
        let net = Network::new();
        let record = net.record("a", 7, 3).to_bytes();
        let mut dir = Directory::new(net.ca.verifying_key(), net.network.clone());
        let malformed: [&[u8]; 5] = [
            &[],
            &[TAG_MEMBER],
            &[7, 1, 2, 3],
            &tagged(TAG_REVOCATION, &record),
            &tagged(TAG_MEMBER, &record[..record.len() - 1]),
        ];
        for item in malformed {
            assert_eq!(item_key(item), None, "{item:?}");
            assert!(apply_item(&mut dir, item, now_unix()).is_err(), "{item:?}");
        }
        assert!(matches!(
            apply_item(&mut dir, &[9], now_unix()),
            Err(RecordError::Malformed { part: "item tag" })
        ));
        assert_eq!(dir.all_members().count(), 0);
    }

    #[test]
    fn an_item_is_applied_once() {
        let net = Network::new();
        let mut dir = Directory::new(net.ca.verifying_key(), net.network.clone());
        let item = tagged(TAG_MEMBER, &net.record("a", 7, 3).to_bytes());
        assert!(matches!(
            apply_item(&mut dir, &item, now_unix()),
            Ok(Applied::New)
        ));
        assert!(matches!(
            apply_item(&mut dir, &item, now_unix()),
            Ok(Applied::Unchanged)
        ));
        let item = tagged(TAG_REVOCATION, &net.revocation("a", 7).to_bytes());
        assert!(!matches!(
            apply_item(&mut dir, &item, now_unix()),
            Ok(Applied::Unchanged)
        ));
        assert!(matches!(
            apply_item(&mut dir, &item, now_unix()),
            Ok(Applied::Unchanged)
        ));
    }

    #[test]
    fn timers_come_due_in_order_and_once() {
        let start = Instant::now();
        let mut timers = Timers::default();
        assert_eq!(timers.next(), None);
        timers.add(
            start + Duration::from_secs(3600),
            Timer::ProbeRandomMember(2),
        );
        timers.add(start, Timer::ProbeRandomMember(1));
        assert_eq!(timers.next(), Some(start));
        assert_eq!(timers.due(start), vec![Timer::ProbeRandomMember(1)]);
        assert!(timers.due(start).is_empty());
        assert_eq!(timers.next(), Some(start + Duration::from_secs(3600)));
        assert_eq!(
            timers.due(start + Duration::from_secs(3600)),
            vec![Timer::ProbeRandomMember(2)]
        );
    }

    #[test]
    fn the_throttle_logs_a_kind_once_a_second() {
        let start = Instant::now();
        let mut throttle = Throttle::default();
        throttle.warn(start, "a", &"first");
        throttle.warn(start + Duration::from_millis(500), "a", &"suppressed");
        throttle.warn(start + Duration::from_millis(500), "b", &"another kind");
        assert_eq!(throttle.last["a"], (start, 1));
        throttle.warn(start + Duration::from_secs(1), "a", &"again");
        assert_eq!(throttle.last["a"], (start + Duration::from_secs(1), 0));
    }
}
