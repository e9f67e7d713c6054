//! Writes the seed inputs of every fuzz target into `fuzz/corpus/TARGET/seed-NAME`: a real
//! token, certificates, frames, SWIM datagrams, Docker calls, API bodies, the example
//! config, and inputs that make the router target build genuine packets. Fixtures come
//! from fixed seeds (`overlay_fuzz`), so running it again rewrites the same files, except
//! where a format changed.
//!
//! Run: `cargo +nightly run --release --example seeds --manifest-path fuzz/Cargo.toml`
//! (scripts/fuzz does not run it: the seeds are committed).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use foca::{AccumulatingRuntime, BroadcastHandler, Foca, Invalidates, Member, PostcardCodec};
use futures::executor::block_on;
use keys::{JoinClaim, JoinProof, JoinToken, TokenSecret};
use overlay_fuzz::{Fixture, NOW, fixture, join_long_chunks, net, signing_key, wireguard_key};
use overlayd::control::msg::{self, Bundle, Request, Response};
use protocol::membership::NodeId;
use protocol::records::MemberState;
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;

struct Corpus {
    root: PathBuf,
    written: usize,
}

impl Corpus {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).expect("a corpus folder");
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("a seed file");
        self.written += 1;
    }
}

fn with(first: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    v.extend_from_slice(rest);
    v
}

fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

fn ipv6(src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src);
    p[24..40].copy_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

