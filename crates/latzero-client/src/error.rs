//! Errors of the SDK. Server error frames become [`ClientError::Remote`], whose code mirrors the
//! wire code one to one.

use std::time::Duration;

use latzero_proto::ErrorCode;
use serde_json::Value;

/// An error frame from the server.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteError {
    /// The wire code.
    pub code: ErrorCode,
    /// The server's message.
    pub message: String,
    /// For call errors: the app the call was handed to.
    pub handler: Option<String>,
    /// For TIMEOUT: whether the handler may still run the call.
    pub handler_may_still_run: Option<bool>,
}

/// Everything that can go wrong in the SDK.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL could not be parsed.
    #[error("invalid URL: {0}")]
    Url(#[from] latzero_proto::UrlError),
    /// A name (pool, trigger, app id) is invalid.
    #[error("invalid name: {0}")]
    Name(#[from] latzero_proto::NameError),
    /// The server could not be reached.
    #[error("cannot connect to {endpoint}: {source}; is the server running (`latzero start`)?")]
    Connect {
        /// Where we tried.
        endpoint: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed or TLS could not be set up; the reason says which.
    #[error("TLS with {endpoint} failed: {reason}")]
    Tls {
        /// Where we tried.
        endpoint: String,
        /// Why it failed.
        reason: String,
    },
    /// The server answered with an error frame.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The handler answered with `status: "error"`; this is its `error` value.
    #[error("handler returned an error: {0}")]
    Handler(Value),
    /// The connection dropped before the reply arrived. The call may or may not have run.
    #[error("connection to the server lost before the reply arrived; the call may or may not have run")]
    Disconnected,
    /// No reply arrived within the call's timeout plus a grace period of at least a second (the
    /// server itself did not answer, which only happens if it is wedged or gone). The client
    /// looks every 100 ms, so this comes up to ~0.2 s after that wait.
    #[error("no reply from the server within {0:?}")]
    NoReply(Duration),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// The server sent something this SDK does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A memory block's mapping refused the operation (out of range, wrong type, invalid JSON,
    /// a full stream, the write side held too long, ...).
    #[error("memory block: {0}")]
    Memory(#[from] latzero_memory::MemError),
    /// An encrypted pool refused a record or lacked a key: not sealed, a bad signature, a wrong
    /// key, a replay.
    #[error("encrypted pool: {0}")]
    Crypto(#[from] latzero_crypto::SealError),
    /// The payload could not be serialised or the result deserialised.
    #[error("payload (de)serialisation failed: {0}")]
    Json(#[from] serde_json::Error),
}

impl ClientError {
    /// The wire code, for server errors.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Remote(r) => Some(r.code),
            _ => None,
        }
    }
}

impl From<latzero_crypto::KeyError> for ClientError {
    fn from(e: latzero_crypto::KeyError) -> Self {
        ClientError::Crypto(e.into())
    }
}
