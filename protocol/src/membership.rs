//! Membership: who is in the network and who is alive, by SWIM (`foca`).
//!
//! This module owns two things the daemon and the simulator ([`crate::sim`]) share:
//!
//! - [`NodeId`], the identity a member has in the SWIM protocol;
//! - [`Config`], our timings for it (memberlist's LAN profile, tuned by the simulator), a
//!   plain struct the daemon can fill from its config file and turn into a
//!   [`foca::Config`] with [`Config::to_foca`].
//!
//! It must not do I/O: foca is sans-IO, its `Runtime` (sockets, timers) belongs to the
//! caller. It does not verify records either: the daemon checks the CA signature of a
//! member's certificate before it hands anything to foca.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A member's identity in SWIM: a node number plus a generation.
///
/// `node` is the member's number in the network, allocated once by the CA holder (next to
/// its subnet) and never reused, so it is unique and small: a `u32` costs 1–5 bytes on the
/// wire (postcard varint), where a node name could cost tens, and every SWIM message carries
/// two identities plus one per piggy-backed update. The name lives in the certificate.
///
/// `generation` is what lets a restarted or wrongly-declared-down member come back at once
/// instead of waiting for the cluster to forget it ([`foca::Config::remove_down_after`]):
/// SWIM never lets an identity that was declared down become alive again, so the member
/// takes a new one with the same `node` and `generation + 1` ([`foca::Identity::renew`],
/// which foca calls by itself when it learns it was declared down), and the higher
/// generation wins wherever both are known. The daemon persists the generation and bumps it
/// on every start. Generations compare by serial-number arithmetic (RFC 1982), so wrapping
/// past `u16::MAX` is harmless as long as two live generations of one node are less than
/// 32,768 apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    /// The member's number in the network (unique, allocated by the CA holder).
    pub node: u32,
    /// Bumped on every restart and every rejoin after being declared down.
    pub generation: u16,
}

impl NodeId {
    /// The first identity of member `node`.
    pub const fn new(node: u32) -> Self {
        Self {
            node,
            generation: 0,
        }
    }

    /// Whether `self` is a later generation than `other` (serial-number arithmetic).
    pub const fn is_newer_than(&self, other: &Self) -> bool {
        // Reinterpreting the wrapped difference as signed is the point of RFC 1982.
        (self.generation.wrapping_sub(other.generation) as i16) > 0
    }
}

impl foca::Identity for NodeId {
    type Addr = u32;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            node: self.node,
            generation: self.generation.wrapping_add(1),
        })
    }

    fn addr(&self) -> u32 {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.is_newer_than(adversary)
    }
}

/// Why a [`Config`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A duration or count that must be positive is zero.
    #[error("membership setting `{0}` must be greater than zero")]
    Zero(&'static str),
    /// The probe round trip does not fit in the probe period.
    #[error("membership `probe_rtt` must be shorter than `probe_period`")]
    RttNotBelowPeriod,
}

