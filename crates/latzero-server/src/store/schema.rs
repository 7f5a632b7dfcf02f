//! The database schema and its migrations, keyed on SQLite's `user_version`.
//!
//! Migration N takes a database at version N-1 to N, in one transaction. Version 1 is the seed's
//! schema (seeds/persistence-api.md) as written; version 2 keys memory blocks by pool and id,
//! since a block id is unique within its pool only (the seed's single-column key could not hold
//! `frame` in two pools). A database newer than this build is refused, never misread.

use rusqlite::Connection;

use super::StoreError;

/// Each entry takes the database from its index to its index + 1.
pub(crate) const MIGRATIONS: [&str; 2] = [
    // 1: the seed's tables.
    r#"
    CREATE TABLE app_registry (
        app_id           TEXT PRIMARY KEY,
        pools            TEXT NOT NULL DEFAULT '[]',
        triggers         TEXT NOT NULL DEFAULT '[]',
        meta             TEXT NOT NULL DEFAULT 'null',
        protocol_version TEXT NOT NULL DEFAULT '',
        registered       INTEGER NOT NULL,
        last_seen        INTEGER NOT NULL,
        rehydrated       INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE pool_metadata (
        name        TEXT PRIMARY KEY,
        type        TEXT NOT NULL DEFAULT 'local',
        encrypted   INTEGER NOT NULL DEFAULT 0,
        owners      TEXT NOT NULL DEFAULT '[]',
        policies    TEXT NOT NULL DEFAULT '{}',
        description TEXT NOT NULL DEFAULT '',
        created     INTEGER NOT NULL,
        updated     INTEGER NOT NULL,
        config      TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE memory_blocks (
        block_id    TEXT PRIMARY KEY,
        name        TEXT,
        pool        TEXT,
        size        INTEGER NOT NULL,
        type        TEXT NOT NULL DEFAULT 'binary',
        permissions TEXT NOT NULL DEFAULT '{}',
        version     INTEGER NOT NULL DEFAULT 0,
        created     INTEGER NOT NULL,
        updated     INTEGER NOT NULL,
        persistent  INTEGER NOT NULL DEFAULT 0,
        encrypted   INTEGER NOT NULL DEFAULT 0,
        config      TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE server_config (
        key     TEXT PRIMARY KEY,
        value   TEXT NOT NULL,
        updated INTEGER NOT NULL
    );
    "#,
    // 2: memory blocks keyed by (pool, block_id). Rows without a pool keep an empty one.
    r#"
    CREATE TABLE memory_blocks_v2 (
        pool        TEXT NOT NULL,
        block_id    TEXT NOT NULL,
        name        TEXT,
        size        INTEGER NOT NULL,
        type        TEXT NOT NULL DEFAULT 'binary',
        permissions TEXT NOT NULL DEFAULT '{}',
        version     INTEGER NOT NULL DEFAULT 0,
        created     INTEGER NOT NULL,
        updated     INTEGER NOT NULL,
        persistent  INTEGER NOT NULL DEFAULT 0,
        encrypted   INTEGER NOT NULL DEFAULT 0,
        config      TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (pool, block_id)
    );
    INSERT INTO memory_blocks_v2
        SELECT COALESCE(pool, ''), block_id, name, size, type, permissions, version, created,
               updated, persistent, encrypted, config
        FROM memory_blocks;
    DROP TABLE memory_blocks;
    ALTER TABLE memory_blocks_v2 RENAME TO memory_blocks;
    CREATE INDEX memory_blocks_by_pool ON memory_blocks (pool);
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(crate) fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// Brings the database up to `target` (at most [`SCHEMA_VERSION`]); returns the version it
/// found.
pub(crate) fn migrate_to(conn: &mut Connection, target: i64) -> Result<i64, StoreError> {
    let found = user_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for v in found..target {
        let tx = conn.transaction()?;
        tx.execute_batch(MIGRATIONS[v as usize])?;
        tx.pragma_update(None, "user_version", v + 1)?;
        tx.commit()?;
        tracing::info!(from = v, to = v + 1, "database schema migrated");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_schema_database_is_upgraded_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.db");
        {
            let mut c = Connection::open(&path).unwrap();
            migrate_to(&mut c, 1).unwrap();
            c.execute(
                "INSERT INTO memory_blocks (block_id, pool, size, created, updated, persistent)
                 VALUES ('frame', 'alpha', 4096, 1, 1, 1), ('orphan', NULL, 8, 1, 1, 0)",
                [],
            )
            .unwrap();
            c.execute(
                "INSERT INTO app_registry (app_id, registered, last_seen) VALUES ('a', 1, 2)",
                [],
            )
            .unwrap();
        }
        let mut c = Connection::open(&path).unwrap();
        assert_eq!(migrate_to(&mut c, SCHEMA_VERSION).unwrap(), 1);
        assert_eq!(user_version(&c).unwrap(), SCHEMA_VERSION);
        let rows: Vec<(String, String, i64)> = c
            .prepare("SELECT pool, block_id, size FROM memory_blocks ORDER BY block_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![("alpha".into(), "frame".into(), 4096), ("".into(), "orphan".into(), 8)]
        );
        // The same id may now exist in another pool.
        c.execute(
            "INSERT INTO memory_blocks (pool, block_id, size, created, updated) VALUES ('beta', 'frame', 1, 1, 1)",
            [],
        )
        .unwrap();
        let apps: i64 = c
            .query_row("SELECT COUNT(*) FROM app_registry", [], |r| r.get(0))
            .unwrap();
        assert_eq!(apps, 1);
        // Opening again migrates nothing.
        assert_eq!(migrate_to(&mut c, SCHEMA_VERSION).unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let mut c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        let e = migrate_to(&mut c, SCHEMA_VERSION).unwrap_err();
        assert!(matches!(e, StoreError::TooNew { .. }), "{e}");
    }
}
