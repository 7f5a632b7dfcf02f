//! `latzero-bench`: LatZero against its peers, side by side, in one run.
//!
//! Peers, each started here on 127.0.0.1 and stopped by PID: `nats-server` (async-nats
//! request-reply and publish/subscribe), a minimal frame relay (the floor any broker process can
//! reach; `relay.rs`), and the real `latzero` binary over TCP, over its Unix socket, over TLS,
//! and with the caller on its WebSocket port as a browser page would be (`ws.rs`; sequential and
//! pipelined calls only).
//!
//! Workloads: sequential RPC p50/p99/p99.9 with 64 B and 4 KiB payloads; pipelined calls/s with
//! 64 in flight from one caller; 10 callers × 2 handlers calls/s; emit (publish) fan-out to 4
//! receivers in msgs/s. Placements: everything under `taskset -c 0`, and unpinned; the bench
//! re-runs itself under each and prints one table per placement with ratios, then runs LatZero
//! unpinned once more with its clients on a one-worker runtime (`--client-workers` sets every
//! peer's instead). `--write FILE` replaces the generated section of FILE (between the race
//! markers). Subcommands measure memory blocks (`blocks`), the server's memory (`memory`) and
//! what sealing costs in encrypted pools (`sealed`).

mod blocks;
mod latzero;
mod memory;
mod nats;
mod relay;
mod sealed;
mod stats;
mod ws;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::stats::{CALLERS, Figures, HANDLERS, RECEIVERS, Sizes};

#[derive(Debug, Parser)]
#[command(about = "LatZero vs NATS vs a raw relay floor: RPC latency, throughput and fan-out, pinned and unpinned")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// pinned (taskset -c 0), unpinned, or both (runs itself once per placement)
    #[arg(long, default_value = "both")]
    placement: String,
    /// Sequential calls per payload size
    #[arg(long, default_value_t = 20_000)]
    seq: usize,
    /// Pipelined calls
    #[arg(long, default_value_t = 200_000)]
    pipelined: usize,
    /// Calls in flight for the pipelined run
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Calls for the 10 callers × 2 handlers run
    #[arg(long, default_value_t = 100_000)]
    multi: usize,
    /// Messages for the fan-out run
    #[arg(long, default_value_t = 200_000)]
    fanout: usize,
    /// Warm-up calls before each sequential measurement
    #[arg(long, default_value_t = 2_000)]
    warmup: usize,
    /// Rounds, run in turn across the peers: each peer's rates (pipelined, 10×2, fan-out) are
    /// the median of its rounds (each round listed below the table), and each round measures
    /// its share of `--seq` (after `--warmup`), the percentiles taken from all of them
    /// [default: 5]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=100))]
    rounds: Option<u16>,
    /// The latzero binary [default: next to this executable]
    #[arg(long, global = true)]
    server: Option<PathBuf>,
    /// Print the figures as JSON (used between placements)
    #[arg(long)]
    json: bool,
    /// Replace the generated section of this Markdown file with the result
    #[arg(long, global = true)]
    write: Option<PathBuf>,
    /// LatZero's spin window, µs, for the server (`--spin-us`) and its clients
    /// (`ClientOptions::spin`); 0 turns spinning off [default: their defaults]
    #[arg(long)]
    spin_us: Option<u64>,
    /// The LatZero server's worker threads (`latzero start --workers`) [default: its default,
    /// half the CPUs]
    #[arg(long)]
    server_workers: Option<usize>,
    /// The LatZero server's send buffer for its Unix sockets, bytes (`latzero start
    /// --unix-send-buffer`); 0 keeps the kernel's default [default: the server's, 4 MiB]
    #[arg(long)]
    unix_send_buffer: Option<usize>,
    /// Worker threads of the tokio runtime that runs the peers' clients [default: tokio's, one
    /// per CPU]. With the default, the race adds an unpinned table of LatZero with its clients
    /// on one worker, as README advises for SDK-heavy processes
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    client_workers: Option<u16>,
    /// Peers to run, comma-separated: relay, nats, tcp, unix, tls, ws (the callers and the
    /// emitter over the WebSocket port, as pages; the handlers and receivers on the Unix socket)
    #[arg(long, default_value = "relay,nats,tcp,unix,tls,ws", value_delimiter = ',')]
    peers: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the relay floor process (used by the bench itself)
    #[command(hide = true)]
    Relay,
    /// Memory blocks: mapped access vs memcpy, through the server vs Redis GET/SET,
    /// write-to-watcher latency vs Redis pub/sub (runs redis-server itself)
    Blocks,
    /// What sealing costs: sequential calls plain and into an encrypted pool, from the Rust
    /// SDK, the Python client and the JavaScript client under Node (needs python3 with the
    /// cryptography package, and node)
    Sealed,
    /// Server memory: RSS with many idle clients, and over a long run of calls
    Memory {
        /// Idle clients to connect
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Calls to run while sampling RSS
        #[arg(long, default_value_t = 10_000_000)]
        calls: u64,
        /// Idle WebSocket pages to connect to a server of their own, after the runs above
        /// (0: none)
        #[arg(long, default_value_t = 2_000)]
        ws_pages: usize,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.cmd.is_some() {
        let race_only = [
            ("--spin-us", args.spin_us.is_some()),
            ("--server-workers", args.server_workers.is_some()),
            ("--unix-send-buffer", args.unix_send_buffer.is_some()),
            ("--client-workers", args.client_workers.is_some()),
            ("--rounds", args.rounds.is_some()),
        ];
        if let Some((flag, _)) = race_only.iter().find(|(_, set)| *set) {
            bail!("{flag} applies to the race (latzero-bench without a subcommand) only");
        }
    }
    match args.cmd {
        Some(Cmd::Relay) => return relay::serve(),
        Some(Cmd::Memory {
            clients,
            calls,
            ws_pages,
        }) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let f = rt.block_on(memory::run(&server_bin(&args)?, clients, calls, ws_pages))?;
            let text = format!("{}.\n\n{}", run_line(), memory::table(&f));
            print!("{text}");
            if let Some(path) = &args.write {
                write_section(path, "memory", &text)?;
                eprintln!("wrote {}", path.display());
            }
            return Ok(());
        }
        Some(Cmd::Blocks) => {
            let version = blocks::RedisServer::version;
            return placed(
                &args,
                "blocks",
                |bin| async move { blocks::run(&bin).await },
                blocks::table,
                |t| format!("{t}; {}", version()),
            );
        }
        Some(Cmd::Sealed) => {
            return placed(
                &args,
                "sealed",
                |bin| async move { sealed::run(&bin).await },
                sealed::table,
                |t| format!("{t}; {}; {}", tool_version("python3"), tool_version("node")),
            );
        }
        None => {}
    }
    let sizes = sizes(&args);
    match args.placement.as_str() {
        "both" => both(&args),
        p @ ("pinned" | "unpinned") => {
            if p == "pinned" && !on_vcpu0_only() {
                return rerun_pinned();
            }
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = args.client_workers {
                rt.worker_threads(n.into());
            }
            let rt = rt.enable_all().build()?;
            let figures = rt.block_on(measure(&args, &sizes))?;
            if args.json {
                println!("{}", serde_json::to_string(&figures)?);
            } else {
                print!("{}{}", table(p, &figures), rounds_table(&figures));
            }
            Ok(())
        }
        other => bail!("--placement must be pinned, unpinned or both, not {other}"),
    }
}

