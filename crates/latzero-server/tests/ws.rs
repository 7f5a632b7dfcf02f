//! The WebSocket port: the protocol over WebSocket messages (one frame each), pages refused
//! unless their origin is allowed, oversized messages told, and `wss://` with `--tls`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Raw, Running, config_in};
use futures_util::{SinkExt, StreamExt};
use latzero_client::Request;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const WAIT: Duration = Duration::from_secs(10);

fn ws_config(dir: &std::path::Path, origins: &[&str]) -> latzero_server::ServerConfig {
    let mut cfg = config_in(dir);
    cfg.ws.port = Some(0);
    cfg.ws.origins = origins.iter().map(|o| o.to_string()).collect();
    cfg
}

/// Upgrades `stream` to a WebSocket at `url`, with `origin` as a page would send it.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    url: &str,
    origin: Option<&str>,
) -> Result<WebSocketStream<S>, WsError> {
    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    tokio_tungstenite::client_async(req, stream).await.map(|(ws, _)| ws)
}

async fn open(srv: &Running, origin: Option<&str>) -> Result<WebSocketStream<TcpStream>, WsError> {
    let addr = srv.ws.unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    upgrade(tcp, &format!("ws://{addr}/"), origin).await
}

/// Sends a JSON frame as a text message.
async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next message, which must be a JSON frame in a text message.
async fn recv<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Value {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a message in time") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// A browser-like client and SDK clients call each other's triggers and share emits through
/// the WebSocket port, one frame per message; bad input is answered, not dropped.
#[tokio::test]
async fn pages_and_sdk_clients_call_each_other_over_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(ws_config(dir.path(), &["http://localhost:8080"])).await;
    let sdk = latzero_client::Client::connect(&format!("latzero://svc@{}?pools=p", srv.addr))
        .await
        .unwrap();
    sdk.handle(
        "double",
        |r: Request| async move { Ok(json!(r.data.as_i64().unwrap() * 2)) },
    )
    .await
    .unwrap();

    let mut page = open(&srv, Some("http://localhost:8080")).await.unwrap();
    send(
        &mut page,
        json!({"action":"handshake","id":1,"app_id":"page","pools":["p"],"triggers":["greet"]}),
    )
    .await;
    let ack = recv(&mut page).await;
    assert_eq!(ack["action"], "handshake_ack", "{ack}");
    send(
        &mut page,
        json!({"action":"trigger","id":2,"process":"double","pool":"p","data":21}),
    )
    .await;
    let r = recv(&mut page).await;
    assert_eq!(
        (&r["in_reply_to"], &r["status"], &r["response"]),
        (&json!(2), &json!("ok"), &json!(42)),
        "{r}"
    );

    // The SDK calls the page's trigger; the page answers the delivered call.
    let call = tokio::spawn({
        let sdk = sdk.clone();
        async move { sdk.call("p", "greet", &json!("ada")).await }
    });
    let hop = recv(&mut page).await;
    assert_eq!(
        (&hop["action"], &hop["process"], &hop["data"]),
        (&json!("trigger"), &json!("greet"), &json!("ada")),
        "{hop}"
    );
    send(
        &mut page,
        json!({"action":"response","in_reply_to":hop["id"],"status":"ok","response":"hello ada"}),
    )
    .await;
    assert_eq!(call.await.unwrap().unwrap(), json!("hello ada"));

    // A message many times the server's read buffer (4 KiB) is read whole, both ways.
    let big = "y".repeat(300_000);
    let call = tokio::spawn({
        let sdk = sdk.clone();
        let big = big.clone();
        async move { sdk.call("p", "greet", &json!(big)).await }
    });
    let hop = recv(&mut page).await;
    assert_eq!(hop["data"].as_str().map(str::len), Some(big.len()));
    send(
        &mut page,
        json!({"action":"response","in_reply_to":hop["id"],"status":"ok","response":hop["data"]}),
    )
    .await;
    assert_eq!(call.await.unwrap().unwrap(), json!(big));

    // Binary frames travel as binary messages, both ways: a block written and read back.
    send(
        &mut page,
        json!({"action":"block_create","id":3,"pool":"p","block_id":"b","size":16}),
    )
    .await;
    assert_eq!(recv(&mut page).await["action"], "block_created");
    let header = json!({"action":"block_write","id":4,"pool":"p","block_id":"b","offset":0}).to_string();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(header.len() as u32).to_be_bytes());
    frame.extend_from_slice(header.as_bytes());
    frame.extend_from_slice(b"\x01\x02\x03");
    page.send(Message::binary(frame)).await.unwrap();
    assert_eq!(recv(&mut page).await["action"], "block_written");
    send(
        &mut page,
        json!({"action":"block_read","id":5,"pool":"p","block_id":"b","offset":0,"length":3}),
    )
    .await;
    let data = match tokio::time::timeout(WAIT, page.next()).await.unwrap() {
        Some(Ok(Message::Binary(b))) => b,
        other => panic!("expected a binary message, got {other:?}"),
    };
    assert_eq!(data[0], 0, "the binary marker");
    let hlen = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    let head: Value = serde_json::from_slice(&data[5..5 + hlen]).unwrap();
    assert_eq!(head["action"], "block_data", "{head}");
    assert_eq!(&data[5 + hlen..], b"\x01\x02\x03");

    // Not JSON: an error frame, and the connection stays.
    page.send(Message::text("not json")).await.unwrap();
    let e = recv(&mut page).await;
    assert_eq!(e["code"], "INVALID_MESSAGE", "{e}");
    send(&mut page, json!({"action":"ping","id":"p"})).await;
    assert_eq!(recv(&mut page).await["action"], "pong");

    // The page closes; the server's close frame comes once the session has ended, and the app
    // is gone with it.
    page.close(None).await.unwrap();
    while let Some(Ok(m)) = tokio::time::timeout(WAIT, page.next()).await.expect("closed in time") {
        assert!(matches!(m, Message::Close(_)), "{m:?}");
    }
    let e = sdk.call("p", "greet", &json!("bob")).await.unwrap_err();
    assert!(
        e.to_string().contains("NO_HANDLER") || e.to_string().contains("no handler"),
        "{e}"
    );
    srv.stop().await;
}

