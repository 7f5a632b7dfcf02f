//! Memory blocks in the SDK: [`MemoryBlock`] maps the block's file when the server is on this
//! machine (zero copy: reads and writes touch the mapping, the server only hears a short
//! `block_notify` after a write so that watchers are told), and goes through the server with
//! binary frames otherwise. Locks and watches are always the server's.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use latzero_memory::Block;
use latzero_proto::frame::{Frame, encode_binary, encode_message};
use latzero_proto::message::{BlockType, LockMode};
use latzero_proto::{BlockId, ErrorCode, PoolName};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::client::{Client, Inner, lock};
use crate::error::{ClientError, RemoteError};

/// Events queued to one [`BlockWatch`] before it counts as lagging.
const WATCH_QUEUE: usize = 1024;

/// What to create.
#[derive(Debug, Clone)]
pub struct BlockOptions {
    kind: BlockType,
    size: u64,
    persistent: bool,
    read: Vec<String>,
    write: Vec<String>,
    overwrite: bool,
}

impl BlockOptions {
    /// Raw bytes.
    pub fn binary(size: u64) -> Self {
        Self::new(BlockType::Binary, size)
    }

    /// One JSON document of at most `size` bytes (starts as `null`).
    pub fn json(size: u64) -> Self {
        Self::new(BlockType::Json, size)
    }

    /// A ring of records of `size` bytes.
    pub fn stream(size: u64) -> Self {
        Self::new(BlockType::Stream, size)
    }

    fn new(kind: BlockType, size: u64) -> Self {
        BlockOptions {
            kind,
            size,
            persistent: false,
            read: vec!["*".into()],
            write: vec!["*".into()],
            overwrite: false,
        }
    }

    /// Keep the block and its content across server restarts.
    pub fn persistent(mut self) -> Self {
        self.persistent = true;
        self
    }

    /// Apps that may read (`"*"`: every member of the pool; the default).
    pub fn readers<S: Into<String>>(mut self, apps: impl IntoIterator<Item = S>) -> Self {
        self.read = apps.into_iter().map(Into::into).collect();
        self
    }

    /// Apps that may write (`"*"`: every member of the pool; the default).
    pub fn writers<S: Into<String>>(mut self, apps: impl IntoIterator<Item = S>) -> Self {
        self.write = apps.into_iter().map(Into::into).collect();
        self
    }

    /// Streams: drop the oldest records when full instead of refusing appends.
    pub fn overwrite(mut self) -> Self {
        self.overwrite = true;
        self
    }
}

/// How to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Map read-only.
    Read,
    /// Map read-write.
    Write,
}

/// Records read from a stream block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    /// The records, oldest first.
    pub records: Vec<Vec<u8>>,
    /// Records an overwriting stream dropped before this consumer read them.
    pub skipped: u64,
    /// The index of the next record this consumer will read.
    pub next_index: u64,
    /// The block's version when they were read.
    pub version: u64,
}

/// A lock lease, as [`MemoryBlock::lock`] and [`MemoryBlock::lock_with`] granted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockGrant {
    /// How long the lease lasts from its grant unless it is renewed.
    pub lease: Duration,
    /// Whether this client still held a lease on the block when it was granted (a renewal, or
    /// a change of mode); `false` for a new lease. A holder that locks again to renew and gets
    /// `false` had let its lease lapse: others could have locked and written the block in
    /// between.
    pub renewed: bool,
}

/// Something that happened to a watched block. New kinds of event may come in later versions:
/// match with a `_` arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockEvent {
    /// A write produced `version`, over `offset..offset+length` (streams: the record's index
    /// and its length). After (re)subscribing, a watcher that is behind gets one for the whole
    /// block first.
    Changed { version: u64, offset: u64, length: u64 },
    /// The initial state has been sent; events from here on are live.
    Synced { version: u64 },
    /// The block was deleted, or was gone when the watch was resumed after a reconnect (a
    /// non-persistent block does not outlive its server); no more events follow. `version` is
    /// the last one seen.
    Deleted { version: u64 },
    /// The watch ended because this app is no longer in the block's pool (it left, or the pool
    /// was removed) or may no longer read it, or the server refused to resume it after a
    /// reconnect; no more events follow. `reason` says which.
    Unwatched { version: u64, reason: String },
    /// This client's lock lease on the block expired.
    LockExpired,
    /// Events were dropped because this watch was not read fast enough: read the block again.
    Lagged,
}

