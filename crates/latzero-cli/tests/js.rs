//! End-to-end: the JavaScript client (`clients/js/latzero.mjs`) under Node against the real
//! `latzero` binary's WebSocket port, with a `latzero reply` worker, and a server restart the
//! client must come back from. The checks are in `clients/js/test/e2e.mjs`; this drives it.
//! It needs Node with a WebSocket (20 with `--experimental-websocket`, 22+ as is), or the `ws`
//! package named by `LATZERO_JS_WS`: `scripts/test.sh` sees to both.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};
use latzero_testkit::{Proc, ServerProc, free_port};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_latzero"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// How to run Node so that it has a WebSocket: no flag, the flag, or the `ws` package.
fn node() -> Result<Command> {
    let has_websocket = |flags: &[&str]| {
        Command::new("node")
            .args(flags)
            .args(["-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"])
            .status()
            .is_ok_and(|s| s.success())
    };
    for flags in [&[][..], &["--experimental-websocket"][..]] {
        if has_websocket(flags) {
            let mut c = Command::new("node");
            c.args(flags);
            return Ok(c);
        }
    }
    if std::env::var_os("LATZERO_JS_WS").is_some() && Command::new("node").arg("--version").status().is_ok() {
        return Ok(Command::new("node"));
    }
    bail!(
        "the JavaScript client's test needs Node with a WebSocket (Node 22+, or 20 with --experimental-websocket), \
         or the ws package named by LATZERO_JS_WS; scripts/test.sh installs what is missing"
    )
}

#[test]
fn the_javascript_client_calls_handles_emits_and_reconnects() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port().to_string();
    let ws = ["--ws-port", port.as_str()];
    let mut s = ServerProc::start_in(bin(), dir.path(), &ws)?;
    let _worker = s.reply(&["--app", "worker", "--pool", "demo", "echo"])?;
    let mut cmd = node()?;
    cmd.arg(repo().join("clients/js/test/e2e.mjs"))
        .env("LATZERO_WS", format!("ws://127.0.0.1:{port}"));
    let mut js = Proc::spawn(cmd)?;
    js.follow_script(|line| {
        if line == "restart" {
            // Stopped and started again on the same ports: the client must come back by itself.
            s.restart(&ws)?;
        }
        Ok(())
    })?;
    assert!(
        js.seen.iter().any(|l| l == "ok reconnected with its handlers"),
        "{:?}",
        js.seen
    );
    Ok(())
}
