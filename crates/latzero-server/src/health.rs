//! The `health` admin action (docs/PROTOCOL.md §8), for probes and `latzero health`: whether
//! what the server depends on works now, each part checked for real and timed —
//! - `store`: the database takes a write (a disk that is full or read-only fails it), within
//!   [`STORE_PATIENCE`] (a store thread held that long, by a backup say, stalls registrations);
//! - `data_dir` and `volatile_dir`: each takes a small file, written, synced and removed;
//! - `memory`: every block's file is where clients map it, with a header that checks out and
//!   says what the server's own mapping says (a file deleted or replaced behind the server's
//!   back cannot be attached).
//!
//! The session's own answer shows that its runtime is responsive; a server shutting down
//! answers `SHUTTING_DOWN` instead.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::server::State;

/// How long the store has to take the probe's write.
pub(crate) const STORE_PATIENCE: Duration = Duration::from_secs(2);

/// The `health_result` message (without `in_reply_to`).
pub(crate) async fn check(st: &Arc<State>) -> Value {
    let mut checks = vec![store(st).await];
    let files = st.clone();
    let more = tokio::task::spawn_blocking(move || {
        vec![
            timed("data_dir", || writable(&files.config.data_dir)),
            timed("volatile_dir", || writable(files.memory.volatile_root())),
            timed("memory", || blocks(&files)),
        ]
    })
    .await
    .unwrap_or_else(|e| vec![outcome("files", Duration::ZERO, Err(format!("the check failed: {e}")))]);
    checks.extend(more);
    let healthy = checks.iter().all(|c| c["ok"] == true);
    json!({ "action": "health_result", "healthy": healthy, "checks": checks })
}

async fn store(st: &State) -> Value {
    let started = Instant::now();
    let probe = st
        .store
        .save_config("health_probe", json!(crate::store::records::now_ms()));
    let result = match tokio::time::timeout(STORE_PATIENCE, probe).await {
        Ok(Ok(())) => Ok("a write committed".to_owned()),
        Ok(Err(e)) => Err(format!("a write failed: {e}")),
        Err(_) => Err(format!(
            "no answer within {} ms: the database is held (a backup, or a slow disk)",
            STORE_PATIENCE.as_millis()
        )),
    };
    outcome("store", started.elapsed(), result)
}

fn timed(name: &str, f: impl FnOnce() -> Result<String, String>) -> Value {
    let started = Instant::now();
    let result = f();
    outcome(name, started.elapsed(), result)
}

fn outcome(name: &str, took: Duration, result: Result<String, String>) -> Value {
    let (ok, detail) = match result {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    json!({ "name": name, "ok": ok, "ms": took.as_secs_f64() * 1000.0, "detail": detail })
}

/// Writes, syncs and removes a small file in `dir`.
fn writable(dir: &Path) -> Result<String, String> {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let n = PROBES.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(".health-probe-{}-{n}", std::process::id()));
    let written = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&path)?;
        f.write_all(b"latzero health probe\n")?;
        f.sync_all()
    })();
    let removed = std::fs::remove_file(&path);
    match (written, removed) {
        (Ok(()), Ok(())) => Ok(format!("{} takes files", dir.display())),
        (Err(e), _) => Err(format!("cannot write a file in {}: {e}", dir.display())),
        (Ok(()), Err(e)) => Err(format!("cannot remove a file from {}: {e}", dir.display())),
    }
}

/// Opens every block's file as a client would and compares its header with the server's mapping.
fn blocks(st: &State) -> Result<String, String> {
    let entries = st.memory.all();
    let mut bad = Vec::new();
    for e in &entries {
        let name = format!("{}/{}", e.meta.pool, e.meta.block_id);
        match latzero_memory::Block::open(e.block.path(), false) {
            Ok(b) if b.kind() == e.block.kind() && b.size() == e.block.size() => {}
            Ok(b) => bad.push(format!(
                "{name}: its file is a {} block of {} bytes, the server's a {} of {}",
                b.kind().as_str(),
                b.size(),
                e.block.kind().as_str(),
                e.block.size()
            )),
            Err(err) => bad.push(format!("{name}: {err}")),
        }
    }
    if bad.is_empty() {
        return Ok(format!("{} blocks, every file in place", entries.len()));
    }
    let shown = bad.len().min(10);
    let more = if bad.len() > shown {
        format!("; and {} more", bad.len() - shown)
    } else {
        String::new()
    };
    Err(format!(
        "{} of {} blocks cannot be attached: {}{more}",
        bad.len(),
        entries.len(),
        bad[..shown].join("; ")
    ))
}
