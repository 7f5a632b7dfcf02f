//! The stored records and their CRUD, as plain functions on a connection (the store's thread
//! calls them; tests call them directly). JSON columns hold arrays and objects as text.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::StoreError;

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn json_col<T: serde::de::DeserializeOwned>(r: &Row<'_>, i: usize) -> rusqlite::Result<T> {
    let s: String = r.get(i)?;
    serde_json::from_str(&s)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))
}

fn text<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// An app's registration (`app_registry`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRecord {
    pub app_id: String,
    pub pools: Vec<String>,
    pub triggers: Vec<String>,
    pub meta: Value,
    pub protocol_version: String,
    pub registered: i64,
    pub last_seen: i64,
    pub rehydrated: bool,
}

/// Changes to an app; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AppUpdate {
    pub pools: Option<Vec<String>>,
    pub triggers: Option<Vec<String>>,
    pub meta: Option<Value>,
    pub protocol_version: Option<String>,
    pub last_seen: Option<i64>,
    pub rehydrated: Option<bool>,
}

fn app_row(r: &Row<'_>) -> rusqlite::Result<AppRecord> {
    Ok(AppRecord {
        app_id: r.get(0)?,
        pools: json_col(r, 1)?,
        triggers: json_col(r, 2)?,
        meta: json_col(r, 3)?,
        protocol_version: r.get(4)?,
        registered: r.get(5)?,
        last_seen: r.get(6)?,
        rehydrated: r.get(7)?,
    })
}

const APP_COLS: &str = "app_id, pools, triggers, meta, protocol_version, registered, last_seen, rehydrated";

/// Registers an app, or replaces its pools, triggers and meta if it exists (keeping `registered`).
pub fn register_app(c: &Connection, a: &AppRecord) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO app_registry (app_id, pools, triggers, meta, protocol_version, registered, last_seen, rehydrated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (app_id) DO UPDATE SET pools = ?2, triggers = ?3, meta = ?4, protocol_version = ?5,
             last_seen = ?7, rehydrated = ?8",
        params![
            a.app_id,
            text(&a.pools),
            text(&a.triggers),
            text(&a.meta),
            a.protocol_version,
            a.registered,
            a.last_seen,
            a.rehydrated
        ],
    )?;
    Ok(())
}

pub fn get_app(c: &Connection, app_id: &str) -> Result<Option<AppRecord>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {APP_COLS} FROM app_registry WHERE app_id = ?1"),
        [app_id],
        app_row,
    )
    .optional()?)
}

pub fn update_app(c: &Connection, app_id: &str, u: &AppUpdate) -> Result<AppRecord, StoreError> {
    let mut a = get_app(c, app_id)?.ok_or_else(|| StoreError::NotFound(format!("app '{app_id}'")))?;
    if let Some(p) = &u.pools {
        a.pools = p.clone();
    }
    if let Some(t) = &u.triggers {
        a.triggers = t.clone();
    }
    if let Some(m) = &u.meta {
        a.meta = m.clone();
    }
    if let Some(v) = &u.protocol_version {
        a.protocol_version = v.clone();
    }
    if let Some(t) = u.last_seen {
        a.last_seen = t;
    }
    if let Some(r) = u.rehydrated {
        a.rehydrated = r;
    }
    register_app(c, &a)?;
    Ok(a)
}

pub fn remove_app(c: &Connection, app_id: &str) -> Result<bool, StoreError> {
    Ok(c.execute("DELETE FROM app_registry WHERE app_id = ?1", [app_id])? > 0)
}

