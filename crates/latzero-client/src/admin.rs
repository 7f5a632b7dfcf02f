//! Anonymous admin requests (no handshake): `status`, `ping`, `shutdown`. Used by the
//! `latzero` CLI.

use std::time::Duration;

use latzero_proto::Endpoint;
use latzero_proto::frame::encode_message;
use latzero_proto::message::ServerFrame;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::connection::{FrameReader, open};
use crate::error::ClientError;

pub use crate::connection::{default_data_dir, resolve};

async fn request(endpoint: &Endpoint, action: &str, wait: Duration) -> Result<(Value, FrameReader), ClientError> {
    let (r, mut w) = open(endpoint).await?;
    let mut reader = FrameReader::new(r, latzero_proto::DEFAULT_MAX_FRAME_LEN);
    w.write_all(&encode_message(&json!({"action": action, "id": 1})))
        .await
        .map_err(|e| ClientError::Connect {
            endpoint: endpoint.to_string(),
            source: e,
        })?;
    let fut = async {
        loop {
            let frame = reader
                .next()
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?
                .ok_or(ClientError::Disconnected)?;
            let env = ServerFrame::parse(frame.json()).map_err(|e| ClientError::Protocol(e.to_string()))?;
            if env.in_reply_to.map(|r| r.get()) != Some("1") {
                continue;
            }
            if env.action() == Some("error") {
                return Err(ClientError::Remote(crate::client::remote_error(&env)));
            }
            return Ok(serde_json::from_slice::<Value>(frame.json())?);
        }
    };
    let v = tokio::time::timeout(wait, fut)
        .await
        .map_err(|_| ClientError::NoReply(wait))??;
    Ok((v, reader))
}

/// The server's `status_result`.
pub async fn status(endpoint: &Endpoint) -> Result<Value, ClientError> {
    Ok(request(endpoint, "status", Duration::from_secs(10)).await?.0)
}

/// Round-trip time of a `ping`.
pub async fn ping(endpoint: &Endpoint) -> Result<Duration, ClientError> {
    let t = std::time::Instant::now();
    request(endpoint, "ping", Duration::from_secs(10)).await?;
    Ok(t.elapsed())
}

/// Asks the server to shut down and waits until it has closed this connection (so the server
/// has finished its graceful shutdown of the sessions), at most `wait`.
pub async fn shutdown(endpoint: &Endpoint, wait: Duration) -> Result<(), ClientError> {
    let (_, mut reader) = request(endpoint, "shutdown", wait).await?;
    let drained = async { while let Ok(Some(_)) = reader.next().await {} };
    tokio::time::timeout(wait, drained)
        .await
        .map_err(|_| ClientError::NoReply(wait))?;
    Ok(())
}
