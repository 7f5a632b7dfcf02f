//! The LatZero peer: the real `latzero` binary as its own process, driven with the Rust SDK over
//! TCP or the Unix socket.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use latzero_client::{Client, Request};
use latzero_testkit::ServerProc;
use serde_json::Value;

use crate::stats::{CALLERS, Figures, HANDLERS, Lat, RECEIVERS, Sizes};

fn url(server: &ServerProc, unix: bool, app: &str) -> String {
    if unix {
        format!(
            "latzero://{app}?socket={}&pools=bench",
            server.unix.as_ref().expect("unix socket").display()
        )
    } else {
        format!("latzero://{app}@{}?pools=bench", server.tcp)
    }
}

/// A JSON string payload of exactly `size` bytes on the wire.
fn payload(size: usize) -> Value {
    Value::String("x".repeat(size.saturating_sub(2)))
}

async fn echo_handler(server: &ServerProc, unix: bool, app: &str) -> Result<Client> {
    let h = Client::connect(&url(server, unix, app)).await?;
    h.handle("echo", |r: Request| async move { Ok(r.data) }).await?;
    Ok(h)
}

async fn seq(c: &Client, size: usize, n: usize, warmup: usize) -> Result<Lat> {
    let p = payload(size);
    let mut lat = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t = Instant::now();
        c.call("bench", "echo", &p).await?;
        if i >= warmup {
            lat.push(t.elapsed());
        }
    }
    Ok(Lat::from(lat))
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
                    c.call("bench", "echo", &p).await?;
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

async fn fanout(server: &ServerProc, unix: bool, n: usize) -> Result<f64> {
    let done = Arc::new(tokio::sync::Notify::new());
    let finished = Arc::new(AtomicUsize::new(0));
    let mut receivers = vec![];
    for i in 0..RECEIVERS {
        let c = Client::connect(&url(server, unix, &format!("rx{i}"))).await?;
        let got = Arc::new(AtomicUsize::new(0));
        let (done, finished) = (done.clone(), finished.clone());
        c.handle("ev", move |_r: Request| {
            let (got, done, finished) = (got.clone(), done.clone(), finished.clone());
            async move {
                if got.fetch_add(1, Ordering::Relaxed) + 1 == n
                    && finished.fetch_add(1, Ordering::SeqCst) + 1 == RECEIVERS
                {
                    done.notify_one();
                }
                Ok(Value::Null)
            }
        })
        .await?;
        receivers.push(c);
    }
    let emitter = Client::connect(&url(server, unix, "emitter")).await?;
    let p = payload(64);
    let t = Instant::now();
    for _ in 0..n {
        emitter.emit("bench", "ev", &p).await?;
    }
    tokio::time::timeout(std::time::Duration::from_secs(120), done.notified())
        .await
        .context("LatZero fan-out receivers did not get every emit")?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

pub async fn run(bin: &Path, sizes: &Sizes, unix: bool) -> Result<Figures> {
    let server = ServerProc::start(bin, &["--log-level", "warn"])?;
    let mut f = Figures {
        peer: if unix { "LatZero unix" } else { "LatZero tcp" }.into(),
        ..Figures::default()
    };
    {
        let _h = echo_handler(&server, unix, "h").await?;
        let c = Client::connect(&url(&server, unix, "caller")).await?;
        f.seq_64 = seq(&c, 64, sizes.seq, sizes.warmup).await?;
        f.seq_4k = seq(&c, 4096, sizes.seq, sizes.warmup).await?;
        f.pipelined = parallel(vec![c], sizes.inflight, sizes.pipelined).await?;
    }
    {
        let mut hs = vec![];
        for i in 0..HANDLERS {
            hs.push(echo_handler(&server, unix, &format!("mh{i}")).await?);
        }
        let mut callers = vec![];
        for i in 0..CALLERS {
            callers.push(Client::connect(&url(&server, unix, &format!("mc{i}"))).await?);
        }
        f.multi = Some(parallel(callers, 1, sizes.multi).await?);
    }
    f.fanout = Some(fanout(&server, unix, sizes.fanout).await?);
    Ok(f)
}
