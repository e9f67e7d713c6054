//! The Docker network driver and IPAM plugin (legacy v1 protocol, scope `local`), served
//! by `overlayd` itself on a unix socket (`/run/docker/plugins/overlayd.sock` by default;
//! dockerd names the plugin after the file: driver and IPAM `overlayd`).
//!
//! - [`book`]: the pure rules and bookkeeping (pools, addresses, networks, endpoints).
//! - [`links`]: bridges and veths through netlink.
//! - [`filter`]: the nftables rules that keep the networks apart.
//! - [`wire`]: the JSON dockerd sends and expects.
//!
//! Rules this module keeps (moby's plugins_network.md): every handler answers within
//! [`HANDLER_TIMEOUT`] (dockerd has no timeout of its own) and never calls the Docker API;
//! the [`book::Book`] is written to `docker.json` in the state directory (atomically) after
//! every change, since dockerd replays nothing after a plugin restart; deletions are
//! idempotent. Bridges and veths outlive a restart of `overlayd` (running containers keep
//! their interfaces); `docker network rm` and container removal take them away. The
//! isolation rules follow the book: rewritten whenever a network comes or goes, rebuilt
//! on start, gone with the last network.

pub mod book;
pub mod dockerd;
pub mod filter;
pub mod links;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use ipnet::{IpNet, Ipv4Net};
use serde_json::{Value, json};

use crate::control::View;
use crate::util::{SocketNames, UnixSocket, lock, write_atomic};
use book::{Book, BookError, GATEWAY_TYPE, REQUEST_ADDRESS_TYPE};
use links::Links;

/// Longest time a plugin call may take before it answers with an error.
pub const HANDLER_TIMEOUT: Duration = Duration::from_secs(10);
/// The file in the state directory that holds the [`Book`].
pub const STATE_FILE: &str = "docker.json";
/// Content type of every answer.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// A call that failed: dockerd shows `Subsystem.Method: message` in the CLI's error.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn new(message: impl Into<String>) -> Failure {
        Failure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }
}

impl From<BookError> for Failure {
    fn from(e: BookError) -> Failure {
        Failure::new(e.to_string())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::new(format!("{e:#}"))
    }
}

/// What the handlers share.
pub struct Plugin {
    /// The bookkeeping; the lock serialises every call that changes it (dockerd sends many
    /// at once), held across the netlink work so the kernel and the book agree.
    book: tokio::sync::Mutex<Book>,
    /// The control plane's view: this host's certificate subnets.
    view: Arc<Mutex<View>>,
    links: Links,
    /// The MTU of bridges and veths (`[docker] mtu`).
    mtu: u16,
    /// The TUN's name (the isolation rules name it).
    tun: String,
    state_file: PathBuf,
    /// dockerd's API socket (`[docker] dockerd_socket`).
    dockerd_socket: PathBuf,
    /// What has been held ever since the plugin started (the book it loaded, kept to the
    /// book after every change): only that can have leaked while the plugin was down
    /// (`Plugin::reclaim_leaks`). `None` once reclaimed.
    started_with: Mutex<Option<Book>>,
}

/// How often dockerd's API is tried until it answers (`Plugin::reclaim_leaks`).
const RECLAIM_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

