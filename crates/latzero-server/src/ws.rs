//! The WebSocket transport (`--ws-port`), for browsers and anything else that speaks WebSocket:
//! `ws://HOST:PORT`, or `wss://` with `--tls` (the TCP port's certificate). Each WebSocket message
//! carries one frame's payload (docs/PROTOCOL.md §2 without its length prefix): a text message a
//! JSON frame, a binary message a binary frame, both ways.
//!
//! The session runs on the WebSocket connection itself, as on any socket. Its reader
//! ([`WsRead`]) takes the page's messages — tungstenite reads and unmasks them and answers
//! pings — and hands the session their payloads as frames. The frames written to it go out as
//! WebSocket messages from whichever thread writes them, with the same non-blocking write a
//! plain socket has ([`WsWrite`], `session::conn::Sock::Ws`); tungstenite's own few messages
//! (its handshake answer, pongs) go through the same writer, so they never land inside a message.
//! With `--tls` both run on the TLS connection (`crate::tls`). (Until 2026-11-24 a bridge task
//! moved the messages to the session over a Unix socket pair: a hop more each way,
//! docs/BENCHMARKS.md.) The session's end sends a close message after what it wrote last, with
//! a code and reason when the page broke a rule (a message over the frame limit: 1009,
//! `FRAME_TOO_LARGE`).
//!
//! A browser sends the page's `Origin` with the upgrade request. Any page the user opens could
//! otherwise reach a server on 127.0.0.1, so an upgrade with an `Origin` is refused (403) unless
//! the origin is allowed (`--ws-origin`); one without (a program, not a page) is not asked.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::StreamExt;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::task::TaskTracker;

use crate::server::State;
use crate::session::conn::Sock;
use crate::tls::{TlsRead, TlsWrite};
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
        tracker.spawn(serve(state.clone(), stream, peer));
    }
}

/// Serves one connection to the WebSocket port: TLS first with `--tls`, then the upgrade
/// (within the handshake timeout), then the session on the connection's messages.
async fn serve(state: Arc<State>, tcp: TcpStream, peer: String) {
    let (read, under) = match &state.tls {
        None => {
            let tcp = Arc::new(tcp);
            (RawRead::Tcp(tcp.clone()), Under::Tcp(tcp))
        }
        Some(tls) => {
            let accepted = tls.acceptor.accept(tcp);
            let what = "TLS handshake on the WebSocket port";
            let Some(s) = crate::transport::within_handshake(&state, &peer, what, accepted).await else {
                return;
            };
            let (r, w) = crate::tls::split(s);
            (RawRead::Tls(r), Under::Tls(w))
        }
    };
    let write = WsWrite(Arc::new(Shared {
        under,
        out: Mutex::new(Out::default()),
    }));
    upgrade(
        state,
        Duplex {
            read,
            write: write.clone(),
        },
        write,
        peer,
    )
    .await;
}

/// Whether a page of `origin` may connect.
fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

