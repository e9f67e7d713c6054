//! How a data-plane worker asks the scheduler for the CPU: hand-offs while its wake-ups are
//! served promptly, wake-up preemption once they wait.
//!
//! A round trip through the overlay passes from thread to thread four times (the sender,
//! this host's worker, the peer's worker, and back). When a woken worker preempts its waker
//! (`SCHED_OTHER`'s wake-up preemption), the waker is left runnable half-way through its
//! system call, and the next hop is often served by a thread on the other vCPU (tens of µs
//! to get running there on this VM). As `SCHED_BATCH` a woken worker instead waits for its waker
//! to go to sleep, a few µs later, and the whole round trip runs as clean hand-offs on one
//! CPU (see docs/performance.md, "Latency", for the measurements).
//!
//! The price of `SCHED_BATCH` is that a worker woken on a CPU that a CPU-bound task holds
//! waits for that task's time slice to end (milliseconds). So a worker watches its own
//! schedstat (`/proc/thread-self/schedstat`, second field: time waited on a run queue) and,
//! when its wake-ups wait on average more than [`CONTENDED`], goes back to `SCHED_OTHER`.
//! It tries the hand-offs again after a back-off that doubles while contention recurs
//! (4 s .. 64 s), or as soon as the machine has been idle (≥ [`QUIET`] of all CPU time in
//! `/proc/stat` since it last looked, at most every [`QUIET_CHECK`]): a bulk transfer that
//! kept the CPUs busy is over, so the back-off it earned is forgotten. A retry does not
//! check first: under lasting contention it costs one slow wake-up per worker.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Mean wait on the run queue per wake-up above which the CPU counts as contended. A hand-off
/// waits a few µs; a wake-up queued behind a CPU-bound task waits milliseconds.
pub const CONTENDED: Duration = Duration::from_micros(500);
/// The run-queue delay is read at most this often. A read is a `pread` of procfs and a parse
/// (~5 µs under `perf trace`); at 1 ms it ran at every wake-up of a 10 ms ping. Contention
/// is still noticed within this time.
const CHECK_EVERY: Duration = Duration::from_millis(25);
const FIRST_BACKOFF: Duration = Duration::from_secs(4);
const MAX_BACKOFF: Duration = Duration::from_secs(64);
/// Hand-offs that lasted this long without contention reset the back-off.
const SETTLED: Duration = Duration::from_secs(60);
/// Share of idle CPU time that counts as a quiet machine.
pub const QUIET: f64 = 0.9;
/// While backing off, `/proc/stat` is read at most this often (a read costs ~20 µs).
pub const QUIET_CHECK: Duration = Duration::from_millis(100);

/// One worker's scheduling state; it only ever changes the policy of its own thread.
pub struct Handoff {
    schedstat: Option<File>,
    cpu: CpuTimes,
    batch: bool,
    /// Run-queue delay (ns) at the last check, wake-ups since, and when that was.
    delay_ns: u64,
    wakes: u64,
    checked: Instant,
    batch_since: Instant,
    retry_at: Instant,
    backoff: Duration,
    /// Not `Send`: the schedstat fd and the policy belong to the thread that made it.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Handoff {
    /// For the calling thread. With `enabled` false, or where the kernel does not report
    /// run-queue delays (then contention could not be noticed), the thread stays
    /// `SCHED_OTHER` and [`Handoff::woke`] does nothing.
    pub fn new(enabled: bool) -> Handoff {
        let schedstat = if enabled {
            File::open("/proc/thread-self/schedstat")
                .ok()
                .filter(reports_delays)
        } else {
            None
        };
        if schedstat.is_none() && enabled {
            tracing::debug!(
                "no run-queue delays in /proc/thread-self/schedstat: data-plane workers stay SCHED_OTHER"
            );
        }
        let mut h = Handoff::with(schedstat, CpuTimes::open());
        h.woke();
        h
    }

