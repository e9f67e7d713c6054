//! Ed25519 keys: each host's control-plane identity, and the CA's key underneath [`CaKey`].
//!
//! - [`SigningKey`]: the private key (its 32-byte seed). Zeroized on drop; `Debug` prints
//!   `SigningKey(..)`; base64 text like a WireGuard key; key files with the same 0600 rules.
//! - [`VerifyingKey`]: the public key; base64 text; serde as a string. Weak (small-order)
//!   keys are refused when parsed, so every `VerifyingKey` can verify meaningfully.
//! - [`Fingerprint`]: `sha256:` and the first 16 bytes of SHA-256 of the public key, in hex;
//!   what an operator compares and what certificates and join tokens pin.
//! - [`Signature`]: made over a *context* and a message, so a signature made for one
//!   purpose never verifies for another.
//!
//! [`CaKey`]: crate::CaKey

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::Signer;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::KeyError;

/// Length of an Ed25519 key (seed or public key) in bytes.
pub const ED25519_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;
/// Length of a [`Fingerprint`] in bytes (half of a SHA-256 digest: 128 bits, enough
/// against second preimages, short enough to read aloud).
pub const FINGERPRINT_LEN: usize = 16;

/// An Ed25519 private key. Zeroized on drop (ed25519-dalek's `zeroize` feature); never
/// printed.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// A new random key from the OS random number generator.
    pub fn generate() -> SigningKey {
        let mut seed = Zeroizing::new([0u8; ED25519_KEY_LEN]);
        // The OS RNG failing is not something the caller can recover from.
        getrandom::getrandom(seed.as_mut_slice()).expect("the OS random number generator failed");
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// Parses base64 of the 32-byte seed (surrounding whitespace is ignored).
    pub fn from_base64(text: &str) -> Result<SigningKey, KeyError> {
        let seed = decode_32(text).ok_or(KeyError::MalformedSigningKey)?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// The seed as base64, in a buffer zeroized when dropped.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE64.encode(self.0.as_bytes()))
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.0.verifying_key())
    }

    /// Signs `message` for `context` (a fixed string naming the purpose, such as
    /// `"overlay node certificate v1"`). What is signed is the context's length (8 bytes,
    /// big-endian), the context, then the message, so no signature made for one context
    /// verifies for another, whatever the messages.
    pub fn sign(&self, context: &str, message: &[u8]) -> Signature {
        Signature(self.0.sign(&with_context(context, message)).to_bytes())
    }

    /// The key as PKCS#8 DER (RFC 8410's `OneAsymmetricKey`, with the public key), in a
    /// buffer zeroized when dropped: the form TLS libraries (rustls, rcgen) load keys from.
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        // Encoding a 32-byte seed and its public key into a fixed ASN.1 structure cannot
        // fail: the only errors are from unsupported algorithms or lengths.
        let document = self
            .0
            .to_pkcs8_der()
            .expect("encoding an Ed25519 key as PKCS#8 cannot fail");
        Zeroizing::new(document.as_bytes().to_vec())
    }

    /// A key from a fixed seed, for deterministic tests.
    #[cfg(test)]
    pub(crate) fn from_seed(seed: [u8; ED25519_KEY_LEN]) -> SigningKey {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

fn with_context(context: &str, message: &[u8]) -> Vec<u8> {
    let mut signed = Vec::with_capacity(8 + context.len() + message.len());
    signed.extend_from_slice(&(context.len() as u64).to_be_bytes());
    signed.extend_from_slice(context.as_bytes());
    signed.extend_from_slice(message);
    signed
}

fn decode_32(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let text = text.trim();
    if text.len() != 44 {
        return None;
    }
    let decoded = Zeroizing::new(BASE64.decode(text).ok()?);
    if decoded.len() != 32 {
        return None;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&decoded);
    Some(out)
}

/// An Ed25519 public key, never a weak (small-order) one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyingKey(ed25519_dalek::VerifyingKey);

/// A signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the signature does not verify: the message was altered or signed by another key")]
pub struct SignatureError;

impl VerifyingKey {
    /// The key from its 32 bytes; refused if they are not a point on the curve or the point
    /// is weak (of small order: such a key "verifies" signatures nobody made).
    pub fn from_bytes(bytes: &[u8; ED25519_KEY_LEN]) -> Result<VerifyingKey, KeyError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map_err(|_| KeyError::MalformedVerifyingKey)?;
        if key.is_weak() {
            return Err(KeyError::MalformedVerifyingKey);
        }
        Ok(VerifyingKey(key))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; ED25519_KEY_LEN] {
        self.0.as_bytes()
    }

    /// `sha256:` and the first 16 bytes of SHA-256 of the key bytes.
    pub fn fingerprint(&self) -> Fingerprint {
        let digest = Sha256::digest(self.as_bytes());
        let mut short = [0u8; FINGERPRINT_LEN];
        short.copy_from_slice(&digest[..FINGERPRINT_LEN]);
        Fingerprint(short)
    }

    /// Checks a signature made by [`SigningKey::sign`] with the same context. Strict
    /// verification: non-canonical and small-order signature parts are refused.
    pub fn verify(
        &self,
        context: &str,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.0
            .verify_strict(&with_context(context, message), &signature)
            .map_err(|_| SignatureError)
    }
}

