//! Authentication: static tokens and JWTs, AUTH_FAILED closing the connection, the pools a JWT
//! allows, and admin requests.

mod common;

use common::{Raw, Running, config_in};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use latzero_server::{AuthConfig, token_sha256};
use serde_json::{Value, json};

async fn server(dir: &std::path::Path) -> Running {
    let mut cfg = config_in(dir);
    cfg.auth = AuthConfig {
        required: true,
        token_sha256: vec![token_sha256("good-token")],
        jwt_hs256_secret: Some(b"jwt-secret".to_vec()),
        jwt_ed25519_public_pem: None,
    };
    Running::start(cfg).await
}

fn jwt(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"jwt-secret"),
    )
    .unwrap()
}

/// Seconds since the Unix epoch, a JWT's clock.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn exp() -> u64 {
    now() + 600
}

/// AUTH_FAILED with the request's id, then `closing`, then the end of the stream.
async fn refused(r: &mut Raw, req: Value) -> String {
    let id = req["id"].clone();
    r.send(req).await;
    let e = r.expect().await;
    assert_eq!(
        (e["code"].as_str(), e["in_reply_to"].clone()),
        (Some("AUTH_FAILED"), id),
        "{e}"
    );
    let c = r.expect().await;
    assert_eq!(
        (c["action"].as_str(), c["code"].as_str()),
        (Some("closing"), Some("AUTH_FAILED"))
    );
    assert!(r.recv().await.is_none(), "the connection is closed");
    e["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn handshakes_need_a_valid_credential() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let hs = |auth: Value| json!({"action":"handshake","id":1,"app_id":"w","pools":["p"],"auth":auth});

    let msg = refused(
        &mut Raw::connect(s.addr).await,
        json!({"action":"handshake","id":1,"app_id":"w"}),
    )
    .await;
    assert!(msg.contains("requires a credential"), "{msg}");
    refused(&mut Raw::connect(s.addr).await, hs(json!({"token":"bad-token"}))).await;
    let msg = refused(
        &mut Raw::connect(s.addr).await,
        hs(json!({"jwt": jwt(json!({"app_id":"someone-else","exp":exp()}))})),
    )
    .await;
    assert!(msg.contains("someone-else"), "{msg}");
    refused(
        &mut Raw::connect(s.addr).await,
        hs(json!({"jwt": jwt(json!({"app_id":"w","exp":1}))})),
    )
    .await;

    let mut ok = Raw::connect(s.addr).await;
    let ack = ok.ask(hs(json!({"token":"good-token"}))).await;
    assert_eq!(ack["action"], "handshake_ack", "{ack}");

    // A JWT limits the pools: asking for another is refused (the connection stays open).
    let mut j = Raw::connect(s.addr).await;
    let token = jwt(json!({"app_id":"j","pools":["p"],"exp":exp()}));
    let r = j
        .ask(json!({"action":"handshake","id":1,"app_id":"j","pools":["q"],"auth":{"jwt":token}}))
        .await;
    assert_eq!(r["code"], "PERMISSION_DENIED", "{r}");
    let ack = j
        .ask(json!({"action":"handshake","id":2,"app_id":"j","pools":["p"],"auth":{"jwt":token}}))
        .await;
    assert_eq!(ack["pools"], json!(["p"]));
    let r = j.ask(json!({"action":"join","id":3,"pools":["q"]})).await;
    assert_eq!(r["code"], "PERMISSION_DENIED", "{r}");
    s.stop().await;
}

#[tokio::test]
async fn admin_requests_need_an_admin_credential_and_ping_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let mut r = Raw::connect(s.addr).await;
    let p = r.ask(json!({"action":"ping","id":"p"})).await;
    assert_eq!(p["action"], "pong");
    refused(&mut r, json!({"action":"status","id":1})).await;
    // Shutting the server down is an admin request too (the rest of this test needs it up).
    refused(&mut Raw::connect(s.addr).await, json!({"action":"shutdown","id":9})).await;
    refused(
        &mut Raw::connect(s.addr).await,
        json!({"action":"app_remove","id":10,"app_id":"w"}),
    )
    .await;
    refused(&mut Raw::connect(s.addr).await, json!({"action":"health","id":11})).await;
    let app_jwt = jwt(json!({"app_id":"w","exp":exp()}));
    refused(
        &mut Raw::connect(s.addr).await,
        json!({"action":"pool_list","id":2,"auth":{"jwt":app_jwt}}),
    )
    .await;

    let mut admin = Raw::connect(s.addr).await;
    let st = admin
        .ask(json!({"action":"status","id":3,"auth":{"token":"good-token"}}))
        .await;
    assert_eq!(st["action"], "status_result");
    let l = admin.ask(json!({"action":"pool_list","id":4})).await;
    assert_eq!(
        l["action"], "pool_list_result",
        "the connection stays authenticated: {l}"
    );
    let h = admin.ask(json!({"action":"health","id":"h"})).await;
    assert_eq!(
        (h["action"].as_str(), h["healthy"].as_bool(), &h["in_reply_to"]),
        (Some("health_result"), Some(true), &json!("h")),
        "{h}"
    );
    let mut ops = Raw::connect(s.addr).await;
    let admin_jwt = jwt(json!({"sub":"ops","admin":true,"exp":exp()}));
    let a = ops
        .ask(json!({"action":"app_list","id":5,"auth":{"jwt":admin_jwt}}))
        .await;
    assert_eq!(a["action"], "app_list_result", "{a}");

    // An app that proved who it is and asks for an admin request its credential does not
    // allow is refused that request alone: its connection stays, with its call in flight.
    let mut h = Raw::connect(s.addr).await;
    let hj = jwt(json!({"app_id":"h","exp":exp()}));
    let ack = h
        .ask(json!({"action":"handshake","id":1,"app_id":"h","pools":["p"],"triggers":["f"],"auth":{"jwt":hj}}))
        .await;
    assert_eq!(ack["action"], "handshake_ack", "{ack}");
    let mut w = Raw::connect(s.addr).await;
    let wj = jwt(json!({"app_id":"w","pools":["p"],"exp":exp()}));
    let ack = w
        .ask(json!({"action":"handshake","id":1,"app_id":"w","pools":["p"],"auth":{"jwt":wj}}))
        .await;
    assert_eq!(ack["action"], "handshake_ack", "{ack}");
    w.send(json!({"action":"trigger","id":"c1","pool":"p","process":"f","data":1}))
        .await;
    let delivery = h.expect().await;
    assert_eq!(delivery["action"], "trigger", "{delivery}");
    for (id, auth) in [(2, None), (3, Some(json!({"token":"bad-token"})))] {
        let mut req = json!({"action":"status","id":id});
        if let Some(a) = auth {
            req["auth"] = a;
        }
        let e = w.ask(req).await;
        assert_eq!(
            (e["code"].as_str(), &e["in_reply_to"]),
            (Some("AUTH_FAILED"), &json!(id)),
            "{e}"
        );
    }
    // With an admin credential of its own the request is allowed, and the app's rights stay
    // its JWT's (the token would allow any pool).
    let st = w
        .ask(json!({"action":"status","id":4,"auth":{"token":"good-token"}}))
        .await;
    assert_eq!(st["action"], "status_result", "{st}");
    let r = w.ask(json!({"action":"join","id":5,"pools":["q"]})).await;
    assert_eq!(r["code"], "PERMISSION_DENIED", "{r}");
    h.send(json!({"action":"response","in_reply_to":delivery["id"],"status":"ok","response":2}))
        .await;
    let answer = w.expect().await;
    assert_eq!(
        (&answer["in_reply_to"], &answer["response"]),
        (&json!("c1"), &json!(2)),
        "{answer}"
    );
    s.stop().await;
}

