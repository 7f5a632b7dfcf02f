//! Encrypted pools: the seeds' triple key, done so that it holds up to review.
//!
//! A pool's keys come in *generations*. Each generation has three independent 32-byte random
//! keys, each granting one thing:
//!
//! | key            | grants | derived (HKDF-SHA256, salt `latzero/v1/<pool>`)                       |
//! |----------------|--------|-----------------------------------------------------------------------|
//! | SigilKey       | join   | an Ed25519 key that signs the server's join challenge                |
//! | CipherShard    | read   | the AES-256-GCM key of every payload and block record                |
//! | OblivionSeal   | write  | an Ed25519 key that signs every sealed payload and block record       |
//!
//! The server keeps only the two Ed25519 *public* keys (the verifiers): it can check a join proof
//! and a write's signature but can neither join, read nor write. A holder of the CipherShard
//! alone decrypts, but what it produces carries no valid signature, and readers and the server
//! reject it.
//!
//! A sealed record ([`seal`]) is `magic | generation | seq | nonce | ciphertext+tag | signature`,
//! with a fresh random 96-bit nonce per record; the pool and the record's context (the trigger,
//! or the block id) are bound as associated data, together with the header. `seq` orders a
//! writer's records (nanoseconds since the epoch, strictly increasing per process): readers
//! reject a block record older than one they have seen, a stream record not sealed after the
//! last one they read from that stream, and a message seen before or outside the replay window
//! ([`ReplayGuard`]).

mod keys;
mod seal;

pub use keys::{GenKeys, KeyError, PoolKeys, Role, Verifiers, generate};
pub use seal::{
    CONTEXT_BLOCK, CONTEXT_MSG, CONTEXT_STREAM, HEADER_LEN, Opened, ReplayGuard, SIGNATURE_LEN, SealError, context,
    open, peek_generation, peek_seq, seal, verify_join, verify_write,
};
