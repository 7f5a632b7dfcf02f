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
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Start(a) => command::start::run(*a).await,
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
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