fn router(c: &mut Corpus) {
    let t = "router";
    let mut data = vec![4u8, 0, 0, 0];
    data.extend_from_slice(&1u32.to_le_bytes());
    data.extend_from_slice(&[0; 8 + 16]);
    c.put(t, "raw-data-header", &with(0, &data));
    let mut init = vec![1u8, 0, 0, 0];
    init.resize(148, 0);
    c.put(t, "stranger-initiation-shaped", &with(1, &init));
    c.put(
        t,
        "genuine-data",
        &[2, 0, 0, 0, 0, 0, b'h', b'e', b'l', b'l', b'o'],
    );
    c.put(
        t,
        "genuine-data-from-stranger",
        &[2, 0, 0, 0, 0, 1, b'h', b'i'],
    );
    c.put(t, "flipped-counter", &[2, 0, 0, 9, 0x80, 0, b'x']);
    c.put(t, "cut-data", &[2, 0, 20, 0, 0, 1, b'x', b'y']);
    let a_to_b = ipv4([10, 42, 1, 2], [10, 42, 2, 2], b"ping");
    c.put(t, "tun-a-to-b", &with(3, &a_to_b));
    let forged = ipv4([10, 42, 3, 7], [10, 42, 2, 2], b"forged source");
    c.put(t, "tun-forged-source", &with(3, &forged));
    let not_local = ipv4([10, 42, 1, 2], [10, 99, 0, 5], b"through B");
    c.put(t, "tun-to-beyond-b", &with(3, &not_local));
    let b_to_a = ipv4([10, 42, 2, 2], [10, 42, 1, 9], b"pong");
    c.put(t, "tun-b-to-a", &with(3, &b_to_a));
    let mut v6_src = [0u8; 16];
    v6_src[..2].copy_from_slice(&[0xfd, 0]);
    let v6 = ipv6(v6_src, v6_src, b"v6");
    c.put(t, "tun-ipv6", &with(3, &v6));
    c.put(t, "initiation-genuine", &[4, 0, 0, 0, 0, 0]);
    c.put(t, "initiation-mac2-flipped", &[4, 0, 0, 140, 1, 1]);
    c.put(
        t,
        "initiation-flipped-from-stranger",
        &[4, 0, 0, 8, 0x10, 1],
    );
    let mut seq = vec![5u8];
    for (how, body) in [(0u8, &data[..]), (2, &init[..]), (1, &[2u8, 0, 0, 0][..])] {
        seq.push((body.len() + 1) as u8);
        seq.push(how);
        seq.extend_from_slice(body);
    }
    c.put(t, "sequence", &seq);
    // Mode 6: relay framing (how: bit 0 from the stranger, bit 1 "from a relay", bit 2
    // naming B, bit 3 no header written).
    c.put(t, "relay-to-relay-from-a", &with(6, &with(0b0000, &data)));
    c.put(t, "relay-from-relay-from-a", &with(6, &with(0b0010, &init)));
    c.put(
        t,
        "relay-from-stranger-naming-b",
        &with(6, &with(0b0101, &data)),
    );
    let mut framed = vec![0x11u8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    framed.extend_from_slice(&data);
    c.put(t, "relay-raw-header", &with(6, &with(0b1000, &framed)));
}

fn bundle(f: &Fixture) -> Bundle {
    Bundle {
        members: vec![f.alive(0, 1).to_bytes(), f.alive(1, 3).to_bytes()],
        revocations: vec![f.revocation(&f.members[2]).to_bytes()],
        policy: None,
        names: vec![names(f)],
        ca_transition: None,
    }
}

/// `h1`'s name set: one container with an alias.
fn names(f: &Fixture) -> Vec<u8> {
    use protocol::records::names::{NameEntry, NameSet};
    let h1 = &f.members[0];
    NameSet {
        network: f.network.clone(),
        member: h1.name.clone(),
        number: h1.body.number,
        version: 1,
        entries: vec![NameEntry {
            name: "web".into(),
            aliases: vec!["api".into()],
            address: "10.42.1.2".parse().expect("an address"),
            network: "ovl".into(),
            range: "10.42.0.0/16".parse().expect("a range"),
        }],
    }
    .sign(&h1.key)
    .expect("a name set signs")
    .to_bytes()
}

fn frame<T: serde::Serialize>(mode: u8, value: &T) -> Vec<u8> {
    let mut out = vec![mode];
    block_on(msg::write(&mut out, value)).expect("a seed frame encodes");
    out
}

fn control_frame(c: &mut Corpus) {
    let t = "control_frame";
    let f = fixture();
    let join = |name: &str, seed: u8, subnet: Option<&str>| {
        let (name, control_key, subnet) = (
            overlay_fuzz::name(name),
            signing_key(seed).verifying_key(),
            subnet.map(net),
        );
        let secret = TokenSecret::from_bytes([0x5a; 32]);
        let claim = JoinClaim {
            network: &f.network,
            ca: f.ca.fingerprint(),
            secret: &secret,
            name: &name,
            control_key: &control_key,
            subnet,
        };
        let joiner = wireguard_key(seed);
        // The admin is h1: the proof is made for its WireGuard key.
        let proof = JoinProof::prove(&claim, &joiner, &f.members[0].wireguard.public_key())
            .expect("a fixture key");
        Request::Join {
            secret: [0x5a; 32],
            name,
            wireguard_key: joiner.public_key(),
            control_key,
            subnet,
            proof: proof.to_bytes(),
        }
    };
    c.put(t, "join", &frame(0, &join("h4", 44, None)));
    c.put(
        t,
        "join-subnet",
        &frame(0, &join("h5", 45, Some("10.42.9.0/24"))),
    );
    c.put(
        t,
        "join-extra-range",
        &frame(0, &join("h6", 46, Some("10.43.9.0/24"))),
    );
    c.put(t, "join-small-limit", &frame(2, &join("h7", 47, None)));
    c.put(
        t,
        "join-honest",
        &frame(4, &join("h8", 48, Some("10.42.8.0/24"))),
    );
    c.put(t, "join-as-h1", &frame(4, &join("h1", 11, None)));
    c.put(t, "sync", &frame(0, &Request::Sync(bundle(f))));
    c.put(t, "push", &frame(0, &Request::Push(bundle(f))));
    c.put(
        t,
        "joined",
        &frame(
            1,
            &Response::Joined {
                certificate: f.members[1].certificate.to_bytes(),
                cidr: net(overlay_fuzz::CIDR),
                ranges: vec![net("10.43.0.0/16")],
                subnet_prefix: 24,
                bundle: bundle(f),
            },
        ),
    );
    c.put(t, "response-sync", &frame(1, &Response::Sync(bundle(f))));
    c.put(t, "ack", &frame(1, &Response::Ack));
    c.put(t, "refused", &frame(1, &Response::Refused("no".into())));
    c.put(t, "renew", &frame(0, &Request::Renew));
    c.put(
        t,
        "reissued",
        &frame(0, &Request::Reissued(f.members[2].certificate.to_bytes())),
    );
    c.put(
        t,
        "renewed",
        &frame(
            1,
            &Response::Renewed {
                certificate: f.members[1].certificate.to_bytes(),
            },
        ),
    );
    c.put(
        t,
        "rendezvous",
        &frame(
            0,
            &Request::Rendezvous {
                with: 3,
                delay_ms: 300,
            },
        ),
    );
    c.put(
        t,
        "punch",
        &frame(
            0,
            &Request::Punch {
                from: 2,
                delay_ms: 300,
            },
        ),
    );
    let admins = vec![
        overlayd::control::admins::AdminRecord {
            network: f.network.clone(),
            node: keys::Name::new("h1").expect("a name"),
            number: 1,
            slot: 0,
            serial_floor: 0,
            blocks: 0xffff_ffff,
            version: 2,
            retired: false,
        }
        .sign(&f.ca),
        overlayd::control::admins::AdminRecord {
            network: f.network.clone(),
            node: keys::Name::new("h2").expect("a name"),
            number: 2,
            slot: 1,
            serial_floor: 9,
            blocks: 0xffff_ffff_0000_0000,
            version: 1,
            retired: false,
        }
        .sign(&f.ca),
    ];
    c.put(t, "admins", &frame(0, &Request::Admins(admins.clone())));
    // Token records travel in the same list between admins (`admins::tokens`).
    let token = |used_by: Option<&str>| {
        overlayd::control::admins::tokens::TokenRecord {
            network: f.network.clone(),
            issuer: keys::Name::new("h1").expect("a name"),
            secret_hash: keys::TokenSecret::from_bytes([7; 32]).hash(),
            expires_unix: u64::MAX,
            groups: vec![keys::Name::new("web").expect("a name")],
            used_by: used_by.map(|n| keys::Name::new(n).expect("a name")),
        }
        .sign(&f.ca)
    };
    let mut with_tokens = admins.clone();
    with_tokens.extend([token(None), token(Some("h4"))]);
    c.put(t, "admins-tokens", &frame(0, &Request::Admins(with_tokens)));
    c.put(
        t,
        "admin-key",
        &frame(
            0,
            &Request::AdminKey {
                key: signing_key(9).to_base64().to_string(),
                admins,
            },
        ),
    );
    c.put(
        t,
        "rekey",
        &frame(
            0,
            &Request::Rekey {
                wireguard_key: f.members[2].body.wireguard_key,
                proof: [7; keys::REKEY_PROOF_LEN],
            },
        ),
    );
    let bare = postcard::to_allocvec(&bundle(f)).expect("a bundle encodes");
    c.put(t, "bare-bundle", &with(3, &bare));
}

fn op(kind: u8, rest: &[u8]) -> Vec<u8> {
    with(kind, rest)
}

fn directory(c: &mut Corpus) {
    let t = "directory";
    let f = fixture();
    let seqs: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("h2-alive", vec![op(2, &[1, 1, 0, 1, 0, 0])]),
        (
            "versions-and-replay",
            vec![
                op(2, &[1, 2, 0, 1, 0, 0]),
                op(2, &[1, 1, 0, 2, 0, 0]),
                op(2, &[1, 3, 1, 0, 0, 0]),
            ],
        ),
        (
            "overlap-and-reissue",
            vec![
                op(2, &[1, 1, 0, 1, 0, 0]),
                op(2, &[3, 1, 0, 1, 0, 0]),
                op(5, &[0]),
            ],
        ),
        (
            "revoke",
            vec![
                op(2, &[2, 1, 0, 1, 0, 0]),
                op(3, &[2, 0]),
                op(2, &[2, 2, 0, 1, 0, 0]),
            ],
        ),
        ("flipped-record", vec![op(2, &[1, 1, 0, 1, 0, 7, 0, 40])]),
        ("flipped-revocation", vec![op(3, &[0, 1, 0, 20])]),
        ("stranger", vec![op(4, &[]), op(2, &[4, 1, 0, 1, 0, 0])]),
        ("raw-member", vec![op(0, &f.alive(2, 5).to_bytes())]),
        (
            "raw-revocation",
            vec![op(1, &f.revocation(&f.members[0]).to_bytes())],
        ),
        (
            "raw-left",
            vec![op(
                0,
                &f.members[1].record(9, MemberState::Left, &[]).to_bytes(),
            )],
        ),
        (
            "persist-and-expire",
            vec![op(2, &[2, 1, 0, 4, 3, 0]), op(5, &[13])],
        ),
    ];
    for (name, ops) in seqs {
        c.put(t, name, &join_long_chunks(ops.iter().map(Vec::as_slice)));
    }
}

