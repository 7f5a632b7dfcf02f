//! Transport for the SDK: opening TCP or Unix streams, reading frames, and the writer task that
//! batches queued frames into few writes.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use latzero_proto::frame::{Frame, FrameCodec, FrameError, encode_message};
use latzero_proto::message::ServerFrame;
use latzero_proto::{DEFAULT_HOST, DEFAULT_PORT, Endpoint, TlsVerify, UNIX_SOCKET_NAME};
use latzero_uds::UdsStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, futures::Notified};
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

/// Where a connection's frames go: one byte buffer, written by the writer task (many frames per
/// write) and, on a plain socket, by a lone call itself ([`Outbox::send_direct`]): with nothing
/// queued the call costs no hop to the writer task, which on another thread is a wake-up and a
/// context switch.
///
/// A frame is copied into the buffer under its lock (no allocation of its own, no channel); the
/// writer swaps the buffer for an empty one and writes it outside the lock. Frames keep their
/// order: a direct write happens only, under the lock, when the writer holds nothing, and the
/// part of a frame the socket does not take is queued, under the same lock.
///
/// Dropping the last `Outbox` lets the writer task write what is queued and shut the write side
/// down; once the writer task has ended (the connection is gone), sends fail.
///
/// A handle is one `Arc`: a call clones it out of the client's state and drops it after
/// queueing, two reference-count changes rather than four.
#[derive(Clone)]
pub(crate) struct Outbox(Arc<Handle>);

/// Shared by every [`Outbox`] handle (not by the writer): its drop tells the writer there are
/// no senders left.
struct Handle {
    out: Arc<Out>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.out.lock().orphaned = true;
        self.out.wake.notify_one();
    }
}

struct Out {
    q: Mutex<Queue>,
    /// Wakes the writer task: bytes were queued (and `busy` set), or the handles are gone.
    wake: Notify,
    /// Wakes senders waiting for room.
    room: Notify,
    /// Frames queued before [`Outbox::send`] waits.
    capacity: usize,
    sock: Option<Weak<WriteSock>>,
}

#[derive(Default)]
struct Queue {
    buf: Vec<u8>,
    /// Frames in `buf`.
    frames: usize,
    /// The writer task owns the next write: it has been woken for `buf`, or is writing, and
    /// looks at `buf` again before it clears this. No direct write while set.
    busy: bool,
    /// The writer task has ended: sends fail.
    closed: bool,
    /// Every handle is gone, or the connection was finished ([`Outbox::finish`]).
    orphaned: bool,
}

impl Out {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a frame, waking the writer for it unless it already owns the next write.
    fn queue(&self, q: &mut Queue, frame: &[u8]) {
        q.buf.extend_from_slice(frame);
        self.queued(q);
    }

    /// Counts a frame just appended to `q.buf`, waking the writer for it unless it already owns
    /// the next write.
    fn queued(&self, q: &mut Queue) {
        q.frames += 1;
        if !q.busy {
            q.busy = true;
            self.wake.notify_one();
        }
    }
}

impl Outbox {
    /// An outbox of `capacity` queued frames over `w`, and the writer task's end of it.
    pub(crate) fn new(capacity: usize, w: Writer, sock: Option<Weak<WriteSock>>) -> (Outbox, WriterEnd) {
        let out = Arc::new(Out {
            q: Mutex::new(Queue::default()),
            wake: Notify::new(),
            room: Notify::new(),
            capacity: capacity.max(1),
            sock,
        });
        (
            Outbox(Arc::new(Handle { out: out.clone() })),
            WriterEnd {
                out,
                w,
                gather: Gather::for_this_process(),
            },
        )
    }

    /// Ends the connection once the queue is empty: the writer task writes what was queued,
    /// then ends as it does when every handle is gone (a closed client's frames still go out).
    pub(crate) fn finish(&self) {
        let out = &self.0.out;
        out.lock().orphaned = true;
        out.wake.notify_one();
    }

    /// Queues a frame for the writer task, waiting while the queue is full. `Err` when the
    /// connection is gone. Cancel-safe: dropped while it waits, it has queued nothing.
    pub(crate) async fn send(&self, frame: &[u8]) -> Result<(), ()> {
        // With room, queued at once: no wait for room to set up (and take down) on every call.
        if let Some(done) = self.try_queue(frame, None) {
            return done;
        }
        loop {
            let room = self.0.out.room.notified();
            let mut room = std::pin::pin!(room);
            if let Some(done) = self.try_queue(frame, Some(room.as_mut())) {
                return done;
            }
            room.await;
        }
    }

