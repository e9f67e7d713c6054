//! More than one admin in the core: the CA key is taken only when it is the network's and a
//! CA-signed record names the taker; nothing answers a request with the key; a removed
//! admin forgets the key. (The driver saves; here the actions are looked at.)

use keys::{CaKey, SigningKey};

use super::converged;
use crate::control::admins::AdminRecord;
use crate::control::msg::{Request, Response};
use crate::control::node::core::{Action, AdminKey, Answer, Origin};

#[test]
fn a_ca_key_is_taken_only_if_it_is_the_networks_and_a_ca_record_names_the_host() {
    let mut sim = converged(3);
    let now = sim.now();
    let link = sim.link(1, 2).expect("h1 is connected to h2");
    // A member that is no admin sends a key of its own making: refused.
    let own = SigningKey::generate().to_base64().to_string();
    let e = sim.hosts[1]
        .core()
        .check_admin_key(link, &own, &[], now)
        .unwrap_err();
    assert!(e.0.contains("not this network's CA key"), "{e}");
    // The real CA key (stolen, say) with a grant the attacker signed itself: the record is
    // refused, so the key is not taken.
    let forged = AdminRecord {
        network: sim.network.name.clone(),
        node: keys::Name::new("h1").unwrap(),
        number: sim.hosts[1].core().certificate().number,
        slot: 5,
        serial_floor: 1,
        blocks: u64::MAX,
        version: 1,
        retired: false,
    }
    .sign(&CaKey::from_signing_key(SigningKey::generate()));
    let ca = sim.network.ca.signing_key().to_base64().to_string();
    let e = sim.hosts[1]
        .core()
        .check_admin_key(link, &ca, &[forged], now)
        .unwrap_err();
    assert!(e.0.contains("no admin record names this host"), "{e}");
    assert!(!sim.hosts[1].core().is_admin());
    assert!(sim.hosts[1].core().admin_records().is_empty());
}

#[test]
fn a_grant_makes_an_admin_and_a_retirement_unmakes_it() {
    let mut sim = converged(3);
    let now = sim.now();
    // h0, the admin, grants h1.
    let change = sim.hosts[0].core().grant_admin("h1", now).expect("a grant");
    let (link, key, records) = sim.hosts[0]
        .core()
        .commit_admins(change, now)
        .expect("a key to send");
    assert_eq!(Some(link), sim.link(0, 1));
    assert_eq!(records.len(), 2, "h0's own record and h1's");
    // No answer to any request carries the key: the records sent to whoever asks are
    // records only.
    let from_h2 = sim.link(0, 2).expect("h0 is connected to h2");
    let answer = sim.hosts[0].core().handle_request(
        Origin::Member(from_h2),
        Request::Admins(Vec::new()),
        now,
    );
    let Answer::Reply(Response::Admins(sent)) = answer else {
        panic!("{answer:?}")
    };
    let raw = sim.network.ca.signing_key().to_base64();
    for r in &sent {
        assert!(!String::from_utf8_lossy(r).contains(raw.as_str()));
    }
    // h1 takes the key: its grant is among the records.
    let from_h0 = sim.link(1, 0).expect("h1 is connected to h0");
    let AdminKey::Granted(ca, admin) = sim.hosts[1]
        .core()
        .check_admin_key(from_h0, &key, &records, now)
        .expect("taken")
    else {
        panic!("a grant")
    };
    assert_eq!(admin.slot, Some(1));
    assert_eq!(
        admin.blocks.unwrap() & sim.hosts[0].core().admin.as_ref().unwrap().blocks.unwrap(),
        0
    );
    sim.hosts[1].core().become_admin(ca, admin, now);
    assert!(sim.hosts[1].core().is_admin());
    // Sent again: nothing new.
    assert!(matches!(
        sim.hosts[1]
            .core()
            .check_admin_key(from_h0, &key, &records, now)
            .unwrap(),
        AdminKey::Held
    ));
    // A member that is no admin cannot add or remove one.
    assert_eq!(
        sim.hosts[2]
            .core()
            .grant_admin("h2", now)
            .unwrap_err()
            .status(),
        409
    );
    assert_eq!(
        sim.hosts[2].core().retire_admin("h1").unwrap_err().status(),
        409
    );
    // h0 removes h1: h1 forgets the key when the record reaches it.
    let change = sim.hosts[0]
        .core()
        .retire_admin("h1")
        .expect("a retirement");
    assert!(sim.hosts[0].core().commit_admins(change, now).is_none());
    let records = sim.hosts[0].core().admin_records();
    while sim.hosts[1].core().poll_action().is_some() {}
    sim.hosts[1].core().handle_admin_records(&records, now);
    assert!(!sim.hosts[1].core().is_admin());
    let mut dropped = false;
    while let Some(action) = sim.hosts[1].core().poll_action() {
        dropped |= matches!(action, Action::DropAdmin);
    }
    assert!(dropped, "the driver is told to destroy the key");
    // A removed admin's record is final: removing again is a conflict.
    assert_eq!(
        sim.hosts[0].core().retire_admin("h1").unwrap_err().status(),
        409
    );
}

