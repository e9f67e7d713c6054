//! Join tokens: single-use, expiring invitations for a new host to join a network.
//!
//! `overlayctl token create` on an admin host makes a [`JoinToken`] (bootstrap endpoints,
//! the CA's fingerprint, a fresh 32-byte [`TokenSecret`], an expiry, the groups the new
//! host gets) and prints [`JoinToken::to_text`]; the admin host stores only the
//! [`SecretHash`], so its token file never holds the secret. `overlayctl join TOKEN`
//! parses the text, pins the CA by its fingerprint and proves the secret (and, with a
//! [`JoinProof`], that it holds its WireGuard key: module `proof`); the admin checks
//! the presented secret with [`SecretHash::matches`] (constant time), the expiry with
//! [`JoinToken::check_expiry`], and that the token is unused (its own state).
//!
//! The secret is zeroized on drop, never printed by `Debug`, and there is deliberately no
//! `Display`: the only way to the text is `to_text()`, which returns a zeroizing string.
//!
//! Text form: `ovljoin1.` and the bytes below in unpadded base64url (the `1` is the format
//! version; one line, safe to paste in a shell). Bytes (module `wire`, big-endian):
//!
//! ```text
//! network name | CA fingerprint [16] | secret [32] | expires_unix u64
//! | endpoint count u8 (1..=8), each: family u8 (4|6), address [4|16], port u16
//! | group count u8 (0..=8), each: name
//! ```
//!
//! This module reads no clock (expiry takes `now_unix`) and keeps no record of use.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::cert::MAX_GROUPS;
use crate::ed25519::{FINGERPRINT_LEN, Fingerprint, decode_hex, serde_as_string};
use crate::name::{MAX_NAME_LEN, Name};
use crate::time::Utc;
use crate::wire::{Reader, WireError, Writer, decode_base64url};

mod proof;
mod rekey;
pub use proof::{JoinClaim, JoinProof, PROOF_LEN, ProofError};
pub use rekey::{REKEY_PROOF_LEN, RekeyClaim, RekeyProof};

/// The most bootstrap endpoints one token holds.
pub const MAX_ENDPOINTS: usize = 8;
/// Length of a token secret in bytes.
pub const SECRET_LEN: usize = 32;

const TEXT_PREFIX: &str = "ovljoin1.";
const PREFIX_STEM: &str = "ovljoin";
const TOKEN_VERSION: u32 = 1;
/// The longest token in bytes: every name 63 bytes, every list full, every address IPv6.
const MAX_TOKEN_LEN: usize = 1
    + MAX_NAME_LEN
    + FINGERPRINT_LEN
    + SECRET_LEN
    + 8
    + 1
    + MAX_ENDPOINTS * (1 + 16 + 2)
    + 1
    + MAX_GROUPS * (1 + MAX_NAME_LEN);

/// A token's one-time secret. Zeroized on drop; `Debug` prints `TokenSecret(..)`; compared
/// in constant time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TokenSecret([u8; SECRET_LEN]);

impl TokenSecret {
    /// A fresh secret from the OS random number generator.
    pub fn generate() -> TokenSecret {
        let mut secret = TokenSecret([0; SECRET_LEN]);
        // The OS RNG failing is not something the caller can recover from.
        getrandom::getrandom(&mut secret.0).expect("the OS random number generator failed");
        secret
    }

    /// Wraps the bytes a joining host presented.
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> TokenSecret {
        TokenSecret(bytes)
    }

    /// The raw bytes, to present them over an authenticated channel.
    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// SHA-256 of the secret: what the admin host stores instead of the secret.
    pub fn hash(&self) -> SecretHash {
        SecretHash(Sha256::digest(self.0).into())
    }
}

impl PartialEq for TokenSecret {
    /// Constant time.
    fn eq(&self, other: &Self) -> bool {
        self.0[..].ct_eq(&other.0[..]).into()
    }
}

impl Eq for TokenSecret {}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(..)")
    }
}

