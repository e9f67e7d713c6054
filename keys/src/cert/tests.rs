//! Tests of certificate encoding, signing and verification.

use proptest::prelude::*;

use super::*;
use crate::{CaKey, SigningKey};

const NOW: u64 = 1_700_000_000;
const DAY: u64 = 86_400;

fn name(text: &str) -> Name {
    text.parse().unwrap()
}

fn ca(seed: u8) -> CaKey {
    CaKey::from_signing_key(SigningKey::from_seed([seed; 32]))
}

fn cert_for(ca: &CaKey) -> NodeCertificate {
    NodeCertificate {
        network: name("prod"),
        node: name("web-1"),
        wireguard_key: PublicKey::from_bytes([7; 32]),
        control_key: SigningKey::from_seed([9; 32]).verifying_key(),
        subnets: vec![
            "10.42.1.0/24".parse().unwrap(),
            "fd00:42:1::/64".parse().unwrap(),
        ],
        groups: vec![name("web"), name("eu-west")],
        not_before: NOW - DAY,
        not_after: NOW + DAY,
        serial: 42,
        number: 7,
        ca_fingerprint: ca.fingerprint(),
    }
}

fn verify_bytes(bytes: &[u8], ca: &CaKey, now: u64) -> Result<NodeCertificate, CertError> {
    SignedCertificate::from_bytes(bytes)?.verify(&ca.verifying_key(), now)
}

#[test]
fn body_matches_the_documented_layout() {
    let ca = ca(1);
    let cert = cert_for(&ca);
    let signed = ca.sign(&cert).unwrap();
    let mut expected = vec![2u8];
    expected.extend_from_slice(ca.fingerprint().as_bytes());
    expected.extend_from_slice(&42u64.to_be_bytes());
    expected.extend_from_slice(&7u32.to_be_bytes());
    expected.extend_from_slice(&(NOW - DAY).to_be_bytes());
    expected.extend_from_slice(&(NOW + DAY).to_be_bytes());
    expected.extend_from_slice(b"\x04prod\x05web-1");
    expected.extend_from_slice(&[7; 32]);
    expected.extend_from_slice(cert.control_key.as_bytes());
    expected.extend_from_slice(&[2, 4, 10, 42, 1, 0, 24, 6]);
    expected.extend_from_slice(&[0xfd, 0, 0, 0x42, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 64]);
    expected.extend_from_slice(b"\x02\x03web\x07eu-west");
    assert_eq!(signed.body(), expected.as_slice());

    let bytes = signed.to_bytes();
    assert_eq!(bytes[..2], (expected.len() as u16).to_be_bytes());
    assert_eq!(&bytes[2..2 + expected.len()], expected.as_slice());
    assert_eq!(&bytes[2 + expected.len()..], signed.signature().as_bytes());
    let ca_public = ca.verifying_key();
    assert_eq!(
        ca_public.verify(CERT_SIGNING_CONTEXT, signed.body(), signed.signature()),
        Ok(())
    );
    assert!(signed.to_string().starts_with("ovlcert1."));
}

#[test]
fn every_encoding_round_trips() {
    let ca = ca(1);
    let cert = cert_for(&ca);
    let signed = ca.sign(&cert).unwrap();
    assert_eq!(signed.verify(&ca.verifying_key(), NOW), Ok(cert.clone()));

    let from_bytes = SignedCertificate::from_bytes(&signed.to_bytes()).unwrap();
    assert_eq!(from_bytes, signed);
    let text = signed.to_string();
    assert!(text.bytes().all(|c| c.is_ascii_graphic()), "{text}");
    assert_eq!(
        format!(" {text}\n").parse::<SignedCertificate>().unwrap(),
        signed
    );
    let json = serde_json::to_string(&signed).unwrap();
    assert_eq!(json, format!("\"{text}\""));
    assert_eq!(
        serde_json::from_str::<SignedCertificate>(&json).unwrap(),
        signed
    );
    assert_eq!(NodeCertificate::decode(signed.body()), Ok(cert.clone()));

    let json = serde_json::to_string(&cert).unwrap();
    assert!(json.contains("\"10.42.1.0/24\""), "{json}");
    assert_eq!(
        serde_json::from_str::<NodeCertificate>(&json).unwrap(),
        cert
    );
    // Ed25519 signatures are deterministic, and so is the encoding.
    assert_eq!(ca.sign(&cert).unwrap(), signed);
}

