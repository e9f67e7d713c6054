//! Small effects the daemon's modules share, each written once: the clock in unix seconds
//! ([`now_unix`]), a poison-tolerant [`lock`], the atomic write of a private file
//! ([`write_atomic`]) and the bind of a root-only unix socket ([`UnixSocket`]).
//!
//! Nothing here knows what the files or sockets are for: callers name them (in
//! [`SocketNames`]) so that every error still says which one failed.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use anyhow::Context;

/// Now, in unix seconds.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Locks `m`, also when a thread panicked while holding it: what the mutexes of this
/// daemon guard stays usable after a panic (a table, a counter, a cache), and one panic
/// must not turn every later lock into another.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where [`write_atomic`] writes before the rename: `path` with `.tmp` added
/// (`network.json.tmp`).
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes `bytes` to `path` (0600) so that a crash never leaves half a file: to
/// [`tmp_path`] first (a leftover from a crash is removed), fsynced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// How errors name one of the daemon's unix sockets, and the mode of its folder.
pub struct SocketNames {
    /// Mode of the folder, made (with its parents) when missing.
    pub folder_mode: u32,
    /// The folder, after "cannot create ".
    pub folder: &'static str,
    /// The socket, after "cannot bind ".
    pub socket: &'static str,
    /// A stale socket file, after "cannot remove ".
    pub stale: &'static str,
    /// The socket, after "cannot restrict " (empty: the path alone).
    pub restrict: &'static str,
    /// The sentence when another process answers on the socket.
    pub busy: fn(&Path) -> String,
}

/// A bound unix socket (0600) that only root can open; removes its file when dropped.
pub struct UnixSocket {
    listener: Option<tokio::net::UnixListener>,
    path: PathBuf,
}

impl UnixSocket {
    /// Binds `path`; its folder is made `names.folder_mode` if missing. Refuses when
    /// something answers on it; removes a stale socket file left by a crash.
    pub fn bind(path: &Path, names: &SocketNames) -> anyhow::Result<UnixSocket> {
        if let Some(dir) = path.parent()
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(names.folder_mode)
                .create(dir)
                .with_context(|| format!("cannot create {} {}", names.folder, dir.display()))?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!((names.busy)(path));
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove {} {}", names.stale, path.display()))?;
        }
        let listener = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("cannot bind {} {}", names.socket, path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).with_context(
            || {
                format!(
                    "cannot restrict {}{} to root",
                    names.restrict,
                    path.display()
                )
            },
        )?;
        Ok(UnixSocket {
            listener: Some(listener),
            path: path.to_owned(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener, once: `what` names the socket in the error of a second call.
    pub fn take_listener(&mut self, what: &str) -> anyhow::Result<tokio::net::UnixListener> {
        self.listener
            .take()
            .with_context(|| format!("{what} already served"))
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_is_private_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(tmp_path(&path), "left by a crash").unwrap();
        write_atomic(&path, b"{}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!tmp_path(&path).exists());
        assert_eq!(tmp_path(&path), dir.path().join("state.json.tmp"));
    }

    #[test]
    fn a_poisoned_lock_still_locks() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let held = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }

    #[tokio::test]
    async fn a_socket_refuses_a_live_one_replaces_a_stale_one_and_goes_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("x.sock");
        let names = SocketNames {
            folder_mode: 0o700,
            folder: "the folder",
            socket: "the socket",
            stale: "the stale socket",
            restrict: "",
            busy: |p| format!("busy: {}", p.display()),
        };
        let first = UnixSocket::bind(&path, &names).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = UnixSocket::bind(&path, &names).err().unwrap();
        assert_eq!(e.to_string(), format!("busy: {}", path.display()));
        drop(first);
        assert!(!path.exists());
        // A file nobody answers on is stale.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let mut again = UnixSocket::bind(&path, &names).unwrap();
        assert!(again.take_listener("x").is_ok());
        let e = again.take_listener("the x socket").unwrap_err();
        assert_eq!(e.to_string(), "the x socket already served");
    }
}
