//! A delivered trigger must reach its handler whatever the order of its keys: frames that do not
//! start with `{"action":` (another server implementation, a future version) take the general
//! parsing path. A raw listener stands in for the server so the frame's bytes are exact.
//!
//! The stand-in also plays a server that never answers a call (the call must end at the
//! client's own deadline), one whose reply is not UTF-8 (the call fails when it arrives), and
//! one that writes several replies and then an oversized frame at once (each reply reaches its
//! call, and the oversized frame ends the connection with its reason), and one that grants a
//! lock and drops the connection at once (the grant is not taken for a lease held).

use latzero_client::{Client, Request};
use latzero_proto::frame::{FrameCodec, encode_json};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::codec::Decoder;

async fn read_frame(s: &mut tokio::net::TcpStream, buf: &mut bytes::BytesMut) -> Value {
    let mut codec = FrameCodec::default();
    loop {
        if let Some(f) = codec.decode(buf).unwrap() {
            return serde_json::from_slice(f.json()).unwrap();
        }
        assert!(s.read_buf(buf).await.unwrap() > 0, "client closed");
    }
}

/// Accepts one client on `listener` and completes its handshake as app `app` in pool `p`.
async fn accept_handshake(listener: TcpListener, app: &str) -> (tokio::net::TcpStream, bytes::BytesMut) {
    let (mut s, _) = listener.accept().await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let hs = read_frame(&mut s, &mut buf).await;
    assert_eq!(hs["action"], "handshake");
    let ack = json!({"action":"handshake_ack","in_reply_to":hs["id"],"app_id":app,"pools":["p"],"triggers":[],"protocol_version":"1.0"});
    s.write_all(&encode_json(ack.to_string().as_bytes())).await.unwrap();
    (s, buf)
}

#[tokio::test]
async fn triggers_with_any_key_order_reach_the_handler() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, mut buf) = accept_handshake(listener, "w").await;
        // The client registers its handler before announcing it: wait for that event.
        while read_frame(&mut s, &mut buf).await["action"] != "register" {}
        let mut answers = vec![];
        for (i, text) in [
            // The order the LatZero server writes (fast path).
            r#"{"action":"trigger","id":"1","process":"double","pool":"p","data":{"x":2},"origin":{"app_id":"c"},"ttl":1000}"#,
            // Keys in another order, and an escaped trigger name (general path).
            r#"{"id":"2","data":{"x":5},"pool":"p","process":"d\u006fuble","action":"trigger","origin":{"app_id":"c"}}"#,
        ]
        .into_iter()
        .enumerate()
        {
            s.write_all(&encode_json(text.as_bytes())).await.unwrap();
            let r = loop {
                let f = read_frame(&mut s, &mut buf).await;
                if f["action"] == "response" {
                    break f;
                }
            };
            assert_eq!(r["in_reply_to"], (i + 1).to_string());
            answers.push(r["response"].clone());
        }
        answers
    });
    let client = Client::connect(&format!("latzero://w@{addr}?pools=p")).await.unwrap();
    // `handle` waits for the register ack, which this stand-in server never sends: run it aside.
    let c = client.clone();
    tokio::spawn(async move {
        c.handle("double", |r: Request| async move {
            assert_eq!(r.origin.as_deref(), Some("c"));
            Ok(json!(r.data["x"].as_i64().unwrap() * 2))
        })
        .await
    });
    assert_eq!(server.await.unwrap(), vec![json!(4), json!(10)]);
}

/// A handler's names are held inline up to 24 bytes and on the heap past that: both forms
/// reach it whole, by either parsing path.
#[tokio::test]
async fn a_handler_gets_its_names_whole_short_or_long() {
    const LONG: &str = "a.trigger.name.longer.than.twenty.four.bytes";
    const ORIGIN: &str = "an-app-id-longer-than-twenty-four-bytes";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, mut buf) = accept_handshake(listener, "w").await;
        let mut registered = 0;
        while registered < 2 {
            registered += usize::from(read_frame(&mut s, &mut buf).await["action"] == "register");
        }
        let mut answers = vec![];
        for (i, (process, origin, reordered)) in [
            ("names", "c", false),
            (LONG, ORIGIN, false),
            ("names", ORIGIN, true),
            (LONG, "c", true),
        ]
        .into_iter()
        .enumerate()
        {
            let id = (i + 1).to_string();
            let text = if reordered {
                json!({"id": id, "pool": "p", "process": process, "action": "trigger", "data": null, "origin": {"app_id": origin}}).to_string()
            } else {
                format!(
                    r#"{{"action":"trigger","id":"{id}","process":"{process}","pool":"p","data":null,"origin":{{"app_id":"{origin}"}},"ttl":1000}}"#
                )
            };
            s.write_all(&encode_json(text.as_bytes())).await.unwrap();
            let r = loop {
                let f = read_frame(&mut s, &mut buf).await;
                if f["action"] == "response" {
                    break f;
                }
            };
            assert_eq!(r["in_reply_to"], id);
            answers.push(r["response"].clone());
        }
        answers
    });
    let client = Client::connect(&format!("latzero://w@{addr}?pools=p")).await.unwrap();
    for name in ["names", LONG] {
        let c = client.clone();
        tokio::spawn(async move {
            c.handle(
                name,
                |r: Request| async move { Ok(json!([r.process, r.pool, r.origin])) },
            )
            .await
        });
    }
    assert_eq!(
        server.await.unwrap(),
        vec![
            json!(["names", "p", "c"]),
            json!([LONG, "p", ORIGIN]),
            json!(["names", "p", ORIGIN]),
            json!([LONG, "p", "c"]),
        ]
    );
}

