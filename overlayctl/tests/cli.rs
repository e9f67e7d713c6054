//! The CLI as a user runs it: key commands against `wg` (when installed), clear errors
//! when the daemon is not there, usage errors found before asking it, and the
//! control-plane commands against a fake API server that records what they send.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::api::{
    ApiError, INIT_PATH, JOIN_PATH, LEAVE_PATH, MemberState, Membership, NODE_GROUPS_PATH,
    NodeGroupsResponse, PEERS_PATH, PeerStatus, REVOKE_PATH, RevokeResponse, STATUS_PATH, Status,
    TOKENS_PATH, TokenResponse,
};
use serde_json::json;

mod fake_api;

use fake_api::{FakeApi, Recorded};

fn overlayctl(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_overlayctl"))
        .args(args)
        .env_remove("OVERLAYD_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_owned()
}

fn wg(args: &[&str], stdin: &str) -> Option<String> {
    let mut child = Command::new("wg")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().ok()?;
    out.status.success().then(|| text(&out.stdout))
}

#[test]
fn keys_are_interchangeable_with_wg() {
    let private = overlayctl(&["keys", "generate"], "");
    assert!(private.status.success());
    let private = text(&private.stdout);
    assert_eq!(private.len(), 44);
    let public = text(&overlayctl(&["keys", "public"], &private).stdout);
    assert_eq!(public.len(), 44);
    let Some(wg_public) = wg(&["pubkey"], &private) else {
        eprintln!("wg not installed: skipping the comparison with wg pubkey");
        return;
    };
    assert_eq!(public, wg_public);
    let wg_private = wg(&["genkey"], "").unwrap();
    let ours = text(&overlayctl(&["keys", "public"], &wg_private).stdout);
    assert_eq!(ours, wg(&["pubkey"], &wg_private).unwrap());
}

#[test]
fn generate_to_file_is_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let out = overlayctl(&["keys", "generate", "--out", path.to_str().unwrap()], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(out.stdout.is_empty(), "the key must not be printed");
}

#[test]
fn bad_private_key_is_a_usage_error() {
    let out = overlayctl(&["keys", "public"], "not a key\n");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("not a WireGuard key") && !err.contains('\n'),
        "{err}"
    );
}

