//! Memory blocks through the Rust SDK against an in-process server: mapped (zero copy) and
//! through the server, json and stream blocks, locks and watches.

mod common;

use std::time::Duration;

use common::TestServer;
use latzero_client::{Access, BlockEvent, BlockOptions, Client, ClientEvent, ErrorCode};
use serde_json::json;

async fn client(s: &TestServer, app: &str) -> Client {
    Client::connect(&s.unix_url(&format!("{app}?pools=p"))).await.unwrap()
}

#[tokio::test]
async fn mapped_writes_are_seen_by_other_mappings_and_watchers() {
    let s = TestServer::start().await;
    let a = client(&s, "a").await;
    let b = client(&s, "b").await;
    let blk = a
        .create_block("p", "frame", BlockOptions::binary(1 << 20))
        .await
        .unwrap();
    assert!(blk.is_mapped() && blk.is_writable());
    let other = b.attach_block("p", "frame").await.unwrap();
    assert!(other.is_mapped());
    let mut w = other.watch(None).await.unwrap();
    assert_eq!(w.next().await, Some(BlockEvent::Synced { version: 0 }));

    let v = blk.write_with(0, 1 << 20, |d| d.fill(7)).await.unwrap();
    assert_eq!(v, 1);
    let (sum, seen) = other
        .read_with(0, 1 << 20, |d| d.iter().map(|&x| u64::from(x)).sum::<u64>())
        .unwrap();
    assert_eq!((sum, seen), (7 << 20, 1));
    assert_eq!(
        w.next().await,
        Some(BlockEvent::Changed {
            version: 1,
            offset: 0,
            length: 1 << 20
        })
    );
    // The same block through the server (as a remote process would use it).
    let remote = b.attach_block_with("p", "frame", None, false).await.unwrap();
    assert!(!remote.is_mapped());
    assert_eq!(remote.write(10, b"remote").await.unwrap(), 2);
    assert_eq!(other.read(10, 6).await.unwrap(), (b"remote".to_vec(), 2));
    assert_eq!(remote.read(0, 3).await.unwrap(), (vec![7, 7, 7], 2));
    assert!(matches!(
        w.next().await,
        Some(BlockEvent::Changed {
            version: 2,
            offset: 10,
            length: 6
        })
    ));
    let e = remote.read(1 << 20, 1).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::OutOfRange));
    let e = blk.read(1 << 20, 1).await.unwrap_err();
    assert!(e.to_string().contains("outside the block"), "{e}");
    let e = blk.read(0, u64::MAX).await.unwrap_err();
    assert!(
        e.to_string().contains("outside the block"),
        "no allocation of a wild length: {e}"
    );
    let e = remote.read(0, u64::MAX).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::OutOfRange));
    s.stop().await;
}

/// A block deleted while other processes map it: their mapped reads and writes fail with
/// BLOCK_NOT_FOUND, where a write went into the unlinked file and was lost without a word, and
/// a block created anew under the name is attached afresh.
#[tokio::test]
async fn a_mapping_of_a_deleted_block_refuses_reads_and_writes() {
    let s = TestServer::start().await;
    let a = client(&s, "a").await;
    let b = client(&s, "b").await;
    a.create_block("p", "frame", BlockOptions::binary(64)).await.unwrap();
    let mapped = b.attach_block("p", "frame").await.unwrap();
    assert!(mapped.is_mapped() && mapped.is_writable());
    assert_eq!(mapped.write(0, b"before").await.unwrap(), 1);
    a.delete_block("p", "frame").await.unwrap();
    for e in [
        mapped.write(0, b"after").await.unwrap_err(),
        mapped.read(0, 6).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), Some(ErrorCode::BlockNotFound), "{e}");
        assert!(e.to_string().contains("deleted"), "{e}");
    }
    a.create_block("p", "frame", BlockOptions::binary(64)).await.unwrap();
    assert!(
        mapped.read(0, 6).await.is_err(),
        "the old mapping stays the deleted block"
    );
    let fresh = b.attach_block("p", "frame").await.unwrap();
    assert_eq!(fresh.read(0, 6).await.unwrap(), (vec![0; 6], 0));
    s.stop().await;
}

