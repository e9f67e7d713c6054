//! The config's checks and its round trip through the redacted printer.

use super::*;
use std::os::unix::fs::PermissionsExt;

struct Fixture {
    dir: tempfile::TempDir,
    key: PrivateKey,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let key = PrivateKey::generate();
    keys::write_private_key_file(&dir.path().join("private.key"), &key).unwrap();
    Fixture { dir, key }
}

fn parse(f: &Fixture, body: &str) -> Result<Config, ConfigError> {
    let path = f.dir.path().join("overlayd.toml");
    let text = format!("private_key_file = \"private.key\"\n{body}");
    Config::parse(&path, &text)
}

fn peer(subnets: &str) -> String {
    format!(
        "[[peer]]\npublic_key = \"{}\"\nsubnets = {subnets}\n",
        PrivateKey::generate().public_key()
    )
}

#[test]
fn minimal_config_gets_defaults() {
    let f = fixture();
    let c = parse(&f, "subnets = [\"10.42.1.0/24\"]\n").unwrap();
    assert_eq!(c.listen_port, 51820);
    assert_eq!(c.mtu, 1420);
    assert_eq!(c.tun_name, "ovl0");
    assert!(c.offload);
    assert!(c.peers.is_empty());
}

#[test]
fn the_control_plane_shares_the_tunnels_port_unless_given_its_own() {
    let f = fixture();
    let c = parse(&f, "").unwrap();
    assert_eq!((c.control_port(), c.one_port()), (51820, true));
    let c = parse(&f, "listen_port = 4000\n").unwrap();
    assert_eq!(
        (c.control_port(), c.one_port()),
        (4000, true),
        "follows listen_port"
    );
    // The two-port layout of earlier versions is still accepted.
    let c = parse(&f, "[control]\nlisten_port = 51821\n").unwrap();
    assert_eq!((c.control_port(), c.one_port()), (51821, false));
    let c = parse(&f, "listen_port = 4000\n[control]\nlisten_port = 4000\n").unwrap();
    assert!(c.one_port());
    assert!(c.redacted().contains("[control]\nlisten_port = 4000\n"));
    let e = parse(&f, "[control]\nlisten_port = 0\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("listen_port 0 is not allowed") && !e.contains('\n'),
        "{e}"
    );
}

#[test]
fn advertise_must_be_an_address_other_hosts_reach() {
    let f = fixture();
    for bad in [
        "127.0.0.1",
        "::1",
        "169.254.1.1",
        "fe80::1",
        "0.0.0.0",
        "224.0.0.1",
    ] {
        let e = parse(&f, &format!("[control]\nadvertise = \"{bad}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "advertise {bad} is not an address other hosts can reach"
            )) && !e.contains('\n'),
            "{e}"
        );
    }
    parse(&f, "[control]\nadvertise = \"198.18.0.12\"\n").unwrap();
}

#[test]
fn full_config_round_trips_through_redacted() {
    let f = fixture();
    let body = format!(
        "listen_port = 5000\nmtu = 1400\naddress = \"10.42.1.1\"\nsubnets = [\"10.42.1.0/24\"]\n{}endpoint = \"198.18.0.12:51820\"\npersistent_keepalive = 25\n",
        peer("[\"10.42.2.0/24\"]")
    );
    let c = parse(&f, &body).unwrap();
    assert_eq!(
        c.peers[0].endpoint,
        Some("198.18.0.12:51820".parse().unwrap())
    );
    let shown = c.redacted();
    assert!(!shown.contains(f.key.to_base64().as_str()));
    assert!(shown.contains("(redacted)"));
    // the redacted form is itself a valid config
    let again = Config::parse(&c.path, &shown).unwrap();
    assert_eq!(again.peers.len(), 1);
    assert_eq!(again.mtu, 1400);
}

#[test]
fn tuning_levers_and_the_offload_switch() {
    let f = fixture();
    let c = parse(
        &f,
        "[tuning]\nudp_gso = false\nsocket_buffer = 0\nsched_batch = false\n",
    )
    .unwrap();
    let t = c.effective_tuning();
    assert!(t.tun_offload && !t.udp_gso && t.udp_gro && t.socket_buffer == 0 && !t.sched_batch);
    assert!(Tuning::default().sched_batch);
    assert!(Config::parse(&c.path, &c.redacted()).unwrap().tuning == c.tuning);
    let c = parse(&f, "offload = false\n").unwrap();
    let t = c.effective_tuning();
    assert!(!t.tun_offload && !t.udp_gso && !t.udp_gro);
    assert!(parse(&f, "[tuning]\nudp_gs0 = false\n").is_err());
}

