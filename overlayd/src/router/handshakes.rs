//! What the router counts of each peer's WireGuard handshakes, for the metrics: initiations
//! sent, handshakes completed, handshakes that failed. Relaxed atomics on the [`Peer`],
//! bumped where the router already holds the peer's lock (a handshake message, never a
//! data packet, costs a count); nothing here decides anything about a packet.

use std::sync::atomic::{AtomicU64, Ordering};

use super::peers::{Peer, PeerState};

/// The first byte of a WireGuard handshake initiation.
const HANDSHAKE_INIT_TYPE: u8 = 1;

/// One peer's handshake counts since it was added.
#[derive(Debug, Default)]
pub struct HandshakeCounters {
    initiated: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
}

impl HandshakeCounters {
    /// Handshake initiations this host sent to the peer (WireGuard's retries every 5 s
    /// included, so an unanswered peer shows this rising and `completed` flat).
    pub fn initiated(&self) -> u64 {
        self.initiated.load(Ordering::Relaxed)
    }

    /// Handshakes with the peer that completed, whichever side started them: a new
    /// session (every two minutes on a busy tunnel).
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Handshakes with the peer that failed: given up after 90 s without an answer
    /// (WireGuard's REKEY_ATTEMPT_TIME), or a handshake message for the peer that did not
    /// authenticate (a replayed initiation, a forged response).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Notes a datagram the router is about to send to `peer` (`st` is its locked state): an
/// initiation is counted, and marks a handshake under way until it completes or times out.
pub(super) fn note_sent(peer: &Peer, st: &mut PeerState, datagram: &[u8]) {
    if datagram.first() == Some(&HANDSHAKE_INIT_TYPE) {
        peer.handshakes.initiated.fetch_add(1, Ordering::Relaxed);
        st.handshake_pending = true;
    }
}

/// Notes that a handshake with `peer` completed (a new session).
pub(super) fn note_completed(peer: &Peer, st: &mut PeerState) {
    peer.handshakes.completed.fetch_add(1, Ordering::Relaxed);
    st.handshake_pending = false;
}

/// Notes a handshake message for `peer` that did not authenticate.
pub(super) fn note_refused(peer: &Peer) {
    peer.handshakes.failed.fetch_add(1, Ordering::Relaxed);
}

/// Notes that the peer's `Tunn` expired its connection: a failed handshake if one was
/// under way (boringtun gave up on it), nothing otherwise (an idle session's keys aged out;
/// boringtun also repeats the expiry on every tick until the next handshake starts).
pub(super) fn note_expired(peer: &Peer, st: &mut PeerState) {
    if std::mem::take(&mut st.handshake_pending) {
        peer.handshakes.failed.fetch_add(1, Ordering::Relaxed);
    }
}
