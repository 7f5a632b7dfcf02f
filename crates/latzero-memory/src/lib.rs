//! LatZero memory blocks: the file every process maps.
//!
//! A block is one file: a 4096-byte header followed by `size` bytes of data, so the data is
//! page-aligned. The server creates it (allocating every page up front, so a full disk or a full
//! `/dev/shm` is an error at create, never a `SIGBUS` later) and maps it; local clients map the
//! same file. The header carries the layout, a version counter bumped by every write, and a
//! seqlock:
//!
//! - A writer takes the *write side* by storing its pid in `writer` (compare-and-swap from 0),
//!   makes `seq` odd, writes, bumps `version`, makes `seq` even again and releases the write side.
//!   Writers exclude each other; readers never block them.
//! - A reader notes `seq` (even), copies, and checks `seq` again; if it moved, the copy may be
//!   torn and the read is retried.
//! - A writer that dies mid-write leaves `seq` odd and its pid in `writer`. The next writer (or a
//!   reader with a writable mapping) that finds that pid gone repairs the block: it bumps the
//!   version (the interrupted write may be half done, and watchers must hear that the content
//!   changed), closes the seqlock and releases the write side. Nothing stays wedged.
//!
//! The three kinds share the header: `binary` is raw bytes; `json` holds one JSON document
//! (`used` is its length; writes are validated); `stream` is a ring of length-prefixed records
//! with `head`/`tail` positions and up to [`MAX_CONSUMERS`] named consumer cursors in the header.
//!
//! This is the one crate that reads and writes mapped memory, so it is the one crate allowed
//! `unsafe`. Concurrent access from other processes is outside Rust's memory model: every access
//! to shared data goes through raw pointers and the atomics in the header, never through a
//! reference that outlives the seqlock check — except in [`Block::read_with`], whose closure is
//! documented to see bytes that may change under it (its result is discarded when they did).

#![allow(unsafe_code)]

mod block;
mod stream;

pub use block::{Block, DEFAULT_WAIT, Kind, Spec, check_json, is_block_file};
pub use stream::{Cursor, Records};

use std::path::PathBuf;

/// The file's first eight bytes.
pub const MAGIC: [u8; 8] = *b"LZBLOCK\0";
/// The header layout this crate reads and writes.
pub const LAYOUT_VERSION: u32 = 1;
/// Bytes before the data: one page, so the data is page-aligned.
pub const HEADER_LEN: u64 = 4096;
/// Named consumer cursors a stream block holds in its header.
pub const MAX_CONSUMERS: usize = 32;
/// Longest consumer name, in bytes.
pub const CONSUMER_NAME_MAX: usize = 48;
/// Bytes a stream record takes besides its payload (its length prefix); records are padded to 8.
pub const RECORD_OVERHEAD: u64 = 8;

/// What can go wrong with a block. The server maps each to a wire error code. Each message tells
/// its cause itself, and no variant hands it on as [`source`](std::error::Error::source) too (a
/// report walking the chain would tell it twice).
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// A file operation failed.
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// The pages could not be allocated (disk or `/dev/shm` full, or over a quota).
    #[error("cannot allocate {size} bytes for {path}: {error}")]
    NoSpace {
        size: u64,
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file is not a block this version understands.
    #[error("{path} is not a usable memory block: {why}")]
    BadFile { path: PathBuf, why: String },
    /// An offset/length outside the block.
    #[error("range {offset}+{len} is outside the block (size {size})")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// The operation does not apply to this kind of block.
    #[error("this is a {actual} block; the operation needs a {expected} block")]
    WrongKind {
        expected: &'static str,
        actual: &'static str,
    },
    /// A json block's write that is not one valid JSON document.
    #[error("not a valid JSON document: {0}")]
    InvalidJson(String),
    /// A json document larger than the block.
    #[error("the document is {len} bytes; the block holds {size}")]
    TooLarge { len: u64, size: u64 },
    /// The write side stayed taken for longer than the wait allowed.
    #[error("another writer held the block for longer than {0:?}")]
    Busy(std::time::Duration),
    /// A writer died mid-write and this read-only mapping cannot repair the block.
    #[error("a writer died mid-write; a writable mapping (or the server) must repair the block")]
    WriterDied,
    /// A write through a read-only mapping.
    #[error("the block is mapped read-only")]
    ReadOnly,
    /// A stream record larger than the ring.
    #[error("record of {len} bytes does not fit a ring of {capacity} bytes")]
    RecordTooLarge { len: u64, capacity: u64 },
    /// A stream whose policy is `error` has no room until its slowest consumer reads.
    #[error("stream full: {need} bytes needed, {free} free until the slowest consumer reads")]
    StreamFull { need: u64, free: u64 },
    /// Every consumer slot of a stream is taken.
    #[error("the stream already has {MAX_CONSUMERS} consumers")]
    TooManyConsumers,
    /// A consumer name that is empty or too long.
    #[error("consumer name must be 1 to {CONSUMER_NAME_MAX} bytes")]
    BadConsumerName,
    /// The block was deleted while this mapping was open; a block created since under the same
    /// name is another block, to attach afresh.
    #[error("the block was deleted; attach it again if it has been created anew")]
    Deleted,
}

/// Whether a process still exists (a pid held in `writer` by a process that died is stale).
fn pid_alive(pid: u64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
