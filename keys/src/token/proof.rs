//! Proof that a joining host holds the private half of the WireGuard key it asks a
//! certificate for. A WireGuard public key is public (every member sees every other's), so
//! presenting one proves nothing; without this, a token holder could be certified with
//! another host's key.
//!
//! The joining host and the admin agree on an X25519 secret between the joiner's WireGuard
//! key and the admin's (the one in the certificate the admin showed in the TLS handshake),
//! and the joiner sends a MAC keyed by it over everything it asks for ([`JoinClaim`]):
//!
//! ```text
//! dh    = X25519(joiner private, admin public)         refused if all zero (RFC 7748 §6.1)
//! key   = HMAC-SHA256(key = "ovl-join-proof/1", dh)   (HKDF-Extract, RFC 5869 §2.2)
//! proof = HMAC-SHA256(key, "ovl-join-proof/1" | network | CA fingerprint | name
//!                          | joiner public | admin public | control key | subnet | secret)
//! ```
//!
//! (names length-prefixed, a subnet as `0` or `1 | family | address | prefix`, in the
//! `wire` module's encoding). Only the holder of the joiner's private key (or of the
//! admin's) can compute it: the static-static agreement of Noise's `ss` token, which
//! WireGuard's own handshake also mixes in. The admin checks it with its private key, in
//! constant time. The token's secret in the MAC binds the proof to one single-use
//! invitation, the admin's key to the admin the joiner meant (a member relaying the join to
//! another would hold the wrong key), and every other field to what is certified.
//!
//! Secrets (the agreement, the derived key, the encoded claim with the token's secret) are
//! zeroized when dropped.

use std::fmt;

use hmac::{Hmac, Mac};
use ipnet::IpNet;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::TokenSecret;
use crate::ed25519::{Fingerprint, VerifyingKey};
use crate::name::Name;
use crate::wire::Writer;
use crate::{KEY_LEN, PrivateKey, PublicKey};

/// Length of a [`JoinProof`] in bytes.
pub const PROOF_LEN: usize = 32;

/// Domain separation: the key derivation and the MAC of this protocol, version 1.
const LABEL: &[u8] = b"ovl-join-proof/1";

/// Everything a join asks for, as both sides see it; the proof covers all of it.
#[derive(Debug, Clone, Copy)]
pub struct JoinClaim<'a> {
    /// The network joined (the token's).
    pub network: &'a Name,
    /// The network CA's fingerprint (the token's).
    pub ca: Fingerprint,
    /// The token's secret.
    pub secret: &'a TokenSecret,
    /// The name asked for.
    pub name: &'a Name,
    /// The control key the certificate will carry.
    pub control_key: &'a VerifyingKey,
    /// The subnet asked for, if any.
    pub subnet: Option<IpNet>,
}

/// Why a proof was not made or not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// A key is a low-order point: the agreement with it is all zero, whatever the other
    /// key, so it proves nothing.
    #[error(
        "WireGuard key {0} is not usable: it is a low-order point, with which every X25519 agreement is zero; generate a key with `wg genkey`"
    )]
    LowOrderKey(PublicKey),
    /// The MAC does not match: the joiner does not hold the private key, or the claim or
    /// the admin key it used differ from the admin's.
    #[error("the joining host did not prove that it holds the private key of WireGuard key {0}")]
    Mismatch(PublicKey),
}

/// A joining host's proof that it holds its WireGuard private key, bound to one join.
/// Compared only in constant time, by [`JoinProof::verify`].
#[derive(Clone, Copy)]
pub struct JoinProof([u8; PROOF_LEN]);

impl JoinProof {
    /// The joining host's side: proves it holds `joiner` to the admin whose WireGuard key
    /// is `admin`, for `claim`.
    pub fn prove(
        claim: &JoinClaim<'_>,
        joiner: &PrivateKey,
        admin: &PublicKey,
    ) -> Result<JoinProof, ProofError> {
        let key = agreement(joiner, admin)?;
        Ok(JoinProof(
            mac(key.as_slice(), claim, &joiner.public_key(), admin)
                .finalize()
                .into_bytes()
                .into(),
        ))
    }

