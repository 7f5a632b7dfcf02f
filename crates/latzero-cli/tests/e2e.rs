//! End-to-end: the real `latzero` binary as the server, and separate client processes
//! (`latzero reply` handlers, `latzero call` callers, raw TCP clients in this process).

use std::path::Path;

use anyhow::Result;
use latzero_testkit::{Proc, ServerProc, free_port};
use serde_json::{Value, json};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_latzero"))
}

fn server() -> ServerProc {
    ServerProc::start(bin(), &[]).expect("server starts")
}

use latzero_proto::seed::{HANDSHAKE as SEED_HANDSHAKE, RESPONSE as SEED_RESPONSE, TRIGGER as SEED_TRIGGER};

#[test]
fn seed_examples_verbatim_over_raw_tcp() -> Result<()> {
    let s = server();
    let mut handler = s.raw()?;
    handler.handshake("targetApp", &["alpha"], &["foo"])?;
    let mut caller = s.raw()?;
    caller.send_text(SEED_HANDSHAKE)?;
    let ack = caller.expect()?;
    assert_eq!(ack["action"], "handshake_ack");
    assert_eq!(ack["app_id"], "myApp");
    caller.send_text(SEED_TRIGGER)?;
    let t = handler.expect()?;
    assert_eq!(
        (t["action"].as_str(), t["process"].as_str()),
        (Some("trigger"), Some("foo"))
    );
    assert_eq!(t["data"], json!({"x": 42}));
    handler.send_text(&SEED_RESPONSE.replace("\"uuid-v4\"", &t["id"].to_string()))?;
    assert_eq!(caller.expect()?, serde_json::from_str::<Value>(SEED_RESPONSE)?);
    Ok(())
}

#[test]
fn round_robin_across_two_handler_processes() -> Result<()> {
    let s = server();
    let _w1 = s.reply(&["--app", "w1", "--pool", "alpha", "who"])?;
    let _w2 = s.reply(&["--app", "w2", "--pool", "alpha", "who"])?;
    let (ok, out, err) = s.run(&["call", "--pool", "alpha", "who", "--count", "100", "--expect-echo"])?;
    assert!(ok, "{err}");
    let summary: Value = serde_json::from_str(out.trim())?;
    assert_eq!(summary["ok"], 100);
    assert_eq!(summary["responders"], json!({"w1": 50, "w2": 50}), "{summary}");
    Ok(())
}

/// `call --count` reports the latency percentiles of the calls answered: at least the handler's
/// delay, in order; none when no call was answered.
#[test]
fn call_count_reports_latency_percentiles_of_the_calls_answered() -> Result<()> {
    let s = server();
    let _slow = s.reply(&["--app", "slow", "--pool", "alpha", "slow", "--delay-ms", "20"])?;
    let (ok, out, err) = s.run(&["call", "--pool", "alpha", "slow", "--count", "5", "--concurrency", "2"])?;
    assert!(ok, "{err}");
    let summary: Value = serde_json::from_str(out.trim())?;
    let at = |q: &str| {
        summary["latency_us"][q]
            .as_f64()
            .unwrap_or_else(|| panic!("no {q}: {summary}"))
    };
    let qs = ["p50", "p90", "p99", "p99.9", "max"].map(at);
    assert!(qs[0] >= 20_000.0, "below the handler's 20 ms delay: {summary}");
    assert!(qs.windows(2).all(|w| w[0] <= w[1]), "{summary}");
    let (ok, out, _) = s.run(&["call", "--pool", "alpha", "nobody", "--count", "2"])?;
    assert!(!ok);
    let summary: Value = serde_json::from_str(out.trim())?;
    assert_eq!(summary["errors"], json!({"NO_HANDLER": 2}), "{summary}");
    assert_eq!(summary["latency_us"], Value::Null, "{summary}");
    Ok(())
}

/// What `call` sends and prints and what `reply` prints and echoes is the JSON text as written:
/// read into a value, an integer past 64 bits or a decimal past a double's precision changed.
#[test]
fn call_and_reply_pass_json_text_on_as_written() -> Result<()> {
    let s = server();
    let mut worker = s.reply(&["--app", "w", "--pool", "alpha", "echo"])?;
    let data = r#"{"big":123456789012345678901234567890,"x":0.1000000000000000055511151231257827,"n":-0.0}"#;
    let (ok, out, err) = s.run(&["call", "--pool", "alpha", "echo", data])?;
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        format!(r#"{{"app_id":"w","process":"echo","data":{data}}}"#)
    );
    // The worker's `call` line, as text.
    let line = loop {
        let l = worker.next_line()?;
        if l.contains(r#""event":"call""#) {
            break l;
        }
    };
    assert!(line.contains(&format!(r#""data":{data}"#)), "{line}");
    let fixed = r#"{"n":123456789012345678901234567891}"#;
    let _fixed = s.reply(&["--app", "f", "--pool", "alpha", "fixed", "--respond", fixed])?;
    let (ok, out, err) = s.run(&["call", "--pool", "alpha", "fixed"])?;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), fixed, "--respond as written");
    // And each handler's answer of a broadcast.
    let (ok, out, err) = s.run(&["call", "--pool", "alpha", "fixed", "--broadcast"])?;
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        format!(r#"{{"app_id":"f","response":{fixed},"status":"ok"}}"#)
    );
    Ok(())
}

#[test]
fn destination_routing_reaches_the_named_app_and_the_reply_the_caller() -> Result<()> {
    let s = server();
    let _w1 = s.reply(&["--app", "w1", "--pool", "alpha", "who"])?;
    let _w2 = s.reply(&["--app", "w2", "--pool", "alpha", "who"])?;
    let (ok, out, err) = s.run(&[
        "call",
        "--pool",
        "alpha",
        "who",
        "--to",
        "w2",
        "--count",
        "20",
        "--expect-echo",
    ])?;
    assert!(ok, "{err}");
    let summary: Value = serde_json::from_str(out.trim())?;
    assert_eq!(summary["responders"], json!({"w2": 20}));
    let (ok, out, _) = s.run(&["call", "--pool", "alpha", "who", "--to", "w1", r#"{"k":1}"#])?;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(out.trim())?,
        json!({"app_id": "w1", "process": "who", "data": {"k": 1}})
    );
    Ok(())
}

/// A payload larger than one argument may be (the kernel caps an argument at 128 KiB) goes in
/// by `--file`, `-` for stdin, to `call` and `emit` alike.
#[test]
fn a_large_payload_goes_in_from_a_file_or_stdin() -> Result<()> {
    use std::io::Write as _;
    let s = server();
    let _w = s.reply(&["--app", "w", "--pool", "alpha", "echo"])?;
    let big = json!({"blob": "x".repeat(300 << 10)});
    let path = s.data_dir.join("payload.json");
    std::fs::write(&path, big.to_string())?;
    let (ok, out, err) = s.run(&["call", "--pool", "alpha", "echo", "--file", path.to_str().unwrap()])?;
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(out.trim())?["data"], big);
    let mut call = s.cli(&["call", "--pool", "alpha", "echo", "--file", "-"]);
    call.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = call.spawn()?;
    child.stdin.take().unwrap().write_all(br#"{"from":"stdin"}"#)?;
    let out = child.wait_with_output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout)?["data"],
        json!({"from": "stdin"})
    );
    let (ok, out, err) = s.run(&["emit", "--pool", "alpha", "echo", "--file", path.to_str().unwrap()])?;
    assert!(ok && out.contains("\"delivered\":1"), "{out}{err}");
    std::fs::write(&path, "{not json")?;
    let (ok, _, err) = s.run(&["call", "--pool", "alpha", "echo", "--file", path.to_str().unwrap()])?;
    assert!(!ok && err.contains("does not hold valid JSON"), "{err}");
    Ok(())
}

