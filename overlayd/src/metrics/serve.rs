//! The daemon's side of the metrics: the `[metrics] listen` socket, `GET /metrics` on it
//! (axum, plain HTTP/1.1, as the local API), and the [`Snapshot`] each scrape takes from
//! where the counters live: the router (peers, handshakes, drops, cookies, the policy),
//! the control plane (its view of the members, its bytes) and the Docker plugin (its
//! endpoints). Nothing is counted here, and a scrape takes no lock the data path waits on
//! for longer than reading one peer's figures.
//!
//! The address may be this host's overlay address, which a member gets only once its
//! certificate is known (after `init` or `join`, or from the state directory a moment after
//! start): an address not on the host yet is bound with `IP_FREEBIND` and served from the
//! moment it is. Any other bind failure stops the daemon at start, naming the address.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use protocol::api::MemberState;

use super::{PeerSample, PolicySample, Snapshot};
use crate::control::{Traffic, View};
use crate::router::Router;

/// The path Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";

/// Connections served at once; more wait in the kernel's backlog until one closes.
/// Prometheus keeps one per target (two for a pair of them); the cap keeps a member that
/// opens connections without end from taking the daemon's file descriptors (at worst it
/// blinds the metrics, not the tunnels, the API or the Docker plugin).
pub const MAX_CONNECTIONS: usize = 16;

/// Every member state, so that each is reported (0 included) while this host is a member.
const MEMBER_STATES: [MemberState; 5] = [
    MemberState::Alive,
    MemberState::Suspect,
    MemberState::Down,
    MemberState::Left,
    MemberState::Revoked,
];

/// Where a scrape reads its figures.
#[derive(Clone)]
pub struct Sources {
    /// The tunnels: peers, handshakes, drops, cookies, the policy's counters.
    pub router: Arc<Router>,
    /// The control plane's view: the members and this host's certificate.
    pub view: Arc<Mutex<View>>,
    /// The control plane's bytes.
    pub traffic: Arc<Traffic>,
    /// The Docker plugin's endpoint count; `None` when the plugin is off.
    pub docker_endpoints: Option<Arc<AtomicU64>>,
}

impl Sources {
    /// Everything a scrape reports, as of `now_unix` (seconds; the handshake times are
    /// ages in boringtun, made timestamps with it).
    pub fn snapshot(&self, now_unix: f64) -> Snapshot {
        let (membership, members) = {
            let view = crate::util::lock(&self.view);
            let member = view.membership.clone().filter(|m| !m.left);
            let members: Vec<_> = view
                .members
                .iter()
                .map(|m| (m.public_key, m.name.clone(), m.state))
                .collect();
            (member, members)
        };
        let peers = self
            .router
            .peers()
            .iter()
            .map(|p| {
                let (age, _) = p.handshake_age_and_endpoint();
                let name = members
                    .iter()
                    .find(|(key, _, _)| *key == p.public_key)
                    .map(|(_, name, _)| name.clone())
                    .or_else(|| p.name())
                    .unwrap_or_default();
                PeerSample {
                    name,
                    public_key: p.public_key.to_string(),
                    received_bytes: p.rx_bytes.load(Ordering::Relaxed),
                    sent_bytes: p.tx_bytes.load(Ordering::Relaxed),
                    latest_handshake_unix: age.map(|a| now_unix - a.as_secs_f64()),
                    handshakes_initiated: p.handshakes.initiated(),
                    handshakes_completed: p.handshakes.completed(),
                    handshakes_failed: p.handshakes.failed(),
                }
            })
            .collect();
        let members = match &membership {
            Some(_) => {
                let mut by_state: std::collections::BTreeMap<&'static str, u64> =
                    MEMBER_STATES.iter().map(|s| (s.as_str(), 0)).collect();
                // This host: alive as far as it knows.
                *by_state.entry(MemberState::Alive.as_str()).or_default() += 1;
                for (_, _, state) in &members {
                    *by_state.entry(state.as_str()).or_default() += 1;
                }
                by_state
            }
            None => Default::default(),
        };
        let traffic = &self.traffic;
        let policy = self.router.policy().map(|p| {
            let mut allowed_by_rule = std::collections::BTreeMap::new();
            for (line, n) in p.allowed_by_line() {
                *allowed_by_rule.entry(line).or_default() += n;
            }
            PolicySample {
                version: p.version,
                allowed_by_rule,
                denied: p.denied(),
                tracked_flows: self.router.tracked_flows() as u64,
            }
        });
        Snapshot {
            peers,
            drops: self.router.total_drops(),
            cookie_replies_sent: self.router.cookie_replies_sent(),
            members,
            gossip_sent_bytes: traffic.gossip_sent.load(Ordering::Relaxed),
            gossip_received_bytes: traffic.gossip_received.load(Ordering::Relaxed),
            sync_sent_bytes: traffic.sync_sent.load(Ordering::Relaxed),
            sync_received_bytes: traffic.sync_received.load(Ordering::Relaxed),
            certificate_expiry_unix: membership.map(|m| m.certificate_expires_unix),
            docker_endpoints: self
                .docker_endpoints
                .as_ref()
                .map(|n| n.load(Ordering::Relaxed)),
            policy,
        }
    }
}

