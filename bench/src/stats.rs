//! Latency summaries: nearest-rank percentiles over every sample, in milliseconds.

use std::time::Duration;

use serde_json::{json, Value};

#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    /// p99.9: with under 1,000 samples, the worst one.
    pub p999: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The nearest rank of the `p`-th percentile of `n` samples (1-based). The
/// epsilon keeps float error from pushing an exact rank up by one (99.9 / 100 *
/// 5000 is 4995.000000000001 in floats).
fn rank(p: f64, n: usize) -> usize {
    let r = (p / 100.0 * n as f64 - 1e-9).ceil() as usize;
    r.clamp(1, n)
}

/// The nearest-rank `p`-th percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[rank(p, sorted.len()) - 1]
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_unstable();
        let total: Duration = s.iter().sum();
        Some(Summary {
            n: s.len(),
            p50: ms(percentile(&s, 50.0)),
            p95: ms(percentile(&s, 95.0)),
            p99: ms(percentile(&s, 99.0)),
            p999: ms(percentile(&s, 99.9)),
            mean: ms(total) / s.len() as f64,
            min: ms(s[0]),
            max: ms(s[s.len() - 1]),
        })
    }

    /// The same over figures already in milliseconds (which may be negative,
    /// e.g. a difference of two latencies).
    pub fn of_ms(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_unstable_by(f64::total_cmp);
        let at = |p: f64| s[rank(p, s.len()) - 1];
        Some(Summary {
            n: s.len(),
            p50: at(50.0),
            p95: at(95.0),
            p99: at(99.0),
            p999: at(99.9),
            mean: s.iter().sum::<f64>() / s.len() as f64,
            min: s[0],
            max: s[s.len() - 1],
        })
    }

    pub fn json(&self) -> Value {
        json!({
            "n": self.n,
            "p50_ms": round3(self.p50),
            "p95_ms": round3(self.p95),
            "p99_ms": round3(self.p99),
            "p999_ms": round3(self.p999),
            "mean_ms": round3(self.mean),
            "min_ms": round3(self.min),
            "max_ms": round3(self.max),
        })
    }
}

/// Three decimals: microsecond resolution in milliseconds.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!(s.p50, 50.0);
        assert_eq!(s.p95, 95.0);
        assert_eq!(s.p99, 99.0);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 100.0);
        // p99.9 of 100 samples is the worst; of 2,000 the second worst.
        assert_eq!(s.p999, 100.0);
        let v: Vec<Duration> = (1..=2000).map(Duration::from_millis).collect();
        assert_eq!(Summary::of(&v).unwrap().p999, 1998.0);
        assert_eq!(rank(99.9, 5000), 4995);
        assert_eq!(rank(99.0, 500), 495);
        let one = Summary::of(&[Duration::from_millis(7)]).unwrap();
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert!(Summary::of(&[]).is_none());
        let f: Vec<f64> = (1..=100).map(|i| f64::from(i) - 10.0).collect();
        let s = Summary::of_ms(&f).unwrap();
        assert_eq!((s.p50, s.p95, s.p99, s.min), (40.0, 85.0, 89.0, -9.0));
        assert!(Summary::of_ms(&[]).is_none());
    }
}
