//! Daemon management (start, ready, stop, kill, restart, failure reports) with a stand-in
//! for `overlayd`: a shell script that listens on the config's `api_socket` with `nc -lkU`,
//! so these tests run before the real daemon exists; and, for gossip mode, a stand-in
//! `overlayctl` that logs the commands `Testnet` runs (init, token create, join).
//!
//! ```text
//!          P-ul: br0
//!        +----h1--------h2----+
//!             |         |
//!   P-h1 ul0 198.18.0.11   P-h2 ul0 198.18.0.12
//!        fake overlayd          fake overlayd
//!        (hI/overlayd.sock)     (no containers)
//! ```

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::root;
use testnet::{Options, Testnet};

/// A script in a directory removed on drop.
struct FakeDaemon {
    dir: PathBuf,
    path: PathBuf,
}

impl FakeDaemon {
    fn new(name: &str, body: &str) -> FakeDaemon {
        let dir = std::env::temp_dir().join(format!("testnet-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("overlayd");
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        FakeDaemon { dir, path }
    }

    /// Listens on the API socket named in the config (`$2`) until killed.
    fn listening(name: &str, before: &str) -> FakeDaemon {
        FakeDaemon::new(
            name,
            &format!(
                "sock=$(sed -n 's/^api_socket = \"\\(.*\\)\"$/\\1/p' \"$2\")\n\
                 echo \"fake overlayd on $sock\"\n{before}\nexec nc -lkU \"$sock\""
            ),
        )
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn have_nc() -> bool {
    let found = Command::new("sh")
        .args(["-c", "command -v nc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: needs nc (OpenBSD netcat) for the fake daemon");
    }
    found
}

fn pids_in(netns: &str) -> Vec<u32> {
    let out = Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Static mode: the fake daemon cannot form a gossiped network.
fn options(fake: &Path) -> Options {
    let mut opts = Options::static_mode(2, 0);
    opts.overlayd = Some(fake.to_owned());
    opts
}

#[test]
fn start_kill_restart_stop() {
    if !root() || !have_nc() {
        return;
    }
    let fake = FakeDaemon::listening("good", "");
    let mut net = Testnet::up(options(&fake.path)).expect("up");
    for i in 1..=2 {
        let pid = net.daemon_pid(i).expect("daemon started");
        assert!(net.daemon_alive(i));
        // The recorded PID is the daemon itself, inside the host's namespace.
        assert_eq!(pids_in(&net.host_ns(i)), vec![pid]);
        assert!(net.socket_path(i).exists());
        let log = fs::read_to_string(net.log_path(i)).unwrap();
        assert!(
            log.contains(&net.socket_path(i).display().to_string()),
            "{log}"
        );
    }

    // A crash, then a restart with the same config.
    net.kill_daemon(1).unwrap();
    assert!(!net.daemon_alive(1));
    assert_eq!(net.daemon_pid(1), None);
    assert!(net.kill_daemon(1).is_err(), "nothing left to kill");
    net.start_daemon(1).unwrap();
    assert!(net.daemon_alive(1));
    assert!(net.start_daemon(1).is_err(), "already runs");
    let before = net.daemon_pid(2).unwrap();
    net.restart_daemon(2).unwrap();
    assert_ne!(net.daemon_pid(2), Some(before));

    net.stop_daemon(2).unwrap();
    assert!(!net.daemon_alive(2));
    assert!(pids_in(&net.host_ns(2)).is_empty());
    net.stop_daemon(2).unwrap();

    let prefix = net.prefix().to_owned();
    net.down().unwrap();
    assert!(common::namespaces_of(&prefix).is_empty());
}

#[test]
fn a_daemon_that_exits_is_reported_with_its_log() {
    if !root() {
        return;
    }
    let fake = FakeDaemon::new("exits", "echo 'config is bad: boom' >&2\nexit 3");
    let prefix = common::prefix('e');
    let mut opts = options(&fake.path);
    opts.prefix = Some(prefix.clone());
    let err = Testnet::up(opts).err().expect("up must fail");
    let message = format!("{err:#}");
    assert!(message.contains("exited before it was ready"), "{message}");
    assert!(message.contains("config is bad: boom"), "{message}");
    assert!(common::namespaces_of(&prefix).is_empty());
}

#[test]
fn a_daemon_that_ignores_sigterm_gets_sigkill() {
    if !root() || !have_nc() {
        return;
    }
    // Ignored signals stay ignored across exec.
    let fake = FakeDaemon::listening("stubborn", "trap '' TERM");
    let mut opts = options(&fake.path);
    opts.hosts = 1;
    let mut net = Testnet::up(opts).expect("up");
    let started = std::time::Instant::now();
    net.stop_daemon(1).unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_secs(4));
    assert!(!net.daemon_alive(1));
    net.down().unwrap();
}

#[test]
fn configs_can_be_changed_before_start() {
    if !root() || !have_nc() {
        return;
    }
    let fake = FakeDaemon::listening("configs", "");
    let mut opts = options(&fake.path);
    opts.hosts = 3;
    opts.offload = Some(false);
    opts.persistent_keepalive = Some(25);
    // Host 3's key is known to nobody.
    opts.configure = Some(Box::new(|i, cfg| {
        cfg.peers.retain(|p| p.host != 3);
        if i == 1 {
            cfg.extra.push("# host one".to_owned());
        }
    }));
    let mut net = Testnet::up(opts).expect("up");
    let h1 = fs::read_to_string(net.config_path(1)).unwrap();
    assert!(h1.contains("offload = false\n# host one\n"), "{h1}");
    assert!(h1.contains("persistent_keepalive = 25"), "{h1}");
    assert!(!h1.contains(&net.public_key(3).unwrap().to_string()));
    assert_eq!(h1.matches("[[peer]]").count(), 1);
    let h3 = fs::read_to_string(net.config_path(3)).unwrap();
    assert_eq!(h3.matches("[[peer]]").count(), 2);

    // Rewrite a config and restart: the daemon reads the new file.
    let mut cfg = net.default_config(2).unwrap();
    cfg.listen_port = 51821;
    net.write_config(2, &cfg).unwrap();
    net.restart_daemon(2).unwrap();
    let h2 = fs::read_to_string(net.config_path(2)).unwrap();
    assert!(h2.contains("listen_port = 51821"));
    net.down().unwrap();
}

#[test]
fn overlayctl_runs_in_the_host_namespace_with_its_socket() {
    if !root() {
        return;
    }
    let fake = FakeDaemon::new("ctl", "echo \"args: $*\"\nip -o -4 addr show ul0");
    let mut opts = Options::new(2, 0);
    opts.start_daemons = false;
    opts.overlayctl = Some(fake.path.clone());
    let net = Testnet::up(opts).expect("up");
    let out = net.overlayctl(2, &["peers", "--json"]).unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let socket = net.socket_path(2).display().to_string();
    assert!(
        text.contains(&format!("args: --socket {socket} peers --json")),
        "{text}"
    );
    assert!(text.contains("198.18.0.12/15"), "{text}");
    // `exec` in a host gives the host's API socket in the environment.
    let out = net
        .exec("h1", &["sh", "-c", "echo $OVERLAYD_SOCKET"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&net.socket_path(1).display().to_string()),
        "{text}"
    );
    net.down().unwrap();
}

#[test]
fn gossip_mode_forms_the_network_with_overlayctl_as_an_operator_would() {
    if !root() || !have_nc() {
        return;
    }
    let fake = FakeDaemon::listening("gossip", "");
    // A fake overlayctl: logs its arguments, prints a token, lists h2 alive.
    let key = keys::PrivateKey::generate().public_key().to_string();
    let calls = fake.dir.join("calls");
    let peers = format!(
        r#"[{{"name":"h2","state":"alive","public_key":"{key}","endpoint":null,"subnets":["10.42.2.0/24"],"last_handshake_s":null,"rx_bytes":0,"tx_bytes":0,"persistent_keepalive":null,"drops":{{}}}}]"#
    );
    let ctl = fake.dir.join("overlayctl");
    fs::write(
        &ctl,
        format!(
            "#!/bin/sh\necho \"$*\" >>'{}'\ncase \"$3\" in\n  token) echo ovljoin1.fake ;;\n  peers) echo '{peers}' ;;\nesac\n",
            calls.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&ctl, fs::Permissions::from_mode(0o755)).unwrap();
    let mut opts = Options::new(2, 0);
    opts.overlayd = Some(fake.path.clone());
    opts.overlayctl = Some(ctl);
    // Only h1 is made a member by `up` (one member converges at once); h2 joins below.
    opts.members = Some(1);
    let net = Testnet::up(opts).expect("up");
    net.join_host(2).expect("join h2");
    let log = fs::read_to_string(&calls).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let (s1, s2) = (
        net.socket_path(1).display().to_string(),
        net.socket_path(2).display().to_string(),
    );
    assert_eq!(
        lines,
        [
            format!(
                "--socket {s1} init --network testnet --cidr 10.42.0.0/16 --name h1 --subnet 10.42.1.0/24"
            ),
            format!("--socket {s1} token create --ttl 10m"),
            format!("--socket {s2} join ovljoin1.fake --name h2 --subnet 10.42.2.0/24"),
        ]
    );
    assert_eq!(
        net.member_state(1, 2).unwrap(),
        Some(testnet::MemberState::Alive)
    );
    assert_eq!(net.member_state(1, 3).unwrap(), None);
    assert!(
        net.wait_member_state(1, 2, testnet::MemberState::Down, std::time::Duration::ZERO)
            .unwrap_err()
            .to_string()
            .contains("h1 does not see h2 down after")
    );
    net.down().unwrap();
}
