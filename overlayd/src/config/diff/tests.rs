//! What a reload finds changed, live or waiting for a restart, and the config in force
//! after it.

use super::*;
use keys::PrivateKey;

struct Fixture {
    dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    keys::write_private_key_file(&dir.path().join("private.key"), &PrivateKey::generate()).unwrap();
    keys::write_private_key_file(&dir.path().join("other.key"), &PrivateKey::generate()).unwrap();
    Fixture { dir }
}

const PEER: &str = "r8cTT3NzvOw1sXeRBaXSbDr7MxFHW0yl4+tfW0gL1D8=";
const PEER_2: &str = "uL9a3D3o9Gqcld1cc3i2BRM5tDaqSFj+cwWFxOMDKmc=";

fn config(f: &Fixture, body: &str) -> Config {
    let path = f.dir.path().join("overlayd.toml");
    let text = format!(
        "private_key_file = \"private.key\"\nstate_dir = \"/var/lib/overlayd-test\"\nsubnets = [\"10.42.1.0/24\"]\n{body}"
    );
    Config::parse(&path, &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn peer(key: &str, endpoint: &str, keepalive: Option<u16>) -> String {
    let mut s = format!(
        "\n[[peer]]\npublic_key = \"{key}\"\nendpoint = \"{endpoint}\"\nsubnets = [\"10.42.3.0/24\"]\n"
    );
    if let Some(k) = keepalive {
        s.push_str(&format!("persistent_keepalive = {k}\n"));
    }
    s
}

#[test]
fn the_same_file_changes_nothing() {
    let f = fixture();
    let body = format!(
        "[control]\nsuspect_timeout_ms = 5000\n[metrics]\nlisten = \"127.0.0.1:9586\"\n{}",
        peer(PEER, "198.18.0.13:51820", Some(25))
    );
    let d = Diff::between(&config(&f, &body), &config(&f, &body));
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(d, Diff::default());
}

#[test]
fn every_restart_only_setting_is_named_with_why() {
    let f = fixture();
    let running = config(&f, "");
    let file = config(
        &f,
        "listen_port = 51830\ntun_name = \"ovl9\"\nmtu = 1380\napi_socket = \"/run/x/o.sock\"\noffload = false\n\
         [tuning]\nsched_batch = false\nudp_gso = false\nudp_gro = false\ntun_offload = false\n\
         [control]\nlisten_port = 51831\nadvertise = \"198.18.0.11\"\nprobe_period_ms = 2000\nprobe_timeout_ms = 900\n\
         [docker]\nenabled = true\n",
    );
    let d = Diff::between(&running, &file);
    assert!(d.live.is_empty(), "{:?}", d.live);
    let named: Vec<&str> = d
        .restart
        .iter()
        .map(|l| {
            RESTART
                .iter()
                .find(|(n, _)| l.starts_with(&format!("{n} ")))
                .unwrap_or_else(|| panic!("{l:?} names no restart-only setting"))
                .0
        })
        .collect();
    for expected in [
        "listen_port",
        "tun_name",
        "mtu",
        "api_socket",
        "offload",
        "[tuning] tun_offload",
        "[tuning] udp_gso",
        "[tuning] udp_gro",
        "[tuning] sched_batch",
        "[control] listen_port",
        "[control] advertise",
        "[control] probe_period_ms",
        "[control] probe_timeout_ms",
        "[docker]",
    ] {
        assert!(
            named.contains(&expected),
            "{expected} not in {:?}",
            d.restart
        );
    }
    assert!(
        d.restart
            .contains(&"listen_port 51820 -> 51830 needs a restart: the tunnels' UDP socket is bound at start, and members advertise the port in their records".to_owned()),
        "{:?}",
        d.restart
    );
    for line in &d.restart {
        assert_eq!(line.lines().count(), 1, "{line:?}");
        assert!(line.contains("needs a restart: "), "{line:?}");
    }
    // The config in force keeps every one of them.
    let merged = merge(&running, file).unwrap();
    assert!(Diff::between(&running, &merged).is_empty());
}

#[test]
fn a_new_private_key_and_state_dir_need_a_restart() {
    let f = fixture();
    let running = config(&f, "");
    let path = f.dir.path().join("overlayd.toml");
    let file = Config::parse(
        &path,
        "private_key_file = \"other.key\"\nstate_dir = \"/var/lib/elsewhere\"\nsubnets = [\"10.42.1.0/24\"]\n",
    )
    .unwrap();
    let d = Diff::between(&running, &file);
    assert_eq!(d.restart.len(), 2, "{:?}", d.restart);
    assert!(
        d.restart[0].starts_with("private_key_file "),
        "{:?}",
        d.restart
    );
    assert!(d.restart[1].starts_with("state_dir "), "{:?}", d.restart);
    let merged = merge(&running, file).unwrap();
    assert_eq!(
        merged.private_key.public_key(),
        running.private_key.public_key()
    );
    assert_eq!(merged.state_dir, running.state_dir);
}

#[test]
fn live_settings_change_and_say_so() {
    let f = fixture();
    let running = config(
        &f,
        &format!(
            "[flows]\nenabled = false\n{}{}",
            peer(PEER, "198.18.0.13:51820", Some(25)),
            "\n[[peer]]\npublic_key = \"uL9a3D3o9Gqcld1cc3i2BRM5tDaqSFj+cwWFxOMDKmc=\"\nsubnets = [\"10.42.4.0/24\"]\n"
        ),
    );
    let file = config(
        &f,
        &format!(
            "address = \"10.42.1.1\"\n[tuning]\nsocket_buffer = 4194304\n\
             [control]\nsuspect_timeout_ms = 6000\ngossip_interval_ms = 300\nsync_interval_ms = 10000\nrejoin_interval_ms = 1000\ncertificate_days = 30\npolicy_flows = 1000\n\
             [metrics]\nlisten = \"127.0.0.1:9586\"\n[flows]\nenabled = true\nwindow_s = 2\n\
             [mirror]\ninterface = \"ovlmirror0\"\n{}{}",
            peer(PEER, "198.18.0.23:51820", Some(5)),
            "\n[[peer]]\npublic_key = \"r8cTT3NzvOw1sXeRBaXSbDr7MxFHW0yl4+tfW0gL1D0=\"\nsubnets = [\"10.42.5.0/24\"]\n"
        ),
    );
    let d = Diff::between(&running, &file);
    assert!(d.restart.is_empty(), "{:?}", d.restart);
    assert!(d.addresses && d.socket_buffer && d.control && d.metrics && d.flows && d.mirror);
    assert!(d.peers);
    let has = |prefix: &str| d.live.iter().any(|l| l.starts_with(prefix));
    for prefix in [
        "address none -> 10.42.1.1",
        "[tuning] socket_buffer 16777216 -> 4194304",
        "[control] suspect_timeout_ms 4000 -> 6000",
        "[control] gossip_interval_ms 200 -> 300",
        "[control] sync_interval_ms 30000 -> 10000",
        "[control] rejoin_interval_ms 2000 -> 1000",
        "[control] certificate_days 365 -> 30",
        "[control] policy_flows 65536 -> 1000 (from the next policy version",
        "[metrics] none -> 127.0.0.1:9586",
        "[flows] off -> on (file none, max_bytes 10485760, window_s 2)",
        "[mirror] off -> ovlmirror0",
        &format!("peer {PEER_2} removed"),
        "peer r8cTT3NzvOw1sXeRBaXSbDr7MxFHW0yl4+tfW0gL1D0= added",
        &format!(
            "peer {PEER}: endpoint 198.18.0.13:51820 -> 198.18.0.23:51820, persistent_keepalive 25 -> 5"
        ),
    ] {
        assert!(has(prefix), "no {prefix:?} in {:#?}", d.live);
    }
    assert_eq!(d.live.len(), 14, "{:#?}", d.live);
    let merged = merge(&running, file).unwrap();
    assert_eq!(merged.control.suspect_timeout_ms, 6000);
    assert_eq!(merged.tuning.socket_buffer, 4_194_304);
    assert_eq!(merged.peers.len(), 2);
}

#[test]
fn only_a_keepalive_is_one_line_of_its_peer() {
    let f = fixture();
    let running = config(&f, &peer(PEER, "198.18.0.13:51820", None));
    let file = config(&f, &peer(PEER, "198.18.0.13:51820", Some(10)));
    let d = Diff::between(&running, &file);
    assert_eq!(
        d.live,
        [format!("peer {PEER}: persistent_keepalive none -> 10")]
    );
    assert!(d.peers && !d.control && !d.metrics);
}

#[test]
fn a_mirror_named_like_the_running_tun_is_refused() {
    let f = fixture();
    let running = config(&f, "");
    let file = config(&f, "tun_name = \"ovl1\"\n[mirror]\ninterface = \"ovl0\"\n");
    let e = merge(&running, file).unwrap_err();
    assert!(e.contains("running tunnel's tun_name"), "{e}");
}
