//! The pending-call table: every call handed to a handler and not finished yet, keyed by the
//! server-assigned hop id.
//!
//! Sharded by hop id so that concurrent calls rarely meet on one lock; each critical section is
//! a map operation. A call leaves the table exactly once — by reply, by deadline, by disconnect
//! of either side, or by shutdown — and whoever removes it sends its terminal frame, which is
//! what makes "exactly one terminal frame per call" hold.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use compact_str::CompactString;
use latzero_proto::message::RawValue;
use rustc_hash::FxHashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::session::conn::{Conn, ConnId};

pub(crate) const SHARDS: usize = 64;

/// Where a call's terminal frame goes.
#[derive(Debug)]
pub(crate) enum Target {
    /// Back to the caller.
    Caller,
    /// To a third app (`reply_to`).
    ReplyTo(Arc<Conn>),
    /// Into one slot of a broadcast group.
    Broadcast { group: Arc<Group>, slot: usize },
}

/// A pending call's handler: counted in its connection's `handling` from the call's delivery
/// until the call's entry is dropped, however the call ends.
#[derive(Debug)]
pub(crate) struct Handling(Arc<Conn>);

impl Handling {
    pub fn new(handler: Arc<Conn>) -> Self {
        handler.handling.fetch_add(1, Ordering::Relaxed);
        Handling(handler)
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.handling.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::ops::Deref for Handling {
    type Target = Arc<Conn>;
    fn deref(&self) -> &Arc<Conn> {
        &self.0
    }
}

/// One pending call (one hop: caller → handler).
#[derive(Debug)]
pub(crate) struct Pending {
    pub caller: Arc<Conn>,
    /// The caller's own id, its JSON text echoed verbatim in the terminal frame: kept inline
    /// up to 24 bytes (the SDK's ids are integers), so that a call's entry allocates nothing.
    pub caller_id: CompactString,
    pub handler: Handling,
    pub deadline: Instant,
    pub ttl: Duration,
    pub target: Target,
}

impl Pending {
    /// The caller's id as a JSON value, for the error frames that carry it as one. The text
    /// came from a checked `&RawValue`, so it parses; `None` (a frame without the id) only if
    /// that were ever not so.
    pub fn caller_id_raw(&self) -> Option<&RawValue> {
        serde_json::from_str(&self.caller_id).ok()
    }
}

/// A broadcast call: one slot per handler; the caller gets one frame when every slot is filled.
#[derive(Debug)]
pub(crate) struct Group {
    pub state: Mutex<GroupState>,
}

#[derive(Debug)]
pub(crate) struct GroupState {
    /// Each slot is a handler's app id and the finished JSON object describing its result.
    pub slots: Vec<Option<(String, String)>>,
    pub remaining: usize,
}

impl Group {
    pub fn new(n: usize) -> Arc<Group> {
        Arc::new(Group {
            state: Mutex::new(GroupState {
                slots: vec![None; n],
                remaining: n,
            }),
        })
    }
}

/// What a handler's response found in the table.
#[derive(Debug)]
pub(crate) enum Take {
    /// The call, removed from the table.
    Found(Pending),
    /// The call exists but was sent to another connection.
    NotYours,
    /// The call existed and has finished (timed out, or its caller left).
    Finished,
    /// No such call was ever sent.
    Never,
}

#[derive(Debug, Default)]
struct Shard {
    /// Hop ids are the server's own: a fast hash, no need for SipHash's flood resistance.
    map: FxHashMap<u64, Pending>,
    /// The deadlines of the calls in `map`, earliest on top. A call that leaves by any other
    /// way leaves its entry behind (a B-tree's remove cost ~125 instructions per call); an
    /// entry whose hop is no longer in `map` is dropped when it comes to the top, and all of
    /// them when they outnumber the live ones (see `remove`), so the heap stays within
    /// 2 × this shard's calls in flight + `SPARE` entries.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
}

/// Stale deadline entries a shard keeps before it sweeps them out (bounds the sweeps' cost per
/// call when few calls are in flight).
pub(crate) const SPARE: usize = 64;

impl Shard {
    fn insert(&mut self, hop: u64, p: Pending) {
        // Hop ids are never reused, so an entry with this hop is live exactly while the hop
        // is in `map`.
        self.deadlines.push(Reverse((p.deadline, hop)));
        self.map.insert(hop, p);
    }

    fn remove(&mut self, hop: u64) -> Option<Pending> {
        let p = self.map.remove(&hop)?;
        if self.map.is_empty() {
            self.deadlines.clear();
        } else if self.deadlines.len() > 2 * self.map.len() + SPARE {
            let map = &self.map;
            self.deadlines.retain(|Reverse((_, h))| map.contains_key(h));
        }
        Some(p)
    }

    /// The earliest deadline of a call still here, and its hop (stale entries on top dropped).
    fn first(&mut self) -> Option<(Instant, u64)> {
        while let Some(&Reverse((dl, hop))) = self.deadlines.peek() {
            if self.map.contains_key(&hop) {
                return Some((dl, hop));
            }
            self.deadlines.pop();
        }
        None
    }
}

/// The table.
#[derive(Debug)]
pub(crate) struct PendingTable {
    shards: Box<[Mutex<Shard>]>,
    next_hop: AtomicU64,
    /// Earliest deadline the timer knows about, in ns since `epoch`; `u64::MAX` for none.
    earliest: AtomicU64,
    epoch: Instant,
    /// Wakes the timer when a call with an earlier deadline than it sleeps towards arrives.
    pub wake: Notify,
}

impl PendingTable {
    pub fn new() -> Self {
        PendingTable {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            next_hop: AtomicU64::new(1),
            earliest: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            wake: Notify::new(),
        }
    }

    fn shard(&self, hop: u64) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard lock would be a bug; the data is still consistent
        // (each operation is a single map update), so keep serving.
        self.shards[(hop as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh hop id; never reused.
    pub fn next_hop(&self) -> u64 {
        self.next_hop.fetch_add(1, Ordering::Relaxed)
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch)
            .as_nanos()
            .min(u64::MAX as u128 - 1) as u64
    }

    pub fn insert(&self, hop: u64, p: Pending) {
        let dl = p.deadline;
        {
            self.shard(hop).insert(hop, p);
        }
        let ns = self.ns(dl);
        // Read before the read-modify-write: calls with one ttl arrive in deadline order, so
        // the timer almost always knows an earlier deadline already, and a plain load (not a
        // locked instruction on a word every connection's calls share) settles it. A timer
        // that has reset `earliest` (`next_deadline`) since this call's shard was written is
        // seen here, as it would be by `fetch_min` alone.
        if ns < self.earliest.load(Ordering::Acquire) && ns < self.earliest.fetch_min(ns, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Removes a call unconditionally.
    pub fn take(&self, hop: u64) -> Option<Pending> {
        self.shard(hop).remove(hop)
    }

    /// Removes a call only if it was sent to `conn`.
    pub fn take_for(&self, hop: u64, conn: ConnId) -> Take {
        let mut s = self.shard(hop);
        match s.map.get(&hop) {
            Some(p) if p.handler.id == conn => Take::Found(s.remove(hop).expect("present")),
            Some(_) => Take::NotYours,
            None if hop > 0 && hop < self.next_hop.load(Ordering::Relaxed) => Take::Finished,
            None => Take::Never,
        }
    }

    /// Removes every call whose deadline is at or before `now`.
    pub fn expire(&self, now: Instant) -> Vec<Pending> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
            while let Some((dl, hop)) = s.first() {
                if dl > now {
                    break;
                }
                if let Some(p) = s.remove(hop) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// The earliest deadline, resetting the timer's bookkeeping (see `insert`).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.earliest.store(u64::MAX, Ordering::Release);
        let min = self
            .shards
            .iter()
            .filter_map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).first().map(|d| d.0))
            .min();
        if let Some(m) = min {
            self.earliest.fetch_min(self.ns(m), Ordering::AcqRel);
        }
        min
    }

    /// Removes every call matching `pred`.
    pub fn drain_where(&self, mut pred: impl FnMut(&Pending) -> bool) -> Vec<Pending> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
            let hops: Vec<u64> = s.map.iter().filter(|(_, p)| pred(p)).map(|(h, _)| *h).collect();
            for h in hops {
                if let Some(p) = s.remove(h) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Deadline entries held, stale ones included (for tests of the bound on them).
    #[cfg(test)]
    pub fn deadline_entries(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).deadlines.len())
            .sum()
    }

    /// Calls in flight.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }
}
