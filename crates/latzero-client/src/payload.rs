//! [`Payload`]: a JSON value kept as its text, for the bytes-level calls and handlers
//! ([`Client::call_raw`](crate::Client::call_raw), [`Client::handle_raw`](crate::Client::handle_raw)).

use std::fmt;

use bytes::Bytes;
use bytestring::ByteString;
use latzero_proto::message::{RawValue, checked_raw_value, spans_one_value};
use serde::{Deserialize, Serialize};

/// One JSON value as its text, checked once (a received one by the server that forwarded it)
/// and never parsed into a tree.
///
/// A payload received from the server is a view into the frame it arrived in (no copy, no
/// allocation); one passed to `call`, `emit` or a `Call` is written into the frame as it is.
/// It is held as text that is known to be UTF-8, so [`Payload::as_str`] costs nothing.
/// Use it to forward payloads untouched, to hand them to another parser, or to skip building a
/// [`serde_json::Value`] on a hot path; [`Payload::json`] deserialises it when needed.
///
/// ```
/// use latzero_client::Payload;
/// let p = Payload::from_json(&serde_json::json!({ "x": 42 }))?;
/// assert_eq!(p.as_str(), r#"{"x":42}"#);
/// let back: serde_json::Value = p.json()?;
/// assert_eq!(back["x"], 42);
/// assert!(Payload::from_text("{oops").is_err());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Payload(ByteString);

impl Payload {
    /// `null`.
    pub fn null() -> Payload {
        Payload(ByteString::from_static("null"))
    }

    /// Serialises `value` as JSON.
    pub fn from_json<T: Serialize + ?Sized>(value: &T) -> Result<Payload, serde_json::Error> {
        Ok(Payload(serde_json::to_string(value)?.into()))
    }

    /// JSON text, checked to be exactly one value (whitespace around it is dropped).
    pub fn from_text(text: impl Into<Bytes>) -> Result<Payload, serde_json::Error> {
        let text = ByteString::try_from(text.into()).map_err(|e| {
            <serde_json::Error as serde::de::Error>::custom(format_args!("the payload is not UTF-8: {e}"))
        })?;
        let raw = serde_json::from_str::<&RawValue>(&text)?;
        Ok(Payload(text.slice_ref(raw.get())))
    }

    /// The text at `text` inside `frame`, a frame from the server, if it is exactly one JSON
    /// value; the payload shares the frame's memory. The server checked the payload before it
    /// forwarded it, and its frames are valid JSON (PROTOCOL.md §2.1), so only the value's
    /// outline is read here — what the layout readers need, since text cut from a frame of
    /// another layout runs on into the next field — and its contents are not checked again
    /// (for a nested payload that second check was serde's full pass).
    pub(crate) fn within(frame: &ByteString, text: &str) -> Result<Payload, serde_json::Error> {
        if spans_one_value(text) {
            return Ok(Payload(frame.slice_ref(text)));
        }
        // serde says why (or takes what the outline refused, such as whitespace around it).
        let raw = serde_json::from_str::<&RawValue>(text)?;
        Ok(Payload(frame.slice_ref(raw.get())))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The JSON text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The JSON text's bytes, without a copy.
    pub fn into_bytes(self) -> Bytes {
        self.0.into_bytes()
    }

    /// Deserialises the payload (borrowing from it where `T` does).
    pub fn json<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    fn raw(&self) -> &RawValue {
        checked_raw_value(self.as_str()).expect("a payload is one JSON value")
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::null()
    }
}

/// Serialises as the JSON value itself: with serde_json, its text is written as it is.
impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw().serialize(s)
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Payload").field(&self.as_str()).finish()
    }
}

impl From<&RawValue> for Payload {
    fn from(raw: &RawValue) -> Self {
        Payload(raw.get().into())
    }
}

impl From<Box<RawValue>> for Payload {
    fn from(raw: Box<RawValue>) -> Self {
        let text: Box<str> = raw.into();
        Payload(text.into())
    }
}

impl TryFrom<&serde_json::Value> for Payload {
    type Error = serde_json::Error;
    fn try_from(v: &serde_json::Value) -> Result<Self, Self::Error> {
        Payload::from_json(v)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn text_is_checked_and_trimmed() {
        let p = Payload::from_text("  [1, 2] \n").unwrap();
        assert_eq!(p.as_str(), "[1, 2]");
        for bad in ["", "{", "1 2", "\"\u{1}\"", "nul"] {
            assert!(Payload::from_text(bad).is_err(), "{bad:?}");
        }
        let e = Payload::from_text(&b"\"\xff\""[..]).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    #[test]
    fn within_a_frame_shares_its_memory() {
        let frame = ByteString::from_static(r#"{"response":{"a":[1,"x"]}}"#);
        let p = Payload::within(&frame, &frame[12..25]).unwrap();
        assert_eq!(p.as_str(), r#"{"a":[1,"x"]}"#);
        assert_eq!(p.as_bytes().as_ptr(), frame[12..].as_ptr());
        assert!(Payload::within(&frame, &frame[12..]).is_err());
    }

    #[test]
    fn serialises_as_the_value_itself() {
        let p = Payload::from_text(r#"{"k": "v"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&json!({ "data": p })).unwrap(),
            r#"{"data":{"k":"v"}}"#
        );
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"k": "v"}"#);
        assert_eq!(serde_json::to_value(&p).unwrap(), json!({ "k": "v" }));
        let v: Value = p.json().unwrap();
        assert_eq!(v, json!({ "k": "v" }));
        assert_eq!(Payload::default().as_str(), "null");
        assert_eq!(Payload::try_from(&json!([true])).unwrap().as_str(), "[true]");
    }
}