/// SHA-256 of a [`TokenSecret`]; text form `sha256:` and 64 lowercase hex digits. Knowing
/// it does not let anyone join; equality is constant time.
#[derive(Clone, Copy)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    /// Whether `presented` is the secret this is the hash of, in constant time (no early
    /// exit on the first differing byte).
    pub fn matches(&self, presented: &TokenSecret) -> bool {
        *self == presented.hash()
    }

    /// Wraps a stored hash.
    pub fn from_bytes(bytes: [u8; 32]) -> SecretHash {
        SecretHash(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for SecretHash {
    /// Constant time.
    fn eq(&self, other: &Self) -> bool {
        self.0[..].ct_eq(&other.0[..]).into()
    }
}

impl Eq for SecretHash {}

impl std::hash::Hash for SecretHash {
    /// The bytes, as the (constant-time) equality compares them.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Display for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({self})")
    }
}

impl FromStr for SecretHash {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<SecretHash, TokenError> {
        s.trim()
            .strip_prefix("sha256:")
            .and_then(decode_hex::<32>)
            .map(SecretHash)
            .ok_or(TokenError::Malformed {
                part: "secret hash: expected `sha256:` and 64 hex digits",
            })
    }
}

serde_as_string!(SecretHash);

/// Why a join token was refused or could not be made. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The text is not a join token at all.
    #[error(
        "this is not a join token: a token starts with `ovljoin1.`; copy the whole line `overlayctl token create` printed"
    )]
    NotAToken,
    /// A join token of a format this version does not read.
    #[error(
        "join token format version {version} is not supported (this overlay reads version 1); create the token with the same overlay version, or upgrade"
    )]
    UnknownVersion {
        /// The version in the prefix.
        version: u32,
    },
    /// The token ends inside a part: it was cut when copied.
    #[error("join token is truncated ({part} is cut short); copy the whole token, it is one line")]
    Truncated {
        /// The part being read.
        part: &'static str,
    },
    /// A part holds something no admin host writes.
    #[error("join token is damaged ({part}); copy it again, or create a new one")]
    Malformed {
        /// The part, and what is wrong with it.
        part: &'static str,
    },
    /// Past its expiry (from [`JoinToken::check_expiry`], never from parsing).
    #[error(
        "join token expired at {}; create a new one with `overlayctl token create`",
        Utc(*expires_unix)
    )]
    Expired {
        /// When it expired.
        expires_unix: u64,
    },
    /// [`JoinToken::new`] refused its arguments.
    #[error("cannot create a join token: {reason}; correct it and try again")]
    Invalid {
        /// What is wrong.
        reason: &'static str,
    },
}

impl From<WireError> for TokenError {
    fn from(e: WireError) -> TokenError {
        match e {
            WireError::Truncated(part) => TokenError::Truncated { part },
            WireError::Invalid(part) => TokenError::Malformed { part },
        }
    }
}

/// An invitation to join a network. `Debug` never shows the secret; there is no `Display`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    network: Name,
    endpoints: Vec<SocketAddr>,
    ca_fingerprint: Fingerprint,
    secret: TokenSecret,
    expires_unix: u64,
    groups: Vec<Name>,
}

impl JoinToken {
    /// A token for joining `network` through `endpoints` (1 to [`MAX_ENDPOINTS`], each with
    /// an address and a port, not 0.0.0.0 or port 0; IPv6 flow and scope ids are dropped,
    /// as they mean nothing on another host), pinning the CA by `ca_fingerprint`, valid
    /// until `expires_unix` (exclusive), giving the new host `groups` (at most
    /// [`MAX_GROUPS`](crate::MAX_GROUPS)). Pass `TokenSecret::generate()` as `secret`.
    pub fn new(
        network: Name,
        endpoints: Vec<SocketAddr>,
        ca_fingerprint: Fingerprint,
        secret: TokenSecret,
        expires_unix: u64,
        groups: Vec<Name>,
    ) -> Result<JoinToken, TokenError> {
        JoinToken {
            network,
            endpoints: endpoints
                .into_iter()
                .map(|addr| SocketAddr::new(addr.ip(), addr.port()))
                .collect(),
            ca_fingerprint,
            secret,
            expires_unix,
            groups,
        }
        .checked()
        .map_err(|reason| TokenError::Invalid { reason })
    }

