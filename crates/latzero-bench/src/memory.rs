//! Memory under load: server RSS with many idle connected clients, and RSS over a long run of
//! calls (a leak in the pending-call table or per-connection state would show as growth).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use latzero_client::{Client, Request};
use latzero_testkit::ServerProc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The server's resident set size in MiB, from /proc.
pub fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no VmRSS")?
        .parse()?;
    Ok(kb / 1024.0)
}

/// Result of the memory runs.
#[derive(Debug)]
pub struct MemoryFigures {
    pub idle_clients: usize,
    pub rss_empty: f64,
    pub rss_idle: f64,
    pub calls: u64,
    pub samples: Vec<(u64, f64)>,
    pub calls_per_sec: f64,
    /// Idle WebSocket pages on a server of their own: (pages, RSS with none, RSS with them).
    pub ws: Option<(usize, f64, f64)>,
}

/// `clients` idle apps (each connected over the Unix socket and handshaken), then `calls`
/// pipelined calls with RSS sampled ten times; then `ws_pages` idle WebSocket pages on a server
/// of their own.
pub async fn run(bin: &Path, clients: usize, calls: u64, ws_pages: usize) -> Result<MemoryFigures> {
    // Each client costs this process one descriptor and the server one (a WebSocket page cost
    // the server three while a bridge's socket pair carried it; the check keeps that room);
    // children inherit.
    let want = (clients.max(ws_pages * 2) as u64 + 1024) * 2;
    let got = rlimit::increase_nofile_limit(want).context("raising the open-files limit")?;
    if got < (clients as u64).max(ws_pages as u64 * 3) + 512 {
        bail!("the open-files limit is {got}; {clients} clients and {ws_pages} WebSocket pages need more");
    }
    let server = ServerProc::start(bin, &["--log-level", "warn"])?;
    let pid = server.proc.pid();
    let sock = server.unix.clone().context("no unix socket")?;
    let rss_empty = rss_mib(pid)?;

    let mut idle = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut s = UnixStream::connect(&sock).await?;
        let hs = format!(r#"{{"action":"handshake","app_id":"idle-{i}","pools":["idle"],"triggers":["noop"]}}"#);
        s.write_all(&latzero_proto::frame::encode_json(hs.as_bytes())).await?;
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let mut ack = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut ack).await?;
        if !ack.windows(13).any(|w| w == b"handshake_ack") {
            bail!("client {i} was refused: {}", String::from_utf8_lossy(&ack));
        }
        idle.push(s);
    }
    let rss_idle = rss_mib(pid)?;

    let url = |app: &str| format!("latzero://{app}?socket={}&pools=mem", sock.display());
    let h = Client::connect(&url("mem-handler")).await?;
    h.handle("echo", |r: Request| async move { Ok(r.data) }).await?;
    let c = Client::connect(&url("mem-caller")).await?;
    let step = (calls / 10).max(1);
    let mut samples = vec![];
    let started = Instant::now();
    let mut done = 0u64;
    while done < calls {
        let n = step.min(calls - done);
        let mut tasks = vec![];
        for i in 0..64u64 {
            // n calls over 64 tasks, the remainder spread over the first ones (any n ends).
            let per = n / 64 + u64::from(i < n % 64);
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..per {
                    c.call(
                        "mem",
                        "echo",
                        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab",
                    )
                    .await?;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        done += n;
        samples.push((done, rss_mib(pid)?));
        eprintln!("    {done} calls, server RSS {:.1} MiB", samples.last().unwrap().1);
    }
    let calls_per_sec = done as f64 / started.elapsed().as_secs_f64();
    drop(idle);
    drop(server);
    let ws = if ws_pages > 0 {
        Some(idle_pages(bin, ws_pages).await?)
    } else {
        None
    };
    Ok(MemoryFigures {
        idle_clients: clients,
        rss_empty,
        rss_idle,
        calls: done,
        samples,
        calls_per_sec,
        ws,
    })
}

/// `pages` idle WebSocket pages (connected and handshaken, as `crate::ws` connects) on a server
/// of their own: (pages, the server's RSS before, and with them).
async fn idle_pages(bin: &Path, pages: usize) -> Result<(usize, f64, f64)> {
    let port = latzero_testkit::free_port();
    let server = ServerProc::start(bin, &["--log-level", "warn", "--ws-port", &port.to_string()])?;
    let pid = server.proc.pid();
    let before = rss_mib(pid)?;
    let mut held = Vec::with_capacity(pages);
    for i in 0..pages {
        held.push(crate::ws::connect(port, &format!("page-{i}")).await?);
    }
    let with = rss_mib(pid)?;
    drop(held);
    Ok((pages, before, with))
}

pub fn table(f: &MemoryFigures) -> String {
    let first = f.samples.first().map(|s| s.1).unwrap_or(0.0);
    let last = f.samples.last().map(|s| s.1).unwrap_or(0.0);
    let max = f.samples.iter().map(|s| s.1).fold(0.0, f64::max);
    let mut t = format!(
        "| measure | server RSS MiB |\n|---|---:|\n| started, no clients | {:.1} |\n| {} idle clients connected (handshaken, in one pool) | {:.1} |\n",
        f.rss_empty, f.idle_clients, f.rss_idle
    );
    t.push_str(&format!(
        "| after the first {} calls | {first:.1} |\n| after {} calls | {last:.1} |\n| highest sample | {max:.1} |\n",
        f.samples.first().map(|s| s.0).unwrap_or(0),
        f.calls
    ));
    if let Some((pages, before, with)) = f.ws {
        t.push_str(&format!(
            "| WebSocket: a second server, started, no pages | {before:.1} |\n| WebSocket: {pages} idle pages connected (handshaken) | {with:.1} |\n"
        ));
    }
    t.push_str(&format!(
        "\nCalls ran pipelined (64 in flight) at {:.0} calls/s, unpinned, with the idle clients still connected; RSS was sampled every {} calls: {}.\n",
        f.calls_per_sec,
        f.samples.first().map(|s| s.0).unwrap_or(0),
        f.samples.iter().map(|s| format!("{:.1}", s.1)).collect::<Vec<_>>().join(", ")
    ));
    t
}
