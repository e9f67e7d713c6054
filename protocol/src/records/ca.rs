//! [`CaTransition`]: the record that moves a network from one CA to the next
//! (`overlayctl ca rotate`), and the set of CAs a member trusts because of it.
//!
//! The record names the network, the CA in force (`old`), the one that replaces it (`new`)
//! and the transition's window; it is signed by **both** keys over the same body: the old
//! CA's signature (the cross-signature) says the network's authority hands over, the new
//! one's that whoever made it holds the new key. Until `end_unix` a member trusts both CAs
//! (certificates, revocations and the policy of either); from `end_unix` on the old CA is
//! retired and nothing it signed is accepted.
//!
//! A directory takes a transition only if a CA it trusts signed it: it rotates (its CA is
//! `old`) or, for a host that joined under the new CA during the window, it learns which
//! CA the members not yet renewed still hold (its CA is `new`). A record made by a member
//! for a CA of its own (signed only by the new key), one whose window was altered (both
//! signatures fail), or an older transition replayed (neither key is this directory's CA)
//! is refused.
//!
//! ```text
//! body   = format u8 = 1 | network name | old CA key [32] | new CA key [32]
//!          | start u64 | end u64
//! signed = body length u16 | body | signature of the old CA [64] | of the new CA [64]
//! ```
//!
//! Both signatures are made under [`CA_TRANSITION_CONTEXT`]. No I/O, no clock.

use keys::wire::{Reader, Writer};
use keys::{CaKey, Fingerprint, Name, SIGNATURE_LEN, Signature, VerifyingKey};

use super::RecordError;

/// The signing context of transition bodies.
pub const CA_TRANSITION_CONTEXT: &str = "overlay ca transition v1";

/// The shortest transition window accepted: a network needs time to renew.
pub const MIN_TRANSITION_S: u64 = 10;
/// The longest (a year).
pub const MAX_TRANSITION_S: u64 = 365 * 86_400;

const FORMAT_VERSION: u8 = 1;
const MAX_BODY_LEN: usize = 1 + 64 + 32 + 32 + 8 + 8;

/// What a CA transition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaTransition {
    /// The network.
    pub network: Name,
    /// The CA in force until the transition (retired at `end_unix`).
    pub old: VerifyingKey,
    /// The CA from the transition on.
    pub new: VerifyingKey,
    /// When the admin rotated (unix seconds).
    pub start_unix: u64,
    /// When the old CA is retired (unix seconds).
    pub end_unix: u64,
}

impl CaTransition {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(MAX_BODY_LEN);
        w.u8(FORMAT_VERSION);
        w.name(&self.network);
        w.bytes(self.old.as_bytes());
        w.bytes(self.new.as_bytes());
        w.u64(self.start_unix);
        w.u64(self.end_unix);
        w.finish_plain()
    }

    fn decode(body: &[u8]) -> Result<CaTransition, RecordError> {
        let mut r = Reader::new(body);
        let version = r.u8("format version")?;
        if version != FORMAT_VERSION {
            return Err(RecordError::UnsupportedVersion { version });
        }
        let network = r.name("network name")?;
        let key = |bytes: [u8; 32]| {
            VerifyingKey::from_bytes(&bytes).map_err(|_| RecordError::Malformed {
                part: "CA key: not an Ed25519 key",
            })
        };
        let old = key(r.array("old CA key")?)?;
        let new = key(r.array("new CA key")?)?;
        let transition = CaTransition {
            network,
            old,
            new,
            start_unix: r.u64("start")?,
            end_unix: r.u64("end")?,
        };
        r.finish()?;
        Ok(transition)
    }

    /// Signs the transition with both CAs. Refused when `old` and `new` are not the keys
    /// given, are the same, or the window is outside [`MIN_TRANSITION_S`] to
    /// [`MAX_TRANSITION_S`].
    pub fn sign(&self, old: &CaKey, new: &CaKey) -> Result<SignedCaTransition, RecordError> {
        if old.verifying_key() != self.old || new.verifying_key() != self.new {
            return Err(RecordError::NotSignable {
                reason: "the CA keys given are not the transition's",
            });
        }
        self.check()?;
        let body = self.encode();
        let by_old = old.signing_key().sign(CA_TRANSITION_CONTEXT, &body);
        let by_new = new.signing_key().sign(CA_TRANSITION_CONTEXT, &body);
        Ok(SignedCaTransition {
            body,
            by_old,
            by_new,
            transition: self.clone(),
        })
    }

    fn check(&self) -> Result<(), RecordError> {
        if self.old == self.new {
            return Err(RecordError::Malformed {
                part: "CA transition: the old and the new CA are the same key",
            });
        }
        let window = self.end_unix.saturating_sub(self.start_unix);
        if !(MIN_TRANSITION_S..=MAX_TRANSITION_S).contains(&window) {
            return Err(RecordError::Malformed {
                part: "CA transition: the window is not between 10 seconds and a year",
            });
        }
        Ok(())
    }
}

