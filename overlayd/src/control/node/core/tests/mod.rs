//! Tests of the membership core, without sockets and without root: cores in a simulated
//! network on a virtual clock (`sim`), driven through the events the daemon feeds them.
//! Timings are the config's defaults: probe every 1 s, suspicion 4 s, rejoin every 2 s,
//! full sync every 30 s.

mod admins;
mod names;
mod policy;
mod rendezvous;
mod renew;
mod rotate;
mod sim;
mod upgrade;

use std::time::Duration;

use keys::{JoinClaim, JoinProof, JoinToken, Name};
use protocol::api::{MemberState as ViewState, RevokeRequest, TokenRequest};
use protocol::membership::NodeId;
use rand::SeedableRng;

use super::{Action, Answer, CloseReason, Origin};
use crate::control::admin::Refused;
use crate::control::join::{self, Joined, Joiner};
use crate::control::msg::{Bundle, Request, Response};
use sim::{Keys, Sim, control_addr};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// `hosts` members, run until they know each other.
fn converged(hosts: usize) -> Sim {
    converged_with(Sim::new(hosts))
}

/// [`converged`] for a sim made by the caller.
fn converged_with(mut sim: Sim) -> Sim {
    let hosts = sim.hosts.len();
    sim.run(secs(10));
    for i in 0..hosts {
        let others: Vec<String> = (0..hosts)
            .filter(|&j| j != i)
            .map(|j| format!("h{j}"))
            .collect();
        assert_eq!(
            sim.hosts[i].routed(),
            others,
            "h{i} routes every other member"
        );
        for name in &others {
            assert_eq!(sim.hosts[i].state_of(name), Some(ViewState::Alive));
        }
    }
    sim
}

#[test]
fn hosts_that_know_only_the_admin_find_each_other() {
    let sim = converged(4);
    let view = sim.hosts[3].view.membership.as_ref().expect("a membership");
    assert_eq!((view.name.as_str(), view.member_count), ("h3", 4));
    assert!(
        sim.hosts[0]
            .view
            .membership
            .as_ref()
            .expect("a membership")
            .admin
    );
    // Every host saved the others' records, and its own at its new generation.
    for host in &sim.hosts {
        let dir = host.saved.1.as_ref().expect("a saved directory");
        assert_eq!(dir.live_members().count(), 4);
        assert_eq!(host.saved.0.generation, 1);
    }
}

