//! End-to-end: the Prometheus metrics (issue 17, item 1), scraped by a real Prometheus
//! (Debian's `prometheus`) that the test starts in h1's namespace, on its loopback, with a
//! 1 s scrape interval. Real daemons, real kernels (root).
//!
//! ```text
//!                          P-ul: br0 (underlay switch)
//!            +-------------------------+-------------------------+
//!            |                                                   |
//!   P-h1 198.18.0.11                                    P-h2 198.18.0.12
//!   overlayd   [metrics] 127.0.0.1:9586                 overlayd   [metrics] 10.42.2.1:9586
//!   prometheus 127.0.0.1:9090 -- scrapes h1 on loopback,           (its overlay address:
//!              and h2 through the tunnel ---------------------->   bound before it exists)
//!   br0 10.42.1.1/24                                    br0 10.42.2.1/24
//!     h1-c1 10.42.1.2  ------- 20 MB (nc); a forged source ------> h2-c1 10.42.2.2
//! ```
//!
//! Checked, by asking Prometheus's HTTP API: both targets are up; the per-peer byte
//! counters of both ends rise by at least what the containers sent; a packet with a forged
//! inner source raises h2's `source_not_allowed` drops; the certificate, members,
//! handshakes, gossip and sync figures are there. A real scrape of each host passes
//! `promtool check metrics`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{enter_netns, pings, root};
use serde_json::Value;
use testnet::{Options, Testnet};

/// Where each host serves its metrics: h1 on its loopback, h2 on its overlay address.
const H1_METRICS: &str = "127.0.0.1:9586";
const H2_METRICS: &str = "10.42.2.1:9586";
/// Prometheus's own address, in h1's namespace.
const PROMETHEUS: &str = "127.0.0.1:9090";
/// What h1-c1 sends h2-c1, over TCP to this port.
const TRANSFER_BYTES: u64 = 20_000_000;
const TCP_PORT: u16 = 7000;
/// How long Prometheus may take to show a change (1 s scrapes, query at the newest sample).
const SHOW_DEADLINE: Duration = Duration::from_secs(20);

fn network() -> Testnet {
    Testnet::up(Options {
        configure: Some(Box::new(|i, config| {
            let listen = if i == 1 { H1_METRICS } else { H2_METRICS };
            // Extra lines come last before [control]: a table of its own fits there.
            config
                .extra
                .push(format!("\n[metrics]\nlisten = \"{listen}\""));
        })),
        ..Options::new(2, 1)
    })
    .expect("testnet up")
}

/// Prometheus, started in a host's namespace; killed by its PID on drop (a failed assert
/// included), its data and log in the run's directory.
struct Prometheus {
    child: Child,
    log: std::path::PathBuf,
}

