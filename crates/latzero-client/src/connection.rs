//! Transport for the SDK: opening TCP or Unix streams, reading frames, and the writer task that
//! batches queued frames into few writes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// `dead` is cancelled; cancels `dead` itself when a write fails. `in_flight` counts the
/// client's calls waiting for an answer (see below).
pub(crate) async fn writer_task(
    mut rx: mpsc::Receiver<Bytes>,
    mut w: Writer,
    dead: CancellationToken,
    in_flight: Arc<AtomicUsize>,
) {
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
        // With other calls in flight, their tasks are likely ready to queue frames too (their
        // replies arrive in bursts): let them run first, so that one write carries them all.
        // Without this, a task woken by a send runs straight after its sender (tokio's LIFO
        // slot) and pipelined callers cost one write each. A lone call is written at once.
        if batch.len() < 256 && in_flight.load(Ordering::Relaxed) > 1 {
            tokio::task::yield_now().await;
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(f) => batch.push(f),
                    Err(_) => break,
                }
            }
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

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};

    use super::*;

    /// A sink that records the length of every write it takes.
    struct Recorder(Arc<Mutex<Vec<usize>>>);

    impl AsyncWrite for Recorder {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            self.0.lock().unwrap().push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Writes that 8 tasks, each sending one 10-byte frame, turn into, with `in_flight` calls.
    async fn writes_for_eight_senders(in_flight: usize) -> Vec<usize> {
        let writes = Arc::new(Mutex::new(vec![]));
        let (tx, rx) = mpsc::channel(64);
        let count = Arc::new(AtomicUsize::new(in_flight));
        let writer = tokio::spawn(writer_task(
            rx,
            Box::new(Recorder(writes.clone())),
            CancellationToken::new(),
            count,
        ));
        // Let the writer reach its wait for the first frame.
        tokio::task::yield_now().await;
        let senders: Vec<_> = (0..8)
            .map(|_| {
                let tx = tx.clone();
                tokio::spawn(async move { tx.send(Bytes::from_static(b"0123456789")).await.unwrap() })
            })
            .collect();
        for s in senders {
            s.await.unwrap();
        }
        drop(tx);
        writer.await.unwrap();
        let w = writes.lock().unwrap().clone();
        assert_eq!(w.iter().sum::<usize>(), 80, "every byte written once: {w:?}");
        w
    }

    // One worker: a task woken by a send runs straight after its sender (the LIFO slot), the
    // case the writer's yield is there for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn frames_from_many_ready_callers_share_one_write() {
        assert_eq!(writes_for_eight_senders(8).await, vec![80]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_lone_call_is_written_without_waiting_for_others() {
        // With one call in flight the writer does not yield, so the first frame goes alone.
        assert_eq!(writes_for_eight_senders(1).await.first(), Some(&10));
    }
}
