//! PROTOCOL.md against a real server: a session that makes the server send every kind of frame
//! it has, recorded, and checked against the spec both ways.
//!
//! - Each example in the spec of a frame the server sends has only fields the server really
//!   sends in that frame, with the same JSON type, nested objects and lists of objects included.
//! - Each field the server really sends, and each of its actions, is named in the spec as code.
//! - Each action the spec shows a server frame of was seen.
//!
//! (The request examples are checked in latzero-proto: each must parse.)

mod common;

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Raw, Running, config_in};
use latzero_proto::frame::Frame;
use serde_json::{Value, json};

use latzero_testkit::protocol_doc::{PROTOCOL as DOC, examples};

/// Values that are any JSON the apps choose (payloads, meta, documents): neither their type nor
/// their insides are checked.
const ANY_JSON: &[&str] = &["data", "document", "response", "error", "meta"];

/// Objects keyed by names the session picks (a pool's triggers, the policies it sets, verifiers
/// by generation): their type is checked, not their keys.
const NAMED: &[&str] = &["triggers", "policies", "write_verifiers"];

/// Ids, which are a string or a number as the request's was (§3.2).
const IDS: &[&str] = &["id", "in_reply_to"];

/// One raw connection whose every frame read is kept (a binary frame as its header).
struct Conn {
    raw: Raw,
    seen: Vec<Value>,
    /// Which of `seen` a wait has taken already.
    taken: Vec<bool>,
}

impl Conn {
    async fn open(srv: &Running) -> Conn {
        Conn {
            raw: Raw::connect(srv.addr).await,
            seen: Vec::new(),
            taken: Vec::new(),
        }
    }

    /// The first frame that `pick` takes and no wait took before, read already or next: an
    /// event that came before the answer a wait was for is still found.
    async fn until(&mut self, pick: impl Fn(&Value) -> bool) -> Value {
        let mut i = 0;
        loop {
            if i == self.seen.len() {
                let next = tokio::time::timeout(std::time::Duration::from_secs(5), self.raw.recv_frame());
                let Ok(Some(frame)) = next.await else {
                    panic!(
                        "the frame waited for did not come; this connection read {:#?}",
                        self.seen
                    )
                };
                let v = match frame {
                    Frame::Json(b) => serde_json::from_slice(&b).unwrap(),
                    Frame::Binary { header, .. } => serde_json::from_slice(&header).unwrap(),
                };
                self.seen.push(v);
                self.taken.push(false);
            }
            if !self.taken[i] && pick(&self.seen[i]) {
                self.taken[i] = true;
                return self.seen[i].clone();
            }
            i += 1;
        }
    }

    /// Closes the connection; returns every frame it read.
    fn close(self) -> Vec<Value> {
        self.seen
    }

    /// Sends `v` and returns its answer, which must be `action`.
    async fn expect(&mut self, v: Value, action: &str) -> Value {
        let id = v["id"].clone();
        self.raw.send(v).await;
        self.answer(id, action).await
    }

    /// Sends a binary frame and returns its answer, which must be `action`.
    async fn expect_binary(&mut self, header: Value, body: &[u8], action: &str) -> Value {
        let id = header["id"].clone();
        self.raw.send_binary(header, body).await;
        self.answer(id, action).await
    }

    /// The frame that ends the request `id`: the first answering it that is not
    /// `backup_progress`, which must be `action`.
    async fn answer(&mut self, id: Value, action: &str) -> Value {
        let r = self
            .until(|f| f["in_reply_to"] == id && f["action"] != "backup_progress")
            .await;
        assert_eq!(r["action"], action, "{r}");
        r
    }

    async fn block_event(&mut self, event: &str) -> Value {
        self.until(|f| f["action"] == "block_event" && f["event"] == event)
            .await
    }
}

