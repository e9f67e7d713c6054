//! Tests of the admin records and of two admins issuing at once.

use std::collections::HashSet;

use keys::{JoinProof, PrivateKey, SigningKey};
use protocol::records::Directory;

use super::*;
use crate::control::admin::{Issuer, JoinAsk};

const NOW: u64 = 1_800_000_000;

fn network() -> Name {
    Name::new("testnet").unwrap()
}

fn record(node: &str, slot: u8, blocks: u64, version: u64) -> AdminRecord {
    AdminRecord {
        network: network(),
        node: Name::new(node).unwrap(),
        number: u32::from(slot) + 1,
        slot,
        serial_floor: 100,
        blocks,
        version,
        retired: false,
    }
}

#[test]
fn records_round_trip_and_only_the_ca_signs_them() {
    let ca = CaKey::generate();
    let r = record("h2", 1, 0xf0, 1);
    let bytes = r.sign(&ca);
    assert!(bytes.len() <= MAX_SIGNED_LEN);
    assert_eq!(
        AdminRecord::verify(&bytes, &ca.verifying_key(), &network()).unwrap(),
        r
    );
    // A member's own key (any key but the CA's) makes a record nobody takes.
    let forged = r.sign(&CaKey::from_signing_key(SigningKey::generate()));
    let mut list = AdminList::default();
    assert!(matches!(
        list.apply(&forged, &ca.verifying_key(), &network()),
        Err(AdminError::Untrusted(_))
    ));
    // A flipped bit anywhere: refused, never a panic.
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x40;
        assert!(list.apply(&b, &ca.verifying_key(), &network()).is_err());
    }
    assert!(list.is_empty());
    assert!(list.apply(&bytes, &ca.verifying_key(), &network()).unwrap());
    assert!(!list.apply(&bytes, &ca.verifying_key(), &network()).unwrap());
}

#[test]
fn slots_and_blocks_are_never_shared() {
    let ca = CaKey::generate();
    let (key, net) = (ca.verifying_key(), network());
    let mut list = AdminList::default();
    list.apply(&record("h1", 0, 0x0f, 1).sign(&ca), &key, &net)
        .unwrap();
    // Another admin on slot 0, or holding a block of h1's: refused.
    assert!(matches!(
        list.apply(&record("h2", 0, 0xf0, 1).sign(&ca), &key, &net),
        Err(AdminError::Slot { .. })
    ));
    assert!(matches!(
        list.apply(&record("h2", 1, 0x18, 1).sign(&ca), &key, &net),
        Err(AdminError::Blocks { .. })
    ));
    // Once h1's record gives the block up, it may be another's.
    list.apply(&record("h1", 0, 0x07, 2).sign(&ca), &key, &net)
        .unwrap();
    assert!(
        list.apply(&record("h2", 1, 0x18, 1).sign(&ca), &key, &net)
            .unwrap()
    );
    // Out of order in one batch (the taker's record before the giver's): both taken.
    let mut fresh = AdminList::default();
    fresh
        .apply(&record("h1", 0, 0x0f, 1).sign(&ca), &key, &net)
        .unwrap();
    let batch = [
        record("h2", 1, 0x18, 1).sign(&ca),
        record("h1", 0, 0x07, 2).sign(&ca),
    ];
    let (changed, refused) = fresh.apply_all(&batch, &key, &net);
    assert!(changed && refused.is_empty(), "{refused:?}");
    assert_eq!(fresh, list);
    // An older record changes nothing.
    assert!(
        !list
            .apply(&record("h1", 0, 0x0f, 1).sign(&ca), &key, &net)
            .unwrap()
    );
    assert_eq!(list.free_slot(), Some(2));
    // A retired admin's slot is never free again.
    let mut gone = record("h2", 1, 0x18, 2);
    gone.retired = true;
    list.apply(&gone.sign(&ca), &key, &net).unwrap();
    assert_eq!(list.free_slot(), Some(2));
}

#[test]
fn serials_stay_in_their_slot() {
    let mut admin = AdminState::default();
    assert_eq!(serial_from(&admin, 7), Some(7), "one admin: as before");
    admin.slot = Some(3);
    assert_eq!(serial_from(&admin, 7), Some(67));
    assert_eq!(serial_from(&admin, 3), Some(3));
    assert_eq!(serial_from(&admin, 64), Some(67));
    assert_eq!(serial_from(&admin, 68), Some(131));
    assert_eq!(serial_from(&admin, u64::MAX), None);
}

