//! The control plane: a network CA, join tokens, SWIM membership (foca) over QUIC, signed
//! records, revocation.
//!
//! - [`state`]: the state directory (what survives a restart).
//! - [`admin`]: what a CA holder does (tokens, admission, subnets, revocation), no I/O.
//! - `join`: the join client, what a host in no network does with a token.
//! - [`tls`]: QUIC with mutual authentication by CA-signed node certificates.
//! - [`msg`]: messages on QUIC streams (join, full sync, push).
//! - [`node`]: a running member, kept in step with the router and kernel routes.
//!
//! [`spawn`] starts one task that owns all of it. The daemon starts "not in a network"
//! unless its state directory says otherwise; the local API's `init` and `join` make it a
//! member (the membership they make is saved, and handed to the member as it is; they
//! answer once it shows), `leave` makes it stop being one and removes what it kept of the
//! network (keys included, see [`state`]). Static `[[peer]]`s work beside members all
//! along.

pub mod admin;
pub mod admins;
mod join;
pub mod msg;
pub mod node;
pub mod state;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ipnet::IpNet;
use keys::{CaKey, Name, PublicKey};
use protocol::api::{
    InitRequest, JoinRequest, MemberState, Membership, RevokeRequest, RevokeResponse, TokenRequest,
    TokenResponse,
};
use protocol::records::Directory;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::datapath::udp::Udp;
use crate::netlink::Routes;
use crate::router::Router;
use admin::Issuer;
use state::{AdminState, NetworkState, StateDir};

/// What the control plane needs from the daemon.
pub struct Ctx {
    /// The config in force: the one the daemon started with, then each reload's (see
    /// `crate::reload`). Read it with [`Ctx::config`].
    pub config: arc_swap::ArcSwap<Config>,
    /// The tunnels.
    pub router: Arc<Router>,
    /// Kernel routes through the TUN.
    pub routes: Arc<tokio::sync::Mutex<Routes>>,
    /// The TUN's index.
    pub if_index: u32,
    /// This host's overlay address now, as on the TUN and preferred source of the routes
    /// through it: start it at the config's `address`; [`Ctx::apply_address`] changes it,
    /// holding the `routes` lock, so a route is never added with a stale source. Read it
    /// with [`Ctx::address`].
    pub address: Mutex<Option<IpAddr>>,
    /// The tunnels' socket (handshakes to new members go out at once).
    pub udp: Arc<Udp>,
    /// The state directory.
    pub state: StateDir,
    /// The control port, bound at start (so a port in use is an error at once) and turned
    /// into a QUIC endpoint only when this host first needs one: a daemon with only static
    /// peers never pays for QUIC (about 7 MiB of RSS).
    pub control_socket: Mutex<Option<ControlSocket>>,
    /// The QUIC endpoint, once made; see [`Ctx::endpoint`].
    pub endpoint: std::sync::OnceLock<quinn::Endpoint>,
    /// Bytes the control plane moved, for the metrics; shared with the connection tasks.
    pub traffic: Arc<Traffic>,
    /// This host's container names, as the Docker plugin last learnt them.
    pub local_names: tokio::sync::watch::Receiver<crate::docker::names::LocalNames>,
}

/// Where the control plane's QUIC runs.
pub enum ControlSocket {
    /// A port of its own (`[control] listen_port` set to another port than the tunnels').
    Own(std::net::UdpSocket),
    /// The tunnels' socket, shared (the default): the data path hands QUIC's datagrams over
    /// (`datapath::oneport`).
    Shared(Arc<crate::datapath::oneport::SharedQuicSocket<Udp>>),
}

/// Bytes the control plane moved since the daemon started, for the metrics: what
/// membership costs the underlay. Relaxed counters, bumped where the bytes are sent or
/// received; they decide nothing.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Gossip (SWIM) datagrams sent.
    pub gossip_sent: AtomicU64,
    /// Gossip datagrams received from members (those a rate limit then drops included).
    pub gossip_received: AtomicU64,
    /// Full syncs and pushes of records sent, requests and answers (frames on streams).
    pub sync_sent: AtomicU64,
    /// Full syncs and pushes of records received, requests and answers.
    pub sync_received: AtomicU64,
}

