//! The signed records that steer traffic, and the rules for accepting them.
//!
//! Everything the control plane gossips about who routes what is one of two records, and
//! neither is applied or passed on before [`Directory`] has verified it:
//!
//! - [`MemberRecord`]: a member's CA-signed certificate (name, WireGuard key, Ed25519 key,
//!   subnets, groups), its current underlay endpoints, a version and whether it is alive or
//!   has left, signed by the member's own Ed25519 key (the one its certificate names) into a
//!   [`SignedMemberRecord`]. The member bumps the version on every change (moved endpoint,
//!   leaving, a new certificate).
//! - [`Revocation`]: the CA's word that a certificate and its WireGuard key are revoked,
//!   signed by the CA into a [`SignedRevocation`]. Revocations are permanent.
//! - [`names::SignedNameSet`]: a member's container names, signed by the member (module
//!   [`names`]), carried by pushes and full syncs beside the member records.
//! - [`Directory`] (module `directory`): the verified state a daemon applies records to,
//!   and the rules ([`RecordError`]); serde makes it persistent.
//!
//! This module must not do I/O nor read a clock: time comes in as `now_unix`.
//!
//! # Encoding
//!
//! Like certificates (see `keys`' `cert` module), records use a small explicit binary
//! format rather than serde, because the bytes are signed and gossiped: the layout is
//! written here and pinned by a test, every value has exactly one encoding (the reader
//! refuses what the writer never produces), and it needs no new dependency. Version 1,
//! integers big-endian:
//!
//! ```text
//! member body     = format u8 = 1 | certificate (as SignedCertificate::to_bytes: length u16
//!                   | body | CA signature [64]) | version u64 | state u8 (1 alive, 2 left)
//!                   | control port u16 | endpoint count u8 (0..=4), each: family u8 (4|6),
//!                   address [4|16], port u16
//! revocation body = format u8 = 1 | CA fingerprint [16] | network name | node name
//!                   | serial u64 | WireGuard key [32] | revoked_at u64
//! name            = length u8 (1..=63) | ASCII [a-z0-9-]
//! signed record   = body length u16 | body | Ed25519 signature [64]
//! ```
//!
//! A member body is signed by the member's key under [`MEMBER_RECORD_CONTEXT`], a
//! revocation body by the CA's key under [`REVOCATION_CONTEXT`], so neither signature can
//! pass for the other nor for a certificate's. The longest signed member record is
//! [`MAX_SIGNED_MEMBER_LEN`] (1,117) bytes, below the ~1,150 a gossip datagram may carry.

mod directory;
pub mod names;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};

use keys::{
    CaKey, CertError, FINGERPRINT_LEN, Fingerprint, Name, PublicKey, SIGNATURE_LEN, Signature,
    SignedCertificate, SigningKey, VerifyingKey,
};

pub use directory::{Applied, Directory, LiveMember, PolicyApplied};
use keys::wire::{Reader, WireError, Writer};

/// The most underlay endpoints one member record carries.
pub const MAX_ENDPOINTS: usize = 4;
/// The signing context of member record bodies.
pub const MEMBER_RECORD_CONTEXT: &str = "overlay member record v1";
/// The signing context of revocation bodies.
pub const REVOCATION_CONTEXT: &str = "overlay revocation v1";

/// The body format this module writes and reads.
const FORMAT_VERSION: u8 = 1;
const STATE_ALIVE: u8 = 1;
const STATE_LEFT: u8 = 2;
/// An IPv6 endpoint: family, address, port.
const ENDPOINT_MAX_ENCODED_LEN: usize = 1 + 16 + 2;
const MAX_MEMBER_BODY_LEN: usize =
    1 + keys::MAX_SIGNED_LEN + 8 + 1 + 2 + 1 + MAX_ENDPOINTS * ENDPOINT_MAX_ENCODED_LEN + 1;
/// The longest signed member record in bytes (every certificate limit reached, four IPv6
/// endpoints, the relay byte): 1,117.
pub const MAX_SIGNED_MEMBER_LEN: usize = 2 + MAX_MEMBER_BODY_LEN + SIGNATURE_LEN;
// A gossip datagram carries at most ~1,150 bytes.
const _: () = assert!(MAX_SIGNED_MEMBER_LEN <= 1150);
const NAME_MAX_ENCODED_LEN: usize = 1 + 63;
const MAX_REVOCATION_BODY_LEN: usize = 1 + FINGERPRINT_LEN + 2 * NAME_MAX_ENCODED_LEN + 8 + 32 + 8;

