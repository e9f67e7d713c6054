//! CA transitions in the directory: rotation, the attacks on it (a member's own CA, a
//! forged window, a replayed older transition), retirement, persistence.

use keys::{CaKey, NodeCertificate, PrivateKey, SignedCertificate, SigningKey};

use super::ca::{CaTransition, SignedCaTransition};
use super::*;

const NOW: u64 = 1_700_000_000;
const END: u64 = NOW + 30;

fn name(text: &str) -> Name {
    Name::new(text).unwrap()
}

struct Host {
    key: SigningKey,
    wireguard_key: PublicKey,
    number: u32,
}

impl Host {
    fn new(number: u32) -> Host {
        Host {
            key: SigningKey::generate(),
            wireguard_key: PrivateKey::generate().public_key(),
            number,
        }
    }

    fn certificate(&self, ca: &CaKey, serial: u64) -> SignedCertificate {
        ca.sign(&NodeCertificate {
            network: name("prod"),
            node: name(&format!("h{}", self.number)),
            wireguard_key: self.wireguard_key,
            control_key: self.key.verifying_key(),
            subnets: vec![format!("10.42.{}.0/24", self.number).parse().unwrap()],
            groups: Vec::new(),
            not_before: NOW - 3600,
            not_after: NOW + 86_400,
            serial,
            number: self.number,
            ca_fingerprint: ca.fingerprint(),
        })
        .unwrap()
    }

    fn alive(&self, ca: &CaKey, serial: u64, version: u64) -> SignedMemberRecord {
        MemberRecord {
            certificate: self.certificate(ca, serial),
            version,
            state: MemberState::Alive,
            control_port: 51821,
            endpoints: vec![format!("198.18.0.{}:51820", self.number).parse().unwrap()],
            relay: None,
        }
        .sign(&self.key)
        .unwrap()
    }
}

fn transition(old: &CaKey, new: &CaKey, start: u64, end: u64) -> SignedCaTransition {
    CaTransition {
        network: name("prod"),
        old: old.verifying_key(),
        new: new.verifying_key(),
        start_unix: start,
        end_unix: end,
    }
    .sign(old, new)
    .unwrap()
}

fn revocation(ca: &CaKey, host: &Host, serial: u64) -> SignedRevocation {
    Revocation {
        network: name("prod"),
        node: name(&format!("h{}", host.number)),
        serial,
        wireguard_key: host.wireguard_key,
        revoked_at: NOW,
    }
    .sign(ca)
}

#[test]
fn during_a_transition_both_cas_are_trusted_then_only_the_new_one() {
    let (old, new) = (CaKey::generate(), CaKey::generate());
    let (h1, h2, h3) = (Host::new(1), Host::new(2), Host::new(3));
    let mut dir = Directory::new(old.verifying_key(), name("prod"));
    dir.apply_member(&h1.alive(&old, 1, 1), NOW).unwrap();
    dir.apply_member(&h2.alive(&old, 2, 1), NOW).unwrap();
    // Before the transition, a certificate of the new CA is refused.
    assert!(matches!(
        dir.apply_member(&h3.alive(&new, 3, 1), NOW),
        Err(RecordError::UntrustedCertificate { .. })
    ));
    let t = transition(&old, &new, NOW, END);
    assert_eq!(dir.apply_transition(&t, Some(NOW)), Ok(true));
    assert_eq!(dir.apply_transition(&t, Some(NOW)), Ok(false), "held");
    assert_eq!(*dir.ca(), new.verifying_key());
    // Both CAs now: h3 of the new CA, h1 renewed under it, h2 still on the old.
    dir.apply_member(&h3.alive(&new, 3, 1), NOW).unwrap();
    dir.apply_member(&h1.alive(&new, 4, 1), NOW + 1).unwrap();
    dir.apply_member(&h2.alive(&old, 2, 2), NOW + 1).unwrap();
    // Revocations of either CA.
    let r_old = revocation(&old, &Host::new(7), 7);
    let r_new = revocation(&new, &Host::new(8), 8);
    dir.apply_revocation(&r_old).unwrap();
    dir.apply_revocation(&r_new).unwrap();
    // The persisted directory loads back during the transition, old-CA members included.
    let json = serde_json::to_string(&dir).unwrap();
    let back: Directory = serde_json::from_str(&json).unwrap();
    assert_eq!(back, dir);
    // Not yet over.
    assert_eq!(dir.retire(END - 1), None);
    // Over: h2 (never renewed) goes, and what the old CA signed is refused from now on.
    assert_eq!(dir.retire(END), Some(vec![name("h2")]));
    assert!(dir.ca_transition().is_none());
    let live: Vec<_> = dir.live_members().map(|m| m.name.to_string()).collect();
    assert_eq!(live, ["h1", "h3"]);
    // Retired: the old CA is a stranger's now.
    let refused = dir.apply_member(&h2.alive(&old, 2, 3), END).unwrap_err();
    assert!(
        matches!(refused, RecordError::UntrustedCertificate { .. }),
        "{refused:?}"
    );
    assert!(!dir.is_revoked(&Host::new(7).wireguard_key));
    assert_eq!(dir.revocations().count(), 1);
    assert!(dir.apply_revocation(&r_old).is_err(), "old CA's revocation");
}

