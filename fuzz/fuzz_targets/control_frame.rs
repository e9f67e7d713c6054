//! Control-plane frames (`overlayd::control::msg`: `length u32 | postcard body`) as a
//! QUIC stream delivers them, and what a receiver does next with what it decoded.
//!
//! The first byte picks what the stream is read as: 0 a `Request` (what a server reads),
//! 1 a `Response` (what a client reads), 2 a `Request` under a 256-byte limit, 3 a bare
//! postcard `Bundle`, 4 a `Request` whose `Join` is then proved again by an honest joiner
//! (its WireGuard key replaced by one the target holds), so that a fuzzed name, subnet or
//! control key reaches the checks past the proof. Whatever decodes must survive `write`
//! then `read` unchanged. A `Join` goes to the admin's `Issuer::admit`: the fixture admin
//! is `h1` (a live member, whose WireGuard key the admin uses) and issued a token whose
//! secret is [`TOKEN_SECRET`]. A `Sync` or `Push` bundle is applied to a directory, which
//! must accept only genuine records.
//!
//! Checked for an admitted join: its certificate verifies and says what was asked, its
//! subnets overlap no other member's, it takes neither the name nor the WireGuard key of
//! a current member (`h1`, the admin), and the token does not admit twice.
#![no_main]

use futures::executor::block_on;
use keys::{JoinProof, TokenSecret};
use libfuzzer_sys::fuzz_target;
use overlay_fuzz::{NOW, assert_directory_invariants, assert_genuine, fixture, net};
use overlayd::control::admin::{Issuer, JoinAsk};
use overlayd::control::msg::{self, Bundle, Request, Response};
use overlayd::control::state::{AdminState, TokenEntry};
use protocol::records::{Applied, SignedMemberRecord};

/// The secret of the token the fixture admin issued (the seeds' `Join` carries it).
const TOKEN_SECRET: [u8; 32] = [0x5a; 32];

fn round_trip<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut frame = Vec::new();
    block_on(msg::write(&mut frame, value)).expect("a decoded message encodes");
    let back: T = block_on(msg::read(&mut frame.as_slice())).expect("an encoded message decodes");
    assert_eq!(&back, value, "a message changed through write and read");
}

fn apply_bundle(bundle: &Bundle) {
    let f = fixture();
    let mut dir = f.directory();
    for r in &bundle.revocations {
        let _ = dir.apply_revocation_bytes(r);
    }
    for m in &bundle.members {
        let before = dir.clone();
        match dir.apply_member_bytes(m, NOW) {
            Ok(Applied::Unchanged) | Err(_) => {
                assert_eq!(
                    dir, before,
                    "a refused or known record changed the directory"
                )
            }
            Ok(_) => {
                let signed = SignedMemberRecord::from_bytes(m).expect("it decoded once");
                assert_genuine(&dir, &signed, NOW);
            }
        }
    }
    assert_directory_invariants(&dir);
}

/// Runs `ask` through the fixture admin's `Issuer::admit`.
fn admit(ask: JoinAsk) {
    let f = fixture();
    let admin_member = &f.members[0];
    let ranges = [net("10.43.0.0/16")];
    let issuer = Issuer {
        ca: &f.ca,
        network: &f.network,
        cidr: net(overlay_fuzz::CIDR),
        ranges: &ranges,
        subnet_prefix: 24,
        certificate_lifetime_s: 365 * 86_400,
    };
    let dir = f.directory();
    let mut admin = AdminState {
        next_serial: 5,
        ..AdminState::default()
    };
    admin
        .allocations
        .insert(admin_member.name.clone(), net("10.42.1.0/24"));
    admin.tokens.push(TokenEntry {
        secret_hash: TokenSecret::from_bytes(TOKEN_SECRET).hash(),
        expires_unix: NOW + 3600,
        groups: vec![overlay_fuzz::name("web")],
        used_by: None,
        issuer: None,
    });
    let admin_key = &admin_member.wireguard;
    let Ok(certificate) = issuer.admit(&mut admin, &dir, &ask, admin_key, NOW) else {
        return;
    };
    let cert = certificate
        .verify(&f.ca.verifying_key(), NOW)
        .expect("an admitted host's certificate verifies");
    assert_eq!(cert.node, ask.name);
    assert_eq!(cert.wireguard_key, ask.wireguard_key);
    assert_eq!(cert.control_key, ask.control_key);
    assert_eq!(cert.serial, 5);
    assert_eq!(cert.subnets.len(), 2, "one subnet per range");
    assert_ne!(
        cert.node, admin_member.name,
        "a token took over the admin's name"
    );
    assert_ne!(
        cert.wireguard_key,
        admin_key.public_key(),
        "a token took over the admin's WireGuard key"
    );
    let h1 = net("10.42.1.0/24");
    for s in &cert.subnets {
        assert!(!s.contains(&h1) && !h1.contains(s), "admitted {s}, h1's");
    }
    assert!(
        issuer
            .admit(&mut admin, &dir, &ask, admin_key, NOW)
            .is_err(),
        "a token admitted twice"
    );
}