impl Plugin {
    /// Loads the book from `state_dir` and opens netlink; `tun` is the TUN's name. A
    /// damaged file is an error (the operator must decide), a missing one an empty book.
    pub fn open(
        state_dir: &Path,
        mtu: u16,
        tun: &str,
        dockerd_socket: &Path,
        view: Arc<Mutex<View>>,
    ) -> anyhow::Result<Plugin> {
        let state_file = state_dir.join(STATE_FILE);
        let book = match std::fs::read_to_string(&state_file) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is damaged; remove it (and the overlayd Docker networks) or restore it from a backup",
                    state_file.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Book::default(),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", state_file.display()));
            }
        };
        Ok(Plugin {
            started_with: Mutex::new(Some(book.clone())),
            book: tokio::sync::Mutex::new(book),
            view,
            links: Links::connect()?,
            mtu,
            tun: tun.to_owned(),
            state_file,
            dockerd_socket: dockerd_socket.to_owned(),
        })
    }

    /// Frees the endpoints and addresses that leaked while the plugin was down (dockerd
    /// removed containers then; see [`Book::reclaim`]), once dockerd answers on its API
    /// socket: tried at start, then every [`RECLAIM_RETRY`] until one pass is done. It runs
    /// beside the plugin server, never inside a plugin call (dockerd may be waiting on it).
    pub async fn reclaim_leaks(&self) {
        let mut said = false;
        loop {
            let Some(before) = self.since_start() else {
                return;
            };
            if before.endpoints.is_empty() && before.pools.values().all(|p| p.addresses.is_empty())
            {
                return;
            }
            match self.reclaim_once(&before).await {
                Ok(()) => return,
                Err(e) if !said => {
                    said = true;
                    tracing::info!(error = %e, "cannot ask dockerd which containers still hold addresses; addresses of containers removed while overlayd was down are freed once it answers (set [docker] dockerd_socket if it listens elsewhere)");
                }
                Err(e) => tracing::debug!(error = %e, "dockerd still does not answer"),
            }
            tokio::time::sleep(RECLAIM_RETRY).await;
        }
    }

    /// What has been held since the start, while not yet reclaimed.
    fn since_start(&self) -> Option<Book> {
        lock(&self.started_with).clone()
    }

    /// One pass of [`Plugin::reclaim_leaks`]: asks dockerd about every network held since the
    /// start, then frees, under the book's lock, what is still held since the start and
    /// dockerd does not list.
    async fn reclaim_once(&self, asked: &Book) -> Result<(), dockerd::AskError> {
        let mut docker = std::collections::BTreeMap::new();
        for network_id in asked.networks.keys() {
            if let Some(attached) = dockerd::attached(&self.dockerd_socket, network_id).await? {
                docker.insert(network_id.clone(), attached);
            }
        }
        let mut book = self.book.lock().await;
        let Some(before) = lock(&self.started_with).take() else {
            return Ok(());
        };
        let mut next = book.clone();
        let freed = next.reclaim(&before, &docker);
        if freed.is_empty() {
            tracing::debug!("nothing leaked while overlayd was down");
            return Ok(());
        }
        if let Err(e) = self.save(&next) {
            tracing::error!(error = %e.message, "cannot free the addresses that leaked while overlayd was down");
            return Ok(());
        }
        *book = next;
        for (_, e) in &freed.endpoints {
            if let Err(err) = self.links.delete(&e.host_veth).await {
                tracing::debug!(veth = %e.host_veth, error = %format!("{err:#}"), "cannot remove a leaked endpoint's veth");
            }
        }
        let addresses: Vec<String> = freed.addresses.iter().map(|a| a.to_string()).collect();
        tracing::info!(
            endpoints = freed.endpoints.len(),
            addresses = %addresses.join(" "),
            "freed the endpoints and addresses of containers removed while overlayd was down"
        );
        Ok(())
    }

    /// Makes sure every known network's bridge exists, with its address, and that every
    /// known endpoint's host veth that still exists is on it (after a reboot or a hand
    /// deletion). Errors are logged.
    pub async fn restore(&self) {
        let book = self.book.lock().await;
        for (id, n) in &book.networks {
            let bridge = match self
                .links
                .ensure_bridge(&n.bridge, n.gateway, n.slice, n.mtu)
                .await
            {
                Ok(index) => index,
                Err(e) => {
                    tracing::warn!(network = %id, error = %format!("{e:#}"), "cannot restore a Docker network's bridge");
                    continue;
                }
            };
            for e in book.endpoints.values().filter(|e| &e.network == id) {
                if let Err(err) = self.links.attach(&e.host_veth, bridge).await {
                    tracing::warn!(network = %id, error = %format!("{err:#}"), "cannot restore a container's veth");
                }
            }
        }
        if let Err(e) = self.isolate(&book).await {
            tracing::error!(error = %format!("{e:#}"), "cannot restore the isolation rules between Docker networks; their containers may reach each other until a network is created or removed");
        }
        if !book.networks.is_empty() {
            enable_forwarding();
            tracing::info!(
                networks = book.networks.len(),
                endpoints = book.endpoints.len(),
                "Docker networks restored"
            );
        }
    }

    /// This host's IPv4 certificate subnets and the network's IPv4 ranges (main first);
    /// `None` if it is in no network.
    fn slices(&self) -> Option<(Vec<Ipv4Net>, Vec<Ipv4Net>)> {
        fn v4(nets: &[IpNet]) -> Vec<Ipv4Net> {
            nets.iter()
                .filter_map(|n| match n {
                    IpNet::V4(v4) => Some(*v4),
                    IpNet::V6(_) => None,
                })
                .collect()
        }
        let view = self.view.lock().ok()?;
        let m = view.membership.as_ref().filter(|m| !m.left)?;
        let ranges: Vec<IpNet> = std::iter::once(m.cidr).chain(m.ranges.clone()).collect();
        Some((v4(&m.subnets), v4(&ranges)))
    }

    /// Makes the isolation rules match `book`'s networks (removes them when there are
    /// none). With no network and no rules to remove, `nft` need not even be installed.
    async fn isolate(&self, book: &Book) -> anyhow::Result<()> {
        let networks = book.isolated();
        match filter::apply(&filter::ruleset(&self.tun, &networks, &book.forwards())).await {
            Ok(()) => Ok(()),
            Err(e) if networks.is_empty() => {
                tracing::debug!(error = %format!("{e:#}"), "no isolation rules to remove");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the book atomically (temporary file, fsync, rename).
    fn save(&self, book: &Book) -> Result<(), Failure> {
        let text = serde_json::to_vec_pretty(book).map_err(|e| Failure::new(e.to_string()))?;
        write_atomic(&self.state_file, &text).map_err(|e| {
            Failure::new(format!(
                "overlayd cannot write {}: {e}; nothing was changed",
                self.state_file.display()
            ))
        })
    }

    /// Applies `change` to a copy of the book, saves it, and only then keeps it: a call
    /// that fails changes nothing.
    async fn change<T>(
        &self,
        change: impl FnOnce(&mut Book) -> Result<T, BookError>,
    ) -> Result<T, Failure> {
        let mut book = self.book.lock().await;
        let mut next = book.clone();
        let out = change(&mut next)?;
        if next != *book {
            self.save(&next)?;
            if let Some(since) = lock(&self.started_with).as_mut() {
                since.retain_in(&next);
            }
            *book = next;
        }
        Ok(out)
    }

    /// One plugin call: `method` is the path without `/`, `body` its JSON.
    pub async fn call(&self, method: &str, body: &[u8]) -> Result<Value, Failure> {
        fn parse<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, Failure> {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(T::default());
            }
            serde_json::from_slice(body).map_err(|e| Failure {
                status: StatusCode::BAD_REQUEST,
                message: format!("malformed request: {e}"),
            })
        }
        match method {
            "Plugin.Activate" => Ok(json!({"Implements": ["NetworkDriver", "IpamDriver"]})),
            "NetworkDriver.GetCapabilities" => {
                Ok(json!({"Scope": "local", "ConnectivityScope": "global"}))
            }
            "IpamDriver.GetCapabilities" => {
                Ok(json!({"RequiresMACAddress": false, "RequiresRequestReplay": false}))
            }
            "IpamDriver.GetDefaultAddressSpaces" => Ok(json!({
                "LocalDefaultAddressSpace": "overlayd-local",
                "GlobalDefaultAddressSpace": "overlayd-global",
            })),
            "IpamDriver.RequestPool" => {
                let req: wire::RequestPool = parse(body)?;
                let options: Vec<String> =
                    req.options.iter().flat_map(|o| o.keys().cloned()).collect();
                let (slices, ranges) = self.slices().unzip();
                let g = self
                    .change(|b| {
                        b.request_pool(
                            slices.as_deref(),
                            ranges.as_deref().unwrap_or_default(),
                            &req.pool,
                            &req.sub_pool,
                            req.v6,
                            &options,
                        )
                    })
                    .await?;
                tracing::info!(pool = %g.pool, gateway = %g.gateway, "Docker pool granted");
                Ok(json!({"PoolID": g.pool_id, "Pool": g.pool.to_string(),
                          "Data": {GATEWAY_TYPE: g.gateway.to_string()}}))
            }
            "IpamDriver.ReleasePool" => {
                let req: wire::ReleasePool = parse(body)?;
                self.change(|b| {
                    b.release_pool(&req.pool_id);
                    Ok(())
                })
                .await?;
                Ok(json!({}))
            }
            "IpamDriver.RequestAddress" => {
                let req: wire::AddressRequest = parse(body)?;
                let gateway = req
                    .options
                    .as_ref()
                    .and_then(|o| o.get(REQUEST_ADDRESS_TYPE))
                    .and_then(Value::as_str)
                    == Some(GATEWAY_TYPE);
                let a = self
                    .change(|b| b.request_address(&req.pool_id, &req.address, gateway))
                    .await?;
                Ok(json!({"Address": a.to_string(), "Data": {}}))
            }
            "IpamDriver.ReleaseAddress" => {
                let req: wire::AddressRequest = parse(body)?;
                self.change(|b| {
                    b.release_address(&req.pool_id, &req.address);
                    Ok(())
                })
                .await?;
                Ok(json!({}))
            }
            "NetworkDriver.CreateNetwork" => self.create_network(parse(body)?).await,
            "NetworkDriver.DeleteNetwork" => self.delete_network(parse(body)?).await,
            "NetworkDriver.CreateEndpoint" => self.create_endpoint(parse(body)?).await,
            "NetworkDriver.DeleteEndpoint" => self.delete_endpoint(parse(body)?).await,
            "NetworkDriver.Join" => {
                let req: wire::NetworkRef = parse(body)?;
                let book = self.book.lock().await;
                let e = book.endpoint(&req.network_id, &req.endpoint_id)?;
                let n = book.network(&req.network_id)?;
                Ok(serde_json::to_value(wire::JoinResponse {
                    interface_name: wire::InterfaceName {
                        src_name: e.container_veth.clone(),
                        dst_prefix: "eth".into(),
                    },
                    gateway: n.gateway.to_string(),
                    disable_gateway_service: true,
                })
                .map_err(|e| Failure::new(e.to_string()))?)
            }
            "NetworkDriver.EndpointOperInfo" => {
                let req: wire::NetworkRef = parse(body)?;
                self.book
                    .lock()
                    .await
                    .endpoint(&req.network_id, &req.endpoint_id)?;
                Ok(json!({"Value": {}}))
            }
            "NetworkDriver.ProgramExternalConnectivity" => {
                let req: wire::NetworkRef = parse(body)?;
                let raw: Value = parse::<Option<Value>>(body)?.unwrap_or(Value::Null);
                let bindings: Vec<book::PortBinding> =
                    match raw.pointer("/Options/com.docker.network.portmap") {
                        None | Some(Value::Null) => Vec::new(),
                        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                            Failure::new(format!(
                                "com.docker.network.portmap is not a list of port bindings: {e}"
                            ))
                        })?,
                    };
                self.publish(&req, &bindings).await?;
                Ok(json!({}))
            }
            "NetworkDriver.RevokeExternalConnectivity" => {
                let req: wire::NetworkRef = parse(body)?;
                self.publish(&req, &[]).await?;
                Ok(json!({}))
            }
            "NetworkDriver.Leave"
            | "NetworkDriver.DiscoverNew"
            | "NetworkDriver.DiscoverDelete"
            | "NetworkDriver.AllocateNetwork"
            | "NetworkDriver.FreeNetwork" => Ok(json!({})),
            _ => Err(Failure {
                status: StatusCode::NOT_FOUND,
                message: format!("overlayd does not implement {method}"),
            }),
        }
    }

    async fn create_network(&self, req: wire::CreateNetwork) -> Result<Value, Failure> {
        let (options, ipv6) = wire::generic_options(&req);
        let ipv6 = ipv6 || req.ipv6_data.as_ref().is_some_and(|d| !d.is_empty());
        let pools: Vec<(String, String)> = req
            .ipv4_data
            .unwrap_or_default()
            .into_iter()
            .map(|d| (d.pool, d.gateway))
            .collect();
        let mut book = self.book.lock().await;
        let network = book.check_network(&req.network_id, &pools, ipv6, &options, self.mtu)?;
        self.links
            .ensure_bridge(&network.bridge, network.gateway, network.slice, network.mtu)
            .await?;
        let mut next = book.clone();
        next.add_network(&req.network_id, network.clone());
        // No network without its isolation: if the rules cannot be set, undo the bridge.
        if let Err(e) = self.isolate(&next).await {
            let _ = self.links.delete(&network.bridge).await;
            if let Err(undo) = self.isolate(&book).await {
                tracing::warn!(error = %format!("{undo:#}"), "cannot put the isolation rules back as they were");
            }
            return Err(Failure::new(format!(
                "overlayd cannot set the rules that keep Docker networks apart: {e:#}; the network was not created"
            )));
        }
        enable_forwarding();
        if let Err(e) = self.save(&next) {
            let _ = self.links.delete(&network.bridge).await;
            let _ = self.isolate(&book).await;
            return Err(e);
        }
        *book = next;
        let range = network.range.map(|r| r.to_string()).unwrap_or_default();
        tracing::info!(network = %req.network_id, bridge = %network.bridge, subnet = %network.slice, range, mtu = network.mtu, "Docker network created");
        Ok(json!({}))
    }

    async fn delete_network(&self, req: wire::NetworkRef) -> Result<Value, Failure> {
        let mut book = self.book.lock().await;
        let mut next = book.clone();
        let Some(network) = next.remove_network(&req.network_id) else {
            return Ok(json!({}));
        };
        for e in book
            .endpoints
            .values()
            .filter(|e| e.network == req.network_id)
        {
            self.links.delete(&e.host_veth).await?;
        }
        self.links.delete(&network.bridge).await?;
        self.save(&next)?;
        // Rules left for a bridge that is gone match nothing: log, do not fail the removal.
        if let Err(e) = self.isolate(&next).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot update the isolation rules between Docker networks after a removal");
        }
        *book = next;
        tracing::info!(network = %req.network_id, bridge = %network.bridge, "Docker network removed");
        Ok(json!({}))
    }

    async fn create_endpoint(&self, req: wire::CreateEndpoint) -> Result<Value, Failure> {
        let interface = req.interface.unwrap_or_default();
        if !interface.address_ipv6.is_empty() {
            return Err(BookError::Ipv6.into());
        }
        let mut book = self.book.lock().await;
        let endpoint =
            book.check_endpoint(&req.network_id, &req.endpoint_id, &interface.address)?;
        let n = book.network(&req.network_id)?.clone();
        // The bridge may be gone (a reboot, a hand deletion): make it again.
        let bridge = self
            .links
            .ensure_bridge(&n.bridge, n.gateway, n.slice, n.mtu)
            .await?;
        self.links
            .create_veth(&endpoint.host_veth, &endpoint.container_veth, n.mtu, bridge)
            .await?;
        let mut next = book.clone();
        next.add_endpoint(&req.endpoint_id, endpoint.clone());
        if let Err(e) = self.save(&next) {
            let _ = self.links.delete(&endpoint.host_veth).await;
            return Err(e);
        }
        *book = next;
        tracing::debug!(network = %req.network_id, container = %endpoint.address, "Docker endpoint created");
        Ok(json!({}))
    }

    async fn delete_endpoint(&self, req: wire::NetworkRef) -> Result<Value, Failure> {
        let mut book = self.book.lock().await;
        let mut next = book.clone();
        let Some(endpoint) = next.remove_endpoint(&req.endpoint_id) else {
            return Ok(json!({}));
        };
        // The kernel removes the peer with it (libnetwork has moved it back by now).
        self.links.delete(&endpoint.host_veth).await?;
        self.links.delete(&endpoint.container_veth).await?;
        self.save(&next)?;
        *book = next;
        if !endpoint.published.is_empty()
            && let Err(e) = self.isolate(&book).await
        {
            tracing::error!(error = %format!("{e:#}"), "cannot remove a removed container's published ports from the nft rules; they go with the next change");
        }
        Ok(json!({}))
    }

    /// `-p`: makes the endpoint publish `bindings` (none: stop publishing), in the book and
    /// then in the nft rules; if the rules cannot be set, the book goes back as it was.
    async fn publish(
        &self,
        req: &wire::NetworkRef,
        bindings: &[book::PortBinding],
    ) -> Result<(), Failure> {
        let mut book = self.book.lock().await;
        if bindings.is_empty()
            && book
                .endpoints
                .get(&req.endpoint_id)
                .is_none_or(|e| e.published.is_empty())
        {
            return Ok(());
        }
        let before = book.clone();
        let mut next = book.clone();
        if bindings.is_empty() {
            next.unpublish(&req.endpoint_id);
        } else {
            next.publish(&req.network_id, &req.endpoint_id, bindings)?;
        }
        if next == *book {
            return Ok(());
        }
        self.save(&next)?;
        *book = next;
        if let Err(e) = self.isolate(&book).await {
            let _ = self.save(&before);
            *book = before;
            return Err(Failure::new(format!(
                "cannot publish the container's ports: {e:#}"
            )));
        }
        Ok(())
    }
}