/// An upgrade from a page whose origin is not allowed is refused with 403 and says how to allow
/// it; a program (no Origin) is not asked.
#[tokio::test]
async fn pages_of_origins_not_allowed_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(ws_config(dir.path(), &["http://localhost:8080"])).await;
    match open(&srv, Some("http://evil.example")).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("--ws-origin http://evil.example"), "{body}");
        }
        other => panic!("expected 403, got {:?}", other.map(|_| "a WebSocket")),
    }
    let mut program = open(&srv, None).await.unwrap();
    send(&mut program, json!({"action":"ping","id":1})).await;
    assert_eq!(recv(&mut program).await["action"], "pong");
    srv.stop().await;

    // With no origin allowed, every page is refused.
    let srv = Running::start(ws_config(dir.path(), &[])).await;
    assert!(matches!(open(&srv, Some("http://localhost:8080")).await, Err(WsError::Http(r)) if r.status() == 403));
    srv.stop().await;
}

/// A message longer than the server's frame limit closes the WebSocket with 1009 (message too
/// big) and a reason naming FRAME_TOO_LARGE and the limit.
#[tokio::test]
async fn an_oversized_message_is_told_in_the_close_frame() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ws_config(dir.path(), &[]);
    cfg.limits.max_frame_len = 4096;
    let srv = Running::start(cfg).await;
    let mut ws = open(&srv, None).await.unwrap();
    let big = json!({"action":"ping","id":"x".repeat(5000)}).to_string();
    ws.send(Message::text(big)).await.unwrap();
    let close = match tokio::time::timeout(WAIT, ws.next()).await.expect("an answer in time") {
        Some(Ok(Message::Close(c))) => c.expect("a close frame with a reason"),
        other => panic!("expected a close frame, got {other:?}"),
    };
    assert_eq!(close.code, CloseCode::Size);
    assert!(
        close.reason.contains("FRAME_TOO_LARGE") && close.reason.contains("4096"),
        "{}",
        close.reason
    );
    srv.stop().await;
}

