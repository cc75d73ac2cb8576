//! `cargo bench -p berth --bench logs`: log collection on one node.
//!
//! Server, agent and router run as separate processes, so the agent's CPU is its own.
//! 1. Throughput: one exec instance writes numbered lines at a set rate; lines/s written (from
//!    its sequence numbers) beside lines/s stored by the server, and the agent's CPU.
//! 2. Cost at 10,000 lines/s (Docker): the agent's CPU while it follows a container writing
//!    10,000 lines/s, beside `docker logs -f` of the same container in the same window.
//!
//! Prints Markdown for docs/benchmarks.md. `BERTH_BENCH_SECONDS` sets each window (default 10).

use std::time::{Duration, Instant};

use berth_testkit::procfs::cpu_seconds;
use berth_testkit::{Platform, docker_or_skip, test_images, wait_until};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// The highest `chatter N` sequence number among the app's last stored lines.
async fn shipped(p: &Platform, app: &str) -> u64 {
    let out = p.cli_ok(&["app", app, "logs", "-n", "20"]).await;
    out.lines().filter_map(|l| l.split("chatter ").nth(1)?.split_whitespace().next()?.parse().ok()).max().unwrap_or(0)
}

/// Lines stored on the server for `app` (every rotated file included).
fn stored_lines(p: &Platform, app: &str) -> u64 {
    let dir = p.data_dir().join("server/logs").join(app);
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read(e.path()).map(|b| b.iter().filter(|c| **c == b'\n').count() as u64).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// The highest sequence number the exec instance has written, from the end of its output file.
fn written_lines(p: &Platform, instance: &str) -> u64 {
    let text = std::fs::read(p.data_dir().join("agent/exec").join(instance).join("stdout.log")).unwrap_or_default();
    let tail = String::from_utf8_lossy(&text[text.len().saturating_sub(8192)..]).into_owned();
    tail.lines().filter_map(|l| l.split("chatter ").nth(1)?.split_whitespace().next()?.parse().ok()).max().unwrap_or(0)
}

async fn throughput(seconds: u64) {
    let big = ["--log-file-size".to_string(), "4096MiB".into(), "--log-files".into(), "2".into()];
    let p = Platform::start_split_args(BERTH.as_ref(), "exec", &big, &[]).await;
    let agent = p.agent_pid().expect("agent pid");
    let bin = berth_testkit::image::testapp_binary();
    println!("\n## log collection throughput (one exec instance, {seconds} s per row)\n");
    println!(
        "| app writes lines/s | stored lines/s | stored / written | agent CPU, % of a core | server CPU, % of a core |"
    );
    println!("|---|---|---|---|---|");
    let server = p.pid().expect("server pid");
    for per_ms in [20u64, 100, 200, 500] {
        let spec = format!(
            "group: bench\nname: flood{per_ms}\ndriver: exec\ncommand: [{}, --chatter-ms, \"1\", --chatter-lines, \"{per_ms}\"]\n",
            bin.display()
        );
        let app = format!("flood{per_ms}");
        let id = format!("bench/{app}");
        p.cli_ok(&["deploy", "-f", &p.write("flood.yaml", &spec), "--no-wait"]).await;
        wait_until("lines to flow", Duration::from_secs(20), || async { (stored_lines(&p, &id) > 1000).then_some(()) })
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let instance = p.live(&app).await[0]["id"].as_str().unwrap_or_default().to_string();
        let (w0, s0, cpu0, t0) =
            (written_lines(&p, &instance), stored_lines(&p, &id), cpu_seconds(agent), Instant::now());
        let server0 = cpu_seconds(server);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let (w1, s1, cpu1) = (written_lines(&p, &instance), stored_lines(&p, &id), cpu_seconds(agent));
        let server1 = cpu_seconds(server);
        let took = t0.elapsed().as_secs_f64();
        let (written, stored) = ((w1 - w0) as f64 / took, (s1 - s0) as f64 / took);
        println!(
            "| {written:.0} | {stored:.0} | {:.2} | {:.0} | {:.0} |",
            stored / written.max(1.0),
            (cpu1 - cpu0) / took * 100.0,
            (server1 - server0) / took * 100.0
        );
        p.cli_ok(&["app", &app, "destroy", "--timeout", "60"]).await;
    }
}

async fn cost_at_10k(seconds: u64) {
    let Some(docker) = docker_or_skip("log cost benchmark").await else {
        return;
    };
    let images = test_images(&docker).await;
    let p = Platform::start_split(BERTH.as_ref(), "docker").await;
    let agent = p.agent_pid().expect("agent pid");
    let spec = format!(
        "group: bench\nname: chat\nimage: {}\nports: [8080]\ncommand: [\"--chatter-ms\", \"10\", \"--chatter-lines\", \"100\"]\n",
        images.v1
    );
    p.cli_ok(&["deploy", "-f", &p.write("chat.yaml", &spec), "--no-wait"]).await;
    wait_until("lines to flow", Duration::from_secs(30), || async { (shipped(&p, "chat").await > 0).then_some(()) })
        .await;
    let id = p.live("chat").await[0]["id"].as_str().unwrap().to_string();
    let peer = std::process::Command::new("docker")
        .args(["logs", "-f", "--since", "1s", &format!("berth-{id}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("docker logs -f");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (n0, a0, d0, t0) = (shipped(&p, "chat").await, cpu_seconds(agent), cpu_seconds(peer.id()), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (n1, a1, d1) = (shipped(&p, "chat").await, cpu_seconds(agent), cpu_seconds(peer.id()));
    let took = t0.elapsed().as_secs_f64();
    let mut peer = peer;
    let _ = peer.kill();
    let _ = peer.wait();
    let (agent_pct, peer_pct) = ((a1 - a0) / took * 100.0, (d1 - d0) / took * 100.0);
    println!("\n## log collection cost at 10,000 lines/s (one Docker container, {seconds} s)\n");
    println!("| what | lines/s | CPU, % of a core | vs `docker logs -f` |");
    println!("|---|---|---|---|");
    println!(
        "| Berth agent (collect, buffer, ship) | {:.0} | {agent_pct:.1} | {:.2} |",
        (n1 - n0) as f64 / took,
        agent_pct / peer_pct
    );
    println!("| `docker logs -f` of the same container, to /dev/null | | {peer_pct:.1} | 1.00 |");
    p.cli_ok(&["app", "chat", "destroy", "--timeout", "60"]).await;
}

fn main() {
    let seconds: u64 = std::env::var("BERTH_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        throughput(seconds).await;
        cost_at_10k(seconds).await;
    });
}
