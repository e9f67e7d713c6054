//! The snapshot taken from two routers back to back and a control plane's view, and the
//! endpoint served over a real loopback socket.

use std::io::{Read, Write};
use std::sync::Mutex;

use super::*;
use crate::control::MemberView;
use crate::router::tests::{A_ADDR, handshake, ipv4, pair, pump, send};
use protocol::api::Membership;
use protocol::drops::DropReason;

fn membership(expires: u64) -> Membership {
    Membership {
        network: "net".into(),
        cidr: "10.42.0.0/16".parse().unwrap(),
        ranges: Vec::new(),
        ca_fingerprint: "sha256:00".into(),
        name: "a".into(),
        subnets: vec!["10.42.1.0/24".parse().unwrap()],
        groups: Vec::new(),
        certificate_expires_unix: expires,
        certificate_serial: 0,
        certificate_renewed_unix: None,
        certificate_renew_at_unix: 0,
        admin: true,
        control_port: 51821,
        member_count: 2,
        left: false,
        ca: None,
    }
}

fn sources(router: Arc<Router>, view: View) -> Sources {
    Sources {
        router,
        view: Arc::new(Mutex::new(view)),
        traffic: Arc::default(),
        docker_endpoints: None,
    }
}

#[test]
fn a_snapshot_reads_the_router_and_the_view() {
    let pair = pair();
    handshake(&pair);
    let p = ipv4("10.42.1.2", "10.42.2.2", b"hello");
    pump(&pair, send(&pair.a, A_ADDR, &p));
    // A forged inner source from A: B drops it.
    let forged = ipv4("10.42.9.9", "10.42.2.2", b"x");
    pump(&pair, send(&pair.a, A_ADDR, &forged));
    let b_key = pair.a.peers()[0].public_key;
    let view = View {
        membership: Some(membership(1_900_000_000)),
        members: vec![MemberView {
            name: "b".into(),
            public_key: b_key,
            subnets: Vec::new(),
            endpoint: None,
            state: MemberState::Suspect,
            nat: false,
        }],
        nat: false,
        ..View::default()
    };
    let a = sources(Arc::new(pair.a), view);
    a.traffic.gossip_sent.store(42, Ordering::Relaxed);
    let now = 1_800_000_000.0;
    let s = a.snapshot(now);
    assert_eq!(s.peers.len(), 1);
    let peer = &s.peers[0];
    assert_eq!(peer.name, "b", "the member's name, from the view");
    assert_eq!(peer.public_key, b_key.to_string());
    assert_eq!(peer.sent_bytes, (p.len() + forged.len()) as u64);
    assert_eq!(
        (peer.handshakes_initiated, peer.handshakes_completed),
        (1, 1)
    );
    let at = peer.latest_handshake_unix.expect("a handshake");
    assert!(at <= now && at > now - 60.0, "{at}");
    assert_eq!(s.members.get("alive"), Some(&1), "this host");
    assert_eq!(s.members.get("suspect"), Some(&1));
    assert_eq!(s.members.get("revoked"), Some(&0));
    assert_eq!(s.certificate_expiry_unix, Some(1_900_000_000));
    assert_eq!(s.gossip_sent_bytes, 42);
    assert!(s.policy.is_none() && s.docker_endpoints.is_none());
    let b = sources(Arc::new(pair.b), View::default());
    let s = b.snapshot(now);
    assert_eq!(s.drops.get(&DropReason::SourceNotAllowed), Some(&1));
    assert_eq!(s.peers[0].received_bytes, p.len() as u64);
    // In no network: no members, no certificate.
    assert!(s.members.is_empty() && s.certificate_expiry_unix.is_none());
}

/// One HTTP/1.0 request to `addr`; the whole answer.
fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn metrics_are_served_over_http_and_nothing_else_is() {
    let pair = pair();
    let listener = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr();
    let _served = listener.serve(sources(Arc::new(pair.a), View::default()));
    let (metrics, other) =
        tokio::task::spawn_blocking(move || (get(addr, METRICS_PATH), get(addr, "/v1/status")))
            .await
            .unwrap();
    assert!(metrics.starts_with("HTTP/1.0 200") || metrics.starts_with("HTTP/1.1 200"));
    assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");
    assert!(metrics.contains("\noverlay_build_info{"), "{metrics}");
    assert!(metrics.contains("overlay_drops_total{reason=\"source_not_allowed\"} 0"));
    assert!(other.contains(" 404 "), "{other}");
}

#[tokio::test]
async fn a_port_in_use_is_one_line_naming_the_address() {
    let first = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = first.local_addr();
    let err = MetricsListener::bind(addr)
        .err()
        .expect("in use")
        .to_string();
    assert!(
        err.contains(&addr.to_string()) && err.contains("in use"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

#[tokio::test]
async fn an_address_not_on_this_host_yet_is_bound_for_when_it_is() {
    // 198.18.255.254: the benchmarking range, on no interface of this machine.
    let listener =
        MetricsListener::bind("198.18.255.254:0".parse().unwrap()).expect("bound with IP_FREEBIND");
    assert_eq!(
        listener.local_addr().ip(),
        "198.18.255.254".parse::<std::net::IpAddr>().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn connections_past_the_cap_wait_until_one_closes() {
    let pair = pair();
    let listener = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr();
    let _served = listener.serve(sources(Arc::new(pair.a), View::default()));
    tokio::task::spawn_blocking(move || {
        // Idle connections that never ask anything, up to the cap.
        let mut idle: Vec<std::net::TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let mut late = std::net::TcpStream::connect(addr).unwrap();
        write!(late, "GET {METRICS_PATH} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        late.set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .unwrap();
        let mut first = [0u8; 1];
        assert!(late.read(&mut first).is_err(), "served past the cap");
        idle.pop();
        late.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut answer = String::new();
        late.read_to_string(&mut answer).unwrap();
        assert!(answer.contains(" 200 "), "{answer}");
    })
    .await
    .unwrap();
}
