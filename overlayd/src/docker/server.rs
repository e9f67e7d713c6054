//! The plugin's server: its unix socket, bound before the daemon touches the system, and
//! the one axum handler that bounds every call by [`HANDLER_TIMEOUT`] and answers JSON.

use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{CONTENT_TYPE, Failure, HANDLER_TIMEOUT, Plugin};
use crate::util::{SocketNames, UnixSocket};

fn answer(status: StatusCode, value: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        value.to_string(),
    )
        .into_response()
}

/// Every plugin call, by path: parsed, bounded by [`HANDLER_TIMEOUT`], answered as JSON.
async fn dispatch(State(plugin): State<Arc<Plugin>>, uri: Uri, body: Bytes) -> Response {
    let method = uri.path().trim_start_matches('/').to_owned();
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(HANDLER_TIMEOUT, plugin.call(&method, &body)).await;
    let result = result.unwrap_or_else(|_| {
        Err(Failure::new(format!(
            "overlayd did not finish {method} within {} s; see overlayd's log",
            HANDLER_TIMEOUT.as_secs()
        )))
    });
    match result {
        Ok(v) => {
            tracing::debug!(
                method,
                took_ms = started.elapsed().as_millis() as u64,
                "plugin call"
            );
            answer(StatusCode::OK, v)
        }
        Err(f) => {
            tracing::info!(method, reason = %f.message, "plugin call refused");
            answer(f.status, json!({"Err": f.message}))
        }
    }
}

/// How errors name the plugin socket; its folder is made 0755 (dockerd looks there).
const PLUGIN_SOCKET: SocketNames = SocketNames {
    folder_mode: 0o755,
    folder: "the Docker plugin folder",
    socket: "the Docker plugin socket",
    stale: "the stale plugin socket",
    restrict: "",
    busy: |path| {
        format!(
            "another process is already serving the Docker plugin socket {}; stop it or set [docker] socket",
            path.display()
        )
    },
};

/// A bound plugin socket; removes its file when dropped.
pub struct PluginSocket(UnixSocket);

impl PluginSocket {
    /// Binds `path` (0600; its folder is made 0755 if missing). Refuses when something
    /// answers on it; removes a stale socket left by a crash (dockerd would otherwise stall
    /// on it).
    pub fn bind(path: &Path) -> anyhow::Result<PluginSocket> {
        UnixSocket::bind(path, &PLUGIN_SOCKET).map(PluginSocket)
    }

    /// Serves `plugin` in a task; the returned guard stops it and removes the socket.
    pub fn serve(mut self, plugin: Plugin) -> anyhow::Result<Served> {
        let listener = self.0.take_listener("plugin socket")?;
        let plugin = Arc::new(plugin);
        let app = axum::Router::new()
            .fallback(dispatch)
            .with_state(plugin.clone());
        let path = self.0.path().to_owned();
        let task = tokio::spawn(async move {
            plugin.restore().await;
            let serve = async {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "the Docker plugin server stopped");
                }
            };
            tokio::join!(serve, plugin.reclaim_leaks(), plugin.watch_names());
        });
        tracing::info!(socket = %path.display(), "serving the Docker network and IPAM plugin");
        Ok(Served {
            task,
            _socket: self,
        })
    }
}

/// The running plugin server; dropping it stops the server and removes the socket.
pub struct Served {
    task: tokio::task::JoinHandle<()>,
    _socket: PluginSocket,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}
