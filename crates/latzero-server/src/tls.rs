//! TLS on the TCP port (`--tls`): the certificate (given, or self-signed and generated on first
//! start into `config/`), its fingerprint, and accepting TLS connections.
//!
//! After the TLS handshake (tokio-rustls), the session runs on the connection itself: its
//! reader decrypts what the socket brings ([`TlsRead`]), and the frames written to it are
//! encrypted by whichever thread writes them, with the same non-blocking `try_write` a plain
//! socket has ([`TlsWrite`], `session::conn::Sock::Tls`). One rustls connection under a mutex
//! serves both sides. (Until 2026-11-24 the plaintext went to the session over a Unix socket
//! pair and a bridge task: a hop more each way, docs/BENCHMARKS.md.) A connection whose first
//! byte is not a TLS handshake record gets one plain `TLS_REQUIRED` error frame and is closed,
//! so a plain client sees why instead of hanging.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use latzero_proto::frame::encode_message;
use latzero_proto::message::ErrorFrame;
use latzero_proto::{ErrorCode, format_fingerprint};
use rustls::ServerConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::datadir::write_atomic;
use crate::error::ServerError;
use crate::server::State;
use crate::session::conn::Sock;

/// The generated certificate and key, in `<data_dir>/config/`.
pub const GENERATED_CERT: &str = "tls-cert.pem";
/// See [`GENERATED_CERT`].
pub const GENERATED_KEY: &str = "tls-key.pem";

/// TLS settings.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// Serve TLS on the TCP port.
    pub enabled: bool,
    /// The certificate chain (PEM); with `key`. Neither: generate a self-signed one.
    pub cert: Option<PathBuf>,
    /// The private key (PEM).
    pub key: Option<PathBuf>,
}

/// A loaded certificate, ready to accept connections.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) acceptor: TlsAcceptor,
    /// SHA-256 of the leaf certificate, as printed.
    pub fingerprint: String,
    /// Where the certificate came from (for the start-up line).
    pub cert_path: PathBuf,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("fingerprint", &self.fingerprint).finish()
    }
}

fn tls_err(what: impl std::fmt::Display) -> ServerError {
    ServerError::Tls(what.to_string())
}

impl Tls {
    /// Loads the configured certificate, or the generated one (creating it on first start).
    pub fn load(cfg: &TlsConfig, config_dir: &Path, host: &str) -> Result<Tls, ServerError> {
        let (cert_path, key_path) = match (&cfg.cert, &cfg.key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            (None, None) => {
                let (c, k) = (config_dir.join(GENERATED_CERT), config_dir.join(GENERATED_KEY));
                if !c.exists() || !k.exists() {
                    generate(&c, &k, host)?;
                }
                (c, k)
            }
            _ => {
                return Err(tls_err(
                    "give both --tls-cert and --tls-key, or neither to use a generated certificate",
                ));
            }
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| tls_err(format!("cannot read the certificate {}: {e}", cert_path.display())))?;
        let leaf = chain
            .first()
            .ok_or_else(|| tls_err(format!("{} holds no certificate", cert_path.display())))?;
        let fingerprint = format_fingerprint(&Sha256::digest(leaf.as_ref()).into());
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|e| tls_err(format!("cannot read the private key {}: {e}", key_path.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| tls_err(format!("the certificate and key do not make a usable pair: {e}")))?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            fingerprint,
            cert_path,
        })
    }
}

/// Writes a self-signed certificate for the local names (and `host`, if it names one machine).
fn generate(cert_path: &Path, key_path: &Path, host: &str) -> Result<(), ServerError> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if !["0.0.0.0", "::", ""].contains(&host) && !names.iter().any(|n| n == host) {
        names.push(host.to_owned());
    }
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| tls_err(format!("cannot generate a certificate: {e}")))?;
    write_atomic(key_path, ck.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(cert_path, ck.cert.pem().as_bytes(), 0o644)?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed TLS certificate");
    Ok(())
}

/// Serves one TCP connection over TLS: checks that it speaks TLS, completes the TLS handshake
/// within the handshake timeout, then runs the session on the plaintext.
pub(crate) async fn serve(state: Arc<State>, tls: Tls, mut tcp: TcpStream, peer: String) {
    let limit = state.config.limits.handshake_timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout(limit, tcp.peek(&mut first)).await {
        Ok(Ok(1..)) => {}
        _ => return,
    }
    if first[0] != 0x16 {
        tracing::info!(peer = %peer, "plain connection to the TLS port refused");
        let frame = encode_message(&ErrorFrame::new(
            None,
            ErrorCode::TlsRequired,
            "this port serves TLS; connect with latzeros://APP@HOST:PORT?fingerprint=... (the server prints its fingerprint at start) or use the Unix socket",
        ));
        let _ = tcp.write_all(&frame).await;
        let _ = tcp.shutdown().await;
        return;
    }
    let accepted = tls.acceptor.accept(tcp);
    let Some(stream) = crate::transport::within_handshake(&state, &peer, "TLS handshake", accepted).await else {
        return;
    };
    let (read, write) = split(stream);
    crate::session::run(state, read, Sock::Tls(write), peer).await;
}