#[test]
fn thousand_concurrent_calls_from_ten_client_processes() -> Result<()> {
    let s = server();
    let _w1 = s.reply(&["--app", "w1", "--pool", "alpha", "echo"])?;
    let _w2 = s.reply(&["--app", "w2", "--pool", "alpha", "echo"])?;
    let callers: Vec<Proc> = (0..10)
        .map(|i| {
            let app = format!("c{i}");
            Proc::spawn(s.cli(&[
                "call",
                "--app",
                &app,
                "--pool",
                "alpha",
                "echo",
                "--count",
                "100",
                "--concurrency",
                "100",
                "--expect-echo",
            ]))
        })
        .collect::<Result<_>>()?;
    let mut total = 0;
    for mut c in callers {
        let line = c.next_line()?;
        let (st, err) = c.wait_exit()?;
        assert!(st.success(), "{line} {err}");
        let v: Value = serde_json::from_str(&line)?;
        assert_eq!(
            (v["ok"].as_u64(), v["mismatched"].as_u64()),
            (Some(100), Some(0)),
            "{v}"
        );
        total += v["ok"].as_u64().unwrap();
    }
    assert_eq!(total, 1000);
    Ok(())
}

#[test]
fn error_codes_over_the_wire() -> Result<()> {
    let s = ServerProc::start(bin(), &["--max-frame-len", "1024", "--max-inflight", "2"])?;
    let mut h = s.raw()?;
    h.handshake("h", &["p"], &["f"])?;
    let mut c = s.raw()?;
    let code = |c: &mut latzero_testkit::RawClient, msg: Value| -> Result<Value> {
        c.send(&msg)?;
        c.expect()
    };
    // Before the handshake.
    let e = code(&mut c, json!({"action":"join","id":1,"pools":["p"]}))?;
    assert_eq!(e["code"], "HANDSHAKE_REQUIRED");
    let e = code(
        &mut c,
        json!({"action":"handshake","id":2,"app_id":"c","protocol_version":"2.0"}),
    )?;
    assert_eq!(e["code"], "UNSUPPORTED_VERSION");
    let e = code(&mut c, json!({"action":"handshake","id":3,"app_id":"bad id"}))?;
    assert_eq!(
        (e["code"].as_str(), e["in_reply_to"].as_i64()),
        (Some("INVALID_NAME"), Some(3))
    );
    let e = code(&mut c, json!({"action":"handshake","id":4,"app_id":"h"}))?;
    assert_eq!(e["code"], "DUPLICATE_APP");
    assert_eq!(
        code(&mut c, json!({"action":"handshake","id":5,"app_id":"c","pools":["p"]}))?["action"],
        "handshake_ack"
    );
    // Calls.
    let e = code(&mut c, json!({"action":"trigger","id":"a","process":"nope","pool":"p"}))?;
    assert_eq!(
        (e["code"].as_str(), e["in_reply_to"].as_str()),
        (Some("NO_HANDLER"), Some("a"))
    );
    let e = code(&mut c, json!({"action":"trigger","id":"b","process":"f","pool":"q"}))?;
    assert_eq!(e["code"], "NOT_IN_POOL");
    let e = code(&mut c, json!({"action":"frobnicate","id":"c"}))?;
    assert_eq!(
        (e["code"].as_str(), e["in_reply_to"].as_str()),
        (Some("UNKNOWN_ACTION"), Some("c"))
    );
    let e = code(&mut c, json!({"action":"trigger","id":"d","pool":"p"}))?;
    assert_eq!(e["code"], "INVALID_MESSAGE");
    assert!(e["message"].as_str().unwrap().contains("process"), "{e}");
    let e = code(
        &mut c,
        json!({"action":"response","id":"e","in_reply_to":"999999","status":"ok"}),
    )?;
    assert_eq!(e["code"], "UNKNOWN_CALL");
    let e = code(
        &mut c,
        json!({"action":"block_stat","id":"m","pool":"p","block_id":"none"}),
    )?;
    assert_eq!(e["code"], "BLOCK_NOT_FOUND");
    // OVERLOADED: two calls in flight is the limit.
    c.send(&json!({"action":"trigger","id":"o1","process":"f","pool":"p","ttl":60000}))?;
    c.send(&json!({"action":"trigger","id":"o2","process":"f","pool":"p","ttl":60000}))?;
    let e = code(&mut c, json!({"action":"trigger","id":"o3","process":"f","pool":"p"}))?;
    assert_eq!(
        (e["code"].as_str(), e["in_reply_to"].as_str()),
        (Some("OVERLOADED"), Some("o3"))
    );
    // TIMEOUT, exactly once.
    let mut c2 = s.raw()?;
    c2.handshake("c2", &["p"], &[])?;
    let e = code(
        &mut c2,
        json!({"action":"trigger","id":"t","process":"f","pool":"p","ttl":50}),
    )?;
    assert_eq!(
        (e["code"].as_str(), e["handler_may_still_run"].as_bool()),
        (Some("TIMEOUT"), Some(true))
    );
    assert!(c2.sync()?.is_empty(), "exactly one terminal frame");
    // FRAME_TOO_LARGE closes only that connection.
    let mut big = s.raw()?;
    big.send_bytes(&2048u32.to_be_bytes())?;
    let e = big.expect()?;
    assert_eq!(e["code"], "FRAME_TOO_LARGE");
    assert!(big.recv()?.is_none(), "connection closed after FRAME_TOO_LARGE");
    // HANDLER_GONE for the two calls parked on h; the caller learns at once.
    drop(h);
    let mut gone = [c.expect()?, c.expect()?];
    gone.sort_by_key(|v| v["in_reply_to"].to_string());
    for (g, id) in gone.iter().zip(["o1", "o2"]) {
        assert_eq!(
            (g["code"].as_str(), g["in_reply_to"].as_str()),
            (Some("HANDLER_GONE"), Some(id))
        );
    }
    Ok(())
}

#[test]
fn bad_frames_get_errors_and_the_connection_stays_usable() -> Result<()> {
    let s = server();
    let mut c = s.raw()?;
    let mut other = s.raw()?;
    other.handshake("other", &["p"], &[])?;
    for (bytes, want) in [
        (&b"{not json"[..], "not valid JSON"),
        (&b"[1,2,3]"[..], "must be a JSON object"),
        (&b"{\"action\":42}"[..], "action"),
        (&b"\x00\x00\x00\x00\x09{"[..], "binary frame header"),
        (&b"{\"action\":\"ping\",\"id\":{\"x\":1}}"[..], "string or an integer"),
    ] {
        c.send_bytes(&latzero_proto::frame::encode_json(bytes))?;
        let e = c.expect()?;
        assert_eq!(e["action"], "error", "{e}");
        assert!(e["message"].as_str().unwrap().contains(want), "{want}: {e}");
    }
    c.send_bytes(&0u32.to_be_bytes())?;
    assert!(c.expect()?["message"].as_str().unwrap().contains("empty frame"));
    assert!(c.sync()?.is_empty(), "connection still usable");
    assert!(other.sync()?.is_empty(), "other connections unaffected");
    Ok(())
}

#[test]
fn handler_killed_mid_call_fails_the_caller_process() -> Result<()> {
    let s = server();
    let mut h = s.reply(&["--app", "h", "--pool", "p", "work", "--hang"])?;
    let mut caller = Proc::spawn(s.cli(&["call", "--pool", "p", "work", "--timeout-ms", "600000"]))?;
    h.wait_event("call")?;
    h.signal(9);
    let (st, err) = caller.wait_exit()?;
    assert!(!st.success());
    assert!(err.contains("HANDLER_GONE"), "{err}");
    Ok(())
}

#[test]
fn timeout_from_a_separate_caller_process() -> Result<()> {
    let s = server();
    let _h = s.reply(&["--app", "h", "--pool", "p", "work", "--hang"])?;
    let (ok, _, err) = s.run(&["call", "--pool", "p", "work", "--timeout-ms", "100"])?;
    assert!(!ok);
    assert!(err.contains("TIMEOUT") && err.contains("may still run"), "{err}");
    Ok(())
}

