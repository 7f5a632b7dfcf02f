//! The client: one logical connection to the server that survives reconnects.
//!
//! Ownership: a connection task owns the socket's read side and the reconnect loop; a writer
//! task owns the write side and drains a bounded queue (a full queue makes `call`/`emit` wait:
//! backpressure, never unbounded memory). Pending calls sit in a map keyed by our numeric id;
//! each leaves it by reply, by its local deadline, or when the connection drops (then it fails
//! at once with [`ClientError::Disconnected`]).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use latzero_proto::frame::{JsonFrame, ScratchFrame, encode_message};
use latzero_proto::message::{KeyVerifiers, RawValue, ServerFrame};
use latzero_proto::{AppId, Endpoint, ErrorCode, LatzeroUrl, PoolName, TriggerName};
use rustc_hash::FxHashMap;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::call::{Call, Form, TriggerOut, run_local};
use crate::connection::Outbox;
use crate::driver::{connection_task, establish};
use crate::error::{ClientError, RemoteError};
use crate::handler::{Handler, HandlerError, Request, handler_fn};
use crate::options::ClientOptions;
use crate::payload::Payload;
use crate::pending::{Pending, Reply, Want};

/// An `emit` frame, with the payload serialised straight into it; its names checked, as
/// [`TriggerOut`]'s.
struct EmitOut<'a, D: Serialize + ?Sized> {
    id: Option<u64>,
    process: &'a str,
    pool: &'a str,
    data: &'a D,
}

