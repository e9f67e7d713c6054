//! The daemons of a [`Testnet`]: starting, stopping, killing and watching each host's
//! `overlayd`, and keeping the run's recorded PIDs in step. The processes themselves (spawn,
//! signals, readiness) are [`crate::daemon`]'s; this module decides which host's daemon and
//! records it, and touches no namespace or config.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::Testnet;
use crate::cmd;
use crate::daemon::{Daemon, KILL_TIMEOUT, Launch, READY_TIMEOUT};

impl Testnet {
    /// Starts host `i`'s daemon with its config and waits (up to 10 s) until its API socket
    /// exists. Fails if it already runs, or with the tail of its log if it does not come up.
    pub fn start_daemon(&mut self, i: usize) -> Result<()> {
        self.spawn_daemon(i)?;
        self.wait_daemon(i)
    }

    /// Stops host `i`'s daemon: SIGTERM, then SIGKILL after 5 s. Nothing to do if it does
    /// not run.
    pub fn stop_daemon(&mut self, i: usize) -> Result<()> {
        self.host(i)?;
        let result = match &mut self.daemons[i - 1] {
            Some(daemon) => crate::daemon::stop_all(&mut [daemon]),
            None => Ok(()),
        };
        self.forget_daemon(i)?;
        result
    }

    /// Kills host `i`'s daemon with SIGKILL (a crash) and waits until it has gone. Fails if it
    /// does not run.
    pub fn kill_daemon(&mut self, i: usize) -> Result<()> {
        self.host(i)?;
        let Some(daemon) = &mut self.daemons[i - 1] else {
            bail!("h{i} has no daemon to kill");
        };
        if !daemon.alive() {
            bail!("h{i}'s daemon (pid {}) has already exited", daemon.id.pid);
        }
        let result = crate::daemon::kill_all(&mut [daemon]);
        self.forget_daemon(i)?;
        result
    }

    /// Stops host `i`'s daemon if it runs, then starts it again with the same config file.
    pub fn restart_daemon(&mut self, i: usize) -> Result<()> {
        self.stop_daemon(i)?;
        self.start_daemon(i)
    }

    /// PID of host `i`'s daemon as started (it may have exited since; see
    /// [`Testnet::daemon_alive`]).
    pub fn daemon_pid(&self, i: usize) -> Option<u32> {
        self.daemons
            .get(i.checked_sub(1)?)?
            .as_ref()
            .map(|d| d.id.pid)
    }

    /// Whether host `i`'s daemon runs.
    pub fn daemon_alive(&mut self, i: usize) -> bool {
        i.checked_sub(1)
            .and_then(|index| self.daemons.get_mut(index))
            .and_then(Option::as_mut)
            .is_some_and(Daemon::alive)
    }

    fn overlayd_binary(&self) -> Result<PathBuf> {
        let path = match &self.overlayd {
            Some(path) => path.clone(),
            None => cmd::require_project_binary("overlayd", "OVERLAYD_BIN")?,
        };
        if !path.is_file() {
            bail!(
                "the overlayd binary {} does not exist: build it with `cargo build -p overlayd`",
                path.display()
            );
        }
        Ok(path)
    }

    /// Starts every daemon, then waits for all (they come up in parallel).
    pub(super) fn start_all(&mut self) -> Result<()> {
        for i in 1..=self.state.hosts {
            self.spawn_daemon(i)?;
        }
        for i in 1..=self.state.hosts {
            self.wait_daemon(i)?;
        }
        Ok(())
    }

    fn spawn_daemon(&mut self, i: usize) -> Result<()> {
        self.host(i)?;
        if self.daemon_alive(i) {
            bail!(
                "h{i}'s daemon already runs (pid {}); stop it first",
                self.daemon_pid(i).unwrap_or_default()
            );
        }
        let binary = self.overlayd_binary()?;
        let (netns, config, socket, log) = (
            self.host_ns(i),
            self.config_path(i),
            self.socket_path(i),
            self.log_path(i),
        );
        let daemon = Daemon::spawn(&Launch {
            netns: &netns,
            binary: &binary,
            config: &config,
            socket: &socket,
            log: &log,
            detach: self.state.detach_daemons,
        })?;
        self.state.host[i - 1].daemon = Some(daemon.id);
        self.daemons[i - 1] = Some(daemon);
        self.state.save()
    }

    fn wait_daemon(&mut self, i: usize) -> Result<()> {
        let (socket, log) = (self.socket_path(i), self.log_path(i));
        let Some(daemon) = &mut self.daemons[i - 1] else {
            bail!("h{i} has no daemon to wait for");
        };
        let result = daemon.wait_ready(&socket, &log, READY_TIMEOUT);
        if result.is_err() {
            // It may still run (timeout): end it so the run does not keep a half-started
            // daemon.
            daemon.signal(libc::SIGKILL);
            daemon.wait_gone(KILL_TIMEOUT);
            self.forget_daemon(i)?;
        }
        result.with_context(|| format!("h{i}: overlayd did not start"))
    }

    fn forget_daemon(&mut self, i: usize) -> Result<()> {
        self.daemons[i - 1] = None;
        self.state.host[i - 1].daemon = None;
        self.state.save()
    }
}
