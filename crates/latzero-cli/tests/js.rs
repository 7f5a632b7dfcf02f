//! End-to-end: the JavaScript client (`clients/js/latzero.mjs`) under Node against the real
//! `latzero` binary — on its WebSocket port, and on its Unix socket and TLS port by `latzero://`
//! URLs — with a `latzero reply` worker, and a server restart the client must come back from.
//! The checks are in `clients/js/test/checks.mjs`, run by `e2e.mjs`; this drives it. The
//! WebSocket run needs Node with a WebSocket (20 with `--experimental-websocket`, 22+ as is), or
//! the `ws` package named by `LATZERO_JS_WS`: `scripts/test.sh` sees to both.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use latzero_testkit::{Proc, ServerProc, free_port};

mod sealed;

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
    let s = ServerProc::start_in(bin(), dir.path(), &ws)?;
    let mut cmd = node()?;
    cmd.env("LATZERO_URL", format!("ws://127.0.0.1:{port}"));
    run_checks(s, cmd, &ws)
}

/// Under Node, `latzero://APP` finds the server as the SDK does — here the Unix socket of
/// `$LATZERO_DATA_DIR` — and the same checks run on it, no WebSocket port in the way.
#[test]
fn the_javascript_client_under_node_finds_and_uses_the_unix_socket() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = ServerProc::start_in(bin(), dir.path(), &[])?;
    assert!(s.unix.is_some(), "the server serves its Unix socket");
    let mut cmd = Command::new("node");
    cmd.env("LATZERO_URL", "latzero://{app}")
        .env("LATZERO_DATA_DIR", dir.path())
        .env_remove("LATZERO_HOST")
        .env_remove("LATZERO_PORT");
    run_checks(s, cmd, &[])
}

/// Encrypted pools across languages: a Rust SDK app and the JavaScript client under Node in one
/// pool made by `latzero keys generate`, each opening what the other sealed — calls both ways, a
/// handler's sealed error both ways, an emit, a block document and a stream's records — and the
/// JavaScript handle re-joining after a restart; on Node's crypto module, then on WebCrypto
/// (`LATZERO_JS_WEBCRYPTO=1`, what pages use). The checks on the JavaScript side are in
/// `clients/js/test/sealed.mjs` (run by `encrypted.mjs`); those on the Rust side in
/// `sealed/mod.rs`.
#[test]
fn the_javascript_client_and_the_rust_sdk_open_each_others_sealed_records() -> Result<()> {
    for webcrypto in ["0", "1"] {
        let mut cmd = Command::new("node");
        cmd.arg(repo().join("clients/js/test/encrypted.mjs"))
            .env("LATZERO_JS_WEBCRYPTO", webcrypto);
        sealed::run_script(bin(), cmd, "javascript")
            .map_err(|e| e.context(format!("with LATZERO_JS_WEBCRYPTO={webcrypto}")))?;
    }
    Ok(())
}

