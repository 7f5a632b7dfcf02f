//! Server → client messages, serialised straight into frames with
//! [`encode_message`](crate::frame::encode_message).

use bytes::Bytes;
use serde::Serialize;

use super::RawValue;
use crate::error::ErrorCode;
use crate::frame::JsonFrame;

/// `origin` of a delivered trigger or emit.
#[derive(Debug, Serialize)]
pub struct Origin<'a> {
    /// The calling app.
    pub app_id: &'a str,
}

/// Information about the server in the handshake ack.
#[derive(Debug, Serialize)]
pub struct ServerInfo<'a> {
    /// Always "latzero".
    pub name: &'a str,
    /// The server's version.
    pub version: &'a str,
    /// The server's process id.
    pub pid: u32,
}

/// `handshake_ack`.
#[derive(Debug, Serialize)]
pub struct HandshakeAck<'a> {
    /// "handshake_ack".
    pub action: &'static str,
    /// The handshake's id, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<&'a RawValue>,
    /// The app id now bound to this connection.
    pub app_id: &'a str,
    /// Pools joined.
    pub pools: Vec<&'a str>,
    /// Triggers registered.
    pub triggers: Vec<&'a str>,
    /// The server's protocol version.
    pub protocol_version: &'static str,
    /// Whether an older connection of this app id was taken over.
    pub took_over: bool,
    /// Whether stored pools, triggers and meta were restored.
    pub rehydrated: bool,
    /// What was restored, when `rehydrated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored: Option<Restored<'a>>,
    /// Set when the registration could not be stored (the connection works; it will not be
    /// remembered across a restart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_error: Option<&'a str>,
    /// Server information.
    pub server: ServerInfo<'a>,
}

/// What a rehydrating handshake got back from the store.
#[derive(Debug, Serialize)]
pub struct Restored<'a> {
    /// Stored pools, joined again.
    pub pools: Vec<&'a str>,
    /// Stored triggers, registered again.
    pub triggers: Vec<&'a str>,
    /// Stored meta (when the handshake gave none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a RawValue>,
    /// When the app was last seen before this connection (ms since the epoch).
    pub last_seen: i64,
}

/// A trigger delivered to a handler.
#[derive(Debug, Serialize)]
pub struct DeliverTrigger<'a> {
    /// "trigger".
    pub action: &'static str,
    /// The server-assigned hop id; answer with `in_reply_to` set to it.
    pub id: &'a str,
    /// The trigger.
    pub process: &'a str,
    /// The pool.
    pub pool: &'a str,
    /// The payload, byte for byte as the caller sent it.
    pub data: &'a RawValue,
    /// Who called.
    pub origin: Origin<'a>,
    /// Milliseconds left before the call times out.
    pub ttl: u64,
}

impl DeliverTrigger<'_> {
    /// The frame, written by hand (the same bytes as `encode_message`; it is on every call).
    pub fn encode(&self) -> Bytes {
        JsonFrame::new(96 + self.data.get().len())
            .str("action", self.action)
            .str("id", self.id)
            .str("process", self.process)
            .str("pool", self.pool)
            .raw("data", self.data.get())
            .origin("origin", self.origin.app_id)
            .u64("ttl", self.ttl)
            .finish()
    }
}

/// A response forwarded to the caller (or to its `reply_to` app).
#[derive(Debug, Serialize)]
pub struct ForwardResponse<'a> {
    /// "response".
    pub action: &'static str,
    /// The caller's own id.
    pub in_reply_to: &'a RawValue,
    /// "ok" or "error".
    pub status: &'static str,
    /// The result, for "ok".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<&'a RawValue>,
    /// The handler's error, for "error".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a RawValue>,
    /// The caller, only when the response goes to a `reply_to` app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin<'a>>,
}

impl ForwardResponse<'_> {
    /// The frame, written by hand (the same bytes as `encode_message`; it is on every call).
    pub fn encode(&self) -> Bytes {
        let body = self.response.or(self.error).map_or(0, |b| b.get().len());
        let mut f = JsonFrame::new(64 + body);
        f.str("action", self.action)
            .raw("in_reply_to", self.in_reply_to.get())
            .str("status", self.status);
        if let Some(r) = self.response {
            f.raw("response", r.get());
        }
        if let Some(e) = self.error {
            f.raw("error", e.get());
        }
        if let Some(o) = &self.origin {
            f.origin("origin", o.app_id);
        }
        f.finish()
    }
}

/// A server-generated error.
#[derive(Debug, Serialize)]
pub struct ErrorFrame<'a> {
    /// "error".
    pub action: &'static str,
    /// The id of the request that failed, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<&'a RawValue>,
    /// The code.
    pub code: ErrorCode,
    /// What went wrong and what to do.
    pub message: &'a str,
    /// For TIMEOUT and HANDLER_GONE: whether the handler may still run (or have run) the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler_may_still_run: Option<bool>,
    /// For TIMEOUT and HANDLER_GONE: the app the call was handed to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<&'a str>,
    /// The caller, only when the error goes to a `reply_to` app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin<'a>>,
}

