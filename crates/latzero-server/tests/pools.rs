//! Pool management over the wire: stored pools, owners, removal rules, listings, restarts.

mod common;

use common::{Raw, Running, config_in};
use serde_json::{Value, json};

fn code(v: &Value) -> &str {
    assert_eq!(v["action"], "error", "{v}");
    v["code"].as_str().unwrap()
}

/// SDK options that reconnect within milliseconds, for the tests that restart the server.
fn quick_reconnect() -> latzero_client::ClientOptions {
    latzero_client::ClientOptions::new().backoff(
        std::time::Duration::from_millis(1),
        std::time::Duration::from_millis(10),
    )
}

/// Stops `srv` and waits until the client whose `events` these are has noticed; returns the
/// port, for a server started again where the client will look.
async fn stop_until_disconnected(
    srv: Running,
    events: &mut tokio::sync::broadcast::Receiver<latzero_client::ClientEvent>,
) -> u16 {
    let port = srv.addr.port();
    srv.stop().await;
    until(events, |e| {
        matches!(e, latzero_client::ClientEvent::Disconnected { .. }).then_some(())
    })
    .await;
    port
}

/// The first client event `pick` takes, waited for 10 s at most.
async fn until<T>(
    events: &mut tokio::sync::broadcast::Receiver<latzero_client::ClientEvent>,
    mut pick: impl FnMut(latzero_client::ClientEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if let Some(t) = pick(events.recv().await.unwrap()) {
                return t;
            }
        }
    })
    .await
    .expect("the event within 10 s")
}

#[tokio::test]
async fn create_update_remove_with_owners_and_listings() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(config_in(dir.path())).await;
    let addr = srv.addr;
    let mut owner = Raw::connect(addr).await;
    owner.handshake("owner", &[], &[]).await;
    let c = owner
        .ask(json!({"action":"pool_create","id":1,"pool":"alpha","description":"dev","policies":{"write":["owner"]}}))
        .await;
    assert_eq!(c["action"], "pool_created", "{c}");
    assert_eq!(
        (c["info"]["owners"].clone(), c["info"]["stored"].clone()),
        (json!(["owner"]), json!(true))
    );
    assert_eq!(
        code(&owner.ask(json!({"action":"pool_create","id":2,"pool":"alpha"})).await),
        "POOL_EXISTS"
    );
    for (kind, expected) in [("global", "NOT_AVAILABLE"), ("encrypted", "INVALID_MESSAGE")] {
        let r = owner
            .ask(json!({"action":"pool_create","id":3,"pool":"x","type":kind}))
            .await;
        assert_eq!(code(&r), expected, "{r}");
    }

    let mut other = Raw::connect(addr).await;
    other.handshake("other", &["alpha", "implicit"], &[]).await;
    let r = other
        .ask(json!({"action":"pool_update","id":4,"pool":"alpha","description":"mine"}))
        .await;
    assert_eq!(code(&r), "PERMISSION_DENIED");
    let r = other
        .ask(json!({"action":"pool_update","id":5,"pool":"implicit","description":"x"}))
        .await;
    assert_eq!(code(&r), "POOL_NOT_FOUND");
    let u = owner
        .ask(json!({"action":"pool_update","id":6,"pool":"alpha","description":"shared","owners":["owner","other"]}))
        .await;
    assert_eq!(
        (u["info"]["description"].as_str(), u["info"]["owners"].clone()),
        (Some("shared"), json!(["owner", "other"]))
    );

    // Listings need no handshake.
    let mut admin = Raw::connect(addr).await;
    let l = admin.ask(json!({"action":"pool_list","id":7})).await;
    let names: Vec<&str> = l["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["alpha", "implicit"]);
    let s = admin.ask(json!({"action":"pool_show","id":8,"pool":"alpha"})).await;
    assert_eq!(
        (s["info"]["members"].clone(), s["info"]["blocks"].clone()),
        (json!(["other"]), json!([]))
    );
    assert_eq!(
        code(&admin.ask(json!({"action":"pool_show","id":9,"pool":"nope"})).await),
        "POOL_NOT_FOUND"
    );
    assert_eq!(
        code(&admin.ask(json!({"action":"pool_create","id":10,"pool":"z"})).await),
        "HANDSHAKE_REQUIRED"
    );

    // Removal: refused while another app is in it, forced makes it leave; non-persistent blocks
    // go with the pool, persistent ones stay.
    other
        .ask(json!({"action":"block_create","id":11,"pool":"alpha","block_id":"tmp","size":16}))
        .await;
    other
        .ask(json!({"action":"block_create","id":12,"pool":"alpha","block_id":"keep","size":16,"persistent":true}))
        .await;
    let r = owner.ask(json!({"action":"pool_remove","id":13,"pool":"alpha"})).await;
    assert_eq!(code(&r), "POOL_IN_USE");
    assert!(r["message"].as_str().unwrap().contains("other"), "{r}");
    let r = owner
        .ask(json!({"action":"pool_remove","id":14,"pool":"alpha","force":true}))
        .await;
    assert_eq!(
        (r["action"].as_str(), r["blocks_removed"].as_u64()),
        (Some("pool_removed"), Some(1)),
        "{r}"
    );
    assert_eq!(r["members_removed"], json!(["other"]));
    // The member taken out is told, with who did it.
    let left = other.expect().await;
    assert_eq!(
        (left["action"].as_str(), left["pool"].as_str(), left["by"].as_str()),
        (Some("pool_left"), Some("alpha"), Some("owner")),
        "{left}"
    );
    let a = other.ask(json!({"action":"join","id":15,"pools":["implicit"]})).await;
    assert_eq!(a["pools"], json!(["implicit"]), "other is no longer in alpha");
    let l = admin.ask(json!({"action":"pool_list","id":16})).await;
    assert_eq!(l["pools"].as_array().unwrap().len(), 1);

    let apps = admin.ask(json!({"action":"app_list","id":17})).await;
    let listed: Vec<(&str, bool)> = apps["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["app_id"].as_str().unwrap(), a["connected"].as_bool().unwrap()))
        .collect();
    assert_eq!(listed, vec![("other", true), ("owner", true)]);
    srv.stop().await;
}

#[tokio::test]
async fn stored_pools_come_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(config_in(dir.path())).await;
    let addr = srv.addr;
    let mut a = Raw::connect(addr).await;
    a.handshake("a", &[], &[]).await;
    a.ask(json!({"action":"pool_create","id":1,"pool":"kept","description":"survives","owners":["a","b"]}))
        .await;
    drop(a);
    srv.stop().await;

    let srv = Running::start(config_in(dir.path())).await;
    let addr = srv.addr;
    let mut admin = Raw::connect(addr).await;
    let s = admin.ask(json!({"action":"pool_show","id":1,"pool":"kept"})).await;
    assert_eq!(
        (
            s["info"]["description"].as_str(),
            s["info"]["owners"].clone(),
            s["info"]["members"].clone()
        ),
        (Some("survives"), json!(["a", "b"]), json!([]))
    );
    srv.stop().await;
}

