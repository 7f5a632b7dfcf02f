//! Server → client messages, serialised straight into frames with
//! [`encode_message`](crate::frame::encode_message).

use bytes::Bytes;
use serde::Serialize;

use super::RawValue;
use crate::error::ErrorCode;
use crate::frame::JsonFrame;
use crate::name::{AppId, PoolName, TriggerName};

/// `origin` of a delivered trigger or emit.
#[derive(Debug, Serialize)]
pub struct Origin<'a> {
    /// The calling app.
    pub app_id: &'a AppId,
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
    /// What a `partial` handshake left out, and why (absent when nothing was).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub refused: &'a [Refused],
    /// Server information.
    pub server: ServerInfo<'a>,
    /// The limits a client meets on every request, so that it can keep to them rather than
    /// be refused (or, past the frame limit, disconnected).
    pub limits: AckLimits,
}

/// A pool or trigger a `partial` handshake left out, with the error a strict handshake would
/// have been refused with.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Refused {
    /// The pool left out (or `trigger`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The trigger left out (or `pool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// Why: `PERMISSION_DENIED` (a credential, a policy, an encrypted pool) or `OVERLOADED` (a
    /// limit).
    pub code: crate::ErrorCode,
    /// The server's message.
    pub message: String,
}

/// The limits a `handshake_ack` tells.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct AckLimits {
    /// The longest frame payload the server reads, in bytes; a longer one closes the
    /// connection with FRAME_TOO_LARGE.
    pub max_frame_len: usize,
    /// The longest `ttl` a call may ask for, in milliseconds.
    pub max_ttl_ms: u64,
    /// The `ttl` of a call that gives none, in milliseconds.
    pub default_ttl_ms: u64,
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

/// A hop id as the JSON string of its digits (the wire's `"id":"42"`).
fn hop_text<S: serde::Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// JSON text serialised as the value it is. The text comes from a request the server checked,
/// so it is one value; text that is not is an error of the serialiser, not text on the wire.
fn json_text<S: serde::Serializer>(text: &&str, s: S) -> Result<S::Ok, S::Error> {
    serde_json::from_str::<&RawValue>(text)
        .map_err(serde::ser::Error::custom)?
        .serialize(s)
}