#[test]
fn status_without_daemon_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    for cmd in ["status", "peers"] {
        let out = overlayctl(&["--socket", sock.to_str().unwrap(), cmd], "");
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(err.contains("is overlayd running?"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

// ---- The control-plane commands, against a fake API server. ----

/// Runs overlayctl with `--socket socket` first.
fn overlayctl_at(socket: &Path, args: &[&str], stdin: &str) -> Output {
    let mut all = vec!["--socket", socket.to_str().unwrap()];
    all.extend_from_slice(args);
    overlayctl(&all, stdin)
}

#[test]
fn usage_errors_need_no_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let cases: &[(&[&str], &str)] = &[
        (&["init", "--cidr", "nope"], "not an address range"),
        (
            &["init", "--cidr", "10.42.0.1/16"],
            "did you mean 10.42.0.0/16?",
        ),
        (
            &["init", "--cidr", "10.42.0.0/16", "--subnet", "10.43.0.0/24"],
            "not a subnet of --cidr",
        ),
        (
            &["init", "--cidr", "10.42.0.0/16", "--subnet", "10.42.0.0/33"],
            "not an address range",
        ),
        (
            &["init", "--cidr", "10.42.0.0/16", "--subnet-prefix", "12"],
            "use a length from 17 to 32",
        ),
        (
            &["init", "--cidr", "10.42.0.0/16", "--name", "Node_A"],
            "not a valid name",
        ),
        (&["token", "create", "--ttl", "0"], "90s, 10m, 1h, 2d"),
        (&["token", "create", "--ttl", "1w"], "90s, 10m, 1h, 2d"),
        (
            &["token", "create", "--ttl", "99999999999999999999"],
            "90s, 10m, 1h, 2d",
        ),
        (
            &["join", "ovljoin1.x", "--subnet", "10.0.0.0/33"],
            "not an address range",
        ),
        (&["join", "ovljoin1.x", "--name", "a-"], "not a valid name"),
        (&["revoke", "Node_C"], "not a valid name"),
        (&["node", "groups", "Node_C", "web"], "not a valid name"),
        (
            &["node", "groups", "node-c", "web,a b"],
            "not a valid group",
        ),
    ];
    for (args, needle) in cases {
        let out = overlayctl_at(&sock, args, "");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("overlayctl: "), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    let out = overlayctl_at(&sock, &["join", "-"], "\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no token given"));
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn public_key() -> keys::PublicKey {
    keys::PrivateKey::generate().public_key()
}

fn member_status(admin: bool, member_count: usize) -> Status {
    Status {
        version: "0.1.0".to_owned(),
        public_key: public_key(),
        listen_port: 51820,
        tun_name: "ovl0".to_owned(),
        mtu: 1420,
        address: Some("10.42.1.1".parse().unwrap()),
        subnets: vec!["10.42.1.0/24".parse().unwrap()],
        tun_offload: false,
        udp_gso: false,
        peer_count: member_count - 1,
        uptime_s: 5,
        drops: Default::default(),
        member: Some(Membership {
            network: "prod".to_owned(),
            cidr: "10.42.0.0/16".parse().unwrap(),
            ranges: Vec::new(),
            ca_fingerprint: "sha256:c0ffee".to_owned(),
            name: "node-a".to_owned(),
            subnets: vec!["10.42.1.0/24".parse().unwrap()],
            groups: vec!["web".to_owned()],
            certificate_expires_unix: now_unix() + 90 * 86_400,
            certificate_serial: 0,
            certificate_renewed_unix: None,
            certificate_renew_at_unix: 0,
            admin,
            control_port: 51821,
            member_count,
            left: false,
            ca: None,
        }),
        config: None,
    }
}

/// Checks the request was a JSON POST to `path` with `body`.
fn assert_post(request: &Recorded, path: &str, body: serde_json::Value) {
    assert_eq!(request.method, "POST", "{request:?}");
    assert_eq!(request.path, path, "{request:?}");
    assert_eq!(
        request.content_type.as_deref(),
        Some("application/json"),
        "{request:?}"
    );
    assert_eq!(request.body, body, "{request:?}");
}

fn success(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn init_posts_its_request_and_names_the_next_step() {
    let api = FakeApi::ok(&member_status(true, 1));
    let out = api.run(
        &[
            "init",
            "--cidr",
            "10.42.0.0/16",
            "--network",
            "prod",
            "--name",
            "node-a",
            "--subnet",
            "10.42.1.0/24",
            "--subnet-prefix",
            "24",
            "--range",
            "10.43.0.0/16",
            "--range",
            "10.44.0.0/16",
        ],
        "",
    );
    let stdout = success(&out);
    assert_post(
        &api.request(),
        INIT_PATH,
        json!({"network": "prod", "cidr": "10.42.0.0/16", "name": "node-a",
               "subnet": "10.42.1.0/24", "subnet_prefix": 24,
               "ranges": ["10.43.0.0/16", "10.44.0.0/16"]}),
    );
    for needle in [
        "initialised network prod (10.42.0.0/16)",
        "node:     node-a",
        "subnet:   10.42.1.0/24",
        "CA:       sha256:c0ffee",
        "role:     admin",
        "`overlayctl token create` on this host",
        "`overlayctl join TOKEN` on each other host",
    ] {
        assert!(stdout.contains(needle), "{needle} missing in\n{stdout}");
    }
}

#[test]
fn init_defaults_and_json() {
    let status = member_status(true, 1);
    let api = FakeApi::ok(&status);
    let out = api.run(&["init", "--cidr", "fd42::/48", "--json"], "");
    let request = api.request();
    if out.status.code() == Some(2) {
        // This machine's host name has nothing usable in it.
        assert!(text(&out.stderr).contains("pass --name"));
        return;
    }
    let stdout = success(&out);
    assert_eq!(request.body["network"], "overlay");
    assert_eq!(request.body["subnet"], serde_json::Value::Null);
    assert_eq!(request.body["subnet_prefix"], serde_json::Value::Null);
    let name = request.body["name"].as_str().unwrap();
    assert!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "{name}"
    );
    let printed: Status = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed, status);
}

#[test]
fn token_create_prints_the_token_alone() {
    let answer = TokenResponse {
        token: "ovljoin1.c2VjcmV0".to_owned(),
        expires_unix: now_unix() + 600,
    };
    let api = FakeApi::ok(&answer);
    let out = api.run(
        &["token", "create", "--ttl", "10m", "--groups", "web,db"],
        "",
    );
    let stdout = success(&out);
    assert_post(
        &api.request(),
        TOKENS_PATH,
        json!({"ttl_s": 600, "groups": ["web", "db"]}),
    );
    assert_eq!(stdout, "ovljoin1.c2VjcmV0\n");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("expires ") && stderr.ends_with(" UTC (in 10m); single use\n"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // Defaults: one hour, no groups; --json prints the answer.
    let api = FakeApi::ok(&answer);
    let stdout = success(&api.run(&["token", "create", "--json"], ""));
    assert_post(
        &api.request(),
        TOKENS_PATH,
        json!({"ttl_s": 3600, "groups": []}),
    );
    let printed: TokenResponse = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed, answer);
}

#[test]
fn join_posts_the_token_from_the_command_line_or_stdin() {
    let api = FakeApi::ok(&member_status(false, 3));
    let out = api.run(
        &[
            "join",
            "ovljoin1.abc",
            "--name",
            "node-b",
            "--subnet",
            "10.42.9.0/24",
        ],
        "",
    );
    let stdout = success(&out);
    assert_post(
        &api.request(),
        JOIN_PATH,
        json!({"token": "ovljoin1.abc", "name": "node-b", "subnet": "10.42.9.0/24"}),
    );
    for needle in [
        "joined network prod (10.42.0.0/16)",
        "CA:       sha256:c0ffee",
        "role:     member",
        "members:  3 alive",
        "overlayctl peers",
    ] {
        assert!(stdout.contains(needle), "{needle} missing in\n{stdout}");
    }

    let api = FakeApi::ok(&member_status(false, 3));
    let out = api.run(
        &["join", "-", "--name", "node-b"],
        "  ovljoin1.fromstdin \n",
    );
    success(&out);
    assert_post(
        &api.request(),
        JOIN_PATH,
        json!({"token": "ovljoin1.fromstdin", "name": "node-b", "subnet": null}),
    );
}

#[test]
fn revoke_says_what_was_revoked() {
    let key = public_key();
    let api = FakeApi::ok(&RevokeResponse {
        name: "node-c".to_owned(),
        serial: 7,
        public_key: key,
    });
    let stdout = success(&api.run(&["revoke", "node-c"], ""));
    assert_post(&api.request(), REVOKE_PATH, json!({"name": "node-c"}));
    assert_eq!(
        stdout,
        format!(
            "revoked node-c (certificate serial 7, key {key}); every member closes its tunnel to it\n"
        )
    );
}

#[test]
fn node_groups_posts_the_new_groups() {
    let api = FakeApi::ok(&NodeGroupsResponse {
        name: "node-c".to_owned(),
        serial: 9,
        groups: vec!["web".to_owned(), "eu".to_owned()],
        own: false,
    });
    let stdout = success(&api.run(&["node", "groups", "node-c", "web,eu"], ""));
    assert_post(
        &api.request(),
        NODE_GROUPS_PATH,
        json!({"name": "node-c", "groups": ["web", "eu"]}),
    );
    assert_eq!(
        stdout,
        "re-issued the certificate of node-c with groups web,eu (serial 9); pushed to it, it takes it without a restart\n"
    );
    let api = FakeApi::ok(&NodeGroupsResponse {
        name: "node-a".to_owned(),
        serial: 10,
        groups: Vec::new(),
        own: true,
    });
    let stdout = success(&api.run(&["node", "groups", "node-a", ""], ""));
    assert_post(
        &api.request(),
        NODE_GROUPS_PATH,
        json!({"name": "node-a", "groups": []}),
    );
    assert!(
        stdout.contains("with no groups (serial 10); in force now"),
        "{stdout}"
    );
}

#[test]
fn leave_posts_an_empty_object() {
    let mut status = member_status(false, 1);
    status.member.as_mut().unwrap().left = true;
    let api = FakeApi::ok(&status);
    let stdout = success(&api.run(&["leave"], ""));
    assert_post(&api.request(), LEAVE_PATH, json!({}));
    assert_eq!(
        stdout,
        "left network prod; the other members have dropped this host\n"
    );
}

#[test]
fn an_api_error_is_one_line_and_exit_1() {
    let message = "this host is already a member of network prod: run `overlayctl leave` first";
    let api = FakeApi::start(
        409,
        serde_json::to_string(&ApiError {
            error: message.to_owned(),
        })
        .unwrap(),
    );
    let out = api.run(&["init", "--cidr", "10.42.0.0/16", "--name", "node-a"], "");
    api.request();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!("overlayctl: {message}\n")
    );
    assert!(out.stdout.is_empty());

    // A body that is not an ApiError: the status code is named.
    let api = FakeApi::start(502, "<html>bad gateway</html>\n<p>".to_owned());
    let out = api.run(&["revoke", "node-c"], "");
    api.request();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("overlayd answered 502"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn status_and_peers_show_members() {
    let api = FakeApi::ok(&member_status(true, 2));
    let stdout = success(&api.run(&["status"], ""));
    let request = api.request();
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("GET", STATUS_PATH)
    );
    for needle in [
        "network:      prod",
        "node name:    node-a",
        "network CA:   sha256:c0ffee",
        "admin:        yes",
        "members:      2 alive",
    ] {
        assert!(stdout.contains(needle), "{needle} missing in\n{stdout}");
    }
    // 90 days ahead when the answer was made; a second later it may show 89.
    assert!(
        stdout.contains("UTC (in 90 days)") || stdout.contains("UTC (in 89 days)"),
        "{stdout}"
    );

    let member = PeerStatus {
        name: Some("node-b".to_owned()),
        state: Some(MemberState::Alive),
        address: Some("10.42.2.1".parse().unwrap()),
        public_key: public_key(),
        endpoint: Some("198.18.0.2:51820".parse().unwrap()),
        subnets: vec!["10.42.2.0/24".parse().unwrap()],
        last_handshake_s: Some(1.0),
        rx_bytes: 10,
        tx_bytes: 20,
        persistent_keepalive: None,
        drops: Default::default(),
        origin: None,
        path: Some(protocol::api::PeerPath::Relayed),
        relay: Some("node-r".to_owned()),
    };
    let api = FakeApi::ok(&vec![member.clone()]);
    let stdout = success(&api.run(&["peers"], ""));
    assert_eq!(api.request().path, PEERS_PATH);
    let mut lines = stdout.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("NAME    STATE  PUBLIC KEY"),
        "{stdout}"
    );
    let row = lines.next().unwrap();
    assert!(row.starts_with("node-b  alive  "), "{stdout}");
    assert!(row.contains("relayed(node-r)"), "{stdout}");
    // --json carries the path and the relay.
    let api = FakeApi::ok(&vec![member]);
    let stdout = success(&api.run(&["peers", "--json"], ""));
    let shown: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown[0]["path"], "relayed", "{stdout}");
    assert_eq!(shown[0]["relay"], "node-r", "{stdout}");
}

