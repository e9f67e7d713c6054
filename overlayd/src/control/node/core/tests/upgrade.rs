//! Part 6 of issue 18: a state directory written before renewal existed (certificates of
//! format version 1, `admin.json` without member numbers or groups, `network.json` without
//! `renewed_unix`) is read, and renewal upgrades it: the admin renews its own certificate
//! and a member's, both in format version 2 with the member's number kept, and everything
//! saved is read back.
//!
//! The fixture `overlayd/tests/fixtures/state-before-renewal/` was made with the code
//! before this change (`testnet up --hosts 2 --containers 0`: `overlayctl init` on h1,
//! `token create` and `join` on h2), copied as the daemons left it: per host its state
//! directory and its WireGuard key (`private.key`, which testnet keeps beside the state
//! directory).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use keys::{NodeCertificate, SignedCertificate};

use super::super::{Action, Answer, Core, Now, Origin, Start, renew_at};
use super::sim::settings;
use crate::control::msg::{Request, Response};
use crate::control::state::{NetworkState, StateDir};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/state-before-renewal"
);

/// A copy of the fixture's host `host` in a folder of its own, with the modes the daemon
/// wants (git keeps none): 0700 for the folder, 0600 for the keys.
fn copy_of(host: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).expect("a state folder");
    let from = Path::new(FIXTURE).join(host);
    for entry in std::fs::read_dir(from.join("state")).expect("the fixture") {
        let entry = entry.expect("an entry");
        let to = state.join(entry.file_name());
        std::fs::copy(entry.path(), &to).expect("a copy");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("0600");
    }
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("0700");
    let key = tmp.path().join("private.key");
    std::fs::copy(from.join("private.key"), &key).expect("the WireGuard key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("0600");
    (tmp, state)
}

/// What a daemon reads from `state` at start, as `Member::start` reads it.
struct Loaded {
    dir: StateDir,
    start: Start,
}

fn load(state: &Path, now: Now) -> Loaded {
    let dir = StateDir::open(state).expect("the state folder");
    let net = dir.network().expect("network.json").expect("a membership");
    assert!(net.renewed_unix.is_none());
    let me = net
        .certificate
        .verify(&net.ca, now.unix)
        .expect("the old certificate verifies");
    let control_key = dir.control_key().expect("control.key");
    assert_eq!(control_key.verifying_key(), me.control_key);
    let wireguard_key =
        keys::read_private_key_file(&state.parent().expect("a parent").join("private.key"))
            .expect("private.key");
    assert_eq!(wireguard_key.public_key(), me.wireguard_key);
    let admin = dir
        .ca_key()
        .expect("ca.key")
        .map(|ca| (ca, dir.admin().expect("admin.json")));
    let directory = dir
        .directory(&net.ca, &net.network)
        .expect("directory.json");
    assert_eq!(
        directory.live_members().count(),
        2,
        "both members were saved"
    );
    let advertise = directory
        .live_member(&me.node)
        .and_then(|m| m.endpoints.first())
        .expect("its own record names its address")
        .ip();
    Loaded {
        dir,
        start: Start {
            net,
            me,
            directory,
            control_key,
            wireguard_key,
            admin,
            advertise,
            settings: settings(),
            seed: 7,
        },
    }
}

/// Carries out what the core asked of its state folder (network, admin) and returns the
/// certificate it now presents in TLS, if it changed.
fn save(core: &mut Core, dir: &StateDir) -> Option<SignedCertificate> {
    let mut presented = None;
    while let Some(action) = core.poll_action() {
        match action {
            Action::SaveNetwork(net) => dir.save_network(&net).expect("saved"),
            Action::SaveAdmin(admin) => dir.save_admin(&admin).expect("saved"),
            Action::SaveDirectory(d) => dir.save_directory(&d).expect("saved"),
            Action::Identity(cert) => presented = Some(cert),
            _ => {}
        }
    }
    presented
}

fn body(cert: &SignedCertificate) -> NodeCertificate {
    cert.unverified_body().expect("a certificate")
}

