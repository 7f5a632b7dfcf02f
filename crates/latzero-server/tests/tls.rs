//! TLS on the TCP port: SDK clients over TLS (pinned fingerprint and CA), the generated
//! certificate, and clear failures for every mismatch (plain to TLS, TLS to plain, wrong pin,
//! wrong CA, silence).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Raw, Running, config_in};
use latzero_client::{Client, ClientError, ClientOptions, ErrorCode, Request, TlsVerify};
use latzero_server::{GENERATED_KEY, RuntimeInfo};
use serde_json::json;
use tokio::io::AsyncReadExt;

fn tls_config(dir: &std::path::Path) -> latzero_server::ServerConfig {
    let mut cfg = config_in(dir);
    cfg.tls.enabled = true;
    cfg
}

fn fingerprint(dir: &std::path::Path) -> String {
    RuntimeInfo::read(dir)
        .unwrap()
        .tls_fingerprint
        .expect("server.json names the fingerprint")
}

fn once() -> ClientOptions {
    ClientOptions::new().reconnect(false).ephemeral(true)
}

/// A TLS server in `dir`, the URL of an app on it (pinning the generated certificate) and an
/// SDK worker there that answers "echo" with what it gets.
async fn echo_over_tls(dir: &std::path::Path) -> (Running, impl Fn(&str) -> String, Client) {
    let srv = Running::start(tls_config(dir)).await;
    let (fp, addr) = (fingerprint(dir), srv.addr);
    let url = move |app: &str| format!("latzeros://{app}@{addr}?pools=p&fingerprint={fp}");
    let worker = once().connect(&url("worker")).await.unwrap();
    worker
        .handle("echo", |r: Request| async move { Ok(r.data) })
        .await
        .unwrap();
    (srv, url, worker)
}

#[tokio::test]
async fn sdk_clients_call_each_other_over_tls_with_a_pinned_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, url, worker) = echo_over_tls(dir.path()).await;
    let fp = fingerprint(dir.path());
    let caller = once().connect(&url("caller")).await.unwrap();
    let big = "x".repeat(200_000);
    for payload in [json!(1), json!(big)] {
        assert_eq!(caller.call("p", "echo", &payload).await.unwrap(), payload);
    }
    // The Unix socket stays plain and reaches the same pools.
    let local = once()
        .connect(&format!("latzero://local?socket={}&pools=p", srv.unix.display()))
        .await
        .unwrap();
    assert_eq!(local.call("p", "echo", &json!("u")).await.unwrap(), json!("u"));
    // The same verification through the option instead of the URL.
    let opt = once()
        .tls(TlsVerify::Fingerprint(latzero_client::parse_fingerprint(&fp).unwrap()))
        .connect(&format!("latzero://opt@{}?pools=p", srv.addr))
        .await
        .unwrap();
    assert_eq!(opt.call("p", "echo", &json!(2)).await.unwrap(), json!(2));
    drop((worker, caller, local, opt));
    srv.stop().await;

    // The generated key is owner-only, and a restart keeps the same certificate.
    let mode = std::fs::metadata(dir.path().join("config").join(GENERATED_KEY))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let srv = Running::start(tls_config(dir.path())).await;
    assert_eq!(fingerprint(dir.path()), fp);
    srv.stop().await;
}

/// The server encrypts on whichever thread writes, and records the socket does not take at once
/// wait with rustls for the flusher: many large calls and replies in flight at once, and a
/// fan-out of emits beside them, all arrive whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_large_frames_in_flight_over_tls_all_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, url, worker) = echo_over_tls(dir.path()).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let receiver = once().connect(&url("rx")).await.unwrap();
    receiver
        .handle("ev", move |r: Request| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(r.data);
                Ok(json!(null))
            }
        })
        .await
        .unwrap();
    let caller = once().connect(&url("caller")).await.unwrap();
    let calls = (0..48).map(|i| {
        let caller = caller.clone();
        tokio::spawn(async move {
            // 1 MiB and up, each different, and small ones between them.
            let payload = if i % 2 == 0 {
                json!(format!("{i}:{}", "y".repeat((1 << 20) + i * 4099)))
            } else {
                json!(i)
            };
            let back = caller.call("p", "echo", &payload).await.unwrap();
            assert_eq!(back, payload, "call {i}");
        })
    });
    let calls: Vec<_> = calls.collect();
    for i in 0..2000 {
        caller.emit("p", "ev", &json!(i)).await.unwrap();
    }
    for c in calls {
        c.await.unwrap();
    }
    for i in 0..2000 {
        assert_eq!(rx.recv().await.unwrap(), json!(i));
    }
    drop((worker, receiver, caller));
    srv.stop().await;
}

