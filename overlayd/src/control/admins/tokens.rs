//! Tokens any admin redeems: a **token record** is a join token as the CA signed it (the
//! hash of its secret, never the secret; its expiry and groups; the admin that made it;
//! and, once redeemed, the member that used it). The admin that makes a token sends its
//! record to every other admin it reaches before it prints the token; the admin that
//! redeems one marks it used and sends the used record to every other admin it reaches
//! before it answers the joiner. An admin refuses a token whose used record it holds.
//! Records travel with the admin records (`Request::Admins`, only between admins) and are
//! swapped at every full sync between two admins, so one that was down catches up.
//!
//! Two admins that cannot reach each other can both redeem one token during that
//! partition (single use across a partition needs a consensus protocol, which this is
//! not): keep tokens short-lived, and `overlayctl revoke` a host that should not be there.
//!
//! Held in the admin's state (`admin.json`, [`TokenEntry`]), bounded by
//! [`MAX_TOKEN_RECORDS`]; expired records are dropped.

use keys::wire::{Reader, Writer};
use keys::{CaKey, Fingerprint, Name, SecretHash, Signature, VerifyingKey};

use super::AdminError;
use crate::control::state::{AdminState, TokenEntry};

/// The signing context of token records.
pub const TOKEN_RECORD_CONTEXT: &str = "overlay token record v1";
/// The format byte of a token record's body; an admin record's is 1, so the two travel in
/// one list.
const TOKEN_FORMAT: u8 = 0x54;
/// The most tokens an admin holds (its own and the other admins', used ones until they
/// expire).
pub const MAX_TOKEN_RECORDS: usize = 1_000;
/// The longest name in bytes (`keys::Name`).
const NAME_LEN: usize = 63;
const MAX_BODY_LEN: usize = 1
    + 32
    + 2 * (1 + NAME_LEN)
    + 32
    + 8
    + 1
    + keys::MAX_GROUPS * (1 + NAME_LEN)
    + 1
    + (1 + NAME_LEN);
/// The longest signed token record in bytes.
pub const MAX_SIGNED_LEN: usize = 2 + MAX_BODY_LEN + 64;

/// A token, as the CA signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The network.
    pub network: Name,
    /// The admin that made it.
    pub issuer: Name,
    /// The hash of its secret.
    pub secret_hash: SecretHash,
    /// Unusable from this second on.
    pub expires_unix: u64,
    /// The groups the joining host gets.
    pub groups: Vec<Name>,
    /// The member that used it, once used.
    pub used_by: Option<Name>,
}

/// Whether signed bytes are a token record (else an admin record).
pub fn is_token_record(bytes: &[u8]) -> bool {
    bytes.get(2) == Some(&TOKEN_FORMAT)
}

impl TokenRecord {
    fn encode(&self, ca: &Fingerprint) -> Vec<u8> {
        let mut w = Writer::with_capacity(MAX_BODY_LEN);
        w.u8(TOKEN_FORMAT);
        w.bytes(ca.as_bytes());
        w.name(&self.network);
        w.name(&self.issuer);
        w.bytes(self.secret_hash.as_bytes());
        w.u64(self.expires_unix);
        w.count(self.groups.len());
        for g in &self.groups {
            w.name(g);
        }
        match &self.used_by {
            None => w.u8(0),
            Some(name) => {
                w.u8(1);
                w.name(name);
            }
        }
        w.finish_plain()
    }

