//! Name sets (`protocol::records::names`): the bytes pushes and syncs carry, applied to a
//! `NameTable` over a directory where fixture members `h1`, `h2`, `h3` are alive.
//!
//! The first byte picks the form: 0 the rest as a signed name set's bytes; 1 a genuine set
//! of a fixture member (which, version, names and addresses from the input), optionally
//! with one byte flipped (where, from the input).
//!
//! Checked: nothing panics; what decodes encodes back to the same bytes; a set the table
//! accepts is byte for byte what its member's key signs for its content (Ed25519 signatures
//! are deterministic), so nothing unsigned or changed is ever accepted, and every address
//! in it is inside that member's subnets; the cap holds.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use overlay_fuzz::{NOW, fixture};
use protocol::records::Directory;
use protocol::records::names::{NameEntry, NameSet, NameTable, SignedNameSet};

const CAP: usize = 8;

fn genuine(data: &[u8]) -> Option<Vec<u8>> {
    let f = fixture();
    let (&who, rest) = data.split_first()?;
    let member = &f.members[usize::from(who) % f.members.len()];
    let (&count, rest) = rest.split_first()?;
    let entries = rest
        .chunks(2)
        .take(usize::from(count % 12))
        .enumerate()
        .map(|(i, c)| NameEntry {
            name: format!("c{i}"),
            aliases: vec![format!("a{}", c[0] % 3)],
            address: IpAddr::V4(Ipv4Addr::new(10, 42, c[0] % 4, *c.last().unwrap_or(&2))),
            network: "ovl".into(),
            range: "10.42.0.0/16".parse().expect("a range"),
        })
        .collect();
    let mut bytes = NameSet {
        network: f.network.clone(),
        member: member.name.clone(),
        number: member.body.number,
        version: u64::from(count),
        entries,
    }
    .sign(&member.key)
    .ok()?
    .to_bytes();
    if let Some(&[at_high, at_low, flip]) = rest.last_chunk::<3>()
        && flip != 0
    {
        let at = usize::from(u16::from_be_bytes([at_high, at_low])) % bytes.len();
        bytes[at] ^= flip;
    }
    Some(bytes)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = match mode % 2 {
        0 => rest.to_vec(),
        _ => match genuine(rest) {
            Some(bytes) => bytes,
            None => return,
        },
    };
    let Ok(signed) = SignedNameSet::from_bytes(&bytes) else {
        return;
    };
    assert_eq!(
        signed.to_bytes(),
        bytes,
        "a name set changed through its bytes"
    );
    let f = fixture();
    let mut dir = Directory::new(f.ca.verifying_key(), f.network.clone());
    for i in 0..f.members.len() {
        let _ = dir.apply_member(&f.alive(i, 1), NOW);
    }
    let mut table = NameTable::default();
    if table.apply(&dir, &signed, CAP, NOW).is_err() {
        assert!(table.sets().next().is_none(), "a refused set was kept");
        return;
    }
    let set = signed.set();
    let member = f
        .members
        .iter()
        .find(|m| m.name == set.member)
        .expect("a set accepted for a member the directory holds");
    let again = set.sign(&member.key).expect("an accepted set signs");
    assert_eq!(
        again.to_bytes(),
        bytes,
        "a set accepted that its member never signed"
    );
    assert!(set.entries.len() <= CAP, "the cap did not hold");
    assert!(
        set.entries
            .iter()
            .all(|e| member.body.subnets.iter().any(|s| s.contains(&e.address))),
        "a name for an address outside its member's subnets"
    );
});
