//! Beyond the seeds: broadcast, third-party reply, presence, takeover, slow consumers, the
//! SDK's reconnect, shutdown, and a start refused for a bad setting — against an in-process server.

mod common;

use std::time::Duration;

use common::TestServer;
use latzero_client::{Client, ClientError, ClientEvent, ClientOptions, ErrorCode, Payload, Request};
use latzero_server::Limits;
use serde_json::{Value, json};

async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
    pred: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = rx.recv().await.expect("events channel open");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
    .expect("event within 10 s")
}

#[tokio::test]
async fn broadcast_reaches_every_handler_with_correlated_results() {
    let s = TestServer::start().await;
    let mut keep = vec![];
    for name in ["a", "b", "c"] {
        let w = Client::connect(&s.url(&format!("{name}?pools=p"))).await.unwrap();
        let me = name.to_owned();
        w.handle("hello", move |_r: Request| {
            let me = me.clone();
            async move { Ok(json!(format!("hi from {me}"))) }
        })
        .await
        .unwrap();
        keep.push(w);
    }
    let caller = Client::connect(&s.url("caller?pools=p")).await.unwrap();
    let mut replies = caller.request("p", "hello").broadcast().await.unwrap();
    replies.sort_by(|x, y| x.app_id.cmp(&y.app_id));
    let got: Vec<(String, Value)> = replies.into_iter().map(|r| (r.app_id, r.result.unwrap())).collect();
    assert_eq!(
        got,
        vec![
            ("a".into(), json!("hi from a")),
            ("b".into(), json!("hi from b")),
            ("c".into(), json!("hi from c"))
        ]
    );
    // As text, each answer as its handler wrote it: an integer past 64 bits keeps its digits.
    let big = r#"{"n":123456789012345678901234567890}"#;
    keep[0]
        .handle_raw("big", move |_r: Request<Payload>| async move {
            Payload::from_text(big).map_err(Into::into)
        })
        .await
        .unwrap();
    let replies = caller.request("p", "big").broadcast_raw().await.unwrap();
    let got: Vec<(&str, &str)> = replies
        .iter()
        .map(|r| (r.app_id.as_str(), r.result.as_ref().unwrap().as_str()))
        .collect();
    assert_eq!(got, [("a", big)]);
    s.stop().await;
}

/// App "worker" in pool "p", answering "sum" with `data.a + data.b`.
async fn sum_worker(s: &TestServer) -> Client {
    let worker = Client::connect(&s.url("worker?pools=p")).await.unwrap();
    worker
        .handle("sum", |r: Request| async move {
            Ok(json!(r.data["a"].as_i64().unwrap() + r.data["b"].as_i64().unwrap()))
        })
        .await
        .unwrap();
    worker
}

#[tokio::test]
async fn reply_to_sends_the_result_to_a_third_app() {
    let s = TestServer::start().await;
    let _worker = sum_worker(&s).await;
    let sink = Client::connect(&s.url("sink?pools=p")).await.unwrap();
    let mut sink_events = sink.events();
    let caller = Client::connect(&s.url("caller?pools=p")).await.unwrap();
    let handler = caller
        .request("p", "sum")
        .data(&json!({"a": 2, "b": 3}))
        .forward("sink")
        .await
        .unwrap();
    assert_eq!(handler, "worker");
    let ClientEvent::Forwarded(f) = next_event(&mut sink_events, |e| matches!(e, ClientEvent::Forwarded(_))).await
    else {
        unreachable!()
    };
    assert_eq!(f.origin, "caller");
    assert_eq!(f.result.unwrap(), json!(5));
    let e = caller.request("p", "sum").forward("nobody").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotInPool));
    s.stop().await;
}

