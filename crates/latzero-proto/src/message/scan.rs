//! The fast path for reading a flat envelope: one strict pass over the top-level object that
//! hands each key and the text of its value to the caller, without serde's per-field machinery.
//!
//! It only ever says "no" by returning `None`, and the caller then parses the frame with serde,
//! which gives the same result or the error message. So the scanner may be stricter than serde
//! (escapes in keys, unknown keys, duplicate keys, a `null` where it is unsure — all go to serde)
//! but must never accept what serde refuses: the structure around values is parsed strictly
//! here, strings kept as `&str` are checked for control characters and UTF-8, and every value
//! kept as a [`RawValue`] is checked in full ([`Value::raw`]): by this scanner's own one-pass
//! checks, which refuse whatever they do not take (a test holds them to serde's answers), and
//! by serde for what they refuse.

use std::ops::ControlFlow;

use super::{MAX_NESTING, RawValue};

/// What a value is, by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A string; `escaped` when it holds a backslash.
    Str { escaped: bool },
    /// A number, checked against JSON's grammar.
    Number,
    /// `true`.
    True,
    /// `false`.
    False,
    /// `null`.
    Null,
    /// An array or object, balanced but not otherwise checked (keep it only through [`Value::raw`]).
    Nested,
}

/// One value of the top-level object.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Value<'a> {
    /// Its kind.
    pub kind: Kind,
    /// Its whole text (a string's with its quotes).
    pub text: &'a str,
}

impl<'a> Value<'a> {
    /// A string without escapes or control characters, as borrowed text.
    pub fn plain_str(&self) -> Option<&'a str> {
        match self.kind {
            // `string_end` refused control characters already.
            Kind::Str { escaped: false } => Some(&self.text[1..self.text.len() - 1]),
            _ => None,
        }
    }

    /// A non-negative integer that fits in a `u64`.
    pub fn u64(&self) -> Option<u64> {
        if self.kind != Kind::Number {
            return None;
        }
        // A JSON number has no `+`; a `-`, a fraction or an exponent is refused by `parse_u64`
        // (through `str::parse`).
        super::parse_u64(self.text)
    }

    /// `true` or `false`.
    pub fn bool(&self) -> Option<bool> {
        match self.kind {
            Kind::True => Some(true),
            Kind::False => Some(false),
            _ => None,
        }
    }

    /// The value as a [`RawValue`] (`None` if serde refuses it). Numbers, literals and plain
    /// strings are already checked in full by this scanner and skip serde's pass over them;
    /// escaped strings, arrays and objects are checked here in one pass ([`string_valid`],
    /// [`nested_valid`]), and serde judges only what that pass does not take.
    pub fn raw(&self) -> Option<&'a RawValue> {
        let (b, len) = (self.text.as_bytes(), self.text.len());
        let checked = match self.kind {
            Kind::Str { escaped: false } => self.plain_str().is_some(),
            Kind::Number | Kind::True | Kind::False | Kind::Null => true,
            Kind::Str { escaped: true } => string_valid(b, 0) == Some(len),
            Kind::Nested => nested_valid(b, 0) == Some(len),
        };
        checked
            .then(|| checked_raw(self.text))
            .flatten()
            .or_else(|| deep_raw(self.text))
    }
}

/// `text` as a [`RawValue`] checked by serde, for what the scanner's own pass does not take
/// (nesting deeper than 64 among it), and nesting at most [`MAX_NESTING`] deep: serde's raw
/// values have no limit of their own, and a payload no client can parse must not be forwarded.
fn deep_raw(text: &str) -> Option<&RawValue> {
    let raw = serde_json::from_str::<&RawValue>(text).ok()?;
    nests_within(text.as_bytes(), MAX_NESTING).then_some(raw)
}

/// `text`, already known to be one valid JSON value, as a [`RawValue`] without validating it
/// again. It speaks serde_json's own protocol for handing a raw value over from another
/// deserialiser: a map of one entry, keyed by serde_json's token, whose value is the borrowed
/// JSON text. Should serde_json ever change that protocol this returns `None`, and
/// [`Value::raw`] validates with serde as before (a test watches for it).
pub(crate) fn checked_raw(text: &str) -> Option<&RawValue> {
    use serde::Deserialize;
    use serde::de::value::{BorrowedStrDeserializer, Error, MapDeserializer};
    const TOKEN: &str = "$serde_json::private::RawValue";
    let entry = (BorrowedStrDeserializer::new(TOKEN), BorrowedStrDeserializer::new(text));
    <&RawValue>::deserialize(MapDeserializer::<_, Error>::new(std::iter::once(entry))).ok()
}

