//! End-to-end: the Python client (`clients/python/latzero.py`) under python3 against the real
//! `latzero` binary's Unix socket, with a `latzero reply` worker, and a server restart the
//! client must come back from. The checks are in `clients/python/test_e2e.py`; this drives it.
//! `scripts/test.sh` installs python3 if it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use latzero_testkit::{Proc, ServerProc};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_latzero"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_python_client_calls_handles_emits_and_reconnects() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut s = ServerProc::start_in(bin(), dir.path(), &[])?;
    let socket = s.unix.clone().expect("the server serves its Unix socket");
    let _worker = s.reply(&["--app", "worker", "--pool", "demo", "echo"])?;
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("clients/python/test_e2e.py"))
        .env("LATZERO_SOCKET", &socket);
    let mut py = Proc::spawn(cmd)?;
    py.follow_script(|line| {
        if line == "restart" {
            // Stopped and started again on the same socket: the client must come back by itself.
            let (ok, _, err) = s.run(&["stop"])?;
            assert!(ok, "{err}");
            s.proc.wait_exit()?;
            s = ServerProc::start_in(bin(), dir.path(), &[])?;
        }
        Ok(())
    })?;
    assert!(
        py.seen.iter().any(|l| l == "ok reconnected with its handlers"),
        "{:?}",
        py.seen
    );
    Ok(())
}
