//! The local API: HTTP/1.1 + JSON (axum) on a unix socket that only root can open
//! (socket 0600 in a 0700 folder); `overlayctl` talks to nothing else. The routes and their
//! types are `protocol::api`'s:
//!
//! - `GET /v1/status` and `GET /v1/peers`: read here, from the router (tunnels, counters)
//!   and the control plane's [`View`](crate::control::View) (membership, members).
//! - `POST /v1/reload`: the config file read again and applied ([`crate::reload`]); a
//!   refusal is a 400 with the same sentence as at start.
//! - `POST /v1/peers/add`, `/v1/peers/set`, `/v1/peers/remove`: static peers changed in
//!   the running daemon and kept in its state directory ([`crate::statics`]).
//! - `GET /v1/mirror`, `POST /v1/mirror` and `/v1/mirror/stop`: the mirror of decrypted
//!   traffic ([`crate::mirror::MirrorSlot`], on the router), started and stopped here.
//! - `POST /v1/init`, `/v1/tokens`, `/v1/join`, `/v1/revoke`, `/v1/node/groups`, `/v1/leave`: handed to the
//!   control plane's task as a [`Command`] and answered within a bounded time (25 s for a
//!   join, which waits for the admin host; 10 s for the rest). `init` and `join` answer
//!   with the status: the control plane answers them once the new member has started and
//!   shows its membership.
//!
//! A failure is an [`ApiFailure`]: its HTTP status (400 the request must change, 404 no
//! such member, 409 not in this host's state, 502 another host refused or did not answer,
//! 500 this host failed) and one sentence in an `ApiError` body; a body that does not parse
//! is a 400 with serde's sentence. The join token crosses this socket twice (the answer to
//! `tokens`, the body of `join`): the types hold it zeroized on drop, and the answer's body
//! buffer is zeroized too, once sent.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ipnet::IpNet;
use keys::PublicKey;
use protocol::api::{
    ApiError, INIT_PATH, InitRequest, JOIN_PATH, JoinRequest, LEAVE_PATH, NODE_GROUPS_PATH,
    NodeGroupsRequest, PEERS_PATH, PeerPath, PeerStatus, REVOKE_PATH, RevokeRequest, STATUS_PATH,
    Status, TOKENS_PATH, TokenRequest,
};
use protocol::api::{
    EVENTS_PATH, POLICY_CHECK_PATH, POLICY_PATH, PolicyCheckRequest, PolicySetRequest, PolicyShown,
    PolicyVerdict, SecurityEvent,
};
use protocol::api::{FLOWS_PATH, FlowLogEntry};
use protocol::api::{MIRROR_PATH, MIRROR_STOP_PATH, MirrorStartRequest, MirrorStatus};
use protocol::api::{
    RELOAD_PATH, ReloadReport, STATIC_PEER_ADD_PATH, STATIC_PEER_REMOVE_PATH, STATIC_PEER_SET_PATH,
    StaticPeerChange, StaticPeerRemoveRequest, StaticPeerRequest, StaticPeerSetRequest,
};
use std::time::Duration;

use crate::address::first_host;
use crate::control::{ApiFailure, Command, ControlHandle};
use std::sync::atomic::Ordering;
use zeroize::Zeroizing;

use crate::datapath::udp::Udp;
use crate::router::Router;
use crate::util::{SocketNames, UnixSocket};

