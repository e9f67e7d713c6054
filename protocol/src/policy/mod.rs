//! Network policy: who may talk to whom, on which ports (issue 16). Pure: the policy file's
//! parser, the rules' verdict for a new flow, the table of tracked flows, the packet
//! classifier, and the CA-signed record that carries a policy. No I/O, no clock: time comes
//! in as `now`.
//!
//! The model is Nebula's firewall and Tailscale's ACLs: deny by default once a policy is
//! set; `[[allow]]` rules name sources and destinations by the groups and names in the
//! members' certificates or by address; a flow one rule allows lets its replies back in
//! (connection tracking), so a rule is written for the side that opens the flow only; and
//! `[[test]]`s inside the file must hold or the policy is refused (Tailscale's `tests`).
//!
//! - [`parse`](Policy::parse): TOML into [`Policy`], each error naming its line.
//! - [`Policy::verdict`]: which rule, if any, allows a new flow between two [`Endpoint`]s.
//! - [`Policy::check_tests`]: runs the file's tests against the members an admin knows.
//! - [`flows`]: the flow table (5-tuple, timeouts, bounded, oldest idle out first).
//! - [`packet`]: the flow a packet belongs to (IPv4 and IPv6; TCP, UDP, ICMP echo and
//!   errors; other protocols by number).
//! - [`enforce`]: the verdict for one packet between this host and a peer, tracking
//!   what it allows.
//! - [`flowlog`]: packets and bytes per flow over a window, for flow logs.
//! - [`record`]: [`SignedPolicy`], the policy text with a version, signed by the CA.

pub mod enforce;
pub mod flowlog;
pub mod flows;
pub mod packet;
mod parse;
pub mod record;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use keys::Name;

pub use parse::PolicyError;
pub use record::{PolicyRecordError, SignedPolicy};

/// IP protocol numbers the rules name.
pub mod proto {
    /// ICMP (IPv4).
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// Whom a rule's `from` or `to` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every member, static peer and address.
    Any,
    /// The members whose certificate lists this group.
    Group(Name),
    /// The member (or static peer) of this name.
    Node(Name),
    /// Addresses in this network: a member's containers, or a static peer's subnets.
    Cidr(IpNet),
}

impl Selector {
    /// Whether `endpoint` is one this selector names.
    pub fn matches(&self, endpoint: &Endpoint<'_>) -> bool {
        match self {
            Selector::Any => true,
            Selector::Group(g) => endpoint.groups.contains(g),
            Selector::Node(n) => endpoint.name == Some(n),
            Selector::Cidr(net) => endpoint.addr.is_some_and(|a| net.contains(&a)),
        }
    }

    /// Whether it can match `identity` at some address (address selectors always can).
    fn may_match(&self, identity: &Endpoint<'_>) -> bool {
        match self {
            Selector::Cidr(_) => true,
            other => other.matches(identity),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Any => f.write_str("any"),
            Selector::Group(g) => write!(f, "group:{g}"),
            Selector::Node(n) => write!(f, "node:{n}"),
            Selector::Cidr(net) => write!(f, "{net}"),
        }
    }
}

/// What a rule's `ports` allows: a protocol and, for TCP and UDP, a range of destination
/// ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// Every protocol and port.
    Any,
    /// TCP to a port in `first..=last`.
    Tcp {
        /// The lowest port.
        first: u16,
        /// The highest port.
        last: u16,
    },
    /// UDP to a port in `first..=last`.
    Udp {
        /// The lowest port.
        first: u16,
        /// The highest port.
        last: u16,
    },
    /// ICMP and ICMPv6 echo (ping); the errors of allowed flows pass with their flow.
    Icmp,
    /// Every packet of this IP protocol number.
    Proto(u8),
}

impl Ports {
    /// Whether a new flow of `service` is one this allows.
    pub fn matches(&self, service: Service) -> bool {
        let in_range = |port: Option<u16>, first: u16, last: u16| match port {
            Some(p) => (first..=last).contains(&p),
            // A later fragment carries no port: only a rule for every port covers it.
            None => first == 0 && last == u16::MAX,
        };
        match *self {
            Ports::Any => true,
            Ports::Tcp { first, last } => {
                service.proto == proto::TCP && in_range(service.port, first, last)
            }
            Ports::Udp { first, last } => {
                service.proto == proto::UDP && in_range(service.port, first, last)
            }
            Ports::Icmp => service.proto == proto::ICMP || service.proto == proto::ICMPV6,
            Ports::Proto(p) => service.proto == p,
        }
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |f: &mut fmt::Formatter<'_>, name: &str, first: u16, last: u16| {
            if first == last {
                write!(f, "{name}/{first}")
            } else {
                write!(f, "{name}/{first}-{last}")
            }
        };
        match *self {
            Ports::Any => f.write_str("any"),
            Ports::Tcp { first, last } => range(f, "tcp", first, last),
            Ports::Udp { first, last } => range(f, "udp", first, last),
            Ports::Icmp => f.write_str("icmp"),
            Ports::Proto(p) => write!(f, "proto/{p}"),
        }
    }
}