impl<D: Serialize + ?Sized> EmitOut<'_, D> {
    /// The frame, in this thread's scratch buffer (fails only if the payload does not
    /// serialise).
    fn encode(&self) -> Result<ScratchFrame, serde_json::Error> {
        let mut f = JsonFrame::new(160 + self.process.len() + self.pool.len());
        // Names checked by the caller: nothing to escape. The keys and quotes between them go
        // in runs of the fixed layout the server reads first.
        f.text(r#""action":"emit""#);
        if let Some(id) = self.id {
            f.text(r#","id":"#).digits(id);
        }
        f.text(r#","process":""#)
            .text(self.process)
            .text(r#"","pool":""#)
            .text(self.pool)
            .text("\"")
            .serialize("data", self.data)?;
        Ok(f.finish_scratch())
    }
}

/// Something that happened to the client, for the application to observe. New kinds of event
/// may come in later versions: match with a `_` arm.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The connection dropped. Calls in flight failed with `Disconnected`.
    Disconnected {
        /// Why, as far as the client knows.
        reason: String,
        /// Whether the client is trying to reconnect. It does not after [`Client::close`], with
        /// reconnect turned off, or when another connection took over its app id (reconnecting
        /// would take it back and the two would flap forever).
        reconnecting: bool,
    },
    /// The client reconnected and handshook again with its pools and triggers.
    Reconnected,
    /// While reconnecting, the server refused the handshake (a credential it no longer takes, a
    /// limit on connections, another connection holding the app id): told once per outage. The
    /// client keeps retrying; an application that cannot fix the cause can [`Client::close`]
    /// it. (A pool or trigger the server refuses by then does not refuse the handshake: it is
    /// dropped, with [`ClientEvent::PoolLeft`] or [`ClientEvent::TriggerRefused`].)
    ReconnectRefused {
        /// The server's error.
        reason: String,
    },
    /// An app joined or left a pool this client subscribed to.
    Presence {
        /// The pool.
        pool: String,
        /// The app.
        app_id: String,
        /// True for joined, false for left.
        joined: bool,
    },
    /// The server took this app out of a pool (its owner removed it, or a policy change no
    /// longer lets it join), or refused the pool when the client reconnected: the client no
    /// longer counts itself a member, and does not join it again when it reconnects.
    PoolLeft {
        /// The pool.
        pool: String,
        /// What the server said, naming who removed it.
        reason: String,
    },
    /// When the client reconnected, the server refused a trigger it handled (a limit lowered
    /// meanwhile): its handler is dropped, and the client reconnected with the rest.
    TriggerRefused {
        /// The trigger.
        trigger: String,
        /// What the server said.
        reason: String,
    },
    /// A lock lease this client held on a block ended without [`MemoryBlock::unlock`]: it ran
    /// out, a pool policy took the right it needs away, or the connection dropped (a lease ends
    /// with its connection and is not taken again after a reconnect). Others may lock and write
    /// the block from now on. Watches of the block get [`BlockEvent::LockExpired`] too.
    ///
    /// [`MemoryBlock::unlock`]: crate::MemoryBlock::unlock
    /// [`BlockEvent::LockExpired`]: crate::BlockEvent::LockExpired
    LockExpired {
        /// The block's pool.
        pool: String,
        /// The block.
        block_id: String,
        /// Whether the lease was exclusive (else shared).
        exclusive: bool,
        /// Why it ended.
        reason: String,
    },
    /// A result of another app's call that named this app as `reply_to`.
    Forwarded(Forwarded),
    /// An error frame the server sent that answers no request of ours (for example an emit's
    /// refusal, or an error about a response we sent).
    ServerError(RemoteError),
}

/// A result delivered to this app because a caller named it as `reply_to`.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The caller's id for the call.
    pub in_reply_to: Value,
    /// The calling app.
    pub origin: String,
    /// The result: the handler's response, its error, or the server's error.
    pub result: Result<Value, Arc<ClientError>>,
}

pub(crate) struct Shared {
    pub(crate) pools: BTreeSet<PoolName>,
    pub(crate) triggers: BTreeSet<TriggerName>,
    /// The pools whose presence events this client asked for: asked again after a reconnect
    /// (a subscription is the connection's, on the server).
    pub(crate) presence: BTreeSet<PoolName>,
    pub(crate) tx: Option<Outbox>,
    /// Why the connection last dropped, set with `tx = None` (before the calls in flight are
    /// failed, so that each finds it) and cleared when a new connection is in `tx`.
    pub(crate) dropped: Option<String>,
}

impl Shared {
    /// The error of a request the connection's drop failed, with why it dropped if known:
    /// `sent` if it may have reached the server, not if it never left this client.
    pub(crate) fn disconnected(&self, sent: bool) -> ClientError {
        ClientError::Disconnected {
            reason: self.dropped.clone(),
            sent,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) app_id: AppId,
    pub(crate) endpoint: Endpoint,
    pub(crate) opts: ClientOptions,
    /// Requests waiting for their reply, and when their waits run out; how many there are
    /// (`pending.len()`) is the writer task's batching hint.
    pub(crate) pending: Pending,
    /// Keyed by the names this app registered: a handful of entries that frames only look up,
    /// so a fast hash, as for `pending`.
    pub(crate) handlers: RwLock<FxHashMap<String, Handler>>,
    /// How many entries `handlers` has, written under its lock: a client without handlers (one
    /// that only calls) finds out that no call of its is in-process without taking a lock.
    pub(crate) handler_count: AtomicUsize,
    /// Bumped under `handlers`' write lock by every change to it: the read loop's
    /// [`HandlerCache`](crate::driver::HandlerCache) is good while this has not moved.
    pub(crate) handler_gen: AtomicU64,
    pub(crate) shared: Mutex<Shared>,
    pub(crate) events: broadcast::Sender<ClientEvent>,
    pub(crate) closed: Closed,
    pub(crate) watches: Mutex<crate::memory::Watches>,
    /// The lock leases this client holds. A lease that ends other than by `unlock` is told as
    /// [`ClientEvent::LockExpired`].
    pub(crate) leases: Mutex<Leases>,
    pub(crate) spinner: Option<latzero_uds::spin::Spinner>,
    /// What the server's `handshake_ack` said of its limits.
    pub(crate) server_limits: ServerLimits,
}

/// The lock leases a client holds, and how many of its connections have dropped (each drop ends
/// every lease): a grant read just before a drop, whose caller takes it up only after the drop
/// has ended the leases, is not taken for a lease held.
#[derive(Default)]
pub(crate) struct Leases {
    /// By block: whether each is exclusive.
    pub(crate) held: HashMap<crate::memory::BlockKey, bool>,
    /// Connections dropped so far.
    pub(crate) drops: u64,
}

/// The limits the server told at the handshake (`limits`, PROTOCOL.md §4.1): the client keeps to
/// them rather than be refused or, past the frame limit, disconnected. The most they can be,
/// from a server that tells none.
#[derive(Debug)]
pub(crate) struct ServerLimits {
    max_frame_len: AtomicUsize,
    /// The server's max ttl when the client's request timeout is longer, else `u64::MAX`: a
    /// call reads one word to know that its default ttl stands.
    ttl_cut_ms: AtomicU64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_frame_len: AtomicUsize::new(usize::MAX),
            ttl_cut_ms: AtomicU64::new(u64::MAX),
        }
    }
}

impl ServerLimits {
    /// Takes the limits of a new connection's ack, for a client whose request timeout is
    /// `chosen` (`None`: the SDK's default, the only one cut to the max ttl).
    pub(crate) fn set(&self, max_frame_len: usize, max_ttl_ms: u64, chosen: Option<Duration>) {
        self.max_frame_len.store(max_frame_len, Ordering::Relaxed);
        let default = crate::options::DEFAULT_REQUEST_TIMEOUT;
        let cut = if chosen.is_none() && default.as_millis() > u128::from(max_ttl_ms) {
            max_ttl_ms
        } else {
            u64::MAX
        };
        self.ttl_cut_ms.store(cut, Ordering::Relaxed);
    }

    /// The longest frame payload the server reads.
    pub(crate) fn max_frame_len(&self) -> usize {
        self.max_frame_len.load(Ordering::Relaxed)
    }

    /// `FrameTooLarge` for a frame (its length prefix included) the server would refuse.
    pub(crate) fn check_frame(&self, frame: &[u8]) -> Result<(), ClientError> {
        let (len, max) = (frame.len().saturating_sub(4), self.max_frame_len());
        if len > max {
            return Err(ClientError::FrameTooLarge { len, max });
        }
        Ok(())
    }

