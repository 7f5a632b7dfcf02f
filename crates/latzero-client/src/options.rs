//! Client options (a builder).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::client::Client;
use crate::error::ClientError;

/// A credential for servers started with `--require-auth`.
#[derive(Clone)]
pub(crate) enum Credential {
    Token(String),
    Jwt(String),
    /// Asked for a JWT at every handshake, the first and each after a reconnect.
    JwtSource(Arc<dyn Fn() -> String + Send + Sync>),
}

impl Credential {
    /// The environment's: `LATZERO_TOKEN` (a static token), else `LATZERO_JWT`; `None` when
    /// neither is set.
    pub(crate) fn from_env() -> Option<Credential> {
        let var = |name: &str| {
            std::env::var_os(name)
                .and_then(|t| t.into_string().ok())
                .filter(|t| !t.is_empty())
        };
        var("LATZERO_TOKEN")
            .map(Credential::Token)
            .or_else(|| var("LATZERO_JWT").map(Credential::Jwt))
    }

    /// The handshake's `auth` object.
    pub(crate) fn to_json(&self) -> Value {
        match self {
            Credential::Token(t) => serde_json::json!({ "token": t }),
            Credential::Jwt(j) => serde_json::json!({ "jwt": j }),
            Credential::JwtSource(f) => serde_json::json!({ "jwt": f() }),
        }
    }
}

/// Never the secret itself: options end up in logs.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Token(_) => "Token(<redacted>)",
            Credential::Jwt(_) => "Jwt(<redacted>)",
            Credential::JwtSource(_) => "JwtSource(<fn>)",
        })
    }
}

/// How a client connects and behaves. Build with [`ClientOptions::new`], then
/// [`connect`](ClientOptions::connect).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Set by [`ClientOptions::request_timeout`]; `None` is [`DEFAULT_REQUEST_TIMEOUT`], which
    /// (unlike a timeout the user set) is cut to the server's max ttl.
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) reconnect: bool,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) takeover: bool,
    pub(crate) ephemeral: bool,
    pub(crate) auth: Option<Credential>,
    pub(crate) meta: Option<Value>,
    pub(crate) write_queue: usize,
    pub(crate) close_grace: Duration,
    pub(crate) max_frame_len: Option<usize>,
    pub(crate) triggers: Vec<String>,
    pub(crate) tls: Option<latzero_proto::TlsVerify>,
    pub(crate) spin: Duration,
}

/// `d` in whole milliseconds, the wire's unit, rounded up (so that a sub-millisecond wait is
/// not sent as none at all).
pub(crate) fn whole_ms(d: Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000).min(u128::from(u64::MAX)) as u64
}

/// A call's timeout (or a lock's lease) as the wire carries it: [`whole_ms`], at least 1 (the
/// server refuses a `ttl` of 0, and a sub-millisecond timeout would be sent as 0).
pub(crate) fn wire_ttl(d: Duration) -> Duration {
    Duration::from_millis(whole_ms(d).max(1))
}

/// The shortest first reconnect delay [`ClientOptions::backoff`] takes.
const MIN_BACKOFF: Duration = Duration::from_millis(1);

/// The default of [`ClientOptions::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The default of [`ClientOptions::close_grace`].
pub const DEFAULT_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The default of [`ClientOptions::spin`].
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: None,
            reconnect: true,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            takeover: false,
            ephemeral: false,
            auth: None,
            meta: None,
            write_queue: 8192,
            close_grace: DEFAULT_CLOSE_GRACE,
            max_frame_len: None,
            triggers: Vec::new(),
            tls: None,
            spin: DEFAULT_SPIN,
        }
    }
}