/// Runs the shared checks in `node` (given its environment) against `s`, with a `latzero reply`
/// worker, restarting the server with `extra` when they ask.
fn run_checks(mut s: ServerProc, mut node: Command, extra: &[&str]) -> Result<()> {
    let _worker = s.reply(&["--app", "worker", "--pool", "demo", "echo"])?;
    node.arg(repo().join("clients/js/test/e2e.mjs"));
    let mut js = Proc::spawn(node)?;
    let mut churn = None;
    js.follow_script(|line| {
        if line == "restart" {
            // Stopped and started again on the same ports: the client must come back by itself.
            s.restart(extra)?;
        } else if let Some(path) = line.strip_prefix("churn ") {
            churn = Some(Churn::start(Path::new(path))?);
        } else if line == "churned" {
            let writes = churn.take().context("`churned` before `churn`")?.stop()?;
            ensure!(writes > 0, "no write in place was made");
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

/// Writes in place into a block file through the Rust memory crate's mapping (as a Rust app
/// attached for writing does), each write filling the block with the byte its new version
/// % 251, with a pause between writes so that readers meet some and miss others, until
/// stopped (or dropped: a script that fails midway leaves no writer behind).
struct Churn {
    stop: Arc<AtomicBool>,
    writer: Option<std::thread::JoinHandle<Result<u64>>>,
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Churn {
    fn start(path: &Path) -> Result<Churn> {
        let block = latzero_memory::Block::open(path, true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut writes = 0;
                while !stop.load(Ordering::Relaxed) {
                    let byte = ((block.version() + 1) % 251) as u8;
                    match block.write_with(0, block.size(), |d| d.fill(byte)) {
                        Ok(_) => writes += 1,
                        // The script goes on to delete the block once it says `churned`, which
                        // may come before this sees the stop.
                        Err(latzero_memory::MemError::Deleted) => break,
                        Err(e) => return Err(e.into()),
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
                Ok(writes)
            }
        });
        Ok(Churn {
            stop,
            writer: Some(writer),
        })
    }

    /// Stops the writes; how many were made.
    fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let writer = self.writer.take().context("stopped twice")?;
        writer.join().map_err(|_| anyhow!("the writer panicked"))?
    }
}

/// Over TCP: a `latzeros://` URL pins the server's certificate by the fingerprint server.json
/// gives; a wrong pin, and a plain connection to the TLS port, fail with clear codes; and a port
/// that accepts and never answers (not a LatZero server) fails the connect in the call timeout
/// rather than hanging.
#[test]
fn the_javascript_client_under_node_pins_a_tls_servers_certificate() -> Result<()> {
    let s = ServerProc::start(bin(), &["--tls"])?;
    let other = ServerProc::start(bin(), &["--tls"])?;
    let _worker = s.reply(&["--app", "worker", "--pool", "demo", "echo"])?;
    let info = s.info()?;
    let fingerprint = info["tls_fingerprint"].as_str().expect("a fingerprint").to_owned();
    let cert = |s: &ServerProc| s.data_dir.join("config").join(latzero_server::GENERATED_CERT);
    let script = r#"
const { connect } = await import(process.env.LATZERO_JS);
const { PORT: port, PIN: pin } = process.env;
const lz = await connect(`latzeros://js-tls@127.0.0.1:${port}?fingerprint=${pin}&pools=demo`, { ephemeral: true });
const r = await lz.call("demo", "echo", { x: 1 });
if (r.data?.x !== 1) throw new Error(JSON.stringify(r));
console.log("ok call over TLS");
lz.close();
// Verified by a CA instead of a pin: the server's own certificate as the trust anchor (it names
// 127.0.0.1); another server's certificate is not.
const byCa = await connect(`latzeros://js-ca@127.0.0.1:${port}?ca=${encodeURIComponent(process.env.CA)}&pools=demo`, { ephemeral: true });
if ((await byCa.call("demo", "echo", 2)).data !== 2) throw new Error("echo over a CA-verified connection");
console.log("ok a CA-verified connection");
byCa.close();
const wrong = "00".repeat(32);
for (const [url, code] of [
  [`latzeros://js-tls@127.0.0.1:${port}?fingerprint=${wrong}`, "TLS"],
  [`latzero://js-tls@127.0.0.1:${port}`, "TLS_REQUIRED"],
  [`latzeros://js-tls@127.0.0.1:${port}?ca=${encodeURIComponent(process.env.OTHER_CA)}`, "TLS"],
]) {
  try {
    await connect(url, { reconnect: false });
    throw new Error(`${url} connected`);
  } catch (e) {
    if (e.code !== code) throw e;
    // A pin that does not match says which fingerprint came, with no hint to turn TLS on.
    if (url.includes("fingerprint") && !(e.message.includes("not the pinned") && !e.message.includes("--tls"))) throw e;
    console.log(`ok refused: ${e.code}`);
  }
}
const { createServer } = await import("node:net");
const silent = createServer(() => {});
await new Promise((r) => silent.listen(0, "127.0.0.1", r));
try {
  await connect(`latzero://js-x@127.0.0.1:${silent.address().port}`, { reconnect: false, timeoutMs: 200 });
  throw new Error("a silent port connected");
} catch (e) {
  if (e.code !== "CONNECT" || !e.message.includes("no answer to the handshake")) throw e;
  console.log("ok a silent port times out");
}
// Something else on the port, that speaks first: its bytes read as a huge frame, refused.
const chatty = createServer((c) => c.write("HTTP/1.1 400 Bad Request\r\n\r\n"));
await new Promise((r) => chatty.listen(0, "127.0.0.1", r));
try {
  await connect(`latzero://js-x@127.0.0.1:${chatty.address().port}`, { reconnect: false });
  throw new Error("a chatty port connected");
} catch (e) {
  if (e.code !== "FRAME_TOO_LARGE" || !e.message.includes("is it a LatZero server?")) throw e;
  console.log("ok another protocol is refused");
}
console.log("done");
process.exit(0);
"#;
    let mut cmd = node_script(script)?;
    cmd.env("PORT", s.tcp.port().to_string())
        .env("PIN", &fingerprint)
        .env("CA", cert(&s))
        .env("OTHER_CA", cert(&other));
    let mut js = Proc::spawn(cmd)?;
    js.follow_script(|line| anyhow::bail!("unexpected line: {line}"))?;
    assert_eq!(
        js.seen,
        [
            "ok call over TLS",
            "ok a CA-verified connection",
            "ok refused: TLS",
            "ok refused: TLS_REQUIRED",
            "ok refused: TLS",
            "ok a silent port times out",
            "ok another protocol is refused",
            "done"
        ]
    );
    Ok(())
}

/// Fire-and-forget emits under Node wait for a connection that takes nothing: a peer that
/// answers the handshake and then stops reading holds the sender's loop at `writeBufferLimit`
/// (plus one batch) instead of letting its frames pile up in memory, and the loop finishes
/// once the peer reads again; with a limit below the socket's own high-water mark, the sender
/// does not wait for a drain that will not come. No server needed: the peer is a socket of the
/// script's own.
#[test]
fn the_javascript_client_waits_for_a_connection_that_does_not_read() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let script = r#"
const { connect } = await import(process.env.LATZERO_JS);
const { createServer } = await import("node:net");
const path = `${process.env.DIR}/peer.sock`;
let peer;
let taken = 0;
const server = createServer((c) => {
  const first = peer === undefined;
  if (first) peer = c;
  c.once("data", () => {
    const ack = Buffer.from(JSON.stringify({ action: "handshake_ack", in_reply_to: 0, pools: ["demo"], triggers: [] }));
    const len = Buffer.alloc(4);
    len.writeUInt32BE(ack.length);
    c.write(Buffer.concat([len, ack]));
    if (first) c.pause(); // and read nothing more until told
  });
});
await new Promise((r) => server.listen(path, r));
const limit = 256 * 1024;
const lz = await connect(`latzero://js-bp?socket=${encodeURIComponent(path)}&pools=demo`, { reconnect: false, writeBufferLimit: limit });
const pad = "x".repeat(1000);
const total = 64000; // ~64 MB of frames: more than the socket's buffers hold
let sent = 0;
let most = 0;
const loop = (async () => {
  for (; sent < total; sent++) {
    await lz.emit("demo", "ev", pad, { confirm: false });
    most = Math.max(most, lz._ws.bufferedAmount);
  }
})();
await new Promise((r) => setTimeout(r, 500));
if (sent >= total) throw new Error("the loop ran to its end against a peer that reads nothing");
// The limit, one batch written at once past it, and the frame that crossed it.
if (most > limit + 256 * 1024 + 2048) throw new Error(`${most} bytes held unsent, past the limit`);
console.log(`ok held at ${sent} of ${total} emits`);
peer.on("data", (d) => (taken += d.length));
peer.resume();
await loop;
lz.close();
await new Promise((r) => peer.on("end", r));
if (taken < total * 1000) throw new Error(`the peer got ${taken} bytes`);
console.log("ok all sent once the peer reads");
const tiny = await connect(`latzero://js-bp2?socket=${encodeURIComponent(path)}&pools=demo`, { reconnect: false, writeBufferLimit: 1 });
const quick = (async () => {
  for (let i = 0; i < 1000; i++) await tiny.emit("demo", "ev", pad, { confirm: false });
})();
await Promise.race([quick, new Promise((_, no) => setTimeout(() => no(new Error("stuck under a limit below the high-water mark")), 5000))]);
tiny.close();
console.log("ok a limit below the socket's high-water mark");
console.log("done");
process.exit(0);
"#;
    let mut cmd = node_script(script)?;
    cmd.env("DIR", dir.path());
    let mut js = Proc::spawn(cmd)?;
    js.follow_script(|line| anyhow::bail!("unexpected line: {line}"))?;
    assert_eq!(js.seen.len(), 4, "{:?}", js.seen);
    assert!(js.seen[0].starts_with("ok held at "), "{:?}", js.seen);
    assert_eq!(
        js.seen[1..],
        [
            "ok all sent once the peer reads",
            "ok a limit below the socket's high-water mark",
            "done"
        ]
    );
    Ok(())
}

/// Node running `script` as an ES module, with the client's module URL in `LATZERO_JS`.
fn node_script(script: &str) -> Result<Command> {
    let mut cmd = Command::new("node");
    cmd.args(["--input-type=module", "-e", script]).env(
        "LATZERO_JS",
        url_of(&repo().join("clients/js/latzero.mjs").canonicalize()?),
    );
    Ok(cmd)
}

/// A file's `file://` URL, for an ES module import.
fn url_of(path: &Path) -> String {
    format!("file://{}", path.display())
}
