//! Scheduled jobs end to end: runs on their schedule with history and logs, `forbid` and
//! `replace`, retries then an alert, a server down across a scheduled time, `after:` chaining;
//! on the exec driver and on Docker.

use std::time::Duration;

use berth_testkit::{Platform, wait_until};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// A job running the test app for `run_ms`, then exiting with `code`, chattering meanwhile.
fn exec_job(name: &str, run_ms: u64, code: i32, extra: &str) -> String {
    let bin = berth_testkit::image::testapp_binary();
    format!(
        "kind: job\ngroup: ops\nname: {name}\ndriver: exec\n\
         command: [{}, --chatter-ms, '50', --crash-after-ms, '{run_ms}', --exit-code, '{code}']\n{extra}",
        bin.display()
    )
}

async fn job(p: &Platform, id: &str) -> Value {
    p.get(&format!("/v1/jobs/{id}")).await.unwrap_or_else(|e| panic!("GET job {id}: {e}"))
}

fn runs(job: &Value) -> Vec<Value> {
    let mut runs = job["runs"].as_array().cloned().unwrap_or_default();
    runs.sort_by_key(|r| r["number"].as_u64());
    runs
}

fn in_state<'a>(runs: &'a [Value], state: &str) -> Vec<&'a Value> {
    runs.iter().filter(|r| r["state"] == state).collect()
}

/// Waits until the job has at least `n` runs in `state`; returns the job.
async fn until_runs(p: &Platform, id: &str, state: &str, n: usize, within: Duration) -> Value {
    let what = format!("{n} {state} run(s) of {id}");
    let last = std::sync::Mutex::new(Value::Null);
    let seen = || async {
        let j = job(p, id).await;
        *last.lock().unwrap() = j.clone();
        (in_state(&runs(&j), state).len() >= n).then_some(j)
    };
    berth_testkit::wait_until_or(&what, within, seen, || {
        format!("the job: {:#}\nthe platform's log:\n{}", last.lock().unwrap(), berth_testkit::tail(&p.log(), 40))
    })
    .await
}

fn ms(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not a time: {v}"))
}

/// Every run kept has its own scheduled time, and no time ran twice.
fn assert_no_time_twice(runs: &[Value]) {
    let mut times: Vec<i64> = runs.iter().map(|r| ms(&r["scheduled_at"])).collect();
    let n = times.len();
    times.sort_unstable();
    times.dedup();
    assert_eq!(times.len(), n, "a scheduled time ran twice: {runs:?}");
}

