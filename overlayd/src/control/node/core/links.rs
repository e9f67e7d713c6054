//! The registry of member connections, as the core knows them: each is a [`LinkId`] with
//! the control address it serves and the certificate its peer proved, never the QUIC
//! connection itself (the driver keeps that, by the same id). Also the connections being
//! opened, and the directory lookups that map members to control addresses.
//!
//! A certificate is checked at every turn, not only in the handshake: a connection is
//! registered only while its peer's certificate is current ([`Core::handle_connected`]),
//! the connections whose certificate a revocation or expiry has made void are closed as
//! soon as one applies ([`Core::close_lapsed`]), and a datagram or request is taken only
//! from a link still current ([`Core::is_current`]).

use std::net::SocketAddr;

use keys::{CertError, Name, NodeCertificate};
use protocol::records::Directory;

use super::{Action, Core, Now};

/// Connections a member may have open to this host at once (those it opened): one, and one
/// more while a restarted member's old connection has not timed out. Over it the oldest is
/// closed, so a restart never waits and a flood only churns.
const INBOUND_PER_MEMBER: usize = 2;

/// A member connection being served, as the core knows it. Never reused: a datagram or
/// request queued from a closed link finds no link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(u64);

/// A member connection being served.
pub(super) struct Link {
    /// The address it is with (the peer's control address; for a connection the peer
    /// opened, where its datagrams come from).
    pub(super) addr: SocketAddr,
    /// The certificate its peer proved in the handshake, or a renewal of it that the
    /// directory has since received ([`Core::follow_renewals`]).
    pub(super) peer: NodeCertificate,
    /// Whether the peer opened it.
    pub(super) inbound: bool,
}

/// Why the core closes a member connection ([`Action::Close`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Its peer's certificate was revoked or has expired: the sentence a new handshake
    /// would be refused with.
    Lapsed(String),
    /// The member opened a newer one, over its share of connections to this host.
    Replaced,
    /// This host left the network.
    Left,
}

impl Core {
    /// Registers a member connection with `addr` that the driver is about to serve:
    /// `inbound` when the peer opened it, `peer` the certificate its handshake proved
    /// (`None`: none could be read). Call it when a connection (opened by either side) is
    /// up. Returns the link to serve it as, with the certificate, or the reason to close it
    /// with (its peer's certificate has lapsed since the handshake).
    pub fn handle_connected(
        &mut self,
        addr: SocketAddr,
        peer: Option<NodeCertificate>,
        inbound: bool,
        now: Now,
    ) -> Result<(LinkId, NodeCertificate), String> {
        self.enter(now);
        self.connecting.remove(&addr);
        let lapse = match &peer {
            Some(peer) => lapsed(&self.dir(), peer, now.unix),
            None => Some("the peer's certificate is no longer valid".to_owned()),
        };
        let (peer, link) = match (peer, lapse) {
            (Some(peer), None) => {
                if inbound {
                    self.close_oldest_inbound(peer.number, now);
                }
                self.next_link += 1;
                let id = LinkId(self.next_link);
                let link = Link {
                    addr,
                    peer: peer.clone(),
                    inbound,
                };
                self.links.insert(id, link);
                (peer, id)
            }
            (_, reason) => {
                let reason = reason.unwrap_or_default();
                tracing::info!(endpoint = %addr, reason = %reason, "closed a member connection");
                self.finish(now);
                return Err(reason);
            }
        };
        let fresh = !self.conns.contains_key(&addr);
        self.conns.insert(addr, link);
        if fresh {
            // Tell it about us at once: our record, and a SWIM announce.
            self.queue(Action::Push {
                links: vec![link],
                bundle: self.own_bundle(),
                wait: false,
            });
            // (By its certificate when it came from an address its record does not give:
            // a member behind a NAT that picks a port per destination.)
            if let Some(node) = self
                .node_of_addr(addr)
                .or_else(|| inbound.then_some(peer.serial as u32))
            {
                self.announce(node);
            }
            // The first member reached after a start: swap directories with it at once, so
            // what changed while this host was away (records, revocations, the policy) is
            // here now rather than at the next periodic sync.
            if !self.caught_up {
                self.caught_up = true;
                let bundle = self.bundle();
                self.queue(Action::Sync { link, bundle });
            } else if self.admin.is_some() && self.peer_is_admin(link) {
                // Two admins swap token records as soon as they connect
                // (`admins::tokens`): one that was down learns at once of the tokens made
                // and used meanwhile.
                let bundle = self.bundle();
                self.queue(Action::Sync { link, bundle });
            }
        }
        self.finish(now);
        Ok((link, peer))
    }

    /// A connection the core asked for ([`Action::Connect`]) could not be opened.
    pub fn handle_connect_failed(&mut self, addr: SocketAddr) {
        self.connecting.remove(&addr);
    }

    /// The connection of member link `link`, with `addr`, is closed (by either side, or
    /// timed out).
    pub fn handle_closed(&mut self, addr: SocketAddr, link: LinkId) {
        if self.conns.get(&addr) == Some(&link) {
            self.conns.remove(&addr);
        }
        self.links.remove(&link);
    }

    /// Asks for a connection to `addr`, unless one is open or opening.
    pub(super) fn connect(&mut self, addr: SocketAddr) {
        if self.conns.contains_key(&addr) || !self.connecting.insert(addr) {
            return;
        }
        self.queue(Action::Connect(addr));
    }

