//! The Docker plugin's JSON (`overlayd::docker::wire`, as dockerd posts it) and the
//! bookkeeping each call drives (`docker::book::Book`, pure), as `Plugin::call` does
//! minus the links, nft and the state file.
//!
//! The input is a sequence of calls (two-byte length, then a method byte and the JSON
//! body); each is parsed by the plugin's own dispatch (`docker::call::Call::parse`, which
//! `Plugin::call` runs first) and applied to one book that starts empty, on a host whose
//! slice is 10.42.7.0/24 of the range 10.42.0.0/16: IPAM calls through `Ipam::apply`, as
//! the plugin does; network and endpoint calls through the book's checks and records,
//! which the plugin runs around its netlink work.
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
use overlayd::docker::book::{self, Book};
use overlayd::docker::call::{self, Call, Ipam, IpamAnswer};
use overlayd::docker::filter;

const MTU: u16 = 1420;

/// The calls the first byte of each picks (modulo 11), numbered as `examples/seeds.rs` and
/// the corpus number them: the ones that reach the book.
const METHODS: [&str; 11] = [
    "IpamDriver.RequestPool",
    "IpamDriver.ReleasePool",
    "IpamDriver.RequestAddress",
    "IpamDriver.ReleaseAddress",
    "NetworkDriver.CreateNetwork",
    "NetworkDriver.DeleteNetwork",
    "NetworkDriver.CreateEndpoint",
    "NetworkDriver.DeleteEndpoint",
    "NetworkDriver.ProgramExternalConnectivity",
    "NetworkDriver.RevokeExternalConnectivity",
    "NetworkDriver.Join",
];

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
        let Ok(call) = Call::parse(METHODS[usize::from(method) % METHODS.len()], body) else {
            continue;
        };
        match call {
            Call::Ipam(ipam) => {
                let answer = ipam.apply(&mut book, Some(&slices), &ranges);
                match (&ipam, answer) {
                    (Ipam::ReleasePool { pool_id }, _) => held.retain(|(p, _)| p != pool_id),
                    (
                        Ipam::RequestAddress {
                            pool_id,
                            gateway: false,
                            ..
                        },
                        Ok(IpamAnswer::Address(a)),
                    ) => assert!(
                        held.insert((pool_id.clone(), a.addr())),
                        "{} handed out twice",
                        a.addr()
                    ),
                    (Ipam::ReleaseAddress { pool_id, address }, _) => {
                        let plain = address.split('/').next().unwrap_or(address);
                        if let Ok(a) = plain.parse::<Ipv4Addr>() {
                            held.remove(&(pool_id.clone(), a));
                        }
                    }
                    _ => {}
                }
            }
            Call::CreateNetwork(req) => {
                if let Ok(n) = req.check(&book, MTU) {
                    assert!((book::MIN_MTU..=MTU).contains(&n.mtu), "mtu {}", n.mtu);
                    book.add_network(&req.network_id, n);
                }
            }
            Call::DeleteNetwork(req) => {
                book.remove_network(&req.network_id);
            }
            Call::CreateEndpoint(req) => {
                if let Ok(e) = req.check(&book) {
                    book.add_endpoint(&req.endpoint_id, e);
                }
            }
            Call::DeleteEndpoint(req) => {
                book.remove_endpoint(&req.endpoint_id);
            }
            Call::Publish(req, bindings) => {
                let _ = book.publish(&req.network_id, &req.endpoint_id, &bindings);
            }
            Call::Join(req) => {
                if let Ok(answer) = call::join(&book, &req) {
                    let _ = serde_json::to_value(answer);
                }
            }
            Call::EndpointOperInfo(req) => {
                let _ = book.endpoint(&req.network_id, &req.endpoint_id);
            }
            Call::Fixed(_) => {}
        }
        check(&book, &held);
    }
});
