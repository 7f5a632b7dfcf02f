//! The metrics port: `/metrics` in Prometheus's text format with the calls just made counted
//! and timed, `/healthz` turning 503 when a check fails, HTTP errors for anything else, and
//! admin credentials with `--require-auth`.

mod common;

use std::time::Duration;

use common::{Raw, Running, config_in};
use latzero_client::{Client, Request};
use latzero_server::{AuthConfig, token_sha256};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` as it is and returns (status line, headers, body) of the answer.
async fn http(addr: std::net::SocketAddr, request: &[u8]) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_lowercase(), body.to_owned())
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String, String) {
    http(addr, format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await
}

/// The value of the sample line `name value`.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_and_time_calls_and_healthz_tells_a_failed_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.metrics_port = Some(0);
    cfg.limits.handshake_timeout = Duration::from_millis(300);
    let s = Running::start(cfg).await;
    let m = s.metrics.expect("a metrics port");
    let url = |app: &str| format!("latzero://{app}?socket={}&pools=p", s.unix.display());
    let worker = Client::connect(&url("worker")).await.unwrap();
    worker
        .handle("echo", |r: Request| async move { Ok(r.data) })
        .await
        .unwrap();
    let caller = Client::connect(&url("caller")).await.unwrap();
    for i in 0..25 {
        assert_eq!(caller.call("p", "echo", &json!(i)).await.unwrap(), json!(i));
    }

    let (status, headers, body) = get(m, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("content-type: text/plain; version=0.0.4"), "{headers}");
    assert_eq!(sample(&body, "latzero_calls_ok_total"), Some(25.0), "{body}");
    assert_eq!(sample(&body, "latzero_calls_total"), Some(25.0), "{body}");
    assert_eq!(sample(&body, "latzero_connections"), Some(2.0), "{body}");
    assert_eq!(sample(&body, "latzero_apps_connected"), Some(2.0), "{body}");
    assert_eq!(
        sample(&body, "latzero_call_duration_seconds_count"),
        Some(25.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "latzero_call_duration_seconds_bucket{le=\"+Inf\"}"),
        Some(25.0),
        "{body}"
    );
    let sum = sample(&body, "latzero_call_duration_seconds_sum").unwrap();
    assert!(sum > 0.0 && sum < 25.0, "{body}");
    assert!(body.contains("# HELP latzero_calls_ok_total Calls answered by a handler with status ok."));
    assert!(body.contains("# TYPE latzero_call_duration_seconds histogram"));

    let (status, headers, body) = get(m, "/healthz").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(headers.contains("application/json"), "{headers}");
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["healthy"], true, "{h}");

    // The volatile directory gone: its check fails, and the probe sees 503.
    let mut admin = Raw::connect(s.addr).await;
    let st = admin.ask(json!({"action":"status","id":1})).await;
    std::fs::remove_dir_all(st["memory"]["volatile_dir"].as_str().unwrap()).unwrap();
    let (status, _, body) = get(m, "/healthz").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    let h: Value = serde_json::from_str(&body).unwrap();
    let failed: Vec<&Value> = h["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{h}");
    assert_eq!(failed[0]["name"], "volatile_dir", "{h}");

    // Anything else is an HTTP error, not a hang or a dropped connection.
    let (status, ..) = http(m, b"POST /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    let (status, ..) = get(m, "/elsewhere").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, ..) = http(m, b"GET /healthz HTTP/1.1\r\norigin: http://evil.example\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden", "a web page's request");
    let (status, ..) = http(m, b"\x01\x02 not http\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    let many: String = (0..40).map(|i| format!("x-{i}: y\r\n")).collect();
    let (status, ..) = http(m, format!("GET /metrics HTTP/1.1\r\n{many}\r\n").as_bytes()).await;
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large", "40 headers");
    let long = format!("GET /metrics HTTP/1.1\r\nx-pad: {}\r\n\r\n", "a".repeat(9000));
    let (status, ..) = http(m, long.as_bytes()).await;
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    // A connection that sends half a head and waits gets 408 in the handshake timeout.
    let (status, ..) = http(m, b"GET /metrics HTTP/1.1\r\n").await;
    assert_eq!(status, "HTTP/1.1 408 Request Timeout");
    s.stop().await;
}

#[tokio::test]
async fn with_auth_the_metrics_port_needs_an_admin_credential() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.metrics_port = Some(0);
    cfg.auth = AuthConfig {
        required: true,
        token_sha256: vec![token_sha256("good-token")],
        jwt_hs256_secret: Some(b"jwt-secret".to_vec()),
        jwt_ed25519_public_pem: None,
    };
    let s = Running::start(cfg).await;
    let m = s.metrics.unwrap();
    let (status, _, body) = get(m, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let with = |cred: &str, path: &str| format!("GET {path} HTTP/1.1\r\nauthorization: Bearer {cred}\r\n\r\n");
    let (status, ..) = http(m, with("wrong-token", "/healthz").as_bytes()).await;
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    let (status, _, body) = http(m, with("good-token", "/metrics").as_bytes()).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("latzero_connections 0"), "{body}");
    let app_jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"app_id": "w", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"jwt-secret"),
    )
    .unwrap();
    let (status, _, body) = http(m, with(&app_jwt, "/healthz").as_bytes()).await;
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    assert!(
        body.contains("admin"),
        "an app's credential is not an admin one: {body}"
    );
    s.stop().await;
}
