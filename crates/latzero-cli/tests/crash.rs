//! Crash safety of the store: the real server killed with -9 in the middle of a burst of
//! registrations and block writes, and disk errors while it runs.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use latzero_testkit::{RawClient, ServerProc, Tmpfs};
use serde_json::json;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_latzero"))
}

#[test]
fn kill_9_during_a_burst_keeps_every_acknowledged_registration() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut s = ServerProc::start_in(bin(), dir.path(), &[])?;
    let mut setup = s.raw()?;
    setup.handshake("writer", &["p"], &[])?;
    setup.send(&json!({"action":"block_create","id":1,"pool":"p","block_id":"b","size":64,"persistent":true}))?;
    assert_eq!(setup.expect()?["action"], "block_created");
    setup.send(&json!({"action":"pool_create","id":2,"pool":"kept","description":"d","owners":["writer"]}))?;
    assert_eq!(setup.expect()?["action"], "pool_created");

    let acked = Arc::new(Mutex::new(Vec::<usize>::new()));
    let written = Arc::new(Mutex::new(0u64));
    let addr = s.tcp;
    let regs = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            for i in 0.. {
                let Ok(mut c) = RawClient::connect(addr) else { break };
                match c.handshake(&format!("app{i}"), &["p"], &[&format!("t{i}")]) {
                    Ok(ack) if ack.get("store_error").is_none() => acked.lock().unwrap().push(i),
                    _ => break,
                }
            }
        })
    };
    let writes = {
        let written = written.clone();
        std::thread::spawn(move || {
            for i in 1u64.. {
                let data = format!("{i:08}");
                let req = json!({"action":"block_write","id":i,"pool":"p","block_id":"b",
                                 "data": B64.encode(data.as_bytes())});
                if setup.send(&req).is_err() {
                    break;
                }
                match setup.expect() {
                    Ok(r) if r["action"] == "block_written" => {
                        *written.lock().unwrap() = r["version"].as_u64().unwrap()
                    }
                    _ => break,
                }
            }
        })
    };
    // Kill mid-burst, once a good number of registrations were acknowledged.
    while acked.lock().unwrap().len() < 200 {
        std::thread::yield_now();
    }
    s.proc.signal(9);
    s.proc.wait_exit()?;
    regs.join().unwrap();
    writes.join().unwrap();
    drop(s);
    let acked = acked.lock().unwrap().clone();
    let written = *written.lock().unwrap();
    assert!(acked.len() >= 200 && written > 0);

    // The database is intact and holds every acknowledged registration.
    {
        let db = rusqlite::Connection::open(dir.path().join("data.db"))?;
        let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        assert_eq!(check, "ok");
        let mut missing = vec![];
        for i in &acked {
            let n: i64 = db.query_row(
                "SELECT COUNT(*) FROM app_registry WHERE app_id = ?1",
                [format!("app{i}")],
                |r| r.get(0),
            )?;
            if n != 1 {
                missing.push(*i);
            }
        }
        assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    }
    // After a restart they rehydrate, and the block holds at least the last acknowledged write.
    let s = ServerProc::start_in(bin(), dir.path(), &[])?;
    let mut c = s.raw()?;
    c.send(&json!({"action":"handshake","app_id":format!("app{}", acked[acked.len() - 1])}))?;
    let ack = c.expect()?;
    assert_eq!(ack["rehydrated"], true, "{ack}");
    let mut r = s.raw()?;
    r.handshake("reader", &["p"], &[])?;
    r.send(&json!({"action":"block_read","id":1,"pool":"p","block_id":"b","length":8,"encoding":"base64"}))?;
    let got = r.expect()?;
    assert!(got["version"].as_u64().unwrap() >= written, "{got} vs {written}");
    r.send(&json!({"action":"pool_show","id":2,"pool":"kept"}))?;
    let p = r.expect()?;
    assert_eq!(
        (p["info"]["description"].as_str(), p["info"]["owners"].clone()),
        (Some("d"), json!(["writer"]))
    );
    Ok(())
}