    /// The ttl of a call that names none: the client's request timeout, cut to the longest
    /// the server takes when it is the SDK's default (so that a server started with a shorter
    /// `--max-ttl-ms` does not refuse every call of a client left on its defaults). A timeout
    /// the user chose is sent as chosen: one too long is refused, not silently shortened.
    pub(crate) fn default_ttl(&self, request_timeout: Duration) -> Duration {
        match self.ttl_cut_ms.load(Ordering::Relaxed) {
            u64::MAX => request_timeout,
            ms => Duration::from_millis(ms),
        }
    }
}

/// A reply in another form than the caller asked for: a bug in the client, reported rather
/// than panicking.
fn wrong_form() -> ClientError {
    ClientError::Protocol("internal error: a reply in another form than asked for".into())
}

/// Whether the client is closed: a token for the tasks that wait for it, and a flag for the
/// calls that only ask. The token's `is_cancelled` takes its mutex; a call asks before every
/// send, so it reads the flag, one load.
pub(crate) struct Closed {
    token: CancellationToken,
    flag: AtomicBool,
}

impl Closed {
    fn new() -> Closed {
        Closed {
            token: CancellationToken::new(),
            flag: AtomicBool::new(false),
        }
    }

    /// Closes the client: the flag first, so a task the token wakes finds it set.
    pub(crate) fn close(&self) {
        self.flag.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Completes once the client is closed.
    pub(crate) fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// The token, for a task that owns its copy.
    pub(crate) fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

struct CloseOnDrop(Arc<Inner>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.closed.close();
    }
}

/// A connected LatZero app. Clones share the connection; it closes when the last clone drops
/// (or on [`Client::close`]).
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    _guard: Arc<CloseOnDrop>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("app_id", &self.inner.app_id)
            .field("endpoint", &self.inner.endpoint)
            .finish()
    }
}