/// `,"process":"P","pool":"Q","data":D,"origin":{"app_id":"A"}`: the part a delivered trigger
/// and a delivered emit share, in runs of their fixed layout. The names are checked names (their
/// types say so): copied without looking for characters to escape. Inlined, as the writers
/// of `JsonFrame` are, so that each run's copy has a constant length.
#[inline(always)]
fn delivery<'f>(
    f: &'f mut JsonFrame,
    process: &TriggerName,
    pool: &PoolName,
    data: &RawValue,
    origin: &Origin<'_>,
) -> &'f mut JsonFrame {
    f.text(r#","process":""#)
        .text(process.as_str())
        .text(r#"","pool":""#)
        .text(pool.as_str())
        .text(r#"","data":"#)
        .text(data.get())
        .text(r#","origin":{"app_id":""#)
        .text(origin.app_id.as_str())
        .text(r#""}"#)
}

/// A trigger delivered to a handler.
#[derive(Debug, Serialize)]
pub struct DeliverTrigger<'a> {
    /// "trigger" (written without escaping: a literal of name characters).
    pub action: &'static str,
    /// The server-assigned hop id, sent as the JSON string of its digits; answer with
    /// `in_reply_to` set to it.
    #[serde(serialize_with = "hop_text")]
    pub id: u64,
    /// The trigger.
    pub process: &'a TriggerName,
    /// The pool.
    pub pool: &'a PoolName,
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
        let mut v = Vec::new();
        self.encode_onto(&mut v);
        Bytes::from(v)
    }

    /// Appends the frame to `buf` (a connection's outbound buffer): no frame of its own to
    /// allocate, copy and free.
    pub fn encode_onto(&self, buf: &mut Vec<u8>) {
        // Room for the whole frame (the length prefix, the keys, the hop id and the ttl take at
        // most 133 bytes): growing the buffer midway copies it.
        let room = 136 + self.process.as_str().len() + self.pool.as_str().len() + self.data.get().len();
        let mut f = JsonFrame::after(std::mem::take(buf), room + self.origin.app_id.as_str().len());
        // In runs of the fixed layout the SDK reads first.
        debug_assert!(self.action.bytes().all(crate::name::is_name_byte));
        f.text(r#""action":""#)
            .text(self.action)
            .text(r#"","id":""#)
            .digits(self.id)
            .text("\"");
        delivery(&mut f, self.process, self.pool, self.data, &self.origin)
            .text(r#","ttl":"#)
            .digits(self.ttl);
        *buf = f.into_vec();
    }
}

/// A response forwarded to the caller (or to its `reply_to` app).
#[derive(Debug, Serialize)]
pub struct ForwardResponse<'a> {
    /// "response" (written without escaping: a literal of name characters).
    pub action: &'static str,
    /// The caller's own id: its JSON text, as the request carried it (checked then), written
    /// as it is. Text, not a `&RawValue`, so that the server can keep a short id inline in its
    /// pending-call table rather than in an allocation of its own.
    #[serde(serialize_with = "json_text")]
    pub in_reply_to: &'a str,
    /// "ok" or "error" (written without escaping).
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
        let mut v = Vec::new();
        self.encode_onto(&mut v);
        Bytes::from(v)
    }

    /// Appends the frame to `buf` (a connection's outbound buffer), as
    /// [`DeliverTrigger::encode_onto`].
    pub fn encode_onto(&self, buf: &mut Vec<u8>) {
        let body = self.response.or(self.error).map_or(0, |b| b.get().len());
        let origin = self.origin.as_ref().map_or(0, |o| 24 + o.app_id.as_str().len());
        let mut f = JsonFrame::after(std::mem::take(buf), 72 + self.in_reply_to.len() + body + origin);
        // In runs of the fixed layout, as `DeliverTrigger::encode_onto`.
        debug_assert!(
            self.action
                .bytes()
                .chain(self.status.bytes())
                .all(crate::name::is_name_byte)
        );
        f.text(r#""action":""#)
            .text(self.action)
            .text(r#"","in_reply_to":"#)
            .text(self.in_reply_to)
            .text(r#","status":""#)
            .text(self.status);
        if let Some(r) = self.response {
            f.text(r#"","response":"#).text(r.get());
        } else {
            f.text("\"");
        }
        if let Some(e) = self.error {
            f.raw("error", e.get());
        }
        if let Some(o) = &self.origin {
            f.origin("origin", o.app_id);
        }
        *buf = f.into_vec();
    }
}

/// A `response` read back by [`ForwardResponse::read`].
#[derive(Debug)]
pub struct ReadResponse<'a, T> {
    /// The caller's id: an integer's digits.
    pub in_reply_to: &'a str,
    /// `Ok(response)` for status "ok", `Err(error)` for "error".
    pub result: Result<T, T>,
}

impl ForwardResponse<'_> {
    /// Reads a frame in exactly the layout [`encode`](Self::encode) writes for a caller with an
    /// integer id (no `origin`), deserialising the body as `T` — the SDK's fast path for the
    /// frame every call ends with. `None` for anything else, including a body that is not
    /// exactly one `T`; the caller then parses the frame in general ([`ServerFrame`]), which
    /// gives the same fields for every frame this accepts.
    ///
    /// [`ServerFrame`]: super::ServerFrame
    pub fn read<'a, T: serde::Deserialize<'a>>(json: &'a [u8]) -> Option<ReadResponse<'a, T>> {
        let r = Self::read_text(std::str::from_utf8(json).ok()?)?;
        let body = |text| serde_json::from_str::<T>(text).ok();
        Some(ReadResponse {
            in_reply_to: r.in_reply_to,
            result: match r.result {
                Ok(text) => Ok(body(text)?),
                Err(text) => Err(body(text)?),
            },
        })
    }

    /// [`read`](Self::read) for a frame already checked to be text (one UTF-8 check per frame
    /// serves every layout tried and the payloads taken from it), without deserialising the
    /// body: its text runs to the frame's closing brace and is **not yet checked** to be
    /// exactly one JSON value — the caller must deserialise it (as `T`, or as a `&RawValue`)
    /// and treat a failure as "not this layout".
    pub fn read_text(json: &str) -> Option<ReadResponse<'_, &str>> {
        let mut s = json.strip_prefix(r#"{"action":"response","in_reply_to":"#)?;
        let in_reply_to = digits(&mut s)?;
        let ok = if take(&mut s, r#","status":"ok","response":"#).is_some() {
            true
        } else {
            take(&mut s, r#","status":"error","error":"#)?;
            false
        };
        // The body runs to the closing brace; a frame with more fields after it (`origin`)
        // leaves text that is not exactly one value, and its deserialiser says so.
        let body = s.strip_suffix('}')?;
        Some(ReadResponse {
            in_reply_to,
            result: if ok { Ok(body) } else { Err(body) },
        })
    }
}

/// A delivered trigger or emit read back by [`DeliverTrigger::read`] or [`DeliverEmit::read`].
#[derive(Debug)]
pub struct ReadDelivery<'a, T> {
    /// The hop id as JSON text, quotes included, to echo as `in_reply_to` (triggers; `None`
    /// for emits).
    pub id: Option<&'a str>,
    /// The trigger.
    pub process: &'a str,
    /// The pool.
    pub pool: &'a str,
    /// The payload.
    pub data: T,
    /// The calling app.
    pub origin: &'a str,
}

impl<'a> ReadDelivery<'a, &'a str> {
    /// Deserialises the payload text as `T`; `None` if it is not exactly one `T`.
    pub fn parse<T: serde::Deserialize<'a>>(self) -> Option<ReadDelivery<'a, T>> {
        Some(ReadDelivery {
            id: self.id,
            process: self.process,
            pool: self.pool,
            data: serde_json::from_str(self.data).ok()?,
            origin: self.origin,
        })
    }
}

/// Strips a literal prefix.
pub(super) fn take(s: &mut &str, lit: &str) -> Option<()> {
    *s = s.strip_prefix(lit)?;
    Some(())
}

/// Takes one or more ASCII digits.
fn digits<'a>(s: &mut &'a str) -> Option<&'a str> {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    (n > 0).then(|| {
        let (d, rest) = s.split_at(n);
        *s = rest;
        d
    })
}

/// Takes a string's contents up to its closing quote (consumed), if it needed no escaping —
/// which is how [`JsonFrame::str`] writes names.
pub(super) fn plain<'a>(s: &mut &'a str) -> Option<&'a str> {
    // One pass for the quote and the bytes a plain string cannot hold; names are a few bytes,
    // where this beats a vectorised search's set-up.
    let end = s.bytes().position(|c| c == b'"' || c == b'\\' || c < 0x20)?;
    let (v, rest) = s.split_at(end);
    *s = rest.strip_prefix('"')?;
    Some(v)
}

