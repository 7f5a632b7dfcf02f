//! Transport for the SDK: opening TCP or Unix streams, reading frames, and the writer task that
//! batches queued frames into few writes.

use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use latzero_proto::frame::{Frame, FrameCodec, FrameError, encode_message};
use latzero_proto::message::ServerFrame;
use latzero_proto::{DEFAULT_HOST, DEFAULT_PORT, Endpoint, TlsVerify, UNIX_SOCKET_NAME};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use serde_json::Value;

use crate::client::remote_error;
use crate::error::ClientError;

pub(crate) type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The data directory a client assumes for the default endpoint: `$LATZERO_DATA_DIR`, else
/// `~/.latzero`.
pub fn default_data_dir() -> PathBuf {
    match std::env::var_os("LATZERO_DATA_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => dirs::home_dir().unwrap_or_else(|| PathBuf::from(".")).join(".latzero"),
    }
}

/// Turns [`Endpoint::Default`] into a concrete endpoint: the default data dir's Unix socket if
/// it exists (faster), else TCP `$LATZERO_HOST:$LATZERO_PORT` (defaults 127.0.0.1:45227).
pub fn resolve(endpoint: &Endpoint) -> Endpoint {
    match endpoint {
        Endpoint::Default => {
            let sock = default_data_dir().join(UNIX_SOCKET_NAME);
            if sock.exists() {
                return Endpoint::Unix(sock);
            }
            Endpoint::Tcp(default_tcp())
        }
        other => other.clone(),
    }
}

/// `$LATZERO_HOST:$LATZERO_PORT`, defaults 127.0.0.1:45227.
fn default_tcp() -> String {
    let host = std::env::var("LATZERO_HOST").unwrap_or_else(|_| DEFAULT_HOST.to_owned());
    let port = std::env::var("LATZERO_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(DEFAULT_PORT);
    format!("{host}:{port}")
}

/// Opens a stream to an endpoint, over TLS when `tls` says how to verify the server (TLS is
/// served on the TCP port only; the default endpoint then means the default TCP address).
pub(crate) async fn open(endpoint: &Endpoint, tls: Option<&TlsVerify>) -> Result<(Reader, Writer), ClientError> {
    let err = |e| ClientError::Connect {
        endpoint: endpoint.to_string(),
        source: e,
    };
    let target = match (endpoint, tls) {
        (Endpoint::Default, Some(_)) => Endpoint::Tcp(default_tcp()),
        _ => resolve(endpoint),
    };
    match target {
        Endpoint::Tcp(addr) => {
            let s = TcpStream::connect(&addr).await.map_err(err)?;
            let _ = s.set_nodelay(true);
            if let Some(verify) = tls {
                let (r, w) = tokio::io::split(crate::tls::connect(s, &addr, verify).await?);
                return Ok((Box::new(r), Box::new(w)));
            }
            let (r, w) = s.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
        Endpoint::Unix(path) => {
            if tls.is_some() {
                return Err(ClientError::Tls {
                    endpoint: endpoint.to_string(),
                    reason: "TLS is served on the TCP port only; the Unix socket is local and owner-only (connect to it without TLS)".into(),
                });
            }
            let s = UnixStream::connect(&path).await.map_err(err)?;
            let (r, w) = s.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
        Endpoint::Default => unreachable!("resolve never returns Default"),
    }
}

/// Reads frames from a stream.
pub(crate) struct FrameReader {
    r: Reader,
    buf: BytesMut,
    codec: FrameCodec,
}

impl FrameReader {
    pub fn new(r: Reader, max_frame_len: usize) -> Self {
        FrameReader {
            r,
            buf: BytesMut::with_capacity(64 * 1024),
            codec: FrameCodec::new(max_frame_len),
        }
    }

    /// The next frame; the end of the stream is [`ClientError::Disconnected`].
    pub async fn expect_frame(&mut self) -> Result<Frame, ClientError> {
        self.next()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .ok_or(ClientError::Disconnected)
    }

    /// The next frame; `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(f) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(f));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(64 * 1024);
            }
            if self.r.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// Writes one request frame (and flushes it: TLS may hold a record's tail until then).
pub(crate) async fn send_request(w: &mut Writer, endpoint: &Endpoint, request: &Value) -> Result<(), ClientError> {
    let sent = async {
        w.write_all(&encode_message(request)).await?;
        w.flush().await
    };
    sent.await.map_err(|e| ClientError::Connect {
        endpoint: endpoint.to_string(),
        source: e,
    })
}

/// Opens a connection, sends `request` (which must carry an `id`) and reads frames until the
/// one answering it. Returns that frame's JSON with the open connection, or the server's error;
/// gives up after `wait`.
pub(crate) async fn open_with_request(
    endpoint: &Endpoint,
    tls: Option<&TlsVerify>,
    request: &Value,
    max_frame_len: usize,
    wait: Duration,
) -> Result<(Bytes, FrameReader, Writer), ClientError> {
    let (r, mut w) = open(endpoint, tls).await?;
    let mut reader = FrameReader::new(r, max_frame_len);
    let id = request["id"].to_string();
    send_request(&mut w, endpoint, request).await?;
    let answer = async {
        loop {
            let frame = reader.expect_frame().await?;
            let env = ServerFrame::parse(frame.json()).map_err(|e| ClientError::Protocol(e.to_string()))?;
            // An error answering nothing in particular (TLS_REQUIRED, for one) is the answer too:
            // the server closes after it.
            let uncorrelated_error = env.in_reply_to.is_none() && env.action() == Some("error");
            if env.in_reply_to.map(|r| r.get()) != Some(id.as_str()) && !uncorrelated_error {
                continue;
            }
            if env.action() == Some("error") {
                return Err(ClientError::Remote(remote_error(&env)));
            }
            return Ok(frame.json().clone());
        }
    };
    let json = tokio::time::timeout(wait, answer)
        .await
        .map_err(|_| ClientError::NoReply(wait))??;
    Ok((json, reader, w))
}

/// Drains queued frames into the socket, many per write. Ends when every sender is gone or
/// `dead` is cancelled; cancels `dead` itself when a write fails.
pub(crate) async fn writer_task(mut rx: mpsc::Receiver<Bytes>, mut w: Writer, dead: CancellationToken) {
    let mut batch = Vec::with_capacity(256);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let n = tokio::select! {
            biased;
            _ = dead.cancelled() => break,
            n = rx.recv_many(&mut batch, 256) => n,
        };
        if n == 0 {
            break;
        }
        let ok = if batch.len() == 1 {
            w.write_all(&batch[0]).await.is_ok()
        } else {
            buf.clear();
            for f in &batch {
                buf.extend_from_slice(f);
            }
            w.write_all(&buf).await.is_ok()
        };
        // A no-op on plain sockets; TLS may hold the tail of a record until flushed.
        let ok = ok && w.flush().await.is_ok();
        batch.clear();
        if !ok {
            dead.cancel();
            break;
        }
    }
    let _ = w.shutdown().await;
}