#[tokio::test]
async fn a_forwarded_result_never_answers_a_call_of_the_same_id() {
    // The sink's own calls are numbered from 1, like the raw caller's forwarded ones below: a
    // forwarded result must reach the sink as an event, never as the reply to its own call.
    let s = TestServer::start().await;
    let _worker = sum_worker(&s).await;
    let mut slow = s.raw().await;
    slow.handshake("slow", &["p"], &["slow"]).await;
    let sink = Client::connect(&s.url("sink?pools=p")).await.unwrap();
    let mut sink_events = sink.events();
    let (value_call, raw_call) = (
        tokio::spawn({
            let sink = sink.clone();
            async move { sink.call("p", "slow", &"v").await }
        }),
        tokio::spawn({
            let sink = sink.clone();
            async move { sink.call_raw("p", "slow", &"r").await }
        }),
    );
    let delivered = [slow.expect().await, slow.expect().await];
    let mut caller = s.raw().await;
    caller.handshake("caller", &["p"], &[]).await;
    for id in 1..=4 {
        caller
            .send(
                json!({"action":"trigger","id":id,"process":"sum","pool":"p","data":{"a":id,"b":1},"reply_to":"sink"}),
            )
            .await;
        assert_eq!(caller.expect().await["action"], "accepted");
    }
    for _ in 1..=4 {
        let ClientEvent::Forwarded(f) = next_event(&mut sink_events, |e| matches!(e, ClientEvent::Forwarded(_))).await
        else {
            unreachable!()
        };
        assert_eq!(f.origin, "caller");
        assert_eq!(f.result.unwrap(), json!(f.in_reply_to.as_i64().unwrap() + 1));
    }
    assert!(!value_call.is_finished() && !raw_call.is_finished());
    for t in delivered {
        let answer = json!({"answer": t["data"]});
        slow.send(json!({"action":"response","in_reply_to":t["id"],"status":"ok","response":answer}))
            .await;
    }
    assert_eq!(value_call.await.unwrap().unwrap(), json!({"answer": "v"}));
    assert_eq!(raw_call.await.unwrap().unwrap().as_str(), r#"{"answer":"r"}"#);
    s.stop().await;
}

#[tokio::test]
async fn presence_events_announce_joins_and_leaves() {
    let s = TestServer::start().await;
    let watcher = Client::connect(&s.url("watcher?pools=p")).await.unwrap();
    let mut ev = watcher.events();
    watcher.subscribe_presence("p").await.unwrap();
    let other = Client::connect(&s.url("other?pools=p")).await.unwrap();
    let e = next_event(&mut ev, |e| matches!(e, ClientEvent::Presence { .. })).await;
    assert!(
        matches!(e, ClientEvent::Presence { ref app_id, joined: true, .. } if app_id == "other"),
        "{e:?}"
    );
    other.close();
    let e = next_event(&mut ev, |e| matches!(e, ClientEvent::Presence { .. })).await;
    assert!(
        matches!(e, ClientEvent::Presence { ref app_id, joined: false, .. } if app_id == "other"),
        "{e:?}"
    );
    let e = watcher.subscribe_presence("elsewhere").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotInPool));
    s.stop().await;
}

