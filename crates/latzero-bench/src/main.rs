//! `latzero-bench`: RPC round trip and throughput of the real server, pinned and unpinned.
//!
//! It starts the `latzero` binary (built next to this one) as its own process in a temp data
//! dir, connects an echo handler and a caller (two SDK clients, so the in-process short-circuit
//! does not apply), and measures over TCP and over the Unix socket:
//! - sequential calls: p50 / p99 / p99.9 round trip;
//! - pipelined calls: throughput with N calls in flight from one caller.
//!
//! With `--placement both` (the default) it runs itself twice — under `taskset -c 0` (server,
//! handler and caller on one vCPU) and unpinned — and prints one table; `--write FILE` also
//! writes it as Markdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use latzero_client::{Client, Request};
use latzero_testkit::ServerProc;
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(about = "LatZero RPC benchmark: sequential latency and pipelined throughput, TCP and Unix socket")]
struct Args {
    /// pinned (taskset -c 0), unpinned, or both (runs itself twice)
    #[arg(long, default_value = "both")]
    placement: String,
    /// Sequential calls measured
    #[arg(long, default_value_t = 20_000)]
    seq: usize,
    /// Pipelined calls measured
    #[arg(long, default_value_t = 200_000)]
    pipelined: usize,
    /// Calls in flight for the pipelined run
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Payload size in bytes (a JSON string of that length)
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Warm-up calls before each measurement
    #[arg(long, default_value_t = 2_000)]
    warmup: usize,
    /// The latzero binary [default: next to this executable]
    #[arg(long)]
    server: Option<PathBuf>,
    /// Print the result as JSON (used by --placement both)
    #[arg(long)]
    json: bool,
    /// Also write the Markdown table to this file
    #[arg(long)]
    write: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Row {
    placement: String,
    transport: String,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    seq_calls_per_sec: f64,
    pipelined_calls_per_sec: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.placement.as_str() {
        "both" => both(&args),
        "pinned" | "unpinned" => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let rows = rt.block_on(measure(&args))?;
            if args.json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                print!("{}", table(&rows, &args));
            }
            Ok(())
        }
        other => bail!("--placement must be pinned, unpinned or both, not {other}"),
    }
}

fn both(args: &Args) -> Result<()> {
    let me = std::env::current_exe()?;
    let mut rows: Vec<Row> = vec![];
    for placement in ["pinned", "unpinned"] {
        let mut cmd = if placement == "pinned" {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", "0"]).arg(&me);
            c
        } else {
            std::process::Command::new(&me)
        };
        cmd.args(["--placement", placement, "--json"])
            .args([
                "--seq",
                &args.seq.to_string(),
                "--pipelined",
                &args.pipelined.to_string(),
            ])
            .args([
                "--inflight",
                &args.inflight.to_string(),
                "--payload",
                &args.payload.to_string(),
            ])
            .args(["--warmup", &args.warmup.to_string()]);
        if let Some(s) = &args.server {
            cmd.arg("--server").arg(s);
        }
        eprintln!("running {placement} ...");
        let out = cmd
            .output()
            .with_context(|| format!("running {cmd:?} (is taskset installed? it is in util-linux)"))?;
        if !out.status.success() {
            bail!("{placement} run failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        rows.extend(serde_json::from_slice::<Vec<Row>>(&out.stdout)?);
    }
    let text = table(&rows, args);
    print!("{text}");
    if let Some(path) = &args.write {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn table(rows: &[Row], args: &Args) -> String {
    let mut s = format!(
        "| placement | transport | seq p50 µs | seq p99 µs | seq p99.9 µs | seq calls/s | pipelined calls/s ({} in flight) |\n|---|---|---:|---:|---:|---:|---:|\n",
        args.inflight
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} |\n",
            r.placement, r.transport, r.p50_us, r.p99_us, r.p999_us, r.seq_calls_per_sec, r.pipelined_calls_per_sec
        ));
    }
    s
}

fn server_bin(args: &Args) -> Result<PathBuf> {
    let p = match &args.server {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("latzero"),
    };
    if !p.exists() {
        bail!(
            "latzero binary not found at {}; build it with `cargo build --release -p latzero-cli` or pass --server",
            p.display()
        );
    }
    Ok(p)
}

async fn measure(args: &Args) -> Result<Vec<Row>> {
    let server = ServerProc::start(&server_bin(args)?, &["--log-level", "warn"])?;
    let unix = server.unix.clone().context("server has no unix socket")?;
    let payload = serde_json::Value::String("x".repeat(args.payload.saturating_sub(2)));
    let mut rows = vec![];
    for (transport, base) in [
        ("tcp", format!("@{}", server.tcp)),
        ("unix", format!("?socket={}", unix.display())),
    ] {
        let sep = if base.starts_with('?') { '&' } else { '?' };
        let handler = Client::connect(&format!("latzero://bench-handler-{transport}{base}{sep}pools=bench")).await?;
        handler.handle("echo", |r: Request| async move { Ok(r.data) }).await?;
        let caller =
            Arc::new(Client::connect(&format!("latzero://bench-caller-{transport}{base}{sep}pools=bench")).await?);

        for _ in 0..args.warmup {
            caller.call("bench", "echo", &payload).await?;
        }
        let mut lat = Vec::with_capacity(args.seq);
        let t0 = Instant::now();
        for _ in 0..args.seq {
            let t = Instant::now();
            caller.call("bench", "echo", &payload).await?;
            lat.push(t.elapsed());
        }
        let seq_rate = args.seq as f64 / t0.elapsed().as_secs_f64();
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;

        let per_task = args.pipelined / args.inflight.max(1);
        let run = |n: usize| {
            let tasks: Vec<_> = (0..args.inflight.max(1))
                .map(|_| {
                    let (c, p) = (caller.clone(), payload.clone());
                    tokio::spawn(async move {
                        for _ in 0..n {
                            c.call("bench", "echo", &p).await?;
                        }
                        Ok::<_, latzero_client::ClientError>(())
                    })
                })
                .collect();
            async move {
                for t in tasks {
                    t.await??;
                }
                Ok::<_, anyhow::Error>(())
            }
        };
        run((args.warmup / args.inflight.max(1)).max(1)).await?;
        let t0 = Instant::now();
        run(per_task).await?;
        let pipelined_rate = (per_task * args.inflight.max(1)) as f64 / t0.elapsed().as_secs_f64();

        rows.push(Row {
            placement: args.placement.clone(),
            transport: transport.into(),
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            p999_us: pct(0.999),
            seq_calls_per_sec: seq_rate,
            pipelined_calls_per_sec: pipelined_rate,
        });
        caller.close();
        handler.close();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(rows)
}
