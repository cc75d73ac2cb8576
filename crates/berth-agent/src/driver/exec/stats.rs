//! A process group's resource use, from /proc.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::Reading;
use crate::{lock, now_ms};

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