/// A broadcast handler for the sending side: every item is new.
struct Spread;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Whole(Vec<u8>);

impl Invalidates for Whole {
    fn invalidates(&self, other: &Self) -> bool {
        self == other
    }
}

impl BroadcastHandler<NodeId> for Spread {
    type Key = Whole;
    type Error = std::convert::Infallible;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeId>,
    ) -> Result<Option<Whole>, Self::Error> {
        Ok(Some(Whole(data.to_vec())))
    }
}

fn gossip(c: &mut Corpus) {
    let t = "gossip";
    let f = fixture();
    let config = protocol::membership::Config::lan(16)
        .to_foca()
        .expect("valid");
    let mut sender = Foca::with_custom_broadcast(
        NodeId::new(2),
        config,
        Pcg64Mcg::seed_from_u64(3),
        PostcardCodec,
        Spread,
    );
    let mut rt = AccumulatingRuntime::new();
    let drain = |rt: &mut AccumulatingRuntime<NodeId>| {
        let mut out = Vec::new();
        while let Some((_, bytes)) = rt.to_send() {
            out.push(bytes.to_vec());
        }
        while rt.to_schedule().is_some() {}
        while rt.to_notify().is_some() {}
        out
    };
    // h1 as the target runs it: at its first start, generation 1.
    let h1 = NodeId {
        node: 1,
        generation: 1,
    };
    sender.announce(h1, &mut rt).expect("announce");
    let announce = drain(&mut rt);
    sender
        .apply_many([Member::alive(h1)].into_iter(), true, &mut rt)
        .expect("apply");
    drain(&mut rt);
    let mut record = vec![0u8];
    record.extend_from_slice(&f.alive(1, 2).to_bytes());
    sender.add_broadcast(&record).expect("a record fits");
    let mut revocation = vec![1u8];
    revocation.extend_from_slice(&f.revocation(&f.members[2]).to_bytes());
    sender
        .add_broadcast(&revocation)
        .expect("a revocation fits");
    sender.gossip(&mut rt).expect("gossip");
    let gossiped = drain(&mut rt);
    c.put(
        t,
        "announce",
        &join_long_chunks(announce.iter().map(Vec::as_slice)),
    );
    c.put(
        t,
        "gossip-with-records",
        &join_long_chunks(gossiped.iter().map(Vec::as_slice)),
    );
    let both: Vec<&[u8]> = announce
        .iter()
        .chain(&gossiped)
        .map(Vec::as_slice)
        .collect();
    c.put(t, "announce-then-gossip", &join_long_chunks(both));
}