#[test]
fn another_ca_is_named_with_both_fingerprints() {
    let (ours, theirs) = (ca(1), ca(2));
    let signed = theirs.sign(&cert_for(&theirs)).unwrap();
    let err = signed.verify(&ours.verifying_key(), NOW).unwrap_err();
    assert_eq!(
        err,
        CertError::WrongCa {
            expected: ours.fingerprint(),
            found: theirs.fingerprint()
        }
    );
    let message = err.to_string();
    assert!(
        message.contains(&ours.fingerprint().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&theirs.fingerprint().to_string()),
        "{message}"
    );
}

#[test]
fn a_forger_claiming_our_fingerprint_fails_the_signature() {
    let (ours, forger) = (ca(1), SigningKey::from_seed([3; 32]));
    let body = cert_for(&ours).encode();
    let forged =
        SignedCertificate::from_parts(body.clone(), forger.sign(CERT_SIGNING_CONTEXT, &body));
    let err = forged.verify(&ours.verifying_key(), NOW).unwrap_err();
    assert_eq!(
        err,
        CertError::BadSignature {
            ca: ours.fingerprint()
        }
    );
    // The right key in the wrong context does not make a certificate either.
    let wrong_context = ours.signing_key().sign("overlay something else v1", &body);
    let err = SignedCertificate::from_parts(body, wrong_context)
        .verify(&ours.verifying_key(), NOW)
        .unwrap_err();
    assert!(matches!(err, CertError::BadSignature { .. }), "{err}");
}

#[test]
fn validity_window_is_inclusive_at_both_ends() {
    let ca = ca(1);
    let cert = cert_for(&ca);
    let signed = ca.sign(&cert).unwrap();
    let key = ca.verifying_key();
    assert!(signed.verify(&key, cert.not_before).is_ok());
    assert!(signed.verify(&key, cert.not_after).is_ok());

    let early = signed.verify(&key, cert.not_before - 1).unwrap_err();
    assert_eq!(
        early,
        CertError::NotYetValid {
            node: name("web-1"),
            not_before: cert.not_before
        }
    );
    assert!(
        early.to_string().contains("2023-11-13 22:13:20 UTC"),
        "{early}"
    );
    assert!(early.to_string().contains("clock"), "{early}");

    let late = signed.verify(&key, cert.not_after + 1).unwrap_err();
    assert_eq!(
        late,
        CertError::Expired {
            node: name("web-1"),
            not_after: cert.not_after
        }
    );
    assert!(
        late.to_string()
            .contains("expired at 2023-11-15 22:13:20 UTC"),
        "{late}"
    );
    assert!(signed.verify(&key, u64::MAX).is_err());
    assert!(signed.verify(&key, 0).is_err());
}

#[test]
fn every_flipped_byte_is_refused() {
    let ca = ca(1);
    let bytes = ca.sign(&cert_for(&ca)).unwrap().to_bytes();
    let fingerprint = 3..3 + FINGERPRINT_LEN;
    for i in 0..bytes.len() {
        // One bit per byte, a different one from byte to byte, keeps this fast in debug
        // builds; `any_change_to_a_certificate_is_refused` tries other changes.
        let mask = 1u8 << (i % 8);
        let mut flipped = bytes.clone();
        flipped[i] ^= mask;
        let result = verify_bytes(&flipped, &ca, NOW);
        match i {
            0 | 1 => assert!(
                matches!(
                    result,
                    Err(CertError::Truncated { .. } | CertError::Malformed { .. })
                ),
                "length byte {i}: {result:?}"
            ),
            2 => assert!(
                matches!(result, Err(CertError::UnsupportedVersion { .. })),
                "{result:?}"
            ),
            _ if fingerprint.contains(&i) => {
                assert!(
                    matches!(result, Err(CertError::WrongCa { .. })),
                    "{result:?}"
                )
            }
            _ => assert!(
                matches!(result, Err(CertError::BadSignature { .. })),
                "byte {i} ^ {mask:#x}: {result:?}"
            ),
        }
    }
}