#[test]
fn emit_stays_in_its_pool() -> Result<()> {
    let s = server();
    let mut a = s.reply(&["--app", "a", "--pool", "alpha", "ev"])?;
    let mut b = s.reply(&["--app", "b", "--pool", "beta", "ev"])?;
    let (ok, out, err) = s.run(&["emit", "--pool", "alpha", "ev", r#""to-alpha""#])?;
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(out.trim())?, json!({"delivered": 1}));
    assert_eq!(a.wait_event("emit")?["data"], "to-alpha");
    let (ok, out, _) = s.run(&["emit", "--pool", "beta", "ev", r#""to-beta""#])?;
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(out.trim())?, json!({"delivered": 1}));
    // b's first emit is beta's: alpha's never reached it.
    assert_eq!(b.wait_event("emit")?["data"], "to-beta");
    Ok(())
}

#[test]
fn shutdown_fails_calls_in_flight_and_exits_zero() -> Result<()> {
    let mut s = server();
    let mut h = s.reply(&["--app", "h", "--pool", "p", "work", "--hang"])?;
    let mut caller = Proc::spawn(s.cli(&["call", "--pool", "p", "work", "--timeout-ms", "600000"]))?;
    h.wait_event("call")?;
    let (ok, out, err) = s.run(&["stop"])?;
    assert!(ok, "{err}");
    assert!(out.contains("stopped"));
    let (st, err) = caller.wait_exit()?;
    assert!(!st.success());
    assert!(err.contains("SHUTTING_DOWN"), "{err}");
    let (st, _) = s.proc.wait_exit()?;
    assert!(st.success(), "server exit {st:?}");
    assert!(!s.data_dir.join("server.json").exists());
    Ok(())
}

#[test]
fn sigterm_and_sigint_shut_down_cleanly() -> Result<()> {
    for sig in [15, 2] {
        let mut s = server();
        let mut c = s.raw()?;
        c.handshake("c", &["p"], &[])?;
        s.proc.signal(sig);
        let closing = c.expect()?;
        assert_eq!(
            (closing["action"].as_str(), closing["code"].as_str()),
            (Some("closing"), Some("SHUTTING_DOWN"))
        );
        let (st, _) = s.proc.wait_exit()?;
        assert!(st.success(), "signal {sig}: {st:?}");
        let log = std::fs::read_to_string(s.data_dir.join("logs/server.log"))?;
        assert!(log.contains("server ready") && log.contains("server stopped"), "{log}");
    }
    Ok(())
}

#[test]
fn start_refuses_with_one_line_reasons() -> Result<()> {
    let s = server();
    let run = |args: &[&str]| -> Result<(bool, String)> {
        let out = std::process::Command::new(bin())
            .args(args)
            .env_remove("LATZERO_PORT")
            .env_remove("LATZERO_DATA_DIR")
            .output()?;
        Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).into()))
    };
    let port = s.tcp.port().to_string();
    let other = tempfile::tempdir()?;
    let (ok, err) = run(&["start", "-p", &port, "-d", other.path().to_str().unwrap()])?;
    assert!(
        !ok && err.contains("already in use") && err.lines().count() == 1,
        "{err}"
    );
    let (ok, err) = run(&["start", "-p", "0", "-d", s.data_dir.to_str().unwrap()])?;
    assert!(
        !ok && err.contains("already running") && err.lines().count() == 1,
        "{err}"
    );
    let file = other.path().join("file");
    std::fs::write(&file, "x")?;
    let (ok, err) = run(&["start", "-p", "0", "-d", file.join("sub").to_str().unwrap()])?;
    assert!(
        !ok && err.contains("cannot use data directory") && err.lines().count() == 1,
        "{err}"
    );
    // A data directory whose socket path would not fit a socket address (107 bytes here).
    let deep = other.path().join("d".repeat(120));
    let (ok, err) = run(&["start", "-p", "0", "-d", deep.to_str().unwrap()])?;
    assert!(
        !ok && err.contains("--no-unix-socket") && err.lines().count() == 1,
        "{err}"
    );
    let (ok, err) = run(&["start", "-p", "0", "-d", other.path().to_str().unwrap(), "--cluster"])?;
    assert!(!ok && err.contains("not available yet"), "{err}");
    let (ok, err) = run(&[
        "start",
        "-p",
        "0",
        "-d",
        other.path().to_str().unwrap(),
        "--tls-cert",
        "/x",
    ])?;
    assert!(!ok && err.contains("TLS is off"), "{err}");
    Ok(())
}

#[test]
fn configuration_layers_cli_over_env_over_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("config"))?;
    let (file_port, env_port, cli_port) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.path().join("config/latzero.toml"),
        format!("port = {file_port}\nunix_send_buffer = 65536\n[limits]\nmax_frame_len = 4096\n"),
    )?;
    let start = |env: Option<u16>, cli: Option<u16>| -> Result<ServerProc> {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["start", "-d"])
            .arg(dir.path())
            .env_remove("LATZERO_PORT")
            .env_remove("LATZERO_UNIX_SEND_BUFFER")
            .env_remove("LATZERO_DATA_DIR");
        if let Some(p) = env {
            cmd.env("LATZERO_PORT", p.to_string());
        }
        if let Some(p) = cli {
            cmd.args(["--port", &p.to_string()]);
        }
        ServerProc::spawn(bin(), cmd, dir.path())
    };
    for (env, cli, want) in [
        (None, None, file_port),
        (Some(env_port), None, env_port),
        (Some(env_port), Some(cli_port), cli_port),
    ] {
        let mut s = start(env, cli)?;
        assert_eq!(s.tcp.port(), want);
        let (ok, out, _) = s.run(&["status", "--json"])?;
        assert!(ok);
        let st: Value = serde_json::from_str(&out)?;
        assert_eq!(st["limits"]["max_frame_len"], 4096, "file limits apply");
        assert_eq!(st["limits"]["unix_send_buffer"], 65536, "{st}");
        // 64 KiB is under any kernel's cap (net.core.wmem_max, at least 208 KiB by default).
        assert_eq!(st["limits"]["unix_send_buffer_granted"], 65536, "{st}");
        assert!(s.run(&["stop"])?.0);
        s.proc.wait_exit()?;
    }
    std::fs::write(dir.path().join("config/latzero.toml"), "prot = 1\n")?;
    let out = std::process::Command::new(bin())
        .args(["start", "-d"])
        .arg(dir.path())
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid config file"));
    Ok(())
}

#[test]
fn status_shows_pools_apps_and_triggers() -> Result<()> {
    let s = server();
    let _w = s.reply(&["--app", "worker", "--pool", "alpha", "foo", "bar"])?;
    let (ok, out, _) = s.run(&["status"])?;
    assert!(ok);
    assert!(
        out.contains("alpha") && out.contains("bar(worker) foo(worker)") && out.contains("connections:"),
        "{out}"
    );
    let (ok, out, _) = s.run(&["status", "--json"])?;
    assert!(ok);
    let st: Value = serde_json::from_str(&out)?;
    assert_eq!(st["pools"][0]["members"], json!(["worker"]));
    assert!(st["server"]["uptime_ms"].is_u64());
    // `--limit` lists the first by name and says what it left out, and where to find it.
    let _w2 = s.reply(&["--app", "worker2", "--pool", "beta", "baz"])?;
    let (ok, out, _) = s.run(&["status", "--limit", "1"])?;
    assert!(ok);
    assert!(out.contains("alpha") && !out.contains("beta"), "{out}");
    assert!(out.contains("… and 1 more pools (of 2): latzero pools"), "{out}");
    assert!(
        out.contains("… and 1 more connected apps (of 2): latzero apps"),
        "{out}"
    );
    let stopped = tempfile::tempdir()?;
    let out = std::process::Command::new(bin())
        .args(["status", "-p", &free_port().to_string(), "-d"])
        .arg(stopped.path())
        .output()?;
    assert!(!out.status.success());
    // One line that names the address, the cause once, and what to do.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: cannot connect to tcp://"), "{err}");
    assert!(err.contains("is the server running (`latzero start`)?"), "{err}");
    assert_eq!(err.matches("(os error").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // A data dir named without a running server is said to be so, rather than the default
    // port tried (where another server could answer, and `stop` would stop it).
    for cmd in ["status", "stop"] {
        let out = std::process::Command::new(bin())
            .args([cmd, "-d"])
            .arg(stopped.path())
            .env_remove("LATZERO_DATA_DIR")
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("no server is running on data directory"),
            "{cmd}: {err}"
        );
    }
    Ok(())
}

