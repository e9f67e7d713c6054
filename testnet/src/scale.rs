//! A scale run: N hosts formed as an operator would, then the events an operator of a
//! fleet cares about, each timed on every host: a join, a crash (`kill -9`), the restart,
//! a revocation; with the daemons' memory, gossip traffic and a ping across. Behind
//! `testnet scale` (and `scripts/scale`) and the 30-host end-to-end test, which assert the
//! same bounds as the 3-host control-plane tests.
//!
//! Every host is asked in parallel rounds through its API socket (and its routes with `ip
//! -n`), and an event's time on a host is when the first check that held *began*, so a
//! time is never shorter than the truth and at most one round (tens of ms) longer.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::cmd;
use crate::gossip::converge_timeout;
use crate::proc::parallel;
use crate::{MemberState, Options, Testnet, names};

/// Where each daemon serves its metrics: loopback of its own namespace.
const METRICS_ADDR: &str = "127.0.0.1:9586";
/// Threads that ask the daemons at once.
const CHECK_THREADS: usize = 8;
/// Pause between rounds of checks.
const ROUND_PAUSE: Duration = Duration::from_millis(20);
/// How long an event may take before the run stops waiting for it (beyond its bound).
const GIVE_UP: Duration = Duration::from_secs(30);

/// The bounds of the 3-host control-plane tests (`testnet/tests/control.rs`).
pub const JOIN_BOUND: Duration = Duration::from_secs(3);
/// Crash detection: down, route withdrawn.
pub const DETECT_BOUND: Duration = Duration::from_secs(10);
/// Back after restart: alive, routed.
pub const RESTART_BOUND: Duration = Duration::from_secs(5);
/// Revocation: revoked, route withdrawn.
pub const REVOKE_BOUND: Duration = Duration::from_secs(5);

/// What [`run`] builds and measures.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Number of hosts, at least 4 (admin, crash victim, revoked host, joiner).
    pub hosts: usize,
    /// Containers per host.
    pub containers: usize,
    /// How long the gossip traffic is watched (a full sync runs every 30 s by default, so a
    /// window of 30 s or more includes the syncs' share).
    pub window: Duration,
    /// Namespace prefix; `None` makes a unique one.
    pub prefix: Option<String>,
    /// The `overlayd` and `overlayctl` binaries; `None` looks them up as [`Options`] does.
    pub overlayd: Option<PathBuf>,
    pub overlayctl: Option<PathBuf>,
}

impl ScaleOptions {
    /// `hosts` hosts with one container each, a 30 s gossip window.
    pub fn new(hosts: usize) -> ScaleOptions {
        ScaleOptions {
            hosts,
            containers: 1,
            window: Duration::from_secs(30),
            prefix: None,
            overlayd: None,
            overlayctl: None,
        }
    }
}

/// An event's time on every host that had to see it.
#[derive(Debug, Clone, Serialize)]
pub struct EventTimes {
    /// Seconds until the last host saw it (`None`: one never did within the give-up time).
    pub all_s: Option<f64>,
    /// Median over the hosts, seconds.
    pub median_s: Option<f64>,
    /// Hosts that never saw it.
    pub missing: Vec<String>,
}

/// What [`run`] measured. Times in seconds, memory in MiB.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub hosts: usize,
    pub containers: usize,
    /// `testnet up` of the first N − 1 members: namespaces and configs, daemons, init +
    /// tokens + joins, until every member saw every other alive and pinged it.
    pub up_build_s: f64,
    pub up_daemons_s: f64,
    pub up_join_s: f64,
    pub up_converge_s: f64,
    /// The part of `up_converge_s` until every member saw every other alive; the rest is
    /// the all-pairs pings.
    pub up_alive_s: f64,
    /// The whole `up`.
    pub formed_s: f64,
    /// The Nth host's `overlayctl join`, until every member sees it alive and routes it.
    pub join: EventTimes,
    /// Whether every host then saw the N − 1 others alive and every pair pinged.
    pub all_alive: bool,
    /// Resident memory of the daemons once formed.
    pub rss_mean_mib: f64,
    pub rss_max_mib: f64,
    /// Gossip (SWIM datagrams) and full syncs sent per member per second over the window.
    pub gossip_bytes_per_member_s: f64,
    pub sync_bytes_per_member_s: f64,
    pub window_s: f64,
    /// Ping from the first host's probe to the last's: average round trip, ms.
    pub ping_ms: Option<f64>,
    /// `kill -9` of a member: until every other sees it down with its route withdrawn.
    pub detect: EventTimes,
    /// Its restart: until every other sees it alive and routes it again.
    pub restart: EventTimes,
    /// `overlayctl revoke` on the admin: until every other sees it revoked, route withdrawn.
    pub revoke: EventTimes,
    /// The neighbour table limits while the run was up (gc_thresh1/2/3).
    pub neigh_limits: [u64; 3],
    /// Each bound that was not met, in words; empty when the run passed.
    pub failures: Vec<String>,
}

