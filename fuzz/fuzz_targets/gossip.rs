//! SWIM datagrams (foca's postcard encoding) as a member receives them on its QUIC
//! connections, handed to the daemon's own entry point for them: the membership core's
//! `Core::handle_datagram` (overlayd/src/control/node/core), which checks that the sender
//! is the member whose connection it came on, screens the updates about others against
//! the records they signed, hands what is left to foca, whose broadcast handler verifies
//! and applies each piggy-backed record through the directory.
//!
//! The core is fixture member h1 at its first start (SWIM identity node 1, generation 1),
//! knowing h1, h2 and h3 (records at version 1), with a connection from h2 and one from
//! h3. The input is a sequence of datagrams (two-byte length each), each handed over on
//! the connection of the member its header names as sender (h2's when it names neither,
//! which the core drops as sent in another's name); after each, what the core asks for is
//! drained and the timers due within [`HORIZON`] run on a virtual clock, a bounded number.
//!
//! Checked: nothing panics; every record the directory holds is genuine; live members
//! never overlap nor share a key.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use overlay_fuzz::{
    CIDR, NOW, assert_directory_invariants, assert_genuine, fixture, long_chunks, net,
};
use overlayd::control::node::core::{Core, LinkId, Now, Settings, Start};
use overlayd::control::state::NetworkState;
use protocol::membership::NodeId;

/// How far ahead timers are run after a datagram: foca's probes and gossip, rejoins and
/// housekeeping, not its day-long timers (the certificates would expire).
const HORIZON: Duration = Duration::from_secs(5);
/// Timer rounds after a datagram, at most.
const TIMER_ROUNDS: usize = 16;

fn settings() -> Settings {
    Settings {
        control_port: 51821,
        listen_port: 51820,
        certificate_lifetime_s: 365 * 86_400,
        follow_address: false,
        sync_interval: Duration::from_secs(30),
        rejoin_interval: Duration::from_secs(2),
        membership: protocol::membership::Config::lan(16),
        relay: None,
        max_names: protocol::records::names::DEFAULT_MAX_NAMES,
        key_rotation_s: None,
    }
}

/// `at` on both clocks, `start` being [`NOW`].
fn now(start: Instant, at: Instant) -> Now {
    Now {
        instant: at,
        unix: NOW + at.duration_since(start).as_secs(),
    }
}

/// Member h1 (see the module docs), and its connections: SWIM node number and link.
fn member(start: Instant) -> (Core, Vec<(u32, LinkId)>) {
    let f = fixture();
    let h1 = &f.members[0];
    let mut directory = f.directory();
    for i in [1, 2] {
        directory
            .apply_member(&f.alive(i, 1), NOW)
            .expect("the fixture's records are genuine");
    }
    let net = NetworkState {
        network: f.network.clone(),
        cidr: net(CIDR),
        ranges: Vec::new(),
        subnet_prefix: 24,
        ca: f.ca.verifying_key(),
        certificate: h1.certificate.clone(),
        generation: 0,
        record_version: 0,
        left: false,
        renewed_unix: None,
        bootstrap: Vec::new(),
        ca_transition: None,
        wireguard_key_since: None,
    };
    let start_at = now(start, start);
    let mut core = Core::new(
        Start {
            net,
            me: h1.body.clone(),
            directory,
            control_key: h1.key.clone(),
            wireguard_key: h1.wireguard.clone(),
            admin: None,
            advertise: [198, 18, 0, 11].into(),
            settings: settings(),
            seed: 7,
        },
        start_at,
    )
    .expect("h1 starts");
    let mut links = Vec::new();
    for (i, member) in f.members.iter().enumerate().skip(1) {
        let addr = SocketAddr::from(([198, 18, 0, 11 + i as u8], 51821));
        let (link, _) = core
            .handle_connected(addr, Some(member.body.clone()), true, start_at)
            .expect("a current member connects");
        links.push((member.body.serial as u32, link));
    }
    while core.poll_action().is_some() {}
    (core, links)
}

fn check(core: &Core, unix: u64) {
    let dir = core.directory();
    let dir = dir.lock().expect("no panic held it");
    for record in dir.member_records() {
        assert_genuine(&dir, record, unix);
    }
    assert_directory_invariants(&dir);
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let (mut core, links) = member(start);
    let mut at = start;
    for datagram in long_chunks(data) {
        let sender = foca::Codec::<NodeId>::decode_header(&mut foca::PostcardCodec, datagram)
            .map(|header| header.src.node)
            .ok();
        let link = links
            .iter()
            .find(|(node, _)| Some(*node) == sender)
            .unwrap_or(&links[0])
            .1;
        core.handle_datagram(link, datagram, now(start, at));
        while core.poll_action().is_some() {}
        let horizon = at + HORIZON;
        for _ in 0..TIMER_ROUNDS {
            let due = core.poll_timeout().max(at);
            if due > horizon {
                break;
            }
            at = due;
            core.handle_timeout(now(start, at));
            while core.poll_action().is_some() {}
        }
        check(&core, NOW + at.duration_since(start).as_secs());
    }
});
