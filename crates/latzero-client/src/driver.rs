//! The connection driver: handshake, the read loop that dispatches server frames (replies to
//! waiters, delivered triggers and emits to handlers, events), and reconnecting with exponential
//! backoff and jitter.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytestring::ByteString;
use compact_str::CompactString;
use futures_util::FutureExt;
use latzero_proto::frame::{Frame, JsonFrame};
use latzero_proto::message::{
    DeliverEmit, DeliverTrigger, ForwardResponse, RawValue, ServerFrame, origin_app_id, parse_u64,
};
use latzero_proto::{ErrorCode, PROTOCOL_VERSION, PoolName, TriggerName};
use rand::Rng;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::client::{ClientEvent, Forwarded, Inner, lock, raw_result_of, remote_error, reply_result, result_of};
use crate::connection::{FrameReader, Outbox, open_with_request, writer_task};
use crate::error::ClientError;
use crate::handler::{Handler, HandlerError, Request, Started, invoke_boxed, panicked};
use crate::options::Credential;
use crate::payload::Payload;
use crate::pending::{Reply, Want};

/// A live connection: its frame reader and the queue to its writer.
pub(crate) struct Live {
    pub(crate) reader: FrameReader,
    pub(crate) tx: Outbox,
    pub(crate) dead: CancellationToken,
}

impl Inner {
    /// Handles one frame from the server. Returns why the server is closing us, if it said so.
    fn dispatch(self: &Arc<Self>, frame: Frame, tx: &Outbox, cache: &mut HandlerCache) -> Option<Closing> {
        // Before anything this frame does: a frame answering `unhandle` must find the removed
        // handler gone from the cache as well as from the table.
        cache.check(self);
        let json = frame.json();
        // A bug, as a test puts one in: see `a_panic_reading_a_frame_drops_the_connection`.
        #[cfg(test)]
        assert!(!json.starts_with(tests::PANIC_FRAME), "a panic a test put in");
        // Checked for UTF-8 once: the layout reads below, the general parse and the payloads
        // handed out (views into this text, so `Payload::as_str` is free) share the check.
        let Ok(text) = ByteString::try_from(json.clone()) else {
            self.unparseable(&frame, &"the frame is not UTF-8");
            return None;
        };
        // The frames of the call path, in the exact layout the server writes them, read without
        // the general parse; anything else (or any surprise) takes the general path below.
        if let Some(r) = ForwardResponse::read_text(&text)
            && let Some(id) = parse_u64(r.in_reply_to)
            && self.reply(id, &frame, &text, r.result)
        {
            return None;
        }
        let delivery = DeliverTrigger::read_text(&text).or_else(|| DeliverEmit::read_text(&text));
        if let Some(d) = delivery {
            let data = Data {
                frame: &text,
                text: Some(d.data),
            };
            let origin = || Some(CompactString::from(d.origin));
            if self.deliver(d.process, d.pool, data, origin, d.id, tx, cache).is_ok() {
                return None;
            }
        }
        // Parsed from `text`, which the payloads below are cut from.
        let env = match ServerFrame::parse(text.as_bytes()) {
            Ok(env) => env,
            Err(e) => {
                self.unparseable(&frame, &e);
                return None;
            }
        };
        match env.action() {
            Some(action @ ("trigger" | "emit")) => {
                let process = env.process.as_deref().unwrap_or_default();
                let data = Data {
                    frame: &text,
                    text: env.data.map(RawValue::get),
                };
                let origin = || env.origin.and_then(origin_app_id).map(CompactString::from);
                let hop = if action == "emit" {
                    None
                } else {
                    env.id.map(RawValue::get)
                };
                let pool = env.pool.as_deref().unwrap_or_default();
                if let Err(e) = self.deliver(process, pool, data, origin, hop, tx, cache) {
                    // Checked JSON that still does not read (nested deeper than serde_json
                    // parses a Value): the caller hears why instead of waiting for its timeout.
                    let why = HandlerError::msg(format!("the payload could not be read: {e}"));
                    self.finish(process, hop, Err::<Value, _>(why), tx);
                }
            }
            Some("presence") => self.event(ClientEvent::Presence {
                pool: env.pool.as_deref().unwrap_or_default().to_owned(),
                app_id: env.app_id.as_deref().unwrap_or_default().to_owned(),
                joined: env.event.as_deref() == Some("joined"),
            }),
            Some("pool_left") => {
                let pool = env.pool.as_deref().unwrap_or_default();
                if let Ok(name) = PoolName::try_from(pool) {
                    let mut s = lock(&self.shared);
                    s.pools.remove(&name);
                    s.presence.remove(&name);
                }
                self.event(ClientEvent::PoolLeft {
                    pool: pool.to_owned(),
                    reason: env.message.as_deref().unwrap_or_default().to_owned(),
                });
            }
            Some("closing") => {
                let code = env.code.as_deref().unwrap_or("?");
                return Some(Closing {
                    reason: format!(
                        "server closed the connection: {code}: {}",
                        env.message.as_deref().unwrap_or("")
                    ),
                    taken_over: code == ErrorCode::DuplicateApp.as_str(),
                });
            }
            Some("block_event") => {
                let expired = lock(&self.watches).deliver(json);
                if let Some((key, exclusive, reason)) = expired {
                    self.lease_ended(key, exclusive, reason);
                }
            }
            Some(action) if env.origin.is_some() && matches!(action, "response" | "error") => {
                let origin: Value = env
                    .origin
                    .and_then(|o| serde_json::from_str(o.get()).ok())
                    .unwrap_or(Value::Null);
                self.event(ClientEvent::Forwarded(Forwarded {
                    in_reply_to: env
                        .in_reply_to
                        .and_then(|r| serde_json::from_str(r.get()).ok())
                        .unwrap_or(Value::Null),
                    origin: origin["app_id"].as_str().unwrap_or_default().to_owned(),
                    result: reply_result(json).map_err(Arc::new),
                }));
            }
            Some(action) => {
                let id = env.in_reply_to.and_then(|r| parse_u64(r.get()));
                match id.filter(|&id| self.pending.waiting(id)) {
                    Some(id) => {
                        let reply = match Want::of(id) {
                            Want::Frame => Reply::Frame(json.clone()),
                            Want::Value => Reply::Value(result_of(&env, json)),
                            Want::Raw => Reply::Raw(raw_result_of(&env, &text)),
                            Want::Full => Reply::Full(frame.clone()),
                        };
                        self.pending.answer(id, reply);
                    }
                    None if action == "error" => self.event(ClientEvent::ServerError(remote_error(&env))),
                    None => tracing::debug!(action, "reply for a request no longer waiting"),
                }
            }
            None => tracing::warn!("frame from the server without an action"),
        }
        None
    }

