//! Transport for the SDK: opening TCP or Unix streams, reading frames, and the writer task that
//! batches queued frames into few writes.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use latzero_proto::frame::{Frame, FrameCodec, FrameError, encode_message};
use latzero_proto::message::ServerFrame;
use latzero_proto::{DEFAULT_HOST, DEFAULT_PORT, Endpoint, TlsVerify, UNIX_SOCKET_NAME};
use latzero_uds::UdsStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use serde_json::Value;

use crate::client::remote_error;
use crate::error::ClientError;

pub(crate) type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A plain socket's write half, shared by the writer task and a lone call that writes its frame
/// itself ([`Outbox::send_direct`]). TLS streams are not shared: their frames always go through
/// the writer task.
pub(crate) enum WriteSock {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    /// Watched for reading only: the server's reads do not wake this process (see `latzero-uds`).
    Unix(latzero_uds::WriteHalf),
}

impl WriteSock {
    fn try_write(&self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            WriteSock::Tcp(w) => w.try_write(b),
            WriteSock::Unix(w) => w.try_write(b),
        }
    }

    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self {
            WriteSock::Tcp(w) => loop {
                ready!(w.as_ref().poll_write_ready(cx))?;
                match w.try_write(buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    r => return Poll::Ready(r),
                }
            },
            WriteSock::Unix(w) => w.poll_write_shared(cx, buf),
        }
    }
}

/// The writer task's handle on a shared [`WriteSock`]. Dropping the last one shuts the write
/// side down (as dropping an owned write half does).
struct SharedWrite(Arc<WriteSock>);

impl AsyncWrite for SharedWrite {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Shared for a moment with a direct write: the drop shuts down instead.
        match Arc::get_mut(&mut self.0) {
            Some(WriteSock::Tcp(w)) => Pin::new(w).poll_shutdown(cx),
            Some(WriteSock::Unix(w)) => Pin::new(w).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// Where a connection's frames go: a queue to its writer task (which batches them into few
/// writes), and, on a plain socket, a direct write for a lone call when nothing is queued — the
/// call then costs no hop to the writer task, which on another thread is a wake-up and a
/// context switch.
///
/// Frames keep their order: `queued` counts frames handed to the queue and not yet written, and
/// a direct write happens only, under its lock, when it is zero. The part of a frame the socket
/// does not take is queued first, under the same lock.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Bytes>,
    gate: Arc<Gate>,
}

struct Gate {
    queued: Mutex<usize>,
    sock: Option<Weak<WriteSock>>,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, usize> {
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `n` counted frames are written (or were never queued after all).
    fn written(&self, n: usize) {
        let mut q = self.lock();
        *q = q.saturating_sub(n);
    }
}

impl Outbox {
    /// An outbox of `capacity` queued frames over `w`, and the writer task's end of it.
    pub(crate) fn new(capacity: usize, w: Writer, sock: Option<Weak<WriteSock>>) -> (Outbox, WriterEnd) {
        let (tx, rx) = mpsc::channel(capacity);
        let gate = Arc::new(Gate {
            queued: Mutex::new(0),
            sock,
        });
        (Outbox { tx, gate: gate.clone() }, WriterEnd { rx, w, gate })
    }

    /// Queues a frame for the writer task, waiting while the queue is full. `Err` when the
    /// connection is gone.
    pub(crate) async fn send(&self, frame: Bytes) -> Result<(), ()> {
        *self.gate.lock() += 1;
        // Counted before it is queued, so that no direct write slips in meanwhile; uncounted
        // again if it never is (the connection is gone, or this future is dropped while it
        // waits for room: tokio's send is cancel-safe).
        let mut count = Counted(&self.gate, true);
        let sent = self.tx.send(frame).await;
        count.1 = sent.is_err();
        sent.map_err(|_| ())
    }

    /// Queues a frame without waiting: if the queue is full, a task waits for room.
    pub(crate) fn send_now(&self, frame: Bytes) {
        *self.gate.lock() += 1;
        if let Err(mpsc::error::TrySendError::Full(frame)) = self.tx.try_send(frame) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(frame).await;
            });
        }
    }

    /// Writes a frame straight to the socket when nothing is queued before it; otherwise (or
    /// for what the socket does not take at once, or on TLS) queues it as [`send`](Self::send).
    pub(crate) async fn send_direct(&self, frame: Bytes) -> Result<(), ()> {
        match self.try_direct(frame) {
            Ok(()) => Ok(()),
            Err(frame) => self.send(frame).await,
        }
    }

    /// `Ok` when the frame is written, or its rest queued; `Err(frame)` when nothing was tried.
    fn try_direct(&self, mut frame: Bytes) -> Result<(), Bytes> {
        let Some(sock) = self.gate.sock.as_ref().and_then(Weak::upgrade) else {
            return Err(frame);
        };
        let mut queued = self.gate.lock();
        if *queued > 0 {
            return Err(frame);
        }
        let whole = frame.len();
        loop {
            match sock.try_write(&frame) {
                Ok(n) if n == frame.len() => return Ok(()),
                Ok(n) if n > 0 => frame.advance(n),
                // Nothing taken (it would block, or failed): if nothing at all was written, the
                // writer task takes the frame (and meets any error itself, which ends the
                // connection).
                _ if frame.len() == whole => return Err(frame),
                _ => break,
            }
        }
        // The socket took part of it: the rest goes first into the queue, which is empty. If
        // the connection is gone meanwhile, so is the call (its waiter hears Disconnected).
        *queued += 1;
        let _ = self.tx.try_send(frame);
        Ok(())
    }
}

