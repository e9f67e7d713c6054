//! Tests of join tokens: text form, secrecy, expiry, secret hashes.

use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE as BASE64URL_PADDED};
use proptest::prelude::*;

use super::*;
use crate::SigningKey;

const NOW: u64 = 1_700_000_000;

fn name(text: &str) -> Name {
    text.parse().unwrap()
}

/// A secret whose every representation is easy to look for.
fn secret_bytes() -> [u8; SECRET_LEN] {
    std::array::from_fn(|i| 0xa0 ^ i as u8)
}

fn fingerprint() -> Fingerprint {
    SigningKey::from_seed([1; 32]).verifying_key().fingerprint()
}

fn token() -> JoinToken {
    JoinToken::new(
        name("prod"),
        vec![
            "198.18.0.1:51820".parse().unwrap(),
            "[2001:db8::1]:7946".parse().unwrap(),
        ],
        fingerprint(),
        TokenSecret::from_bytes(secret_bytes()),
        NOW + 3600,
        vec![name("web")],
    )
    .unwrap()
}

#[test]
fn bytes_match_the_documented_layout() {
    let text = token().to_text();
    let encoded = text.strip_prefix("ovljoin1.").unwrap();
    let bytes = BASE64URL.decode(encoded).unwrap();
    let mut expected = b"\x04prod".to_vec();
    expected.extend_from_slice(fingerprint().as_bytes());
    expected.extend_from_slice(&secret_bytes());
    expected.extend_from_slice(&(NOW + 3600).to_be_bytes());
    expected.extend_from_slice(&[2, 4, 198, 18, 0, 1, 0xca, 0x6c, 6]);
    expected.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    expected.extend_from_slice(&7946u16.to_be_bytes());
    expected.extend_from_slice(b"\x01\x03web");
    assert_eq!(bytes, expected);
}

#[test]
fn text_round_trips() {
    let token = token();
    let text = token.to_text();
    assert!(text.starts_with("ovljoin1."));
    assert!(!text.contains('='), "{}", text.as_str());
    assert!(text.bytes().all(|c| c.is_ascii_graphic()));
    let back: JoinToken = format!("  {}\n", text.as_str()).parse().unwrap();
    assert_eq!(back, token);
    assert_eq!(back.network(), &name("prod"));
    assert_eq!(back.endpoints(), token.endpoints());
    assert_eq!(back.ca_fingerprint(), fingerprint());
    assert_eq!(back.secret().as_bytes(), &secret_bytes());
    assert_eq!(back.expires_unix(), NOW + 3600);
    assert_eq!(back.groups(), &[name("web")]);
}

#[test]
fn secret_is_never_in_debug_output() {
    let token = token();
    let secret = secret_bytes();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let forms = [
        hex.clone(),
        hex.to_uppercase(),
        BASE64.encode(secret)[..20].to_string(),
        BASE64URL.encode(secret)[..20].to_string(),
        format!("{:?}", &secret[..4])
            .trim_end_matches(']')
            .to_string(),
        format!("{:x?}", &secret[..4])
            .trim_end_matches(']')
            .to_string(),
    ];
    let text = token.to_text();
    let shown = [
        format!("{token:?}"),
        format!("{token:#?}"),
        format!("{:?}", token.secret()),
        format!("{:?}", TokenSecret::generate()),
        format!("{:?}", token.secret_hash()),
        format!("{}", token.secret_hash()),
        format!("{:?}", "garbage".parse::<JoinToken>()),
    ]
    .join("\n");
    for form in &forms {
        assert!(!shown.contains(form.as_str()), "{form} in {shown}");
    }
    assert!(!shown.contains(&text[9..]), "{shown}");
    assert!(shown.contains("TokenSecret(..)"), "{shown}");
}