/// A transition and both CAs' signatures over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCaTransition {
    body: Vec<u8>,
    by_old: Signature,
    by_new: Signature,
    transition: CaTransition,
}

impl SignedCaTransition {
    /// What it says; unverified until [`verify`](Self::verify).
    pub fn transition(&self) -> &CaTransition {
        &self.transition
    }

    /// Checks both signatures (each CA the body names signed it) and the window.
    pub fn verify(&self) -> Result<&CaTransition, RecordError> {
        let t = &self.transition;
        t.check()?;
        let forged = |which: &'static str| RecordError::UntrustedTransition {
            old: t.old.fingerprint(),
            new: t.new.fingerprint(),
            reason: which,
        };
        t.old
            .verify(CA_TRANSITION_CONTEXT, &self.body, &self.by_old)
            .map_err(|_| forged("the old CA did not sign it"))?;
        t.new
            .verify(CA_TRANSITION_CONTEXT, &self.body, &self.by_new)
            .map_err(|_| forged("the new CA did not sign it"))?;
        Ok(t)
    }

    /// `body length u16 | body | signature of the old CA | of the new CA`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(2 + self.body.len() + 2 * SIGNATURE_LEN);
        // Bodies are at most MAX_BODY_LEN bytes: `sign` and `from_bytes` only make such.
        w.u16(u16::try_from(self.body.len()).unwrap_or(u16::MAX));
        w.bytes(&self.body);
        w.bytes(self.by_old.as_bytes());
        w.bytes(self.by_new.as_bytes());
        w.finish_plain()
    }

    /// Reads bytes from [`to_bytes`](Self::to_bytes); no signature is checked here.
    pub fn from_bytes(bytes: &[u8]) -> Result<SignedCaTransition, RecordError> {
        let mut r = Reader::new(bytes);
        let len = usize::from(r.u16("length")?);
        if len > MAX_BODY_LEN {
            return Err(RecordError::Malformed {
                part: "length: longer than any CA transition",
            });
        }
        let body = r.bytes(len, "body")?.to_vec();
        let by_old = Signature::from_bytes(r.array("old CA signature")?);
        let by_new = Signature::from_bytes(r.array("new CA signature")?);
        r.finish()?;
        let transition = CaTransition::decode(&body)?;
        Ok(SignedCaTransition {
            body,
            by_old,
            by_new,
            transition,
        })
    }
}

/// The CAs a directory trusts: the one in force and, during a transition, the one it
/// replaces, until the transition's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trust {
    /// The CA in force.
    pub current: VerifyingKey,
    /// The CA being retired, and the unix second from which it is refused.
    pub previous: Option<(VerifyingKey, u64)>,
}

impl Trust {
    /// Only `ca`.
    pub fn only(ca: VerifyingKey) -> Trust {
        Trust {
            current: ca,
            previous: None,
        }
    }

    /// The CA with fingerprint `fingerprint` if it is trusted at `now_unix`, or why not.
    pub fn key(&self, fingerprint: &Fingerprint, now_unix: u64) -> Result<&VerifyingKey, Refusal> {
        if self.current.fingerprint() == *fingerprint {
            return Ok(&self.current);
        }
        match &self.previous {
            Some((old, end)) if old.fingerprint() == *fingerprint => {
                if now_unix < *end {
                    Ok(old)
                } else {
                    Err(Refusal::Retired {
                        retired: *fingerprint,
                        at: *end,
                        current: self.current.fingerprint(),
                    })
                }
            }
            _ => Err(Refusal::Unknown {
                found: *fingerprint,
                current: self.current.fingerprint(),
            }),
        }
    }
}

