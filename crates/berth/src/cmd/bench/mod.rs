//! `berth bench schedule`: the real scheduler (`berth_plan::place`) in this process, on one
//! core, against simulated nodes: varied sizes, rack and zone labels, some already busy. It
//! places instances one at a time, as a reconcile pass does, and says how fast.
//! `berth bench cluster`: the whole path, a real server and many simulated agents.

mod cluster;
mod store;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use berth_core::spec::DriverKind;
use berth_core::{Allocation, AppSpec, Node, NodeStatus, Resources};
use berth_plan::place::{self, NodeUsage, Usage};
use serde::Serialize;

use super::Ctx;
use crate::output::Format;

#[derive(Debug, clap::Subcommand)]
pub enum BenchAction {
    /// Place instances with the real scheduler on simulated nodes and report placements per second.
    Schedule(ScheduleArgs),
    /// A real server and N simulated agents: time from deploy to M instances running, and the
    /// server's memory.
    Cluster(cluster::ClusterArgs),
    /// API writes (deploy and scale, concurrent clients) per second and their p99, on redb and
    /// on a three-member etcd cluster, in one run.
    Api(store::ApiArgs),
    /// Three servers on etcd: kill the leader again and again, and time each new election.
    Failover(store::FailoverArgs),
}

#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Instances to place.
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    /// Give the app two constraints besides the default spread: rack:GROUP_BY and zone:LIKE:z[01].
    #[arg(long)]
    constraints: bool,
}

#[derive(Debug, Serialize)]
struct ScheduleReport {
    nodes: usize,
    instances: usize,
    placed: usize,
    constraints: bool,
    placements_per_sec: f64,
    seconds: f64,
    peak_rss_mib: f64,
}

pub async fn run(action: BenchAction, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    match action {
        BenchAction::Schedule(args) => schedule(&args, ctx),
        BenchAction::Cluster(args) => cluster::cluster(&args, ctx).await,
        BenchAction::Api(args) => store::api(&args, ctx).await,
        BenchAction::Failover(args) => store::failover(&args, ctx).await,
    }
}

/// Nodes of varied sizes (8 to 64 cores, 16 to 256 GiB), on 20 racks in 3 zones; one in ten
/// already three quarters full, one in five in another business's pool (`batch`, which the
/// benchmark's app may not use). Deterministic: the same arguments give the same cluster.
fn cluster(n: usize) -> (Vec<Node>, Usage) {
    let mut nodes = Vec::with_capacity(n);
    let mut usage = Usage::default();
    for i in 0..n {
        let size = 1u64 << (i % 4);
        let node = Node {
            id: format!("node-{i:06}"),
            hostname: format!("host-{i:06}"),
            address: "127.0.0.1".into(),
            resources: Resources { cpu: 8.0 * size as f64, memory: 16_384 * size, ports: (20_000, 29_999) },
            labels: BTreeMap::from([("rack".into(), format!("r{}", i % 20)), ("zone".into(), format!("z{}", i % 3))]),
            drivers: vec![DriverKind::Docker, DriverKind::Exec],
            status: NodeStatus::Ready,
            registered_at: 0,
            last_heartbeat: 0,
            taken_ports: Default::default(),
            pool: if i % 5 == 4 { "batch".into() } else { berth_core::SHARED_POOL.into() },
            eligibility: Default::default(),
            drain: None,
            disconnected_at: None,
            quarantine: None,
            drivers_down: Default::default(),
        };
        if i % 10 == 0 {
            let busy = Allocation { cpu: node.resources.cpu * 0.75, memory: node.resources.memory * 3 / 4 };
            usage.entry(node.id.clone()).or_insert_with(NodeUsage::default).add("other/busy", busy, &[]);
        }
        nodes.push(node);
    }
    (nodes, usage)
}

fn schedule(args: &ScheduleArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let constraints = if args.constraints { "constraints: [rack:GROUP_BY, \"zone:LIKE:z[01]\"]\n" } else { "" };
    let spec = AppSpec::from_yaml(
        &format!("group: bench\nname: web\nimage: web:1\nports: [8080]\ncpu: 0.1\nmemory: 128\n{constraints}"),
        None,
    )
    .map_err(|e| anyhow::anyhow!("the benchmark's own spec: {e}"))?;
    let (nodes, mut usage) = cluster(args.nodes);
    let refs: Vec<&Node> = nodes.iter().collect();
    let held = Allocation::of(&spec);
    let began = Instant::now();
    let mut placed = 0;
    let pools = berth_core::Pools::default();
    let mut placer = place::Placer::new("bench/web", &spec, &refs, &usage, &pools);
    for _ in 0..args.instances {
        match placer.place(&usage) {
            Ok(p) => {
                usage.entry(p.node).or_default().add("bench/web", held, &p.host_ports);
                placed += 1;
            }
            Err(_) => break,
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    let report = ScheduleReport {
        nodes: args.nodes,
        instances: args.instances,
        placed,
        constraints: args.constraints,
        placements_per_sec: placed as f64 / seconds.max(1e-9),
        seconds,
        peak_rss_mib: peak_rss_mib(),
    };
    match ctx.format {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Table => println!(
            "{} of {} instances placed on {} nodes{} in {:.2} s: {:.0} placements/s on one core, peak RSS {:.0} MiB",
            report.placed,
            report.instances,
            report.nodes,
            if report.constraints { " (spread, rack:GROUP_BY, zone:LIKE)" } else { " (spread)" },
            report.seconds,
            report.placements_per_sec,
            report.peak_rss_mib
        ),
    }
    Ok(if placed == args.instances { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// This process's peak resident memory, from /proc.
fn peak_rss_mib() -> f64 {
    status_mib("/proc/self/status", "VmHWM:")
}

/// A process's resident memory now and at its peak, in MiB.
fn peak_rss_of(pid: u32) -> (f64, f64) {
    let path = format!("/proc/{pid}/status");
    (status_mib(&path, "VmRSS:"), status_mib(&path, "VmHWM:"))
}

/// CPU time a process has used (user and system), in seconds (0 when unreadable).
fn cpu_seconds_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is the first field, utime the 12th, stime the 13th, in USER_HZ
    // (which Linux fixes at 100).
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// One `kB` field of a /proc status file, in MiB (0 when unreadable).
fn status_mib(path: &str, field: &str) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kib| kib.parse::<f64>().ok()))
        .map_or(0.0, |kib| kib / 1024.0)
}
