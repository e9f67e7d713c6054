//! Container names: each member's [`NameSet`] (the names and network aliases of the
//! containers on its host, with their overlay addresses), signed by the member's own
//! Ed25519 key (the one its current certificate names) into a [`SignedNameSet`], and the
//! [`NameTable`] of the sets a daemon accepted.
//!
//! A set is one record per member, replaced as a whole by a higher version: a container
//! that goes is withdrawn by the next set, which lacks it. [`NameTable::apply`] accepts a
//! set only when, in this order (each refusal its own [`NameError`] and changing nothing):
//!
//! 1. it is for this network and names a live member of the [`Directory`] with the same
//!    member number, kept across renewals ([`NameError::UnknownMember`], [`NameError::StaleCertificate`]);
//! 2. that certificate's key signed it ([`NameError::Forged`]): a member speaks only for
//!    its own containers;
//! 3. it holds at most the cap of names ([`NameError::TooMany`]): a member with too many
//!    names is refused whole, the others are not touched;
//! 4. every address is inside one of the member's certificate subnets
//!    ([`NameError::AddressNotOwned`]): no member can point a name at another's container;
//! 5. its version is higher than the one held ([`NameError::Replay`]).
//!
//! Sets of members that left, were revoked or re-issued are dropped with
//! [`NameTable::retain_live`]; which members are *down* is the caller's to filter.
//!
//! No I/O, no clock (time comes in as `now_unix`). Encoding, integers big-endian:
//!
//! ```text
//! body    = format u8 = 1 | network name | member name | number u32 | version u64
//!           | entry count u16, each entry: name text | alias count u8 (0..=16), each a text
//!           | address (family u8 4|6, [4|16]) | Docker network text
//!           | range (family u8, address [4|16], prefix u8)
//! text    = length u8 (1..=63) | ASCII [a-z0-9_.-], not starting with '.' or '-'
//! signed  = body length u32 | body | Ed25519 signature [64], under NAMES_CONTEXT
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use keys::wire::{Reader, WireError, Writer};
use keys::{Name, SIGNATURE_LEN, Signature, SigningKey};

use super::Directory;

/// The signing context of name sets.
pub const NAMES_CONTEXT: &str = "overlay names v1";
/// The default cap on one member's names (`[dns] max_names`).
pub const DEFAULT_MAX_NAMES: usize = 4096;
/// The most entries a set can encode.
pub const MAX_ENTRIES: usize = u16::MAX as usize;
/// The most aliases of one entry.
pub const MAX_ALIASES: usize = 16;
/// The longest name, alias or Docker network name.
pub const MAX_TEXT_LEN: usize = 63;
/// The longest body accepted (bytes): above what 4,096 names of usual length take (~60
/// bytes each), and small enough that a full sync (at most `MAX_FRAME`, 8 MiB) holds
/// the sets of 16 members at this size besides the directory. A set of long names with
/// many aliases can be refused by size before the count cap.
pub const MAX_BODY_LEN: usize = 512 << 10;
const FORMAT_VERSION: u8 = 1;

/// Why a name set was refused or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The bytes are cut short or hold what no writer makes.
    #[error("name set is malformed ({0}); it was damaged in transit or made by a faulty peer")]
    Malformed(&'static str),
    /// A body format from another overlay version.
    #[error("name set format version {0} is not supported (this overlay reads version 1)")]
    UnsupportedVersion(u8),
    /// For another network.
    #[error("name set of {member} is for network {found}, not this network {expected}")]
    WrongNetwork {
        /// The member it names.
        member: Name,
        /// Its network.
        found: Name,
        /// This network.
        expected: Name,
    },
    /// Not a live member here.
    #[error("name set refused: {0} is not a live member")]
    UnknownMember(Name),
    /// Made for another member of the same name (a name given away after a revocation or
    /// a leave); a renewed certificate keeps its member number, so its sets stay valid.
    #[error(
        "name set of {member} refused: made for member number {number}, the member's is {held}"
    )]
    StaleCertificate {
        /// The member.
        member: Name,
        /// The member number it names.
        number: u32,
        /// The member number of the member's certificate held.
        held: u32,
    },
    /// Not signed by the key of the member's certificate.
    #[error("name set for {0} is forged: it is not signed by the key in {0}'s certificate")]
    Forged(Name),
    /// More names than the cap.
    #[error(
        "name set of {member} refused: {count} names, above the cap of {cap} a member ([dns] max_names)"
    )]
    TooMany {
        /// The member.
        member: Name,
        /// How many it has.
        count: usize,
        /// The cap.
        cap: usize,
    },
    /// An address outside the member's subnets.
    #[error("name set of {member} refused: {name} points at {address}, outside its subnets")]
    AddressNotOwned {
        /// The member.
        member: Name,
        /// The name.
        name: String,
        /// Its address.
        address: IpAddr,
    },
    /// Not newer than the set held.
    #[error("name set of {member} refused: version {version} is not newer than {held} held")]
    Replay {
        /// The member.
        member: Name,
        /// The version offered.
        version: u64,
        /// The version held.
        held: u64,
    },
    /// The set cannot be signed as given.
    #[error("cannot sign this name set: {0}")]
    NotSignable(String),
}

