//! Sealed records: encrypt with the CipherShard, sign with the OblivionSeal, verify, detect
//! replays.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::{Signature, Signer, Verifier, VerifyingKey};
use rand::RngCore;

use crate::keys::{KeyError, PoolKeys, Role, cipher_key, write_signer};

const MAGIC: &[u8; 4] = b"LZS1";
/// Bytes before the ciphertext: magic, generation, seq, nonce.
pub const HEADER_LEN: usize = 4 + 4 + 8 + 12;
/// Bytes of the trailing signature.
pub const SIGNATURE_LEN: usize = 64;
const TAG_LEN: usize = 16;
const SIG_DOMAIN: &[u8] = b"latzero-seal-v1\0";
const JOIN_DOMAIN: &[u8] = b"latzero-join-v1\0";

/// The context of a trigger/emit payload (`msg/<trigger>`).
pub const CONTEXT_MSG: &str = "msg";
/// The context of a block record (`block/<block id>`).
pub const CONTEXT_BLOCK: &str = "block";
/// The context of a stream block's record (`stream/<block id>`): one sealed record per stream
/// record, so a binary block's record cannot be appended to a stream of the same name.
pub const CONTEXT_STREAM: &str = "stream";

/// `msg/<trigger>`, `block/<block id>` or `stream/<block id>`.
pub fn context(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The app lacks a key the operation needs.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Not a sealed record (too short, wrong magic).
    #[error("not a sealed record")]
    Malformed,
    /// The signature does not verify: not written by a holder of the OblivionSeal, or changed.
    #[error(
        "the record's signature does not verify: it was not written by a holder of the OblivionSeal, or it was altered"
    )]
    BadSignature,
    /// The server has no verifier for the record's generation.
    #[error("unknown key generation {0}")]
    UnknownGeneration(u32),
    /// Decryption failed after the signature verified (a wrong CipherShard).
    #[error("the record does not decrypt with this CipherShard (wrong key, or another pool or context)")]
    Decrypt,
    /// Keys or verifiers that do not belong together (another pool's keys; a server verifier
    /// that does not match the app's own OblivionSeal).
    #[error("{0}")]
    Mismatch(String),
    /// A record replayed: older than one already seen, seen before, or outside the window.
    #[error("replayed record rejected: {0}")]
    Replay(String),
}

/// What [`open`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// The key generation it was sealed under.
    pub generation: u32,
    /// Its sequence number (nanoseconds since the epoch, strictly increasing per writer).
    pub seq: u64,
    /// Its nonce.
    pub nonce: [u8; 12],
}

fn aad(pool: &str, ctx: &str, header: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(pool.len() + ctx.len() + header.len() + 2);
    a.extend_from_slice(pool.as_bytes());
    a.push(0);
    a.extend_from_slice(ctx.as_bytes());
    a.push(0);
    a.extend_from_slice(header);
    a
}

fn signed_bytes(aad: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIG_DOMAIN.len() + 4 + aad.len() + body.len());
    m.extend_from_slice(SIG_DOMAIN);
    m.extend_from_slice(&(aad.len() as u32).to_be_bytes());
    m.extend_from_slice(aad);
    m.extend_from_slice(body);
    m
}

/// The bytes a join proof signs.
pub(crate) fn join_message(pool: &str, app_id: &str, generation: u32, nonce: &[u8]) -> Vec<u8> {
    let mut m = JOIN_DOMAIN.to_vec();
    for part in [pool.as_bytes(), app_id.as_bytes()] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part);
    }
    m.extend_from_slice(&generation.to_be_bytes());
    m.extend_from_slice(nonce);
    m
}

/// Checks a join proof (what the server does with the join verifier of `generation`).
pub fn verify_join(
    verifier: &[u8; 32],
    pool: &str,
    app_id: &str,
    generation: u32,
    nonce: &[u8],
    signature: &[u8; 64],
) -> bool {
    VerifyingKey::from_bytes(verifier).is_ok_and(|vk| {
        vk.verify(
            &join_message(pool, app_id, generation, nonce),
            &Signature::from_bytes(signature),
        )
        .is_ok()
    })
}

