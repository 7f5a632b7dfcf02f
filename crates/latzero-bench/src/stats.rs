//! Latency and rate figures.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Percentiles of a latency sample, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Lat {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Lat {
    pub fn from(mut v: Vec<Duration>) -> Lat {
        if v.is_empty() {
            return Lat::default();
        }
        v.sort_unstable();
        let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e6;
        Lat {
            p50: pct(0.50),
            p99: pct(0.99),
            p999: pct(0.999),
        }
    }
}

/// Everything measured for one peer in one placement. `None`: the peer has no such workload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Figures {
    pub peer: String,
    pub seq_64: Lat,
    pub seq_4k: Lat,
    pub pipelined: f64,
    pub multi: Option<f64>,
    pub fanout: Option<f64>,
}

/// The sizes of a run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub seq: usize,
    pub pipelined: usize,
    pub inflight: usize,
    pub multi: usize,
    pub fanout: usize,
    pub warmup: usize,
    /// LatZero's spin window, server and clients (their defaults when `None`).
    pub spin_us: Option<u64>,
    /// The LatZero server's worker threads (its default when `None`).
    pub server_workers: Option<usize>,
    /// The LatZero server's Unix send buffer, bytes (its default when `None`).
    pub unix_send_buffer: Option<usize>,
}

pub const CALLERS: usize = 10;
pub const HANDLERS: usize = 2;
pub const RECEIVERS: usize = 4;

pub fn payload(len: usize) -> Vec<u8> {
    vec![b'x'; len]
}