#[tokio::test]
async fn takeover_closes_the_old_connection_and_fails_its_calls() {
    let s = TestServer::start().await;
    let mut old = s.raw().await;
    old.handshake("svc", &["p"], &["f"]).await;
    let mut caller = s.raw().await;
    caller.handshake("caller", &["p"], &[]).await;
    caller
        .send(json!({"action":"trigger","id":"q","process":"f","pool":"p"}))
        .await;
    assert_eq!(old.expect().await["action"], "trigger");
    let mut new = s.raw().await;
    new.send(json!({"action":"handshake","app_id":"svc","pools":["p"],"triggers":["f"]}))
        .await;
    assert_eq!(new.expect().await["code"], "DUPLICATE_APP");
    new.send(json!({"action":"handshake","app_id":"svc","pools":["p"],"triggers":["f"],"takeover":true}))
        .await;
    let ack = new.expect().await;
    assert_eq!(
        (ack["action"].as_str(), ack["took_over"].as_bool()),
        (Some("handshake_ack"), Some(true))
    );
    let e = caller.expect().await;
    assert_eq!(
        (e["code"].as_str(), e["in_reply_to"].as_str()),
        (Some("HANDLER_GONE"), Some("q"))
    );
    let closing = old.expect().await;
    assert_eq!(
        (closing["action"].as_str(), closing["code"].as_str()),
        (Some("closing"), Some("DUPLICATE_APP"))
    );
    assert!(old.recv().await.is_none(), "old connection closed");
    // The new connection serves the trigger now.
    caller
        .send(json!({"action":"trigger","id":"r","process":"f","pool":"p"}))
        .await;
    assert_eq!(new.expect().await["action"], "trigger");
    s.stop().await;
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_closed_and_callers_get_overloaded() {
    let limits = Limits {
        outbound_queue_frames: 64,
        outbound_queue_bytes: 1 << 20,
        ..Limits::default()
    };
    let s = TestServer::with_limits(limits).await;
    let mut stuck = s.raw().await;
    stuck.handshake("stuck", &["p"], &["f"]).await;
    let mut caller = s.raw().await;
    caller.handshake("caller", &["p"], &[]).await;
    let blob = "x".repeat(32 * 1024);
    let mut frames: Vec<Value> = vec![];
    let mut overloaded_at = None;
    for i in 0..10_000u64 {
        caller
            .send(json!({"action":"trigger","id":i,"process":"f","pool":"p","data":blob}))
            .await;
        // Ping after each call: the reply shows whether the call failed at once.
        frames.extend(caller.sync().await);
        if frames.iter().any(|f| f["code"] == "OVERLOADED") {
            overloaded_at = Some(i);
            break;
        }
    }
    let i = overloaded_at.expect("a stuck peer must be detected");
    let e = frames.iter().find(|f| f["code"] == "OVERLOADED").unwrap();
    assert_eq!(e["in_reply_to"], i);
    // Every earlier call was queued to the stuck peer; each fails with HANDLER_GONE once it is
    // closed. Read until all have arrived: none may be lost.
    let gone = |frames: &[Value]| frames.iter().filter(|f| f["code"] == "HANDLER_GONE").count() as u64;
    while gone(&frames) < i {
        let more = caller.expect().await;
        frames.push(more);
    }
    assert_eq!(gone(&frames), i);
    caller.send(json!({"action":"status","id":"s"})).await;
    let st = caller.expect().await;
    assert_eq!(st["counters"]["slow_consumers"], 1);
    assert_eq!(st["calls_in_flight"], 0);

    // The stuck peer, reading at last, gets what was queued to it before, then why it is
    // closed, then the end of the stream: it is not left to guess.
    let mut triggers = 0;
    let closing = loop {
        let f = stuck
            .recv()
            .await
            .expect("a closing frame before the end of the stream");
        if f["action"] == "trigger" {
            triggers += 1;
        } else {
            break f;
        }
    };
    assert!(triggers > 0 && triggers <= i, "{triggers} of {i} calls");
    assert_eq!(
        (closing["action"].as_str(), closing["code"].as_str()),
        (Some("closing"), Some("OVERLOADED")),
        "{closing}"
    );
    let why = closing["message"].as_str().unwrap();
    assert!(
        why.contains("did not read fast enough") && why.contains("64 frames"),
        "{why}"
    );
    assert!(stuck.recv().await.is_none(), "then the connection ends");
    s.stop().await;
}

#[tokio::test]
async fn sdk_reconnects_after_a_restart_and_handshakes_again() {
    let dir = tempfile::tempdir().unwrap();
    let start = || common::Running::start(common::config_in(dir.path()));
    let sock = dir.path().join("latzero.sock");
    let url = |app: &str| format!("latzero://{app}?socket={}&pools=p", sock.display());
    let first = start().await;
    let worker = ClientOptions::new()
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
        .connect(&url("worker"))
        .await
        .unwrap();
    worker
        .handle("ping", |_r: Request| async { Ok(json!("pong")) })
        .await
        .unwrap();
    let mut ev = worker.events();
    first.stop().await;
    let e = next_event(&mut ev, |e| matches!(e, ClientEvent::Disconnected { .. })).await;
    assert!(
        matches!(e, ClientEvent::Disconnected { ref reason, reconnecting: true } if reason.contains("SHUTTING_DOWN")),
        "{e:?}"
    );
    // While disconnected, remote calls fail at once (no hang), unsent, saying why.
    let e = worker.request("p", "other").send().await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Disconnected { reason: Some(r), sent: false } if r.contains("SHUTTING_DOWN")),
        "{e:?}"
    );
    assert!(e.to_string().contains("was not sent"), "{e}");

    let second = start().await;
    next_event(&mut ev, |e| matches!(e, ClientEvent::Reconnected)).await;
    let caller = Client::connect(&url("caller")).await.unwrap();
    assert_eq!(
        caller.call("p", "ping", &()).await.unwrap(),
        "pong",
        "pools and triggers restored"
    );
    second.stop().await;
}

