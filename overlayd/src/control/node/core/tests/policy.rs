//! The network policy in the membership core: signed by the admin, pushed to every
//! member, caught up by full sync, handed to the driver before any peer on a restart;
//! refused when its tests fail, when a member tries to sign one, or when a member pushes
//! a forged or an older one.

use keys::{CaKey, Name};
use protocol::api::{PolicyCheckRequest, PolicyShown};
use protocol::policy::SignedPolicy;

use super::super::{Action, Answer, Origin};
use super::sim::Sim;
use super::{converged, secs};
use crate::control::msg::{Bundle, Request, Response};

const POLICY: &str = "[[allow]]\nfrom = [\"node:h1\"]\nto = [\"node:h2\"]\nports = [\"tcp/5432\"]\n\n[[test]]\nfrom = \"node:h1\"\nto = \"node:h2\"\nport = \"tcp/5432\"\nexpect = \"allow\"\n";

fn set(sim: &mut Sim, host: usize, text: &str) -> Result<PolicyShown, String> {
    let now = sim.now();
    let result = sim.hosts[host].core().set_policy(text, now);
    let actions = std::iter::from_fn(|| sim.hosts[host].core().poll_action()).collect();
    sim.apply(host, actions);
    result.map_err(|e| e.to_string())
}

fn version_of(sim: &Sim, host: usize) -> Option<u64> {
    sim.hosts[host].policy.as_ref().map(|p| p.version)
}

#[test]
fn the_admins_policy_reaches_every_member_at_once() {
    let mut sim = converged(3);
    assert!(sim.hosts.iter().all(|h| h.policy.is_none()));
    let shown = set(&mut sim, 0, POLICY).expect("the admin signs a policy");
    assert_eq!((shown.version, shown.rules, shown.tests), (Some(1), 1, 1));
    for i in 0..3 {
        assert_eq!(version_of(&sim, i), Some(1), "h{i} enforces version 1");
        let p = sim.hosts[i].policy.as_ref().expect("a policy");
        assert_eq!(p.local_name.as_str(), format!("h{i}"));
        // Saved with the directory, so a restart keeps it.
        let saved = sim.hosts[i].saved.1.as_ref().expect("a saved directory");
        assert_eq!(saved.policy().map(|(_, s)| s.version()), Some(1));
    }
    let check = |sim: &mut Sim, from: &str, to: &str| {
        sim.hosts[2]
            .core()
            .policy_check(&PolicyCheckRequest {
                from: from.into(),
                to: to.into(),
                port: "tcp/5432".into(),
            })
            .expect("a check")
    };
    let yes = check(&mut sim, "node:h1", "node:h2");
    assert_eq!(
        (yes.allow, yes.rule_line, yes.version),
        (true, Some(1), Some(1))
    );
    assert!(!check(&mut sim, "node:h2", "node:h1").allow);
    // A second version replaces it everywhere.
    set(&mut sim, 0, "").expect("an empty policy: deny everything");
    assert!((0..3).all(|i| version_of(&sim, i) == Some(2)));
}

#[test]
fn a_policy_whose_tests_fail_or_that_a_member_signs_is_refused() {
    let mut sim = converged(2);
    let wrong = POLICY.replace(
        "node:h1\"\nto = \"node:h2\"\nport",
        "node:h2\"\nto = \"node:h1\"\nport",
    );
    let e = set(&mut sim, 0, &wrong).unwrap_err();
    assert!(
        e.contains("test at line 6 failed: node:h2 -> node:h1 tcp/5432 expected allow, got deny"),
        "{e}"
    );
    let e = set(
        &mut sim,
        0,
        "[[allow]]\nfrom = [\"grp:x\"]\nto = [\"any\"]\nports = [\"any\"]\n",
    )
    .unwrap_err();
    assert!(e.starts_with("policy line 2: "), "{e}");
    let e = set(&mut sim, 1, POLICY).unwrap_err();
    assert!(e.contains("not an admin"), "{e}");
    assert!(sim.hosts.iter().all(|h| h.policy.is_none()));
}

#[test]
fn a_member_that_missed_the_push_catches_up_by_full_sync() {
    let mut sim = converged(3);
    sim.partitioned.insert(2);
    set(&mut sim, 0, POLICY).expect("policy set");
    assert_eq!(version_of(&sim, 1), Some(1));
    assert_eq!(version_of(&sim, 2), None);
    sim.partitioned.clear();
    sim.run(secs(40));
    assert_eq!(version_of(&sim, 2), Some(1), "caught up");
}

#[test]
fn a_restarted_member_enforces_its_saved_policy_before_it_routes_anyone() {
    let mut sim = converged(3);
    set(&mut sim, 0, POLICY).expect("policy set");
    sim.crash(2);
    sim.hosts[2].policy = None;
    sim.restart(2);
    let actions: Vec<Action> = std::iter::from_fn(|| sim.hosts[2].core().poll_action()).collect();
    let policy_at = actions
        .iter()
        .position(|a| matches!(a, Action::Policy(Some(p)) if p.version == 1));
    let peers_at = actions
        .iter()
        .position(|a| matches!(a, Action::Peers(p) if !p.is_empty()));
    assert!(
        policy_at.is_some() && policy_at < peers_at,
        "policy {policy_at:?}, peers {peers_at:?}"
    );
    sim.apply(2, actions);
}

#[test]
fn forged_and_older_policies_pushed_by_a_member_change_nothing() {
    let mut sim = converged(3);
    set(&mut sim, 0, POLICY).expect("v1");
    set(&mut sim, 0, &format!("{POLICY}# v2\n")).expect("v2");
    let name: &Name = &sim.network.name;
    let older = SignedPolicy::sign(&sim.network.ca, name, 1, 0, "").expect("signs");
    let forged = SignedPolicy::sign(&CaKey::generate(), name, 99, 0, "").expect("signs");
    let link = sim.link(1, 2).expect("h1 is connected to h2");
    for bad in [older, forged] {
        let now = sim.now();
        let push = Request::Push(Bundle {
            policy: Some(bad.to_bytes()),
            names: Vec::new(),
            ..Bundle::default()
        });
        let answer = sim.hosts[2]
            .core()
            .handle_request(Origin::Member(link), push, now);
        assert!(matches!(
            answer,
            Answer::Reply(Response::Ack | Response::Seen(_))
        ));
        let actions = std::iter::from_fn(|| sim.hosts[2].core().poll_action()).collect();
        sim.apply(2, actions);
        assert_eq!(version_of(&sim, 2), Some(2));
    }
}
