//! The member's QUIC side: opening connections, serving one connection (datagrams to foca,
//! streams to requests), pushing records, the periodic full sync (anti-entropy) and rejoin,
//! and the directory lookups that map members to control addresses. These tasks only move
//! bytes and hand [`Event`]s to the member task. Accepting connections is in `accept`.
//!
//! # Member connections
//!
//! Every member connection being served is registered with the member task (a
//! [`LinkId`]) with the certificate its peer proved. When a revocation or an expiry is
//! applied the member task closes the connections of that certificate at once
//! (`Member::close_lapsed`), and it drops any datagram or request still queued from them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use keys::{CertError, NodeCertificate};
use protocol::membership::NodeId;
use protocol::records::Directory;
use tokio::sync::{mpsc, oneshot};

use super::inbound::{
    FairQueue, GOSSIP_RATE, LargeFrames, QUEUED_PER_MEMBER, TokenBucket, prefilter,
};
use super::{Event, Member, Throttle};
use crate::control::msg::{self, Bundle, Request, Response};
use crate::control::now_unix;
use crate::control::tls::{self, Remote};

/// How long a push or sync may take before it is given up.
pub(super) const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC keepalive and idle timeout of control connections.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(2);
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(8);
/// The largest request a joining host (no certificate yet) may send: a join is ~200 bytes.
const JOIN_MAX_FRAME: usize = 16 << 10;
/// Connections a member may have open to this host at once (those it opened): one, and one
/// more while a restarted member's old connection has not timed out. Over it the oldest is
/// closed, so a restart never waits and a flood only churns.
const INBOUND_PER_MEMBER: usize = 2;
/// The QUIC close code of a connection closed for a newer one of the same member.
const CLOSE_REPLACED: u32 = 0x11;

/// What every served connection shares (see `inbound`): the per-member gossip queues, the
/// per-member slot for a large frame, and the directory that bundles are checked against
/// off the member task.
#[derive(Clone)]
pub(super) struct Inbound {
    pub(super) gossip: FairQueue<Gossip>,
    large: LargeFrames,
    dir: Arc<Mutex<Directory>>,
    /// Refusals found off the member task, rate-limited together.
    log: Arc<Mutex<Throttle>>,
}

impl Inbound {
    pub(super) fn new(dir: Arc<Mutex<Directory>>) -> Inbound {
        Inbound {
            gossip: FairQueue::new(QUEUED_PER_MEMBER),
            large: LargeFrames::default(),
            dir,
            log: Arc::default(),
        }
    }
}

/// A member connection being served, as the member task knows it (see the module docs).
/// Never reused: a datagram or request queued from a closed link finds no link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct LinkId(u64);

/// A member connection being served, and the certificate its peer proved.
pub(super) struct Link {
    conn: quinn::Connection,
    addr: SocketAddr,
    peer: NodeCertificate,
}

/// Who is on the other end of a connection being served.
pub(super) enum Peer {
    /// A member, registered as this link, with the certificate it proved.
    Member(LinkId, Box<NodeCertificate>),
    /// A host that came to join; it has proven nothing yet.
    Joiner,
}

/// A gossip datagram, and the member link it came on.
pub(super) struct Gossip {
    pub(super) link: LinkId,
    /// The SWIM node number (certificate serial) the link's certificate proved.
    pub(super) node: u32,
    pub(super) bytes: Bytes,
}

impl Member {
    /// Control addresses of the other members with a record.
    pub(super) fn control_addrs(&self) -> Vec<SocketAddr> {
        let dir = self.now_dir();
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
        let dir = self.now_dir();
        dir.all_members()
            .find(|(m, _)| m.serial as u32 == node && m.control_port != 0)
            .and_then(|(m, _)| {
                m.endpoints
                    .first()
                    .map(|e| SocketAddr::new(e.ip(), m.control_port))
            })
    }

    pub(super) fn node_of_addr(&self, addr: SocketAddr) -> Option<u32> {
        let dir = self.now_dir();
        dir.all_members()
            .find(|(m, _)| {
                m.control_port == addr.port() && m.endpoints.iter().any(|e| e.ip() == addr.ip())
            })
            .map(|(m, _)| m.serial as u32)
    }

