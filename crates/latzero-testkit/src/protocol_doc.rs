//! PROTOCOL.md's examples, for the tests that hold the spec to the code: the proto crate's
//! (each request example parses; edits of each never panic) and the server's (each example of a
//! server frame shows only what a real server sends).

use serde_json::Value;

/// PROTOCOL.md, as built in.
pub const PROTOCOL: &str = include_str!("../../../docs/PROTOCOL.md");

/// One example: a JSON object of PROTOCOL.md that opens with `"action"`.
pub struct Example {
    /// Its line in PROTOCOL.md.
    pub line: usize,
    /// Its text, `...` elisions taken out.
    pub text: String,
    /// Its value.
    pub value: Value,
}

impl Example {
    /// The example's `action`.
    pub fn action(&self) -> &str {
        self.value["action"].as_str().unwrap_or_default()
    }

    /// Whether it shows a frame a client sends: a request action's, except an answer (with
    /// `in_reply_to`) or a delivered trigger or emit. A `response` is both: what a handler
    /// sends is a part of what its caller receives.
    pub fn sent_by_client(&self) -> bool {
        is_request_action(self.action()) && (self.action() == "response" || !self.answers() && !self.delivered())
    }

    /// Whether it shows a frame the server sends: an answer, what a caller receives
    /// (`response`), a delivered trigger or emit, or an action no client may send.
    pub fn sent_by_server(&self) -> bool {
        self.answers() || self.action() == "response" || self.delivered() || !is_request_action(self.action())
    }

    fn answers(&self) -> bool {
        self.value.get("in_reply_to").is_some()
    }

    /// A trigger or emit as delivered, with `origin` (the one caller's example that shows
    /// `origin`, which the server ignores, names a `destination`).
    fn delivered(&self) -> bool {
        matches!(self.action(), "trigger" | "emit")
            && self.value.get("origin").is_some()
            && self.value.get("destination").is_none()
    }
}

/// Whether the server reads `action` as a request's.
fn is_request_action(action: &str) -> bool {
    let frame = serde_json::json!({ "action": action }).to_string();
    let read = latzero_proto::message::parse_request(frame.as_bytes());
    !matches!(read, Err(e) if e.code == latzero_proto::ErrorCode::UnknownAction)
}

/// Every example of PROTOCOL.md, one-line or spread over lines, in a fenced block or in the
/// text; those that are still not JSON once their elisions are out (`NaN` on purpose, an elided
/// value) are left out.
pub fn examples() -> Vec<Example> {
    let mut out = Vec::new();
    for (i, _) in PROTOCOL.match_indices('{') {
        if !PROTOCOL[i + 1..].trim_start().starts_with("\"action\"") {
            continue;
        }
        let Some(len) = object_len(&PROTOCOL[i..]) else {
            continue;
        };
        let text = without_elisions(&PROTOCOL[i..i + len]);
        if let Ok(value) = serde_json::from_str::<Value>(&text) {
            let line = PROTOCOL[..i].matches('\n').count() + 1;
            out.push(Example { line, text, value });
        }
    }
    out
}

/// `json` without its `...` (outside strings) and the commas they leave dangling.
fn without_elisions(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = json;
    while let Some(ch) = rest.chars().next() {
        if !in_string && rest.starts_with("...") {
            rest = &rest[3..];
            continue;
        }
        match ch {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            _ => {}
        }
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    // A comma is dangling when the next thing outside a string closes, or is another comma.
    let mut cleaned = String::with_capacity(out.len());
    let (mut in_string, mut escaped) = (false, false);
    for (i, ch) in out.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            ',' if !in_string => {
                if matches!(out[i + 1..].trim_start().chars().next(), Some('}' | ']' | ',') | None) {
                    continue;
                }
            }
            _ => {}
        }
        cleaned.push(ch);
    }
    cleaned
}

/// The length of the object `s` opens with, up to its closing brace.
fn object_len(s: &str) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, ch) in s.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '{' if !in_string => depth += 1,
            '}' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}