#[test]
fn a_join_the_admin_admits_reaches_every_member() {
    let mut sim = converged(2);
    let now = sim.now();
    let admin = sim.hosts[0].core();
    let change = admin
        .create_token(
            TokenRequest {
                ttl_s: 600,
                groups: Vec::new(),
            },
            now,
        )
        .expect("an admin makes tokens");
    let saved = change.admin().clone();
    let token: JoinToken = admin.commit(change).token.parse().expect("a token");
    sim.hosts[0].admin = Some(saved);
    assert_eq!(token.endpoints(), [control_addr(0)]);
    // The joining host proves its key for the admin's, as `overlayctl join` does.
    let keys = Keys::new(2);
    let joiner = Joiner {
        name: Name::new("h2").expect("a name"),
        wireguard_key: keys.wireguard.public_key(),
        control_key: keys.control.verifying_key(),
    };
    let admin_cert = sim.hosts[0].core().certificate().clone();
    let claim = JoinClaim {
        network: token.network(),
        ca: token.ca_fingerprint(),
        secret: token.secret(),
        name: &joiner.name,
        control_key: &joiner.control_key,
        subnet: None,
    };
    let proof = JoinProof::prove(&claim, &keys.wireguard, &admin_cert.wireguard_key)
        .expect("a proof")
        .to_bytes();
    let request = || Request::Join {
        secret: *token.secret().as_bytes(),
        name: joiner.name.clone(),
        wireguard_key: joiner.wireguard_key,
        control_key: joiner.control_key,
        subnet: None,
        proof,
    };
    let admin = sim.hosts[0].core();
    // An admission the admin cannot save is refused, and changes nothing.
    let Answer::AfterSave(unsaved) = admin.handle_request(Origin::Joiner, request(), now) else {
        panic!("a valid join waits for the admin's state to be saved");
    };
    assert_eq!(unsaved.admin().tokens[0].used_by, Some(joiner.name.clone()));
    drop(unsaved);
    let refused = admin.refuse_join(Refused("the disk is full".into()), now);
    assert_eq!(refused, Response::Refused("the disk is full".into()));
    let Answer::AfterSave(change) = admin.handle_request(Origin::Joiner, request(), now) else {
        panic!("the token is still unused");
    };
    let saved = change.admin().clone();
    let admission = admin.commit(change);
    assert_eq!(admission.name, joiner.name);
    // Now it is used.
    let again = admin.handle_request(Origin::Joiner, request(), now);
    assert!(
        matches!(&again, Answer::Reply(Response::Refused(why)) if why.contains("already used")),
        "{again:?}"
    );
    sim.hosts[0].admin = Some(saved);
    // The joiner checks the answer and starts from it, knowing what the admin knew.
    let Response::Joined {
        certificate,
        cidr,
        ranges,
        subnet_prefix,
        bundle,
    } = admission.response
    else {
        panic!("admitted");
    };
    let answer = Joined {
        certificate,
        cidr,
        ranges,
        subnet_prefix,
        bundle,
    };
    let ca = sim.network.ca.verifying_key();
    let (net, dir) = join::accept(
        &token,
        control_addr(0),
        ca,
        &admin_cert,
        &joiner,
        answer,
        now.unix,
    )
    .expect("the joiner accepts the answer");
    assert_eq!(
        dir.live_members().count(),
        2,
        "the admin's directory came along"
    );
    let new = sim.add(keys, net, Some(dir), None);
    assert_eq!(sim.hosts[new].core().certificate().serial, 3);
    sim.run(secs(10));
    assert_eq!(sim.hosts[0].routed(), ["h1", "h2"]);
    assert_eq!(sim.hosts[1].routed(), ["h0", "h2"]);
    assert_eq!(sim.hosts[2].routed(), ["h0", "h1"]);
    assert_eq!(sim.hosts[1].state_of("h2"), Some(ViewState::Alive));
}

#[test]
fn a_stalled_member_is_suspected_refutes_and_keeps_its_routes() {
    let mut sim = converged(3);
    let generation = sim.hosts[2].core().network().generation;
    // Stopped for less than the suspicion timeout.
    sim.stall(2);
    let mut suspected = false;
    sim.run_watching(Duration::from_millis(3000), |sim| {
        suspected |= sim.hosts[0].state_of("h2") == Some(ViewState::Suspect);
    });
    assert!(suspected, "h0 suspects h2 while it does not answer");
    sim.resume(2);
    sim.run_watching(secs(10), |sim| {
        for i in [0, 1] {
            assert!(
                sim.hosts[i].routed().contains(&"h2".to_owned()),
                "a suspected member stays routed"
            );
            assert_ne!(sim.hosts[i].state_of("h2"), Some(ViewState::Down));
        }
    });
    for i in [0, 1] {
        assert_eq!(sim.hosts[i].state_of("h2"), Some(ViewState::Alive));
    }
    // foca's suspicion timer tells h2 it is down even after the refutation (its
    // `TurnUndead` does not check that the suspicion still holds): h2 then takes the next
    // generation, which the record it signs at once allows, and is renamed everywhere,
    // never withdrawn.
    let now = sim.hosts[2].core().network().clone();
    assert!(now.generation <= generation + 1);
    assert!(now.record_version >= now.generation);
    let dir = sim.hosts[0].saved.1.as_ref().expect("a saved directory");
    let h2 = dir.live_members().find(|m| m.name.as_str() == "h2");
    assert!(h2.is_some_and(|m| m.version >= now.generation));
}