    /// `SCHED_OTHER`, free to try hand-offs at the next wake-up.
    fn with(schedstat: Option<File>, cpu: CpuTimes) -> Handoff {
        let now = Instant::now();
        Handoff {
            schedstat,
            cpu,
            batch: false,
            delay_ns: 0,
            wakes: 0,
            checked: now,
            batch_since: now,
            retry_at: now,
            backoff: FIRST_BACKOFF,
            _thread: std::marker::PhantomData,
        }
    }

    /// Whether the thread runs `SCHED_BATCH` now.
    pub fn batch(&self) -> bool {
        self.batch
    }

    /// Call each time the worker has handled a wake-up, before it waits again (so the
    /// check never delays the packet that woke it).
    pub fn woke(&mut self) {
        let Some(schedstat) = self.schedstat.take() else {
            return;
        };
        let mut cpu = std::mem::take(&mut self.cpu);
        let verdict = self.step(
            Instant::now(),
            || run_delay_ns(&schedstat),
            || cpu.idle_share(),
        );
        self.schedstat = Some(schedstat);
        self.cpu = cpu;
        self.apply(verdict, set_policy);
    }

    /// Carries out a verdict of [`Handoff::step`] with `set` (the system call in `woke`).
    fn apply(&mut self, verdict: Option<libc::c_int>, set: impl Fn(libc::c_int) -> bool) {
        match verdict {
            Some(libc::SCHED_BATCH) if !set(libc::SCHED_BATCH) => {
                // Not allowed here (a seccomp filter, say): the thread is still SCHED_OTHER;
                // leave it so for good.
                self.batch = false;
                self.schedstat = None;
            }
            Some(libc::SCHED_OTHER) if !set(libc::SCHED_OTHER) => {
                // Refused on the way back (not seen on Linux, where a thread may always
                // lower itself to SCHED_OTHER): the thread is still SCHED_BATCH, so say so
                // and try again at the next check rather than believe otherwise.
                tracing::warn!(
                    "the kernel refused SCHED_OTHER to a data-plane worker; it stays SCHED_BATCH for now"
                );
                self.batch = true;
                self.retry_at = Instant::now();
            }
            _ => {}
        }
    }

    /// The decision, apart from the system calls: given the time, a reader of the thread's
    /// run-queue delay and one of the machine's idle share since its last call, the policy
    /// to switch to, if any.
    fn step(
        &mut self,
        now: Instant,
        delay: impl FnOnce() -> Option<u64>,
        idle_share: impl FnOnce() -> Option<f64>,
    ) -> Option<libc::c_int> {
        if !self.batch {
            if now < self.retry_at {
                if now.duration_since(self.checked) < QUIET_CHECK {
                    return None;
                }
                self.checked = now;
                if idle_share().is_none_or(|idle| idle < QUIET) {
                    return None;
                }
                self.backoff = FIRST_BACKOFF;
            }
            self.delay_ns = delay()?;
            self.batch = true;
            self.wakes = 0;
            self.checked = now;
            self.batch_since = now;
            return Some(libc::SCHED_BATCH);
        }
        self.wakes += 1;
        if now.duration_since(self.checked) < CHECK_EVERY {
            return None;
        }
        let Some(total) = delay() else {
            // The schedstat stopped answering: contention could no longer be noticed, so
            // leave SCHED_BATCH for good.
            self.batch = false;
            self.schedstat = None;
            return Some(libc::SCHED_OTHER);
        };
        let waited = total.saturating_sub(self.delay_ns) / self.wakes;
        self.delay_ns = total;
        self.wakes = 0;
        self.checked = now;
        if waited <= CONTENDED.as_nanos() as u64 {
            return None;
        }
        self.batch = false;
        if now.duration_since(self.batch_since) >= SETTLED {
            self.backoff = FIRST_BACKOFF;
        }
        self.retry_at = now + self.backoff;
        // Start the idle share afresh: only time after this counts.
        let _ = idle_share();
        tracing::debug!(
            waited_us = waited / 1000,
            retry_in_s = self.backoff.as_secs(),
            "CPU contended: a data-plane worker goes back to SCHED_OTHER"
        );
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Some(libc::SCHED_OTHER)
    }
}

