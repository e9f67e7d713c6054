//! What a DNS question gets, from the names in the [`View`]: pure, no I/O.
//!
//! Names answered (case-insensitive, with or without the final dot), `NETWORK` being the
//! overlay network's name:
//!
//! - `HOST.hosts.NETWORK`: the member `HOST`'s overlay address (its TUN's: the first
//!   address of its first subnet), for every asker;
//! - `NAME.NETWORK` and `NAME`: every container whose name or network alias is `NAME`, on
//!   any host, whose Docker network's range holds the asker's address (a container sees
//!   only the names of its own network), this host's first;
//! - a name of one label that no container has, and any other name under `NETWORK`:
//!   NXDOMAIN, answered here;
//! - anything else (a name with a dot outside `NETWORK`): forwarded to the host's
//!   resolvers, never answered from a member's names, so no member can take an internet
//!   name. A container's name is answered only to askers in the overlay range its address
//!   is in, whatever range its publisher claims.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};

use crate::control::View;

/// Time to live of every answer, in seconds: short, so a name that moved or went is
/// asked again soon.
pub const TTL: u32 = 5;

/// The answer to one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Known here: these addresses (none: the name exists with no address of that kind).
    Addresses(Vec<IpAddr>),
    /// Ours, and unknown.
    NxDomain,
    /// Not ours: ask the host's resolvers.
    Forward,
}