impl From<WireError> for NameError {
    fn from(e: WireError) -> NameError {
        match e {
            WireError::Truncated(part) | WireError::Invalid(part) => NameError::Malformed(part),
        }
    }
}

/// One container endpoint's names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameEntry {
    /// The container's name (lower case).
    pub name: String,
    /// Its network aliases (lower case; a Compose service's name is one).
    pub aliases: Vec<String>,
    /// Its overlay address.
    pub address: IpAddr,
    /// The Docker network's name on its host.
    pub network: String,
    /// The overlay range of that Docker network: only containers in it see the name.
    pub range: IpNet,
}

impl NameEntry {
    /// Whether `name` (lower case) is its name or one of its aliases.
    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.aliases.iter().any(|a| a == name)
    }
}

/// Whether `text` is a name, alias or network name a set may carry: 1 to 63 characters
/// `[a-z0-9_.-]`, not starting with `.` or `-`. Docker allows upper case in names: lower
/// it first (DNS is case-insensitive).
pub fn valid_text(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_TEXT_LEN
        && !text.starts_with(['.', '-'])
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// A member's names, as it publishes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameSet {
    /// The overlay network.
    pub network: Name,
    /// The member publishing.
    pub member: Name,
    /// Its member number (`NodeCertificate::number`, kept across renewals; the key of
    /// its current certificate signs).
    pub number: u32,
    /// Bumped on every change; the highest wins.
    pub version: u64,
    /// The names.
    pub entries: Vec<NameEntry>,
}

impl NameSet {
    fn check(&self) -> Result<(), String> {
        if self.entries.len() > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} names"));
        }
        for e in &self.entries {
            if e.aliases.len() > MAX_ALIASES {
                return Err(format!("{} has more than {MAX_ALIASES} aliases", e.name));
            }
            for text in std::iter::once(&e.name)
                .chain(&e.aliases)
                .chain(std::iter::once(&e.network))
            {
                if !valid_text(text) {
                    return Err(format!(
                        "{text:?} is not a name: use 1 to 63 characters a-z, 0-9, '_', '.', '-'"
                    ));
                }
            }
            if e.range != e.range.trunc() || !e.range.contains(&e.address) {
                return Err(format!("{} is outside its range {}", e.address, e.range));
            }
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + self.entries.len() * 64);
        w.u8(FORMAT_VERSION);
        w.name(&self.network);
        w.name(&self.member);
        w.u32(self.number);
        w.u64(self.version);
        w.u16(self.entries.len() as u16);
        for e in &self.entries {
            text(&mut w, &e.name);
            w.count(e.aliases.len());
            e.aliases.iter().for_each(|a| text(&mut w, a));
            w.subnet(&IpNet::from(e.address));
            text(&mut w, &e.network);
            w.subnet(&e.range);
        }
        w.finish_plain()
    }

    fn decode(body: &[u8]) -> Result<NameSet, NameError> {
        let mut r = Reader::new(body);
        let version = r.u8("format version")?;
        if version != FORMAT_VERSION {
            return Err(NameError::UnsupportedVersion(version));
        }
        let network = r.name("network name")?;
        let member = r.name("member name")?;
        let number = r.u32("number")?;
        let set_version = r.u64("version")?;
        let count = usize::from(r.u16("entry count")?);
        let mut entries = Vec::with_capacity(count.min(body.len() / 16));
        for _ in 0..count {
            let name = read_text(&mut r, "name")?;
            let aliases = (0..r.count(MAX_ALIASES, "alias count")?)
                .map(|_| read_text(&mut r, "alias"))
                .collect::<Result<_, _>>()?;
            let address = r.subnet("address")?;
            if address.prefix_len() != address.max_prefix_len() {
                return Err(NameError::Malformed("address"));
            }
            entries.push(NameEntry {
                name,
                aliases,
                address: address.addr(),
                network: read_text(&mut r, "Docker network")?,
                range: r.subnet("range")?,
            });
        }
        r.finish()?;
        let set = NameSet {
            network,
            member,
            number,
            version: set_version,
            entries,
        };
        set.check().map_err(|_| NameError::Malformed("entry"))?;
        Ok(set)
    }

    /// Signs the set with the member's key (its current certificate's).
    pub fn sign(&self, key: &SigningKey) -> Result<SignedNameSet, NameError> {
        self.check().map_err(NameError::NotSignable)?;
        let body = self.encode();
        if body.len() > MAX_BODY_LEN {
            return Err(NameError::NotSignable(format!(
                "{} bytes, above {MAX_BODY_LEN}",
                body.len()
            )));
        }
        let signature = key.sign(NAMES_CONTEXT, &body);
        Ok(SignedNameSet {
            set: self.clone(),
            body,
            signature,
        })
    }
}

fn text(w: &mut Writer, text: &str) {
    // Checked by `NameSet::check`: at most 63 bytes.
    w.count(text.len());
    w.bytes(text.as_bytes());
}

