//! One block: create or open its file, map it, and read and write it under the seqlock.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};

use crate::{HEADER_LEN, LAYOUT_VERSION, MAGIC, MAX_CONSUMERS, MemError, pid_alive};

/// How long a writer waits for the write side, and a reader for a write in progress to end,
/// before giving up with [`MemError::Busy`]. Writes hold the write side only while they copy.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(2);

/// Spins before a waiting reader or writer starts yielding the CPU.
const SPINS: u32 = 100;

/// What a block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Raw bytes, read and written at any offset.
    Binary,
    /// One JSON document, replaced as a whole; writes are validated.
    Json,
    /// A ring of records: producers append, each consumer reads from its own cursor.
    Stream,
}

impl Kind {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Binary => "binary",
            Kind::Json => "json",
            Kind::Stream => "stream",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "binary" => Some(Kind::Binary),
            "json" => Some(Kind::Json),
            "stream" => Some(Kind::Stream),
            _ => None,
        }
    }

    fn code(self) -> u32 {
        self as u32
    }

    fn from_code(c: u32) -> Option<Kind> {
        [Kind::Binary, Kind::Json, Kind::Stream]
            .into_iter()
            .find(|k| k.code() == c)
    }
}

/// What to create.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub kind: Kind,
    /// Data bytes (the file is [`HEADER_LEN`] longer).
    pub size: u64,
    /// Stream only: when the ring is full, drop the oldest records (true) or refuse the append.
    pub overwrite: bool,
}

/// A named consumer's cursor in a stream block's header.
#[repr(C)]
pub(crate) struct ConsumerSlot {
    /// FNV-1a of the name; 0 = free.
    pub(crate) key: AtomicU64,
    /// The ring position of the next record to read.
    pub(crate) pos: AtomicU64,
    /// The index of that record (records appended before it).
    pub(crate) index: AtomicU64,
    pub(crate) name_len: AtomicU64,
    pub(crate) name: [u8; crate::CONSUMER_NAME_MAX],
}

/// The block file's header. Fields before `version` are written once, at create, before any
/// other process can open the file; the rest are atomics.
#[repr(C)]
pub(crate) struct Header {
    magic: [u8; 8],
    layout_version: u32,
    kind: u32,
    size: u64,
    /// Bit 0: a stream drops its oldest records when full.
    flags: u64,
    /// Bumped by every write; a reader sees the version that goes with the bytes it read.
    pub(crate) version: AtomicU64,
    /// The seqlock word: odd while a write is in progress.
    pub(crate) seq: AtomicU64,
    /// The pid holding the write side; 0 when free.
    pub(crate) writer: AtomicU64,
    /// Json: the document's length.
    pub(crate) used: AtomicU64,
    /// Stream: the position after the newest record (bytes ever appended, padded).
    pub(crate) head: AtomicU64,
    /// Stream: the position of the oldest record still held.
    pub(crate) tail: AtomicU64,
    /// Stream: records appended ever (the index of the next one).
    pub(crate) head_index: AtomicU64,
    /// Stream: the index of the record at `tail`.
    pub(crate) tail_index: AtomicU64,
    pub(crate) consumers: [ConsumerSlot; MAX_CONSUMERS],
    /// Non-zero once the server deleted the block (its file unlinked): every mapping still open
    /// refuses to read or write it. Zero in a file written before this field existed, whose
    /// header was zero-filled there.
    pub(crate) deleted: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_LEN as usize);
// docs/PROTOCOL.md §7.1 gives the offsets; the last field's pins the layout before it.
const _: () = assert!(std::mem::offset_of!(Header, deleted) == 2656);

const FLAG_OVERWRITE: u64 = 1;

/// A mapped block. Cheap to share between threads (`&Block` is enough for every operation).
pub struct Block {
    map: MmapRaw,
    path: PathBuf,
    kind: Kind,
    size: u64,
    overwrite: bool,
    writable: bool,
    wait: Duration,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("size", &self.size)
            .field("writable", &self.writable)
            .finish()
    }
}

