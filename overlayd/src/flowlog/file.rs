//! The flow log's file: JSON lines appended to `[flows] file`, rotated by size as logrotate
//! does (`file` → `file.1` → … → `file.3`, the oldest dropped), so the log never holds
//! more than about four times `max_bytes` on disk. Only the collector thread writes it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Rotated files kept beside the current one (`.1` newest .. `.3` oldest).
pub const KEEP: usize = 3;

/// An append-only file that rotates before a line would take it past `max_bytes`.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    file: File,
    /// Bytes in the current file.
    len: u64,
}

impl RotatingFile {
    /// Opens `path` for appending (0600, created if missing; a file left by an earlier
    /// run is continued).
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<RotatingFile> {
        let file = open_append(path)?;
        let len = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_owned(),
            max_bytes,
            file,
            len,
        })
    }

    /// Appends `line` and a newline, rotating first if the file would grow past
    /// `max_bytes` (a line longer than that gets a file of its own).
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let add = line.len() as u64 + 1;
        if self.len > 0 && self.len + add > self.max_bytes {
            self.rotate()?;
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        self.file.write_all(&buf)?;
        self.len += add;
        Ok(())
    }

    /// `file.2` → `file.3`, `file.1` → `file.2`, `file` → `file.1`, a new empty `file`.
    fn rotate(&mut self) -> io::Result<()> {
        for i in (1..KEEP).rev() {
            match std::fs::rename(numbered(&self.path, i), numbered(&self.path, i + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))?;
        self.file = open_append(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// `path.N`.
pub fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn rotates_by_size_and_keeps_three_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let mut f = RotatingFile::open(&path, 20).unwrap();
        // Lines of 10 bytes with the newline: two fit a file of 20.
        for i in 0..11 {
            f.write_line(format!("line {i:04}").as_bytes()).unwrap();
        }
        assert_eq!(read(&path), "line 0010\n");
        assert_eq!(read(&numbered(&path, 1)), "line 0008\nline 0009\n");
        assert_eq!(read(&numbered(&path, 2)), "line 0006\nline 0007\n");
        assert_eq!(read(&numbered(&path, 3)), "line 0004\nline 0005\n");
        assert!(!numbered(&path, 4).exists(), "only three old files");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A new run continues the file and counts what it holds.
        drop(f);
        let mut f = RotatingFile::open(&path, 20).unwrap();
        f.write_line(b"line 0011").unwrap();
        assert_eq!(read(&path), "line 0010\nline 0011\n");
        f.write_line(b"a line longer than the limit").unwrap();
        assert_eq!(read(&path), "a line longer than the limit\n");
        assert_eq!(read(&numbered(&path, 1)), "line 0010\nline 0011\n");
        assert_eq!(read(&numbered(&path, 3)), "line 0006\nline 0007\n");
    }
}
