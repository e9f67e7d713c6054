//! What only an admin (a holder of the CA key) does: issue join tokens, admit a joining
//! host (check its token, give it a subnet no one else has, sign its certificate), and
//! revoke a member. No I/O: the caller persists [`AdminState`] before it answers anyone.

use std::net::SocketAddr;

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
    /// Its range.
    pub cidr: IpNet,
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
        let subnet = self.allocate(admin, dir, &ask.name, ask.subnet)?;
        let groups = entry.groups.clone();
        let serial = admin.next_serial.max(1);
        let certificate = self.issue(
            &ask.name,
            ask.wireguard_key,
            ask.control_key,
            subnet,
            groups,
            serial,
            now,
        )?;
        admin.next_serial = serial + 1;
        admin.allocations.insert(ask.name.clone(), subnet);
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
        subnet: IpNet,
        groups: Vec<Name>,
        serial: u64,
        now: u64,
    ) -> Result<SignedCertificate, Refused> {
        let cert = NodeCertificate {
            network: self.network.clone(),
            node: name.clone(),
            wireguard_key,
            control_key,
            subnets: vec![subnet],
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

    /// The subnet for `name`: the one asked for if it is free, else the one it had, else
    /// the first free one.
    pub fn allocate(
        &self,
        admin: &AdminState,
        dir: &Directory,
        name: &Name,
        requested: Option<IpNet>,
    ) -> Result<IpNet, Refused> {
        let taken: Vec<(String, IpNet)> = admin
            .allocations
            .iter()
            .filter(|(n, _)| *n != name)
            .map(|(n, s)| (n.to_string(), *s))
            .chain(
                dir.live_members()
                    .filter(|m| m.name != name)
                    .flat_map(|m| m.subnets.iter().map(|s| (m.name.to_string(), *s))),
            )
            .collect();
        let clash = |net: &IpNet| {
            taken
                .iter()
                .find(|(_, s)| s.contains(net) || net.contains(s))
                .cloned()
        };
        if let Some(net) = requested {
            let net = net.trunc();
            if !self.cidr.contains(&net) {
                return Err(Refused(format!(
                    "subnet {net} is outside the network's range {}; ask for one inside it or let the admin pick",
                    self.cidr
                )));
            }
            if net.prefix_len() != self.subnet_prefix {
                return Err(Refused(format!(
                    "subnet {net} is not a /{} (this network gives each host a /{}); ask for a /{} or let the admin pick",
                    self.subnet_prefix, self.subnet_prefix, self.subnet_prefix
                )));
            }
            if let Some((other, s)) = clash(&net) {
                return Err(Refused(format!(
                    "subnet {net} overlaps {s} of member {other}; ask for another or let the admin pick"
                )));
            }
            return Ok(net);
        }
        if let Some(own) = admin.allocations.get(name)
            && clash(own).is_none()
        {
            return Ok(*own);
        }
        let subnets = self.cidr.subnets(self.subnet_prefix).map_err(|_| {
            Refused(format!(
                "the network's range {} cannot hold /{} subnets",
                self.cidr, self.subnet_prefix
            ))
        })?;
        for net in subnets {
            if clash(&net).is_none() {
                return Ok(net);
            }
        }
        Err(Refused(format!(
            "no free /{} is left in {}; revoke members that are gone, or make a network with a larger range",
            self.subnet_prefix, self.cidr
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

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    struct Fixture {
        ca: CaKey,
        network: Name,
        admin: AdminState,
        dir: Directory,
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
            }
        }

        fn issuer(&self) -> Issuer<'_> {
            Issuer {
                ca: &self.ca,
                network: &self.network,
                cidr: "10.42.0.0/16".parse().unwrap(),
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
}
