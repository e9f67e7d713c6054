//! End-to-end: certificate renewal (issue 18, parts 1 and 6).
//!
//! - Certificates of 60 s (`[control] certificate_lifetime_s = 60`) on 3 hosts for 3
//!   minutes (env `RENEWAL_TEST_S` to shorten), h1-c1 pinging h3-c1 every 50 ms: every
//!   host renews again and again (its serial rises), 0 pings are lost, and no host ever sees
//!   another other than `alive`.
//! - A member kept down past its certificate's expiry (30 s certificates here): started
//!   again, it logs the one clear error that says to join again with a token, and is no
//!   member; after a new `overlayctl join` it is back and pings.
//! - Groups changed live (issue 18, part 2): under a policy that lets only group `web`
//!   ping, h2 (no groups) cannot ping h3-c1; `overlayctl node groups h2 web` on h1, and
//!   h2-c1 pings h3-c1 within 5 s, with the same daemon (no restart) and a higher serial.
//!
//! ```text
//!                   P-ul: br0 (underlay switch)
//!      +-------------------+-------------------+
//!      |                   |                   |
//!  P-h1 .11            P-h2 .12            P-h3 .13
//!  admin (renews       member              member (killed past its
//!  its own)            br0 10.42.2.1       expiry, joins again)
//!  br0 10.42.1.1                           br0 10.42.3.1
//!   h1-c1 10.42.1.2 --- ping -i 0.05 --->   h3-c1 10.42.3.2
//! ```

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::root;
use testnet::{MemberState, Options, Testnet};

/// How long the renewal test runs, unless env `RENEWAL_TEST_S` says otherwise.
const DEFAULT_TEST_S: u64 = 180;

/// 3 hosts with a container each, certificates of `lifetime_s`; `run` tells the two tests'
/// namespaces apart (`r<pid>a`, `r<pid>b`).
fn network(lifetime_s: u64, run: char) -> Testnet {
    Testnet::up(Options {
        prefix: Some(format!("{}{run}", common::prefix('r'))),
        configure: Some(Box::new(move |_, config| {
            if let Some(control) = config.control.as_mut() {
                control
                    .extra
                    .push(format!("certificate_lifetime_s = {lifetime_s}"));
            }
        })),
        ..Options::new(3, 1)
    })
    .expect("testnet up")
}

/// Host `i`'s certificate serial, from `overlayctl status --json`.
fn serial(net: &Testnet, i: usize) -> u64 {
    membership(net, i).certificate_serial
}

