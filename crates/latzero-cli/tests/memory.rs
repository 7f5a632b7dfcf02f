//! End-to-end memory blocks: the real server and separate `latzero mem` processes sharing
//! blocks through their own mappings.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use anyhow::Result;
use latzero_testkit::{Proc, ServerProc, Tmpfs};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_latzero"))
}

fn json_line(out: &str) -> Value {
    serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// FNV-1a over 8-byte words, as `latzero mem checksum` computes it.
fn fnv1a64(d: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut chunks = d.chunks_exact(8);
    for c in &mut chunks {
        h ^= u64::from_le_bytes(c.try_into().unwrap());
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    for &b in chunks.remainder() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[test]
fn two_processes_share_64_mib_zero_copy_and_a_third_is_notified() -> Result<()> {
    let s = ServerProc::start(bin(), &[])?;
    let size = 64u64 << 20;
    let (ok, out, err) = s.run(&["mem", "create", "p", "big", "--size", &size.to_string()])?;
    assert!(ok, "{err}");
    // Described in words (--json for JSON).
    assert!(
        out.starts_with("block big in pool p\n") && out.contains(&format!("binary, {size} bytes, not persistent")),
        "{out}"
    );
    let mut watcher = Proc::spawn(s.cli(&["mem", "watch", "p", "big", "--count", "1"]))?;
    watcher.wait_event("synced")?;

    // The writer fills the block through its own mapping.
    let (ok, out, err) = s.run(&["mem", "write", "p", "big", "--fill", "7"])?;
    assert!(ok, "{err}");
    let w = json_line(&out);
    assert_eq!(
        (w["version"].as_u64(), w["mapped"].as_bool()),
        (Some(1), Some(true)),
        "{w}"
    );
    // The reader hashes it through its own mapping: nothing but metadata crossed the socket.
    let (ok, out, err) = s.run(&["mem", "checksum", "p", "big"])?;
    assert!(ok, "{err}");
    let c = json_line(&out);
    let want = format!("{:016x}", fnv1a64(&vec![7u8; size as usize]));
    assert_eq!(
        (c["fnv1a64"].as_str(), c["version"].as_u64()),
        (Some(want.as_str()), Some(1)),
        "{c}"
    );
    assert_eq!(c["mapped"], true);

    let ev = watcher.wait_event("changed")?;
    assert_eq!(
        (ev["version"].as_u64(), ev["length"].as_u64()),
        (Some(1), Some(size)),
        "{ev}"
    );
    assert!(watcher.wait_exit()?.0.success());
    Ok(())
}

#[test]
fn lock_contention_across_processes_and_release_on_kill_9() -> Result<()> {
    let s = ServerProc::start(bin(), &[])?;
    assert!(s.run(&["mem", "create", "p", "b", "--size", "64"])?.0);
    let mut holder = Proc::spawn(s.cli(&["mem", "lock", "p", "b", "--app", "holder"]))?;
    holder.wait_event("locked")?;
    // Another process is refused at once, and its server-side write too.
    let (ok, _, err) = s.run(&["mem", "lock", "p", "b", "--wait-ms", "0"])?;
    assert!(!ok && err.contains("LOCKED") && err.contains("holder"), "{err}");
    let mut waiter = Proc::spawn(s.cli(&[
        "mem",
        "lock",
        "p",
        "b",
        "--app",
        "waiter",
        "--wait-ms",
        "20000",
        "--hold-ms",
        "0",
    ]))?;
    // The waiter is queued (the server says so), then the holder dies without unlocking.
    loop {
        let (_, out, _) = s.run(&["mem", "stat", "p", "b", "--json"])?;
        if serde_json::from_str::<Value>(&out)?["locks"]["waiting"] == 1 {
            break;
        }
    }
    holder.signal(9);
    holder.wait_exit()?;
    waiter.wait_event("locked")?;
    waiter.wait_event("unlocked")?;
    assert!(waiter.wait_exit()?.0.success());
    Ok(())
}

/// A flag for another type of block is refused, naming the flag and the block's type, and
/// nothing is written: it is not ignored.
#[test]
fn a_flag_for_another_type_of_block_is_refused_not_ignored() -> Result<()> {
    let s = ServerProc::start(bin(), &[])?;
    assert!(
        s.run(&["mem", "create", "p", "s", "--size", "256", "--type", "stream"])?
            .0
    );
    assert!(s.run(&["mem", "create", "p", "b", "--size", "16"])?.0);
    for (args, said) in [
        (
            &["mem", "write", "p", "s", "x", "--offset", "3"][..],
            "--offset applies to binary blocks only; 's' is a stream block",
        ),
        (
            &["mem", "read", "p", "s", "--consumer", "c", "--length", "1"],
            "--length applies to binary blocks only",
        ),
        (
            &["mem", "read", "p", "b", "--max", "3"],
            "--max applies to stream blocks only; 'b' is a binary block",
        ),
        (
            &["mem", "write", "p", "b", "hi", "--length", "4"],
            "--length goes with --fill",
        ),
    ] {
        let (ok, _, err) = s.run(args)?;
        assert!(!ok && err.contains(said), "{args:?}: {err}");
    }
    for block in ["s", "b"] {
        let (_, out, _) = s.run(&["mem", "stat", "p", block, "--json"])?;
        assert_eq!(serde_json::from_str::<Value>(&out)?["version"], 0, "{out}");
    }
    Ok(())
}

/// `mem lock` holds until interrupted however short its lease: it renews the lease while it
/// holds, so a waiter is still refused long after the lease alone would have run out, and the
/// holder unlocks cleanly when told to stop.
#[test]
fn a_held_lock_outlives_its_lease_until_interrupted() -> Result<()> {
    let s = ServerProc::start(bin(), &[])?;
    assert!(s.run(&["mem", "create", "p", "b", "--size", "64"])?.0);
    let mut holder = Proc::spawn(s.cli(&["mem", "lock", "p", "b", "--app", "holder", "--lease-ms", "100"]))?;
    holder.wait_event("locked")?;
    // Ten leases' time by the server's own deadline: without renewal the waiter would get it.
    let (ok, _, err) = s.run(&["mem", "lock", "p", "b", "--wait-ms", "1000", "--hold-ms", "0"])?;
    assert!(!ok && err.contains("LOCK_TIMEOUT"), "{err}");
    holder.signal(15);
    holder.wait_event("unlocked")?;
    let (status, err) = holder.wait_exit()?;
    assert!(status.success(), "{err}");
    Ok(())
}

/// A holder held up past its lease (stopped here) does not renew as if nothing happened: the
/// server tells it the lease was new, so others could have locked the block in between, and
/// `mem lock` says so, lets the lock go and exits non-zero.
#[test]
fn a_lock_whose_lease_lapsed_is_given_up_not_retaken() -> Result<()> {
    let s = ServerProc::start(bin(), &[])?;
    assert!(s.run(&["mem", "create", "p", "b", "--size", "64"])?.0);
    let mut holder = Proc::spawn(s.cli(&["mem", "lock", "p", "b", "--app", "holder", "--lease-ms", "200"]))?;
    holder.wait_event("locked")?;
    holder.signal(19); // SIGSTOP
    // Another app gets the lock once the lease runs out, and lets it go.
    let (ok, out, err) = s.run(&["mem", "lock", "p", "b", "--wait-ms", "20000", "--hold-ms", "0"])?;
    assert!(ok && out.contains("unlocked"), "{out}{err}");
    holder.signal(18); // SIGCONT: its renewal is due at once
    let (status, err) = holder.wait_exit()?;
    assert!(!status.success(), "{err}");
    // Told by its renewal, or by the server's word that the lease ran out, whichever it reads
    // first once it runs again.
    assert!(
        err.contains("lapsed before it was renewed") || err.contains("no longer held (its lease ran out)"),
        "{err}"
    );
    let (_, out, _) = s.run(&["mem", "stat", "p", "b", "--json"])?;
    let held = &serde_json::from_str::<Value>(&out)?["locks"]["held"];
    assert_eq!(held.as_array().map(Vec::len), Some(0), "{out}");
    Ok(())
}

/// A holder whose connection drops learns at once that its lease went with it (not at its next
/// renewal, half a minute later here), says so and exits non-zero.
#[test]
fn a_lock_lost_with_the_connection_ends_mem_lock_at_once() -> Result<()> {
    let mut s = ServerProc::start(bin(), &[])?;
    assert!(s.run(&["mem", "create", "p", "b", "--size", "64"])?.0);
    let mut holder = Proc::spawn(s.cli(&["mem", "lock", "p", "b", "--app", "holder", "--lease-ms", "60000"]))?;
    holder.wait_event("locked")?;
    let (ok, _, err) = s.run(&["stop"])?;
    assert!(ok, "{err}");
    s.proc.wait_exit()?;
    let (status, err) = holder.wait_exit()?;
    assert!(!status.success(), "{err}");
    // Told by the client's word that the lease went with the connection, not found out by a
    // failed renewal half a lease later.
    assert!(
        err.contains("no longer held (the connection to the server dropped"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_stream_with_one_producer_and_two_consumers() -> Result<()> {
    let s = ServerProc::start(bin(), &[])?;
    assert!(
        s.run(&["mem", "create", "p", "log", "--size", "4096", "--type", "stream"])?
            .0
    );
    let mut producer = s.cli(&["mem", "write", "p", "log", "--lines"]);
    producer.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = producer.spawn()?;
    child.stdin.take().unwrap().write_all(b"one\ntwo\nthree\n")?;
    let out = child.wait_with_output()?;
    assert!(out.status.success());
    assert_eq!(json_line(&String::from_utf8_lossy(&out.stdout))["index"], 2);
    for consumer in ["c1", "c2"] {
        let (ok, out, err) = s.run(&["mem", "read", "p", "log", "--consumer", consumer])?;
        assert!(ok, "{err}");
        assert_eq!(out, "one\ntwo\nthree\n", "{consumer}");
    }
    let (_, out, _) = s.run(&["mem", "read", "p", "log", "--consumer", "c1"])?;
    assert_eq!(out, "", "c1 read everything already");
    assert!(s.run(&["mem", "write", "p", "log", "four"])?.0);
    let (_, out, _) = s.run(&["mem", "read", "p", "log", "--consumer", "c2"])?;
    assert_eq!(out, "four\n");
    Ok(())
}

/// `--lines` appends each line's bytes as they are (not only text), `mem read` gives them back
/// as they are, and a stream that fills says which lines went in, so a caller knows what to
/// send again.
#[test]
fn stream_lines_are_bytes_and_a_full_stream_says_which_went_in() -> Result<()> {
    let s = ServerProc::start(bin(), &[])?;
    let lines = |block: &str, input: &[u8]| -> Result<std::process::Output> {
        let mut cmd = s.cli(&["mem", "write", "p", block, "--lines"]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        child.stdin.take().unwrap().write_all(input)?;
        Ok(child.wait_with_output()?)
    };
    let read = |block: &str| -> Result<Vec<u8>> {
        let out = s.cli(&["mem", "read", "p", block, "--consumer", "c"]).output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Ok(out.stdout)
    };
    assert!(
        s.run(&["mem", "create", "p", "raw", "--size", "4096", "--type", "stream"])?
            .0
    );
    let out = lines("raw", b"a\r\nb\xff\x00\nc")?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read("raw")?, b"a\nb\xff\x00\nc\n");

    assert!(
        s.run(&["mem", "create", "p", "small", "--size", "128", "--type", "stream"])?
            .0
    );
    // A consumer holds the records it has not read: the ring fills.
    assert_eq!(read("small")?, b"");
    let input: Vec<u8> = (0..50).flat_map(|i| format!("record {i:03}\n").into_bytes()).collect();
    let out = lines("small", &input)?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a 128-byte ring took 50 records");
    // "line K+1 not appended (the K before it appended, as records 0 to K-1): ... stream full"
    let k: usize = err
        .split("(the ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of lines appended: {err}"));
    assert!(
        err.contains(&format!("line {} not appended", k + 1))
            && err.contains(&format!("as records 0 to {}", k - 1))
            && err.contains("stream full"),
        "{err}"
    );
    let expected: Vec<u8> = (0..k).flat_map(|i| format!("record {i:03}\n").into_bytes()).collect();
    assert_eq!(
        String::from_utf8(read("small")?)?,
        String::from_utf8(expected)?,
        "the lines it named"
    );
    Ok(())
}

#[test]
fn bad_input_from_the_cli_is_one_clear_line() -> Result<()> {
    let s = ServerProc::start(bin(), &["--max-block-size", "1024"])?;
    let (ok, _, err) = s.run(&["mem", "create", "p", "b", "--size", "2048"])?;
    assert!(!ok && err.contains("INVALID_SIZE") && err.contains("1024"), "{err}");
    assert!(s.run(&["mem", "create", "p", "j", "--size", "64", "--type", "json"])?.0);
    let (ok, _, err) = s.run(&["mem", "write", "p", "j", "{\"a\":"])?;
    assert!(!ok && err.contains("not valid JSON"), "{err}");
    // `-` as DATA is not standard input here: --file - is, and the error says so.
    let (ok, _, err) = s.run(&["mem", "write", "p", "j", "-"])?;
    assert!(!ok && err.contains("give --file -"), "{err}");
    assert!(s.run(&["mem", "write", "p", "j", "{\"a\":1}"])?.0);
    let (_, out, _) = s.run(&["mem", "read", "p", "j"])?;
    assert_eq!(json_line(&out)["document"]["a"], 1);
    let (ok, _, err) = s.run(&["mem", "read", "p", "missing"])?;
    assert!(!ok && err.contains("BLOCK_NOT_FOUND"), "{err}");
    let (_, out, _) = s.run(&["mem", "list", "p"])?;
    assert!(out.lines().nth(1).unwrap_or_default().starts_with('j'), "{out}");
    assert!(s.run(&["mem", "delete", "p", "j"])?.0);
    let (_, out, _) = s.run(&["mem", "list", "p", "--json"])?;
    assert_eq!(serde_json::from_str::<Value>(&out)?, serde_json::json!([]));
    Ok(())
}

#[test]
fn memory_limits_come_from_the_config_file_too() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("config"))?;
    std::fs::write(
        dir.path().join("config/latzero.toml"),
        "[memory]\nmax_block_size = 100\nmax_blocks = 1\n",
    )?;
    let s = ServerProc::start_in(bin(), dir.path(), &[])?;
    let (ok, _, err) = s.run(&["mem", "create", "p", "a", "--size", "101"])?;
    assert!(!ok && err.contains("INVALID_SIZE"), "{err}");
    assert!(s.run(&["mem", "create", "p", "a", "--size", "100"])?.0);
    let (ok, _, err) = s.run(&["mem", "create", "p", "b", "--size", "10"])?;
    assert!(!ok && err.contains("OVERLOADED") && err.contains("max_blocks"), "{err}");
    Ok(())
}

/// A full /dev/shm (here: a 1 MiB tmpfs) is NO_SPACE at create, never a SIGBUS later, and the
/// failed create leaves no file behind. Needs permission to mount a tmpfs (root); without it the
/// test says so and checks nothing.
#[test]
fn a_full_tmpfs_is_no_space_at_create() -> Result<()> {
    let Some(mnt) = Tmpfs::mount("size=1m") else {
        return Ok(());
    };
    let s = ServerProc::start(bin(), &["--volatile-memory-dir", mnt.path().to_str().unwrap()])?;
    let (ok, _, err) = s.run(&["mem", "create", "p", "big", "--size", &(2u64 << 20).to_string()])?;
    assert!(!ok && err.contains("NO_SPACE"), "{err}");
    let (ok, _, err) = s.run(&["mem", "create", "p", "small", "--size", "4096"])?;
    assert!(ok, "the space of the failed create was given back: {err}");
    let (_, out, _) = s.run(&["mem", "list", "p", "--json"])?;
    assert_eq!(serde_json::from_str::<Value>(&out)?.as_array().map(Vec::len), Some(1));
    drop(s);
    Ok(())
}

/// A persistent block's metadata and content are back after the server is killed with -9;
/// a non-persistent one is gone.
#[test]
fn persistent_blocks_survive_kill_9() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut s = ServerProc::start_in(bin(), dir.path(), &[])?;
    assert!(
        s.run(&[
            "mem",
            "create",
            "p",
            "keep",
            "--size",
            "64",
            "--persistent",
            "--writers",
            "w"
        ])?
        .0
    );
    assert!(s.run(&["mem", "create", "p", "tmp", "--size", "64"])?.0);
    let (ok, _, err) = s.run(&["mem", "write", "p", "keep", "--app", "w", "kept"])?;
    assert!(ok, "{err}");
    s.proc.signal(9);
    s.proc.wait_exit()?;
    drop(s);

    let s = ServerProc::start_in(bin(), dir.path(), &[])?;
    let (ok, out, err) = s.run(&["mem", "read", "p", "keep", "--length", "4"])?;
    assert!(ok, "{err}");
    assert_eq!(out, "kept");
    let (_, out, _) = s.run(&["mem", "stat", "p", "keep", "--json"])?;
    let st: Value = serde_json::from_str(&out)?;
    assert_eq!(
        (st["version"].as_u64(), st["permissions"]["write"].clone()),
        (Some(1), serde_json::json!(["w"]))
    );
    let (ok, _, err) = s.run(&["mem", "stat", "p", "tmp"])?;
    assert!(!ok && err.contains("BLOCK_NOT_FOUND"), "{err}");
    Ok(())
}
