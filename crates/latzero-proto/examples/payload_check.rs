//! The cost of checking one received payload, for `scripts/callgrind-payload.sh`: runs one
//! check `N` times over a payload of about `BYTES` bytes.
//!
//! ```sh
//! cargo run --release -p latzero-proto --example payload_check -- server|sdk|serde N [BYTES] [object|string]
//! ```
//!
//! `server` is the server's check of every call's data and every response
//! (`message::one_value`), `sdk` the SDK's read of a payload it receives
//! (`message::spans_one_value`: the outline only), `serde` serde_json's own validation of the
//! same text. The payload is an array of small objects (or one long string) of at least `BYTES`
//! bytes (4,000 by default).

use latzero_proto::message::{RawValue, one_value, spans_one_value};
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: payload_check server|sdk|serde N [BYTES] [object|string]";
    let (Some(which), Some(n)) = (args.first(), args.get(1).and_then(|n| n.parse::<usize>().ok())) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let bytes = match args.get(2).map(|b| b.parse::<usize>()) {
        None => 4000,
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            eprintln!("BYTES: {e}; {usage}");
            std::process::exit(2);
        }
    };
    let text = match args.get(3).map(String::as_str) {
        Some("string") => json!("x".repeat(bytes)).to_string(),
        None | Some("object") => {
            let mut items = vec![];
            while serde_json::to_string(&items).expect("serialises").len() < bytes {
                let i = items.len();
                items.push(json!({"id": i, "name": format!("user-{i}"), "score": i as f64 * 1.5, "tags": ["a", "b"], "active": i % 2 == 0}));
            }
            serde_json::to_string(&items).expect("serialises")
        }
        Some(other) => {
            eprintln!("unknown payload kind {other:?}; {usage}");
            std::process::exit(2);
        }
    };
    let check: fn(&str) -> bool = match which.as_str() {
        "server" => |t| one_value(t).is_some(),
        "sdk" => spans_one_value,
        "serde" => |t| serde_json::from_str::<&RawValue>(t).is_ok(),
        other => {
            eprintln!("unknown check {other:?}; {usage}");
            std::process::exit(2);
        }
    };
    for _ in 0..n {
        assert!(check(std::hint::black_box(&text)), "the payload is one value");
    }
    println!("{which}: {n} checks of a {}-byte payload", text.len());
}
