//! A container's resource use, from the engine's one-shot stats.

use futures_util::StreamExt;

use crate::metrics::Reading;
use crate::now_ms;

/// One reading of a container from the engine's stats (one shot, no waiting for a second sample).
pub async fn read_container(docker: &bollard::Docker, id: &str) -> Option<Reading> {
    let options = bollard::query_parameters::StatsOptionsBuilder::new().stream(false).one_shot(true).build();
    let stats = docker.stats(id, Some(options)).next().await?.ok()?;
    let cpu_ns = stats.cpu_stats.as_ref().and_then(|c| c.cpu_usage.as_ref()).and_then(|u| u.total_usage).unwrap_or(0);
    let memory = stats.memory_stats.as_ref();
    let raw = memory.and_then(|m| m.stats.as_ref());
    // cgroup v1 reports rss; v2 calls the same thing anon.
    let rss = raw.and_then(|s| s.get("total_rss").or_else(|| s.get("rss")).or_else(|| s.get("anon")).copied());
    let usage = memory.and_then(|m| m.usage).unwrap_or(0);
    // Page cache is reclaimable: `docker stats` leaves it out of "usage", and so do we.
    let cache = raw.and_then(|s| s.get("total_inactive_file").or_else(|| s.get("inactive_file")).copied()).unwrap_or(0);
    let (mut read, mut write) = (0, 0);
    for entry in stats.blkio_stats.as_ref().and_then(|b| b.io_service_bytes_recursive.as_ref()).into_iter().flatten() {
        match entry.op.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("read") => read += entry.value.unwrap_or(0),
            Some("write") => write += entry.value.unwrap_or(0),
            _ => {}
        }
    }
    let nets = stats.networks.as_ref();
    let net = |f: fn(&bollard::models::ContainerNetworkStats) -> Option<u64>| {
        nets.map(|n| n.values().filter_map(f).sum::<u64>())
    };
    Some(Reading {
        taken_at: now_ms(),
        cpu_seconds: cpu_ns as f64 / 1e9,
        memory_bytes: usage.saturating_sub(cache),
        memory_limit_bytes: memory.and_then(|m| m.limit).filter(|l| *l > 0 && *l < u64::MAX / 2),
        rss_bytes: rss,
        block_read_bytes: read,
        block_write_bytes: write,
        net_rx_bytes: net(|n| n.rx_bytes),
        net_tx_bytes: net(|n| n.tx_bytes),
    })
}
