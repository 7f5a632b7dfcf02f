//! One connection's outbound side: the handle other tasks use to send frames to it.
//!
//! Writes go straight to the socket (a non-blocking `try_write`) from whichever task produced
//! the frame — no hand-off to another task on the hot path. While a session handles the frames of
//! one read, its writes are *corked* ([`Cork`]): frames for each destination collect in that
//! destination's buffer and go out in one `write` per destination when the batch ends. Only bytes
//! the socket would not take right away wait in the buffer for the connection's flusher task,
//! which writes them when the socket becomes writable.
//!
//! The buffer is bounded twice, in frames and in bytes, and frames enter it two ways:
//!
//! - [`Conn::send`]: frames caused by *other* connections (a trigger delivered to a handler, an
//!   emit, a presence event, a result forwarded to a `reply_to` app). When the buffer is full the
//!   policy is named *slow consumer*: the frame fails back to whoever sent it (the router turns
//!   that into an OVERLOADED error for a caller), and the stuck connection's session stops
//!   reading at once, which fails the calls pending on it with HANDLER_GONE; the connection
//!   itself gets what was queued before and then a `closing` frame saying why, within the
//!   shutdown grace ([`Conn::mark_slow`]).
//! - [`Conn::reply`]: frames answering this connection's *own* requests (acks, errors, pongs,
//!   the terminal frame of its calls). These are always accepted — a burst of failures for a
//!   caller that reads fine must not cost it its connection — and they are bounded by the
//!   connection itself: terminal frames by its in-flight limit, the rest because the session
//!   stops reading from a connection whose buffer is over the limit until it drains.
//!
//! Memory stays bounded and nothing is dropped without someone being told.

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use latzero_proto::frame::encode_message;
use latzero_proto::message::Closing;
use latzero_proto::{AppId, ErrorCode};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned};

use crate::admin::Counters;

/// Largest outbound buffer capacity kept once the buffer has drained.
const RETAIN_BUFFER: usize = 1 << 20;

/// A connection's id, unique for the server's lifetime.
pub type ConnId = u64;

/// Why a frame could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The buffer was full: the connection is a slow consumer and has been closed.
    Full,
    /// The connection is closed.
    Closed,
}

/// The write half of a connection's socket.
#[derive(Debug)]
pub(crate) enum Sock {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    /// Watched for reading only: a peer's reads do not wake the server (see `latzero-uds`).
    Unix(latzero_uds::WriteHalf),
    /// TLS on the TCP port, encrypted by the writing thread (`crate::tls`).
    Tls(crate::tls::TlsWrite),
    /// The WebSocket port: each frame a message, framed by the writing thread (`crate::ws`).
    Ws(crate::ws::WsWrite),
}

impl Sock {
    fn try_write(&self, b: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(w) => w.try_write(b),
            Sock::Unix(w) => w.try_write(b),
            Sock::Tls(w) => w.try_write(b),
            Sock::Ws(w) => w.try_write(b),
        }
    }

    /// Whether bytes already taken are still waiting for the socket (TLS records rustls holds,
    /// the rest of a WebSocket message).
    fn pending(&self) -> bool {
        match self {
            Sock::Tls(w) => w.pending(),
            Sock::Ws(w) => w.pending(),
            Sock::Tcp(_) | Sock::Unix(_) => false,
        }
    }

    /// Writes what [`pending`](Self::pending) holds: `true` once nothing is left.
    fn flush_pending(&self) -> io::Result<bool> {
        match self {
            Sock::Tls(w) => w.flush_pending(),
            Sock::Ws(w) => w.flush_pending(),
            Sock::Tcp(_) | Sock::Unix(_) => Ok(true),
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Sock::Tcp(w) => socket2::SockRef::from(w.as_ref()).shutdown(std::net::Shutdown::Write),
            Sock::Unix(w) => w.shutdown_write(),
            Sock::Tls(w) => w.shutdown_write(),
            // The close message first, as far as the socket takes it now (the WebSocket
            // session's end waits for the rest).
            Sock::Ws(w) => w.close().map(drop),
        }
    }

    /// Ends reading: the session's read, waiting or next, sees end of stream.
    fn shutdown_read(&self) -> io::Result<()> {
        match self {
            Sock::Tcp(w) => socket2::SockRef::from(w.as_ref()).shutdown(std::net::Shutdown::Read),
            Sock::Unix(w) => w.shutdown_read(),
            Sock::Tls(w) => w.shutdown_read(),
            Sock::Ws(w) => w.shutdown_read(),
        }
    }

    async fn writable(&self) -> io::Result<()> {
        match self {
            Sock::Tcp(w) => w.writable().await,
            Sock::Unix(w) => w.writable().await,
            Sock::Tls(w) => w.writable().await,
            Sock::Ws(w) => w.writable().await,
        }
    }
}

