//! Processes identified by PID *and* start time, so that a recorded PID the kernel has since
//! given to an unrelated process is never signalled; and polling with a deadline.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How often [`poll_until`] checks.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A process as recorded in `state.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcId {
    /// Its PID.
    pub pid: u32,
    /// Its start time in clock ticks after boot (field 22 of `/proc/PID/stat`).
    pub start_time: u64,
}

impl ProcId {
    /// The running process `pid`, if there is one.
    pub fn of(pid: u32) -> Option<ProcId> {
        let (_, start_time) = read_stat(pid)?;
        Some(ProcId { pid, start_time })
    }

    /// This process.
    pub fn current() -> Option<ProcId> {
        ProcId::of(std::process::id())
    }

    /// Whether the process still runs: same PID and start time, and not a zombie whose
    /// threads are all gone. (A multi-threaded process's leader shows `Z` as soon as it has
    /// exited, while its other threads may still be exiting and holding its sockets: a
    /// restart then finds its UDP port still in use.)
    pub fn alive(&self) -> bool {
        match read_stat(self.pid) {
            Some((state, start)) if start == self.start_time => match state {
                'Z' | 'X' => threads(self.pid) > 1,
                _ => true,
            },
            _ => false,
        }
    }

    /// Sends `signal` if the process is still this one. Returns whether it was sent.
    pub fn signal(&self, signal: libc::c_int) -> bool {
        if !self.alive() {
            return false;
        }
        send_signal(self.pid, signal)
    }
}

/// Sends `signal` to `pid`. Returns whether it was delivered.
pub(crate) fn send_signal(pid: u32, signal: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        // 0 and negatives would signal process groups.
        return false;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; pid is a single positive PID.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Number of threads listed in `/proc/PID/task` (0 when gone).
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// State letter and start time from `/proc/PID/stat`.
fn read_stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces and ')'.
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the name come fields 3 (state) .. ; start time is field 22.
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start_time))
}

/// Calls `done` until it returns true or `timeout` passes; returns its last answer.
pub(crate) fn poll_until(timeout: Duration, done: impl FnMut() -> bool) -> bool {
    poll_every(POLL_INTERVAL, timeout, done)
}

/// [`poll_until`] asking every `interval`: for questions that cost more than a look in
/// `/proc` (each of gossip's runs `overlayctl` or `ping`).
pub(crate) fn poll_every(
    interval: Duration,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

/// `f` of every item, on up to `threads` threads at once, in the items' order. For
/// questions to many hosts that each wait on something else (a daemon, a ping), so that a
/// round over 100 hosts takes the time of a few questions, not of 100.
pub(crate) fn parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(index) else { break };
                    let result = f(item);
                    // A poisoned lock means another worker panicked: the scope re-raises it.
                    if let Ok(mut results) = results.lock() {
                        results[index] = Some(result);
                    }
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .into_iter()
        // Every index below items.len() was taken by exactly one worker, which stored it.
        .map(|r| r.expect("every item was worked on"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_keeps_the_order_and_works_every_item() {
        let items: Vec<u32> = (0..100).collect();
        assert_eq!(
            parallel(&items, 7, |x| x * 2),
            (0..100).map(|x| x * 2).collect::<Vec<_>>()
        );
        assert!(parallel(&[] as &[u32], 4, |x| *x).is_empty());
    }

    #[test]
    fn current_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcId::current().unwrap();
        assert!(me.alive());
        let other = ProcId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.alive());
        assert!(!other.signal(0));
    }

    #[test]
    fn reaped_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcId::of(child.id());
        child.wait().unwrap();
        if let Some(id) = id {
            assert!(!id.alive());
        }
    }
}
