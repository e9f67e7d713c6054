//! The member's QUIC side: opening connections, serving one connection (datagrams to the
//! core, streams to requests), pushing records and the full sync's exchange. These tasks
//! only move bytes and hand [`Event`]s to the member task. Accepting connections is in
//! `accept`; which connections to open, keep or close is the core's (`core::links`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use keys::NodeCertificate;
use protocol::records::Directory;
use tokio::sync::{mpsc, oneshot};

use super::core::{LinkId, Throttle};
use super::inbound::{
    FairQueue, GOSSIP_RATE, LargeFrames, QUEUED_PER_MEMBER, TokenBucket, prefilter,
};
use super::{Event, Member};
use crate::control::Traffic;
use crate::control::msg::{self, Bundle, Request, Response};
use crate::control::tls::{self, Remote};

/// How long a push or sync may take before it is given up.
pub(super) const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC keepalive and idle timeout of control connections.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(2);
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(8);
/// The largest request a joining host (no certificate yet) may send: a join is ~200 bytes.
const JOIN_MAX_FRAME: usize = 16 << 10;

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
    /// Bytes moved, for the metrics.
    pub(super) traffic: Arc<Traffic>,
}

impl Inbound {
    pub(super) fn new(dir: Arc<Mutex<Directory>>, traffic: Arc<Traffic>) -> Inbound {
        Inbound {
            gossip: FairQueue::new(QUEUED_PER_MEMBER),
            large: LargeFrames::default(),
            dir,
            log: Arc::default(),
            traffic,
        }
    }
}

/// Who is on the other end of a connection being served.
pub(super) enum Peer {
    /// A member, registered with the core as this link, with the certificate it proved.
    Member(LinkId, Box<NodeCertificate>),
    /// A host that came to join; it has proven nothing yet.
    Joiner,
}

/// A gossip datagram, and the member link it came on.
pub(super) struct Gossip {
    pub(super) link: LinkId,
    pub(super) bytes: Bytes,
}

impl Member {
    /// Opens a connection to `addr` in the background (the core asked: none is open or
    /// opening) and reports how it went.
    pub(super) fn connect(&mut self, addr: SocketAddr) {
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
                    let error = e.to_string();
                    if stale_ca(&error) {
                        // The network's CA is another than this host's: an operator must act.
                        tracing::error!(%addr, %error, "cannot reach a member: it holds a certificate of another CA than this host");
                    } else {
                        tracing::debug!(%addr, %error, "control connection failed");
                    }
                    let _ = tx.send(Event::ConnectFailed(addr));
                }
                Err(_) => {
                    let _ = tx.send(Event::ConnectFailed(addr));
                }
            }
        });
    }
}

/// Whether a refused connection says the peer's CA is not this host's (the network rotated
/// its CA while this host was away), at most once a minute: the error that tells the
/// operator to join again is logged then, not on every attempt.
fn stale_ca(error: &str) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    if !error.contains("rotated while this host was away") {
        return false;
    }
    let now = crate::util::now_unix();
    let last = LAST.load(Ordering::Relaxed);
    now >= last + 60
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// Anti-entropy, in the background: swaps directories with the member on `conn`; what it
/// answers is checked off the member task, then handed to it.
pub(super) fn sync(
    conn: quinn::Connection,
    bundle: Bundle,
    inbound: &Inbound,
    tx: mpsc::UnboundedSender<Event>,
) {
    let (dir, log) = (inbound.dir.clone(), inbound.log.clone());
    let traffic = inbound.traffic.clone();
    tokio::spawn(async move {
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            let sent = msg::write(&mut send, &Request::Sync(bundle)).await?;
            Traffic::add(&traffic.sync_sent, sent);
            send.finish()?;
            let (response, received) = msg::read_sized::<Response>(&mut recv).await?;
            Traffic::add(&traffic.sync_received, received);
            anyhow::Ok(response)
        };
        if let Ok(Ok(Response::Sync(theirs))) = tokio::time::timeout(STREAM_TIMEOUT, exchange).await
        {
            // Verified here, not on the member task that runs SWIM.
            let check =
                tokio::task::spawn_blocking(move || prefilter(theirs, &dir, &log, super::now()));
            if let Ok(theirs) = check.await {
                let _ = tx.send(Event::Bundle(theirs));
            }
        }
    });
}