/// Strictly increasing per process: the time in nanoseconds, or one more than the last.
fn next_seq() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(l) => last = l,
        }
    }
}

/// Seals `plaintext` for `pool` and `ctx` under the newest generation: needs its CipherShard and
/// OblivionSeal.
pub fn seal(keys: &PoolKeys, ctx: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let generation = keys.latest();
    let cipher = keys.need(Role::Cipher, generation, "encrypting")?;
    let seal_key = keys.need(Role::Seal, generation, "writing (signing)")?;
    let pool = keys.pool();
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN + SIGNATURE_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&next_seq().to_be_bytes());
    out.extend_from_slice(&nonce);
    let a = aad(pool, ctx, &out);
    let aes = Aes256Gcm::new_from_slice(&cipher_key(cipher, pool, generation)[..]).expect("32-byte key");
    let ct = aes
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &a,
            },
        )
        .map_err(|_| SealError::Decrypt)?;
    out.extend_from_slice(&ct);
    let sig = write_signer(seal_key, pool, generation).sign(&signed_bytes(&a, &out));
    out.extend_from_slice(&sig.to_bytes());
    Ok(out)
}

struct Parts<'a> {
    generation: u32,
    seq: u64,
    nonce: [u8; 12],
    header: &'a [u8],
    body: &'a [u8],
    ciphertext: &'a [u8],
    signature: Signature,
}

fn split(sealed: &[u8]) -> Result<Parts<'_>, SealError> {
    if sealed.len() < HEADER_LEN + TAG_LEN + SIGNATURE_LEN || &sealed[..4] != MAGIC {
        return Err(SealError::Malformed);
    }
    let (body, sig) = sealed.split_at(sealed.len() - SIGNATURE_LEN);
    let sig: [u8; 64] = sig.try_into().map_err(|_| SealError::Malformed)?;
    Ok(Parts {
        generation: u32::from_be_bytes(sealed[4..8].try_into().map_err(|_| SealError::Malformed)?),
        seq: u64::from_be_bytes(sealed[8..16].try_into().map_err(|_| SealError::Malformed)?),
        nonce: sealed[16..28].try_into().map_err(|_| SealError::Malformed)?,
        header: &sealed[..HEADER_LEN],
        body,
        ciphertext: &body[HEADER_LEN..],
        signature: Signature::from_bytes(&sig),
    })
}

/// The generation a sealed record names (to pick a verifier).
pub fn peek_generation(sealed: &[u8]) -> Result<u32, SealError> {
    split(sealed).map(|p| p.generation)
}

/// The seq a sealed record names, unverified: its signature covers it, so it is the record's
/// seq only once [`verify_write`] accepts the record.
pub fn peek_seq(sealed: &[u8]) -> Result<u64, SealError> {
    split(sealed).map(|p| p.seq)
}

/// Checks a record's signature against a write verifier (what the server does; no key needed
/// beyond the public verifier). Returns its generation and seq.
pub fn verify_write(pool: &str, ctx: &str, sealed: &[u8], verifier: &[u8; 32]) -> Result<(u32, u64), SealError> {
    let p = split(sealed)?;
    let vk = VerifyingKey::from_bytes(verifier).map_err(|_| SealError::BadSignature)?;
    let a = aad(pool, ctx, p.header);
    vk.verify(&signed_bytes(&a, p.body), &p.signature)
        .map_err(|_| SealError::BadSignature)?;
    Ok((p.generation, p.seq))
}

/// Verifies a record's signature against the pool's write verifier for its generation (which
/// readers get from the server; they need not hold the OblivionSeal), then decrypts it.
pub fn open(keys: &PoolKeys, ctx: &str, sealed: &[u8], write_verifier: &[u8; 32]) -> Result<Opened, SealError> {
    let p = split(sealed)?;
    verify_write(keys.pool(), ctx, sealed, write_verifier)?;
    let cipher = keys.need(Role::Cipher, p.generation, "decrypting")?;
    let a = aad(keys.pool(), ctx, p.header);
    let aes = Aes256Gcm::new_from_slice(&cipher_key(cipher, keys.pool(), p.generation)[..]).expect("32-byte key");
    let plaintext = aes
        .decrypt(
            Nonce::from_slice(&p.nonce),
            Payload {
                msg: p.ciphertext,
                aad: &a,
            },
        )
        .map_err(|_| SealError::Decrypt)?;
    Ok(Opened {
        plaintext,
        generation: p.generation,
        seq: p.seq,
        nonce: p.nonce,
    })
}

