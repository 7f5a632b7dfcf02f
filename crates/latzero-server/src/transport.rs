//! Listeners: TCP and the Unix domain socket. Each accepted stream becomes a session; the
//! protocol is the same on both.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::server::State;
use crate::session;
use crate::session::conn::Sock;

/// Pause after a failed accept (for example EMFILE) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listener whose accepted streams split into owned read and write halves.
pub(crate) trait Listener: Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    const KIND: &'static str;

    /// Accepts one connection: its halves and a peer description for logs and status.
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Read, Sock, String)>> + Send;
}

impl Listener for TcpListener {
    type Read = tokio::net::tcp::OwnedReadHalf;
    const KIND: &'static str = "tcp";

    async fn accept(&self) -> std::io::Result<(Self::Read, Sock, String)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        Ok((r, Sock::Tcp(w), peer.to_string()))
    }
}

impl Listener for UnixListener {
    type Read = tokio::net::unix::OwnedReadHalf;
    const KIND: &'static str = "unix";

    async fn accept(&self) -> std::io::Result<(Self::Read, Sock, String)> {
        let (stream, _) = UnixListener::accept(self).await?;
        let (r, w) = stream.into_split();
        Ok((r, Sock::Unix(w), "unix".to_owned()))
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
                Ok((r, w, peer)) => {
                    tracker.spawn(session::run(state.clone(), r, w, peer));
                }
                Err(e) => {
                    tracing::warn!(listener = L::KIND, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}