#[tokio::test]
async fn policies_are_enforced_on_every_operation_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(config_in(dir.path())).await;
    let addr = srv.addr;
    let mut owner = Raw::connect(addr).await;
    owner.handshake("owner", &[], &[]).await;
    let c = owner
        .ask(json!({"action":"pool_create","id":1,"pool":"guarded","policies":{
            "join":["caller","reader","handler"], "call":["caller"], "emit":[],
            "read":["reader","caller"], "write":[]}}))
        .await;
    assert_eq!(c["info"]["policies"]["call"], json!(["caller"]), "{c}");
    owner.ask(json!({"action":"join","id":2,"pools":["guarded"]})).await;

    // join: in the handshake, with join, and through rehydration.
    let mut outsider = Raw::connect(addr).await;
    outsider
        .send(json!({"action":"handshake","id":"h","app_id":"outsider","pools":["guarded"]}))
        .await;
    let r = outsider.expect().await;
    assert_eq!(code(&r), "PERMISSION_DENIED");
    assert!(r["message"].as_str().unwrap().contains("policies.join"), "{r}");
    outsider.handshake("outsider", &["open"], &[]).await;
    let r = outsider.ask(json!({"action":"join","id":3,"pools":["guarded"]})).await;
    assert_eq!(code(&r), "PERMISSION_DENIED");

    let mut handler = Raw::connect(addr).await;
    handler.handshake("handler", &["guarded"], &["echo"]).await;
    let mut reader = Raw::connect(addr).await;
    reader.handshake("reader", &["guarded"], &[]).await;
    let mut caller = Raw::connect(addr).await;
    caller.handshake("caller", &["guarded"], &[]).await;

    // call and emit.
    let r = reader
        .ask(json!({"action":"trigger","id":4,"pool":"guarded","process":"echo","data":1}))
        .await;
    assert_eq!(code(&r), "PERMISSION_DENIED");
    assert!(r["message"].as_str().unwrap().contains("policies.call"), "{r}");
    caller
        .send(json!({"action":"trigger","id":5,"pool":"guarded","process":"echo","data":2}))
        .await;
    let d = handler.expect().await;
    assert_eq!((d["action"].as_str(), d["data"].clone()), (Some("trigger"), json!(2)));
    handler
        .send(json!({"action":"response","in_reply_to":d["id"],"status":"ok","response":"ok"}))
        .await;
    let r = caller.expect().await;
    assert_eq!(
        (r["in_reply_to"].clone(), r["response"].clone()),
        (json!(5), json!("ok")),
        "{r}"
    );
    let r = caller
        .ask(json!({"action":"emit","id":6,"pool":"guarded","process":"echo","data":3}))
        .await;
    assert_eq!(code(&r), "PERMISSION_DENIED");

    // read and write: the owner may always; readers read; nobody else writes.
    let b = owner
        .ask(json!({"action":"block_create","id":7,"pool":"guarded","block_id":"b","size":4096,"permissions":{"read":["*"],"write":["*"]}}))
        .await;
    assert_eq!(b["action"], "block_created", "{b}");
    let w = owner
        .ask(json!({"action":"block_write","id":8,"pool":"guarded","block_id":"b","data":"aGk="}))
        .await;
    assert_eq!(w["action"], "block_written", "{w}");
    let r = reader
        .ask(json!({"action":"block_read","id":9,"pool":"guarded","block_id":"b","length":2,"encoding":"base64"}))
        .await;
    assert_eq!(r["data"], "aGk=", "{r}");
    let a = reader
        .ask(json!({"action":"block_attach","id":10,"pool":"guarded","block_id":"b"}))
        .await;
    assert_eq!(a["mode"], "read", "the widest mode the policy allows: {a}");
    for (i, req) in [
        json!({"action":"block_write","pool":"guarded","block_id":"b","data":"aGk="}),
        json!({"action":"block_attach","pool":"guarded","block_id":"b","mode":"write"}),
        json!({"action":"block_lock","pool":"guarded","block_id":"b","mode":"exclusive"}),
        json!({"action":"block_delete","pool":"guarded","block_id":"b"}),
        json!({"action":"block_create","pool":"guarded","block_id":"c","size":4096}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = req;
        req["id"] = json!(100 + i);
        let r = reader.ask(req.clone()).await;
        assert_eq!(code(&r), "PERMISSION_DENIED", "{req} → {r}");
        assert!(r["message"].as_str().unwrap().contains("policies.write"), "{r}");
    }
    let r = handler
        .ask(json!({"action":"block_stat","id":11,"pool":"guarded","block_id":"b"}))
        .await;
    assert_eq!(code(&r), "PERMISSION_DENIED", "handler is not in the read list");

    // Only owners change policies; a change applies at once.
    let r = reader
        .ask(json!({"action":"pool_update","id":12,"pool":"guarded","policies":{}}))
        .await;
    assert_eq!(code(&r), "PERMISSION_DENIED");
    owner
        .ask(json!({"action":"pool_update","id":13,"pool":"guarded","policies":{"join":["caller","reader"],"write":["reader"]}}))
        .await;
    let w = reader
        .ask(json!({"action":"block_write","id":14,"pool":"guarded","block_id":"b","data":"aGk="}))
        .await;
    assert_eq!(w["action"], "block_written", "{w}");
    drop((handler, reader, caller, outsider, owner));
    srv.stop().await;

    // After a restart the stored policies hold: handler is no longer in the join list, and
    // rehydration does not put it back into the pool.
    let srv = Running::start(config_in(dir.path())).await;
    let mut handler = Raw::connect(srv.addr).await;
    let ack = handler.handshake("handler", &[], &[]).await;
    assert!(
        !ack["pools"].as_array().unwrap().iter().any(|p| p == "guarded"),
        "{ack}"
    );
    let mut outsider = Raw::connect(srv.addr).await;
    outsider
        .send(json!({"action":"handshake","id":"h","app_id":"outsider","pools":["guarded"]}))
        .await;
    assert_eq!(code(&outsider.expect().await), "PERMISSION_DENIED");
    srv.stop().await;
}

