//! What dockerd says, through its API socket: the endpoints and addresses a network holds now
//! (`GET /networks/<id>`), for [`super::book::Book::reclaim`]. Never called inside a plugin
//! call (dockerd may be waiting on that call: moby's plugins_network.md and plugins_ipam.md).

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
    #[serde(rename = "Containers", default)]
    containers: Option<std::collections::BTreeMap<String, Container>>,
}

#[derive(Deserialize)]
struct Container {
    #[serde(rename = "EndpointID", default)]
    endpoint_id: String,
    #[serde(rename = "IPv4Address", default)]
    ipv4_address: String,
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
