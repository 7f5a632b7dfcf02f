//! End-to-end: the Python client (`clients/python/latzero.py`) under python3 against the real
//! `latzero` binary's Unix socket, with a `latzero reply` worker, and a server restart the
//! client must come back from. The checks are in `clients/python/test_e2e.py`; this drives it.
//! `scripts/test.sh` installs python3 if it is missing; `LATZERO_PYTHON` names another
//! interpreter (the client takes another path for coroutine handlers on 3.12 and later).

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
/// `clients/python/test_encrypted.py`; those on the Rust side run here when it prints `ready`.
#[test]
fn the_python_client_and_the_rust_sdk_open_each_others_sealed_records() -> Result<()> {
    use latzero_client::{BlockOptions, ClientError, ClientOptions, HandlerError, PoolKeys, Request};
    use serde_json::{Value, json};

    let dir = tempfile::tempdir()?;
    let mut s = ServerProc::start_in(bin(), dir.path(), &[])?;
    let (ok, out, err) = s.run(&["keys", "generate", "vault", "--app", "owner"])?;
    assert!(ok, "{err}");
    let keys = latzero_testkit::printed_keys(&out);
    assert_eq!(keys.len(), 3, "{out}");

    let rt = tokio::runtime::Runtime::new()?;
    let url = s.url("rs-worker");
    let (rust, vault) = rt.block_on(async {
        let rust = ClientOptions::new().connect(&url).await?;
        let vault = rust.encrypted_pool("vault", PoolKeys::parse("vault", &keys)?).await?;
        vault
            .handle("rs_upper", |r: Request| async move {
                if r.data["fail"] == json!(true) {
                    return Err(HandlerError(json!({"message": "account 7 is short by 1200"})));
                }
                let text = r.data["text"].as_str().unwrap_or_default().to_uppercase();
                Ok(json!({"upper": text, "by": "rust"}))
            })
            .await?;
        let doc = rust
            .create_block("vault", "rs-doc", BlockOptions::binary(1024).persistent())
            .await?;
        vault.write_json(&doc, &json!({"from": "rust", "n": 1})).await?;
        let log = rust
            .create_block("vault", "rs-log", BlockOptions::stream(65536))
            .await?;
        for i in 0..2 {
            vault.append(&log, format!("rust {i}").as_bytes()).await?;
        }
        anyhow::Ok((rust, vault))
    })?;

    let mut cmd = Command::new(std::env::var_os("LATZERO_PYTHON").unwrap_or_else(|| "python3".into()));
    cmd.arg(repo().join("clients/python/test_encrypted.py"))
        .env(
            "LATZERO_SOCKET",
            s.unix.clone().expect("the server serves its Unix socket"),
        )
        .env("LATZERO_KEYS", keys.join(" "));
    let mut py = Proc::spawn(cmd)?;
    py.follow_script(|line| match line {
        // What Python sealed, opened here; then `py_done` lets the script go on.
        "ready" => rt.block_on(async {
            let mut checked = 0;
            let sum = vault.call("py_sum", &json!({"xs": [1, 2, 3]})).await?;
            assert_eq!(sum, json!({"sum": 6, "by": "python", "from": "rs-worker"}));
            checked += 1;
            match vault.call("py_sum", &json!({"xs": []})).await {
                Err(ClientError::Handler(e)) => assert_eq!(e, json!({"message": "nothing to add", "code": 42})),
                other => anyhow::bail!("a Python handler's sealed error: {other:?}"),
            }
            checked += 1;
            let doc = rust.attach_block("vault", "py-doc").await?;
            let (got, _) = vault.read_json::<Value>(&doc).await?;
            assert_eq!(got, json!({"from": "python", "list": [1, 2]}));
            checked += 1;
            let log = rust.attach_block("vault", "rs-log").await?;
            let r = vault.consume(&log, "rs", 10).await?;
            let records: Vec<Vec<u8>> = r.records.into_iter().collect::<Result<_, _>>()?;
            assert_eq!(records, [&b"rust 0"[..], b"rust 1", b"python 0"]);
            checked += 1;
            vault.emit("py_note", &json!({"note": "from rust"})).await?;
            checked += 1;
            vault.call("py_done", &json!({"checked": checked})).await?;
            anyhow::Ok(())
        }),
        // Stopped and started again: the Python handle must prove its key again by itself.
        "restart" => s.restart(&[]),
        _ => anyhow::bail!("unexpected line: {line}"),
    })?;
    assert!(
        py.seen.iter().any(|l| l == "ok re-joined after the server restarted"),
        "{:?}",
        py.seen
    );
    drop((vault, rust));
    Ok(())
}
