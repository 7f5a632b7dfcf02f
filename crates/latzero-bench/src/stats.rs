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
    /// The round trips `seq_64` and `seq_4k` are taken from: one round's as measured, pooled
    /// by [`combine`]. Not serialised: rounds are combined in the process that ran them.
    #[serde(skip)]
    pub seq_64_samples: Vec<Duration>,
    #[serde(skip)]
    pub seq_4k_samples: Vec<Duration>,
}

/// The rates of one round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub pipelined: f64,
    pub multi: Option<f64>,
    pub fanout: Option<f64>,
}

/// One peer's figures from several rounds (at least one), in the order run: the sequential
/// percentiles of every round's round trips pooled (each round measures its share of the
/// sequential calls, so each peer's percentiles span the same spells of the machine and the
/// same placements of its threads, rather than one round's), and the median of each rate,
/// with every round's rates kept beside it.
pub fn combine(rounds: Vec<Figures>) -> Figures {
    let rates: Vec<Rates> = rounds
        .iter()
        .map(|f| Rates {
            pipelined: f.pipelined,
            multi: f.multi,
            fanout: f.fanout,
        })
        .collect();
    let mut rounds = rounds.into_iter();
    let mut first = rounds.next().expect("at least one round");
    let mut b64 = std::mem::take(&mut first.seq_64_samples);
    let mut b4k = std::mem::take(&mut first.seq_4k_samples);
    for mut f in rounds {
        b64.append(&mut f.seq_64_samples);
        b4k.append(&mut f.seq_4k_samples);
    }
    first.seq_64 = Lat::from(b64);
    first.seq_4k = Lat::from(b4k);
    if rates.len() > 1 {
        first.pipelined = median(rates.iter().map(|r| Some(r.pipelined))).unwrap_or_default();
        first.multi = median(rates.iter().map(|r| r.multi));
        first.fanout = median(rates.iter().map(|r| r.fanout));
        first.rounds = rates;
    }
    first
}

/// The sequential calls of round `round` (from 0) of `rounds`: `seq` split between them, the
/// first rounds taking one more where it does not divide.
pub fn seq_share(seq: usize, round: usize, rounds: usize) -> usize {
    let rounds = rounds.max(1);
    seq / rounds + usize::from(round < seq % rounds)
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

    /// A round's figures, its sequential 64 B round trips `us` microseconds each.
    fn round(pipelined: f64, multi: Option<f64>, us: &[u64]) -> Figures {
        Figures {
            peer: "p".into(),
            pipelined,
            multi,
            fanout: Some(pipelined * 2.0),
            seq_64_samples: us.iter().map(|&u| Duration::from_micros(u)).collect(),
            ..Figures::default()
        }
    }

    #[test]
    fn rates_are_the_median_of_the_rounds() {
        let f = combine(vec![
            round(300.0, Some(10.0), &[]),
            round(100.0, Some(30.0), &[]),
            round(200.0, Some(20.0), &[]),
        ]);
        assert_eq!(f.pipelined, 200.0);
        assert_eq!(f.multi, Some(20.0));
        assert_eq!(f.fanout, Some(400.0));
        let order: Vec<f64> = f.rounds.iter().map(|r| r.pipelined).collect();
        assert_eq!(order, [300.0, 100.0, 200.0], "kept in the order run");
    }

    #[test]
    fn latency_percentiles_pool_every_rounds_round_trips() {
        // A slow first round and two fast ones: the median is the pooled one, neither the first
        // round's nor a median of the rounds' medians.
        let f = combine(vec![
            round(1.0, None, &[90, 91, 92]),
            round(1.0, None, &[10, 11]),
            round(1.0, None, &[12, 13]),
        ]);
        assert_eq!(f.seq_64.p50, 13.0);
        assert_eq!(f.seq_64.p999, 92.0);
        assert!(f.seq_64_samples.is_empty() && f.seq_4k.p50 == 0.0);
    }

    #[test]
    fn the_sequential_calls_are_split_between_the_rounds() {
        let shares: Vec<usize> = (0..3).map(|r| seq_share(20_000, r, 3)).collect();
        assert_eq!(shares, [6_667, 6_667, 6_666]);
        assert_eq!(seq_share(7, 0, 1), 7);
        assert_eq!(seq_share(2, 4, 5), 0, "more rounds than calls");
        assert_eq!(seq_share(5, 0, 0), 5, "no rounds count as one");
    }

    #[test]
    fn an_even_count_takes_the_mean_of_the_middle_two_and_absent_rates_stay_absent() {
        let f = combine(vec![round(100.0, None, &[]), round(300.0, None, &[])]);
        assert_eq!(f.pipelined, 200.0);
        assert_eq!(f.multi, None);
    }

    #[test]
    fn one_round_is_kept_as_it_is() {
        let f = combine(vec![round(100.0, Some(5.0), &[7])]);
        assert_eq!((f.pipelined, f.multi, f.seq_64.p50), (100.0, Some(5.0), 7.0));
        assert!(f.rounds.is_empty());
    }
}