/// A connection admitted by a JWT ends when the JWT expires (its `exp`, with the 60 s leeway the
/// check allows): `closing` with AUTH_FAILED, then the end of the stream, and the app is gone
/// from the directory. A token does not expire.
#[tokio::test]
async fn a_connection_ends_when_its_jwt_expires() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let now = now();
    // Past its exp but inside the leeway: accepted, and expiring in one to two seconds (a
    // window under one second could close before the handshake on a loaded machine).
    let short = jwt(json!({"app_id":"short","exp": now - 58}));
    let mut app = Raw::connect(s.addr).await;
    let ack = app
        .ask(json!({"action":"handshake","id":1,"app_id":"short","pools":["p"],"auth":{"jwt":short}}))
        .await;
    assert_eq!(ack["action"], "handshake_ack", "{ack}");
    let mut long = Raw::connect(s.addr).await;
    long.ask(json!({"action":"handshake","id":1,"app_id":"long","pools":["p"],"auth":{"token":"good-token"}}))
        .await;
    long.ask(json!({"action":"presence_subscribe","id":2,"pool":"p"})).await;
    let c = app.expect().await;
    assert_eq!(
        (c["action"].as_str(), c["code"].as_str()),
        (Some("closing"), Some("AUTH_FAILED")),
        "{c}"
    );
    assert!(c["message"].as_str().unwrap().contains("expired"), "{c}");
    assert!(app.recv().await.is_none(), "the connection is closed");
    let left = long.expect().await;
    assert_eq!(
        (left["action"].as_str(), left["app_id"].as_str(), left["event"].as_str()),
        (Some("presence"), Some("short"), Some("left")),
        "{left}"
    );
    assert!(long.sync().await.is_empty(), "the token's connection stays");
    s.stop().await;
}

