//! The pending-call table: a waiter for every request sent and not yet answered, and one
//! sweeper per client that ends the calls whose wait has run out.
//!
//! One sweeper, not a timer per call: a call's own timer costs ~550 instructions to arm and
//! disarm, and when the runtime's threads are parked with no timer due, arming one from a thread
//! outside the runtime (a `#[tokio::main]` caller) wakes the runtime's driver to re-arm its own
//! wait — a system call and often a context switch on every call.
//!
//! No clock read per call either (~25 ns each on the VM docs/BENCHMARKS.md was measured on, ~1.5%
//! of a pipelined call): time is counted in the sweeper's ticks. While calls are pending the
//! sweeper wakes every [`TICK`] and advances the table's tick count by one; a call records the
//! count at which it ends, `now + ceil(wait / TICK) + 1`. The count only moves after a full
//! tick's sleep, so a call never ends before its wait is over, and at most two ticks (plus the
//! runtime's timer lateness) after. With nothing pending the sweeper sleeps until the next call.
//! The wait is a backstop — the server answers by the call's ttl, and the wait adds at least a
//! second to that — so a tick of a tenth of a second is precise enough.

use std::collections::hash_map::Entry as Slot;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use rustc_hash::FxHashMap;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::client::lock;
use crate::error::ClientError;
use crate::payload::Payload;

/// How often the sweeper looks while calls are pending: the precision of a call's wait.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// When a call's wait runs out, in the sweeper's ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Expiry(u64);

/// The form a request's caller wants its reply in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// The whole frame (broadcast results, admin replies).
    Frame = 0,
    /// The call's result; the reader computes it while it has the frame parsed.
    Value = 1,
    /// The call's result as JSON text, a view into the reply frame.
    Raw = 2,
    /// The frame with its binary body (memory-block replies).
    Full = 3,
}

impl Want {
    /// The id of a client's `seq`th request that wants its reply in this form. The form is in
    /// the id's two low bits, so the reader knows how to read a reply from its `in_reply_to`
    /// alone: no look into the table (a lock per call) before it reads the reply.
    pub fn id(self, seq: u64) -> u64 {
        seq << 2 | self as u64
    }

    /// The form the reply to request `id` is wanted in.
    pub fn of(id: u64) -> Want {
        match id & 3 {
            0 => Want::Frame,
            1 => Want::Value,
            2 => Want::Raw,
            _ => Want::Full,
        }
    }
}

/// A reply, in the form its caller wants.
pub(crate) enum Reply {
    Frame(Bytes),
    Value(Result<Value, ClientError>),
    Raw(Result<Payload, ClientError>),
    Full(latzero_proto::Frame),
}

/// The calls waiting for their reply, the replies not yet collected, and when each call's wait
/// runs out.
///
/// A reply is handed over in the table itself: the reader stores it in its call's entry and
/// wakes the caller, who takes it out. No channel per call — a `oneshot` channel was an
/// allocation and ~500 instructions of a pipelined call.
pub(crate) struct Pending {
    calls: Mutex<Calls>,
    /// Wakes the sweeper from its sleep when a call arrives at an empty table.
    wake: Notify,
    /// How many calls the table holds: stored under its lock (a plain store, where counting
    /// each call in and out beside the table were two atomic read-modify-writes, ~5 ns each:
    /// docs/BENCHMARKS.md, "Atomic operations"), read without it by a caller choosing to write
    /// its frame itself and by the writer task gathering frames.
    len: Arc<AtomicUsize>,
}

struct Calls {
    /// Keyed by our own sequential ids: a fast hash, no need for SipHash's flood resistance.
    calls: FxHashMap<u64, Call>,
    /// Requests made so far: the sequence number in the next request's id ([`Want::id`]).
    made: u64,
    /// Ticks the sweeper has counted.
    now: u64,
    /// No call ends before this tick (a lower bound: it is not raised when calls leave).
    earliest: u64,
    /// The sweeper sleeps until [`Pending::wake`]: it found the table empty.
    asleep: bool,
}

/// The locked table ([`Pending::lock`]).
struct Locked<'a> {
    guard: std::sync::MutexGuard<'a, Calls>,
    len: &'a AtomicUsize,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Calls;
    fn deref(&self) -> &Calls {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Calls {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.len.store(self.guard.calls.len(), Ordering::Relaxed);
    }
}