fn membership(net: &Testnet, i: usize) -> protocol::api::Membership {
    net.status_json(i)
        .expect("status")
        .member
        .unwrap_or_else(|| panic!("h{i} is a member"))
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

#[test]
fn sixty_second_certificates_renew_without_a_lost_ping() {
    if !root() {
        return;
    }
    let run_s: u64 = std::env::var("RENEWAL_TEST_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_TEST_S);
    let net = network(60, 'a');
    let first: Vec<u64> = (1..=3).map(|i| serial(&net, i)).collect();
    let to = net.addr("h3-c1").expect("h3-c1's address").to_string();
    let pinger = LossPinger::start(&net, "h1-c1", &to);
    let start = Instant::now();
    let mut serials: Vec<Vec<u64>> = vec![first.clone()];
    let mut not_alive = Vec::new();
    while start.elapsed() < Duration::from_secs(run_s) {
        for observer in 1..=3 {
            for member in (1..=3).filter(|&m| m != observer) {
                let state = net.member_state(observer, member).expect("peers");
                if state != Some(MemberState::Alive) {
                    not_alive.push(format!(
                        "at {:.0} s h{observer} saw h{member} {state:?}",
                        start.elapsed().as_secs_f64()
                    ));
                }
            }
        }
        let now: Vec<u64> = (1..=3).map(|i| serial(&net, i)).collect();
        if serials.last() != Some(&now) {
            serials.push(now);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (sent, received) = pinger.finish();
    eprintln!(
        "renewal: {run_s} s, pings {received}/{sent}, serials {:?}",
        serials
    );
    assert!(not_alive.is_empty(), "{not_alive:?}");
    assert!(
        sent >= run_s * 15,
        "ping sent only {sent} in {run_s} s (every 50 ms)"
    );
    assert_eq!(sent, received, "{} pings lost", sent - received);
    // Renewed at 40 s into each 60-second certificate: every host renews about every 40 s.
    let least = (run_s / 40).saturating_sub(1).max(1) as usize;
    for i in 0..3 {
        let renewals = serials.windows(2).filter(|w| w[1][i] > w[0][i]).count();
        assert!(
            renewals >= least,
            "h{} renewed {renewals} times in {run_s} s (want at least {least}): {serials:?}",
            i + 1
        );
    }
    for i in 1..=3 {
        let m = membership(&net, i);
        let now = testnet_now();
        assert!(m.certificate_renewed_unix.is_some(), "h{i}: {m:?}");
        assert!(m.certificate_expires_unix > now, "h{i}: {m:?}");
        let text = net.overlayctl_ok(i, &["status"]).expect("status");
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("last renewed"), "{text}");
    }
    net.down().expect("testnet down");
}

fn testnet_now() -> u64 {
    common::now_s() as u64
}

#[test]
fn a_member_down_past_its_expiry_is_told_to_join_again() {
    if !root() {
        return;
    }
    let mut net = network(30, 'b');
    net.kill_daemon(3).expect("kill h3's daemon");
    // Kept down until the certificate it saved last has expired.
    let saved =
        std::fs::read_to_string(net.state_dir(3).join("network.json")).expect("h3's network.json");
    let saved: serde_json::Value = serde_json::from_str(&saved).expect("JSON");
    let certificate: keys::SignedCertificate = saved["certificate"]
        .as_str()
        .expect("a certificate")
        .parse()
        .expect("h3's certificate");
    let expires = certificate
        .unverified_body()
        .expect("a certificate body")
        .not_after;
    while testnet_now() <= expires + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    net.start_daemon(3).expect("start h3's daemon");
    let log_path = net.log_path(3);
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("join again with a new token"))
        {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no clear error in h3's log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        error.contains("expired") && error.contains("overlayctl join"),
        "{error}"
    );
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(
        log.matches("join again with a new token").count(),
        1,
        "one error, not a stream:\n{log}"
    );
    let status = net.status_json(3).expect("status");
    assert!(status.member.is_none(), "{status:?}");
    // The others no longer list it alive: its certificate expired.
    assert_ne!(
        net.member_state(1, 3).expect("peers"),
        Some(MemberState::Alive)
    );
    // A new join with a token brings it back.
    let token = net.create_token("10m").expect("a token");
    let out = net.join_with(3, &token).expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    net.wait_member_state(1, 3, MemberState::Alive, Duration::from_secs(15))
        .expect("h3 is back");
    let to = net.addr("h3-c1").expect("h3-c1's address").to_string();
    assert!(common::pings(&net, "h1-c1", &to), "h1-c1 pings h3-c1");
    net.down().expect("testnet down");
}

const WEB_MAY_PING: &str = r#"
[[allow]]
from  = ["group:web"]
to    = ["any"]
ports = ["icmp"]
"#;

#[test]
fn new_groups_are_taken_live_and_the_policy_follows() {
    if !root() {
        return;
    }
    let mut net = Testnet::up(Options {
        prefix: Some(format!("{}c", common::prefix('r'))),
        ..Options::new(3, 1)
    })
    .expect("testnet up");
    let to = net.addr("h3-c1").expect("h3-c1's address").to_string();
    let file = net.run_dir().join("policy.toml");
    std::fs::write(&file, WEB_MAY_PING).expect("write the policy");
    net.overlayctl_ok(1, &["policy", "set", &file.display().to_string()])
        .expect("policy set");
    // In force on h2 once h2-c1 no longer gets through (h2 has no group).
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::pings_once(&net, "h2-c1", &to) {
        assert!(
            Instant::now() < deadline,
            "the policy never took h2's ping away"
        );
    }
    let before = membership(&net, 2);
    assert!(before.groups.is_empty(), "{before:?}");
    let pid = net.daemon_pid(2);
    let out = net
        .overlayctl_ok(1, &["node", "groups", "h2", "web"])
        .expect("node groups");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("re-issued the certificate of h2"), "{said}");
    let changed = Instant::now();
    let deadline = changed + Duration::from_secs(5);
    while !common::pings_once(&net, "h2-c1", &to) {
        if Instant::now() >= deadline {
            for i in 1..=3 {
                let log = std::fs::read_to_string(net.log_path(i)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("h{i}'s log, last lines:\n{}", tail.join("\n"));
            }
            eprintln!("h2: {:?}", membership(&net, 2));
            panic!("h2-c1 does not ping h3-c1 5 s after its new groups");
        }
    }
    let took = changed.elapsed();
    eprintln!(
        "new groups: h2-c1 pings h3-c1 after {:.2} s",
        took.as_secs_f64()
    );
    let after = membership(&net, 2);
    assert_eq!(after.groups, ["web"]);
    assert!(after.certificate_serial > before.certificate_serial);
    assert_eq!(net.daemon_pid(2), pid, "no restart");
    assert!(net.daemon_alive(2));
    // h3 has no group: still denied.
    let from_h3 = net.addr("h2-c1").expect("h2-c1's address").to_string();
    assert!(!common::pings_once(&net, "h3-c1", &from_h3));
    // A name nobody holds, or a member asking: one-line refusals.
    let out = net
        .overlayctl(1, &["node", "groups", "nobody", "web"])
        .expect("run overlayctl");
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
    let out = net
        .overlayctl(2, &["node", "groups", "h3", "web"])
        .expect("run overlayctl");
    assert!(!out.status.success());
    net.down().expect("testnet down");
}