/// The SDK asks its JWT source again at each handshake: after the server ended the connection
/// because the first JWT expired, it reconnects with a fresh one.
#[tokio::test]
async fn the_sdk_reconnects_with_a_fresh_jwt_after_one_expires() {
    use latzero_client::{ClientEvent, ClientOptions};
    use std::sync::atomic::{AtomicU32, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let now = now();
    let asked = std::sync::Arc::new(AtomicU32::new(0));
    let source = {
        let asked = asked.clone();
        move || {
            // The first expires in one to two seconds (inside the check's leeway); the next
            // lasts.
            let exp = if asked.fetch_add(1, Ordering::SeqCst) == 0 {
                now - 58
            } else {
                exp()
            };
            jwt(json!({"app_id":"w","pools":["p"],"exp":exp}))
        }
    };
    let c = ClientOptions::new()
        .backoff(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_millis(10),
        )
        .jwt_source(source)
        .connect(&format!("latzero://w@{}?pools=p", s.addr))
        .await
        .unwrap();
    let mut events = c.events();
    let reason = loop {
        if let ClientEvent::Disconnected { reason, reconnecting } = events.recv().await.unwrap() {
            assert!(reconnecting);
            break reason;
        }
    };
    assert!(reason.contains("expired"), "{reason}");
    loop {
        if let ClientEvent::Reconnected = events.recv().await.unwrap() {
            break;
        }
    }
    // Once per handshake: a reconnect may take more than one (DUPLICATE_APP is retried until
    // the server has seen the old connection end).
    assert!(asked.load(Ordering::SeqCst) >= 2);
    let pools: Vec<String> = c.pools().iter().map(|p| p.to_string()).collect();
    assert_eq!(pools, ["p"]);
    s.stop().await;
}

/// A live pool has no owners: with authentication, taking other apps out of it (a forced
/// `pool_remove`) takes admin rights — the app's credential, or one given with the request.
#[tokio::test]
async fn removing_a_live_pool_with_others_in_it_takes_admin_rights() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let mut apps = vec![];
    for app in ["w", "x"] {
        let mut r = Raw::connect(s.addr).await;
        let j = jwt(json!({"app_id": app, "exp": exp()}));
        let ack = r
            .ask(json!({"action":"handshake","id":1,"app_id":app,"pools":["lp"],"auth":{"jwt":j}}))
            .await;
        assert_eq!(ack["action"], "handshake_ack", "{ack}");
        apps.push(r);
    }
    let remove = json!({"action":"pool_remove","id":2,"pool":"lp","force":true});
    let r = apps[0].ask(remove.clone()).await;
    assert_eq!(r["code"], "PERMISSION_DENIED", "{r}");
    assert!(r["message"].as_str().unwrap().contains("admin credential"), "{r}");
    let mut with_admin = remove;
    with_admin["auth"] = json!({"token": "good-token"});
    apps[0].send(with_admin).await;
    // The remover is a member too: told first, then answered.
    assert_eq!(apps[0].expect().await["action"], "pool_left");
    let r = apps[0].expect().await;
    assert_eq!(r["members_removed"], json!(["w", "x"]), "{r}");
    s.stop().await;
}

