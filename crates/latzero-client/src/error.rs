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
///
/// Each message tells its cause itself, so no variant also hands the cause on as
/// [`source`](std::error::Error::source): a report that walks the chain (`anyhow`'s `{:#}`)
/// would tell it twice. The cause stays in the variant, for a caller to match on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL could not be parsed.
    #[error("invalid URL: {0}")]
    Url(latzero_proto::UrlError),
    /// A name (pool, trigger, app id) is invalid.
    #[error("invalid name: {0}")]
    Name(latzero_proto::NameError),
    /// The server could not be reached.
    #[error("cannot connect to {endpoint}: {error}; is the server running (`latzero start`)?")]
    Connect {
        /// Where we tried.
        endpoint: String,
        /// Why it failed.
        error: std::io::Error,
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
    /// The connection dropped before the reply arrived, and the request (a call, a block write,
    /// an admin request) may or may not have been carried out (`sent`); or there was no
    /// connection to send the request on, and it was not sent (a client reconnecting, or one
    /// that will not: taken over, or told to stop reconnecting).
    #[error("{}", disconnected(reason.as_deref(), *sent))]
    Disconnected {
        /// Why the connection dropped, when the client knew by the time the request failed:
        /// the reason the [`ClientEvent::Disconnected`](crate::ClientEvent::Disconnected)
        /// event carries.
        reason: Option<String>,
        /// Whether the request left this client. When it did not, the server never saw it,
        /// and it is safe to send again once connected (`ClientEvent::Reconnected`).
        sent: bool,
    },
    /// No reply arrived within the call's timeout plus a grace period of at least a second (the
    /// server itself did not answer, which only happens if it is wedged or gone). The client
    /// looks every 100 ms, so this comes up to ~0.2 s after that wait.
    #[error("no reply from the server within {0:?}")]
    NoReply(Duration),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// The server announced a frame longer than this client reads (for admin requests, the
    /// [`admin::Target`](crate::admin::Target)'s `max_frame_len`); the connection is dropped,
    /// as the stream cannot be resynchronised.
    #[error("the server's answer of {len} bytes is longer than the {max} bytes this client reads")]
    AnswerTooLarge {
        /// The announced length.
        len: usize,
        /// This client's read limit.
        max: usize,
    },
    /// A frame longer than the server reads (its `max_frame_len`, told at the handshake): not
    /// sent, since the server would close the connection, failing every call in flight. The
    /// connection stays open. [`ClientError::code`] gives `FRAME_TOO_LARGE`.
    #[error(
        "FRAME_TOO_LARGE: a frame of {len} bytes exceeds the server's max_frame_len of {max} bytes; not sent (the connection stays open)"
    )]
    FrameTooLarge {
        /// The frame's length (its payload, as the server counts it).
        len: usize,
        /// The server's limit.
        max: usize,
    },
    /// The server sent something this SDK does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A memory block's mapping refused the operation (out of range, wrong type, invalid JSON,
    /// a full stream, the write side held too long, ...).
    #[error("memory block: {0}")]
    Memory(latzero_memory::MemError),
    /// An encrypted pool refused a record or lacked a key: not sealed, a bad signature, a wrong
    /// key, a replay.
    #[error("encrypted pool: {0}")]
    Crypto(latzero_crypto::SealError),
    /// The payload could not be serialised or the result deserialised.
    #[error("payload (de)serialisation failed: {0}")]
    Json(serde_json::Error),
}

impl ClientError {
    /// The wire code, for server errors (and for a mapped block deleted since,
    /// `BLOCK_NOT_FOUND`).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Remote(r) => Some(r.code),
            ClientError::FrameTooLarge { .. } => Some(ErrorCode::FrameTooLarge),
            // A mapping of a block deleted since: what the server says of it.
            ClientError::Memory(latzero_memory::MemError::Deleted) => Some(ErrorCode::BlockNotFound),
            _ => None,
        }
    }
}

/// `Disconnected`'s message.
fn disconnected(reason: Option<&str>, sent: bool) -> String {
    let because = reason.map(|r| format!(" ({r})")).unwrap_or_default();
    if sent {
        format!(
            "connection to the server lost before the reply arrived{because}; the request was sent and may or may not have been carried out (a call may have run)"
        )
    } else {
        format!("not connected to the server{because}; the request was not sent")
    }
}

/// `?` on the errors whose message a [`ClientError`] tells (see its doc for why these are not
/// thiserror's `#[from]`, which would also make each a `source`).
macro_rules! told_in_message {
    ($($from:ty => $variant:ident),* $(,)?) => {$(
        impl From<$from> for ClientError {
            fn from(e: $from) -> Self {
                ClientError::$variant(e)
            }
        }
    )*};
}

told_in_message! {
    latzero_proto::UrlError => Url,
    latzero_proto::NameError => Name,
    latzero_memory::MemError => Memory,
    latzero_crypto::SealError => Crypto,
    serde_json::Error => Json,
}

impl From<latzero_crypto::KeyError> for ClientError {
    fn from(e: latzero_crypto::KeyError) -> Self {
        ClientError::Crypto(e.into())
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// An error with a cause tells it in its message and does not hand it on as its source, so
    /// a report that walks the chain (`anyhow`'s `{:#}`, as the CLI prints) tells it once.
    #[test]
    fn each_cause_is_told_once() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let told = refused.to_string();
        let url = "nope".parse::<latzero_proto::LatzeroUrl>().unwrap_err();
        let name = latzero_proto::PoolName::check("").unwrap_err();
        let mem = latzero_memory::MemError::OutOfRange {
            offset: 60,
            len: 10,
            size: 64,
        };
        let json = serde_json::from_str::<Value>("{").unwrap_err();
        let seal = latzero_crypto::SealError::Malformed;
        let errors = [
            (
                told,
                ClientError::Connect {
                    endpoint: "tcp://127.0.0.1:1".into(),
                    error: refused,
                },
            ),
            (url.to_string(), url.into()),
            (name.to_string(), name.into()),
            (mem.to_string(), mem.into()),
            (json.to_string(), json.into()),
            (seal.to_string(), seal.into()),
        ];
        for (cause, e) in errors {
            assert!(e.to_string().contains(&cause), "{e} does not tell {cause}");
            assert!(e.source().is_none(), "{e} hands its cause on as well");
            assert_eq!(format!("{:#}", anyhow::Error::from(e)).matches(&cause).count(), 1);
        }
    }
}
