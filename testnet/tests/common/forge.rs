//! WireGuard handshake messages an outsider can make from a host's public key alone, as
//! WireGuard defines mac1 (whitepaper §5.4.4): key = BLAKE2s-256("mac1----" || receiver's
//! public key), mac1 = keyed BLAKE2s-128 over the message before the MACs; mac2 is left
//! zero. They pass the receiver's mac1 check (and count against its handshake limit) but
//! no Diffie-Hellman. Shared by the hijack and events tests.

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};

/// WireGuard's mac1 key for a receiver whose public key is `to`.
pub fn mac1_key(to: &[u8; 32]) -> [u8; 32] {
    Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(to)
        .finalize()
        .into()
}

/// A handshake message of `kind` (1 initiation, 148 bytes; 2 response, 92 bytes) with
/// made-up contents, sender index `sender`, a valid mac1 under `key` and a zero mac2; a
/// response is addressed to `receiver` (bytes 8..12).
pub fn forged(kind: u8, key: &[u8; 32], sender: u32, receiver: u32) -> Vec<u8> {
    let len = if kind == 1 { 148 } else { 92 };
    let mut m = vec![0u8; len];
    m[0] = kind;
    m[4..8].copy_from_slice(&sender.to_le_bytes());
    let body_from = if kind == 2 {
        m[8..12].copy_from_slice(&receiver.to_le_bytes());
        12
    } else {
        8
    };
    for (i, b) in m[body_from..len - 32].iter_mut().enumerate() {
        *b = (i as u32 ^ sender).wrapping_mul(31) as u8;
    }
    let mut mac = Blake2sMac::<U16>::new_from_slice(key).expect("a 32-byte BLAKE2s key");
    Update::update(&mut mac, &m[..len - 32]);
    let mac1: [u8; 16] = mac.finalize_fixed().into();
    m[len - 32..len - 16].copy_from_slice(&mac1);
    m
}
