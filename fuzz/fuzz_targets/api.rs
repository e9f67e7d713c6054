//! The local API's request bodies (`protocol::api`, JSON) and the checks the daemon makes
//! on them before it acts.
//!
//! The first byte picks the route: `init`, `tokens`, `join` or `revoke`; the rest is the
//! body. overlayd's handlers (overlayd/src/api.rs) only parse the body and pass it to the
//! control plane, whose `init` and `join` are private and write the state directory, so
//! this target runs the same pure steps through the public functions they call: for `init`
//! its own checks of the names, the ranges and the subnet prefix
//! (`control::InitPlan::check`), its issuer (`InitPlan::issuer`), the first subnet
//! (`admin::Issuer::allocate`) and the certificate (`Issuer::issue`); the token text for
//! `join`.
//!
//! Checked: nothing panics; a body that parses survives serde_json unchanged; what `init`
//! would make is consistent: one subnet per range, each of the asked prefix length and
//! inside its range, and a certificate that verifies.
#![no_main]

use keys::{JoinToken, Name};
use libfuzzer_sys::fuzz_target;
use overlay_fuzz::{NOW, fixture};
use overlayd::control::InitPlan;
use overlayd::control::state::AdminState;
use protocol::api::{InitRequest, JoinRequest, RevokeRequest, TokenRequest};

fn round_trip<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let text = serde_json::to_string(value).expect("a request serializes");
    let back: T = serde_json::from_str(&text).expect("a serialized request parses");
    assert_eq!(&back, value, "a request changed through JSON");
}

/// The control plane's `init` (overlayd/src/control/mod.rs), minus the state directory:
/// its checks (`InitPlan::check`) and its issuer, then what it allocates and certifies.
fn init(req: &InitRequest) {
    let Ok(plan) = InitPlan::check(req) else {
        return;
    };
    let (cidr, prefix) = (plan.cidr, plan.subnet_prefix);
    let ca = &fixture().ca;
    let issuer = plan.issuer(ca, 365);
    let empty = protocol::records::Directory::new(ca.verifying_key(), plan.network.clone());
    let Ok(subnets) = issuer.allocate(&AdminState::default(), &empty, &plan.node, req.subnet)
    else {
        return;
    };
    assert_eq!(subnets.len(), 1 + plan.ranges.len(), "one subnet per range");
    for (subnet, range) in subnets
        .iter()
        .zip(std::iter::once(&cidr).chain(&plan.ranges))
    {
        assert_eq!(subnet.prefix_len(), prefix, "{subnet} is not a /{prefix}");
        assert!(range.contains(subnet), "{subnet} is outside {range}");
    }
    let key = overlay_fuzz::signing_key(9);
    let certificate = issuer
        .issue(
            &plan.node,
            overlay_fuzz::wireguard_key(9).public_key(),
            key.verifying_key(),
            subnets.clone(),
            Vec::new(),
            1,
            NOW,
        )
        .expect("what allocate gives can be certified");
    let cert = certificate
        .verify(&ca.verifying_key(), NOW)
        .expect("a fresh certificate verifies");
    assert_eq!(cert.subnets, subnets);
}

fuzz_target!(|data: &[u8]| {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    match route % 4 {
        0 => {
            if let Ok(req) = serde_json::from_slice::<InitRequest>(body) {
                round_trip(&req);
                init(&req);
            }
        }
        1 => {
            if let Ok(req) = serde_json::from_slice::<TokenRequest>(body) {
                round_trip(&req);
                for g in &req.groups {
                    let _ = Name::new(g.as_str());
                }
            }
        }
        2 => {
            if let Ok(req) = serde_json::from_slice::<JoinRequest>(body) {
                round_trip(&req);
                let _ = req.token.parse::<JoinToken>();
                let _ = Name::new(req.name.as_str());
            }
        }
        _ => {
            if let Ok(req) = serde_json::from_slice::<RevokeRequest>(body) {
                round_trip(&req);
                let _ = Name::new(req.name.as_str());
            }
        }
    }
});
