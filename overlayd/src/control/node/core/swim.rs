//! Running SWIM: foca's timers and the periodic work on one clock ([`Core::poll_timeout`],
//! [`Core::handle_timeout`]), gossip datagrams screened and handed to foca
//! ([`Core::handle_datagram`]), what foca asks for (datagrams, timers, notifications of
//! members up, down, renamed, and of this host's own rejoin), this host's own record, and
//! the anti-entropy and rejoin rounds.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use foca::OwnedNotification;
use protocol::membership::{self, NodeId};
use protocol::records::MemberState;
use rand::RngExt;

use super::gossip::{TAG_MEMBER, tagged};
use super::{Action, Core, LinkId, Now, Settings, first_member_endpoint};
use crate::control::msg::Bundle;

/// How often the core looks after what changes on its own: certificates that expire, this
/// host's underlay address, what the API shows.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// When the periodic work is due next.
pub(super) struct Periodic {
    pub(super) sync: Instant,
    rejoin: Instant,
    housekeeping: Instant,
}

impl Periodic {
    /// The periodic work of a member started at `now`: rejoins and housekeeping at once,
    /// the first full sync after about an interval ([`Core::next_sync`] spreads it).
    pub(super) fn new(now: Now, settings: &Settings) -> Periodic {
        Periodic {
            sync: now.instant + settings.sync_interval,
            rejoin: now.instant,
            housekeeping: now.instant,
        }
    }
}

