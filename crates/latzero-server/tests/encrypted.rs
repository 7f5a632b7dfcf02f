//! Encrypted pools end to end through a real server: joins by SigilKey proof, sealed calls,
//! emits and blocks, and the threats — a wrong SigilKey, a reader that tries to write, tampered
//! and replayed records, plaintext smuggled into the pool, key rotation, and no key material in
//! the database.

mod common;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Raw, Running, config_in};
use latzero_client::{
    BlockOptions, Client, ClientError, ClientOptions, EncryptedPool, ErrorCode, HandlerError, Payload, PoolKeys,
    PoolSpec, Request, SealError, generate_pool_keys,
};
use serde_json::json;

async fn app(srv: &Running, name: &str) -> Client {
    ClientOptions::new()
        .reconnect(false)
        .connect(&format!("latzero://{name}@{}", srv.addr))
        .await
        .unwrap()
}

/// Creates the encrypted pool "vault" as `owner`, with a new key set of generation 1; returns
/// the keys as text and the server's description of the pool.
async fn create_vault(owner: &Client) -> ([String; 3], serde_json::Value) {
    let (texts, v1) = generate_pool_keys("vault", 1);
    let spec = PoolSpec {
        kind: "encrypted".into(),
        keys: Some(v1),
        ..PoolSpec::default()
    };
    (texts, owner.create_pool("vault", spec).await.unwrap())
}

/// A server in `dir` with the vault created by "owner": the server, the owner, the key texts.
async fn vault_server(dir: &std::path::Path) -> (Running, Client, [String; 3]) {
    let srv = Running::start(config_in(dir)).await;
    let owner = app(&srv, "owner").await;
    let (texts, _) = create_vault(&owner).await;
    (srv, owner, texts)
}

/// `name`, in the vault with all three keys.
async fn vault_member(srv: &Running, name: &str, texts: &[String; 3]) -> (Client, EncryptedPool) {
    let member = app(srv, name).await;
    let pool = member
        .encrypted_pool("vault", PoolKeys::parse("vault", texts).unwrap())
        .await
        .unwrap();
    (member, pool)
}

/// "reader", in the vault with the SigilKey and the CipherShard only: it reads, and cannot write.
async fn vault_reader(srv: &Running, texts: &[String; 3]) -> (Client, EncryptedPool) {
    let reader = app(srv, "reader").await;
    let keys = PoolKeys::parse("vault", [&texts[0], &texts[1]]).unwrap();
    let rp = reader.encrypted_pool("vault", keys).await.unwrap();
    (reader, rp)
}

fn denied(e: &ClientError) -> bool {
    e.code() == Some(ErrorCode::PermissionDenied)
}

