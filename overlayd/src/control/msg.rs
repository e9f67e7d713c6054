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
    /// `SignedPolicy::to_bytes`: the network policy, when the sender holds one.
    pub policy: Option<Vec<u8>>,
    /// `SignedNameSet::to_bytes`: members' container names (a push carries the sender's
    /// own set, a sync every set it holds).
    pub names: Vec<Vec<u8>>,
    /// `SignedCaTransition::to_bytes`: the CA transition in progress, when the sender
    /// holds one (`overlayctl ca rotate`).
    pub ca_transition: Option<Vec<u8>>,
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
    /// From a member to an admin: re-issue the certificate this connection's TLS handshake
    /// proved (same name, keys, subnets, number; new serial and expiry). Answered with
    /// `Renewed` or `Refused`.
    Renew,
    /// From an admin to a member: a certificate re-issued for it (new groups,
    /// `overlayctl node groups`), `SignedCertificate::to_bytes`; the member takes it if it
    /// is a re-issue of its own. Answered with `Ack` or `Refused`.
    Reissued(Vec<u8>),
    /// From a member to a member connected to both: pass a punch proposal on to member
    /// number `with` (`Request::Punch`), both sides to fire in `delay_ms`. Answered with
    /// `Ack` (passed on) or `Refused`. No address: each side punches to the other's record.
    Rendezvous {
        /// The member to punch with, by number.
        with: u32,
        /// In how many milliseconds (at most 2,000).
        delay_ms: u16,
    },
    /// From the member asked for a rendezvous to the other side: member number `from`
    /// will punch in `delay_ms`; punch back at that time. Answered with `Ack` or `Refused`.
    Punch {
        /// The member that asked, by number.
        from: u32,
        /// In how many milliseconds (at most 2,000).
        delay_ms: u16,
    },
    /// From a member to an admin: re-issue the certificate this connection's TLS handshake
    /// proved with a new WireGuard key (`overlayctl rotate-key`; everything else kept, a
    /// new serial). Answered with `Renewed` or `Refused`.
    Rekey {
        /// The new WireGuard key.
        wireguard_key: PublicKey,
        /// `keys::RekeyProof`: that the member holds its private half, made with the
        /// admin's WireGuard key over the certificate it holds now.
        proof: [u8; keys::REKEY_PROOF_LEN],
    },
    /// From an admin to a member it made an admin (`overlayctl admin add`): the CA key
    /// (`SigningKey::to_base64`) and the admin records, the member's own grant among them.
    /// Only ever sent, never an answer: no request asks for the key. The member takes it
    /// if it matches the network's CA and a record names it. Answered with `Ack` or
    /// `Refused`. See `control::admins`.
    AdminKey {
        /// The CA key, base64.
        key: String,
        /// `admins::AdminRecord::sign` bytes.
        admins: Vec<Vec<u8>>,
    },
    /// The admin records the sender holds; answered with `Admins` (the receiver's).
    Admins(Vec<Vec<u8>>),
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
    /// A push received (as `Ack`), on a connection the sender opened: the address its
    /// datagrams came from as the receiver saw them (its address behind a NAT, if any).
    /// An observation the sender may publish as its own endpoint (see `core::discovery`).
    Seen(std::net::SocketAddr),
    /// The answer to `Renew`: the re-issued certificate, `SignedCertificate::to_bytes`.
    Renewed {
        /// The certificate.
        certificate: Vec<u8>,
    },
    /// The answer to `Request::Admins`: the receiver's admin records.
    Admins(Vec<Vec<u8>>),
}

/// The bytes of the length prefix before every frame's body.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Writes one frame and returns its size on the wire (length prefix included, for the
/// metrics). The body is encoded into a buffer of its exact size (no copies left behind by
/// growing) that is zeroized when dropped: a join carries the token's secret.
pub async fn write<T: Serialize>(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    value: &T,
) -> anyhow::Result<usize> {
    let size = postcard::experimental::serialized_size(value)?;
    let body = Zeroizing::new(postcard::to_extend(value, Vec::with_capacity(size))?);
    anyhow::ensure!(body.len() <= MAX_FRAME, "message too large to send");
    stream.write_all(&(body.len() as u32).to_be_bytes()).await?;
    stream.write_all(&body).await?;
    Ok(LENGTH_PREFIX_LEN + body.len())
}

