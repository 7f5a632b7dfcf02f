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
    /// With more than one round ([`combine`]): each round's rates, in the order run; the
    /// fields above are their medians.
    #[serde(default)]
    pub rounds: Vec<Rates>,
}

/// The rates of one round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub pipelined: f64,
    pub multi: Option<f64>,
    pub fanout: Option<f64>,
}

/// One peer's figures from several rounds (at least one), in the order run: the sequential
/// percentiles of the first (later rounds only warm up before their rates), and the median of
/// each rate, with every round's rates kept beside it.
pub fn combine(rounds: Vec<Figures>) -> Figures {
    let rates: Vec<Rates> = rounds
        .iter()
        .map(|f| Rates {
            pipelined: f.pipelined,
            multi: f.multi,
            fanout: f.fanout,
        })
        .collect();
    let mut first = rounds.into_iter().next().expect("at least one round");
    if rates.len() > 1 {
        first.pipelined = median(rates.iter().map(|r| Some(r.pipelined))).unwrap_or_default();
        first.multi = median(rates.iter().map(|r| r.multi));
        first.fanout = median(rates.iter().map(|r| r.fanout));
        first.rounds = rates;
    }
    first
}

/// The median of the values present (the mean of the middle two for an even count); `None`
/// if there are none.
fn median(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values.flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
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
    /// Rounds of the rates, run in turn across the peers (see [`combine`]).
    pub rounds: usize,
}

pub const CALLERS: usize = 10;
pub const HANDLERS: usize = 2;
pub const RECEIVERS: usize = 4;

pub fn payload(len: usize) -> Vec<u8> {
    vec![b'x'; len]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(pipelined: f64, multi: Option<f64>, p50: f64) -> Figures {
        Figures {
            peer: "p".into(),
            seq_64: Lat { p50, ..Lat::default() },
            pipelined,
            multi,
            fanout: Some(pipelined * 2.0),
            ..Figures::default()
        }
    }

    #[test]
    fn rates_are_the_median_of_the_rounds_and_latency_comes_from_the_first() {
        let f = combine(vec![
            round(300.0, Some(10.0), 40.0),
            round(100.0, Some(30.0), 0.0),
            round(200.0, Some(20.0), 0.0),
        ]);
        assert_eq!(f.pipelined, 200.0);
        assert_eq!(f.multi, Some(20.0));
        assert_eq!(f.fanout, Some(400.0));
        assert_eq!(f.seq_64.p50, 40.0);
        let order: Vec<f64> = f.rounds.iter().map(|r| r.pipelined).collect();
        assert_eq!(order, [300.0, 100.0, 200.0], "kept in the order run");
    }

    #[test]
    fn an_even_count_takes_the_mean_of_the_middle_two_and_absent_rates_stay_absent() {
        let f = combine(vec![round(100.0, None, 1.0), round(300.0, None, 0.0)]);
        assert_eq!(f.pipelined, 200.0);
        assert_eq!(f.multi, None);
    }

    #[test]
    fn one_round_is_kept_as_it_is() {
        let f = combine(vec![round(100.0, Some(5.0), 1.0)]);
        assert_eq!((f.pipelined, f.multi), (100.0, Some(5.0)));
        assert!(f.rounds.is_empty());
    }
}
