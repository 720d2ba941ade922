//! The agent's end of the plugin protocol: a unix stream socket, mode 0600
//! in a directory of mode 0700 (only root on the node talks to it), one
//! request per connection, each a length-prefixed JSON
//! [`AgentRequest`] answered by one [`AgentResponse`]
//! (`spur_core::cniproto`). Reading the request and serving it are both
//! bounded in time, so a stuck plugin or API never holds a task forever.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use spur_core::cniproto::{
    check_proto, frame_body_len, AgentRequest, AgentResponse, CniError, FRAME_HEADER_BYTES,
    PROTO_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::Agent;

/// The longest a connection may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest the agent works on one request (the plugin waits longer).
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(45);

/// Why the socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Creating the directory, removing a stale socket, binding or setting
    /// permissions failed.
    #[error("CNI socket {path}: {what}: {source}")]
    Socket {
        /// The socket path.
        path: String,
        /// The step.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Binds the socket at `path`: its directory is created with mode 0700 (or
/// tightened to it), a stale socket file is replaced, and the socket gets
/// mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let err = |what: &'static str| {
        let path = path.display().to_string();
        move |source| ServerError::Socket { path, what, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err("creating its directory"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(err("setting its directory to mode 0700"))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("removing the stale socket")(e)),
    }
    let listener = UnixListener::bind(path).map_err(err("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(err("setting mode 0600"))?;
    Ok(listener)
}

/// Serves connections until the listener fails; each in its own task.
pub async fn serve(listener: UnixListener, agent: Arc<Agent>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let agent = agent.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_one(stream, &agent).await {
                        tracing::debug!(error = %e, "plugin connection ended early");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a plugin connection failed");
                tokio::task::yield_now().await;
            }
        }
    }
}

async fn serve_one(mut stream: UnixStream, agent: &Agent) -> std::io::Result<()> {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Err(_) => AgentResponse::err(CniError::io(format!(
            "the plugin did not send its request within {READ_TIMEOUT:?}"
        ))),
        Ok(Err(e)) => AgentResponse::err(e),
        Ok(Ok(req)) => match tokio::time::timeout(SERVE_TIMEOUT, agent.handle(&req)).await {
            Ok(Ok(v)) => AgentResponse::ok(v),
            Ok(Err(e)) => AgentResponse::err(e),
            Err(_) => AgentResponse::err(CniError::try_again_later(format!(
                "spur-agent did not finish {} within {SERVE_TIMEOUT:?}",
                req.command
            ))),
        },
    };
    let bytes = match response.encode() {
        Ok(b) => b,
        Err(e) => match AgentResponse::err(e).encode() {
            Ok(b) => b,
            Err(_) => return Ok(()),
        },
    };
    stream.write_all(&bytes).await?;
    stream.shutdown().await
}

async fn read_request(stream: &mut UnixStream) -> Result<AgentRequest, CniError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| CniError::io(format!("reading the request: {e}")))?;
    let len = frame_body_len(header)?;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| CniError::io(format!("reading the request: {e}")))?;
    let req = AgentRequest::decode(&body)?;
    check_proto(req.proto, PROTO_VERSION)?;
    Ok(req)
}