#[test]
fn dns_table_follows_docker_is_validated_and_round_trips() {
    let f = fixture();
    let c = parse(&f, "").unwrap();
    assert!(!c.dns.enabled, "off without the Docker plugin");
    assert_eq!(c.dns.address, None);
    assert_eq!(c.dns.max_names, 4096);
    let c = parse(&f, "[docker]\nenabled = true\n").unwrap();
    assert!(c.dns.enabled, "on with the Docker plugin");
    let again = Config::parse(&c.path, &c.redacted()).unwrap();
    assert_eq!(again.dns, c.dns);
    let c = parse(
        &f,
        "[dns]\nenabled = true\naddress = \"10.42.255.254\"\nmax_names = 100\n",
    )
    .unwrap();
    assert_eq!(c.dns.address, Some("10.42.255.254".parse().unwrap()));
    let again = Config::parse(&c.path, &c.redacted()).unwrap();
    assert_eq!(again.dns, c.dns);
    for (body, needle) in [
        (
            "[dns]\nmax_names = 0\n",
            "[dns] max_names 0 is out of range: use 1 to 65535",
        ),
        ("[dns]\nmax_names = 70000\n", "max_names 70000"),
        (
            "[dns]\naddress = \"127.0.0.1\"\n",
            "[dns] address 127.0.0.1 cannot be served",
        ),
        ("[dns]\naddress = \"0.0.0.0\"\n", "0.0.0.0"),
        ("[dns]\naddress = \"not-an-address\"\n", "address"),
        ("[dns]\nport = 53\n", "port"),
    ] {
        let err = parse(&f, body).unwrap_err().to_string();
        assert!(err.contains(needle), "{body}: {err}");
    }
}

#[test]
fn docker_table_is_validated_and_round_trips() {
    let f = fixture();
    let c = parse(&f, "").unwrap();
    assert!(!c.docker.enabled);
    assert_eq!(c.docker.socket, PathBuf::from(DEFAULT_DOCKER_SOCKET));
    assert_eq!(
        c.docker.dockerd_socket,
        PathBuf::from(DEFAULT_DOCKERD_SOCKET)
    );
    assert_eq!(c.docker.mtu, c.mtu);
    assert_eq!(c.docker.plugin_name(), "overlayd");
    let c = parse(
        &f,
        "mtu = 1400\n[docker]\nenabled = true\nsocket = \"/tmp/p/overlayd.sock\"\nmtu = 1380\n",
    )
    .unwrap();
    assert!(c.docker.enabled && c.docker.mtu == 1380);
    let again = Config::parse(&c.path, &c.redacted()).unwrap();
    assert_eq!(again.docker, c.docker);
    for (body, needle) in [
        ("[docker]\nmtu = 1500\n", "mtu 1500"),
        ("[docker]\nsocket = \"rel.sock\"\n", "absolute"),
        (
            "[docker]\ndockerd_socket = \"docker.sock\"\n",
            "dockerd_socket docker.sock must be an absolute path",
        ),
        ("[docker]\nsocket = \"/run/docker/plugins/x\"\n", ".sock"),
        (
            "[docker]\nsocket = \"/run/docker/plugins/overlay.sock\"\n",
            "built-in",
        ),
        ("[docker]\nenable = true\n", "enable"),
    ] {
        let err = parse(&f, body).unwrap_err().to_string();
        assert!(err.contains(needle), "{body}: {err}");
    }
}

