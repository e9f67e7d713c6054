//! The verifier side of [`super`]: parsing the X.509 certificate a peer presents, the
//! checks of the parent module's docs, and the `rustls` verifier traits that run them in
//! every handshake. It builds no configs and reads no connections.

use std::fmt;

use keys::{ED25519_KEY_LEN, Fingerprint, Name, NodeCertificate, SignedCertificate, VerifyingKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::oid_registry::{OID_SIG_ED25519, Oid};

use super::{NODE_CERTIFICATE_OID, PeerCheck};
use protocol::records::ca::{Refusal, Trust};

/// Which CA a verifier accepts.
#[allow(clippy::large_enum_variant)] // one per TLS config
#[derive(Debug, Clone, Copy)]
pub(super) enum TrustedCa {
    /// The network's CA, and during a CA transition the one it retires until its end
    /// (members).
    Key(Trust),
    /// Any CA with this fingerprint (a joining host, which knows only the token's).
    Fingerprint(Fingerprint),
}

/// What a peer's X.509 certificate carries, parsed but not yet trusted.
pub(super) struct Presented {
    /// The X.509 subject public key (Ed25519).
    pub(super) key: [u8; ED25519_KEY_LEN],
    /// The CA key from the extension.
    pub(super) ca: VerifyingKey,
    /// The node certificate from the extension.
    pub(super) signed: SignedCertificate,
}

impl Presented {
    /// Parses `der`; `Err` is a sentence for [`refused`].
    pub(super) fn parse(der: &[u8]) -> Result<Presented, String> {
        const NOT_OURS: &str =
            "the peer is not an overlayd node, or runs an incompatible version of overlayd";
        let certificate = match x509_parser::parse_x509_certificate(der) {
            Ok(([], certificate)) => certificate,
            Ok(_) => {
                return Err(format!(
                    "peer certificate has bytes after its end; {NOT_OURS}"
                ));
            }
            Err(e) => {
                return Err(format!(
                    "peer certificate is not valid X.509 ({e}); {NOT_OURS}"
                ));
            }
        };
        let spki = certificate.public_key();
        let key = (spki.algorithm.algorithm == OID_SIG_ED25519
            && spki.subject_public_key.unused_bits == 0)
            .then(|| <[u8; ED25519_KEY_LEN]>::try_from(&*spki.subject_public_key.data).ok())
            .flatten()
            .ok_or_else(|| format!("peer certificate's key is not an Ed25519 key; {NOT_OURS}"))?;
        let oid = node_certificate_oid();
        let extension = certificate
            .get_extension_unique(&oid)
            .map_err(|_| {
                format!("peer certificate carries the node certificate extension twice; {NOT_OURS}")
            })?
            .ok_or_else(|| {
                format!(
                    "peer certificate carries no node certificate (X.509 extension {}); {NOT_OURS}",
                    oid.to_id_string()
                )
            })?;
        let malformed =
            || format!("peer certificate's node certificate extension is malformed; {NOT_OURS}");
        let payload = read_der_octet_string(extension.value).ok_or_else(malformed)?;
        let (ca, signed) = payload
            .split_first_chunk::<ED25519_KEY_LEN>()
            .ok_or_else(malformed)?;
        let ca = VerifyingKey::from_bytes(ca).map_err(|_| malformed())?;
        let signed = SignedCertificate::from_bytes(signed).map_err(|e| format!("peer {e}"))?;
        Ok(Presented { key, ca, signed })
    }
}

/// The checks of the module docs that a peer's X.509 certificate `der` passes before the
/// TLS handshake proves its key, for a peer of `network` whose CA is `ca`, at unix time
/// `now`: the node certificate it carries, or why not (one sentence). What the verifier of
/// every control connection runs (but for the caller's own [`PeerCheck`]); public so that
/// the fuzzer (fuzz/fuzz_targets/tls_certificate.rs) feeds the real code.
pub fn verify_presented(
    der: &[u8],
    ca: VerifyingKey,
    network: &Name,
    now: u64,
) -> Result<NodeCertificate, String> {
    check_presented(der, TrustedCa::Key(Trust::only(ca)), network, now)
}

/// [`check_presented`] with a member's trust, for the tests of a CA transition.
#[cfg(test)]
pub(super) fn check_presented_for_tests(
    der: &[u8],
    trust: Trust,
    network: &Name,
    now: u64,
) -> Result<NodeCertificate, String> {
    check_presented(der, TrustedCa::Key(trust), network, now)
}

fn check_presented(
    der: &[u8],
    trusted: TrustedCa,
    network: &Name,
    now: u64,
) -> Result<NodeCertificate, String> {
    let presented = Presented::parse(der)?;
    let found = presented.ca.fingerprint();
    match trusted {
        TrustedCa::Key(trust) => match trust.key(&found, now) {
            Ok(key) if *key == presented.ca => {}
            Err(refusal @ Refusal::Retired { .. }) => {
                return Err(format!("peer certificate refused: {refusal}"));
            }
            _ => {
                return Err(format!(
                    "peer certificate was signed by CA {found}, but this network's CA is {}; the peer belongs to another network, or one of the two hosts has a stale CA key (if the network's CA was rotated while this host was away, join again: `overlayctl leave`, then `overlayctl join TOKEN` with a token of the new CA)",
                    trust.current.fingerprint()
                ));
            }
        },
        TrustedCa::Fingerprint(expected) if found != expected => {
            return Err(format!(
                "peer certificate was signed by CA {found}, but the join token names CA {expected}; check that the token and the address joined belong to the same network (a token of a CA the network has rotated away from is void: make a new one on an admin with `overlayctl token create`)"
            ));
        }
        TrustedCa::Fingerprint(_) => {}
    }
    let cert = presented
        .signed
        .verify(&presented.ca, now)
        .map_err(|e| format!("peer {e}"))?;
    if cert.network != *network {
        return Err(format!(
            "peer node {} belongs to network {}, not {network}; check the peer's address and which network each host was set up for",
            cert.node, cert.network
        ));
    }
    if presented.key != *cert.control_key.as_bytes() {
        return Err(format!(
            "peer's TLS key is not the control key the CA certified for node {}; the peer is misconfigured (its key and certificate files do not match) or is impersonating {}",
            cert.node, cert.node
        ));
    }
    Ok(cert)
}

pub(super) fn node_certificate_oid() -> Oid<'static> {
    // The constant is a valid OID (first arc 1, second below 40), so this cannot fail.
    Oid::from(NODE_CERTIFICATE_OID).expect("NODE_CERTIFICATE_OID is a valid OID")
}

