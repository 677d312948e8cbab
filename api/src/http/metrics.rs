//! Prometheus metrics: requests by route, method and status, and a latency histogram per route.
//! Labels are route patterns from the table, never raw paths, so ids do not explode the series.
//! The `prometheus` crate keeps the series and writes the text format.

use std::time::Duration;

use prometheus::{Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The counters, in a registry of their own (nothing global).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty counters.
    pub fn new() -> Self {
        let registry = Registry::new();
        // Fixed names, labels and buckets: these constructors fail only on malformed options,
        // and a failure leaves a series out rather than stopping the server.
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "Requests answered, by route, method and status.",
            ),
            &["route", "method", "status"],
        )
        .unwrap_or_else(|e| unreachable!("request counter: {e}"));
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "Time to answer, by route.")
                .buckets(BUCKETS.to_vec()),
            &["route"],
        )
        .unwrap_or_else(|e| unreachable!("latency histogram: {e}"));
        let _ = registry.register(Box::new(requests.clone()));
        let _ = registry.register(Box::new(latency.clone()));
        Self {
            registry,
            requests,
            latency,
        }
    }

    /// Records one answered request. `route` is the pattern (`"unmatched"` for a 404 path).
    pub fn record(&self, route: &'static str, method: &'static str, status: u16, took: Duration) {
        let status = status.to_string();
        self.requests
            .with_label_values(&[route, method, status.as_str()])
            .inc();
        self.latency
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
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
            "http_requests_total{method=\"GET\",route=\"/merchants/{merchant_id}\",status=\"200\"} 1"
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