#[test]
fn mirror_start_stop_and_status() {
    use protocol::api::{MIRROR_PATH, MIRROR_STOP_PATH, MirrorStatus};
    let running = MirrorStatus {
        active: true,
        interface: Some("ids0".into()),
        cidrs: vec!["10.42.2.0/24".parse().unwrap()],
        ports: vec![80, 53],
        copied: 0,
        dropped: 0,
        write_errors: 0,
        read: true,
    };
    let api = FakeApi::ok(&running);
    let stdout = success(&api.run(
        &[
            "mirror",
            "start",
            "--interface",
            "ids0",
            "--cidr",
            "10.42.2.0/24",
            "--port",
            "80",
            "--port",
            "53",
        ],
        "",
    ));
    assert_post(
        &api.request(),
        MIRROR_PATH,
        json!({"interface": "ids0", "cidrs": ["10.42.2.0/24"], "ports": [80, 53]}),
    );
    assert!(
        stdout.starts_with("mirroring decrypted traffic to ids0"),
        "{stdout}"
    );

    let api = FakeApi::ok(&MirrorStatus {
        copied: 7,
        dropped: 2,
        ..running.clone()
    });
    let stdout = success(&api.run(&["mirror", "status"], ""));
    let request = api.request();
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("GET", MIRROR_PATH)
    );
    assert_eq!(
        stdout,
        "mirroring to ids0 (networks 10.42.2.0/24, ports 80,53): 7 copied, 2 dropped\n"
    );

    let api = FakeApi::ok(&MirrorStatus {
        active: false,
        ..running
    });
    let stdout = success(&api.run(&["mirror", "stop", "--json"], ""));
    assert_post(&api.request(), MIRROR_STOP_PATH, json!({}));
    let shown: MirrorStatus = serde_json::from_str(&stdout).unwrap();
    assert!(!shown.active);

    // Bad values never reach the daemon: exit 2, one line.
    for args in [
        &["mirror", "start", "--port", "0"][..],
        &["mirror", "start", "--cidr", "10.42.2.0"][..],
    ] {
        let out = overlayctl_at(Path::new("/nonexistent/overlayd.sock"), args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(
            text(&out.stderr).lines().count(),
            1,
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn peer_add_set_remove_and_reload() {
    use protocol::api::{
        ConfigInForce, RELOAD_PATH, ReloadReport, STATIC_PEER_ADD_PATH, STATIC_PEER_REMOVE_PATH,
        STATIC_PEER_SET_PATH, StaticPeerChange,
    };
    let key = public_key();
    let k = key.to_string();
    let change = |action: &str| StaticPeerChange {
        public_key: key,
        action: action.to_owned(),
        file: "/var/lib/overlayd/peers.json".to_owned(),
    };
    let api = FakeApi::ok(&change("added"));
    let stdout = success(&api.run(
        &[
            "peer",
            "add",
            &k,
            "--endpoint",
            "198.18.0.13:51820",
            "--subnets",
            "10.42.3.0/24,fd42:3::/64",
            "--keepalive",
            "25",
        ],
        "",
    ));
    assert_post(
        &api.request(),
        STATIC_PEER_ADD_PATH,
        json!({"public_key": k, "name": null, "endpoint": "198.18.0.13:51820", "subnets": ["10.42.3.0/24", "fd42:3::/64"], "persistent_keepalive": 25}),
    );
    assert_eq!(
        stdout,
        format!("peer {k} added (kept in /var/lib/overlayd/peers.json)\n")
    );

    let api = FakeApi::ok(&change("updated"));
    success(&api.run(&["peer", "set", &k, "--keepalive", "0"], ""));
    assert_post(
        &api.request(),
        STATIC_PEER_SET_PATH,
        json!({"public_key": k, "name": null, "endpoint": null, "subnets": null, "persistent_keepalive": 0}),
    );
    let api = FakeApi::ok(&change("removed"));
    success(&api.run(&["peer", "remove", &k], ""));
    assert_post(
        &api.request(),
        STATIC_PEER_REMOVE_PATH,
        json!({"public_key": k}),
    );

    let api = FakeApi::ok(&ReloadReport {
        changed: vec![format!("peer {k} added")],
        restart_required: Vec::new(),
        config: ConfigInForce {
            path: "/etc/overlayd/overlayd.toml".into(),
            sha256: "ab".repeat(32),
            loaded_unix: 1,
            restart_required: Vec::new(),
            last_reload: None,
        },
    });
    let stdout = success(&api.run(&["reload"], ""));
    assert_post(&api.request(), RELOAD_PATH, json!({}));
    assert_eq!(
        stdout,
        format!(
            "reloaded /etc/overlayd/overlayd.toml (sha256 abababababab)\nchanged: peer {k} added\n"
        )
    );
}

#[test]
fn peer_usage_errors_need_no_daemon() {
    let missing = std::path::Path::new("/nonexistent/overlayd.sock");
    for (args, needle) in [
        (
            vec!["peer", "add", "nope", "--subnets", "10.42.3.0/24"],
            "'nope' is not a WireGuard public key",
        ),
        (
            vec![
                "peer",
                "add",
                "r8cTT3NzvOw1sXeRBaXSbDr7MxFHW0yl4+tfW0gL1D8=",
                "--subnets",
                "10.42.3",
            ],
            "'10.42.3' is not an address range",
        ),
        (
            vec![
                "peer",
                "add",
                "r8cTT3NzvOw1sXeRBaXSbDr7MxFHW0yl4+tfW0gL1D8=",
                "--subnets",
                "10.42.3.0/24",
                "--keepalive",
                "0",
            ],
            "0 is not in 1..=65535",
        ),
        (
            vec![
                "peer",
                "set",
                "r8cTT3NzvOw1sXeRBaXSbDr7MxFHW0yl4+tfW0gL1D8=",
            ],
            "nothing to change",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_overlayctl"))
            .arg("--socket")
            .arg(missing)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
    }
}