    /// Opens a connection to `addr` in the background, unless one is open or opening.
    pub(super) fn connect(&mut self, addr: SocketAddr) {
        if self.conns.contains_key(&addr) || !self.connecting.insert(addr) {
            return;
        }
        let Ok(endpoint) = self.ctx.endpoint() else {
            return;
        };
        let config = self.client_config.clone();
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let attempt = async {
                let connecting = endpoint.connect_with(config, addr, tls::SERVER_NAME)?;
                anyhow::Ok(connecting.await?)
            };
            match tokio::time::timeout(STREAM_TIMEOUT, attempt).await {
                Ok(Ok(conn)) => {
                    let _ = tx.send(Event::Connected(addr, conn));
                }
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "control connection failed");
                    let _ = tx.send(Event::ConnectFailed(addr));
                }
                Err(_) => {
                    let _ = tx.send(Event::ConnectFailed(addr));
                }
            }
        });
    }

    /// Sends `bundle` to every connected member and waits (bounded) for their acks; first
    /// closes the connections of members revoked or expired, which get nothing more.
    pub(super) async fn push_all(&mut self, bundle: Bundle) {
        self.close_lapsed();
        for addr in self.control_addrs() {
            self.connect(addr);
        }
        let pushes: Vec<_> = self
            .conns
            .values()
            .cloned()
            .map(|conn| push(conn, bundle.clone(), self.events_tx.clone()))
            .collect();
        let _ =
            tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(pushes)).await;
    }

    /// Anti-entropy: swap directories with one random connected (or known) member.
    pub(super) fn full_sync(&mut self) {
        let addrs = self.control_addrs();
        if addrs.is_empty() {
            return;
        }
        let pick = addrs[random_index(addrs.len())];
        let Some(conn) = self.conns.get(&pick).cloned() else {
            self.connect(pick);
            return;
        };
        let bundle = self.bundle();
        let tx = self.events_tx.clone();
        let dir = self.dir.clone();
        let log = self.datagrams_tx.log.clone();
        tokio::spawn(async move {
            let exchange = async {
                let (mut send, mut recv) = conn.open_bi().await?;
                msg::write(&mut send, &Request::Sync(bundle)).await?;
                send.finish()?;
                msg::read::<Response>(&mut recv).await
            };
            if let Ok(Ok(Response::Sync(theirs))) =
                tokio::time::timeout(STREAM_TIMEOUT, exchange).await
            {
                // Verified here, not on the member task that runs SWIM.
                let check = tokio::task::spawn_blocking(move || prefilter(theirs, &dir, &log));
                if let Ok(theirs) = check.await {
                    let _ = tx.send(Event::Bundle(theirs));
                }
            }
        });
    }

    /// Heals partitions and finds restarted members: announce to one member that is down
    /// or that SWIM does not know, and reconnect to it.
    pub(super) fn rejoin(&mut self) {
        let candidates: Vec<(u32, SocketAddr)> = {
            let dir = self.now_dir();
            dir.live_members()
                .filter(|m| *m.name != self.me.node && m.control_port != 0)
                .filter(|m| {
                    self.liveness
                        .get(&(m.serial as u32))
                        .is_none_or(|(_, up)| !*up)
                })
                .filter_map(|m| {
                    m.endpoints
                        .first()
                        .map(|e| (m.serial as u32, SocketAddr::new(e.ip(), m.control_port)))
                })
                .collect()
        };
        if candidates.is_empty() {
            return;
        }
        let (node, addr) = candidates[random_index(candidates.len())];
        if self.conns.contains_key(&addr) {
            let _ = self.foca.announce(
                NodeId {
                    node,
                    generation: 0,
                },
                &mut self.rt,
            );
        } else {
            self.connect(addr);
        }
    }
}

