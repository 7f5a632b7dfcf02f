//! Frames: a 4-byte big-endian length, then that many bytes of payload.
//!
//! A payload is either a JSON frame (one UTF-8 JSON object; its first byte is never 0x00) or a
//! binary frame, which carries raw bytes without base64:
//!
//! ```text
//! [u32 BE payload length][0x00][u32 BE header length][header: JSON object][body: raw bytes]
//! ```
//!
//! The header is an ordinary message; the body is the data it describes (the memory-block
//! messages use it). [`FrameCodec`] enforces the maximum payload length *before* buffering: an
//! oversized length is an error at once, and since the stream cannot be resynchronised the
//! connection must be closed.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default maximum payload length: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;
/// What the server may add around a payload it forwards, beyond its own `max_frame_len`: a
/// delivery's hop id, origin and ttl, a caller's own id in its response. A client reads frames
/// up to the server's `max_frame_len` plus this, or a call as long as the server takes would
/// end its handler's connection.
pub const ENVELOPE_ROOM: usize = 64 * 1024;
/// The first payload byte that marks a binary frame.
pub const BINARY_MARKER: u8 = 0x00;

/// Errors while framing.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced payload length exceeds the limit.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The payload length was zero.
    #[error("empty frame: a frame must carry a JSON object or a binary header")]
    Empty,
    /// A binary frame whose header length does not fit inside the payload.
    #[error("binary frame header of {header} bytes does not fit in a {payload}-byte payload")]
    BadBinaryHeader {
        /// The announced header length.
        header: usize,
        /// The payload length.
        payload: usize,
    },
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(std::io::Error),
}

/// Not thiserror's `#[from]`, which would also make the I/O error the `source`: the message
/// tells it already, and a report walking the chain would tell it twice.
impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A JSON frame: the payload bytes, one JSON object.
    Json(Bytes),
    /// A binary frame: a JSON header and raw bytes.
    Binary {
        /// The JSON header.
        header: Bytes,
        /// The raw body.
        body: Bytes,
    },
}

impl Frame {
    /// Splits a payload into a JSON or binary frame.
    pub fn from_payload(mut payload: Bytes) -> Result<Frame, FrameError> {
        match payload.first() {
            None => Err(FrameError::Empty),
            Some(&BINARY_MARKER) => {
                let total = payload.len();
                if total < 5 {
                    return Err(FrameError::BadBinaryHeader {
                        header: 0,
                        payload: total,
                    });
                }
                payload.advance(1);
                let header_len = payload.get_u32() as usize;
                if header_len > payload.len() {
                    return Err(FrameError::BadBinaryHeader {
                        header: header_len,
                        payload: total,
                    });
                }
                let header = payload.split_to(header_len);
                Ok(Frame::Binary { header, body: payload })
            }
            Some(_) => Ok(Frame::Json(payload)),
        }
    }

    /// The JSON part: the whole payload of a JSON frame, the header of a binary one.
    pub fn json(&self) -> &Bytes {
        match self {
            Frame::Json(b) => b,
            Frame::Binary { header, .. } => header,
        }
    }
}

