//! End-to-end: managing a running host without restarting it (issue 22). Static peers
//! added, changed and removed with `overlayctl peer`, and the config reloaded on SIGHUP and
//! by `overlayctl reload`, while the member tunnels carry traffic. Real daemons, real
//! kernels (root).
//!
//! ```text
//!                        P-ul: br0 (underlay switch)
//!      +-----------------------+-----------------------+
//!      |                       |                       |
//!  P-h1 .11                P-h2 .12                P-h3 .13          198.18.0.x/15
//!  overlayd, admin         overlayd, member        no overlayd: wireguard-go on wgP
//!  (the host managed)                              with h3's key, one peer: h1
//!      |  \___ member tunnel ___/                  (198.18.0.11:51820, 10.42.1.0/24)
//!      |                                               |
//!      +========= static tunnel, once h1 has h3 as a peer (10.42.3.0/24) ====+
//!      |                       |                       |
//!    h1-c1 10.42.1.2         h2-c1 10.42.2.2         h3-c1 10.42.3.2 (behind the stock host)
//! ```
//!
//! h3's own daemon starts (unjoined) and is stopped: its namespace, bridge and container
//! stay, and wireguard-go takes its key and port, so h3 is a stock WireGuard host routing
//! its container subnet, which h1 knows nothing of until it is told.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::stock::{WireguardGo, require_tools, run_in, wait_until};
use common::{Pinger, now_s, pings, root};
use protocol::api::{PeerOrigin, PeerStatus, Status};
use testnet::{LISTEN_PORT, Options, Testnet};

const H3_SUBNET: &str = "10.42.3.0/24";
const H3_C1: &str = "10.42.3.2";
const H2_C1: &str = "10.42.2.2";

/// h1 and h2 members, h3 a stock WireGuard host with h1 as its peer.
fn network() -> (Testnet, WireguardGo) {
    require_tools(&["wireguard-go", "wg"]);
    let mut net = Testnet::up(Options {
        members: Some(2),
        ..Options::new(3, 1)
    })
    .expect("testnet up");
    net.wait_converged(&[1, 2], Duration::from_secs(30))
        .expect("h1 and h2 see each other");
    net.stop_daemon(3).expect("stop h3's overlayd");
    let ns = net.host_ns(3);
    let ifname = format!("wg{}", net.prefix());
    let ifname = ifname[..ifname.len().min(15)].to_owned();
    let wg = WireguardGo::start(&net, &ns, &ifname, "wireguard-go-h3.log");
    let h1_key = net.public_key(1).expect("h1's key").to_string();
    wg.set_peer(
        &net.key_path(3),
        LISTEN_PORT,
        &h1_key,
        ([198, 18, 0, 11], LISTEN_PORT).into(),
        "10.42.1.0/24",
    );
    common::ip(&["-n", &ns, "link", "set", &ifname, "mtu", "1420", "up"]);
    common::ip(&["-n", &ns, "route", "add", "10.42.1.0/24", "dev", &ifname]);
    (net, wg)
}

fn h3_key(net: &Testnet) -> String {
    net.public_key(3).expect("h3's key").to_string()
}

fn peers(net: &Testnet) -> Vec<PeerStatus> {
    let out = net
        .overlayctl_ok(1, &["peers", "--json"])
        .expect("peers --json on h1");
    serde_json::from_slice(&out.stdout).expect("peers --json")
}

fn peer<'a>(peers: &'a [PeerStatus], key: &str) -> Option<&'a PeerStatus> {
    peers.iter().find(|p| p.public_key.to_string() == key)
}

fn status(net: &Testnet) -> Status {
    let out = net
        .overlayctl_ok(1, &["status", "--json"])
        .expect("status --json on h1");
    serde_json::from_slice(&out.stdout).expect("status --json")
}

/// When h1's current session with h2 was made (unix seconds, from its age).
fn h2_handshake(net: &Testnet) -> f64 {
    let peers = peers(net);
    let h2 = peers
        .iter()
        .find(|p| p.name.as_deref() == Some("h2"))
        .expect("h1 lists h2");
    now_s() - h2.last_handshake_s.expect("h1 has a session with h2")
}

