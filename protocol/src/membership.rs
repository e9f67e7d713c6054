//! Membership: who is in the network and who is alive, by SWIM (`foca`).
//!
//! This module owns what the daemon and the simulator ([`crate::sim`]) share, and one
//! thing only the daemon needs:
//!
//! - [`NodeId`], the identity a member has in the SWIM protocol (shared);
//! - [`Config`], our timings for it (memberlist's LAN profile, tuned by the simulator), a
//!   plain struct the daemon can fill from its config file and turn into a
//!   [`foca::Config`] with [`Config::to_foca`] (shared);
//! - [`screen`], the check every SWIM datagram passes before foca sees it: its sender is
//!   the member whose connection it came on, and the updates it carries about others name
//!   only generations those members signed.
//!
//! It must not do I/O: foca is sans-IO, its `Runtime` (sockets, timers) belongs to the
//! caller. It does not verify records either: the daemon checks the CA signature of a
//! member's certificate before it hands anything to foca, and tells [`screen`] which record
//! versions it holds.

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
/// generation wins wherever both are known.
///
/// A generation is bound to the member's own signed record: a member takes generation `g`
/// only once it has signed a record of version `g` or later (on start, the new record's
/// version; after a renewal, it signs a new record before anything else), and a host takes
/// an update about another member's identity only if that member's latest record it holds
/// allows the generation ([`screen`]). So no member can declare another down at a
/// generation the victim never reached, which would leave the victim unable to come back
/// (a `Down` is final for its identity and every renewal would lose to it). Generations are
/// plain `u64` counters (postcard writes them as varints: the same bytes as the `u16` of
/// earlier versions for values below 65,536).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    /// The member's number in the network (unique, allocated by the CA holder).
    pub node: u32,
    /// The version of the member's own record when it took this identity (see above).
    pub generation: u64,
}

impl NodeId {
    /// The first identity of member `node`.
    pub const fn new(node: u32) -> Self {
        Self {
            node,
            generation: 0,
        }
    }

    /// Whether `self` is a later generation than `other`.
    pub const fn is_newer_than(&self, other: &Self) -> bool {
        self.generation > other.generation
    }
}

impl foca::Identity for NodeId {
    type Addr = u32;

    fn renew(&self) -> Option<Self> {
        // `None` (cannot renew) only after 2^64 generations.
        Some(Self {
            node: self.node,
            generation: self.generation.checked_add(1)?,
        })
    }

    fn addr(&self) -> u32 {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.is_newer_than(adversary)
    }
}

/// Why [`screen`] refused a whole SWIM datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScreenError {
    /// The header or an update does not decode (foca would refuse it too).
    #[error("the SWIM message does not decode")]
    Malformed,
    /// The message names another member as its sender than the one whose certificate the
    /// connection proved.
    #[error("the connection of node {sender} sent a message from node {claimed}")]
    ForeignSender {
        /// The node the connection's certificate proved.
        sender: u32,
        /// The node the message claims to be from.
        claimed: u32,
    },
}

/// A SWIM datagram [`screen`] let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screened<'a> {
    /// What to hand to foca: the datagram itself, or a copy without the refused updates.
    pub datagram: std::borrow::Cow<'a, [u8]>,
    /// The identities of the updates taken out (at most what the datagram carried).
    pub refused: Vec<NodeId>,
}