/// A block by pool and id.
pub(crate) type BlockKey = (String, String);

struct WatchSlot {
    id: u64,
    tx: mpsc::Sender<BlockEvent>,
    lagged: Arc<AtomicBool>,
}

/// Watches held by one client, by block; re-subscribed after a reconnect from the last version
/// seen.
#[derive(Default)]
pub(crate) struct Watches {
    by_block: HashMap<(String, String), Watched>,
    next_id: u64,
    /// Local writes made while disconnected: (latest version, block size) by block.
    unnotified: HashMap<(String, String), (u64, u64)>,
}

/// One watched block: its watches, and where a resubscription starts.
#[derive(Default)]
struct Watched {
    slots: Vec<WatchSlot>,
    /// The last version seen.
    seen: u64,
    /// When the block watched was created (from `synced`), so that a resubscription to a block
    /// of the same name created since is told it is behind.
    created_at: Option<u64>,
}

impl Watches {
    /// Delivers a `block_event` frame to the watches of its block. For `lock_expired`, returns
    /// the block, whether the lease was exclusive, and why it ended, for the app to be told.
    pub(crate) fn deliver(&mut self, json: &[u8]) -> Option<(BlockKey, bool, String)> {
        #[derive(serde::Deserialize)]
        struct Ev {
            event: String,
            pool: String,
            block_id: String,
            #[serde(default)]
            version: u64,
            #[serde(default)]
            offset: u64,
            #[serde(default)]
            length: u64,
            #[serde(default)]
            reason: String,
            #[serde(default)]
            mode: String,
            created_at: Option<u64>,
        }
        let Ok(e) = serde_json::from_slice::<Ev>(json) else {
            tracing::warn!("unparseable block_event from the server");
            return None;
        };
        let key = (e.pool, e.block_id);
        if e.event == "lock_expired" {
            self.dispatch(key.clone(), BlockEvent::LockExpired, None);
            let reason = if e.reason.is_empty() {
                "its lease ran out".to_owned()
            } else {
                e.reason
            };
            return Some((key, e.mode != "shared", reason));
        }
        let ev = match e.event.as_str() {
            "changed" => BlockEvent::Changed {
                version: e.version,
                offset: e.offset,
                length: e.length,
            },
            "synced" => BlockEvent::Synced { version: e.version },
            "deleted" => BlockEvent::Deleted { version: e.version },
            "unwatched" => BlockEvent::Unwatched {
                version: e.version,
                reason: e.reason,
            },
            other => {
                tracing::debug!(event = other, "unknown block event");
                return None;
            }
        };
        self.dispatch(key, ev, e.created_at);
        None
    }

    /// A lease on `key` ended with the connection: its watches are told as the server tells them.
    pub(crate) fn lock_lost(&mut self, key: &BlockKey) {
        self.dispatch(key.clone(), BlockEvent::LockExpired, None);
    }

