//! Hole punching at a time agreed through a third member (`core::rendezvous`): h0 public,
//! h1 and h2 behind NATs that let a connection in only from a host they punched towards in
//! the last second; one UDP port.

use std::collections::HashSet;
use std::time::Duration;

use protocol::api::RevokeRequest;

use super::super::{Action, Answer, Origin};
use super::secs;
use super::sim::{Sim, nat_addr};
use crate::control::msg::{Request, Response};

/// h0 public, h1 and h2 behind NATs. h1 and h2 are started twice: the first time they
/// know only h0's address and learn the directory from it; the second (now), they start
/// from it, as a joined host does, and take what h0 sees of them.
fn natted() -> Sim {
    let mut sim = Sim::new(3);
    sim.one_port = true;
    sim.natted = HashSet::from([1, 2]);
    for i in 0..3 {
        sim.crash(i);
        sim.restart(i);
    }
    sim.run(secs(5));
    for i in [1, 2] {
        sim.crash(i);
    }
    for i in [1, 2] {
        sim.restart(i);
    }
    sim.punches.clear();
    sim
}

fn actions(sim: &mut Sim, host: usize) -> Vec<Action> {
    let core = sim.hosts[host].core();
    std::iter::from_fn(|| core.poll_action()).collect()
}

fn asks(actions: &[Action]) -> Vec<&Request> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Ask { request, .. } => Some(request),
            _ => None,
        })
        .collect()
}

#[test]
fn two_members_behind_nats_meet_through_a_third_and_fire_together() {
    let mut sim = natted();
    // They learn each other's records (published at their NATs' addresses) from h0, and
    // their own dials miss: each NAT drops what the other sends first.
    let mut apart = Duration::ZERO;
    let step = Duration::from_millis(100);
    while sim.link(1, 2).is_none() {
        sim.run(step);
        apart += step;
        assert!(
            apart < secs(10),
            "h1 and h2 never connected: {:?} {:?} {:?} {:?}",
            sim.hosts[1].core().reflexive(),
            sim.hosts[0].core().rendezvous_counts(),
            sim.hosts[1].core().rendezvous_counts(),
            sim.punches
        );
    }
    eprintln!("h1 and h2 connected {apart:?} after starting");
    // Both published their NAT's address: the rendezvous is for members behind NATs.
    assert_eq!(sim.hosts[1].core().reflexive(), Some(nat_addr(1)));
    assert_eq!(sim.hosts[2].core().reflexive(), Some(nat_addr(2)));
    // Through h0, the only member connected to both.
    let (forwarded, _, _) = sim.hosts[0].core().rendezvous_counts();
    assert!(forwarded >= 1, "h0 forwarded no proposal");
    let received: u64 = [1, 2]
        .iter()
        .map(|&i| sim.hosts[i].core().rendezvous_counts().1)
        .sum();
    assert!(received >= 1, "nobody took a proposal");
    // Both fired, at the same instant (the transit is instant here), each at the other.
    let one = sim.punches.iter().find(|p| (p.0, p.1) == (1, 2));
    let two = sim.punches.iter().find(|p| (p.0, p.1) == (2, 1));
    let (Some(one), Some(two)) = (one, two) else {
        panic!("not both fired: {:?}", sim.punches)
    };
    assert_eq!(one.2, two.2, "they fired at different times");
    // Not on learning the records: after the dial on learning had its chance.
    assert!(apart >= Duration::from_millis(1000), "{apart:?}");
    // Once connected, nothing more is asked.
    let before = sim.hosts[0].core().rendezvous_counts().0;
    sim.run(secs(30));
    assert_eq!(sim.hosts[0].core().rendezvous_counts().0, before);
    assert!(sim.link(1, 2).is_some() || sim.link(2, 1).is_some());
}

