//! Tests of name sets: encoding, the acceptance rules, the cap.

use keys::{CaKey, NodeCertificate, PrivateKey, SigningKey};

use super::*;
use crate::records::{MemberRecord, MemberState};

const NOW: u64 = 1_700_000_000;

fn name(text: &str) -> Name {
    text.parse().unwrap()
}

struct Host {
    key: SigningKey,
    number: u32,
}

/// A directory of network `prod` holding live members `a` (10.42.1.0/24) and `b`
/// (10.42.2.0/24).
fn network() -> (Directory, Host, Host) {
    let ca = CaKey::generate();
    let mut dir = Directory::new(ca.verifying_key(), name("prod"));
    let mut hosts = Vec::new();
    for (i, node) in ["a", "b"].iter().enumerate() {
        let key = SigningKey::generate();
        let serial = i as u64 + 1;
        let cert = NodeCertificate {
            network: name("prod"),
            node: name(node),
            wireguard_key: PrivateKey::generate().public_key(),
            control_key: key.verifying_key(),
            subnets: vec![format!("10.42.{}.0/24", i + 1).parse().unwrap()],
            groups: vec![],
            not_before: NOW - 60,
            not_after: NOW + 86_400,
            serial,
            number: serial as u32,
            ca_fingerprint: ca.fingerprint(),
        };
        let record = MemberRecord {
            certificate: ca.sign(&cert).unwrap(),
            version: 1,
            state: MemberState::Alive,
            control_port: 51821,
            relay: None,
            endpoints: vec![format!("198.18.0.{}:51820", 11 + i).parse().unwrap()],
        }
        .sign(&key)
        .unwrap();
        dir.apply_member(&record, NOW).unwrap();
        hosts.push(Host {
            key,
            number: serial as u32,
        });
    }
    let b = hosts.pop().unwrap();
    let a = hosts.pop().unwrap();
    (dir, a, b)
}

fn entry(name: &str, address: &str) -> NameEntry {
    NameEntry {
        name: name.into(),
        aliases: vec!["api".into()],
        address: address.parse().unwrap(),
        network: "ovl".into(),
        range: "10.42.0.0/16".parse().unwrap(),
    }
}

fn set(member: &str, host: &Host, version: u64, entries: Vec<NameEntry>) -> NameSet {
    NameSet {
        network: name("prod"),
        member: name(member),
        number: host.number,
        version,
        entries,
    }
}