#[test]
fn a_record_is_refused_at_the_end_even_before_the_retirement_runs() {
    let (old, new) = (CaKey::generate(), CaKey::generate());
    let h1 = Host::new(1);
    let mut dir = Directory::new(old.verifying_key(), name("prod"));
    dir.apply_transition(&transition(&old, &new, NOW, END), Some(NOW))
        .unwrap();
    dir.apply_member(&h1.alive(&old, 1, 1), END - 1).unwrap();
    let refused = dir.apply_member(&h1.alive(&old, 1, 2), END).unwrap_err();
    assert!(
        matches!(refused, RecordError::CaNotTrusted { .. }),
        "{refused:?}"
    );
    assert!(
        refused
            .to_string()
            .contains("join again with a token of the new CA"),
        "{refused}"
    );
}

#[test]
fn a_member_cannot_install_a_ca_of_its_own() {
    let ca = CaKey::generate();
    let own = CaKey::generate();
    let mut dir = Directory::new(ca.verifying_key(), name("prod"));
    let before = dir.clone();
    // Signed by its own key only, claiming the network's CA as the old one.
    let t = CaTransition {
        network: name("prod"),
        old: ca.verifying_key(),
        new: own.verifying_key(),
        start_unix: NOW,
        end_unix: END,
    };
    assert!(t.sign(&own, &own).is_err(), "sign checks the keys");
    // The same, from a transition of its own CA to itself... or from another CA it holds.
    let third = CaKey::generate();
    let foreign = transition(&third, &own, NOW, END);
    assert!(matches!(
        dir.apply_transition(&foreign, Some(NOW)),
        Err(RecordError::TransitionRefused { .. })
    ));
    // Bytes forged by hand: the old CA's signature made with its own key.
    let genuine = transition(&ca, &own, NOW, END).to_bytes();
    let mut forged = genuine.clone();
    let at = forged.len() - 2 * keys::SIGNATURE_LEN;
    let by_own = transition(&own, &third, NOW, END).to_bytes();
    let theirs = &by_own[by_own.len() - 2 * keys::SIGNATURE_LEN..][..keys::SIGNATURE_LEN];
    forged[at..at + keys::SIGNATURE_LEN].copy_from_slice(theirs);
    assert!(matches!(
        dir.apply_transition_bytes(&forged, Some(NOW)),
        Err(RecordError::UntrustedTransition { .. })
    ));
    assert_eq!(dir, before, "nothing changed");
}

#[test]
fn a_forged_window_is_refused() {
    let (old, new) = (CaKey::generate(), CaKey::generate());
    let mut dir = Directory::new(old.verifying_key(), name("prod"));
    let bytes = transition(&old, &new, NOW, END).to_bytes();
    // The end is the body's last 8 bytes, before both signatures: push it later.
    let end_at = bytes.len() - 2 * keys::SIGNATURE_LEN - 8;
    let mut later = bytes.clone();
    later[end_at..end_at + 8].copy_from_slice(&(END + 1000).to_be_bytes());
    assert!(matches!(
        dir.apply_transition_bytes(&later, Some(NOW)),
        Err(RecordError::UntrustedTransition { .. })
    ));
    // A window too short or too long is refused even when both CAs sign it.
    let short = CaTransition {
        network: name("prod"),
        old: old.verifying_key(),
        new: new.verifying_key(),
        start_unix: NOW,
        end_unix: NOW + 1,
    };
    assert!(short.sign(&old, &new).is_err());
    assert!(dir.ca_transition().is_none());
}

#[test]
fn a_replayed_older_transition_is_refused() {
    let (ca0, ca1, ca2) = (CaKey::generate(), CaKey::generate(), CaKey::generate());
    let t1 = transition(&ca0, &ca1, NOW, END);
    let mut dir = Directory::new(ca0.verifying_key(), name("prod"));
    dir.apply_transition(&t1, Some(NOW)).unwrap();
    // A second transition while one is under way.
    let early = transition(&ca1, &ca2, NOW + 1, END + 100);
    assert!(matches!(
        dir.apply_transition(&early, Some(NOW + 1)),
        Err(RecordError::TransitionRefused { .. })
    ));
    dir.retire(END).unwrap();
    // After its end, t1 again (its new CA is this directory's): over.
    let e = dir.apply_transition(&t1, Some(END + 1)).unwrap_err();
    assert!(e.to_string().contains("over"), "{e}");
    // The next rotation, then t1 again: neither of its CAs is this network's.
    let t2 = transition(&ca1, &ca2, END + 10, END + 40);
    dir.apply_transition(&t2, Some(END + 10)).unwrap();
    dir.retire(END + 40).unwrap();
    let e = dir.apply_transition(&t1, Some(END + 41)).unwrap_err();
    assert!(matches!(e, RecordError::TransitionRefused { .. }), "{e}");
    assert_eq!(*dir.ca(), ca2.verifying_key());
}

#[test]
fn a_host_that_joined_under_the_new_ca_learns_the_old_one_until_the_end() {
    let (old, new) = (CaKey::generate(), CaKey::generate());
    let h2 = Host::new(2);
    let t = transition(&old, &new, NOW, END);
    let mut dir = Directory::new(new.verifying_key(), name("prod"));
    dir.apply_transition(&t, Some(NOW)).unwrap();
    assert_eq!(*dir.ca(), new.verifying_key(), "the CA in force stays");
    dir.apply_member(&h2.alive(&old, 2, 1), NOW).unwrap();
}
