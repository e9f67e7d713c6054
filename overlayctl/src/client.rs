//! A small HTTP/1.1 client (hyper) for the daemon's unix socket: one request per call,
//! JSON both ways, bounded by a timeout.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use protocol::api::ApiError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long a local request may take: the daemon answers from its own state.
pub const LOCAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `join` may take: the daemon waits for the admin host over the network.
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// GETs `path` from the daemon at `socket` and decodes the JSON answer.
pub fn get<T: DeserializeOwned>(socket: &Path, path: &str) -> anyhow::Result<T> {
    let body = request(socket, hyper::Method::GET, path, None, LOCAL_TIMEOUT)?;
    decode(&body)
}

/// POSTs `body` as JSON to `path` on the daemon at `socket`, waits at most `timeout`, and
/// decodes the JSON answer.
pub fn post<B: Serialize, T: DeserializeOwned>(
    socket: &Path,
    path: &str,
    body: &B,
    timeout: Duration,
) -> anyhow::Result<T> {
    let json = serde_json::to_vec(body).context("cannot encode the request")?;
    let answer = request(socket, hyper::Method::POST, path, Some(json), timeout)?;
    decode(&answer)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(body)
        .context("overlayd's answer is not the expected JSON (are overlayd and overlayctl the same version?)")
}

fn request(
    socket: &Path,
    method: hyper::Method,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> anyhow::Result<Bytes> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        tokio::time::timeout(timeout, request_async(socket, method, path, body))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "overlayd did not answer within {} s; check its log (e.g. `journalctl -u overlayd`)",
                    timeout.as_secs()
                )
            })?
    })
}

async fn request_async(
    socket: &Path,
    method: hyper::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<Bytes> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                "is overlayd running? (start it, or pass --socket / OVERLAYD_SOCKET)"
            }
            std::io::ErrorKind::PermissionDenied => {
                "the API is for root only: run overlayctl as root"
            }
            _ => "check that overlayd is running",
        };
        anyhow::anyhow!("cannot reach overlayd at {}: {e}; {hint}", socket.display())
    })?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .context("HTTP handshake with overlayd failed")?;
    // The connection task ends when `sender` is dropped or the daemon closes the socket.
    tokio::spawn(conn);
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "overlayd");
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .context("cannot build the request")?;
    let response = sender
        .send_request(request)
        .await
        .context("request to overlayd failed")?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("cannot read overlayd's answer")?
        .to_bytes();
    if !status.is_success() {
        anyhow::bail!(error_message(status, &body));
    }
    Ok(body)
}

/// The line shown for an error answer: the daemon's own sentence when the body is an
/// [`ApiError`], else the status code and what little the body says.
fn error_message(status: hyper::StatusCode, body: &[u8]) -> String {
    if let Ok(e) = serde_json::from_slice::<ApiError>(body) {
        return e.error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() || text.len() > 200 || text.contains('\n') {
        format!("overlayd answered {status} with no readable error; check its log")
    } else {
        format!("overlayd answered {status}: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers() {
        let bad = hyper::StatusCode::BAD_GATEWAY;
        assert_eq!(
            error_message(bad, br#"{"error":"the admin host did not answer"}"#),
            "the admin host did not answer"
        );
        assert_eq!(
            error_message(bad, b""),
            "overlayd answered 502 Bad Gateway with no readable error; check its log"
        );
        assert_eq!(
            error_message(bad, b"upstream gone\n"),
            "overlayd answered 502 Bad Gateway: upstream gone"
        );
    }
}