/// A token made on h0 names both admins, its record reaches h1 (an admin) and no member
/// that is not one; h1 redeems it with h0 down, and h0 refuses it once h1's used record
/// came.
#[test]
fn a_token_made_on_one_admin_is_redeemed_at_the_other() {
    use super::sim::{Keys, control_addr};
    use keys::{JoinClaim, JoinProof, JoinToken, Name};
    use protocol::api::TokenRequest;

    let mut sim = converged(3);
    let now = sim.now();
    let change = sim.hosts[0].core().grant_admin("h1", now).expect("a grant");
    let (_, key, records) = sim.hosts[0].core().commit_admins(change, now).unwrap();
    let from_h0 = sim.link(1, 0).unwrap();
    let AdminKey::Granted(ca, admin) = sim.hosts[1]
        .core()
        .check_admin_key(from_h0, &key, &records, now)
        .unwrap()
    else {
        panic!("a grant")
    };
    sim.hosts[1].core().become_admin(ca, admin, now);
    // h0 makes a token: h0 first, then h1.
    let request = TokenRequest {
        ttl_s: 600,
        groups: vec!["web".into()],
    };
    let change = sim.hosts[0].core().create_token(request, now).unwrap();
    let token: JoinToken = sim.hosts[0].core().commit(change).token.parse().unwrap();
    assert_eq!(token.endpoints(), [control_addr(0), control_addr(1)]);
    // Its record goes to h1, not to h2 (no admin).
    let (to_h1, to_h2) = (sim.link(0, 1).unwrap(), sim.link(0, 2).unwrap());
    let tokens = |records: Vec<Vec<u8>>| {
        records
            .into_iter()
            .filter(|r| crate::control::admins::tokens::is_token_record(r))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        tokens(sim.hosts[0].core().admin_records_for(to_h2, now)).len(),
        0
    );
    let shared = tokens(sim.hosts[0].core().admin_records_for(to_h1, now));
    assert_eq!(shared.len(), 1);
    let record = sim.hosts[0]
        .core()
        .token_record(&token.secret_hash())
        .unwrap();
    assert_eq!(shared, std::slice::from_ref(&record));
    // h2 (no admin) takes nothing from it.
    let from_h0_at_h2 = sim.link(2, 0).unwrap();
    let answer = sim.hosts[2].core().handle_request(
        Origin::Member(from_h0_at_h2),
        Request::Admins(vec![record.clone()]),
        now,
    );
    assert!(
        matches!(answer, Answer::Reply(Response::Admins(_))),
        "{answer:?}"
    );
    // h1 takes it once saved.
    let answer = sim.hosts[1].core().handle_request(
        Origin::Member(from_h0),
        Request::Admins(vec![record]),
        now,
    );
    let Answer::AfterSave(change) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(change.admin().tokens.len(), 1);
    let _ = sim.hosts[1].core().commit(change);
    // A host joins through h1 (h0 down).
    let keys = Keys::new(3);
    let name = Name::new("h3").unwrap();
    let h1_cert = sim.hosts[1].core().certificate().clone();
    let claim = JoinClaim {
        network: token.network(),
        ca: token.ca_fingerprint(),
        secret: token.secret(),
        name: &name,
        control_key: &keys.control.verifying_key(),
        subnet: None,
    };
    let proof = JoinProof::prove(&claim, &keys.wireguard, &h1_cert.wireguard_key)
        .unwrap()
        .to_bytes();
    let join = Request::Join {
        secret: *token.secret().as_bytes(),
        name: name.clone(),
        wireguard_key: keys.wireguard.public_key(),
        control_key: keys.control.verifying_key(),
        subnet: None,
        proof,
    };
    let answer = sim.hosts[1]
        .core()
        .handle_request(Origin::Joiner, join.clone(), now);
    let Answer::AfterSave(change) = answer else {
        panic!("{answer:?}")
    };
    let admission = sim.hosts[1].core().commit(change);
    assert!(matches!(admission.response, Response::Joined { .. }));
    let used = sim.hosts[1].core().used_token_records(&name);
    assert_eq!(used.len(), 1);
    // h0 is back and takes h1's used record: the token is refused there.
    let from_h1 = sim.link(0, 1).unwrap();
    let answer =
        sim.hosts[0]
            .core()
            .handle_request(Origin::Member(from_h1), Request::Admins(used), now);
    let Answer::AfterSave(change) = answer else {
        panic!("{answer:?}")
    };
    let _ = sim.hosts[0].core().commit(change);
    let answer = sim.hosts[0]
        .core()
        .handle_request(Origin::Joiner, join, now);
    let Answer::Reply(Response::Refused(why)) = answer else {
        panic!("{answer:?}")
    };
    assert!(why.contains("already used (by h3)"), "{why}");
}

