//! Messages: what clients send, parsed at the edge into [`Request`]s ([`request`]), and what
//! the server sends ([`reply`]).
//!
//! Every message is a JSON object with an `action` (`type` is accepted as an alias for clients
//! of the original server). Parsing is one pass over a flat [`Envelope`] that borrows from the
//! frame; payloads (`data`, `response`, `error`, `meta`) stay [`RawValue`]s, so the server
//! forwards them byte for byte and never re-serialises them.

mod block;
mod pool;
mod reply;
mod request;

pub use block::*;
pub use pool::*;
pub use reply::*;
pub use request::*;

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
pub use serde_json::value::RawValue;

/// Longest request id accepted, in bytes of JSON.
pub const MAX_ID_LEN: usize = 256;

/// A string that borrows from the frame when it holds no escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Str<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// The flat shape of every client → server message: every field any request uses, all
/// optional. Unknown fields are ignored (forward compatibility within a major version).
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct Envelope<'a> {
    #[serde(borrow)]
    pub action: Option<Str<'a>>,
    #[serde(borrow, rename = "type")]
    pub type_alias: Option<Str<'a>>,
    #[serde(borrow)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow)]
    pub app_id: Option<Str<'a>>,
    #[serde(borrow)]
    pub pools: Option<Vec<Str<'a>>>,
    #[serde(borrow)]
    pub triggers: Option<Vec<Str<'a>>>,
    #[serde(borrow)]
    pub meta: Option<&'a RawValue>,
    #[serde(borrow)]
    pub protocol_version: Option<Str<'a>>,
    pub takeover: Option<bool>,
    pub rehydrate: Option<bool>,
    pub ephemeral: Option<bool>,
    pub auth: Option<Credential>,
    #[serde(borrow)]
    pub process: Option<Str<'a>>,
    #[serde(borrow)]
    pub pool: Option<Str<'a>>,
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
    #[serde(borrow)]
    pub origin: Option<&'a RawValue>,
    #[serde(borrow)]
    pub destination: Option<Str<'a>>,
    pub ttl: Option<u64>,
    #[serde(borrow)]
    pub reply_to: Option<Str<'a>>,
    pub broadcast: Option<bool>,
    #[serde(borrow)]
    pub in_reply_to: Option<&'a RawValue>,
    #[serde(borrow)]
    pub status: Option<Str<'a>>,
    #[serde(borrow)]
    pub response: Option<&'a RawValue>,
    #[serde(borrow)]
    pub error: Option<&'a RawValue>,
}

impl<'a> Envelope<'a> {
    /// Parses the envelope of a JSON payload.
    pub fn parse(json: &'a [u8]) -> Result<Envelope<'a>, serde_json::Error> {
        serde_json::from_slice(json)
    }

    /// The action, falling back to the `type` alias.
    pub fn action(&self) -> Option<&str> {
        self.action.as_deref().or(self.type_alias.as_deref())
    }
}

/// The flat shape of the server → client frames a client reacts to (replies, delivered
/// triggers and emits, presence, closing). Other fields (such as those of `status_result`) are
/// ignored.
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct ServerFrame<'a> {
    #[serde(borrow)]
    pub action: Option<Str<'a>>,
    #[serde(borrow)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow)]
    pub in_reply_to: Option<&'a RawValue>,
    #[serde(borrow)]
    pub status: Option<Str<'a>>,
    #[serde(borrow)]
    pub response: Option<&'a RawValue>,
    #[serde(borrow)]
    pub error: Option<&'a RawValue>,
    #[serde(borrow)]
    pub code: Option<Str<'a>>,
    #[serde(borrow)]
    pub message: Option<Str<'a>>,
    #[serde(borrow)]
    pub handler: Option<Str<'a>>,
    pub handler_may_still_run: Option<bool>,
    #[serde(borrow)]
    pub origin: Option<&'a RawValue>,
    #[serde(borrow)]
    pub process: Option<Str<'a>>,
    #[serde(borrow)]
    pub pool: Option<Str<'a>>,
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
    #[serde(borrow)]
    pub app_id: Option<Str<'a>>,
    #[serde(borrow)]
    pub event: Option<Str<'a>>,
}

impl<'a> ServerFrame<'a> {
    /// Parses a server frame's JSON.
    pub fn parse(json: &'a [u8]) -> Result<ServerFrame<'a>, serde_json::Error> {
        serde_json::from_slice(json)
    }

    /// The action.
    pub fn action(&self) -> Option<&str> {
        self.action.as_deref()
    }
}

/// A credential, in a handshake's (or an admin request's) `auth`: `{"token": "..."}` or
/// `{"jwt": "..."}`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Credential {
    /// A static token (the server keeps only its SHA-256).
    Token(String),
    /// A JSON Web Token (HS256 or EdDSA) naming the app id and the pools it may join.
    Jwt(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret itself (logs, panics).
        match self {
            Credential::Token(_) => f.write_str("Token(<redacted>)"),
            Credential::Jwt(_) => f.write_str("Jwt(<redacted>)"),
        }
    }
}

/// Whether a handler's response succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `"ok"`: `response` holds the result.
    Ok,
    /// `"error"`: `error` holds the handler's error.
    Error,
}

impl Status {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
        }
    }
}
