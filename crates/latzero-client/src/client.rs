//! The client: one logical connection to the server that survives reconnects.
//!
//! Ownership: a connection task owns the socket's read side and the reconnect loop; a writer
//! task owns the write side and drains a bounded queue (a full queue makes `call`/`emit` wait:
//! backpressure, never unbounded memory). Pending calls sit in a map keyed by our numeric id;
//! each leaves it by reply, by its local deadline, or when the connection drops (then it fails
//! at once with [`ClientError::Disconnected`]).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use latzero_proto::frame::{Frame, encode_message};
use latzero_proto::message::{RawValue, ServerFrame};
use latzero_proto::{AppId, Endpoint, ErrorCode, LatzeroUrl, PROTOCOL_VERSION, PoolName, TriggerName};
use rand::Rng;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::connection::{FrameReader, open, writer_task};
use crate::error::{ClientError, RemoteError};
use crate::handler::{HandlerError, HandlerFn, Request, invoke};
use crate::options::ClientOptions;

/// Something that happened to the client, for the application to observe.
#[derive(Debug, Clone)]
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
    /// An app joined or left a pool this client subscribed to.
    Presence {
        /// The pool.
        pool: String,
        /// The app.
        app_id: String,
        /// True for joined, false for left.
        joined: bool,
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

/// One handler's part of a broadcast result.
#[derive(Debug, Clone)]
pub struct BroadcastReply {
    /// The handler.
    pub app_id: String,
    /// Its result.
    pub result: Result<Value, Arc<ClientError>>,
}

struct Shared {
    pools: BTreeSet<PoolName>,
    triggers: BTreeSet<TriggerName>,
    tx: Option<mpsc::Sender<Bytes>>,
}

pub(crate) struct Inner {
    app_id: AppId,
    endpoint: Endpoint,
    opts: ClientOptions,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Bytes>>>,
    handlers: RwLock<HashMap<String, HandlerFn>>,
    shared: Mutex<Shared>,
    events: broadcast::Sender<ClientEvent>,
    closed: CancellationToken,
}

struct CloseOnDrop(CancellationToken);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A connected LatZero app. Clones share the connection; it closes when the last clone drops
/// (or on [`Client::close`]).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
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

/// A live connection: its frame reader and the queue to its writer.
struct Live {
    reader: FrameReader,
    tx: mpsc::Sender<Bytes>,
    dead: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

fn raw_to_value(raw: Option<&RawValue>) -> Result<Value, ClientError> {
    Ok(match raw {
        Some(r) => serde_json::from_str(r.get())?,
        None => Value::Null,
    })
}

/// Turns a reply frame into the call's result.
fn reply_result(frame: &[u8]) -> Result<Value, ClientError> {
    let env = ServerFrame::parse(frame).map_err(|e| ClientError::Protocol(format!("bad reply: {e}")))?;
    match env.action() {
        Some("error") => Err(remote_error(&env).into()),
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
    pub async fn connect_with(url: &str, opts: ClientOptions) -> Result<Client, ClientError> {
        let url: LatzeroUrl = url.parse()?;
        let triggers = opts
            .triggers
            .iter()
            .map(|t| TriggerName::try_from(t.as_str()))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            app_id: url.app_id,
            endpoint: url.endpoint,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            handlers: RwLock::new(HashMap::new()),
            shared: Mutex::new(Shared {
                pools: url.pools.into_iter().collect(),
                triggers,
                tx: None,
            }),
            events,
            closed: CancellationToken::new(),
            opts,
        });
        let live = establish(&inner, inner.opts.takeover).await?;
        lock(&inner.shared).tx = Some(live.tx.clone());
        let guard = Arc::new(CloseOnDrop(inner.closed.clone()));
        tokio::spawn(connection_task(inner.clone(), live));
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

    /// Closes the connection. Calls in flight fail with `Disconnected`.
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    /// Registers a handler for a trigger and announces it to the server.
    pub async fn handle<F, Fut>(&self, trigger: &str, f: F) -> Result<(), ClientError>
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
    {
        let name = TriggerName::try_from(trigger)?;
        let h: HandlerFn = Arc::new(move |req| Box::pin(f(req)));
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), h);
        let new = lock(&self.inner.shared).triggers.insert(name.clone());
        if new || !self.is_connected() {
            self.membership("register", json!({ "triggers": [name.as_str()] }))
                .await?;
        }
        Ok(())
    }

    /// Unregisters a trigger and drops its handler.
    pub async fn unhandle(&self, trigger: &str) -> Result<(), ClientError> {
        let name = TriggerName::try_from(trigger)?;
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name.as_str());
        lock(&self.inner.shared).triggers.remove(&name);
        self.membership("unregister", json!({ "triggers": [name.as_str()] }))
            .await
            .map(|_| ())
    }

    /// Joins a pool (created on first join).
    pub async fn join(&self, pool: &str) -> Result<(), ClientError> {
        let name = PoolName::try_from(pool)?;
        lock(&self.inner.shared).pools.insert(name.clone());
        self.membership("join", json!({ "pools": [name.as_str()] }))
            .await
            .map(|_| ())
    }

    /// Leaves a pool.
    pub async fn leave(&self, pool: &str) -> Result<(), ClientError> {
        let name = PoolName::try_from(pool)?;
        lock(&self.inner.shared).pools.remove(&name);
        self.membership("leave", json!({ "pools": [name.as_str()] }))
            .await
            .map(|_| ())
    }

    /// Asks for presence events of a pool; they arrive as [`ClientEvent::Presence`].
    pub async fn subscribe_presence(&self, pool: &str) -> Result<(), ClientError> {
        let name = PoolName::try_from(pool)?;
        self.membership("presence_subscribe", json!({ "pool": name.as_str() }))
            .await
            .map(|_| ())
    }

    async fn membership(&self, action: &str, mut fields: Value) -> Result<Value, ClientError> {
        if !self.is_connected() {
            // Recorded locally; the next handshake carries it.
            return Ok(Value::Null);
        }
        fields["action"] = json!(action);
        let timeout = self.inner.opts.request_timeout;
        self.inner
            .roundtrip(
                |id| {
                    fields["id"] = json!(id);
                    encode_message(&fields)
                },
                timeout,
            )
            .await
    }

    /// Calls a trigger in a pool; the server picks a handler round-robin.
    pub async fn call<T: Serialize + ?Sized>(&self, pool: &str, process: &str, data: &T) -> Result<Value, ClientError> {
        self.request(pool, process).data(data).send().await
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
        let data = serde_json::value::to_raw_value(data)?;
        let frame = encode_message(&json!({"action": "emit", "process": process, "pool": pool, "data": &*data}));
        self.inner.send(frame).await
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
        let data = serde_json::value::to_raw_value(data)?;
        let v = self
            .inner
            .roundtrip(
                |id| {
                    encode_message(
                        &json!({"action": "emit", "id": id, "process": process, "pool": pool, "data": &*data}),
                    )
                },
                self.inner.opts.request_timeout,
            )
            .await?;
        v["delivered"]
            .as_u64()
            .ok_or_else(|| ClientError::Protocol("emitted without delivered".into()))
    }
}