/// A broadcast prints one line per handler, and exits non-zero when any of them failed.
#[test]
fn a_broadcast_prints_every_handler_and_fails_when_one_did() -> Result<()> {
    let s = server();
    let _a = s.reply(&["--app", "a", "--pool", "p", "health", "--respond", "\"up\""])?;
    let _b = s.reply(&["--app", "b", "--pool", "p", "health", "--respond", "\"up\""])?;
    let (ok, out, err) = s.run(&["call", "--pool", "p", "health", "--broadcast"])?;
    assert!(ok, "{err}");
    let mut lines: Vec<Value> = out.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    lines.sort_by_key(|l| l["app_id"].to_string());
    assert_eq!(
        lines,
        [
            json!({"app_id": "a", "status": "ok", "response": "up"}),
            json!({"app_id": "b", "status": "ok", "response": "up"})
        ]
    );
    let _c = s.reply(&["--app", "c", "--pool", "p", "health", "--error", "\"down\""])?;
    let (ok, out, err) = s.run(&["call", "--pool", "p", "health", "--broadcast"])?;
    assert!(!ok, "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains(r#""app_id":"c","error""#), "{out}");
    assert!(err.contains("1 of 3 handlers did not answer with a result"), "{err}");
    Ok(())
}

#[test]
fn duplicate_app_and_takeover_across_processes() -> Result<()> {
    let s = server();
    let mut first = s.reply(&["--app", "svc", "--pool", "p", "f"])?;
    let (ok, _, err) = s.run(&["reply", "--app", "svc", "--pool", "p", "f"])?;
    assert!(!ok && err.contains("DUPLICATE_APP"), "{err}");
    let _second = s.reply(&["--app", "svc", "--pool", "p", "f", "--takeover"])?;
    let ev = first.wait_event("disconnected")?;
    assert!(ev["reason"].as_str().unwrap().contains("DUPLICATE_APP"), "{ev}");
    // The replaced client gives up instead of taking the app id back.
    assert_eq!(ev["reconnecting"], false);
    let (st, err) = first.wait_exit()?;
    assert!(!st.success() && err.contains("DUPLICATE_APP"), "{err}");
    let (ok, out, _) = s.run(&["call", "--pool", "p", "f", "--count", "3", "--expect-echo"])?;
    assert!(ok, "the new connection serves the trigger: {out}");
    Ok(())
}

#[test]
fn registrations_go_to_data_db_unless_memory_mode() -> Result<()> {
    let s = ServerProc::start(bin(), &[])?;
    let mut c = s.raw()?;
    let ack = c.handshake("stored", &["p"], &[])?;
    assert_eq!(ack["rehydrated"], false);
    assert!(s.data_dir.join("data.db").exists());
    let m = ServerProc::start(bin(), &["--memory-mode"])?;
    let mut c = m.raw()?;
    c.handshake("not-stored", &["p"], &[])?;
    assert!(!m.data_dir.join("data.db").exists(), "memory mode writes no database");
    Ok(())
}

#[test]
fn apps_pools_and_blocks_from_the_command_line() -> Result<()> {
    let s = server();
    let mut w = s.reply(&["--app", "worker", "--pool", "alpha", "echo"])?;
    let (ok, out, err) = s.run(&[
        "pools",
        "create",
        "alpha",
        "--owners",
        "ops",
        "--description",
        "the alpha pool",
        "--policies",
        r#"{"call":["api"],"emit":[]}"#,
        "--json",
    ])?;
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out)?["owners"], json!(["ops"]));
    let (ok, _, err) = s.run(&["pools", "create", "g", "--owners", "ops", "--type", "global"])?;
    assert!(!ok && err.contains("NOT_AVAILABLE"), "{err}");
    assert!(s.run(&["mem", "create", "alpha", "frame", "--size", "64"])?.0);

    let (ok, out, err) = s.run(&["pools"])?;
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with("alpha")).unwrap_or_default();
    assert!(line.contains("the alpha pool") && line.contains("worker"), "{out}");
    let (_, out, _) = s.run(&["pools", "show", "alpha", "--json"])?;
    assert_eq!(serde_json::from_str::<Value>(&out)?["blocks"][0]["block_id"], "frame");
    // Without --json, in words: who may do what, the members, the blocks.
    let (ok, out, err) = s.run(&["pools", "show", "alpha"])?;
    assert!(ok, "{err}");
    for line in [
        "pool alpha",
        "description  the alpha pool",
        "call   the owners and api",
        "emit   the owners only",
        "members      worker",
        "triggers     echo (worker)",
        "blocks       frame (binary, 64 bytes, version 0)",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
    let (_, out, _) = s.run(&["blocks", "--json"])?;
    assert_eq!(serde_json::from_str::<Value>(&out)?.as_array().map(Vec::len), Some(1));
    let (_, out, _) = s.run(&["apps"])?;
    let line = out.lines().find(|l| l.starts_with("worker")).unwrap_or_default();
    // Last seen as a UTC time, not milliseconds.
    assert!(line.contains("  true  ") && line.ends_with('Z'), "{out}");
    let (_, out, _) = s.run(&["apps", "--json"])?;
    let apps: Value = serde_json::from_str(&out)?;
    // The CLI's own generated ids are ephemeral: only the worker is remembered.
    assert_eq!(apps.as_array().map(Vec::len), Some(1), "{apps}");
    assert_eq!(
        (apps[0]["app_id"].as_str(), apps[0]["connected"].as_bool()),
        (Some("worker"), Some(true))
    );
    // A registration is removed only while its app is away.
    let (ok, _, err) = s.run(&["apps", "remove", "worker"])?;
    assert!(
        !ok && err.contains("APP_CONNECTED") && err.contains("cannot remove app 'worker'"),
        "{err}"
    );
    let (ok, _, err) = s.run(&["apps", "remove", "nobody"])?;
    assert!(!ok && err.contains("APP_NOT_FOUND"), "{err}");

    let (ok, _, err) = s.run(&["pools", "update", "alpha", "--app", "ops"])?;
    assert!(!ok && err.contains("nothing to change"), "{err}");
    let (ok, out, err) = s.run(&["pools", "update", "alpha", "--app", "ops", "--policies", "{}"])?;
    assert!(ok && out.contains("call   every member (no policy)"), "{err}{out}");
    let (ok, _, err) = s.run(&["pools", "remove", "alpha", "--app", "ops"])?;
    assert!(!ok && err.contains("POOL_IN_USE"), "{err}");
    let (ok, _, err) = s.run(&["pools", "update", "alpha", "--app", "intruder", "--description", "x"])?;
    assert!(!ok && err.contains("PERMISSION_DENIED"), "{err}");
    let (ok, out, err) = s.run(&["pools", "remove", "alpha", "--app", "ops", "--force", "--json"])?;
    assert!(ok, "{err}");
    // The worker is told it was taken out of its only pool, and stops serving.
    let left = w.wait_event("pool_left")?;
    assert_eq!(left["pool"], "alpha", "{left}");
    let (status, err) = w.wait_exit()?;
    assert!(
        !status.success() && err.contains("removed by 'ops'") && err.contains("last pool"),
        "{status}: {err}"
    );
    // What went with the pool, without the reply's envelope.
    assert_eq!(
        serde_json::from_str::<Value>(&out)?,
        json!({"pool": "alpha", "members_removed": ["worker"], "blocks_removed": 1})
    );
    let (ok, _, err) = s.run(&["pools", "create", "beta", "--owners", "ops"])?;
    assert!(ok, "{err}");
    let (ok, out, err) = s.run(&["pools", "remove", "beta", "--app", "ops"])?;
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "removed pool beta; members removed: none; memory blocks deleted: 0\n"
    );
    // A refused query says what was asked, in words rather than the wire's action names.
    let (ok, _, err) = s.run(&["pools", "show", "alpha"])?;
    assert!(
        !ok && err.contains("cannot show pool 'alpha' at") && err.contains("POOL_NOT_FOUND"),
        "{err}"
    );
    assert!(!err.contains("pool_show"), "{err}");
    Ok(())
}

