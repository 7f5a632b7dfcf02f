//! One connection: a reader (this task) that decodes frames and handles each message, and its
//! outbound side ([`conn::Conn`]): frames are written to the socket by whichever task sends
//! them, and what the socket does not take waits in a bounded buffer for the connection's
//! flusher task ([`conn::flusher`]).
//!
//! Handling is synchronous — a lookup, a table insert, a non-blocking queue push — so the reader
//! never awaits anything but the socket. Bad input gets an error frame naming the problem and the
//! connection stays usable; only an oversized frame closes it (the stream cannot be
//! resynchronised).

pub(crate) mod conn;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use latzero_proto::frame::{Frame, FrameCodec, FrameError, encode_message};
use latzero_proto::message::{
    Ack, AckLimits, Closing, Emit, Emitted, ErrorFrame, Handshake, HandshakeAck, Pong, PoolOp, PoolRequest, RawValue,
    Refused, Request, Response, Restored, ServerInfo, Status, Trigger, parse_request, parse_sdk_call,
    refused_response_hop,
};
use latzero_proto::{AppId, ErrorCode, PROTOCOL_VERSION, PoolName, TriggerName};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::Decoder;
use tracing::Instrument;

use self::conn::{Conn, Cork, Sock};
use crate::admin::Tally;
use crate::directory::Directory;
use crate::memory::Refusal;
use crate::security::Grant;
use crate::server::State;

/// A request that is routed to other connections: a call, a handler's response, an emit.
#[derive(Clone, Copy)]
enum Routed<'r, 'a> {
    Call(&'r Trigger<'a>),
    Response(&'r Response<'a>),
    Emit(&'r Emit<'a>),
}

/// Why the read loop ended.
enum End {
    /// The peer closed or the socket failed.
    Eof,
    /// The connection was killed (slow consumer, takeover, writer failure).
    Killed,
    /// The server is shutting down.
    Shutdown,
    /// We decided to close after a final frame (oversized frame).
    Close,
}

/// Runs one connection to completion.
pub(crate) async fn run<R>(state: Arc<State>, reader: R, sock: Sock, peer: String)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let id = state.next_conn_id();
    let limits = &state.config.limits;
    let conn = Conn::new(
        id,
        peer.clone(),
        sock,
        limits.outbound_queue_frames,
        limits.outbound_queue_bytes,
        state.counters.clone(),
    );
    state.counters.inc(&state.counters.connections_total);
    let span = tracing::info_span!("session", conn = id, peer = %peer);
    let flusher = tokio::spawn(conn::flusher(conn.clone()).instrument(span.clone()));
    let admitted = {
        let mut conns = state.conns.lock().unwrap_or_else(|e| e.into_inner());
        let room = conns.len() < limits.max_connections;
        if room {
            conns.insert(id, conn.clone());
        }
        room
    };
    if !admitted {
        state.counters.inc(&state.counters.connections_refused);
        tracing::warn!(parent: &span, limit = limits.max_connections, "connection refused: at the connection limit");
        let message = format!(
            "too many connections: the limit is {}; retry later",
            limits.max_connections
        );
        let _ = conn.reply(&encode_message(&Closing {
            action: "closing",
            code: ErrorCode::Overloaded,
            message: &message,
        }));
        conn.close_gracefully();
        if tokio::time::timeout(state.config.shutdown_grace, flusher)
            .await
            .is_err()
        {
            conn.kill();
        }
        return;
    }

    let mut session = Session {
        state: state.clone(),
        conn: conn.clone(),
        app: None,
        ephemeral: false,
        grant: (!state.auth.required).then(Grant::all),
        challenges: std::collections::HashMap::new(),
        closing: false,
        received: None,
        tally: Tally::default(),
    };
    // A bug that panics in the session must not leave the connection open and silent, nor
    // its registrations behind: the peer is told, and the connection ends as a closed one does.
    let read = std::panic::AssertUnwindSafe(session.read_loop(reader)).catch_unwind();
    let end = match read.instrument(span.clone()).await {
        Ok(end) => end,
        Err(_) => {
            tracing::error!(parent: &span, "the session panicked (a server bug); closing its connection");
            let _ = conn.reply(&encode_message(&Closing {
                action: "closing",
                code: ErrorCode::Internal,
                message: "the server failed on this connection (a bug; its log says where); reconnect",
            }));
            End::Close
        }
    };
    let _guard = span.enter();
    match end {
        End::Shutdown => {
            let _ = conn.reply(&encode_message(&Closing {
                action: "closing",
                code: ErrorCode::ShuttingDown,
                message: "server is shutting down",
            }));
            conn.close_gracefully();
        }
        // The peer may have closed only its write side: flush what is queued (bounded by the
        // grace period below) rather than drop replies already accepted.
        End::Close | End::Eof => conn.close_gracefully(),
        End::Killed => conn.kill(),
    }
    session.cleanup();
    drop(_guard);
    if tokio::time::timeout(state.config.shutdown_grace, flusher)
        .await
        .is_err()
    {
        conn.kill();
    }
    tracing::debug!(conn = id, "connection closed");
}

struct Session {
    state: Arc<State>,
    conn: Arc<Conn>,
    app: Option<AppId>,
    /// The handshake asked not to be stored.
    ephemeral: bool,
    /// What this connection's credential allows (everything when authentication is off);
    /// `None` until a credential was checked.
    grant: Option<Grant>,
    /// Encrypted pools: the join challenge outstanding per pool (key generation, nonce); each
    /// is used once.
    challenges: std::collections::HashMap<PoolName, (u32, [u8; 32])>,
    /// Set after AUTH_FAILED: the reader closes the connection after this batch's writes.
    closing: bool,
    /// When the bytes being handled were read from the socket: the time a call's ttl counts
    /// from. The clock is read for the first call of each read and shared by the rest (~25 ns a
    /// read on this VM, a few percent of a pipelined call); `None` until then.
    received: Option<tokio::time::Instant>,
    /// The calls and frames this batch, for the shared counters at its end.
    tally: Tally,
}

/// How [`Session::take_frames`] stopped.
enum Taken {
    /// No whole frame is left in the buffer.
    All,
    /// A request left work to await before the next frame (boxed: `After` is large, and rare).
    After(Box<After>),
    /// The connection is to close (after this batch's writes).
    Close,
}

/// The directory's read lock, taken by the first call or emit of a batch and held for those
/// after it (a read lock and unlock per call were two atomic read-modify-writes, ~5 ns each:
/// docs/BENCHMARKS.md, "Atomic operations"). Released before any other request, which may
/// take the directory for writing on this thread, and at the batch's end, before the session
/// awaits anything: nothing routing a call takes the directory again (see `router`), and a
/// writer waits at most one batch.
struct DirRead<'a> {
    lock: &'a std::sync::RwLock<Directory>,
    guard: Option<std::sync::RwLockReadGuard<'a, Directory>>,
}

