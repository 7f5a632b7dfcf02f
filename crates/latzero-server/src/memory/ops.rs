//! The block actions: permission and lock checks, then the operation and its reply.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use latzero_memory::{HEADER_LEN, Kind, LAYOUT_VERSION};
use latzero_proto::frame::{JsonFrame, encode_binary_onto, encode_message};
use latzero_proto::message::{BlockOp, BlockRequest, BlockType, LockMode, PoolOp, RawValue};
use latzero_proto::{AppId, ErrorCode, PoolName};
use serde_json::json;

use super::{Entry, Memory, Refusal, StoreWork};
use crate::session::conn::Conn;

/// Records a stream read returns when the request names no `max`, and the most it may name.
const DEFAULT_RECORDS: usize = 1000;
const MAX_RECORDS: usize = latzero_proto::message::MAX_STREAM_READ;
/// Room left in a reply frame for its JSON header.
const HEADER_ROOM: usize = 64 * 1024;

fn denied(app: &AppId, what: &str, e: &Entry) -> Refusal {
    Refusal::new(
        ErrorCode::PermissionDenied,
        format!(
            "app '{app}' may not {what} block '{}' (read: {:?}, write: {:?})",
            e.meta.block_id, e.perms.read, e.perms.write
        ),
    )
}

/// The requesting app (a member of the request's pool) and what the pool's policies let it do
/// with blocks; a block's own read/write lists apply on top.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller<'a> {
    pub app: &'a AppId,
    pub read: bool,
    pub write: bool,
    /// Encrypted pools: the key generations' verifiers (writes through the server are checked).
    pub keys: Option<&'a [latzero_crypto::Verifiers]>,
}

impl Caller<'_> {
    fn policy(&self, pool: &PoolName, op: PoolOp) -> Result<(), Refusal> {
        let ok = match op {
            PoolOp::Read => self.read,
            _ => self.write,
        };
        if ok {
            return Ok(());
        }
        Err(Refusal::new(
            ErrorCode::PermissionDenied,
            format!(
                "pool '{pool}' policy does not allow app '{}' to {} memory blocks (policies.{})",
                self.app,
                op.as_str(),
                op.as_str()
            ),
        ))
    }

    fn may_read(&self, e: &Entry) -> Result<(), Refusal> {
        self.policy(&e.meta.pool, PoolOp::Read)?;
        if e.perms.may_read(self.app.as_str()) {
            Ok(())
        } else {
            Err(denied(self.app, "read", e))
        }
    }

    fn may_write(&self, e: &Entry) -> Result<(), Refusal> {
        self.policy(&e.meta.pool, PoolOp::Write)?;
        if e.perms.may_write(self.app.as_str()) {
            Ok(())
        } else {
            Err(denied(self.app, "write", e))
        }
    }
}

