//! Encrypted pools in the SDK (docs/PROTOCOL.md §4.6): joining by proving the SigilKey, and
//! calls, emits, handlers, binary blocks and stream records whose contents are sealed end to end — encrypted
//! with the CipherShard, signed with the OblivionSeal, verified and checked for replays by every
//! reader. The server routes and stores only sealed records.
//!
//! ```no_run
//! # async fn demo() -> Result<(), latzero_client::ClientError> {
//! use latzero_client::{Client, PoolKeys};
//! let client = Client::connect("latzero://worker").await?;
//! // The texts `latzero keys generate vault` printed (any subset: a reader holds only the
//! // CipherShard, plus the SigilKey to join).
//! let keys = PoolKeys::parse("vault", ["lzk1.sigil.1....", "lzk1.cipher.1....", "lzk1.seal.1...."])?;
//! let vault = client.encrypted_pool("vault", keys).await?;
//! let answer = vault.call("lookup", &serde_json::json!({"id": 7})).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use latzero_crypto::{
    CONTEXT_BLOCK, CONTEXT_MSG, CONTEXT_STREAM, Opened, PoolKeys, ReplayGuard, Role, SealError, Verifiers, context,
    open, peek_generation, seal,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::call::{BroadcastReply, Form};
use crate::client::{Client, ClientEvent, lock};
use crate::error::ClientError;
use crate::handler::{HandlerError, Request};
use crate::memory::MemoryBlock;
use crate::payload::Payload;
use latzero_proto::ErrorCode;

/// How many times an append is sealed again after the server found it sealed before the
/// stream's newest record (another writer's append landed first).
const APPEND_TRIES: usize = 8;

/// Records read from a stream in an encrypted pool ([`EncryptedPool::consume`]).
#[derive(Debug)]
pub struct OpenedRecords {
    /// In stream order, each record's plaintext, or why it was refused: not sealed by a holder
    /// of the OblivionSeal, altered, sealed for another stream, or not sealed after the last
    /// record this pool handle read from the stream (a replay, or records put out of order).
    /// The consumer's cursor has moved past every one of them.
    pub records: Vec<Result<Vec<u8>, SealError>>,
    /// Records an overwriting stream dropped before this consumer read them.
    pub skipped: u64,
    /// The index of the next record this consumer will read.
    pub next_index: u64,
    /// The block's version when they were read.
    pub version: u64,
}

/// How long a sealed message stays acceptable (and its nonce remembered).
const REPLAY_WINDOW: Duration = Duration::from_secs(300);
/// Context prefix of a handler's sealed response (never valid as a request).
const CONTEXT_REPLY: &str = "reply";
/// Context prefix of a handler's sealed error (never valid as a request or an answer).
const CONTEXT_ERROR: &str = "error";
/// A sealed handler error on the wire is `{"sealed": "<base64 record>"}`.
const SEALED: &str = "sealed";

struct State {
    keys: PoolKeys,
    /// Write verifiers by key generation: derived from our OblivionSeal where we hold it,
    /// otherwise as the server gave them.
    writes: Mutex<HashMap<u32, [u8; 32]>>,
    guard: Mutex<ReplayGuard>,
}

impl State {
    fn seal(&self, ctx: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        seal(&self.keys, ctx, plaintext)
    }

    fn open(&self, ctx: &str, sealed: &[u8]) -> Result<Opened, SealError> {
        let generation = peek_generation(sealed)?;
        let verifier = lock(&self.writes)
            .get(&generation)
            .copied()
            .ok_or(SealError::UnknownGeneration(generation))?;
        open(&self.keys, ctx, sealed, &verifier)
    }

    fn seal_value<T: Serialize + ?Sized>(&self, ctx: &str, v: &T) -> Result<Value, ClientError> {
        let sealed = self.seal(ctx, &serde_json::to_vec(v)?)?;
        Ok(Value::String(B64.encode(sealed)))
    }

    /// Opens a sealed message (`data` as sent on the wire), once.
    fn open_message(&self, ctx: &str, data: &Value) -> Result<Value, ClientError> {
        let plaintext = self.open_once(ctx, data.as_str().ok_or(SealError::Malformed)?)?;
        Ok(serde_json::from_slice(&plaintext)?)
    }

