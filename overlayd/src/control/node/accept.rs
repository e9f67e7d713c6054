//! Accepting control connections: the accept loop and one task per handshake. It decides
//! only whether a handshake may proceed and whom a finished one belongs to; serving the
//! connection is `net`'s.
//!
//! The accept loop never waits for a handshake: each runs in a task of its own with a
//! deadline ([`HANDSHAKE_TIMEOUT`]), so a client that sends a ClientHello and goes silent
//! holds one slot for a few seconds, not the loop. Slots are capped ([`Handshakes`]), in all
//! and per source address, separately for addresses QUIC has validated and for those it has
//! not: over the caps, a client from an unvalidated address is sent a Retry (RFC 9000
//! §8.1.2), which costs this host no state and which a spoofed source cannot answer, and a
//! validated one is refused (CONNECTION_REFUSED; it tries again later). So an attacker who
//! spoofs addresses fills only the unvalidated slots, and a genuine client that meets them
//! full takes one more round trip (the Retry) into the validated ones. quinn's `Incoming`
//! docs are followed: an `Incoming` is accepted, retried or refused at once, and
//! `remote_address_validated()` tells the two kinds apart.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::core::Throttle;
use super::inbound::TokenBucket;
use super::net::{Inbound, Peer, STREAM_TIMEOUT, serve_connection};
use super::{Event, lock};
use crate::control::tls::{self, Remote};

/// How long a handshake may take on the accepting side. The connecting side gives up after
/// [`STREAM_TIMEOUT`] too, so a handshake unfinished by then serves no one.
const HANDSHAKE_TIMEOUT: Duration = STREAM_TIMEOUT;
/// Handshakes in flight from addresses QUIC has not validated; over these a client is sent
/// a Retry. They bound the work a client that need not receive anything can make this host
/// do: 16 handshakes per [`HANDSHAKE_TIMEOUT`]. A genuine client over them (many members
/// reconnecting at once) only takes one more round trip.
const UNVALIDATED: HandshakeCaps = HandshakeCaps {
    total: 16,
    per_source: 4,
};
/// Joining hosts served at once (connections on the join ALPN, which have proven nothing);
/// over it a joiner is closed with the reason and tries again.
const JOINERS: usize = 16;
/// How long a joiner's connection is served: a join is one request.
const JOIN_DEADLINE: Duration = Duration::from_secs(10);
/// The QUIC close code of a joiner turned away because [`JOINERS`] are being served.
const CLOSE_BUSY: u32 = 0x12;
/// New handshakes one source may start, per second and in a burst: a member opens one
/// connection to each other member and a few more after a restart or a partition; a
/// source over it is refused (or sent a Retry) before any TLS work is done for it, so a
/// member that opens connection after connection cannot keep this host's CPUs busy.
const HANDSHAKE_RATE: (f64, f64) = (2.0, 8.0);
/// Sources whose handshake rate is remembered at most; full buckets are forgotten first.
const RATE_SOURCES: usize = 4096;
/// Handshakes in flight from validated addresses; over these a client is refused.
const VALIDATED: HandshakeCaps = HandshakeCaps {
    total: 256,
    per_source: 4,
};