/// An accepted TLS connection as its reading and its writing side (the WebSocket port runs its
/// framing on these with `--tls`).
pub(crate) fn split(stream: tokio_rustls::server::TlsStream<TcpStream>) -> (TlsRead, TlsWrite) {
    let (tcp, session) = stream.into_inner();
    let shared = Arc::new(Shared {
        tcp,
        session: Mutex::new(session),
    });
    (TlsRead(shared.clone()), TlsWrite(shared))
}

/// One TLS connection: the socket and the rustls state, which the reader and every writer share.
struct Shared {
    tcp: TcpStream,
    session: Mutex<ServerConnection>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The socket as rustls reads and writes it: without blocking (`WouldBlock` when it would).
struct Io<'a>(&'a TcpStream);

impl io::Read for Io<'_> {
    /// A read that drains the socket clears its readiness, so the read after it (rustls reads
    /// until `WouldBlock`) returns `WouldBlock` without a syscall.
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        crate::transport::try_read_draining(self.0, b)
    }
}

impl io::Write for Io<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.try_write(b)
    }
    /// rustls hands its records over as one slice each: written together, in one system call.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the TLS records rustls holds: `true` once none is left, `false` if the socket would
/// block first.
fn flush_records(s: &mut ServerConnection, tcp: &TcpStream) -> io::Result<bool> {
    while s.wants_write() {
        match s.write_tls(&mut Io(tcp)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The session's side of a TLS connection for reading: the plaintext rustls decrypted from what
/// the socket brought. The peer's close_notify, and a socket closed without one, read as end of
/// stream.
pub(crate) struct TlsRead(Arc<Shared>);

impl AsyncRead for TlsRead {
    /// Fills `buf` with as much plaintext as rustls holds and the socket has ready now (a record
    /// carries at most 16 KiB; a whole socket's worth per read keeps the session's batches as
    /// large as on a plain socket), waiting only when there is none.
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let sh = &*self.0;
        let start = buf.filled().len();
        loop {
            {
                let mut s = sh.lock();
                loop {
                    let mut plain = s.reader();
                    match plain.fill_buf() {
                        // The peer closed cleanly: end of stream once what came before is read.
                        Ok([]) => return Poll::Ready(Ok(())),
                        Ok(chunk) => {
                            let n = chunk.len().min(buf.remaining());
                            buf.put_slice(&chunk[..n]);
                            plain.consume(n);
                            if buf.remaining() == 0 {
                                return Poll::Ready(Ok(()));
                            }
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(())),
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    match s.read_tls(&mut Io(&sh.tcp)) {
                        // End of the socket: rustls notes it, and the next look says so.
                        Ok(0) => {}
                        Ok(_) => {
                            let processed = s.process_new_packets();
                            // An alert for a bad record, or the answer to a key update: what the
                            // socket does not take now goes out with the next frame written.
                            let _ = flush_records(&mut s, &sh.tcp);
                            if let Err(e) = processed {
                                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
            if buf.filled().len() > start {
                return Poll::Ready(Ok(()));
            }
            // Nothing to read: wait for the socket (its readiness was cleared by the
            // `WouldBlock` above, so this registers the waker).
            ready!(sh.tcp.poll_read_ready(cx))?;
        }
    }
}

/// The session's side of a TLS connection for writing (`Sock::Tls`): plaintext in, encrypted
/// and written without blocking by the thread that writes it.
pub(crate) struct TlsWrite(Arc<Shared>);

impl std::fmt::Debug for TlsWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsWrite")
    }
}

impl TlsWrite {
    /// Takes up to `b.len()` bytes of plaintext as a socket write does: encrypts what rustls's
    /// buffer takes and writes it, `WouldBlock` when records written before are still waiting
    /// for the socket. Records that the socket did not take stay with rustls:
    /// [`pending`](Self::pending) says so, and [`flush_pending`](Self::flush_pending) writes them.
    pub(crate) fn try_write(&self, b: &[u8]) -> io::Result<usize> {
        self.try_write_vectored(&[io::IoSlice::new(b)])
    }

    /// [`try_write`](Self::try_write) for plaintext in pieces, taken in order as one.
    pub(crate) fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut s = self.0.lock();
        if !flush_records(&mut s, &self.0.tcp)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = s.writer().write_vectored(bufs)?;
        flush_records(&mut s, &self.0.tcp)?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Whether encrypted records are waiting for the socket.
    pub(crate) fn pending(&self) -> bool {
        self.0.lock().wants_write()
    }

    /// Writes the records waiting for the socket: `true` once none is left.
    pub(crate) fn flush_pending(&self) -> io::Result<bool> {
        flush_records(&mut self.0.lock(), &self.0.tcp)
    }

    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.0.tcp.writable().await
    }

    /// [`writable`](Self::writable) as a poll, which keeps one waker (the reading task's).
    pub(crate) fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.tcp.poll_write_ready(cx)
    }

    /// Sends close_notify (as far as the socket takes it now), then shuts the write side down.
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        {
            let mut s = self.0.lock();
            s.send_close_notify();
            let _ = flush_records(&mut s, &self.0.tcp);
        }
        socket2::SockRef::from(&self.0.tcp).shutdown(std::net::Shutdown::Write)
    }

    /// Ends reading: the session's read sees end of stream.
    pub(crate) fn shutdown_read(&self) -> io::Result<()> {
        socket2::SockRef::from(&self.0.tcp).shutdown(std::net::Shutdown::Read)
    }
}