impl PartialOrd for VerifyingKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for VerifyingKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.as_bytes()))
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({self})")
    }
}

impl FromStr for VerifyingKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<VerifyingKey, KeyError> {
        let bytes = decode_32(s).ok_or(KeyError::MalformedVerifyingKey)?;
        VerifyingKey::from_bytes(&bytes)
    }
}

/// The short, comparable form of a [`VerifyingKey`]: the first 16 bytes of SHA-256 of its
/// 32 bytes, shown as `sha256:` and 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; FINGERPRINT_LEN]);

impl Fingerprint {
    /// Wraps raw bytes (as stored in certificates and tokens).
    pub fn from_bytes(bytes: [u8; FINGERPRINT_LEN]) -> Fingerprint {
        Fingerprint(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; FINGERPRINT_LEN] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = KeyError;
    /// Parses `sha256:` and 32 hex digits (either case; printed in lower case).
    fn from_str(s: &str) -> Result<Fingerprint, KeyError> {
        let hex = s
            .trim()
            .strip_prefix("sha256:")
            .ok_or(KeyError::MalformedFingerprint)?;
        let bytes = decode_hex::<FINGERPRINT_LEN>(hex).ok_or(KeyError::MalformedFingerprint)?;
        Ok(Fingerprint(bytes))
    }
}

/// Exactly `2 * N` hex digits to `N` bytes.
pub(crate) fn decode_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    let hex = hex.as_bytes();
    if hex.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16);
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        // Each digit is below 16, so the byte fits.
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature([u8; SIGNATURE_LEN]);