/// How long after a request's ttl its caller still waits for the server's answer: the server
/// answers by the ttl, and this covers its timer and the trip back.
fn reply_grace(ttl: Duration) -> Duration {
    Duration::from_secs(1).max(ttl / 10)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn remote_error(env: &ServerFrame<'_>) -> RemoteError {
    let code_str = env.code.as_deref().unwrap_or("INTERNAL");
    let code = serde_json::from_value::<ErrorCode>(Value::String(code_str.to_owned())).unwrap_or(ErrorCode::Internal);
    let mut message = env.message.as_deref().unwrap_or("").to_owned();
    if code == ErrorCode::Internal && code_str != "INTERNAL" {
        message = format!("{code_str}: {message}");
    }
    RemoteError {
        code,
        message,
        handler: env.handler.as_deref().map(str::to_owned),
        handler_may_still_run: env.handler_may_still_run,
    }
}

pub(crate) fn raw_to_value(raw: Option<&RawValue>) -> Result<Value, ClientError> {
    Ok(match raw {
        Some(r) => serde_json::from_str(r.get())?,
        None => Value::Null,
    })
}

/// Turns a reply frame into the call's result.
pub(crate) fn reply_result(frame: &[u8]) -> Result<Value, ClientError> {
    let env = ServerFrame::parse(frame).map_err(|e| ClientError::Protocol(format!("bad reply: {e}")))?;
    result_of(&env, frame)
}

/// [`result_of`], with an `ok` response's body as a [`Payload`] sharing the frame's memory.
pub(crate) fn raw_result_of(env: &ServerFrame<'_>, frame: &ByteString) -> Result<Payload, ClientError> {
    match (env.action(), env.status.as_deref(), env.response) {
        (Some("response"), Some("ok"), Some(body)) => Ok(Payload::within(frame, body.get())?),
        (Some("response"), Some("ok"), None) => Ok(Payload::null()),
        _ => result_of(env, frame.as_bytes()).and_then(Payload::from_value),
    }
}

/// The result a reply frame carries, from its parsed envelope (so the reader parses it once).
pub(crate) fn result_of(env: &ServerFrame<'_>, frame: &[u8]) -> Result<Value, ClientError> {
    match env.action() {
        Some("error") => Err(remote_error(env).into()),
        Some("response") => match env.status.as_deref() {
            Some("ok") => raw_to_value(env.response),
            Some("error") => Err(ClientError::Handler(raw_to_value(env.error)?)),
            other => Err(ClientError::Protocol(format!("response with status {other:?}"))),
        },
        _ => Ok(serde_json::from_slice(frame)?),
    }
}

impl Client {
    /// Connects with default options. See the crate docs for the URL forms.
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Client::connect_with(url, ClientOptions::default()).await
    }

    /// Connects with options. Fails if the first connection or handshake fails; after that,
    /// drops are handled by reconnecting.
    pub async fn connect_with(url: &str, mut opts: ClientOptions) -> Result<Client, ClientError> {
        let url: LatzeroUrl = url.parse()?;
        if url.tls.is_some() {
            opts.tls = url.tls;
        }
        let triggers = opts
            .triggers
            .iter()
            .map(|t| TriggerName::try_from(t.as_str()))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            app_id: url.app_id,
            endpoint: url.endpoint,
            pending: Pending::new(),
            handlers: RwLock::new(FxHashMap::default()),
            handler_count: AtomicUsize::new(0),
            handler_gen: AtomicU64::new(0),
            shared: Mutex::new(Shared {
                pools: url.pools.into_iter().collect(),
                triggers,
                presence: BTreeSet::new(),
                tx: None,
                dropped: None,
            }),
            events,
            closed: Closed::new(),
            watches: Mutex::default(),
            leases: Mutex::default(),
            spinner: latzero_uds::spin::Spinner::shared(opts.spin),
            server_limits: ServerLimits::default(),
            opts,
        });
        // The first handshake is strict: what the application asked for is all there, or an error.
        let live = establish(&inner, inner.opts.takeover, false).await?;
        lock(&inner.shared).tx = Some(live.tx.clone());
        let guard = Arc::new(CloseOnDrop(inner.clone()));
        tokio::spawn(connection_task(inner.clone(), live));
        let sweeper = inner.clone();
        tokio::spawn(async move { sweeper.pending.sweep(sweeper.closed.token()).await });
        Ok(Client { inner, _guard: guard })
    }

    /// This client's app id.
    pub fn app_id(&self) -> &AppId {
        &self.inner.app_id
    }

    /// The pools this client is in.
    pub fn pools(&self) -> Vec<PoolName> {
        lock(&self.inner.shared).pools.iter().cloned().collect()
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        lock(&self.inner.shared).tx.is_some()
    }

    /// Subscribes to client events (disconnects, reconnects, presence, forwarded results).
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.inner.events.subscribe()
    }

    /// Closes the connection. Calls in flight fail with `Disconnected`. Frames queued before
    /// (an emit returns once queued) are still written, for up to
    /// [`ClientOptions::close_grace`](crate::ClientOptions::close_grace); dropping the last clone
    /// of a client closes it the same way. [`flush`](Self::flush) first to know they arrived:
    /// the runtime must also outlive the writing, and bytes left unwritten (the grace ran out,
    /// or the runtime shut down first) are logged as a `tracing` warning with their count.
    pub fn close(&self) {
        self.inner.closed.close();
    }

    /// Waits until everything this client sent before has reached the server and been handled
    /// (a ping round trip; frames are handled in order). Fire-and-forget frames — a mapped
    /// write's `block_notify`, an `emit` — are otherwise only queued; a process about to exit
    /// calls this so that none is lost with it.
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.request_json("ping", json!({})).await.map(|_| ())
    }

    /// Registers a handler for a trigger and announces it to the server.
    ///
    /// Handlers run on the connection's reader until their first `.await` (most finish without
    /// one, and then a call costs no task switch); a handler that awaits continues in its own
    /// task. So a handler must not block the thread: move blocking work to
    /// `tokio::task::spawn_blocking`. A panic becomes an error response to the caller.
    pub async fn handle<F, Fut>(&self, trigger: &str, f: F) -> Result<(), ClientError>
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
    {
        self.register(trigger, Handler::Value(handler_fn(f))).await
    }

    /// Registers a handler that takes and returns payloads as JSON text ([`Payload`]): the
    /// bytes-level form of [`handle`](Self::handle), which never builds a [`Value`]. The payload
    /// a handler receives is a view into the frame it arrived in; the one it returns is written
    /// into the response as it is. Everything else is as for `handle`.
    pub async fn handle_raw<F, Fut>(&self, trigger: &str, f: F) -> Result<(), ClientError>
    where
        F: Fn(Request<Payload>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Payload, HandlerError>> + Send + 'static,
    {
        self.register(trigger, Handler::Raw(handler_fn(f))).await
    }

    async fn register(&self, trigger: &str, h: Handler) -> Result<(), ClientError> {
        let name = TriggerName::try_from(trigger)?;
        {
            let mut handlers = self.inner.handlers.write().unwrap_or_else(|e| e.into_inner());
            handlers.insert(name.to_string(), h);
            self.inner.handlers_changed(&handlers);
        }
        // While disconnected `membership` only records; the next handshake carries the trigger.
        let new = lock(&self.inner.shared).triggers.insert(name.clone());
        if new {
            let registered = self
                .membership("register", json!({ "triggers": [name.as_str()] }))
                .await;
            // A trigger the server refused is dropped here too (as a refused join is).
            if let Err(e @ ClientError::Remote(_)) = registered {
                self.inner.drop_trigger(&name);
                return Err(e);
            }
            registered?;
        }
        Ok(())
    }

    /// Unregisters a trigger and drops its handler.
    pub async fn unhandle(&self, trigger: &str) -> Result<(), ClientError> {
        let name = TriggerName::try_from(trigger)?;
        {
            let mut handlers = self.inner.handlers.write().unwrap_or_else(|e| e.into_inner());
            handlers.remove(name.as_str());
            self.inner.handlers_changed(&handlers);
        }
        lock(&self.inner.shared).triggers.remove(&name);
        self.membership("unregister", json!({ "triggers": [name.as_str()] }))
            .await
            .map(|_| ())
    }

    /// Joins a pool (created on first join). A join the server refuses (its policy, a limit,
    /// an encrypted pool) leaves the client as it was. While the client is disconnected the
    /// pool is recorded and asked for in the next handshake; if the server refuses it then, the
    /// client reconnects without it and reports [`ClientEvent::PoolLeft`].
    pub async fn join(&self, pool: &str) -> Result<(), ClientError> {
        let name = PoolName::try_from(pool)?;
        let fields = json!({ "pools": [name.as_str()] });
        self.hold(|s| &mut s.pools, name, "join", fields).await
    }

    /// Leaves a pool.
    pub async fn leave(&self, pool: &str) -> Result<(), ClientError> {
        let name = PoolName::try_from(pool)?;
        lock(&self.inner.shared).pools.remove(&name);
        self.membership("leave", json!({ "pools": [name.as_str()] }))
            .await
            .map(|_| ())
    }

    /// Creates a stored pool as `spec` says (owned by this app unless it names owners); returns
    /// the server's description of it.
    pub async fn create_pool(&self, pool: &str, spec: PoolSpec) -> Result<Value, ClientError> {
        let name = PoolName::try_from(pool)?;
        let mut req = json!({ "pool": name.as_str(), "type": spec.kind, "description": spec.description });
        if let Some(o) = spec.owners {
            req["owners"] = json!(o);
        }
        if let Some(p) = spec.policies {
            req["policies"] = p;
        }
        if let Some(v) = spec.keys {
            req["keys"] = verifiers_json(&v);
        }
        let mut r = self.request_json("pool_create", req).await?;
        Ok(r["info"].take())
    }

    /// Changes a stored pool's description, owners or policies (owners only). Returns the
    /// pool's new description, with `members_removed`: the members its new policies no longer
    /// let join, which the server took out of it.
    pub async fn update_pool(&self, pool: &str, changes: Value) -> Result<Value, ClientError> {
        let name = PoolName::try_from(pool)?;
        let mut req = changes;
        req["pool"] = json!(name.as_str());
        let mut r = self.request_json("pool_update", req).await?;
        let mut info = r["info"].take();
        if info.is_object() {
            info["members_removed"] = r["members_removed"].take();
        }
        Ok(info)
    }

    /// Encrypted pools (owners only): starts a new key generation with its verifiers (from
    /// [`latzero_crypto::generate`]); records sealed under older generations stay readable.
    pub async fn rotate_pool_keys(&self, pool: &str, v: latzero_crypto::Verifiers) -> Result<Value, ClientError> {
        self.update_pool(pool, json!({ "keys": verifiers_json(&v) })).await
    }

    /// Removes a pool; with `force`, even while other apps are in it (they leave it). Returns
    /// what went with it: `{"pool", "members_removed", "blocks_removed"}`.
    pub async fn remove_pool(&self, pool: &str, force: bool) -> Result<Value, ClientError> {
        let name = PoolName::try_from(pool)?;
        let mut r = self
            .request_json("pool_remove", json!({ "pool": name.as_str(), "force": force }))
            .await?;
        // The answer without the envelope's fields, as `create_pool` returns its `info`.
        if let Some(m) = r.as_object_mut() {
            m.remove("action");
            m.remove("in_reply_to");
        }
        Ok(r)
    }

    /// A request built from `fields` plus `action` and a fresh `id`; its reply's JSON.
    pub(crate) async fn request_json(&self, action: &str, mut fields: Value) -> Result<Value, ClientError> {
        fields["action"] = json!(action);
        let timeout = self.inner.opts.timeout();
        self.inner
            .roundtrip(
                |id| {
                    fields["id"] = json!(id);
                    Ok(encode_message(&fields))
                },
                timeout,
            )
            .await
    }

    /// Asks for presence events of a pool (the client must be in it); they arrive as
    /// [`ClientEvent::Presence`]. The subscription is asked for again after every reconnect
    /// while the client is in the pool, and recorded for the next one while it is disconnected.
    pub async fn subscribe_presence(&self, pool: &str) -> Result<(), ClientError> {
        let name = PoolName::try_from(pool)?;
        let fields = json!({ "pool": name.as_str() });
        self.hold(|s| &mut s.presence, name, "presence_subscribe", fields).await
    }

    /// Stops the presence events of a pool.
    pub async fn unsubscribe_presence(&self, pool: &str) -> Result<(), ClientError> {
        let name = PoolName::try_from(pool)?;
        lock(&self.inner.shared).presence.remove(&name);
        self.membership("presence_unsubscribe", json!({ "pool": name.as_str() }))
            .await
            .map(|_| ())
    }

    /// Records `name` in the set `held` picks (what the next handshake or reconnect asks for
    /// again) and asks the server now. One the server refuses is taken out again, unless it
    /// was there before: it is not this client's, and not asked for again.
    async fn hold(
        &self,
        held: fn(&mut Shared) -> &mut BTreeSet<PoolName>,
        name: PoolName,
        action: &str,
        fields: Value,
    ) -> Result<(), ClientError> {
        let new = held(&mut lock(&self.inner.shared)).insert(name.clone());
        let asked = self.membership(action, fields).await;
        if new && matches!(asked, Err(ClientError::Remote(_))) {
            held(&mut lock(&self.inner.shared)).remove(&name);
        }
        asked.map(|_| ())
    }

    async fn membership(&self, action: &str, fields: Value) -> Result<Value, ClientError> {
        if !self.is_connected() {
            // Recorded locally; the next handshake carries it.
            return Ok(Value::Null);
        }
        self.request_json(action, fields).await
    }

    /// Calls a trigger in a pool; the server picks a handler: round-robin, passing over one with
    /// more calls in flight than the next (PROTOCOL.md §5.1).
    pub async fn call<T: Serialize + ?Sized>(&self, pool: &str, process: &str, data: &T) -> Result<Value, ClientError> {
        self.call_as(pool, process, data).await
    }

    /// [`call`](Self::call), with the result as JSON text, unparsed: a view into the reply
    /// frame. With a [`Payload`] as `data` too, the call never builds a [`Value`] — the
    /// bytes-level form, for forwarding payloads or parsing them with something else.
    pub async fn call_raw<T: Serialize + ?Sized>(
        &self,
        pool: &str,
        process: &str,
        data: &T,
    ) -> Result<Payload, ClientError> {
        self.call_as(pool, process, data).await
    }

    async fn call_as<T: Serialize + ?Sized, D: Form>(
        &self,
        pool: &str,
        process: &str,
        data: &T,
    ) -> Result<D, ClientError> {
        PoolName::check(pool)?;
        TriggerName::check(process)?;
        let inner = &self.inner;
        let ttl = inner.default_ttl();
        if let Some(h) = inner.local_handler(pool, process) {
            let data = D::from_json(data)?;
            return run_local(inner.app_id.as_str(), h, pool, process, data, ttl).await;
        }
        // The payload is serialised straight into the frame: no intermediate value.
        inner
            .roundtrip_as(
                |id| {
                    Ok(TriggerOut {
                        id,
                        process,
                        pool,
                        data,
                        ttl: ttl.as_millis() as u64,
                        destination: None,
                        reply_to: None,
                        broadcast: false,
                    }
                    .encode()?)
                },
                ttl,
            )
            .await
    }

    /// Calls a trigger on a specific app.
    pub async fn call_to<T: Serialize + ?Sized>(
        &self,
        pool: &str,
        process: &str,
        destination: &str,
        data: &T,
    ) -> Result<Value, ClientError> {
        self.request(pool, process)
            .destination(destination)
            .data(data)
            .send()
            .await
    }

    /// A call with options (timeout, destination, reply_to, broadcast).
    pub fn request(&self, pool: &str, process: &str) -> Call<'_> {
        Call {
            client: self,
            pool: pool.to_owned(),
            process: process.to_owned(),
            data: Ok(None),
            timeout: None,
            destination: None,
        }
    }

    /// Emits (fire-and-forget) to every handler of the trigger in the pool. Refusals arrive
    /// later as [`ClientEvent::ServerError`]; use [`Client::emit_confirmed`] to wait for them.
    pub async fn emit<T: Serialize + ?Sized>(&self, pool: &str, process: &str, data: &T) -> Result<(), ClientError> {
        PoolName::check(pool)?;
        TriggerName::check(process)?;
        let frame = EmitOut {
            id: None,
            process,
            pool,
            data,
        }
        .encode()?;
        self.inner.send(&frame).await
    }

    /// Emits and waits for the server's receipt: how many handlers it was queued to.
    pub async fn emit_confirmed<T: Serialize + ?Sized>(
        &self,
        pool: &str,
        process: &str,
        data: &T,
    ) -> Result<u64, ClientError> {
        PoolName::check(pool)?;
        TriggerName::check(process)?;
        let v = self
            .inner
            .roundtrip(
                |id| {
                    Ok(EmitOut {
                        id: Some(id),
                        process,
                        pool,
                        data,
                    }
                    .encode()?)
                },
                self.inner.opts.timeout(),
            )
            .await?;
        v["delivered"]
            .as_u64()
            .ok_or_else(|| ClientError::Protocol("emitted without delivered".into()))
    }
}