fn assert_same_handshake(net: &Testnet, before: f64, when: &str) {
    let now = h2_handshake(net);
    eprintln!("{when}: session with h2 made at {before:.2}, now {now:.2}");
    if (now - before).abs() >= 1.0 {
        let log = std::fs::read_to_string(net.log_path(1)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(25).collect();
        panic!(
            "{when}: h1's session with h2 was made again ({before:.1} then {now:.1}); h1's log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

/// `overlayctl` on h1 that must fail: its one line of error.
fn refused(net: &Testnet, args: &[&str]) -> String {
    let out = net.overlayctl(1, args).expect("run overlayctl");
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    err
}

/// `ping -i 0.05` in the background, counting what it sent and got back.
struct LossPinger {
    child: Child,
}

impl LossPinger {
    fn start(net: &Testnet, from: &str, to: &str) -> LossPinger {
        let child = net
            .spawn(from, &["ping", "-n", "-q", "-i", "0.05", "-W", "1", to])
            .expect("start ping");
        LossPinger { child }
    }

    /// Stops it (SIGINT, after the replies in flight had time to come) and returns
    /// (sent, received).
    fn finish(mut self) -> (u64, u64) {
        std::thread::sleep(Duration::from_millis(1200));
        // SAFETY: kill(2) on the pid of our own child (`ip netns exec` execs ping).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let out = std::mem::replace(
            &mut self.child,
            std::process::Command::new("true").spawn().expect("true"),
        )
        .wait_with_output()
        .expect("ping's summary");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no summary from ping: {text}"));
        let number = |word: &str| -> u64 {
            line.split(',')
                .find(|part| part.contains(word))
                .and_then(|part| part.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {word} in {line:?}"))
        };
        (number("transmitted"), number("received"))
    }
}

impl Drop for LossPinger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sighup(net: &Testnet) {
    let pid = net.daemon_pid(1).expect("h1's daemon runs");
    // SAFETY: kill(2) on the pid of a daemon this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
}

/// The `[[peer]]` section of the stock host h3 in h1's config.
fn h3_section(net: &Testnet, keepalive: u16) -> String {
    format!(
        "\n[[peer]]\npublic_key = \"{}\"\nendpoint = \"198.18.0.13:{LISTEN_PORT}\"\nsubnets = [\"{H3_SUBNET}\"]\npersistent_keepalive = {keepalive}\n",
        h3_key(net)
    )
}

#[test]
fn static_peers_from_the_cli_without_a_restart() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let started = Instant::now();
    let (mut net, wg) = network();
    eprintln!("network up in {:.1} s", started.elapsed().as_secs_f64());
    let phase = Instant::now();
    let pid = net.daemon_pid(1).expect("h1 runs");
    let h2_session = h2_handshake(&net);
    let h3 = h3_key(&net);
    let h2_key = net.public_key(2).expect("h2's key").to_string();
    let h1_key = net.public_key(1).expect("h1's key").to_string();
    let stranger = keys::PrivateKey::generate().public_key().to_string();

    // Refused, one line each, nothing changed: a member's key, a member's subnet, this
    // host's own key, a keepalive of 0.
    let e = refused(&net, &["peer", "add", &h2_key, "--subnets", "10.42.9.0/24"]);
    assert!(e.contains("is the WireGuard key of member h2"), "{e}");
    let e = refused(
        &net,
        &["peer", "add", &stranger, "--subnets", "10.42.2.128/25"],
    );
    assert!(
        e.contains("cannot have subnet 10.42.2.128/25: it overlaps subnet 10.42.2.0/24 of peer h2"),
        "{e}"
    );
    let e = refused(&net, &["peer", "add", &h1_key, "--subnets", "10.42.9.0/24"]);
    assert!(e.contains("this host's own public key"), "{e}");
    let e = refused(
        &net,
        &["peer", "add", &stranger, "--subnets", "10.42.1.128/25"],
    );
    assert!(
        e.contains("cannot have subnet 10.42.1.128/25: it overlaps 10.42.1.0/24 of this host"),
        "{e}"
    );
    let e = refused(&net, &["peer", "remove", &stranger]);
    assert!(e.contains("no peer"), "{e}");
    assert_eq!(peers(&net).len(), 1, "only h2 after the refusals");

    // Added: h3's container answers within 2 s.
    let mut pinger = Pinger::start(&net, "h1-c1", H3_C1);
    let t0 = now_s();
    let out = net
        .overlayctl_ok(
            1,
            &[
                "peer",
                "add",
                &h3,
                "--endpoint",
                &format!("198.18.0.13:{LISTEN_PORT}"),
                "--subnets",
                H3_SUBNET,
                "--name",
                "stock-h3",
            ],
        )
        .expect("peer add");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("added (kept in"), "{said}");
    let reply = pinger
        .first_reply_after(t0, Instant::now() + Duration::from_secs(3))
        .expect("h1-c1 gets no answer from the stock host's container after peer add");
    eprintln!(
        "peer add: first reply {:.2} s after the command",
        reply - t0
    );
    assert!(
        reply - t0 <= 2.0,
        "the first reply came {:.2} s after peer add",
        reply - t0
    );
    assert_eq!(net.daemon_pid(1), Some(pid), "overlayd was restarted");
    assert_same_handshake(&net, h2_session, "after peer add");
    let listed = peers(&net);
    let p = peer(&listed, &h3).expect("peers lists the stock host");
    assert_eq!(p.origin, Some(PeerOrigin::Cli));
    assert_eq!(p.name.as_deref(), Some("stock-h3"));
    assert_eq!(p.subnets, [H3_SUBNET.parse().unwrap()]);

    // Changed: a keepalive, on the tunnel as it is (no new handshake from wireguard-go's side).
    let h1_seen_by_wg = wg.latest_handshake(&h1_key);
    assert_ne!(h1_seen_by_wg, 0, "wireguard-go has a session with h1");
    let out = net
        .overlayctl_ok(1, &["peer", "set", &h3, "--keepalive", "5"])
        .expect("peer set");
    assert!(String::from_utf8_lossy(&out.stdout).contains("updated"));
    assert_eq!(
        peer(&peers(&net), &h3).and_then(|p| p.persistent_keepalive),
        Some(5)
    );
    let e = refused(&net, &["peer", "set", &h3, "--subnets", "10.42.2.0/24"]);
    assert!(e.contains("overlaps subnet 10.42.2.0/24 of peer h2"), "{e}");
    assert!(pings(&net, "h1-c1", H3_C1), "no ping after peer set");
    assert_eq!(
        wg.latest_handshake(&h1_key),
        h1_seen_by_wg,
        "peer set made a handshake"
    );

    // Kept in the state directory and shown by --check-config.
    let config = net.config_path(1).display().to_string();
    let check = net
        .exec("h1", &["overlayd", "--config", &config, "--check-config"])
        .expect("overlayd --check-config");
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{printed}");
    assert!(
        printed.contains(&format!("# public_key = \"{h3}\""))
            && printed.contains("# persistent_keepalive = 5"),
        "--check-config does not show the added peer:\n{printed}"
    );
    eprintln!("add, set, checks: {:.1} s", phase.elapsed().as_secs_f64());

    // A restart keeps it.
    let phase = Instant::now();
    drop(pinger);
    net.restart_daemon(1).expect("restart h1");
    net.wait_converged(&[1, 2], Duration::from_secs(30))
        .expect("h1 and h2 again");
    assert!(
        pings(&net, "h1-c1", H3_C1),
        "the added peer is gone after a restart"
    );
    let p = peer(&peers(&net), &h3)
        .cloned()
        .expect("still listed after the restart");
    assert_eq!(p.origin, Some(PeerOrigin::Cli));
    assert_eq!(p.persistent_keepalive, Some(5));
    eprintln!("restart kept it: {:.1} s", phase.elapsed().as_secs_f64());

    // Removed: cut within 1 s.
    let phase = Instant::now();
    let pid = net.daemon_pid(1).expect("h1 runs");
    let h2_session = h2_handshake(&net);
    let mut pinger = Pinger::start(&net, "h1-c1", H3_C1);
    assert!(
        pinger
            .first_reply_after(now_s(), Instant::now() + Duration::from_secs(5))
            .is_some(),
        "no replies before the removal"
    );
    let t_remove = now_s();
    net.overlayctl_ok(1, &["peer", "remove", &h3])
        .expect("peer remove");
    std::thread::sleep(Duration::from_millis(2500));
    let last_after = {
        let mut last = None;
        let mut t = t_remove;
        while let Some(r) = pinger.first_reply_after(t, Instant::now()) {
            last = Some(r);
            t = r;
        }
        last
    };
    if let Some(last) = last_after {
        assert!(
            last - t_remove <= 1.0,
            "a reply came {:.2} s after peer remove",
            last - t_remove
        );
    }
    assert!(
        !pinger.replied_between(t_remove + 1.0, now_s()),
        "replies went on after peer remove"
    );
    assert!(
        peer(&peers(&net), &h3).is_none(),
        "still listed after peer remove"
    );
    assert_eq!(net.daemon_pid(1), Some(pid));
    assert_same_handshake(&net, h2_session, "after peer remove");
    let file = std::fs::read_to_string(net.state_dir(1).join("peers.json")).expect("peers.json");
    assert!(
        !file.contains(&h3),
        "peers.json keeps the removed peer: {file}"
    );
    eprintln!(
        "remove: {:.1} s; whole test {:.1} s",
        phase.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop(pinger);
    drop(wg);
}

#[test]
fn sighup_reloads_without_a_restart() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let started = Instant::now();
    let (net, wg) = network();
    eprintln!("network up in {:.1} s", started.elapsed().as_secs_f64());
    let phase = Instant::now();
    let pid = net.daemon_pid(1).expect("h1 runs");
    let h2_session = h2_handshake(&net);
    let h3 = h3_key(&net);
    let h1_key = net.public_key(1).expect("h1's key").to_string();
    let config_path = net.config_path(1);
    let base = std::fs::read_to_string(&config_path).expect("h1's config");
    let before = status(&net)
        .config
        .expect("status shows the config in force");
    assert_eq!(before.path, config_path.display().to_string());
    let to_h2 = LossPinger::start(&net, "h1-c1", H2_C1);

    assert_same_handshake(&net, h2_session, "at the start");
    // A new static peer by SIGHUP: h3 reachable.
    std::fs::write(&config_path, format!("{base}{}", h3_section(&net, 25))).expect("write");
    sighup(&net);
    assert!(
        wait_until(Duration::from_secs(5), || peer(&peers(&net), &h3)
            .is_some_and(|p| p.origin == Some(PeerOrigin::Config))),
        "h1 did not take the [[peer]] of its config on SIGHUP"
    );
    assert!(
        pings(&net, "h1-c1", H3_C1),
        "no ping to the new static peer's container"
    );
    let to_h3 = LossPinger::start(&net, "h1-c1", H3_C1);
    std::thread::sleep(Duration::from_secs(1));
    let h3_session = wg.latest_handshake(&h1_key);

    assert_same_handshake(&net, h2_session, "after the first SIGHUP");
    // A changed keepalive and another new static peer, under traffic both ways; metrics
    // and the flow log turned on.
    let other = keys::PrivateKey::generate().public_key().to_string();
    assert!(
        !base.contains("[metrics]") && !base.contains("[flows]"),
        "{base}"
    );
    assert_eq!(
        net.overlayctl(1, &["flows"]).expect("flows").status.code(),
        Some(1),
        "the flow log is on before the reload"
    );
    let changed = format!(
        "{base}{}\n[[peer]]\npublic_key = \"{other}\"\nendpoint = \"198.18.0.99:{LISTEN_PORT}\"\nsubnets = [\"10.42.9.0/24\"]\n\n[metrics]\nlisten = \"127.0.0.1:9599\"\n\n[flows]\nenabled = true\nwindow_s = 1\n",
        h3_section(&net, 5)
    );
    std::fs::write(&config_path, &changed).expect("write");
    sighup(&net);
    assert!(
        wait_until(Duration::from_secs(5), || {
            let listed = peers(&net);
            peer(&listed, &h3).and_then(|p| p.persistent_keepalive) == Some(5)
                && peer(&listed, &other).is_some()
        }),
        "h1 did not take the new keepalive and peer on SIGHUP"
    );
    let metrics = net
        .scrape_metrics(1, ([127, 0, 0, 1], 9599).into())
        .expect("h1 serves the metrics the reload turned on");
    assert!(metrics.contains("overlay_peer_"), "{metrics}");
    assert!(
        wait_until(Duration::from_secs(5), || net
            .overlayctl(1, &["flows", "--json"])
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())),
        "no flows after the reload turned the flow log on"
    );
    assert_same_handshake(&net, h2_session, "after the second SIGHUP");
    let applied = status(&net).config.expect("config in force");
    assert_ne!(applied.sha256, before.sha256);
    let last = applied.last_reload.clone().expect("a reload");
    assert!(last.applied, "{last:?}");
    assert!(
        last.changed
            .iter()
            .any(|l| l.contains("persistent_keepalive 25 -> 5"))
            && last
                .changed
                .iter()
                .any(|l| l == &format!("peer {other} added")),
        "{last:?}"
    );
    eprintln!(
        "two SIGHUPs applied: {:.1} s",
        phase.elapsed().as_secs_f64()
    );

    // A broken config: the same error as at start, in the log; everything keeps working.
    let phase = Instant::now();
    let broken = changed.replacen(
        &format!("listen_port = {LISTEN_PORT}\n"),
        "listen_port = 0\n",
        1,
    );
    assert_ne!(broken, changed, "no top-level listen_port in h1's config");
    std::fs::write(&config_path, &broken).expect("write");
    let check = net
        .exec(
            "h1",
            &[
                "overlayd",
                "--config",
                &config_path.display().to_string(),
                "--check-config",
            ],
        )
        .expect("overlayd --check-config");
    assert_eq!(check.status.code(), Some(2));
    let error = String::from_utf8_lossy(&check.stderr).trim().to_owned();
    let error = error
        .strip_prefix("overlayd: ")
        .unwrap_or(&error)
        .to_owned();
    assert!(error.contains("listen_port 0 is not allowed"), "{error}");
    sighup(&net);
    let log_path = net.log_path(1);
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(
            &log_path
        )
        .is_ok_and(
            |log| log.contains("config reload refused") && log.contains(&error)
        )),
        "h1's log does not have the refusal with {error:?}"
    );
    let refused_status = status(&net);
    let shown = refused_status.config.expect("config in force");
    assert_eq!(shown.sha256, applied.sha256, "the config in force changed");
    let last = shown.last_reload.expect("a reload");
    assert!(!last.applied);
    assert_eq!(last.error.as_deref(), Some(error.as_str()));
    assert_eq!(refused_status.listen_port, LISTEN_PORT);
    let text = net.overlayctl_ok(1, &["status"]).expect("status").stdout;
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains(&format!("config:       {}", config_path.display())),
        "{text}"
    );
    assert!(text.contains("last reload:  refused"), "{text}");
    assert!(pings(&net, "h1-c1", H3_C1) && pings(&net, "h1-c1", H2_C1));

    // A changed listen port: named as needing a restart, nothing else changes.
    let moved = changed.replacen(
        &format!("listen_port = {LISTEN_PORT}\n"),
        "listen_port = 51830\n",
        1,
    );
    std::fs::write(&config_path, &moved).expect("write");
    let out = net
        .overlayctl_ok(1, &["reload"])
        .expect("overlayctl reload");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("not changed: listen_port 51820 -> 51830 needs a restart"),
        "{said}"
    );
    assert!(
        !said.contains("changed: ") || said.lines().all(|l| !l.starts_with("changed: ")),
        "{said}"
    );
    let after = status(&net);
    assert_eq!(after.listen_port, LISTEN_PORT);
    let shown = after.config.expect("config in force");
    assert_eq!(
        shown.restart_required.len(),
        1,
        "{:?}",
        shown.restart_required
    );
    assert!(shown.last_reload.expect("reload").changed.is_empty());
    let listed = peers(&net);
    assert_eq!(
        peer(&listed, &h3).and_then(|p| p.persistent_keepalive),
        Some(5)
    );
    assert!(peer(&listed, &other).is_some());
    assert_eq!(
        run_in(&net.host_ns(1), &["ss", "-Hunl", "sport = :51830"]).trim(),
        "",
        "something listens on the new port"
    );
    std::fs::write(&config_path, &changed).expect("write back");
    eprintln!(
        "refused and restart-only reloads: {:.1} s",
        phase.elapsed().as_secs_f64()
    );

    // Nothing was lost, nothing handshook again, the daemon is the same.
    let (sent, got) = to_h2.finish();
    eprintln!("h1-c1 -> h2-c1 every 50 ms: {got}/{sent}");
    assert!(sent > 20, "ping sent {sent}");
    assert_eq!(sent, got, "pings to h2-c1 were lost across the reloads");
    let (sent, got) = to_h3.finish();
    eprintln!("h1-c1 -> h3-c1 every 50 ms: {got}/{sent}");
    assert_eq!(sent, got, "pings to h3-c1 were lost across the reloads");
    assert_eq!(
        wg.latest_handshake(&h1_key),
        h3_session,
        "the static tunnel handshook again"
    );
    assert_same_handshake(&net, h2_session, "after the reloads");
    assert_eq!(net.daemon_pid(1), Some(pid), "overlayd was restarted");
    eprintln!("whole test {:.1} s", started.elapsed().as_secs_f64());
    drop(wg);
}
