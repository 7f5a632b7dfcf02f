//! The LatZero peer: the real `latzero` binary as its own process, driven with the Rust SDK over
//! TCP, the Unix socket, or TLS on the TCP port. The SDK's bytes-level calls and handlers
//! (`call_raw`, `handle_raw`) carry the payload, as async-nats carries bytes for the NATS peer.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use latzero_client::{Client, ClientOptions, Payload, Request};
use latzero_testkit::ServerProc;
use serde_json::Value;

use crate::stats::{CALLERS, Figures, HANDLERS, RECEIVERS, Sizes};

/// How the SDK reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// The Unix socket.
    Unix,
    /// TLS on the TCP port, pinning the generated certificate.
    Tls,
    /// The caller over the WebSocket port, as a page (`crate::ws`); the handler on the Unix
    /// socket.
    Ws,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "LatZero tcp",
            Transport::Unix => "LatZero unix",
            Transport::Tls => "LatZero tls",
            Transport::Ws => "LatZero ws",
        }
    }
}

/// A started server and how to reach it.
struct Link {
    server: ServerProc,
    transport: Transport,
    fingerprint: String,
    /// The clients' options (their spin window, when the run sets one).
    opts: ClientOptions,
}

async fn connect(link: &Link, app: &str) -> Result<Client> {
    Ok(Client::connect_with(&url(link, app), link.opts.clone()).await?)
}

fn url(link: &Link, app: &str) -> String {
    let server = &link.server;
    match link.transport {
        // The ws peer's SDK clients (its handler) are on the Unix socket.
        Transport::Unix | Transport::Ws => format!(
            "latzero://{app}?socket={}&pools=bench",
            server.unix.as_ref().expect("unix socket").display()
        ),
        Transport::Tcp => format!("latzero://{app}@{}?pools=bench", server.tcp),
        Transport::Tls => format!(
            "latzeros://{app}@{}?pools=bench&fingerprint={}",
            server.tcp, link.fingerprint
        ),
    }
}

/// A JSON string of exactly `size` bytes, as the WebSocket clients send it.
fn ws_text(size: usize) -> String {
    format!("\"{}\"", "x".repeat(size.saturating_sub(2)))
}

/// A JSON string payload of exactly `size` bytes on the wire.
fn payload(size: usize) -> Payload {
    Payload::from_json(&"x".repeat(size.saturating_sub(2))).expect("a string serialises")
}

async fn echo_handler(link: &Link, app: &str) -> Result<Client> {
    let h = connect(link, app).await?;
    h.handle_raw("echo", |r: Request<Payload>| async move { Ok(r.data) })
        .await?;
    Ok(h)
}

async fn seq(c: &Client, size: usize, n: usize, warmup: usize) -> Result<Vec<Duration>> {
    let p = payload(size);
    let mut lat = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t = Instant::now();
        c.call_raw("bench", "echo", &p).await?;
        if i >= warmup {
            lat.push(t.elapsed());
        }
    }
    Ok(lat)
}

