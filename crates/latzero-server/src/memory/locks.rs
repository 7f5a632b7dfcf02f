//! Lock leases on a block. A lease is shared or exclusive, held by a connection (reported by its
//! app id), and expires unless renewed; a connection's leases and waits end when it closes.
//! Requests that cannot be granted wait in FIFO order for at most their `wait_ms`, then fail with
//! LOCK_TIMEOUT. Everything here runs under the block's state mutex; the only tasks are the
//! timers (one per lease and one per waiter), which hold a weak reference to the block.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use latzero_proto::ErrorCode;
use latzero_proto::frame::encode_message;
use latzero_proto::message::{ErrorFrame, LockMode, RawValue};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Entry, Refusal};
use crate::session::conn::{Conn, ConnId};

#[derive(Debug)]
struct Lease {
    conn: Arc<Conn>,
    mode: LockMode,
    id: u64,
    expires: Instant,
}

#[derive(Debug)]
struct Waiter {
    conn: Arc<Conn>,
    req: Option<Box<RawValue>>,
    mode: LockMode,
    lease: Duration,
    id: u64,
}

/// Why a lease or wait of a connection, in a mode, ended: the text it is told.
type Reason<'a> = &'a dyn Fn(&Conn, LockMode) -> String;

/// How [`Locks::end`] tells the holders and waiters it ends.
struct Told<'a> {
    /// A holder: `lock_expired` with this reason (`None`: not told).
    holder: Option<Reason<'a>>,
    /// A waiter: this error, with this message, for its lock request (`None`: not told).
    waiter: Option<(ErrorCode, Reason<'a>)>,
    /// Why leases ended, for the log.
    how: &'a str,
}

/// The leases and waiters of one block.
#[derive(Debug, Default)]
pub(crate) struct Locks {
    held: Vec<Lease>,
    waiting: VecDeque<Waiter>,
    next_id: u64,
}

impl Locks {
    /// Whether `conn` may take `mode` given the others' leases.
    fn compatible(&self, conn: ConnId, mode: LockMode) -> bool {
        self.held
            .iter()
            .all(|l| l.conn.id == conn || (l.mode == LockMode::Shared && mode == LockMode::Shared))
    }

