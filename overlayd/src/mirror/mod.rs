//! The mirror of decrypted traffic (issue 17): a copy of every packet between this host's
//! containers and its peers, in plaintext, written to a local interface for an IDS
//! (tcpdump, Suricata, Zeek, ngrep, or a container attached to it).
//!
//! It can never slow or stop the tunnel: the data path only tries to put a copy on a
//! bounded queue ([`Copier::copy`]: one filter check, one counter, a copy into a buffer the
//! writer gave back, one `try_send`; a full queue costs one load and one increment) and
//! wakes the writer once per batch (when the [`Copier`] is dropped); a writer thread at
//! idle priority (`SCHED_IDLE`) takes copies off and writes them to the mirror's sink. It
//! gets only CPU time nothing else wants, so when the machine is busy, or the sink is slow
//! or gone, the queue fills and further copies are dropped and counted
//! ([`MirrorStats::dropped`]).
//!
//! Buffers go round: the writer hands each written batch back to the direction it came
//! from, and that direction's copier takes its buffers for its next copies. No buffer is allocated on
//! one thread and freed on the other in the steady state: with the allocator's per-thread
//! caches that would make the data path and the idle-priority writer take turns on one
//! arena's lock, and a preempted writer holding it would stall the data path.
//!
//! - here: the filter, the queue, the writer, and [`MirrorSlot`], the one place the data
//!   path and the API find the running mirror (an `ArcSwapOption`: one load per batch,
//!   no lock).
//! - `tap`: the sink the daemon uses, a TAP device whose frames the kernel never delivers
//!   nor forwards (see there why a TAP and not a TUN).
//!
//! Nothing here decides what passes the tunnel: the data path copies what the router
//! accepted (inbound: after the source check and the policy; outbound: after the policy,
//! before encryption).

pub mod tap;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use ipnet::IpNet;
use protocol::policy::enforce::Direction;
use protocol::policy::packet::{Classified, classify};

/// Copies that may wait for the writer (at most ~6 MiB of 1420-byte packets), in batches.
pub const QUEUE: usize = 4096;

/// How long the writer sleeps when the queue is empty: how late a copy can be at most.
/// The data path wakes it sooner only once [`WAKE_AT`] copies wait.
const IDLE_PARK: Duration = Duration::from_millis(20);

/// Copies waiting from which a batch wakes the writer. Waking it for every batch would
/// cost the data path a system call and an idle CPU an interrupt per batch; below this the
/// writer's own timer is soon enough (at 400,000 packets a second the queue fills in
/// 10 ms, and this many wait after well under 1 ms).
const WAKE_AT: usize = 256;

/// How long [`MirrorSlot::stop`] waits for the writer to close the interface.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Which packets are copied: those with an address in one of `cidrs` (any, when empty) and
/// a port in `ports` (any, when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorFilter {
    /// Source or destination in one of these.
    pub cidrs: Vec<IpNet>,
    /// TCP or UDP source or destination port among these.
    pub ports: Vec<u16>,
}

impl MirrorFilter {
    /// Whether `packet` (an IP packet) is to be copied.
    pub fn matches(&self, packet: &[u8]) -> bool {
        if self.cidrs.is_empty() && self.ports.is_empty() {
            return true;
        }
        let key = match classify(packet) {
            Classified::Flow { key, .. } => key,
            Classified::IcmpError { about } => about,
            Classified::Malformed => return false,
        };
        let addr_ok = self.cidrs.is_empty()
            || self
                .cidrs
                .iter()
                .any(|n| n.contains(&key.src) || n.contains(&key.dst));
        let ported = matches!(key.proto, 6 | 17);
        let port_ok = self.ports.is_empty()
            || (ported
                && self
                    .ports
                    .iter()
                    .any(|&p| p == key.src_port || p == key.dst_port));
        addr_ok && port_ok
    }
}

/// What a mirror is: the interface it writes to and which packets it copies. From the
/// config's `[mirror]` table or `overlayctl mirror start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorSpec {
    /// The interface made for it (a TAP device).
    pub interface: String,
    /// Which packets.
    pub filter: MirrorFilter,
}