/// Accepts control connections: each handshake runs in its own task, under the caps of
/// [`Handshakes`] (see the module docs); members are then served, joiners may only ask to
/// join, and a client without a certificate of this network is closed with the reason.
pub(super) async fn accept_loop(
    endpoint: quinn::Endpoint,
    tx: mpsc::UnboundedSender<Event>,
    datagrams: Inbound,
) {
    let handshakes = Handshakes::new(UNVALIDATED, VALIDATED);
    let joiners = Arc::new(tokio::sync::Semaphore::new(JOINERS));
    // Shared by the handshake tasks: one line a second per kind of failure in all.
    let throttle = Arc::new(Mutex::new(Throttle::default()));
    let mut rates: HashMap<IpAddr, TokenBucket> = HashMap::new();
    while let Some(incoming) = endpoint.accept().await {
        let from = incoming.remote_address();
        let validated = incoming.remote_address_validated();
        let now = Instant::now();
        if rates.len() >= RATE_SOURCES {
            rates.retain(|_, b| !b.full(now));
        }
        let admission = if rates.len() >= RATE_SOURCES && !rates.contains_key(&source_of(from.ip()))
        {
            // every remembered source is busy: treat a new one as over its rate
            if validated {
                Admission::Refuse
            } else {
                Admission::Retry
            }
        } else if !rates
            .entry(source_of(from.ip()))
            .or_insert_with(|| TokenBucket::new(HANDSHAKE_RATE, now))
            .take(now)
        {
            if validated {
                Admission::Refuse
            } else {
                Admission::Retry
            }
        } else {
            handshakes.admit(from.ip(), validated)
        };
        match admission {
            Admission::Admit(slot) => {
                tokio::spawn(handshake(
                    incoming,
                    slot,
                    tx.clone(),
                    datagrams.clone(),
                    throttle.clone(),
                    joiners.clone(),
                ));
            }
            // quinn: an unvalidated address may always be sent a Retry; the fallback
            // only keeps the `Incoming` from lingering if that ever changes.
            Admission::Retry => {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().refuse();
                }
            }
            Admission::Refuse => {
                lock(&throttle).warn(
                    Instant::now(),
                    "refused a control handshake",
                    &format_args!("{from} has too many handshakes in flight or started too many of late; it may try again"),
                );
                incoming.refuse();
            }
        }
    }
}

/// Completes one handshake (within [`HANDSHAKE_TIMEOUT`]; `slot` is held until then) and
/// hands the connection on: a member's to the member task, a joiner's to be served here.
async fn handshake(
    incoming: quinn::Incoming,
    slot: HandshakeSlot,
    tx: mpsc::UnboundedSender<Event>,
    datagrams: Inbound,
    throttle: Arc<Mutex<Throttle>>,
    joiners: Arc<tokio::sync::Semaphore>,
) {
    let from = incoming.remote_address();
    let attempt = async { incoming.accept()?.await };
    // Dropping an unfinished handshake closes it (quinn closes a connection no one holds).
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            lock(&throttle).warn(Instant::now(), "refused a control connection", &e);
            return;
        }
        Err(_) => {
            lock(&throttle).warn(
                Instant::now(),
                "dropped an unfinished control handshake",
                &format_args!(
                    "{from} did not finish it within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            );
            return;
        }
    };
    drop(slot);
    let addr = conn.remote_address();
    match tls::authorize(&conn) {
        Ok(Remote::Member(cert)) => {
            tracing::debug!(%addr, node = %cert.node, "member connected");
            let _ = tx.send(Event::Connected(addr, conn));
        }
        Ok(Remote::Joiner) => {
            let Ok(_joiner) = joiners.try_acquire_owned() else {
                lock(&throttle).warn(
                    Instant::now(),
                    "turned a joiner away",
                    &format_args!("{JOINERS} joins are in flight"),
                );
                conn.close(CLOSE_BUSY.into(), b"too many joins in flight; try again");
                return;
            };
            let serve = serve_connection(conn.clone(), addr, Peer::Joiner, tx, datagrams);
            if tokio::time::timeout(JOIN_DEADLINE, serve).await.is_err() {
                conn.close(CLOSE_BUSY.into(), b"the join took too long");
            }
        }
        Err(refusal) => {
            lock(&throttle).warn(
                Instant::now(),
                "refused a control connection",
                &refusal.reason,
            );
            conn.close(refusal.code, refusal.reason.as_bytes());
        }
    }
}

/// How many handshakes may be in flight at once.
#[derive(Debug, Clone, Copy)]
struct HandshakeCaps {
    /// From every source together.
    total: usize,
    /// From one source: an IPv4 address, or an IPv6 /64 (what one host is usually given).
    per_source: usize,
}

/// What to do with a new handshake.
enum Admission {
    /// Go ahead; hold the slot until the handshake is over.
    Admit(HandshakeSlot),
    /// Over the caps for unvalidated addresses: send a Retry.
    Retry,
    /// Over the caps for validated addresses: refuse.
    Refuse,
}

