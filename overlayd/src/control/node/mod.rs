//! A running member: the driver around the membership core ([`core`]), as `quinn` is
//! around `quinn-proto`. The core decides (SWIM through foca, records, revocation, who is
//! routed); this module owns what it cannot: QUIC connections and streams, the tasks that
//! serve them, the state directory, the router and kernel routes, the clock, and the view
//! the API reads. It feeds the core events with the time and carries out the actions the
//! core queues (`Member::execute`).
//!
//! One task owns the core and everything here ([`Member::run`]); connections, streams and
//! the QUIC accept loop are small tasks that only move bytes and hand events to it, so no
//! state is shared but the directory (read by the TLS revocation check and by the check of
//! bundles off the member task; only the core writes it).
//!
//! This file holds [`Member`] itself: starting it, its loop, the events the connection
//! tasks send it, the actions it carries out, and API commands. The rest is split by
//! concern:
//!
//! - `core`: the membership core, without I/O.
//! - `accept`: the accept loop; handshakes, each in a task of its own with a deadline,
//!   capped in all and per source address, with QUIC address validation over the caps.
//! - `inbound`: what one member may make this host hold (per-member queues and limits).
//! - `net`: QUIC connections and streams: opening, serving, pushes and full syncs.
//! - `peers`: the router and kernel routes kept in step with what the core routes.
//! - `watch`: the security events of the control plane (members down and up, refused
//!   joins, revoked or expired certificates knocking, this host's certificate expiring).

mod accept;
mod admins;
pub mod core;
mod inbound;
mod net;
mod peers;
mod rotate;
mod saver;
mod watch;

use crate::router::{ActivePolicy, KnownKey};
use crate::util::lock;
use protocol::api::{PolicyShown, RuleCount};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use keys::PublicKey;
use protocol::records::Directory;
use tokio::sync::{mpsc, oneshot};

use self::core::{
    Action, Answer, CloseReason, Core, LinkId, Now, Origin, Settings, Start, Throttle,
};
use super::admin::Refused;
use super::msg::{Bundle, Request, Response};
use super::state::NetworkState;
use super::tls::{self, TlsIdentity};
use super::{ApiFailure, Command, Ctx, Traffic, View, now_unix};
use accept::accept_loop;
use inbound::FairQueue;
use net::{Gossip, IDLE_TIMEOUT, Inbound, KEEPALIVE, Peer, push, serve_connection};

/// How long a push that must be out before what follows (a revoke's answer, a leave) may
/// take to be acknowledged, for every member together.
const PUSH_WAIT: Duration = Duration::from_secs(2);
/// The QUIC close code of a connection closed for a newer one of the same member.
const CLOSE_REPLACED: u32 = 0x11;

/// What the connection and stream tasks tell the member task.
enum Event {
    Connected(SocketAddr, quinn::Connection),
    ConnectFailed(SocketAddr),
    /// A connection's serving task ended: its address, and its member link.
    Closed(SocketAddr, Option<LinkId>),
    /// A request on a stream, from the member link it came on (`None`: a joiner).
    Request(Option<LinkId>, Box<Request>, oneshot::Sender<Response>),
    Bundle(Bundle),
    /// The member on this link saw this host's datagrams come from this address.
    Seen(LinkId, SocketAddr),
    /// The answer to a `Request::Renew` on this link.
    Renewed(LinkId, Result<Response, String>),
    /// The answer of this member (by number) to a `Request::Reissued`.
    Delivered(u32, Result<Response, String>),
    /// A member's admin records (its answer to `Request::Admins`).
    Admins(Vec<Vec<u8>>),
    /// The answer to a `Request::Rekey` on this link.
    Rekeyed(LinkId, Result<Response, String>),
}

/// The keys of `dir`'s members and revocations, for the router to tell a member it does
/// not route (down, just admitted) and a revoked one from a stranger.
fn known_keys(dir: &Mutex<Directory>) -> HashMap<PublicKey, KnownKey> {
    let dir = lock(dir);
    let mut known: HashMap<PublicKey, KnownKey> = dir
        .all_members()
        .map(|(m, _)| (*m.wireguard_key, KnownKey::Member(m.name.to_string())))
        .collect();
    for r in dir.revocations() {
        let r = r.revocation();
        known.insert(r.wireguard_key, KnownKey::Revoked(r.node.to_string()));
    }
    known
}

