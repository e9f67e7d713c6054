//! Real quinn endpoints on 127.0.0.1, one handshake per test: who gets in, who does not,
//! and what each side is told.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keys::{CaKey, PrivateKey};

use super::verify::{node_certificate_oid, read_der_octet_string};
use super::*;

const NETWORK: &str = "test-net";
/// Long enough for a loaded 2-core machine, short enough that a hang fails the test.
const DEADLINE: Duration = Duration::from_secs(10);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn name(text: &str) -> Name {
    text.parse().unwrap()
}

fn node_certificate(ca: &CaKey, network: &str, node: &str, key: &SigningKey) -> NodeCertificate {
    NodeCertificate {
        network: name(network),
        node: name(node),
        wireguard_key: PrivateKey::generate().public_key(),
        control_key: key.verifying_key(),
        subnets: vec!["10.42.1.0/24".parse().unwrap()],
        groups: vec![name("web")],
        not_before: now() - 60,
        not_after: now() + 3600,
        serial: 7,
        number: 7,
        ca_fingerprint: ca.fingerprint(),
    }
}

/// A member of `network` whose certificate `ca` signed after `edit` changed it.
fn identity_with(
    ca: &CaKey,
    network: &str,
    node: &str,
    edit: impl FnOnce(&mut NodeCertificate),
) -> TlsIdentity {
    let control_key = SigningKey::generate();
    let mut cert = node_certificate(ca, network, node, &control_key);
    edit(&mut cert);
    TlsIdentity {
        ca: ca.verifying_key(),
        network: name(network),
        certificate: ca.sign(&cert).unwrap(),
        control_key,
        previous_ca: None,
    }
}

fn identity(ca: &CaKey, node: &str) -> TlsIdentity {
    identity_with(ca, NETWORK, node, |_| {})
}

fn accept_all() -> PeerCheck {
    PeerCheck::new(|_| Ok(()))
}