#[test]
fn a_silent_member_is_declared_down_and_its_routes_withdrawn() {
    let mut sim = converged(3);
    sim.crash(2);
    sim.run(secs(15));
    for i in [0, 1] {
        let others = if i == 0 { "h1" } else { "h0" };
        assert_eq!(sim.hosts[i].routed(), [others], "h{i} withdrew h2");
        assert_eq!(sim.hosts[i].state_of("h2"), Some(ViewState::Down));
        let membership = sim.hosts[i].view.membership.as_ref().expect("a membership");
        assert_eq!(membership.member_count, 2);
    }
    // Its record stays: it comes back by itself when it returns.
    let dir = sim.hosts[0].saved.1.as_ref().expect("a saved directory");
    assert_eq!(dir.live_members().count(), 3);
}

#[test]
fn a_restarted_member_comes_back_from_what_it_saved() {
    let mut sim = converged(3);
    let before = sim.hosts[2].core().network().clone();
    sim.crash(2);
    sim.run(secs(15));
    assert_eq!(sim.hosts[0].state_of("h2"), Some(ViewState::Down));
    let core = sim.restart(2);
    // A new generation, allowed by a new record, and routes from the saved directory
    // before anyone answers.
    assert!(core.network().generation > before.generation);
    assert!(core.network().record_version >= core.network().generation);
    let routed: Vec<String> = core.peers().into_iter().filter_map(|p| p.name).collect();
    assert_eq!(routed, ["h0", "h1"]);
    sim.run(secs(10));
    for i in [0, 1] {
        assert!(
            sim.hosts[i].routed().contains(&"h2".to_owned()),
            "h{i} routes h2 again"
        );
        assert_eq!(sim.hosts[i].state_of("h2"), Some(ViewState::Alive));
    }
    assert_eq!(sim.hosts[2].routed(), ["h0", "h1"]);
}

#[test]
fn a_member_that_leaves_is_withdrawn_everywhere() {
    let mut sim = converged(3);
    let now = sim.now();
    let core = sim.hosts[2].core();
    core.leave(now).expect("it leaves");
    assert!(core.network().left);
    let actions: Vec<Action> = std::iter::from_fn(|| core.poll_action()).collect();
    // Its record is out before anything else, waited for; then nothing is routed, the
    // membership is saved as left, and the connections close.
    let first_push = actions
        .iter()
        .position(|a| matches!(a, Action::Push { .. }));
    let Some(Action::Push { bundle, wait, .. }) = first_push.map(|i| &actions[i]) else {
        panic!("the leave is pushed: {actions:?}");
    };
    assert!(*wait);
    assert_eq!(bundle.members.len(), 1);
    let peers = actions
        .iter()
        .position(|a| matches!(a, Action::Peers(p) if p.is_empty()));
    let saved = actions
        .iter()
        .position(|a| matches!(a, Action::SaveNetwork(net) if net.left));
    assert!(first_push < peers && peers < saved, "{actions:?}");
    let closed = actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Close {
                    reason: CloseReason::Left,
                    ..
                }
            )
        })
        .count();
    assert_eq!(closed, 2, "{actions:?}");
    sim.apply(2, actions);
    sim.hosts[2].core = None;
    sim.run(secs(10));
    for i in [0, 1] {
        assert_eq!(sim.hosts[i].state_of("h2"), Some(ViewState::Left));
        assert!(!sim.hosts[i].routed().contains(&"h2".to_owned()));
    }
}

