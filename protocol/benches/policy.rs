//! The policy's cost per packet (issue 16): classifying a packet, finding its flow among
//! 65,536 tracked ones (what every packet of an established flow costs), and the verdict
//! for a new flow with 100 and 1,000 rules, the allowing rule last (the worst case), both
//! over all rules and over the rules kept for the pair of hosts; and what the flow log
//! adds per packet when it is on.
//!
//! Run: `cargo bench -p protocol --bench policy` (criterion prints ns per iteration).

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use keys::Name;
use protocol::policy::enforce::Direction;
use protocol::policy::flowlog::{DEFAULT_WINDOW_FLOWS, FlowWindow, Verdict};
use protocol::policy::flows::{DEFAULT_CAPACITY, FlowTable, Timeouts, Tracked};
use protocol::policy::packet::{Classified, FlowKey, classify};
use protocol::policy::{Endpoint, Policy, RuleId, Service, proto};

/// A policy of `n` rules: groups g0.., nodes, CIDRs; the rule that lets web reach db on
/// tcp/5432 comes last.
fn policy(n: usize) -> Policy {
    let mut text = String::new();
    for i in 0..n - 1 {
        let from = match i % 3 {
            0 => format!("group:g{i}"),
            1 => format!("node:n{i}"),
            _ => format!("10.{}.{}.0/24", 100 + i / 256 % 100, i % 256),
        };
        text += &format!(
            "[[allow]]\nfrom = [\"{from}\"]\nto = [\"group:db\", \"10.42.3.0/28\"]\nports = [\"tcp/{}\", \"udp/53\"]\n",
            1000 + i
        );
    }
    text += "[[allow]]\nfrom = [\"group:web\"]\nto = [\"group:db\"]\nports = [\"tcp/5432\", \"icmp\"]\n";
    Policy::parse(&text).expect("the bench's policy parses")
}

fn tcp_packet(sp: u16) -> Vec<u8> {
    let mut p = vec![0u8; 1420];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&1420u16.to_be_bytes());
    p[9] = proto::TCP;
    p[12..16].copy_from_slice(&[10, 42, 1, 2]);
    p[16..20].copy_from_slice(&[10, 42, 3, 2]);
    p[20..22].copy_from_slice(&sp.to_be_bytes());
    p[22..24].copy_from_slice(&5432u16.to_be_bytes());
    p[32] = 0x50;
    p[33] = 0x10;
    p
}

fn benches(c: &mut Criterion) {
    let (web, db) = ([Name::new("web").unwrap()], [Name::new("db").unwrap()]);
    let (h1, h3) = (Name::new("h1").unwrap(), Name::new("h3").unwrap());
    let src = Endpoint::host(&h1, &web).at(IpAddr::from([10, 42, 1, 2]));
    let dst = Endpoint::host(&h3, &db).at(IpAddr::from([10, 42, 3, 2]));
    let service = Service {
        proto: proto::TCP,
        port: Some(5432),
    };
    for n in [100, 1000] {
        let p = policy(n);
        assert!(p.verdict(&src, &dst, service).is_some());
        c.bench_function(&format!("verdict, all {n} rules"), |b| {
            b.iter(|| black_box(&p).verdict(black_box(&src), black_box(&dst), service))
        });
        let pair = p.rules_between(&Endpoint::host(&h1, &web), &Endpoint::host(&h3, &db));
        c.bench_function(
            &format!("verdict, rules kept for the pair ({} of {n})", pair.len()),
            |b| {
                b.iter(|| {
                    black_box(&p).verdict_in(&pair, black_box(&src), black_box(&dst), service)
                })
            },
        );
    }

    let packet = tcp_packet(40000);
    c.bench_function("classify a TCP packet", |b| {
        b.iter(|| classify(black_box(&packet)))
    });

    let now = Instant::now();
    let rule = RuleId { index: 0, line: 1 };
    let mut table = FlowTable::new(DEFAULT_CAPACITY, Timeouts::default());
    let Classified::Flow { key, .. } = classify(&packet) else {
        unreachable!("a TCP packet")
    };
    for i in 0..DEFAULT_CAPACITY as u32 {
        let k = FlowKey {
            src_port: i as u16,
            dst_port: 1 + (i >> 16) as u16,
            ..key
        };
        table.insert(k, rule, false, now);
    }
    // The two flows the benches send: tracked, among 65,534 others.
    let other = tcp_packet(40001);
    for p in [&packet, &other] {
        let Classified::Flow { key, .. } = classify(p) else {
            unreachable!("a TCP packet")
        };
        table.insert(key, rule, false, now);
        assert_ne!(table.track(&key, false, now), Tracked::New);
    }
    assert_eq!(table.len(), DEFAULT_CAPACITY);
    c.bench_function(
        "classify and track a packet of the last flow (a stream)",
        |b| {
            b.iter(|| match classify(black_box(&packet)) {
                Classified::Flow { key, closing, .. } => table.track(&key, closing, now),
                _ => unreachable!(),
            })
        },
    );
    // Two flows in turn: every packet misses the fast path and looks the map up.
    let mut i = 0u32;
    c.bench_function(
        "classify and track a packet among 65,536 flows (map lookup)",
        |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let p = if i.is_multiple_of(2) { &packet } else { &other };
                match classify(black_box(p)) {
                    Classified::Flow { key, closing, .. } => table.track(&key, closing, now),
                    _ => unreachable!(),
                }
            })
        },
    );

    // The flow log (issue 17): what a packet costs when the flow log is on.
    let mut window = FlowWindow::new(DEFAULT_WINDOW_FLOWS);
    let allowed = Verdict::Allowed(Some(rule));
    c.bench_function(
        "flow log: count a packet of the last flow (a stream)",
        |b| b.iter(|| window.add(black_box(&packet), Direction::Outbound, allowed, 7)),
    );
    let mut i = 0u32;
    c.bench_function(
        "flow log: count a packet of two flows in turn (map lookup)",
        |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let p = if i.is_multiple_of(2) { &packet } else { &other };
                window.add(black_box(p), Direction::Outbound, allowed, 7)
            })
        },
    );
}

criterion_group!(policy_benches, benches);
criterion_main!(policy_benches);
