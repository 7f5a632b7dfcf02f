//! Logging for the binary: stdout and `<data_dir>/logs/server.log`, rotated by size (`--log-max-bytes`,
//! `--log-files`). `RUST_LOG` overrides the
//! level with a full filter when set.

use std::path::Path;

use anyhow::{Context, Result};
use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogConfig;

/// Installs the subscriber. Keep the guard alive until exit so the file is flushed.
pub fn init(data_dir: &Path, log: &LogConfig) -> Result<WorkerGuard> {
    let logs = data_dir.join("logs");
    // Owner-only, as the server makes the rest of the data directory (this runs first, so it
    // may be what creates the data directory itself).
    let mut dirs = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(dirs.recursive(true), 0o700);
    dirs.create(&logs).with_context(|| {
        format!(
            "cannot use data directory {}: cannot create {}",
            data_dir.display(),
            logs.display()
        )
    })?;
    // server.log, rotated to server.log.1 (the newest) .. server.log.N once it passes
    // `max_bytes`, so that a long-running server's log has a bound.
    let file = FileRotate::new(
        logs.join("server.log"),
        AppendCount::new(log.files),
        ContentLimit::BytesSurpassed(log.max_bytes),
        Compression::None,
        Some({
            // file-rotate needs these three set on options it is given.
            let mut o = std::fs::OpenOptions::new();
            o.read(true).create(true).append(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            o
        }),
    );
    let (file_writer, guard) = tracing_appender::non_blocking(file);
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            let level = &log.level;
            EnvFilter::new(format!("{level},latzero_server={level},latzero_cli={level}"))
        });
    let stdout_is_tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_ansi(stdout_is_tty).with_writer(std::io::stdout))
        .with(fmt::layer().with_ansi(false).with_writer(file_writer))
        .try_init()
        .context("cannot install the logger")?;
    Ok(guard)
}