fn token(c: &mut Corpus) -> JoinToken {
    let t = "token";
    let f = fixture();
    let endpoints: Vec<SocketAddr> = vec![
        "198.18.0.11:51821".parse().unwrap(),
        "[2001:db8::1]:51821".parse().unwrap(),
    ];
    let token = JoinToken::new(
        f.network.clone(),
        endpoints,
        f.ca.fingerprint(),
        TokenSecret::from_bytes([0x5a; 32]),
        NOW + 3600,
        vec![overlay_fuzz::name("web")],
    )
    .expect("a valid token");
    let text = token.to_text();
    c.put(t, "text", &with(0, text.as_bytes()));
    c.put(
        t,
        "text-with-newline",
        &with(0, format!("{}\n", text.as_str()).as_bytes()),
    );
    let bytes = BASE64URL
        .decode(text.strip_prefix("ovljoin1.").expect("the prefix"))
        .expect("base64url");
    c.put(t, "bytes", &with(1, &bytes));
    c.put(t, "other-version", &with(0, b"ovljoin2.AAAA"));
    token
}

fn certificate(c: &mut Corpus) {
    let t = "certificate";
    let f = fixture();
    for (i, m) in f.members.iter().enumerate() {
        c.put(
            t,
            &format!("bytes-{}", m.name),
            &with(0, &m.certificate.to_bytes()),
        );
        c.put(
            t,
            &format!("text-{}", m.name),
            &with(1, m.certificate.to_string().as_bytes()),
        );
        c.put(t, &format!("flipped-{}", m.name), &[2, i as u8, 0, 30, 1]);
    }
    c.put(
        t,
        "bytes-other-ca",
        &with(0, &f.stranger.certificate.to_bytes()),
    );
}