/// What the API reads.
pub struct ApiState {
    /// The tunnels.
    pub router: Arc<Router>,
    /// The socket, for the GSO flag.
    pub udp: Arc<Udp>,
    /// This host's public key.
    pub public_key: PublicKey,
    /// Port.
    pub listen_port: u16,
    /// TUN name.
    pub tun_name: String,
    /// TUN MTU.
    pub mtu: u16,
    /// TUN offload in use.
    pub tun_offload: bool,
    /// Start time.
    pub started: Instant,
    /// The control plane (its `ctx` holds the config in force).
    pub control: ControlHandle,
    /// Reloads, the static peers, the flow log.
    pub reload: Arc<crate::reload::Reloader>,
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            code,
            Json(ApiError {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

/// A JSON body that did not parse: a 400 with serde's sentence, not axum's plain text.
fn bad_body(e: axum::extract::rejection::JsonRejection) -> ApiFailure {
    ApiFailure::bad(format!("malformed request: {}", e.body_text()))
}

async fn init(
    State(s): State<Arc<ApiState>>,
    body: Result<Json<InitRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Status>, ApiFailure> {
    let Json(req) = body.map_err(bad_body)?;
    s.control
        .ask(|r| Command::Init(req, r), Duration::from_secs(10))
        .await?;
    Ok(status(State(s.clone())).await)
}

async fn join(
    State(s): State<Arc<ApiState>>,
    body: Result<Json<JoinRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Status>, ApiFailure> {
    let Json(req) = body.map_err(bad_body)?;
    s.control
        .ask(|r| Command::Join(req, r), Duration::from_secs(25))
        .await?;
    Ok(status(State(s.clone())).await)
}

async fn tokens(
    State(s): State<Arc<ApiState>>,
    body: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiFailure> {
    let Json(req) = body.map_err(bad_body)?;
    let answer = s
        .control
        .ask(|r| Command::Token(req, r), Duration::from_secs(10))
        .await?;
    // The body holds the token: a buffer sized for it (no copy left behind by growing),
    // zeroized when hyper has sent it and drops it.
    let mut body = Zeroizing::new(Vec::with_capacity(answer.token.len() + 64));
    serde_json::to_writer(&mut *body, &answer)
        .map_err(|e| ApiFailure::internal(format!("cannot encode the token: {e}")))?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(Bytes::from_owner(body)),
    )
        .into_response())
}

async fn revoke(
    State(s): State<Arc<ApiState>>,
    body: Result<Json<RevokeRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiFailure> {
    let Json(req) = body.map_err(bad_body)?;
    let answer = s
        .control
        .ask(|r| Command::Revoke(req, r), Duration::from_secs(10))
        .await?;
    Ok(Json(answer).into_response())
}

async fn node_groups(
    State(s): State<Arc<ApiState>>,
    body: Result<Json<NodeGroupsRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiFailure> {
    let Json(req) = body.map_err(bad_body)?;
    let answer = s
        .control
        .ask(|r| Command::NodeGroups(req, r), Duration::from_secs(10))
        .await?;
    Ok(Json(answer).into_response())
}

async fn ca_rotate(
    State(s): State<Arc<ApiState>>,
    body: Result<Json<protocol::api::CaRotateRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiFailure> {
    let Json(req) = body.map_err(bad_body)?;
    // Pushed to every member, each acking: as long as a revocation's push.
    let answer = s
        .control
        .ask(|r| Command::CaRotate(req, r), Duration::from_secs(20))
        .await?;
    Ok(Json(answer).into_response())
}

async fn rotate_key(State(s): State<Arc<ApiState>>) -> Result<Response, ApiFailure> {
    // An admin on another host answers: as long as a renewal.
    let answer = s
        .control
        .ask(Command::RotateKey, Duration::from_secs(20))
        .await?;
    Ok(Json(answer).into_response())
}

async fn policy_set(
    State(s): State<Arc<ApiState>>,
    body: Result<Json<PolicySetRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<PolicyShown>, ApiFailure> {
    let Json(req) = body.map_err(bad_body)?;
    // Pushed to every member, each acking: as long as a revocation's push.
    let shown = s
        .control
        .ask(|r| Command::PolicySet(req, r), Duration::from_secs(10))
        .await?;
    Ok(Json(shown))
}

async fn policy_show(State(s): State<Arc<ApiState>>) -> Result<Json<PolicyShown>, ApiFailure> {
    let shown = s
        .control
        .ask(Command::PolicyShow, Duration::from_secs(10))
        .await?;
    Ok(Json(shown))
}

async fn policy_check(
    State(s): State<Arc<ApiState>>,
    body: Result<Json<PolicyCheckRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<PolicyVerdict>, ApiFailure> {
    let Json(req) = body.map_err(bad_body)?;
    let verdict = s
        .control
        .ask(|r| Command::PolicyCheck(req, r), Duration::from_secs(10))
        .await?;
    Ok(Json(verdict))
}

/// `after=N` of a query string (0 when absent).
fn after(query: Option<&str>) -> Result<u64, ApiFailure> {
    let Some(query) = query else { return Ok(0) };
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("after=") {
            return value
                .parse()
                .map_err(|_| ApiFailure::bad(format!("after={value:?} is not a sequence number")));
        }
    }
    Ok(0)
}

async fn events(
    State(s): State<Arc<ApiState>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Json<Vec<SecurityEvent>>, ApiFailure> {
    Ok(Json(s.router.events.after(after(query.as_deref())?)))
}

async fn flows(
    State(s): State<Arc<ApiState>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Json<Vec<FlowLogEntry>>, ApiFailure> {
    let after = after(query.as_deref())?;
    match s.reload.flow_log() {
        Some(log) => Ok(Json(log.after(after))),
        None => Err(ApiFailure::conflict(
            "the flow log is off on this host; set enabled = true under [flows] in overlayd's config and run `overlayctl reload`",
        )),
    }
}

/// The mirror as the API shows it; `None`: no mirror runs.
fn mirror_status(shown: Option<crate::mirror::MirrorShown>, active: bool) -> MirrorStatus {
    match shown {
        Some(m) => MirrorStatus {
            active,
            interface: Some(m.spec.interface),
            cidrs: m.spec.filter.cidrs,
            ports: m.spec.filter.ports,
            copied: m.copied,
            dropped: m.dropped,
            write_errors: m.write_errors,
            read: m.read,
        },
        None => MirrorStatus::default(),
    }
}

async fn mirror_show(State(s): State<Arc<ApiState>>) -> Json<MirrorStatus> {
    Json(mirror_status(s.router.mirror.shown(), true))
}

async fn mirror_start(
    State(s): State<Arc<ApiState>>,
    body: Result<Json<MirrorStartRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<MirrorStatus>, ApiFailure> {
    let Json(req) = body.map_err(bad_body)?;
    let interface = req.interface.unwrap_or_else(|| {
        s.control.ctx.config().mirror.as_ref().map_or_else(
            || crate::mirror::DEFAULT_INTERFACE.to_owned(),
            |m| m.interface.clone(),
        )
    });
    crate::mirror::check_interface_name(&interface).map_err(ApiFailure::bad)?;
    crate::mirror::check_ports(&req.ports).map_err(ApiFailure::bad)?;
    if interface == s.tun_name {
        return Err(ApiFailure::bad(format!(
            "{interface} is the tunnel's own interface; give the mirror another (e.g. ovlmirror0)"
        )));
    }
    let spec = crate::mirror::MirrorSpec {
        interface,
        filter: crate::mirror::MirrorFilter {
            cidrs: req.cidrs.iter().map(IpNet::trunc).collect(),
            ports: req.ports,
        },
    };
    // Making a device and waiting for the old writer are system calls of a few ms.
    let started = {
        let (s, mtu) = (s.clone(), s.mtu);
        tokio::task::spawn_blocking(move || s.router.mirror.start(spec, mtu))
            .await
            .map_err(|e| ApiFailure::internal(format!("the mirror's start failed: {e}")))?
    };
    started.map_err(|e| match e {
        crate::mirror::MirrorError::Closing { .. } => ApiFailure::conflict(e.to_string()),
        crate::mirror::MirrorError::Interface { .. } => ApiFailure::internal(e.to_string()),
    })?;
    Ok(Json(mirror_status(s.router.mirror.shown(), true)))
}

async fn mirror_stop(State(s): State<Arc<ApiState>>) -> Result<Json<MirrorStatus>, ApiFailure> {
    let s2 = s.clone();
    let last = tokio::task::spawn_blocking(move || s2.router.mirror.stop())
        .await
        .map_err(|e| ApiFailure::internal(format!("the mirror's stop failed: {e}")))?
        .map_err(|e| ApiFailure::conflict(e.to_string()))?;
    Ok(Json(mirror_status(last, false)))
}

async fn reload(State(s): State<Arc<ApiState>>) -> Result<Json<ReloadReport>, ApiFailure> {
    s.reload.reload().await.map(Json).map_err(ApiFailure::bad)
}

async fn peer_add(
    State(s): State<Arc<ApiState>>,
    body: Result<Json<StaticPeerRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<StaticPeerChange>, ApiFailure> {
    let Json(req) = body.map_err(bad_body)?;
    let ctx = &s.control.ctx;
    s.reload.statics.add(ctx, req).await.map(Json)
}

async fn peer_set(
    State(s): State<Arc<ApiState>>,
    body: Result<Json<StaticPeerSetRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<StaticPeerChange>, ApiFailure> {
    let Json(req) = body.map_err(bad_body)?;
    let ctx = &s.control.ctx;
    s.reload.statics.set(ctx, req).await.map(Json)
}

async fn peer_remove(
    State(s): State<Arc<ApiState>>,
    body: Result<Json<StaticPeerRemoveRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<StaticPeerChange>, ApiFailure> {
    let Json(req) = body.map_err(bad_body)?;
    let ctx = &s.control.ctx;
    s.reload.statics.remove(ctx, req).await.map(Json)
}

async fn admin_add(
    State(s): State<Arc<ApiState>>,
    body: Result<Json<protocol::api::AdminRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiFailure> {
    let Json(req) = body.map_err(bad_body)?;
    let answer = s
        .control
        .ask(|r| Command::AdminAdd(req, r), Duration::from_secs(20))
        .await?;
    Ok(Json(answer).into_response())
}

async fn admin_remove(
    State(s): State<Arc<ApiState>>,
    body: Result<Json<protocol::api::AdminRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiFailure> {
    let Json(req) = body.map_err(bad_body)?;
    let answer = s
        .control
        .ask(|r| Command::AdminRemove(req, r), Duration::from_secs(10))
        .await?;
    Ok(Json(answer).into_response())
}

async fn admins(State(s): State<Arc<ApiState>>) -> Result<Response, ApiFailure> {
    let answer = s
        .control
        .ask(Command::Admins, Duration::from_secs(10))
        .await?;
    Ok(Json(answer).into_response())
}

async fn leave(State(s): State<Arc<ApiState>>) -> Result<Json<Status>, ApiFailure> {
    s.control
        .ask(Command::Leave, Duration::from_secs(10))
        .await?;
    Ok(status(State(s.clone())).await)
}

async fn status(State(s): State<Arc<ApiState>>) -> Json<Status> {
    let member = s
        .control
        .view
        .lock()
        .ok()
        .and_then(|v| v.membership.clone());
    // This host's subnets: the config's (static mode) and its certificate's (member).
    let own = s.control.ctx.config().subnets.clone();
    let mut subnets = own.clone();
    if let Some(m) = member.as_ref().filter(|m| !m.left) {
        subnets.extend(m.subnets.iter().filter(|n| !own.contains(n)));
    }
    Json(Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        // The router's: a rotation (`overlayctl rotate-key`) changes it.
        public_key: s.router.own_key(),
        listen_port: s.listen_port,
        tun_name: s.tun_name.clone(),
        mtu: s.mtu,
        // The effective address: the config's, or the member's default from its subnet.
        address: s.control.ctx.address(),
        subnets,
        tun_offload: s.tun_offload,
        udp_gso: s.udp.gso(),
        peer_count: s.router.peers().len(),
        uptime_s: s.started.elapsed().as_secs(),
        drops: s.router.total_drops(),
        member,
        config: Some(s.reload.shown()),
    })
}

async fn names(State(s): State<Arc<ApiState>>) -> Json<Vec<protocol::api::NameInfo>> {
    let now = crate::control::now_unix();
    let view = crate::util::lock(&s.control.view);
    let mut list: Vec<protocol::api::NameInfo> = view
        .names
        .iter()
        .map(|n| protocol::api::NameInfo {
            name: n.entry.name.clone(),
            aliases: n.entry.aliases.clone(),
            address: n.entry.address,
            network: n.entry.network.clone(),
            range: n.entry.range,
            owner: n.owner.clone(),
            local: n.local,
            age_s: now.saturating_sub(n.since_unix),
        })
        .collect();
    list.sort_by(|a, b| (&a.name, !a.local, a.address).cmp(&(&b.name, !b.local, b.address)));
    Json(list)
}

async fn peers(State(s): State<Arc<ApiState>>) -> Json<Vec<PeerStatus>> {
    let (members, nat) = s
        .control
        .view
        .lock()
        .map(|v| (v.members.clone(), v.nat))
        .unwrap_or_default();
    let tunnels = s.router.peers();
    let mut list: Vec<PeerStatus> = tunnels
        .iter()
        .map(|p| {
            let (age, endpoint) = p.handshake_age_and_endpoint();
            let member = members.iter().find(|m| m.public_key == p.public_key);
            let subnets = p.subnets();
            let via = p.via();
            let path = match (via, endpoint) {
                (Some(_), _) => Some(PeerPath::Relayed),
                (None, Some(_)) if nat || member.is_some_and(|m| m.nat) => Some(PeerPath::Punched),
                (None, Some(_)) => Some(PeerPath::Direct),
                (None, None) => None,
            };
            // The relay by name: the peer whose endpoint it is.
            let relay = via.map(|addr| {
                tunnels
                    .iter()
                    .find(|r| r.handshake_age_and_endpoint().1 == Some(addr) && r.via().is_none())
                    .and_then(|r| {
                        members
                            .iter()
                            .find(|m| m.public_key == r.public_key)
                            .map(|m| m.name.clone())
                            .or_else(|| r.name())
                    })
                    .unwrap_or_else(|| addr.to_string())
            });
            PeerStatus {
                name: member.map(|m| m.name.clone()).or_else(|| p.name()),
                state: member.map(|m| m.state),
                address: subnets.first().map(|n| first_host(*n)),
                public_key: p.public_key,
                endpoint,
                subnets,
                last_handshake_s: age.map(|d| d.as_secs_f64()),
                rx_bytes: p.rx_bytes.load(Ordering::Relaxed),
                tx_bytes: p.tx_bytes.load(Ordering::Relaxed),
                persistent_keepalive: p.persistent_keepalive(),
                drops: p.drops.snapshot(),
                origin: s.reload.statics.origin(&p.public_key),
                path,
                relay,
            }
        })
        .collect();
    // Members without a tunnel: down, left, revoked.
    for m in members {
        if !tunnels.iter().any(|p| p.public_key == m.public_key) {
            list.push(PeerStatus {
                name: Some(m.name),
                state: Some(m.state),
                address: m.subnets.first().map(|n| first_host(*n)),
                public_key: m.public_key,
                endpoint: m.endpoint,
                subnets: m.subnets,
                last_handshake_s: None,
                rx_bytes: 0,
                tx_bytes: 0,
                persistent_keepalive: None,
                drops: Default::default(),
                origin: None,
                path: None,
                relay: None,
            });
        }
    }
    Json(list)
}

/// How errors name the API socket; its folder is made 0700.
const API_SOCKET: SocketNames = SocketNames {
    folder_mode: 0o700,
    folder: "the API socket folder",
    socket: "the API socket",
    stale: "the stale API socket",
    restrict: "the API socket ",
    busy: |path| {
        format!(
            "another overlayd is already serving {}; stop it first or set api_socket to another path",
            path.display()
        )
    },
};

/// A bound API socket; removes its file when dropped.
pub struct ApiSocket(UnixSocket);

impl ApiSocket {
    /// Binds `path` (0600; its folder is created 0700 if missing). Refuses when another
    /// daemon answers on it; removes a stale socket file left by a crash.
    pub fn bind(path: &Path) -> anyhow::Result<ApiSocket> {
        UnixSocket::bind(path, &API_SOCKET).map(ApiSocket)
    }

    /// Serves the API until `shutdown` completes.
    pub async fn serve(
        mut self,
        state: Arc<ApiState>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = axum::Router::new()
            .route(STATUS_PATH, get(status))
            .route(PEERS_PATH, get(peers))
            .route(protocol::api::NAMES_PATH, get(names))
            .route(INIT_PATH, post(init))
            .route(TOKENS_PATH, post(tokens))
            .route(JOIN_PATH, post(join))
            .route(REVOKE_PATH, post(revoke))
            .route(NODE_GROUPS_PATH, post(node_groups))
            .route(protocol::api::CA_ROTATE_PATH, post(ca_rotate))
            .route(protocol::api::ROTATE_KEY_PATH, post(rotate_key))
            .route(LEAVE_PATH, post(leave))
            .route(protocol::api::ADMIN_ADD_PATH, post(admin_add))
            .route(protocol::api::ADMIN_REMOVE_PATH, post(admin_remove))
            .route(protocol::api::ADMINS_PATH, get(admins))
            .route(POLICY_PATH, get(policy_show).post(policy_set))
            .route(POLICY_CHECK_PATH, post(policy_check))
            .route(EVENTS_PATH, get(events))
            .route(FLOWS_PATH, get(flows))
            .route(MIRROR_PATH, get(mirror_show).post(mirror_start))
            .route(MIRROR_STOP_PATH, post(mirror_stop))
            .route(RELOAD_PATH, post(reload))
            .route(STATIC_PEER_ADD_PATH, post(peer_add))
            .route(STATIC_PEER_SET_PATH, post(peer_set))
            .route(STATIC_PEER_REMOVE_PATH, post(peer_remove))
            .with_state(state);
        let listener = self.0.take_listener("API socket")?;
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("local API server failed")
    }
}
