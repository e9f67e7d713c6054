//! The Docker plugin's JSON (`overlayd::docker::wire`, as dockerd posts it) and the
//! bookkeeping each call drives (`docker::book::Book`, pure), as `Plugin::call` does
//! minus the links, nft and the state file.
//!
//! The input is a sequence of calls (two-byte length, then a method byte and the JSON
//! body); each is parsed as `Plugin::call` parses it (an all-whitespace body is the
//! default request) and applied to one book that starts empty, on a host whose slice is
//! 10.42.7.0/24 of the range 10.42.0.0/16.
//!
//! Checked: nothing panics; an address handed out is inside its pool's slice, neither its
//! network, gateway nor broadcast address, and never handed out twice while held; an
//! endpoint's address is in its network's slice; bridge and veth names are interface names
//! made of the prefix and hex digits only (they reach `ip` and nft scripts); the book
//! survives serde_json unchanged (it is the plugin's state file).
#![no_main]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use libfuzzer_sys::fuzz_target;
use overlay_fuzz::long_chunks;
use overlayd::docker::book::{self, Book, GATEWAY_TYPE, REQUEST_ADDRESS_TYPE};
use overlayd::docker::{filter, wire};
use serde_json::Value;

const MTU: u16 = 1420;

/// `Plugin::call`'s parse: an empty or all-whitespace body is the default request.
fn parse<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Option<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some(T::default());
    }
    serde_json::from_slice(body).ok()
}

fn is_link_name(name: &str, prefix: &str) -> bool {
    name.len() <= 15
        && name
            .strip_prefix(prefix)
            .is_some_and(|hex| hex.chars().all(|c| c.is_ascii_hexdigit()))
}

fn check(book: &Book, held: &BTreeSet<(String, Ipv4Addr)>) {
    for (id, pool) in &book.pools {
        let gateway = book::gateway_of(pool.slice);
        for a in &pool.addresses {
            assert!(
                pool.slice.contains(a),
                "{a} handed out outside {}",
                pool.slice
            );
            assert!(
                *a != gateway && *a != pool.slice.network() && *a != pool.slice.broadcast(),
                "{a} is a reserved address of {}",
                pool.slice
            );
        }
        for (pool_id, a) in held {
            if pool_id == id {
                assert!(
                    pool.addresses.contains(a),
                    "{a} was handed out but is not held"
                );
            }
        }
    }
    for n in book.networks.values() {
        assert!(
            is_link_name(&n.bridge, "ovdb"),
            "bridge name {:?}",
            n.bridge
        );
    }
    for e in book.endpoints.values() {
        assert!(
            is_link_name(&e.host_veth, "ovdh"),
            "veth name {:?}",
            e.host_veth
        );
        assert!(
            is_link_name(&e.container_veth, "ovdc"),
            "veth name {:?}",
            e.container_veth
        );
        if let Ok(n) = book.network(&e.network) {
            assert!(
                n.slice.contains(&e.address.addr()),
                "{} outside {}",
                e.address,
                n.slice
            );
        }
    }
    let script = filter::ruleset("ovl0", &book.isolated(), &book.forwards());
    assert!(!script.contains('\0'));
    let text = serde_json::to_string(book).expect("a book serializes");
    let back: Book = serde_json::from_str(&text).expect("a saved book loads");
    assert_eq!(&back, book, "the book changed through its state file");
}