    /// `data` sealed for `ctx` as it is written, as the wire carries it (a JSON string: the
    /// record in base64).
    fn seal_text(&self, ctx: &str, data: &Payload) -> Result<Payload, ClientError> {
        let sealed = self.seal(ctx, data.as_bytes())?;
        Ok(Payload::from_json(&B64.encode(sealed))?)
    }

    /// [`open_message`](Self::open_message) into the JSON text as it was sealed, not a value.
    fn open_text(&self, ctx: &str, data: &Payload) -> Result<Payload, ClientError> {
        let text: String = serde_json::from_str(data.as_str()).map_err(|_| SealError::Malformed)?;
        Ok(Payload::from_text(self.open_once(ctx, &text)?)?)
    }

    /// The plaintext of a sealed record given in base64, checked for replays.
    fn open_once(&self, ctx: &str, b64: &str) -> Result<Vec<u8>, ClientError> {
        let sealed = B64.decode(b64).map_err(|_| SealError::Malformed)?;
        let o = self.open(ctx, &sealed)?;
        lock(&self.guard).check_message(&o)?;
        Ok(o.plaintext)
    }

    /// A handler's error, sealed for `error/<trigger>` if it can be; if it cannot (a handler
    /// without the OblivionSeal), an error saying so, without the error's contents.
    fn seal_error(&self, trigger: &str, e: HandlerError) -> HandlerError {
        match self.seal_value(&context(CONTEXT_ERROR, trigger), &e.0) {
            Ok(sealed) => HandlerError(json!({ SEALED: sealed })),
            Err(err) => HandlerError::msg(format!("the handler failed, and cannot seal its error: {err}")),
        }
    }

    /// The error a call into the pool failed with: a handler's sealed error opened (or the
    /// reason it cannot be); anything else as it came, since not every error is a handler's
    /// (the server's own errors are plaintext).
    fn open_error(&self, trigger: &str, e: ClientError) -> ClientError {
        let ClientError::Handler(v) = &e else { return e };
        match v.as_object() {
            Some(m) if m.len() == 1 && m.contains_key(SEALED) => {
                match self.open_message(&context(CONTEXT_ERROR, trigger), &m[SEALED]) {
                    Ok(opened) => ClientError::Handler(opened),
                    Err(err) => err,
                }
            }
            _ => e,
        }
    }
}

/// A payload form a sealed handler takes: a [`Value`], or JSON text ([`Payload`]).
trait SealedForm: Sized {
    /// A request's payload as it came on the wire, opened.
    fn open(st: &State, ctx: &str, wire: &Self) -> Result<Self, ClientError>;
    /// An answer, sealed as the wire carries it.
    fn seal(st: &State, ctx: &str, plain: &Self) -> Result<Self, ClientError>;
}

impl SealedForm for Value {
    fn open(st: &State, ctx: &str, wire: &Self) -> Result<Self, ClientError> {
        st.open_message(ctx, wire)
    }

    fn seal(st: &State, ctx: &str, plain: &Self) -> Result<Self, ClientError> {
        st.seal_value(ctx, plain)
    }
}

impl SealedForm for Payload {
    fn open(st: &State, ctx: &str, wire: &Self) -> Result<Self, ClientError> {
        st.open_text(ctx, wire)
    }

    fn seal(st: &State, ctx: &str, plain: &Self) -> Result<Self, ClientError> {
        st.seal_text(ctx, plain)
    }
}

/// Serves `req` with `f`, a handler of an encrypted pool's handle for `pool`: in that pool the
/// payload is opened before `f` sees it (refused with a handler error if it does not open), and
/// the answer and any error `f` returns are sealed; in other pools `f` serves it as it is.
async fn serve_sealed<D, F, Fut>(st: &State, pool: &str, f: &F, mut req: Request<D>) -> Result<D, HandlerError>
where
    D: SealedForm,
    F: Fn(Request<D>) -> Fut,
    Fut: Future<Output = Result<D, HandlerError>>,
{
    if req.pool != pool {
        return f(req).await;
    }
    req.data = D::open(st, &context(CONTEXT_MSG, &req.process), &req.data)
        .map_err(|e| HandlerError::msg(format!("rejected sealed payload: {e}")))?;
    let process = req.process.clone();
    let answer = f(req).await.map_err(|e| st.seal_error(&process, e))?;
    D::seal(st, &context(CONTEXT_REPLY, &process), &answer)
        .map_err(|e| HandlerError::msg(format!("cannot seal the answer: {e}")))
}