/// Why a record was refused, or could not be signed. Each message is one sentence that
/// says what happened and, where someone can act, what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The input ends inside a part.
    #[error("record is truncated ({part} is cut short); it was damaged in transit")]
    Truncated {
        /// The part being read.
        part: &'static str,
    },
    /// A part holds something no writer produces.
    #[error("record is malformed ({part}); it was damaged in transit or made by a faulty peer")]
    Malformed {
        /// The part, and what is wrong with it.
        part: &'static str,
    },
    /// A body format from another overlay version.
    #[error(
        "record format version {version} is not supported (this overlay reads version 1); upgrade overlayd"
    )]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
    /// The record could not be signed as given.
    #[error("cannot sign this record: {reason}")]
    NotSignable {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The member's certificate was not signed by this network's CA (another CA, or altered).
    #[error("member record refused: its certificate is not from this network's CA ({source})")]
    UntrustedCertificate {
        /// What the certificate check said.
        source: CertError,
    },
    /// The member's certificate is outside its validity window at `now_unix`.
    #[error("member record refused: {source}")]
    CertificateNotValidNow {
        /// Expired or not yet valid.
        source: CertError,
    },
    /// The certificate or revocation is for another network of the same CA.
    #[error("record for {node} belongs to network {found}, not to this network {expected}")]
    WrongNetwork {
        /// The node it names.
        node: Name,
        /// The network it names.
        found: Name,
        /// This directory's network.
        expected: Name,
    },
    /// The record's signature was not made by the Ed25519 key of its own certificate.
    #[error(
        "member record for {node} is forged: it is not signed by the key in {node}'s certificate"
    )]
    Forged {
        /// The node it claims to be from.
        node: Name,
    },
    /// The record's certificate, or its WireGuard key, is revoked.
    #[error(
        "member record for {node} refused: its certificate (serial {serial}) or WireGuard key {wireguard_key} is revoked"
    )]
    Revoked {
        /// The node it claims to be from.
        node: Name,
        /// Its certificate's serial.
        serial: u64,
        /// Its WireGuard key.
        wireguard_key: PublicKey,
    },
    /// A version not newer than the one held, with different bytes: a replay or a stale copy.
    #[error(
        "member record for {node} refused: version {version} is not newer than version {held} already held"
    )]
    Replay {
        /// The member.
        node: Name,
        /// The version offered.
        version: u64,
        /// The version held.
        held: u64,
    },
    /// A certificate older (lower serial) than the one held for the same name.
    #[error(
        "member record for {node} refused: its certificate serial {serial} is older than serial {held} already held"
    )]
    OlderCertificate {
        /// The member.
        node: Name,
        /// The serial offered.
        serial: u64,
        /// The serial held.
        held: u64,
    },
    /// A subnet the record claims overlaps a subnet of another live member.
    #[error(
        "member record for {node} refused: its subnet {subnet} overlaps {other_subnet} of live member {other}"
    )]
    SubnetOverlap {
        /// The member offering the record.
        node: Name,
        /// Its overlapping subnet.
        subnet: ipnet::IpNet,
        /// The live member that holds the other subnet.
        other: Name,
        /// That member's subnet.
        other_subnet: ipnet::IpNet,
    },
    /// Another live member already has this WireGuard key.
    #[error(
        "member record for {node} refused: live member {other} already has WireGuard key {wireguard_key}"
    )]
    KeyInUse {
        /// The member offering the record.
        node: Name,
        /// The live member with the same key.
        other: Name,
        /// The key.
        wireguard_key: PublicKey,
    },
    /// A revocation not signed by this network's CA.
    #[error("revocation of {node} refused: it is not signed by this network's CA {expected}")]
    UntrustedRevocation {
        /// The node it names.
        node: Name,
        /// This network's CA.
        expected: Fingerprint,
    },
}

