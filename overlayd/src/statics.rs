//! The static peers of the running daemon: the config file's `[[peer]]`s and those added
//! with `overlayctl peer add` (kept in `state_dir/peers.json`, see
//! [`crate::config::peers_file`] for how the two combine), kept in step in the router and
//! the kernel routes. Every change, from a reload or from the CLI, goes through one lock,
//! is checked whole first (the config's rules, a member's key, the router's overlaps with
//! members and other peers) and is then made as one router table
//! ([`Router::change_peers`]): a refused change leaves everything as it was, and peers it
//! does not touch keep their tunnels and sessions.
//!
//! It decides nothing about members (the control plane's), and never touches their
//! tunnels or routes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use keys::PublicKey;
use protocol::api::{
    PeerOrigin, StaticPeerChange, StaticPeerRemoveRequest, StaticPeerRequest, StaticPeerSetRequest,
};

use crate::config::{Config, PeerConfig, peers_file};
use crate::control::{ApiFailure, Ctx};
use crate::router::{Initiate, KnownKey, PeerSpec, Upserted};

/// The static peers in force, and the lock their changes take.
pub struct StaticPeers {
    file: PathBuf,
    inner: tokio::sync::Mutex<InForce>,
    /// Each static peer's origin, for `GET /v1/peers` (read without the lock).
    origins: ArcSwap<HashMap<PublicKey, PeerOrigin>>,
}

struct InForce {
    config: Vec<PeerConfig>,
    cli: Vec<PeerConfig>,
    /// The kernel routes of each static peer.
    routed: HashMap<PublicKey, Vec<IpNet>>,
}

impl InForce {
    fn all(&self) -> Vec<PeerConfig> {
        self.config.iter().chain(&self.cli).cloned().collect()
    }
}

/// A change the router would refuse, or one of the config's rules broken: one sentence.
type Refusal = String;

impl StaticPeers {
    /// The static peers `config` started the daemon with (their tunnels and routes made by
    /// `run`).
    pub fn new(config: &Config) -> StaticPeers {
        let inner = InForce {
            config: config.peers.clone(),
            cli: config.cli_peers.clone(),
            routed: config
                .static_peers()
                .map(|p| (p.public_key, p.subnets.clone()))
                .collect(),
        };
        StaticPeers {
            file: peers_file::path(&config.state_dir),
            origins: ArcSwap::from_pointee(origins(&inner)),
            inner: tokio::sync::Mutex::new(inner),
        }
    }

    /// Where the peers added with `overlayctl` are kept.
    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    /// Where the static peer with `key` comes from; `None` for a member (or no peer).
    pub fn origin(&self, key: &PublicKey) -> Option<PeerOrigin> {
        self.origins.load().get(key).copied()
    }

    fn publish(&self, inner: &InForce) {
        self.origins.store(Arc::new(origins(inner)));
    }

    /// Whether the config's peers could become `config` now (a reload's check, before
    /// anything of it is applied).
    pub async fn check_reload(&self, ctx: &Ctx, config: &[PeerConfig]) -> Result<(), Refusal> {
        let inner = self.inner.lock().await;
        let next: Vec<PeerConfig> = config.iter().chain(&inner.cli).cloned().collect();
        check(ctx, &inner.all(), &next).map(|_| ())
    }

    /// Makes the config's peers `config` (a reload): added, removed and changed in the
    /// router and the kernel routes; the peers added with `overlayctl` stay.
    pub async fn reload(&self, ctx: &Ctx, config: Vec<PeerConfig>) -> Result<(), Refusal> {
        let mut inner = self.inner.lock().await;
        let cli = inner.cli.clone();
        self.apply(ctx, &mut inner, config, cli).await.map(|_| ())
    }

    /// `overlayctl peer add`: a new static peer, kept in the state directory.
    pub async fn add(
        &self,
        ctx: &Ctx,
        req: StaticPeerRequest,
    ) -> Result<StaticPeerChange, ApiFailure> {
        let mut inner = self.inner.lock().await;
        let key = req.public_key;
        if inner.config.iter().any(|p| p.public_key == key) {
            return Err(in_config_file(ctx, &key));
        }
        if inner.cli.iter().any(|p| p.public_key == key) {
            return Err(ApiFailure::conflict(format!(
                "peer {key} was already added; change it with `overlayctl peer set {key} ...` or remove it first"
            )));
        }
        if req.persistent_keepalive == Some(0) {
            return Err(ApiFailure::bad(format!(
                "peer {key}: persistent_keepalive 0 is not allowed; omit it to turn keepalives off"
            )));
        }
        let peer = PeerConfig {
            public_key: key,
            name: name(req.name.as_deref(), &key)?,
            endpoint: req.endpoint,
            subnets: req.subnets,
            persistent_keepalive: req.persistent_keepalive,
        };
        let mut cli = inner.cli.clone();
        cli.push(peer);
        self.change_cli(ctx, &mut inner, cli, key).await
    }

