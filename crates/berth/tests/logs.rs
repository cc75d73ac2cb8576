//! App logs end to end: lines from every instance in `logs` and `logs -f` within a second, across
//! an instance's restart, on exec and on Docker; filters; rotation within its limit.

use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_testkit::{Platform, docker_or_skip, test_images, wait_until};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// `chatter N from ID at T`: the instance and when it wrote the line.
fn chatter(line: &str) -> Option<(String, i64)> {
    let rest = line.split("chatter ").nth(1)?;
    let mut words = rest.split_whitespace();
    let _n = words.next()?;
    let id = words.nth(1)?.to_string();
    let at = words.nth(1)?.parse().ok()?;
    Some((id, at))
}

/// `berth app chat logs -f -o json` as a child process: lines as they arrive, with arrival times.
struct Follower {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<(Value, i64)>,
}

impl Follower {
    fn start(p: &Platform) -> Follower {
        let mut child = tokio::process::Command::new(BERTH)
            .args(["app", "chat", "logs", "-f", "-n", "0", "-o", "json"])
            .env("BERTH_SERVER", &p.api)
            .env("BERTH_TOKEN", p.admin_token())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("berth logs -f");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send((v, now_ms()));
                }
            }
        });
        Follower { child, lines }
    }

    /// Collects followed lines for `window`, returning (instance, write time, arrival time).
    async fn gather(&mut self, window: Duration) -> Vec<(String, i64, i64)> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(Some((v, arrived))) = tokio::time::timeout_at(deadline.into(), self.lines.recv()).await {
            if let Some((id, at)) = chatter(v["line"].as_str().unwrap_or_default()) {
                assert_eq!(v["instance"], id.as_str(), "each line carries the instance that wrote it");
                out.push((id, at, arrived));
            }
        }
        out
    }
}