/// Bytes waiting for the socket: `buf[head..]`. Frames are written straight into `buf`
/// ([`Conn::send_with`]); `head` moves past what the socket took, so a partial write does not
/// shift the rest.
#[derive(Debug, Default)]
struct Outq {
    buf: Vec<u8>,
    head: usize,
    /// Frames in the buffer (an upper bound once a write has split one).
    frames: usize,
    /// The flusher owns writing until the buffer is empty: the socket would block.
    flushing: bool,
    /// Shut the write side down once the buffer is empty.
    closing: bool,
}

impl Outq {
    fn queued(&self) -> usize {
        self.buf.len() - self.head
    }

    fn is_empty(&self) -> bool {
        self.head == self.buf.len()
    }

    /// The socket took `n` more bytes.
    fn consumed(&mut self, n: usize) {
        self.head += n;
        if self.is_empty() {
            self.buf.clear();
            self.head = 0;
        } else if self.head >= self.queued() {
            // Move the rest to the front once it is no longer than what was written, so the
            // buffer cannot grow without bound under a peer that never quite catches up, and
            // each byte moves at most once on average.
            self.buf.drain(..self.head);
            self.head = 0;
        }
    }
}

/// The handle to one connection. Cheap to share (`Arc<Conn>`).
#[derive(Debug)]
pub(crate) struct Conn {
    pub id: ConnId,
    pub peer: String,
    app: OnceLock<AppId>,
    sock: Sock,
    out: Mutex<Outq>,
    /// Wakes the flusher task.
    flush: Notify,
    /// Signalled when the buffer is back under its limits.
    drained: Notify,
    max_queued_frames: usize,
    max_queued_bytes: usize,
    /// Cancelled to close the connection at once (slow consumer, takeover, write failure);
    /// see [`Conn::kill`].
    kill_token: CancellationToken,
    /// Set with `kill`, for [`Conn::is_killed`].
    killed: AtomicBool,
    /// Set when closed as a slow consumer ([`Conn::mark_slow`]).
    slow: AtomicBool,
    /// Calls this connection made that are still pending.
    pub inflight: AtomicUsize,
    /// Calls delivered to this connection, as a handler, that have not ended (answered, timed
    /// out, or failed): what the router balances on. Kept by [`crate::router::pending::Handling`].
    pub handling: AtomicUsize,
    counters: Arc<Counters>,
}

thread_local! {
    /// The connections written to during the current corked batch on this thread.
    static CORK: RefCell<Option<Vec<Arc<Conn>>>> = const { RefCell::new(None) };
}

/// Holds writes made on this thread until the cork is dropped (or [`Cork::flush`]ed), so that
/// each destination gets one write per batch. Must not live across an `.await` (the batch is
/// synchronous). A nested cork is a no-op; the outer one flushes.
#[derive(Debug)]
pub(crate) struct Cork {
    owner: bool,
}

impl Cork {
    pub fn begin() -> Cork {
        let owner = CORK.with(|c| {
            let mut c = c.borrow_mut();
            let free = c.is_none();
            if free {
                *c = Some(Vec::new());
            }
            free
        });
        Cork { owner }
    }

    /// Ends the batch: writes every touched connection's buffer.
    pub fn flush(self) {
        drop(self);
    }
}

