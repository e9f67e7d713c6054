//! Hole punching at a time agreed through a third member (a rendezvous).
//!
//! Two members behind NATs each dial the other as soon as they learn its record; when those
//! first attempts miss (one learned the other's record later, a NAT dropped them), this
//! host asks a third member connected to both to pass a punch proposal on, and both sides
//! then fire at the same moment: a QUIC dial to the other's control address and the
//! tunnel's handshake ([`Action::Punch`]), each to the addresses in the other's signed
//! record.
//!
//! - **Who asks.** This host, for a live member it has no member connection with, when
//!   either side is behind a NAT (its record publishes an address seen from outside, or this
//!   host publishes one), and only with one UDP port. The first ask comes [`FIRST_WAIT`]
//!   after the member is found unconnected (the dial on learning its record gets its
//!   chance), then again after 1, 2, 4, 8 s, then every 30 s while it stays unconnected
//!   (a relay carries the tunnel meanwhile; a punch that works later replaces it).
//! - **Through whom.** A member this host has a current connection with, other than the
//!   two: public members first (a record with one address), then by name; each attempt
//!   takes the next one ([`Request::Rendezvous`]).
//! - **When.** The proposal carries a delay ([`PUNCH_DELAY`]), not a time, so that clocks
//!   need not agree: the asker fires that long after it sent the proposal, the other side
//!   that long after it received it (the transit through the third member apart).
//!
//! The third member passes a proposal on ([`Request::Punch`]) only when the asker's
//! connection is current (mutual TLS proved a certificate that is neither revoked nor
//! expired: an outsider or a revoked member gets nothing sent), the member it names is
//! another live member with a current connection to it, and the asker is within its rate
//! ([`ASK_RATE`]). It forwards member numbers only, never an address: each side punches
//! to what the other's signed record says. The receiving side takes a proposal only on a
//! current member connection, naming a live member other than itself and the forwarder,
//! within the forwarder's rate.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keys::PublicKey;

use super::limits::TokenBucket;
use super::{Action, Core, LinkId, Now};
use crate::control::msg::{Request, Response};

/// How long after a member is found unconnected the first rendezvous is asked for.
pub(super) const FIRST_WAIT: Duration = Duration::from_millis(1000);
/// The delay both sides fire after.
pub(super) const PUNCH_DELAY: Duration = Duration::from_millis(300);
/// The longest delay a proposal may carry.
pub(super) const MAX_DELAY_MS: u16 = 2000;
/// How often the core looks for members to punch to.
const TICK: Duration = Duration::from_millis(250);
/// Rendezvous asks (or punch proposals) taken from one member: per second, at once.
pub(super) const ASK_RATE: (f64, f64) = (2.0, 6.0);
/// The back-off between asks for one member, by attempt; the last repeats.
const BACKOFF_S: [u64; 5] = [1, 2, 4, 8, 30];
/// Rate buckets kept at most (one per member that asked).
const MAX_BUCKETS: usize = 4096;

/// This host's rendezvous: the asks it makes, the punches it will fire, the rates of
/// those who ask it.
#[derive(Default)]
pub(super) struct Rendezvous {
    /// When to look for members to punch to next.
    next_tick: Option<Instant>,
    /// Per unconnected member (by number): asks made, and when the next is due.
    tries: HashMap<u32, (u32, Instant)>,
    /// Punches to fire: when, and to which member (by number).
    fire: Vec<(Instant, u32)>,
    /// Per member (by number) that asked this host to forward, or forwarded to it.
    rates: HashMap<u32, TokenBucket>,
    /// Proposals this host forwarded, received, and refused (counters for tests and logs).
    pub(super) forwarded: u64,
    pub(super) received: u64,
    pub(super) refused: u64,
}

/// A member as the rendezvous needs it.
struct Target {
    number: u32,
    control: SocketAddr,
    key: PublicKey,
    behind_nat: bool,
}

