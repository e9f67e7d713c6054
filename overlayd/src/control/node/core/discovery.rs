//! Where the others see this host: its address and port behind a NAT, learned from members
//! and published in its record before its own address.
//!
//! A member that accepted a connection from this host answers this host's push of its record
//! on it with [`Response::Seen`]: the address the connection's datagrams came from. With one
//! UDP port (the default) that is also where its tunnel's datagrams come from, through the
//! same NAT mapping; with two ports it is the control port's mapping, which says nothing of
//! the tunnels', so observations are then ignored and nothing is published.
//!
//! The rule, against anyone who would make this host publish an address of their choosing:
//!
//! - an observation counts only from a member link whose certificate is current (mutual TLS
//!   proved it; a stranger, a joiner, a revoked or expired member cannot report anything),
//!   and only about that very connection (the observer reports the source it saw; a QUIC
//!   connection's address is validated by its handshake, so an off-path sender cannot
//!   plant one);
//! - each member holds one vote, its latest observation; the address the most members saw
//!   is published, and a tie keeps the one published (so one lying member cannot displace
//!   what two honest ones saw, and cannot move it at all while others agree);
//! - it must be a unicast address with a port; when it is this host's own address nothing
//!   more is published.
//!
//! So an address this host publishes is always one a member saw its datagrams come from.
//! A member's vote is dropped when it leaves the directory or is revoked.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::control::msg::Response;

use super::{Core, LinkId, Now};

impl Core {
    /// The answer to a push on member link `link`: [`Response::Seen`] with the address the
    /// pusher's datagrams came from when it opened the connection (this host saw its
    /// source), else [`Response::Ack`].
    pub(super) fn seen_answer(&self, link: LinkId) -> Response {
        match self.links.get(&link) {
            Some(l) if l.inbound => Response::Seen(l.addr),
            _ => Response::Ack,
        }
    }

    /// The peer of member link `link`, which it opened, now sends from `addr` (QUIC
    /// followed it to a new address: it roamed, or its NAT gave it a new mapping). What
    /// [`Core::seen_answer`] reports from now on; the driver tells before each request.
    pub fn handle_link_moved(&mut self, link: LinkId, addr: SocketAddr) {
        if let Some(l) = self.links.get_mut(&link)
            && l.inbound
        {
            l.addr = addr;
        }
    }

    /// A member on link `link` saw this host's datagrams come from `addr` (the answer to a
    /// push, [`Response::Seen`]). Republishes this host's record when the address it
    /// publishes as seen from outside changes (see the module docs for the rule).
    pub fn handle_seen(&mut self, link: LinkId, addr: SocketAddr, now: Now) {
        if self.settings.control_port != self.settings.listen_port {
            return;
        }
        let Some(node) = self.current_node(link, now) else {
            return;
        };
        let ip = addr.ip();
        if addr.port() == 0 || ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
            return;
        }
        if let std::net::IpAddr::V4(v4) = ip
            && v4.is_broadcast()
        {
            return;
        }
        self.enter(now);
        self.seen.insert(node, addr);
        self.forget_gone_observers();
        let chosen = most_seen(&self.seen, self.reflexive);
        let own = SocketAddr::new(self.advertise, self.settings.listen_port);
        let reflexive = chosen.filter(|a| *a != own);
        if reflexive != self.reflexive {
            tracing::info!(
                endpoint = ?reflexive,
                seen_by = self.seen.values().filter(|a| Some(**a) == chosen).count(),
                "members see this host at another address than its own; publishing it"
            );
            self.reflexive = reflexive;
            self.net.record_version += 1;
            self.publish_own_record(now);
        }
        self.finish(now);
    }

    /// The address this host publishes as seen from outside, if any.
    pub fn reflexive(&self) -> Option<SocketAddr> {
        self.reflexive
    }

    /// Drops the votes of members no longer alive in the directory (left, revoked).
    fn forget_gone_observers(&mut self) {
        let dir = self.dir();
        let alive: std::collections::HashSet<u32> = dir.live_members().map(|m| m.number).collect();
        drop(dir);
        self.seen.retain(|node, _| alive.contains(node));
    }
}

/// The address the most observers saw; a tie keeps `current` when it is among the most
/// seen, else takes the lowest address (a choice every run makes the same way).
fn most_seen(seen: &HashMap<u32, SocketAddr>, current: Option<SocketAddr>) -> Option<SocketAddr> {
    let mut votes: HashMap<SocketAddr, usize> = HashMap::new();
    for addr in seen.values() {
        *votes.entry(*addr).or_default() += 1;
    }
    let top = votes.values().copied().max()?;
    if let Some(current) = current
        && votes.get(&current) == Some(&top)
    {
        return Some(current);
    }
    votes
        .into_iter()
        .filter(|(_, n)| *n == top)
        .map(|(a, _)| a)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_most_seen_address_wins_and_a_tie_keeps_the_current_one() {
        let mut seen = HashMap::new();
        assert_eq!(most_seen(&seen, None), None);
        seen.insert(1, a("198.18.0.12:51820"));
        assert_eq!(most_seen(&seen, None), Some(a("198.18.0.12:51820")));
        // One liar against one honest observer: the published one stays.
        seen.insert(3, a("203.0.113.9:1"));
        let current = Some(a("198.18.0.12:51820"));
        assert_eq!(most_seen(&seen, current), current);
        // Two honest against one liar: the liar never wins.
        seen.insert(4, a("198.18.0.12:51820"));
        assert_eq!(most_seen(&seen, None), current);
        assert_eq!(most_seen(&seen, Some(a("203.0.113.9:1"))), current);
    }
}
