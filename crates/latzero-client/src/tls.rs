//! TLS to the server's TCP port (`latzeros://`, or [`ClientOptions::tls`](crate::ClientOptions::tls)):
//! verifying the server either by a chain to a CA file or by the SHA-256 of its certificate
//! (pinning, for the server's generated self-signed certificate).

use std::sync::Arc;

use latzero_proto::{TlsVerify, format_fingerprint};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::ClientError;

/// Accepts exactly the certificate whose SHA-256 is pinned, and checks the handshake's
/// signatures with it. Names and expiry are not checked: the pin is the identity.
#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate has fingerprint {}, not the pinned {}",
                format_fingerprint(&got),
                format_fingerprint(&self.sha256)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn failed(endpoint: &str, reason: impl Into<String>) -> ClientError {
    ClientError::Tls {
        endpoint: endpoint.to_owned(),
        reason: reason.into(),
    }
}

fn config(verify: &TlsVerify, endpoint: &str) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(endpoint, e.to_string()))?;
    Ok(match verify {
        TlsVerify::Fingerprint(sha256) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                sha256: *sha256,
                algorithms,
            }))
            .with_no_client_auth(),
        TlsVerify::Ca(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| failed(endpoint, format!("cannot read the CA file {}: {e}", path.display())))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| failed(endpoint, format!("the CA file {} is not usable: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(failed(
                    endpoint,
                    format!("the CA file {} holds no certificate", path.display()),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    })
}

/// Runs the TLS handshake over `tcp` to `addr` (`host:port`).
pub(crate) async fn connect(
    tcp: TcpStream,
    addr: &str,
    verify: &TlsVerify,
) -> Result<TlsStream<TcpStream>, ClientError> {
    let endpoint = format!("tls://{addr}");
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| failed(&endpoint, format!("'{host}' is not a valid server name: {e}")))?;
    let connector = TlsConnector::from(Arc::new(config(verify, &endpoint)?));
    connector.connect(name, tcp).await.map_err(|e| {
        let mut reason = e.to_string();
        if reason.contains("corrupt message") || reason.contains("InvalidContentType") {
            reason.push_str("; the server does not seem to serve TLS on this port (is it started with --tls?)");
        }
        failed(&endpoint, reason)
    })
}
