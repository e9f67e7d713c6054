//! Reading many daemons quickly: a `GET` on a daemon's API socket straight from this process,
//! and a `GET /metrics` inside a host's namespace, without starting a process for each.
//!
//! Why: asking 100 hosts what they see through `overlayctl` in `ip netns exec` costs a
//! process and a mount namespace per question (tens of ms on a busy 2-core machine), so a
//! poll of every host takes seconds and a timing measured that way says more about the
//! poller than about the daemons. The API socket is a file, reachable from the initial
//! namespace; the answers are the same JSON `overlayctl --json` prints (`protocol::api`).
//! Forming the network and anything an operator would type still goes through `overlayctl`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use protocol::api::PeerStatus;

use crate::Testnet;

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read (a peer list of 245 members is ~100 KiB).
const MAX_ANSWER_LEN: u64 = 16 << 20;

impl Testnet {
    /// Host `i`'s `GET /v1/peers`, read from its API socket (what `overlayctl peers --json`
    /// shows), without starting a process.
    pub fn peers_api(&self, i: usize) -> Result<Vec<PeerStatus>> {
        self.host(i)?;
        let socket = self.socket_path(i);
        let body = get_unix(&socket, "/v1/peers")
            .with_context(|| format!("h{i}: cannot read its peers from {}", socket.display()))?;
        serde_json::from_slice(&body).with_context(|| format!("h{i}: /v1/peers is no peer list"))
    }

    /// `GET /metrics` from `addr` inside host `i`'s namespace (the daemon's `[metrics]
    /// listen`), as text.
    pub fn scrape_metrics(&self, i: usize, addr: SocketAddr) -> Result<String> {
        let netns = self.host_ns(i);
        let body = in_netns(&netns, move || -> Result<Vec<u8>> {
            let stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
                .with_context(|| format!("cannot connect to {addr}"))?;
            exchange(stream, "/metrics")
        })?
        .with_context(|| format!("h{i}: cannot scrape http://{addr}/metrics"))?;
        String::from_utf8(body).with_context(|| format!("h{i}: /metrics is not UTF-8"))
    }
}

/// Runs `f` on a thread of its own that has entered network namespace `netns` (the calling
/// thread's namespace does not change).
pub(crate) fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = Path::new("/run/netns").join(netns);
    let file =
        std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns(2) on a namespace file held open; it moves only this thread,
                // which ends with the scope.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!(
                        "cannot enter namespace {netns}: {}",
                        std::io::Error::last_os_error()
                    );
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| bail!("the thread inside namespace {netns} panicked"))
    })
}

/// `GET path` on the HTTP server at unix socket `socket`; the body of a 200 answer.
fn get_unix(socket: &Path, path: &str) -> Result<Vec<u8>> {
    let stream = UnixStream::connect(socket).context("cannot connect")?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    exchange(stream, path)
}

/// One HTTP/1.1 `GET` with `Connection: close` over `stream`; the body of a 200 answer.
fn exchange<S: Read + Write>(mut stream: S, path: &str) -> Result<Vec<u8>> {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: testnet\r\nConnection: close\r\n\r\n"
    )
    .context("cannot send the request")?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER_LEN)
        .read_to_end(&mut answer)
        .context("cannot read the answer")?;
    parse_answer(&answer)
}

/// The body of an HTTP/1.1 answer read to its end, if its status is 200.
fn parse_answer(answer: &[u8]) -> Result<Vec<u8>> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the answer has no end of headers")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let body = &answer[split + 4..];
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!(
            "answered {status:?}: {}",
            String::from_utf8_lossy(body).trim()
        );
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        dechunk(body)
    } else {
        Ok(body.to_vec())
    }
}

/// The payload of a chunked body.
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk has no size line")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("chunk size {size_text:?} is not hex"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            bail!("the answer ends inside a chunk");
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_bodies_are_read() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]";
        assert_eq!(parse_answer(plain).unwrap(), b"[]");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_answer(chunked).unwrap(), b"abcde");
    }

    #[test]
    fn errors_and_garbage_are_errors_not_panics() {
        let refused = b"HTTP/1.1 503 Service Unavailable\r\n\r\nnot a member";
        let e = parse_answer(refused).unwrap_err().to_string();
        assert!(e.contains("503") && e.contains("not a member"), "{e}");
        assert!(parse_answer(b"junk").is_err());
        let cut = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nff\r\nab";
        assert!(parse_answer(cut).is_err());
        let bad = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n";
        assert!(parse_answer(bad).is_err());
    }
}