/// Checks a SWIM datagram (foca's wire format, [`foca::PostcardCodec`]) that came over the
/// connection of member `sender` before it reaches foca, which trusts whatever updates a
/// message carries.
///
/// The message must name `sender` as its source (or one member could suspect, refute or
/// leave in another's name), and each update it carries about another member's identity
/// must be at a generation that member has signed: `signed(node)` is the version of the
/// latest record of `node` this host holds (`None`: no record), and an update at a
/// generation above it, or about a member with no record, is taken out. What a sender
/// says about itself is its own word and passes. Everything else (custom broadcasts, the
/// message) is left as it is, for foca and the broadcast handler.
///
/// A `Down` or `Suspect` for a generation the victim did sign still passes: foca's
/// refutation answers it (the victim takes a new generation, which its next record
/// allows).
pub fn screen<'a>(
    datagram: &'a [u8],
    sender: u32,
    signed: impl Fn(u32) -> Option<u64>,
) -> Result<Screened<'a>, ScreenError> {
    use foca::Codec as _;
    let mut rest = datagram;
    let header: foca::Header<NodeId> = foca::PostcardCodec
        .decode_header(&mut rest)
        .map_err(|_| ScreenError::Malformed)?;
    if header.src.node != sender {
        return Err(ScreenError::ForeignSender {
            sender,
            claimed: header.src.node,
        });
    }
    let unchanged = Screened {
        datagram: std::borrow::Cow::Borrowed(datagram),
        refused: Vec::new(),
    };
    // Where foca reads updates: a count (u16, big-endian) then each update, unless the
    // message is a `Broadcast` or fewer than two bytes follow (which foca handles itself).
    if rest.len() < 2 || header.message == foca::Message::Broadcast {
        return Ok(unchanged);
    }
    let header_len = datagram.len() - rest.len();
    let count = u16::from_be_bytes([rest[0], rest[1]]);
    rest = &rest[2..];
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..count {
        let before = rest;
        let update: foca::Member<NodeId> = foca::PostcardCodec
            .decode_member(&mut rest)
            .map_err(|_| ScreenError::Malformed)?;
        let encoded = &before[..before.len() - rest.len()];
        let id = update.id();
        if id.node == sender || signed(id.node).is_some_and(|version| id.generation <= version) {
            kept.push(encoded);
        } else {
            refused.push(*id);
        }
    }
    if refused.is_empty() {
        return Ok(unchanged);
    }
    // `kept` is shorter than `count`, so its length fits the u16.
    let kept_count = kept.len() as u16;
    let mut out = Vec::with_capacity(datagram.len());
    out.extend_from_slice(&datagram[..header_len]);
    out.extend_from_slice(&kept_count.to_be_bytes());
    for update in kept {
        out.extend_from_slice(update);
    }
    out.extend_from_slice(rest);
    Ok(Screened {
        datagram: std::borrow::Cow::Owned(out),
        refused,
    })
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
/// MTU. What these settings give at 1,000 members (join spread, time to declare a crash
/// down, bytes per member, false downs under loss) is measured by `scripts/sim` (see
/// [`crate::sim`]) and recorded in `docs/performance.md`.
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
    fn renew_wins_and_keeps_the_node() {
        let id = NodeId::new(7);
        let next = id.renew().expect("NodeId renews");
        assert_eq!(next.addr(), 7);
        assert_eq!(next.generation, 1);
        assert!(next.win_addr_conflict(&id));
        assert!(!id.win_addr_conflict(&next));
        // Past what postcard's u16 held before, still newer; never wraps.
        let big = NodeId {
            node: 7,
            generation: u64::from(u16::MAX),
        };
        assert!(big.renew().unwrap().win_addr_conflict(&big));
        let last = NodeId {
            node: 7,
            generation: u64::MAX,
        };
        assert_eq!(last.renew(), None);
    }

    fn id(node: u32, generation: u64) -> NodeId {
        NodeId { node, generation }
    }

    /// A datagram as foca writes it: header, update count, updates, then `tail` (custom
    /// broadcasts).
    fn datagram(
        src: NodeId,
        message: foca::Message<NodeId>,
        updates: &[foca::Member<NodeId>],
        tail: &[u8],
    ) -> Vec<u8> {
        use foca::Codec as _;
        let header = foca::Header {
            src,
            src_incarnation: 0,
            dst: id(1, 4),
            message,
        };
        let mut out = Vec::new();
        foca::PostcardCodec
            .encode_header(&header, &mut out)
            .unwrap();
        if !updates.is_empty() {
            out.extend_from_slice(&(updates.len() as u16).to_be_bytes());
            for update in updates {
                foca::PostcardCodec.encode_member(update, &mut out).unwrap();
            }
        }
        out.extend_from_slice(tail);
        out
    }

    /// Record versions held: node 2 at 5, node 3 at 9; no record of node 4.
    fn signed(node: u32) -> Option<u64> {
        match node {
            2 => Some(5),
            3 => Some(9),
            _ => None,
        }
    }

    #[test]
    fn an_update_for_an_unsigned_generation_is_taken_out() {
        use foca::{Member, Message, State};
        let tail = [0, 3, 7, 7, 7];
        let forged = Member::new(id(2, 1005), 0, State::Down);
        let current = Member::new(id(2, 5), 0, State::Down);
        let other = Member::new(id(3, 9), 2, State::Suspect);
        let unknown = Member::new(id(4, 0), 0, State::Alive);
        let own = Member::new(id(3, 70), 0, State::Alive);
        let input = datagram(
            id(3, 9),
            Message::Gossip,
            &[
                forged.clone(),
                current.clone(),
                other.clone(),
                unknown,
                own.clone(),
            ],
            &tail,
        );
        let screened = screen(&input, 3, signed).unwrap();
        assert_eq!(screened.refused, vec![id(2, 1005), id(4, 0)]);
        // The same message with only what passed, the custom broadcasts untouched.
        let expected = datagram(id(3, 9), Message::Gossip, &[current, other, own], &tail);
        assert_eq!(&*screened.datagram, &expected[..]);
        // And it passes as it is now.
        let again = screen(&expected, 3, signed).unwrap();
        assert!(again.refused.is_empty());
        assert!(matches!(again.datagram, std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn updates_of_every_message_kind_are_screened_but_broadcasts_are_not() {
        use foca::{Member, Message, State};
        let forged = Member::new(id(2, 6), 0, State::Down);
        for message in [
            Message::Ping(1),
            Message::Ack(1),
            Message::Feed,
            Message::Gossip,
        ] {
            let input = datagram(
                id(3, 9),
                message.clone(),
                std::slice::from_ref(&forged),
                &[],
            );
            let screened = screen(&input, 3, signed).unwrap();
            assert_eq!(screened.refused, vec![id(2, 6)], "{message:?}");
            // Every update out: a count of zero, which foca reads as none.
            assert_eq!(
                &screened.datagram[screened.datagram.len() - 2..],
                &[0, 0],
                "{message:?}"
            );
        }
        // A `Broadcast` carries no updates: left to foca and the broadcast handler.
        let input = datagram(id(3, 9), Message::Broadcast, &[], &[0, 2, 1, 2]);
        assert_eq!(&*screen(&input, 3, signed).unwrap().datagram, &input[..]);
    }

    #[test]
    fn a_datagram_in_another_members_name_or_malformed_is_refused() {
        use foca::{Member, Message, State};
        let input = datagram(id(2, 5), Message::Gossip, &[], &[]);
        assert_eq!(
            screen(&input, 3, signed),
            Err(ScreenError::ForeignSender {
                sender: 3,
                claimed: 2
            })
        );
        let input = datagram(
            id(3, 9),
            Message::Gossip,
            &[Member::new(id(2, 5), 0, State::Down)],
            &[],
        );
        assert_eq!(
            screen(&input[..input.len() - 1], 3, signed),
            Err(ScreenError::Malformed)
        );
        assert_eq!(screen(&[], 3, signed), Err(ScreenError::Malformed));
        assert_eq!(screen(&[0xff; 3], 3, signed), Err(ScreenError::Malformed));
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