/// A call being built. Finish with [`send`](Call::send), [`broadcast`](Call::broadcast) or
/// [`forward`](Call::forward).
#[derive(Debug)]
pub struct Call<'a> {
    client: &'a Client,
    pool: String,
    process: String,
    data: Result<Option<Box<RawValue>>, serde_json::Error>,
    timeout: Option<Duration>,
    destination: Option<String>,
}

#[derive(Serialize)]
struct TriggerOut<'a> {
    action: &'static str,
    id: u64,
    process: &'a str,
    pool: &'a str,
    data: &'a RawValue,
    ttl: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    broadcast: bool,
}

impl Call<'_> {
    /// The payload (any `Serialize`; default `null`).
    pub fn data<T: Serialize + ?Sized>(mut self, data: &T) -> Self {
        self.data = serde_json::value::to_raw_value(data).map(Some);
        self
    }

    /// This call's timeout (sent as `ttl`), instead of the client's default.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Run the call on this app.
    pub fn destination(mut self, app: &str) -> Self {
        self.destination = Some(app.to_owned());
        self
    }

    fn ttl(&self) -> Duration {
        self.timeout.unwrap_or(self.client.inner.opts.request_timeout)
    }

    fn check(&self) -> Result<(), ClientError> {
        PoolName::check(&self.pool)?;
        TriggerName::check(&self.process)?;
        if let Some(d) = &self.destination {
            AppId::check(d)?;
        }
        Ok(())
    }

    /// Sends the call and waits for its result.
    pub async fn send(mut self) -> Result<Value, ClientError> {
        self.check()?;
        let data = std::mem::replace(&mut self.data, Ok(None))?;
        let inner = &self.client.inner;
        let local = self.destination.as_deref().is_none_or(|d| d == inner.app_id.as_str());
        if local && let Some(h) = inner.local_handler(&self.pool, &self.process) {
            let req = Request {
                process: self.process.clone(),
                pool: self.pool.clone(),
                data: raw_to_value(data.as_deref())?,
                origin: None,
                is_emit: false,
            };
            let ttl = self.timeout.unwrap_or(inner.opts.request_timeout);
            return match tokio::time::timeout(ttl, invoke(h, req)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(HandlerError(e))) => Err(ClientError::Handler(e)),
                Err(_) => Err(RemoteError {
                    code: ErrorCode::Timeout,
                    message: format!(
                        "in-process call timed out after {} ms; the handler may still run it",
                        ttl.as_millis()
                    ),
                    handler: Some(inner.app_id.to_string()),
                    handler_may_still_run: Some(true),
                }
                .into()),
            };
        }
        let ttl = self.ttl();
        let data = data.as_deref().unwrap_or(RawValue::NULL);
        let frame = inner
            .roundtrip_frame(
                |id| {
                    encode_message(&TriggerOut {
                        action: "trigger",
                        id,
                        process: &self.process,
                        pool: &self.pool,
                        data,
                        ttl: ttl.as_millis() as u64,
                        destination: self.destination.as_deref(),
                        reply_to: None,
                        broadcast: false,
                    })
                },
                ttl,
            )
            .await?;
        reply_result(&frame)
    }

    /// Sends the call to every handler of the trigger in the pool; returns one result per
    /// handler once all have answered or timed out.
    pub async fn broadcast(mut self) -> Result<Vec<BroadcastReply>, ClientError> {
        self.check()?;
        let ttl = self.ttl();
        let data = std::mem::replace(&mut self.data, Ok(None))?;
        let data = data.as_deref().unwrap_or(RawValue::NULL);
        let frame = self
            .client
            .inner
            .roundtrip_frame(
                |id| {
                    encode_message(&TriggerOut {
                        action: "trigger",
                        id,
                        process: &self.process,
                        pool: &self.pool,
                        data,
                        ttl: ttl.as_millis() as u64,
                        destination: None,
                        reply_to: None,
                        broadcast: true,
                    })
                },
                ttl,
            )
            .await?;
        let env = ServerFrame::parse(&frame).map_err(|e| ClientError::Protocol(format!("bad reply: {e}")))?;
        if env.action() == Some("error") {
            return Err(remote_error(&env).into());
        }
        let v: Value = serde_json::from_slice(&frame)?;
        let list = v
            .get("responses")
            .and_then(Value::as_array)
            .ok_or_else(|| ClientError::Protocol("broadcast reply without responses".into()))?;
        Ok(list.iter().map(broadcast_entry).collect())
    }

    /// Sends the call with its result going to another app (`reply_to`), which receives it as
    /// [`ClientEvent::Forwarded`]. Returns the app that is running the call once the server
    /// has handed it over.
    pub async fn forward(mut self, reply_to: &str) -> Result<String, ClientError> {
        self.check()?;
        AppId::check(reply_to)?;
        let ttl = self.ttl();
        let data = std::mem::replace(&mut self.data, Ok(None))?;
        let data = data.as_deref().unwrap_or(RawValue::NULL);
        let v = self
            .client
            .inner
            .roundtrip(
                |id| {
                    encode_message(&TriggerOut {
                        action: "trigger",
                        id,
                        process: &self.process,
                        pool: &self.pool,
                        data,
                        ttl: ttl.as_millis() as u64,
                        destination: self.destination.as_deref(),
                        reply_to: Some(reply_to),
                        broadcast: false,
                    })
                },
                ttl,
            )
            .await?;
        Ok(v["handler"].as_str().unwrap_or_default().to_owned())
    }
}

