//! `latzero start`: run the server in the foreground until SIGINT/SIGTERM or `latzero stop`.

use anyhow::Result;
use latzero_server::Server;

use crate::cli::StartArgs;
use crate::{config, logging};

pub async fn run(args: StartArgs) -> Result<()> {
    let cfg = config::resolve(&args)?;
    let _guard = logging::init(&cfg.server.data_dir, &cfg.log_level)?;
    let data_dir = cfg.server.data_dir.clone();
    let server = Server::bind(cfg.server).await?;
    // Printed whatever the log level: scripts and the test kit wait for this line.
    println!(
        "latzero {} listening on tcp {}, unix {}, data dir {}",
        env!("CARGO_PKG_VERSION"),
        server.local_addr(),
        server
            .unix_path()
            .map_or_else(|| "off".to_owned(), |p| p.display().to_string()),
        data_dir.display()
    );
    server.run(shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