fn transport() -> Arc<quinn::TransportConfig> {
    Arc::new(transport_config(
        Duration::from_secs(5),
        Duration::from_secs(30),
    ))
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn server(id: &TlsIdentity, check: PeerCheck) -> (quinn::Endpoint, SocketAddr) {
    let config = server_config(id, check, transport()).unwrap();
    let endpoint = quinn::Endpoint::server(config, localhost()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    (endpoint, addr)
}

/// The server's side of the next handshake: the connection, or why it failed.
async fn accept(endpoint: &quinn::Endpoint) -> Result<quinn::Connection, quinn::ConnectionError> {
    let incoming = tokio::time::timeout(DEADLINE, endpoint.accept())
        .await
        .expect("a client came within the deadline")
        .expect("the endpoint is open");
    tokio::time::timeout(DEADLINE, incoming)
        .await
        .expect("the handshake ended within the deadline")
}

/// The client's side: the connection, or why it failed.
async fn connect(
    config: quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let endpoint = quinn::Endpoint::client(localhost()).unwrap();
    let connecting = endpoint.connect_with(config, addr, SERVER_NAME).unwrap();
    tokio::time::timeout(DEADLINE, connecting)
        .await
        .expect("the handshake ended within the deadline")
}

/// Why the server refused a client: its CONNECTION_CLOSE, whether `connect` failed or (as
/// it may, see the module docs) completed before the server checked the client.
async fn refusal_seen_by_client(config: quinn::ClientConfig, addr: SocketAddr) -> String {
    match connect(config, addr).await {
        Err(e) => e.to_string(),
        Ok(conn) => tokio::time::timeout(DEADLINE, conn.closed())
            .await
            .expect("the server closed the connection within the deadline")
            .to_string(),
    }
}

#[tokio::test]
async fn members_authenticate_each_other_and_exchange_data() {
    let ca = CaKey::generate();
    let (alice, bob) = (identity(&ca, "alice"), identity(&ca, "bob"));
    let (endpoint, addr) = server(&alice, accept_all());
    let client = client_config(&bob, accept_all(), transport()).unwrap();

    let (server_side, client_side) = tokio::join!(accept(&endpoint), connect(client, addr));
    let (server_side, client_side) = (server_side.unwrap(), client_side.unwrap());

    let Ok(Remote::Member(seen_by_alice)) = authorize(&server_side) else {
        panic!("bob is a member");
    };
    assert_eq!(seen_by_alice.node, name("bob"));
    assert_eq!(seen_by_alice.control_key, bob.control_key.verifying_key());
    assert_eq!(remote_node(&server_side), Some(*seen_by_alice));
    let seen_by_bob = remote_node(&client_side).unwrap();
    assert_eq!(seen_by_bob.node, name("alice"));
    assert_eq!(seen_by_bob.control_key, alice.control_key.verifying_key());
    assert_eq!(server_ca(&client_side), Some(ca.verifying_key()));

    // The largest datagram either side may send must hold a gossip message (~1150 bytes).
    let max = client_side.max_datagram_size().unwrap();
    println!(
        "max_datagram_size: client {max}, server {:?}",
        server_side.max_datagram_size()
    );
    assert!(max >= 1150, "max_datagram_size {max}");
    let datagram = bytes::Bytes::from(vec![0xa5; 1150]);
    client_side.send_datagram(datagram.clone()).unwrap();
    let received = tokio::time::timeout(DEADLINE, server_side.read_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received, datagram);

    let (mut send, mut recv) = client_side.open_bi().await.unwrap();
    send.write_all(b"ping").await.unwrap();
    send.finish().unwrap();
    let (mut reply, mut request) = tokio::time::timeout(DEADLINE, server_side.accept_bi())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(request.read_to_end(64).await.unwrap(), b"ping");
    reply.write_all(b"pong").await.unwrap();
    reply.finish().unwrap();
    assert_eq!(recv.read_to_end(64).await.unwrap(), b"pong");
}

#[tokio::test]
async fn client_of_another_ca_is_refused_naming_both_cas() {
    let (ca, other_ca) = (CaKey::generate(), CaKey::generate());
    let (endpoint, addr) = server(&identity(&ca, "alice"), accept_all());
    // Mallory trusts this network's CA, but her certificate is from another one.
    let mut mallory = identity(&other_ca, "mallory");
    mallory.ca = ca.verifying_key();
    let client = client_config(&mallory, accept_all(), transport()).unwrap();

    let (server_side, client_side) =
        tokio::join!(accept(&endpoint), refusal_seen_by_client(client, addr));
    let error = server_side.unwrap_err().to_string();
    assert!(
        error.contains(&other_ca.fingerprint().to_string()),
        "{error}"
    );
    assert!(error.contains(&ca.fingerprint().to_string()), "{error}");
    assert!(error.contains("this network's CA"), "{error}");
    // The refused client is told the same reason.
    assert!(
        client_side.contains(&other_ca.fingerprint().to_string()),
        "{client_side}"
    );
}

#[tokio::test]
async fn client_without_certificate_is_refused_on_control_and_a_joiner_on_join() {
    let ca = CaKey::generate();
    let (endpoint, addr) = server(&identity(&ca, "alice"), accept_all());

    // A joining client, as it should.
    let join = join_client_config(ca.fingerprint(), name(NETWORK), transport()).unwrap();
    let (server_side, client_side) = tokio::join!(accept(&endpoint), connect(join, addr));
    let server_side = server_side.unwrap();
    assert_eq!(authorize(&server_side), Ok(Remote::Joiner));
    assert_eq!(remote_node(&server_side), None);
    assert_eq!(
        remote_node(&client_side.unwrap()).unwrap().node,
        name("alice")
    );

    // The same client speaking the members' protocol: no certificate, no entry.
    let provider = provider();
    let verifier = NodeVerifier::new(
        TrustedCa::Key(protocol::records::ca::Trust::only(ca.verifying_key())),
        name(NETWORK),
        None,
        &provider,
    );
    let tls = client_builder(provider, verifier)
        .unwrap()
        .with_no_client_auth();
    let control = quic_client_config(tls, ALPN_CONTROL, transport()).unwrap();
    let (server_side, client_side) = tokio::join!(accept(&endpoint), connect(control, addr));
    let server_side = server_side.unwrap();
    let refusal = authorize(&server_side).unwrap_err();
    assert_eq!(refusal.code, CLOSE_NOT_AUTHORIZED);
    assert!(refusal.reason.contains("join"), "{}", refusal.reason);
    server_side.close(refusal.code, refusal.reason.as_bytes());
    let closed = tokio::time::timeout(DEADLINE, client_side.unwrap().closed())
        .await
        .unwrap();
    assert!(
        closed.to_string().contains("join the network first"),
        "{closed}"
    );
}

#[tokio::test]
async fn server_of_another_ca_is_refused_by_the_client() {
    let (ca, other_ca) = (CaKey::generate(), CaKey::generate());
    let (endpoint, addr) = server(&identity(&other_ca, "mallory"), accept_all());
    let client = client_config(&identity(&ca, "bob"), accept_all(), transport()).unwrap();

    let (server_side, client_side) = tokio::join!(accept(&endpoint), connect(client, addr));
    let error = client_side.unwrap_err().to_string();
    assert!(
        error.contains(&other_ca.fingerprint().to_string()),
        "{error}"
    );
    assert!(error.contains("this network's CA"), "{error}");
    assert!(server_side.is_err());
}

#[tokio::test]
async fn expired_certificate_is_refused_and_reported() {
    let ca = CaKey::generate();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let watcher = seen.clone();
    let check = accept_all().on_expired(move |cert| {
        watcher.lock().unwrap().push(cert.node.to_string());
    });
    let (endpoint, addr) = server(&identity(&ca, "alice"), check);
    let old = identity_with(&ca, NETWORK, "old", |cert| {
        cert.not_before = now() - 7200;
        cert.not_after = now() - 3600;
    });
    let client = client_config(&old, accept_all(), transport()).unwrap();

    let (server_side, client_side) =
        tokio::join!(accept(&endpoint), refusal_seen_by_client(client, addr));
    let error = server_side.unwrap_err().to_string();
    assert!(error.contains("certificate of node old expired"), "{error}");
    assert!(client_side.contains("expired"), "{client_side}");
    assert_eq!(*seen.lock().unwrap(), vec!["old".to_string()]);

    // Another CA's expired certificate is a stranger's: refused, not reported.
    let stranger = identity_with(&CaKey::generate(), NETWORK, "stranger", |cert| {
        cert.not_before = now() - 7200;
        cert.not_after = now() - 3600;
    });
    let client = client_config(&stranger, accept_all(), transport()).unwrap();
    let (server_side, _) = tokio::join!(accept(&endpoint), refusal_seen_by_client(client, addr));
    assert!(server_side.is_err());
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn peer_check_refusal_is_reported_with_its_message() {
    let ca = CaKey::generate();
    let revoked = PeerCheck::new(|cert: &NodeCertificate| {
        if cert.node.as_str() == "bob" {
            Err(format!(
                "revoked certificate serial {} of node bob; ask the CA for a new one",
                cert.serial
            ))
        } else {
            Ok(())
        }
    });
    let (endpoint, addr) = server(&identity(&ca, "alice"), revoked.clone());
    let client = client_config(&identity(&ca, "bob"), accept_all(), transport()).unwrap();
    let (server_side, client_side) =
        tokio::join!(accept(&endpoint), refusal_seen_by_client(client, addr));
    let error = server_side.unwrap_err().to_string();
    assert!(
        error.contains("revoked certificate serial 7 of node bob"),
        "{error}"
    );
    assert!(client_side.contains("revoked"), "{client_side}");

    // A client applies its check to the server as well.
    let (endpoint, addr) = server(&identity(&ca, "bob"), accept_all());
    let client = client_config(&identity(&ca, "carol"), revoked, transport()).unwrap();
    let (_, client_side) = tokio::join!(accept(&endpoint), connect(client, addr));
    let error = client_side.unwrap_err().to_string();
    assert!(error.contains("revoked certificate serial 7"), "{error}");
}

#[tokio::test]
async fn join_client_learns_the_ca_key_only_from_the_right_ca() {
    let (ca, other_ca) = (CaKey::generate(), CaKey::generate());
    let (endpoint, addr) = server(&identity(&ca, "alice"), accept_all());

    let join = join_client_config(ca.fingerprint(), name(NETWORK), transport()).unwrap();
    let (_, client_side) = tokio::join!(accept(&endpoint), connect(join, addr));
    assert_eq!(server_ca(&client_side.unwrap()), Some(ca.verifying_key()));

    let wrong = join_client_config(other_ca.fingerprint(), name(NETWORK), transport()).unwrap();
    let (_, client_side) = tokio::join!(accept(&endpoint), connect(wrong, addr));
    let error = client_side.unwrap_err().to_string();
    assert!(error.contains("the join token names CA"), "{error}");
    assert!(
        error.contains(&other_ca.fingerprint().to_string()),
        "{error}"
    );

    // The right CA, but another network of it.
    let elsewhere = join_client_config(ca.fingerprint(), name("elsewhere"), transport()).unwrap();
    let (_, client_side) = tokio::join!(accept(&endpoint), connect(elsewhere, addr));
    let error = client_side.unwrap_err().to_string();
    assert!(
        error.contains("belongs to network test-net, not elsewhere"),
        "{error}"
    );
}

#[tokio::test]
async fn certificate_for_another_key_is_refused() {
    let ca = CaKey::generate();
    let (endpoint, addr) = server(&identity(&ca, "alice"), accept_all());
    // Mallory copied bob's certificate but does not hold bob's control key.
    let bob = identity(&ca, "bob");
    let mallory = TlsIdentity {
        control_key: SigningKey::generate(),
        ..bob
    };
    let client = client_config(&mallory, accept_all(), transport()).unwrap();

    let (server_side, client_side) =
        tokio::join!(accept(&endpoint), refusal_seen_by_client(client, addr));
    let error = server_side.unwrap_err().to_string();
    assert!(
        error.contains("not the control key the CA certified for node bob"),
        "{error}"
    );
    assert!(client_side.contains("impersonating bob"), "{client_side}");
}

#[test]
fn presented_certificate_round_trips_and_the_extension_is_not_critical() {
    let ca = CaKey::generate();
    let id = identity(&ca, "alice");
    let (chain, _key) = presented_certificate(&id).unwrap();
    let presented = Presented::parse(&chain[0]).unwrap();
    assert_eq!(presented.ca, ca.verifying_key());
    assert_eq!(presented.signed, id.certificate);
    assert_eq!(&presented.key, id.control_key.verifying_key().as_bytes());
    let (_, x509) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let extension = x509
        .get_extension_unique(&node_certificate_oid())
        .unwrap()
        .unwrap();
    assert!(!extension.critical);
}

#[test]
fn der_octet_strings_round_trip_in_every_length_form() {
    for len in [0, 1, 0x7f, 0x80, 0xff, 0x100, 989, 0xffff] {
        let content = vec![0x5a; len];
        let der = der_octet_string(&content);
        assert_eq!(
            read_der_octet_string(&der),
            Some(content.as_slice()),
            "{len}"
        );
        assert_eq!(read_der_octet_string(&der[..der.len() - 1]), None, "{len}");
    }
    // Longer length forms than needed, other tags and trailing bytes are refused.
    assert_eq!(read_der_octet_string(&[0x04, 0x81, 0x01, 0x00]), None);
    assert_eq!(read_der_octet_string(&[0x04, 0x82, 0x00, 0x81]), None);
    assert_eq!(read_der_octet_string(&[0x03, 0x01, 0x00]), None);
    assert_eq!(read_der_octet_string(&[0x04, 0x01, 0x00, 0x00]), None);
    assert_eq!(read_der_octet_string(&[]), None);
}

#[test]
fn an_old_ca_certificate_is_taken_during_a_transition_and_refused_after_it() {
    use super::verify::check_presented_for_tests as check;
    use protocol::records::ca::Trust;
    let (old, new) = (CaKey::generate(), CaKey::generate());
    let end = now() + 30;
    // A member still on the old CA presents it in the extension, while trusting both.
    let mut member = identity(&old, "alice");
    member.ca = new.verifying_key();
    member.previous_ca = Some((old.verifying_key(), end));
    let (chain, _) = presented_certificate(&member).unwrap();
    assert_eq!(Presented::parse(&chain[0]).unwrap().ca, old.verifying_key());
    let trust = Trust {
        current: new.verifying_key(),
        previous: Some((old.verifying_key(), end)),
    };
    let network = name(NETWORK);
    assert!(check(&chain[0], trust, &network, now()).is_ok());
    let refused = check(&chain[0], trust, &network, end).unwrap_err();
    assert!(
        refused.contains("retired") && refused.contains("join again"),
        "{refused}"
    );
    // Once retired (no longer trusted at all): refused with the hint to join again.
    let refused = check(&chain[0], Trust::only(new.verifying_key()), &network, now()).unwrap_err();
    assert!(refused.contains("join again"), "{refused}");
    // A certificate of the new CA is taken throughout.
    let renewed = identity(&new, "alice");
    let (chain, _) = presented_certificate(&renewed).unwrap();
    assert!(check(&chain[0], trust, &network, end + 1).is_ok());
}
