//! QUIC with mutual authentication by the network CA's node certificates.
//!
//! This module owns the TLS side of the control plane's QUIC endpoints: how a node shows
//! its [`SignedCertificate`] in a TLS handshake, how a peer's is checked, and how the
//! daemon learns, after a handshake, who is on the other end ([`authorize`],
//! [`remote_node`], [`server_ca`]). It does not open sockets, choose peers or speak any
//! control-plane message; it builds `quinn` configs and reads `quinn` connections.
//!
//! # What a node presents
//!
//! A self-signed X.509 certificate (made with `rcgen`) whose key pair is the node's Ed25519
//! control key, carrying one non-critical extension under [`NODE_CERTIFICATE_OID`]. Its
//! `extnValue` is the DER encoding of an OCTET STRING holding
//!
//! ```text
//! CA public key [32] | SignedCertificate::to_bytes()
//! ```
//!
//! Nothing else in the X.509 certificate is read: not its names, dates, serial or its
//! self-signature. The TLS handshake signature proves the peer holds the private half of
//! the certificate's key, and the CA's signature on the node certificate binds that key
//! (its `control_key`) to a node of the network: together they are the whole proof.
//!
//! # What a verifier checks, in order
//!
//! The certificate parses; its key is Ed25519; the extension is there (once) and well
//! formed; the CA key in it is the expected CA (members: the network's CA key; a joining
//! host: any CA whose fingerprint is the join token's); the node certificate verifies with
//! that CA at the handshake's time; it names the expected network; its `control_key` is
//! the X.509 key; and the caller's [`PeerCheck`] (revocation) passes. Each refusal is a
//! `rustls::Error::General` whose text is one sentence saying what was wrong and what to
//! do (the TLS alert is `handshake_failure`); quinn sends that text to the peer in its
//! CONNECTION_CLOSE, so the refused side learns why too.
//!
//! TLS 1.3 only, the `ring` provider passed explicitly (no process-wide provider), no
//! session resumption (a resumed session would skip the certificate checks, revocation
//! among them), and the server name is not checked: every node uses [`SERVER_NAME`].
//!
//! # Client authentication comes one round trip late
//!
//! A server offers client authentication but does not require it, since a joining host
//! has no certificate yet: the ALPN tells the two apart ([`ALPN_CONTROL`] for members,
//! [`ALPN_JOIN`] for joining hosts), and the server calls [`authorize`] on every accepted
//! connection before reading anything from it. On the client, quinn's `connect` completes
//! when the *server's* certificate is verified, before the server has seen (let alone
//! checked) the client's: a client must wait for a first answer from the server (a
//! datagram, or data on a stream it opened) before it treats the link as established; a
//! refused client sees the connection closed instead, with the server's reason.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use keys::{
    ED25519_KEY_LEN, Fingerprint, Name, NodeCertificate, SignedCertificate, SigningKey,
    VerifyingKey,
};
use quinn::VarInt;
use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

mod verify;

pub use verify::verify_presented;
use verify::{NodeVerifier, Presented, TrustedCa, der_octet_string};

/// The ALPN of member-to-member control connections: both sides present node certificates.
pub const ALPN_CONTROL: &[u8] = b"ovl-control/1";
/// The ALPN of a joining host talking to a bootstrap member: no client certificate. Version
/// 2: the join carries a proof of the joiner's WireGuard key (`msg::Request::Join`).
pub const ALPN_JOIN: &[u8] = b"ovl-join/2";
/// The server name every client sends and no verifier checks (nodes are named by their
/// certificates, not by DNS).
pub const SERVER_NAME: &str = "overlayd";

/// The OID of the X.509 extension that carries the node certificate: `1.3.6.1.4.1.32473.
/// 7837.1.1`. It sits under IANA's enterprise number 32473, which RFC 5612 sets aside for
/// documentation, so it collides with no one's; register an enterprise number and move it
/// there before a stable release (only overlayd reads it, and it is not critical).
pub const NODE_CERTIFICATE_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 32473, 7837, 1, 1];