/// An encrypted pool this app joined with its keys. Dropping it stops re-joining after a
/// reconnect (the app stays in the pool until then).
pub struct EncryptedPool {
    client: Client,
    pool: String,
    state: Arc<State>,
    rejoin: JoinHandle<()>,
    /// Held by an append from its seal to its answer: this handle's records leave in the order
    /// they were sealed (tasks on several threads could seal in one order and send in the
    /// other, and every crossing cost a refusal and a second seal).
    appending: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for EncryptedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedPool")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl Drop for EncryptedPool {
    fn drop(&mut self) {
        self.rejoin.abort();
    }
}

/// Proves the SigilKey for the pool's newest key generation and joins; returns the write
/// verifiers the server holds, checked against our own OblivionSeal where we have it.
async fn prove(client: &Client, keys: &PoolKeys) -> Result<HashMap<u32, [u8; 32]>, ClientError> {
    let pool = keys.pool();
    let ch = client.request_json("pool_challenge", json!({ "pool": pool })).await?;
    let bad = |what: &str| ClientError::Protocol(format!("pool_challenge answer without a valid `{what}`"));
    let generation = ch["generation"]
        .as_u64()
        .and_then(|g| u32::try_from(g).ok())
        .ok_or_else(|| bad("generation"))?;
    let nonce = ch["nonce"]
        .as_str()
        .and_then(|n| B64.decode(n).ok())
        .ok_or_else(|| bad("nonce"))?;
    let sig = keys.prove_join(generation, client.app_id().as_str(), &nonce)?;
    client
        .request_json("pool_prove", json!({ "pool": pool, "signature": B64.encode(sig) }))
        .await?;
    let mut writes = HashMap::new();
    for (g, v) in ch["write_verifiers"].as_object().into_iter().flatten() {
        let (Ok(g), Some(v)) = (g.parse::<u32>(), v.as_str().and_then(Verifiers::parse_key)) else {
            return Err(bad("write_verifiers"));
        };
        if keys.has(Role::Seal, g) && keys.has(Role::Sigil, g) {
            let ours = keys.verifiers(g)?.write;
            if ours != v {
                return Err(ClientError::Crypto(SealError::Mismatch(format!(
                    "the server's write verifier for key generation {g} does not match our OblivionSeal; refusing to trust it"
                ))));
            }
        }
        writes.insert(g, v);
    }
    Ok(writes)
}

impl Client {
    /// Joins an encrypted pool by proving its SigilKey (the key never leaves this process), and
    /// returns the handle through which this app's payloads and blocks in the pool are sealed
    /// and opened. After a reconnect the handle proves the key again and re-joins, unless the
    /// app was taken out of the pool meanwhile ([`ClientEvent::PoolLeft`]).
    pub async fn encrypted_pool(&self, pool: &str, keys: PoolKeys) -> Result<EncryptedPool, ClientError> {
        if keys.pool() != pool {
            return Err(ClientError::Crypto(SealError::Mismatch(format!(
                "these keys are for pool '{}', not '{pool}'",
                keys.pool()
            ))));
        }
        let writes = prove(self, &keys).await?;
        let state = Arc::new(State {
            keys,
            writes: Mutex::new(writes),
            guard: Mutex::new(ReplayGuard::new(REPLAY_WINDOW)),
        });
        let (client, st) = (self.clone(), state.clone());
        let mut events = self.events();
        let rejoin = tokio::spawn(async move {
            while let Ok(ev) = events.recv().await {
                match ev {
                    ClientEvent::Reconnected => match prove(&client, &st.keys).await {
                        Ok(w) => *lock(&st.writes) = w,
                        Err(e) => {
                            tracing::warn!(pool = st.keys.pool(), error = %e, "could not re-join the encrypted pool")
                        }
                    },
                    // Taken out of the pool (its owner removed it): not joined again.
                    ClientEvent::PoolLeft { pool, .. } if pool == st.keys.pool() => break,
                    _ => {}
                }
            }
        });
        Ok(EncryptedPool {
            client: self.clone(),
            pool: pool.to_owned(),
            state,
            rejoin,
            appending: tokio::sync::Mutex::new(()),
        })
    }
}