/// A sub-millisecond lease is asked for as 1 ms, where it went as 0 and was refused.
#[tokio::test]
async fn a_sub_millisecond_lease_is_a_millisecond() {
    let s = TestServer::start().await;
    let a = client(&s, "a").await;
    let blk = a.create_block("p", "l", BlockOptions::binary(8)).await.unwrap();
    let g = blk
        .lock_with(true, Some(Duration::from_micros(300)), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(g.lease, Duration::from_millis(1));
    s.stop().await;
}

/// A lease that ends other than by `unlock` is told to the app (`ClientEvent::LockExpired`) and
/// to the block's watches: when it runs out, and for every lease held when the connection drops
/// (leases end with their connection). One unlocked is not.
#[tokio::test]
async fn a_lease_that_ends_unasked_is_told() {
    let s = TestServer::start().await;
    let a = client(&s, "a").await;
    let mut events = a.events();
    let short = a.create_block("p", "short", BlockOptions::binary(8)).await.unwrap();
    short
        .lock_with(true, Some(Duration::from_millis(50)), Duration::ZERO)
        .await
        .unwrap();
    let expired = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let ClientEvent::LockExpired { .. } = events.recv().await.unwrap() {
                break;
            }
        }
    });
    expired.await.expect("the lease running out is told");

    let held = a.create_block("p", "held", BlockOptions::binary(8)).await.unwrap();
    let mut w = held.watch(None).await.unwrap();
    assert_eq!(w.next().await, Some(BlockEvent::Synced { version: 0 }));
    held.lock_with(false, Some(Duration::from_secs(60)), Duration::ZERO)
        .await
        .unwrap();
    let freed = a.create_block("p", "freed", BlockOptions::binary(8)).await.unwrap();
    freed.lock(true, Duration::ZERO).await.unwrap();
    freed.unlock().await.unwrap();
    // Drop the connection (the server goes): the lease still held is told, before the drop.
    let mut told = vec![];
    s.stop().await;
    loop {
        match events.recv().await.unwrap() {
            ClientEvent::LockExpired {
                pool,
                block_id,
                exclusive,
                reason,
            } => told.push((pool, block_id, exclusive, reason)),
            ClientEvent::Disconnected { .. } => break,
            _ => {}
        }
    }
    assert_eq!(told.len(), 1, "{told:?}");
    let (pool, block, exclusive, reason) = &told[0];
    assert_eq!((pool.as_str(), block.as_str(), *exclusive), ("p", "held", false));
    assert!(reason.contains("connection"), "{reason}");
    assert_eq!(w.next().await, Some(BlockEvent::LockExpired));
}