#[tokio::test]
async fn a_call_never_answered_ends_at_its_own_deadline_while_a_longer_one_waits_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, mut buf) = accept_handshake(listener, "c").await;
        // Two triggers arrive; only "long" is ever answered, once "short" has ended.
        let mut ids = std::collections::HashMap::new();
        while ids.len() < 2 {
            let f = read_frame(&mut s, &mut buf).await;
            if f["action"] == "trigger" {
                ids.insert(f["process"].as_str().unwrap().to_owned(), f["id"].clone());
            }
        }
        (s, ids)
    });
    let client = Client::connect(&format!("latzero://c@{addr}?pools=p")).await.unwrap();
    let long = {
        let c = client.clone();
        tokio::spawn(async move { c.request("p", "long").send().await })
    };
    let started = tokio::time::Instant::now();
    // The default wait is 33 s: a deadline of 0.1 s + 1 s grace must wake the client's timer
    // early rather than wait for it.
    let short = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client
            .request("p", "short")
            .timeout(std::time::Duration::from_millis(100))
            .send(),
    )
    .await
    .expect("ended by the client's deadline, not the test's");
    assert!(
        matches!(short, Err(latzero_client::ClientError::NoReply(_))),
        "{short:?}"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(1100));
    // The longer call is still pending, and its answer still reaches it.
    let (mut s, ids) = server.await.unwrap();
    let answer = json!({"action":"response","in_reply_to":ids["long"],"status":"ok","response":"late"});
    s.write_all(&encode_json(answer.to_string().as_bytes())).await.unwrap();
    assert_eq!(long.await.unwrap().unwrap(), json!("late"));
}

#[tokio::test]
async fn a_reply_that_is_not_utf8_fails_its_call_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, mut buf) = accept_handshake(listener, "c").await;
        for _ in 0..2 {
            let f = loop {
                let f = read_frame(&mut s, &mut buf).await;
                if f["action"] == "trigger" {
                    break f;
                }
            };
            // The server's own layout, with a byte that is not UTF-8 in the body.
            let mut frame = format!(
                r#"{{"action":"response","in_reply_to":{},"status":"ok","response":"#,
                f["id"]
            )
            .into_bytes();
            frame.extend_from_slice(b"\"\xff\"}");
            s.write_all(&encode_json(&frame)).await.unwrap();
        }
        s
    });
    let client = Client::connect(&format!("latzero://c@{addr}?pools=p")).await.unwrap();
    let wait = std::time::Duration::from_secs(10);
    // Far sooner than the call's own 30 s wait: the reader fails the call when it reads the frame.
    let parsed = tokio::time::timeout(wait, client.call("p", "x", &json!(1)))
        .await
        .expect("failed at once");
    assert!(
        matches!(&parsed, Err(latzero_client::ClientError::Protocol(m)) if m.contains("not UTF-8")),
        "{parsed:?}"
    );
    let raw = tokio::time::timeout(wait, client.call_raw("p", "x", &json!(1)))
        .await
        .expect("failed at once");
    assert!(
        matches!(&raw, Err(latzero_client::ClientError::Protocol(m)) if m.contains("not UTF-8")),
        "{raw:?}"
    );
    drop(server.await.unwrap());
}

