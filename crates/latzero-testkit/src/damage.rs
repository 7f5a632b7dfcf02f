//! Damaged frames for robustness tests, the same on every run (a fixed seed): frames built from
//! well-formed templates with a field given a value of another type, dropped or added, their
//! text broken, binary frames whose header lies, and empty frames. The server's tests send them
//! to the server; the SDK's tests have a stand-in server send them to a client.

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use latzero_proto::frame::{encode_binary, encode_json};
use serde_json::{Value, json};

/// The panics in this process so far, counted from the first call on (a panic hook is put in
/// front of the one there was): a task that panics and is caught still counts.
pub fn panics() -> usize {
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
    PANICS.load(Ordering::SeqCst)
}

/// Values put in place of a field's own.
pub const ODD: &[&str] = &[
    "null",
    "true",
    "0",
    "-1",
    "1.5e308",
    "18446744073709551616",
    "\"\"",
    "[]",
    "{}",
    "[[[[]]]]",
    "{\"a\":{\"b\":{}}}",
    "\"\\u0000\"",
    "\"é\"",
    "\"\\ud800\"",
    "1e999",
];

/// Bytes put into a frame's text.
pub const NOISE: &[u8] = b"{}[]\",:\\0x\x00\xff\xc3 ";

/// xorshift64: the same damage on every run.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (which must not be 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One of `from` (which must not be empty).
    pub fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }
}

/// One damaged frame, framed as the protocol asks, from one of `templates` (JSON objects).
/// `binary_header` is a header that takes a body, used for half of the binary frames.
pub fn damaged(rng: &mut Rng, templates: &[&str], binary_header: &str) -> Vec<u8> {
    let text = *rng.pick(templates);
    match rng.below(10) {
        // A field given a value of another type, dropped, or added.
        0..=3 => {
            let mut v: Value = serde_json::from_str(text).expect("templates are JSON");
            let m = v.as_object_mut().expect("templates are objects");
            let keys: Vec<String> = m.keys().cloned().chain(["id".into(), "extra".into()]).collect();
            for _ in 0..=rng.below(3) {
                let k = rng.pick(&keys).clone();
                if rng.below(4) == 0 {
                    m.remove(&k);
                } else {
                    let odd = *rng.pick(ODD);
                    m.insert(k, serde_json::from_str(odd).unwrap_or(json!(1)));
                }
            }
            // serde_json cannot hold `1e999` or a lone surrogate (they became 1 above), so a
            // quarter of these also get an odd value spliced in as text after the first key.
            let mut out = v.to_string();
            if rng.below(4) == 0 {
                out = out.replacen(':', &format!(":{},", rng.pick(ODD)), 1);
            }
            encode_json(out.as_bytes()).to_vec()
        }
        // Its text broken: bytes changed, dropped, inserted, or the end cut off.
        4..=7 => {
            let mut b = text.as_bytes().to_vec();
            for _ in 0..=rng.below(4) {
                let at = rng.below(b.len() + 1);
                match rng.below(4) {
                    0 if at < b.len() => b[at] = *rng.pick(NOISE),
                    1 if at < b.len() => {
                        b.remove(at);
                    }
                    2 => b.insert(at, *rng.pick(NOISE)),
                    _ => b.truncate(at.max(1)),
                }
            }
            encode_json(&b).to_vec()
        }
        // A binary frame whose header lies about its length, or is one that takes no body.
        8 => {
            let header = if rng.below(2) == 0 { binary_header } else { text };
            let mut f = encode_binary(header.as_bytes(), &[7; 20]).to_vec();
            if rng.below(2) == 0 {
                // The header length (after the frame length and the marker byte).
                let lie = rng.below(300) as u32;
                f[5..9].copy_from_slice(&lie.to_be_bytes());
            }
            f
        }
        // Nothing at all.
        _ => 0u32.to_be_bytes().to_vec(),
    }
}

/// `bytes` cut into pieces of 1 to 600 bytes, to be written one by one so that frames straddle
/// the reader's reads.
pub fn pieces<'a>(rng: &mut Rng, mut bytes: &'a [u8]) -> Vec<&'a [u8]> {
    let mut out = vec![];
    while !bytes.is_empty() {
        let n = (1 + rng.below(600)).min(bytes.len());
        out.push(&bytes[..n]);
        bytes = &bytes[n..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_frames_and_each_is_framed() {
        let templates = [r#"{"action":"ping","id":1}"#, r#"{"action":"x","a":[1,2]}"#];
        let make = || {
            let mut rng = Rng(7);
            (0..200)
                .map(|_| damaged(&mut rng, &templates, r#"{"action":"b"}"#))
                .collect::<Vec<_>>()
        };
        let frames = make();
        assert_eq!(frames, make());
        for f in &frames {
            let len = u32::from_be_bytes(f[..4].try_into().unwrap()) as usize;
            assert_eq!(len, f.len() - 4, "{f:?}");
        }
        let mut rng = Rng(9);
        let joined: Vec<u8> = pieces(&mut rng, &frames.concat()).concat();
        assert_eq!(joined, frames.concat());
    }
}
