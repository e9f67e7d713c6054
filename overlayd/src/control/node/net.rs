//! The member's QUIC side: opening connections, the accept loop, serving one connection
//! (datagrams to foca, streams to requests), pushing records, the periodic full sync
//! (anti-entropy) and rejoin, and the directory lookups that map members to control
//! addresses. These tasks only move bytes and hand [`Event`]s to the member task.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use protocol::membership::NodeId;
use tokio::sync::{mpsc, oneshot};

use super::gossip::Throttle;
use super::{Event, Member};
use crate::control::msg::{self, Bundle, Request, Response};
use crate::control::tls::{self, Remote};

/// How long a push or sync may take before it is given up.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC keepalive and idle timeout of control connections.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(2);
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(8);
/// Gossip datagrams queued for the member task at most; more are dropped.
pub(super) const QUEUED_DATAGRAMS: usize = 1024;
/// The largest request a joining host (no certificate yet) may send: a join is ~200 bytes.
const JOIN_MAX_FRAME: usize = 16 << 10;

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

    /// Sends `bundle` to every connected member and waits (bounded) for their acks.
    pub(super) async fn push_all(&mut self, bundle: Bundle) {
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
                let _ = tx.send(Event::Bundle(theirs));
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

/// Accepts control connections: members are served, joiners may only ask to join, and a
/// client without a certificate of this network is closed with the reason.
pub(super) async fn accept_loop(
    endpoint: quinn::Endpoint,
    tx: mpsc::UnboundedSender<Event>,
    datagrams: mpsc::Sender<(u32, Bytes)>,
) {
    let mut throttle = Throttle::default();
    while let Some(incoming) = endpoint.accept().await {
        let conn = match incoming.await {
            Ok(conn) => conn,
            Err(e) => {
                throttle.warn("refused a control connection", &e);
                continue;
            }
        };
        let addr = conn.remote_address();
        match tls::authorize(&conn) {
            Ok(Remote::Member(cert)) => {
                tracing::debug!(%addr, node = %cert.node, "member connected");
                let _ = tx.send(Event::Connected(addr, conn));
            }
            Ok(Remote::Joiner) => {
                tokio::spawn(serve_connection(
                    conn,
                    addr,
                    Remote::Joiner,
                    tx.clone(),
                    datagrams.clone(),
                    true,
                ));
            }
            Err(refusal) => {
                throttle.warn("refused a control connection", &refusal.reason);
                conn.close(refusal.code, refusal.reason.as_bytes());
            }
        }
    }
}

/// Reads datagrams and requests on one connection until it closes.
pub(super) async fn serve_connection(
    conn: quinn::Connection,
    addr: SocketAddr,
    remote: Remote,
    tx: mpsc::UnboundedSender<Event>,
    datagrams: mpsc::Sender<(u32, Bytes)>,
    joiner: bool,
) {
    // A joiner has proven nothing yet: its one request (a join) is small.
    let max_frame = if joiner {
        JOIN_MAX_FRAME
    } else {
        msg::MAX_FRAME
    };
    let proven = tls::remote_node(&conn).filter(|_| !joiner);
    // Gossip is only taken from a connection whose certificate names its sender.
    let sender = proven.as_ref().map(|cert| cert.serial as u32);
    let remote = match proven {
        Some(cert) => Remote::Member(Box::new(cert)),
        None => remote,
    };
    loop {
        tokio::select! {
            d = conn.read_datagram(), if sender.is_some() => match d {
                Ok(bytes) => {
                    let Some(sender) = sender else { break };
                    match datagrams.try_send((sender, bytes)) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::debug!(%addr, "gossip queue full; datagram dropped");
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
                Err(_) => break,
            },
            s = conn.accept_bi() => match s {
                Ok((mut send, mut recv)) => {
                    let tx = tx.clone();
                    let remote = remote.clone();
                    tokio::spawn(async move {
                        let serve = async {
                            let request: Request = msg::read_limited(&mut recv, max_frame).await?;
                            let (reply_tx, reply_rx) = oneshot::channel();
                            tx.send(Event::Request(remote, Box::new(request), reply_tx))
                                .map_err(|_| anyhow::anyhow!("member stopped"))?;
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
    let _ = tx.send(Event::Closed(addr, conn.stable_id()));
}
