//! Calls through an in-process server: the seed examples, routing, correlation, every way a
//! call can end.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Raw, TestServer};
use latzero_client::{Client, ClientError, ErrorCode, HandlerError, Request};
use serde_json::{Value, json};

use latzero_proto::seed::{HANDSHAKE as SEED_HANDSHAKE, RESPONSE as SEED_RESPONSE, TRIGGER as SEED_TRIGGER};

/// A raw app `handler` in pool `p` with the trigger `f`, and a raw app `c` in `p` to call it.
async fn handler_and_caller(s: &TestServer, handler: &str) -> (Raw, Raw) {
    let mut h = s.raw().await;
    h.handshake(handler, &["p"], &["f"]).await;
    let mut c = s.raw().await;
    c.handshake("c", &["p"], &[]).await;
    (h, c)
}

#[tokio::test]
async fn seed_examples_work_verbatim() {
    let s = TestServer::start().await;
    let mut handler = s.raw().await;
    handler.handshake("targetApp", &["alpha"], &["foo"]).await;
    let mut caller = s.raw().await;
    caller.send_text(SEED_HANDSHAKE).await;
    let ack = caller.expect().await;
    assert_eq!(ack["action"], "handshake_ack");
    assert_eq!(ack["app_id"], "myApp");
    assert_eq!(ack["pools"], json!(["alpha"]));
    assert_eq!(ack["triggers"], json!(["bar", "foo"]));
    assert_eq!(ack["protocol_version"], "1.0");

    caller.send_text(SEED_TRIGGER).await;
    let delivered = handler.expect().await;
    assert_eq!(delivered["action"], "trigger");
    assert_eq!(delivered["process"], "foo");
    assert_eq!(delivered["pool"], "alpha");
    assert_eq!(delivered["data"], json!({"x": 42}));
    // The server states who really called, whatever the message claimed.
    assert_eq!(delivered["origin"], json!({"app_id": "myApp"}));
    let hop = delivered["id"].as_str().unwrap().to_owned();
    assert_ne!(hop, "uuid-v4", "handlers see per-hop ids");

    let answer = SEED_RESPONSE.replace("\"uuid-v4\"", &format!("\"{hop}\""));
    handler.send_text(&answer).await;
    let got = caller.expect().await;
    assert_eq!(got, serde_json::from_str::<Value>(SEED_RESPONSE).unwrap());
    s.stop().await;
}