#[test]
fn expiry_is_checked_separately_and_exclusive() {
    let token = token();
    // Parsing never checks the clock.
    assert!(token.to_text().parse::<JoinToken>().is_ok());
    assert_eq!(token.check_expiry(NOW), Ok(()));
    assert_eq!(token.check_expiry(NOW + 3599), Ok(()));
    let err = token.check_expiry(NOW + 3600).unwrap_err();
    assert_eq!(
        err,
        TokenError::Expired {
            expires_unix: NOW + 3600
        }
    );
    assert!(err.to_string().contains("2023-11-14 23:13:20 UTC"), "{err}");
    assert!(err.to_string().contains("overlayctl token create"), "{err}");
    assert!(token.check_expiry(u64::MAX).is_err());
}

#[test]
fn secret_hash_is_sha256_and_compares_secrets() {
    // SHA-256 of 32 zero bytes.
    let zero = TokenSecret::from_bytes([0; SECRET_LEN]);
    assert_eq!(
        zero.hash().to_string(),
        "sha256:66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
    );
    let token = token();
    let stored = token.secret_hash();
    assert!(stored.matches(&TokenSecret::from_bytes(secret_bytes())));
    assert!(!stored.matches(&zero));
    for i in 0..SECRET_LEN {
        let mut near = secret_bytes();
        near[i] ^= 1;
        assert!(!stored.matches(&TokenSecret::from_bytes(near)), "{i}");
    }
    let text = stored.to_string();
    assert_eq!(text.parse::<SecretHash>().unwrap(), stored);
    let json = serde_json::to_string(&stored).unwrap();
    assert_eq!(json, format!("\"{text}\""));
    assert_eq!(serde_json::from_str::<SecretHash>(&json).unwrap(), stored);
    for bad in [
        "",
        "sha256:",
        "sha256:00",
        &text[..text.len() - 1],
        &text.replace("sha256", "md5"),
    ] {
        assert!(bad.parse::<SecretHash>().is_err(), "{bad}");
    }
}