impl Traffic {
    /// Counts `n` bytes on `counter`.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Ctx {
    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The QUIC endpoint on `[control] listen_port`, made on first use.
    pub fn endpoint(&self) -> anyhow::Result<quinn::Endpoint> {
        let mut socket = crate::util::lock(&self.control_socket);
        if let Some(endpoint) = self.endpoint.get() {
            return Ok(endpoint.clone());
        }
        let sock = socket
            .take()
            .context("the control socket is gone; restart overlayd")?;
        let config = crate::datapath::oneport::endpoint_config();
        let runtime = Arc::new(quinn::TokioRuntime);
        let endpoint = match sock {
            ControlSocket::Own(sock) => quinn::Endpoint::new(config, None, sock, runtime),
            ControlSocket::Shared(sock) => {
                sock.open();
                quinn::Endpoint::new_with_abstract_socket(config, None, sock, runtime)
            }
        }
        .context("cannot start the QUIC endpoint")?;
        let _ = self.endpoint.set(endpoint.clone());
        Ok(endpoint)
    }

    /// This host's overlay address now (see [`crate::address::effective`]).
    pub fn address(&self) -> Option<IpAddr> {
        *crate::util::lock(&self.address)
    }

    /// Makes this host's overlay address the one its config and `subnets` (its certificate's
    /// as a member, none otherwise) give ([`crate::address::effective`]): puts it on the TUN,
    /// makes it the preferred source of every route through the TUN (those added before it
    /// too: the static peers' at start, the members' of an earlier membership), then takes
    /// the old one off. Does nothing when it is unchanged, so it is called whenever the
    /// subnets may have changed (start as a member, after `init` or `join`, after `leave`).
    /// Failures are logged: the tunnels work without the address, only this host's own
    /// packets into the overlay lack a source the peers accept.
    pub async fn apply_address(&self, subnets: &[IpNet]) {
        let config = self.config();
        let wanted = crate::address::effective(config.address, subnets);
        // What a decrypted packet may be addressed to: this host's subnets and address.
        let local = crate::address::local_networks(wanted, &config.subnets, subnets);
        if self.router.set_local_networks(&local) {
            crate::firewall::apply(&config.tun_name, &local).await;
        }
        let mut routes = self.routes.lock().await;
        let current = self.address();
        if wanted == current {
            return;
        }
        if let Some(new) = wanted
            && let Err(e) = routes.add_address(self.if_index, new).await
        {
            tracing::warn!(error = %format!("{e:#}"), overlay_ip = %new, "cannot give this host its overlay address; its own packets into the overlay will be dropped by the peers");
            return;
        }
        let moved = routes.set_source(wanted).await;
        *crate::util::lock(&self.address) = wanted;
        if let Some(old) = current {
            if !moved {
                // Routes that still prefer it would go with it (the kernel removes them).
                tracing::warn!(overlay_ip = %old, "the old overlay address stays on the TUN: some routes still use it");
            } else if let Err(e) = routes.remove_address(self.if_index, old).await {
                tracing::warn!(error = %format!("{e:#}"), overlay_ip = %old, "cannot remove the old overlay address from the TUN");
            }
        }
        match wanted {
            Some(ip) => {
                tracing::info!(overlay_ip = %ip, "this host's overlay address is on the TUN")
            }
            None => tracing::info!("this host has no overlay address any more"),
        }
    }

    /// Closes the QUIC endpoint, if one was made (shutdown).
    pub fn close_endpoint(&self) {
        if let Some(endpoint) = self.endpoint.get() {
            endpoint.close(0u32.into(), b"shutting down");
        }
    }
}

/// An API request that failed: one variant per kind of failure, its sentence for the
/// operator as its `Display`, and its HTTP status from the one table in
/// [`ApiFailure::status`] (as innernet's server error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiFailure {
    /// The request must change (400).
    #[error("{0}")]
    Bad(String),
    /// No such member (404).
    #[error("{0}")]
    NotFound(String),
    /// This host is in no network (409).
    #[error(
        "this host is not in a network; run `overlayctl init --cidr CIDR` to make one, or `overlayctl join TOKEN`"
    )]
    NotMember,
    /// This host holds no CA key (409): `action` is only for admins.
    #[error(
        "this host is not an admin (it has no CA key); {action} on the host that ran `overlayctl init`"
    )]
    NotAdmin {
        /// What was asked, as the operator would do it ("revoke").
        action: &'static str,
    },
    /// Not possible in this host's state (409).
    #[error("{0}")]
    Conflict(String),
    /// Another host refused or did not answer (502).
    #[error("{0}")]
    Remote(String),
    /// This host failed (500).
    #[error("{0}")]
    Internal(String),
}