#[tokio::test]
async fn type_alias_and_same_ids_from_two_callers() {
    let s = TestServer::start().await;
    let mut h = s.raw().await;
    h.handshake("h", &["p"], &["echo"]).await;
    let mut a = s.raw().await;
    a.handshake("a", &["p"], &[]).await;
    let mut b = s.raw().await;
    b.send_text(r#"{"type":"handshake","app_id":"b","pools":["p"]}"#).await;
    assert_eq!(b.expect().await["action"], "handshake_ack");

    a.send(json!({"action":"trigger","id":"same","process":"echo","pool":"p","data":"from-a"}))
        .await;
    b.send(json!({"type":"trigger","id":"same","process":"echo","pool":"p","data":"from-b"}))
        .await;
    let t1 = h.expect().await;
    let t2 = h.expect().await;
    assert_ne!(t1["id"], t2["id"]);
    // Answer in reverse order; each caller must get its own data back.
    for t in [t2, t1] {
        h.send(json!({"action":"response","in_reply_to":t["id"],"status":"ok","response":t["data"]}))
            .await;
    }
    assert_eq!(
        a.expect().await,
        json!({"action":"response","in_reply_to":"same","status":"ok","response":"from-a"})
    );
    assert_eq!(
        b.expect().await,
        json!({"action":"response","in_reply_to":"same","status":"ok","response":"from-b"})
    );
    s.stop().await;
}

#[tokio::test]
async fn a_response_from_a_connection_not_asked_is_rejected() {
    let s = TestServer::start().await;
    let mut h = s.raw().await;
    h.handshake("h", &["p"], &["f"]).await;
    let mut intruder = s.raw().await;
    intruder.handshake("x", &["p"], &["f2"]).await;
    let mut c = s.raw().await;
    c.handshake("c", &["p"], &[]).await;
    c.send(json!({"action":"trigger","id":1,"process":"f","pool":"p"}))
        .await;
    let t = h.expect().await;
    intruder
        .send(json!({"action":"response","id":"r","in_reply_to":t["id"],"status":"ok","response":"forged"}))
        .await;
    let e = intruder.expect().await;
    assert_eq!(e["code"], "UNKNOWN_CALL", "{e}");
    assert_eq!(e["in_reply_to"], "r");
    h.send(json!({"action":"response","in_reply_to":t["id"],"status":"ok","response":"real"}))
        .await;
    assert_eq!(c.expect().await["response"], "real");
    s.stop().await;
}

/// A response the server refuses (not valid JSON, an ill-typed field) that still names its call
/// fails that call at once with a handler error saying so: the caller is not left to time out
/// as if the handler had never answered. The handler's INVALID_MESSAGE names the call.
#[tokio::test]
async fn a_refused_response_fails_its_call_at_once() {
    let s = TestServer::start().await;
    let (mut h, mut c) = handler_and_caller(&s, "h").await;
    let broken = [
        // The SDK's layout with a body that is not JSON.
        r#"{"action":"response","in_reply_to":HOP,"status":"ok","response":"\q"}"#,
        // Valid JSON, another key order, a status that is neither ok nor error.
        r#"{"status":"okay","in_reply_to":HOP,"action":"response","response":1}"#,
    ];
    for (id, text) in broken.into_iter().enumerate() {
        c.send(json!({"action":"trigger","id":id,"process":"f","pool":"p","ttl":60000}))
            .await;
        let t = h.expect().await;
        h.send_text(&text.replace("HOP", &t["id"].to_string())).await;
        let e = h.expect().await;
        assert_eq!(e["code"], "INVALID_MESSAGE", "{e}");
        let told = e["message"].as_str().unwrap();
        assert!(told.contains(&format!("in_reply_to {}", t["id"])), "{e}");
        let r = c.expect().await;
        assert_eq!(
            (r["action"].as_str(), r["in_reply_to"].as_u64(), r["status"].as_str()),
            (Some("response"), Some(id as u64), Some("error")),
            "{r}"
        );
        let why = r["error"]["message"].as_str().unwrap();
        assert!(
            why.contains("handler 'h' answered with a response the server refused"),
            "{r}"
        );
    }
    let st = c.ask(json!({"action":"status","id":"st"})).await;
    assert_eq!(st["calls_in_flight"], 0, "{st}");
    s.stop().await;
}

/// A payload nested past what any client can parse (PROTOCOL.md §3) is never forwarded: a call's
/// data is refused to its caller, a response's body fails the call at once, and both
/// connections stay up.
#[tokio::test]
async fn payloads_nested_too_deep_are_refused_not_forwarded() {
    let s = TestServer::start().await;
    let (mut h, mut c) = handler_and_caller(&s, "h").await;
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let max = latzero_proto::message::MAX_NESTING;
    c.send_text(&format!(
        r#"{{"action":"trigger","id":1,"process":"f","pool":"p","data":{}}}"#,
        deep(max + 1)
    ))
    .await;
    let e = c.expect().await;
    assert_eq!(
        (e["code"].as_str(), e["in_reply_to"].as_u64()),
        (Some("INVALID_MESSAGE"), Some(1)),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("levels deep"), "{e}");
    c.send_text(&format!(
        r#"{{"action":"emit","id":2,"process":"f","pool":"p","data":{}}}"#,
        deep(100_000)
    ))
    .await;
    assert_eq!(c.expect().await["code"], "INVALID_MESSAGE");
    assert_eq!(h.sync().await, Vec::<Value>::new(), "nothing reached the handler");
    // At the limit it goes through, and the handler answers past it.
    c.send_text(&format!(
        r#"{{"action":"trigger","id":3,"process":"f","pool":"p","data":{}}}"#,
        deep(max)
    ))
    .await;
    let t = h.expect().await;
    assert_eq!(t["data"].to_string(), deep(max));
    h.send_text(&format!(
        r#"{{"action":"response","in_reply_to":{},"status":"ok","response":{}}}"#,
        t["id"],
        deep(max + 1)
    ))
    .await;
    assert_eq!(h.expect().await["code"], "INVALID_MESSAGE");
    let r = c.expect().await;
    assert_eq!(
        (r["in_reply_to"].as_u64(), r["status"].as_str()),
        (Some(3), Some("error")),
        "{r}"
    );
    assert!(r["error"]["message"].as_str().unwrap().contains("refused"), "{r}");
    assert_eq!(c.ask(json!({"action":"ping","id":"p"})).await["action"], "pong");
    assert_eq!(h.ask(json!({"action":"ping","id":"p"})).await["action"], "pong");
    s.stop().await;
}

/// Of two handlers, one stops answering: the calls after its first go to the other (round-robin
/// alone sent it every other one, each to wait out its ttl), and `status` shows each app's
/// calls made and calls being handled.
#[tokio::test]
async fn a_stuck_handler_is_passed_over_and_status_shows_the_load() {
    let s = TestServer::start().await;
    let (mut stuck, mut c) = handler_and_caller(&s, "stuck").await;
    let mut live = s.raw().await;
    live.handshake("live", &["p"], &["f"]).await;
    // Calls until the stuck one has taken one (the first or the second, by the cursor).
    let call = |id: u64| json!({"action":"trigger","id":id,"process":"f","pool":"p","ttl":60000});
    for id in 0.. {
        c.send(call(id)).await;
        if !stuck.sync().await.is_empty() {
            break;
        }
        let t = live.expect().await;
        live.send(json!({"action":"response","in_reply_to":t["id"],"status":"ok"}))
            .await;
        assert_eq!(c.expect().await["in_reply_to"], id);
    }
    for id in 100..120 {
        c.send(call(id)).await;
        let t = live.expect().await;
        live.send(json!({"action":"response","in_reply_to":t["id"],"status":"ok"}))
            .await;
        assert_eq!(c.expect().await["in_reply_to"], id);
    }
    assert_eq!(stuck.sync().await, Vec::<Value>::new(), "nothing more reached it");
    let st = c.ask(json!({"action":"status","id":"st"})).await;
    let app = |name: &str| {
        st["apps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["app_id"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (
            app("c")["calls_in_flight"].as_u64(),
            app("c")["calls_handling"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(app("stuck")["calls_handling"], 1, "{st}");
    assert_eq!(app("live")["calls_handling"], 0, "{st}");
    s.stop().await;
}

#[tokio::test]
async fn sdk_round_robin_destination_and_errors() {
    let s = TestServer::start().await;
    let mut workers = vec![];
    for name in ["w1", "w2"] {
        let w = Client::connect(&s.url(&format!("{name}?pools=alpha"))).await.unwrap();
        let me = name.to_owned();
        w.handle("who", move |_req: Request| {
            let me = me.clone();
            async move { Ok(json!(me)) }
        })
        .await
        .unwrap();
        w.handle("fail", |_req: Request| async { Err(HandlerError::msg("nope")) })
            .await
            .unwrap();
        workers.push(w);
    }
    let c = Client::connect(&s.unix_url("caller?pools=alpha")).await.unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        let v = c.call("alpha", "who", &()).await.unwrap();
        *seen.entry(v.as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(seen.get("w1"), Some(&5));
    assert_eq!(seen.get("w2"), Some(&5));
    for _ in 0..4 {
        assert_eq!(c.call_to("alpha", "who", "w2", &()).await.unwrap(), "w2");
    }
    match c.call("alpha", "fail", &()).await {
        Err(ClientError::Handler(v)) => assert_eq!(v, json!({"message": "nope"})),
        other => panic!("{other:?}"),
    }
    let e = c.call("alpha", "missing", &()).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoHandler));
    let e = c.call("beta", "who", &()).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotInPool));
    let e = c.call_to("alpha", "who", "nobody", &()).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotInPool));
    s.stop().await;
}

