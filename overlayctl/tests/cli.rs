//! The CLI as a user runs it: key commands against `wg` (when installed), and clear
//! errors when the daemon is not there.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

fn overlayctl(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_overlayctl"))
        .args(args)
        .env_remove("OVERLAYD_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_owned()
}

fn wg(args: &[&str], stdin: &str) -> Option<String> {
    let mut child = Command::new("wg")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().ok()?;
    out.status.success().then(|| text(&out.stdout))
}

#[test]
fn keys_are_interchangeable_with_wg() {
    let private = overlayctl(&["keys", "generate"], "");
    assert!(private.status.success());
    let private = text(&private.stdout);
    assert_eq!(private.len(), 44);
    let public = text(&overlayctl(&["keys", "public"], &private).stdout);
    assert_eq!(public.len(), 44);
    let Some(wg_public) = wg(&["pubkey"], &private) else {
        eprintln!("wg not installed: skipping the comparison with wg pubkey");
        return;
    };
    assert_eq!(public, wg_public);
    let wg_private = wg(&["genkey"], "").unwrap();
    let ours = text(&overlayctl(&["keys", "public"], &wg_private).stdout);
    assert_eq!(ours, wg(&["pubkey"], &wg_private).unwrap());
}

#[test]
fn generate_to_file_is_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let out = overlayctl(&["keys", "generate", "--out", path.to_str().unwrap()], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(out.stdout.is_empty(), "the key must not be printed");
}

#[test]
fn bad_private_key_is_a_usage_error() {
    let out = overlayctl(&["keys", "public"], "not a key\n");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("not a WireGuard key") && !err.contains('\n'),
        "{err}"
    );
}

#[test]
fn status_without_daemon_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    for cmd in ["status", "peers"] {
        let out = overlayctl(&["--socket", sock.to_str().unwrap(), cmd], "");
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(err.contains("is overlayd running?"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
