//! Listeners: TCP and the Unix domain socket. Each accepted stream becomes a session; the
//! protocol is the same on both.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::server::State;
use crate::session;

/// Pause after a failed accept (for example EMFILE) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub(crate) async fn accept_tcp(
    state: Arc<State>,
    listener: TcpListener,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (r, w) = stream.into_split();
                    tracker.spawn(session::run(state.clone(), r, w, peer.to_string()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

pub(crate) async fn accept_unix(
    state: Arc<State>,
    listener: UnixListener,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let (r, w) = stream.into_split();
                    tracker.spawn(session::run(state.clone(), r, w, "unix".to_owned()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unix accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}