fn sizes(args: &Args) -> Sizes {
    Sizes {
        seq: args.seq,
        pipelined: args.pipelined,
        inflight: args.inflight.max(1),
        multi: args.multi,
        fanout: args.fanout,
        warmup: args.warmup,
        rounds: rounds(args),
        spin_us: args.spin_us,
        server_workers: args.server_workers,
        unix_send_buffer: args.unix_send_buffer,
    }
}

/// Rounds of the rates when `--rounds` is not given: enough for a median that one slow spell
/// of the machine does not move.
const DEFAULT_ROUNDS: u16 = 5;

fn rounds(args: &Args) -> usize {
    args.rounds.unwrap_or(DEFAULT_ROUNDS).into()
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

/// Every peer's figures, over `sizes.rounds` rounds run in turn across the peers, so that a
/// slow spell of the machine falls on one round of several peers rather than on all of one
/// peer's figures (see [`stats::combine`]).
async fn measure(args: &Args, sizes: &Sizes) -> Result<Vec<Figures>> {
    let bin = server_bin(args)?;
    // Every name is checked first: a typo fails at once, not after the peers before it ran.
    let peers = args.peers.iter().map(|p| Peer::parse(p)).collect::<Result<Vec<_>>>()?;
    let rounds = sizes.rounds.max(1);
    let mut by_peer = vec![Vec::new(); peers.len()];
    for round in 0..rounds {
        // Each round warms up and measures its share of the sequential calls.
        let s = Sizes {
            seq: stats::seq_share(sizes.seq, round, rounds),
            ..*sizes
        };
        for ((name, peer), got) in args.peers.iter().zip(&peers).zip(&mut by_peer) {
            eprintln!("  {name} (round {} of {rounds})", round + 1);
            got.push(match peer {
                Peer::Relay => relay::run(&s).await?,
                Peer::Nats => nats::run(&s).await?,
                Peer::LatZero(t) => latzero::run(&bin, &s, *t).await?,
            });
        }
    }
    Ok(by_peer.into_iter().map(stats::combine).collect())
}

/// A peer `--peers` names.
enum Peer {
    Relay,
    Nats,
    LatZero(latzero::Transport),
}

impl Peer {
    fn parse(name: &str) -> Result<Peer> {
        Ok(match name {
            "relay" => Peer::Relay,
            "nats" => Peer::Nats,
            "tcp" => Peer::LatZero(latzero::Transport::Tcp),
            "unix" => Peer::LatZero(latzero::Transport::Unix),
            "tls" => Peer::LatZero(latzero::Transport::Tls),
            "ws" => Peer::LatZero(latzero::Transport::Ws),
            other => bail!("unknown peer '{other}'; known: relay, nats, tcp, unix, tls, ws"),
        })
    }
}

fn both(args: &Args) -> Result<()> {
    let mut out = String::new();
    let sizes = sizes(args);
    let numbers = [
        ("--seq", args.seq),
        ("--pipelined", args.pipelined),
        ("--inflight", args.inflight),
        ("--multi", args.multi),
        ("--fanout", args.fanout),
        ("--warmup", args.warmup),
        ("--rounds", rounds(args)),
    ]
    .map(|(flag, n)| [flag.to_owned(), n.to_string()]);
    let mut common: Vec<String> = numbers.into_iter().flatten().collect();
    if let Some(us) = args.spin_us {
        common.extend(["--spin-us".to_owned(), us.to_string()]);
    }
    if let Some(n) = args.server_workers {
        common.extend(["--server-workers".to_owned(), n.to_string()]);
    }
    if let Some(n) = args.unix_send_buffer {
        common.extend(["--unix-send-buffer".to_owned(), n.to_string()]);
    }
    let run = |placement: &str, peers: &[String], client_workers: Option<u16>| -> Result<Vec<Figures>> {
        let mut extra = vec!["--peers".to_owned(), peers.join(",")];
        extra.extend(common.iter().cloned());
        if let Some(n) = client_workers {
            extra.extend(["--client-workers".to_owned(), n.to_string()]);
        }
        let o = run_placement(args, placement, &extra)?;
        Ok(serde_json::from_slice(&o.stdout)?)
    };
    let mut unpinned = vec![];
    for placement in ["pinned", "unpinned"] {
        let figures = run(placement, &args.peers, args.client_workers)?;
        out.push_str(&table(placement, &figures));
        out.push_str(&rounds_table(&figures));
        out.push('\n');
        unpinned = figures;
    }
    // LatZero's clients once more, unpinned, on the one-worker runtime README advises; the
    // relay's and NATS's figures are those above, on tokio's default runtime, where their
    // pipelined and fan-out rates are higher (docs/BENCHMARKS.md, "Client runtime").
    let latzero: Vec<String> = args
        .peers
        .iter()
        .filter(|p| matches!(p.as_str(), "tcp" | "unix" | "tls" | "ws"))
        .cloned()
        .collect();
    if args.client_workers.is_none() && !latzero.is_empty() {
        let mut figures = run("unpinned", &latzero, Some(1))?;
        let rounds = rounds_table(&figures);
        figures.extend(unpinned.into_iter().filter(|f| !f.peer.starts_with("LatZero")));
        out.push_str(&table(
            "unpinned, LatZero's clients on one worker (relay and NATS as above)",
            &figures,
        ));
        out.push_str(&rounds);
        out.push('\n');
    }
    let clients = match args.client_workers {
        Some(n) => format!("The peers' clients run on a tokio runtime of {n} worker(s) (`--client-workers`).\n"),
        None => "The peers' clients run on a tokio runtime of tokio's default size (one worker per CPU), \
                 except in the last table.\n"
            .to_owned(),
    };
    let text = format!("{}{clients}\n{out}", header(&sizes));
    print!("{text}");
    if let Some(path) = &args.write {
        write_section(path, "race", &text)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `latzero-bench blocks`: one placement (printing JSON with --json), or both via taskset.
/// A subcommand measured in each placement (`sub`: its name, and its section's in `--write`):
/// for one placement, `measure` runs here (rerun under `taskset -c 0` when pinned) and prints
/// its table, or its figures with `--json`; for both, this binary runs itself once per placement
/// and prints, or writes, the two tables under a line `line` completes.
fn placed<F, Fut>(
    args: &Args,
    sub: &str,
    measure: impl FnOnce(PathBuf) -> Fut,
    table: fn(&str, &F) -> String,
    line: impl FnOnce(String) -> String,
) -> Result<()>
where
    F: serde::Serialize + serde::de::DeserializeOwned,
    Fut: std::future::Future<Output = Result<F>>,
{
    let placement = args.placement.as_str();
    if placement != "both" {
        if !matches!(placement, "pinned" | "unpinned") {
            bail!("--placement must be pinned, unpinned or both, not {placement}");
        }
        if placement == "pinned" && !on_vcpu0_only() {
            return rerun_pinned();
        }
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let f = rt.block_on(measure(server_bin(args)?))?;
        if args.json {
            println!("{}", serde_json::to_string(&f)?);
        } else {
            print!("{}", table(placement, &f));
        }
        return Ok(());
    }
    let mut out = String::new();
    for placement in ["pinned", "unpinned"] {
        let o = run_placement(args, placement, &[sub.to_owned()])?;
        let f: F = serde_json::from_slice(&o.stdout)?;
        out.push_str(&table(placement, &f));
        out.push('\n');
    }
    let text = format!("{}.\n\n{out}", line(run_line()));
    print!("{text}");
    if let Some(path) = &args.write {
        write_section(path, sub, &text)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `TOOL --version`'s first line, for the run line.
fn tool_version(tool: &str) -> String {
    std::process::Command::new(tool)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| format!("{tool} {}", l.trim())))
        .unwrap_or_else(|| format!("{tool}: version unknown"))
}

/// Whether this process may run on vCPU 0 only (as under `taskset -c 0`).
fn on_vcpu0_only() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:").map(|v| v.trim() == "0"))
        })
        .unwrap_or(false)
}

