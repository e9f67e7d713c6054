//! The flow log's side of the router (issue 17): every packet between this host and a peer
//! that reaches the policy's check (both ways, allowed or denied, with or without a policy
//! in force) is counted into that peer's [`FlowWindow`], under the peer's lock that the
//! packet path holds anyway, so the flow log adds no lock and no shared counter to the
//! packet path. With the flow log off (the default) a packet costs one test of a flag of
//! the peer table that the batch has loaded already.
//!
//! The daemon's collector (`crate::flowlog`) takes every peer's window every 5 s with
//! [`Router::take_flows`]: one `Option::take` under each peer's lock; the records are made
//! after the lock is let go. A peer removed in the middle of a window leaves its window
//! with the router, for the next collection.
//!
//! Times are the router's coarse clock (advanced every 250 ms by [`Router::tick`], one
//! load a packet), turned into unix milliseconds when a window is taken.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use protocol::policy::enforce::Direction;
use protocol::policy::flowlog::{DEFAULT_WINDOW_FLOWS, FlowRecord, FlowWindow, Verdict};

use super::Router;
use super::peers::{Peer, PeerState, PeerTable};
use crate::events::now_unix_ms;
use crate::util::lock;

/// One peer's flows over one window, with what the log says of the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFlows {
    /// Its name (a member's, or a static peer's from the config), else its public key.
    pub peer: String,
    /// Its certificate's groups (none for a static peer).
    pub groups: Vec<String>,
    /// Its flows; `first` and `last` in unix milliseconds.
    pub records: Vec<FlowRecord>,
}

impl Router {
    /// Turns the flow log on or off. Off, the peers' windows are dropped at the next
    /// [`Router::take_flows`].
    pub fn set_flow_log(&self, on: bool) {
        let _writer = lock(&self.writer);
        let mut next = PeerTable::clone(&self.table.load_full());
        next.flow_log = on;
        self.table.store(Arc::new(next));
    }

    /// Whether the flow log is on.
    pub fn flow_log(&self) -> bool {
        self.table.load().flow_log
    }

    /// Counts `packet` into the peer's window, if the flow log is on in `table`.
    #[inline]
    pub(super) fn count_flow(
        &self,
        table: &PeerTable,
        st: &mut PeerState,
        direction: Direction,
        verdict: Verdict,
        packet: &[u8],
    ) {
        if table.flow_log {
            let now = self.clock_ms.load(Ordering::Relaxed);
            st.flows
                .get_or_insert_with(|| FlowWindow::new(DEFAULT_WINDOW_FLOWS))
                .add(packet, direction, verdict, now);
        }
    }

    /// Takes every peer's window (and those of peers removed since the last call): the
    /// flows since the last call. Call every window (5 s).
    pub fn take_flows(&self) -> Vec<PeerFlows> {
        let mut out = std::mem::take(&mut *lock(&self.flows_parked));
        for peer in self.table.load().present() {
            let window = peer.lock().flows.take();
            if let Some(flows) = window.and_then(|w| self.peer_flows(peer, w)) {
                out.push(flows);
            }
        }
        out
    }

    /// Keeps the window of a peer being removed for the next [`Router::take_flows`].
    pub(super) fn park_flows(&self, peer: &Peer, st: &mut PeerState) {
        if let Some(flows) = st.flows.take().and_then(|w| self.peer_flows(peer, w)) {
            lock(&self.flows_parked).push(flows);
        }
    }