fn enable_forwarding() {
    match links::enable_forwarding() {
        Ok(true) => tracing::info!("turned IPv4 forwarding on (bridge <-> TUN)"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot turn IPv4 forwarding on; containers will not reach other hosts")
        }
    }
}

fn answer(status: StatusCode, value: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        value.to_string(),
    )
        .into_response()
}

/// Every plugin call, by path: parsed, bounded by [`HANDLER_TIMEOUT`], answered as JSON.
async fn dispatch(State(plugin): State<Arc<Plugin>>, uri: Uri, body: Bytes) -> Response {
    let method = uri.path().trim_start_matches('/').to_owned();
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(HANDLER_TIMEOUT, plugin.call(&method, &body)).await;
    let result = result.unwrap_or_else(|_| {
        Err(Failure::new(format!(
            "overlayd did not finish {method} within {} s; see overlayd's log",
            HANDLER_TIMEOUT.as_secs()
        )))
    });
    match result {
        Ok(v) => {
            tracing::debug!(
                method,
                took_ms = started.elapsed().as_millis() as u64,
                "plugin call"
            );
            answer(StatusCode::OK, v)
        }
        Err(f) => {
            tracing::info!(method, reason = %f.message, "plugin call refused");
            answer(f.status, json!({"Err": f.message}))
        }
    }
}