/// A TLS peer that reads only once a burst is queued for it: the server's socket fills, the
/// records encrypted last wait with rustls, and still every frame arrives (the flusher writes
/// them; it does not take an empty queue for a written one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_for_a_tls_peer_that_reads_late_arrives_whole() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Running::start(tls_config(dir.path())).await;
    let cert = dir.path().join("config").join(latzero_server::GENERATED_CERT);
    for round in 0..3 {
        let mut rx = Raw::tls(srv.addr, &cert).await;
        rx.handshake(&format!("rx{round}"), &["p"], &["ev"]).await;
        let mut tx = Raw::unix(&srv.unix).await;
        tx.handshake(&format!("tx{round}"), &["p"], &[]).await;
        let blob = "z".repeat(60_000);
        let n = 300;
        for i in 0..n {
            tx.send(json!({"action":"emit","process":"ev","pool":"p","data":[i, blob]}))
                .await;
        }
        // Every emit is queued for rx once the ping is answered (frames are handled in order).
        assert_eq!(tx.sync().await, Vec::<serde_json::Value>::new());
        for i in 0..n {
            let e = rx.expect().await;
            assert_eq!(e["data"][0], i, "round {round}");
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn every_mismatch_fails_clearly_and_never_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tls_config(dir.path());
    cfg.limits.handshake_timeout = Duration::from_millis(300);
    let srv = Running::start(cfg).await;
    let fp = fingerprint(dir.path());

    // A plain raw client gets one plain TLS_REQUIRED frame, then end of stream.
    let mut raw = Raw::connect(srv.addr).await;
    raw.send(json!({"action":"handshake","id":1,"app_id":"plain","pools":[]}))
        .await;
    let e = raw.expect().await;
    assert_eq!(
        (e["action"].as_str(), e["code"].as_str()),
        (Some("error"), Some("TLS_REQUIRED")),
        "{e}"
    );
    assert!(raw.recv().await.is_none());
    // The SDK, plain, says the same.
    let e = once()
        .connect(&format!("latzero://plain@{}", srv.addr))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::TlsRequired), "{e}");

    // A wrong pin names both fingerprints.
    let wrong = "00".repeat(32);
    let e = once()
        .connect(&format!("latzeros://a@{}?fingerprint={wrong}", srv.addr))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Tls { reason, .. } if reason.contains(&fp) && reason.contains("pinned")),
        "{e}"
    );

    // A CA that did not sign the certificate.
    let other_ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let ca_file = dir.path().join("other-ca.pem");
    std::fs::write(&ca_file, other_ca.cert.pem()).unwrap();
    let e = once()
        .connect(&format!("latzeros://a@{}?ca={}", srv.addr, ca_file.display()))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Tls { .. }), "{e}");

    // A client that says nothing is closed after the handshake timeout.
    let mut silent = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(n.unwrap_or(0), 0);
    srv.stop().await;

    // TLS to a plain port: the handshake fails and says the port may not serve TLS.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = Running::start(config_in(plain_dir.path())).await;
    let e = once()
        .connect(&format!("latzeros://a@{}?fingerprint={fp}", plain.addr))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Tls { reason, .. } if reason.contains("--tls")),
        "{e}"
    );
    plain.stop().await;
}

#[tokio::test]
async fn a_configured_certificate_verifies_against_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    // A CA, and a server certificate it signs for 127.0.0.1.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let (cert, key, ca_file) = (
        dir.path().join("c.pem"),
        dir.path().join("k.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let mut cfg = tls_config(dir.path());
    cfg.tls.cert = Some(cert);
    cfg.tls.key = Some(key);
    let srv = Running::start(cfg).await;
    assert!(
        !dir.path().join("config").join(GENERATED_KEY).exists(),
        "nothing generated"
    );
    let c: Client = once()
        .connect(&format!("latzeros://a@{}?pools=p&ca={}", srv.addr, ca_file.display()))
        .await
        .unwrap();
    c.join("q").await.unwrap();
    // The certificate names 127.0.0.1, not localhost: a CA-verified client checks the name.
    let e = once()
        .connect(&format!(
            "latzeros://b@localhost:{}?ca={}",
            srv.addr.port(),
            ca_file.display()
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Tls { reason, .. } if reason.contains("not valid for name")),
        "{e}"
    );
    drop(c);
    srv.stop().await;
}

/// A TLS client that sends and never reads is held back (the server stops reading it), and the
/// server still stops in time: the bridge stuck writing to it is not waited for past the
/// shutdown grace.
#[tokio::test]
async fn a_tls_client_that_never_reads_does_not_hold_the_server() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tls_config(dir.path());
    cfg.limits.outbound_queue_bytes = 64 * 1024;
    cfg.unix_send_buffer = 16 * 1024;
    cfg.shutdown_grace = Duration::from_millis(500);
    let srv = Running::start(cfg).await;
    let cert = dir.path().join("config").join(latzero_server::GENERATED_CERT);
    let mut tls = common::tls_to(srv.addr, &cert).await;
    let ping = latzero_proto::frame::encode_json(json!({"action":"ping","id":"x".repeat(200)}).to_string().as_bytes());
    let burst: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 100).collect();
    loop {
        match tokio::time::timeout(Duration::from_millis(500), tls.write_all(&burst)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the server closed first: {e}"),
            Err(_) => break,
        }
    }
    tokio::time::timeout(Duration::from_secs(10), srv.stop())
        .await
        .expect("the server stops in time");
}