/// Builds the run, measures, tears it down (also on error) and returns the figures.
pub fn run(opts: &ScaleOptions) -> Result<ScaleReport> {
    let n = opts.hosts;
    if n < 4 {
        bail!("a scale run needs at least 4 hosts (admin, crash, revocation, joiner), not {n}");
    }
    let mut up = Options::new(n, opts.containers);
    up.members = Some(n - 1);
    up.prefix = opts.prefix.clone();
    up.overlayd = opts.overlayd.clone();
    up.overlayctl = opts.overlayctl.clone();
    up.configure = Some(Box::new(|_, config| {
        config.extra.push("[metrics]".to_owned());
        config.extra.push(format!("listen = \"{METRICS_ADDR}\""));
    }));
    let started = Instant::now();
    let mut net = Testnet::up(up).context("testnet up")?;
    let formed = started.elapsed();
    let timings = net.timings();
    let mut failures = Vec::new();

    // The Nth host joins a formed network.
    let others: Vec<usize> = (1..n).collect();
    let joined = net.join_host(n)?;
    let join = net.event_times(joined, &others, JOIN_BOUND, |o| {
        net.sees_in_state(o, n, MemberState::Alive) && net.routes_member(o, n)
    });
    check(&mut failures, "join", &join, JOIN_BOUND);
    let all: Vec<usize> = (1..=n).collect();
    let all_alive = match net.wait_converged(&all, converge_timeout(n)) {
        Ok(_) => true,
        Err(e) => {
            failures.push(format!("not every host sees the others alive: {e:#}"));
            false
        }
    };

    let rss = net.daemon_rss_mib(&all)?;
    let rss_mean_mib = rss.iter().sum::<f64>() / rss.len() as f64;
    let rss_max_mib = rss.iter().copied().fold(0.0, f64::max);
    let metrics: SocketAddr = METRICS_ADDR.parse().context("metrics address")?;
    let before = net.control_bytes(&all, metrics)?;
    let watch = Instant::now();
    std::thread::sleep(opts.window);
    let after = net.control_bytes(&all, metrics)?;
    let seconds = watch.elapsed().as_secs_f64();
    let per_member = |f: fn(&ControlBytes) -> u64| {
        let sent: u64 = after
            .iter()
            .zip(&before)
            .map(|(a, b)| f(a).saturating_sub(f(b)))
            .sum();
        sent as f64 / n as f64 / seconds
    };
    let gossip_bytes_per_member_s = per_member(|c| c.gossip_sent);
    let sync_bytes_per_member_s = per_member(|c| c.sync_sent);
    let ping_ms = net.ping_rtt_ms(1, n);
    if ping_ms.is_none() {
        failures.push(format!("no ping from h1 to h{n}"));
    }

    // A crash in the middle of the network, then its restart.
    let victim = n / 2;
    let watchers: Vec<usize> = all.iter().copied().filter(|&o| o != victim).collect();
    net.kill_daemon(victim)?;
    let killed = Instant::now();
    let detect = net.event_times(killed, &watchers, DETECT_BOUND, |o| {
        net.sees_in_state(o, victim, MemberState::Down) && !net.routes_member(o, victim)
    });
    check(&mut failures, "crash detection", &detect, DETECT_BOUND);
    let restarted = Instant::now();
    net.start_daemon(victim)?;
    let restart = net.event_times(restarted, &watchers, RESTART_BOUND, |o| {
        net.sees_in_state(o, victim, MemberState::Alive) && net.routes_member(o, victim)
    });
    check(&mut failures, "restart", &restart, RESTART_BOUND);

    // A revocation of another member, from the admin.
    let revoked = n - 1;
    let watchers: Vec<usize> = all.iter().copied().filter(|&o| o != revoked).collect();
    net.overlayctl_ok(1, &["revoke", &Testnet::member_name(revoked)])?;
    let revoke_at = Instant::now();
    let revoke = net.event_times(revoke_at, &watchers, REVOKE_BOUND, |o| {
        net.sees_in_state(o, revoked, MemberState::Revoked) && !net.routes_member(o, revoked)
    });
    check(&mut failures, "revocation", &revoke, REVOKE_BOUND);
    if net.ping_rtt_ms(1, revoked).is_some() {
        failures.push(format!("h1 still pings h{revoked} after its revocation"));
    }

    let neigh_limits = crate::neigh::read_limits()?;
    net.down()?;
    Ok(ScaleReport {
        hosts: n,
        containers: opts.containers,
        up_build_s: timings.build.as_secs_f64(),
        up_daemons_s: timings.daemons.as_secs_f64(),
        up_join_s: timings.join.as_secs_f64(),
        up_converge_s: timings.converge.as_secs_f64(),
        up_alive_s: timings.alive.as_secs_f64(),
        formed_s: formed.as_secs_f64(),
        join,
        all_alive,
        rss_mean_mib,
        rss_max_mib,
        gossip_bytes_per_member_s,
        sync_bytes_per_member_s,
        window_s: seconds,
        ping_ms,
        detect,
        restart,
        revoke,
        neigh_limits,
        failures,
    })
}

