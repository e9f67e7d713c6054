//! [`Directory`]: the verified member records and revocations a daemon steers traffic by,
//! and the rules a record must pass before it is applied or gossiped on.
//!
//! The rules, in the order [`Directory::apply_member`] checks them (each refusal is its own
//! [`RecordError`] variant and changes nothing):
//!
//! 1. The certificate is signed by this network's CA ([`RecordError::UntrustedCertificate`])
//!    and valid at `now_unix` ([`RecordError::CertificateNotValidNow`]), for this network
//!    ([`RecordError::WrongNetwork`]).
//! 2. The record is signed by the Ed25519 key in its own certificate
//!    ([`RecordError::Forged`]): a member can only speak for itself.
//! 3. Neither its WireGuard key nor its certificate is revoked ([`RecordError::Revoked`]).
//! 4. Against the record held for the same name: byte-identical is
//!    [`Applied::Unchanged`] (gossip drops duplicates quietly); a lower certificate serial is
//!    refused ([`RecordError::OlderCertificate`]); with the same serial, the version must be
//!    higher ([`RecordError::Replay`]). A higher serial is a re-issued certificate (renewal,
//!    or new keys for the same name) and wins whatever its version: the CA issues serials
//!    in order and the member may start counting versions again with its new certificate,
//!    while a stolen old certificate cannot displace the new one.
//! 5. An alive record's subnets overlap no other live member's
//!    ([`RecordError::SubnetOverlap`]) and its WireGuard key is no other live member's
//!    ([`RecordError::KeyInUse`]).
//!
//! A record saying the member left is kept (a tombstone) so that its older alive records
//! cannot bring it back. Revocations are kept for good, and survive persisting the
//! directory with serde.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ipnet::IpNet;
use keys::{CertError, Name, NodeCertificate, PublicKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{MemberState, RecordError, SignedMemberRecord, SignedRevocation};
use crate::policy::{Lookup, Policy, PolicyRecordError, SignedPolicy};

/// What applying a record changed, so the daemon knows what to rebuild and what to gossip
/// on (everything but [`Unchanged`](Applied::Unchanged)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A member that was not live is now: add its tunnel and routes.
    New,
    /// A live member's record was replaced by a newer one.
    Updated {
        /// Its endpoints differ: point the tunnel at the new ones.
        endpoint_changed: bool,
        /// Its WireGuard key differs (re-issued certificate): rebuild the tunnel.
        key_changed: bool,
        /// Its subnets differ: rebuild its routes.
        subnets_changed: bool,
    },
    /// Nothing new: the same record was already held. Do not gossip it on.
    Unchanged,
    /// The member left: remove its tunnel and routes.
    Left,
    /// A revocation was recorded: refuse the key from now on.
    Revoked {
        /// The revoked member.
        node: Name,
        /// Whether a live member was removed (tear its tunnel down at once).
        removed: bool,
    },
}

/// A live member, as the daemon needs it to build tunnels and routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveMember<'a> {
    /// Its name.
    pub name: &'a Name,
    /// Its WireGuard key.
    pub wireguard_key: &'a PublicKey,
    /// The subnets routed to it.
    pub subnets: &'a [IpNet],
    /// Its groups (for policy).
    pub groups: &'a [Name],
    /// Where to reach it.
    pub endpoints: &'a [SocketAddr],
    /// The version of its record.
    pub version: u64,
    /// Its certificate's serial (new with every certificate issued).
    pub serial: u64,
    /// Its number in the network (kept across certificates): its SWIM node number.
    pub number: u32,
    /// UDP port of its control plane.
    pub control_port: u16,
    /// Whether it relays: named a relay (`Some(true)`), refuses to (`Some(false)`), or
    /// relays when it has a public address (`None`).
    pub relay: Option<bool>,
}

/// A member record that passed the rules, and what its certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    signed: SignedMemberRecord,
    certificate: NodeCertificate,
    /// When it was applied: its certificate was valid then, which is what a directory
    /// loaded from disk checks again.
    applied_at: u64,
}

