//! `cargo bench -p berth --bench jobs`: scheduling precision of jobs, beside a sleep loop.
//!
//! The delay between a run's scheduled time and its process starting, over `BERTH_BENCH_RUNS`
//! runs (default 100) of a job every second, on the exec driver and on Docker. The process says
//! when it started: the static test app prints the time as its first line. Beside each, in the
//! same run, the peer a user would otherwise write: a shell loop that sleeps until each whole
//! second and starts the same program (`docker run -d` of the same image for Docker), measured
//! the same way. `berth up` and the loop each run in a session of their own (`setsid`).
//!
//! Prints a Markdown table for docs/benchmarks.md.

use std::collections::HashMap;
use std::time::Duration;

use berth_testkit::{Platform, docker_or_skip, test_images, wait_until};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// What the test app is told: print its start time at once, exit 30 ms later.
const ARGS: [&str; 6] = ["--chatter-ms", "100000", "--crash-after-ms", "30", "--exit-code", "0"];

/// The time a `chatter 1 from ID at MS` line says, and the id.
fn chatter(line: &str) -> Option<(String, i64)> {
    let rest = line.strip_prefix("chatter 1 from ")?;
    let (id, at) = rest.split_once(" at ")?;
    Some((id.to_string(), at.trim().parse().ok()?))
}

struct Figures {
    what: String,
    delays: Vec<i64>,
}

impl Figures {
    fn pct(&self, p: f64) -> i64 {
        let mut v = self.delays.clone();
        v.sort_unstable();
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }
}

/// Deploys a job every second and reads each run's delay from its first line.
async fn berth_runs(driver: &str, spec_run: &str, runs: usize) -> Figures {
    let p = Platform::start_in_own_session(BERTH.as_ref(), driver, berth_testkit::port_block()).await;
    let spec = format!("kind: job\ngroup: bench\nname: tick\nschedule: R//PT1S\nhistory: 1000\n{spec_run}");
    let file = p.write("tick.yaml", &spec);
    p.cli_ok(&["deploy", "-f", &file]).await;
    // The first run (at the deploy) warms up; the next `runs` are measured.
    let job = wait_until("the runs", Duration::from_secs(runs as u64 * 2 + 60), || async {
        let j = p.get("/v1/jobs/bench/tick").await.ok()?;
        let done = j["runs"].as_array()?.iter().filter(|r| r["state"] == "succeeded").count();
        (done > runs).then_some(j)
    })
    .await;
    p.cli_ok(&["job", "tick", "suspend"]).await;
    let mut scheduled: HashMap<String, i64> = HashMap::new();
    for r in job["runs"].as_array().into_iter().flatten() {
        if r["number"].as_u64().is_some_and(|n| (2..=runs as u64 + 1).contains(&n)) {
            let at = r["scheduled_at"].as_i64().unwrap_or_default();
            for a in r["attempts"].as_array().into_iter().flatten() {
                scheduled.insert(a["instance"].as_str().unwrap_or_default().to_string(), at);
            }
        }
    }
    let out = p.cli_ok(&["job", "tick", "logs", "-n", "100000", "-o", "json"]).await;
    let mut delays = Vec::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let Some((id, at)) = chatter(v["line"].as_str().unwrap_or_default()) else { continue };
        if let Some(s) = scheduled.get(&id) {
            delays.push(at - s);
        }
    }
    assert_eq!(delays.len(), runs, "a start line for every measured run");
    Figures { what: format!("Berth, {driver} driver"), delays }
}