/// `text` as a [`RawValue`] if it is exactly one JSON value (no whitespace around it), checked
/// as the object walk below checks a field's value; `None` otherwise.
pub(crate) fn one_value(text: &str) -> Option<(&RawValue, Kind)> {
    let b = text.as_bytes();
    // An array or an object is checked in full in one pass; what that pass does not take (it
    // says no rather than be unsure) goes to serde, which finds the end as it validates.
    if let Some(b'[' | b'{') = b.first() {
        if nested_valid(b, 0) == Some(b.len())
            && let Some(raw) = checked_raw(text)
        {
            return Some((raw, Kind::Nested));
        }
        let raw = deep_raw(text)?;
        // serde allows whitespace after the value; this does not.
        return (raw.get().len() == text.len()).then_some((raw, Kind::Nested));
    }
    let (end, kind) = value_end(b, 0)?;
    if end != b.len() {
        return None;
    }
    Some((Value { kind, text }.raw()?, kind))
}

/// See [`super::spans_one_value`].
pub(crate) fn spans_one_value(text: &str) -> bool {
    value_end(text.as_bytes(), 0).is_some_and(|(end, _)| end == text.len())
}

/// Walks a flat JSON object, calling `field` with every key and value in order. `None` when the
/// text is not an object this scanner reads (the caller falls back to serde), or when `field`
/// says `None`.
pub(crate) fn object<'a>(json: &'a [u8], mut field: impl FnMut(&'a str, Value<'a>) -> Option<()>) -> Option<()> {
    // The whole text checked for UTF-8 once here keeps every slice below a valid `&str`
    // (simdutf8: a frame's worth of ASCII in a few vector steps, where std goes a word or two
    // at a time).
    let text = simdutf8::basic::from_utf8(json).ok()?;
    let b = text.as_bytes();
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return (ws(b, i + 1) == b.len()).then_some(());
    }
    loop {
        // "key"
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let (end, escaped) = string_end(b, i)?;
        if escaped {
            return None;
        }
        let key = &text[i + 1..end - 1];
        i = ws(b, end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = ws(b, i + 1);
        let (end, kind) = value_end(b, i)?;
        field(
            key,
            Value {
                kind,
                text: &text[i..end],
            },
        )?;
        i = ws(b, end);
        match b.get(i) {
            Some(b',') => i = ws(b, i + 1),
            Some(b'}') => return (ws(b, i + 1) == b.len()).then_some(()),
            _ => return None,
        }
    }
}