impl Held {
    fn is_alive(&self) -> bool {
        self.signed.record().state == MemberState::Alive
    }
}

/// The verified state of one network: its members' latest records and the revocations.
/// Persist it with serde; loading re-verifies every record and refuses a tampered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Persisted", into = "Persisted")]
pub struct Directory {
    ca: VerifyingKey,
    network: Name,
    members: BTreeMap<Name, Held>,
    revocations: Vec<SignedRevocation>,
    /// Derived from `revocations`: every revoked WireGuard key.
    revoked_keys: BTreeSet<PublicKey>,
    /// Derived from `revocations`: per name, the highest revoked certificate serial.
    revoked_serials: BTreeMap<Name, u64>,
    /// The newest CA-signed network policy, and what it says; `None`: every member may
    /// reach every other.
    policy: Option<HeldPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HeldPolicy {
    signed: SignedPolicy,
    policy: Policy,
}

/// What applying a signed policy changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyApplied {
    /// The same policy was already held: do not pass it on.
    Unchanged,
    /// A newer version is in force: apply it, and pass it on.
    New {
        /// Its version.
        version: u64,
    },
}

impl Directory {
    /// An empty directory for `network`, trusting certificates and revocations from `ca`.
    pub fn new(ca: VerifyingKey, network: Name) -> Directory {
        Directory {
            ca,
            network,
            members: BTreeMap::new(),
            revocations: Vec::new(),
            revoked_keys: BTreeSet::new(),
            revoked_serials: BTreeMap::new(),
            policy: None,
        }
    }

    /// Checks that this network's CA signed the policy for this network, that it is newer
    /// than the one held and that it parses, and puts it in force. The same policy again is
    /// [`PolicyApplied::Unchanged`]; an older or equal version with other bytes is refused
    /// ([`PolicyRecordError::NotNewer`]): a replay cannot bring back an old policy.
    pub fn apply_policy(
        &mut self,
        signed: &SignedPolicy,
    ) -> Result<PolicyApplied, PolicyRecordError> {
        if self
            .policy
            .as_ref()
            .is_some_and(|held| &held.signed == signed)
        {
            return Ok(PolicyApplied::Unchanged);
        }
        let held = self.policy.as_ref().map(|h| h.signed.version());
        let policy = signed.verify(&self.ca, &self.network, held)?;
        self.policy = Some(HeldPolicy {
            signed: signed.clone(),
            policy,
        });
        Ok(PolicyApplied::New {
            version: signed.version(),
        })
    }

    /// Decodes bytes and [`apply_policy`](Self::apply_policy)s them.
    pub fn apply_policy_bytes(&mut self, bytes: &[u8]) -> Result<PolicyApplied, PolicyRecordError> {
        self.apply_policy(&SignedPolicy::from_bytes(bytes)?)
    }

    /// The policy in force, verified, and its signed form; `None` when the network has none.
    pub fn policy(&self) -> Option<(&Policy, &SignedPolicy)> {
        self.policy.as_ref().map(|h| (&h.policy, &h.signed))
    }

    /// The network's CA.
    pub fn ca(&self) -> &VerifyingKey {
        &self.ca
    }

    /// The network.
    pub fn network(&self) -> &Name {
        &self.network
    }

    /// Decodes gossiped bytes and [`apply_member`](Self::apply_member)s them.
    pub fn apply_member_bytes(
        &mut self,
        bytes: &[u8],
        now_unix: u64,
    ) -> Result<Applied, RecordError> {
        self.apply_member(&SignedMemberRecord::from_bytes(bytes)?, now_unix)
    }

