//! What dockerd says, through its API socket: the endpoints and addresses a network holds now
//! (`GET /networks/<id>`), for [`super::book::Book::reclaim`], and the names of the
//! containers on it with their network aliases (`GET /containers/<id>/json`), for
//! `super::names`. Never called inside a plugin call (dockerd may be waiting on that call:
//! moby's plugins_network.md and plugins_ipam.md).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use super::book::Attached;

/// Longest wait for one answer (dockerd answers this from memory in milliseconds).
const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read (a network with a few hundred containers is tens of KB).
const MAX_ANSWER: usize = 4 << 20;

#[derive(Deserialize)]
struct Network {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Containers", default)]
    containers: Option<std::collections::BTreeMap<String, Container>>,
}

#[derive(Deserialize)]
struct Container {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "EndpointID", default)]
    endpoint_id: String,
    #[serde(rename = "IPv4Address", default)]
    ipv4_address: String,
}

/// One container on a network, as `GET /networks/<id>` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its ID.
    pub id: String,
    /// Its name (no leading `/`).
    pub name: String,
    /// Its endpoint on the network.
    pub endpoint_id: String,
    /// Its address there.
    pub address: Ipv4Addr,
}

/// A network's name on this host and its local containers, or `None` when dockerd does
/// not know it.
pub async fn members(
    api: &Path,
    network_id: &str,
) -> Result<Option<(String, Vec<Member>)>, AskError> {
    let path = format!("/networks/{network_id}");
    let Some(body) = ask(api, &path).await? else {
        return Ok(None);
    };
    let network: Network = serde_json::from_slice(&body)
        .map_err(|e| AskError::Answer(anyhow::anyhow!("dockerd's answer to GET {path}: {e}")))?;
    let members = network
        .containers
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(id, c)| {
            let address = c.ipv4_address.split('/').next()?.parse().ok()?;
            Some(Member {
                id,
                name: c.name.trim_start_matches('/').to_owned(),
                endpoint_id: c.endpoint_id,
                address,
            })
        })
        .collect();
    Ok(Some((network.name, members)))
}

#[derive(Deserialize)]
struct Inspected {
    #[serde(rename = "NetworkSettings", default)]
    settings: Option<NetworkSettings>,
}

#[derive(Deserialize)]
struct NetworkSettings {
    #[serde(rename = "Networks", default)]
    networks: Option<std::collections::BTreeMap<String, Attachment>>,
}

#[derive(Deserialize)]
struct Attachment {
    #[serde(rename = "Aliases", default)]
    aliases: Option<Vec<String>>,
    #[serde(rename = "DNSNames", default)]
    dns_names: Option<Vec<String>>,
}

/// Container `id`'s aliases on network `network` (by name), as given with
/// `--network-alias` or by Compose (its service name); empty when it has none or is gone.
pub async fn aliases(api: &Path, id: &str, network: &str) -> Result<Vec<String>, AskError> {
    let path = format!("/containers/{id}/json");
    let Some(body) = ask(api, &path).await? else {
        return Ok(Vec::new());
    };
    parse_aliases(&body, network).map_err(AskError::Answer)
}

fn parse_aliases(body: &[u8], network: &str) -> anyhow::Result<Vec<String>> {
    let inspected: Inspected = serde_json::from_slice(body)
        .context("dockerd's answer to GET /containers/<id>/json is not a container")?;
    let Some(a) = inspected
        .settings
        .and_then(|s| s.networks)
        .and_then(|mut n| n.remove(network))
    else {
        return Ok(Vec::new());
    };
    let mut all = a.aliases.unwrap_or_default();
    all.extend(a.dns_names.unwrap_or_default());
    Ok(all)
}

/// `GET path`: the body of a 200, `None` for a 404.
async fn ask(api: &Path, path: &str) -> Result<Option<bytes::Bytes>, AskError> {
    match tokio::time::timeout(TIMEOUT, get(api, path)).await {
        Err(_) => Err(AskError::Unreachable(
            api.display().to_string(),
            format!("no answer within {} s", TIMEOUT.as_secs()),
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok((404, _))) => Ok(None),
        Ok(Ok((200, body))) => Ok(Some(body)),
        Ok(Ok((status, body))) => Err(AskError::Answer(anyhow::anyhow!(
            "dockerd answered GET {path} with {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
        ))),
    }
}

/// Why dockerd could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// Nothing answers on the socket (dockerd not started yet, or another path).
    #[error("dockerd does not answer on {0}: {1}")]
    Unreachable(String, String),
    /// It answered something else than a network.
    #[error("{0:#}")]
    Answer(anyhow::Error),
}