/// Membership timings. Every field is plain data so the daemon can load it from its config;
/// [`Config::lan`] gives our defaults, [`Config::to_foca`] checks and converts.
///
/// The defaults follow memberlist's `DefaultLANConfig` (probe every 1 s, 500 ms probe
/// timeout, gossip to 3 members every 200 ms, suspicion scaled by log10 of the cluster
/// size) with datagrams capped at 1150 bytes to fit a QUIC datagram in a 1280-byte path
/// MTU. Measured with `scripts/sim` (see [`crate::sim`]; 1,000 members, 1 % loss, 0.5–2 ms
/// latency, 600 s, seeds 1–3): a join reaches 99.9 % of members in 0.74–0.83 s, a crash is
/// declared down by 99.9 % in 13.9–15.3 s (12 s of it is `suspect_to_down_after`), about
/// 63 bytes per member per second (2.4 datagrams) in the steady state, no false down. At
/// 10 % loss the same settings give 7 false downs in 600 s: raise `suspect_to_down_after`
/// or `indirect_probes` for a lossy underlay.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// How often each member probes one other member (round-robin over a shuffled list).
    ///
    /// Shorter finds a dead member sooner (a crash is first suspected after about one
    /// period on average at any cluster size) but every member sends one ping and gets one
    /// ack per period, so the steady-state traffic grows as its inverse.
    pub probe_period: Duration,
    /// How long to wait for a direct ack before asking others to probe indirectly.
    ///
    /// Should cover the p99 round trip of the underlay; too short and congestion alone
    /// triggers indirect probes (more traffic, more suspicion); too long and there is no
    /// time left in the period for the indirect round. Must be below `probe_period`.
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly when the direct probe timed out.
    ///
    /// More helpers make a false suspicion from one lost datagram or one bad path less
    /// likely, at the cost of two datagrams each, only when a probe already failed.
    pub indirect_probes: usize,
    /// How long a suspected member has to refute the suspicion before it is declared down.
    ///
    /// This is most of the detection time of a real crash, and the guard against false
    /// downs: the suspected member must hear of the suspicion (by gossip) and its refutation
    /// must spread back. Longer: fewer false downs, slower detection.
    pub suspect_to_down_after: Duration,
    /// How many times each update (join, suspicion, down) is piggy-backed or gossiped by each
    /// member that learns it.
    ///
    /// Higher spreads an update to a larger share of the cluster (the tail of the join and
    /// down curves) at the cost of bytes; it must grow with log(cluster size).
    pub max_transmissions: u8,
    /// How often a member with updates to spread gossips them (to `gossip_fanout` members).
    ///
    /// Shorter spreads updates faster; a member with nothing new sends nothing, so this only
    /// costs bytes while updates are in flight.
    pub gossip_interval: Duration,
    /// How many random members each gossip round goes to.
    ///
    /// More members per round: fewer rounds to reach everyone (about log base
    /// `fanout + 1` of the cluster size), more datagrams per round.
    pub gossip_fanout: usize,
    /// Largest datagram foca writes or accepts, in bytes. Bounds how many updates one
    /// message carries. Keep it within a QUIC datagram on a 1280-byte path MTU.
    pub max_packet_size: usize,
    /// How often a member asks one random member for its member list (`Announce`/`Feed`),
    /// as a cheap anti-entropy; `None` disables it.
    ///
    /// Catches members that missed an update entirely; each round costs one near-full
    /// datagram, so keep it rare.
    pub announce_interval: Option<Duration>,
    /// How often a member announces itself to two members it believes down, to heal
    /// partitions; `None` disables it.
    pub announce_to_down_interval: Option<Duration>,
    /// Whether to tell a member that it was declared down when it talks to us, so it
    /// renews its identity ([`NodeId::generation`]) and comes back at once.
    pub notify_down_members: bool,
    /// How long a down member is remembered; while remembered, the same identity cannot
    /// rejoin (a new generation can). `None`: forever.
    pub remove_down_after: Option<Duration>,
}

impl Config {
    /// Our defaults for a LAN-like underlay and a cluster of about `expected_members`.
    ///
    /// Suspicion lasts `4 × max(1, log10(n))` probe periods and updates are sent
    /// `4 × log10(n + 1)` times (rounded down, at least 8), as in memberlist.
    pub fn lan(expected_members: u32) -> Self {
        let size = f64::from(expected_members.max(1));
        let probe_period = Duration::from_secs(1);
        let suspicion = 4.0 * size.log10().max(1.0) * probe_period.as_secs_f64();
        // foca's and memberlist's rule with a floor of 8: in a small cluster the extra sends
        // cost next to nothing (updates are rare) and loss hurts the tail of the spread most.
        // The float is clamped to 8..=255, so the cast is in range.
        let transmissions = (4.0 * (size + 1.0).log10()).floor().clamp(8.0, 255.0) as u8;
        Self {
            probe_period,
            probe_rtt: Duration::from_millis(500),
            indirect_probes: 3,
            suspect_to_down_after: Duration::from_secs_f64(suspicion),
            max_transmissions: transmissions,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            max_packet_size: 1150,
            announce_interval: Some(Duration::from_secs(30)),
            announce_to_down_interval: Some(Duration::from_secs(65)),
            notify_down_members: true,
            remove_down_after: Some(Duration::from_secs(24 * 60 * 60)),
        }
    }

