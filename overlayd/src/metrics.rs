//! Prometheus metrics (issue 17): what a scrape of `[metrics] listen` answers, in the
//! Prometheus text format (0.0.4) from the `prometheus-client` crate.
//!
//! The daemon's counters already live where they are counted (the router's per-peer and
//! drop counters, the control plane's view); a scrape takes a [`Snapshot`] of them and
//! encodes it, so nothing is counted twice and nothing on the packet path knows about
//! Prometheus. Names follow the WireGuard exporters' (`..._sent_bytes_total`,
//! `..._latest_handshake_seconds` with labels `name` and `public_key`), prefixed `overlay_`;
//! counters end in `_total`, timestamps in `_timestamp_seconds`.
//!
//! This file is pure: [`encode`] turns a snapshot into text. [`serve`] is the daemon's
//! side: the listening socket, `GET /metrics`, and taking the snapshot.

pub mod serve;

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use protocol::drops::DropReason;

/// The `Content-Type` of the answer.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One peer's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerSample {
    /// The member's name; empty for a static peer.
    pub name: String,
    /// Its WireGuard public key (base64).
    pub public_key: String,
    /// Payload bytes received from it.
    pub received_bytes: u64,
    /// Payload bytes sent to it.
    pub sent_bytes: u64,
    /// When the last handshake with it completed (unix seconds); `None`: never.
    pub latest_handshake_unix: Option<f64>,
    /// Handshake initiations this host sent it (retries included).
    pub handshakes_initiated: u64,
    /// Handshakes with it that completed (either side started).
    pub handshakes_completed: u64,
    /// Handshakes with it that failed: given up unanswered, or a handshake message for it
    /// that did not authenticate.
    pub handshakes_failed: u64,
}

/// The policy's figures, once a policy is in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicySample {
    /// The version in force.
    pub version: u64,
    /// New flows allowed, per rule line.
    pub allowed_by_rule: BTreeMap<u32, u64>,
    /// New flows denied.
    pub denied: u64,
    /// Flows tracked now.
    pub tracked_flows: u64,
}

/// Everything a scrape reports, taken at once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Per peer.
    pub peers: Vec<PeerSample>,
    /// Packets dropped, by reason, over all peers and none; a reason left out is 0 (every
    /// reason is reported, so that `increase()` sees the first drop of each).
    pub drops: BTreeMap<DropReason, u64>,
    /// Cookie replies sent (the handshake limiter under load).
    pub cookie_replies_sent: u64,
    /// Members by state (`alive`, `suspect`, `down`, `left`, `revoked`), this host
    /// included; empty when this host is in no network.
    pub members: BTreeMap<&'static str, u64>,
    /// Control-plane bytes: gossip datagrams sent and received.
    pub gossip_sent_bytes: u64,
    /// Gossip datagram bytes received.
    pub gossip_received_bytes: u64,
    /// Bytes of full syncs and pushes of records sent (requests and answers).
    pub sync_sent_bytes: u64,
    /// Bytes of full syncs and pushes of records received.
    pub sync_received_bytes: u64,
    /// When this host's certificate expires (unix seconds); `None` in static mode.
    pub certificate_expiry_unix: Option<u64>,
    /// Docker endpoints on this host; `None` when the plugin is off.
    pub docker_endpoints: Option<u64>,
    /// The policy, if one is in force.
    pub policy: Option<PolicySample>,
}

/// Encodes `snapshot` in the Prometheus text format.
pub fn encode(snapshot: Snapshot) -> String {
    let mut registry = Registry::with_prefix("overlay");
    registry.register_collector(Box::new(Scrape(snapshot)));
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in this module.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    out
}

#[derive(Debug)]
struct Scrape(Snapshot);

fn counter(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    value: u64,
) -> std::fmt::Result {
    family(
        e,
        name,
        help,
        MetricType::Counter,
        &[(labels, Value::Counter(value))],
    )
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let value = Value::Count(i64::try_from(value).unwrap_or(i64::MAX));
    family(e, name, help, MetricType::Gauge, &[(&[], value)])
}