/// The application close code [`authorize`] refusals carry.
pub const CLOSE_NOT_AUTHORIZED: VarInt = VarInt::from_u32(0x10);

/// The caller's part in checking a peer: its last word on a certificate that is otherwise
/// valid (the daemon refuses revoked serials and keys here), and whom to tell of one that
/// is refused only because it expired (the daemon's security events: a certificate the
/// network's CA signed, so a member, or a former one, is knocking).
#[derive(Clone)]
pub struct PeerCheck {
    allow: Arc<AllowFn>,
    expired: Option<Arc<ExpiredFn>>,
}

/// [`PeerCheck`]'s last word on a certificate.
type AllowFn = dyn Fn(&NodeCertificate) -> Result<(), String> + Send + Sync;
/// [`PeerCheck`]'s watcher of expired certificates.
type ExpiredFn = dyn Fn(&NodeCertificate) + Send + Sync;

impl PeerCheck {
    /// Checks with `allow`: `Err` holds one sentence, why and what to do.
    pub fn new(
        allow: impl Fn(&NodeCertificate) -> Result<(), String> + Send + Sync + 'static,
    ) -> PeerCheck {
        PeerCheck {
            allow: Arc::new(allow),
            expired: None,
        }
    }

    /// Also tells `report` of every certificate of this network refused because it
    /// expired (the refusal stands; `report` only watches).
    pub fn on_expired(
        mut self,
        report: impl Fn(&NodeCertificate) + Send + Sync + 'static,
    ) -> PeerCheck {
        self.expired = Some(Arc::new(report));
        self
    }

    /// The last word on `cert`.
    fn allow(&self, cert: &NodeCertificate) -> Result<(), String> {
        (self.allow)(cert)
    }

    /// `cert` was refused as expired.
    fn expired(&self, cert: &NodeCertificate) {
        if let Some(report) = &self.expired {
            report(cert);
        }
    }
}

/// What this node presents and what it trusts.
pub struct TlsIdentity {
    /// The network CA's public key: the only CA whose node certificates are accepted.
    pub ca: VerifyingKey,
    /// The network's name: certificates of other networks are refused, even from this CA.
    pub network: Name,
    /// This node's certificate, signed by `ca`.
    pub certificate: SignedCertificate,
    /// This node's Ed25519 control key: the certificate's `control_key` must be its public
    /// half, or peers refuse it.
    pub control_key: SigningKey,
    /// During a CA transition: the CA it retires, accepted until the unix second given
    /// (`certificate` may be one of it, until renewed).
    pub previous_ca: Option<(VerifyingKey, u64)>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("ca", &self.ca.fingerprint())
            .field("network", &self.network)
            .field("control_key", &self.control_key)
            .finish_non_exhaustive()
    }
}

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// A member of the network, as its (verified) certificate says.
    Member(Box<NodeCertificate>),
    /// A host that came to join (ALPN [`ALPN_JOIN`]); it has proven nothing yet.
    Joiner,
}

/// Why [`authorize`] turned a connection away: close it with these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    /// The application close code ([`CLOSE_NOT_AUTHORIZED`]).
    pub code: VarInt,
    /// One sentence for the peer: what was wrong and what to do.
    pub reason: String,
}

/// Transport settings for control connections: keep-alives every `keepalive`, closed after
/// `idle_timeout` without a packet; datagrams on (1 MiB receive buffer); at most 8
/// concurrent bidirectional streams and no unidirectional ones; modest flow-control
/// windows, since control messages are small and a node holds one connection per peer.
///
/// The initial MTU stays at quinn's 1200-byte UDP payload, safe on every IPv4 and IPv6 path;
/// it already lets a datagram carry 1,162 bytes (measured in this module's tests, with
/// quinn's 8-byte connection IDs), above the ~1,150 gossip needs, and MTU discovery raises
/// it on larger paths.
pub fn transport_config(keepalive: Duration, idle_timeout: Duration) -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    // A timeout beyond what QUIC can encode (2^62 ms) is as good as the longest one.
    let idle = quinn::IdleTimeout::try_from(idle_timeout)
        .unwrap_or_else(|_| quinn::IdleTimeout::from(VarInt::MAX));
    config
        .keep_alive_interval(Some(keepalive))
        .max_idle_timeout(Some(idle))
        .datagram_receive_buffer_size(Some(1 << 20))
        .datagram_send_buffer_size(1 << 20)
        .max_concurrent_bidi_streams(VarInt::from_u32(8))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(256 * 1024))
        .receive_window(VarInt::from_u32(1 << 20))
        .send_window(1 << 20);
    config
}

