//! The example programs run as the README and their headers say, each a separate process,
//! against a server in this process (its Unix socket found through `LATZERO_DATA_DIR`, as a
//! user's default data dir would be).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use latzero_server::{Server, ServerConfig};
use latzero_testkit::Proc;

/// An example program: a binary of this package, which cargo builds for its tests.
fn cmd(name: &str, data_dir: &Path) -> Command {
    let exe = match name {
        "handler" => env!("CARGO_BIN_EXE_handler"),
        "caller" => env!("CARGO_BIN_EXE_caller"),
        "memory" => env!("CARGO_BIN_EXE_memory"),
        "encrypted" => env!("CARGO_BIN_EXE_encrypted"),
        other => panic!("no example {other}"),
    };
    let mut c = Command::new(exe);
    c.env("LATZERO_DATA_DIR", data_dir)
        .env_remove("LATZERO_URL")
        .env_remove("LATZERO_HOST")
        .env_remove("LATZERO_PORT");
    c
}

fn run(name: &str, data_dir: &Path) -> Result<String> {
    let out = cmd(name, data_dir)
        .output()
        .with_context(|| format!("running example {name}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "example {name}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[test]
fn the_examples_run_against_a_server() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = ServerConfig::new(dir.path());
    cfg.port = 0;
    cfg.memory.volatile_dir = Some(dir.path().to_path_buf());
    let rt = tokio::runtime::Runtime::new()?;
    let server = rt.block_on(Server::bind(cfg))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(server.run(async {
        let _ = stopped.await;
    }));

    let mut handler = Proc::spawn(cmd("handler", dir.path()))?;
    handler.wait_line(|l| l.starts_with("serving 'double'"))?;
    let out = run("caller", dir.path())?;
    for x in 1..=5 {
        assert!(out.contains(&format!("double({x}) = {}", x * 2)), "{out}");
    }
    drop(handler);

    let out = run("memory", dir.path())?;
    assert!(out.contains("mapped by the camera: true, by the viewer: true"), "{out}");
    assert!(
        out.contains("frame 5: version 5, read at version 5, byte sum 5242880"),
        "{out}"
    );
    assert!(out.contains("deleted demo/frame"), "{out}");

    let out = run("encrypted", dir.path())?;
    assert!(
        out.contains(r#"opened by the caller: {"account":"7","balance":1200}"#),
        "{out}"
    );
    assert!(
        out.contains(
            "ledger, opened by the auditor: account 7 read\nledger, opened by the auditor: account 7 debited 200\n"
        ),
        "{out}"
    );

    let _ = stop.send(());
    rt.block_on(task)??;
    Ok(())
}