/// A watch ends when its client leaves the block's pool: `Unwatched`, then nothing.
#[tokio::test]
async fn leaving_the_pool_ends_a_watch() {
    let s = TestServer::start().await;
    let a = client(&s, "a").await;
    let blk = a.create_block("p", "w", BlockOptions::binary(8)).await.unwrap();
    let mut w = blk.watch(None).await.unwrap();
    assert_eq!(w.next().await, Some(BlockEvent::Synced { version: 0 }));
    a.leave("p").await.unwrap();
    match w.next().await {
        Some(BlockEvent::Unwatched { reason, .. }) => assert!(reason.contains("left pool 'p'"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.next().await, None);
    s.stop().await;
}

#[tokio::test]
async fn read_only_attachments_map_read_only() {
    let s = TestServer::start().await;
    let a = client(&s, "a").await;
    let r = client(&s, "r").await;
    a.create_block("p", "b", BlockOptions::binary(4096).writers(["a"]))
        .await
        .unwrap();
    let ro = r.attach_block("p", "b").await.unwrap();
    assert!(ro.is_mapped() && !ro.is_writable());
    let e = ro.write(0, b"x").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
    let e = r
        .attach_block_with("p", "b", Some(Access::Write), true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
    s.stop().await;
}

#[tokio::test]
async fn json_and_stream_blocks_mapped_and_remote() {
    let s = TestServer::start().await;
    let a = client(&s, "a").await;
    let cfg = a.create_block("p", "cfg", BlockOptions::json(1024)).await.unwrap();
    assert_eq!(cfg.read_json::<serde_json::Value>().await.unwrap(), (json!(null), 0));
    cfg.write_json(&json!({"rate": 30})).await.unwrap();
    let remote = a.attach_block_with("p", "cfg", None, false).await.unwrap();
    assert_eq!(
        remote.read_json::<serde_json::Value>().await.unwrap(),
        (json!({"rate": 30}), 1)
    );
    remote.write_json(&json!([1, 2])).await.unwrap();
    assert_eq!(cfg.read_json::<serde_json::Value>().await.unwrap(), (json!([1, 2]), 2));

    let log = a.create_block("p", "log", BlockOptions::stream(4096)).await.unwrap();
    let remote_log = a.attach_block_with("p", "log", None, false).await.unwrap();
    assert_eq!(log.append(b"local").await.unwrap().0, 0);
    assert_eq!(remote_log.append(b"remote").await.unwrap().0, 1);
    let mine = log.consume("c1", 10).await.unwrap();
    assert_eq!(mine.records, vec![b"local".to_vec(), b"remote".to_vec()]);
    let theirs = remote_log.consume("c2", 1).await.unwrap();
    assert_eq!((theirs.records.len(), theirs.next_index), (1, 1));
    assert!(log.consume("c1", 10).await.unwrap().records.is_empty());
    assert_eq!(
        remote_log.consume("c2", 10).await.unwrap().records,
        vec![b"remote".to_vec()]
    );
    s.stop().await;
}

/// `consume` takes the same `max` mapped or not: 0 is refused the same way, and one above the
/// protocol's bound on a read through the server still reads.
#[tokio::test]
async fn a_stream_read_takes_the_same_max_mapped_or_not() {
    let s = TestServer::start().await;
    let a = client(&s, "a").await;
    let log = a.create_block("p", "log", BlockOptions::stream(4096)).await.unwrap();
    let remote = a.attach_block_with("p", "log", None, false).await.unwrap();
    log.append(b"one").await.unwrap();
    log.append(b"two").await.unwrap();
    for (handle, consumer) in [(&log, "mapped"), (&remote, "remote")] {
        let e = handle.consume(consumer, 0).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidMessage), "{consumer}: {e}");
        let r = handle.consume(consumer, 200_000).await.unwrap();
        assert_eq!(r.records, vec![b"one".to_vec(), b"two".to_vec()], "{consumer}");
    }
    s.stop().await;
}

#[tokio::test]
async fn locks_through_the_sdk() {
    let s = TestServer::start().await;
    let a = client(&s, "a").await;
    let b = client(&s, "b").await;
    let ba = a.create_block("p", "b", BlockOptions::binary(64)).await.unwrap();
    let bb = b.attach_block_with("p", "b", None, false).await.unwrap();
    let g = ba.lock(true, Duration::ZERO).await.unwrap();
    assert!(!g.renewed && g.lease > Duration::ZERO, "{g:?}");
    let g = ba
        .lock_with(true, Some(Duration::from_secs(90)), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((g.lease, g.renewed), (Duration::from_secs(90), true));
    let e = bb.write(0, b"x").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Locked));
    let e = bb.lock(true, Duration::from_millis(30)).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::LockTimeout));
    let waiter = tokio::spawn({
        let bb = bb.clone();
        async move { bb.lock(true, Duration::from_secs(20)).await }
    });
    // Once the waiter is queued (the server says so), release: it is granted.
    while ba.stat().await.unwrap()["locks"]["waiting"] != 1 {
        tokio::task::yield_now().await;
    }
    ba.unlock().await.unwrap();
    assert!(!waiter.await.unwrap().unwrap().renewed);
    assert_eq!(bb.write(0, b"x").await.unwrap(), 1);
    s.stop().await;
}