/// Skips JSON whitespace from `i`.
fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// The end (one past the closing quote) of the string starting at `b[i] == '"'`, and whether it
/// holds escapes. `None` for a control character in it: JSON does not allow one there (serde
/// then says so).
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        // One pass finds the closing quote or the next escape, and refuses a control
        // character in the bytes passed over.
        j += special(&b[j..])?;
        match b[j] {
            b'"' => return Some((j + 1, escaped)),
            b'\\' => {
                escaped = true;
                j += 2;
                if j > b.len() {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// The first `"`, `\\` or control character (below 0x20) in `b`, sixteen bytes to a vector (one
/// SSE2 register on x86-64, through `wide`; plain arrays elsewhere): sixty-four bytes a step
/// while nothing is found, then sixteen, then the last sixteen again; a `b` shorter than
/// sixteen bytes eight at a time. Measured against the SWAR head and `memchr2` tail this
/// replaced: 2.8× faster for a 64-byte payload, 1.15× for 4 KiB.
fn special(b: &[u8]) -> Option<usize> {
    let hits = |c: &[u8]| hits(c.try_into().expect("sixteen bytes"));
    let mut at = 0;
    let mut steps = b.chunks_exact(64);
    for c in &mut steps {
        let (h0, h1, h2, h3) = (hits(&c[..16]), hits(&c[16..32]), hits(&c[32..48]), hits(&c[48..]));
        if (h0 | h1 | h2 | h3).to_bitmask() != 0 {
            let m = u64::from(h0.to_bitmask())
                | u64::from(h1.to_bitmask()) << 16
                | u64::from(h2.to_bitmask()) << 32
                | u64::from(h3.to_bitmask()) << 48;
            return Some(at + m.trailing_zeros() as usize);
        }
        at += 64;
    }
    let mut chunks = steps.remainder().chunks_exact(16);
    for c in &mut chunks {
        let m = hits(c).to_bitmask();
        if m != 0 {
            return Some(at + m.trailing_zeros() as usize);
        }
        at += 16;
    }
    let rest = chunks.remainder().len();
    if rest == 0 {
        return None;
    }
    if b.len() >= 16 {
        // The last sixteen bytes, of which the first `16 - rest` were checked above.
        let m = hits(&b[b.len() - 16..]).to_bitmask() >> (16 - rest);
        return (m != 0).then(|| at + m.trailing_zeros() as usize);
    }
    special_short(b)
}

/// All ones in each lane of `c` whose byte is a quote, a backslash or at most 0x1f (`min` is
/// unsigned, so bytes of 0x80 and up are not taken for control characters).
#[inline(always)]
fn hits(c: [u8; 16]) -> wide::u8x16 {
    use wide::u8x16;
    let v = u8x16::new(c);
    v.simd_eq(u8x16::splat(b'"')) | v.simd_eq(u8x16::splat(b'\\')) | v.min(u8x16::splat(0x1f)).simd_eq(v)
}

/// [`special`] for text where the byte is likely near, as in the keys and short strings of an
/// object: the first sixteen bytes in one vector before `special`'s steps of sixty-four (which
/// cost ~50 instructions where one vector costs ~10).
fn special_soon(b: &[u8]) -> Option<usize> {
    let Some(first) = b.first_chunk::<16>() else {
        return special(b);
    };
    let m = hits(*first).to_bitmask();
    if m != 0 {
        return Some(m.trailing_zeros() as usize);
    }
    special(&b[16..]).map(|k| k + 16)
}

/// [`special`] for fewer than sixteen bytes, eight at a time (SWAR).
fn special_short(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // High bit set in each byte of `w` equal to `c`, or below 0x20; a false positive can only
    // sit above a true match (the borrow runs upwards), so the lowest set bit is exact.
    let eq = |w: u64, c: u8| {
        let x = w ^ (ONES * u64::from(c));
        x.wrapping_sub(ONES) & !x & HIGHS
    };
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("eight bytes"));
        let m = eq(w, b'"') | eq(w, b'\\') | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS);
        if m != 0 {
            return Some(at + (m.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|k| at + k)
}

/// The end of the value starting at `i`, and its kind.
fn value_end(b: &[u8], i: usize) -> Option<(usize, Kind)> {
    match *b.get(i)? {
        b'"' => string_end(b, i).map(|(end, escaped)| (end, Kind::Str { escaped })),
        b'-' | b'0'..=b'9' => number_end(b, i).map(|end| (end, Kind::Number)),
        b't' => literal(b, i, b"true", Kind::True),
        b'f' => literal(b, i, b"false", Kind::False),
        b'n' => literal(b, i, b"null", Kind::Null),
        b'[' | b'{' => nested_end(b, i).map(|end| (end, Kind::Nested)),
        _ => None,
    }
}

fn literal(b: &[u8], i: usize, word: &[u8], kind: Kind) -> Option<(usize, Kind)> {
    b[i..].starts_with(word).then_some((i + word.len(), kind))
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |i: usize| i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    if b[i] == b'-' {
        i += 1;
    }
    match b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

/// The end of the array or object starting at `i`: brackets balanced outside strings. Whether
/// the inside is valid JSON is left to [`Value::raw`] (or, in the SDK, to the server that
/// checked it), so control characters in its strings are not looked for here.
///
/// Sixty-four bytes a step, the way simdjson finds structure: a bit per byte for quotes and for
/// brackets, the bits inside strings found as the running XOR of the quote bits, and only the
/// brackets outside them visited. A step holding a backslash is walked byte by byte instead
/// (an escaped quote is not a quote). Against the byte-by-byte walk with [`string_end`] for
/// each string it replaced: 9.4k instructions for a 4,049-byte array of objects, not 68k.
fn nested_end(b: &[u8], i: usize) -> Option<usize> {
    nested_walk(b, i, &mut Walk::new(usize::MAX))
}

/// Whether the JSON text `b` nests arrays and objects at most `max` levels deep (brackets
/// outside strings counted; a scalar is 0 deep). Stops as soon as it goes past `max`.
pub(crate) fn nests_within(b: &[u8], max: usize) -> bool {
    let i = ws(b, 0);
    if !matches!(b.get(i), Some(b'[' | b'{')) {
        return true;
    }
    let mut walk = Walk::new(max);
    nested_walk(b, i, &mut walk);
    !walk.too_deep
}

/// [`nested_end`], with `walk`'s limit on the depth (`None`, and `too_deep` set, past it).
fn nested_walk(b: &[u8], i: usize, walk: &mut Walk) -> Option<usize> {
    use wide::u8x16;
    let mut at = i;
    while at < b.len() {
        let n = (b.len() - at).min(64);
        // A last step short of sixty-four bytes is padded with spaces, which are neither quotes
        // nor brackets.
        let mut padded = [b' '; 64];
        let block = if n == 64 {
            &b[at..at + 64]
        } else {
            padded[..n].copy_from_slice(&b[at..]);
            &padded[..]
        };
        let v: [u8x16; 4] =
            std::array::from_fn(|k| u8x16::new(block[16 * k..16 * k + 16].try_into().expect("sixteen bytes")));
        if bits(&v, |x| x.simd_eq(u8x16::splat(b'\\'))) != 0 {
            match walk.bytes(b, &mut at, n) {
                ControlFlow::Break(end) => return end,
                ControlFlow::Continue(()) => continue,
            }
        }
        let quotes = bits(&v, |x| x.simd_eq(u8x16::splat(b'"')));
        // `[` and `{` differ from each other only in bit 0x20, as `]` and `}` do.
        let opens = bits(&v, |x| (x | u8x16::splat(0x20)).simd_eq(u8x16::splat(b'{')));
        let closes = bits(&v, |x| (x | u8x16::splat(0x20)).simd_eq(u8x16::splat(b'}')));
        // Set from each string's opening quote up to (not including) its closing one.
        let mut inside = prefix_xor(quotes);
        if walk.in_string {
            inside = !inside;
        }
        let mut brackets = (opens | closes) & !inside;
        while brackets != 0 {
            let k = brackets.trailing_zeros();
            if closes >> k & 1 == 1 {
                walk.depth = walk.depth.checked_sub(1)?;
                if walk.depth == 0 {
                    return Some(at + k as usize + 1);
                }
            } else {
                walk.open()?;
            }
            brackets &= brackets - 1;
        }
        walk.in_string = inside >> 63 == 1;
        at += n;
    }
    None
}

/// The end of the array or object starting at `b[i]` if it is valid JSON throughout — every
/// string closed, free of control characters and with only JSON's escapes, every number in
/// JSON's grammar, commas and colons where they belong — as serde_json checks a raw value
/// (which does not look at what a `\u` escape encodes either). `None` for anything else, and
/// also for nesting deeper than 64, which is left to serde: the caller then asks serde, so this
/// may refuse what serde takes but must never take what serde refuses (a test compares them).
/// Strings, most of a payload's bytes, are searched sixteen bytes at once ([`special_soon`]);
/// serde goes a byte at a time. A 4 KiB array of small objects: ~65k instructions, serde ~79k.
fn nested_valid(b: &[u8], i: usize) -> Option<usize> {
    // One bit per open container, set for an object; the lowest is the innermost.
    let mut stack = 0u64;
    let mut depth = 0u32;
    let mut j = i;
    // At the start of a value.
    'value: loop {
        j = ws(b, j);
        match *b.get(j)? {
            b'"' => j = string_valid(b, j)?,
            b'-' | b'0'..=b'9' => j = number_end(b, j)?,
            b't' => j = literal(b, j, b"true", Kind::True)?.0,
            b'f' => j = literal(b, j, b"false", Kind::False)?.0,
            b'n' => j = literal(b, j, b"null", Kind::Null)?.0,
            open @ (b'[' | b'{') => {
                if depth == 64 {
                    return None;
                }
                depth += 1;
                let object = open == b'{';
                stack = stack << 1 | u64::from(object);
                j = ws(b, j + 1);
                let close = if object { b'}' } else { b']' };
                if b.get(j) == Some(&close) {
                    j += 1;
                    depth -= 1;
                    stack >>= 1;
                } else if object {
                    j = key(b, j)?;
                    continue 'value;
                } else {
                    continue 'value;
                }
            }
            _ => return None,
        }
        // After a value: the next one, or the end of its container (and then of the ones
        // around it).
        loop {
            if depth == 0 {
                return Some(j);
            }
            j = ws(b, j);
            let object = stack & 1 == 1;
            match (*b.get(j)?, object) {
                (b',', false) => {
                    j += 1;
                    continue 'value;
                }
                (b',', true) => {
                    j = key(b, ws(b, j + 1))?;
                    continue 'value;
                }
                (b']', false) | (b'}', true) => {
                    j += 1;
                    depth -= 1;
                    stack >>= 1;
                }
                _ => return None,
            }
        }
    }
}

/// A key at `b[j]` and the colon after it; where its value starts.
fn key(b: &[u8], j: usize) -> Option<usize> {
    if b.get(j) != Some(&b'"') {
        return None;
    }
    let j = ws(b, string_valid(b, j)?);
    (b.get(j) == Some(&b':')).then_some(j + 1)
}

/// The end of the string starting at `b[i] == '"'` if it is valid JSON: no control character,
/// and every escape one of `\" \\ \/ \b \f \n \r \t` or `\u` and four hex digits.
fn string_valid(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        j += special_soon(&b[j..])?;
        match b[j] {
            b'"' => return Some(j + 1),
            b'\\' => match *b.get(j + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j += 2,
                b'u' if b.get(j + 2..j + 6)?.iter().all(u8::is_ascii_hexdigit) => j += 6,
                _ => return None,
            },
            _ => return None,
        }
    }
}

/// Where [`nested_end`] is, between its steps.
struct Walk {
    depth: usize,
    in_string: bool,
    /// The deepest nesting taken; an opening bracket past it ends the walk.
    max: usize,
    too_deep: bool,
}

impl Walk {
    fn new(max: usize) -> Walk {
        Walk {
            depth: 0,
            in_string: false,
            max,
            too_deep: false,
        }
    }

    /// An array or object opens: `None` (and `too_deep`) past the limit.
    #[inline(always)]
    fn open(&mut self) -> Option<()> {
        self.depth += 1;
        self.too_deep = self.depth > self.max;
        (!self.too_deep).then_some(())
    }

    /// Walks `n` bytes from `*at` one by one (a step holding a backslash): `Break` with the end
    /// of the value if it is among them (`None` for a closing bracket with none open), else
    /// `Continue` with `*at` past them, or one further when the last was a backslash in a
    /// string (the byte it escapes is skipped).
    fn bytes(&mut self, b: &[u8], at: &mut usize, n: usize) -> ControlFlow<Option<usize>> {
        let end = *at + n;
        while *at < end {
            let c = b[*at];
            if self.in_string {
                match c {
                    b'\\' => *at += 1,
                    b'"' => self.in_string = false,
                    _ => {}
                }
            } else {
                match c {
                    b'"' => self.in_string = true,
                    b'[' | b'{' => {
                        let Some(()) = self.open() else {
                            return ControlFlow::Break(None);
                        };
                    }
                    b']' | b'}' => {
                        let Some(depth) = self.depth.checked_sub(1) else {
                            return ControlFlow::Break(None);
                        };
                        self.depth = depth;
                        if depth == 0 {
                            return ControlFlow::Break(Some(*at + 1));
                        }
                    }
                    _ => {}
                }
            }
            *at += 1;
        }
        ControlFlow::Continue(())
    }
}

/// One bit per byte of the four vectors (sixty-four bytes): set where `f` set the lane.
#[inline(always)]
fn bits(v: &[wide::u8x16; 4], f: impl Fn(wide::u8x16) -> wide::u8x16) -> u64 {
    v.iter()
        .enumerate()
        .fold(0, |m, (k, &x)| m | u64::from(f(x).to_bitmask()) << (16 * k))
}

/// Each bit set to the XOR of itself and every bit below it.
fn prefix_xor(mut x: u64) -> u64 {
    for shift in [1, 2, 4, 8, 16, 32] {
        x ^= x << shift;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Option<Vec<(String, Kind, String)>> {
        let mut out = vec![];
        object(json.as_bytes(), |k, v| {
            out.push((k.to_owned(), v.kind, v.text.to_owned()));
            Some(())
        })?;
        Some(out)
    }

    #[test]
    fn finds_the_first_special_byte_at_every_offset() {
        for len in 0..150 {
            for at in 0..=len {
                for c in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    // Bytes just above and below the targets (0x20 is the first that is not a
                    // control character), the targets with their high bit set (a signed compare
                    // would take those for control characters), and one whose borrow could make
                    // a false match appear above a true one. Lengths up to 150 cover the steps of
                    // sixty-four and of sixteen, the overlapping last sixteen, and the short path.
                    let mut b: Vec<u8> = (0..len)
                        .map(|i| [b'!', b'#', b'[', b']', 0x20, 0x80, 0xa2, 0xdc, 0x9f][i % 9])
                        .collect();
                    let want = (at < len).then(|| {
                        b[at] = c;
                        if at + 1 < len {
                            b[at + 1] = b'"' ^ 1;
                        }
                        // A later hit, in the same step or a later one, must not win.
                        if at + 19 < len {
                            b[at + 19] = b'"';
                        }
                        at
                    });
                    assert_eq!(special(&b), want, "len {len} at {at} c {c}");
                }
            }
        }
    }

    /// A xorshift generator of numbers below `n`, from `seed`: the same texts on every run.
    fn random(mut x: u64) -> impl FnMut(usize) -> usize {
        move |n| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        }
    }

    /// The outline walk one byte at a time: what `nested_end` must agree with.
    fn nested_end_by_bytes(b: &[u8], i: usize) -> Option<usize> {
        let (mut depth, mut in_string, mut k) = (0usize, false, i);
        while k < b.len() {
            match (in_string, b[k]) {
                (true, b'\\') => k += 1,
                (true, b'"') | (false, b'"') => in_string = !in_string,
                (false, b'[' | b'{') => depth += 1,
                (false, b']' | b'}') => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some(k + 1);
                    }
                }
                _ => {}
            }
            k += 1;
        }
        None
    }

    #[test]
    fn nested_end_agrees_with_the_byte_walk_at_every_length() {
        // Random nesting, up to several steps of sixty-four long, whose strings hold quotes and
        // backslashes escaped (and brackets), so that strings, escapes and brackets fall on and
        // across the steps' edges; some texts then lose a byte or their tail.
        let mut next = random(0x9e37_79b9_7f4a_7c15u64);
        for round in 0..20_000 {
            let target = 1 + next(400);
            let mut b = vec![b"[{"[next(2)]];
            let mut depth = 1;
            while b.len() < target {
                match next(10) {
                    0..=2 => {
                        b.push(b"[{"[next(2)]);
                        depth += 1;
                    }
                    3 | 4 if depth > 1 => {
                        b.push(b"]}"[next(2)]);
                        depth -= 1;
                    }
                    5..=7 => {
                        b.push(b'"');
                        for _ in 0..next(80) {
                            match next(8) {
                                0 => b.extend_from_slice(&[b'\\', b"\"\\n/"[next(4)]]),
                                1 => b.push(b"[]{}"[next(4)]),
                                _ => b.push(b'a'),
                            }
                        }
                        b.push(b'"');
                    }
                    _ => b.extend_from_slice(b"1, "),
                }
            }
            b.extend((0..depth).map(|_| b'}'));
            match round % 4 {
                1 => {
                    let k = 1 + next(b.len() - 1);
                    b.remove(k);
                }
                2 => b.truncate(1 + next(b.len() - 1)),
                _ => {}
            }
            let want = nested_end_by_bytes(&b, 0);
            if round % 4 == 0 {
                assert_eq!(want, Some(b.len()));
            }
            assert_eq!(nested_end(&b, 0), want, "{}", String::from_utf8_lossy(&b));
        }
    }

    #[test]
    fn nested_end_finds_the_end_of_real_json() {
        let long = "q\"[]{}\\".repeat(40);
        for v in [
            serde_json::json!([]),
            serde_json::json!({"a": [1, {"b": "]"}], "c": "\"}"}),
            serde_json::json!([long, {"k": long}, [[[long]]]]),
            serde_json::json!(
                (0..100)
                    .map(|i| serde_json::json!({"id": i, "s": "}]\"\\"}))
                    .collect::<Vec<_>>()
            ),
        ] {
            let text = v.to_string();
            for tail in ["", "}", "]", ",\"x\":1}", "   "] {
                let t = format!("{text}{tail}");
                assert_eq!(nested_end(t.as_bytes(), 0), Some(text.len()), "{t}");
                let shifted = format!(" :{t}");
                assert_eq!(nested_end(shifted.as_bytes(), 2), Some(text.len() + 2), "{shifted}");
            }
            assert_eq!(nested_end(&text.as_bytes()[..text.len() - 1], 0), None);
        }
    }

    /// A random JSON value's text, nested up to `depth`, with strings holding escapes, control
    /// characters escaped, non-ASCII text and brackets, and whitespace between tokens.
    fn random_json(next: &mut impl FnMut(usize) -> usize, depth: usize, out: &mut String) {
        let ws = |next: &mut dyn FnMut(usize) -> usize, out: &mut String| {
            if next(4) == 0 {
                out.push_str([" ", "\n", "\t ", "\r\n  "][next(4)]);
            }
        };
        let string = |next: &mut dyn FnMut(usize) -> usize, out: &mut String| {
            out.push('"');
            for _ in 0..next(12) {
                out.push_str(
                    [
                        "a", "key", "é", "→", "[", "}", ",", ":", r#"\""#, r"\\", r"\/", r"\b", r"\n", r"\t",
                        r"\u00e9", r"\uD800", r"\u001F", " ",
                    ][next(18)],
                );
            }
            out.push('"');
        };
        match if depth == 0 { next(4) } else { next(6) } {
            0 => string(next, out),
            1 => out.push_str(
                [
                    "0",
                    "-0",
                    "12",
                    "-3.25",
                    "1e9",
                    "2.5E-3",
                    "1e+2",
                    "98765432109876543210",
                ][next(8)],
            ),
            2 => out.push_str(["true", "false", "null"][next(3)]),
            3 => out.push_str(["[]", "{}", "[ ]", "{ }"][next(4)]),
            4 => {
                out.push('[');
                for k in 0..1 + next(4) {
                    if k > 0 {
                        out.push(',');
                    }
                    ws(next, out);
                    random_json(next, depth - 1, out);
                    ws(next, out);
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                for k in 0..1 + next(4) {
                    if k > 0 {
                        out.push(',');
                    }
                    ws(next, out);
                    string(next, out);
                    ws(next, out);
                    out.push(':');
                    ws(next, out);
                    random_json(next, depth - 1, out);
                    ws(next, out);
                }
                out.push('}');
            }
        }
    }

    #[test]
    fn the_one_pass_checks_never_take_what_serde_refuses() {
        let mut next = random(0x2545_f491_4f6c_dd1du64);
        let serde_takes = |t: &str| serde_json::from_str::<&RawValue>(t).is_ok_and(|r| r.get().len() == t.len());
        let (mut taken, mut refused) = (0, 0);
        for round in 0..40_000 {
            let mut text = String::new();
            let depth = next(5);
            if round % 5 == 0 {
                // A value of any kind at the top (a string with escapes, a number...).
                random_json(&mut next, depth, &mut text);
            } else {
                text.push_str(["[", "{\"k\":"][next(2)]);
                random_json(&mut next, depth, &mut text);
                text.push_str(if text.starts_with('[') { "]" } else { "}" });
                assert_eq!(nested_valid(text.as_bytes(), 0), Some(text.len()), "{text}");
            }
            assert!(serde_takes(&text), "{text}");
            assert!(one_value(&text).is_some(), "{text}");
            // Then damaged: a byte replaced, dropped or put in, from the ones that matter.
            let mut b = text.into_bytes();
            for _ in 0..1 + round % 3 {
                let at = next(b.len());
                let c = b"[]{}\",:\\ \t0123456789-+.eEtrufalsnu/bx\x01\x1f"[next(37)];
                match next(3) {
                    0 => b[at] = c,
                    1 => {
                        b.remove(at);
                    }
                    _ => b.insert(at, c),
                }
                if b.is_empty() {
                    b.push(b'[');
                }
            }
            let Ok(t) = std::str::from_utf8(&b) else { continue };
            // What the server runs on a payload, and what the envelope scan runs on a field.
            assert_eq!(one_value(t).is_some(), serde_takes(t), "{t}");
            if let Some((end, kind)) = value_end(&b, 0)
                && end == b.len()
            {
                assert_eq!(Value { kind, text: t }.raw().is_some(), serde_takes(t), "{t}");
            }
            if !matches!(b[0], b'[' | b'{') {
                continue;
            }
            if nested_valid(&b, 0) == Some(b.len()) {
                assert!(serde_takes(t), "taken here, refused by serde: {t}");
                taken += 1;
            } else {
                assert!(!serde_takes(t), "refused here, taken by serde: {t}");
                refused += 1;
            }
        }
        // Nothing here is nested deeper than 64, so this agrees with serde both ways; and the
        // damage left both kinds of text.
        assert!(taken > 1000 && refused > 1000, "{taken} taken, {refused} refused");
    }

    #[test]
    fn nested_valid_leaves_deep_nesting_to_serde() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(nested_valid(deep(64).as_bytes(), 0), Some(128));
        assert_eq!(nested_valid(deep(65).as_bytes(), 0), None);
        // one_value still answers, through serde.
        assert!(one_value(&deep(65)).is_some());
        assert!(one_value(&deep(65)[1..]).is_none());
    }

    /// Past MAX_NESTING a value is refused, by the one-pass check and by serde's alike (serde's
    /// raw values take any depth); a field's value too.
    #[test]
    fn nesting_past_the_limit_is_refused() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let objects = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
        for n in [MAX_NESTING, MAX_NESTING + 1, 100_000] {
            let within = n <= MAX_NESTING;
            assert_eq!(one_value(&deep(n)).is_some(), within, "{n}");
            assert_eq!(one_value(&objects(n)).is_some(), within, "{n}");
            let field = format!(r#"{{"a":{}}}"#, deep(n));
            let mut raw = None;
            object(field.as_bytes(), |_, v| {
                raw = Some(v.raw().is_some());
                Some(())
            });
            assert_eq!(raw, Some(within), "{n}");
        }
    }

    #[test]
    fn nests_within_counts_brackets_outside_strings() {
        for (text, depth) in [
            ("1", 0),
            (r#""[[[""#, 0),
            ("[]", 1),
            (r#"[{"a":[1]},[]]"#, 3),
            (r#"["]]]\"[[[", {"k\\]": [[]]}]"#, 4),
            // A backslash in the step walks it byte by byte: the same count.
            (r#"[[[["\\", "\"[", [[[[ ]]]] ]]]]"#, 8),
        ] {
            assert!(nests_within(text.as_bytes(), depth), "{text} within {depth}");
            assert!(
                !nests_within(text.as_bytes(), depth.saturating_sub(1)) || depth == 0,
                "{text}"
            );
        }
        let long = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert!(nests_within(long.as_bytes(), 1000));
        assert!(!nests_within(long.as_bytes(), 999));
    }

    #[test]
    fn one_value_checks_the_value_in_full() {
        for (one, kind) in [
            (r#""x""#, Kind::Str { escaped: false }),
            (r#""a\"b""#, Kind::Str { escaped: true }),
            ("-1.5e+3", Kind::Number),
            ("null", Kind::Null),
            ("[]", Kind::Nested),
            (r#"{"a":[1,{"b":"]}"}],"c":"\"}"}"#, Kind::Nested),
        ] {
            let (raw, k) = one_value(one).unwrap_or_else(|| panic!("{one}"));
            assert_eq!((raw.get(), k), (one, kind));
        }
        for not_one in [
            "",
            " 1",
            "1 ",
            "[1] ",
            " [1]",
            "[1]x",
            "[1],[2]",
            "[1,,2]",
            r#"{"a" 1}"#,
            r#"{"a":tru}"#,
            r#"{"y":1},"origin":{"app_id":"a"}"#,
            r#""\q""#,
            "01",
        ] {
            assert!(one_value(not_one).is_none(), "{not_one}");
        }
    }

    #[test]
    fn spans_one_value_by_its_outline() {
        for one in [
            r#""x""#,
            r#""a\"b""#,
            "-1.5e+3",
            "0",
            "true",
            "false",
            "null",
            "[]",
            r#"{"a":[1,{"b":"]}"}],"c":"\"}"}"#,
            // The outline only: a frame of valid JSON never holds these.
            "[1,,2]",
            r#"{"a" 1}"#,
        ] {
            assert!(spans_one_value(one), "{one}");
        }
        for not_one in [
            "",
            " 1",
            "1 ",
            "1,2",
            r#""x"}"#,
            r#""x","origin":{"app_id":"a"}"#,
            r#"{"y":1},"origin":{"app_id":"a"}"#,
            r#"{"a":1"#,
            r#""open"#,
            "01",
            "tru",
            "x",
        ] {
            assert!(!spans_one_value(not_one), "{not_one}");
        }
    }

    #[test]
    fn reads_every_kind_of_value() {
        let got =
            fields(r#" { "a" : "x\"y" , "b":-1.5e+3,"c":true,"d":false,"e":null,"f":[1,{"g":"]"}],"h":{} } "#).unwrap();
        let kinds: Vec<_> = got
            .iter()
            .map(|(k, kind, text)| (k.as_str(), *kind, text.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("a", Kind::Str { escaped: true }, r#""x\"y""#),
                ("b", Kind::Number, "-1.5e+3"),
                ("c", Kind::True, "true"),
                ("d", Kind::False, "false"),
                ("e", Kind::Null, "null"),
                ("f", Kind::Nested, r#"[1,{"g":"]"}]"#),
                ("h", Kind::Nested, "{}"),
            ]
        );
        assert_eq!(fields("{}").unwrap(), []);
        // Past the short-string loop: an escape and the closing quote far into a long string.
        let long = format!(r#"{{"a":"{}\"{}","b":1}}"#, "x".repeat(50), "y".repeat(100));
        let got = fields(&long).unwrap();
        assert_eq!(got[0].1, Kind::Str { escaped: true });
        assert_eq!(got[0].2.len(), 50 + 2 + 100 + 2);
        assert_eq!(got[1].2, "1");
    }

    #[test]
    fn refuses_what_is_not_one_flat_object() {
        for bad in [
            "",
            "[]",
            "{",
            "{}x",
            "{} {}",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":1e}"#,
            r#"{"a":-}"#,
            r#"{"a":tru}"#,
            r#"{"a":"x}"#,
            r#"{"a":"x\"}"#,
            r#"{"a\"":1}"#,
            r#"{"a":[1,2}"#,
            r#"{"a":+1}"#,
        ] {
            assert!(fields(bad).is_none(), "accepted {bad:?}");
        }
        assert!(object(b"{\"a\":\"\xff\"}", |_, _| Some(())).is_none());
    }

    #[test]
    fn values_convert_only_when_exact() {
        let v = |json: &'static str| {
            let mut out = None;
            object(json.as_bytes(), |_, v| {
                out = Some(v);
                Some(())
            })
            .unwrap();
            out.unwrap()
        };
        assert_eq!(v(r#"{"a":"echo"}"#).plain_str(), Some("echo"));
        assert_eq!(v(r#"{"a":"e\n"}"#).plain_str(), None);
        // A control character stops the walk, wherever it is in the string: in the first
        // sixteen bytes, in a later sixteen or sixty-four, across the end of one, and after an
        // escape.
        for at in [0, 1, 15, 16, 17, 31, 32, 63, 64, 65, 100, 127, 128, 129, 200] {
            for c in ["\t", "\n", "\u{0}", "\u{1f}"] {
                let json = format!("{{\"a\":\"{}{c}x\"}}", "y".repeat(at));
                assert!(object(json.as_bytes(), |_, _| Some(())).is_none(), "at {at}");
                let json = format!("{{\"a\":\"{}\\\"{}{c}x\"}}", "y".repeat(at), "z".repeat(at));
                assert!(object(json.as_bytes(), |_, _| Some(())).is_none(), "escaped, at {at}");
            }
        }
        assert_eq!(v(r#"{"a":30000}"#).u64(), Some(30000));
        assert_eq!(v(r#"{"a":-1}"#).u64(), None);
        assert_eq!(v(r#"{"a":1.0}"#).u64(), None);
        assert_eq!(v(r#"{"a":99999999999999999999}"#).u64(), None);
        assert_eq!(v(r#"{"a":true}"#).bool(), Some(true));
        assert_eq!(v(r#"{"a":[1,{"b":null}]}"#).raw().unwrap().get(), r#"[1,{"b":null}]"#);
        assert!(v(r#"{"a":[1 2]}"#).raw().is_none());
        assert!(v(r#"{"a":{"b"}}"#).raw().is_none());
        assert_eq!(v(r#"{"a":"x\u0041"}"#).raw().unwrap().get(), r#""x\u0041""#);
        assert!(v(r#"{"a":"x\q"}"#).raw().is_none());
    }

    #[test]
    fn checked_values_become_raw_values_without_serde() {
        // If serde_json changed its raw-value protocol, `raw` would still be right (through
        // serde) but slower: this says so.
        for json in [r#""echo""#, "-1.5e3", "0", "true", "false", "null", r#""""#] {
            assert_eq!(checked_raw(json).map(RawValue::get), Some(json));
        }
    }
}
