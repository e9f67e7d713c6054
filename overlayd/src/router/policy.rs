//! The network policy in the data path (issue 16): checked under the peer's lock on this
//! host's side of the tunnel, before encryption for packets to the peer and after
//! decryption (and the source and destination checks) for packets from it.
//!
//! The policy in force rides in the [`PeerTable`](super::PeerTable), so the data path gets
//! it with the table's one load per batch; no policy costs one `Option` check a packet.
//! Each peer keeps, under its own lock, the rules that may apply between it and this host
//! (recomputed when the policy or the peer's name or groups change) and its own flow table:
//! a peer that opens flows without end pushes out its own oldest, never another peer's.
//! [`Router::tick`](super::Router::tick) (every 250 ms) brings every peer up to the policy
//! in force, cutting the flows a new version no longer allows, and forgets idle flows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use keys::Name;
use protocol::api::EventKind;
use protocol::policy::enforce::{Direction, Judgement, PeerPolicy, PeerRules};
use protocol::policy::flowlog::Verdict;
use protocol::policy::flows::{DEFAULT_CAPACITY, FlowTable, Timeouts};
use protocol::policy::{Endpoint, Policy};

use super::peers::{Peer, PeerInfo, PeerState};
use super::{PeerTable, Router};

/// Flows swept per peer and tick.
const SWEEP_BUDGET: usize = 1024;

/// The policy this host enforces, with its counters.
#[derive(Debug)]
pub struct ActivePolicy {
    /// What it says.
    pub policy: Policy,
    /// Its version.
    pub version: u64,
    /// Unique to this value: a policy handed again at the same version (this host's groups
    /// changed with a re-issued certificate) is another instance, and every peer's rules
    /// are computed again for it.
    instance: u64,
    /// This host's name and groups (from its certificate).
    local_name: Name,
    local_groups: Vec<Name>,
    /// The most flows tracked per peer.
    flow_capacity: usize,
    /// New flows allowed, per rule (by index).
    allowed: Vec<AtomicU64>,
    /// New flows denied.
    denied: AtomicU64,
}

impl ActivePolicy {
    /// `policy` at `version`, for this host `local_name` in `local_groups`, tracking at most
    /// `flow_capacity` flows per peer ([`DEFAULT_CAPACITY`] if 0).
    pub fn new(
        policy: Policy,
        version: u64,
        local_name: Name,
        local_groups: Vec<Name>,
        flow_capacity: usize,
    ) -> ActivePolicy {
        /// The instance the next `ActivePolicy` gets.
        static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(0);
        let allowed = policy.rules.iter().map(|_| AtomicU64::new(0)).collect();
        ActivePolicy {
            policy,
            version,
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            local_name,
            local_groups,
            flow_capacity: if flow_capacity == 0 {
                DEFAULT_CAPACITY
            } else {
                flow_capacity
            },
            allowed,
            denied: AtomicU64::new(0),
        }
    }

