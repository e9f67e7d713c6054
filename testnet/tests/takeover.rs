//! A join token must not take over a member (issue 14, item 2). A token holder asks the
//! admin for a certificate in the name of a current member, presenting that member's
//! WireGuard key, which is public; were it admitted, its certificate would carry a higher
//! serial than the victim's, and its records (here a `Left`) would replace the victim's on
//! every host. The admin must refuse with one clear sentence and change nothing: the joiner
//! cannot prove it holds the victim's WireGuard key, and a name or key a current member
//! holds is never admitted by a token, proven or not. Giving the name to another host is an
//! explicit admin action (`overlayctl revoke` first).
//!
//! The hostile joiner (`common/hostile.rs`) runs in h4's namespace and builds its join by
//! hand with the daemon's own message types; `overlayctl join` on h4 is the real client.
//!
//! ```text
//!                    P-ul: br0 (underlay switch)
//!      +-----------------+-----------------+-----------------+
//!      |                 |                 |                 |
//!  P-h1 .11          P-h2 .12          P-h3 .13          P-h4 .14        198.18.0.x/15
//!  admin (CA)        member (victim)   member            daemon in no network: the
//!  UDP 51821 QUIC    UDP 51821         UDP 51821         token holder; the hostile
//!  ovl0              ovl0              ovl0              joiner runs in its namespace
//! ```

mod common;
#[path = "common/hostile.rs"]
mod hostile;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::root;
use hostile::{Link, member_config, now_unix, push, run_in_netns};
use keys::{
    JoinClaim, JoinProof, JoinToken, Name, PrivateKey, PublicKey, SignedCertificate, SigningKey,
};
use overlayd::control::msg::{Request, Response};
use overlayd::control::tls::{self, TlsIdentity};
use protocol::records::{MemberRecord, MemberState as RecordState};
use testnet::{CONTROL_PORT, MemberState, Options, Testnet};

/// Four hosts in gossip mode: h1 to h3 are members, h4 runs a daemon in no network.
fn up() -> Testnet {
    let mut opts = Options::new(4, 0);
    opts.members = Some(3);
    Testnet::up(opts).expect("testnet up (gossip mode, 3 members of 4 hosts)")
}

fn control_addr(net: &Testnet, i: usize) -> SocketAddr {
    SocketAddr::new(
        net.addr(&format!("h{i}")).expect("host addr"),
        net.control_port(),
    )
}

/// What every host must still see after a refused join: each member's key, state,
/// endpoint and subnets, and the routes.
fn snapshot(net: &Testnet) -> Vec<String> {
    let mut lines = Vec::new();
    for i in 1..=3 {
        let mut peers: Vec<String> = net
            .peers_json(i)
            .expect("peers --json")
            .into_iter()
            .map(|p| {
                // Suspect is routed like alive; a slow probe on a busy machine is no change.
                let state = match p.state {
                    Some(MemberState::Suspect) => Some(MemberState::Alive),
                    state => state,
                };
                format!(
                    "h{i} sees {:?} {} {state:?} {:?} {:?}",
                    p.name, p.public_key, p.endpoint, p.subnets
                )
            })
            .collect();
        peers.sort();
        lines.extend(peers);
        lines.push(format!("h{i} routes {}", net.routes(i).expect("routes")));
    }
    lines
}

/// The admin's `admin.json`: serials, allocations and tokens issued.
fn admin_json(net: &Testnet) -> String {
    std::fs::read_to_string(net.state_dir(1).join("admin.json")).expect("h1's admin.json")
}