#[tokio::test]
async fn sealed_calls_and_blocks_and_every_threat_refused() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(config_in(dir.path())).await;
    let owner = app(&srv, "owner").await;
    let (texts, info) = create_vault(&owner).await;
    assert_eq!(info["type"], "encrypted", "{info}");
    let all = || PoolKeys::parse("vault", &texts).unwrap();
    let reader_keys = || PoolKeys::parse("vault", [&texts[0], &texts[1]]).unwrap();

    // Joining: never in a handshake or a plain join; a wrong SigilKey is refused.
    let mut raw = Raw::connect(srv.addr).await;
    raw.send(json!({"action":"handshake","id":1,"app_id":"raw","pools":["vault"]}))
        .await;
    let r = raw.expect().await;
    assert_eq!(r["code"], "PERMISSION_DENIED", "{r}");
    raw.handshake("raw", &[], &[]).await;
    let r = raw.ask(json!({"action":"join","id":2,"pools":["vault"]})).await;
    assert_eq!(r["code"], "PERMISSION_DENIED", "{r}");
    let r = raw
        .ask(json!({"action":"pool_prove","id":3,"pool":"vault","signature":"AA=="}))
        .await;
    assert!(r["message"].as_str().unwrap().contains("pool_challenge"), "{r}");
    let intruder = app(&srv, "intruder").await;
    let (other_texts, _) = generate_pool_keys("vault", 1);
    let e = intruder
        .encrypted_pool("vault", PoolKeys::parse("vault", &other_texts).unwrap())
        .await
        .unwrap_err();
    assert!(denied(&e) && e.to_string().contains("wrong SigilKey"), "{e}");
    // A challenge answers once: replaying a valid proof is refused.
    let mut w = Raw::connect(srv.addr).await;
    w.handshake("replayer", &[], &[]).await;
    let ch = w.ask(json!({"action":"pool_challenge","id":4,"pool":"vault"})).await;
    let nonce = B64.decode(ch["nonce"].as_str().unwrap()).unwrap();
    let sig = all().prove_join(1, "replayer", &nonce).unwrap();
    let proof = json!({"action":"pool_prove","id":5,"pool":"vault","signature":B64.encode(sig)});
    assert_eq!(w.ask(proof.clone()).await["action"], "ack");
    let mut again = proof;
    again["id"] = json!(6);
    assert_eq!(w.ask(again).await["code"], "PERMISSION_DENIED");

    // Sealed calls and emits: the handler sees plaintext; the server only ciphertext.
    let worker = app(&srv, "worker").await;
    let wp: EncryptedPool = worker.encrypted_pool("vault", all()).await.unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    wp.handle("lookup", move |r: Request| {
        let tx = seen_tx.clone();
        async move {
            let _ = tx.send(r.data.clone());
            Ok(json!({"echo": r.data, "emit": r.is_emit}))
        }
    })
    .await
    .unwrap();
    let caller = app(&srv, "caller").await;
    let cp = caller.encrypted_pool("vault", all()).await.unwrap();
    let answer = cp.call("lookup", &json!({"secret": 42})).await.unwrap();
    assert_eq!(answer, json!({"echo": {"secret": 42}, "emit": false}));
    assert_eq!(seen.recv().await.unwrap(), json!({"secret": 42}));
    cp.emit("lookup", &json!("fire")).await.unwrap();
    assert_eq!(seen.recv().await.unwrap(), json!("fire"));

    // A reader (SigilKey + CipherShard) joins and decrypts, but cannot write: it cannot seal,
    // and a record signed with a seal of its own making is refused by the server.
    let reader = app(&srv, "reader").await;
    let rp = reader.encrypted_pool("vault", reader_keys()).await.unwrap();
    let e = rp.call("lookup", &json!(1)).await.unwrap_err();
    assert!(matches!(e, ClientError::Crypto(SealError::Key(_))), "{e}");
    let forger = PoolKeys::parse("vault", [&texts[1], &other_texts[2]]).unwrap();
    let forged = latzero_crypto::seal(&forger, "msg/lookup", b"\"forged\"").unwrap();
    let e = reader.call("vault", "lookup", &B64.encode(&forged)).await.unwrap_err();
    assert!(denied(&e) && e.to_string().contains("OblivionSeal"), "{e}");
    // Plaintext and tampered ciphertext are refused too.
    let e = caller
        .call("vault", "lookup", &json!({"plain": true}))
        .await
        .unwrap_err();
    assert!(denied(&e), "{e}");
    let mut tampered = latzero_crypto::seal(&all(), "msg/lookup", b"1").unwrap();
    tampered[HEADER_BYTE] ^= 1;
    let e = caller
        .call("vault", "lookup", &B64.encode(&tampered))
        .await
        .unwrap_err();
    assert!(denied(&e), "{e}");
    // A sealed record for another trigger cannot be redirected.
    let other = latzero_crypto::seal(&all(), "msg/other", b"1").unwrap();
    let e = caller.call("vault", "lookup", &B64.encode(&other)).await.unwrap_err();
    assert!(denied(&e), "{e}");

    // Blocks: sealed records, readable by readers; a replayed old write is detected by the
    // server (through it) and by readers (written straight into the mapping).
    let block = worker
        .create_block("vault", "doc", BlockOptions::binary(4096))
        .await
        .unwrap();
    wp.write_block(&block, b"version one").await.unwrap();
    let (old_raw, _) = block.read(0, 4096).await.unwrap();
    wp.write_block(&block, b"version two").await.unwrap();
    let rblock = reader.attach_block("vault", "doc").await.unwrap();
    assert_eq!(rp.read_block(&rblock).await.unwrap().0, b"version two");
    let remote = worker
        .attach_block_with("vault", "doc", Some(latzero_client::Access::Write), false)
        .await
        .unwrap();
    assert!(!remote.is_mapped());
    let e = remote.write(0, &old_raw).await.unwrap_err();
    assert!(denied(&e) && e.to_string().contains("replayed"), "{e}");
    block.write(0, &old_raw).await.unwrap();
    let e = rp.read_block(&rblock).await.unwrap_err();
    assert!(matches!(e, ClientError::Crypto(SealError::Replay(_))), "{e}");
    // json blocks are not available, and say so (streams are: the next test); a document is
    // sealed into a binary block instead, and read back by a reader.
    let e = worker
        .create_block("vault", "j", BlockOptions::json(4096))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotAvailable), "{e}");
    assert!(e.to_string().contains("EncryptedPool::write_json"), "{e}");
    let doc = worker
        .create_block("vault", "settings", BlockOptions::binary(4096))
        .await
        .unwrap();
    wp.write_json(&doc, &json!({"limit": 1200, "owner": "7"}))
        .await
        .unwrap();
    let rdoc = reader.attach_block("vault", "settings").await.unwrap();
    let (read, _) = rp.read_json::<serde_json::Value>(&rdoc).await.unwrap();
    assert_eq!(read, json!({"limit": 1200, "owner": "7"}));
    let (raw, _) = rdoc.read(0, 4096).await.unwrap();
    assert!(!raw.windows(4).any(|w| w == b"1200"), "the block holds ciphertext");

    // Rotation: generation 2; old records stay readable with the old keys; new joins need the
    // new SigilKey.
    let (texts2, v2) = generate_pool_keys("vault", 2);
    assert_eq!(
        reader.rotate_pool_keys("vault", v2).await.unwrap_err().code(),
        Some(ErrorCode::PermissionDenied),
        "only owners rotate"
    );
    owner.rotate_pool_keys("vault", v2).await.unwrap();
    let both = || PoolKeys::parse("vault", texts.iter().chain(texts2.iter())).unwrap();
    let late = app(&srv, "late").await;
    let e = late.encrypted_pool("vault", all()).await.unwrap_err();
    assert!(
        matches!(e, ClientError::Crypto(SealError::Key(_))),
        "generation 1 keys no longer join: {e}"
    );
    let lp = late.encrypted_pool("vault", both()).await.unwrap();
    let lblock = late.attach_block("vault", "doc").await.unwrap();
    wp.write_block(&block, b"version three").await.unwrap();
    assert_eq!(
        lp.read_block(&lblock).await.unwrap().0,
        b"version three",
        "gen 1 record"
    );
    lp.write_block(&lblock, b"version four").await.unwrap();
    let (raw4, _) = lblock.read(0, 12).await.unwrap();
    assert_eq!(raw4[8..12], 2u32.to_be_bytes(), "new writes seal under generation 2");
    assert_eq!(lp.read_block(&lblock).await.unwrap().0, b"version four");
    drop((wp, cp, rp, lp, worker, caller, reader, late, owner, intruder));
    srv.stop().await;

    // The database holds verifiers only: no key text appears in it.
    let db = std::fs::read(dir.path().join("data.db")).unwrap();
    let wal = std::fs::read(dir.path().join("data.db-wal")).unwrap_or_default();
    for t in texts.iter().chain(texts2.iter()) {
        let secret = t.rsplit_once('.').unwrap().1.as_bytes();
        for file in [&db, &wal] {
            assert!(
                !file.windows(secret.len()).any(|w| w == secret),
                "key material in the database"
            );
        }
    }
}