impl Memory {
    /// Runs one block action for `who` on `conn`; replies go to `conn`. `body` is the binary
    /// frame's body, if the request came in one.
    pub fn handle(
        &self,
        conn: &Arc<Conn>,
        who: Caller<'_>,
        id: Option<&RawValue>,
        req: BlockRequest<'_>,
        body: Option<&[u8]>,
        max_frame_len: usize,
    ) -> Result<Option<StoreWork>, Refusal> {
        // An answer that grows with what it describes (a pool's blocks, base64 data) is held to
        // the frame limit, as the session's listings are (the reads below keep within their
        // room first, and say so in their own terms).
        let reply = |v: serde_json::Value| -> Result<(), Refusal> {
            conn.reply_within(&encode_message(&v), max_frame_len)
                .map_err(|why| Refusal::new(ErrorCode::FrameTooLarge, why))
        };
        let app = who.app;
        let Some(block_id) = &req.block_id else {
            who.policy(&req.pool, PoolOp::Read)?;
            let blocks: Vec<_> = self.list(&req.pool).iter().map(|e| e.describe()).collect();
            reply(json!({ "action": "block_list_result", "in_reply_to": id, "pool": req.pool, "blocks": blocks }))?;
            return Ok(None);
        };
        if body.is_some() && !matches!(req.op, BlockOp::Write { .. }) {
            return Err(Refusal::new(
                ErrorCode::InvalidMessage,
                "only block_write carries a binary body; send this action as a JSON frame",
            ));
        }
        if let BlockOp::Create {
            size,
            kind,
            persistent,
            permissions,
            overwrite,
        } = req.op
        {
            who.policy(&req.pool, PoolOp::Write)?;
            if who.keys.is_some() && kind == BlockType::Json {
                return Err(Refusal::new(
                    ErrorCode::NotAvailable,
                    "encrypted pools hold binary and stream blocks of sealed records; json blocks are not available in them (the server cannot check a document it cannot read): seal the document into a binary block (the SDK's EncryptedPool::write_json)",
                ));
            }
            return Ok(Some(StoreWork::Create {
                pool: req.pool,
                block_id: block_id.clone(),
                owner: app.clone(),
                kind,
                size,
                persistent,
                permissions,
                overwrite,
                id: id.map(ToOwned::to_owned),
            }));
        }
        let e = self.get(&req.pool, block_id)?;
        match req.op {
            BlockOp::Create { .. } | BlockOp::List => unreachable!("handled above"),
            BlockOp::Attach { write } => {
                let write = write.unwrap_or_else(|| who.write && e.perms.may_write(app.as_str()));
                if write {
                    who.may_write(&e)?;
                } else {
                    who.may_read(&e)?;
                }
                reply(json!({
                    "action": "block_attached",
                    "in_reply_to": id,
                    "block": e.describe(),
                    "path": e.block.path(),
                    "mode": if write { "write" } else { "read" },
                    "header_len": HEADER_LEN,
                    "layout_version": LAYOUT_VERSION,
                }))?;
            }
            BlockOp::Read {
                offset,
                length,
                consumer,
                max,
                base64,
            } => {
                who.may_read(&e)?;
                let room = max_frame_len.saturating_sub(HEADER_ROOM) as u64;
                match e.block.kind() {
                    Kind::Binary => {
                        let len = length.unwrap_or_else(|| e.block.size().saturating_sub(offset));
                        // Base64 spends four bytes of text on every three.
                        let (most, as_what) = if base64 {
                            (room / 4 * 3, " as base64")
                        } else {
                            (room, "")
                        };
                        if len > most {
                            return Err(Refusal::new(
                                ErrorCode::OutOfRange,
                                format!(
                                    "a read through the server returns at most {most} bytes{as_what} (max_frame_len less header room); read in chunks, or attach and map the block"
                                ),
                            ));
                        }
                        let head = |version: u64| {
                            json!({
                                "action": "block_data", "in_reply_to": id, "pool": req.pool, "block_id": block_id,
                                "version": version, "offset": offset, "length": len,
                            })
                        };
                        if base64 {
                            let mut buf = vec![0u8; len as usize];
                            let version = e.block.read(offset, &mut buf)?;
                            let mut head = head(version);
                            head["data"] = json!(B64.encode(&buf));
                            reply(head)?;
                        } else {
                            // Read straight into the connection's buffer, under the header of the
                            // version read with the bytes (guessed from the version now; a write
                            // in between only moves the bytes along if its digits differ). Three
                            // buffers of the read's size, each allocated and let go per read, had
                            // malloc hand memory back and fault it in again: 1 MiB reads took 5x
                            // as long (docs/BENCHMARKS.md).
                            let to_vec = |v: serde_json::Value| serde_json::to_vec(&v).unwrap_or_default();
                            let guess = to_vec(head(e.block.version()));
                            let mut read = Ok(0);
                            let _ = conn.reply_with(|b| {
                                read = encode_binary_onto(
                                    b,
                                    &guess,
                                    len as usize,
                                    |body| e.block.read(offset, body),
                                    |&version| to_vec(head(version)),
                                );
                            });
                            read?;
                        }
                    }
                    Kind::Json => {
                        // Read straight into the connection's buffer, after the reply's head and
                        // before its version (known once read): no buffer of the document's
                        // size per read, and no tree of it (the document went through a
                        // `serde_json::Value` on its way out before). A document longer than a
                        // reply may be is refused, as a binary read is: sent, the frame would be
                        // over the client's limit, which ends its connection.
                        //
                        // A mapped writer's bytes reach the file without the server, so each
                        // version is checked as JSON once before it is sent: a version already
                        // checked goes out as it is read, under the connection's lock; any other
                        // is read and checked apart, without the lock, which other frames to
                        // this connection wait on (checking 1 MB takes a millisecond or two).
                        let too_long = |len: usize| {
                            Refusal::new(
                                ErrorCode::OutOfRange,
                                format!(
                                    "the document is {len} bytes; a read through the server returns at most {room} (max_frame_len less header room): attach and map the block, or raise max_frame_len"
                                ),
                            )
                        };
                        // The reply, with the document `body` appends and the version it returns.
                        // `Err(None)`: the version read was not checked yet (nothing is sent).
                        type Body<'a> = dyn FnMut(&mut Vec<u8>) -> Result<u64, Option<Refusal>> + 'a;
                        let frame = |b: &mut Vec<u8>, body: &mut Body<'_>| {
                            let start = b.len();
                            let mut f = JsonFrame::after(std::mem::take(b), 160);
                            f.name("action", "block_data")
                                .raw("in_reply_to", id.map_or("null", RawValue::get))
                                .name("pool", req.pool.as_str())
                                .name("block_id", block_id.as_str());
                            let got = f.raw_with("document", body);
                            if let Ok(version) = got {
                                f.u64("version", version);
                            }
                            let mut v = f.into_vec();
                            if got.is_err() {
                                v.truncate(start);
                            }
                            *b = v;
                            got.map(|_| ())
                        };
                        let mut sent = Err(None);
                        if e.json_checked(e.block.version())
                            && conn
                                .reply_with(|b| {
                                    sent = frame(b, &mut |v| {
                                        let (len, version) = e
                                            .block
                                            .read_json_onto(v, room as usize)
                                            .map_err(|err| Some(err.into()))?;
                                        if len as u64 > room {
                                            return Err(Some(too_long(len)));
                                        }
                                        if e.json_checked(version) {
                                            Ok(version)
                                        } else {
                                            Err(None)
                                        }
                                    })
                                })
                                .is_err()
                        {
                            return Ok(None); // the connection is closing: no one to answer
                        }
                        match sent {
                            Ok(()) => {}
                            Err(Some(refusal)) => return Err(refusal),
                            Err(None) => {
                                let mut doc = Vec::new();
                                let (len, version) = e.block.read_json_onto(&mut doc, room as usize)?;
                                if len as u64 > room {
                                    return Err(too_long(len));
                                }
                                latzero_memory::check_json(&doc).map_err(|err| {
                                    Refusal::new(ErrorCode::Internal, format!("the stored document is {err}"))
                                })?;
                                e.set_json_checked(version);
                                let _ = conn.reply_with(|b| {
                                    let _ = frame(b, &mut |v| {
                                        v.extend_from_slice(&doc);
                                        Ok(version)
                                    });
                                });
                            }
                        }
                    }
                    Kind::Stream => {
                        let consumer = consumer.ok_or_else(|| {
                            Refusal::new(
                                ErrorCode::InvalidMessage,
                                "reading a stream block needs a `consumer` (its name keeps its cursor)",
                            )
                        })?;
                        let max = max.unwrap_or(DEFAULT_RECORDS);
                        if max == 0 || max > MAX_RECORDS {
                            return Err(Refusal::new(
                                ErrorCode::InvalidMessage,
                                format!("field `max` must be 1 to {MAX_RECORDS}"),
                            ));
                        }
                        let slot = e.block.consumer(&consumer)?;
                        // What a record costs of the reply: its bytes (or their base64 text,
                        // quoted, and a comma) and its entry in `lengths` (digits and a comma).
                        // A hundred thousand short records spend more on their entries than on
                        // their bytes.
                        let cost = |len: u64| {
                            let entry = len.checked_ilog10().unwrap_or(0) as u64 + 2;
                            entry + if base64 { len.div_ceil(3) * 4 + 3 } else { len }
                        };
                        let r = e
                            .block
                            .read_records_within(e.block.consumer_cursor(slot), max, room, cost)?;
                        if let [one] = &r.records[..]
                            && cost(one.len() as u64) > room
                        {
                            // Left where it is, for a mapping to read (the cursor stays).
                            return Err(Refusal::new(
                                ErrorCode::OutOfRange,
                                format!(
                                    "the next record is {} bytes, more than a read through the server returns{} ({room} bytes of reply: max_frame_len less header room); attach and map the block to read it",
                                    one.len(),
                                    if base64 { " as base64" } else { "" }
                                ),
                            ));
                        }
                        e.block.commit_cursor(slot, r.next)?;
                        let lengths: Vec<usize> = r.records.iter().map(Vec::len).collect();
                        let mut head = json!({
                            "action": "block_records", "in_reply_to": id, "pool": req.pool, "block_id": block_id,
                            "version": r.version, "skipped": r.skipped, "next_index": r.next.index, "lengths": lengths,
                        });
                        if base64 {
                            head["records"] = json!(r.records.iter().map(|x| B64.encode(x)).collect::<Vec<_>>());
                            reply(head)?;
                        } else {
                            // The records go straight into the connection's buffer (see the
                            // binary read above).
                            let head = serde_json::to_vec(&head).unwrap_or_default();
                            let total = lengths.iter().sum();
                            let _ = conn.reply_with(|b| {
                                let _ = encode_binary_onto(
                                    b,
                                    &head,
                                    total,
                                    |body| {
                                        let mut at = 0;
                                        for r in &r.records {
                                            body[at..at + r.len()].copy_from_slice(r);
                                            at += r.len();
                                        }
                                        Ok::<_, std::convert::Infallible>(())
                                    },
                                    |_| head.clone(),
                                );
                            });
                        }
                    }
                }
            }
            BlockOp::Write { offset, data, document } => {
                who.may_write(&e)?;
                e.state().locks.check_write(conn.id)?;
                let decoded;
                let bytes: &[u8] = match (body, &data, document) {
                    (Some(b), None, None) => b,
                    (None, Some(d), None) => {
                        decoded = B64.decode(d.as_bytes()).map_err(|err| {
                            Refusal::new(
                                ErrorCode::InvalidMessage,
                                format!("field `data` is not valid base64: {err}"),
                            )
                        })?;
                        &decoded
                    }
                    (None, None, Some(doc)) if e.block.kind() == Kind::Json => doc.get().as_bytes(),
                    (None, None, Some(_)) => {
                        return Err(Refusal::new(
                            ErrorCode::WrongType,
                            "field `document` is for json blocks; send `data` (base64) or a binary frame",
                        ));
                    }
                    (None, None, None) => {
                        return Err(Refusal::new(
                            ErrorCode::InvalidMessage,
                            "block_write needs the bytes: a binary frame's body, `data` (base64) or, for json blocks, `document`",
                        ));
                    }
                    _ => {
                        return Err(Refusal::new(
                            ErrorCode::InvalidMessage,
                            "block_write takes exactly one of: a binary body, `data`, `document`",
                        ));
                    }
                };
                let len = bytes.len() as u64;
                // An encrypted stream's newest seq, held until the append is done.
                let mut sealed_append = None;
                if let Some(keys) = who.keys
                    && e.block.kind() == Kind::Stream
                {
                    let mut newest = e.sealed_newest.lock().unwrap_or_else(|p| p.into_inner());
                    let seq = crate::sealed::check_stream_append(
                        keys,
                        req.pool.as_str(),
                        block_id.as_str(),
                        &e.block,
                        bytes,
                        &mut newest,
                    )?;
                    sealed_append = Some((newest, seq));
                } else if let Some(keys) = who.keys {
                    // The record the write replaces: its length prefix, then the record.
                    let mut prefix = [0u8; 4];
                    e.block.read(0, &mut prefix)?;
                    let old_len = 4 + u64::from(u32::from_be_bytes(prefix));
                    let mut current = vec![0u8; old_len.min(e.block.size()) as usize];
                    e.block.read(0, &mut current)?;
                    crate::sealed::check_block_write(
                        keys,
                        req.pool.as_str(),
                        block_id.as_str(),
                        offset,
                        bytes,
                        &current,
                    )?;
                }
                match e.block.kind() {
                    Kind::Binary => {
                        let v = e.block.write(offset, bytes)?;
                        reply(json!({ "action": "block_written", "in_reply_to": id, "version": v }))?;
                        e.changed(v, offset, len);
                    }
                    Kind::Json => {
                        let v = e.block.write_json(bytes)?;
                        e.set_json_checked(v); // `write_json` checked it
                        reply(json!({ "action": "block_written", "in_reply_to": id, "version": v }))?;
                        e.changed(v, 0, len);
                    }
                    Kind::Stream => {
                        let (index, v) = e.block.append(bytes)?;
                        if let Some((mut newest, seq)) = sealed_append {
                            *newest = Some(seq);
                        }
                        reply(json!({ "action": "block_written", "in_reply_to": id, "version": v, "index": index }))?;
                        e.changed(v, index, len);
                    }
                }
            }
            BlockOp::Lock {
                mode,
                lease_ms,
                wait_ms,
            } => {
                match mode {
                    LockMode::Shared => who.may_read(&e)?,
                    LockMode::Exclusive => who.may_write(&e)?,
                }
                let max = self.config.max_lease;
                let ms = |v: Option<u64>, default: Duration, field: &str| match v {
                    None => Ok(default),
                    Some(ms) if Duration::from_millis(ms) <= max && (ms > 0 || field == "wait_ms") => {
                        Ok(Duration::from_millis(ms))
                    }
                    Some(ms) => Err(Refusal::new(
                        ErrorCode::InvalidMessage,
                        format!(
                            "field `{field}` is {ms}; it must be {} to {} ms",
                            if field == "wait_ms" { 0 } else { 1 },
                            max.as_millis()
                        ),
                    )),
                };
                let lease = ms(lease_ms, self.config.default_lease, "lease_ms")?;
                let wait = ms(wait_ms, Duration::ZERO, "wait_ms")?;
                e.lock(conn, id, mode, lease, wait)?;
            }
            BlockOp::Unlock => {
                e.unlock(conn.id)?;
                reply(
                    json!({ "action": "block_unlocked", "in_reply_to": id, "pool": req.pool, "block_id": block_id }),
                )?;
            }
            BlockOp::Watch { since, created_at } => {
                who.may_read(&e)?;
                let mut st = e.state();
                st.watchers.insert(conn.id, conn.clone());
                let version = e.block.version();
                reply(
                    json!({ "action": "block_watching", "in_reply_to": id, "pool": req.pool, "block_id": block_id, "version": version }),
                )?;
                // The initial state: what changed since the watcher last looked, then "synced".
                // Another creation time, or a version above this one: the watcher saw another
                // block of this name (this one was deleted and created again, or a
                // non-persistent one went with a restart).
                let replaced = created_at.is_some_and(|c| c != e.meta.created_at);
                let behind = replaced
                    || match since {
                        Some(s) => s != version,
                        None => version > 0,
                    };
                if behind {
                    reply(json!({
                        "action": "block_event", "event": "changed", "pool": req.pool, "block_id": block_id,
                        "version": version, "offset": 0, "length": e.block.size(),
                    }))?;
                }
                reply(json!({
                    "action": "block_event", "event": "synced", "pool": req.pool, "block_id": block_id,
                    "version": version, "created_at": e.meta.created_at,
                }))?;
                drop(st);
            }
            BlockOp::Unwatch => {
                e.state().watchers.remove(&conn.id);
                reply(
                    json!({ "action": "block_unwatched", "in_reply_to": id, "pool": req.pool, "block_id": block_id }),
                )?;
            }
            BlockOp::Notify {
                version,
                offset,
                length,
            } => {
                who.may_write(&e)?;
                let current = e.block.version();
                if version > current {
                    return Err(Refusal::new(
                        ErrorCode::InvalidMessage,
                        format!("version {version} is not visible in the block yet (it is at {current})"),
                    ));
                }
                if e.block.kind() == Kind::Binary && offset.checked_add(length).is_none_or(|end| end > e.block.size()) {
                    return Err(Refusal::new(
                        ErrorCode::OutOfRange,
                        format!("range {offset}+{length} is outside the block (size {})", e.block.size()),
                    ));
                }
                e.changed(version, offset, length);
                if id.is_some() {
                    reply(json!({ "action": "block_notified", "in_reply_to": id, "version": version }))?;
                }
            }
            BlockOp::Delete => {
                who.may_write(&e)?;
                self.delete(&e);
                tracing::info!(pool = %req.pool, block = %block_id, by = %app, "block deleted");
                if e.meta.persistent {
                    return Ok(Some(StoreWork::Deleted {
                        entry: e,
                        id: id.map(ToOwned::to_owned),
                    }));
                }
                reply(json!({ "action": "block_deleted", "in_reply_to": id, "pool": req.pool, "block_id": block_id }))?;
            }
            BlockOp::Stat => {
                who.policy(&req.pool, PoolOp::Read)?;
                reply(json!({ "action": "block_stat_result", "in_reply_to": id, "block": e.describe() }))?;
            }
        }
        Ok(None)
    }
}
