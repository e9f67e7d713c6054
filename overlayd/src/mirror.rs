//! The mirror of decrypted traffic (issue 17): a copy of every packet between this host's
//! containers and its peers, in plaintext, written to a local interface for an IDS
//! (tcpdump, Suricata, Zeek, ngrep, or a container attached to it).
//!
//! It can never slow or stop the tunnel: the data path only tries to put a copy on a
//! bounded queue ([`Mirror::copy`]: one filter check, one allocation, one `try_send`); a
//! writer thread takes copies off and writes them to the mirror's sink. When the sink is
//! slow or gone, the queue fills and further copies are dropped and counted.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ipnet::IpNet;
use protocol::policy::packet::{Classified, classify};

/// Copies that may wait for the writer.
pub const QUEUE: usize = 4096;

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

/// Counters of the mirror.
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// Packets copied to the sink.
    pub copied: AtomicU64,
    /// Copies dropped: the queue was full (the sink is slow or stopped).
    pub dropped: AtomicU64,
    /// Copies the sink refused (write errors).
    pub write_errors: AtomicU64,
}

/// Where copies go: the mirror interface in the daemon, a buffer in tests.
pub trait Sink: Send + 'static {
    /// Writes one IP packet.
    fn write_packet(&mut self, packet: &[u8]) -> io::Result<()>;
}

/// A running mirror. Dropping it (or [`stop`](Self::stop)) ends the writer.
pub struct Mirror {
    filter: MirrorFilter,
    queue: SyncSender<Vec<u8>>,
    on: AtomicBool,
    /// Counters, shared with the writer.
    pub stats: Arc<MirrorStats>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Mirror {
    /// Starts a writer thread that writes copies to `sink`.
    pub fn start(filter: MirrorFilter, sink: impl Sink) -> io::Result<Mirror> {
        let (queue, rx) = sync_channel(QUEUE);
        let stats = Arc::new(MirrorStats::default());
        let writer_stats = stats.clone();
        let writer = std::thread::Builder::new()
            .name("mirror".into())
            .spawn(move || write_copies(rx, sink, &writer_stats))?;
        Ok(Mirror {
            filter,
            queue,
            on: AtomicBool::new(true),
            stats,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Puts a copy of `packet` on the queue if the filter takes it; never blocks.
    pub fn copy(&self, packet: &[u8]) {
        if !self.on.load(Ordering::Relaxed) || !self.filter.matches(packet) {
            return;
        }
        match self.queue.try_send(packet.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Stops copying; the writer ends once the queue is empty.
    pub fn stop(&self) {
        self.on.store(false, Ordering::Relaxed);
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop();
        // Dropping the sender (with self) ends the writer's loop; do not wait for a sink
        // that blocks.
        let _ = self.writer.lock().map(|mut w| w.take());
    }
}

fn write_copies(rx: Receiver<Vec<u8>>, mut sink: impl Sink, stats: &MirrorStats) {
    while let Ok(packet) = rx.recv() {
        match sink.write_packet(&packet) {
            Ok(()) => stats.copied.fetch_add(1, Ordering::Relaxed),
            Err(_) => stats.write_errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0, 8, 0, 0]);
        p
    }

    struct Channel(mpsc::Sender<Vec<u8>>);
    impl Sink for Channel {
        fn write_packet(&mut self, packet: &[u8]) -> io::Result<()> {
            let _ = self.0.send(packet.to_vec());
            Ok(())
        }
    }

    /// A sink that never returns: the reader of the mirror has stopped.
    struct Stuck;
    impl Sink for Stuck {
        fn write_packet(&mut self, _: &[u8]) -> io::Result<()> {
            std::thread::sleep(Duration::from_secs(3600));
            Ok(())
        }
    }

    #[test]
    fn the_filter_takes_addresses_and_ports() {
        let f = MirrorFilter {
            cidrs: vec!["10.42.2.0/24".parse().unwrap()],
            ports: vec![53],
        };
        assert!(f.matches(&udp([10, 42, 1, 2], [10, 42, 2, 2], 4000, 53)));
        assert!(!f.matches(&udp([10, 42, 1, 2], [10, 42, 3, 2], 4000, 53)));
        assert!(!f.matches(&udp([10, 42, 1, 2], [10, 42, 2, 2], 4000, 80)));
        assert!(MirrorFilter::default().matches(&[1, 2, 3]));
        assert!(!f.matches(&[0x45]));
    }

    #[test]
    fn copies_reach_the_sink_in_order() {
        let (tx, rx) = mpsc::channel();
        let m = Mirror::start(MirrorFilter::default(), Channel(tx)).unwrap();
        for port in 0..100 {
            m.copy(&udp([10, 42, 1, 2], [10, 42, 2, 2], port, 53));
        }
        for port in 0..100u16 {
            let p = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(&p[20..22], &port.to_be_bytes());
        }
        m.stop();
        m.copy(&udp([10, 42, 1, 2], [10, 42, 2, 2], 1, 53));
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    }

    #[test]
    fn a_stopped_reader_never_blocks_the_data_path() {
        let m = Mirror::start(MirrorFilter::default(), Stuck).unwrap();
        let packet = udp([10, 42, 1, 2], [10, 42, 2, 2], 1, 53);
        let started = Instant::now();
        for _ in 0..100_000 {
            m.copy(&packet);
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let dropped = m.stats.dropped.load(Ordering::Relaxed);
        assert!(dropped >= 100_000 - QUEUE as u64 - 1, "{dropped}");
    }
}
