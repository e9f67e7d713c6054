//! Node certificates: what the CA says about a member host, and how a member checks it.
//!
//! A [`NodeCertificate`] binds a node name to its WireGuard and Ed25519 public keys, its
//! container subnets and groups, for a validity window. [`CaKey::sign`](crate::CaKey::sign)
//! turns it into a [`SignedCertificate`]: the exact body bytes and an Ed25519 signature.
//! [`SignedCertificate::verify`] is the only way back to a `NodeCertificate`, so a value of
//! that type in the control plane was checked against a CA (or built locally).
//!
//! # Encoding
//!
//! The body is a small explicit binary format (module `wire`) rather than serde with
//! postcard or bincode, because the bytes are signed and gossiped for years: the layout
//! below is written down here and pinned by a test, so it cannot change by reordering a
//! struct or upgrading a crate; it has exactly one encoding per value (the reader refuses
//! anything the writer never produces); it needs no new dependency; and it is small enough
//! to read in a fuzz target's failure. Version 2 (integers big-endian):
//!
//! ```text
//! version u8 = 2 | CA fingerprint [16] | serial u64 | number u32 | not_before u64
//! | not_after u64 | network name | node name | WireGuard key [32] | Ed25519 key [32]
//! | subnet count u8, each: family u8 (4|6), address [4|16], prefix length u8
//! | group count u8, each: name
//! name = length u8 (1..=63) | ASCII [a-z0-9-]
//! ```
//!
//! The serial is new on every certificate the CA issues (a renewal, new groups); the
//! `number` is the member's own, given at its join and kept by every renewal: its SWIM
//! identity, and what names it across renewals. Version 1 is the same without `number`;
//! it is still read (certificates issued before version 2 stay valid until they are
//! renewed), its number being its serial's low 32 bits, which is what members of that
//! version used as their SWIM identity. Only version 2 is written.
//!
//! The version and CA fingerprint come first so that a verifier reads nothing else before
//! the signature is checked. The signature covers the whole body under the context
//! [`CERT_SIGNING_CONTEXT`]. A signed certificate as bytes is `body length u16 | body |
//! signature [64]` (at most [`MAX_SIGNED_LEN`] bytes, so it fits a gossip datagram), and
//! as text `ovlcert1.` followed by those bytes in unpadded base64url.
//!
//! This module must not read a clock: the caller passes `now_unix`.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use ipnet::IpNet;

use crate::PublicKey;
use crate::ed25519::{FINGERPRINT_LEN, Fingerprint, SIGNATURE_LEN, Signature, VerifyingKey};
use crate::name::{MAX_NAME_LEN, Name};
use crate::time::Utc;
use crate::wire::{Reader, WireError, Writer, decode_base64url};

/// The most subnets one certificate holds.
pub const MAX_SUBNETS: usize = 8;
/// The most groups one certificate (or join token) holds.
pub const MAX_GROUPS: usize = 8;

/// The body format this crate writes (and reads).
const CERT_VERSION: u8 = 2;
/// The body format before `number`, still read.
const CERT_VERSION_1: u8 = 1;
/// The signing context of certificate bodies (see [`SigningKey::sign`](crate::SigningKey::sign)).
pub(crate) const CERT_SIGNING_CONTEXT: &str = "overlay node certificate v1";
/// The text form's prefix.
const TEXT_PREFIX: &str = "ovlcert1.";

const NAME_MAX_ENCODED_LEN: usize = 1 + MAX_NAME_LEN;
const SUBNET_MAX_ENCODED_LEN: usize = 1 + 16 + 1;
/// The longest body: every name 63 bytes, every list full, every subnet IPv6.
const MAX_BODY_LEN: usize = 1
    + FINGERPRINT_LEN
    + 3 * 8
    + 4
    + 2 * NAME_MAX_ENCODED_LEN
    + 32
    + 32
    + 1
    + MAX_SUBNETS * SUBNET_MAX_ENCODED_LEN
    + 1
    + MAX_GROUPS * NAME_MAX_ENCODED_LEN;
/// The longest signed certificate in bytes (895 + 66 = 961), below the ~1150 bytes a
/// gossip datagram may carry.
pub const MAX_SIGNED_LEN: usize = 2 + MAX_BODY_LEN + SIGNATURE_LEN;
// Leave a gossip datagram room for its own header when the limits above are raised.
const _: () = assert!(MAX_SIGNED_LEN <= 1000);

/// What the CA certifies about one member host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeCertificate {
    /// The network the host belongs to.
    pub network: Name,
    /// The host's name, unique in the network.
    pub node: Name,
    /// The host's WireGuard (X25519) public key: the data plane.
    pub wireguard_key: PublicKey,
    /// The host's Ed25519 public key: control-plane TLS and signatures.
    pub control_key: VerifyingKey,
    /// The container subnets routed to this host, in canonical form (no host bits set).
    pub subnets: Vec<IpNet>,
    /// Groups for policy.
    pub groups: Vec<Name>,
    /// First valid second (unix time), inclusive.
    pub not_before: u64,
    /// Last valid second (unix time), inclusive.
    pub not_after: u64,
    /// Chosen by the CA; unique per certificate it issues, higher on every re-issue
    /// (revocation names it, and every serial of the same name up to it).
    pub serial: u64,
    /// The member's number in the network: given once, at its join (unique, never reused),
    /// and kept by every certificate re-issued to it. Its SWIM identity.
    pub number: u32,
    /// The fingerprint of the CA that signs it.
    pub ca_fingerprint: Fingerprint,
}