#[test]
fn a_revoked_member_is_cut_off_at_once_and_ignored() {
    let mut sim = converged(3);
    let stale = sim.link(1, 2).expect("h1 is connected to h2");
    let from_h2 = sim.last_datagram[&(2, 1)].clone();
    let now = sim.now();
    let admin = sim.hosts[0].core();
    let answer = admin
        .revoke(RevokeRequest { name: "h2".into() }, now)
        .expect("the admin revokes");
    assert_eq!((answer.name.as_str(), answer.serial), ("h2", 3));
    let actions: Vec<Action> = std::iter::from_fn(|| admin.poll_action()).collect();
    // Its connections close before the revocation is pushed, so it gets nothing more.
    let to_h2 = sim.link(0, 2).expect("h0 is connected to h2");
    let close = actions.iter().position(|a| {
        matches!(a, Action::Close { link, reason: CloseReason::Lapsed(why) }
            if *link == to_h2 && why.contains("revoked"))
    });
    let push = actions
        .iter()
        .position(|a| matches!(a, Action::Push { .. }));
    assert!(close.is_some() && close < push, "{actions:?}");
    for action in &actions {
        if let Action::Push { links, wait, .. } = action {
            assert!(*wait);
            assert!(!links.contains(&to_h2));
        }
    }
    sim.apply(0, actions);
    sim.settle();
    for i in [0, 1] {
        assert!(!sim.hosts[i].routed().contains(&"h2".to_owned()));
        assert_eq!(sim.hosts[i].state_of("h2"), Some(ViewState::Revoked));
    }
    // h1 heard it by push and closed its own connection with h2; what h2 still had in
    // flight is dropped unread.
    assert!(
        sim.hosts[1]
            .closed
            .iter()
            .any(|(link, reason)| *link == stale && matches!(reason, CloseReason::Lapsed(_)))
    );
    let now = sim.now();
    let h1 = sim.hosts[1].core();
    assert!(!h1.is_current(stale, now));
    h1.handle_datagram(stale, &from_h2, now);
    let push = Request::Push(Bundle::default());
    assert!(matches!(
        h1.handle_request(Origin::Member(stale), push, now),
        Answer::Drop
    ));
    assert!(h1.poll_action().is_none());
    // And it cannot connect again.
    let cert = sim.hosts[2].core().certificate().clone();
    let refused = sim.hosts[1]
        .core()
        .handle_connected(control_addr(2), Some(cert), true, now);
    assert!(matches!(refused, Err(why) if why.contains("revoked")));
    sim.run(secs(10));
    assert_eq!(sim.hosts[1].routed(), ["h0"]);
}

/// Members started together do not ship their directories in the same second: each full
/// sync is due after half to one and a half intervals, at random.
#[test]
fn full_syncs_are_spread_over_half_to_one_and_a_half_intervals() {
    let mut sim = Sim::new(1);
    let from = sim.now().instant;
    let interval = sim::settings().sync_interval;
    let core = sim.hosts[0].core();
    let due: Vec<Duration> = (0..200).map(|_| core.next_sync(from) - from).collect();
    assert!(
        due.iter()
            .all(|d| *d >= interval / 2 && *d < interval * 3 / 2),
        "{due:?}"
    );
    let earliest = due.iter().min().expect("200 values");
    let latest = due.iter().max().expect("200 values");
    assert!(
        *latest - *earliest > interval * 3 / 4,
        "spread {earliest:?}..{latest:?}"
    );
}

#[test]
fn a_member_that_missed_gossip_catches_up_by_full_sync() {
    // Syncs a minute apart (so 30 to 90 s, spread at random): none comes while gossip
    // still carries the record.
    let mut sim = converged_with(Sim::with_sync_interval(3, secs(60)));
    // Each host swapped directories once, with the first member it reached.
    let started: Vec<usize> = sim.hosts.iter().map(|h| h.syncs).collect();
    assert!(started.iter().all(|&n| n == 1), "{started:?}");
    // A record only h0 hears of, by push, while h2's gossip is lost.
    let outsider = sim.outsider("h9", 9, "10.42.9.0/24");
    sim.deaf.insert(2);
    let link = sim.link(0, 1).expect("h0 is connected to h1");
    let now = sim.now();
    let push = Request::Push(Bundle {
        members: vec![outsider.to_bytes()],
        revocations: Vec::new(),
        policy: None,
        names: Vec::new(),
        ca_transition: None,
    });
    let answer = sim.hosts[0]
        .core()
        .handle_request(Origin::Member(link), push, now);
    assert!(matches!(
        answer,
        Answer::Reply(Response::Ack | Response::Seen(_))
    ));
    sim.run(Duration::from_millis(2500));
    sim.deaf.clear();
    assert!(
        sim.hosts[1].routed().contains(&"h9".to_owned()),
        "gossip reached h1"
    );
    // Gossip has given up on it by now: h2 still lacks it until a full sync.
    sim.run(secs(15));
    assert!(!sim.hosts[2].routed().contains(&"h9".to_owned()));
    assert!(sim.hosts.iter().zip(&started).all(|(h, &n)| h.syncs == n));
    // By 90 s every member has synced again.
    sim.run(secs(65));
    assert!(sim.hosts.iter().zip(&started).any(|(h, &n)| h.syncs > n));
    assert!(
        sim.hosts[2].routed().contains(&"h9".to_owned()),
        "caught up by sync"
    );
    assert_eq!(sim.hosts[2].state_of("h9"), Some(ViewState::Alive));
}

