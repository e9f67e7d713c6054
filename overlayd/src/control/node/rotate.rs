//! The driver's side of a WireGuard key rotation (`core::rotate` decides): the key files,
//! the router, and the operator waiting for `overlayctl rotate-key`.
//!
//! Key files, beside `private_key_file` (`KEY`): the new key is written to `KEY.new`
//! (0600) before anyone is asked to certify it. Once its certificate is saved, the old key
//! is written to `KEY.old` and `KEY.new` is renamed to `KEY` (atomic: `KEY` is never
//! missing). `KEY.old` is removed once the grace is over. A start that finds a certificate naming the
//! key in `KEY.new` (a crash between the two saves) finishes the rename
//! ([`recover_key_file`]); a `KEY.new` whose key no certificate names is a rotation that
//! never completed, removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keys::{PrivateKey, PublicKey};
use protocol::api::RotateKeyResponse;

use super::Member;
use super::now;
use crate::config::Config;
use crate::control::{ApiFailure, Ctx, Reply};

/// `KEY.new` beside `key`.
pub(super) fn new_path(key: &Path) -> PathBuf {
    suffixed(key, "new")
}

/// `KEY.old` beside `key`.
pub(super) fn old_path(key: &Path) -> PathBuf {
    suffixed(key, "old")
}

fn suffixed(key: &Path, suffix: &str) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// At a member's start: if the certificate names the key in `KEY.new` rather than the one
/// in `KEY` (a crash mid-rotation), finishes the rotation (the rename) and switches the router
/// to it, with the usual grace for the old key. Returns whether it did.
pub(super) fn recover_key_file(ctx: &Ctx, certified: &PublicKey) -> anyhow::Result<bool> {
    let config = ctx.config();
    let new = new_path(&config.private_key_file);
    if config.private_key.public_key() == *certified {
        // A rotation that never got its certificate: its key is of no use.
        if new.exists() {
            let _ = std::fs::remove_file(&new);
        }
        return Ok(false);
    }
    let Ok(key) = keys::read_private_key_file(&new) else {
        return Ok(false);
    };
    if key.public_key() != *certified {
        return Ok(false);
    }
    tracing::warn!(key_file = %config.private_key_file.display(), "finishing a WireGuard key rotation that a restart interrupted");
    switch(ctx, key)?;
    Ok(true)
}

/// Makes `key` the key file's (the current one kept as `KEY.old`), the config's in force,
/// and the router's, which answers the old key for the grace.
fn switch(ctx: &Ctx, key: PrivateKey) -> anyhow::Result<()> {
    let config = ctx.config();
    let file = &config.private_key_file;
    let (new, old) = (new_path(file), old_path(file));
    if !new.exists() {
        keys::write_private_key_file(&new, &key)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", new.display()))?;
    }
    // A copy, not a rename: `KEY` is never missing; the rename below replaces it at once.
    keys::write_private_key_file(&old, &config.private_key)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", old.display()))?;
    std::fs::rename(&new, file)
        .map_err(|e| anyhow::anyhow!("cannot move {} to {}: {e}", new.display(), file.display()))?;
    let mut next = Config::clone(&config);
    next.private_key = key.clone();
    ctx.config.store(Arc::new(next));
    let grace = Duration::from_secs(config.control.key_rotation_grace_s);
    ctx.router.rotate_own_key(&key, grace);
    // The old key is kept on disk as long as the router answers it.
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        let _ = std::fs::remove_file(&old);
    });
    Ok(())
}

impl Member {
    /// `overlayctl rotate-key` (`reply`) or an automatic rotation (`None`): a new key,
    /// saved as `KEY.new`, handed to the core.
    pub(super) async fn start_rotation(&mut self, reply: Option<Reply<RotateKeyResponse>>) {
        if self.rotating.is_some() {
            if let Some(reply) = reply {
                let _ = reply.send(Err(ApiFailure::conflict(
                    "a key rotation is already under way; wait for it to finish",
                )));
            }
            return;
        }
        let key = PrivateKey::generate();
        let file = new_path(&self.ctx.config().private_key_file);
        if let Err(e) = keys::write_private_key_file(&file, &key) {
            let e = ApiFailure::internal(format!("cannot write {}: {e}", file.display()));
            tracing::warn!(error = %e, "WireGuard key rotation not started");
            if let Some(reply) = reply {
                let _ = reply.send(Err(e));
            }
            return;
        }
        let now = now();
        match self.core.rotate_key(key, now) {
            Ok(Some(change)) => {
                // An admin's own: what it issued is remembered before it is used.
                let answer = self
                    .ctx
                    .state
                    .save_admin(change.admin())
                    .map_err(|e| ApiFailure::internal(format!("{e:#}")))
                    .and_then(|()| self.core.commit_rotation(change, now));
                if answer.is_err() {
                    let _ = std::fs::remove_file(&file);
                }
                self.execute().await;
                if let Some(reply) = reply {
                    let _ = reply.send(answer);
                }
            }
            Ok(None) => {
                self.rotating = Some(reply);
                self.execute().await;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&file);
                if let Some(reply) = reply {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    /// [`super::core::Action::WireguardKey`]: the certificate naming `key` is saved.
    pub(super) fn take_new_key(&mut self, key: PrivateKey) {
        if let Err(e) = switch(&self.ctx, key) {
            tracing::error!(error = %format!("{e:#}"), "cannot switch to the new WireGuard key; restart overlayd to finish the rotation");
        }
    }

    /// [`super::core::Action::RotationDone`].
    pub(super) fn rotation_done(&mut self, result: Result<RotateKeyResponse, String>) {
        if result.is_err() {
            let _ = std::fs::remove_file(new_path(&self.ctx.config().private_key_file));
        }
        if let Some(Some(reply)) = self.rotating.take() {
            let _ = reply.send(result.map_err(|e| {
                ApiFailure::remote(format!(
                    "key rotation failed: {e}; the WireGuard key is unchanged"
                ))
            }));
        }
    }
}
