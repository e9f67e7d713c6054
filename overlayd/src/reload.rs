//! Reloading the config without a restart (SIGHUP, `overlayctl reload`): the file is read
//! and validated whole again, as at start ([`Config::load`]), the difference with the
//! config in force is found ([`Diff`]), and each live setting is applied; a setting that
//! needs a restart is named in one line and keeps its running value ([`merge`]). A file
//! that does not validate, or a change the running daemon cannot take (a static peer
//! overlapping a member, a metrics port in use), is refused with one sentence and
//! changes nothing. Tunnels and sessions that a reload does not touch go on as they are.
//!
//! Order: check everything (the file, the static peers against the router, the new
//! metrics socket and flow log file), then apply the static peers (one router table),
//! then publish the config in force ([`Ctx::config`]), then the rest: this host's
//! addresses, the control plane's timings, the socket buffers, metrics, flow log, mirror.

use std::sync::{Arc, Mutex};

use protocol::api::{ConfigInForce, LastReload, ReloadReport};
use sha2::Digest;

use crate::config::diff::{Diff, merge};
use crate::config::{Config, Flows};
use crate::control::{Command, ControlHandle};
use crate::flowlog::FlowLog;
use crate::metrics::serve::{MetricsListener, Served, Sources};
use crate::statics::StaticPeers;
use crate::util::{lock, now_unix};

/// What reloads, and what it keeps to report.
pub struct Reloader {
    control: ControlHandle,
    /// The static peers (also the API's `peer` commands).
    pub statics: Arc<StaticPeers>,
    metrics_sources: Sources,
    metrics: Mutex<Option<Served>>,
    /// The flow log, once `[flows]` has been on (its thread lives to the end).
    flows: Mutex<Option<Arc<FlowLog>>>,
    shown: Mutex<ConfigInForce>,
    /// One reload at a time.
    running: tokio::sync::Mutex<()>,
}

/// The parts of the daemon a reload changes, as `run` made them.
pub struct Parts {
    /// The control plane (its `ctx` holds the config in force, the router, the routes).
    pub control: ControlHandle,
    /// The static peers.
    pub statics: Arc<StaticPeers>,
    /// What a metrics endpoint reads.
    pub metrics_sources: Sources,
    /// The metrics endpoint, if `[metrics]` is set.
    pub metrics: Option<Served>,
    /// The flow log, if `[flows]` is on.
    pub flows: Option<Arc<FlowLog>>,
    /// The config file's text as read at start.
    pub text: String,
}