#[test]
fn every_truncation_is_refused() {
    let ca = ca(1);
    let signed = ca.sign(&cert_for(&ca)).unwrap();
    let bytes = signed.to_bytes();
    for len in 0..bytes.len() {
        let result = SignedCertificate::from_bytes(&bytes[..len]);
        assert!(
            matches!(result, Err(CertError::Truncated { .. })),
            "{len}: {result:?}"
        );
    }
    let text = signed.to_string();
    for len in 0..text.len() {
        assert!(text[..len].parse::<SignedCertificate>().is_err(), "{len}");
    }
    for len in 0..signed.body().len() {
        let result = NodeCertificate::decode(&signed.body()[..len]);
        assert!(
            matches!(result, Err(CertError::Truncated { .. })),
            "{len}: {result:?}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        SignedCertificate::from_bytes(&longer),
        Err(CertError::Malformed { .. })
    ));
}

#[test]
fn garbage_text_is_refused_with_the_part() {
    for (text, part) in [
        ("", "prefix"),
        ("ovljoin1.AAAA", "prefix"),
        ("ovlcert1.!!!!", "base64url"),
        ("ovlcert1.A", "base64url"),
        ("ovlcert1.AAAA", "signature"),
    ] {
        let err = text.parse::<SignedCertificate>().unwrap_err();
        assert!(err.to_string().contains(part), "{text}: {err}");
    }
}

#[test]
fn unsignable_certificates_are_refused() {
    let ca = ca(1);
    let mut cases: Vec<(NodeCertificate, &str)> = Vec::new();
    let mut cert = cert_for(&ca);
    cert.ca_fingerprint = ca_key_fingerprint(2);
    cases.push((cert, "CA fingerprint"));
    let mut cert = cert_for(&ca);
    cert.not_before = cert.not_after + 1;
    cases.push((cert, "not_before"));
    let mut cert = cert_for(&ca);
    cert.subnets = vec!["10.42.1.5/24".parse().unwrap()];
    cases.push((cert, "host bits"));
    let mut cert = cert_for(&ca);
    cert.subnets = vec!["10.42.1.0/24".parse().unwrap(); MAX_SUBNETS + 1];
    cases.push((cert, "subnets"));
    let mut cert = cert_for(&ca);
    cert.groups = vec![name("g"); MAX_GROUPS + 1];
    cases.push((cert, "groups"));
    for (cert, what) in cases {
        let err = ca.sign(&cert).unwrap_err();
        assert!(matches!(err, CertError::NotSignable { .. }), "{err}");
        assert!(err.to_string().contains(what), "{err}");
    }
    let mut empty = cert_for(&ca);
    empty.subnets.clear();
    empty.groups.clear();
    empty.not_after = empty.not_before;
    let signed = ca.sign(&empty).unwrap();
    assert_eq!(
        signed.verify(&ca.verifying_key(), empty.not_before),
        Ok(empty)
    );
}

fn ca_key_fingerprint(seed: u8) -> Fingerprint {
    ca(seed).fingerprint()
}

#[test]
fn the_largest_certificate_fits_a_gossip_datagram() {
    let ca = ca(1);
    let long = |c: char| Name::new(c.to_string().repeat(63)).unwrap();
    let mut cert = cert_for(&ca);
    cert.network = long('n');
    cert.node = long('h');
    cert.subnets = vec!["fd00::/8".parse().unwrap(); MAX_SUBNETS];
    cert.groups = vec![long('g'); MAX_GROUPS];
    let signed = ca.sign(&cert).unwrap();
    assert_eq!(signed.to_bytes().len(), MAX_SIGNED_LEN);
    assert_eq!(signed.verify(&ca.verifying_key(), NOW), Ok(cert));
}

#[test]
fn every_error_says_what_to_do() {
    let fp = ca(1).fingerprint();
    for err in [
        CertError::BadSignature { ca: fp },
        CertError::WrongCa {
            expected: fp,
            found: fp,
        },
        CertError::Expired {
            node: name("a"),
            not_after: 0,
        },
        CertError::NotYetValid {
            node: name("a"),
            not_before: 0,
        },
        CertError::Truncated { part: "body" },
        CertError::Malformed { part: "group" },
        CertError::UnsupportedVersion { version: 3 },
        CertError::NotSignable { reason: "r" },
    ] {
        let message = err.to_string();
        assert!(message.contains("; "), "{message}");
        assert!(
            !message.ends_with('.') && !message.contains('\n'),
            "{message}"
        );
    }
}

fn arb_name() -> impl Strategy<Value = Name> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?".prop_map(|s| Name::new(s).unwrap())
}

fn arb_subnet() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, p)| IpNet::new(a.into(), p).unwrap().trunc()),
        (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, p)| IpNet::new(a.into(), p).unwrap().trunc()),
    ]
}

