//! The router: triggers (RPC) and emits.
//!
//! A call goes caller reader → [`Router::call`] (pick a handler, record the hop in the
//! [`pending`] table with its deadline, queue the trigger to the handler) → handler →
//! [`Router::respond`] (match the hop, check it was sent to this connection) → the caller's
//! queue. No disk and no global lock on this path: the directory is read under its read lock,
//! which the session holds across a run of calls and emits (a batch of frames from one read,
//! nothing that waits), so that the frame and the table take the names and handlers without a
//! reference count each. Nothing called under it takes the directory again.
//!
//! Handlers see a server-assigned hop id, never the caller's id, so two callers may use the
//! same id without being confused, and a connection can only answer calls sent to it.

pub(crate) mod pending;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use compact_str::CompactString;
use latzero_proto::ErrorCode;
use latzero_proto::frame::encode_message;
use latzero_proto::message::{
    Accepted, DeliverEmit, DeliverTrigger, Emit, ErrorFrame, ForwardResponse, Origin, PoolOp, RawValue, Response,
    Status, Trigger, parse_u64,
};
use tokio::time::{Duration, Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use self::pending::{Group, Handling, Pending, PendingTable, Take, Target};
use crate::admin::{Counters, Tally};
use crate::config::Limits;
use crate::directory::Directory;
use crate::session::conn::{Conn, ConnId, SendError};

/// A request the router refused: the code and message of the error frame the session sends.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// How a call ended.
enum Outcome<'a> {
    /// The handler answered.
    Handler { status: Status, body: Option<&'a RawValue> },
    /// The server ended it.
    Failed {
        code: ErrorCode,
        message: &'a str,
        may_still_run: Option<bool>,
    },
}

/// The shared counter that counts calls ending with `outcome`.
fn outcome_counter<'c>(c: &'c Counters, outcome: &Outcome<'_>) -> &'c std::sync::atomic::AtomicU64 {
    match outcome {
        Outcome::Handler { status: Status::Ok, .. } => &c.calls_ok,
        Outcome::Handler {
            status: Status::Error, ..
        } => &c.calls_handler_error,
        Outcome::Failed {
            code: ErrorCode::Timeout,
            ..
        } => &c.calls_timed_out,
        Outcome::Failed {
            code: ErrorCode::HandlerGone,
            ..
        } => &c.calls_handler_gone,
        Outcome::Failed {
            code: ErrorCode::ShuttingDown,
            ..
        } => &c.calls_shut_down,
        Outcome::Failed { .. } => &c.calls_refused,
    }
}

/// `null`, for absent payloads.
fn null() -> &'static RawValue {
    RawValue::NULL
}

/// Triggers and emits.
#[derive(Debug)]
pub(crate) struct Router {
    pub table: PendingTable,
    counters: Arc<Counters>,
    limits: Limits,
    /// Call latency, kept while the metrics port is served (`None`: no clock read per call).
    pub latency: Option<crate::metrics::Latency>,
}

impl Router {
    pub fn new(counters: Arc<Counters>, limits: Limits) -> Self {
        Router {
            table: PendingTable::new(),
            counters,
            limits,
            latency: None,
        }
    }

    /// Also keeps the call latency histogram (for the metrics port).
    pub fn with_latency(self) -> Self {
        Router {
            latency: Some(crate::metrics::Latency::default()),
            ..self
        }
    }