/// `--placement pinned` asked for directly: runs this binary again, with the same arguments,
/// under `taskset -c 0`, so that it and every peer it starts really are on one vCPU.
fn rerun_pinned() -> Result<()> {
    let me = std::env::current_exe()?;
    let status = std::process::Command::new("taskset")
        .args(["-c", "0"])
        .arg(&me)
        .args(std::env::args_os().skip(1))
        .status()
        .context("running taskset (it is in util-linux)")?;
    if !status.success() {
        bail!("the pinned run failed ({status})");
    }
    Ok(())
}

/// Runs this binary again for one placement (under `taskset -c 0` when pinned) with `--json`
/// and `extra`; its output, which the caller parses.
fn run_placement(args: &Args, placement: &str, extra: &[String]) -> Result<std::process::Output> {
    let me = std::env::current_exe()?;
    let mut cmd = if placement == "pinned" {
        let mut c = std::process::Command::new("taskset");
        c.args(["-c", "0"]).arg(&me);
        c
    } else {
        std::process::Command::new(&me)
    };
    cmd.args(["--placement", placement, "--json"])
        .args(extra)
        .stderr(std::process::Stdio::inherit());
    if let Some(s) = &args.server {
        cmd.arg("--server").arg(s);
    }
    eprintln!("{placement}:");
    let o = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (taskset is in util-linux)"))?;
    if !o.status.success() {
        bail!("{placement} run failed");
    }
    Ok(o)
}

