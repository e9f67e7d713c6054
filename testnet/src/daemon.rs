//! Starting, watching and ending `overlayd` processes, by recorded PID only.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cmd;
use crate::proc::{ProcId, poll_until};

/// How long a daemon has to create its API socket.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a daemon has to exit after SIGTERM before it gets SIGKILL.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a process has to disappear after SIGKILL.
pub(crate) const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of `overlayd.log` quoted in errors.
const LOG_TAIL_LINES: usize = 20;

/// A daemon this run started.
pub(crate) struct Daemon {
    pub id: ProcId,
    /// Set when this process started it: waiting on it reaps the zombie. `None` for daemons
    /// of an attached run (started by an earlier CLI call).
    child: Option<Child>,
}

/// What to start, and how.
pub(crate) struct Launch<'a> {
    pub netns: &'a str,
    pub binary: &'a Path,
    pub config: &'a Path,
    pub socket: &'a Path,
    pub log: &'a Path,
    /// Put the daemon in its own session so it outlives this process and its terminal.
    pub detach: bool,
}

impl Daemon {
    /// A daemon recorded by an earlier process.
    pub fn recorded(id: ProcId) -> Daemon {
        Daemon { id, child: None }
    }

    /// Starts `overlayd --config` in the namespace, output appended to the log. Does not
    /// wait for it to be ready; see [`Daemon::wait_ready`].
    pub fn spawn(launch: &Launch) -> Result<Daemon> {
        // A socket left by the previous daemon would make it look ready at once.
        match fs::remove_file(launch.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot remove {}", launch.socket.display()));
            }
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(launch.log)
            .with_context(|| format!("cannot open {}", launch.log.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("cannot open {}", launch.log.display()))?;
        let mut command = cmd::in_netns(
            launch.netns,
            &[
                launch.binary.as_os_str(),
                "--config".as_ref(),
                launch.config.as_os_str(),
            ],
        );
        command.stdin(Stdio::null()).stdout(log).stderr(log_err);
        if launch.detach {
            // SAFETY: setsid(2) is async-signal-safe and touches no memory of this process;
            // nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    if libc::setsid() == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::show(&command)))?;
        // `ip netns exec` execs the daemon in place, so the child's PID is the daemon's.
        let id = ProcId::of(child.id()).unwrap_or(ProcId {
            pid: child.id(),
            start_time: 0,
        });
        Ok(Daemon {
            id,
            child: Some(child),
        })
    }

    /// Whether it still runs (reaps it if it was our child and has exited).
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => self.id.alive(),
        }
    }

    /// Polls until the API socket exists while the process runs, for up to `timeout`.
    pub fn wait_ready(&mut self, socket: &Path, log: &Path, timeout: Duration) -> Result<()> {
        let mut exited = false;
        let ready = poll_until(timeout, || {
            if !self.alive() {
                exited = true;
                return true;
            }
            fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket())
        });
        if exited || (ready && !self.alive()) {
            bail!(
                "overlayd (pid {}) exited before it was ready; {} ends with:\n{}",
                self.id.pid,
                log.display(),
                log_tail(log)
            );
        }
        if !ready {
            bail!(
                "overlayd (pid {}) did not create its API socket {} within {} s; {} ends with:\n{}",
                self.id.pid,
                socket.display(),
                timeout.as_secs(),
                log.display(),
                log_tail(log)
            );
        }
        Ok(())
    }

    /// Sends `signal` (only to this very process).
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.alive() {
            self.id.signal(signal);
        }
    }

    /// Polls until the process has gone, for up to `timeout`. Returns whether it has.
    pub fn wait_gone(&mut self, timeout: Duration) -> bool {
        poll_until(timeout, || !self.alive())
    }
}

/// Ends daemons gracefully: SIGTERM to all, up to [`STOP_TIMEOUT`], then SIGKILL to those
/// left. Fails naming the PIDs that survived even SIGKILL.
pub(crate) fn stop_all(daemons: &mut [&mut Daemon]) -> Result<()> {
    for daemon in daemons.iter_mut() {
        daemon.signal(libc::SIGTERM);
    }
    poll_until(STOP_TIMEOUT, || daemons.iter_mut().all(|d| !d.alive()));
    kill_all(daemons)
}

/// SIGKILL to every daemon still running, and wait until they have gone.
pub(crate) fn kill_all(daemons: &mut [&mut Daemon]) -> Result<()> {
    for daemon in daemons.iter_mut() {
        daemon.signal(libc::SIGKILL);
    }
    poll_until(KILL_TIMEOUT, || daemons.iter_mut().all(|d| !d.alive()));
    let left: Vec<String> = daemons
        .iter_mut()
        .filter_map(|d| d.alive().then(|| d.id.pid.to_string()))
        .collect();
    if !left.is_empty() {
        bail!(
            "overlayd pids {} still run after SIGKILL; check `ps -p {}`",
            left.join(", "),
            left.join(",")
        );
    }
    Ok(())
}

/// The last lines of a log, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            if tail.is_empty() {
                "(empty)".to_owned()
            } else {
                tail.join("\n")
            }
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}