/// The interface name when neither the config nor `overlayctl mirror start` gives one.
pub const DEFAULT_INTERFACE: &str = "ovlmirror0";

/// Checks an interface name as `ip link` takes it, and so that it is safe in a
/// `/proc/sys` path: 1 to 15 letters, digits, `_`, `-` or `.`, not starting with `.` or
/// `-`. `Err` is a sentence for the operator.
pub fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 15
        || name.starts_with(['.', '-'])
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "mirror interface {name:?} is not an interface name: use 1 to 15 letters, digits, '_', '-' or '.' (default \"{DEFAULT_INTERFACE}\")"
        ));
    }
    Ok(())
}

/// Checks the filter's ports: 0 matches no packet, so it is a mistake.
pub fn check_ports(ports: &[u16]) -> Result<(), String> {
    if ports.contains(&0) {
        return Err("mirror port 0 matches no packet; use ports 1 to 65535".into());
    }
    Ok(())
}

/// Counters of the mirror.
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// Packets copied to the sink.
    pub copied: AtomicU64,
    /// Copies dropped: the queue was full (the writer is starved, or the sink slow).
    pub dropped: AtomicU64,
    /// Copies the sink refused (write errors, e.g. the interface was set down).
    pub write_errors: AtomicU64,
}

/// Where copies go: the mirror interface in the daemon, a buffer in tests.
pub trait Sink: Send + 'static {
    /// Writes one IP packet that went `direction` through the tunnel.
    fn write_packet(&mut self, direction: Direction, packet: &[u8]) -> io::Result<()>;

    /// Whether anyone reads what is written (`None`: cannot tell; taken as yes). Asked
    /// every [`READER_CHECK`]; while nobody reads, the data path copies nothing.
    fn has_reader(&self) -> Option<bool> {
        None
    }
}

/// How often the writer asks its sink whether anyone reads it.
const READER_CHECK: Duration = Duration::from_millis(250);

/// One batch of copies on the queue: the packets of one data-path batch, one way.
type Queued = (Direction, Vec<Vec<u8>>);

/// The index of a direction's spare buffers.
fn side(direction: Direction) -> usize {
    match direction {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    }
}

/// A direction's buffers for copies: locked once per batch by its [`Copier`] (a direction
/// is worked by one data-path thread at a time, so never contended).
struct Spares {
    /// Batches the writer has written and handed back, buffers inside.
    returned: Receiver<Vec<Vec<u8>>>,
    /// Buffers ready for copies.
    buffers: Vec<Vec<u8>>,
    /// An empty batch to fill next (its allocation reused).
    empty: Vec<Vec<u8>>,
}

/// The capacity a new copy buffer gets: a packet of the largest MTU, so that reused
/// buffers never grow.
const COPY_CAPACITY: usize = 9000;

/// A running mirror. Dropping it (or [`stop`](Self::stop)) ends the writer.
pub struct Mirror {
    spec: MirrorSpec,
    queue: SyncSender<Queued>,
    /// Copies on the queue: checked before allocating, so that a full queue costs the
    /// data path no allocation.
    queued: Arc<AtomicUsize>,
    on: AtomicBool,
    /// Whether anyone reads the sink, as the writer last saw ([`Sink::has_reader`]): a
    /// copy nobody can read is not made (the tunnel pays nothing for a mirror nobody
    /// watches); it is counted dropped.
    read: Arc<AtomicBool>,
    /// Set by `stop`: the writer leaves what is queued and closes the sink.
    closing: Arc<AtomicBool>,
    /// Counters, shared with the writer.
    pub stats: Arc<MirrorStats>,
    writer: Mutex<Option<JoinHandle<()>>>,
    writer_thread: std::thread::Thread,
    /// Per direction, the buffers copies are made in (see [`Spares`]).
    spare: [Mutex<Spares>; 2],
}