impl EncryptedPool {
    /// The pool.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// Calls a trigger with a sealed payload and opens the sealed answer (needs the CipherShard
    /// and OblivionSeal). A handler's error comes sealed too, and is opened into
    /// [`ClientError::Handler`]; the server's own errors (a timeout, no handler) are plaintext.
    pub async fn call<T: Serialize + ?Sized>(&self, process: &str, data: &T) -> Result<Value, ClientError> {
        self.call_on(None, process, data).await
    }

    /// [`call`](Self::call), run on the app `to` rather than on any handler of the trigger.
    pub async fn call_to<T: Serialize + ?Sized>(
        &self,
        to: &str,
        process: &str,
        data: &T,
    ) -> Result<Value, ClientError> {
        self.call_on(Some(to), process, data).await
    }

    /// [`call`](Self::call) to every handler of the trigger in the pool, as
    /// [`Call::broadcast`](crate::Call::broadcast): one result per handler, once all have
    /// answered or timed out, each answer and each handler's error opened (an answer that does
    /// not open is that handler's error: [`ClientError::Crypto`]).
    pub async fn broadcast<T: Serialize + ?Sized>(
        &self,
        process: &str,
        data: &T,
    ) -> Result<Vec<BroadcastReply>, ClientError> {
        let sealed = self.state.seal_value(&context(CONTEXT_MSG, process), data)?;
        self.broadcast_sealed(process, &sealed).await
    }

    /// [`broadcast`](Self::broadcast) with the payload and each answer as JSON text
    /// ([`Payload`]), as [`call_raw`](Self::call_raw): sealed and opened as they are written.
    pub async fn broadcast_raw(
        &self,
        process: &str,
        data: &Payload,
    ) -> Result<Vec<BroadcastReply<Payload>>, ClientError> {
        let sealed = self.state.seal_text(&context(CONTEXT_MSG, process), data)?;
        self.broadcast_sealed(process, &sealed).await
    }

    /// Broadcasts `sealed` and opens each answer, and each handler's error, in the form `D`.
    async fn broadcast_sealed<D: SealedForm + Form + Serialize>(
        &self,
        process: &str,
        sealed: &D,
    ) -> Result<Vec<BroadcastReply<D>>, ClientError> {
        let replies = self
            .client
            .request(&self.pool, process)
            .data(sealed)
            .broadcast_as::<D>()
            .await?;
        let reply = context(CONTEXT_REPLY, process);
        Ok(replies
            .into_iter()
            .map(|r| BroadcastReply {
                result: match r.result {
                    Ok(answer) => D::open(&self.state, &reply, &answer).map_err(Arc::new),
                    Err(e) => match &*e {
                        ClientError::Handler(v) => Err(Arc::new(
                            self.state.open_error(process, ClientError::Handler(v.clone())),
                        )),
                        _ => Err(e),
                    },
                },
                app_id: r.app_id,
            })
            .collect())
    }

    /// [`call`](Self::call) with the payload and the answer as JSON text ([`Payload`]), as
    /// [`Client::call_raw`]: sealed and opened as they are written, never read into a value
    /// (an integer past 64 bits keeps its digits).
    pub async fn call_raw(&self, process: &str, data: &Payload) -> Result<Payload, ClientError> {
        self.call_raw_on(None, process, data).await
    }

    /// [`call_raw`](Self::call_raw), run on the app `to`.
    pub async fn call_raw_to(&self, to: &str, process: &str, data: &Payload) -> Result<Payload, ClientError> {
        self.call_raw_on(Some(to), process, data).await
    }

