//! End-to-end: the Python client (`clients/python/latzero.py`) under python3 against the real
//! `latzero` binary's Unix socket, with a `latzero reply` worker, and a server restart the
//! client must come back from. The checks are in `clients/python/test_e2e.py`; this drives it.
//! `scripts/test.sh` installs python3 if it is missing; `LATZERO_PYTHON` names another
//! interpreter (the client takes another path for coroutine handlers on 3.12 and later).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use latzero_testkit::{Proc, ServerProc};

mod sealed;

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
    let mut cmd = Command::new(std::env::var_os("LATZERO_PYTHON").unwrap_or_else(|| "python3".into()));
    cmd.arg(repo().join("clients/python/test_e2e.py"))
        .env("LATZERO_SOCKET", &socket);
    let mut py = Proc::spawn(cmd)?;
    py.follow_script(|line| {
        if line == "restart" {
            // Stopped and started again on the same socket: the client must come back by itself.
            s.restart(&[])?;
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

/// Over TLS: the Python client pins the server's certificate by the fingerprint server.json
/// gives; a wrong pin and a plain connection to the TLS port fail with clear codes.
#[test]
fn the_python_client_pins_a_tls_servers_certificate() -> Result<()> {
    let s = ServerProc::start(bin(), &["--tls"])?;
    let _worker = s.reply(&["--app", "worker", "--pool", "demo", "echo"])?;
    let info = s.info()?;
    let fingerprint = info["tls_fingerprint"].as_str().expect("a fingerprint").to_owned();
    let script = r#"
import asyncio, os, sys
sys.path.insert(0, os.environ["LATZERO_PY"])
import latzero

async def main():
    port, pin = int(os.environ["PORT"]), os.environ["PIN"]
    lz = await latzero.connect("py-tls", port=port, tls_fingerprint=pin, pools=["demo"], ephemeral=True)
    r = await lz.call("demo", "echo", {"x": 1})
    assert r["data"] == {"x": 1}, r
    print("ok call over TLS", flush=True)
    await lz.close()
    url = f"latzeros://py-url@127.0.0.1:{port}?fingerprint={pin}&pools=demo"
    lz = await latzero.connect(url, ephemeral=True)
    assert (await lz.call("demo", "echo", 2))["data"] == 2
    print("ok a latzeros:// URL", flush=True)
    await lz.close()
    wrong = "00" * 32
    for opts, code in [(dict(tls_fingerprint=wrong), "TLS"), ({}, "TLS_REQUIRED")]:
        try:
            await latzero.connect("py-tls", port=port, reconnect=False, **opts)
        except latzero.LatZeroError as e:
            assert e.code == code, (code, str(e))
            print(f"ok refused: {e.code}", flush=True)
        else:
            raise AssertionError(f"{opts} connected")

asyncio.run(main())
print("done", flush=True)
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .env("LATZERO_PY", repo().join("clients/python"))
        .env("PORT", s.tcp.port().to_string())
        .env("PIN", &fingerprint);
    let mut py = Proc::spawn(cmd)?;
    py.follow_script(|line| anyhow::bail!("unexpected line: {line}"))?;
    assert_eq!(
        py.seen,
        [
            "ok call over TLS",
            "ok a latzeros:// URL",
            "ok refused: TLS",
            "ok refused: TLS_REQUIRED",
            "done"
        ]
    );
    Ok(())
}

/// Encrypted pools across languages: a Rust SDK app and the Python client in one pool made by
/// `latzero keys generate`, each opening what the other sealed — calls both ways, a handler's
/// sealed error both ways, an emit, a block document and a stream's records — and the Python
/// handle re-joining after a restart. The checks on the Python side are in
/// `clients/python/test_encrypted.py`; those on the Rust side in `sealed/mod.rs`.
#[test]
fn the_python_client_and_the_rust_sdk_open_each_others_sealed_records() -> Result<()> {
    let mut cmd = Command::new(std::env::var_os("LATZERO_PYTHON").unwrap_or_else(|| "python3".into()));
    cmd.arg(repo().join("clients/python/test_encrypted.py"));
    sealed::run_script(bin(), cmd, "python")
}
