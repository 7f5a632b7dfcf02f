//! The `latzero` binary: parses the command line and dispatches to `command/<verb>.rs`.
//! Failures print one line on stderr and exit non-zero.

mod cli;
mod command;
mod config;
mod logging;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // The server's runtime is sized by its configuration, so that is resolved first.
        Command::Start(a) => {
            config::resolve(&a).and_then(|cfg| runtime(cfg.workers)?.block_on(command::start::run(cfg)))
        }
        // The other commands are one client each: one worker is all they use, and it never
        // has a sibling to wake (see docs/ARCHITECTURE.md, "Spinning before parking").
        other => runtime(1).and_then(|rt| rt.block_on(dispatch(other))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A multi-threaded runtime with `workers` worker threads.
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Start(_) => unreachable!("start builds its own runtime"),
        Command::Status(a) => command::status::run(a).await,
        Command::Stop(a) => command::stop::run(a).await,
        Command::Call(a) => command::call::run(a).await,
        Command::Emit(a) => command::emit::run(a).await,
        Command::Reply(a) => command::reply::run(a).await,
        Command::Mem(c) => command::mem::run(c).await,
        Command::Apps(a) => command::inventory::apps(a).await,
        Command::Pools(a) => command::inventory::pools(a).await,
        Command::Blocks(a) => command::inventory::blocks(a).await,
        Command::Backup(t) => command::inventory::backup(t).await,
        Command::Restore(a) => command::inventory::restore(a),
        Command::Auth(crate::cli::AuthCmd::Token) => command::inventory::auth_token(),
        Command::Keys(a) => command::keys::run(a).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_runtime_has_the_configured_workers() {
        for n in [1, 3] {
            assert_eq!(runtime(n).unwrap().metrics().num_workers(), n);
        }
    }
}
