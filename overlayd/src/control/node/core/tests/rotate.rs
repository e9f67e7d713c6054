//! WireGuard key rotation in the simulated network: a member's new key is certified by
//! the admin and routed by every peer; an admin rotates its own; and the attacks on it are
//! refused (no proof, someone else's key, a retired key, a joiner, a non-admin).

use keys::{PrivateKey, RekeyProof};

use super::sim::{Sim, settings};
use super::{converged, secs};
use crate::control::admin::rekey_claim;
use crate::control::msg::{Request, Response};
use crate::control::node::core::{Answer, Origin};

/// Host `at`'s link to host `to`.
fn link_to(sim: &Sim, at: usize, to: usize) -> crate::control::node::core::LinkId {
    *sim.hosts[at]
        .links
        .iter()
        .find(|(_, (other, _))| *other == to)
        .expect("a link")
        .0
}

/// The key host `observer` routes the member `name` with.
fn routed_key(sim: &Sim, observer: usize, name: &str) -> Option<keys::PublicKey> {
    sim.hosts[observer]
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.public_key)
}

/// What the admin (host 0) answers a `Rekey` that host `from` sends with `new` and a
/// proof made with `prover` (the private half of `new`, or not).
fn ask_rekey(sim: &mut Sim, from: usize, new: keys::PublicKey, prover: &PrivateKey) -> Response {
    let now = sim.now();
    let current = sim.hosts[from].core().certificate().clone();
    let admin_key = sim.hosts[0].core().certificate().wireguard_key;
    let proof = RekeyProof::prove(&rekey_claim(&current), prover, &admin_key).expect("a proof");
    let link = link_to(sim, 0, from);
    let request = Request::Rekey {
        wireguard_key: new,
        proof: proof.to_bytes(),
    };
    match sim.hosts[0]
        .core()
        .handle_request(Origin::Member(link), request, now)
    {
        Answer::Reply(response) => response,
        Answer::AfterSave(change) => {
            let admin = change.admin().clone();
            let response = sim.hosts[0].core().commit(change).response;
            sim.hosts[0].admin = Some(admin);
            response
        }
        Answer::Drop => panic!("dropped"),
    }
}

#[test]
fn a_member_rotates_its_key_through_the_admin_and_every_peer_follows() {
    let mut sim = converged(3);
    let old = sim.hosts[1].core().certificate().clone();
    let new = PrivateKey::generate();
    let now = sim.now();
    let change = sim.hosts[1]
        .core()
        .rotate_key(new.clone(), now)
        .expect("asked");
    assert!(change.is_none(), "a member asks an admin");
    sim.settle();
    let done = sim.hosts[1].rotations.last().cloned().expect("an outcome");
    let done = done.expect("rotated");
    assert_eq!(done.public_key, new.public_key());
    assert_eq!(done.old_public_key, old.wireguard_key);
    assert_eq!(sim.hosts[1].switched_to, vec![new.public_key()]);
    let cert = sim.hosts[1].core().certificate().clone();
    assert_eq!(cert.wireguard_key, new.public_key());
    assert!(cert.serial > old.serial);
    assert_eq!(
        (cert.number, &cert.subnets, &cert.node, cert.control_key),
        (old.number, &old.subnets, &old.node, old.control_key)
    );
    // Saved with the new certificate and the key's age.
    let saved = &sim.hosts[1].saved.0;
    assert!(saved.wireguard_key_since.is_some());
    assert_eq!(
        saved.certificate.unverified_body().unwrap().wireguard_key,
        new.public_key()
    );
    // The admin remembers the old key as retired.
    let admin = sim.hosts[0].admin.clone().expect("the admin's state");
    assert!(
        admin
            .retired_keys
            .iter()
            .any(|(n, k)| n.as_str() == "h1" && *k == old.wireguard_key)
    );
    sim.run(secs(3));
    for observer in [0, 2] {
        assert_eq!(
            routed_key(&sim, observer, "h1"),
            Some(new.public_key()),
            "h{observer}"
        );
    }
    // One rotation, one key switch: nothing was asked twice.
    assert_eq!(sim.hosts[1].rotations.len(), 1);
    assert_eq!(sim.hosts[1].switched_to.len(), 1);
}

#[test]
fn an_admin_rotates_its_own_key() {
    let mut sim = converged(3);
    let old = sim.hosts[0].core().certificate().clone();
    let new = PrivateKey::generate();
    let now = sim.now();
    let change = sim.hosts[0]
        .core()
        .rotate_key(new.clone(), now)
        .expect("re-issued")
        .expect("by itself");
    assert!(
        change
            .admin()
            .retired_keys
            .iter()
            .any(|(_, k)| *k == old.wireguard_key)
    );
    let done = sim.hosts[0]
        .core()
        .commit_rotation(change, now)
        .expect("installed");
    assert_eq!(done.public_key, new.public_key());
    sim.settle();
    assert_eq!(sim.hosts[0].switched_to, vec![new.public_key()]);
    sim.run(secs(3));
    for observer in [1, 2] {
        assert_eq!(routed_key(&sim, observer, "h0"), Some(new.public_key()));
    }
    // A member's rotation after it is checked against the admin's new key (the one its
    // certificate names now).
    let member_new = PrivateKey::generate();
    let Response::Renewed { .. } = ask_rekey(&mut sim, 1, member_new.public_key(), &member_new)
    else {
        panic!("a member's rotation after the admin's own");
    };
}

