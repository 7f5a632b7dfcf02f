//! Encrypted pools on the server: what it can check without any key. Payloads of calls and
//! emits, and block records written through it, must carry a valid OblivionSeal signature for
//! the pool's key generation they name (docs/PROTOCOL.md §4.6); the server never decrypts.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use latzero_crypto::{
    CONTEXT_BLOCK, CONTEXT_MSG, CONTEXT_STREAM, HEADER_LEN, Verifiers, context, peek_generation, peek_seq, verify_write,
};
use latzero_proto::ErrorCode;
use latzero_proto::message::RawValue;

use crate::memory::Refusal;

fn denied(pool: &str, what: &str, why: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        ErrorCode::PermissionDenied,
        format!("encrypted pool '{pool}': {what} must be sealed and signed with the pool's OblivionSeal ({why})"),
    )
}

/// Verifies a sealed record against the verifier of the generation it names; returns its seq.
fn verify(keys: &[Verifiers], pool: &str, ctx: &str, sealed: &[u8], what: &str) -> Result<u64, Refusal> {
    let generation = peek_generation(sealed).map_err(|e| denied(pool, what, e))?;
    let v = keys
        .iter()
        .find(|v| v.generation == generation)
        .ok_or_else(|| denied(pool, what, format!("unknown key generation {generation}")))?;
    verify_write(pool, ctx, sealed, &v.write)
        .map(|(_, seq)| seq)
        .map_err(|e| denied(pool, what, e))
}

/// A call's or emit's `data`: a JSON string holding the base64 sealed record for `msg/<trigger>`.
pub(crate) fn check_message(
    keys: &[Verifiers],
    pool: &str,
    trigger: &str,
    data: Option<&RawValue>,
) -> Result<(), Refusal> {
    let what = "payloads";
    let text: String = data
        .and_then(|d| serde_json::from_str(d.get()).ok())
        .ok_or_else(|| denied(pool, what, "`data` is not a base64 string"))?;
    let sealed = B64
        .decode(text)
        .map_err(|_| denied(pool, what, "`data` is not base64"))?;
    verify(keys, pool, &context(CONTEXT_MSG, trigger), &sealed, what).map(|_| ())
}

/// An encrypted block's layout: a 4-byte big-endian length, then the sealed record.
pub(crate) fn record(bytes: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    bytes.get(4..4 + len)
}

/// A block write through the server: a whole record at offset 0, signed, and newer than the
/// record it replaces (`current`: the block's first bytes).
pub(crate) fn check_block_write(
    keys: &[Verifiers],
    pool: &str,
    block_id: &str,
    offset: u64,
    bytes: &[u8],
    current: &[u8],
) -> Result<(), Refusal> {
    let what = "block writes";
    if offset != 0 {
        return Err(denied(pool, what, "write the whole record at offset 0"));
    }
    let rec = record(bytes).ok_or_else(|| denied(pool, what, "not a length-prefixed sealed record"))?;
    let ctx = context(CONTEXT_BLOCK, block_id);
    let seq = verify(keys, pool, &ctx, rec, what)?;
    if let Some(old) = record(current).filter(|r| r.len() >= HEADER_LEN)
        && let Ok(old_seq) = verify(keys, pool, &ctx, old, what)
        && old_seq >= seq
    {
        return Err(Refusal::new(
            ErrorCode::PermissionDenied,
            format!(
                "encrypted pool '{pool}': replayed write rejected: block '{block_id}' already holds a record sealed at or after this one"
            ),
        ));
    }
    Ok(())
}

/// An append to a stream through the server: the record is one sealed record for
/// `stream/<block id>`, signed, and sealed after the newest one appended (`newest`, found in the
/// ring the first time: the highest seq of a record that verifies, 0 for none). Returns its seq,
/// for the caller to record as the newest once the append is done.
pub(crate) fn check_stream_append(
    keys: &[Verifiers],
    pool: &str,
    block_id: &str,
    block: &latzero_memory::Block,
    bytes: &[u8],
    newest: &mut Option<u64>,
) -> Result<u64, Refusal> {
    let what = "stream records";
    let ctx = context(CONTEXT_STREAM, block_id);
    let seq = verify(keys, pool, &ctx, bytes, what)?;
    let last = match *newest {
        Some(n) => n,
        None => {
            let (tail, _) = block.stream_bounds()?;
            let held = block.read_records(tail, usize::MAX, u64::MAX)?;
            // The highest seq of a record that verifies. A record's header names its seq and
            // its signature covers the header, so the records are tried from the highest seq
            // named down, and the first that verifies is the answer: one signature checked
            // (~50 µs) where a ring written through the server has every record verify,
            // rather than one per record held.
            let mut named: Vec<(u64, &[u8])> = held
                .records
                .iter()
                .filter_map(|r| Some((peek_seq(r).ok()?, &r[..])))
                .collect();
            named.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
            let n = named
                .iter()
                .find_map(|(_, r)| verify(keys, pool, &ctx, r, what).ok())
                .unwrap_or(0);
            *newest = Some(n);
            n
        }
    };
    if seq <= last {
        return Err(Refusal::new(
            ErrorCode::StaleRecord,
            format!(
                "encrypted pool '{pool}': stream '{block_id}' already holds a record sealed at or after this one (a replay, or sealed before another writer's append landed): seal it again and append (the SDK does)"
            ),
        ));
    }
    Ok(seq)
}