/// Whether this schedstat is real: a kernel without sched_info prints `0 0 0`, while a
/// thread that runs has been put on a CPU at least once (third field; the first, time run,
/// can still read 0 in a thread that has not yet been switched out).
fn reports_delays(schedstat: &File) -> bool {
    let mut buf = [0u8; 96];
    let Ok(n) = schedstat.read_at(&mut buf, 0) else {
        return false;
    };
    let text = String::from_utf8_lossy(&buf[..n]);
    let fields: Vec<Option<u64>> = text
        .split_ascii_whitespace()
        .map(|f| f.parse().ok())
        .collect();
    matches!(fields[..], [Some(_), Some(_), Some(runs), ..] if runs > 0)
}

/// The thread's total wait on a run queue, in ns (second field of its schedstat).
fn run_delay_ns(schedstat: &File) -> Option<u64> {
    let mut buf = [0u8; 96];
    let n = schedstat.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// The machine's CPU time, from the first line of `/proc/stat`.
#[derive(Default)]
struct CpuTimes {
    file: Option<File>,
    /// Total and idle (idle + iowait) ticks at the last read.
    last: (u64, u64),
}

impl CpuTimes {
    fn open() -> CpuTimes {
        let mut c = CpuTimes {
            file: File::open("/proc/stat").ok(),
            last: (0, 0),
        };
        let _ = c.idle_share();
        c
    }

    /// The share of CPU time that was idle since the last call.
    fn idle_share(&mut self) -> Option<f64> {
        // The first line is all that is needed; it fits in 256 bytes.
        let mut buf = [0u8; 256];
        let n = self.file.as_ref()?.read_at(&mut buf, 0).ok()?;
        let line = std::str::from_utf8(&buf[..n]).ok()?.lines().next()?;
        let (total, idle) = parse_cpu_line(line)?;
        let (t0, i0) = std::mem::replace(&mut self.last, (total, idle));
        let dt = total.checked_sub(t0)?;
        (dt > 0).then(|| idle.saturating_sub(i0) as f64 / dt as f64)
    }
}

/// `cpu  user nice system idle iowait irq softirq steal ...` → (total, idle + iowait).
fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.strip_prefix("cpu ")?.split_ascii_whitespace();
    let values: Vec<u64> = fields
        .by_ref()
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((values.iter().sum(), idle))
}

