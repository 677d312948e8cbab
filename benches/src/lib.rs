//! Load drivers for the platform. Each is a binary that starts what it measures (on loopback,
//! bounded in time and count) and prints its figures; BENCHMARKS.md records them with the
//! command and the machine.
//!
//! Micro-benchmarks of single functions live beside their crates (`tr31/benches`).

/// Latency percentiles of a run, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

/// Percentiles of latencies given in nanoseconds (sorts them).
pub fn percentiles(latencies: &mut [u64]) -> Percentiles {
    latencies.sort_unstable();
    let at = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let max = latencies.len() - 1;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index from a fraction of a length"
        )]
        let i = ((max as f64) * q).round() as usize;
        #[allow(
            clippy::cast_precision_loss,
            reason = "nanoseconds to microseconds for display"
        )]
        let v = latencies.get(i.min(max)).copied().unwrap_or(0) as f64 / 1000.0;
        v
    };
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_set() {
        let mut v: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let p = percentiles(&mut v);
        assert_eq!((p.p50, p.p90, p.p99, p.p999), (501.0, 900.0, 990.0, 999.0));
        assert_eq!(percentiles(&mut []).p50, 0.0);
    }
}
