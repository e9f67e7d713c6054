//! The Docker network driver and IPAM plugin (legacy v1 protocol, scope `local`), served
//! by `overlayd` itself on a unix socket (`/run/docker/plugins/overlayd.sock` by default;
//! dockerd names the plugin after the file: driver and IPAM `overlayd`).
//!
//! - [`book`]: the pure rules and bookkeeping (pools, addresses, networks, endpoints).
//! - [`call`]: the pure dispatch: a method and its body parsed into a [`call::Call`].
//! - `driver`: what each call does on this host ([`Plugin::call`]).
//! - `server`: the socket and the HTTP handler ([`PluginSocket`]).
//! - [`links`]: bridges and veths through netlink.
//! - [`filter`]: the nftables rules that keep the networks apart.
//! - [`dockerd`]: the questions asked of dockerd's API (what leaked while down; container
//!   names and aliases).
//! - [`names`]: this host's container names, handed to the control plane.
//! - [`wire`]: the JSON dockerd sends and expects.
//! - here: the [`Plugin`], its state file, and what it does at start.
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
pub mod call;
pub mod dockerd;
mod driver;
pub mod filter;
pub mod links;
pub mod names;
mod server;
#[cfg(test)]
mod tests;
pub mod wire;

pub use server::{PluginSocket, Served};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use ipnet::{IpNet, Ipv4Net};

use crate::control::View;
use crate::util::{lock, write_atomic};
use book::{Book, BookError};
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
    /// Endpoints in the book as last saved, for the metrics (read without the book's lock,
    /// which a call holds across netlink work).
    endpoints: Arc<AtomicU64>,
    /// Where this host's container names go (the control plane), if anywhere.
    names: Option<tokio::sync::watch::Sender<names::LocalNames>>,
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
            endpoints: Arc::new(AtomicU64::new(book.endpoints.len() as u64)),
            started_with: Mutex::new(Some(book.clone())),
            book: tokio::sync::Mutex::new(book),
            view,
            links: Links::connect()?,
            mtu,
            tun: tun.to_owned(),
            state_file,
            dockerd_socket: dockerd_socket.to_owned(),
            names: None,
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

    /// The number of container endpoints on this host, kept current by every change of the
    /// book (for the metrics).
    pub fn endpoint_count(&self) -> Arc<AtomicU64> {
        self.endpoints.clone()
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
        })?;
        // Every change of the book is saved first, so this follows them all.
        self.endpoints
            .store(book.endpoints.len() as u64, Ordering::Relaxed);
        Ok(())
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
