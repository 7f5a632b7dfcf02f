//! The durable store: SQLite (`data.db` in the data dir, or `:memory:`) on a thread of its own.
//!
//! [`Store`] is a cheap handle: each operation is sent to the store's thread with a reply channel
//! and awaited, so async code never blocks on the database and the RPC path never touches it.
//! The thread runs one operation at a time on its one connection (WAL mode by default, so
//! readers of a backup never stop it) and publishes a [`StoreEvent`] after each change commits.
//! The schema and its migrations are in `schema.rs`; the records and their SQL in `records.rs`.

pub(crate) mod records;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rusqlite::Connection;
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

pub use self::records::{AppRecord, AppUpdate, BlockRecord, BlockUpdate, PoolRecord, PoolUpdate, now_ms};
pub use self::schema::SCHEMA_VERSION;

/// The database file's name in the data dir.
pub const DB_FILE: &str = "data.db";

/// How the store opens its database (the seed's `memoryMode`, `walMode`, `cacheSize`) and how
/// often it is backed up (`backupInterval`, `maxBackups`).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Time between automatic backups into `backups/`; zero turns them off.
    pub backup_interval: std::time::Duration,
    /// Automatic backups kept (older ones are removed); at least 1.
    pub max_backups: usize,
    /// `:memory:`: nothing survives the process (tests, throwaway servers).
    pub memory_mode: bool,
    /// Write-ahead logging (disk mode): readers and online backups never block writes.
    pub wal_mode: bool,
    /// SQLite's `cache_size` (positive: pages; negative: KiB).
    pub cache_size: i64,
    /// App registrations stored at most; a new app past it is served but not remembered.
    pub max_apps: usize,
    /// How long the registration of an app that is not connected is kept after it was last
    /// seen, counting only the time the server runs; zero keeps it for ever.
    pub app_retention: std::time::Duration,
}

/// The default of [`StoreConfig::max_apps`].
pub const DEFAULT_MAX_APPS: usize = 65_536;

/// The `server_config` key of the server's runs (see [`Store::forget_absent_apps`]).
const RUNS: &str = "server_runs";

/// Server runs remembered at most for [`Store::forget_absent_apps`].
pub const MAX_RUNS: usize = 1024;

/// The default of [`StoreConfig::app_retention`]: 30 days.
pub const DEFAULT_APP_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backup_interval: std::time::Duration::from_secs(24 * 3600),
            max_backups: 7,
            memory_mode: false,
            wal_mode: true,
            cache_size: 1000,
            max_apps: DEFAULT_MAX_APPS,
            app_retention: DEFAULT_APP_RETENTION,
        }
    }
}

/// Why a store operation failed. Each message tells its cause itself, and no variant hands it
/// on as [`source`](std::error::Error::source) too (a report walking the chain would tell it
/// twice).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no (a disk error, a full disk, a read-only file, a corrupt database, ...).
    #[error("database: {0}")]
    Sqlite(rusqlite::Error),
    /// Opening the database file failed.
    #[error("cannot open database {path}: {error}")]
    Open { path: PathBuf, error: rusqlite::Error },
    /// The record does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The record already exists.
    #[error("{0} already exists")]
    Exists(String),
    /// A value the schema does not allow.
    #[error("{0}")]
    Invalid(String),
    /// The database was written by a newer latzero.
    #[error("the database has schema version {found}; this build knows up to {known}: use a newer latzero")]
    TooNew { found: i64, known: i64 },
    /// The registry holds `max_apps` registrations; a new app is not stored.
    #[error(
        "the registry holds {max} app registrations (store.max_stored_apps), so this app is not \
         remembered: remove old ones with `latzero apps remove`, or raise --max-stored-apps"
    )]
    RegistryFull { max: usize },
    /// The store's thread has stopped.
    #[error("the store is closed")]
    Closed,
    /// The database file is damaged: not a database, or its pages fail SQLite's check.
    #[error("the database {} is damaged: {why}", path.display())]
    Damaged { path: PathBuf, why: String },
}

