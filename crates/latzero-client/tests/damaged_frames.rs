//! Damaged frames from the server, over TCP and a Unix socket: a stand-in server sends a client
//! every kind of frame the LatZero server sends it (deliveries, responses to its calls in
//! flight, errors, events), with its JSON broken or its fields swapped for values of the wrong
//! type, binary frames with lying headers and empty frames, written in pieces that split frames
//! anywhere. The client must stay connected, answer a call made afterwards, and never panic. The SDK reads the server's frames
//! by their fixed layout first (`DeliverTrigger::read_text` and friends), so broken text aimed
//! at that layout is the point. A fixed seed, so a failure repeats.

use std::time::Duration;

use latzero_client::{ClientEvent, ClientOptions, Payload, Request};
use latzero_proto::frame::{FrameCodec, encode_json};
use latzero_testkit::damage::{self, Rng};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::codec::Decoder;

/// The next frame from the client as JSON (binary frames' headers), `None` at its end. A frame
/// that is not JSON is `null`: a handler here echoes payloads the stand-in damaged, which the
/// SDK does not check again (it trusts the server's check, PROTOCOL.md §2.1; the real server
/// refuses such an answer).
async fn read_frame(s: &mut (impl AsyncReadExt + Unpin), buf: &mut bytes::BytesMut) -> Option<Value> {
    let mut codec = FrameCodec::default();
    loop {
        if let Some(f) = codec.decode(buf).unwrap() {
            return Some(serde_json::from_slice(f.json()).unwrap_or(Value::Null));
        }
        if s.read_buf(buf).await.unwrap_or(0) == 0 {
            return None;
        }
    }
}

/// The frames the server sends a client, in the server's own layouts, answering the calls
/// whose ids are `ids` (JSON text) where they answer anything.
fn templates(ids: &[String]) -> Vec<String> {
    let mut t = vec![
        r#"{"action":"trigger","id":"1","process":"t","pool":"p","data":{"x":1},"origin":{"app_id":"c"},"ttl":1000}"#
            .to_owned(),
        r#"{"action":"trigger","id":"2","process":"r","pool":"p","data":"x","origin":{"app_id":"c"},"ttl":5}"#
            .to_owned(),
        r#"{"action":"trigger","id":"b1","process":"t","pool":"p","broadcast":true,"ttl":500}"#.to_owned(),
        r#"{"action":"emit","process":"t","pool":"p","data":[1,{"a":"b"}],"origin":{"app_id":"c"}}"#.to_owned(),
        r#"{"action":"emit","process":"r","pool":"p","data":"\u00e9\n","origin":{"app_id":"c"}}"#.to_owned(),
        r#"{"action":"response","in_reply_to":9,"status":"ok","response":5,"origin":{"app_id":"caller"}}"#.to_owned(),
        r#"{"action":"presence","pool":"p","app_id":"w2","event":"joined"}"#.to_owned(),
        r#"{"action":"pool_left","pool":"p","by":"o","message":"m"}"#.to_owned(),
        r#"{"action":"block_event","event":"changed","pool":"p","block_id":"b","version":9,"offset":0,"length":16}"#
            .to_owned(),
        r#"{"action":"block_event","event":"lock_expired","pool":"p","block_id":"b","mode":"exclusive"}"#.to_owned(),
        r#"{"action":"block_event","event":"unwatched","pool":"p","block_id":"b","version":3,"reason":"r"}"#.to_owned(),
        r#"{"action":"error","code":"INVALID_MESSAGE","message":"m"}"#.to_owned(),
    ];
    for id in ids {
        t.push(format!(
            r#"{{"action":"response","in_reply_to":{id},"status":"ok","response":{{"k":"v"}}}}"#
        ));
        t.push(format!(
            r#"{{"action":"response","in_reply_to":{id},"status":"error","error":{{"message":"no"}}}}"#
        ));
        t.push(format!(
            r#"{{"action":"error","in_reply_to":{id},"code":"NO_HANDLER","message":"x"}}"#
        ));
        t.push(format!(r#"{{"action":"pong","in_reply_to":{id}}}"#));
    }
    t
}

/// A byte stream the stand-in serves on: TCP or a Unix socket.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A stand-in server's listener, TCP or Unix (the SDK reads the two through different code).
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, tempfile::TempDir),
}

impl Listener {
    async fn bind(unix: bool) -> Listener {
        if unix {
            let dir = tempfile::tempdir().unwrap();
            Listener::Unix(UnixListener::bind(dir.path().join("s.sock")).unwrap(), dir)
        } else {
            Listener::Tcp(TcpListener::bind("127.0.0.1:0").await.unwrap())
        }
    }

    fn url(&self) -> String {
        match self {
            Listener::Tcp(l) => format!("latzero://w@{}?pools=p", l.local_addr().unwrap()),
            Listener::Unix(_, dir) => format!("latzero://w?socket={}&pools=p", dir.path().join("s.sock").display()),
        }
    }

    async fn accept(&self) -> Box<dyn Io> {
        match self {
            Listener::Tcp(l) => {
                let s = l.accept().await.unwrap().0;
                s.set_nodelay(true).unwrap();
                Box::new(s)
            }
            Listener::Unix(l, _) => Box::new(l.accept().await.unwrap().0),
        }
    }
}

