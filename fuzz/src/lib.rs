//! Fixtures shared by the fuzz targets and the seed generator (`examples/seeds.rs`): a
//! network CA, three members with certificates and signed records, all made from fixed
//! seeds so that a crash reproduces from its input alone, and the checks a target makes on
//! a [`Directory`] after every change.
//!
//! Nothing here reads a clock or the OS random number generator: time is [`NOW`].

use std::net::SocketAddr;
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ipnet::IpNet;
use keys::{CaKey, Name, NodeCertificate, PrivateKey, SignedCertificate, SigningKey};
use protocol::records::{
    Directory, MEMBER_RECORD_CONTEXT, MemberRecord, MemberState, Revocation, SignedMemberRecord,
    SignedRevocation,
};

/// The time every target runs at (unix seconds).
pub const NOW: u64 = 1_800_000_000;
/// One day, in seconds.
pub const DAY: u64 = 86_400;
/// The network every fixture belongs to.
pub const NETWORK: &str = "fuzznet";
/// The network's main range.
pub const CIDR: &str = "10.42.0.0/16";

/// An Ed25519 key from a fixed seed.
pub fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_base64(&BASE64.encode([seed; 32])).expect("32 bytes of base64")
}

/// An X25519 key from a fixed seed (clamped as `wg genkey` does).
pub fn wireguard_key(seed: u8) -> PrivateKey {
    let mut bytes = [seed; 32];
    bytes[0] &= 248;
    bytes[31] &= 127;
    bytes[31] |= 64;
    PrivateKey::from_base64(&BASE64.encode(bytes)).expect("32 bytes of base64")
}

/// `text` as a [`Name`]; panics on a bad one (fixtures only).
pub fn name(text: &str) -> Name {
    Name::new(text).expect("a valid name")
}

/// `text` as an [`IpNet`]; panics on a bad one (fixtures only).
pub fn net(text: &str) -> IpNet {
    text.parse().expect("a valid subnet")
}

/// A member of the fixture network: its keys and its CA-signed certificate.
pub struct Member {
    /// Its node name.
    pub name: Name,
    /// Its control key (signs its records).
    pub key: SigningKey,
    /// Its WireGuard key.
    pub wireguard: PrivateKey,
    /// Its certificate, signed by [`Fixture::ca`].
    pub certificate: SignedCertificate,
    /// What the certificate says.
    pub body: NodeCertificate,
}

impl Member {
    /// Its record at `version`, signed by its own key.
    pub fn record(
        &self,
        version: u64,
        state: MemberState,
        endpoints: &[SocketAddr],
    ) -> SignedMemberRecord {
        MemberRecord {
            certificate: self.certificate.clone(),
            version,
            state,
            control_port: 51821,
            endpoints: endpoints.to_vec(),
            relay: None,
        }
        .sign(&self.key)
        .expect("a fixture record follows the rules")
    }
}

/// The fixture network: a CA and three members.
pub struct Fixture {
    /// The network's CA.
    pub ca: CaKey,
    /// The network's name.
    pub network: Name,
    /// `h1` (10.42.1.0/24), `h2` (10.42.2.0/24), `h3` (10.42.3.0/24 and fd00:42:3::/64),
    /// serials 1, 2, 3.
    pub members: Vec<Member>,
    /// A certificate for `h2` with serial 4 and new keys (a re-issue).
    pub reissued: Member,
    /// A member of another CA, with `h1`'s name and subnet.
    pub stranger: Member,
}

fn member(ca: &CaKey, node: &str, seed: u8, serial: u64, subnets: &[&str]) -> Member {
    let key = signing_key(seed);
    let wireguard = wireguard_key(seed);
    let body = NodeCertificate {
        network: name(NETWORK),
        node: name(node),
        wireguard_key: wireguard.public_key(),
        control_key: key.verifying_key(),
        subnets: subnets.iter().map(|s| net(s)).collect(),
        groups: vec![name("web")],
        not_before: NOW - DAY,
        not_after: NOW + 365 * DAY,
        serial,
        number: serial as u32,
        ca_fingerprint: ca.fingerprint(),
    };
    Member {
        name: name(node),
        certificate: ca
            .sign(&body)
            .expect("a fixture certificate follows the rules"),
        key,
        wireguard,
        body,
    }
}