/// Checks peers' certificates, for a server (clients) or a client (the server).
pub(super) struct NodeVerifier {
    trusted: TrustedCa,
    network: Name,
    check: Option<PeerCheck>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl NodeVerifier {
    pub(super) fn new(
        trusted: TrustedCa,
        network: Name,
        check: Option<PeerCheck>,
        provider: &CryptoProvider,
    ) -> NodeVerifier {
        NodeVerifier {
            trusted,
            network,
            check,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    /// The checks in the module docs, at unix time `now`. A certificate refused only
    /// because it expired is reported to the check's watcher.
    fn verify(&self, der: &[u8], now: u64) -> Result<NodeCertificate, rustls::Error> {
        let cert = match check_presented(der, self.trusted, &self.network, now) {
            Ok(cert) => cert,
            Err(reason) => {
                if let Some(check) = &self.check
                    && let Some(cert) = expired(der, self.trusted, &self.network, now)
                {
                    check.expired(&cert);
                }
                return Err(refused(reason));
            }
        };
        if let Some(check) = &self.check {
            check.allow(&cert).map_err(refused)?;
        }
        Ok(cert)
    }
}

/// What `der` certifies if it passed every check at its last valid second but is past it
/// at `now`: a certificate of this network that expired, not a forgery or a stranger's.
/// Run on refusals only (a refused handshake costs its client a round trip), it parses and
/// verifies the certificate a second time.
fn expired(der: &[u8], trusted: TrustedCa, network: &Name, now: u64) -> Option<NodeCertificate> {
    let not_after = Presented::parse(der)
        .ok()?
        .signed
        .unverified_body()
        .ok()?
        .not_after;
    if now <= not_after {
        return None;
    }
    check_presented(der, trusted, network, not_after).ok()
}

/// A refusal as rustls carries it. `General`, whose `Display` shows the text as it is
/// (`InvalidCertificate(CertificateError::Other(..))` would show it in `Debug` form).
fn refused(reason: String) -> rustls::Error {
    rustls::Error::General(reason)
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not used by overlayd; use TLS 1.3".to_string())
}

impl fmt::Debug for NodeVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeVerifier")
            .field("trusted", &self.trusted)
            .field("network", &self.network)
            .field("check", &self.check.as_ref().map(|_| "PeerCheck"))
            .finish_non_exhaustive()
    }
}

/// The handshake-signature methods, which `ServerCertVerifier` and `ClientCertVerifier`
/// both declare (with the same signatures) and [`NodeVerifier`] answers alike for both:
/// TLS 1.2 refused, TLS 1.3 checked with the provider's algorithms.
macro_rules! signature_methods {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(tls12_refused())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, now.as_secs())?;
        Ok(ServerCertVerified::assertion())
    }

    signature_methods!();
}

impl ClientCertVerifier for NodeVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // Joining hosts have no certificate yet; `authorize` refuses members without one.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, now.as_secs())?;
        Ok(ClientCertVerified::assertion())
    }

    signature_methods!();
}

/// DER of an OCTET STRING holding `content` (shorter than 64 KiB: a node certificate and a
/// key are under 1 KiB).
pub(super) fn der_octet_string(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + content.len());
    out.push(0x04);
    match content.len() {
        len @ 0..0x80 => out.push(len as u8),
        len @ 0x80..0x100 => out.extend_from_slice(&[0x81, len as u8]),
        len => {
            let len = u16::try_from(len).unwrap_or(u16::MAX);
            out.push(0x82);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(content);
    out
}

/// The content of a DER OCTET STRING that is all of `der`, with the shortest length form
/// (what [`der_octet_string`] writes); `None` for anything else.
pub(super) fn read_der_octet_string(der: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if tag != 0x04 {
        return None;
    }
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&len, rest) = rest.split_first()?;
            (len >= 0x80).then_some((usize::from(len), rest))?
        }
        0x82 => {
            let (len, rest) = rest.split_first_chunk::<2>()?;
            let len = usize::from(u16::from_be_bytes(*len));
            (len >= 0x100).then_some((len, rest))?
        }
        _ => return None,
    };
    (rest.len() == len).then_some(rest)
}