/// Encodes a JSON payload as a complete frame (length prefix included).
pub fn encode_json(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(4 + payload.len());
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// Serialises `msg` straight into a complete frame, without an intermediate buffer.
pub fn encode_message<T: serde::Serialize + ?Sized>(msg: &T) -> Bytes {
    // A Vec, not a BytesMut behind `writer()`: the serialiser makes many small writes, and a
    // Vec's are the cheapest.
    let mut v = Vec::with_capacity(256);
    v.extend_from_slice(&[0; 4]);
    // Serialising our own message types into memory cannot fail: they hold no maps with
    // non-string keys and no failing Serialize impls. (User payloads go through
    // `JsonFrame::serialize`, which returns the error.)
    serde_json::to_writer(&mut v, msg).expect("serialising a message into memory");
    let len = (v.len() - 4) as u32;
    v[..4].copy_from_slice(&len.to_be_bytes());
    Bytes::from(v)
}

/// A JSON frame written field by field, for the few messages on the call path where serde's
/// serialiser is a measurable share of a call (docs/BENCHMARKS.md). Strings that need no
/// escaping (validated names, `"ok"`) are copied as they are; any other string goes through
/// serde_json, so the output is always what [`encode_message`] would write.
#[derive(Debug)]
pub struct JsonFrame {
    b: Vec<u8>,
    /// Where this frame's length prefix sits in `b`.
    start: usize,
}

// The writers are `#[inline]` so that, in the encoders that call them with literal keys, the
// key's copy has a constant length and compiles to a few moves instead of a `memcpy` call
// (callgrind counted ~65 instructions per key before; docs/BENCHMARKS.md).
impl JsonFrame {
    /// Starts a frame with room for `capacity` bytes of JSON, and the opening brace. It is
    /// written in this thread's scratch buffer and copied out by [`finish`](Self::finish) into
    /// an allocation of exactly its size: one allocation per frame, where growing a `Vec` and
    /// handing it to `Bytes` (which boxes its bookkeeping apart when the length is not the
    /// capacity) took two or three.
    pub fn new(capacity: usize) -> Self {
        let mut b = SCRATCH.take();
        b.clear();
        Self::after(b, capacity)
    }

    /// Starts a frame at the end of `buf` (bytes already queued for a socket, say), so that
    /// it is written in place rather than built apart and copied in; [`into_vec`](Self::into_vec)
    /// gives the buffer back with the frame appended.
    pub fn after(mut b: Vec<u8>, capacity: usize) -> Self {
        b.reserve(4 + capacity);
        let start = b.len();
        b.extend_from_slice(&[0, 0, 0, 0, b'{']);
        JsonFrame { b, start }
    }

    /// `"key":`, after a comma unless it opens an object.
    #[inline(always)]
    fn key(&mut self, key: &str) {
        if self.b.last() != Some(&b'{') {
            self.b.push(b',');
        }
        self.b.push(b'"');
        self.b.extend_from_slice(key.as_bytes());
        self.b.extend_from_slice(b"\":");
    }

    /// `"key":"value"`.
    #[inline(always)]
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        self.string(value);
        self
    }

    fn string(&mut self, value: &str) {
        // A plain loop: names are a few bytes, and its early exit beat an eight-bytes-at-a-time
        // check (docs/BENCHMARKS.md).
        if value.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\') {
            self.b.push(b'"');
            self.b.extend_from_slice(value.as_bytes());
            self.b.push(b'"');
        } else {
            serde_json::to_writer(&mut self.b, value).expect("serialising a string into memory");
        }
    }

    /// `"key":value`, with `value` already JSON (a [`RawValue`](serde_json::value::RawValue)'s
    /// text).
    #[inline(always)]
    pub fn raw(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        self.b.extend_from_slice(value.as_bytes());
        self
    }

    /// `"key":` and then whatever `write` appends to the frame's buffer, which must be one JSON
    /// value or nothing (the caller then ends the frame unsent): for a value written in place,
    /// such as a document read straight into a reply. The caller vouches for the text, as for
    /// [`raw`](Self::raw)'s.
    pub fn raw_with<R>(&mut self, key: &str, write: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        self.key(key);
        write(&mut self.b)
    }

    /// Appends `json` as it is. For the frames on every call, written in the fixed layout the
    /// readers expect: a run such as `","pool":"` is one copy where key by key it is five
    /// (docs/BENCHMARKS.md). The caller vouches for the text, as for [`raw`](Self::raw)'s;
    /// tests compare such frames with serde's output.
    #[inline(always)]
    pub fn text(&mut self, json: &str) -> &mut Self {
        self.b.extend_from_slice(json.as_bytes());
        self
    }

    /// The digits of `n`, as [`text`](Self::text) appends a run.
    #[inline(always)]
    pub fn digits(&mut self, n: u64) -> &mut Self {
        self.b.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self
    }

    /// `"key":value`, serialised by serde_json (user payloads, which may fail to serialise).
    pub fn serialize<T: serde::Serialize + ?Sized>(&mut self, key: &str, value: &T) -> serde_json::Result<&mut Self> {
        self.key(key);
        serde_json::to_writer(&mut self.b, value)?;
        Ok(self)
    }

    /// `"key":n`.
    #[inline(always)]
    pub fn u64(&mut self, key: &str, n: u64) -> &mut Self {
        self.key(key);
        self.b.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self
    }

    /// `"key":true` or `false`.
    #[inline(always)]
    pub fn bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.key(key);
        self.b.extend_from_slice(if v { b"true" } else { b"false" });
        self
    }

    /// `"key":"value"` for a value made of name characters only: a name checked against the
    /// rules of [`crate::name`] (letters, digits, `_ - . :`), a literal such as `"trigger"`, or
    /// an id's digits. Copied as it is, without looking for characters to escape — there can be
    /// none, and on names of a few bytes that look cost more than the copy. The caller vouches
    /// for the value, as it does for [`raw`](Self::raw)'s; debug builds check it.
    #[inline(always)]
    pub fn name(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        self.name_value(value);
        self
    }

    /// `"key":{"app_id":"app"}`, the app id copied as the checked name it is.
    #[inline(always)]
    pub fn origin(&mut self, key: &str, app: &crate::AppId) -> &mut Self {
        self.key(key);
        self.b.extend_from_slice(b"{\"app_id\":");
        self.name_value(app.as_str());
        self.b.push(b'}');
        self
    }

    #[inline(always)]
    fn name_value(&mut self, value: &str) {
        debug_assert!(
            value.bytes().all(crate::name::is_name_byte),
            "{value:?} is not made of name characters"
        );
        self.b.push(b'"');
        self.b.extend_from_slice(value.as_bytes());
        self.b.push(b'"');
    }

    /// Closes the object and fills in the length prefix.
    fn close(&mut self) {
        self.b.push(b'}');
        let len = (self.b.len() - self.start - 4) as u32;
        self.b[self.start..self.start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// The frame, closed (for a frame started with [`new`](Self::new)), in a buffer of its
    /// own.
    pub fn finish(&mut self) -> Bytes {
        self.finish_scratch().into_bytes()
    }

    /// The frame, closed (for a frame started with [`new`](Self::new)), still in this thread's
    /// scratch buffer: for a frame that is copied into a writer's buffer and dropped, which
    /// then costs no allocation at all.
    pub fn finish_scratch(&mut self) -> ScratchFrame {
        debug_assert_eq!(self.start, 0, "a frame started after other bytes ends with into_vec");
        self.close();
        ScratchFrame(std::mem::take(&mut self.b))
    }

    /// The buffer given to [`after`](Self::after), with this frame, closed, appended.
    pub fn into_vec(mut self) -> Vec<u8> {
        self.close();
        self.b
    }
}

/// A finished [`JsonFrame`] in the scratch buffer it was written in: its bytes (length prefix
/// included) through `Deref`. Dropping it gives the buffer back to the thread it is dropped on.
#[derive(Debug)]
pub struct ScratchFrame(Vec<u8>);

impl ScratchFrame {
    /// The frame in a buffer of its own: one allocation of exactly its size. A frame larger
    /// than the scratch buffers kept is handed over as it is, without a copy.
    pub fn into_bytes(mut self) -> Bytes {
        let b = std::mem::take(&mut self.0);
        if b.len() > SCRATCH_RETAINED {
            return Bytes::from(b);
        }
        let frame = Bytes::copy_from_slice(&b);
        SCRATCH.set(b);
        frame
    }
}

impl std::ops::Deref for ScratchFrame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for ScratchFrame {
    fn drop(&mut self) {
        if self.0.capacity() > 0 && self.0.len() <= SCRATCH_RETAINED {
            SCRATCH.set(std::mem::take(&mut self.0));
        }
    }
}

/// Largest frame [`JsonFrame::finish`] copies out of the scratch buffer, and so the largest
/// scratch buffer a thread keeps.
const SCRATCH_RETAINED: usize = 64 * 1024;

thread_local! {
    /// Where [`JsonFrame::new`] writes frames (taken while one is being written).
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Writes a binary frame (length prefix included) at the end of `out`, its body filled in by
/// `fill` (`body_len` bytes, zeroed first), with the header `header` makes from what `fill`
/// returned: for a body whose header depends on how it was read (a block's version, read with
/// its bytes). No buffer of its own for the body: a large one cost an allocation, its first
/// touch of every page, and a copy. `header` should give a header of the length `guess` does
/// (then it is written over in place); one of another length moves the body once. An `Err`
/// from `fill` leaves `out` as it was.
pub fn encode_binary_onto<T, E>(
    out: &mut Vec<u8>,
    guess: &[u8],
    body_len: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<T, E>,
    header: impl FnOnce(&T) -> Vec<u8>,
) -> Result<T, E> {
    let start = out.len();
    out.reserve(9 + guess.len() + body_len);
    out.extend_from_slice(&[0; 9]);
    out.extend_from_slice(guess);
    let at = out.len();
    out.resize(at + body_len, 0);
    let got = match fill(&mut out[at..]) {
        Ok(got) => got,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    let head = header(&got);
    let head_at = start + 9;
    if head.len() != guess.len() {
        let new_at = head_at + head.len();
        if new_at > at {
            out.resize(new_at + body_len, 0);
        }
        out.copy_within(at..at + body_len, new_at);
        out.truncate(new_at + body_len);
    }
    out[head_at..head_at + head.len()].copy_from_slice(&head);
    let payload_len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&payload_len.to_be_bytes());
    out[start + 4] = BINARY_MARKER;
    out[start + 5..start + 9].copy_from_slice(&(head.len() as u32).to_be_bytes());
    Ok(got)
}

/// Encodes a binary frame (length prefix included).
pub fn encode_binary(header: &[u8], body: &[u8]) -> Bytes {
    let payload_len = 1 + 4 + header.len() + body.len();
    let mut b = BytesMut::with_capacity(4 + payload_len);
    b.put_u32(payload_len as u32);
    b.put_u8(BINARY_MARKER);
    b.put_u32(header.len() as u32);
    b.put_slice(header);
    b.put_slice(body);
    b.freeze()
}

/// The length-prefix codec with an explicit maximum payload length.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_len: usize,
}

impl FrameCodec {
    /// A codec that refuses payloads longer than `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        Self { max_len }
    }

    /// The configured maximum.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The payload of the JSON frame at the front of `src`, if all of it is there, without
    /// taking it out: for a reader that can handle the frame where it lies (the server's calls,
    /// responses and emits) and then drops its `4 + len` bytes, with no frame split off for it.
    /// `None` for anything else — a frame not yet complete, one over the limit, an empty or a
    /// binary one — which [`decode`](Decoder::decode) then takes or refuses as usual.
    pub fn peek_json<'a>(&self, src: &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(src.get(..4)?.try_into().ok()?) as usize;
        if len > self.max_len {
            return None;
        }
        let payload = src.get(4..4 + len)?;
        payload.first().is_some_and(|&b| b != BINARY_MARKER).then_some(payload)
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_len {
            return Err(FrameError::TooLarge { len, max: self.max_len });
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let payload = src.split_to(len).freeze();
        Frame::from_payload(payload).map(Some)
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        if payload.len() > self.max_len {
            return Err(FrameError::TooLarge {
                len: payload.len(),
                max: self.max_len,
            });
        }
        dst.reserve(4 + payload.len());
        dst.put_u32(payload.len() as u32);
        dst.put_slice(payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The I/O error is told in the message and not handed on as the source as well (a report
    /// walking the chain would tell it twice).
    #[test]
    fn an_io_error_is_told_once() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let told = io.to_string();
        let e = FrameError::from(io);
        assert!(e.to_string().contains(&told), "{e}");
        assert!(std::error::Error::source(&e).is_none());
    }

    #[test]
    fn json_frame_strings_are_serdes_for_every_length_and_position() {
        // Each character that must be escaped (and some that must not: DEL, UTF-8, the bytes
        // just above the control range) at every position of strings 0 to 20 bytes long.
        for len in 0..=20 {
            for pos in 0..len.max(1) {
                for odd in [
                    "\"", "\\", "\n", "\u{0}", "\u{1f}", " ", "\u{7f}", "é", "!", "#", "[", "]",
                ] {
                    let mut s: String = "a".repeat(len);
                    if len > 0 {
                        s.replace_range(pos..pos + 1, odd);
                    }
                    let got = JsonFrame::new(0).str("k", &s).finish();
                    let want = serde_json::to_vec(&serde_json::json!({ "k": s })).unwrap();
                    assert_eq!(&got[4..], &want[..], "{s:?}");
                }
            }
        }
    }

    #[test]
    fn names_are_written_as_serde_writes_them() {
        // Every character a name may hold, and the longest name.
        let all: String = (b'0'..=b'z')
            .filter(|c| c.is_ascii_alphanumeric())
            .map(char::from)
            .chain("_-.:".chars())
            .collect();
        for name in [
            all.as_str(),
            "a",
            "trigger",
            "12345",
            &"n".repeat(crate::name::MAX_NAME_LEN),
        ] {
            let app = crate::AppId::try_from(name).unwrap();
            let got = JsonFrame::new(0).name("k", name).origin("o", &app).finish();
            let want = serde_json::to_vec(&serde_json::json!({ "k": name, "o": { "app_id": name } })).unwrap();
            assert_eq!(&got[4..], &want[..], "{name:?}");
        }
        for n in [0, 7, 42, u64::MAX] {
            let got = JsonFrame::new(0)
                .text(r#""id":""#)
                .digits(n)
                .text(r#"","n":"#)
                .digits(n)
                .finish();
            let want = serde_json::to_vec(&serde_json::json!({ "id": n.to_string(), "n": n })).unwrap();
            assert_eq!(&got[4..], &want[..]);
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "is not made of name characters")]
    fn a_name_that_needs_escaping_is_caught_in_debug_builds() {
        JsonFrame::new(0).name("k", "a\"b");
    }

    #[test]
    fn json_frames_from_the_scratch_buffer_stand_alone() {
        // Consecutive frames reuse the thread's scratch buffer: each must still hold only
        // itself, small or larger than what the scratch keeps.
        let big = "x".repeat(SCRATCH_RETAINED + 10);
        let frames: Vec<Bytes> = ["a", big.as_str(), "bc", ""]
            .iter()
            .map(|v| JsonFrame::new(0).str("k", v).finish())
            .collect();
        for (f, v) in frames.iter().zip(["a", big.as_str(), "bc", ""]) {
            let want = serde_json::to_vec(&serde_json::json!({ "k": v })).unwrap();
            assert_eq!(u32::from_be_bytes(f[..4].try_into().unwrap()) as usize, want.len());
            assert_eq!(&f[4..], &want[..]);
        }
        // A frame left in the scratch buffer holds its own bytes while the next is written
        // elsewhere, and gives the buffer back when dropped.
        let first = JsonFrame::new(0).u64("n", 1).finish_scratch();
        let second = JsonFrame::new(0).u64("n", 2).finish_scratch();
        assert_eq!(&first[..], b"\0\0\0\x07{\"n\":1}");
        assert_eq!(&second[..], b"\0\0\0\x07{\"n\":2}");
        drop(first);
        assert_eq!(&JsonFrame::new(0).u64("n", 3).finish()[..], b"\0\0\0\x07{\"n\":3}");
        assert_eq!(&second[..], b"\0\0\0\x07{\"n\":2}");
        let mut f = JsonFrame::after(b"queued".to_vec(), 0);
        f.u64("n", 7);
        let v = f.into_vec();
        assert_eq!(&v[..], b"queued\0\0\0\x07{\"n\":7}");
    }

    fn decode_all(codec: &mut FrameCodec, bytes: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(bytes);
        let mut out = vec![];
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn round_trips_json_frames_split_anywhere() {
        let a = encode_json(br#"{"action":"ping"}"#);
        let b = encode_message(&serde_json::json!({"action": "pong"}));
        let stream: Vec<u8> = [a.as_ref(), b.as_ref()].concat();
        for cut in 0..stream.len() {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::new();
            let mut got = vec![];
            for chunk in [&stream[..cut], &stream[cut..]] {
                buf.extend_from_slice(chunk);
                while let Some(f) = codec.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(got[0].json().as_ref(), br#"{"action":"ping"}"#);
            assert_eq!(got[1].json().as_ref(), br#"{"action":"pong"}"#);
        }
    }

    /// A frame written in place is the frame `encode_binary` makes of the header the body was
    /// read with — whether that header is the guess's length, longer or shorter — after what
    /// the buffer already held; a failed read leaves the buffer as it was.
    #[test]
    fn binary_frames_are_written_in_place_under_the_header_their_body_was_read_with() {
        let head = |v: &u32| format!(r#"{{"version":{v}}}"#).into_bytes();
        for (guess, read) in [(7, 8), (7, 10), (10, 7), (123, 4)] {
            let mut out = b"before".to_vec();
            let got = encode_binary_onto(
                &mut out,
                &head(&guess),
                5,
                |body| {
                    body.copy_from_slice(b"bytes");
                    Ok::<_, ()>(read)
                },
                head,
            );
            assert_eq!(got, Ok(read));
            let mut want = b"before".to_vec();
            want.extend_from_slice(&encode_binary(&head(&read), b"bytes"));
            assert_eq!(out, want, "guessed {guess}, read {read}");
        }
        let mut out = b"before".to_vec();
        let got = encode_binary_onto(&mut out, b"{}", 1 << 20, |_| Err::<u32, _>("gone"), |_| Vec::new());
        assert_eq!((got, &out[..]), (Err("gone"), &b"before"[..]));
    }

    #[test]
    fn binary_frames_carry_raw_bytes() {
        let body = [0u8, 255, 1, 2, 0];
        let f = encode_binary(br#"{"action":"x"}"#, &body);
        let got = decode_all(&mut FrameCodec::default(), &f);
        assert_eq!(
            got,
            vec![Frame::Binary {
                header: Bytes::from_static(br#"{"action":"x"}"#),
                body: Bytes::copy_from_slice(&body)
            }]
        );
    }

    #[test]
    fn oversized_length_fails_before_buffering() {
        let mut codec = FrameCodec::new(10);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 11][..]);
        match codec.decode(&mut buf) {
            Err(FrameError::TooLarge { len: 11, max: 10 }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let mut buf = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn bad_binary_header_and_empty_frames_are_errors() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::Empty)));
        let mut buf = BytesMut::from(&[0u8, 0, 0, 6, 0, 0, 0, 0, 9, b'{'][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::BadBinaryHeader { .. })
        ));
    }

    #[test]
    fn a_json_frame_is_peeked_where_it_lies_and_anything_else_left_to_decode() {
        let codec = FrameCodec::new(32);
        let ping = encode_json(br#"{"action":"ping"}"#);
        let two: Vec<u8> = [ping.as_ref(), ping.as_ref()].concat();
        assert_eq!(codec.peek_json(&two), Some(&br#"{"action":"ping"}"#[..]));
        // Not complete yet: the length, or the payload, is still to come.
        for cut in 0..ping.len() {
            assert_eq!(codec.peek_json(&ping[..cut]), None, "cut at {cut}");
        }
        // Left to `decode`, which refuses or takes them.
        assert_eq!(codec.peek_json(&[0, 0, 0, 0]), None);
        assert_eq!(codec.peek_json(&encode_binary(br#"{"action":"x"}"#, b"body")), None);
        let mut big = vec![0, 0, 0, 33];
        big.extend_from_slice(&[b'{'; 33]);
        assert_eq!(codec.peek_json(&big), None);
    }

    #[test]
    fn encoder_enforces_the_limit() {
        let mut codec = FrameCodec::new(3);
        let mut dst = BytesMut::new();
        assert!(codec.encode(&b"abcd"[..], &mut dst).is_err());
        codec.encode(&b"abc"[..], &mut dst).unwrap();
        assert_eq!(&dst[..], &[0, 0, 0, 3, b'a', b'b', b'c']);
    }
}