const HEADER_BYTE: usize = 30;

/// Streams in an encrypted pool: each record sealed on its own; readers open them in order; the
/// server refuses a record that is plaintext, forged, sealed for another block, or a replay
/// (`STALE_RECORD`), also after a restart (it finds the newest in the ring); two writers
/// appending at once land every record; a record put straight into the mapping out of order is
/// refused by readers, in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sealed_stream_records_in_order_and_every_threat_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, owner, texts) = vault_server(dir.path()).await;
    let all = || PoolKeys::parse("vault", &texts).unwrap();
    let writer = app(&srv, "writer").await;
    let wp = writer.encrypted_pool("vault", all()).await.unwrap();
    let log = writer
        .create_block("vault", "log", BlockOptions::stream(256 * 1024).persistent())
        .await
        .unwrap();
    // Consumers see every record from here on: "c" reads through the pool, "raw" the sealed bytes.
    let (reader, rp) = vault_reader(&srv, &texts).await;
    let rlog = reader.attach_block("vault", "log").await.unwrap();
    assert!(rp.consume(&rlog, "c", 10).await.unwrap().records.is_empty());
    assert!(log.consume("raw", 10).await.unwrap().records.is_empty());
    for i in 0..3 {
        wp.append(&log, format!("entry {i}").as_bytes()).await.unwrap();
    }
    let got = rp.consume(&rlog, "c", 10).await.unwrap();
    let plain: Vec<_> = got.records.into_iter().map(Result::unwrap).collect();
    assert_eq!(plain, [b"entry 0".to_vec(), b"entry 1".to_vec(), b"entry 2".to_vec()]);
    let sealed = log.consume("raw", 10).await.unwrap().records;
    assert!(
        !sealed[0].windows(7).any(|w| w == b"entry 0"),
        "the ring holds ciphertext"
    );
    // A reader cannot seal.
    let e = rp.append(&rlog, b"x").await.unwrap_err();
    assert!(matches!(e, ClientError::Crypto(SealError::Key(_))), "{e}");

    // Through the server: plaintext, a forgery, a record for another block, a replay.
    let remote = writer
        .attach_block_with("vault", "log", Some(latzero_client::Access::Write), false)
        .await
        .unwrap();
    let (other_texts, _) = generate_pool_keys("vault", 1);
    let forger = PoolKeys::parse("vault", [&texts[1], &other_texts[2]]).unwrap();
    for (what, record) in [
        ("plaintext", b"plain".to_vec()),
        ("forged", latzero_crypto::seal(&forger, "stream/log", b"x").unwrap()),
        (
            "another stream's",
            latzero_crypto::seal(&all(), "stream/other", b"x").unwrap(),
        ),
        (
            "a binary block's",
            latzero_crypto::seal(&all(), "block/log", b"x").unwrap(),
        ),
    ] {
        let e = remote.append(&record).await.unwrap_err();
        assert!(denied(&e), "{what}: {e}");
    }
    for old in [&sealed[0], &sealed[2]] {
        let e = remote.append(old).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::StaleRecord), "a replay: {e}");
    }

    // Two writers at once: every record lands, and readers find them all in order.
    let second = app(&srv, "second").await;
    let sp = second.encrypted_pool("vault", all()).await.unwrap();
    let slog = second.attach_block("vault", "log").await.unwrap();
    // Eight tasks per writer, on a runtime of four threads: a record sealed in one task is often
    // sent after one sealed later in another, and the server's STALE_RECORD makes it seal again.
    let mut tasks = tokio::task::JoinSet::new();
    let (wp, sp) = (Arc::new(wp), Arc::new(sp));
    let (log, slog) = (Arc::new(log), Arc::new(slog));
    for t in 0..16 {
        let (pool, block, w) = if t % 2 == 0 {
            (wp.clone(), log.clone(), "a")
        } else {
            (sp.clone(), slog.clone(), "b")
        };
        tasks.spawn(async move {
            for i in 0..12 {
                pool.append(&block, format!("{w}{}", t / 2 * 12 + i).as_bytes())
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // Every record, each opened (so in strictly increasing seq), each task's in its order.
    let got = rp.consume(&rlog, "c", 1000).await.unwrap();
    let plain: Vec<String> = got
        .records
        .into_iter()
        .map(|r| String::from_utf8(r.unwrap()).unwrap())
        .collect();
    assert_eq!(plain.len(), 192);
    for t in 0..16 {
        let w = if t % 2 == 0 { "a" } else { "b" };
        let want: Vec<String> = (0..12).map(|i| format!("{w}{}", t / 2 * 12 + i)).collect();
        let mine: Vec<&String> = plain.iter().filter(|p| want.contains(p)).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>(), "task {t}'s records in its order");
    }

    // Straight into the mapping (no server check): readers refuse the replay in its place, and
    // take the records around it.
    assert!(log.is_mapped() && log.is_writable());
    wp.append(&log, b"before").await.unwrap();
    log.append(&sealed[1]).await.unwrap();
    wp.append(&log, b"after").await.unwrap();
    let got = rp.consume(&rlog, "c", 10).await.unwrap().records;
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].as_deref().unwrap(), b"before");
    assert!(matches!(got[1], Err(SealError::Replay(_))), "{:?}", got[1]);
    assert_eq!(got[2].as_deref().unwrap(), b"after");
    // A record naming a seq past every other, its signature not matching it (straight into the
    // mapping, unchecked): the newest seq the server finds after a restart is not its claim.
    let mut forged = sealed[0].to_vec();
    forged[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
    log.append(&forged).await.unwrap();
    drop((wp, sp, rp, remote, log, slog, rlog, writer, second, reader, owner));
    srv.stop().await;

    // After a restart the server knows no newest seq until it reads the ring: a replay is still
    // refused, and a new record still lands (the forged record's seq taken, it would not).
    let srv = Running::start(config_in(dir.path())).await;
    let writer = app(&srv, "writer").await;
    let wp = writer.encrypted_pool("vault", all()).await.unwrap();
    let remote = writer
        .attach_block_with("vault", "log", Some(latzero_client::Access::Write), false)
        .await
        .unwrap();
    let e = remote.append(&sealed[2]).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::StaleRecord), "a replay after a restart: {e}");
    wp.append(&remote, b"after the restart").await.unwrap();
    drop((wp, remote, writer));
    srv.stop().await;
}

