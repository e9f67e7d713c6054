//! End-to-end: WireGuard key rotation (issue 18, part 3; docs/key-rotation.md).
//!
//! `overlayctl rotate-key` on h2 while h1-c1 streams TCP to h2-c1 and h3-c1 pings h2-c1
//! every 50 ms: h2's certificate names a new key (higher serial), h1 and h3 move to it, the
//! transfer delivers every byte, no ping is lost. After the grace (`[control]
//! key_rotation_grace_s`, or sooner once both peers have a tunnel on the new key) a
//! handshake initiation to h2's old key is refused and counted (`retired_key` drops, a
//! `retired_key_knocking` event). h2 restarted afterwards starts from its new key file and
//! pings at once.
//!
//! ```text
//!                   P-ul: br0 (underlay switch)
//!      +-------------------+-------------------+
//!      |                   |                   |
//!  P-h1 .11            P-h2 .12            P-h3 .13
//!  admin               rotate-key          member
//!  h1-c1 --- TCP --->  h2-c1  <--- ping -i 0.05 --- h3-c1
//! ```

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{enter_netns, root};
use protocol::api::RotateKeyResponse;
use testnet::{Options, Testnet};

/// The grace for the old key, in seconds (the default is 60).
const GRACE_S: u64 = 20;
/// How long the TCP stream runs; the rotation comes [`ROTATE_AFTER`] into it.
const STREAM: Duration = Duration::from_secs(10);
const ROTATE_AFTER: Duration = Duration::from_secs(3);
/// The TCP port h2-c1 listens on.
const PORT: u16 = 5201;

fn network() -> Testnet {
    Testnet::up(Options {
        prefix: Some(common::prefix('k')),
        configure: Some(Box::new(|_, config| {
            if let Some(control) = config.control.as_mut() {
                control
                    .extra
                    .push(format!("key_rotation_grace_s = {GRACE_S}"));
            }
        })),
        ..Options::new(3, 1)
    })
    .expect("testnet up")
}

/// `ping -i 0.05` in the background, counting what it sent and got back.
struct LossPinger {
    child: Child,
}

impl LossPinger {
    fn start(net: &Testnet, from: &str, to: &str) -> LossPinger {
        let child = net
            .spawn(from, &["ping", "-n", "-q", "-i", "0.05", "-W", "1", to])
            .expect("start ping");
        LossPinger { child }
    }

    /// Stops it (SIGINT, after the replies in flight had time to come) and returns
    /// (sent, received).
    fn finish(mut self) -> (u64, u64) {
        std::thread::sleep(Duration::from_millis(1200));
        // SAFETY: kill(2) on the pid of our own child (`ip netns exec` execs ping).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let out = std::mem::replace(
            &mut self.child,
            std::process::Command::new("true").spawn().expect("true"),
        )
        .wait_with_output()
        .expect("ping's summary");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no summary from ping: {text}"));
        let number = |word: &str| -> u64 {
            line.split(',')
                .find(|part| part.contains(word))
                .and_then(|part| part.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {word} in {line:?}"))
        };
        (number("transmitted"), number("received"))
    }
}