    /// Makes room for one more connection from the member whose number is `number`
    /// (whatever certificate it showed): closes its oldest ones beyond
    /// [`INBOUND_PER_MEMBER`] - 1.
    fn close_oldest_inbound(&mut self, number: u32, now: Now) {
        let mut theirs: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.peer.number == number && l.inbound)
            .map(|(id, _)| *id)
            .collect();
        theirs.sort();
        let excess = (theirs.len() + 1).saturating_sub(INBOUND_PER_MEMBER);
        for id in theirs.into_iter().take(excess) {
            let Some(link) = self.links.remove(&id) else {
                continue;
            };
            self.throttle.warn(
                now.instant,
                "closed a member's oldest connection",
                &format_args!(
                    "{} opened more than {INBOUND_PER_MEMBER} connections",
                    link.peer.node
                ),
            );
            self.forget(id, &link, CloseReason::Replaced);
        }
    }

    /// Whether the member link `id` is still served and its peer's certificate neither
    /// revoked nor expired at `now`: a datagram or request that came on it is taken only
    /// then.
    pub fn is_current(&self, id: LinkId, now: Now) -> bool {
        self.current_node(id, now).is_some()
    }

    /// The SWIM node number (certificate number) of the member on link `id`, if the link
    /// is current ([`Core::is_current`]).
    pub(super) fn current_node(&self, id: LinkId, now: Now) -> Option<u32> {
        let link = self.links.get(&id)?;
        lapsed(&self.dir(), &link.peer, now.unix)
            .is_none()
            .then_some(link.peer.number)
    }

    /// Closes every member connection whose peer's certificate is revoked or has expired,
    /// with the reason (the same sentence a new handshake would be refused with). Called
    /// whenever a revocation may have been applied, and once a second for expiry.
    pub(super) fn close_lapsed(&mut self, now: Now) {
        let gone: Vec<(LinkId, String)> = {
            let dir = self.dir();
            self.links
                .iter()
                .filter_map(|(id, link)| lapsed(&dir, &link.peer, now.unix).map(|why| (*id, why)))
                .collect()
        };
        for (id, reason) in gone {
            let Some(link) = self.links.remove(&id) else {
                continue;
            };
            tracing::info!(
                peer = %link.peer.node,
                endpoint = %link.addr,
                reason = %reason,
                "closed a member connection"
            );
            self.forget(id, &link, CloseReason::Lapsed(reason));
        }
    }

    /// Closes the connections this host has to each member (those that carry its
    /// datagrams and pushes): this host left.
    pub(super) fn close_all(&mut self) {
        let conns: Vec<(SocketAddr, LinkId)> = self.conns.drain().collect();
        for (_, id) in conns {
            self.links.remove(&id);
            self.queue(Action::Close {
                link: id,
                reason: CloseReason::Left,
            });
        }
    }

    /// Asks the driver to close the removed link `id`; it no longer carries datagrams to
    /// its address.
    fn forget(&mut self, id: LinkId, link: &Link, reason: CloseReason) {
        if self.conns.get(&link.addr) == Some(&id) {
            self.conns.remove(&link.addr);
        }
        self.queue(Action::Close { link: id, reason });
    }

    /// Control addresses of the other members with a record.
    pub(super) fn control_addrs(&self) -> Vec<SocketAddr> {
        let dir = self.dir();
        dir.live_members()
            .filter(|m| *m.name != self.me.node && m.control_port != 0)
            .filter_map(|m| {
                m.endpoints
                    .first()
                    .map(|e| SocketAddr::new(e.ip(), m.control_port))
            })
            .collect()
    }

    pub(super) fn addr_of_node(&self, node: u32) -> Option<SocketAddr> {
        let dir = self.dir();
        dir.all_members()
            .find(|(m, _)| m.number == node && m.control_port != 0)
            .and_then(|(m, _)| {
                m.endpoints
                    .first()
                    .map(|e| SocketAddr::new(e.ip(), m.control_port))
            })
    }

    /// The newest connection whose peer proved the certificate of `node` (its serial).
    pub(super) fn link_of_node(&self, node: u32) -> Option<LinkId> {
        self.links
            .iter()
            .filter(|(_, l)| l.peer.serial as u32 == node)
            .map(|(id, _)| *id)
            .max()
    }

    pub(super) fn node_of_addr(&self, addr: SocketAddr) -> Option<u32> {
        let dir = self.dir();
        dir.all_members()
            .find(|(m, _)| {
                m.control_port == addr.port() && m.endpoints.iter().any(|e| e.ip() == addr.ip())
            })
            .map(|(m, _)| m.number)
    }
}

/// The first endpoint of a live member of `dir` other than `me`: where this host's own
/// underlay address is looked for (the source address towards it).
pub fn first_member_endpoint(dir: &Directory, me: &Name) -> Option<SocketAddr> {
    dir.live_members()
        .filter(|m| m.name != me)
        .find_map(|m| m.endpoints.first().copied())
}

/// Why a member whose certificate is `peer` may no longer be served at `now` (unix s):
/// revoked by the network's CA, or expired; `None` while it is current.
pub fn lapsed(dir: &Directory, peer: &NodeCertificate, now: u64) -> Option<String> {
    if dir.is_certificate_revoked(peer) {
        Some(revoked_reason(peer))
    } else if let Err(refusal @ protocol::records::ca::Refusal::Retired { .. }) =
        dir.trust().key(&peer.ca_fingerprint, now)
    {
        Some(format!("the certificate of {}: {refusal}", peer.node))
    } else if now > peer.not_after {
        Some(
            CertError::Expired {
                node: peer.node.clone(),
                not_after: peer.not_after,
            }
            .to_string(),
        )
    } else {
        None
    }
}

/// The sentence a revoked member is refused with, in a handshake or when its connection is
/// closed.
pub fn revoked_reason(cert: &NodeCertificate) -> String {
    format!(
        "the certificate of {} (serial {}) is revoked by the network's CA",
        cert.node, cert.serial
    )
}
