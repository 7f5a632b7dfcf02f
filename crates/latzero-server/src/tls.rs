//! TLS on the TCP port (`--tls`): the certificate (given, or self-signed and generated on first
//! start into `config/`), its fingerprint, and accepting TLS connections.
//!
//! A TLS connection is terminated here and its plaintext bridged to the session over a Unix
//! socket pair, so the session's writers keep their non-blocking `try_write` path (docs of
//! `session::conn`) unchanged; the bridge costs one extra local hop per direction, paid only by
//! TLS connections. A connection whose first byte is not a TLS handshake record gets one plain
//! `TLS_REQUIRED` error frame and is closed, so a plain client sees why instead of hanging.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use latzero_proto::frame::encode_message;
use latzero_proto::message::ErrorFrame;
use latzero_proto::{ErrorCode, format_fingerprint};
use latzero_uds::UdsStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::datadir::write_atomic;
use crate::error::ServerError;
use crate::server::State;

/// The generated certificate and key, in `<data_dir>/config/`.
pub const GENERATED_CERT: &str = "tls-cert.pem";
/// See [`GENERATED_CERT`].
pub const GENERATED_KEY: &str = "tls-key.pem";

/// Bytes the bridge moves per read.
const BRIDGE_BUFFER: usize = 64 * 1024;

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
pub(crate) async fn serve(state: Arc<State>, tls: Tls, mut tcp: TcpStream, peer: String, tracker: TaskTracker) {
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
    crate::transport::run_bridged(state, peer, &tracker, "TLS", |near| bridge(stream, near)).await;
}

/// Moves bytes between the TLS stream and the session's socket until the session ends (its
/// socket reaches end of stream; the peer then gets close_notify), or the peer closes (the
/// session then reads end of stream, and ends).
async fn bridge(tls: tokio_rustls::server::TlsStream<TcpStream>, near: UdsStream) {
    let (tr, mut tw) = tokio::io::split(tls);
    let (nr, mut nw) = near.into_split();
    let down = async {
        let _ = tokio::io::copy_buf(&mut BufReader::with_capacity(BRIDGE_BUFFER, nr), &mut tw).await;
        let _ = tw.shutdown().await;
    };
    let up = async {
        let _ = tokio::io::copy_buf(&mut BufReader::with_capacity(BRIDGE_BUFFER, tr), &mut nw).await;
        let _ = nw.shutdown().await;
    };
    tokio::pin!(down, up);
    tokio::select! {
        () = &mut down => {}
        () = &mut up => down.await,
    }
}