/// What one batch of one direction copies through: made by [`Mirror::copier`], it puts
/// the batch's copies on the queue at once when dropped (one queue operation a batch, not
/// a packet: the queue's counters are shared with the writer's CPU), and wakes the writer
/// if [`WAKE_AT`] copies wait.
pub struct Copier<'a> {
    mirror: &'a Mirror,
    direction: Direction,
    spare: std::sync::MutexGuard<'a, Spares>,
    batch: Vec<Vec<u8>>,
    /// Copies queued before this batch, read once.
    queued_before: usize,
    /// Whether anyone reads the mirror, read once.
    read: bool,
    /// Packets the filter took but nobody reads: counted dropped when the batch ends.
    unread: u64,
}

impl Copier<'_> {
    /// Keeps a copy of `packet` for the queue if the filter takes it and there is room;
    /// counts it dropped otherwise. Never blocks.
    pub fn copy(&mut self, packet: &[u8]) {
        let m = self.mirror;
        if !m.on.load(Ordering::Relaxed) || !m.spec.filter.matches(packet) {
            return;
        }
        if !self.read {
            self.unread += 1;
            return;
        }
        if self.queued_before + self.batch.len() >= QUEUE {
            m.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let spare = &mut *self.spare;
        if spare.buffers.is_empty()
            && let Ok(mut returned) = spare.returned.try_recv()
        {
            spare.buffers.append(&mut returned);
            if spare.empty.capacity() < returned.capacity() {
                spare.empty = returned;
            }
        }
        let mut buf = spare
            .buffers
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(COPY_CAPACITY));
        buf.clear();
        buf.extend_from_slice(packet);
        self.batch.push(buf);
    }
}

impl Drop for Copier<'_> {
    fn drop(&mut self) {
        if self.unread > 0 {
            let m = self.mirror;
            m.stats.dropped.fetch_add(self.unread, Ordering::Relaxed);
        }
        let n = self.batch.len();
        if n == 0 {
            self.spare.empty = std::mem::take(&mut self.batch);
            return;
        }
        let m = self.mirror;
        let batch = std::mem::take(&mut self.batch);
        let queued = m.queued.fetch_add(n, Ordering::Relaxed) + n;
        if let Err(
            TrySendError::Full((_, mut batch)) | TrySendError::Disconnected((_, mut batch)),
        ) = m.queue.try_send((self.direction, batch))
        {
            m.queued.fetch_sub(n, Ordering::Relaxed);
            m.stats.dropped.fetch_add(n as u64, Ordering::Relaxed);
            self.spare.buffers.append(&mut batch);
            self.spare.empty = batch;
            return;
        }
        if queued >= WAKE_AT {
            m.wake();
        }
    }
}

impl Mirror {
    /// Starts a writer thread that writes copies to `sink`.
    pub fn start(spec: MirrorSpec, sink: impl Sink) -> io::Result<Mirror> {
        let (queue, rx) = sync_channel(QUEUE);
        let stats = Arc::new(MirrorStats::default());
        let queued = Arc::new(AtomicUsize::new(0));
        let closing = Arc::new(AtomicBool::new(false));
        let read = Arc::new(AtomicBool::new(sink.has_reader().unwrap_or(true)));
        // Room for every batch that can be out at once: the queue's and one in the writer.
        let (spare_in_tx, spare_in) = sync_channel(QUEUE + 1);
        let (spare_out_tx, spare_out) = sync_channel(QUEUE + 1);
        let spares = |returned| Spares {
            returned,
            buffers: Vec::new(),
            empty: Vec::new(),
        };
        let writer = {
            let (stats, queued, closing) = (stats.clone(), queued.clone(), closing.clone());
            let read = read.clone();
            let spare = [spare_in_tx, spare_out_tx];
            std::thread::Builder::new()
                .name("mirror".into())
                .spawn(move || {
                    idle_priority();
                    let shared = Shared {
                        stats: &stats,
                        queued: &queued,
                        closing: &closing,
                        read: &read,
                    };
                    write_copies(rx, sink, &spare, shared)
                })?
        };
        Ok(Mirror {
            spec,
            queue,
            queued,
            on: AtomicBool::new(true),
            read,
            closing,
            stats,
            writer_thread: writer.thread().clone(),
            writer: Mutex::new(Some(writer)),
            spare: [Mutex::new(spares(spare_in)), Mutex::new(spares(spare_out))],
        })
    }