/// Replay detection on the reading side. Block records: a record older than the newest seen for
/// that block is a replay. Messages: one seen before, or sealed longer ago than the window (or
/// that far in the future), is a replay. Memory is bounded by the window.
#[derive(Debug)]
pub struct ReplayGuard {
    window: Duration,
    blocks: HashMap<String, u64>,
    seen: HashSet<(u64, [u8; 12])>,
    order: VecDeque<(u64, [u8; 12])>,
}

impl ReplayGuard {
    /// A guard with a message window (5 minutes is a sane default).
    pub fn new(window: Duration) -> Self {
        ReplayGuard {
            window,
            blocks: HashMap::new(),
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Accepts a block record unless it is older than the newest seen for `ctx`.
    pub fn check_block(&mut self, ctx: &str, o: &Opened) -> Result<(), SealError> {
        let last = self.blocks.entry(ctx.to_owned()).or_insert(0);
        if o.seq < *last {
            return Err(SealError::Replay(format!(
                "{ctx} holds a record sealed at {} ns, older than one already read ({} ns)",
                o.seq, *last
            )));
        }
        *last = o.seq;
        Ok(())
    }

    /// Accepts a stream record only if it was sealed after the last one accepted for `ctx`: a
    /// stream's records are in strictly increasing seq when every append goes through the
    /// server, which refuses any other (docs/PROTOCOL.md §4.6), so one that is not is a replay,
    /// or records put out of order.
    pub fn check_stream(&mut self, ctx: &str, o: &Opened) -> Result<(), SealError> {
        let last = self.blocks.entry(ctx.to_owned()).or_insert(0);
        if o.seq <= *last {
            return Err(SealError::Replay(format!(
                "{ctx} holds a record sealed at {} ns, not after one already read ({} ns)",
                o.seq, *last
            )));
        }
        *last = o.seq;
        Ok(())
    }

    /// Accepts a message once, and only within the window.
    pub fn check_message(&mut self, o: &Opened) -> Result<(), SealError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let w = self.window.as_nanos() as u64;
        while let Some(&(seq, n)) = self.order.front() {
            if seq + w >= now {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&(seq, n));
        }
        if o.seq + w < now || o.seq > now + w {
            return Err(SealError::Replay("sealed outside the replay window".into()));
        }
        if !self.seen.insert((o.seq, o.nonce)) {
            return Err(SealError::Replay("this message was already delivered".into()));
        }
        self.order.push_back((o.seq, o.nonce));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate;

    fn keys() -> (PoolKeys, PoolKeys, crate::Verifiers) {
        let (texts, v) = generate("vault", 1);
        (
            PoolKeys::parse("vault", &texts).unwrap(),
            PoolKeys::parse("vault", [&texts[1]]).unwrap(),
            v,
        )
    }

    #[test]
    fn sealed_records_open_for_readers_and_bind_pool_and_context() {
        let (writer, reader, v) = keys();
        let s = seal(&writer, "msg/echo", b"hello").unwrap();
        let o = open(&reader, "msg/echo", &s, &v.write).unwrap();
        assert_eq!((o.plaintext.as_slice(), o.generation), (&b"hello"[..], 1));
        assert_eq!(open(&reader, "msg/other", &s, &v.write), Err(SealError::BadSignature));
        let other_pool = PoolKeys::parse("other", [&generate("x", 1).0[1]]).unwrap();
        assert!(open(&other_pool, "msg/echo", &s, &v.write).is_err());
        assert_eq!(verify_write("vault", "msg/echo", &s, &v.write).unwrap().0, 1);
    }

    #[test]
    fn tampering_is_rejected_anywhere_in_the_record() {
        let (writer, reader, v) = keys();
        let s = seal(&writer, "block/b", &[7u8; 100]).unwrap();
        for i in [0, 5, 10, 20, HEADER_LEN + 3, s.len() - 70, s.len() - 1] {
            let mut t = s.clone();
            t[i] ^= 1;
            assert!(open(&reader, "block/b", &t, &v.write).is_err(), "byte {i}");
        }
        assert_eq!(open(&reader, "block/b", &s[..10], &v.write), Err(SealError::Malformed));
    }

    #[test]
    fn a_reader_cannot_write() {
        let (texts, v) = generate("vault", 1);
        let reader = PoolKeys::parse("vault", [&texts[1]]).unwrap();
        assert!(matches!(seal(&reader, "msg/x", b"forged"), Err(SealError::Key(_))));
        // With the real CipherShard and an OblivionSeal of its own making, a reader produces a
        // record that decrypts fine but whose signature does not verify.
        let own_seal = &generate("vault", 1).0[2];
        let forger = PoolKeys::parse("vault", [&texts[1], own_seal]).unwrap();
        let forged = seal(&forger, "msg/x", b"forged").unwrap();
        assert_eq!(open(&reader, "msg/x", &forged, &v.write), Err(SealError::BadSignature));
        assert_eq!(
            verify_write("vault", "msg/x", &forged, &v.write),
            Err(SealError::BadSignature)
        );
    }

    #[test]
    fn nonces_never_repeat_across_many_messages() {
        let (writer, _, _) = keys();
        let mut nonces = HashSet::new();
        let mut seqs = HashSet::new();
        for _ in 0..10_000 {
            let s = seal(&writer, "msg/x", b"").unwrap();
            assert!(nonces.insert(s[16..28].to_vec()), "a nonce repeated");
            assert!(seqs.insert(s[8..16].to_vec()), "a seq repeated");
        }
    }

    #[test]
    fn replays_are_detected() {
        let (writer, reader, v) = keys();
        let mut g = ReplayGuard::new(Duration::from_secs(300));
        let old = open(&reader, "block/b", &seal(&writer, "block/b", b"v1").unwrap(), &v.write).unwrap();
        let new = open(&reader, "block/b", &seal(&writer, "block/b", b"v2").unwrap(), &v.write).unwrap();
        g.check_block("block/b", &old).unwrap();
        g.check_block("block/b", &new).unwrap();
        g.check_block("block/b", &new).unwrap();
        assert!(matches!(g.check_block("block/b", &old), Err(SealError::Replay(_))));
        // A stream's record must come after the last one read: the same one again is a replay.
        g.check_stream("stream/s", &old).unwrap();
        g.check_stream("stream/s", &new).unwrap();
        assert!(matches!(g.check_stream("stream/s", &new), Err(SealError::Replay(_))));
        assert!(matches!(g.check_stream("stream/s", &old), Err(SealError::Replay(_))));
        // Each stream, and the blocks, keep their own last.
        g.check_stream("stream/t", &old).unwrap();
        let m = open(&reader, "msg/x", &seal(&writer, "msg/x", b"m").unwrap(), &v.write).unwrap();
        g.check_message(&m).unwrap();
        assert!(matches!(g.check_message(&m), Err(SealError::Replay(_))));
        let stale = Opened { seq: 1, ..m };
        assert!(matches!(g.check_message(&stale), Err(SealError::Replay(_))));
    }

    #[test]
    fn join_proofs_verify_only_with_the_right_sigil() {
        let (texts, v) = generate("vault", 3);
        let keys = PoolKeys::parse("vault", &texts).unwrap();
        let sig = keys.prove_join(3, "app", b"nonce").unwrap();
        assert!(verify_join(&v.join, "vault", "app", 3, b"nonce", &sig));
        let wrong = PoolKeys::parse("vault", &generate("vault", 3).0).unwrap();
        let bad = wrong.prove_join(3, "app", b"nonce").unwrap();
        assert!(!verify_join(&v.join, "vault", "app", 3, b"nonce", &bad));
        assert!(
            !verify_join(&v.join, "vault", "other", 3, b"nonce", &sig),
            "bound to the app"
        );
        assert!(
            !verify_join(&v.join, "vault", "app", 3, b"other", &sig),
            "bound to the nonce"
        );
    }
}
