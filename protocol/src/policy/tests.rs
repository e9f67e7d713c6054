use std::net::IpAddr;
use std::time::{Duration, Instant};

use keys::{CaKey, Name};
use proptest::prelude::*;

use super::flows::{FlowTable, Timeouts, Tracked};
use super::packet::{Classified, FlowKey, classify};
use super::*;

fn name(text: &str) -> Name {
    Name::new(text).unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

const EXAMPLE: &str = r#"
[[allow]]
from  = ["group:web"]
to    = ["group:db"]
ports = ["tcp/5432", "icmp"]

[[allow]]
from  = ["node:h2"]
to    = ["10.42.3.0/28"]
ports = ["tcp/8000-8999"]

[[test]]
from   = "node:h2"
to     = "10.42.3.2"
port   = "tcp/5432"
expect = "allow"

[[test]]
from   = "group:db"
to     = "group:web"
port   = "tcp/80"
expect = "deny"
"#;

/// h1, h2 in web (10.42.1.0/24, 10.42.2.0/24), h3 in db (10.42.3.0/24).
struct Net;

impl Lookup for Net {
    fn groups_of(&self, n: &Name) -> Vec<Name> {
        match n.as_str() {
            "h1" | "h2" => vec![name("web")],
            "h3" => vec![name("db")],
            _ => vec![],
        }
    }
    fn owner_of(&self, addr: IpAddr) -> Option<(Name, Vec<Name>)> {
        let IpAddr::V4(v4) = addr else { return None };
        let [10, 42, host @ 1..=3, _] = v4.octets() else {
            return None;
        };
        let n = name(&format!("h{host}"));
        let groups = self.groups_of(&n);
        Some((n, groups))
    }
}

fn tcp(port: u16) -> Service {
    Service {
        proto: proto::TCP,
        port: Some(port),
    }
}

#[test]
fn the_example_parses_with_lines_and_its_tests_hold() {
    let p = Policy::parse(EXAMPLE).unwrap();
    assert_eq!(p.rules.len(), 2);
    assert_eq!(p.rules[0].line, 2);
    assert_eq!(p.rules[1].line, 7);
    assert_eq!(
        p.rules[1].ports,
        vec![Ports::Tcp {
            first: 8000,
            last: 8999
        }]
    );
    assert_eq!(p.tests.len(), 2);
    assert_eq!(p.tests[0].line, 12);
    assert_eq!(
        p.tests[0].to,
        Selector::Cidr("10.42.3.2/32".parse().unwrap())
    );
    p.check_tests(&Net).unwrap();
}

#[test]
fn groups_allow_one_way_and_deny_the_rest() {
    let p = Policy::parse(EXAMPLE).unwrap();
    let (web, db) = ([name("web")], [name("db")]);
    let (h1, h3) = (name("h1"), name("h3"));
    let src = Endpoint::host(&h1, &web).at(ip("10.42.1.2"));
    let dst = Endpoint::host(&h3, &db).at(ip("10.42.3.2"));
    assert_eq!(p.verdict(&src, &dst, tcp(5432)).map(|r| r.line), Some(2));
    let icmp = Service {
        proto: proto::ICMP,
        port: None,
    };
    assert!(p.verdict(&src, &dst, icmp).is_some());
    assert_eq!(p.verdict(&src, &dst, tcp(22)), None, "web -> db on 22");
    assert_eq!(p.verdict(&dst, &src, tcp(5432)), None, "db -> web");
    // The CIDR rule: h2 to the first 16 addresses of h3 only, on 8000-8999.
    let h2 = name("h2");
    let from_h2 = Endpoint::host(&h2, &web).at(ip("10.42.2.2"));
    assert_eq!(
        p.verdict(&from_h2, &dst, tcp(8080)).map(|r| r.line),
        Some(7)
    );
    let far = Endpoint::host(&h3, &db).at(ip("10.42.3.20"));
    assert_eq!(p.verdict(&from_h2, &far, tcp(8080)), None);
    assert_eq!(p.verdict(&src, &dst, tcp(8080)), None, "h1 is not h2");
}

#[test]
fn a_static_peer_matches_by_its_name_or_address_only() {
    let p = Policy::parse(
        r#"
[[allow]]
from = ["node:legacy", "192.168.7.0/24"]
to = ["any"]
ports = ["udp/53"]
"#,
    )
    .unwrap();
    let legacy = name("legacy");
    let h1 = name("h1");
    let dst = Endpoint::host(&h1, &[]).at(ip("10.42.1.2"));
    let dns = Service {
        proto: proto::UDP,
        port: Some(53),
    };
    assert!(
        p.verdict(&Endpoint::host(&legacy, &[]).at(ip("10.9.0.1")), &dst, dns)
            .is_some()
    );
    let other = name("other");
    assert!(
        p.verdict(
            &Endpoint::host(&other, &[]).at(ip("192.168.7.9")),
            &dst,
            dns
        )
        .is_some()
    );
    assert!(
        p.verdict(&Endpoint::host(&other, &[]).at(ip("10.9.0.1")), &dst, dns)
            .is_none()
    );
}

#[test]
fn rules_kept_per_pair_give_the_same_verdicts() {
    let p = Policy::parse(EXAMPLE).unwrap();
    let groups = [vec![name("web")], vec![name("db")], vec![]];
    let names = [name("h1"), name("h2"), name("h3")];
    let addrs = ["10.42.1.2", "10.42.3.2", "10.42.3.200", "10.42.2.9"];
    let services = [
        tcp(5432),
        tcp(22),
        tcp(8080),
        Service {
            proto: 1,
            port: None,
        },
    ];
    for (sn, sg) in names.iter().zip(&groups) {
        for (dn, dg) in names.iter().zip(&groups) {
            let pair = p.rules_between(&Endpoint::host(sn, sg), &Endpoint::host(dn, dg));
            for sa in addrs {
                for da in addrs {
                    for s in services {
                        let src = Endpoint::host(sn, sg).at(ip(sa));
                        let dst = Endpoint::host(dn, dg).at(ip(da));
                        assert_eq!(p.verdict_in(&pair, &src, &dst, s), p.verdict(&src, &dst, s));
                    }
                }
            }
        }
    }
}

#[test]
fn a_failing_test_names_its_line_and_what_it_got() {
    let text = format!(
        "{EXAMPLE}\n[[test]]\nfrom = \"node:h3\"\nto = \"node:h1\"\nport = \"tcp/5432\"\nexpect = \"allow\"\n"
    );
    let p = Policy::parse(&text).unwrap();
    let failures = p.check_tests(&Net).unwrap_err();
    assert_eq!(failures.len(), 1);
    let line = failures[0].to_string();
    assert_eq!(
        line,
        "test at line 24 failed: node:h3 -> node:h1 tcp/5432 expected allow, got deny (no rule allows it)"
    );
    let text = EXAMPLE
        .replace("expect = \"deny\"", "expect = \"allow\"")
        .replace("\"tcp/80\"", "\"tcp/5432\"");
    let text = text.replace(
        "from   = \"group:db\"\nto     = \"group:web\"",
        "from = \"group:web\"\nto = \"group:db\"",
    );
    let p = Policy::parse(&text).unwrap();
    p.check_tests(&Net).unwrap();
    let wrong = EXAMPLE.replace("expect = \"allow\"", "expect = \"deny\"");
    let failures = Policy::parse(&wrong)
        .unwrap()
        .check_tests(&Net)
        .unwrap_err();
    assert!(
        failures[0]
            .to_string()
            .ends_with("expected deny, got allow by the rule at line 2"),
        "{}",
        failures[0]
    );
}

#[test]
fn bad_files_are_refused_naming_the_line() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "[[allow]]\nfrom = [\"grp:web\"]\nto = [\"any\"]\nports = [\"any\"]\n",
            2,
            "names nobody",
        ),
        (
            "[[allow]]\nfrom = [\"any\"]\nto = [\"any\"]\nports = [\"tcp/99999\"]\n",
            4,
            "is not a port",
        ),
        (
            "[[allow]]\nfrom = [\"any\"]\nto = [\"any\"]\nports = [\"tcp/90-80\"]\n",
            4,
            "runs backwards",
        ),
        (
            "[[allow]]\nfrom = []\nto = [\"any\"]\nports = [\"any\"]\n",
            1,
            "`from` is empty",
        ),
        (
            "[[allow]]\nfrom = [\"any\"]\nto = [\"10.42.3.1/24\"]\nports = [\"any\"]\n",
            3,
            "host bits",
        ),
        (
            "\n[[allow]]\nfrom = [\"any\"]\nto = [\"any\"]\nport = [\"any\"]\n",
            5,
            "unknown field",
        ),
        ("[[allow]]\nfrom = [\"any\"\n", 2, ""),
        (
            "[[test]]\nfrom = \"any\"\nto = \"node:a\"\nport = \"icmp\"\nexpect = \"deny\"\n",
            2,
            "not \"any\"",
        ),
        (
            "[[test]]\nfrom = \"node:a\"\nto = \"10.0.0.0/8\"\nport = \"icmp\"\nexpect = \"deny\"\n",
            3,
            "one address",
        ),
        (
            "[[test]]\nfrom = \"node:a\"\nto = \"node:b\"\nport = \"tcp/1-2\"\nexpect = \"deny\"\n",
            4,
            "one port",
        ),
        (
            "[[test]]\nfrom = \"node:a\"\nto = \"node:b\"\nport = \"icmp\"\nexpect = \"maybe\"\n",
            5,
            "allow\" or \"deny",
        ),
        (
            "[[allow]]\nfrom = [\"node:Bad_Name\"]\nto = [\"any\"]\nports = [\"any\"]\n",
            2,
            "node name",
        ),
    ];
    for (text, line, says) in cases {
        let e = Policy::parse(text).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("policy line {line}: ")),
            "{text:?}: {msg}"
        );
        assert!(msg.contains(says), "{text:?}: {msg}");
    }
    let long = "#".repeat(parse::MAX_POLICY_LEN + 1);
    assert!(matches!(
        Policy::parse(&long),
        Err(PolicyError::TooLarge { .. })
    ));
}

