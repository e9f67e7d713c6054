//! The DNS server for container names across hosts (`[dns]`): on one address that is the
//! same on every host (by default the last but one of the network's main range,
//! `10.42.255.254` in `10.42.0.0/16`, which no member's subnet holds: the admin never
//! hands out that slice), port 53, UDP and TCP. The address goes on the TUN as a local
//! address, so a container's query ends on its own host and never crosses a tunnel; a
//! `daemon.json` with `"dns": ["10.42.255.254"]` makes dockerd's embedded resolver ask it
//! for what it does not know itself.
//!
//! - [`answer`]: what a question gets, from the control plane's [`View`] (pure).
//! - here: the sockets, and forwarding what is not ours to the host's own resolvers (the
//!   `nameserver` lines of `/etc/resolv.conf`, read at each forward).
//!
//! Only askers inside the overlay's ranges (containers, this host's overlay address) or on
//! loopback are answered: the address is reachable from the underlay too (a neighbour
//! routing to it), and this must not become an open resolver.

pub mod answer;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;

use crate::control::View;
use crate::util::lock;

/// The DNS port.
pub const PORT: u16 = 53;
/// How long one upstream resolver may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may stay silent.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Forwarded questions (and TCP connections) in flight at most.
const IN_FLIGHT: usize = 256;
/// The largest UDP answer without EDNS.
const UDP_PLAIN_LEN: usize = 512;

/// The address every host serves on, for a network whose main range is `cidr`: its last
/// address but one (`10.42.255.254` for `10.42.0.0/16`). `None` for an IPv6 range or one
/// too small to spare it.
pub fn default_address(cidr: IpNet) -> Option<Ipv4Addr> {
    match cidr {
        IpNet::V4(v4) if v4.prefix_len() <= 24 => {
            Some(Ipv4Addr::from(u32::from(v4.broadcast()).wrapping_sub(1)))
        }
        _ => None,
    }
}

/// What the server needs.
pub struct Settings {
    /// `[dns] address`, or `None` for [`default_address`].
    pub address: Option<Ipv4Addr>,
    /// Where the host's resolvers are listed.
    pub resolv_conf: PathBuf,
}

/// Serves DNS once this host is in a network: makes sure the address is on the TUN
/// (`if_index`; a member puts it there as it starts) and answers until the task is aborted. Errors are logged; names are then not served.
pub async fn run(
    settings: Settings,
    view: Arc<Mutex<View>>,
    routes: Arc<tokio::sync::Mutex<crate::netlink::Routes>>,
    if_index: u32,
) {
    let cidr = loop {
        let cidr = lock(&view)
            .membership
            .as_ref()
            .filter(|m| !m.left)
            .map(|m| m.cidr);
        if let Some(cidr) = cidr {
            break cidr;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let Some(address) = settings.address.or_else(|| default_address(cidr)) else {
        tracing::warn!(%cidr, "no DNS address for this network's range; set [dns] address");
        return;
    };
    if let Err(e) = routes
        .lock()
        .await
        .add_address(if_index, IpAddr::V4(address))
        .await
    {
        tracing::error!(error = %format!("{e:#}"), "cannot serve container names by DNS");
        return;
    }
    let at = SocketAddr::new(IpAddr::V4(address), PORT);
    let (udp, tcp) = match (UdpSocket::bind(at).await, TcpListener::bind(at).await) {
        (Ok(u), Ok(t)) => (u, t),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, address = %at, "cannot listen for DNS; is another DNS server bound to every address? Set [dns] address or stop it");
            return;
        }
    };
    tracing::info!(address = %at, "serving container names by DNS");
    serve(udp, tcp, view, settings.resolv_conf).await;
}

/// Answers on `udp` and `tcp` until aborted (tests pass port-0 sockets).
pub async fn serve(udp: UdpSocket, tcp: TcpListener, view: Arc<Mutex<View>>, resolv_conf: PathBuf) {
    let udp = Arc::new(udp);
    let limit = Arc::new(Semaphore::new(IN_FLIGHT));
    let forwarder = Arc::new(Forwarder {
        resolv_conf,
        skip: udp.local_addr().map(|a| vec![a.ip()]).unwrap_or_default(),
    });
    tokio::join!(
        tcp_loop(tcp, view.clone(), limit.clone(), forwarder.clone()),
        udp_loop(udp, view, limit, forwarder)
    );
}