    fn peer_flows(&self, peer: &Peer, mut window: FlowWindow) -> Option<PeerFlows> {
        if window.is_empty() {
            return None;
        }
        // Unix milliseconds at the router's epoch, give or take the clock's drift.
        let elapsed = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let base = now_unix_ms().saturating_sub(elapsed);
        let mut records = window.take();
        for r in &mut records {
            r.counts.first = r.counts.first.saturating_add(base);
            r.counts.last = r.counts.last.saturating_add(base);
        }
        let info = peer.info_full();
        Some(PeerFlows {
            peer: info
                .name
                .clone()
                .unwrap_or_else(|| peer.public_key.to_string()),
            groups: info.groups.iter().map(ToString::to_string).collect(),
            records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{A_ADDR, B_ADDR, handshake, ipv4, pair, pump, send};
    use super::*;

    /// `len` bytes of a UDP datagram from 10.42.1.2:4000 to 10.42.2.2:53 (IPv4).
    fn udp(len: usize) -> Vec<u8> {
        let mut header = vec![0x0f, 0xa0, 0, 53, 0, 0, 0, 0];
        header.resize(len - 20, b'x');
        ipv4("10.42.1.2", "10.42.2.2", &header)
    }

    #[test]
    fn off_by_default_and_on_both_ends_count_what_passed() {
        let pair = pair();
        handshake(&pair);
        let packet = udp(100);
        pump(&pair, send(&pair.a, A_ADDR, &packet));
        assert!(!pair.a.flow_log());
        assert!(pair.a.take_flows().is_empty());
        pair.a.set_flow_log(true);
        pair.b.set_flow_log(true);
        for _ in 0..3 {
            let (_, at_b) = pump(&pair, send(&pair.a, A_ADDR, &packet));
            assert_eq!(at_b.len(), 1);
        }
        let at_a = pair.a.take_flows();
        assert_eq!(at_a.len(), 1, "{at_a:?}");
        let r = &at_a[0].records;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].direction, Direction::Outbound);
        assert_eq!(r[0].verdict, Verdict::Allowed(None));
        assert_eq!((r[0].counts.packets, r[0].counts.bytes), (3, 300));
        assert!(r[0].counts.first > 1_700_000_000_000, "unix ms");
        let at_b = pair.b.take_flows();
        assert_eq!(at_b[0].records[0].direction, Direction::Inbound);
        assert_eq!(at_b[0].records[0].counts.bytes, 300);
        // Taken: the next window starts empty.
        assert!(pair.a.take_flows().is_empty());
        // A reply, B to A, is B's outbound.
        let reply = ipv4("10.42.2.2", "10.42.1.2", &[0, 53, 0x0f, 0xa0, 0, 8, 0, 0]);
        pump(&pair, send(&pair.b, B_ADDR, &reply));
        assert_eq!(
            pair.b.take_flows()[0].records[0].direction,
            Direction::Outbound
        );
    }

    #[test]
    fn a_removed_peer_leaves_its_window_for_the_next_collection() {
        let pair = pair();
        handshake(&pair);
        pair.a.set_flow_log(true);
        pump(&pair, send(&pair.a, A_ADDR, &udp(60)));
        let b = pair.a.peers().remove(0);
        assert!(pair.a.remove_peer(&b.public_key));
        let flows = pair.a.take_flows();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].peer, b.public_key.to_string());
        assert_eq!(flows[0].records[0].counts.bytes, 60);
    }

    #[test]
    fn under_a_policy_each_record_has_its_verdict_and_rule() {
        use protocol::policy::Policy;
        let pair = pair();
        handshake(&pair);
        let text = "# DNS only\n[[allow]]\nfrom = [\"10.42.1.0/24\"]\nto = [\"10.42.2.0/24\"]\nports = [\"udp/53\"]\n";
        let policy = Policy::parse(text).unwrap();
        let me = keys::Name::new("a").unwrap();
        pair.a.set_policy(Some(super::super::ActivePolicy::new(
            policy,
            1,
            me,
            Vec::new(),
            0,
        )));
        pair.a.set_flow_log(true);
        pump(&pair, send(&pair.a, A_ADDR, &udp(100)));
        pump(&pair, send(&pair.a, A_ADDR, &udp(100)));
        // To port 54: denied before encryption.
        let mut other = udp(80);
        other[23] = 54;
        let dropped = pair.a.encapsulate(&other, &mut [0u8; 256]);
        assert!(matches!(dropped, super::super::Outbound::Dropped(_)));
        let flows = pair.a.take_flows();
        let mut verdicts: Vec<(u16, Verdict, u64)> = flows[0]
            .records
            .iter()
            .map(|r| (r.key.unwrap().dst_port, r.verdict, r.counts.bytes))
            .collect();
        verdicts.sort_by_key(|v| v.0);
        assert_eq!(verdicts.len(), 2, "{verdicts:?}");
        assert!(
            matches!(verdicts[0], (53, Verdict::Allowed(Some(r)), 200) if r.line == 2),
            "{verdicts:?}"
        );
        assert_eq!(verdicts[1], (54, Verdict::Denied, 80));
    }
}
