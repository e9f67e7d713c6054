//! Helpers shared by testnet's own tests: the root check, polling pings, listing namespaces.
//! Tests wait by polling with a deadline, never with fixed sleeps.
#![allow(dead_code)] // each test file uses a different subset

use std::process::Command;
use std::time::{Duration, Instant};

use testnet::Testnet;

pub mod docker;
pub mod forge;
pub mod stock;

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

/// Moves the calling thread into network namespace `netns` (`/run/netns/NAME`): every
/// socket it opens from then on lives there. Only this thread changes namespace; call it
/// on a thread of its own.
pub fn enter_netns(netns: &str) {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{netns}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns(2) on a namespace file we hold open; it changes only this thread.
    let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        entered,
        0,
        "cannot enter {path}: {}",
        std::io::Error::last_os_error()
    );
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

/// Wall-clock time in unix seconds (what `ping -D` stamps replies with).
pub fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// A `ping -D -i 0.1` running in the background from one namespace to an address, whose
/// replies are collected as they come (by a reader thread), so that a test can ask when
/// traffic first got through after some instant. Killed on drop.
pub struct Pinger {
    /// Where it pings from (`hI-cJ` or `hI`).
    pub from: String,
    /// The address it pings.
    pub to: String,
    child: std::process::Child,
    rx: std::sync::mpsc::Receiver<f64>,
    replies: Vec<f64>,
}

impl Pinger {
    /// Starts pinging `to` from `from` every 100 ms until dropped.
    pub fn start(net: &Testnet, from: &str, to: &str) -> Pinger {
        use std::io::BufRead;
        // stdbuf: a line per reply as it comes, not a pipe buffer's worth at exit
        let mut child = net
            .spawn(
                from,
                &[
                    "stdbuf", "-oL", "ping", "-D", "-n", "-i", "0.1", "-W", "1", to,
                ],
            )
            .expect("start ping");
        let stdout = child.stdout.take().expect("ping stdout");
        let stderr = child.stderr.take().expect("ping stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if !line.contains("bytes from") {
                    continue;
                }
                let stamp = line
                    .strip_prefix('[')
                    .and_then(|l| l.split(']').next())
                    .and_then(|t| t.parse().ok());
                if let Some(t) = stamp
                    && tx.send(t).is_err()
                {
                    break;
                }
            }
        });
        // Errors ("Network is unreachable") are not needed; drain them so ping never blocks.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::BufReader::new(stderr), &mut std::io::sink());
        });
        Pinger {
            from: from.to_owned(),
            to: to.to_owned(),
            child,
            rx,
            replies: Vec::new(),
        }
    }

    /// The stamp (unix seconds) of the first reply after `after`, waiting for it until
    /// `deadline`; `None` if none came.
    pub fn first_reply_after(&mut self, after: f64, deadline: Instant) -> Option<f64> {
        loop {
            self.replies.extend(self.rx.try_iter());
            if let Some(t) = self.replies.iter().copied().find(|t| *t > after) {
                return Some(t);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.rx.recv_timeout(left) {
                Ok(t) => self.replies.push(t),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return None,
                // ping has exited: nothing more will come
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return self.replies.iter().copied().find(|t| *t > after);
                }
            }
        }
    }

    /// Whether any reply is stamped in `from..to` (unix seconds), as seen so far.
    pub fn replied_between(&mut self, from: f64, to: f64) -> bool {
        self.replies.extend(self.rx.try_iter());
        self.replies.iter().any(|t| *t >= from && *t < to)
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `tcpdump` writing every packet of one interface of a namespace to a pcap file until it
/// is stopped; then [`Capture::count`] counts the packets a filter matches. Killed on drop.
pub struct Capture {
    child: Option<std::process::Child>,
    path: std::path::PathBuf,
}

impl Capture {
    /// Starts capturing on `iface` (`any` for all) of `name` (`hI`, `nI`, `ul`) into a file
    /// in the run's directory, and returns once tcpdump listens.
    pub fn start(net: &Testnet, name: &str, iface: &str) -> Capture {
        use std::io::BufRead;
        let path = net.run_dir().join(format!("capture-{name}-{iface}.pcap"));
        let path_arg = path.to_string_lossy().into_owned();
        let mut child = net
            .spawn(
                name,
                &[
                    "tcpdump",
                    "--immediate-mode",
                    "-i",
                    iface,
                    "-U",
                    "-n",
                    "-s",
                    "256",
                    "-w",
                    &path_arg,
                ],
            )
            .expect("start tcpdump");
        let stderr = child.stderr.take().expect("tcpdump stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut capture = Capture {
            child: Some(child),
            path,
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => return capture,
                Ok(_) => {}
                Err(_) => {
                    capture.kill();
                    panic!("tcpdump did not start listening on {name} {iface}");
                }
            }
        }
    }

    /// Stops the capture (SIGINT, so tcpdump flushes its file).
    pub fn stop(&mut self) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on the PID of the tcpdump this capture started.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The packets of the (stopped) capture that `filter` (tcpdump's syntax) matches, one
    /// line each.
    pub fn lines(&self, filter: &str) -> Vec<String> {
        let out = Command::new("tcpdump")
            .args(["-r"])
            .arg(&self.path)
            .args(["-n", "-q", filter])
            .output()
            .expect("run tcpdump -r");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// How many packets of the (stopped) capture `filter` matches.
    pub fn count(&self, filter: &str) -> usize {
        self.lines(filter).len()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
    }
}
