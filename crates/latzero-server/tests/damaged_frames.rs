//! Damaged requests, well framed: every kind of request with its JSON broken or its fields
//! swapped for values of the wrong type, binary frames with lying headers, empty frames, written
//! in pieces that split frames anywhere. Over TCP, the Unix socket and TLS, each connection must
//! stay served (a `ping` after the damage gets its `pong`), every frame the server sends must be
//! valid JSON, and nothing may panic. A frame longer than the limit is refused and closes only
//! its own connection; bytes that are not TLS on the TLS port close theirs. A fixed seed, so a
//! failure repeats.

mod common;

use std::time::Duration;

use common::{Raw, Running, TestServer, config_in};
use latzero_server::Limits;
use latzero_testkit::damage::{self, Rng};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Requests of every kind a connection may send after its handshake (not `shutdown`, which
/// would end the test's server).
const REQUESTS: &[&str] = &[
    r#"{"action":"trigger","id":5,"process":"f","pool":"p","data":{"x":1},"ttl":1000}"#,
    r#"{"action":"trigger","id":"s5","process":"f","pool":"p","data":"x","destination":"fz"}"#,
    r#"{"action":"trigger","id":6,"process":"f","pool":"p","broadcast":true,"ttl":200}"#,
    r#"{"action":"trigger","id":7,"process":"f","pool":"p","data":[2,3],"reply_to":"fz"}"#,
    r#"{"action":"emit","process":"f","pool":"p","data":[1,2,{"a":"b"}]}"#,
    r#"{"action":"response","in_reply_to":3,"status":"ok","response":{"k":"v"}}"#,
    r#"{"action":"response","in_reply_to":"1","status":"error","error":"boom"}"#,
    r#"{"action":"register","id":8,"triggers":["g","h"]}"#,
    r#"{"action":"unregister","id":9,"triggers":["g"]}"#,
    r#"{"action":"join","id":10,"pools":["q"]}"#,
    r#"{"action":"leave","id":11,"pools":["q"]}"#,
    r#"{"action":"block_create","id":12,"pool":"p","block_id":"b1","size":4096,"type":"binary"}"#,
    r#"{"action":"block_attach","id":13,"pool":"p","block_id":"b1","mode":"read"}"#,
    r#"{"action":"block_read","id":14,"pool":"p","block_id":"b1","offset":0,"length":16}"#,
    r#"{"action":"block_stat","id":15,"pool":"p","block_id":"b1"}"#,
    r#"{"action":"block_lock","id":16,"pool":"p","block_id":"b1","mode":"exclusive","lease_ms":100,"wait_ms":0}"#,
    r#"{"action":"block_unlock","id":17,"pool":"p","block_id":"b1"}"#,
    r#"{"action":"block_watch","id":18,"pool":"p","block_id":"b1","since":0}"#,
    r#"{"action":"block_notify","pool":"p","block_id":"b1","version":10,"offset":0,"length":16}"#,
    r#"{"action":"block_list","id":19,"pool":"p"}"#,
    r#"{"action":"block_delete","id":20,"pool":"p","block_id":"b1"}"#,
    r#"{"action":"presence_subscribe","id":21,"pool":"p"}"#,
    r#"{"action":"status","id":22}"#,
    r#"{"action":"pool_create","id":23,"pool":"z","owners":["fz"],"policies":{"call":["x"]}}"#,
    r#"{"action":"pool_update","id":24,"pool":"z","description":"d"}"#,
    r#"{"action":"pool_challenge","id":25,"pool":"vault"}"#,
];

/// A header that takes a body, for the damaged binary frames.
const BINARY: &str = r#"{"action":"block_write","id":30,"pool":"p","block_id":"b1","offset":4090}"#;

fn damaged(rng: &mut Rng) -> Vec<u8> {
    damage::damaged(rng, REQUESTS, BINARY)
}

/// Sends `frames` in pieces of random length, so that frames straddle the server's reads.
async fn send_in_pieces(c: &mut Raw, frames: &[u8], rng: &mut Rng) {
    for piece in damage::pieces(rng, frames) {
        c.send_bytes(piece).await;
    }
}

/// `sessions` connections, each handshaken, sent 40 damaged frames and a ping; each must answer
/// the ping without closing, in valid JSON throughout. Returns the server's count of refused
/// messages, read on a fresh connection.
async fn damage(sessions: usize, seed: u64, connect: impl AsyncFn() -> Raw) -> u64 {
    assert_eq!(damage::panics(), 0);
    let mut rng = Rng(seed);
    for session in 0..sessions {
        let mut c = connect().await;
        c.handshake(&format!("fz{session}"), &["p"], &["f"]).await;
        let mut frames = Vec::new();
        for _ in 0..40 {
            frames.extend(damaged(&mut rng));
        }
        send_in_pieces(&mut c, &frames, &mut rng).await;
        c.send(json!({"action": "ping", "id": "probe"})).await;
        // Whatever the damage drew (errors, deliveries to this connection's own trigger,
        // replies), each is one JSON frame, and the probe is answered after them.
        loop {
            match c.recv_frame().await {
                Some(latzero_proto::Frame::Json(b)) => {
                    let v: Value = serde_json::from_slice(&b)
                        .unwrap_or_else(|e| panic!("session {session}: the server sent invalid JSON ({e})"));
                    assert_ne!(v["action"], "closing", "session {session}: {v}");
                    if v["in_reply_to"] == "probe" {
                        assert_eq!(v["action"], "pong", "session {session}: {v}");
                        break;
                    }
                }
                Some(latzero_proto::Frame::Binary { .. }) => {}
                None => panic!("session {session}: the server closed the connection"),
            }
        }
    }
    // The server still takes new connections, and counted what it refused.
    let mut c = connect().await;
    c.handshake("after", &[], &[]).await;
    let st = c.ask(json!({"action": "status", "id": "st"})).await;
    assert_eq!(damage::panics(), 0, "something panicked (see above)");
    st["counters"]["invalid_messages"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn damaged_requests_get_errors_and_leave_the_connection_served() {
    let s = TestServer::start().await;
    let refused = damage(150, 0x9e37_79b9_7f4a_7c15, async || s.raw().await).await;
    assert!(refused > 1000, "{refused}");
    s.stop().await;
}

#[tokio::test]
async fn damaged_requests_over_the_unix_socket() {
    let s = TestServer::start().await;
    let refused = damage(150, 0x2545_f491_4f6c_dd1d, async || Raw::unix(&s.unix).await).await;
    assert!(refused > 1000, "{refused}");
    s.stop().await;
}

#[tokio::test]
async fn damaged_requests_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.tls.enabled = true;
    let srv = Running::start(cfg).await;
    let cert = dir.path().join("config").join(latzero_server::GENERATED_CERT);
    let refused = damage(60, 0x5851_f42d_4c95_7f2d, async || Raw::tls(srv.addr, &cert).await).await;
    assert!(refused > 400, "{refused}");
    srv.stop().await;
}

/// A call whose frame is not valid JSON (NaN, as Python writes it; a string left open) but
/// gives its id before the damage is refused with that id, so its caller fails at once instead
/// of waiting out its deadline; one whose id comes after a break in its outline is refused
/// without one.
#[tokio::test]
async fn a_call_that_is_not_json_is_refused_with_its_id_when_it_gives_one() {
    let s = TestServer::start().await;
    let mut c = s.raw().await;
    c.handshake("c", &["p"], &[]).await;
    for (frame, id) in [
        (
            r#"{"action":"trigger","id":41,"process":"f","pool":"p","data":NaN,"ttl":1000}"#,
            json!(41),
        ),
        (
            r#"{"action":"trigger","data":{"id":1,"x":Infinity},"id":"b","process":"f","pool":"p"}"#,
            json!("b"),
        ),
        (
            r#"{"action":"emit","id":43,"process":"f","pool":"p","data":"open}"#,
            json!(43),
        ),
        (r#"{"action":"trigger","data":[1,2}"id":44}"#, Value::Null),
    ] {
        c.send_text(frame).await;
        let e = c.expect().await;
        assert_eq!(
            (e["code"].as_str(), &e["in_reply_to"]),
            (Some("INVALID_MESSAGE"), &id),
            "{frame}: {e}"
        );
        assert!(
            e["message"].as_str().unwrap_or_default().contains("not valid JSON"),
            "{e}"
        );
    }
    assert_eq!(c.ask(json!({"action": "ping", "id": "p"})).await["action"], "pong");
    s.stop().await;
}

/// A frame announced longer than the limit, after damaged ones, on each transport: the damage
/// is answered, then FRAME_TOO_LARGE, then end of stream; other connections stay served.
#[tokio::test]
async fn a_frame_over_the_limit_closes_only_its_connection() {
    assert_eq!(damage::panics(), 0);
    let limits = Limits {
        max_frame_len: 4096,
        ..Limits::default()
    };
    let s = TestServer::with_limits(limits).await;
    let mut rng = Rng(0xd1b5_4a32_d192_ed03);
    let mut bystander = s.raw().await;
    bystander.handshake("bystander", &["p"], &[]).await;
    for (i, unix) in [false, true, false, true].into_iter().enumerate() {
        let mut c = if unix { Raw::unix(&s.unix).await } else { s.raw().await };
        c.handshake(&format!("big{i}"), &["p"], &[]).await;
        let mut frames = Vec::new();
        for _ in 0..10 {
            frames.extend(damaged(&mut rng));
        }
        // The announced length only: the server must refuse it before waiting for the payload.
        frames.extend((4097 + rng.below(1 << 20) as u32).to_be_bytes());
        send_in_pieces(&mut c, &frames, &mut rng).await;
        let mut last = Value::Null;
        while let Some(f) = c.recv_frame().await {
            if let latzero_proto::Frame::Json(b) = f {
                last = serde_json::from_slice(&b).expect("valid JSON");
            }
        }
        assert_eq!(
            (last["action"].as_str(), last["code"].as_str()),
            (Some("error"), Some("FRAME_TOO_LARGE")),
            "connection {i} (unix: {unix}): the last frame before the close was {last}"
        );
        bystander.sync().await;
    }
    assert_eq!(damage::panics(), 0, "something panicked (see above)");
    s.stop().await;
}

/// Bytes that are not TLS, or not all of it, on the TLS port: each connection is closed (at
/// once, or at the handshake timeout), and the port still serves a real TLS client.
#[tokio::test]
async fn garbage_on_the_tls_port_closes_its_connection() {
    assert_eq!(damage::panics(), 0);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.tls.enabled = true;
    cfg.limits.handshake_timeout = Duration::from_millis(300);
    let srv = Running::start(cfg).await;
    let mut rng = Rng(0xbf58_476d_1ce4_e5b9);
    // At once: many wait out the handshake timeout.
    let mut conns = tokio::task::JoinSet::new();
    for i in 0..60 {
        let mut bytes: Vec<u8> = (0..rng.below(2000)).map(|_| rng.next_u64() as u8).collect();
        // Most look like the start of a TLS handshake record, so they reach the TLS parser.
        if rng.below(4) != 0 {
            let len = rng.below(1 << 14) as u16;
            let head = [0x16, 0x03, rng.below(4) as u8, (len >> 8) as u8, len as u8, 0x01];
            bytes.splice(0..0, head);
        }
        let addr = srv.addr;
        conns.spawn(async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = tcp.write_all(&bytes).await;
            let mut sink = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut sink)).await;
            assert!(read.is_ok(), "connection {i} ({} bytes) was not closed", bytes.len());
        });
    }
    while let Some(done) = conns.join_next().await {
        done.unwrap();
    }
    let cert = dir.path().join("config").join(latzero_server::GENERATED_CERT);
    let mut c = Raw::tls(srv.addr, &cert).await;
    c.handshake("after", &[], &[]).await;
    c.sync().await;
    assert_eq!(damage::panics(), 0, "something panicked (see above)");
    srv.stop().await;
}
