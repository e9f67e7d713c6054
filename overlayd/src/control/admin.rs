//! What only an admin (a holder of the CA key) does: issue join tokens, admit a joining
//! host (check its token and its proof of its WireGuard key, give it a subnet no one else
//! has, sign its certificate), and revoke a member. No I/O: the caller persists
//! [`AdminState`] before it answers anyone.
//!
//! A token never admits a name or a WireGuard key that a current member holds
//! ([`Issuer::admit`]): a member that is alive or down, or was admitted and has not been
//! heard of yet, keeps both until it is revoked, leaves, or its certificate expires. A
//! higher serial replaces a member's records everywhere, so admitting a held name would
//! hand the member over to the token holder. Giving a name to another host is an explicit
//! admin action: `overlayctl revoke NAME`, then a join (a revoked WireGuard key never
//! joins again). A member that left gave its name up itself, with a record signed by its
//! own key, so a token may admit the name again (as Tailscale lets a new device take the
//! name of a removed one); a revoked member's name only after the revocation.
//!
//! A network may have extra ranges beside its main one (`init --range`), each of the main
//! range's size: a member whose subnet is at offset k of the main range gets the subnet at
//! offset k of every extra range too ("parallel" subnets), all in its certificate. Hosts
//! use them to keep Docker networks apart (one range per network on every host).

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use keys::{
    CaKey, JoinClaim, JoinProof, JoinToken, Name, NodeCertificate, PrivateKey, PublicKey,
    SignedCertificate, TokenSecret, VerifyingKey,
};
use protocol::records::{Directory, Revocation, SignedRevocation};

use super::msg::Request;
use super::state::{AdminState, Issued, TokenEntry};

/// How long before its issue a certificate is valid from: slack for hosts whose clocks run
/// behind. A certificate's issue time is its `not_before` plus this.
pub const NOT_BEFORE_SLACK_S: u64 = 3600;

/// The most tokens kept (this admin's and the other admins', used ones until they
/// expire: `admins::tokens`); expired ones are dropped first.
const MAX_TOKENS: usize = super::admins::tokens::MAX_TOKEN_RECORDS;

/// Why a join was refused: one sentence for the joining host's operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// What a joining host asks for.
#[derive(Debug, Clone)]
pub struct JoinAsk {
    /// The token's secret.
    pub secret: TokenSecret,
    /// The name it wants.
    pub name: Name,
    /// Its WireGuard key.
    pub wireguard_key: PublicKey,
    /// Its control key.
    pub control_key: VerifyingKey,
    /// The subnet it asks for, if any.
    pub subnet: Option<IpNet>,
    /// Its proof that it holds the private half of `wireguard_key`, made for this admin's
    /// WireGuard key and everything above.
    pub proof: JoinProof,
}

impl JoinAsk {
    /// What a `Join` request asks; `None` for any other request.
    pub fn from_request(request: Request) -> Option<JoinAsk> {
        let Request::Join {
            secret,
            name,
            wireguard_key,
            control_key,
            subnet,
            proof,
        } = request
        else {
            return None;
        };
        Some(JoinAsk {
            secret: TokenSecret::from_bytes(secret),
            name,
            wireguard_key,
            control_key,
            subnet,
            proof: JoinProof::from_bytes(proof),
        })
    }

    /// What `proof` covers, for `network` and its CA.
    pub fn claim<'a>(&'a self, network: &'a Name, ca: keys::Fingerprint) -> JoinClaim<'a> {
        JoinClaim {
            network,
            ca,
            secret: &self.secret,
            name: &self.name,
            control_key: &self.control_key,
            subnet: self.subnet,
        }
    }
}

/// The network an admin issues for.
#[derive(Debug, Clone)]
pub struct Issuer<'a> {
    /// The CA.
    pub ca: &'a CaKey,
    /// The network's name.
    pub network: &'a Name,
    /// Its main range.
    pub cidr: IpNet,
    /// Its extra ranges, checked by [`check_ranges`].
    pub ranges: &'a [IpNet],
    /// Prefix length of member subnets.
    pub subnet_prefix: u8,
    /// Validity of new certificates, in seconds.
    pub certificate_lifetime_s: u64,
}

