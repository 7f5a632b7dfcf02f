//! Messages: what clients send, parsed at the edge into [`Request`]s (`request.rs`), and what
//! the server sends (`reply.rs`).
//!
//! Every message is a JSON object with an `action` (`type` is accepted as an alias for clients
//! of the original server). Parsing is one pass over a flat [`Envelope`] that borrows from the
//! frame (a hand-written scan for the call path's messages, serde for everything else);
//! payloads (`data`, `response`, `error`, `meta`) stay [`RawValue`]s, so the server forwards
//! them byte for byte and never re-serialises them.

mod block;
mod pool;
mod reply;
mod request;
mod scan;

pub use block::*;
pub use pool::*;
pub use reply::*;
pub use request::*;

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
pub use serde_json::value::RawValue;

/// `text`, which the caller has already checked is exactly one JSON value, as a [`RawValue`]
/// without parsing it again (for a type that keeps checked JSON text and serialises as it).
/// Should serde_json's raw-value protocol change, this validates with serde instead; `None`
/// only if that refuses the text.
pub fn checked_raw_value(text: &str) -> Option<&RawValue> {
    scan::checked_raw(text).or_else(|| serde_json::from_str(text).ok())
}

/// How deep a payload (a call's `data`, a response's body, an emit's `data`, a handshake's
/// `meta`, a json block's document) may nest arrays and objects: 100 levels (PROTOCOL.md §3).
/// The server forwards payloads as they are, and every client must be able to parse what it
/// receives: serde_json's typed parsing stops at 127 levels, Python's at its recursion limit,
/// .NET's at 64 by default. So it is a rule of the protocol, not a server setting.
pub const MAX_NESTING: usize = 100;

/// Whether the JSON text nests arrays and objects at most `max` levels deep (a scalar is 0
/// deep, `[1]` 1). Brackets inside strings do not count. Sixty-four bytes a step; it stops as
/// soon as the text goes past `max`.
pub fn nests_within(text: &str, max: usize) -> bool {
    scan::nests_within(text.as_bytes(), max)
}

/// `text` as a [`RawValue`] if it is exactly one JSON value with no whitespace around it,
/// checked in full by the scanner the server reads frames with, in one pass of its own; serde
/// is asked only about what that pass refuses (nesting deeper than 64, or text that is not
/// valid). `None` otherwise: serde then gives the same answer, or the error. Nesting deeper
/// than [`MAX_NESTING`] is `None` too.
pub fn one_value(text: &str) -> Option<&RawValue> {
    scan::one_value(text).map(|(raw, _)| raw)
}

/// Whether `text` is the whole of one JSON value by its outline alone — a string closed, a
/// number or a literal whole, an array or an object whose brackets balance outside strings —
/// with no whitespace around it. What is inside is not checked. Meant for text cut, at a place
/// where a value starts, from a frame that is valid JSON, as every frame of a conforming server
/// is (PROTOCOL.md §2.1): there `true` means the text is exactly that value, and so is valid,
/// while text that runs on into the next field (a layout other than the one expected) is
/// `false`.
pub fn spans_one_value(text: &str) -> bool {
    scan::spans_one_value(text)
}

/// `text` read as a `u64` exactly as `str::parse` reads it, faster for what the hot frames
/// carry: one to nineteen ASCII digits (every such number fits) are summed without the
/// per-digit overflow checks, and anything else (a sign, twenty digits, not a number) goes to
/// `str::parse`.
pub fn parse_u64(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if (1..=19).contains(&b.len()) {
        let mut n = 0u64;
        for &c in b {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                return text.parse().ok();
            }
            n = n * 10 + u64::from(d);
        }
        return Some(n);
    }
    text.parse().ok()
}

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