async fn tcp_loop(
    tcp: TcpListener,
    view: Arc<Mutex<View>>,
    limit: Arc<Semaphore>,
    forwarder: Arc<Forwarder>,
) {
    loop {
        let (stream, client) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(error = %e, "DNS: cannot accept a TCP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let (view, forwarder) = (view.clone(), forwarder.clone());
        tokio::spawn(async move {
            let _permit = permit;
            serve_tcp(stream, client.ip(), &view, &forwarder).await;
        });
    }
}

async fn udp_loop(
    udp: Arc<UdpSocket>,
    view: Arc<Mutex<View>>,
    limit: Arc<Semaphore>,
    forwarder: Arc<Forwarder>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, client) = match udp.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(error = %e, "DNS: cannot receive");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let question = buf[..len].to_vec();
        match respond(&view, &question, client.ip(), true) {
            Reply::Drop => {}
            Reply::Answer(bytes) => {
                let _ = udp.send_to(&bytes, client).await;
            }
            Reply::Forward(query) => {
                // Beyond the questions in flight, a forward is dropped: the asker retries.
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    continue;
                };
                let (udp, forwarder) = (udp.clone(), forwarder.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let bytes = forward(&query, &question, &forwarder).await;
                    let _ = udp.send_to(&bytes, client).await;
                });
            }
        }
    }
}

async fn serve_tcp(
    mut stream: tokio::net::TcpStream,
    client: IpAddr,
    view: &Mutex<View>,
    forwarder: &Forwarder,
) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return;
        };
        let mut question = vec![0u8; usize::from(len)];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut question)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let bytes = match respond(view, &question, client, false) {
            Reply::Drop => return,
            Reply::Answer(bytes) => bytes,
            Reply::Forward(query) => forward(&query, &question, forwarder).await,
        };
        let Ok(len) = u16::try_from(bytes.len()) else {
            return;
        };
        if stream.write_u16(len).await.is_err() || stream.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

/// What to do with one question.
enum Reply {
    /// Not a DNS question, or an asker outside the overlay: nothing.
    Drop,
    /// Send these bytes.
    Answer(Vec<u8>),
    /// Ask the host's resolvers.
    Forward(Message),
}

/// The reply to `question` from `client`; over UDP (`udp`) an answer longer than the asker
/// takes is truncated (it asks again over TCP).
fn respond(view: &Mutex<View>, question: &[u8], client: IpAddr, udp: bool) -> Reply {
    let Ok(query) = Message::from_vec(question) else {
        return Reply::Drop;
    };
    let view = lock(view);
    let allowed = client.is_loopback()
        || view.membership.as_ref().is_some_and(|m| {
            std::iter::once(&m.cidr)
                .chain(&m.ranges)
                .any(|r| r.contains(&client))
        });
    if !allowed {
        return Reply::Drop;
    }
    match answer::answer(&view, &query, client) {
        None => Reply::Forward(query),
        Some(response) => {
            let limit = query.edns.as_ref().map_or(UDP_PLAIN_LEN, |e| {
                usize::from(e.max_payload()).max(UDP_PLAIN_LEN)
            });
            match response.to_vec() {
                Ok(bytes) if !udp || bytes.len() <= limit => Reply::Answer(bytes),
                Ok(_) => response
                    .truncate()
                    .to_vec()
                    .map_or(Reply::Drop, Reply::Answer),
                Err(_) => Reply::Drop,
            }
        }
    }
}

/// The host's resolvers: the `nameserver` lines of `path`, at port 53, minus loops back to
/// this server (an address in `skip`).
pub fn upstreams(path: &Path, skip: &[IpAddr]) -> Vec<SocketAddr> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .filter(|a| !skip.contains(a))
        .map(|a| SocketAddr::new(a, PORT))
        .collect()
}

/// Where forwarded questions go.
struct Forwarder {
    /// The host's resolver list.
    resolv_conf: PathBuf,
    /// This server's own address: never forwarded to.
    skip: Vec<IpAddr>,
}

/// Asks each upstream in turn; their answer, or SERVFAIL when none answers.
async fn forward(query: &Message, question: &[u8], to: &Forwarder) -> Vec<u8> {
    for upstream in upstreams(&to.resolv_conf, &to.skip) {
        if let Ok(Some(bytes)) =
            tokio::time::timeout(UPSTREAM_TIMEOUT, ask(upstream, question, query.metadata.id)).await
        {
            return bytes;
        }
    }
    let mut failed = Message::error_msg(
        query.metadata.id,
        query.metadata.op_code,
        ResponseCode::ServFail,
    );
    failed.metadata.recursion_desired = query.metadata.recursion_desired;
    failed.metadata.recursion_available = true;
    if let Some(q) = query.queries.first() {
        failed.add_query(q.clone());
    }
    failed.to_vec().unwrap_or_default()
}

async fn ask(upstream: SocketAddr, question: &[u8], id: u16) -> Option<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(question).await.ok()?;
    let mut buf = vec![0u8; 65535];
    loop {
        let len = socket.recv(&mut buf).await.ok()?;
        if len >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            return Some(buf[..len].to_vec());
        }
    }
}

#[cfg(test)]
mod tests;