fn check(failures: &mut Vec<String>, what: &str, times: &EventTimes, bound: Duration) {
    match times.all_s {
        Some(s) if s <= bound.as_secs_f64() => {}
        Some(s) => failures.push(format!(
            "{what}: {s:.2} s until every host saw it, over the bound of {} s",
            bound.as_secs()
        )),
        None => failures.push(format!(
            "{what}: never seen by {} within {} s",
            times.missing.join(", "),
            GIVE_UP.as_secs()
        )),
    }
}

/// The control plane's byte counters of one daemon (`/metrics`).
struct ControlBytes {
    gossip_sent: u64,
    sync_sent: u64,
}

impl Testnet {
    /// Polls `check(observer)` for every observer in parallel rounds until it held once for
    /// each or [`GIVE_UP`] (at least `bound` + 10 s) passed since `start`.
    fn event_times(
        &self,
        start: Instant,
        observers: &[usize],
        bound: Duration,
        check: impl Fn(usize) -> bool + Sync,
    ) -> EventTimes {
        let give_up = GIVE_UP.max(bound + Duration::from_secs(10));
        let mut times: Vec<Option<Duration>> = vec![None; observers.len()];
        loop {
            let pending: Vec<usize> = (0..observers.len())
                .filter(|&k| times[k].is_none())
                .collect();
            let results = parallel(&pending, CHECK_THREADS, |&k| {
                let asked = start.elapsed();
                check(observers[k]).then_some(asked)
            });
            for (k, result) in pending.iter().zip(results) {
                times[*k] = result;
            }
            if times.iter().all(Option::is_some) || start.elapsed() >= give_up {
                break;
            }
            std::thread::sleep(ROUND_PAUSE);
        }
        let mut seen: Vec<f64> = times.iter().flatten().map(Duration::as_secs_f64).collect();
        seen.sort_by(f64::total_cmp);
        let missing: Vec<String> = observers
            .iter()
            .zip(&times)
            .filter(|(_, t)| t.is_none())
            .map(|(o, _)| Testnet::member_name(*o))
            .collect();
        EventTimes {
            all_s: missing.is_empty().then(|| seen.last().copied()).flatten(),
            median_s: seen.get(seen.len() / 2).copied(),
            missing,
        }
    }

    /// Whether `observer` lists member `hM` in `state` (through its API socket).
    fn sees_in_state(&self, observer: usize, member: usize, state: MemberState) -> bool {
        let name = Testnet::member_name(member);
        self.peers_api(observer).is_ok_and(|peers| {
            peers
                .iter()
                .any(|p| p.name.as_deref() == Some(name.as_str()) && p.state == Some(state))
        })
    }

    /// Whether `observer`'s kernel routes member `hM`'s subnet (`ip -n NS route show`).
    fn routes_member(&self, observer: usize, member: usize) -> bool {
        let subnet = names::host_subnet(member);
        let ns = self.host_ns(observer);
        cmd::ip(&["-n", &ns, "-4", "route", "show", &subnet])
            .is_ok_and(|out| !String::from_utf8_lossy(&out.stdout).trim().is_empty())
    }

    /// Resident memory of each host's daemon, MiB.
    fn daemon_rss_mib(&self, hosts: &[usize]) -> Result<Vec<f64>> {
        hosts
            .iter()
            .map(|&i| {
                let pid = self
                    .daemon_pid(i)
                    .with_context(|| format!("h{i} has no daemon"))?;
                let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .with_context(|| format!("h{i}: cannot read /proc/{pid}/status"))?;
                let kib: f64 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .with_context(|| format!("h{i}: /proc/{pid}/status has no VmRSS"))?;
                Ok(kib / 1024.0)
            })
            .collect()
    }