/// The protocol and destination port of a new flow (`port` is `None` for protocols without
/// ports and for later fragments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Service {
    /// IP protocol number.
    pub proto: u8,
    /// TCP or UDP destination port.
    pub port: Option<u16>,
}

/// One `[[allow]]`: a flow from any of `from` to any of `to` on any of `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Who may open the flow.
    pub from: Vec<Selector>,
    /// To whom.
    pub to: Vec<Selector>,
    /// On what.
    pub ports: Vec<Ports>,
    /// The line of `[[allow]]` in the file (1-based), to name the rule in verdicts.
    pub line: usize,
}

impl Rule {
    /// Whether the rule allows a new flow from `src` to `dst` of `service`.
    pub fn allows(&self, src: &Endpoint<'_>, dst: &Endpoint<'_>, service: Service) -> bool {
        self.ports.iter().any(|p| p.matches(service))
            && self.from.iter().any(|s| s.matches(src))
            && self.to.iter().any(|s| s.matches(dst))
    }
}

/// What a test expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The flow must be allowed.
    Allow,
    /// The flow must be denied.
    Deny,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
        })
    }
}

/// One `[[test]]`: a flow and the verdict the policy must give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTest {
    /// The side that opens the flow: `node:`, `group:` or an address.
    pub from: Selector,
    /// The other side.
    pub to: Selector,
    /// The protocol and port (one port, not a range).
    pub service: Service,
    /// The verdict it must get.
    pub expect: Expect,
    /// Its line in the file.
    pub line: usize,
}

/// A parsed policy: the rules in file order and the tests that must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The `[[allow]]` rules.
    pub rules: Vec<Rule>,
    /// The `[[test]]`s.
    pub tests: Vec<PolicyTest>,
}

/// One side of a flow as the policy sees it: the name and groups of the host it belongs to
/// (from that host's certificate, or a static peer's name from the config) and the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint<'a> {
    /// The member or static peer; `None` for an address nobody owns.
    pub name: Option<&'a Name>,
    /// Its certificate's groups (none for static peers).
    pub groups: &'a [Name],
    /// The address; `None` when a test names a host or group without an address.
    pub addr: Option<IpAddr>,
}

impl<'a> Endpoint<'a> {
    /// A host at no particular address.
    pub fn host(name: &'a Name, groups: &'a [Name]) -> Endpoint<'a> {
        Endpoint {
            name: Some(name),
            groups,
            addr: None,
        }
    }

    /// The same host at `addr`.
    pub fn at(self, addr: IpAddr) -> Endpoint<'a> {
        Endpoint {
            addr: Some(addr),
            ..self
        }
    }
}

/// The rule that allowed a flow: its index in [`Policy::rules`] and its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId {
    /// Index in the policy's rules.
    pub index: u32,
    /// Line of its `[[allow]]`.
    pub line: u32,
}

/// A failed `[[test]]`: what it expected and what the policy gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFailure {
    /// The test's line.
    pub line: usize,
    /// The test as written (`from -> to port`).
    pub flow: String,
    /// What it expected.
    pub expected: Expect,
    /// The rule that allowed it, when it expected deny.
    pub allowed_by: Option<RuleId>,
}

impl fmt::Display for TestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.allowed_by {
            Some(rule) => write!(
                f,
                "test at line {} failed: {} expected {}, got allow by the rule at line {}",
                self.line, self.flow, self.expected, rule.line
            ),
            None => write!(
                f,
                "test at line {} failed: {} expected {}, got deny (no rule allows it)",
                self.line, self.flow, self.expected
            ),
        }
    }
}

impl Policy {
    /// The first rule that allows a new flow of `service` from `src` to `dst`, or `None`:
    /// deny.
    pub fn verdict(
        &self,
        src: &Endpoint<'_>,
        dst: &Endpoint<'_>,
        service: Service,
    ) -> Option<RuleId> {
        self.rules
            .iter()
            .position(|r| r.allows(src, dst, service))
            .map(|i| self.rule_id(i))
    }