    /// A frame that does not read: whoever waits for it (if its `in_reply_to` can be found)
    /// hears about it now, rather than at its timeout.
    fn unparseable(&self, frame: &Frame, why: &dyn std::fmt::Display) {
        tracing::warn!(error = %why, "unparseable frame from the server");
        #[derive(serde::Deserialize)]
        struct Id {
            in_reply_to: Option<u64>,
        }
        let json = frame.json();
        let Some(id) = serde_json::from_slice::<Id>(json).ok().and_then(|i| i.in_reply_to) else {
            return;
        };
        let error = || ClientError::Protocol(format!("unparseable reply: {why}"));
        let reply = match Want::of(id) {
            Want::Value => Reply::Value(Err(error())),
            Want::Raw => Reply::Raw(Err(error())),
            Want::Frame => Reply::Frame(json.clone()),
            Want::Full => Reply::Full(frame.clone()),
        };
        self.pending.answer(id, reply);
    }

    /// Hands a `response` read in the server's layout to its caller, its body parsed in the
    /// form the caller wants. `false` if the body is not exactly one JSON value: then the frame
    /// is not that layout (a result forwarded to this app, with its `origin` after the body and
    /// another app's id, which may equal one of ours), the call goes on waiting, and the general
    /// path reads the frame.
    fn reply(&self, id: u64, frame: &Frame, frame_text: &ByteString, result: Result<&str, &str>) -> bool {
        let json = frame.json();
        let (text, ok) = match result {
            Ok(text) => (text, true),
            Err(text) => (text, false),
        };
        let one = || serde_json::from_str::<&RawValue>(text).is_ok();
        // Read before the table is asked whether the call still waits: `answer` asks, under
        // the one lock it takes anyway. A reply that comes after its call ended (rare) is read
        // for nothing.
        let reply = match Want::of(id) {
            Want::Value => {
                let parsed = if ok {
                    serde_json::from_str(text).map(Ok)
                } else {
                    handler_error(text)
                };
                match parsed {
                    Ok(r) => Reply::Value(r),
                    Err(_) => return false,
                }
            }
            Want::Raw => {
                let parsed = if ok {
                    Payload::within(frame_text, text).map(Ok)
                } else {
                    handler_error(text)
                };
                match parsed {
                    Ok(r) => Reply::Raw(r),
                    Err(_) => return false,
                }
            }
            Want::Frame if one() => Reply::Frame(json.clone()),
            Want::Full if one() => Reply::Full(frame.clone()),
            Want::Frame | Want::Full => return false,
        };
        if !self.pending.answer(id, reply) {
            tracing::debug!(id, "reply for a request no longer waiting");
        }
        true
    }