/// A sealed call can name the app to run it, as a plain one can: each answer comes from the app
/// named, and one that does not serve the trigger is the server's plaintext NO_HANDLER.
#[tokio::test]
async fn a_sealed_call_runs_on_the_app_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, owner, texts) = vault_server(dir.path()).await;
    let mut workers = vec![];
    for name in ["w1", "w2"] {
        let (w, wp) = vault_member(&srv, name, &texts).await;
        wp.handle("who", move |_| async move { Ok(json!(name)) }).await.unwrap();
        workers.push((w, wp));
    }
    let (caller, cp) = vault_member(&srv, "caller", &texts).await;
    // Twice in a row each: no balancing between the two could answer in this order.
    for to in ["w1", "w1", "w2", "w2", "w1"] {
        assert_eq!(cp.call_to(to, "who", &json!(null)).await.unwrap(), json!(to));
    }
    let e = cp.call_to("caller", "who", &json!(null)).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoHandler), "{e}");
    drop((workers, cp, caller, owner));
    srv.stop().await;
}

/// A sealed broadcast reaches every handler of the trigger, and each answer and each handler's
/// error comes back sealed and opens; a handler that cannot seal says so.
#[tokio::test]
async fn a_sealed_broadcast_reaches_every_handler_and_opens_every_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, owner, texts) = vault_server(dir.path()).await;
    let mut workers = vec![];
    for name in ["w1", "w2"] {
        let (w, wp) = vault_member(&srv, name, &texts).await;
        wp.handle("who", move |r| async move {
            match name {
                "w1" => Ok(json!({"by": name, "got": r.data})),
                _ => Err(HandlerError::msg(format!("{name} is short by {}", r.data["n"]))),
            }
        })
        .await
        .unwrap();
        workers.push((w, wp));
    }
    // A handler that holds no OblivionSeal answers with an error saying it cannot seal.
    let (reader, rp) = vault_reader(&srv, &texts).await;
    rp.handle("who", |_| async { Ok(json!("unsealed")) }).await.unwrap();
    let (caller, cp) = vault_member(&srv, "caller", &texts).await;
    let mut replies = cp.broadcast("who", &json!({"n": 7})).await.unwrap();
    replies.sort_by(|a, b| a.app_id.cmp(&b.app_id));
    let apps: Vec<&str> = replies.iter().map(|r| r.app_id.as_str()).collect();
    assert_eq!(apps, ["reader", "w1", "w2"]);
    assert_eq!(
        replies[1].result.as_ref().unwrap(),
        &json!({"by": "w1", "got": {"n": 7}})
    );
    let handler_error = |i: usize| match replies[i].result.as_ref().map_err(|e| &**e) {
        Err(ClientError::Handler(e)) => e["message"].as_str().unwrap().to_owned(),
        other => panic!("{other:?}"),
    };
    // w2's error travelled sealed and opens; the reader's says it could not seal.
    assert_eq!(handler_error(2), "w2 is short by 7");
    assert!(
        handler_error(0).contains("cannot seal the answer"),
        "{}",
        handler_error(0)
    );
    // Unsealed, the same broadcast is refused by the server before any handler sees it.
    let e = caller
        .request("vault", "who")
        .data(&json!({"n": 7}))
        .broadcast()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
    drop((workers, reader, rp, cp, caller, owner));
    srv.stop().await;
}

