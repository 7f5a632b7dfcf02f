//! The `latzero://` URL.
//!
//! ```text
//! latzero://APP_ID                                  default endpoint
//! latzero://APP_ID@HOST:PORT                        TCP
//! latzero://APP_ID?socket=/path/to/latzero.sock     Unix domain socket
//! latzero://APP_ID?pools=alpha,beta                 pools to join at handshake
//! ```
//!
//! Query parameters may be combined (`?socket=...&pools=...`). With no host and no socket, a
//! client uses the Unix socket of the default data directory when it exists and TCP
//! 127.0.0.1:45227 otherwise. `latzeros://` is reserved for TLS (a later release).

use std::fmt;
use std::path::PathBuf;

use crate::name::{AppId, NameError, PoolName};

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

/// A parsed `latzero://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatzeroUrl {
    /// The app id.
    pub app_id: AppId,
    /// Where to connect.
    pub endpoint: Endpoint,
    /// Pools to join at handshake.
    pub pools: Vec<PoolName>,
}

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not a `latzero://` URL.
    #[error("'{0}' is not a latzero URL; expected latzero://APP_ID[@HOST:PORT][?socket=PATH&pools=A,B]")]
    Scheme(String),
    /// `latzeros://` needs TLS, which this release does not have.
    #[error("latzeros:// (TLS) is not available yet; use latzero://")]
    TlsNotAvailable,
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
    #[error("unknown URL parameter '{0}'; known: socket, pools")]
    UnknownParam(String),
}

impl std::str::FromStr for LatzeroUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        if s.starts_with("latzeros://") {
            return Err(UrlError::TlsNotAvailable);
        }
        let rest = s
            .strip_prefix("latzero://")
            .ok_or_else(|| UrlError::Scheme(s.to_owned()))?;
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
                other => return Err(UrlError::UnknownParam(other.to_owned())),
            }
        }
        Ok(LatzeroUrl {
            app_id,
            endpoint,
            pools,
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
    }

    #[test]
    fn refuses_bad_urls_clearly() {
        assert!(matches!("http://x".parse::<LatzeroUrl>(), Err(UrlError::Scheme(_))));
        assert!(matches!(
            "latzeros://x".parse::<LatzeroUrl>(),
            Err(UrlError::TlsNotAvailable)
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