async fn processes_of(marker: &str) -> usize {
    let out = std::process::Command::new("pgrep").args(["-f", marker]).output().expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_every_two_seconds_runs_with_history_logs_and_metrics() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let file = p.write("tick.yaml", &exec_job("tick", 300, 0, "schedule: R//PT2S\nhistory: 20\n"));
    let out = p.cli_ok(&["deploy", "-f", &file]).await;
    assert!(out.contains("job ops/tick v1 created"), "{out}");

    let j = until_runs(&p, "ops/tick", "succeeded", 3, Duration::from_secs(30)).await;
    let all = runs(&j);
    assert_no_time_twice(&all);
    let done = in_state(&all, "succeeded");
    // R//PT2S runs at the deploy and every 2 s after, on the dot.
    for pair in done.windows(2) {
        let gap = ms(&pair[1]["scheduled_at"]) - ms(&pair[0]["scheduled_at"]);
        assert_eq!(gap % 2000, 0, "scheduled times 2 s apart: {pair:?}");
    }
    for r in &done {
        assert_eq!(r["trigger"], "schedule");
        assert_eq!(r["attempts"].as_array().unwrap().len(), 1, "{r}");
        assert_eq!(r["attempts"][0]["exit_code"], 0, "{r}");
        assert!(!r["attempts"][0]["node"].as_str().unwrap().is_empty());
        let (scheduled, started, finished) = (ms(&r["scheduled_at"]), ms(&r["started_at"]), ms(&r["finished_at"]));
        assert!(started >= scheduled, "started before its time: {r}");
        assert!(finished - started >= 250, "ran its 300 ms: {r}");
    }
    assert!(j["durations"]["count"].as_u64().unwrap() >= 3, "{}", j["durations"]);
    assert!(j["durations"]["p50_ms"].as_i64().unwrap() >= 250);
    assert_eq!(j["success_rate"], 1.0);

    // People's views: the list, the history with percentiles.
    let ls = p.cli_ok(&["job", "ls"]).await;
    assert!(ls.contains("ops/tick") && ls.contains("R//PT2S") && ls.contains("100%"), "{ls}");
    let history = p.cli_ok(&["job", "tick", "history"]).await;
    assert!(history.contains("p50") && history.contains("p99") && history.contains("succeeded"), "{history}");
    let json: Value = serde_json::from_str(&p.cli_ok(&["job", "tick", "history", "-o", "json"]).await).unwrap();
    assert_eq!(json["id"], "ops/tick");

    // One run's logs are its attempt's lines, and only those.
    let first = done[0];
    let instance = first["attempts"][0]["instance"].as_str().unwrap().to_string();
    let number = first["number"].to_string();
    let lines = p.cli_ok(&["job", "tick", "logs", "--run", &number, "-o", "json"]).await;
    let lines: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().any(|l| l["line"].as_str().unwrap().starts_with("chatter")), "{lines:?}");
    assert!(lines.iter().all(|l| l["instance"] == instance.as_str()), "{lines:?}");
    let none = p.cli(&["job", "tick", "logs", "--run", "9999"]).await;
    assert!(!none.status.success(), "an unknown run is an error");

    // Metrics: runs by outcome and the duration histogram.
    let metrics = p.get_text("/metrics").await;
    let succeeded = metrics
        .lines()
        .find(|l| l.starts_with("berth_job_runs_total{job=\"ops/tick\",outcome=\"succeeded\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no runs counter: {metrics}"));
    assert!(succeeded >= 3.0);
    assert!(metrics.contains("berth_job_run_duration_seconds_bucket{job=\"ops/tick\",le=\"1\"}"), "{metrics}");

    // Suspended: no scheduled run starts; resumed: runs start again.
    let out = p.cli_ok(&["job", "tick", "suspend"]).await;
    assert!(out.contains("suspended"), "{out}");
    let j = job(&p, "ops/tick").await;
    assert!(j["next_run"].is_null(), "{j}");
    let before = runs(&j).len();
    // Two periods pass with the reconciler awake (the store moves with every report).
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let j = job(&p, "ops/tick").await;
    let after: Vec<Value> = runs(&j);
    assert!(after.iter().all(|r| r["state"] != "pending"), "{after:?}");
    assert_eq!(after.len(), before, "no run while suspended");
    p.cli_ok(&["job", "tick", "resume"]).await;
    let want = in_state(&after, "succeeded").len() + 1;
    let j = until_runs(&p, "ops/tick", "succeeded", want, Duration::from_secs(15)).await;
    assert!(runs(&j).iter().all(|r| r["state"] != "missed"), "what fell due while suspended is not missed");

    // Destroyed: its runs stop and it is gone, history and all.
    p.cli_ok(&["job", "tick", "destroy"]).await;
    wait_until("the job to be gone", Duration::from_secs(15), || async {
        p.get("/v1/jobs/ops/tick").await.is_err().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forbid_skips_a_run_while_one_goes_and_replace_stops_the_old_one() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let file = p.write("long.yaml", &exec_job("long", 2500, 0, "schedule: R//PT1S\nconcurrency: forbid\n"));
    p.cli_ok(&["deploy", "-f", &file]).await;
    let j = wait_until("a skipped run", Duration::from_secs(30), || async {
        let j = job(&p, "ops/long").await;
        let all = runs(&j);
        (!in_state(&all, "skipped").is_empty() && !in_state(&all, "succeeded").is_empty()).then_some(j)
    })
    .await;
    let all = runs(&j);
    assert_no_time_twice(&all);
    let skipped = in_state(&all, "skipped")[0];
    assert_eq!(skipped["reason"]["kind"], "overlap", "{skipped}");
    assert!(skipped["attempts"].as_array().is_none_or(Vec::is_empty), "a skipped run starts nothing");
    // Never two at once: each run that ran began after the one before it ended.
    let ran: Vec<&Value> = all.iter().filter(|r| !r["started_at"].is_null()).collect();
    for pair in ran.windows(2) {
        if let Some(end) = pair[0]["finished_at"].as_i64() {
            assert!(ms(&pair[1]["started_at"]) >= end, "overlapping runs under forbid: {pair:?}");
        }
    }
    p.cli_ok(&["job", "long", "destroy"]).await;

    let bin = berth_testkit::image::testapp_binary();
    let marker = format!("replace-{}", std::process::id());
    let spec = format!(
        "kind: job\ngroup: ops\nname: swap\ndriver: exec\ncommand: [{}, --version, {marker}]\n\
         schedule: R//PT2S\nconcurrency: replace\nstop_timeout: 1s\n",
        bin.display()
    );
    let file = p.write("swap.yaml", &spec);
    p.cli_ok(&["deploy", "-f", &file]).await;
    let j = until_runs(&p, "ops/swap", "stopped", 2, Duration::from_secs(30)).await;
    let all = runs(&j);
    assert_no_time_twice(&all);
    let stopped = in_state(&all, "stopped");
    assert_eq!(stopped[0]["reason"]["kind"], "replaced_by", "{}", stopped[0]);
    assert_eq!(stopped[0]["reason"]["number"].as_u64(), Some(stopped[0]["number"].as_u64().unwrap() + 1));
    // One process at a time: the replaced one is gone.
    assert!(processes_of(&marker).await <= 2, "old runs left running");
    p.cli_ok(&["job", "swap", "destroy"]).await;
    wait_until("every run's process to exit", Duration::from_secs(15), || async {
        (processes_of(&marker).await == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_job_is_retried_with_backoff_then_alerts() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let extra = "schedule: R//PT1H\nretries: 2\nretry_backoff: 400ms\ntimeout: 30s\n";
    let file = p.write("flaky.yaml", &exec_job("flaky", 100, 3, extra));
    p.cli_ok(&["deploy", "-f", &file]).await;
    let j = until_runs(&p, "ops/flaky", "failed", 1, Duration::from_secs(30)).await;
    let run = &runs(&j)[0];
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "the first try and two retries: {run}");
    assert!(attempts.iter().all(|a| a["exit_code"] == 3 && a["succeeded"] == false), "{run}");
    // Each retry waits twice as long as the one before.
    let gap = |i: usize| ms(&attempts[i]["placed_at"]) - ms(&attempts[i - 1]["finished_at"]);
    assert!(gap(1) >= 400 && gap(2) >= 800, "backoff 400 ms then 800 ms: {run}");
    assert_eq!(run["reason"]["kind"], "attempt_failed");
    assert!(run["reason"]["why"].as_str().unwrap().contains("code 3"), "{run}");

    let alert = wait_until("the failed run's alert", Duration::from_secs(20), || async {
        let alerts = p.get("/v1/alerts").await.ok()?;
        let all: Vec<Value> =
            [&alerts["firing"], &alerts["recent"]].iter().filter_map(|a| a.as_array()).flatten().cloned().collect();
        all.into_iter().find(|a| a["name"] == "job_run_failed")
    })
    .await;
    assert_eq!(alert["app"], "ops/flaky", "{alert}");
    assert!(alert["text"].as_str().unwrap().contains("failed after 3 attempts"), "{alert}");

    // An attempt past its timeout is stopped and fails the run, saying so.
    let file = p.write("slow.yaml", &exec_job("slow", 60_000, 0, "schedule: R//PT1H\ntimeout: 1s\nstop_timeout: 1s\n"));
    p.cli_ok(&["deploy", "-f", &file]).await;
    let j = until_runs(&p, "ops/slow", "failed", 1, Duration::from_secs(30)).await;
    let run = &runs(&j)[0];
    assert!(run["reason"]["why"].as_str().unwrap().contains("timeout (1s)"), "{run}");
    assert!(ms(&run["finished_at"]) - ms(&run["started_at"]) < 10_000, "stopped, not run to its end: {run}");

    // A job is a tenant's as an app is: its group's rules hold (privileged needs allowing).
    let file = p.write("root.yaml", &exec_job("root", 100, 0, "schedule: R//PT1H\nprivileged: true\n"));
    let out = p.cli(&["deploy", "-f", &file]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not allow privileged"), "{err}");

    // Run by hand: a manual run, numbered next, failing the same way.
    let out = p.cli(&["job", "flaky", "run", "--wait", "--timeout", "30"]).await;
    assert!(!out.status.success(), "the run failed, and the exit code says so");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("run 2 failed"), "{stdout}");
    let j = job(&p, "ops/flaky").await;
    assert_eq!(runs(&j)[1]["trigger"], "manual");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_down_across_a_scheduled_time_runs_it_once_on_return_or_records_it_missed() {
    let mut p = Platform::start(BERTH.as_ref(), "exec").await;
    let now = chrono::Utc::now();
    let at = now + chrono::Duration::seconds(5);
    let start = at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let due = chrono::DateTime::parse_from_rfc3339(&start).unwrap().timestamp_millis();
    // The first runs on its return (inside its 60 s deadline); the second's deadline passes
    // while the server is down.
    let a = p.write("a.yaml", &exec_job("nightly", 200, 0, &format!("schedule: R/{start}/PT1H\n")));
    let b =
        p.write("b.yaml", &exec_job("tight", 200, 0, &format!("schedule: R/{start}/PT1H\nstarting_deadline: 1s\n")));
    p.cli_ok(&["deploy", "-f", &a]).await;
    p.cli_ok(&["deploy", "-f", &b]).await;
    assert!(runs(&job(&p, "ops/nightly").await).is_empty());
    p.kill9().await;
    let back_at = due + 2500;
    while chrono::Utc::now().timestamp_millis() < back_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.start_again().await;

    let j = until_runs(&p, "ops/nightly", "succeeded", 1, Duration::from_secs(30)).await;
    let all = runs(&j);
    assert_eq!(all.len(), 1, "one run for the time, neither dropped nor doubled: {all:?}");
    assert_eq!(ms(&all[0]["scheduled_at"]), due);
    assert!(ms(&all[0]["started_at"]) >= back_at, "it ran on return: {}", all[0]);

    let j = until_runs(&p, "ops/tight", "missed", 1, Duration::from_secs(30)).await;
    let all = runs(&j);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(ms(&all[0]["scheduled_at"]), due);
    assert_eq!(all[0]["reason"]["kind"], "missed", "{}", all[0]);
    assert!(all[0]["attempts"].as_array().is_none_or(Vec::is_empty), "a missed run starts nothing");
    let alert = wait_until("the missed run's alert", Duration::from_secs(20), || async {
        let alerts = p.get("/v1/alerts").await.ok()?;
        let all: Vec<Value> =
            [&alerts["firing"], &alerts["recent"]].iter().filter_map(|a| a.as_array()).flatten().cloned().collect();
        all.into_iter().find(|a| a["name"] == "job_run_missed" && a["app"] == "ops/tight")
    })
    .await;
    assert!(alert["text"].as_str().unwrap().contains("starting_deadline"), "{alert}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_job_runs_after_its_parent_succeeds() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let parent = p.write("extract.yaml", &exec_job("extract", 200, 0, "schedule: R//PT3S\n"));
    let child = p.write("load.yaml", &exec_job("load", 100, 0, "after: [extract]\n"));
    p.cli_ok(&["deploy", "-f", &child]).await;
    p.cli_ok(&["deploy", "-f", &parent]).await;
    let c = until_runs(&p, "ops/load", "succeeded", 2, Duration::from_secs(30)).await;
    let parent_runs = runs(&job(&p, "ops/extract").await);
    let child_runs = runs(&c);
    assert_no_time_twice(&child_runs);
    for r in &child_runs {
        assert_eq!(r["trigger"], "parents", "{r}");
    }
    // The child's first run came after the parent's first success, and the child never ran
    // more often than its parent succeeded.
    let first_success = in_state(&parent_runs, "succeeded")[0];
    assert!(ms(&child_runs[0]["scheduled_at"]) >= ms(&first_success["finished_at"]));
    assert!(in_state(&child_runs, "succeeded").len() <= in_state(&parent_runs, "succeeded").len());
    let ls = p.cli_ok(&["job", "ls"]).await;
    assert!(ls.contains("after ops/extract"), "{ls}");
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_run_as_docker_containers() {
    let Some(docker) = berth_testkit::image::docker_or_skip("jobs_run_as_docker_containers").await else {
        return;
    };
    let images = berth_testkit::image::test_images(&docker).await;
    let p = Platform::start(BERTH.as_ref(), "docker").await;
    let spec = format!(
        "kind: job\ngroup: ops\nname: boxed\nimage: {}\ndriver: docker\nmemory: 32\n\
         command: [--chatter-ms, '50', --crash-after-ms, '300', --exit-code, '0']\nschedule: R//PT2S\n",
        images.v1
    );
    let file = p.write("boxed.yaml", &spec);
    p.cli_ok(&["deploy", "-f", &file]).await;
    let j = until_runs(&p, "ops/boxed", "succeeded", 3, Duration::from_secs(60)).await;
    let all = runs(&j);
    assert_no_time_twice(&all);
    for r in in_state(&all, "succeeded") {
        assert_eq!(r["attempts"][0]["exit_code"], 0, "{r}");
    }
    let first = in_state(&all, "succeeded")[0]["number"].to_string();
    let lines = p.cli_ok(&["job", "boxed", "logs", "--run", &first]).await;
    assert!(lines.contains("chatter"), "{lines}");

    // A failing container: its exit code is the run's.
    let failing = spec.replace("name: boxed", "name: broken").replace("'0']", "'7']").replace("R//PT2S", "R//PT1H");
    let file = p.write("broken.yaml", &failing);
    p.cli_ok(&["deploy", "-f", &file]).await;
    let j = until_runs(&p, "ops/broken", "failed", 1, Duration::from_secs(60)).await;
    assert_eq!(runs(&j)[0]["attempts"][0]["exit_code"], 7);
    p.cli_ok(&["job", "boxed", "destroy"]).await;
    p.cli_ok(&["job", "broken", "destroy"]).await;
}