/// The SDK hears that its app was taken out of a pool: an event, and the pool gone from the
/// pools it joins again after a reconnect.
#[tokio::test]
async fn a_client_taken_out_of_a_removed_pool_is_told_and_does_not_rejoin_it() {
    use latzero_client::{ClientEvent, ClientOptions, PoolSpec};
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(config_in(dir.path())).await;
    let connect = async |app: &str| {
        ClientOptions::new()
            .reconnect(false)
            .connect(&format!("latzero://{app}@{}?pools=keep", srv.addr))
            .await
    };
    let owner = connect("owner").await.unwrap();
    owner.create_pool("alpha", PoolSpec::default()).await.unwrap();
    let worker = connect("worker").await.unwrap();
    worker.join("alpha").await.unwrap();
    let mut events = worker.events();
    let r = owner.remove_pool("alpha", true).await.unwrap();
    assert_eq!(r["members_removed"], json!(["worker"]), "{r}");
    let (pool, reason) = until(&mut events, |e| match e {
        ClientEvent::PoolLeft { pool, reason } => Some((pool, reason)),
        _ => None,
    })
    .await;
    assert_eq!(pool, "alpha");
    assert!(reason.contains("removed by 'owner'"), "{reason}");
    let pools: Vec<String> = worker.pools().iter().map(|p| p.to_string()).collect();
    assert_eq!(pools, ["keep"]);
    srv.stop().await;
}