#[test]
fn garbage_is_refused_with_a_clear_error() {
    let cases: &[(&str, TokenError)] = &[
        ("", TokenError::NotAToken),
        ("hello", TokenError::NotAToken),
        ("ovlcert1.AAAA", TokenError::NotAToken),
        ("ovljoinX.AAAA", TokenError::NotAToken),
        ("ovljoin.AAAA", TokenError::NotAToken),
        ("ovljoin2AAAA", TokenError::NotAToken),
        ("ovljoin2.AAAA", TokenError::UnknownVersion { version: 2 }),
        ("ovljoin10.AAAA", TokenError::UnknownVersion { version: 10 }),
        ("ovljoin", TokenError::Truncated { part: "prefix" }),
        ("ovljoin1", TokenError::Truncated { part: "prefix" }),
        (
            "ovljoin1.",
            TokenError::Truncated {
                part: "network name",
            },
        ),
        (
            "ovljoin1.A",
            TokenError::Truncated {
                part: "base64url text",
            },
        ),
        (
            "ovljoin1.!!!!",
            TokenError::Malformed {
                part: "base64url text",
            },
        ),
        (
            "ovljoin1.AAAA",
            TokenError::Malformed {
                part: "network name",
            },
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(&text.parse::<JoinToken>().unwrap_err(), expected, "{text}");
    }
    let message = TokenError::NotAToken.to_string();
    assert!(message.contains("ovljoin1."), "{message}");
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    let text = token().to_text();
    assert_eq!("".parse::<JoinToken>(), Err(TokenError::NotAToken));
    for len in 1..text.len() {
        let result = text[..len].parse::<JoinToken>();
        assert!(
            matches!(result, Err(TokenError::Truncated { .. })),
            "{len}: {result:?}"
        );
    }
}

#[test]
fn trailing_bytes_and_broken_invariants_are_refused() {
    let text = token().to_text();
    let mut bytes = BASE64URL.decode(&text[9..]).unwrap();
    bytes.push(0);
    let longer = format!("ovljoin1.{}", BASE64URL.encode(&bytes));
    assert_eq!(
        longer.parse::<JoinToken>(),
        Err(TokenError::Malformed {
            part: "trailing bytes"
        })
    );
    // Padded base64url is not the canonical form.
    let padded = format!(
        "ovljoin1.{}",
        BASE64URL_PADDED.encode(&bytes[..bytes.len() - 1])
    );
    if padded.ends_with('=') {
        assert!(padded.parse::<JoinToken>().is_err());
    }
    // An endpoint with port 0, written by hand.
    let mut bytes = b"\x04prod".to_vec();
    bytes.extend_from_slice(&[0; 16 + 32 + 8]);
    bytes.extend_from_slice(&[1, 4, 198, 18, 0, 1, 0, 0, 0]);
    let text = format!("ovljoin1.{}", BASE64URL.encode(&bytes));
    assert!(matches!(
        text.parse::<JoinToken>(),
        Err(TokenError::Malformed { .. })
    ));
}

#[test]
fn new_refuses_tokens_nobody_can_use() {
    let endpoint: SocketAddr = "198.18.0.1:51820".parse().unwrap();
    let make = |endpoints: Vec<SocketAddr>, groups: Vec<Name>| {
        JoinToken::new(
            name("prod"),
            endpoints,
            fingerprint(),
            TokenSecret::generate(),
            NOW,
            groups,
        )
    };
    for (endpoints, groups) in [
        (vec![], vec![]),
        (vec![endpoint; MAX_ENDPOINTS + 1], vec![]),
        (vec!["198.18.0.1:0".parse().unwrap()], vec![]),
        (vec!["0.0.0.0:51820".parse().unwrap()], vec![]),
        (vec!["[::]:51820".parse().unwrap()], vec![]),
        (vec![endpoint], vec![name("g"); MAX_GROUPS + 1]),
    ] {
        let err = make(endpoints, groups).unwrap_err();
        assert!(matches!(err, TokenError::Invalid { .. }), "{err}");
    }
    // IPv6 scope ids are dropped: they mean nothing on the joining host.
    let scoped: SocketAddr = "[fe80::1%2]:51820".parse().unwrap();
    let token = make(vec![scoped], vec![]).unwrap();
    assert_eq!(
        token.endpoints(),
        &["[fe80::1]:51820".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(token.to_text().parse::<JoinToken>().unwrap(), token);
}

#[test]
fn generated_secrets_differ() {
    assert_ne!(TokenSecret::generate(), TokenSecret::generate());
}

fn arb_name() -> impl Strategy<Value = Name> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?".prop_map(|s| Name::new(s).unwrap())
}

fn arb_endpoint() -> impl Strategy<Value = SocketAddr> {
    (any::<std::net::IpAddr>(), 1u16..)
        .prop_filter("reachable", |(ip, _)| !ip.is_unspecified())
        .prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

prop_compose! {
    fn arb_token()(
        network in arb_name(),
        endpoints in proptest::collection::vec(arb_endpoint(), 1..=MAX_ENDPOINTS),
        fingerprint in any::<[u8; FINGERPRINT_LEN]>(),
        secret in any::<[u8; SECRET_LEN]>(),
        expires_unix in any::<u64>(),
        groups in proptest::collection::vec(arb_name(), 0..=MAX_GROUPS),
    ) -> JoinToken {
        JoinToken::new(
            network,
            endpoints,
            Fingerprint::from_bytes(fingerprint),
            TokenSecret::from_bytes(secret),
            expires_unix,
            groups,
        )
        .unwrap()
    }
}

proptest! {
    #[test]
    fn any_token_round_trips(token in arb_token()) {
        let text = token.to_text();
        prop_assert!(text.len() <= 9 + MAX_TOKEN_LEN.div_ceil(3) * 4);
        prop_assert_eq!(text.parse::<JoinToken>(), Ok(token.clone()));
        let shown = format!("{token:?}");
        prop_assert!(!shown.contains(&text[9..]));
    }

    #[test]
    fn arbitrary_text_never_panics(
        text in "\\PC{0,300}",
        bytes in proptest::collection::vec(any::<u8>(), 0..900),
    ) {
        let _ = text.parse::<JoinToken>();
        let _ = format!("ovljoin1.{text}").parse::<JoinToken>();
        let _ = format!("ovljoin1.{}", BASE64URL.encode(&bytes)).parse::<JoinToken>();
        let _ = text.parse::<SecretHash>();
    }
}
