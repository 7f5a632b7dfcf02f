//! One connection's outbound side: the handle other tasks use to queue frames to it, and the
//! writer task that drains the queue.
//!
//! The queue is bounded twice, in frames and in bytes, and frames enter it two ways:
//!
//! - [`Conn::send`]: frames caused by *other* connections (a trigger delivered to a handler, an
//!   emit, a presence event, a result forwarded to a `reply_to` app). When the queue is full the
//!   policy is named *slow consumer*: the frame fails back to whoever sent it (the router turns
//!   that into an OVERLOADED error for a caller), and the stuck connection is closed at once,
//!   which in turn fails its own pending calls with HANDLER_GONE.
//! - [`Conn::reply`]: frames answering this connection's *own* requests (acks, errors, pongs,
//!   the terminal frame of its calls). These are always queued — a burst of failures for a
//!   caller that reads fine must not cost it its connection — and they are bounded by the
//!   connection itself: terminal frames by its in-flight limit, the rest because the session
//!   stops reading from a connection whose queue is over the limit until the writer drains it.
//!
//! Memory stays bounded and nothing is dropped without someone being told.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use latzero_proto::AppId;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::admin::Counters;

/// A connection's id, unique for the server's lifetime.
pub type ConnId = u64;

/// An item in a connection's outbound queue.
#[derive(Debug)]
pub(crate) enum Out {
    /// A complete frame, length prefix included.
    Frame(Bytes),
    /// Flush what is queued, then close the write side.
    Close,
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The queue was full: the connection is a slow consumer and has been closed.
    Full,
    /// The connection is closed.
    Closed,
}

/// The handle to one connection. Cheap to share (`Arc<Conn>`).
#[derive(Debug)]
pub(crate) struct Conn {
    pub id: ConnId,
    pub peer: String,
    app: OnceLock<AppId>,
    tx: mpsc::UnboundedSender<Out>,
    queued_frames: AtomicUsize,
    queued_bytes: AtomicUsize,
    max_queued_frames: usize,
    max_queued_bytes: usize,
    /// Signalled by the writer when the queue is back under its limits.
    drained: Notify,
    /// Cancelled to close the connection at once (slow consumer, takeover, server gone).
    pub kill: CancellationToken,
    slow: AtomicBool,
    /// Calls this connection made that are still pending.
    pub inflight: AtomicUsize,
    counters: Arc<Counters>,
}

