//! The exec driver: plain processes, replaced when killed, adopted after a SIGKILL of Berth.

use std::time::Duration;

use berth_testkit::{Platform, instance_answer, wait_until};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn spec(marker: &str, instances: u32) -> String {
    let bin = berth_testkit::image::testapp_binary();
    format!(
        "group: ops\nname: plain\ndriver: exec\ninstances: {instances}\ncommand: [{}, --version, {marker}]\n\
         environment:\n  TZ: Asia/Shanghai\nhealth:\n  http: /health\n  interval: 200ms\n  timeout: 1s\nupgrade:\n  min_healthy_time: 0s\n",
        bin.display()
    )
}

fn processes(marker: &str) -> usize {
    let out = std::process::Command::new("pgrep").args(["-f", &format!("version {marker}$")]).output().expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_instances_run_get_replaced_and_survive_a_restart() {
    let marker = format!("exec-{}", std::process::id());
    let mut p = Platform::start(BERTH.as_ref(), "exec").await;
    let file = p.write("berth.yaml", &spec(&marker, 3));
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    let live = p.live("plain").await;
    assert_eq!(live.len(), 3);
    for inst in &live {
        let a = instance_answer(inst["address"].as_str().unwrap()).await;
        assert_eq!(a["instance"], inst["id"]);
        assert_eq!(a["version"], marker.as_str());
        assert_eq!(a["tz"], "Asia/Shanghai", "the spec's TZ wins over the host's");
    }
    assert_eq!(processes(&marker), 3);

    p.cli_ok(&["app", "plain", "scale", "1", "--timeout", "30"]).await;
    wait_until("scaled-down processes to exit", Duration::from_secs(15), || async {
        (processes(&marker) == 1).then_some(())
    })
    .await;

    // Kill the process behind the instance: a replacement takes its place.
    let victim = p.live("plain").await[0].clone();
    let pid = victim["handle"].as_str().expect("pid handle");
    std::process::Command::new("kill").args(["-9", pid]).status().expect("kill");
    let replacement = wait_until("a replacement instance", Duration::from_secs(20), || async {
        let live = p.live("plain").await;
        live.iter().find(|i| i["id"] != victim["id"] && i["state"] == "running").cloned()
    })
    .await;
    let status = p.status("plain").await;
    let dead = status["instances"].as_array().unwrap().iter().find(|i| i["id"] == victim["id"]).unwrap().clone();
    assert_eq!(dead["state"], "failed");
    assert!(dead["reason"].as_str().unwrap().contains("SIGKILL"), "{dead}");

    // SIGKILL Berth itself: the process lives on and is adopted, not duplicated.
    p.restart().await;
    let after = wait_until("the adopted instance to be reported", Duration::from_secs(15), || async {
        let live = p.live("plain").await;
        (live.len() == 1 && live[0]["state"] == "running").then_some(live)
    })
    .await;
    assert_eq!(after[0]["id"], replacement["id"], "the same instance survives the restart");
    assert_eq!(instance_answer(after[0]["address"].as_str().unwrap()).await["instance"], replacement["id"]);
    // Give the reconciler a few passes to prove it does not start another copy.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(processes(&marker), 1, "no duplicate after the restart");

    p.cli_ok(&["app", "plain", "destroy", "--timeout", "30"]).await;
    assert_eq!(processes(&marker), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unhealthy_instances_are_replaced() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let bin = berth_testkit::image::testapp_binary();
    let file = p.write(
        "sick.yaml",
        &format!(
            "group: ops\nname: sick\ndriver: exec\ncommand: [{}, --fail-health]\n\
             health:\n  http: /health\n  interval: 100ms\n  timeout: 1s\n  grace: 300ms\n  max_failures: 2\n",
            bin.display()
        ),
    );
    let out = p.cli(&["deploy", "-f", &file, "--timeout", "30"]).await;
    assert!(!out.status.success(), "an app that never gets healthy does not deploy");
    let status = wait_until("two failed health checks", Duration::from_secs(20), || async {
        let s = p.status("sick").await;
        let failed = s["instances"].as_array()?.iter().filter(|i| i["state"] == "failed").count();
        (failed >= 2).then_some(s)
    })
    .await;
    let failed: Vec<&Value> =
        status["instances"].as_array().unwrap().iter().filter(|i| i["state"] == "failed").collect();
    for f in &failed {
        assert!(f["reason"].as_str().unwrap().contains("health check failed 2 time(s)"), "{f}");
        assert!(f["reason"].as_str().unwrap().contains("503"), "{f}");
    }
    let events = p.cli_ok(&["events", "--app", "sick", "-o", "json"]).await;
    let events: Value = serde_json::from_str(&events).unwrap();
    let placed = events.as_array().unwrap().iter().filter(|e| e["kind"] == "instance.placed").count();
    assert!(placed >= 2, "failed instances are replaced: {events:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_loop_backs_off_exponentially() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let bin = berth_testkit::image::testapp_binary();
    let file = p.write(
        "crashy.yaml",
        &format!(
            "group: ops\nname: crashy\ndriver: exec\ncommand: [{}, --crash-after-ms, \"50\", --exit-code, \"7\"]\n",
            bin.display()
        ),
    );
    p.cli_ok(&["deploy", "-f", &file, "--no-wait"]).await;
    let events = wait_until("four crashes", Duration::from_secs(30), || async {
        let out = p.cli_ok(&["events", "--app", "crashy", "-o", "json", "-n", "500"]).await;
        let events: Vec<Value> = serde_json::from_str(&out).ok()?;
        let failed = events.iter().filter(|e| e["kind"] == "instance.failed").count();
        (failed >= 4).then_some(events)
    })
    .await;
    let times = |kind: &str| -> Vec<i64> {
        events.iter().filter(|e| e["kind"] == kind).map(|e| e["time"].as_i64().unwrap()).collect()
    };
    let (failed, placed) = (times("instance.failed"), times("instance.placed"));
    assert!(
        events.iter().any(|e| e["message"].as_str().unwrap_or_default().contains("exited with code 7")),
        "{events:#?}"
    );
    // Marathon's backoff: the n-th relaunch waits 1 s x 1.15^(n-1) after the n-th failure.
    for n in 0..3 {
        let gap = placed[n + 1] - failed[n];
        let floor = (1000.0 * 1.15f64.powi(n as i32)) as i64;
        assert!(gap >= floor, "relaunch {} came {gap} ms after the crash, before the {floor} ms backoff", n + 1);
        assert!(gap < floor + 1500, "relaunch {} waited {gap} ms, far beyond the {floor} ms backoff", n + 1);
    }
    // The loop shows as such in status and events, with the last words of the dead instance.
    assert!(events.iter().any(|e| e["kind"] == "app.crash_loop"), "{events:#?}");
    let status = p.status("crashy").await;
    let crash = &status["crash_loop"];
    assert!(crash["failures"].as_u64().unwrap_or(0) >= 3, "{status:#}");
    assert_eq!(crash["exit_code"], 7);
    assert!(crash["last_log"].to_string().contains("crashing on purpose with code 7"), "{crash}");
    let table = p.cli_ok(&["app", "crashy"]).await;
    assert!(table.contains("crash loop") && table.contains("crashing on purpose"), "{table}");
    // Reasons are data beside the words: each failed instance says how it ended, and the app
    // says why its next instance waits.
    let all = status["instances"].as_array().cloned().unwrap_or_default();
    let failed: Vec<&Value> = all.iter().filter(|i| i["state"] == "failed").collect();
    assert!(!failed.is_empty(), "{status:#}");
    for i in &failed {
        assert_eq!(i["cause"]["kind"], "exited", "{i:#}");
        assert_eq!(i["cause"]["exit_code"], 7, "{i:#}");
        assert_eq!(i["reason"], "exited with code 7", "{i:#}");
    }
    let waiting = wait_until("the app to wait out its backoff", Duration::from_secs(20), || async {
        let status = p.status("crashy").await;
        (status["waiting"]["kind"] == "backoff").then(|| status["waiting"].clone())
    })
    .await;
    assert!(waiting["failures"].as_u64().unwrap_or(0) >= 3, "{waiting}");
}

/// `instances: 2` where one instance runs and the other always exits 1: the failing slot follows
/// the backoff curve however long its sibling stays healthy (once the sibling had been healthy for
/// 30 s, the backoff used to reset on every pass: hundreds of launches a second), and no launch
/// leaves its directory behind, even across a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_slot_backs_off_beside_a_healthy_sibling_and_leaves_nothing_behind() {
    let mut p = Platform::start(BERTH.as_ref(), "exec").await;
    let work = p.dir.path().join("loop");
    std::fs::create_dir_all(&work).unwrap();
    let bin = berth_testkit::image::testapp_binary();
    // The first instance takes the lock and runs; every other launch finds it taken and exits 1.
    let script = format!(
        "date +%s%3N >> {w}/launches; mkdir {w}/lock 2>/dev/null && exec {b} || exit 1",
        w = work.display(),
        b = bin.display()
    );
    let spec = format!("group: ops\nname: loop\ndriver: exec\ninstances: 2\ncommand: [sh, -c, \"{script}\"]\n");
    let file = p.write("loop.yaml", &spec);
    let out = p.cli(&["deploy", "-f", &file, "--timeout", "2"]).await;
    assert!(!out.status.success(), "one slot never runs");
    let launches = || -> Vec<i64> {
        std::fs::read_to_string(work.join("launches"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let first = *launches().first().expect("launched");
    // Watch past the 30 s after which a healthy sibling used to end the backoff, plus a window.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(u64::try_from(first + 45_000 - now).unwrap_or(0))).await;
    let all = launches();
    let late = all.iter().filter(|t| **t - first > 35_000).count();
    // By then the delay is several seconds a step: a handful of launches, not hundreds.
    assert!(late <= 4, "{late} launches in the 10 s after 35 s of crash looping ({} in all)", all.len());
    assert!(all.len() >= 8, "the failing slot is still retried: {} launches", all.len());
    let exec = p.data_dir().join("agent").join("exec");
    let dirs = || std::fs::read_dir(&exec).map(|d| d.count()).unwrap_or(0);
    assert!(dirs() <= 2, "{} directories for {} launches", dirs(), all.len());

    // A directory an earlier agent left behind is swept at start.
    std::fs::create_dir_all(exec.join("left-behind")).unwrap();
    std::fs::write(exec.join("left-behind").join("stdout.log"), "old\n").unwrap();
    p.restart().await;
    wait_until("the sweep at start", Duration::from_secs(20), || async {
        (!exec.join("left-behind").exists()).then_some(())
    })
    .await;

    p.cli_ok(&["app", "loop", "destroy"]).await;
    wait_until("every directory gone with the app", Duration::from_secs(30), || async { (dirs() == 0).then_some(()) })
        .await;
}

/// Ports of the range that another process listens on are found when an instance is to start
/// there, reported, and never handed out again while held: the instances land elsewhere at once,
/// with no crash loop and no backoff, and the ports come back once the other process lets go.
#[tokio::test(flavor = "multi_thread")]
async fn ports_held_by_another_process_are_skipped_not_crash_looped() {
    let marker = format!("held-{}", std::process::id());
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let (a, b) = (p.ports.0, p.ports.0 + 2);
    let held: Vec<std::net::TcpListener> =
        [a, b].iter().map(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).expect("hold a port")).collect();
    let file = p.write("berth.yaml", &spec(&marker, 3));
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    let live = p.live("plain").await;
    assert_eq!(live.len(), 3);
    for inst in &live {
        let address = inst["address"].as_str().unwrap();
        let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
        assert!(port != a && port != b, "an instance got held port {port}: {live:?}");
        assert_eq!(instance_answer(address).await["instance"], inst["id"]);
    }
    let status = p.status("plain").await;
    assert!(status.get("crash_loop").is_none(), "a held port is not the app's crash: {status}");
    let events = p.get("/v1/events?limit=1000").await.unwrap();
    let kinds: Vec<&str> = events.as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    let taken = kinds.iter().filter(|k| **k == "instance.port_taken").count();
    assert!((1..=2).contains(&taken), "each held port costs at most one launch: {kinds:?}");
    assert!(!kinds.contains(&"instance.failed"), "{kinds:?}");
    let node_taken = |nodes: &Value| -> Vec<u64> {
        nodes[0]["taken_ports"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default()
    };
    let nodes = p.get("/v1/nodes").await.unwrap();
    let recorded = node_taken(&nodes);
    assert!(!recorded.is_empty() && recorded.iter().all(|t| *t == a as u64 || *t == b as u64), "{nodes}");

    // The other process lets go: the next heartbeat finds the ports free and they are handed out again.
    drop(held);
    wait_until("the node's held ports to clear", Duration::from_secs(20), || async {
        node_taken(&p.get("/v1/nodes").await.ok()?).is_empty().then_some(())
    })
    .await;
    p.cli_ok(&["app", "plain", "scale", "5", "--timeout", "30"]).await;
    let ports: Vec<u16> = p
        .live("plain")
        .await
        .iter()
        .map(|i| i["address"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    assert!(ports.contains(&a) && ports.contains(&b), "freed ports are used again: {ports:?}");
}

/// An HTTP check reads the whole answer and closes cleanly, so a server that logs a reset (as
/// Python's http.server does, with a traceback) logs nothing but its requests; and an instance
/// whose check fails says why while it is starting.
#[tokio::test(flavor = "multi_thread")]
async fn health_checks_read_the_answer_and_say_why_they_fail() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let spec = "group: ops\nname: py\ndriver: exec\ncommand: [sh, -c, \"exec python3 -u -m http.server $PORT --bind 127.0.0.1\"]\n\
                health:\n  http: /\n  interval: 100ms\n  timeout: 1s\nupgrade:\n  min_healthy_time: 0s\n";
    let file = p.write("py.yaml", spec);
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    // Fifty checks or more.
    let logs = wait_until("fifty checks in the app's log", Duration::from_secs(30), || async {
        let out = p.cli_ok(&["app", "py", "logs", "-n", "1000"]).await;
        (out.matches("\"GET / HTTP/1.1\" 200").count() >= 50).then_some(out)
    })
    .await;
    assert!(!logs.contains("Traceback") && !logs.contains("ConnectionResetError"), "{logs}");

    let never = "group: ops\nname: deaf\ndriver: exec\ncommand: [sleep, \"300\"]\n\
                 health:\n  http: /\n  interval: 100ms\n  timeout: 1s\n  grace: 60s\n";
    let file = p.write("deaf.yaml", never);
    p.cli_ok(&["deploy", "-f", &file, "--no-wait"]).await;
    let reason = wait_until("the starting instance's reason", Duration::from_secs(20), || async {
        let live = p.live("deaf").await;
        let inst = live.iter().find(|i| i["state"] == "starting")?;
        inst["reason"].as_str().map(str::to_string)
    })
    .await;
    assert!(reason.starts_with("health check: connect") && reason.contains("refused"), "{reason}");
}
