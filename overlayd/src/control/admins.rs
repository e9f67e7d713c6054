//! More than one admin, without I/O: the admin records (who holds the CA key, and what
//! part of the serial and subnet space each may issue from), their encoding and checks,
//! and the rules that keep two admins from ever issuing the same serial or subnet.
//!
//! An admin record is signed by the network's CA key, so only a holder of that key (an
//! admin) can make one. Records are kept in `admins.json` and exchanged between members
//! (`Request::Admins`, at every full sync and at once when one changes), so every member
//! knows the admins. A network with one admin has no record at all: the first
//! `overlayctl admin add` makes one for the admin that runs it (slot 0, every block) and one
//! for the new admin.
//!
//! - **Serials.** Each admin has a slot `s` in `0..SLOTS` and issues only serials `≡ s (mod
//!   SLOTS)`, at or above its record's `serial_floor` (above every serial the granting
//!   admin knew of: the serials of a network's single-admin years are below every floor).
//!   Two admins never issue the same serial, so neither the same member number. Slots are
//!   never reused, not even a retired admin's (what it issued unseen would clash): a
//!   network has at most [`SLOTS`] admins over its life.
//! - **Subnets.** The main range is cut into at most 64 blocks of equal size
//!   ([`block_of`]); an admin allocates only inside the blocks its record holds. A block
//!   changes hands only by a record of its holder: at `admin add`, the granting admin gives
//!   the new admin half of its blocks that hold no member, signing its own record without
//!   them first. The new admin gets the records with the key and allocates nothing before.
//!   So no block is ever held by two admins, and no subnet issued twice. A retired admin's
//!   blocks are not handed out again (it may still allocate until it sees its retirement).

use std::collections::BTreeMap;

use ipnet::IpNet;
use keys::wire::{Reader, Writer};
use keys::{CaKey, Fingerprint, Name, Signature, VerifyingKey};

use super::state::AdminState;

/// The number of serial slots, hence the most admins a network has over its life.
pub const SLOTS: u8 = 64;
/// The most blocks a range is cut into (one bit each in [`AdminRecord::blocks`]).
pub const MAX_BLOCKS: u32 = 64;
/// The signing context of admin records.
pub const ADMIN_RECORD_CONTEXT: &str = "overlay admin record v1";
/// The most admin records a member keeps (one per slot).
pub const MAX_RECORDS: usize = SLOTS as usize;

const FORMAT_VERSION: u8 = 1;
const MAX_BODY_LEN: usize = 1 + 32 + 2 * 64 + 4 + 1 + 8 + 8 + 8 + 1 + 16;
/// The longest signed record in bytes.
pub const MAX_SIGNED_LEN: usize = 2 + MAX_BODY_LEN + 64;

/// One admin, as the CA signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRecord {
    /// The network.
    pub network: Name,
    /// The admin member's node name.
    pub node: Name,
    /// Its member number (its certificate's).
    pub number: u32,
    /// Its serial slot: it issues only serials `≡ slot (mod SLOTS)`.
    pub slot: u8,
    /// The least serial it may issue.
    pub serial_floor: u64,
    /// The blocks of the main range it allocates subnets in, one bit each.
    pub blocks: u64,
    /// A higher version replaces the record.
    pub version: u64,
    /// Removed (`overlayctl admin remove`): it holds the CA key no more; final.
    pub retired: bool,
}

/// Why an admin record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// Not readable.
    #[error("malformed admin record: {0}")]
    Malformed(String),
    /// Not signed by this network's CA.
    #[error("admin record of {0} not signed by this network's CA")]
    Untrusted(Name),
    /// For another network.
    #[error("admin record of {0} is for another network")]
    OtherNetwork(Name),
    /// Its slot is another admin's, or out of range.
    #[error("admin record of {node} takes slot {slot}, which is {why}")]
    Slot {
        /// The admin.
        node: Name,
        /// The slot.
        slot: u8,
        /// Why it cannot be.
        why: String,
    },
    /// Its blocks overlap another admin's.
    #[error("admin record of {node} holds blocks of {other}")]
    Blocks {
        /// The admin.
        node: Name,
        /// The other admin.
        other: Name,
    },
    /// Too many records.
    #[error("more than {MAX_RECORDS} admin records")]
    Full,
}

