//! A deterministic simulation of SWIM membership ([`crate::membership`], `foca`) with many
//! members on one virtual clock.
//!
//! Every member is a real `foca::Foca` driven exactly as the daemon will drive it: what it
//! asks its `Runtime` for (send a datagram, fire a timer after a delay, notify a change)
//! becomes an event in one queue ordered by virtual time. A datagram is lost with
//! probability `loss` and otherwise arrives after a one-way latency drawn uniformly from
//! `latency_min..=latency_max`. All randomness (loss, latency, start phases, each member's
//! own RNG, which member joins and which crashes) comes from one seed: the same
//! [`SimConfig`] always gives the same [`Report`].
//!
//! A run, on one clock:
//!
//! 1. **Bootstrap**: `nodes` members each start at a random phase within the first probe
//!    period, already knowing all the others (`apply_many`, no broadcast), as a daemon that
//!    got the member list at join or from disk would.
//! 2. **Steady state**: `warmup`, then `duration` with no failure. Bytes (encoded foca
//!    datagrams, lost ones included, no QUIC/UDP/IP overhead) are counted over `duration`;
//!    any member declared down by anyone during warmup + duration is a false down.
//! 3. **Join**: a new member announces itself to one random member; we time how long until
//!    99.9 % of the `nodes` members report it up.
//! 4. **Crash**: after the join has settled, one random original member stops answering
//!    (drops every datagram and timer); we time how long until 99.9 % of the others report
//!    it down.
//!
//! Not modelled: CPU time, bandwidth and queueing, reordering beyond latency jitter,
//! partitions, the anti-entropy sync over QUIC streams, record signatures.
//!
//! Pure like the rest of the crate: no wall clock, no threads, no global RNG.

mod queue;

use std::time::Duration;

use foca::{Foca, Member, NoCustomBroadcast, OwnedNotification, PostcardCodec, Runtime, Timer};
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;

use crate::membership::{self, ConfigError, NodeId};
use queue::{EventQueue, Micros};

/// What to simulate.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Members in the converged cluster (the joiner comes on top).
    pub nodes: u32,
    /// Probability that any one datagram is lost, in `0.0..1.0`.
    pub loss: f64,
    /// The one seed every random choice derives from.
    pub seed: u64,
    /// Length of the measured no-failure run (bytes, false downs).
    pub duration: Duration,
    /// Settling time after bootstrap, before bytes are counted (false downs count).
    pub warmup: Duration,
    /// Shortest one-way latency.
    pub latency_min: Duration,
    /// Longest one-way latency.
    pub latency_max: Duration,
    /// Give up on the join after this long (the figure is then `None`).
    pub join_timeout: Duration,
    /// Give up on detecting the crash after this long (the figure is then `None`).
    pub detect_timeout: Duration,
    /// The membership settings under test.
    pub membership: membership::Config,
}