    /// The admin's side: whether this proves that the sender holds the private half of
    /// `joiner`, for `claim`, to the admin whose private WireGuard key is `admin`.
    pub fn verify(
        &self,
        claim: &JoinClaim<'_>,
        joiner: &PublicKey,
        admin: &PrivateKey,
    ) -> Result<(), ProofError> {
        let key = agreement(admin, joiner)?;
        // `verify_slice` compares in constant time (the `subtle` crate).
        mac(key.as_slice(), claim, joiner, &admin.public_key())
            .verify_slice(&self.0)
            .map_err(|_| ProofError::Mismatch(*joiner))
    }

    /// Wraps the bytes a joining host sent.
    pub fn from_bytes(bytes: [u8; PROOF_LEN]) -> JoinProof {
        JoinProof(bytes)
    }

    /// The raw bytes, to send.
    pub fn to_bytes(&self) -> [u8; PROOF_LEN] {
        self.0
    }
}

impl fmt::Debug for JoinProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinProof(..)")
    }
}

/// The MAC key from the X25519 agreement of `mine` and `theirs`; refuses a low-order
/// `theirs` (an all-zero agreement), as RFC 7748 §6.1 allows and WireGuard does.
fn agreement(
    mine: &PrivateKey,
    theirs: &PublicKey,
) -> Result<Zeroizing<[u8; KEY_LEN]>, ProofError> {
    // Both zeroized on drop (x25519-dalek's `zeroize` feature).
    let secret = mine.to_static_secret();
    let shared = secret.diffie_hellman(&theirs.to_dalek());
    if !shared.was_contributory() {
        return Err(ProofError::LowOrderKey(*theirs));
    }
    let mut extract = new_mac(LABEL);
    extract.update(shared.as_bytes());
    Ok(Zeroizing::new(extract.finalize().into_bytes().into()))
}

/// The MAC over `claim` and both WireGuard keys, keyed by `key`, not yet finalized.
fn mac(key: &[u8], claim: &JoinClaim<'_>, joiner: &PublicKey, admin: &PublicKey) -> Hmac<Sha256> {
    let mut w = Writer::with_capacity(LABEL.len() + 2 * 64 + 16 + 4 * KEY_LEN + 20 + 32);
    w.bytes(LABEL);
    w.name(claim.network);
    w.bytes(claim.ca.as_bytes());
    w.name(claim.name);
    w.bytes(joiner.as_bytes());
    w.bytes(admin.as_bytes());
    w.bytes(claim.control_key.as_bytes());
    match &claim.subnet {
        None => w.u8(0),
        Some(net) => {
            w.u8(1);
            w.subnet(net);
        }
    }
    w.bytes(claim.secret.as_bytes());
    let mut mac = new_mac(key);
    mac.update(&w.finish());
    mac
}

