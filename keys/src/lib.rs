//! Key material for the overlay, and the only crate that touches private key bytes.
//!
//! - [`PrivateKey`]: an X25519 static secret. Zeroized on drop; its `Debug` prints
//!   `PrivateKey(..)`, never the bytes. Base64 is the same as `wg genkey`'s.
//! - [`PublicKey`]: an X25519 public key, base64 as `wg pubkey` prints it; serde as a string.
//! - Key files: written 0600; a private key file that group or others may read is
//!   refused ([`KeyError::InsecurePermissions`]), as `wg` warns and innernet refuses.
//!   The same rules hold for Ed25519 signing key files.
//!
//! The identity layer of the control plane (see docs/design.md, "Decisions" and "The control plane"):
//!
//! - [`SigningKey`] / [`VerifyingKey`] (module `ed25519`): each host's Ed25519 key, and
//!   [`Fingerprint`], the short SHA-256 form of a public key operators compare.
//! - [`CaKey`] (module `ca`): the network CA, which signs [`NodeCertificate`]s into
//!   [`SignedCertificate`]s (module `cert`).
//! - [`JoinToken`] (module `token`): single-use, expiring invitations; the admin keeps only
//!   their [`SecretHash`]; a joining host proves it holds its WireGuard key with a
//!   [`JoinProof`].
//! - [`Name`] (module `name`): the one validated form of network, node and group names.
//!
//! Everything here is pure: time comes in as `now_unix` arguments, randomness only from
//! the OS RNG when a key or secret is generated, and there is no I/O besides the key files
//! it is asked to read or write.
#![forbid(unsafe_code)]

mod ca;
mod cert;
mod ed25519;
mod name;
mod time;
mod token;
pub mod wire;

pub use ca::CaKey;
pub use cert::{
    CertError, MAX_GROUPS, MAX_SIGNED_LEN, MAX_SUBNETS, NodeCertificate, SignedCertificate,
};
pub use ed25519::{
    ED25519_KEY_LEN, FINGERPRINT_LEN, Fingerprint, SIGNATURE_LEN, Signature, SignatureError,
    SigningKey, VerifyingKey, read_signing_key_file, write_signing_key_file,
};
pub use name::{InvalidName, Name};
pub use time::Utc;
pub use token::{
    JoinClaim, JoinProof, JoinToken, MAX_ENDPOINTS, PROOF_LEN, ProofError, REKEY_PROOF_LEN,
    RekeyClaim, RekeyProof, SECRET_LEN, SecretHash, TokenError, TokenSecret,
};

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of an X25519 key in bytes.
pub const KEY_LEN: usize = 32;

/// Errors from parsing keys and reading or writing key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not base64 of exactly 32 bytes (what `wg genkey` prints).
    #[error("not a WireGuard key: expected 44 characters of base64 encoding 32 bytes")]
    Malformed,
    /// The text is not base64 of exactly 32 bytes (an Ed25519 private key's seed).
    #[error("not an Ed25519 private key: expected 44 characters of base64 encoding 32 bytes")]
    MalformedSigningKey,
    /// The text is not base64 of an Ed25519 public key, or the key is not a usable point.
    #[error(
        "not an Ed25519 public key: expected 44 characters of base64 encoding a valid curve point; copy the key again"
    )]
    MalformedVerifyingKey,
    /// The text is not a key fingerprint.
    #[error(
        "not a key fingerprint: expected `sha256:` and 32 hex digits, as `overlayctl` prints it"
    )]
    MalformedFingerprint,
    /// The private key file may be read by group or others.
    #[error(
        "private key file {path} has mode {mode:04o}, readable by group or others; run `chmod 600 {path}`"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The key file's content is not a key.
    #[error("key file {path}: {source}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// Why the content is not a key.
        source: Box<KeyError>,
    },
}