/// The members this host may relay through, best first: those named relays, then those
/// with a public address (their record lists only their own address: a member behind a
/// NAT publishes the address the others see first, its own after), each group by name;
/// never one that refuses (`relay = false`). The router tries them in this order (none
/// when this host is one of them itself) and takes datagrams "from a relay" only from
/// them.
///
/// Once any member's certificate has the group [`RELAY_GROUP`], only those members relay:
/// the CA then decides which hosts may carry others' traffic (a member that names itself
/// a relay, or any public member, could otherwise take the traffic of pairs behind NATs
/// and drop it).
pub(crate) fn relays(dir: &Mutex<Directory>) -> Vec<PublicKey> {
    let dir = lock(dir);
    let certified = |m: &protocol::records::LiveMember<'_>| {
        m.groups.iter().any(|g| g.as_str() == RELAY_GROUP) && m.relay != Some(false)
    };
    let pinned = dir.live_members().any(|m| certified(&m));
    let mut chosen: Vec<(bool, String, PublicKey)> = dir
        .live_members()
        .filter(|m| {
            if pinned {
                certified(m)
            } else {
                m.relay == Some(true) || (m.relay.is_none() && m.endpoints.len() == 1)
            }
        })
        .map(|m| (m.relay != Some(true), m.name.to_string(), *m.wireguard_key))
        .collect();
    chosen.sort();
    chosen.into_iter().map(|(_, _, key)| key).collect()
}

/// The certificate group that makes a member a relay, given by an admin
/// (`token create --groups relay`, `node groups NAME relay`); see [`relays`].
pub(crate) const RELAY_GROUP: &str = "relay";

/// What the core takes from `config`.
fn settings(config: &crate::config::Config) -> Settings {
    let control = &config.control;
    Settings {
        control_port: config.control_port(),
        listen_port: config.listen_port,
        certificate_lifetime_s: control.certificate_lifetime(),
        follow_address: control.advertise.is_none(),
        sync_interval: Duration::from_millis(control.sync_interval_ms),
        rejoin_interval: Duration::from_millis(control.rejoin_interval_ms),
        membership: control.membership(),
        relay: control.relay,
        max_names: config.dns.max_names,
        key_rotation_s: control
            .key_rotation_days
            .map(|days| u64::from(days) * 86_400),
    }
}

/// Now, on both clocks: the only place the member reads them.
fn now() -> Now {
    Now {
        instant: Instant::now(),
        unix: now_unix(),
    }
}

/// A running member.
pub struct Member {
    ctx: Arc<Ctx>,
    view: Arc<Mutex<View>>,
    core: Core,
    /// Every member connection being served, by the link the core knows it as.
    conns: HashMap<LinkId, quinn::Connection>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    /// Gossip datagrams from every connection, in a bounded queue per member drained in
    /// turn: a member that sends faster than this host handles loses its own datagrams
    /// (SWIM tolerates loss), not memory, and not the others' turn.
    datagrams_tx: Inbound,
    datagrams_rx: FairQueue<Gossip>,
    client_config: quinn::ClientConfig,
    /// What the TLS configs are made of, to make them again with a renewed certificate.
    identity: TlsIdentity,
    check: tls::PeerCheck,
    transport: Arc<quinn::TransportConfig>,
    /// Dynamic peers in the router: key → subnets routed in the kernel.
    routed: HashMap<PublicKey, Vec<IpNet>>,
    accept_task: tokio::task::JoinHandle<()>,
    throttle: Throttle,
    /// Writes the directory off this task.
    saver: saver::Saver,
    /// What becomes a security event.
    watch: watch::Watch,
    /// This host's container names from the Docker plugin.
    names: tokio::sync::watch::Receiver<crate::docker::names::LocalNames>,
    /// Punches fired at an agreed time (a rendezvous), by the member's control address:
    /// a connection with it that comes up soon after is logged as their result.
    punched: HashMap<SocketAddr, Instant>,
    /// A key rotation asked of an admin, with the operator waiting for it (if one is).
    rotating: Option<Option<super::Reply<protocol::api::RotateKeyResponse>>>,
}

/// How soon after a punch a connection with its member counts as the punch's.
const PUNCH_CREDIT: Duration = Duration::from_secs(2);