impl From<WireError> for RecordError {
    fn from(e: WireError) -> RecordError {
        match e {
            WireError::Truncated(part) => RecordError::Truncated { part },
            WireError::Invalid(part) => RecordError::Malformed { part },
        }
    }
}

/// Whether a member is in the network or has left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum MemberState {
    /// In the network: route its subnets to it.
    Alive,
    /// Left on purpose: withdraw its routes and tunnel.
    Left,
}

/// What a member says about itself. Nothing in it is trusted until a [`Directory`] applies
/// the [`SignedMemberRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// The member's certificate, signed by the network's CA.
    pub certificate: SignedCertificate,
    /// Bumped by the member on every change; a directory keeps the highest.
    pub version: u64,
    /// Alive or left.
    pub state: MemberState,
    /// UDP port of its control plane (QUIC), at the addresses of `endpoints`; 0 when it
    /// has none (a member that only talks WireGuard).
    pub control_port: u16,
    /// Where its WireGuard tunnel is reached (at most [`MAX_ENDPOINTS`], no duplicates, no
    /// port 0); IPv6 flow labels and scope ids are not carried.
    pub endpoints: Vec<SocketAddr>,
    /// Whether it relays for members that cannot reach each other: named a relay
    /// (`Some(true)`), never (`Some(false)`), or when members see it at its own address
    /// (`None`). Encoded as one byte after the endpoints, left out when `None`: a record
    /// without it reads as before.
    pub relay: Option<bool>,
}

/// Why a record naming a loopback, link-local, unspecified, multicast or broadcast
/// endpoint is refused.
pub const UNREACHABLE_ENDPOINT: &str = "an endpoint is no address other hosts can reach (loopback, link-local, unspecified, multicast or broadcast)";

/// Whether `ip` can be where other hosts reach a member: not loopback, unspecified,
/// multicast, broadcast or link-local. A record naming any other is refused: every member
/// would send its handshakes, control connections and relayed datagrams there, that is to
/// a service on its own host or link, at the choice of the record's member.
pub fn reachable_unicast(ip: IpAddr) -> bool {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| !reachable_unicast(IpAddr::V4(v4)))
        }
    };
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || link_local)
}

/// The byte after the endpoints of a record whose member is named a relay.
const RELAY_NAMED: u8 = 1;
/// The byte after the endpoints of a record whose member never relays.
const RELAY_NEVER: u8 = 2;

impl MemberRecord {
    fn check(&self) -> Result<(), &'static str> {
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err("more than 4 endpoints");
        }
        if self.endpoints.iter().any(|e| e.port() == 0) {
            return Err("an endpoint has port 0");
        }
        if self.endpoints.iter().any(|e| !reachable_unicast(e.ip())) {
            return Err(UNREACHABLE_ENDPOINT);
        }
        let canonical = |e: &SocketAddr| SocketAddr::new(e.ip(), e.port());
        for (i, e) in self.endpoints.iter().enumerate() {
            if self.endpoints[..i]
                .iter()
                .any(|f| canonical(f) == canonical(e))
            {
                return Err("an endpoint is listed twice");
            }
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(MAX_MEMBER_BODY_LEN);
        w.u8(FORMAT_VERSION);
        w.bytes(&self.certificate.to_bytes());
        w.u64(self.version);
        w.u8(match self.state {
            MemberState::Alive => STATE_ALIVE,
            MemberState::Left => STATE_LEFT,
        });
        w.u16(self.control_port);
        w.count(self.endpoints.len());
        self.endpoints.iter().for_each(|e| w.socket(e));
        match self.relay {
            Some(true) => w.u8(RELAY_NAMED),
            Some(false) => w.u8(RELAY_NEVER),
            None => {}
        }
        w.finish_plain()
    }

    fn decode(body: &[u8]) -> Result<MemberRecord, RecordError> {
        let mut r = Reader::new(body);
        let version = r.u8("format version")?;
        if version != FORMAT_VERSION {
            return Err(RecordError::UnsupportedVersion { version });
        }
        let cert_len = r.u16("certificate length")?;
        let cert_rest = r.bytes(usize::from(cert_len) + SIGNATURE_LEN, "certificate")?;
        let mut cert_bytes = Vec::with_capacity(2 + cert_rest.len());
        cert_bytes.extend_from_slice(&cert_len.to_be_bytes());
        cert_bytes.extend_from_slice(cert_rest);
        let certificate = SignedCertificate::from_bytes(&cert_bytes).map_err(|e| match e {
            CertError::Truncated { part } => RecordError::Truncated { part },
            _ => RecordError::Malformed {
                part: "certificate framing",
            },
        })?;
        let record_version = r.u64("version")?;
        let state = match r.u8("state")? {
            STATE_ALIVE => MemberState::Alive,
            STATE_LEFT => MemberState::Left,
            _ => return Err(RecordError::Malformed { part: "state" }),
        };
        let control_port = r.u16("control port")?;
        let endpoints = (0..r.count(MAX_ENDPOINTS, "endpoint count")?)
            .map(|_| r.socket("endpoint"))
            .collect::<Result<_, _>>()?;
        let relay = if r.is_empty() {
            None
        } else {
            match r.u8("relay")? {
                RELAY_NAMED => Some(true),
                RELAY_NEVER => Some(false),
                _ => return Err(RecordError::Malformed { part: "relay" }),
            }
        };
        r.finish()?;
        let record = MemberRecord {
            certificate,
            version: record_version,
            state,
            control_port,
            endpoints,
            relay,
        };
        record
            .check()
            .map_err(|part| RecordError::Malformed { part })?;
        Ok(record)
    }

    /// Signs the record with the member's Ed25519 key (the one its certificate names, or
    /// directories refuse it as [`RecordError::Forged`]). Refused when the endpoints break
    /// the rules on [`endpoints`](Self::endpoints).
    pub fn sign(&self, key: &SigningKey) -> Result<SignedMemberRecord, RecordError> {
        self.check()
            .map_err(|reason| RecordError::NotSignable { reason })?;
        let body = self.encode();
        let signature = key.sign(MEMBER_RECORD_CONTEXT, &body);
        SignedMemberRecord::decode(body, signature)
    }
}