async fn upgrade(state: Arc<State>, stream: Duplex, write: WsWrite, peer: String) {
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
    // tungstenite writes only its own few messages (pongs); the frames go through `WsWrite`.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .write_buffer_size(0)
        .max_write_buffer_size(CONTROL_BUFFER);
    let accepted = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config));
    let Some(ws) = crate::transport::within_handshake(&state, &peer, "WebSocket upgrade", accepted).await else {
        return;
    };
    let read = WsRead {
        ws,
        write: write.clone(),
        frame: None,
        at: 0,
        ended: false,
        max,
    };
    let grace = state.config.shutdown_grace;
    crate::session::run(state, read, Sock::Ws(write.clone()), peer).await;
    // The close message goes after what the session wrote last: the session's graceful end sent
    // it already, one cut off has not. The peer gets the shutdown grace to take it.
    let close = async {
        while let Ok(false) = write.close() {
            if write.0.under.writable().await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(grace, close).await;
}

/// Each page's read buffer. tungstenite's default, 128 KiB, is allocated for every connection
/// and zero-filled before every read: 2,000 idle pages held the server at 340 MB (80 MB with
/// this), and a pipelining page's reads spent ~4% of its time in `memset`. A message larger
/// than this is read in more steps, at no cost measured (docs/BENCHMARKS.md).
const READ_BUFFER: usize = 4 * 1024;

/// The most tungstenite holds of its own messages (pongs) that the socket has not taken: past
/// it, it keeps only the latest pong, so a page that pings and never reads costs no more.
const CONTROL_BUFFER: usize = 4 * 1024;

/// The most frames gathered into one write (two slices each: the message header, the payload),
/// which keeps a write within Linux's `IOV_MAX` (1024 slices). It was 32: a page with 64 calls
/// in flight had its answers written in two writes or more, and ran at 0.66× a TCP client's
/// pipelined rate where it now runs at ~0.76× (docs/BENCHMARKS.md).
const WRITE_BATCH: usize = 512;
const _: () = assert!(2 * WRITE_BATCH <= 1024, "a write's slices within IOV_MAX");

/// The frames of one write kept on the stack; a longer batch puts its headers and slices on the
/// heap, once for the whole write.
const INLINE_BATCH: usize = 64;

/// Largest capacity of the unwritten tail kept once it has drained.
const RETAIN_TAIL: usize = 64 * 1024;

/// The bytes under the WebSocket framing: the TCP socket, or TLS on it (`wss://`).
enum Under {
    Tcp(Arc<TcpStream>),
    Tls(TlsWrite),
}

impl Under {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Under::Tcp(t) => t.try_write_vectored(bufs),
            Under::Tls(t) => t.try_write_vectored(bufs),
        }
    }

    /// Bytes taken but still waiting for the socket (TLS records): written, `true` once none is
    /// left.
    fn flush_pending(&self) -> io::Result<bool> {
        match self {
            Under::Tcp(_) => Ok(true),
            Under::Tls(t) => t.flush_pending(),
        }
    }

    fn pending(&self) -> bool {
        match self {
            Under::Tcp(_) => false,
            Under::Tls(t) => t.pending(),
        }
    }

    async fn writable(&self) -> io::Result<()> {
        match self {
            Under::Tcp(t) => t.writable().await,
            Under::Tls(t) => t.writable().await,
        }
    }

    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Under::Tcp(t) => t.poll_write_ready(cx),
            Under::Tls(t) => t.poll_writable(cx),
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Under::Tcp(t) => socket2::SockRef::from(t.as_ref()).shutdown(std::net::Shutdown::Write),
            Under::Tls(t) => t.shutdown_write(),
        }
    }

    fn shutdown_read(&self) -> io::Result<()> {
        match self {
            Under::Tcp(t) => socket2::SockRef::from(t.as_ref()).shutdown(std::net::Shutdown::Read),
            Under::Tls(t) => t.shutdown_read(),
        }
    }
}

/// What the writing side keeps between writes.
#[derive(Default)]
struct Out {
    /// WebSocket bytes the socket did not take, `tail[head..]`: the rest of a message begun, and
    /// tungstenite's messages after it. They go out before anything else.
    tail: Vec<u8>,
    head: usize,
    /// Why the peer's side ended, for the close message (the reading side sets it).
    why: Option<(CloseCode, String)>,
    /// The close message is queued: nothing more is sent after it.
    closed: bool,
    /// The write side is shut down.
    shut: bool,
}

impl Out {
    fn unwritten(&self) -> bool {
        self.head < self.tail.len()
    }

    /// Writes the tail: `true` once nothing is left of it (TLS records included).
    fn flush(&mut self, under: &Under) -> io::Result<bool> {
        while self.unwritten() {
            match under.try_write_vectored(&[IoSlice::new(&self.tail[self.head..])]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.head += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.head = 0;
        self.tail.clear();
        if self.tail.capacity() > RETAIN_TAIL {
            self.tail = Vec::new();
        }
        under.flush_pending()
    }
}

struct Shared {
    under: Under,
    out: Mutex<Out>,
}

/// The session's side of a WebSocket connection for writing (`Sock::Ws`): frames in (as the
/// session writes them, each with its length prefix), WebSocket messages out, written without
/// blocking by the thread that writes them.
#[derive(Clone)]
pub(crate) struct WsWrite(Arc<Shared>);

impl std::fmt::Debug for WsWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsWrite")
    }
}