    /// New flows allowed, per rule line.
    pub fn allowed_by_line(&self) -> Vec<(u32, u64)> {
        self.policy
            .rules
            .iter()
            .zip(&self.allowed)
            .map(|(r, n)| {
                (
                    u32::try_from(r.line).unwrap_or(u32::MAX),
                    n.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// New flows denied.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    fn local(&self) -> Endpoint<'_> {
        Endpoint::host(&self.local_name, &self.local_groups)
    }
}

/// What a peer keeps of the policy under its lock.
pub(super) struct PeerPolicyState {
    /// The policy (its version and instance) and the peer's info these rules were
    /// computed for.
    version: u64,
    instance: u64,
    info: Arc<PeerInfo>,
    rules: PeerRules,
    flows: FlowTable,
}

impl PeerPolicyState {
    /// Flows tracked now.
    pub(super) fn tracked(&self) -> usize {
        self.flows.len()
    }
}

/// The peer as the policy sees it: its name (a member's, or a static peer's from the
/// config) and its certificate's groups.
fn peer_endpoint(info: &PeerInfo) -> Endpoint<'_> {
    Endpoint {
        name: info.policy_name.as_ref(),
        groups: &info.groups,
        addr: None,
    }
}

/// Brings the peer's policy state up to `active` (new version, or new name or groups);
/// returns how many tracked flows the change cut.
fn refresh(active: &ActivePolicy, peer: &Peer, st: &mut PeerState) -> usize {
    let info = peer.info_full();
    if let Some(p) = &st.policy
        && p.version == active.version
        && p.instance == active.instance
        && Arc::ptr_eq(&p.info, &info)
    {
        return 0;
    }
    let local = active.local();
    let rules = PeerRules::new(&active.policy, &local, &peer_endpoint(&info));
    let (flows, cut) = match st.policy.take() {
        Some(mut old) => {
            let view = PeerPolicy {
                policy: &active.policy,
                rules: &rules,
                local,
                peer: peer_endpoint(&info),
            };
            let cut = view.recheck(&mut old.flows, |k| {
                info.subnets.iter().any(|n| n.contains(&k.src))
            });
            (old.flows, cut)
        }
        None => (FlowTable::new(active.flow_capacity, Timeouts::default()), 0),
    };
    st.policy = Some(PeerPolicyState {
        version: active.version,
        instance: active.instance,
        info,
        rules,
        flows,
    });
    cut
}

impl Router {
    /// Puts `policy` in force (`None`: every peer may reach every container, as before any
    /// policy). Flows it no longer allows are cut at the next tick (within 250 ms).
    pub fn set_policy(&self, policy: Option<ActivePolicy>) {
        let _writer = crate::util::lock(&self.writer);
        let mut next = PeerTable::clone(&self.table.load_full());
        next.policy = policy.map(Arc::new);
        self.table.store(Arc::new(next));
    }

    /// The policy in force, if any.
    pub fn policy(&self) -> Option<Arc<ActivePolicy>> {
        self.table.load().policy.clone()
    }

    /// Whether the policy in `table` lets `packet` go `direction` between this host and
    /// `peer`; a denial is counted (drop reason, per-rule counters, a security event).
    /// The verdict goes to the flow log too (when it is on).
    pub(super) fn police(
        &self,
        table: &PeerTable,
        peer: &Peer,
        st: &mut PeerState,
        direction: Direction,
        packet: &[u8],
    ) -> bool {
        let verdict = self.judge(table, peer, st, direction, packet);
        self.count_flow(table, st, direction, verdict, packet);
        verdict != Verdict::Denied
    }

    /// The policy's verdict on `packet` (allowed, with no rule, when no policy is in force).
    fn judge(
        &self,
        table: &PeerTable,
        peer: &Peer,
        st: &mut PeerState,
        direction: Direction,
        packet: &[u8],
    ) -> Verdict {
        let Some(active) = &table.policy else {
            return Verdict::Allowed(None);
        };
        refresh(active, peer, st);
        let Some(state) = st.policy.as_mut() else {
            return Verdict::Allowed(None);
        };
        let view = PeerPolicy {
            policy: &active.policy,
            rules: &state.rules,
            local: active.local(),
            peer: peer_endpoint(&state.info),
        };
        match view.judge(&mut state.flows, direction, packet, self.coarse_now()) {
            Judgement::Tracked(rule) => Verdict::Allowed(Some(rule)),
            Judgement::Opened(rule) => {
                if let Some(n) = active.allowed.get(rule.index as usize) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                Verdict::Allowed(Some(rule))
            }
            Judgement::Denied | Judgement::Malformed => {
                active.denied.fetch_add(1, Ordering::Relaxed);
                let name = state.info.name.clone();
                let flow = flow_text(packet);
                let way = match direction {
                    Direction::Outbound => "to",
                    Direction::Inbound => "from",
                };
                self.events.emit(
                    EventKind::PolicyDenied,
                    name.as_deref(),
                    None,
                    || {
                        format!(
                            "policy version {} denied {flow} {way} this peer",
                            active.version
                        )
                    },
                    crate::events::now_unix_ms(),
                );
                Verdict::Denied
            }
        }
    }

    /// The policy's side of [`Router::tick`]: every peer brought up to the policy in force
    /// (cutting flows a new version no longer allows), idle flows forgotten; without a
    /// policy, the peers' flow tables are freed.
    pub(super) fn tick_policy(&self, peer: &Peer, st: &mut PeerState) {
        let table = self.table.load();
        match &table.policy {
            None => st.policy = None,
            Some(active) => {
                let cut = refresh(active, peer, st);
                if cut > 0 {
                    tracing::info!(
                        peer = peer.name().unwrap_or_default(),
                        flows = cut,
                        version = active.version,
                        "cut flows the new policy no longer allows"
                    );
                }
                if let Some(state) = st.policy.as_mut() {
                    state.flows.sweep(self.coarse_now(), SWEEP_BUDGET);
                }
            }
        }
    }

    /// The flow table's clock: as of the last tick.
    fn coarse_now(&self) -> Instant {
        self.epoch + std::time::Duration::from_millis(self.clock_ms.load(Ordering::Relaxed))
    }

    /// Flows tracked now, over all peers.
    pub fn tracked_flows(&self) -> usize {
        self.table
            .load()
            .present()
            .map(|p| p.lock().policy.as_ref().map_or(0, PeerPolicyState::tracked))
            .sum()
    }
}

/// `tcp 10.42.1.2:40000 -> 10.42.3.2:5432` for the event's sentence.
fn flow_text(packet: &[u8]) -> String {
    use protocol::policy::packet::{Classified, classify};
    use protocol::policy::proto;
    match classify(packet) {
        Classified::Flow { key, .. } | Classified::IcmpError { about: key } => {
            let name = match key.proto {
                proto::TCP => "tcp".to_string(),
                proto::UDP => "udp".to_string(),
                proto::ICMP | proto::ICMPV6 => "icmp".to_string(),
                p => format!("protocol {p}"),
            };
            format!(
                "{name} {}:{} -> {}:{}",
                key.src, key.src_port, key.dst, key.dst_port
            )
        }
        Classified::Malformed => "a packet whose headers cannot be read".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{A_ADDR, B_ADDR, Pair, handshake, ipv4, pair, pump, send};
    use super::super::{Outbound, PeerSpec};
    use super::*;
    use protocol::drops::DropReason;

    fn name(n: &str) -> Name {
        Name::new(n).unwrap()
    }

    /// A UDP datagram from `src:sport` to `dst:dport`.
    fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
        let mut header = Vec::new();
        header.extend_from_slice(&sport.to_be_bytes());
        header.extend_from_slice(&dport.to_be_bytes());
        header.extend_from_slice(&[0, 12, 0, 0, b'd', b'a', b't', b'a']);
        ipv4(src, dst, &header)
    }

    /// Names the pair's peers: on A, B is `b` in group `db`; on B, A is `a` in `web`.
    fn named_pair() -> Pair {
        let pair = pair();
        for (router, peer_name, group, subnet) in [
            (&pair.a, "b", "db", "10.42.2.0/24"),
            (&pair.b, "a", "web", "10.42.1.0/24"),
        ] {
            let peer = router.peers().remove(0);
            let endpoint = peer.handshake_age_and_endpoint().1;
            router
                .upsert_peer(PeerSpec {
                    public_key: peer.public_key,
                    name: Some(peer_name.into()),
                    endpoint,
                    subnets: vec![subnet.parse().unwrap()],
                    groups: vec![name(group)],
                    persistent_keepalive: None,
                    advertised: false,
                })
                .unwrap();
        }
        pair
    }

    const WEB_TO_DB_DNS: &str =
        "[[allow]]\nfrom = [\"group:web\"]\nto = [\"group:db\"]\nports = [\"udp/53\"]\n";

    fn enforce(router: &Router, text: &str, version: u64, me: &str, group: &str) {
        let policy = Policy::parse(text).unwrap();
        router.set_policy(Some(ActivePolicy::new(
            policy,
            version,
            name(me),
            vec![name(group)],
            0,
        )));
    }

    fn out(router: &Router, packet: &[u8]) -> Outbound {
        router.encapsulate(packet, &mut vec![0u8; 2048])
    }

    #[test]
    fn web_reaches_db_replies_return_and_db_cannot_open_to_web() {
        let pair = named_pair();
        handshake(&pair);
        enforce(&pair.a, WEB_TO_DB_DNS, 1, "a", "web");
        enforce(&pair.b, WEB_TO_DB_DNS, 1, "b", "db");
        let query = udp("10.42.1.2", 4000, "10.42.2.2", 53);
        let (_, at_b) = pump(&pair, send(&pair.a, A_ADDR, &query));
        assert_eq!(at_b, vec![query]);
        let answer = udp("10.42.2.2", 53, "10.42.1.2", 4000);
        let (at_a, _) = pump(&pair, send(&pair.b, B_ADDR, &answer));
        assert_eq!(at_a, vec![answer]);
        // db opens to web: refused before encryption on b.
        let open = udp("10.42.2.2", 5000, "10.42.1.2", 80);
        assert_eq!(
            out(&pair.b, &open),
            Outbound::Dropped(DropReason::PolicyDenied)
        );
        // web to db on another port: refused on a.
        let other = udp("10.42.1.2", 4001, "10.42.2.2", 54);
        assert_eq!(
            out(&pair.a, &other),
            Outbound::Dropped(DropReason::PolicyDenied)
        );
        let a_policy = pair.a.policy().unwrap();
        assert_eq!(a_policy.allowed_by_line(), vec![(1, 1)]);
        assert_eq!(a_policy.denied(), 1);
        assert_eq!(pair.a.tracked_flows(), 1);
        let events = pair.a.events.after(0);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, EventKind::PolicyDenied);
        assert_eq!(events[0].peer.as_deref(), Some("b"));
        assert!(
            events[0]
                .detail
                .contains("udp 10.42.1.2:4001 -> 10.42.2.2:54"),
            "{}",
            events[0].detail
        );
    }

    #[test]
    fn the_receiver_refuses_what_a_sender_without_the_policy_lets_through() {
        let pair = named_pair();
        handshake(&pair);
        enforce(&pair.a, WEB_TO_DB_DNS, 1, "a", "web");
        // B enforces nothing (a stock WireGuard host, or a host that lost its policy).
        let open = udp("10.42.2.2", 5000, "10.42.1.2", 80);
        let (at_a, _) = pump(&pair, send(&pair.b, B_ADDR, &open));
        assert!(at_a.is_empty());
        let b_on_a = pair.a.peers().remove(0);
        assert_eq!(b_on_a.drops.get(DropReason::PolicyDenied), 1);
    }

    #[test]
    fn a_new_version_cuts_the_flows_it_no_longer_allows_at_the_next_tick() {
        let pair = named_pair();
        handshake(&pair);
        enforce(&pair.a, WEB_TO_DB_DNS, 1, "a", "web");
        enforce(&pair.b, WEB_TO_DB_DNS, 1, "b", "db");
        let query = udp("10.42.1.2", 4000, "10.42.2.2", 53);
        pump(&pair, send(&pair.a, A_ADDR, &query));
        assert_eq!(pair.b.tracked_flows(), 1);
        let ping_only =
            "[[allow]]\nfrom = [\"group:web\"]\nto = [\"group:db\"]\nports = [\"icmp\"]\n";
        enforce(&pair.b, ping_only, 2, "b", "db");
        pair.b.tick(&mut vec![0u8; 2048], &mut |_, _| {});
        assert_eq!(pair.b.tracked_flows(), 0);
        let answer = udp("10.42.2.2", 53, "10.42.1.2", 4000);
        assert_eq!(
            out(&pair.b, &answer),
            Outbound::Dropped(DropReason::PolicyDenied)
        );
        // Without a policy, everything passes again and the tables are freed.
        pair.b.set_policy(None);
        pair.b.tick(&mut vec![0u8; 2048], &mut |_, _| {});
        assert!(matches!(out(&pair.b, &answer), Outbound::Send { .. }));
    }

    /// This host's own groups change (its certificate re-issued with new ones): the same
    /// policy version handed again with them applies to every peer at once, though no
    /// peer changed.
    #[test]
    fn this_hosts_new_groups_take_effect_at_the_same_version() {
        let pair = named_pair();
        handshake(&pair);
        enforce(&pair.a, WEB_TO_DB_DNS, 1, "a", "none");
        let query = udp("10.42.1.2", 4000, "10.42.2.2", 53);
        assert_eq!(
            out(&pair.a, &query),
            Outbound::Dropped(DropReason::PolicyDenied)
        );
        enforce(&pair.a, WEB_TO_DB_DNS, 1, "a", "web");
        assert!(matches!(out(&pair.a, &query), Outbound::Send { .. }));
        enforce(&pair.a, WEB_TO_DB_DNS, 1, "a", "none");
        let other = udp("10.42.1.2", 4001, "10.42.2.2", 53);
        assert_eq!(
            out(&pair.a, &other),
            Outbound::Dropped(DropReason::PolicyDenied)
        );
    }

    #[test]
    fn changed_groups_take_effect_without_a_new_policy() {
        let pair = named_pair();
        handshake(&pair);
        enforce(&pair.a, WEB_TO_DB_DNS, 1, "a", "web");
        let query = udp("10.42.1.2", 4000, "10.42.2.2", 53);
        assert!(matches!(out(&pair.a, &query), Outbound::Send { .. }));
        // B leaves group db (a re-issued certificate): the flow goes, new ones are denied.
        let peer = pair.a.peers().remove(0);
        pair.a
            .upsert_peer(PeerSpec {
                public_key: peer.public_key,
                name: Some("b".into()),
                endpoint: peer.handshake_age_and_endpoint().1,
                subnets: vec!["10.42.2.0/24".parse().unwrap()],
                groups: vec![name("cache")],
                persistent_keepalive: None,
                advertised: false,
            })
            .unwrap();
        pair.a.tick(&mut vec![0u8; 2048], &mut |_, _| {});
        assert_eq!(pair.a.tracked_flows(), 0);
        assert_eq!(
            out(&pair.a, &query),
            Outbound::Dropped(DropReason::PolicyDenied)
        );
    }
}