/// Sets the calling thread's policy (priority 0); false if the kernel refused.
fn set_policy(policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid parameter.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

/// The calling thread's policy (`libc::SCHED_*`).
#[cfg(test)]
fn current_policy() -> libc::c_int {
    // SAFETY: plain syscall on the calling thread.
    unsafe { libc::sched_getscheduler(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle() -> Handoff {
        Handoff::with(None, CpuTimes::default())
    }

    /// A run-queue delay of `us` µs in all.
    fn waited(us: u64) -> impl FnOnce() -> Option<u64> {
        move || Some(us * 1000)
    }

    /// A machine that was busy (10 % idle) or quiet (95 % idle).
    fn busy() -> Option<f64> {
        Some(0.1)
    }
    fn quiet() -> Option<f64> {
        Some(0.95)
    }

    #[test]
    fn hand_offs_until_wake_ups_wait_then_back_off() {
        let mut h = idle();
        let t0 = Instant::now();
        assert_eq!(h.step(t0, waited(1), busy), Some(libc::SCHED_BATCH));
        // Hand-offs, one wake-up per 10 ms (a ping), 10 µs waited each.
        let tick = Duration::from_millis(10);
        for i in 1..=10u32 {
            assert_eq!(
                h.step(t0 + tick * i, waited(1 + 10 * u64::from(i)), busy),
                None
            );
        }
        assert!(h.batch());
        // A wake-up queued behind a CPU-bound task: 4 ms.
        let t = t0 + tick * 10 + CHECK_EVERY;
        assert_eq!(h.step(t, waited(4_101), busy), Some(libc::SCHED_OTHER));
        assert!(!h.batch());
        // Not again before the back-off while the machine is busy...
        assert_eq!(h.step(t + tick * 50, waited(4_101), busy), None);
        assert_eq!(
            h.step(t + Duration::from_millis(999), waited(4_101), busy),
            None
        );
        // ...then it tries; the next back-off is twice as long.
        let t = t + FIRST_BACKOFF;
        assert_eq!(h.step(t, waited(4_101), busy), Some(libc::SCHED_BATCH));
        let t = t + CHECK_EVERY;
        assert_eq!(h.step(t, waited(8_101), busy), Some(libc::SCHED_OTHER));
        assert_eq!(h.retry_at, t + FIRST_BACKOFF * 2);
        // Still contended at every try: the back-off doubles up to its cap.
        let mut t = t;
        for _ in 0..10 {
            t = h.retry_at;
            assert_eq!(h.step(t, waited(0), busy), Some(libc::SCHED_BATCH));
            t += CHECK_EVERY;
            assert_eq!(h.step(t, waited(3_000), busy), Some(libc::SCHED_OTHER));
        }
        assert_eq!(h.retry_at - t, MAX_BACKOFF);
        // A minute of clean hand-offs forgives the past.
        t = h.retry_at;
        assert_eq!(h.step(t, waited(0), busy), Some(libc::SCHED_BATCH));
        t += SETTLED;
        assert_eq!(h.step(t, waited(1_000_000), busy), Some(libc::SCHED_OTHER));
        assert_eq!(h.retry_at - t, FIRST_BACKOFF);
    }

    #[test]
    fn a_quiet_machine_ends_the_back_off() {
        let mut h = idle();
        let t0 = Instant::now();
        h.step(t0, waited(0), busy);
        // A bulk transfer keeps the CPUs busy: contended, with a long back-off.
        h.backoff = MAX_BACKOFF;
        let t = t0 + CHECK_EVERY;
        assert_eq!(h.step(t, waited(3_000), busy), Some(libc::SCHED_OTHER));
        // /proc/stat is read at most every QUIET_CHECK, and only a quiet machine counts.
        assert_eq!(
            h.step(t + CHECK_EVERY, waited(3_000), || panic!("read too often")),
            None
        );
        let t = t + QUIET_CHECK;
        assert_eq!(h.step(t, waited(3_000), busy), None);
        // The transfer is over: the next wake-up after a quiet spell tries hand-offs again,
        // and the back-off starts afresh.
        let t = t + Duration::from_secs(1);
        assert_eq!(h.step(t, waited(3_000), quiet), Some(libc::SCHED_BATCH));
        assert_eq!(h.backoff, FIRST_BACKOFF);
        // Unknown idle time (no /proc/stat) never ends a back-off early.
        let t = t + CHECK_EVERY;
        assert_eq!(h.step(t, waited(9_000), busy), Some(libc::SCHED_OTHER));
        let t = t + QUIET_CHECK;
        assert_eq!(h.step(t, waited(9_000), || None), None);
    }

    #[test]
    fn checks_at_most_every_check_interval_and_averages_over_the_wake_ups() {
        let mut h = idle();
        let t0 = Instant::now();
        h.step(t0, waited(0), busy);
        // 50 wake-ups within the interval: not read at all.
        for i in 0..50 {
            let t = t0 + CHECK_EVERY * i / 50;
            assert_eq!(h.step(t, || panic!("read too often"), busy), None);
        }
        // Then 3 ms of waits over 51 wake-ups: 59 µs each, a busy but free CPU.
        assert_eq!(h.step(t0 + CHECK_EVERY, waited(3_000), busy), None);
        assert!(h.batch());
    }

    #[test]
    fn reads_the_cpu_line() {
        let line = "cpu  1697369 0 850200 2943427 23379 0 151851 2540 0 0";
        assert_eq!(
            parse_cpu_line(line),
            Some((
                1697369 + 850200 + 2943427 + 23379 + 151851 + 2540,
                2943427 + 23379
            ))
        );
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4"), None);
        assert_eq!(parse_cpu_line("cpu  x"), None);
        // The live file: some ticks pass in 50 ms (USER_HZ is 100 on every CPU).
        let mut cpu = CpuTimes::open();
        std::thread::sleep(Duration::from_millis(50));
        let share = cpu.idle_share().expect("an idle share from /proc/stat");
        assert!((0.0..=1.0).contains(&share), "{share}");
    }

    #[test]
    fn a_real_schedstat_and_a_dummy_one() {
        let own = File::open("/proc/thread-self/schedstat").unwrap();
        assert!(reports_delays(&own));
        let dir = tempfile::tempdir().unwrap();
        for (text, real) in [
            ("0 0 0\n", false),
            ("12 34 5\n", true),
            ("0 0 1\n", true),
            ("x y z\n", false),
            ("", false),
        ] {
            let path = dir.path().join("schedstat");
            std::fs::write(&path, text).unwrap();
            assert_eq!(
                reports_delays(&File::open(&path).unwrap()),
                real,
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_schedstat_that_stops_answering_ends_the_hand_offs() {
        let mut h = idle();
        h.schedstat = Some(File::open("/proc/thread-self/schedstat").unwrap());
        let t0 = Instant::now();
        h.step(t0, waited(0), busy);
        assert_eq!(
            h.step(t0 + CHECK_EVERY, || None, busy),
            Some(libc::SCHED_OTHER)
        );
        assert!(!h.batch() && h.schedstat.is_none());
    }

    #[test]
    fn refusals() {
        // SCHED_BATCH refused: stays SCHED_OTHER, for good.
        let mut h = idle();
        h.schedstat = Some(File::open("/proc/thread-self/schedstat").unwrap());
        let v = h.step(Instant::now(), waited(0), busy);
        h.apply(v, |_| false);
        assert!(!h.batch() && h.schedstat.is_none());
        // SCHED_OTHER refused: still batch, and the next check tries again.
        let mut h = idle();
        let t0 = Instant::now();
        let v = h.step(t0, waited(0), busy);
        h.apply(v, |_| true);
        let t = t0 + CHECK_EVERY;
        let v = h.step(t, waited(5_000), busy);
        assert_eq!(v, Some(libc::SCHED_OTHER));
        h.apply(v, |p| p != libc::SCHED_OTHER);
        assert!(h.batch());
        let t = t + CHECK_EVERY;
        assert_eq!(h.step(t, waited(10_000), busy), Some(libc::SCHED_OTHER));
    }

    #[test]
    fn the_thread_really_switches() {
        std::thread::spawn(|| {
            let mut h = Handoff::new(true);
            if h.schedstat.is_none() {
                // No schedstat here: the worker must then stay SCHED_OTHER.
                assert_eq!(current_policy(), libc::SCHED_OTHER);
                return;
            }
            assert!(h.batch());
            assert_eq!(current_policy(), libc::SCHED_BATCH);
            // A wake-up that waited 10 ms, then what `woke` does with the verdict.
            h.checked -= CHECK_EVERY;
            let total = h.delay_ns + 10_000_000;
            let verdict = h.step(Instant::now(), || Some(total), busy);
            assert_eq!(verdict, Some(libc::SCHED_OTHER));
            h.apply(verdict, set_policy);
            assert!(!h.batch());
            assert_eq!(current_policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn disabled_stays_other() {
        std::thread::spawn(|| {
            let mut h = Handoff::new(false);
            h.woke();
            assert!(!h.batch());
            assert_eq!(current_policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }
}