/// What a hostile token holder sends from host `from`'s namespace: a join to h1 asking
/// for `name` with `wireguard_key`, a control key of its own; `holds` is the only
/// WireGuard private key it has. Returns h1's answer and the control key.
fn hostile_join(
    net: &Testnet,
    from: usize,
    token: &JoinToken,
    name: &str,
    wireguard_key: PublicKey,
    holds: &PrivateKey,
) -> (Response, SigningKey) {
    let control_key = SigningKey::generate();
    let config = tls::join_client_config(
        token.ca_fingerprint(),
        token.network().clone(),
        std::sync::Arc::new(tls::transport_config(
            Duration::from_secs(2),
            Duration::from_secs(8),
        )),
    )
    .expect("join client config");
    let to = control_addr(net, 1);
    let token = token.clone();
    let name = Name::new(name).expect("a name");
    let verifying = control_key.verifying_key();
    let holds = holds.clone();
    let answer = run_in_netns(&net.host_ns(from), move || async move {
        let link = Link::open(config, to).await?;
        // The best it can do: a proof with the key it holds, for the admin's key.
        let admin = tls::remote_node(&link.conn).context("h1 shows no node certificate")?;
        let claim = JoinClaim {
            network: token.network(),
            ca: token.ca_fingerprint(),
            secret: token.secret(),
            name: &name,
            control_key: &verifying,
            subnet: None,
        };
        let proof = JoinProof::prove(&claim, &holds, &admin.wireguard_key)?;
        let request = Request::Join {
            secret: *token.secret().as_bytes(),
            name,
            wireguard_key,
            control_key: verifying,
            subnet: None,
            proof: proof.to_bytes(),
        };
        let answer = link.ask(&request).await;
        link.close().await;
        answer
    })
    .expect("h1 answers the join");
    (answer, control_key)
}

