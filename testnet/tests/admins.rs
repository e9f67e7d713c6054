//! End-to-end: more than one admin (issue 18, part 5).
//!
//! Certificates of 60 s. h1 makes the network, h2 and h3 join, h2 is made an admin
//! (`overlayctl admin add h2` on h1: the CA key goes to h2 over their control connection).
//! h1 makes a token (it names h1, then h2; its record goes to h2 before it is printed) and
//! is stopped: h4 joins with h1's token, through h2 (h1's endpoint tried first), and h3,
//! which h1 admitted, renews its certificate through h2 (40 s into its life); h2 makes a
//! token with h1 down. h1 is started again (its certificate still valid) and takes h2's
//! record that the token was used: the same token is refused at h1. h1 and h2 each make
//! five tokens and ten hosts (h5..h14) join at once, five through each (h10 with h2's token
//! made while h1 was down), the admins picking their subnets: no subnet and no serial is
//! issued twice, and every host is a member. Then: h2 revokes h5 (admitted by h1) and h1 takes it; a
//! member that is no admin cannot add one; h2 removed by h1 destroys its CA key and can no
//! longer make tokens.
//!
//! ```text
//!                      P-ul: br0 (underlay switch)
//!   +--------+--------+--------+-- ... --+
//!   |        |        |        |         |
//! P-h1 .11  P-h2 .12  P-h3 .13  P-h4 .14  P-h5 .. P-h14      198.18.0.x/15
//! admin     admin     renews    joins     join at once through h1 (h5..h9)
//! (stopped, (admin    through   through   and h2 (h10..h14); subnets picked by
//! restarted) add h2)  h2        h2 alone  the admins, each from its own blocks
//! ```

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::root;
use testnet::{MemberState, Options, Testnet};

const HOSTS: usize = 14;
/// Certificates of this many seconds: renewed 40 s into their life.
const LIFETIME_S: u64 = 60;

fn membership(net: &Testnet, i: usize) -> protocol::api::Membership {
    net.status_json(i)
        .expect("status")
        .member
        .unwrap_or_else(|| panic!("h{i} is a member"))
}

fn token_on(net: &Testnet, admin: usize) -> String {
    let out = net
        .overlayctl_ok(admin, &["token", "create", "--ttl", "10m"])
        .expect("token create");
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned()
}