    /// Runs a delivered trigger or emit on its handler, with the payload in the form the
    /// handler takes: inline until its first await, then in its own task. `hop` is a trigger's
    /// id as JSON text (`None` for an emit). `Err` — and nothing done — if the payload does not
    /// read in that form.
    #[allow(clippy::too_many_arguments)]
    fn deliver<'a>(
        self: &Arc<Self>,
        process: &str,
        pool: &str,
        data: Data<'a>,
        origin: impl FnOnce() -> Option<CompactString>,
        hop: Option<&str>,
        tx: &Outbox,
        cache: &mut HandlerCache,
    ) -> Result<(), serde_json::Error> {
        let handler = cache.get(self, process);
        // The names copied inline (no allocation up to 24 bytes); a view into the frame, as the
        // payload is, costs two atomic reference-count changes each.
        let names = || (CompactString::from(process), CompactString::from(pool));
        match handler {
            Some(Handler::Value(h)) => {
                let value = serde_json::from_str(data.text.unwrap_or("null"))?;
                let (process_name, pool) = names();
                let req = Request::new(process_name, pool, value, origin(), hop.is_none());
                self.run(|| h.start(req), process, hop, tx);
            }
            Some(Handler::Raw(h)) => {
                let payload = match data.text {
                    Some(text) => Payload::within(data.frame, text)?,
                    None => Payload::from_text("null")?,
                };
                let (process_name, pool) = names();
                let req = Request::new(process_name, pool, payload, origin(), hop.is_none());
                self.run(|| h.start(req), process, hop, tx);
            }
            None => {
                let msg = format!("this app has no handler for '{process}'");
                self.finish(process, hop, Err::<Value, _>(HandlerError::msg(msg)), tx);
            }
        }
        Ok(())
    }

    /// Runs a handler right here until its first await: most handlers finish without one, and
    /// then the call costs no task (and no allocation: see `handler::Recycling`). One that does
    /// wait continues in its own task.
    fn run<T: Answer + Send + 'static>(
        self: &Arc<Self>,
        start: impl FnOnce() -> Started<T>,
        process: &str,
        hop: Option<&str>,
        tx: &Outbox,
    ) {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(start)) {
            Ok(Started::Done(result)) => self.finish(process, hop, result, tx),
            Err(_) => self.finish(process, hop, Err::<T, _>(panicked(process)), tx),
            Ok(Started::Waiting(rest)) => {
                let tx = tx.clone();
                let process = process.to_owned();
                let hop = hop.map(str::to_owned);
                let max = self.server_limits.max_frame_len();
                tokio::spawn(async move {
                    let result = invoke_boxed(rest, &process).await;
                    if let Some(frame) = outcome(&process, hop.as_deref(), &result, max) {
                        // If the connection dropped meanwhile, the server has already failed the
                        // call with HANDLER_GONE; there is nobody to send this to.
                        let _ = tx.send(&frame).await;
                    }
                });
            }
        }
    }

    /// Sends a handler's result, now, as the call's response (nothing for an emit), written
    /// in place at the end of the connection's queue: no frame built apart and copied in.
    fn finish<T: Answer>(&self, process: &str, hop: Option<&str>, result: Result<T, HandlerError>, tx: &Outbox) {
        let max = self.server_limits.max_frame_len();
        match hop {
            Some(hop) => tx.send_now_with(|buf| response_within(buf, hop, &result, max)),
            None => emit_outcome(process, &result),
        }
    }
}

/// A delivered payload: its JSON text, inside the frame it arrived in; `None` for a delivery
/// without `data` (a null payload), whose text is not in the frame to be cut out of it.
struct Data<'a> {
    frame: &'a ByteString,
    text: Option<&'a str>,
}

/// A handler's error, read from a `response` with status "error": a Value in either form.
fn handler_error<T>(text: &str) -> Result<Result<T, ClientError>, serde_json::Error> {
    serde_json::from_str(text).map(|e| Err(ClientError::Handler(e)))
}

/// What becomes of a handler's result: the response frame for a call (`hop` is its id as JSON
/// text); for an emit nothing, and a failure is logged.
fn outcome<T: Answer>(
    process: &str,
    hop: Option<&str>,
    result: &Result<T, HandlerError>,
    max_frame_len: usize,
) -> Option<Vec<u8>> {
    match hop {
        Some(hop) => Some(response_within(Vec::new(), hop, result, max_frame_len)),
        None => {
            emit_outcome(process, result);
            None
        }
    }
}

/// An emit handler's result: nothing to send; a failure is logged.
fn emit_outcome<T>(process: &str, result: &Result<T, HandlerError>) {
    if let Err(HandlerError(e)) = result {
        tracing::warn!(trigger = %process, error = %e, "emit handler failed");
    }
}