#[test]
fn a_state_directory_from_before_renewal_is_read_and_upgraded() {
    let (_admin_tmp, admin_state) = copy_of("h1");
    let (_member_tmp, member_state) = copy_of("h2");
    // The fixture's certificates are of format version 1.
    let saved_certificate = |state: &Path| -> SignedCertificate {
        let raw: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(state.join("network.json")).expect("network.json"),
        )
        .expect("JSON");
        let cert: SignedCertificate = raw["certificate"]
            .as_str()
            .expect("text")
            .parse()
            .expect("a certificate");
        assert_eq!(
            cert.body()[0],
            1,
            "the fixture holds a version-1 certificate"
        );
        cert
    };
    let old = saved_certificate(&admin_state);
    let admin_json = std::fs::read_to_string(admin_state.join("admin.json")).expect("admin");
    assert!(!admin_json.contains("number"), "{admin_json}");

    // Two thirds into both certificates: their renewals are due.
    let old_admin = body(&old);
    let unix = renew_at(&old_admin).max(renew_at(&body(&saved_certificate(&member_state)))) + 1;
    let now = Now {
        instant: Instant::now(),
        unix,
    };
    let admin = load(&admin_state, now);
    let member = load(&member_state, now);
    let old_member = member.start.me.clone();
    // A version-1 certificate's number is its serial (what it had as its SWIM identity).
    assert_eq!(old_admin.number as u64, old_admin.serial);
    assert_eq!(old_member.number as u64, old_member.serial);
    let member_addr = SocketAddr::new(member.start.advertise, settings().control_port);
    let admin_addr = member.start.net.bootstrap[0];

    let mut h1 = Core::new(admin.start, now).expect("the admin starts");
    let mut h2 = Core::new(member.start, now).expect("the member starts");
    save(&mut h1, &admin.dir);
    save(&mut h2, &member.dir);

    // The admin renews its own at its first housekeeping.
    h1.handle_timeout(now);
    let presented = save(&mut h1, &admin.dir).expect("the admin presents a new certificate");
    let renewed = body(&presented);
    assert_eq!(presented.body()[0], 2, "renewed in format version 2");
    assert!(renewed.serial > old_admin.serial);
    assert_eq!(renewed.number, old_admin.number);
    assert_eq!(
        (renewed.wireguard_key, &renewed.subnets, &renewed.groups),
        (
            old_admin.wireguard_key,
            &old_admin.subnets,
            &old_admin.groups
        )
    );
    assert!(renewed.not_after > old_admin.not_after);

    // The member asks the admin over a connection; the admin re-issues the certificate the
    // member proved.
    let (to_admin, _) = h2
        .handle_connected(admin_addr, Some(renewed.clone()), false, now)
        .expect("the member connects");
    h2.handle_timeout(now);
    let asked = std::iter::from_fn(|| h2.poll_action())
        .any(|a| matches!(a, Action::Renew { link } if link == to_admin));
    assert!(asked, "the member asks for a renewal");
    let (from_member, _) = h1
        .handle_connected(member_addr, Some(old_member.clone()), true, now)
        .expect("the admin accepts");
    let Answer::AfterSave(change) =
        h1.handle_request(Origin::Member(from_member), Request::Renew, now)
    else {
        panic!("the admin renews");
    };
    admin.dir.save_admin(change.admin()).expect("saved");
    let response = h1.commit(change).response;
    assert!(matches!(response, Response::Renewed { .. }));
    h2.handle_renewed(to_admin, Ok(response), now);
    let member_new = body(&save(&mut h2, &member.dir).expect("the member presents a new one"));
    assert!(member_new.serial > renewed.serial);
    assert_eq!(member_new.number, old_member.number);

    // Everything saved reads back: the upgraded files.
    let net: NetworkState = member.dir.network().expect("read").expect("a membership");
    assert_eq!(body(&net.certificate), member_new);
    assert_eq!(net.renewed_unix, Some(unix));
    let net = admin.dir.network().expect("read").expect("a membership");
    assert_eq!(body(&net.certificate), renewed);
    let issued = admin.dir.admin().expect("admin.json");
    let entry = &issued.issued[&member_new.node];
    assert_eq!(
        (entry.serial, entry.number()),
        (member_new.serial, member_new.number)
    );
    assert!(issued.next_serial > member_new.serial);
    // The member's new record reached the admin's directory (pushed on its link) or is
    // applied from the member's saved directory: either way the admin takes it.
    let saved = member
        .dir
        .directory(&net.ca, &net.network)
        .expect("the member's directory reads back");
    let record = saved
        .member_records()
        .find(|r| {
            r.record()
                .certificate
                .unverified_body()
                .is_ok_and(|c| c.node == member_new.node)
        })
        .expect("its own record");
    let mut admins = admin
        .dir
        .directory(&net.ca, &net.network)
        .expect("the admin's directory reads back");
    let _ = admins.apply_member(record, unix);
    let held = admins
        .member_certificate(&member_new.node)
        .expect("the member");
    assert_eq!(held.serial, member_new.serial);
}