/// Were the admin to admit a takeover: pushes the joiner's `Left` record, signed with its
/// own control key under the certificate it got, to h1 and h3, and says what they show of
/// the victim `name` afterwards (the test then fails with it).
fn exploit(
    net: &Testnet,
    from: usize,
    name: &str,
    certificate: &[u8],
    control_key: SigningKey,
) -> String {
    let network = hostile::read_network(&net.state_dir(1)).expect("h1's network.json");
    let certificate = SignedCertificate::from_bytes(certificate).expect("a certificate");
    let cert = certificate
        .verify(&network.ca, now_unix())
        .expect("the admin's certificate verifies");
    let record = MemberRecord {
        certificate: certificate.clone(),
        version: 1,
        state: RecordState::Left,
        control_port: CONTROL_PORT,
        endpoints: Vec::new(),
        relay: None,
    }
    .sign(&control_key)
    .expect("a signable record");
    let identity = TlsIdentity {
        ca: network.ca,
        network: network.network.clone(),
        certificate,
        control_key,
        previous_ca: None,
    };
    for target in [1, 3] {
        let config = member_config(&identity);
        let to = control_addr(net, target);
        let bytes = vec![record.to_bytes()];
        let answer = run_in_netns(&net.host_ns(from), move || push(config, to, bytes));
        eprintln!("pushed the joiner's Left record for {name} to h{target}: {answer:?}");
    }
    let victim: usize = name[1..].parse().expect("hN");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        seen = [1, 3]
            .iter()
            .map(|&o| (o, net.member_state(o, victim).expect("peers")))
            .collect();
        if seen.iter().all(|(_, s)| *s == Some(MemberState::Left)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    format!(
        "h1 issued a certificate for {name} (serial {}) to a token holder with its own control key; after it pushed a Left record, h1 and h3 show {name} as {seen:?}",
        cert.serial
    )
}

/// Asks as in [`hostile_join`] and asserts the refusal contains `needle`.
#[allow(clippy::too_many_arguments)]
fn assert_refused(
    net: &Testnet,
    what: &str,
    token: &JoinToken,
    name: &str,
    wireguard_key: PublicKey,
    holds: &PrivateKey,
    needle: &str,
) {
    let started = Instant::now();
    let (answer, control_key) = hostile_join(net, 4, token, name, wireguard_key, holds);
    let took = started.elapsed().as_secs_f64();
    match answer {
        Response::Refused(reason) => {
            eprintln!("{what}: refused after {took:.2} s: {reason}");
            assert!(
                reason.contains(needle),
                "{what}: the refusal does not say {needle:?}: {reason}"
            );
            assert_eq!(reason.lines().count(), 1, "{what}: not one line: {reason}");
        }
        Response::Joined { certificate, .. } => {
            panic!(
                "{what}: {}",
                exploit(net, 4, name, &certificate, control_key)
            )
        }
        other => panic!("{what}: unexpected answer {other:?}"),
    }
}

#[test]
fn a_token_cannot_take_over_a_member() {
    if !root() {
        return;
    }
    let net = up();
    let before = snapshot(&net);
    let admin_before = admin_json(&net);
    let token: JoinToken = net
        .create_token("10m")
        .expect("token")
        .parse()
        .expect("a token");
    // The token's `create` is in admin.json: compare with it from here on.
    let admin_with_token = admin_json(&net);
    assert_ne!(admin_before, admin_with_token, "the token is not recorded");
    let stranger = PrivateKey::generate();

    // The takeover: h2's name and h2's WireGuard key (public), but not its private key.
    let h2 = net.public_key(2).expect("h2's key");
    assert_refused(
        &net,
        "h2's name and key",
        &token,
        "h2",
        h2,
        &stranger,
        "did not prove that it holds the private key of WireGuard key",
    );
    // The admin's own name and key: it cannot be revoked, so must never be re-issued.
    let h1 = net.public_key(1).expect("h1's key");
    assert_refused(
        &net,
        "h1's name and key",
        &token,
        "h1",
        h1,
        &stranger,
        "did not prove that it holds the private key of WireGuard key",
    );
    // h2's key under a new name.
    assert_refused(
        &net,
        "h2's key under a new name",
        &token,
        "h9",
        h2,
        &stranger,
        "did not prove that it holds the private key of WireGuard key",
    );
    // h2's name with a key the joiner holds: the name is a current member's.
    assert_refused(
        &net,
        "h2's name with the joiner's own key",
        &token,
        "h2",
        stranger.public_key(),
        &stranger,
        "held by a current member",
    );
    assert_refused(
        &net,
        "h1's name with the joiner's own key",
        &token,
        "h1",
        stranger.public_key(),
        &stranger,
        "held by a current member",
    );
    // The same through the real client: h4's daemon asks for h2's name.
    let out = net
        .overlayctl(4, &["join", &token.to_text(), "--name", "h2"])
        .expect("run overlayctl join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "overlayctl join --name h2 on h4: {:?}: {}",
        out.status.code(),
        stderr.trim()
    );
    assert_eq!(out.status.code(), Some(1), "join as h2 on h4: {stderr}");
    assert!(
        stderr.contains("h2 is held by a current member; revoke it first (overlayctl revoke h2)"),
        "join as h2 on h4: {stderr}"
    );

    // Nothing changed: no serial, allocation or token use on the admin, nobody's view.
    assert_eq!(
        admin_with_token,
        admin_json(&net),
        "a refused join changed h1's admin.json"
    );
    assert_eq!(
        before,
        snapshot(&net),
        "a refused join changed a host's view"
    );

    // Re-admitting the name is explicit: revoke h2, then the token (unspent by the
    // refusals) admits h4 as h2 with h4's own key, and every member sees the new h2.
    net.overlayctl_ok(1, &["revoke", "h2"]).expect("revoke h2");
    let started = Instant::now();
    let out = net
        .overlayctl(4, &["join", &token.to_text(), "--name", "h2"])
        .expect("run overlayctl join");
    assert!(
        out.status.success(),
        "h4 cannot join as h2 after h2 was revoked: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h4 = net.public_key(4).expect("h4's key");
    let deadline = Instant::now() + Duration::from_secs(15);
    for observer in [1, 3] {
        loop {
            let new_h2 = net
                .peers_json(observer)
                .expect("peers")
                .into_iter()
                .find(|p| p.name.as_deref() == Some("h2") && p.public_key == h4);
            if new_h2.is_some_and(|p| p.state == Some(MemberState::Alive)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "h{observer} does not see h4 as the new h2 within 15 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    eprintln!(
        "after `revoke h2`, h4 joined as h2; h1 and h3 list it alive after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    net.down().expect("down");
}