impl ApiFailure {
    /// The HTTP status of each kind of failure.
    pub fn status(&self) -> u16 {
        match self {
            ApiFailure::Bad(_) => 400,
            ApiFailure::NotFound(_) => 404,
            ApiFailure::NotMember | ApiFailure::NotAdmin { .. } | ApiFailure::Conflict(_) => 409,
            ApiFailure::Internal(_) => 500,
            ApiFailure::Remote(_) => 502,
        }
    }

    /// 400: the request must change.
    pub fn bad(message: impl Into<String>) -> ApiFailure {
        ApiFailure::Bad(message.into())
    }
    /// 404: no such member.
    pub fn not_found(message: impl Into<String>) -> ApiFailure {
        ApiFailure::NotFound(message.into())
    }
    /// 409: not possible in this host's state.
    pub fn conflict(message: impl Into<String>) -> ApiFailure {
        ApiFailure::Conflict(message.into())
    }
    /// 502: another host refused or did not answer.
    pub fn remote(message: impl Into<String>) -> ApiFailure {
        ApiFailure::Remote(message.into())
    }
    /// 500: this host failed.
    pub fn internal(message: impl Into<String>) -> ApiFailure {
        ApiFailure::Internal(message.into())
    }
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, ApiFailure>>;

/// A request from the local API.
pub enum Command {
    /// `overlayctl init`.
    Init(InitRequest, Reply<()>),
    /// `overlayctl join`.
    Join(JoinRequest, Reply<()>),
    /// `overlayctl token create`.
    Token(TokenRequest, Reply<TokenResponse>),
    /// `overlayctl revoke`.
    Revoke(RevokeRequest, Reply<RevokeResponse>),
    /// `overlayctl node groups`.
    NodeGroups(
        protocol::api::NodeGroupsRequest,
        Reply<protocol::api::NodeGroupsResponse>,
    ),
    /// `overlayctl rotate-key`.
    RotateKey(Reply<protocol::api::RotateKeyResponse>),
    /// `overlayctl leave`.
    Leave(Reply<protocol::api::Status>),
    /// `overlayctl ca rotate`.
    CaRotate(
        protocol::api::CaRotateRequest,
        Reply<protocol::api::CaRotateResponse>,
    ),
    /// `overlayctl admin add`.
    AdminAdd(
        protocol::api::AdminRequest,
        Reply<protocol::api::AdminsResponse>,
    ),
    /// `overlayctl admin remove`.
    AdminRemove(
        protocol::api::AdminRequest,
        Reply<protocol::api::AdminsResponse>,
    ),
    /// `overlayctl admin list`.
    Admins(Reply<protocol::api::AdminsResponse>),
    /// `overlayctl policy set`.
    PolicySet(
        protocol::api::PolicySetRequest,
        Reply<protocol::api::PolicyShown>,
    ),
    /// `overlayctl policy show`.
    PolicyShow(Reply<protocol::api::PolicyShown>),
    /// `overlayctl policy check`.
    PolicyCheck(
        protocol::api::PolicyCheckRequest,
        Reply<protocol::api::PolicyVerdict>,
    ),
    /// A reload changed the config in force (`Ctx::config`): the member takes its
    /// `[control]` timings at once (a host in no network has nothing to change).
    Reload(Reply<()>),
}

/// One member as the API shows it.
#[derive(Debug, Clone)]
pub struct MemberView {
    /// Its name.
    pub name: String,
    /// Its WireGuard key.
    pub public_key: PublicKey,
    /// Its subnets.
    pub subnets: Vec<IpNet>,
    /// Its advertised endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Its state.
    pub state: MemberState,
    /// Whether it is behind a NAT: its record lists an address the others see it at before
    /// its own.
    pub nat: bool,
}

/// What the control plane shows the API.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// This host's membership.
    pub membership: Option<Membership>,
    /// The other members.
    pub members: Vec<MemberView>,
    /// Whether this host is behind a NAT (it publishes an address the others see it at).
    pub nat: bool,
    /// The container names served: this host's and those of the members routed (set
    /// with [`View::set_names`]).
    pub names: Vec<NameView>,
    /// Each name and alias of `names`: the positions of the entries that answer to it.
    pub names_index: std::collections::HashMap<String, Vec<usize>>,
}