impl Conn {
    pub(crate) fn new(
        id: ConnId,
        peer: String,
        queue_frames: usize,
        queue_bytes: usize,
        counters: Arc<Counters>,
    ) -> (Arc<Conn>, mpsc::UnboundedReceiver<Out>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Conn {
            id,
            peer,
            app: OnceLock::new(),
            tx,
            queued_frames: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            max_queued_frames: queue_frames.max(1),
            max_queued_bytes: queue_bytes,
            drained: Notify::new(),
            kill: CancellationToken::new(),
            slow: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            counters,
        };
        (Arc::new(conn), rx)
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

    /// Queues a frame caused by another connection. A full queue closes this connection as a
    /// slow consumer and fails the frame back to the sender (see module docs).
    pub(crate) fn send(&self, frame: Bytes) -> Result<(), SendError> {
        if self.kill.is_cancelled() {
            return Err(SendError::Closed);
        }
        let len = frame.len();
        let frames = self.queued_frames.fetch_add(1, Ordering::Relaxed);
        let bytes = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if frames >= self.max_queued_frames || (bytes > 0 && bytes + len > self.max_queued_bytes) {
            self.unqueue(1, len);
            self.mark_slow();
            return Err(SendError::Full);
        }
        self.push(frame, len)
    }

    /// Queues a frame that answers this connection's own request; never refused for space.
    pub(crate) fn reply(&self, frame: Bytes) -> Result<(), SendError> {
        if self.kill.is_cancelled() {
            return Err(SendError::Closed);
        }
        let len = frame.len();
        self.queued_frames.fetch_add(1, Ordering::Relaxed);
        self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        self.push(frame, len)
    }

    fn push(&self, frame: Bytes, len: usize) -> Result<(), SendError> {
        self.tx.send(Out::Frame(frame)).map_err(|_| {
            self.unqueue(1, len);
            SendError::Closed
        })
    }

    fn unqueue(&self, frames: usize, bytes: usize) {
        self.queued_frames.fetch_sub(frames, Ordering::Relaxed);
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Whether the queue is at or over a limit (the session then stops reading).
    pub(crate) fn over_limit(&self) -> bool {
        self.queued_frames.load(Ordering::Relaxed) >= self.max_queued_frames
            || self.queued_bytes.load(Ordering::Relaxed) >= self.max_queued_bytes
    }

    /// Waits until the writer has drained the queue under its limits (or the conn is killed).
    pub(crate) async fn drained(&self) {
        while self.over_limit() && !self.kill.is_cancelled() {
            tokio::select! {
                _ = self.drained.notified() => {}
                _ = self.kill.cancelled() => {}
            }
        }
    }

    /// Asks the writer to flush what is queued and close. Falls back to a hard close.
    pub(crate) fn close_gracefully(&self) {
        if self.tx.send(Out::Close).is_err() {
            self.kill.cancel();
        }
    }

    fn mark_slow(&self) {
        if !self.slow.swap(true, Ordering::Relaxed) {
            self.counters.inc(&self.counters.slow_consumers);
            tracing::warn!(conn = self.id, app = self.app_str(), peer = %self.peer,
                "closing slow consumer: its outbound queue is full");
        }
        self.kill.cancel();
    }
}

/// Largest batch the writer coalesces into one write.
const BATCH_FRAMES: usize = 256;
/// Frames at least this large are written on their own instead of being copied into a batch.
const LARGE_FRAME: usize = 64 * 1024;

/// Drains a connection's queue, coalescing queued frames into as few writes as possible.
pub(crate) async fn writer<W: AsyncWrite + Unpin>(conn: Arc<Conn>, mut rx: mpsc::UnboundedReceiver<Out>, mut w: W) {
    let mut batch = Vec::with_capacity(BATCH_FRAMES);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'outer: loop {
        let n = tokio::select! {
            biased;
            _ = conn.kill.cancelled() => break,
            n = rx.recv_many(&mut batch, BATCH_FRAMES) => n,
        };
        if n == 0 {
            break;
        }
        let mut close = false;
        let mut done = 0usize;
        let frames = batch.iter().filter(|o| matches!(o, Out::Frame(_))).count();
        buf.clear();
        for item in batch.drain(..) {
            match item {
                Out::Frame(f) => {
                    done += f.len();
                    if f.len() >= LARGE_FRAME {
                        if !buf.is_empty() && !write(&conn, &mut w, &buf).await {
                            break 'outer;
                        }
                        buf.clear();
                        if !write(&conn, &mut w, &f).await {
                            break 'outer;
                        }
                    } else {
                        buf.extend_from_slice(&f);
                    }
                }
                Out::Close => {
                    close = true;
                    break;
                }
            }
        }
        if !buf.is_empty() && !write(&conn, &mut w, &buf).await {
            break;
        }
        conn.unqueue(frames, done);
        if !conn.over_limit() {
            conn.drained.notify_one();
        }
        if close {
            break;
        }
    }
    let _ = w.shutdown().await;
    conn.kill.cancel();
}

async fn write<W: AsyncWrite + Unpin>(conn: &Conn, w: &mut W, bytes: &[u8]) -> bool {
    tokio::select! {
        biased;
        _ = conn.kill.cancelled() => false,
        r = w.write_all(bytes) => match r {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(conn = conn.id, error = %e, "write failed; closing");
                false
            }
        },
    }
}
