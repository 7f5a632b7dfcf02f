//! Damaged requests, well framed: every kind of request with its JSON broken or its fields
//! swapped for values of the wrong type, binary frames with lying headers, empty frames. Each
//! connection must stay served (a `ping` after the damage gets its `pong`), every frame the
//! server sends must be valid JSON, and nothing may panic. A fixed seed, so a failure repeats.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::TestServer;
use latzero_proto::frame::{encode_binary, encode_json};
use serde_json::{Value, json};

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

/// Values put in place of a field's own.
const ODD: &[&str] = &[
    "null",
    "true",
    "0",
    "-1",
    "1.5e308",
    "18446744073709551616",
    "\"\"",
    "[]",
    "{}",
    "[[[[]]]]",
    "{\"a\":{\"b\":{}}}",
    "\"\\u0000\"",
    "\"é\"",
    "\"\\ud800\"",
    "1e999",
];

/// Bytes put into a request's text.
const NOISE: &[u8] = b"{}[]\",:\\0x\x00\xff\xc3 ";

/// xorshift64: the same damage on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }
}

/// One damaged frame, framed as the protocol asks.
fn damaged(rng: &mut Rng) -> Vec<u8> {
    let text = *rng.pick(REQUESTS);
    match rng.below(10) {
        // A field given a value of another type, dropped, or added.
        0..=3 => {
            let mut v: Value = serde_json::from_str(text).unwrap();
            let m = v.as_object_mut().unwrap();
            let keys: Vec<String> = m.keys().cloned().chain(["id".into(), "extra".into()]).collect();
            for _ in 0..=rng.below(3) {
                let k = rng.pick(&keys).clone();
                if rng.below(4) == 0 {
                    m.remove(&k);
                } else {
                    let odd = *rng.pick(ODD);
                    m.insert(k, serde_json::from_str(odd).unwrap_or(json!(1)));
                }
            }
            // serde_json cannot hold `1e999` or a lone surrogate (they became 1 above), so a
            // quarter of these also get an odd value spliced in as text after the first key.
            let mut out = v.to_string();
            if rng.below(4) == 0 {
                out = out.replacen(':', &format!(":{},", rng.pick(ODD)), 1);
            }
            encode_json(out.as_bytes()).to_vec()
        }
        // Its text broken: bytes changed, dropped, inserted, or the end cut off.
        4..=7 => {
            let mut b = text.as_bytes().to_vec();
            for _ in 0..=rng.below(4) {
                let at = rng.below(b.len() + 1);
                match rng.below(4) {
                    0 if at < b.len() => b[at] = *rng.pick(NOISE),
                    1 if at < b.len() => {
                        b.remove(at);
                    }
                    2 => b.insert(at, *rng.pick(NOISE)),
                    _ => b.truncate(at.max(1)),
                }
            }
            encode_json(&b).to_vec()
        }
        // A binary frame whose header lies about its length, or carries a request that does
        // not take a body.
        8 => {
            let header = if rng.below(2) == 0 {
                br#"{"action":"block_write","id":30,"pool":"p","block_id":"b1","offset":4090}"#.as_slice()
            } else {
                text.as_bytes()
            };
            let mut f = encode_binary(header, &[7; 20]).to_vec();
            if rng.below(2) == 0 {
                // The header length (after the frame length and the marker byte).
                let lie = rng.below(300) as u32;
                f[5..9].copy_from_slice(&lie.to_be_bytes());
            }
            f
        }
        // Nothing at all.
        _ => 0u32.to_be_bytes().to_vec(),
    }
}

#[tokio::test]
async fn damaged_requests_get_errors_and_leave_the_connection_served() {
    let panics = Arc::new(AtomicUsize::new(0));
    let counted = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));

    let s = TestServer::start().await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for session in 0..150 {
        let mut c = s.raw().await;
        c.handshake(&format!("fz{session}"), &["p"], &["f"]).await;
        let mut frames = Vec::new();
        for _ in 0..40 {
            frames.extend(damaged(&mut rng));
        }
        c.send_bytes(&frames).await;
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
    let mut c = s.raw().await;
    c.handshake("after", &[], &[]).await;
    let st = c.ask(json!({"action": "status", "id": "st"})).await;
    let refused = st["counters"]["invalid_messages"].as_u64().unwrap_or(0);
    assert!(refused > 1000, "{st}");
    assert_eq!(panics.load(Ordering::SeqCst), 0, "something panicked (see above)");
    s.stop().await;
}