    /// Routes a call from `caller`, read at `received` (its ttl counts from then). On refusal
    /// nothing was recorded or sent.
    pub fn call(
        &self,
        dir: &Directory,
        caller: &Arc<Conn>,
        t: &Trigger<'_>,
        received: Instant,
        tally: &mut Tally,
    ) -> Result<(), Refusal> {
        let caller_app = caller.app().expect("calls are only routed after the handshake");
        let ttl = match t.ttl_ms {
            Some(ms) if Duration::from_millis(ms) > self.limits.max_ttl => {
                return Err(refuse(
                    ErrorCode::InvalidMessage,
                    format!(
                        "ttl {ms} ms exceeds the maximum of {} ms",
                        self.limits.max_ttl.as_millis()
                    ),
                ));
            }
            Some(ms) => Duration::from_millis(ms),
            None => self.limits.default_ttl,
        };
        // Read until the call is queued: the names go into the frames and the handlers into the
        // table straight from the directory, without taking a reference to each.
        let (handlers, reply_conn, pool_name, trigger) = {
            let (pool_name, pool) = dir
                .pools
                .get_key_value(&*t.pool)
                .filter(|(_, p)| p.members.contains_key(caller_app.as_str()))
                .ok_or_else(|| {
                    refuse(
                        ErrorCode::NotInPool,
                        format!("app '{caller_app}' is not in pool '{}'; join it first", &*t.pool),
                    )
                })?;
            pool.check(PoolOp::Call, caller_app.as_str(), &t.pool)
                .map_err(|r| refuse(r.code, r.message))?;
            if let Some(keys) = pool.keys() {
                crate::sealed::check_message(keys, &t.pool, &t.process, t.data)
                    .map_err(|r| refuse(r.code, r.message))?;
            }
            let reply_conn = match &t.reply_to {
                Some(r) => Some(pool.members.get(&**r).ok_or_else(|| {
                    refuse(
                        ErrorCode::NotInPool,
                        format!("reply_to app '{}' is not in pool '{}'", &**r, &*t.pool),
                    )
                })?),
                None => None,
            };
            let entry = pool.handlers.get_key_value(&*t.process);
            let registered = entry.map(|(_, h)| h);
            let no_handler = || {
                refuse(
                    ErrorCode::NoHandler,
                    format!("no app in pool '{}' has registered trigger '{}'", &*t.pool, &*t.process),
                )
            };
            let handlers: &[Arc<Conn>] = if t.broadcast {
                let list = registered.map_or(&[][..], |h| &h.list);
                if list.is_empty() {
                    return Err(no_handler());
                }
                list
            } else if let Some(dest) = &t.destination {
                let conn = pool.members.get(&**dest).ok_or_else(|| {
                    refuse(
                        ErrorCode::NotInPool,
                        format!("destination app '{}' is not in pool '{}'", &**dest, &*t.pool),
                    )
                })?;
                if !registered.is_some_and(|h| h.list.iter().any(|c| c.id == conn.id)) {
                    return Err(refuse(
                        ErrorCode::NoHandler,
                        format!("app '{}' has not registered trigger '{}'", &**dest, &*t.process),
                    ));
                }
                std::slice::from_ref(conn)
            } else {
                std::slice::from_ref(registered.and_then(|h| h.pick()).ok_or_else(no_handler)?)
            };
            // Each branch above found the trigger registered. The names go into the frames as
            // the registry holds them: checked names, written without an escape scan.
            let Some((trigger, _)) = entry else {
                return Err(no_handler());
            };
            (handlers, reply_conn, pool_name, trigger)
        };
        let n = handlers.len();
        let before = caller.inflight.fetch_add(n, Ordering::Relaxed);
        if before + n > self.limits.max_inflight_per_conn {
            caller.inflight.fetch_sub(n, Ordering::Relaxed);
            return Err(refuse(
                ErrorCode::Overloaded,
                format!(
                    "this connection has {before} calls in flight; the limit is {}",
                    self.limits.max_inflight_per_conn
                ),
            ));
        }
        // Once per handler, as each one's outcome is counted (a broadcast reaches n).
        tally.calls_total += n as u64;

        let deadline = received + ttl;
        let group = t.broadcast.then(|| Group::new(n));
        let data = t.data.unwrap_or(null());
        for (slot, handler) in handlers.iter().enumerate() {
            let hop = self.table.next_hop();
            let target = match (&group, &reply_conn) {
                (Some(g), _) => Target::Broadcast { group: g.clone(), slot },
                (None, Some(r)) => Target::ReplyTo(Arc::clone(r)),
                (None, None) => Target::Caller,
            };
            let frame = DeliverTrigger {
                action: "trigger",
                id: hop,
                process: trigger,
                pool: pool_name,
                data,
                origin: Origin { app_id: caller_app },
                ttl: ttl.as_millis() as u64,
            };
            self.table.insert(
                hop,
                Pending {
                    caller: caller.clone(),
                    caller_id: CompactString::new(t.id.get()),
                    handler: Handling::new(handler.clone()),
                    deadline,
                    ttl,
                    target,
                },
            );
            if let Err(e) = handler.send_with(|b| frame.encode_onto(b)) {
                // Not delivered: fail this hop now. Errors before `accepted` go to the caller.
                if let Some(mut p) = self.table.take(hop) {
                    if matches!(p.target, Target::ReplyTo(_)) {
                        p.target = Target::Caller;
                    }
                    let (code, message) = match e {
                        SendError::Full => (
                            ErrorCode::Overloaded,
                            format!(
                                "handler '{}' is not reading its queue; it was disconnected as a slow consumer",
                                handler.app_str()
                            ),
                        ),
                        SendError::Closed => (
                            ErrorCode::HandlerGone,
                            format!(
                                "handler '{}' disconnected before the call could be delivered",
                                handler.app_str()
                            ),
                        ),
                    };
                    self.complete(
                        p,
                        Outcome::Failed {
                            code,
                            message: &message,
                            may_still_run: Some(false),
                        },
                        None,
                    );
                }
                continue;
            }
            if let Some(r) = &reply_conn {
                let accepted = encode_message(&Accepted {
                    action: "accepted",
                    in_reply_to: t.id,
                    reply_to: r.app_str(),
                    handler: handler.app_str(),
                });
                let _ = caller.reply(&accepted);
            }
        }
        Ok(())
    }