fn broadcast_entry(e: &Value) -> BroadcastReply {
    let app_id = e["app_id"].as_str().unwrap_or_default().to_owned();
    let result = match (e["status"].as_str(), e.get("code")) {
        (Some("ok"), _) => Ok(e.get("response").cloned().unwrap_or(Value::Null)),
        (_, Some(code)) => Err(Arc::new(ClientError::Remote(RemoteError {
            code: serde_json::from_value(code.clone()).unwrap_or(ErrorCode::Internal),
            message: e["message"].as_str().unwrap_or_default().to_owned(),
            handler: Some(app_id.clone()),
            handler_may_still_run: None,
        }))),
        _ => Err(Arc::new(ClientError::Handler(
            e.get("error").cloned().unwrap_or(Value::Null),
        ))),
    };
    BroadcastReply { app_id, result }
}

impl Inner {
    fn local_handler(&self, pool: &str, process: &str) -> Option<HandlerFn> {
        let registered = {
            let s = lock(&self.shared);
            s.pools.contains(pool) && s.triggers.contains(process)
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

    async fn send(&self, frame: Bytes) -> Result<(), ClientError> {
        if self.closed.is_cancelled() {
            return Err(ClientError::Closed);
        }
        let tx = lock(&self.shared).tx.clone().ok_or(ClientError::Disconnected)?;
        tx.send(frame).await.map_err(|_| ClientError::Disconnected)
    }

    /// Sends a request built around a fresh id and waits for the frame that answers it.
    async fn roundtrip_frame(&self, build: impl FnOnce(u64) -> Bytes, ttl: Duration) -> Result<Bytes, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        if let Err(e) = self.send(build(id)).await {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        // The server answers by the ttl; the grace covers its timer and the trip back.
        let wait = ttl + Duration::from_secs(1).max(ttl / 10);
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(if self.closed.is_cancelled() {
                ClientError::Closed
            } else {
                ClientError::Disconnected
            }),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(ClientError::NoReply(wait))
            }
        }
    }