impl Drop for Cork {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        if let Some(conns) = CORK.with(|c| c.borrow_mut().take()) {
            for c in conns {
                c.flush_now();
            }
        }
    }
}

/// Registers `conn` in this thread's cork; false when no cork is active.
fn corked(conn: &Arc<Conn>) -> bool {
    CORK.with(|c| match &mut *c.borrow_mut() {
        Some(list) => {
            list.push(conn.clone());
            true
        }
        None => false,
    })
}

fn is_corked() -> bool {
    CORK.with(|c| c.borrow().is_some())
}

impl Conn {
    pub(crate) fn new(
        id: ConnId,
        peer: String,
        sock: Sock,
        queue_frames: usize,
        queue_bytes: usize,
        counters: Arc<Counters>,
    ) -> Arc<Conn> {
        Arc::new(Conn {
            id,
            peer,
            app: OnceLock::new(),
            sock,
            out: Mutex::new(Outq::default()),
            flush: Notify::new(),
            drained: Notify::new(),
            max_queued_frames: queue_frames.max(1),
            max_queued_bytes: queue_bytes,
            kill_token: CancellationToken::new(),
            killed: AtomicBool::new(false),
            slow: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            handling: AtomicUsize::new(0),
            counters,
        })
    }

    /// Closes the connection at once (slow consumer, takeover, write failure, shutdown): its
    /// session and flusher end, and nothing more is queued to it.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.kill_token.cancel();
    }

    /// Whether the connection was killed. A flag, not the token's `is_cancelled`, which takes
    /// a lock: this is asked for every frame queued.
    pub(crate) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Completes once the connection is killed.
    pub(crate) fn killed(&self) -> WaitForCancellationFuture<'_> {
        self.kill_token.cancelled()
    }

    /// [`killed`](Self::killed), owning its token.
    pub(crate) fn killed_owned(&self) -> WaitForCancellationFutureOwned {
        self.kill_token.clone().cancelled_owned()
    }

    /// The app id bound at handshake, if any.
    pub fn app(&self) -> Option<&AppId> {
        self.app.get()
    }

    /// The app id as a string, or "-" before the handshake (for logs and messages).
    pub fn app_str(&self) -> &str {
        self.app.get().map_or("-", AppId::as_str)
    }

    pub(crate) fn bind_app(&self, app: AppId) {
        let _ = self.app.set(app);
    }

    fn lock(&self) -> MutexGuard<'_, Outq> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a frame caused by another connection. A full buffer closes this connection as a
    /// slow consumer and fails the frame back to the sender (see module docs).
    pub(crate) fn send(self: &Arc<Self>, frame: &[u8]) -> Result<(), SendError> {
        self.push(true, |b| b.extend_from_slice(frame))
    }

    /// [`send`](Self::send), with `write` appending the one frame to the buffer in place (no
    /// frame of its own to allocate, copy and free; it runs under the buffer's lock).
    pub(crate) fn send_with(self: &Arc<Self>, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), SendError> {
        self.push(true, write)
    }

    /// Sends a frame that answers this connection's own request; never refused for space.
    pub(crate) fn reply(self: &Arc<Self>, frame: &[u8]) -> Result<(), SendError> {
        self.push(false, |b| b.extend_from_slice(frame))
    }

    /// [`reply`](Self::reply) for an answer whose size grows with what it describes (`status`,
    /// the listings, a pool's blocks): one whose payload is past `max` would be taken by the
    /// client for a broken stream, so it is not sent, and the FRAME_TOO_LARGE message to answer
    /// with instead is returned (the connection stays).
    pub(crate) fn reply_within(self: &Arc<Self>, frame: &[u8], max: usize) -> Result<(), String> {
        let len = frame.len().saturating_sub(4);
        if len > max {
            return Err(format!(
                "the answer would be a frame of {len} bytes, above the server's max_frame_len of {max}; raise --max-frame-len (clients read up to what the handshake tells)"
            ));
        }
        let _ = self.reply(frame);
        Ok(())
    }

    /// [`reply`](Self::reply), writing the frame in place as [`send_with`](Self::send_with).
    pub(crate) fn reply_with(self: &Arc<Self>, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), SendError> {
        self.push(false, write)
    }

    fn push(self: &Arc<Self>, bounded: bool, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), SendError> {
        if self.is_killed() {
            return Err(SendError::Closed);
        }
        let mut q = self.lock();
        if q.closing {
            return Err(SendError::Closed);
        }
        if bounded && q.frames >= self.max_queued_frames {
            drop(q);
            self.mark_slow();
            return Err(SendError::Full);
        }
        let before = q.queued();
        let end = q.buf.len();
        write(&mut q.buf);
        // A frame alone in the buffer is always taken, however large (the frame size limit
        // bounds it), so that one big frame cannot count as a slow consumer.
        if bounded && before > 0 && q.queued() > self.max_queued_bytes {
            q.buf.truncate(end);
            drop(q);
            self.mark_slow();
            return Err(SendError::Full);
        }
        q.frames += 1;
        if before > 0 || q.flushing {
            // Someone owns the next write: the flusher, or the cork that put bytes here.
            return Ok(());
        }
        if is_corked() {
            drop(q);
            corked(self);
            return Ok(());
        }
        // The buffer holds just this frame: write it now, and leave the flusher what the
        // socket does not take.
        match self.write_buffered(&mut q) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.hand_to_flusher(&mut q);
                Ok(())
            }
            Err(()) => Err(SendError::Closed),
        }
    }

    fn hand_to_flusher(&self, q: &mut Outq) {
        q.flushing = true;
        self.flush.notify_one();
    }

    /// Writes as much of the buffer as the socket takes now (end of a corked batch).
    fn flush_now(&self) {
        let mut q = self.lock();
        if q.flushing || q.is_empty() {
            return;
        }
        match self.write_buffered(&mut q) {
            Ok(true) => self.after_drain(&mut q),
            Ok(false) => self.hand_to_flusher(&mut q),
            Err(()) => {}
        }
    }

    /// Writes from the buffer until it is empty (true) or the socket would block (false).
    fn write_buffered(&self, q: &mut Outq) -> Result<bool, ()> {
        let failed = |e: io::Error| {
            tracing::debug!(conn = self.id, error = %e, "write failed; closing");
            self.kill();
        };
        while !q.is_empty() {
            match self.sock.try_write(&q.buf[q.head..]) {
                Ok(n) => q.consumed(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => {
                    failed(e);
                    return Err(());
                }
            }
        }
        // Bytes the socket layer took but holds back (TLS records rustls encrypted and the socket
        // did not take) are written before the buffer counts as drained.
        match self.sock.flush_pending() {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) => {
                failed(e);
                return Err(());
            }
        }
        q.frames = 0;
        if q.buf.capacity() > RETAIN_BUFFER {
            // A burst grew the buffer; do not keep that memory for the connection's lifetime.
            q.buf = Vec::new();
        }
        Ok(true)
    }

    fn after_drain(&self, q: &mut Outq) {
        q.flushing = false;
        self.drained.notify_waiters();
        if q.closing {
            // The flusher shuts the write side down.
            self.flush.notify_one();
        }
    }

    /// Whether the buffer is at or over a limit (the session then stops reading).
    pub(crate) fn over_limit(&self) -> bool {
        let q = self.lock();
        q.frames >= self.max_queued_frames || q.queued() >= self.max_queued_bytes
    }

    /// Whether the connection was closed as a slow consumer: its session stops reading.
    pub(crate) fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Acquire)
    }

    /// Waits until the buffer is under its limits (or the connection is killed or closed as a
    /// slow consumer).
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if !self.over_limit() || self.is_killed() || self.is_slow() {
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = self.killed() => return,
            }
        }
    }

    /// Refuses new frames; the flusher writes what is buffered, then shuts the write side down
    /// (the session bounds the wait with the shutdown grace period, then closes hard).
    pub(crate) fn close_gracefully(&self) {
        let mut q = self.lock();
        q.closing = true;
        self.flush.notify_one();
    }

    /// Closes a connection whose queue passed a limit (frames others sent it were refused:
    /// their senders were told). Its session stops reading at once, so the calls routed to it
    /// fail with HANDLER_GONE and new ones go to other handlers. The frames already queued stay
    /// its to read, followed by a `closing` frame that says why; the flusher writes them, then
    /// shuts the connection down — within the shutdown grace, after which a peer that still has
    /// not read them is cut off (`session::run`).
    fn mark_slow(self: &Arc<Self>) {
        if self.slow.swap(true, Ordering::AcqRel) {
            return;
        }
        self.counters.inc(&self.counters.slow_consumers);
        tracing::warn!(conn = self.id, app = self.app_str(), peer = %self.peer,
            "closing slow consumer: its outbound buffer is full");
        let message = format!(
            "this connection did not read fast enough: its outbound queue reached its limit ({} frames or {} bytes), \
             so frames for it were refused (their senders were told) and it is closed after the frames queued before; \
             read faster, or raise --outbound-queue-frames/--outbound-queue-bytes",
            self.max_queued_frames, self.max_queued_bytes
        );
        let frame = encode_message(&Closing {
            action: "closing",
            code: ErrorCode::Overloaded,
            message: &message,
        });
        // Never refused for space, as an answer is not.
        let _ = self.push(false, |b| b.extend_from_slice(&frame));
        self.close_gracefully();
        // The session stops reading: a read waiting for the socket (or the next one) sees end of
        // stream, and one held back for this very queue is woken to see `is_slow`. (A signal of
        // its own, waited on beside the read, cost ~200 bytes in every idle connection's task.)
        if let Err(e) = self.sock.shutdown_read() {
            tracing::debug!(conn = self.id, error = %e, "could not shut a slow consumer's read side");
        }
        self.drained.notify_waiters();
    }
}