/// `overlayctl join TOKEN --name hI` (no subnet: the admin picks it).
fn join(net: &Testnet, i: usize, token: &str) -> Result<(), String> {
    let name = format!("h{i}");
    let out = net
        .overlayctl(i, &["join", token, "--name", &name])
        .expect("run overlayctl");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn logs_tail(net: &Testnet, hosts: &[usize]) {
    for &i in hosts {
        let log = std::fs::read_to_string(net.log_path(i)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!(
            "h{i}'s log, last lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

#[test]
fn two_admins_admit_while_either_is_down_and_never_collide() {
    if !root() {
        return;
    }
    let mut net = Testnet::up(Options {
        prefix: Some(common::prefix('j')),
        members: Some(3),
        configure: Some(Box::new(|_, config| {
            if let Some(control) = config.control.as_mut() {
                control
                    .extra
                    .push(format!("certificate_lifetime_s = {LIFETIME_S}"));
            }
        })),
        ..Options::new(HOSTS, 0)
    })
    .expect("testnet up");
    // h2 becomes an admin.
    let started = Instant::now();
    let out = net
        .overlayctl_ok(1, &["admin", "add", "h2"])
        .expect("admin add h2");
    let granted = started.elapsed();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("h2 is an admin now"), "{said}");
    assert!(membership(&net, 2).admin, "h2 holds the CA key");
    let key = net.state_dir(2).join("ca.key");
    let mode = std::fs::metadata(&key)
        .expect("h2's ca.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "h2's CA key is 0600");
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        std::fs::read_to_string(net.state_dir(1).join("ca.key")).unwrap(),
        "the same CA key"
    );
    let list = net
        .overlayctl_ok(2, &["admin", "list"])
        .expect("admin list");
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(list.contains("h1") && list.contains("h2"), "{list}");

    // A token made on h1 names both admins, h1 first; its record is at h2 when it is
    // printed.
    let started = Instant::now();
    let h1_token = token_on(&net, 1);
    let h1_token_made = started.elapsed();
    let parsed: keys::JoinToken = h1_token.parse().expect("a token");
    let (a1, a2) = (net.addr("h1").unwrap(), net.addr("h2").unwrap());
    let ips: Vec<std::net::IpAddr> = parsed.endpoints().iter().map(|e| e.ip()).collect();
    assert_eq!(ips, [a1, a2], "h1's token names h1, then h2");
    // h1 down: h4 joins with h1's token through h2 (h1 tried first), and h3 renews
    // through h2.
    let h1_expires = membership(&net, 1).certificate_expires_unix;
    let h3_before = membership(&net, 3);
    net.stop_daemon(1).expect("stop h1");
    let started = Instant::now();
    join(&net, 4, &h1_token).unwrap_or_else(|e| {
        logs_tail(&net, &[2, 4]);
        panic!("h4 cannot join with h1's token through h2 with h1 down: {e}")
    });
    let joined_alone = started.elapsed();
    let started = Instant::now();
    let h2_token = token_on(&net, 2);
    let h2_token_made = started.elapsed();
    net.wait_member_state(2, 4, MemberState::Alive, Duration::from_secs(15))
        .expect("h2 sees h4");
    let due = h3_before.certificate_renew_at_unix;
    let deadline = Instant::now() + Duration::from_secs(LIFETIME_S);
    let h3_renewed = loop {
        let m = membership(&net, 3);
        if m.certificate_serial > h3_before.certificate_serial {
            break m;
        }
        if Instant::now() >= deadline {
            logs_tail(&net, &[2, 3]);
            panic!("h3 did not renew through h2 while h1 was down: {m:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let renewed_after_due = common::now_s() - due as f64;
    assert_eq!(
        h3_renewed.certificate_serial % 64,
        1,
        "h3's renewal comes from h2's slot: {h3_renewed:?}"
    );
    assert!(
        (common::now_s() as u64) + 5 < h1_expires,
        "h1's certificate would expire before it is back"
    );

    // h1 back; both issue tokens, ten hosts join at once.
    let log_before = std::fs::metadata(net.log_path(1)).map_or(0, |m| m.len() as usize);
    net.start_daemon(1).expect("start h1");
    let started = Instant::now();
    net.wait_member_state(1, 2, MemberState::Alive, Duration::from_secs(20))
        .expect("h1 sees h2 again");
    net.wait_member_state(2, 1, MemberState::Alive, Duration::from_secs(20))
        .expect("h2 sees h1 again");
    let back = started.elapsed();
    assert!(membership(&net, 1).admin, "h1 is still an admin");
    // h1 takes h2's records as they connect (h2 redeemed h1's token meanwhile): the token
    // is refused at h1 after that.
    let deadline = Instant::now() + Duration::from_secs(10);
    let took = || {
        let log = std::fs::read_to_string(net.log_path(1)).unwrap_or_default();
        let since = if log.len() >= log_before {
            log_before
        } else {
            0
        };
        log.get(since..)
            .is_some_and(|l| l.contains("took token records of another admin"))
    };
    while !took() {
        assert!(
            Instant::now() < deadline,
            "h1 did not take h2's token records within 10 s of seeing h2"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let caught_up = started.elapsed();
    let err = join(&net, 5, &h1_token).expect_err("a used token is refused at h1");
    assert!(
        err.contains("already used (by h4)") && err.contains(&a1.to_string()),
        "{err}"
    );
    let tokens: Vec<(usize, usize, String)> = (5..=HOSTS)
        .map(|i| {
            let admin = if i <= 9 { 1 } else { 2 };
            let token = if i == 10 {
                h2_token.clone()
            } else {
                token_on(&net, admin)
            };
            (i, admin, token)
        })
        .collect();
    let started = Instant::now();
    let results: Vec<(usize, usize, Result<(), String>, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = tokens
            .iter()
            .map(|(i, admin, token)| {
                let net = &net;
                s.spawn(move || {
                    let t = Instant::now();
                    let r = join(net, *i, token);
                    (*i, *admin, r, t.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all_joined = started.elapsed();
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(i, a, r, _)| r.as_ref().err().map(|e| format!("h{i} via h{a}: {e}")))
        .collect();
    if !failed.is_empty() {
        logs_tail(&net, &[1, 2]);
        panic!("joins failed: {failed:?}");
    }
    let slowest = results.iter().map(|r| r.3).max().unwrap();
    let mut subnets: HashMap<String, usize> = HashMap::new();
    let mut serials: HashMap<u64, usize> = HashMap::new();
    let mut seen = Vec::new();
    for i in 1..=HOSTS {
        let m = membership(&net, i);
        seen.push(format!(
            "h{i}: serial {} {:?}",
            m.certificate_serial, m.subnets
        ));
        for s in &m.subnets {
            if let Some(other) = subnets.insert(s.to_string(), i) {
                panic!("subnet {s} issued to h{other} and h{i}: {seen:?}");
            }
        }
        if let Some(other) = serials.insert(m.certificate_serial, i) {
            panic!(
                "serial {} issued to h{other} and h{i}: {seen:?}",
                m.certificate_serial
            );
        }
    }
    // Serials of the joins of h2 are in its slot (1 modulo 64); h1's in slot 0.
    for (i, admin, _, _) in &results {
        let serial = membership(&net, *i).certificate_serial;
        assert_eq!(
            serial % 64,
            (*admin - 1) as u64,
            "h{i} via h{admin}: {seen:?}"
        );
    }
    // Every member sees every other alive.
    let started = Instant::now();
    let hosts: Vec<usize> = (1..=HOSTS).collect();
    net.wait_alive(&hosts, Instant::now() + Duration::from_secs(60))
        .unwrap_or_else(|e| {
            logs_tail(&net, &[1, 2]);
            panic!("not all alive: {e:#}")
        });
    let converged = started.elapsed();

    // Any admin revokes: h2 revokes h5, which h1 admitted; h1 takes h2's revocation.
    let started = Instant::now();
    net.overlayctl_ok(2, &["revoke", "h5"])
        .expect("revoke h5 on h2");
    let deadline = Instant::now() + Duration::from_secs(10);
    while net.member_state(1, 5).expect("peers") == Some(MemberState::Alive) {
        assert!(
            Instant::now() < deadline,
            "h1 still has h5 alive after h2 revoked it"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let revoked = started.elapsed();

    // A member that is no admin cannot make one, nor take the key.
    let out = net
        .overlayctl(3, &["admin", "add", "h6"])
        .expect("run overlayctl");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an admin"), "{err}");
    assert!(!net.state_dir(6).join("ca.key").exists());

    // h2 removed: it destroys its key and makes no more tokens.
    let started = Instant::now();
    net.overlayctl_ok(1, &["admin", "remove", "h2"])
        .expect("admin remove h2");
    let deadline = Instant::now() + Duration::from_secs(15);
    while key.exists() || membership(&net, 2).admin {
        assert!(
            Instant::now() < deadline,
            "h2 still holds the CA key 15 s after its removal"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let removed = started.elapsed();
    let out = net
        .overlayctl(2, &["token", "create"])
        .expect("run overlayctl");
    assert!(!out.status.success(), "a removed admin made a token");
    // A host that never was an admin after the removal learns of it by the records too.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = net
            .overlayctl_ok(7, &["admin", "list"])
            .expect("admin list");
        let list = String::from_utf8_lossy(&list.stdout).into_owned();
        if list.contains("removed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "h7 never learnt of the removal: {list}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    eprintln!(
        "admins: admin add {:.2} s; h1's token made (record sent to h2) in {:.2} s; h4 joined \
         with it through h2 alone in {:.2} s; token made on h2 with h1 down in {:.2} s; h3 \
         renewed through h2 {:.1} s after it was due (serial {} -> {}); h1 and h2 see each \
         other {:.2} s after h1's start, h1 took h2's token records {:.2} s after its start, \
         and refused the used token; 10 joins at once through both in {:.2} s (slowest {:.2} s); all {HOSTS} \
         alive {:.2} s later; h5 revoked by h2 gone from h1 in {:.2} s; h2's key gone {:.2} s \
         after its removal\n{}",
        granted.as_secs_f64(),
        h1_token_made.as_secs_f64(),
        joined_alone.as_secs_f64(),
        h2_token_made.as_secs_f64(),
        renewed_after_due,
        h3_before.certificate_serial,
        h3_renewed.certificate_serial,
        back.as_secs_f64(),
        caught_up.as_secs_f64(),
        all_joined.as_secs_f64(),
        slowest.as_secs_f64(),
        converged.as_secs_f64(),
        revoked.as_secs_f64(),
        removed.as_secs_f64(),
        seen.join("\n")
    );
    net.down().expect("testnet down");
}
