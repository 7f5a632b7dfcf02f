//! Listeners: TCP (plain, or TLS with `--tls`) and the Unix domain socket. Each accepted stream
//! becomes a session; the protocol is the same on all of them.

use std::sync::Arc;
use std::time::Duration;

use latzero_uds::UdsStream;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::server::State;
use crate::session;
use crate::session::conn::Sock;

/// Pause after a failed accept (for example EMFILE) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listener whose accepted streams each become a tracked session.
pub(crate) trait Listener: Send + 'static {
    type Stream: Send + 'static;
    const KIND: &'static str;

    /// Accepts one connection, with a peer description for logs and status.
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Stream, String)>> + Send;

    /// Runs the connection's session (never blocking the accept loop).
    fn serve(state: &Arc<State>, stream: Self::Stream, peer: String, tracker: &TaskTracker);
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    const KIND: &'static str = "tcp";

    async fn accept(&self) -> std::io::Result<(TcpStream, String)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, peer.to_string()))
    }

    fn serve(state: &Arc<State>, stream: TcpStream, peer: String, tracker: &TaskTracker) {
        if let Some(tls) = &state.tls {
            tracker.spawn(crate::tls::serve(state.clone(), tls.clone(), stream, peer));
            return;
        }
        let (r, w) = stream.into_split();
        tracker.spawn(session::run(state.clone(), r, Sock::Tcp(w), peer));
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    const KIND: &'static str = "unix";

    async fn accept(&self) -> std::io::Result<(UnixStream, String)> {
        let (stream, _) = UnixListener::accept(self).await?;
        Ok((stream, "unix".to_owned()))
    }

    fn serve(state: &Arc<State>, stream: UnixStream, peer: String, tracker: &TaskTracker) {
        let (r, w) = match UdsStream::from_tokio(stream) {
            Ok(s) => {
                size_send_buffer(state, &s);
                s.into_split()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take over an accepted Unix connection");
                return;
            }
        };
        tracker.spawn(session::run(state.clone(), r, Sock::Unix(w), peer));
    }
}

/// Gives a Unix socket the server writes to the configured send buffer (`--unix-send-buffer`).
/// A socket the kernel will not size keeps its default, with a warning: it still works.
pub(crate) fn size_send_buffer(state: &State, s: &UdsStream) {
    let bytes = state.config.unix_send_buffer;
    if bytes > 0
        && let Err(e) = s.set_send_buffer(bytes)
    {
        tracing::warn!(bytes, error = %e, "cannot set a Unix socket's send buffer; it keeps the kernel's default");
    }
}

/// Reads what `tcp` has now into `b` without blocking, as `try_read` does, and clears the
/// socket's readiness when the read fills less than `b`: that read drained the socket, so the
/// next one waits for the socket's next event instead of making a syscall that finds nothing
/// (tokio's own `poll_read` does the same; `try_read` clears it only on `WouldBlock`). The
/// TLS and WebSocket readers read through this: with a plain `try_read` each batch a client
/// sent cost one read more.
pub(crate) fn try_read_draining(tcp: &TcpStream, b: &mut [u8]) -> std::io::Result<usize> {
    let want = b.len();
    let mut got = 0;
    let read = tcp.try_io(tokio::io::Interest::READABLE, || {
        got = tcp.try_read(b)?;
        if got > 0 && got < want {
            // Only a `WouldBlock` from here clears the readiness; the bytes are kept in `got`.
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(got)
    });
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        r => r,
    }
}

/// A connection's TLS handshake or WebSocket upgrade (`what`), within the handshake timeout;
/// `None`, logged, if it fails or runs out of time.
pub(crate) async fn within_handshake<T, E: std::fmt::Display>(
    state: &State,
    peer: &str,
    what: &str,
    step: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout(state.config.limits.handshake_timeout, step).await {
        Ok(Ok(t)) => Some(t),
        Ok(Err(e)) => {
            tracing::info!(peer = %peer, error = %e, "{what} failed");
            None
        }
        Err(_) => {
            tracing::info!(peer = %peer, "{what} timed out");
            None
        }
    }
}

/// Accepts until `stop`, running each connection as a tracked session.
pub(crate) async fn accept_loop<L: Listener>(
    state: Arc<State>,
    listener: L,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((stream, peer)) => L::serve(&state, stream, peer, &tracker),
                Err(e) => {
                    tracing::warn!(listener = L::KIND, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}
