//! Flow logs (issue 17): packets and bytes per flow, per direction and verdict, summed over
//! a window (5 s in the daemon, as Tailscale's network flow logs) and then taken out as
//! records. One [`FlowWindow`] per peer, filled under the peer's lock on the packet path;
//! bounded, so a peer that opens flows without end costs a fixed amount: past `capacity`
//! flows in a window, further ones are summed into one overflow record.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use super::RuleId;
use super::enforce::Direction;
use super::packet::{Classified, FlowKey, classify};

/// The default bound on flows per peer and window.
pub const DEFAULT_WINDOW_FLOWS: usize = 4096;

/// What the policy said of a flow's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Passed; with the rule that allowed the flow, when a policy is in force.
    Allowed(Option<RuleId>),
    /// Dropped by the policy.
    Denied,
}

/// Packets and bytes of one flow in one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Packets.
    pub packets: u64,
    /// Bytes of the IP packets (inner, before encryption).
    pub bytes: u64,
    /// First packet in the window (the caller's clock, e.g. unix milliseconds).
    pub first: u64,
    /// Last packet in the window.
    pub last: u64,
}

impl Counts {
    fn add(&mut self, bytes: usize, now: u64) {
        if self.packets == 0 {
            self.first = now;
        }
        self.packets += 1;
        self.bytes += bytes as u64;
        self.last = now;
    }
}

/// One flow's line in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRecord {
    /// The 5-tuple as the packets carried it; `None` for the overflow record.
    pub key: Option<FlowKey>,
    /// Which way the packets went.
    pub direction: Direction,
    /// What the policy said.
    pub verdict: Verdict,
    /// What passed.
    pub counts: Counts,
}

/// A flow as the window tells flows apart: its key, its direction, what the policy said.
type Slot = (FlowKey, Direction, Verdict);

/// The flows of one peer in the current window.
///
/// A stream of packets of one flow (a TCP transfer) costs one comparison a packet: the
/// last flow counted is remembered with its place, so the map is looked up only when
/// the flow changes.
#[derive(Debug)]
pub struct FlowWindow {
    /// Where each flow's counts are in `flows`.
    index: HashMap<Slot, usize>,
    flows: Vec<(Slot, Counts)>,
    /// The last flow counted and its place in `flows`.
    recent: Option<(Slot, usize)>,
    overflow: HashMap<(Direction, Verdict), Counts>,
    capacity: usize,
}

impl FlowWindow {
    /// An empty window of at most `capacity` flows (nothing allocated until a packet).
    pub fn new(capacity: usize) -> FlowWindow {
        FlowWindow {
            index: HashMap::new(),
            flows: Vec::new(),
            recent: None,
            overflow: HashMap::new(),
            capacity,
        }
    }

    /// Counts one packet (`packet` is the inner IP packet); one whose headers cannot be
    /// read is not counted (it has no flow).
    pub fn add(&mut self, packet: &[u8], direction: Direction, verdict: Verdict, now: u64) {
        let key = match classify(packet) {
            Classified::Flow { key, .. } => key,
            Classified::IcmpError { about } => about,
            Classified::Malformed => return,
        };
        self.add_key(key, packet.len(), direction, verdict, now);
    }

