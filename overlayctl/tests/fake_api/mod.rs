//! A fake `overlayd` for CLI tests: a tokio `UnixListener` in a temp dir that reads one
//! HTTP/1.1 request, records its method, path and JSON body, and gives one canned answer.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as the fake API server saw it.
#[derive(Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    /// The JSON body; `Null` when there was none.
    pub body: serde_json::Value,
}

/// A fake overlayd: a unix socket in a temp dir that takes one request and gives one
/// canned answer.
pub struct FakeApi {
    pub socket: PathBuf,
    server: std::thread::JoinHandle<Recorded>,
    _dir: tempfile::TempDir,
}

impl FakeApi {
    pub fn start(status: u16, answer: String) -> FakeApi {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("overlayd.sock");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Bound before overlayctl starts, so it never races the listener.
        let listener = runtime
            .block_on(async { tokio::net::UnixListener::bind(&socket) })
            .unwrap();
        let server = std::thread::spawn(move || {
            runtime.block_on(async move {
                tokio::time::timeout(Duration::from_secs(20), serve_one(listener, status, answer))
                    .await
                    .expect("overlayctl sent no request within 20 s")
            })
        });
        FakeApi {
            socket,
            server,
            _dir: dir,
        }
    }

    pub fn ok<T: serde::Serialize>(answer: &T) -> FakeApi {
        FakeApi::start(200, serde_json::to_string(answer).unwrap())
    }

    pub fn run(&self, args: &[&str], stdin: &str) -> Output {
        super::overlayctl_at(&self.socket, args, stdin)
    }

    pub fn request(self) -> Recorded {
        self.server.join().unwrap()
    }
}

async fn serve_one(listener: tokio::net::UnixListener, status: u16, answer: String) -> Recorded {
    let (mut stream, _) = listener.accept().await.unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_len = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the request ended inside its head");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buffer[..head_len].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap().split(' ');
    let method = request_line.next().unwrap().to_owned();
    let path = request_line.next().unwrap().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body_len: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
    while buffer.len() < head_len + body_len {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the request ended inside its body");
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = &buffer[head_len..head_len + body_len];
    let response = format!(
        "HTTP/1.1 {status} Fake\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
    stream.write_all(response.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    Recorded {
        method,
        path,
        content_type: header("content-type"),
        body: if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(body).unwrap()
        },
    }
}