impl<'a> DirRead<'a> {
    fn new(lock: &'a std::sync::RwLock<Directory>) -> Self {
        DirRead { lock, guard: None }
    }

    fn get(&mut self) -> &Directory {
        self.guard
            .get_or_insert_with(|| self.lock.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn release(&mut self) {
        self.guard = None;
    }
}

/// Work a request leaves for after the current batch: storing a registration before it is
/// acknowledged (the reader awaits it, so later requests on this connection see its result).
enum After {
    Handshake {
        id: Option<Box<RawValue>>,
        app: AppId,
        info: crate::registry::HandshakeInfo,
        took_over: bool,
        /// What a partial handshake left out.
        refused: Vec<Refused>,
    },
    Membership {
        id: Option<Box<RawValue>>,
        app: AppId,
    },
    Pool {
        id: Option<Box<RawValue>>,
        app: AppId,
        req: PoolRequest,
        /// Whether the request carries admin rights (see `pools::change`).
        admin: bool,
    },
    AppList {
        id: Option<Box<RawValue>>,
        page: latzero_proto::message::Page,
    },
    AppRemove {
        id: Option<Box<RawValue>>,
        app: AppId,
    },
    Backup {
        id: Option<Box<RawValue>>,
    },
    Health {
        id: Option<Box<RawValue>>,
    },
    Block(crate::memory::StoreWork),
}

impl Session {
    async fn read_loop<R: AsyncRead + Unpin>(&mut self, mut reader: R) -> End {
        let mut codec = FrameCodec::new(self.state.config.limits.max_frame_len);
        let handshake_by = tokio::time::Instant::now() + self.state.config.limits.handshake_timeout;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        // Made once per connection, not per read: each costs a few hundred instructions to
        // make, register and drop.
        let killed = self.conn.killed_owned();
        let stopping = self.state.sessions_stop.clone().cancelled_owned();
        // When the credential that admitted this connection expires (a JWT's `exp`): armed once
        // a grant that expires is set, and re-armed if a later one changes it.
        let expiry = tokio::time::sleep(std::time::Duration::ZERO);
        let mut armed: Option<std::time::SystemTime> = None;
        tokio::pin!(killed, stopping, expiry);
        loop {
            // Writes made while handling this batch go out once per destination at its end.
            let mut cork = Cork::begin();
            loop {
                match self.take_frames(&mut codec, &mut buf) {
                    Taken::All => break,
                    Taken::After(after) => {
                        // A cork must not live across an await.
                        self.end_batch(cork);
                        self.finish(*after).await;
                        // Time passed in the await: later frames read the clock again.
                        self.received = None;
                        cork = Cork::begin();
                        if self.closing {
                            self.end_batch(cork);
                            return End::Close;
                        }
                    }
                    Taken::Close => {
                        self.end_batch(cork);
                        return End::Close;
                    }
                }
            }
            self.end_batch(cork);
            let expires = self.grant.as_ref().and_then(|g| g.expires);
            if expires != armed {
                armed = expires;
                if let Some(at) = armed {
                    let left = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
                    expiry.as_mut().reset(tokio::time::Instant::now() + left);
                }
            }
            if self.conn.over_limit() {
                // Backpressure: a peer that sends but does not read is not read either.
                tokio::select! {
                    biased;
                    _ = &mut stopping => return End::Shutdown,
                    _ = &mut expiry, if armed.is_some() => return self.credential_expired(),
                    _ = self.conn.drained() => {}
                }
                if self.conn.is_killed() {
                    return End::Killed;
                }
                if self.conn.is_slow() {
                    return End::Close;
                }
                continue;
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(64 * 1024);
            }
            // Only a connection that has not identified itself yet has a deadline.
            let deadline = async {
                if self.app.is_none() {
                    tokio::time::sleep_until(handshake_by).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                biased;
                _ = &mut killed => return End::Killed,
                _ = &mut stopping => return End::Shutdown,
                _ = &mut expiry, if armed.is_some() => return self.credential_expired(),
                _ = deadline => {
                    self.state.counters.inc(&self.state.counters.handshake_timeouts);
                    let ms = self.state.config.limits.handshake_timeout.as_millis();
                    let message = format!("no handshake within {ms} ms; closing");
                    let _ = self.conn.reply(&encode_message(&Closing {
                        action: "closing",
                        code: ErrorCode::HandshakeRequired,
                        message: &message,
                    }));
                    return End::Close;
                }
                r = reader.read_buf(&mut buf) => match r {
                    Ok(0) => return End::Eof,
                    Ok(_) => {
                        self.received = None;
                        latzero_uds::spin::touch(self.state.spinner.as_ref());
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "read failed");
                        return End::Eof;
                    }
                },
            }
        }
    }

    /// Handles the whole frames in `buf`, until none is left ([`Taken::All`]), one leaves work
    /// to await, or the connection is to close. Not async: the directory's read lock, taken by
    /// the first call or emit and held for those after it ([`DirRead`]), cannot live across an
    /// await.
    fn take_frames(&mut self, codec: &mut FrameCodec, buf: &mut BytesMut) -> Taken {
        let state = self.state.clone();
        let mut dir = DirRead::new(&state.directory);
        loop {
            // A call, response or emit in the SDK's layout is routed where it lies in the
            // buffer, with no frame split off for it; anything else is taken as a frame.
            if let Some(json) = codec.peek_json(buf) {
                let len = 4 + json.len();
                if self.route_in_place(json, &mut dir) {
                    buf.advance(len);
                    continue;
                }
            }
            // Anything else may take the directory for writing.
            dir.release();
            match codec.decode(buf) {
                Ok(Some(frame)) => {
                    if let Some(after) = self.handle(frame) {
                        return Taken::After(Box::new(after));
                    }
                    if self.closing {
                        return Taken::Close;
                    }
                }
                Ok(None) => return Taken::All,
                Err(FrameError::TooLarge { len, max }) => {
                    let msg = format!(
                        "frame of {len} bytes exceeds the maximum of {max} bytes; closing the connection (the stream cannot be resynchronised)"
                    );
                    self.error(None, ErrorCode::FrameTooLarge, &msg);
                    return Taken::Close;
                }
                Err(e) => self.error(None, ErrorCode::InvalidMessage, &e.to_string()),
            }
        }
    }

    /// Ends a batch of frames: the tally goes to the shared counters, then the batch's writes
    /// go out (so whoever reads the counters after an answer arrived sees it counted).
    fn end_batch(&mut self, cork: Cork) {
        self.tally.flush(&self.state.counters);
        cork.flush();
    }

    /// `request` as a call, a response or an emit to [`route`](Self::route) at once, if it takes
    /// the calls' own path: in a JSON frame from an app past its handshake, such a request
    /// passes every check of the general path (none is an admin request, a handshake or a
    /// join). One refused there (binary, before a handshake, or a call or emit while shutting
    /// down) takes the general path, which refuses it.
    fn routes_at_once<'r, 'a>(&self, binary: bool, request: &'r Request<'a>) -> Option<Routed<'r, 'a>> {
        if binary || self.app.is_none() {
            return None;
        }
        let open = || !self.state.shutting_down.load(Ordering::Relaxed);
        match request {
            Request::Trigger(t) if open() => Some(Routed::Call(t)),
            Request::Emit(e) if open() => Some(Routed::Emit(e)),
            Request::Response(r) => Some(Routed::Response(r)),
            _ => None,
        }
    }

    /// Routes `json`, a whole JSON frame, if it is a call, a response or an emit in the SDK's
    /// layout that may be routed now; `false` (and nothing done) otherwise. On the parsed
    /// request where it lies: each move of it copies ~300 bytes (the largest request's size).
    fn route_in_place(&mut self, json: &[u8], dir: &mut DirRead<'_>) -> bool {
        // Borrowed from the `Option`, not moved out of it (a copy of the request).
        let parsed = parse_sdk_call(json);
        let Some(p) = &parsed else {
            return false;
        };
        let Some(r) = self.routes_at_once(false, &p.request) else {
            return false;
        };
        self.tally.frames_in += 1;
        self.route(p.id, r, dir);
        true
    }

    fn handle(&mut self, frame: Frame) -> Option<After> {
        self.tally.frames_in += 1;
        let st = &self.state;
        let binary = matches!(frame, Frame::Binary { .. });
        let json = frame.json();
        // A call, response or emit in any other layout than the SDK's (which `read_loop` routes
        // before a frame is taken) is routed on the parsed request where it lies too; the
        // checks below take the app id as an owned clone.
        let parsed = parse_request(json);
        if let Ok(p) = &parsed
            && let Some(r) = self.routes_at_once(binary, &p.request)
        {
            self.route_alone(p.id, r);
            return None;
        }
        let mut parsed = match parsed {
            Ok(p) => p,
            Err(e) => {
                match refused_response_hop(json).filter(|_| e.code == ErrorCode::InvalidMessage) {
                    Some(hop) if self.fail_refused_call(hop, &e.message) => {
                        let message = format!(
                            "{}; the call it answers (in_reply_to {}) fails with this error, if it still waits",
                            e.message,
                            hop.get()
                        );
                        self.error(e.id, e.code, &message);
                    }
                    _ => self.error(e.id, e.code, &e.message),
                }
                return None;
            }
        };
        let id = parsed.id;
        if binary && !matches!(parsed.request, Request::Block(_)) {
            self.error(
                id,
                ErrorCode::InvalidMessage,
                "binary frames carry memory-block data only; send this action as a JSON frame",
            );
            return None;
        }
        if st.shutting_down.load(Ordering::Relaxed)
            && !matches!(
                parsed.request,
                Request::Status { .. } | Request::Ping | Request::Response(_)
            )
        {
            self.error(id, ErrorCode::ShuttingDown, "server is shutting down");
            return None;
        }
        // Authentication: a handshake proves who it is; an admin request before one needs an
        // admin credential of its own.
        let admin = matches!(
            parsed.request,
            Request::Status { .. }
                | Request::Health
                | Request::Shutdown
                | Request::AppList(_)
                | Request::AppRemove(_)
                | Request::Backup
                | Request::Pool(PoolRequest::List(_) | PoolRequest::Show { .. })
        );
        if let Request::Handshake(h) = &parsed.request {
            match st.auth.check(parsed.auth.as_ref(), Some(h.app_id.as_str())) {
                Ok(g) => {
                    if !h.partial
                        && let Some(p) = h.pools.iter().find(|p| !g.may_join(p.as_str()))
                    {
                        let msg = format!("the credential does not allow pool '{p}'");
                        self.error(id, ErrorCode::PermissionDenied, &msg);
                        return None;
                    }
                    self.grant = Some(g);
                }
                Err(why) => {
                    self.auth_failed(id, &why);
                    return None;
                }
            }
        } else if admin && !self.grant.as_ref().is_some_and(|g| g.admin) {
            match (st.auth.check(parsed.auth.as_ref(), None), &self.app) {
                // Before a handshake the admin credential is the connection's.
                (Ok(g), None) => self.grant = Some(g),
                // After one, it allows this request; the app keeps its own credential's rights.
                (Ok(_), Some(_)) => {}
                (Err(why), None) => {
                    self.auth_failed(id, &why);
                    return None;
                }
                // An app that proved who it is keeps its connection (and its calls in flight);
                // only this request is refused.
                (Err(why), Some(_)) => {
                    self.error(id, ErrorCode::AuthFailed, &why);
                    return None;
                }
            }
        }
        // A partial handshake leaves out what the checks below would refuse it for.
        let mut refused = Vec::new();
        if let Request::Handshake(h) = &mut parsed.request
            && h.partial
        {
            refused = self.leave_out_refused(h);
        }
        if let Request::Join(ps) = &parsed.request
            && let Some(p) = ps
                .iter()
                .find(|p| !self.grant.as_ref().is_some_and(|g| g.may_join(p.as_str())))
        {
            let msg = format!("the credential does not allow pool '{p}'");
            self.error(id, ErrorCode::PermissionDenied, &msg);
            return None;
        }
        // Pool policies: joining a stored pool needs its `join` list (or ownership).
        let joining = match &parsed.request {
            Request::Handshake(h) => Some((h.app_id.as_str(), &h.pools[..])),
            Request::Join(ps) => self.app.as_ref().map(|a| (a.as_str(), &ps[..])),
            _ => None,
        };
        if let Request::Handshake(h) = &parsed.request {
            // The limits on what one app holds, before it is admitted (Join and Register are
            // checked where they are applied, under the directory's lock).
            let dir = st.directory.read().unwrap_or_else(|e| e.into_inner());
            let app = &h.app_id;
            let over = dir
                .check_join(app, &h.pools)
                .and_then(|()| dir.check_register(app, &h.triggers))
                .err();
            drop(dir);
            if let Some(r) = over {
                self.error(id, r.code, &r.message);
                return None;
            }
        }
        if let Some((app, pools)) = joining {
            let dir = st.directory.read().unwrap_or_else(|e| e.into_inner());
            let no = pools.iter().find_map(|p| join_refusal(&dir, app, p));
            drop(dir);
            if let Some(r) = no {
                self.error(id, r.code, &r.message);
                return None;
            }
        }
        let app = match (&parsed.request, &self.app) {
            (Request::Handshake(_), Some(app)) => {
                let msg = format!("this connection already completed its handshake as '{app}'");
                self.error(id, ErrorCode::InvalidMessage, &msg);
                return None;
            }
            (Request::Handshake(_), None) => None,
            (
                Request::Status { .. }
                | Request::Ping
                | Request::Health
                | Request::Shutdown
                | Request::AppList(_)
                | Request::AppRemove(_)
                | Request::Backup
                | Request::Pool(PoolRequest::List(_) | PoolRequest::Show { .. }),
                _,
            ) => None,
            (_, None) => {
                self.error(
                    id,
                    ErrorCode::HandshakeRequired,
                    r#"send a handshake first: {"action":"handshake","app_id":"...","pools":[...],"triggers":[...]}"#,
                );
                return None;
            }
            (_, Some(app)) => Some(app.clone()),
        };
        match parsed.request {
            Request::Handshake(h) => return self.handshake(id, h, refused),
            Request::Status { limit } => {
                self.reply_listing(id, encode_message(&st.status(id, limit)));
            }
            Request::Ping => {
                let _ = self.conn.reply(&encode_message(&Pong {
                    action: "pong",
                    in_reply_to: id,
                }));
            }
            Request::Shutdown => {
                tracing::info!(peer = %self.conn.peer, "shutdown requested over the protocol");
                self.ack(id, None, None);
                st.stop_requested.cancel();
            }
            Request::Block(b) => {
                let app = app.expect("checked above");
                let rights = st
                    .directory
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .pools
                    .get(&b.pool)
                    .filter(|p| p.members.contains_key(&app))
                    .map(|p| {
                        (
                            p.allows(PoolOp::Read, app.as_str()),
                            p.allows(PoolOp::Write, app.as_str()),
                            p.keys().cloned(),
                        )
                    });
                let Some((read, write, keys)) = rights else {
                    let msg = format!("app '{app}' is not in pool '{}'; join it first", b.pool);
                    self.error(id, ErrorCode::NotInPool, &msg);
                    return None;
                };
                let body = match &frame {
                    Frame::Binary { body, .. } => Some(&body[..]),
                    Frame::Json(_) => None,
                };
                let max = st.config.limits.max_frame_len;
                let who = crate::memory::Caller {
                    app: &app,
                    read,
                    write,
                    keys: keys.as_deref(),
                };
                match st.memory.handle(&self.conn, who, id, b, body, max) {
                    Ok(Some(work)) => return Some(After::Block(work)),
                    Ok(None) => {}
                    Err(r) => self.error(id, r.code, &r.message),
                }
            }
            Request::Backup => {
                return Some(After::Backup {
                    id: id.map(ToOwned::to_owned),
                });
            }
            Request::Health => {
                return Some(After::Health {
                    id: id.map(ToOwned::to_owned),
                });
            }
            Request::AppList(page) => {
                return Some(After::AppList {
                    id: id.map(ToOwned::to_owned),
                    page,
                });
            }
            Request::AppRemove(app) => {
                return Some(After::AppRemove {
                    id: id.map(ToOwned::to_owned),
                    app,
                });
            }
            Request::Pool(PoolRequest::List(page)) => self.reply_json(id, crate::pools::list(st, &page)),
            Request::Pool(PoolRequest::Show { pool }) => match crate::pools::show(st, &pool) {
                Ok(v) => self.reply_json(id, v),
                Err(r) => self.error(id, r.code, &r.message),
            },
            Request::Pool(PoolRequest::Challenge { pool }) => match crate::pools::challenge(st, &pool) {
                Ok((generation, nonce, reply)) => {
                    self.challenges.insert(pool, (generation, nonce));
                    self.reply_json(id, reply);
                }
                Err(r) => self.error(id, r.code, &r.message),
            },
            Request::Pool(PoolRequest::Prove { pool, signature }) => {
                let app = app.expect("checked above");
                let Some((generation, nonce)) = self.challenges.remove(&pool) else {
                    let msg = format!(
                        "no join challenge is outstanding for pool '{pool}'; send pool_challenge first (each is used once)"
                    );
                    self.error(id, ErrorCode::PermissionDenied, &msg);
                    return None;
                };
                if !self.grant.as_ref().is_some_and(|g| g.may_join(pool.as_str())) {
                    let msg = format!("the credential does not allow pool '{pool}'");
                    self.error(id, ErrorCode::PermissionDenied, &msg);
                    return None;
                }
                if let Err(r) = crate::pools::verify_join(st, &pool, &app, generation, &nonce, &signature) {
                    tracing::info!(app = %app, pool = %pool, "encrypted pool join refused: {}", r.message);
                    self.error(id, r.code, &r.message);
                    return None;
                }
                let done = st.directory_mut().try_join(&app, std::slice::from_ref(&pool));
                return self.membership_done_if(id, app, done);
            }
            Request::Pool(req) => {
                // Admin rights: the connection's credential, or one given with this request.
                let admin = self.grant.as_ref().is_some_and(|g| g.admin)
                    || (parsed.auth.is_some() && st.auth.check(parsed.auth.as_ref(), None).is_ok());
                return Some(After::Pool {
                    id: id.map(ToOwned::to_owned),
                    app: app.expect("checked above"),
                    req,
                    admin,
                });
            }
            Request::Register(ts) => {
                let app = app.expect("checked above");
                let done = st.directory_mut().try_register(&app, &ts);
                return self.membership_done_if(id, app, done);
            }
            Request::Unregister(ts) => {
                let app = app.expect("checked above");
                st.directory_mut().unregister(&app, &ts);
                return self.membership_done(id, app);
            }
            Request::Join(ps) => {
                let app = app.expect("checked above");
                let done = st.directory_mut().try_join(&app, &ps);
                return self.membership_done_if(id, app, done);
            }
            Request::Leave(ps) => {
                let app = app.expect("checked above");
                st.directory_mut().leave(&app, &ps);
                let me = self.conn.id;
                for p in &ps {
                    st.memory
                        .on_leave(p, |c| c == me, &format!("app '{app}' left pool '{p}'"));
                }
                crate::pools::forget_unused(st, &ps);
                return self.membership_done(id, app);
            }
            Request::PresenceSubscribe(pool) => self.presence(id, &app.expect("checked above"), &pool, true),
            Request::PresenceUnsubscribe(pool) => self.presence(id, &app.expect("checked above"), &pool, false),
            Request::Trigger(t) => self.route_alone(id, Routed::Call(&t)),
            Request::Response(r) => self.route_alone(id, Routed::Response(&r)),
            Request::Emit(e) => self.route_alone(id, Routed::Emit(&e)),
        }
        None
    }

    /// [`route`](Self::route) outside a run of calls: the directory is read for this one.
    fn route_alone(&mut self, id: Option<&RawValue>, request: Routed<'_, '_>) {
        let state = self.state.clone();
        self.route(id, request, &mut DirRead::new(&state.directory));
    }

    /// Routes a call, a response or an emit; calls and emits read the directory under `dir`.
    fn route(&mut self, id: Option<&RawValue>, request: Routed<'_, '_>, dir: &mut DirRead<'_>) {
        let st = &self.state;
        match request {
            Routed::Call(t) => {
                let received = *self.received.get_or_insert_with(tokio::time::Instant::now);
                if let Err(r) = st.router.call(dir.get(), &self.conn, t, received, &mut self.tally) {
                    st.counters.inc(&st.counters.calls_refused);
                    self.error(Some(t.id), r.code, &r.message);
                }
            }
            Routed::Response(r) => {
                if let Err(refusal) = st.router.respond(&self.conn, r, &mut self.tally) {
                    self.error(id, refusal.code, &refusal.message);
                }
            }
            Routed::Emit(e) => match st.router.emit(dir.get(), &self.conn, e) {
                Ok(delivered) => {
                    if let Some(id) = id {
                        let receipt = Emitted {
                            action: "emitted",
                            in_reply_to: id,
                            delivered,
                        };
                        let _ = self.conn.reply(&encode_message(&receipt));
                    }
                }
                Err(r) => self.error(id, r.code, &r.message),
            },
        }
    }

    /// Takes out of a `partial` handshake the pools and triggers a strict one would be refused
    /// for — the credential's pools, the pools' policies, encrypted pools, then the limits (the
    /// longest run of the rest that keeps to them) — and says why for each.
    fn leave_out_refused(&self, h: &mut Handshake) -> Vec<Refused> {
        // An app that sent nothing is rehydrated; one whose every pool and trigger is left out
        // is not (it asked for those).
        h.rehydrate |= h.pools.is_empty() && h.triggers.is_empty();
        let dir = self.state.directory.read().unwrap_or_else(|e| e.into_inner());
        let app = &h.app_id;
        let mut refused = Vec::new();
        let left_out = |pool: Option<&PoolName>, trigger: Option<&TriggerName>, r: &Refusal| Refused {
            pool: pool.map(ToString::to_string),
            trigger: trigger.map(ToString::to_string),
            code: r.code,
            message: r.message.clone(),
        };
        h.pools.retain(|p| {
            let why = if self.grant.as_ref().is_some_and(|g| g.may_join(p.as_str())) {
                join_refusal(&dir, app.as_str(), p)
            } else {
                Some(Refusal::new(
                    ErrorCode::PermissionDenied,
                    format!("the credential does not allow pool '{p}'"),
                ))
            };
            if let Some(r) = &why {
                refused.push(left_out(Some(p), None, r));
            }
            why.is_none()
        });
        if let Some((cut, r)) = keep_longest_allowed(&mut h.pools, |ps| dir.check_join(app, ps)) {
            refused.extend(cut.iter().map(|p| left_out(Some(p), None, &r)));
        }
        if let Some((cut, r)) = keep_longest_allowed(&mut h.triggers, |ts| dir.check_register(app, ts)) {
            refused.extend(cut.iter().map(|t| left_out(None, Some(t), &r)));
        }
        refused
    }

    /// Binds the app id now (so a second handshake for it is refused at once), with no pools or
    /// triggers yet: [`Session::finish`] stores the registration, then joins, registers and
    /// acknowledges in one step under the directory lock, so nothing reaches this connection
    /// before its ack. `refused` is what a partial handshake left out, for its ack.
    fn handshake(&mut self, id: Option<&RawValue>, h: Handshake, refused: Vec<Refused>) -> Option<After> {
        let st = self.state.clone();
        let app = h.app_id.clone();
        let info = crate::registry::HandshakeInfo {
            // A partial handshake has said so already (see `leave_out_refused`).
            restore: h.rehydrate || (!h.partial && h.pools.is_empty() && h.triggers.is_empty()),
            ephemeral: h.ephemeral,
            protocol_version: h.protocol_version.clone(),
            pools: h.pools,
            triggers: h.triggers,
            meta: h.meta.clone(),
            allowed_pools: self.grant.as_ref().and_then(|g| g.pools.clone()),
        };
        let old = {
            let mut dir = st.directory_mut();
            let old = dir.conn_of(app.as_str()).cloned();
            if let Some(existing) = &old {
                if !h.takeover {
                    drop(dir);
                    let msg = format!(
                        "app id '{app}' is already connected (from {}); use another app id, or send \"takeover\": true to replace that connection",
                        existing.peer
                    );
                    self.error(id, ErrorCode::DuplicateApp, &msg);
                    return None;
                }
                dir.remove_app(&app, existing.id);
            }
            self.conn.bind_app(app.clone());
            dir.add_app(&self.conn, app.clone(), h.meta);
            old
        };
        let took_over = old.is_some();
        if let Some(old) = old {
            tracing::info!(app = %app, old_conn = old.id, "app taken over by a new connection");
            st.router.on_disconnect(old.id);
            let _ = old.reply(&encode_message(&Closing {
                action: "closing",
                code: ErrorCode::DuplicateApp,
                message: "this app id was taken over by a new connection",
            }));
            old.close_gracefully();
        }
        tracing::info!(app = %app, "handshake");
        self.app = Some(app.clone());
        self.ephemeral = info.ephemeral;
        Some(After::Handshake {
            id: id.map(ToOwned::to_owned),
            app,
            info,
            took_over,
            refused,
        })
    }

    /// The credential that admitted this connection expired: the peer is told, and the
    /// connection closes.
    fn credential_expired(&self) -> End {
        tracing::info!(peer = %self.conn.peer, app = self.conn.app_str(), "credential expired; closing");
        let _ = self.conn.reply(&encode_message(&Closing {
            action: "closing",
            code: ErrorCode::AuthFailed,
            message: "the credential this connection was admitted with has expired; reconnect with a fresh one",
        }));
        End::Close
    }

    /// [`Session::membership_done`] for a change the directory made, or the refusal it gave
    /// instead (a limit: nothing changed).
    fn membership_done_if(
        &mut self,
        id: Option<&RawValue>,
        app: AppId,
        done: Result<(), crate::memory::Refusal>,
    ) -> Option<After> {
        match done {
            Ok(()) => self.membership_done(id, app),
            Err(r) => {
                self.error(id, r.code, &r.message);
                None
            }
        }
    }

    /// A membership change is in the directory; its ack waits for the store (unless the app is
    /// ephemeral).
    fn membership_done(&mut self, id: Option<&RawValue>, app: AppId) -> Option<After> {
        if self.ephemeral {
            self.ack(id, Some(&app), None);
            return None;
        }
        Some(After::Membership {
            id: id.map(ToOwned::to_owned),
            app,
        })
    }

    async fn finish(&mut self, after: After) {
        let st = self.state.clone();
        match after {
            After::Handshake {
                id,
                app,
                info,
                took_over,
                refused,
            } => {
                let mut out = crate::registry::handshake(&st, &app, info).await;
                if let Some(g) = &self.grant {
                    out.pools.retain(|p| g.may_join(p.as_str()));
                }
                {
                    // Rehydration restores only the pools whose policies still let the app join,
                    // and never an encrypted pool (that takes a fresh proof).
                    let dir = st.directory.read().unwrap_or_else(|e| e.into_inner());
                    out.pools.retain(|p| {
                        dir.pools
                            .get(p)
                            .is_none_or(|pool| !pool.is_encrypted() && pool.allows(PoolOp::Join, app.as_str()))
                    });
                }
                if let Some(e) = &out.store_error {
                    tracing::warn!(app = %app, error = %e, "registration not stored");
                }
                let mut dir = st.directory_mut();
                if dir.conn_of(app.as_str()).is_some_and(|c| c.id == self.conn.id) {
                    // The handshake's own pools and triggers were checked against the limits;
                    // restored ones that would pass them are left out.
                    for t in &out.triggers {
                        if let Err(r) = dir.try_register(&app, std::slice::from_ref(t)) {
                            tracing::warn!(app = %app, trigger = %t, "not restored: {}", r.message);
                        }
                    }
                    for p in &out.pools {
                        if let Err(r) = dir.try_join(&app, std::slice::from_ref(p)) {
                            tracing::warn!(app = %app, pool = %p, "not restored: {}", r.message);
                        }
                    }
                    if out.meta.is_some()
                        && let Some(a) = dir.apps.get_mut(&app)
                    {
                        a.meta = out.meta.clone();
                    }
                }
                let (pools, triggers) = dir.app_state(&app);
                let limits = &st.config.limits;
                let ack = encode_message(&HandshakeAck {
                    action: "handshake_ack",
                    in_reply_to: id.as_deref(),
                    app_id: app.as_str(),
                    pools,
                    triggers,
                    protocol_version: PROTOCOL_VERSION,
                    took_over,
                    rehydrated: out.restored.is_some(),
                    restored: out.restored.as_ref().map(|r| Restored {
                        pools: r.pools.iter().map(String::as_str).collect(),
                        triggers: r.triggers.iter().map(String::as_str).collect(),
                        meta: r.meta.as_deref(),
                        last_seen: r.last_seen,
                    }),
                    store_error: out.store_error.as_deref(),
                    refused: &refused,
                    server: ServerInfo {
                        name: "latzero",
                        version: env!("CARGO_PKG_VERSION"),
                        pid: std::process::id(),
                    },
                    limits: AckLimits {
                        max_frame_len: limits.max_frame_len,
                        max_ttl_ms: limits.max_ttl.as_millis() as u64,
                        default_ttl_ms: limits.default_ttl.as_millis() as u64,
                    },
                });
                // Queued under the directory lock: no delivery to this app can come first.
                let _ = self.conn.reply(&ack);
                drop(dir);
            }
            After::Pool { id, app, req, admin } => match crate::pools::change(&st, &app, req, admin).await {
                Ok(v) => self.reply_json(id.as_deref(), v),
                Err(r) => self.error(id.as_deref(), r.code, &r.message),
            },
            After::AppList { id, page } => match crate::pools::app_list(&st, page).await {
                Ok(v) => self.reply_json(id.as_deref(), v),
                Err(r) => self.error(id.as_deref(), r.code, &r.message),
            },
            After::AppRemove { id, app } => match crate::pools::app_remove(&st, &app).await {
                Ok(v) => self.reply_json(id.as_deref(), v),
                Err(r) => self.error(id.as_deref(), r.code, &r.message),
            },
            After::Backup { id } => self.backup(id.as_deref()).await,
            After::Health { id } => {
                let v = crate::health::check(&st).await;
                self.reply_json(id.as_deref(), v);
            }
            After::Block(work) => self.store_block(work).await,
            After::Membership { id, app } => {
                let err = crate::registry::store_membership(&st, &app).await;
                if let Some(e) = &err {
                    tracing::warn!(app = %app, error = %e, "membership change not stored");
                }
                self.ack(id.as_deref(), Some(&app), err.as_deref());
            }
        }
    }

    fn presence(&self, id: Option<&RawValue>, app: &AppId, pool: &PoolName, subscribe: bool) {
        let member = {
            let mut dir = self.state.directory_mut();
            match dir.pools.get_mut(pool).filter(|p| p.members.contains_key(app)) {
                Some(p) => {
                    if subscribe {
                        p.presence.insert(self.conn.id, self.conn.clone());
                    } else {
                        p.presence.remove(&self.conn.id);
                    }
                    true
                }
                None => false,
            }
        };
        if member {
            self.ack(id, Some(app), None);
        } else {
            let msg = format!("app '{app}' is not in pool '{pool}'; join it first");
            self.error(id, ErrorCode::NotInPool, &msg);
        }
    }

    fn ack(&self, id: Option<&RawValue>, app: Option<&AppId>, store_error: Option<&str>) {
        let dir = self.state.directory.read().unwrap_or_else(|e| e.into_inner());
        let (pools, triggers) = app.map(|a| dir.app_state(a)).unwrap_or_default();
        let frame = encode_message(&Ack {
            action: "ack",
            in_reply_to: id,
            pools,
            triggers,
            store_error,
        });
        drop(dir);
        let _ = self.conn.reply(&frame);
    }

    /// Creates a block on the blocking pool and, for a persistent one, stores its metadata; or
    /// removes a deleted persistent block's record. Then acknowledges. A create the store
    /// refuses is undone: a persistent block exists with its record or not at all.
    async fn store_block(&self, work: crate::memory::StoreWork) {
        use crate::memory::StoreWork;
        let st = self.state.clone();
        match work {
            StoreWork::Create {
                pool,
                block_id,
                owner,
                kind,
                size,
                persistent,
                permissions,
                overwrite,
                id,
            } => {
                let mem = st.clone();
                let made = tokio::task::spawn_blocking(move || {
                    mem.memory
                        .create(&pool, &block_id, &owner, kind, size, persistent, permissions, overwrite)
                })
                .await;
                let entry = match made {
                    Ok(Ok(e)) => e,
                    Ok(Err(r)) => return self.error(id.as_deref(), r.code, &r.message),
                    Err(e) => {
                        let msg = format!("creating the block failed: {e}");
                        return self.error(id.as_deref(), ErrorCode::Internal, &msg);
                    }
                };
                let m = &entry.meta;
                tracing::info!(pool = %m.pool, block = %m.block_id, size, kind = kind.as_str(), persistent, owner = %m.owner, "block created");
                if !persistent {
                    return self.reply_json(
                        id.as_deref(),
                        serde_json::json!({ "action": "block_created", "block": entry.describe() }),
                    );
                }
                let rec = entry.meta.record(entry.block.version());
                match st.store.create_block(rec).await {
                    Ok(()) => self.reply_json(
                        id.as_deref(),
                        serde_json::json!({ "action": "block_created", "block": entry.describe() }),
                    ),
                    Err(e) => {
                        st.memory.delete(&entry);
                        let msg =
                            format!("the persistent block's metadata could not be stored ({e}); it was not created");
                        self.error(id.as_deref(), ErrorCode::Internal, &msg);
                    }
                }
            }
            StoreWork::Deleted { entry, id } => {
                let (pool, block) = (entry.meta.pool.as_str(), entry.meta.block_id.as_str());
                if let Err(e) = st.store.remove_block(pool, block).await {
                    // The file is gone; the next start drops a record without its file.
                    tracing::warn!(pool, block, error = %e, "a deleted block's record could not be removed");
                }
                self.reply_json(
                    id.as_deref(),
                    serde_json::json!({ "action": "block_deleted", "pool": pool, "block_id": block }),
                );
            }
        }
    }

    /// Backs the database up now, sending `backup_progress` as whole percents complete, then
    /// `backup_done` (or an error).
    async fn backup(&self, id: Option<&RawValue>) {
        let st = self.state.clone();
        let dir = st.config.data_dir.join("backups");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let job = crate::backup::take(&st.store, &dir, st.config.store.max_backups, Some(tx));
        tokio::pin!(job);
        let mut last_pct = u64::MAX;
        let mut progress = |copied: u64, total: u64| {
            let pct = (copied * 100).checked_div(total).unwrap_or(100);
            if pct != last_pct {
                last_pct = pct;
                self.reply_json(
                    id,
                    serde_json::json!({
                        "action": "backup_progress", "copied_pages": copied, "total_pages": total, "percent": pct,
                    }),
                );
            }
        };
        let result = loop {
            tokio::select! {
                r = &mut job => break r,
                Some((copied, total)) = rx.recv() => progress(copied, total),
            }
        };
        while let Ok((copied, total)) = rx.try_recv() {
            progress(copied, total);
        }
        match result {
            Ok(path) => {
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                tracing::info!(file = %path.display(), bytes, "backup created on request");
                self.reply_json(
                    id,
                    serde_json::json!({ "action": "backup_done", "path": path, "bytes": bytes }),
                );
            }
            Err(e) => self.error(id, ErrorCode::Internal, &format!("backup failed: {e}")),
        }
    }

    /// AUTH_FAILED, then `closing`; the reader closes the connection after this batch.
    fn auth_failed(&mut self, id: Option<&RawValue>, why: &str) {
        tracing::warn!(peer = %self.conn.peer, reason = why, "authentication failed");
        self.error(id, ErrorCode::AuthFailed, why);
        let _ = self.conn.reply(&encode_message(&Closing {
            action: "closing",
            code: ErrorCode::AuthFailed,
            message: why,
        }));
        self.closing = true;
    }

    /// Sends a JSON reply built as a value, with `in_reply_to` set from the request's id.
    fn reply_json(&self, id: Option<&RawValue>, mut v: serde_json::Value) {
        if let Some(id) = id.and_then(|r| serde_json::from_str::<serde_json::Value>(r.get()).ok()) {
            v["in_reply_to"] = id;
        }
        self.reply_listing(id, encode_message(&v));
    }

    /// Sends an answer whose size grows with the server's state (`status`, the listings, the
    /// pool changes' descriptions): one past `max_frame_len` would be refused by the client as
    /// a broken stream, so it is answered with FRAME_TOO_LARGE instead, and the connection stays.
    fn reply_listing(&self, id: Option<&RawValue>, frame: bytes::Bytes) {
        if let Err(msg) = self.conn.reply_within(&frame, self.state.config.limits.max_frame_len) {
            self.error(id, ErrorCode::FrameTooLarge, &msg);
        }
    }

    /// A `response` from this connection that the server refused (`why`) still named its call,
    /// `hop`: the call's caller gets a handler error saying so at once, rather than a `TIMEOUT`
    /// that suggests the handler never answered. `false` if `hop` is no call of this
    /// connection's.
    fn fail_refused_call(&self, hop: &RawValue, why: &str) -> bool {
        let message = format!(
            "handler '{}' answered with a response the server refused: {why}",
            self.conn.app_str()
        );
        let Ok(body) = serde_json::value::to_raw_value(&serde_json::json!({ "message": message })) else {
            return false;
        };
        let answer = Response {
            in_reply_to: hop,
            status: Status::Error,
            body: Some(&body),
        };
        // Rare: counted at once.
        let mut tally = Tally::default();
        let answered = self.state.router.respond(&self.conn, &answer, &mut tally).is_ok();
        tally.flush(&self.state.counters);
        answered
    }

    fn error(&self, id: Option<&RawValue>, code: ErrorCode, message: &str) {
        if matches!(
            code,
            ErrorCode::InvalidMessage | ErrorCode::InvalidName | ErrorCode::UnknownAction | ErrorCode::FrameTooLarge
        ) {
            self.state.counters.inc(&self.state.counters.invalid_messages);
        }
        tracing::debug!(code = %code, message, "error frame");
        let _ = self.conn.reply(&encode_message(&ErrorFrame::new(id, code, message)));
    }

    /// Leaves the directory and fails or drops every call this connection was part of.
    fn cleanup(&mut self) {
        let mut left = vec![];
        if let Some(app) = self.app.take() {
            left = self.state.directory_mut().remove_app(&app, self.conn.id);
            if !self.ephemeral {
                crate::registry::on_disconnect(&self.state, &app);
            }
            tracing::info!(app = %app, "app disconnected");
        }
        self.state.router.on_disconnect(self.conn.id);
        self.state.memory.on_disconnect(self.conn.id);
        crate::pools::forget_unused(&self.state, &left);
        self.state
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.conn.id);
    }
}

/// Why `app` may not join `pool` (a handshake or `join`): an encrypted pool, which takes a proof,
/// or the pool's policy. `None` for a pool that does not exist yet.
fn join_refusal(dir: &Directory, app: &str, pool: &PoolName) -> Option<Refusal> {
    let p = dir.pools.get(pool)?;
    if p.is_encrypted() {
        return Some(Refusal::new(
            ErrorCode::PermissionDenied,
            format!(
                "'{pool}' is an encrypted pool: join it by proving the SigilKey (pool_challenge, then pool_prove), not in a handshake or join"
            ),
        ));
    }
    p.check(PoolOp::Join, app, pool.as_str()).err()
}

/// Keeps the longest leading run of `items` that `check` allows, and returns the rest with the
/// refusal of one item more; `None` if `check` allows them all. `check` must allow every run
/// shorter than one it allows (the limits do: they count).
fn keep_longest_allowed<T>(
    items: &mut Vec<T>,
    check: impl Fn(&[T]) -> Result<(), Refusal>,
) -> Option<(Vec<T>, Refusal)> {
    let why = check(items).err()?;
    // check(items[..lo]) allows, check(items[..hi]) refuses.
    let (mut lo, mut hi, mut why) = (0, items.len(), why);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match check(&items[..mid]) {
            Ok(()) => lo = mid,
            Err(r) => (hi, why) = (mid, r),
        }
    }
    Some((items.split_off(lo), why))
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tokio::io::ReadBuf;