    /// Queues `frame` if there is room (`Some(Ok)`), fails if the connection is gone
    /// (`Some(Err)`); `None` when the queue is full, with `room` registered for the writer's
    /// wake-up before the lock is let go, so that it cannot slip by.
    pub(crate) fn try_queue(&self, frame: &[u8], room: Option<Pin<&mut Notified<'_>>>) -> Option<Result<(), ()>> {
        let mut q = self.0.out.lock();
        if q.closed {
            return Some(Err(()));
        }
        if q.frames < self.0.out.capacity {
            self.0.out.queue(&mut q, frame);
            return Some(Ok(()));
        }
        if let Some(room) = room {
            room.enable();
        }
        None
    }

    /// Queues a frame without waiting, past the limit if need be: for frames that answer the
    /// server (a handler's result, a watch renewed on reconnect), which the calls and watches
    /// that caused them bound. Dropped if the connection is gone.
    pub(crate) fn send_now(&self, frame: &[u8]) {
        let mut q = self.0.out.lock();
        if !q.closed {
            self.0.out.queue(&mut q, frame);
        }
    }

    /// [`send_now`](Self::send_now) for a frame written in place: `write` gets the queue's
    /// buffer and gives it back with exactly one frame appended, so the frame is not built
    /// apart and copied in (a handler's response, on every call). `write` must not fail: a
    /// panic in it would lose the frames queued before.
    pub(crate) fn send_now_with(&self, write: impl FnOnce(Vec<u8>) -> Vec<u8>) {
        let mut q = self.0.out.lock();
        if !q.closed {
            let buf = std::mem::take(&mut q.buf);
            q.buf = write(buf);
            self.0.out.queued(&mut q);
        }
    }

    /// Writes a frame straight to the socket when nothing is queued before it; otherwise (or
    /// for what the socket does not take at once, or on TLS) queues it as [`send`](Self::send).
    pub(crate) async fn send_direct(&self, frame: &[u8]) -> Result<(), ()> {
        if let Some(sock) = self.0.out.sock.as_ref().and_then(Weak::upgrade) {
            let mut q = self.0.out.lock();
            if q.closed {
                return Err(());
            }
            if !q.busy {
                // Nothing is queued (only the writer empties the buffer, and it clears `busy`
                // once it has).
                let mut rest = frame;
                while let Ok(n @ 1..) = sock.try_write(rest) {
                    rest = &rest[n..];
                    if rest.is_empty() {
                        return Ok(());
                    }
                }
                // The rest (all of it, if the socket took nothing or failed: the writer task
                // then meets the error itself, which ends the connection) goes first into
                // the empty queue.
                self.0.out.queue(&mut q, rest);
                return Ok(());
            }
        }
        self.send(frame).await
    }

    /// Frames queued and not yet taken by the writer (for tests).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.0.out.lock().frames
    }
}

/// The writer task's end of an [`Outbox`].
pub(crate) struct WriterEnd {
    out: Arc<Out>,
    w: Writer,
    gather: Gather,
}

/// How long the writer task lets other senders queue frames before it writes, while calls are
/// in flight (a lone call is written at once either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gather {
    /// One yield: the tasks already woken (by a burst of replies) queue their frames first.
    Once,
    /// Yields again while each yield brought more frames, up to [`GATHER_YIELDS`]: the next
    /// burst of replies is read and its callers queue theirs too. Only worth it where the
    /// server cannot run while this process waits for frames, sharing its one CPU: there,
    /// pipelined callers drift into small groups, each costing a write, a read and a context
    /// switch at every hop (pinned, 64 calls in flight: ~31 frames per write, where one group
    /// of 64 is possible). Where the server runs beside the client, writing a group early lets
    /// it start on it, and waiting costs throughput (~13% with the clients on one worker).
    WhileArriving,
}

/// Yields at most for [`Gather::WhileArriving`] before a write.
const GATHER_YIELDS: usize = 8;

impl Gather {
    /// [`Gather::WhileArriving`] when this process may use only one CPU (`taskset -c 0`, a
    /// one-CPU container or VM), where the server most likely shares it; else [`Gather::Once`].
    fn for_this_process() -> Gather {
        if latzero_uds::spin::one_cpu() {
            Gather::WhileArriving
        } else {
            Gather::Once
        }
    }
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
        error: e,
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