    /// `overlayctl peer set`: changes a peer added with `peer add`.
    pub async fn set(
        &self,
        ctx: &Ctx,
        req: StaticPeerSetRequest,
    ) -> Result<StaticPeerChange, ApiFailure> {
        let mut inner = self.inner.lock().await;
        let key = req.public_key;
        let mut cli = inner.cli.clone();
        let Some(peer) = cli.iter_mut().find(|p| p.public_key == key) else {
            return Err(not_added(ctx, &inner, &key));
        };
        if let Some(n) = req.name.as_deref() {
            peer.name = name(Some(n), &key)?;
        }
        if let Some(endpoint) = req.endpoint {
            peer.endpoint = Some(endpoint);
        }
        if let Some(subnets) = req.subnets {
            peer.subnets = subnets;
        }
        match req.persistent_keepalive {
            Some(0) => peer.persistent_keepalive = None,
            Some(k) => peer.persistent_keepalive = Some(k),
            None => {}
        }
        self.change_cli(ctx, &mut inner, cli, key).await
    }

    /// `overlayctl peer remove`: removes a peer added with `peer add`.
    pub async fn remove(
        &self,
        ctx: &Ctx,
        req: StaticPeerRemoveRequest,
    ) -> Result<StaticPeerChange, ApiFailure> {
        let mut inner = self.inner.lock().await;
        let key = req.public_key;
        if !inner.cli.iter().any(|p| p.public_key == key) {
            return Err(not_added(ctx, &inner, &key));
        }
        let cli: Vec<PeerConfig> = inner
            .cli
            .iter()
            .filter(|p| p.public_key != key)
            .cloned()
            .collect();
        self.change_cli(ctx, &mut inner, cli, key).await
    }

    /// Checks `cli` as the peers added with `overlayctl`, saves it, then applies it; if
    /// the router refuses it after all (a member changed in between), the file is put
    /// back.
    async fn change_cli(
        &self,
        ctx: &Ctx,
        inner: &mut InForce,
        cli: Vec<PeerConfig>,
        key: PublicKey,
    ) -> Result<StaticPeerChange, ApiFailure> {
        let config = ctx.config();
        config.check_cli_peers(&cli).map_err(ApiFailure::bad)?;
        let next: Vec<PeerConfig> = inner.config.iter().chain(&cli).cloned().collect();
        check(ctx, &inner.all(), &next).map_err(ApiFailure::bad)?;
        let internal = |e: anyhow::Error| ApiFailure::internal(format!("{e:#}"));
        peers_file::write(&self.file, &cli).map_err(internal)?;
        let old_cli = inner.cli.clone();
        let config_peers = inner.config.clone();
        match self.apply(ctx, inner, config_peers, cli).await {
            Ok(done) => Ok(StaticPeerChange {
                public_key: key,
                action: done
                    .into_iter()
                    .find(|(k, _)| *k == key)
                    .map_or("unchanged", |(_, a)| a)
                    .to_owned(),
                file: self.file.display().to_string(),
            }),
            Err(refusal) => {
                peers_file::write(&self.file, &old_cli).map_err(internal)?;
                Err(ApiFailure::bad(refusal))
            }
        }
    }

