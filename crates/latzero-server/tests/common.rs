//! Shared helpers: an in-process server on 127.0.0.1:0 with a temp data dir, and a raw
//! frame-level client for exact wire assertions.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use latzero_proto::frame::{Frame, FrameCodec, encode_json};
use latzero_server::{Limits, Server, ServerConfig};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::codec::Decoder;

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub unix: PathBuf,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::with_limits(Limits::default()).await
    }

    pub async fn with_limits(limits: Limits) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config_in(dir.path());
        cfg.limits = limits;
        let r = Running::start(cfg).await;
        TestServer {
            addr: r.addr,
            unix: r.unix,
            dir,
            stop: Some(r.stop),
            task: Some(r.task),
        }
    }

    /// `latzero://APP@HOST:PORT[?QUERY]` from "APP[?QUERY]".
    pub fn url(&self, app_query: &str) -> String {
        let (app, q) = app_query.split_once('?').unwrap_or((app_query, ""));
        let q = if q.is_empty() { String::new() } else { format!("?{q}") };
        format!("latzero://{app}@{}{q}", self.addr)
    }

    /// `latzero://APP?socket=PATH[&QUERY]` from "APP[?QUERY]".
    pub fn unix_url(&self, app_query: &str) -> String {
        let (app, q) = app_query.split_once('?').unwrap_or((app_query, ""));
        let q = if q.is_empty() { String::new() } else { format!("&{q}") };
        format!("latzero://{app}?socket={}{q}", self.unix.display())
    }

    pub async fn raw(&self) -> Raw {
        Raw::connect(self.addr).await
    }

    /// Shuts down and waits for `run` to return.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

/// A config for a server on `dir` (which outlives it, for restart tests): a free port, and
/// non-persistent blocks in `dir` too, so a test that ends without stopping its server leaves
/// nothing in /dev/shm.
pub fn config_in(dir: &std::path::Path) -> ServerConfig {
    let mut cfg = ServerConfig::new(dir);
    cfg.port = 0;
    cfg.memory.volatile_dir = Some(dir.to_path_buf());
    cfg.shutdown_grace = Duration::from_secs(2);
    cfg
}

/// A server running in this process until [`Running::stop`].
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub unix: PathBuf,
    /// The WebSocket port's address, when the config asked for one.
    pub ws: Option<std::net::SocketAddr>,
    /// The metrics port's address, when the config asked for one.
    pub metrics: Option<std::net::SocketAddr>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn start(cfg: ServerConfig) -> Running {
        let server = Server::bind(cfg).await.unwrap();
        let addr = server.local_addr();
        let unix = server.unix_path().unwrap().to_path_buf();
        let ws = server.ws_addr();
        let metrics = server.metrics_addr();
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Running {
            addr,
            unix,
            ws,
            metrics,
            stop,
            task,
        }
    }

    /// Shuts down and waits for `run` to return.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// Any byte stream a raw client can speak over: TCP, a Unix socket, TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A raw protocol client: writes frames, reads frames, nothing else.
pub struct Raw {
    stream: Box<dyn Io>,
    buf: bytes::BytesMut,
    codec: FrameCodec,
}

impl Raw {
    /// Over TCP.
    pub async fn connect(addr: std::net::SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Raw::over(stream)
    }

    /// Over the server's Unix socket.
    pub async fn unix(path: &std::path::Path) -> Raw {
        Raw::over(tokio::net::UnixStream::connect(path).await.unwrap())
    }

    /// Over TLS to a server whose certificate (`cert`, a PEM file: the generated self-signed
    /// one names 127.0.0.1) is trusted as it is.
    pub async fn tls(addr: std::net::SocketAddr, cert: &std::path::Path) -> Raw {
        Raw::over(tls_to(addr, cert).await)
    }

    fn over(stream: impl Io + 'static) -> Raw {
        Raw {
            stream: Box::new(stream),
            buf: bytes::BytesMut::new(),
            codec: FrameCodec::default(),
        }
    }

    pub async fn send_text(&mut self, json: &str) {
        self.stream.write_all(&encode_json(json.as_bytes())).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// The next frame as JSON; `None` at end of stream. Fails the test after 10 s.
    pub async fn recv(&mut self) -> Option<Value> {
        let f = self.recv_frame().await?;
        let Frame::Json(b) = f else {
            panic!("unexpected binary frame")
        };
        Some(serde_json::from_slice(&b).unwrap())
    }

    /// The next frame, JSON or binary; `None` at end of stream. Fails the test after 10 s.
    pub async fn recv_frame(&mut self) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(f) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(f);
                }
                if self.stream.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("no frame within 10 s")
    }

    /// The next frame as a binary frame: its JSON header and its body.
    pub async fn expect_binary(&mut self) -> (Value, bytes::Bytes) {
        match self.recv_frame().await.expect("connection closed") {
            Frame::Binary { header, body } => (serde_json::from_slice(&header).unwrap(), body),
            Frame::Json(b) => panic!("expected a binary frame, got {}", String::from_utf8_lossy(&b)),
        }
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, header: Value, body: &[u8]) {
        let frame = latzero_proto::frame::encode_binary(header.to_string().as_bytes(), body);
        self.stream.write_all(&frame).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Sends a request and returns the next frame, which must answer it.
    pub async fn ask(&mut self, v: Value) -> Value {
        let id = v["id"].clone();
        self.send(v).await;
        let r = self.expect().await;
        assert_eq!(r["in_reply_to"], id, "{r}");
        r
    }

    pub async fn expect(&mut self) -> Value {
        self.recv().await.expect("connection closed")
    }

    /// Sends a handshake and returns the ack.
    pub async fn handshake(&mut self, app: &str, pools: &[&str], triggers: &[&str]) -> Value {
        self.send(serde_json::json!({"action":"handshake","app_id":app,"pools":pools,"triggers":triggers}))
            .await;
        let ack = self.expect().await;
        assert_eq!(ack["action"], "handshake_ack", "{ack}");
        ack
    }

    /// A ping round trip: everything the server queued before the pong has been read.
    pub async fn sync(&mut self) -> Vec<Value> {
        self.send(serde_json::json!({"action":"ping","id":"sync"})).await;
        let mut before = vec![];
        loop {
            let f = self.expect().await;
            if f["action"] == "pong" && f["in_reply_to"] == "sync" {
                return before;
            }
            before.push(f);
        }
    }
}

/// A TLS stream to `addr`, trusting the certificate `cert` (a PEM file: the generated
/// self-signed one names 127.0.0.1) as it is.
pub async fn tls_to(addr: std::net::SocketAddr, cert: &std::path::Path) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(cert).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}