/// Every kind of frame the server sends, from one session with it.
async fn frames_of_a_session() -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    // So that a partial handshake has a trigger refused too.
    cfg.limits.max_triggers_per_app = 1;
    let srv = Running::start(cfg).await;
    let hs = |id: Value, app: &str, pools: &[&str], triggers: &[&str]| json!({"action":"handshake","id":id,"app_id":app,"pools":pools,"triggers":triggers});
    // The frames of the connections closed already.
    let mut done: Vec<Value> = Vec::new();

    // Handshakes, presence and a rehydration.
    let mut w = Conn::open(&srv).await;
    w.expect(hs(json!("w"), "w", &["alpha"], &["foo"]), "handshake_ack")
        .await;
    let mut c = Conn::open(&srv).await;
    c.expect(hs(json!(1), "c", &["alpha"], &[]), "handshake_ack").await;
    c.expect(json!({"action":"presence_subscribe","id":2,"pool":"alpha"}), "ack")
        .await;
    let mut r = Conn::open(&srv).await;
    let mut first = hs(json!(3), "r", &["alpha"], &["bar"]);
    first["meta"] = json!({"version": "1.0.0"});
    r.expect(first, "handshake_ack").await;
    c.until(|f| f["action"] == "presence" && f["app_id"] == "r" && f["event"] == "joined")
        .await;
    done.extend(r.close());
    c.until(|f| f["action"] == "presence" && f["app_id"] == "r" && f["event"] == "left")
        .await;
    let mut r = Conn::open(&srv).await;
    let ack = r.expect(hs(json!(4), "r", &[], &[]), "handshake_ack").await;
    assert_eq!(ack["rehydrated"], true, "{ack}");

    // Pools: stored ones, a partial handshake refused a pool and a trigger, listings, a forced
    // removal, an app forgotten, an encrypted pool's challenge.
    c.expect(
        json!({"action":"pool_create","id":5,"pool":"closed","owners":["c"],"policies":{"join":[]}}),
        "pool_created",
    )
    .await;
    let mut p = Conn::open(&srv).await;
    let mut partial = hs(json!(6), "p", &["alpha", "closed"], &["x1", "x2"]);
    partial["partial"] = json!(true);
    let ack = p.expect(partial, "handshake_ack").await;
    assert_eq!(ack["refused"].as_array().map(Vec::len), Some(2), "{ack}");
    p.expect(json!({"action":"unregister","id":7,"triggers":["x1"]}), "ack")
        .await;
    p.expect(json!({"action":"register","id":8,"triggers":["baz"]}), "ack")
        .await;
    p.expect(json!({"action":"join","id":9,"pools":["beta"]}), "ack").await;
    p.expect(json!({"action":"leave","id":10,"pools":["beta"]}), "ack")
        .await;
    c.expect(
        json!({"action":"pool_update","id":11,"pool":"closed","description":"no one joins"}),
        "pool_updated",
    )
    .await;
    c.expect(json!({"action":"pool_list","id":12,"limit":1}), "pool_list_result")
        .await;
    c.expect(json!({"action":"pool_show","id":13,"pool":"alpha"}), "pool_info")
        .await;
    c.expect(json!({"action":"app_list","id":14,"limit":1}), "app_list_result")
        .await;
    c.expect(
        json!({"action":"pool_create","id":15,"pool":"gone","owners":["c"]}),
        "pool_created",
    )
    .await;
    p.expect(json!({"action":"join","id":16,"pool":"gone"}), "ack").await;
    c.expect(
        json!({"action":"pool_remove","id":17,"pool":"gone","force":true}),
        "pool_removed",
    )
    .await;
    p.until(|f| f["action"] == "pool_left").await;
    let mut old = Conn::open(&srv).await;
    old.expect(hs(json!(18), "old", &["alpha"], &[]), "handshake_ack").await;
    done.extend(old.close());
    c.until(|f| f["action"] == "presence" && f["app_id"] == "old" && f["event"] == "left")
        .await;
    c.expect(json!({"action":"app_remove","id":19,"app_id":"old"}), "app_removed")
        .await;
    let (_, v) = latzero_client::generate_pool_keys("vault", 1);
    let keys = json!({"generation": 1, "join": B64.encode(v.join), "write": B64.encode(v.write)});
    c.expect(
        json!({"action":"pool_create","id":20,"pool":"vault","type":"encrypted","keys":keys}),
        "pool_created",
    )
    .await;
    c.expect(
        json!({"action":"pool_challenge","id":21,"pool":"vault"}),
        "pool_challenge",
    )
    .await;

    // Calls: answered, failed by the handler, for a third party, timed out, with no handler.
    let mut s = Conn::open(&srv).await;
    s.expect(hs(json!(22), "s", &["alpha"], &[]), "handshake_ack").await;
    for (id, status, reply_to) in [("t1", "ok", None), ("t2", "error", None), ("t3", "ok", Some("s"))] {
        let mut call = json!({"action":"trigger","id":id,"process":"foo","pool":"alpha","data":{"x":42}});
        if let Some(to) = reply_to {
            call["reply_to"] = json!(to);
        }
        c.raw.send(call).await;
        let t = w.until(|f| f["action"] == "trigger").await;
        let body = if status == "ok" { "response" } else { "error" };
        w.raw
            .send(json!({"action":"response","in_reply_to":t["id"],"status":status,body:{"result":84}}))
            .await;
        let end = c.until(|f| f["in_reply_to"] == id).await;
        assert_eq!(
            end["action"],
            if reply_to.is_some() { "accepted" } else { "response" },
            "{end}"
        );
    }
    s.until(|f| f["action"] == "response" && f["origin"].is_object()).await;
    c.expect(
        json!({"action":"trigger","id":"t4","process":"bar","pool":"alpha","destination":"r","ttl":50}),
        "error",
    )
    .await;
    c.expect(
        json!({"action":"trigger","id":"t5","process":"nope","pool":"alpha"}),
        "error",
    )
    .await;

    // Emits, then a broadcast answered, failed and timed out.
    c.expect(
        json!({"action":"emit","id":"e1","process":"foo","pool":"alpha","data":{"id":7}}),
        "emitted",
    )
    .await;
    w.until(|f| f["action"] == "emit").await;
    p.expect(json!({"action":"unregister","id":23,"triggers":["baz"]}), "ack")
        .await;
    p.expect(json!({"action":"register","id":24,"triggers":["foo"]}), "ack")
        .await;
    s.expect(json!({"action":"register","id":25,"triggers":["foo"]}), "ack")
        .await;
    c.raw
        .send(json!({"action":"trigger","id":"b1","process":"foo","pool":"alpha","broadcast":true,"ttl":1000}))
        .await;
    for (h, status) in [(&mut w, "ok"), (&mut p, "error")] {
        let t = h.until(|f| f["action"] == "trigger").await;
        let body = if status == "ok" { "response" } else { "error" };
        h.raw
            .send(json!({"action":"response","in_reply_to":t["id"],"status":status,body:{"m":1}}))
            .await;
    }
    let b = c.until(|f| f["in_reply_to"] == "b1").await;
    assert_eq!(b["responses"].as_array().map(Vec::len), Some(3), "{b}");

    // Memory blocks of each type: written, read, watched, locked, listed, deleted.
    let block = |id: u64, block: &str| json!({"id": id, "pool": "alpha", "block_id": block});
    let with = |mut v: Value, action: &str, more: Value| {
        v["action"] = json!(action);
        v.as_object_mut().unwrap().extend(more.as_object().unwrap().clone());
        v
    };
    c.expect(
        with(
            block(30, "frame"),
            "block_create",
            json!({"size":4096,"type":"binary","permissions":{"read":["*"],"write":["c"]}}),
        ),
        "block_created",
    )
    .await;
    c.expect(
        with(block(31, "frame"), "block_attach", json!({"mode":"read"})),
        "block_attached",
    )
    .await;
    w.expect(with(block(32, "frame"), "block_watch", json!({})), "block_watching")
        .await;
    w.block_event("synced").await;
    let write = with(block(33, "frame"), "block_write", json!({"offset":0}));
    c.expect_binary(write, b"hello", "block_written").await;
    w.block_event("changed").await;
    c.expect(
        with(block(34, "frame"), "block_read", json!({"length":5})),
        "block_data",
    )
    .await;
    c.expect(
        with(
            block(35, "frame"),
            "block_read",
            json!({"length":5,"encoding":"base64"}),
        ),
        "block_data",
    )
    .await;
    let notify = json!({"version":1,"offset":0,"length":5});
    c.expect(with(block(36, "frame"), "block_notify", notify), "block_notified")
        .await;
    c.expect(
        with(block(37, "frame"), "block_lock", json!({"mode":"exclusive"})),
        "block_locked",
    )
    .await;
    c.expect(with(block(38, "frame"), "block_stat", json!({})), "block_stat_result")
        .await;
    c.expect(with(block(39, "frame"), "block_unlock", json!({})), "block_unlocked")
        .await;
    c.expect(
        with(block(40, "frame"), "block_lock", json!({"lease_ms":20})),
        "block_locked",
    )
    .await;
    c.block_event("lock_expired").await;
    c.expect(
        with(block(41, "cfg"), "block_create", json!({"size":4096,"type":"json"})),
        "block_created",
    )
    .await;
    c.expect(
        with(block(42, "cfg"), "block_write", json!({"document":{"rate":30}})),
        "block_written",
    )
    .await;
    c.expect(with(block(43, "cfg"), "block_read", json!({})), "block_data")
        .await;
    c.expect(
        with(block(44, "log"), "block_create", json!({"size":4096,"type":"stream"})),
        "block_created",
    )
    .await;
    let append = with(block(45, "log"), "block_write", json!({}));
    c.expect_binary(append, b"abc", "block_written").await;
    c.expect(
        with(block(46, "log"), "block_read", json!({"consumer":"x"})),
        "block_records",
    )
    .await;
    c.expect(
        with(
            block(47, "log"),
            "block_read",
            json!({"consumer":"y","encoding":"base64"}),
        ),
        "block_records",
    )
    .await;
    c.expect(with(block(48, "log"), "block_stat", json!({})), "block_stat_result")
        .await;
    c.expect(
        json!({"action":"block_list","id":49,"pool":"alpha"}),
        "block_list_result",
    )
    .await;
    w.expect(with(block(50, "frame"), "block_unwatch", json!({})), "block_unwatched")
        .await;
    w.expect(
        with(block(51, "frame"), "block_watch", json!({"since":1})),
        "block_watching",
    )
    .await;
    c.expect(with(block(52, "frame"), "block_delete", json!({})), "block_deleted")
        .await;
    w.block_event("deleted").await;
    w.expect(with(block(53, "cfg"), "block_watch", json!({})), "block_watching")
        .await;
    w.expect(json!({"action":"leave","id":54,"pool":"alpha"}), "ack").await;
    w.block_event("unwatched").await;

    // Admin requests, before any handshake.
    let mut a = Conn::open(&srv).await;
    a.expect(json!({"action":"ping","id":"p"}), "pong").await;
    a.expect(json!({"action":"backup","id":60}), "backup_done").await;
    a.expect(json!({"action":"health","id":61}), "health_result").await;
    a.expect(json!({"action":"status","id":62}), "status_result").await;

    // Closing: a takeover, then a shutdown.
    let mut s2 = Conn::open(&srv).await;
    let mut take = hs(json!(70), "s", &["alpha"], &[]);
    take["takeover"] = json!(true);
    s2.expect(take, "handshake_ack").await;
    s.until(|f| f["action"] == "closing").await;
    a.expect(json!({"action":"shutdown","id":71}), "ack").await;
    c.until(|f| f["action"] == "closing").await;
    srv.stop().await;

    for conn in [w, c, r, p, s, s2, a] {
        done.extend(conn.close());
    }
    done
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// What `example` (at `path`) shows that none of `real` (the server's values at that place) has.
fn unmatched(path: &str, example: &Value, real: &[&Value], out: &mut Vec<String>) {
    match example {
        Value::Object(fields) => {
            for (k, ev) in fields {
                let at = format!("{path}.{k}");
                let rv: Vec<&Value> = real.iter().filter_map(|r| r.get(k)).collect();
                if rv.is_empty() {
                    out.push(format!("{at}: the server never sends it"));
                } else if ANY_JSON.contains(&k.as_str()) {
                    continue;
                } else if IDS.contains(&k.as_str()) {
                    if !matches!(ev, Value::String(_) | Value::Number(_)) {
                        out.push(format!("{at}: an id is a string or a number, not a {}", kind(ev)));
                    }
                } else if !ev.is_null() && !rv.iter().any(|r| r.is_null() || kind(r) == kind(ev)) {
                    out.push(format!("{at}: a {} here, a {} from the server", kind(ev), kind(rv[0])));
                } else if !NAMED.contains(&k.as_str()) {
                    unmatched(&at, ev, &rv, out);
                }
            }
        }
        Value::Array(items) => {
            let rv: Vec<&Value> = real.iter().filter_map(|r| r.as_array()).flatten().collect();
            for ev in items.iter().filter(|e| e.is_object() || e.is_array()) {
                if rv.is_empty() {
                    out.push(format!("{path}[]: the server never sends an item here"));
                } else {
                    unmatched(&format!("{path}[]"), ev, &rv, out);
                }
            }
        }
        _ => {}
    }
}