/// A shell loop that sleeps until each whole second and starts `command` in the background;
/// it prints `tick N SCHEDULED` before each start. Returns what it printed.
async fn sleep_loop(command: &str, runs: usize, dir: &std::path::Path) -> String {
    let script = format!(
        r#"first=$(( ($(date +%s%3N) / 1000 + 2) * 1000 ))
i=0
while [ $i -le {runs} ]; do
  at=$(( first + i * 1000 )); now=$(date +%s%3N); ms=$(( at - now ))
  if [ $ms -gt 0 ]; then sleep $(printf '%d.%03d' $(( ms / 1000 )) $(( ms % 1000 ))); fi
  echo "tick $i $at"
  BERTH_INSTANCE_ID=loop-$i {command} &
  i=$(( i + 1 ))
done
wait
"#
    );
    let path = dir.join("loop.sh");
    std::fs::write(&path, script).expect("write loop");
    let out = tokio::process::Command::new("setsid").arg("sh").arg(&path).output().await.expect("run the loop");
    assert!(out.status.success(), "the loop: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pairs each tick with the start line of its process (`loop-N`), skipping tick 0 (warm-up).
fn loop_delays(what: &str, ticks: &str, starts: &str) -> Figures {
    let scheduled: HashMap<String, i64> = ticks
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("tick ")?.split(' ');
            let (n, at) = (w.next()?, w.next()?.parse().ok()?);
            (n != "0").then(|| (format!("loop-{n}"), at))
        })
        .collect();
    let delays: Vec<i64> =
        starts.lines().filter_map(chatter).filter_map(|(id, at)| Some(at - scheduled.get(&id)?)).collect();
    assert_eq!(delays.len(), scheduled.len(), "a start line for every tick");
    Figures { what: what.to_string(), delays }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let runs: usize = std::env::var("BERTH_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let bin = berth_testkit::image::testapp_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rows: Vec<(Figures, Figures)> = Vec::new();

    let exec_args: Vec<String> = ARGS.iter().map(|a| format!("'{a}'")).collect();
    let exec =
        berth_runs("exec", &format!("driver: exec\ncommand: [{}, {}]\n", bin.display(), exec_args.join(", ")), runs)
            .await;
    let starts = dir.path().join("starts.txt");
    // One process at a time (each exits after 30 ms), on a port of its own.
    let port = berth_testkit::free_port();
    let command = format!("PORT={port} {} {} >> {}", bin.display(), ARGS.join(" "), starts.display());
    let ticks = sleep_loop(&command, runs, dir.path()).await;
    let baseline = loop_delays("sleep loop, a process", &ticks, &std::fs::read_to_string(&starts).unwrap_or_default());
    rows.push((exec, baseline));

    if let Some(docker) = docker_or_skip("jobs benchmark").await {
        let images = test_images(&docker).await;
        let args: Vec<String> = ARGS.iter().map(|a| format!("'{a}'")).collect();
        let spec = format!("image: {}\ndriver: docker\nmemory: 32\ncommand: [{}]\n", images.v1, args.join(", "));
        let boxed = berth_runs("docker", &spec, runs).await;
        let command = format!(
            "docker run -d --label berth-bench=jobs -e BERTH_INSTANCE_ID=loop-$i -m 32m --memory-swap 32m {} {} > /dev/null",
            images.v1,
            ARGS.join(" ")
        );
        let ticks = sleep_loop(&command, runs, dir.path()).await;
        let ids = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", "label=berth-bench=jobs"])
            .output()
            .expect("docker ps");
        let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout).split_whitespace().map(str::to_string).collect();
        let mut starts = String::new();
        for id in &ids {
            let logs = std::process::Command::new("docker").args(["logs", id]).output().expect("docker logs");
            starts.push_str(&String::from_utf8_lossy(&logs.stdout));
        }
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker").args(["rm", "-f"]).args(&ids).output();
        }
        rows.push((boxed, loop_delays("sleep loop, `docker run -d`", &ticks, &starts)));
    }

    println!("\n{runs} runs each, ms from the scheduled time to the process's first line:\n");
    println!("| what | p50 | p99 | max | Berth / loop (p50) | Berth / loop (p99) |");
    println!("|---|---|---|---|---|---|");
    for (berth, peer) in &rows {
        for f in [berth, peer] {
            let ratio = |p: f64| {
                if std::ptr::eq(f, berth) {
                    format!("{:.2}", f.pct(p) as f64 / peer.pct(p).max(1) as f64)
                } else {
                    String::new()
                }
            };
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                f.what,
                f.pct(50.0),
                f.pct(99.0),
                f.pct(100.0),
                ratio(50.0),
                ratio(99.0)
            );
        }
    }
}