pub fn count_apps(c: &Connection) -> Result<usize, StoreError> {
    let n: i64 = c.query_row("SELECT COUNT(*) FROM app_registry", [], |r| r.get(0))?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// The ids and `last_seen` of the registrations last seen before `before` (ms since the epoch).
pub fn apps_seen_before(c: &Connection, before: i64) -> Result<Vec<(String, i64)>, StoreError> {
    let mut s = c.prepare_cached("SELECT app_id, last_seen FROM app_registry WHERE last_seen < ?1 ORDER BY app_id")?;
    Ok(s.query_map([before], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

pub fn all_apps(c: &Connection) -> Result<Vec<AppRecord>, StoreError> {
    apps_page(c, "", None)
}

/// The registrations after app id `after` (`""`: from the first), by app id, at most `limit`.
pub fn apps_page(c: &Connection, after: &str, limit: Option<usize>) -> Result<Vec<AppRecord>, StoreError> {
    let mut s = c.prepare_cached(&format!(
        "SELECT {APP_COLS} FROM app_registry WHERE app_id > ?1 ORDER BY app_id LIMIT ?2"
    ))?;
    // SQLite reads a negative LIMIT as none.
    let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    Ok(s.query_map(rusqlite::params![after, limit], app_row)?
        .collect::<Result<_, _>>()?)
}

pub fn apps_by_pool(c: &Connection, pool: &str) -> Result<Vec<AppRecord>, StoreError> {
    let mut s = c.prepare_cached(&format!(
        "SELECT {APP_COLS} FROM app_registry
         WHERE EXISTS (SELECT 1 FROM json_each(app_registry.pools) WHERE value = ?1) ORDER BY app_id"
    ))?;
    Ok(s.query_map([pool], app_row)?.collect::<Result<_, _>>()?)
}

/// A pool's stored configuration (`pool_metadata`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub name: String,
    /// `local`, `global` or `encrypted`.
    #[serde(rename = "type")]
    pub kind: String,
    pub encrypted: bool,
    pub owners: Vec<String>,
    pub policies: Value,
    pub description: String,
    pub created: i64,
    pub updated: i64,
    pub config: Value,
}

/// Changes to a pool; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct PoolUpdate {
    pub kind: Option<String>,
    pub encrypted: Option<bool>,
    pub owners: Option<Vec<String>>,
    pub policies: Option<Value>,
    pub description: Option<String>,
    pub config: Option<Value>,
}

const POOL_TYPES: [&str; 3] = ["local", "global", "encrypted"];
const POOL_COLS: &str = "name, type, encrypted, owners, policies, description, created, updated, config";

fn pool_row(r: &Row<'_>) -> rusqlite::Result<PoolRecord> {
    Ok(PoolRecord {
        name: r.get(0)?,
        kind: r.get(1)?,
        encrypted: r.get(2)?,
        owners: json_col(r, 3)?,
        policies: json_col(r, 4)?,
        description: r.get(5)?,
        created: r.get(6)?,
        updated: r.get(7)?,
        config: json_col(r, 8)?,
    })
}

fn check_pool_type(t: &str) -> Result<(), StoreError> {
    if POOL_TYPES.contains(&t) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "pool type must be local, global or encrypted, not '{t}'"
        )))
    }
}

pub fn create_pool(c: &Connection, p: &PoolRecord) -> Result<(), StoreError> {
    check_pool_type(&p.kind)?;
    let n = c.execute(
        "INSERT INTO pool_metadata (name, type, encrypted, owners, policies, description, created, updated, config)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (name) DO NOTHING",
        params![
            p.name,
            p.kind,
            p.encrypted,
            text(&p.owners),
            text(&p.policies),
            p.description,
            p.created,
            p.updated,
            text(&p.config)
        ],
    )?;
    if n == 0 {
        return Err(StoreError::Exists(format!("pool '{}'", p.name)));
    }
    Ok(())
}

pub fn get_pool(c: &Connection, name: &str) -> Result<Option<PoolRecord>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {POOL_COLS} FROM pool_metadata WHERE name = ?1"),
        [name],
        pool_row,
    )
    .optional()?)
}

