//! Logging for the binary: stdout and `<data_dir>/logs/server.log`. `RUST_LOG` overrides the
//! level with a full filter when set.

use std::path::Path;

use anyhow::{Context, Result};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

/// Installs the subscriber. Keep the guard alive until exit so the file is flushed.
pub fn init(data_dir: &Path, level: &str) -> Result<WorkerGuard> {
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| {
        format!(
            "cannot use data directory {}: cannot create {}",
            data_dir.display(),
            logs.display()
        )
    })?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join("server.log"))
        .with_context(|| {
            format!(
                "cannot use data directory {}: cannot open logs/server.log",
                data_dir.display()
            )
        })?;
    let (file_writer, guard) = tracing_appender::non_blocking(file);
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(format!("{level},latzero_server={level},latzero_cli={level}")));
    let stdout_is_tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_ansi(stdout_is_tty).with_writer(std::io::stdout))
        .with(fmt::layer().with_ansi(false).with_writer(file_writer))
        .try_init()
        .context("cannot install the logger")?;
    Ok(guard)
}