/// Whether `e` says the file is damaged (rather than, say, unreadable or locked).
fn damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// The first lines of `PRAGMA quick_check` if it finds damage: every page and index of the
/// file read once (11 ms for a 10 MB table of 65,536 registration-sized rows), so that a
/// damaged registry is found at start rather than by whichever request first reads the damaged
/// page.
fn quick_check(conn: &Connection) -> Result<Option<String>, rusqlite::Error> {
    const SHOWN: usize = 5;
    let mut stmt = conn.prepare("PRAGMA quick_check(6)")?;
    let lines: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    if lines.len() == 1 && lines[0] == "ok" {
        return Ok(None);
    }
    let more = if lines.len() > SHOWN { "; ..." } else { "" };
    let shown: Vec<String> = lines.iter().take(SHOWN).map(|l| l.replace('\n', " ")).collect();
    Ok(Some(format!("{}{more}", shown.join("; "))))
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

/// What changed, published after the change committed.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreEvent {
    AppRegistered(String),
    AppUpdated(String),
    AppRemoved(String),
    PoolCreated(String),
    PoolUpdated(String),
    PoolRemoved(String),
    BlockCreated { pool: String, block_id: String },
    BlockUpdated { pool: String, block_id: String },
    BlockRemoved { pool: String, block_id: String },
    BackupCreated(PathBuf),
}

/// The store's statistics (the seed's `getStats`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreStats {
    pub schema_version: i64,
    pub path: Option<PathBuf>,
    pub memory_mode: bool,
    pub journal_mode: String,
    pub cache_size: i64,
    pub apps: i64,
    pub pools: i64,
    pub blocks: i64,
}

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// The thread's side: the connection and where events go.
pub(crate) struct Db {
    conn: Connection,
    events: broadcast::Sender<StoreEvent>,
    path: Option<PathBuf>,
    config: StoreConfig,
    /// Set by `close`: the thread stops, closes the connection, then says so.
    closing: Option<oneshot::Sender<()>>,
}

impl Db {
    fn emit(&self, e: StoreEvent) {
        let _ = self.events.send(e);
    }
}

/// A handle to the store. Clones share the thread; it stops when the last handle is dropped
/// (or at [`Store::close`]).
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
    events: broadcast::Sender<StoreEvent>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn open_conn(data_dir: &Path, config: &StoreConfig) -> Result<(Connection, Option<PathBuf>), StoreError> {
    if config.memory_mode {
        return Ok((Connection::open_in_memory()?, None));
    }
    let path = data_dir.join(DB_FILE);
    let conn = Connection::open(&path).map_err(|error| StoreError::Open {
        path: path.clone(),
        error,
    })?;
    Ok((conn, Some(path)))
}

impl Store {
    /// Opens (creating and migrating as needed) the database and starts the store's thread.
    /// A damaged file is [`StoreError::Damaged`], and is not changed.
    pub fn open(data_dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        Self::open_checked(data_dir, config).map_err(|e| match e {
            StoreError::Sqlite(e) | StoreError::Open { error: e, .. } if damage(&e) => StoreError::Damaged {
                path: data_dir.join(DB_FILE),
                why: e.to_string(),
            },
            e => e,
        })
    }

