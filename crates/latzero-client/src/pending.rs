//! The pending-call table: a waiter for every request sent and not yet answered, and one timer
//! per client that ends the calls whose deadline has passed.
//!
//! One timer, not one per call: a call's own timer costs ~550 instructions to arm and disarm,
//! and when the runtime's threads are parked with no timer due, arming one from a thread outside
//! the runtime (a `#[tokio::main]` caller) wakes the runtime's driver to re-arm its own wait — a
//! system call and often a context switch on every call. The sweeper sleeps until the earliest
//! deadline, or for the client's default wait while no call is pending, so a call made with the
//! default timeout never has to wake it.

use std::sync::Mutex;

use rustc_hash::FxHashMap;
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::client::{Waiter, lock};

/// The calls waiting for their reply, and their deadlines.
pub(crate) struct Pending {
    calls: Mutex<Calls>,
    /// Wakes the sweeper when a call's deadline comes before the time it sleeps until.
    rearm: Notify,
    /// How long the sweeper sleeps while no call is pending: the client's default wait.
    idle: Duration,
}

struct Calls {
    /// Keyed by our own sequential ids: a fast hash, no need for SipHash's flood resistance.
    waiting: FxHashMap<u64, (Waiter, Instant)>,
    /// When the sweeper looks next.
    armed: Instant,
}

impl Pending {
    /// A table whose sweeper, while no call is pending, sleeps for `idle` at a time.
    pub fn new(idle: Duration) -> Pending {
        Pending {
            calls: Mutex::new(Calls {
                waiting: FxHashMap::default(),
                armed: Instant::now() + idle,
            }),
            rearm: Notify::new(),
            idle,
        }
    }

    /// Waits for the reply to `id` until `deadline`; then the sweeper drops the waiter.
    pub fn insert(&self, id: u64, waiter: Waiter, deadline: Instant) {
        let mut calls = lock(&self.calls);
        calls.waiting.insert(id, (waiter, deadline));
        if deadline < calls.armed {
            calls.armed = deadline;
            drop(calls);
            self.rearm.notify_one();
        }
    }

    /// The waiter for `id` and its deadline, taken out of the table (to be put back with
    /// [`insert`](Self::insert) if the frame was not its reply after all).
    pub fn take(&self, id: u64) -> Option<(Waiter, Instant)> {
        lock(&self.calls).waiting.remove(&id)
    }

    /// The waiter for `id`, taken out of the table.
    pub fn remove(&self, id: u64) -> Option<Waiter> {
        lock(&self.calls).waiting.remove(&id).map(|(w, _)| w)
    }

    /// Drops every waiter (each then hears that the connection is gone).
    pub fn clear(&self) {
        let gone: Vec<_> = lock(&self.calls).waiting.drain().collect();
        drop(gone);
    }

    /// Until `closed`: drops each waiter whose deadline has passed. Its caller, finding its
    /// waiter gone at or after its deadline, reports no reply.
    pub async fn sweep(&self, closed: CancellationToken) {
        loop {
            let until = lock(&self.calls).armed;
            tokio::select! {
                _ = closed.cancelled() => return,
                _ = self.rearm.notified() => continue,
                _ = tokio::time::sleep_until(until) => {}
            }
            let now = Instant::now();
            let expired: Vec<Waiter> = {
                let mut calls = lock(&self.calls);
                let ids: Vec<u64> = calls
                    .waiting
                    .iter()
                    .filter(|(_, (_, deadline))| *deadline <= now)
                    .map(|(id, _)| *id)
                    .collect();
                let expired = ids
                    .iter()
                    .filter_map(|id| calls.waiting.remove(id))
                    .map(|(w, _)| w)
                    .collect();
                calls.armed = calls.waiting.values().map(|(_, d)| *d).min().unwrap_or(now + self.idle);
                expired
            };
            // Woken outside the lock.
            drop(expired);
        }
    }

    #[cfg(test)]
    fn armed(&self) -> Instant {
        lock(&self.calls).armed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::oneshot;

    use super::*;

    fn waiter() -> (Waiter, oneshot::Receiver<bytes::Bytes>) {
        let (tx, rx) = oneshot::channel();
        (Waiter::Frame(tx), rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_ends_at_its_deadline_and_not_before() {
        let p = Arc::new(Pending::new(Duration::from_secs(30)));
        let closed = CancellationToken::new();
        tokio::spawn({
            let p = p.clone();
            let closed = closed.clone();
            async move { p.sweep(closed).await }
        });
        let start = Instant::now();
        // Earlier than the idle wait: the sweeper is re-armed for it.
        let (w, rx) = waiter();
        p.insert(1, w, start + Duration::from_secs(5));
        // Later: does not move the sweeper.
        let (w2, mut rx2) = waiter();
        p.insert(2, w2, start + Duration::from_secs(60));
        assert_eq!(p.armed(), start + Duration::from_secs(5));
        assert!(rx.await.is_err());
        assert!(Instant::now() >= start + Duration::from_secs(5));
        assert!(Instant::now() < start + Duration::from_secs(6));
        assert!(rx2.try_recv().is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        // Then armed for the one left.
        tokio::task::yield_now().await;
        assert_eq!(p.armed(), start + Duration::from_secs(60));
        assert!(rx2.await.is_err());
        assert!(Instant::now() >= start + Duration::from_secs(60));
        closed.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_call_leaves_nothing_behind() {
        let p = Arc::new(Pending::new(Duration::from_secs(30)));
        let closed = CancellationToken::new();
        let sweeper = tokio::spawn({
            let p = p.clone();
            let closed = closed.clone();
            async move { p.sweep(closed).await }
        });
        let (w, _rx) = waiter();
        p.insert(7, w, Instant::now() + Duration::from_secs(1));
        assert!(p.remove(7).is_some());
        assert!(p.remove(7).is_none());
        // The sweeper wakes at the old deadline, finds nothing, and sleeps the idle wait.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(p.armed() > Instant::now() + Duration::from_secs(25));
        closed.cancel();
        sweeper.await.unwrap();
    }

    #[tokio::test]
    async fn clear_wakes_every_waiter() {
        let p = Pending::new(Duration::from_secs(30));
        let (w, rx) = waiter();
        p.insert(1, w, Instant::now() + Duration::from_secs(30));
        p.clear();
        assert!(rx.await.is_err());
    }
}