/// The config of a member's QUIC server: presents `id`'s certificate; accepts
/// [`ALPN_CONTROL`] and [`ALPN_JOIN`]; checks any client certificate like a member's (with
/// `check` last) but does not require one: call [`authorize`] on each accepted connection.
pub fn server_config(
    id: &TlsIdentity,
    check: PeerCheck,
    transport: Arc<quinn::TransportConfig>,
) -> anyhow::Result<quinn::ServerConfig> {
    let provider = provider();
    let verifier = member_verifier(id, check, &provider);
    let (chain, key) = presented_certificate(id)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)
        .context("this node's TLS certificate and control key")?;
    tls.alpn_protocols = vec![ALPN_CONTROL.to_vec(), ALPN_JOIN.to_vec()];
    // No resumption: a resumed session would not check the client certificate again.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    let tls = QuicServerConfig::try_from(tls).context("TLS config for QUIC")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(tls));
    config.transport_config(transport);
    Ok(config)
}

/// The config of a member connecting to another member: ALPN [`ALPN_CONTROL`], presents
/// `id`'s certificate, and checks the server's as [`server_config`] checks clients'. Connect
/// with server name [`SERVER_NAME`], and wait for a first answer before trusting the link
/// (see the module docs).
pub fn client_config(
    id: &TlsIdentity,
    check: PeerCheck,
    transport: Arc<quinn::TransportConfig>,
) -> anyhow::Result<quinn::ClientConfig> {
    let provider = provider();
    let verifier = member_verifier(id, check, &provider);
    let (chain, key) = presented_certificate(id)?;
    let tls = client_builder(provider, verifier)?
        .with_client_auth_cert(chain, key)
        .context("this node's TLS certificate and control key")?;
    quic_client_config(tls, ALPN_CONTROL, transport)
}

/// The config of a host joining with a token: ALPN [`ALPN_JOIN`], no client certificate;
/// the server must present a valid certificate of `network` from a CA whose fingerprint is
/// `ca_fingerprint` (the token's). After connecting, [`server_ca`] gives that CA's key.
pub fn join_client_config(
    ca_fingerprint: Fingerprint,
    network: Name,
    transport: Arc<quinn::TransportConfig>,
) -> anyhow::Result<quinn::ClientConfig> {
    let provider = provider();
    let verifier = NodeVerifier::new(
        TrustedCa::Fingerprint(ca_fingerprint),
        network,
        None,
        &provider,
    );
    let tls = client_builder(provider, verifier)?.with_no_client_auth();
    quic_client_config(tls, ALPN_JOIN, transport)
}

/// Decides what an accepted connection may do; call it before reading anything from the
/// connection, and on `Err` close it with the refusal's code and reason. [`ALPN_CONTROL`]
/// with a certificate (which the handshake verified) gives [`Remote::Member`];
/// [`ALPN_JOIN`] gives [`Remote::Joiner`]; [`ALPN_CONTROL`] without a certificate is refused.
pub fn authorize(conn: &quinn::Connection) -> Result<Remote, Refusal> {
    let refuse = |reason: String| Refusal {
        code: CLOSE_NOT_AUTHORIZED,
        reason,
    };
    let protocol = conn
        .handshake_data()
        .and_then(|data| data.downcast::<HandshakeData>().ok())
        .and_then(|data| data.protocol);
    match protocol.as_deref() {
        Some(ALPN_JOIN) => Ok(Remote::Joiner),
        Some(ALPN_CONTROL) => match peer_certificate(conn) {
            None => Err(refuse(
                "a valid node certificate of this network is required on a control connection; join the network first"
                    .to_string(),
            )),
            Some(der) => read_verified(&der)
                .map(|cert| Remote::Member(Box::new(cert)))
                .map_err(refuse),
        },
        _ => Err(refuse(
            "no known application protocol was negotiated; use overlayd of the same version"
                .to_string(),
        )),
    }
}