impl Inner {
    pub(crate) fn local_handler(&self, pool: &str, process: &str) -> Option<Handler> {
        // A handler registered before this call (in this thread, or in one this call's thread
        // synchronised with since) has its count visible here.
        if self.handler_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let registered = {
            let s = lock(&self.shared);
            // Triggers first: a client that only calls has none, and then no name is compared.
            s.triggers.contains(process) && s.pools.contains(pool)
        };
        if !registered {
            return None;
        }
        self.handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(process)
            .cloned()
    }

    /// The live connection's outbox.
    fn outbox(&self) -> Result<Outbox, ClientError> {
        if self.closed.is_closed() {
            return Err(ClientError::Closed);
        }
        let shared = lock(&self.shared);
        shared.tx.clone().ok_or_else(|| shared.disconnected(false))
    }

    /// The error of a request the connection's drop failed (see [`Shared::disconnected`]).
    pub(crate) fn disconnected(&self, sent: bool) -> ClientError {
        lock(&self.shared).disconnected(sent)
    }

    /// The ttl of a call that names none (see [`ServerLimits::default_ttl`]).
    pub(crate) fn default_ttl(&self) -> Duration {
        self.server_limits.default_ttl(self.opts.timeout())
    }

    pub(crate) async fn send(&self, frame: &[u8]) -> Result<(), ClientError> {
        self.server_limits.check_frame(frame)?;
        let tx = self.outbox()?;
        // Not queued: the connection was gone.
        tx.send(frame).await.map_err(|_| self.disconnected(false))
    }