/// What `name` is for an asker at `client`, from `view`.
pub fn lookup(view: &View, name: &str, client: IpAddr) -> Lookup {
    let Some(member) = &view.membership else {
        return Lookup::Forward;
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let network = member.network.as_str();
    if name == network {
        return Lookup::Addresses(Vec::new());
    }
    let hosts = format!(".hosts.{network}");
    if let Some(host) = name.strip_suffix(&hosts) {
        let subnets = if host == member.name {
            Some(&member.subnets)
        } else {
            view.members
                .iter()
                .find(|m| {
                    m.name == host
                        && matches!(
                            m.state,
                            protocol::api::MemberState::Alive | protocol::api::MemberState::Suspect
                        )
                })
                .map(|m| &m.subnets)
        };
        return match subnets.and_then(|s| crate::address::effective(None, s)) {
            Some(ip) => Lookup::Addresses(vec![ip]),
            None => Lookup::NxDomain,
        };
    }
    let short = match name.strip_suffix(&format!(".{network}")) {
        Some(short) => short,
        // A name with a dot outside the network's domain is the internet's: never answered
        // from the members' name sets (a member could publish `registry-1.docker.io`).
        None if name.contains('.') => return Lookup::Forward,
        None => name.as_str(),
    };
    // The overlay range (one per Docker network) the asker is in: a name answers only if
    // its address is in that range too, whatever range its publisher wrote beside it.
    let asker_range = std::iter::once(&member.cidr)
        .chain(&member.ranges)
        .find(|r| r.contains(&client));
    let mut local = Vec::new();
    let mut remote = Vec::new();
    let found = view.names_index.get(short).map_or(&[][..], Vec::as_slice);
    for n in found.iter().filter_map(|&i| view.names.get(i)) {
        if n.entry.range.contains(&client)
            && asker_range.is_none_or(|r| r.contains(&n.entry.address))
            && n.entry.answers_to(short)
        {
            let list = if n.local { &mut local } else { &mut remote };
            if !list.contains(&n.entry.address) {
                list.push(n.entry.address);
            }
        }
    }
    if local.is_empty() && remote.is_empty() {
        return Lookup::NxDomain;
    }
    remote.retain(|a| !local.contains(a));
    local.extend(remote);
    Lookup::Addresses(local)
}

/// The answer to `query` (a parsed question) for `client`, or `None` when it must be
/// forwarded.
pub fn answer(view: &View, query: &Message, client: IpAddr) -> Option<Message> {
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    let Some(question) = query.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return Some(response);
    };
    if query.metadata.message_type != MessageType::Query
        || query.metadata.op_code != OpCode::Query
        || query.queries.len() != 1
    {
        response.metadata.response_code = ResponseCode::NotImp;
        response.add_query(question.clone());
        return Some(response);
    }
    response.add_query(question.clone());
    let qname = question.name().to_ascii();
    match lookup(view, &qname, client) {
        Lookup::Forward => return None,
        Lookup::NxDomain => {
            response.metadata.authoritative = true;
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        Lookup::Addresses(addresses) => {
            response.metadata.authoritative = true;
            let qtype = question.query_type();
            for ip in addresses {
                let rdata = match (ip, qtype) {
                    (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
                    (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                response.add_answer(Record::from_rdata(question.name().clone(), TTL, rdata));
            }
        }
    }
    Some(response)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use hickory_proto::op::Query;
    use hickory_proto::rr::Name as DnsName;
    use protocol::api::{MemberState, Membership};
    use protocol::records::names::NameEntry;

    use super::*;
    use crate::control::{MemberView, NameView};

    fn name(
        owner: &str,
        local: bool,
        name: &str,
        aliases: &[&str],
        ip: &str,
        range: &str,
    ) -> NameView {
        NameView {
            owner: owner.into(),
            local,
            since_unix: 0,
            entry: NameEntry {
                name: name.into(),
                aliases: aliases.iter().map(|a| a.to_string()).collect(),
                address: ip.parse().unwrap(),
                network: "ovl".into(),
                range: range.parse().unwrap(),
            },
        }
    }

    /// h1 (this host, 10.42.1.0/24 and 10.43.1.0/24) and h2 (alive), h3 (down).
    fn view() -> View {
        let mut v = View {
            membership: Some(Membership {
                network: "testnet".into(),
                cidr: "10.42.0.0/16".parse().unwrap(),
                ranges: vec!["10.43.0.0/16".parse().unwrap()],
                ca_fingerprint: String::new(),
                name: "h1".into(),
                subnets: vec!["10.42.1.0/24".parse().unwrap()],
                groups: Vec::new(),
                certificate_expires_unix: 0,
                certificate_serial: 0,
                certificate_renewed_unix: None,
                certificate_renew_at_unix: 0,
                admin: false,
                control_port: 51821,
                member_count: 2,
                left: false,
                ca: None,
            }),
            members: vec![
                MemberView {
                    name: "h2".into(),
                    public_key: keys::PublicKey::from_bytes([2; 32]),
                    subnets: vec!["10.42.2.0/24".parse().unwrap()],
                    endpoint: None,
                    state: MemberState::Alive,
                    nat: false,
                },
                MemberView {
                    name: "h3".into(),
                    public_key: keys::PublicKey::from_bytes([3; 32]),
                    subnets: vec!["10.42.3.0/24".parse().unwrap()],
                    endpoint: None,
                    state: MemberState::Down,
                    nat: false,
                },
            ],
            ..View::default()
        };
        v.set_names(vec![
            name("h2", false, "web", &[], "10.42.2.2", "10.42.0.0/16"),
            name("h2", false, "api-2", &["api"], "10.42.2.3", "10.42.0.0/16"),
            name("h1", true, "api-1", &["api"], "10.42.1.3", "10.42.0.0/16"),
            name("h2", false, "secret", &[], "10.43.2.2", "10.43.0.0/16"),
        ]);
        v
    }

    const CLIENT: &str = "10.42.1.2";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn addrs(list: &[&str]) -> Lookup {
        Lookup::Addresses(list.iter().map(|a| ip(a)).collect())
    }

    #[test]
    fn names_hosts_and_aliases_are_answered_local_first() {
        let v = view();
        let c = ip(CLIENT);
        assert_eq!(lookup(&v, "web", c), addrs(&["10.42.2.2"]));
        assert_eq!(lookup(&v, "WEB.testnet.", c), addrs(&["10.42.2.2"]));
        // One alias on two hosts: both, this host's first.
        assert_eq!(lookup(&v, "api", c), addrs(&["10.42.1.3", "10.42.2.3"]));
        assert_eq!(lookup(&v, "h2.hosts.testnet", c), addrs(&["10.42.2.1"]));
        assert_eq!(lookup(&v, "h1.hosts.testnet.", c), addrs(&["10.42.1.1"]));
        // A member declared down is not answered.
        assert_eq!(lookup(&v, "h3.hosts.testnet", c), Lookup::NxDomain);
        assert_eq!(lookup(&v, "nothing", c), Lookup::NxDomain);
        assert_eq!(lookup(&v, "nothing.testnet", c), Lookup::NxDomain);
        assert_eq!(lookup(&v, "example.org", c), Lookup::Forward);
    }

    /// A container of the 10.43 network sees its own names only, and the other way round.
    #[test]
    fn a_container_sees_only_the_names_of_its_network() {
        let v = view();
        assert_eq!(lookup(&v, "secret", ip(CLIENT)), Lookup::NxDomain);
        assert_eq!(lookup(&v, "web", ip("10.43.1.2")), Lookup::NxDomain);
        assert_eq!(lookup(&v, "secret", ip("10.43.1.2")), addrs(&["10.43.2.2"]));
    }

    /// A member's name set is signed by it, but what it claims is not trusted: a dotted
    /// name outside the network (an internet name) is forwarded, never answered from a
    /// set, and a name answers only askers of the overlay range its address is in, whatever
    /// range the set says (`0.0.0.0/0` would otherwise reach every Docker network).
    #[test]
    fn a_member_can_neither_hijack_internet_names_nor_cross_networks() {
        let mut v = view();
        let mut names = v.names.clone();
        names.push(name(
            "h2",
            false,
            "registry-1.docker.io",
            &[],
            "10.42.2.9",
            "0.0.0.0/0",
        ));
        names.push(name("h2", false, "spy", &[], "10.42.2.8", "0.0.0.0/0"));
        v.set_names(names);
        let c = ip(CLIENT);
        assert_eq!(lookup(&v, "registry-1.docker.io", c), Lookup::Forward);
        assert_eq!(lookup(&v, "spy", c), addrs(&["10.42.2.8"]));
        assert_eq!(lookup(&v, "spy", ip("10.43.1.2")), Lookup::NxDomain);
        assert_eq!(lookup(&v, "spy.testnet", ip("10.43.1.2")), Lookup::NxDomain);
    }

    fn question(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(DnsName::from_ascii(name).unwrap(), qtype));
        Message::from_vec(&m.to_vec().unwrap()).unwrap()
    }

    #[test]
    fn answers_are_dns_messages_with_a_short_ttl() {
        let v = view();
        let q = question("api.testnet.", RecordType::A);
        let r = answer(&v, &q, ip(CLIENT)).unwrap();
        let bytes = r.to_vec().unwrap();
        let r = Message::from_vec(&bytes).unwrap();
        assert_eq!(r.metadata.id, q.metadata.id);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        let got: Vec<String> = r.answers.iter().map(|a| a.data.to_string()).collect();
        assert_eq!(got, vec!["10.42.1.3", "10.42.2.3"]);
        assert!(r.answers.iter().all(|a| a.ttl == TTL));
        // AAAA of a v4-only name: no data, no error.
        let r = answer(&v, &question("web.", RecordType::AAAA), ip(CLIENT)).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        let r = answer(&v, &question("gone.", RecordType::A), ip(CLIENT)).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(answer(&v, &question("example.org.", RecordType::A), ip(CLIENT)).is_none());
    }

    /// From memory within 1 ms, with 4,096 names of one member and 4,096 of another.
    #[test]
    fn answers_take_less_than_a_millisecond() {
        let mut v = view();
        let mut names = v.names.clone();
        for i in 0..8192u32 {
            names.push(name(
                if i % 2 == 0 { "h2" } else { "h1" },
                i % 2 == 1,
                &format!("c{i}"),
                &["many"],
                &format!("10.42.{}.{}", 1 + i % 2, 2 + i % 250),
                "10.42.0.0/16",
            ));
        }
        v.set_names(names);
        let q = question("c8000.testnet.", RecordType::A);
        let c = ip(CLIENT);
        let _ = answer(&v, &q, c);
        let start = Instant::now();
        let rounds = 200;
        for _ in 0..rounds {
            let r = answer(&v, &q, c).unwrap();
            assert_eq!(r.answers.len(), 1);
        }
        let each = start.elapsed() / rounds;
        eprintln!("one answer among 8,196 names: {each:?}");
        assert!(each.as_micros() < 1000, "{each:?}");
    }
}