/// A connection held back for not reading (its outbound queue full, so the server stops
/// reading it) still ends when its JWT expires, while its peer still does not read: its app
/// leaves its pools then, and the stream ends.
#[tokio::test]
async fn a_jwt_expires_on_a_connection_held_back_for_not_reading() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.auth = AuthConfig {
        required: true,
        token_sha256: vec![token_sha256("good-token")],
        jwt_hs256_secret: Some(b"jwt-secret".to_vec()),
        jwt_ed25519_public_pem: None,
    };
    cfg.limits.outbound_queue_bytes = 4096;
    let s = Running::start(cfg).await;
    let mut observer = Raw::connect(s.addr).await;
    observer
        .ask(json!({"action":"handshake","id":1,"app_id":"observer","pools":["p"],"auth":{"token":"good-token"}}))
        .await;
    observer
        .ask(json!({"action":"presence_subscribe","id":2,"pool":"p"}))
        .await;

    // A small receive buffer, so that the server's writes back up soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(s.addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let frame = |v: Value| {
        let b = v.to_string().into_bytes();
        let mut f = (b.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&b);
        f
    };
    // Expiring in two to three seconds (inside the check's 60 s leeway): time to back up.
    let short = jwt(json!({"app_id":"slow","exp": now() - 57}));
    w.write_all(&frame(
        json!({"action":"handshake","id":1,"app_id":"slow","pools":["p"],"auth":{"jwt":short}}),
    ))
    .await
    .unwrap();
    // Pings whose answers it does not read, until the server stops reading it.
    let ping = frame(json!({"action":"ping","id":2}));
    let writer = tokio::spawn(async move { while w.write_all(&ping).await.is_ok() {} });
    // Joined, then gone at the expiry, with nothing read on its side.
    for event in ["joined", "left"] {
        let e = observer.expect().await;
        assert_eq!(
            (e["app_id"].as_str(), e["event"].as_str()),
            (Some("slow"), Some(event)),
            "{e}"
        );
    }
    // The stream ends (a reset may cut what was queued: the peer kept sending to a socket the
    // server no longer reads, so the closing frame itself is not asserted here).
    writer.abort();
    let mut all = vec![];
    tokio::time::timeout(std::time::Duration::from_secs(20), r.read_to_end(&mut all))
        .await
        .expect("the server closed the connection")
        .ok();
    writer.abort();
    s.stop().await;
}

/// A client with one fixed JWT is refused when it reconnects after the JWT expired: the
/// application is told once, by an event, and can give up.
#[tokio::test]
async fn a_refused_reconnect_is_an_event() {
    use latzero_client::{ClientEvent, ClientOptions};
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let c = ClientOptions::new()
        .backoff(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_millis(10),
        )
        // Expiring in one to two seconds, inside the check's leeway.
        .jwt(jwt(json!({"app_id":"w","exp": now() - 58})))
        .connect(&format!("latzero://w@{}", s.addr))
        .await
        .unwrap();
    let mut events = c.events();
    let reason = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if let ClientEvent::ReconnectRefused { reason } = events.recv().await.unwrap() {
                return reason;
            }
        }
    })
    .await
    .expect("the refusal is told");
    assert!(reason.contains("AUTH_FAILED"), "{reason}");
    c.close();
    s.stop().await;
}