async fn parallel(clients: Vec<Client>, tasks_per_client: usize, n: usize) -> Result<f64> {
    let p = payload(64);
    let tasks = clients.len() * tasks_per_client;
    let per = n / tasks;
    let t = Instant::now();
    let mut handles = vec![];
    for c in &clients {
        for _ in 0..tasks_per_client {
            let (c, p) = (c.clone(), p.clone());
            handles.push(tokio::spawn(async move {
                for _ in 0..per {
                    c.call_raw("bench", "echo", &p).await?;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
    }
    for h in handles {
        h.await??;
    }
    Ok((per * tasks) as f64 / t.elapsed().as_secs_f64())
}

/// Emits fanned out to the SDK receivers, from an SDK emitter, or with `ws_port` from a
/// WebSocket one (as a page).
async fn fanout(link: &Link, n: usize, ws_port: Option<u16>) -> Result<f64> {
    let done = Arc::new(tokio::sync::Notify::new());
    let finished = Arc::new(AtomicUsize::new(0));
    let mut receivers = vec![];
    let mut counts = vec![];
    for i in 0..RECEIVERS {
        let c = connect(link, &format!("rx{i}")).await?;
        let got = Arc::new(AtomicUsize::new(0));
        counts.push(got.clone());
        let (done, finished) = (done.clone(), finished.clone());
        c.handle_raw("ev", move |_r: Request<Payload>| {
            let (got, done, finished) = (got.clone(), done.clone(), finished.clone());
            async move {
                if got.fetch_add(1, Ordering::Relaxed) + 1 == n
                    && finished.fetch_add(1, Ordering::SeqCst) + 1 == RECEIVERS
                {
                    done.notify_one();
                }
                Ok(Payload::null())
            }
        })
        .await?;
        receivers.push(c);
    }
    // The emitter flushes and stays connected until the receivers have every emit, so that its
    // rate counts emits that arrived, whatever a close does with frames still queued (until
    // 2026-11-24 the SDK dropped those: one unpinned TLS round lost 3,292 of 200,000 emits).
    let (t, _emitter, _page) = match ws_port {
        None => {
            let emitter = connect(link, "emitter").await?;
            let p = payload(64);
            let t = Instant::now();
            for _ in 0..n {
                emitter.emit("bench", "ev", &p).await?;
            }
            emitter.flush().await?;
            (t, Some(emitter), None)
        }
        Some(port) => {
            let mut ws = crate::ws::connect(port, "emitter").await?;
            let t = Instant::now();
            crate::ws::emit(&mut ws, &ws_text(64), n).await?;
            (t, None, Some(ws))
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(120), done.notified())
        .await
        .is_err()
    {
        let got: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        bail!("LatZero fan-out receivers did not get every emit within 120 s: they got {got:?} of {n}");
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

pub async fn run(bin: &Path, sizes: &Sizes, transport: Transport) -> Result<Figures> {
    let mut opts = ClientOptions::new();
    let mut args = vec!["--log-level".to_owned(), "warn".to_owned()];
    if transport == Transport::Tls {
        args.push("--tls".to_owned());
    }
    if transport == Transport::Ws {
        // The server picks the port and says which in server.json: a port picked here and
        // handed over could be taken in between (an unpinned race lost a run to that).
        args.extend(["--ws-port".to_owned(), "0".to_owned()]);
    }
    if let Some(us) = sizes.spin_us {
        opts = opts.spin(std::time::Duration::from_micros(us));
        args.extend(["--spin-us".to_owned(), us.to_string()]);
    }
    if let Some(n) = sizes.server_workers {
        args.extend(["--workers".to_owned(), n.to_string()]);
    }
    if let Some(n) = sizes.unix_send_buffer {
        args.extend(["--unix-send-buffer".to_owned(), n.to_string()]);
    }
    let server = ServerProc::start(bin, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let info: Value = serde_json::from_str(&std::fs::read_to_string(server.data_dir.join("server.json"))?)?;
    let fingerprint = info["tls_fingerprint"].as_str().unwrap_or_default().to_owned();
    let ws_port: u16 = match info["ws"].as_str().and_then(|a| a.rsplit(':').next()?.parse().ok()) {
        Some(port) => port,
        None if transport == Transport::Ws => bail!("server.json names no WebSocket address: {info}"),
        None => 0,
    };
    let link = Link {
        server,
        transport,
        fingerprint,
        opts,
    };
    let mut f = Figures {
        peer: transport.name().into(),
        ..Figures::default()
    };
    if transport == Transport::Ws {
        // The callers and the emitter are minimal WebSocket clients, the handlers and the
        // receivers SDK clients on the Unix socket.
        {
            let _h = echo_handler(&link, "h").await?;
            let mut c = crate::ws::connect(ws_port, "caller").await?;
            f.seq_64_samples = crate::ws::seq(&mut c, &ws_text(64), sizes.seq, sizes.warmup).await?;
            f.seq_4k_samples = crate::ws::seq(&mut c, &ws_text(4096), sizes.seq, sizes.warmup).await?;
            f.pipelined = crate::ws::pipelined(c, &ws_text(64), sizes.pipelined, sizes.inflight).await?;
        }
        {
            let mut hs = vec![];
            for i in 0..HANDLERS {
                hs.push(echo_handler(&link, &format!("mh{i}")).await?);
            }
            f.multi = Some(crate::ws::multi(ws_port, CALLERS, &ws_text(64), sizes.multi / CALLERS).await?);
        }
        f.fanout = Some(fanout(&link, sizes.fanout, Some(ws_port)).await?);
        return Ok(f);
    }
    {
        let _h = echo_handler(&link, "h").await?;
        let c = connect(&link, "caller").await?;
        f.seq_64_samples = seq(&c, 64, sizes.seq, sizes.warmup).await?;
        f.seq_4k_samples = seq(&c, 4096, sizes.seq, sizes.warmup).await?;
        f.pipelined = parallel(vec![c], sizes.inflight, sizes.pipelined).await?;
    }
    {
        let mut hs = vec![];
        for i in 0..HANDLERS {
            hs.push(echo_handler(&link, &format!("mh{i}")).await?);
        }
        let mut callers = vec![];
        for i in 0..CALLERS {
            callers.push(connect(&link, &format!("mc{i}")).await?);
        }
        f.multi = Some(parallel(callers, 1, sizes.multi).await?);
    }
    f.fanout = Some(fanout(&link, sizes.fanout, None).await?);
    Ok(f)
}
