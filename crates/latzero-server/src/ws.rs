//! The WebSocket transport (`--ws-port`), for browsers and anything else that speaks WebSocket:
//! `ws://HOST:PORT`, or `wss://` with `--tls` (the TCP port's certificate). Each WebSocket message
//! carries one frame's payload (docs/PROTOCOL.md §2 without its length prefix): a text message a
//! JSON frame, a binary message a binary frame, both ways. A bridge moves the messages to and
//! from the session's socket pair, as the TLS bridge moves bytes, so the session is the same as
//! on every other transport.
//!
//! A browser sends the page's `Origin` with the upgrade request. Any page the user opens could
//! otherwise reach a server on 127.0.0.1, so an upgrade with an `Origin` is refused (403) unless
//! the origin is allowed (`--ws-origin`); one without (a program, not a page) is not asked.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{FutureExt, SinkExt, StreamExt};
use latzero_uds::UdsStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::task::TaskTracker;

use crate::server::State;
use crate::transport::Listener;

/// The WebSocket listener's settings.
#[derive(Debug, Clone, Default)]
pub struct WsConfig {
    /// The port to serve WebSocket on (on the TCP port's host); `None`: no WebSocket; 0 picks
    /// a free one.
    pub port: Option<u16>,
    /// The page origins (`scheme://host[:port]`, as browsers send them) whose pages may
    /// connect; `*` allows any page. An upgrade without an `Origin` (not from a page) is
    /// always allowed.
    pub origins: Vec<String>,
}

/// The WebSocket port's listener.
#[derive(Debug)]
pub(crate) struct WsListener(pub TcpListener);

impl Listener for WsListener {
    type Stream = TcpStream;
    const KIND: &'static str = "ws";

    async fn accept(&self) -> std::io::Result<(TcpStream, String)> {
        let (stream, peer) = self.0.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, format!("ws:{peer}")))
    }

    fn serve(state: &Arc<State>, stream: TcpStream, peer: String, tracker: &TaskTracker) {
        tracker.spawn(serve(state.clone(), stream, peer, tracker.clone()));
    }
}

/// Serves one connection to the WebSocket port: TLS first with `--tls`, then the upgrade
/// (within the handshake timeout), then the session on the bridged messages.
async fn serve(state: Arc<State>, tcp: TcpStream, peer: String, tracker: TaskTracker) {
    match &state.tls {
        None => upgrade(state, tcp, peer, tracker).await,
        Some(tls) => {
            let accepted = tls.acceptor.accept(tcp);
            let what = "TLS handshake on the WebSocket port";
            if let Some(s) = crate::transport::within_handshake(&state, &peer, what, accepted).await {
                upgrade(state, s, peer, tracker).await;
            }
        }
    }
}

/// Whether a page of `origin` may connect.
fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

async fn upgrade<S>(state: Arc<State>, stream: S, peer: String, tracker: TaskTracker)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let origins = state.config.ws.origins.clone();
    // The signature is tungstenite's `Callback`, whose refusal is an HTTP response.
    #[allow(clippy::result_large_err)]
    let check = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let Some(origin) = req.headers().get("origin") else {
            return Ok(resp);
        };
        let origin = origin.to_str().unwrap_or("(not text)");
        if origin_allowed(origin, &origins) {
            return Ok(resp);
        }
        let mut refusal = ErrorResponse::new(Some(format!(
            "pages of origin {origin} may not connect to this LatZero server; its operator can allow them with --ws-origin {origin}\n"
        )));
        *refusal.status_mut() = StatusCode::FORBIDDEN;
        Err(refusal)
    };
    // A message is one frame: the frame limit is the message limit.
    let max = state.config.limits.max_frame_len;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let accepted = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config));
    let Some(ws) = crate::transport::within_handshake(&state, &peer, "WebSocket upgrade", accepted).await else {
        return;
    };
    crate::transport::run_bridged(state, peer, &tracker, "WebSocket", |near| bridge(ws, near, max)).await;
}

/// Each page's read buffer. tungstenite's default, 128 KiB, is allocated for every connection
/// and zero-filled before every read: 2,000 idle pages held the server at 340 MB (80 MB with
/// this), and a pipelining page's reads spent ~4% of its time in `memset`. A message larger
/// than this is read in more steps, at no cost measured (docs/BENCHMARKS.md).
const READ_BUFFER: usize = 4 * 1024;

/// The most a peer's messages are gathered into before they are written to the session (more
/// than one message's worth only when they were already read).
const UP_BATCH: usize = 64 * 1024;

