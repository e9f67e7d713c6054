//! Tests of admission (tokens, proofs, names and keys held, subnets) and revocation.

use super::*;
use protocol::records::MemberState as RecordState;

const NOW: u64 = 1_800_000_000;

struct Fixture {
    ca: CaKey,
    network: Name,
    /// The admin's own WireGuard key.
    wireguard: PrivateKey,
    admin: AdminState,
    dir: Directory,
    ranges: Vec<IpNet>,
}

/// A joining host's keys.
struct Host {
    wireguard: PrivateKey,
    control: keys::SigningKey,
}

impl Host {
    fn new() -> Host {
        Host {
            wireguard: PrivateKey::generate(),
            control: keys::SigningKey::generate(),
        }
    }
}

impl Fixture {
    fn new() -> Fixture {
        let ca = CaKey::generate();
        let network = Name::new("testnet").unwrap();
        let dir = Directory::new(ca.verifying_key(), network.clone());
        Fixture {
            ca,
            network,
            wireguard: PrivateKey::generate(),
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
            certificate_lifetime_s: 365 * 86_400,
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

    /// A join as `name` with `wireguard_key`, proven with `holds` (the joiner's only
    /// WireGuard private key), with `control` as its control key.
    fn ask(
        &self,
        token: &JoinToken,
        name: &str,
        wireguard_key: PublicKey,
        holds: &PrivateKey,
        control: &keys::SigningKey,
        subnet: Option<&str>,
    ) -> JoinAsk {
        let mut ask = JoinAsk {
            secret: token.secret().clone(),
            name: Name::new(name).unwrap(),
            wireguard_key,
            control_key: control.verifying_key(),
            subnet: subnet.map(|s| s.parse().unwrap()),
            proof: JoinProof::from_bytes([0; keys::PROOF_LEN]),
        };
        ask.proof = JoinProof::prove(
            &ask.claim(&self.network, self.ca.fingerprint()),
            holds,
            &self.wireguard.public_key(),
        )
        .unwrap();
        ask
    }

    fn admit(&mut self, ask: &JoinAsk, now: u64) -> Result<SignedCertificate, Refused> {
        let mut admin = std::mem::take(&mut self.admin);
        let r = self
            .issuer()
            .admit(&mut admin, &self.dir, ask, &self.wireguard, now);
        self.admin = admin;
        r
    }

    /// `host` joins as `name` with its own keys.
    fn join_as(
        &mut self,
        token: &JoinToken,
        name: &str,
        host: &Host,
        now: u64,
    ) -> Result<SignedCertificate, Refused> {
        let key = host.wireguard.public_key();
        let ask = self.ask(token, name, key, &host.wireguard, &host.control, None);
        self.admit(&ask, now)
    }

    fn join(
        &mut self,
        token: &JoinToken,
        name: &str,
        subnet: Option<&str>,
        now: u64,
    ) -> Result<NodeCertificate, Refused> {
        let host = Host::new();
        let key = host.wireguard.public_key();
        let ask = self.ask(token, name, key, &host.wireguard, &host.control, subnet);
        self.admit(&ask, now)
            .map(|c| c.verify(&self.ca.verifying_key(), now).unwrap())
    }

    /// `host`'s record under `certificate` in `state`, applied to the admin's directory (as
    /// when it arrives by gossip).
    fn record(&mut self, certificate: &SignedCertificate, host: &Host, state: RecordState) {
        let record = protocol::records::MemberRecord {
            certificate: certificate.clone(),
            version: 1,
            state,
            control_port: 51821,
            endpoints: vec!["198.18.0.12:51820".parse().unwrap()],
            relay: None,
        }
        .sign(&host.control)
        .unwrap();
        self.dir.apply_member(&record, NOW).unwrap();
    }

    /// Makes this admin a member called h1, as `init` does, alive in its directory.
    fn init(&mut self) -> Host {
        let me = Host {
            wireguard: self.wireguard.clone(),
            control: keys::SigningKey::generate(),
        };
        let (name, main) = (Name::new("h1").unwrap(), "10.42.1.0/24".parse().unwrap());
        let key = me.wireguard.public_key();
        let cert = self
            .issuer()
            .issue(
                &name,
                key,
                me.control.verifying_key(),
                vec![main],
                vec![],
                1,
                NOW,
            )
            .unwrap();
        let mut admin = std::mem::take(&mut self.admin);
        self.issuer().remember(&mut admin, &name, key, main, 1, NOW);
        self.admin = admin;
        self.record(&cert, &me, RecordState::Alive);
        me
    }

    fn admin_json(&self) -> String {
        serde_json::to_string(&self.admin).unwrap()
    }

    fn serial(&self, certificate: &SignedCertificate) -> u64 {
        // Some are issued later than NOW; the signature is checked elsewhere.
        certificate.unverified_body().unwrap().serial
    }
}

/// Asserts `result` is a refusal that says `needle`.
fn refused(what: &str, result: Result<SignedCertificate, Refused>, needle: &str) {
    match result {
        Ok(_) => panic!("{what}: admitted"),
        Err(e) => assert!(e.0.contains(needle), "{what}: {e}"),
    }
}

#[test]
fn a_token_never_admits_a_current_members_name_or_key() {
    let mut f = Fixture::new();
    f.init();
    let h2 = Host::new();
    let t = f.token(3600);
    let h2_cert = f.join_as(&t, "h2", &h2, NOW).unwrap();
    f.record(&h2_cert, &h2, RecordState::Alive);
    let t = f.token(3600);
    let before = f.admin_json();
    let attacker = Host::new();

    // The takeover: h2's name and h2's WireGuard key (public), the attacker's control key,
    // a proof made with the only WireGuard key it holds.
    let ask = f.ask(
        &t,
        "h2",
        h2.wireguard.public_key(),
        &attacker.wireguard,
        &attacker.control,
        None,
    );
    let r = f.admit(&ask, NOW);
    if let Ok(c) = &r {
        panic!(
            "admitted a takeover of h2: a certificate for h2 with serial {} (h2 has {})",
            f.serial(c),
            f.serial(&h2_cert)
        );
    }
    refused(
        "h2's name and key",
        r,
        "did not prove that it holds the private key of WireGuard key",
    );
    // Against the admin's own name and key, likewise.
    let ask = f.ask(
        &t,
        "h1",
        f.wireguard.public_key(),
        &attacker.wireguard,
        &attacker.control,
        None,
    );
    refused("h1's name and key", f.admit(&ask, NOW), "did not prove");
    // A proof of another join (another name) does not carry over.
    let mut ask = f.ask(
        &t,
        "h9",
        attacker.wireguard.public_key(),
        &attacker.wireguard,
        &attacker.control,
        None,
    );
    ask.name = Name::new("h8").unwrap();
    refused(
        "a proof for another name",
        f.admit(&ask, NOW),
        "did not prove",
    );

    // Even the holder of h2's private key gets no second certificate for a current name:
    // the name stays h2's until an admin revokes it.
    refused(
        "h2's name and key, proven",
        f.join_as(&t, "h2", &h2, NOW),
        "the name h2 is held by a current member (with this WireGuard key",
    );
    refused(
        "h2's name with the joiner's own key",
        f.join_as(&t, "h2", &attacker, NOW),
        "the name h2 is held by a current member; revoke it first (overlayctl revoke h2) or choose another --name",
    );
    refused(
        "the admin's name with the joiner's own key",
        f.join_as(&t, "h1", &attacker, NOW),
        "the name h1 is held by a current member, this admin itself; choose another --name",
    );
    refused(
        "h2's key under a new name, proven",
        f.join_as(&t, "h9", &h2, NOW),
        "is held by member h2; every host needs its own key",
    );
    // Nothing changed, and the token still admits a host of its own.
    assert_eq!(
        before,
        f.admin_json(),
        "a refused join changed the admin's state"
    );
    let h3 = f.join_as(&t, "h3", &attacker, NOW).unwrap();
    assert!(f.serial(&h3) > f.serial(&h2_cert));
}

#[test]
fn a_name_is_held_from_its_issue_until_revoked_left_or_expired() {
    let mut f = Fixture::new();
    f.init();
    let (h2, h2_new) = (Host::new(), Host::new());
    let t = f.token(3600);
    let h2_cert = f.join_as(&t, "h2", &h2, NOW).unwrap();
    // No record of h2 has arrived yet: its name and key are held all the same.
    let t = f.token(3600);
    refused(
        "h2's name before its first record",
        f.join_as(&t, "h2", &h2_new, NOW),
        "the name h2 is held by a current member",
    );
    refused(
        "h2's key before its first record",
        f.join_as(&t, "h9", &h2, NOW),
        "is held by member h2",
    );
    // h2 leaves (a record signed with its own key): it gave its name up.
    f.record(&h2_cert, &h2, RecordState::Left);
    let again = f.join_as(&t, "h2", &h2_new, NOW).unwrap();
    assert!(f.serial(&again) > f.serial(&h2_cert));

    // h3 is revoked before its first record arrived: the admin revokes what it issued.
    let h3 = Host::new();
    let t = f.token(3600);
    let h3_cert = f.join_as(&t, "h3", &h3, NOW).unwrap();
    let t = f.token(3600);
    refused(
        "h3's name, not revoked",
        f.join_as(&t, "h3", &Host::new(), NOW),
        "revoke it first (overlayctl revoke h3)",
    );
    let revocation = f
        .issuer()
        .revoke(&f.admin, &f.dir, &Name::new("h3").unwrap(), NOW)
        .unwrap();
    assert_eq!(revocation.revocation().serial, f.serial(&h3_cert));
    assert_eq!(
        revocation.revocation().wireguard_key,
        h3.wireguard.public_key()
    );
    f.dir.apply_revocation(&revocation).unwrap();
    refused(
        "h3's revoked key",
        f.join_as(&t, "h3", &h3, NOW),
        "was revoked",
    );
    let h3_new = f.join_as(&t, "h3", &Host::new(), NOW).unwrap();
    assert!(f.serial(&h3_new) > f.serial(&h3_cert));

    // h4's certificate expires: its name and key are free again.
    let h4 = Host::new();
    let t = f.token(3600);
    let h4_cert = f.join_as(&t, "h4", &h4, NOW).unwrap();
    let expired = h4_cert
        .verify(&f.ca.verifying_key(), NOW)
        .unwrap()
        .not_after
        + 1;
    let t = f.token(expired - NOW + 60);
    let h4_again = f.join_as(&t, "h4", &h4, expired).unwrap();
    assert!(f.serial(&h4_again) > f.serial(&h4_cert));
}

#[test]
fn a_low_order_wireguard_key_is_refused() {
    let mut f = Fixture::new();
    let t = f.token(3600);
    let host = Host::new();
    let mut ask = f.ask(
        &t,
        "h2",
        host.wireguard.public_key(),
        &host.wireguard,
        &host.control,
        None,
    );
    ask.wireguard_key = PublicKey::from_bytes([0; 32]);
    refused("the zero key", f.admit(&ask, NOW), "low-order point");
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

/// A renewal keeps everything but the serial and the expiry; it is refused once the name
/// belongs to another member (admitted again after a revocation), once the member left, and
/// for a revoked certificate. A refusal changes nothing.
#[test]
fn a_reissue_keeps_the_member_and_is_refused_once_it_is_gone() {
    let mut f = Fixture::new();
    f.init();
    let token = f.token(600);
    let host = Host::new();
    let signed = f.join_as(&token, "h2", &host, NOW).unwrap();
    let first = signed.verify(&f.ca.verifying_key(), NOW).unwrap();
    f.record(&signed, &host, RecordState::Alive);
    let later = NOW + 100;
    let mut admin = f.admin.clone();
    let renewed = f
        .issuer()
        .reissue(&mut admin, &f.dir, &first, None, later)
        .unwrap()
        .verify(&f.ca.verifying_key(), later)
        .unwrap();
    assert!(renewed.serial > first.serial && renewed.not_after > first.not_after);
    assert_eq!(
        (
            &renewed.node,
            renewed.number,
            renewed.wireguard_key,
            &renewed.subnets,
            &renewed.groups
        ),
        (
            &first.node,
            first.number,
            first.wireguard_key,
            &first.subnets,
            &first.groups
        )
    );
    assert_eq!(admin.issued[&first.node].serial, renewed.serial);
    assert!(admin.next_serial > renewed.serial);
    // New groups are kept by the next renewal.
    let groups = vec![Name::new("db").unwrap()];
    let regrouped = f
        .issuer()
        .reissue(&mut admin, &f.dir, &renewed, Some(groups.clone()), later)
        .unwrap();
    let regrouped = regrouped.verify(&f.ca.verifying_key(), later).unwrap();
    assert_eq!(regrouped.groups, groups);
    let again = f
        .issuer()
        .reissue(&mut admin, &f.dir, &renewed, None, later)
        .unwrap()
        .verify(&f.ca.verifying_key(), later)
        .unwrap();
    assert_eq!(
        again.groups, groups,
        "a renewal of an older copy keeps the new groups"
    );

    // Revoked: refused.
    let revocation = f
        .issuer()
        .revoke(&admin, &f.dir, &first.node, later)
        .unwrap();
    let mut revoked = f.dir.clone();
    revoked.apply_revocation(&revocation).unwrap();
    let before = admin.clone();
    let e = f
        .issuer()
        .reissue(&mut admin, &revoked, &again, None, later)
        .unwrap_err();
    assert!(e.0.contains("revoked"), "{e}");
    assert_eq!(admin.next_serial, before.next_serial);

    // The name given to another member (another number): refused.
    let mut given = admin.clone();
    given.issued.get_mut(&first.node).unwrap().number = Some(first.number + 1000);
    let e = f
        .issuer()
        .reissue(&mut given, &f.dir, &again, None, later)
        .unwrap_err();
    assert!(e.0.contains("another member"), "{e}");

    // Left: refused.
    let left = protocol::records::MemberRecord {
        certificate: signed.clone(),
        version: 2,
        state: RecordState::Left,
        control_port: 51821,
        relay: None,
        endpoints: vec!["198.18.0.12:51820".parse().unwrap()],
    }
    .sign(&host.control)
    .unwrap();
    f.dir.apply_member(&left, NOW).unwrap();
    let e = f
        .issuer()
        .reissue(&mut admin, &f.dir, &first, None, later)
        .unwrap_err();
    assert!(e.0.contains("left"), "{e}");
}