impl Drop for LossPinger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP stream from h1-c1 to h2-c1 for [`STREAM`]; joined, it gives (bytes sent, bytes
/// received).
struct Stream {
    server: std::thread::JoinHandle<u64>,
    client: std::thread::JoinHandle<u64>,
}

impl Stream {
    fn start(net: &Testnet, to: IpAddr) -> Stream {
        let server_ns = net.container_ns(2, 1);
        let (ready_tx, ready_rx) = mpsc::channel();
        let server = std::thread::spawn(move || {
            enter_netns(&server_ns);
            let listener = TcpListener::bind(("0.0.0.0", PORT)).expect("listen");
            ready_tx.send(()).expect("ready");
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let mut buf = vec![0u8; 65536];
            let mut got = 0u64;
            loop {
                match conn.read(&mut buf).expect("read") {
                    0 => break,
                    n => got += n as u64,
                }
            }
            got
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server listening");
        let client_ns = net.container_ns(1, 1);
        let client = std::thread::spawn(move || {
            enter_netns(&client_ns);
            let addr = SocketAddr::new(to, PORT);
            let mut conn =
                TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
            conn.set_write_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let chunk = vec![0x5au8; 64 << 10];
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed() < STREAM {
                conn.write_all(&chunk).expect("write");
                sent += chunk.len() as u64;
            }
            conn.shutdown(Shutdown::Write).expect("shutdown");
            let _ = conn.read(&mut [0u8; 1]);
            sent
        });
        Stream { server, client }
    }

    fn join(self) -> (u64, u64) {
        let sent = self.client.join().expect("the client");
        let received = self.server.join().expect("the server");
        (sent, received)
    }
}

/// The key h`observer` routes h2 with, from `overlayctl peers --json`.
fn key_of_h2(net: &Testnet, observer: usize) -> Option<keys::PublicKey> {
    net.peers_json(observer)
        .expect("peers")
        .into_iter()
        .find(|p| p.name.as_deref() == Some("h2") && !p.subnets.is_empty())
        .map(|p| p.public_key)
}

/// h2's drops of handshakes to a retired key.
fn retired_drops(net: &Testnet) -> u64 {
    let status = net.status_json(2).expect("status");
    status
        .drops
        .get(&protocol::drops::DropReason::RetiredKey)
        .copied()
        .unwrap_or(0)
}

/// Sends one handshake initiation addressed to `key` (a valid mac1, nothing more) from
/// h1's namespace to h2's tunnel port.
fn knock(net: &Testnet, key: &keys::PublicKey, to: SocketAddr) {
    let ns = net.host_ns(1);
    let key = *key.as_bytes();
    std::thread::spawn(move || {
        enter_netns(&ns);
        let socket = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
        let message = common::forge::forged(1, &common::forge::mac1_key(&key), 0x1234, 0);
        socket.send_to(&message, to).expect("send");
    })
    .join()
    .expect("knock");
}

#[test]
fn rotate_key_during_a_transfer_loses_nothing_and_retires_the_old_key() {
    if !root() {
        return;
    }
    let mut net = network();
    let old = net.status_json(2).expect("status").public_key;
    let serial_before = net
        .status_json(2)
        .expect("status")
        .member
        .expect("a member")
        .certificate_serial;
    let h2c1 = net.addr("h2-c1").expect("h2-c1's address");
    let pinger = LossPinger::start(&net, "h3-c1", &h2c1.to_string());
    let stream = Stream::start(&net, h2c1);
    std::thread::sleep(ROTATE_AFTER);

    let asked = Instant::now();
    let out = net
        .overlayctl_ok(2, &["rotate-key", "--json"])
        .expect("rotate-key");
    let took = asked.elapsed();
    let answer: RotateKeyResponse = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer.old_public_key, old);
    assert_ne!(answer.public_key, old);
    assert!(answer.serial > serial_before, "{answer:?}");
    let new = answer.public_key;
    // The new key is h2's at once, and on disk, the old one kept beside it.
    assert_eq!(net.status_json(2).expect("status").public_key, new);
    let key_file = net.key_path(2);
    let on_disk = keys::read_private_key_file(&key_file).expect("h2's key file");
    assert_eq!(on_disk.public_key(), new);
    let mut old_file = key_file.clone().into_os_string();
    old_file.push(".old");
    assert!(std::path::Path::new(&old_file).exists(), "{old_file:?}");

    // The peers move to the new key.
    let deadline = asked + Duration::from_secs(10);
    let moved = loop {
        if key_of_h2(&net, 1) == Some(new) && key_of_h2(&net, 3) == Some(new) {
            break asked.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "h1 and h3 still route h2 by its old key"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let underlay = net.underlay_addr(2).expect("h2's underlay address");
    let tunnel = SocketAddr::new(IpAddr::V4(underlay), 51820);

    // Once both peers are on the new key (or after the grace) the old key is refused:
    // knocked at every 100 ms while the transfer goes on.
    let deadline = asked + Duration::from_secs(GRACE_S + 10);
    let retired = loop {
        knock(&net, &old, tunnel);
        std::thread::sleep(Duration::from_millis(100));
        if retired_drops(&net) > 0 {
            break asked.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "a handshake to h2's old key is still not refused as retired"
        );
    };
    let (sent, received) = stream.join();
    let (pings_sent, pings_received) = pinger.finish();
    let events = net.overlayctl_ok(2, &["events", "--json"]).expect("events");
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(events.contains("retired_key_knocking"), "{events}");

    eprintln!(
        "rotate-key: answered in {:.0} ms; h1 and h3 routed the new key after {:.0} ms; old key refused after {:.1} s; TCP {:.1} MB sent, {:.1} MB received; pings {pings_received}/{pings_sent}",
        took.as_secs_f64() * 1000.0,
        moved.as_secs_f64() * 1000.0,
        retired.as_secs_f64(),
        sent as f64 / 1e6,
        received as f64 / 1e6,
    );
    assert_eq!(sent, received, "the transfer lost bytes");
    assert!(sent > 0);
    assert!(pings_sent >= 150, "ping sent only {pings_sent}");
    assert_eq!(
        pings_sent,
        pings_received,
        "{} pings lost",
        pings_sent - pings_received
    );

    // Restarted, h2 runs on its new key (the file), and the tunnels come back.
    net.kill_daemon(2).expect("kill h2's daemon");
    net.start_daemon(2).expect("start h2's daemon");
    assert_eq!(net.status_json(2).expect("status").public_key, new);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ping = net
            .exec("h3-c1", &["ping", "-c", "1", "-W", "1", &h2c1.to_string()])
            .expect("ping");
        if ping.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "h3-c1 cannot reach h2-c1 after h2's restart"
        );
    }
    net.down().expect("testnet down");
}