/// The connection's flusher: writes buffered bytes when the socket becomes writable, and shuts
/// the write side down after a graceful close. Ends when the connection is killed or closed.
pub(crate) async fn flusher(conn: Arc<Conn>) {
    loop {
        tokio::select! {
            biased;
            _ = conn.killed() => return,
            _ = conn.flush.notified() => {}
        }
        loop {
            let done = {
                let mut q = conn.lock();
                if q.is_empty() && !conn.sock.pending() {
                    q.flushing = false;
                    if q.closing {
                        break_and_close(&conn);
                        return;
                    }
                    break;
                }
                q.flushing = true;
                match conn.write_buffered(&mut q) {
                    Ok(true) => {
                        conn.after_drain(&mut q);
                        if q.closing {
                            break_and_close(&conn);
                            return;
                        }
                        true
                    }
                    Ok(false) => false,
                    Err(()) => return,
                }
            };
            if done {
                break;
            }
            tokio::select! {
                biased;
                _ = conn.killed() => return,
                r = conn.sock.writable() => if r.is_err() {
                    conn.kill();
                    return;
                },
            }
        }
    }
}

/// Ends the connection after a graceful close: shuts the write side down so the peer sees EOF
/// once it has read everything, then ends the session.
fn break_and_close(conn: &Conn) {
    let _ = conn.sock.shutdown_write();
    conn.kill();
}

#[cfg(test)]
mod tests {
    use super::Outq;

    #[test]
    fn partial_writes_keep_the_rest_in_order_and_the_buffer_bounded() {
        let mut q = Outq::default();
        q.buf.extend_from_slice(b"0123456789");
        q.consumed(3);
        assert_eq!((&q.buf[q.head..], q.queued()), (&b"3456789"[..], 7));
        q.buf.extend_from_slice(b"ab");
        // Written no more than what is left: the rest moves to the front.
        q.consumed(3);
        assert_eq!((q.head, &q.buf[..]), (0, &b"6789ab"[..]));
        q.consumed(1);
        assert_eq!(&q.buf[q.head..], b"789ab");
        q.consumed(5);
        assert!(q.is_empty());
        assert_eq!((q.head, q.buf.len()), (0, 0));
    }
}
