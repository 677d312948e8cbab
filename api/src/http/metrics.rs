//! Prometheus metrics: requests by route, method and status, and a latency histogram per route.
//! Labels are route patterns from the table, never raw paths, so ids do not explode the series.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(&'static str, &'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

/// The counters.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Empty counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one answered request. `route` is the pattern (`"unmatched"` for a 404 path).
    pub fn record(&self, route: &'static str, method: &'static str, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        *inner.requests.entry((route, method, status)).or_default() += 1;
        let h = inner.latency.entry(route).or_default();
        h.count += 1;
        h.sum += secs;
        for (count, bound) in h.counts.iter_mut().zip(BUCKETS) {
            if secs <= bound {
                *count += 1;
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(inner) = self.inner.lock() else {
            return out;
        };
        out.push_str(
            "# HELP http_requests_total Requests answered, by route, method and status.\n",
        );
        out.push_str("# TYPE http_requests_total counter\n");
        for ((route, method, status), n) in &inner.requests {
            let _ = writeln!(
                out,
                "http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP http_request_duration_seconds Time to answer, by route.\n");
        out.push_str("# TYPE http_request_duration_seconds histogram\n");
        for (route, h) in &inner.latency {
            for (count, bound) in h.counts.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::new();
        m.record(
            "/merchants/{merchant_id}",
            "GET",
            200,
            Duration::from_micros(700),
        );
        m.record(
            "/merchants/{merchant_id}",
            "GET",
            404,
            Duration::from_millis(30),
        );
        let text = m.render();
        assert!(text.contains(
            "http_requests_total{route=\"/merchants/{merchant_id}\",method=\"GET\",status=\"200\"} 1"
        ));
        assert!(text.contains("le=\"0.0005\"} 0"));
        assert!(text.contains("le=\"0.001\"} 1"));
        assert!(text.contains("le=\"0.05\"} 2"));
        assert!(text.contains("le=\"+Inf\"} 2"));
        assert!(
            text.contains(
                "http_request_duration_seconds_count{route=\"/merchants/{merchant_id}\"} 2"
            )
        );
    }
}