impl Drop for Member {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Member {
    /// Starts as a member of the network `net` describes, with `directory` (just made by
    /// `init` or a join) or, without it, the one in the state directory.
    pub async fn start(
        ctx: Arc<Ctx>,
        net: NetworkState,
        directory: Option<Directory>,
        view: Arc<Mutex<View>>,
    ) -> anyhow::Result<Member> {
        let now = now();
        // During a CA transition a certificate not renewed yet is of the retiring CA.
        let issuer =
            core::own_certificate_ca(&net, now.unix).map_err(|e| anyhow::anyhow!("{e}"))?;
        let me = net
            .certificate
            .verify(&issuer, now.unix)
            .map_err(|e| match e {
                keys::CertError::Expired { .. } => match net.certificate.unverified_body() {
                    Ok(me) => anyhow::anyhow!("{}", core::expired_sentence(&me)),
                    Err(_) => anyhow::anyhow!("this host's certificate cannot be used: {e}"),
                },
                e => anyhow::anyhow!("this host's certificate cannot be used: {e}"),
            })?;
        let control_key = ctx.state.control_key()?;
        anyhow::ensure!(
            control_key.verifying_key() == me.control_key,
            "the control key in {} does not match this host's certificate; restore the key or join again",
            ctx.state.root().display()
        );
        rotate::recover_key_file(&ctx, &me.wireguard_key)?;
        let config = ctx.config();
        anyhow::ensure!(
            config.private_key.public_key() == me.wireguard_key,
            "private_key_file {} holds another WireGuard key than this host's certificate; restore the key or join again",
            config.private_key_file.display()
        );
        // A CA rotation cut short by a crash ends here (the membership names the CA).
        ctx.state.finish_ca_rotation(&net.ca)?;
        let admin = match ctx.state.ca_key()? {
            Some(ca) => Some((ca, ctx.state.admin()?)),
            None => None,
        };
        let mut directory = match directory {
            Some(dir) => dir,
            None => ctx.state.directory(&net.ca, &net.network)?,
        };
        if let Some(bytes) = &net.ca_transition
            && directory.ca_transition().is_none()
            && let Err(e) = directory.apply_transition_bytes(bytes, None)
        {
            tracing::warn!(error = %e, "the saved CA transition does not fit the saved directory");
        }
        let control = &config.control;
        let advertise = match control.advertise {
            Some(ip) => ip,
            None => {
                let towards = core::first_member_endpoint(&directory, &me.node)
                    .or_else(|| net.bootstrap.first().copied());
                super::detect_address(towards, &config.tun_name)?
            }
        };
        let settings = settings(&config);
        let mut seed = [0u8; 8];
        getrandom::getrandom(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let identity = TlsIdentity {
            ca: net.ca,
            network: net.network.clone(),
            certificate: net.certificate.clone(),
            control_key: control_key.clone(),
            previous_ca: directory.trust().previous,
        };
        let core = Core::new(
            Start {
                net,
                me,
                directory,
                control_key,
                wireguard_key: config.private_key.clone(),
                admin,
                advertise,
                settings,
                seed: u64::from_le_bytes(seed),
            },
            now,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut core = core;
        core.load_admin_records(&ctx.state.admins()?, now);
        // A new SWIM generation on every start (see `Core::new`), saved before it is used.
        ctx.state.save_network(core.network())?;
        let dir = core.directory();
        let check = watch::peer_check(dir.clone(), ctx.router.events.clone());
        let transport = Arc::new(tls::transport_config(KEEPALIVE, IDLE_TIMEOUT));
        let server = tls::server_config(&identity, check.clone(), transport.clone())?;
        let client_config = tls::client_config(&identity, check.clone(), transport.clone())?;
        let endpoint = ctx.endpoint()?;
        endpoint.set_server_config(Some(server));
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let datagrams_tx = Inbound::new(dir, ctx.traffic.clone());
        let datagrams_rx = datagrams_tx.gossip.clone();
        let accept_task = tokio::spawn(accept_loop(
            endpoint.clone(),
            events_tx.clone(),
            datagrams_tx.clone(),
        ));
        let saver = saver::Saver::start(ctx.state.clone());
        let watch = watch::Watch::new(ctx.router.events.clone());
        let names = ctx.local_names.clone();
        let mut member = Member {
            names,
            ctx,
            view,
            core,
            conns: HashMap::new(),
            events_tx,
            events_rx,
            datagrams_tx,
            datagrams_rx,
            client_config,
            identity,
            check,
            transport,
            routed: HashMap::new(),
            accept_task,
            throttle: Throttle::default(),
            saver,
            watch,
            punched: HashMap::new(),
            rotating: None,
        };
        // This host's overlay address comes from its certificate unless the config sets one;
        // before the routes to the members, which prefer it as source.
        let subnets = member.core.certificate().subnets.clone();
        member.ctx.apply_address(&subnets).await;
        // The DNS address (`crate::dns`) with it, so the TUN's addresses are all there once
        // the member runs; the DNS task binds to it when it sees the membership.
        let config = member.ctx.config();
        if config.dns.enabled
            && let Some(dns) = config
                .dns
                .address
                .or_else(|| crate::dns::default_address(member.core.network().cidr))
            && let Err(e) = member
                .ctx
                .routes
                .lock()
                .await
                .add_address(member.ctx.if_index, std::net::IpAddr::V4(dns))
                .await
        {
            tracing::warn!(error = %format!("{e:#}"), "cannot put the DNS address on the TUN");
        }
        // This host's names as the plugin knows them now, published even when there are
        // none: the others may hold a set from before a restart whose containers are gone.
        let names = Vec::clone(&member.names.borrow_and_update());
        member.core.set_names(names, now);
        // Routes from the directory, the view, and a connection to every known member.
        member.execute().await;
        let (net, me) = (member.core.network(), member.core.certificate());
        tracing::info!(
            network = %net.network,
            name = %me.node,
            subnets = ?me.subnets,
            generation = net.generation,
            admin = member.core.is_admin(),
            advertise = %member.core.advertise(),
            "control plane is up"
        );
        Ok(member)
    }

    /// Runs until this host leaves the network (`true`) or the daemon shuts down and the
    /// command channel closes (`false`).
    pub async fn run(mut self, commands: &mut mpsc::Receiver<Command>) -> bool {
        loop {
            let timeout = self.core.poll_timeout();
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else {
                        self.saver.flush().await;
                        return false;
                    };
                    if self.command(cmd).await {
                        return true;
                    }
                }
                Some(ev) = self.events_rx.recv() => self.event(ev),
                Ok(()) = self.names.changed() => {
                    let names = Vec::clone(&self.names.borrow_and_update());
                    self.core.set_names(names, now());
                }
                gossip = self.datagrams_rx.recv() => {
                    self.core.handle_datagram(gossip.link, &gossip.bytes, now());
                }
                _ = tokio::time::sleep_until(timeout.into()) => self.core.handle_timeout(now()),
            }
            self.execute().await;
        }
    }