    /// Checks the settings and converts them to foca's.
    pub fn to_foca(&self) -> Result<foca::Config, ConfigError> {
        fn positive(value: Duration, name: &'static str) -> Result<Duration, ConfigError> {
            if value.is_zero() {
                Err(ConfigError::Zero(name))
            } else {
                Ok(value)
            }
        }
        fn count(value: usize, name: &'static str) -> Result<NonZeroUsize, ConfigError> {
            NonZeroUsize::new(value).ok_or(ConfigError::Zero(name))
        }
        let periodic = |interval: Option<Duration>, members: usize, name: &'static str| {
            interval
                .map(|every| {
                    Ok(foca::PeriodicParams {
                        frequency: positive(every, name)?,
                        num_members: count(members, name)?,
                    })
                })
                .transpose()
        };
        let probe_period = positive(self.probe_period, "probe_period")?;
        let probe_rtt = positive(self.probe_rtt, "probe_rtt")?;
        if probe_rtt >= probe_period {
            return Err(ConfigError::RttNotBelowPeriod);
        }
        Ok(foca::Config {
            probe_period,
            probe_rtt,
            num_indirect_probes: count(self.indirect_probes, "indirect_probes")?,
            max_transmissions: NonZeroU8::new(self.max_transmissions)
                .ok_or(ConfigError::Zero("max_transmissions"))?,
            suspect_to_down_after: positive(self.suspect_to_down_after, "suspect_to_down_after")?,
            remove_down_after: self.remove_down_after,
            max_packet_size: count(self.max_packet_size, "max_packet_size")?,
            notify_down_members: self.notify_down_members,
            periodic_announce: periodic(self.announce_interval, 1, "announce_interval")?,
            periodic_announce_to_down_members: periodic(
                self.announce_to_down_interval,
                2,
                "announce_to_down_interval",
            )?,
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: positive(self.gossip_interval, "gossip_interval")?,
                num_members: count(self.gossip_fanout, "gossip_fanout")?,
            }),
        })
    }
}

impl Default for Config {
    /// [`Config::lan`] for 1,000 members.
    fn default() -> Self {
        Self::lan(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    #[test]
    fn renew_wins_even_across_wrap() {
        let id = NodeId::new(7);
        let next = id.renew().expect("NodeId always renews");
        assert_eq!(next.addr(), 7);
        assert!(next.win_addr_conflict(&id));
        assert!(!id.win_addr_conflict(&next));
        let last = NodeId {
            node: 7,
            generation: u16::MAX,
        };
        let wrapped = last.renew().expect("NodeId always renews");
        assert_eq!(wrapped.generation, 0);
        assert!(wrapped.win_addr_conflict(&last));
    }

    #[test]
    fn lan_defaults_convert_and_scale() {
        let config = Config::lan(1000);
        assert_eq!(config.suspect_to_down_after, Duration::from_secs(12));
        assert_eq!(config.max_transmissions, 12);
        let foca = config.to_foca().expect("defaults are valid");
        assert_eq!(foca.max_packet_size.get(), 1150);
        assert_eq!(
            Config::lan(10).suspect_to_down_after,
            Duration::from_secs(4)
        );
        assert_eq!(Config::lan(10).max_transmissions, 8);
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut config = Config::lan(100);
        config.probe_rtt = config.probe_period;
        assert_eq!(
            config.to_foca().unwrap_err(),
            ConfigError::RttNotBelowPeriod
        );
        let mut config = Config::lan(100);
        config.gossip_fanout = 0;
        assert_eq!(
            config.to_foca().unwrap_err(),
            ConfigError::Zero("gossip_fanout")
        );
    }
}