/// A CA rotation on h0 with a second admin h1: h1 takes the new CA key only once it holds
/// the transition, keeps its slot and blocks, and refuses any other key; a member that is
/// no admin is never offered the key and refuses it.
#[test]
fn a_second_admin_takes_the_new_ca_key_only_with_its_transition() {
    let mut sim = converged(3);
    let now = sim.now();
    let change = sim.hosts[0].core().grant_admin("h1", now).expect("a grant");
    let (_, key, records) = sim.hosts[0].core().commit_admins(change, now).unwrap();
    let from_h0 = sim.link(1, 0).unwrap();
    let AdminKey::Granted(ca, admin) = sim.hosts[1]
        .core()
        .check_admin_key(from_h0, &key, &records, now)
        .unwrap()
    else {
        panic!("a grant")
    };
    let (slot, blocks) = (admin.slot, admin.blocks);
    sim.hosts[1].core().become_admin(ca, admin, now);
    let old = sim.network.ca.verifying_key();

    let rotation = sim.hosts[0].core().prepare_ca_rotation(60, now).unwrap();
    let new = rotation.key().verifying_key();
    let new_b64 = rotation.key().signing_key().to_base64().to_string();
    // Before h1 holds the transition, the new key is refused.
    let e = sim.hosts[1]
        .core()
        .check_admin_key(from_h0, &new_b64, &records, now)
        .unwrap_err();
    assert!(e.0.contains("not this network's CA key"), "{e}");
    sim.hosts[0]
        .core()
        .commit_ca_rotation(rotation, now)
        .unwrap();
    let (links, bundle, key, records) = sim.hosts[0]
        .core()
        .ca_key_handoff(None, now)
        .expect("a handoff");
    // At a full sync with h1 during the transition: offered again; never to h2.
    let (to_h1, to_h2) = (sim.link(0, 1), sim.link(0, 2));
    assert!(sim.hosts[0].core().ca_key_handoff(to_h1, now).is_some());
    assert!(sim.hosts[0].core().ca_key_handoff(to_h2, now).is_none());
    // Only h1, the other admin, is offered the key.
    assert_eq!(links, vec![sim.link(0, 1).unwrap()]);
    assert_eq!(key, new_b64);
    // The admin records are signed by the new CA now.
    let mut list = crate::control::admins::AdminList::default();
    let (changed, refused) = list.apply_all(&records, &new, &sim.network.name);
    assert!(changed && refused.is_empty(), "{refused:?}");
    // h1 gets the transition, then the key.
    sim.hosts[1]
        .core()
        .handle_request(Origin::Member(from_h0), Request::Push(bundle.clone()), now);
    assert_eq!(sim.hosts[1].core().network().ca, new);
    // A key that is neither CA of the transition: refused; the old one is no longer the
    // network's: refused too.
    let unrelated = SigningKey::generate().to_base64().to_string();
    for k in [
        unrelated,
        sim.network.ca.signing_key().to_base64().to_string(),
    ] {
        let e = sim.hosts[1]
            .core()
            .check_admin_key(from_h0, &k, &records, now)
            .unwrap_err();
        assert!(e.0.contains("not this network's CA key"), "{e}");
    }
    let AdminKey::Rotated(ca) = sim.hosts[1]
        .core()
        .check_admin_key(from_h0, &key, &records, now)
        .expect("taken")
    else {
        panic!("a rotation")
    };
    sim.hosts[1].core().install_ca_key(ca).unwrap();
    let h1 = sim.hosts[1].core();
    assert_eq!(h1.ca_key.as_ref().map(CaKey::verifying_key), Some(new));
    let admin = h1.admin.as_ref().unwrap();
    assert_eq!(
        (admin.slot, admin.blocks),
        (slot, blocks),
        "its state is kept"
    );
    // Sent again: held.
    assert!(matches!(
        sim.hosts[1]
            .core()
            .check_admin_key(from_h0, &key, &records, now)
            .unwrap(),
        AdminKey::Held
    ));
    // h2, no admin, holding the transition: no record names it, so refused.
    let from_h0_at_h2 = sim.link(2, 0).unwrap();
    sim.hosts[2]
        .core()
        .handle_request(Origin::Member(from_h0_at_h2), Request::Push(bundle), now);
    let e = sim.hosts[2]
        .core()
        .check_admin_key(from_h0_at_h2, &key, &records, now)
        .unwrap_err();
    assert!(e.0.contains("no admin record names this host"), "{e}");
    assert!(!sim.hosts[2].core().is_admin());
    // During the transition a record of the old CA is still taken; the old CA is `old`.
    assert_ne!(old, new);
}
