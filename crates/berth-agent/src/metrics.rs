//! Resource sampling: each instance's supervisor samples it every interval (the engine's stats for
//! Docker, /proc for exec); one shipper sends the latest sample of every instance to the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{lock, now_ms};
use berth_api::{Client, InstanceSample, MetricsReport};
use futures_util::StreamExt;
use tokio::sync::watch;

/// The latest sample per instance, waiting to be shipped.
#[derive(Clone, Default)]
pub struct MetricsSink {
    latest: Arc<Mutex<HashMap<String, InstanceSample>>>,
}

impl MetricsSink {
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
            _ = tokio::time::sleep(interval) => {}
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

/// One pass over /proc: per process group, its processes' (pid, cpu ticks, resident pages).
type ProcTable = (i64, HashMap<i32, Vec<(i32, u64, u64)>>);

/// The process table, read at most once a second however many instances are sampled: sampling
/// is one /proc pass per second, not one per instance.
fn proc_table() -> Arc<ProcTable> {
    static CACHE: Mutex<Option<(std::time::Instant, Arc<ProcTable>)>> = Mutex::new(None);
    let mut cache = lock(&CACHE);
    if let Some((at, table)) = cache.as_ref()
        && at.elapsed() < Duration::from_secs(1)
    {
        return table.clone();
    }
    let mut table = (now_ms(), HashMap::new());
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the command: state, ppid, pgrp, ... utime (12th), stime (13th), ... rss (22nd).
        let num = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let Some(pgrp) = fields.get(2).and_then(|g| g.parse::<i32>().ok()) else { continue };
        table.1.entry(pgrp).or_insert_with(Vec::new).push((pid, num(11) + num(12), num(21)));
    }
    let table = Arc::new(table);
    *cache = Some((std::time::Instant::now(), table.clone()));
    table
}

/// One reading of an exec instance: every process in its process group, from /proc.
pub fn read_process_group(leader: i32) -> Option<Reading> {
    // /proc counts CPU time in USER_HZ, which Linux fixes at 100 whatever the kernel's HZ.
    let ticks = 100.0;
    let page = 4096u64;
    let table = proc_table();
    let members = table.1.get(&leader)?;
    let mut reading = Reading { taken_at: table.0, ..Reading::default() };
    for (pid, cpu, rss) in members {
        reading.cpu_seconds += *cpu as f64 / ticks;
        reading.memory_bytes += rss * page;
        if let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) {
            for line in io.lines() {
                let value = |l: &str| l.split(':').nth(1).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
                if line.starts_with("read_bytes:") {
                    reading.block_read_bytes += value(line);
                } else if line.starts_with("write_bytes:") {
                    reading.block_write_bytes += value(line);
                }
            }
        }
    }
    reading.rss_bytes = Some(reading.memory_bytes);
    Some(reading)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_group_is_read_from_proc() {
        // The test process leads no group of its own, so start one: a child in its own group.
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep").arg("5").process_group(0).spawn().unwrap();
        // Right after spawn the child may still be inside exec, with no memory mapped yet: poll
        // (bounded) until it runs `sleep`.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let reading = loop {
            let reading = read_process_group(child.id() as i32).expect("the group is found");
            if reading.memory_bytes > 0 || std::time::Instant::now() > deadline {
                break reading;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(reading.memory_bytes > 0, "{reading:?}");
        let _ = child.kill();
        let _ = child.wait();
        assert!(read_process_group(i32::MAX).is_none());
    }
}
