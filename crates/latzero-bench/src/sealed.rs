//! What sealing costs: sequential calls of a small JSON payload (`{"x":1}`) through the server's
//! Unix socket, plain and into an encrypted pool, from each client that seals — the Rust SDK, the
//! Python client (`cryptography`) and the JavaScript client under Node (WebCrypto) — with the
//! caller and the handler in one process of that language, each on a connection of its own. A
//! sealed call seals twice (the payload and the answer) and verifies three times (the server and
//! the handler the payload, the caller the answer); there is no peer to race here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use latzero_client::{ClientOptions, HandlerError, PoolKeys, Request};
use latzero_testkit::ServerProc;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Calls timed per client and kind, after `WARMUP`.
const CALLS: usize = 2_000;
const WARMUP: usize = 200;

/// Mean µs per sequential call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub client: String,
    pub plain: f64,
    pub sealed: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SealedFigures {
    pub rows: Vec<Row>,
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients")
}

/// The Python client's calls: prints `plain US` and `sealed US`.
const PYTHON: &str = r#"
import asyncio, os, sys, time
sys.path.insert(0, os.environ["LATZERO_PY"])
import latzero
S, KEYS, N, W = os.environ["SOCKET"], os.environ["KEYS"].split(), int(os.environ["N"]), int(os.environ["W"])
async def main():
    h = await latzero.connect("py-h", socket=S, pools=["plain"])
    await (await h.encrypted_pool("vault", KEYS)).handle("py_sealed", lambda r: r.data)
    await h.handle("py_plain", lambda r: r.data)
    c = await latzero.connect("py-c", socket=S, pools=["plain"])
    v = await c.encrypted_pool("vault", KEYS)
    for name, f in (("plain", lambda: c.call("plain", "py_plain", {"x": 1})), ("sealed", lambda: v.call("py_sealed", {"x": 1}))):
        for _ in range(W): await f()
        t = time.perf_counter()
        for _ in range(N): await f()
        print(name, (time.perf_counter() - t) / N * 1e6, flush=True)
asyncio.run(main())
"#;

/// The JavaScript client's calls under Node: prints `plain US` and `sealed US`.
const NODE: &str = r#"
const { connect } = await import(process.env.LATZERO_JS);
const { SOCKET, KEYS } = process.env;
const [N, W] = [Number(process.env.N), Number(process.env.W)];
const h = await connect(`latzero://js-h?socket=${SOCKET}&pools=plain`);
await (await h.encryptedPool("vault", KEYS.split(" "))).handle("js_sealed", ({ data }) => data);
await h.handle("js_plain", ({ data }) => data);
const c = await connect(`latzero://js-c?socket=${SOCKET}&pools=plain`);
const v = await c.encryptedPool("vault", KEYS.split(" "));
for (const [name, f] of [["plain", () => c.call("plain", "js_plain", { x: 1 })], ["sealed", () => v.call("js_sealed", { x: 1 })]]) {
  for (let i = 0; i < W; i++) await f();
  const t = performance.now();
  for (let i = 0; i < N; i++) await f();
  console.log(name, ((performance.now() - t) / N) * 1000);
}
process.exit(0);
"#;

/// Runs one of the scripts above; its two figures.
fn scripted(client: &str, mut cmd: Command, socket: &Path, keys: &[String]) -> Result<Row> {
    cmd.env("SOCKET", socket)
        .env("KEYS", keys.join(" "))
        .env("N", CALLS.to_string())
        .env("W", WARMUP.to_string())
        .env("LATZERO_PY", clients_dir().join("python"))
        .env("LATZERO_JS", clients_dir().join("js/latzero.mjs"));
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("the {client} run failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let figure = |kind: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(kind)?.trim().parse().ok())
            .with_context(|| format!("no {kind} figure from the {client} run: {text}"))
    };
    Ok(Row {
        client: client.to_owned(),
        plain: figure("plain ")?,
        sealed: figure("sealed ")?,
    })
}

async fn rust(socket: &Path, keys: &[String]) -> Result<Row> {
    let url = |app: &str| format!("latzero://{app}?socket={}&pools=plain", socket.display());
    let h = ClientOptions::new().connect(&url("rs-h")).await?;
    let hp = h.encrypted_pool("vault", PoolKeys::parse("vault", keys)?).await?;
    hp.handle("rs_sealed", |r: Request| async move { Ok(r.data) }).await?;
    h.handle("rs_plain", |r: Request| async move { Ok::<_, HandlerError>(r.data) })
        .await?;
    let c = ClientOptions::new().connect(&url("rs-c")).await?;
    let v = c.encrypted_pool("vault", PoolKeys::parse("vault", keys)?).await?;
    let x = json!({"x": 1});
    let mut row = Row {
        client: "Rust SDK".into(),
        plain: 0.0,
        sealed: 0.0,
    };
    for sealed in [false, true] {
        let mut t = Instant::now();
        for i in 0..WARMUP + CALLS {
            if i == WARMUP {
                t = Instant::now();
            }
            if sealed {
                v.call("rs_sealed", &x).await?;
            } else {
                c.call("plain", "rs_plain", &x).await?;
            }
        }
        let us = t.elapsed().as_secs_f64() / CALLS as f64 * 1e6;
        *(if sealed { &mut row.sealed } else { &mut row.plain }) = us;
    }
    Ok(row)
}

pub async fn run(bin: &Path) -> Result<SealedFigures> {
    let server = ServerProc::start(bin, &["--log-level", "warn"])?;
    let (ok, out, err) = server.run(&["keys", "generate", "vault", "--app", "owner"])?;
    if !ok {
        bail!("latzero keys generate failed: {err}");
    }
    let keys = latzero_testkit::printed_keys(&out);
    let socket = server.unix.clone().context("the server serves no Unix socket")?;
    let mut python = Command::new("python3");
    python.args(["-c", PYTHON]);
    let mut node = Command::new("node");
    node.args(["--input-type=module", "-e", NODE]);
    Ok(SealedFigures {
        rows: vec![
            rust(&socket, &keys).await?,
            scripted("Python client", python, &socket, &keys)?,
            scripted("JavaScript client (Node)", node, &socket, &keys)?,
        ],
    })
}

pub fn table(placement: &str, f: &SealedFigures) -> String {
    let mut t = format!(
        "**{placement}**: mean µs per sequential call, caller and handler in one process, {CALLS} calls after {WARMUP}\n\n\
         | client | plain | sealed | sealed ÷ plain |\n|---|---:|---:|---:|\n"
    );
    for r in &f.rows {
        t.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} |\n",
            r.client,
            r.plain,
            r.sealed,
            r.sealed / r.plain
        ));
    }
    t
}
