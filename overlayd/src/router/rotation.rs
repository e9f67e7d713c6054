//! WireGuard key rotation in the data path (`overlayctl rotate-key`, see
//! `docs/key-rotation.md`), on both sides, without a lost packet.
//!
//! **This host's own key** ([`Router::rotate_own_key`]). The new key is the router's at
//! once: new peers' tunnels are made with it, and handshakes addressed to it are answered.
//! The old key is kept for the grace ([`OldKey`]): a handshake addressed to it (its mac1 is
//! keyed by the key it is meant for, so the router knows which before any Diffie-Hellman)
//! is answered with it, by the tunnels made before the rotation, whose sessions carry
//! packets on as before. A peer that learns the new key (from the member's gossiped record)
//! starts a handshake to it; that handshake moves this host's tunnel with the peer to the
//! new key (`Tunn::set_static_private`: the peer has already moved its own traffic to its
//! new tunnel, see below). Once every peer has a tunnel on the new key, or the grace is
//! over, the old key is forgotten: tunnels still on it move to the new key, and a
//! handshake to it is refused, counted ([`DropReason::RetiredKey`]) and reported
//! (`retired_key_knocking`).
//!
//! **A peer's key** ([`Router::rotate_peer`]). When a member's record names a new key, the
//! new key becomes a peer of its own (a fresh tunnel, the member's subnets and routes),
//! and the old one stays, with no subnets, as its predecessor: it still decrypts what
//! comes on its sessions (packets the member sent before it moved), and what it decrypts
//! is accepted from the new peer's subnets. Packets out go to the new peer and wait in its
//! tunnel for the handshake (a round trip). The predecessor goes once the new peer has a
//! session and the old one has been silent for [`SILENT_MS`], or at the grace's end.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use boringtun::noise::rate_limiter::RateLimiter;
use keys::{PrivateKey, PublicKey};
use protocol::api::EventKind;
use protocol::drops::DropReason;

use super::peers::{PeerSpec, RouterError, Upserted, normalized};
use super::{Peer, PeerTable, Router};
use crate::events::now_unix_ms;

/// How long a replaced peer's old sessions must have been silent before it goes.
pub const SILENT_MS: u64 = 2000;
/// How many forgotten keys of its own the router still recognizes (to count and report
/// their handshakes).
const RETIRED_KEPT: usize = 8;

/// This host's WireGuard key as the router uses it.
pub(super) struct OwnKeys {
    pub(super) secret: boringtun::x25519::StaticSecret,
    pub(super) public: boringtun::x25519::PublicKey,
    pub(super) key: PublicKey,
    /// What each `Tunn` on this key gets as its limiter: it checks mac1 and never answers
    /// with a cookie (see `Router::mac1_only`).
    pub(super) mac1_only: Arc<RateLimiter>,
    /// Rises with every rotation: a tunnel made for an older one is on the old key.
    pub(super) generation: u64,
}

impl OwnKeys {
    pub(super) fn new(private: &PrivateKey, generation: u64) -> OwnKeys {
        let secret = private.to_static_secret();
        let public = boringtun::x25519::PublicKey::from(&secret);
        OwnKeys {
            mac1_only: Arc::new(RateLimiter::new(&public, u64::MAX)),
            secret,
            public,
            key: private.public_key(),
            generation,
        }
    }
}

/// The key this host rotated away from, answered until `until`.
pub(super) struct OldKey {
    pub(super) keys: Arc<OwnKeys>,
    until: Instant,
}

/// A peer replaced by its member's new key, kept until its sessions are done.
struct Predecessor {
    peer: Arc<Peer>,
    until: Instant,
}

/// The router's rotation state.
#[derive(Default)]
pub(super) struct Rotation {
    /// This host's old key, during the grace.
    old: ArcSwapOption<OldKey>,
    /// mac1 checkers of this host's keys forgotten since it started, newest last.
    retired: ArcSwap<Vec<(PublicKey, Arc<RateLimiter>)>>,
    /// Peers replaced by a new key of theirs.
    predecessors: Mutex<Vec<Predecessor>>,
}