/// With `--tls` the WebSocket port serves `wss://` with the TCP port's certificate.
#[tokio::test]
async fn with_tls_the_websocket_port_serves_wss() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ws_config(dir.path(), &[]);
    cfg.tls.enabled = true;
    let srv = Running::start(cfg).await;
    let addr = srv.ws.unwrap();
    let cert = dir.path().join("config").join(latzero_server::GENERATED_CERT);
    let tls = common::tls_to(addr, &cert).await;
    let mut ws = upgrade(tls, &format!("wss://{addr}/"), None).await.unwrap();
    send(&mut ws, json!({"action":"ping","id":1})).await;
    assert_eq!(recv(&mut ws).await["action"], "pong");
    // Plain WebSocket to the wss port fails at TLS, not with a hang.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let plain = tokio::time::timeout(WAIT, upgrade(tcp, &format!("ws://{addr}/"), None)).await;
    assert!(
        matches!(plain, Ok(Err(_))),
        "plain WebSocket to the wss port: {plain:?}"
    );
    srv.stop().await;
}

/// A page that sends and never reads is held back as any client is (the server stops reading
/// it), and the server still stops in time: the close message stuck behind what the page did
/// not read is not waited for past the shutdown grace.
#[tokio::test]
async fn a_page_that_never_reads_does_not_hold_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ws_config(dir.path(), &[]);
    cfg.limits.outbound_queue_bytes = 64 * 1024;
    cfg.shutdown_grace = Duration::from_millis(500);
    let srv = Running::start(cfg).await;
    let mut ws = open(&srv, None).await.unwrap();
    send(&mut ws, json!({"action":"handshake","id":0,"app_id":"deaf"})).await;
    // Pings whose pongs nobody reads, until the sends stall: every buffer on the way is full.
    let ping = Message::text(json!({"action":"ping","id":"x".repeat(200)}).to_string());
    loop {
        match tokio::time::timeout(Duration::from_millis(500), ws.send(ping.clone())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the server closed first: {e}"),
            Err(_) => break,
        }
    }
    tokio::time::timeout(WAIT, srv.stop())
        .await
        .expect("the server stops in time");
}

/// A page's messages are gathered into one write to its session when several were read at
/// once: all of them arrive, in order, pings between them skipped, large ones in their place,
/// and those sent just before the page closed still reach the session.
#[tokio::test]
async fn a_burst_of_messages_then_a_close_all_reach_the_session() {
    const N: u64 = 2000;
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(ws_config(dir.path(), &[])).await;
    let sdk = latzero_client::Client::connect(&format!("latzero://svc@{}?pools=p", srv.addr))
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    sdk.handle("n", move |r: Request| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(r.data.as_u64().or(r.data["i"].as_u64()).unwrap());
            Ok(Value::Null)
        }
    })
    .await
    .unwrap();

    let mut page = open(&srv, None).await.unwrap();
    send(
        &mut page,
        json!({"action":"handshake","id":0,"app_id":"page","pools":["p"]}),
    )
    .await;
    assert_eq!(recv(&mut page).await["action"], "handshake_ack");
    for i in 0..N {
        // Some larger than a batch, which go as they are, in their place.
        let data = if i % 500 == 250 {
            json!({"i": i, "pad": "x".repeat(100_000)})
        } else {
            json!(i)
        };
        let emit = json!({"action":"emit","process":"n","pool":"p","data":data});
        page.feed(Message::text(emit.to_string())).await.unwrap();
        if i % 100 == 0 {
            page.feed(Message::Ping(Default::default())).await.unwrap();
        }
    }
    page.send(Message::Close(None)).await.unwrap();
    for i in 0..N {
        let got = tokio::time::timeout(WAIT, rx.recv()).await.expect("every emit in time");
        assert_eq!(got, Some(i));
    }
}