#[tokio::test]
async fn shutdown_fails_calls_in_flight_with_shutting_down() {
    let s = TestServer::start().await;
    let mut h = s.raw().await;
    h.handshake("h", &["p"], &["f"]).await;
    let mut c = s.raw().await;
    c.handshake("c", &["p"], &[]).await;
    c.send(json!({"action":"trigger","id":"z","process":"f","pool":"p"}))
        .await;
    assert_eq!(h.expect().await["action"], "trigger");
    s.stop().await;
    let e = c.expect().await;
    assert_eq!(
        (e["code"].as_str(), e["in_reply_to"].as_str()),
        (Some("SHUTTING_DOWN"), Some("z"))
    );
    let closing = c.expect().await;
    assert_eq!(closing["action"], "closing");
    assert!(c.recv().await.is_none());
}

#[tokio::test]
async fn the_connection_limit_refuses_the_next_connection_with_overloaded() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let s = TestServer::with_limits(limits).await;
    let mut a = s.raw().await;
    a.handshake("a", &["p"], &[]).await;
    let mut b = s.raw().await;
    b.handshake("b", &["p"], &[]).await;
    let mut c = s.raw().await;
    let closing = c.expect().await;
    assert_eq!(
        (closing["action"].as_str(), closing["code"].as_str()),
        (Some("closing"), Some("OVERLOADED"))
    );
    assert!(
        closing["message"].as_str().unwrap().contains("the limit is 2"),
        "{closing}"
    );
    assert!(c.recv().await.is_none(), "refused connection is closed");
    // When one leaves, a new connection fits again.
    drop(a);
    let mut admitted = None;
    for _ in 0..100 {
        let mut d = s.raw().await;
        d.send(json!({"action":"ping","id":1})).await;
        let f = d.expect().await;
        if f["action"] == "pong" {
            admitted = Some(d);
            break;
        }
        // `a`'s session had not ended yet: refused; try again once it has.
        assert_eq!(f["code"], "OVERLOADED");
        tokio::task::yield_now().await;
    }
    assert!(admitted.is_some(), "a connection is admitted after another left");
    s.stop().await;
}

#[tokio::test]
async fn a_connection_without_a_handshake_is_closed_after_the_timeout() {
    let limits = Limits {
        handshake_timeout: Duration::from_millis(100),
        ..Limits::default()
    };
    let s = TestServer::with_limits(limits).await;
    let mut idle = s.raw().await;
    // Admin requests are allowed meanwhile, but do not count as a handshake.
    idle.send(json!({"action":"ping","id":1})).await;
    assert_eq!(idle.expect().await["action"], "pong");
    let closing = idle.expect().await;
    assert_eq!(
        (closing["action"].as_str(), closing["code"].as_str()),
        (Some("closing"), Some("HANDSHAKE_REQUIRED"))
    );
    assert!(idle.recv().await.is_none());
    // A connection that handshakes in time stays.
    let mut app = s.raw().await;
    app.handshake("app", &["p"], &[]).await;
    // Only time passing can show that no close comes: wait past the deadline, then check.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.sync().await.is_empty(), "handshaken connections have no deadline");
    s.stop().await;
}

#[tokio::test]
async fn a_unix_send_buffer_no_socket_takes_stops_the_start_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config_in(dir.path());
    cfg.unix_send_buffer = i32::MAX as usize + 1;
    let err = latzero_server::Server::bind(cfg)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("--unix-send-buffer") && err.contains("more than a socket takes"),
        "{err}"
    );
}