/// `Run <date> on <n> vCPU, Linux <kernel>; latzero <version>`: the start of a section.
fn run_line() -> String {
    format!(
        "Run {} on {} vCPU, Linux {}; latzero {}",
        cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        env!("CARGO_PKG_VERSION"),
    )
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn header(s: &Sizes) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    format!(
        "Run {date} on {n} vCPU {cpu}, Linux {kernel}; {nats}; latzero {lz}; async-nats 0.42.\n\
         Sizes: {seq} sequential calls per payload (after {w} warm-up), {p} pipelined calls with {inf} in flight, \
         {m} calls from {CALLERS} callers to {HANDLERS} handlers, {f} emits fanned out to {RECEIVERS} receivers.\n{rounds}{settings}",
        date = cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        nats = nats::NatsServer::version(),
        lz = env!("CARGO_PKG_VERSION"),
        seq = s.seq,
        w = s.warmup,
        p = s.pipelined,
        inf = s.inflight,
        m = s.multi,
        f = s.fanout,
        rounds = match s.rounds {
            0 | 1 => String::new(),
            n => format!(
                "Rates (pipelined, 10×2, fan-out) are each peer's median of {n} rounds, run in turn across the \
                 peers (each round is listed below its table); the sequential calls are split between the rounds \
                 (each warmed up), their percentiles taken from all of them.\n"
            ),
        },
        settings = settings(s),
    )
}