/// A page that reads only once a burst is queued for it: the server's socket fills, messages go
/// out in part and their rests wait, and still every message arrives whole and in order, with
/// the pong for a ping sent meanwhile between messages, not inside one. Over ws:// and wss://.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_for_a_page_that_reads_late_arrives_whole() {
    for tls in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ws_config(dir.path(), &[]);
        cfg.tls.enabled = tls;
        let srv = Running::start(cfg).await;
        let addr = srv.ws.unwrap();
        if tls {
            let cert = dir.path().join("config").join(latzero_server::GENERATED_CERT);
            let stream = common::tls_to(addr, &cert).await;
            let page = upgrade(stream, &format!("wss://{addr}/"), None).await.unwrap();
            burst(&srv, page).await;
        } else {
            burst(&srv, open(&srv, None).await.unwrap()).await;
        }
        srv.stop().await;
    }
}

async fn burst<S: AsyncRead + AsyncWrite + Unpin>(srv: &Running, mut page: WebSocketStream<S>) {
    send(
        &mut page,
        json!({"action":"handshake","id":0,"app_id":"page","pools":["p"],"triggers":["ev"]}),
    )
    .await;
    assert_eq!(recv(&mut page).await["action"], "handshake_ack");
    let mut tx = Raw::unix(&srv.unix).await;
    tx.handshake("tx", &["p"], &[]).await;
    let blob = "z".repeat(60_000);
    let n = 300;
    for i in 0..n {
        tx.send(json!({"action":"emit","process":"ev","pool":"p","data":[i, blob]}))
            .await;
    }
    // Every emit is queued for the page once the ping is answered (frames are handled in order).
    assert_eq!(tx.sync().await, Vec::<Value>::new());
    page.send(Message::Ping(Bytes::from_static(b"late"))).await.unwrap();
    let (mut i, mut pong) = (0, false);
    while i < n || !pong {
        match tokio::time::timeout(WAIT, page.next())
            .await
            .expect("a message in time")
        {
            Some(Ok(Message::Text(t))) => {
                let e: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(e["data"][0], i);
                assert_eq!(e["data"][1].as_str().map(str::len), Some(blob.len()));
                i += 1;
            }
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], b"late");
                pong = true;
            }
            other => panic!("message {i}: {other:?}"),
        }
    }
}

/// A page that sends a request and closes at once still gets the answer, then the close
/// message: the session's last frames go out before it.
#[tokio::test]
async fn the_close_message_comes_after_the_sessions_last_frames() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(ws_config(dir.path(), &[])).await;
    let mut page = open(&srv, None).await.unwrap();
    page.feed(Message::text(json!({"action":"ping","id":"last"}).to_string()))
        .await
        .unwrap();
    page.send(Message::Close(None)).await.unwrap();
    assert_eq!(recv(&mut page).await["in_reply_to"], "last");
    match tokio::time::timeout(WAIT, page.next())
        .await
        .expect("the close in time")
    {
        Some(Ok(Message::Close(c))) => assert_eq!(c.map(|c| c.code), Some(CloseCode::Normal)),
        other => panic!("expected the close message, got {other:?}"),
    }
    srv.stop().await;
}

/// A page that breaks the WebSocket protocol (an unmasked message) is closed with 1002 and
/// tungstenite's reason; one that sends a text message that is not UTF-8, with 1007.
#[tokio::test]
async fn a_protocol_error_is_told_in_the_close_message() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(ws_config(dir.path(), &[])).await;
    // A text message "hi", final, with no mask: a client must mask (RFC 6455 §5.1). Then a
    // masked (with zeros) text message of two bytes that are not UTF-8.
    let cases: [(&[u8], CloseCode, &str); 2] = [
        (&[0x81, 0x02, b'h', b'i'], CloseCode::Protocol, "mask"),
        (&[0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe], CloseCode::Invalid, "UTF-8"),
    ];
    for (raw, code, why) in cases {
        let mut page = open(&srv, None).await.unwrap();
        page.get_mut().write_all(raw).await.unwrap();
        let close = match tokio::time::timeout(WAIT, page.next())
            .await
            .expect("an answer in time")
        {
            Some(Ok(Message::Close(c))) => c.expect("a close message with a reason"),
            other => panic!("expected the close message, got {other:?}"),
        };
        assert_eq!(close.code, code);
        assert!(close.reason.contains(why), "{}", close.reason);
    }
    srv.stop().await;
}