#[tokio::test]
async fn every_frame_of_one_read_is_handled_and_an_oversized_one_behind_them_ends_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, mut buf) = accept_handshake(listener, "c").await;
        let mut ids = vec![];
        while ids.len() < 3 {
            let f = read_frame(&mut s, &mut buf).await;
            if f["action"] == "trigger" {
                ids.push(f["id"].clone());
            }
        }
        // One write: replies to the first two calls in the server's layout, then the length of
        // a frame over the client's limit. The third call is never answered.
        let mut bytes = vec![];
        for (id, answer) in ids.iter().zip(["\"one\"", "\"two\""]) {
            let frame = format!(r#"{{"action":"response","in_reply_to":{id},"status":"ok","response":{answer}}}"#);
            bytes.extend_from_slice(&encode_json(frame.as_bytes()));
        }
        bytes.extend_from_slice(&4097u32.to_be_bytes());
        s.write_all(&bytes).await.unwrap();
        s
    });
    let opts = latzero_client::ClientOptions::default()
        .max_frame_len(4096)
        .reconnect(false);
    let client = Client::connect_with(&format!("latzero://c@{addr}?pools=p"), opts)
        .await
        .unwrap();
    let mut events = client.events();
    let calls = [1, 2, 3].map(|i| {
        let c = client.clone();
        tokio::spawn(async move { c.call_raw("p", "x", &json!(i)).await })
    });
    let [one, two, three] = calls;
    assert_eq!(one.await.unwrap().unwrap().as_str(), "\"one\"");
    assert_eq!(two.await.unwrap().unwrap().as_str(), "\"two\"");
    // Far sooner than the call's own 30 s wait: the connection ends at the oversized frame.
    let wait = std::time::Duration::from_secs(10);
    let third = tokio::time::timeout(wait, three)
        .await
        .expect("failed at once")
        .unwrap();
    assert!(
        matches!(third, Err(latzero_client::ClientError::Disconnected { .. })),
        "{third:?}"
    );
    let reason = loop {
        match events.recv().await.unwrap() {
            latzero_client::ClientEvent::Disconnected { reason, .. } => break reason,
            _ => continue,
        }
    };
    assert!(reason.contains("4097") && reason.contains("4096"), "{reason}");
    drop(server.await.unwrap());
}

/// A delivery without `data` (another server, or a future one, may leave a null payload out)
/// reaches a bytes-level handler as `null`: the payload is not from the frame, so it is copied
/// rather than cut out of it (cutting it panicked, and the client dropped its connection).
#[tokio::test]
async fn a_trigger_without_data_reaches_a_raw_handler_as_null() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, mut buf) = accept_handshake(listener, "w").await;
        while read_frame(&mut s, &mut buf).await["action"] != "register" {}
        let text = r#"{"action":"trigger","id":"1","process":"raw","pool":"p","origin":{"app_id":"c"}}"#;
        s.write_all(&encode_json(text.as_bytes())).await.unwrap();
        loop {
            let f = read_frame(&mut s, &mut buf).await;
            if f["action"] == "response" {
                return f;
            }
        }
    });
    let client = Client::connect(&format!("latzero://w@{addr}?pools=p")).await.unwrap();
    let c = client.clone();
    tokio::spawn(async move {
        c.handle_raw("raw", |r: Request<latzero_client::Payload>| async move {
            assert_eq!(r.data.as_str(), "null");
            Ok(r.data)
        })
        .await
    });
    let r = server.await.unwrap();
    assert_eq!(
        (r["status"].as_str(), &r["response"]),
        (Some("ok"), &Value::Null),
        "{r}"
    );
}

#[tokio::test]
async fn a_lock_granted_just_before_the_connection_drops_is_not_taken_for_held() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, mut buf) = accept_handshake(listener, "w").await;
        let attach = read_frame(&mut s, &mut buf).await;
        assert_eq!(attach["action"], "block_attach");
        let attached = json!({"action":"block_attached","in_reply_to":attach["id"],"mode":"write",
            "block":{"pool":"p","block_id":"b","type":"binary","size":16}});
        s.write_all(&encode_json(attached.to_string().as_bytes()))
            .await
            .unwrap();
        let lock = read_frame(&mut s, &mut buf).await;
        assert_eq!(lock["action"], "block_lock");
        // The grant, and the connection's end right behind it: on this one-thread runtime the
        // client's reader takes both in before the caller is polled for its grant.
        let locked = json!({"action":"block_locked","in_reply_to":lock["id"],"pool":"p","block_id":"b",
            "mode":"exclusive","lease_ms":30000,"renewed":false});
        s.write_all(&encode_json(locked.to_string().as_bytes())).await.unwrap();
    });
    let client = latzero_client::ClientOptions::new()
        .reconnect(false)
        .connect(&format!("latzero://w@{addr}?pools=p"))
        .await
        .unwrap();
    let mut events = client.events();
    let block = client.attach_block_with("p", "b", None, false).await.unwrap();
    // The lease ended with the connection, before the app could use it: not a lock held.
    let got = block.lock(true, std::time::Duration::ZERO).await;
    assert!(
        matches!(got, Err(latzero_client::ClientError::Disconnected { .. })),
        "{got:?}"
    );
    server.await.unwrap();
    assert!(matches!(
        events.recv().await.unwrap(),
        latzero_client::ClientEvent::Disconnected {
            reconnecting: false,
            ..
        }
    ));
}
