//! The `latzero://` URL.
//!
//! ```text
//! latzero://APP_ID                                  default endpoint
//! latzero://APP_ID@HOST:PORT                        TCP
//! latzero://APP_ID?socket=/path/to/latzero.sock     Unix domain socket
//! latzero://APP_ID?pools=alpha,beta                 pools to join at handshake
//! latzeros://APP_ID@HOST:PORT?fingerprint=SHA256    TLS, pinning the server certificate
//! latzeros://APP_ID@HOST:PORT?ca=/path/ca.pem       TLS, verifying against a CA
//! ```
//!
//! Query parameters may be combined (`?socket=...&pools=...`). With no host and no socket, a
//! client uses the Unix socket of the default data directory when it exists and TCP
//! 127.0.0.1:45227 otherwise. `latzeros://` is TCP only (default 127.0.0.1:45227) and needs
//! exactly one of `fingerprint` (the SHA-256 of the server's certificate, hex, colons allowed,
//! as the server prints it at start) or `ca`.

use std::fmt;
use std::path::PathBuf;

use crate::name::{AppId, NameError, PoolName};
use crate::{DEFAULT_HOST, DEFAULT_PORT};

/// Where a client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The client picks: the default data dir's Unix socket if present, else default TCP.
    Default,
    /// A TCP address, `host:port`.
    Tcp(String),
    /// A Unix domain socket path.
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Default => f.write_str("default endpoint"),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// How a TLS client verifies the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsVerify {
    /// A chain to a CA certificate in this PEM file, for the host's name or IP address.
    Ca(PathBuf),
    /// Exactly this certificate: the SHA-256 of its DER encoding.
    Fingerprint([u8; 32]),
}

/// Formats a certificate fingerprint as the server prints it: uppercase hex pairs joined by
/// colons (as `openssl x509 -fingerprint -sha256` does).
pub fn format_fingerprint(sha256: &[u8; 32]) -> String {
    let hex: Vec<String> = sha256.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// Parses a SHA-256 fingerprint: 64 hex digits, case-insensitive, colons and an optional
/// `sha256:` prefix allowed.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], UrlError> {
    let bad = || UrlError::Fingerprint(s.to_owned());
    let t = s.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .unwrap_or(t);
    let hex: Vec<u8> = t.bytes().filter(|b| *b != b':').collect();
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A parsed `latzero://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatzeroUrl {
    /// The app id.
    pub app_id: AppId,
    /// Where to connect.
    pub endpoint: Endpoint,
    /// Pools to join at handshake.
    pub pools: Vec<PoolName>,
    /// `latzeros://`: connect over TLS, verifying the server this way.
    pub tls: Option<TlsVerify>,
}

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not a `latzero://` URL.
    #[error("'{0}' is not a latzero URL; expected latzero://APP_ID[@HOST:PORT][?socket=PATH&pools=A,B]")]
    Scheme(String),
    /// `latzeros://` without a way to verify the server.
    #[error("latzeros:// needs ?fingerprint=SHA256 (printed by the server at start) or ?ca=PATH to verify the server")]
    TlsVerifyMissing,
    /// `latzeros://` with a Unix socket, or TLS parameters on `latzero://`.
    #[error("{0}")]
    TlsMisuse(&'static str),
    /// A fingerprint that is not 64 hex digits.
    #[error("'{0}' is not a SHA-256 fingerprint (64 hex digits, colons allowed)")]
    Fingerprint(String),
    /// The app id or a pool name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A port that is not a number.
    #[error("'{0}' is not a valid HOST:PORT")]
    Address(String),
    /// Both a host and a socket were given.
    #[error("give either @HOST:PORT or ?socket=PATH, not both")]
    Conflict,
    /// A query parameter this URL does not know.
    #[error("unknown URL parameter '{0}'; known: socket, pools, fingerprint, ca")]
    UnknownParam(String),
}