    fn event(&mut self, ev: Event) {
        let now = now();
        match ev {
            Event::Connected(addr, conn) => {
                let peer = tls::remote_node(&conn);
                let inbound = conn.side().is_server();
                match self.core.handle_connected(addr, peer, inbound, now) {
                    Ok((link, peer)) => {
                        self.punched.retain(|_, at| at.elapsed() <= PUNCH_CREDIT);
                        if self.punched.remove(&addr).is_some() {
                            tracing::info!(
                                peer = %peer.node,
                                endpoint = %addr,
                                "connected to a member by a punch at the agreed time (a rendezvous through another member)"
                            );
                        }
                        // One port: the QUIC connection just went through whatever NATs
                        // are between (both sides dial each other as soon as they know the
                        // other's published address: a simultaneous open, retried by QUIC);
                        // the tunnel's datagrams take the same addresses and ports, so its
                        // handshake goes now rather than at its next retry.
                        if self.ctx.config.load().one_port() {
                            self.ctx.router.initiate_and_send(
                                crate::router::Initiate::Punch(&peer.wireguard_key),
                                &*self.ctx.udp,
                            );
                        }
                        tokio::spawn(serve_connection(
                            conn.clone(),
                            addr,
                            Peer::Member(link, Box::new(peer)),
                            self.events_tx.clone(),
                            self.datagrams_tx.clone(),
                        ));
                        self.conns.insert(link, conn);
                    }
                    // Revoked or expired since its handshake: closed, not served.
                    Err(reason) => conn.close(tls::CLOSE_NOT_AUTHORIZED, reason.as_bytes()),
                }
            }
            Event::ConnectFailed(addr) => self.core.handle_connect_failed(addr),
            Event::Closed(addr, link) => {
                if let Some(link) = link {
                    self.conns.remove(&link);
                    self.core.handle_closed(addr, link);
                }
            }
            Event::Request(link, request, reply) => {
                // A connection the peer opened follows it when it moves (QUIC migration):
                // the address it answers `Seen` with is where its datagrams come from now.
                if let Some(link) = link
                    && let Some(conn) = self.conns.get(&link)
                {
                    self.core.handle_link_moved(link, conn.remote_address());
                }
                let request = match (link, *request) {
                    (Some(link), super::msg::Request::AdminKey { key, admins }) => {
                        self.take_admin_key(link, key, admins, reply);
                        return;
                    }
                    (_, request) => Box::new(request),
                };
                let from = link.map_or(Origin::Joiner, Origin::Member);
                let asked = match (from, &*request) {
                    (Origin::Joiner, Request::Join { name, .. }) => Some(name.to_string()),
                    _ => None,
                };
                let response = match self.core.handle_request(from, *request, now) {
                    Answer::Reply(response) => response,
                    // From a member whose certificate lapsed after the request was sent:
                    // no answer (the reply is dropped), and its connections are closed.
                    Answer::Drop => return,
                    // Remember the token is used before anyone hears of the certificate.
                    Answer::AfterSave(change) => match self.ctx.state.save_admin(change.admin()) {
                        Ok(()) => {
                            let admission = self.core.commit(change);
                            match &admission.response {
                                Response::Renewed { .. } => tracing::info!(
                                    name = %admission.name,
                                    "renewed a member's certificate"
                                ),
                                Response::Admins(_) => tracing::info!(
                                    from = %admission.name,
                                    "took token records of another admin"
                                ),
                                _ => {
                                    tracing::info!(name = %admission.name, "admitted a new member")
                                }
                            }
                            admission.response
                        }
                        Err(e) => self.core.refuse_join(
                            Refused(format!("the admin cannot save its state: {e:#}")),
                            now,
                        ),
                    },
                };
                if from == Origin::Joiner
                    && let Response::Refused(reason) = &response
                {
                    self.watch.join_refused(asked.as_deref(), reason);
                }
                // A token used: its used record reaches the other admins before the joiner
                // hears it was admitted (`control::admins::tokens`).
                if from == Origin::Joiner
                    && let (Response::Joined { .. }, Some(name)) = (&response, &asked)
                    && let Ok(name) = keys::Name::new(name.as_str())
                {
                    let (admins, sharing) = self.share_tokens(self.core.used_token_records(&name));
                    if admins > 0 {
                        tokio::spawn(async move {
                            let took = sharing.await;
                            tracing::info!(
                                admins,
                                took,
                                "sent a used token's record to the other admins"
                            );
                            let _ = reply.send(response);
                        });
                        return;
                    }
                }
                let _ = reply.send(response);
            }
            Event::Bundle(bundle) => self.core.handle_bundle(&bundle, now),
            Event::Seen(link, addr) => self.core.handle_seen(link, addr, now),
            Event::Renewed(link, answer) => self.core.handle_renewed(link, answer, now),
            Event::Delivered(number, answer) => self.core.handle_delivered(number, answer, now),
            Event::Admins(records) => self.core.handle_admin_records(&records, now),
            Event::Rekeyed(link, answer) => self.core.handle_rekeyed(link, answer, now),
        }
    }