    /// The invariants both `new` and parsing enforce: the token, or what breaks them.
    fn checked(self) -> Result<JoinToken, &'static str> {
        if self.endpoints.is_empty() {
            return Err("it needs at least one bootstrap endpoint");
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err("more endpoints than a token holds");
        }
        if self
            .endpoints
            .iter()
            .any(|addr| addr.port() == 0 || addr.ip().is_unspecified())
        {
            return Err("an endpoint must be a reachable address and port, not 0.0.0.0 or port 0");
        }
        if self.groups.len() > MAX_GROUPS {
            return Err("more groups than a token holds");
        }
        Ok(self)
    }

    /// The network to join.
    pub fn network(&self) -> &Name {
        &self.network
    }

    /// Where to reach a host that can admit the new one.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// The fingerprint of the network's CA: the joining host trusts only this CA.
    pub fn ca_fingerprint(&self) -> Fingerprint {
        self.ca_fingerprint
    }

    /// The one-time secret the joining host presents.
    pub fn secret(&self) -> &TokenSecret {
        &self.secret
    }

    /// The first second (unix time) at which the token is no longer accepted.
    pub fn expires_unix(&self) -> u64 {
        self.expires_unix
    }

    /// The groups the new host's certificate gets.
    pub fn groups(&self) -> &[Name] {
        &self.groups
    }

    /// SHA-256 of the secret: what the admin host stores.
    pub fn secret_hash(&self) -> SecretHash {
        self.secret.hash()
    }

    /// `Ok` while `now_unix` is before the expiry, [`TokenError::Expired`] from then on.
    pub fn check_expiry(&self, now_unix: u64) -> Result<(), TokenError> {
        if now_unix < self.expires_unix {
            Ok(())
        } else {
            Err(TokenError::Expired {
                expires_unix: self.expires_unix,
            })
        }
    }

    /// The text form, `ovljoin1.…`, in a string zeroized when dropped. It holds the secret:
    /// print it for the operator, never log it.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut w = Writer::with_capacity(MAX_TOKEN_LEN);
        w.name(&self.network);
        w.bytes(self.ca_fingerprint.as_bytes());
        w.bytes(&self.secret.0);
        w.u64(self.expires_unix);
        w.count(self.endpoints.len());
        self.endpoints.iter().for_each(|addr| w.socket(addr));
        w.count(self.groups.len());
        self.groups.iter().for_each(|group| w.name(group));
        let bytes = w.finish();
        // Sized for the whole text so the secret is not left in a reallocated buffer.
        let mut text = Zeroizing::new(String::with_capacity(
            TEXT_PREFIX.len() + bytes.len().div_ceil(3) * 4,
        ));
        text.push_str(TEXT_PREFIX);
        BASE64URL.encode_string(bytes.as_slice(), &mut text);
        text
    }

    fn decode(bytes: &[u8]) -> Result<JoinToken, TokenError> {
        let mut r = Reader::new(bytes);
        let network = r.name("network name")?;
        let ca_fingerprint = Fingerprint::from_bytes(r.array("CA fingerprint")?);
        let secret = TokenSecret(r.array("secret")?);
        let expires_unix = r.u64("expiry")?;
        let endpoints = (0..r.count(MAX_ENDPOINTS, "endpoint count")?)
            .map(|_| r.socket("endpoint"))
            .collect::<Result<_, _>>()?;
        let groups = (0..r.count(MAX_GROUPS, "group count")?)
            .map(|_| r.name("group"))
            .collect::<Result<_, _>>()?;
        r.finish()?;
        JoinToken {
            network,
            endpoints,
            ca_fingerprint,
            secret,
            expires_unix,
            groups,
        }
        .checked()
        .map_err(|part| TokenError::Malformed { part })
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;
    /// Parses the text form. Surrounding whitespace is ignored; expiry is not checked here
    /// (see [`JoinToken::check_expiry`]).
    fn from_str(s: &str) -> Result<JoinToken, TokenError> {
        let text = s.trim();
        if let Some(encoded) = text.strip_prefix(TEXT_PREFIX) {
            return JoinToken::decode(&decode_base64url(encoded, "base64url text")?);
        }
        if !text.is_empty() && TEXT_PREFIX.starts_with(text) {
            return Err(TokenError::Truncated { part: "prefix" });
        }
        let (version, _) = text
            .strip_prefix(PREFIX_STEM)
            .and_then(|rest| rest.split_once('.'))
            .ok_or(TokenError::NotAToken)?;
        // At most 9 digits, so the number fits a u32.
        if version.is_empty() || version.len() > 9 || !version.bytes().all(|c| c.is_ascii_digit()) {
            return Err(TokenError::NotAToken);
        }
        match version.parse::<u32>() {
            Ok(version) if version != TOKEN_VERSION => Err(TokenError::UnknownVersion { version }),
            _ => Err(TokenError::NotAToken),
        }
    }
}

#[cfg(test)]
mod tests;
