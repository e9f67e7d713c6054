//! [`CaKey`]: the network's certificate authority, an Ed25519 key held by admin hosts.
//!
//! The CA is the root of trust of a network: nothing that decides where traffic goes is
//! accepted unless it signed it. This module owns issuing node certificates; what a
//! certificate says and how it is checked live in `cert`. It does not decide names,
//! subnets or lifetimes (the caller does), and it does no I/O: store the key with
//! [`write_signing_key_file`](crate::write_signing_key_file) via [`CaKey::signing_key`].

use std::fmt;

use crate::cert::{CERT_SIGNING_CONTEXT, CertError, NodeCertificate, SignedCertificate};
use crate::ed25519::{Fingerprint, SigningKey, VerifyingKey};

/// A network CA's private key. A [`SigningKey`] used only to sign certificates, so its
/// role shows in types; zeroized on drop like every signing key. `Debug` shows the CA's
/// fingerprint (public), never the key.
#[derive(Clone)]
pub struct CaKey(SigningKey);

impl CaKey {
    /// A new random CA key (what `overlayctl init` makes once per network).
    pub fn generate() -> CaKey {
        CaKey(SigningKey::generate())
    }

    /// Uses `key` as a CA key (for example one read from the CA key file).
    pub fn from_signing_key(key: SigningKey) -> CaKey {
        CaKey(key)
    }

    /// The underlying key, to write it to a key file.
    pub fn signing_key(&self) -> &SigningKey {
        &self.0
    }

    /// The CA's public key: what members verify certificates with.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    /// The CA's fingerprint: what join tokens and certificates pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.verifying_key().fingerprint()
    }

    /// Signs `cert`. Refused ([`CertError::NotSignable`]) when its `ca_fingerprint` is not
    /// this CA's, its validity window is backwards, a subnet has host bits set, or it has
    /// more than [`MAX_SUBNETS`](crate::MAX_SUBNETS) subnets or
    /// [`MAX_GROUPS`](crate::MAX_GROUPS) groups: a certificate signed here always verifies
    /// with this CA inside its window.
    pub fn sign(&self, cert: &NodeCertificate) -> Result<SignedCertificate, CertError> {
        cert.check()
            .map_err(|reason| CertError::NotSignable { reason })?;
        if cert.ca_fingerprint != self.fingerprint() {
            return Err(CertError::NotSignable {
                reason: "its CA fingerprint is not this CA's",
            });
        }
        let body = cert.encode();
        let signature = self.0.sign(CERT_SIGNING_CONTEXT, &body);
        Ok(SignedCertificate::from_parts(body, signature))
    }
}

impl From<SigningKey> for CaKey {
    fn from(key: SigningKey) -> CaKey {
        CaKey(key)
    }
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaKey({})", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_key_never_in_debug_output() {
        let ca = CaKey::generate();
        let secret = ca.signing_key().to_base64();
        let shown = format!("{ca:?} {ca:#?}");
        assert!(!shown.contains(&secret[..12]), "{shown}");
        assert_eq!(shown, format!("CaKey({0}) CaKey({0})", ca.fingerprint()));
    }

    #[test]
    fn from_signing_key_keeps_the_key() {
        let key = SigningKey::generate();
        let public = key.verifying_key();
        let ca = CaKey::from(key);
        assert_eq!(ca.verifying_key(), public);
        assert_eq!(ca.fingerprint(), public.fingerprint());
    }
}
