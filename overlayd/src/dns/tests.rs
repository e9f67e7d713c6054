//! The server on port-0 sockets: answers over UDP and TCP, forwarding to a fake upstream.

use hickory_proto::op::Query;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name as DnsName, RData, Record, RecordType};
use protocol::api::Membership;
use protocol::records::names::NameEntry;

use super::*;
use crate::control::NameView;

fn view() -> Arc<Mutex<View>> {
    let mut view = View {
        membership: Some(Membership {
            network: "testnet".into(),
            cidr: "10.42.0.0/16".parse().unwrap(),
            ranges: Vec::new(),
            ca_fingerprint: String::new(),
            name: "h1".into(),
            subnets: vec!["10.42.1.0/24".parse().unwrap()],
            groups: Vec::new(),
            certificate_expires_unix: 0,
            certificate_serial: 0,
            certificate_renewed_unix: None,
            certificate_renew_at_unix: 0,
            admin: false,
            control_port: 51821,
            member_count: 1,
            left: false,
            ca: None,
        }),
        ..View::default()
    };
    // Loopback askers see names of every range; a range holding 127.0.0.1 stands in for
    // a container's network here.
    view.set_names(vec![NameView {
        owner: "h1".into(),
        local: true,
        since_unix: 0,
        entry: NameEntry {
            name: "web".into(),
            aliases: Vec::new(),
            address: "127.0.0.9".parse().unwrap(),
            network: "ovl".into(),
            range: "127.0.0.0/8".parse().unwrap(),
        },
    }]);
    Arc::new(Mutex::new(view))
}

fn question(name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.add_query(Query::query(
        DnsName::from_ascii(name).unwrap(),
        RecordType::A,
    ));
    m.to_vec().unwrap()
}

fn addresses(bytes: &[u8]) -> (ResponseCode, Vec<String>) {
    let m = Message::from_vec(bytes).unwrap();
    (
        m.metadata.response_code,
        m.answers.iter().map(|a| a.data.to_string()).collect(),
    )
}

#[test]
fn the_default_address_is_the_last_but_one_of_the_range() {
    let a = |c: &str| default_address(c.parse().unwrap());
    assert_eq!(a("10.42.0.0/16"), Some("10.42.255.254".parse().unwrap()));
    assert_eq!(a("10.42.0.0/24"), Some("10.42.0.254".parse().unwrap()));
    assert_eq!(a("10.42.0.0/30"), None);
    assert_eq!(a("fd00::/64"), None);
}

#[test]
fn upstreams_come_from_resolv_conf_without_loops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resolv.conf");
    std::fs::write(
        &path,
        "# comment\nsearch example\nnameserver 192.0.2.53\nnameserver 10.42.255.254\nnameserver fd00::53\nnameserver junk\n",
    )
    .unwrap();
    let skip = ["10.42.255.254".parse().unwrap()];
    let got: Vec<String> = upstreams(&path, &skip)
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(got, vec!["192.0.2.53:53", "[fd00::53]:53"]);
    assert!(upstreams(&dir.path().join("missing"), &skip).is_empty());
}

#[tokio::test]
async fn answers_over_udp_and_tcp_and_forwards_the_rest() {
    // The fake upstream needs port 53 on a loopback address: root only.
    let upstream_at: SocketAddr = "127.77.0.1:53".parse().unwrap();
    let Ok(upstream) = UdpSocket::bind(upstream_at).await else {
        eprintln!("skipped: cannot bind {upstream_at} (not root)");
        return;
    };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((len, from)) = upstream.recv_from(&mut buf).await {
            let q = Message::from_vec(&buf[..len]).unwrap();
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.add_query(q.queries[0].clone());
            r.add_answer(Record::from_rdata(
                q.queries[0].name().clone(),
                60,
                RData::A(A("192.0.2.1".parse().unwrap())),
            ));
            let _ = upstream.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {}\n", upstream_at.ip())).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (udp_at, tcp_at) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let server = tokio::spawn(serve(udp, tcp, view(), resolv));

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 4096];
    for (name, want) in [
        (
            "web.",
            (ResponseCode::NoError, vec!["127.0.0.9".to_owned()]),
        ),
        ("gone.", (ResponseCode::NXDomain, vec![])),
        (
            "example.org.",
            (ResponseCode::NoError, vec!["192.0.2.1".to_owned()]),
        ),
    ] {
        client.send_to(&question(name), udp_at).await.unwrap();
        let len = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(addresses(&buf[..len]), want, "{name}");
    }
    // Junk gets nothing, and the server goes on.
    client.send_to(b"junk", udp_at).await.unwrap();

    let mut stream = tokio::net::TcpStream::connect(tcp_at).await.unwrap();
    for name in ["web.testnet.", "example.org."] {
        let q = question(name);
        stream.write_u16(q.len() as u16).await.unwrap();
        stream.write_all(&q).await.unwrap();
        let len = stream.read_u16().await.unwrap();
        let mut answer = vec![0u8; usize::from(len)];
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(addresses(&answer).0, ResponseCode::NoError, "{name}");
        assert_eq!(addresses(&answer).1.len(), 1, "{name}");
    }
    server.abort();
}
