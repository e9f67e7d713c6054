//! `overlayctl rotate-key`: a new WireGuard key for this host (docs/key-rotation.md).

use std::path::Path;

use protocol::api::{ROTATE_KEY_PATH, RotateKeyResponse};

use crate::client::{self, REMOTE_TIMEOUT};
use crate::control::print_json;

/// Asks the daemon to rotate its key and prints what it did.
pub fn run(socket: &Path, json: bool) -> anyhow::Result<()> {
    let empty = serde_json::json!({});
    let answer: RotateKeyResponse = client::post(socket, ROTATE_KEY_PATH, &empty, REMOTE_TIMEOUT)?;
    if json {
        return print_json(&answer);
    }
    println!(
        "rotated this host's WireGuard key to {} (certificate serial {}); the old key {} is answered until every peer has moved to the new one or the grace ends ([control] key_rotation_grace_s), then refused",
        answer.public_key, answer.serial, answer.old_public_key
    );
    Ok(())
}
