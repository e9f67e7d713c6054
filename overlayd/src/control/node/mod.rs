//! A running member: SWIM (foca) over QUIC datagrams, records piggy-backed on it and
//! synced over streams, and the router and kernel routes kept in step with the directory
//! and the failure detector.
//!
//! One task owns everything here ([`Member::run`]); connections, streams and the QUIC
//! accept loop are small tasks that only move bytes and hand events to it, so no state is
//! shared but the directory (read by the TLS revocation check and by foca's broadcast
//! handler, both on paths this task drives or that only read).
//!
//! A certificate is checked at every turn, not only in the handshake: this task keeps a
//! registry of the member connections being served (`links`, with the certificate each
//! peer proved), closes those whose certificate a revocation or expiry has made void as
//! soon as it applies one, and takes a datagram or request only from a link still current.
//!
//! A member is routed when its record in the directory is alive, it is not this host, and
//! the failure detector has not declared its current identity down. A member that the
//! detector never heard of is routed too: after a restart, tunnels come back from the saved
//! directory before anyone answers.
//!
//! This file holds [`Member`] itself: starting it, its loop, the events the connection
//! tasks send it, and what foca asks of it. The rest is split by concern:
//!
//! - `gossip`: the records piggy-backed on SWIM (tags, keys, foca's broadcast handler),
//!   foca's timers, and throttled warnings.
//! - `accept`: the accept loop; handshakes, each in a task of its own with a deadline,
//!   capped in all and per source address, with QUIC address validation over the caps.
//! - `net`: QUIC connections and streams, the registry of member connections (closed when
//!   a certificate is revoked or expires); pushes, full syncs, rejoins.
//! - `actions`: API commands (token, revoke, leave) and requests from other hosts (join,
//!   sync, push).
//! - `peers`: the router and kernel routes kept in step with the directory; this host's
//!   own address followed.
//! - `view`: what the API shows.

mod accept;
mod actions;
mod gossip;
mod inbound;
mod net;
mod peers;
mod view;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec};
use ipnet::IpNet;
use keys::{CaKey, NodeCertificate, PublicKey, SigningKey};
use protocol::membership::{self, NodeId};
use protocol::records::{Directory, MemberRecord, MemberState, SignedMemberRecord};
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;
use tokio::sync::{mpsc, oneshot};

use super::msg::{Bundle, Request, Response};
use super::state::{AdminState, NetworkState};
use super::tls::{self, Remote, TlsIdentity};
use super::{Command, Ctx, View, now_unix};
use accept::accept_loop;
use gossip::{Changes, TAG_MEMBER, Timers, tagged};
pub use gossip::{RecordHandler, RecordKey, Throttle};
use inbound::FairQueue;
use net::{
    Gossip, IDLE_TIMEOUT, Inbound, KEEPALIVE, Link, LinkId, push, revoked_reason, serve_connection,
};

type Agent = Foca<NodeId, PostcardCodec, Pcg64Mcg, RecordHandler>;