/// A member record's body bytes and the member's signature over them, as received or as
/// made. [`record`](Self::record) is what the body says, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedMemberRecord {
    body: Vec<u8>,
    signature: Signature,
    record: MemberRecord,
}

impl SignedMemberRecord {
    /// What the body says; unverified until a [`Directory`] applies it.
    pub fn record(&self) -> &MemberRecord {
        &self.record
    }

    /// The signed body bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The member's signature over the body.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Checks the signature with `key` (the control key of the record's certificate).
    fn verify_signature(&self, key: &VerifyingKey) -> bool {
        key.verify(MEMBER_RECORD_CONTEXT, &self.body, &self.signature)
            .is_ok()
    }

    /// `body length u16 | body | signature`: what gossip carries.
    pub fn to_bytes(&self) -> Vec<u8> {
        to_signed_bytes(&self.body, &self.signature)
    }

    /// Reads bytes from [`to_bytes`](Self::to_bytes): the framing and the body's format
    /// are checked, no signature is.
    pub fn from_bytes(bytes: &[u8]) -> Result<SignedMemberRecord, RecordError> {
        let (body, signature) = from_signed_bytes(bytes, MAX_MEMBER_BODY_LEN)?;
        SignedMemberRecord::decode(body, signature)
    }

    /// `body` and its `signature`, with what the body says (its format checked, the
    /// signature not).
    fn decode(body: Vec<u8>, signature: Signature) -> Result<SignedMemberRecord, RecordError> {
        let record = MemberRecord::decode(&body)?;
        Ok(SignedMemberRecord {
            body,
            signature,
            record,
        })
    }
}

/// The CA's statement that a member's certificate and WireGuard key are revoked, for good.
///
/// A directory that holds it refuses every record whose WireGuard key is `wireguard_key`,
/// and every record for `node` whose certificate serial is `serial` or lower. A re-issued
/// certificate for the same name (higher serial, new keys) is accepted: the name is not
/// burnt, the key and the old certificates are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The network of the revoked member.
    pub network: Name,
    /// The revoked member's name.
    pub node: Name,
    /// The serial of its revoked certificate (older serials are revoked too).
    pub serial: u64,
    /// Its WireGuard key, which may never handshake or join again.
    pub wireguard_key: PublicKey,
    /// When the CA revoked it (unix seconds); informational.
    pub revoked_at: u64,
}