#[test]
fn public_members_ask_for_no_rendezvous_with_each_other() {
    let mut sim = Sim::new(3);
    sim.one_port = true;
    for i in 0..3 {
        sim.crash(i);
        sim.restart(i);
    }
    sim.run(secs(10));
    for i in 0..3 {
        assert_eq!(sim.hosts[i].core().rendezvous_counts(), (0, 0, 0));
    }
    assert!(sim.punches.is_empty());
}

#[test]
fn a_third_member_forwards_only_between_current_members_within_a_rate() {
    let mut sim = natted();
    sim.run(secs(1) / 2);
    let now = sim.now();
    let h1_on_h0 = sim.link(0, 1).expect("h0 serves h1");
    let h2_on_h0 = sim.link(0, 2).expect("h0 serves h2");
    let h1 = sim.hosts[1].core().certificate().number;
    let h2 = sim.hosts[2].core().certificate().number;
    let h0 = sim.hosts[0].core().certificate().number;
    actions(&mut sim, 0);
    let ask = |with| Request::Rendezvous {
        with,
        delay_ms: 300,
    };

    // A joiner (no certificate) gets a refusal and makes h0 send nothing.
    let admin = sim.hosts[0].core();
    let answer = admin.handle_request(Origin::Joiner, ask(h2), now);
    assert!(
        matches!(answer, Answer::Reply(Response::Refused(_))),
        "{answer:?}"
    );
    let punch = Request::Punch {
        from: h1,
        delay_ms: 300,
    };
    let answer = admin.handle_request(Origin::Joiner, punch, now);
    assert!(
        matches!(answer, Answer::Reply(Response::Refused(_))),
        "{answer:?}"
    );
    assert!(asks(&actions(&mut sim, 0)).is_empty());

    // A member naming no member, itself, or the third member itself: refused.
    let admin = sim.hosts[0].core();
    for with in [99, h1, h0] {
        let answer = admin.handle_request(Origin::Member(h1_on_h0), ask(with), now);
        assert!(
            matches!(answer, Answer::Reply(Response::Refused(_))),
            "{with}: {answer:?}"
        );
    }
    let too_long = Request::Rendezvous {
        with: h2,
        delay_ms: 60_000,
    };
    let answer = admin.handle_request(Origin::Member(h1_on_h0), too_long, now);
    assert!(matches!(answer, Answer::Reply(Response::Refused(_))));
    assert!(asks(&actions(&mut sim, 0)).is_empty());

    // A member naming another: passed on to that member's connection, with the asker's
    // number and no address.
    sim.run(secs(5));
    let now = sim.now();
    let admin = sim.hosts[0].core();
    let answer = admin.handle_request(Origin::Member(h1_on_h0), ask(h2), now);
    assert!(matches!(answer, Answer::Reply(Response::Ack)), "{answer:?}");
    let out = actions(&mut sim, 0);
    let sent: Vec<_> = out
        .iter()
        .filter_map(|a| match a {
            Action::Ask { link, request } => Some((*link, request.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        sent,
        [(
            h2_on_h0,
            Request::Punch {
                from: h1,
                delay_ms: 300
            }
        )]
    );

    // The rate: a burst of asks from h1 is cut off (6 at once, 2 a second after).
    let admin = sim.hosts[0].core();
    let answers: Vec<bool> = (0..20)
        .map(|_| {
            matches!(
                admin.handle_request(Origin::Member(h1_on_h0), ask(h2), now),
                Answer::Reply(Response::Ack)
            )
        })
        .collect();
    let taken = answers.iter().filter(|a| **a).count();
    assert_eq!(taken, 5, "{answers:?}");
    assert_eq!(asks(&actions(&mut sim, 0)).len(), 5);
    // h2 is not charged for h1's asks.
    let admin = sim.hosts[0].core();
    let answer = admin.handle_request(Origin::Member(h2_on_h0), ask(h1), now);
    assert!(matches!(answer, Answer::Reply(Response::Ack)), "{answer:?}");
}

#[test]
fn a_revoked_member_cannot_make_a_third_member_send_anything() {
    let mut sim = natted();
    sim.run(secs(5));
    let h1_on_h0 = sim.link(0, 1).expect("h0 serves h1");
    let h2 = sim.hosts[2].core().certificate().number;
    let h1 = sim.hosts[1].core().certificate().number;
    let now = sim.now();
    // Before: h1's ask is passed on (the attack works while h1 is a member).
    let admin = sim.hosts[0].core();
    let ask = Request::Rendezvous {
        with: h2,
        delay_ms: 300,
    };
    let answer = admin.handle_request(Origin::Member(h1_on_h0), ask.clone(), now);
    assert!(matches!(answer, Answer::Reply(Response::Ack)));
    assert_eq!(asks(&actions(&mut sim, 0)).len(), 1);
    // h1 revoked: its ask on the connection it still has gets no answer and nothing sent.
    let admin = sim.hosts[0].core();
    admin
        .revoke(RevokeRequest { name: "h1".into() }, now)
        .expect("the admin revokes");
    let out = actions(&mut sim, 0);
    sim.apply(0, out);
    let now = sim.now();
    let admin = sim.hosts[0].core();
    assert!(matches!(
        admin.handle_request(Origin::Member(h1_on_h0), ask, now),
        Answer::Drop
    ));
    assert!(asks(&actions(&mut sim, 0)).is_empty());
    // Nor can a proposal name it: h2 refuses one from h1, and the third does not forward
    // asks about it.
    let h2_on_h0 = sim.link(0, 2).expect("h0 serves h2");
    let admin = sim.hosts[0].core();
    let about = Request::Rendezvous {
        with: h1,
        delay_ms: 300,
    };
    let answer = admin.handle_request(Origin::Member(h2_on_h0), about, now);
    assert!(matches!(answer, Answer::Reply(Response::Refused(_))));
    let h0_on_h2 = sim.link(2, 0).expect("h2 serves h0");
    let member = sim.hosts[2].core();
    let punch = Request::Punch {
        from: h1,
        delay_ms: 300,
    };
    let answer = member.handle_request(Origin::Member(h0_on_h2), punch, now);
    assert!(matches!(answer, Answer::Reply(Response::Refused(_))));
    sim.run(secs(3));
    let after: Vec<_> = sim.punches.iter().filter(|p| p.2 >= now.instant).collect();
    assert!(after.iter().all(|p| p.0 != 1 && p.1 != 1), "{after:?}");
}

#[test]
fn a_proposal_fires_at_the_agreed_time_to_the_record_address() {
    let mut sim = natted();
    sim.run(secs(1) / 2);
    let h0_on_h2 = sim.link(2, 0).expect("h2 serves h0");
    let h1 = sim.hosts[1].core().certificate().number;
    actions(&mut sim, 2);
    let start = sim.now();
    let member = sim.hosts[2].core();
    let punch = Request::Punch {
        from: h1,
        delay_ms: 500,
    };
    let answer = member.handle_request(Origin::Member(h0_on_h2), punch, start);
    assert!(matches!(answer, Answer::Reply(Response::Ack)), "{answer:?}");
    assert!(member.poll_timeout() <= start.instant + Duration::from_millis(500));
    // Nothing before the agreed time.
    let mut early = start;
    early.instant += Duration::from_millis(490);
    member.handle_timeout(early);
    let out: Vec<Action> = std::iter::from_fn(|| member.poll_action()).collect();
    assert!(!out.iter().any(|a| matches!(a, Action::Punch { .. })));
    // At it: to h1's control address as its signed record gives it (its NAT's).
    let mut due = start;
    due.instant += Duration::from_millis(500);
    member.handle_timeout(due);
    let out: Vec<Action> = std::iter::from_fn(|| member.poll_action()).collect();
    let punched: Vec<_> = out
        .iter()
        .filter_map(|a| match a {
            Action::Punch { addr, .. } => Some(*addr),
            _ => None,
        })
        .collect();
    assert_eq!(punched, [nat_addr(1)]);
}