/// `tls::verify::der_octet_string`.
fn der_octet_string(content: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04];
    match content.len() {
        len @ 0..0x80 => out.push(len as u8),
        len @ 0x80..0x100 => out.extend_from_slice(&[0x81, len as u8]),
        len => {
            out.push(0x82);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(content);
    out
}

/// What `tls::presented_certificate` makes for `member` with CA key `ca`.
fn presented(member: &overlay_fuzz::Member, ca: &keys::VerifyingKey) -> Vec<u8> {
    let pkcs8 = member.key.to_pkcs8_der();
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
        &rcgen::PKCS_ED25519,
    )
    .expect("an Ed25519 key");
    let mut payload = ca.as_bytes().to_vec();
    payload.extend_from_slice(&member.certificate.to_bytes());
    let mut params = rcgen::CertificateParams::new(vec!["overlayd".to_string()]).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "overlayd");
    params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
        overlayd::control::tls::NODE_CERTIFICATE_OID,
        der_octet_string(&payload),
    )];
    params
        .self_signed(&key_pair)
        .expect("a certificate")
        .der()
        .to_vec()
}

fn tls_certificate(c: &mut Corpus) {
    let t = "tls_certificate";
    let f = fixture();
    let ca = f.ca.verifying_key();
    for m in &f.members {
        c.put(t, &format!("presented-{}", m.name), &presented(m, &ca));
    }
    c.put(
        t,
        "presented-other-ca",
        &presented(&f.stranger, &signing_key(2).verifying_key()),
    );
}

fn docker(c: &mut Corpus) {
    let t = "docker";
    let pool = r#"{"AddressSpace":"overlayd-local","Pool":"10.42.0.0/16","SubPool":"","Options":{},"V6":false}"#;
    let gateway = r#"{"PoolID":"overlayd:10.42.0.0/16","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#;
    let network = r#"{"NetworkID":"94a1c2d3e4f5","Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{"com.docker.network.driver.mtu":"1400"}},"IPv4Data":[{"AddressSpace":"overlayd-local","Pool":"10.42.0.0/16","Gateway":"10.42.7.1/24"}],"IPv6Data":[]}"#;
    let address = r#"{"PoolID":"overlayd:10.42.0.0/16","Address":"","Options":null}"#;
    let fixed = r#"{"PoolID":"overlayd:10.42.0.0/16","Address":"10.42.7.20","Options":{}}"#;
    let endpoint = r#"{"NetworkID":"94a1c2d3e4f5","EndpointID":"e1f2a3b4c5d6","Interface":{"Address":"10.42.7.2/24","AddressIPv6":"","MacAddress":""},"Options":{}}"#;
    let publish = r#"{"NetworkID":"94a1c2d3e4f5","EndpointID":"e1f2a3b4c5d6","Options":{"com.docker.network.portmap":[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080},{"Proto":17,"IP":"","Port":53,"HostIP":"198.18.0.11","HostPort":5353,"HostPortEnd":0}]}}"#;
    let reference = r#"{"NetworkID":"94a1c2d3e4f5","EndpointID":"e1f2a3b4c5d6"}"#;
    let release = r#"{"PoolID":"overlayd:10.42.0.0/16","Address":"10.42.7.2"}"#;
    let release_pool = r#"{"PoolID":"overlayd:10.42.0.0/16"}"#;
    let life: Vec<(u8, &str)> = vec![
        (0, pool),
        (2, gateway),
        (4, network),
        (2, address),
        (2, fixed),
        (6, endpoint),
        (8, publish),
        (10, reference),
        (9, reference),
        (7, reference),
        (3, release),
        (5, reference),
        (1, release_pool),
    ];
    let calls: Vec<Vec<u8>> = life.iter().map(|(m, b)| with(*m, b.as_bytes())).collect();
    c.put(
        t,
        "lifecycle",
        &join_long_chunks(calls.iter().map(Vec::as_slice)),
    );
    let names = [
        "request-pool",
        "release-pool",
        "request-address",
        "release-address",
        "create-network",
        "delete-network",
        "create-endpoint",
        "delete-endpoint",
        "program-external",
        "revoke-external",
        "join",
    ];
    let bodies = [
        pool,
        release_pool,
        address,
        release,
        network,
        reference,
        endpoint,
        reference,
        publish,
        reference,
        reference,
    ];
    for (i, (name, body)) in names.iter().zip(bodies).enumerate() {
        let prefix: Vec<Vec<u8>> = if i == 0 {
            Vec::new()
        } else {
            vec![with(0, pool.as_bytes())]
        };
        let mut all = prefix;
        all.push(with(i as u8, body.as_bytes()));
        c.put(t, name, &join_long_chunks(all.iter().map(Vec::as_slice)));
    }
    c.put(
        t,
        "empty-body",
        &join_long_chunks([&[0u8, b' ', b'\n'][..]]),
    );
}