/// A data dir on a small tmpfs that fills up: registrations get `store_error` in their ack,
/// while connections, calls and emits keep working. Needs permission to mount a tmpfs (root);
/// without it the test says so and checks nothing.
#[test]
fn a_full_disk_is_a_clear_error_and_rpc_keeps_being_served() -> Result<()> {
    let Some(mnt) = Tmpfs::mount("size=4m") else {
        return Ok(());
    };
    let data = mnt.path().join("data");
    // Non-persistent blocks elsewhere: the tiny tmpfs is for the database.
    let volatile = tempfile::tempdir()?;
    let vdir = volatile.path().to_str().unwrap();
    let s = ServerProc::start_in(bin(), &data, &["--volatile-memory-dir", vdir, "--log-level", "error"])?;
    let _worker = s.reply(&["--app", "worker", "--pool", "p", "echo"])?;
    // Fill the rest of the disk.
    let _ = std::fs::write(mnt.path().join("filler"), vec![0u8; 4 << 20]);
    let mut errors = 0;
    for i in 0..50 {
        let mut c = s.raw()?;
        let ack = c.handshake(&format!("late{i}"), &["p"], &[&format!("t{i}")])?;
        if let Some(e) = ack.get("store_error") {
            assert!(e.as_str().unwrap().contains("full"), "{e}");
            errors += 1;
        }
    }
    assert!(errors > 0, "a full disk must show in the acks");
    let (ok, out, err) = s.run(&["call", "--pool", "p", "echo", "\"still here\""])?;
    assert!(ok, "{err}");
    assert!(out.contains("still here"), "{out}");

    let (ok, _, err) = s.run(&["pools", "create", "newpool", "--owners", "x"])?;
    assert!(
        !ok && err.contains("INTERNAL") && err.contains("could not be stored"),
        "{err}"
    );

    // `latzero health` says so: the data dir takes no file, and the database no write (a probe
    // or two may still land in pages the WAL already holds).
    let mut store_failed = false;
    for _ in 0..20 {
        let (ok, out, _) = s.run(&["health", "--json"])?;
        let h: serde_json::Value = serde_json::from_str(&out)?;
        assert!(!ok && h["healthy"] == false, "{h}");
        let check = |name: &str| {
            h["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == name)
                .cloned()
                .unwrap()
        };
        let dir = check("data_dir");
        assert!(
            dir["ok"] == false && dir["detail"].as_str().unwrap().contains("No space left"),
            "{dir}"
        );
        let store = check("store");
        if store["ok"] == false {
            assert!(store["detail"].as_str().unwrap().contains("full"), "{store}");
            store_failed = true;
            break;
        }
    }
    assert!(store_failed, "the store check must fail on a full disk");
    Ok(())
}

#[test]
fn backup_on_demand_scheduled_rotation_and_restore() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = ServerProc::start_in(bin(), dir.path(), &["--backup-interval-ms", "50", "--max-backups", "2"])?;
    let mut c = s.raw()?;
    c.handshake("before", &["p"], &[])?;
    let (ok, out, err) = s.run(&["backup"])?;
    assert!(ok, "{err}");
    assert!(err.contains("100%"), "a progress bar on stderr: {err}");
    let done: serde_json::Value = serde_json::from_str(out.trim())?;
    let backup = std::path::PathBuf::from(done["path"].as_str().unwrap());
    assert!(backup.exists() && done["bytes"].as_u64().unwrap() > 0);
    let keep = dir.path().join("kept.db");
    std::fs::copy(&backup, &keep)?;
    // The schedule keeps adding backups and rotating down to two.
    let backups = dir.path().join("backups");
    loop {
        let n = latzero_server::list_backups(&backups).len();
        assert!(
            n <= 3,
            "rotation keeps two (a third exists between its rename and the rotation)"
        );
        if latzero_server::list_backups(&backups).iter().all(|b| b != &backup) {
            break; // the on-demand one was rotated out by newer scheduled ones
        }
        std::thread::yield_now();
    }
    c.handshake("after", &["p"], &[]).ok();

    // Restore refuses while the server runs, then works once it is stopped.
    let (ok, _, err) = s.run(&["restore", keep.to_str().unwrap()])?;
    assert!(!ok && err.contains("already running"), "{err}");
    let (ok, _, err) = s.run(&["stop"])?;
    assert!(ok, "{err}");
    drop(s);
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"definitely not a database")?;
    let run = |args: &[&str]| {
        std::process::Command::new(bin())
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
    };
    let o = run(&["restore", junk.to_str().unwrap()])?;
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("cannot restore"));
    let o = run(&["restore", keep.to_str().unwrap()])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert!(std::path::Path::new(r["replaced_kept_at"].as_str().unwrap()).exists());

    let s = ServerProc::start_in(bin(), dir.path(), &[])?;
    let mut c = s.raw()?;
    let ack = c.handshake("before", &[], &[])?;
    assert_eq!(ack["rehydrated"], true, "in the backup: {ack}");
    let mut c = s.raw()?;
    let ack = c.handshake("after", &[], &[])?;
    assert_eq!(ack["rehydrated"], false, "registered after the backup: {ack}");
    Ok(())
}

/// A read-only data dir (a tmpfs mounted read-only): `start` fails at once with one clear line.
/// (A disk that turns read-only under a running server cannot be staged here: remounting with
/// the database open is refused as busy. The full-disk test covers errors at run time.)
#[test]
fn a_read_only_data_dir_is_a_clear_error_at_start() -> Result<()> {
    let Some(mnt) = Tmpfs::mount("size=1m,ro") else {
        return Ok(());
    };
    let out = std::process::Command::new(bin())
        .args(["start", "--port", "0", "--data-dir"])
        .arg(mnt.path())
        .output();
    drop(mnt);
    let out = out?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Read-only file system") && err.lines().count() == 1,
        "{err}"
    );
    Ok(())
}

/// A non-persistent block of a server killed with -9 is swept by the next server on the data
/// dir, which marks it deleted for the processes that still map it: their writes fail rather
/// than land in a file that no server will ever read again.
#[test]
fn kill_9_then_restart_ends_mappings_of_the_swept_blocks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut s = ServerProc::start_in(bin(), dir.path(), &[])?;
    let rt = tokio::runtime::Runtime::new()?;
    let url = s.url("mapper?pools=p");
    let (client, block) = rt.block_on(async {
        let c = latzero_client::ClientOptions::new()
            .reconnect(false)
            .connect(&url)
            .await?;
        let b = c
            .create_block("p", "v", latzero_client::BlockOptions::binary(64))
            .await?;
        anyhow::Ok((c, b))
    })?;
    assert!(block.is_mapped());
    s.proc.signal(9);
    s.proc.wait_exit()?;
    drop(s);
    rt.block_on(async {
        // The old server is gone; the mapping still takes writes until a new one sweeps.
        assert_eq!(block.write(0, b"orphan").await?, 1);
        let _s = ServerProc::start_in(bin(), dir.path(), &[])?;
        let e = block.write(0, b"lost").await.unwrap_err();
        assert_eq!(e.code(), Some(latzero_client::ErrorCode::BlockNotFound), "{e}");
        drop(client);
        anyhow::Ok(())
    })
}
