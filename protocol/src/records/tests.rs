//! Tests of record encoding, signing, and the directory's rules.

use std::net::SocketAddr;

use ipnet::IpNet;
use keys::{CaKey, NodeCertificate, PrivateKey, PublicKey, SignedCertificate, SigningKey};

use super::*;

const NOW: u64 = 1_700_000_000;
const DAY: u64 = 86_400;

fn name(text: &str) -> Name {
    text.parse().unwrap()
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// A member host: its keys and its CA-signed certificate.
struct Host {
    key: SigningKey,
    wireguard_key: PublicKey,
    certificate: SignedCertificate,
}

impl Host {
    fn new(ca: &CaKey, node: &str, subnets: &[&str]) -> Host {
        Host::issue(ca, "prod", node, 1, subnets)
    }

    fn issue(ca: &CaKey, network: &str, node: &str, serial: u64, subnets: &[&str]) -> Host {
        let key = SigningKey::generate();
        let wireguard_key = PrivateKey::generate().public_key();
        let cert = NodeCertificate {
            network: name(network),
            node: name(node),
            wireguard_key,
            control_key: key.verifying_key(),
            subnets: subnets.iter().map(|s| net(s)).collect(),
            groups: vec![name("web")],
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            serial,
            number: serial as u32,
            ca_fingerprint: ca.fingerprint(),
        };
        Host {
            certificate: ca.sign(&cert).unwrap(),
            key,
            wireguard_key,
        }
    }

    fn record(&self, version: u64, state: MemberState, endpoints: &[&str]) -> MemberRecord {
        MemberRecord {
            certificate: self.certificate.clone(),
            version,
            state,
            control_port: 51821,
            endpoints: endpoints.iter().map(|e| addr(e)).collect(),
            relay: None,
        }
    }

    fn alive(&self, version: u64, endpoint: &str) -> SignedMemberRecord {
        self.record(version, MemberState::Alive, &[endpoint])
            .sign(&self.key)
            .unwrap()
    }
}

fn directory(ca: &CaKey) -> Directory {
    Directory::new(ca.verifying_key(), name("prod"))
}

fn revocation(ca: &CaKey, host: &Host, node: &str, serial: u64) -> SignedRevocation {
    Revocation {
        network: name("prod"),
        node: name(node),
        serial,
        wireguard_key: host.wireguard_key,
        revoked_at: NOW,
    }
    .sign(ca)
}

#[test]
fn encoding_matches_the_documented_layout() {
    let ca = CaKey::generate();
    let host = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let signed = host
        .record(
            7,
            MemberState::Alive,
            &["198.18.0.11:51820", "[2001:db8::1]:443"],
        )
        .sign(&host.key)
        .unwrap();
    let mut body = vec![1u8];
    body.extend_from_slice(&host.certificate.to_bytes());
    body.extend_from_slice(&7u64.to_be_bytes());
    body.extend_from_slice(&[1, 0xca, 0x6d, 2, 4, 198, 18, 0, 11, 0xca, 0x6c, 6]);
    body.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    body.extend_from_slice(&443u16.to_be_bytes());
    assert_eq!(signed.body(), body.as_slice());
    let bytes = signed.to_bytes();
    assert_eq!(bytes[..2], (body.len() as u16).to_be_bytes());
    assert_eq!(&bytes[2..2 + body.len()], body.as_slice());
    assert_eq!(&bytes[2 + body.len()..], signed.signature().as_bytes());
    assert_eq!(
        host.key
            .verifying_key()
            .verify(MEMBER_RECORD_CONTEXT, &body, signed.signature()),
        Ok(())
    );
    assert_eq!(SignedMemberRecord::from_bytes(&bytes).unwrap(), signed);

    let revoked = revocation(&ca, &host, "web-1", 3);
    let mut body = vec![1u8];
    body.extend_from_slice(ca.fingerprint().as_bytes());
    body.extend_from_slice(b"\x04prod\x05web-1");
    body.extend_from_slice(&3u64.to_be_bytes());
    body.extend_from_slice(host.wireguard_key.as_bytes());
    body.extend_from_slice(&NOW.to_be_bytes());
    let bytes = revoked.to_bytes();
    assert_eq!(&bytes[2..2 + body.len()], body.as_slice());
    assert_eq!(SignedRevocation::from_bytes(&bytes).unwrap(), revoked);
}

#[test]
fn a_full_record_fits_a_gossip_datagram() {
    let ca = CaKey::generate();
    let key = SigningKey::generate();
    let long = |c: char| name(&c.to_string().repeat(63));
    let mut cert = NodeCertificate {
        network: long('n'),
        node: long('h'),
        wireguard_key: PrivateKey::generate().public_key(),
        control_key: key.verifying_key(),
        subnets: (0..4).map(|i| net(&format!("fd00:42:{i}::/64"))).collect(),
        groups: (0..8)
            .map(|i| name(&format!("{i}{}", "g".repeat(62))))
            .collect(),
        not_before: NOW - DAY,
        not_after: NOW + DAY,
        serial: u64::MAX,
        number: u32::MAX,
        ca_fingerprint: ca.fingerprint(),
    };
    let endpoints: Vec<SocketAddr> = (1..=4)
        .map(|i| addr(&format!("[2001:db8::{i}]:51820")))
        .collect();
    let record = |cert: &NodeCertificate| MemberRecord {
        certificate: ca.sign(cert).unwrap(),
        version: u64::MAX,
        state: MemberState::Alive,
        control_port: u16::MAX,
        endpoints: endpoints.clone(),
        relay: Some(true),
    };
    let len = record(&cert).sign(&key).unwrap().to_bytes().len();
    assert!(len <= 1150, "{len} bytes");

    // Every limit reached: exactly the documented maximum.
    cert.subnets = (0..8).map(|i| net(&format!("fd00:42:{i}::/64"))).collect();
    let len = record(&cert).sign(&key).unwrap().to_bytes().len();
    assert_eq!(len, MAX_SIGNED_MEMBER_LEN);
    assert_eq!(MAX_SIGNED_MEMBER_LEN, 1117);
}

#[test]
fn sign_refuses_bad_endpoints() {
    let ca = CaKey::generate();
    let host = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let five = [
        "1.1.1.1:1",
        "1.1.1.2:1",
        "1.1.1.3:1",
        "1.1.1.4:1",
        "1.1.1.5:1",
    ];
    for endpoints in [
        &five[..],
        &["1.1.1.1:0"],
        &["1.1.1.1:1", "1.1.1.1:1"],
        &["127.0.0.1:51820"],
        &["198.18.0.11:51820", "[::1]:51820"],
        &["169.254.169.254:80"],
        &["[fe80::1]:51820"],
        &["[::ffff:127.0.0.1]:51820"],
        &["0.0.0.0:51820"],
        &["255.255.255.255:51820"],
        &["224.0.0.1:51820"],
    ] {
        let err = host
            .record(1, MemberState::Alive, endpoints)
            .sign(&host.key)
            .unwrap_err();
        assert!(matches!(err, RecordError::NotSignable { .. }), "{err}");
    }
}

#[test]
fn happy_path() {
    let ca = CaKey::generate();
    let web = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let db = Host::new(&ca, "db-1", &["10.42.2.0/24", "fd00:42:2::/64"]);
    let mut dir = directory(&ca);
    let bytes = web.alive(1, "198.18.0.11:51820").to_bytes();
    assert_eq!(dir.apply_member_bytes(&bytes, NOW), Ok(Applied::New));
    assert_eq!(
        dir.apply_member(&db.alive(1, "198.18.0.12:51820"), NOW),
        Ok(Applied::New)
    );

    let live: Vec<_> = dir.live_members().collect();
    assert_eq!(live.len(), 2);
    let member = dir.live_member(&name("web-1")).unwrap();
    assert_eq!(member.name, &name("web-1"));
    assert_eq!(member.wireguard_key, &web.wireguard_key);
    assert_eq!(member.subnets, &[net("10.42.1.0/24")]);
    assert_eq!(member.groups, &[name("web")]);
    assert_eq!(member.endpoints, &[addr("198.18.0.11:51820")]);
    assert_eq!(member.version, 1);
    assert_eq!(dir.member_records().count(), 2);
    assert!(!dir.is_revoked(&web.wireguard_key));
}

#[test]
fn certificate_from_another_ca_is_refused() {
    let ca = CaKey::generate();
    let other_ca = CaKey::generate();
    let host = Host::new(&other_ca, "web-1", &["10.42.1.0/24"]);
    let mut dir = directory(&ca);
    let err = dir
        .apply_member(&host.alive(1, "198.18.0.11:51820"), NOW)
        .unwrap_err();
    assert!(
        matches!(
            err,
            RecordError::UntrustedCertificate {
                source: CertError::WrongCa { .. }
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("not from this network's CA"),
        "{err}"
    );
    assert_eq!(dir, directory(&ca));
}

#[test]
fn certificate_for_another_network_is_refused() {
    let ca = CaKey::generate();
    let host = Host::issue(&ca, "staging", "web-1", 1, &["10.42.1.0/24"]);
    let mut dir = directory(&ca);
    let err = dir
        .apply_member(&host.alive(1, "198.18.0.11:51820"), NOW)
        .unwrap_err();
    assert_eq!(
        err,
        RecordError::WrongNetwork {
            node: name("web-1"),
            found: name("staging"),
            expected: name("prod"),
        }
    );
    assert_eq!(dir.live_members().count(), 0);
}

#[test]
fn certificate_outside_its_window_is_refused() {
    let ca = CaKey::generate();
    let host = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let signed = host.alive(1, "198.18.0.11:51820");
    let mut dir = directory(&ca);
    for now in [NOW + 2 * DAY, NOW - 2 * DAY] {
        let err = dir.apply_member(&signed, now).unwrap_err();
        assert!(
            matches!(err, RecordError::CertificateNotValidNow { .. }),
            "{err}"
        );
    }
    assert_eq!(dir.live_members().count(), 0);
}

#[test]
fn forged_record_is_refused_and_changes_nothing() {
    let ca = CaKey::generate();
    let victim = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let mallory = Host::new(&ca, "evil-1", &["10.42.9.0/24"]);
    let mut dir = directory(&ca);
    dir.apply_member(&victim.alive(1, "198.18.0.11:51820"), NOW)
        .unwrap();
    let before = dir.clone();

    // Mallory takes the victim's (public) certificate and signs a newer record moving the
    // victim's endpoint, and so its subnet's traffic, to itself.
    let forged = victim
        .record(2, MemberState::Alive, &["198.18.0.66:51820"])
        .sign(&mallory.key)
        .unwrap();
    let err = dir.apply_member(&forged, NOW).unwrap_err();
    assert_eq!(
        err,
        RecordError::Forged {
            node: name("web-1")
        }
    );
    assert!(err.to_string().contains("forged"), "{err}");
    // Nor can it make the victim leave.
    let forged_leave = victim
        .record(3, MemberState::Left, &[])
        .sign(&mallory.key)
        .unwrap();
    assert!(matches!(
        dir.apply_member(&forged_leave, NOW),
        Err(RecordError::Forged { .. })
    ));
    assert_eq!(dir, before);
}

#[test]
fn replayed_older_record_is_refused_and_identical_is_unchanged() {
    let ca = CaKey::generate();
    let host = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let old = host.alive(1, "198.18.0.11:51820");
    let new = host.alive(2, "198.18.0.11:51820");
    let mut dir = directory(&ca);
    dir.apply_member(&new, NOW).unwrap();
    assert_eq!(
        dir.apply_member(&old, NOW),
        Err(RecordError::Replay {
            node: name("web-1"),
            version: 1,
            held: 2,
        })
    );
    // Same version, other content: refused too.
    let same_version = host.alive(2, "198.18.0.99:51820");
    assert!(matches!(
        dir.apply_member(&same_version, NOW),
        Err(RecordError::Replay {
            version: 2,
            held: 2,
            ..
        })
    ));
    assert_eq!(dir.apply_member(&new, NOW), Ok(Applied::Unchanged));
    assert_eq!(
        dir.apply_member_bytes(&new.to_bytes(), NOW),
        Ok(Applied::Unchanged)
    );
    assert_eq!(dir.live_member(&name("web-1")).unwrap().version, 2);
}

#[test]
fn newer_version_with_a_moved_endpoint_is_an_update() {
    let ca = CaKey::generate();
    let host = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let mut dir = directory(&ca);
    dir.apply_member(&host.alive(1, "198.18.0.11:51820"), NOW)
        .unwrap();
    assert_eq!(
        dir.apply_member(&host.alive(2, "198.18.0.21:51820"), NOW),
        Ok(Applied::Updated {
            endpoint_changed: true,
            key_changed: false,
            subnets_changed: false,
        })
    );
    assert_eq!(
        dir.live_member(&name("web-1")).unwrap().endpoints,
        &[addr("198.18.0.21:51820")]
    );
}

#[test]
fn overlapping_subnet_is_refused_naming_both() {
    let ca = CaKey::generate();
    let web = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let greedy = Host::new(&ca, "db-1", &["10.42.2.0/24", "10.42.0.0/16"]);
    let mut dir = directory(&ca);
    dir.apply_member(&web.alive(1, "198.18.0.11:51820"), NOW)
        .unwrap();
    let err = dir
        .apply_member(&greedy.alive(1, "198.18.0.12:51820"), NOW)
        .unwrap_err();
    assert_eq!(
        err,
        RecordError::SubnetOverlap {
            node: name("db-1"),
            subnet: net("10.42.0.0/16"),
            other: name("web-1"),
            other_subnet: net("10.42.1.0/24"),
        }
    );
    let text = err.to_string();
    assert!(text.contains("db-1") && text.contains("web-1"), "{text}");
    assert!(dir.live_member(&name("db-1")).is_none());

    // Once web-1 has left, its subnet is free.
    let left = web
        .record(2, MemberState::Left, &[])
        .sign(&web.key)
        .unwrap();
    assert_eq!(dir.apply_member(&left, NOW), Ok(Applied::Left));
    assert_eq!(
        dir.apply_member(&greedy.alive(1, "198.18.0.12:51820"), NOW),
        Ok(Applied::New)
    );
}

#[test]
fn left_member_is_not_brought_back_by_an_older_record() {
    let ca = CaKey::generate();
    let host = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let mut dir = directory(&ca);
    dir.apply_member(&host.alive(1, "198.18.0.11:51820"), NOW)
        .unwrap();
    let left = host
        .record(2, MemberState::Left, &[])
        .sign(&host.key)
        .unwrap();
    assert_eq!(dir.apply_member(&left, NOW), Ok(Applied::Left));
    assert_eq!(dir.live_members().count(), 0);
    assert!(matches!(
        dir.apply_member(&host.alive(1, "198.18.0.11:51820"), NOW),
        Err(RecordError::Replay { .. })
    ));
    // Rejoining takes a newer version.
    assert_eq!(
        dir.apply_member(&host.alive(3, "198.18.0.11:51820"), NOW),
        Ok(Applied::New)
    );
}

#[test]
fn reissued_certificate_needs_a_higher_serial() {
    let ca = CaKey::generate();
    let first = Host::issue(&ca, "prod", "web-1", 5, &["10.42.1.0/24"]);
    let rekeyed = Host::issue(&ca, "prod", "web-1", 6, &["10.42.1.0/24"]);
    let stale = Host::issue(&ca, "prod", "web-1", 4, &["10.42.1.0/24"]);
    let mut dir = directory(&ca);
    dir.apply_member(&first.alive(10, "198.18.0.11:51820"), NOW)
        .unwrap();
    // A lower serial is refused whatever its version.
    assert_eq!(
        dir.apply_member(&stale.alive(99, "198.18.0.11:51820"), NOW),
        Err(RecordError::OlderCertificate {
            node: name("web-1"),
            serial: 4,
            held: 5,
        })
    );
    // A higher serial wins even with a lower version (the member counts again).
    assert_eq!(
        dir.apply_member(&rekeyed.alive(1, "198.18.0.11:51820"), NOW),
        Ok(Applied::Updated {
            endpoint_changed: false,
            key_changed: true,
            subnets_changed: false,
        })
    );
    assert_eq!(
        dir.live_member(&name("web-1")).unwrap().wireguard_key,
        &rekeyed.wireguard_key
    );
    // The old certificate cannot come back.
    assert!(matches!(
        dir.apply_member(&first.alive(11, "198.18.0.11:51820"), NOW),
        Err(RecordError::OlderCertificate { .. })
    ));
}

#[test]
fn wireguard_key_of_another_live_member_is_refused() {
    let ca = CaKey::generate();
    let web = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let mut copycat = Host::new(&ca, "db-1", &["10.42.2.0/24"]);
    let mut cert = NodeCertificate {
        network: name("prod"),
        node: name("db-1"),
        wireguard_key: web.wireguard_key,
        control_key: copycat.key.verifying_key(),
        subnets: vec![net("10.42.2.0/24")],
        groups: vec![],
        not_before: NOW - DAY,
        not_after: NOW + DAY,
        serial: 2,
        number: 2,
        ca_fingerprint: ca.fingerprint(),
    };
    copycat.certificate = ca.sign(&cert).unwrap();
    let mut dir = directory(&ca);
    dir.apply_member(&web.alive(1, "198.18.0.11:51820"), NOW)
        .unwrap();
    assert!(matches!(
        dir.apply_member(&copycat.alive(1, "198.18.0.12:51820"), NOW),
        Err(RecordError::KeyInUse { .. })
    ));
    cert.wireguard_key = PrivateKey::generate().public_key();
    copycat.certificate = ca.sign(&cert).unwrap();
    assert_eq!(
        dir.apply_member(&copycat.alive(1, "198.18.0.12:51820"), NOW),
        Ok(Applied::New)
    );
}

#[test]
fn revocation_removes_a_member_for_good_and_survives_persisting() {
    let ca = CaKey::generate();
    let web = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let db = Host::new(&ca, "db-1", &["10.42.2.0/24"]);
    let mut dir = directory(&ca);
    dir.apply_member(&web.alive(1, "198.18.0.11:51820"), NOW)
        .unwrap();
    dir.apply_member(&db.alive(1, "198.18.0.12:51820"), NOW)
        .unwrap();

    let revoked = revocation(&ca, &web, "web-1", 1);
    assert_eq!(
        dir.apply_revocation_bytes(&revoked.to_bytes()),
        Ok(Applied::Revoked {
            node: name("web-1"),
            removed: true,
        })
    );
    assert_eq!(dir.apply_revocation(&revoked), Ok(Applied::Unchanged));
    assert!(dir.live_member(&name("web-1")).is_none());
    assert!(dir.is_revoked(&web.wireguard_key));
    assert!(!dir.is_revoked(&db.wireguard_key));

    let json = serde_json::to_string(&dir).unwrap();
    let mut loaded: Directory = serde_json::from_str(&json).unwrap();
    assert_eq!(loaded, dir);
    assert!(loaded.is_revoked(&web.wireguard_key));
    assert_eq!(loaded.live_members().count(), 1);
    assert_eq!(loaded.revocations().count(), 1);
    let err = loaded
        .apply_member(&web.alive(2, "198.18.0.11:51820"), NOW)
        .unwrap_err();
    assert!(matches!(err, RecordError::Revoked { .. }), "{err}");
    assert!(err.to_string().contains("revoked"), "{err}");

    // The name is not burnt: a re-issued certificate with a new key is accepted.
    let reissued = Host::issue(&ca, "prod", "web-1", 2, &["10.42.1.0/24"]);
    assert_eq!(
        loaded.apply_member(&reissued.alive(1, "198.18.0.11:51820"), NOW),
        Ok(Applied::New)
    );
}

#[test]
fn revocation_must_come_from_this_networks_ca() {
    let ca = CaKey::generate();
    let web = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let mut dir = directory(&ca);
    dir.apply_member(&web.alive(1, "198.18.0.11:51820"), NOW)
        .unwrap();
    let rogue = revocation(&CaKey::generate(), &web, "web-1", 1);
    assert!(matches!(
        dir.apply_revocation(&rogue),
        Err(RecordError::UntrustedRevocation { .. })
    ));
    let mut other_network = revocation(&ca, &web, "web-1", 1).revocation().clone();
    other_network.network = name("staging");
    assert!(matches!(
        dir.apply_revocation(&other_network.sign(&ca)),
        Err(RecordError::WrongNetwork { .. })
    ));
    assert!(!dir.is_revoked(&web.wireguard_key));
    assert_eq!(dir.live_members().count(), 1);
}

#[test]
fn tampered_persisted_directory_is_refused() {
    let ca = CaKey::generate();
    let web = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let mut dir = directory(&ca);
    dir.apply_member(&web.alive(1, "198.18.0.11:51820"), NOW)
        .unwrap();
    let json = serde_json::to_string(&dir).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    // The record's last byte is part of its signature.
    let record = value["members"][0]["record"].as_array_mut().unwrap();
    let last = record.last_mut().unwrap();
    *last = serde_json::json!(last.as_u64().unwrap() ^ 1);
    assert!(serde_json::from_value::<Directory>(value).is_err());
}

#[test]
fn a_copy_of_a_held_record_is_unchanged_only_while_its_certificate_is_current() {
    let ca = CaKey::generate();
    let web = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let signed = web.alive(1, "198.18.0.11:51820");
    let mut dir = directory(&ca);
    dir.apply_member(&signed, NOW).unwrap();
    assert_eq!(dir.apply_member(&signed, NOW), Ok(Applied::Unchanged));
    // Past its expiry (before a sweep drops it) the copy is checked again, and refused.
    let err = dir.apply_member(&signed, NOW + 2 * DAY).unwrap_err();
    assert!(
        matches!(err, RecordError::CertificateNotValidNow { .. }),
        "{err}"
    );
}

#[test]
fn expired_members_are_dropped() {
    let ca = CaKey::generate();
    let web = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let mut dir = directory(&ca);
    dir.apply_member(&web.alive(1, "198.18.0.11:51820"), NOW)
        .unwrap();
    assert_eq!(dir.expire(NOW), Vec::<Name>::new());
    assert_eq!(dir.expire(NOW + 2 * DAY), vec![name("web-1")]);
    assert_eq!(dir.live_members().count(), 0);
}

#[test]
fn every_truncation_is_refused_without_panic() {
    let ca = CaKey::generate();
    let web = Host::new(&ca, "web-1", &["10.42.1.0/24", "fd00:42:1::/64"]);
    let bytes = web
        .record(
            1,
            MemberState::Alive,
            &["198.18.0.11:51820", "[2001:db8::1]:1"],
        )
        .sign(&web.key)
        .unwrap()
        .to_bytes();
    let mut dir = directory(&ca);
    for len in 0..bytes.len() {
        assert!(
            SignedMemberRecord::from_bytes(&bytes[..len]).is_err(),
            "{len}"
        );
        assert!(dir.apply_member_bytes(&bytes[..len], NOW).is_err(), "{len}");
    }
    let revoked = revocation(&ca, &web, "web-1", 1).to_bytes();
    for len in 0..revoked.len() {
        assert!(
            dir.apply_revocation_bytes(&revoked[..len]).is_err(),
            "{len}"
        );
    }
    assert_eq!(dir, directory(&ca));
}

#[test]
fn flipping_any_byte_is_refused() {
    let ca = CaKey::generate();
    let web = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let bytes = web.alive(1, "198.18.0.11:51820").to_bytes();
    let mut dir = directory(&ca);
    // One flip per byte (each signature check costs milliseconds in a debug build), with
    // the bit pattern varying along the record.
    for i in 0..bytes.len() {
        let flip = [0x01, 0x80, 0xff][i % 3];
        let mut altered = bytes.clone();
        altered[i] ^= flip;
        assert!(
            dir.apply_member_bytes(&altered, NOW).is_err(),
            "byte {i} ^ {flip:#x} accepted"
        );
    }
    let revoked = revocation(&ca, &web, "web-1", 1).to_bytes();
    for i in 0..revoked.len() {
        let mut altered = revoked.clone();
        altered[i] ^= 0x01;
        assert!(dir.apply_revocation_bytes(&altered).is_err(), "byte {i}");
    }
    assert_eq!(dir, directory(&ca));
}

#[test]
fn unknown_format_and_state_are_refused() {
    let ca = CaKey::generate();
    let web = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let signed = web.alive(1, "198.18.0.11:51820");
    let mut body = signed.body().to_vec();
    body[0] = 2;
    let altered = to_signed_bytes(&body, signed.signature());
    assert_eq!(
        SignedMemberRecord::from_bytes(&altered),
        Err(RecordError::UnsupportedVersion { version: 2 })
    );
    let mut body = signed.body().to_vec();
    let state_offset = body.len() - 7 - 1 - 2 - 1;
    assert_eq!(body[state_offset], 1);
    body[state_offset] = 3;
    assert_eq!(
        SignedMemberRecord::from_bytes(&to_signed_bytes(&body, signed.signature())),
        Err(RecordError::Malformed { part: "state" })
    );
}

proptest::proptest! {
    /// The parsers are fed by the network: arbitrary bytes never panic them.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1200)
    ) {
        let _ = SignedMemberRecord::from_bytes(&bytes);
        let _ = SignedRevocation::from_bytes(&bytes);
        // With a plausible length prefix, so the body decoders are reached too.
        let body_len = u16::try_from(bytes.len().saturating_sub(64)).unwrap();
        let mut framed = body_len.to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        let _ = SignedMemberRecord::from_bytes(&framed);
        let _ = SignedRevocation::from_bytes(&framed);
    }
}

#[test]
fn the_directory_holds_the_newest_signed_policy_and_persists_it() {
    use crate::policy::{Lookup, PolicyRecordError, SignedPolicy};
    let ca = CaKey::generate();
    let mut dir = Directory::new(ca.verifying_key(), name("prod"));
    let h1 = Host::new(&ca, "h1", &["10.42.1.0/24"]);
    dir.apply_member(&h1.alive(1, "198.18.0.11:51820"), NOW)
        .unwrap();
    assert_eq!(dir.groups_of(&name("h1")), vec![name("web")]);
    assert_eq!(
        dir.owner_of("10.42.1.9".parse().unwrap()),
        Some((name("h1"), vec![name("web")]))
    );
    assert_eq!(dir.owner_of("10.42.2.9".parse().unwrap()), None);

    // Persisted before any policy: the field is left out, and such a file loads.
    let json = serde_json::to_string(&dir).unwrap();
    assert!(!json.contains("policy"), "{json}");
    assert!(dir.policy().is_none());

    let text = "[[allow]]\nfrom = [\"group:web\"]\nto = [\"any\"]\nports = [\"icmp\"]\n";
    let v2 = SignedPolicy::sign(&ca, &name("prod"), 2, NOW, text).unwrap();
    assert_eq!(dir.apply_policy(&v2), Ok(PolicyApplied::New { version: 2 }));
    assert_eq!(dir.apply_policy(&v2), Ok(PolicyApplied::Unchanged));
    assert_eq!(dir.policy().unwrap().0.rules.len(), 1);
    // An older version, a forged one, another network's: refused, nothing changes.
    let v1 = SignedPolicy::sign(&ca, &name("prod"), 1, NOW, "").unwrap();
    assert!(matches!(
        dir.apply_policy(&v1),
        Err(PolicyRecordError::NotNewer {
            version: 1,
            held: 2
        })
    ));
    let forged = SignedPolicy::sign(&CaKey::generate(), &name("prod"), 9, NOW, "").unwrap();
    assert!(matches!(
        dir.apply_policy(&forged),
        Err(PolicyRecordError::Untrusted { .. })
    ));
    let other = SignedPolicy::sign(&ca, &name("test"), 9, NOW, "").unwrap();
    assert!(matches!(
        dir.apply_policy(&other),
        Err(PolicyRecordError::WrongNetwork { .. })
    ));
    assert!(dir.apply_policy_bytes(&[1, 2, 3]).is_err());
    assert_eq!(dir.policy().unwrap().1, &v2);

    let json = serde_json::to_string(&dir).unwrap();
    let loaded: Directory = serde_json::from_str(&json).unwrap();
    assert_eq!(loaded, dir);
    assert_eq!(loaded.policy().unwrap().1.version(), 2);
}

#[test]
fn the_relay_byte_is_left_out_when_unset_and_read_back_when_set() {
    let ca = CaKey::generate();
    let host = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let plain = host.record(1, MemberState::Alive, &["198.18.0.11:51820"]);
    let bytes = plain.sign(&host.key).unwrap().to_bytes();
    for relay in [Some(true), Some(false)] {
        let record = MemberRecord {
            relay,
            ..plain.clone()
        };
        let signed = record.sign(&host.key).unwrap();
        assert_eq!(signed.to_bytes().len(), bytes.len() + 1, "one byte more");
        let back = SignedMemberRecord::from_bytes(&signed.to_bytes()).unwrap();
        assert_eq!(back.record().relay, relay);
    }
    let back = SignedMemberRecord::from_bytes(&bytes).unwrap();
    assert_eq!(
        back.record().relay,
        None,
        "a record without the byte reads as before"
    );
}

/// The attack: a member signs a record naming `127.0.0.1` (or a link-local address such as
/// a cloud's metadata service) as its endpoint, so that every member sends handshakes,
/// control connections and relayed datagrams to a service on its own host. Its own key
/// signs the body (not through [`MemberRecord::sign`], which refuses it): every directory
/// refuses the record, and nothing changes.
#[test]
fn a_record_naming_an_unreachable_endpoint_is_refused() {
    let ca = CaKey::generate();
    let web = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let mut dir = directory(&ca);
    for bad in [
        "127.0.0.1:51820",
        "169.254.169.254:80",
        "[::ffff:127.0.0.1]:22",
    ] {
        let body = web.record(1, MemberState::Alive, &[bad]).encode();
        let signature = web.key.sign(MEMBER_RECORD_CONTEXT, &body);
        let bytes = to_signed_bytes(&body, &signature);
        assert_eq!(
            dir.apply_member_bytes(&bytes, NOW),
            Err(RecordError::Malformed {
                part: UNREACHABLE_ENDPOINT
            }),
            "{bad}"
        );
    }
    assert_eq!(dir, directory(&ca));
}

/// A directory saved before unreachable endpoints were refused still loads: the record
/// naming one is left out (learnt again from the member's next record), the rest kept.
#[test]
fn a_saved_record_naming_an_unreachable_endpoint_is_left_out_on_load() {
    let ca = CaKey::generate();
    let web = Host::new(&ca, "web-1", &["10.42.1.0/24"]);
    let db = Host::new(&ca, "db-1", &["10.42.2.0/24"]);
    let mut dir = directory(&ca);
    dir.apply_member(&db.alive(1, "198.18.0.12:51820"), NOW)
        .unwrap();
    let mut saved = serde_json::to_value(&dir).unwrap();
    let body = web
        .record(1, MemberState::Alive, &["127.0.0.1:51820"])
        .encode();
    let bytes = to_signed_bytes(&body, &web.key.sign(MEMBER_RECORD_CONTEXT, &body));
    saved["members"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({ "record": bytes, "applied_at": NOW }));
    let loaded: Directory = serde_json::from_value(saved).unwrap();
    assert_eq!(loaded, dir);
}
