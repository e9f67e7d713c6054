//! The flow log (issue 17), the daemon's side: every window (`[flows] window_s`, 5 s by
//! default, as Tailscale's network flow logs) a collector thread takes the router's
//! per-peer windows ([`Router::take_flows`]), makes one [`FlowLogEntry`] per flow,
//! direction and verdict (the peer's name and groups as they are now), numbers them, keeps
//! the last [`RING`] in memory for `GET /v1/flows?after=N` (`overlayctl flows`), and
//! appends them to `[flows] file` as JSON lines, rotated by size ([`file`]).
//!
//! The packet path never waits for any of this: it only counts into its peer's window
//! (`router/flows.rs`); the collector holds each peer's lock for one `Option::take`.
//! Bytes are those of the inner IP packets (headers included, before encryption), as
//! the policy sees them.

pub mod file;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use protocol::api::FlowLogEntry;
use protocol::policy::enforce::Direction;
use protocol::policy::flowlog::Verdict;

use crate::config::Flows;
use crate::router::{PeerFlows, Router};
use crate::util::lock;
use file::RotatingFile;

/// Records kept in memory for the API.
pub const RING: usize = 10_000;

/// The flow log: the records in memory and the file.
#[derive(Debug)]
pub struct FlowLog {
    ring: Mutex<Ring>,
    /// Taken for a whole collection, so that records reach the ring and the file in
    /// the order of their numbers. `None` inside: no file.
    file: Mutex<Option<RotatingFile>>,
    /// The file's path and size bound as opened (a reload reopens it when they change).
    path: Mutex<(Option<PathBuf>, u64)>,
    /// The window in seconds; a reload may change it (the next window takes it).
    window_s: AtomicU64,
}

#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<FlowLogEntry>,
    next_seq: u64,
}

impl FlowLog {
    /// The flow log `config` asks for, its file opened (created 0600 if missing).
    pub fn open(config: &Flows) -> anyhow::Result<FlowLog> {
        Ok(FlowLog {
            ring: Mutex::new(Ring::default()),
            file: Mutex::new(open_file(config)?),
            path: Mutex::new((config.file.clone(), config.max_bytes)),
            window_s: AtomicU64::new(config.window_s),
        })
    }

    /// Takes `config`'s file, size bound and window (a reload): a new file is opened
    /// first, so that one that cannot be opened changes nothing; the records in memory
    /// stay.
    pub fn reconfigure(&self, config: &Flows) -> anyhow::Result<()> {
        // In `record`'s order: the file, then its path.
        let mut file = lock(&self.file);
        let mut path = lock(&self.path);
        if *path != (config.file.clone(), config.max_bytes) {
            *file = open_file(config)?;
            *path = (config.file.clone(), config.max_bytes);
        }
        self.window_s.store(config.window_s, Ordering::Relaxed);
        Ok(())
    }

    /// Starts the collector thread: every window, the router's flows go to the log. It
    /// runs until the process exits (while the flow log is off, the router counts nothing
    /// and it finds nothing).
    pub fn spawn(self: &Arc<Self>, router: Arc<Router>) -> std::io::Result<()> {
        let log = self.clone();
        std::thread::Builder::new()
            .name("flowlog".into())
            .spawn(move || {
                loop {
                    let window = log.window_s.load(Ordering::Relaxed);
                    std::thread::sleep(Duration::from_secs(window));
                    log.record(router.take_flows());
                }
            })?;
        Ok(())
    }

    /// Numbers one window's flows, keeps them for the API and appends them to the file.
    /// A failed write is logged (once per window) and the records stay in memory.
    pub fn record(&self, flows: Vec<PeerFlows>) {
        let mut entries = entries(&flows);
        if entries.is_empty() {
            return;
        }
        let mut file = lock(&self.file);
        {
            let mut ring = lock(&self.ring);
            for e in &mut entries {
                ring.next_seq += 1;
                e.seq = ring.next_seq;
            }
            ring.entries.extend(entries.iter().cloned());
            let excess = ring.entries.len().saturating_sub(RING);
            ring.entries.drain(..excess);
        }
        if let Some(f) = file.as_mut() {
            let written = entries.iter().try_for_each(|e| {
                let line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
                f.write_line(&line)
            });
            if let Err(e) = written {
                let path = lock(&self.path).0.clone().unwrap_or_default();
                tracing::warn!(
                    error = %e,
                    file = %path.display(),
                    "cannot write the flow log file; its records stay in memory (overlayctl flows)"
                );
            }
        }
    }

