//! `overlayd`: one daemon per host. It owns a TUN device, keeps a WireGuard tunnel
//! (boringtun) to every peer, and routes each peer's subnets to it.
//!
//! Seams: [`router`] is the I/O-free tunnel logic; [`datapath`] the threads that move
//! batches between the TUN and the UDP socket ([`datapath::udp`] the batched socket calls);
//! [`netlink`] routes; [`api`] the local API; [`metrics`] the Prometheus endpoint;
//! [`docker`] the Docker network and IPAM plugin; [`config`] the file; [`mirror`] the copy
//! of decrypted traffic for an IDS; [`address`] which overlay address this host takes;
//! [`util`] the small effects they share (atomic writes, unix sockets, the clock);
//! [`statics`] the static peers in the running daemon; [`reload`] the config reloaded
//! without a restart (SIGHUP, `overlayctl reload`). [`run`] wires them.

pub mod address;
pub mod api;
pub mod config;
pub mod control;
pub mod datapath;
pub mod dns;
pub mod docker;
pub mod events;
pub mod firewall;
pub mod flowlog;
pub mod metrics;
pub mod mirror;
pub mod netlink;
pub mod reload;
pub mod router;
pub mod statics;
pub mod util;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

/// An error the operator caused (config, permissions): exit code 2 rather than 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs the daemon with a validated config until SIGTERM or SIGINT, then removes the
/// routes it added and returns. Whatever it made before a failure is removed too.
pub async fn run(config: config::Config, text: String) -> anyhow::Result<()> {
    // First of all, so that a SIGTERM during start-up (nft, netlink, the control plane's
    // state) is held until the daemon can clean up, instead of killing it half made.
    let shutdown = shutdown_signal();
    // Also before anything: SIGHUP's default action would kill the daemon. One that comes
    // during start-up is taken once the daemon is up.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let api_socket = api::ApiSocket::bind(&config.api_socket)?;
    let plugin_socket = if config.docker.enabled {
        Some(docker::PluginSocket::bind(&config.docker.socket)?)
    } else {
        None
    };
    let metrics_listener = match &config.metrics {
        Some(m) => Some(metrics::serve::MetricsListener::bind(m.listen)?),
        None => None,
    };
    let state = control::state::StateDir::open(&config.state_dir)?;
    // Before anything is made: a flow log file that cannot be opened is the operator's to fix.
    let flow_log = if config.flows.enabled {
        let log = flowlog::FlowLog::open(&config.flows)
            .map_err(|e| anyhow::Error::new(UsageError(format!("{e:#}"))))?;
        Some(Arc::new(log))
    } else {
        None
    };
    // One port (the default): no socket of its own; QUIC shares the tunnels' below.
    let own_control_socket = if config.one_port() {
        None
    } else {
        Some(control::bind_control_socket(config.control_port())?)
    };
    let tuning = config.effective_tuning();
    let udp = datapath::udp::Udp::bind_with(
        config.listen_port,
        tuning.udp_gso,
        tuning.udp_gro,
        tuning.socket_buffer,
    )
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "UDP port {} is in use (another overlayd or WireGuard?); stop it or set listen_port",
                config.listen_port
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot open UDP port {}", config.listen_port))
        }
    })?;
    let udp = Arc::new(udp);
    let (control_socket, quic_inbox) = match own_control_socket {
        Some(sock) => (control::ControlSocket::Own(sock), None),
        None => {
            let inbox = Arc::new(datapath::oneport::QuicInbox::default());
            let local = udp
                .local_addr()
                .context("cannot read the UDP port's address")?;
            let shared =
                datapath::oneport::SharedQuicSocket::new(udp.clone(), inbox.clone(), local);
            (
                control::ControlSocket::Shared(Arc::new(shared)),
                Some(inbox),
            )
        }
    };
    let tun = datapath::tun::open_tun(&config.tun_name, tuning.tun_offload)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => anyhow::Error::new(UsageError(format!(
                "cannot create TUN device {}: permission denied; run overlayd as root (it needs CAP_NET_ADMIN)",
                config.tun_name
            ))),
            Some(libc::EBUSY) => anyhow::anyhow!(
                "TUN device {} is in use by another process; stop it or set tun_name",
                config.tun_name
            ),
            _ => anyhow::Error::new(e).context(format!("cannot create TUN device {}", config.tun_name)),
        })?;
    let tun_offload = tun.tcp_gso();
    let if_index = tun
        .if_index()
        .with_context(|| format!("cannot read the index of TUN device {}", config.tun_name))?;
    let mut routes = netlink::Routes::connect()?;
    // The config's address, if any, from the start; a member's default address comes when
    // the control plane knows its subnet (`control::Ctx::apply_address`).
    routes
        .configure_link(if_index, config.mtu, config.address)
        .await?;
    for peer in config.static_peers() {
        for net in &peer.subnets {
            if let Err(e) = routes.add(*net, if_index, config.address).await {
                routes.remove_all().await;
                return Err(e);
            }
        }
    }
    let static_peers: Vec<config::PeerConfig> = config.static_peers().cloned().collect();
    let router = Arc::new(router::Router::new(&config.private_key, &static_peers));
    router.set_relay_serve(config.control.relay != Some(false));
    // Until the control plane knows more (a member's subnets): the config's own networks,
    // in the router and in nftables.
    let local = address::local_networks(config.address, &config.subnets, &[]);
    router.set_local_networks(&local);
    if let Some(log) = &flow_log {
        router.set_flow_log(true);
        if let Err(e) = log.spawn(router.clone()) {
            routes.remove_all().await;
            return Err(anyhow::Error::new(e).context("cannot start the flow log's thread"));
        }
    }
    firewall::apply(&config.tun_name, &local).await;
    let tun = Arc::new(tun);
    if let Err(e) = datapath::spawn(
        tun,
        udp.clone(),
        router.clone(),
        config.mtu,
        tuning.sched_batch,
        quic_inbox,
    ) {
        routes.remove_all().await;
        firewall::remove().await;
        return Err(anyhow::Error::new(e).context("cannot start the data plane threads"));
    }
    if let Some(spec) = &config.mirror {
        // The tunnel runs without it rather than not at all.
        if let Err(e) = router.mirror.start(spec.clone(), config.mtu) {
            tracing::error!(error = %e, "no mirror of decrypted traffic; fix it and run `overlayctl mirror start`");
        }
    }
    {
        let (router, udp) = (router.clone(), udp.clone());
        let watched = netlink::watch_addresses(move || {
            router.initiate_and_send(crate::router::Initiate::All, &*udp)
        });
        if let Err(e) = watched {
            tracing::warn!(error = %format!("{e:#}"), "roaming of this host will wait for keepalives");
        }
    }
    let routes = Arc::new(tokio::sync::Mutex::new(routes));
    let statics = Arc::new(statics::StaticPeers::new(&config));
    let config = Arc::new(config);
    // This host's container names: from the Docker plugin to the control plane.
    let (names_tx, names_rx) = tokio::sync::watch::channel(docker::names::LocalNames::default());
    let control = control::spawn(Arc::new(control::Ctx {
        config: arc_swap::ArcSwap::new(config.clone()),
        router: router.clone(),
        routes: routes.clone(),
        if_index,
        address: std::sync::Mutex::new(config.address),
        udp: udp.clone(),
        state,
        control_socket: std::sync::Mutex::new(Some(control_socket)),
        endpoint: std::sync::OnceLock::new(),
        traffic: Arc::default(),
        local_names: names_rx,
    }));
    let dns_task = config.dns.enabled.then(|| {
        tokio::spawn(dns::run(
            dns::Settings {
                address: config.dns.address,
                resolv_conf: "/etc/resolv.conf".into(),
            },
            control.view.clone(),
            routes.clone(),
            if_index,
        ))
    });
    let ctx_for_close = control.ctx.clone();
    let plugin = match plugin_socket {
        Some(socket) => {
            let plugin = docker::Plugin::open(
                &config.state_dir,
                config.docker.mtu,
                &config.tun_name,
                &config.docker.dockerd_socket,
                control.view.clone(),
            )
            .map(|p| p.publish_names(names_tx))
            .and_then(|p| {
                let endpoints = p.endpoint_count();
                socket.serve(p).map(|served| (served, endpoints))
            });
            match plugin {
                Ok(p) => Some(p),
                Err(e) => {
                    ctx_for_close.close_endpoint();
                    routes.lock().await.remove_all().await;
                    firewall::remove().await;
                    return Err(e.context("cannot start the Docker plugin"));
                }
            }
        }
        None => None,
    };
    let metrics_sources = metrics::serve::Sources {
        router: router.clone(),
        view: control.view.clone(),
        traffic: control.ctx.traffic.clone(),
        docker_endpoints: plugin.as_ref().map(|(_, endpoints)| endpoints.clone()),
    };
    let metrics = metrics_listener.map(|listener| listener.serve(metrics_sources.clone()));
    tracing::info!(
        public_key = %config.private_key.public_key(),
        listen_port = config.listen_port,
        control_port = config.control_port(),
        tun = %config.tun_name,
        mtu = config.mtu,
        peers = config.peers.len() + config.cli_peers.len(),
        tun_offload,
        udp_gso = udp.gso(),
        udp_gro = udp.gro(),
        "overlayd is up"
    );
    let reloader = Arc::new(reload::Reloader::new(reload::Parts {
        control: control.clone(),
        statics,
        metrics_sources,
        metrics,
        flows: flow_log,
        text,
    }));
    let hangup_task = match hangups {
        Ok(mut hangups) => {
            let reloader = reloader.clone();
            Some(tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP received: reloading the config");
                    // The outcome is logged and kept for `overlayctl status`.
                    let _ = reloader.reload().await;
                }
            }))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the SIGHUP handler; reload with `overlayctl reload`");
            None
        }
    };
    let state = Arc::new(api::ApiState {
        router: router.clone(),
        udp,
        public_key: config.private_key.public_key(),
        listen_port: config.listen_port,
        tun_name: config.tun_name.clone(),
        mtu: config.mtu,
        tun_offload,
        started: Instant::now(),
        control,
        reload: reloader.clone(),
    });
    let served = api_socket.serve(state, shutdown).await;
    if let Some(task) = hangup_task {
        task.abort();
    }
    // The window under way, so that a stop loses no flows.
    if let Some(log) = reloader.flow_log() {
        log.record(router.take_flows());
    }
    // Bridges and veths stay: running containers keep their interfaces across a restart.
    drop(plugin);
    if let Some(task) = dns_task {
        task.abort();
    }
    // The metrics endpoint goes with the reloader (the API's state held the other copy).
    drop(reloader);
    // Its interface goes with it.
    let _ = router.mirror.stop();
    tracing::info!("shutting down: removing routes");
    ctx_for_close.close_endpoint();
    routes.lock().await.remove_all().await;
    firewall::remove().await;
    served
}

/// Installs the SIGTERM and SIGINT handlers now and returns the future that ends when one
/// of them arrives (also one that arrived before it is first polled).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            tracing::error!("cannot install signal handlers; stop overlayd with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