impl AdminRecord {
    fn encode(&self, ca: &Fingerprint) -> Vec<u8> {
        let mut w = Writer::with_capacity(MAX_BODY_LEN);
        w.u8(FORMAT_VERSION);
        w.bytes(ca.as_bytes());
        w.name(&self.network);
        w.name(&self.node);
        w.u32(self.number);
        w.u8(self.slot);
        w.u64(self.serial_floor);
        w.u64(self.blocks);
        w.u64(self.version);
        w.u8(u8::from(self.retired));
        w.finish_plain()
    }

    fn decode(body: &[u8]) -> Result<(Fingerprint, AdminRecord), AdminError> {
        let bad = |e: keys::wire::WireError| AdminError::Malformed(format!("{e:?}"));
        let mut r = Reader::new(body);
        let version = r.u8("format version").map_err(bad)?;
        if version != FORMAT_VERSION {
            return Err(AdminError::Malformed(format!("format {version}")));
        }
        let ca = Fingerprint::from_bytes(r.array("CA fingerprint").map_err(bad)?);
        let record = AdminRecord {
            network: r.name("network").map_err(bad)?,
            node: r.name("node").map_err(bad)?,
            number: r.u32("number").map_err(bad)?,
            slot: r.u8("slot").map_err(bad)?,
            serial_floor: r.u64("serial floor").map_err(bad)?,
            blocks: r.u64("blocks").map_err(bad)?,
            version: r.u64("version").map_err(bad)?,
            retired: match r.u8("retired").map_err(bad)? {
                0 => false,
                1 => true,
                n => return Err(AdminError::Malformed(format!("retired = {n}"))),
            },
        };
        r.finish().map_err(bad)?;
        Ok((ca, record))
    }

    /// Signs it with the CA: `body length u16 | body | signature`.
    pub fn sign(&self, ca: &CaKey) -> Vec<u8> {
        let body = self.encode(&ca.fingerprint());
        let signature = ca.signing_key().sign(ADMIN_RECORD_CONTEXT, &body);
        let mut w = Writer::with_capacity(2 + body.len() + 64);
        // The body is at most MAX_BODY_LEN bytes.
        w.u16(body.len() as u16);
        w.bytes(&body);
        w.bytes(signature.as_bytes());
        w.finish_plain()
    }

    /// Reads and checks signed bytes: signed by `ca`, for `network`, a slot in range.
    pub fn verify(
        bytes: &[u8],
        ca: &VerifyingKey,
        network: &Name,
    ) -> Result<AdminRecord, AdminError> {
        let bad = |e: keys::wire::WireError| AdminError::Malformed(format!("{e:?}"));
        if bytes.len() > MAX_SIGNED_LEN {
            return Err(AdminError::Malformed(format!("{} bytes", bytes.len())));
        }
        let mut r = Reader::new(bytes);
        let len = r.u16("body length").map_err(bad)? as usize;
        let body = r.bytes(len, "body").map_err(bad)?;
        let signature = Signature::from_bytes(r.array("signature").map_err(bad)?);
        r.finish().map_err(bad)?;
        let (fingerprint, record) = AdminRecord::decode(body)?;
        if fingerprint != ca.fingerprint()
            || ca.verify(ADMIN_RECORD_CONTEXT, body, &signature).is_err()
        {
            return Err(AdminError::Untrusted(record.node));
        }
        if &record.network != network {
            return Err(AdminError::OtherNetwork(record.node));
        }
        if record.slot >= SLOTS {
            return Err(AdminError::Slot {
                node: record.node,
                slot: record.slot,
                why: format!("not below {SLOTS}"),
            });
        }
        Ok(record)
    }
}