    /// Makes the static peers `config` ∪ `cli` in the router and the kernel routes; what
    /// happened to each key that changed.
    async fn apply(
        &self,
        ctx: &Ctx,
        inner: &mut InForce,
        config: Vec<PeerConfig>,
        cli: Vec<PeerConfig>,
    ) -> Result<Vec<(PublicKey, &'static str)>, Refusal> {
        let next: Vec<PeerConfig> = config.iter().chain(&cli).cloned().collect();
        let (remove, upsert) = check(ctx, &inner.all(), &next)?;
        let keys: Vec<PublicKey> = upsert.iter().map(|s| s.public_key).collect();
        let results = ctx
            .router
            .change_peers(&remove, upsert)
            .map_err(|e| e.to_string())?;
        let mut done: Vec<(PublicKey, &'static str)> =
            remove.iter().map(|k| (*k, "removed")).collect();
        let mut routes = ctx.routes.lock().await;
        for key in &remove {
            for net in inner.routed.remove(key).unwrap_or_default() {
                routes.remove(net).await;
            }
        }
        let source = ctx.address();
        let mut added = Vec::new();
        for (key, result) in keys.iter().zip(results) {
            let wanted = next
                .iter()
                .find(|p| p.public_key == *key)
                .map(|p| p.subnets.clone())
                .unwrap_or_default();
            let reroute = match result {
                Upserted::Added { .. } => {
                    added.push(*key);
                    done.push((*key, "added"));
                    true
                }
                Upserted::Updated {
                    subnets_changed, ..
                } => {
                    done.push((*key, "updated"));
                    subnets_changed
                }
                Upserted::Unchanged => {
                    done.push((*key, "unchanged"));
                    false
                }
            };
            if reroute {
                // Only what changes: a subnet kept never goes without its route (a packet
                // for it would follow the host's other routes meanwhile).
                let old = inner.routed.remove(key).unwrap_or_default();
                for net in old.iter().filter(|n| !wanted.contains(n)) {
                    routes.remove(*net).await;
                }
                for net in wanted.iter().filter(|n| !old.contains(n)) {
                    if let Err(e) = routes.add(*net, ctx.if_index, source).await {
                        tracing::warn!(peer = %key.short(), subnet = %net, error = %format!("{e:#}"), "cannot add a static peer's route");
                    }
                }
                inner.routed.insert(*key, wanted);
            }
        }
        drop(routes);
        for key in &added {
            ctx.router.initiate_and_send(Initiate::Peer(key), &*ctx.udp);
        }
        for (key, what) in &done {
            if *what != "unchanged" {
                tracing::info!(peer = %key, "static peer {what}");
            }
        }
        inner.config = config;
        inner.cli = cli;
        self.publish(inner);
        Ok(done)
    }
}

fn origins(inner: &InForce) -> HashMap<PublicKey, PeerOrigin> {
    let config = inner
        .config
        .iter()
        .map(|p| (p.public_key, PeerOrigin::Config));
    let cli = inner.cli.iter().map(|p| (p.public_key, PeerOrigin::Cli));
    config.chain(cli).collect()
}

/// What changes from the static peers `old` to `next` (keys to remove, peers to add or
/// update), if the router and the control plane allow it: no key of a member (routed or
/// not) or of a revoked one, and no overlap with the members' or other peers' subnets.
fn check(
    ctx: &Ctx,
    old: &[PeerConfig],
    next: &[PeerConfig],
) -> Result<(Vec<PublicKey>, Vec<PeerSpec>), Refusal> {
    let remove: Vec<PublicKey> = old
        .iter()
        .filter(|o| !next.iter().any(|n| n.public_key == o.public_key))
        .map(|o| o.public_key)
        .collect();
    let upsert: Vec<PeerSpec> = next
        .iter()
        .filter(|n| !old.contains(n))
        .map(|p| PeerSpec {
            public_key: p.public_key,
            name: p.name.as_ref().map(ToString::to_string),
            endpoint: p.endpoint,
            subnets: p.subnets.clone(),
            groups: Vec::new(),
            persistent_keepalive: p.persistent_keepalive,
            advertised: false,
        })
        .collect();
    for spec in &upsert {
        let key = spec.public_key;
        match ctx.router.known_key(&key) {
            Some(KnownKey::Member(node)) => {
                return Err(format!(
                    "peer {key} is the WireGuard key of member {node} of this host's network; members are reached through the network, not as static peers"
                ));
            }
            Some(KnownKey::Revoked(node)) => {
                return Err(format!(
                    "peer {key} is the WireGuard key of {node}, whose certificate the network's CA revoked; it cannot be a peer"
                ));
            }
            None => {}
        }
        if !old.iter().any(|o| o.public_key == key) && ctx.router.peer(&key).is_some() {
            return Err(format!(
                "peer {key} is already a tunnel of this host (a member of its network); members are reached through the network, not as static peers"
            ));
        }
    }
    // This host's own subnets and address: its certificate's too, which the config's
    // rules do not see on a member.
    let local = ctx.router.local_networks();
    for spec in &upsert {
        for subnet in &spec.subnets {
            let overlaps =
                |n: &IpNet| n.contains(&subnet.network()) || subnet.contains(&n.network());
            if let Some(own) = local.iter().find(|n| overlaps(n)) {
                return Err(format!(
                    "peer {} cannot have subnet {subnet}: it overlaps {own} of this host; give every host its own subnet",
                    spec.public_key
                ));
            }
        }
    }
    ctx.router
        .check_changes(&remove, &upsert)
        .map_err(|e| e.to_string())?;
    Ok((remove, upsert))
}

fn name(text: Option<&str>, key: &PublicKey) -> Result<Option<keys::Name>, ApiFailure> {
    text.map(|n| {
        keys::Name::new(n)
            .map_err(|e| ApiFailure::bad(format!("peer {}: name {n:?}: {e}", key.short())))
    })
    .transpose()
}

fn in_config_file(ctx: &Ctx, key: &PublicKey) -> ApiFailure {
    ApiFailure::conflict(format!(
        "peer {key} is a [[peer]] of {}; change it there and run `overlayctl reload`",
        ctx.config().path.display()
    ))
}

fn not_added(ctx: &Ctx, inner: &InForce, key: &PublicKey) -> ApiFailure {
    if inner.config.iter().any(|p| p.public_key == *key) {
        return in_config_file(ctx, key);
    }
    ApiFailure::not_found(format!(
        "no peer {key} was added with overlayctl; `overlayctl peers` lists the peers, `overlayctl peer add` adds one"
    ))
}