/// A policy change that no longer lets a member join takes it out: the owner's update lists it,
/// and its SDK hears it as for a removed pool.
#[tokio::test]
async fn a_client_a_policy_change_shuts_out_is_told_and_leaves() {
    use latzero_client::{ClientEvent, ClientOptions, PoolSpec};
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(config_in(dir.path())).await;
    let connect = async |app: &str| {
        ClientOptions::new()
            .reconnect(false)
            .connect(&format!("latzero://{app}@{}", srv.addr))
            .await
    };
    let owner = connect("owner").await.unwrap();
    owner.create_pool("alpha", PoolSpec::default()).await.unwrap();
    let (stays, goes) = (connect("stays").await.unwrap(), connect("goes").await.unwrap());
    stays.join("alpha").await.unwrap();
    goes.join("alpha").await.unwrap();
    let mut events = goes.events();
    let info = owner
        .update_pool("alpha", json!({"policies": {"join": ["stays"]}}))
        .await
        .unwrap();
    assert_eq!(
        (&info["members_removed"], &info["members"]),
        (&json!(["goes"]), &json!(["stays"])),
        "{info}"
    );
    let reason = until(&mut events, |e| match e {
        ClientEvent::PoolLeft { pool, reason } if pool == "alpha" => Some(reason),
        _ => None,
    })
    .await;
    assert!(reason.contains("no longer let this app join"), "{reason}");
    assert!(goes.pools().is_empty(), "{:?}", goes.pools());
    srv.stop().await;
}

/// An app offline when its pool is removed does not join it again by rehydration: its stored
/// membership went with the pool.
#[tokio::test]
async fn a_removed_pool_is_not_rehydrated_for_an_app_that_was_offline() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(config_in(dir.path())).await;
    let mut owner = Raw::connect(srv.addr).await;
    owner.handshake("owner", &[], &[]).await;
    let r = owner
        .ask(json!({"action":"pool_create","id":1,"pool":"alpha","owners":["owner"]}))
        .await;
    assert_eq!(r["action"], "pool_created", "{r}");
    let mut away = Raw::connect(srv.addr).await;
    away.handshake("away", &["alpha", "beta"], &["t"]).await;
    drop(away);
    // Wait until the server has seen it go.
    loop {
        let apps = owner.ask(json!({"action":"app_list","id":2})).await;
        let gone = apps["apps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["app_id"] == "away" && a["connected"] == false);
        if gone {
            break;
        }
        tokio::task::yield_now().await;
    }
    let r = owner.ask(json!({"action":"pool_remove","id":3,"pool":"alpha"})).await;
    assert_eq!(r["members_removed"], json!([]), "{r}");
    let mut back = Raw::connect(srv.addr).await;
    back.send(json!({"action":"handshake","id":1,"app_id":"away"})).await;
    let ack = back.expect().await;
    assert_eq!(
        (
            ack["rehydrated"].as_bool(),
            ack["pools"].clone(),
            ack["triggers"].clone()
        ),
        (Some(true), json!(["beta"]), json!(["t"])),
        "{ack}"
    );
    srv.stop().await;
}

