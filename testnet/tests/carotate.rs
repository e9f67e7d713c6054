//! End-to-end: CA rotation (issue 18, part 4).
//!
//! `overlayctl ca rotate` on h1 (the admin) with a transition of `[control]
//! ca_transition_s` seconds (env `CA_TRANSITION_S`, default 25), while h1-c1 pings h2-c1
//! every 50 ms across the whole transition and the retirement after it; h3 is down all that
//! time. Then:
//!
//! - 0 pings lost; h1 and h2 never see each other other than `alive`;
//! - every running member's certificate chains to the new CA (`overlayctl status --json`:
//!   `ca.certificate_ca` is the network's CA, the old one is no longer trusted);
//! - h3, started again with its old-CA certificate, is refused with one clear error telling
//!   to join again, and is not alive for the others;
//! - a token made before the rotation (it pins the old CA) is refused;
//! - after `overlayctl leave` and a join with a new token, h3 is back, pings, and holds a
//!   certificate of the new CA;
//! - a restarted h2 comes back under the new CA (everything is saved).
//!
//! ```text
//!                   P-ul: br0 (underlay switch)
//!      +-------------------+-------------------+
//!      |                   |                   |
//!  P-h1 .11            P-h2 .12            P-h3 .13
//!  admin: ca rotate    member (renews)     member, down during the whole
//!  br0 10.42.1.1       br0 10.42.2.1       transition; joins again
//!   h1-c1 10.42.1.2 -- ping -i 0.05 -->  h2-c1 10.42.2.2
//! ```

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::root;
use testnet::{MemberState, Options, Testnet};

/// The transition, unless env `CA_TRANSITION_S` says otherwise.
const DEFAULT_TRANSITION_S: u64 = 25;

fn membership(net: &Testnet, i: usize) -> protocol::api::Membership {
    net.status_json(i)
        .expect("status")
        .member
        .unwrap_or_else(|| panic!("h{i} is a member"))
}

/// `ping -i 0.05` in the background, counting what it sent and got back; its output goes
/// to a file (one line per reply: a pipe could fill and stall it).
struct LossPinger {
    child: Option<Child>,
    out: std::path::PathBuf,
}

impl LossPinger {
    fn start(net: &Testnet, from: &str, to: &str) -> LossPinger {
        let out = net.run_dir().join(format!("ping-{from}.txt"));
        let file = std::fs::File::create(&out).expect("ping's output file");
        let child = net
            .command(
                from,
                &["ping", "-n", "-D", "-O", "-i", "0.05", "-W", "1", to],
            )
            .expect("ping command")
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start ping");
        LossPinger {
            child: Some(child),
            out,
        }
    }