/// The handshake tells the server's limits, and the SDK keeps to them: a call or an emit whose
/// frame is longer than the server reads fails at once with `FrameTooLarge`, unsent, where the
/// server would close the connection; a handler whose answer would be too long answers with an
/// error saying so; a call without a timeout of its own asks no more than the server's max ttl.
/// Every connection stays up throughout.
#[tokio::test]
async fn the_sdk_keeps_to_the_limits_the_handshake_tells() {
    let limits = Limits {
        max_frame_len: 4096,
        max_ttl: Duration::from_secs(2),
        default_ttl: Duration::from_secs(1),
        ..Limits::default()
    };
    let s = TestServer::with_limits(limits).await;
    let mut raw = s.raw().await;
    let ack = raw.handshake("raw", &[], &[]).await;
    assert_eq!(
        ack["limits"],
        json!({"max_frame_len": 4096, "max_ttl_ms": 2000, "default_ttl_ms": 1000}),
        "{ack}"
    );

    let worker = Client::connect(&s.url("w?pools=p")).await.unwrap();
    worker
        .handle("echo", |r: Request| async move { Ok(r.data) })
        .await
        .unwrap();
    worker
        .handle("big", |_r: Request| async move { Ok(json!("x".repeat(5000))) })
        .await
        .unwrap();
    let caller = Client::connect(&s.url("c?pools=p")).await.unwrap();
    let (mut worker_events, mut caller_events) = (worker.events(), caller.events());
    // The SDK's default timeout is 30 s; the server takes at most 2 s, and the call is served.
    assert_eq!(caller.call("p", "echo", &json!(1)).await.unwrap(), json!(1));
    // A timeout the user chose is sent as chosen: one too long is refused, not shortened.
    let chosen = ClientOptions::new().request_timeout(Duration::from_secs(3));
    let patient = chosen.connect(&s.url("patient?pools=p")).await.unwrap();
    let e = patient.call("p", "echo", &json!(1)).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidMessage), "{e}");
    assert!(
        e.to_string().contains("ttl 3000 ms exceeds the maximum of 2000 ms"),
        "{e}"
    );
    drop(patient);
    let big = json!("x".repeat(5000));
    let e = caller.call("p", "echo", &big).await.unwrap_err();
    assert!(matches!(e, ClientError::FrameTooLarge { max: 4096, .. }), "{e}");
    assert_eq!(e.code(), Some(ErrorCode::FrameTooLarge));
    let e = caller.emit("p", "echo", &big).await.unwrap_err();
    assert!(matches!(e, ClientError::FrameTooLarge { .. }), "{e}");
    let e = caller.call("p", "big", &json!(null)).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Handler(v) if v["message"].as_str().is_some_and(|m| m.contains("max_frame_len of 4096"))),
        "{e}"
    );
    assert_eq!(caller.call("p", "echo", &json!(2)).await.unwrap(), json!(2));
    for events in [&mut worker_events, &mut caller_events] {
        while let Ok(ev) = events.try_recv() {
            assert!(!matches!(ev, ClientEvent::Disconnected { .. }), "{ev:?}");
        }
    }
    s.stop().await;
}

/// A call as long as the server reads reaches its handler, and its answer as long as that
/// reaches the caller: the server wraps a payload in more than the caller sent (the delivery's
/// hop id, origin and ttl; the caller's own id), so the SDK reads frames a little longer than
/// the server's limit (both on their defaults, 16 MiB).
#[tokio::test]
async fn a_call_at_the_frame_limit_reaches_its_handler_and_its_answer_the_caller() {
    let s = TestServer::start().await;
    let worker = Client::connect(&s.url("w?pools=p")).await.unwrap();
    worker
        .handle("echo", |r: Request| async move { Ok(r.data) })
        .await
        .unwrap();
    let caller = Client::connect(&s.url("a-caller-with-a-longer-app-id?pools=p"))
        .await
        .unwrap();
    // The caller's frame: {"action":"trigger","id":N,"process":"echo","pool":"p","data":"...","ttl":30000}
    let max = latzero_proto::DEFAULT_MAX_FRAME_LEN;
    let envelope = r#"{"action":"trigger","id":1,"process":"echo","pool":"p","data":"","ttl":30000}"#.len();
    let data = json!("x".repeat(max - envelope - 16));
    let answer = caller.call("p", "echo", &data).await.unwrap();
    assert_eq!(answer.as_str().map(str::len), data.as_str().map(str::len));
    s.stop().await;
}