impl std::str::FromStr for LatzeroUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        let (secure, rest) = match (s.strip_prefix("latzeros://"), s.strip_prefix("latzero://")) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            (None, None) => return Err(UrlError::Scheme(s.to_owned())),
        };
        let (main, query) = match rest.split_once('?') {
            Some((m, q)) => (m, Some(q)),
            None => (rest, None),
        };
        let main = main.trim_end_matches('/');
        let (app, host) = match main.split_once('@') {
            Some((a, h)) => (a, Some(h)),
            None => (main, None),
        };
        let app_id = AppId::try_from(app)?;
        let mut endpoint = match host {
            None | Some("") => Endpoint::Default,
            Some(h) => {
                let port_ok = h
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !port_ok {
                    return Err(UrlError::Address(h.to_owned()));
                }
                Endpoint::Tcp(h.to_owned())
            }
        };
        let mut pools = Vec::new();
        let mut tls = None;
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "socket" => {
                    if endpoint != Endpoint::Default {
                        return Err(UrlError::Conflict);
                    }
                    endpoint = Endpoint::Unix(PathBuf::from(&*v));
                }
                "pools" | "pool" => {
                    for p in v.split(',').filter(|p| !p.is_empty()) {
                        pools.push(PoolName::try_from(p)?);
                    }
                }
                "fingerprint" | "ca" if !secure => {
                    return Err(UrlError::TlsMisuse("fingerprint and ca are for latzeros:// (TLS) URLs"));
                }
                "fingerprint" | "ca" if tls.is_some() => {
                    return Err(UrlError::TlsMisuse("give one of fingerprint and ca, once"));
                }
                "fingerprint" => tls = Some(TlsVerify::Fingerprint(parse_fingerprint(&v)?)),
                "ca" => tls = Some(TlsVerify::Ca(PathBuf::from(&*v))),
                other => return Err(UrlError::UnknownParam(other.to_owned())),
            }
        }
        if secure {
            match endpoint {
                Endpoint::Unix(_) => {
                    return Err(UrlError::TlsMisuse(
                        "latzeros:// is TLS over TCP; the Unix socket is local and owner-only, use latzero://",
                    ));
                }
                Endpoint::Default => endpoint = Endpoint::Tcp(format!("{DEFAULT_HOST}:{DEFAULT_PORT}")),
                Endpoint::Tcp(_) => {}
            }
            if tls.is_none() {
                return Err(UrlError::TlsVerifyMissing);
            }
        }
        Ok(LatzeroUrl {
            app_id,
            endpoint,
            pools,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let u: LatzeroUrl = "latzero://myApp".parse().unwrap();
        assert_eq!(u.app_id.as_str(), "myApp");
        assert_eq!(u.endpoint, Endpoint::Default);
        let u: LatzeroUrl = "latzero://myApp@127.0.0.1:45227".parse().unwrap();
        assert_eq!(u.endpoint, Endpoint::Tcp("127.0.0.1:45227".into()));
        let u: LatzeroUrl = "latzero://a?socket=/tmp/x%20y.sock&pools=alpha,beta".parse().unwrap();
        assert_eq!(u.endpoint, Endpoint::Unix("/tmp/x y.sock".into()));
        assert_eq!(u.pools.len(), 2);
        let fp = format_fingerprint(&[0xab; 32]);
        let u: LatzeroUrl = format!("latzeros://a?fingerprint={fp}").parse().unwrap();
        assert_eq!(u.endpoint, Endpoint::Tcp(format!("{DEFAULT_HOST}:{DEFAULT_PORT}")));
        assert_eq!(u.tls, Some(TlsVerify::Fingerprint([0xab; 32])));
        assert_eq!(parse_fingerprint(&"AB".repeat(32)), Ok([0xab; 32]));
        let u: LatzeroUrl = "latzeros://a@h:1?ca=/etc/ca.pem".parse().unwrap();
        assert_eq!(u.tls, Some(TlsVerify::Ca("/etc/ca.pem".into())));
    }

    #[test]
    fn refuses_bad_urls_clearly() {
        assert!(matches!("http://x".parse::<LatzeroUrl>(), Err(UrlError::Scheme(_))));
        assert!(matches!(
            "latzeros://x".parse::<LatzeroUrl>(),
            Err(UrlError::TlsVerifyMissing)
        ));
        assert!(matches!(
            "latzeros://x?socket=/s&ca=/c".parse::<LatzeroUrl>(),
            Err(UrlError::TlsMisuse(_))
        ));
        assert!(matches!(
            "latzero://x?ca=/c".parse::<LatzeroUrl>(),
            Err(UrlError::TlsMisuse(_))
        ));
        assert!(matches!(
            "latzeros://x?fingerprint=abc".parse::<LatzeroUrl>(),
            Err(UrlError::Fingerprint(_))
        ));
        assert!(matches!("latzero://a b".parse::<LatzeroUrl>(), Err(UrlError::Name(_))));
        assert!(matches!(
            "latzero://a@host".parse::<LatzeroUrl>(),
            Err(UrlError::Address(_))
        ));
        assert!(matches!(
            "latzero://a@h:1?socket=/x".parse::<LatzeroUrl>(),
            Err(UrlError::Conflict)
        ));
        assert!(matches!(
            "latzero://a?x=1".parse::<LatzeroUrl>(),
            Err(UrlError::UnknownParam(_))
        ));
    }
}