    fn decode(body: &[u8]) -> Result<(Fingerprint, TokenRecord), AdminError> {
        let bad = |e: keys::wire::WireError| AdminError::Malformed(format!("token record: {e:?}"));
        let mut r = Reader::new(body);
        let format = r.u8("format").map_err(bad)?;
        if format != TOKEN_FORMAT {
            return Err(AdminError::Malformed(format!(
                "token record format {format}"
            )));
        }
        let ca = Fingerprint::from_bytes(r.array("CA fingerprint").map_err(bad)?);
        let network = r.name("network").map_err(bad)?;
        let issuer = r.name("issuer").map_err(bad)?;
        let secret_hash = SecretHash::from_bytes(r.array("secret hash").map_err(bad)?);
        let expires_unix = r.u64("expiry").map_err(bad)?;
        let count = r.count(keys::MAX_GROUPS, "groups").map_err(bad)?;
        let groups = (0..count)
            .map(|_| r.name("group"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let used_by = match r.u8("used").map_err(bad)? {
            0 => None,
            1 => Some(r.name("used by").map_err(bad)?),
            n => return Err(AdminError::Malformed(format!("token record used = {n}"))),
        };
        r.finish().map_err(bad)?;
        Ok((
            ca,
            TokenRecord {
                network,
                issuer,
                secret_hash,
                expires_unix,
                groups,
                used_by,
            },
        ))
    }

    /// Signs it with the CA: `body length u16 | body | signature`.
    pub fn sign(&self, ca: &CaKey) -> Vec<u8> {
        let body = self.encode(&ca.fingerprint());
        let signature = ca.signing_key().sign(TOKEN_RECORD_CONTEXT, &body);
        let mut w = Writer::with_capacity(2 + body.len() + 64);
        // The body is at most MAX_BODY_LEN bytes.
        w.u16(body.len() as u16);
        w.bytes(&body);
        w.bytes(signature.as_bytes());
        w.finish_plain()
    }

    /// Reads and checks signed bytes: signed by `ca`, for `network`.
    pub fn verify(
        bytes: &[u8],
        ca: &VerifyingKey,
        network: &Name,
    ) -> Result<TokenRecord, AdminError> {
        let (fingerprint, record, body, signature) = TokenRecord::parse(bytes)?;
        if fingerprint != ca.fingerprint()
            || ca.verify(TOKEN_RECORD_CONTEXT, body, &signature).is_err()
        {
            return Err(AdminError::Untrusted(record.issuer));
        }
        if &record.network != network {
            return Err(AdminError::OtherNetwork(record.issuer));
        }
        Ok(record)
    }

    /// Reads signed bytes without checking the signature: to skip, unverified, what would
    /// change nothing.
    fn parse(bytes: &[u8]) -> Result<(Fingerprint, TokenRecord, &[u8], Signature), AdminError> {
        let bad = |e: keys::wire::WireError| AdminError::Malformed(format!("token record: {e:?}"));
        if bytes.len() > MAX_SIGNED_LEN {
            return Err(AdminError::Malformed(format!(
                "token record of {} bytes",
                bytes.len()
            )));
        }
        let mut r = Reader::new(bytes);
        let len = r.u16("body length").map_err(bad)? as usize;
        let body = r.bytes(len, "body").map_err(bad)?;
        let signature = Signature::from_bytes(r.array("signature").map_err(bad)?);
        r.finish().map_err(bad)?;
        let (fingerprint, record) = TokenRecord::decode(body)?;
        Ok((fingerprint, record, body, signature))
    }
}

/// The signed records of every unexpired token `admin` holds (`me`: this admin, the
/// issuer of the tokens it made itself).
pub fn token_records(
    admin: &AdminState,
    ca: &CaKey,
    network: &Name,
    me: &Name,
    now: u64,
) -> Vec<Vec<u8>> {
    admin
        .tokens
        .iter()
        .filter(|t| t.expires_unix > now)
        .take(MAX_TOKEN_RECORDS)
        .map(|t| record_of(t, network, me).sign(ca))
        .collect()
}

/// The record of the token `entry`.
pub fn record_of(entry: &TokenEntry, network: &Name, me: &Name) -> TokenRecord {
    TokenRecord {
        network: network.clone(),
        issuer: entry.issuer.clone().unwrap_or_else(|| me.clone()),
        secret_hash: entry.secret_hash,
        expires_unix: entry.expires_unix,
        groups: entry.groups.clone(),
        used_by: entry.used_by.clone(),
    }
}

/// Takes token records into `admin`: a token not held (and not expired) is added; a used
/// record marks a held token used (a used token never becomes unused again). Expired ones
/// are dropped. Records signed by any of `cas` are taken (during a CA transition, the new
/// CA and the retiring one). Returns whether anything changed, and the records refused.
pub fn apply_token_records(
    admin: &mut AdminState,
    records: &[Vec<u8>],
    cas: &[VerifyingKey],
    network: &Name,
    now: u64,
) -> (bool, Vec<AdminError>) {
    let mut changed = false;
    let mut refused = Vec::new();
    for bytes in records.iter().take(MAX_TOKEN_RECORDS * 2) {
        // A sync brings mostly what is held: what would change nothing (expired, held
        // already, or held used) is skipped without a signature to check.
        if let Ok((_, seen, _, _)) = TokenRecord::parse(bytes)
            && (seen.expires_unix <= now
                || admin.tokens.iter().any(|t| {
                    t.secret_hash == seen.secret_hash
                        && (t.used_by.is_some() || seen.used_by.is_none())
                }))
        {
            continue;
        }
        let mut verified = Err(AdminError::Malformed("no CA to check it with".into()));
        for ca in cas {
            verified = TokenRecord::verify(bytes, ca, network);
            if verified.is_ok() {
                break;
            }
        }
        let record = match verified {
            Ok(r) => r,
            Err(e) => {
                refused.push(e);
                continue;
            }
        };
        if record.expires_unix <= now {
            continue;
        }
        match admin
            .tokens
            .iter_mut()
            .find(|t| t.secret_hash == record.secret_hash)
        {
            Some(held) => {
                if held.used_by.is_none() && record.used_by.is_some() {
                    held.used_by = record.used_by;
                    changed = true;
                }
            }
            None => {
                admin.tokens.retain(|t| t.expires_unix > now);
                if admin.tokens.len() >= MAX_TOKEN_RECORDS {
                    refused.push(AdminError::Malformed(format!(
                        "token record of {} dropped: {MAX_TOKEN_RECORDS} tokens are held",
                        record.issuer
                    )));
                    continue;
                }
                admin.tokens.push(TokenEntry {
                    secret_hash: record.secret_hash,
                    expires_unix: record.expires_unix,
                    groups: record.groups,
                    used_by: record.used_by,
                    issuer: Some(record.issuer),
                });
                changed = true;
            }
        }
    }
    (changed, refused)
}

#[cfg(test)]
mod tests;
