//! The local API's request bodies (`protocol::api`, JSON) and the checks the daemon makes
//! on them before it acts.
//!
//! The first byte picks the route: `init`, `tokens`, `join` or `revoke`; the rest is the
//! body. overlayd's handlers (overlayd/src/api.rs) only parse the body and pass it to the
//! control plane, whose `init` and `join` are private and write the state directory, so
//! this target runs the same pure steps through the public functions they call: names
//! (`keys::Name`), the network's ranges (`admin::check_ranges`), the first subnet
//! (`admin::Issuer::allocate`) and the certificate (`Issuer::issue`) for `init`; the
//! token text for `join`.
//!
//! Checked: nothing panics; a body that parses survives serde_json unchanged; what `init`
//! would make is consistent: one subnet per range, each of the asked prefix length and
//! inside its range, and a certificate that verifies.
#![no_main]

use keys::{JoinToken, Name};
use libfuzzer_sys::fuzz_target;
use overlay_fuzz::{NOW, fixture};
use overlayd::control::admin::{Issuer, check_ranges};
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

/// The control plane's `init` (overlayd/src/control/mod.rs), minus the state directory.
fn init(req: &InitRequest) {
    let (Ok(network), Ok(node)) = (
        Name::new(req.network.as_str()),
        Name::new(req.name.as_str()),
    ) else {
        return;
    };
    let cidr = req.cidr.trunc();
    let prefix = req
        .subnet_prefix
        .unwrap_or(if cidr.addr().is_ipv4() { 24 } else { 64 });
    if prefix <= cidr.prefix_len() || prefix > cidr.max_prefix_len() {
        return;
    }
    let Ok(ranges) = check_ranges(cidr, &req.ranges) else {
        return;
    };
    let ca = &fixture().ca;
    let issuer = Issuer {
        ca,
        network: &network,
        cidr,
        ranges: &ranges,
        subnet_prefix: prefix,
        certificate_days: 365,
    };
    let empty = protocol::records::Directory::new(ca.verifying_key(), network.clone());
    let Ok(subnets) = issuer.allocate(&AdminState::default(), &empty, &node, req.subnet) else {
        return;
    };
    assert_eq!(subnets.len(), 1 + ranges.len(), "one subnet per range");
    for (subnet, range) in subnets.iter().zip(std::iter::once(&cidr).chain(&ranges)) {
        assert_eq!(subnet.prefix_len(), prefix, "{subnet} is not a /{prefix}");
        assert!(range.contains(subnet), "{subnet} is outside {range}");
    }
    let key = overlay_fuzz::signing_key(9);
    let certificate = issuer
        .issue(
            &node,
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
