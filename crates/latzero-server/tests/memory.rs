//! Memory blocks over the wire, against an in-process server (raw frames, exact codes).

mod common;

use common::{Raw, TestServer};
use serde_json::{Value, json};

async fn member(s: &TestServer, app: &str) -> Raw {
    let mut r = s.raw().await;
    r.handshake(app, &["p"], &[]).await;
    r
}

async fn create(r: &mut Raw, extra: Value) -> Value {
    let mut v = json!({"action":"block_create","id":"c","pool":"p","block_id":"b","size":4096});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    r.ask(v).await
}

fn code(v: &Value) -> &str {
    assert_eq!(v["action"], "error", "{v}");
    v["code"].as_str().unwrap()
}

#[tokio::test]
async fn binary_block_roundtrip_in_binary_frames_and_base64() {
    let s = TestServer::start().await;
    let mut a = member(&s, "a").await;
    let c = create(&mut a, json!({})).await;
    assert_eq!(c["action"], "block_created", "{c}");
    assert_eq!(c["block"]["size"], 4096);
    assert_eq!(c["block"]["type"], "binary");
    assert_eq!(c["block"]["version"], 0);

    a.send_binary(
        json!({"action":"block_write","id":1,"pool":"p","block_id":"b","offset":100}),
        b"zero-copy",
    )
    .await;
    let w = a.expect().await;
    assert_eq!(
        (w["action"].as_str(), w["version"].as_u64()),
        (Some("block_written"), Some(1)),
        "{w}"
    );
    let w = a
        .ask(json!({"action":"block_write","id":2,"pool":"p","block_id":"b","offset":0,"data":"aGk="}))
        .await;
    assert_eq!(w["version"], 2);

    a.send(json!({"action":"block_read","id":3,"pool":"p","block_id":"b","offset":100,"length":9}))
        .await;
    let (h, body) = a.expect_binary().await;
    assert_eq!(h["action"], "block_data");
    assert_eq!(h["in_reply_to"], 3);
    assert_eq!(h["version"], 2);
    assert_eq!(&body[..], b"zero-copy");
    let r = a
        .ask(json!({"action":"block_read","id":4,"pool":"p","block_id":"b","length":2,"encoding":"base64"}))
        .await;
    assert_eq!(r["data"], "aGk=");

    // The file is where attach says, and holds the same bytes after the header.
    let at = a
        .ask(json!({"action":"block_attach","id":5,"pool":"p","block_id":"b"}))
        .await;
    assert_eq!(at["mode"], "write");
    assert_eq!(at["header_len"], 4096);
    let file = std::fs::read(at["path"].as_str().unwrap()).unwrap();
    assert_eq!(&file[4096 + 100..4096 + 109], b"zero-copy");
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_its_own_code_and_the_block_stays_intact() {
    let s = TestServer::start().await;
    let mut a = member(&s, "a").await;
    create(&mut a, json!({})).await;
    a.ask(json!({"action":"block_write","id":0,"pool":"p","block_id":"b","data":"AQID"}))
        .await;
    let cases = [
        (
            json!({"action":"block_create","id":1,"pool":"p","block_id":"b","size":10}),
            "BLOCK_EXISTS",
        ),
        (
            json!({"action":"block_create","id":1,"pool":"p","block_id":"z","size":0}),
            "INVALID_SIZE",
        ),
        (
            json!({"action":"block_create","id":1,"pool":"p","block_id":"z","size":1u64<<40}),
            "INVALID_SIZE",
        ),
        (
            json!({"action":"block_create","id":1,"pool":"p","block_id":"..","size":1}),
            "INVALID_NAME",
        ),
        (
            json!({"action":"block_read","id":1,"pool":"p","block_id":"nope"}),
            "BLOCK_NOT_FOUND",
        ),
        (
            json!({"action":"block_read","id":1,"pool":"p","block_id":"b","offset":4000,"length":97}),
            "OUT_OF_RANGE",
        ),
        (
            json!({"action":"block_write","id":1,"pool":"p","block_id":"b","offset":4095,"data":"AQID"}),
            "OUT_OF_RANGE",
        ),
        (
            json!({"action":"block_write","id":1,"pool":"p","block_id":"b","data":"%%%"}),
            "INVALID_MESSAGE",
        ),
        (
            json!({"action":"block_write","id":1,"pool":"p","block_id":"b"}),
            "INVALID_MESSAGE",
        ),
        (
            json!({"action":"block_write","id":1,"pool":"p","block_id":"b","document":{}}),
            "WRONG_TYPE",
        ),
        (
            json!({"action":"block_read","id":1,"pool":"other","block_id":"b"}),
            "NOT_IN_POOL",
        ),
        (
            json!({"action":"block_unlock","id":1,"pool":"p","block_id":"b"}),
            "NOT_LOCKED",
        ),
        (
            json!({"action":"block_notify","id":1,"pool":"p","block_id":"b","version":99}),
            "INVALID_MESSAGE",
        ),
        (
            json!({"action":"block_lock","id":1,"pool":"p","block_id":"b","lease_ms":0}),
            "INVALID_MESSAGE",
        ),
    ];
    for (req, want) in cases {
        let r = a.ask(req.clone()).await;
        assert_eq!(code(&r), want, "{req} -> {r}");
    }
    let r = a
        .ask(json!({"action":"block_read","id":9,"pool":"p","block_id":"b","length":3,"encoding":"base64"}))
        .await;
    assert_eq!(
        (r["data"].as_str(), r["version"].as_u64()),
        (Some("AQID"), Some(1)),
        "{r}"
    );
    // Before the handshake, block actions need one.
    let mut anon = s.raw().await;
    let r = anon.ask(json!({"action":"block_list","id":1,"pool":"p"})).await;
    assert_eq!(code(&r), "HANDSHAKE_REQUIRED");
    s.stop().await;
}

#[tokio::test]
async fn json_blocks_validate_and_return_the_document() {
    let s = TestServer::start().await;
    let mut a = member(&s, "a").await;
    create(&mut a, json!({"type":"json","size":256})).await;
    let r = a
        .ask(json!({"action":"block_read","id":1,"pool":"p","block_id":"b"}))
        .await;
    assert_eq!((r["document"].clone(), r["version"].as_u64()), (Value::Null, Some(0)));
    let w = a
        .ask(json!({"action":"block_write","id":2,"pool":"p","block_id":"b","document":{"users":[1,2]}}))
        .await;
    assert_eq!(w["version"], 1);
    a.send_binary(
        json!({"action":"block_write","id":3,"pool":"p","block_id":"b"}),
        b"{broken",
    )
    .await;
    assert_eq!(code(&a.expect().await), "INVALID_JSON");
    let r = a
        .ask(json!({"action":"block_read","id":4,"pool":"p","block_id":"b"}))
        .await;
    assert_eq!(r["document"], json!({"users":[1,2]}));
    let big = "x".repeat(300);
    let r = a
        .ask(json!({"action":"block_write","id":5,"pool":"p","block_id":"b","document":big}))
        .await;
    assert_eq!(code(&r), "OUT_OF_RANGE");
    s.stop().await;
}

/// What a mapped writer does to a json block (PROTOCOL.md §7.1: the document after the header,
/// its length in `used`, the version bumped), done with plain file writes: the server never
/// sees these bytes on their way in.
fn mapped_json_write(path: &str, doc: &[u8]) {
    use std::os::unix::fs::FileExt;
    const VERSION: u64 = 32;
    const USED: u64 = 56;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut v = [0u8; 8];
    f.read_exact_at(&mut v, VERSION).unwrap();
    f.write_all_at(doc, latzero_memory::HEADER_LEN).unwrap();
    f.write_all_at(&(doc.len() as u64).to_ne_bytes(), USED).unwrap();
    f.write_all_at(&(u64::from_ne_bytes(v) + 1).to_ne_bytes(), VERSION)
        .unwrap();
}

#[tokio::test]
async fn a_json_document_from_a_mapped_writer_is_checked_before_it_is_sent() {
    let s = TestServer::start().await;
    let mut a = member(&s, "a").await;
    create(&mut a, json!({"type":"json","size":256})).await;
    let w = a
        .ask(json!({"action":"block_write","id":1,"pool":"p","block_id":"b","document":{"ok":1}}))
        .await;
    assert_eq!(w["version"], 1);
    let read = |id: u64| json!({"action":"block_read","id":id,"pool":"p","block_id":"b"});
    let r = a.ask(read(2)).await;
    assert_eq!(
        (r["document"].clone(), r["version"].as_u64()),
        (json!({"ok":1}), Some(1))
    );
    let at = a
        .ask(json!({"action":"block_attach","id":3,"pool":"p","block_id":"b","mode":"write"}))
        .await;
    let path = at["path"].as_str().unwrap().to_owned();
    // A version already sent once is not taken for checked when the bytes move on: each new
    // version is checked, again at every read while it stays broken.
    mapped_json_write(&path, b"{\"ok\":");
    for id in [4, 5] {
        let r = a.ask(read(id)).await;
        assert_eq!(code(&r), "INTERNAL", "{r}");
        assert!(
            r["message"].as_str().unwrap().contains("not a valid JSON document"),
            "{r}"
        );
    }
    // Valid JSON, nested past what a payload may be (PROTOCOL.md §3): not sent either, and not
    // taken from a write through the server.
    let max = latzero_proto::message::MAX_NESTING;
    let deep = format!("{}{}", "[".repeat(max + 1), "]".repeat(max + 1));
    mapped_json_write(&path, deep.as_bytes());
    let r = a.ask(read(40)).await;
    assert_eq!(code(&r), "INTERNAL", "{r}");
    assert!(r["message"].as_str().unwrap().contains("levels deep"), "{r}");
    a.send_binary(
        json!({"action":"block_write","id":41,"pool":"p","block_id":"b"}),
        deep.as_bytes(),
    )
    .await;
    assert_eq!(code(&a.expect().await), "INVALID_JSON");
    mapped_json_write(&path, b"[1,2]");
    for id in [6, 7] {
        let r = a.ask(read(id)).await;
        assert_eq!((r["document"].clone(), r["version"].as_u64()), (json!([1, 2]), Some(4)));
    }
    // The connection stays up through the refusals, and a write through the server counts as
    // checked.
    let w = a
        .ask(json!({"action":"block_write","id":8,"pool":"p","block_id":"b","document":"z"}))
        .await;
    assert_eq!(w["version"], 5);
    assert_eq!(a.ask(read(9)).await["document"], "z");
    s.stop().await;
}

#[tokio::test]
async fn stream_blocks_keep_a_cursor_per_consumer() {
    let s = TestServer::start().await;
    let mut a = member(&s, "a").await;
    create(&mut a, json!({"type":"stream","size":1024})).await;
    for (i, rec) in ["one", "two", "three"].iter().enumerate() {
        a.send_binary(
            json!({"action":"block_write","id":i,"pool":"p","block_id":"b"}),
            rec.as_bytes(),
        )
        .await;
        assert_eq!(a.expect().await["index"], i);
    }
    let mut read = async |consumer: &str, max: u64| {
        a.send(json!({"action":"block_read","id":"r","pool":"p","block_id":"b","consumer":consumer,"max":max}))
            .await;
        let (h, body) = a.expect_binary().await;
        let mut at = 0;
        let mut out = vec![];
        for l in h["lengths"].as_array().unwrap() {
            let l = l.as_u64().unwrap() as usize;
            out.push(String::from_utf8(body[at..at + l].to_vec()).unwrap());
            at += l;
        }
        (out, h["next_index"].as_u64().unwrap())
    };
    assert_eq!(read("c1", 2).await, (vec!["one".to_owned(), "two".to_owned()], 2));
    assert_eq!(read("c2", 10).await.0.len(), 3, "c2 has its own cursor");
    assert_eq!(read("c1", 10).await, (vec!["three".to_owned()], 3));
    assert_eq!(read("c1", 10).await, (vec![], 3));
    let r = a
        .ask(json!({"action":"block_read","id":"x","pool":"p","block_id":"b"}))
        .await;
    assert_eq!(code(&r), "INVALID_MESSAGE");
    let st = a
        .ask(json!({"action":"block_stat","id":"s","pool":"p","block_id":"b"}))
        .await;
    assert_eq!(st["block"]["stream"]["next_index"], 3);
    assert_eq!(st["block"]["stream"]["consumers"].as_array().unwrap().len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn stream_full_is_an_error_until_consumers_read() {
    let s = TestServer::start().await;
    let mut a = member(&s, "a").await;
    create(&mut a, json!({"type":"stream","size":32,"overflow":"error"})).await;
    // Register a consumer, so records are held for it.
    a.ask(json!({"action":"block_read","id":"r","pool":"p","block_id":"b","consumer":"c","encoding":"base64"}))
        .await;
    for i in 0..2 {
        let w = a
            .ask(json!({"action":"block_write","id":i,"pool":"p","block_id":"b","data":"AAAAAAAAAAA="}))
            .await;
        assert_eq!(w["action"], "block_written", "{w}");
    }
    let r = a
        .ask(json!({"action":"block_write","id":9,"pool":"p","block_id":"b","data":"AQ=="}))
        .await;
    assert_eq!(code(&r), "STREAM_FULL");
    let r = a
        .ask(json!({"action":"block_read","id":"r","pool":"p","block_id":"b","consumer":"c","encoding":"base64"}))
        .await;
    assert_eq!(r["records"].as_array().unwrap().len(), 2);
    let w = a
        .ask(json!({"action":"block_write","id":10,"pool":"p","block_id":"b","data":"AQ=="}))
        .await;
    assert_eq!(w["action"], "block_written", "{w}");
    s.stop().await;
}

#[tokio::test]
async fn permissions_are_checked_on_every_operation() {
    let s = TestServer::start().await;
    let mut owner = member(&s, "owner").await;
    create(&mut owner, json!({"permissions":{"read":["reader"],"write":["owner"]}})).await;
    let mut reader = member(&s, "reader").await;
    let mut stranger = member(&s, "stranger").await;
    let at = reader
        .ask(json!({"action":"block_attach","id":1,"pool":"p","block_id":"b"}))
        .await;
    assert_eq!(at["mode"], "read", "the widest mode allowed: {at}");
    let r = reader
        .ask(json!({"action":"block_attach","id":2,"pool":"p","block_id":"b","mode":"write"}))
        .await;
    assert_eq!(code(&r), "PERMISSION_DENIED");
    for req in [
        json!({"action":"block_write","id":3,"pool":"p","block_id":"b","data":"AQ=="}),
        json!({"action":"block_lock","id":3,"pool":"p","block_id":"b"}),
        json!({"action":"block_delete","id":3,"pool":"p","block_id":"b"}),
        json!({"action":"block_notify","id":3,"pool":"p","block_id":"b","version":0}),
    ] {
        assert_eq!(code(&reader.ask(req.clone()).await), "PERMISSION_DENIED", "{req}");
    }
    let r = reader
        .ask(json!({"action":"block_read","id":4,"pool":"p","block_id":"b","length":1,"encoding":"base64"}))
        .await;
    assert_eq!(r["action"], "block_data");
    for req in [
        json!({"action":"block_read","id":5,"pool":"p","block_id":"b"}),
        json!({"action":"block_attach","id":5,"pool":"p","block_id":"b"}),
        json!({"action":"block_watch","id":5,"pool":"p","block_id":"b"}),
        json!({"action":"block_lock","id":5,"pool":"p","block_id":"b","mode":"shared"}),
    ] {
        assert_eq!(code(&stranger.ask(req.clone()).await), "PERMISSION_DENIED", "{req}");
    }
    s.stop().await;
}

#[tokio::test]
async fn locks_conflict_wait_time_out_and_end_with_their_holder() {
    let s = TestServer::start().await;
    let mut a = member(&s, "a").await;
    let mut b = member(&s, "b").await;
    create(&mut a, json!({})).await;
    let l = a
        .ask(json!({"action":"block_lock","id":1,"pool":"p","block_id":"b"}))
        .await;
    assert_eq!(
        (l["action"].as_str(), l["mode"].as_str(), l["renewed"].as_bool()),
        (Some("block_locked"), Some("exclusive"), Some(false)),
        "{l}"
    );
    // Locking again while the lease holds renews it.
    let l = a
        .ask(json!({"action":"block_lock","id":1,"pool":"p","block_id":"b","lease_ms":60000}))
        .await;
    assert_eq!(
        (l["lease_ms"].as_u64(), l["renewed"].as_bool()),
        (Some(60000), Some(true)),
        "{l}"
    );
    // The holder writes; the other app is refused, locks fail at once or after their wait.
    let w = a
        .ask(json!({"action":"block_write","id":2,"pool":"p","block_id":"b","data":"AQ=="}))
        .await;
    assert_eq!(w["action"], "block_written");
    let w = b
        .ask(json!({"action":"block_write","id":2,"pool":"p","block_id":"b","data":"AQ=="}))
        .await;
    assert_eq!(code(&w), "LOCKED");
    assert!(w["message"].as_str().unwrap().contains("'a'"), "{w}");
    let r = b
        .ask(json!({"action":"block_lock","id":3,"pool":"p","block_id":"b"}))
        .await;
    assert_eq!(code(&r), "LOCKED");
    let r = b
        .ask(json!({"action":"block_lock","id":4,"pool":"p","block_id":"b","wait_ms":50}))
        .await;
    assert_eq!(code(&r), "LOCK_TIMEOUT");
    // A waiter is granted when the holder unlocks.
    b.send(json!({"action":"block_lock","id":5,"pool":"p","block_id":"b","mode":"shared","wait_ms":10000}))
        .await;
    b.sync().await; // the lock request is queued before the unlock
    let u = a
        .ask(json!({"action":"block_unlock","id":6,"pool":"p","block_id":"b"}))
        .await;
    assert_eq!(u["action"], "block_unlocked");
    let g = b.expect().await;
    assert_eq!(
        (g["in_reply_to"].as_u64(), g["mode"].as_str()),
        (Some(5), Some("shared")),
        "{g}"
    );
    // Shared leases let other readers in, but not writers.
    let l = a
        .ask(json!({"action":"block_lock","id":7,"pool":"p","block_id":"b","mode":"shared"}))
        .await;
    assert_eq!(l["action"], "block_locked");
    let w = a
        .ask(json!({"action":"block_write","id":8,"pool":"p","block_id":"b","data":"AQ=="}))
        .await;
    assert_eq!(code(&w), "LOCKED");
    // b disconnects: its lease ends, and a may write again.
    a.send(json!({"action":"block_lock","id":9,"pool":"p","block_id":"b","wait_ms":10000}))
        .await;
    a.sync().await;
    drop(b);
    let g = a.expect().await;
    assert_eq!(
        (g["in_reply_to"].as_u64(), g["mode"].as_str()),
        (Some(9), Some("exclusive")),
        "{g}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_lease_expires_and_its_holder_is_told() {
    let s = TestServer::start().await;
    let mut a = member(&s, "a").await;
    let mut b = member(&s, "b").await;
    create(&mut a, json!({})).await;
    a.ask(json!({"action":"block_lock","id":1,"pool":"p","block_id":"b","lease_ms":100}))
        .await;
    let g = b
        .ask(json!({"action":"block_lock","id":2,"pool":"p","block_id":"b","wait_ms":10000}))
        .await;
    assert_eq!(g["action"], "block_locked", "granted once a's lease ran out: {g}");
    let e = a.expect().await;
    assert_eq!(
        (e["action"].as_str(), e["event"].as_str()),
        (Some("block_event"), Some("lock_expired")),
        "{e}"
    );
    // a, locking again once b is done, is told its lease is new: it had lapsed.
    b.ask(json!({"action":"block_unlock","id":3,"pool":"p","block_id":"b"}))
        .await;
    let l = a
        .ask(json!({"action":"block_lock","id":4,"pool":"p","block_id":"b"}))
        .await;
    assert_eq!(
        (l["action"].as_str(), l["renewed"].as_bool()),
        (Some("block_locked"), Some(false)),
        "{l}"
    );
    s.stop().await;
}

#[tokio::test]
async fn watchers_get_the_initial_state_then_synced_then_every_change() {
    let s = TestServer::start().await;
    let mut a = member(&s, "a").await;
    let mut w = member(&s, "w").await;
    create(&mut a, json!({})).await;
    // An empty block: no state to send, but still "synced".
    let r = w
        .ask(json!({"action":"block_watch","id":1,"pool":"p","block_id":"b"}))
        .await;
    assert_eq!(
        (r["action"].as_str(), r["version"].as_u64()),
        (Some("block_watching"), Some(0))
    );
    let e = w.expect().await;
    assert_eq!(e["event"], "synced");
    a.ask(json!({"action":"block_write","id":2,"pool":"p","block_id":"b","offset":8,"data":"AQID"}))
        .await;
    let e = w.expect().await;
    assert_eq!(
        (
            e["event"].as_str(),
            e["version"].as_u64(),
            e["offset"].as_u64(),
            e["length"].as_u64()
        ),
        (Some("changed"), Some(1), Some(8), Some(3)),
        "{e}"
    );
    // A local writer reports its own write.
    a.ask(json!({"action":"block_write","id":3,"pool":"p","block_id":"b","data":"AQ=="}))
        .await;
    let n = a
        .ask(json!({"action":"block_notify","id":4,"pool":"p","block_id":"b","version":2,"offset":0,"length":1}))
        .await;
    assert_eq!(n["action"], "block_notified");
    assert_eq!(w.expect().await["version"], 2);
    assert_eq!(w.expect().await["version"], 2, "the notify's own event");
    // A watcher that saw version 1 is told at once that it is behind; one at 2 is not.
    let mut late = member(&s, "late").await;
    late.ask(json!({"action":"block_watch","id":5,"pool":"p","block_id":"b","since":1}))
        .await;
    let e = late.expect().await;
    assert_eq!((e["event"].as_str(), e["version"].as_u64()), (Some("changed"), Some(2)));
    assert_eq!(late.expect().await["event"], "synced");
    let mut current = member(&s, "current").await;
    current
        .ask(json!({"action":"block_watch","id":6,"pool":"p","block_id":"b","since":2}))
        .await;
    assert_eq!(current.expect().await["event"], "synced");
    // A watcher that saw a version the block has not reached saw another block of that name
    // (deleted and created again, or gone with a restart): it is behind too.
    let mut stale = member(&s, "stale").await;
    stale
        .ask(json!({"action":"block_watch","id":9,"pool":"p","block_id":"b","since":7}))
        .await;
    let e = stale.expect().await;
    assert_eq!(
        (e["event"].as_str(), e["version"].as_u64()),
        (Some("changed"), Some(2)),
        "{e}"
    );
    let synced = stale.expect().await;
    assert_eq!(synced["event"], "synced");
    // `synced` says when the block was created; a watcher that saw a block created at another
    // time saw another block, at whatever version.
    let created = synced["created_at"].as_u64().expect("created_at in synced");
    let mut other = member(&s, "other").await;
    other
        .ask(json!({"action":"block_watch","id":10,"pool":"p","block_id":"b","since":2,"created_at":created - 1}))
        .await;
    assert_eq!(other.expect().await["event"], "changed");
    assert_eq!(other.expect().await["event"], "synced");
    let mut same = member(&s, "same").await;
    same.ask(json!({"action":"block_watch","id":11,"pool":"p","block_id":"b","since":2,"created_at":created}))
        .await;
    assert_eq!(same.expect().await["event"], "synced");
    // Unwatched: no more events. Deleted: watchers are told.
    current
        .ask(json!({"action":"block_unwatch","id":7,"pool":"p","block_id":"b"}))
        .await;
    a.ask(json!({"action":"block_delete","id":8,"pool":"p","block_id":"b"}))
        .await;
    assert_eq!(w.expect().await["event"], "deleted");
    assert!(current.sync().await.is_empty());
    s.stop().await;
}

/// On the default place for non-persistent blocks (/dev/shm here), stopped gracefully.
#[tokio::test]
async fn persistent_blocks_survive_a_restart_and_volatile_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        common::Running::start({
            // The default place for non-persistent blocks.
            let mut cfg = common::config_in(dir.path());
            cfg.memory.volatile_dir = None;
            cfg
        })
    };
    let srv = start().await;
    let addr = srv.addr;
    let mut a = Raw::connect(addr).await;
    a.handshake("a", &["p"], &[]).await;
    create(
        &mut a,
        json!({"persistent":true,"permissions":{"read":["*"],"write":["a"]}}),
    )
    .await;
    a.ask(json!({"action":"block_create","id":"v","pool":"p","block_id":"v","size":64}))
        .await;
    a.ask(json!({"action":"block_write","id":1,"pool":"p","block_id":"b","data":"c3Vydml2ZWQ="}))
        .await;
    let at = a
        .ask(json!({"action":"block_attach","id":2,"pool":"p","block_id":"v"}))
        .await;
    let volatile = std::path::PathBuf::from(at["path"].as_str().unwrap());
    assert!(volatile.exists());
    drop(a);
    srv.stop().await;
    assert!(!volatile.exists(), "non-persistent blocks go with the server");
    {
        // The persistent block's metadata is in the store, with the version it had at shutdown.
        let db = rusqlite::Connection::open(dir.path().join("data.db")).unwrap();
        let (size, version, owner): (i64, i64, String) = db
            .query_row(
                "SELECT size, version, json_extract(config, '$.owner') FROM memory_blocks WHERE pool = 'p' AND block_id = 'b'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((size, version, owner.as_str()), (4096, 1, "a"));
        let n: i64 = db
            .query_row("SELECT COUNT(*) FROM memory_blocks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "non-persistent blocks are not stored");
        // A record whose file is gone (dropped at start) and a file with no record (removed).
        db.execute(
            "INSERT INTO memory_blocks (pool, block_id, size, type, created, updated, persistent, config)
             VALUES ('p', 'ghost', 64, 'binary', 1, 1, 1, '{\"owner\":\"a\"}')",
            [],
        )
        .unwrap();
    }
    let stray = dir.path().join("memory/p/stray.blk");
    std::fs::write(&stray, b"left by a crash between the file and its record").unwrap();

    let srv = start().await;
    let addr = srv.addr;
    let mut a = Raw::connect(addr).await;
    a.handshake("a", &["p"], &[]).await;
    let r = a
        .ask(json!({"action":"block_read","id":3,"pool":"p","block_id":"b","length":8,"encoding":"base64"}))
        .await;
    assert_eq!(
        (r["data"].as_str(), r["version"].as_u64()),
        (Some("c3Vydml2ZWQ="), Some(1)),
        "{r}"
    );
    let st = a
        .ask(json!({"action":"block_stat","id":4,"pool":"p","block_id":"b"}))
        .await;
    assert_eq!(st["block"]["permissions"]["write"], json!(["a"]));
    assert_eq!(st["block"]["owner"], "a");
    let r = a
        .ask(json!({"action":"block_stat","id":5,"pool":"p","block_id":"v"}))
        .await;
    assert_eq!(code(&r), "BLOCK_NOT_FOUND");
    let l = a.ask(json!({"action":"block_list","id":6,"pool":"p"})).await;
    assert_eq!(l["blocks"].as_array().unwrap().len(), 1);
    assert!(
        !stray.exists(),
        "a block file the store does not know is removed at start"
    );
    let r = a
        .ask(json!({"action":"block_stat","id":7,"pool":"p","block_id":"ghost"}))
        .await;
    assert_eq!(code(&r), "BLOCK_NOT_FOUND", "a record without its file is dropped");
    srv.stop().await;
}

/// Leaving a pool ends what the app held on its blocks, as a disconnect does: its lease goes
/// (others may write), its lock wait fails with NOT_IN_POOL, and its watch ends with an
/// `unwatched` event. A removed pool's persistent blocks keep no lease or watch of its members.
#[tokio::test]
async fn leaving_a_pool_ends_leases_waits_and_watches_on_its_blocks() {
    let s = TestServer::start().await;
    let mut a = member(&s, "a").await;
    let (mut holder, mut waiter, mut watcher) = (member(&s, "h").await, member(&s, "w").await, member(&s, "v").await);
    assert_eq!(create(&mut a, json!({})).await["action"], "block_created");
    let lock = |id: &str, wait: u64| json!({"action":"block_lock","id":id,"pool":"p","block_id":"b","mode":"exclusive","lease_ms":60000,"wait_ms":wait});
    assert_eq!(holder.ask(lock("l1", 0)).await["action"], "block_locked");
    waiter.send(lock("l2", 30000)).await;
    let w = watcher
        .ask(json!({"action":"block_watch","id":"wa","pool":"p","block_id":"b"}))
        .await;
    assert_eq!(w["action"], "block_watching", "{w}");
    watcher.sync().await;

    waiter.send(json!({"action":"leave","id":"x","pools":["p"]})).await;
    let refused = waiter.expect().await;
    assert_eq!(
        (refused["in_reply_to"].as_str(), code(&refused)),
        (Some("l2"), "NOT_IN_POOL")
    );
    assert_eq!(waiter.expect().await["in_reply_to"], "x");
    let write = json!({"action":"block_write","id":"wr","pool":"p","block_id":"b","offset":0,"data":"aGk="});
    assert_eq!(code(&a.ask(write.clone()).await), "LOCKED");
    assert_eq!(
        holder.ask(json!({"action":"leave","id":"y","pools":["p"]})).await["action"],
        "ack"
    );
    assert_eq!(a.ask(write).await["action"], "block_written", "the leaver's lease went");
    assert_eq!(watcher.expect().await["event"], "changed");
    watcher.send(json!({"action":"leave","id":"z","pools":["p"]})).await;
    let ended = watcher.expect().await;
    assert_eq!(
        (ended["event"].as_str(), ended["block_id"].as_str()),
        (Some("unwatched"), Some("b")),
        "{ended}"
    );
    assert!(ended["reason"].as_str().unwrap().contains("left pool 'p'"), "{ended}");
    let st = a
        .ask(json!({"action":"block_stat","id":"st","pool":"p","block_id":"b"}))
        .await;
    assert_eq!(
        (&st["block"]["locks"], &st["block"]["watchers"]),
        (&json!({"held": [], "waiting": 0}), &json!(0)),
        "{st}"
    );

    // A removed pool's persistent block: its members' lease and watch end with it.
    let mut owner = s.raw().await;
    owner.handshake("owner", &[], &[]).await;
    let r = owner
        .ask(json!({"action":"pool_create","id":1,"pool":"q","owners":["owner"]}))
        .await;
    assert_eq!(r["action"], "pool_created", "{r}");
    let mut m = s.raw().await;
    m.handshake("m", &["q"], &[]).await;
    let c = m
        .ask(json!({"action":"block_create","id":1,"pool":"q","block_id":"keep","size":64,"persistent":true}))
        .await;
    assert_eq!(c["action"], "block_created", "{c}");
    let l = json!({"action":"block_lock","id":2,"pool":"q","block_id":"keep","mode":"exclusive","lease_ms":60000});
    assert_eq!(m.ask(l).await["action"], "block_locked");
    assert_eq!(
        m.ask(json!({"action":"block_watch","id":3,"pool":"q","block_id":"keep"}))
            .await["action"],
        "block_watching"
    );
    m.sync().await;
    let r = owner
        .ask(json!({"action":"pool_remove","id":2,"pool":"q","force":true}))
        .await;
    assert_eq!(r["blocks_removed"], 0, "{r}");
    let told: Vec<Value> = m.sync().await;
    let kinds: Vec<&str> = told
        .iter()
        .map(|f| f["event"].as_str().or(f["action"].as_str()).unwrap())
        .collect();
    assert_eq!(kinds, ["pool_left", "unwatched"], "{told:?}");
    assert_eq!(
        m.ask(json!({"action":"join","id":4,"pools":["q"]})).await["action"],
        "ack"
    );
    let st = m
        .ask(json!({"action":"block_stat","id":5,"pool":"q","block_id":"keep"}))
        .await;
    assert_eq!(
        (&st["block"]["locks"], &st["block"]["watchers"]),
        (&json!({"held": [], "waiting": 0}), &json!(0)),
        "{st}"
    );
    s.stop().await;
}

/// A pool's new policies apply to the members already in it: a member `join` no longer allows
/// is taken out (`pool_left`; its lease and watch end as on leaving), and the others lose what
/// needed a right they no longer have — a watch needs read, a shared lease read, an exclusive
/// lease write (a holder is told by `lock_expired`, a waiter by PERMISSION_DENIED). What they
/// may still do stays.
#[tokio::test]
async fn a_policy_change_ends_what_members_may_no_longer_do() {
    let s = TestServer::start().await;
    let mut owner = s.raw().await;
    owner.handshake("owner", &[], &[]).await;
    let r = owner
        .ask(json!({"action":"pool_create","id":1,"pool":"g","owners":["owner"]}))
        .await;
    assert_eq!(r["action"], "pool_created", "{r}");
    let mut m = std::collections::BTreeMap::new();
    for app in ["x", "y", "z"] {
        let mut r = s.raw().await;
        r.handshake(app, &["g"], &[]).await;
        m.insert(app, r);
    }
    let ask = async |r: &mut Raw, v: Value| {
        let mut v = v;
        v["pool"] = json!("g");
        r.ask(v).await
    };
    for b in ["b", "c"] {
        let c = ask(
            m.get_mut("x").unwrap(),
            json!({"action":"block_create","id":"c","block_id":b,"size":64,"permissions":{"read":["*"],"write":["*"]}}),
        )
        .await;
        assert_eq!(c["action"], "block_created", "{c}");
    }
    let lock = |b: &str, mode: &str, wait: u64| json!({"action":"block_lock","id":format!("l{b}"),"pool":"g","block_id":b,"mode":mode,"lease_ms":60000,"wait_ms":wait});
    let watch = json!({"action":"block_watch","id":"w","block_id":"b"});
    // x holds b exclusively and watches it; y waits to lock b exclusively, watches b and holds
    // c shared; z watches b and holds c shared.
    assert_eq!(
        m.get_mut("x").unwrap().ask(lock("b", "exclusive", 0)).await["action"],
        "block_locked"
    );
    m.get_mut("y").unwrap().send(lock("b", "exclusive", 60000)).await;
    for app in ["x", "y", "z"] {
        let r = m.get_mut(app).unwrap();
        assert_eq!(ask(r, watch.clone()).await["action"], "block_watching");
        r.sync().await;
    }
    for app in ["y", "z"] {
        assert_eq!(
            m.get_mut(app).unwrap().ask(lock("c", "shared", 0)).await["action"],
            "block_locked"
        );
    }

    let u = owner
        .ask(json!({"action":"pool_update","id":2,"pool":"g","policies":{"join":["y","z"],"read":["y"],"write":[]}}))
        .await;
    assert_eq!(
        (u["action"].as_str(), &u["members_removed"], &u["info"]["members"]),
        (Some("pool_updated"), &json!(["x"]), &json!(["y", "z"])),
        "{u}"
    );
    let told = |frames: &[Value]| -> Vec<String> {
        frames
            .iter()
            .map(|f| {
                let what = f["event"]
                    .as_str()
                    .or(f["code"].as_str())
                    .or(f["action"].as_str())
                    .unwrap();
                format!("{what} {}", f["block_id"].as_str().unwrap_or("-"))
            })
            .collect()
    };
    let x = m.get_mut("x").unwrap().sync().await;
    assert_eq!(told(&x), ["pool_left -", "unwatched b"], "{x:?}");
    assert!(
        x[0]["message"]
            .as_str()
            .unwrap()
            .contains("no longer let this app join"),
        "{x:?}"
    );
    let y = m.get_mut("y").unwrap().sync().await;
    assert_eq!(told(&y), ["PERMISSION_DENIED -"], "y may no longer write: {y:?}");
    assert_eq!(y[0]["in_reply_to"], "lb", "{y:?}");
    let z = m.get_mut("z").unwrap().sync().await;
    assert_eq!(
        told(&z),
        ["unwatched b", "lock_expired c"],
        "z may no longer read: {z:?}"
    );
    assert!(
        z[0]["reason"]
            .as_str()
            .unwrap()
            .contains("no longer allow app 'z' to read"),
        "{z:?}"
    );

    let mut stat = async |b: &str| {
        let st = ask(
            m.get_mut("y").unwrap(),
            json!({"action":"block_stat","id":"s","block_id":b}),
        )
        .await;
        (st["block"]["locks"].clone(), st["block"]["watchers"].clone())
    };
    assert_eq!(
        stat("b").await,
        (json!({"held": [], "waiting": 0}), json!(1)),
        "only y watches b"
    );
    let (locks, _) = stat("c").await;
    let held: Vec<&str> = locks["held"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["app_id"].as_str().unwrap())
        .collect();
    assert_eq!(held, ["y"], "y may still read, so keeps its shared lease: {locks}");
    s.stop().await;
}

/// A lock wait that ends (its app left the pool) no longer holds back the waits behind it: a
/// shared wait queued behind a gone exclusive one is granted beside the shared lease held.
#[tokio::test]
async fn a_wait_that_goes_lets_the_waits_behind_it_through() {
    let s = TestServer::start().await;
    let mut a = member(&s, "a").await;
    let (mut w1, mut w2) = (member(&s, "w1").await, member(&s, "w2").await);
    assert_eq!(create(&mut a, json!({})).await["action"], "block_created");
    let lock = |id: &str, mode: &str| json!({"action":"block_lock","id":id,"pool":"p","block_id":"b","mode":mode,"lease_ms":60000,"wait_ms":60000});
    assert_eq!(a.ask(lock("l1", "shared")).await["action"], "block_locked");
    w1.send(lock("l2", "exclusive")).await;
    w1.sync().await;
    w2.send(lock("l3", "shared")).await;
    w2.sync().await;
    w1.send(json!({"action":"leave","id":"x","pools":["p"]})).await;
    assert_eq!(code(&w1.expect().await), "NOT_IN_POOL");
    let granted = w2.expect().await;
    assert_eq!(
        (granted["action"].as_str(), granted["in_reply_to"].as_str()),
        (Some("block_locked"), Some("l3")),
        "{granted}"
    );
    s.stop().await;
}

/// A connection waits for a block's lock once at a time: a second wait is refused at once (a
/// client retrying in a loop would queue waits without end), and the first stays in line.
#[tokio::test]
async fn a_connection_waits_for_a_lock_once() {
    let s = TestServer::start().await;
    let mut a = member(&s, "a").await;
    let mut w = member(&s, "w").await;
    assert_eq!(create(&mut a, json!({})).await["action"], "block_created");
    let lock = |id: &str| json!({"action":"block_lock","id":id,"pool":"p","block_id":"b","mode":"exclusive","lease_ms":60000,"wait_ms":60000});
    assert_eq!(a.ask(lock("l1")).await["action"], "block_locked");
    w.send(lock("l2")).await;
    let again = w.ask(lock("l3")).await;
    assert_eq!(code(&again), "LOCKED");
    assert!(
        again["message"].as_str().unwrap().contains("already waiting"),
        "{again}"
    );
    let st = a
        .ask(json!({"action":"block_stat","id":"st","pool":"p","block_id":"b"}))
        .await;
    assert_eq!(st["block"]["locks"]["waiting"], 1, "{st}");
    a.ask(json!({"action":"block_unlock","id":"u","pool":"p","block_id":"b"}))
        .await;
    let granted = w.expect().await;
    assert_eq!(
        (granted["action"].as_str(), granted["in_reply_to"].as_str()),
        (Some("block_locked"), Some("l2")),
        "{granted}"
    );
    s.stop().await;
}

/// The payload length of a frame as read.
fn frame_len(f: &latzero_proto::Frame) -> usize {
    match f {
        latzero_proto::Frame::Json(b) => b.len(),
        latzero_proto::Frame::Binary { header, body } => 5 + header.len() + body.len(),
    }
}

/// Reads through the server stay within the frame limit, which the client holds the server to
/// (a longer frame ends its connection): a hundred thousand short stream records spend more on
/// their `lengths` entries, or as base64 on their text, than on their bytes; a record longer
/// than a reply may be is refused, its consumer's cursor left on it; a base64 read is held to
/// three quarters of a binary one's room; a pool's block list that has outgrown a frame is
/// FRAME_TOO_LARGE. The connection stays up throughout.
#[tokio::test]
async fn reads_through_the_server_keep_within_the_frame_limit() {
    let max = 128 * 1024;
    let s = TestServer::with_limits(latzero_server::Limits {
        max_frame_len: max,
        ..Default::default()
    })
    .await;
    let mut a = member(&s, "a").await;
    let c = create(&mut a, json!({"block_id":"log","type":"stream","size":4 << 20})).await;
    assert_eq!(c["action"], "block_created", "{c}");
    // Appended through a mapping of the block's file, as a local writer does (no frames).
    let at = a
        .ask(json!({"action":"block_attach","id":"at","pool":"p","block_id":"log","mode":"write"}))
        .await;
    let log = latzero_memory::Block::open(std::path::Path::new(at["path"].as_str().unwrap()), true).unwrap();
    const N: usize = 70_000;
    for _ in 0..N {
        log.append(&[7]).unwrap();
    }
    for base64 in [false, true] {
        let consumer = if base64 { "text" } else { "bytes" };
        let (mut seen, mut reads) = (0, 0);
        while seen < N {
            let mut req =
                json!({"action":"block_read","id":"r","pool":"p","block_id":"log","consumer":consumer,"max":100000});
            if base64 {
                req["encoding"] = json!("base64");
            }
            a.send(req).await;
            let f = a.recv_frame().await.expect("connection closed");
            assert!(frame_len(&f) <= max, "a frame of {} bytes", frame_len(&f));
            let got = match &f {
                latzero_proto::Frame::Binary { header, .. } => {
                    serde_json::from_slice::<Value>(header).unwrap()["lengths"]
                        .as_array()
                        .unwrap()
                        .len()
                }
                latzero_proto::Frame::Json(b) => {
                    let v: Value = serde_json::from_slice(b).unwrap();
                    v["records"].as_array().unwrap_or_else(|| panic!("{v}")).len()
                }
            };
            assert!(got > 0);
            seen += got;
            reads += 1;
        }
        assert_eq!(seen, N);
        assert!(reads > 1, "{consumer}: all in one read");
    }
    // One record longer than a reply may be: refused, and still next.
    log.append(&vec![1u8; 200 * 1024]).unwrap();
    for _ in 0..2 {
        let r = a
            .ask(json!({"action":"block_read","id":"big","pool":"p","block_id":"log","consumer":"bytes"}))
            .await;
        assert_eq!(code(&r), "OUT_OF_RANGE");
        assert!(r["message"].as_str().unwrap().contains("204800 bytes"), "{r}");
    }
    // Base64: at most three quarters of the binary room (64 KiB here).
    let c = create(&mut a, json!({"block_id":"bin","size":65536})).await;
    assert_eq!(c["action"], "block_created", "{c}");
    let r = a
        .ask(json!({"action":"block_read","id":"b","pool":"p","block_id":"bin","encoding":"base64"}))
        .await;
    assert_eq!(code(&r), "OUT_OF_RANGE");
    assert!(r["message"].as_str().unwrap().contains("49152 bytes as base64"), "{r}");
    let r = a
        .ask(json!({"action":"block_read","id":"b","pool":"p","block_id":"bin","length":49152,"encoding":"base64"}))
        .await;
    assert_eq!(r["action"], "block_data", "{r}");
    // A block list longer than a frame.
    for i in 0..600 {
        let c = create(
            &mut a,
            json!({"block_id": format!("block-{i:04}-{}", "x".repeat(100)), "size": 8}),
        )
        .await;
        assert_eq!(c["action"], "block_created", "{c}");
    }
    let r = a.ask(json!({"action":"block_list","id":"l","pool":"p"})).await;
    assert_eq!(code(&r), "FRAME_TOO_LARGE");
    assert_eq!(r["in_reply_to"], "l");
    assert_eq!(a.ask(json!({"action":"ping","id":"still"})).await["action"], "pong");
}

/// A lease or a wait out of range is refused naming its own bounds: a wait may be 0 (fail at
/// once), a lease may not.
#[tokio::test]
async fn lock_fields_out_of_range_name_their_bounds() {
    let s = TestServer::start().await;
    let mut a = member(&s, "a").await;
    assert_eq!(create(&mut a, json!({})).await["action"], "block_created");
    let r = a
        .ask(json!({"action":"block_lock","id":1,"pool":"p","block_id":"b","lease_ms":0}))
        .await;
    assert_eq!(code(&r), "INVALID_MESSAGE");
    assert!(
        r["message"].as_str().unwrap().contains("must be 1 to 3600000 ms"),
        "{r}"
    );
    let r = a
        .ask(json!({"action":"block_lock","id":2,"pool":"p","block_id":"b","wait_ms":3600001u64}))
        .await;
    assert_eq!(code(&r), "INVALID_MESSAGE");
    assert!(
        r["message"].as_str().unwrap().contains("must be 0 to 3600000 ms"),
        "{r}"
    );
}
