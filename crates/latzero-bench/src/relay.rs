//! The floor: a minimal relay process that only forwards length-prefixed frames between one
//! caller connection and one handler connection, and the echo/caller clients that drive it.
//! No parsing, no routing, no correlation: what any broker process costs at least.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::stats::{Figures, Sizes, payload};

/// `latzero-bench relay`: accept a handler ('H') and a caller ('C'), then copy complete frames
/// both ways. Prints the port on stdout. Single-threaded, as lean as a relay gets.
pub fn serve() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", l.local_addr()?.port());
        loop {
            let (mut a, mut b) = (None, None);
            while a.is_none() || b.is_none() {
                let (mut s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                let mut role = [0u8; 1];
                s.read_exact(&mut role).await?;
                match role[0] {
                    b'H' => a = Some(s),
                    b'C' => b = Some(s),
                    _ => bail!("bad role"),
                }
            }
            let (hr, hw) = a.take().unwrap().into_split();
            let (cr, cw) = b.take().unwrap().into_split();
            tokio::spawn(pump(cr, hw));
            tokio::spawn(pump(hr, cw));
        }
    })
}

/// Where the complete frames at the start of `buf` end, and how many there are.
fn complete_frames(buf: &[u8]) -> (usize, usize) {
    let (mut end, mut count) = (0, 0);
    while buf.len() >= end + 4 {
        let len = u32::from_be_bytes(buf[end..end + 4].try_into().unwrap()) as usize;
        if buf.len() < end + 4 + len {
            break;
        }
        end += 4 + len;
        count += 1;
    }
    (end, count)
}

/// Forwards whole frames from `r` to `w`, all complete frames of one read in one write.
async fn pump(mut r: tokio::net::tcp::OwnedReadHalf, mut w: tokio::net::tcp::OwnedWriteHalf) -> Result<()> {
    let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
    loop {
        if r.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let (end, _) = complete_frames(&buf);
        if end > 0 {
            let chunk = buf.split_to(end);
            w.write_all(&chunk).await?;
        }
        if buf.capacity() - buf.len() < 64 * 1024 {
            buf.reserve(256 * 1024);
        }
    }
}

/// A framed connection for the relay workloads.
struct Framed {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Framed {
    async fn connect(port: u16, role: u8) -> Result<Framed> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        s.write_all(&[role]).await?;
        Ok(Framed {
            s,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    async fn read_frame(&mut self) -> Result<Vec<u8>> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if self.buf.len() >= 4 + len {
                    let f: Vec<u8> = self.buf[4..4 + len].to_vec();
                    self.buf.drain(..4 + len);
                    return Ok(f);
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.s.read(&mut chunk).await?;
            if n == 0 {
                bail!("relay closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn frame(p: &[u8]) -> Vec<u8> {
    let mut f = (p.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(p);
    f
}

/// Runs the relay workloads against a fresh relay process at `port`.
async fn session(port: u16) -> Result<(Framed, tokio::task::JoinHandle<Result<()>>)> {
    let mut h = Framed::connect(port, b'H').await?;
    let echo = tokio::spawn(async move {
        // Echo every complete frame, batching what one read brings.
        loop {
            let mut chunk = [0u8; 64 * 1024];
            let n = h.s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            h.buf.extend_from_slice(&chunk[..n]);
            let (end, _) = complete_frames(&h.buf);
            if end > 0 {
                let out: Vec<u8> = h.buf.drain(..end).collect();
                h.s.write_all(&out).await?;
            }
        }
    });
    let c = Framed::connect(port, b'C').await?;
    Ok((c, echo))
}

async fn seq(c: &mut Framed, size: usize, n: usize, warmup: usize) -> Result<Vec<Duration>> {
    let f = frame(&payload(size));
    let mut lat = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t = Instant::now();
        c.s.write_all(&f).await?;
        c.read_frame().await?;
        if i >= warmup {
            lat.push(t.elapsed());
        }
    }
    Ok(lat)
}

async fn pipelined(c: Framed, n: usize, inflight: usize) -> Result<f64> {
    let f = frame(&payload(64));
    let (mut r, mut w) = c.s.into_split();
    let credits = std::sync::Arc::new(tokio::sync::Semaphore::new(inflight));
    let t = Instant::now();
    let send = tokio::spawn({
        let credits = credits.clone();
        async move {
            // Write as many frames as there are credits, in one write.
            let mut sent = 0;
            let mut out = Vec::with_capacity(inflight * f.len());
            while sent < n {
                credits.acquire().await?.forget();
                let mut k = 1;
                while sent + k < n && credits.try_acquire().map(|p| p.forget()).is_ok() {
                    k += 1;
                }
                out.clear();
                for _ in 0..k {
                    out.extend_from_slice(&f);
                }
                w.write_all(&out).await?;
                sent += k;
            }
            Ok::<_, anyhow::Error>(w)
        }
    });
    // The reader runs as a task too, as the SDK peers' callers do: on the caller's own thread
    // (`block_on`) every credit it returned would wake the sender across threads.
    let read = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(256 * 1024);
        let mut got = 0;
        while got < n {
            let mut chunk = [0u8; 64 * 1024];
            let k = r.read(&mut chunk).await?;
            if k == 0 {
                bail!("relay closed");
            }
            buf.extend_from_slice(&chunk[..k]);
            let (end, frames) = complete_frames(&buf);
            buf.drain(..end);
            got += frames;
            credits.add_permits(frames);
        }
        Ok::<_, anyhow::Error>(r)
    });
    let _r = read.await??;
    let _w = send.await??;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Starts a relay process for each workload (a relay pairs one caller with one handler).
pub async fn run(sizes: &Sizes) -> Result<Figures> {
    let me = std::env::current_exe()?;
    let start = || -> Result<(std::process::Child, u16)> {
        let mut child = std::process::Command::new(&me)
            .arg("relay")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the relay")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line)?;
        Ok((child, line.trim().parse()?))
    };
    let mut figures = Figures {
        peer: "relay floor".into(),
        ..Figures::default()
    };
    {
        let (mut child, port) = start()?;
        let (mut c, echo) = session(port).await?;
        figures.seq_64_samples = seq(&mut c, 64, sizes.seq, sizes.warmup).await?;
        figures.seq_4k_samples = seq(&mut c, 4096, sizes.seq, sizes.warmup).await?;
        drop(c);
        echo.abort();
        let _ = child.kill();
        let _ = child.wait();
    }
    {
        let (mut child, port) = start()?;
        let (c, echo) = session(port).await?;
        figures.pipelined = pipelined(c, sizes.pipelined, sizes.inflight).await?;
        echo.abort();
        let _ = child.kill();
        let _ = child.wait();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(figures)
}