#[test]
fn a_rekey_without_proof_or_for_a_key_in_use_or_retired_is_refused() {
    let mut sim = converged(3);
    let refused = |r: Response| match r {
        Response::Refused(why) => why,
        other => panic!("not refused: {other:?}"),
    };
    // A proof made with another key than the one asked for: no proof of possession.
    let new = PrivateKey::generate();
    let why = refused(ask_rekey(
        &mut sim,
        1,
        new.public_key(),
        &PrivateKey::generate(),
    ));
    assert!(why.contains("did not prove"), "{why}");
    // Another member's key (even with its private half, as a thief would have it).
    let h2 = sim.hosts[2].keys.wireguard.clone();
    let why = refused(ask_rekey(&mut sim, 1, h2.public_key(), &h2));
    assert!(why.contains("held by member h2"), "{why}");
    // Its own current key.
    let h1 = sim.hosts[1].keys.wireguard.clone();
    let why = refused(ask_rekey(&mut sim, 1, h1.public_key(), &h1));
    assert!(why.contains("holds now"), "{why}");
    // h1 rotates; then h2 asks for h1's retired key, and h1 for it back.
    let Response::Renewed { .. } = ask_rekey(&mut sim, 1, new.public_key(), &new) else {
        panic!("a proper rotation is certified");
    };
    let why = refused(ask_rekey(&mut sim, 2, h1.public_key(), &h1));
    assert!(why.contains("retired"), "{why}");
    // A proof replayed for a later certificate: it names the serial it was made for.
    let now = sim.now();
    let current = sim.hosts[2].core().certificate().clone();
    let admin_key = sim.hosts[0].core().certificate().wireguard_key;
    let fresh = PrivateKey::generate();
    let mut stale = current.clone();
    stale.serial -= 1;
    let proof = RekeyProof::prove(&rekey_claim(&stale), &fresh, &admin_key).unwrap();
    let link = link_to(&sim, 0, 2);
    let Answer::Reply(Response::Refused(why)) = sim.hosts[0].core().handle_request(
        Origin::Member(link),
        Request::Rekey {
            wireguard_key: fresh.public_key(),
            proof: proof.to_bytes(),
        },
        now,
    ) else {
        panic!("a stale proof is refused");
    };
    assert!(why.contains("did not prove"), "{why}");
    // A joiner (no certificate proven) cannot ask at all.
    let Answer::Reply(Response::Refused(why)) = sim.hosts[0].core().handle_request(
        Origin::Joiner,
        Request::Rekey {
            wireguard_key: fresh.public_key(),
            proof: [0; keys::REKEY_PROOF_LEN],
        },
        now,
    ) else {
        panic!("a joiner's rekey is refused");
    };
    assert!(why.contains("join first"), "{why}");
    // A member that is no admin refuses.
    let link = link_to(&sim, 2, 1);
    let Answer::Reply(Response::Refused(why)) = sim.hosts[2].core().handle_request(
        Origin::Member(link),
        Request::Rekey {
            wireguard_key: fresh.public_key(),
            proof: [0; keys::REKEY_PROOF_LEN],
        },
        now,
    ) else {
        panic!("a non-admin refuses");
    };
    assert!(why.contains("not an admin"), "{why}");
}

#[test]
fn a_key_older_than_key_rotation_days_is_rotated_by_itself() {
    let mut sim = converged(3);
    let now = sim.now();
    let mut every = settings();
    every.key_rotation_s = Some(60);
    sim.hosts[1]
        .core()
        .set_settings(every, now)
        .expect("settings");
    // The key's age is counted from now (no age was saved): nothing at once.
    sim.run(secs(30));
    assert_eq!(sim.hosts[1].rotate_asked, 0);
    // A minute on, the core asks the driver for a new key, once.
    sim.run(secs(40));
    assert_eq!(sim.hosts[1].rotate_asked, 1);
    sim.run(secs(120));
    assert_eq!(sim.hosts[1].rotate_asked, 1, "asked again before answering");
    // The driver's part: a new key handed to the core, which rotates as when asked.
    let new = PrivateKey::generate();
    let now = sim.now();
    assert!(
        sim.hosts[1]
            .core()
            .rotate_key(new.clone(), now)
            .unwrap()
            .is_none()
    );
    sim.settle();
    assert_eq!(sim.hosts[1].switched_to, vec![new.public_key()]);
    // And the next rotation is a full period after this one.
    sim.run(secs(50));
    assert_eq!(sim.hosts[1].rotate_asked, 1);
    sim.run(secs(20));
    assert_eq!(sim.hosts[1].rotate_asked, 2);
}
