//! Churn: apps come and go in the middle of everything — handlers closed while they run a call,
//! callers closed with calls in flight, lock holders and lock waiters and watchers closed — in
//! a random order from a fixed seed. Every call must end (answered, failed or timed out; none
//! lost), and once every app has gone the server must hold nothing of theirs: no call in
//! flight, no member, no trigger, no lock, no waiter, no watcher.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestServer;
use latzero_client::{BlockOptions, Client, ClientError, ClientOptions, ErrorCode, HandlerError, MemoryBlock};
use latzero_testkit::damage::Rng;
use serde_json::{Value, json};
use tokio::task::JoinSet;

const POOL: &str = "churn";
/// A caller's timeout; a "slow" handler outlasts it.
const TTL: Duration = Duration::from_millis(150);
/// How long past its timeout a call may take to end before it counts as lost: generous, as a
/// loaded CI machine is slow, and only a lost call ever waits for it.
const LOST_AFTER: Duration = Duration::from_secs(10);

async fn connect(s: &TestServer, app: &str) -> Client {
    ClientOptions::new()
        .reconnect(false)
        .connect(&s.url(app))
        .await
        .unwrap()
}

/// A handler app: answers, fails, outlasts the caller's timeout, or (if `closable`) is closed
/// while it runs the call, as each call's data asks.
async fn handler(s: &TestServer, app: &str, closable: bool) -> Client {
    let c = connect(s, app).await;
    c.join(POOL).await.unwrap();
    let me = c.clone();
    c.handle("work", move |req| {
        let me = me.clone();
        async move {
            match req.data["do"].as_str() {
                Some("close") if closable => {
                    me.close();
                    std::future::pending().await
                }
                Some("ok" | "close") => Ok(req.data),
                Some("slow") => {
                    tokio::time::sleep(TTL * 2).await;
                    Ok(req.data)
                }
                _ => Err(HandlerError::msg("asked to fail")),
            }
        }
    })
    .await
    .unwrap();
    c
}

/// How calls ended, counted by kind: answered, the handler's error, timed out, handler gone,
/// no handler left, the caller closed.
type Ends = Arc<Mutex<BTreeMap<&'static str, usize>>>;

/// The kind of end a call came to; `None` for an end it may not come to here.
fn end(r: &Result<Value, ClientError>) -> Option<&'static str> {
    Some(match r {
        Ok(_) => "answered",
        Err(ClientError::Handler(_)) => "handler error",
        Err(ClientError::Disconnected { .. } | ClientError::Closed) => "caller closed",
        Err(e) => match e.code()? {
            ErrorCode::Timeout => "timed out",
            ErrorCode::HandlerGone => "handler gone",
            ErrorCode::NoHandler => "no handler",
            _ => return None,
        },
    })
}

/// One caller: `calls` calls at once, each asking the handlers for something drawn from
/// `rng`; the caller is closed after `close_after` of them ended (never, if that is more).
async fn caller(c: Client, seed: u64, calls: usize, close_after: usize, ends: Ends) {
    let mut rng = Rng(seed);
    let mut set = JoinSet::new();
    for _ in 0..calls {
        let what = *rng.pick(&[
            "ok", "ok", "ok", "ok", "ok", "ok", "fail", "fail", "slow", "slow", "close",
        ]);
        let (c, ends) = (c.clone(), ends.clone());
        set.spawn(async move {
            let call = c.request(POOL, "work").data(&json!({ "do": what })).timeout(TTL).send();
            match tokio::time::timeout(TTL + LOST_AFTER, call).await {
                Ok(r) => match end(&r) {
                    Some(kind) => *ends.lock().unwrap().entry(kind).or_default() += 1,
                    None => panic!("a call asking {what:?} ended with {r:?}"),
                },
                Err(_) => panic!("a call asking {what:?} never ended"),
            }
        });
    }
    let mut ended = 0;
    while let Some(r) = set.join_next().await {
        r.unwrap();
        ended += 1;
        if ended == close_after {
            c.close();
        }
    }
}