/// A container name the DNS server answers (`control::node::core`'s `names`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameView {
    /// The member that published it.
    pub owner: String,
    /// Whether that is this host.
    pub local: bool,
    /// When its set was accepted here (unix seconds).
    pub since_unix: u64,
    /// The name, its aliases, address, Docker network and range.
    pub entry: protocol::records::names::NameEntry,
}

impl View {
    /// Sets the names served, indexed by name and alias: what DNS looks up, so an answer
    /// costs the same among 10 names as among 10,000.
    pub fn set_names(&mut self, names: Vec<NameView>) {
        let mut index: std::collections::HashMap<String, Vec<usize>> = Default::default();
        for (i, n) in names.iter().enumerate() {
            for key in std::iter::once(&n.entry.name).chain(&n.entry.aliases) {
                let list = index.entry(key.clone()).or_default();
                // Entries come in order, so a repeat (a name also an alias) is the last one:
                // constant time, where a search of the list cost O(n^2) for n entries of
                // one name.
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        self.names = names;
        self.names_index = index;
    }

    fn status_stub(&self) -> protocol::api::Status {
        protocol::api::Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            public_key: PublicKey::from_bytes([0; 32]),
            listen_port: 0,
            tun_name: String::new(),
            mtu: 0,
            address: None,
            subnets: Vec::new(),
            tun_offload: false,
            udp_gso: false,
            peer_count: 0,
            uptime_s: 0,
            drops: Default::default(),
            member: self.membership.clone(),
            config: None,
        }
    }
}

/// The handle the API holds.
#[derive(Clone)]
pub struct ControlHandle {
    /// What the control task works with.
    pub ctx: Arc<Ctx>,
    /// Commands to the control task.
    pub commands: mpsc::Sender<Command>,
    /// What it shows.
    pub view: Arc<Mutex<View>>,
}

impl ControlHandle {
    /// Sends `make(reply)` and waits for the answer (bounded).
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
        timeout: Duration,
    ) -> Result<T, ApiFailure> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| {
            ApiFailure::internal("the control plane has stopped; see overlayd's log")
        })?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ApiFailure::internal(
                "the control plane dropped the request; see overlayd's log",
            )),
            Err(_) => Err(ApiFailure::internal(format!(
                "the control plane did not answer within {} s; see overlayd's log",
                timeout.as_secs()
            ))),
        }
    }
}

pub use crate::util::now_unix;

/// The address this host is reached at: the kernel's source address towards `towards`
/// (no packet is sent), or the first global address of an interface that is up, other than
/// `tun` (this host's overlay address, on the TUN, is no underlay address).
pub fn detect_address(towards: Option<SocketAddr>, tun: &str) -> anyhow::Result<IpAddr> {
    if let Some(target) = towards {
        let bind: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let sock = std::net::UdpSocket::bind(bind)?;
        if sock.connect(target).is_ok()
            && let Ok(local) = sock.local_addr()
            && !local.ip().is_unspecified()
        {
            return Ok(local.ip());
        }
    }
    first_global_address(tun).context(
        "cannot find this host's underlay address; set advertise = \"IP\" under [control] in the config",
    )
}

fn first_global_address(skip: &str) -> Option<IpAddr> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `addrs` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = addrs;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let up = ifa.ifa_flags & (libc::IFF_UP as u32) != 0;
        let loopback = ifa.ifa_flags & (libc::IFF_LOOPBACK as u32) != 0;
        if !up || loopback || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string valid until the list is freed.
        if !ifa.ifa_name.is_null()
            && unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_bytes() == skip.as_bytes()
        {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it names.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if family == libc::AF_INET {
            // SAFETY: AF_INET addresses are sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            if !ip.is_link_local() && !ip.is_unspecified() {
                found = Some(IpAddr::V4(ip));
                break;
            }
        }
    }
    // SAFETY: `addrs` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(addrs) };
    found
}