/// Sends `request` to one member on a stream of its own and returns the answer (`Err`: the
/// stream failed or timed out, as one line).
pub(super) async fn ask(
    conn: quinn::Connection,
    request: Request,
    traffic: Arc<Traffic>,
) -> Result<Response, String> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        let sent = msg::write(&mut send, &request).await?;
        Traffic::add(&traffic.sync_sent, sent);
        send.finish()?;
        let (response, received) =
            msg::read_limited_sized::<Response>(&mut recv, msg::SMALL_FRAME.max(msg::ADMINS_FRAME))
                .await?;
        Traffic::add(&traffic.sync_received, received);
        anyhow::Ok(response)
    };
    match tokio::time::timeout(STREAM_TIMEOUT, exchange).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("no answer in time".into()),
    }
}

/// Pushes records to one member and waits for its ack; returns where it saw this host's
/// datagrams come from, when it says ([`Response::Seen`]).
pub(super) async fn push(
    conn: quinn::Connection,
    bundle: Bundle,
    traffic: Arc<Traffic>,
) -> Option<SocketAddr> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        let sent = msg::write(&mut send, &Request::Push(bundle)).await?;
        Traffic::add(&traffic.sync_sent, sent);
        send.finish()?;
        let (response, received) = msg::read_sized::<Response>(&mut recv).await?;
        Traffic::add(&traffic.sync_received, received);
        anyhow::Ok(response)
    };
    match tokio::time::timeout(STREAM_TIMEOUT, exchange).await {
        Ok(Ok(Response::Seen(addr))) => Some(addr),
        Ok(Err(e)) => {
            tracing::debug!(remote = %conn.remote_address(), error = %e, "push failed");
            None
        }
        _ => None,
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
        Remote::Member(cert) => Some(cert.number),
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
                    Traffic::add(&inbound.traffic.gossip_received, bytes.len());
                    if tx.is_closed() {
                        break;
                    }
                    if !gossip_rate.take(std::time::Instant::now()) {
                        continue;
                    }
                    if !inbound.gossip.push(node, Gossip { link, bytes }) {
                        tracing::debug!(%addr, "the member's gossip queue is full; datagram dropped");
                    }
                }
                Err(_) => break,
            },
            s = conn.accept_bi() => match s {
                Ok((mut send, mut recv)) => {
                    let tx = tx.clone();
                    let inbound = inbound.clone();
                    tokio::spawn(async move {
                        let serve = async {
                            let header = msg::read_request_header(&mut recv, max_frame).await?;
                            // A member's requests are syncs and pushes; a joiner's, joins.
                            let counted = node.is_some();
                            if counted {
                                Traffic::add(
                                    &inbound.traffic.sync_received,
                                    msg::LENGTH_PREFIX_LEN + header.len,
                                );
                            }
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
                            tx.send(Event::Request(link, Box::new(request), reply_tx))
                                .map_err(|_| anyhow::anyhow!("member stopped"))?;
                            // No answer (the sender dropped) when the link has lapsed.
                            let response = reply_rx.await?;
                            let sent = msg::write(&mut send, &response).await?;
                            if counted {
                                Traffic::add(&inbound.traffic.sync_sent, sent);
                            }
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
    let _ = tx.send(Event::Closed(addr, link));
}

/// [`prefilter`] on a blocking thread.
async fn checked(bundle: Bundle, inbound: &Inbound) -> anyhow::Result<Bundle> {
    let (dir, log) = (inbound.dir.clone(), inbound.log.clone());
    Ok(tokio::task::spawn_blocking(move || prefilter(bundle, &dir, &log, super::now())).await?)
}
