//! Stream blocks: a ring of records. Producers append under the write side; each consumer
//! reads from its own cursor. Positions grow forever (the ring offset is `pos % size`); a record
//! is an 8-byte little-endian length and the payload, padded to 8 bytes, and may wrap around the
//! end of the ring.
//!
//! When the ring is full, a block created with `overwrite` drops its oldest records (a consumer
//! that falls behind is told how many it missed); otherwise the append fails with
//! [`MemError::StreamFull`] while a registered consumer still has to read the oldest record.
//! Records no registered consumer needs are reclaimed as space is needed.

use std::sync::atomic::Ordering;

use crate::block::{Block, Kind};
use crate::{CONSUMER_NAME_MAX, MAX_CONSUMERS, MemError, RECORD_OVERHEAD};

/// Where a consumer is: the ring position and index of the next record it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    pub pos: u64,
    pub index: u64,
}

/// Records read from a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    pub records: Vec<Vec<u8>>,
    /// Records dropped (overwritten) before this consumer read them.
    pub skipped: u64,
    /// Where the next read starts.
    pub next: Cursor,
    /// The block's version when these were read.
    pub version: u64,
}

fn padded(len: u64) -> u64 {
    RECORD_OVERHEAD + len.div_ceil(8) * 8
}

fn name_key(name: &str) -> u64 {
    // FNV-1a, never 0 (0 marks a free slot).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

impl Block {
    /// Copies `out.len()` bytes from ring position `pos` (wrapping).
    fn ring_read(&self, pos: u64, out: &mut [u8]) {
        let size = self.size();
        let at = (pos % size) as usize;
        let first = out.len().min(size as usize - at);
        let data = self.data_ptr();
        // SAFETY: both parts are inside the data region; torn reads are caught by the seqlock.
        unsafe {
            std::ptr::copy_nonoverlapping(data.add(at), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(data, out.as_mut_ptr().add(first), out.len() - first);
        }
    }

    /// Copies `src` to ring position `pos` (wrapping). Only under the write side.
    fn ring_write(&self, pos: u64, src: &[u8]) {
        let size = self.size();
        let at = (pos % size) as usize;
        let first = src.len().min(size as usize - at);
        let data = self.data_ptr();
        // SAFETY: both parts are inside the data region; the caller holds the write side.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), data.add(at), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), data, src.len() - first);
        }
    }

    fn record_len(&self, pos: u64) -> u64 {
        let mut len = [0u8; 8];
        self.ring_read(pos, &mut len);
        u64::from_le_bytes(len)
    }

    /// Appends one record; returns its index and the block's new version.
    pub fn append(&self, record: &[u8]) -> Result<(u64, u64), MemError> {
        self.expect_kind(Kind::Stream)?;
        let size = self.size();
        let need = padded(record.len() as u64);
        if need > size {
            return Err(MemError::RecordTooLarge {
                len: record.len() as u64,
                capacity: size.saturating_sub(RECORD_OVERHEAD),
            });
        }
        let w = self.lock_writer()?;
        let h = self.header();
        let head = h.head.load(Ordering::Relaxed);
        let mut tail = h.tail.load(Ordering::Relaxed);
        let mut tail_index = h.tail_index.load(Ordering::Relaxed);
        // Records before `keep` may be dropped to make room.
        let keep = if self.overwrite() {
            head
        } else {
            self.slowest_consumer().map_or(head, |c| c.pos.max(tail))
        };
        while size - (head - tail) < need {
            if tail >= keep {
                return Err(MemError::StreamFull {
                    need,
                    free: size - (head - tail),
                });
            }
            tail += padded(self.record_len(tail));
            tail_index += 1;
        }
        let index = h.head_index.load(Ordering::Relaxed);
        let v = w.write(|| {
            self.ring_write(head, &(record.len() as u64).to_le_bytes());
            self.ring_write(head + RECORD_OVERHEAD, record);
            h.tail.store(tail, Ordering::Relaxed);
            h.tail_index.store(tail_index, Ordering::Relaxed);
            h.head.store(head + need, Ordering::Relaxed);
            h.head_index.store(index + 1, Ordering::Relaxed);
        });
        Ok((index, v))
    }

    /// The position of the oldest record still held, and of the next one to be appended.
    pub fn stream_bounds(&self) -> Result<(Cursor, Cursor), MemError> {
        self.expect_kind(Kind::Stream)?;
        let h = self.header();
        let (b, _) = self.consistent(|| {
            (
                Cursor {
                    pos: h.tail.load(Ordering::Relaxed),
                    index: h.tail_index.load(Ordering::Relaxed),
                },
                Cursor {
                    pos: h.head.load(Ordering::Relaxed),
                    index: h.head_index.load(Ordering::Relaxed),
                },
            )
        })?;
        Ok(b)
    }

    /// Reads up to `max` records (and at most `max_bytes` of payload, but always at least one
    /// record when there is one) from `from`. A cursor behind the oldest record held resumes
    /// there and reports how many records it missed.
    pub fn read_records(&self, from: Cursor, max: usize, max_bytes: u64) -> Result<Records, MemError> {
        self.read_records_within(from, max, max_bytes, |len| len)
    }

    /// [`read_records`](Self::read_records), with each record costing `cost(its length)` of
    /// `budget` rather than its length: for a reply that spends more than the record's bytes on
    /// each (its entry in a list of lengths, base64 text). Still at least one record when there
    /// is one, whatever it costs.
    pub fn read_records_within(
        &self,
        from: Cursor,
        max: usize,
        budget: u64,
        cost: impl Fn(u64) -> u64,
    ) -> Result<Records, MemError> {
        self.expect_kind(Kind::Stream)?;
        let h = self.header();
        let size = self.size();
        let path = self.path().to_owned();
        let (out, version) = self.consistent(|| {
            let head = h.head.load(Ordering::Relaxed);
            let tail = h.tail.load(Ordering::Relaxed);
            let tail_index = h.tail_index.load(Ordering::Relaxed);
            let (mut cur, skipped) = if from.pos < tail || from.index < tail_index {
                (
                    Cursor {
                        pos: tail,
                        index: tail_index,
                    },
                    tail_index.saturating_sub(from.index),
                )
            } else {
                (from, 0)
            };
            let mut records = vec![];
            let mut spent = 0u64;
            while cur.pos < head && records.len() < max {
                let len = self.record_len(cur.pos);
                if padded(len) > head - cur.pos || padded(len) > size {
                    // Only possible mid-write (then the seqlock retries) or in a corrupt file.
                    return Err(cur);
                }
                if !records.is_empty() && spent.saturating_add(cost(len)) > budget {
                    break;
                }
                let mut r = vec![0u8; len as usize];
                self.ring_read(cur.pos + RECORD_OVERHEAD, &mut r);
                records.push(r);
                spent = spent.saturating_add(cost(len));
                cur.pos += padded(len);
                cur.index += 1;
            }
            Ok((records, skipped, cur))
        })?;
        let (records, skipped, next) = out.map_err(|at| MemError::BadFile {
            path,
            why: format!("stream record at position {} runs past the head", at.pos),
        })?;
        Ok(Records {
            records,
            skipped,
            next,
            version,
        })
    }

    /// Registers (or finds) the named consumer; a new one starts at the oldest record held.
    /// Returns its slot. Needs a writable mapping.
    pub fn consumer(&self, name: &str) -> Result<usize, MemError> {
        self.expect_kind(Kind::Stream)?;
        if name.is_empty() || name.len() > CONSUMER_NAME_MAX {
            return Err(MemError::BadConsumerName);
        }
        let _w = self.lock_writer()?;
        let key = name_key(name);
        let h = self.header();
        let mut free = None;
        for (i, s) in h.consumers.iter().enumerate() {
            let k = s.key.load(Ordering::Acquire);
            if k == 0 {
                free.get_or_insert(i);
            } else if k == key && self.slot_name(i) == name.as_bytes() {
                return Ok(i);
            }
        }
        let i = free.ok_or(MemError::TooManyConsumers)?;
        let s = &h.consumers[i];
        s.pos.store(h.tail.load(Ordering::Relaxed), Ordering::Relaxed);
        s.index.store(h.tail_index.load(Ordering::Relaxed), Ordering::Relaxed);
        s.name_len.store(name.len() as u64, Ordering::Relaxed);
        // SAFETY: the slot is free and we hold the write side, which guards slot names.
        unsafe {
            let dst = std::ptr::addr_of!(s.name).cast::<u8>().cast_mut();
            std::ptr::copy_nonoverlapping(name.as_ptr(), dst, name.len());
        }
        s.key.store(key, Ordering::Release);
        Ok(i)
    }

    /// Forgets a named consumer (it no longer holds records back). False if it was not there.
    pub fn remove_consumer(&self, name: &str) -> Result<bool, MemError> {
        self.expect_kind(Kind::Stream)?;
        let _w = self.lock_writer()?;
        let key = name_key(name);
        for (i, s) in self.header().consumers.iter().enumerate() {
            if s.key.load(Ordering::Acquire) == key && self.slot_name(i) == name.as_bytes() {
                s.key.store(0, Ordering::Release);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The cursor stored in a consumer slot.
    pub fn consumer_cursor(&self, slot: usize) -> Cursor {
        let s = &self.header().consumers[slot];
        Cursor {
            pos: s.pos.load(Ordering::Acquire),
            index: s.index.load(Ordering::Acquire),
        }
    }

    /// Moves a consumer's stored cursor forward (never back) after it read. Needs a writable
    /// mapping.
    pub fn commit_cursor(&self, slot: usize, to: Cursor) -> Result<(), MemError> {
        if !self.writable() {
            return Err(MemError::ReadOnly);
        }
        let s = &self.header().consumers[slot];
        s.pos.fetch_max(to.pos, Ordering::AcqRel);
        s.index.fetch_max(to.index, Ordering::AcqRel);
        Ok(())
    }

    /// Registered consumer names with their cursors.
    pub fn consumers(&self) -> Vec<(String, Cursor)> {
        if self.kind() != Kind::Stream {
            return vec![];
        }
        (0..MAX_CONSUMERS)
            .filter(|&i| self.header().consumers[i].key.load(Ordering::Acquire) != 0)
            .map(|i| {
                (
                    String::from_utf8_lossy(&self.slot_name(i)).into_owned(),
                    self.consumer_cursor(i),
                )
            })
            .collect()
    }

    fn slot_name(&self, i: usize) -> Vec<u8> {
        let s = &self.header().consumers[i];
        let len = (s.name_len.load(Ordering::Acquire) as usize).min(CONSUMER_NAME_MAX);
        let mut out = vec![0u8; len];
        // SAFETY: the name bytes are inside the header; they change only when a slot is claimed.
        unsafe {
            std::ptr::copy_nonoverlapping(std::ptr::addr_of!(s.name).cast::<u8>(), out.as_mut_ptr(), len);
        }
        out
    }

    fn slowest_consumer(&self) -> Option<Cursor> {
        self.header()
            .consumers
            .iter()
            .filter(|s| s.key.load(Ordering::Acquire) != 0)
            .map(|s| Cursor {
                pos: s.pos.load(Ordering::Acquire),
                index: s.index.load(Ordering::Acquire),
            })
            .min_by_key(|c| c.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Spec;

    fn stream(size: u64, overwrite: bool) -> (tempfile::TempDir, Block) {
        let dir = tempfile::tempdir().unwrap();
        let b = Block::create(
            &dir.path().join("s"),
            Spec {
                kind: Kind::Stream,
                size,
                overwrite,
            },
        )
        .unwrap();
        (dir, b)
    }

    #[test]
    fn two_consumers_each_read_everything_in_order() {
        let (_d, b) = stream(256, false);
        let (a, c) = (b.consumer("a").unwrap(), b.consumer("c").unwrap());
        assert_eq!(b.consumer("a").unwrap(), a, "same name, same slot");
        for i in 0..5u8 {
            assert_eq!(b.append(&[i; 3]).unwrap().0, u64::from(i));
        }
        let r = b.read_records(b.consumer_cursor(a), 3, u64::MAX).unwrap();
        assert_eq!(r.records, vec![vec![0; 3], vec![1; 3], vec![2; 3]]);
        b.commit_cursor(a, r.next).unwrap();
        let r = b.read_records(b.consumer_cursor(a), 10, u64::MAX).unwrap();
        assert_eq!(r.records.len(), 2);
        assert_eq!(r.next.index, 5);
        let r = b.read_records(b.consumer_cursor(c), 10, u64::MAX).unwrap();
        assert_eq!(r.records.len(), 5);
        assert_eq!(r.skipped, 0);
    }

    #[test]
    fn full_ring_errors_until_the_slowest_consumer_reads() {
        let (_d, b) = stream(64, false);
        let slow = b.consumer("slow").unwrap();
        // Each record of 8 bytes takes 16; four fill the ring.
        for i in 0..4u8 {
            b.append(&[i; 8]).unwrap();
        }
        let v = b.version();
        assert!(matches!(b.append(&[9; 8]), Err(MemError::StreamFull { .. })));
        assert_eq!(b.version(), v, "a refused append changes nothing");
        let r = b.read_records(b.consumer_cursor(slow), 2, u64::MAX).unwrap();
        b.commit_cursor(slow, r.next).unwrap();
        b.append(&[9; 8]).unwrap();
        b.append(&[10; 8]).unwrap();
        let r = b.read_records(b.consumer_cursor(slow), 10, u64::MAX).unwrap();
        assert_eq!(r.records, vec![vec![2; 8], vec![3; 8], vec![9; 8], vec![10; 8]]);
        assert!(matches!(b.append(&[0; 57]), Err(MemError::RecordTooLarge { .. })));
        // Without a consumer holding them, old records are reclaimed.
        assert!(b.remove_consumer("slow").unwrap());
        b.append(&[11; 8]).unwrap();
    }

    #[test]
    fn overwrite_drops_oldest_and_reports_skips() {
        let (_d, b) = stream(64, true);
        let c = b.consumer("c").unwrap();
        for i in 0..10u8 {
            b.append(&[i; 5]).unwrap();
        }
        let r = b.read_records(b.consumer_cursor(c), 100, u64::MAX).unwrap();
        assert_eq!(r.skipped, 6);
        assert_eq!(r.records, (6..10u8).map(|i| vec![i; 5]).collect::<Vec<_>>());
    }

    #[test]
    fn records_wrap_around_the_ring_end() {
        // Size not a multiple of 8: length prefixes and payloads split across the end.
        let (_d, b) = stream(100, true);
        let mut cur = Cursor::default();
        for i in 0..50u32 {
            let rec: Vec<u8> = (0..(i % 13) as u8).collect();
            b.append(&rec).unwrap();
            let r = b.read_records(cur, 10, u64::MAX).unwrap();
            assert_eq!(r.skipped, 0);
            assert_eq!(r.records, vec![rec]);
            cur = r.next;
        }
        assert!(matches!(b.consumer(""), Err(MemError::BadConsumerName)));
        assert!(matches!(b.write(0, b"x"), Err(MemError::WrongKind { .. })));
    }

    #[test]
    fn max_bytes_limits_a_read_but_never_below_one_record() {
        let (_d, b) = stream(1024, false);
        for _ in 0..4 {
            b.append(&[1; 100]).unwrap();
        }
        let r = b.read_records(Cursor::default(), 10, 150).unwrap();
        assert_eq!(r.records.len(), 1);
        let r = b.read_records(Cursor::default(), 10, 10).unwrap();
        assert_eq!(r.records.len(), 1);
        // Costed: 100 bytes a record plus 20 fit two in 250, where bytes alone fit all four.
        let r = b
            .read_records_within(Cursor::default(), 10, 250, |len| len + 20)
            .unwrap();
        assert_eq!((r.records.len(), r.next.index), (2, 2));
        let r = b.read_records_within(Cursor::default(), 10, 400, |len| len).unwrap();
        assert_eq!(r.records.len(), 4);
    }
}
