//! The callers and the emitter of the `ws` peer: LatZero's WebSocket port (`latzero start
//! --ws-port`) reached as a browser page reaches it — the protocol's JSON frames as text
//! messages — by a minimal tokio-tungstenite client. The handlers and the fan-out's receivers
//! stay SDK clients on the Unix socket, as local workers serving pages would be.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Ws = WebSocketStream<TcpStream>;

/// Connects to the WebSocket port and handshakes as `app`, in pool `bench`.
pub async fn connect(port: u16, app: &str) -> Result<Ws> {
    let s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/"), s)
        .await
        .context("the WebSocket upgrade")?;
    let hs = serde_json::json!({
        "action": "handshake", "id": 0, "app_id": app, "pools": ["bench"],
        "protocol_version": "1.0", "ephemeral": true,
    });
    ws.send(Message::text(hs.to_string())).await?;
    let ack = next_text(&mut ws).await?;
    if !ack.contains(r#""action":"handshake_ack""#) {
        bail!("the WebSocket handshake was refused: {}", ack.as_str());
    }
    Ok(ws)
}

/// A call of `echo` in pool `bench` with `data` (a JSON text), in the layout the JavaScript
/// client writes, the one the server reads by its fixed layout first (any key order is allowed).
fn call(id: u64, data: &str) -> Message {
    Message::text(format!(
        r#"{{"action":"trigger","id":{id},"process":"echo","pool":"bench","data":{data},"ttl":30000}}"#
    ))
}

/// The next text message (pings and pongs skipped).
async fn next_text(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Result<Utf8Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(c))) => bail!("the server closed the WebSocket: {c:?}"),
            Some(Ok(other)) => bail!("unexpected message {other:?}"),
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the WebSocket ended"),
        }
    }
}

/// Checks that `t` answers a call with success; the bench's calls never fail, so anything else
/// is a broken run.
fn answered(t: &str) -> Result<()> {
    if t.starts_with(r#"{"action":"response""#) && t.contains(r#""status":"ok""#) {
        Ok(())
    } else {
        bail!("a call over the WebSocket failed: {}", &t[..t.len().min(300)])
    }
}

/// `warmup + n` calls one after another; the latencies of the last `n`.
pub async fn seq(ws: &mut Ws, data: &str, n: usize, warmup: usize) -> Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t = Instant::now();
        ws.send(call(i as u64, data)).await?;
        answered(&next_text(ws).await?)?;
        if i >= warmup {
            lat.push(t.elapsed());
        }
    }
    Ok(lat)
}

/// `n` calls with `inflight` in flight: a writer sends while it has credits (flushing once per
/// run of them), the reader returns a credit per answer.
pub async fn pipelined(ws: Ws, data: &str, n: usize, inflight: usize) -> Result<f64> {
    let (mut tx, mut rx) = ws.split();
    let credits = Arc::new(tokio::sync::Semaphore::new(inflight));
    let t = Instant::now();
    let send = tokio::spawn({
        let (credits, data) = (credits.clone(), data.to_owned());
        async move {
            let mut sent = 0;
            while sent < n {
                credits.acquire().await?.forget();
                tx.feed(call(sent as u64, &data)).await?;
                sent += 1;
                while sent < n && credits.try_acquire().map(|p| p.forget()).is_ok() {
                    tx.feed(call(sent as u64, &data)).await?;
                    sent += 1;
                }
                tx.flush().await?;
            }
            Ok::<_, anyhow::Error>(tx)
        }
    });
    // The reader runs as a task too, as the SDK peers' callers do: on the caller's own thread
    // (`block_on`) every credit it returned would wake the sender across threads.
    let read = tokio::spawn(async move {
        for _ in 0..n {
            answered(&next_text(&mut rx).await?)?;
            credits.add_permits(1);
        }
        Ok::<_, anyhow::Error>(rx)
    });
    let _rx = read.await??;
    let _tx = send.await??;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// `per` calls from each of `callers` WebSocket connections at once, each waiting for its
/// answer before its next call; calls/s over them all (timed once all are connected).
pub async fn multi(port: u16, callers: usize, data: &str, per: usize) -> Result<f64> {
    let mut conns = Vec::with_capacity(callers);
    for i in 0..callers {
        conns.push(connect(port, &format!("wsc{i}")).await?);
    }
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(callers);
    for mut ws in conns {
        let data = data.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                ws.send(call(i as u64, &data)).await?;
                answered(&next_text(&mut ws).await?)?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((per * callers) as f64 / t.elapsed().as_secs_f64())
}

/// Sends `n` emits of `ev` in pool `bench` with `data` (a JSON text), fire-and-forget (no id,
/// so no receipt), written a run of 64 at a time as a page's sends are.
pub async fn emit(ws: &mut Ws, data: &str, n: usize) -> Result<()> {
    let text = format!(r#"{{"action":"emit","process":"ev","pool":"bench","data":{data}}}"#);
    for i in 0..n {
        ws.feed(Message::text(text.clone())).await?;
        if i % 64 == 63 {
            ws.flush().await?;
        }
    }
    ws.flush().await?;
    Ok(())
}