fn api(c: &mut Corpus, token: &JoinToken) {
    let t = "api";
    c.put(
        t,
        "init",
        &with(
            0,
            br#"{"network":"prod","cidr":"10.42.0.0/16","name":"h1"}"#,
        ),
    );
    c.put(
        t,
        "init-ranges",
        &with(
            0,
            br#"{"network":"prod","cidr":"10.42.0.0/16","ranges":["10.43.0.0/16","10.50.0.0/16"],"name":"h1","subnet":"10.43.7.0/24","subnet_prefix":24}"#,
        ),
    );
    c.put(
        t,
        "init-ipv6",
        &with(
            0,
            br#"{"network":"v6","cidr":"fd00:42::/48","name":"h1","subnet_prefix":64}"#,
        ),
    );
    c.put(
        t,
        "tokens",
        &with(1, br#"{"ttl_s":3600,"groups":["web","db"]}"#),
    );
    let join = format!(
        r#"{{"token":"{}","name":"h2","subnet":"10.42.2.0/24"}}"#,
        token.to_text().as_str()
    );
    c.put(t, "join", &with(2, join.as_bytes()));
    c.put(t, "revoke", &with(3, br#"{"name":"h2"}"#));
}

fn config(c: &mut Corpus) {
    let t = "config";
    let minimal = "private_key_file = \"private.key\"\nsubnets = [\"10.42.1.0/24\"]\n";
    c.put(t, "minimal", minimal.as_bytes());
    let peers = format!(
        "private_key_file = \"private.key\"\nlisten_port = 51820\ntun_name = \"ovl0\"\nmtu = 1420\naddress = \"10.42.1.1\"\nsubnets = [\"10.42.1.0/24\"]\n\n[[peer]]\npublic_key = \"{}\"\nendpoint = \"198.18.0.12:51820\"\nsubnets = [\"10.42.2.0/24\", \"fd00:42:2::/64\"]\npersistent_keepalive = 25\n",
        wireguard_key(42).public_key()
    );
    c.put(t, "peers", peers.as_bytes());
    c.put(t, "open-key", b"private_key_file = \"open.key\"\n");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/overlayd.toml");
    match std::fs::read_to_string(&example) {
        // The key file it names is outside the target's folder: point it inside.
        Ok(text) => c.put(
            t,
            "example",
            text.replace("\"/etc/overlayd/private.key\"", "\"private.key\"")
                .as_bytes(),
        ),
        Err(e) => eprintln!(
            "seeds: {} not read ({e}); no example seed",
            example.display()
        ),
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut c = Corpus { root, written: 0 };
    router(&mut c);
    control_frame(&mut c);
    directory(&mut c);
    gossip(&mut c);
    let token = token(&mut c);
    certificate(&mut c);
    tls_certificate(&mut c);
    docker(&mut c);
    api(&mut c, &token);
    config(&mut c);
    println!(
        "seeds: wrote {} files under {}",
        c.written,
        c.root.display()
    );
}