/// The server's log file has a bound: past `--log-max-bytes` it is rotated to server.log.1,
/// .2, ..., and only `--log-files` rotated files are kept. The files and the data directory are
/// the owner's alone.
#[test]
fn the_log_is_rotated_and_kept_to_a_bound() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let s = ServerProc::start_in(
        bin(),
        &data,
        &["--log-level", "debug", "--log-max-bytes", "400", "--log-files", "2"],
    )?;
    for _ in 0..20 {
        assert!(s.run(&["status"])?.0);
    }
    let logs = data.join("logs");
    let mut names: Vec<String> = std::fs::read_dir(&logs)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    assert_eq!(names, ["server.log", "server.log.1", "server.log.2"]);
    for n in &names {
        let mode = std::fs::metadata(logs.join(n))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{n}");
    }
    for d in [&data, &logs] {
        assert_eq!(
            std::fs::metadata(d)?.permissions().mode() & 0o777,
            0o700,
            "{}",
            d.display()
        );
    }
    Ok(())
}

/// Where apps hold JWTs rather than the static token, the command-line tools send
/// `$LATZERO_JWT`, on connections and on admin requests alike.
#[test]
fn the_cli_sends_a_jwt_from_latzero_jwt() -> Result<()> {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, "a-shared-secret")?;
    let s = ServerProc::start(
        bin(),
        &["--require-auth", "--jwt-hs256-secret-file", secret.to_str().unwrap()],
    )?;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 600;
    let jwt = |claims: Value| {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"a-shared-secret"),
        )
        .unwrap()
    };
    let with_jwt = |claims: Value, args: &[&str]| {
        let mut c = s.cli(args);
        c.env("LATZERO_JWT", jwt(claims));
        c
    };
    let mut reply = Proc::spawn(with_jwt(
        json!({"app_id": "w", "exp": exp}),
        &["reply", "--app", "w", "--pool", "p", "echo"],
    ))?;
    reply.wait_event("ready")?;
    let c = with_jwt(
        json!({"app_id": "c", "exp": exp}),
        &["call", "--app", "c", "--pool", "p", "echo", "1"],
    )
    .output()?;
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let st = with_jwt(json!({"sub": "ops", "admin": true, "exp": exp}), &["status", "--json"]).output()?;
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    // A JWT without admin rights is refused for admin requests.
    let st = with_jwt(json!({"sub": "c", "exp": exp}), &["status"]).output()?;
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success() && err.contains("AUTH_FAILED"), "{err}");
    // A JWT that expires ends reply's connection, and its reconnect with the same JWT is
    // refused: reply says so rather than go quiet. The server allows 60 s of leeway past
    // `exp`, so this JWT is accepted for 4 to 5 s more: long enough for a loaded machine to
    // start reply and connect it (a 1 s window was not, in CI).
    let mut short = Proc::spawn(with_jwt(
        json!({"app_id": "s", "exp": exp - 600 - 55}),
        &["reply", "--app", "s", "--pool", "p", "echo"],
    ))?;
    short.wait_event("ready")?;
    let refused = short.wait_event("reconnect_refused")?;
    assert!(
        refused["reason"].as_str().unwrap_or_default().contains("AUTH_FAILED"),
        "{refused}"
    );
    Ok(())
}

#[test]
fn a_server_that_requires_auth_takes_tokens_from_the_cli() -> Result<()> {
    let out = std::process::Command::new(bin()).args(["auth", "token"]).output()?;
    assert!(out.status.success());
    let made: Value = serde_json::from_slice(&out.stdout)?;
    let (token, hash) = (made["token"].as_str().unwrap(), made["sha256"].as_str().unwrap());
    assert_eq!(token.len(), 64);
    let s = ServerProc::start(bin(), &["--require-auth", "--auth-token-sha256", hash])?;
    let with_token = |args: &[&str]| {
        let mut c = s.cli(args);
        c.env("LATZERO_TOKEN", token);
        c
    };
    let (ok, _, err) = s.run(&["status"])?;
    assert!(!ok && err.contains("AUTH_FAILED"), "{err}");
    assert!(
        err.contains("$LATZERO_TOKEN (or a JWT in $LATZERO_JWT), which is not set"),
        "{err}"
    );
    let st = with_token(&["status", "--json"]).output()?;
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let mut reply = Proc::spawn(with_token(&["reply", "--app", "w", "--pool", "p", "echo"]))?;
    reply.wait_event("ready")?;
    let (ok, _, err) = s.run(&["call", "--pool", "p", "echo", "1"])?;
    assert!(!ok && err.contains("AUTH_FAILED"), "{err}");
    assert!(
        err.contains("$LATZERO_TOKEN (or a JWT in $LATZERO_JWT), which is not set"),
        "{err}"
    );
    let c = with_token(&["call", "--pool", "p", "echo", "1"]).output()?;
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    // The token is nowhere in the server's log.
    let log = std::fs::read_to_string(s.data_dir.join("logs/server.log"))?;
    assert!(!log.is_empty() && !log.contains(token));
    Ok(())
}

#[test]
fn tls_server_prints_its_fingerprint_and_cli_processes_call_through_it() -> Result<()> {
    let s = ServerProc::start(bin(), &["--tls", "--no-unix-socket"])?;
    let info = s.info()?;
    let fp = info["tls_fingerprint"]
        .as_str()
        .expect("fingerprint in server.json")
        .to_owned();
    assert_eq!(fp.len(), 32 * 3 - 1, "{fp}");
    // Handler and caller are separate processes that find the TLS port and its fingerprint
    // through server.json.
    let _w = s.reply(&["--app", "w", "--pool", "alpha", "echo"])?;
    let (ok, out, err) = s.run(&["call", "--pool", "alpha", "echo", "--count", "20", "--expect-echo"])?;
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(out.trim())?["ok"], 20);
    let (ok, _, err) = s.run(&["status"])?;
    assert!(ok, "{err}");
    // Forced to the port without TLS: the server's TLS_REQUIRED, not a hang.
    let port = s.tcp.port().to_string();
    let (ok, _, err) = s.run(&["status", "--port", &port])?;
    assert!(!ok && err.contains("TLS_REQUIRED"), "{err}");
    let (ok, _, err) = s.run(&["status", "--port", &port, "--tls-fingerprint", &fp])?;
    assert!(ok, "{err}");
    let wrong = "00".repeat(32);
    let (ok, _, err) = s.run(&["status", "--port", &port, "--tls-fingerprint", &wrong])?;
    assert!(!ok && err.contains("pinned"), "{err}");

    // The start-up output names the fingerprint (a second server on the same certificate).
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("config"))?;
    for f in ["tls-cert.pem", "tls-key.pem"] {
        std::fs::copy(s.data_dir.join("config").join(f), dir.path().join("config").join(f))?;
    }
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["start", "--tls", "--port", "0", "--no-unix-socket", "--data-dir"])
        .arg(dir.path())
        .env("LATZERO_VOLATILE_MEMORY_DIR", dir.path());
    let mut p = Proc::spawn(cmd)?;
    let line = p.wait_line(|l| l.contains("SHA-256 fingerprint"))?;
    assert!(line.contains(&fp), "{line}");
    p.signal(15);
    let (st, _) = p.wait_exit()?;
    assert!(st.success());
    Ok(())
}