    /// Reads frames up to `max_len` bytes from now on.
    pub fn set_max_len(&mut self, max_len: usize) {
        self.codec = FrameCodec::new(max_len);
    }

    /// The next frame if it has been read already, without reading more. A frame that is
    /// framed but carries nothing (empty, or a binary header longer than the frame) is skipped
    /// with a warning, as the server answers one with INVALID_MESSAGE and reads on: the codec
    /// has consumed it, so the stream is still in step, and dropping the connection would fail
    /// every call in flight for want of a frame that answers none of them.
    pub fn buffered(&mut self) -> Result<Option<Frame>, FrameError> {
        match self.codec.decode(&mut self.buf) {
            Err(e @ (FrameError::Empty | FrameError::BadBinaryHeader { .. })) => self.skip_malformed(e),
            other => other,
        }
    }

    /// Skips `e`'s frame and any malformed ones after it (out of the line every frame takes).
    #[cold]
    fn skip_malformed(&mut self, mut e: FrameError) -> Result<Option<Frame>, FrameError> {
        loop {
            tracing::warn!(error = %e, "skipped a malformed frame from the server");
            match self.codec.decode(&mut self.buf) {
                Err(next @ (FrameError::Empty | FrameError::BadBinaryHeader { .. })) => e = next,
                other => return other,
            }
        }
    }

    /// The next frame; the end of the stream is [`ClientError::Disconnected`] (the server closed
    /// the connection).
    pub async fn expect_frame(&mut self) -> Result<Frame, ClientError> {
        self.next()
            .await
            .map_err(|e| match e {
                FrameError::TooLarge { len, max } => ClientError::AnswerTooLarge { len, max },
                e => ClientError::Protocol(e.to_string()),
            })?
            .ok_or_else(|| ClientError::Disconnected {
                reason: Some("the server closed the connection".into()),
                sent: true,
            })
    }

    /// The next frame; `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(f) = self.buffered()? {
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
        error: e,
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

/// Writes queued frames into the socket, many per write. Ends when every [`Outbox`] is gone or
/// one was [finished](Outbox::finish), after writing what they queued (a closed client's
/// connection task finishes it, and leaves `dead` alone for the close grace), or when `dead` is
/// cancelled: the connection is gone, what is queued is dropped (and counted in a warning, see
/// [`Writing`]) and a write under way is given up. Cancels `dead` itself when a write fails,
/// and as it ends. `in_flight` counts the client's calls waiting for an answer (see below).
pub(crate) async fn writer_task(end: WriterEnd, dead: CancellationToken, in_flight: Arc<AtomicUsize>) {
    let WriterEnd { out, mut w, gather } = end;
    // Made before the first wait, so that a runtime going away at any wait finds it.
    let mut g = Writing {
        out,
        spare: Vec::new(),
        done: 0,
        ended: false,
    };
    'run: loop {
        loop {
            let (room, mut seen) = {
                let mut q = g.out.lock();
                if q.buf.is_empty() {
                    q.busy = false;
                    // Finished (or every handle gone) is read under the same lock that found
                    // the queue empty, and the queue closed under it too: frames queued before
                    // the finish are in `buf` then and are written first, and a send after it
                    // fails rather than queue what nobody writes. Read apart, frames queued
                    // and a finish made between the two reads were dropped (a close that lost
                    // the emits before it).
                    if q.orphaned {
                        q.closed = true;
                        break 'run;
                    }
                    break;
                }
                (q.frames < BATCH_FRAMES, q.frames)
            };
            // With other calls in flight, their tasks are likely ready to queue frames too
            // (their replies arrive in bursts): let them run first, so that one write carries
            // them all. Without this, the writer woken by a send runs straight after its sender
            // (tokio's LIFO slot) and pipelined callers cost one write each. A lone call is
            // written at once. See `Gather` for the yields after the first.
            if room && in_flight.load(Ordering::Relaxed) > 1 {
                tokio::task::yield_now().await;
                if gather == Gather::WhileArriving {
                    for _ in 1..GATHER_YIELDS {
                        let now = g.out.lock().frames;
                        if now == seen || now >= BATCH_FRAMES {
                            break;
                        }
                        seen = now;
                        tokio::task::yield_now().await;
                    }
                }
            }
            {
                let mut q = g.out.lock();
                std::mem::swap(&mut q.buf, &mut g.spare);
                q.frames = 0;
            }
            g.out.room.notify_waiters();
            // A no-op flush on plain sockets; TLS may hold the tail of a record until flushed.
            // Given up when the connection is declared dead meanwhile (a closed client's grace
            // ran out on a server that does not read). `done` counts what the socket took, for
            // the account of what was not written (`Writing`).
            let (buf, done) = (&g.spare, &mut g.done);
            let write = async {
                while *done < buf.len() {
                    match w.write(&buf[*done..]).await? {
                        0 => return Err(std::io::ErrorKind::WriteZero.into()),
                        n => *done += n,
                    }
                }
                w.flush().await
            };
            let written = tokio::select! {
                r = write => r.is_ok(),
                _ = dead.cancelled() => false,
            };
            if !written {
                dead.cancel();
                break 'run;
            }
            g.spare.clear();
            g.done = 0;
            if g.spare.capacity() > RETAIN_BUFFER {
                g.spare = Vec::new();
            }
        }
        tokio::select! {
            biased;
            _ = dead.cancelled() => break,
            _ = g.out.wake.notified() => {}
        }
    }
    g.ended = true;
    // Closes the queue (sends fail from now on), telling of what was not written.
    drop(g);
    let _ = w.shutdown().await;
    // The connection is gone: whatever waits for that (a closed client's grace) need not.
    dead.cancel();
}