    /// A handler's response.
    pub fn respond(&self, conn: &Arc<Conn>, r: &Response<'_>, tally: &mut Tally) -> Result<(), Refusal> {
        let raw = r.in_reply_to.get();
        // The hop id as the server wrote it (a string of digits), or as a number. `raw` is one
        // JSON value, so a quote at each end is a string's (a generic `trim_matches` cost ~60
        // instructions a call).
        let hop = parse_u64(raw.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(raw));
        let unknown = || {
            refuse(
                ErrorCode::UnknownCall,
                format!("in_reply_to {raw} is not a call this server sent to this connection"),
            )
        };
        let Some(hop) = hop else { return Err(unknown()) };
        match self.table.take_for(hop, conn.id) {
            Take::Found(p) => {
                self.complete(
                    p,
                    Outcome::Handler {
                        status: r.status,
                        body: r.body,
                    },
                    Some(tally),
                );
                Ok(())
            }
            Take::Finished => {
                self.counters.inc(&self.counters.late_responses);
                tracing::debug!(hop, app = conn.app_str(), "late response dropped");
                Ok(())
            }
            Take::NotYours | Take::Never => Err(unknown()),
        }
    }

    /// Fire-and-forget: queues the emit to every handler of the trigger in the pool.
    /// Returns how many handlers it was queued to.
    pub fn emit(&self, dir: &Directory, sender: &Arc<Conn>, e: &Emit<'_>) -> Result<u64, Refusal> {
        let sender_app = sender.app().expect("emits are only routed after the handshake");
        let (pool_name, pool) = dir
            .pools
            .get_key_value(&*e.pool)
            .filter(|(_, p)| p.members.contains_key(sender_app.as_str()))
            .ok_or_else(|| {
                refuse(
                    ErrorCode::NotInPool,
                    format!("app '{sender_app}' is not in pool '{}'; join it first", &*e.pool),
                )
            })?;
        pool.check(PoolOp::Emit, sender_app.as_str(), &e.pool)
            .map_err(|r| refuse(r.code, r.message))?;
        if let Some(keys) = pool.keys() {
            crate::sealed::check_message(keys, &e.pool, &e.process, e.data).map_err(|r| refuse(r.code, r.message))?;
        }
        self.counters.inc(&self.counters.emits_total);
        let Some((trigger, targets)) = pool
            .handlers
            .get_key_value(&*e.process)
            .filter(|(_, h)| !h.list.is_empty())
        else {
            self.counters.inc(&self.counters.emits_unrouted);
            return Ok(0);
        };
        let frame = DeliverEmit {
            action: "emit",
            process: trigger,
            pool: pool_name,
            data: e.data.unwrap_or(null()),
            origin: Origin { app_id: sender_app },
        }
        .encode();
        // Sending never blocks (it writes or buffers), so the directory can be read while it
        // goes on and the receiver list need not be copied.
        let mut delivered = 0;
        let mut slow = Vec::new();
        for c in &targets.list {
            match c.send(&frame) {
                Ok(()) => delivered += 1,
                Err(SendError::Full) => slow.push(c.app_str().to_owned()),
                Err(SendError::Closed) => {}
            }
        }
        self.counters.add(&self.counters.emits_delivered, delivered);
        if !slow.is_empty() {
            return Err(refuse(
                ErrorCode::Overloaded,
                format!(
                    "emit not delivered to {} (slow consumer, disconnected); delivered to {delivered} other handler(s)",
                    slow.join(", ")
                ),
            ));
        }
        Ok(delivered)
    }