/// The limits on pools and triggers: a request that would pass one is refused with OVERLOADED
/// naming it, and nothing of it is applied; a pool forgotten once empty makes room again.
#[tokio::test]
async fn pools_and_triggers_are_limited_per_app_and_in_all() {
    let limits = Limits {
        max_pools: 3,
        max_pools_per_app: 2,
        max_triggers_per_app: 2,
        ..Limits::default()
    };
    let s = TestServer::with_limits(limits).await;
    let over = |r: &Value, setting: &str| {
        assert_eq!(r["code"], "OVERLOADED", "{r}");
        assert!(r["message"].as_str().unwrap().contains(setting), "{setting}: {r}");
    };
    let hs = |app: &str, pools: &[&str], triggers: &[&str]| json!({"action":"handshake","id":"h","app_id":app,"pools":pools,"triggers":triggers});
    let mut a = s.raw().await;
    over(&a.ask(hs("a", &["p1", "p2", "p3"], &[])).await, "max_pools_per_app");
    over(
        &a.ask(hs("a", &["p1"], &["t1", "t2", "t3"])).await,
        "max_triggers_per_app",
    );
    let ack = a.ask(hs("a", &["p1", "p2"], &["t1", "t2"])).await;
    assert_eq!(ack["action"], "handshake_ack", "{ack}");
    over(
        &a.ask(json!({"action":"join","id":1,"pools":["p3"]})).await,
        "max_pools_per_app",
    );
    over(
        &a.ask(json!({"action":"register","id":2,"triggers":["t3"]})).await,
        "max_triggers_per_app",
    );
    // What an app already has does not count twice.
    let r = a.ask(json!({"action":"join","id":3,"pools":["p1","p2"]})).await;
    assert_eq!(r["pools"], json!(["p1", "p2"]), "{r}");

    let mut b = s.raw().await;
    b.handshake("b", &["p3"], &[]).await;
    let mut c = s.raw().await;
    over(&c.ask(hs("c", &["p4"], &[])).await, "max_pools");
    c.handshake("c", &["p1"], &[]).await;
    over(
        &c.ask(json!({"action":"pool_create","id":4,"pool":"p5"})).await,
        "max_pools",
    );
    over(
        &c.ask(json!({"action":"join","id":5,"pools":["p4"]})).await,
        "max_pools",
    );
    // b leaves p3, which is forgotten: room for a new pool.
    b.ask(json!({"action":"leave","id":6,"pools":["p3"]})).await;
    let r = c.ask(json!({"action":"join","id":7,"pools":["p4"]})).await;
    assert_eq!(r["pools"], json!(["p1", "p4"]), "{r}");
    let st = c.ask(json!({"action":"status","id":8})).await;
    assert_eq!(st["limits"]["max_pools_per_app"], 2, "{st}");
    s.stop().await;
}

/// Restored pools past a limit lowered since they were stored are left out of the rehydrated
/// handshake, which succeeds with what fits.
#[tokio::test]
async fn rehydration_restores_what_fits_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let srv = common::Running::start(common::config_in(dir.path())).await;
    let mut a = common::Raw::connect(srv.addr).await;
    a.handshake("a", &["p1", "p2", "p3"], &["t1", "t2"]).await;
    drop(a);
    srv.stop().await;
    let mut cfg = common::config_in(dir.path());
    cfg.limits.max_pools_per_app = 2;
    cfg.limits.max_triggers_per_app = 1;
    let srv = common::Running::start(cfg).await;
    let mut a = common::Raw::connect(srv.addr).await;
    let ack = a.handshake("a", &[], &[]).await;
    assert_eq!(
        (
            ack["pools"].as_array().unwrap().len(),
            ack["triggers"].as_array().unwrap().len()
        ),
        (2, 1),
        "{ack}"
    );
    assert_eq!(ack["rehydrated"], true, "{ack}");
    srv.stop().await;
}