/// What a member turned attacker with SWIM identity `attacker` sends `target` to say that
/// `victim` is down: a gossip round of a foca of its own that holds it down.
fn forged_down(attacker: NodeId, target: NodeId, victim: NodeId) -> Vec<u8> {
    let config = sim::settings().membership.to_foca().expect("valid timings");
    let rng = rand_pcg::Pcg64Mcg::seed_from_u64(1);
    let mut foca = foca::Foca::new(attacker, config, rng, foca::PostcardCodec);
    let mut rt = foca::AccumulatingRuntime::new();
    let members = [
        foca::Member::alive(target),
        foca::Member::new(victim, 0, foca::State::Down),
    ];
    foca.apply_many(members.into_iter(), true, &mut rt)
        .expect("members to hold");
    while rt.to_send().is_some() {}
    foca.gossip(&mut rt).expect("a gossip round");
    let (to, bytes) = rt.to_send().expect("gossip to the target");
    assert_eq!(to, target);
    bytes.to_vec()
}

#[test]
fn a_down_for_a_generation_never_signed_is_ignored_and_one_signed_is_refuted() {
    let mut sim = converged(3);
    let id = |sim: &mut Sim, i: usize| {
        let core = sim.hosts[i].core();
        NodeId {
            node: core.certificate().number,
            generation: core.network().generation,
        }
    };
    let (h0, h1, h2) = (id(&mut sim, 0), id(&mut sim, 1), id(&mut sim, 2));
    // h1, turned attacker, tells h0 on its own connection that h2 is down.
    let link = sim.link(0, 1).expect("h0 is connected to h1");
    let forged = NodeId {
        generation: h2.generation + 1000,
        ..h2
    };
    let now = sim.now();
    let core = sim.hosts[0].core();
    core.handle_datagram(link, &forged_down(h1, h0, forged), now);
    assert_eq!(core.refused_updates, 1, "taken out before foca saw it");
    sim.settle();
    sim.run_watching(secs(8), |sim| {
        assert!(sim.hosts[0].routed().contains(&"h2".to_owned()));
    });
    // At the generation h2 signed, foca takes it; h2 hears it is down, takes a new
    // generation, signs a record that allows it, and is routed again within a suspicion
    // timeout.
    let now = sim.now();
    let core = sim.hosts[0].core();
    core.handle_datagram(link, &forged_down(h1, h0, h2), now);
    assert_eq!(core.refused_updates, 1);
    sim.settle();
    assert!(
        !sim.hosts[0].routed().contains(&"h2".to_owned()),
        "withdrawn"
    );
    assert_eq!(sim.hosts[0].state_of("h2"), Some(ViewState::Down));
    sim.run(secs(4));
    assert!(sim.hosts[0].routed().contains(&"h2".to_owned()), "back");
    assert_eq!(sim.hosts[0].state_of("h2"), Some(ViewState::Alive));
    assert!(sim.hosts[2].core().network().generation > h2.generation);
}

#[test]
fn gossip_in_another_members_name_is_dropped() {
    let mut sim = converged(3);
    // What h2 said to h1, replayed on h0's connection to h1: the sender is not h0.
    let from_h2 = sim.last_datagram[&(2, 1)].clone();
    let link = sim.link(1, 0).expect("h1 is connected to h0");
    let now = sim.now();
    let h1 = sim.hosts[1].core();
    h1.handle_datagram(link, &from_h2, now);
    assert!(h1.poll_action().is_none(), "no answer, no change");
}

