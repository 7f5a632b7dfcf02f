//! `latzero start`: run the server in the foreground until SIGINT/SIGTERM or `latzero stop`.

use anyhow::Result;
use latzero_server::Server;

use crate::cli::StartArgs;
use crate::{config, logging};

pub async fn run(args: StartArgs) -> Result<()> {
    let cfg = config::resolve(&args)?;
    let _guard = logging::init(&cfg.server.data_dir, &cfg.log_level)?;
    let server = Server::bind(cfg.server).await?;
    server.run(shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
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
