//! A running member: SWIM (foca) over QUIC datagrams, records piggy-backed on it and
//! synced over streams, and the router and kernel routes kept in step with the directory
//! and the failure detector.
//!
//! One task owns everything here ([`Member::run`]); connections, streams and the QUIC
//! accept loop are small tasks that only move bytes and hand events to it, so no state is
//! shared but the directory (read by the TLS revocation check and by foca's broadcast
//! handler, both on paths this task drives or that only read).
//!
//! A member is routed when its record in the directory is alive, it is not this host, and
//! the failure detector has not declared its current identity down. A member that the
//! detector never heard of is routed too: after a restart, tunnels come back from the saved
//! directory before anyone answers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{
    AccumulatingRuntime, BroadcastHandler, Foca, Invalidates, OwnedNotification, PostcardCodec,
    Timer,
};
use ipnet::IpNet;
use keys::{CaKey, Name, NodeCertificate, PublicKey, SigningKey};
use protocol::api::MemberState as ViewState;
use protocol::membership::NodeId;
use protocol::records::{
    Applied, Directory, MemberRecord, MemberState, RecordError, SignedMemberRecord,
    SignedRevocation,
};
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;
use tokio::sync::{mpsc, oneshot};

use super::admin::{Issuer, JoinAsk, Refused};
use super::msg::{self, Bundle, Request, Response};
use super::state::{AdminState, NetworkState};
use super::tls::{self, Remote, TlsIdentity};
use super::{ApiFailure, Command, Ctx, MemberView, View, now_unix};
use crate::router::{PeerSpec, Upserted};

/// Tag of a member record in a gossiped item.
const TAG_MEMBER: u8 = 0;
/// Tag of a revocation.
const TAG_REVOCATION: u8 = 1;
/// How long a push or sync may take before it is given up.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC keepalive and idle timeout of control connections.
const KEEPALIVE: Duration = Duration::from_secs(2);
const IDLE_TIMEOUT: Duration = Duration::from_secs(8);

type Agent = Foca<NodeId, PostcardCodec, Pcg64Mcg, RecordHandler>;

/// What the connection and stream tasks tell the member task.
enum Event {
    /// A gossip datagram, and the SWIM node number (certificate serial) of the member whose
    /// certificate the connection proved.
    Datagram(u32, Bytes),
    Connected(SocketAddr, quinn::Connection),
    ConnectFailed(SocketAddr),
    Closed(SocketAddr, usize),
    Request(Remote, Box<Request>, oneshot::Sender<Response>),
    Bundle(Bundle),
}

/// Identifies a gossiped item, so that foca stops spreading an item a newer one replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordKey {
    tag: u8,
    name: Name,
    serial: u64,
    version: u64,
}

impl Invalidates for RecordKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.tag == other.tag
            && self.name == other.name
            && (self.serial, self.version) >= (other.serial, other.version)
    }
}

/// What the broadcast handler changed, for the member task to act on.
#[derive(Default)]
struct Changes {
    any: bool,
}

/// foca's hook for piggy-backed records: verifies and applies each (through the
/// directory) and tells foca to pass on only what was new.
pub struct RecordHandler {
    dir: Arc<Mutex<Directory>>,
    changes: Arc<Mutex<Changes>>,
    throttle: Throttle,
}