async fn logs_follow_across_a_restart(p: &Platform, spec: &str, kill: impl AsyncFnOnce(&Value)) {
    p.cli_ok(&["deploy", "-f", &p.write("chat.yaml", spec), "--timeout", "60"]).await;
    let ids: Vec<String> = p.live("chat").await.iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 2);

    // Stored lines: every instance appears, with its prefix, in time order.
    let out = wait_until("lines of both instances in `logs`", Duration::from_secs(10), || async {
        let out = p.cli_ok(&["app", "chat", "logs", "-n", "50"]).await;
        ids.iter().all(|id| out.contains(&format!("{id} | chatter"))).then_some(out)
    })
    .await;
    let times: Vec<i64> = out.lines().filter_map(chatter).map(|(_, at)| at).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1] + 150), "merged in time order: {times:?}");

    // Followed lines arrive within a second of being written.
    let mut follower = Follower::start(p);
    let seen = follower.gather(Duration::from_secs(2)).await;
    assert!(seen.len() > 20, "followed lines: {}", seen.len());
    let worst = seen.iter().map(|(_, at, arrived)| arrived - at).max().unwrap();
    assert!(worst < 1000, "a followed line arrived {worst} ms after it was written");

    // One instance dies; the follow goes on and shows its replacement.
    let victim = p.live("chat").await[0].clone();
    kill(&victim).await;
    let replaced = wait_until("a replacement", Duration::from_secs(30), || async {
        let live = p.live("chat").await;
        let fresh: Vec<String> = live
            .iter()
            .filter(|i| i["state"] == "running" && !ids.contains(&i["id"].as_str().unwrap().to_string()))
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect();
        fresh.into_iter().next()
    })
    .await;
    let after = follower.gather(Duration::from_secs(2)).await;
    assert!(after.iter().any(|(id, _, _)| *id == replaced), "the replacement's lines reach the same follow");
    let worst = after.iter().map(|(_, at, arrived)| arrived - at).max().unwrap();
    assert!(worst < 1000, "after the restart a line arrived {worst} ms late");
    let _ = follower.child.kill().await;

    // Filters: one instance, a pattern.
    let only = p.cli_ok(&["app", "chat", "logs", "--instance", &replaced, "-n", "20", "-o", "json"]).await;
    assert!(only.lines().count() > 0);
    assert!(only.lines().all(|l| l.contains(&replaced)), "{only}");
    let grep = p.cli_ok(&["app", "chat", "logs", "--grep", "chatter [0-9]*7 from", "-n", "20"]).await;
    assert!(grep.lines().count() > 0 && grep.lines().all(|l| l.contains("7 from")), "{grep}");
    let bad = p.cli(&["app", "chat", "logs", "--grep", "("]).await;
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a regular expression"));
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_logs_follow_within_a_second_across_a_restart() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let bin = berth_testkit::image::testapp_binary();
    let spec = format!(
        "group: ops\nname: chat\ndriver: exec\ninstances: 2\ncommand: [{}, --chatter-ms, \"50\"]\n\
         upgrade:\n  min_healthy_time: 0s\n",
        bin.display()
    );
    logs_follow_across_a_restart(&p, &spec, async |victim: &Value| {
        let pid = victim["handle"].as_str().unwrap();
        assert!(std::process::Command::new("kill").args(["-9", pid]).status().unwrap().success());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_logs_follow_within_a_second_across_a_restart() {
    let Some(docker) = docker_or_skip("docker_logs_follow_within_a_second_across_a_restart").await else {
        return;
    };
    let images = test_images(&docker).await;
    let p = Platform::start(BERTH.as_ref(), "docker").await;
    let spec = format!(
        "group: ops\nname: chat\nimage: {}\ninstances: 2\nports: [8080]\ncommand: [\"--chatter-ms\", \"50\"]\n\
         upgrade:\n  min_healthy_time: 0s\n",
        images.v1
    );
    logs_follow_across_a_restart(&p, &spec, async |victim: &Value| {
        let name = format!("berth-{}", victim["id"].as_str().unwrap());
        docker.kill_container(&name, None::<bollard::query_parameters::KillContainerOptions>).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_keeps_an_apps_logs_within_its_limit() {
    let limit = ["--log-file-size".to_string(), "64KiB".into(), "--log-files".into(), "3".into()];
    let p = Platform::start_args(BERTH.as_ref(), "exec", &limit).await;
    let bin = berth_testkit::image::testapp_binary();
    let spec = format!(
        "group: ops\nname: flood\ndriver: exec\ncommand: [{}, --chatter-ms, \"10\", --chatter-lines, \"100\"]\n",
        bin.display()
    );
    p.cli_ok(&["deploy", "-f", &p.write("flood.yaml", &spec), "--no-wait"]).await;
    let dir = p.data_dir().join("server/logs/ops/flood");
    let size = || -> u64 {
        std::fs::read_dir(&dir)
            .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    };
    // About 10,000 lines/s of ~60 bytes: the limit is passed many times over within seconds.
    wait_until("the logs to rotate several times", Duration::from_secs(20), || async {
        let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        let out = p.cli_ok(&["app", "flood", "logs", "-n", "1"]).await;
        let n: u64 = out.split_whitespace().nth(3).and_then(|w| w.parse().ok()).unwrap_or(0);
        (files == 3 && n > 20_000).then_some(())
    })
    .await;
    let total = size();
    assert!(total <= 3 * 64 * 1024 + 32 * 1024, "{total} bytes on disk for a 3 x 64 KiB limit");
    let tail = p.cli_ok(&["app", "flood", "logs", "-n", "5"]).await;
    assert_eq!(tail.lines().count(), 5, "{tail}");
}

/// An app's escape sequences reach a terminal as text (`\x1b[...`), never as commands to it;
/// into a pipe its lines go as written.
#[tokio::test(flavor = "multi_thread")]
async fn an_apps_escape_sequences_are_shown_not_obeyed_on_a_terminal() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let spec = "group: ops\nname: loud\ndriver: exec\ncommand: [sh, -c, \"printf 'x\\\\033]0;pwned\\\\007\\\\033[2Jy\\\\n'; exec sleep 300\"]\n";
    let file = p.write("loud.yaml", spec);
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    let piped = wait_until("the line in the logs", Duration::from_secs(10), || async {
        let out = p.cli_ok(&["app", "loud", "logs"]).await;
        out.contains("pwned").then_some(out)
    })
    .await;
    assert!(piped.contains("x\x1b]0;pwned\x07\x1b[2Jy"), "a pipe gets the line as written: {piped:?}");
    // `script` gives the command a terminal for its output.
    let out = p.cli_in_terminal("app loud logs").wait_with_output().await.expect("script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(r"x\x1b]0;pwned\x07\x1b[2Jy"), "{text:?}");
    assert!(!text.contains('\x07') && !text.contains("\x1b]0"), "no raw escape reached the terminal: {text:?}");
}

/// `logs -f` and `events -f` live through a restart of Berth: they reconnect and go on from where
/// they were, repeating nothing.
#[tokio::test(flavor = "multi_thread")]
async fn followers_survive_a_restart_of_the_server_without_repeats() {
    let mut p = Platform::start(BERTH.as_ref(), "exec").await;
    let spec = "group: ops\nname: ticker\ndriver: exec\n\
                command: [sh, -c, \"i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.05; done\"]\n";
    p.cli_ok(&["deploy", "-f", &p.write("ticker.yaml", spec), "--timeout", "30"]).await;
    let follow = |args: &[&str]| {
        let mut child = tokio::process::Command::new(BERTH)
            .args(args)
            .env("BERTH_SERVER", &p.api)
            .env("BERTH_TOKEN", p.admin_token())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("a follower");
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        (child, lines)
    };
    let (mut logs_child, logs) = follow(&["app", "ticker", "logs", "-f", "-n", "0", "-o", "json"]);
    let (mut events_child, events) = follow(&["events", "-f", "-o", "json", "-n", "0"]);
    let tick = |v: &Value| v["line"].as_str().and_then(|l| l.strip_prefix("tick-")).and_then(|n| n.parse::<u64>().ok());
    let max_tick = |lines: &[Value]| lines.iter().filter_map(tick).max();
    wait_until("ticks followed", Duration::from_secs(15), || async {
        max_tick(&logs.lock().unwrap()).filter(|n| *n > 10)
    })
    .await;

    p.restart().await;
    let before = max_tick(&logs.lock().unwrap()).unwrap();
    wait_until("ticks after the restart", Duration::from_secs(30), || async {
        max_tick(&logs.lock().unwrap()).filter(|n| *n > before + 20)
    })
    .await;
    wait_until("an event after the restart", Duration::from_secs(30), || async {
        events.lock().unwrap().iter().any(|e| e["kind"] == "node.rejoined").then_some(())
    })
    .await;
    assert!(logs_child.try_wait().unwrap().is_none(), "logs -f is still following");
    assert!(events_child.try_wait().unwrap().is_none(), "events -f is still following");

    let ticks: Vec<u64> = logs.lock().unwrap().iter().filter_map(tick).collect();
    let mut seen = std::collections::HashSet::new();
    let repeated: Vec<&u64> = ticks.iter().filter(|t| !seen.insert(**t)).collect();
    assert!(repeated.is_empty(), "lines printed twice: {repeated:?}");
    let seqs: Vec<u64> = events.lock().unwrap().iter().filter_map(|e| e["seq"].as_u64()).collect();
    let mut seen = std::collections::HashSet::new();
    assert!(seqs.iter().all(|s| seen.insert(*s)), "events printed twice: {seqs:?}");
}