/// A persistent block across a server restart: the watcher resubscribes from the last version
/// it saw and is told about a mapped write made while the server was down.
#[tokio::test]
async fn watches_resume_and_missed_writes_are_announced_after_a_restart() {
    use latzero_client::{ClientEvent, ClientOptions};
    let dir = tempfile::tempdir().unwrap();
    let start = || common::Running::start(common::config_in(dir.path()));
    let sock = dir.path().join("latzero.sock");
    let connect = |app: &'static str| {
        let url = format!("latzero://{app}?socket={}&pools=p", sock.display());
        async move {
            ClientOptions::new()
                .backoff(Duration::from_millis(5), Duration::from_millis(50))
                .connect(&url)
                .await
                .unwrap()
        }
    };
    let srv = start().await;
    let writer = connect("writer").await;
    let watcher = connect("watcher").await;
    let blk = writer
        .create_block("p", "b", BlockOptions::binary(64).persistent())
        .await
        .unwrap();
    let mut w = watcher.attach_block("p", "b").await.unwrap().watch(None).await.unwrap();
    assert_eq!(w.next().await, Some(BlockEvent::Synced { version: 0 }));
    blk.write(0, b"1").await.unwrap();
    assert!(matches!(w.next().await, Some(BlockEvent::Changed { version: 1, .. })));

    let mut events = writer.events();
    srv.stop().await;
    loop {
        if let Ok(ClientEvent::Disconnected { .. }) = events.recv().await {
            break;
        }
    }
    // Down: the write lands in the mapping (the file outlives the server) and is remembered.
    assert_eq!(blk.write(0, b"2").await.unwrap(), 2);

    let srv = start().await;
    // The watcher resubscribes from version 1 and so learns of version 2 (the writer's delayed
    // notice may announce it too).
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match w.next().await {
                Some(BlockEvent::Changed { version: 2, .. }) => break,
                Some(BlockEvent::Changed { version: 1, .. } | BlockEvent::Synced { .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("the watcher heard of version 2");
    srv.stop().await;
}

/// A watch of a non-persistent block, which does not outlive its server: after the restart the
/// resubscription is refused (BLOCK_NOT_FOUND) and the watch ends with `Deleted`, where it used
/// to wait for ever, the refusal seen only as an uncorrelated server error.
#[tokio::test]
async fn a_watch_whose_block_went_with_the_server_ends_after_the_reconnect() {
    use latzero_client::{ClientEvent, ClientOptions};
    let dir = tempfile::tempdir().unwrap();
    let start = || common::Running::start(common::config_in(dir.path()));
    let url = format!(
        "latzero://watcher?socket={}&pools=p",
        dir.path().join("latzero.sock").display()
    );
    let srv = start().await;
    let watcher = ClientOptions::new()
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
        .connect(&url)
        .await
        .unwrap();
    let blk = watcher.create_block("p", "v", BlockOptions::binary(64)).await.unwrap();
    let mut w = blk.watch(None).await.unwrap();
    assert_eq!(w.next().await, Some(BlockEvent::Synced { version: 0 }));
    blk.write(0, b"1").await.unwrap();
    assert!(matches!(w.next().await, Some(BlockEvent::Changed { version: 1, .. })));
    let mut events = watcher.events();
    srv.stop().await;
    let srv = start().await;
    loop {
        if let Ok(ClientEvent::Reconnected) = events.recv().await {
            break;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), w.next()).await;
    assert_eq!(ended, Ok(Some(BlockEvent::Deleted { version: 1 })));
    assert_eq!(w.next().await, None, "no more events after Deleted");
    srv.stop().await;
}

/// A non-persistent block goes with the server: a mapping left in a client refuses to read or
/// write it after the server stopped, where its writes reached a file no server would read.
#[tokio::test]
async fn a_mapping_of_a_non_persistent_block_refuses_use_once_the_server_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let srv = common::Running::start(common::config_in(dir.path())).await;
    let url = format!(
        "latzero://a?socket={}&pools=p",
        dir.path().join("latzero.sock").display()
    );
    let a = latzero_client::ClientOptions::new()
        .reconnect(false)
        .connect(&url)
        .await
        .unwrap();
    let volatile = a.create_block("p", "v", BlockOptions::binary(64)).await.unwrap();
    let kept = a
        .create_block("p", "k", BlockOptions::binary(64).persistent())
        .await
        .unwrap();
    assert!(volatile.is_mapped() && kept.is_mapped());
    srv.stop().await;
    let e = volatile.write(0, b"lost").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BlockNotFound), "{e}");
    // A persistent block's file stays, and so does its mapping.
    assert_eq!(kept.write(0, b"kept").await.unwrap(), 1);
}

/// A json document is read through the server into one frame; one longer than a frame may be
/// (written by a mapped writer, which no frame limit bounds) is refused with OUT_OF_RANGE, and
/// the reader's connection stays up. It was sent before, over the client's frame limit, and
/// the client dropped the connection.
#[tokio::test]
async fn a_json_document_longer_than_a_frame_is_refused_not_sent() {
    let s = TestServer::with_limits(latzero_server::Limits {
        max_frame_len: 128 * 1024,
        ..Default::default()
    })
    .await;
    let a = client(&s, "a").await;
    let b = client(&s, "b").await;
    let blk = a.create_block("p", "cfg", BlockOptions::json(1 << 20)).await.unwrap();
    assert!(blk.is_mapped());
    let remote = b.attach_block_with("p", "cfg", None, false).await.unwrap();
    // Up to the limit (the frame's less 64 KiB of header room), in one frame with its version.
    let fits = "x".repeat(64 * 1024 - 2);
    let v = blk.write_json(&fits).await.unwrap();
    assert_eq!(remote.read_json::<String>().await.unwrap(), (fits, v));
    let long = "x".repeat(64 * 1024 - 1);
    blk.write_json(&long).await.unwrap();
    let e = remote.read_json::<String>().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::OutOfRange), "{e}");
    assert!(e.to_string().contains("65537 bytes"), "{e}");
    // Still connected: the next read of a shorter document is answered.
    let v = blk.write_json(&json!({"rate": 30})).await.unwrap();
    assert_eq!(
        remote.read_json::<serde_json::Value>().await.unwrap(),
        (json!({"rate": 30}), v)
    );
}