/// How errors name the plugin socket; its folder is made 0755 (dockerd looks there).
const PLUGIN_SOCKET: SocketNames = SocketNames {
    folder_mode: 0o755,
    folder: "the Docker plugin folder",
    socket: "the Docker plugin socket",
    stale: "the stale plugin socket",
    restrict: "",
    busy: |path| {
        format!(
            "another process is already serving the Docker plugin socket {}; stop it or set [docker] socket",
            path.display()
        )
    },
};

/// A bound plugin socket; removes its file when dropped.
pub struct PluginSocket(UnixSocket);

impl PluginSocket {
    /// Binds `path` (0600; its folder is made 0755 if missing). Refuses when something
    /// answers on it; removes a stale socket left by a crash (dockerd would otherwise stall
    /// on it).
    pub fn bind(path: &Path) -> anyhow::Result<PluginSocket> {
        UnixSocket::bind(path, &PLUGIN_SOCKET).map(PluginSocket)
    }

    /// Serves `plugin` in a task; the returned guard stops it and removes the socket.
    pub fn serve(mut self, plugin: Plugin) -> anyhow::Result<Served> {
        let listener = self.0.take_listener("plugin socket")?;
        let plugin = Arc::new(plugin);
        let app = axum::Router::new()
            .fallback(dispatch)
            .with_state(plugin.clone());
        let path = self.0.path().to_owned();
        let task = tokio::spawn(async move {
            plugin.restore().await;
            let serve = async {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "the Docker plugin server stopped");
                }
            };
            tokio::join!(serve, plugin.reclaim_leaks());
        });
        tracing::info!(socket = %path.display(), "serving the Docker network and IPAM plugin");
        Ok(Served {
            task,
            _socket: self,
        })
    }
}

