//! The kernel's neighbour (ARP) table limits, raised for a run that needs more entries than
//! they allow, and put back when no run needs them any more.
//!
//! Why: the IPv4 neighbour table is one table for every namespace of the machine, and its
//! hard limit `net.ipv4.neigh.default.gc_thresh3` (1,024 by default) counts the entries of
//! all of them. A full mesh of N hosts on one underlay needs N × (N − 1) entries (every
//! host talks to every other), so 34 hosts already overflow it: the kernel logs `neighbor
//! table overflow` and `sendmsg` fails with "No buffer space available". The limits can be
//! set only in the initial namespace (where testnet runs), and they are the machine's, not
//! the run's: several runs may be up at once, so whoever raised them cannot simply put them
//! back when its own run goes.
//!
//! So: `/run/testnet/neigh.json` records the values found before the first raise and the
//! values set; each run that relies on them marks its `state.json` (`neigh_limits`); the
//! last such run to go down (or be cleaned up after a crash) writes the original values
//! back, each one only if it still holds what testnet set (an operator's later change is
//! left alone). Everything happens under an exclusive lock on `/run/testnet/neigh.lock`.
//! The underlay is IPv4 only, so the IPv6 table (`ndisc`) is left as it is.

use std::fs;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::names::RUN_ROOT;
use crate::state::{self, State};

/// The three thresholds, lowest first: below `gc_thresh1` nothing is collected; above
/// `gc_thresh2` entries are collected after 5 s; `gc_thresh3` is the hard limit.
const SYSCTLS: [&str; 3] = [
    "/proc/sys/net/ipv4/neigh/default/gc_thresh1",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh2",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh3",
];
/// The kernel's count of entries in the IPv4 neighbour table (first column, hex).
const ARP_CACHE_STAT: &str = "/proc/net/stat/arp_cache";
/// File names inside [`RUN_ROOT`].
const RECORD_FILE: &str = "neigh.json";
const LOCK_FILE: &str = "neigh.lock";

/// `gc_thresh1`, `gc_thresh2`, `gc_thresh3`.
pub(crate) type Limits = [u64; 3];

/// What testnet changed, as recorded in `/run/testnet/neigh.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The values before testnet first raised them.
    original: Limits,
    /// The values testnet set last.
    raised: Limits,
}

/// Neighbour entries a run of `hosts` hosts with `containers` containers each needs: every
/// host resolves every other host on the underlay, and each container and its host resolve
/// each other on the host's bridge.
pub(crate) fn entries_needed(hosts: usize, containers: usize) -> u64 {
    let (n, m) = (hosts as u64, containers as u64);
    n * n.saturating_sub(1) + 2 * n * m
}

/// The limits to set so that `wanted` entries (the run's and those already in the table)
/// stay below the soft limit `gc_thresh2` (where the kernel starts evicting entries in use,
/// which then must be resolved again), with room for as many again; `None` when `current`
/// already allows that. Never lowers a value.
pub(crate) fn plan(current: Limits, wanted: u64) -> Option<Limits> {
    if wanted <= current[1] {
        return None;
    }
    let hard = wanted.saturating_mul(2).next_power_of_two();
    let target = [hard / 4, hard / 2, hard];
    Some([0, 1, 2].map(|i| current[i].max(target[i])))
}

/// Raises the limits if the run in `state` needs it, and marks the run as relying on them
/// (saving `state`) when it does, whether this call or an earlier run raised them. Returns
/// the one line to tell the user when this call changed them.
pub(crate) fn raise(state: &mut State) -> Result<Option<String>> {
    let needed = entries_needed(state.hosts, state.containers);
    let _lock = Lock::take()?;
    let current = read_limits()?;
    let record = load_record()?;
    let wanted = needed + table_entries().unwrap_or(0);
    let Some(target) = plan(current, wanted) else {
        // Enough now; but if only an earlier run's raise makes it enough, rely on it too.
        if record.is_some_and(|r| plan(r.original, wanted).is_some()) {
            state.neigh_limits = true;
            state.save()?;
        }
        return Ok(None);
    };
    write_limits(current, target)?;
    let original = record.map_or(current, |r| r.original);
    save_record(&Record {
        original,
        raised: target,
    })?;
    state.neigh_limits = true;
    state.save()?;
    Ok(Some(format!(
        "testnet: raised the kernel's neighbour table limits (net.ipv4.neigh.default.gc_thresh1/2/3) \
         from {} to {} for {needed} entries; `testnet down` puts them back",
        show(current),
        show(target)
    )))
}