    /// Sends a call's frame without waiting, if it can: queued when other calls are in flight
    /// and the queue has room. `None` when it must go through [`send_call`](Self::send_call).
    fn try_queue_call(&self, frame: &[u8]) -> Option<Result<(), ClientError>> {
        if self.pending.len().load(Ordering::Relaxed) <= 1 {
            return None;
        }
        // Queued under the client's lock: no outbox handle taken out of it and dropped again
        // (two reference-count changes per call). The lock order, the client's state before
        // the queue, is the one dropping the last handle in `connection_task` has.
        if self.closed.is_closed() {
            return Some(Err(ClientError::Closed));
        }
        let shared = lock(&self.shared);
        let Some(tx) = shared.tx.as_ref() else {
            return Some(Err(shared.disconnected(false)));
        };
        tx.try_queue(frame, None)
            .map(|done| done.map_err(|_| shared.disconnected(false)))
    }

    /// Sends a call's frame: written straight to the socket when it is the client's only call
    /// in flight (nothing to batch it with; no hop to the writer task), else queued, waiting
    /// for room. [`try_queue_call`](Self::try_queue_call) has been tried first.
    async fn send_call(&self, frame: &[u8]) -> Result<(), ClientError> {
        let tx = self.outbox()?;
        let sent = if self.pending.len().load(Ordering::Relaxed) > 1 {
            tx.send(frame).await
        } else {
            tx.send_direct(frame).await
        };
        sent.map_err(|_| self.disconnected(false))
    }