pub fn update_pool(c: &Connection, name: &str, u: &PoolUpdate) -> Result<PoolRecord, StoreError> {
    let mut p = get_pool(c, name)?.ok_or_else(|| StoreError::NotFound(format!("pool '{name}'")))?;
    if let Some(k) = &u.kind {
        check_pool_type(k)?;
        p.kind = k.clone();
    }
    if let Some(e) = u.encrypted {
        p.encrypted = e;
    }
    if let Some(o) = &u.owners {
        p.owners = o.clone();
    }
    if let Some(x) = &u.policies {
        p.policies = x.clone();
    }
    if let Some(d) = &u.description {
        p.description = d.clone();
    }
    if let Some(x) = &u.config {
        p.config = x.clone();
    }
    p.updated = now_ms();
    c.execute(
        "UPDATE pool_metadata SET type = ?2, encrypted = ?3, owners = ?4, policies = ?5, description = ?6,
             updated = ?7, config = ?8 WHERE name = ?1",
        params![
            p.name,
            p.kind,
            p.encrypted,
            text(&p.owners),
            text(&p.policies),
            p.description,
            p.updated,
            text(&p.config)
        ],
    )?;
    Ok(p)
}

/// Removes a pool's stored configuration (if it has one) and every stored membership of it,
/// in one transaction; returns whether there was a configuration. Memberships go too so that an
/// app offline now does not join the pool again by rehydration when it comes back.
pub fn remove_pool(c: &Connection, name: &str) -> Result<bool, StoreError> {
    let tx = c.unchecked_transaction()?;
    let removed = tx.execute("DELETE FROM pool_metadata WHERE name = ?1", [name])? > 0;
    tx.execute(
        "UPDATE app_registry
         SET pools = (SELECT json_group_array(value) FROM json_each(app_registry.pools) WHERE value != ?1)
         WHERE EXISTS (SELECT 1 FROM json_each(app_registry.pools) WHERE value = ?1)",
        [name],
    )?;
    tx.commit()?;
    Ok(removed)
}

pub fn all_pools(c: &Connection) -> Result<Vec<PoolRecord>, StoreError> {
    let mut s = c.prepare_cached(&format!("SELECT {POOL_COLS} FROM pool_metadata ORDER BY name"))?;
    Ok(s.query_map([], pool_row)?.collect::<Result<_, _>>()?)
}

pub fn pools_by_type(c: &Connection, kind: &str) -> Result<Vec<PoolRecord>, StoreError> {
    let mut s = c.prepare_cached(&format!(
        "SELECT {POOL_COLS} FROM pool_metadata WHERE type = ?1 ORDER BY name"
    ))?;
    Ok(s.query_map([kind], pool_row)?.collect::<Result<_, _>>()?)
}

/// A memory block's stored metadata (`memory_blocks`); the content lives in the block's file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub pool: String,
    pub block_id: String,
    pub name: Option<String>,
    pub size: i64,
    /// `binary`, `json` or `stream`.
    #[serde(rename = "type")]
    pub kind: String,
    pub permissions: Value,
    pub version: i64,
    pub created: i64,
    pub updated: i64,
    pub persistent: bool,
    pub encrypted: bool,
    pub config: Value,
}

/// Changes to a block's metadata; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct BlockUpdate {
    pub name: Option<String>,
    pub permissions: Option<Value>,
    pub version: Option<i64>,
    pub encrypted: Option<bool>,
    pub config: Option<Value>,
}

const BLOCK_COLS: &str =
    "pool, block_id, name, size, type, permissions, version, created, updated, persistent, encrypted, config";

fn block_row(r: &Row<'_>) -> rusqlite::Result<BlockRecord> {
    Ok(BlockRecord {
        pool: r.get(0)?,
        block_id: r.get(1)?,
        name: r.get(2)?,
        size: r.get(3)?,
        kind: r.get(4)?,
        permissions: json_col(r, 5)?,
        version: r.get(6)?,
        created: r.get(7)?,
        updated: r.get(8)?,
        persistent: r.get(9)?,
        encrypted: r.get(10)?,
        config: json_col(r, 11)?,
    })
}