/// [`response_frame_after`], or, when the answer would make a frame longer than the server
/// reads (`max_frame_len`: it would close this connection, failing every call in flight here),
/// an error response saying so, so that the caller learns why at once.
fn response_within<T: Answer>(
    buf: Vec<u8>,
    hop: &str,
    result: &Result<T, HandlerError>,
    max_frame_len: usize,
) -> Vec<u8> {
    let start = buf.len();
    let mut buf = response_frame_after(buf, hop, result);
    let len = buf.len() - start - 4;
    if len > max_frame_len {
        buf.truncate(start);
        let why = format!(
            "the handler's answer makes a frame of {len} bytes, more than the server's max_frame_len of {max_frame_len} bytes"
        );
        tracing::warn!(%why, "answer not sent");
        buf = response_frame_after(buf, hop, &Err::<Value, _>(HandlerError::msg(why)));
    }
    buf
}

/// `buf` with a handler's answer appended as a `response` frame; `hop` is the delivered
/// trigger's id as JSON text.
fn response_frame_after<T: Answer>(buf: Vec<u8>, hop: &str, result: &Result<T, HandlerError>) -> Vec<u8> {
    let mut f = JsonFrame::after(buf, 192 + hop.len());
    f.text(r#""action":"response","in_reply_to":"#).text(hop);
    match result {
        Ok(v) => v.write(f.text(r#","status":"ok""#), "response"),
        Err(HandlerError(e)) => e.write(f.text(r#","status":"error""#), "error"),
    }
    f.into_vec()
}

/// What a handler returns, written into its response frame.
trait Answer {
    fn write(&self, f: &mut JsonFrame, key: &str);
}

impl Answer for Value {
    fn write(&self, f: &mut JsonFrame, key: &str) {
        // A Value always serialises (its map keys are strings).
        f.serialize(key, self).expect("serialising a value into memory");
    }
}

impl Answer for Payload {
    fn write(&self, f: &mut JsonFrame, key: &str) {
        f.raw(key, self.as_str());
    }
}

/// The server's `closing` notice.
struct Closing {
    reason: String,
    /// Another connection took over this app id.
    taken_over: bool,
}

/// Connects and handshakes with the client's current pools and triggers. `partial` (for a
/// reconnect) asks the server to leave out a pool or trigger it would refuse rather than refuse
/// the handshake: the client drops each one left out and tells the application
/// ([`ClientEvent::PoolLeft`], [`ClientEvent::TriggerRefused`]).
pub(crate) async fn establish(inner: &Arc<Inner>, takeover: bool, partial: bool) -> Result<Live, ClientError> {
    let mut handshake = {
        let s = lock(&inner.shared);
        json!({
            "action": "handshake",
            "id": 0,
            "app_id": inner.app_id.as_str(),
            "pools": s.pools.iter().map(PoolName::as_str).collect::<Vec<_>>(),
            "triggers": s.triggers.iter().map(TriggerName::as_str).collect::<Vec<_>>(),
            "meta": inner.opts.meta,
            "protocol_version": PROTOCOL_VERSION,
            "takeover": takeover,
            "ephemeral": inner.opts.ephemeral,
            "auth": inner.opts.auth.as_ref().map(Credential::to_json),
        })
    };
    if partial {
        handshake["partial"] = json!(true);
    }
    let (ack, mut reader, w, direct) = open_with_request(
        &inner.endpoint,
        inner.opts.tls.as_ref(),
        &handshake,
        inner.opts.read_limit(latzero_proto::DEFAULT_MAX_FRAME_LEN),
        inner.opts.timeout(),
    )
    .await?;
    // The server's view wins: a rehydrated app gets its stored pools and triggers back, and
    // carries them into its next handshake.
    #[derive(serde::Deserialize)]
    struct Ack {
        #[serde(default)]
        pools: Vec<String>,
        #[serde(default)]
        triggers: Vec<String>,
        #[serde(default)]
        limits: Option<latzero_proto::message::AckLimits>,
        #[serde(default)]
        refused: Vec<latzero_proto::message::Refused>,
    }
    if let Ok(a) = serde_json::from_slice::<Ack>(&ack) {
        if let Some(l) = a.limits {
            inner
                .server_limits
                .set(l.max_frame_len, l.max_ttl_ms, inner.opts.request_timeout);
            reader.set_max_len(inner.opts.read_limit(l.max_frame_len));
        }
        {
            let mut s = lock(&inner.shared);
            s.pools
                .extend(a.pools.iter().filter_map(|p| PoolName::try_from(p.as_str()).ok()));
            s.triggers
                .extend(a.triggers.iter().filter_map(|t| TriggerName::try_from(t.as_str()).ok()));
        }
        for r in a.refused {
            inner.refused(r);
        }
    }
    let (tx, end) = Outbox::new(inner.opts.write_queue, w, direct);
    let dead = CancellationToken::new();
    tokio::spawn(writer_task(end, dead.clone(), inner.pending.len().clone()));
    Ok(Live { reader, tx, dead })
}

/// Why a connection's read loop ended: the reason reported, and whether another connection
/// took this app over (no reconnect then).
struct Ended {
    reason: String,
    taken_over: bool,
    /// The client was closed while the connection was live.
    by_client: bool,
}

/// Reads and dispatches one connection's frames until it ends, the client is closed, or the
/// writer finds the connection dead.
async fn read_frames(inner: &Arc<Inner>, live: &mut Live) -> Ended {
    let mut end = Ended {
        reason: String::from("server closed the connection"),
        taken_over: false,
        by_client: false,
    };
    // Made once per connection, not per frame: each costs a few hundred instructions.
    let closed = inner.closed.cancelled();
    let dead = live.dead.cancelled();
    tokio::pin!(closed, dead);
    let mut cache = HandlerCache::default();
    'frames: loop {
        let frame = tokio::select! {
            // The reader first, so a frame already buffered is dispatched without polling the
            // tokens. Its socket reads spend tokio's cooperative budget, so even a flood of
            // frames comes back Pending in time and lets them be seen.
            biased;
            f = live.reader.next() => f,
            _ = &mut closed => { end.reason = "client closed".into(); end.by_client = true; break; }
            _ = &mut dead => { end.reason = "write to the server failed".into(); break; }
        };
        let mut frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                end.reason = e.to_string();
                break;
            }
        };
        latzero_uds::spin::touch(inner.spinner.as_ref());
        // Then every frame the same read brought, without going back through `select!` for
        // each (the tokens are looked at again once the buffer is empty).
        loop {
            if let Some(c) = inner.dispatch(frame, &live.tx, &mut cache) {
                end.reason = c.reason;
                end.taken_over = c.taken_over;
            }
            frame = match live.reader.buffered() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    end.reason = e.to_string();
                    break 'frames;
                }
            };
        }
        // No handler is kept while the loop waits: one replaced meanwhile (which takes no
        // round trip, so no frame would come to drop it) is not kept alive by the cache.
        cache.idle();
    }
    end
}