impl Issuer<'_> {
    /// A new token, remembered (by hash) in `admin`.
    pub fn create_token(
        &self,
        admin: &mut AdminState,
        endpoints: Vec<SocketAddr>,
        ttl_s: u64,
        groups: Vec<Name>,
        now: u64,
    ) -> Result<JoinToken, Refused> {
        if ttl_s == 0 {
            return Err(Refused("a token's ttl must be at least 1 second".into()));
        }
        let expires_unix = now.saturating_add(ttl_s);
        let secret = TokenSecret::generate();
        let token = JoinToken::new(
            self.network.clone(),
            endpoints,
            self.ca.fingerprint(),
            secret,
            expires_unix,
            groups.clone(),
        )
        .map_err(|e| Refused(format!("cannot make a token: {e}")))?;
        // A used token is kept until it expires: another admin's copy of its record,
        // unused, must not make it usable again here.
        admin.tokens.retain(|t| t.expires_unix > now);
        if admin.tokens.len() >= MAX_TOKENS {
            return Err(Refused(format!(
                "{MAX_TOKENS} unexpired tokens are held (this admin's and the others'); let some expire first, or make them with a shorter --ttl"
            )));
        }
        admin.tokens.push(TokenEntry {
            secret_hash: token.secret_hash(),
            expires_unix,
            groups,
            used_by: None,
            issuer: None,
        });
        Ok(token)
    }

    /// Checks a join and, if it passes, signs the new member's certificate, marks the token
    /// used and remembers what was issued ([`AdminState::issued`]). `dir` is this admin's
    /// view of the members; `wireguard_key` its own WireGuard key (the one its certificate
    /// carries), which the joiner's proof was made for. In order: the token (held here:
    /// made here, or its record came from another admin; unused, unexpired), the proof that the joiner holds its WireGuard key, that the key
    /// was never revoked, that no current member holds the name or the key, the subnet. A
    /// refusal changes nothing (the token stays usable).
    pub fn admit(
        &self,
        admin: &mut AdminState,
        dir: &Directory,
        ask: &JoinAsk,
        wireguard_key: &PrivateKey,
        now: u64,
    ) -> Result<SignedCertificate, Refused> {
        let index = admin
            .tokens
            .iter()
            .position(|t| t.secret_hash.matches(&ask.secret))
            .ok_or_else(|| {
                Refused(
                    "join refused: this admin never issued that token (mistyped, or for another network); ask an admin for a new one with `overlayctl token create`".into(),
                )
            })?;
        let entry = &admin.tokens[index];
        if let Some(user) = &entry.used_by {
            return Err(Refused(format!(
                "join refused: the token was already used (by {user}); tokens are single-use, ask an admin for a new one"
            )));
        }
        if now >= entry.expires_unix {
            return Err(Refused(format!(
                "join refused: the token expired at {}; ask an admin for a new one",
                keys::Utc(entry.expires_unix)
            )));
        }
        ask.proof
            .verify(
                &ask.claim(self.network, self.ca.fingerprint()),
                &ask.wireguard_key,
                wireguard_key,
            )
            .map_err(|e| Refused(format!("join refused: {e}")))?;
        if dir.is_revoked(&ask.wireguard_key) {
            return Err(Refused(format!(
                "join refused: WireGuard key {} was revoked; a revoked host cannot join again with the same key",
                ask.wireguard_key
            )));
        }
        if admin
            .retired_keys
            .iter()
            .any(|(_, k)| *k == ask.wireguard_key)
        {
            return Err(Refused(format!(
                "join refused: WireGuard key {} was retired by a member's key rotation; generate a new one",
                ask.wireguard_key
            )));
        }
        let holders = holders(admin, dir, now);
        if let Some((_, key)) = holders.iter().find(|(name, _)| **name == ask.name) {
            let name = &ask.name;
            if **key == wireguard_key.public_key() {
                return Err(Refused(format!(
                    "join refused: the name {name} is held by a current member, this admin itself; choose another --name"
                )));
            }
            let same_key = if **key == ask.wireguard_key {
                " (with this WireGuard key, which cannot join again once revoked: give the host a new one)"
            } else {
                ""
            };
            return Err(Refused(format!(
                "join refused: the name {name} is held by a current member{same_key}; revoke it first (overlayctl revoke {name}) or choose another --name"
            )));
        }
        if let Some((other, _)) = holders.iter().find(|(_, key)| **key == ask.wireguard_key) {
            return Err(Refused(format!(
                "join refused: WireGuard key {} is held by member {other}; every host needs its own key (make one with `wg genkey`)",
                ask.wireguard_key
            )));
        }
        let subnets = self.allocate(admin, dir, &ask.name, ask.subnet)?;
        let groups = entry.groups.clone();
        let serial = super::admins::serial_from(admin, admin.next_serial.max(1))
            .ok_or_else(|| Refused("join refused: no serial is left".into()))?;
        let main = subnets[0];
        let certificate = self.issue(
            &ask.name,
            ask.wireguard_key,
            ask.control_key,
            subnets,
            groups,
            serial,
            now,
        )?;
        self.remember(admin, &ask.name, ask.wireguard_key, main, serial, now);
        admin.tokens[index].used_by = Some(ask.name.clone());
        Ok(certificate)
    }

    /// Signs a certificate (then [`Issuer::remember`] it).
    #[allow(clippy::too_many_arguments)]
    pub fn issue(
        &self,
        name: &Name,
        wireguard_key: PublicKey,
        control_key: VerifyingKey,
        subnets: Vec<IpNet>,
        groups: Vec<Name>,
        serial: u64,
        now: u64,
    ) -> Result<SignedCertificate, Refused> {
        let cert = NodeCertificate {
            network: self.network.clone(),
            node: name.clone(),
            wireguard_key,
            control_key,
            subnets,
            groups,
            not_before: now.saturating_sub(NOT_BEFORE_SLACK_S),
            not_after: self.not_after(now),
            serial,
            // A new member's number is the serial of its first certificate: serials never
            // repeat, so neither do numbers.
            number: serial as u32,
            ca_fingerprint: self.ca.fingerprint(),
        };
        self.ca
            .sign(&cert)
            .map_err(|e| Refused(format!("cannot sign the certificate: {e}")))
    }

    /// Remembers in `admin` that a certificate with `serial`, issued at `now`, gave `name`
    /// the WireGuard key `wireguard_key` and the subnets at `main`: the next serial, the
    /// allocation, and the name and key it holds from now on (see [`AdminState::issued`]).
    pub fn remember(
        &self,
        admin: &mut AdminState,
        name: &Name,
        wireguard_key: PublicKey,
        main: IpNet,
        serial: u64,
        now: u64,
    ) {
        admin.next_serial = admin.next_serial.max(serial + 1);
        admin.allocations.insert(name.clone(), main);
        admin.issued.insert(
            name.clone(),
            Issued {
                wireguard_key,
                serial,
                not_after: self.not_after(now),
                number: Some(serial as u32),
                groups: None,
            },
        );
    }

    /// Re-issues the certificate of the member whose current certificate is `current`
    /// (verified by the caller: proven in a TLS handshake, or held in the directory):
    /// the same name, keys, subnets and number, a new serial and expiry, and `groups` if
    /// given, else the groups an admin last set for it (`overlayctl node groups`), else
    /// its own. Remembers it in `admin` (saved by the caller before anyone sees it). For a
    /// renewal, `overlayctl node groups`, and an admin's own renewal.
    ///
    /// Refused when the name has been given to another member since (another number in
    /// `admin`, a record of another member of that name in `dir`), when the member left
    /// (`dir` holds its `Left` record), or when it is revoked.
    pub fn reissue(
        &self,
        admin: &mut AdminState,
        dir: &Directory,
        current: &NodeCertificate,
        groups: Option<Vec<Name>>,
        now: u64,
    ) -> Result<SignedCertificate, Refused> {
        let name = &current.node;
        if dir.is_certificate_revoked(current) {
            return Err(Refused(format!(
                "renewal refused: the certificate of {name} (serial {}) is revoked",
                current.serial
            )));
        }
        let issued = admin.issued.get(name);
        let given_away = issued.is_some_and(|i| {
            i.number() != current.number || i.wireguard_key != current.wireguard_key
        }) || dir.all_members().any(|(m, _)| {
            m.name == name && m.number != current.number && m.serial > current.serial
        });
        if given_away {
            return Err(Refused(format!(
                "renewal refused: the name {name} now belongs to another member; join again with a token (overlayctl join)"
            )));
        }
        if dir.all_members().any(|(m, state)| {
            m.name == name
                && state == protocol::records::MemberState::Left
                && m.serial >= current.serial
        }) {
            return Err(Refused(format!(
                "renewal refused: {name} left the network; join again with a token (overlayctl join)"
            )));
        }
        let groups = groups
            .or_else(|| issued.and_then(|i| i.groups.clone()))
            .unwrap_or_else(|| current.groups.clone());
        let next = current.serial.checked_add(1).ok_or_else(|| {
            Refused("renewal refused: no serial is left above this certificate's".into())
        })?;
        let serial = super::admins::serial_from(admin, admin.next_serial.max(next))
            .ok_or_else(|| Refused("renewal refused: no serial is left".into()))?;
        let cert = NodeCertificate {
            network: self.network.clone(),
            node: name.clone(),
            wireguard_key: current.wireguard_key,
            control_key: current.control_key,
            subnets: current.subnets.clone(),
            groups: groups.clone(),
            not_before: now.saturating_sub(NOT_BEFORE_SLACK_S),
            not_after: self.not_after(now),
            serial,
            number: current.number,
            ca_fingerprint: self.ca.fingerprint(),
        };
        let signed = self
            .ca
            .sign(&cert)
            .map_err(|e| Refused(format!("cannot sign the certificate: {e}")))?;
        admin.next_serial = admin.next_serial.max(serial.saturating_add(1));
        admin.issued.insert(
            name.clone(),
            Issued {
                wireguard_key: current.wireguard_key,
                serial,
                not_after: cert.not_after,
                number: Some(current.number),
                // The latest groups issued: what the next renewal keeps.
                groups: Some(groups),
            },
        );
        Ok(signed)
    }

    /// The last valid second of a certificate issued at `now`.
    fn not_after(&self, now: u64) -> u64 {
        now.saturating_add(self.certificate_lifetime_s)
    }

    /// The main range's subnet `main` and its parallels in the extra ranges, in order.
    pub fn subnets_at(&self, main: IpNet) -> Vec<IpNet> {
        std::iter::once(main)
            .chain(
                self.ranges
                    .iter()
                    .filter_map(|r| parallel(main, self.cidr, *r)),
            )
            .collect()
    }

    /// The subnets for `name` (main range first, then one per extra range, all at the same
    /// offset): those of the one asked for (in any range) if all are free, else the ones it
    /// had, else those of the first offset free in every range.
    pub fn allocate(
        &self,
        admin: &AdminState,
        dir: &Directory,
        name: &Name,
        requested: Option<IpNet>,
    ) -> Result<Vec<IpNet>, Refused> {
        let taken: Vec<(String, IpNet)> = admin
            .allocations
            .iter()
            .filter(|(n, _)| *n != name)
            .flat_map(|(n, s)| self.subnets_at(*s).into_iter().map(|s| (n.to_string(), s)))
            .chain(
                dir.live_members()
                    .filter(|m| m.name != name)
                    .flat_map(|m| m.subnets.iter().map(|s| (m.name.to_string(), *s))),
            )
            .collect();
        let clash = |nets: &[IpNet]| {
            nets.iter().find_map(|net| {
                taken
                    .iter()
                    .find(|(_, s)| s.contains(net) || net.contains(s))
                    .map(|(other, s)| (*net, other.clone(), *s))
            })
        };
        let all = std::iter::once(&self.cidr).chain(self.ranges);
        if let Some(net) = requested {
            let net = net.trunc();
            let Some(range) = all.clone().find(|r| r.contains(&net)) else {
                let ranges: Vec<String> = all.map(|r| r.to_string()).collect();
                return Err(Refused(format!(
                    "subnet {net} is outside the network's range {}; ask for one inside it or let the admin pick",
                    ranges.join(", ")
                )));
            };
            if net.prefix_len() != self.subnet_prefix {
                return Err(Refused(format!(
                    "subnet {net} is not a /{} (this network gives each host a /{}); ask for a /{} or let the admin pick",
                    self.subnet_prefix, self.subnet_prefix, self.subnet_prefix
                )));
            }
            // `range` has the main range's size (check_ranges), so this always maps.
            let main = parallel(net, *range, self.cidr).unwrap_or(net);
            if !super::admins::holds(admin, self.cidr, self.subnet_prefix, main) {
                return Err(Refused(format!(
                    "subnet {net} is in a part of the range another admin gives out; join through that admin, or let this one pick"
                )));
            }
            let nets = self.subnets_at(main);
            if let Some((mine, other, s)) = clash(&nets) {
                let why = if mine == net {
                    String::new()
                } else {
                    format!(" (its parallel {mine} does)")
                };
                return Err(Refused(format!(
                    "subnet {net} overlaps {s} of member {other}{why}; ask for another or let the admin pick"
                )));
            }
            return Ok(nets);
        }
        if let Some(own) = admin.allocations.get(name) {
            let nets = self.subnets_at(*own);
            if clash(&nets).is_none()
                && super::admins::holds(admin, self.cidr, self.subnet_prefix, *own)
            {
                return Ok(nets);
            }
        }
        let subnets = self.cidr.subnets(self.subnet_prefix).map_err(|_| {
            Refused(format!(
                "the network's range {} cannot hold /{} subnets",
                self.cidr, self.subnet_prefix
            ))
        })?;
        // The slice that holds the DNS address every host serves on (`crate::dns`) is
        // never handed out, so no container takes that address (unless it is the only one).
        let dns = crate::dns::default_address(self.cidr)
            .filter(|_| self.cidr.prefix_len() < self.subnet_prefix)
            .map(std::net::IpAddr::V4);
        for net in subnets {
            if dns.is_some_and(|ip| net.contains(&ip))
                || !super::admins::holds(admin, self.cidr, self.subnet_prefix, net)
            {
                continue;
            }
            let nets = self.subnets_at(net);
            if clash(&nets).is_none() {
                return Ok(nets);
            }
        }
        Err(Refused(format!(
            "no /{} is left free at the same offset in every range of the network ({}); revoke members that are gone, or make a network with larger ranges",
            self.subnet_prefix,
            all.map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
        )))
    }

    /// A revocation of member `name`'s latest certificate and its key: the one in its
    /// record in `dir`, or a later one this admin issued (`admin`) whose member has not been
    /// heard of yet.
    pub fn revoke(
        &self,
        admin: &AdminState,
        dir: &Directory,
        name: &Name,
        now: u64,
    ) -> Result<SignedRevocation, Refused> {
        let recorded = dir.member_records().find_map(|r| {
            r.record()
                .certificate
                .verify(&self.ca.verifying_key(), now)
                .ok()
                .filter(|c| &c.node == name)
                .map(|c| (c.serial, c.wireguard_key))
        });
        let issued = admin
            .issued
            .get(name)
            .filter(|i| !dir.is_revoked(&i.wireguard_key))
            .map(|i| (i.serial, i.wireguard_key));
        let (serial, wireguard_key) = recorded
            .into_iter()
            .chain(issued)
            .max_by_key(|(serial, _)| *serial)
            .ok_or_else(|| {
                Refused(format!(
                    "no member named {name} is known; `overlayctl peers` lists the members"
                ))
            })?;
        Ok(Revocation {
            network: self.network.clone(),
            node: name.clone(),
            serial,
            wireguard_key,
            revoked_at: now,
        }
        .sign(self.ca))
    }
}