/// One app's turn at the shared block: a lock held, waited for, or a watch, and the app closed
/// in the middle of it; a lock and a watch ended by leaving the pool; or a shared lock taken
/// and given back.
async fn block_user(c: Client, block: MemoryBlock, what: usize) {
    match what {
        // Holds the lock and is closed holding it.
        0 => {
            let _ = block.lock_with(true, Some(Duration::from_secs(60)), TTL).await;
            c.close();
        }
        // Waits for the lock, and is closed while waiting (or once it has it).
        1 => {
            let wait = block.lock_with(true, Some(Duration::from_secs(60)), Duration::from_secs(30));
            tokio::select! {
                _ = wait => {}
                _ = tokio::time::sleep(TTL) => {}
            }
            c.close();
        }
        // Watches, and is closed watching.
        2 => {
            let mut w = block.watch(None).await.unwrap();
            let _ = w.next().await;
            c.close();
        }
        // Holds the lock and watches, then leaves the pool: both end there, before it closes.
        3 => {
            let _ = block.lock_with(true, Some(Duration::from_secs(60)), TTL).await;
            let mut w = block.watch(None).await.unwrap();
            let _ = w.next().await;
            c.leave(POOL).await.unwrap();
            let ended = async {
                while let Some(e) = w.next().await {
                    if matches!(e, latzero_client::BlockEvent::Unwatched { .. }) {
                        return true;
                    }
                }
                false
            };
            let ended = tokio::time::timeout(LOST_AFTER, ended).await;
            assert!(matches!(ended, Ok(true)), "leaving the pool did not end the watch");
            c.close();
        }
        // Takes a shared lock and gives it back, then leaves.
        _ => {
            if block.lock(false, TTL).await.is_ok() {
                block.unlock().await.unwrap();
            }
            c.close();
        }
    }
}

/// Every app gone: the server must hold nothing of theirs. The server drops a closed
/// connection's state when it reads the close, so this waits for the connection count first.
async fn assert_nothing_left(s: &TestServer, block: &MemoryBlock) {
    let addr = latzero_client::admin::Target::from(latzero_proto::Endpoint::Tcp(s.addr.to_string()));
    let deadline = tokio::time::Instant::now() + LOST_AFTER;
    let st = loop {
        let st = latzero_client::admin::status(&addr).await.unwrap();
        // This query's connection and the admin app's.
        if st["connections"] == 2 || tokio::time::Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(st["connections"], 2, "{st}");
    assert_eq!(st["calls_in_flight"], 0, "{st}");
    let apps: Vec<&str> = st["apps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["app_id"].as_str())
        .collect();
    assert_eq!(apps, ["admin"], "{st}");
    for p in st["pools"].as_array().unwrap() {
        assert_eq!(p["members"], json!(["admin"]), "{st}");
        assert_eq!(p["triggers"], json!({}), "{st}");
    }
    let stat = block.stat().await.unwrap();
    assert_eq!(stat["locks"], json!({"held": [], "waiting": 0}), "{stat}");
    assert_eq!(stat["watchers"], 0, "{stat}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_closed_in_the_middle_of_everything_leave_nothing_behind() {
    let s = TestServer::start().await;
    let admin = connect(&s, "admin").await;
    admin.join(POOL).await.unwrap();
    let block = admin
        .create_block(POOL, "shared", BlockOptions::binary(64))
        .await
        .unwrap();
    let mut rng = Rng(0x5eed_c4a1_0001);
    let ends = Ends::default();
    for round in 0..6 {
        let mut handlers = vec![];
        for h in 0..3 {
            // One handler of three may be closed mid-call; the others stay for the rest.
            handlers.push(handler(&s, &format!("h{round}-{h}"), h == 0).await);
        }
        // In even rounds the lock is held throughout, so that its waiters are closed waiting.
        if round % 2 == 0 {
            block.lock_with(true, Some(Duration::from_secs(60)), TTL).await.unwrap();
        }
        let mut set = JoinSet::new();
        for c in 0..4 {
            let client = connect(&s, &format!("c{round}-{c}")).await;
            client.join(POOL).await.unwrap();
            let calls = 8 + rng.below(24);
            let close_after = rng.below(calls + 8);
            set.spawn(caller(client, rng.next_u64(), calls, close_after, ends.clone()));
        }
        for b in 0..4 {
            let client = connect(&s, &format!("b{round}-{b}")).await;
            client.join(POOL).await.unwrap();
            let blk = client.attach_block(POOL, "shared").await.unwrap();
            set.spawn(block_user(client, blk, rng.below(5)));
        }
        // A write, so that watchers see a change and the block is not idle.
        block.write(0, &[round as u8; 8]).await.unwrap();
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        if round % 2 == 0 {
            block.unlock().await.unwrap();
        }
        for h in handlers {
            h.close();
        }
        assert_nothing_left(&s, &block).await;
    }
    // The draw reached every way a call can end, so each was checked for what it leaves.
    let ends = ends.lock().unwrap().clone();
    eprintln!("calls ended: {ends:?}");
    for kind in [
        "answered",
        "handler error",
        "timed out",
        "handler gone",
        "caller closed",
    ] {
        assert!(ends.get(kind).is_some_and(|&n| n > 0), "no call {kind}: {ends:?}");
    }
    s.stop().await;
}