/// One connection: handlers registered, three calls in flight, 40 damaged frames, then a call
/// that must be answered.
async fn session(n: usize, rng: &mut Rng, unix: bool) {
    let l = Listener::bind(unix).await;
    let url = l.url();
    let opts = ClientOptions::new()
        .reconnect(false)
        .request_timeout(Duration::from_secs(60));
    let accept = async {
        let mut s = l.accept().await;
        let mut buf = bytes::BytesMut::new();
        let hs = read_frame(&mut s, &mut buf).await.unwrap();
        let ack = json!({"action":"handshake_ack","in_reply_to":hs["id"],"app_id":"w","pools":["p"],"triggers":[],"protocol_version":"1.0"});
        s.write_all(&encode_json(ack.to_string().as_bytes())).await.unwrap();
        (s, buf)
    };
    let (client, (s, mut buf)) = tokio::join!(opts.connect(&url), accept);
    let client = client.unwrap();
    let mut events = client.events();
    let mut tasks = tokio::task::JoinSet::new();
    // `handle` waits for a register ack this stand-in never sends: run it aside.
    let c = client.clone();
    tasks.spawn(async move {
        let _ = c.handle("t", |r: Request| async move { Ok(r.data) }).await;
    });
    let c = client.clone();
    tasks.spawn(async move {
        let _ = c.handle_raw("r", |r: Request<Payload>| async move { Ok(r.data) }).await;
    });
    // Calls in flight, for the damage to answer (with anything: only a panic or a lost
    // connection fails the test).
    let c = client.clone();
    tasks.spawn(async move {
        let _ = c.call("p", "a", &json!(1)).await;
    });
    let c = client.clone();
    tasks.spawn(async move {
        let _ = c.call_raw("p", "b", &Payload::from_text("[1]").unwrap()).await;
    });
    let c = client.clone();
    tasks.spawn(async move {
        let _ = c.request("p", "c").broadcast().await;
    });
    let (mut rd, mut wr) = tokio::io::split(s);
    let (mut registers, mut ids) = (0, vec![]);
    while registers < 2 || ids.len() < 3 {
        let f = read_frame(&mut rd, &mut buf).await.expect("the client stays connected");
        match f["action"].as_str() {
            Some("register") => registers += 1,
            Some("trigger") => ids.push(f["id"].to_string()),
            _ => {}
        }
    }
    // From here on the client's frames (answers to damaged deliveries) are read aside; the
    // probe's id comes back from there.
    let (probe_tx, mut probe_rx) = tokio::sync::mpsc::unbounded_channel();
    tasks.spawn(async move {
        while let Some(f) = read_frame(&mut rd, &mut buf).await {
            if f["action"] == "trigger" && f["process"] == "probe" {
                let _ = probe_tx.send(f["id"].to_string());
            }
        }
    });
    let owned = templates(&ids);
    let templates: Vec<&str> = owned.iter().map(String::as_str).collect();
    let binary = format!(r#"{{"action":"block_data","in_reply_to":{},"version":1}}"#, ids[0]);
    let mut frames = vec![];
    for _ in 0..40 {
        frames.extend(damage::damaged(rng, &templates, &binary));
    }
    for piece in damage::pieces(rng, &frames) {
        wr.write_all(piece).await.unwrap();
    }
    let c = client.clone();
    let probe = tokio::spawn(async move { c.call("p", "probe", &json!("?")).await });
    let id = tokio::time::timeout(Duration::from_secs(10), probe_rx.recv())
        .await
        .unwrap_or_else(|_| panic!("session {n}: the probe call was not sent"))
        .unwrap_or_else(|| panic!("session {n}: the client closed the connection"));
    let answer = format!(r#"{{"action":"response","in_reply_to":{id},"status":"ok","response":"fine"}}"#);
    wr.write_all(&encode_json(answer.as_bytes())).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), probe).await;
    let answered = answered.unwrap_or_else(|_| panic!("session {n}: the probe was not answered"));
    while let Ok(ev) = events.try_recv() {
        assert!(!matches!(ev, ClientEvent::Disconnected { .. }), "session {n}: {ev:?}");
    }
    assert_eq!(answered.unwrap().unwrap(), json!("fine"), "session {n}");
    assert!(client.is_connected(), "session {n}");
    tasks.abort_all();
}

/// 40 sessions from `seed`, over a Unix socket or TCP; nothing may panic.
async fn sessions(seed: u64, unix: bool) {
    assert_eq!(damage::panics(), 0);
    let mut rng = Rng(seed);
    for n in 0..40 {
        session(n, &mut rng, unix).await;
    }
    assert_eq!(damage::panics(), 0, "something panicked (see above)");
}

#[tokio::test]
async fn damaged_frames_from_the_server_leave_the_client_connected() {
    sessions(0x9e37_79b9_7f4a_7c15, false).await;
}

#[tokio::test]
async fn damaged_frames_over_a_unix_socket_leave_the_client_connected() {
    sessions(0x2545_f491_4f6c_dd1d, true).await;
}