/// Reads one frame; refuses one larger than [`MAX_FRAME`] before reading it.
pub async fn read<T: serde::de::DeserializeOwned>(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> anyhow::Result<T> {
    read_limited(stream, MAX_FRAME).await
}

/// Like [`read`], also returning the frame's size on the wire (length prefix included).
pub async fn read_sized<T: serde::de::DeserializeOwned>(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> anyhow::Result<(T, usize)> {
    let len = read_length(stream, MAX_FRAME).await?;
    let body = read_body(stream, Vec::new(), len).await?;
    let value =
        postcard::from_bytes(&body).map_err(|e| anyhow::anyhow!("malformed message: {e}"))?;
    Ok((value, LENGTH_PREFIX_LEN + len))
}

/// Like [`read_limited`], also returning the frame's size on the wire.
pub async fn read_limited_sized<T: serde::de::DeserializeOwned>(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    max: usize,
) -> anyhow::Result<(T, usize)> {
    let len = read_length(stream, max).await?;
    let body = read_body(stream, Vec::new(), len).await?;
    let value =
        postcard::from_bytes(&body).map_err(|e| anyhow::anyhow!("malformed message: {e}"))?;
    Ok((value, LENGTH_PREFIX_LEN + len))
}

/// Like [`read`], refusing a frame longer than `max` bytes before reading it.
pub async fn read_limited<T: serde::de::DeserializeOwned>(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    max: usize,
) -> anyhow::Result<T> {
    let len = read_length(stream, max).await?;
    let body = read_body(stream, Vec::new(), len).await?;
    postcard::from_bytes(&body).map_err(|e| anyhow::anyhow!("malformed message: {e}"))
}

/// The largest push: a policy (at most 256 KiB of text) with its signature, or a member's
/// name set (4,096 names with an alias each take ~300 KiB; a member may raise its cap).
pub const PUSH_FRAME: usize = (320 << 10) + protocol::records::names::MAX_BODY_LEN;

/// Frames up to this size are read into a buffer of their announced size at once; above
/// it the buffer grows with what arrives, so a length alone reserves no memory.
pub const SMALL_FRAME: usize = 64 << 10;

/// The largest request of each kind, by the first byte of its body (postcard writes an
/// enum's variant index as a varint: one byte for the eight variants of [`Request`]). A
/// join and a push carry a few records; only a sync carries a whole directory.
pub fn request_limit(tag: u8) -> usize {
    match tag {
        0 => 16 << 10,         // Join: ~200 bytes
        1 => MAX_FRAME,        // Sync: the sender's directory
        2 => PUSH_FRAME,       // Push: a member's own record and names, a revocation, a policy
        3 => 16,               // Renew: the tag alone
        4 => 4 << 10,          // Reissued: one certificate (at most keys::MAX_SIGNED_LEN bytes)
        5 | 6 => 16,           // Rendezvous, Punch: a member number and a delay (at most 9 bytes)
        7 => 80,               // Rekey: a key and a proof (65 bytes)
        8 | 9 => ADMINS_FRAME, // AdminKey, Admins: a key and every admin record
        _ => 0,
    }
}

/// The largest `AdminKey` or `Admins` request (or `Admins` answer): a key (44 bytes of
/// base64), one record per slot, and, between admins, the records of the tokens held
/// (`admins::tokens`).
pub const ADMINS_FRAME: usize = 64
    + super::admins::MAX_RECORDS * (super::admins::MAX_SIGNED_LEN + 2)
    + super::admins::tokens::MAX_TOKEN_RECORDS * (super::admins::tokens::MAX_SIGNED_LEN + 3);

/// The start of a request frame: its length, checked against [`request_limit`] for its
/// kind and against `max`, and the first byte of the body (already read).
#[derive(Debug, Clone, Copy)]
pub struct RequestHeader {
    /// The body's length in bytes.
    pub len: usize,
    tag: u8,
}

/// Reads a request's length and the first byte of its body; refuses a length its kind
/// cannot need before anything more is read.
pub async fn read_request_header(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    max: usize,
) -> anyhow::Result<RequestHeader> {
    let len = read_length(stream, max).await?;
    anyhow::ensure!(len > 0, "peer sent an empty message");
    let tag = stream.read_u8().await?;
    let limit = request_limit(tag).min(max);
    anyhow::ensure!(
        len <= limit,
        "peer sent a {len}-byte request of kind {tag}, above the {limit}-byte limit"
    );
    Ok(RequestHeader { len, tag })
}

/// Reads the rest of the request `header` announced.
pub async fn read_request_body(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    header: RequestHeader,
) -> anyhow::Result<Request> {
    let body = read_body(stream, vec![header.tag], header.len).await?;
    postcard::from_bytes(&body).map_err(|e| anyhow::anyhow!("malformed message: {e}"))
}

async fn read_length(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    max: usize,
) -> anyhow::Result<usize> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    anyhow::ensure!(
        len <= max,
        "peer sent a {len}-byte message, above the {max}-byte limit"
    );
    Ok(len)
}

/// Reads the body of a `len`-byte frame of which `start` has been read. Up to
/// [`SMALL_FRAME`] the buffer has its exact size from the start and is zeroized when dropped
/// (a join carries the token's secret; growing would leave copies behind). Above it, it
/// grows with what arrives: a peer that announces 8 MiB and sends a trickle holds only the
/// trickle.
async fn read_body(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    mut start: Vec<u8>,
    len: usize,
) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    if len <= SMALL_FRAME {
        let mut body = Zeroizing::new(vec![0u8; len]);
        let have = start.len().min(len);
        body[..have].copy_from_slice(&start[..have]);
        start.fill(0);
        stream.read_exact(&mut body[have..]).await?;
        return Ok(body);
    }
    let mut body = start;
    let mut chunk = [0u8; 16 << 10];
    while body.len() < len {
        let want = (len - body.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..want]).await?;
        anyhow::ensure!(n > 0, "the stream ended inside a message");
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Zeroizing::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_junk_is_an_error() {
        let req = Request::Push(Bundle {
            members: vec![vec![1, 2, 3]],
            revocations: vec![],
            policy: None,
            names: Vec::new(),
            ca_transition: None,
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
                policy: None,
                names: Vec::new(),
                ca_transition: None,
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

    /// The tag [`read_request_header`] looks at is postcard's variant index.
    #[tokio::test]
    async fn each_kind_of_request_has_its_own_limit() {
        let sync = Request::Sync(Bundle {
            members: vec![vec![1; 100 << 10]],
            revocations: vec![],
            policy: None,
            names: Vec::new(),
            ca_transition: None,
        });
        let push = Request::Push(Bundle {
            members: vec![vec![1; PUSH_FRAME]],
            revocations: vec![],
            policy: None,
            names: Vec::new(),
            ca_transition: None,
        });
        let mut buf = Vec::new();
        write(&mut buf, &sync).await.unwrap();
        let mut r = buf.as_slice();
        let header = read_request_header(&mut r, MAX_FRAME).await.unwrap();
        assert_eq!(read_request_body(&mut r, header).await.unwrap(), sync);
        let mut buf = Vec::new();
        write(&mut buf, &push).await.unwrap();
        let e = read_request_header(&mut buf.as_slice(), MAX_FRAME)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("kind 2"), "{e}");
        let small = Request::Push(Bundle::default());
        let mut buf = Vec::new();
        write(&mut buf, &small).await.unwrap();
        let mut r = buf.as_slice();
        let header = read_request_header(&mut r, MAX_FRAME).await.unwrap();
        assert_eq!(read_request_body(&mut r, header).await.unwrap(), small);
        // A join above 16 KiB, or an unknown kind, is refused from its header.
        let unknown = [0, 0, 0, 5, 200, 0, 0, 0, 0];
        assert!(
            read_request_header(&mut &unknown[..], MAX_FRAME)
                .await
                .is_err()
        );
    }

    /// The tags of the requests of renewal are their positions, and each has a limit that
    /// fits its largest honest instance and nothing much larger.
    #[tokio::test]
    async fn renewal_requests_have_their_own_small_limits() {
        let mut buf = Vec::new();
        write(&mut buf, &Request::Renew).await.unwrap();
        assert_eq!(buf[LENGTH_PREFIX_LEN], 3);
        let mut r = buf.as_slice();
        let header = read_request_header(&mut r, MAX_FRAME).await.unwrap();
        assert_eq!(
            read_request_body(&mut r, header).await.unwrap(),
            Request::Renew
        );
        let largest = Request::Reissued(vec![0xff; keys::MAX_SIGNED_LEN]);
        let mut buf = Vec::new();
        write(&mut buf, &largest).await.unwrap();
        assert_eq!(buf[LENGTH_PREFIX_LEN], 4);
        let mut r = buf.as_slice();
        let header = read_request_header(&mut r, MAX_FRAME).await.unwrap();
        assert_eq!(read_request_body(&mut r, header).await.unwrap(), largest);
        let mut buf = Vec::new();
        write(&mut buf, &Request::Reissued(vec![0; 8 << 10]))
            .await
            .unwrap();
        let e = read_request_header(&mut buf.as_slice(), MAX_FRAME)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("kind 4"), "{e}");
        let renewed = Response::Renewed {
            certificate: vec![1; 10],
        };
        let mut buf = Vec::new();
        write(&mut buf, &renewed).await.unwrap();
        assert_eq!(buf[LENGTH_PREFIX_LEN], 5);
    }

    /// The rendezvous requests come last (tags 5 and 6); their largest honest instance
    /// (varints at their longest) fits their limit, and a longer one is refused by its
    /// header alone.
    #[tokio::test]
    async fn rendezvous_requests_have_their_own_small_limits() {
        for (tag, largest) in [
            (
                5,
                Request::Rendezvous {
                    with: u32::MAX,
                    delay_ms: u16::MAX,
                },
            ),
            (
                6,
                Request::Punch {
                    from: u32::MAX,
                    delay_ms: u16::MAX,
                },
            ),
        ] {
            let mut buf = Vec::new();
            write(&mut buf, &largest).await.unwrap();
            assert_eq!(buf[LENGTH_PREFIX_LEN], tag);
            let mut r = buf.as_slice();
            let header = read_request_header(&mut r, MAX_FRAME).await.unwrap();
            assert_eq!(read_request_body(&mut r, header).await.unwrap(), largest);
            let mut padded = ((request_limit(tag) + 1) as u32).to_be_bytes().to_vec();
            padded.push(tag);
            let e = read_request_header(&mut padded.as_slice(), MAX_FRAME)
                .await
                .unwrap_err();
            assert!(e.to_string().contains(&format!("kind {tag}")), "{e}");
        }
    }

    /// `Rekey` comes last (tag 7): a key and a proof fit its limit.
    #[tokio::test]
    async fn the_rekey_request_has_its_own_small_limit() {
        let rekey = Request::Rekey {
            wireguard_key: PublicKey::from_bytes([0xff; 32]),
            proof: [0xff; keys::REKEY_PROOF_LEN],
        };
        let mut buf = Vec::new();
        write(&mut buf, &rekey).await.unwrap();
        assert_eq!(buf[LENGTH_PREFIX_LEN], 7);
        let mut r = buf.as_slice();
        let header = read_request_header(&mut r, MAX_FRAME).await.unwrap();
        assert_eq!(read_request_body(&mut r, header).await.unwrap(), rekey);
        let mut padded = ((request_limit(7) + 1) as u32).to_be_bytes().to_vec();
        padded.push(7);
        let e = read_request_header(&mut padded.as_slice(), MAX_FRAME)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("kind 7"), "{e}");
        // Then the admins' requests: tags 8 and 9.
        for (tag, request) in [
            (
                8,
                Request::AdminKey {
                    key: String::new(),
                    admins: Vec::new(),
                },
            ),
            (9, Request::Admins(Vec::new())),
        ] {
            let mut buf = Vec::new();
            write(&mut buf, &request).await.unwrap();
            assert_eq!(buf[LENGTH_PREFIX_LEN], tag);
            assert_eq!(request_limit(tag), ADMINS_FRAME);
        }
    }

    /// A length alone reserves nothing: 8 MiB announced and 10 bytes sent fail without an
    /// 8 MiB buffer (the growing path).
    #[tokio::test]
    async fn an_announced_length_is_not_allocated_up_front() {
        let mut frame = (MAX_FRAME as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&[1; 10]);
        let e = read::<Request>(&mut frame.as_slice()).await.unwrap_err();
        assert!(e.to_string().contains("ended inside"), "{e}");
    }
}