/// The names and WireGuard keys current members hold, as far as this admin knows: those of
/// every live record in `dir` (alive, or down: the failure detector does not free a name),
/// and those of every certificate it issued that is valid at `now`, not revoked, and not
/// yet followed by a record in `dir` (a member is there only once its first record has
/// arrived, seconds after its join; if that record says it left, the name is free).
fn holders<'a>(
    admin: &'a AdminState,
    dir: &'a Directory,
    now: u64,
) -> Vec<(&'a Name, &'a PublicKey)> {
    let mut held: Vec<(&Name, &PublicKey)> = dir
        .live_members()
        .map(|m| (m.name, m.wireguard_key))
        .collect();
    for (name, issued) in &admin.issued {
        let recorded = dir
            .all_members()
            .any(|(m, _)| m.name == name && m.serial >= issued.serial);
        if !recorded && issued.not_after >= now && !dir.is_revoked(&issued.wireguard_key) {
            held.push((name, &issued.wireguard_key));
        }
    }
    held
}

/// The most extra ranges: a certificate holds at most [`keys::MAX_SUBNETS`] subnets, one
/// per range.
pub const MAX_EXTRA_RANGES: usize = keys::MAX_SUBNETS - 1;

/// Checks the extra ranges of a network whose main range is `cidr`: at most
/// [`MAX_EXTRA_RANGES`], each of `cidr`'s family and prefix length, none overlapping
/// `cidr` or another. Returns them truncated (host bits cleared), in the order given.
pub fn check_ranges(cidr: IpNet, ranges: &[IpNet]) -> Result<Vec<IpNet>, Refused> {
    if ranges.len() > MAX_EXTRA_RANGES {
        return Err(Refused(format!(
            "{} extra ranges given; a network has at most {MAX_EXTRA_RANGES} (a certificate holds {} subnets, one per range)",
            ranges.len(),
            keys::MAX_SUBNETS
        )));
    }
    let cidr = cidr.trunc();
    let mut seen = vec![cidr];
    for range in ranges {
        let range = range.trunc();
        if range.addr().is_ipv4() != cidr.addr().is_ipv4()
            || range.prefix_len() != cidr.prefix_len()
        {
            return Err(Refused(format!(
                "range {range} is not the size of the main range {cidr}: every extra range must be a /{} of the same address family",
                cidr.prefix_len()
            )));
        }
        if let Some(other) = seen
            .iter()
            .find(|s| s.contains(&range) || range.contains(*s))
        {
            return Err(Refused(format!(
                "range {range} overlaps {other}; give ranges that do not overlap the main range or each other"
            )));
        }
        seen.push(range);
    }
    Ok(seen.split_off(1))
}

/// The subnet at `net`'s offset in `from`, placed at the same offset in `to`; `None` if
/// `net` is not inside `from` or the ranges differ in family or size.
pub fn parallel(net: IpNet, from: IpNet, to: IpNet) -> Option<IpNet> {
    if !from.contains(&net)
        || from.prefix_len() != to.prefix_len()
        || from.addr().is_ipv4() != to.addr().is_ipv4()
    {
        return None;
    }
    let offset = as_number(net.network()) - as_number(from.network());
    let addr = match to.network() {
        IpAddr::V4(base) => IpAddr::V4((u32::from(base) + offset as u32).into()),
        IpAddr::V6(base) => IpAddr::V6((u128::from(base) + offset).into()),
    };
    IpNet::new(addr, net.prefix_len()).ok()
}

fn as_number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

mod rekey;
pub use rekey::{RekeyAsk, claim as rekey_claim};

#[cfg(test)]
mod tests;
