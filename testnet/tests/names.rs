//! End-to-end test of container names across hosts: real `dockerd`s (one per testnet host,
//! as `docker.rs` runs them, each started with `--dns 10.42.255.254`, the address every
//! overlayd serves names on), containers that publish their names and aliases through the
//! plugin, and busybox's `nslookup` and `ping` in containers of the other host. Root only;
//! skips without root or Docker (the Compose part needs Debian's `docker-compose`).
//!
//! ```text
//!                       P-ul: br0 (underlay switch)
//!               +----------------------+----------------------+
//!   P-h1 198.18.0.11 (admin)                    P-h2 198.18.0.12 (member)
//!   overlayd: DNS on 10.42.255.254:53            overlayd: DNS on 10.42.255.254:53
//!   dockerd --dns 10.42.255.254                  dockerd --dns 10.42.255.254
//!   net ovl (10.42.0.0/16):                      net ovl:
//!     web, api1 (alias api), only1, compose web    client, api2 (alias api), compose client
//!   net b (10.43.0.0/16): bweb                   net b: bcli
//! ```
//!
//! A container asks dockerd's embedded resolver (127.0.0.11), which answers the names of
//! its own host and forwards the rest to 10.42.255.254: on the container's own host, never
//! across a tunnel. The attacks use the hostile client (`common/hostile.rs`) with a member's
//! stolen credentials: a name set in another member's name, and 5,000 names from one member.

mod common;
#[path = "common/hostile.rs"]
mod hostile;

use std::net::IpAddr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::docker::*;
use common::root;
use hostile::{Credentials, member_config, push_bundle, run_in_netns};
use overlayd::control::msg::{Bundle, Response};
use protocol::api::MemberState;
use protocol::records::names::{NameEntry, NameSet};
use testnet::Testnet;

/// Within how long a name must show up, or go, on the other host.
const WITHIN: Duration = Duration::from_secs(5);
/// The overlay network's name (testnet's `overlayctl init --network`).
const NETWORK: &str = "testnet";
const COMPOSE: &str = "/usr/bin/docker-compose";