impl Revocation {
    fn encode(&self, ca: &Fingerprint) -> Vec<u8> {
        let mut w = Writer::with_capacity(MAX_REVOCATION_BODY_LEN);
        w.u8(FORMAT_VERSION);
        w.bytes(ca.as_bytes());
        w.name(&self.network);
        w.name(&self.node);
        w.u64(self.serial);
        w.bytes(self.wireguard_key.as_bytes());
        w.u64(self.revoked_at);
        w.finish_plain()
    }

    /// The CA fingerprint the body names, and the revocation.
    fn decode(body: &[u8]) -> Result<(Fingerprint, Revocation), RecordError> {
        let mut r = Reader::new(body);
        let version = r.u8("format version")?;
        if version != FORMAT_VERSION {
            return Err(RecordError::UnsupportedVersion { version });
        }
        let ca = Fingerprint::from_bytes(r.array("CA fingerprint")?);
        let revocation = Revocation {
            network: r.name("network name")?,
            node: r.name("node name")?,
            serial: r.u64("serial")?,
            wireguard_key: PublicKey::from_bytes(r.array("WireGuard key")?),
            revoked_at: r.u64("revoked_at")?,
        };
        r.finish()?;
        Ok((ca, revocation))
    }

    /// Signs the revocation with the network's CA.
    pub fn sign(&self, ca: &CaKey) -> SignedRevocation {
        let body = self.encode(&ca.fingerprint());
        let signature = ca.signing_key().sign(REVOCATION_CONTEXT, &body);
        SignedRevocation {
            body,
            signature,
            ca: ca.fingerprint(),
            revocation: self.clone(),
        }
    }
}

/// A revocation's body bytes and the CA's signature over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRevocation {
    body: Vec<u8>,
    signature: Signature,
    ca: Fingerprint,
    revocation: Revocation,
}

impl SignedRevocation {
    /// What the body says; unverified until a [`Directory`] applies it.
    pub fn revocation(&self) -> &Revocation {
        &self.revocation
    }

    /// Checks that `ca` signed it and returns the revocation.
    fn verify(&self, ca: &VerifyingKey) -> Result<&Revocation, RecordError> {
        let untrusted = || RecordError::UntrustedRevocation {
            node: self.revocation.node.clone(),
            expected: ca.fingerprint(),
        };
        if self.ca != ca.fingerprint() {
            return Err(untrusted());
        }
        ca.verify(REVOCATION_CONTEXT, &self.body, &self.signature)
            .map_err(|_| untrusted())?;
        Ok(&self.revocation)
    }

    /// `body length u16 | body | signature`.
    pub fn to_bytes(&self) -> Vec<u8> {
        to_signed_bytes(&self.body, &self.signature)
    }

    /// Reads bytes from [`to_bytes`](Self::to_bytes); the signature is not checked here.
    pub fn from_bytes(bytes: &[u8]) -> Result<SignedRevocation, RecordError> {
        let (body, signature) = from_signed_bytes(bytes, MAX_REVOCATION_BODY_LEN)?;
        let (ca, revocation) = Revocation::decode(&body)?;
        Ok(SignedRevocation {
            body,
            signature,
            ca,
            revocation,
        })
    }
}

fn to_signed_bytes(body: &[u8], signature: &Signature) -> Vec<u8> {
    let mut w = Writer::with_capacity(2 + body.len() + SIGNATURE_LEN);
    // Bodies are at most MAX_MEMBER_BODY_LEN (< 65,536) bytes: `from_bytes` and `sign`
    // only make such.
    w.u16(u16::try_from(body.len()).unwrap_or(u16::MAX));
    w.bytes(body);
    w.bytes(signature.as_bytes());
    w.finish_plain()
}

fn from_signed_bytes(bytes: &[u8], max_body: usize) -> Result<(Vec<u8>, Signature), RecordError> {
    let mut r = Reader::new(bytes);
    let len = usize::from(r.u16("length")?);
    if len > max_body {
        return Err(RecordError::Malformed {
            part: "length: longer than any record",
        });
    }
    let body = r.bytes(len, "body")?.to_vec();
    let signature = Signature::from_bytes(r.array("signature")?);
    r.finish()?;
    Ok((body, signature))
}