/// The bound `[metrics] listen` socket, not served yet.
pub struct MetricsListener {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl MetricsListener {
    /// Binds `addr` (see the module doc for an address not on this host yet). Call inside
    /// the runtime.
    pub fn bind(addr: SocketAddr) -> anyhow::Result<MetricsListener> {
        let listener = match listen(addr, false) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                let listener = listen(addr, true).map_err(|e| failed(addr, e))?;
                tracing::info!(
                    listen = %addr,
                    "the metrics address is not on this host yet; served once it is (a member's overlay address comes with its certificate)"
                );
                listener
            }
            other => other.map_err(|e| failed(addr, e))?,
        };
        Ok(MetricsListener { listener, addr })
    }

    /// The address it listens on (the port the kernel chose, for port 0 in tests).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.addr)
    }

    /// Serves `GET /metrics` in a task; the returned guard stops it.
    pub fn serve(self, sources: Sources) -> Served {
        let app = axum::Router::new()
            .route(METRICS_PATH, get(scrape))
            .with_state(Arc::new(sources));
        let addr = self.local_addr();
        let capped = Capped {
            listener: self.listener,
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        };
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(capped, app).await {
                tracing::error!(listen = %addr, error = %e, "the metrics server stopped");
            }
        });
        tracing::info!(listen = %addr, path = METRICS_PATH, "serving Prometheus metrics");
        Served(task)
    }
}

/// The running metrics server; dropping it stops the server.
pub struct Served(tokio::task::JoinHandle<()>);

impl Drop for Served {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The listener with at most [`MAX_CONNECTIONS`] connections open: a connection holds a
/// permit until it is dropped, and `accept` waits for one first.
struct Capped {
    listener: tokio::net::TcpListener,
    permits: Arc<tokio::sync::Semaphore>,
}

impl axum::serve::Listener for Capped {
    type Io = Held;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Held, SocketAddr) {
        // The semaphore is never closed; were it, this listener would accept no more.
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return std::future::pending().await;
        };
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    return (
                        Held {
                            stream,
                            _permit: permit,
                        },
                        addr,
                    );
                }
                // EMFILE and the like: wait rather than spin (as axum's own listener).
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A served connection and its permit, given back when hyper drops the connection.
struct Held {
    stream: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for Held {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Held {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn scrape(State(sources): State<Arc<Sources>>) -> Response {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let text = super::encode(sources.snapshot(now));
    ([(header::CONTENT_TYPE, super::CONTENT_TYPE)], text).into_response()
}

/// A listening TCP socket on `addr`; with `freebind`, also when `addr` is not (yet) an
/// address of this host.
fn listen(addr: SocketAddr, freebind: bool) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // A restarted daemon must not wait for the old connections' TIME_WAIT.
    socket.set_reuseaddr(true)?;
    if freebind {
        let (level, option) = match addr {
            SocketAddr::V4(_) => (libc::SOL_IP, libc::IP_FREEBIND),
            SocketAddr::V6(_) => (libc::SOL_IPV6, libc::IPV6_FREEBIND),
        };
        let on: libc::c_int = 1;
        // SAFETY: setsockopt(2) on a socket we own, with a pointer to an int and its size.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                option,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    socket.bind(addr)?;
    socket.listen(128)
}

/// The one line a bind failure stops the daemon with.
fn failed(addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "[metrics] listen {addr}: the port is in use (another overlayd or exporter?); stop it or choose another port"
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "[metrics] listen {addr}: permission denied; use a port above 1023 or run overlayd as root"
        ),
        _ => anyhow::anyhow!("[metrics] listen {addr}: cannot listen there: {e}"),
    }
}

#[cfg(test)]
mod tests;