    /// Who holds what, for messages.
    fn holders(&self) -> String {
        self.held
            .iter()
            .map(|l| format!("'{}' ({})", l.conn.app_str(), l.mode.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// LOCKED if another connection holds any lease (writes need the block free of others'
    /// shared and exclusive leases).
    pub fn check_write(&self, conn: ConnId) -> Result<(), Refusal> {
        if self.held.iter().all(|l| l.conn.id == conn) {
            Ok(())
        } else {
            Err(Refusal::new(
                ErrorCode::Locked,
                format!("the block is locked by {}", self.holders()),
            ))
        }
    }

    pub fn describe(&self) -> Value {
        let now = Instant::now();
        json!({
            "held": self.held.iter().map(|l| json!({
                "app_id": l.conn.app_str(),
                "mode": l.mode.as_str(),
                "expires_in_ms": l.expires.saturating_duration_since(now).as_millis() as u64,
            })).collect::<Vec<_>>(),
            "waiting": self.waiting.len(),
        })
    }

    fn grant(&mut self, entry: &Arc<Entry>, conn: &Arc<Conn>, req: Option<&RawValue>, mode: LockMode, lease: Duration) {
        self.next_id += 1;
        let id = self.next_id;
        let expires = Instant::now() + lease;
        // Whether the connection still held a lease: a holder that renews too late learns that
        // its lease lapsed, and that others could have locked the block meanwhile.
        let renewed = match self.held.iter_mut().find(|l| l.conn.id == conn.id) {
            // Renewal, upgrade or downgrade of this connection's lease.
            Some(l) => {
                l.mode = mode;
                l.id = id;
                l.expires = expires;
                true
            }
            None => {
                self.held.push(Lease {
                    conn: conn.clone(),
                    mode,
                    id,
                    expires,
                });
                false
            }
        };
        let _ = conn.reply(&encode_message(&json!({
            "action": "block_locked",
            "in_reply_to": req,
            "pool": entry.meta.pool,
            "block_id": entry.meta.block_id,
            "mode": mode.as_str(),
            "lease_ms": lease.as_millis() as u64,
            "renewed": renewed,
        })));
        let weak = Arc::downgrade(entry);
        tokio::spawn(async move {
            tokio::time::sleep_until(expires).await;
            expire(weak, id);
        });
    }

    /// Grants waiters, oldest first, for as long as the oldest is compatible.
    fn pump(&mut self, entry: &Arc<Entry>) {
        while let Some(w) = self.waiting.front() {
            if !self.compatible(w.conn.id, w.mode) {
                break;
            }
            let w = self.waiting.pop_front().expect("front exists");
            self.grant(entry, &w.conn, w.req.as_deref(), w.mode, w.lease);
        }
    }

    /// Ends a closed connection's leases and waits.
    pub fn release_conn(&mut self, conn: ConnId, entry: &Arc<Entry>) {
        self.release(|c| c == conn, entry, None);
    }

    /// Ends the leases and waits of the connections `gone` picks, which left the block's pool
    /// (or were closed: `why` is `None`, and there is no one left to tell). A waiter still
    /// connected gets `why` as a NOT_IN_POOL error for its lock request.
    pub fn release(&mut self, gone: impl Fn(ConnId) -> bool, entry: &Arc<Entry>, why: Option<&str>) {
        let reason = |_: &Conn, _: LockMode| why.unwrap_or_default().to_owned();
        let how = if why.is_some() {
            "its holder left the pool"
        } else {
            "its holder disconnected"
        };
        let told = Told {
            holder: None,
            waiter: why.map(|_| (ErrorCode::NotInPool, &reason as Reason<'_>)),
            how,
        };
        self.end(entry, |c, _| gone(c.id), told);
    }

    /// Ends the leases and waits that `lost` picks by connection and mode (their app lost the
    /// right the mode needs): a holder is told by `lock_expired` with `why`'s reason, a waiter
    /// gets it as a PERMISSION_DENIED error for its lock request.
    pub fn revoke(
        &mut self,
        lost: impl Fn(ConnId, LockMode) -> bool,
        entry: &Arc<Entry>,
        why: impl Fn(&str, LockMode) -> String,
    ) {
        let reason = |c: &Conn, mode: LockMode| why(c.app_str(), mode);
        let told = Told {
            holder: Some(&reason),
            waiter: Some((ErrorCode::PermissionDenied, &reason)),
            how: "a policy change took its holder's right away",
        };
        self.end(entry, |c, mode| lost(c.id, mode), told);
    }

    /// Ends the leases and waits `ends` picks, telling them as `told` says, then grants the
    /// waits that can go now (a waiter that went may have held back those behind it).
    fn end(&mut self, entry: &Arc<Entry>, ends: impl Fn(&Conn, LockMode) -> bool, told: Told<'_>) {
        let before = self.held.len();
        self.held.retain(|l| {
            if !ends(&l.conn, l.mode) {
                return true;
            }
            if let Some(reason) = told.holder {
                let _ = l
                    .conn
                    .send(&lock_expired(entry, l.mode, Some(&reason(&l.conn, l.mode))));
            }
            false
        });
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for w in self.waiting.drain(..) {
            if !ends(&w.conn, w.mode) {
                kept.push_back(w);
            } else if let Some((code, reason)) = told.waiter {
                let _ = w.conn.reply(&encode_message(&ErrorFrame::new(
                    w.req.as_deref(),
                    code,
                    &reason(&w.conn, w.mode),
                )));
            }
        }
        self.waiting = kept;
        if self.held.len() != before {
            tracing::info!(block = %entry.meta.block_id, "lock released: {}", told.how);
        }
        self.pump(entry);
    }

    /// Fails every waiter (the block is gone) and drops the leases.
    pub fn fail_all(&mut self, code: ErrorCode, message: &str) {
        self.held.clear();
        for w in self.waiting.drain(..) {
            let _ = w
                .conn
                .reply(&encode_message(&ErrorFrame::new(w.req.as_deref(), code, message)));
        }
    }
}

/// A lease's timer fired: end it if it was not renewed or released meanwhile.
fn expire(entry: Weak<Entry>, lease_id: u64) {
    let Some(entry) = entry.upgrade() else { return };
    let mut st = entry.state();
    let Some(i) = st.locks.held.iter().position(|l| l.id == lease_id) else {
        return;
    };
    let l = st.locks.held.remove(i);
    tracing::info!(block = %entry.meta.block_id, app = l.conn.app_str(), "lock lease expired");
    let _ = l.conn.send(&lock_expired(&entry, l.mode, None));
    st.locks.pump(&entry);
}

/// The `lock_expired` event that tells a holder its `mode` lease ended: it lapsed, or (with a
/// `reason`) a policy change took away the right it needs.
fn lock_expired(entry: &Entry, mode: LockMode, reason: Option<&str>) -> bytes::Bytes {
    let mut v = json!({
        "action": "block_event",
        "event": "lock_expired",
        "pool": entry.meta.pool,
        "block_id": entry.meta.block_id,
        "mode": mode.as_str(),
    });
    if let Some(r) = reason {
        v["reason"] = json!(r);
    }
    encode_message(&v)
}

/// A waiter's deadline passed: fail it if it is still waiting.
fn wait_over(entry: Weak<Entry>, waiter_id: u64, wait: Duration) {
    let Some(entry) = entry.upgrade() else { return };
    let mut st = entry.state();
    let Some(i) = st.locks.waiting.iter().position(|w| w.id == waiter_id) else {
        return;
    };
    let w = st.locks.waiting.remove(i).expect("index is valid");
    let message = format!(
        "lock not granted within {} ms; held by {}",
        wait.as_millis(),
        st.locks.holders()
    );
    let _ = w.conn.reply(&encode_message(&ErrorFrame::new(
        w.req.as_deref(),
        ErrorCode::LockTimeout,
        &message,
    )));
    // A waiter that left the front may unblock those behind it.
    st.locks.pump(&entry);
}

impl Entry {
    /// Takes (or renews, upgrades, downgrades) `conn`'s lease, now or after waiting up to
    /// `wait`. The grant, or LOCK_TIMEOUT, is sent to `conn` in reply to `req`.
    pub fn lock(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        req: Option<&RawValue>,
        mode: LockMode,
        lease: Duration,
        wait: Duration,
    ) -> Result<(), Refusal> {
        let mut st = self.state();
        let l = &mut st.locks;
        // Waiters ahead keep their turn, unless this connection already holds a lease (it is
        // renewing, and making it queue behind waiters blocked by itself would deadlock).
        let holds = l.held.iter().any(|x| x.conn.id == conn.id);
        if l.compatible(conn.id, mode) && (holds || l.waiting.is_empty()) {
            l.grant(self, conn, req, mode, lease);
            return Ok(());
        }
        if wait.is_zero() {
            return Err(Refusal::new(
                ErrorCode::Locked,
                format!("the block is locked by {}", l.holders()),
            ));
        }
        // One wait per connection and block: the lease would be the connection's either way,
        // and a client retrying in a loop would otherwise queue waits (and their timers) without
        // end.
        if l.waiting.iter().any(|w| w.conn.id == conn.id) {
            return Err(Refusal::new(
                ErrorCode::Locked,
                format!(
                    "the block is locked by {}, and this connection is already waiting for it (one wait per connection and block)",
                    l.holders()
                ),
            ));
        }
        l.next_id += 1;
        let id = l.next_id;
        l.waiting.push_back(Waiter {
            conn: conn.clone(),
            req: req.map(ToOwned::to_owned),
            mode,
            lease,
            id,
        });
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            wait_over(weak, id, wait);
        });
        Ok(())
    }

    /// Releases `conn`'s lease.
    pub fn unlock(self: &Arc<Self>, conn: ConnId) -> Result<(), Refusal> {
        let mut st = self.state();
        let l = &mut st.locks;
        let before = l.held.len();
        l.held.retain(|x| x.conn.id != conn);
        if l.held.len() == before {
            return Err(Refusal::new(
                ErrorCode::NotLocked,
                format!("this connection holds no lock on block '{}'", self.meta.block_id),
            ));
        }
        l.pump(self);
        Ok(())
    }
}