    /// Stops it (SIGINT, after the replies in flight had time to come) and returns
    /// (sent, received).
    fn finish(mut self) -> (u64, u64) {
        std::thread::sleep(Duration::from_millis(1200));
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on the pid of our own child (`ip netns exec` execs ping).
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        child.wait().expect("ping ends");
        let text = std::fs::read_to_string(&self.out).expect("ping's output");
        // With -O: a line (timestamped, -D) for every request not answered in time.
        for late in text.lines().filter(|l| l.contains("no answer yet")) {
            eprintln!("ping: {late}");
        }
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
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn now_s() -> u64 {
    common::now_s() as u64
}

fn log_tail(net: &Testnet, i: usize, lines: usize) -> String {
    let log = std::fs::read_to_string(net.log_path(i)).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

#[test]
fn ca_rotate_during_traffic_retires_the_old_ca_without_a_lost_ping() {
    if !root() {
        return;
    }
    let transition_s: u64 = std::env::var("CA_TRANSITION_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_TRANSITION_S);
    let mut net = Testnet::up(Options {
        prefix: Some(common::prefix('k')),
        configure: Some(Box::new(move |_, config| {
            if let Some(control) = config.control.as_mut() {
                control
                    .extra
                    .push(format!("ca_transition_s = {transition_s}"));
            }
        })),
        ..Options::new(3, 1)
    })
    .expect("testnet up");
    let old_ca = membership(&net, 1).ca_fingerprint;
    for i in 1..=3 {
        let m = membership(&net, i);
        assert_eq!(m.ca_fingerprint, old_ca);
        assert_eq!(m.ca.expect("CA status").certificate_ca, old_ca);
    }
    // A token made before the rotation pins the old CA.
    let old_token = net.create_token("1h").expect("a token");
    // h3 is down during the whole transition.
    net.kill_daemon(3).expect("kill h3's daemon");

    let to = net.addr("h2-c1").expect("h2-c1's address").to_string();
    assert!(common::pings(&net, "h1-c1", &to), "h1-c1 pings h2-c1");
    let pinger = LossPinger::start(&net, "h1-c1", &to);
    std::thread::sleep(Duration::from_secs(2));

    let rotated = Instant::now();
    let out = net
        .overlayctl_ok(1, &["ca", "rotate", "--json"])
        .expect("ca rotate");
    let rotate_took = rotated.elapsed();
    let answer: protocol::api::CaRotateResponse =
        serde_json::from_slice(&out.stdout).expect("the rotation's JSON");
    assert_eq!(answer.old_ca, old_ca);
    let new_ca = answer.new_ca.clone();
    assert_ne!(new_ca, old_ca);
    let retires = answer.retires_unix;
    eprintln!(
        "carotate: rotated at {:.3}, the old CA retires at {retires}",
        common::now_s()
    );
    assert!(retires >= now_s() + transition_s - 3, "{answer:?}");
    // A second rotation during the transition is refused.
    let again = net
        .overlayctl(1, &["ca", "rotate"])
        .expect("run overlayctl");
    assert!(!again.status.success());
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("under way"), "{said}");

    // Each member renews under the new CA; nobody is ever seen other than alive.
    let mut renewed: [Option<Duration>; 2] = [None, None];
    let mut not_alive = Vec::new();
    while now_s() < retires + 3 {
        for i in 1..=2 {
            let m = membership(&net, i);
            let ca = m.ca.expect("CA status");
            if renewed[i - 1].is_none() && ca.certificate_ca == new_ca {
                renewed[i - 1] = Some(rotated.elapsed());
            }
            if now_s() < retires {
                assert_eq!(m.ca_fingerprint, new_ca, "h{i}");
            }
            let other = 3 - i;
            let state = net.member_state(i, other).expect("peers");
            if state != Some(MemberState::Alive) {
                not_alive.push(format!(
                    "at {:.1} s h{i} saw h{other} {state:?}",
                    rotated.elapsed().as_secs_f64()
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let (sent, received) = pinger.finish();
    eprintln!(
        "carotate: transition {transition_s} s, `ca rotate` answered in {:.2} s, renewed under the new CA after {renewed:?}, pings {received}/{sent}",
        rotate_took.as_secs_f64()
    );
    if !not_alive.is_empty() || sent != received {
        for i in 1..=2 {
            eprintln!("h{i}'s log, last lines:\n{}", log_tail(&net, i, 120));
        }
    }
    assert!(not_alive.is_empty(), "{not_alive:?}");
    assert!(renewed.iter().all(Option::is_some), "{renewed:?}");
    assert!(
        sent >= (transition_s + 4) * 15,
        "ping sent only {sent} (every 50 ms)"
    );
    assert_eq!(sent, received, "{} pings lost", sent - received);

    // After the transition: only the new CA, everywhere.
    for i in 1..=2 {
        let m = membership(&net, i);
        let ca = m.ca.expect("CA status");
        assert_eq!(m.ca_fingerprint, new_ca, "h{i}");
        assert_eq!(ca.certificate_ca, new_ca, "h{i}");
        assert!(ca.retiring_ca.is_none(), "h{i}: {ca:?}");
    }
    // The old CA's private key is gone from the admin: only the new one is on disk.
    let state = net.state_dir(1);
    assert!(state.join("ca.key").exists());
    assert!(!state.join("ca-next.key").exists());
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(state.join("network.json")).expect("h1's network.json"),
    )
    .expect("JSON");
    assert!(saved.get("ca_transition").is_none(), "{saved}");

    // h3 comes back with its old-CA certificate: refused, with one clear error.
    net.start_daemon(3).expect("start h3's daemon");
    let deadline = Instant::now() + Duration::from_secs(15);
    let error = loop {
        let log = std::fs::read_to_string(net.log_path(3)).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("rotated while this host was away"))
        {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no clear error in h3's log:\n{}",
            log_tail(&net, 3, 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(error.contains("overlayctl join"), "{error}");
    eprintln!("h3's error: {error}");
    std::thread::sleep(Duration::from_secs(3));
    for i in 1..=2 {
        assert_ne!(
            net.member_state(i, 3).expect("peers"),
            Some(MemberState::Alive),
            "h{i} must not take h3's old-CA certificate"
        );
    }
    let to_h3 = net.addr("h3-c1").expect("h3-c1's address").to_string();
    assert!(!common::pings_once(&net, "h1-c1", &to_h3));

    // h3 leaves; the token of the old CA is refused; a new one brings it back.
    net.overlayctl_ok(3, &["leave"]).expect("leave");
    let out = net.join_with(3, &old_token).expect("join");
    assert!(!out.status.success(), "a token of the retired CA joined");
    let said = String::from_utf8_lossy(&out.stderr);
    eprintln!("old-CA token: {}", said.trim());
    assert!(said.contains(&old_ca) || said.contains("CA"), "{said}");
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    let token = net.create_token("10m").expect("a token of the new CA");
    let out = net.join_with(3, &token).expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    net.wait_member_state(1, 3, MemberState::Alive, Duration::from_secs(15))
        .expect("h3 is back for h1");
    net.wait_member_state(2, 3, MemberState::Alive, Duration::from_secs(15))
        .expect("h3 is back for h2");
    assert!(common::pings(&net, "h1-c1", &to_h3), "h1-c1 pings h3-c1");
    let m3 = membership(&net, 3);
    assert_eq!(m3.ca_fingerprint, new_ca);
    assert_eq!(m3.ca.expect("CA status").certificate_ca, new_ca);

    // Everything is saved: h2 restarted is back under the new CA.
    net.restart_daemon(2).expect("restart h2");
    net.wait_member_state(1, 2, MemberState::Alive, Duration::from_secs(15))
        .expect("h2 is back");
    assert!(common::pings(&net, "h1-c1", &to), "h1-c1 pings h2-c1");
    let m2 = membership(&net, 2);
    assert_eq!(m2.ca_fingerprint, new_ca);
    assert_eq!(m2.ca.expect("CA status").certificate_ca, new_ca);
    net.down().expect("testnet down");
}

/// Two admins: `admin add h2`, then `ca rotate` on h1 with a short transition while h1-c1
/// pings h2-c1 every 50 ms. h2 takes the new CA key (0600, the same as h1's), every
/// certificate chains to the new CA after the transition, 0 pings lost; then, h1 stopped,
/// h3 (not a member yet) joins through h2 alone with a token h2 made under the new CA.
#[test]
fn ca_rotate_with_two_admins_hands_the_new_key_to_the_other() {
    use std::os::unix::fs::PermissionsExt;
    if !root() {
        return;
    }
    const TRANSITION_S: u64 = 12;
    let mut net = Testnet::up(Options {
        prefix: Some(common::prefix('l')),
        members: Some(2),
        ..Options::new(3, 1)
    })
    .expect("testnet up");
    net.overlayctl_ok(1, &["admin", "add", "h2"])
        .expect("admin add h2");
    assert!(membership(&net, 2).admin, "h2 holds the CA key");
    let old_ca = membership(&net, 1).ca_fingerprint;

    let to = net.addr("h2-c1").expect("h2-c1's address").to_string();
    assert!(common::pings(&net, "h1-c1", &to), "h1-c1 pings h2-c1");
    let pinger = LossPinger::start(&net, "h1-c1", &to);
    std::thread::sleep(Duration::from_secs(1));
    let rotated = Instant::now();
    let out = net
        .overlayctl_ok(
            1,
            &[
                "ca",
                "rotate",
                "--transition",
                &TRANSITION_S.to_string(),
                "--json",
            ],
        )
        .expect("ca rotate");
    let answer: protocol::api::CaRotateResponse =
        serde_json::from_slice(&out.stdout).expect("the rotation's JSON");
    assert_eq!(answer.old_ca, old_ca);
    let new_ca = answer.new_ca.clone();

    // h2 takes the new key.
    let took = loop {
        let log = std::fs::read_to_string(net.log_path(2)).unwrap_or_default();
        if log.contains("took the network's new CA key from another admin") {
            break rotated.elapsed();
        }
        assert!(
            rotated.elapsed() < Duration::from_secs(10),
            "h2 did not take the new CA key:\n{}",
            log_tail(&net, 2, 60)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let key = net.state_dir(2).join("ca.key");
    let mode = std::fs::metadata(&key)
        .expect("h2's ca.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "h2's CA key is 0600");
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        std::fs::read_to_string(net.state_dir(1).join("ca.key")).unwrap(),
        "h2 holds the new CA key, as h1"
    );
    assert!(!net.state_dir(2).join("ca-next.key").exists());
    assert!(membership(&net, 2).admin, "h2 is still an admin");

    while now_s() < answer.retires_unix + 3 {
        std::thread::sleep(Duration::from_millis(250));
    }
    let (sent, received) = pinger.finish();
    eprintln!(
        "carotate (two admins): transition {TRANSITION_S} s, h2 took the new CA key after {:.2} s, pings {received}/{sent}",
        took.as_secs_f64()
    );
    if sent != received {
        for i in 1..=2 {
            eprintln!("h{i}'s log, last lines:\n{}", log_tail(&net, i, 120));
        }
    }
    assert_eq!(sent, received, "{} pings lost", sent - received);
    for i in 1..=2 {
        let m = membership(&net, i);
        let ca = m.ca.expect("CA status");
        assert_eq!(m.ca_fingerprint, new_ca, "h{i}");
        assert_eq!(ca.certificate_ca, new_ca, "h{i}");
        assert!(ca.retiring_ca.is_none(), "h{i}: {ca:?}");
    }
    let list = net
        .overlayctl_ok(2, &["admin", "list"])
        .expect("admin list on h2");
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("h1") && list.contains("h2"), "{list}");

    // h1 stopped: h3 joins through h2 alone, with h2's token of the new CA.
    net.kill_daemon(1).expect("kill h1's daemon");
    let out = net
        .overlayctl_ok(2, &["token", "create", "--ttl", "10m"])
        .expect("token create on h2");
    let token = String::from_utf8(out.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned();
    let out = net
        .overlayctl(3, &["join", &token, "--name", "h3"])
        .expect("run overlayctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    net.wait_member_state(2, 3, MemberState::Alive, Duration::from_secs(15))
        .expect("h3 is alive for h2");
    let m3 = membership(&net, 3);
    assert_eq!(m3.ca_fingerprint, new_ca);
    assert_eq!(m3.ca.expect("CA status").certificate_ca, new_ca);
    net.down().expect("testnet down");
}

/// h3 down when `ca rotate` runs and started again during the transition: the members that
/// renewed already still present their old-CA certificates in TLS until the end (their
/// records carry the new ones), so h3, which trusts only the old CA until it learns the
/// transition, reaches them, learns it, and renews under the new CA by itself before the
/// end. Before, it could reach no renewed member and was cut off at the end.
#[test]
fn a_member_back_during_the_transition_renews_by_itself() {
    if !root() {
        return;
    }
    const TRANSITION_S: u64 = 20;
    let mut net = Testnet::up(Options {
        prefix: Some(common::prefix('m')),
        ..Options::new(3, 1)
    })
    .expect("testnet up");
    net.kill_daemon(3).expect("kill h3's daemon");
    let rotated = Instant::now();
    let out = net
        .overlayctl_ok(
            1,
            &[
                "ca",
                "rotate",
                "--transition",
                &TRANSITION_S.to_string(),
                "--json",
            ],
        )
        .expect("ca rotate");
    let answer: protocol::api::CaRotateResponse =
        serde_json::from_slice(&out.stdout).expect("the rotation's JSON");
    let new_ca = answer.new_ca.clone();
    // (Right after its start h3's status may show no membership yet.)
    let on_new_ca = |net: &Testnet, i: usize| {
        net.status_json(i)
            .ok()
            .and_then(|s| s.member)
            .and_then(|m| m.ca)
            .is_some_and(|c| c.certificate_ca == new_ca)
    };
    while !on_new_ca(&net, 2) {
        assert!(
            rotated.elapsed() < Duration::from_secs(10),
            "h2 did not renew under the new CA"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    net.start_daemon(3).expect("start h3 again");
    let back = Instant::now();
    while !on_new_ca(&net, 3) {
        assert!(
            rotated.elapsed() < Duration::from_secs(TRANSITION_S - 1),
            "h3 did not renew under the new CA before the end:\n{}",
            log_tail(&net, 3, 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "carotate (back during the transition): h3 started {:.2} s after `ca rotate`, renewed under the new CA {:.2} s after its start",
        back.duration_since(rotated).as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
    // After the end: h3 is a member like the others, under the new CA.
    std::thread::sleep(Duration::from_secs(TRANSITION_S + 3).saturating_sub(rotated.elapsed()));
    for i in 1..=3 {
        assert!(on_new_ca(&net, i), "h{i}");
    }
    for observer in [1, 2] {
        net.wait_member_state(observer, 3, MemberState::Alive, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("h{observer} sees h3 alive after the end: {e}"));
    }
    let to = net.addr("h3-c1").expect("h3-c1's address").to_string();
    assert!(common::pings(&net, "h1-c1", &to), "h1-c1 pings h3-c1");
}
