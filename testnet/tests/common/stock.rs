//! A stock WireGuard host in a namespace of the test: wireguard-go on an interface, set up
//! with `wg` and `ip`, as an attacker or a peer that enforces nothing would be. Shared by
//! the tests that need one (gateway, policy, events); killed on drop.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testnet::Testnet;

/// The MTU of a stock peer's WireGuard interface (testnet's).
pub const WG_MTU: &str = "1420";

/// Runs `f` on a thread that entered network namespace `ns`, and returns what it returns:
/// a socket made there stays in `ns` whichever thread uses it.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns_name = ns.to_owned();
    std::thread::spawn(move || {
        super::enter_netns(&netns_name);
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A UDP socket bound to `bind` in namespace `ns`, non-blocking.
pub fn udp_in(ns: &str, bind: SocketAddr) -> UdpSocket {
    let socket = in_ns(ns, move || {
        UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"))
    });
    socket.set_nonblocking(true).expect("non-blocking socket");
    socket
}

/// Polls `done` every 20 ms until it holds or `limit` has passed; whether it held.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ip netns exec ns args`, panicking unless it succeeds; its stdout.
pub fn run_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {args:?} in {ns}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills and reaps a child of the test.
pub fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Panics naming the package unless every tool is on `PATH`.
pub fn require_tools(tools: &[&str]) {
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is needed (apt-get install wireguard-go wireguard-tools tcpdump nftables; scripts/setup does)"
        );
    }
}

/// wireguard-go on interface `ifname` in namespace `ns`, killed on drop and its UAPI
/// socket removed (it lives in the root file system's /var/run/wireguard whichever
/// namespace runs it).
pub struct WireguardGo {
    child: Option<Child>,
    socket: String,
    /// Its namespace.
    pub ns: String,
    /// Its interface.
    pub ifname: String,
}

impl WireguardGo {
    /// Starts it (log in the run folder as `log_name`) and waits for its UAPI socket; the
    /// interface is down, with no key and no peer.
    pub fn start(net: &Testnet, ns: &str, ifname: &str, log_name: &str) -> WireguardGo {
        let log = std::fs::File::create(net.run_dir().join(log_name)).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "wireguard-go", "-f", ifname])
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start wireguard-go");
        let wg = WireguardGo {
            child: Some(child),
            socket: format!("/var/run/wireguard/{ifname}.sock"),
            ns: ns.to_owned(),
            ifname: ifname.to_owned(),
        };
        assert!(
            wait_until(Duration::from_secs(10), || Path::new(&wg.socket).exists()),
            "wireguard-go did not start (no {})",
            wg.socket
        );
        wg
    }

    /// Gives the interface the private key in `key_file` and UDP port `port`, and (again)
    /// one peer `peer` at `endpoint` with `allowed_ips`. Set again after a removal, the
    /// peer starts afresh: wireguard-go initiates a handshake with the next packet.
    pub fn set_peer(
        &self,
        key_file: &Path,
        port: u16,
        peer: &str,
        endpoint: SocketAddr,
        allowed_ips: &str,
    ) {
        let (key, port, endpoint) = (
            key_file.display().to_string(),
            port.to_string(),
            endpoint.to_string(),
        );
        run_in(
            &self.ns,
            &[
                "wg",
                "set",
                &self.ifname,
                "private-key",
                &key,
                "listen-port",
                &port,
                "peer",
                peer,
                "endpoint",
                &endpoint,
                "allowed-ips",
                allowed_ips,
            ],
        );
    }

    /// Removes peer `peer`.
    pub fn remove_peer(&self, peer: &str) {
        run_in(
            &self.ns,
            &["wg", "set", &self.ifname, "peer", peer, "remove"],
        );
    }

    /// Puts `address` (with its prefix) on the interface, sets the MTU and brings it up.
    pub fn up(&self, address: &str) {
        super::ip(&["-n", &self.ns, "addr", "add", address, "dev", &self.ifname]);
        super::ip(&[
            "-n",
            &self.ns,
            "link",
            "set",
            &self.ifname,
            "mtu",
            WG_MTU,
            "up",
        ]);
    }

    /// Unix seconds of the latest handshake with `peer` (`wg show latest-handshakes`); 0
    /// before the first.
    pub fn latest_handshake(&self, peer: &str) -> u64 {
        run_in(&self.ns, &["wg", "show", &self.ifname, "latest-handshakes"])
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(key, _)| *key == peer)
            .and_then(|(_, t)| t.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            kill(child);
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