/// A `T` read only from a JSON object: serde's derived structs also take an array, field by
/// field in order (`"permissions": [["a"], ["b"]]` would be read as `read` and `write`), which no
/// request means. An array is then "invalid type: sequence, expected an object".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Obj<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData)).map(Obj)
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
    /// `app_list`'s page: the last app id of the page before.
    #[serde(borrow)]
    pub after: Option<Str<'a>>,
    /// `app_list`'s page size.
    pub limit: Option<usize>,
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
    /// A handshake that admits the app with what can be had (see [`Handshake::partial`]).
    pub partial: Option<bool>,
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
        match Self::scan(json) {
            Some(env) => Ok(env),
            None => serde_json::from_slice(json),
        }
    }

    /// The fast path for the fields of the messages on the call path (`trigger`, `response`,
    /// `emit`, `ping`): one pass of [`scan`]. Anything else — another field, a duplicate, an
    /// escaped name — is left to serde, which gives the same envelope or the error.
    fn scan(json: &'a [u8]) -> Option<Envelope<'a>> {
        let mut env = Envelope::default();
        let mut seen = Seen::default();
        scan::object(json, |key, v| match key {
            "action" => seen.set(0, &mut env.action, v, str_of),
            "type" => seen.set(1, &mut env.type_alias, v, str_of),
            "id" => seen.set(2, &mut env.id, v, raw_of),
            "process" => seen.set(3, &mut env.process, v, str_of),
            "pool" => seen.set(4, &mut env.pool, v, str_of),
            "data" => seen.set(5, &mut env.data, v, raw_of),
            "origin" => seen.set(6, &mut env.origin, v, raw_of),
            "destination" => seen.set(7, &mut env.destination, v, str_of),
            "ttl" => seen.set(8, &mut env.ttl, v, |v| v.u64()),
            "reply_to" => seen.set(9, &mut env.reply_to, v, str_of),
            "broadcast" => seen.set(10, &mut env.broadcast, v, |v| v.bool()),
            "in_reply_to" => seen.set(11, &mut env.in_reply_to, v, raw_of),
            "status" => seen.set(12, &mut env.status, v, str_of),
            "response" => seen.set(13, &mut env.response, v, raw_of),
            "error" => seen.set(14, &mut env.error, v, raw_of),
            _ => None,
        })?;
        Some(env)
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
        match Self::scan(json) {
            Some(f) => Ok(f),
            None => serde_json::from_slice(json),
        }
    }

    /// The fast path, as [`Envelope::scan`]: frames with any other field go to serde.
    fn scan(json: &'a [u8]) -> Option<ServerFrame<'a>> {
        let mut f = ServerFrame::default();
        let mut seen = Seen::default();
        scan::object(json, |key, v| match key {
            "action" => seen.set(0, &mut f.action, v, str_of),
            "id" => seen.set(1, &mut f.id, v, raw_of),
            "in_reply_to" => seen.set(2, &mut f.in_reply_to, v, raw_of),
            "status" => seen.set(3, &mut f.status, v, str_of),
            "response" => seen.set(4, &mut f.response, v, raw_of),
            "error" => seen.set(5, &mut f.error, v, raw_of),
            "code" => seen.set(6, &mut f.code, v, str_of),
            "message" => seen.set(7, &mut f.message, v, str_of),
            "handler" => seen.set(8, &mut f.handler, v, str_of),
            "handler_may_still_run" => seen.set(9, &mut f.handler_may_still_run, v, |v| v.bool()),
            "origin" => seen.set(10, &mut f.origin, v, raw_of),
            "process" => seen.set(11, &mut f.process, v, str_of),
            "pool" => seen.set(12, &mut f.pool, v, str_of),
            "data" => seen.set(13, &mut f.data, v, raw_of),
            "app_id" => seen.set(14, &mut f.app_id, v, str_of),
            "event" => seen.set(15, &mut f.event, v, str_of),
            // Delivered triggers carry it; clients do not read it.
            "ttl" => seen.set(16, &mut None, v, |v| v.u64()),
            _ => None,
        })?;
        Some(f)
    }

    /// The action.
    pub fn action(&self) -> Option<&str> {
        self.action.as_deref()
    }
}

/// The `app_id` of an `origin` object (`{"app_id": "..."}`), as delivered triggers, emits and
/// forwarded responses carry it.
pub fn origin_app_id(origin: &RawValue) -> Option<Cow<'_, str>> {
    let mut app = None;
    let scanned = scan::object(origin.get().as_bytes(), |key, v| {
        if key == "app_id" {
            app = Some(v.plain_str()?);
        }
        Some(())
    });
    if scanned.is_some() {
        return app.map(Cow::Borrowed);
    }
    #[derive(Deserialize)]
    struct Origin<'a> {
        #[serde(borrow)]
        app_id: Str<'a>,
    }
    serde_json::from_str::<Origin<'_>>(origin.get())
        .ok()
        .map(|o| o.app_id.0)
}

/// The fields a fast-path scan has set: a second occurrence goes to serde (which refuses it).
#[derive(Default)]
struct Seen(u32);

impl Seen {
    /// Sets `slot` from `v` (`null` leaves it `None`, as serde's `Option` does); `None` when the
    /// field was seen before or `conv` cannot take the value.
    fn set<'a, T>(
        &mut self,
        bit: u32,
        slot: &mut Option<T>,
        v: scan::Value<'a>,
        conv: fn(&scan::Value<'a>) -> Option<T>,
    ) -> Option<()> {
        if self.0 & (1 << bit) != 0 {
            return None;
        }
        self.0 |= 1 << bit;
        if v.kind != scan::Kind::Null {
            *slot = Some(conv(&v)?);
        }
        Some(())
    }
}

