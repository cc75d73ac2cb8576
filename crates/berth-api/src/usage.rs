//! Resource use: agents' samples, and use per instance, app, node and cluster.

use berth_core::Millis;
use serde::{Deserialize, Serialize};

/// One instance's resource use at one moment, as its node's agent sampled it. Byte and CPU
/// counters are cumulative since the instance started; the server turns them into rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSample {
    pub instance: String,
    pub app: String,
    pub t: Millis,
    /// CPU time used since start, in seconds (all processes of the instance).
    pub cpu_seconds: f64,
    /// Memory in use (the cgroup's usage for Docker, the resident set for exec).
    pub memory_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_rx_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_tx_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    pub samples: Vec<InstanceSample>,
}

/// An instance's latest use, with rates from its last two samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceUsage {
    pub instance: String,
    pub app: String,
    pub node: String,
    pub t: Millis,
    /// Percent of one core.
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_rx_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_tx_bytes: Option<u64>,
    /// Times an instance of the app failed since the server started (a restart each).
    pub restarts: u64,
}

/// One instance's use over time (`GET /v1/apps/G/N/usage/history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceHistory {
    pub instance: String,
    pub points: Vec<UsagePoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsagePoint {
    pub t: Millis,
    /// Percent of one core since the previous point.
    pub cpu_percent: f64,
    pub memory_bytes: u64,
}

/// An app's traffic over time (`GET /v1/apps/G/N/traffic`): what its routers served and what its
/// instances sent and received, counted per step of `step_ms`. A step with nothing is left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppTraffic {
    pub step_ms: i64,
    pub steps: Vec<TrafficStep>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficStep {
    /// When the step starts.
    pub t: Millis,
    /// Requests answered through the routers, and of those the 5xx (router errors included).
    pub requests: u64,
    pub errors: u64,
    /// Latency through the routers, when there were requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_mean_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95_ms: Option<f64>,
    /// Bytes the app's instances received and sent.
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

/// An app's use: the sum of its instances.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppUsage {
    pub app: String,
    pub instances: usize,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub restarts: u64,
    /// Reserved by the spec: cores and bytes.
    pub cpu_allocated: f64,
    pub memory_allocated_bytes: u64,
}

/// Allocated (what specs reserve) beside used (what instances take), per node and in all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacityUsage {
    pub name: String,
    pub cpu_cores: f64,
    pub cpu_allocated: f64,
    pub cpu_used: f64,
    pub memory_bytes: u64,
    pub memory_allocated_bytes: u64,
    pub memory_used_bytes: u64,
}

/// What `berth top` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub apps: Vec<AppUsage>,
    pub nodes: Vec<CapacityUsage>,
    pub cluster: CapacityUsage,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceUsage>,
}
