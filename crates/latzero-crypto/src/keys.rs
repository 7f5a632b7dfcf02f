//! Key text, generations and derivation.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{SigningKey, VerifyingKey};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

/// What a key grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// SigilKey: join the pool.
    Sigil,
    /// CipherShard: read (decrypt).
    Cipher,
    /// OblivionSeal: write (sign).
    Seal,
}

impl Role {
    fn tag(self) -> &'static str {
        match self {
            Role::Sigil => "sigil",
            Role::Cipher => "cipher",
            Role::Seal => "seal",
        }
    }

    /// The seeds' name of the key.
    pub fn name(self) -> &'static str {
        match self {
            Role::Sigil => "SigilKey",
            Role::Cipher => "CipherShard",
            Role::Seal => "OblivionSeal",
        }
    }
}

/// Why key text or a key set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not `lzk1.<role>.<generation>.<key>`.
    #[error("not a LatZero pool key (expected lzk1.sigil|cipher|seal.GENERATION.KEY): {0}")]
    Format(String),
    /// The key set lacks what an operation needs.
    #[error("pool '{pool}' has no {role} for key generation {generation}; {what} needs it")]
    Missing {
        /// The pool.
        pool: String,
        /// The key's name.
        role: &'static str,
        /// The generation.
        generation: u32,
        /// The operation.
        what: &'static str,
    },
    /// The key set has no generation at all.
    #[error("no keys for pool '{0}'")]
    Empty(String),
}

/// The keys of one generation this app holds (any subset of the three).
#[derive(Clone, Default)]
pub struct GenKeys {
    sigil: Option<Zeroizing<[u8; 32]>>,
    cipher: Option<Zeroizing<[u8; 32]>>,
    seal: Option<Zeroizing<[u8; 32]>>,
}