/// Why a certificate was refused, or could not be signed. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The signature does not match the body: altered after signing.
    #[error(
        "certificate signature does not verify with CA {ca}: it was altered after signing; ask the CA to issue it again"
    )]
    BadSignature {
        /// The CA it claims to be from.
        ca: Fingerprint,
    },
    /// The certificate names another CA than the one it is checked against.
    #[error(
        "certificate was signed by CA {found}, but this network's CA is {expected}; get a certificate from this network's CA"
    )]
    WrongCa {
        /// The CA it was checked against.
        expected: Fingerprint,
        /// The CA it names.
        found: Fingerprint,
    },
    /// `now` is after `not_after`.
    #[error(
        "certificate of node {node} expired at {}; ask the CA for a new one (or check this host's clock)",
        Utc(*not_after)
    )]
    Expired {
        /// The certified node.
        node: Name,
        /// Its last valid second.
        not_after: u64,
    },
    /// `now` is before `not_before`.
    #[error(
        "certificate of node {node} is not valid before {}; check this host's clock",
        Utc(*not_before)
    )]
    NotYetValid {
        /// The certified node.
        node: Name,
        /// Its first valid second.
        not_before: u64,
    },
    /// The input ends inside a part.
    #[error("certificate is truncated ({part} is cut short); copy the whole certificate again")]
    Truncated {
        /// The part being read.
        part: &'static str,
    },
    /// A part holds something no CA writes.
    #[error("certificate is malformed ({part}); copy it again, or ask the CA to issue it again")]
    Malformed {
        /// The part, and what is wrong with it.
        part: &'static str,
    },
    /// A body format from another overlay version.
    #[error(
        "certificate format version {version} is not supported (this overlay reads versions 1 and 2); upgrade overlayd"
    )]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
    /// [`CaKey::sign`](crate::CaKey::sign) refused the certificate.
    #[error("cannot sign this certificate: {reason}; correct it and sign again")]
    NotSignable {
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl From<WireError> for CertError {
    fn from(e: WireError) -> CertError {
        match e {
            WireError::Truncated(part) => CertError::Truncated { part },
            WireError::Invalid(part) => CertError::Malformed { part },
        }
    }
}

impl NodeCertificate {
    /// The invariants both signing and decoding enforce.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if self.subnets.len() > MAX_SUBNETS {
            return Err("more subnets than a certificate holds");
        }
        if self.groups.len() > MAX_GROUPS {
            return Err("more groups than a certificate holds");
        }
        if self.subnets.iter().any(|net| *net != net.trunc()) {
            return Err("a subnet has host bits set (write it as its network address)");
        }
        if self.not_before > self.not_after {
            return Err("not_before is after not_after");
        }
        Ok(())
    }

    /// The canonical body bytes. The caller has run [`check`](Self::check).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(MAX_BODY_LEN);
        w.u8(CERT_VERSION);
        w.bytes(self.ca_fingerprint.as_bytes());
        w.u64(self.serial);
        w.u32(self.number);
        w.u64(self.not_before);
        w.u64(self.not_after);
        w.name(&self.network);
        w.name(&self.node);
        w.bytes(self.wireguard_key.as_bytes());
        w.bytes(self.control_key.as_bytes());
        w.count(self.subnets.len());
        self.subnets.iter().for_each(|net| w.subnet(net));
        w.count(self.groups.len());
        self.groups.iter().for_each(|group| w.name(group));
        // Nothing secret in a certificate: take the bytes out of the zeroizing buffer.
        std::mem::take(&mut *w.finish())
    }

    /// Reads a body, refusing anything [`encode`](Self::encode) never writes.
    pub(crate) fn decode(body: &[u8]) -> Result<NodeCertificate, CertError> {
        let mut r = Reader::new(body);
        let version = r.u8("version")?;
        if version != CERT_VERSION && version != CERT_VERSION_1 {
            return Err(CertError::UnsupportedVersion { version });
        }
        let ca_fingerprint = Fingerprint::from_bytes(r.array("CA fingerprint")?);
        let serial = r.u64("serial")?;
        let number = if version == CERT_VERSION_1 {
            // What members of version 1 took as their SWIM identity.
            serial as u32
        } else {
            r.u32("number")?
        };
        let not_before = r.u64("not_before")?;
        let not_after = r.u64("not_after")?;
        let network = r.name("network name")?;
        let node = r.name("node name")?;
        let wireguard_key = PublicKey::from_bytes(r.array("WireGuard key")?);
        let control_key = VerifyingKey::from_bytes(&r.array("Ed25519 key")?).map_err(|_| {
            CertError::Malformed {
                part: "Ed25519 key",
            }
        })?;
        let subnets = (0..r.count(MAX_SUBNETS, "subnet count")?)
            .map(|_| r.subnet("subnet"))
            .collect::<Result<_, _>>()?;
        let groups = (0..r.count(MAX_GROUPS, "group count")?)
            .map(|_| r.name("group"))
            .collect::<Result<_, _>>()?;
        r.finish()?;
        let cert = NodeCertificate {
            network,
            node,
            wireguard_key,
            control_key,
            subnets,
            groups,
            not_before,
            not_after,
            serial,
            number,
            ca_fingerprint,
        };
        cert.check().map_err(|part| CertError::Malformed { part })?;
        Ok(cert)
    }
}