    /// Hands `ev` to the watches of `key`, keeping where a resubscription starts; a watch that
    /// ends (deleted, unwatched) is forgotten.
    fn dispatch(&mut self, key: BlockKey, ev: BlockEvent, created_at: Option<u64>) {
        let Some(w) = self.by_block.get_mut(&key) else {
            return;
        };
        match ev {
            BlockEvent::Changed { version, .. } => w.seen = w.seen.max(version),
            // The block's version (and creation) when the watch began: the live events follow
            // from it, even below a version this client saw of an earlier block of the name.
            BlockEvent::Synced { version } => {
                w.seen = version;
                w.created_at = created_at.or(w.created_at);
            }
            _ => {}
        }
        w.slots.retain(|s| match s.tx.try_send(ev.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.lagged.store(true, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if matches!(ev, BlockEvent::Deleted { .. } | BlockEvent::Unwatched { .. }) {
            self.by_block.remove(&key);
        }
    }

    /// After a reconnect: `block_notify` frames for local writes made while disconnected, and
    /// a `block_watch` request (without its id) for every watched block, from the last version
    /// seen, to be sent as correlated requests: a refusal ends the watch ([`Watches::refused`]).
    pub(crate) fn resubscribe(&mut self) -> (Vec<Bytes>, Vec<(BlockKey, Value)>) {
        let notices = self.unnotified.drain().map(|((pool, id), (version, size))| {
            encode_message(&json!({
                "action": "block_notify", "pool": pool, "block_id": id,
                "version": version, "offset": 0, "length": size,
            }))
        });
        let watches = self
            .by_block
            .iter()
            .filter(|(_, w)| !w.slots.is_empty())
            .map(|(key, w)| {
                let mut r = json!({
                    "action": "block_watch", "pool": key.0, "block_id": key.1, "since": w.seen,
                });
                if let Some(c) = w.created_at {
                    r["created_at"] = json!(c);
                }
                (key.clone(), r)
            });
        (notices.collect(), watches.collect())
    }

    /// A resubscription the server refused: the watch ends, with [`BlockEvent::Deleted`] when
    /// the block is gone (a non-persistent block does not outlive its server; another deleted
    /// it meanwhile), else [`BlockEvent::Unwatched`] with the server's reason (the app is no
    /// longer in the pool, or may no longer read it).
    pub(crate) fn refused(&mut self, key: BlockKey, e: &RemoteError) {
        let Some(version) = self.by_block.get(&key).map(|w| w.seen) else {
            return;
        };
        let ev = if e.code == ErrorCode::BlockNotFound {
            BlockEvent::Deleted { version }
        } else {
            BlockEvent::Unwatched {
                version,
                reason: format!("the watch could not be resumed after a reconnect: {e}"),
            }
        };
        self.dispatch(key, ev, None);
    }
}

/// A subscription to a block's changes; see [`MemoryBlock::watch`]. Dropping the last watch of
/// a block unsubscribes.
pub struct BlockWatch {
    rx: mpsc::Receiver<BlockEvent>,
    lagged: Arc<AtomicBool>,
    inner: Arc<Inner>,
    key: (String, String),
    id: u64,
}

impl std::fmt::Debug for BlockWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockWatch").field("block", &self.key).finish()
    }
}

impl BlockWatch {
    /// The next event; `None` once the block is deleted (or the watch ended with
    /// [`BlockEvent::Unwatched`]) and its events are read, or the client is closed. [`BlockEvent::Lagged`] comes first if events were dropped.
    pub async fn next(&mut self) -> Option<BlockEvent> {
        if self.lagged.swap(false, Ordering::Relaxed) {
            return Some(BlockEvent::Lagged);
        }
        tokio::select! {
            e = self.rx.recv() => e,
            _ = self.inner.closed.cancelled() => None,
        }
    }
}

impl Drop for BlockWatch {
    fn drop(&mut self) {
        let mut w = lock(&self.inner.watches);
        let Some(watched) = w.by_block.get_mut(&self.key) else {
            return;
        };
        watched.slots.retain(|s| s.id != self.id);
        if watched.slots.is_empty() {
            w.by_block.remove(&self.key);
            drop(w);
            let frame = encode_message(&json!({
                "action": "block_unwatch", "pool": self.key.0, "block_id": self.key.1,
            }));
            if let Some(tx) = lock(&self.inner.shared).tx.clone() {
                tx.send_now(&frame);
            }
        }
    }
}

/// A block this client created or attached. Cheap to clone.
#[derive(Clone)]
pub struct MemoryBlock {
    client: Client,
    pool: PoolName,
    id: BlockId,
    kind: BlockType,
    size: u64,
    writable: bool,
    map: Option<Arc<Block>>,
}

impl std::fmt::Debug for MemoryBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBlock")
            .field("pool", &self.pool)
            .field("block_id", &self.id)
            .field("type", &self.kind.as_str())
            .field("size", &self.size)
            .field("mapped", &self.map.is_some())
            .field("writable", &self.writable)
            .finish()
    }
}