pub fn create_block(c: &Connection, b: &BlockRecord) -> Result<(), StoreError> {
    if !["binary", "json", "stream"].contains(&b.kind.as_str()) {
        return Err(StoreError::Invalid(format!(
            "block type must be binary, json or stream, not '{}'",
            b.kind
        )));
    }
    if b.size <= 0 {
        return Err(StoreError::Invalid(format!(
            "block size must be positive, not {}",
            b.size
        )));
    }
    let n = c.execute(
        "INSERT INTO memory_blocks (pool, block_id, name, size, type, permissions, version, created, updated,
             persistent, encrypted, config)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) ON CONFLICT DO NOTHING",
        params![
            b.pool,
            b.block_id,
            b.name,
            b.size,
            b.kind,
            text(&b.permissions),
            b.version,
            b.created,
            b.updated,
            b.persistent,
            b.encrypted,
            text(&b.config)
        ],
    )?;
    if n == 0 {
        return Err(StoreError::Exists(format!(
            "block '{}' in pool '{}'",
            b.block_id, b.pool
        )));
    }
    Ok(())
}

pub fn get_block(c: &Connection, pool: &str, block_id: &str) -> Result<Option<BlockRecord>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {BLOCK_COLS} FROM memory_blocks WHERE pool = ?1 AND block_id = ?2"),
        [pool, block_id],
        block_row,
    )
    .optional()?)
}

pub fn update_block(c: &Connection, pool: &str, block_id: &str, u: &BlockUpdate) -> Result<BlockRecord, StoreError> {
    let mut b = get_block(c, pool, block_id)?
        .ok_or_else(|| StoreError::NotFound(format!("block '{block_id}' in pool '{pool}'")))?;
    if let Some(n) = &u.name {
        b.name = Some(n.clone());
    }
    if let Some(p) = &u.permissions {
        b.permissions = p.clone();
    }
    if let Some(v) = u.version {
        b.version = v;
    }
    if let Some(e) = u.encrypted {
        b.encrypted = e;
    }
    if let Some(x) = &u.config {
        b.config = x.clone();
    }
    b.updated = now_ms();
    c.execute(
        "UPDATE memory_blocks SET name = ?3, permissions = ?4, version = ?5, encrypted = ?6, config = ?7,
             updated = ?8 WHERE pool = ?1 AND block_id = ?2",
        params![
            b.pool,
            b.block_id,
            b.name,
            text(&b.permissions),
            b.version,
            b.encrypted,
            text(&b.config),
            b.updated
        ],
    )?;
    Ok(b)
}

pub fn remove_block(c: &Connection, pool: &str, block_id: &str) -> Result<bool, StoreError> {
    Ok(c.execute(
        "DELETE FROM memory_blocks WHERE pool = ?1 AND block_id = ?2",
        [pool, block_id],
    )? > 0)
}

pub fn all_blocks(c: &Connection) -> Result<Vec<BlockRecord>, StoreError> {
    let mut s = c.prepare_cached(&format!(
        "SELECT {BLOCK_COLS} FROM memory_blocks ORDER BY pool, block_id"
    ))?;
    Ok(s.query_map([], block_row)?.collect::<Result<_, _>>()?)
}

pub fn blocks_by_pool(c: &Connection, pool: &str) -> Result<Vec<BlockRecord>, StoreError> {
    let mut s = c.prepare_cached(&format!(
        "SELECT {BLOCK_COLS} FROM memory_blocks WHERE pool = ?1 ORDER BY block_id"
    ))?;
    Ok(s.query_map([pool], block_row)?.collect::<Result<_, _>>()?)
}

/// Stores a server setting (any JSON value).
pub fn save_config(c: &Connection, key: &str, value: &Value) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO server_config (key, value, updated) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET value = ?2, updated = ?3",
        params![key, text(value), now_ms()],
    )?;
    Ok(())
}

pub fn load_config(c: &Connection, key: &str) -> Result<Option<Value>, StoreError> {
    let v: Option<String> = c
        .query_row("SELECT value FROM server_config WHERE key = ?1", [key], |r| r.get(0))
        .optional()?;
    v.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Invalid(format!("stored config '{key}': {e}"))))
        .transpose()
}