#[test]
fn only_an_admin_makes_tokens_and_revokes_and_never_itself() {
    let mut sim = converged(2);
    let now = sim.now();
    let request = TokenRequest {
        ttl_s: 60,
        groups: Vec::new(),
    };
    let member = sim.hosts[1].core();
    assert_eq!(
        member
            .create_token(request, now)
            .map(|_| ())
            .unwrap_err()
            .status(),
        409
    );
    let revoke = |name: &str| RevokeRequest { name: name.into() };
    assert_eq!(member.revoke(revoke("h0"), now).unwrap_err().status(), 409);
    let admin = sim.hosts[0].core();
    assert_eq!(admin.revoke(revoke("h0"), now).unwrap_err().status(), 400);
    assert_eq!(
        admin.revoke(revoke("nobody"), now).unwrap_err().status(),
        404
    );
    let bad_group = TokenRequest {
        ttl_s: 60,
        groups: vec!["not a name!".into()],
    };
    assert_eq!(
        admin
            .create_token(bad_group, now)
            .map(|_| ())
            .unwrap_err()
            .status(),
        400
    );
}

/// How long after `crash(2)` h0 sees h2 down, polled every 100 ms up to 15 s.
fn time_to_down(sim: &mut Sim) -> Duration {
    sim.crash(2);
    let mut waited = Duration::ZERO;
    while sim.hosts[0].state_of("h2") != Some(ViewState::Down) && waited < secs(15) {
        sim.run(Duration::from_millis(100));
        waited += Duration::from_millis(100);
    }
    waited
}

#[test]
fn new_timings_from_a_reload_apply_to_the_running_member() {
    let mut default = converged(3);
    let before = time_to_down(&mut default);
    let mut sim = converged(3);
    for i in 0..3 {
        let mut new = sim::settings();
        new.membership.suspect_to_down_after = secs(1);
        new.sync_interval = secs(5);
        // A reload keeps these: foca cannot change them while it runs.
        new.membership.probe_period = secs(3);
        new.membership.probe_rtt = secs(2);
        let now = sim.now();
        sim.hosts[i]
            .core()
            .set_settings(new, now)
            .expect("the new timings are taken");
        assert!(
            sim.hosts[i].core().poll_timeout() <= now.instant + secs(5),
            "the next full sync comes within the new interval"
        );
    }
    let after = time_to_down(&mut sim);
    eprintln!("crash seen down after {before:?} (suspicion 4 s), {after:?} (1 s, set live)");
    assert!(
        after + secs(2) <= before,
        "a 1 s suspicion did not shorten the detection: {after:?} vs {before:?} with 4 s"
    );
    assert_eq!(sim.hosts[0].state_of("h1"), Some(ViewState::Alive));
}

/// While a roam is in progress the kernel may give the TUN's address as the source towards a
/// member (the underlay address is gone): an overlay address is never announced as where the
/// host is reached; the new underlay address is, with no address seen on the old path.
#[test]
fn a_roam_never_announces_an_overlay_address() {
    let mut sim = converged(2);
    let now = sim.now();
    let before = sim.hosts[1].core().advertise();
    sim.hosts[1]
        .core()
        .handle_address("10.42.1.1".parse().unwrap(), now);
    assert_eq!(sim.hosts[1].core().advertise(), before);
    // An address no other host can reach, which a member can make the detection find by
    // publishing it as its own endpoint, is not announced either.
    for bad in ["127.0.0.1", "169.254.1.1", "0.0.0.0", "::1", "fe80::1"] {
        sim.hosts[1]
            .core()
            .handle_address(bad.parse().unwrap(), now);
        assert_eq!(sim.hosts[1].core().advertise(), before, "{bad}");
    }
    let moved: std::net::IpAddr = "198.18.1.12".parse().unwrap();
    sim.hosts[1].core().handle_address(moved, now);
    assert_eq!(sim.hosts[1].core().advertise(), moved);
    assert_eq!(sim.hosts[1].core().reflexive(), None);
}
