//! `cargo bench -p berth --bench deploy`: Berth beside its peer, in one run on one machine.
//!
//! 1. Time from `berth deploy` of 10 instances of the test image to all running, beside 10 plain
//!    `docker run -d` of the same image with the same limits (one after another, and all at once).
//! 2. Memory of `berth up` (server + agent in one process) holding 1,000 exec instances.
//!
//! Prints a Markdown table for docs/benchmarks.md. `BERTH_BENCH_ROUNDS` sets the rounds (default 9).

use std::time::{Duration, Instant};

use berth_testkit::procfs::rss_kib;
use berth_testkit::{Platform, docker_or_skip, test_images, wait_until};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// (median, min) of the samples.
fn summary(mut xs: Vec<f64>) -> (f64, f64) {
    xs.sort_by(|a, b| a.total_cmp(b));
    (xs[xs.len() / 2], xs[0])
}

async fn docker_run_10(image: &str, first_port: u16, parallel: bool) -> f64 {
    let run = |i: u16| {
        let image = image.to_string();
        async move {
            let out = tokio::process::Command::new("docker")
                .args(["run", "-d", "--init", "--label", "berth-bench=1", "-m", "32m", "--memory-swap", "32m"])
                .args(["--cpus", "0.1", "--pids-limit", "1024", "-p"])
                .arg(format!("127.0.0.1:{}:8080", first_port + i))
                .arg(&image)
                .output()
                .await
                .expect("docker run");
            assert!(out.status.success(), "docker run: {}", String::from_utf8_lossy(&out.stderr));
        }
    };
    let started = Instant::now();
    if parallel {
        futures_util::future::join_all((0..10).map(run)).await;
    } else {
        for i in 0..10 {
            run(i).await;
        }
    }
    let took = started.elapsed().as_secs_f64();
    let ids =
        std::process::Command::new("docker").args(["ps", "-aq", "--filter", "label=berth-bench=1"]).output().unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout).split_whitespace().map(str::to_string).collect();
    if !ids.is_empty() {
        std::process::Command::new("docker").args(["rm", "-f"]).args(&ids).output().unwrap();
    }
    took
}

async fn deploy_bench(rounds: usize) {
    let Some(docker) = docker_or_skip("deploy benchmark").await else {
        return;
    };
    let images = test_images(&docker).await;
    let p = Platform::start(BERTH.as_ref(), "docker").await;
    let spec =
        format!("group: bench\nname: ten\nimage: {}\ninstances: 10\ncpu: 0.1\nmemory: 32\nports: [8080]\n", images.v1);
    let file = p.write("ten.yaml", &spec);
    let (mut berth, mut seq, mut par) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate who goes first so neither always meets a warm engine.
        let berth_first = round % 2 == 0;
        if !berth_first {
            seq.push(docker_run_10(&images.v1, 33000, false).await);
            par.push(docker_run_10(&images.v1, 33000, true).await);
        }
        let started = Instant::now();
        p.cli_ok(&["deploy", "-f", &file, "--timeout", "120"]).await;
        berth.push(started.elapsed().as_secs_f64());
        p.cli_ok(&["app", "ten", "destroy", "--timeout", "120"]).await;
        if berth_first {
            seq.push(docker_run_10(&images.v1, 33000, false).await);
            par.push(docker_run_10(&images.v1, 33000, true).await);
        }
    }
    let (b, s, q) = (summary(berth), summary(seq), summary(par));
    println!("\n## deploy 10 instances ({rounds} rounds, wall time in seconds)\n");
    println!("| what | median | min | Berth / peer (median) |");
    println!("|---|---|---|---|");
    println!("| `berth deploy` (10 instances, until all running) | {:.3} | {:.3} | |", b.0, b.1);
    println!("| 10 x `docker run -d`, one after another | {:.3} | {:.3} | {:.2} |", s.0, s.1, b.0 / s.0);
    println!("| 10 x `docker run -d`, all at once | {:.3} | {:.3} | {:.2} |", q.0, q.1, b.0 / q.0);
}

async fn memory_bench() {
    let p = Platform::start_with(BERTH.as_ref(), "exec", (21000, 22999)).await;
    let pid = p.pid().expect("berth pid");
    let idle = rss_kib(pid);
    let spec = "group: bench\nname: thousand\ndriver: exec\ninstances: 1000\ncommand: [/bin/sleep, \"3600\"]\n";
    let file = p.write("thousand.yaml", spec);
    let started = Instant::now();
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "600"]).await;
    let took = started.elapsed().as_secs_f64();
    // Let the reconcile loop and the agent settle before reading memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded = rss_kib(pid);
    let started = Instant::now();
    let status =
        wait_until("a status read", Duration::from_secs(10), || async { Some(p.status("thousand").await) }).await;
    let status_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(status["counts"]["running"], 1000);
    p.cli_ok(&["app", "thousand", "destroy", "--timeout", "600"]).await;
    println!("\n## 1,000 exec instances in one `berth up`\n");
    println!("| what | value |");
    println!("|---|---|");
    println!("| RSS of `berth up` idle | {:.1} MiB |", idle as f64 / 1024.0);
    println!("| RSS of `berth up` with 1,000 running instances | {:.1} MiB |", loaded as f64 / 1024.0);
    println!("| time from `berth deploy` to 1,000 running | {took:.2} s |");
    println!("| `berth app thousand status -o json` (CLI process, 1,000 instances) | {status_ms:.0} ms |");
}

fn main() {
    let rounds: usize = std::env::var("BERTH_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(9);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        deploy_bench(rounds).await;
        memory_bench().await;
    });
}
