//! The directory is written to disk off the member task ([`Saver`]): the newest copy wins
//! and one write runs at a time, on a blocking thread. A write ends with an fsync, which on
//! a busy disk can take seconds; done on the member task, those seconds were seconds in
//! which this host answered no SWIM probe, and its peers declared it down (the flood
//! test's member, under a flood of record updates and a disk busy with builds).

use std::time::{Duration, Instant};

use protocol::records::Directory;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::control::state::StateDir;

/// A write that takes longer than this is logged: it says the disk is slow.
const SLOW_WRITE: Duration = Duration::from_secs(1);

/// Writes the newest directory it was given, one write at a time.
pub(super) struct Saver {
    latest: Option<watch::Sender<Option<Directory>>>,
    task: Option<JoinHandle<()>>,
}

impl Saver {
    /// Starts the writer for `state`.
    pub(super) fn start(state: StateDir) -> Saver {
        let (tx, mut rx) = watch::channel::<Option<Directory>>(None);
        let task = tokio::spawn(async move {
            // Ends once the sender is gone and the last copy it sent is written.
            while rx.changed().await.is_ok() {
                let Some(dir) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let state = state.clone();
                let started = Instant::now();
                let written = tokio::task::spawn_blocking(move || state.save_directory(&dir)).await;
                match written {
                    Ok(Ok(())) if started.elapsed() > SLOW_WRITE => tracing::warn!(
                        seconds = started.elapsed().as_secs_f64(),
                        "saving the directory was slow; the disk of the state directory is busy"
                    ),
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %format!("{e:#}"), "cannot save the directory")
                    }
                    Err(e) => tracing::warn!(error = %e, "the directory writer failed"),
                }
            }
        });
        Saver {
            latest: Some(tx),
            task: Some(task),
        }
    }

    /// Has `dir` written, in place of any copy not yet written.
    pub(super) fn save(&self, dir: Directory) {
        if let Some(tx) = &self.latest {
            tx.send_replace(Some(dir));
        }
    }

    /// Waits until the last copy given is written; nothing is written after.
    pub(super) async fn flush(&mut self) {
        self.latest = None;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_disk(root: &std::path::Path) -> String {
        let text = std::fs::read_to_string(root.join("directory.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["network"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn the_newest_copy_is_on_disk_after_a_flush() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let ca = keys::CaKey::generate();
        let mut saver = Saver::start(state);
        for name in ["one", "two", "three"] {
            saver.save(Directory::new(ca.verifying_key(), name.parse().unwrap()));
        }
        saver.flush().await;
        assert_eq!(on_disk(tmp.path()), "three");
        // After a flush nothing more is written.
        saver.save(Directory::new(ca.verifying_key(), "four".parse().unwrap()));
        tokio::task::yield_now().await;
        assert_eq!(on_disk(tmp.path()), "three");
    }
}