/// What the connection and stream tasks tell the member task.
enum Event {
    /// A gossip datagram, and the SWIM node number (certificate serial) of the member whose
    /// certificate the connection proved.
    Datagram(u32, Bytes),
    Connected(SocketAddr, quinn::Connection),
    ConnectFailed(SocketAddr),
    /// A connection's serving task ended: its address, `stable_id` and member link.
    Closed(SocketAddr, usize, Option<LinkId>),
    /// A request on a stream, from the member link it came on (`None`: a joiner).
    Request(
        Option<LinkId>,
        Remote,
        Box<Request>,
        oneshot::Sender<Response>,
    ),
    Bundle(Bundle),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    /// Every member connection being served (also those `conns` no longer names), with the
    /// certificate its peer proved: closed when that certificate is revoked or expires.
    links: HashMap<LinkId, Link>,
    next_link: u64,
    events_tx: mpsc::UnboundedSender<Event>,
    /// Gossip datagrams from every connection, in a bounded queue per member drained in
    /// turn: a member that sends faster than this host handles loses its own datagrams
    /// (SWIM tolerates loss), not memory, and not the others' turn.
    datagrams_tx: Inbound,
    datagrams_rx: FairQueue<Gossip>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    client_config: quinn::ClientConfig,
    /// foca's latest identity per node number, and whether it is up.
    liveness: HashMap<u32, (NodeId, bool)>,
    /// Dynamic peers in the router: key → subnets routed in the kernel.
    routed: HashMap<PublicKey, Vec<IpNet>>,
    accept_task: tokio::task::JoinHandle<()>,
    throttle: Throttle,
    /// SWIM updates taken out of datagrams for naming a generation its member never signed.
    refused_updates: u64,
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
        // A new SWIM generation on every start, which this host's new record allows: its
        // version (see `NodeId`; others ignore updates for generations nobody signed).
        net.record_version = net.record_version.max(net.generation) + 1;
        net.generation = net.record_version;
        ctx.state.save_network(&net)?;
        let advertise = match ctx.config.control.advertise {
            Some(ip) => ip,
            None => {
                let towards = dir
                    .live_members()
                    .filter(|m| *m.name != me.node)
                    .find_map(|m| m.endpoints.first().copied())
                    .or_else(|| net.bootstrap.first().copied());
                super::detect_address(towards, &ctx.config.tun_name)?
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
                    Err(revoked_reason(cert))
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
        let datagrams_tx = Inbound::new(dir.clone());
        let datagrams_rx = datagrams_tx.gossip.clone();
        let accept_task = tokio::spawn(accept_loop(
            endpoint.clone(),
            events_tx.clone(),
            datagrams_tx.clone(),
        ));
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
            timers: Timers::default(),
            conns: HashMap::new(),
            connecting: HashSet::new(),
            links: HashMap::new(),
            next_link: 0,
            events_tx,
            datagrams_tx,
            datagrams_rx,
            events_rx,
            client_config,
            liveness: HashMap::new(),
            routed: HashMap::new(),
            accept_task,
            throttle: Throttle::default(),
            refused_updates: 0,
            dirty: true,
        };
        if let Err(e) = member
            .foca
            .add_broadcast(&tagged(TAG_MEMBER, &own.to_bytes()))
        {
            tracing::warn!(error = %e, "cannot gossip this host's record");
        }
        // This host's overlay address comes from its certificate unless the config sets one;
        // before the routes to the members, which prefer it as source.
        member.ctx.apply_address(&member.me.subnets).await;
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
                gossip = self.datagrams_rx.recv() => {
                    // Queued before its link lapsed: dropped with the link.
                    if self.is_current(gossip.link) {
                        self.event(Event::Datagram(gossip.node, gossip.bytes));
                    }
                }
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
                // A revocation may have come in: its member's connections go at once.
                self.close_lapsed();
                self.sync_peers().await;
                self.save();
                self.update_view();
            }
        }
    }

    fn now_dir(&self) -> std::sync::MutexGuard<'_, Directory> {
        lock(&self.dir)
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Datagram(sender, bytes) => {
                // SWIM messages name their sender; it must be the member the connection's
                // certificate proved, or one member could speak (suspect, refute, leave)
                // in another's name. What they say about others must name generations
                // those members signed, or one member could declare another down for good.
                let screened = {
                    let dir = lock(&self.dir);
                    membership::screen(&bytes, sender, |node| {
                        dir.all_members()
                            .find(|(m, _)| m.serial == u64::from(node))
                            .map(|(m, _)| m.version)
                    })
                };
                let screened = match screened {
                    Ok(screened) => screened,
                    Err(e @ membership::ScreenError::ForeignSender { .. }) => {
                        self.throttle
                            .warn("dropped gossip sent in another member's name", &e);
                        return;
                    }
                    Err(e) => {
                        self.throttle.warn("dropped a gossip datagram", &e);
                        return;
                    }
                };
                if !screened.refused.is_empty() {
                    self.refused_updates += screened.refused.len() as u64;
                    self.throttle.warn(
                        "ignored a SWIM update for a generation its member never signed",
                        &format_args!(
                            "node {sender} sent {:?} ({} so far)",
                            screened.refused, self.refused_updates
                        ),
                    );
                }
                if let Err(e) = self.foca.handle_data(&screened.datagram, &mut self.rt) {
                    self.throttle.warn("dropped a gossip datagram", &e);
                }
            }
            Event::Connected(addr, conn) => {
                self.connecting.remove(&addr);
                // Revoked or expired since its handshake: closed, not served.
                let Some(peer) = self.register(addr, &conn) else {
                    return;
                };
                let fresh = !self.conns.contains_key(&addr);
                tokio::spawn(serve_connection(
                    conn.clone(),
                    addr,
                    peer,
                    self.events_tx.clone(),
                    self.datagrams_tx.clone(),
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
            Event::Closed(addr, id, link) => {
                if self.conns.get(&addr).map(|c| c.stable_id()) == Some(id) {
                    self.conns.remove(&addr);
                }
                if let Some(link) = link {
                    self.links.remove(&link);
                }
            }
            Event::Request(link, remote, request, reply) => {
                // From a member whose certificate lapsed after the request was sent: no
                // answer (the reply is dropped), and its connections are closed.
                if let Some(link) = link
                    && !self.is_current(link)
                {
                    self.close_lapsed();
                    return;
                }
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
                    // The others take the new generation from third parties only once a
                    // record of ours allows it: sign one at once and spread it.
                    self.net.generation = id.generation;
                    self.net.record_version = self.net.record_version.max(id.generation - 1) + 1;
                    self.publish_own_record();
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
    fn publish_own_record(&mut self) {
        if let Err(e) = self.ctx.state.save_network(&self.net) {
            tracing::warn!(error = %format!("{e:#}"), "cannot save the state");
        }
        let record = match own_record(
            &self.net,
            &self.ctx,
            self.advertise,
            MemberState::Alive,
            &self.control_key,
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot publish this host's record");
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

    fn housekeeping(&mut self) {
        if self.ctx.config.control.advertise.is_none() {
            self.follow_address();
        }
        let expired = lock(&self.dir).expire(now_unix());
        if !expired.is_empty() {
            tracing::info!(members = ?expired, "certificates expired; their tunnels are closed");
            self.dirty = true;
        }
        // A certificate expires on its own clock, record or not: its connections go.
        self.close_lapsed();
        self.update_view();
    }

    fn save(&self) {
        let dir = self.now_dir().clone();
        if let Err(e) = self.ctx.state.save_directory(&dir) {
            tracing::warn!(error = %format!("{e:#}"), "cannot save the directory");
        }
    }
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