#[test]
fn keys_generate_and_rotate_an_encrypted_pool_and_no_key_reaches_the_server() -> Result<()> {
    let s = ServerProc::start(bin(), &["--log-level", "debug"])?;
    let (ok, out, err) = s.run(&["keys", "generate", "vault", "--app", "owner"])?;
    assert!(ok, "{err}");
    let gen1 = latzero_testkit::printed_keys(&out);
    assert_eq!(gen1.len(), 3, "{out}");
    assert!(
        gen1[0].starts_with("lzk1.sigil.1.") && gen1[2].starts_with("lzk1.seal.1."),
        "{out}"
    );

    // Two SDK apps use the pool with the printed keys; a reader cannot write.
    let rt = tokio::runtime::Runtime::new()?;
    let url = |app: &str| s.url(app);
    rt.block_on(async {
        use latzero_client::{ClientOptions, PoolKeys, Request};
        let keys = || PoolKeys::parse("vault", &gen1).unwrap();
        let worker = ClientOptions::new().connect(&url("worker")).await?;
        let wp = worker.encrypted_pool("vault", keys()).await?;
        wp.handle("echo", |r: Request| async move { Ok(r.data) }).await?;
        let caller = ClientOptions::new().connect(&url("caller")).await?;
        let cp = caller.encrypted_pool("vault", keys()).await?;
        assert_eq!(cp.call("echo", &json!({"k": 1})).await?, json!({"k": 1}));
        let reader = ClientOptions::new().connect(&url("reader")).await?;
        let rp = reader
            .encrypted_pool("vault", PoolKeys::parse("vault", &gen1[..2]).unwrap())
            .await?;
        assert!(rp.call("echo", &json!(1)).await.is_err());
        anyhow::Ok(())
    })?;

    let (ok, out, err) = s.run(&["keys", "rotate", "vault", "--app", "owner"])?;
    assert!(ok, "{err}");
    let gen2 = latzero_testkit::printed_keys(&out);
    assert!(gen2.iter().all(|k| k.contains(".2.")), "{out}");
    let (ok, _, err) = s.run(&["keys", "rotate", "vault", "--app", "caller"])?;
    assert!(!ok && err.contains("PERMISSION_DENIED"), "only owners rotate: {err}");
    let (ok, out, _) = s.run(&["pools", "show", "vault", "--json"])?;
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out)?["key_generations"], json!([1, 2]));

    // Neither the log nor the database holds any key material.
    let (ok, _, err) = s.run(&["stop"])?;
    assert!(ok, "{err}");
    let mut files = vec![std::fs::read(s.data_dir.join("logs/server.log"))?];
    for f in ["data.db", "data.db-wal"] {
        files.push(std::fs::read(s.data_dir.join(f)).unwrap_or_default());
    }
    for k in gen1.iter().chain(&gen2) {
        let secret = k.rsplit_once('.').unwrap().1.as_bytes();
        assert!(
            files.iter().all(|f| !f.windows(secret.len()).any(|w| w == secret)),
            "key material reached the server"
        );
    }
    Ok(())
}