    /// Checks a member record against the rules in the module docs and, if it passes,
    /// holds it in place of the member's previous one. Call it for every record received,
    /// before passing it on; gossip it on unless it returns an error or
    /// [`Applied::Unchanged`]. A refused record changes nothing.
    pub fn apply_member(
        &mut self,
        signed: &SignedMemberRecord,
        now_unix: u64,
    ) -> Result<Applied, RecordError> {
        let record = signed.record();
        // Against the record held for the name it claims, before any signature is checked
        // (gossip repeats every record several times, and a hostile member may replay its
        // own, old or current, as fast as it can): a copy of the held record is unchanged
        // while its certificate is current and not revoked, and a record older than the
        // held one is refused whether or not its signatures hold.
        if let Ok(claimed) = record.certificate.unverified_body()
            && let Some(held) = self.members.get(&claimed.node)
        {
            if held.signed == *signed
                && (held.certificate.not_before..=held.certificate.not_after).contains(&now_unix)
                && !self.is_certificate_revoked(&held.certificate)
            {
                return Ok(Applied::Unchanged);
            }
            if claimed.serial < held.certificate.serial {
                return Err(RecordError::OlderCertificate {
                    node: claimed.node,
                    serial: claimed.serial,
                    held: held.certificate.serial,
                });
            }
            let held_version = held.signed.record().version;
            if claimed.serial == held.certificate.serial
                && record.version <= held_version
                && held.signed != *signed
            {
                return Err(RecordError::Replay {
                    node: claimed.node,
                    version: record.version,
                    held: held_version,
                });
            }
        }
        let certificate = record
            .certificate
            .verify(&self.ca, now_unix)
            .map_err(|source| match source {
                CertError::Expired { .. } | CertError::NotYetValid { .. } => {
                    RecordError::CertificateNotValidNow { source }
                }
                _ => RecordError::UntrustedCertificate { source },
            })?;
        if certificate.network != self.network {
            return Err(RecordError::WrongNetwork {
                node: certificate.node,
                found: certificate.network,
                expected: self.network.clone(),
            });
        }
        if !signed.verify_signature(&certificate.control_key) {
            return Err(RecordError::Forged {
                node: certificate.node,
            });
        }
        if self.is_certificate_revoked(&certificate) {
            return Err(RecordError::Revoked {
                node: certificate.node,
                serial: certificate.serial,
                wireguard_key: certificate.wireguard_key,
            });
        }
        let held = self.members.get(&certificate.node);
        if held.is_some_and(|held| held.signed == *signed) {
            // Held, but its certificate is past its window or revoked: the checks above
            // refused it; nothing reaches here.
            return Ok(Applied::Unchanged);
        }
        if record.state == MemberState::Alive {
            self.check_conflicts(&certificate)?;
        }
        let applied = match (held.filter(|h| h.is_alive()), record.state) {
            (_, MemberState::Left) => Applied::Left,
            (None, MemberState::Alive) => Applied::New,
            (Some(held), MemberState::Alive) => Applied::Updated {
                endpoint_changed: held.signed.record().endpoints != record.endpoints,
                key_changed: held.certificate.wireguard_key != certificate.wireguard_key,
                subnets_changed: held.certificate.subnets != certificate.subnets,
            },
        };
        self.members.insert(
            certificate.node.clone(),
            Held {
                signed: signed.clone(),
                certificate,
                applied_at: now_unix,
            },
        );
        Ok(applied)
    }

    /// Refuses an alive record whose subnets or WireGuard key collide with another live
    /// member's.
    fn check_conflicts(&self, certificate: &NodeCertificate) -> Result<(), RecordError> {
        let others = self
            .members
            .values()
            .filter(|h| h.is_alive() && h.certificate.node != certificate.node);
        for other in others {
            if other.certificate.wireguard_key == certificate.wireguard_key {
                return Err(RecordError::KeyInUse {
                    node: certificate.node.clone(),
                    other: other.certificate.node.clone(),
                    wireguard_key: certificate.wireguard_key,
                });
            }
            for subnet in &certificate.subnets {
                let overlapping = other
                    .certificate
                    .subnets
                    .iter()
                    .find(|o| o.contains(subnet) || subnet.contains(*o));
                if let Some(other_subnet) = overlapping {
                    return Err(RecordError::SubnetOverlap {
                        node: certificate.node.clone(),
                        subnet: *subnet,
                        other: other.certificate.node.clone(),
                        other_subnet: *other_subnet,
                    });
                }
            }
        }
        Ok(())
    }