    fn open_checked(data_dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        let (mut conn, path) = open_conn(data_dir, &config)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Before anything writes to the file (a journal mode changed, a migration).
        if let (Some(path), Some(why)) = (&path, quick_check(&conn)?) {
            return Err(StoreError::Damaged {
                path: path.clone(),
                why,
            });
        }
        if !config.memory_mode {
            let mode = if config.wal_mode { "WAL" } else { "DELETE" };
            let got: String = conn.pragma_update_and_check(None, "journal_mode", mode, |r| r.get(0))?;
            if !got.eq_ignore_ascii_case(mode) {
                return Err(StoreError::Invalid(format!(
                    "journal_mode {mode} was refused (got {got})"
                )));
            }
            // WAL with NORMAL survives a killed process (not a power cut mid-checkpoint);
            // without WAL, FULL.
            conn.pragma_update(None, "synchronous", if config.wal_mode { "NORMAL" } else { "FULL" })?;
        }
        conn.pragma_update(None, "cache_size", config.cache_size)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        schema::migrate_to(&mut conn, SCHEMA_VERSION)?;
        let (events, _) = broadcast::channel(1024);
        let (jobs, rx) = mpsc::channel::<Job>();
        let mut db = Db {
            conn,
            events: events.clone(),
            path,
            config,
            closing: None,
        };
        std::thread::Builder::new()
            .name("latzero-store".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut db);
                    if let Some(done) = db.closing.take() {
                        drop(db);
                        let _ = done.send(());
                        return;
                    }
                }
            })
            .map_err(|e| StoreError::Invalid(format!("cannot start the store's thread: {e}")))?;
        Ok(Store { jobs, events })
    }

    /// Subscribes to changes.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    /// Runs `f` on the store's thread and waits for its result.
    pub(crate) async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |db| {
                let _ = tx.send(f(db));
            }))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` as one transaction: all of it commits, or none (the seed's `transaction`).
    pub async fn transaction<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.run(move |db| {
            let tx = db.conn.transaction()?;
            let r = f(&tx)?;
            tx.commit()?;
            Ok(r)
        })
        .await
    }

    // Apps.

    /// Registers an app (or refreshes its registration). A new app past `max_apps` is
    /// refused with [`StoreError::RegistryFull`].
    pub async fn register_app(&self, app: AppRecord) -> Result<(), StoreError> {
        self.run(move |db| {
            let max = db.config.max_apps;
            // Counted only for a new app (a lookup by key first): SQLite counts a table by
            // walking it.
            if records::get_app(&db.conn, &app.app_id)?.is_none() && records::count_apps(&db.conn)? >= max {
                return Err(StoreError::RegistryFull { max });
            }
            records::register_app(&db.conn, &app)?;
            db.emit(StoreEvent::AppRegistered(app.app_id));
            Ok(())
        })
        .await
    }

    pub async fn get_app(&self, app_id: &str) -> Result<Option<AppRecord>, StoreError> {
        let id = app_id.to_owned();
        self.run(move |db| records::get_app(&db.conn, &id)).await
    }

    pub async fn update_app(&self, app_id: &str, u: AppUpdate) -> Result<AppRecord, StoreError> {
        let id = app_id.to_owned();
        self.run(move |db| {
            let a = records::update_app(&db.conn, &id, &u)?;
            db.emit(StoreEvent::AppUpdated(id));
            Ok(a)
        })
        .await
    }

    pub async fn remove_app(&self, app_id: &str) -> Result<bool, StoreError> {
        self.remove_app_unless(app_id, || false)
            .await
            .map(|r| r.unwrap_or(false))
    }

    /// Removes an app's registration unless `busy` (asked on the store's thread, in the store's
    /// order) says it is in use: `None` then. A session adds its app to the directory before it
    /// queues its registration, so a `busy` that looks there either sees the app, or runs before
    /// the registration is stored, which then stores it afresh.
    pub async fn remove_app_unless(
        &self,
        app_id: &str,
        busy: impl FnOnce() -> bool + Send + 'static,
    ) -> Result<Option<bool>, StoreError> {
        let id = app_id.to_owned();
        self.run(move |db| {
            if busy() {
                return Ok(None);
            }
            let removed = records::remove_app(&db.conn, &id)?;
            if removed {
                db.emit(StoreEvent::AppRemoved(id));
            }
            Ok(Some(removed))
        })
        .await
    }

    /// Records that the server run that began at `run_started` is alive at `now`, then forgets
    /// the registrations of the apps that have not been seen for `retention` ms of the server's
    /// running time — time it was stopped does not count, so a server started again after a
    /// long stop does not forget every app at once — unless `connected` (asked on the store's
    /// thread, as [`remove_app_unless`](Self::remove_app_unless) does) says the app is
    /// connected. Returns the ids forgotten.
    ///
    /// The runs are kept in `server_config` (`server_runs`: `[[started, alive], ...]`, at most
    /// [`MAX_RUNS`], oldest first); time before the oldest kept counts as stopped, so an app
    /// is only ever kept longer for it.
    pub async fn forget_absent_apps(
        &self,
        run_started: i64,
        now: i64,
        retention: i64,
        connected: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<Vec<String>, StoreError> {
        self.run(move |db| {
            let tx = db.conn.transaction()?;
            let mut runs: Vec<(i64, i64)> = records::load_config(&tx, RUNS)?
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            match runs.last_mut() {
                Some(last) if last.0 == run_started => last.1 = now,
                _ => runs.push((run_started, now)),
            }
            if runs.len() > MAX_RUNS {
                runs.drain(..runs.len() - MAX_RUNS);
            }
            records::save_config(&tx, RUNS, &serde_json::json!(runs))?;
            let running_since = |t: i64| -> i64 { runs.iter().map(|&(s, a)| (a.min(now) - s.max(t)).max(0)).sum() };
            let mut gone: Vec<String> = records::apps_seen_before(&tx, now.saturating_sub(retention))?
                .into_iter()
                .filter(|(_, seen)| running_since(*seen) >= retention)
                .map(|(id, _)| id)
                .collect();
            gone.retain(|id| !connected(id));
            for id in &gone {
                records::remove_app(&tx, id)?;
            }
            tx.commit()?;
            for id in &gone {
                db.emit(StoreEvent::AppRemoved(id.clone()));
            }
            Ok(gone)
        })
        .await
    }

    pub async fn all_apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        self.run(|db| records::all_apps(&db.conn)).await
    }

    /// A page of the registrations by app id: those after `after`, at most `limit`.
    pub async fn apps_page(&self, after: Option<String>, limit: Option<usize>) -> Result<Vec<AppRecord>, StoreError> {
        self.run(move |db| records::apps_page(&db.conn, after.as_deref().unwrap_or(""), limit))
            .await
    }

    pub async fn apps_by_pool(&self, pool: &str) -> Result<Vec<AppRecord>, StoreError> {
        let p = pool.to_owned();
        self.run(move |db| records::apps_by_pool(&db.conn, &p)).await
    }

    // Pools.

    pub async fn create_pool(&self, pool: PoolRecord) -> Result<(), StoreError> {
        self.run(move |db| {
            records::create_pool(&db.conn, &pool)?;
            db.emit(StoreEvent::PoolCreated(pool.name));
            Ok(())
        })
        .await
    }

    pub async fn get_pool(&self, name: &str) -> Result<Option<PoolRecord>, StoreError> {
        let n = name.to_owned();
        self.run(move |db| records::get_pool(&db.conn, &n)).await
    }

    pub async fn update_pool(&self, name: &str, u: PoolUpdate) -> Result<PoolRecord, StoreError> {
        let n = name.to_owned();
        self.run(move |db| {
            let p = records::update_pool(&db.conn, &n, &u)?;
            db.emit(StoreEvent::PoolUpdated(n));
            Ok(p)
        })
        .await
    }

    pub async fn remove_pool(&self, name: &str) -> Result<bool, StoreError> {
        let n = name.to_owned();
        self.run(move |db| {
            let removed = records::remove_pool(&db.conn, &n)?;
            if removed {
                db.emit(StoreEvent::PoolRemoved(n));
            }
            Ok(removed)
        })
        .await
    }

    pub async fn all_pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        self.run(|db| records::all_pools(&db.conn)).await
    }

    pub async fn pools_by_type(&self, kind: &str) -> Result<Vec<PoolRecord>, StoreError> {
        let k = kind.to_owned();
        self.run(move |db| records::pools_by_type(&db.conn, &k)).await
    }

    // Memory blocks.

    pub async fn create_block(&self, block: BlockRecord) -> Result<(), StoreError> {
        self.run(move |db| {
            records::create_block(&db.conn, &block)?;
            db.emit(StoreEvent::BlockCreated {
                pool: block.pool,
                block_id: block.block_id,
            });
            Ok(())
        })
        .await
    }

    pub async fn get_block(&self, pool: &str, block_id: &str) -> Result<Option<BlockRecord>, StoreError> {
        let (p, b) = (pool.to_owned(), block_id.to_owned());
        self.run(move |db| records::get_block(&db.conn, &p, &b)).await
    }

    pub async fn update_block(&self, pool: &str, block_id: &str, u: BlockUpdate) -> Result<BlockRecord, StoreError> {
        let (p, b) = (pool.to_owned(), block_id.to_owned());
        self.run(move |db| {
            let r = records::update_block(&db.conn, &p, &b, &u)?;
            db.emit(StoreEvent::BlockUpdated { pool: p, block_id: b });
            Ok(r)
        })
        .await
    }

    pub async fn remove_block(&self, pool: &str, block_id: &str) -> Result<bool, StoreError> {
        let (p, b) = (pool.to_owned(), block_id.to_owned());
        self.run(move |db| {
            let removed = records::remove_block(&db.conn, &p, &b)?;
            if removed {
                db.emit(StoreEvent::BlockRemoved { pool: p, block_id: b });
            }
            Ok(removed)
        })
        .await
    }

    pub async fn all_blocks(&self) -> Result<Vec<BlockRecord>, StoreError> {
        self.run(|db| records::all_blocks(&db.conn)).await
    }

    pub async fn blocks_by_pool(&self, pool: &str) -> Result<Vec<BlockRecord>, StoreError> {
        let p = pool.to_owned();
        self.run(move |db| records::blocks_by_pool(&db.conn, &p)).await
    }

    // Server settings, statistics, backups.

    pub async fn save_config(&self, key: &str, value: Value) -> Result<(), StoreError> {
        let k = key.to_owned();
        self.run(move |db| records::save_config(&db.conn, &k, &value)).await
    }

    pub async fn load_config(&self, key: &str) -> Result<Option<Value>, StoreError> {
        let k = key.to_owned();
        self.run(move |db| records::load_config(&db.conn, &k)).await
    }

    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.run(|db| {
            let count = |t: &str| -> Result<i64, StoreError> {
                Ok(db
                    .conn
                    .query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))?)
            };
            Ok(StoreStats {
                schema_version: schema::user_version(&db.conn)?,
                path: db.path.clone(),
                memory_mode: db.config.memory_mode,
                journal_mode: db.conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?,
                cache_size: db.conn.pragma_query_value(None, "cache_size", |r| r.get(0))?,
                apps: count("app_registry")?,
                pools: count("pool_metadata")?,
                blocks: count("memory_blocks")?,
            })
        })
        .await
    }

    /// Copies the live database to `dest` with SQLite's online backup API, then checks the
    /// copy's integrity. The copy is written under a temporary name and renamed when complete,
    /// so a backup file is never a partial one.
    pub async fn backup_to(&self, dest: &Path) -> Result<PathBuf, StoreError> {
        self.backup_with_progress(dest, None).await
    }

    /// [`Store::backup_to`], reporting `(pages copied, pages in total)` as it goes.
    pub async fn backup_with_progress(
        &self,
        dest: &Path,
        progress: Option<tokio::sync::mpsc::UnboundedSender<(u64, u64)>>,
    ) -> Result<PathBuf, StoreError> {
        let dest = dest.to_path_buf();
        self.run(move |db| {
            let tmp = dest.with_extension("partial");
            let copied = (|| -> Result<(), StoreError> {
                let mut to = Connection::open(&tmp).map_err(|error| StoreError::Open {
                    path: tmp.clone(),
                    error,
                })?;
                {
                    let b = rusqlite::backup::Backup::new(&db.conn, &mut to)?;
                    // Steps of 64 pages: the store's thread is the only writer, so no step waits.
                    while b.step(64)? != rusqlite::backup::StepResult::Done {
                        if let Some(tx) = &progress {
                            let p = b.progress();
                            let total = p.pagecount.max(0) as u64;
                            let _ = tx.send((total.saturating_sub(p.remaining.max(0) as u64), total));
                        }
                    }
                    if let Some(tx) = &progress {
                        let total = b.progress().pagecount.max(0) as u64;
                        let _ = tx.send((total, total));
                    }
                }
                let check: String = to.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
                if check != "ok" {
                    return Err(StoreError::Invalid(format!(
                        "the backup failed its integrity check: {check}"
                    )));
                }
                Ok(())
            })();
            if let Err(e) = copied {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            std::fs::rename(&tmp, &dest)
                .map_err(|e| StoreError::Invalid(format!("cannot move the backup into place: {e}")))?;
            db.emit(StoreEvent::BackupCreated(dest.clone()));
            Ok(dest)
        })
        .await
    }

    /// Runs the operations already sent, checkpoints the WAL (so the database file alone is
    /// complete), closes the database and stops the thread. Other handles then get
    /// [`StoreError::Closed`].
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel::<()>();
        let _ = self.jobs.send(Box::new(move |db| {
            if let Err(e) = db.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "checkpointing the database at close failed");
            }
            db.closing = Some(tx);
        }));
        let _ = rx.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A store in memory (`memory_mode`), with `config` otherwise.
    fn in_memory(config: StoreConfig) -> Store {
        Store::open(
            Path::new("/nonexistent"),
            StoreConfig {
                memory_mode: true,
                ..config
            },
        )
        .unwrap()
    }

    fn app(id: &str, pools: &[&str]) -> AppRecord {
        AppRecord {
            app_id: id.into(),
            pools: pools.iter().map(|s| s.to_string()).collect(),
            triggers: vec!["t".into()],
            meta: json!({"v": 1}),
            protocol_version: "1.0".into(),
            registered: 1,
            last_seen: 2,
            rehydrated: false,
        }
    }

    fn pool(name: &str, kind: &str) -> PoolRecord {
        PoolRecord {
            name: name.into(),
            kind: kind.into(),
            encrypted: kind == "encrypted",
            owners: vec!["a".into()],
            policies: json!({"write": ["a"]}),
            description: "d".into(),
            created: 1,
            updated: 1,
            config: json!({}),
        }
    }

    fn block(pool: &str, id: &str) -> BlockRecord {
        BlockRecord {
            pool: pool.into(),
            block_id: id.into(),
            name: None,
            size: 4096,
            kind: "binary".into(),
            permissions: json!({"read": ["*"], "write": ["*"]}),
            version: 0,
            created: 1,
            updated: 1,
            persistent: true,
            encrypted: false,
            config: json!({}),
        }
    }

    async fn crud(s: &Store) {
        let mut ev = s.subscribe();
        s.register_app(app("a", &["p", "q"])).await.unwrap();
        s.register_app(app("b", &["q"])).await.unwrap();
        assert_eq!(ev.recv().await.unwrap(), StoreEvent::AppRegistered("a".into()));
        assert_eq!(s.get_app("a").await.unwrap().unwrap().pools, vec!["p", "q"]);
        assert_eq!(s.apps_by_pool("q").await.unwrap().len(), 2);
        assert_eq!(s.apps_by_pool("p").await.unwrap().len(), 1);
        let u = s
            .update_app(
                "a",
                AppUpdate {
                    triggers: Some(vec!["x".into(), "y".into()]),
                    ..AppUpdate::default()
                },
            )
            .await
            .unwrap();
        assert_eq!((u.triggers.len(), u.pools.len()), (2, 2), "other fields kept");
        assert!(matches!(
            s.update_app("zz", AppUpdate::default()).await,
            Err(StoreError::NotFound(_))
        ));
        // An app in use is not removed, and its registration stays.
        assert_eq!(s.remove_app_unless("b", || true).await.unwrap(), None);
        assert!(s.get_app("b").await.unwrap().is_some());
        assert!(s.remove_app("b").await.unwrap());
        assert!(!s.remove_app("b").await.unwrap());
        assert_eq!(s.all_apps().await.unwrap().len(), 1);

        s.create_pool(pool("p", "local")).await.unwrap();
        s.create_pool(pool("e", "encrypted")).await.unwrap();
        assert!(matches!(
            s.create_pool(pool("p", "local")).await,
            Err(StoreError::Exists(_))
        ));
        assert!(matches!(
            s.create_pool(pool("x", "bogus")).await,
            Err(StoreError::Invalid(_))
        ));
        let p = s
            .update_pool(
                "p",
                PoolUpdate {
                    description: Some("new".into()),
                    ..PoolUpdate::default()
                },
            )
            .await
            .unwrap();
        assert_eq!((p.description.as_str(), p.owners.len()), ("new", 1));
        assert_eq!(s.pools_by_type("encrypted").await.unwrap()[0].name, "e");
        assert!(s.remove_pool("e").await.unwrap());
        assert_eq!(s.all_pools().await.unwrap().len(), 1);
        // Stored memberships go with a pool, stored or not; others stay, in their order.
        s.register_app(app("m", &["q", "live", "p"])).await.unwrap();
        assert!(!s.remove_pool("live").await.unwrap(), "no stored configuration");
        assert_eq!(s.get_app("m").await.unwrap().unwrap().pools, vec!["q", "p"]);
        assert_eq!(s.get_app("a").await.unwrap().unwrap().pools, vec!["p", "q"]);
        assert!(s.remove_app("m").await.unwrap());

        s.create_block(block("p", "frame")).await.unwrap();
        s.create_block(block("q", "frame")).await.unwrap();
        assert!(matches!(
            s.create_block(block("p", "frame")).await,
            Err(StoreError::Exists(_))
        ));
        let b = s
            .update_block(
                "p",
                "frame",
                BlockUpdate {
                    version: Some(9),
                    ..BlockUpdate::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(b.version, 9);
        assert_eq!(s.get_block("q", "frame").await.unwrap().unwrap().version, 0);
        assert_eq!(s.blocks_by_pool("p").await.unwrap().len(), 1);
        assert!(s.remove_block("q", "frame").await.unwrap());
        assert_eq!(s.all_blocks().await.unwrap().len(), 1);

        s.save_config("flags", json!({"new": true})).await.unwrap();
        assert_eq!(s.load_config("flags").await.unwrap(), Some(json!({"new": true})));
        assert_eq!(s.load_config("none").await.unwrap(), None);
        let st = s.stats().await.unwrap();
        assert_eq!(
            (st.apps, st.pools, st.blocks, st.schema_version),
            (1, 1, 1, SCHEMA_VERSION)
        );
    }

    #[tokio::test]
    async fn every_crud_operation_in_memory_mode() {
        let s = in_memory(StoreConfig::default());
        crud(&s).await;
        assert_eq!(s.stats().await.unwrap().path, None);
    }

    #[tokio::test]
    async fn a_full_registry_refuses_new_apps_and_still_updates_stored_ones() {
        let s = in_memory(StoreConfig {
            max_apps: 2,
            ..StoreConfig::default()
        });
        s.register_app(app("a", &[])).await.unwrap();
        s.register_app(app("b", &[])).await.unwrap();
        let e = s.register_app(app("c", &[])).await.unwrap_err();
        assert!(matches!(e, StoreError::RegistryFull { max: 2 }), "{e}");
        assert!(e.to_string().contains("--max-stored-apps"), "{e}");
        assert_eq!(s.get_app("c").await.unwrap(), None);
        // A stored app registers again (a reconnect), and a removal makes room.
        s.register_app(app("a", &["p"])).await.unwrap();
        assert_eq!(s.get_app("a").await.unwrap().unwrap().pools, ["p"]);
        assert!(s.remove_app("b").await.unwrap());
        s.register_app(app("c", &[])).await.unwrap();
    }

    #[tokio::test]
    async fn registrations_absent_for_the_retention_of_running_time_are_forgotten_unless_connected() {
        let s = in_memory(StoreConfig::default());
        for (id, seen) in [("old", 10), ("old-but-connected", 10), ("edge", 100), ("new", 200)] {
            s.register_app(AppRecord {
                last_seen: seen,
                ..app(id, &[])
            })
            .await
            .unwrap();
        }
        let mut events = s.subscribe();
        // One run from 0, at 200 now: 100 ms of retention reaches back to 100.
        let gone = s
            .forget_absent_apps(0, 200, 100, |id| id == "old-but-connected")
            .await
            .unwrap();
        assert_eq!(gone, ["old"]);
        assert_eq!(events.recv().await.unwrap(), StoreEvent::AppRemoved("old".into()));
        let left: Vec<String> = s.all_apps().await.unwrap().into_iter().map(|a| a.app_id).collect();
        assert_eq!(left, ["edge", "new", "old-but-connected"]);

        // The server stops at 200 and starts again at 10,000: the stop does not count. At
        // 10,050, "edge" (seen at 100) has been absent 150 ms of running time; "new" (seen at
        // 200) 9,850 ms of wall time but 50 of running time.
        let connected = |id: &str| id == "old-but-connected";
        assert_eq!(
            s.forget_absent_apps(10_000, 10_050, 100, connected).await.unwrap(),
            ["edge"]
        );
        // 50 ms more of this run, and "new" has 100 of running time.
        assert_eq!(
            s.forget_absent_apps(10_000, 10_100, 100, connected).await.unwrap(),
            ["new"]
        );
        let runs = s.load_config(RUNS).await.unwrap().unwrap();
        assert_eq!(runs, serde_json::json!([[0, 200], [10_000, 10_100]]));
    }

    #[tokio::test]
    async fn disk_mode_survives_a_reopen_with_wal_and_cache_size_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(
            dir.path(),
            StoreConfig {
                cache_size: 2000,
                ..StoreConfig::default()
            },
        )
        .unwrap();
        crud(&s).await;
        let st = s.stats().await.unwrap();
        assert_eq!((st.journal_mode.as_str(), st.cache_size), ("wal", 2000));
        s.close().await;
        let s = Store::open(
            dir.path(),
            StoreConfig {
                wal_mode: false,
                ..StoreConfig::default()
            },
        )
        .unwrap();
        assert_eq!(s.stats().await.unwrap().journal_mode, "delete");
        assert_eq!(s.get_app("a").await.unwrap().unwrap().triggers, vec!["x", "y"]);
    }

    /// A file that is not a database, and a database with a damaged page, are refused at open
    /// as damaged, and neither is changed: the database was written without WAL, and opening
    /// it with WAL (the default) would change its header before a migration could.
    #[tokio::test]
    async fn a_damaged_database_is_refused_at_open_and_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let no_wal = StoreConfig {
            wal_mode: false,
            ..StoreConfig::default()
        };
        let s = Store::open(dir.path(), no_wal).unwrap();
        for i in 0..300 {
            s.register_app(app(&format!("app-{i:03}"), &["p"])).await.unwrap();
        }
        s.close().await;
        let file = dir.path().join(DB_FILE);
        let mut bytes = std::fs::read(&file).unwrap();
        let page = match u16::from_be_bytes([bytes[16], bytes[17]]) {
            1 => 65_536,
            n => usize::from(n),
        };
        let pages = bytes.len() / page;
        assert!(pages >= 4, "{pages} pages");
        // The last page (the registry's rows) overwritten, its header too.
        bytes[(pages - 1) * page..].fill(0x5a);
        let not_a_database: Vec<u8> = (0..50_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        for (what, damaged) in [("a damaged page", bytes), ("not a database", not_a_database)] {
            std::fs::write(&file, &damaged).unwrap();
            match Store::open(dir.path(), StoreConfig::default()) {
                Err(StoreError::Damaged { path, why }) => {
                    assert_eq!(path, file, "{what}");
                    assert!(!why.is_empty(), "{what}");
                }
                Err(e) => panic!("{what}: {e}"),
                Ok(_) => panic!("{what}: opened"),
            }
            assert!(std::fs::read(&file).unwrap() == damaged, "{what}: the file was changed");
        }
    }

    #[tokio::test]
    async fn transactions_commit_whole_or_not_at_all() {
        let s = Store::open(
            Path::new("."),
            StoreConfig {
                memory_mode: true,
                ..StoreConfig::default()
            },
        )
        .unwrap();
        let r = s
            .transaction(|c| {
                records::create_pool(c, &pool("p", "local"))?;
                records::create_pool(c, &pool("p", "local"))
            })
            .await;
        assert!(matches!(r, Err(StoreError::Exists(_))));
        assert!(
            s.all_pools().await.unwrap().is_empty(),
            "the first insert was rolled back"
        );
        s.transaction(|c| {
            records::create_pool(c, &pool("p", "local"))?;
            records::register_app(c, &app("a", &["p"]))
        })
        .await
        .unwrap();
        assert_eq!(s.stats().await.unwrap().apps, 1);
    }

    #[tokio::test]
    async fn an_online_backup_is_a_complete_checked_copy() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let mut ev = s.subscribe();
        s.register_app(app("a", &["p"])).await.unwrap();
        let dest = dir.path().join("backup.db");
        assert_eq!(s.backup_to(&dest).await.unwrap(), dest);
        ev.recv().await.unwrap();
        assert_eq!(ev.recv().await.unwrap(), StoreEvent::BackupCreated(dest.clone()));
        let copy = Connection::open(&dest).unwrap();
        let n: i64 = copy
            .query_row("SELECT COUNT(*) FROM app_registry", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(schema::user_version(&copy).unwrap(), SCHEMA_VERSION);
    }
}
