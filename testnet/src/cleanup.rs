//! Tearing a run down, and finding the leftovers of dead runs.
//!
//! Only namespaces named like ours (`P-ul`, `P-hI`, `P-hI-cJ`) are touched, and only for a
//! prefix that has a run directory in `/run/testnet` or that the caller names: other
//! namespaces on the machine are never looked at twice.

use std::fs;
use std::io::ErrorKind;

use anyhow::{Context, Result, anyhow};

use crate::cmd;
use crate::daemon::{self, Daemon, KILL_TIMEOUT};
use crate::names::{self, NsKind};
use crate::neigh;
use crate::proc::{ProcId, poll_until};
use crate::state::{self, State};

/// Ends `daemons` (SIGTERM, then SIGKILL), kills whatever else still runs in the run's
/// namespaces, deletes the namespaces leaves first, and removes the run directory. Goes on
/// after errors and reports them all. Returns the namespaces deleted.
pub(crate) fn teardown_run(prefix: &str, daemons: &mut [&mut Daemon]) -> Result<Vec<String>> {
    let mut errors = Vec::new();
    if let Err(e) = daemon::stop_all(daemons) {
        errors.push(e);
    }
    let mut removed = Vec::new();
    match run_namespaces(prefix) {
        Ok(namespaces) => {
            if let Err(e) = end_processes_in(&namespaces) {
                errors.push(e);
            }
            // The namespaces' processes have ended (or we reported why not): delete anyway,
            // the kernel frees a namespace when its last process leaves.
            for ns in namespaces {
                match cmd::ip(&["netns", "del", &ns]) {
                    Ok(_) => removed.push(ns),
                    // Another cleanup of the same dead run may have been faster.
                    Err(_) if !netns_exists(&ns) => {}
                    Err(e) => errors.push(e),
                }
            }
        }
        Err(e) => errors.push(e),
    }
    let dir = names::run_dir(prefix);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(_) if !dir.exists() => {}
        Err(e) => errors.push(anyhow!("cannot remove {}: {e}", dir.display())),
    }
    // After the run directory: this run no longer counts as relying on the limits.
    match neigh::release(prefix) {
        Ok(Some(line)) => eprintln!("{line}"),
        Ok(None) => {}
        Err(e) => errors.push(e.context("cannot put the neighbour table limits back")),
    }
    match errors.len() {
        0 => Ok(removed),
        1 => Err(errors.remove(0)),
        _ => Err(anyhow!(
            "{}",
            errors
                .iter()
                .map(|e| format!("{e:#}"))
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

fn netns_exists(ns: &str) -> bool {
    cmd::list_netns().map_or(true, |all| all.iter().any(|n| n == ns))
}

/// Namespaces of run `prefix` that exist, containers first, the switch last.
pub(crate) fn run_namespaces(prefix: &str) -> Result<Vec<String>> {
    let mut found: Vec<(NsKind, String)> = cmd::list_netns()?
        .into_iter()
        .filter_map(|name| match names::parse_netns(&name) {
            Some((p, kind)) if p == prefix => Some((kind, name)),
            _ => None,
        })
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, name)| name).collect())
}

/// SIGKILL to every process inside `namespaces` (test tools and daemons the run started), and
/// wait until they have gone. Repeats, in case one forked meanwhile.
fn end_processes_in(namespaces: &[String]) -> Result<()> {
    let mut left = Vec::new();
    let gone = poll_until(KILL_TIMEOUT, || {
        left.clear();
        for ns in namespaces {
            match cmd::netns_pids(ns) {
                Ok(pids) => left.extend(pids.into_iter().filter_map(ProcId::of)),
                // The namespace may be gone already; deleting it will tell.
                Err(_) => continue,
            }
        }
        for id in &left {
            id.signal(libc::SIGKILL);
        }
        left.retain(|id| id.alive());
        left.is_empty()
    });
    if !gone {
        let pids: Vec<String> = left.iter().map(|id| id.pid.to_string()).collect();
        return Err(anyhow!(
            "processes {} still run inside namespaces of the run after SIGKILL",
            pids.join(", ")
        ));
    }
    Ok(())
}

/// See [`crate::Testnet::cleanup_leftovers`].
pub(crate) fn cleanup_leftovers(prefix_filter: Option<&str>) -> Result<Vec<String>> {
    let candidates = match prefix_filter {
        Some(prefix) => {
            names::validate_prefix(prefix)?;
            vec![prefix.to_owned()]
        }
        None => state::run_prefixes()?,
    };
    let mut removed = Vec::new();
    for prefix in candidates {
        // A state file that cannot be read is a run that died while writing it.
        let state = State::load(&prefix).ok().flatten();
        if state.as_ref().is_some_and(State::alive) {
            continue;
        }
        removed.extend(remove_run(&prefix, state.as_ref())?);
    }
    Ok(removed)
}

/// Removes run `prefix` whether or not it is alive, ending the daemons recorded in `state`.
pub(crate) fn remove_run(prefix: &str, state: Option<&State>) -> Result<Vec<String>> {
    let mut daemons: Vec<Daemon> = state
        .into_iter()
        .flat_map(|s| s.host.iter())
        .filter_map(|h| h.daemon)
        .map(Daemon::recorded)
        .collect();
    let mut refs: Vec<&mut Daemon> = daemons.iter_mut().collect();
    teardown_run(prefix, &mut refs).with_context(|| format!("cannot remove testnet run {prefix}"))
}