impl ClientOptions {
    /// Defaults: 30 s call timeout, reconnect on, backoff 50 ms to 5 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// The timeout of calls that name none (before the server's max ttl cuts the default).
    pub(crate) fn timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT)
    }

    /// Default timeout of calls (sent as `ttl`), rounded up to whole milliseconds (the wire's
    /// unit) and at least 1 ms. One longer than the server's `max_ttl_ms` is sent as it is, and
    /// the server refuses each call with `INVALID_MESSAGE`; left unset, the 30 s default is cut
    /// to a shorter `max_ttl_ms`.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = Some(wire_ttl(d));
        self
    }

    /// Whether to reconnect automatically after the connection drops.
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }

    /// How long the client's runtime keeps polling its socket after a message before it
    /// sleeps [default: 50 µs; zero turns it off]. A message that arrives within the window is
    /// seen without a wake-up, which on a machine that halts idle CPUs saves tens of
    /// microseconds per message; the price is up to one busy CPU while messages keep coming.
    /// One spinner serves every client on the same tokio runtime (the longest window asked
    /// for wins, up to 1 s), and there is none when the process may use one CPU only.
    pub fn spin(mut self, window: Duration) -> Self {
        self.spin = window;
        self
    }

    /// Reconnect backoff bounds (exponential between them, with jitter). The first is at least
    /// 1 ms: with none, a client whose server is down would retry in a busy loop.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min.max(MIN_BACKOFF);
        self.backoff_max = max.max(self.backoff_min);
        self
    }

    /// Take over a live connection that uses the same app id instead of failing with
    /// DUPLICATE_APP.
    pub fn takeover(mut self, on: bool) -> Self {
        self.takeover = on;
        self
    }

    /// Ask the server not to store this app's registration (for throwaway clients such as
    /// command-line tools); by default it is stored and rehydrated when the app comes back.
    pub fn ephemeral(mut self, on: bool) -> Self {
        self.ephemeral = on;
        self
    }

    /// Authenticate with a static token (for servers started with `--require-auth`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = Some(Credential::Token(token.into()));
        self
    }

    /// Authenticate with a JWT naming this app (for servers started with `--require-auth`).
    /// The server ends the connection when the JWT expires, and this client reconnects with the
    /// same one, which the server then refuses ([`ClientEvent::ReconnectRefused`]): for a
    /// connection that outlives one JWT, use [`jwt_source`](Self::jwt_source).
    ///
    /// [`ClientEvent::ReconnectRefused`]: crate::ClientEvent::ReconnectRefused
    pub fn jwt(mut self, jwt: impl Into<String>) -> Self {
        self.auth = Some(Credential::Jwt(jwt.into()));
        self
    }

    /// Authenticate with a JWT from `source`, asked for one at every handshake: the first, and
    /// each reconnect — including the one after the server ended the connection because the
    /// last JWT expired. `source` should return quickly (it runs on the connection's task):
    /// hand it a JWT refreshed elsewhere.
    pub fn jwt_source(mut self, source: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.auth = Some(Credential::JwtSource(Arc::new(source)));
        self
    }

    /// Authenticate with the environment's credential, if it gives one: `LATZERO_TOKEN` (a
    /// static token), else `LATZERO_JWT` — what the `latzero` command-line tools send.
    pub fn credential_from_env(mut self) -> Self {
        if let Some(c) = Credential::from_env() {
            self.auth = Some(c);
        }
        self
    }

    /// Connect over TLS to the server's TCP port, verifying it this way (what a `latzeros://`
    /// URL's `fingerprint` or `ca` says; the URL's choice wins when it has one).
    pub fn tls(mut self, verify: latzero_proto::TlsVerify) -> Self {
        self.tls = Some(verify);
        self
    }

    /// Application metadata sent in the handshake.
    pub fn meta(mut self, meta: Value) -> Self {
        self.meta = Some(meta);
        self
    }

    /// Frames the client may queue for writing before `call`/`emit` wait (backpressure).
    pub fn write_queue(mut self, frames: usize) -> Self {
        self.write_queue = frames.max(1);
        self
    }

    /// How long a closed client (dropped, or [`Client::close`](crate::Client::close)) keeps
    /// writing the frames it had queued — emits, a mapped write's notices — before it gives up
    /// on a server that does not read them (default [`DEFAULT_CLOSE_GRACE`], 5 s). What is
    /// written in time reaches the server; [`Client::flush`](crate::Client::flush) before
    /// closing confirms it. What is not is dropped with a `tracing` warning giving its bytes.
    pub fn close_grace(mut self, d: Duration) -> Self {
        self.close_grace = d;
        self
    }

    /// Longest frame accepted from the server. By default the client follows the server: it
    /// reads frames up to the server's own `max_frame_len` (told at the handshake) plus
    /// [`latzero_proto::ENVELOPE_ROOM`] for what the server wraps around a payload it forwards.
    /// A lower limit set here stands, and a longer frame then ends the connection.
    pub fn max_frame_len(mut self, bytes: usize) -> Self {
        self.max_frame_len = Some(bytes);
        self
    }

    /// The longest frame to read from a server whose own limit is `server_max`.
    pub(crate) fn read_limit(&self, server_max: usize) -> usize {
        self.max_frame_len
            .unwrap_or(server_max.saturating_add(latzero_proto::ENVELOPE_ROOM))
    }

    /// Triggers to announce in the handshake. Each must get a handler with
    /// [`Client::handle`]; until then a call to it is answered with a handler error.
    pub fn triggers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, triggers: I) -> Self {
        self.triggers = triggers.into_iter().map(Into::into).collect();
        self
    }

    /// Connects.
    pub async fn connect(self, url: &str) -> Result<Client, ClientError> {
        Client::connect_with(url, self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_is_whole_milliseconds_rounded_up_and_never_zero() {
        for (given, sent) in [
            (Duration::ZERO, 1),
            (Duration::from_micros(1), 1),
            (Duration::from_micros(1500), 2),
            (Duration::from_millis(250), 250),
            (Duration::MAX, u64::MAX),
        ] {
            assert_eq!(wire_ttl(given), Duration::from_millis(sent), "{given:?}");
        }
        let o = ClientOptions::new().request_timeout(Duration::from_micros(500));
        assert_eq!(o.timeout(), Duration::from_millis(1));
    }

    #[test]
    fn a_backoff_of_zero_is_a_millisecond_so_reconnecting_never_spins() {
        let o = ClientOptions::new().backoff(Duration::ZERO, Duration::ZERO);
        assert_eq!((o.backoff_min, o.backoff_max), (MIN_BACKOFF, MIN_BACKOFF));
        let o = ClientOptions::new().backoff(Duration::from_millis(5), Duration::from_millis(2));
        assert_eq!(
            (o.backoff_min, o.backoff_max),
            (Duration::from_millis(5), Duration::from_millis(5))
        );
    }

    #[test]
    fn options_never_print_a_credential() {
        for o in [
            ClientOptions::new().token("s3cret-token"),
            ClientOptions::new().jwt("s3cret.jwt.x"),
            ClientOptions::new().jwt_source(|| "s3cret.jwt.y".into()),
        ] {
            let shown = format!("{o:?}");
            assert!(!shown.contains("s3cret") && shown.contains("auth: Some("), "{shown}");
        }
    }
}