/// The running plugin server; dropping it stops the server and removes the socket.
pub struct Served {
    task: tokio::task::JoinHandle<()>,
    _socket: PluginSocket,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::api::Membership;

    /// No dockerd answers here: nothing is reclaimed.
    const NO_DOCKERD: &str = "/nonexistent/docker.sock";

    /// A plugin on `dir` for a member whose slice is 10.42.7.0/24.
    fn member_plugin(dir: &Path) -> anyhow::Result<Plugin> {
        Plugin::open(
            dir,
            1420,
            "ovl0",
            Path::new(NO_DOCKERD),
            member_view("10.42.7.0/24"),
        )
    }

    fn member_view(subnet: &str) -> Arc<Mutex<View>> {
        let view = View {
            membership: Some(Membership {
                network: "testnet".into(),
                cidr: "10.42.0.0/16".parse().unwrap(),
                ranges: Vec::new(),
                ca_fingerprint: "sha256:00".into(),
                name: "h1".into(),
                subnets: vec![subnet.parse().unwrap()],
                groups: Vec::new(),
                certificate_expires_unix: 0,
                admin: false,
                control_port: 51821,
                member_count: 1,
                left: false,
            }),
            members: Vec::new(),
        };
        Arc::new(Mutex::new(view))
    }

    async fn call(p: &Plugin, method: &str, body: &str) -> Result<Value, String> {
        p.call(method, body.as_bytes()).await.map_err(|f| f.message)
    }