#[test]
fn an_empty_file_is_a_policy_that_denies_everything() {
    let p = Policy::parse("").unwrap();
    let h1 = name("h1");
    let e = Endpoint::host(&h1, &[]);
    assert_eq!(p.verdict(&e, &e, tcp(1)), None);
}

#[test]
fn ports_and_selectors_print_as_written() {
    for text in [
        "tcp/5432",
        "udp/53",
        "tcp/8000-8999",
        "icmp",
        "proto/47",
        "any",
    ] {
        assert_eq!(parse::ports(text).unwrap().to_string(), text);
    }
    assert_eq!(parse::ports("tcp").unwrap().to_string(), "tcp/0-65535");
    for text in ["group:web", "node:h1", "10.42.0.0/16", "any"] {
        assert_eq!(parse::selector(text).unwrap().to_string(), text);
    }
}

// ---- packets ----

fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p
}

fn tcp_segment(sp: u16, dp: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sp.to_be_bytes());
    t[2..4].copy_from_slice(&dp.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
    t
}

const A: [u8; 4] = [10, 42, 1, 2];
const B: [u8; 4] = [10, 42, 3, 2];

#[test]
fn packets_are_classified_by_their_flow() {
    let syn = ipv4(proto::TCP, A, B, &tcp_segment(40000, 5432, 0x02));
    let Classified::Flow {
        key,
        service,
        closing,
    } = classify(&syn)
    else {
        panic!("not a flow")
    };
    assert_eq!(
        (key.src_port, key.dst_port, service, closing),
        (40000, 5432, tcp(5432), false)
    );
    let rst = ipv4(proto::TCP, B, A, &tcp_segment(5432, 40000, 0x04));
    let Classified::Flow {
        key: back, closing, ..
    } = classify(&rst)
    else {
        panic!()
    };
    assert!(closing);
    assert_eq!(back, key.reversed());
    // Echo request and reply are one flow.
    let req = ipv4(proto::ICMP, A, B, &[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
    let rep = ipv4(proto::ICMP, B, A, &[0, 0, 0, 0, 0x12, 0x34, 0, 1]);
    let (Classified::Flow { key: k1, .. }, Classified::Flow { key: k2, .. }) =
        (classify(&req), classify(&rep))
    else {
        panic!()
    };
    assert_eq!(k2, k1.reversed());
    // A port unreachable from B about A's UDP datagram reports on A's flow.
    let udp = ipv4(proto::UDP, A, B, &[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&udp);
    let err = ipv4(proto::ICMP, B, A, &icmp);
    let Classified::Flow { key: udp_key, .. } = classify(&udp) else {
        panic!()
    };
    assert_eq!(classify(&err), Classified::IcmpError { about: udp_key });
    // A later fragment has no ports.
    let mut frag = ipv4(proto::UDP, A, B, &[1, 2, 3, 4]);
    frag[6..8].copy_from_slice(&100u16.to_be_bytes());
    let Classified::Flow { service, .. } = classify(&frag) else {
        panic!()
    };
    assert_eq!(service.port, None);
    assert!(
        !Ports::Udp {
            first: 53,
            last: 53
        }
        .matches(service)
    );
    assert!(
        Ports::Udp {
            first: 0,
            last: 65535
        }
        .matches(service)
    );
    // GRE: by protocol number.
    let gre = ipv4(47, A, B, &[0, 0, 0x08, 0]);
    let Classified::Flow { service, .. } = classify(&gre) else {
        panic!()
    };
    assert!(Ports::Proto(47).matches(service));
    assert_eq!(classify(&syn[..30]), Classified::Malformed);
    assert_eq!(classify(&[0x45]), Classified::Malformed);
    assert_eq!(classify(&[]), Classified::Malformed);
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let mut p = vec![0x60, 0, 0, 0, 0, 0, 0, 64];
    p.extend_from_slice(&[0xfd; 16]);
    p.extend_from_slice(&[0xfe; 16]);
    // hop-by-hop (8 bytes) then TCP
    p[6] = 0;
    p.extend_from_slice(&[proto::TCP, 0, 0, 0, 0, 0, 0, 0]);
    p.extend_from_slice(&tcp_segment(1000, 443, 0x02));
    let Classified::Flow { key, service, .. } = classify(&p) else {
        panic!()
    };
    assert_eq!((key.proto, service.port), (proto::TCP, Some(443)));
}

proptest! {
    #[test]
    fn no_bytes_make_the_classifier_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = classify(&bytes);
        let mut v4 = bytes.clone();
        if let Some(b) = v4.first_mut() { *b = 0x45; }
        let _ = classify(&v4);
        let mut v6 = bytes;
        if let Some(b) = v6.first_mut() { *b = 0x60; }
        let _ = classify(&v6);
    }
}

// ---- flows ----

fn key(sp: u16) -> FlowKey {
    FlowKey {
        proto: proto::UDP,
        src: IpAddr::from(A),
        dst: IpAddr::from(B),
        src_port: sp,
        dst_port: 53,
    }
}

const RULE: RuleId = RuleId { index: 0, line: 2 };

#[test]
fn a_tracked_flow_lets_replies_in_until_it_idles_out() {
    let t0 = Instant::now();
    let mut t = FlowTable::new(8, Timeouts::default());
    assert_eq!(t.track(&key(1), false, t0), Tracked::New);
    t.insert(key(1), RULE, false, t0);
    assert_eq!(t.track(&key(1), false, t0), Tracked::Forward(RULE));
    assert_eq!(
        t.track(&key(1).reversed(), false, t0 + Duration::from_secs(100)),
        Tracked::Reply(RULE)
    );
    // UDP: 3 minutes idle.
    let later = t0 + Duration::from_secs(100 + 179);
    assert_eq!(t.track(&key(1), false, later), Tracked::Forward(RULE));
    assert_eq!(
        t.track(&key(1), false, later + Duration::from_secs(181)),
        Tracked::New
    );
    t.sweep(later + Duration::from_secs(181), 10);
    assert!(t.is_empty());
}

#[test]
fn tcp_is_short_lived_until_answered() {
    let t0 = Instant::now();
    let mut t = FlowTable::new(8, Timeouts::default());
    let k = FlowKey {
        proto: proto::TCP,
        ..key(1)
    };
    t.insert(k, RULE, false, t0);
    assert_eq!(
        t.track(&k, false, t0 + Duration::from_secs(61)),
        Tracked::New,
        "an unanswered SYN"
    );
    t.insert(k, RULE, false, t0);
    t.track(&k.reversed(), false, t0);
    assert_eq!(
        t.track(&k, false, t0 + Duration::from_secs(600)),
        Tracked::Forward(RULE)
    );
    t.track(&k, true, t0 + Duration::from_secs(600));
    assert_eq!(
        t.track(&k, false, t0 + Duration::from_secs(661)),
        Tracked::New,
        "closed"
    );
}

#[test]
fn a_full_table_pushes_out_the_oldest_idle_flow() {
    let t0 = Instant::now();
    let mut t = FlowTable::new(3, Timeouts::default());
    for i in 0..3 {
        t.insert(
            key(i),
            RULE,
            false,
            t0 + Duration::from_millis(u64::from(i)),
        );
    }
    // Flow 0 is used again: flow 1 is now the oldest idle.
    t.track(&key(0), false, t0 + Duration::from_secs(1));
    t.insert(key(3), RULE, false, t0 + Duration::from_secs(2));
    assert_eq!(t.len(), 3);
    assert_eq!(t.evicted(), 1);
    assert_eq!(
        t.track(&key(1), false, t0 + Duration::from_secs(2)),
        Tracked::New
    );
    for i in [0, 2, 3] {
        assert_ne!(
            t.track(&key(i), false, t0 + Duration::from_secs(2)),
            Tracked::New,
            "flow {i}"
        );
    }
}

#[test]
fn a_flood_of_flows_stays_within_the_bound() {
    let t0 = Instant::now();
    let mut t = FlowTable::new(1000, Timeouts::default());
    let keep = FlowKey {
        dst_port: 5432,
        ..key(7)
    };
    t.insert(keep, RULE, false, t0);
    for i in 0..200_000u32 {
        let now = t0 + Duration::from_micros(u64::from(i));
        let k = FlowKey {
            src_port: (i % 60_000) as u16,
            dst_port: 1000 + (i / 60_000) as u16,
            ..key(0)
        };
        t.insert(k, RULE, false, now);
        if i % 100 == 0 {
            // The flow in use keeps being used.
            assert_ne!(t.track(&keep, false, now), Tracked::New, "after {i}");
        }
        assert!(t.len() <= 1000);
    }
    assert!(t.evicted() >= 199_000);
}

#[test]
fn a_new_policy_cuts_the_flows_it_no_longer_allows() {
    let t0 = Instant::now();
    let mut t = FlowTable::new(8, Timeouts::default());
    t.insert(key(1), RULE, false, t0);
    t.insert(key(2), RULE, false, t0);
    let other = RuleId { index: 1, line: 9 };
    let cut = t.recheck(|k| (k.src_port == 2).then_some(other));
    assert_eq!(cut, 1);
    assert_eq!(t.track(&key(1), false, t0), Tracked::New);
    assert_eq!(t.track(&key(2), false, t0), Tracked::Forward(other));
    assert_eq!(t.related(&key(2), t0), Some(other));
    assert_eq!(t.related(&key(2).reversed(), t0), Some(other));
    assert_eq!(t.related(&key(1), t0), None);
}

// ---- signed policy ----

#[test]
fn a_signed_policy_verifies_and_forgeries_replays_and_damage_are_refused() {
    let ca = CaKey::generate();
    let net = name("net");
    let signed = SignedPolicy::sign(&ca, &net, 3, 1_700_000_000, EXAMPLE).unwrap();
    let back = SignedPolicy::from_bytes(&signed.to_bytes()).unwrap();
    assert_eq!(back, signed);
    let vk = ca.verifying_key();
    assert_eq!(
        back.verify(&vk, &net, Some(2)).unwrap(),
        Policy::parse(EXAMPLE).unwrap()
    );
    assert_eq!(back.text(), EXAMPLE);
    assert!(matches!(
        back.verify(&vk, &net, Some(3)),
        Err(PolicyRecordError::NotNewer {
            version: 3,
            held: 3
        })
    ));
    assert!(matches!(
        back.verify(&vk, &name("other"), None),
        Err(PolicyRecordError::WrongNetwork { .. })
    ));
    let other = CaKey::generate();
    let forged = SignedPolicy::sign(&other, &net, 9, 0, EXAMPLE).unwrap();
    let e = forged.verify(&vk, &net, None).unwrap_err();
    assert!(
        e.to_string().contains("not signed by this network's CA"),
        "{e}"
    );
    // One changed byte of the text: the signature no longer holds.
    let mut bytes = signed.to_bytes();
    let at = bytes.len() - 70;
    bytes[at] ^= 0x01;
    let damaged = SignedPolicy::from_bytes(&bytes).unwrap();
    assert!(matches!(
        damaged.verify(&vk, &net, None),
        Err(PolicyRecordError::Untrusted { .. })
    ));
    for cut in [0, 3, 10, bytes.len() - 1] {
        assert!(SignedPolicy::from_bytes(&bytes[..cut]).is_err());
    }
    assert!(SignedPolicy::sign(&ca, &net, 4, 0, "[[allow]]\nfrom = 1\n").is_err());
}

proptest! {
    #[test]
    fn no_bytes_make_the_policy_record_reader_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = SignedPolicy::from_bytes(&bytes);
    }

    #[test]
    fn no_text_makes_the_parser_panic(text in "[\\[\\]a-z=\" /:0-9.,\n-]{0,200}") {
        let _ = Policy::parse(&text);
    }
}

#[test]
fn the_example_in_the_repository_parses_and_its_tests_hold() {
    let text = include_str!("../../../examples/policy.toml");
    let p = Policy::parse(text).unwrap();
    assert_eq!((p.rules.len(), p.tests.len()), (3, 3));
    p.check_tests(&Net).unwrap();
}

// ---- enforcement between two hosts ----

#[test]
fn web_reaches_db_and_replies_come_back_but_db_cannot_open_to_web() {
    use super::enforce::{Direction, Judgement, PeerPolicy, PeerRules};
    let p = Policy::parse(EXAMPLE).unwrap();
    let (web, db) = ([name("web")], [name("db")]);
    let (h1, h3) = (name("h1"), name("h3"));
    let (e1, e3) = (Endpoint::host(&h1, &web), Endpoint::host(&h3, &db));
    // h1's view (peer h3) and h3's view (peer h1), each with its own table for the other.
    let (r1, r3) = (PeerRules::new(&p, &e1, &e3), PeerRules::new(&p, &e3, &e1));
    let at_h1 = PeerPolicy {
        policy: &p,
        rules: &r1,
        local: e1,
        peer: e3,
    };
    let at_h3 = PeerPolicy {
        policy: &p,
        rules: &r3,
        local: e3,
        peer: e1,
    };
    let (mut f1, mut f3) = (
        FlowTable::new(64, Timeouts::default()),
        FlowTable::new(64, Timeouts::default()),
    );
    let now = Instant::now();
    let syn = ipv4(proto::TCP, A, B, &tcp_segment(40000, 5432, 0x02));
    let syn_ack = ipv4(proto::TCP, B, A, &tcp_segment(5432, 40000, 0x12));
    assert!(
        matches!(at_h1.judge(&mut f1, Direction::Outbound, &syn, now), Judgement::Opened(r) if r.line == 2)
    );
    assert!(matches!(
        at_h3.judge(&mut f3, Direction::Inbound, &syn, now),
        Judgement::Opened(_)
    ));
    assert!(matches!(
        at_h3.judge(&mut f3, Direction::Outbound, &syn_ack, now),
        Judgement::Tracked(r) if r.line == 2
    ));
    assert!(matches!(
        at_h1.judge(&mut f1, Direction::Inbound, &syn_ack, now),
        Judgement::Tracked(r) if r.line == 2
    ));
    // db opening to web: denied at db (sender) and at web (receiver).
    let back = ipv4(proto::TCP, B, A, &tcp_segment(5000, 80, 0x02));
    assert_eq!(
        at_h3.judge(&mut f3, Direction::Outbound, &back, now),
        Judgement::Denied
    );
    assert_eq!(
        at_h1.judge(&mut f1, Direction::Inbound, &back, now),
        Judgement::Denied
    );
    // web -> db on 22: denied.
    let ssh = ipv4(proto::TCP, A, B, &tcp_segment(40001, 22, 0x02));
    assert_eq!(
        at_h1.judge(&mut f1, Direction::Outbound, &ssh, now),
        Judgement::Denied
    );
    // An ICMP error about the tracked flow passes; about another flow it does not.
    let mut quote = vec![3, 3, 0, 0, 0, 0, 0, 0];
    quote.extend_from_slice(&syn[..28]);
    let err = ipv4(proto::ICMP, B, A, &quote);
    assert!(matches!(
        at_h1.judge(&mut f1, Direction::Inbound, &err, now),
        Judgement::Tracked(r) if r.line == 2
    ));
    let mut quote = vec![3, 3, 0, 0, 0, 0, 0, 0];
    quote.extend_from_slice(&ssh[..28]);
    let err = ipv4(proto::ICMP, B, A, &quote);
    assert_eq!(
        at_h1.judge(&mut f1, Direction::Inbound, &err, now),
        Judgement::Denied
    );
    assert_eq!(
        at_h1.judge(&mut f1, Direction::Outbound, &[0x45, 0], now),
        Judgement::Malformed
    );

    // A new policy without the rule: the flow is cut on both hosts at the recheck.
    let p2 = Policy::parse(
        "[[allow]]\nfrom = [\"group:web\"]\nto = [\"group:db\"]\nports = [\"icmp\"]\n",
    )
    .unwrap();
    let (r1, r3) = (PeerRules::new(&p2, &e1, &e3), PeerRules::new(&p2, &e3, &e1));
    let at_h1 = PeerPolicy {
        policy: &p2,
        rules: &r1,
        local: e1,
        peer: e3,
    };
    let at_h3 = PeerPolicy {
        policy: &p2,
        rules: &r3,
        local: e3,
        peer: e1,
    };
    let h1_net: ipnet::IpNet = "10.42.1.0/24".parse().unwrap();
    assert_eq!(at_h1.recheck(&mut f1, |k| !h1_net.contains(&k.src)), 1);
    assert_eq!(at_h3.recheck(&mut f3, |k| h1_net.contains(&k.src)), 1);
    assert_eq!(
        at_h1.judge(&mut f1, Direction::Inbound, &syn_ack, now),
        Judgement::Denied
    );
}