/// The node certificate the peer presented, once the handshake has verified it; `None`
/// when it presented none (a joining host), or it has expired since the handshake.
pub fn remote_node(conn: &quinn::Connection) -> Option<NodeCertificate> {
    read_verified(&peer_certificate(conn)?).ok()
}

/// The CA key in the server's certificate, for a joining host: the handshake checked it
/// against the token's fingerprint, so this is the network's CA key from now on.
pub fn server_ca(conn: &quinn::Connection) -> Option<VerifyingKey> {
    Some(Presented::parse(&peer_certificate(conn)?).ok()?.ca)
}

/// The end-entity certificate the peer presented, if any.
fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    chain.into_iter().next()
}

/// Reads a certificate the handshake already verified (against the CA it carries, which
/// the verifier matched to the expected one) and returns its node certificate.
fn read_verified(der: &[u8]) -> Result<NodeCertificate, String> {
    let presented = Presented::parse(der)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    presented
        .signed
        .verify(&presented.ca, now)
        .map_err(|e| format!("peer {e}"))
}

/// The verifier of a member's peers: `id`'s CA and network, then `check`.
fn member_verifier(id: &TlsIdentity, check: PeerCheck, provider: &CryptoProvider) -> NodeVerifier {
    NodeVerifier::new(
        TrustedCa::Key(protocol::records::ca::Trust {
            current: id.ca,
            previous: id.previous_ca,
        }),
        id.network.clone(),
        Some(check),
        provider,
    )
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_builder(
    provider: Arc<CryptoProvider>,
    verifier: NodeVerifier,
) -> anyhow::Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>> {
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier)))
}

fn quic_client_config(
    mut tls: rustls::ClientConfig,
    alpn: &[u8],
    transport: Arc<quinn::TransportConfig>,
) -> anyhow::Result<quinn::ClientConfig> {
    tls.alpn_protocols = vec![alpn.to_vec()];
    // No resumption: a resumed session would not check the server certificate again.
    tls.resumption = rustls::client::Resumption::disabled();
    let tls = QuicClientConfig::try_from(tls).context("TLS config for QUIC")?;
    let mut config = quinn::ClientConfig::new(Arc::new(tls));
    config.transport_config(transport);
    Ok(config)
}

/// The X.509 certificate and private key this node presents (see the module docs).
fn presented_certificate(
    id: &TlsIdentity,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let pkcs8 = id.control_key.to_pkcs8_der();
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
        &rcgen::PKCS_ED25519,
    )
    .context("loading the control key for TLS")?;
    let mut payload = Vec::with_capacity(ED25519_KEY_LEN + keys::MAX_SIGNED_LEN);
    // The CA of the certificate: the retiring one until it is renewed in a transition.
    let issuer = id
        .certificate
        .unverified_body()
        .ok()
        .and_then(|c| {
            id.previous_ca
                .filter(|(k, _)| k.fingerprint() == c.ca_fingerprint)
        })
        .map_or(id.ca, |(k, _)| k);
    payload.extend_from_slice(issuer.as_bytes());
    payload.extend_from_slice(&id.certificate.to_bytes());
    let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
        .context("X.509 certificate parameters")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, SERVER_NAME);
    params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
        NODE_CERTIFICATE_OID,
        der_octet_string(&payload),
    )];
    let certificate = params
        .self_signed(&key_pair)
        .context("signing this node's X.509 certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    Ok((vec![certificate.der().clone()], key))
}

#[cfg(test)]
mod tests;