fn str_of<'a>(v: &scan::Value<'a>) -> Option<Str<'a>> {
    v.plain_str().map(|s| Str(Cow::Borrowed(s)))
}

fn raw_of<'a>(v: &scan::Value<'a>) -> Option<&'a RawValue> {
    v.raw()
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

/// The frames of the call path, each in the layout its writer uses (the SDK's to the server, the
/// server's to the SDK), for the tests that hand the fast paths edited copies of them.
#[cfg(test)]
pub(crate) const CALL_PATH: &[&str] = &[
    r#"{"action":"trigger","id":7,"process":"echo","pool":"p","data":"x","ttl":30000}"#,
    r#"{"action":"response","in_reply_to":"17","status":"ok","response":{"a":[1,2.5e3]}}"#,
    r#"{"action":"response","in_reply_to":"17","status":"error","error":{"message":"m"}}"#,
    r#"{"action":"emit","process":"ev","pool":"p","data":[1,"\u00e9\""]}"#,
    r#"{"action":"trigger","id":"5","process":"echo","pool":"p","data":"x","origin":{"app_id":"c"},"ttl":29999}"#,
    r#"{"action":"emit","process":"ev","pool":"p","data":{"a":null},"origin":{"app_id":"c"}}"#,
    r#"{"action":"response","in_reply_to":3,"status":"ok","response":[1,true]}"#,
    r#"{"action":"response","in_reply_to":3,"status":"error","error":{"message":"x"}}"#,
    r#"{"action":"error","in_reply_to":3,"code":"TIMEOUT","message":"call timed out","handler_may_still_run":true,"handler":"h"}"#,
];

