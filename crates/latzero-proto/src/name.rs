//! Validated names: app ids, pool names, trigger names and memory block ids.
//!
//! Names are parsed once at the edge; inner code only ever sees these types. A name is 1 to
//! [`MAX_NAME_LEN`] bytes of ASCII letters, digits and `_ - . :`; this keeps names safe to use as
//! file names (memory blocks live in `memory/<pool>/`), URL parts and log fields — which is also
//! why a name may not be only dots (`.`, `..`).

use std::fmt;
use std::sync::Arc;

/// Longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which kind of name.
        kind: &'static str,
    },
    /// The name was longer than [`MAX_NAME_LEN`].
    #[error("{kind} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Which kind of name.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name was only dots (`.`, `..`), which name directories on disk.
    #[error("{kind} '{name}' is only dots; dots are allowed inside a name, not as the whole name")]
    Dots {
        /// Which kind of name.
        kind: &'static str,
        /// The offending name.
        name: String,
    },
    /// The name held a character outside the allowed set.
    #[error("{kind} '{name}' contains {ch:?} at byte {pos}; use letters, digits, '_', '-', '.' or ':'")]
    BadChar {
        /// Which kind of name.
        kind: &'static str,
        /// The offending name.
        name: String,
        /// The first bad character.
        ch: char,
        /// Its byte offset.
        pos: usize,
    },
}

fn validate(kind: &'static str, s: &str) -> Result<(), NameError> {
    // The common case in one pass over the bytes (and one more that stops at the first byte
    // that is not a dot), where the separate checks below, which say why a name is refused,
    // take more branches: every call checks two names on each side (docs/BENCHMARKS.md).
    let b = s.as_bytes();
    if b.len() <= MAX_NAME_LEN && b.iter().all(|&c| is_name_byte(c)) && b.iter().any(|&c| c != b'.') {
        return Ok(());
    }
    refused(kind, s)
}

/// Why [`validate`] refused `s`.
#[cold]
fn refused(kind: &'static str, s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            len: s.len(),
            max: MAX_NAME_LEN,
        });
    }
    if s.starts_with('.') && s.bytes().all(|b| b == b'.') {
        return Err(NameError::Dots {
            kind,
            name: s.to_owned(),
        });
    }
    // Every byte before the first bad one is ASCII, so it starts a character.
    if let Some(pos) = s.bytes().position(|b| !is_name_byte(b)) {
        return Err(NameError::BadChar {
            kind,
            name: s.to_owned(),
            ch: s[pos..].chars().next().unwrap_or(char::REPLACEMENT_CHARACTER),
            pos,
        });
    }
    Ok(())
}

/// Whether a name may hold byte `b` (ASCII letters and digits, `_ - . :`).
pub(crate) fn is_name_byte(b: u8) -> bool {
    NAME_BYTES[usize::from(b)]
}

/// The bytes a name may hold, by value: a table lookup per byte, where decoding characters and
/// comparing each with the allowed set cost several times more on every call's two names.
const NAME_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':');
        b += 1;
    }
    t
};

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(Arc<str>);

        impl $ty {
            /// Checks a string against the rules for this kind of name, without allocating.
            pub fn check(s: &str) -> Result<(), NameError> {
                validate($kind, s)
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                validate($kind, s)?;
                Ok(Self(Arc::from(s)))
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::try_from(s.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::try_from(s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }

        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::try_from(&*s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// The identity of an application (`latzero://APP_ID`). One live connection per app id.
    AppId,
    "app id"
);
name_type!(
    /// A pool: the namespace that holds apps, triggers and memory blocks.
    PoolName,
    "pool name"
);
name_type!(
    /// A trigger: a named handler an app registers.
    TriggerName,
    "trigger name"
);
name_type!(
    /// A memory block's id, unique within its pool (it names the block's file).
    BlockId,
    "block id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_seed_names() {
        for n in ["myApp", "alpha", "foo", "targetApp", "svc.v2:worker-1_a"] {
            assert_eq!(AppId::try_from(n).unwrap().as_str(), n);
        }
    }

    #[test]
    fn refuses_bad_names_with_a_reason() {
        assert_eq!(
            PoolName::try_from("").unwrap_err(),
            NameError::Empty { kind: "pool name" }
        );
        let e = AppId::try_from("my app").unwrap_err();
        assert!(e.to_string().contains("' ' at byte 2"), "{e}");
        let e = TriggerName::try_from("a/b").unwrap_err();
        assert!(matches!(e, NameError::BadChar { ch: '/', .. }));
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(AppId::try_from(long.as_str()), Err(NameError::TooLong { .. })));
        assert!(AppId::try_from("x".repeat(MAX_NAME_LEN).as_str()).is_ok());
        assert!(AppId::try_from("é").is_err());
        for dots in [".", "..", "..."] {
            assert!(
                matches!(PoolName::try_from(dots), Err(NameError::Dots { .. })),
                "{dots}"
            );
        }
        assert!(BlockId::try_from("a..b").is_ok());
        // Dots at either end are fine; only a name of dots alone is refused.
        assert!(PoolName::try_from(".a").is_ok());
        assert!(PoolName::try_from("a.").is_ok());
    }

    #[test]
    fn the_byte_table_is_the_allowed_set() {
        for b in 0..=u8::MAX {
            let allowed = (b as char).is_ascii_alphanumeric() || "_-.:".contains(b as char);
            assert_eq!(is_name_byte(b), allowed, "byte {b:#04x}");
        }
        // A character outside ASCII is reported whole, at the byte where it starts.
        let e = TriggerName::try_from("ab\u{e9}c").unwrap_err();
        assert!(
            matches!(
                e,
                NameError::BadChar {
                    ch: '\u{e9}',
                    pos: 2,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn deserialize_validates() {
        let ok: AppId = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(ok.as_str(), "abc");
        assert!(serde_json::from_str::<AppId>("\"a b\"").is_err());
    }
}