impl fmt::Debug for GenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material: only which keys are held.
        f.debug_struct("GenKeys")
            .field("sigil", &self.sigil.as_ref().map(|_| "<redacted>"))
            .field("cipher", &self.cipher.as_ref().map(|_| "<redacted>"))
            .field("seal", &self.seal.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The two public keys the server keeps for one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verifiers {
    /// The generation.
    pub generation: u32,
    /// Verifies join proofs (from the SigilKey).
    pub join: [u8; 32],
    /// Verifies writes (from the OblivionSeal).
    pub write: [u8; 32],
}

impl Verifiers {
    /// Base64 of a verifier, as on the wire.
    pub fn b64(key: &[u8; 32]) -> String {
        STANDARD.encode(key)
    }

    /// Parses a verifier from base64 (32 bytes, a valid Ed25519 point).
    pub fn parse_key(s: &str) -> Option<[u8; 32]> {
        let b: [u8; 32] = STANDARD.decode(s).ok()?.try_into().ok()?;
        VerifyingKey::from_bytes(&b).ok().map(|_| b)
    }
}

fn hkdf32(key: &[u8; 32], pool: &str, label: &str, generation: u32) -> Zeroizing<[u8; 32]> {
    let salt = format!("latzero/v1/{pool}");
    let hk = Hkdf::<Sha256>::new(Some(salt.as_bytes()), key);
    let mut out = Zeroizing::new([0u8; 32]);
    let info = format!("{label}/{generation}");
    hk.expand(info.as_bytes(), &mut out[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

pub(crate) fn join_signer(sigil: &[u8; 32], pool: &str, generation: u32) -> SigningKey {
    SigningKey::from_bytes(&hkdf32(sigil, pool, "join-ed25519", generation))
}

pub(crate) fn write_signer(seal: &[u8; 32], pool: &str, generation: u32) -> SigningKey {
    SigningKey::from_bytes(&hkdf32(seal, pool, "write-ed25519", generation))
}

pub(crate) fn cipher_key(cipher: &[u8; 32], pool: &str, generation: u32) -> Zeroizing<[u8; 32]> {
    hkdf32(cipher, pool, "aes-256-gcm", generation)
}

/// An app's keys for one pool, by generation.
#[derive(Debug, Clone)]
pub struct PoolKeys {
    pool: String,
    gens: BTreeMap<u32, GenKeys>,
}

impl PoolKeys {
    /// Keys for `pool` from key texts (`lzk1.<role>.<generation>.<key>`), any roles and
    /// generations, as `latzero keys generate|rotate` printed them.
    pub fn parse<S: AsRef<str>>(pool: &str, texts: impl IntoIterator<Item = S>) -> Result<PoolKeys, KeyError> {
        let mut keys = PoolKeys {
            pool: pool.to_owned(),
            gens: BTreeMap::new(),
        };
        for t in texts {
            let t = t.as_ref().trim();
            let bad = || KeyError::Format(redact(t));
            let mut parts = t.split('.');
            let (Some("lzk1"), Some(role), Some(generation), Some(key), None) =
                (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let generation: u32 = generation.parse().map_err(|_| bad())?;
            let bytes: [u8; 32] = URL_SAFE_NO_PAD
                .decode(key)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(bad)?;
            let slot = keys.gens.entry(generation).or_default();
            let k = Some(Zeroizing::new(bytes));
            match role {
                "sigil" => slot.sigil = k,
                "cipher" => slot.cipher = k,
                "seal" => slot.seal = k,
                _ => return Err(bad()),
            }
        }
        if keys.gens.is_empty() {
            return Err(KeyError::Empty(pool.to_owned()));
        }
        Ok(keys)
    }

    /// The pool.
    /// The keys in a keys file's text: the last word of each line that is neither blank nor a
    /// `#` comment, so the file `latzero keys generate POOL --out FILE` wrote (its lines name
    /// each key before it) is taken as it is, and so is one key text per line, or several
    /// generations' files put together.
    pub fn from_text(pool: &str, text: &str) -> Result<PoolKeys, KeyError> {
        PoolKeys::parse(
            pool,
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .filter_map(|l| l.split_whitespace().last()),
        )
    }

    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The newest generation held.
    pub fn latest(&self) -> u32 {
        self.gens.keys().next_back().copied().unwrap_or(0)
    }

    /// Whether this key set holds `role` for `generation`.
    pub fn has(&self, role: Role, generation: u32) -> bool {
        self.get(role, generation).is_some()
    }

    pub(crate) fn get(&self, role: Role, generation: u32) -> Option<&[u8; 32]> {
        let g = self.gens.get(&generation)?;
        let k = match role {
            Role::Sigil => &g.sigil,
            Role::Cipher => &g.cipher,
            Role::Seal => &g.seal,
        };
        k.as_deref()
    }

    pub(crate) fn need(&self, role: Role, generation: u32, what: &'static str) -> Result<&[u8; 32], KeyError> {
        self.get(role, generation).ok_or_else(|| KeyError::Missing {
            pool: self.pool.clone(),
            role: role.name(),
            generation,
            what,
        })
    }

    /// Signs the server's join challenge with the SigilKey of `generation`.
    pub fn prove_join(&self, generation: u32, app_id: &str, nonce: &[u8]) -> Result<[u8; 64], KeyError> {
        let sigil = self.need(Role::Sigil, generation, "joining")?;
        let msg = crate::seal::join_message(&self.pool, app_id, generation, nonce);
        Ok(ed25519_dalek::Signer::sign(&join_signer(sigil, &self.pool, generation), &msg).to_bytes())
    }

    /// The verifiers of `generation`, for the server (needs the SigilKey and OblivionSeal).
    pub fn verifiers(&self, generation: u32) -> Result<Verifiers, KeyError> {
        let sigil = self.need(Role::Sigil, generation, "deriving the join verifier")?;
        let seal = self.need(Role::Seal, generation, "deriving the write verifier")?;
        Ok(Verifiers {
            generation,
            join: join_signer(sigil, &self.pool, generation).verifying_key().to_bytes(),
            write: write_signer(seal, &self.pool, generation).verifying_key().to_bytes(),
        })
    }
}

fn redact(t: &str) -> String {
    // Name the shape, never the key: only the parts a key text starts with are shown, each only
    // if it is what belongs there (`lzk1`, a role, a generation's digits). Anything else may be
    // a key, or hold one: a key pasted with a trailing full stop, or two keys on one line.
    let tags = ["sigil", "cipher", "seal"];
    let shown: Vec<&str> = t
        .split('.')
        .zip(0..3)
        .map_while(|(part, i)| {
            let fits = match i {
                0 => part == "lzk1",
                1 => tags.contains(&part),
                _ => !part.is_empty() && part.len() <= 10 && part.bytes().all(|b| b.is_ascii_digit()),
            };
            fits.then_some(part)
        })
        .collect();
    match shown.is_empty() {
        true => "<redacted>".to_owned(),
        false => format!("{}.<redacted>", shown.join(".")),
    }
}

/// Generates the three keys of `generation` for `pool`: their texts (shown once; SigilKey,
/// CipherShard, OblivionSeal in that order) and the verifiers to give the server.
pub fn generate(pool: &str, generation: u32) -> ([String; 3], Verifiers) {
    let mut rng = rand::rng();
    let mut text = |role: Role| {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut k[..]);
        format!("lzk1.{}.{generation}.{}", role.tag(), URL_SAFE_NO_PAD.encode(&k[..]))
    };
    let texts = [text(Role::Sigil), text(Role::Cipher), text(Role::Seal)];
    let keys = PoolKeys::parse(pool, &texts).expect("generated keys parse");
    let v = keys.verifiers(generation).expect("all three keys are present");
    (texts, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_round_trips_and_bad_text_never_echoes_the_key() {
        let (texts, v) = generate("vault", 1);
        let keys = PoolKeys::parse("vault", &texts).unwrap();
        assert_eq!(keys.verifiers(1).unwrap(), v);
        assert!(keys.has(Role::Cipher, 1) && !keys.has(Role::Cipher, 2));
        // The same keys in another pool derive other verifiers.
        assert_ne!(PoolKeys::parse("other", &texts).unwrap().verifiers(1).unwrap(), v);
        let secret = texts[0].rsplit_once('.').unwrap().1;
        let e = PoolKeys::parse("vault", [format!("{}x", texts[0])]).unwrap_err();
        assert!(!e.to_string().contains(secret), "{e}");
        // Pasted with a trailing full stop, two keys on one line, the printed line whole: the
        // key is in the text, not after its last dot.
        for t in [
            format!("{}.", texts[0]),
            format!("{} {}", texts[0], texts[1]),
            format!("SigilKey     (join)   {}", texts[0]),
            format!("{secret}.lzk1"),
        ] {
            let e = PoolKeys::parse("vault", [&t]).unwrap_err().to_string();
            assert!(!e.contains(secret) && e.contains("<redacted>"), "{e}");
        }
        assert!(
            PoolKeys::parse("vault", [format!("{}.", texts[0])])
                .unwrap_err()
                .to_string()
                .ends_with("lzk1.sigil.1.<redacted>"),
            "the parts that belong there are named"
        );
        assert!(format!("{keys:?}").contains("redacted") && !format!("{keys:?}").contains(secret));
        let reader = PoolKeys::parse("vault", [&texts[1]]).unwrap();
        assert!(reader.verifiers(1).is_err());
    }

    #[test]
    fn a_keys_file_is_read_as_written() {
        let (texts, v) = generate("vault", 1);
        let file = format!(
            "# pool vault, key generation 1.\n\nSigilKey     (join)   {}\n  CipherShard  (read)   {}  \n{}\n",
            texts[0], texts[1], texts[2]
        );
        assert_eq!(PoolKeys::from_text("vault", &file).unwrap().verifiers(1).unwrap(), v);
        assert!(matches!(
            PoolKeys::from_text("vault", "# only a comment\n"),
            Err(KeyError::Empty(_))
        ));
        let e = PoolKeys::from_text("vault", &format!("{} trailing", texts[0])).unwrap_err();
        assert!(matches!(e, KeyError::Format(_)), "the last word is the key: {e}");
    }
}