#[test]
fn blocks_cut_the_range_evenly() {
    let cidr: IpNet = "10.42.0.0/16".parse().unwrap();
    assert_eq!(block_bits(cidr, 24), 6);
    assert_eq!(all_blocks(cidr, 24), u64::MAX);
    assert_eq!(block_of(cidr, 24, "10.42.0.0/24".parse().unwrap()), Some(0));
    assert_eq!(block_of(cidr, 24, "10.42.3.0/24".parse().unwrap()), Some(0));
    assert_eq!(block_of(cidr, 24, "10.42.4.0/24".parse().unwrap()), Some(1));
    assert_eq!(
        block_of(cidr, 24, "10.42.255.0/24".parse().unwrap()),
        Some(63)
    );
    assert_eq!(block_of(cidr, 24, "10.43.0.0/24".parse().unwrap()), None);
    // Fewer subnets than 64: one block each.
    let small: IpNet = "10.42.0.0/24".parse().unwrap();
    assert_eq!(block_bits(small, 28), 4);
    assert_eq!(all_blocks(small, 28), 0xffff);
    assert_eq!(
        block_of(small, 28, "10.42.0.48/28".parse().unwrap()),
        Some(3)
    );
    let v6: IpNet = "fd00::/48".parse().unwrap();
    assert_eq!(
        block_of(v6, 64, "fd00:0:0:ffff::/64".parse().unwrap()),
        Some(63)
    );
}

/// One of two admins: its own directory (it sees none of the other's admissions: the
/// worst case, both at once), its own WireGuard key.
struct Admin {
    state: AdminState,
    dir: Directory,
    wireguard: PrivateKey,
}

fn issuer<'a>(ca: &'a CaKey, network: &'a Name) -> Issuer<'a> {
    Issuer {
        ca,
        network,
        cidr: "10.42.0.0/16".parse().unwrap(),
        ranges: &[],
        subnet_prefix: 24,
        certificate_lifetime_s: 86_400,
    }
}

fn admit(
    ca: &CaKey,
    net: &Name,
    admin: &mut Admin,
    name: &str,
    subnet: Option<&str>,
) -> Result<keys::NodeCertificate, crate::control::admin::Refused> {
    let issuer = issuer(ca, net);
    let token = issuer
        .create_token(
            &mut admin.state,
            vec!["198.18.0.11:51821".parse().unwrap()],
            600,
            vec![],
            NOW,
        )
        .unwrap();
    let host = PrivateKey::generate();
    let control = SigningKey::generate();
    let mut ask = JoinAsk {
        secret: token.secret().clone(),
        name: Name::new(name).unwrap(),
        wireguard_key: host.public_key(),
        control_key: control.verifying_key(),
        subnet: subnet.map(|s| s.parse().unwrap()),
        proof: JoinProof::from_bytes([0; keys::PROOF_LEN]),
    };
    ask.proof = JoinProof::prove(
        &ask.claim(net, ca.fingerprint()),
        &host,
        &admin.wireguard.public_key(),
    )
    .unwrap();
    let signed = issuer.admit(&mut admin.state, &admin.dir, &ask, &admin.wireguard, NOW)?;
    Ok(signed.verify(&ca.verifying_key(), NOW).unwrap())
}