fn new_mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;

    struct Join {
        network: Name,
        ca: Fingerprint,
        secret: TokenSecret,
        name: Name,
        control_key: VerifyingKey,
        subnet: Option<IpNet>,
    }

    impl Join {
        fn new() -> Join {
            Join {
                network: "prod".parse().unwrap(),
                ca: SigningKey::from_seed([1; 32]).verifying_key().fingerprint(),
                secret: TokenSecret::from_bytes([7; 32]),
                name: "h2".parse().unwrap(),
                control_key: SigningKey::from_seed([2; 32]).verifying_key(),
                subnet: Some("10.42.2.0/24".parse().unwrap()),
            }
        }

        fn claim(&self) -> JoinClaim<'_> {
            JoinClaim {
                network: &self.network,
                ca: self.ca,
                secret: &self.secret,
                name: &self.name,
                control_key: &self.control_key,
                subnet: self.subnet,
            }
        }
    }

    #[test]
    fn the_key_holder_proves_and_nobody_else_does() {
        let (joiner, admin, stranger) = (
            PrivateKey::generate(),
            PrivateKey::generate(),
            PrivateKey::generate(),
        );
        let join = Join::new();
        let claim = join.claim();
        let proof = JoinProof::prove(&claim, &joiner, &admin.public_key()).unwrap();
        assert_eq!(proof.verify(&claim, &joiner.public_key(), &admin), Ok(()));
        // Someone without the joiner's private key proves with a key it holds: refused.
        let forged = JoinProof::prove(&claim, &stranger, &admin.public_key()).unwrap();
        assert_eq!(
            forged.verify(&claim, &joiner.public_key(), &admin),
            Err(ProofError::Mismatch(joiner.public_key()))
        );
        // A proof made for another admin (a member relaying the join) is refused.
        let relayed = JoinProof::prove(&claim, &joiner, &stranger.public_key()).unwrap();
        assert!(
            relayed
                .verify(&claim, &joiner.public_key(), &admin)
                .is_err()
        );
        assert!(
            JoinProof::from_bytes([0; PROOF_LEN])
                .verify(&claim, &joiner.public_key(), &admin)
                .is_err()
        );
    }

    #[test]
    fn the_proof_covers_every_field_of_the_claim() {
        let (joiner, admin) = (PrivateKey::generate(), PrivateKey::generate());
        let join = Join::new();
        let proof = JoinProof::prove(&join.claim(), &joiner, &admin.public_key()).unwrap();
        let other_name: Name = "h3".parse().unwrap();
        let other_key = SigningKey::from_seed([3; 32]).verifying_key();
        let other_secret = TokenSecret::from_bytes([8; 32]);
        let other_network: Name = "lab".parse().unwrap();
        let changed = [
            JoinClaim {
                name: &other_name,
                ..join.claim()
            },
            JoinClaim {
                control_key: &other_key,
                ..join.claim()
            },
            JoinClaim {
                secret: &other_secret,
                ..join.claim()
            },
            JoinClaim {
                subnet: None,
                ..join.claim()
            },
            JoinClaim {
                subnet: Some("10.42.3.0/24".parse().unwrap()),
                ..join.claim()
            },
            JoinClaim {
                network: &other_network,
                ..join.claim()
            },
            JoinClaim {
                ca: SigningKey::from_seed([4; 32]).verifying_key().fingerprint(),
                ..join.claim()
            },
        ];
        for claim in changed {
            assert!(
                proof.verify(&claim, &joiner.public_key(), &admin).is_err(),
                "{claim:?}"
            );
        }
    }

    #[test]
    fn low_order_keys_prove_nothing() {
        let admin = PrivateKey::generate();
        let join = Join::new();
        // The all-zero point and a point of order 8 (RFC 7748 §6.1, Curve25519's list).
        let zero = PublicKey::from_bytes([0; KEY_LEN]);
        let mut order8 = [0u8; KEY_LEN];
        order8[0] = 0xe0;
        order8[1..31].copy_from_slice(&[
            0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
            0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f,
            0x49, 0xb8,
        ]);
        let order8 = PublicKey::from_bytes(order8);
        for weak in [zero, order8] {
            let proof = JoinProof::from_bytes([0; PROOF_LEN]);
            assert_eq!(
                proof.verify(&join.claim(), &weak, &admin),
                Err(ProofError::LowOrderKey(weak))
            );
            let e = JoinProof::prove(&join.claim(), &admin, &weak).unwrap_err();
            assert!(e.to_string().contains("low-order"), "{e}");
        }
    }

    #[test]
    fn a_proof_never_shows_its_bytes() {
        let proof = JoinProof::from_bytes([0xab; PROOF_LEN]);
        assert_eq!(format!("{proof:?}"), "JoinProof(..)");
    }
}