/// `per` copies of each of `frames`, each with one to three random edits (a byte replaced,
/// inserted or removed, or a run of the frame copied elsewhere in it), from a fixed seed: the
/// same frames on every run. The bytes put in are the ones JSON's structure turns on, and a few
/// that are not text.
#[cfg(test)]
pub(crate) fn edited(frames: &[&str], per: usize) -> Vec<Vec<u8>> {
    const BYTES: &[u8] = b"\"\\{}[],:0123456789-+.eEnultrfas u\x00\x1f\x7f\xc3\xa9\xff";
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |below: usize| {
        // xorshift64*: enough to spread edits over a frame, and no dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % below.max(1)
    };
    let mut out = Vec::with_capacity(frames.len() * per);
    for frame in frames {
        for _ in 0..per {
            let mut f = frame.as_bytes().to_vec();
            for _ in 0..=next(3) {
                let at = next(f.len() + 1);
                let byte = BYTES[next(BYTES.len())];
                match next(4) {
                    0 if at < f.len() => f[at] = byte,
                    1 => f.insert(at, byte),
                    2 if at < f.len() => {
                        f.remove(at);
                    }
                    _ => {
                        let from = next(f.len());
                        let run = f[from..(from + 1 + next(12)).min(f.len())].to_vec();
                        f.splice(at..at, run);
                    }
                }
            }
            out.push(f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_u64_reads_as_str_parse_does() {
        let max = u64::MAX.to_string();
        let over = "18446744073709551616";
        let cases = [
            "0",
            "7",
            "007",
            "123456",
            "9999999999999999999",
            "1000000000000000000",
            &max,
            over,
            "",
            "+5",
            "-1",
            "1a",
            "a1",
            " 1",
            "1 ",
            "١",
            "99999999999999999999",
            "\"12\"",
        ];
        for s in cases {
            assert_eq!(parse_u64(s), s.parse::<u64>().ok(), "{s:?}");
        }
        for n in (0..64).map(|k| 1u64 << k).chain((0..20).map(|k| 10u64.pow(k) - 1)) {
            assert_eq!(parse_u64(&n.to_string()), Some(n));
        }
    }

    /// Messages the fast path reads, and messages it must leave to serde.
    const CORPUS: &[&str] = &[
        r#"{"action":"trigger","id":7,"process":"echo","pool":"bench","data":"xx","ttl":30000}"#,
        r#"{"action":"trigger","id":"a-b","process":"echo","pool":"p","data":{"k":[1,2,{"z":"}"}]},"destination":"h","reply_to":"r","broadcast":false}"#,
        r#"{"action":"response","in_reply_to":"12","status":"ok","response":{"result":84}}"#,
        r#"{"action":"response","in_reply_to":"12","status":"error","error":{"message":"no \"such\" thing"}}"#,
        r#"{"action":"emit","process":"ev","pool":"p","data":null}"#,
        r#"{"type":"emit","process":"ev","pool":"p","data":[]}"#,
        r#" { "action" : "ping" , "id" : -3 } "#,
        r#"{"action":"trigger","id":1,"ttl":null,"data":1.5e3,"destination":null}"#,
        r#"{"action":"response","in_reply_to":1,"status":"ok","response":"é \u00e9 \ud83d\ude00"}"#,
        // Left to serde (one way or another):
        r#"{"action":"trigger","id":1,"id":2}"#,
        r#"{"action":"trigger","ttl":-1}"#,
        r#"{"action":"trigger","ttl":1.0}"#,
        r#"{"action":"trigger","ttl":"5"}"#,
        r#"{"action":"trigger","broadcast":1}"#,
        r#"{"action":"handshake","app_id":"a","pools":["p"]}"#,
        r#"{"action":"tr\u0069gger","id":1}"#,
        r#"{"act\u0069on":"trigger","id":1}"#,
        r#"{"action":"trigger","data":[1 2]}"#,
        r#"{"action":"trigger","data":"\x"}"#,
        r#"{"action":"trigger","process":5}"#,
        r#"{"action":"trigger","unknown":{"a":1}}"#,
        r#"{"action":"trigger"} x"#,
        r#"{"action":"trigger""#,
        r#"[1]"#,
        "{\"action\":\"trig\tger\"}",
    ];

    /// Asserts that what each fast path (`Envelope::scan`, `ServerFrame::scan`) reads of `json`
    /// is what serde reads; says which of the two took it.
    fn scans_agree_with_serde(json: &[u8]) -> (bool, bool) {
        let text = String::from_utf8_lossy(json);
        let env = Envelope::scan(json).map(|env| {
            let serde = serde_json::from_slice::<Envelope<'_>>(json);
            let serde = serde.unwrap_or_else(|e| panic!("fast path accepted {text} which serde refuses: {e}"));
            assert_eq!(format!("{env:?}"), format!("{serde:?}"), "{text}");
        });
        let frame = ServerFrame::scan(json).map(|f| {
            let serde = serde_json::from_slice::<ServerFrame<'_>>(json);
            let serde = serde.unwrap_or_else(|e| panic!("fast path accepted {text} which serde refuses: {e}"));
            assert_eq!(format!("{f:?}"), format!("{serde:?}"), "{text}");
        });
        (env.is_some(), frame.is_some())
    }

    /// The fast paths read edited call-path frames as serde does, or leave them to it.
    #[test]
    fn edited_frames_read_alike_on_the_fast_path_and_by_serde() {
        let (mut envelopes, mut server_frames) = (0, 0);
        for json in edited(CALL_PATH, 10000) {
            let (env, frame) = scans_agree_with_serde(&json);
            envelopes += usize::from(env);
            server_frames += usize::from(frame);
        }
        // Edits that keep a frame valid (a digit for a digit, a run inside a string) are
        // common enough that each fast path is really compared.
        assert!(envelopes > 100 && server_frames > 100, "{envelopes} {server_frames}");
    }

    #[test]
    fn the_fast_path_agrees_with_serde() {
        let mut fast = 0;
        for json in CORPUS {
            fast += usize::from(scans_agree_with_serde(json.as_bytes()).0);
        }
        assert_eq!(fast, 9, "the first nine messages take the fast path");
    }

    #[test]
    fn origin_app_ids() {
        let app = |json: &str| origin_app_id(&RawValue::from_string(json.into()).unwrap()).map(Cow::into_owned);
        assert_eq!(app(r#"{"app_id":"caller"}"#).as_deref(), Some("caller"));
        assert_eq!(app(r#"{"x":[1],"app_id":"c"}"#).as_deref(), Some("c"));
        assert_eq!(app(r#"{"app_id":"a\u0062"}"#).as_deref(), Some("ab"));
        assert_eq!(app(r#"{"other":1}"#), None);
        assert_eq!(app("[]"), None);
    }

    #[test]
    fn server_frames_on_the_call_path_take_the_fast_path() {
        for json in [
            r#"{"action":"trigger","id":"5","process":"echo","pool":"p","data":"x","origin":{"app_id":"c"},"ttl":29999}"#,
            r#"{"action":"emit","process":"ev","pool":"p","data":{"a":1},"origin":{"app_id":"c"}}"#,
            r#"{"action":"response","in_reply_to":3,"status":"ok","response":[1,2]}"#,
            r#"{"action":"error","in_reply_to":3,"code":"TIMEOUT","message":"call timed out after 5 ms","handler_may_still_run":true,"handler":"h"}"#,
        ] {
            let f = ServerFrame::scan(json.as_bytes()).unwrap_or_else(|| panic!("slow path for {json}"));
            let serde = serde_json::from_slice::<ServerFrame<'_>>(json.as_bytes()).unwrap();
            assert_eq!(format!("{f:?}"), format!("{serde:?}"));
        }
    }
}