    /// What it copies, to where.
    pub fn spec(&self) -> &MirrorSpec {
        &self.spec
    }

    /// The copier for one batch of packets that went `direction`: take it once per batch
    /// (it locks that direction's spare buffers, never contended) and drop it when the
    /// batch is done (that may wake the writer).
    pub fn copier(&self, direction: Direction) -> Copier<'_> {
        let mut spare = crate::util::lock(&self.spare[side(direction)]);
        let batch = std::mem::take(&mut spare.empty);
        Copier {
            mirror: self,
            direction,
            spare,
            batch,
            queued_before: self.queued.load(Ordering::Relaxed),
            read: self.read.load(Ordering::Relaxed),
            unread: 0,
        }
    }

    /// Wakes the writer if it sleeps (a system call then; one atomic swap when it is
    /// awake).
    pub fn wake(&self) {
        self.writer_thread.unpark();
    }

    /// Stops copying; the writer leaves what is queued and closes the sink.
    pub fn stop(&self) {
        self.on.store(false, Ordering::Relaxed);
        self.closing.store(true, Ordering::Relaxed);
        self.writer_thread.unpark();
    }

    /// Stops, and waits at most `wait` for the writer to close the sink; whether it did.
    fn stop_and_wait(&self, wait: Duration) -> bool {
        self.stop();
        let deadline = Instant::now() + wait;
        let mut writer = crate::util::lock(&self.writer);
        while writer.as_ref().is_some_and(|w| !w.is_finished()) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(w) = writer.take() {
            let _ = w.join();
        }
        true
    }

    /// A snapshot of its counters.
    pub fn counters(&self) -> (u64, u64, u64) {
        (
            self.stats.copied.load(Ordering::Relaxed),
            self.stats.dropped.load(Ordering::Relaxed),
            self.stats.write_errors.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        // Do not wait for a sink that blocks: the writer ends on its own.
        self.stop();
    }
}

/// Lowers the calling thread to `SCHED_IDLE`: the writer runs only on CPU time that the
/// data path, the containers and everything else leave unused. Without it the writer
/// competes with the tunnel for the CPU (a TAP write is a system call and a trip through
/// the kernel's receive path per packet), which the mirror must never do.
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "the mirror's writer stays at normal priority");
    }
}

/// What the writer shares with the data path.
struct Shared<'a> {
    stats: &'a MirrorStats,
    queued: &'a AtomicUsize,
    closing: &'a AtomicBool,
    read: &'a AtomicBool,
}