    /// Decodes gossiped bytes and [`apply_revocation`](Self::apply_revocation)s them.
    pub fn apply_revocation_bytes(&mut self, bytes: &[u8]) -> Result<Applied, RecordError> {
        self.apply_revocation(&SignedRevocation::from_bytes(bytes)?)
    }

    /// Checks that this network's CA signed the revocation and records it for good: the
    /// member it names is removed if held, and its key and certificate are refused from
    /// now on. [`Applied::Unchanged`] if it was already held; otherwise
    /// [`Applied::Revoked`], to be gossiped on.
    pub fn apply_revocation(&mut self, signed: &SignedRevocation) -> Result<Applied, RecordError> {
        let revocation = signed.verify(&self.ca)?;
        if revocation.network != self.network {
            return Err(RecordError::WrongNetwork {
                node: revocation.node.clone(),
                found: revocation.network.clone(),
                expected: self.network.clone(),
            });
        }
        if self.revocations.contains(signed) {
            return Ok(Applied::Unchanged);
        }
        self.revocations.push(signed.clone());
        self.note_revocation(signed);
        let before = self.members.len();
        let (revoked_keys, revoked_serials) = (&self.revoked_keys, &self.revoked_serials);
        self.members
            .retain(|_, held| !is_revoked_by(revoked_keys, revoked_serials, &held.certificate));
        Ok(Applied::Revoked {
            node: signed.revocation().node.clone(),
            removed: self.members.len() < before,
        })
    }

    fn note_revocation(&mut self, signed: &SignedRevocation) {
        let revocation = signed.revocation();
        self.revoked_keys.insert(revocation.wireguard_key);
        let serial = self
            .revoked_serials
            .entry(revocation.node.clone())
            .or_insert(revocation.serial);
        *serial = (*serial).max(revocation.serial);
    }

    /// Whether this certificate (its serial or its WireGuard key) is revoked.
    pub fn is_certificate_revoked(&self, certificate: &NodeCertificate) -> bool {
        is_revoked_by(&self.revoked_keys, &self.revoked_serials, certificate)
    }

    /// Whether this WireGuard key is revoked: refuse its handshakes.
    pub fn is_revoked(&self, wireguard_key: &PublicKey) -> bool {
        self.revoked_keys.contains(wireguard_key)
    }

    /// The live members, by name.
    pub fn live_members(&self) -> impl Iterator<Item = LiveMember<'_>> {
        self.members
            .values()
            .filter(|h| h.is_alive())
            .map(Held::live)
    }

    /// Every member held, live or left, with its state.
    pub fn all_members(&self) -> impl Iterator<Item = (LiveMember<'_>, MemberState)> {
        self.members
            .values()
            .map(|h| (h.live(), h.signed.record().state))
    }

    /// The live member called `name`, if any.
    pub fn live_member(&self, name: &Name) -> Option<LiveMember<'_>> {
        self.members
            .get(name)
            .filter(|h| h.is_alive())
            .map(Held::live)
    }

    /// The certificate of the record held for `name` (checked when the record was
    /// applied), alive or left.
    pub fn member_certificate(&self, name: &Name) -> Option<&NodeCertificate> {
        self.members.get(name).map(|held| &held.certificate)
    }

    /// The live member `name`'s member number, control key and subnets: what its name
    /// sets are checked against (`names`).
    pub fn member_identity(&self, name: &Name) -> Option<(u32, &VerifyingKey, &[IpNet])> {
        self.members.get(name).filter(|h| h.is_alive()).map(|h| {
            (
                h.certificate.number,
                &h.certificate.control_key,
                h.certificate.subnets.as_slice(),
            )
        })
    }

    /// Every member record held (live ones and those of members that left): what a full
    /// sync ships, each to be applied by the receiver.
    pub fn member_records(&self) -> impl Iterator<Item = &SignedMemberRecord> {
        self.members.values().map(|h| &h.signed)
    }

    /// Every revocation held, in the order received.
    pub fn revocations(&self) -> impl Iterator<Item = &SignedRevocation> {
        self.revocations.iter()
    }

    /// Drops every member whose certificate has expired at `now_unix` and returns their
    /// names (remove their tunnels and routes). Call it periodically, e.g. once a minute.
    pub fn expire(&mut self, now_unix: u64) -> Vec<Name> {
        let expired: Vec<Name> = self
            .members
            .values()
            .filter(|h| h.certificate.not_after < now_unix)
            .map(|h| h.certificate.node.clone())
            .collect();
        expired.iter().for_each(|name| {
            self.members.remove(name);
        });
        expired
    }
}