impl Core {
    /// When the rendezvous needs [`Core::handle_timeout`] next.
    pub(super) fn rendezvous_timeout(&self) -> Option<Instant> {
        let fire = self.rendezvous.fire.iter().map(|(at, _)| *at).min();
        // With two ports nothing is punched (see `discovery`): no ticks.
        let tick = self.rendezvous.next_tick.filter(|_| self.one_port());
        match (tick, fire) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The rendezvous's share of [`Core::handle_timeout`]: punches due are fired, asks due
    /// are made.
    pub(super) fn rendezvous_tick(&mut self, now: Now) {
        let due: Vec<u32> = {
            let fire = &mut self.rendezvous.fire;
            let due = fire
                .iter()
                .filter(|(at, _)| *at <= now.instant)
                .map(|(_, n)| *n)
                .collect();
            fire.retain(|(at, _)| *at > now.instant);
            due
        };
        for number in due {
            self.fire_punch(number, now);
        }
        match self.rendezvous.next_tick {
            Some(at) if at > now.instant => return,
            _ => self.rendezvous.next_tick = Some(now.instant + TICK),
        }
        if !self.one_port() {
            self.rendezvous.tries.clear();
            return;
        }
        let targets = self.targets();
        let connected = self.connected_members(now);
        let own_nat = self.reflexive.is_some();
        self.rendezvous
            .tries
            .retain(|n, _| targets.iter().any(|t| t.number == *n));
        for t in targets {
            if connected.contains(&t.number) || !(t.behind_nat || own_nat) {
                self.rendezvous.tries.remove(&t.number);
                continue;
            }
            let (asked, next) = *self
                .rendezvous
                .tries
                .entry(t.number)
                .or_insert((0, now.instant + FIRST_WAIT));
            if next > now.instant {
                continue;
            }
            let step = BACKOFF_S[(asked as usize).min(BACKOFF_S.len() - 1)];
            let next = now.instant + Duration::from_secs(step);
            self.rendezvous.tries.insert(t.number, (asked + 1, next));
            let thirds = self.thirds(t.number, now);
            if thirds.is_empty() {
                continue;
            }
            let link = thirds[asked as usize % thirds.len()];
            tracing::debug!(member = t.number, "asking a member for a rendezvous");
            self.queue(Action::Ask {
                link,
                request: Request::Rendezvous {
                    with: t.number,
                    delay_ms: PUNCH_DELAY.as_millis() as u16,
                },
            });
            self.rendezvous
                .fire
                .push((now.instant + PUNCH_DELAY, t.number));
        }
    }

    /// A member on `link` asks this host to pass a punch proposal on to member `with`.
    pub(super) fn handle_rendezvous(
        &mut self,
        link: LinkId,
        with: u32,
        delay_ms: u16,
        now: Now,
    ) -> Response {
        let Some(asker) = self.current_node(link, now) else {
            return self.refuse_rendezvous("the asker is not a current member");
        };
        if !self.take_rate(asker, now.instant) {
            return self.refuse_rendezvous("too many rendezvous asks; wait");
        }
        if delay_ms > MAX_DELAY_MS {
            return self.refuse_rendezvous("the delay is too long");
        }
        if with == asker || with == self.me.number || !self.is_live_member(with) {
            return self.refuse_rendezvous("no such other member");
        }
        let Some(to) = self.current_link_of(with, now) else {
            return self.refuse_rendezvous("not connected to that member");
        };
        self.rendezvous.forwarded += 1;
        self.queue(Action::Ask {
            link: to,
            request: Request::Punch {
                from: asker,
                delay_ms,
            },
        });
        Response::Ack
    }

    /// A member on `link` passes on a proposal from member `from` to punch in `delay_ms`.
    pub(super) fn handle_punch(
        &mut self,
        link: LinkId,
        from: u32,
        delay_ms: u16,
        now: Now,
    ) -> Response {
        let Some(forwarder) = self.current_node(link, now) else {
            return self.refuse_rendezvous("the forwarder is not a current member");
        };
        // Limited per forwarder and per proposer: a member asking through every third
        // member at once makes this host dial no faster than one asking through one.
        if !self.take_rate(forwarder, now.instant) || !self.take_rate(from, now.instant) {
            return self.refuse_rendezvous("too many punch proposals; wait");
        }
        if delay_ms > MAX_DELAY_MS {
            return self.refuse_rendezvous("the delay is too long");
        }
        if from == forwarder || from == self.me.number || !self.is_live_member(from) {
            return self.refuse_rendezvous("no such other member");
        }
        self.rendezvous.received += 1;
        if !self.one_port() || self.connected_to(from, now) {
            return Response::Ack;
        }
        let at = now.instant + Duration::from_millis(delay_ms.into());
        self.rendezvous.fire.push((at, from));
        // Asked for by the other side: this host does not ask for one of its own now.
        let wait = now.instant + Duration::from_secs(BACKOFF_S[0]);
        let entry = self.rendezvous.tries.entry(from).or_insert((0, wait));
        entry.1 = entry.1.max(wait);
        Response::Ack
    }

    /// Proposals this host forwarded, received (and took), and refused.
    pub fn rendezvous_counts(&self) -> (u64, u64, u64) {
        let r = &self.rendezvous;
        (r.forwarded, r.received, r.refused)
    }

    fn refuse_rendezvous(&mut self, why: &str) -> Response {
        tracing::debug!(%why, "refused a rendezvous");
        self.rendezvous.refused += 1;
        Response::Refused(why.to_owned())
    }

    fn one_port(&self) -> bool {
        self.settings.control_port == self.settings.listen_port
    }

    /// Fires a punch to member `number`, at the addresses of its record, unless it is
    /// connected by now.
    fn fire_punch(&mut self, number: u32, now: Now) {
        if self.connected_to(number, now) {
            return;
        }
        let Some(t) = self.targets().into_iter().find(|t| t.number == number) else {
            return;
        };
        tracing::debug!(member = number, "punching at the agreed time");
        self.queue(Action::Punch {
            addr: t.control,
            key: t.key,
        });
    }

    /// One token from member `number`'s bucket.
    fn take_rate(&mut self, number: u32, now: Instant) -> bool {
        let rates = &mut self.rendezvous.rates;
        if rates.len() >= MAX_BUCKETS && !rates.contains_key(&number) {
            rates.retain(|_, b| !b.full(now));
            if rates.len() >= MAX_BUCKETS {
                return false;
            }
        }
        rates
            .entry(number)
            .or_insert_with(|| TokenBucket::new(ASK_RATE, now))
            .take(now)
    }

    fn is_live_member(&self, number: u32) -> bool {
        self.dir().live_members().any(|m| m.number == number)
    }

    /// Whether a current member connection with member `number` is served.
    fn connected_to(&self, number: u32, now: Now) -> bool {
        self.current_link_of(number, now).is_some()
    }

    /// The members with a current connection (one look at the directory for all).
    fn connected_members(&self, now: Now) -> HashSet<u32> {
        let dir = self.dir();
        self.links
            .values()
            .filter(|l| super::lapsed(&dir, &l.peer, now.unix).is_none())
            .map(|l| l.peer.number)
            .collect()
    }

    /// The newest current connection with member `number`.
    fn current_link_of(&self, number: u32, now: Now) -> Option<LinkId> {
        self.links
            .iter()
            .filter(|(id, l)| l.peer.number == number && self.is_current(**id, now))
            .map(|(id, _)| *id)
            .max()
    }

    /// The live members other than this host that can be punched to.
    fn targets(&self) -> Vec<Target> {
        let dir = self.dir();
        dir.live_members()
            .filter(|m| m.number != self.me.number && m.control_port != 0)
            .filter_map(|m| {
                let first = m.endpoints.first()?;
                Some(Target {
                    number: m.number,
                    control: SocketAddr::new(first.ip(), m.control_port),
                    key: *m.wireguard_key,
                    behind_nat: m.endpoints.len() > 1,
                })
            })
            .collect()
    }

    /// Connections to ask a rendezvous with member `with` through: to current members
    /// other than it, public ones first, then by name.
    fn thirds(&self, with: u32, now: Now) -> Vec<LinkId> {
        let dir = self.dir();
        let public: HashMap<u32, bool> = dir
            .live_members()
            .map(|m| (m.number, m.endpoints.len() == 1))
            .collect();
        let mut by_member: HashMap<u32, (bool, String, LinkId)> = HashMap::new();
        for (id, l) in &self.links {
            let n = l.peer.number;
            if n == with || n == self.me.number || super::lapsed(&dir, &l.peer, now.unix).is_some()
            {
                continue;
            }
            let Some(&public) = public.get(&n) else {
                continue;
            };
            let entry = (!public, l.peer.node.to_string(), *id);
            let slot = by_member.entry(n).or_insert(entry.clone());
            if entry.2 > slot.2 {
                *slot = entry;
            }
        }
        let mut chosen: Vec<(bool, String, LinkId)> = by_member.into_values().collect();
        chosen.sort();
        chosen.into_iter().map(|(_, _, id)| id).collect()
    }
}