/// A live pool (joined, never created) is forgotten once no app is in it and it holds no memory
/// block, whether its last member left or disconnected: an app joining pools of new names does
/// not grow the server without end. One with a block stays; a stored one always stays.
#[tokio::test]
async fn a_live_pool_left_empty_is_forgotten_unless_it_holds_a_block() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(config_in(dir.path())).await;
    let names = |l: &Value| -> Vec<String> {
        l["pools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut a = Raw::connect(srv.addr).await;
    a.handshake("a", &[], &[]).await;
    for i in 0..200 {
        a.ask(json!({"action":"join","id":i,"pools":[format!("tmp{i}")]})).await;
        a.ask(json!({"action":"leave","id":i,"pools":[format!("tmp{i}")]}))
            .await;
    }
    let r = a
        .ask(json!({"action":"pool_create","id":"c","pool":"kept","owners":["a"]}))
        .await;
    assert_eq!(r["action"], "pool_created", "{r}");
    a.ask(json!({"action":"join","id":"j","pools":["kept","blocky","gone"]}))
        .await;
    let b = a
        .ask(json!({"action":"block_create","id":"b","pool":"blocky","block_id":"x","size":8}))
        .await;
    assert_eq!(b["action"], "block_created", "{b}");
    a.ask(json!({"action":"leave","id":"l","pools":["kept","blocky"]}))
        .await;
    drop(a);
    let mut admin = Raw::connect(srv.addr).await;
    // "gone" goes once the server has seen `a` disconnect (a bound, so that a pool never
    // forgotten fails the test rather than hangs it).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let l = loop {
        let l = admin.ask(json!({"action":"pool_list","id":1})).await;
        if !names(&l).contains(&"gone".to_owned()) || tokio::time::Instant::now() > deadline {
            break l;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(names(&l), ["blocky", "kept"], "{l}");
    srv.stop().await;
}

/// A join or a registration the server refuses leaves nothing behind in the SDK: the pool or
/// trigger is not carried into the next handshake, which would then be refused whole and the
/// client could never reconnect.
#[tokio::test]
async fn a_refused_join_or_registration_does_not_break_the_next_reconnect() {
    use latzero_client::{ClientEvent, ClientOptions, ErrorCode, PoolSpec};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.limits.max_triggers_per_app = 1;
    let srv = Running::start(cfg).await;
    let owner = ClientOptions::new()
        .connect(&format!("latzero://owner@{}", srv.addr))
        .await
        .unwrap();
    let spec = PoolSpec {
        policies: Some(json!({"join": []})),
        ..PoolSpec::default()
    };
    owner.create_pool("closed", spec).await.unwrap();
    let c = quick_reconnect()
        .connect(&format!("latzero://c@{}?pools=open", srv.addr))
        .await
        .unwrap();
    let e = c.join("closed").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
    c.handle("one", |_| async { Ok(json!(1)) }).await.unwrap();
    let e = c.handle("two", |_| async { Ok(json!(2)) }).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Overloaded), "{e}");
    let pools: Vec<String> = c.pools().iter().map(|p| p.to_string()).collect();
    assert_eq!(pools, ["open"]);

    // The server restarts on the same port; the client reconnects with what it really has.
    let mut events = c.events();
    let port = srv.addr.port();
    srv.stop().await;
    let mut cfg = config_in(dir.path());
    cfg.limits.max_triggers_per_app = 1;
    cfg.port = port;
    let srv = Running::start(cfg).await;
    until(&mut events, |e| matches!(e, ClientEvent::Reconnected).then_some(())).await;
    assert_eq!(c.call("open", "one", &json!(null)).await.unwrap(), json!(1));
    srv.stop().await;
}