/// The command-line tools in an encrypted pool: `--keys FILE` (the file `latzero keys generate`
/// wrote) joins it by proving the SigilKey; `reply` serves a trigger with opened payloads and
/// sealed answers, `call` and `emit` seal and open. Without keys the refusal says how; a reader's
/// keys cannot call; a key file others may read is warned about; --keys with --count is refused.
#[test]
fn the_cli_calls_emits_and_replies_in_an_encrypted_pool_with_a_keys_file() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let s = ServerProc::start(bin(), &[])?;
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("vault.keys");
    let keys = keys.to_str().expect("a UTF-8 path");
    let (ok, out, err) = s.run(&["keys", "generate", "vault", "--app", "owner", "--out", keys])?;
    assert!(ok && out.is_empty() && err.contains("keys written to"), "{out} {err}");
    let mode = std::fs::metadata(keys)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the keys file is its owner's only");
    // An existing file is not overwritten; a file made for a pool the server refuses is removed.
    let before = std::fs::read(keys)?;
    let (ok, _, err) = s.run(&["keys", "generate", "other", "--app", "owner", "--out", keys])?;
    assert!(
        !ok && err.contains("File exists") && std::fs::read(keys)? == before,
        "{err}"
    );
    let refused = dir.path().join("refused.keys");
    let refused = refused.to_str().expect("a UTF-8 path");
    let (ok, _, err) = s.run(&["keys", "generate", "vault", "--app", "owner", "--out", refused])?;
    assert!(!ok && err.contains("POOL_EXISTS"), "{err}");
    assert!(
        !std::path::Path::new(refused).exists(),
        "no empty keys file is left behind"
    );
    let mut worker = s.reply(&["--app", "w", "--pool", "vault", "--keys", keys, "echo"])?;

    let (ok, out, err) = s.run(&["call", "--pool", "vault", "echo", r#"{"x":[1,2]}"#, "--keys", keys])?;
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out)?,
        json!({"app_id": "w", "process": "echo", "data": {"x": [1, 2]}})
    );
    assert!(err.is_empty(), "no warning for a file only its owner reads: {err}");
    let call = worker.wait_event("call")?;
    assert_eq!(call["data"], json!({"x": [1, 2]}), "the worker saw the payload opened");
    // The payload and the result sealed and opened as JSON text: an integer past 64 bits keeps
    // its digits both ways.
    let big = r#"{"n":123456789012345678901234567890}"#;
    let (ok, out, err) = s.run(&["call", "--pool", "vault", "echo", big, "--keys", keys])?;
    assert!(
        ok && out.contains(r#""data":{"n":123456789012345678901234567890}"#),
        "{out} {err}"
    );
    worker.wait_event("call")?;
    let (ok, out, err) = s.run(&["call", "--pool", "vault", "echo", "5", "--to", "w", "--keys", keys])?;
    assert!(
        ok && serde_json::from_str::<Value>(&out)?["data"] == json!(5),
        "{out} {err}"
    );
    worker.wait_event("call")?;
    let (ok, _, err) = s.run(&["call", "--pool", "vault", "echo", "5", "--to", "nobody", "--keys", keys])?;
    assert!(!ok && err.contains("NOT_IN_POOL") && err.contains("nobody"), "{err}");
    let (ok, out, err) = s.run(&["emit", "--pool", "vault", "echo", r#""hi""#, "--keys", keys])?;
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out)?, json!({"delivered": 1}));
    assert_eq!(worker.wait_event("emit")?["data"], json!("hi"));

    // Without keys: refused by the server, and told how to give them.
    let (ok, _, err) = s.run(&["call", "--pool", "vault", "echo", "1"])?;
    assert!(
        !ok && err.contains("PERMISSION_DENIED") && err.contains("--keys FILE"),
        "{err}"
    );
    // A reader's keys (the SigilKey and the CipherShard) join but cannot seal a call.
    let reader = dir.path().join("reader.keys");
    let lines: Vec<String> = latzero_testkit::printed_keys(&std::fs::read_to_string(keys)?);
    std::fs::write(&reader, lines[..2].join("\n"))?;
    std::fs::set_permissions(&reader, std::fs::Permissions::from_mode(0o644))?;
    let reader = reader.to_str().expect("a UTF-8 path");
    let (ok, _, err) = s.run(&["call", "--pool", "vault", "echo", "1", "--keys", reader])?;
    assert!(!ok && err.contains("no OblivionSeal"), "{err}");
    assert!(err.contains("may be read by other users"), "{err}");
    let secret = lines[0].rsplit_once('.').expect("a key text").1;
    assert!(!err.contains(secret), "no key in the output: {err}");
    // Counted calls sealed: each echo opened and checked, from four calls in flight.
    let counted = [
        "call",
        "--pool",
        "vault",
        "echo",
        "--keys",
        keys,
        "--count",
        "20",
        "--concurrency",
        "4",
        "--expect-echo",
    ];
    let (ok, out, err) = s.run(&counted)?;
    let summary: Value = serde_json::from_str(&out).map_err(|e| anyhow::anyhow!("{e}: {out} {err}"))?;
    assert!(ok && summary["ok"] == 20 && summary["mismatched"] == 0, "{summary}");
    assert_eq!(summary["responders"], json!({"w": 20}));
    // A broadcast sealed: each handler's answer printed opened, as JSON text.
    let (ok, out, err) = s.run(&["call", "--pool", "vault", "echo", big, "--keys", keys, "--broadcast"])?;
    assert!(ok, "{out} {err}");
    let line: Value = serde_json::from_str(out.trim()).map_err(|e| anyhow::anyhow!("{e}: {out}"))?;
    assert_eq!(
        (&line["app_id"], &line["status"]),
        (&json!("w"), &json!("ok")),
        "{line}"
    );
    assert!(out.contains(r#""data":{"n":123456789012345678901234567890}"#), "{out}");
    let (ok, _, err) = s.run(&["reply", "--pool", "vault", "--pool", "demo", "--keys", keys, "echo"])?;
    assert!(!ok && err.contains("exactly one --pool"), "{err}");

    // Blocks: a binary block's record sealed and opened whole, a stream's records each sealed.
    let k = ["--keys", keys];
    let mem = |args: &[&str]| s.run(&[&["mem"], args, &k[..]].concat());
    let (ok, _, err) = mem(&["create", "vault", "doc", "--size", "1024"])?;
    assert!(ok, "{err}");
    let (ok, out, err) = mem(&["write", "vault", "doc", "the plan"])?;
    assert!(ok && out.contains(r#""version":1"#), "{out} {err}");
    let (ok, out, err) = mem(&["read", "vault", "doc"])?;
    assert!(ok && out == "the plan", "{out:?} {err}");
    let (ok, _, err) = mem(&["write", "vault", "doc", "x", "--offset", "3"])?;
    assert!(!ok && err.contains("read and written whole"), "{err}");
    let (ok, out, _) = s.run(&["mem", "checksum", "vault", "doc", "--keys", keys])?;
    assert!(ok, "{out}");
    let (ok, _, err) = mem(&["create", "vault", "log", "--size", "65536", "--type", "stream"])?;
    assert!(ok, "{err}");
    let (ok, out, err) = s.run_with_stdin(
        &["mem", "write", "vault", "log", "--lines", "--keys", keys],
        b"one\ntwo\n",
    )?;
    assert!(ok && out.contains(r#""index":1"#), "{out} {err}");
    let (ok, out, err) = mem(&["read", "vault", "log", "--consumer", "c"])?;
    assert!(ok && out == "one\ntwo\n", "{out:?} {err}");
    // Through the mapping the block holds only ciphertext.
    let (ok, _, err) = s.run(&["mem", "read", "vault", "doc"])?;
    assert!(!ok && err.contains("--keys FILE"), "{err}");
    Ok(())
}

/// Runs `args` with a stdout whose reader is already gone (`| head -1` after head exited);
/// returns the exit code and stderr. Fails if the command runs on past the deadline.
fn with_closed_stdout(s: &ServerProc, args: &[&str]) -> Result<(Option<i32>, String)> {
    use std::io::Read;
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let mut child = s
        .cli(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("{args:?} ran on with its stdout closed");
        }
        // Polling the child's exit: there is no exit event to wait on with a deadline.
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err)?;
    Ok((status.code(), err))
}

/// A closed stdout ends a command quietly with status 141, as SIGPIPE ends a Unix tool: no
/// panic, and a watch or a handler does not run on with nobody to read it. Keys that cannot be
/// printed are an error that says how to get a new set, since they exist nowhere else.
#[test]
fn a_closed_stdout_ends_a_command_quietly() -> Result<()> {
    let s = server();
    assert!(s.run(&["mem", "create", "p", "b", "--size", "16"])?.0);
    for args in [
        &["status"][..],
        &["pools", "--json"],
        &["mem", "watch", "p", "b"],
        &["reply", "--pool", "p", "t"],
    ] {
        let (code, err) = with_closed_stdout(&s, args)?;
        assert_eq!(code, Some(141), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let (code, err) = with_closed_stdout(&s, &["keys", "generate", "vault", "--app", "own"])?;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("could not be printed") && err.contains("latzero keys rotate vault --app own"),
        "{err}"
    );
    Ok(())
}

/// An answer longer than 16 MiB from a server that sends such (its `--max-frame-len` is larger)
/// is read when the tools find the server through its data dir, whose server.json gives the
/// limit; named by its port, they say why they cannot and how to, and read it with their own
/// `--max-frame-len` (or `$LATZERO_MAX_FRAME_LEN`). An app's connection keeps to that limit
/// too, and a call whose answer passes it says why it failed.
#[test]
fn admin_answers_are_read_up_to_the_servers_own_frame_limit() -> Result<()> {
    let s = ServerProc::start(bin(), &["--max-frame-len", "33554432"])?;
    let mut big = s.raw()?;
    big.send(&json!({"action":"handshake","app_id":"big","meta":"x".repeat(17 << 20)}))?;
    assert_eq!(big.expect()?["action"], "handshake_ack");
    let (ok, out, err) = s.run(&["status", "--json", "--limit", "0"])?;
    assert!(ok, "{err}");
    let st: Value = serde_json::from_str(&out)?;
    assert_eq!(st["apps"][0]["meta"].as_str().map(str::len), Some(17 << 20));
    let out = std::process::Command::new(bin())
        .args(["status", "--json", "-p", &s.tcp.port().to_string()])
        .env_remove("LATZERO_TOKEN")
        .env_remove("LATZERO_JWT")
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("longer than the 16777216 bytes this client reads"),
        "{err}"
    );
    assert!(
        err.contains("through its data dir (-d") && err.contains("--max-frame-len"),
        "{err}"
    );
    let port = s.tcp.port().to_string();
    let by_port = |extra: &[&str], env: Option<&str>| -> Result<std::process::Output> {
        let mut c = std::process::Command::new(bin());
        c.args(["status", "--json", "--limit", "0", "-p", &port])
            .args(extra)
            .env_remove("LATZERO_TOKEN")
            .env_remove("LATZERO_JWT")
            .env_remove("LATZERO_MAX_FRAME_LEN");
        if let Some(v) = env {
            c.env("LATZERO_MAX_FRAME_LEN", v);
        }
        Ok(c.output()?)
    };
    for out in [
        by_port(&["--max-frame-len", "33554432"], None)?,
        by_port(&[], Some("33554432"))?,
    ] {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let st: Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(st["apps"][0]["meta"].as_str().map(str::len), Some(17 << 20));
    }
    let out = by_port(&["--max-frame-len", "512"], None)?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("--max-frame-len (LATZERO_MAX_FRAME_LEN) must be 1024 to 4294967295 bytes, not 512"),
        "{err}"
    );
    // An app's connection: the echo of 100,000 bytes passes 1,024 plus the envelope's room.
    let _echo = s.reply(&["--app", "w", "--pool", "p", "echo"])?;
    let data = serde_json::to_string(&"x".repeat(100_000))?;
    let call = |extra: &[&str]| s.run(&[&["call", "--pool", "p", "echo", data.as_str()][..], extra].concat());
    let (ok, _, err) = call(&["--max-frame-len", "1024"])?;
    assert!(
        !ok && err.contains("connection to the server lost") && err.contains("exceeds the maximum of 66560 bytes"),
        "{err}"
    );
    // Without it, the server's limit: the echo (of the whole request) comes back.
    let (ok, out, err) = call(&[])?;
    assert!(ok && out.contains(&data), "{err}");
    Ok(())
}

/// `--ws-port` serves the protocol over WebSocket: the ready output names it, server.json and
/// status give its address, and a WebSocket client calls a `latzero reply` handler. A page of
/// an origin not allowed is refused; `--ws-origin` without `--ws-port` is refused at start.
#[test]
fn the_websocket_port_serves_the_protocol_to_pages_of_allowed_origins() -> Result<()> {
    use tungstenite::client::IntoClientRequest;
    let s = ServerProc::start(bin(), &["--ws-port", "0", "--ws-origin", "http://localhost:8080"])?;
    let info = s.info()?;
    let addr: std::net::SocketAddr = info["ws"].as_str().expect("server.json names the ws port").parse()?;
    assert!(
        s.proc
            .seen
            .iter()
            .any(|l| l == &format!("WebSocket on ws://{addr}; pages allowed from: http://localhost:8080")),
        "{:?}",
        s.proc.seen
    );
    let (ok, out, _) = s.run(&["status", "--json"])?;
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out)?["server"]["ws"], addr.to_string());
    let _w = s.reply(&["--app", "worker", "--pool", "demo", "double"])?;
    // tungstenite's handshake error, as it comes.
    #[allow(clippy::result_large_err)]
    let open = |origin: &str| {
        let mut req = format!("ws://{addr}/").into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        tungstenite::client(req, std::net::TcpStream::connect(addr).unwrap())
    };
    let (mut ws, _) = open("http://localhost:8080").expect("an allowed page connects");
    let mut ask = |v: Value| -> Result<Value> {
        ws.send(tungstenite::Message::text(v.to_string()))?;
        loop {
            if let tungstenite::Message::Text(t) = ws.read()? {
                return Ok(serde_json::from_str(&t)?);
            }
        }
    };
    let ack = ask(json!({"action":"handshake","id":1,"app_id":"page","pools":["demo"],"ephemeral":true}))?;
    assert_eq!(ack["action"], "handshake_ack", "{ack}");
    let r = ask(json!({"action":"trigger","id":2,"process":"double","pool":"demo","data":{"x":21}}))?;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["response"]["data"], json!({"x": 21}), "{r}");
    match open("http://evil.example") {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| "a WebSocket")),
    }
    let dir = tempfile::tempdir()?;
    let out = std::process::Command::new(bin())
        .args(["start", "-p", "0", "--ws-origin", "http://localhost:8080", "-d"])
        .arg(dir.path())
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("add --ws-port"));
    Ok(())
}

