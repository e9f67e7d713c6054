//! Messages on the control plane's QUIC streams: one request and one response per
//! bidirectional stream, each a frame of `length u32 (big-endian) | postcard body`.
//!
//! Gossip itself (SWIM, and records piggy-backed on it) travels in QUIC datagrams in
//! foca's own encoding; streams carry what does not fit a datagram or needs an answer: a
//! join, a full sync (anti-entropy), and a push of fresh records to a member.
//!
//! Records inside are the signed bytes as made by `protocol::records`; a receiver applies
//! each to its directory, which verifies it, so nothing here is trusted as it arrives.

use ipnet::IpNet;
use keys::{Name, PublicKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

/// The largest frame accepted: a full sync of ~7,000 members of the largest kind.
pub const MAX_FRAME: usize = 8 << 20;

/// Signed records, as bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// `SignedMemberRecord::to_bytes`.
    pub members: Vec<Vec<u8>>,
    /// `SignedRevocation::to_bytes`.
    pub revocations: Vec<Vec<u8>>,
}

/// A request, sent by the side that opened the stream.
#[allow(clippy::large_enum_variant)] // one per stream, never stored
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// From a joining host (ALPN join) to an admin.
    Join {
        /// The token's secret.
        secret: [u8; 32],
        /// The name it asks for.
        name: Name,
        /// Its WireGuard key.
        wireguard_key: PublicKey,
        /// Its control key (the one its TLS certificate will carry).
        control_key: VerifyingKey,
        /// The subnet it asks for.
        subnet: Option<IpNet>,
        /// `keys::JoinProof`: that it holds the private half of `wireguard_key`, made with
        /// the admin's WireGuard key (the one in the certificate the admin showed in the TLS
        /// handshake) over everything above.
        proof: [u8; keys::PROOF_LEN],
    },
    /// Anti-entropy: the sender's whole directory; the answer is the receiver's.
    Sync(Bundle),
    /// Fresh records (a member that started, left, or a revocation); answered with `Ack`.
    Push(Bundle),
}

/// The answer on the same stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Admitted: the new member's certificate and what it needs to start.
    Joined {
        /// `SignedCertificate::to_bytes`.
        certificate: Vec<u8>,
        /// The network's range.
        cidr: IpNet,
        /// Its extra ranges, parallel to `cidr`.
        ranges: Vec<IpNet>,
        /// Prefix length of member subnets.
        subnet_prefix: u8,
        /// The admin's directory.
        bundle: Bundle,
    },
    /// The receiver's directory.
    Sync(Bundle),
    /// Received.
    Ack,
    /// Refused, with one sentence for the operator.
    Refused(String),
}

/// Writes one frame. The body is encoded into a buffer of its exact size (no copies left
/// behind by growing) that is zeroized when dropped: a join carries the token's secret.
pub async fn write<T: Serialize>(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    value: &T,
) -> anyhow::Result<()> {
    let size = postcard::experimental::serialized_size(value)?;
    let body = Zeroizing::new(postcard::to_extend(value, Vec::with_capacity(size))?);
    anyhow::ensure!(body.len() <= MAX_FRAME, "message too large to send");
    stream.write_all(&(body.len() as u32).to_be_bytes()).await?;
    stream.write_all(&body).await?;
    Ok(())
}

/// Reads one frame; refuses one larger than [`MAX_FRAME`] before reading it.
pub async fn read<T: serde::de::DeserializeOwned>(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> anyhow::Result<T> {
    read_limited(stream, MAX_FRAME).await
}

/// Like [`read`], refusing a frame longer than `max` bytes before reading it.
pub async fn read_limited<T: serde::de::DeserializeOwned>(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    max: usize,
) -> anyhow::Result<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    anyhow::ensure!(
        len <= max,
        "peer sent a {len}-byte message, above the {max}-byte limit"
    );
    // Zeroized when dropped: a join carries the token's secret.
    let mut body = Zeroizing::new(vec![0u8; len]);
    stream.read_exact(&mut body).await?;
    postcard::from_bytes(&body).map_err(|e| anyhow::anyhow!("malformed message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_junk_is_an_error() {
        let req = Request::Push(Bundle {
            members: vec![vec![1, 2, 3]],
            revocations: vec![],
        });
        let mut buf = Vec::new();
        write(&mut buf, &req).await.unwrap();
        let back: Request = read(&mut buf.as_slice()).await.unwrap();
        assert_eq!(back, req);
        let huge = (MAX_FRAME as u32 + 1).to_be_bytes();
        let e = read::<Request>(&mut &huge[..]).await.unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        let mut long = Vec::new();
        write(
            &mut long,
            &Request::Push(Bundle {
                members: vec![vec![7; 100]],
                revocations: vec![],
            }),
        )
        .await
        .unwrap();
        let e = read_limited::<Request>(&mut long.as_slice(), 50)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("above the 50-byte limit"), "{e}");
        let junk = [0, 0, 0, 3, 0xff, 0xff, 0xff];
        assert!(read::<Request>(&mut &junk[..]).await.is_err());
    }
}
