//! Memory blocks: the registry of blocks per pool, their files, and the block actions
//! (docs/PROTOCOL.md §7). The file layout, the seqlock and the stream ring are in
//! `latzero-memory`, shared with the SDK, which maps the same files.
//!
//! Where the files live:
//! - persistent blocks: `<data_dir>/memory/<pool>/<block>.blk`, with their metadata (type,
//!   size, owner, permissions, version) in the store's `memory_blocks` table. At start the server
//!   adopts every stored block whose file checks out; a `.blk` without a stored record is the
//!   remnant of a create that crashed before the store had it, and is removed.
//! - other blocks: `<volatile_dir>/latzero-<hash of the data dir>/<pool>/<block>.blk`, by
//!   default under `/dev/shm` (memory, no disk writeback). The server empties that directory at
//!   start (those blocks did not survive the previous run by definition, and a crash may have
//!   left files behind) and removes it at shutdown.
//!
//! Locks are leases arbitrated here ([`locks`]); watchers get `block_event` frames after every
//! write the server makes or a local writer reports (`block_notify`).

mod locks;
mod ops;

pub(crate) use ops::Caller;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use latzero_memory::{Block, Kind, MemError, Spec};
use latzero_proto::message::{BlockType, LockMode, Permissions};
use latzero_proto::{AppId, BlockId, ErrorCode, PoolName};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::ServerError;
use crate::session::conn::{Conn, ConnId};
use crate::store::BlockRecord;

pub(crate) use self::locks::Locks;

/// File name suffixes.
const DATA_EXT: &str = "blk";

/// What a block action leaves for after the current batch: creating a block (allocating its
/// file can take a while, so it runs on the blocking pool, not on the connection's reader), and
/// storing or removing a persistent block's metadata before the action is acknowledged (so an
/// acknowledged persistent block survives a kill).
#[derive(Debug)]
pub(crate) enum StoreWork {
    Create {
        pool: PoolName,
        block_id: BlockId,
        owner: AppId,
        kind: BlockType,
        size: u64,
        persistent: bool,
        permissions: Permissions,
        overwrite: bool,
        id: Option<Box<latzero_proto::message::RawValue>>,
    },
    Deleted {
        entry: Arc<Entry>,
        id: Option<Box<latzero_proto::message::RawValue>>,
    },
}

/// A refused block operation: the code and message of the error frame.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl From<MemError> for Refusal {
    fn from(e: MemError) -> Self {
        let code = match &e {
            MemError::NoSpace { .. } => ErrorCode::NoSpace,
            MemError::OutOfRange { .. } | MemError::TooLarge { .. } | MemError::RecordTooLarge { .. } => {
                ErrorCode::OutOfRange
            }
            MemError::WrongKind { .. } => ErrorCode::WrongType,
            MemError::InvalidJson(_) => ErrorCode::InvalidJson,
            MemError::Busy(_) => ErrorCode::Busy,
            MemError::StreamFull { .. } => ErrorCode::StreamFull,
            MemError::TooManyConsumers => ErrorCode::Overloaded,
            MemError::BadConsumerName => ErrorCode::InvalidName,
            MemError::Deleted => ErrorCode::BlockNotFound,
            MemError::Io { .. } | MemError::BadFile { .. } | MemError::WriterDied | MemError::ReadOnly => {
                ErrorCode::Internal
            }
        };
        Refusal::new(code, e.to_string())
    }
}

/// What the server keeps about a block besides its file: stored in the store's `memory_blocks`
/// table for persistent blocks, and reported by `block_stat`/`block_list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub pool: PoolName,
    pub block_id: BlockId,
    #[serde(rename = "type")]
    pub kind: String,
    pub size: u64,
    pub persistent: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overflow: Option<String>,
    pub owner: AppId,
    pub permissions: PermissionsMeta,
    pub created_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PermissionsMeta {
    pub read: Vec<String>,
    pub write: Vec<String>,
}