/// Takes a frame back off the count when dropped, if `.1` says it was never queued.
struct Counted<'a>(&'a Gate, bool);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.written(1);
        }
    }
}

/// The writer task's end of an [`Outbox`].
pub(crate) struct WriterEnd {
    rx: mpsc::Receiver<Bytes>,
    w: Writer,
    gate: Arc<Gate>,
}

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
pub(crate) async fn open(
    endpoint: &Endpoint,
    tls: Option<&TlsVerify>,
) -> Result<(Reader, Writer, Direct), ClientError> {
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
                return Ok((Box::new(r), Box::new(w), None));
            }
            let (r, w) = s.into_split();
            let (w, direct) = shared(WriteSock::Tcp(w));
            Ok((Box::new(r), w, direct))
        }
        Endpoint::Unix(path) => {
            if tls.is_some() {
                return Err(ClientError::Tls {
                    endpoint: endpoint.to_string(),
                    reason: "TLS is served on the TCP port only; the Unix socket is local and owner-only (connect to it without TLS)".into(),
                });
            }
            let s = UdsStream::connect(&path).await.map_err(err)?;
            let (r, w) = s.into_split();
            let (w, direct) = shared(WriteSock::Unix(w));
            Ok((Box::new(r), w, direct))
        }
        Endpoint::Default => unreachable!("resolve never returns Default"),
    }
}

/// How a lone call may write straight to a plain socket ([`Outbox::send_direct`]).
pub(crate) type Direct = Option<Weak<WriteSock>>;

fn shared(sock: WriteSock) -> (Writer, Direct) {
    let sock = Arc::new(sock);
    let direct = Arc::downgrade(&sock);
    (Box::new(SharedWrite(sock)), Some(direct))
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
) -> Result<(Bytes, FrameReader, Writer, Direct), ClientError> {
    let (r, mut w, direct) = open(endpoint, tls).await?;
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
    Ok((json, reader, w, direct))
}

/// Drains queued frames into the socket, many per write. Ends when every sender is gone or
/// `dead` is cancelled; cancels `dead` itself when a write fails. `in_flight` counts the
/// client's calls waiting for an answer (see below).
pub(crate) async fn writer_task(end: WriterEnd, dead: CancellationToken, in_flight: Arc<AtomicUsize>) {
    let WriterEnd { mut rx, mut w, gate } = end;
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
        gate.written(batch.len());
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
    use tokio::net::UnixStream;

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
        let (tx, end) = Outbox::new(64, Box::new(Recorder(writes.clone())), None);
        let count = Arc::new(AtomicUsize::new(in_flight));
        let writer = tokio::spawn(writer_task(end, CancellationToken::new(), count));
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

    /// An outbox over one end of a Unix socket pair (its writer task not started), and the
    /// other end.
    fn direct_outbox() -> (Outbox, WriterEnd, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let (_, w) = UdsStream::from_tokio(a).unwrap().into_split();
        let (w, direct) = shared(WriteSock::Unix(w));
        let (outbox, end) = Outbox::new(64, w, direct);
        (outbox, end, b)
    }

    async fn read_exactly(r: &mut UnixStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        r.read_exact(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn a_direct_write_never_overtakes_a_queued_frame() {
        let (outbox, end, mut peer) = direct_outbox();
        // Nothing queued: written at once, with no writer task running.
        outbox.send_direct(Bytes::from_static(b"one")).await.unwrap();
        assert_eq!(read_exactly(&mut peer, 3).await, b"one");
        // A frame waits in the queue: the next one must not go before it.
        outbox.send_now(Bytes::from_static(b"two"));
        outbox.send_direct(Bytes::from_static(b"three")).await.unwrap();
        tokio::spawn(writer_task(
            end,
            CancellationToken::new(),
            Arc::new(AtomicUsize::new(1)),
        ));
        assert_eq!(read_exactly(&mut peer, 8).await, b"twothree");
        // Once the writer has written them, direct writes resume.
        while *outbox.gate.lock() > 0 {
            tokio::task::yield_now().await;
        }
        outbox.send_direct(Bytes::from_static(b"four")).await.unwrap();
        assert_eq!(read_exactly(&mut peer, 4).await, b"four");
    }

    #[tokio::test]
    async fn a_send_given_up_while_waiting_for_room_is_not_counted() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (_, w) = UdsStream::from_tokio(a).unwrap().into_split();
        let (w, direct) = shared(WriteSock::Unix(w));
        let (outbox, _end) = Outbox::new(1, w, direct);
        outbox.send_now(Bytes::from_static(b"fills the queue"));
        let waiting = outbox.send(Bytes::from_static(b"waits for room"));
        // Polled once (no room) and dropped.
        assert!(futures_util::FutureExt::now_or_never(waiting).is_none());
        assert_eq!(*outbox.gate.lock(), 1, "only the queued frame holds direct writes back");
    }

    #[tokio::test]
    async fn the_rest_of_a_partly_written_frame_goes_first() {
        let (outbox, end, mut peer) = direct_outbox();
        // Far more than a socket buffer: the socket takes part, the rest is queued.
        let big: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
        outbox.send_direct(Bytes::from(big.clone())).await.unwrap();
        assert_eq!(*outbox.gate.lock(), 1, "the rest waits in the queue");
        outbox.send_direct(Bytes::from_static(b"after")).await.unwrap();
        tokio::spawn(writer_task(
            end,
            CancellationToken::new(),
            Arc::new(AtomicUsize::new(1)),
        ));
        assert_eq!(read_exactly(&mut peer, big.len()).await, big);
        assert_eq!(read_exactly(&mut peer, 5).await, b"after");
    }
}