/// Bytes-level sealed calls and handlers: the JSON text is sealed and opened as written (an
/// integer past 64 bits keeps its digits), and either form opens what the other sealed.
#[tokio::test]
async fn sealed_payloads_as_text_keep_their_digits_and_open_in_either_form() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, owner, texts) = vault_server(dir.path()).await;
    let (w, wp) = vault_member(&srv, "w", &texts).await;
    wp.handle_raw("echo_text", |r: Request<Payload>| async move {
        if r.data.as_str() == "0" {
            return Err(HandlerError::msg("zero refused"));
        }
        Ok(r.data)
    })
    .await
    .unwrap();
    wp.handle("echo_value", |r: Request| async move { Ok(json!({"got": r.data})) })
        .await
        .unwrap();
    let (caller, cp) = vault_member(&srv, "caller", &texts).await;
    let big = Payload::from_text(r#"{"n":123456789012345678901234567890,"x":1.25e400}"#).unwrap();
    assert_eq!(cp.call_raw("echo_text", &big).await.unwrap().as_str(), big.as_str());
    assert_eq!(
        cp.call_raw_to("w", "echo_text", &big).await.unwrap().as_str(),
        big.as_str()
    );
    // A value call to a text handler, and a text call to a value handler.
    assert_eq!(cp.call("echo_text", &json!([1, "a"])).await.unwrap(), json!([1, "a"]));
    let answer = cp
        .call_raw("echo_value", &Payload::from_text("[2]").unwrap())
        .await
        .unwrap();
    assert_eq!(answer.as_str(), r#"{"got":[2]}"#);
    // A text handler's error travels sealed and opens.
    match cp.call_raw("echo_text", &Payload::from_text("0").unwrap()).await {
        Err(ClientError::Handler(e)) => assert_eq!(e, json!({"message": "zero refused"})),
        other => panic!("{other:?}"),
    }
    // Broadcast as text: the answer keeps its digits, and the error opens.
    for (data, want) in [(&big, Ok(big.as_str())), (&Payload::from_text("0").unwrap(), Err(()))] {
        let replies = cp.broadcast_raw("echo_text", data).await.unwrap();
        let [r] = &replies[..] else { panic!("{replies:?}") };
        match (&r.result, want) {
            (Ok(p), Ok(want)) => assert_eq!(p.as_str(), want),
            (Err(e), Err(())) => match &**e {
                ClientError::Handler(e) => assert_eq!(e, &json!({"message": "zero refused"})),
                other => panic!("{other:?}"),
            },
            (got, _) => panic!("{got:?}"),
        }
    }
    // What crossed the server was sealed: the text handler refuses a payload that is not.
    let e = caller.call_raw("vault", "echo_text", &big).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
    drop((w, wp, caller, cp, owner));
    srv.stop().await;
}

/// A handler's error in an encrypted pool travels sealed: the caller's SDK opens it, and what
/// crosses the server (seen here by a call that does not open it) holds none of its text. A
/// handler that cannot seal (a reader) sends an error saying so, not its error's text.
#[tokio::test]
async fn a_handler_error_in_an_encrypted_pool_travels_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, owner, texts) = vault_server(dir.path()).await;
    let all = || PoolKeys::parse("vault", &texts).unwrap();

    let worker = app(&srv, "worker").await;
    let wp = worker.encrypted_pool("vault", all()).await.unwrap();
    wp.handle("debit", |_| async {
        Err(HandlerError::msg("account 7 is short by 1200"))
    })
    .await
    .unwrap();
    let (reader, rp) = vault_reader(&srv, &texts).await;
    rp.handle("audit", |_| async { Err(HandlerError::msg("account 7 is flagged")) })
        .await
        .unwrap();

    let caller = app(&srv, "caller").await;
    let cp = caller.encrypted_pool("vault", all()).await.unwrap();
    match cp.call("debit", &json!(1200)).await {
        Err(ClientError::Handler(e)) => assert_eq!(e, json!({"message": "account 7 is short by 1200"})),
        other => panic!("{other:?}"),
    }
    // The same error as the server passes it on: a sealed record, no text.
    let sealed = latzero_crypto::seal(&all(), "msg/debit", b"1200").unwrap();
    match caller.call("vault", "debit", &B64.encode(sealed)).await {
        Err(ClientError::Handler(e)) => {
            assert!(e["sealed"].is_string() && e.as_object().unwrap().len() == 1, "{e}");
            assert!(!e.to_string().contains("account"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    match cp.call("audit", &json!(7)).await {
        Err(ClientError::Handler(e)) => {
            let text = e["message"].as_str().unwrap();
            assert!(
                text.contains("cannot seal its error") && !text.contains("account"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    drop((wp, rp, cp, worker, reader, caller, owner));
    srv.stop().await;
}