impl Meta {
    /// The store's row for this block, at `version`.
    pub fn record(&self, version: u64) -> BlockRecord {
        BlockRecord {
            pool: self.pool.to_string(),
            block_id: self.block_id.to_string(),
            name: None,
            size: self.size as i64,
            kind: self.kind.clone(),
            permissions: json!({ "read": self.permissions.read, "write": self.permissions.write }),
            version: version as i64,
            created: self.created_at as i64,
            updated: now_ms() as i64,
            persistent: self.persistent,
            encrypted: false,
            config: json!({ "owner": self.owner, "overflow": self.overflow }),
        }
    }

    /// Back from the store's row; `None` if it does not hold valid names and lists.
    pub fn from_record(r: &BlockRecord) -> Option<Meta> {
        let list = |k: &str| -> Option<Vec<String>> { serde_json::from_value(r.permissions[k].clone()).ok() };
        Some(Meta {
            pool: PoolName::try_from(r.pool.as_str()).ok()?,
            block_id: BlockId::try_from(r.block_id.as_str()).ok()?,
            kind: r.kind.clone(),
            size: u64::try_from(r.size).ok()?,
            persistent: r.persistent,
            overflow: r.config["overflow"].as_str().map(str::to_owned),
            owner: AppId::try_from(r.config["owner"].as_str()?).ok()?,
            permissions: PermissionsMeta {
                read: list("read")?,
                write: list("write")?,
            },
            created_at: u64::try_from(r.created).ok()?,
        })
    }

    pub fn permissions(&self) -> Permissions {
        Permissions {
            read: self.permissions.read.clone(),
            write: self.permissions.write.clone(),
        }
    }
}

/// One block: its metadata, its mapping, and who locks and watches it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub meta: Meta,
    pub perms: Permissions,
    pub block: Block,
    pub state: Mutex<EntryState>,
    /// Set when deleted; operations that raced the delete see BLOCK_NOT_FOUND.
    pub deleted: AtomicBool,
    /// Json blocks: one more than the newest version whose document the server checked as JSON
    /// (0: none). A mapped writer's bytes reach the file without the server, so a read through
    /// the server checks each new version once; versions go up with every write, and the bytes
    /// of one version are the same in every consistent read.
    pub json_checked: AtomicU64,
    /// Streams in encrypted pools: the seq of the newest sealed record appended (`None` until
    /// the first append through this server, which finds it in the ring). Held across the check
    /// and the append, so appends through the server go in strictly increasing seq.
    pub sealed_newest: Mutex<Option<u64>>,
}

#[derive(Debug, Default)]
pub(crate) struct EntryState {
    pub locks: Locks,
    pub watchers: HashMap<ConnId, Arc<Conn>>,
}

impl Entry {
    /// Whether the json document at `version` was checked as JSON (its write through the
    /// server, or an earlier read, did).
    pub fn json_checked(&self, version: u64) -> bool {
        self.json_checked.load(Ordering::Relaxed) == version.saturating_add(1)
    }

    /// Records that the json document at `version` is valid JSON.
    pub fn set_json_checked(&self, version: u64) {
        self.json_checked
            .fetch_max(version.saturating_add(1), Ordering::Relaxed);
    }

    pub fn state(&self) -> MutexGuard<'_, EntryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells every watcher about a write that produced `version`.
    pub fn changed(&self, version: u64, offset: u64, length: u64) {
        let frame = latzero_proto::frame::encode_message(&json!({
            "action": "block_event",
            "event": "changed",
            "pool": self.meta.pool,
            "block_id": self.meta.block_id,
            "version": version,
            "offset": offset,
            "length": length,
        }));
        for w in self.state().watchers.values() {
            // A watcher that does not read is closed as a slow consumer by `send`.
            let _ = w.send(&frame);
        }
    }

    /// The `unwatched` event that ends a watch of this block, saying `why`.
    fn unwatched(&self, why: &str) -> bytes::Bytes {
        latzero_proto::frame::encode_message(&json!({
            "action": "block_event",
            "event": "unwatched",
            "pool": self.meta.pool,
            "block_id": self.meta.block_id,
            "version": self.block.version(),
            "reason": why,
        }))
    }