    async fn roundtrip(&self, build: impl FnOnce(u64) -> Bytes, ttl: Duration) -> Result<Value, ClientError> {
        let frame = self.roundtrip_frame(build, ttl).await?;
        reply_result(&frame)
    }

    fn fail_pending(&self) {
        // Dropping the senders wakes every waiter with Disconnected.
        lock(&self.pending).clear();
    }

    fn event(&self, e: ClientEvent) {
        let _ = self.events.send(e);
    }

    /// Handles one frame from the server. Returns why the server is closing us, if it said so.
    fn dispatch(self: &Arc<Self>, frame: Frame, tx: &mpsc::Sender<Bytes>) -> Option<Closing> {
        let json = frame.json();
        let env = match ServerFrame::parse(json) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(error = %e, "unparseable frame from the server");
                return None;
            }
        };
        match env.action() {
            Some(action @ ("trigger" | "emit")) => self.deliver(&env, action == "emit", tx),
            Some("presence") => self.event(ClientEvent::Presence {
                pool: env.pool.as_deref().unwrap_or_default().to_owned(),
                app_id: env.app_id.as_deref().unwrap_or_default().to_owned(),
                joined: env.event.as_deref() == Some("joined"),
            }),
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
                let id = env.in_reply_to.and_then(|r| r.get().parse::<u64>().ok());
                match id.and_then(|id| lock(&self.pending).remove(&id)) {
                    Some(waiter) => {
                        let _ = waiter.send(json.clone());
                    }
                    None if action == "error" => self.event(ClientEvent::ServerError(remote_error(&env))),
                    None => tracing::debug!(action, "reply for a request no longer waiting"),
                }
            }
            None => tracing::warn!("frame from the server without an action"),
        }
        None
    }

    /// Runs a delivered trigger or emit on its handler, in its own task.
    fn deliver(self: &Arc<Self>, env: &ServerFrame<'_>, is_emit: bool, tx: &mpsc::Sender<Bytes>) {
        let process = env.process.as_deref().unwrap_or_default().to_owned();
        let handler = self
            .handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&process)
            .cloned();
        let data = match raw_to_value(env.data) {
            Ok(v) => v,
            Err(_) => Value::Null,
        };
        let origin = env
            .origin
            .and_then(|o| serde_json::from_str::<Value>(o.get()).ok())
            .and_then(|o| o["app_id"].as_str().map(str::to_owned));
        let req = Request {
            process: process.clone(),
            pool: env.pool.as_deref().unwrap_or_default().to_owned(),
            data,
            origin,
            is_emit,
        };
        let hop = env.id.map(|r| r.to_owned());
        let tx = tx.clone();
        tokio::spawn(async move {
            let result = match handler {
                Some(h) => invoke(h, req).await,
                None => Err(HandlerError::msg(format!("this app has no handler for '{process}'"))),
            };
            if is_emit {
                if let Err(HandlerError(e)) = result {
                    tracing::warn!(trigger = %process, error = %e, "emit handler failed");
                }
                return;
            }
            let Some(hop) = hop else { return };
            let frame = match &result {
                Ok(v) => {
                    encode_message(&json!({"action": "response", "in_reply_to": &*hop, "status": "ok", "response": v}))
                }
                Err(HandlerError(e)) => {
                    encode_message(&json!({"action": "response", "in_reply_to": &*hop, "status": "error", "error": e}))
                }
            };
            // If the connection dropped meanwhile, the server has already failed the call
            // with HANDLER_GONE; there is nobody to send this to.
            let _ = tx.send(frame).await;
        });
    }
}