    #[tokio::test]
    async fn handshake_refusals_and_a_restart_that_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let outsider = Plugin::open(
            dir.path(),
            1420,
            "ovl0",
            Path::new(NO_DOCKERD),
            Arc::new(Mutex::new(View::default())),
        )
        .unwrap();
        let activate = call(&outsider, "Plugin.Activate", "").await.unwrap();
        assert_eq!(
            activate,
            json!({"Implements": ["NetworkDriver", "IpamDriver"]})
        );
        let caps = call(&outsider, "NetworkDriver.GetCapabilities", "")
            .await
            .unwrap();
        assert_eq!(caps["Scope"], "local");
        let caps = call(&outsider, "IpamDriver.GetCapabilities", "")
            .await
            .unwrap();
        assert_eq!(caps["RequiresRequestReplay"], false);
        let pool =
            r#"{"AddressSpace":"x","Pool":"10.42.0.0/16","SubPool":"","Options":{},"V6":false}"#;
        let e = call(&outsider, "IpamDriver.RequestPool", pool)
            .await
            .unwrap_err();
        assert_eq!(
            e,
            "this host is not in an overlay network; run overlayctl join first"
        );
        assert!(
            call(&outsider, "NetworkDriver.Nope", "{}")
                .await
                .unwrap_err()
                .contains("does not implement")
        );
        assert!(
            !dir.path().join(STATE_FILE).exists(),
            "a refusal writes nothing"
        );

