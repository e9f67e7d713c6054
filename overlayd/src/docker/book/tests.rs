//! The book's rules, call by call, without a plugin around them.

use super::*;

const NID: &str = "94a1d558aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn slices() -> Vec<Ipv4Net> {
    vec!["10.42.7.0/24".parse().unwrap()]
}

fn ranges() -> Vec<Ipv4Net> {
    vec!["10.42.0.0/16".parse().unwrap()]
}

fn pool(book: &mut Book) -> Granted {
    book.request_pool(Some(&slices()), &ranges(), "10.42.0.0/16", "", false, &[])
        .unwrap()
}

#[test]
fn pool_gives_this_hosts_gateway_and_addresses_from_its_slice() {
    let mut book = Book::default();
    let g = pool(&mut book);
    assert_eq!(g.pool_id, "overlayd:10.42.0.0/16");
    assert_eq!(g.gateway.to_string(), "10.42.7.1/24");
    let gw = book.request_address(&g.pool_id, "", true).unwrap();
    assert_eq!(gw.to_string(), "10.42.7.1/24");
    let a = book.request_address(&g.pool_id, "", false).unwrap();
    let b = book.request_address(&g.pool_id, "", false).unwrap();
    assert_eq!(
        (a.to_string().as_str(), b.to_string().as_str()),
        ("10.42.7.2/24", "10.42.7.3/24")
    );
    book.release_address(&g.pool_id, "10.42.7.2");
    book.release_address(&g.pool_id, "10.42.7.1"); // the gateway: ignored
    book.release_address(&g.pool_id, "10.42.7.200"); // never handed out: ignored
    assert_eq!(
        book.request_address(&g.pool_id, "", false)
            .unwrap()
            .to_string(),
        "10.42.7.2/24"
    );
    let c = book
        .request_address(&g.pool_id, "10.42.7.50", false)
        .unwrap();
    assert_eq!(c.to_string(), "10.42.7.50/24");
}

#[test]
fn bad_pools_are_refused_with_what_to_do() {
    let mut book = Book::default();
    let s = slices();
    let err = |r: Result<Granted, BookError>| r.unwrap_err().to_string();
    assert!(
        err(book.request_pool(None, &[], "10.42.0.0/16", "", false, &[]))
            .contains("overlayctl join")
    );
    assert!(
        err(book.request_pool(Some(&[]), &[], "10.42.0.0/16", "", false, &[]))
            .contains("overlayctl join")
    );
    assert!(err(book.request_pool(Some(&s), &ranges(), "", "", false, &[])).contains("--subnet"));
    assert!(
        err(book.request_pool(Some(&s), &ranges(), "10.43.0.0/16", "", false, &[]))
            .contains("does not contain")
    );
    assert!(
        err(book.request_pool(
            Some(&s),
            &ranges(),
            "10.42.0.0/16",
            "10.42.7.0/25",
            false,
            &[]
        ))
        .contains("--ip-range")
    );
    assert!(
        err(book.request_pool(Some(&s), &ranges(), "10.42.0.0/16", "", true, &[])).contains("IPv6")
    );
    assert!(
        err(book.request_pool(Some(&s), &ranges(), "10.42.0.1/16", "", false, &[]))
            .contains("host bits")
    );
    assert!(
        err(book.request_pool(Some(&s), &ranges(), "nope", "", false, &[])).contains("not a valid")
    );
    assert!(
        err(book.request_pool(
            Some(&s),
            &ranges(),
            "10.42.0.0/16",
            "",
            false,
            &["x".into()]
        ))
        .contains("--ipam-opt x")
    );
    assert!(book.pools.is_empty(), "refusals change nothing");
    pool(&mut book);
    let again = err(book.request_pool(Some(&s), &ranges(), "10.42.0.0/16", "", false, &[]));
    assert!(
        again.contains("overlaps") && again.contains("10.42.7.0/24"),
        "{again}"
    );
    let wider = err(book.request_pool(Some(&s), &ranges(), "10.0.0.0/8", "", false, &[]));
    assert!(wider.contains("overlaps"), "{wider}");
    assert_eq!(book.pools.len(), 1);
}