/// Every name written as code in PROTOCOL.md: in a fenced block, a `span` or a quoted key.
fn names_in_code() -> BTreeSet<&'static str> {
    let mut code = Vec::new();
    for (i, part) in DOC.split("```").enumerate() {
        if i % 2 == 1 {
            code.push(part);
        } else {
            code.extend(part.split('`').skip(1).step_by(2));
        }
    }
    code.iter()
        .flat_map(|c| c.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_')))
        .filter(|w| !w.is_empty())
        .collect()
}

/// The keys of `v` and of what it nests, with their paths; not inside the apps' JSON or
/// objects keyed by names.
fn keys(path: &str, v: &Value, out: &mut BTreeSet<(String, String)>) {
    match v {
        Value::Object(fields) => {
            for (k, x) in fields {
                out.insert((k.clone(), format!("{path}.{k}")));
                if !ANY_JSON.contains(&k.as_str()) && !NAMED.contains(&k.as_str()) {
                    keys(&format!("{path}.{k}"), x, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| keys(&format!("{path}[]"), x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_describes_the_frames_the_server_sends() {
    let frames = frames_of_a_session().await;
    let mut by_action: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for f in &frames {
        by_action
            .entry(f["action"].as_str().unwrap().to_owned())
            .or_default()
            .push(f);
    }

    // The spec's examples of server frames: their actions seen, their fields sent.
    let shown: Vec<_> = examples().into_iter().filter(|e| e.sent_by_server()).collect();
    assert!(
        shown.len() >= 40,
        "only {} server frames found in PROTOCOL.md",
        shown.len()
    );
    let mut wrong = Vec::new();
    for e in &shown {
        let (line, ex) = (e.line, &e.value);
        let action = ex["action"].as_str().unwrap();
        match by_action.get(action) {
            None => wrong.push(format!("line {line}: no `{action}` frame was seen in the session")),
            Some(real) => {
                let mut out = Vec::new();
                unmatched(action, ex, real, &mut out);
                wrong.extend(out.into_iter().map(|m| format!("line {line}: {m}")));
            }
        }
    }

    // What the server sends, named in the spec.
    let named = names_in_code();
    let mut sent = BTreeSet::new();
    for f in &frames {
        keys(f["action"].as_str().unwrap(), f, &mut sent);
    }
    for (key, path) in &sent {
        if !named.contains(key.as_str()) {
            wrong.push(format!("the server sends {path}, which PROTOCOL.md never names"));
        }
    }
    for action in by_action.keys() {
        if !named.contains(action.as_str()) {
            wrong.push(format!(
                "the server sends `{action}` frames, which PROTOCOL.md never names"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "PROTOCOL.md and the server disagree:\n{}",
        wrong.join("\n")
    );
}