#[derive(Clone, Copy)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Count(i64),
}

type Labels<'a> = &'a [(&'a str, &'a str)];

/// A per-peer counter: name, help, and how to read it from a sample.
type PeerCounter = (&'static str, &'static str, fn(&PeerSample) -> u64);

/// One metric with one sample per label set.
fn family(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: &[(Labels<'_>, Value)],
) -> std::fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        let sample = metric.encode_family(&labels)?;
        match *value {
            Value::Counter(v) => ConstCounter::new(v).encode(sample)?,
            Value::Gauge(v) => ConstGauge::new(v).encode(sample)?,
            Value::Count(v) => ConstGauge::new(v).encode(sample)?,
        }
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let peer_labels: Vec<[(&str, &str); 2]> = s
            .peers
            .iter()
            .map(|p| {
                [
                    ("name", p.name.as_str()),
                    ("public_key", p.public_key.as_str()),
                ]
            })
            .collect();
        let per_peer = |f: &dyn Fn(&PeerSample) -> Value| -> Vec<(Labels<'_>, Value)> {
            s.peers
                .iter()
                .zip(&peer_labels)
                .map(|(p, l)| (&l[..], f(p)))
                .collect()
        };
        let peer_counters: [PeerCounter; 5] = [
            (
                "peer_received_bytes",
                "Payload bytes received from the peer and delivered (decrypted, checked).",
                |p| p.received_bytes,
            ),
            (
                "peer_sent_bytes",
                "Payload bytes sent to the peer (before encryption).",
                |p| p.sent_bytes,
            ),
            (
                "peer_handshakes_initiated",
                "WireGuard handshake initiations this host sent to the peer (retries included).",
                |p| p.handshakes_initiated,
            ),
            (
                "peer_handshakes_completed",
                "WireGuard handshakes with the peer that completed.",
                |p| p.handshakes_completed,
            ),
            (
                "peer_handshakes_failed",
                "Handshakes with the peer that failed: unanswered for 90 s, or a message that did not authenticate.",
                |p| p.handshakes_failed,
            ),
        ];
        for (name, help, get) in peer_counters {
            family(
                &mut e,
                name,
                help,
                MetricType::Counter,
                &per_peer(&|p| Value::Counter(get(p))),
            )?;
        }
        let handshakes: Vec<_> = s
            .peers
            .iter()
            .zip(&peer_labels)
            .filter_map(|(p, l)| p.latest_handshake_unix.map(|t| (&l[..], Value::Gauge(t))))
            .collect();
        family(
            &mut e,
            "peer_latest_handshake_seconds",
            "When the latest handshake with the peer completed (unix seconds); absent: never.",
            MetricType::Gauge,
            &handshakes,
        )?;
        let drops: Vec<_> = DropReason::ALL
            .iter()
            .map(|r| (*r, s.drops.get(r).copied().unwrap_or(0)))
            .collect();
        let drop_labels: Vec<[(&str, &str); 1]> = drops
            .iter()
            .map(|(r, _)| [("reason", r.as_str())])
            .collect();
        let drop_samples: Vec<_> = drop_labels
            .iter()
            .zip(&drops)
            .map(|(l, (_, n))| (&l[..], Value::Counter(*n)))
            .collect();
        family(
            &mut e,
            "drops",
            "Packets dropped, by reason.",
            MetricType::Counter,
            &drop_samples,
        )?;
        counter(
            &mut e,
            "cookie_replies_sent",
            "Cookie replies sent: handshakes refused until the sender proves its address (under load).",
            &[],
            s.cookie_replies_sent,
        )?;
        let member_labels: Vec<[(&str, &str); 1]> =
            s.members.keys().map(|k| [("state", *k)]).collect();
        let member_samples: Vec<_> = member_labels
            .iter()
            .zip(s.members.values())
            .map(|(l, n)| (&l[..], Value::Count(i64::try_from(*n).unwrap_or(i64::MAX))))
            .collect();
        family(
            &mut e,
            "members",
            "Members of the network as this host sees them, by state.",
            MetricType::Gauge,
            &member_samples,
        )?;
        family(
            &mut e,
            "gossip_bytes",
            "Gossip (SWIM) datagram bytes, by direction.",
            MetricType::Counter,
            &[
                (
                    &[("direction", "sent")],
                    Value::Counter(s.gossip_sent_bytes),
                ),
                (
                    &[("direction", "received")],
                    Value::Counter(s.gossip_received_bytes),
                ),
            ],
        )?;
        family(
            &mut e,
            "sync_bytes",
            "Bytes of full directory syncs and pushes of records (QUIC streams), by direction.",
            MetricType::Counter,
            &[
                (&[("direction", "sent")], Value::Counter(s.sync_sent_bytes)),
                (
                    &[("direction", "received")],
                    Value::Counter(s.sync_received_bytes),
                ),
            ],
        )?;
        if let Some(t) = s.certificate_expiry_unix {
            gauge(
                &mut e,
                "certificate_expiry_timestamp_seconds",
                "When this host's certificate expires (unix seconds).",
                t,
            )?;
        }
        if let Some(n) = s.docker_endpoints {
            gauge(
                &mut e,
                "docker_endpoints",
                "Docker endpoints (containers) on this host's overlay networks.",
                n,
            )?;
        }
        if let Some(p) = &s.policy {
            gauge(
                &mut e,
                "policy_version",
                "The version of the network policy in force.",
                p.version,
            )?;
            let lines: Vec<String> = p.allowed_by_rule.keys().map(u32::to_string).collect();
            let rule_labels: Vec<[(&str, &str); 2]> = lines
                .iter()
                .map(|l| [("verdict", "allow"), ("rule", l.as_str())])
                .collect();
            let mut verdicts: Vec<(Labels<'_>, Value)> = rule_labels
                .iter()
                .zip(p.allowed_by_rule.values())
                .map(|(l, n)| (&l[..], Value::Counter(*n)))
                .collect();
            verdicts.push((
                &[("verdict", "deny"), ("rule", "")],
                Value::Counter(p.denied),
            ));
            family(
                &mut e,
                "policy_verdicts",
                "New flows judged by the policy, by verdict and the line of the rule that allowed them.",
                MetricType::Counter,
                &verdicts,
            )?;
            gauge(
                &mut e,
                "policy_tracked_flows",
                "Flows the policy tracks now (connection tracking).",
                p.tracked_flows,
            )?;
        }
        // The commit only where the build was given one (env OVERLAYD_GIT_COMMIT at build
        // time): a label that could go stale is worse than none.
        let build: &[(&str, &str)] = match option_env!("OVERLAYD_GIT_COMMIT") {
            Some(commit) => &[("version", env!("CARGO_PKG_VERSION")), ("revision", commit)],
            None => &[("version", env!("CARGO_PKG_VERSION"))],
        };
        family(
            &mut e,
            "build_info",
            "The overlayd build; the value is always 1.",
            MetricType::Gauge,
            &[(build, Value::Count(1))],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            peers: vec![
                PeerSample {
                    name: "h2".into(),
                    public_key: "k2=".into(),
                    received_bytes: 10,
                    sent_bytes: 20,
                    latest_handshake_unix: Some(1_700_000_000.0),
                    handshakes_initiated: 3,
                    handshakes_completed: 2,
                    handshakes_failed: 1,
                },
                PeerSample {
                    name: String::new(),
                    public_key: "k3=".into(),
                    ..PeerSample::default()
                },
            ],
            drops: [(DropReason::SourceNotAllowed, 4)].into_iter().collect(),
            cookie_replies_sent: 5,
            members: [("alive", 2), ("down", 1)].into_iter().collect(),
            gossip_sent_bytes: 100,
            gossip_received_bytes: 90,
            sync_sent_bytes: 7,
            sync_received_bytes: 8,
            certificate_expiry_unix: Some(1_800_000_000),
            docker_endpoints: Some(2),
            policy: Some(PolicySample {
                version: 3,
                allowed_by_rule: [(2, 8)].into_iter().collect(),
                denied: 6,
                tracked_flows: 4,
            }),
        }
    }

    #[test]
    fn a_snapshot_encodes_as_prometheus_text() {
        let text = encode(sample());
        for line in [
            "# TYPE overlay_peer_received_bytes_total counter",
            "overlay_peer_received_bytes_total{name=\"h2\",public_key=\"k2=\"} 10",
            "overlay_peer_sent_bytes_total{name=\"h2\",public_key=\"k2=\"} 20",
            "overlay_peer_sent_bytes_total{name=\"\",public_key=\"k3=\"} 0",
            "overlay_peer_handshakes_failed_total{name=\"h2\",public_key=\"k2=\"} 1",
            "# TYPE overlay_peer_latest_handshake_seconds gauge",
            "overlay_peer_latest_handshake_seconds{name=\"h2\",public_key=\"k2=\"} 1700000000.0",
            "overlay_drops_total{reason=\"source_not_allowed\"} 4",
            "overlay_cookie_replies_sent_total 5",
            "overlay_members{state=\"down\"} 1",
            "overlay_gossip_bytes_total{direction=\"received\"} 90",
            "overlay_sync_bytes_total{direction=\"sent\"} 7",
            "overlay_drops_total{reason=\"no_route\"} 0",
            "overlay_certificate_expiry_timestamp_seconds 1800000000",
            "overlay_docker_endpoints 2",
            "overlay_policy_verdicts_total{verdict=\"allow\",rule=\"2\"} 8",
            "overlay_policy_verdicts_total{verdict=\"deny\",rule=\"\"} 6",
            "overlay_policy_tracked_flows 4",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("overlay_build_info{version=\"0.1.0\"") && l.ends_with(" 1")),
            "{text}"
        );
        // A peer that never completed a handshake has no latest-handshake sample.
        assert!(!text.contains("overlay_peer_latest_handshake_seconds{name=\"\""));
    }

    #[test]
    fn optional_parts_are_left_out() {
        let text = encode(Snapshot::default());
        assert!(!text.contains("certificate_expiry"));
        assert!(!text.contains("overlay_policy_"));
        assert!(!text.contains("docker_endpoints"));
        assert!(text.contains("overlay_build_info"));
    }

    /// Every sample line is `name{labels} value` with a name that a `# TYPE` line
    /// declared, and counters end in `_total`: what `promtool check metrics` checks first.
    #[test]
    fn every_sample_belongs_to_a_declared_metric() {
        let text = encode(sample());
        let mut declared = std::collections::HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{name}");
                }
                declared.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains_key(name), "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }

    /// `promtool check metrics` (Prometheus's own parser and linter) takes the text as it
    /// is, with nothing to say. Skipped, saying so, where promtool is missing
    /// (`scripts/setup` installs it with Debian's `prometheus`).
    #[test]
    fn promtool_accepts_the_text() {
        for snapshot in [sample(), Snapshot::default()] {
            let text = encode(snapshot);
            let Some((ok, said)) = promtool_check(&text) else {
                eprintln!("skipped: promtool is not installed (scripts/setup installs it)");
                return;
            };
            assert!(ok && said.trim().is_empty(), "promtool: {said}\n{text}");
        }
    }

    /// Runs `promtool check metrics` on `text`: whether it passed, and what it said.
    pub(crate) fn promtool_check(text: &str) -> Option<(bool, String)> {
        use std::io::Write;
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        child.stdin.take()?.write_all(text.as_bytes()).ok()?;
        let out = child.wait_with_output().ok()?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some((out.status.success(), said))
    }
}
