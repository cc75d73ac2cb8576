//! `cargo bench -p berth --bench metrics`: the cost of sampling 200 instances.
//!
//! Server, agent and router run as separate processes. 200 exec instances (`sleep`) run on the
//! node; the agent samples each one every 5 s (its default). The agent's CPU over a window is
//! compared with the same agent holding the same 200 instances with sampling slowed to once an
//! hour, so the difference is what sampling costs. Prints Markdown for docs/benchmarks.md.

use std::time::{Duration, Instant};

use berth_testkit::procfs::{cpu_seconds, rss_kib};
use berth_testkit::{Platform, wait_until};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// Agent CPU (% of a core) and server RSS with 200 instances sampled every `interval`.
async fn measure(interval: &str, window: Duration) -> (f64, f64, usize) {
    let agent_args = ["--metrics-interval".to_string(), interval.to_string()];
    let p = Platform::start_split_ports(BERTH.as_ref(), "exec", (21000, 22999), &[], &agent_args).await;
    let spec = "group: bench\nname: many\ndriver: exec\ninstances: 200\ncommand: [/bin/sleep, \"3600\"]\n\
                upgrade:\n  min_healthy_time: 0s\n";
    p.cli_ok(&["deploy", "-f", &p.write("many.yaml", spec), "--timeout", "300"]).await;
    let agent = p.agent_pid().expect("agent pid");
    let server = p.pid().expect("server pid");
    // Let every instance be sampled at least twice.
    let sampled = wait_until("samples of every instance", Duration::from_secs(60), || async {
        let u: serde_json::Value = p.get("/v1/apps/bench/many/usage").await.ok()?;
        let n = u["instances"].as_array().map_or(0, Vec::len);
        (n == 200 || interval == "1h").then_some(n)
    })
    .await;
    let (c0, t0) = (cpu_seconds(agent), Instant::now());
    tokio::time::sleep(window).await;
    let cpu = (cpu_seconds(agent) - c0) / t0.elapsed().as_secs_f64() * 100.0;
    let rss = rss_kib(server) as f64 / 1024.0;
    p.cli_ok(&["app", "many", "destroy", "--timeout", "300"]).await;
    (cpu, rss, sampled)
}

fn main() {
    let window =
        Duration::from_secs(std::env::var("BERTH_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(30));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let (idle_cpu, idle_rss, _) = measure("1h", window).await;
        let (cpu, rss, sampled) = measure("5s", window).await;
        println!("\n## metrics sampling with 200 exec instances ({} s window)\n", window.as_secs());
        println!("| agent sampling | instances sampled | agent CPU, % of a core | server RSS |");
        println!("|---|---|---|---|");
        println!("| once an hour (baseline) | - | {idle_cpu:.2} | {idle_rss:.1} MiB |");
        println!("| every 5 s (default) | {sampled} | {cpu:.2} | {rss:.1} MiB |");
        println!("\nSampling costs {:.2} % of a core for 200 instances.", cpu - idle_cpu);
    });
}
