//! Why a packet was dropped: one name per reason, shared by the daemon's counters, the
//! local API and the CLI.

use serde::{Deserialize, Serialize};

/// A reason to drop a packet. The daemon counts each drop under exactly one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Outbound: no peer's subnets contain the destination address.
    NoRoute,
    /// Inbound: the decrypted packet's source address is outside the sending peer's subnets.
    SourceNotAllowed,
    /// Inbound: a datagram for an index or key that belongs to no configured peer.
    UnknownPeer,
    /// Inbound: a datagram that is not a well-formed WireGuard message.
    Malformed,
    /// Inbound: authentication or decryption failed, or a replayed or stale message.
    AuthFailed,
    /// Inbound: a data message for a session this side does not have (e.g. after a restart).
    NoSession,
    /// Inbound: a handshake refused because the daemon is under load (a cookie was sent).
    UnderLoad,
    /// Inbound: a decrypted packet that is not IPv4 or IPv6.
    NotIp,
    /// Outbound: the peer has no known endpoint yet (it has never initiated).
    NoEndpoint,
    /// Either way: the kernel refused to take the packet (TUN or UDP write failed).
    WriteFailed,
    /// Inbound: the decrypted packet's destination is none of this host's own subnets or
    /// addresses (a peer tried to reach the host's LAN, other bridges or the internet
    /// through it).
    DestinationNotAllowed,
    /// Either way: the network policy allows no such flow between the two hosts.
    PolicyDenied,
    /// Inbound: a handshake to a WireGuard key this host rotated away from, after its
    /// grace (`overlayctl rotate-key`).
    RetiredKey,
}

impl DropReason {
    /// Every reason, in a fixed order (the order of counter arrays).
    pub const ALL: [DropReason; 13] = [
        DropReason::NoRoute,
        DropReason::SourceNotAllowed,
        DropReason::UnknownPeer,
        DropReason::Malformed,
        DropReason::AuthFailed,
        DropReason::NoSession,
        DropReason::UnderLoad,
        DropReason::NotIp,
        DropReason::NoEndpoint,
        DropReason::WriteFailed,
        DropReason::DestinationNotAllowed,
        DropReason::PolicyDenied,
        DropReason::RetiredKey,
    ];

    /// Position of this reason in [`DropReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The snake_case name used in logs, JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoRoute => "no_route",
            DropReason::SourceNotAllowed => "source_not_allowed",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::Malformed => "malformed",
            DropReason::AuthFailed => "auth_failed",
            DropReason::NoSession => "no_session",
            DropReason::UnderLoad => "under_load",
            DropReason::NotIp => "not_ip",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::WriteFailed => "write_failed",
            DropReason::DestinationNotAllowed => "destination_not_allowed",
            DropReason::PolicyDenied => "policy_denied",
            DropReason::RetiredKey => "retired_key",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_position_and_names_match_serde() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
            let json = serde_json::to_string(reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
    }
}
