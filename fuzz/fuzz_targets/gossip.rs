//! SWIM datagrams (foca's postcard encoding) as a member receives them on its QUIC
//! connections, with the records piggy-backed on them applied to a directory.
//!
//! The member task (overlayd/src/control/node/mod.rs) decodes the header first (the sender
//! must be the connection's member), then hands the datagram to `Foca::handle_data`, whose
//! broadcast handler (`node::gossip::RecordHandler`) reads each item's tag, decodes the
//! record and applies it through the directory. `RecordHandler` cannot be built outside
//! its module, so [`Handler`] here does what it does with the same public functions.
//!
//! The input is a sequence of datagrams (two-byte length each), handed to one foca
//! instance (node 1) in order; the timers foca asks for run after each, a bounded number.
//!
//! Checked: nothing panics; every record the directory accepted is genuine; live members
//! never overlap nor share a key.
#![no_main]

use std::cell::RefCell;
use std::rc::Rc;

use foca::{AccumulatingRuntime, BroadcastHandler, Foca, Invalidates, PostcardCodec};
use keys::Name;
use libfuzzer_sys::fuzz_target;
use overlay_fuzz::{NOW, assert_directory_invariants, assert_genuine, fixture, long_chunks};
use protocol::membership::NodeId;
use protocol::records::{Applied, Directory, SignedMemberRecord, SignedRevocation};
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;

/// The daemon's tags (`gossip::TAG_MEMBER`, `TAG_REVOCATION`).
const TAG_MEMBER: u8 = 0;
const TAG_REVOCATION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    tag: u8,
    name: Name,
    serial: u64,
    version: u64,
}

impl Invalidates for Key {
    fn invalidates(&self, other: &Self) -> bool {
        self.tag == other.tag
            && self.name == other.name
            && (self.serial, self.version) >= (other.serial, other.version)
    }
}

/// Holds the directory it applies to; the target keeps a second handle to check it.
struct Handler {
    dir: Rc<RefCell<Directory>>,
}

fn item_key(data: &[u8]) -> Option<Key> {
    let (&tag, rest) = data.split_first()?;
    match tag {
        TAG_MEMBER => {
            let r = SignedMemberRecord::from_bytes(rest).ok()?;
            let cert = r.record().certificate.unverified_body().ok()?;
            Some(Key {
                tag,
                name: cert.node,
                serial: cert.serial,
                version: r.record().version,
            })
        }
        TAG_REVOCATION => {
            let r = SignedRevocation::from_bytes(rest).ok()?;
            Some(Key {
                tag,
                name: r.revocation().node.clone(),
                serial: r.revocation().serial,
                version: 0,
            })
        }
        _ => None,
    }
}

impl BroadcastHandler<NodeId> for Handler {
    type Key = Key;
    type Error = std::convert::Infallible;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeId>,
    ) -> Result<Option<Key>, Self::Error> {
        let Some(key) = item_key(data) else {
            return Ok(None);
        };
        let (tag, rest) = (data[0], &data[1..]);
        let mut dir = self.dir.borrow_mut();
        let before = dir.clone();
        let applied = if tag == TAG_MEMBER {
            dir.apply_member_bytes(rest, NOW)
        } else {
            dir.apply_revocation_bytes(rest)
        };
        match applied {
            Ok(Applied::Unchanged) | Err(_) => {
                assert_eq!(
                    *dir, before,
                    "a refused or known record changed the directory"
                );
                Ok(None)
            }
            Ok(_) => {
                if tag == TAG_MEMBER {
                    let signed = SignedMemberRecord::from_bytes(rest).expect("it decoded once");
                    assert_genuine(&dir, &signed, NOW);
                }
                assert_directory_invariants(&dir);
                Ok(Some(key))
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = Rc::new(RefCell::new(fixture().directory()));
    let config = protocol::membership::Config::lan(16)
        .to_foca()
        .expect("the LAN profile is valid");
    let mut foca = Foca::with_custom_broadcast(
        NodeId::new(1),
        config,
        Pcg64Mcg::seed_from_u64(7),
        PostcardCodec,
        Handler { dir: dir.clone() },
    );
    let mut rt = AccumulatingRuntime::new();
    for datagram in long_chunks(data) {
        if foca::Codec::<NodeId>::decode_header(&mut PostcardCodec, datagram).is_err() {
            continue; // the member task drops it here
        }
        let _ = foca.handle_data(datagram, &mut rt);
        let mut timers = 0;
        while let Some((_, timer)) = rt.to_schedule() {
            timers += 1;
            if timers > 16 {
                break;
            }
            let _ = foca.handle_timer(timer, &mut rt);
        }
        while rt.to_send().is_some() {}
        while rt.to_notify().is_some() {}
    }
    assert_directory_invariants(&dir.borrow());
});
