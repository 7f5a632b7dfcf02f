//! Every way a pending call leaves the table — reply, deadline, handler disconnect, caller
//! disconnect, shutdown — with paused time and real socket pairs standing in for peers.

use std::sync::RwLock;

use super::*;
use crate::session::conn::Sock;
use latzero_proto::message::{Request, parse_request};
use latzero_proto::{AppId, PoolName, TriggerName};
use serde_json::{Value, json};

/// The far end of a connection's socket: what the peer would read.
struct Peer {
    s: std::os::unix::net::UnixStream,
    buf: Vec<u8>,
    /// The connection's own read half, kept open for the test's duration.
    _read: latzero_uds::ReadHalf,
}

struct Fixture {
    router: Arc<Router>,
    dir: RwLock<Directory>,
    counters: Arc<Counters>,
}

fn fixture() -> Fixture {
    fixture_with(Limits {
        default_ttl: Duration::from_secs(30),
        ..Limits::default()
    })
}

fn fixture_with(limits: Limits) -> Fixture {
    let counters = Arc::new(Counters::default());
    Fixture {
        router: Arc::new(Router::new(counters.clone(), limits)),
        dir: RwLock::default(),
        counters,
    }
}

impl Fixture {
    /// A connected app on a real socket pair, with its flusher running as in the server.
    async fn app(&self, id: u64, name: &str, triggers: &[&str]) -> (Arc<Conn>, Peer) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_nonblocking(true).unwrap();
        let (r, w) = latzero_uds::UdsStream::from_std(ours).unwrap().into_split();
        let c = Conn::new(id, "test".into(), Sock::Unix(w), 16, 1 << 20, self.counters.clone());
        tokio::spawn(crate::session::conn::flusher(c.clone()));
        let rx = Peer {
            s: theirs,
            buf: Vec::new(),
            _read: r,
        };
        let app = AppId::try_from(name).unwrap();
        c.bind_app(app.clone());
        let mut d = self.dir.write().unwrap();
        d.add_app(&c, app.clone(), None);
        let ts: Vec<TriggerName> = triggers.iter().map(|t| TriggerName::try_from(*t).unwrap()).collect();
        d.register(&app, &ts);
        d.join(&app, &[PoolName::try_from("p").unwrap()]);
        (c, rx)
    }

    /// The usual pair: app `h`, the handler of trigger `f`, and app `c`, a caller with no
    /// triggers, both in pool `p`.
    async fn handler_and_caller(&self) -> ((Arc<Conn>, Peer), (Arc<Conn>, Peer)) {
        (self.app(1, "h", &["f"]).await, self.app(2, "c", &[]).await)
    }

    /// Runs the router's deadline timer, as the server does, until the guard drops.
    fn timer(&self) -> tokio_util::sync::DropGuard {
        let stop = CancellationToken::new();
        tokio::spawn(self.router.clone().run_timer(stop.clone()));
        stop.drop_guard()
    }

    fn call(&self, caller: &Arc<Conn>, msg: Value) -> Result<(), Refusal> {
        let text = msg.to_string();
        let Request::Trigger(t) = parse_request(text.as_bytes()).unwrap().request else {
            panic!()
        };
        // A batch of one frame, as a session counts it.
        let mut tally = Tally::default();
        let routed = self
            .router
            .call(&self.dir.read().unwrap(), caller, &t, Instant::now(), &mut tally);
        tally.flush(&self.counters);
        routed
    }

    fn respond(&self, handler: &Arc<Conn>, msg: Value) -> Result<(), Refusal> {
        let text = msg.to_string();
        let Request::Response(r) = parse_request(text.as_bytes()).unwrap().request else {
            panic!()
        };
        let mut tally = Tally::default();
        let answered = self.router.respond(handler, &r, &mut tally);
        tally.flush(&self.counters);
        answered
    }
}