/// What the writer task holds across its waits: the queue, the buffer it writes from and how
/// much of that the socket took. Dropped as the task ends — or unfinished, when the runtime
/// goes away first (a program returning from `main` right after closing its client) — it
/// closes the queue, so that later sends fail rather than queue what nobody writes, and warns
/// of the bytes queued and never written: emits and block notices among them are lost, and
/// nothing else would say so.
struct Writing {
    out: Arc<Out>,
    spare: Vec<u8>,
    /// Bytes of `spare` the socket took.
    done: usize,
    /// The task ran to its end (else the runtime dropped it).
    ended: bool,
}

impl Drop for Writing {
    fn drop(&mut self) {
        let lost = {
            let mut q = self.out.lock();
            q.closed = true;
            let lost = q.buf.len() + self.spare.len().saturating_sub(self.done);
            q.buf = Vec::new();
            lost
        };
        self.out.room.notify_waiters();
        if lost > 0 && self.ended {
            tracing::warn!(
                bytes = lost,
                "gave up writing {lost} bytes of queued frames (the connection dropped, or the \
                 close grace ran out on a server that did not read them): the emits and block \
                 notices among them did not reach the server"
            );
        } else if lost > 0 {
            tracing::warn!(
                bytes = lost,
                "the runtime shut down before {lost} bytes of queued frames were written: the \
                 emits and block notices among them did not reach the server (await \
                 Client::flush before a program ends)"
            );
        }
    }
}

/// Frames queued at which the writer writes without first letting other senders run.
const BATCH_FRAMES: usize = 256;