impl WsWrite {
    fn lock(&self) -> MutexGuard<'_, Out> {
        self.0.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes whole frames from the front of `b` as a socket write takes bytes: each goes out as
    /// one message, up to [`WRITE_BATCH`] in one vectored write, and the count of the frames'
    /// bytes taken is returned. A message the socket took in part counts as taken: its rest
    /// waits in the tail ([`pending`](Self::pending)), which goes out before the next message.
    /// `WouldBlock` while the tail is not written, or when the socket takes nothing.
    pub(crate) fn try_write(&self, b: &[u8]) -> io::Result<usize> {
        let under = &self.0.under;
        let mut out = self.lock();
        if !out.flush(under)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if out.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the WebSocket is closed"));
        }
        // Each frame: its message header, and where its payload lies in `b`.
        let mut heads: SmallVec<[[u8; MAX_HEADER]; INLINE_BATCH]> = SmallVec::new();
        let mut spans: SmallVec<[(usize, usize, usize); INLINE_BATCH]> = SmallVec::new();
        let mut off = 0;
        while spans.len() < WRITE_BATCH && b.len() - off >= 4 {
            let len = u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]) as usize;
            let start = off + 4;
            if b.len() - start < len {
                break;
            }
            let mut head = [0u8; MAX_HEADER];
            let hl = header(&mut head, &b[start..start + len]);
            heads.push(head);
            spans.push((hl, start, len));
            off = start + len;
        }
        if spans.is_empty() {
            return match b.len() {
                0 => Ok(0),
                _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "not a whole frame")),
            };
        }
        let slices: SmallVec<[IoSlice<'_>; 2 * INLINE_BATCH]> = spans
            .iter()
            .zip(&heads)
            .flat_map(|(&(hl, start, len), head)| [IoSlice::new(&head[..hl]), IoSlice::new(&b[start..start + len])])
            .collect();
        let mut n = match under.try_write_vectored(&slices)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => n,
        };
        let mut taken = 0;
        for (i, &(hl, start, len)) in spans.iter().enumerate() {
            if n == 0 {
                break;
            }
            taken = start + len;
            if n >= hl + len {
                n -= hl + len;
                continue;
            }
            // Part of this message went out: the rest waits, ahead of everything after it.
            if n < hl {
                out.tail.extend_from_slice(&heads[i][n..hl]);
                out.tail.extend_from_slice(&b[start..start + len]);
            } else {
                out.tail.extend_from_slice(&b[start + (n - hl)..start + len]);
            }
            break;
        }
        Ok(taken)
    }

    /// Whether bytes taken are still waiting for the socket.
    pub(crate) fn pending(&self) -> bool {
        self.lock().unwritten() || self.0.under.pending()
    }

    /// Writes what [`pending`](Self::pending) holds: `true` once nothing is left.
    pub(crate) fn flush_pending(&self) -> io::Result<bool> {
        self.lock().flush(&self.0.under)
    }

    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.0.under.writable().await
    }

    /// Queues the close message (once: its code and reason the peer's fault, else 1000, "the
    /// session ended"), writes as much as the socket takes now, and once all is written shuts the
    /// write side down: `true` then.
    pub(crate) fn close(&self) -> io::Result<bool> {
        let under = &self.0.under;
        let mut out = self.lock();
        if !out.closed {
            out.closed = true;
            let (code, reason) = out
                .why
                .take()
                .unwrap_or((CloseCode::Normal, "the session ended".to_owned()));
            let frame = close_message(code, &reason);
            out.tail.extend_from_slice(&frame);
        }
        if !out.flush(under)? {
            return Ok(false);
        }
        if !out.shut {
            out.shut = true;
            under.shutdown_write()?;
        }
        Ok(true)
    }

    /// Ends reading: the session's read sees end of stream.
    pub(crate) fn shutdown_read(&self) -> io::Result<()> {
        self.0.under.shutdown_read()
    }

    /// Takes bytes tungstenite wrote (whole messages of its own): after the tail, so they never
    /// split a message, and only once the tail is written — else a page that pings and never
    /// reads would grow it without bound (tungstenite keeps one pong, [`CONTROL_BUFFER`]).
    /// After the close message they are dropped.
    fn poll_control(&self, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let under = &self.0.under;
        let mut out = self.lock();
        loop {
            if out.flush(under)? {
                break;
            }
            // Registered with this task (the reading one): woken once the socket takes more.
            ready!(under.poll_writable(cx))?;
        }
        if !out.closed {
            out.tail.extend_from_slice(b);
            out.flush(under)?;
        }
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush_control(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let under = &self.0.under;
        let mut out = self.lock();
        loop {
            if out.flush(under)? {
                return Poll::Ready(Ok(()));
            }
            ready!(under.poll_writable(cx))?;
        }
    }
}

