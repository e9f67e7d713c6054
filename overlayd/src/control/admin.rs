//! What only an admin (a holder of the CA key) does: issue join tokens, admit a joining
//! host (check its token, give it a subnet no one else has, sign its certificate), and
//! revoke a member. No I/O: the caller persists [`AdminState`] before it answers anyone.
//!
//! A network may have extra ranges beside its main one (`init --range`), each of the main
//! range's size: a member whose subnet is at offset k of the main range gets the subnet at
//! offset k of every extra range too ("parallel" subnets), all in its certificate. Hosts
//! use them to keep Docker networks apart (one range per network on every host).

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use keys::{
    CaKey, JoinToken, Name, NodeCertificate, PublicKey, SignedCertificate, TokenSecret,
    VerifyingKey,
};
use protocol::records::{Directory, Revocation, SignedRevocation};

use super::state::{AdminState, TokenEntry};

/// The most tokens kept; used and expired ones are dropped first.
const MAX_TOKENS: usize = 10_000;

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
    /// Validity of new certificates, in days.
    pub certificate_days: u32,
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
        admin
            .tokens
            .retain(|t| t.used_by.is_none() && t.expires_unix > now);
        if admin.tokens.len() >= MAX_TOKENS {
            return Err(Refused(format!(
                "{MAX_TOKENS} unused tokens are outstanding; let some expire first"
            )));
        }
        admin.tokens.push(TokenEntry {
            secret_hash: token.secret_hash(),
            expires_unix,
            groups,
            used_by: None,
        });
        Ok(token)
    }

    /// Checks a join and, if it passes, signs the new member's certificate and marks the
    /// token used. `dir` is this admin's view of the members.
    pub fn admit(
        &self,
        admin: &mut AdminState,
        dir: &Directory,
        ask: &JoinAsk,
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
        if dir.is_revoked(&ask.wireguard_key) {
            return Err(Refused(format!(
                "join refused: WireGuard key {} was revoked; a revoked host cannot join again with the same key",
                ask.wireguard_key
            )));
        }
        if let Some(live) = dir.live_member(&ask.name)
            && *live.wireguard_key != ask.wireguard_key
        {
            return Err(Refused(format!(
                "join refused: the name {} is taken by a live member; pick another --name (or revoke or remove the old {} first)",
                ask.name, ask.name
            )));
        }
        if let Some(other) = dir
            .live_members()
            .find(|m| *m.wireguard_key == ask.wireguard_key && *m.name != ask.name)
        {
            return Err(Refused(format!(
                "join refused: member {} already uses WireGuard key {}; every host needs its own key",
                other.name, ask.wireguard_key
            )));
        }
        let subnets = self.allocate(admin, dir, &ask.name, ask.subnet)?;
        let groups = entry.groups.clone();
        let serial = admin.next_serial.max(1);
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
        admin.next_serial = serial + 1;
        admin.allocations.insert(ask.name.clone(), main);
        admin.tokens[index].used_by = Some(ask.name.clone());
        Ok(certificate)
    }

    /// Signs a certificate.
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
            // An hour of slack for hosts whose clocks run behind.
            not_before: now.saturating_sub(3600),
            not_after: now.saturating_add(u64::from(self.certificate_days) * 86_400),
            serial,
            ca_fingerprint: self.ca.fingerprint(),
        };
        self.ca
            .sign(&cert)
            .map_err(|e| Refused(format!("cannot sign the certificate: {e}")))
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
            if clash(&nets).is_none() {
                return Ok(nets);
            }
        }
        let subnets = self.cidr.subnets(self.subnet_prefix).map_err(|_| {
            Refused(format!(
                "the network's range {} cannot hold /{} subnets",
                self.cidr, self.subnet_prefix
            ))
        })?;
        for net in subnets {
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

    /// A revocation of member `name`'s certificate and key, as held in `dir`.
    pub fn revoke(
        &self,
        dir: &Directory,
        name: &Name,
        now: u64,
    ) -> Result<SignedRevocation, Refused> {
        let record = dir
            .member_records()
            .find(|r| {
                r.record()
                    .certificate
                    .verify(&self.ca.verifying_key(), now)
                    .map(|c| &c.node == name)
                    .unwrap_or(false)
            })
            .ok_or_else(|| {
                Refused(format!(
                    "no member named {name} is known; `overlayctl peers` lists the members"
                ))
            })?;
        let cert = record
            .record()
            .certificate
            .verify(&self.ca.verifying_key(), now)
            .map_err(|e| Refused(format!("cannot read {name}'s certificate: {e}")))?;
        Ok(Revocation {
            network: self.network.clone(),
            node: name.clone(),
            serial: cert.serial,
            wireguard_key: cert.wireguard_key,
            revoked_at: now,
        }
        .sign(self.ca))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    struct Fixture {
        ca: CaKey,
        network: Name,
        admin: AdminState,
        dir: Directory,
        ranges: Vec<IpNet>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let ca = CaKey::generate();
            let network = Name::new("testnet").unwrap();
            let dir = Directory::new(ca.verifying_key(), network.clone());
            Fixture {
                ca,
                network,
                admin: AdminState::default(),
                dir,
                ranges: Vec::new(),
            }
        }

        fn issuer(&self) -> Issuer<'_> {
            Issuer {
                ca: &self.ca,
                network: &self.network,
                cidr: "10.42.0.0/16".parse().unwrap(),
                ranges: &self.ranges,
                subnet_prefix: 24,
                certificate_days: 365,
            }
        }

        fn token(&mut self, ttl: u64) -> JoinToken {
            let mut admin = std::mem::take(&mut self.admin);
            let t = self
                .issuer()
                .create_token(
                    &mut admin,
                    vec!["198.18.0.11:51821".parse().unwrap()],
                    ttl,
                    vec![],
                    NOW,
                )
                .unwrap();
            self.admin = admin;
            t
        }

        fn join(
            &mut self,
            token: &JoinToken,
            name: &str,
            subnet: Option<&str>,
            now: u64,
        ) -> Result<NodeCertificate, Refused> {
            let ask = JoinAsk {
                secret: token.secret().clone(),
                name: Name::new(name).unwrap(),
                wireguard_key: keys::PrivateKey::generate().public_key(),
                control_key: keys::SigningKey::generate().verifying_key(),
                subnet: subnet.map(|s| s.parse().unwrap()),
            };
            let mut admin = std::mem::take(&mut self.admin);
            let r = self.issuer().admit(&mut admin, &self.dir, &ask, now);
            self.admin = admin;
            r.map(|c| c.verify(&self.ca.verifying_key(), now).unwrap())
        }
    }

    #[test]
    fn a_token_admits_once_and_subnets_never_collide() {
        let mut f = Fixture::new();
        let t = f.token(3600);
        let a = f.join(&t, "h2", Some("10.42.2.0/24"), NOW).unwrap();
        assert_eq!(a.subnets, vec!["10.42.2.0/24".parse::<IpNet>().unwrap()]);
        let again = f.join(&t, "h3", None, NOW).unwrap_err();
        assert!(again.0.contains("already used (by h2)"), "{again}");
        let t = f.token(3600);
        let clash = f.join(&t, "h3", Some("10.42.2.0/24"), NOW).unwrap_err();
        assert!(
            clash.0.contains("overlaps 10.42.2.0/24 of member h2"),
            "{clash}"
        );
        let b = f.join(&t, "h3", None, NOW).unwrap();
        assert_eq!(b.subnets, vec!["10.42.0.0/24".parse::<IpNet>().unwrap()]);
        assert!(b.serial > a.serial);
    }

    #[test]
    fn bad_tokens_and_subnets_are_refused_with_a_reason() {
        let mut f = Fixture::new();
        let t = f.token(10);
        let e = f.join(&t, "h2", None, NOW + 10).unwrap_err();
        assert!(e.0.contains("expired"), "{e}");
        let other = Fixture::new().token(10);
        let mut other_fixture = Fixture::new();
        std::mem::swap(&mut other_fixture.admin, &mut f.admin);
        let e = f.join(&other, "h2", None, NOW).unwrap_err();
        assert!(e.0.contains("never issued"), "{e}");
        let mut f = Fixture::new();
        let t = f.token(10);
        for (subnet, needle) in [
            ("10.43.0.0/24", "outside the network's range"),
            ("10.42.2.0/25", "is not a /24"),
        ] {
            let e = f.join(&t, "h2", Some(subnet), NOW).unwrap_err();
            assert!(e.0.contains(needle), "{e}");
        }
        assert!(
            f.issuer()
                .create_token(
                    &mut AdminState::default(),
                    vec!["198.18.0.11:1".parse().unwrap()],
                    0,
                    vec![],
                    NOW
                )
                .is_err()
        );
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn every_member_gets_the_same_offset_in_every_range() {
        let mut f = Fixture::new();
        f.ranges = nets(&["10.43.0.0/16", "10.50.0.0/16"]);
        let t = f.token(3600);
        let a = f.join(&t, "h2", Some("10.42.2.0/24"), NOW).unwrap();
        assert_eq!(
            a.subnets,
            nets(&["10.42.2.0/24", "10.43.2.0/24", "10.50.2.0/24"])
        );
        // Asked for in an extra range: mapped to the same offset everywhere.
        let t = f.token(3600);
        let b = f.join(&t, "h3", Some("10.50.7.0/24"), NOW).unwrap();
        assert_eq!(
            b.subnets,
            nets(&["10.42.7.0/24", "10.43.7.0/24", "10.50.7.0/24"])
        );
        assert_eq!(
            f.admin.allocations[&Name::new("h3").unwrap()].to_string(),
            "10.42.7.0/24",
            "the admin remembers the main subnet"
        );
        // The parallel of a taken offset is taken too.
        let t = f.token(3600);
        let e = f.join(&t, "h4", Some("10.43.2.0/24"), NOW).unwrap_err();
        assert!(e.0.contains("of member h2"), "{e}");
        // The admin's pick is free in every range.
        let c = f.join(&t, "h4", None, NOW).unwrap();
        assert_eq!(
            c.subnets,
            nets(&["10.42.0.0/24", "10.43.0.0/24", "10.50.0.0/24"])
        );
        let t = f.token(60);
        let e = f.join(&t, "h5", Some("10.44.1.0/24"), NOW).unwrap_err();
        assert!(
            e.0.contains("outside the network's range 10.42.0.0/16, 10.43.0.0/16, 10.50.0.0/16"),
            "{e}"
        );
    }

    #[test]
    fn a_member_keeps_its_offset_and_offsets_run_out() {
        let f = Fixture::new();
        let ranges = nets(&["10.43.0.0/23"]);
        let issuer = Issuer {
            cidr: "10.42.0.0/23".parse().unwrap(),
            ranges: &ranges,
            ..f.issuer()
        };
        let mut admin = AdminState::default();
        let name = |n: &str| Name::new(n).unwrap();
        admin
            .allocations
            .insert(name("a"), "10.42.1.0/24".parse().unwrap());
        assert_eq!(
            issuer.allocate(&admin, &f.dir, &name("a"), None).unwrap(),
            nets(&["10.42.1.0/24", "10.43.1.0/24"]),
            "a member that comes back keeps its offset"
        );
        assert_eq!(
            issuer.allocate(&admin, &f.dir, &name("b"), None).unwrap(),
            nets(&["10.42.0.0/24", "10.43.0.0/24"])
        );
        admin
            .allocations
            .insert(name("b"), "10.42.0.0/24".parse().unwrap());
        let e = issuer
            .allocate(&admin, &f.dir, &name("c"), None)
            .unwrap_err();
        assert!(
            e.0.contains("no /24 is left free at the same offset"),
            "{e}"
        );
    }

    #[test]
    fn extra_ranges_must_match_the_main_one_and_not_overlap() {
        let cidr: IpNet = "10.42.0.0/16".parse().unwrap();
        assert_eq!(
            check_ranges(cidr, &nets(&["10.43.0.5/16"])).unwrap(),
            nets(&["10.43.0.0/16"])
        );
        for (ranges, needle) in [
            (vec!["10.43.0.0/24"], "not the size of the main range"),
            (vec!["fd00::/16"], "same address family"),
            (vec!["10.42.0.0/16"], "overlaps 10.42.0.0/16"),
            (
                vec!["10.43.0.0/16", "10.43.0.0/16"],
                "overlaps 10.43.0.0/16",
            ),
            (
                vec![
                    "10.43.0.0/16",
                    "10.44.0.0/16",
                    "10.45.0.0/16",
                    "10.46.0.0/16",
                    "10.47.0.0/16",
                    "10.48.0.0/16",
                    "10.49.0.0/16",
                    "10.50.0.0/16",
                ],
                "at most 7",
            ),
        ] {
            let e = check_ranges(cidr, &nets(&ranges)).unwrap_err();
            assert!(e.0.contains(needle), "{ranges:?}: {e}");
        }
        assert_eq!(
            check_ranges(cidr, &nets(&["10.43.0.0/16"; 1]))
                .unwrap()
                .len(),
            1
        );
        let v6: IpNet = "fd00:1::/48".parse().unwrap();
        assert_eq!(
            parallel(
                "fd00:1:0:5::/64".parse().unwrap(),
                v6,
                "fd00:2::/48".parse().unwrap()
            )
            .unwrap()
            .to_string(),
            "fd00:2:0:5::/64"
        );
        assert!(
            parallel(
                "10.9.0.0/24".parse().unwrap(),
                cidr,
                "10.43.0.0/16".parse().unwrap()
            )
            .is_none()
        );
    }
}