    /// Every host's control-plane byte counters, scraped from its `/metrics`.
    fn control_bytes(&self, hosts: &[usize], addr: SocketAddr) -> Result<Vec<ControlBytes>> {
        parallel(hosts, CHECK_THREADS, |&i| {
            let text = self.scrape_metrics(i, addr)?;
            let sent = |metric: &str| -> Result<u64> {
                let line = format!("{metric}{{direction=\"sent\"}} ");
                text.lines()
                    .find_map(|l| l.strip_prefix(line.as_str()))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .map(|v| v as u64)
                    .with_context(|| format!("h{i}: /metrics has no {metric} sent"))
            };
            Ok(ControlBytes {
                gossip_sent: sent("overlay_gossip_bytes_total")?,
                sync_sent: sent("overlay_sync_bytes_total")?,
            })
        })
        .into_iter()
        .collect()
    }

    /// Average round trip of 5 pings from host `from`'s probe to host `to`'s (its first
    /// container, else the host), ms; `None` if none was answered.
    fn ping_rtt_ms(&self, from: usize, to: usize) -> Option<f64> {
        let source = if self.containers() > 0 {
            format!("h{from}-c1")
        } else {
            Testnet::member_name(from)
        };
        let target = match self.containers() {
            0 => self.host(to).ok()?.overlay.to_string(),
            _ => self.addr(&format!("h{to}-c1")).ok()?.to_string(),
        };
        let out = self
            .exec(&source, &["ping", "-c5", "-i0.2", "-W1", "-q", &target])
            .ok()?;
        // "rtt min/avg/max/mdev = 0.061/0.078/0.101/0.014 ms"
        let text = String::from_utf8_lossy(&out.stdout);
        let stats = text.lines().find_map(|l| l.split_once(" = "))?.1;
        stats.split('/').nth(1)?.parse().ok()
    }
}

impl ScaleReport {
    /// The figures as a table for a terminal.
    pub fn table(&self) -> String {
        let secs = |s: Option<f64>| s.map_or("never".to_owned(), |s| format!("{s:.2} s"));
        let event = |e: &EventTimes, bound: Duration| {
            format!(
                "{:<9} (median {}, bound {} s){}",
                secs(e.all_s),
                secs(e.median_s),
                bound.as_secs(),
                if e.missing.is_empty() {
                    String::new()
                } else {
                    format!("; never on {}", e.missing.join(" "))
                }
            )
        };
        let n = self.hosts;
        let mut out = String::new();
        let mut row = |what: &str, value: String| {
            let _ = writeln!(out, "{what:<44} {value}");
        };
        row(
            &format!("formed ({} hosts, `testnet up`)", n - 1),
            format!(
                "{:.1} s (build {:.1}, daemons {:.1}, joins {:.1}, converge {:.1}: alive {:.1}, pings {:.1})",
                self.formed_s,
                self.up_build_s,
                self.up_daemons_s,
                self.up_join_s,
                self.up_converge_s,
                self.up_alive_s,
                self.up_converge_s - self.up_alive_s
            ),
        );
        row(
            &format!("join of h{n}: alive and routed on every host"),
            event(&self.join, JOIN_BOUND),
        );
        row(
            &format!("every host sees {} others alive, all pairs ping", n - 1),
            if self.all_alive {
                "yes".to_owned()
            } else {
                "NO".to_owned()
            },
        );
        row(
            "RSS per daemon, mean / max",
            format!("{:.1} / {:.1} MiB", self.rss_mean_mib, self.rss_max_mib),
        );
        row(
            "gossip / sync sent per member",
            format!(
                "{:.0} / {:.0} bytes/s (over {:.0} s)",
                self.gossip_bytes_per_member_s, self.sync_bytes_per_member_s, self.window_s
            ),
        );
        row(
            &format!("ping h1 -> h{n}, average of 5"),
            self.ping_ms
                .map_or("no answer".to_owned(), |ms| format!("{ms:.3} ms")),
        );
        row(
            &format!("kill -9 of h{}: down on every host", n / 2),
            event(&self.detect, DETECT_BOUND),
        );
        row(
            &format!("restart of h{}: alive on every host", n / 2),
            event(&self.restart, RESTART_BOUND),
        );
        row(
            &format!("revoke h{}: revoked on every host", n - 1),
            event(&self.revoke, REVOKE_BOUND),
        );
        let l = self.neigh_limits;
        row(
            "neighbour table limits during the run",
            format!("{}/{}/{}", l[0], l[1], l[2]),
        );
        if self.failures.is_empty() {
            out.push_str("PASS: every bound met\n");
        } else {
            for failure in &self.failures {
                let _ = writeln!(out, "FAIL: {failure}");
            }
        }
        out
    }
}