/// Called when run `prefix` goes: if no other run relies on the raised limits, writes the
/// original values back (each only where it still holds what testnet set) and forgets the
/// record. Returns the one line to tell the user when it restored something.
pub(crate) fn release(prefix: &str) -> Result<Option<String>> {
    if !Path::new(RUN_ROOT).join(RECORD_FILE).exists() {
        return Ok(None);
    }
    let _lock = Lock::take()?;
    let Some(record) = load_record()? else {
        return Ok(None);
    };
    for other in state::run_prefixes()?.iter().filter(|p| *p != prefix) {
        // A run whose state cannot be read is a dead one that its cleanup will release.
        if State::load(other)
            .ok()
            .flatten()
            .is_some_and(|s| s.neigh_limits)
        {
            return Ok(None);
        }
    }
    let current = read_limits()?;
    let mut restored = current;
    for i in 0..3 {
        if current[i] == record.raised[i] && current[i] != record.original[i] {
            restored[i] = record.original[i];
        }
    }
    // Lower the hard limit first: each write keeps thresh1 <= thresh2 <= thresh3.
    for i in (0..3).rev() {
        if restored[i] != current[i] {
            write_sysctl(SYSCTLS[i], restored[i])?;
        }
    }
    let path = record_path();
    fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    if restored == current {
        return Ok(None);
    }
    Ok(Some(format!(
        "testnet: put the kernel's neighbour table limits back to {}",
        show(restored)
    )))
}

/// The limits now.
pub(crate) fn read_limits() -> Result<Limits> {
    let mut limits = [0; 3];
    for (value, path) in limits.iter_mut().zip(SYSCTLS) {
        let text = fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
        *value = text
            .trim()
            .parse()
            .with_context(|| format!("{path} holds {:?}, not a number", text.trim()))?;
    }
    Ok(limits)
}

/// Writes `target` over `current`, highest first when raising so the order of the
/// thresholds holds after every write.
fn write_limits(current: Limits, target: Limits) -> Result<()> {
    for i in (0..3).rev() {
        if target[i] != current[i] {
            write_sysctl(SYSCTLS[i], target[i])?;
        }
    }
    Ok(())
}

fn write_sysctl(path: &str, value: u64) -> Result<()> {
    fs::write(path, format!("{value}\n"))
        .with_context(|| format!("cannot set {path} to {value} (testnet needs root)"))
}

/// Entries in the IPv4 neighbour table now, all namespaces together.
fn table_entries() -> Option<u64> {
    let text = fs::read_to_string(ARP_CACHE_STAT).ok()?;
    let field = text.lines().nth(1)?.split_whitespace().next()?;
    u64::from_str_radix(field, 16).ok()
}

fn show(limits: Limits) -> String {
    format!("{}/{}/{}", limits[0], limits[1], limits[2])
}

fn record_path() -> PathBuf {
    Path::new(RUN_ROOT).join(RECORD_FILE)
}

fn load_record() -> Result<Option<Record>> {
    let path = record_path();
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).with_context(|| {
            format!(
                "{} is not a testnet neighbour-limits record; check the gc_thresh values by hand and remove it",
                path.display()
            )
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn save_record(record: &Record) -> Result<()> {
    let path = record_path();
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_string_pretty(record)? + "\n")
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// An exclusive `flock` on `/run/testnet/neigh.lock`, released on drop (closing the file).
struct Lock {
    /// Held only to be closed on drop, which releases the lock.
    _file: fs::File,
}

impl Lock {
    fn take() -> Result<Lock> {
        fs::create_dir_all(RUN_ROOT).with_context(|| format!("cannot create {RUN_ROOT}"))?;
        let path = Path::new(RUN_ROOT).join(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: flock(2) on a descriptor this value owns; it blocks until the lock is free.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "cannot lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Lock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_mesh_needs_an_entry_per_ordered_pair() {
        assert_eq!(entries_needed(1, 0), 0);
        assert_eq!(entries_needed(3, 1), 6 + 6);
        assert_eq!(entries_needed(34, 0), 1122);
        assert_eq!(entries_needed(100, 1), 9900 + 200);
    }

    #[test]
    fn small_runs_leave_the_defaults_alone() {
        assert_eq!(plan([128, 512, 1024], entries_needed(3, 2) + 40), None);
        assert_eq!(plan([128, 512, 1024], 512), None);
    }

    #[test]
    fn large_runs_get_room_for_twice_what_they_need() {
        assert_eq!(plan([128, 512, 1024], 513), Some([512, 1024, 2048]));
        assert_eq!(
            plan([128, 512, 1024], entries_needed(100, 1) + 33),
            Some([8192, 16384, 32768])
        );
    }

    #[test]
    fn nothing_is_lowered() {
        // An operator's own large gc_thresh1 stays.
        assert_eq!(plan([4096, 600, 1024], 1000), Some([4096, 1024, 2048]));
        assert_eq!(plan([128, 512, 100_000], 600), Some([512, 1024, 100_000]));
    }
}