/// The handler the read loop last looked up, kept for the rest of the frames one read brought:
/// a run of deliveries to one trigger takes the handler table's lock and the handler's
/// reference count once, not once each (four atomic operations a delivery, ~5 ns each:
/// docs/BENCHMARKS.md, "Atomic operations"). It is dropped as soon as the table changes
/// (`Inner::handler_gen`) and whenever the loop goes back to wait, so a removed or replaced
/// handler is never kept alive by it.
#[derive(Default)]
pub(crate) struct HandlerCache {
    /// The table's generation when the handler was looked up.
    generation: u64,
    /// The trigger it was looked up for; the buffer is kept when the handler is dropped.
    name: String,
    handler: Option<Handler>,
}

impl HandlerCache {
    /// Drops the handler if the table changed since it was looked up.
    fn check(&mut self, inner: &Inner) {
        if self.handler.is_some() && inner.handler_gen.load(Ordering::Acquire) != self.generation {
            self.handler = None;
        }
    }

    /// The handler of `process`: the cached one, or looked up (and cached) — `None` if there is
    /// none. Called after [`check`](Self::check) for the same frame.
    fn get(&mut self, inner: &Inner, process: &str) -> Option<&Handler> {
        if self.handler.is_none() || self.name != process {
            // The generation read under the table's lock, which every change holds while it
            // bumps it: it is the generation of what is found here, and a later change makes
            // the next frame's `check` drop it.
            let handlers = inner.handlers.read().unwrap_or_else(|e| e.into_inner());
            self.generation = inner.handler_gen.load(Ordering::Acquire);
            self.handler = handlers.get(process).cloned();
            drop(handlers);
            self.name.clear();
            self.name.push_str(process);
        }
        self.handler.as_ref()
    }

    fn idle(&mut self) {
        self.handler = None;
    }
}

