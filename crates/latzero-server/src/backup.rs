//! Backups of the database: online, into `<data_dir>/backups/latzero-<UTC time>-<n>.db`, every
//! `backup_interval` and on demand (the `backup` action, `latzero backup`), keeping the newest
//! `max_backups`; and restore, with the server stopped (`latzero restore FILE`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use tokio_util::sync::CancellationToken;

use crate::datadir::DataDir;
use crate::error::ServerError;
use crate::store::{DB_FILE, SCHEMA_VERSION, Store, StoreError};

const PREFIX: &str = "latzero-";
const SUFFIX: &str = ".db";

/// `YYYYMMDD-HHMMSS-mmm` in UTC, which sorts in time order.
fn stamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}-{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The backups in `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    v.sort();
    v
}

/// Takes a backup now, then removes the oldest beyond `keep`. Returns the new file.
pub(crate) async fn take(
    store: &Store,
    dir: &Path,
    keep: usize,
    progress: Option<tokio::sync::mpsc::UnboundedSender<(u64, u64)>>,
) -> Result<PathBuf, StoreError> {
    // The counter keeps two backups within one millisecond apart (and in order).
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000;
    let dest = dir.join(format!("{PREFIX}{}-{seq:03}{SUFFIX}", stamp(SystemTime::now())));
    let path = store.backup_with_progress(&dest, progress).await?;
    let all = list(dir);
    for old in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        match std::fs::remove_file(old) {
            Ok(()) => tracing::info!(file = %old.display(), "removed an old backup"),
            Err(e) => tracing::warn!(file = %old.display(), error = %e, "cannot remove an old backup"),
        }
    }
    Ok(path)
}

/// Backs up every `interval` until `stop`.
pub(crate) async fn schedule(store: Store, dir: PathBuf, interval: Duration, keep: usize, stop: CancellationToken) {
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match take(&store, &dir, keep, None).await {
            Ok(p) => tracing::info!(file = %p.display(), "backup created"),
            Err(e) => tracing::error!(error = %e, "scheduled backup failed"),
        }
    }
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// The database now in place.
    pub database: PathBuf,
    /// Where the replaced database was kept (none if there was none).
    pub replaced: Option<PathBuf>,
}

fn check_backup(file: &Path) -> Result<(), String> {
    let c = Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| e.to_string())?;
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| format!("not a readable SQLite database: {e}"))?;
    if check != "ok" {
        return Err(format!("integrity check failed: {check}"));
    }
    let version: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if version == 0 || version > SCHEMA_VERSION {
        return Err(format!(
            "schema version {version} is not a latzero database this build reads (1 to {SCHEMA_VERSION})"
        ));
    }
    let tables: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('app_registry', 'pool_metadata', 'memory_blocks', 'server_config')",
            [],
            |r| r.get(0),
        )
        .map_err(|e| e.to_string())?;
    if tables != 4 {
        return Err("it lacks latzero's tables".into());
    }
    Ok(())
}

/// Replaces the data dir's database with `file`, which must pass an integrity check first.
/// Refused while a server runs on the data dir. The replaced database (with its WAL) is kept
/// beside it as `data.db.replaced-<UTC time>`; the server migrates an older backup at start.
pub fn restore(data_dir: &Path, file: &Path) -> Result<Restored, ServerError> {
    let bad = |why: String| ServerError::Restore {
        file: file.to_path_buf(),
        why,
    };
    if !file.is_file() {
        return Err(bad("no such file".into()));
    }
    check_backup(file).map_err(bad)?;
    let dd = DataDir::prepare(data_dir)?;
    let db = dd.path().join(DB_FILE);
    let io = |what: &str, e: std::io::Error| bad(format!("{what}: {e}"));
    let mut replaced = None;
    if db.exists() {
        let aside = dd
            .path()
            .join(format!("{DB_FILE}.replaced-{}", stamp(SystemTime::now())));
        std::fs::rename(&db, &aside).map_err(|e| io("cannot move the current database aside", e))?;
        for ext in ["-wal", "-shm"] {
            let side = dd.path().join(format!("{DB_FILE}{ext}"));
            if side.exists() {
                let to = PathBuf::from(format!("{}{ext}", aside.display()));
                std::fs::rename(&side, &to).map_err(|e| io("cannot move the current database aside", e))?;
            }
        }
        replaced = Some(aside);
    }
    let tmp = dd.path().join(format!("{DB_FILE}.restoring"));
    std::fs::copy(file, &tmp).map_err(|e| io("cannot copy the backup", e))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("cannot sync the copy", e))?;
    std::fs::rename(&tmp, &db).map_err(|e| io("cannot move the copy into place", e))?;
    Ok(Restored { database: db, replaced })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_and_sort_in_time_order() {
        assert_eq!(stamp(UNIX_EPOCH), "19700101-000000-000");
        let t = UNIX_EPOCH + Duration::from_millis(1_763_776_800_123);
        assert_eq!(stamp(t), "20251122-020000-123");
        assert_eq!(
            stamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "20000229-000000-000"
        );
    }

    #[tokio::test]
    async fn backups_rotate_and_restore_checks_first() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("backups")).unwrap();
        let store = Store::open(&data, crate::store::StoreConfig::default()).unwrap();
        store.save_config("k", serde_json::json!("first")).await.unwrap();
        let mut taken = vec![];
        for _ in 0..4 {
            taken.push(take(&store, &data.join("backups"), 2, None).await.unwrap());
        }
        assert_eq!(
            list(&data.join("backups")),
            taken[2..].to_vec(),
            "the two newest are kept"
        );
        store.save_config("k", serde_json::json!("second")).await.unwrap();
        store.close().await;

        // A file that is not a latzero database is refused, and nothing changes.
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, b"not sqlite at all, not even close").unwrap();
        assert!(matches!(restore(&data, &junk), Err(ServerError::Restore { .. })));
        let r = restore(&data, &taken[3]).unwrap();
        assert!(r.replaced.as_ref().unwrap().exists());
        let store = Store::open(&data, crate::store::StoreConfig::default()).unwrap();
        assert_eq!(store.load_config("k").await.unwrap(), Some(serde_json::json!("first")));
        store.close().await;
    }
}
