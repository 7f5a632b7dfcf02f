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

use std::sync::Mutex;

use rustc_hash::FxHashMap;
use tokio::sync::Notify;
use tokio::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::client::{Waiter, lock};

/// How often the sweeper looks while calls are pending: the precision of a call's wait.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// When a call's wait runs out, in the sweeper's ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Expiry(u64);

/// The calls waiting for their reply, and when each one's wait runs out.
pub(crate) struct Pending {
    calls: Mutex<Calls>,
    /// Wakes the sweeper from its sleep when a call arrives at an empty table.
    wake: Notify,
}

struct Calls {
    /// Keyed by our own sequential ids: a fast hash, no need for SipHash's flood resistance.
    waiting: FxHashMap<u64, (Waiter, Expiry)>,
    /// Ticks the sweeper has counted.
    now: u64,
    /// No call ends before this tick (a lower bound: it is not raised when calls leave).
    earliest: u64,
    /// The sweeper sleeps until [`Pending::wake`]: it found the table empty.
    asleep: bool,
}

impl Pending {
    pub fn new() -> Pending {
        Pending {
            calls: Mutex::new(Calls {
                waiting: FxHashMap::default(),
                now: 0,
                earliest: u64::MAX,
                asleep: true,
            }),
            wake: Notify::new(),
        }
    }

    /// Waits for the reply to `id` for at least `wait`; then the sweeper drops the waiter.
    /// Returns when the wait runs out, for [`expired`](Self::expired).
    pub fn insert(&self, id: u64, waiter: Waiter, wait: Duration) -> Expiry {
        let mut calls = lock(&self.calls);
        let ticks = wait.as_nanos().div_ceil(TICK.as_nanos()).min(u64::MAX as u128 / 2) as u64;
        let expiry = Expiry(calls.now.saturating_add(ticks + 1));
        calls.put(id, waiter, expiry);
        if calls.asleep {
            calls.asleep = false;
            drop(calls);
            self.wake.notify_one();
        }
        expiry
    }

    /// Puts back a waiter [`take`](Self::take) took out (the frame was not its reply after all).
    pub fn put_back(&self, id: u64, waiter: Waiter, expiry: Expiry) {
        let mut calls = lock(&self.calls);
        calls.put(id, waiter, expiry);
        if calls.asleep {
            calls.asleep = false;
            drop(calls);
            self.wake.notify_one();
        }
    }

    /// The waiter for `id` and when its wait runs out, taken out of the table (to be put back
    /// with [`put_back`](Self::put_back) if the frame was not its reply after all).
    pub fn take(&self, id: u64) -> Option<(Waiter, Expiry)> {
        lock(&self.calls).waiting.remove(&id)
    }

    /// The waiter for `id`, taken out of the table.
    pub fn remove(&self, id: u64) -> Option<Waiter> {
        lock(&self.calls).waiting.remove(&id).map(|(w, _)| w)
    }

    /// Whether a wait that runs out at `expiry` has run out.
    pub fn expired(&self, expiry: Expiry) -> bool {
        lock(&self.calls).now >= expiry.0
    }

    /// Drops every waiter (each then hears that the connection is gone).
    pub fn clear(&self) {
        let gone: Vec<_> = lock(&self.calls).waiting.drain().collect();
        drop(gone);
    }