    /// Sends a request built around a fresh id and waits for the frame that answers it.
    pub(crate) async fn roundtrip_frame<F: Deref<Target = [u8]>>(
        &self,
        build: impl FnOnce(u64) -> Result<F, ClientError>,
        ttl: Duration,
    ) -> Result<Bytes, ClientError> {
        match self.await_reply(build, Want::Frame, ttl).await? {
            Reply::Frame(f) => Ok(f),
            _ => Err(wrong_form()),
        }
    }

    /// Sends a request built around a fresh id and waits for the whole frame that answers it;
    /// an error frame becomes `Err`.
    pub(crate) async fn roundtrip_full<F: Deref<Target = [u8]>>(
        &self,
        build: impl FnOnce(u64) -> Result<F, ClientError>,
        ttl: Duration,
    ) -> Result<latzero_proto::Frame, ClientError> {
        let Reply::Full(f) = self.await_reply(build, Want::Full, ttl).await? else {
            return Err(wrong_form());
        };
        if f.json().starts_with(br#"{"action":"error""#) {
            let env = ServerFrame::parse(f.json()).map_err(|e| ClientError::Protocol(e.to_string()))?;
            return Err(remote_error(&env).into());
        }
        Ok(f)
    }

    /// Sends a request built around a fresh id and waits for its result.
    pub(crate) async fn roundtrip<F: Deref<Target = [u8]>>(
        &self,
        build: impl FnOnce(u64) -> Result<F, ClientError>,
        ttl: Duration,
    ) -> Result<Value, ClientError> {
        self.roundtrip_as(build, ttl).await
    }

    /// [`roundtrip`](Self::roundtrip), with the result in the form `D`.
    pub(crate) async fn roundtrip_as<D: Form, F: Deref<Target = [u8]>>(
        &self,
        build: impl FnOnce(u64) -> Result<F, ClientError>,
        ttl: Duration,
    ) -> Result<D, ClientError> {
        D::from_reply(self.await_reply(build, D::WANT, ttl).await?).unwrap_or_else(|| Err(wrong_form()))
    }

    async fn await_reply<F: Deref<Target = [u8]>>(
        &self,
        build: impl FnOnce(u64) -> Result<F, ClientError>,
        want: Want,
        ttl: Duration,
    ) -> Result<Reply, ClientError> {
        let wait = ttl + reply_grace(ttl);
        // In the table with this poll's waker, so that the first look for the reply can be
        // saved when the send does not wait (`still_in_its_poll`), and given its id there.
        // Leaves the table if this future is dropped before its reply, or the frame fails.
        let mut call = std::future::poll_fn(|cx| Poll::Ready(self.pending.wait(want, wait, cx.waker()))).await;
        let frame = build(call.id())?;
        self.server_limits.check_frame(&frame)?;
        latzero_uds::spin::touch(self.spinner.as_ref());
        let sent = match self.try_queue_call(&frame) {
            Some(sent) => {
                call.still_in_its_poll();
                sent
            }
            None => self.send_call(&frame).await,
        };
        // Gone before the wait: a scratch frame goes back to its thread for the next call.
        drop(frame);
        sent?;
        let reply = std::future::poll_fn(|cx| call.poll_reply(cx)).await;
        // Without a reply: the client closed, the connection dropped, or the sweeper ended
        // the call when its wait ran out.
        reply.ok_or_else(|| {
            if self.closed.is_closed() {
                ClientError::Closed
            } else if call.expired() {
                ClientError::NoReply(wait)
            } else {
                self.disconnected(true)
            }
        })
    }