    /// The records after `seq` (all kept for 0), oldest first.
    pub fn after(&self, seq: u64) -> Vec<FlowLogEntry> {
        lock(&self.ring)
            .entries
            .iter()
            .filter(|e| e.seq > seq)
            .cloned()
            .collect()
    }
}

fn open_file(config: &Flows) -> anyhow::Result<Option<RotatingFile>> {
    match &config.file {
        Some(path) => Ok(Some(
            RotatingFile::open(path, config.max_bytes).with_context(|| {
                format!(
                    "cannot open the flow log file {}; create its folder or change [flows] file",
                    path.display()
                )
            })?,
        )),
        None => Ok(None),
    }
}

/// The log's lines for one window's flows (numbered 0), in the order of their first packet.
pub fn entries(flows: &[PeerFlows]) -> Vec<FlowLogEntry> {
    let mut out: Vec<FlowLogEntry> = flows
        .iter()
        .flat_map(|p| {
            p.records.iter().map(move |r| {
                let key = r.key;
                let (verdict, rule) = match r.verdict {
                    Verdict::Allowed(rule) => ("allow", rule.map(|r| r.line)),
                    Verdict::Denied => ("deny", None),
                };
                FlowLogEntry {
                    seq: 0,
                    start_unix_ms: r.counts.first,
                    end_unix_ms: r.counts.last,
                    proto: key.map(|k| k.proto),
                    src: key.map(|k| (k.src, k.src_port).into()),
                    dst: key.map(|k| (k.dst, k.dst_port).into()),
                    peer: p.peer.clone(),
                    peer_groups: p.groups.clone(),
                    direction: match r.direction {
                        Direction::Inbound => "in",
                        Direction::Outbound => "out",
                    }
                    .to_owned(),
                    packets: r.counts.packets,
                    bytes: r.counts.bytes,
                    verdict: verdict.to_owned(),
                    rule,
                }
            })
        })
        .collect();
    out.sort_by_key(|e| e.start_unix_ms);
    out
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use protocol::policy::RuleId;
    use protocol::policy::flowlog::{Counts, FlowRecord};
    use protocol::policy::packet::FlowKey;

    use super::*;

    fn peer_flows(peer: &str, port: u16, verdict: Verdict, first: u64) -> PeerFlows {
        PeerFlows {
            peer: peer.into(),
            groups: vec!["db".into()],
            records: vec![FlowRecord {
                key: Some(FlowKey {
                    proto: 6,
                    src: IpAddr::from([10, 42, 1, 2]),
                    dst: IpAddr::from([10, 42, 2, 2]),
                    src_port: 40000,
                    dst_port: port,
                }),
                direction: Direction::Outbound,
                verdict,
                counts: Counts {
                    packets: 3,
                    bytes: 180,
                    first,
                    last: first + 10,
                },
            }],
        }
    }

    #[test]
    fn records_are_numbered_kept_and_written_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let log = FlowLog::open(&Flows {
            enabled: true,
            file: Some(path.clone()),
            ..Flows::default()
        })
        .unwrap();
        let rule = RuleId { index: 0, line: 4 };
        log.record(vec![
            peer_flows("h2", 5432, Verdict::Allowed(Some(rule)), 2000),
            peer_flows("h3", 22, Verdict::Denied, 1000),
        ]);
        log.record(Vec::new());
        let all = log.after(0);
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].seq, all[0].peer.as_str()), (1, "h3"));
        assert_eq!((all[0].verdict.as_str(), all[0].rule), ("deny", None));
        assert_eq!((all[1].verdict.as_str(), all[1].rule), ("allow", Some(4)));
        assert_eq!(all[1].dst, Some("10.42.2.2:5432".parse().unwrap()));
        assert_eq!(all[1].direction, "out");
        assert_eq!(log.after(1).len(), 1);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<FlowLogEntry> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, all);
    }

    #[test]
    fn the_ring_keeps_the_last_records_and_a_missing_folder_is_one_line() {
        let log = FlowLog::open(&Flows::default()).unwrap();
        for i in 0..(RING as u64 + 5) {
            log.record(vec![peer_flows("h2", 80, Verdict::Denied, i)]);
        }
        let all = log.after(0);
        assert_eq!(all.len(), RING);
        assert_eq!(all[0].seq, 6);
        let err = FlowLog::open(&Flows {
            file: Some("/nonexistent-flows-folder/flows.jsonl".into()),
            ..Flows::default()
        })
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("create its folder"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
}
