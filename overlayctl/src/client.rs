//! A small HTTP/1.1 client (hyper) for the daemon's unix socket.

use std::path::Path;

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use protocol::api::ApiError;
use serde::de::DeserializeOwned;

/// GETs `path` from the daemon at `socket` and decodes the JSON answer.
pub fn get<T: DeserializeOwned>(socket: &Path, path: &str) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(get_async(socket, path))
}

async fn get_async<T: DeserializeOwned>(socket: &Path, path: &str) -> anyhow::Result<T> {
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
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header("host", "overlayd")
        .body(Empty::<Bytes>::new())
        .context("cannot build the request")?;
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sender.send_request(request),
    )
    .await
    .context("overlayd did not answer within 10 s")?
    .context("request to overlayd failed")?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("cannot read overlayd's answer")?
        .to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<ApiError>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        anyhow::bail!("overlayd answered {status}: {message}");
    }
    serde_json::from_slice(&body)
        .context("overlayd's answer is not the expected JSON (version mismatch?)")
}