/// `latzero health`: every check passes on a working server (exit 0, a line each); a block file
/// deleted behind the server's back and a volatile directory gone each fail their check, named,
/// with a non-zero exit.
#[test]
fn health_checks_pass_and_fail_for_real() -> Result<()> {
    let s = server();
    let (ok, out, err) = s.run(&["health"])?;
    assert!(ok, "{err}");
    for check in ["store", "data_dir", "volatile_dir", "memory"] {
        assert!(
            out.lines().any(|l| l.starts_with("ok") && l.contains(check)),
            "{check}: {out}"
        );
    }

    let (ok, _, err) = s.run(&["mem", "create", "p", "kept", "--size", "64", "--persistent"])?;
    assert!(ok, "{err}");
    let (ok, _, err) = s.run(&["mem", "create", "p", "gone", "--size", "64", "--persistent"])?;
    assert!(ok, "{err}");
    let (ok, out, _) = s.run(&["health", "--json"])?;
    let h: Value = serde_json::from_str(&out)?;
    assert!(ok && h["healthy"] == true, "{h}");
    std::fs::remove_file(s.data_dir.join("memory/p/gone.blk"))?;
    let (ok, out, err) = s.run(&["health"])?;
    assert!(!ok, "a block whose file is gone is not healthy: {out}");
    let memory = out.lines().find(|l| l.contains("memory")).unwrap_or_default();
    assert!(
        memory.starts_with("FAIL") && memory.contains("1 of 2 blocks") && memory.contains("p/gone"),
        "{out}"
    );
    assert!(err.contains("not healthy: memory failed"), "{err}");

    // The test server keeps its volatile blocks in its data dir (testkit).
    let info: Value = serde_json::from_str(&s.run(&["status", "--json"])?.1)?;
    let volatile = info["memory"]["volatile_dir"]
        .as_str()
        .expect("a volatile dir")
        .to_owned();
    std::fs::remove_dir_all(&volatile)?;
    let (ok, out, err) = s.run(&["health", "--json"])?;
    let h: Value = serde_json::from_str(&out)?;
    assert!(!ok && h["healthy"] == false, "{h}");
    let failed: Vec<&str> = h["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["volatile_dir", "memory"], "{h}");
    assert!(err.contains("volatile_dir, memory failed"), "{err}");
    Ok(())
}

/// `latzero start --metrics-port 0`: the port is in server.json, and a probe's plain HTTP GET of
/// `/healthz` and `/metrics` is answered by the real binary.
#[test]
fn the_metrics_port_answers_plain_http() -> Result<()> {
    use std::io::{Read, Write};
    let s = ServerProc::start(bin(), &["--metrics-port", "0"])?;
    let info = s.info()?;
    let addr = info["metrics"]
        .as_str()
        .expect("server.json names the metrics port")
        .to_owned();
    let get = |path: &str| -> Result<String> {
        let mut c = std::net::TcpStream::connect(&addr)?;
        write!(c, "GET {path} HTTP/1.1\r\nhost: probe\r\n\r\n")?;
        let mut out = String::new();
        c.read_to_string(&mut out)?;
        Ok(out)
    };
    let health = get("/healthz")?;
    assert!(
        health.starts_with("HTTP/1.1 200 OK") && health.contains("\"healthy\":true"),
        "{health}"
    );
    let metrics = get("/metrics")?;
    assert!(
        metrics.starts_with("HTTP/1.1 200 OK") && metrics.contains("\nlatzero_connections "),
        "{metrics}"
    );
    Ok(())
}

/// A peer that keeps sending after the server closed it for a bad frame (its bytes unread, so
/// the close resets the TCP connection) still reads why, even reading only after its flood:
/// on loopback the error frame is in the peer's receive queue before the reset.
#[test]
fn a_flooding_peer_still_reads_why_it_was_closed() -> Result<()> {
    use std::io::{Read, Write};
    let s = server();
    for _ in 0..5 {
        let mut c = std::net::TcpStream::connect(s.tcp)?;
        c.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
        // A frame announced at 1 GiB (past max_frame_len), then a flood of its "bytes".
        c.write_all(&(1u32 << 30).to_be_bytes())?;
        let mut w = c.try_clone()?;
        let flood = std::thread::spawn(move || {
            let junk = vec![b'x'; 64 * 1024];
            for _ in 0..2_000 {
                if w.write_all(&junk).is_err() {
                    return;
                }
            }
        });
        // Read only once the flood is done: by then the server has long closed.
        let _ = flood.join();
        let mut got = Vec::new();
        let mut chunk = [0u8; 65536];
        let err = loop {
            match c.read(&mut chunk) {
                Ok(0) => break None,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => break Some(e),
            }
        };
        drop(c);
        assert!(got.len() > 4, "nothing read before {err:?}");
        let len = u32::from_be_bytes([got[0], got[1], got[2], got[3]]) as usize;
        let e: Value = serde_json::from_slice(&got[4..4 + len])?;
        assert_eq!(e["code"], "FRAME_TOO_LARGE", "{e}");
    }
    Ok(())
}