fn write_copies(
    rx: Receiver<Queued>,
    mut sink: impl Sink,
    spare: &[SyncSender<Vec<Vec<u8>>>; 2],
    shared: Shared<'_>,
) {
    let Shared {
        stats,
        queued,
        closing,
        read,
    } = shared;
    let mut checked = Instant::now();
    // `try_recv` and park rather than `recv`: a blocked `recv` makes every send a wake-up
    // (a system call per packet on the data path); the data path wakes the writer once
    // per batch instead (`Mirror::wake`).
    while !closing.load(Ordering::Relaxed) {
        if checked.elapsed() >= READER_CHECK {
            checked = Instant::now();
            let now = sink.has_reader().unwrap_or(true);
            if read.swap(now, Ordering::Relaxed) != now {
                tracing::info!(
                    reader = now,
                    "the mirror {} read: copies are {}",
                    if now { "is" } else { "is no longer" },
                    if now {
                        "made"
                    } else {
                        "no longer made (counted dropped)"
                    }
                );
            }
        }
        match rx.try_recv() {
            Ok((direction, batch)) => {
                for packet in &batch {
                    match sink.write_packet(direction, packet) {
                        Ok(()) => stats.copied.fetch_add(1, Ordering::Relaxed),
                        Err(_) => stats.write_errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
                queued.fetch_sub(batch.len(), Ordering::Relaxed);
                // Back to its direction's copier; dropped here only if that one is full.
                let _ = spare[side(direction)].try_send(batch);
            }
            Err(TryRecvError::Empty) => std::thread::park_timeout(IDLE_PARK),
            Err(TryRecvError::Disconnected) => return,
        }
    }
}

/// The running mirror, if any: what the data path loads once per batch and the API starts
/// and stops. Start and stop are serialized; the data path never waits for them.
#[derive(Default)]
pub struct MirrorSlot {
    current: ArcSwapOption<Mirror>,
    /// Serializes start and stop (an interface is closed before one of the same name is
    /// made). Guards no data: dropping it signals nothing.
    changing: Mutex<()>,
}

/// Why a mirror did not start.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The interface could not be made or set up.
    #[error("cannot make mirror interface {interface}: {source}")]
    Interface {
        /// Its name.
        interface: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// The previous mirror's interface was not closed in time.
    #[error("the previous mirror on {interface} is still closing; try again in a few seconds")]
    Closing {
        /// Its name.
        interface: String,
    },
}

impl MirrorSlot {
    /// The running mirror: load once per batch.
    pub fn load(&self) -> arc_swap::Guard<Option<Arc<Mirror>>> {
        self.current.load()
    }

    /// Makes the mirror's TAP device (`spec.interface`, MTU `mtu`) and starts mirroring to
    /// it, replacing a running mirror. Blocks for a few milliseconds (system calls).
    pub fn start(&self, spec: MirrorSpec, mtu: u16) -> Result<(), MirrorError> {
        let interface = spec.interface.clone();
        self.start_with(spec, || tap::MirrorTap::open(&interface, mtu))
    }

    /// Starts mirroring to the sink `make` returns, replacing a running mirror: the old
    /// one is stopped (its interface closed) before `make` runs, so the new one may take
    /// the same name.
    pub fn start_with<S: Sink>(
        &self,
        spec: MirrorSpec,
        make: impl FnOnce() -> io::Result<S>,
    ) -> Result<(), MirrorError> {
        let _changing = crate::util::lock(&self.changing);
        self.stop_locked()?;
        let interface = spec.interface.clone();
        let mirror = make()
            .and_then(|sink| Mirror::start(spec, sink))
            .map_err(|source| MirrorError::Interface { interface, source })?;
        tracing::info!(
            interface = %mirror.spec.interface,
            cidrs = ?mirror.spec.filter.cidrs,
            ports = ?mirror.spec.filter.ports,
            "mirroring decrypted traffic"
        );
        self.current.store(Some(Arc::new(mirror)));
        Ok(())
    }

    /// Stops the running mirror (its interface disappears); its last counters, if one ran.
    pub fn stop(&self) -> Result<Option<MirrorShown>, MirrorError> {
        let _changing = crate::util::lock(&self.changing);
        self.stop_locked()
    }

    fn stop_locked(&self) -> Result<Option<MirrorShown>, MirrorError> {
        let Some(old) = self.current.swap(None) else {
            return Ok(None);
        };
        let shown = MirrorShown::of(&old);
        // A batch that loaded it before the swap may still copy into it: harmless, the
        // writer is closing and counts nothing more.
        if !old.stop_and_wait(CLOSE_WAIT) {
            return Err(MirrorError::Closing {
                interface: old.spec.interface.clone(),
            });
        }
        tracing::info!(interface = %old.spec.interface, copied = shown.copied, dropped = shown.dropped, "mirror stopped");
        Ok(Some(shown))
    }

    /// The running mirror's spec and counters.
    pub fn shown(&self) -> Option<MirrorShown> {
        self.current.load().as_deref().map(MirrorShown::of)
    }
}

/// A mirror as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorShown {
    /// What it copies, to where.
    pub spec: MirrorSpec,
    /// Packets written to the interface.
    pub copied: u64,
    /// Copies dropped because the queue was full.
    pub dropped: u64,
    /// Copies the interface refused.
    pub write_errors: u64,
    /// Whether anyone reads the interface, as the writer last saw.
    pub read: bool,
}

impl MirrorShown {
    fn of(m: &Mirror) -> MirrorShown {
        let (copied, dropped, write_errors) = m.counters();
        MirrorShown {
            spec: m.spec.clone(),
            copied,
            dropped,
            write_errors,
            read: m.read.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests;
