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
    let mut skip = 0;
    for (i, ch, structure) in chars(json) {
        if skip > 0 {
            skip -= 1;
        } else if structure && json[i..].starts_with("...") {
            skip = 2;
        } else {
            out.push(ch);
        }
    }
    // A comma is dangling when the next thing outside a string closes, or is another comma.
    chars(&out)
        .filter(|&(i, ch, structure)| {
            !(structure
                && ch == ','
                && matches!(out[i + 1..].trim_start().chars().next(), Some('}' | ']' | ',') | None))
        })
        .map(|(_, ch, _)| ch)
        .collect()
}

/// The length of the object `s` opens with, up to its closing brace.
fn object_len(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, ch, structure) in chars(s) {
        match ch {
            '{' if structure => depth += 1,
            '}' if structure => {
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

/// The characters of JSON text with their offsets, each with whether it is structure (outside
/// a string; a string's quotes count as inside).
fn chars(json: &str) -> impl Iterator<Item = (usize, char, bool)> + '_ {
    let (mut in_string, mut escaped) = (false, false);
    json.char_indices().map(move |(i, ch)| {
        let was_in = in_string;
        match ch {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            _ => {}
        }
        (i, ch, !was_in && ch != '"')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elisions_go_and_strings_stay() {
        let text = r#"{ "apps": [ { "app_id": "a", ... }, { ... } ], "m": "a \"...\" b", ... }"#;
        let v: Value = serde_json::from_str(&without_elisions(text)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"apps": [{"app_id": "a"}, {}], "m": "a \"...\" b"})
        );
        assert_eq!(object_len(r#"{"a":"}{","b":{"c":1}} tail"#), Some(22));
    }

    #[test]
    fn the_examples_are_found_spread_over_lines_too() {
        let found = examples();
        assert!(found.len() >= 80, "only {} examples", found.len());
        // §4.1's handshake opens with `{` alone on its line.
        assert!(
            found
                .iter()
                .any(|e| e.action() == "handshake" && e.text.starts_with("{\n"))
        );
        assert!(found.iter().filter(|e| e.sent_by_client()).count() >= 35);
        assert!(found.iter().filter(|e| e.sent_by_server()).count() >= 40);
    }
}
