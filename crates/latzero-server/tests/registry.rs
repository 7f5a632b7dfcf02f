//! The durable registry: registrations stored before they are acknowledged, rehydration after a
//! reconnect and after a restart, ephemeral apps, last_seen.

mod common;

use common::{Raw, Running};
use serde_json::{Value, json};

async fn start(dir: &std::path::Path) -> Running {
    Running::start(common::config_in(dir)).await
}

async fn handshake(addr: std::net::SocketAddr, hs: Value) -> (Raw, Value) {
    let mut r = Raw::connect(addr).await;
    r.send(hs).await;
    let ack = r.expect().await;
    assert_eq!(ack["action"], "handshake_ack", "{ack}");
    (r, ack)
}

/// Waits until the server has seen the connection close (the app leaves the directory).
async fn gone(addr: std::net::SocketAddr, app: &str) {
    let mut admin = Raw::connect(addr).await;
    for _ in 0..1000 {
        let st = admin.ask(json!({"action":"status","id":1})).await;
        if !st["apps"].as_array().unwrap().iter().any(|a| a["app_id"] == app) {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{app} never left");
}

#[tokio::test]
async fn an_app_coming_back_empty_gets_its_pools_triggers_and_meta() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let (mut a, ack) = handshake(
        s.addr,
        json!({"action":"handshake","app_id":"a","pools":["p"],"triggers":["t"],"meta":{"v":1}}),
    )
    .await;
    assert_eq!(
        (ack["rehydrated"].as_bool(), ack.get("store_error")),
        (Some(false), None),
        "{ack}"
    );
    // A membership change is stored too, before its ack.
    let r = a.ask(json!({"action":"join","id":2,"pools":["q"]})).await;
    assert_eq!(r["pools"], json!(["p", "q"]));
    drop(a);
    gone(s.addr, "a").await;

    let (mut a, ack) = handshake(s.addr, json!({"action":"handshake","app_id":"a"})).await;
    assert_eq!(ack["rehydrated"], true, "{ack}");
    assert_eq!(ack["pools"], json!(["p", "q"]));
    assert_eq!(ack["triggers"], json!(["t"]));
    assert_eq!(ack["restored"]["meta"], json!({"v":1}));
    assert!(ack["restored"]["last_seen"].as_i64().unwrap() > 0);
    // The restored app is really back: it serves its trigger in its pools.
    let mut c = Raw::connect(s.addr).await;
    c.handshake("caller", &["p"], &[]).await;
    c.send(json!({"action":"trigger","id":"x","process":"t","pool":"p"}))
        .await;
    let t = a.expect().await;
    assert_eq!(t["action"], "trigger");
    s.stop().await;
}

#[tokio::test]
async fn given_pools_are_kept_unless_rehydrate_is_asked_and_ephemeral_apps_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let (a, _) = handshake(s.addr, json!({"action":"handshake","app_id":"a","pools":["p"]})).await;
    drop(a);
    gone(s.addr, "a").await;
    let (a, ack) = handshake(s.addr, json!({"action":"handshake","app_id":"a","pools":["q"]})).await;
    assert_eq!(
        (ack["rehydrated"].as_bool(), ack["pools"].clone()),
        (Some(false), json!(["q"]))
    );
    drop(a);
    gone(s.addr, "a").await;
    // Stored now: q. With rehydrate: true the given and the stored pools are joined.
    let (a, ack) = handshake(
        s.addr,
        json!({"action":"handshake","app_id":"a","pools":["r"],"rehydrate":true}),
    )
    .await;
    assert_eq!(
        (ack["rehydrated"].as_bool(), ack["pools"].clone()),
        (Some(true), json!(["q", "r"]))
    );
    drop(a);

    let (e, ack) = handshake(
        s.addr,
        json!({"action":"handshake","app_id":"tool","pools":["p"],"ephemeral":true}),
    )
    .await;
    assert_eq!(ack["rehydrated"], false);
    drop(e);
    gone(s.addr, "tool").await;
    let (_e, ack) = handshake(s.addr, json!({"action":"handshake","app_id":"tool"})).await;
    assert_eq!(
        (ack["rehydrated"].as_bool(), ack["pools"].clone()),
        (Some(false), json!([]))
    );
    s.stop().await;
}

#[tokio::test]
async fn registrations_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    for i in 0..20 {
        let (_r, ack) = handshake(
            s.addr,
            json!({"action":"handshake","app_id":format!("app{i}"),"pools":["p"],"triggers":[format!("t{i}")]}),
        )
        .await;
        assert!(ack.get("store_error").is_none());
    }
    s.stop().await;
    assert!(dir.path().join("data.db").exists());

    let s = start(dir.path()).await;
    for i in [0, 7, 19] {
        let (_r, ack) = handshake(s.addr, json!({"action":"handshake","app_id":format!("app{i}")})).await;
        assert_eq!(ack["rehydrated"], true, "{ack}");
        assert_eq!(ack["triggers"], json!([format!("t{i}")]));
    }
    s.stop().await;
}