/// [`AdminRecord::verify`] against each of `cas`: the first that signed it.
pub fn verify_any(
    bytes: &[u8],
    cas: &[VerifyingKey],
    network: &Name,
) -> Result<AdminRecord, AdminError> {
    let mut last = AdminError::Malformed("no CA to check it with".into());
    for ca in cas {
        match AdminRecord::verify(bytes, ca, network) {
            Ok(r) => return Ok(r),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The admin records a member knows, by admin name, with their signed bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminList {
    records: BTreeMap<Name, (AdminRecord, Vec<u8>)>,
}

impl AdminList {
    /// Takes a signed record (checked with [`AdminRecord::verify`]); `Ok(true)` if it was
    /// new. One older than or as old as the one held is ignored (`Ok(false)`). Refused when
    /// its slot is another admin's, or it holds (active) blocks another active admin holds.
    pub fn apply(
        &mut self,
        bytes: &[u8],
        ca: &VerifyingKey,
        network: &Name,
    ) -> Result<bool, AdminError> {
        self.apply_trusting(bytes, std::slice::from_ref(ca), network)
    }

    /// [`AdminList::apply`], for a record signed by any of `cas` (during a CA transition,
    /// the new CA and the retiring one).
    pub fn apply_trusting(
        &mut self,
        bytes: &[u8],
        cas: &[VerifyingKey],
        network: &Name,
    ) -> Result<bool, AdminError> {
        // The records a sync brings are mostly those held: no signature to check again.
        if self
            .records
            .values()
            .any(|(_, held)| held.as_slice() == bytes)
        {
            return Ok(false);
        }
        let record = verify_any(bytes, cas, network)?;
        if let Some((held, _)) = self.records.get(&record.node)
            && held.version >= record.version
        {
            return Ok(false);
        }
        for (other, _) in self.records.values() {
            if other.node == record.node {
                continue;
            }
            if other.slot == record.slot {
                return Err(AdminError::Slot {
                    node: record.node,
                    slot: record.slot,
                    why: format!("{}'s", other.node),
                });
            }
            if !record.retired && !other.retired && other.blocks & record.blocks != 0 {
                // A block changes hands only by a record of its holder: the giver's record
                // without it comes first (and with the grant); until it is here, refused.
                return Err(AdminError::Blocks {
                    node: record.node,
                    other: other.node.clone(),
                });
            }
        }
        if !self.records.contains_key(&record.node) && self.records.len() >= MAX_RECORDS {
            return Err(AdminError::Full);
        }
        self.records
            .insert(record.node.clone(), (record, bytes.to_vec()));
        Ok(true)
    }

    /// Takes several records ([`AdminList::apply`]) in whatever order they come: a record
    /// refused only because another in the batch must come first (the giver's record
    /// without a block before the taker's with it) is tried again once the others are in.
    /// Returns whether any was new, and the refusals left.
    pub fn apply_all(
        &mut self,
        records: &[Vec<u8>],
        ca: &VerifyingKey,
        network: &Name,
    ) -> (bool, Vec<AdminError>) {
        self.apply_all_trusting(records, std::slice::from_ref(ca), network)
    }

    /// [`AdminList::apply_all`], for records signed by any of `cas`.
    pub fn apply_all_trusting(
        &mut self,
        records: &[Vec<u8>],
        cas: &[VerifyingKey],
        network: &Name,
    ) -> (bool, Vec<AdminError>) {
        let mut changed = false;
        let mut pending: Vec<&Vec<u8>> = records.iter().take(MAX_RECORDS * 2).collect();
        loop {
            let mut refused = Vec::new();
            let mut left = Vec::new();
            for bytes in &pending {
                match self.apply_trusting(bytes, cas, network) {
                    Ok(new) => changed |= new,
                    Err(e) => {
                        refused.push(e);
                        left.push(*bytes);
                    }
                }
            }
            if left.len() == pending.len() {
                return (changed, refused);
            }
            pending = left;
        }
    }

    /// Drops every record not signed by `ca` (the old CA retired); returns whether any was.
    pub fn keep_signed_by(&mut self, ca: &VerifyingKey, network: &Name) -> bool {
        let before = self.records.len();
        self.records
            .retain(|_, (_, bytes)| AdminRecord::verify(bytes, ca, network).is_ok());
        self.records.len() != before
    }

    /// Every record signed again by `ca` (a CA rotation), each one version up.
    pub fn resign(&mut self, ca: &CaKey) {
        for (record, bytes) in self.records.values_mut() {
            record.version += 1;
            *bytes = record.sign(ca);
        }
    }

    /// Puts a record this host just signed (it checks nothing: the caller made it).
    pub fn insert_own(&mut self, record: AdminRecord, bytes: Vec<u8>) {
        self.records.insert(record.node.clone(), (record, bytes));
    }

    /// The record of admin `name`.
    pub fn get(&self, name: &Name) -> Option<&AdminRecord> {
        self.records.get(name).map(|(r, _)| r)
    }

    /// Every record.
    pub fn records(&self) -> impl Iterator<Item = &AdminRecord> {
        self.records.values().map(|(r, _)| r)
    }

    /// Every record's signed bytes.
    pub fn to_bytes(&self) -> Vec<Vec<u8>> {
        self.records.values().map(|(_, b)| b.clone()).collect()
    }

    /// Whether there is no record (a network with one admin).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The lowest slot no record (retired ones included) has taken.
    pub fn free_slot(&self) -> Option<u8> {
        (0..SLOTS).find(|s| self.records().all(|r| r.slot != *s))
    }
}

/// How many bits of a subnet's index in the main range name its block: the main range
/// `cidr` holds `2^(prefix - cidr prefix)` subnets, cut into at most [`MAX_BLOCKS`] blocks.
pub fn block_bits(cidr: IpNet, subnet_prefix: u8) -> u32 {
    let bits = u32::from(subnet_prefix.saturating_sub(cidr.prefix_len()));
    bits.min(MAX_BLOCKS.trailing_zeros())
}

/// Every block of a range, as a mask.
pub fn all_blocks(cidr: IpNet, subnet_prefix: u8) -> u64 {
    let n = 1u64 << block_bits(cidr, subnet_prefix);
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// The block of the main range `cidr` that subnet `net` (of the main range) is in.
pub fn block_of(cidr: IpNet, subnet_prefix: u8, net: IpNet) -> Option<u32> {
    if !cidr.contains(&net) {
        return None;
    }
    let host_bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
    let offset = number(net.network()) - number(cidr.network());
    // The top `block_bits` bits of the offset inside the range.
    let bits = block_bits(cidr, subnet_prefix);
    if bits == 0 {
        return Some(0);
    }
    Some((offset >> (host_bits - bits)) as u32)
}

fn number(ip: std::net::IpAddr) -> u128 {
    match ip {
        std::net::IpAddr::V4(a) => u128::from(u32::from(a)),
        std::net::IpAddr::V6(a) => u128::from(a),
    }
}

/// Whether the admin whose state is `admin` may allocate the main-range subnet `net`:
/// always with one admin (no blocks set), else only inside its blocks.
pub fn holds(admin: &AdminState, cidr: IpNet, subnet_prefix: u8, net: IpNet) -> bool {
    match admin.blocks {
        None => true,
        Some(mask) => block_of(cidr, subnet_prefix, net).is_some_and(|b| mask & (1u64 << b) != 0),
    }
}

/// The serial the admin whose state is `admin` issues next, at least `least`: the smallest
/// one `≡ slot (mod SLOTS)` at or above `least` (with one admin, `least` itself). `None`
/// when none is left.
pub fn serial_from(admin: &AdminState, least: u64) -> Option<u64> {
    let Some(slot) = admin.slot else {
        return Some(least);
    };
    let stride = u64::from(SLOTS);
    let base = least - least % stride;
    let candidate = base.checked_add(u64::from(slot))?;
    if candidate >= least {
        Some(candidate)
    } else {
        candidate.checked_add(stride)
    }
}

pub mod tokens;

#[cfg(test)]
mod tests;