    async fn call_raw_on(&self, to: Option<&str>, process: &str, data: &Payload) -> Result<Payload, ClientError> {
        let sealed = self.state.seal_text(&context(CONTEXT_MSG, process), data)?;
        self.call_sealed(to, process, &sealed).await
    }

    async fn call_on<T: Serialize + ?Sized>(
        &self,
        to: Option<&str>,
        process: &str,
        data: &T,
    ) -> Result<Value, ClientError> {
        let sealed = self.state.seal_value(&context(CONTEXT_MSG, process), data)?;
        self.call_sealed(to, process, &sealed).await
    }

    /// Sends `sealed` (on `to`, if it names an app) and opens the answer, or the handler's
    /// error, in the form `D`.
    async fn call_sealed<D: SealedForm + Form + Serialize>(
        &self,
        to: Option<&str>,
        process: &str,
        sealed: &D,
    ) -> Result<D, ClientError> {
        let mut req = self.client.request(&self.pool, process).data(sealed);
        if let Some(to) = to {
            req = req.destination(to);
        }
        match req.send_as::<D>().await {
            Ok(answer) => D::open(&self.state, &context(CONTEXT_REPLY, process), &answer),
            Err(e) => Err(self.state.open_error(process, e)),
        }
    }

    /// Emits a sealed payload (needs the CipherShard and OblivionSeal), and waits for the
    /// server's receipt.
    pub async fn emit<T: Serialize + ?Sized>(&self, process: &str, data: &T) -> Result<(), ClientError> {
        self.emit_confirmed(process, data).await.map(|_| ())
    }

    /// [`emit`](Self::emit), returning how many handlers the event reached (the server's
    /// receipt, as [`Client::emit_confirmed`]).
    pub async fn emit_confirmed<T: Serialize + ?Sized>(&self, process: &str, data: &T) -> Result<u64, ClientError> {
        let sealed = self.state.seal_value(&context(CONTEXT_MSG, process), data)?;
        self.client.emit_confirmed(&self.pool, process, &sealed).await
    }

    /// Handles a trigger: calls and emits in this pool arrive opened (verified, decrypted,
    /// checked for replays — anything else is refused with a handler error and never reaches
    /// `f`), and the answer is sealed (so answering needs the OblivionSeal), and so is an error
    /// `f` returns: a handler that cannot seal sends an error saying so instead of its error's
    /// contents. In other pools the handler sees payloads as they are.
    pub async fn handle<F, Fut>(&self, trigger: &str, f: F) -> Result<(), ClientError>
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
    {
        let (st, pool, f) = (self.state.clone(), self.pool.clone(), Arc::new(f));
        self.client
            .handle(trigger, move |req| {
                let (st, pool, f) = (st.clone(), pool.clone(), f.clone());
                async move { serve_sealed(&st, &pool, &*f, req).await }
            })
            .await
    }