#[tokio::test]
async fn the_sdk_keeps_what_rehydration_restored() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let url = |q: &str| format!("latzero://w@{}{q}", s.addr);
    let w = latzero_client::Client::connect(&url("?pools=p,q")).await.unwrap();
    drop(w);
    gone(s.addr, "w").await;
    let w = latzero_client::Client::connect(&url("")).await.unwrap();
    let mut pools: Vec<String> = w.pools().iter().map(|p| p.to_string()).collect();
    pools.sort();
    assert_eq!(pools, vec!["p", "q"]);
    drop(w);
    s.stop().await;
}

/// `app_remove` forgets a stored registration: refused while the app is connected and for an
/// app never stored; once done the app leaves `app_list` and is not rehydrated.
#[tokio::test]
async fn a_removed_registration_is_listed_no_more_and_not_rehydrated() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let (app, _) = handshake(
        s.addr,
        json!({"action":"handshake","id":1,"app_id":"old","pools":["p"],"triggers":["t"]}),
    )
    .await;
    let mut admin = Raw::connect(s.addr).await;
    let r = admin.ask(json!({"action":"app_remove","id":1,"app_id":"old"})).await;
    assert_eq!(r["code"], "APP_CONNECTED", "{r}");
    let r = admin.ask(json!({"action":"app_remove","id":2,"app_id":"never"})).await;
    assert_eq!(r["code"], "APP_NOT_FOUND", "{r}");
    let r = admin.ask(json!({"action":"app_remove","id":3})).await;
    assert_eq!(r["code"], "INVALID_MESSAGE", "{r}");
    drop(app);
    // Once the server has seen it go, the registration can be removed.
    let r = loop {
        let r = admin.ask(json!({"action":"app_remove","id":4,"app_id":"old"})).await;
        if r["code"] != "APP_CONNECTED" {
            break r;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(r, json!({"action":"app_removed","in_reply_to":4,"app_id":"old"}));
    let l = admin.ask(json!({"action":"app_list","id":5})).await;
    assert_eq!(l["apps"], json!([]), "{l}");
    let (_back, ack) = handshake(s.addr, json!({"action":"handshake","id":1,"app_id":"old"})).await;
    assert_eq!(
        (ack["rehydrated"].as_bool(), ack["pools"].clone()),
        (Some(false), json!([])),
        "{ack}"
    );
    s.stop().await;
}

/// Lists the app ids of the stored registrations.
async fn stored(admin: &mut Raw) -> Vec<String> {
    let l = admin.ask(json!({"action":"app_list","id":1})).await;
    l["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["app_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A registration not seen within `app_retention` is forgotten, unless its app is connected.
#[tokio::test]
async fn registrations_past_the_retention_are_forgotten_unless_connected() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config_in(dir.path());
    cfg.store.app_retention = std::time::Duration::from_millis(200);
    let s = Running::start(cfg).await;
    let (stay, _) = handshake(s.addr, json!({"action":"handshake","app_id":"stay","pools":["p"]})).await;
    let (old, _) = handshake(s.addr, json!({"action":"handshake","app_id":"old","pools":["p"]})).await;
    drop(old);
    gone(s.addr, "old").await;
    let mut admin = Raw::connect(s.addr).await;
    // The server looks every 200 ms here; "old" goes at the first look after 200 ms.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stored(&mut admin).await.contains(&"old".to_owned()) {
        assert!(std::time::Instant::now() < deadline, "old was never forgotten");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // "stay" was last seen before "old" went, so that look passed it over for being connected.
    assert_eq!(stored(&mut admin).await, ["stay"]);
    drop(stay);
    gone(s.addr, "stay").await;
    while !stored(&mut admin).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "stay was never forgotten");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    s.stop().await;
}

/// A registry holding `max_stored_apps` serves a new app but does not remember it, and says so.
#[tokio::test]
async fn a_full_registry_serves_a_new_app_and_says_it_is_not_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config_in(dir.path());
    cfg.store.max_apps = 1;
    let s = Running::start(cfg).await;
    let (_a, ack) = handshake(s.addr, json!({"action":"handshake","app_id":"a","pools":["p"]})).await;
    assert!(ack.get("store_error").is_none(), "{ack}");
    let (mut b, ack) = handshake(s.addr, json!({"action":"handshake","app_id":"b","pools":["p"]})).await;
    let e = ack["store_error"].as_str().unwrap_or_default();
    assert!(
        e.contains("holds 1 app registrations") && e.contains("--max-stored-apps"),
        "{ack}"
    );
    assert_eq!(ack["pools"], json!(["p"]), "{ack}");
    // Served all the same: its join is acknowledged (and still not stored).
    let r = b.ask(json!({"action":"join","id":2,"pools":["q"]})).await;
    assert_eq!(r["action"], "ack", "{r}");
    assert!(
        r["store_error"]
            .as_str()
            .unwrap_or_default()
            .contains("max-stored-apps"),
        "{r}"
    );
    let mut admin = Raw::connect(s.addr).await;
    assert_eq!(stored(&mut admin).await, ["a"]);
    s.stop().await;
}