#[test]
fn metrics_are_off_by_default_and_never_on_every_interface_unless_asked() {
    let f = fixture();
    assert_eq!(parse(&f, "").unwrap().metrics, None);
    for listen in ["127.0.0.1:9586", "10.42.1.1:9586", "[::1]:9586"] {
        let c = parse(&f, &format!("[metrics]\nlisten = \"{listen}\"\n")).unwrap();
        assert_eq!(c.metrics.unwrap().listen, listen.parse().unwrap());
        let shown = c.redacted();
        assert!(
            shown.contains(&format!("[metrics]\nlisten = \"{listen}\"")),
            "{shown}"
        );
        assert_eq!(Config::parse(&c.path, &shown).unwrap().metrics, c.metrics);
    }
    for (body, needle) in [
        ("[metrics]\nlisten = \"0.0.0.0:9586\"\n", "all interfaces"),
        (
            "[metrics]\nlisten = \"[::]:9586\"\n",
            "allow_all_interfaces = true",
        ),
        ("[metrics]\nlisten = \"127.0.0.1:0\"\n", "port 0"),
        ("[metrics]\nlisten = \"224.0.0.1:9586\"\n", "multicast"),
        ("[metrics]\nlisten = \"localhost:9586\"\n", "listen"),
        (
            "[metrics]\nlisten = \"127.0.0.1:9586\"\nlsiten = 1\n",
            "lsiten",
        ),
    ] {
        let err = parse(&f, body).unwrap_err().to_string();
        assert!(err.contains(needle), "{body}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let c = parse(
        &f,
        "[metrics]\nlisten = \"0.0.0.0:9586\"\nallow_all_interfaces = true\n",
    )
    .unwrap();
    let again = Config::parse(&c.path, &c.redacted()).unwrap();
    assert_eq!(again.metrics, c.metrics);
    assert!(again.metrics.unwrap().allow_all_interfaces);
}

#[test]
fn flows_table_is_off_by_default_validated_and_round_trips() {
    let f = fixture();
    let c = parse(&f, "").unwrap();
    assert_eq!(c.flows, super::Flows::default());
    assert!(!c.flows.enabled && c.flows.file.is_none() && c.flows.window_s == 5);
    assert!(c.redacted().contains("[flows]\nenabled = false\n"));
    let c = parse(
        &f,
        "[flows]\nenabled = true\nfile = \"/var/log/overlayd/flows.jsonl\"\nmax_bytes = 65536\nwindow_s = 2\n",
    )
    .unwrap();
    assert!(c.flows.enabled && c.flows.max_bytes == 65536 && c.flows.window_s == 2);
    let again = Config::parse(&c.path, &c.redacted()).unwrap();
    assert_eq!(again.flows, c.flows);
    for (body, needle) in [
        (
            "[flows]\nfile = \"flows.jsonl\"\n",
            "file flows.jsonl must be an absolute path",
        ),
        ("[flows]\nfile = \"/var/log/\"\n", "names a folder"),
        ("[flows]\nmax_bytes = 100\n", "max_bytes 100 is too small"),
        ("[flows]\nwindow_s = 0\n", "window_s 0 is out of range"),
        ("[flows]\nenable = true\n", "enable"),
    ] {
        let err = parse(&f, body).unwrap_err().to_string();
        assert!(err.contains(needle), "{body}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

#[test]
fn unknown_key_is_named() {
    let f = fixture();
    let err = parse(&f, "listen_prot = 5\n").unwrap_err().to_string();
    assert!(err.contains("listen_prot"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn malformed_peer_key_is_named() {
    let f = fixture();
    let err = parse(
        &f,
        "[[peer]]\npublic_key = \"nope\"\nsubnets = [\"10.42.2.0/24\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a WireGuard key"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn overlapping_subnets_are_refused() {
    let f = fixture();
    let body = format!(
        "{}{}",
        peer("[\"10.42.0.0/16\"]"),
        peer("[\"10.42.2.0/24\"]")
    );
    let err = parse(&f, &body).unwrap_err().to_string();
    assert!(err.contains("overlap"), "{err}");
    let body = format!(
        "subnets = [\"10.42.2.0/24\"]\n{}",
        peer("[\"10.42.2.0/25\"]")
    );
    let err = parse(&f, &body).unwrap_err().to_string();
    assert!(err.contains("this host"), "{err}");
}

#[test]
fn open_key_file_is_refused() {
    let f = fixture();
    let key = f.dir.path().join("private.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = parse(&f, "").unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn own_key_as_peer_and_bad_values_are_refused() {
    let f = fixture();
    let own = format!(
        "[[peer]]\npublic_key = \"{}\"\nsubnets = [\"10.9.0.0/24\"]\n",
        f.key.public_key()
    );
    assert!(
        parse(&f, &own)
            .unwrap_err()
            .to_string()
            .contains("own public key")
    );
    assert!(
        parse(&f, "mtu = 100\n")
            .unwrap_err()
            .to_string()
            .contains("mtu")
    );
    assert!(parse(&f, "tun_name = \"waytoolonganame0\"\n").is_err());
    // the name goes into nft scripts: nothing that could break out of a quoted word
    for bad in ["ovl0\\\" drop", "a b", "ovl/0", "-ovl", ".", "ovl;0", ""] {
        let err = parse(&f, &format!("tun_name = {bad:?}\n")).unwrap_err();
        assert!(
            err.to_string().contains("not an interface name"),
            "{bad:?}: {err}"
        );
    }
    for good in ["ovl0", "wg-overlay", "tun_1.2"] {
        assert!(
            parse(&f, &format!("tun_name = {good:?}\n")).is_ok(),
            "{good}"
        );
    }
}

#[test]
fn a_static_peer_may_have_a_name_for_the_policy() {
    let f = fixture();
    let key = PrivateKey::generate().public_key();
    let body = format!(
        "[[peer]]\npublic_key = \"{key}\"\nname = \"legacy\"\nsubnets = [\"10.9.0.0/24\"]\n"
    );
    let c = parse(&f, &body).unwrap();
    assert_eq!(c.peers[0].name.as_ref().map(|n| n.as_str()), Some("legacy"));
    let printed = c.redacted();
    assert!(printed.contains("name = \"legacy\""), "{printed}");
    assert_eq!(
        parse(&f, &printed.replace("private_key_file = ", "#"))
            .map(|c| c.peers[0].name.clone())
            .ok()
            .flatten(),
        c.peers[0].name
    );
    let bad = body.replace("legacy", "Legacy_Host");
    let e = parse(&f, &bad).unwrap_err().to_string();
    assert!(
        e.contains("[[peer]]") && e.contains("name \"Legacy_Host\""),
        "{e}"
    );
}

#[test]
fn the_mirror_is_off_by_default_and_checked_when_on() {
    let f = fixture();
    let c = parse(&f, "").unwrap();
    assert!(c.mirror.is_none());
    assert!(!c.redacted().contains("[mirror]"));
    let c = parse(
        &f,
        "[mirror]\ninterface = \"ovlmirror0\"\ncidrs = [\"10.42.2.7/24\"]\nports = [53, 8080]\n",
    )
    .unwrap();
    let m = c.mirror.as_ref().unwrap();
    assert_eq!(m.interface, "ovlmirror0");
    assert_eq!(m.filter.cidrs, vec!["10.42.2.0/24".parse().unwrap()]);
    assert_eq!(m.filter.ports, vec![53, 8080]);
    let again = Config::parse(&c.path, &c.redacted()).unwrap();
    assert_eq!(again.mirror, c.mirror);
    // On with no filter: everything.
    let c = parse(&f, "[mirror]\ninterface = \"ids0\"\n").unwrap();
    assert_eq!(
        c.mirror.unwrap().filter,
        crate::mirror::MirrorFilter::default()
    );
    for (body, says) in [
        ("[mirror]\nports = [53]\n", "no interface"),
        ("[mirror]\ninterface = \"ovl0\"\n", "tun_name"),
        ("[mirror]\ninterface = \"a b\"\n", "not an interface name"),
        ("[mirror]\ninterface = \"m0\"\nports = [0]\n", "port 0"),
        (
            "[mirror]\ninterface = \"m0\"\ncidrs = [\"10.42.300.0/24\"]\n",
            "invalid IP address",
        ),
        (
            "[mirror]\ninterface = \"m0\"\nfilter = 1\n",
            "unknown field",
        ),
    ] {
        let e = parse(&f, body).unwrap_err().to_string();
        assert!(e.contains(says) && !e.contains('\n'), "{body:?}: {e}");
    }
}

#[test]
fn certificate_lifetime_in_seconds_replaces_days_and_is_validated() {
    let f = fixture();
    let c = parse(&f, "").unwrap();
    assert_eq!(c.control.certificate_lifetime(), 365 * 86_400);
    let c = parse(&f, "[control]\ncertificate_days = 30\n").unwrap();
    assert_eq!(c.control.certificate_lifetime(), 30 * 86_400);
    let c = parse(&f, "[control]\ncertificate_lifetime_s = 60\n").unwrap();
    assert_eq!(c.control.certificate_lifetime(), 60);
    // It survives the redacted printer.
    let again = Config::parse(&c.path, &c.redacted()).unwrap();
    assert_eq!(again.control.certificate_lifetime(), 60);
    for bad in ["0", "29", "315360001"] {
        let e = parse(&f, &format!("[control]\ncertificate_lifetime_s = {bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("certificate_lifetime_s") && e.contains("30 to"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

#[test]
fn key_rotation_is_off_by_default_and_its_grace_is_bounded() {
    let f = fixture();
    let c = parse(&f, "").unwrap();
    assert_eq!(c.control.key_rotation_days, None);
    assert_eq!(c.control.key_rotation_grace_s, 60);
    let c = parse(
        &f,
        "[control]\nkey_rotation_days = 90\nkey_rotation_grace_s = 5\n",
    )
    .unwrap();
    assert_eq!(c.control.key_rotation_days, Some(90));
    assert_eq!(c.control.key_rotation_grace_s, 5);
    // It survives the redacted printer.
    let again = Config::parse(&c.path, &c.redacted()).unwrap();
    assert_eq!(again.control.key_rotation_days, Some(90));
    assert_eq!(again.control.key_rotation_grace_s, 5);
    for (bad, key) in [
        ("key_rotation_days = 0", "key_rotation_days"),
        ("key_rotation_grace_s = 0", "key_rotation_grace_s"),
        ("key_rotation_grace_s = 86401", "key_rotation_grace_s"),
    ] {
        let e = parse(&f, &format!("[control]\n{bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}