impl SimConfig {
    /// Our defaults around the four knobs of `scripts/sim`: LAN membership settings for
    /// `nodes`, 0.5–2 ms one-way latency, 10 s warmup.
    pub fn new(nodes: u32, loss: f64, seed: u64, duration: Duration) -> Self {
        Self {
            nodes,
            loss,
            seed,
            duration,
            warmup: Duration::from_secs(10),
            latency_min: Duration::from_micros(500),
            latency_max: Duration::from_millis(2),
            join_timeout: Duration::from_secs(60),
            detect_timeout: Duration::from_secs(120),
            membership: membership::Config::lan(nodes),
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Members in the converged cluster.
    pub nodes: u32,
    /// Seconds from the joiner's announce until 99.9 % of the members had it up; `None` if
    /// that did not happen within `join_timeout`.
    pub join_p999_s: Option<f64>,
    /// Seconds from the crash until 99.9 % of the other members had it down; `None` if that
    /// did not happen within `detect_timeout`.
    pub detect_p999_s: Option<f64>,
    /// Encoded foca bytes sent per member per second over the steady state.
    pub bytes_per_member_per_s: f64,
    /// Datagrams sent per member per second over the steady state. For the wire cost, add
    /// roughly 60–75 bytes of QUIC, UDP and IPv4 headers per datagram to the foca bytes.
    pub datagrams_per_member_per_s: f64,
    /// Distinct members declared down by at least one member during the no-failure run.
    pub false_downs: u64,
    /// Datagrams sent over the whole run (lost ones included).
    pub datagrams: u64,
    /// Datagrams lost over the whole run.
    pub datagrams_lost: u64,
    /// Errors foca returned while handling datagrams or timers (stale or misdirected
    /// messages; expected in small numbers around a crash or a rejoin).
    pub foca_errors: u64,
}

impl Report {
    /// The one-line JSON summary `scripts/sim` ends with (`null` for a figure not reached).
    pub fn to_json(&self) -> String {
        let seconds = |value: Option<f64>| value.map_or("null".to_string(), |s| format!("{s:.3}"));
        format!(
            concat!(
                r#"{{"nodes":{},"join_p999_s":{},"detect_p999_s":{},"#,
                r#""bytes_per_member_per_s":{:.1},"false_downs":{}}}"#
            ),
            self.nodes,
            seconds(self.join_p999_s),
            seconds(self.detect_p999_s),
            self.bytes_per_member_per_s,
            self.false_downs
        )
    }
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The membership settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The simulation settings are invalid.
    #[error("invalid simulation settings: {0}")]
    Invalid(&'static str),
    /// foca refused to bootstrap a member.
    #[error("foca refused the bootstrap member list: {0}")]
    Bootstrap(foca::Error),
}

/// Runs the whole scenario; `progress` gets a human-readable line now and then.
pub fn run(config: &SimConfig, progress: impl FnMut(String)) -> Result<Report, SimError> {
    if config.nodes < 2 {
        return Err(SimError::Invalid("at least 2 nodes are needed"));
    }
    if !(0.0..1.0).contains(&config.loss) {
        return Err(SimError::Invalid("loss must be in 0.0..1.0"));
    }
    if config.latency_min > config.latency_max {
        return Err(SimError::Invalid("latency_min must not exceed latency_max"));
    }
    if config.duration.is_zero() {
        return Err(SimError::Invalid("duration must be positive"));
    }
    World::new(config)?.run(progress)
}

type Agent = Foca<NodeId, PostcardCodec, Pcg64Mcg, NoCustomBroadcast>;

enum Event {
    /// Member `0` boots with the full member list.
    Start(u32),
    /// A timer member `0` asked for.
    Timer(u32, Timer<NodeId>),
    /// A datagram arrives at member `to`.
    Datagram { to: u32, data: Vec<u8> },
}

/// What foca asked for during one call; drained into the queue right after.
#[derive(Default)]
struct Outbox {
    sends: Vec<(NodeId, Vec<u8>)>,
    timers: Vec<(Timer<NodeId>, Duration)>,
    notifications: Vec<OwnedNotification<NodeId>>,
}

impl Runtime<NodeId> for Outbox {
    fn notify(&mut self, notification: foca::Notification<'_, NodeId>) {
        self.notifications.push(notification.to_owned());
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<NodeId>, after: Duration) {
        self.timers.push((event, after));
    }
}

struct Node {
    foca: Agent,
    crashed: bool,
}

/// Who has seen a member reach some state, and when enough had.
struct Watch {
    member: u32,
    since: Micros,
    seen: Vec<bool>,
    count: usize,
    needed: usize,
    reached: Option<Micros>,
}

impl Watch {
    fn new(member: u32, since: Micros, observers: usize, slots: usize) -> Self {
        Self {
            member,
            since,
            seen: vec![false; slots],
            count: 0,
            // 99.9 %, rounded up, in integers so that 1,000 observers need exactly 999.
            needed: (observers * 999).div_ceil(1000),
            reached: None,
        }
    }

    fn observe(&mut self, observer: u32, now: Micros) {
        let slot = observer as usize;
        if slot < self.seen.len() && !self.seen[slot] {
            self.seen[slot] = true;
            self.count += 1;
            if self.count == self.needed {
                self.reached = Some(now - self.since);
            }
        }
    }
}

struct World<'a> {
    config: &'a SimConfig,
    foca_config: foca::Config,
    queue: EventQueue<Event>,
    rng: Pcg64Mcg,
    nodes: Vec<Node>,
    outbox: Outbox,
    /// Bytes are counted while the clock is inside this window.
    count_bytes: (Micros, Micros),
    steady_bytes: u64,
    steady_datagrams: u64,
    datagrams: u64,
    datagrams_lost: u64,
    foca_errors: u64,
    /// Until this time every down is a false down.
    no_failure_until: Micros,
    falsely_down: Vec<bool>,
    false_down_notifications: u64,
    join: Option<Watch>,
    crash: Option<Watch>,
}

fn micros(duration: Duration) -> Micros {
    u64::try_from(duration.as_micros()).unwrap_or(Micros::MAX)
}

fn seconds(at: Micros) -> f64 {
    // Exact below 2^53 µs (285 years).
    at as f64 / 1e6
}

impl<'a> World<'a> {
    fn new(config: &'a SimConfig) -> Result<Self, SimError> {
        let foca_config = config.membership.to_foca()?;
        let warmup_end = micros(config.warmup);
        let steady_end = warmup_end + micros(config.duration);
        Ok(Self {
            config,
            foca_config,
            queue: EventQueue::new(),
            rng: Pcg64Mcg::seed_from_u64(config.seed),
            nodes: Vec::with_capacity(config.nodes as usize + 1),
            outbox: Outbox::default(),
            count_bytes: (warmup_end, steady_end),
            steady_bytes: 0,
            steady_datagrams: 0,
            datagrams: 0,
            datagrams_lost: 0,
            foca_errors: 0,
            no_failure_until: steady_end,
            falsely_down: vec![false; config.nodes as usize + 1],
            false_down_notifications: 0,
            join: None,
            crash: None,
        })
    }

    fn add_node(&mut self) -> u32 {
        let index = self.nodes.len() as u32;
        let rng = Pcg64Mcg::seed_from_u64(self.rng.random());
        let foca = Agent::new(
            NodeId::new(index),
            self.foca_config.clone(),
            rng,
            PostcardCodec,
        );
        self.nodes.push(Node {
            foca,
            crashed: false,
        });
        index
    }

    fn run(mut self, mut progress: impl FnMut(String)) -> Result<Report, SimError> {
        let config = self.config;
        let n = config.nodes;
        let period = micros(config.membership.probe_period);
        for _ in 0..n {
            let node = self.add_node();
            let at = self.rng.random_range(0..period);
            self.queue.push(at, Event::Start(node));
        }
        progress(format!(
            "bootstrap: {n} members, loss {}, seed {}, steady {} s after {} s warmup",
            config.loss,
            config.seed,
            config.duration.as_secs_f64(),
            config.warmup.as_secs_f64()
        ));

        // Steady state, reported in tenths.
        let (_, steady_end) = self.count_bytes;
        let step = (steady_end / 10).max(1);
        let mut until = 0;
        while until < steady_end {
            until = (until + step).min(steady_end);
            self.advance(until, |_| false)?;
            progress(format!(
                "t={:.0}s datagrams={} lost={} false_downs={} ({} notifications) foca_errors={}",
                seconds(until),
                self.datagrams,
                self.datagrams_lost,
                self.count_false_downs(),
                self.false_down_notifications,
                self.foca_errors
            ));
        }

        // Join: a new member announces itself to one random member.
        let joiner = self.add_node();
        let contact = self.rng.random_range(0..n);
        let start = self.queue.now();
        self.join = Some(Watch::new(joiner, start, n as usize, n as usize));
        let result = self.nodes[joiner as usize]
            .foca
            .announce(NodeId::new(contact), &mut self.outbox);
        self.count_error(result);
        self.flush(joiner);
        self.advance(start + micros(config.join_timeout), |world| {
            world
                .join
                .as_ref()
                .is_some_and(|watch| watch.reached.is_some())
        })?;
        let join_p999_s = self.join.as_ref().and_then(|w| w.reached).map(seconds);
        if let Some(watch) = &self.join {
            progress(format!(
                "join: member {joiner} up at {}/{} members after {:.3} s (99.9 %: {:?} s)",
                watch.count,
                n,
                seconds(self.queue.now() - start),
                join_p999_s
            ));
        }

        // Let the join settle, then crash one original member.
        let settle = self.queue.now() + micros(config.membership.probe_period) * 5;
        self.advance(settle, |_| false)?;
        let victim = self.rng.random_range(0..n);
        self.nodes[victim as usize].crashed = true;
        let start = self.queue.now();
        // Observers: every member but the victim, the joiner included.
        self.crash = Some(Watch::new(victim, start, n as usize, n as usize + 1));
        self.advance(start + micros(config.detect_timeout), |world| {
            world
                .crash
                .as_ref()
                .is_some_and(|watch| watch.reached.is_some())
        })?;
        let detect_p999_s = self.crash.as_ref().and_then(|w| w.reached).map(seconds);
        if let Some(watch) = &self.crash {
            progress(format!(
                "crash: member {victim} down at {}/{} members after {:.3} s (99.9 %: {:?} s)",
                watch.count,
                n,
                seconds(self.queue.now() - start),
                detect_p999_s
            ));
        }

        Ok(Report {
            nodes: n,
            join_p999_s,
            detect_p999_s,
            bytes_per_member_per_s: self.steady_bytes as f64
                / f64::from(n)
                / config.duration.as_secs_f64(),
            datagrams_per_member_per_s: self.steady_datagrams as f64
                / f64::from(n)
                / config.duration.as_secs_f64(),
            false_downs: self.count_false_downs(),
            datagrams: self.datagrams,
            datagrams_lost: self.datagrams_lost,
            foca_errors: self.foca_errors,
        })
    }

    fn count_false_downs(&self) -> u64 {
        self.falsely_down.iter().filter(|&&down| down).count() as u64
    }

    /// Processes events up to `deadline`, or until `done` says so after an event.
    fn advance(&mut self, deadline: Micros, done: impl Fn(&Self) -> bool) -> Result<(), SimError> {
        while let Some((_, event)) = self.queue.pop_until(deadline) {
            self.handle(event)?;
            if done(self) {
                break;
            }
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), SimError> {
        let node = match event {
            Event::Start(node) => {
                let n = self.config.nodes;
                let others = (0..n)
                    .filter(|&other| other != node)
                    .map(|other| Member::alive(NodeId::new(other)));
                self.nodes[node as usize]
                    .foca
                    .apply_many(others, false, &mut self.outbox)
                    .map_err(SimError::Bootstrap)?;
                node
            }
            Event::Timer(node, timer) => {
                let target = &mut self.nodes[node as usize];
                if target.crashed {
                    return Ok(());
                }
                let result = target.foca.handle_timer(timer, &mut self.outbox);
                self.count_error(result);
                node
            }
            Event::Datagram { to, data } => {
                let Some(target) = self.nodes.get_mut(to as usize) else {
                    return Ok(());
                };
                if target.crashed {
                    return Ok(());
                }
                let result = target.foca.handle_data(&data, &mut self.outbox);
                self.count_error(result);
                to
            }
        };
        self.flush(node);
        Ok(())
    }

    fn count_error(&mut self, result: Result<(), foca::Error>) {
        if result.is_err() {
            self.foca_errors += 1;
        }
    }

    /// Turns what member `from` just asked for into events.
    fn flush(&mut self, from: u32) {
        let now = self.queue.now();
        let (min, max) = (
            micros(self.config.latency_min),
            micros(self.config.latency_max),
        );
        for (to, data) in self.outbox.sends.drain(..) {
            self.datagrams += 1;
            if (self.count_bytes.0..self.count_bytes.1).contains(&now) {
                self.steady_bytes += data.len() as u64;
                self.steady_datagrams += 1;
            }
            if self.rng.random_bool(self.config.loss) {
                self.datagrams_lost += 1;
                continue;
            }
            let latency = self.rng.random_range(min..=max);
            self.queue
                .push(now + latency, Event::Datagram { to: to.node, data });
        }
        for (timer, after) in self.outbox.timers.drain(..) {
            self.queue
                .push(now + micros(after), Event::Timer(from, timer));
        }
        for notification in self.outbox.notifications.drain(..) {
            match notification {
                OwnedNotification::MemberUp(member) => {
                    if let Some(watch) = self.join.as_mut().filter(|w| w.member == member.node) {
                        watch.observe(from, now);
                    }
                }
                OwnedNotification::MemberDown(member) => {
                    if let Some(watch) = self.crash.as_mut().filter(|w| w.member == member.node) {
                        watch.observe(from, now);
                    } else if now <= self.no_failure_until {
                        self.false_down_notifications += 1;
                        if let Some(flag) = self.falsely_down.get_mut(member.node as usize) {
                            *flag = true;
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