        let p = member_plugin(dir.path()).unwrap();
        let g = call(&p, "IpamDriver.RequestPool", pool).await.unwrap();
        assert_eq!(g["Data"][GATEWAY_TYPE], "10.42.7.1/24");
        let id = g["PoolID"].as_str().unwrap().to_owned();
        let ask = format!(r#"{{"PoolID":"{id}","Address":"","Options":null}}"#);
        let a = call(&p, "IpamDriver.RequestAddress", &ask).await.unwrap();
        assert_eq!(a["Address"], "10.42.7.2/24");
        drop(p);
        // A restarted plugin knows what it handed out: the next address is fresh.
        let p = member_plugin(dir.path()).unwrap();
        let b = call(&p, "IpamDriver.RequestAddress", &ask).await.unwrap();
        assert_eq!(b["Address"], "10.42.7.3/24");
        let e = call(&p, "IpamDriver.RequestPool", pool).await.unwrap_err();
        assert!(e.contains("overlaps"), "{e}");
        let unknown = r#"{"NetworkID":"abc","EndpointID":"def"}"#;
        assert!(
            call(&p, "NetworkDriver.Join", unknown)
                .await
                .unwrap_err()
                .contains("does not know network abc")
        );
        assert_eq!(
            call(&p, "NetworkDriver.DeleteEndpoint", unknown)
                .await
                .unwrap(),
            json!({})
        );
        assert_eq!(
            call(&p, "NetworkDriver.DeleteNetwork", unknown)
                .await
                .unwrap(),
            json!({})
        );
        std::fs::write(dir.path().join(STATE_FILE), "{oops").unwrap();
        let e = member_plugin(dir.path()).err().unwrap();
        assert!(format!("{e:#}").contains("docker.json is damaged"), "{e:#}");
    }
}
