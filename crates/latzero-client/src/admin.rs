//! Admin requests without a handshake: `status`, `ping`, `shutdown`, `backup`, and the listings
//! `app_list`, `pool_list`, `pool_show`. Used by the `latzero` CLI. When `LATZERO_TOKEN` (or,
//! without it, `LATZERO_JWT`) is set in the environment, each request carries it as its
//! credential (servers started with `--require-auth` refuse admin requests without one).

use std::time::Duration;

use latzero_proto::{Endpoint, TlsVerify};
use serde_json::{Value, json};

use crate::connection::{FrameReader, Writer, open_with_request};
use crate::error::ClientError;

pub use crate::connection::{default_data_dir, resolve};

/// Where admin requests go: an endpoint, how to verify the server over TLS (TCP only), and the
/// longest answer to read.
#[derive(Debug, Clone)]
pub struct Target {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Connect over TLS, verifying the server this way.
    pub tls: Option<TlsVerify>,
    /// The longest answer read, bytes: the server's `max_frame_len` where it is known (its
    /// `server.json` says it), else the default (16 MiB). A longer one fails with
    /// [`ClientError::AnswerTooLarge`].
    pub max_frame_len: usize,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.endpoint, &self.tls) {
            (Endpoint::Tcp(a), Some(_)) => write!(f, "tls://{a}"),
            (e, _) => e.fmt(f),
        }
    }
}

impl From<Endpoint> for Target {
    fn from(endpoint: Endpoint) -> Self {
        Target {
            endpoint,
            tls: None,
            max_frame_len: latzero_proto::DEFAULT_MAX_FRAME_LEN,
        }
    }
}

/// One anonymous request; returns the answer and the still-open connection.
async fn request(target: &Target, action: &str, wait: Duration) -> Result<(Value, FrameReader, Writer), ClientError> {
    let mut request = json!({"action": action, "id": 1});
    with_env_auth(&mut request);
    let (json, reader, w, _) = open_with_request(
        &target.endpoint,
        target.tls.as_ref(),
        &request,
        target.max_frame_len,
        wait,
    )
    .await?;
    Ok((serde_json::from_slice(&json)?, reader, w))
}

/// Any anonymous request (`fields` gets an `action` and an `id`); the server's answer, with
/// error frames as `Err`.
pub async fn query(target: &Target, action: &str, mut fields: Value) -> Result<Value, ClientError> {
    fields["action"] = json!(action);
    fields["id"] = json!(1);
    with_env_auth(&mut fields);
    let (json, _r, _w, _) = open_with_request(
        &target.endpoint,
        target.tls.as_ref(),
        &fields,
        target.max_frame_len,
        Duration::from_secs(10),
    )
    .await?;
    Ok(serde_json::from_slice(&json)?)
}

/// Asks the server to back its database up now; calls `progress(percent)` as the copy goes and
/// returns the `backup_done` answer (`path`, `bytes`).
pub async fn backup(target: &Target, mut progress: impl FnMut(u64)) -> Result<Value, ClientError> {
    let (r, mut w, _) = crate::connection::open(&target.endpoint, target.tls.as_ref()).await?;
    let mut reader = FrameReader::new(r, target.max_frame_len);
    let mut req = json!({"action": "backup", "id": 1});
    with_env_auth(&mut req);
    crate::connection::send_request(&mut w, &target.endpoint, &req).await?;
    loop {
        let frame = reader.expect_frame().await?;
        let v: Value = serde_json::from_slice(frame.json())?;
        match v["action"].as_str() {
            Some("backup_progress") => progress(v["percent"].as_u64().unwrap_or(0)),
            Some("backup_done") => return Ok(v),
            Some("error") => {
                let env = latzero_proto::message::ServerFrame::parse(frame.json())
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                return Err(crate::client::remote_error(&env).into());
            }
            _ => {}
        }
    }
}

/// The server's `status_result`.
pub async fn status(target: &Target) -> Result<Value, ClientError> {
    Ok(request(target, "status", Duration::from_secs(10)).await?.0)
}

/// The server's status listing at most `limit` pools and connected apps (the first by name);
/// `pools_total` and `apps_total` say how many there are. A status of every pool and app grows
/// with the server and is refused past its `max_frame_len`; this one does not grow.
pub async fn status_limited(target: &Target, limit: usize) -> Result<Value, ClientError> {
    query(target, "status", json!({ "limit": limit })).await
}

/// The server's `health_result`: `healthy`, and `checks` (each `name`, `ok`, `ms`, `detail`).
/// An unhealthy server answers too; an error is a server not reached, or one refusing (a
/// credential, or `SHUTTING_DOWN`).
pub async fn health(target: &Target) -> Result<Value, ClientError> {
    query(target, "health", json!({})).await
}

/// Round-trip time of a `ping`.
pub async fn ping(target: &Target) -> Result<Duration, ClientError> {
    let t = std::time::Instant::now();
    request(target, "ping", Duration::from_secs(10)).await?;
    Ok(t.elapsed())
}

/// Asks the server to shut down and waits until it has closed this connection (so the server
/// has finished its graceful shutdown of the sessions), at most `wait`.
pub async fn shutdown(target: &Target, wait: Duration) -> Result<(), ClientError> {
    // Keep our write side open: closing it would end the session before the server does.
    let (_, mut reader, _w) = request(target, "shutdown", wait).await?;
    let drained = async { while let Ok(Some(_)) = reader.next().await {} };
    tokio::time::timeout(wait, drained)
        .await
        .map_err(|_| ClientError::NoReply(wait))?;
    Ok(())
}

/// Whether the environment gives a credential (`LATZERO_TOKEN` or `LATZERO_JWT`).
pub fn has_env_credential() -> bool {
    crate::options::Credential::from_env().is_some()
}

/// Adds the environment's credential, if any, to a request.
fn with_env_auth(req: &mut Value) {
    if let Some(c) = crate::options::Credential::from_env() {
        req["auth"] = c.to_json();
    }
}
