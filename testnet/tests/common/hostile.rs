//! A hostile client of the control plane, for the security tests: it runs inside a host's
//! network namespace, reads a member's credentials from its state directory, forges and
//! replays records, and opens QUIC connections with whatever certificate (or none) an
//! attack needs. It speaks the daemon's own protocol through `overlayd`'s library
//! (`control::msg`, `control::tls`), so a refusal it sees is the daemon's, not a framing
//! mistake of the test.
#![allow(dead_code)] // each test uses a different subset

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use keys::{NodeCertificate, SignedCertificate, SigningKey, VerifyingKey};
use overlayd::control::msg::{self, Bundle, Request, Response};
use overlayd::control::state::NetworkState;
use overlayd::control::tls::{self, TlsIdentity};
use protocol::records::{Directory, SignedMemberRecord};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// How long one exchange with a daemon may take.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// The tag `overlayd` puts before a member record in a gossiped item (its `TAG_MEMBER`).
pub const GOSSIP_TAG_MEMBER: u8 = 0;

/// Now, in unix seconds.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Runs `make()`'s future to completion on a thread that has entered network namespace
/// `netns` (`/run/netns/NAME`), on a current-thread tokio runtime: every socket it opens
/// lives in that namespace. Only that thread changes namespace, and it ends with the call.
pub fn run_in_netns<F, Fut, T>(netns: &str, make: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = Path::new("/run/netns").join(netns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        // SAFETY: setns(2) on a namespace file we hold open; it changes only this thread.
        let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            entered,
            0,
            "cannot enter {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        drop(file);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(make())
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// What a member keeps in its state directory, as an attacker who stole it sees it.
#[derive(Clone)]
pub struct Credentials {
    /// `network.json`.
    pub network: NetworkState,
    /// `control.key`.
    pub control_key: SigningKey,
    /// Its certificate, verified.
    pub certificate: NodeCertificate,
}

impl Credentials {
    /// Reads the member's `network.json` and `control.key` from `state_dir`.
    pub fn read(state_dir: &Path) -> Result<Credentials> {
        let network = read_network(state_dir)?;
        let key_path = state_dir.join("control.key");
        let control_key = keys::read_signing_key_file(&key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        let certificate = network
            .certificate
            .verify(&network.ca, now_unix())
            .context("the member's certificate")?;
        Ok(Credentials {
            network,
            control_key,
            certificate,
        })
    }

    /// What it presents in a TLS handshake.
    pub fn identity(&self) -> TlsIdentity {
        TlsIdentity {
            ca: self.network.ca,
            network: self.network.network.clone(),
            certificate: self.network.certificate.clone(),
            control_key: self.control_key.clone(),
            previous_ca: None,
        }
    }

    /// Its current SWIM identity (node number and the generation its daemon saved).
    pub fn node_id(&self) -> protocol::membership::NodeId {
        protocol::membership::NodeId {
            node: self.certificate.serial as u32,
            generation: self.network.generation,
        }
    }
}

/// A state directory's `network.json`.
pub fn read_network(state_dir: &Path) -> Result<NetworkState> {
    let path = state_dir.join("network.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a network state", path.display()))
}

/// A state directory's `directory.json` (every record re-verified as it loads).
pub fn read_directory(state_dir: &Path) -> Result<Directory> {
    let path = state_dir.join("directory.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a directory", path.display()))
}

/// The record a directory holds for member `name`.
pub fn record_of(dir: &Directory, name: &str) -> Option<SignedMemberRecord> {
    dir.member_records()
        .find(|r| {
            r.record()
                .certificate
                .unverified_body()
                .is_ok_and(|c| c.node.as_str() == name)
        })
        .cloned()
}

/// A peer check that lets every certificate through (the attacker trusts anyone).
pub fn trust_all() -> tls::PeerCheck {
    tls::PeerCheck::new(|_: &NodeCertificate| Ok(()))
}

fn transport() -> Arc<quinn::TransportConfig> {
    Arc::new(tls::transport_config(
        Duration::from_secs(2),
        Duration::from_secs(8),
    ))
}

/// A member's client config, as the daemon builds it, for `credentials`.
pub fn member_config(identity: &TlsIdentity) -> quinn::ClientConfig {
    tls::client_config(identity, trust_all(), transport()).expect("member client config")
}

/// A joining host's client config for the network `network` describes.
pub fn joiner_config(network: &NetworkState) -> quinn::ClientConfig {
    tls::join_client_config(
        network.ca.fingerprint(),
        network.network.clone(),
        transport(),
    )
    .expect("join client config")
}

/// A client config on ALPN `alpn` that accepts any server (its handshake signature is still
/// checked) and presents `client` (an X.509 chain and key), or no certificate at all.
pub fn raw_config(
    alpn: &[u8],
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = AnyServer(provider.signature_verification_algorithms);
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(config).expect("QUIC TLS");
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport());
    config
}