fuzz_target!(|data: &[u8]| {
    let slices: [Ipv4Net; 1] = ["10.42.7.0/24".parse().unwrap()];
    let ranges: [Ipv4Net; 1] = ["10.42.0.0/16".parse().unwrap()];
    let mut book = Book::default();
    // (PoolID, address) of every container address handed out and not released.
    let mut held: BTreeSet<(String, Ipv4Addr)> = BTreeSet::new();
    for call in long_chunks(data) {
        let Some((&method, body)) = call.split_first() else {
            continue;
        };
        match method % 11 {
            0 => {
                let Some(req) = parse::<wire::RequestPool>(body) else {
                    continue;
                };
                let options: Vec<String> =
                    req.options.iter().flat_map(|o| o.keys().cloned()).collect();
                let _ = book.request_pool(
                    Some(&slices),
                    &ranges,
                    &req.pool,
                    &req.sub_pool,
                    req.v6,
                    &options,
                );
            }
            1 => {
                let Some(req) = parse::<wire::ReleasePool>(body) else {
                    continue;
                };
                book.release_pool(&req.pool_id);
                held.retain(|(p, _)| *p != req.pool_id);
            }
            2 => {
                let Some(req) = parse::<wire::AddressRequest>(body) else {
                    continue;
                };
                let gateway = req
                    .options
                    .as_ref()
                    .and_then(|o| o.get(REQUEST_ADDRESS_TYPE))
                    .and_then(Value::as_str)
                    == Some(GATEWAY_TYPE);
                if let Ok(a) = book.request_address(&req.pool_id, &req.address, gateway)
                    && !gateway
                {
                    assert!(
                        held.insert((req.pool_id.clone(), a.addr())),
                        "{} handed out twice",
                        a.addr()
                    );
                }
            }
            3 => {
                let Some(req) = parse::<wire::AddressRequest>(body) else {
                    continue;
                };
                book.release_address(&req.pool_id, &req.address);
                let plain = req.address.split('/').next().unwrap_or(&req.address);
                if let Ok(a) = plain.parse::<Ipv4Addr>() {
                    held.remove(&(req.pool_id.clone(), a));
                }
            }
            4 => {
                let Some(req) = parse::<wire::CreateNetwork>(body) else {
                    continue;
                };
                let (options, ipv6) = wire::generic_options(&req);
                let ipv6 = ipv6 || req.ipv6_data.as_ref().is_some_and(|d| !d.is_empty());
                let pools: Vec<(String, String)> = req
                    .ipv4_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|d| (d.pool, d.gateway))
                    .collect();
                if let Ok(n) = book.check_network(&req.network_id, &pools, ipv6, &options, MTU) {
                    assert!((book::MIN_MTU..=MTU).contains(&n.mtu), "mtu {}", n.mtu);
                    book.add_network(&req.network_id, n);
                }
            }
            5 => {
                let Some(req) = parse::<wire::NetworkRef>(body) else {
                    continue;
                };
                book.remove_network(&req.network_id);
            }
            6 => {
                let Some(req) = parse::<wire::CreateEndpoint>(body) else {
                    continue;
                };
                let interface = req.interface.unwrap_or_default();
                if !interface.address_ipv6.is_empty() {
                    continue;
                }
                if let Ok(e) =
                    book.check_endpoint(&req.network_id, &req.endpoint_id, &interface.address)
                {
                    book.add_endpoint(&req.endpoint_id, e);
                }
            }
            7 => {
                let Some(req) = parse::<wire::NetworkRef>(body) else {
                    continue;
                };
                book.remove_endpoint(&req.endpoint_id);
            }
            8 => {
                let Some(req) = parse::<wire::NetworkRef>(body) else {
                    continue;
                };
                let raw: Value = parse::<Option<Value>>(body)
                    .flatten()
                    .unwrap_or(Value::Null);
                let bindings: Vec<book::PortBinding> =
                    match raw.pointer("/Options/com.docker.network.portmap") {
                        None | Some(Value::Null) => Vec::new(),
                        Some(v) => match serde_json::from_value(v.clone()) {
                            Ok(b) => b,
                            Err(_) => continue,
                        },
                    };
                if bindings.is_empty() {
                    book.unpublish(&req.endpoint_id);
                } else {
                    let _ = book.publish(&req.network_id, &req.endpoint_id, &bindings);
                }
            }
            9 => {
                let Some(req) = parse::<wire::NetworkRef>(body) else {
                    continue;
                };
                book.unpublish(&req.endpoint_id);
            }
            _ => {
                let Some(req) = parse::<wire::NetworkRef>(body) else {
                    continue;
                };
                if let Ok(e) = book.endpoint(&req.network_id, &req.endpoint_id) {
                    let _ = serde_json::to_value(wire::JoinResponse {
                        interface_name: wire::InterfaceName {
                            src_name: e.container_veth.clone(),
                            dst_prefix: "eth".into(),
                        },
                        gateway: String::new(),
                        disable_gateway_service: true,
                    });
                }
            }
        }
        check(&book, &held);
    }
});