/// The next frame the peer can read right now, if any.
fn next(rx: &mut Peer) -> Option<Value> {
    use std::io::Read;
    loop {
        if rx.buf.len() >= 4 {
            let len = u32::from_be_bytes(rx.buf[..4].try_into().unwrap()) as usize;
            if rx.buf.len() >= 4 + len {
                let v = serde_json::from_slice(&rx.buf[4..4 + len]).unwrap();
                rx.buf.drain(..4 + len);
                return Some(v);
            }
        }
        let mut chunk = [0u8; 65536];
        match rx.s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => rx.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn reply_removes_the_call_and_reaches_the_caller() {
    let f = fixture();
    let ((h, mut hrx), (c, mut crx)) = f.handler_and_caller().await;
    f.call(
        &c,
        json!({"action":"trigger","id":"x","process":"f","pool":"p","data":[1]}),
    )
    .unwrap();
    assert_eq!(f.router.table.len(), 1);
    let t = next(&mut hrx).unwrap();
    assert_eq!(t["origin"]["app_id"], "c");
    f.respond(
        &h,
        json!({"action":"response","in_reply_to":t["id"],"status":"ok","response":2}),
    )
    .unwrap();
    assert_eq!(
        next(&mut crx).unwrap(),
        json!({"action":"response","in_reply_to":"x","status":"ok","response":2})
    );
    assert_eq!(f.router.table.len(), 0);
    assert_eq!(c.inflight.load(Ordering::Relaxed), 0);
    assert_eq!(h.handling.load(Ordering::Relaxed), 0);
}

/// The caller's id is kept as its text, inline when short: ids on either side of the inline
/// limit (24 bytes), with escapes, and integers come back unchanged in the response and in
/// the timeout error.
#[tokio::test(start_paused = true)]
async fn caller_ids_come_back_verbatim_short_or_long() {
    let f = fixture();
    let _timer = f.timer();
    let ((h, mut hrx), (c, mut crx)) = f.handler_and_caller().await;
    let long = "a-caller-id-well-past-twenty-four-bytes";
    let ids = [
        json!(18446744073709551615u64),
        json!("x"),
        json!("i".repeat(22)), // 24 bytes of text with its quotes: the longest kept inline
        json!("i".repeat(23)),
        json!(long),
        json!("quote \" and é"),
    ];
    for id in &ids {
        let call = json!({"action":"trigger","id":id,"process":"f","pool":"p"});
        f.call(&c, call).unwrap();
        let t = next(&mut hrx).unwrap();
        f.respond(&h, json!({"action":"response","in_reply_to":t["id"],"status":"ok"}))
            .unwrap();
        let r = next(&mut crx).unwrap();
        assert_eq!((&r["action"], &r["in_reply_to"]), (&json!("response"), id));
    }
    for id in &ids {
        let call = json!({"action":"trigger","id":id,"process":"f","pool":"p","ttl":10});
        f.call(&c, call).unwrap();
        next(&mut hrx).unwrap();
        tokio::time::sleep(Duration::from_millis(11)).await;
        let e = next(&mut crx).unwrap();
        assert_eq!((&e["code"], &e["in_reply_to"]), (&json!("TIMEOUT"), id));
    }
    assert_eq!(f.router.table.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn deadline_fires_exactly_once() {
    let f = fixture();
    let _timer = f.timer();
    let ((h, mut hrx), (c, mut crx)) = f.handler_and_caller().await;
    f.call(
        &c,
        json!({"action":"trigger","id":7,"process":"f","pool":"p","ttl":100}),
    )
    .unwrap();
    let t = next(&mut hrx).unwrap();
    assert_eq!(h.handling.load(Ordering::Relaxed), 1);
    tokio::time::sleep(Duration::from_millis(99)).await;
    assert!(next(&mut crx).is_none(), "not before the deadline");
    tokio::time::sleep(Duration::from_millis(2)).await;
    let e = next(&mut crx).unwrap();
    assert_eq!(
        (e["code"].as_str(), e["in_reply_to"].as_i64()),
        (Some("TIMEOUT"), Some(7))
    );
    assert_eq!(f.router.table.len(), 0);
    assert_eq!(h.handling.load(Ordering::Relaxed), 0);
    // The late response is counted, not delivered.
    f.respond(&h, json!({"action":"response","in_reply_to":t["id"],"status":"ok"}))
        .unwrap();
    assert!(next(&mut crx).is_none());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(next(&mut crx).is_none(), "fires once");
    assert_eq!(f.counters.late_responses.load(Ordering::Relaxed), 1);
    assert_eq!(c.inflight.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn answered_calls_leave_no_deadline_behind_that_fires_or_grows() {
    use super::pending::{SHARDS, SPARE};
    let f = fixture();
    let ((h, _hrx), (c, _crx)) = f.handler_and_caller().await;
    let table = PendingTable::new();
    let now = Instant::now();
    let pending = |ms: u64| Pending {
        caller: c.clone(),
        caller_id: "1".into(),
        handler: super::pending::Handling::new(h.clone()),
        deadline: now + Duration::from_millis(ms),
        ttl: Duration::from_millis(ms),
        target: Target::Caller,
    };
    // A thousand calls in one shard, deadlines out of order (1..=1000 ms, each once).
    let calls: Vec<(u64, u64)> = (1..=1000u64)
        .map(|k| (k * SHARDS as u64, 1 + (k * 7919) % 1000))
        .collect();
    for &(hop, ms) in &calls {
        table.insert(hop, pending(ms));
    }
    // All but one in ten answered: their deadline entries are stale now, and swept out
    // whenever they outnumber the live ones.
    let mut live = Vec::new();
    for (i, &(hop, ms)) in calls.iter().enumerate() {
        if i % 10 == 0 {
            live.push(ms);
        } else {
            assert!(matches!(table.take_for(hop, h.id), Take::Found(_)));
        }
    }
    assert_eq!(table.len(), 100);
    assert!(
        table.deadline_entries() <= 2 * 100 + SPARE,
        "{}",
        table.deadline_entries()
    );
    // The earliest deadline is a live call's; expiry takes exactly the live calls due.
    live.sort_unstable();
    let at = |ms: u64| now + Duration::from_millis(ms);
    assert_eq!(table.next_deadline(), Some(at(live[0])));
    let due = table.expire(at(500));
    let want = live.iter().filter(|&&ms| ms <= 500).count();
    assert_eq!(due.len(), want);
    assert!(due.iter().all(|p| p.deadline <= at(500)));
    assert_eq!(table.next_deadline(), Some(at(live[want])));
    assert_eq!(table.expire(at(2000)).len(), 100 - want);
    assert_eq!(
        (table.len(), table.deadline_entries(), table.next_deadline()),
        (0, 0, None)
    );
}

#[tokio::test(start_paused = true)]
async fn an_earlier_deadline_wakes_the_timer() {
    let f = fixture();
    let _timer = f.timer();
    let ((_h, _hrx), (c, mut crx)) = f.handler_and_caller().await;
    f.call(
        &c,
        json!({"action":"trigger","id":"long","process":"f","pool":"p","ttl":10000}),
    )
    .unwrap();
    tokio::task::yield_now().await;
    f.call(
        &c,
        json!({"action":"trigger","id":"short","process":"f","pool":"p","ttl":10}),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(11)).await;
    assert_eq!(next(&mut crx).unwrap()["in_reply_to"], "short");
    assert!(next(&mut crx).is_none());
}

#[tokio::test(start_paused = true)]
async fn handler_disconnect_fails_the_call_and_caller_disconnect_drops_it() {
    let f = fixture();
    let ((h, _hrx), (c, mut crx)) = f.handler_and_caller().await;
    f.call(&c, json!({"action":"trigger","id":"a","process":"f","pool":"p"}))
        .unwrap();
    f.router.on_disconnect(h.id);
    let e = next(&mut crx).unwrap();
    assert_eq!(
        (e["code"].as_str(), e["in_reply_to"].as_str()),
        (Some("HANDLER_GONE"), Some("a"))
    );
    assert_eq!(f.router.table.len(), 0);
    assert_eq!(h.handling.load(Ordering::Relaxed), 0);

    let (h2, _h2rx) = f.app(3, "h2", &["g"]).await;
    f.call(&c, json!({"action":"trigger","id":"b","process":"g","pool":"p"}))
        .unwrap();
    assert_eq!(h2.handling.load(Ordering::Relaxed), 1);
    f.router.on_disconnect(c.id);
    assert_eq!(f.router.table.len(), 0);
    assert_eq!(h2.handling.load(Ordering::Relaxed), 0);
    assert_eq!(c.inflight.load(Ordering::Relaxed), 0);
    assert_eq!(f.counters.undeliverable.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_to_a_killed_handler_fails_at_once_and_reaches_nobody() {
    let f = fixture();
    let ((h, mut hrx), (c, mut crx)) = f.handler_and_caller().await;
    // Killed (a takeover, a write failure) and still in the directory until its session ends.
    h.kill();
    assert!(h.is_killed());
    f.call(&c, json!({"action":"trigger","id":"k","process":"f","pool":"p"}))
        .unwrap();
    let e = next(&mut crx).unwrap();
    assert_eq!(
        (e["code"].as_str(), e["in_reply_to"].as_str()),
        (Some("HANDLER_GONE"), Some("k"))
    );
    assert_eq!(e["handler_may_still_run"], false);
    assert_eq!(next(&mut hrx), None);
    assert_eq!(f.router.table.len(), 0);
    assert_eq!(c.inflight.load(Ordering::Relaxed), 0);
    assert_eq!(h.handling.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_fails_every_call() {
    let f = fixture();
    let ((h, _hrx), (c, mut crx)) = f.handler_and_caller().await;
    for i in 0..3 {
        f.call(&c, json!({"action":"trigger","id":i,"process":"f","pool":"p"}))
            .unwrap();
    }
    assert_eq!(h.handling.load(Ordering::Relaxed), 3);
    f.router.fail_all(ErrorCode::ShuttingDown, "bye");
    for _ in 0..3 {
        assert_eq!(next(&mut crx).unwrap()["code"], "SHUTTING_DOWN");
    }
    assert_eq!(f.router.table.len(), 0);
    assert_eq!(h.handling.load(Ordering::Relaxed), 0);
}

/// Handlers that keep up take turns; one that stops answering is passed over while the others
/// have fewer calls in flight, and takes its turns again once its calls have ended.
#[tokio::test(start_paused = true)]
async fn a_handler_that_stops_answering_is_passed_over_until_its_calls_end() {
    let f = fixture();
    let _timer = f.timer();
    let (a, mut arx) = f.app(1, "a", &["f"]).await;
    let (b, mut brx) = f.app(2, "b", &["f"]).await;
    let (c, mut crx) = f.app(3, "c", &[]).await;
    let call = |id: u64, ttl: u64| {
        f.call(
            &c,
            json!({"action":"trigger","id":id,"process":"f","pool":"p","ttl":ttl}),
        )
        .unwrap()
    };
    let answer = |h: &Arc<Conn>, t: Value| {
        f.respond(h, json!({"action":"response","in_reply_to":t["id"],"status":"ok"}))
            .unwrap()
    };
    // Calls answered at once, one at a time; which handler took each, in order.
    let turns = |ids: std::ops::Range<u64>, arx: &mut Peer, brx: &mut Peer, crx: &mut Peer| {
        let mut took = String::new();
        for id in ids {
            call(id, 30_000);
            match (next(arx), next(brx)) {
                (Some(t), None) => (answer(&a, t), took.push('a')).1,
                (None, Some(t)) => (answer(&b, t), took.push('b')).1,
                other => panic!("{other:?}"),
            }
            assert_eq!(next(crx).unwrap()["in_reply_to"], id);
        }
        took
    };
    assert_eq!(turns(0..4, &mut arx, &mut brx, &mut crx), "abab");
    // a takes a call and never answers it: the next ten go to b, not every other one to a.
    call(10, 1_000);
    next(&mut arx).expect("a's turn");
    assert_eq!(turns(11..21, &mut arx, &mut brx, &mut crx), "b".repeat(10));
    // a's call times out, and a takes its turns again.
    tokio::time::sleep(Duration::from_millis(1_001)).await;
    assert_eq!(next(&mut crx).unwrap()["code"], "TIMEOUT");
    assert_eq!(a.handling.load(Ordering::Relaxed), 0);
    assert_eq!(turns(30..34, &mut arx, &mut brx, &mut crx).matches('a').count(), 2);
}

#[tokio::test(start_paused = true)]
async fn round_robin_and_refusals() {
    let f = fixture();
    let (_a, mut arx) = f.app(1, "a", &["f"]).await;
    let (_b, mut brx) = f.app(2, "b", &["f"]).await;
    let (c, _crx) = f.app(3, "c", &[]).await;
    for i in 0..4 {
        f.call(&c, json!({"action":"trigger","id":i,"process":"f","pool":"p"}))
            .unwrap();
    }
    let count = |rx: &mut Peer| std::iter::from_fn(|| next(rx)).count();
    assert_eq!((count(&mut arx), count(&mut brx)), (2, 2));
    let r = f
        .call(&c, json!({"action":"trigger","id":9,"process":"zz","pool":"p"}))
        .unwrap_err();
    assert_eq!(r.code, ErrorCode::NoHandler);
    let r = f
        .call(&c, json!({"action":"trigger","id":9,"process":"f","pool":"q"}))
        .unwrap_err();
    assert_eq!(r.code, ErrorCode::NotInPool);
    let r = f
        .call(
            &c,
            json!({"action":"trigger","id":9,"process":"f","pool":"p","destination":"c"}),
        )
        .unwrap_err();
    assert_eq!(r.code, ErrorCode::NoHandler);
    let r = f
        .call(
            &c,
            json!({"action":"trigger","id":9,"process":"f","pool":"p","ttl":999999999}),
        )
        .unwrap_err();
    assert_eq!(r.code, ErrorCode::InvalidMessage);
}

#[tokio::test(start_paused = true)]
async fn a_full_handler_buffer_fails_the_call_with_overloaded_and_closes_the_handler() {
    let f = fixture();
    let ((h, _h_not_reading), (c, mut crx)) = f.handler_and_caller().await;
    let blob = "x".repeat(16 * 1024);
    // The handler never reads: its socket fills, then its buffer (16 frames), then the next call
    // is refused.
    let mut refused = None;
    for i in 0..10_000 {
        f.call(
            &c,
            json!({"action":"trigger","id":i,"process":"f","pool":"p","data":blob}),
        )
        .unwrap();
        if let Some(e) = next(&mut crx) {
            refused = Some((i, e));
            break;
        }
    }
    let (i, e) = refused.expect("the stuck handler is detected");
    assert_eq!(
        (e["code"].as_str(), e["in_reply_to"].as_i64()),
        (Some("OVERLOADED"), Some(i))
    );
    assert_eq!(e["handler_may_still_run"], false);
    assert!(h.is_slow(), "slow consumer is closed");
    assert_eq!(f.counters.slow_consumers.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn broadcast_collects_one_result_per_handler() {
    let f = fixture();
    let _timer = f.timer();
    let (a, mut arx) = f.app(1, "a", &["f"]).await;
    let (_b, mut brx) = f.app(2, "b", &["f"]).await;
    let (c, mut crx) = f.app(3, "c", &[]).await;
    f.call(
        &c,
        json!({"action":"trigger","id":"bc","process":"f","pool":"p","broadcast":true,"ttl":50}),
    )
    .unwrap();
    let ta = next(&mut arx).unwrap();
    assert!(next(&mut brx).is_some());
    f.respond(
        &a,
        json!({"action":"response","in_reply_to":ta["id"],"status":"ok","response":"A"}),
    )
    .unwrap();
    assert!(next(&mut crx).is_none(), "waits for every handler");
    tokio::time::sleep(Duration::from_millis(51)).await;
    let r = next(&mut crx).unwrap();
    assert_eq!(r["broadcast"], true);
    assert_eq!(r["in_reply_to"], "bc");
    assert_eq!(r["responses"][0], json!({"app_id":"a","status":"ok","response":"A"}));
    assert_eq!(r["responses"][1]["code"], "TIMEOUT");
    assert_eq!(c.inflight.load(Ordering::Relaxed), 0);
    // Counted once per handler, in the total as in the outcomes.
    let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(
        (
            count(&f.counters.calls_total),
            count(&f.counters.calls_ok),
            count(&f.counters.calls_timed_out)
        ),
        (2, 1, 1)
    );
}

/// Each answer fits a frame, but together they would not: the largest is left out, with
/// FRAME_TOO_LARGE in its place, and the reply stays within the caller's frame limit.
#[tokio::test(start_paused = true)]
async fn a_broadcast_reply_too_long_for_a_frame_leaves_out_the_largest_answers() {
    let f = fixture_with(Limits {
        max_frame_len: 1024,
        ..Limits::default()
    });
    let mut handlers = vec![];
    for (i, name) in ["a", "b", "d"].into_iter().enumerate() {
        handlers.push(f.app(i as u64 + 1, name, &["f"]).await);
    }
    let (c, mut crx) = f.app(9, "c", &[]).await;
    f.call(
        &c,
        json!({"action":"trigger","id":"bc","process":"f","pool":"p","broadcast":true,"ttl":5000}),
    )
    .unwrap();
    for ((h, rx), len) in handlers.iter_mut().zip([600, 300, 50]) {
        let t = next(rx).unwrap();
        f.respond(
            h,
            json!({"action":"response","in_reply_to":t["id"],"status":"ok","response":"x".repeat(len)}),
        )
        .unwrap();
    }
    let r = next(&mut crx).unwrap();
    assert!(r.to_string().len() <= 1024, "{}", r.to_string().len());
    let left_out = &r["responses"][0];
    assert_eq!(
        (left_out["app_id"].as_str(), left_out["code"].as_str()),
        (Some("a"), Some("FRAME_TOO_LARGE"))
    );
    assert!(
        left_out["message"].as_str().unwrap().contains("642 bytes"),
        "{left_out}"
    );
    assert_eq!(r["responses"][1]["response"], "x".repeat(300));
    assert_eq!(r["responses"][2]["response"], "x".repeat(50));
}