/// `pool_list` and `app_list` page by name: `limit` items after `after`, and `next` to ask
/// from until it is null; without `limit`, everything at once.
#[tokio::test]
async fn listings_page_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(config_in(dir.path())).await;
    let mut apps = vec![];
    for (app, pool) in [("a1", "p1"), ("a2", "p2"), ("a3", "p3"), ("a4", "p4"), ("a5", "p5")] {
        let mut r = Raw::connect(srv.addr).await;
        r.handshake(app, &[pool], &[]).await;
        apps.push(r);
    }
    let mut admin = Raw::connect(srv.addr).await;
    for (action, key, field, prefix) in [("pool_list", "pools", "name", "p"), ("app_list", "apps", "app_id", "a")] {
        let mut pages = vec![];
        let mut after = Value::Null;
        loop {
            let mut req = json!({"action": action, "id": 1, "limit": 2});
            if !after.is_null() {
                req["after"] = after;
            }
            let r = admin.ask(req).await;
            let names: Vec<String> = r[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x[field].as_str().unwrap().to_owned())
                .collect();
            pages.push(names);
            after = r["next"].clone();
            if after.is_null() {
                break;
            }
        }
        let n = |i: u8| format!("{prefix}{i}");
        assert_eq!(pages, vec![vec![n(1), n(2)], vec![n(3), n(4)], vec![n(5)]], "{action}");
        let all = admin.ask(json!({"action": action, "id": 2})).await;
        assert_eq!(
            (all[key].as_array().unwrap().len(), &all["next"]),
            (5, &Value::Null),
            "{all}"
        );
        let r = admin.ask(json!({"action": action, "id": 3, "limit": 0})).await;
        assert_eq!(code(&r), "INVALID_MESSAGE", "{r}");
    }
    srv.stop().await;
}

/// A `partial` handshake leaves out what a strict one is refused for — a pool's policy, a
/// limit — names each in `refused`, and admits the app with the rest; one whose every pool and
/// trigger is left out is not rehydrated in their place.
#[tokio::test]
async fn a_partial_handshake_leaves_out_what_would_be_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.limits.max_pools_per_app = 2;
    cfg.limits.max_triggers_per_app = 1;
    let srv = Running::start(cfg).await;
    let mut owner = Raw::connect(srv.addr).await;
    owner.handshake("owner", &[], &[]).await;
    let r = owner
        .ask(json!({"action":"pool_create","id":1,"pool":"closed","policies":{"join":[]}}))
        .await;
    assert_eq!(r["action"], "pool_created", "{r}");
    let hs = json!({"action":"handshake","id":1,"app_id":"w","pools":["a","closed","b","c"],"triggers":["t1","t2"]});
    let mut strict = Raw::connect(srv.addr).await;
    let r = strict.ask(hs.clone()).await;
    assert_eq!(code(&r), "OVERLOADED", "a strict handshake is refused whole: {r}");
    let mut partial_hs = hs.clone();
    partial_hs["partial"] = json!(true);
    let mut w = Raw::connect(srv.addr).await;
    let ack = w.ask(partial_hs).await;
    assert_eq!(ack["action"], "handshake_ack", "{ack}");
    assert_eq!(
        (&ack["pools"], &ack["triggers"]),
        (&json!(["a", "b"]), &json!(["t1"])),
        "{ack}"
    );
    let refused: Vec<(Value, Value, Value)> = ack["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["pool"].clone(), r["trigger"].clone(), r["code"].clone()))
        .collect();
    assert_eq!(
        refused,
        [
            (json!("closed"), Value::Null, json!("PERMISSION_DENIED")),
            (json!("c"), Value::Null, json!("OVERLOADED")),
            (Value::Null, json!("t2"), json!("OVERLOADED")),
        ],
        "{ack}"
    );
    assert!(
        ack["refused"][1]["message"]
            .as_str()
            .unwrap()
            .contains("max_pools_per_app"),
        "{ack}"
    );
    drop(w);
    // Everything left out: not rehydrated (w is stored with a and b), and nothing refused is
    // listed for a handshake that left nothing out.
    let mut w = loop {
        let mut w = Raw::connect(srv.addr).await;
        let ack = w
            .ask(json!({"action":"handshake","id":1,"app_id":"w","pools":["closed"],"partial":true}))
            .await;
        if ack["code"] == "DUPLICATE_APP" {
            tokio::task::yield_now().await;
            continue;
        }
        assert_eq!(
            (&ack["pools"], &ack["rehydrated"]),
            (&json!([]), &json!(false)),
            "{ack}"
        );
        assert_eq!(ack["refused"][0]["pool"], "closed", "{ack}");
        break w;
    };
    let r = w.ask(json!({"action":"join","id":2,"pools":["a"]})).await;
    assert_eq!(r["action"], "ack", "{r}");
    srv.stop().await;
}

