//! Tests of token records: a token made on one admin redeemed at another, the used record
//! that refuses it everywhere after, and records refused or dropped.

use super::*;
use crate::control::admin::{Issuer, JoinAsk};
use keys::{JoinProof, JoinToken, PrivateKey};
use protocol::records::Directory;

const NOW: u64 = 1_800_000_000;

/// One admin of a network: its state and WireGuard key.
struct Admin {
    name: Name,
    state: AdminState,
    wireguard: PrivateKey,
}

struct Net {
    ca: CaKey,
    network: Name,
    dir: Directory,
}

impl Net {
    fn new() -> Net {
        let ca = CaKey::generate();
        let network = Name::new("testnet").unwrap();
        let dir = Directory::new(ca.verifying_key(), network.clone());
        Net { ca, network, dir }
    }

    fn admin(&self, name: &str) -> Admin {
        Admin {
            name: Name::new(name).unwrap(),
            state: AdminState::default(),
            wireguard: PrivateKey::generate(),
        }
    }

    fn issuer(&self) -> Issuer<'_> {
        Issuer {
            ca: &self.ca,
            network: &self.network,
            cidr: "10.42.0.0/16".parse().unwrap(),
            ranges: &[],
            subnet_prefix: 24,
            certificate_lifetime_s: 86_400,
        }
    }

    fn token(&self, at: &mut Admin, ttl: u64) -> JoinToken {
        let endpoints = vec!["198.18.0.11:51821".parse().unwrap()];
        self.issuer()
            .create_token(
                &mut at.state,
                endpoints,
                ttl,
                vec![Name::new("web").unwrap()],
                NOW,
            )
            .unwrap()
    }

    /// Every token record `from` holds.
    fn records(&self, from: &Admin, now: u64) -> Vec<Vec<u8>> {
        token_records(&from.state, &self.ca, &self.network, &from.name, now)
    }

    /// `from`'s records taken by `to`.
    fn share(&self, from: &Admin, to: &mut Admin, now: u64) -> (bool, Vec<AdminError>) {
        let records = self.records(from, now);
        apply_token_records(
            &mut to.state,
            &records,
            &[self.ca.verifying_key()],
            &self.network,
            now,
        )
    }

    /// A host named `name` joins at `at` with `token`.
    fn join(
        &self,
        at: &mut Admin,
        token: &JoinToken,
        name: &str,
    ) -> Result<keys::SignedCertificate, crate::control::admin::Refused> {
        let host = PrivateKey::generate();
        let control = keys::SigningKey::generate();
        let mut ask = JoinAsk {
            secret: token.secret().clone(),
            name: Name::new(name).unwrap(),
            wireguard_key: host.public_key(),
            control_key: control.verifying_key(),
            subnet: None,
            proof: JoinProof::from_bytes([0; keys::PROOF_LEN]),
        };
        ask.proof = JoinProof::prove(
            &ask.claim(&self.network, self.ca.fingerprint()),
            &host,
            &at.wireguard.public_key(),
        )
        .unwrap();
        self.issuer()
            .admit(&mut at.state, &self.dir, &ask, &at.wireguard, NOW + 1)
    }
}