    /// Counts one packet of flow `key`.
    pub fn add_key(
        &mut self,
        key: FlowKey,
        bytes: usize,
        direction: Direction,
        verdict: Verdict,
        now: u64,
    ) {
        let slot = (key, direction, verdict);
        if let Some((recent, at)) = &self.recent
            && *recent == slot
            && let Some((_, counts)) = self.flows.get_mut(*at)
        {
            counts.add(bytes, now);
            return;
        }
        let at = match self.index.entry(slot) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) if self.flows.len() < self.capacity => {
                self.flows.push((slot, Counts::default()));
                *e.insert(self.flows.len() - 1)
            }
            Entry::Vacant(_) => {
                self.overflow
                    .entry((direction, verdict))
                    .or_default()
                    .add(bytes, now);
                return;
            }
        };
        if let Some((_, counts)) = self.flows.get_mut(at) {
            counts.add(bytes, now);
        }
        self.recent = Some((slot, at));
    }

    /// Whether nothing was counted since the last [`take`](Self::take).
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty() && self.overflow.is_empty()
    }

    /// The window's records (flows in the order of their first packet, then the
    /// overflow), leaving the window empty.
    pub fn take(&mut self) -> Vec<FlowRecord> {
        self.index.clear();
        self.recent = None;
        let mut out: Vec<FlowRecord> = self
            .flows
            .drain(..)
            .map(|((key, direction, verdict), counts)| FlowRecord {
                key: Some(key),
                direction,
                verdict,
                counts,
            })
            .collect();
        out.sort_by_key(|r| r.counts.first);
        out.extend(
            self.overflow
                .drain()
                .map(|((direction, verdict), counts)| FlowRecord {
                    key: None,
                    direction,
                    verdict,
                    counts,
                }),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::policy::proto;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            proto: proto::UDP,
            src: IpAddr::from([10, 42, 1, 2]),
            dst: IpAddr::from([10, 42, 2, 2]),
            src_port: port,
            dst_port: 53,
        }
    }

    #[test]
    fn packets_of_a_flow_are_summed_per_direction_and_verdict() {
        let mut w = FlowWindow::new(8);
        let rule = Some(RuleId { index: 0, line: 3 });
        w.add_key(key(1), 100, Direction::Outbound, Verdict::Allowed(rule), 10);
        w.add_key(key(1), 50, Direction::Outbound, Verdict::Allowed(rule), 20);
        w.add_key(
            key(1).reversed(),
            70,
            Direction::Inbound,
            Verdict::Allowed(None),
            15,
        );
        w.add_key(key(2), 30, Direction::Outbound, Verdict::Denied, 30);
        let records = w.take();
        assert!(w.is_empty());
        assert_eq!(records.len(), 3);
        assert_eq!(
            records[0].counts,
            Counts {
                packets: 2,
                bytes: 150,
                first: 10,
                last: 20
            }
        );
        assert_eq!(records[1].direction, Direction::Inbound);
        assert_eq!(records[2].verdict, Verdict::Denied);
    }

    #[test]
    fn flows_past_the_bound_are_summed_into_one_overflow_record() {
        let mut w = FlowWindow::new(100);
        for port in 0..10_000u16 {
            w.add_key(
                key(port),
                10,
                Direction::Inbound,
                Verdict::Allowed(None),
                u64::from(port),
            );
        }
        let records = w.take();
        assert_eq!(records.len(), 101);
        let overflow = records.last().unwrap();
        assert_eq!(overflow.key, None);
        assert_eq!(overflow.counts.packets, 9_900);
        assert_eq!(overflow.counts.bytes, 99_000);
    }

    #[test]
    fn interleaved_flows_are_summed_apart_and_the_window_is_reusable() {
        let mut w = FlowWindow::new(8);
        let allow = Verdict::Allowed(None);
        for (i, port) in [1, 1, 2, 1, 2, 2, 1].into_iter().enumerate() {
            w.add_key(
                key(port),
                10 * usize::from(port),
                Direction::Outbound,
                allow,
                i as u64,
            );
        }
        w.add_key(key(1), 1, Direction::Inbound, allow, 9);
        let records = w.take();
        let counts: Vec<(u16, Direction, u64, u64, u64, u64)> = records
            .iter()
            .map(|r| {
                let c = r.counts;
                (
                    r.key.unwrap().src_port,
                    r.direction,
                    c.packets,
                    c.bytes,
                    c.first,
                    c.last,
                )
            })
            .collect();
        assert_eq!(
            counts,
            vec![
                (1, Direction::Outbound, 4, 40, 0, 6),
                (2, Direction::Outbound, 3, 60, 2, 5),
                (1, Direction::Inbound, 1, 1, 9, 9),
            ]
        );
        // Taken: counting starts again from nothing, the fast path too.
        w.add_key(key(1), 5, Direction::Outbound, allow, 20);
        let again = w.take();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].counts.packets, 1);
    }
}
