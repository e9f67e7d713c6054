//! The X.509 certificate a peer presents in the control plane's TLS handshake, read
//! before anything authenticates the peer: `overlayd::control::tls::verify_presented`,
//! the checks every control connection's verifier runs (x509-parser, the node-certificate
//! extension: a DER OCTET STRING holding `CA key [32] | SignedCertificate`, then the node
//! certificate's own checks). The seeds are genuine certificates as
//! `presented_certificate` makes them.
//!
//! Checked: nothing panics; what passes is a fixture member's certificate (the only ones
//! the fixture CA signed), of the fixture network.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_fuzz::{NETWORK, NOW, fixture, name};

fuzz_target!(|der: &[u8]| {
    let f = fixture();
    let Ok(cert) =
        overlayd::control::tls::verify_presented(der, f.ca.verifying_key(), &name(NETWORK), NOW)
    else {
        return;
    };
    assert!(
        f.members.iter().chain([&f.reissued]).any(|m| m
            .certificate
            .verify(&f.ca.verifying_key(), NOW)
            .ok()
            == Some(cert.clone())),
        "a node certificate the CA never signed passed: {cert:?}"
    );
});