    pub(crate) fn fail_pending(&self) {
        // Every caller still waiting wakes to find its call gone: Disconnected.
        self.pending.clear();
    }

    pub(crate) fn event(&self, e: ClientEvent) {
        let _ = self.events.send(e);
    }

    /// A lease of this client's ended on the server's word (`lock_expired`): forgotten, and told.
    pub(crate) fn lease_ended(&self, key: crate::memory::BlockKey, exclusive: bool, reason: String) {
        lock(&self.leases).held.remove(&key);
        let (pool, block_id) = key;
        self.event(ClientEvent::LockExpired {
            pool,
            block_id,
            exclusive,
            reason,
        });
    }

    /// The connection dropped, and every lease with it: each is told, to the app and to the
    /// block's watches, as one the server ended is.
    pub(crate) fn leases_lost(&self) {
        let held: Vec<_> = {
            let mut leases = lock(&self.leases);
            leases.drops += 1;
            leases.held.drain().collect()
        };
        for (key, exclusive) in held {
            lock(&self.watches).lock_lost(&key);
            let why = "the connection to the server dropped: a lease ends with its connection, and is not taken again after a reconnect";
            self.lease_ended(key, exclusive, why.to_owned());
        }
    }

    /// Forgets a trigger this client handled: its handler, and its place in the next handshake.
    fn drop_trigger(&self, name: &TriggerName) {
        lock(&self.shared).triggers.remove(name);
        let mut handlers = self.handlers.write().unwrap_or_else(|e| e.into_inner());
        handlers.remove(name.as_str());
        self.handlers_changed(&handlers);
    }

    /// Called with `handlers`' write lock held, after any change to it.
    fn handlers_changed(&self, handlers: &FxHashMap<String, Handler>) {
        self.handler_count.store(handlers.len(), Ordering::Relaxed);
        // Release: a read loop that sees the new generation drops the handler it cached (the
        // change itself is seen through the lock, when it looks the handler up again).
        self.handler_gen.fetch_add(1, Ordering::Release);
    }

    /// A pool or trigger a reconnect's handshake left out (the server would have refused the
    /// whole handshake for it): dropped, and told, so that the client reconnects with the rest.
    pub(crate) fn refused(&self, r: latzero_proto::message::Refused) {
        let reason = format!("{}: {}", r.code, r.message);
        if let Some(pool) = r.pool {
            if let Ok(name) = PoolName::try_from(pool.as_str()) {
                let mut s = lock(&self.shared);
                s.pools.remove(&name);
                s.presence.remove(&name);
            }
            tracing::warn!(app = %self.app_id, pool, %reason, "the server refused a pool at reconnect; no longer a member");
            self.event(ClientEvent::PoolLeft { pool, reason });
        } else if let Some(trigger) = r.trigger {
            if let Ok(name) = TriggerName::try_from(trigger.as_str()) {
                self.drop_trigger(&name);
            }
            tracing::warn!(app = %self.app_id, trigger, %reason, "the server refused a trigger at reconnect; its handler is dropped");
            self.event(ClientEvent::TriggerRefused { trigger, reason });
        }
    }
}

/// What [`Client::create_pool`] creates.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    /// `local` (default) or `encrypted` (with `keys`); `global` is refused as not available yet.
    pub kind: String,
    /// Free text.
    pub description: String,
    /// Apps that may change or remove it (default: the creating app).
    pub owners: Option<Vec<String>>,
    /// Access policies (docs/PROTOCOL.md §4.4): `{"join": [...], "call": [...], "emit": [...],
    /// "read": [...], "write": [...]}`.
    pub policies: Option<Value>,
    /// `encrypted`: the verifiers of key generation 1 (from [`latzero_crypto::generate`]).
    pub keys: Option<latzero_crypto::Verifiers>,
}

/// The verifiers as the wire carries them (`keys` of `pool_create`/`pool_update`).
fn verifiers_json(v: &latzero_crypto::Verifiers) -> Value {
    use latzero_crypto::Verifiers;
    json!(KeyVerifiers {
        generation: v.generation,
        join: Verifiers::b64(&v.join),
        write: Verifiers::b64(&v.write),
    })
}

impl Default for PoolSpec {
    fn default() -> Self {
        PoolSpec {
            kind: "local".into(),
            description: String::new(),
            owners: None,
            policies: None,
            keys: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emit_frame_is_in_the_layout_the_server_reads_first() {
        let text = |f: ScratchFrame| String::from_utf8(f[4..].to_vec()).unwrap();
        let data = Payload::from_json(&1).unwrap();
        let mut e = EmitOut {
            id: None,
            process: "ev",
            pool: "p",
            data: &data,
        };
        // The layout latzero-proto's tests hand to the server's layout reader (`sdk_call`).
        assert_eq!(
            text(e.encode().unwrap()),
            r#"{"action":"emit","process":"ev","pool":"p","data":1}"#
        );
        e.id = Some(9);
        assert_eq!(
            text(e.encode().unwrap()),
            r#"{"action":"emit","id":9,"process":"ev","pool":"p","data":1}"#
        );
    }
}