    /// [`handle`](Self::handle) with payloads as JSON text ([`Payload`]), as
    /// [`Client::handle_raw`]: a request's payload opened into the text it was sealed as, and
    /// the answer sealed as it is written, never read into a value.
    pub async fn handle_raw<F, Fut>(&self, trigger: &str, f: F) -> Result<(), ClientError>
    where
        F: Fn(Request<Payload>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Payload, HandlerError>> + Send + 'static,
    {
        let (st, pool, f) = (self.state.clone(), self.pool.clone(), Arc::new(f));
        self.client
            .handle_raw(trigger, move |req| {
                let (st, pool, f) = (st.clone(), pool.clone(), f.clone());
                async move { serve_sealed(&st, &pool, &*f, req).await }
            })
            .await
    }

    /// Writes `plaintext` as the block's sealed record (length-prefixed at offset 0; the block
    /// must hold 4 + 28 + plaintext + 16 + 64 bytes). Returns the block version.
    pub async fn write_block(&self, block: &MemoryBlock, plaintext: &[u8]) -> Result<u64, ClientError> {
        let sealed = self.state.seal(&context(CONTEXT_BLOCK, block.id()), plaintext)?;
        let mut rec = Vec::with_capacity(4 + sealed.len());
        rec.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
        rec.extend_from_slice(&sealed);
        block.write(0, &rec).await
    }

    /// Writes `doc` as JSON into a binary block of the pool, as its sealed record
    /// ([`write_block`](Self::write_block)). An encrypted pool keeps its documents this way: the
    /// server cannot check a document it cannot read, so json blocks are not available there.
    pub async fn write_json<T: Serialize + ?Sized>(&self, block: &MemoryBlock, doc: &T) -> Result<u64, ClientError> {
        self.write_block(block, &serde_json::to_vec(doc)?).await
    }

    /// The document [`write_json`](Self::write_json) sealed into the block, and the block's
    /// version ([`read_block`](Self::read_block), then JSON).
    pub async fn read_json<T: DeserializeOwned>(&self, block: &MemoryBlock) -> Result<(T, u64), ClientError> {
        let (bytes, version) = self.read_block(block).await?;
        Ok((serde_json::from_slice(&bytes)?, version))
    }

    /// Appends `plaintext` to a stream block of the pool as one sealed record (the record takes
    /// 28 + plaintext + 16 + 64 bytes of the ring, plus the ring's own 8 and padding). It goes
    /// through the server even where the block is mapped: the server checks the signature and
    /// that the record was sealed after the stream's newest, so the stream's records are in the
    /// order they were sealed. One append of this handle is in flight at a time, so its records
    /// leave in the order they were sealed; one that another writer's append overtook is sealed
    /// again (up to 8 times in all). Returns the record's index and the block's version.
    pub async fn append(&self, block: &MemoryBlock, plaintext: &[u8]) -> Result<(u64, u64), ClientError> {
        let ctx = context(CONTEXT_STREAM, block.id());
        let _in_order = self.appending.lock().await;
        let mut tries = 0;
        loop {
            let sealed = self.state.seal(&ctx, plaintext)?;
            match block.append_through_server(&sealed).await {
                Err(e) if e.code() == Some(ErrorCode::StaleRecord) && tries + 1 < APPEND_TRIES => tries += 1,
                r => return r,
            }
        }
    }

    /// Reads up to `max` records of a stream block of the pool from the named consumer's
    /// cursor (which moves past them, as [`MemoryBlock::consume`]), each verified and decrypted.
    /// A record that does not open, or was not sealed after the last one this handle read from
    /// the stream, is returned as its error in its place rather than failing the others.
    pub async fn consume(&self, block: &MemoryBlock, consumer: &str, max: usize) -> Result<OpenedRecords, ClientError> {
        let ctx = context(CONTEXT_STREAM, block.id());
        let r = block.consume(consumer, max).await?;
        let records = r
            .records
            .iter()
            .map(|sealed| {
                let o = self.state.open(&ctx, sealed)?;
                lock(&self.state.guard).check_stream(&ctx, &o)?;
                Ok(o.plaintext)
            })
            .collect();
        Ok(OpenedRecords {
            records,
            skipped: r.skipped,
            next_index: r.next_index,
            version: r.version,
        })
    }

    /// Reads, verifies and decrypts the block's sealed record. A record older than one this
    /// handle already read (a replayed old write) is refused.
    pub async fn read_block(&self, block: &MemoryBlock) -> Result<(Vec<u8>, u64), ClientError> {
        let ctx = context(CONTEXT_BLOCK, block.id());
        for _ in 0..3 {
            let (prefix, _) = block.read(0, 4).await?;
            let len = u32::from_be_bytes(prefix[..4].try_into().map_err(|_| SealError::Malformed)?) as u64;
            if len == 0 || 4 + len > block.size() {
                return Err(SealError::Malformed.into());
            }
            let (buf, version) = block.read(0, 4 + len).await?;
            if buf[..4] != prefix[..4] {
                continue; // rewritten between the two reads
            }
            let o = self.state.open(&ctx, &buf[4..])?;
            lock(&self.state.guard).check_block(&ctx, &o)?;
            return Ok((o.plaintext, version));
        }
        Err(ClientError::Protocol(
            "the block kept changing while being read; try again".into(),
        ))
    }
}
