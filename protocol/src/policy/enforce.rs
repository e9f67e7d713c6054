//! The policy's verdict for one packet between this host and one peer: what the data path
//! calls, under the peer's lock, before encrypting (outbound) and after decrypting
//! (inbound). A packet of a tracked flow passes (either way); an ICMP error passes if the
//! flow it reports on is tracked; anything else is a new flow, which passes and is tracked
//! only if a rule allows it from the side that sent it.
//!
//! Each peer has its own [`FlowTable`]: a peer that opens flows without end pushes out its
//! own oldest, never another peer's.

use std::time::Instant;

use super::flows::{FlowTable, Tracked};
use super::packet::{Classified, FlowKey, classify};
use super::{Endpoint, PairRules, Policy, RuleId, Service, proto};

/// Which way a packet goes between this host and the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From this host's containers to the peer (checked before encryption).
    Outbound,
    /// From the peer to this host's containers (checked after decryption).
    Inbound,
}

/// The policy as one host applies it to one peer: the rules that may apply each way,
/// computed when the policy or the peer's certificate changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerRules {
    /// Rules that may allow flows this host opens to the peer.
    pub outbound: PairRules,
    /// Rules that may allow flows the peer opens to this host.
    pub inbound: PairRules,
}

impl PeerRules {
    /// The rules between `local` and `peer` (hosts without addresses).
    pub fn new(policy: &Policy, local: &Endpoint<'_>, peer: &Endpoint<'_>) -> PeerRules {
        PeerRules {
            outbound: policy.rules_between(local, peer),
            inbound: policy.rules_between(peer, local),
        }
    }
}

/// What the policy says of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// A packet of a tracked flow (or an ICMP error about one), which `rule` allowed.
    Tracked(RuleId),
    /// The first packet of a flow `rule` allows; the flow is tracked from now on.
    Opened(RuleId),
    /// No rule allows the flow.
    Denied,
    /// Its headers cannot be read.
    Malformed,
}

impl Judgement {
    /// Whether the packet may pass.
    pub fn allows(self) -> bool {
        matches!(self, Judgement::Tracked(_) | Judgement::Opened(_))
    }
}

/// The policy between this host and one peer, as the data path applies it.
#[derive(Debug, Clone, Copy)]
pub struct PeerPolicy<'a> {
    /// The policy in force.
    pub policy: &'a Policy,
    /// Its rules that may apply between the two ([`PeerRules::new`]).
    pub rules: &'a PeerRules,
    /// This host: its name and groups.
    pub local: Endpoint<'a>,
    /// The peer: its name and groups.
    pub peer: Endpoint<'a>,
}

impl PeerPolicy<'_> {
    /// Judges `packet` going `direction`, tracking the flows it allows in `flows` (the
    /// peer's table).
    pub fn judge(
        &self,
        flows: &mut FlowTable,
        direction: Direction,
        packet: &[u8],
        now: Instant,
    ) -> Judgement {
        match classify(packet) {
            Classified::Malformed => Judgement::Malformed,
            Classified::IcmpError { about } => match flows.related(&about, now) {
                Some(rule) => Judgement::Tracked(rule),
                None => Judgement::Denied,
            },
            Classified::Flow {
                key,
                service,
                closing,
            } => {
                match flows.track(&key, closing, now) {
                    Tracked::Forward(rule) | Tracked::Reply(rule) => {
                        return Judgement::Tracked(rule);
                    }
                    Tracked::New => {}
                }
                match self.verdict(&key, service, direction == Direction::Inbound) {
                    Some(rule) => {
                        flows.insert(key, rule, closing, now);
                        Judgement::Opened(rule)
                    }
                    None => Judgement::Denied,
                }
            }
        }
    }

    fn verdict(&self, key: &FlowKey, service: Service, opened_by_peer: bool) -> Option<RuleId> {
        if opened_by_peer {
            self.policy.verdict_in(
                &self.rules.inbound,
                &self.peer.at(key.src),
                &self.local.at(key.dst),
                service,
            )
        } else {
            self.policy.verdict_in(
                &self.rules.outbound,
                &self.local.at(key.src),
                &self.peer.at(key.dst),
                service,
            )
        }
    }

    /// Checks the peer's tracked flows again (this being a new policy) and drops those it
    /// no longer allows; returns how many. `opened_by_peer` tells which side opened a flow
    /// (its source is one of the peer's addresses).
    pub fn recheck(
        &self,
        flows: &mut FlowTable,
        opened_by_peer: impl Fn(&FlowKey) -> bool,
    ) -> usize {
        flows.recheck(|key| self.verdict(key, flow_service(key), opened_by_peer(key)))
    }
}

/// The service a tracked flow was checked as: its protocol and, for TCP and UDP, the
/// destination port (other protocols keep ports that are not ports: echo identifiers).
fn flow_service(key: &FlowKey) -> Service {
    let port = matches!(key.proto, proto::TCP | proto::UDP).then_some(key.dst_port);
    Service {
        proto: key.proto,
        port,
    }
}