    /// Fails or drops every call that involves a connection that has gone.
    pub fn on_disconnect(&self, conn: ConnId) {
        let gone = self.table.drain_where(|p| {
            p.handler.id == conn || p.caller.id == conn || matches!(&p.target, Target::ReplyTo(r) if r.id == conn)
        });
        for p in gone {
            if p.handler.id == conn && p.caller.id != conn {
                let message = format!(
                    "handler '{}' disconnected before answering; the call may have run partly or fully",
                    p.handler.app_str()
                );
                self.complete(
                    p,
                    Outcome::Failed {
                        code: ErrorCode::HandlerGone,
                        message: &message,
                        may_still_run: None,
                    },
                    None,
                );
            } else {
                // The caller (or its reply target) has gone: nobody is left to tell.
                p.caller.inflight.fetch_sub(1, Ordering::Relaxed);
                self.counters.inc(&self.counters.undeliverable);
            }
        }
    }

    /// Fails every pending call (shutdown).
    pub fn fail_all(&self, code: ErrorCode, message: &str) {
        for p in self.table.drain_where(|_| true) {
            self.complete(
                p,
                Outcome::Failed {
                    code,
                    message,
                    may_still_run: Some(true),
                },
                None,
            );
        }
    }

    /// Fires deadlines until `stop` is cancelled.
    pub async fn run_timer(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let next = self.table.next_deadline();
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.table.wake.notified() => continue,
                _ = sleep_until(next.unwrap_or(far)) => {}
            }
            for p in self.table.expire(Instant::now()) {
                let message = format!(
                    "call timed out after {} ms; handler '{}' may still run it",
                    p.ttl.as_millis(),
                    p.handler.app_str()
                );
                self.complete(
                    p,
                    Outcome::Failed {
                        code: ErrorCode::Timeout,
                        message: &message,
                        may_still_run: Some(true),
                    },
                    None,
                );
            }
        }
    }

    /// Sends the terminal frame of a call that has left the table.
    /// Ends the call `p` with `outcome`, counted in `tally` if a session holds one (an answer
    /// from a handler), else straight in the shared counters.
    fn complete(&self, p: Pending, outcome: Outcome<'_>, tally: Option<&mut Tally>) {
        let c = &self.counters;
        if let (Some(l), Outcome::Handler { .. }) = (&self.latency, &outcome) {
            // The deadline counts the ttl from when the call was read.
            l.observe(Instant::now().saturating_duration_since(p.deadline - p.ttl));
        }
        match (&outcome, tally) {
            (Outcome::Handler { status: Status::Ok, .. }, Some(t)) => t.calls_ok += 1,
            (
                Outcome::Handler {
                    status: Status::Error, ..
                },
                Some(t),
            ) => t.calls_handler_error += 1,
            (outcome, _) => c.inc(outcome_counter(c, outcome)),
        }
        p.caller.inflight.fetch_sub(1, Ordering::Relaxed);
        let handler = p.handler.app_str();
        let (dest, origin) = match &p.target {
            Target::Caller => (&p.caller, None),
            Target::ReplyTo(r) => {
                let app_id = p.caller.app().expect("calls are only routed after the handshake");
                (r, Some(Origin { app_id }))
            }
            Target::Broadcast { group, slot } => {
                self.complete_slot(&p, group, *slot, &outcome);
                return;
            }
        };
        // The caller asked for this frame; a reply_to app did not, so it is bounded.
        let bounded = origin.is_some();
        let sent = match outcome {
            Outcome::Handler { status, body } => {
                let frame = ForwardResponse {
                    action: "response",
                    in_reply_to: &p.caller_id,
                    status: status.as_str(),
                    response: (status == Status::Ok).then(|| body.unwrap_or(null())),
                    error: (status == Status::Error).then(|| body.unwrap_or(null())),
                    origin,
                };
                let write = |b: &mut Vec<u8>| frame.encode_onto(b);
                if bounded {
                    dest.send_with(write)
                } else {
                    dest.reply_with(write)
                }
            }
            Outcome::Failed {
                code,
                message,
                may_still_run,
            } => {
                let frame = encode_message(&ErrorFrame {
                    handler_may_still_run: may_still_run,
                    handler: Some(handler),
                    origin,
                    ..ErrorFrame::new(p.caller_id_raw(), code, message)
                });
                if bounded { dest.send(&frame) } else { dest.reply(&frame) }
            }
        };
        if sent.is_err() {
            c.inc(&c.undeliverable);
        }
    }

    fn complete_slot(&self, p: &Pending, group: &Group, slot: usize, outcome: &Outcome<'_>) {
        #[derive(serde::Serialize)]
        struct Entry<'a> {
            app_id: &'a str,
            status: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            response: Option<&'a RawValue>,
            #[serde(skip_serializing_if = "Option::is_none")]
            error: Option<&'a RawValue>,
            #[serde(skip_serializing_if = "Option::is_none")]
            code: Option<ErrorCode>,
            #[serde(skip_serializing_if = "Option::is_none")]
            message: Option<&'a str>,
        }
        let app_id = p.handler.app_str();
        let entry = match *outcome {
            Outcome::Handler { status, body } => Entry {
                app_id,
                status: status.as_str(),
                response: (status == Status::Ok).then(|| body.unwrap_or(null())),
                error: (status == Status::Error).then(|| body.unwrap_or(null())),
                code: None,
                message: None,
            },
            Outcome::Failed { code, message, .. } => Entry {
                app_id,
                status: "error",
                response: None,
                error: None,
                code: Some(code),
                message: Some(message),
            },
        };
        let text = serde_json::to_string(&entry).expect("serialising an entry into memory");
        let done = {
            let mut g = group.state.lock().unwrap_or_else(|e| e.into_inner());
            g.slots[slot] = Some((app_id.to_owned(), text));
            g.remaining -= 1;
            (g.remaining == 0).then(|| std::mem::take(&mut g.slots))
        };
        if let Some(slots) = done {
            const HEAD: &str = r#"{"action":"response","in_reply_to":"#;
            const MID: &str = r#","status":"ok","broadcast":true,"responses":["#;
            const TAIL: &str = "]}";
            let mut entries: Vec<_> = slots.into_iter().flatten().collect();
            let room = self
                .limits
                .max_frame_len
                .saturating_sub(HEAD.len() + p.caller_id.len() + MID.len() + TAIL.len());
            fit_broadcast(&mut entries, room, self.limits.max_frame_len);
            let mut json = String::with_capacity(64 + entries.iter().map(|(_, e)| e.len() + 1).sum::<usize>());
            json.push_str(HEAD);
            json.push_str(&p.caller_id);
            json.push_str(MID);
            for (i, (_, s)) in entries.iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                json.push_str(s);
            }
            json.push_str(TAIL);
            if p.caller
                .reply(&latzero_proto::frame::encode_json(json.as_bytes()))
                .is_err()
            {
                self.counters.inc(&self.counters.undeliverable);
            }
        }
    }
}

/// Keeps a broadcast's entries (app id, JSON text) within `room` bytes, the commas between them
/// counted: the largest answer is replaced by a `FRAME_TOO_LARGE` entry, then the next, until
/// they fit. Each answer fits a frame of its own, but together they may not, and a reply over
/// the caller's frame limit would end its connection.
fn fit_broadcast(entries: &mut [(String, String)], room: usize, max_frame_len: usize) {
    let mut total: usize = entries.iter().map(|(_, e)| e.len() + 1).sum();
    while total > room {
        let Some(i) = (0..entries.len()).max_by_key(|&i| entries[i].1.len()) else {
            return;
        };
        let (app, text) = &entries[i];
        let message = format!(
            "this handler's answer was left out ({} bytes as an entry of the reply): the broadcast's answers together would pass max_frame_len ({max_frame_len} bytes)",
            text.len()
        );
        let entry = serde_json::json!({
            "app_id": app, "status": "error", "code": ErrorCode::FrameTooLarge, "message": message,
        })
        .to_string();
        if entry.len() >= text.len() {
            // Only left-out entries are left, and the reply is as small as it gets.
            return;
        }
        total = total - text.len() + entry.len();
        entries[i].1 = entry;
    }
}

#[cfg(test)]
mod tests;
