//! A policy as the network carries it: the file's text with a version, signed by the
//! network's CA. Members keep the newest they verified; an older version, another
//! network's, or one the CA did not sign is refused.
//!
//! ```text
//! policy body   = format u8 = 1 | CA fingerprint [16] | network name | version u64
//!                 | issued_at u64 | text length u32 | text (UTF-8, at most 256 KiB)
//! signed policy = body length u32 | body | Ed25519 signature [64]
//! ```
//!
//! Signed under [`POLICY_CONTEXT`], so no other signature of the CA (certificates,
//! revocations) can pass for a policy's. The text is kept as written so that every member
//! shows the same file (`overlayctl policy show`) and parses it with the same rules.

use keys::wire::{Reader, WireError, Writer};
use keys::{CaKey, FINGERPRINT_LEN, Fingerprint, Name, SIGNATURE_LEN, Signature, VerifyingKey};

use super::Policy;
use super::parse::{MAX_POLICY_LEN, PolicyError};

/// The signing context of policy bodies.
pub const POLICY_CONTEXT: &str = "overlay policy v1";
const FORMAT_VERSION: u8 = 1;
const MAX_BODY_LEN: usize = 1 + FINGERPRINT_LEN + 64 + 8 + 8 + 4 + MAX_POLICY_LEN;

/// Why a signed policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRecordError {
    /// The bytes are not a policy record.
    #[error("policy record is malformed ({0}); it was damaged in transit or made by a faulty peer")]
    Malformed(&'static str),
    /// Another format version.
    #[error(
        "policy record format version {0} is not supported (this overlay reads version 1); upgrade overlayd"
    )]
    UnsupportedVersion(u8),
    /// Not signed by this network's CA.
    #[error("policy version {version} refused: it is not signed by this network's CA {expected}")]
    Untrusted {
        /// The version it claims.
        version: u64,
        /// This network's CA.
        expected: Fingerprint,
    },
    /// Signed for another network of the same CA.
    #[error("policy version {version} is for network {found}, not this network {expected}")]
    WrongNetwork {
        /// The version it claims.
        version: u64,
        /// The network it names.
        found: Name,
        /// This network.
        expected: Name,
    },
    /// Not newer than the policy in force.
    #[error("policy version {version} refused: version {held} is already in force")]
    NotNewer {
        /// The version offered.
        version: u64,
        /// The version held.
        held: u64,
    },
    /// Signed, but its text does not parse (a CA would never sign one).
    #[error("policy version {version} refused: {source}")]
    Invalid {
        /// The version.
        version: u64,
        /// What the parser said.
        source: PolicyError,
    },
}

impl From<WireError> for PolicyRecordError {
    fn from(e: WireError) -> PolicyRecordError {
        match e {
            WireError::Truncated(part) | WireError::Invalid(part) => {
                PolicyRecordError::Malformed(part)
            }
        }
    }
}

/// A policy text, its version and the CA's signature over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPolicy {
    body: Vec<u8>,
    signature: Signature,
    ca: Fingerprint,
    network: Name,
    version: u64,
    issued_at: u64,
    text: String,
}

impl SignedPolicy {
    /// Signs `text` (which must parse) as `version` of `network`'s policy.
    pub fn sign(
        ca: &CaKey,
        network: &Name,
        version: u64,
        issued_at: u64,
        text: &str,
    ) -> Result<SignedPolicy, PolicyError> {
        Policy::parse(text)?;
        let mut w = Writer::with_capacity(64 + text.len());
        w.u8(FORMAT_VERSION);
        w.bytes(ca.fingerprint().as_bytes());
        w.name(network);
        w.u64(version);
        w.u64(issued_at);
        // parse() refused anything longer than MAX_POLICY_LEN, far below u32::MAX.
        w.bytes(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
        w.bytes(text.as_bytes());
        let body = w.finish_plain();
        let signature = ca.signing_key().sign(POLICY_CONTEXT, &body);
        Ok(SignedPolicy {
            body,
            signature,
            ca: ca.fingerprint(),
            network: network.clone(),
            version,
            issued_at,
            text: text.to_string(),
        })
    }

    /// The fingerprint of the CA that signed it (unverified).
    pub fn ca(&self) -> &Fingerprint {
        &self.ca
    }

    /// The version (unverified until [`verify`](Self::verify)).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When the admin signed it (unix seconds; informational).
    pub fn issued_at(&self) -> u64 {
        self.issued_at
    }

    /// The policy file as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Checks that `ca` signed it for `network`, that it is newer than `held` (the version
    /// in force, if any) and that its text parses; returns the policy.
    pub fn verify(
        &self,
        ca: &VerifyingKey,
        network: &Name,
        held: Option<u64>,
    ) -> Result<Policy, PolicyRecordError> {
        let untrusted = || PolicyRecordError::Untrusted {
            version: self.version,
            expected: ca.fingerprint(),
        };
        if self.ca != ca.fingerprint() {
            return Err(untrusted());
        }
        ca.verify(POLICY_CONTEXT, &self.body, &self.signature)
            .map_err(|_| untrusted())?;
        if &self.network != network {
            return Err(PolicyRecordError::WrongNetwork {
                version: self.version,
                found: self.network.clone(),
                expected: network.clone(),
            });
        }
        if let Some(held) = held.filter(|&h| self.version <= h) {
            return Err(PolicyRecordError::NotNewer {
                version: self.version,
                held,
            });
        }
        Policy::parse(&self.text).map_err(|source| PolicyRecordError::Invalid {
            version: self.version,
            source,
        })
    }

    /// `body length u32 | body | signature`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.body.len() + SIGNATURE_LEN);
        // Bodies are at most MAX_BODY_LEN bytes (sign and from_bytes only make such).
        out.extend_from_slice(
            &u32::try_from(self.body.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.body);
        out.extend_from_slice(self.signature.as_bytes());
        out
    }

    /// Reads bytes from [`to_bytes`](Self::to_bytes); the signature is not checked here.
    pub fn from_bytes(bytes: &[u8]) -> Result<SignedPolicy, PolicyRecordError> {
        let mut r = Reader::new(bytes);
        let len = u32::from_be_bytes(r.array("length")?) as usize;
        if len > MAX_BODY_LEN {
            return Err(PolicyRecordError::Malformed(
                "length: longer than any policy",
            ));
        }
        let body = r.bytes(len, "body")?.to_vec();
        let signature = Signature::from_bytes(r.array("signature")?);
        r.finish()?;
        let mut b = Reader::new(&body);
        let format = b.u8("format version")?;
        if format != FORMAT_VERSION {
            return Err(PolicyRecordError::UnsupportedVersion(format));
        }
        let ca = Fingerprint::from_bytes(b.array("CA fingerprint")?);
        let network = b.name("network name")?;
        let version = b.u64("version")?;
        let issued_at = b.u64("issued_at")?;
        let text_len = u32::from_be_bytes(b.array("text length")?) as usize;
        if text_len > MAX_POLICY_LEN {
            return Err(PolicyRecordError::Malformed(
                "text length: longer than any policy",
            ));
        }
        let text = std::str::from_utf8(b.bytes(text_len, "text")?)
            .map_err(|_| PolicyRecordError::Malformed("text: not UTF-8"))?
            .to_string();
        b.finish()?;
        Ok(SignedPolicy {
            body,
            signature,
            ca,
            network,
            version,
            issued_at,
            text,
        })
    }
}
