//! The `latzero` binary: parses the command line and dispatches to `command/<verb>.rs`.
//! Failures print one line on stderr and exit non-zero.

#[macro_use]
mod out;

mod cli;
mod command;
mod config;
mod logging;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        // The server's runtime is sized by its configuration, so that is resolved first.
        Command::Start(a) => {
            let cfg = config::resolve(&a)?;
            runtime(cfg.workers)?.block_on(command::start::run(cfg))
        }
        Command::Status(a) => client(command::status::run(a)),
        Command::Stop(a) => client(command::stop::run(a)),
        Command::Health(a) => client(command::health::run(a)),
        Command::Call(a) => client(command::call::run(a)),
        Command::Emit(a) => client(command::emit::run(a)),
        Command::Reply(a) => client(command::reply::run(a)),
        Command::Mem(c) => client(command::mem::run(c)),
        Command::Apps(a) => client(command::inventory::apps(a)),
        Command::Pools(a) => client(command::inventory::pools(a)),
        Command::Blocks(a) => client(command::inventory::blocks(a)),
        Command::Backup(t) => client(command::inventory::backup(t)),
        Command::Keys(a) => client(command::keys::run(a)),
        Command::Restore(a) => command::inventory::restore(a),
        Command::Auth(crate::cli::AuthCmd::Token) => command::inventory::auth_token(),
    }
}

/// Runs a client command. It is one client: one worker is all it uses, and that worker never
/// has a sibling to wake (see docs/ARCHITECTURE.md, "Spinning before parking").
fn client(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    runtime(1)?.block_on(command)
}

/// A multi-threaded runtime with `workers` worker threads.
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
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