    /// Until `closed`: counts ticks while calls are pending, and drops each waiter whose wait
    /// has run out. Its caller, finding its waiter gone after its wait ran out, reports no reply.
    pub async fn sweep(&self, closed: CancellationToken) {
        loop {
            if lock(&self.calls).asleep {
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
            let expired: Vec<Waiter> = {
                let mut calls = lock(&self.calls);
                calls.now += 1;
                let now = calls.now;
                let mut expired = Vec::new();
                if now >= calls.earliest {
                    let ids: Vec<u64> = calls
                        .waiting
                        .iter()
                        .filter(|(_, (_, e))| e.0 <= now)
                        .map(|(id, _)| *id)
                        .collect();
                    expired.extend(ids.iter().filter_map(|id| calls.waiting.remove(id)).map(|(w, _)| w));
                    calls.earliest = calls.waiting.values().map(|(_, e)| e.0).min().unwrap_or(u64::MAX);
                }
                calls.asleep = calls.waiting.is_empty();
                expired
            };
            // Woken outside the lock.
            drop(expired);
        }
    }

    #[cfg(test)]
    fn ticks(&self) -> u64 {
        lock(&self.calls).now
    }
}

impl Calls {
    fn put(&mut self, id: u64, waiter: Waiter, expiry: Expiry) {
        self.waiting.insert(id, (waiter, expiry));
        self.earliest = self.earliest.min(expiry.0);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::oneshot;
    use tokio::time::Instant;

    use super::*;

    fn waiter() -> (Waiter, oneshot::Receiver<bytes::Bytes>) {
        let (tx, rx) = oneshot::channel();
        (Waiter::Frame(tx), rx)
    }

    fn sweeper(p: &Arc<Pending>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let closed = CancellationToken::new();
        let task = tokio::spawn({
            let p = p.clone();
            let closed = closed.clone();
            async move { p.sweep(closed).await }
        });
        (closed, task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_ends_once_its_wait_is_over_and_within_two_ticks() {
        let p = Arc::new(Pending::new());
        let (closed, _task) = sweeper(&p);
        let start = Instant::now();
        let (w, rx) = waiter();
        let short = p.insert(1, w, Duration::from_secs(5));
        let (w2, mut rx2) = waiter();
        let long = p.insert(2, w2, Duration::from_secs(60));
        assert!(rx.await.is_err());
        let ended = start.elapsed();
        assert!(ended >= Duration::from_secs(5), "{ended:?}");
        assert!(ended <= Duration::from_secs(5) + 2 * TICK, "{ended:?}");
        assert!(p.expired(short));
        // The longer call waits on, and is not counted as run out.
        assert!(!p.expired(long));
        assert!(rx2.try_recv().is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        assert!(rx2.await.is_err());
        let ended = start.elapsed();
        assert!(ended >= Duration::from_secs(60) && ended <= Duration::from_secs(60) + 2 * TICK);
        assert!(p.expired(long));
        closed.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_sleeps_while_nothing_is_pending_and_a_call_after_that_gets_its_whole_wait() {
        let p = Arc::new(Pending::new());
        let (closed, _task) = sweeper(&p);
        let (w, _rx) = waiter();
        p.insert(7, w, Duration::from_secs(1));
        assert!(p.remove(7).is_some());
        assert!(p.remove(7).is_none());
        // A tick finds the table empty; from then on the count stands still.
        tokio::time::sleep(3 * TICK).await;
        let idle_from = p.ticks();
        assert!(idle_from <= 2, "{idle_from}");
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(p.ticks(), idle_from);
        // The count is ten minutes behind the clock: a new call still waits its full second.
        let start = Instant::now();
        let (w, rx) = waiter();
        p.insert(8, w, Duration::from_secs(1));
        assert!(rx.await.is_err());
        let ended = start.elapsed();
        assert!(
            ended >= Duration::from_secs(1) && ended <= Duration::from_secs(1) + 2 * TICK,
            "{ended:?}"
        );
        closed.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_put_back_keeps_its_wait() {
        let p = Arc::new(Pending::new());
        let (closed, _task) = sweeper(&p);
        let start = Instant::now();
        let (w, rx) = waiter();
        p.insert(3, w, Duration::from_secs(2));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (w, expiry) = p.take(3).unwrap();
        p.put_back(3, w, expiry);
        assert!(rx.await.is_err());
        let ended = start.elapsed();
        assert!(
            ended >= Duration::from_secs(2) && ended <= Duration::from_secs(2) + 2 * TICK,
            "{ended:?}"
        );
        closed.cancel();
    }

    #[tokio::test]
    async fn clear_wakes_every_waiter() {
        let p = Pending::new();
        let (w, rx) = waiter();
        let expiry = p.insert(1, w, Duration::from_secs(30));
        p.clear();
        assert!(rx.await.is_err());
        assert!(!p.expired(expiry));
    }
}