prop_compose! {
    fn arb_cert(ca: Fingerprint)(
        network in arb_name(),
        node in arb_name(),
        wireguard_key in any::<[u8; 32]>(),
        control_seed in any::<[u8; 32]>(),
        subnets in proptest::collection::vec(arb_subnet(), 0..=MAX_SUBNETS),
        groups in proptest::collection::vec(arb_name(), 0..=MAX_GROUPS),
        times in (any::<u64>(), any::<u64>()),
        serial in any::<u64>(),
        number in any::<u32>(),
    ) -> NodeCertificate {
        NodeCertificate {
            network,
            node,
            wireguard_key: PublicKey::from_bytes(wireguard_key),
            control_key: SigningKey::from_seed(control_seed).verifying_key(),
            subnets,
            groups,
            not_before: times.0.min(times.1),
            not_after: times.0.max(times.1),
            serial,
            number,
            ca_fingerprint: ca,
        }
    }
}

proptest! {
    #[test]
    fn any_certificate_round_trips(cert in arb_cert(ca(1).fingerprint())) {
        let ca = ca(1);
        let signed = ca.sign(&cert).unwrap();
        prop_assert!(signed.to_bytes().len() <= MAX_SIGNED_LEN);
        let back: SignedCertificate = signed.to_string().parse().unwrap();
        prop_assert_eq!(&back, &signed);
        prop_assert_eq!(back.verify(&ca.verifying_key(), cert.not_before), Ok(cert.clone()));
        prop_assert_eq!(NodeCertificate::decode(back.body()), Ok(cert));
    }

    #[test]
    fn any_change_to_a_certificate_is_refused(
        cert in arb_cert(ca(1).fingerprint()),
        changes in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..4),
    ) {
        let ca = ca(1);
        let bytes = ca.sign(&cert).unwrap().to_bytes();
        let mut changed = bytes.clone();
        for (index, mask) in changes {
            changed[index.index(bytes.len())] ^= mask;
        }
        if changed != bytes {
            prop_assert!(verify_bytes(&changed, &ca, cert.not_before).is_err());
        }
    }

    #[test]
    fn arbitrary_input_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..1100),
        text in "\\PC{0,200}",
    ) {
        let ca = ca(1);
        let _ = verify_bytes(&bytes, &ca, NOW);
        let _ = NodeCertificate::decode(&bytes);
        let _ = text.parse::<SignedCertificate>();
        let _ = format!("ovlcert1.{text}").parse::<SignedCertificate>();
    }
}

/// The body of `cert` in format version 1 (no `number`), as overlay wrote it before
/// version 2.
fn encode_v1(cert: &NodeCertificate) -> Vec<u8> {
    let v2 = cert.encode();
    // Version 2 is version 1 with the number after the serial (1 + 16 + 8 bytes in).
    let mut v1 = vec![CERT_VERSION_1];
    v1.extend_from_slice(&v2[1..25]);
    v1.extend_from_slice(&v2[29..]);
    v1
}

/// A certificate of format version 1, signed before version 2 existed, still verifies, and
/// its number is its serial's low 32 bits (what members of version 1 took as their SWIM
/// identity); a version-1 body cannot be stretched into version 2 (the signature covers
/// the version byte).
#[test]
fn version_1_certificates_are_still_read() {
    let ca = ca(1);
    let mut cert = cert_for(&ca);
    cert.serial = (1 << 32) + 5;
    let body = encode_v1(&cert);
    assert_eq!(body.len(), cert.encode().len() - 4);
    let signature = ca.signing_key().sign(CERT_SIGNING_CONTEXT, &body);
    let signed = SignedCertificate::from_parts(body.clone(), signature);
    let read = signed.verify(&ca.verifying_key(), NOW).unwrap();
    assert_eq!(read.number, 5);
    assert_eq!(read.serial, (1 << 32) + 5);
    assert_eq!(read.groups, cert.groups);
    assert_eq!(signed.unverified_body().unwrap().number, 5);
    let text: SignedCertificate = signed.to_string().parse().unwrap();
    assert_eq!(text.verify(&ca.verifying_key(), NOW).unwrap(), read);
    let mut stretched = body;
    stretched[0] = CERT_VERSION;
    let forged = SignedCertificate::from_parts(stretched, *signed.signature());
    assert!(forged.verify(&ca.verifying_key(), NOW).is_err());
}