/// Binds the control port (UDP); [`Ctx::endpoint`] makes QUIC of it when needed.
pub fn bind_control_socket(port: u16) -> anyhow::Result<std::net::UdpSocket> {
    std::net::UdpSocket::bind(("0.0.0.0", port)).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "control port {port} (UDP) is in use (another overlayd?); stop it or set listen_port under [control]"
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot open control port {port} (UDP)"))
        }
    })
}

/// Starts the control plane's task.
pub fn spawn(ctx: Arc<Ctx>) -> ControlHandle {
    let (tx, rx) = mpsc::channel(16);
    let view = Arc::new(Mutex::new(View::default()));
    tokio::spawn(run(ctx.clone(), rx, view.clone()));
    ControlHandle {
        ctx,
        commands: tx,
        view,
    }
}

async fn run(ctx: Arc<Ctx>, mut commands: mpsc::Receiver<Command>, view: Arc<Mutex<View>>) {
    // A membership that `init` or a join just made (and saved), handed to the member as it
    // is, with the API's answer: sent once the member has started and shows it.
    let mut handed: Option<(NetworkState, Directory, Reply<()>)> = None;
    loop {
        let (state, answer) = match handed.take() {
            Some((net, dir, reply)) => (Ok(Some((net, Some(dir)))), Some(reply)),
            None => (ctx.state.network().map(|n| n.map(|net| (net, None))), None),
        };
        match state {
            Ok(Some((net, dir))) if !net.left => {
                let started = node::Member::start(ctx.clone(), net, dir, view.clone()).await;
                if let Some(reply) = answer {
                    let _ = reply.send(Ok(()));
                }
                match started {
                    Ok(member) => {
                        if member.run(&mut commands).await {
                            continue;
                        }
                        // The daemon is shutting down.
                        return;
                    }
                    Err(e) => {
                        tracing::error!(
                            error = %format!("{e:#}"),
                            "cannot rejoin the network from the state directory; the tunnels to members stay down"
                        );
                    }
                }
            }
            // Left, but the files were not all removed (a crash half way, or a version that
            // kept them): remove them now, so that a later join starts from nothing.
            Ok(Some((net, _))) => match ctx.state.forget_network() {
                Ok(_) => {
                    tracing::info!(network = %net.network, "removed the files of the network this host left")
                }
                Err(e) => tracing::error!(
                    error = %format!("{e:#}"),
                    network = %net.network,
                    "cannot remove the files of the network this host left; remove them by hand before joining another"
                ),
            },
            Ok(None) => {}
            Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot read the state directory"),
        }
        // Not a member (any more): no subnet, so only the config's address, if any.
        ctx.apply_address(&[]).await;
        // Not a member: only init and join do anything.
        let Some(cmd) = commands.recv().await else {
            return;
        };
        let (made, reply) = match cmd {
            Command::Init(req, reply) => (init(&ctx, req), reply),
            Command::Join(req, reply) => (join::join(&ctx, req).await, reply),
            Command::Token(_, reply) => {
                let _ = reply.send(Err(not_member()));
                continue;
            }
            Command::Revoke(_, reply) => {
                let _ = reply.send(Err(not_member()));
                continue;
            }
            Command::NodeGroups(_, reply) => {
                let _ = reply.send(Err(not_member()));
                continue;
            }
            Command::CaRotate(_, reply) => {
                let _ = reply.send(Err(not_member()));
                continue;
            }
            Command::RotateKey(reply) => {
                let _ = reply.send(Err(not_member()));
                continue;
            }
            Command::Leave(reply) => {
                let _ = reply.send(Err(not_member()));
                continue;
            }
            Command::AdminAdd(_, reply) | Command::AdminRemove(_, reply) => {
                let _ = reply.send(Err(not_member()));
                continue;
            }
            Command::Admins(reply) => {
                let _ = reply.send(Err(not_member()));
                continue;
            }
            Command::PolicySet(_, reply) | Command::PolicyShow(reply) => {
                let _ = reply.send(Err(not_member()));
                continue;
            }
            Command::PolicyCheck(_, reply) => {
                let _ = reply.send(Err(not_member()));
                continue;
            }
            Command::Reload(reply) => {
                let _ = reply.send(Ok(()));
                continue;
            }
        };
        match made {
            Ok((net, dir)) => handed = Some((net, dir, reply)),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

fn not_member() -> ApiFailure {
    ApiFailure::NotMember
}

fn name(text: &str, what: &str) -> Result<Name, ApiFailure> {
    Name::new(text).map_err(|e| ApiFailure::bad(format!("{what} {text:?}: {e}")))
}

/// What `init` makes, checked before anything is made or written: the names, the main
/// range, its extra ranges and the prefix of member subnets. Pure (the `api` fuzz target
/// runs it as `init` does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitPlan {
    /// The network's name.
    pub network: Name,
    /// This host's name.
    pub node: Name,
    /// The main range, host bits cleared.
    pub cidr: IpNet,
    /// The extra ranges, checked by [`admin::check_ranges`].
    pub ranges: Vec<IpNet>,
    /// Prefix length of member subnets.
    pub subnet_prefix: u8,
}

impl InitPlan {
    /// Checks an `init` request; a refusal is a 400 that says what to change.
    pub fn check(req: &InitRequest) -> Result<InitPlan, ApiFailure> {
        let network = name(&req.network, "network name")?;
        let node = name(&req.name, "node name")?;
        let cidr = req.cidr.trunc();
        let prefix = req
            .subnet_prefix
            .unwrap_or(if cidr.addr().is_ipv4() { 24 } else { 64 });
        if prefix <= cidr.prefix_len() || prefix > cidr.max_prefix_len() {
            return Err(ApiFailure::bad(format!(
                "subnet prefix /{prefix} must be longer than the network's /{} and at most /{}",
                cidr.prefix_len(),
                cidr.max_prefix_len()
            )));
        }
        let ranges = admin::check_ranges(cidr, &req.ranges).map_err(|e| ApiFailure::bad(e.0))?;
        Ok(InitPlan {
            network,
            node,
            cidr,
            ranges,
            subnet_prefix: prefix,
        })
    }

    /// The new network's certificate issuer, holding `ca`.
    pub fn issuer<'a>(&'a self, ca: &'a CaKey, certificate_lifetime_s: u64) -> Issuer<'a> {
        Issuer {
            ca,
            network: &self.network,
            cidr: self.cidr,
            ranges: &self.ranges,
            subnet_prefix: self.subnet_prefix,
            certificate_lifetime_s,
        }
    }
}

/// Makes a network with this host as its first member and admin; saves it and returns the
/// membership and its (empty) directory.
fn init(ctx: &Ctx, req: InitRequest) -> Result<(NetworkState, Directory), ApiFailure> {
    let plan = InitPlan::check(&req)?;
    let InitPlan {
        network,
        node,
        cidr,
        ranges,
        subnet_prefix: prefix,
    } = &plan;
    let internal = |e: anyhow::Error| ApiFailure::internal(format!("{e:#}"));
    let control_key = ctx.state.control_key().map_err(internal)?;
    let ca = CaKey::generate();
    let mut admin = AdminState {
        next_serial: 1,
        ..AdminState::default()
    };
    let issuer = plan.issuer(&ca, ctx.config().control.certificate_lifetime());
    let empty = Directory::new(ca.verifying_key(), network.clone());
    let subnets = issuer
        .allocate(&admin, &empty, node, req.subnet)
        .map_err(|e| ApiFailure::bad(e.0))?;
    let (wireguard_key, now) = (ctx.config().private_key.public_key(), now_unix());
    let certificate = issuer
        .issue(
            node,
            wireguard_key,
            control_key.verifying_key(),
            subnets.clone(),
            Vec::new(),
            1,
            now,
        )
        .map_err(|e| ApiFailure::internal(e.0))?;
    issuer.remember(&mut admin, node, wireguard_key, subnets[0], 1, now);
    ctx.state.save_ca_key(&ca).map_err(internal)?;
    ctx.state.save_admin(&admin).map_err(internal)?;
    ctx.state.save_directory(&empty).map_err(internal)?;
    let net = NetworkState {
        network: network.clone(),
        cidr: *cidr,
        ranges: ranges.clone(),
        subnet_prefix: *prefix,
        ca: ca.verifying_key(),
        certificate,
        generation: 0,
        record_version: 0,
        left: false,
        renewed_unix: None,
        bootstrap: Vec::new(),
        ca_transition: None,
        wireguard_key_since: None,
    };
    ctx.state.save_network(&net).map_err(internal)?;
    tracing::info!(%network, name = %node, subnets = ?subnets, ranges = ?ranges, ca = %ca.fingerprint(), "made a new network");
    Ok((net, empty))
}