/// `nslookup -type=a NAME` in container `c` of host `i`: `Ok(addresses in the order given)`,
/// or `Err(output)` when it found none (e.g. NXDOMAIN).
fn lookup(run: &Run, i: usize, c: &str, name: &str) -> Result<Vec<IpAddr>, String> {
    let out = run.docker(i, &["exec", c, "nslookup", "-type=a", name]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The first `Address:` line is the server's (127.0.0.11:53): it does not parse.
    let found: Vec<IpAddr> = text
        .lines()
        .filter(|l| l.starts_with("Address"))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    if found.is_empty() {
        Err(text)
    } else {
        Ok(found)
    }
}

/// Polls [`lookup`] until `want` holds of its answer or [`WITHIN`] passes; the time taken.
fn until(
    run: &Run,
    i: usize,
    c: &str,
    name: &str,
    want: impl Fn(&Result<Vec<IpAddr>, String>) -> bool,
) -> Result<Duration, String> {
    until_in(WITHIN, run, i, c, name, want)
}

/// [`until`] with another deadline.
fn until_in(
    within: Duration,
    run: &Run,
    i: usize,
    c: &str,
    name: &str,
    want: impl Fn(&Result<Vec<IpAddr>, String>) -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let got = lookup(run, i, c, name);
        if want(&got) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            return Err(format!("h{i}: {c}: nslookup {name}: {got:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn nxdomain(got: &Result<Vec<IpAddr>, String>) -> bool {
    matches!(got, Err(text) if text.contains("NXDOMAIN"))
}

fn ip(run: &Run, i: usize, c: &str) -> IpAddr {
    run.ip_of(i, c).parse().expect("a container address")
}

/// A detached container `name` on host `i`, network `net`, with `extra` arguments, that
/// sleeps.
fn start(run: &Run, i: usize, net: &str, name: &str, extra: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name, "--network", net];
    args.extend(extra);
    args.extend([IMAGE, "sleep", "3600"]);
    run.ok(i, &args);
}

/// The names `overlayctl names --json` shows on host `i`.
fn names_on(run: &Run, i: usize) -> Vec<protocol::api::NameInfo> {
    let shown = run
        .net
        .overlayctl_ok(i, &["names", "--json"])
        .expect("names");
    serde_json::from_slice(&shown.stdout).expect("names JSON")
}

/// Pushes name set `set`, signed with `key`, to host `to` from host `from`'s namespace
/// over a member connection made with `who`'s stolen credentials.
fn push_names(run: &Run, who: &Credentials, from: usize, to: usize, set: &NameSet) {
    let signed = set.sign(&who.control_key).expect("sign").to_bytes();
    let config = member_config(&who.identity());
    let target = std::net::SocketAddr::new(
        run.net.addr(&format!("h{to}")).expect("host addr"),
        run.net.control_port(),
    );
    let bundle = Bundle {
        names: vec![signed],
        ..Bundle::default()
    };
    let answer = run_in_netns(&run.net.host_ns(from), move || {
        push_bundle(config, target, bundle)
    });
    assert!(
        matches!(answer, Ok(Response::Ack | Response::Seen(_))),
        "h{to} did not take the push: {answer:?}"
    );
}

/// Polls host `i`'s log until it has a line with every one of `needles`.
fn logged(run: &Run, i: usize, needles: &[&str]) -> bool {
    let deadline = Instant::now() + WITHIN;
    loop {
        let log = std::fs::read_to_string(run.net.log_path(i)).unwrap_or_default();
        if log.lines().any(|l| needles.iter().all(|n| l.contains(n))) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn compose(run: &Run, i: usize, file: &str, args: &[&str]) -> Output {
    Command::new(COMPOSE)
        .args(["-f", file, "-p", "app"])
        .args(args)
        .env("DOCKER_HOST", run.dockerds[i - 1].socket())
        .env("DOCKER_CONFIG", "/tmp/ovd-docker-cli")
        .stdin(Stdio::null())
        .output()
        .expect("run docker-compose")
}

#[test]
fn container_names_resolve_across_hosts() {
    if !root() || !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let mut run = up_with(
        "odn",
        Some(common::prefix('n')),
        &["--dns", "10.42.255.254"],
    );
    eprintln!("setup (testnet, 2 dockerds, image) took {:?}", t0.elapsed());
    for i in 1..=2 {
        run.ok(i, &[CREATE, &["ovl"]].concat());
    }
    start(&run, 2, "ovl", "client", &[]);

    // ---- a name on h1 resolves on h2 within 5 s of its start, and ping by name works
    start(&run, 1, "ovl", "web", &[]);
    let web = ip(&run, 1, "web");
    let took = until(&run, 2, "client", "web", |g| g.as_ref() == Ok(&vec![web]))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("web on h1 resolved on h2 after {took:?}");
    let took = until(&run, 2, "client", &format!("web.{NETWORK}"), |g| {
        g.as_ref() == Ok(&vec![web])
    })
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("web.{NETWORK} on h2 after {took:?}");
    assert!(
        run.pings(2, "client", "web", WITHIN),
        "h2: ping web (on h1) by name"
    );
    // Members by name too.
    let h1 = until(&run, 2, "client", &format!("h1.hosts.{NETWORK}"), |g| {
        g.as_ref() == Ok(&vec!["10.42.1.1".parse().unwrap()])
    });
    assert!(h1.is_ok(), "{h1:?}");
    let names = names_on(&run, 2);
    let entry = names.iter().find(|n| n.name == "web").expect("web listed");
    assert_eq!((entry.owner.as_str(), entry.local), ("h1", false));
    assert_eq!(entry.address, web);
    let table = run.net.overlayctl_ok(2, &["names"]).expect("names");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("web") && table.contains("h1"), "{table}");

    // ---- removed: gone on h2 within 5 s (NXDOMAIN)
    run.ok(1, &["rm", "-f", "web"]);
    let took = until(&run, 2, "client", "web", nxdomain).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("web removed on h1: NXDOMAIN on h2 after {took:?}");

    // ---- one alias on both hosts: all addresses, this host's first
    start(&run, 1, "ovl", "api1", &["--network-alias", "api"]);
    start(&run, 2, "ovl", "api2", &["--network-alias", "api"]);
    let (api1, api2) = (ip(&run, 1, "api1"), ip(&run, 2, "api2"));
    let api = format!("api.{NETWORK}");
    until(&run, 1, "api1", &api, |g| {
        g.as_ref() == Ok(&vec![api1, api2])
    })
    .unwrap_or_else(|e| panic!("h1 sees its own first: {e}"));
    until(&run, 2, "client", &api, |g| {
        g.as_ref() == Ok(&vec![api2, api1])
    })
    .unwrap_or_else(|e| panic!("h2 sees its own first: {e}"));
    // Docker's caveat: a bare name its own host has is answered by dockerd alone.
    let bare = lookup(&run, 1, "api1", "api").expect("api on h1");
    assert_eq!(bare.first(), Some(&api1), "{bare:?}");

    // ---- segmentation: a container on network b sees b's names only
    for i in 1..=2 {
        run.ok(i, &[&CREATE[..7], &[EXTRA_RANGE, "b"]].concat());
    }
    start(&run, 1, "b", "bweb", &[]);
    start(&run, 2, "b", "bcli", &[]);
    let bweb = ip(&run, 1, "bweb");
    until(&run, 2, "bcli", "bweb", |g| g.as_ref() == Ok(&vec![bweb]))
        .unwrap_or_else(|e| panic!("b's own names: {e}"));
    for name in ["api1", "api", &api] {
        let got = lookup(&run, 2, "bcli", name);
        assert!(nxdomain(&got), "bcli (network b) resolved {name}: {got:?}");
    }
    for name in ["bweb", "bweb.testnet"] {
        let got = lookup(&run, 2, "client", name);
        assert!(
            nxdomain(&got),
            "client (network ovl) resolved {name}: {got:?}"
        );
    }

    // ---- Docker Compose: one file, one service on each host, reached by service name
    if std::path::Path::new(COMPOSE).exists() {
        let file = run.root.join("compose.yml");
        std::fs::write(
            &file,
            format!(
                "version: \"3.7\"\nservices:\n  web:\n    image: {IMAGE}\n    command: [{}]\n    networks: [ovl]\n  client:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    networks: [ovl]\nnetworks:\n  ovl:\n    external: true\n",
                PONG_SERVER
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .expect("compose file");
        let file = file.display().to_string();
        for (i, service) in [(1, "web"), (2, "client")] {
            let out = compose(&run, i, &file, &["up", "-d", "--no-deps", service]);
            assert!(
                out.status.success(),
                "h{i}: docker-compose up {service}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let client = run.ok(
            2,
            &[
                "ps",
                "-q",
                "--filter",
                "label=com.docker.compose.service=client",
            ],
        );
        let deadline = Instant::now() + WITHIN;
        while !run.tcp(2, &client, "web") {
            assert!(
                Instant::now() < deadline,
                "h2: compose service client does not reach web (on h1) by its service name"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("compose: client on h2 reached web on h1 by name");
        for i in 1..=2 {
            let _ = compose(&run, i, &file, &["down", "--remove-orphans"]);
        }
    } else {
        panic!("{COMPOSE} is missing: run scripts/setup (it installs docker-compose)");
    }

    // ---- attacks with stolen member credentials: a name set in another member's name
    // (not signed by it), and 5,000 names from one member (its own key); both refused,
    // the names served before stay
    let h1_creds = Credentials::read(&run.net.state_dir(1)).expect("h1's credentials");
    let h2_creds = Credentials::read(&run.net.state_dir(2)).expect("h2's credentials");
    let version = hostile::now_unix() << 20;
    let forged = NameSet {
        network: h1_creds.network.network.clone(),
        member: h1_creds.certificate.node.clone(),
        number: h1_creds.certificate.number,
        version,
        entries: vec![NameEntry {
            name: "forged".into(),
            aliases: vec!["api".into()],
            address: "10.42.1.66".parse().unwrap(),
            network: "ovl".into(),
            range: "10.42.0.0/16".parse().unwrap(),
        }],
    };
    // h2 (a member, with its own key) speaks for h1, to h1.
    push_names(&run, &h2_creds, 2, 1, &forged);
    assert!(
        logged(&run, 1, &["refused a name set", "forged"]),
        "h1 logged no refusal of the forged set"
    );
    for i in 1..=2 {
        let names = names_on(&run, i);
        assert!(
            !names.iter().any(|n| n.name == "forged"),
            "h{i} took the forged name: {names:?}"
        );
    }
    let many = NameSet {
        network: h1_creds.network.network.clone(),
        member: h1_creds.certificate.node.clone(),
        number: h1_creds.certificate.number,
        version: version + 1,
        entries: (0..5000)
            .map(|k| NameEntry {
                name: format!("flood{k}"),
                aliases: Vec::new(),
                address: "10.42.1.77".parse().unwrap(),
                network: "ovl".into(),
                range: "10.42.0.0/16".parse().unwrap(),
            })
            .collect(),
    };
    push_names(&run, &h1_creds, 1, 2, &many);
    assert!(
        logged(
            &run,
            2,
            &["refused a name set", "5000 names, above the cap of 4096"]
        ),
        "h2 logged no refusal of the 5,000 names"
    );
    let names = names_on(&run, 2);
    assert!(
        !names.iter().any(|n| n.name.starts_with("flood")),
        "capped names served"
    );
    for (name, owner) in [("api1", "h1"), ("api2", "h2"), ("client", "h2")] {
        assert!(
            names.iter().any(|n| n.name == name && n.owner == owner),
            "h2 lost {name} of {owner}: {names:?}"
        );
    }
    until(&run, 2, "client", &api, |g| {
        g.as_ref() == Ok(&vec![api2, api1])
    })
    .unwrap_or_else(|e| panic!("after the attacks: {e}"));

    // ---- h1 killed: its names go from h2 once h2 declares it down
    start(&run, 1, "ovl", "only1", &[]);
    let only1 = ip(&run, 1, "only1");
    until(&run, 2, "client", "only1", |g| {
        g.as_ref() == Ok(&vec![only1])
    })
    .unwrap_or_else(|e| panic!("{e}"));
    run.net.kill_daemon(1).expect("kill -9 h1's overlayd");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let peers = run.net.peers_json(2).expect("peers");
        let h1 = Testnet::member_name(1);
        if peers
            .iter()
            .any(|p| p.name.as_deref() == Some(h1.as_str()) && p.state == Some(MemberState::Down))
        {
            break;
        }
        assert!(Instant::now() < deadline, "h2 never declared h1 down");
        std::thread::sleep(Duration::from_millis(200));
    }
    until(&run, 2, "client", "only1", nxdomain).unwrap_or_else(|e| panic!("{e}"));
    until(&run, 2, "client", &api, |g| g.as_ref() == Ok(&vec![api2]))
        .unwrap_or_else(|e| panic!("{e}"));
    // h1 back: its names come back with it (and its dockerd can remove its containers).
    run.net.start_daemon(1).expect("h1's overlayd back");
    // (it must rejoin first: not a bar of the issue's)
    until_in(Duration::from_secs(30), &run, 2, "client", "only1", |g| {
        g.as_ref() == Ok(&vec![only1])
    })
    .unwrap_or_else(|e| panic!("h1 back: {e}"));
    eprintln!("whole test took {:?}", t0.elapsed());
}