/// The registry of member connections (see the module docs).
impl Member {
    /// Registers a member connection about to be served; `None` (and the connection closed
    /// with the reason) if its peer's certificate has lapsed since the handshake.
    pub(super) fn register(&mut self, addr: SocketAddr, conn: &quinn::Connection) -> Option<Peer> {
        let peer = tls::remote_node(conn);
        let lapse = match &peer {
            Some(peer) => lapsed(&self.now_dir(), peer, now_unix()),
            None => Some("the peer's certificate is no longer valid".to_owned()),
        };
        match (peer, lapse) {
            (Some(peer), None) => {
                if conn.side().is_server() {
                    self.close_oldest_inbound(peer.serial);
                }
                self.next_link += 1;
                let id = LinkId(self.next_link);
                let link = Link {
                    conn: conn.clone(),
                    addr,
                    peer: peer.clone(),
                };
                self.links.insert(id, link);
                Some(Peer::Member(id, Box::new(peer)))
            }
            (_, reason) => {
                let reason = reason.unwrap_or_default();
                tracing::info!(endpoint = %addr, reason = %reason, "closed a member connection");
                conn.close(tls::CLOSE_NOT_AUTHORIZED, reason.as_bytes());
                None
            }
        }
    }

    /// Makes room for one more connection from the member whose certificate serial is
    /// `serial`: closes its oldest ones beyond [`INBOUND_PER_MEMBER`] - 1.
    fn close_oldest_inbound(&mut self, serial: u64) {
        let mut theirs: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.peer.serial == serial && l.conn.side().is_server())
            .map(|(id, _)| *id)
            .collect();
        theirs.sort_by_key(|id| id.0);
        let excess = (theirs.len() + 1).saturating_sub(INBOUND_PER_MEMBER);
        for id in theirs.into_iter().take(excess) {
            let Some(link) = self.links.remove(&id) else {
                continue;
            };
            self.throttle.warn(
                "closed a member's oldest connection",
                &format_args!(
                    "{} opened more than {INBOUND_PER_MEMBER} connections",
                    link.peer.node
                ),
            );
            link.conn
                .close(CLOSE_REPLACED.into(), b"replaced by a newer connection");
            if self
                .conns
                .get(&link.addr)
                .is_some_and(|c| c.stable_id() == link.conn.stable_id())
            {
                self.conns.remove(&link.addr);
            }
        }
    }

    /// Whether the member connection `id` is still served and its peer's certificate
    /// neither revoked nor expired: a datagram or request that came on it is taken only then.
    pub(super) fn is_current(&self, id: LinkId) -> bool {
        self.links
            .get(&id)
            .is_some_and(|link| lapsed(&self.now_dir(), &link.peer, now_unix()).is_none())
    }

    /// Closes every member connection whose peer's certificate is revoked or has expired,
    /// with [`tls::CLOSE_NOT_AUTHORIZED`] and the reason (the same sentence a new handshake
    /// would be refused with). Call it whenever a revocation may have been applied and once
    /// a second for expiry.
    pub(super) fn close_lapsed(&mut self) {
        let now = now_unix();
        let gone: Vec<(LinkId, String)> = {
            let dir = self.now_dir();
            self.links
                .iter()
                .filter_map(|(id, link)| lapsed(&dir, &link.peer, now).map(|why| (*id, why)))
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
            link.conn
                .close(tls::CLOSE_NOT_AUTHORIZED, reason.as_bytes());
            if self
                .conns
                .get(&link.addr)
                .is_some_and(|c| c.stable_id() == link.conn.stable_id())
            {
                self.conns.remove(&link.addr);
            }
        }
    }
}