/// The longest header of a server's message (unmasked, a 64-bit length).
const MAX_HEADER: usize = 10;

/// Writes the header of an unmasked, final message carrying one frame's payload (RFC 6455
/// §5.2): binary for a binary frame (its first byte is the binary marker) or bytes that are not
/// UTF-8, text for JSON. Returns its length.
fn header(h: &mut [u8; MAX_HEADER], payload: &[u8]) -> usize {
    let text = payload.first() != Some(&latzero_proto::frame::BINARY_MARKER) && std::str::from_utf8(payload).is_ok();
    h[0] = 0x80 | if text { 0x1 } else { 0x2 };
    length(h, payload.len())
}

/// The payload length of a header whose first byte is written; the header's length.
fn length(h: &mut [u8; MAX_HEADER], len: usize) -> usize {
    if len < 126 {
        h[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A close message: its code, and its reason cut to what a control message holds (125 bytes).
fn close_message(code: CloseCode, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut h = [0u8; MAX_HEADER];
    h[0] = 0x88;
    let hl = length(&mut h, 2 + cut);
    let mut m = h[..hl].to_vec();
    m.extend_from_slice(&u16::from(code).to_be_bytes());
    m.extend_from_slice(&reason.as_bytes()[..cut]);
    m
}

/// The bytes under the WebSocket framing for reading.
enum RawRead {
    Tcp(Arc<TcpStream>),
    Tls(TlsRead),
}

/// The connection as tungstenite sees it: reads from the socket (or TLS), writes through
/// [`WsWrite`].
pub(crate) struct Duplex {
    read: RawRead,
    write: WsWrite,
}

impl AsyncRead for Duplex {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().read {
            RawRead::Tcp(t) => loop {
                ready!(t.poll_read_ready(cx))?;
                // A read that drains the socket clears its readiness: the next waits here.
                let read = crate::transport::try_read_draining(t, buf.initialize_unfilled());
                match read {
                    Ok(n) => {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            RawRead::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Duplex {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.write.poll_control(cx, b)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write.poll_flush_control(cx)
    }

    /// The connection's end is the session's ([`WsWrite::close`]), not tungstenite's.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The session's side of a WebSocket connection for reading: each message's payload as a frame
/// (its length prefix, then the payload). The peer's close message, the end of the socket, and
/// a message that breaks a rule (its reason kept for the close message) read as end of stream.
pub(crate) struct WsRead {
    ws: WebSocketStream<Duplex>,
    write: WsWrite,
    /// The message being handed over, and how much of its frame (prefix included) has been.
    frame: Option<Bytes>,
    at: usize,
    ended: bool,
    /// The frame limit, for the reason of a close over it.
    max: usize,
}

impl AsyncRead for WsRead {
    /// Fills `buf` with the messages read now, waiting only when there are none.
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let start = buf.filled().len();
        loop {
            if let Some(p) = &me.frame {
                if me.at < 4 {
                    // At most `max` (the WebSocket limit), which the server's own check keeps in
                    // a u32.
                    let prefix = (p.len() as u32).to_be_bytes();
                    let n = (4 - me.at).min(buf.remaining());
                    buf.put_slice(&prefix[me.at..me.at + n]);
                    me.at += n;
                }
                if me.at >= 4 {
                    let from = me.at - 4;
                    let n = (p.len() - from).min(buf.remaining());
                    buf.put_slice(&p[from..from + n]);
                    me.at += n;
                    if from + n == p.len() {
                        me.frame = None;
                        me.at = 0;
                    }
                }
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
            }
            if me.ended {
                return Poll::Ready(Ok(()));
            }
            match me.ws.poll_next_unpin(cx) {
                Poll::Pending if buf.filled().len() > start => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(Message::Text(t)))) => me.frame = Some(t.into()),
                Poll::Ready(Some(Ok(Message::Binary(b)))) => me.frame = Some(b),
                // Ping, pong: tungstenite answers pings.
                Poll::Ready(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
                Poll::Ready(Some(Ok(Message::Close(_))) | None) => me.ended = true,
                Poll::Ready(Some(Err(e))) => {
                    me.ended = true;
                    if let Some(why) = close_reason(&e, me.max) {
                        me.write.lock().why = Some(why);
                    }
                }
            }
        }
    }
}

/// The close message's code and reason for a page that broke a rule; `None` for a connection
/// that just ended.
fn close_reason(e: &WsError, max: usize) -> Option<(CloseCode, String)> {
    match e {
        WsError::Capacity(e) => Some((
            CloseCode::Size,
            format!("FRAME_TOO_LARGE: {e}; the server's max_frame_len is {max} bytes"),
        )),
        // The socket ended without a close message: nobody to tell.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(e) => Some((CloseCode::Protocol, format!("{e}"))),
        WsError::Utf8(_) => Some((CloseCode::Invalid, "a text message that is not UTF-8".to_owned())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

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

    /// Reads back a message header as tungstenite parses it: (final, opcode, masked, length).
    fn parsed(h: &[u8]) -> (bool, OpCode, bool, u64) {
        let (head, len) = FrameHeader::parse(&mut std::io::Cursor::new(h)).unwrap().unwrap();
        (head.is_final, head.opcode, head.mask.is_some(), len)
    }

    #[test]
    fn frames_go_as_final_unmasked_messages_binary_or_text() {
        let text = OpCode::Data(Data::Text);
        let binary = OpCode::Data(Data::Binary);
        let mut h = [0u8; MAX_HEADER];
        for (payload, op) in [
            (&b"\0head"[..], binary),
            (&b"{\"a\":1}"[..], text),
            (&b"\xff\xfe"[..], binary),
            (&b""[..], text),
        ] {
            let n = header(&mut h, payload);
            assert_eq!(parsed(&h[..n]), (true, op, false, payload.len() as u64));
        }
        // Every length form: 7 bits, 16, 64.
        for len in [125, 126, 65_535, 65_536, 300_000] {
            let payload = vec![b'a'; len];
            let n = header(&mut h, &payload);
            assert_eq!(
                n,
                if len < 126 {
                    2
                } else if len < 65_536 {
                    4
                } else {
                    10
                }
            );
            assert_eq!(parsed(&h[..n]), (true, text, false, len as u64));
        }
    }

    /// A loopback connection: the page's end, and the server's with its writer over it.
    async fn connected() -> (TcpStream, Arc<TcpStream>, WsWrite) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let page = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let server = Arc::new(listener.accept().await.unwrap().0);
        let write = WsWrite(Arc::new(Shared {
            under: Under::Tcp(server.clone()),
            out: Mutex::new(Out::default()),
        }));
        (page, server, write)
    }

    /// A pong tungstenite writes while a message begun is still unwritten waits for it: it is
    /// not taken (so a page that pings and never reads holds the server to tungstenite's one
    /// pong), and once the socket takes the rest it follows the message whole.
    #[tokio::test]
    async fn a_pong_waits_for_the_message_begun_and_follows_it() {
        let (mut page, _, w) = connected().await;
        // More than the loopback socket's buffers take while the page does not read.
        let len = 32 << 20;
        let mut frame = (len as u32).to_be_bytes().to_vec();
        frame.resize(4 + len, b'a');
        assert_eq!(w.try_write(&frame).unwrap(), frame.len(), "the message is taken whole");
        assert!(
            w.pending(),
            "the socket took the whole message: the test needs a larger one"
        );
        let tail = w.lock().tail.len();
        let pong = [0x8a, 0x00];
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(
            w.poll_control(&mut cx, &pong).is_pending(),
            "the pong is taken before the message's rest"
        );
        assert_eq!(w.lock().tail.len(), tail, "the pong was queued behind the rest");

        let read = tokio::spawn(async move {
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut page, &mut all).await.unwrap();
            all
        });
        assert_eq!(std::future::poll_fn(|cx| w.poll_control(cx, &pong)).await.unwrap(), 2);
        while !w.close().unwrap() {
            w.writable().await.unwrap();
        }
        let all = read.await.unwrap();
        let head = 10;
        assert_eq!(
            parsed(&all[..head]),
            (true, OpCode::Data(Data::Text), false, len as u64)
        );
        assert!(all[head..head + len].iter().all(|&b| b == b'a'));
        assert_eq!(
            &all[head + len..head + len + 2],
            &pong,
            "the pong follows the message whole"
        );
        let (_, op, _, _) = parsed(&all[head + len + 2..]);
        assert_eq!(op, OpCode::Control(Control::Close), "then the close message");
    }

    /// A read that fills the buffer leaves the socket's readiness as it is (the rest is read
    /// without waiting for an event that would not come); one that drains it clears it, and
    /// bytes that come after still wake the reader.
    #[tokio::test]
    async fn reads_wait_only_once_the_socket_is_drained() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut page, server, write) = connected().await;
        let mut d = Duplex {
            read: RawRead::Tcp(server),
            write,
        };
        let within = std::time::Duration::from_secs(10);
        for round in 0..3u8 {
            let sent = vec![round; 10_000];
            page.write_all(&sent).await.unwrap();
            let mut got = Vec::new();
            while got.len() < sent.len() {
                let mut buf = [0u8; 4096];
                let n = tokio::time::timeout(within, d.read(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: bytes sent were never read"))
                    .unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got == sent, "round {round}: the bytes changed");
        }
    }

    /// Parses the messages in `all`: (opcode, payload) each, until a close message or the end.
    fn messages(mut all: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
        let mut out = Vec::new();
        while !all.is_empty() {
            let mut at = std::io::Cursor::new(all);
            let (head, len) = FrameHeader::parse(&mut at).unwrap().unwrap();
            let start = at.position() as usize;
            if head.opcode == OpCode::Control(Control::Close) {
                break;
            }
            out.push((head.opcode, all[start..start + len as usize].to_vec()));
            all = &all[start + len as usize..];
        }
        out
    }

    /// One write takes up to [`WRITE_BATCH`] frames (past the ones kept inline), and frames
    /// written in batches reach the page whole and in order, a frame the socket took in part
    /// included.
    #[tokio::test]
    async fn frames_go_in_batches_whole_and_in_order() {
        let (mut page, _, w) = connected().await;
        // Small frames: a batch's worth fits the socket at once.
        let small: Vec<Vec<u8>> = (0..WRITE_BATCH + 88).map(|i| format!("{i}").into_bytes()).collect();
        // Then frames of 2-byte and 4-byte headers, more than the loopback socket takes while
        // the page does not read, so one is cut.
        let large: Vec<Vec<u8>> = (0..3_000)
            .map(|i| vec![b'a' + (i % 26) as u8; 100 + i * 37 % 5_000])
            .collect();
        let prefixed = |frames: &[Vec<u8>]| {
            let mut b = Vec::new();
            for f in frames {
                b.extend_from_slice(&(f.len() as u32).to_be_bytes());
                b.extend_from_slice(f);
            }
            b
        };
        let b = prefixed(&small);
        let first = w.try_write(&b).unwrap();
        assert_eq!(first, prefixed(&small[..WRITE_BATCH]).len(), "one write takes a batch");
        assert_eq!(w.try_write(&b[first..]).unwrap(), b.len() - first);

        let read = tokio::spawn(async move {
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut page, &mut all).await.unwrap();
            all
        });
        let b = prefixed(&large);
        let (mut at, mut full) = (0, 0);
        while at < b.len() {
            match w.try_write(&b[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    full += 1;
                    w.writable().await.unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(full > 0, "the socket never filled: the test needs more frames");
        while !w.close().unwrap() {
            w.writable().await.unwrap();
        }
        let got = messages(&read.await.unwrap());
        let sent: Vec<&Vec<u8>> = small.iter().chain(&large).collect();
        assert_eq!(got.len(), sent.len());
        for (i, ((op, payload), want)) in got.iter().zip(sent).enumerate() {
            assert_eq!(*op, OpCode::Data(Data::Text), "message {i}");
            assert!(payload == want, "message {i} arrived changed");
        }
    }

    #[test]
    fn a_close_message_carries_its_code_and_a_reason_cut_on_a_character() {
        let m = close_message(CloseCode::Size, &"é".repeat(100));
        let (fin, op, masked, len) = parsed(&m);
        assert_eq!((fin, op, masked), (true, OpCode::Control(Control::Close), false));
        // 2 bytes of code and 122 of reason: 61 whole characters, not 123 bytes.
        assert_eq!((len, m.len()), (124, 126));
        assert_eq!(u16::from_be_bytes([m[2], m[3]]), 1009);
        assert_eq!(std::str::from_utf8(&m[4..]).unwrap(), "é".repeat(61));
    }
}