#[tokio::test]
async fn timeout_fires_once_and_the_late_response_is_counted() {
    let s = TestServer::start().await;
    let (mut h, mut c) = handler_and_caller(&s, "slow").await;
    c.send(json!({"action":"trigger","id":"t","process":"f","pool":"p","ttl":30}))
        .await;
    let t = h.expect().await;
    let e = c.expect().await;
    assert_eq!(e["action"], "error");
    assert_eq!(e["code"], "TIMEOUT");
    assert_eq!(e["in_reply_to"], "t");
    assert_eq!(e["handler_may_still_run"], true);
    assert_eq!(e["handler"], "slow");
    // The late response is dropped: the handler gets no error, the caller nothing more.
    h.send(json!({"action":"response","in_reply_to":t["id"],"status":"ok","response":1}))
        .await;
    assert!(h.sync().await.is_empty());
    assert!(c.sync().await.is_empty());
    c.send(json!({"action":"status","id":"s"})).await;
    let st = c.expect().await;
    assert_eq!(st["counters"]["late_responses"], 1);
    assert_eq!(st["counters"]["calls_timed_out"], 1);
    assert_eq!(st["calls_in_flight"], 0);
    s.stop().await;
}

/// A timeout shorter than the wire's millisecond is sent as 1 ms and times out, where it was
/// sent as `"ttl": 0` and refused as an invalid message.
#[tokio::test]
async fn a_sub_millisecond_timeout_times_out() {
    let s = TestServer::start().await;
    let (mut h, _c) = handler_and_caller(&s, "slow").await;
    let caller = Client::connect(&s.url("sdk?pools=p")).await.unwrap();
    let call = caller
        .request("p", "f")
        .data(&1)
        .timeout(Duration::from_micros(500))
        .send();
    let (r, delivered) = tokio::join!(call, h.expect());
    assert_eq!(delivered["ttl"], 1, "{delivered}");
    let e = r.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Timeout), "{e}");
    s.stop().await;
}