impl<'a> ErrorFrame<'a> {
    /// A plain error frame.
    pub fn new(in_reply_to: Option<&'a RawValue>, code: ErrorCode, message: &'a str) -> Self {
        Self {
            action: "error",
            in_reply_to,
            code,
            message,
            handler_may_still_run: None,
            handler: None,
            origin: None,
        }
    }
}

/// An emit delivered to a handler.
#[derive(Debug, Serialize)]
pub struct DeliverEmit<'a> {
    /// "emit".
    pub action: &'static str,
    /// The trigger.
    pub process: &'a str,
    /// The pool.
    pub pool: &'a str,
    /// The payload as sent.
    pub data: &'a RawValue,
    /// Who emitted.
    pub origin: Origin<'a>,
}

impl DeliverEmit<'_> {
    /// The frame, written by hand (the same bytes as `encode_message`; it is on every emit).
    pub fn encode(&self) -> Bytes {
        JsonFrame::new(64 + self.data.get().len())
            .str("action", self.action)
            .str("process", self.process)
            .str("pool", self.pool)
            .raw("data", self.data.get())
            .origin("origin", self.origin.app_id)
            .finish()
    }
}

/// `ack`: a membership change succeeded; carries the connection's pools and triggers now.
#[derive(Debug, Serialize)]
pub struct Ack<'a> {
    /// "ack".
    pub action: &'static str,
    /// The request's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<&'a RawValue>,
    /// Pools the app is in now.
    pub pools: Vec<&'a str>,
    /// Triggers the app has registered now.
    pub triggers: Vec<&'a str>,
    /// Set when the change could not be stored (it holds for this connection only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_error: Option<&'a str>,
}

/// `accepted`: a `reply_to` call was handed to a handler; its result goes to the reply target.
#[derive(Debug, Serialize)]
pub struct Accepted<'a> {
    /// "accepted".
    pub action: &'static str,
    /// The caller's id.
    pub in_reply_to: &'a RawValue,
    /// Where the result will go.
    pub reply_to: &'a str,
    /// The app running the call.
    pub handler: &'a str,
}

/// `emitted`: the receipt for an emit that carried an `id`.
#[derive(Debug, Serialize)]
pub struct Emitted<'a> {
    /// "emitted".
    pub action: &'static str,
    /// The emit's id.
    pub in_reply_to: &'a RawValue,
    /// How many handlers it was queued to.
    pub delivered: u64,
}

/// `presence`: an app joined or left a pool.
#[derive(Debug, Serialize)]
pub struct Presence<'a> {
    /// "presence".
    pub action: &'static str,
    /// The pool.
    pub pool: &'a str,
    /// The app.
    pub app_id: &'a str,
    /// "joined" or "left".
    pub event: &'static str,
}

/// `closing`: the server is about to close this connection, and why.
#[derive(Debug, Serialize)]
pub struct Closing<'a> {
    /// "closing".
    pub action: &'static str,
    /// Why.
    pub code: ErrorCode,
    /// For a human.
    pub message: &'a str,
}

/// `pong`.
#[derive(Debug, Serialize)]
pub struct Pong<'a> {
    /// "pong".
    pub action: &'static str,
    /// The ping's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<&'a RawValue>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed;

    #[test]
    fn outbound_messages_serialise_as_specified() {
        let id = RawValue::from_string("\"uuid-v4\"".into()).unwrap();
        let resp = RawValue::from_string(r#"{"result":84}"#.into()).unwrap();
        let f = ForwardResponse {
            action: "response",
            in_reply_to: &id,
            status: "ok",
            response: Some(&resp),
            error: None,
            origin: None,
        };
        let got: serde_json::Value = serde_json::to_value(&f).unwrap();
        let want: serde_json::Value = serde_json::from_str(seed::RESPONSE).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn hand_written_frames_are_serdes_bytes() {
        use crate::frame::encode_message;
        let raw = |s: &str| RawValue::from_string(s.into()).unwrap();
        let (id, data, err) = (raw("\"c-1\""), raw(r#"{"k":["v",1]}"#), raw(r#"{"message":"x"}"#));
        // Names are validated, but the writer must stay right for any string.
        for name in ["echo", "a\"b\\c\n\u{1}é\u{7f}"] {
            let t = DeliverTrigger {
                action: "trigger",
                id: "42",
                process: name,
                pool: "p",
                data: &data,
                origin: Origin { app_id: name },
                ttl: 30_000,
            };
            assert_eq!(t.encode(), encode_message(&t));
            let e = DeliverEmit {
                action: "emit",
                process: "ev",
                pool: name,
                data: &data,
                origin: Origin { app_id: "c" },
            };
            assert_eq!(e.encode(), encode_message(&e));
            for (status, response, error, origin) in [
                ("ok", Some(&*data), None, None),
                ("error", None, Some(&*err), Some(Origin { app_id: name })),
            ] {
                let r = ForwardResponse {
                    action: "response",
                    in_reply_to: &id,
                    status,
                    response,
                    error,
                    origin,
                };
                assert_eq!(r.encode(), encode_message(&r));
            }
        }
    }
}