#[test]
fn a_set_round_trips_and_junk_is_refused() {
    let (_, a, _) = network();
    let signed = set("a", &a, 3, vec![entry("web", "10.42.1.2")])
        .sign(&a.key)
        .unwrap();
    let bytes = signed.to_bytes();
    assert_eq!(SignedNameSet::from_bytes(&bytes).unwrap(), signed);
    for cut in 0..bytes.len() {
        assert!(SignedNameSet::from_bytes(&bytes[..cut]).is_err(), "{cut}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(SignedNameSet::from_bytes(&long).is_err());
    // A name no writer makes (upper case) is malformed.
    let bad = set("a", &a, 3, vec![entry("Web", "10.42.1.2")]);
    assert!(matches!(bad.sign(&a.key), Err(NameError::NotSignable(_))));
}

#[test]
fn a_members_set_is_accepted_and_newer_versions_replace_it() {
    let (dir, a, _) = network();
    let mut table = NameTable::default();
    let v1 = set("a", &a, 1, vec![entry("web", "10.42.1.2")])
        .sign(&a.key)
        .unwrap();
    assert_eq!(table.apply(&dir, &v1, 4096, NOW), Ok(NamesApplied::Changed));
    assert_eq!(
        table.apply(&dir, &v1, 4096, NOW),
        Ok(NamesApplied::Unchanged)
    );
    // The container went: version 2 lacks it.
    let v2 = set("a", &a, 2, vec![]).sign(&a.key).unwrap();
    assert_eq!(table.apply(&dir, &v2, 4096, NOW), Ok(NamesApplied::Changed));
    assert!(
        table
            .get(&name("a"))
            .unwrap()
            .signed
            .set()
            .entries
            .is_empty()
    );
    // The old one cannot come back.
    assert!(matches!(
        table.apply(&dir, &v1, 4096, NOW),
        Err(NameError::Replay { .. })
    ));
}

/// The attack: member `b` publishes a set in `a`'s name (its own key), or names pointing
/// at `a`'s containers. Both refused; `a`'s own set is untouched.
#[test]
fn a_forged_set_is_refused() {
    let (dir, a, b) = network();
    let mut table = NameTable::default();
    let real = set("a", &a, 1, vec![entry("web", "10.42.1.2")])
        .sign(&a.key)
        .unwrap();
    table.apply(&dir, &real, 4096, NOW).unwrap();
    let forged = set("a", &a, 9, vec![entry("web", "10.42.2.66")])
        .sign(&b.key)
        .unwrap();
    assert_eq!(
        table.apply(&dir, &forged, 4096, NOW),
        Err(NameError::Forged(name("a")))
    );
    // Signed by b, but for an address of a's.
    let hijack = set("b", &b, 1, vec![entry("web", "10.42.1.2")])
        .sign(&b.key)
        .unwrap();
    assert!(matches!(
        table.apply(&dir, &hijack, 4096, NOW),
        Err(NameError::AddressNotOwned { .. })
    ));
    // Tampered bytes after signing.
    let mut bytes = real.to_bytes();
    let at = bytes.len() - 70;
    bytes[at] ^= 1;
    assert!(table.apply_bytes(&dir, &bytes, 4096, NOW).is_err());
    // A member nobody knows, another member number.
    let stranger = set("c", &a, 1, vec![]).sign(&a.key).unwrap();
    assert_eq!(
        table.apply(&dir, &stranger, 4096, NOW),
        Err(NameError::UnknownMember(name("c")))
    );
    let old = NameSet {
        number: 0,
        ..set("a", &a, 5, vec![])
    }
    .sign(&a.key)
    .unwrap();
    assert!(matches!(
        table.apply(&dir, &old, 4096, NOW),
        Err(NameError::StaleCertificate { .. })
    ));
    assert_eq!(table.get(&name("a")).unwrap().signed, real);
}

/// 5,000 names from one member are refused whole at the cap of 4,096; the other member's
/// names are unaffected.
#[test]
fn a_set_above_the_cap_is_refused_and_others_are_unaffected() {
    let (dir, a, b) = network();
    let mut table = NameTable::default();
    let small = set("a", &a, 1, vec![entry("web", "10.42.1.2")])
        .sign(&a.key)
        .unwrap();
    table.apply(&dir, &small, DEFAULT_MAX_NAMES, NOW).unwrap();
    let many: Vec<NameEntry> = (0..5000u32)
        .map(|i| {
            let mut e = entry(&format!("c{i}"), "10.42.2.2");
            e.aliases.clear();
            e
        })
        .collect();
    let big = set("b", &b, 1, many).sign(&b.key).unwrap();
    let bytes = big.to_bytes();
    assert_eq!(
        table.apply_bytes(&dir, &bytes, DEFAULT_MAX_NAMES, NOW),
        Err(NameError::TooMany {
            member: name("b"),
            count: 5000,
            cap: DEFAULT_MAX_NAMES
        })
    );
    assert!(table.get(&name("b")).is_none());
    assert_eq!(table.get(&name("a")).unwrap().signed, small);
    // A higher cap takes it.
    assert_eq!(
        table.apply_bytes(&dir, &bytes, 8192, NOW),
        Ok(NamesApplied::Changed)
    );
}

#[test]
fn sets_of_members_gone_are_dropped() {
    let (mut dir, a, b) = network();
    let mut table = NameTable::default();
    for (member, host, address) in [("a", &a, "10.42.1.2"), ("b", &b, "10.42.2.2")] {
        let s = set(member, host, 1, vec![entry("web", address)])
            .sign(&host.key)
            .unwrap();
        table.apply(&dir, &s, 4096, NOW).unwrap();
    }
    assert!(!table.retain_live(&dir));
    // b expires (same as gone for names).
    dir.expire(NOW + 2 * 86_400);
    assert!(table.retain_live(&dir));
    assert_eq!(table.sets().count(), 0);
}
