//! Pool management over the wire: stored pools, owners, removal rules, listings, restarts.

mod common;

use common::{Raw, Running, config_in};
use serde_json::{Value, json};

fn code(v: &Value) -> &str {
    assert_eq!(v["action"], "error", "{v}");
    v["code"].as_str().unwrap()
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
    for kind in ["global", "encrypted"] {
        let r = owner
            .ask(json!({"action":"pool_create","id":3,"pool":"x","type":kind}))
            .await;
        assert_eq!(code(&r), "NOT_AVAILABLE", "{r}");
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