impl Fixture {
    fn new() -> Fixture {
        let ca = CaKey::from_signing_key(signing_key(1));
        let members = vec![
            member(&ca, "h1", 11, 1, &["10.42.1.0/24"]),
            member(&ca, "h2", 12, 2, &["10.42.2.0/24"]),
            member(&ca, "h3", 13, 3, &["10.42.3.0/24", "fd00:42:3::/64"]),
        ];
        let reissued = member(&ca, "h2", 22, 4, &["10.42.2.0/24"]);
        let other_ca = CaKey::from_signing_key(signing_key(2));
        let stranger = member(&other_ca, "h1", 31, 1, &["10.42.1.0/24"]);
        Fixture {
            ca,
            network: name(NETWORK),
            members,
            reissued,
            stranger,
        }
    }

    /// An empty directory of the fixture network.
    pub fn empty_directory(&self) -> Directory {
        Directory::new(self.ca.verifying_key(), self.network.clone())
    }

    /// A directory holding `h1` alive at version 1.
    pub fn directory(&self) -> Directory {
        let mut dir = self.empty_directory();
        dir.apply_member(&self.alive(0, 1), NOW)
            .expect("h1's record is genuine");
        dir
    }

    /// Member `index`'s alive record at `version`, with one endpoint.
    pub fn alive(&self, index: usize, version: u64) -> SignedMemberRecord {
        let endpoint = SocketAddr::from(([198, 18, 0, 11 + index as u8], 51820));
        self.members[index].record(version, MemberState::Alive, &[endpoint])
    }

    /// The CA's revocation of `member`.
    pub fn revocation(&self, member: &Member) -> SignedRevocation {
        Revocation {
            network: self.network.clone(),
            node: member.name.clone(),
            serial: member.body.serial,
            wireguard_key: member.wireguard.public_key(),
            revoked_at: NOW,
        }
        .sign(&self.ca)
    }
}

/// The fixture, made once per process.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(Fixture::new)
}

/// Panics unless `signed` is genuine: its certificate verifies with `dir`'s CA at `now`
/// for `dir`'s network, and the record verifies with that certificate's control key.
/// Called on every record a directory accepted.
pub fn assert_genuine(dir: &Directory, signed: &SignedMemberRecord, now: u64) {
    let cert = signed
        .record()
        .certificate
        .verify(dir.ca(), now)
        .unwrap_or_else(|e| panic!("the directory accepted a record whose certificate fails: {e}"));
    assert_eq!(
        &cert.network,
        dir.network(),
        "the directory accepted a record of another network"
    );
    assert!(
        cert.control_key
            .verify(MEMBER_RECORD_CONTEXT, signed.body(), signed.signature())
            .is_ok(),
        "the directory accepted a record for {} that its key did not sign",
        cert.node
    );
    assert!(
        !dir.is_certificate_revoked(&cert),
        "the directory accepted a revoked certificate of {}",
        cert.node
    );
}

/// Panics unless `dir` holds what the rules allow: live members' subnets do not overlap,
/// no two live members share a WireGuard key, no live member's key is revoked, and every
/// held record is genuine (checked at the time it was applied, `now`, for fixtures).
pub fn assert_directory_invariants(dir: &Directory) {
    let live: Vec<_> = dir.live_members().collect();
    for (i, a) in live.iter().enumerate() {
        assert!(
            !dir.is_revoked(a.wireguard_key),
            "live member {} has a revoked key",
            a.name
        );
        for b in &live[..i] {
            assert_ne!(
                a.wireguard_key, b.wireguard_key,
                "live members {} and {} share a WireGuard key",
                a.name, b.name
            );
            for x in a.subnets {
                for y in b.subnets {
                    assert!(
                        !x.contains(y) && !y.contains(x),
                        "live members {} ({x}) and {} ({y}) overlap",
                        a.name,
                        b.name
                    );
                }
            }
        }
    }
}

/// Splits fuzz input into chunks: each is a length byte and that many bytes (cut short
/// at the end of the input). Lets one input carry several datagrams or records.
pub fn chunks(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let len = usize::from(len).min(rest.len());
        out.push(&rest[..len]);
        data = &rest[len..];
    }
    out
}

/// Like [`chunks`], with a two-byte big-endian length (for records longer than 255 bytes).
pub fn long_chunks(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((len, rest)) = data.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
        out.push(&rest[..len]);
        data = &rest[len..];
    }
    out
}

/// The inverse of [`long_chunks`], for seeds.
pub fn join_long_chunks<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        let len = u16::try_from(part.len()).expect("a chunk under 64 KiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}