/// Why a CA is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The network retired it (`overlayctl ca rotate`).
    #[error(
        "CA {retired} was retired at {} (the network rotated to CA {current}); what it signed is refused: a host holding its certificate must join again with a token of the new CA (`overlayctl join TOKEN`, make one on an admin with `overlayctl token create`)",
        keys::Utc(*at)
    )]
    Retired {
        /// The retired CA.
        retired: Fingerprint,
        /// When.
        at: u64,
        /// The CA in force.
        current: Fingerprint,
    },
    /// Not this network's CA.
    #[error("CA {found} is not this network's CA {current}")]
    Unknown {
        /// The CA named.
        found: Fingerprint,
        /// The CA in force.
        current: Fingerprint,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(old: &CaKey, new: &CaKey, start: u64, end: u64) -> CaTransition {
        CaTransition {
            network: Name::new("net").unwrap(),
            old: old.verifying_key(),
            new: new.verifying_key(),
            start_unix: start,
            end_unix: end,
        }
    }

    #[test]
    fn a_transition_round_trips_and_verifies() {
        let (old, new) = (CaKey::generate(), CaKey::generate());
        let t = transition(&old, &new, 1000, 1030);
        let signed = t.sign(&old, &new).unwrap();
        let back = SignedCaTransition::from_bytes(&signed.to_bytes()).unwrap();
        assert_eq!(back, signed);
        assert_eq!(back.verify().unwrap(), &t);
        // Every truncation is refused, never a panic.
        let bytes = signed.to_bytes();
        for len in 0..bytes.len() {
            assert!(SignedCaTransition::from_bytes(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn a_member_cannot_install_a_ca_of_its_own() {
        // Signed by the new key only: the member has no old CA key; it signs with its own.
        let (old, own) = (CaKey::generate(), CaKey::generate());
        let t = transition(&old, &own, 1000, 1030);
        let signed = t.sign(&own, &own);
        assert!(signed.is_err(), "the keys given are not the transition's");
        // Forge the bytes: body of (old → own), both signatures by `own`.
        let fake = transition(&own, &own, 1000, 1030);
        assert!(fake.sign(&own, &own).is_err(), "old and new the same key");
        let good = t.sign(&old, &CaKey::generate());
        assert!(good.is_err());
        let mut bytes = SignedCaTransition {
            body: t.encode(),
            by_old: own.signing_key().sign(CA_TRANSITION_CONTEXT, &t.encode()),
            by_new: own.signing_key().sign(CA_TRANSITION_CONTEXT, &t.encode()),
            transition: t.clone(),
        }
        .to_bytes();
        let forged = SignedCaTransition::from_bytes(&bytes).unwrap();
        assert!(matches!(
            forged.verify(),
            Err(RecordError::UntrustedTransition { .. })
        ));
        // A byte flipped in the window (a later end, to keep the old CA longer).
        let real = t.sign(&old, &own).unwrap().to_bytes();
        bytes.clone_from(&real);
        let end_offset = 2 + real[2..].len() - 2 * SIGNATURE_LEN - 1;
        bytes[end_offset] ^= 0x01;
        let altered = SignedCaTransition::from_bytes(&bytes).unwrap();
        assert!(altered.verify().is_err());
    }

    #[test]
    fn trust_ends_at_the_transitions_end() {
        let (old, new) = (CaKey::generate(), CaKey::generate());
        let trust = Trust {
            current: new.verifying_key(),
            previous: Some((old.verifying_key(), 2000)),
        };
        assert!(trust.key(&new.fingerprint(), 5000).is_ok());
        assert!(trust.key(&old.fingerprint(), 1999).is_ok());
        let err = trust.key(&old.fingerprint(), 2000).unwrap_err();
        assert!(matches!(err, Refusal::Retired { .. }));
        assert!(
            err.to_string()
                .contains("join again with a token of the new CA")
        );
        assert!(matches!(
            trust.key(&CaKey::generate().fingerprint(), 0),
            Err(Refusal::Unknown { .. })
        ));
    }
}