#[test]
fn addresses_outside_the_slice_or_taken_are_refused() {
    let mut book = Book::default();
    let g = pool(&mut book);
    let before = book.clone();
    for (addr, needle) in [
        ("10.42.9.5", "outside this host's subnet"),
        ("10.42.7.1", "reserved"),
        ("10.42.7.255", "reserved"),
        ("10.42.7.0", "reserved"),
        ("x", "not a valid"),
    ] {
        let e = book
            .request_address(&g.pool_id, addr, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{addr}: {e}");
    }
    assert!(
        book.request_address(&g.pool_id, "10.42.7.9", true)
            .unwrap_err()
            .to_string()
            .contains("--gateway")
    );
    assert!(
        book.request_address("overlayd:10.9.0.0/16", "", false)
            .unwrap_err()
            .to_string()
            .contains("does not know pool")
    );
    assert_eq!(book, before);
    book.request_address(&g.pool_id, "10.42.7.9", false)
        .unwrap();
    assert!(
        book.request_address(&g.pool_id, "10.42.7.9", false)
            .unwrap_err()
            .to_string()
            .contains("in use")
    );
}

#[test]
fn a_full_slice_is_exhausted_and_auto_skips_claims() {
    let mut book = Book::default();
    let s: Vec<Ipv4Net> = vec!["10.42.7.0/29".parse().unwrap()];
    let g = book
        .request_pool(Some(&s), &ranges(), "10.42.0.0/16", "", false, &[])
        .unwrap();
    book.request_address(&g.pool_id, "10.42.7.3", false)
        .unwrap();
    let got: Vec<String> = (0..4)
        .map(|_| {
            book.request_address(&g.pool_id, "", false)
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        got,
        [
            "10.42.7.2/29",
            "10.42.7.4/29",
            "10.42.7.5/29",
            "10.42.7.6/29"
        ]
    );
    assert!(matches!(
        book.request_address(&g.pool_id, "", false),
        Err(BookError::Exhausted(_))
    ));
}

#[test]
fn networks_and_endpoints() {
    let mut book = Book::default();
    let g = pool(&mut book);
    let pools = vec![("10.42.0.0/16".to_owned(), "10.42.7.1/24".to_owned())];
    let e = book
        .check_network(NID, &pools, false, &[("foo".into(), "bar".into())], 1420)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown option -o foo"), "{e}");
    let mtu = |v: &str| vec![(MTU_OPTION.to_owned(), v.to_owned())];
    assert!(
        book.check_network(NID, &pools, false, &mtu("1500"), 1420)
            .is_err()
    );
    assert!(book.check_network(NID, &pools, true, &[], 1420).is_err());
    assert!(book.check_network(NID, &[], false, &[], 1420).is_err());
    let n = book
        .check_network(NID, &pools, false, &mtu("1400"), 1420)
        .unwrap();
    assert_eq!(n.bridge, "ovdb94a1d558aaa");
    assert_eq!(n.bridge.len(), 15);
    assert_eq!(
        (n.mtu, n.gateway.to_string().as_str(), n.pool_id.as_str()),
        (1400, "10.42.7.1", g.pool_id.as_str())
    );
    book.add_network(NID, n);
    let other = "b".repeat(64);
    assert!(
        book.check_network(&other, &pools, false, &[], 1420)
            .unwrap_err()
            .to_string()
            .contains("overlaps")
    );
    assert!(
        book.endpoint(NID, "e1")
            .unwrap_err()
            .to_string()
            .contains("does not know endpoint")
    );
    assert!(
        book.endpoint(&other, "e1")
            .unwrap_err()
            .to_string()
            .contains("does not know network")
    );
    let eid = "7f363b22".repeat(8);
    assert!(book.check_endpoint(NID, &eid, "10.42.8.2/24").is_err());
    assert!(book.check_endpoint(&other, &eid, "10.42.7.2/24").is_err());
    let ep = book.check_endpoint(NID, &eid, "10.42.7.2/24").unwrap();
    assert_eq!(
        (ep.host_veth.as_str(), ep.container_veth.as_str()),
        ("ovdh7f363b227f3", "ovdc7f363b227f3")
    );
    book.add_endpoint(&eid, ep);
    assert!(book.endpoint(NID, &eid).is_ok());
    let text = serde_json::to_string(&book).unwrap();
    assert_eq!(serde_json::from_str::<Book>(&text).unwrap(), book);
    assert!(book.remove_network(NID).is_some());
    assert!(book.endpoints.is_empty());
    assert!(book.remove_endpoint(&eid).is_none());
}

#[test]
fn publishing_takes_one_host_port_per_container_and_refuses_what_it_cannot_do() {
    let mut book = Book::default();
    pool(&mut book);
    let pools = vec![("10.42.0.0/16".to_owned(), "10.42.7.1/24".to_owned())];
    let n = book.check_network(NID, &pools, false, &[], 1420).unwrap();
    book.add_network(NID, n);
    let (a, b) = ("a".repeat(64), "b".repeat(64));
    for (id, addr) in [(&a, "10.42.7.2/24"), (&b, "10.42.7.3/24")] {
        let e = book.check_endpoint(NID, id, addr).unwrap();
        book.add_endpoint(id, e);
    }
    let bind = |proto, port, host_ip: &str, host_port, end| PortBinding {
        proto,
        port,
        host_ip: host_ip.into(),
        host_port,
        host_port_end: end,
    };
    book.publish(
        NID,
        &a,
        &[bind(6, 5000, "", 8080, 8080), bind(17, 53, "::", 5353, 0)],
    )
    .unwrap();
    let f = book.forwards();
    assert_eq!(f.len(), 1, "the IPv6 binding is skipped: {f:?}");
    assert_eq!(f[0].to.to_string(), "10.42.7.2");
    assert_eq!(
        f[0].published,
        Published {
            proto: Proto::Tcp,
            host_ip: None,
            host_port: 8080,
            port: 5000
        }
    );
    let err = |r: Result<(), BookError>| r.unwrap_err().to_string();
    let e = err(book.publish(NID, &b, &[bind(6, 80, "198.18.0.11", 8080, 0)]));
    assert!(e.contains("host port 8080/tcp is already published"), "{e}");
    book.publish(NID, &b, &[bind(17, 80, "198.18.0.11", 8080, 0)])
        .unwrap();
    let e = err(book.publish(NID, &b, &[bind(6, 80, "", 0, 0)]));
    assert!(e.contains("-p 80 without a host port"), "{e}");
    let e = err(book.publish(NID, &b, &[bind(6, 80, "", 9000, 9005)]));
    assert!(e.contains("not ranges"), "{e}");
    let e = err(book.publish(NID, &b, &[bind(132, 80, "", 9000, 0)]));
    assert!(e.contains("tcp and udp ports only"), "{e}");
    let e = err(book.publish(NID, &b, &[bind(6, 80, "not-an-ip", 9000, 0)]));
    assert!(e.contains("not a valid IP address"), "{e}");
    let e = err(book.publish(NID, "c", &[bind(6, 80, "", 9000, 0)]));
    assert!(e.contains("does not know endpoint"), "{e}");
    // A refusal changed nothing; the same container may publish again (a restart).
    assert_eq!(book.forwards().len(), 2);
    book.publish(NID, &a, &[bind(6, 5000, "", 8080, 0)])
        .unwrap();
    assert_eq!(book.forwards().len(), 2);
    let text = serde_json::to_string(&book).unwrap();
    assert_eq!(serde_json::from_str::<Book>(&text).unwrap(), book);
    book.unpublish(&a);
    assert_eq!(book.forwards().len(), 1);
    book.remove_endpoint(&b);
    assert!(book.forwards().is_empty());
}

#[test]
fn reclaim_frees_only_what_leaked_before_the_start_and_dockerd_does_not_list() {
    let mut book = Book::default();
    let g = pool(&mut book);
    let pools = vec![("10.42.0.0/16".to_owned(), "10.42.7.1/24".to_owned())];
    let n = book.check_network(NID, &pools, false, &[], 1420).unwrap();
    book.add_network(NID, n);
    // Three containers: e2 still runs, e3 and e4 were removed while the plugin was
    // down; .5 was handed out but its endpoint never made (the plugin went down between).
    let mut ids = Vec::new();
    for i in 2..=5u8 {
        let a = book.request_address(&g.pool_id, "", false).unwrap();
        assert_eq!(a.to_string(), format!("10.42.7.{i}/24"));
        if i < 5 {
            let id = format!("{i}").repeat(64);
            let e = book.check_endpoint(NID, &id, &a.to_string()).unwrap();
            book.add_endpoint(&id, e);
            ids.push(id);
        }
    }
    let before = book.clone();
    // Since the start: .6 handed out to a container that is starting (not listed yet).
    assert_eq!(
        book.request_address(&g.pool_id, "", false)
            .unwrap()
            .to_string(),
        "10.42.7.6/24"
    );
    let addr = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let mut docker = BTreeMap::new();
    docker.insert(
        NID.to_owned(),
        Attached {
            endpoints: [ids[0].clone()].into(),
            addresses: [addr("10.42.7.2")].into(),
        },
    );
    // A network dockerd did not answer for is left alone.
    docker.insert("c".repeat(64), Attached::default());
    let freed = book.reclaim(&before, &docker);
    let gone: Vec<&str> = freed.endpoints.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(gone, vec![ids[1].as_str(), ids[2].as_str()]);
    assert_eq!(freed.endpoints[0].1.host_veth, "ovdh33333333333");
    assert_eq!(
        freed.addresses,
        vec![addr("10.42.7.3"), addr("10.42.7.4"), addr("10.42.7.5")]
    );
    let left: Vec<String> = book.pools[&g.pool_id]
        .addresses
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(left, vec!["10.42.7.2", "10.42.7.6"]);
    assert_eq!(book.endpoints.len(), 1);
    // The freed addresses are handed out again, lowest first. What was freed is no longer
    // held since the start, so a second pass (with `before` kept to the book, as the
    // plugin does after every change) frees nothing, not even .3 handed out again.
    let mut since = before.clone();
    since.retain_in(&book);
    assert_eq!(
        book.request_address(&g.pool_id, "", false)
            .unwrap()
            .to_string(),
        "10.42.7.3/24"
    );
    since.retain_in(&book);
    assert_eq!(since.endpoints.len(), 1);
    assert_eq!(since.pools[&g.pool_id].addresses.len(), 1);
    assert!(book.reclaim(&since, &docker).is_empty());
    assert!(
        book.pools[&g.pool_id]
            .addresses
            .contains(&addr("10.42.7.3"))
    );
    // An address dockerd lists for a container whose endpoint the book lacks stays held.
    let mut book2 = before.clone();
    docker.insert(
        NID.to_owned(),
        Attached {
            endpoints: BTreeSet::new(),
            addresses: [addr("10.42.7.4")].into(),
        },
    );
    let freed = book2.reclaim(&before, &docker);
    assert_eq!(freed.endpoints.len(), 3);
    assert!(!freed.addresses.contains(&addr("10.42.7.4")));
    assert!(
        book2.pools[&g.pool_id]
            .addresses
            .contains(&addr("10.42.7.4"))
    );
}

#[test]
fn each_range_of_the_overlay_serves_its_own_network() {
    let slices: Vec<Ipv4Net> = ["10.42.7.0/24", "10.43.7.0/24"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let ranges: Vec<Ipv4Net> = ["10.42.0.0/16", "10.43.0.0/16"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let mut book = Book::default();
    let ask = |book: &mut Book, pool: &str| {
        book.request_pool(Some(&slices), &ranges, pool, "", false, &[])
    };
    let a = ask(&mut book, "10.42.0.0/16").unwrap();
    let b = ask(&mut book, "10.43.0.0/16").unwrap();
    assert_eq!(
        (a.gateway.to_string(), b.gateway.to_string()),
        ("10.42.7.1/24".to_owned(), "10.43.7.1/24".to_owned())
    );
    assert_eq!(
        book.request_address(&b.pool_id, "", false)
            .unwrap()
            .to_string(),
        "10.43.7.2/24"
    );
    let before = book.clone();
    let e = ask(&mut book, "10.42.0.0/15").unwrap_err().to_string();
    assert!(
        e.contains("contains several of this host's subnets (10.42.7.0/24, 10.43.7.0/24)")
            && e.contains("use one of 10.42.0.0/16, 10.43.0.0/16"),
        "{e}"
    );
    let e = ask(&mut book, "10.44.0.0/16").unwrap_err().to_string();
    assert!(
        e.contains("does not contain this host's subnet 10.42.7.0/24, 10.43.7.0/24"),
        "{e}"
    );
    let e = ask(&mut book, "10.43.0.0/16").unwrap_err().to_string();
    assert!(e.contains("overlaps") && e.contains("10.43.7.0/24"), "{e}");
    let e = ask(&mut book, "10.43.0.0/20").unwrap_err().to_string();
    assert!(e.contains("overlaps"), "{e}");
    assert_eq!(book, before, "refusals change nothing");

    for (id, g) in [("a".repeat(64), &a), ("b".repeat(64), &b)] {
        let pools = vec![(g.pool.to_string(), g.gateway.to_string())];
        let n = book.check_network(&id, &pools, false, &[], 1420).unwrap();
        book.add_network(&id, n);
    }
    let iso = book.isolated();
    assert_eq!(
        iso.iter()
            .map(|i| (i.bridge.as_str(), i.range.to_string()))
            .collect::<Vec<_>>(),
        [
            ("ovdbaaaaaaaaaaa", "10.42.0.0/16".to_owned()),
            ("ovdbbbbbbbbbbbb", "10.43.0.0/16".to_owned())
        ]
    );
    // A book from before ranges: the pool stands in for the range.
    let mut old = book.clone();
    for n in old.networks.values_mut() {
        n.range = None;
    }
    assert_eq!(old.isolated(), iso);
}