/// What network `network_id` holds now, or `None` when dockerd does not know it.
pub async fn attached(api: &Path, network_id: &str) -> Result<Option<Attached>, AskError> {
    match tokio::time::timeout(TIMEOUT, get(api, &format!("/networks/{network_id}"))).await {
        Err(_) => Err(AskError::Unreachable(
            api.display().to_string(),
            format!("no answer within {} s", TIMEOUT.as_secs()),
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok((404, _))) => Ok(None),
        Ok(Ok((200, body))) => parse(&body).map(Some).map_err(AskError::Answer),
        Ok(Ok((status, body))) => Err(AskError::Answer(anyhow::anyhow!(
            "dockerd answered GET /networks/{network_id} with {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
        ))),
    }
}

/// Parses `GET /networks/<id>`'s answer: the local containers' endpoints and addresses.
fn parse(body: &[u8]) -> anyhow::Result<Attached> {
    let network: Network = serde_json::from_slice(body)
        .context("dockerd's answer to GET /networks is not a network")?;
    let mut attached = Attached::default();
    for c in network.containers.unwrap_or_default().into_values() {
        if !c.endpoint_id.is_empty() {
            attached.endpoints.insert(c.endpoint_id);
        }
        let plain = c.ipv4_address.split('/').next().unwrap_or_default();
        if let Ok(a) = plain.parse::<Ipv4Addr>() {
            attached.addresses.insert(a);
        }
    }
    Ok(attached)
}

/// One `GET` on the API socket: (status, body).
async fn get(api: &Path, path: &str) -> Result<(u16, bytes::Bytes), AskError> {
    let unreachable =
        |e: &dyn std::fmt::Display| AskError::Unreachable(api.display().to_string(), e.to_string());
    let stream = tokio::net::UnixStream::connect(api)
        .await
        .map_err(|e| unreachable(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "docker")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| AskError::Answer(e.into()))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| AskError::Answer(anyhow::anyhow!("reading dockerd's answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_network_answer() {
        // Trimmed from dockerd 20.10's answer.
        let body = br#"{"Name":"ovl","Id":"94a1","Driver":"overlayd","IPAM":{"Driver":"overlayd"},
            "Containers":{"c0ffee":{"Name":"a","EndpointID":"e1","MacAddress":"02:42:0a:2a:07:02",
            "IPv4Address":"10.42.7.2/24","IPv6Address":""},
            "beef":{"Name":"b","EndpointID":"e2","IPv4Address":"10.42.7.3/24"}},"Options":{}}"#;
        let a = parse(body).unwrap();
        assert_eq!(a.endpoints, ["e1".to_owned(), "e2".to_owned()].into());
        let addrs: Vec<String> = a.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, vec!["10.42.7.2", "10.42.7.3"]);
        assert_eq!(
            parse(br#"{"Name":"x","Containers":null}"#).unwrap(),
            Attached::default()
        );
        assert_eq!(parse(br#"{"Name":"x"}"#).unwrap(), Attached::default());
        assert!(parse(b"not json").is_err());
    }

    #[test]
    fn parses_a_containers_aliases_on_one_network() {
        // Trimmed from dockerd's answer for a Compose service's container.
        let body = br#"{"Id":"c0ffee","Name":"/app-web-1","NetworkSettings":{"Networks":{
            "ovl":{"Aliases":["app-web-1","web","c0ffee"],"EndpointID":"e1"},
            "other":{"Aliases":["elsewhere"]}}}}"#;
        assert_eq!(
            parse_aliases(body, "ovl").unwrap(),
            vec!["app-web-1", "web", "c0ffee"]
        );
        let newer = br#"{"NetworkSettings":{"Networks":{"ovl":{"Aliases":null,"DNSNames":["web","c0ffee"]}}}}"#;
        assert_eq!(parse_aliases(newer, "ovl").unwrap(), vec!["web", "c0ffee"]);
        assert!(parse_aliases(body, "gone").unwrap().is_empty());
        assert!(
            parse_aliases(br#"{"NetworkSettings":null}"#, "ovl")
                .unwrap()
                .is_empty()
        );
        assert!(parse_aliases(b"not json", "ovl").is_err());
    }

    #[tokio::test]
    async fn a_socket_where_nothing_answers_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let e = attached(&dir.path().join("docker.sock"), "x")
            .await
            .unwrap_err();
        assert!(matches!(e, AskError::Unreachable(..)), "{e}");
        assert!(e.to_string().contains("dockerd does not answer on"), "{e}");
    }

    #[tokio::test]
    async fn asks_a_server_on_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let app = axum::Router::new()
            .route(
                "/networks/{id}",
                axum::routing::get(|axum::extract::Path(id): axum::extract::Path<String>| async move {
                    if id == "known" {
                        (
                            axum::http::StatusCode::OK,
                            r#"{"Containers":{"c":{"EndpointID":"e9","IPv4Address":"10.42.7.9/24"}}}"#,
                        )
                    } else {
                        (axum::http::StatusCode::NOT_FOUND, r#"{"message":"network not found"}"#)
                    }
                }),
            );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let a = attached(&path, "known").await.unwrap().unwrap();
        assert_eq!((a.endpoints.len(), a.addresses.len()), (1, 1));
        assert!(attached(&path, "gone").await.unwrap().is_none());
        server.abort();
    }
}