/// Hex SHA-256 of `text`.
pub fn sha256(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Reloader {
    /// The reloader of the daemon `parts` make up.
    pub fn new(parts: Parts) -> Reloader {
        let path = parts.control.ctx.config().path.display().to_string();
        Reloader {
            shown: Mutex::new(ConfigInForce {
                path,
                sha256: sha256(&parts.text),
                loaded_unix: now_unix(),
                restart_required: Vec::new(),
                last_reload: None,
            }),
            control: parts.control,
            statics: parts.statics,
            metrics_sources: parts.metrics_sources,
            metrics: Mutex::new(parts.metrics),
            flows: Mutex::new(parts.flows),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// The config in force, as `overlayctl status` shows it.
    pub fn shown(&self) -> ConfigInForce {
        lock(&self.shown).clone()
    }

    /// The flow log, while `[flows]` is on.
    pub fn flow_log(&self) -> Option<Arc<FlowLog>> {
        if !self.control.ctx.config().flows.enabled {
            return None;
        }
        lock(&self.flows).clone()
    }

    /// Reads the config file again and applies what changed (see the module docs). `Err`
    /// is the one sentence that refused it; then nothing changed.
    pub async fn reload(&self) -> Result<ReloadReport, String> {
        let _one = self.running.lock().await;
        match self.try_reload().await {
            Ok((report, text)) => {
                let mut shown = lock(&self.shown);
                shown.sha256 = sha256(&text);
                shown.loaded_unix = now_unix();
                shown.restart_required = report.restart_required.clone();
                shown.last_reload = Some(LastReload {
                    at_unix: now_unix(),
                    applied: true,
                    changed: report.changed.clone(),
                    error: None,
                });
                let report = ReloadReport {
                    config: shown.clone(),
                    ..report
                };
                for line in &report.restart_required {
                    tracing::warn!(setting = %line, "config reload: left as it is until a restart");
                }
                tracing::info!(
                    file = %shown.path,
                    changed = ?report.changed,
                    restart_required = report.restart_required.len(),
                    "config reloaded"
                );
                Ok(report)
            }
            Err(error) => {
                tracing::error!(%error, "config reload refused; everything stays as it was");
                lock(&self.shown).last_reload = Some(LastReload {
                    at_unix: now_unix(),
                    applied: false,
                    changed: Vec::new(),
                    error: Some(error.clone()),
                });
                Err(error)
            }
        }
    }

    async fn try_reload(&self) -> Result<(ReloadReport, String), String> {
        let ctx = &self.control.ctx;
        let running = ctx.config();
        let path = running.path.clone();
        let (file, text) = Config::load_with_text(&path).map_err(|e| e.to_string())?;
        let diff = Diff::between(&running, &file);
        let in_force =
            merge(&running, file).map_err(|e| format!("config {}: {e}", path.display()))?;
        // Checks, before anything changes.
        if diff.peers {
            self.statics
                .check_reload(ctx, &in_force.peers)
                .await
                .map_err(|e| format!("config {}: {e}", path.display()))?;
        }
        // A new metrics address is bound now (one in use refuses the reload), unless it
        // has the running endpoint's port: then only once that one has stopped.
        let old_listen = running.metrics.map(|m| m.listen);
        let new_listen = in_force.metrics.map(|m| m.listen);
        let rebind = diff.metrics && old_listen != new_listen;
        let mut listener = None;
        if let (true, Some(addr)) = (rebind, new_listen)
            && old_listen.is_none_or(|old| old.port() != addr.port())
        {
            listener = Some(MetricsListener::bind(addr).map_err(|e| format!("{e:#}"))?);
        }
        let new_flow_log = if diff.flows && in_force.flows.enabled {
            match lock(&self.flows).clone() {
                Some(log) => {
                    // Opens the new file (if any) now, so that one that cannot be opened
                    // refuses the reload.
                    check_flow_file(&in_force.flows)?;
                    Some(log)
                }
                None => Some(Arc::new(
                    FlowLog::open(&in_force.flows).map_err(|e| format!("{e:#}"))?,
                )),
            }
        } else {
            None
        };
        // Applied from here on.
        if diff.peers {
            self.statics
                .reload(ctx, in_force.peers.clone())
                .await
                .map_err(|e| format!("config {}: {e}", path.display()))?;
        }
        let in_force = Arc::new(in_force);
        ctx.config.store(in_force.clone());
        let mut changed = diff.live.clone();
        if diff.addresses {
            let subnets = lock(&self.control.view)
                .membership
                .as_ref()
                .filter(|m| !m.left)
                .map(|m| m.subnets.clone())
                .unwrap_or_default();
            ctx.apply_address(&subnets).await;
        }
        if diff.control {
            let told = self
                .control
                .ask(Command::Reload, std::time::Duration::from_secs(10))
                .await;
            if let Err(e) = told {
                changed.push(format!(
                    "the control plane did not take the new [control] timings: {e}"
                ));
            }
        }
        if diff.socket_buffer {
            ctx.udp.set_buffers(in_force.tuning.socket_buffer);
        }
        if rebind {
            let mut served = lock(&self.metrics);
            served.take();
            if listener.is_none()
                && let Some(addr) = new_listen
            {
                match MetricsListener::bind(addr) {
                    Ok(l) => listener = Some(l),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "no metrics endpoint");
                        changed.push(format!("[metrics] not served: {e:#}"));
                    }
                }
            }
            *served = listener.map(|l| l.serve(self.metrics_sources.clone()));
        }
        if diff.flows {
            self.apply_flows(&in_force.flows, new_flow_log)?;
        }
        if diff.mirror {
            let (router, mtu) = (ctx.router.clone(), in_force.mtu);
            let spec = in_force.mirror.clone();
            let done = tokio::task::spawn_blocking(move || match spec {
                Some(spec) => router.mirror.start(spec, mtu).map_err(|e| e.to_string()),
                None => router.mirror.stop().map(|_| ()).map_err(|e| e.to_string()),
            })
            .await
            .map_err(|e| format!("the mirror's change failed: {e}"))?;
            if let Err(e) = done {
                changed.push(format!("the mirror did not change: {e}"));
            }
        }
        Ok((
            ReloadReport {
                changed,
                restart_required: diff.restart,
                config: self.shown(),
            },
            text,
        ))
    }

    fn apply_flows(&self, flows: &Flows, log: Option<Arc<FlowLog>>) -> Result<(), String> {
        let router = &self.control.ctx.router;
        let Some(log) = log else {
            // Off: the router stops counting; the log and its thread stay for a later on.
            router.set_flow_log(false);
            return Ok(());
        };
        let mut kept = lock(&self.flows);
        if kept.is_none() {
            log.spawn(router.clone())
                .map_err(|e| format!("cannot start the flow log's thread: {e}"))?;
            *kept = Some(log);
        } else {
            log.reconfigure(flows).map_err(|e| format!("{e:#}"))?;
        }
        router.set_flow_log(true);
        Ok(())
    }
}

/// Whether `flows`' file can be opened (it is created if missing, as the flow log would).
fn check_flow_file(flows: &Flows) -> Result<(), String> {
    match &flows.file {
        Some(path) => crate::flowlog::file::RotatingFile::open(path, flows.max_bytes)
            .map(drop)
            .map_err(|e| {
                format!(
                    "cannot open the flow log file {}: {e}; create its folder or change [flows] file",
                    path.display()
                )
            }),
        None => Ok(()),
    }
}
