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

/// The static peers added with `overlayctl` (`state_dir/peers.json`) are checked with the
/// file's at start and shown by `--check-config`; a key in both, or a peer that breaks the
/// config's rules, is one line and exit code 2.
#[test]
fn peers_added_with_overlayctl_are_checked_and_shown() {
    let d = dir();
    let state = d.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let key = keys::PrivateKey::generate().public_key();
    let peers = |subnet: &str| {
        format!(
            "{{\"peers\": [{{\"public_key\": \"{key}\", \"endpoint\": \"198.18.0.13:51820\", \"subnets\": [\"{subnet}\"], \"persistent_keepalive\": 5}}]}}"
        )
    };
    std::fs::write(state.join("peers.json"), peers("10.42.3.0/24")).unwrap();
    let state_line = format!("state_dir = {:?}\n", state.display().to_string());
    let config = write(&d, &format!("{state_line}subnets = [\"10.42.1.0/24\"]\n"));
    let out = overlayd(&["--config", &config, "--check-config"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains(&format!("# public_key = \"{key}\""))
            && printed.contains("# subnets = [\"10.42.3.0/24\"]")
            && printed.contains("# persistent_keepalive = 5"),
        "{printed}"
    );
    // The same key as a [[peer]] of the file.
    let both = write(
        &d,
        &format!(
            "{state_line}subnets = [\"10.42.1.0/24\"]\n[[peer]]\npublic_key = \"{key}\"\nsubnets = [\"10.42.4.0/24\"]\n"
        ),
    );
    assert_usage_error(
        &overlayd(&["--config", &both, "--check-config"]),
        "is a [[peer]] of this file and also one added with overlayctl",
        &d,
    );
    // A peer of the file's rules broken by the state's: an overlap with this host.
    let config = write(&d, &format!("{state_line}subnets = [\"10.42.1.0/24\"]\n"));
    std::fs::write(state.join("peers.json"), peers("10.42.1.128/25")).unwrap();
    assert_usage_error(
        &overlayd(&["--config", &config, "--check-config"]),
        "subnets overlap: 10.42.1.0/24 (this host) and 10.42.1.128/25",
        &d,
    );
    std::fs::write(state.join("peers.json"), "{\"peers\": 7}").unwrap();
    assert_usage_error(
        &overlayd(&["--config", &config, "--check-config"]),
        "peers.json: damaged or edited by hand",
        &d,
    );
}
