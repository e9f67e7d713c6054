//! The plugin's calls end to end, on a temporary state directory, where they need no
//! netlink: the handshake, refusals, and a restart that loses nothing.

use super::*;
use protocol::api::Membership;
use serde_json::{Value, json};

use super::book::GATEWAY_TYPE;

/// No dockerd answers here: nothing is reclaimed.
const NO_DOCKERD: &str = "/nonexistent/docker.sock";

/// A plugin on `dir` for a member whose slice is 10.42.7.0/24.
fn member_plugin(dir: &Path) -> anyhow::Result<Plugin> {
    Plugin::open(
        dir,
        1420,
        "ovl0",
        Path::new(NO_DOCKERD),
        member_view("10.42.7.0/24"),
    )
}

fn member_view(subnet: &str) -> Arc<Mutex<View>> {
    let view = View {
        membership: Some(Membership {
            network: "testnet".into(),
            cidr: "10.42.0.0/16".parse().unwrap(),
            ranges: Vec::new(),
            ca_fingerprint: "sha256:00".into(),
            name: "h1".into(),
            subnets: vec![subnet.parse().unwrap()],
            groups: Vec::new(),
            certificate_expires_unix: 0,
            certificate_serial: 0,
            certificate_renewed_unix: None,
            certificate_renew_at_unix: 0,
            admin: false,
            control_port: 51821,
            member_count: 1,
            left: false,
            ca: None,
        }),
        members: Vec::new(),
        nat: false,
        ..View::default()
    };
    Arc::new(Mutex::new(view))
}

async fn call(p: &Plugin, method: &str, body: &str) -> Result<Value, String> {
    p.call(method, body.as_bytes()).await.map_err(|f| f.message)
}

#[tokio::test]
async fn handshake_refusals_and_a_restart_that_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let outsider = Plugin::open(
        dir.path(),
        1420,
        "ovl0",
        Path::new(NO_DOCKERD),
        Arc::new(Mutex::new(View::default())),
    )
    .unwrap();
    let activate = call(&outsider, "Plugin.Activate", "").await.unwrap();
    assert_eq!(
        activate,
        json!({"Implements": ["NetworkDriver", "IpamDriver"]})
    );
    let caps = call(&outsider, "NetworkDriver.GetCapabilities", "")
        .await
        .unwrap();
    assert_eq!(caps["Scope"], "local");
    let caps = call(&outsider, "IpamDriver.GetCapabilities", "")
        .await
        .unwrap();
    assert_eq!(caps["RequiresRequestReplay"], false);
    let pool = r#"{"AddressSpace":"x","Pool":"10.42.0.0/16","SubPool":"","Options":{},"V6":false}"#;
    let e = call(&outsider, "IpamDriver.RequestPool", pool)
        .await
        .unwrap_err();
    assert_eq!(
        e,
        "this host is not in an overlay network; run overlayctl join first"
    );
    assert!(
        call(&outsider, "NetworkDriver.Nope", "{}")
            .await
            .unwrap_err()
            .contains("does not implement")
    );
    assert!(
        !dir.path().join(STATE_FILE).exists(),
        "a refusal writes nothing"
    );

    let p = member_plugin(dir.path()).unwrap();
    let g = call(&p, "IpamDriver.RequestPool", pool).await.unwrap();
    assert_eq!(g["Data"][GATEWAY_TYPE], "10.42.7.1/24");
    let id = g["PoolID"].as_str().unwrap().to_owned();
    let ask = format!(r#"{{"PoolID":"{id}","Address":"","Options":null}}"#);
    let a = call(&p, "IpamDriver.RequestAddress", &ask).await.unwrap();
    assert_eq!(a["Address"], "10.42.7.2/24");
    drop(p);
    // A restarted plugin knows what it handed out: the next address is fresh.
    let p = member_plugin(dir.path()).unwrap();
    let b = call(&p, "IpamDriver.RequestAddress", &ask).await.unwrap();
    assert_eq!(b["Address"], "10.42.7.3/24");
    let e = call(&p, "IpamDriver.RequestPool", pool).await.unwrap_err();
    assert!(e.contains("overlaps"), "{e}");
    let unknown = r#"{"NetworkID":"abc","EndpointID":"def"}"#;
    assert!(
        call(&p, "NetworkDriver.Join", unknown)
            .await
            .unwrap_err()
            .contains("does not know network abc")
    );
    assert_eq!(
        call(&p, "NetworkDriver.DeleteEndpoint", unknown)
            .await
            .unwrap(),
        json!({})
    );
    assert_eq!(
        call(&p, "NetworkDriver.DeleteNetwork", unknown)
            .await
            .unwrap(),
        json!({})
    );
    std::fs::write(dir.path().join(STATE_FILE), "{oops").unwrap();
    let e = member_plugin(dir.path()).err().unwrap();
    assert!(format!("{e:#}").contains("docker.json is damaged"), "{e:#}");
}