fn is_revoked_by(
    keys: &BTreeSet<PublicKey>,
    serials: &BTreeMap<Name, u64>,
    certificate: &NodeCertificate,
) -> bool {
    keys.contains(&certificate.wireguard_key)
        || serials
            .get(&certificate.node)
            .is_some_and(|revoked| certificate.serial <= *revoked)
}

impl Held {
    fn live(&self) -> LiveMember<'_> {
        LiveMember {
            name: &self.certificate.node,
            wireguard_key: &self.certificate.wireguard_key,
            subnets: &self.certificate.subnets,
            groups: &self.certificate.groups,
            endpoints: &self.signed.record().endpoints,
            version: self.signed.record().version,
            serial: self.certificate.serial,
            number: self.certificate.number,
            control_port: self.signed.record().control_port,
            relay: self.signed.record().relay,
        }
    }
}

/// The persisted form: the signed bytes of every record, re-verified when loaded.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    ca: VerifyingKey,
    network: Name,
    members: Vec<PersistedMember>,
    revocations: Vec<Vec<u8>>,
    /// The signed policy; absent in files written before policies existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policy: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PersistedMember {
    record: Vec<u8>,
    applied_at: u64,
}

impl From<Directory> for Persisted {
    fn from(directory: Directory) -> Persisted {
        Persisted {
            members: directory
                .members
                .values()
                .map(|h| PersistedMember {
                    record: h.signed.to_bytes(),
                    applied_at: h.applied_at,
                })
                .collect(),
            revocations: directory
                .revocations
                .iter()
                .map(SignedRevocation::to_bytes)
                .collect(),
            policy: directory.policy.as_ref().map(|h| h.signed.to_bytes()),
            ca: directory.ca,
            network: directory.network,
        }
    }
}

impl TryFrom<Persisted> for Directory {
    type Error = RecordError;

    /// Applies every revocation, then every member record at the time it was first
    /// applied: a file altered on disk is refused as a whole.
    fn try_from(persisted: Persisted) -> Result<Directory, RecordError> {
        let mut directory = Directory::new(persisted.ca, persisted.network);
        for bytes in &persisted.revocations {
            directory.apply_revocation_bytes(bytes)?;
        }
        for member in &persisted.members {
            match directory.apply_member_bytes(&member.record, member.applied_at) {
                // Saved before such endpoints were refused: the member is learnt again
                // from its next record, which names only reachable ones.
                Err(RecordError::Malformed { part }) if part == super::UNREACHABLE_ENDPOINT => {}
                other => {
                    other?;
                }
            }
        }
        if let Some(bytes) = &persisted.policy {
            directory
                .apply_policy_bytes(bytes)
                .map_err(|_| RecordError::Malformed {
                    part: "policy: not this network's CA-signed policy",
                })?;
        }
        Ok(directory)
    }
}

/// What a policy's tests ask of the network: the members this directory holds alive.
impl Lookup for Directory {
    fn groups_of(&self, name: &Name) -> Vec<Name> {
        self.live_member(name)
            .map(|m| m.groups.to_vec())
            .unwrap_or_default()
    }

    fn owner_of(&self, addr: std::net::IpAddr) -> Option<(Name, Vec<Name>)> {
        self.live_members()
            .find(|m| m.subnets.iter().any(|s| s.contains(&addr)))
            .map(|m| (m.name.clone(), m.groups.to_vec()))
    }
}