/// The handshakes in flight, counted against two sets of caps: for addresses QUIC has not
/// validated and for those it has (see the module docs). Cloned into each handshake's slot.
#[derive(Clone)]
struct Handshakes {
    caps: [HandshakeCaps; 2],
    counts: Arc<Mutex<[InFlight; 2]>>,
}

#[derive(Default)]
struct InFlight {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

impl Handshakes {
    fn new(unvalidated: HandshakeCaps, validated: HandshakeCaps) -> Handshakes {
        Handshakes {
            caps: [unvalidated, validated],
            counts: Arc::default(),
        }
    }

    /// Admits a handshake from `ip` (whose address QUIC has `validated` or not) if its set of
    /// caps has room.
    fn admit(&self, ip: IpAddr, validated: bool) -> Admission {
        let (pool, source) = (usize::from(validated), source_of(ip));
        let caps = self.caps[pool];
        let mut counts = lock(&self.counts);
        let in_flight = &mut counts[pool];
        let from_source = in_flight.per_source.get(&source).copied().unwrap_or(0);
        if in_flight.total >= caps.total || from_source >= caps.per_source {
            return if validated {
                Admission::Refuse
            } else {
                Admission::Retry
            };
        }
        in_flight.total += 1;
        in_flight.per_source.insert(source, from_source + 1);
        Admission::Admit(HandshakeSlot {
            handshakes: self.clone(),
            pool,
            source,
        })
    }
}

/// One handshake's place in [`Handshakes`]; given back on drop.
struct HandshakeSlot {
    handshakes: Handshakes,
    pool: usize,
    source: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.handshakes.counts);
        let in_flight = &mut counts[self.pool];
        in_flight.total = in_flight.total.saturating_sub(1);
        if let Some(n) = in_flight.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                in_flight.per_source.remove(&self.source);
            }
        }
    }
}

/// The source a handshake is counted against: an IPv4 address (also when mapped into
/// IPv6), or the /64 of an IPv6 address.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: HandshakeCaps = HandshakeCaps {
        total: 3,
        per_source: 2,
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP address")
    }

    fn admitted(a: Admission) -> HandshakeSlot {
        match a {
            Admission::Admit(slot) => slot,
            Admission::Retry => panic!("retried, not admitted"),
            Admission::Refuse => panic!("refused, not admitted"),
        }
    }

    #[test]
    fn each_source_gets_its_share_and_then_a_retry() {
        let handshakes = Handshakes::new(CAPS, CAPS);
        let a = ip("198.18.0.66");
        let _one = admitted(handshakes.admit(a, false));
        let two = admitted(handshakes.admit(a, false));
        assert!(matches!(handshakes.admit(a, false), Admission::Retry));
        // Another source still gets in, up to the total.
        let _three = admitted(handshakes.admit(ip("198.18.0.12"), false));
        assert!(matches!(
            handshakes.admit(ip("198.18.0.13"), false),
            Admission::Retry
        ));
        // A finished (or timed out) handshake gives its slot back.
        drop(two);
        let _four = admitted(handshakes.admit(a, false));
    }

    #[test]
    fn validated_sources_have_slots_of_their_own_and_are_refused_over_them() {
        let handshakes = Handshakes::new(CAPS, CAPS);
        let spoofed = ip("198.18.0.12");
        let _held: Vec<_> = (0..2)
            .map(|_| admitted(handshakes.admit(spoofed, false)))
            .collect();
        assert!(matches!(handshakes.admit(spoofed, false), Admission::Retry));
        // The real host at that address answered the Retry: it is not crowded out.
        let _real: Vec<_> = (0..2)
            .map(|_| admitted(handshakes.admit(spoofed, true)))
            .collect();
        assert!(matches!(handshakes.admit(spoofed, true), Admission::Refuse));
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa::1")),
            source_of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(source_of(ip("::ffff:198.18.0.11")), ip("198.18.0.11"));
        let handshakes = Handshakes::new(CAPS, CAPS);
        let _held: Vec<_> = (1..=2)
            .map(|i| admitted(handshakes.admit(ip(&format!("2001:db8::{i}")), false)))
            .collect();
        assert!(matches!(
            handshakes.admit(ip("2001:db8::3"), false),
            Admission::Retry
        ));
    }
}
