//! Helpers shared by testnet's own tests: the root check, polling pings, listing namespaces.
//! Tests wait by polling with a deadline, never with fixed sleeps.
#![allow(dead_code)] // each test file uses a different subset

use std::process::Command;
use std::time::{Duration, Instant};

use testnet::Testnet;

/// How long a ping may take to start working (ARP, links coming up).
pub const PING_DEADLINE: Duration = Duration::from_secs(5);

/// Whether the tests can run; prints why not.
pub fn root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: testnet tests need root (network namespaces)");
    }
    root
}

/// A prefix for runs whose name a test must know before `up` (`<letter><pid in hex>`).
pub fn prefix(letter: char) -> String {
    format!("{letter}{:x}", std::process::id())
}

/// Polls `ping -c1 -W1 to` from `from` until it answers or the deadline passes.
pub fn pings(net: &Testnet, from: &str, to: &str) -> bool {
    let deadline = Instant::now() + PING_DEADLINE;
    loop {
        let out = net
            .exec(from, &["ping", "-c1", "-W1", "-q", to])
            .expect("run ping");
        if out.status.success() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// One ping with a 1 s timeout, no retry (for "must not get through" checks).
pub fn pings_once(net: &Testnet, from: &str, to: &str) -> bool {
    net.exec(from, &["ping", "-c1", "-W1", "-q", to])
        .expect("run ping")
        .status
        .success()
}

/// Namespaces on the machine whose name starts with `prefix-`.
pub fn namespaces_of(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect()
}

/// Runs `ip ARGS`, panicking on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces a test made by hand: on drop (also on panic) the processes inside are killed
/// and the namespaces deleted, if still there.
pub struct NetnsGuard(pub Vec<String>);

impl NetnsGuard {
    /// Creates the namespaces.
    pub fn add(names: &[String]) -> NetnsGuard {
        let mut guard = NetnsGuard(Vec::new());
        for name in names {
            ip(&["netns", "add", name]);
            guard.0.push(name.clone());
        }
        guard
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for name in &self.0 {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill(2) on one positive PID inside the test's own namespace.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}