fn read_text(r: &mut Reader<'_>, what: &'static str) -> Result<String, NameError> {
    let len = r.count(MAX_TEXT_LEN, what)?;
    let bytes = r.bytes(len, what)?;
    let text = std::str::from_utf8(bytes).map_err(|_| NameError::Malformed(what))?;
    if !valid_text(text) {
        return Err(NameError::Malformed(what));
    }
    Ok(text.to_owned())
}

/// A name set's body, the member's signature over it, and what the body says (unverified
/// until a [`NameTable`] applies it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNameSet {
    set: NameSet,
    body: Vec<u8>,
    signature: Signature,
}

impl SignedNameSet {
    /// What the body says.
    pub fn set(&self) -> &NameSet {
        &self.set
    }

    /// `body length u32 | body | signature`: what a push or a sync carries.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.body.len() + SIGNATURE_LEN);
        out.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.body);
        out.extend_from_slice(self.signature.as_bytes());
        out
    }

    /// Reads [`to_bytes`](Self::to_bytes); checks the format, not the signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<SignedNameSet, NameError> {
        let mut r = Reader::new(bytes);
        let len = u32::from_be_bytes(r.array("length")?) as usize;
        if len > MAX_BODY_LEN {
            return Err(NameError::Malformed("length: longer than any name set"));
        }
        let body = r.bytes(len, "body")?.to_vec();
        let signature = Signature::from_bytes(r.array("signature")?);
        r.finish()?;
        Ok(SignedNameSet {
            set: NameSet::decode(&body)?,
            body,
            signature,
        })
    }
}

/// A set accepted, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldNames {
    /// The set.
    pub signed: SignedNameSet,
    /// When it was accepted (unix seconds).
    pub since: u64,
}

/// The name sets accepted, one per member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameTable {
    sets: BTreeMap<Name, HeldNames>,
}

/// What applying a set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamesApplied {
    /// A new or newer set is held: pass it on.
    Changed,
    /// The same set was held already.
    Unchanged,
}

impl NameTable {
    /// Verifies `signed` against `dir` (see the module docs for the rules) with at most
    /// `cap` names, and holds it.
    pub fn apply(
        &mut self,
        dir: &Directory,
        signed: &SignedNameSet,
        cap: usize,
        now_unix: u64,
    ) -> Result<NamesApplied, NameError> {
        let set = &signed.set;
        if &set.network != dir.network() {
            return Err(NameError::WrongNetwork {
                member: set.member.clone(),
                found: set.network.clone(),
                expected: dir.network().clone(),
            });
        }
        let (number, key, subnets) = dir
            .member_identity(&set.member)
            .ok_or_else(|| NameError::UnknownMember(set.member.clone()))?;
        if set.number != number {
            return Err(NameError::StaleCertificate {
                member: set.member.clone(),
                number: set.number,
                held: number,
            });
        }
        if key
            .verify(NAMES_CONTEXT, &signed.body, &signed.signature)
            .is_err()
        {
            return Err(NameError::Forged(set.member.clone()));
        }
        if set.entries.len() > cap {
            return Err(NameError::TooMany {
                member: set.member.clone(),
                count: set.entries.len(),
                cap,
            });
        }
        if let Some(e) = set
            .entries
            .iter()
            .find(|e| !subnets.iter().any(|s| s.contains(&e.address)))
        {
            return Err(NameError::AddressNotOwned {
                member: set.member.clone(),
                name: e.name.clone(),
                address: e.address,
            });
        }
        if let Some(held) = self.sets.get(&set.member)
            && held.signed.set.number == set.number
        {
            if held.signed == *signed {
                return Ok(NamesApplied::Unchanged);
            }
            if set.version <= held.signed.set.version {
                return Err(NameError::Replay {
                    member: set.member.clone(),
                    version: set.version,
                    held: held.signed.set.version,
                });
            }
        }
        self.sets.insert(
            set.member.clone(),
            HeldNames {
                signed: signed.clone(),
                since: now_unix,
            },
        );
        Ok(NamesApplied::Changed)
    }

    /// Decodes bytes and [`apply`](Self::apply)s them.
    pub fn apply_bytes(
        &mut self,
        dir: &Directory,
        bytes: &[u8],
        cap: usize,
        now_unix: u64,
    ) -> Result<NamesApplied, NameError> {
        self.apply(dir, &SignedNameSet::from_bytes(bytes)?, cap, now_unix)
    }

    /// Drops the sets of members that are no longer live in `dir` (left, revoked,
    /// expired) or whose name went to another member; `true` when any went.
    pub fn retain_live(&mut self, dir: &Directory) -> bool {
        let before = self.sets.len();
        self.sets.retain(|member, held| {
            dir.member_identity(member)
                .is_some_and(|(number, _, _)| number == held.signed.set.number)
        });
        self.sets.len() != before
    }

    /// Every set held, by member.
    pub fn sets(&self) -> impl Iterator<Item = (&Name, &HeldNames)> {
        self.sets.iter()
    }

    /// The set held for `member`.
    pub fn get(&self, member: &Name) -> Option<&HeldNames> {
        self.sets.get(member)
    }
}

#[cfg(test)]
mod tests;