/// An X25519 static private key. Zeroized on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// A new random key from the OS, clamped as `wg genkey` clamps it.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        // The OS RNG failing is not something the caller can recover from.
        getrandom::getrandom(&mut bytes).expect("the OS random number generator failed");
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        PrivateKey(bytes)
    }

    /// Parses `wg genkey`-style base64 (surrounding whitespace is ignored).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(PrivateKey)
    }

    /// The key as base64, in a buffer zeroized when dropped.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE64.encode(self.0))
    }

    /// The matching public key (what `wg pubkey` prints).
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.to_static_secret()).to_bytes())
    }

    /// The key as the x25519-dalek type boringtun's `Tunn` takes.
    pub fn to_static_secret(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(self.0)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Wraps raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PublicKey(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key as the x25519-dalek type boringtun takes.
    pub fn to_dalek(&self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(self.0)
    }

    /// A short form for logs: the first 8 base64 characters.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode_key(s).map(PublicKey)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Zeroizing::new(String::deserialize(d)?);
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn decode_key(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let text = text.trim();
    if text.len() != 44 {
        return Err(KeyError::Malformed);
    }
    let decoded = Zeroizing::new(BASE64.decode(text).map_err(|_| KeyError::Malformed)?);
    <[u8; KEY_LEN]>::try_from(decoded.as_slice()).map_err(|_| KeyError::Malformed)
}

/// Writes a private key file (base64 and a newline, like `wg genkey > file`) with mode 0600.
/// An existing file is replaced and its mode set to 0600.
pub fn write_private_key_file(path: &Path, key: &PrivateKey) -> Result<(), KeyError> {
    write_secret_file(path, &key.to_base64())
}

/// Reads a private key file, refusing one that group or others may read.
pub fn read_private_key_file(path: &Path) -> Result<PrivateKey, KeyError> {
    read_secret_file(path, PrivateKey::from_base64)
}

/// Writes `text` and a newline to a secret file with mode 0600, replacing any existing file
/// and narrowing its mode first. Shared by every private key file this crate writes.
pub(crate) fn write_secret_file(path: &Path, text: &str) -> Result<(), KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    // The file may have existed with a wider mode: narrow it before writing the secret.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_err)?;
    // One buffer, one write: the secret and its newline, zeroized when dropped.
    let mut line = Zeroizing::new(String::with_capacity(text.len() + 1));
    line.push_str(text);
    line.push('\n');
    file.write_all(line.as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

/// The most of a secret file that is read: every key file is one short line.
const MAX_SECRET_FILE_LEN: usize = 4096;

/// Reads a secret file, refusing one that group or others may read, and parses its text
/// with `parse`; a parse error becomes [`KeyError::BadFile`] naming the file.
pub(crate) fn read_secret_file<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, KeyError>,
) -> Result<T, KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    // Check the mode of the file actually opened, so it cannot be swapped after the check.
    let file = fs::File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    // Sized up front so the secret is not left behind in a reallocated buffer. A key file
    // is a line; anything larger is not one of ours (and is refused by `parse`).
    let capacity = usize::try_from(meta.len())
        .unwrap_or(0)
        .min(MAX_SECRET_FILE_LEN);
    let mut text = Zeroizing::new(String::with_capacity(capacity));
    file.take(MAX_SECRET_FILE_LEN as u64)
        .read_to_string(&mut text)
        .map_err(io_err)?;
    parse(&text).map_err(|e| KeyError::BadFile {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vector produced by `wg genkey` / `wg pubkey` (wireguard-tools).
    const WG_PRIVATE: &str = "yOgCvBF713v0034DiwYOUqXK0Tu5KK/XGRksDKItpVk=";
    const WG_PUBLIC: &str = "vMfgar6aOfNKDdjQyFIdbek8Vy0bWLu9+KJOG1q8UyQ=";

    #[test]
    fn public_key_matches_wg_pubkey() {
        let key = PrivateKey::from_base64(WG_PRIVATE).unwrap();
        assert_eq!(key.public_key().to_string(), WG_PUBLIC);
        assert_eq!(key.to_base64().as_str(), WG_PRIVATE);
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        assert_ne!(a.to_base64(), b.to_base64());
        assert_eq!(a.0[0] & 7, 0);
        assert_eq!(a.0[31] & 0xc0, 0x40);
    }

    #[test]
    fn private_key_never_in_debug_output() {
        let key = PrivateKey::from_base64(WG_PRIVATE).unwrap();
        let shown = format!("{key:?} {:?} {key:#?}", Some(&key));
        assert!(!shown.contains(WG_PRIVATE), "{shown}");
        assert!(!shown.contains(&WG_PRIVATE[..12]), "{shown}");
        assert!(shown.contains("PrivateKey(..)"));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "abc",
            "!!!!",
            &WG_PRIVATE[..43],
            &format!("{WG_PRIVATE}A"),
        ] {
            assert!(matches!(
                PrivateKey::from_base64(bad),
                Err(KeyError::Malformed)
            ));
            assert!(bad.parse::<PublicKey>().is_err());
        }
        // 44 characters that are not base64 of 32 bytes
        assert!("@".repeat(44).parse::<PublicKey>().is_err());
    }

    #[test]
    fn key_file_is_0600_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.key");
        let key = PrivateKey::generate();
        write_private_key_file(&path, &key).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = read_private_key_file(&path).unwrap();
        assert_eq!(back.public_key(), key.public_key());
    }

    #[test]
    fn group_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.key");
        write_private_key_file(&path, &PrivateKey::generate()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_private_key_file(&path).unwrap_err();
        assert!(matches!(
            err,
            KeyError::InsecurePermissions { mode: 0o640, .. }
        ));
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
