//! The NATS peer: the real `nats-server` (Debian package) on 127.0.0.1 and a free port, started
//! here and stopped by PID, driven with async-nats request-reply and publish/subscribe.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::stats::{CALLERS, Figures, HANDLERS, RECEIVERS, Sizes, payload};

/// A running nats-server, killed on drop.
pub struct NatsServer {
    child: Child,
    pub url: String,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NatsServer {
    pub fn start() -> Result<NatsServer> {
        let port = latzero_testkit::free_port();
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("starting nats-server (scripts/bench.sh installs it: apt-get install nats-server)")?;
        let err = child.stderr.take().expect("piped");
        let mut lines = std::io::BufReader::new(err).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("Server is ready") => break,
                Some(Ok(_)) => {}
                _ => bail!("nats-server exited before it was ready"),
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        })
    }

    pub fn version() -> String {
        Command::new("nats-server")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|_| "nats-server (not installed)".into())
    }
}

async fn responder(url: &str, queue: bool) -> Result<(async_nats::Client, tokio::task::JoinHandle<()>)> {
    let client = async_nats::connect(url).await?;
    let mut sub = if queue {
        client.queue_subscribe("echo", "q".to_string()).await?
    } else {
        client.subscribe("echo").await?
    };
    let c = client.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = c.publish(reply, m.payload).await;
            }
        }
    });
    client.flush().await?;
    Ok((client, task))
}

async fn seq(c: &async_nats::Client, size: usize, n: usize, warmup: usize) -> Result<Vec<Duration>> {
    let p = Bytes::from(payload(size));
    let mut lat = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t = Instant::now();
        c.request("echo", p.clone()).await?;
        if i >= warmup {
            lat.push(t.elapsed());
        }
    }
    Ok(lat)
}

async fn parallel(clients: Vec<async_nats::Client>, tasks_per_client: usize, n: usize) -> Result<f64> {
    let p = Bytes::from(payload(64));
    let tasks = clients.len() * tasks_per_client;
    let per = n / tasks;
    let t = Instant::now();
    let mut handles = vec![];
    for c in &clients {
        for _ in 0..tasks_per_client {
            let (c, p) = (c.clone(), p.clone());
            handles.push(tokio::spawn(async move {
                for _ in 0..per {
                    c.request("echo", p.clone()).await?;
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

async fn fanout(url: &str, n: usize) -> Result<f64> {
    let done = Arc::new(tokio::sync::Notify::new());
    let finished = Arc::new(AtomicUsize::new(0));
    let mut subs = vec![];
    for _ in 0..RECEIVERS {
        // NATS at its best: by default a subscriber buffers 65,536 messages and the client drops
        // the rest as a slow consumer; size the buffer for the whole burst.
        let c = async_nats::ConnectOptions::new()
            .subscription_capacity(n + 1024)
            .connect(url)
            .await?;
        let mut s = c.subscribe("ev").await?;
        c.flush().await?;
        let (done, finished) = (done.clone(), finished.clone());
        subs.push((
            c,
            tokio::spawn(async move {
                let mut got = 0;
                while s.next().await.is_some() {
                    got += 1;
                    if got == n {
                        if finished.fetch_add(1, Ordering::SeqCst) + 1 == RECEIVERS {
                            done.notify_one();
                        }
                        break;
                    }
                }
            }),
        ));
    }
    let publisher = async_nats::connect(url).await?;
    let p = Bytes::from(payload(64));
    let t = Instant::now();
    for _ in 0..n {
        publisher.publish("ev", p.clone()).await?;
    }
    publisher.flush().await?;
    tokio::time::timeout(std::time::Duration::from_secs(120), done.notified())
        .await
        .context("NATS fan-out receivers did not get every message (slow consumer?)")?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

pub async fn run(sizes: &Sizes) -> Result<Figures> {
    let server = NatsServer::start()?;
    let mut f = Figures {
        peer: "NATS".into(),
        ..Figures::default()
    };
    {
        let (_r, task) = responder(&server.url, false).await?;
        let c = async_nats::connect(&server.url).await?;
        f.seq_64_samples = seq(&c, 64, sizes.seq, sizes.warmup).await?;
        f.seq_4k_samples = seq(&c, 4096, sizes.seq, sizes.warmup).await?;
        f.pipelined = parallel(vec![c], sizes.inflight, sizes.pipelined).await?;
        task.abort();
    }
    {
        let mut rs = vec![];
        for _ in 0..HANDLERS {
            rs.push(responder(&server.url, true).await?);
        }
        let mut callers = vec![];
        for _ in 0..CALLERS {
            callers.push(async_nats::connect(&server.url).await?);
        }
        f.multi = Some(parallel(callers, 1, sizes.multi).await?);
        for (_, t) in rs {
            t.abort();
        }
    }
    f.fanout = Some(fanout(&server.url, sizes.fanout).await?);
    Ok(f)
}