/// The payload and the origin at the end of a delivery, `DATA,"origin":{"app_id":"A"`, read
/// from the end: the app id is plain (no quote), so its opening quote is the last quote, and
/// whatever the payload holds comes before it.
fn data_and_origin(s: &str) -> Option<(&str, &str)> {
    let s = s.strip_suffix('"')?;
    let open = memchr::memrchr(b'"', s.as_bytes())?;
    let origin = &s[open + 1..];
    if origin.bytes().any(|c| c == b'\\' || c < 0x20) {
        return None;
    }
    let data = s[..=open].strip_suffix(r#","origin":{"app_id":""#)?;
    Some((data, origin))
}

/// Strips one or more ASCII digits from the end.
fn digits_at_end(s: &str) -> Option<&str> {
    // By byte, not by `char`: a digit is one byte, and whatever precedes the digits is cut at
    // an ASCII byte, so the rest stays a valid `&str`.
    let n = s.bytes().rev().take_while(u8::is_ascii_digit).count();
    (n > 0).then(|| &s[..s.len() - n])
}

impl DeliverTrigger<'_> {
    /// Reads a frame in exactly the layout [`encode`](Self::encode) writes, deserialising the
    /// payload as `T`; `None` for anything else (see [`ForwardResponse::read`]).
    pub fn read<'a, T: serde::Deserialize<'a>>(json: &'a [u8]) -> Option<ReadDelivery<'a, T>> {
        Self::read_text(std::str::from_utf8(json).ok()?)?.parse()
    }

    /// [`read`](Self::read) for a frame already checked to be text, without deserialising the
    /// payload: its text is **not yet checked** to be exactly one JSON value (see
    /// [`ForwardResponse::read_text`]).
    pub fn read_text(json: &str) -> Option<ReadDelivery<'_, &str>> {
        let mut s = json.strip_prefix(r#"{"action":"trigger","id":"#)?;
        let rest = s;
        take(&mut s, "\"")?;
        digits(&mut s)?;
        take(&mut s, "\"")?;
        let id = &rest[..rest.len() - s.len()];
        take(&mut s, r#","process":""#)?;
        let process = plain(&mut s)?;
        take(&mut s, r#","pool":""#)?;
        let pool = plain(&mut s)?;
        take(&mut s, r#","data":"#)?;
        let s = digits_at_end(s.strip_suffix('}')?)?.strip_suffix(r#"},"ttl":"#)?;
        let (data, origin) = data_and_origin(s)?;
        Some(ReadDelivery {
            id: Some(id),
            process,
            pool,
            data,
            origin,
        })
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
    /// "emit" (written without escaping: a literal of name characters).
    pub action: &'static str,
    /// The trigger.
    pub process: &'a TriggerName,
    /// The pool.
    pub pool: &'a PoolName,
    /// The payload as sent.
    pub data: &'a RawValue,
    /// Who emitted.
    pub origin: Origin<'a>,
}

impl DeliverEmit<'_> {
    /// The frame, written by hand (the same bytes as `encode_message`; it is on every emit).
    pub fn encode(&self) -> Bytes {
        let room = 80 + self.process.as_str().len() + self.pool.as_str().len() + self.data.get().len();
        // In runs of the fixed layout, as `DeliverTrigger::encode_onto`.
        debug_assert!(self.action.bytes().all(crate::name::is_name_byte));
        let mut f = JsonFrame::new(room + self.origin.app_id.as_str().len());
        f.text(r#""action":""#).text(self.action).text("\"");
        delivery(&mut f, self.process, self.pool, self.data, &self.origin).finish()
    }
}

impl DeliverEmit<'_> {
    /// Reads a frame in exactly the layout [`encode`](Self::encode) writes, deserialising the
    /// payload as `T`; `None` for anything else (see [`ForwardResponse::read`]).
    pub fn read<'a, T: serde::Deserialize<'a>>(json: &'a [u8]) -> Option<ReadDelivery<'a, T>> {
        Self::read_text(std::str::from_utf8(json).ok()?)?.parse()
    }

    /// [`read`](Self::read) for a frame already checked to be text, without deserialising the
    /// payload: its text is **not yet checked** to be exactly one JSON value (see
    /// [`ForwardResponse::read_text`]).
    pub fn read_text(json: &str) -> Option<ReadDelivery<'_, &str>> {
        let mut s = json.strip_prefix(r#"{"action":"emit","process":""#)?;
        let process = plain(&mut s)?;
        take(&mut s, r#","pool":""#)?;
        let pool = plain(&mut s)?;
        take(&mut s, r#","data":"#)?;
        let (data, origin) = data_and_origin(s.strip_suffix("}}")?)?;
        Some(ReadDelivery {
            id: None,
            process,
            pool,
            data,
            origin,
        })
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
    use crate::message::{CALL_PATH, ServerFrame, edited, origin_app_id};
    use crate::seed;

    /// Edited copies of the call path's frames: whatever the SDK's readers take in the layouts
    /// the server writes, the general parse reads with the same fields (and no others that
    /// would change what the frame means).
    #[test]
    fn edited_frames_the_sdk_reads_in_layout_read_alike_in_general() {
        let (mut responses, mut deliveries) = (0, 0);
        for json in edited(CALL_PATH, 10000) {
            let text = String::from_utf8_lossy(&json);
            let general = || {
                let f = ServerFrame::parse(&json);
                f.unwrap_or_else(|e| panic!("read in layout, refused in general: {text}: {e}"))
            };
            if let Some(r) = ForwardResponse::read::<&RawValue>(&json) {
                responses += 1;
                let f = general();
                let (status, body, other) = match r.result {
                    Ok(body) => ("ok", body, f.error),
                    Err(body) => ("error", body, f.response),
                };
                assert_eq!(f.action.as_deref(), Some("response"), "{text}");
                assert_eq!(f.in_reply_to.map(RawValue::get), Some(r.in_reply_to), "{text}");
                assert_eq!(f.status.as_deref(), Some(status), "{text}");
                let got = if status == "ok" { f.response } else { f.error };
                assert_eq!(got.map(RawValue::get), Some(body.get()), "{text}");
                assert!(other.is_none() && f.origin.is_none(), "{text}");
            }
            let delivery = DeliverTrigger::read::<&RawValue>(&json).or_else(|| DeliverEmit::read::<&RawValue>(&json));
            if let Some(d) = delivery {
                deliveries += 1;
                let f = general();
                let action = if d.id.is_some() { "trigger" } else { "emit" };
                assert_eq!(f.action.as_deref(), Some(action), "{text}");
                assert_eq!(f.id.map(RawValue::get), d.id, "{text}");
                assert_eq!(f.process.as_deref(), Some(d.process), "{text}");
                assert_eq!(f.pool.as_deref(), Some(d.pool), "{text}");
                assert_eq!(f.data.map(RawValue::get), Some(d.data.get()), "{text}");
                let origin = f.origin.and_then(origin_app_id);
                assert_eq!(origin.as_deref(), Some(d.origin), "{text}");
            }
        }
        assert!(responses > 100 && deliveries > 100, "{responses} {deliveries}");
    }

    fn tn(name: &str) -> TriggerName {
        TriggerName::try_from(name).unwrap()
    }

    fn pn(name: &str) -> PoolName {
        PoolName::try_from(name).unwrap()
    }

    fn app(name: &str) -> AppId {
        AppId::try_from(name).unwrap()
    }

    #[test]
    fn outbound_messages_serialise_as_specified() {
        let id = RawValue::from_string("\"uuid-v4\"".into()).unwrap();
        let resp = RawValue::from_string(r#"{"result":84}"#.into()).unwrap();
        let f = ForwardResponse {
            action: "response",
            in_reply_to: id.get(),
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
        // Every character a name may hold, and the longest name; hop ids of every length.
        let all: String = ('0'..='z')
            .filter(char::is_ascii_alphanumeric)
            .chain("_-.:".chars())
            .collect();
        let long = "n".repeat(crate::name::MAX_NAME_LEN);
        for (name, hop) in [("echo", 42), (all.as_str(), 0), (long.as_str(), u64::MAX)] {
            let (trigger, pool, app) = (tn(name), pn(name), app(name));
            let t = DeliverTrigger {
                action: "trigger",
                id: hop,
                process: &trigger,
                pool: &pn("p"),
                data: &data,
                origin: Origin { app_id: &app },
                ttl: 30_000,
            };
            assert_eq!(t.encode(), encode_message(&t));
            let mut queued = b"queued".to_vec();
            t.encode_onto(&mut queued);
            assert_eq!(&queued[6..], &t.encode()[..], "written after other bytes");
            let e = DeliverEmit {
                action: "emit",
                process: &tn("ev"),
                pool: &pool,
                data: &data,
                origin: Origin {
                    app_id: &self::app("c"),
                },
            };
            assert_eq!(e.encode(), encode_message(&e));
            for (status, response, error, origin) in [
                ("ok", Some(&*data), None, None),
                ("error", None, Some(&*err), Some(Origin { app_id: &app })),
            ] {
                let r = ForwardResponse {
                    action: "response",
                    in_reply_to: id.get(),
                    status,
                    response,
                    error,
                    origin,
                };
                assert_eq!(r.encode(), encode_message(&r));
                let mut queued = b"queued".to_vec();
                r.encode_onto(&mut queued);
                assert_eq!(&queued[6..], &r.encode()[..], "written after other bytes");
            }
        }
    }

    #[test]
    fn the_sdk_reads_back_exactly_what_the_encoders_write() {
        use super::super::ServerFrame;
        use serde_json::{Value, json};
        let raw = |v: &Value| RawValue::from_string(v.to_string()).unwrap();
        let body = |f: &Bytes| f.slice(4..);
        let decoy = json!({"s": ",\"origin\":{\"app_id\":\"x\"},\"ttl\":1}", "n": [1, {"o": "}}"}]});
        for data in [json!("x".repeat(62)), json!(null), json!(12.5), decoy] {
            let d = raw(&data);
            let t = DeliverTrigger {
                action: "trigger",
                id: 42,
                process: &tn("echo"),
                pool: &pn("p.1"),
                data: &d,
                origin: Origin { app_id: &app("caller") },
                ttl: 29_999,
            }
            .encode();
            let t = body(&t);
            let r = DeliverTrigger::read::<Value>(&t).expect("trigger read back");
            assert_eq!(
                (r.id, r.process, r.pool, r.origin),
                (Some("\"42\""), "echo", "p.1", "caller")
            );
            assert_eq!(r.data, data);
            let general = ServerFrame::parse(&t).unwrap();
            assert_eq!(general.data.map_or("null", |r| r.get()), d.get());
            assert!(DeliverEmit::read::<Value>(&t).is_none());

            let e = DeliverEmit {
                action: "emit",
                process: &tn("ev"),
                pool: &pn("p"),
                data: &d,
                origin: Origin { app_id: &app("em") },
            }
            .encode();
            let e = body(&e);
            let r = DeliverEmit::read::<Value>(&e).expect("emit read back");
            assert_eq!((r.id, r.process, r.pool, r.origin), (None, "ev", "p", "em"));
            assert_eq!(r.data, data);

            let id = RawValue::from_string("7".into()).unwrap();
            for ok in [true, false] {
                let f = ForwardResponse {
                    action: "response",
                    in_reply_to: id.get(),
                    status: if ok { "ok" } else { "error" },
                    response: ok.then_some(&*d),
                    error: (!ok).then_some(&*d),
                    origin: None,
                }
                .encode();
                let f = body(&f);
                let r = ForwardResponse::read::<Value>(&f).expect("response read back");
                assert_eq!(r.in_reply_to, "7");
                assert_eq!(r.result, if ok { Ok(data.clone()) } else { Err(data.clone()) });
            }
            // A forwarded response (with origin) is left to the general parse.
            let f = ForwardResponse {
                action: "response",
                in_reply_to: id.get(),
                status: "ok",
                response: Some(&d),
                error: None,
                origin: Some(Origin { app_id: &app("c") }),
            }
            .encode();
            assert!(ForwardResponse::read::<Value>(&body(&f)).is_none());
        }
        // Escaped names, string ids and anything off the layout are left to the general parse.
        for other in [
            r#"{"action":"response","in_reply_to":"7","status":"ok","response":1}"#,
            r#"{"action":"response","in_reply_to":7,"status":"ok","response":1 2}"#,
            r#"{"action":"response","in_reply_to":7,"status":"ok","response":1,"x":2}"#,
            r#"{"action":"emit","process":"e","pool":"p","data":1,"origin":{"app_id":"c"}} "#,
            r#"{"action":"emit","process":"e","pool":"p","data":1,"origin":{"app_id":"c"},"x":1}"#,
            r#"{"action":"trigger","id":"1","process":"e","pool":"p","data":1,"origin":{"app_id":"c"},"ttl":1,"x":1}"#,
            r#"{"action":"trigger","id":"1","process":"e","pool":"p","data":1,"origin":{"app_id":"c"},"ttl":}"#,
            r#"{"action":"emit","process":"e","pool":"p","data":1,"origin":{"app_id":"a\u0062"}}"#,
            r#"{"action":"emit","process":"e","pool":"p","data":1,"origin":{"app_id":c"}}"#,
            r#"{"action":"emit","process":"e","pool":"p","data":1,"origin":{"app":"c"}}"#,
            r#"{"action":"emit","process":"e\"","pool":"p","data":1,"origin":{"app_id":"c"}}"#,
            r#"{"action":"trigger","id":"1","process":"a\"b","pool":"p","data":1,"origin":{"app_id":"c"},"ttl":1}"#,
        ] {
            assert!(ForwardResponse::read::<Value>(other.as_bytes()).is_none(), "{other}");
            assert!(DeliverEmit::read::<Value>(other.as_bytes()).is_none(), "{other}");
            assert!(DeliverTrigger::read::<Value>(other.as_bytes()).is_none(), "{other}");
        }
    }
}