/// Moves messages between the WebSocket and the session's socket until the session ends (the
/// peer then gets a close frame) or the peer closes (the session then reads end of stream, and
/// ends). The two directions run apart, so a peer that does not read never stops the session
/// from reading it (the session's own backpressure then applies, as on any socket).
async fn bridge<S>(ws: WebSocketStream<S>, near: UdsStream, max: usize)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (mut nr, mut nw) = near.into_split();
    // Why the peer's side ended, for the close frame: an oversized message is the peer's to know.
    let (why_tx, mut why_rx) = tokio::sync::oneshot::channel::<CloseFrame>();
    let up = async move {
        let mut why = None;
        let mut out = BytesMut::with_capacity(UP_BATCH);
        let mut open = true;
        while open {
            // A message of a batch's size or more, written as it is after the batch before it:
            // not copied, and no buffer of its size kept for the rest of the connection.
            let mut large = None;
            // The next message, waiting for it, then those already read, as frames in one write
            // (a write per message cost two syscalls each, and most of a pipelined page's time).
            let mut next = stream.next().await;
            loop {
                let payload: Option<Bytes> = match next {
                    Some(Ok(Message::Text(t))) => Some(t.into()),
                    Some(Ok(Message::Binary(b))) => Some(b),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        if let Some(Err(WsError::Capacity(e))) = next {
                            why = Some(CloseFrame {
                                code: CloseCode::Size,
                                reason: Utf8Bytes::from(format!(
                                    "FRAME_TOO_LARGE: {e}; the server's max_frame_len is {max} bytes"
                                )),
                            });
                        }
                        open = false;
                        break;
                    }
                    Some(Ok(_)) => None, // ping, pong: nothing for the session
                };
                match payload {
                    Some(p) if p.len() >= UP_BATCH => {
                        large = Some(p);
                        break;
                    }
                    Some(p) => {
                        // At most `max` (the WebSocket limit), which the server's own check
                        // keeps in a u32.
                        out.put_u32(p.len() as u32);
                        out.extend_from_slice(&p);
                    }
                    None => {}
                }
                if out.len() >= UP_BATCH {
                    break;
                }
                match stream.next().now_or_never() {
                    Some(m) => next = m,
                    None => break,
                }
            }
            // What the peer sent before it closed still reaches the session.
            if !out.is_empty() && nw.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
            if let Some(p) = large {
                let len = (p.len() as u32).to_be_bytes();
                if nw.write_all(&len).await.is_err() || nw.write_all(&p).await.is_err() {
                    break;
                }
            }
        }
        if let Some(w) = why {
            let _ = why_tx.send(w);
        }
        let _ = nw.shutdown().await;
    };
    let down = async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        'read: loop {
            match nr.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            while buf.len() >= 4 {
                let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if buf.len() < 4 + len {
                    buf.reserve(4 + len - buf.len());
                    break;
                }
                buf.advance(4);
                let payload = buf.split_to(len).freeze();
                if sink.feed(message(payload)).await.is_err() {
                    break 'read;
                }
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
        // Sent before the peer's side shut the session's input, so here by the time the
        // session has ended for that.
        let close = why_rx.try_recv().unwrap_or(CloseFrame {
            code: CloseCode::Normal,
            reason: Utf8Bytes::from_static("the session ended"),
        });
        let _ = sink.send(Message::Close(Some(close))).await;
        let _ = sink.close().await;
    };
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut down => {}
        () = &mut up => down.await,
    }
}

/// One of the server's frames as a message: binary for a binary frame (its first byte is the
/// binary marker), text for JSON.
fn message(payload: Bytes) -> Message {
    if payload.first() == Some(&latzero_proto::frame::BINARY_MARKER) {
        return Message::Binary(payload);
    }
    match Utf8Bytes::try_from(payload.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_by_star() {
        let allowed = vec!["http://localhost:8080".to_owned()];
        assert!(origin_allowed("http://localhost:8080", &allowed));
        assert!(origin_allowed("HTTP://LOCALHOST:8080", &allowed));
        assert!(!origin_allowed("http://localhost:8081", &allowed));
        assert!(!origin_allowed("http://evil.example", &allowed));
        assert!(!origin_allowed("http://localhost:8080", &[]));
        assert!(origin_allowed("http://evil.example", &["*".to_owned()]));
    }

    #[test]
    fn binary_frames_go_as_binary_messages_and_json_as_text() {
        assert!(matches!(message(Bytes::from_static(b"\0head")), Message::Binary(_)));
        assert!(matches!(message(Bytes::from_static(b"{\"a\":1}")), Message::Text(_)));
        assert!(matches!(message(Bytes::from_static(b"\xff\xfe")), Message::Binary(_)));
    }
}
