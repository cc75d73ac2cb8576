//! `cargo bench -p berth --bench upgrade`: wall time of a rolling upgrade of 10 Docker instances
//! with `min_healthy_time: 0`, beside its floor, under constant load through the router.
//!
//! The floor is what the app itself costs: per step, one instance's start (a plain `docker run`
//! of the same image until its health answers, measured in the same run) plus one health interval.
//! Requests failed during the upgrade are counted (they must be 0).
//!
//! Prints a Markdown table for docs/benchmarks.md. `BERTH_BENCH_ROUNDS` sets the rounds (default 5).

use std::time::{Duration, Instant};

use berth_testkit::{Load, Platform, docker_or_skip, test_images};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const START_DELAY_MS: u64 = 500;
const HEALTH_INTERVAL_MS: u64 = 500;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// One instance's start as the app costs it: `docker run` until `/health` answers 200.
async fn plain_start(image: &str, port: u16) -> f64 {
    let started = Instant::now();
    let out = tokio::process::Command::new("docker")
        .args(["run", "-d", "--init", "--label", "berth-bench=1", "-p"])
        .arg(format!("127.0.0.1:{port}:8080"))
        .arg(image)
        .args(["--start-delay-ms", &START_DELAY_MS.to_string()])
        .output()
        .await
        .expect("docker run");
    assert!(out.status.success(), "docker run: {}", String::from_utf8_lossy(&out.stderr));
    let client = berth_tls::http();
    let url = format!("http://127.0.0.1:{port}/health");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::process::Command::new("docker").args(["rm", "-f", &id]).output().expect("docker rm");
    took
}

fn spec(image: &str, min_health: f64, max_over: f64) -> String {
    format!(
        "group: bench\nname: roll\nimage: {image}\ninstances: 10\ncpu: 0.1\nmemory: 32\nports: [8080]\n\
         command: [\"--start-delay-ms\", \"{START_DELAY_MS}\"]\nservices: [roll.bench]\n\
         health:\n  http: /health\n  interval: {HEALTH_INTERVAL_MS}ms\n  timeout: 1s\n\
         upgrade:\n  min_healthy_time: 0s\n  min_health_capacity: {min_health}\n  max_over_capacity: {max_over}\n"
    )
}

/// Steps a Marathon rolling upgrade of 10 takes: each replaces what the capacity bounds allow.
fn steps(min_health: f64, max_over: f64) -> usize {
    let target = 10usize;
    let floor = (target as f64 * min_health).ceil() as usize;
    let ceiling = ((target as f64 * (1.0 + max_over)).floor() as usize).max(floor + 1);
    let per_step = (ceiling - floor).max(1);
    target.div_ceil(per_step)
}

async fn bench(rounds: usize) {
    let Some(docker) = docker_or_skip("upgrade benchmark").await else {
        return;
    };
    let images = test_images(&docker).await;
    let p = Platform::start(BERTH.as_ref(), "docker").await;
    let mut start_samples = Vec::new();
    for _ in 0..rounds {
        start_samples.push(plain_start(&images.v1, 33100).await);
    }
    let start = median(start_samples);
    let interval = HEALTH_INTERVAL_MS as f64 / 1000.0;
    println!("\n## rolling upgrade of 10 Docker instances ({rounds} rounds, min_healthy_time 0)\n");
    println!(
        "One instance's own start (`docker run` until /health answers, median): {start:.3} s; health interval {interval:.1} s.\n"
    );
    println!("| upgrade strategy | steps | floor (s) | Berth median (s) | Berth / floor | requests | failed |");
    println!("|---|---|---|---|---|---|---|");
    for (min_health, max_over) in [(1.0, 1.0), (1.0, 0.2), (0.9, 0.0)] {
        let file_a = p.write("a.yaml", &spec(&images.v1, min_health, max_over));
        let file_b = p.write("b.yaml", &spec(&images.v2, min_health, max_over));
        p.cli_ok(&["deploy", "-f", &file_a, "--timeout", "120"]).await;
        let load = Load::start(&p.http, "roll.bench", 4, Some(Duration::from_millis(5)));
        let mut samples = Vec::new();
        for round in 0..rounds {
            let file = if round % 2 == 0 { &file_b } else { &file_a };
            let started = Instant::now();
            p.cli_ok(&["deploy", "-f", file, "--timeout", "300"]).await;
            samples.push(started.elapsed().as_secs_f64());
        }
        let report = load.finish().await;
        p.cli_ok(&["app", "roll", "destroy", "--timeout", "120"]).await;
        let n = steps(min_health, max_over);
        let floor = n as f64 * (start + interval);
        let took = median(samples);
        println!(
            "| min_health_capacity {min_health}, max_over_capacity {max_over} | {n} | {floor:.2} | {took:.2} | {:.2} | {} | {} |",
            took / floor,
            report.ok + report.failures.len() as u64,
            report.failures.len()
        );
    }
}

fn main() {
    let rounds: usize = std::env::var("BERTH_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(bench(rounds));
}