/// A certificate body and the CA's signature over it, as received or as issued. Nothing in
/// it is trusted until [`verify`](Self::verify) returns.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedCertificate {
    body: Vec<u8>,
    signature: Signature,
}

impl SignedCertificate {
    pub(crate) fn from_parts(body: Vec<u8>, signature: Signature) -> SignedCertificate {
        SignedCertificate { body, signature }
    }

    /// The signed body bytes (the encoding in the module docs).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The CA's signature over the body.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// `body length u16 | body | signature`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(2 + self.body.len() + SIGNATURE_LEN);
        // `from_bytes` and `CaKey::sign` keep bodies at most MAX_BODY_LEN (< 65536) long.
        let len = u16::try_from(self.body.len()).unwrap_or(u16::MAX);
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&self.body);
        bytes.extend_from_slice(self.signature.as_bytes());
        bytes
    }

    /// Splits bytes from [`to_bytes`](Self::to_bytes); only the framing is checked here.
    pub fn from_bytes(bytes: &[u8]) -> Result<SignedCertificate, CertError> {
        let mut r = Reader::new(bytes);
        let len = usize::from(r.u16("length")?);
        if len > MAX_BODY_LEN {
            return Err(CertError::Malformed {
                part: "length: longer than any certificate",
            });
        }
        let body = r.bytes(len, "body")?.to_vec();
        let signature = Signature::from_bytes(r.array("signature")?);
        r.finish()?;
        Ok(SignedCertificate { body, signature })
    }

    /// What the body says, WITHOUT checking the signature or validity: for labelling bytes
    /// (e.g. which member a gossiped record is about) before the real check. Never decide
    /// anything that matters on it; use [`verify`](Self::verify).
    pub fn unverified_body(&self) -> Result<NodeCertificate, CertError> {
        match self.body.first() {
            Some(&(CERT_VERSION | CERT_VERSION_1)) => NodeCertificate::decode(&self.body),
            Some(&version) => Err(CertError::UnsupportedVersion { version }),
            None => Err(CertError::Malformed { part: "empty body" }),
        }
    }

    /// Checks the certificate against the network's CA at `now_unix` and returns what it
    /// certifies. In order: the body format version, that it names this CA, the signature,
    /// the body's content, then `not_before <= now_unix <= not_after`. Nothing but the
    /// version and CA fingerprint is read before the signature is checked.
    pub fn verify(&self, ca: &VerifyingKey, now_unix: u64) -> Result<NodeCertificate, CertError> {
        let mut r = Reader::new(&self.body);
        let version = r.u8("version")?;
        if version != CERT_VERSION && version != CERT_VERSION_1 {
            return Err(CertError::UnsupportedVersion { version });
        }
        let found = Fingerprint::from_bytes(r.array("CA fingerprint")?);
        let expected = ca.fingerprint();
        if found != expected {
            return Err(CertError::WrongCa { expected, found });
        }
        ca.verify(CERT_SIGNING_CONTEXT, &self.body, &self.signature)
            .map_err(|_| CertError::BadSignature { ca: expected })?;
        let cert = NodeCertificate::decode(&self.body)?;
        if now_unix < cert.not_before {
            return Err(CertError::NotYetValid {
                node: cert.node,
                not_before: cert.not_before,
            });
        }
        if now_unix > cert.not_after {
            return Err(CertError::Expired {
                node: cert.node,
                not_after: cert.not_after,
            });
        }
        Ok(cert)
    }
}

impl fmt::Display for SignedCertificate {
    /// `ovlcert1.` and the bytes in unpadded base64url (one line, safe in files and shells).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TEXT_PREFIX}{}", BASE64URL.encode(self.to_bytes()))
    }
}

impl fmt::Debug for SignedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignedCertificate({self})")
    }
}

impl FromStr for SignedCertificate {
    type Err = CertError;
    fn from_str(s: &str) -> Result<SignedCertificate, CertError> {
        let encoded = s
            .trim()
            .strip_prefix(TEXT_PREFIX)
            .ok_or(CertError::Malformed {
                part: "prefix: a certificate starts with `ovlcert1.`",
            })?;
        SignedCertificate::from_bytes(&decode_base64url(encoded, "base64url text")?)
    }
}

crate::ed25519::serde_as_string!(SignedCertificate);

#[cfg(test)]
mod tests;