/// The promise: two admins admitting at once, neither seeing the other's members,
/// never issue the same serial (nor member number) or subnet. The first admin issued
/// serials 1..=5 alone before the second existed.
#[test]
fn two_admins_admitting_at_once_never_collide() {
    let ca = CaKey::generate();
    let net = network();
    let mut a = Admin {
        state: AdminState {
            next_serial: 1,
            ..AdminState::default()
        },
        dir: Directory::new(ca.verifying_key(), net.clone()),
        wireguard: PrivateKey::generate(),
    };
    let mut before = Vec::new();
    for i in 0..5 {
        before.push(admit(&ca, &net, &mut a, &format!("old{i}"), None).unwrap());
    }
    // The grant: A keeps slot 0 and the lower half of the blocks, B gets slot 1, the
    // upper half, and a floor above every serial A issued.
    let all = all_blocks("10.42.0.0/16".parse().unwrap(), 24);
    a.state.slot = Some(0);
    a.state.blocks = Some(all & 0x0000_0000_ffff_ffff);
    let mut b = Admin {
        state: AdminState {
            next_serial: a.state.next_serial,
            slot: Some(1),
            blocks: Some(all & 0xffff_ffff_0000_0000),
            ..AdminState::default()
        },
        dir: Directory::new(ca.verifying_key(), net.clone()),
        wireguard: PrivateKey::generate(),
    };
    let mut certs = before;
    for i in 0..60 {
        certs.push(admit(&ca, &net, &mut a, &format!("a{i}"), None).unwrap());
        certs.push(admit(&ca, &net, &mut b, &format!("b{i}"), None).unwrap());
    }
    let serials: HashSet<u64> = certs.iter().map(|c| c.serial).collect();
    let numbers: HashSet<u32> = certs.iter().map(|c| c.number).collect();
    let subnets: HashSet<IpNet> = certs.iter().map(|c| c.subnets[0]).collect();
    assert_eq!(serials.len(), certs.len(), "a serial issued twice");
    assert_eq!(numbers.len(), certs.len(), "a number issued twice");
    assert_eq!(subnets.len(), certs.len(), "a subnet issued twice");
    for c in &certs[5..] {
        let block = block_of("10.42.0.0/16".parse().unwrap(), 24, c.subnets[0]).unwrap();
        let mine = if c.node.as_str().starts_with('a') {
            (a.state.blocks.unwrap(), 0)
        } else {
            (b.state.blocks.unwrap(), 1)
        };
        assert!(
            mine.0 & (1 << block) != 0,
            "{} outside its admin's blocks",
            c.node
        );
        assert_eq!(c.serial % u64::from(SLOTS), mine.1, "{}", c.node);
    }
    // An admin never gives a subnet outside its blocks, even asked for one.
    let e = admit(&ca, &net, &mut b, "asks", Some("10.42.9.0/24")).unwrap_err();
    assert!(e.0.contains("another admin"), "{e}");
    // Renewals keep to the slot too, and rise.
    let first_b = certs.iter().find(|c| c.node.as_str() == "b0").unwrap();
    let renewed = issuer(&ca, &net)
        .reissue(&mut b.state, &b.dir, first_b, None, NOW)
        .unwrap()
        .verify(&ca.verifying_key(), NOW)
        .unwrap();
    assert_eq!(renewed.serial % 64, 1);
    assert!(renewed.serial > first_b.serial);
    assert!(!serials.contains(&renewed.serial));
}

/// A token is redeemed only by an admin that holds its record: one that has not received
/// it answers that it never issued it (`tokens` has the records that travel between them).
#[test]
fn a_token_is_redeemed_only_where_its_record_is() {
    let ca = CaKey::generate();
    let net = network();
    let mut a = Admin {
        state: AdminState::default(),
        dir: Directory::new(ca.verifying_key(), net.clone()),
        wireguard: PrivateKey::generate(),
    };
    let mut b = Admin {
        state: AdminState {
            slot: Some(1),
            blocks: Some(0xff00),
            ..AdminState::default()
        },
        dir: Directory::new(ca.verifying_key(), net.clone()),
        wireguard: PrivateKey::generate(),
    };
    let token = issuer(&ca, &net)
        .create_token(
            &mut a.state,
            vec!["198.18.0.11:51821".parse().unwrap()],
            600,
            vec![],
            NOW,
        )
        .unwrap();
    let host = PrivateKey::generate();
    let control = SigningKey::generate();
    let ask = |admin: &Admin| {
        let mut ask = JoinAsk {
            secret: token.secret().clone(),
            name: Name::new("new").unwrap(),
            wireguard_key: host.public_key(),
            control_key: control.verifying_key(),
            subnet: None,
            proof: JoinProof::from_bytes([0; keys::PROOF_LEN]),
        };
        ask.proof = JoinProof::prove(
            &ask.claim(&net, ca.fingerprint()),
            &host,
            &admin.wireguard.public_key(),
        )
        .unwrap();
        ask
    };
    let at_b = ask(&b);
    let e = issuer(&ca, &net)
        .admit(&mut b.state, &b.dir, &at_b, &b.wireguard, NOW)
        .unwrap_err();
    assert!(e.0.contains("never issued that token"), "{e}");
    let at_a = ask(&a);
    issuer(&ca, &net)
        .admit(&mut a.state, &a.dir, &at_a, &a.wireguard, NOW)
        .unwrap();
    let e = issuer(&ca, &net)
        .admit(&mut a.state, &a.dir, &at_a, &a.wireguard, NOW)
        .unwrap_err();
    assert!(e.0.contains("already used"), "{e}");
}

