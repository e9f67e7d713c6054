//! The daemon's life in a namespace of its own (root): it comes up with a root-only API
//! socket and its routes, refuses a second copy on the same socket, and on SIGTERM removes
//! its routes, its TUN and its socket and exits 0. Skipped (with a message) when not root.
//!
//! ```text
//!   namespace ovl-lc-PID:  lo up; overlayd: ovl0 10.42.1.1/32, route 10.42.2.0/24 -> ovl0
//! ```

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_ns(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_removes_what_it_made_and_exits_zero() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (network namespaces, TUN)");
        return;
    }
    let ns = Netns(format!("ovl-lc-{}", std::process::id()));
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .unwrap()
            .success()
    );
    in_ns(&ns.0, &["ip", "link", "set", "lo", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let key = keys::PrivateKey::generate();
    keys::write_private_key_file(&dir.path().join("k"), &key).unwrap();
    let sock = dir.path().join("api/overlayd.sock");
    let config = dir.path().join("overlayd.toml");
    std::fs::write(
        &config,
        format!(
            "private_key_file = \"k\"\nlisten_port = 51999\naddress = \"10.42.1.1\"\nsubnets = [\"10.42.1.0/24\"]\napi_socket = {:?}\n\n[[peer]]\npublic_key = \"{}\"\nendpoint = \"198.18.0.2:51820\"\nsubnets = [\"10.42.2.0/24\"]\n",
            sock.display().to_string(),
            keys::PrivateKey::generate().public_key()
        ),
    )
    .unwrap();
    let start = || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                env!("CARGO_BIN_EXE_overlayd"),
                "--config",
            ])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut daemon = Daemon(start());
    wait_until("the API socket", || sock.exists());
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "API socket must be root-only"
    );
    assert_eq!(meta.uid(), 0);
    let route = in_ns(&ns.0, &["ip", "route", "show", "10.42.2.0/24"]);
    assert!(String::from_utf8_lossy(&route.stdout).contains("dev ovl0"));

    // A second daemon on the same socket is refused with one line, and harms nothing.
    let second = start().wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains("another overlayd"), "{err}");
    assert!(sock.exists());

    // SAFETY: kill(2) on our own child's PID (ip netns exec execs overlayd).
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let status = daemon.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let link = in_ns(&ns.0, &["ip", "link", "show", "ovl0"]);
    assert!(!link.status.success(), "ovl0 is left");
    let route = in_ns(&ns.0, &["ip", "route", "show", "10.42.2.0/24"]);
    assert!(route.stdout.is_empty(), "route left");
    assert!(!sock.exists(), "API socket left");

    // Started again, it comes up again.
    let _again = Daemon(start());
    wait_until("the API socket after restart", || sock.exists());
}