/// Owns the connection: reads frames, and reconnects when it drops.
pub(crate) async fn connection_task(inner: Arc<Inner>, mut live: Live) {
    loop {
        // A bug that panics while handling a frame must not leave the client looking connected
        // with nobody reading: the connection is dropped as a lost one is (calls in flight fail
        // at once, the app is told, and it reconnects).
        let read = std::panic::AssertUnwindSafe(read_frames(&inner, &mut live)).catch_unwind();
        let Ended { reason, taken_over, by_client } = read.await.unwrap_or_else(|panic| {
            let what = panic_message(panic.as_ref());
            tracing::error!(app = %inner.app_id, panic = what, "the client panicked reading from the server (a bug); dropping the connection");
            Ended {
                reason: format!("the client failed reading from the server (a bug: {what}); connection dropped"),
                taken_over: false,
                by_client: false,
            }
        });
        {
            let mut s = lock(&inner.shared);
            s.tx = None;
            s.dropped = Some(reason.clone());
        }
        if by_client {
            // The client closed a live connection: the frames it queued before (an emit returns
            // once queued) still go out, within the close grace, and the writer ends the
            // connection once they are written.
            live.tx.finish();
            let (dead, grace) = (live.dead.clone(), inner.opts.close_grace);
            tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(grace) => dead.cancel(),
                    // The writer is done (it cancels `dead` as it ends).
                    () = dead.cancelled() => {}
                }
            });
        } else {
            live.dead.cancel();
        }
        inner.fail_pending();
        inner.leases_lost();
        let reconnecting = !inner.closed.is_closed() && inner.opts.reconnect && !taken_over;
        inner.event(ClientEvent::Disconnected {
            reason: reason.clone(),
            reconnecting,
        });
        if !reconnecting {
            return;
        }
        tracing::info!(app = %inner.app_id, %reason, "connection lost; reconnecting");
        let mut attempt = 0u32;
        let mut told_refused = false;
        live = loop {
            let cap = inner.opts.backoff_max.as_secs_f64();
            let base = (inner.opts.backoff_min.as_secs_f64() * 2f64.powi(attempt.min(20) as i32)).min(cap);
            let delay = Duration::from_secs_f64(base * rand::rng().random_range(0.5..=1.0));
            tokio::select! {
                _ = inner.closed.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            // Never take over on our own: if the server has not noticed our old connection's
            // end yet, DUPLICATE_APP is retried with backoff until it has.
            // Partial: a pool or trigger the server refuses now is dropped (and told) rather
            // than keeping the client out.
            match establish(&inner, inner.opts.takeover, true).await {
                Ok(l) => break l,
                Err(e) => {
                    // A handshake the server refuses (a credential, a pool's policy, a limit)
                    // is worth a user's eye, once per outage; it does not stop the retries: the
                    // server may be given a new key, a JWT source a fresh token, a policy may
                    // change.
                    if matches!(e, ClientError::Remote(_)) && !told_refused {
                        told_refused = true;
                        tracing::warn!(app = %inner.app_id, error = %e, "reconnect refused by the server; retrying");
                        inner.event(ClientEvent::ReconnectRefused { reason: e.to_string() });
                    } else {
                        tracing::debug!(app = %inner.app_id, error = %e, attempt, "reconnect failed");
                    }
                    attempt += 1;
                }
            }
        };
        {
            let mut s = lock(&inner.shared);
            s.tx = Some(live.tx.clone());
            s.dropped = None;
            // Presence subscriptions were the old connection's: asked again for the pools the
            // client is still in (one it left would be refused, NOT_IN_POOL).
            let crate::client::Shared { pools, presence, .. } = &mut *s;
            presence.retain(|p| pools.contains(p));
            for p in presence.iter() {
                live.tx.send_now(&latzero_proto::frame::encode_message(
                    &json!({ "action": "presence_subscribe", "pool": p.as_str() }),
                ));
            }
        }
        // Block watches were the old connection's: subscribe again from the last version seen.
        // Correlated, so that a watch the server refuses now (its block gone with the server,
        // say) ends with an event rather than waiting for ever.
        let (notices, watches) = lock(&inner.watches).resubscribe();
        for frame in notices {
            live.tx.send_now(&frame);
        }
        if !watches.is_empty() {
            let inner = inner.clone();
            tokio::spawn(async move {
                for (key, mut r) in watches {
                    let asked = inner
                        .roundtrip_full(
                            |id| {
                                r["id"] = json!(id);
                                Ok(latzero_proto::frame::encode_message(&r))
                            },
                            inner.opts.timeout(),
                        )
                        .await;
                    match asked {
                        Ok(_) => {}
                        Err(ClientError::Remote(e)) => lock(&inner.watches).refused(key, &e),
                        // Disconnected again (the next reconnect asks again), or closed.
                        Err(e) => tracing::debug!(error = %e, "a block watch was not resumed"),
                    }
                }
            });
        }
        tracing::info!(app = %inner.app_id, "reconnected");
        inner.event(ClientEvent::Reconnected);
    }
}