#[test]
fn a_token_made_on_one_admin_is_redeemed_at_another_and_then_refused_everywhere() {
    let net = Net::new();
    let (mut a, mut b) = (net.admin("h1"), net.admin("h2"));
    let token = net.token(&mut a, 600);
    // Before A shares it, B does not know it.
    let unknown = net.join(&mut b, &token, "early").unwrap_err();
    assert!(unknown.0.contains("never issued"), "{unknown}");
    assert_eq!(net.share(&a, &mut b, NOW), (true, vec![]));
    // A is down: B redeems it, with the groups of the record.
    let cert = net.join(&mut b, &token, "h4").unwrap();
    let cert = cert.verify(&net.ca.verifying_key(), NOW + 1).unwrap();
    assert_eq!(cert.groups, vec![Name::new("web").unwrap()]);
    assert_eq!(b.state.tokens[0].issuer.as_ref(), Some(&a.name));
    // Again at B: used.
    let again = net.join(&mut b, &token, "h5").unwrap_err();
    assert!(again.0.contains("already used (by h4)"), "{again}");
    // A comes back and takes B's used record: refused there too.
    assert_eq!(net.share(&b, &mut a, NOW + 2), (true, vec![]));
    let at_a = net.join(&mut a, &token, "h6").unwrap_err();
    assert!(at_a.0.contains("already used (by h4)"), "{at_a}");
    // A's unused copy (an old record from a third admin) never makes it usable again.
    let stale = record_of(
        &TokenEntry {
            used_by: None,
            ..a.state.tokens[0].clone()
        },
        &net.network,
        &a.name,
    )
    .sign(&net.ca);
    let (changed, refused) = apply_token_records(
        &mut b.state,
        &[stale],
        &[net.ca.verifying_key()],
        &net.network,
        NOW + 3,
    );
    assert!(!changed && refused.is_empty());
    assert!(net.join(&mut b, &token, "h7").is_err());
    // Records carry the hash, never the secret.
    let bytes = net.records(&a, NOW + 3).concat();
    let secret = token.secret().as_bytes();
    assert!(!bytes.windows(secret.len()).any(|w| w == secret));
}

#[test]
fn a_forged_token_record_is_refused() {
    let net = Net::new();
    let mut a = net.admin("h1");
    let _ = net.token(&mut a, 600);
    let entry = a.state.tokens[0].clone();
    let record = record_of(&entry, &net.network, &a.name);
    let mut b = net.admin("h2");
    // Signed by another CA.
    let forged = record.sign(&CaKey::generate());
    // Signed by this CA, a byte changed (the groups, the expiry...).
    let mut tampered = record.sign(&net.ca);
    let at = tampered.len() - 70;
    tampered[at] ^= 1;
    // Not a record at all, cut short, too long.
    let good = record.sign(&net.ca);
    let cut = good[..good.len() - 1].to_vec();
    let long = vec![0u8; MAX_SIGNED_LEN + 1];
    let junk = vec![0, 3, TOKEN_FORMAT, 1, 2];
    let (changed, refused) = apply_token_records(
        &mut b.state,
        &[forged, tampered, cut, long, junk],
        &[net.ca.verifying_key()],
        &net.network,
        NOW,
    );
    assert!(!changed);
    assert_eq!(refused.len(), 5, "{refused:?}");
    assert!(
        matches!(refused[0], AdminError::Untrusted(_)),
        "{}",
        refused[0]
    );
    assert!(b.state.tokens.is_empty());
    // Another network's.
    let other = TokenRecord {
        network: Name::new("other").unwrap(),
        ..record
    }
    .sign(&net.ca);
    let (_, refused) = apply_token_records(
        &mut b.state,
        &[other],
        &[net.ca.verifying_key()],
        &net.network,
        NOW,
    );
    assert!(
        matches!(refused[..], [AdminError::OtherNetwork(_)]),
        "{refused:?}"
    );
}

