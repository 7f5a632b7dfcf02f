//! Memory blocks side by side: LatZero's mapped access (a block in /dev/shm and a persistent
//! one on disk) against plain memcpy, LatZero's reads and writes through the server against
//! Redis GET/SET of the same sizes, and write-to-watcher notification latency against Redis
//! PUBLISH → subscriber. redis-server (Debian package) is started here on a Unix socket in a
//! temp dir and stopped by PID; LatZero's remote path also uses its Unix socket, so both pay the
//! same transport.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use latzero_client::{BlockEvent, BlockOptions, Client};
use latzero_testkit::ServerProc;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::stats::Lat;

/// The sizes measured, with iterations for local and for remote operations.
const SIZES: [(u64, usize, usize); 3] = [(4 << 10, 20_000, 5_000), (1 << 20, 300, 100), (64 << 20, 10, 5)];
/// Through the server, large transfers go in pieces of this size (a frame carries at most
/// max_frame_len, 16 MiB by default).
const CHUNK: u64 = 8 << 20;
/// Notification round trips measured.
const NOTIFY_N: usize = 5_000;

/// Median µs per operation for one size.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SizeRow {
    pub size: u64,
    pub memcpy: f64,
    pub shm_write: f64,
    pub shm_read: f64,
    pub disk_write: f64,
    pub disk_read: f64,
    pub remote_write: f64,
    pub remote_read: f64,
    pub redis_set: f64,
    pub redis_get: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BlockFigures {
    pub rows: Vec<SizeRow>,
    pub notify_latzero: Lat,
    pub notify_redis: Lat,
}

fn median_us(mut v: Vec<Duration>) -> f64 {
    v.sort_unstable();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// Times `n` runs of `f` (after one warm-up run); the median in µs.
async fn timed<F, Fut>(n: usize, mut f: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    f().await?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await?;
        v.push(t.elapsed());
    }
    Ok(median_us(v))
}