struct Call {
    state: State,
    expiry: Expiry,
}

enum State {
    /// No reply yet; the caller's waker once it has waited.
    Waiting(Option<Waker>),
    /// The reply, for the caller to take.
    Answered(Reply),
}

impl Pending {
    pub fn new() -> Pending {
        Pending {
            calls: Mutex::new(Calls {
                calls: FxHashMap::default(),
                made: 0,
                now: 0,
                earliest: u64::MAX,
                asleep: true,
            }),
            wake: Notify::new(),
            len: Arc::default(),
        }
    }

    /// The table, locked: its length is stored in `len` as the lock is let go, whatever
    /// changed it.
    fn lock(&self) -> Locked<'_> {
        Locked {
            guard: lock(&self.calls),
            len: &self.len,
        }
    }

    /// How many calls are in the table (waiting, or answered and not yet collected), as last
    /// stored under its lock.
    pub fn len(&self) -> &Arc<AtomicUsize> {
        &self.len
    }

    /// Waits for the reply to `id` (made by [`Want::id`]) for at least `wait`, waking `waker`
    /// (if any yet) when it comes; then the sweeper ends the call. Returns when the wait runs
    /// out, for [`expired`](Self::expired). Callers go through [`wait`](Self::wait), whose
    /// guard takes the call out if they give up on it.
    #[cfg(test)]
    fn insert(&self, id: u64, wait: Duration, waker: Option<Waker>) -> Expiry {
        self.insert_with(|_| id, wait, waker).1
    }

    /// [`insert`](Self::insert) with the id `id_of` makes of the request's sequence number,
    /// counted under the table's lock (no atomic counter of its own); returns the id too.
    fn insert_with(&self, id_of: impl FnOnce(u64) -> u64, wait: Duration, waker: Option<Waker>) -> (u64, Expiry) {
        let mut calls = self.lock();
        calls.made += 1;
        let id = id_of(calls.made);
        let ticks = wait.as_nanos().div_ceil(TICK.as_nanos()).min(u64::MAX as u128 / 2) as u64;
        let expiry = Expiry(calls.now.saturating_add(ticks + 1));
        calls.calls.insert(
            id,
            Call {
                state: State::Waiting(waker),
                expiry,
            },
        );
        calls.earliest = calls.earliest.min(expiry.0);
        if calls.asleep {
            calls.asleep = false;
            drop(calls);
            self.wake.notify_one();
        }
        (id, expiry)
    }

    /// A new request that wants its reply in the form `want`, in the table on behalf of a
    /// caller with the waker of the poll that makes it ([`Waiting::id`] is its id): the call
    /// leaves the table when the returned guard drops, if it has not left by itself (the
    /// caller gave up on it).
    pub fn wait(&self, want: Want, wait: Duration, waker: &Waker) -> Waiting<'_> {
        let (id, expiry) = self.insert_with(|seq| want.id(seq), wait, Some(waker.clone()));
        Waiting {
            pending: self,
            id,
            expiry,
            left: false,
            look: true,
        }
    }

    /// Whether the call `id` is still waiting for its reply.
    pub fn waiting(&self, id: u64) -> bool {
        matches!(
            self.lock().calls.get(&id),
            Some(Call {
                state: State::Waiting(_),
                ..
            })
        )
    }

    /// Hands `reply` to the call `id` and wakes its caller; nothing, and `false`, if it is not
    /// waiting (any more). The caller is woken outside the lock: one woken on another thread
    /// must not find the table still locked (a futex wait and two more context switches when
    /// it preempts this thread).
    pub fn answer(&self, id: u64, reply: Reply) -> bool {
        let waker = {
            let mut calls = self.lock();
            let Some(call) = calls.calls.get_mut(&id) else {
                return false;
            };
            let State::Waiting(waker) = &mut call.state else {
                return false;
            };
            let waker = waker.take();
            call.state = State::Answered(reply);
            waker
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// The reply to `id` once it is there, taken out of the table with the call; `None` if
    /// the call ended without one (the connection dropped, or its wait ran out).
    pub fn poll_reply(&self, id: u64, cx: &mut Context<'_>) -> Poll<Option<Reply>> {
        let mut calls = self.lock();
        let Slot::Occupied(mut call) = calls.calls.entry(id) else {
            return Poll::Ready(None);
        };
        match &mut call.get_mut().state {
            State::Waiting(Some(w)) if w.will_wake(cx.waker()) => Poll::Pending,
            State::Waiting(w) => {
                *w = Some(cx.waker().clone());
                Poll::Pending
            }
            State::Answered(_) => {
                let call = call.remove();
                match call.state {
                    State::Answered(reply) => Poll::Ready(Some(reply)),
                    State::Waiting(_) => Poll::Ready(None),
                }
            }
        }
    }

    /// Takes the call `id` out of the table, answered or not (its caller gave up on it).
    pub fn remove(&self, id: u64) {
        let mut calls = self.lock();
        let call = calls.calls.remove(&id);
        drop(calls);
        drop(call);
    }

    /// Whether a wait that runs out at `expiry` has run out.
    pub fn expired(&self, expiry: Expiry) -> bool {
        self.lock().now >= expiry.0
    }

    /// Ends every call still waiting (each caller then hears that the connection is gone).
    /// Replies already handed over stay for their callers.
    pub fn clear(&self) {
        let mut gone = Vec::new();
        let mut calls = self.lock();
        calls.calls.retain(|_, call| match &mut call.state {
            State::Waiting(w) => {
                gone.extend(w.take());
                false
            }
            State::Answered(_) => true,
        });
        drop(calls);
        gone.into_iter().for_each(Waker::wake);
    }

    /// Until `closed`: counts ticks while calls are pending, and ends each call whose wait has
    /// run out. Its caller, finding its call gone after its wait ran out, reports no reply.
    pub async fn sweep(&self, closed: CancellationToken) {
        loop {
            if self.lock().asleep {
                tokio::select! {
                    _ = closed.cancelled() => return,
                    _ = self.wake.notified() => {}
                }
            }
            // A full tick before the count moves: a call made just before it must not lose a
            // tick of its wait.
            tokio::select! {
                _ = closed.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            let mut expired = Vec::new();
            {
                let mut calls = self.lock();
                calls.now += 1;
                let now = calls.now;
                if now >= calls.earliest {
                    // A reply already handed over is its caller's to take, however late.
                    calls.calls.retain(|_, call| match &mut call.state {
                        State::Waiting(w) if call.expiry.0 <= now => {
                            expired.extend(w.take());
                            false
                        }
                        _ => true,
                    });
                    calls.earliest = calls
                        .calls
                        .values()
                        .filter(|c| matches!(c.state, State::Waiting(_)))
                        .map(|c| c.expiry.0)
                        .min()
                        .unwrap_or(u64::MAX);
                }
                calls.asleep = calls.calls.is_empty();
            }
            // Woken outside the lock.
            expired.into_iter().for_each(Waker::wake);
        }
    }

    #[cfg(test)]
    fn ticks(&self) -> u64 {
        self.lock().now
    }
}

/// A caller's call in the table. Dropped before the call has left (the caller dropped its
/// future), it takes the call out, so a call given up on does not wait for a reply or its
/// deadline.
pub(crate) struct Waiting<'a> {
    pending: &'a Pending,
    id: u64,
    expiry: Expiry,
    /// The call has left the table, with its reply or without.
    left: bool,
    /// The next poll looks in the table; see [`still_in_its_poll`](Self::still_in_its_poll).
    look: bool,
}

impl Waiting<'_> {
    /// The call is still in the poll that made it (nothing it did since has returned
    /// `Pending`): the waker in the table is this poll's own, and an answer that came since
    /// has already woken it. So the next [`poll_reply`](Self::poll_reply) returns `Pending`
    /// without a look (a lock and a lookup, ~100 instructions of a pipelined call); the task
    /// is polled again when the answer comes, or at once if it came already.
    pub fn still_in_its_poll(&mut self) {
        self.look = false;
    }

    /// [`Pending::poll_reply`] for this call.
    pub fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Option<Reply>> {
        if !std::mem::replace(&mut self.look, true) {
            return Poll::Pending;
        }
        let polled = self.pending.poll_reply(self.id, cx);
        self.left = polled.is_ready();
        polled
    }

    /// The call's request id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the call's wait has run out.
    pub fn expired(&self) -> bool {
        self.pending.expired(self.expiry)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.left {
            self.pending.remove(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;

    use tokio::time::Instant;

    use super::*;

    /// A table with its sweeper running, as a client has, until the guard drops.
    fn swept() -> (Arc<Pending>, tokio_util::sync::DropGuard) {
        let p = Arc::new(Pending::new());
        let closed = CancellationToken::new();
        tokio::spawn({
            let p = p.clone();
            let closed = closed.clone();
            async move { p.sweep(closed).await }
        });
        (p, closed.drop_guard())
    }

    async fn reply(p: &Pending, id: u64) -> Option<Reply> {
        std::future::poll_fn(|cx| p.poll_reply(id, cx)).await
    }

    /// The caller of `id`, waiting in a task of its own: its reply's frame text, if any.
    fn caller(p: &Arc<Pending>, id: u64) -> tokio::task::JoinHandle<Option<String>> {
        let p = p.clone();
        tokio::spawn(async move {
            match reply(&p, id).await {
                Some(Reply::Frame(b)) => Some(String::from_utf8(b.to_vec()).unwrap()),
                Some(_) => Some("another form".into()),
                None => None,
            }
        })
    }

    /// A call made at `start` with `wait` ended now: not before its wait, at most two ticks after.
    #[track_caller]
    fn ended_on_time(start: Instant, wait: Duration) {
        let ended = start.elapsed();
        assert!(
            ended >= wait && ended <= wait + 2 * TICK,
            "{ended:?} for a wait of {wait:?}"
        );
    }

    fn frame(text: &'static str) -> Reply {
        Reply::Frame(Bytes::from_static(text.as_bytes()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_ends_once_its_wait_is_over_and_within_two_ticks() {
        let (p, _sweeper) = swept();
        let start = Instant::now();
        let short = p.insert(1, Duration::from_secs(5), None);
        let long = p.insert(2, Duration::from_secs(60), None);
        assert!(reply(&p, 1).await.is_none());
        ended_on_time(start, Duration::from_secs(5));
        assert!(p.expired(short));
        // The longer call waits on, and is not counted as run out.
        assert!(!p.expired(long));
        assert!(p.waiting(2));
        assert!(reply(&p, 2).await.is_none());
        ended_on_time(start, Duration::from_secs(60));
        assert!(p.expired(long));
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_sleeps_while_nothing_is_pending_and_a_call_after_that_gets_its_whole_wait() {
        let (p, _sweeper) = swept();
        p.insert(7, Duration::from_secs(1), None);
        p.remove(7);
        assert!(!p.waiting(7));
        // A tick finds the table empty; from then on the count stands still.
        tokio::time::sleep(3 * TICK).await;
        let idle_from = p.ticks();
        assert!(idle_from <= 2, "{idle_from}");
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(p.ticks(), idle_from);
        // The count is ten minutes behind the clock: a new call still waits its full second.
        let start = Instant::now();
        p.insert(8, Duration::from_secs(1), None);
        assert!(reply(&p, 8).await.is_none());
        ended_on_time(start, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_wakes_its_caller_once_and_leaves_nothing_behind() {
        let (p, _sweeper) = swept();
        p.insert(3, Duration::from_secs(1), None);
        let waiting = caller(&p, 3);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        p.answer(3, frame("first"));
        // Not waiting any more: a second answer (a duplicate frame) changes nothing.
        assert!(!p.waiting(3));
        p.answer(3, frame("second"));
        assert_eq!(waiting.await.unwrap().as_deref(), Some("first"));
        assert!(lock(&p.calls).calls.is_empty());
        // An id nobody waits for, and one whose caller gave up: the answer is dropped.
        p.answer(99, frame("nobody"));
        p.insert(4, Duration::from_secs(1), None);
        p.remove(4);
        p.answer(4, frame("too late"));
        assert!(lock(&p.calls).calls.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_handed_over_survives_the_connection_dropping_and_the_sweeper() {
        let (p, _sweeper) = swept();
        let expiry = p.insert(5, Duration::from_secs(1), None);
        p.answer(5, frame("kept"));
        p.clear();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(p.expired(expiry));
        assert!(matches!(reply(&p, 5).await, Some(Reply::Frame(b)) if b == "kept"));
    }

    #[test]
    fn a_request_id_carries_the_form_its_reply_is_wanted_in() {
        let mut ids = std::collections::HashSet::new();
        for want in [Want::Frame, Want::Value, Want::Raw, Want::Full] {
            for seq in [1, 2, 3, 1 << 40] {
                let id = want.id(seq);
                assert_eq!(Want::of(id), want, "{id}");
                assert!(ids.insert(id), "{id} given twice");
            }
        }
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn woken(w: &Wakes) -> usize {
        w.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn a_call_still_in_its_poll_skips_one_look_and_is_woken_by_the_waker_it_was_made_with() {
        let p = Pending::new();
        let wait = Duration::from_secs(30);
        let made = Arc::new(Wakes::default());
        let made_waker = Waker::from(made.clone());
        let mut made_cx = Context::from_waker(&made_waker);

        // Answered before the poll that made the call returns: the skipped look is made up
        // for by the wake-up the answer gave, and the next look finds the reply.
        let mut call = p.wait(Want::Frame, wait, &made_waker);
        call.still_in_its_poll();
        assert_eq!(p.len().load(Ordering::Relaxed), 1);
        p.answer(call.id(), frame("early"));
        assert_eq!(woken(&made), 1);
        assert!(call.poll_reply(&mut made_cx).is_pending());
        assert_eq!(p.len().load(Ordering::Relaxed), 1, "answered, not yet taken");
        assert!(matches!(call.poll_reply(&mut made_cx), Poll::Ready(Some(Reply::Frame(b))) if b == "early"));
        assert_eq!(p.len().load(Ordering::Relaxed), 0, "taken");
        drop(call);

        // Answered later: the waker it was made with is woken, and only one look is skipped.
        let mut call = p.wait(Want::Frame, wait, &made_waker);
        call.still_in_its_poll();
        assert!(call.poll_reply(&mut made_cx).is_pending());
        assert!(call.poll_reply(&mut made_cx).is_pending());
        p.answer(call.id(), frame("later"));
        assert_eq!(woken(&made), 2);
        assert!(matches!(call.poll_reply(&mut made_cx), Poll::Ready(Some(Reply::Frame(b))) if b == "later"));
        drop(call);

        // Polled by another task after its first poll (its future moved): that task's waker
        // takes the place of the first one.
        let moved = Arc::new(Wakes::default());
        let moved_waker = Waker::from(moved.clone());
        let mut call = p.wait(Want::Frame, wait, &made_waker);
        assert!(call.poll_reply(&mut Context::from_waker(&moved_waker)).is_pending());
        p.answer(call.id(), frame("moved"));
        assert_eq!((woken(&made), woken(&moved)), (2, 1));
        drop(call);
        assert!(lock(&p.calls).calls.is_empty());
    }

    #[test]
    fn a_caller_that_drops_its_call_takes_it_out_of_the_table() {
        let p = Pending::new();
        let mut cx = Context::from_waker(Waker::noop());
        let wait = Duration::from_secs(30);
        // A caller waiting for its reply, then dropped mid-wait (a timeout or select around it).
        let id = Want::Raw.id(1);
        let mut call = Box::pin(async {
            let mut call = p.wait(Want::Raw, wait, Waker::noop());
            assert_eq!(call.id(), id, "the table's first request");
            std::future::poll_fn(|cx| call.poll_reply(cx)).await
        });
        assert!(call.as_mut().poll(&mut cx).is_pending());
        assert!(p.waiting(id));
        assert_eq!(p.len().load(Ordering::Relaxed), 1);
        drop(call);
        assert!(lock(&p.calls).calls.is_empty());
        assert_eq!(p.len().load(Ordering::Relaxed), 0);
        p.answer(id, frame("too late"));
        assert!(lock(&p.calls).calls.is_empty());
    }

    #[tokio::test]
    async fn clear_wakes_every_caller_still_waiting() {
        let p = Arc::new(Pending::new());
        let expiry = p.insert(1, Duration::from_secs(30), None);
        p.insert(2, Duration::from_secs(30), None);
        let (one, two) = (caller(&p, 1), caller(&p, 2));
        tokio::task::yield_now().await;
        assert_eq!(p.len().load(Ordering::Relaxed), 2);
        p.clear();
        assert_eq!(p.len().load(Ordering::Relaxed), 0);
        assert_eq!(one.await.unwrap(), None);
        assert_eq!(two.await.unwrap(), None);
        assert!(!p.expired(expiry));
    }
}