    /// Carries out what the core asked for, in order, until it asks for nothing more.
    async fn execute(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Connect(addr) => self.connect(addr),
                Action::Policy(policy) => {
                    let capacity = self.ctx.config().control.policy_flows;
                    self.ctx.router.set_policy(policy.map(|p| {
                        ActivePolicy::new(
                            p.policy,
                            p.version,
                            p.local_name,
                            p.local_groups,
                            capacity,
                        )
                    }));
                }
                Action::Transmit { link, bytes } => {
                    if let Some(conn) = self.conns.get(&link) {
                        let len = bytes.len();
                        match conn.send_datagram(bytes) {
                            Ok(()) => Traffic::add(&self.ctx.traffic.gossip_sent, len),
                            Err(e) => {
                                let addr = conn.remote_address();
                                tracing::debug!(%addr, error = %e, "gossip datagram not sent");
                            }
                        }
                    }
                }
                Action::Push {
                    links,
                    bundle,
                    wait,
                } => {
                    let conns = links
                        .iter()
                        .filter_map(|link| Some((*link, self.conns.get(link)?.clone())));
                    let traffic = &self.ctx.traffic;
                    // What the member saw of this host comes back as an event.
                    let pushed = |(link, conn), tx: mpsc::UnboundedSender<Event>| {
                        let pushing = push(conn, bundle.clone(), traffic.clone());
                        async move {
                            if let Some(seen) = pushing.await {
                                let _ = tx.send(Event::Seen(link, seen));
                            }
                        }
                    };
                    if wait {
                        let pushes = conns.map(|c| pushed(c, self.events_tx.clone()));
                        let all = futures::future::join_all(pushes);
                        let _ = tokio::time::timeout(PUSH_WAIT, all).await;
                    } else {
                        for c in conns {
                            tokio::spawn(pushed(c, self.events_tx.clone()));
                        }
                    }
                }
                Action::Sync { link, bundle } => {
                    self.exchange_admins(link);
                    if let Some(conn) = self.conns.get(&link) {
                        net::sync(
                            conn.clone(),
                            bundle,
                            &self.datagrams_tx,
                            self.events_tx.clone(),
                        );
                    }
                }
                Action::Close { link, reason } => {
                    if let Some(conn) = self.conns.remove(&link) {
                        match reason {
                            CloseReason::Lapsed(why) => {
                                conn.close(tls::CLOSE_NOT_AUTHORIZED, why.as_bytes());
                            }
                            CloseReason::Replaced => {
                                conn.close(CLOSE_REPLACED.into(), b"replaced by a newer connection")
                            }
                            CloseReason::Left => conn.close(0u32.into(), b"left the network"),
                        }
                    }
                }
                Action::Peers(desired) => {
                    self.sync_peers(desired).await;
                    self.ctx
                        .router
                        .set_known_keys(known_keys(&self.core.directory()));
                    self.ctx.router.set_relays(relays(&self.core.directory()));
                }
                Action::SaveNetwork(net) => {
                    if let Err(e) = self.ctx.state.save_network(&net) {
                        let error = format!("{e:#}");
                        if net.left {
                            tracing::warn!(%error, "cannot save the state after leaving");
                        } else {
                            tracing::warn!(%error, "cannot save the state");
                        }
                    }
                }
                Action::SaveDirectory(dir) => self.saver.save(dir),
                Action::View(view) => {
                    let mut shown = lock(&self.view);
                    self.watch.view(&shown, &view, now_unix());
                    *shown = view;
                }
                Action::Renew { link } => match self.conns.get(&link) {
                    Some(conn) => {
                        let (conn, tx) = (conn.clone(), self.events_tx.clone());
                        let traffic = self.ctx.traffic.clone();
                        tokio::spawn(async move {
                            let answer = net::ask(conn, Request::Renew, traffic).await;
                            let _ = tx.send(Event::Renewed(link, answer));
                        });
                    }
                    None => {
                        self.core
                            .handle_renewed(link, Err("the connection closed".into()), now())
                    }
                },
                Action::Rekey { link, request } => match self.conns.get(&link) {
                    Some(conn) => {
                        let (conn, tx) = (conn.clone(), self.events_tx.clone());
                        let traffic = self.ctx.traffic.clone();
                        tokio::spawn(async move {
                            let answer = net::ask(conn, request, traffic).await;
                            let _ = tx.send(Event::Rekeyed(link, answer));
                        });
                    }
                    None => {
                        self.core
                            .handle_rekeyed(link, Err("the connection closed".into()), now())
                    }
                },
                Action::WireguardKey(key) => self.take_new_key(key),
                Action::RotationDone(result) => self.rotation_done(result),
                Action::RotateKey => Box::pin(self.start_rotation(None)).await,
                Action::Deliver {
                    link,
                    number,
                    certificate,
                } => match self.conns.get(&link) {
                    Some(conn) => {
                        let (conn, tx) = (conn.clone(), self.events_tx.clone());
                        let traffic = self.ctx.traffic.clone();
                        tokio::spawn(async move {
                            let request = Request::Reissued(certificate);
                            let answer = net::ask(conn, request, traffic).await;
                            let _ = tx.send(Event::Delivered(number, answer));
                        });
                    }
                    None => self.core.handle_delivered(
                        number,
                        Err("the connection closed".into()),
                        now(),
                    ),
                },
                Action::Trust { ca, previous } => {
                    self.identity.ca = ca;
                    self.identity.previous_ca = previous;
                    self.present_identity();
                }
                Action::Identity(certificate) => {
                    self.identity.certificate = certificate;
                    self.present_identity();
                }
                Action::SaveAdmin(admin) => {
                    if let Err(e) = self.ctx.state.save_admin(&admin) {
                        tracing::warn!(error = %format!("{e:#}"), "cannot save the admin's state");
                    }
                }
                Action::Ask { link, request } => {
                    if let Some(conn) = self.conns.get(&link) {
                        let (conn, traffic) = (conn.clone(), self.ctx.traffic.clone());
                        tokio::spawn(async move {
                            match net::ask(conn, request, traffic).await {
                                Ok(Response::Refused(why)) => {
                                    tracing::debug!(%why, "rendezvous refused")
                                }
                                Ok(_) => {}
                                Err(e) => tracing::debug!(error = %e, "rendezvous not sent"),
                            }
                        });
                    }
                }
                Action::Punch { addr, key } => {
                    // The agreed time: a fresh QUIC dial (an attempt under way may be one
                    // whose packets the far NAT dropped) and the tunnel's handshake, both
                    // from the one port, to the addresses of the member's record.
                    tracing::debug!(%addr, "punching at the agreed time");
                    self.punched.insert(addr, Instant::now());
                    self.connect(addr);
                    self.ctx
                        .router
                        .initiate_and_send(crate::router::Initiate::Punch(&key), &*self.ctx.udp);
                }
                Action::SaveAdmins(records) => {
                    if let Err(e) = self.ctx.state.save_admins(records) {
                        tracing::warn!(error = %format!("{e:#}"), "cannot save the admin records");
                    }
                }
                Action::DropAdmin => {
                    if let Err(e) = self.ctx.state.drop_ca_key() {
                        tracing::error!(error = %format!("{e:#}"), "this host was removed as an admin but cannot destroy its CA key; remove it by hand");
                    }
                }
                Action::DetectAddress { towards } => {
                    if let Ok(ip) =
                        super::detect_address(Some(towards), &self.ctx.config().tun_name)
                    {
                        self.core.handle_address(ip, now());
                    }
                }
            }
        }
    }

    /// Makes the TLS configs again from [`Member::identity`] (a renewed certificate, or
    /// the CAs trusted changed): new handshakes either way use them; open connections keep
    /// going (peers follow the renewal).
    fn present_identity(&mut self) {
        let id = &self.identity;
        let configs =
            tls::server_config(id, self.check.clone(), self.transport.clone()).and_then(|server| {
                let client = tls::client_config(id, self.check.clone(), self.transport.clone())?;
                Ok((server, client))
            });
        match (configs, self.ctx.endpoint()) {
            (Ok((server, client)), Ok(endpoint)) => {
                endpoint.set_server_config(Some(server));
                self.client_config = client;
            }
            (Err(e), _) | (_, Err(e)) => tracing::warn!(
                error = %format!("{e:#}"),
                "cannot present the renewed certificate in the control plane's TLS"
            ),
        }
    }

    /// Handles an API command; `true` when the member loop must end (left the network).
    async fn command(&mut self, cmd: Command) -> bool {
        let Some(cmd) = self.admin_command(cmd).await else {
            return false;
        };
        let now = now();
        match cmd {
            Command::Init(_, reply) | Command::Join(_, reply) => {
                let _ = reply.send(Err(ApiFailure::conflict(format!(
                    "this host is already member {} of network {}; run `overlayctl leave` first",
                    self.core.certificate().node,
                    self.core.network().network
                ))));
            }
            Command::Token(req, reply) => {
                let answer = self.core.create_token(req, now).and_then(|change| {
                    // The token is remembered before anyone sees it.
                    self.ctx
                        .state
                        .save_admin(change.admin())
                        .map_err(|e| ApiFailure::internal(format!("{e:#}")))?;
                    Ok(self.core.commit(change))
                });
                // Its record reaches the other admins before it is printed.
                if let Ok(shown) = &answer
                    && let Ok(token) = shown.token.parse::<keys::JoinToken>()
                {
                    let record = self.core.token_record(&token.secret_hash());
                    let (asked, sharing) = self.share_tokens(record.into_iter().collect());
                    let took = sharing.await;
                    if asked > 0 {
                        tracing::info!(
                            admins = asked,
                            took,
                            "sent a new token's record to the other admins"
                        );
                    }
                }
                let _ = reply.send(answer);
            }
            Command::Revoke(req, reply) => {
                let answer = self.core.revoke(req, now);
                self.execute().await;
                let _ = reply.send(answer);
            }
            Command::NodeGroups(req, reply) => {
                let answer = self.core.change_groups(&req, now).and_then(|change| {
                    // What was issued is remembered before anyone sees it.
                    self.ctx
                        .state
                        .save_admin(change.admin())
                        .map_err(|e| ApiFailure::internal(format!("{e:#}")))?;
                    self.core.commit_groups(change, now)
                });
                self.execute().await;
                let _ = reply.send(answer);
            }
            Command::CaRotate(req, reply) => {
                let transition_s = req
                    .transition_s
                    .unwrap_or(self.ctx.config().control.ca_transition_s);
                let answer =
                    self.core
                        .prepare_ca_rotation(transition_s, now)
                        .and_then(|rotation| {
                            // The new key is on disk before anything names it.
                            self.ctx
                                .state
                                .save_next_ca_key(rotation.key())
                                .map_err(|e| ApiFailure::internal(format!("{e:#}")))?;
                            self.core.commit_ca_rotation(rotation, now)
                        });
                // Saves the membership that names the new CA, then the key replaces the old.
                self.execute().await;
                if answer.is_ok()
                    && let Err(e) = self.ctx.state.finish_ca_rotation(&self.core.network().ca)
                {
                    tracing::error!(error = %format!("{e:#}"), "cannot replace the old CA key by the new one; it is done at the next start");
                }
                if answer.is_ok() {
                    self.hand_off_ca_key(None);
                }
                let _ = reply.send(answer);
            }
            Command::RotateKey(reply) => self.start_rotation(Some(reply)).await,
            Command::PolicySet(req, reply) => {
                let answer = self.core.set_policy(&req.text, now);
                self.execute().await;
                let _ = reply.send(answer.map(|shown| self.with_flows(shown)));
            }
            Command::PolicyShow(reply) => {
                let shown = self.with_flows(self.core.policy_shown());
                let _ = reply.send(Ok(shown));
            }
            Command::PolicyCheck(req, reply) => {
                let _ = reply.send(self.core.policy_check(&req));
            }
            Command::Reload(reply) => {
                let result = self
                    .core
                    .set_settings(settings(&self.ctx.config()), now)
                    .map_err(ApiFailure::internal);
                let _ = reply.send(result);
            }
            // Taken by `admin_command` above.
            Command::AdminAdd(_, reply) | Command::AdminRemove(_, reply) => {
                let _ = reply.send(Err(ApiFailure::internal("not handled")));
            }
            Command::Admins(reply) => {
                let _ = reply.send(Err(ApiFailure::internal("not handled")));
            }
            Command::Leave(reply) => {
                let result = self.leave(now).await;
                let _ = reply.send(result);
                // Left, even if the files could not all be removed (the answer says so).
                return self.core.network().left;
            }
        }
        false
    }

    /// `shown` with what the router counts of it: the flows tracked now and, when the
    /// router enforces this very version (it may lag the directory by an action), the
    /// flows each rule allowed and the packets denied.
    fn with_flows(&self, shown: PolicyShown) -> PolicyShown {
        let active = self
            .ctx
            .router
            .policy()
            .filter(|p| Some(p.version) == shown.version);
        let (allowed, denied) = match active {
            Some(p) => (
                p.allowed_by_line()
                    .into_iter()
                    .map(|(line, flows)| RuleCount { line, flows })
                    .collect(),
                p.denied(),
            ),
            None => (Vec::new(), 0),
        };
        PolicyShown {
            tracked_flows: self.ctx.router.tracked_flows() as u64,
            allowed,
            denied,
            ..shown
        }
    }

    async fn leave(&mut self, now: Now) -> Result<protocol::api::Status, ApiFailure> {
        self.core.leave(now)?;
        self.execute().await;
        // The last directory written before its file is removed, and none after.
        self.saver.flush().await;
        if let Some(endpoint) = self.ctx.endpoint.get() {
            endpoint.set_server_config(None);
        }
        // Nothing of the network stays in use: not this host's control key, which its
        // certificates name, and not its CA key (on an admin: moved to `former/`, not
        // destroyed, see `control::state`).
        let forgotten = self.ctx.state.forget_network();
        let mut view = lock(&self.view);
        if let Some(m) = view.membership.as_mut() {
            m.left = true;
            m.member_count = 0;
        }
        view.members.clear();
        let network = &self.core.network().network;
        match forgotten {
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), %network, "left the network but cannot remove its files");
                return Err(ApiFailure::internal(format!(
                    "left network {network}, but cannot remove its files from {}: {e:#}; remove them by hand",
                    self.ctx.state.root().display()
                )));
            }
            Ok(Some(ca)) => {
                tracing::warn!(%network, ca_key = %ca.display(), "left the network; this host was an admin: the network's CA key was moved aside, not destroyed (if no other admin holds it, keep it to recover the network)")
            }
            Ok(None) => {
                tracing::info!(%network, "left the network and removed its files (keys, certificate, directory)")
            }
        }
        Ok(view.status_stub())
    }
}