#[test]
fn expired_token_records_are_dropped_and_the_count_is_bounded() {
    let net = Net::new();
    let mut a = net.admin("h1");
    let _ = net.token(&mut a, 10);
    let mut b = net.admin("h2");
    // Expired when it arrives: dropped, without a word.
    let records = token_records(&a.state, &net.ca, &net.network, &a.name, NOW);
    let (changed, refused) = apply_token_records(
        &mut b.state,
        &records,
        &[net.ca.verifying_key()],
        &net.network,
        NOW + 10,
    );
    assert!(!changed && refused.is_empty() && b.state.tokens.is_empty());
    // Nor is it sent once expired.
    assert!(net.records(&a, NOW + 10).is_empty());
    // Held when it came, dropped once expired as the next one comes.
    assert!(net.share(&a, &mut b, NOW).0);
    let _ = net.token(&mut a, 600);
    assert!(net.share(&a, &mut b, NOW + 10).0);
    assert_eq!(b.state.tokens.len(), 1);
    // At most MAX_TOKEN_RECORDS held; more are refused with a reason.
    let many: Vec<Vec<u8>> = (0..MAX_TOKEN_RECORDS as u32 + 1)
        .map(|i| {
            let mut hash = [0u8; 32];
            hash[..4].copy_from_slice(&i.to_be_bytes());
            TokenRecord {
                network: net.network.clone(),
                issuer: a.name.clone(),
                secret_hash: SecretHash::from_bytes(hash),
                expires_unix: NOW + 600,
                groups: vec![],
                used_by: None,
            }
            .sign(&net.ca)
        })
        .collect();
    let mut c = net.admin("h3");
    let (_, refused) = apply_token_records(
        &mut c.state,
        &many,
        &[net.ca.verifying_key()],
        &net.network,
        NOW,
    );
    assert_eq!(c.state.tokens.len(), MAX_TOKEN_RECORDS);
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].to_string().contains("tokens are held"),
        "{}",
        refused[0]
    );
    // And an admin that holds that many makes no more.
    let full = net
        .issuer()
        .create_token(
            &mut c.state,
            vec!["198.18.0.11:51821".parse().unwrap()],
            60,
            vec![],
            NOW,
        )
        .unwrap_err();
    assert!(full.0.contains("let some expire first"), "{full}");
}

#[test]
fn a_token_record_is_no_admin_record_and_fits_a_frame() {
    let net = Net::new();
    let mut a = net.admin("h1");
    let _ = net.token(&mut a, 600);
    let bytes = net.records(&a, NOW).remove(0);
    assert!(is_token_record(&bytes));
    let admin = crate::control::admins::AdminRecord {
        network: net.network.clone(),
        node: a.name.clone(),
        number: 1,
        slot: 0,
        serial_floor: 0,
        blocks: 1,
        version: 1,
        retired: false,
    }
    .sign(&net.ca);
    assert!(!is_token_record(&admin));
    // The longest record there can be.
    let long = |n: char| Name::new(n.to_string().repeat(63)).unwrap();
    let longest = TokenRecord {
        network: long('n'),
        issuer: long('i'),
        secret_hash: SecretHash::from_bytes([7; 32]),
        expires_unix: u64::MAX,
        groups: (0..keys::MAX_GROUPS)
            .map(|i| long(char::from(b'a' + i as u8)))
            .collect(),
        used_by: Some(long('u')),
    };
    let signed = longest.sign(&net.ca);
    assert!(
        signed.len() <= MAX_SIGNED_LEN,
        "{} > {MAX_SIGNED_LEN}",
        signed.len()
    );
    let ca = net.ca.verifying_key();
    assert_eq!(
        TokenRecord::verify(&signed, &ca, &long('n')).unwrap(),
        longest
    );
}

/// A full sync between two admins: every record signed on one side, checked on the other
/// the first time, and skipped unverified once held (timed: `--nocapture` prints it).
#[test]
fn a_sync_of_held_records_changes_nothing_and_checks_no_signature_again() {
    let net = Net::new();
    let mut a = net.admin("h1");
    for _ in 0..MAX_TOKEN_RECORDS {
        let _ = net.token(&mut a, 600);
    }
    let mut b = net.admin("h2");
    let t = std::time::Instant::now();
    let records = net.records(&a, NOW);
    let signed = t.elapsed();
    let t = std::time::Instant::now();
    assert_eq!(net.share(&a, &mut b, NOW), (true, vec![]));
    let first = t.elapsed();
    let ca = net.ca.verifying_key();
    let t = std::time::Instant::now();
    let again = apply_token_records(
        &mut b.state,
        &records,
        std::slice::from_ref(&ca),
        &net.network,
        NOW,
    );
    let held = t.elapsed();
    assert_eq!(again, (false, vec![]));
    assert_eq!(b.state.tokens.len(), MAX_TOKEN_RECORDS);
    let bytes: usize = records.iter().map(|r| r.len() + 3).sum();
    eprintln!(
        "{MAX_TOKEN_RECORDS} token records ({bytes} bytes): signed in {signed:?}, taken in \
         {first:?} (sign + verify), taken again in {held:?}"
    );
}