/// Which of this host's keys a handshake message that failed the current key's mac1 is
/// addressed to.
pub(super) enum Addressed {
    /// The old key, during its grace.
    Old(Arc<OldKey>),
    /// A key forgotten after its grace.
    Retired(PublicKey),
    /// None of this host's keys.
    Neither,
}

impl Router {
    /// Makes `new` this host's WireGuard key; the current one is answered for `grace` (see
    /// the module docs). A key still in a grace from an earlier rotation is forgotten now.
    pub fn rotate_own_key(&self, new: &PrivateKey, grace: Duration) {
        let _writer = crate::util::lock(&self.writer);
        let current = self.keys.load_full();
        if current.key == new.public_key() {
            return;
        }
        if let Some(older) = self.rotation.old.swap(None) {
            self.retire_key(&older.keys);
        }
        let next = Arc::new(OwnKeys::new(new, current.generation + 1));
        self.rate_limiter.store(Arc::new(RateLimiter::new(
            &next.public,
            self.handshake_limit,
        )));
        self.keys.store(next);
        self.rotation.old.store(Some(Arc::new(OldKey {
            keys: current.clone(),
            until: Instant::now() + grace,
        })));
        tracing::info!(old_key = %current.key, new_key = %new.public_key(), grace_s = grace.as_secs(), "this host's WireGuard key rotated; the old key is answered until every peer has moved or the grace ends");
    }

    /// The key this host rotated away from, while it is still answered.
    pub fn old_own_key(&self) -> Option<PublicKey> {
        self.rotation.old.load().as_ref().map(|o| o.keys.key)
    }

    fn retire_key(&self, keys: &OwnKeys) {
        let mut retired = Vec::clone(&self.rotation.retired.load());
        retired.push((keys.key, keys.mac1_only.clone()));
        if retired.len() > RETIRED_KEPT {
            retired.remove(0);
        }
        self.rotation.retired.store(Arc::new(retired));
        tracing::info!(old_key = %keys.key, "forgot this host's old WireGuard key: handshakes to it are refused from now on");
    }

    /// Which of this host's other keys `datagram` (a handshake message whose mac1 does not
    /// match the current key) is addressed to.
    pub(super) fn addressed(&self, datagram: &[u8], out: &mut [u8]) -> Addressed {
        if let Some(old) = self.rotation.old.load_full()
            && old
                .keys
                .mac1_only
                .verify_packet(None, datagram, out)
                .is_ok()
        {
            return Addressed::Old(old);
        }
        for (key, mac1) in self.rotation.retired.load().iter() {
            if mac1.verify_packet(None, datagram, out).is_ok() {
                return Addressed::Retired(*key);
            }
        }
        Addressed::Neither
    }

    /// A handshake to `key`, forgotten: refused, counted and reported.
    pub(super) fn refuse_retired(&self, key: PublicKey, src: std::net::SocketAddr) {
        self.drop_global(DropReason::RetiredKey, Some(src));
        self.events.emit(
            EventKind::RetiredKeyKnocking,
            None,
            Some(src),
            || format!("a handshake to WireGuard key {key}, which this host rotated away from"),
            now_unix_ms(),
        );
    }

    /// Replaces the peer with key `old` by `spec` (its member's new key, with the same
    /// subnets): see the module docs. The predecessor goes at the latest after `grace`.
    /// Refused as [`Router::change_peers`] refuses; then nothing changes.
    pub fn rotate_peer(
        &self,
        old: &PublicKey,
        spec: PeerSpec,
        grace: Duration,
    ) -> Result<Upserted, RouterError> {
        let writer = crate::util::lock(&self.writer);
        let current = self.table.load_full();
        let Some(predecessor) = current.by_key(old).cloned() else {
            drop(writer);
            return self.upsert_peer(spec);
        };
        if current.by_key(&spec.public_key).is_some() {
            drop(writer);
            return self.upsert_peer(spec);
        }
        let subnets = normalized(&spec.subnets);
        self.check_in(&current, &[*old], &[(spec.clone(), subnets.clone())])?;
        let mut next = PeerTable::clone(&current);
        let added = self.add(&mut next, spec, subnets);
        let Upserted::Added { index } = added else {
            return Ok(added);
        };
        predecessor.make_predecessor_of(index);
        next.rebuild_routes();
        self.table.store(Arc::new(next));
        drop(writer);
        crate::util::lock(&self.rotation.predecessors).push(Predecessor {
            peer: predecessor.clone(),
            until: Instant::now() + grace,
        });
        self.relay_map_changed();
        tracing::info!(peer = ?predecessor.name(), old_key = %old, index, "a peer's WireGuard key rotated; its old tunnel stays until the new one has a session");
        Ok(added)
    }

