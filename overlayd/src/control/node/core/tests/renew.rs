//! Certificate renewal and re-issue in the simulated network: members renew before their
//! certificates expire without anyone noticing, a member cut off past its expiry is left
//! out, and an admin's new groups reach a member and its peers.

use protocol::api::{MemberState as ViewState, NodeGroupsRequest};

use super::sim::{START_UNIX, Sim};
use super::{converged_with, secs};
use crate::control::msg::{Request, Response};
use crate::control::node::core::{Answer, Origin};

/// The serial of every host's certificate.
fn serials(sim: &mut Sim) -> Vec<u64> {
    (0..sim.hosts.len())
        .map(|i| sim.hosts[i].core().certificate().serial)
        .collect()
}

/// 60-second certificates for 3 minutes: every member (the admin too) renews about every
/// 40 s, each time with a higher serial; no member ever stops routing another or sees it
/// other than alive, and every certificate in force outlives the run's start by far.
#[test]
fn members_renew_60_second_certificates_and_nobody_notices() {
    let mut sim = converged_with(Sim::with_lifetime(3, 60));
    let first = serials(&mut sim);
    let mut seen = vec![first.clone()];
    let mut trouble = Vec::new();
    sim.run_watching(secs(170), |sim| {
        for (i, host) in sim.hosts.iter().enumerate() {
            let others: Vec<String> = (0..3)
                .filter(|&j| j != i)
                .map(|j| format!("h{j}"))
                .collect();
            if host.routed() != others {
                trouble.push(format!("h{i} routes {:?}", host.routed()));
            }
            for name in &others {
                if host.state_of(name) != Some(ViewState::Alive) {
                    trouble.push(format!("h{i} sees {name} as {:?}", host.state_of(name)));
                }
            }
        }
        let now: Vec<u64> = sim
            .hosts
            .iter()
            .map(|h| h.core.as_ref().expect("running").certificate().serial)
            .collect();
        if seen.last() != Some(&now) {
            seen.push(now);
        }
    });
    assert!(
        trouble.is_empty(),
        "{:?}",
        &trouble[..trouble.len().min(10)]
    );
    let last = serials(&mut sim);
    for i in 0..3 {
        // 180 s of 60-second certificates renewed at 40 s: at least 4 renewals each.
        let renewals = seen.windows(2).filter(|w| w[1][i] > w[0][i]).count();
        assert!(renewals >= 4, "h{i} renewed {renewals} times: {seen:?}");
        assert!(last[i] > first[i]);
        let cert = sim.hosts[i].core().certificate().clone();
        assert!(cert.not_after > START_UNIX + 170, "h{i}: {cert:?}");
        // Same identity: number, keys, subnets.
        assert_eq!(cert.number, i as u32 + 1);
        assert_eq!(cert.wireguard_key, sim.hosts[i].keys.wireguard.public_key());
        // What it saved is the renewed certificate, and when it took it.
        let saved = &sim.hosts[i].saved.0;
        assert_eq!(
            saved
                .certificate
                .unverified_body()
                .expect("a certificate")
                .serial,
            cert.serial
        );
        assert!(saved.renewed_unix.is_some_and(|t| t > START_UNIX + 30));
        let view = sim.hosts[i].view.membership.clone().expect("a membership");
        assert_eq!(view.certificate_serial, cert.serial);
        assert_eq!(view.certificate_expires_unix, cert.not_after);
    }
    // Serials are never issued twice.
    let mut all: Vec<u64> = seen.iter().flatten().copied().collect();
    all.sort();
    all.dedup();
    let issued = sim.hosts[0]
        .admin
        .as_ref()
        .expect("the admin saved")
        .next_serial;
    assert!(all.len() >= 3 + 12 && *all.last().unwrap() < issued);
}

/// A member cut off from every other host until past its certificate's expiry cannot
/// renew: the others drop it when its certificate expires, it stays on its old serial,
/// and when the partition heals it is still left out (its certificate is refused).
#[test]
fn a_member_cut_off_past_its_expiry_is_left_out() {
    let mut sim = converged_with(Sim::with_lifetime(3, 60));
    let before = sim.hosts[2].core().certificate().clone();
    sim.partitioned.insert(2);
    sim.run(secs(70));
    sim.partitioned.clear();
    sim.run(secs(10));
    assert_eq!(sim.hosts[2].core().certificate().serial, before.serial);
    assert!(sim.now().unix > before.not_after);
    for i in [0, 1] {
        assert!(
            !sim.hosts[i].routed().contains(&"h2".to_owned()),
            "h{i} routes h2 with an expired certificate"
        );
    }
    assert!(sim.hosts[2].routed().is_empty());
    // The others renewed meanwhile.
    assert!(sim.hosts[1].core().certificate().not_after > sim.now().unix);
    let sentence = crate::control::node::core::expired_sentence(&before);
    assert!(
        sentence.contains("overlayctl join") && sentence.contains("token"),
        "{sentence}"
    );
}

