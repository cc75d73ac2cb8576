//! Per-cluster request metrics: counts by status class, a latency histogram, in-flight requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Upper bounds of the latency buckets, in milliseconds (one more bucket is everything above).
pub const BUCKETS_MS: [u64; 12] = berth_api::LATENCY_BOUNDS_MS;

#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// 1xx..5xx.
    pub by_class: [AtomicU64; 5],
    pub latency: [AtomicU64; BUCKETS_MS.len() + 1],
    pub latency_sum_us: AtomicU64,
    pub in_flight: AtomicU64,
    pub retries: AtomicU64,
    pub fail_open: AtomicU64,
    pub denied: AtomicU64,
    /// Requests whose rule gave no decision, by `berth_api::RULE_FAILURES`' order: an error, an overrun,
    /// a suspension.
    pub rule_failures: [AtomicU64; 3],
}

impl ClusterMetrics {
    pub fn observe(&self, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let ms = took.as_millis() as u64;
        let bucket = BUCKETS_MS.iter().position(|b| ms <= *b).unwrap_or(BUCKETS_MS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The cumulative counts the router reports to the control plane.
    pub fn counts(&self) -> berth_api::RouterCounts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        berth_api::RouterCounts {
            by_class: std::array::from_fn(|i| load(&self.by_class[i])),
            latency: self.latency.iter().map(load).collect(),
            latency_sum_ms: load(&self.latency_sum_us) as f64 / 1000.0,
            in_flight: load(&self.in_flight),
            rule_failures: std::array::from_fn(|i| load(&self.rule_failures[i])),
        }
    }

    pub fn view(&self) -> MetricsView {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsView {
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .iter()
                .zip(&self.by_class)
                .map(|(k, v)| ((*k).to_string(), load(v)))
                .collect(),
            latency_ms_buckets: BUCKETS_MS
                .iter()
                .map(|b| b.to_string())
                .chain(std::iter::once("+Inf".to_string()))
                .zip(&self.latency)
                .map(|(k, v)| (k, load(v)))
                .collect(),
            latency_sum_ms: load(&self.latency_sum_us) as f64 / 1000.0,
            in_flight: load(&self.in_flight),
            retries: load(&self.retries),
            fail_open: load(&self.fail_open),
            denied: load(&self.denied),
            rule_errors: load(&self.rule_failures[0]),
            rule_overruns: load(&self.rule_failures[1]),
            rule_suspended: load(&self.rule_failures[2]),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct MetricsView {
    pub requests: Vec<(String, u64)>,
    pub latency_ms_buckets: Vec<(String, u64)>,
    pub latency_sum_ms: f64,
    pub in_flight: u64,
    pub retries: u64,
    pub fail_open: u64,
    pub denied: u64,
    pub rule_errors: u64,
    pub rule_overruns: u64,
    pub rule_suspended: u64,
}
