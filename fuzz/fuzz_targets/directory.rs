//! Member records and revocations into `protocol::records::Directory`, decoded from bytes
//! as gossip and syncs deliver them, mixed with genuine records the fixture members sign
//! (so that the rules past the signature checks are reached: versions, serials,
//! tombstones, overlaps, revocation).
//!
//! The input is a sequence of operations (two-byte length, then the operation); the first
//! byte of each picks one:
//!
//! 0. raw bytes as a member record; 1. raw bytes as a revocation;
//! 2. a genuine record of a fixture member (which, version, state, endpoints from the
//!    input), optionally with one byte flipped;
//! 3. a genuine revocation of a fixture member, optionally with one byte flipped;
//! 4. a record of a member of another CA;
//! 5. persist and load the directory (serde_json), then expire at a later time.
//!
//! Checked after every operation: a refused or unchanged record leaves the directory as it
//! was; every record or revocation accepted is byte for byte what its owner's key signs
//! for its content (Ed25519 signatures are deterministic), so nothing unsigned or changed
//! is ever accepted; live members never overlap nor share a key, and none is revoked; a
//! persisted directory loads back equal.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use overlay_fuzz::{
    DAY, Fixture, Member, NOW, assert_directory_invariants, assert_genuine, fixture, long_chunks,
};
use protocol::records::{Applied, Directory, MemberState, SignedMemberRecord, SignedRevocation};

/// The fixture member whose certificate `signed` carries.
fn owner<'a>(f: &'a Fixture, signed: &SignedMemberRecord) -> &'a Member {
    f.members
        .iter()
        .chain([&f.reissued, &f.stranger])
        .find(|m| m.certificate == signed.record().certificate)
        .unwrap_or_else(|| {
            panic!(
                "the directory accepted a certificate the CA never issued: {:?}",
                signed.record().certificate
            )
        })
}

fn check_member(dir: &mut Directory, bytes: &[u8]) {
    let f = fixture();
    let before = dir.clone();
    match dir.apply_member_bytes(bytes, NOW) {
        Err(_) | Ok(Applied::Unchanged) => {
            assert_eq!(
                *dir, before,
                "a refused or known record changed the directory"
            )
        }
        Ok(_) => {
            let signed = SignedMemberRecord::from_bytes(bytes).expect("it decoded once");
            assert_genuine(dir, &signed, NOW);
            let resigned = signed
                .record()
                .sign(&owner(f, &signed).key)
                .expect("an accepted record follows the rules");
            assert_eq!(
                resigned.to_bytes(),
                bytes,
                "the directory accepted bytes its owner did not sign"
            );
        }
    }
    assert_directory_invariants(dir);
}

fn check_revocation(dir: &mut Directory, bytes: &[u8]) {
    let f = fixture();
    let before = dir.clone();
    match dir.apply_revocation_bytes(bytes) {
        Err(_) | Ok(Applied::Unchanged) => {
            assert_eq!(
                *dir, before,
                "a refused or known revocation changed the directory"
            )
        }
        Ok(applied) => {
            let signed = SignedRevocation::from_bytes(bytes).expect("it decoded once");
            assert_eq!(
                signed.revocation().sign(&f.ca).to_bytes(),
                bytes,
                "the directory accepted a revocation the CA did not sign: {applied:?}"
            );
            let revoked = signed.revocation();
            assert!(dir.is_revoked(&revoked.wireguard_key));
            assert!(
                dir.live_members()
                    .all(|m| *m.name != revoked.node || m.serial > revoked.serial),
                "a revoked member is still live"
            );
        }
    }
    assert_directory_invariants(dir);
}

/// Flips byte `at` (modulo the length) of `bytes` by `xor`.
fn flip(mut bytes: Vec<u8>, at: u16, xor: u8) -> Vec<u8> {
    let len = bytes.len();
    bytes[usize::from(at) % len] ^= xor;
    bytes
}

fn byte(op: &[u8], i: usize) -> u8 {
    op.get(i).copied().unwrap_or(0)
}

fn genuine_record(f: &Fixture, op: &[u8]) -> SignedMemberRecord {
    let member = match byte(op, 0) % 5 {
        i @ 0..=2 => &f.members[usize::from(i)],
        3 => &f.reissued,
        _ => &f.stranger,
    };
    let version = u64::from(byte(op, 1) % 8);
    let state = if byte(op, 2) & 1 == 0 {
        MemberState::Alive
    } else {
        MemberState::Left
    };
    let endpoints: Vec<SocketAddr> = (0..usize::from(byte(op, 3) % 5))
        .map(|i| SocketAddr::from(([198, 18, byte(op, 4), i as u8 + 1], 51820)))
        .collect();
    member.record(version, state, &endpoints)
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut dir = f.directory();
    for op in long_chunks(data) {
        let Some((&kind, rest)) = op.split_first() else {
            continue;
        };
        match kind % 6 {
            0 => check_member(&mut dir, rest),
            1 => check_revocation(&mut dir, rest),
            2 => {
                let bytes = genuine_record(f, rest).to_bytes();
                let bytes = match byte(rest, 5) {
                    0 => bytes,
                    xor => flip(
                        bytes,
                        u16::from_be_bytes([byte(rest, 6), byte(rest, 7)]),
                        xor,
                    ),
                };
                check_member(&mut dir, &bytes);
            }
            3 => {
                let member = match byte(rest, 0) % 4 {
                    i @ 0..=2 => &f.members[usize::from(i)],
                    _ => &f.reissued,
                };
                let bytes = f.revocation(member).to_bytes();
                let bytes = match byte(rest, 1) {
                    0 => bytes,
                    xor => flip(
                        bytes,
                        u16::from_be_bytes([byte(rest, 2), byte(rest, 3)]),
                        xor,
                    ),
                };
                check_revocation(&mut dir, &bytes);
            }
            4 => {
                let bytes = f.stranger.record(1, MemberState::Alive, &[]).to_bytes();
                let before = dir.clone();
                assert!(
                    dir.apply_member_bytes(&bytes, NOW).is_err(),
                    "another CA's member was accepted"
                );
                assert_eq!(dir, before);
            }
            _ => {
                let text = serde_json::to_string(&dir).expect("a directory serializes");
                let loaded: Directory = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("a persisted directory does not load: {e}\n{text}"));
                assert_eq!(loaded, dir, "a directory changed through persisting");
                let later = NOW + u64::from(byte(rest, 0)) * 30 * DAY;
                let expired = dir.expire(later);
                assert!(
                    dir.live_members().all(|m| !expired.contains(m.name)),
                    "an expired member is still live"
                );
            }
        }
    }
});