/// An answer that grows with the server's state (`status`, the listings) and would pass
/// `max_frame_len` is answered with FRAME_TOO_LARGE instead; the connection stays.
#[tokio::test]
async fn a_listing_past_the_frame_limit_is_refused_not_sent() {
    let limits = Limits {
        max_frame_len: 2048,
        ..Limits::default()
    };
    let s = TestServer::with_limits(limits).await;
    let mut a = s.raw().await;
    let pools: Vec<String> = (0..60).map(|i| format!("a-rather-long-pool-name-{i:03}")).collect();
    let pools: Vec<&str> = pools.iter().map(String::as_str).collect();
    a.handshake("a", &pools, &[]).await;
    for req in [json!({"action":"status","id":1}), json!({"action":"pool_list","id":2})] {
        let r = a.ask(req.clone()).await;
        assert_eq!(r["code"], "FRAME_TOO_LARGE", "{req} → {r}");
        assert!(r["message"].as_str().unwrap().contains("max_frame_len of 2048"), "{r}");
    }
    assert_eq!(a.ask(json!({"action":"ping","id":3})).await["action"], "pong");
    s.stop().await;
}

/// `status` with `limit` lists the first pools and connected apps by name, and their totals:
/// an answer that does not grow with the server, so it fits where the whole one would not.
#[tokio::test]
async fn a_limited_status_lists_the_first_by_name_with_totals() {
    let limits = Limits {
        max_frame_len: 2048,
        ..Limits::default()
    };
    let s = TestServer::with_limits(limits).await;
    let pools: Vec<String> = (0..60)
        .rev()
        .map(|i| format!("a-rather-long-pool-name-{i:03}"))
        .collect();
    let pools: Vec<&str> = pools.iter().map(String::as_str).collect();
    let mut apps = vec![];
    for id in ["carol", "alice", "bob"] {
        let mut c = s.raw().await;
        c.handshake(id, &pools[..1], &[]).await;
        apps.push(c);
    }
    let mut a = s.raw().await;
    a.handshake("zed", &pools, &[]).await;
    let st = a.ask(json!({"action":"status","id":1,"limit":2})).await;
    assert_eq!(st["action"], "status_result", "{st}");
    let names = |k: &str, f: &str| -> Vec<String> {
        st[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x[f].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names("pools", "name"),
        ["a-rather-long-pool-name-000", "a-rather-long-pool-name-001"]
    );
    assert_eq!(st["pools_total"], 60);
    assert_eq!(names("apps", "app_id"), ["alice", "bob"]);
    assert_eq!(st["apps_total"], 4);
    let whole = a.ask(json!({"action":"status","id":2,"limit":100})).await;
    assert_eq!(whole["code"], "FRAME_TOO_LARGE", "{whole}");
    let zero = a.ask(json!({"action":"status","id":3,"limit":0})).await;
    assert_eq!(zero["code"], "INVALID_MESSAGE", "{zero}");
    s.stop().await;
}

/// A slow consumer that never reads at all is not kept for its queue: once the shutdown grace
/// has passed without it reading, its connection is cut off — on TCP and on the Unix socket
/// (its session, waiting to read, is stopped by the read side's shutdown).
#[tokio::test]
async fn a_peer_that_never_reads_is_cut_off_after_the_grace() {
    never_read_cut_off(false).await;
    never_read_cut_off(true).await;
}

async fn never_read_cut_off(unix: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config_in(dir.path());
    cfg.limits.outbound_queue_frames = 16;
    cfg.limits.outbound_queue_bytes = 1 << 20;
    cfg.shutdown_grace = std::time::Duration::from_millis(100);
    let s = common::Running::start(cfg).await;
    let mut stuck = match unix {
        true => common::Raw::unix(&s.unix).await,
        false => common::Raw::connect(s.addr).await,
    };
    stuck.handshake("stuck", &["p"], &["f"]).await;
    let mut caller = common::Raw::connect(s.addr).await;
    caller.handshake("caller", &["p"], &[]).await;
    let blob = "x".repeat(32 * 1024);
    'calls: for i in 0..10_000u64 {
        caller
            .send(json!({"action":"trigger","id":i,"process":"f","pool":"p","data":blob}))
            .await;
        for f in caller.sync().await {
            if f["code"] == "OVERLOADED" {
                break 'calls;
            }
        }
    }
    // Wait for the event: the server counting one connection fewer. (The calls queued to the
    // stuck peer fail meanwhile, with HANDLER_GONE: those frames are passed over.)
    loop {
        caller.send(json!({"action":"status","id":"s"})).await;
        let st = loop {
            let f = caller.expect().await;
            if f["action"] == "status_result" {
                break f;
            }
        };
        if st["connections"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(stuck);
    s.stop().await;
}