/// A certificate offered as a re-issue (`Reissued`, `Renewed`): if it verifies, the
/// fixture admin re-issues it (as it renews a member that proved it), and the result must
/// keep its name, keys, subnets and number with a higher serial.
fn reissue(bytes: &[u8]) {
    let f = fixture();
    let Ok(signed) = keys::SignedCertificate::from_bytes(bytes) else {
        return;
    };
    let Ok(current) = signed.verify(&f.ca.verifying_key(), NOW) else {
        return;
    };
    let issuer = Issuer {
        ca: &f.ca,
        network: &f.network,
        cidr: net(overlay_fuzz::CIDR),
        ranges: &[],
        subnet_prefix: 24,
        certificate_lifetime_s: 60,
    };
    let mut admin = AdminState::default();
    let Ok(renewed) = issuer.reissue(&mut admin, &f.directory(), &current, None, NOW) else {
        return;
    };
    let cert = renewed
        .verify(&f.ca.verifying_key(), NOW)
        .expect("a re-issued certificate verifies");
    assert_eq!(
        (
            &cert.node,
            cert.wireguard_key,
            cert.control_key,
            &cert.subnets,
            cert.number
        ),
        (
            &current.node,
            current.wireguard_key,
            current.control_key,
            &current.subnets,
            current.number
        )
    );
    assert!(
        cert.serial > current.serial,
        "a re-issue without a higher serial"
    );
}

/// The `JoinAsk` the admin makes of a `Join` (`JoinAsk::from_request`, as the membership
/// core calls it); with `honest`, the WireGuard key is replaced by the target's own (seed
/// from the proof's first byte, so the fuzzer picks it) and the proof made for the claim.
fn ask(request: Request, honest: bool) -> Option<JoinAsk> {
    let mut ask = JoinAsk::from_request(request)?;
    if honest {
        let f = fixture();
        let joiner = overlay_fuzz::wireguard_key(ask.proof.to_bytes()[0] | 0x80);
        ask.wireguard_key = joiner.public_key();
        let claim = ask.claim(&f.network, f.ca.fingerprint());
        ask.proof = JoinProof::prove(&claim, &joiner, &f.members[0].wireguard.public_key())
            .expect("a fixture key is no low-order point");
    }
    Some(ask)
}

/// Admin records as a member takes them: each checked against the CA, never a panic, and
/// what is kept verifies. Token records (`admins::tokens`), as an admin takes them: what is
/// kept is unexpired and re-signs to a record that verifies.
fn admin_records(records: &[Vec<u8>]) {
    use overlayd::control::admins::tokens;
    let f = fixture();
    let mut admin = AdminState::default();
    let _ = tokens::apply_token_records(
        &mut admin,
        records,
        &[f.ca.verifying_key()],
        &f.network,
        NOW,
    );
    assert!(admin.tokens.len() <= tokens::MAX_TOKEN_RECORDS);
    let me = keys::Name::new("h1").expect("a name");
    for bytes in tokens::token_records(&admin, &f.ca, &f.network, &me, NOW) {
        tokens::TokenRecord::verify(&bytes, &f.ca.verifying_key(), &f.network)
            .expect("a token record kept verifies");
    }
    let mut list = overlayd::control::admins::AdminList::default();
    for bytes in records {
        if let Ok(true) = list.apply(bytes, &f.ca.verifying_key(), &f.network) {
            overlayd::control::admins::AdminRecord::verify(
                bytes,
                &f.ca.verifying_key(),
                &f.network,
            )
            .expect("a record kept verifies");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, frame)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 | 2 | 4 => {
            let limit = if mode % 5 == 2 { 256 } else { msg::MAX_FRAME };
            let Ok(request) = block_on(msg::read_limited::<Request>(&mut &frame[..], limit)) else {
                return;
            };
            round_trip(&request);
            match request {
                Request::Sync(bundle) | Request::Push(bundle) => apply_bundle(&bundle),
                Request::Reissued(certificate) => reissue(&certificate),
                Request::Renew | Request::Rendezvous { .. } | Request::Punch { .. } => {}
                Request::Admins(records)
                | Request::AdminKey {
                    admins: records, ..
                } => admin_records(&records),
                join => {
                    if let Some(ask) = ask(join, mode % 5 == 4) {
                        admit(ask);
                    }
                }
            }
        }
        1 => {
            let Ok(response) = block_on(msg::read::<Response>(&mut &frame[..])) else {
                return;
            };
            round_trip(&response);
            match response {
                Response::Joined {
                    certificate,
                    bundle,
                    ..
                } => {
                    if let Ok(c) = keys::SignedCertificate::from_bytes(&certificate) {
                        let _ = c.verify(&fixture().ca.verifying_key(), NOW);
                    }
                    apply_bundle(&bundle);
                }
                Response::Sync(bundle) => apply_bundle(&bundle),
                Response::Renewed { certificate } => reissue(&certificate),
                Response::Admins(records) => admin_records(&records),
                Response::Ack | Response::Refused(_) | Response::Seen(_) => {}
            }
        }
        _ => {
            if let Ok(bundle) = postcard::from_bytes::<Bundle>(frame) {
                let again: Bundle =
                    postcard::from_bytes(&postcard::to_allocvec(&bundle).expect("encodes"))
                        .expect("decodes");
                assert_eq!(again, bundle);
                apply_bundle(&bundle);
            }
        }
    }
});
