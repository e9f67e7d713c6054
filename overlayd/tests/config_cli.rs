//! `overlayd --config ... [--check-config]` as an operator runs it: bad configs give one
//! line naming the problem and exit code 2, before anything is created; the checked
//! config is printed without the private key.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn overlayd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_overlayd"))
        .args(args)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap()
}

struct Dir {
    dir: tempfile::TempDir,
    key: keys::PrivateKey,
}

fn dir() -> Dir {
    let dir = tempfile::tempdir().unwrap();
    let key = keys::PrivateKey::generate();
    keys::write_private_key_file(&dir.path().join("private.key"), &key).unwrap();
    Dir { dir, key }
}

fn write(d: &Dir, body: &str) -> String {
    let path = d.dir.path().join("overlayd.toml");
    let sock = d.dir.path().join("api.sock");
    std::fs::write(
        &path,
        format!(
            "private_key_file = \"private.key\"\napi_socket = {:?}\n{body}",
            sock.display().to_string()
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn peer(subnets: &str) -> String {
    format!(
        "[[peer]]\npublic_key = \"{}\"\nsubnets = {subnets}\n",
        keys::PrivateKey::generate().public_key()
    )
}

fn assert_usage_error(out: &Output, needle: &str, d: &Dir) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
    assert!(!err.contains(d.key.to_base64().as_str()));
    // nothing half-made: no API socket left behind
    assert!(!Path::new(&d.dir.path().join("api.sock")).exists());
}

#[test]
fn check_config_prints_redacted_config() {
    let d = dir();
    let cfg = write(
        &d,
        &format!(
            "subnets = [\"10.42.1.0/24\"]\n{}",
            peer("[\"10.42.2.0/24\"]")
        ),
    );
    let out = overlayd(&["--config", &cfg, "--check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("(redacted)") && text.contains("10.42.2.0/24"),
        "{text}"
    );
    assert!(!text.contains(d.key.to_base64().as_str()));
    assert!(text.contains(&d.key.public_key().to_string()));
}

#[test]
fn unknown_key() {
    let d = dir();
    let cfg = write(&d, "listen_prot = 1\n");
    assert_usage_error(&overlayd(&["--config", &cfg]), "listen_prot", &d);
}

#[test]
fn malformed_key() {
    let d = dir();
    let cfg = write(
        &d,
        "[[peer]]\npublic_key = \"abc\"\nsubnets = [\"10.42.2.0/24\"]\n",
    );
    assert_usage_error(&overlayd(&["--config", &cfg]), "not a WireGuard key", &d);
}

#[test]
fn overlapping_subnets() {
    let d = dir();
    let cfg = write(
        &d,
        &format!(
            "{}{}",
            peer("[\"10.42.0.0/16\"]"),
            peer("[\"10.42.3.0/24\"]")
        ),
    );
    assert_usage_error(&overlayd(&["--config", &cfg]), "overlap", &d);
}

#[test]
fn key_file_readable_by_others() {
    let d = dir();
    let cfg = write(&d, "");
    std::fs::set_permissions(
        d.dir.path().join("private.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert_usage_error(&overlayd(&["--config", &cfg]), "chmod 600", &d);
}

#[test]
fn missing_config_file() {
    let d = dir();
    let missing = d.dir.path().join("nope.toml");
    assert_usage_error(
        &overlayd(&["--config", missing.to_str().unwrap()]),
        "cannot read config",
        &d,
    );
}