    use super::*;

    /// The longest allowed leading run is kept, whatever its length, and the rest is cut with
    /// the refusal of the first run too long.
    #[test]
    fn keep_longest_allowed_cuts_at_the_limit() {
        let at_most = |n: usize| {
            move |xs: &[usize]| match xs.len() <= n {
                true => Ok(()),
                false => Err(Refusal::new(ErrorCode::Overloaded, format!("{} > {n}", xs.len()))),
            }
        };
        for len in 0..9 {
            for n in 0..10 {
                let mut xs: Vec<usize> = (0..len).collect();
                let cut = keep_longest_allowed(&mut xs, at_most(n));
                assert_eq!(xs, (0..len.min(n)).collect::<Vec<_>>(), "len {len}, at most {n}");
                match cut {
                    None => assert!(len <= n),
                    Some((cut, why)) => {
                        assert_eq!(cut, (n..len).collect::<Vec<_>>());
                        assert_eq!(why.message, format!("{} > {n}", n + 1));
                    }
                }
            }
        }
    }

    /// A reader that fails the way a bug in the session would: it panics.
    struct Panicking;

    impl AsyncRead for Panicking {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
            panic!("a bug in the session (this test's own)");
        }
    }

    /// A server bound (not run) in `dir`, on a free port: sessions are run on its state by hand.
    async fn bound(dir: &std::path::Path) -> crate::Server {
        let mut cfg = crate::ServerConfig::new(dir);
        cfg.port = 0;
        cfg.memory.volatile_dir = Some(dir.to_path_buf());
        crate::Server::bind(cfg).await.unwrap()
    }

    #[tokio::test]
    async fn a_session_that_panics_tells_its_peer_and_is_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let server = bound(dir.path()).await;
        let state = server.state();
        let (near, far) = latzero_uds::UdsStream::pair().unwrap();
        let (_, w) = far.into_split();
        // `run` returns: the panic does not leave through it.
        run(state.clone(), Panicking, Sock::Unix(w), "test".into()).await;
        let (mut r, _w) = near.into_split();
        let mut buf = BytesMut::new();
        let frame = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(f) = FrameCodec::default().decode(&mut buf).unwrap() {
                    return f;
                }
                assert_ne!(r.read_buf(&mut buf).await.unwrap(), 0, "closed without a word");
            }
        })
        .await
        .expect("a frame within 10 s");
        let Frame::Json(b) = frame else {
            panic!("a binary frame")
        };
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            (v["action"].as_str(), v["code"].as_str()),
            (Some("closing"), Some("INTERNAL")),
            "{v}"
        );
        assert!(state.conns.lock().unwrap().is_empty(), "the connection is still listed");
    }

    /// Every frame `frames` (as a client sends them, length-prefixed) brings back from one
    /// session of a server that has begun to shut down but not yet stopped its sessions: the
    /// window in which frames already read are still handled.
    async fn answers_while_shutting_down(frames: &[serde_json::Value]) -> Vec<serde_json::Value> {
        let dir = tempfile::tempdir().unwrap();
        let server = bound(dir.path()).await;
        let state = server.state();
        state.shutting_down.store(true, Ordering::SeqCst);
        let mut input = Vec::new();
        for f in frames {
            let b = serde_json::to_vec(f).unwrap();
            input.extend_from_slice(&(b.len() as u32).to_be_bytes());
            input.extend_from_slice(&b);
        }
        let (near, far) = latzero_uds::UdsStream::pair().unwrap();
        let (_, w) = far.into_split();
        // The reader ends after the frames: the session handles them, then closes.
        run(state, std::io::Cursor::new(input), Sock::Unix(w), "test".into()).await;
        let (mut r, _w) = near.into_split();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        loop {
            match FrameCodec::default().decode(&mut buf).unwrap() {
                Some(Frame::Json(b)) => out.push(serde_json::from_slice(&b).unwrap()),
                Some(Frame::Binary { .. }) => panic!("a binary frame"),
                None if r.read_buf(&mut buf).await.unwrap() == 0 => return out,
                None => {}
            }
        }
    }

    #[tokio::test]
    async fn a_server_shutting_down_refuses_handshakes_and_health_but_answers_status() {
        let out = answers_while_shutting_down(&[
            serde_json::json!({"action":"handshake","id":1,"app_id":"a","pools":[]}),
            serde_json::json!({"action":"health","id":2}),
            serde_json::json!({"action":"status","id":3}),
            serde_json::json!({"action":"ping","id":4}),
        ])
        .await;
        let said: Vec<_> = out
            .iter()
            .map(|v| {
                let id = v.get("in_reply_to").or_else(|| v.get("id")).cloned();
                (
                    v["action"].as_str().map(str::to_owned),
                    v["code"].as_str().map(str::to_owned),
                    id,
                )
            })
            .collect();
        let shutting = |id: i64| {
            (
                Some("error".to_owned()),
                Some("SHUTTING_DOWN".to_owned()),
                Some(id.into()),
            )
        };
        assert_eq!(said[0], shutting(1), "{out:?}");
        assert_eq!(said[1], shutting(2), "health is refused while shutting down: {out:?}");
        // What a client needs to see the server's state still answers.
        assert_eq!(said[2].0.as_deref(), Some("status_result"), "{out:?}");
        assert_eq!(out[2]["server"]["shutting_down"], true, "{out:?}");
        assert_eq!(said[3].0.as_deref(), Some("pong"), "{out:?}");
        assert_eq!(out.len(), 4, "{out:?}");
    }
}
