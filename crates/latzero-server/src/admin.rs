//! Introspection: the counters every part of the server bumps, and the `status` snapshot that
//! `latzero status` prints.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};

macro_rules! counters {
    ($(#[doc = $doc:literal] $name:ident),* $(,)?) => {
        /// Monotonic counters since start.
        #[derive(Debug, Default)]
        pub struct Counters {
            $(#[doc = $doc] pub $name: AtomicU64,)*
        }

        impl Counters {
            /// All counters by name.
            pub fn snapshot(&self) -> Map<String, Value> {
                let mut m = Map::new();
                $(m.insert(stringify!($name).to_owned(), json!(self.$name.load(Ordering::Relaxed)));)*
                m
            }

            /// Each counter's name, what it counts (its doc line) and its value.
            pub fn described(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $doc.trim(), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters!(
    /// Connections accepted.
    connections_total,
    /// Connections refused because the connection limit was reached.
    connections_refused,
    /// Connections closed because they sent no handshake in time.
    handshake_timeouts,
    /// Frames received.
    frames_in,
    /// Calls (trigger requests) accepted for routing; a broadcast counts once per handler, as its outcomes do.
    calls_total,
    /// Calls answered by a handler with status ok.
    calls_ok,
    /// Calls answered by a handler with status error.
    calls_handler_error,
    /// Calls refused at once (NO_HANDLER, NOT_IN_POOL, OVERLOADED, ...).
    calls_refused,
    /// Calls that timed out.
    calls_timed_out,
    /// Calls failed because their handler disconnected.
    calls_handler_gone,
    /// Calls failed by shutdown.
    calls_shut_down,
    /// Responses that arrived after their call was already finished (timed out); dropped.
    late_responses,
    /// Terminal frames that could not be delivered because the receiver had gone.
    undeliverable,
    /// Emits received.
    emits_total,
    /// Emit deliveries queued (one per receiving handler).
    emits_delivered,
    /// Emits that found no handler in their pool.
    emits_unrouted,
    /// Error frames sent for bad input.
    invalid_messages,
    /// Connections closed as slow consumers.
    slow_consumers,
);

impl Counters {
    /// Adds one.
    pub fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// The counters a session adds to on every call, kept in the session and added to the shared
/// [`Counters`] once per batch of frames ([`Tally::flush`]), before the batch's writes go out:
/// each shared count is an atomic read-modify-write, ~5 ns on this VM, and a pipelined call
/// made four of them (docs/BENCHMARKS.md, "Atomic operations"). Whoever reads the counters
/// after an answer arrived sees that answer counted.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub frames_in: u64,
    pub calls_total: u64,
    pub calls_ok: u64,
    pub calls_handler_error: u64,
}

impl Tally {
    /// Adds what was tallied to `c`, and starts again from zero.
    pub fn flush(&mut self, c: &Counters) {
        let t = std::mem::take(self);
        for (counter, n) in [
            (&c.frames_in, t.frames_in),
            (&c.calls_total, t.calls_total),
            (&c.calls_ok, t.calls_ok),
            (&c.calls_handler_error, t.calls_handler_error),
        ] {
            if n > 0 {
                c.add(counter, n);
            }
        }
    }
}