fn kind_of(s: &str) -> Result<BlockType, ClientError> {
    match s {
        "binary" => Ok(BlockType::Binary),
        "json" => Ok(BlockType::Json),
        "stream" => Ok(BlockType::Stream),
        other => Err(ClientError::Protocol(format!("unknown block type '{other}'"))),
    }
}

impl Client {
    /// Creates a block in a pool this client is in, then attaches it (mapped when the server is
    /// on this machine).
    pub async fn create_block(
        &self,
        pool: &str,
        block_id: &str,
        opts: BlockOptions,
    ) -> Result<MemoryBlock, ClientError> {
        let pool = PoolName::try_from(pool)?;
        let id = BlockId::try_from(block_id)?;
        let mut req = json!({
            "action": "block_create", "pool": pool, "block_id": id, "size": opts.size,
            "type": opts.kind.as_str(), "persistent": opts.persistent,
            "permissions": { "read": opts.read, "write": opts.write },
        });
        if opts.kind == BlockType::Stream {
            req["overflow"] = json!(if opts.overwrite { "overwrite" } else { "error" });
        }
        self.block_request(req).await?;
        self.attach_block_with(pool.as_str(), id.as_str(), None, true).await
    }

    /// Attaches an existing block with the widest access this app has, mapped when possible.
    pub async fn attach_block(&self, pool: &str, block_id: &str) -> Result<MemoryBlock, ClientError> {
        self.attach_block_with(pool, block_id, None, true).await
    }

    /// Attaches with a given access (`None`: the widest allowed). With `map` false, or when the
    /// block's file cannot be opened (the server is on another machine), every operation goes
    /// through the server.
    pub async fn attach_block_with(
        &self,
        pool: &str,
        block_id: &str,
        access: Option<Access>,
        map: bool,
    ) -> Result<MemoryBlock, ClientError> {
        let pool = PoolName::try_from(pool)?;
        let id = BlockId::try_from(block_id)?;
        let mut req = json!({ "action": "block_attach", "pool": pool, "block_id": id });
        if let Some(a) = access {
            req["mode"] = json!(if a == Access::Write { "write" } else { "read" });
        }
        let r = self.block_request(req).await?;
        let writable = r["mode"] == "write";
        let kind = kind_of(r["block"]["type"].as_str().unwrap_or_default())?;
        let size = r["block"]["size"].as_u64().unwrap_or(0);
        let mapped = match (map, r["path"].as_str()) {
            (true, Some(path)) => match Block::open(std::path::Path::new(path), writable) {
                Ok(b) if b.size() == size => Some(Arc::new(b)),
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!(path, error = %e, "block not mappable here; using the server");
                    None
                }
            },
            _ => None,
        };
        Ok(MemoryBlock {
            client: self.clone(),
            pool,
            id,
            kind,
            size,
            writable,
            map: mapped,
        })
    }

    /// The blocks of a pool, as the server describes them (`block_list`).
    pub async fn list_blocks(&self, pool: &str) -> Result<Vec<Value>, ClientError> {
        let pool = PoolName::try_from(pool)?;
        let mut r = self
            .block_request(json!({ "action": "block_list", "pool": pool }))
            .await?;
        Ok(match r["blocks"].take() {
            Value::Array(a) => a,
            _ => vec![],
        })
    }

    /// Deletes a block by name.
    pub async fn delete_block(&self, pool: &str, block_id: &str) -> Result<(), ClientError> {
        let pool = PoolName::try_from(pool)?;
        let id = BlockId::try_from(block_id)?;
        self.block_request(json!({ "action": "block_delete", "pool": pool, "block_id": id }))
            .await
            .map(|_| ())
    }

    /// A JSON block request; the reply's JSON (server errors become `Err`).
    async fn block_request(&self, req: Value) -> Result<Value, ClientError> {
        let f = self.block_frame(req, None).await?;
        serde_json::from_slice(f.json()).map_err(Into::into)
    }

    /// A block request, optionally with a binary body; the whole reply frame.
    async fn block_frame(&self, mut req: Value, body: Option<&[u8]>) -> Result<Frame, ClientError> {
        let timeout = self.inner.opts.timeout();
        // Lock waits may be longer than the client's request timeout.
        let wait = Duration::from_millis(req["wait_ms"].as_u64().unwrap_or(0));
        self.inner
            .roundtrip_full(
                |id| {
                    req["id"] = json!(id);
                    Ok(match body {
                        Some(b) => encode_binary(&serde_json::to_vec(&req)?, b),
                        None => encode_message(&req),
                    })
                },
                timeout + wait,
            )
            .await
    }
}