impl Prometheus {
    fn start(net: &Testnet, host: usize) -> Prometheus {
        let dir = net.run_dir().join("prometheus");
        std::fs::create_dir_all(dir.join("data")).expect("prometheus folder");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: overlay\n    static_configs:\n\
                 \x20     - targets: [\"{H1_METRICS}\"]\n        labels: {{host: h1}}\n\
                 \x20     - targets: [\"{H2_METRICS}\"]\n        labels: {{host: h2}}\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = dir.join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("prometheus log");
        let mut cmd = net
            .command(
                &format!("h{host}"),
                &[
                    "prometheus",
                    &format!("--config.file={}", config.display()),
                    &format!("--storage.tsdb.path={}", dir.join("data").display()),
                    &format!("--web.listen-address={PROMETHEUS}"),
                ],
            )
            .expect("prometheus command");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .expect("start /usr/bin/prometheus (Debian's prometheus; scripts/setup installs it)");
        Prometheus { child, log }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Child::kill signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on `addr` from inside namespace `netns` (HTTP/1.0, one connection): the status
/// line's code and the body.
fn http_get(netns: String, addr: &str, path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = addr.parse().expect("address");
    let path = path.to_owned();
    std::thread::spawn(move || {
        enter_netns(&netns);
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).ok()?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = answer.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    })
    .join()
    .expect("HTTP thread")
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The samples of an instant query to Prometheus: each series' labels and value.
fn query(net: &Testnet, expr: &str) -> Vec<(Value, f64)> {
    let path = format!("/api/v1/query?query={}", encode(expr));
    let Some((200, body)) = http_get(net.host_ns(1), PROMETHEUS, &path) else {
        return Vec::new();
    };
    let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    answer["data"]["result"]
        .as_array()
        .map(|series| {
            series
                .iter()
                .filter_map(|s| {
                    let value = s["value"][1].as_str()?.parse().ok()?;
                    Some((s["metric"].clone(), value))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The one value of `expr`, once Prometheus has it.
fn value(net: &Testnet, expr: &str) -> Option<f64> {
    match query(net, expr).as_slice() {
        [(_, v)] => Some(*v),
        _ => None,
    }
}

/// Polls `expr` until `ok` holds for its value or [`SHOW_DEADLINE`] passes; the last value.
fn wait_value(net: &Testnet, prometheus: &Prometheus, expr: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + SHOW_DEADLINE;
    loop {
        let v = value(net, expr);
        if let Some(v) = v
            && ok(v)
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus shows {expr} = {v:?} after {SHOW_DEADLINE:?}; its log:\n{}",
            prometheus.log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `promtool check metrics` on a real scrape of `addr` from h1's namespace.
fn promtool_accepts(net: &Testnet, addr: &str) {
    let (code, text) = http_get(net.host_ns(1), addr, "/metrics").expect("scrape");
    assert_eq!(code, 200, "{addr}: {text}");
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "promtool check skipped: cannot run promtool ({e}); scripts/setup installs it"
            );
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on {addr}: {said}\n{text}"
    );
    eprintln!(
        "promtool check metrics: a scrape of {addr} ({} lines) passes",
        text.lines().count()
    );
}

/// Waits until something listens on TCP `port` in `name`.
fn wait_listening(net: &Testnet, name: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let filter = format!("sport = :{port}");
    loop {
        let out = net.exec(name, &["ss", "-Htln", &filter]).expect("run ss");
        if !out.stdout.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {name}:{port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn prometheus_sees_peer_bytes_rise_and_a_forged_source_dropped() {
    if !root() {
        return;
    }
    let net = network();
    let (c1, c2) = ("h1-c1", "h2-c1");
    let target = net.addr(c2).expect("h2-c1's address").to_string();
    assert!(pings(&net, c1, &target), "h1-c1 cannot ping h2-c1");
    let prometheus = Prometheus::start(&net, 1);

    // Both targets up: h1 on its loopback, h2 through the tunnel on its overlay address.
    for host in ["h1", "h2"] {
        wait_value(&net, &prometheus, &format!("up{{host=\"{host}\"}}"), |v| {
            v == 1.0
        });
    }
    promtool_accepts(&net, H1_METRICS);
    promtool_accepts(&net, H2_METRICS);

    // The per-peer byte counters of both ends, before and after 20 MB from h1-c1 to h2-c1.
    let sent = "overlay_peer_sent_bytes_total{host=\"h1\",name=\"h2\"}";
    let received = "overlay_peer_received_bytes_total{host=\"h2\",name=\"h1\"}";
    let sent_before = wait_value(&net, &prometheus, sent, |_| true);
    let received_before = wait_value(&net, &prometheus, received, |_| true);
    // nc, not iperf3: iperf3 ends a byte-counted test before the last bytes arrive.
    let server = net
        .spawn(c2, &["sh", "-c", &format!("nc -l {TCP_PORT} | wc -c")])
        .expect("start nc -l");
    wait_listening(&net, c2, TCP_PORT);
    let send = format!("head -c {TRANSFER_BYTES} /dev/zero | nc -N {target} {TCP_PORT}");
    let client = net.exec(c1, &["sh", "-c", &send]).expect("run nc");
    assert!(
        client.status.success(),
        "nc from h1-c1 to h2-c1: {}",
        String::from_utf8_lossy(&client.stderr)
    );
    let delivered = server.wait_with_output().expect("nc -l");
    assert_eq!(
        String::from_utf8_lossy(&delivered.stdout).trim(),
        TRANSFER_BYTES.to_string(),
        "h2-c1 did not receive all of it"
    );
    let expected = TRANSFER_BYTES as f64;
    let sent_after = wait_value(&net, &prometheus, sent, |v| v >= sent_before + expected);
    let received_after = wait_value(&net, &prometheus, received, |v| {
        v >= received_before + expected
    });
    eprintln!(
        "h1 sent h2 {:.1} MB, h2 received from h1 {:.1} MB during the transfer",
        (sent_after - sent_before) / 1e6,
        (received_after - received_before) / 1e6
    );

    // A forged inner source: h1-c1 claims an address of no host, h2 drops and counts it.
    let drops = "overlay_drops_total{host=\"h2\",reason=\"source_not_allowed\"}";
    let drops_before = wait_value(&net, &prometheus, drops, |_| true);
    for sysctl in [
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.br0.rp_filter=0",
    ] {
        net.exec("h1", &["sysctl", "-qw", sysctl]).expect("sysctl");
    }
    let forged = "10.42.200.1";
    let added = net
        .exec(
            c1,
            &["ip", "addr", "add", &format!("{forged}/32"), "dev", "eth0"],
        )
        .expect("ip addr add");
    assert!(added.status.success());
    let ping = net
        .exec(
            c1,
            &["ping", "-c3", "-i", "0.2", "-W1", "-I", forged, &target],
        )
        .expect("ping");
    assert!(!ping.status.success(), "a forged source got an answer");
    let drops_after = wait_value(&net, &prometheus, drops, |v| v >= drops_before + 3.0);
    eprintln!("h2's source_not_allowed drops: {drops_before} -> {drops_after}");

    // The rest of what a dashboard needs is there too.
    let now = common::now_s();
    for host in ["h1", "h2"] {
        let expiry = wait_value(
            &net,
            &prometheus,
            &format!("overlay_certificate_expiry_timestamp_seconds{{host=\"{host}\"}}"),
            |v| v > now,
        );
        assert!(expiry > now + 300.0 * 86400.0, "{host}: {expiry}");
        wait_value(
            &net,
            &prometheus,
            &format!("overlay_members{{host=\"{host}\",state=\"alive\"}}"),
            |v| v == 2.0,
        );
        wait_value(
            &net,
            &prometheus,
            &format!("sum(overlay_peer_handshakes_completed_total{{host=\"{host}\"}})"),
            |v| v >= 1.0,
        );
        wait_value(
            &net,
            &prometheus,
            &format!("sum(overlay_gossip_bytes_total{{host=\"{host}\"}})"),
            |v| v > 0.0,
        );
        wait_value(
            &net,
            &prometheus,
            &format!("sum(overlay_sync_bytes_total{{host=\"{host}\"}})"),
            |v| v > 0.0,
        );
        let handshake = wait_value(
            &net,
            &prometheus,
            &format!("overlay_peer_latest_handshake_seconds{{host=\"{host}\"}}"),
            |v| v > 0.0,
        );
        assert!(
            (now - 600.0..=now + 5.0).contains(&handshake),
            "{host}: latest handshake at {handshake}, now {now}"
        );
        wait_value(
            &net,
            &prometheus,
            &format!("count(overlay_build_info{{host=\"{host}\"}})"),
            |v| v == 1.0,
        );
    }
    drop(prometheus);
    net.down().expect("testnet down");
}
