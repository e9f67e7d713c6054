//! Node certificates (`keys::SignedCertificate`): the bytes inside gossiped records, join
//! answers and TLS certificates, and the `ovlcert1.` text.
//!
//! The first byte picks the form: 0 the rest as bytes; 1 the rest as text; 2 a genuine
//! fixture certificate with one byte flipped (the rest says which member, where and how).
//!
//! Checked: nothing panics; framing and text are canonical (what parses prints back as
//! the same bytes or text); a body that decodes is the one encoding of its content
//! (signing the decoded certificate again gives the same body; a format-1 body gives a
//! format-2 one with the same content); a certificate that
//! verifies with the fixture CA is byte for byte one the CA signed, so a changed one never
//! verifies.
#![no_main]

use keys::SignedCertificate;
use libfuzzer_sys::fuzz_target;
use overlay_fuzz::{NOW, fixture};

fn check(signed: &SignedCertificate) {
    let f = fixture();
    let bytes = signed.to_bytes();
    assert_eq!(
        SignedCertificate::from_bytes(&bytes).as_ref(),
        Ok(signed),
        "a certificate changed through its bytes"
    );
    // Only this CA can sign again; a body naming another CA is checked when the fuzzer
    // puts this CA's fingerprint in it.
    if let Some(body) = signed
        .unverified_body()
        .ok()
        .filter(|b| b.ca_fingerprint == f.ca.fingerprint())
    {
        let resigned = f.ca.sign(&body).expect("a decoded body follows the rules");
        if legacy(signed) {
            // Format 1 (before member numbers) is read, and written again as format 2:
            // the same content, another encoding.
            assert_eq!(
                resigned.unverified_body().ok(),
                Some(body),
                "a format-1 body changed when written as format 2"
            );
        } else {
            assert_eq!(
                resigned.body(),
                signed.body(),
                "a body has a second encoding"
            );
        }
    }
    if let Ok(cert) = signed.verify(&f.ca.verifying_key(), NOW) {
        let resigned = f.ca.sign(&cert).expect("a verified body follows the rules");
        if legacy(signed) {
            assert_eq!(
                resigned.unverified_body().ok(),
                Some(cert.clone()),
                "a format-1 certificate changed when written as format 2"
            );
        } else {
            assert_eq!(
                &resigned, signed,
                "a certificate the CA did not sign verified"
            );
        }
        assert!(cert.not_before <= NOW && NOW <= cert.not_after);
    }
}

/// Whether the body is of format 1, which the CA no longer writes (format 2 adds the
/// member number).
fn legacy(signed: &SignedCertificate) -> bool {
    signed.body().first() == Some(&1)
}

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    match form % 3 {
        0 => {
            if let Ok(signed) = SignedCertificate::from_bytes(rest) {
                assert_eq!(
                    signed.to_bytes(),
                    rest,
                    "certificate framing has a second encoding"
                );
                check(&signed);
            }
        }
        1 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(signed) = text.parse::<SignedCertificate>() {
                assert_eq!(
                    signed.to_string(),
                    text.trim(),
                    "certificate text has a second encoding"
                );
                check(&signed);
            }
        }
        _ => {
            let f = fixture();
            let byte = |i: usize| rest.get(i).copied().unwrap_or(0);
            let member = &f.members[usize::from(byte(0)) % f.members.len()];
            let mut bytes = member.certificate.to_bytes();
            let at = usize::from(u16::from_be_bytes([byte(1), byte(2)])) % bytes.len();
            bytes[at] ^= byte(3);
            if let Ok(signed) = SignedCertificate::from_bytes(&bytes) {
                check(&signed);
                if byte(3) != 0 {
                    assert!(
                        signed.verify(&f.ca.verifying_key(), NOW).is_err(),
                        "a changed certificate verified"
                    );
                }
            }
        }
    }
});