/// Largest write buffer capacity the writer keeps once it has written it.
const RETAIN_BUFFER: usize = 1 << 20;

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

    /// A sink that never takes a byte: a server that does not read.
    struct Stuck;

    impl AsyncWrite for Stuck {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<std::io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Runs `f` with this thread's log events written as text into what it returns.
    fn logs_of(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Text(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Text {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let text = Text::default();
        let to = text.clone();
        let logs = tracing_subscriber::fmt()
            .with_writer(move || to.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(logs, f);
        String::from_utf8(text.0.lock().unwrap().clone()).unwrap()
    }

    /// An outbox over [`Stuck`] with `frames` queued, and its writer task, which has taken
    /// them into its buffer and is stuck writing them.
    async fn stuck_writer(frames: &[&[u8]], dead: &CancellationToken) -> (Outbox, tokio::task::JoinHandle<()>) {
        let (outbox, end) = Outbox::new(8, Box::new(Stuck), None);
        for f in frames {
            outbox.send_now(f);
        }
        let writer = tokio::spawn(writer_task(end, dead.clone(), Arc::new(AtomicUsize::new(1))));
        while outbox.queued() > 0 {
            tokio::task::yield_now().await;
        }
        (outbox, writer)
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Writes that tasks sending one 10-byte frame each turn into, with `in_flight` calls and
    /// the writer gathering as `gather`. `waves` are the senders made ready together, each wave
    /// after the first one yield after the one before (as the next burst of replies, read when
    /// the runtime next polls its sockets).
    async fn writes_for(waves: Vec<usize>, in_flight: usize, gather: Gather) -> Vec<usize> {
        let writes = Arc::new(Mutex::new(vec![]));
        let (tx, mut end) = Outbox::new(64, Box::new(Recorder(writes.clone())), None);
        end.gather = gather;
        let count = Arc::new(AtomicUsize::new(in_flight));
        let writer = tokio::spawn(writer_task(end, CancellationToken::new(), count));
        // Let the writer reach its wait for the first frame.
        tokio::task::yield_now().await;
        let total: usize = waves.iter().sum();
        // On the worker, as the SDK's tasks are.
        tokio::spawn(async move {
            let mut senders = vec![];
            for (i, n) in waves.into_iter().enumerate() {
                if i > 0 {
                    tokio::task::yield_now().await;
                }
                for _ in 0..n {
                    let tx = tx.clone();
                    senders.push(tokio::spawn(async move { tx.send(b"0123456789").await.unwrap() }));
                }
            }
            for s in senders {
                s.await.unwrap();
            }
        })
        .await
        .unwrap();
        writer.await.unwrap();
        let w = writes.lock().unwrap().clone();
        assert_eq!(w.iter().sum::<usize>(), 10 * total, "every byte written once: {w:?}");
        w
    }

    // One worker: a task woken by a send runs straight after its sender (the LIFO slot), the
    // case the writer's yield is there for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn frames_from_many_ready_callers_share_one_write() {
        for gather in [Gather::Once, Gather::WhileArriving] {
            assert_eq!(writes_for(vec![8], 8, gather).await, vec![80], "{gather:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_lone_call_is_written_without_waiting_for_others() {
        // With one call in flight the writer does not yield, so the first frame goes alone.
        for gather in [Gather::Once, Gather::WhileArriving] {
            assert_eq!(writes_for(vec![8], 1, gather).await.first(), Some(&10), "{gather:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn on_one_cpu_the_writer_waits_for_the_next_burst_of_callers() {
        // Once writes what the first burst queued; WhileArriving yields again while frames
        // keep coming and writes both bursts at once.
        let once = writes_for(vec![4, 4], 8, Gather::Once).await;
        assert!(once.len() > 1, "{once:?}");
        assert_eq!(writes_for(vec![4, 4], 8, Gather::WhileArriving).await, vec![80]);
    }

    /// An outbox over one end of a Unix socket pair (its writer task not started), and the
    /// other end.
    fn direct_outbox() -> (Outbox, WriterEnd, UnixStream) {
        direct_outbox_of(64)
    }

    /// [`direct_outbox`] of `capacity` frames.
    fn direct_outbox_of(capacity: usize) -> (Outbox, WriterEnd, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let (_, w) = UdsStream::from_tokio(a).unwrap().into_split();
        let (w, direct) = shared(WriteSock::Unix(w));
        let (outbox, end) = Outbox::new(capacity, w, direct);
        (outbox, end, b)
    }

    /// Starts `end`'s writer task, with one call in flight.
    fn start_writer(end: WriterEnd) {
        tokio::spawn(writer_task(
            end,
            CancellationToken::new(),
            Arc::new(AtomicUsize::new(1)),
        ));
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
        outbox.send_direct(b"one").await.unwrap();
        assert_eq!(read_exactly(&mut peer, 3).await, b"one");
        // A frame waits in the queue: the next one must not go before it.
        outbox.send_now(b"two");
        outbox.send_direct(b"three").await.unwrap();
        start_writer(end);
        assert_eq!(read_exactly(&mut peer, 8).await, b"twothree");
        // Once the writer has written them, direct writes resume.
        while outbox.0.out.lock().busy {
            tokio::task::yield_now().await;
        }
        outbox.send_direct(b"four").await.unwrap();
        assert_eq!(read_exactly(&mut peer, 4).await, b"four");
    }

    #[tokio::test]
    async fn a_frame_written_in_place_goes_after_the_queued_ones_and_wakes_the_writer() {
        let (outbox, end, mut peer) = direct_outbox();
        outbox.send_now(b"one ");
        outbox.send_now_with(|mut buf| {
            assert_eq!(buf, b"one ", "written after what is queued");
            buf.extend_from_slice(b"two");
            buf
        });
        assert_eq!(outbox.queued(), 2);
        start_writer(end);
        assert_eq!(read_exactly(&mut peer, 7).await, b"one two");
        // The writer was woken for a frame written in place into an empty queue too.
        while outbox.0.out.lock().busy {
            tokio::task::yield_now().await;
        }
        outbox.send_now_with(|mut buf| {
            buf.extend_from_slice(b"three");
            buf
        });
        let read = tokio::time::timeout(Duration::from_secs(10), read_exactly(&mut peer, 5));
        assert_eq!(read.await.expect("the writer was not woken"), b"three");
    }

    #[tokio::test]
    async fn a_send_given_up_while_waiting_for_room_queues_nothing() {
        let (outbox, _end, _peer) = direct_outbox_of(1);
        outbox.send_now(b"fills the queue");
        let waiting = outbox.send(b"waits for room");
        // Polled once (no room) and dropped.
        assert!(futures_util::FutureExt::now_or_never(waiting).is_none());
        assert_eq!(outbox.queued(), 1);
        assert_eq!(outbox.0.out.lock().buf, b"fills the queue");
    }

    #[tokio::test]
    async fn a_full_queue_holds_senders_until_the_writer_takes_it() {
        let (outbox, end, mut peer) = direct_outbox_of(1);
        outbox.send_now(b"first");
        let second = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send(b"second").await }
        });
        // The sender waits for room (the writer is not running yet).
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        start_writer(end);
        assert_eq!(second.await.unwrap(), Ok(()));
        assert_eq!(read_exactly(&mut peer, 11).await, b"firstsecond");
    }

    #[tokio::test]
    async fn sends_fail_once_the_writer_has_ended() {
        let (outbox, end, _peer) = direct_outbox_of(1);
        outbox.send_now(b"fills the queue");
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send(b"waits for room").await }
        });
        tokio::task::yield_now().await;
        let dead = CancellationToken::new();
        dead.cancel();
        writer_task(end, dead, Arc::new(AtomicUsize::new(1))).await;
        // The waiting sender is woken, and it and every later send hear that it is over.
        assert_eq!(waiting.await.unwrap(), Err(()));
        assert_eq!(outbox.send(b"late").await, Err(()));
        assert_eq!(outbox.send_direct(b"late").await, Err(()));
    }

    /// A connection that ends with frames queued (dropped, or a closed client's grace run out)
    /// loses them: the writer says how many bytes, since an emit among them has returned
    /// long ago and nothing else would tell.
    #[test]
    fn the_writer_tells_of_what_it_gave_up_writing() {
        let logs = logs_of(|| {
            current_thread().block_on(async {
                let dead = CancellationToken::new();
                let (outbox, writer) = stuck_writer(&[b"fifteen bytes: ", b"and six"], &dead).await;
                outbox.send_now(b"queued after");
                dead.cancel();
                writer.await.unwrap();
            })
        });
        assert!(logs.contains("gave up writing 34 bytes of queued frames"), "{logs}");
    }

    /// A runtime that shuts down with the writer under way (a program returning from `main`
    /// right after closing its client) drops what it holds: said too, with what to do; and
    /// the queue is closed, so a send after it fails rather than queue what nobody writes.
    #[test]
    fn a_runtime_shut_down_under_the_writer_tells_of_what_was_not_written() {
        let mut kept = None;
        let logs = logs_of(|| {
            let rt = current_thread();
            let outbox = rt.block_on(async { stuck_writer(&[b"ten bytes!"], &CancellationToken::new()).await.0 });
            drop(rt);
            kept = Some(outbox);
        });
        assert!(
            logs.contains("the runtime shut down before 10 bytes of queued frames were written"),
            "{logs}"
        );
        assert!(logs.contains("Client::flush"), "{logs}");
        assert_eq!(kept.unwrap().try_queue(b"late", None), Some(Err(())));
    }

    #[tokio::test]
    async fn the_writer_writes_what_is_queued_then_shuts_down_when_the_senders_are_gone() {
        let (outbox, end, mut peer) = direct_outbox_of(8);
        outbox.send_now(b"last ");
        outbox.send_now(b"words");
        drop(outbox);
        writer_task(end, CancellationToken::new(), Arc::new(AtomicUsize::new(1))).await;
        let mut got = vec![];
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }

    #[tokio::test]
    async fn the_rest_of_a_partly_written_frame_goes_first() {
        let (outbox, end, mut peer) = direct_outbox();
        // Far more than a socket buffer: the socket takes part, the rest is queued.
        let big: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
        outbox.send_direct(&big).await.unwrap();
        assert_eq!(outbox.queued(), 1, "the rest waits in the queue");
        outbox.send_direct(b"after").await.unwrap();
        start_writer(end);
        assert_eq!(read_exactly(&mut peer, big.len()).await, big);
        assert_eq!(read_exactly(&mut peer, 5).await, b"after");
    }
}