    /// Metadata with the live state, for `block_stat` and `block_list`.
    pub fn describe(&self) -> Value {
        let mut v = serde_json::to_value(&self.meta).unwrap_or(Value::Null);
        v["version"] = json!(self.block.version());
        let st = self.state();
        v["watchers"] = json!(st.watchers.len());
        v["locks"] = st.locks.describe();
        if self.block.kind() == Kind::Stream
            && let Ok((tail, head)) = self.block.stream_bounds()
        {
            v["stream"] = json!({
                "oldest_index": tail.index,
                "next_index": head.index,
                "bytes_held": head.pos - tail.pos,
                "consumers": self.block.consumers().into_iter()
                    .map(|(name, c)| json!({ "name": name, "next_index": c.index }))
                    .collect::<Vec<_>>(),
            });
        }
        v
    }
}

/// Memory-related limits and places.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// The directory in which the server keeps its non-persistent blocks, in a subdirectory
    /// `latzero-<hash of the data dir>` of its own; `None`: `/dev/shm` when it exists, else the
    /// data dir.
    pub volatile_dir: Option<PathBuf>,
    /// Largest block, in data bytes (INVALID_SIZE beyond it).
    pub max_block_size: u64,
    /// Blocks the server holds at once (OVERLOADED beyond it).
    pub max_blocks: usize,
    /// A lock's lease when the request names none.
    pub default_lease: Duration,
    /// Longest lease (and lock wait) accepted.
    pub max_lease: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            volatile_dir: None,
            max_block_size: 1 << 30,
            max_blocks: 4096,
            default_lease: Duration::from_secs(30),
            max_lease: Duration::from_secs(3600),
        }
    }
}

/// The block registry.
#[derive(Debug)]
pub(crate) struct Memory {
    blocks: Mutex<BTreeMap<(PoolName, BlockId), Arc<Entry>>>,
    /// Names reserved by creates in progress (their files are being made).
    creating: Mutex<std::collections::HashSet<(PoolName, BlockId)>>,
    persistent_root: PathBuf,
    volatile_root: PathBuf,
    pub config: MemoryConfig,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where the server on `data_dir` keeps its non-persistent blocks: a directory of its own,
/// `latzero-<hash of the data dir>`, inside `parent` (default `/dev/shm`, else the data dir).
/// Only that directory is ever swept, so pointing `parent` at a shared place (`/tmp`) is safe.
fn volatile_root(data_dir: &Path, parent: Option<&Path>) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let parent = match parent {
        Some(p) => p.to_path_buf(),
        None if shm.is_dir() => shm.to_path_buf(),
        None => data_dir.to_path_buf(),
    };
    let canonical = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    // FNV-1a of the path: one directory per data dir, stable across restarts.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    parent.join(format!("latzero-{h:016x}"))
}

/// The blocks in a volatile directory (`<pool>/<block>.blk`), mapped; files that are not
/// blocks are left out.
fn previous_blocks(root: &Path) -> Vec<Block> {
    let files = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    files(root)
        .iter()
        .filter(|p| p.is_dir())
        .flat_map(|pool| files(pool))
        .filter_map(|f| Block::open(&f, true).ok())
        .collect()
}