/// When the SDK reconnects, a pool or trigger the server refuses by then is dropped and told
/// (PoolLeft, TriggerRefused), and the client is back with the rest, rather than kept out.
#[tokio::test]
async fn a_reconnect_drops_what_the_server_now_refuses_and_gets_back_in() {
    use latzero_client::{ClientEvent, ClientOptions, PoolSpec};
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(config_in(dir.path())).await;
    let owner = ClientOptions::new()
        .connect(&format!("latzero://owner@{}", srv.addr))
        .await
        .unwrap();
    let spec = PoolSpec {
        policies: Some(json!({"join": ["owner"]})),
        ..PoolSpec::default()
    };
    owner.create_pool("closed", spec).await.unwrap();
    drop(owner);
    let c = quick_reconnect()
        .connect(&format!("latzero://c@{}?pools=open", srv.addr))
        .await
        .unwrap();
    c.handle("one", |_| async { Ok(json!(1)) }).await.unwrap();
    c.handle("two", |_| async { Ok(json!(2)) }).await.unwrap();
    let mut events = c.events();
    let port = stop_until_disconnected(srv, &mut events).await;
    // Recorded while disconnected, and refused when the client is back; so is one of its two
    // triggers, by a limit lowered meanwhile.
    c.join("closed").await.unwrap();
    let mut cfg = config_in(dir.path());
    cfg.limits.max_triggers_per_app = 1;
    cfg.port = port;
    let srv = Running::start(cfg).await;
    let (mut left, mut dropped) = (vec![], vec![]);
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match events.recv().await.unwrap() {
                ClientEvent::PoolLeft { pool, reason } => left.push((pool, reason)),
                ClientEvent::TriggerRefused { trigger, reason } => dropped.push((trigger, reason)),
                ClientEvent::ReconnectRefused { reason } => panic!("kept out: {reason}"),
                ClientEvent::Reconnected => break,
                _ => {}
            }
        }
    })
    .await
    .expect("reconnected within 10 s");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].0, "closed");
    assert!(left[0].1.starts_with("PERMISSION_DENIED"), "{left:?}");
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert!(dropped[0].1.contains("max_triggers_per_app"), "{dropped:?}");
    let pools: Vec<String> = c.pools().iter().map(|p| p.to_string()).collect();
    assert_eq!(pools, ["open"]);
    // The trigger it kept answers; the one dropped is no longer this client's.
    let (kept, gone) = if dropped[0].0 == "two" {
        ("one", "two")
    } else {
        ("two", "one")
    };
    let want = if kept == "one" { 1 } else { 2 };
    assert_eq!(c.call("open", kept, &json!(null)).await.unwrap(), json!(want));
    assert!(c.call("open", gone, &json!(null)).await.is_err());
    srv.stop().await;
}

/// A presence subscription outlives a reconnect (the server's is the connection's, so the SDK
/// asks again), and one made while disconnected is asked for when the client is back.
#[tokio::test]
async fn presence_subscriptions_are_asked_again_after_a_reconnect() {
    use latzero_client::{ClientEvent, ClientOptions};
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(config_in(dir.path())).await;
    let c = quick_reconnect()
        .connect(&format!("latzero://watcher@{}?pools=p,q", srv.addr))
        .await
        .unwrap();
    c.subscribe_presence("p").await.unwrap();
    let mut events = c.events();
    let port = stop_until_disconnected(srv, &mut events).await;
    c.subscribe_presence("q").await.unwrap();
    let mut cfg = config_in(dir.path());
    cfg.port = port;
    let srv = Running::start(cfg).await;
    let wait = std::time::Duration::from_secs(10);
    until(&mut events, |e| matches!(e, ClientEvent::Reconnected).then_some(())).await;
    // The subscriptions were queued before the event; the round trip sees them handled.
    c.flush().await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let _a = ClientOptions::new()
        .connect(&format!("latzero://arrival@{}?pools=p,q", srv.addr))
        .await
        .unwrap();
    tokio::time::timeout(wait, async {
        while seen.len() < 2 {
            if let ClientEvent::Presence {
                pool,
                app_id,
                joined: true,
            } = events.recv().await.unwrap()
            {
                assert_eq!(app_id, "arrival");
                seen.insert(pool);
            }
        }
    })
    .await
    .expect("presence of both pools after the reconnect");
    srv.stop().await;
}
