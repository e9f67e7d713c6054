//! The pure core of the overlay: no sockets, no clock, no threads.
//!
//! - [`routing`]: the cryptokey routing table (longest-prefix match from an address to
//!   the peer that owns it), used both ways: outbound to pick the peer for a destination,
//!   inbound to check that a decrypted packet's source belongs to the peer that sent it.
//! - [`api`]: the request and response types of `overlayd`'s local API, shared with
//!   `overlayctl`.
//! - [`drops`]: why a packet was dropped, the vocabulary of every drop counter.
//! - [`membership`]: SWIM membership (foca): member identities and timing defaults.
//! - [`records`]: the signed member records and CA revocations the control plane gossips,
//!   and the [`records::Directory`] that verifies them (CA, owner, version, overlaps)
//!   before they steer traffic.
//! - [`sim`]: an N-member simulation of that membership on a virtual clock with a seeded
//!   RNG and packet loss (`scripts/sim`), to measure joins, failure detection and traffic.
#![forbid(unsafe_code)]

pub mod api;
pub mod drops;
pub mod membership;
pub mod policy;
pub mod records;
pub mod routing;
pub mod sim;