impl Block {
    /// Creates the block's file (which must not exist), allocates every page and maps it.
    /// A json block starts as `null`; a stream starts empty.
    pub fn create(path: &Path, spec: Spec) -> Result<Block, MemError> {
        if spec.size == 0 {
            return Err(MemError::OutOfRange {
                offset: 0,
                len: 0,
                size: 0,
            });
        }
        let io = |op| {
            move |error| MemError::Io {
                op,
                path: path.to_owned(),
                error,
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io("create"))?;
        let total = HEADER_LEN + spec.size;
        let made = (|| {
            fs4::fs_std::FileExt::allocate(&file, total).map_err(|error| MemError::NoSpace {
                size: total,
                path: path.to_owned(),
                error,
            })?;
            let map = MmapOptions::new().map_raw(&file).map_err(io("map"))?;
            let base = map.as_mut_ptr();
            // SAFETY: the file is HEADER_LEN + size bytes, just created by us and zero-filled;
            // nobody else has it open yet (create_new), so plain writes to the header are sound.
            unsafe {
                let h = base.cast::<Header>();
                std::ptr::addr_of_mut!((*h).layout_version).write(LAYOUT_VERSION);
                std::ptr::addr_of_mut!((*h).kind).write(spec.kind.code());
                std::ptr::addr_of_mut!((*h).size).write(spec.size);
                let flags = if spec.overwrite { FLAG_OVERWRITE } else { 0 };
                std::ptr::addr_of_mut!((*h).flags).write(flags);
                if spec.kind == Kind::Json {
                    if spec.size < 4 {
                        return Err(MemError::TooLarge {
                            len: 4,
                            size: spec.size,
                        });
                    }
                    std::ptr::copy_nonoverlapping(b"null".as_ptr(), base.add(HEADER_LEN as usize), 4);
                    (*h).used.store(4, Ordering::Relaxed);
                }
                fence(Ordering::Release);
                std::ptr::addr_of_mut!((*h).magic).write(MAGIC);
            }
            map.flush().map_err(io("flush"))?;
            Ok(map)
        })();
        match made {
            Ok(map) => Ok(Block {
                map,
                path: path.to_owned(),
                kind: spec.kind,
                size: spec.size,
                overwrite: spec.overwrite,
                writable: true,
                wait: DEFAULT_WAIT,
            }),
            Err(e) => {
                drop(file);
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Maps an existing block, read-write or read-only, after checking its header.
    pub fn open(path: &Path, writable: bool) -> Result<Block, MemError> {
        let io = |op| {
            move |error| MemError::Io {
                op,
                path: path.to_owned(),
                error,
            }
        };
        let bad = |why: String| MemError::BadFile {
            path: path.to_owned(),
            why,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(io("open"))?;
        let len = file.metadata().map_err(io("stat"))?.len();
        if len < HEADER_LEN {
            return Err(bad(format!("{len} bytes, shorter than the header")));
        }
        let map = if writable {
            MmapOptions::new().map_raw(&file)
        } else {
            MmapOptions::new().map_raw_read_only(&file)
        }
        .map_err(io("map"))?;
        // SAFETY: the mapping is at least HEADER_LEN bytes; these fields never change after
        // create (which wrote them before the magic, with a release fence).
        let (magic, layout, kind, size, flags) = unsafe {
            let h = map.as_ptr().cast::<Header>();
            let magic = std::ptr::addr_of!((*h).magic).read_volatile();
            fence(Ordering::Acquire);
            (
                magic,
                std::ptr::addr_of!((*h).layout_version).read(),
                std::ptr::addr_of!((*h).kind).read(),
                std::ptr::addr_of!((*h).size).read(),
                std::ptr::addr_of!((*h).flags).read(),
            )
        };
        if magic != MAGIC {
            return Err(bad("wrong magic".into()));
        }
        if layout != LAYOUT_VERSION {
            return Err(bad(format!(
                "layout version {layout}; this build reads {LAYOUT_VERSION}"
            )));
        }
        let kind = Kind::from_code(kind).ok_or_else(|| bad(format!("unknown kind {kind}")))?;
        if size != len - HEADER_LEN {
            return Err(bad(format!(
                "header says {size} data bytes, file holds {}",
                len - HEADER_LEN
            )));
        }
        drop(file);
        Ok(Block {
            map,
            path: path.to_owned(),
            kind,
            size,
            overwrite: flags & FLAG_OVERWRITE != 0,
            writable,
            wait: DEFAULT_WAIT,
        })
    }

    /// How long writers wait for the write side and readers for a write to end.
    pub fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Data bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Stream only: whether a full ring drops its oldest records.
    pub fn overwrite(&self) -> bool {
        self.overwrite
    }

    /// The current version (writes so far).
    pub fn version(&self) -> u64 {
        self.header().version.load(Ordering::Acquire)
    }

    /// Marks the block deleted in its header, for every process that maps it: their reads and
    /// writes fail with [`MemError::Deleted`] from now on. The server calls it once the file is
    /// unlinked, so no process can open the block afresh.
    pub fn mark_deleted(&self) {
        self.header().deleted.store(1, Ordering::Release);
    }

    /// Whether the block was deleted (see [`Block::mark_deleted`]).
    pub fn is_deleted(&self) -> bool {
        self.header().deleted.load(Ordering::Acquire) != 0
    }

    fn check_live(&self) -> Result<(), MemError> {
        if self.is_deleted() {
            return Err(MemError::Deleted);
        }
        Ok(())
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the mapping is at least HEADER_LEN bytes and page-aligned; every field a
        // shared reference reads after open is either immutable or an atomic.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    pub(crate) fn data_ptr(&self) -> *mut u8 {
        // SAFETY: HEADER_LEN is within the mapping.
        unsafe { self.map.as_mut_ptr().add(HEADER_LEN as usize) }
    }

    pub(crate) fn expect_kind(&self, expected: Kind) -> Result<(), MemError> {
        if self.kind == expected {
            Ok(())
        } else {
            Err(MemError::WrongKind {
                expected: expected.as_str(),
                actual: self.kind.as_str(),
            })
        }
    }

    pub(crate) fn check_range(&self, offset: u64, len: u64) -> Result<(), MemError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(MemError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// Takes the write side, repairing the block if its holder died.
    pub(crate) fn lock_writer(&self) -> Result<WriteSide<'_>, MemError> {
        if !self.writable {
            return Err(MemError::ReadOnly);
        }
        let me = u64::from(std::process::id());
        let h = self.header();
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            match h.writer.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => {
                    let w = WriteSide { block: self };
                    // Checked holding the write side: a write that got it before the delete
                    // finishes, one after it is refused (dropping `w` gives the side back).
                    self.check_live()?;
                    return Ok(w);
                }
                Err(owner) => {
                    spins += 1;
                    if spins < SPINS {
                        std::hint::spin_loop();
                        continue;
                    }
                    if owner != me && !pid_alive(owner) {
                        self.repair(owner);
                        continue;
                    }
                    if start.elapsed() > self.wait {
                        return Err(MemError::Busy(self.wait));
                    }
                    std::thread::yield_now();
                }
            }
        }
    }

    /// The write side's holder `dead` is gone: close its write (bumping the version, since it
    /// may have changed bytes) and free the write side.
    fn repair(&self, dead: u64) {
        let h = self.header();
        let me = u64::from(std::process::id());
        if h.writer
            .compare_exchange(dead, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            let s = h.seq.load(Ordering::Relaxed);
            if s & 1 == 1 {
                h.version.fetch_add(1, Ordering::Relaxed);
                h.seq.store(s + 1, Ordering::Release);
            }
            h.writer.store(0, Ordering::Release);
        }
    }

    /// Runs `f` until it ran with no write overlapping it; returns its result and the version
    /// that goes with what it saw. `f` may see bytes change under it: its result is thrown away
    /// then, and it runs again.
    pub(crate) fn consistent<R>(&self, mut f: impl FnMut() -> R) -> Result<(R, u64), MemError> {
        self.check_live()?;
        let h = self.header();
        let start = Instant::now();
        let mut tries = 0u32;
        loop {
            let s1 = h.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let r = f();
                let v = h.version.load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if h.seq.load(Ordering::Relaxed) == s1 {
                    return Ok((r, v));
                }
            }
            tries += 1;
            if tries < SPINS {
                std::hint::spin_loop();
                continue;
            }
            if self.writable && tries >= 2 * SPINS {
                // Busy writers can keep a seqlock reader retrying forever; a writable mapping
                // stops that by reading under the write side, which writers wait for.
                let _w = self.lock_writer()?;
                let r = f();
                return Ok((r, h.version.load(Ordering::Relaxed)));
            }
            let owner = h.writer.load(Ordering::Acquire);
            if owner != 0 && !pid_alive(owner) {
                if !self.writable {
                    return Err(MemError::WriterDied);
                }
                self.repair(owner);
                continue;
            }
            if start.elapsed() > self.wait {
                return Err(MemError::Busy(self.wait));
            }
            std::thread::yield_now();
        }
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`; returns the version they belong to.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<u64, MemError> {
        self.check_range(offset, buf.len() as u64)?;
        let src = self.data_ptr().wrapping_add(offset as usize);
        let ((), v) = self.consistent(|| {
            // SAFETY: the range is inside the mapping; concurrent writers are detected by the
            // seqlock and the copy is then retried.
            unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) }
        })?;
        Ok(v)
    }

    /// Zero-copy read: calls `f` with the mapped bytes `offset..offset+len`, retrying when a
    /// write overlapped the call. `f` must tolerate seeing bytes change under it (a checksum, a
    /// parse that may fail) — such a result is discarded and `f` runs again.
    pub fn read_with<R>(&self, offset: u64, len: u64, mut f: impl FnMut(&[u8]) -> R) -> Result<(R, u64), MemError> {
        self.check_range(offset, len)?;
        let ptr = self.data_ptr().wrapping_add(offset as usize);
        self.consistent(|| {
            // SAFETY: the range is inside the mapping, which outlives the call; see the
            // function's contract for concurrent writes.
            f(unsafe { std::slice::from_raw_parts(ptr, len as usize) })
        })
    }

    /// Writes `data` at `offset` (binary blocks); returns the new version.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<u64, MemError> {
        self.write_with(offset, data.len() as u64, |dst| dst.copy_from_slice(data))
    }

    /// Zero-copy write (binary blocks): `f` fills the mapped bytes `offset..offset+len` in
    /// place, holding the write side; returns the new version.
    pub fn write_with(&self, offset: u64, len: u64, f: impl FnOnce(&mut [u8])) -> Result<u64, MemError> {
        self.expect_kind(Kind::Binary)?;
        self.check_range(offset, len)?;
        let w = self.lock_writer()?;
        let ptr = self.data_ptr().wrapping_add(offset as usize);
        Ok(w.write(|| {
            // SAFETY: in range; we hold the write side, so no other writer touches the bytes.
            f(unsafe { std::slice::from_raw_parts_mut(ptr, len as usize) })
        }))
    }

    /// Json blocks: the document and its version.
    pub fn read_json(&self) -> Result<(Vec<u8>, u64), MemError> {
        let mut doc = Vec::new();
        let (_, v) = self.read_json_onto(&mut doc, usize::MAX)?;
        Ok((doc, v))
    }

    /// Json blocks: appends the document to `out` if it is at most `max` bytes long, and
    /// returns its length and version; a longer one is not copied (`out` is left as it was)
    /// and only its length is returned. For a reply written in place, with no buffer of the
    /// document's size per read.
    pub fn read_json_onto(&self, out: &mut Vec<u8>, max: usize) -> Result<(usize, u64), MemError> {
        self.expect_kind(Kind::Json)?;
        let h = self.header();
        let size = self.size;
        let data = self.data_ptr();
        let base = out.len();
        self.consistent(|| {
            out.truncate(base);
            let used = h.used.load(Ordering::Relaxed).min(size) as usize;
            if used <= max {
                out.reserve(used);
                // SAFETY: `used` is clamped to the data size, and `out` has room for `used`
                // more bytes, which the copy initialises before the length takes them in.
                unsafe {
                    std::ptr::copy_nonoverlapping(data, out.as_mut_ptr().add(base), used);
                    out.set_len(base + used);
                }
            }
            used
        })
    }

    /// Json blocks: replaces the document after checking it is one valid JSON value, nested at
    /// most [`latzero_proto::message::MAX_NESTING`] levels deep (deeper, no client could parse
    /// it when the server sends it).
    pub fn write_json(&self, doc: &[u8]) -> Result<u64, MemError> {
        self.expect_kind(Kind::Json)?;
        check_json(doc)?;
        if doc.len() as u64 > self.size {
            return Err(MemError::TooLarge {
                len: doc.len() as u64,
                size: self.size,
            });
        }
        let w = self.lock_writer()?;
        let data = self.data_ptr();
        let h = self.header();
        Ok(w.write(|| {
            // SAFETY: the length was checked against the data size; we hold the write side.
            unsafe { std::ptr::copy_nonoverlapping(doc.as_ptr(), data, doc.len()) };
            h.used.store(doc.len() as u64, Ordering::Relaxed);
        }))
    }

    /// Flushes the mapping to its file (persistent blocks, before a clean shutdown).
    pub fn flush(&self) -> Result<(), MemError> {
        self.map.flush().map_err(|error| MemError::Io {
            op: "flush",
            path: self.path.clone(),
            error,
        })
    }
}

/// Whether `doc` is one JSON value that nests at most [`latzero_proto::message::MAX_NESTING`]
/// levels deep: what a json block may hold (PROTOCOL.md §3, §7).
pub fn check_json(doc: &[u8]) -> Result<(), MemError> {
    use latzero_proto::message::{MAX_NESTING, nests_within};
    serde_json::from_slice::<serde::de::IgnoredAny>(doc).map_err(|e| MemError::InvalidJson(e.to_string()))?;
    // Valid JSON is UTF-8.
    if !nests_within(std::str::from_utf8(doc).unwrap_or_default(), MAX_NESTING) {
        return Err(MemError::InvalidJson(format!(
            "the document nests arrays and objects more than {MAX_NESTING} levels deep, the most a payload may (PROTOCOL.md §3)"
        )));
    }
    Ok(())
}

/// The write side, held: writes go through [`WriteSide::write`]; dropping it releases.
pub(crate) struct WriteSide<'a> {
    pub(crate) block: &'a Block,
}

impl WriteSide<'_> {
    /// Runs `f` inside the seqlock (odd while it runs), bumps the version; returns the new one.
    pub(crate) fn write(&self, f: impl FnOnce()) -> u64 {
        let h = self.block.header();
        let s = h.seq.load(Ordering::Relaxed);
        h.seq.store(s + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        f();
        let v = h.version.fetch_add(1, Ordering::Relaxed) + 1;
        h.seq.store(s + 2, Ordering::Release);
        v
    }
}

impl Drop for WriteSide<'_> {
    fn drop(&mut self) {
        self.block.header().writer.store(0, Ordering::Release);
    }
}

/// Opens a file only to check it exists and is a block (used by sweeps).
pub fn is_block_file(path: &Path) -> bool {
    let mut magic = [0u8; 8];
    File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn spec(kind: Kind, size: u64) -> Spec {
        Spec {
            kind,
            size,
            overwrite: false,
        }
    }

    #[test]
    fn a_block_marked_deleted_is_refused_through_every_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let (b, j, st) = (dir.path().join("b"), dir.path().join("j"), dir.path().join("s"));
        let server = Block::create(&b, spec(Kind::Binary, 64)).unwrap();
        let json = Block::create(&j, spec(Kind::Json, 64)).unwrap();
        let stream = Block::create(&st, spec(Kind::Stream, 256)).unwrap();
        let (client, reader) = (Block::open(&b, true).unwrap(), Block::open(&b, false).unwrap());
        assert_eq!(client.write(0, b"live").unwrap(), 1);
        let (js, ss) = (Block::open(&j, true).unwrap(), Block::open(&st, true).unwrap());
        for x in [&server, &json, &stream] {
            x.mark_deleted();
        }
        let mut buf = [0u8; 4];
        assert!(client.is_deleted() && reader.is_deleted());
        assert!(matches!(client.write(0, b"lost"), Err(MemError::Deleted)));
        assert!(matches!(client.read(0, &mut buf), Err(MemError::Deleted)));
        assert!(matches!(reader.read_with(0, 4, |_| ()), Err(MemError::Deleted)));
        assert!(matches!(js.write_json(b"1"), Err(MemError::Deleted)));
        assert!(matches!(js.read_json(), Err(MemError::Deleted)));
        assert!(matches!(ss.append(b"r"), Err(MemError::Deleted)));
        assert!(matches!(ss.stream_bounds(), Err(MemError::Deleted)));
        // A refused write gave the write side back: the bytes are as they were.
        assert_eq!(client.header().writer.load(Ordering::Relaxed), 0);
        assert_eq!(client.version(), 1);
    }

    #[test]
    fn create_open_write_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        let b = Block::create(&p, spec(Kind::Binary, 8192)).unwrap();
        assert_eq!(b.version(), 0);
        assert_eq!(b.write(10, b"hello").unwrap(), 1);
        let other = Block::open(&p, false).unwrap();
        let mut buf = [0u8; 5];
        assert_eq!(other.read(10, &mut buf).unwrap(), 1);
        assert_eq!(&buf, b"hello");
        assert!(matches!(other.write(0, b"x"), Err(MemError::ReadOnly)));
        assert!(matches!(b.write(8190, b"xyz"), Err(MemError::OutOfRange { .. })));
        assert!(matches!(b.read(u64::MAX, &mut buf), Err(MemError::OutOfRange { .. })));
        assert!(matches!(
            Block::create(&p, spec(Kind::Binary, 1)),
            Err(MemError::Io { .. })
        ));
        assert!(is_block_file(&p));
    }

    /// A file error tells its I/O error in its message and does not hand it on as the source
    /// as well (a report walking the chain would tell it twice).
    #[test]
    fn a_file_error_tells_its_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        Block::create(&p, spec(Kind::Binary, 64)).unwrap();
        let Err(e) = Block::create(&p, spec(Kind::Binary, 64)) else {
            panic!("a block was created over another");
        };
        let MemError::Io { error, .. } = &e else {
            panic!("creating a block over another is an I/O error, not {e}");
        };
        assert!(e.to_string().contains(&error.to_string()), "{e}");
        assert!(std::error::Error::source(&e).is_none());
    }

    #[test]
    fn rejects_foreign_and_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk");
        std::fs::write(&p, vec![7u8; 5000]).unwrap();
        assert!(matches!(Block::open(&p, false), Err(MemError::BadFile { .. })));
        std::fs::write(&p, b"short").unwrap();
        assert!(matches!(Block::open(&p, false), Err(MemError::BadFile { .. })));
        let q = dir.path().join("b");
        Block::create(&q, spec(Kind::Binary, 4096)).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&q)
            .unwrap()
            .set_len(4096 + 100)
            .unwrap();
        assert!(matches!(Block::open(&q, false), Err(MemError::BadFile { .. })));
        assert!(matches!(
            Block::create(&dir.path().join("z"), spec(Kind::Binary, 0)),
            Err(MemError::OutOfRange { .. })
        ));
    }

    #[test]
    fn json_documents_are_validated_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let b = Block::create(&dir.path().join("j"), spec(Kind::Json, 64)).unwrap();
        assert_eq!(b.read_json().unwrap(), (b"null".to_vec(), 0));
        assert_eq!(b.write_json(br#"{"a":[1,2,3]}"#).unwrap(), 1);
        assert_eq!(b.write_json(b"7").unwrap(), 2);
        assert_eq!(b.read_json().unwrap(), (b"7".to_vec(), 2));
        assert!(matches!(b.write_json(b"{nope"), Err(MemError::InvalidJson(_))));
        assert!(matches!(b.write_json(b"1 2"), Err(MemError::InvalidJson(_))));
        // Nested past what a payload may be (PROTOCOL.md §3), however short.
        let max = latzero_proto::message::MAX_NESTING;
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(
            matches!(b.write_json(deep(max + 1).as_bytes()), Err(MemError::InvalidJson(m)) if m.contains("levels deep"))
        );
        assert!(check_json(deep(max).as_bytes()).is_ok());
        let big = format!("\"{}\"", "x".repeat(100));
        assert!(matches!(b.write_json(big.as_bytes()), Err(MemError::TooLarge { .. })));
        assert!(matches!(b.write(0, b"x"), Err(MemError::WrongKind { .. })));
        assert_eq!(
            b.read_json().unwrap(),
            (b"7".to_vec(), 2),
            "failed writes leave it intact"
        );
        // Onto what a buffer holds already; a document longer than `max` leaves it as it was.
        b.write_json(br#"{"k":"v"}"#).unwrap();
        let mut out = b"head:".to_vec();
        assert_eq!(b.read_json_onto(&mut out, 9).unwrap(), (9, 3));
        assert_eq!(out, br#"head:{"k":"v"}"#);
        let mut out = b"head:".to_vec();
        assert_eq!(b.read_json_onto(&mut out, 8).unwrap(), (9, 3));
        assert_eq!(out, b"head:");
    }

    /// Writers fill the whole block with one byte value; readers must never see two values.
    /// The read-only reader relies on the seqlock alone (writers pause between writes, or it
    /// could be starved); the writable one also runs against writers that never pause.
    #[test]
    fn readers_never_see_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        let b = Arc::new(Block::create(&p, spec(Kind::Binary, 8 * 1024)).unwrap());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pause = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let (b, stop, pause) = (b.clone(), stop.clone(), pause.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let v = (n as u8).wrapping_mul(2).wrapping_add(t);
                        b.write_with(0, b.size(), |d| d.fill(v)).unwrap();
                        n += 1;
                        if pause.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_micros(20));
                        }
                    }
                    n
                })
            })
            .collect();
        let ro = Block::open(&p, false).unwrap();
        let rw = Block::open(&p, true).unwrap();
        let mut buf = vec![0u8; 8 * 1024];
        let mut last = 0;
        for i in 0..2000 {
            if i == 1000 {
                pause.store(false, Ordering::Relaxed);
            }
            let reader = if i < 1000 { &ro } else { &rw };
            let v = reader.read(0, &mut buf).unwrap();
            assert!(buf.iter().all(|&x| x == buf[0]), "torn read at version {v}");
            assert!(v >= last, "versions only grow");
            last = v;
            let (same, _) = reader.read_with(0, 8 * 1024, |d| d.iter().all(|&x| x == d[0])).unwrap();
            assert!(same);
        }
        stop.store(true, Ordering::Relaxed);
        let writes: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(b.version(), writes);
    }

    /// A writer that died mid-write (its pid in `writer`, `seq` odd) is repaired by the next
    /// writer; a read-only reader says so instead of spinning forever.
    #[test]
    fn a_dead_writer_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        let mut b = Block::create(&p, spec(Kind::Binary, 4096)).unwrap();
        b.set_wait(Duration::from_millis(200));
        // A pid that cannot be alive: above the kernel's pid_max.
        let dead = 1u64 << 30;
        b.header().writer.store(dead, Ordering::SeqCst);
        b.header().seq.store(1, Ordering::SeqCst);
        let ro = Block::open(&p, false).unwrap();
        let mut buf = [0u8; 4];
        assert!(matches!(ro.read(0, &mut buf), Err(MemError::WriterDied)));
        assert_eq!(
            b.write(0, b"ok").unwrap(),
            2,
            "repair bumps the version, then the write"
        );
        assert_eq!(ro.read(0, &mut buf).unwrap(), 2);
        // A live holder (this process, on another block handle) makes writers wait, then give up.
        let _w = b.lock_writer().unwrap();
        let mut other = Block::open(&p, true).unwrap();
        other.set_wait(Duration::from_millis(50));
        assert!(matches!(other.write(0, b"x"), Err(MemError::Busy(_))));
    }
}