/// A state directory from before there could be more than one admin loads as a network
/// with one admin; `admins.json` round-trips, 0600.
#[test]
fn old_state_loads_and_admin_records_round_trip() {
    use std::os::unix::fs::PermissionsExt;
    let old = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/state-before-renewal/h1/state");
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&old).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            let to = tmp.path().join(entry.file_name());
            std::fs::copy(entry.path(), &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let dir = crate::control::state::StateDir::open(tmp.path()).unwrap();
    assert!(dir.admins().unwrap().is_empty());
    assert!(
        dir.ca_key().unwrap().is_some(),
        "h1 of the fixture is its admin"
    );
    let admin = dir.admin().unwrap();
    assert!(admin.next_serial > 1, "{admin:?}");
    assert_eq!((admin.slot, admin.blocks), (None, None));
    let ca = CaKey::generate();
    let records = vec![
        record("h1", 0, 1, 1).sign(&ca),
        record("h2", 1, 2, 1).sign(&ca),
    ];
    dir.save_admins(records.clone()).unwrap();
    assert_eq!(dir.admins().unwrap(), records);
    let mode = std::fs::metadata(tmp.path().join("admins.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    dir.install_ca_key(&ca).unwrap();
    let mode = std::fs::metadata(tmp.path().join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        dir.ca_key().unwrap().unwrap().verifying_key(),
        ca.verifying_key()
    );
    dir.drop_ca_key().unwrap();
    assert!(dir.ca_key().unwrap().is_none());
    std::fs::write(tmp.path().join("admins.json"), "{\"records\": [\"zz\"]}").unwrap();
    let e = format!("{:#}", dir.admins().unwrap_err());
    assert!(e.contains("admins.json is damaged"), "{e}");
}

/// During a CA transition records of either CA are taken, of no third; signed again by the
/// new CA they replace the old ones; at the end those of the old CA still held are dropped.
#[test]
fn records_of_either_ca_during_a_transition_then_only_the_new_ones() {
    let (old, new, other) = (CaKey::generate(), CaKey::generate(), CaKey::generate());
    let both = [new.verifying_key(), old.verifying_key()];
    let mut list = AdminList::default();
    let (a, b) = (record("h1", 0, 0x0f, 1), record("h2", 1, 0xf0, 1));
    assert!(
        list.apply_trusting(&a.sign(&old), &both, &network())
            .unwrap()
    );
    assert!(
        list.apply_trusting(&b.sign(&new), &both, &network())
            .unwrap()
    );
    let third = record("h3", 2, 0xf00, 1).sign(&other);
    assert!(matches!(
        list.apply_trusting(&third, &both, &network()),
        Err(AdminError::Untrusted(_))
    ));
    // The end: h1's record is still of the old CA: dropped.
    let mut ended = list.clone();
    assert!(ended.keep_signed_by(&new.verifying_key(), &network()));
    assert!(ended.get(&Name::new("h1").unwrap()).is_none());
    assert!(ended.get(&Name::new("h2").unwrap()).is_some());
    // Signed again by the new CA (version up): a member takes them over the old ones.
    let mut resigned = list.clone();
    resigned.resign(&new);
    let mut member = AdminList::default();
    member.apply_all(&[a.sign(&old)], &old.verifying_key(), &network());
    let (changed, refused) = member.apply_all_trusting(&resigned.to_bytes(), &both, &network());
    assert!(changed && refused.is_empty(), "{refused:?}");
    assert!(!member.keep_signed_by(&new.verifying_key(), &network()));
    assert_eq!(member.get(&Name::new("h1").unwrap()).unwrap().version, 2);
}