/// The server's `closing` notice.
struct Closing {
    reason: String,
    /// Another connection took over this app id.
    taken_over: bool,
}

/// Connects and handshakes with the client's current pools and triggers.
async fn establish(inner: &Arc<Inner>, takeover: bool) -> Result<Live, ClientError> {
    let (r, mut w) = open(&inner.endpoint).await?;
    let mut reader = FrameReader::new(r, inner.opts.max_frame_len);
    let handshake = {
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
        })
    };
    w.write_all(&encode_message(&handshake))
        .await
        .map_err(|e| ClientError::Connect {
            endpoint: inner.endpoint.to_string(),
            source: e,
        })?;
    let wait = inner.opts.request_timeout;
    let ack = async {
        loop {
            let frame = reader
                .next()
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?
                .ok_or(ClientError::Disconnected)?;
            let env = ServerFrame::parse(frame.json()).map_err(|e| ClientError::Protocol(e.to_string()))?;
            match env.action() {
                Some("handshake_ack") => return Ok(()),
                Some("error") => return Err(ClientError::Remote(remote_error(&env))),
                _ => continue,
            }
        }
    };
    tokio::time::timeout(wait, ack)
        .await
        .map_err(|_| ClientError::NoReply(wait))??;
    let (tx, rx) = mpsc::channel(inner.opts.write_queue);
    let dead = CancellationToken::new();
    tokio::spawn(writer_task(rx, w, dead.clone()));
    Ok(Live { reader, tx, dead })
}

/// Owns the connection: reads frames, and reconnects when it drops.
async fn connection_task(inner: Arc<Inner>, mut live: Live) {
    loop {
        let mut reason = String::from("server closed the connection");
        let mut taken_over = false;
        loop {
            let frame = tokio::select! {
                _ = inner.closed.cancelled() => { reason = "client closed".into(); break; }
                _ = live.dead.cancelled() => { reason = "write to the server failed".into(); break; }
                f = live.reader.next() => f,
            };
            match frame {
                Ok(Some(f)) => {
                    if let Some(c) = inner.dispatch(f, &live.tx) {
                        reason = c.reason;
                        taken_over = c.taken_over;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    reason = e.to_string();
                    break;
                }
            }
        }
        lock(&inner.shared).tx = None;
        live.dead.cancel();
        inner.fail_pending();
        let reconnecting = !inner.closed.is_cancelled() && inner.opts.reconnect && !taken_over;
        inner.event(ClientEvent::Disconnected {
            reason: reason.clone(),
            reconnecting,
        });
        if !reconnecting {
            return;
        }
        tracing::info!(app = %inner.app_id, %reason, "connection lost; reconnecting");
        let mut attempt = 0u32;
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
            match establish(&inner, inner.opts.takeover).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::debug!(app = %inner.app_id, error = %e, attempt, "reconnect failed");
                    attempt += 1;
                }
            }
        };
        lock(&inner.shared).tx = Some(live.tx.clone());
        tracing::info!(app = %inner.app_id, "reconnected");
        inner.event(ClientEvent::Reconnected);
    }
}