    /// Every tick: forgets this host's old key once every peer has moved to the new one
    /// or the grace is over, and removes predecessors that are done.
    pub(super) fn rotation_tick(&self, table: &PeerTable, now_ms: u64) {
        let now = Instant::now();
        if let Some(old) = self.rotation.old.load_full() {
            let keys = self.keys.load_full();
            let lagging: Vec<&Arc<Peer>> = table
                .present()
                .filter(|p| !p.is_predecessor() && p.lock().key_generation < keys.generation)
                .collect();
            if lagging.is_empty() || now >= old.until {
                for peer in &lagging {
                    let mut st = peer.lock();
                    st.tunn.set_static_private(
                        keys.secret.clone(),
                        keys.public,
                        Some(keys.mac1_only.clone()),
                    );
                    st.key_generation = keys.generation;
                }
                if !lagging.is_empty() {
                    tracing::warn!(
                        peers = lagging.len(),
                        "the grace of the old WireGuard key ended before every peer moved to the new one; their tunnels start over on the new key"
                    );
                }
                self.rotation.old.store(None);
                self.retire_key(&old.keys);
            }
        }
        let done: Vec<Arc<Peer>> = {
            let mut predecessors = crate::util::lock(&self.rotation.predecessors);
            let (done, kept): (Vec<Predecessor>, Vec<Predecessor>) =
                predecessors.drain(..).partition(|p| {
                    let successor = p.peer.successor().and_then(|i| table.peer_at(i));
                    let moved = successor.is_none_or(|s| {
                        s.handshakes.completed() > 0
                            && now_ms.saturating_sub(p.peer.lock().heard_ms) >= SILENT_MS
                    });
                    moved || now >= p.until || p.peer.is_removed()
                });
            *predecessors = kept;
            done.into_iter().map(|p| p.peer).collect()
        };
        for peer in done {
            if self.remove_predecessor(&peer) {
                tracing::info!(peer = ?peer.name(), old_key = %peer.public_key, "removed a peer's tunnel on its old WireGuard key");
            }
        }
    }
}

impl Peer {
    /// Whether the peer is a predecessor: replaced by its member's new key.
    pub fn is_predecessor(&self) -> bool {
        self.successor().is_some()
    }

    /// The index of the peer that replaced it, if one did.
    pub fn successor(&self) -> Option<usize> {
        match self.successor.load(Ordering::Relaxed) {
            usize::MAX => None,
            i => Some(i),
        }
    }

    fn make_predecessor_of(&self, index: usize) {
        self.set_subnets_none();
        self.successor.store(index, Ordering::Relaxed);
    }
}

impl Router {
    /// Before a handshake initiation reaches the tunnel in `st`: one to the current key
    /// moves a tunnel still on the old key to the new one; one to the old key (`old`) is
    /// taken only by a tunnel still on it. Returns whether the tunnel may take it.
    pub(super) fn follow_own_rotation(
        &self,
        st: &mut super::PeerState,
        old: Option<&OldKey>,
    ) -> bool {
        let keys = self.keys.load();
        match old {
            None => {
                if st.key_generation < keys.generation {
                    st.tunn.set_static_private(
                        keys.secret.clone(),
                        keys.public,
                        Some(keys.mac1_only.clone()),
                    );
                    st.key_generation = keys.generation;
                }
                true
            }
            Some(old) => st.key_generation == old.keys.generation,
        }
    }
}

#[cfg(test)]
mod tests;
