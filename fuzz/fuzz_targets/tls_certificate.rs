//! The X.509 certificate a peer presents in the control plane's TLS handshake, read
//! before anything authenticates the peer (overlayd/src/control/tls.rs, `Presented::parse`
//! and `NodeVerifier::verify`): x509-parser, the node-certificate extension (a DER OCTET
//! STRING holding `CA key [32] | SignedCertificate`), then the node certificate's checks.
//!
//! Those functions are private to `overlayd::control::tls`; this target repeats their
//! steps with the same public parsers (x509-parser 0.17, `keys`) until they are exposed.
//! The seeds are genuine certificates as `presented_certificate` makes them.
//!
//! Checked: nothing panics; what passes every check is a fixture member's certificate
//! (the only ones the fixture CA signed) and the X.509 key is its control key.
#![no_main]

use keys::{ED25519_KEY_LEN, SignedCertificate, VerifyingKey};
use libfuzzer_sys::fuzz_target;
use overlay_fuzz::{NOW, fixture};
use x509_parser::oid_registry::{OID_SIG_ED25519, Oid};

/// `tls::NODE_CERTIFICATE_OID`.
fn node_certificate_oid() -> Oid<'static> {
    Oid::from(overlayd::control::tls::NODE_CERTIFICATE_OID).expect("a valid OID")
}

/// `tls::read_der_octet_string`: the content of a DER OCTET STRING that is all of `der`,
/// with the shortest length form.
fn read_der_octet_string(der: &[u8]) -> Option<&[u8]> {
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

fuzz_target!(|der: &[u8]| {
    let Ok(([], certificate)) = x509_parser::parse_x509_certificate(der) else {
        return;
    };
    let spki = certificate.public_key();
    let Some(key) = (spki.algorithm.algorithm == OID_SIG_ED25519
        && spki.subject_public_key.unused_bits == 0)
        .then(|| <[u8; ED25519_KEY_LEN]>::try_from(&*spki.subject_public_key.data).ok())
        .flatten()
    else {
        return;
    };
    let Ok(Some(extension)) = certificate.get_extension_unique(&node_certificate_oid()) else {
        return;
    };
    let Some(payload) = read_der_octet_string(extension.value) else {
        return;
    };
    let Some((ca, signed)) = payload.split_first_chunk::<ED25519_KEY_LEN>() else {
        return;
    };
    let Ok(ca) = VerifyingKey::from_bytes(ca) else {
        return;
    };
    let Ok(signed) = SignedCertificate::from_bytes(signed) else {
        return;
    };
    let f = fixture();
    if ca != f.ca.verifying_key() {
        return; // the verifier refuses another CA
    }
    let Ok(cert) = signed.verify(&ca, NOW) else {
        return;
    };
    assert!(
        f.members
            .iter()
            .chain([&f.reissued])
            .any(|m| m.certificate == signed),
        "a node certificate the CA never signed verified"
    );
    // The verifier goes on to compare `key` with the certified control key; the TLS
    // handshake then proves the peer holds it.
    let _ = (key, cert.control_key);
});