impl Signature {
    /// Wraps raw bytes (whether they verify is for [`VerifyingKey::verify`] to say).
    pub fn from_bytes(bytes: [u8; SIGNATURE_LEN]) -> Signature {
        Signature(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; SIGNATURE_LEN] {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", BASE64.encode(self.0))
    }
}

macro_rules! serde_as_string {
    ($type:ty) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <String as serde::Deserialize>::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_as_string;

serde_as_string!(VerifyingKey);
serde_as_string!(Fingerprint);

/// Writes an Ed25519 private key file (base64 of the seed and a newline) with mode 0600;
/// an existing file is replaced and its mode set to 0600.
pub fn write_signing_key_file(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    crate::write_secret_file(path, &key.to_base64())
}

/// Reads an Ed25519 private key file, refusing one that group or others may read.
pub fn read_signing_key_file(path: &Path) -> Result<SigningKey, KeyError> {
    crate::read_secret_file(path, SigningKey::from_base64)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    // RFC 8032, section 7.1, TEST 1.
    const RFC_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn rfc_key() -> SigningKey {
        SigningKey::from_seed(decode_hex::<32>(RFC_SEED).unwrap())
    }

    #[test]
    fn public_key_matches_rfc_8032() {
        let public = rfc_key().verifying_key();
        assert_eq!(public.as_bytes(), &decode_hex::<32>(RFC_PUBLIC).unwrap());
    }

    #[test]
    fn pkcs8_der_holds_the_seed_and_public_key() {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let key = rfc_key();
        let der = key.to_pkcs8_der();
        let back = ed25519_dalek::SigningKey::from_pkcs8_der(&der).unwrap();
        assert_eq!(back.to_bytes(), decode_hex::<32>(RFC_SEED).unwrap());
        assert_eq!(
            back.verifying_key().as_bytes(),
            key.verifying_key().as_bytes()
        );
        // RFC 8410 version 2 (with the public key): 0x30 0x51 0x02 0x01 0x01, the OID
        // 1.3.101.112, the seed, then the public key at the end.
        assert_eq!(&der[..5], &[0x30, 0x51, 0x02, 0x01, 0x01]);
        assert_eq!(&der[7..12], &[0x06, 0x03, 0x2b, 0x65, 0x70]);
        assert_eq!(&der[16..48], &decode_hex::<32>(RFC_SEED).unwrap());
        assert_eq!(&der[der.len() - 32..], key.verifying_key().as_bytes());
    }

    #[test]
    fn text_forms_round_trip() {
        let key = SigningKey::generate();
        let back = SigningKey::from_base64(&format!("  {}\n", key.to_base64().as_str())).unwrap();
        assert_eq!(back.verifying_key(), key.verifying_key());

        let public = key.verifying_key();
        let text = public.to_string();
        assert_eq!(text.len(), 44);
        assert_eq!(text.parse::<VerifyingKey>().unwrap(), public);
        let json = serde_json::to_string(&public).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<VerifyingKey>(&json).unwrap(), public);

        let fingerprint = public.fingerprint();
        let shown = fingerprint.to_string();
        assert_eq!(shown.len(), "sha256:".len() + 32);
        assert_eq!(shown.parse::<Fingerprint>().unwrap(), fingerprint);
        assert_eq!(
            shown
                .to_uppercase()
                .replace("SHA256", "sha256")
                .parse::<Fingerprint>()
                .unwrap(),
            fingerprint
        );
        let json = serde_json::to_string(&fingerprint).unwrap();
        assert_eq!(
            serde_json::from_str::<Fingerprint>(&json).unwrap(),
            fingerprint
        );
    }

    #[test]
    fn fingerprint_is_sha256_of_the_key_bytes() {
        let public = rfc_key().verifying_key();
        let digest = Sha256::digest(public.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(public.fingerprint().to_string(), format!("sha256:{hex}"));
    }

    #[test]
    fn signatures_are_bound_to_key_context_and_message() {
        let key = SigningKey::generate();
        let public = key.verifying_key();
        let signature = key.sign("test context", b"message");
        assert_eq!(
            public.verify("test context", b"message", &signature),
            Ok(())
        );
        assert_eq!(
            public.verify("other context", b"message", &signature),
            Err(SignatureError)
        );
        assert_eq!(
            public.verify("test context", b"messagE", &signature),
            Err(SignatureError)
        );
        // Moving bytes between context and message does not keep a signature valid.
        assert_eq!(
            public.verify("test contex", b"tmessage", &signature),
            Err(SignatureError)
        );
        let other = SigningKey::generate().verifying_key();
        assert_eq!(
            other.verify("test context", b"message", &signature),
            Err(SignatureError)
        );
    }

    #[test]
    fn signed_message_is_context_length_context_then_message() {
        let key = rfc_key();
        let signature = key.sign("ctx", b"msg");
        let mut signed = 3u64.to_be_bytes().to_vec();
        signed.extend_from_slice(b"ctxmsg");
        let dalek =
            ed25519_dalek::VerifyingKey::from_bytes(key.verifying_key().as_bytes()).unwrap();
        let raw = ed25519_dalek::Signature::from_bytes(signature.as_bytes());
        assert!(dalek.verify_strict(&signed, &raw).is_ok());
    }

    #[test]
    fn signing_key_never_in_debug_output() {
        let key = rfc_key();
        let secret = key.to_base64();
        let shown = format!("{key:?} {:?} {key:#?}", Some(&key));
        assert!(!shown.contains(secret.as_str()), "{shown}");
        assert!(!shown.contains(&secret[..12]), "{shown}");
        assert!(!shown.contains(&RFC_SEED[..12]), "{shown}");
        assert!(shown.contains("SigningKey(..)"));
    }

    #[test]
    fn malformed_and_weak_keys_are_refused() {
        let good = SigningKey::generate().verifying_key().to_string();
        for bad in ["", "abc", &good[..43], &format!("{good}A"), &"@".repeat(44)] {
            assert!(matches!(
                SigningKey::from_base64(bad),
                Err(KeyError::MalformedSigningKey)
            ));
            assert!(matches!(
                bad.parse::<VerifyingKey>(),
                Err(KeyError::MalformedVerifyingKey)
            ));
        }
        // The identity point (small order) is a valid encoding but a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            VerifyingKey::from_bytes(&identity),
            Err(KeyError::MalformedVerifyingKey)
        ));
        for bad in [
            "",
            "sha256:",
            "sha256:zz",
            "md5:00",
            &format!("sha256:{}", "0".repeat(31)),
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn key_file_is_0600_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let key = SigningKey::generate();
        write_signing_key_file(&path, &key).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            read_signing_key_file(&path).unwrap().verifying_key(),
            key.verifying_key()
        );

        // Overwriting a wider file narrows it.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_signing_key_file(&path, &key).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        write_signing_key_file(&path, &SigningKey::generate()).unwrap();
        for mode in [0o640, 0o604, 0o660, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = read_signing_key_file(&path).unwrap_err();
            assert!(
                matches!(err, KeyError::InsecurePermissions { mode: m, .. } if m == mode),
                "{err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn key_file_with_other_content_is_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        fs::write(&path, "not a key\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = read_signing_key_file(&path).unwrap_err();
        assert!(matches!(err, KeyError::BadFile { .. }), "{err}");
        assert!(err.to_string().contains("signing.key"), "{err}");
    }
}