impl BroadcastHandler<NodeId> for RecordHandler {
    type Key = RecordKey;
    type Error = std::convert::Infallible;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeId>,
    ) -> Result<Option<RecordKey>, Self::Error> {
        let Some(key) = item_key(data) else {
            self.throttle
                .warn("dropped a malformed gossiped record", &"undecodable");
            return Ok(None);
        };
        if sender.is_none() {
            // Added by this host, which applied it already: spread it.
            return Ok(Some(key));
        }
        let mut dir = lock(&self.dir);
        match apply_item(&mut dir, data) {
            Ok(Applied::Unchanged) => Ok(None),
            Ok(_) => {
                lock(&self.changes).any = true;
                Ok(Some(key))
            }
            // A stale copy still making its rounds after the member moved on: normal.
            Err(e @ RecordError::Replay { .. }) => {
                tracing::debug!(error = %e, "ignored a stale gossiped record");
                Ok(None)
            }
            Err(e) => {
                self.throttle.warn("refused a gossiped record", &e);
                Ok(None)
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn tagged(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(tag);
    out.extend_from_slice(bytes);
    out
}

fn item_key(data: &[u8]) -> Option<RecordKey> {
    let (&tag, rest) = data.split_first()?;
    match tag {
        TAG_MEMBER => {
            let r = SignedMemberRecord::from_bytes(rest).ok()?;
            let body = r.record();
            let cert = body.certificate.unverified_body().ok()?;
            Some(RecordKey {
                tag,
                name: cert.node,
                serial: cert.serial,
                version: body.version,
            })
        }
        TAG_REVOCATION => {
            let r = SignedRevocation::from_bytes(rest).ok()?;
            Some(RecordKey {
                tag,
                name: r.revocation().node.clone(),
                serial: r.revocation().serial,
                version: 0,
            })
        }
        _ => None,
    }
}

fn apply_item(dir: &mut Directory, data: &[u8]) -> Result<Applied, RecordError> {
    match data.split_first() {
        Some((&TAG_MEMBER, rest)) => dir.apply_member_bytes(rest, now_unix()),
        Some((&TAG_REVOCATION, rest)) => dir.apply_revocation_bytes(rest),
        _ => Err(RecordError::Malformed { part: "item tag" }),
    }
}

/// Logs one line per kind at most once a second, with how many were suppressed.
#[derive(Default)]
pub struct Throttle {
    last: HashMap<&'static str, (Instant, u64)>,
}

impl Throttle {
    /// Warns `what: detail`, unless `what` was logged in the last second.
    pub fn warn(&mut self, what: &'static str, detail: &dyn std::fmt::Display) {
        let now = Instant::now();
        let entry = self
            .last
            .entry(what)
            .or_insert((now - Duration::from_secs(2), 0));
        if now.duration_since(entry.0) < Duration::from_secs(1) {
            entry.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut entry.1);
        entry.0 = now;
        tracing::warn!(suppressed, "{what}: {detail}");
    }
}

/// A timer foca asked for.
struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: HashMap<u64, Timer<NodeId>>,
    seq: u64,
}

impl Timers {
    fn add(&mut self, after: Duration, timer: Timer<NodeId>) {
        self.seq += 1;
        self.heap.push(Reverse((Instant::now() + after, self.seq)));
        self.pending.insert(self.seq, timer);
    }

    fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    fn due(&mut self) -> Vec<Timer<NodeId>> {
        let now = Instant::now();
        let mut out = Vec::new();
        while let Some(Reverse((at, seq))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if let Some(t) = self.pending.remove(&seq) {
                out.push(t);
            }
        }
        out
    }
}

/// A running member.
pub struct Member {
    ctx: Arc<Ctx>,
    view: Arc<Mutex<View>>,
    net: NetworkState,
    me: NodeCertificate,
    control_key: SigningKey,
    ca_key: Option<CaKey>,
    admin: Option<AdminState>,
    advertise: IpAddr,
    dir: Arc<Mutex<Directory>>,
    changes: Arc<Mutex<Changes>>,
    foca: Agent,
    rt: AccumulatingRuntime<NodeId>,
    timers: Timers,
    conns: HashMap<SocketAddr, quinn::Connection>,
    connecting: HashSet<SocketAddr>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    client_config: quinn::ClientConfig,
    /// foca's latest identity per node number, and whether it is up.
    liveness: HashMap<u32, (NodeId, bool)>,
    /// Dynamic peers in the router: key → subnets routed in the kernel.
    routed: HashMap<PublicKey, Vec<IpNet>>,
    accept_task: tokio::task::JoinHandle<()>,
    throttle: Throttle,
    dirty: bool,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Member {
    /// Starts as a member of the network `net` describes.
    pub async fn start(
        ctx: Arc<Ctx>,
        mut net: NetworkState,
        view: Arc<Mutex<View>>,
    ) -> anyhow::Result<Member> {
        let now = now_unix();
        let me = net
            .certificate
            .verify(&net.ca, now)
            .map_err(|e| anyhow::anyhow!("this host's certificate cannot be used: {e}"))?;
        let control_key = ctx.state.control_key()?;
        anyhow::ensure!(
            control_key.verifying_key() == me.control_key,
            "the control key in {} does not match this host's certificate; restore the key or join again",
            ctx.state.root().display()
        );
        anyhow::ensure!(
            ctx.config.private_key.public_key() == me.wireguard_key,
            "private_key_file {} holds another WireGuard key than this host's certificate; restore the key or join again",
            ctx.config.private_key_file.display()
        );
        let ca_key = ctx.state.ca_key()?;
        let admin = match &ca_key {
            Some(_) => Some(ctx.state.admin()?),
            None => None,
        };
        let mut dir = ctx.state.directory(&net.ca, &net.network)?;
        net.generation = net.generation.wrapping_add(1);
        net.record_version += 1;
        ctx.state.save_network(&net)?;
        let advertise = match ctx.config.control.advertise {
            Some(ip) => ip,
            None => {
                let towards = dir
                    .live_members()
                    .filter(|m| *m.name != me.node)
                    .find_map(|m| m.endpoints.first().copied())
                    .or_else(|| net.bootstrap.first().copied());
                super::detect_address(towards)?
            }
        };
        let own = own_record(&net, &ctx, advertise, MemberState::Alive, &control_key)?;
        if let Err(e) = dir.apply_member(&own, now) {
            tracing::warn!(error = %e, "this host's own record was refused by its directory");
        }
        let dir = Arc::new(Mutex::new(dir));
        let identity = TlsIdentity {
            ca: net.ca,
            network: net.network.clone(),
            certificate: net.certificate.clone(),
            control_key: control_key.clone(),
        };
        let check: tls::PeerCheck = {
            let dir = dir.clone();
            Arc::new(move |cert: &NodeCertificate| {
                if lock(&dir).is_certificate_revoked(cert) {
                    Err(format!(
                        "the certificate of {} (serial {}) is revoked by the network's CA",
                        cert.node, cert.serial
                    ))
                } else {
                    Ok(())
                }
            })
        };
        let transport = Arc::new(tls::transport_config(KEEPALIVE, IDLE_TIMEOUT));
        let server = tls::server_config(&identity, check.clone(), transport.clone())?;
        let client_config = tls::client_config(&identity, check, transport)?;
        let endpoint = ctx.endpoint()?;
        endpoint.set_server_config(Some(server));
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), events_tx.clone()));
        let changes = Arc::new(Mutex::new(Changes::default()));
        let handler = RecordHandler {
            dir: dir.clone(),
            changes: changes.clone(),
            throttle: Throttle::default(),
        };
        let foca_config = ctx
            .config
            .control
            .membership()
            .to_foca()
            .map_err(|e| anyhow::anyhow!("[control] timings: {e}"))?;
        let mut seed = [0u8; 8];
        getrandom::getrandom(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let foca = Foca::with_custom_broadcast(
            NodeId {
                node: me.serial as u32,
                generation: net.generation,
            },
            foca_config,
            Pcg64Mcg::seed_from_u64(u64::from_le_bytes(seed)),
            PostcardCodec,
            handler,
        );
        let mut member = Member {
            ctx,
            view,
            net,
            me,
            control_key,
            ca_key,
            admin,
            advertise,
            dir,
            changes,
            foca,
            rt: AccumulatingRuntime::new(),
            timers: Timers {
                heap: BinaryHeap::new(),
                pending: HashMap::new(),
                seq: 0,
            },
            conns: HashMap::new(),
            connecting: HashSet::new(),
            events_tx,
            events_rx,
            client_config,
            liveness: HashMap::new(),
            routed: HashMap::new(),
            accept_task,
            throttle: Throttle::default(),
            dirty: true,
        };
        if let Err(e) = member
            .foca
            .add_broadcast(&tagged(TAG_MEMBER, &own.to_bytes()))
        {
            tracing::warn!(error = %e, "cannot gossip this host's record");
        }
        member.sync_peers().await;
        member.save();
        member.update_view();
        // Reach every known member: each connection pushes our record and announces us.
        for addr in member.control_addrs() {
            member.connect(addr);
        }
        for addr in member.net.bootstrap.clone() {
            member.connect(addr);
        }
        tracing::info!(
            network = %member.net.network,
            name = %member.me.node,
            subnets = ?member.me.subnets,
            generation = member.net.generation,
            admin = member.ca_key.is_some(),
            advertise = %member.advertise,
            "control plane is up"
        );
        Ok(member)
    }

    /// Runs until this host leaves the network (`true`) or the daemon shuts down and the
    /// command channel closes (`false`).
    pub async fn run(mut self, commands: &mut mpsc::Receiver<Command>) -> bool {
        let control = &self.ctx.config.control;
        let mut sync_tick = tokio::time::interval(Duration::from_millis(control.sync_interval_ms));
        let mut rejoin_tick =
            tokio::time::interval(Duration::from_millis(control.rejoin_interval_ms));
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        sync_tick.tick().await;
        loop {
            let next_timer = self.timers.next();
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return false };
                    if self.command(cmd).await {
                        return true;
                    }
                }
                Some(ev) = self.events_rx.recv() => self.event(ev),
                _ = sleep_until(next_timer) => {
                    for timer in self.timers.due() {
                        if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                            tracing::debug!(error = %e, "foca timer");
                        }
                    }
                }
                _ = sync_tick.tick() => self.full_sync(),
                _ = rejoin_tick.tick() => self.rejoin(),
                _ = housekeeping.tick() => self.housekeeping(),
            }
            self.drain();
            if std::mem::take(&mut lock(&self.changes).any) {
                self.dirty = true;
            }
            if std::mem::take(&mut self.dirty) {
                self.sync_peers().await;
                self.save();
                self.update_view();
            }
        }
    }

    fn now_dir(&self) -> std::sync::MutexGuard<'_, Directory> {
        lock(&self.dir)
    }

    /// Control addresses of the other members with a record.
    fn control_addrs(&self) -> Vec<SocketAddr> {
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

    fn addr_of_node(&self, node: u32) -> Option<SocketAddr> {
        let dir = self.now_dir();
        dir.all_members()
            .find(|(m, _)| m.serial as u32 == node && m.control_port != 0)
            .and_then(|(m, _)| {
                m.endpoints
                    .first()
                    .map(|e| SocketAddr::new(e.ip(), m.control_port))
            })
    }

    fn node_of_addr(&self, addr: SocketAddr) -> Option<u32> {
        let dir = self.now_dir();
        dir.all_members()
            .find(|(m, _)| {
                m.control_port == addr.port() && m.endpoints.iter().any(|e| e.ip() == addr.ip())
            })
            .map(|(m, _)| m.serial as u32)
    }

    /// Opens a connection to `addr` in the background, unless one is open or opening.
    fn connect(&mut self, addr: SocketAddr) {
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

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Datagram(sender, bytes) => {
                // SWIM messages name their sender; it must be the member the connection's
                // certificate proved, or one member could speak (suspect, refute, leave)
                // in another's name.
                match foca::Codec::<NodeId>::decode_header(&mut PostcardCodec, &bytes[..]) {
                    Ok(header) if header.src.node == sender => {}
                    Ok(header) => {
                        self.throttle.warn(
                            "dropped gossip sent in another member's name",
                            &format_args!(
                                "the connection of node {sender} sent a message from node {}",
                                header.src.node
                            ),
                        );
                        return;
                    }
                    Err(e) => {
                        self.throttle.warn("dropped a gossip datagram", &e);
                        return;
                    }
                }
                if let Err(e) = self.foca.handle_data(&bytes, &mut self.rt) {
                    self.throttle.warn("dropped a gossip datagram", &e);
                }
            }
            Event::Connected(addr, conn) => {
                self.connecting.remove(&addr);
                let fresh = !self.conns.contains_key(&addr);
                tokio::spawn(serve_connection(
                    conn.clone(),
                    addr,
                    Remote::Member(Box::new(self.me.clone())),
                    self.events_tx.clone(),
                    false,
                ));
                self.conns.insert(addr, conn.clone());
                if fresh {
                    // Tell it about us at once: our record, and a SWIM announce.
                    let bundle = Bundle {
                        members: vec![self.own_signed_bytes()],
                        revocations: Vec::new(),
                    };
                    tokio::spawn(push(conn, bundle, self.events_tx.clone()));
                    if let Some(node) = self.node_of_addr(addr) {
                        let _ = self.foca.announce(
                            NodeId {
                                node,
                                generation: 0,
                            },
                            &mut self.rt,
                        );
                    }
                }
            }
            Event::ConnectFailed(addr) => {
                self.connecting.remove(&addr);
            }
            Event::Closed(addr, id) => {
                if self.conns.get(&addr).map(|c| c.stable_id()) == Some(id) {
                    self.conns.remove(&addr);
                }
            }
            Event::Request(remote, request, reply) => {
                let response = self.request(remote, *request);
                let _ = reply.send(response);
            }
            Event::Bundle(bundle) => self.apply_bundle(&bundle, true),
        }
    }

    fn own_signed_bytes(&self) -> Vec<u8> {
        let dir = self.now_dir();
        dir.member_records()
            .find(|r| {
                r.record()
                    .certificate
                    .unverified_body()
                    .map(|c| c.node == self.me.node)
                    .unwrap_or(false)
            })
            .map(|r| r.to_bytes())
            .unwrap_or_default()
    }

    /// Applies records received over a stream; what was new is gossiped on.
    /// `sync`: from a full sync, where copies older than ours are expected (a member's
    /// directory lags behind ours) and are not worth a warning.
    fn apply_bundle(&mut self, bundle: &Bundle, sync: bool) {
        let mut fresh = Vec::new();
        {
            let mut dir = lock(&self.dir);
            for bytes in &bundle.revocations {
                match dir.apply_revocation_bytes(bytes) {
                    Ok(Applied::Unchanged) => {}
                    Ok(_) => fresh.push(tagged(TAG_REVOCATION, bytes)),
                    Err(e) => self.throttle.warn("refused a revocation", &e),
                }
            }
            for bytes in &bundle.members {
                if bytes.is_empty() {
                    continue;
                }
                match dir.apply_member_bytes(bytes, now_unix()) {
                    Ok(Applied::Unchanged) => {}
                    Ok(_) => fresh.push(tagged(TAG_MEMBER, bytes)),
                    Err(
                        e @ (RecordError::Replay { .. } | RecordError::OlderCertificate { .. }),
                    ) if sync => tracing::debug!(error = %e, "ignored a stale record in a sync"),
                    Err(e) => self.throttle.warn("refused a member record", &e),
                }
            }
        }
        if !fresh.is_empty() {
            self.dirty = true;
        }
        for item in fresh {
            if let Err(e) = self.foca.add_broadcast(&item) {
                tracing::debug!(error = %e, "cannot gossip a record");
            }
        }
    }

    fn bundle(&self) -> Bundle {
        let dir = self.now_dir();
        Bundle {
            members: dir.member_records().map(|r| r.to_bytes()).collect(),
            revocations: dir.revocations().map(|r| r.to_bytes()).collect(),
        }
    }

    fn request(&mut self, remote: Remote, request: Request) -> Response {
        match (remote, request) {
            (Remote::Member(_), Request::Sync(theirs)) => {
                self.apply_bundle(&theirs, true);
                Response::Sync(self.bundle())
            }
            (Remote::Member(_), Request::Push(theirs)) => {
                self.apply_bundle(&theirs, false);
                Response::Ack
            }
            (
                Remote::Joiner,
                Request::Join {
                    secret,
                    name,
                    wireguard_key,
                    control_key,
                    subnet,
                },
            ) => {
                let ask = JoinAsk {
                    secret: keys::TokenSecret::from_bytes(secret),
                    name,
                    wireguard_key,
                    control_key,
                    subnet,
                };
                match self.admit(&ask) {
                    Ok(certificate) => {
                        tracing::info!(name = %ask.name, "admitted a new member");
                        Response::Joined {
                            certificate,
                            cidr: self.net.cidr,
                            ranges: self.net.ranges.clone(),
                            subnet_prefix: self.net.subnet_prefix,
                            bundle: self.bundle(),
                        }
                    }
                    Err(e) => {
                        self.throttle.warn("refused a join", &e);
                        Response::Refused(e.0)
                    }
                }
            }
            (Remote::Joiner, _) => Response::Refused("join first".into()),
            (Remote::Member(_), Request::Join { .. }) => Response::Refused(
                "this host is already a member; a join needs no certificate".into(),
            ),
        }
    }

    fn issuer(&self) -> Option<Issuer<'_>> {
        Some(Issuer {
            ca: self.ca_key.as_ref()?,
            network: &self.net.network,
            cidr: self.net.cidr,
            ranges: &self.net.ranges,
            subnet_prefix: self.net.subnet_prefix,
            certificate_days: self.ctx.config.control.certificate_days,
        })
    }

    fn admit(&mut self, ask: &JoinAsk) -> Result<Vec<u8>, Refused> {
        let Some(mut admin) = self.admin.clone() else {
            return Err(Refused(
                "this host is not an admin of the network; use a token from the host that made it"
                    .into(),
            ));
        };
        let cert = {
            let issuer = self.issuer().ok_or_else(|| Refused("no CA key".into()))?;
            let dir = self.now_dir();
            issuer.admit(&mut admin, &dir, ask, now_unix())?
        };
        // Remember the token is used before anyone hears of the certificate.
        self.ctx
            .state
            .save_admin(&admin)
            .map_err(|e| Refused(format!("the admin cannot save its state: {e:#}")))?;
        self.admin = Some(admin);
        Ok(cert.to_bytes())
    }

    /// Handles an API command; `true` when the member loop must end (left the network).
    async fn command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Init(_, reply) | Command::Join(_, reply) => {
                let _ = reply.send(Err(ApiFailure::conflict(format!(
                    "this host is already member {} of network {}; run `overlayctl leave` first",
                    self.me.node, self.net.network
                ))));
                false
            }
            Command::Token(req, reply) => {
                let _ = reply.send(self.create_token(req));
                false
            }
            Command::Revoke(req, reply) => {
                let _ = reply.send(self.revoke(req).await);
                false
            }
            Command::Leave(reply) => {
                let result = self.leave().await;
                let ok = result.is_ok();
                let _ = reply.send(result);
                ok
            }
        }
    }

    fn create_token(
        &mut self,
        req: protocol::api::TokenRequest,
    ) -> Result<protocol::api::TokenResponse, ApiFailure> {
        let groups = req
            .groups
            .iter()
            .map(|g| {
                Name::new(g.as_str()).map_err(|e| ApiFailure::bad(format!("group {g:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let endpoint = SocketAddr::new(self.advertise, self.ctx.config.control.listen_port);
        let mut admin = self.admin.clone().ok_or_else(|| {
            ApiFailure::conflict(
                "this host is not an admin (it has no CA key); create tokens on the host that ran `overlayctl init`",
            )
        })?;
        let token = {
            let issuer = self
                .issuer()
                .ok_or_else(|| ApiFailure::conflict("no CA key"))?;
            issuer
                .create_token(&mut admin, vec![endpoint], req.ttl_s, groups, now_unix())
                .map_err(|e| ApiFailure::bad(e.0))?
        };
        self.ctx
            .state
            .save_admin(&admin)
            .map_err(|e| ApiFailure::internal(format!("{e:#}")))?;
        self.admin = Some(admin);
        Ok(protocol::api::TokenResponse {
            token: token.to_text().to_string(),
            expires_unix: token.expires_unix(),
        })
    }

    async fn revoke(
        &mut self,
        req: protocol::api::RevokeRequest,
    ) -> Result<protocol::api::RevokeResponse, ApiFailure> {
        let name = Name::new(req.name.as_str()).map_err(|e| ApiFailure::bad(format!("{e}")))?;
        if name == self.me.node {
            return Err(ApiFailure::bad(
                "an admin cannot revoke itself; revoke it from another admin, or `overlayctl leave`",
            ));
        }
        let revocation = {
            let issuer = self.issuer().ok_or_else(|| {
                ApiFailure::conflict(
                    "this host is not an admin (it has no CA key); revoke on the host that ran `overlayctl init`",
                )
            })?;
            let dir = self.now_dir();
            issuer
                .revoke(&dir, &name, now_unix())
                .map_err(|e| ApiFailure::not_found(e.0))?
        };
        let bytes = revocation.to_bytes();
        let applied = lock(&self.dir).apply_revocation(&revocation);
        if let Err(e) = applied {
            return Err(ApiFailure::internal(e.to_string()));
        }
        let _ = self.foca.add_broadcast(&tagged(TAG_REVOCATION, &bytes));
        let bundle = Bundle {
            members: Vec::new(),
            revocations: vec![bytes],
        };
        self.push_all(bundle).await;
        self.dirty = true;
        self.sync_peers().await;
        self.save();
        self.update_view();
        let r = revocation.revocation();
        tracing::info!(name = %r.node, serial = r.serial, "revoked a member");
        Ok(protocol::api::RevokeResponse {
            name: r.node.to_string(),
            serial: r.serial,
            public_key: r.wireguard_key,
        })
    }

    /// Sends `bundle` to every connected member and waits (bounded) for their acks.
    async fn push_all(&mut self, bundle: Bundle) {
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

    async fn leave(&mut self) -> Result<protocol::api::Status, ApiFailure> {
        self.net.record_version += 1;
        let record = own_record(
            &self.net,
            &self.ctx,
            self.advertise,
            MemberState::Left,
            &self.control_key,
        )
        .map_err(|e| ApiFailure::internal(format!("{e:#}")))?;
        let _ = lock(&self.dir).apply_member(&record, now_unix());
        let bytes = record.to_bytes();
        let _ = self.foca.add_broadcast(&tagged(TAG_MEMBER, &bytes));
        self.push_all(Bundle {
            members: vec![bytes],
            revocations: Vec::new(),
        })
        .await;
        let _ = self.foca.leave_cluster(&mut self.rt);
        self.drain();
        // Tunnels and routes to every member go.
        let keys: Vec<PublicKey> = self.routed.keys().copied().collect();
        for key in keys {
            self.unroute(&key).await;
        }
        self.net.left = true;
        if let Err(e) = self.ctx.state.save_network(&self.net) {
            tracing::warn!(error = %format!("{e:#}"), "cannot save the state after leaving");
        }
        self.save();
        if let Some(endpoint) = self.ctx.endpoint.get() {
            endpoint.set_server_config(None);
        }
        for conn in self.conns.values() {
            conn.close(0u32.into(), b"left the network");
        }
        tracing::info!(network = %self.net.network, "left the network");
        let mut view = lock(&self.view);
        if let Some(m) = view.membership.as_mut() {
            m.left = true;
            m.member_count = 0;
        }
        view.members.clear();
        Ok(view.status_stub())
    }

    /// Sends what foca queued and schedules its timers; acts on its notifications.
    fn drain(&mut self) {
        while let Some((dst, bytes)) = self.rt.to_send() {
            match self.addr_of_node(dst.node) {
                Some(addr) => match self.conns.get(&addr) {
                    Some(conn) => {
                        if let Err(e) = conn.send_datagram(bytes) {
                            tracing::debug!(%addr, error = %e, "gossip datagram not sent");
                        }
                    }
                    None => self.connect(addr),
                },
                None => tracing::debug!(node = dst.node, "no address for a gossip target"),
            }
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.timers.add(after, timer);
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

    /// Anti-entropy: swap directories with one random connected (or known) member.
    fn full_sync(&mut self) {
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
    fn rejoin(&mut self) {
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

    fn housekeeping(&mut self) {
        if self.ctx.config.control.advertise.is_none() {
            self.follow_address();
        }
        let expired = lock(&self.dir).expire(now_unix());
        if !expired.is_empty() {
            tracing::info!(members = ?expired, "certificates expired; their tunnels are closed");
            self.dirty = true;
        }
        self.update_view();
    }

    /// This host moved (a new underlay address, found as the source address towards another
    /// member): publish a new record so members and restarts reach it at the new address.
    fn follow_address(&mut self) {
        let towards = {
            let dir = self.now_dir();
            dir.live_members()
                .filter(|m| *m.name != self.me.node)
                .find_map(|m| m.endpoints.first().copied())
        };
        let Some(towards) = towards else { return };
        let Ok(ip) = super::detect_address(Some(towards)) else {
            return;
        };
        if ip == self.advertise {
            return;
        }
        tracing::info!(old = %self.advertise, new = %ip, "this host's underlay address changed; announcing it");
        self.advertise = ip;
        self.net.record_version += 1;
        if let Err(e) = self.ctx.state.save_network(&self.net) {
            tracing::warn!(error = %format!("{e:#}"), "cannot save the state");
        }
        let record = match own_record(
            &self.net,
            &self.ctx,
            ip,
            MemberState::Alive,
            &self.control_key,
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot announce the new address");
                return;
            }
        };
        let _ = lock(&self.dir).apply_member(&record, now_unix());
        let bytes = record.to_bytes();
        let _ = self.foca.add_broadcast(&tagged(TAG_MEMBER, &bytes));
        let bundle = Bundle {
            members: vec![bytes],
            revocations: Vec::new(),
        };
        for conn in self.conns.values() {
            tokio::spawn(push(conn.clone(), bundle.clone(), self.events_tx.clone()));
        }
        self.dirty = true;
    }

    /// Brings the router and kernel routes in line with the directory and liveness.
    async fn sync_peers(&mut self) {
        let desired: Vec<(PeerSpec, u32)> = {
            let dir = self.now_dir();
            dir.live_members()
                .filter(|m| *m.name != self.me.node)
                .filter(|m| {
                    self.liveness
                        .get(&(m.serial as u32))
                        .is_none_or(|(_, up)| *up)
                })
                .map(|m| {
                    (
                        PeerSpec {
                            public_key: *m.wireguard_key,
                            name: Some(m.name.to_string()),
                            endpoint: m.endpoints.first().copied(),
                            subnets: m.subnets.to_vec(),
                            persistent_keepalive: None,
                        },
                        m.serial as u32,
                    )
                })
                .collect()
        };
        let wanted: HashSet<PublicKey> = desired.iter().map(|(s, _)| s.public_key).collect();
        let gone: Vec<PublicKey> = self
            .routed
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for key in gone {
            self.unroute(&key).await;
        }
        for (spec, _) in desired {
            let key = spec.public_key;
            let subnets = spec.subnets.clone();
            match self.ctx.router.upsert_peer(spec) {
                Ok(Upserted::Added { .. }) => {
                    self.route(&key, &subnets).await;
                    let udp = self.ctx.udp.clone();
                    let mut buf = [0u8; crate::router::MIN_BUFFER_LEN];
                    self.ctx.router.initiate(&key, &mut buf, &mut |dst, bytes| {
                        let _ = udp.send_to(dst, bytes);
                    });
                }
                Ok(Upserted::Updated {
                    subnets_changed: true,
                    ..
                }) => {
                    self.unroute_kernel(&key).await;
                    self.route(&key, &subnets).await;
                }
                Ok(_) => {
                    self.routed.entry(key).or_insert(subnets);
                }
                Err(e) => self.throttle.warn("cannot add a member's tunnel", &e),
            }
        }
    }

    async fn route(&mut self, key: &PublicKey, subnets: &[IpNet]) {
        let mut routes = self.ctx.routes.lock().await;
        for net in subnets {
            if let Err(e) = routes.add(*net, self.ctx.if_index, self.ctx.address).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot add a member's route");
            }
        }
        self.routed.insert(*key, subnets.to_vec());
    }

    async fn unroute_kernel(&mut self, key: &PublicKey) {
        if let Some(subnets) = self.routed.remove(key) {
            let mut routes = self.ctx.routes.lock().await;
            for net in subnets {
                routes.remove(net).await;
            }
        }
    }

    async fn unroute(&mut self, key: &PublicKey) {
        self.ctx.router.remove_peer(key);
        self.unroute_kernel(key).await;
    }

    fn save(&self) {
        let dir = self.now_dir().clone();
        if let Err(e) = self.ctx.state.save_directory(&dir) {
            tracing::warn!(error = %format!("{e:#}"), "cannot save the directory");
        }
    }

    fn update_view(&mut self) {
        let dir = self.now_dir().clone();
        let foca_states: HashMap<u32, foca::State> = self
            .foca
            .iter_membership_state()
            .map(|m| (m.id().node, m.state()))
            .collect();
        let mut members = Vec::new();
        let mut alive = 0;
        for (m, state) in dir.all_members() {
            if *m.name == self.me.node {
                continue;
            }
            let node = m.serial as u32;
            let view_state = match state {
                MemberState::Left => ViewState::Left,
                MemberState::Alive => match (foca_states.get(&node), self.liveness.get(&node)) {
                    (_, Some((_, false))) => ViewState::Down,
                    (Some(foca::State::Suspect), _) => ViewState::Suspect,
                    _ => ViewState::Alive,
                },
            };
            if matches!(view_state, ViewState::Alive | ViewState::Suspect) {
                alive += 1;
            }
            members.push(MemberView {
                name: m.name.to_string(),
                public_key: *m.wireguard_key,
                subnets: m.subnets.to_vec(),
                endpoint: m.endpoints.first().copied(),
                state: view_state,
            });
        }
        for r in dir.revocations() {
            let r = r.revocation();
            if !members.iter().any(|m| m.public_key == r.wireguard_key) {
                members.push(MemberView {
                    name: r.node.to_string(),
                    public_key: r.wireguard_key,
                    subnets: Vec::new(),
                    endpoint: None,
                    state: ViewState::Revoked,
                });
            }
        }
        let mut view = lock(&self.view);
        view.membership = Some(protocol::api::Membership {
            network: self.net.network.to_string(),
            cidr: self.net.cidr,
            ranges: self.net.ranges.clone(),
            ca_fingerprint: self.net.ca.fingerprint().to_string(),
            name: self.me.node.to_string(),
            subnets: self.me.subnets.clone(),
            groups: self.me.groups.iter().map(|g| g.to_string()).collect(),
            certificate_expires_unix: self.me.not_after,
            admin: self.ca_key.is_some(),
            control_port: self.ctx.config.control.listen_port,
            member_count: alive + 1,
            left: false,
        });
        view.members = members;
    }
}

fn random_index(len: usize) -> usize {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    (u64::from_le_bytes(b) % len as u64) as usize
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// This host's member record at the current version.
fn own_record(
    net: &NetworkState,
    ctx: &Ctx,
    advertise: IpAddr,
    state: MemberState,
    key: &SigningKey,
) -> anyhow::Result<SignedMemberRecord> {
    MemberRecord {
        certificate: net.certificate.clone(),
        version: net.record_version,
        state,
        control_port: ctx.config.control.listen_port,
        endpoints: vec![SocketAddr::new(advertise, ctx.config.listen_port)],
    }
    .sign(key)
    .map_err(|e| anyhow::anyhow!("cannot sign this host's record: {e}"))
}

/// Pushes records to one member and waits for its ack.
async fn push(conn: quinn::Connection, bundle: Bundle, _tx: mpsc::UnboundedSender<Event>) {
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
async fn accept_loop(endpoint: quinn::Endpoint, tx: mpsc::UnboundedSender<Event>) {
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
async fn serve_connection(
    conn: quinn::Connection,
    addr: SocketAddr,
    remote: Remote,
    tx: mpsc::UnboundedSender<Event>,
    joiner: bool,
) {
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
                    if tx.send(Event::Datagram(sender, bytes)).is_err() {
                        break;
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
                            let request: Request = msg::read(&mut recv).await?;
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