/// LatZero's settings where the run changed them from their defaults: a line, or nothing.
fn settings(s: &Sizes) -> String {
    let mut set = Vec::new();
    if let Some(us) = s.spin_us {
        set.push(format!("`--spin-us {us}`"));
    }
    if let Some(n) = s.server_workers {
        set.push(format!("server `--workers {n}`"));
    }
    if let Some(n) = s.unix_send_buffer {
        set.push(format!("server `--unix-send-buffer {n}`"));
    }
    if set.is_empty() {
        String::new()
    } else {
        format!("LatZero settings changed from their defaults: {}.\n", set.join(", "))
    }
}

fn table(placement: &str, f: &[Figures]) -> String {
    let find = |name: &str| f.iter().find(|x| x.peer == name);
    let (floor, nats, tcp, unix, tls, ws) = (
        find("relay floor"),
        find("NATS"),
        find("LatZero tcp"),
        find("LatZero unix"),
        find("LatZero tls"),
        find("LatZero ws"),
    );
    let mut t = format!(
        "**{placement}** (lower is better for µs, higher for /s; ratios are LatZero ÷ peer)\n\n\
         | workload | relay floor | NATS | LatZero tcp | LatZero unix | LatZero tls | LatZero ws | unix ÷ NATS | tcp ÷ NATS | unix ÷ floor | tls ÷ tcp | ws ÷ tcp |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    type Get = fn(&Figures) -> Option<f64>;
    let rows: [(&str, Get); 9] = [
        ("seq 64 B p50 µs", |x| Some(x.seq_64.p50)),
        ("seq 64 B p99 µs", |x| Some(x.seq_64.p99)),
        ("seq 64 B p99.9 µs", |x| Some(x.seq_64.p999)),
        ("seq 4 KiB p50 µs", |x| Some(x.seq_4k.p50)),
        ("seq 4 KiB p99 µs", |x| Some(x.seq_4k.p99)),
        ("seq 4 KiB p99.9 µs", |x| Some(x.seq_4k.p999)),
        ("pipelined calls/s", |x| Some(x.pipelined)),
        ("10×2 calls/s", |x| x.multi),
        ("fan-out ×4 msgs/s", |x| x.fanout),
    ];
    for (name, get) in rows {
        let v = |p: Option<&Figures>| p.and_then(get);
        let cell = |x: Option<f64>| match x {
            Some(x) if x >= 1000.0 => format!("{x:.0}"),
            Some(x) => format!("{x:.1}"),
            None => "n/a".into(),
        };
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "n/a".into(),
        };
        let _ = writeln!(
            t,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(v(floor)),
            cell(v(nats)),
            cell(v(tcp)),
            cell(v(unix)),
            cell(v(tls)),
            cell(v(ws)),
            ratio(v(unix), v(nats)),
            ratio(v(tcp), v(nats)),
            ratio(v(unix), v(floor)),
            ratio(v(tls), v(tcp)),
            ratio(v(ws), v(tcp)),
        );
    }
    t
}

/// Each round's rates, per peer in the order run, below a table of their medians; nothing with
/// one round.
fn rounds_table(f: &[Figures]) -> String {
    if f.iter().all(|x| x.rounds.len() < 2) {
        return String::new();
    }
    let mut t = String::from(
        "\nEach round's rates, in the order run (the table above gives their medians):\n\n\
         | peer | pipelined calls/s | 10×2 calls/s | fan-out ×4 msgs/s |\n|---|---|---|---|\n",
    );
    let k = |x: Option<f64>| x.map_or("n/a".to_owned(), |x| format!("{:.0}k", x / 1000.0));
    for x in f.iter().filter(|x| x.rounds.len() > 1) {
        let col = |get: fn(&stats::Rates) -> Option<f64>| {
            if x.rounds.iter().all(|r| get(r).is_none()) {
                return "n/a".to_owned();
            }
            x.rounds.iter().map(|r| k(get(r))).collect::<Vec<_>>().join(" · ")
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} |",
            x.peer,
            col(|r| Some(r.pipelined)),
            col(|r| r.multi),
            col(|r| r.fanout),
        );
    }
    t
}

/// Replaces the text between `<!-- NAME:begin ... -->` and `<!-- NAME:end -->` in `path`
/// (appending the section if it is not there yet).
fn write_section(path: &PathBuf, name: &str, text: &str) -> Result<()> {
    let begin = format!("<!-- {name}:begin (generated by latzero-bench --write) -->");
    let end = format!("<!-- {name}:end -->");
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{begin}\n{text}{end}");
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(a), Some(b)) if b > a => format!("{}{section}{}", &old[..a], &old[b + end.len()..]),
        _ => format!("{old}\n{section}\n"),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}