/// A running redis-server, killed on drop.
pub struct RedisServer {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisServer {
    pub fn start() -> Result<RedisServer> {
        let dir = tempfile::tempdir()?;
        let sock = dir.path().join("redis.sock");
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--unixsocket")
            .arg(&sock)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (scripts/bench.sh installs it: apt-get install redis-server)")?;
        let out = child.stdout.take().expect("piped");
        let mut lines = std::io::BufReader::new(out).lines();
        loop {
            match lines.next() {
                Some(Ok(l))
                    if l.contains("ready to accept connections") || l.contains("Ready to accept connections") =>
                {
                    break;
                }
                Some(Ok(_)) => {}
                _ => bail!("redis-server exited before it was ready"),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Ok(RedisServer {
            child,
            url: format!("redis+unix://{}", sock.display()),
            _dir: dir,
        })
    }

    pub fn version() -> String {
        Command::new("redis-server")
            .arg("--version")
            .output()
            .map(|o| {
                let s = String::from_utf8_lossy(&o.stdout);
                s.split_whitespace()
                    .find(|w| w.starts_with("v="))
                    .map(|v| format!("redis-server {}", &v[2..]))
                    .unwrap_or_else(|| s.trim().to_owned())
            })
            .unwrap_or_else(|_| "redis-server (not installed)".into())
    }
}

async fn redis_rows(rows: &mut [SizeRow], redis: &RedisServer) -> Result<Lat> {
    let client = redis::Client::open(redis.url.as_str())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    for (row, &(size, _, n)) in rows.iter_mut().zip(SIZES.iter()) {
        eprintln!("    redis {size}");
        let value = vec![7u8; size as usize];
        let key = format!("k{size}");
        row.redis_set = timed(n, || {
            let (mut con, value, key) = (con.clone(), &value, &key);
            async move {
                let () = con.set(key, value.as_slice()).await?;
                Ok(())
            }
        })
        .await?;
        row.redis_get = timed(n, || {
            let (mut con, key) = (con.clone(), &key);
            async move {
                let v: Vec<u8> = con.get(key).await?;
                anyhow::ensure!(v.len() == size as usize, "short GET");
                Ok(())
            }
        })
        .await?;
    }
    eprintln!("    redis pub/sub");
    // Notification: PUBLISH on one connection, received by a subscriber on another.
    let mut sub = client.get_async_pubsub().await?;
    sub.subscribe("ev").await?;
    let mut stream = sub.on_message();
    let mut lat = Vec::with_capacity(NOTIFY_N);
    for i in 0..NOTIFY_N + 100 {
        let t = Instant::now();
        let _: i64 = con.publish("ev", [1u8; 8].as_slice()).await?;
        stream.next().await.context("redis subscription ended")?;
        if i >= 100 {
            lat.push(t.elapsed());
        }
    }
    Ok(Lat::from(lat))
}

async fn latzero_rows(rows: &mut [SizeRow], bin: &Path) -> Result<Lat> {
    let server = ServerProc::start(
        bin,
        &["--log-level", "warn", "--max-block-size", &(128u64 << 20).to_string()],
    )?;
    let sock = server.unix.clone().context("no unix socket")?;
    let url = |app: &str| format!("latzero://{app}?socket={}&pools=bench", sock.display());
    let a = Client::connect(&url("bench-a")).await?;
    let b = Client::connect(&url("bench-b")).await?;
    for (row, &(size, n_local, n_remote)) in rows.iter_mut().zip(SIZES.iter()) {
        let data = vec![7u8; size as usize];
        let mut buf = vec![0u8; size as usize];
        row.memcpy = timed(n_local, || {
            buf.copy_from_slice(std::hint::black_box(&data));
            std::hint::black_box(&buf);
            async { Ok(()) }
        })
        .await?;
        for persistent in [false, true] {
            let mut opts = BlockOptions::binary(size);
            if persistent {
                opts = opts.persistent();
            }
            let id = format!("{}{size}", if persistent { "disk" } else { "shm" });
            let blk = a.create_block("bench", &id, opts).await?;
            anyhow::ensure!(blk.is_mapped(), "the bench block is not mapped");
            let reader = b.attach_block("bench", &id).await?;
            let w = timed(n_local, || async {
                blk.write(0, &data).await?;
                Ok(())
            })
            .await?;
            let mut out = vec![0u8; size as usize];
            let r = timed(n_local, || {
                let v = reader.read_with(0, size, |d| out.copy_from_slice(d)).map(|_| ());
                async move { Ok(v?) }
            })
            .await?;
            if persistent {
                (row.disk_write, row.disk_read) = (w, r);
            } else {
                (row.shm_write, row.shm_read) = (w, r);
                let remote = b.attach_block_with("bench", &id, None, false).await?;
                row.remote_write = timed(n_remote, || async {
                    let mut at = 0;
                    while at < size {
                        let end = (at + CHUNK).min(size);
                        remote.write(at, &data[at as usize..end as usize]).await?;
                        at = end;
                    }
                    Ok(())
                })
                .await?;
                row.remote_read = timed(n_remote, || async {
                    let mut at = 0;
                    while at < size {
                        let len = CHUNK.min(size - at);
                        let (bytes, _) = remote.read(at, len).await?;
                        anyhow::ensure!(bytes.len() as u64 == len, "short read");
                        at += len;
                    }
                    Ok(())
                })
                .await?;
            }
            blk.delete().await?;
        }
    }
    // Notification: a mapped write in one client, the watcher's event in another.
    let blk = a.create_block("bench", "notify", BlockOptions::binary(64)).await?;
    let watcher = b.attach_block("bench", "notify").await?;
    let mut w = watcher.watch(None).await?;
    anyhow::ensure!(matches!(w.next().await, Some(BlockEvent::Synced { .. })), "no synced");
    let mut lat = Vec::with_capacity(NOTIFY_N);
    for i in 0..NOTIFY_N + 100 {
        let t = Instant::now();
        let v = blk.write(0, &[1u8; 8]).await?;
        loop {
            match w.next().await {
                Some(BlockEvent::Changed { version, .. }) if version == v => break,
                Some(BlockEvent::Changed { .. }) => {}
                other => bail!("unexpected watch event {other:?}"),
            }
        }
        if i >= 100 {
            lat.push(t.elapsed());
        }
    }
    Ok(Lat::from(lat))
}

/// One placement's figures.
pub async fn run(bin: &Path) -> Result<BlockFigures> {
    let mut rows: Vec<SizeRow> = SIZES
        .iter()
        .map(|&(size, _, _)| SizeRow {
            size,
            ..SizeRow::default()
        })
        .collect();
    eprintln!("  latzero");
    let notify_latzero = latzero_rows(&mut rows, bin).await?;
    eprintln!("  redis");
    let redis = RedisServer::start()?;
    let notify_redis = redis_rows(&mut rows, &redis).await?;
    Ok(BlockFigures {
        rows,
        notify_latzero,
        notify_redis,
    })
}

fn size_name(s: u64) -> String {
    if s >= 1 << 20 {
        format!("{} MiB", s >> 20)
    } else {
        format!("{} KiB", s >> 10)
    }
}

fn us(x: f64) -> String {
    if x >= 1000.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The table for one placement.
pub fn table(placement: &str, f: &BlockFigures) -> String {
    let mut t = format!(
        "**{placement}** (median µs per operation, lower is better; GB/s in brackets)\n\n\
         | size | op | memcpy | mapped, /dev/shm | mapped, disk file | via server | Redis | mapped ÷ memcpy | via server ÷ Redis |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let gbs = |size: u64, x: f64| if x > 0.0 { size as f64 / x / 1e3 } else { 0.0 };
    for r in &f.rows {
        for (op, shm, disk, remote, redis) in [
            ("write", r.shm_write, r.disk_write, r.remote_write, r.redis_set),
            ("read", r.shm_read, r.disk_read, r.remote_read, r.redis_get),
        ] {
            t.push_str(&format!(
                "| {} | {op} | {} ({:.1}) | {} ({:.1}) | {} ({:.1}) | {} ({:.1}) | {} ({:.1}) | {:.2} | {:.2} |\n",
                size_name(r.size),
                us(r.memcpy),
                gbs(r.size, r.memcpy),
                us(shm),
                gbs(r.size, shm),
                us(disk),
                gbs(r.size, disk),
                us(remote),
                gbs(r.size, remote),
                us(redis),
                gbs(r.size, redis),
                shm / r.memcpy,
                remote / redis,
            ));
        }
    }
    t.push_str(&format!(
        "\nWrite → watcher notified: LatZero p50 {} µs, p99 {} µs; Redis PUBLISH → subscriber p50 {} µs, p99 {} µs (LatZero ÷ Redis p50 {:.2}).\n",
        us(f.notify_latzero.p50),
        us(f.notify_latzero.p99),
        us(f.notify_redis.p50),
        us(f.notify_redis.p99),
        f.notify_latzero.p50 / f.notify_redis.p50,
    ));
    t
}