impl Core {
    /// When [`Core::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Instant {
        let periodic = &self.periodic;
        let next = periodic
            .sync
            .min(periodic.rejoin)
            .min(periodic.housekeeping);
        let next = self
            .rendezvous_timeout()
            .map_or(next, |rendezvous| rendezvous.min(next));
        self.timers.next().map_or(next, |timer| timer.min(next))
    }

    /// Runs what is due at `now`: foca's timers, the full sync (anti-entropy with one
    /// random member), rejoins, housekeeping. Each periodic task runs once per call; one
    /// that fell behind is due again at once.
    pub fn handle_timeout(&mut self, now: Now) {
        self.enter(now);
        for timer in self.timers.due(now.instant) {
            if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                tracing::debug!(error = %e, "foca timer");
            }
        }
        if self.periodic.sync <= now.instant {
            self.periodic.sync = self.next_sync(now.instant);
            self.full_sync();
        }
        if self.periodic.rejoin <= now.instant {
            self.periodic.rejoin += self.settings.rejoin_interval;
            self.rejoin();
        }
        if self.periodic.housekeeping <= now.instant {
            self.periodic.housekeeping += HOUSEKEEPING;
            self.housekeeping(now);
        }
        self.rendezvous_tick(now);
        self.finish(now);
    }

    /// When the next full sync after `from` is due: `sync_interval` times a random factor
    /// of 0.5 to 1.5. Members started together (a fleet rebooted, `testnet up`) would
    /// otherwise ship their whole directories in the same second, every interval, for as
    /// long as they run (memberlist staggers its push-pull the same way).
    pub(super) fn next_sync(&mut self, from: Instant) -> Instant {
        from + self
            .settings
            .sync_interval
            .mul_f64(self.rng.random_range(0.5..1.5))
    }

    /// Takes new settings from a reload at `now`: foca's new timings (suspicion, gossip;
    /// its probe period and timeout cannot change while it runs, so a reload keeps them),
    /// the full sync and rejoin intervals (the next round comes no later than one new
    /// interval from now), the certificate lifetime and the key rotation period. The ports, the address to follow
    /// and the probe timings stay as they are. On an error nothing changes.
    pub fn set_settings(&mut self, settings: Settings, now: Now) -> Result<(), String> {
        let mut membership = settings.membership.clone();
        membership.probe_period = self.settings.membership.probe_period;
        membership.probe_rtt = self.settings.membership.probe_rtt;
        let foca = membership.to_foca().map_err(|e| format!("[control] {e}"))?;
        self.foca.set_config(foca).map_err(|e| {
            format!(
                "foca (SWIM) refused the new [control] timings ({e}); restart overlayd to use them"
            )
        })?;
        self.settings.membership = membership;
        self.settings.certificate_lifetime_s = settings.certificate_lifetime_s;
        self.settings.key_rotation_s = settings.key_rotation_s;
        if self.settings.sync_interval != settings.sync_interval {
            self.settings.sync_interval = settings.sync_interval;
            self.periodic.sync = self.periodic.sync.min(now.instant + settings.sync_interval);
        }
        if self.settings.rejoin_interval != settings.rejoin_interval {
            self.settings.rejoin_interval = settings.rejoin_interval;
            self.periodic.rejoin = self
                .periodic
                .rejoin
                .min(now.instant + settings.rejoin_interval);
        }
        Ok(())
    }

    /// A gossip datagram came on member link `link` (dropped if the link has lapsed since:
    /// it was queued before).
    pub fn handle_datagram(&mut self, link: LinkId, bytes: &[u8], now: Now) {
        let Some(sender) = self.current_node(link, now) else {
            return;
        };
        self.enter(now);
        self.receive(sender, bytes, now);
        self.finish(now);
    }

    /// This host's underlay address is `ip` (the answer to [`Action::DetectAddress`]): if
    /// it moved, a new record names the new address, so that members and restarts reach it.
    pub fn handle_address(&mut self, ip: IpAddr, now: Now) {
        if ip == self.advertise {
            return;
        }
        // While the underlay address is gone (a roam in progress) the kernel may pick the
        // TUN's address as the source: an overlay address is never where the host is
        // reached, so it is not announced. Nor is an address no other host can reach
        // (loopback, link-local, ...): the address is detected towards a member's
        // published endpoint, which that member chooses.
        if !protocol::records::reachable_unicast(ip) {
            return;
        }
        let net = &self.net;
        if std::iter::once(&net.cidr)
            .chain(&net.ranges)
            .any(|range| range.contains(&ip))
        {
            return;
        }
        self.enter(now);
        tracing::info!(old = %self.advertise, new = %ip, "this host's underlay address changed; announcing it");
        self.advertise = ip;
        // What members saw was the old address's path (its NAT mapping, if any): forget the
        // votes and the address published from them, or the record would go on naming the
        // old address first. The next pushes' answers vote again (`discovery`).
        self.seen.clear();
        self.reflexive = None;
        self.net.record_version += 1;
        self.publish_own_record(now);
        self.finish(now);
    }

    fn receive(&mut self, sender: u32, bytes: &[u8], now: Now) {
        // SWIM messages name their sender; it must be the member the connection's
        // certificate proved, or one member could speak (suspect, refute, leave) in
        // another's name. What they say about others must name generations those members
        // signed, or one member could declare another down for good.
        let screened = {
            let dir = self.dir();
            membership::screen(bytes, sender, |node| {
                dir.all_members()
                    .find(|(m, _)| m.number == node)
                    .map(|(m, _)| m.version)
            })
        };
        let screened = match screened {
            Ok(screened) => screened,
            Err(e @ membership::ScreenError::ForeignSender { .. }) => {
                self.throttle.warn(
                    now.instant,
                    "dropped gossip sent in another member's name",
                    &e,
                );
                return;
            }
            Err(e) => {
                self.throttle
                    .warn(now.instant, "dropped a gossip datagram", &e);
                return;
            }
        };
        if !screened.refused.is_empty() {
            self.refused_updates += screened.refused.len() as u64;
            self.throttle.warn(
                now.instant,
                "ignored a SWIM update for a generation its member never signed",
                &format_args!(
                    "node {sender} sent {:?} ({} so far)",
                    screened.refused, self.refused_updates
                ),
            );
        }
        if let Err(e) = self.foca.handle_data(&screened.datagram, &mut self.rt) {
            self.throttle
                .warn(now.instant, "dropped a gossip datagram", &e);
        }
    }

    /// Sends what foca queued and schedules its timers; acts on its notifications.
    pub(super) fn drain(&mut self, now: Now) {
        while let Some((dst, bytes)) = self.rt.to_send() {
            // Its record's address; or a connection it opened from another (behind a NAT
            // that picks a port per destination, its record's address is the one another
            // member saw, and only it can open a path to this host).
            let addr = self.addr_of_node(dst.node);
            match addr
                .and_then(|a| self.conns.get(&a).copied())
                .or_else(|| self.link_of_node(dst.node))
            {
                Some(link) => self.queue(Action::Transmit { link, bytes }),
                None => match addr {
                    Some(addr) => self.connect(addr),
                    None => tracing::debug!(node = dst.node, "no address for a gossip target"),
                },
            }
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.timers.add(now.instant + after, timer);
        }
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(id) => {
                    self.liveness.insert(id.node, (id, true));
                    self.dirty = true;
                }
                OwnedNotification::MemberDown(id) => {
                    let current = self.liveness.get(&id.node).map(|(c, _)| *c);
                    if current.is_none_or(|c| c == id || !c.is_newer_than(&id)) {
                        tracing::info!(node = id.node, "member declared down");
                        self.liveness.insert(id.node, (id, false));
                        self.dirty = true;
                    }
                }
                OwnedNotification::Rename(_, new) => {
                    let up = self.liveness.get(&new.node).is_none_or(|(_, up)| *up);
                    self.liveness.insert(new.node, (new, up));
                }
                OwnedNotification::Rejoin(id) => {
                    tracing::info!(
                        generation = id.generation,
                        "declared down by the others; rejoined"
                    );
                    // The others take the new generation from third parties only once a
                    // record of ours allows it: sign one at once and spread it.
                    self.net.generation = id.generation;
                    self.net.record_version = self.net.record_version.max(id.generation - 1) + 1;
                    self.publish_own_record(now);
                }
                OwnedNotification::Defunct => {
                    tracing::warn!(
                        "declared down by the others and cannot renew; restart overlayd"
                    );
                }
                _ => {}
            }
        }
    }

    /// Signs this host's record at the current `record_version` (saved first), applies it
    /// and spreads it: piggy-backed on SWIM, and pushed to every connected member.
    pub(super) fn publish_own_record(&mut self, now: Now) {
        self.queue(Action::SaveNetwork(self.net.clone()));
        match self.sign_own_record(MemberState::Alive, now) {
            Ok(bundle) => self.push_connected(bundle, false),
            Err(e) => {
                tracing::warn!(error = %e, "cannot publish this host's record");
                return;
            }
        }
        self.dirty = true;
    }

    /// Signs this host's record in `state` at the current `record_version`, applies it and
    /// gossips it; returns it in a bundle, to push.
    pub(super) fn sign_own_record(
        &mut self,
        state: MemberState,
        now: Now,
    ) -> Result<Bundle, super::StartError> {
        let record = self.own_record(state)?;
        let _ = self.dir().apply_member(&record, now.unix);
        let bytes = record.to_bytes();
        let _ = self.foca.add_broadcast(&tagged(TAG_MEMBER, &bytes));
        Ok(Bundle {
            members: vec![bytes],
            revocations: Vec::new(),
            policy: None,
            names: Vec::new(),
            // A record under a new CA is taken only by hosts that know the transition.
            ca_transition: self.transition_bytes(),
        })
    }

    /// Pushes `bundle` to every connected member (see [`Action::Push`] for `wait`).
    pub(super) fn push_connected(&mut self, bundle: Bundle, wait: bool) {
        let links: Vec<LinkId> = self.conns.values().copied().collect();
        if !links.is_empty() {
            self.queue(Action::Push {
                links,
                bundle,
                wait,
            });
        }
    }

    pub(super) fn announce(&mut self, node: u32) {
        let _ = self.foca.announce(
            NodeId {
                node,
                generation: 0,
            },
            &mut self.rt,
        );
    }

    /// Anti-entropy: swap directories with one random connected (or known) member.
    fn full_sync(&mut self) {
        let addrs = self.control_addrs();
        if addrs.is_empty() {
            return;
        }
        let pick = addrs[self.rng.random_range(0..addrs.len())];
        match self.conns.get(&pick) {
            Some(&link) => {
                let bundle = self.bundle();
                self.queue(Action::Sync { link, bundle });
            }
            None => self.connect(pick),
        }
    }

    /// Heals partitions and finds restarted members: announce to one member that is down
    /// or that SWIM does not know, and reconnect to it.
    fn rejoin(&mut self) {
        let candidates: Vec<(u32, SocketAddr)> = {
            let dir = self.dir();
            dir.live_members()
                .filter(|m| *m.name != self.me.node && m.control_port != 0)
                .filter(|m| self.liveness.get(&(m.number)).is_none_or(|(_, up)| !*up))
                .filter_map(|m| {
                    m.endpoints
                        .first()
                        .map(|e| (m.number, SocketAddr::new(e.ip(), m.control_port)))
                })
                .collect()
        };
        if candidates.is_empty() {
            return;
        }
        let (node, addr) = candidates[self.rng.random_range(0..candidates.len())];
        if self.conns.contains_key(&addr) {
            self.announce(node);
        } else {
            self.connect(addr);
        }
    }

    fn housekeeping(&mut self, now: Now) {
        if self.settings.follow_address {
            let towards = first_member_endpoint(&self.dir(), &self.me.node);
            if let Some(towards) = towards {
                self.queue(Action::DetectAddress { towards });
            }
        }
        self.ca_tick(now);
        let expired = self.dir().expire(now.unix);
        if !expired.is_empty() {
            tracing::info!(members = ?expired, "certificates expired; their tunnels are closed");
            self.dirty = true;
        }
        // A certificate expires on its own clock, record or not: its connections go (unless
        // their member renewed it).
        self.follow_renewals();
        self.close_lapsed(now);
        self.renewal_tick(now);
        self.rotation_tick(now);
        self.deliver_pending(now);
        let view = self.view();
        self.queue(Action::View(view));
    }
}