/// The X.509 certificate a node presents (`overlayd::control::tls` module docs): self-signed
/// with the control key, carrying `CA key | signed node certificate` in an OCTET STRING under
/// `tls::NODE_CERTIFICATE_OID`. Made here from the documented format so that a test can put
/// any CA key and certificate in it.
pub fn x509_of(
    ca: &VerifyingKey,
    certificate: &SignedCertificate,
    key: &SigningKey,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let pkcs8 = key.to_pkcs8_der();
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
        &rcgen::PKCS_ED25519,
    )
    .expect("an Ed25519 key pair");
    let mut payload = ca.as_bytes().to_vec();
    payload.extend_from_slice(&certificate.to_bytes());
    let mut params =
        rcgen::CertificateParams::new(vec![tls::SERVER_NAME.to_owned()]).expect("X.509 params");
    params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
        tls::NODE_CERTIFICATE_OID,
        octet_string(&payload),
    )];
    let x509 = params.self_signed(&key_pair).expect("self-signed X.509");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    (vec![x509.der().clone()], key)
}

/// DER OCTET STRING (definite length, up to 65,535 bytes).
fn octet_string(content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![0x04];
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        let len = u16::try_from(len).expect("payload under 64 KiB");
        out.push(0x82);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(content);
    out
}

/// Accepts any server certificate; checks only that the server holds its key.
#[derive(Debug)]
struct AnyServer(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A connection to a daemon's control port, with the endpoint it needs kept alive.
pub struct Link {
    endpoint: quinn::Endpoint,
    /// The connection.
    pub conn: quinn::Connection,
}

impl Link {
    /// Connects to `to` with `config` (from inside the namespace the caller runs in).
    pub async fn open(config: quinn::ClientConfig, to: SocketAddr) -> Result<Link> {
        let endpoint = quinn::Endpoint::client("0.0.0.0:0".parse()?)?;
        let connecting = endpoint.connect_with(config, to, tls::SERVER_NAME)?;
        let conn = tokio::time::timeout(EXCHANGE_TIMEOUT, connecting)
            .await
            .context("no handshake within 5 s")??;
        Ok(Link { endpoint, conn })
    }

    /// One request on a new stream, and its answer.
    pub async fn ask(&self, request: &Request) -> Result<Response> {
        let exchange = async {
            let (mut send, mut recv) = self.conn.open_bi().await?;
            msg::write(&mut send, request).await?;
            send.finish()?;
            msg::read::<Response>(&mut recv).await
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
            .await
            .context("no answer within 5 s")?
    }

    /// Sends one QUIC datagram.
    pub fn datagram(&self, bytes: Vec<u8>) -> Result<()> {
        Ok(self.conn.send_datagram(bytes.into())?)
    }

    /// Waits (bounded) for the server to close the connection: why, or `None` if it stayed
    /// open.
    pub async fn closed(&self) -> Option<quinn::ConnectionError> {
        tokio::time::timeout(EXCHANGE_TIMEOUT, self.conn.closed())
            .await
            .ok()
    }

    /// Closes the connection and lets the close go out.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Pushes `members` (signed record bytes) to `to` over a member connection made with
/// `config`; the daemon's answer.
pub async fn push(
    config: quinn::ClientConfig,
    to: SocketAddr,
    members: Vec<Vec<u8>>,
) -> Result<Response> {
    let link = Link::open(config, to).await?;
    let answer = link
        .ask(&Request::Push(Bundle {
            members,
            revocations: Vec::new(),
            policy: None,
            names: Vec::new(),
            ca_transition: None,
        }))
        .await;
    link.close().await;
    answer
}

/// Pushes `bundle` to `to` over a member connection made with `config`; the daemon's
/// answer.
pub async fn push_bundle(
    config: quinn::ClientConfig,
    to: SocketAddr,
    bundle: Bundle,
) -> Result<Response> {
    let link = Link::open(config, to).await?;
    let answer = link.ask(&Request::Push(bundle)).await;
    link.close().await;
    answer
}

/// A SWIM datagram from `src` to `dst` in foca's encoding (postcard header, message
/// `Broadcast`, then each item as `length u16 | bytes`) carrying `items` as piggy-backed
/// records, as the daemon gossips them.
pub fn gossip_datagram(
    src: protocol::membership::NodeId,
    dst: protocol::membership::NodeId,
    items: &[Vec<u8>],
) -> Vec<u8> {
    use foca::Codec as _;
    let header = foca::Header {
        src,
        src_incarnation: 0,
        dst,
        message: foca::Message::Broadcast,
    };
    let mut out = Vec::new();
    foca::PostcardCodec
        .encode_header(&header, &mut out)
        .expect("encode a foca header");
    for item in items {
        let len = u16::try_from(item.len()).expect("an item under 64 KiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// Sends gossip `datagram` over a member connection to `to`, then a push of nothing (whose
/// answer shows the connection was served, after the datagram).
pub async fn send_gossip(
    config: quinn::ClientConfig,
    to: SocketAddr,
    datagram: Vec<u8>,
) -> Result<()> {
    let link = Link::open(config, to).await?;
    link.datagram(datagram)?;
    let answer = link.ask(&Request::Push(Bundle::default())).await;
    link.close().await;
    match answer? {
        // `Seen` acknowledges too, with the address the push came from.
        Response::Ack | Response::Seen(_) => Ok(()),
        other => bail!("the daemon answered an empty push with {other:?}"),
    }
}