/// `overlayctl node groups h2 db,eu` on the admin: h2 takes its re-issued certificate
/// without a restart (same number and keys, higher serial, the new groups), and every
/// member routes it with the new groups within a second. The admin's own groups change at
/// once.
#[test]
fn new_groups_reach_the_member_and_its_peers() {
    let mut sim = converged_with(Sim::new(3));
    let before = sim.hosts[2].core().certificate().clone();
    let now = sim.now();
    let request = NodeGroupsRequest {
        name: "h2".into(),
        groups: vec!["db".into(), "eu".into()],
    };
    let admin = sim.hosts[0].core();
    let change = admin
        .change_groups(&request, now)
        .expect("the admin re-issues");
    let saved = change.admin().clone();
    let answer = admin.commit_groups(change, now).expect("committed");
    sim.hosts[0].admin = Some(saved);
    assert!(!answer.own && answer.serial > before.serial);
    sim.settle();
    sim.run(secs(1));
    let after = sim.hosts[2].core().certificate().clone();
    assert_eq!(after.serial, answer.serial);
    assert_eq!(
        after
            .groups
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>(),
        ["db", "eu"]
    );
    assert_eq!(
        (after.number, after.wireguard_key, &after.subnets),
        (before.number, before.wireguard_key, &before.subnets)
    );
    for i in [0, 1] {
        let spec = sim.hosts[i]
            .peers
            .iter()
            .find(|p| p.name.as_deref() == Some("h2"))
            .expect("h2 is routed");
        assert_eq!(spec.groups, after.groups, "h{i}");
        assert_eq!(sim.hosts[i].state_of("h2"), Some(ViewState::Alive));
    }
    // Its next renewal keeps them.
    let now = sim.now();
    let admin = sim.hosts[0].core();
    let own = NodeGroupsRequest {
        name: "h0".into(),
        groups: vec!["admins".into()],
    };
    let change = admin.change_groups(&own, now).expect("its own");
    let answer = admin.commit_groups(change, now).expect("committed");
    assert!(answer.own);
    assert_eq!(
        sim.hosts[0].core().certificate().groups[0].to_string(),
        "admins"
    );
    // A name nobody holds, or bad groups: clear refusals.
    let admin = sim.hosts[0].core();
    let unknown = NodeGroupsRequest {
        name: "nobody".into(),
        groups: vec![],
    };
    assert!(admin.change_groups(&unknown, now).is_err());
    let bad = NodeGroupsRequest {
        name: "h1".into(),
        groups: vec!["Not A Group".into()],
    };
    assert!(admin.change_groups(&bad, now).is_err());
    // Not an admin.
    let member = sim.hosts[1].core();
    assert!(member.change_groups(&request, now).is_err());
}

/// Attacks on the re-issue path: a member hands another member a real certificate of a
/// third (CA-signed, but not a re-issue of the receiver's); a member replays the
/// receiver's own older certificate. Both refused; the receiver keeps its certificate. A
/// non-admin asked to renew refuses.
#[test]
fn only_a_re_issue_of_ones_own_certificate_is_taken() {
    let mut sim = converged_with(Sim::new(3));
    let now = sim.now();
    let h1_cert = sim.hosts[1].saved.0.certificate.to_bytes();
    let h2_old = sim.hosts[2].saved.0.certificate.to_bytes();
    let link = sim.link(2, 1).expect("h2 is connected to h1");
    let h2 = sim.hosts[2].core();
    let serial = h2.certificate().serial;
    let answer = h2.handle_request(Origin::Member(link), Request::Reissued(h1_cert), now);
    assert!(
        matches!(&answer, Answer::Reply(Response::Refused(why)) if why.contains("not a re-issue")),
        "{answer:?}"
    );
    let answer = h2.handle_request(Origin::Member(link), Request::Reissued(h2_old), now);
    assert!(
        matches!(&answer, Answer::Reply(Response::Refused(why)) if why.contains("not newer")),
        "{answer:?}"
    );
    let answer = h2.handle_request(Origin::Member(link), Request::Reissued(vec![1, 2, 3]), now);
    assert!(matches!(answer, Answer::Reply(Response::Refused(_))));
    assert_eq!(h2.certificate().serial, serial);
    let answer = h2.handle_request(Origin::Member(link), Request::Renew, now);
    assert!(
        matches!(&answer, Answer::Reply(Response::Refused(why)) if why.contains("not an admin")),
        "{answer:?}"
    );
}

/// The relays every member uses, by name, as host `i` sees them.
fn relay_names(sim: &mut Sim, i: usize) -> Vec<String> {
    let dir = sim.hosts[i].core().directory();
    let keys = crate::control::node::relays(&dir);
    let dir = dir.lock().unwrap();
    keys.iter()
        .map(|k| {
            dir.live_members()
                .find(|m| m.wireguard_key == k)
                .map(|m| m.name.to_string())
                .unwrap()
        })
        .collect()
}

/// Any public member relays by default, so a member could take the traffic of pairs
/// behind NATs and drop it. Once an admin gives a member the certificate group `relay`,
/// only such members relay, on every host.
#[test]
fn the_relay_group_pins_the_relays_to_what_the_ca_signed() {
    let mut sim = converged_with(Sim::new(3));
    assert_eq!(relay_names(&mut sim, 1), ["h0", "h1", "h2"]);
    let now = sim.now();
    let request = NodeGroupsRequest {
        name: "h2".into(),
        groups: vec!["relay".into()],
    };
    let admin = sim.hosts[0].core();
    let change = admin.change_groups(&request, now).expect("re-issued");
    let saved = change.admin().clone();
    admin.commit_groups(change, now).expect("committed");
    sim.hosts[0].admin = Some(saved);
    sim.settle();
    sim.run(secs(1));
    for i in 0..3 {
        assert_eq!(relay_names(&mut sim, i), ["h2"], "h{i}");
    }
}