/// Why a member whose certificate is `peer` may no longer be served at `now` (unix s):
/// revoked by the network's CA, or expired; `None` while it is current.
pub(super) fn lapsed(dir: &Directory, peer: &NodeCertificate, now: u64) -> Option<String> {
    if dir.is_certificate_revoked(peer) {
        Some(revoked_reason(peer))
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
pub(super) fn revoked_reason(cert: &NodeCertificate) -> String {
    format!(
        "the certificate of {} (serial {}) is revoked by the network's CA",
        cert.node, cert.serial
    )
}

fn random_index(len: usize) -> usize {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    (u64::from_le_bytes(b) % len as u64) as usize
}

/// Pushes records to one member and waits for its ack.
pub(super) async fn push(
    conn: quinn::Connection,
    bundle: Bundle,
    _tx: mpsc::UnboundedSender<Event>,
) {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        msg::write(&mut send, &Request::Push(bundle)).await?;
        send.finish()?;
        msg::read::<Response>(&mut recv).await
    };
    if let Ok(Err(e)) = tokio::time::timeout(STREAM_TIMEOUT, exchange).await {
        tracing::debug!(remote = %conn.remote_address(), error = %e, "push failed");
    }
}

/// Reads datagrams and requests on one connection until it closes. A member's datagrams
/// and requests go to the member task tagged with its link, which drops them if the link
/// has lapsed meanwhile; a joiner's datagrams are dropped and it may send only small
/// requests. A member's datagrams wait in its own queue; a request larger than
/// [`msg::SMALL_FRAME`] needs the member's one large-frame slot, and a bundle is checked
/// off the member task (`inbound`). Streams per connection are capped by the transport
/// config (8 bidirectional, no unidirectional).
pub(super) async fn serve_connection(
    conn: quinn::Connection,
    addr: SocketAddr,
    peer: Peer,
    tx: mpsc::UnboundedSender<Event>,
    inbound: Inbound,
) {
    // A joiner has proven nothing yet: its one request (a join) is small.
    let (link, remote, max_frame) = match peer {
        Peer::Member(link, cert) => (Some(link), Remote::Member(cert), msg::MAX_FRAME),
        Peer::Joiner => (None, Remote::Joiner, JOIN_MAX_FRAME),
    };
    // Gossip is only taken from a connection whose certificate names its sender.
    let node = match &remote {
        Remote::Member(cert) => Some(cert.serial as u32),
        Remote::Joiner => None,
    };
    // What this connection may hand on to the member task, whatever it sends.
    let mut gossip_rate = TokenBucket::new(GOSSIP_RATE, std::time::Instant::now());
    loop {
        tokio::select! {
            d = conn.read_datagram() => match d {
                Ok(bytes) => {
                    // A joiner's are read only so that they do not pile up in quinn.
                    let (Some(link), Some(node)) = (link, node) else { continue };
                    if tx.is_closed() {
                        break;
                    }
                    if !gossip_rate.take(std::time::Instant::now()) {
                        continue;
                    }
                    if !inbound.gossip.push(node, Gossip { link, node, bytes }) {
                        tracing::debug!(%addr, "the member's gossip queue is full; datagram dropped");
                    }
                }
                Err(_) => break,
            },
            s = conn.accept_bi() => match s {
                Ok((mut send, mut recv)) => {
                    let tx = tx.clone();
                    let remote = remote.clone();
                    let inbound = inbound.clone();
                    tokio::spawn(async move {
                        let serve = async {
                            let header = msg::read_request_header(&mut recv, max_frame).await?;
                            // One large frame per member at a time, held until answered.
                            let _slot = match node {
                                Some(node) if header.len > msg::SMALL_FRAME => Some(
                                    inbound.large.take(node).ok_or_else(|| {
                                        anyhow::anyhow!("a large request of this member is being read")
                                    })?,
                                ),
                                _ => None,
                            };
                            let request = msg::read_request_body(&mut recv, header).await?;
                            let request = match (node, request) {
                                (Some(_), Request::Sync(bundle)) => {
                                    Request::Sync(checked(bundle, &inbound).await?)
                                }
                                (Some(_), Request::Push(bundle)) => {
                                    Request::Push(checked(bundle, &inbound).await?)
                                }
                                (_, request) => request,
                            };
                            let (reply_tx, reply_rx) = oneshot::channel();
                            tx.send(Event::Request(link, remote, Box::new(request), reply_tx))
                                .map_err(|_| anyhow::anyhow!("member stopped"))?;
                            // No answer (the sender dropped) when the link has lapsed.
                            let response = reply_rx.await?;
                            msg::write(&mut send, &response).await?;
                            send.finish()?;
                            anyhow::Ok(())
                        };
                        if let Ok(Err(e)) = tokio::time::timeout(STREAM_TIMEOUT, serve).await {
                            tracing::debug!(error = %e, "control stream failed");
                        }
                    });
                }
                Err(_) => break,
            },
        }
    }
    let _ = tx.send(Event::Closed(addr, conn.stable_id(), link));
}

/// [`prefilter`] on a blocking thread.
async fn checked(bundle: Bundle, inbound: &Inbound) -> anyhow::Result<Bundle> {
    let (dir, log) = (inbound.dir.clone(), inbound.log.clone());
    Ok(tokio::task::spawn_blocking(move || prefilter(bundle, &dir, &log)).await?)
}
