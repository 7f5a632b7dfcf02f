//! `latzero start`: run the server in the foreground until SIGINT/SIGTERM or `latzero stop`.

use std::io::Write;

use anyhow::{Context, Result};
use latzero_server::Server;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{config, logging};

/// Runs the server of a resolved configuration, on a runtime of `cfg.workers` workers.
pub async fn run(cfg: config::Resolved) -> Result<()> {
    let _guard = logging::init(&cfg.server.data_dir, &cfg.log)?;
    tracing::info!(workers = cfg.workers, "runtime started");
    // Install the handlers before anyone can learn we are up: a signal that arrives between the
    // ready line and the first poll of the shutdown future must still shut down gracefully.
    let term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let data_dir = cfg.server.data_dir.clone();
    let origins = cfg.server.ws.origins.clone();
    let server = Server::bind(cfg.server).await?;
    if let Some((fingerprint, cert)) = server.tls() {
        tracing::info!(%fingerprint, cert = %cert.display(), "serving TLS on the TCP port");
        let _ = writeln!(
            std::io::stdout(),
            "TLS on tcp {}: certificate {}\n  SHA-256 fingerprint {fingerprint}\n  connect with latzeros://APP@{}?fingerprint={fingerprint}",
            server.local_addr(),
            cert.display(),
            server.local_addr(),
        );
    }
    if let Some(addr) = server.ws_addr() {
        let scheme = if server.tls().is_some() { "wss" } else { "ws" };
        let pages = match origins.is_empty() {
            true => "none (programs only; allow a page's origin with --ws-origin)".to_owned(),
            false => origins.join(", "),
        };
        let _ = writeln!(
            std::io::stdout(),
            "WebSocket on {scheme}://{addr}; pages allowed from: {pages}"
        );
    }
    if let Some(addr) = server.metrics_addr() {
        let _ = writeln!(
            std::io::stdout(),
            "metrics on http://{addr}/metrics, health on http://{addr}/healthz"
        );
    }
    // Printed whatever the log level: scripts and the test kit wait for this line. A server
    // whose stdout is closed serves on: unlike the other commands' output, this is not its work.
    let _ = writeln!(
        std::io::stdout(),
        "latzero {} listening on tcp {}, unix {}, data dir {}",
        env!("CARGO_PKG_VERSION"),
        server.local_addr(),
        server
            .unix_path()
            .map_or_else(|| "off".to_owned(), |p| p.display().to_string()),
        data_dir.display()
    );
    server.run(shutdown_signal(term, int)).await?;
    Ok(())
}

async fn shutdown_signal(mut term: Signal, mut int: Signal) {
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
