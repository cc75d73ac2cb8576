//! Resource sampling: each instance's supervisor samples it every interval (the engine's stats for
//! Docker, /proc for exec); one shipper sends the latest sample of every instance to the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{lock, now_ms};
use berth_api::{Client, InstanceSample, MetricsReport};
use tokio::sync::watch;

/// The latest sample per instance, waiting to be shipped.
#[derive(Clone, Default)]
pub struct MetricsSink {
    latest: Arc<Mutex<HashMap<String, InstanceSample>>>,
    /// The least time between two reports, as the server last asked (ms; 0: none asked).
    spacing_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl MetricsSink {
    /// What the server asked in its heartbeat reply: a large cluster spaces reports out.
    pub fn space_out(&self, ms: u64) {
        self.spacing_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn every(&self, configured: Duration) -> Duration {
        configured.max(Duration::from_millis(self.spacing_ms.load(std::sync::atomic::Ordering::Relaxed)))
    }

    pub fn record(&self, sample: InstanceSample) {
        lock(&self.latest).insert(sample.instance.clone(), sample);
    }

    fn take(&self) -> Vec<InstanceSample> {
        lock(&self.latest).drain().map(|(_, s)| s).collect()
    }
}

/// Sends what was sampled every `interval` until shutdown.
pub async fn ship(
    client: Client,
    node: String,
    sink: MetricsSink,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(sink.every(interval)) => {}
            _ = shutdown.changed() => return,
        }
        let samples = sink.take();
        if samples.is_empty() {
            continue;
        }
        if let Err(e) = client.ship_metrics(&node, &MetricsReport { samples }).await {
            tracing::debug!(error = %e, "shipping metrics failed");
        }
    }
}

/// What a driver reads of one instance.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reading {
    /// When the counters were read (ms since the epoch); a cached /proc pass is older than now.
    pub taken_at: i64,
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    pub net_rx_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
}

impl Reading {
    pub fn into_sample(self, app: &str, instance: &str) -> InstanceSample {
        InstanceSample {
            instance: instance.to_string(),
            app: app.to_string(),
            t: if self.taken_at > 0 { self.taken_at } else { now_ms() },
            cpu_seconds: self.cpu_seconds,
            memory_bytes: self.memory_bytes,
            memory_limit_bytes: self.memory_limit_bytes,
            rss_bytes: self.rss_bytes,
            block_read_bytes: self.block_read_bytes,
            block_write_bytes: self.block_write_bytes,
            net_rx_bytes: self.net_rx_bytes,
            net_tx_bytes: self.net_tx_bytes,
        }
    }
}
