//! Tests of what a joining host accepts of an admin's answer (no sockets).

use super::*;
use keys::{CaKey, PrivateKey, SigningKey, TokenSecret};
use protocol::records::Revocation;

use crate::control::admin::Issuer;

const NOW: u64 = 1_800_000_000;

/// A network with its CA, its admin `h1` (serial 1) and a host `h2` that joins it.
struct Fixture {
    ca: CaKey,
    network: Name,
    admin: NodeCertificate,
    admin_key: PublicKey,
    joiner: Joiner,
    token: JoinToken,
}

impl Fixture {
    fn new() -> Fixture {
        let ca = CaKey::generate();
        let network = Name::new("testnet").unwrap();
        let admin_key = PrivateKey::generate().public_key();
        let admin = issue(&ca, &network, "h1", admin_key, 1);
        let joiner = Joiner {
            name: Name::new("h2").unwrap(),
            wireguard_key: PrivateKey::generate().public_key(),
            control_key: SigningKey::generate().verifying_key(),
        };
        let token = JoinToken::new(
            network.clone(),
            vec![addr()],
            ca.fingerprint(),
            TokenSecret::generate(),
            NOW + 600,
            Vec::new(),
        )
        .unwrap();
        Fixture {
            admin: admin.verify(&ca.verifying_key(), NOW).unwrap(),
            ca,
            network,
            admin_key,
            joiner,
            token,
        }
    }

    /// The admin's answer: a certificate for the joiner (serial 2) and `revocations`.
    fn answer(&self, revocations: &[Revocation]) -> Joined {
        let j = &self.joiner;
        let certificate = issue_for(
            &self.ca,
            &self.network,
            &j.name,
            j.wireguard_key,
            j.control_key,
            2,
        );
        Joined {
            certificate: certificate.to_bytes(),
            cidr: "10.42.0.0/16".parse().unwrap(),
            ranges: Vec::new(),
            subnet_prefix: 24,
            bundle: Bundle {
                members: Vec::new(),
                revocations: revocations
                    .iter()
                    .map(|r| r.sign(&self.ca).to_bytes())
                    .collect(),
                policy: None,
                names: Vec::new(),
                ca_transition: None,
            },
        }
    }

    fn revocation(&self, node: &str, serial: u64, wireguard_key: PublicKey) -> Revocation {
        Revocation {
            network: self.network.clone(),
            node: Name::new(node).unwrap(),
            serial,
            wireguard_key,
            revoked_at: NOW - 60,
        }
    }

    fn accept(&self, answer: Joined) -> Result<(NetworkState, Directory), ApiFailure> {
        accept(
            &self.token,
            addr(),
            self.ca.verifying_key(),
            &self.admin,
            &self.joiner,
            answer,
            NOW,
        )
    }
}

/// A certificate from `ca` for `name` with `wireguard_key` and a fresh control key.
fn issue(
    ca: &CaKey,
    network: &Name,
    name: &str,
    wireguard_key: PublicKey,
    serial: u64,
) -> keys::SignedCertificate {
    let control_key = SigningKey::generate().verifying_key();
    issue_for(
        ca,
        network,
        &Name::new(name).unwrap(),
        wireguard_key,
        control_key,
        serial,
    )
}

fn issue_for(
    ca: &CaKey,
    network: &Name,
    name: &Name,
    wireguard_key: PublicKey,
    control_key: VerifyingKey,
    serial: u64,
) -> keys::SignedCertificate {
    let issuer = Issuer {
        ca,
        network,
        cidr: "10.42.0.0/16".parse().unwrap(),
        ranges: &[],
        subnet_prefix: 24,
        certificate_lifetime_s: 365 * 86_400,
    };
    let subnet = format!("10.42.{serial}.0/24").parse().unwrap();
    issuer
        .issue(
            name,
            wireguard_key,
            control_key,
            vec![subnet],
            Vec::new(),
            serial,
            NOW,
        )
        .unwrap()
}

fn addr() -> SocketAddr {
    "198.18.0.11:51821".parse().unwrap()
}

#[test]
fn an_answer_from_a_current_admin_is_kept() {
    let f = Fixture::new();
    // Another member's revocation is no reason to refuse.
    let other = f.revocation("h7", 7, PrivateKey::generate().public_key());
    let (net, dir) = f.accept(f.answer(&[other])).expect("admitted");
    assert_eq!(net.network, f.network);
    assert_eq!(net.ca, f.ca.verifying_key());
    assert_eq!(net.bootstrap, vec![addr()]);
    assert!(!net.left);
    let cert = net.certificate.verify(&f.ca.verifying_key(), NOW).unwrap();
    assert_eq!(cert.node, f.joiner.name);
    assert_eq!(dir.revocations().count(), 1);
}

#[test]
fn an_admin_whose_certificate_the_answer_revokes_is_refused() {
    let f = Fixture::new();
    let refusals = [
        (
            "by serial",
            f.revocation("h1", 1, PrivateKey::generate().public_key()),
        ),
        ("by a later serial", f.revocation("h1", 5, f.admin_key)),
        ("by key", f.revocation("h1-old", 9, f.admin_key)),
    ];
    for (how, revocation) in refusals {
        let e = f.accept(f.answer(&[revocation])).unwrap_err();
        eprintln!("revoked {how}: {} {e}", e.status());
        assert_eq!(e.status(), 502, "revoked {how}");
        assert_eq!(
            e.to_string(),
            "join refused: the host at 198.18.0.11:51821 is member h1 of network testnet, whose certificate (serial 1) the network's CA revoked; nothing was saved: ask another admin of the network for a token",
            "revoked {how}"
        );
    }
    // An older certificate of the admin's name revoked: the current one (serial 1) is not.
    let mut f = Fixture::new();
    let reissued = issue(&f.ca, &f.network, "h1", f.admin_key, 3);
    f.admin = reissued.verify(&f.ca.verifying_key(), NOW).unwrap();
    let older = f.revocation("h1", 2, PrivateKey::generate().public_key());
    f.accept(f.answer(&[older]))
        .expect("a revocation of an older serial leaves the admin's current one");
}

#[test]
fn a_certificate_for_another_host_is_refused() {
    let f = Fixture::new();
    let mut answer = f.answer(&[]);
    let stranger = PrivateKey::generate().public_key();
    answer.certificate = issue_for(
        &f.ca,
        &f.network,
        &f.joiner.name,
        stranger,
        f.joiner.control_key,
        2,
    )
    .to_bytes();
    let e = f.accept(answer).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the admin's certificate is not for this host's name and keys"
    );
    let mut answer = f.answer(&[]);
    answer.certificate = vec![1, 2, 3];
    let e = f.accept(answer).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("the admin sent a bad certificate"),
        "{}",
        e.to_string()
    );
}