impl MemoryBlock {
    /// The pool.
    pub fn pool(&self) -> &str {
        self.pool.as_str()
    }

    /// The block id.
    pub fn id(&self) -> &str {
        self.id.as_str()
    }

    /// Data bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether this process maps the block (zero copy) rather than going through the server.
    pub fn is_mapped(&self) -> bool {
        self.map.is_some()
    }

    /// Whether this attachment may write.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    fn req(&self, action: &str) -> Value {
        json!({ "action": action, "pool": self.pool, "block_id": self.id })
    }

    fn mapping(&self) -> Result<&Block, ClientError> {
        self.map.as_deref().ok_or_else(|| {
            ClientError::Protocol(
                "this block is not mapped in this process (the server is remote, or it was attached with map = false)"
                    .into(),
            )
        })
    }

    /// Tells the server (and so the watchers) about a write made through the mapping. The
    /// write itself is done either way: if the connection is down, the notice is kept and sent
    /// (for the whole block, at its version then) after the client reconnects.
    async fn notify(&self, version: u64, offset: u64, length: u64) -> Result<(), ClientError> {
        let mut n = self.req("block_notify");
        n["version"] = json!(version);
        n["offset"] = json!(offset);
        n["length"] = json!(length);
        match self.client.inner.send(&encode_message(&n)).await {
            Err(ClientError::Disconnected { .. }) => {
                let mut w = lock(&self.client.inner.watches);
                let v = w
                    .unnotified
                    .entry((self.pool.to_string(), self.id.to_string()))
                    .or_insert((0, self.size));
                v.0 = v.0.max(version);
                Ok(())
            }
            other => other,
        }
    }

    /// The current version: from the mapping, else asked of the server.
    pub async fn version(&self) -> Result<u64, ClientError> {
        match &self.map {
            Some(m) => Ok(m.version()),
            None => Ok(self.stat().await?["version"].as_u64().unwrap_or(0)),
        }
    }

    /// The server's description of the block (`block_stat`).
    pub async fn stat(&self) -> Result<Value, ClientError> {
        let mut r = self.client.block_request(self.req("block_stat")).await?;
        Ok(r["block"].take())
    }

    /// Binary blocks: copies `len` bytes at `offset`; returns them with their version (never a
    /// torn write).
    pub async fn read(&self, offset: u64, len: u64) -> Result<(Vec<u8>, u64), ClientError> {
        if let Some(m) = &self.map {
            if offset.checked_add(len).is_none_or(|end| end > self.size) {
                // Checked before allocating the buffer: a wild length is an error, not an abort.
                return Err(latzero_memory::MemError::OutOfRange {
                    offset,
                    len,
                    size: self.size,
                }
                .into());
            }
            let mut buf = vec![0u8; len as usize];
            let v = m.read(offset, &mut buf)?;
            return Ok((buf, v));
        }
        let mut r = self.req("block_read");
        r["offset"] = json!(offset);
        r["length"] = json!(len);
        match self.client.block_frame(r, None).await? {
            Frame::Binary { header, body } => {
                let h: Value = serde_json::from_slice(&header)?;
                Ok((body.to_vec(), h["version"].as_u64().unwrap_or(0)))
            }
            Frame::Json(j) => Err(ClientError::Protocol(format!(
                "expected a binary block_data frame, got {}",
                String::from_utf8_lossy(&j)
            ))),
        }
    }

    /// Zero-copy read of a mapped block: `f` sees the bytes in place and runs again if a write
    /// overlapped it (so it must tolerate bytes changing under it; its result is discarded then).
    pub fn read_with<R>(&self, offset: u64, len: u64, f: impl FnMut(&[u8]) -> R) -> Result<(R, u64), ClientError> {
        Ok(self.mapping()?.read_with(offset, len, f)?)
    }

    /// Binary blocks: writes `data` at `offset`; returns the new version. Watchers are told.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<u64, ClientError> {
        if let Some(m) = self.map.as_ref().filter(|_| self.writable) {
            let v = m.write(offset, data)?;
            self.notify(v, offset, data.len() as u64).await?;
            return Ok(v);
        }
        let mut r = self.req("block_write");
        r["offset"] = json!(offset);
        self.written(r, data).await
    }

    /// Zero-copy write of a mapped block: `f` fills `offset..offset+len` in place; returns the
    /// new version. Watchers are told.
    pub async fn write_with(&self, offset: u64, len: u64, f: impl FnOnce(&mut [u8])) -> Result<u64, ClientError> {
        let v = self.mapping()?.write_with(offset, len, f)?;
        self.notify(v, offset, len).await?;
        Ok(v)
    }

    async fn written(&self, req: Value, body: &[u8]) -> Result<u64, ClientError> {
        let f = self.client.block_frame(req, Some(body)).await?;
        let v: Value = serde_json::from_slice(f.json())?;
        Ok(v["version"].as_u64().unwrap_or(0))
    }

    /// Json blocks: the document and its version.
    pub async fn read_json<T: DeserializeOwned>(&self) -> Result<(T, u64), ClientError> {
        if let Some(m) = &self.map {
            let (doc, v) = m.read_json()?;
            return Ok((serde_json::from_slice(&doc)?, v));
        }
        let mut r = self.client.block_request(self.req("block_read")).await?;
        Ok((
            serde_json::from_value(r["document"].take())?,
            r["version"].as_u64().unwrap_or(0),
        ))
    }

    /// Json blocks: replaces the document; returns the new version. Watchers are told.
    pub async fn write_json<T: Serialize + ?Sized>(&self, doc: &T) -> Result<u64, ClientError> {
        let bytes = serde_json::to_vec(doc)?;
        if let Some(m) = self.map.as_ref().filter(|_| self.writable) {
            let v = m.write_json(&bytes)?;
            self.notify(v, 0, bytes.len() as u64).await?;
            return Ok(v);
        }
        self.written(self.req("block_write"), &bytes).await
    }

    /// Stream blocks: appends a record; returns its index and the new version.
    pub async fn append(&self, record: &[u8]) -> Result<(u64, u64), ClientError> {
        if let Some(m) = self.map.as_ref().filter(|_| self.writable) {
            let (index, v) = m.append(record)?;
            self.notify(v, index, record.len() as u64).await?;
            return Ok((index, v));
        }
        self.append_through_server(record).await
    }

    /// [`append`](Self::append) through the server even where the block is mapped: for records
    /// the server checks (an encrypted pool's sealed records).
    pub(crate) async fn append_through_server(&self, record: &[u8]) -> Result<(u64, u64), ClientError> {
        let f = self.client.block_frame(self.req("block_write"), Some(record)).await?;
        let v: Value = serde_json::from_slice(f.json())?;
        Ok((v["index"].as_u64().unwrap_or(0), v["version"].as_u64().unwrap_or(0)))
    }

    /// Stream blocks: up to `max` records from the named consumer's cursor, which moves past
    /// them. A writable mapping reads in place; otherwise the server reads for us, at most
    /// 100,000 records a read (the protocol's bound) and as many as fit one frame, so a read
    /// may return fewer than `max` with more waiting: read again. `max` is at least 1; 0 is
    /// refused with `INVALID_MESSAGE` whether the block is mapped or not.
    pub async fn consume(&self, consumer: &str, max: usize) -> Result<Records, ClientError> {
        // `max` 0 goes to the server, whose refusal is the answer either way.
        if let Some(m) = self.map.as_ref().filter(|_| self.writable && max > 0) {
            let slot = m.consumer(consumer)?;
            let r = m.read_records(m.consumer_cursor(slot), max, u64::MAX)?;
            m.commit_cursor(slot, r.next)?;
            return Ok(Records {
                records: r.records,
                skipped: r.skipped,
                next_index: r.next.index,
                version: r.version,
            });
        }
        let mut req = self.req("block_read");
        req["consumer"] = json!(consumer);
        req["max"] = json!(max.min(latzero_proto::message::MAX_STREAM_READ));
        match self.client.block_frame(req, None).await? {
            Frame::Binary { header, body } => {
                let h: Value = serde_json::from_slice(&header)?;
                let mut at = 0usize;
                let mut records = vec![];
                for l in h["lengths"].as_array().into_iter().flatten() {
                    let l = l.as_u64().unwrap_or(0) as usize;
                    let rec = body
                        .get(at..at + l)
                        .ok_or_else(|| ClientError::Protocol("block_records lengths exceed the body".into()))?;
                    records.push(rec.to_vec());
                    at += l;
                }
                Ok(Records {
                    records,
                    skipped: h["skipped"].as_u64().unwrap_or(0),
                    next_index: h["next_index"].as_u64().unwrap_or(0),
                    version: h["version"].as_u64().unwrap_or(0),
                })
            }
            Frame::Json(j) => Err(ClientError::Protocol(format!(
                "expected a binary block_records frame, got {}",
                String::from_utf8_lossy(&j)
            ))),
        }
    }

    /// Takes a lock lease (the server's default lease), waiting up to `wait` for it. Returns the
    /// lease granted. A lease is this client's (its connection's), not a task's: while one lock
    /// request of this client waits for the block, another fails at once with `LOCKED`.
    pub async fn lock(&self, exclusive: bool, wait: Duration) -> Result<LockGrant, ClientError> {
        self.lock_with(exclusive, None, wait).await
    }

    /// Takes a lock lease of `lease` (or the server's default), waiting up to `wait`, and
    /// returns the lease granted: to hold the lock longer, lock again before it runs out, which
    /// renews it ([`LockGrant::renewed`] tells whether it had run out). The lease ends at
    /// [`MemoryBlock::unlock`], when it expires, or when this client's connection drops (it is
    /// not retaken after a reconnect). Both go in whole milliseconds, rounded up (a lease is at
    /// least 1 ms). A grant that arrives just before the connection drops ended with it: the
    /// call fails with [`ClientError::Disconnected`], as one whose grant never came.
    pub async fn lock_with(
        &self,
        exclusive: bool,
        lease: Option<Duration>,
        wait: Duration,
    ) -> Result<LockGrant, ClientError> {
        let mut r = self.req("block_lock");
        r["mode"] = json!(
            if exclusive {
                LockMode::Exclusive
            } else {
                LockMode::Shared
            }
            .as_str()
        );
        // Whole milliseconds, rounded up: a sub-millisecond lease would be sent as 0, which the
        // server refuses, and a sub-millisecond wait as no wait at all.
        r["wait_ms"] = json!(crate::options::whole_ms(wait));
        if let Some(l) = lease {
            r["lease_ms"] = json!(crate::options::whole_ms(l).max(1));
        }
        // The connection the request goes out on is the one live now: the grant can only come
        // on it, and a drop accounted after this read ended the lease with it. (A request sent
        // once the drop is accounted fails as Disconnected; only a reconnect finished between
        // this read and the send, which has no await between them, would put the grant on a
        // later connection, and then the lease is taken for gone and runs out on the server.)
        let drops = lock(&self.client.inner.leases).drops;
        let granted = self.client.block_request(r).await?;
        match (granted["lease_ms"].as_u64(), granted["renewed"].as_bool()) {
            (Some(ms), Some(renewed)) => {
                let mut leases = lock(&self.client.inner.leases);
                if leases.drops != drops {
                    // Granted, but the connection dropped before this call took the grant up,
                    // and the lease ended with it: not the app's to use.
                    drop(leases);
                    return Err(self.client.inner.disconnected(true));
                }
                // Held now: if it ends other than by `unlock`, the app is told.
                leases.held.insert(self.key(), exclusive);
                Ok(LockGrant {
                    lease: Duration::from_millis(ms),
                    renewed,
                })
            }
            _ => Err(ClientError::Protocol(format!(
                "block_locked without a lease_ms and renewed: {granted}"
            ))),
        }
    }

    /// Releases this client's lease.
    pub async fn unlock(&self) -> Result<(), ClientError> {
        let r = self.client.block_request(self.req("block_unlock")).await;
        // Released, or not held (any more): either way not this client's to be told about.
        if r.is_ok() || r.as_ref().is_err_and(|e| e.code() == Some(ErrorCode::NotLocked)) {
            lock(&self.client.inner.leases).held.remove(&self.key());
        }
        r.map(|_| ())
    }

    /// The block as the client's maps key it.
    fn key(&self) -> BlockKey {
        (self.pool.to_string(), self.id.to_string())
    }

    /// Watches the block. `since`: the last version this watcher saw; if the block is newer, a
    /// [`BlockEvent::Changed`] for the whole block comes first. [`BlockEvent::Synced`] follows
    /// the initial state. After a reconnect the watch resumes from the last version seen.
    pub async fn watch(&self, since: Option<u64>) -> Result<BlockWatch, ClientError> {
        let inner = &self.client.inner;
        let key = (self.pool.to_string(), self.id.to_string());
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = {
            let mut w = lock(&inner.watches);
            w.next_id += 1;
            let id = w.next_id;
            let watched = w.by_block.entry(key.clone()).or_default();
            if let Some(s) = since {
                watched.seen = watched.seen.max(s);
            }
            watched.slots.push(WatchSlot {
                id,
                tx,
                lagged: lagged.clone(),
            });
            id
        };
        let watch = BlockWatch {
            rx,
            lagged,
            inner: inner.clone(),
            key,
            id,
        };
        let mut r = self.req("block_watch");
        if let Some(s) = since {
            r["since"] = json!(s);
        }
        self.client.block_request(r).await?;
        Ok(watch)
    }

    /// Deletes the block. Mappings in other processes stay mapped until they unmap, but refuse
    /// to read or write it from then on (`BLOCK_NOT_FOUND`).
    pub async fn delete(self) -> Result<(), ClientError> {
        self.client.block_request(self.req("block_delete")).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event: &str, version: u64) -> Vec<u8> {
        json!({"action": "block_event", "event": event, "pool": "p", "block_id": "b", "version": version})
            .to_string()
            .into_bytes()
    }

    /// A watch resumes from the version its last subscription began at and the changes since,
    /// even below a version seen of an earlier block of the same name.
    #[test]
    fn a_watch_resumes_from_its_latest_subscription() {
        let mut w = Watches::default();
        let (tx, _rx) = mpsc::channel(8);
        w.by_block.insert(
            ("p".into(), "b".into()),
            Watched {
                slots: vec![WatchSlot {
                    id: 1,
                    tx,
                    lagged: Arc::default(),
                }],
                ..Watched::default()
            },
        );
        let resubscription = |w: &mut Watches| -> Value {
            let (notices, mut watches) = w.resubscribe();
            assert!(notices.is_empty());
            watches.remove(0).1
        };
        let since = |w: &mut Watches| resubscription(w)["since"].as_u64();
        w.deliver(&event("changed", 7));
        assert_eq!(since(&mut w), Some(7));
        // Resubscribed to a block created again: it began at version 2.
        w.deliver(&event("changed", 2));
        w.deliver(&event("synced", 2));
        assert_eq!(since(&mut w), Some(2));
        w.deliver(&event("changed", 3));
        w.deliver(&event("changed", 1));
        assert_eq!(
            since(&mut w),
            Some(3),
            "a late notice of an older version does not go back"
        );
        // The block's creation, as `synced` gives it, goes with the resubscription.
        assert_eq!(resubscription(&mut w).get("created_at"), None);
        let mut synced: Value = serde_json::from_slice(&event("synced", 4)).unwrap();
        synced["created_at"] = json!(1_700_000_000_000u64);
        w.deliver(synced.to_string().as_bytes());
        assert_eq!(resubscription(&mut w)["created_at"], 1_700_000_000_000u64);
    }
}