impl Memory {
    /// Prepares the block directories: empties the volatile one, adopts persistent blocks.
    pub fn open(
        data_dir: &Path,
        config: MemoryConfig,
        stored: Vec<BlockRecord>,
    ) -> Result<(Memory, Vec<BlockRecord>), ServerError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |error| ServerError::Memory { path, error }
        };
        let persistent_root = data_dir.join("memory");
        let volatile_root = volatile_root(data_dir, config.volatile_dir.as_deref());
        // We hold the data dir's lock, and the volatile dir belongs to this data dir alone.
        // Blocks left by a run that did not shut down are marked deleted once their files are
        // gone, for processes that still map them (as `close` does at a clean shutdown).
        let left = previous_blocks(&volatile_root);
        match std::fs::remove_dir_all(&volatile_root) {
            Ok(()) => tracing::info!(dir = %volatile_root.display(), "swept non-persistent blocks of the previous run"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&volatile_root)(e)),
        }
        for b in left {
            b.mark_deleted();
        }
        create_private_dir(&volatile_root).map_err(err(&volatile_root))?;
        create_private_dir(&persistent_root).map_err(err(&persistent_root))?;
        let mem = Memory {
            blocks: Mutex::new(BTreeMap::new()),
            creating: Mutex::default(),
            persistent_root,
            volatile_root,
            config,
        };
        let stale = mem.adopt_persistent(stored).map_err(err(&mem.persistent_root))?;
        Ok((mem, stale))
    }

    pub fn volatile_root(&self) -> &Path {
        &self.volatile_root
    }

    /// Adopts the stored persistent blocks whose files check out; removes block files the store
    /// does not know. Returns the records whose files are missing or do not match (the server
    /// removes them from the store).
    fn adopt_persistent(&self, stored: Vec<BlockRecord>) -> std::io::Result<Vec<BlockRecord>> {
        let mut blocks = self.lock();
        let mut known = std::collections::HashSet::new();
        let mut stale = vec![];
        for rec in stored {
            let Some(meta) = Meta::from_record(&rec) else {
                tracing::error!(pool = %rec.pool, block = %rec.block_id, "stored block metadata is not valid; dropped");
                stale.push(rec);
                continue;
            };
            let data = self
                .persistent_root
                .join(meta.pool.as_str())
                .join(format!("{}.{DATA_EXT}", meta.block_id));
            match Block::open(&data, true) {
                Ok(block) if block.size() == meta.size && block.kind().as_str() == meta.kind => {
                    known.insert(data);
                    tracing::info!(pool = %meta.pool, block = %meta.block_id, version = block.version(), "adopted persistent block");
                    blocks.insert(
                        (meta.pool.clone(), meta.block_id.clone()),
                        Arc::new(Entry {
                            perms: meta.permissions(),
                            meta,
                            block,
                            state: Mutex::default(),
                            deleted: AtomicBool::new(false),
                            json_checked: AtomicU64::new(0),
                            sealed_newest: Mutex::default(),
                        }),
                    );
                }
                Ok(_) => {
                    tracing::error!(file = %data.display(), "block file does not match its stored metadata; not served");
                    known.insert(data);
                    stale.push(rec);
                }
                Err(e) => {
                    tracing::error!(file = %data.display(), error = %e, "cannot open a stored persistent block; dropped");
                    stale.push(rec);
                }
            }
        }
        for pool_dir in std::fs::read_dir(&self.persistent_root)? {
            let pool_dir = pool_dir?.path();
            if !pool_dir.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&pool_dir)? {
                let data = f?.path();
                if data.extension().and_then(|e| e.to_str()) == Some(DATA_EXT) && !known.contains(&data) {
                    tracing::warn!(file = %data.display(), "removing a block file the store does not know (a create interrupted by a crash)");
                    let _ = std::fs::remove_file(&data);
                }
            }
        }
        Ok(stale)
    }

    /// Persistent blocks with their current versions (stored at shutdown).
    pub fn persistent_versions(&self) -> Vec<(String, String, u64)> {
        self.lock()
            .values()
            .filter(|e| e.meta.persistent)
            .map(|e| (e.meta.pool.to_string(), e.meta.block_id.to_string(), e.block.version()))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<(PoolName, BlockId), Arc<Entry>>> {
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Every block.
    pub fn all(&self) -> Vec<Arc<Entry>> {
        self.lock().values().cloned().collect()
    }

    pub fn get(&self, pool: &PoolName, id: &BlockId) -> Result<Arc<Entry>, Refusal> {
        self.lock()
            .get(&(pool.clone(), id.clone()))
            .cloned()
            .ok_or_else(|| Refusal::new(ErrorCode::BlockNotFound, format!("no block '{id}' in pool '{pool}'")))
    }

    pub fn list(&self, pool: &PoolName) -> Vec<Arc<Entry>> {
        self.lock()
            .iter()
            .filter(|((p, _), _)| p == pool)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Creates a block file and registers it.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        pool: &PoolName,
        id: &BlockId,
        owner: &AppId,
        kind: BlockType,
        size: u64,
        persistent: bool,
        permissions: Permissions,
        overwrite: bool,
    ) -> Result<Arc<Entry>, Refusal> {
        let max = self.config.max_block_size;
        if size == 0 || size > max {
            return Err(Refusal::new(
                ErrorCode::InvalidSize,
                format!("size must be 1 to {max} bytes (the server's max_block_size), got {size}"),
            ));
        }
        // Reserve the name, then make the file without holding the registry: allocating a
        // large block takes a while, and other blocks' operations must not wait for it.
        let key = (pool.clone(), id.clone());
        {
            let blocks = self.lock();
            let mut creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
            if blocks.contains_key(&key) || creating.contains(&key) {
                return Err(Refusal::new(
                    ErrorCode::BlockExists,
                    format!("block '{id}' already exists in pool '{pool}'"),
                ));
            }
            if blocks.len() + creating.len() >= self.config.max_blocks {
                return Err(Refusal::new(
                    ErrorCode::Overloaded,
                    format!("the server holds {} blocks, its max_blocks limit", blocks.len()),
                ));
            }
            creating.insert(key.clone());
        }
        struct Reserved<'a>(&'a Memory, (PoolName, BlockId));
        impl Drop for Reserved<'_> {
            fn drop(&mut self) {
                self.0
                    .creating
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&self.1);
            }
        }
        let reserved = Reserved(self, key.clone());
        let root = if persistent {
            &self.persistent_root
        } else {
            &self.volatile_root
        };
        let dir = root.join(pool.as_str());
        create_private_dir(&dir)
            .map_err(|e| Refusal::new(ErrorCode::Internal, format!("cannot create {}: {e}", dir.display())))?;
        let data = dir.join(format!("{id}.{DATA_EXT}"));
        let mkind = match kind {
            BlockType::Binary => Kind::Binary,
            BlockType::Json => Kind::Json,
            BlockType::Stream => Kind::Stream,
        };
        if mkind == Kind::Json && size < 4 {
            return Err(Refusal::new(
                ErrorCode::InvalidSize,
                "a json block needs at least 4 bytes (it starts as `null`)",
            ));
        }
        if mkind == Kind::Stream && size < 16 {
            return Err(Refusal::new(
                ErrorCode::InvalidSize,
                "a stream block needs at least 16 bytes (one record of up to 8 bytes)",
            ));
        }
        // A leftover file of the same name (a crash between create and metadata) is stale: the
        // block is not registered, and we hold the data dir.
        if data.exists() {
            let _ = std::fs::remove_file(&data);
        }
        let block = Block::create(
            &data,
            Spec {
                kind: mkind,
                size,
                overwrite,
            },
        )?;
        let meta = Meta {
            pool: pool.clone(),
            block_id: id.clone(),
            kind: kind.as_str().to_owned(),
            size,
            persistent,
            overflow: (kind == BlockType::Stream).then(|| if overwrite { "overwrite" } else { "error" }.to_owned()),
            owner: owner.clone(),
            permissions: PermissionsMeta {
                read: permissions.read.clone(),
                write: permissions.write.clone(),
            },
            created_at: now_ms(),
        };
        let entry = Arc::new(Entry {
            meta,
            perms: permissions,
            block,
            state: Mutex::default(),
            deleted: AtomicBool::new(false),
            json_checked: AtomicU64::new(0),
            sealed_newest: Mutex::default(),
        });
        let mut blocks = self.lock();
        blocks.insert(key, entry.clone());
        drop(reserved);
        Ok(entry)
    }

    /// Unregisters a block and removes its files. Watchers are told; lock waiters fail.
    pub fn delete(&self, entry: &Arc<Entry>) {
        let key = (entry.meta.pool.clone(), entry.meta.block_id.clone());
        let removed = {
            let mut blocks = self.lock();
            match blocks.get(&key) {
                Some(e) if Arc::ptr_eq(e, entry) => blocks.remove(&key),
                _ => None,
            }
        };
        if removed.is_none() || entry.deleted.swap(true, Ordering::SeqCst) {
            return;
        }
        let path = entry.block.path().to_owned();
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(file = %path.display(), error = %e, "cannot remove a deleted block's file");
        }
        // After the unlink, so that a crash in between never leaves a file marked deleted:
        // processes that still map the block stop reading and writing it.
        entry.block.mark_deleted();
        let frame = latzero_proto::frame::encode_message(&json!({
            "action": "block_event",
            "event": "deleted",
            "pool": entry.meta.pool,
            "block_id": entry.meta.block_id,
            "version": entry.block.version(),
        }));
        let mut st = entry.state();
        for w in st.watchers.values() {
            let _ = w.send(&frame);
        }
        st.watchers.clear();
        st.locks.fail_all(
            ErrorCode::BlockNotFound,
            &format!("block '{}' was deleted", entry.meta.block_id),
        );
    }

    /// A pool was removed: its non-persistent blocks go with it. Returns how many.
    pub fn remove_pool(&self, pool: &PoolName) -> usize {
        let gone: Vec<_> = self.list(pool).into_iter().filter(|e| !e.meta.persistent).collect();
        for e in &gone {
            self.delete(e);
        }
        gone.len()
    }

    /// The connections `gone` picks left `pool` (or were taken out of it; `why` says how): their
    /// leases on its blocks end, their lock waits fail with NOT_IN_POOL, and their watches end
    /// with an `unwatched` event, since a watch needs membership as every block action does.
    pub fn on_leave(&self, pool: &PoolName, gone: impl Fn(ConnId) -> bool, why: &str) {
        for e in self.list(pool) {
            let mut st = e.state();
            let ended: Vec<Arc<Conn>> = st.watchers.values().filter(|c| gone(c.id)).cloned().collect();
            if !ended.is_empty() {
                let frame = e.unwatched(why);
                for c in ended {
                    st.watchers.remove(&c.id);
                    let _ = c.send(&frame);
                }
            }
            st.locks.release(&gone, &e, Some(why));
        }
    }

    /// A policy change took rights away from members that stay in `pool`: the watches of the
    /// connections in `no_read` end with an `unwatched` event, and the leases (and lock waits)
    /// that need a right their connection lost end too — shared ones need read, exclusive ones
    /// write. A holder is told by `lock_expired`, a waiter by PERMISSION_DENIED.
    pub fn on_revoke(&self, pool: &PoolName, no_read: &[ConnId], no_write: &[ConnId]) {
        if no_read.is_empty() && no_write.is_empty() {
            return;
        }
        let why = |app: &str, op: &str| {
            format!("the policies of pool '{pool}' no longer allow app '{app}' to {op} memory blocks")
        };
        for e in self.list(pool) {
            let mut st = e.state();
            let ended: Vec<Arc<Conn>> = st
                .watchers
                .values()
                .filter(|c| no_read.contains(&c.id))
                .cloned()
                .collect();
            for c in ended {
                st.watchers.remove(&c.id);
                let _ = c.send(&e.unwatched(&why(c.app_str(), "read")));
            }
            st.locks.revoke(
                |c, mode| match mode {
                    LockMode::Shared => no_read.contains(&c),
                    LockMode::Exclusive => no_write.contains(&c),
                },
                &e,
                |app, mode| why(app, if mode == LockMode::Shared { "read" } else { "write" }),
            );
        }
    }

    /// Releases a closed connection's locks, lock waits and watches.
    pub fn on_disconnect(&self, conn: ConnId) {
        let entries: Vec<_> = self.lock().values().cloned().collect();
        for e in entries {
            let mut st = e.state();
            st.watchers.remove(&conn);
            st.locks.release_conn(conn, &e);
        }
    }

    /// At shutdown: flushes persistent blocks to disk and removes the non-persistent ones
    /// (processes that still map one keep their mapping until they unmap it, but reads and
    /// writes through it fail, as for a deleted block).
    pub fn close(&self) {
        self.flush_persistent();
        if let Err(e) = std::fs::remove_dir_all(&self.volatile_root) {
            tracing::warn!(dir = %self.volatile_root.display(), error = %e, "cannot remove non-persistent blocks");
        }
        // They are gone, as if deleted: processes that still map one stop using it.
        for e in self.lock().values().filter(|e| !e.meta.persistent) {
            e.block.mark_deleted();
        }
    }

    fn flush_persistent(&self) {
        for e in self.lock().values().filter(|e| e.meta.persistent) {
            if let Err(err) = e.block.flush() {
                tracing::warn!(block = %e.meta.block_id, error = %err, "flushing a persistent block failed");
            }
        }
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}
