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
/// in `KEY` (a crash mid-rotation), finishes the rotation (the rename) and switches the
/// router to it, with the usual grace for the old key. Returns whether it did.
pub(super) fn recover_key_file(ctx: &Ctx, certified: &PublicKey) -> anyhow::Result<bool> {
    let config = ctx.config();
    let Some(key) = pending_key(&config.private_key_file, &config.private_key, certified) else {
        return Ok(false);
    };
    tracing::warn!(key_file = %config.private_key_file.display(), "finishing a WireGuard key rotation that a restart interrupted");
    switch(ctx, key)?;
    Ok(true)
}

/// The key in `KEY.new` beside `file` if the certificate names it (`certified`) and not
/// `current` (the key in `file`). A `KEY.new` of a rotation that never got its certificate
/// (the certificate names `current`) is removed: its key is of no use.
fn pending_key(file: &Path, current: &PrivateKey, certified: &PublicKey) -> Option<PrivateKey> {
    let new = new_path(file);
    if current.public_key() == *certified {
        if new.exists() {
            let _ = std::fs::remove_file(&new);
        }
        return None;
    }
    keys::read_private_key_file(&new)
        .ok()
        .filter(|key| key.public_key() == *certified)
}

/// Makes `key` the key file's (the current one kept as `KEY.old`), the config's in force,
/// and the router's, which answers the old key for the grace.
fn switch(ctx: &Ctx, key: PrivateKey) -> anyhow::Result<()> {
    let config = ctx.config();
    let old = replace_key_file(&config.private_key_file, &config.private_key, &key)?;
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

/// `file` (holding `current`) is made to hold `new`: `current` is written to `KEY.old`,
/// `new` to `KEY.new` (if it is not there yet), which is renamed to `file`. Returns the
/// path of `KEY.old`.
fn replace_key_file(
    file: &Path,
    current: &PrivateKey,
    new: &PrivateKey,
) -> anyhow::Result<PathBuf> {
    let (pending, old) = (new_path(file), old_path(file));
    if !pending.exists() {
        keys::write_private_key_file(&pending, new)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", pending.display()))?;
    }
    // A copy, not a rename: `KEY` is never missing; the rename below replaces it at once.
    keys::write_private_key_file(&old, current)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", old.display()))?;
    std::fs::rename(&pending, file).map_err(|e| {
        anyhow::anyhow!(
            "cannot move {} to {}: {e}",
            pending.display(),
            file.display()
        )
    })?;
    Ok(old)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A crash after the certificate naming the new key was saved and before the key file
    /// was replaced: the next start finds the new key and finishes; a `KEY.new` no
    /// certificate names is thrown away. Every file stays 0600.
    #[test]
    fn an_interrupted_rotation_is_finished_or_forgotten_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wg.key");
        let (old, new) = (PrivateKey::generate(), PrivateKey::generate());
        keys::write_private_key_file(&file, &old).unwrap();
        keys::write_private_key_file(&new_path(&file), &new).unwrap();
        // The certificate names the new key: it is taken.
        let pending = pending_key(&file, &old, &new.public_key()).expect("the new key");
        assert_eq!(pending.public_key(), new.public_key());
        let old_file = replace_key_file(&file, &old, &pending).unwrap();
        let read = |p: &Path| keys::read_private_key_file(p).unwrap().public_key();
        assert_eq!(read(&file), new.public_key());
        assert_eq!(read(&old_file), old.public_key());
        assert!(!new_path(&file).exists());
        for p in [&file, &old_file] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        // A rotation whose certificate never came: the certificate names the key in use.
        let stray = PrivateKey::generate();
        keys::write_private_key_file(&new_path(&file), &stray).unwrap();
        assert!(pending_key(&file, &new, &new.public_key()).is_none());
        assert!(!new_path(&file).exists(), "a useless KEY.new is removed");
        // A KEY.new that is not the certified key is not taken either.
        keys::write_private_key_file(&new_path(&file), &stray).unwrap();
        let other = PrivateKey::generate().public_key();
        assert!(pending_key(&file, &new, &other).is_none());
    }
}