/// What a panic said, if it said it in text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => s,
        (_, Some(s)) => s,
        _ => "a panic without a message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame that makes `dispatch` panic in this crate's tests.
    pub(super) const PANIC_FRAME: &[u8] = br#"{"action":"panic_for_a_test""#;

    /// A stand-in server: reads one frame from `s` as JSON.
    async fn read_frame(s: &mut tokio::net::TcpStream, buf: &mut bytes::BytesMut) -> Option<Value> {
        use tokio::io::AsyncReadExt;
        use tokio_util::codec::Decoder;
        let mut codec = latzero_proto::frame::FrameCodec::default();
        loop {
            if let Some(f) = codec.decode(buf).unwrap() {
                return Some(serde_json::from_slice(f.json()).unwrap());
            }
            if s.read_buf(buf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    }

    /// A stand-in server: accepts one client and completes its handshake.
    async fn accept(l: &tokio::net::TcpListener) -> (tokio::net::TcpStream, bytes::BytesMut) {
        use tokio::io::AsyncWriteExt;
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = bytes::BytesMut::new();
        let hs = read_frame(&mut s, &mut buf).await.unwrap();
        assert_eq!(hs["action"], "handshake");
        let ack = json!({"action":"handshake_ack","in_reply_to":hs["id"],"app_id":"a","pools":["p"],"triggers":[],"protocol_version":"1.0"});
        let frame = latzero_proto::frame::encode_json(ack.to_string().as_bytes());
        s.write_all(&frame).await.unwrap();
        (s, buf)
    }

    /// The read loop keeps the handler it looked up for the rest of one read's frames, but not
    /// past a change to the handler table: a handler replaced between two deliveries of one read
    /// (here by the first delivery itself) answers the second no more, and the replaced one is
    /// dropped then. Nor is a handler kept while the loop waits for the next read: one replaced
    /// then (which takes no round trip, so no frame comes) is dropped at once.
    #[tokio::test]
    async fn a_handler_replaced_between_two_frames_of_one_read_answers_no_more() {
        use std::sync::atomic::AtomicBool;
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("latzero://a@{}", l.local_addr().unwrap());
        let opts = crate::ClientOptions::new().reconnect(false);
        let (client, (mut s, mut buf)) = tokio::join!(opts.connect(&url), accept(&l));
        let client = client.unwrap();
        let answer = |n: &'static str| move |_r: Request<Payload>| async move { Ok(Payload::from_text(n).unwrap()) };
        let first = Arc::new(());
        let handler = {
            let (c, first, replaced) = (client.clone(), first.clone(), AtomicBool::new(false));
            move |r: Request<Payload>| {
                if !replaced.swap(true, Ordering::SeqCst) {
                    let replace = c.handle_raw("f", answer("2")).now_or_never();
                    replace.expect("a replacement takes no round trip").unwrap();
                }
                let _first = first.clone();
                answer("1")(r)
            }
        };
        let registered = tokio::spawn({
            let c = client.clone();
            async move { c.handle_raw("f", handler).await }
        });
        let register = read_frame(&mut s, &mut buf).await.unwrap();
        assert_eq!(register["action"], "register");
        let ack = json!({"action":"ack","in_reply_to":register["id"],"pools":["p"],"triggers":["f"]});
        s.write_all(&latzero_proto::frame::encode_json(ack.to_string().as_bytes()))
            .await
            .unwrap();
        registered.await.unwrap().unwrap();
        // Two deliveries in one write, so that one read brings both.
        let trigger = |id: &str| {
            let t = json!({"action":"trigger","id":id,"process":"f","pool":"p","data":null,"origin":{"app_id":"c"}});
            latzero_proto::frame::encode_json(t.to_string().as_bytes())
        };
        s.write_all(&[trigger("h1"), trigger("h2")].concat()).await.unwrap();
        for (id, result) in [("h1", 1), ("h2", 2)] {
            let r = read_frame(&mut s, &mut buf).await.unwrap();
            assert_eq!((&r["in_reply_to"], &r["response"]), (&json!(id), &json!(result)), "{r}");
        }
        assert_eq!(Arc::strong_count(&first), 1, "the replaced handler is still alive");
        // The second handler answered and was kept; replaced while the loop waits, it is not
        // kept alive by the loop.
        let second = Arc::new(());
        let keep = second.clone();
        client
            .handle_raw("f", move |r| {
                let _keep = keep.clone();
                answer("3")(r)
            })
            .await
            .unwrap();
        s.write_all(&trigger("h3")).await.unwrap();
        let r = read_frame(&mut s, &mut buf).await.unwrap();
        assert_eq!(r["response"], 3, "{r}");
        client.handle_raw("f", answer("4")).await.unwrap();
        // Nothing more is sent: the loop drops what it held once it waits again.
        tokio::time::timeout(Duration::from_secs(10), async {
            while Arc::strong_count(&second) > 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the handler replaced while the read loop waited is dropped");
    }

    /// A panic while a frame is handled (a bug) drops the connection as a lost one: the call in
    /// flight fails at once, not at its deadline, the app is told why, the socket is closed
    /// (the server sees its end), and the client reconnects.
    #[tokio::test]
    async fn a_panic_reading_a_frame_drops_the_connection() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("latzero://a@{}", l.local_addr().unwrap());
        let opts = crate::ClientOptions::new()
            .request_timeout(Duration::from_secs(60))
            .backoff(Duration::from_millis(1), Duration::from_millis(5));
        let (client, (mut s, mut buf)) = tokio::join!(opts.connect(&url), accept(&l));
        let client = client.unwrap();
        let mut events = client.events();
        let call = tokio::spawn({
            let client = client.clone();
            async move { client.call("p", "t", &json!(1)).await }
        });
        while read_frame(&mut s, &mut buf).await.unwrap()["action"] != "trigger" {}
        let mut panic = PANIC_FRAME.to_vec();
        panic.push(b'}');
        s.write_all(&latzero_proto::frame::encode_json(&panic)).await.unwrap();
        let failed = tokio::time::timeout(Duration::from_secs(10), call).await;
        let e = failed.expect("the call waits on").unwrap().unwrap_err();
        // The call's error says why, as the event does.
        let ClientError::Disconnected {
            reason: Some(why),
            sent: true,
        } = &e
        else {
            panic!("{e:?}")
        };
        assert!(e.to_string().contains(why.as_str()), "{e}");
        match events.recv().await.unwrap() {
            ClientEvent::Disconnected { reason, reconnecting } => {
                assert!(
                    reason.contains("a bug") && reason.contains("a panic a test put in"),
                    "{reason}"
                );
                assert_eq!(&reason, why);
                assert!(reconnecting);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            read_frame(&mut s, &mut buf).await.is_none(),
            "the old socket stays open"
        );
        let _again = accept(&l).await;
        assert!(matches!(events.recv().await.unwrap(), ClientEvent::Reconnected));
    }

    /// Emits queued just before the client is closed still reach the server (an emit returns
    /// once queued), then the connection ends: the writer writes them first, even when the
    /// connection task has seen the close before the writer ran. The order of the two is the
    /// scheduler's, so the test closes many clients right after their emits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn emits_queued_before_a_close_are_written() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("latzero://a@{}", l.local_addr().unwrap());
        let opts = crate::ClientOptions::new().reconnect(false);
        for round in 0..300 {
            let (client, (mut s, mut buf)) = tokio::join!(opts.clone().connect(&url), accept(&l));
            let client = client.unwrap();
            for i in 0..20 {
                client.emit("p", "ev", &json!(i)).await.unwrap();
            }
            drop(client);
            for i in 0..20 {
                let f = read_frame(&mut s, &mut buf).await;
                assert_eq!(f.map(|f| f["data"].clone()), Some(json!(i)), "round {round}");
            }
            assert!(
                read_frame(&mut s, &mut buf).await.is_none(),
                "round {round}: then the end"
            );
        }
    }

    /// A closed client gives up on a server that does not read within its close grace: the
    /// connection ends (the server reads end of stream) without the frames the socket never
    /// took, rather than holding them and the socket for ever.
    #[tokio::test]
    async fn a_closed_client_gives_up_on_a_server_that_does_not_read() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("latzero://a@{}", l.local_addr().unwrap());
        let opts = crate::ClientOptions::new()
            .reconnect(false)
            .close_grace(Duration::from_millis(100));
        let (client, (mut s, mut buf)) = tokio::join!(opts.connect(&url), accept(&l));
        let client = client.unwrap();
        // 400 × 64 KiB: more than the sockets on the way hold.
        let big = "z".repeat(64 * 1024);
        let n = 400;
        for _ in 0..n {
            client.emit("p", "ev", &json!(big)).await.unwrap();
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut got = 0;
        while tokio::time::timeout(Duration::from_secs(10), read_frame(&mut s, &mut buf))
            .await
            .expect("the end of stream in time, not a wait for ever")
            .is_some()
        {
            got += 1;
        }
        assert!(got < n, "all {n} were written: the grace was not kept");
    }

    #[test]
    fn a_response_frame_is_in_the_layout_the_server_reads_first() {
        let text = |f: Vec<u8>| String::from_utf8(f[4..].to_vec()).unwrap();
        // The text latzero-proto's tests hand to the server's layout reader (`sdk_call`).
        let ok: Result<Payload, HandlerError> = Ok(Payload::from_json("x").unwrap());
        assert_eq!(
            text(response_frame_after(Vec::new(), "\"17\"", &ok)),
            r#"{"action":"response","in_reply_to":"17","status":"ok","response":"x"}"#
        );
        let err: Result<Value, HandlerError> = Err(HandlerError::msg("no \"such\" thing"));
        assert_eq!(
            text(response_frame_after(Vec::new(), "\"17\"", &err)),
            r#"{"action":"response","in_reply_to":"17","status":"error","error":{"message":"no \"such\" thing"}}"#
        );
        // Written in place after frames already queued: those stay, and the length prefix
        // counts this frame only.
        let queued = response_frame_after(b"queued".to_vec(), "\"17\"", &ok);
        assert_eq!(&queued[..6], b"queued");
        let frame = &queued[6..];
        assert_eq!(
            u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
            frame.len() - 4
        );
        assert_eq!(
            text(frame.to_vec()),
            text(response_frame_after(Vec::new(), "\"17\"", &ok))
        );
    }
}