#[tokio::test]
async fn handler_gone_mid_call_fails_the_caller_at_once() {
    let s = TestServer::start().await;
    let h = Client::connect(&s.url("h?pools=p")).await.unwrap();
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let entered = std::sync::Mutex::new(Some(entered_tx));
    h.handle("hang", move |_r: Request| {
        if let Some(tx) = entered.lock().unwrap().take() {
            let _ = tx.send(());
        }
        std::future::pending::<Result<Value, HandlerError>>()
    })
    .await
    .unwrap();
    let c = Client::connect(&s.url("c?pools=p")).await.unwrap();
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.request("p", "hang").timeout(Duration::from_secs(600)).send().await }
    });
    entered_rx.await.unwrap();
    h.close();
    let e = call.await.unwrap().unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::HandlerGone), "{e}");
    s.stop().await;
}

/// Emits return once queued: a client dropped straight after them still writes them all, and
/// every one reaches the handler, in order. Two workers, so that the emitter's connection task
/// may see the close before its writer has run (a race that once dropped such emits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emits_queued_by_a_client_dropped_at_once_all_reach_the_handler() {
    let s = TestServer::start().await;
    let r = Client::connect(&s.url("r?pools=p")).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    r.handle("ev", move |q: Request| {
        let _ = tx.send(q.data);
        async { Ok(Value::Null) }
    })
    .await
    .unwrap();
    for round in 0..20 {
        let e = Client::connect(&s.url(&format!("e{round}?pools=p"))).await.unwrap();
        for i in 0..100 {
            e.emit("p", "ev", &json!([round, i])).await.unwrap();
        }
        drop(e);
        for i in 0..100 {
            let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
            assert_eq!(got.ok().flatten(), Some(json!([round, i])), "round {round}");
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn a_closed_client_fails_its_calls_and_emits_with_closed_in_every_clone() {
    let s = TestServer::start().await;
    let h = Client::connect(&s.url("h?pools=p")).await.unwrap();
    h.handle("echo", |r: Request| async move { Ok(r.data) }).await.unwrap();
    let c = Client::connect(&s.url("c?pools=p")).await.unwrap();
    let other = c.clone();
    assert_eq!(c.call("p", "echo", &1).await.unwrap(), 1);
    c.close();
    // At once: the connection task may not have seen the close yet, the calls have.
    let e = other.call_raw("p", "echo", &2).await.unwrap_err();
    assert!(matches!(e, ClientError::Closed), "{e}");
    let e = c.call("p", "echo", &3).await.unwrap_err();
    assert!(matches!(e, ClientError::Closed), "{e}");
    let e = other.emit("p", "echo", &4).await.unwrap_err();
    assert!(matches!(e, ClientError::Closed), "{e}");
    s.stop().await;
}

#[tokio::test]
async fn calls_responses_and_emits_are_refused_before_the_handshake_and_in_binary_frames() {
    let s = TestServer::start().await;
    let mut h = s.raw().await;
    h.handshake("h", &["p"], &["f"]).await;
    let code = |v: &Value| v["code"].as_str().unwrap_or_default().to_owned();
    // In the SDK's layout (the server's fast path) and in another key order (the general one).
    let mut c = s.raw().await;
    c.send_text(r#"{"action":"trigger","id":1,"process":"f","pool":"p","data":1,"ttl":5000}"#)
        .await;
    let e = c.expect().await;
    assert_eq!(
        (code(&e), e["in_reply_to"].clone()),
        ("HANDSHAKE_REQUIRED".into(), json!(1))
    );
    let e = c
        .ask(json!({"action":"trigger","id":2,"pool":"p","process":"f","data":1}))
        .await;
    assert_eq!(code(&e), "HANDSHAKE_REQUIRED");
    c.send_text(r#"{"action":"emit","id":3,"process":"f","pool":"p","data":1}"#)
        .await;
    let e = c.expect().await;
    assert_eq!(
        (code(&e), e["in_reply_to"].clone()),
        ("HANDSHAKE_REQUIRED".into(), json!(3))
    );
    c.send_text(r#"{"action":"response","in_reply_to":4,"status":"ok","response":1}"#)
        .await;
    assert_eq!(code(&c.expect().await), "HANDSHAKE_REQUIRED");

    // After it, a call in a binary frame is refused and reaches nobody.
    c.handshake("c", &["p"], &[]).await;
    c.send_binary(
        json!({"action":"trigger","id":5,"process":"f","pool":"p","data":1}),
        b"x",
    )
    .await;
    let e = c.expect().await;
    assert_eq!(
        (code(&e), e["in_reply_to"].clone()),
        ("INVALID_MESSAGE".into(), json!(5))
    );
    c.send_text(r#"{"action":"trigger","id":6,"process":"f","pool":"p","data":1,"ttl":5000}"#)
        .await;
    let delivered = h.expect().await;
    assert_eq!(
        (delivered["action"].clone(), delivered["data"].clone()),
        (json!("trigger"), json!(1))
    );
    h.send(json!({"action":"response","in_reply_to":delivered["id"],"status":"ok","response":7}))
        .await;
    let r = c.expect().await;
    assert_eq!(
        (r["in_reply_to"].clone(), r["response"].clone()),
        (json!(6), json!(7)),
        "{r}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_response_names_its_hop_as_a_string_or_a_number() {
    let s = TestServer::start().await;
    let (mut h, mut c) = handler_and_caller(&s, "h").await;
    for (id, numeric) in [(1, false), (2, true)] {
        c.send(json!({"action":"trigger","id":id,"process":"f","pool":"p","data":id}))
            .await;
        let t = h.expect().await;
        let hop = t["id"].as_str().expect("the server writes the hop id as a string");
        let in_reply_to = if numeric {
            json!(hop.parse::<u64>().unwrap())
        } else {
            json!(hop)
        };
        h.send(json!({"action":"response","in_reply_to":in_reply_to,"status":"ok","response":id * 10}))
            .await;
        let r = c.expect().await;
        assert_eq!(
            (r["in_reply_to"].clone(), r["response"].clone()),
            (json!(id), json!(id * 10)),
            "{r}"
        );
    }
    // Anything else names no call of this connection.
    for bad in [json!("\"1\""), json!("x"), json!(-1), json!("")] {
        h.send(json!({"action":"response","in_reply_to":bad,"status":"ok","response":0}))
            .await;
        let e = h.expect().await;
        assert_eq!(
            (e["action"].as_str(), e["code"].as_str()),
            (Some("error"), Some("UNKNOWN_CALL")),
            "{bad}: {e}"
        );
    }
    assert!(c.sync().await.is_empty());
    s.stop().await;
}

/// A call of trigger `f` in pool `p` carrying `id` as its id and its data, framed, in exactly the
/// layout the Rust SDK writes (which the server routes where it lies in its read buffer).
fn sdk_call(id: u64) -> bytes::Bytes {
    latzero_proto::frame::encode_json(
        format!(r#"{{"action":"trigger","id":{id},"process":"f","pool":"p","data":{id},"ttl":5000}}"#).as_bytes(),
    )
}

/// The server routes calls, responses and emits in the SDK's layout where they lie in its read
/// buffer; a frame that arrives in pieces, or several in one read, must read the same.
#[tokio::test]
async fn frames_in_the_sdks_layout_are_routed_whether_they_arrive_in_pieces_or_together() {
    use latzero_proto::frame::encode_json;
    let s = TestServer::start().await;
    let (mut h, mut c) = handler_and_caller(&s, "h").await;
    let call = sdk_call;
    // A byte at a time: routed once, when the frame is whole.
    for b in call(1).iter() {
        c.send_bytes(&[*b]).await;
    }
    // Three in one write (two calls and an emit), then a call's frame cut in two.
    let emit = encode_json(br#"{"action":"emit","process":"f","pool":"p","data":4}"#);
    let three: Vec<u8> = [call(2), call(3), emit].concat();
    c.send_bytes(&three).await;
    let five = call(5);
    c.send_bytes(&five[..9]).await;
    c.send_bytes(&five[9..]).await;
    for want in [1, 2, 3, 4, 5] {
        let t = h.expect().await;
        assert_eq!(t["data"], want, "{t}");
        if t["action"] == "trigger" {
            let hop = t["id"].as_str().unwrap();
            let response = format!(
                r#"{{"action":"response","in_reply_to":"{hop}","status":"ok","response":{}}}"#,
                want * 10
            );
            // The handler's responses in pieces too.
            let frame = encode_json(response.as_bytes());
            let (a, b) = frame.split_at(frame.len() / 2);
            h.send_bytes(a).await;
            h.send_bytes(b).await;
        } else {
            assert_eq!(t["action"], "emit", "{t}");
        }
    }
    for want in [1, 2, 3, 5] {
        let r = c.expect().await;
        assert_eq!(
            (r["in_reply_to"].clone(), r["response"].clone()),
            (json!(want), json!(want * 10)),
            "{r}"
        );
    }
    assert!(c.sync().await.is_empty());
    assert!(h.sync().await.is_empty());
    s.stop().await;
}

/// The session reads the directory once for a run of calls and emits from one read, and must
/// let go of it before any other request: a `register` between two calls in one write takes the
/// directory for writing on the same thread (holding the read lock through it deadlocks the
/// runtime: the test hangs, and nextest's slow-timeout fails it).
#[tokio::test]
async fn a_registration_between_calls_in_one_write_is_answered_and_so_are_the_calls() {
    use latzero_proto::frame::encode_json;
    let s = TestServer::start().await;
    let (mut h, mut c) = handler_and_caller(&s, "h").await;
    let call = sdk_call;
    let register = encode_json(br#"{"action":"register","id":"r","triggers":["g"]}"#);
    let emit = encode_json(br#"{"action":"emit","process":"f","pool":"p","data":3}"#);
    c.send_bytes(&[call(1), register, call(2), emit, call(4)].concat())
        .await;
    for want in [1, 2, 3, 4] {
        let t = h.expect().await;
        assert_eq!(t["data"], want, "{t}");
        if t["action"] == "trigger" {
            let hop = t["id"].as_str().unwrap();
            h.send_text(&format!(
                r#"{{"action":"response","in_reply_to":"{hop}","status":"ok","response":{want}}}"#
            ))
            .await;
        }
    }
    let mut got = vec![];
    for _ in 0..4 {
        got.push(c.expect().await);
    }
    let ack = got
        .iter()
        .find(|f| f["in_reply_to"] == "r")
        .expect("the register's ack");
    assert_eq!(
        (&ack["action"], &ack["triggers"]),
        (&json!("ack"), &json!(["g"])),
        "{ack}"
    );
    let answered: Vec<&Value> = got
        .iter()
        .filter(|f| f["action"] == "response")
        .map(|f| &f["response"])
        .collect();
    assert_eq!(answered, [&json!(1), &json!(2), &json!(4)], "{got:?}");
    assert!(c.sync().await.is_empty());
    s.stop().await;
}

/// A handler replaced must not answer again, even while it is still alive elsewhere (here, in an
/// in-process call that waits), and a handler replaced or removed must be dropped: a cache of
/// handlers in the SDK's reader (tried, not kept) would have to hold to both.
#[tokio::test]
async fn a_replaced_handler_answers_no_more_and_a_removed_one_is_dropped() {
    use std::sync::Arc;
    let s = TestServer::start().await;
    let h = Client::connect(&s.url("h?pools=p")).await.unwrap();
    let c = Client::connect(&s.url("c?pools=p")).await.unwrap();
    let (started, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let first = Arc::new(());
    h.handle("f", {
        let (started, release, first) = (started.clone(), release.clone(), first.clone());
        move |r: Request| {
            let (started, release, _first) = (started.clone(), release.clone(), first.clone());
            async move {
                // An in-process call (no origin) waits, holding this handler.
                if r.origin.is_none() {
                    started.notify_one();
                    release.notified().await;
                }
                Ok(json!(1))
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(c.call("p", "f", &()).await.unwrap(), 1);
    assert_eq!(c.call("p", "f", &()).await.unwrap(), 1);
    let local = tokio::spawn({
        let h = h.clone();
        async move { h.call("p", "f", &()).await }
    });
    started.notified().await;
    let second = Arc::new(());
    h.handle("f", {
        let second = second.clone();
        move |_r: Request| {
            let _second = second.clone();
            async { Ok(json!(2)) }
        }
    })
    .await
    .unwrap();
    assert_eq!(c.call("p", "f", &()).await.unwrap(), 2, "the replaced handler answered");
    release.notify_one();
    assert_eq!(local.await.unwrap().unwrap(), 1);
    assert_eq!(Arc::strong_count(&first), 1, "the replaced handler is still alive");
    h.unhandle("f").await.unwrap();
    assert_eq!(Arc::strong_count(&second), 1, "the removed handler is still alive");
    s.stop().await;
}

#[tokio::test]
async fn in_process_short_circuit_needs_no_server_round_trip() {
    let s = TestServer::start().await;
    let c = Client::connect(&s.url("self?pools=p")).await.unwrap();
    c.handle("double", |r: Request| async move {
        assert!(r.origin.is_none(), "in-process calls have no origin");
        Ok(json!(r.data.as_i64().unwrap() * 2))
    })
    .await
    .unwrap();
    let before = latzero_client::admin::status(&latzero_proto::Endpoint::Tcp(s.addr.to_string()).into())
        .await
        .unwrap();
    assert_eq!(c.call("p", "double", &21).await.unwrap(), 42);
    let after = latzero_client::admin::status(&latzero_proto::Endpoint::Tcp(s.addr.to_string()).into())
        .await
        .unwrap();
    assert_eq!(before["counters"]["calls_total"], after["counters"]["calls_total"]);
    s.stop().await;
}

#[tokio::test]
async fn a_payload_that_cannot_be_serialised_fails_at_once() {
    let s = TestServer::start().await;
    let h = Client::connect(&s.url("h?pools=p")).await.unwrap();
    h.handle("f", |_r: Request| async { Ok(Value::Null) }).await.unwrap();
    let c = Client::connect(&s.url("c?pools=p")).await.unwrap();
    let bad: HashMap<(i32, i32), i32> = [((1, 2), 3)].into_iter().collect();
    let e = c
        .request("p", "f")
        .timeout(Duration::from_secs(600))
        .data(&bad)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Json(_)), "{e:?}");
    let e = c.call("p", "f", &bad).await.unwrap_err();
    assert!(matches!(e, ClientError::Json(_)), "{e:?}");
    let e = c.emit("p", "f", &bad).await.unwrap_err();
    assert!(matches!(e, ClientError::Json(_)), "{e:?}");
    // The connection is fine afterwards.
    assert_eq!(c.call("p", "f", &1).await.unwrap(), Value::Null);
    s.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_answers_with_an_error_inline_or_after_an_await() {
    let s = TestServer::start().await;
    let h = Client::connect(&s.url("h?pools=p")).await.unwrap();
    h.handle("boom_now", |_r: Request| async { panic!("at once") })
        .await
        .unwrap();
    h.handle("boom_later", |_r: Request| async {
        tokio::task::yield_now().await;
        panic!("after an await")
    })
    .await
    .unwrap();
    let c = Client::connect(&s.url("c?pools=p")).await.unwrap();
    for trigger in ["boom_now", "boom_later"] {
        match c.call("p", trigger, &()).await {
            Err(ClientError::Handler(v)) => {
                assert!(v["message"].as_str().unwrap().contains("panicked"), "{trigger}: {v}")
            }
            other => panic!("{trigger}: {other:?}"),
        }
    }
    // The handler app is still serving.
    h.handle("ok", |_r: Request| async { Ok(json!(1)) }).await.unwrap();
    assert_eq!(c.call("p", "ok", &()).await.unwrap(), 1);
    s.stop().await;
}

#[tokio::test]
async fn raw_calls_and_handlers_carry_the_payload_text_byte_for_byte() {
    use latzero_client::Payload;
    let s = TestServer::start().await;
    let w = Client::connect(&s.unix_url("w?pools=alpha")).await.unwrap();
    w.handle_raw("echo", |r: Request<Payload>| async move {
        assert_eq!(r.origin.as_deref(), Some("c"));
        Ok(r.data)
    })
    .await
    .unwrap();
    w.handle_raw("fail", |_r: Request<Payload>| async {
        Err(HandlerError::msg("raw nope"))
    })
    .await
    .unwrap();
    w.handle(
        "double",
        |r: Request| async move { Ok(json!(r.data.as_i64().unwrap() * 2)) },
    )
    .await
    .unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    w.handle_raw("ev", move |r: Request<Payload>| {
        let _ = seen_tx.send((r.data.as_str().to_owned(), r.is_emit));
        async { Ok(Payload::null()) }
    })
    .await
    .unwrap();

    let c = Client::connect(&s.url("c?pools=alpha")).await.unwrap();
    // Spacing, key order and number spelling all survive: nothing is parsed into a tree.
    let text = r#"{ "b" : 1, "a": [1, 2.50, "\u00e9"] }"#;
    let p = Payload::from_text(text).unwrap();
    assert_eq!(c.call_raw("alpha", "echo", &p).await.unwrap().as_str(), text);
    let got = c
        .request("alpha", "echo")
        .timeout(Duration::from_secs(600))
        .data(&p)
        .send_raw()
        .await
        .unwrap();
    assert_eq!(got.as_str(), text);
    // Either form on either side.
    assert_eq!(
        c.call("alpha", "echo", &json!({"x": 1})).await.unwrap(),
        json!({"x": 1})
    );
    assert_eq!(c.call_raw("alpha", "double", &21).await.unwrap().as_str(), "42");
    for e in [
        c.call_raw("alpha", "fail", &()).await.unwrap_err(),
        c.call("alpha", "fail", &()).await.unwrap_err(),
    ] {
        match e {
            ClientError::Handler(v) => assert_eq!(v, json!({"message": "raw nope"})),
            other => panic!("{other:?}"),
        }
    }
    let e = c.call_raw("alpha", "missing", &p).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoHandler));
    c.emit("alpha", "ev", &p).await.unwrap();
    assert_eq!(seen.recv().await.unwrap(), (text.to_owned(), true));
    s.stop().await;
}

#[tokio::test]
async fn raw_calls_short_circuit_in_process_in_either_form() {
    use latzero_client::Payload;
    let s = TestServer::start().await;
    let c = Client::connect(&s.url("self?pools=p")).await.unwrap();
    c.handle_raw("wrap", |r: Request<Payload>| async move {
        assert!(r.origin.is_none(), "in-process calls have no origin");
        Ok(Payload::from_text(format!("[{}]", r.data)).unwrap())
    })
    .await
    .unwrap();
    c.handle(
        "double",
        |r: Request| async move { Ok(json!(r.data.as_i64().unwrap() * 2)) },
    )
    .await
    .unwrap();
    assert_eq!(c.call("p", "wrap", &json!({"k": 1})).await.unwrap(), json!([{"k": 1}]));
    assert_eq!(c.call_raw("p", "wrap", &7).await.unwrap().as_str(), "[7]");
    assert_eq!(c.call_raw("p", "double", &21).await.unwrap().as_str(), "42");
    let status = latzero_client::admin::status(&latzero_proto::Endpoint::Tcp(s.addr.to_string()).into())
        .await
        .unwrap();
    assert_eq!(status["counters"]["calls_total"], 0, "{status}");
    s.stop().await;
}