    /// The rules that may allow flows from `src` to `dst` (hosts without addresses):
    /// what a host keeps per peer so that a new flow is checked against those only.
    pub fn rules_between(&self, src: &Endpoint<'_>, dst: &Endpoint<'_>) -> PairRules {
        let rules = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.from.iter().any(|s| s.may_match(src)) && r.to.iter().any(|s| s.may_match(dst))
            })
            .map(|(i, _)| i as u32)
            .collect();
        PairRules { rules }
    }

    /// [`verdict`](Self::verdict) over the rules `pair` kept.
    pub fn verdict_in(
        &self,
        pair: &PairRules,
        src: &Endpoint<'_>,
        dst: &Endpoint<'_>,
        service: Service,
    ) -> Option<RuleId> {
        pair.rules
            .iter()
            .find(|&&i| self.rules[i as usize].allows(src, dst, service))
            .map(|&i| self.rule_id(i as usize))
    }

    fn rule_id(&self, index: usize) -> RuleId {
        RuleId {
            index: index as u32,
            line: u32::try_from(self.rules[index].line).unwrap_or(u32::MAX),
        }
    }

    /// Runs every `[[test]]` (each side looked up as [`verdict_between`](Self::verdict_between)
    /// does).
    pub fn check_tests(&self, lookup: &dyn Lookup) -> Result<(), Vec<TestFailure>> {
        let failures: Vec<TestFailure> = self
            .tests
            .iter()
            .filter_map(|t| {
                let got = self.verdict_between(lookup, &t.from, &t.to, t.service);
                let ok = matches!(
                    (t.expect, got),
                    (Expect::Allow, Some(_)) | (Expect::Deny, None)
                );
                (!ok).then(|| TestFailure {
                    line: t.line,
                    flow: format!("{} -> {} {}", t.from, t.to, service_text(t.service)),
                    expected: t.expect,
                    allowed_by: got,
                })
            })
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    }

    /// The verdict for a flow between two sides as a test names them. `lookup` answers
    /// what is known of the network: a `node:` side is that member (its groups) at no
    /// address; a `group:` side a host with that group only; an address the member that
    /// owns it (its name and groups) at that address.
    pub fn verdict_between(
        &self,
        lookup: &dyn Lookup,
        from: &Selector,
        to: &Selector,
        service: Service,
    ) -> Option<RuleId> {
        let (src, dst) = (Side::of(from, lookup), Side::of(to, lookup));
        self.verdict(&src.endpoint(), &dst.endpoint(), service)
    }
}

/// One side of a test, looked up.
struct Side {
    name: Option<Name>,
    groups: Vec<Name>,
    addr: Option<IpAddr>,
}

impl Side {
    fn of(selector: &Selector, lookup: &dyn Lookup) -> Side {
        match selector {
            Selector::Node(n) => Side {
                name: Some(n.clone()),
                groups: lookup.groups_of(n),
                addr: None,
            },
            Selector::Group(g) => Side {
                name: None,
                groups: vec![g.clone()],
                addr: None,
            },
            Selector::Cidr(net) => {
                let addr = net.addr();
                let (name, groups) = lookup
                    .owner_of(addr)
                    .map_or((None, Vec::new()), |(n, g)| (Some(n), g));
                Side {
                    name,
                    groups,
                    addr: Some(addr),
                }
            }
            Selector::Any => Side {
                name: None,
                groups: Vec::new(),
                addr: None,
            },
        }
    }

    fn endpoint(&self) -> Endpoint<'_> {
        Endpoint {
            name: self.name.as_ref(),
            groups: &self.groups,
            addr: self.addr,
        }
    }
}

/// What [`Policy::check_tests`] needs to know about the network.
pub trait Lookup {
    /// The groups in the certificate of member `name` (none if unknown).
    fn groups_of(&self, name: &Name) -> Vec<Name>;
    /// The member that owns `addr` (one of its subnets holds it), with its groups.
    fn owner_of(&self, addr: IpAddr) -> Option<(Name, Vec<Name>)>;
}

/// No members known: tests see names and groups only.
pub struct NoMembers;

impl Lookup for NoMembers {
    fn groups_of(&self, _: &Name) -> Vec<Name> {
        Vec::new()
    }
    fn owner_of(&self, _: IpAddr) -> Option<(Name, Vec<Name>)> {
        None
    }
}

/// The rules of a policy that may apply between two hosts ([`Policy::rules_between`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairRules {
    rules: Vec<u32>,
}

impl PairRules {
    /// How many rules apply.
    pub fn len(&self) -> usize {
        self.rules.len()
    }
    /// Whether no rule applies (every new flow between the two is denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// `tcp/5432`, `icmp`, `proto/47` as a test names a service.
pub fn service_text(service: Service) -> String {
    match (service.proto, service.port) {
        (proto::TCP, Some(p)) => format!("tcp/{p}"),
        (proto::UDP, Some(p)) => format!("udp/{p}"),
        (proto::ICMP | proto::ICMPV6, _) => "icmp".to_string(),
        (p, _) => format!("proto/{p}"),
    }
}
