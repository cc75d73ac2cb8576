//! `berth bench cluster` end to end, small: a real server, simulated agents, every instance
//! running, their samples reaching the server as a real agent's do, and a lost agent's instances
//! running again elsewhere.

use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

#[test]
fn bench_cluster_runs_every_instance_through_a_real_server() {
    let out = std::process::Command::new(BERTH)
        .args([
            "bench",
            "cluster",
            "--agents",
            "4",
            "--instances",
            "40",
            "--settle",
            "6",
            "--timeout",
            "60",
            "--kill",
            "1",
            "--node-timeout",
            "2s",
            "-o",
            "json",
        ])
        .output()
        .expect("berth runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON report");
    assert_eq!((report["agents"].as_u64(), report["running"].as_u64()), (Some(4), Some(40)), "{report}");
    assert!(report["seconds_to_running"].as_f64().is_some_and(|s| s > 0.0), "{report}");
    for field in ["server_rss_mib", "server_peak_rss_mib", "server_settled_rss_mib"] {
        assert!(report[field].as_f64().is_some_and(|m| m > 1.0), "{field}: {report}");
    }
    // Agents send samples every 5 s: six seconds of settling sees them arrive.
    assert!(report["instances_sampled"].as_u64().is_some_and(|n| n > 0 && n <= 40), "{report}");
    // One agent stopped as a machine dies: its instances are noticed lost and run elsewhere.
    let loss = &report["loss"];
    assert_eq!(loss["killed"].as_u64(), Some(1), "{report}");
    assert!(loss["instances_lost"].as_u64().is_some_and(|n| n > 0), "spread puts some on every node: {report}");
    let notice = loss["seconds_to_notice"].as_f64().expect("noticed");
    let heal = loss["seconds_to_heal"].as_f64().expect("healed");
    assert!(notice <= heal, "{report}");
}

#[test]
fn bench_cluster_refuses_to_kill_every_agent() {
    let out = std::process::Command::new(BERTH)
        .args(["bench", "cluster", "--agents", "4", "--instances", "8", "--kill", "4"])
        .output()
        .expect("berth runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--kill 4: at most 3 of --agents 4 can die"), "{err}");
}

/// Issue 15, item 5: 200 agents follow a server that was killed and kept down for longer than
/// the node timeout. The restarted server gives every node a full timeout (none is marked
/// disconnected, no instance is replaced), and the agents come back spread out: the server's
/// busiest quarter second after the restart, counted by the server itself, stays within a small
/// multiple of its settled rate.
#[test]
fn agents_return_to_a_restarted_server_without_a_stampede_or_a_lost_node() {
    let out = std::process::Command::new(BERTH)
        .args([
            "bench",
            "cluster",
            "--agents",
            "200",
            "--instances",
            "400",
            "--settle",
            "2",
            "--timeout",
            "120",
            "--restart-server",
            "6s",
            "-o",
            "json",
        ])
        .output()
        .expect("berth runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr.lines().rev().take(30).collect::<Vec<_>>().join("\n");
    assert!(out.status.success(), "{stdout}\n{tail}");
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON report");
    let restart = &report["restart"];
    // The 5 s default timeout holds for 200 nodes; the server was down for longer than that.
    assert_eq!(restart["down_seconds"].as_f64(), Some(6.0), "{report}");
    assert_eq!(restart["nodes_marked_disconnected"].as_u64(), Some(0), "{report}");
    assert_eq!(restart["instances_replaced"].as_u64(), Some(0), "{report}");
    let back = restart["seconds_to_all_beating"].as_f64().expect("every node beat again");
    assert!(back < 5.0, "every node beats within one timeout of the restart: {report}");
    let before = restart["requests_per_second_before"].as_f64().unwrap_or(0.0);
    let peak = restart["requests_per_second_peak"].as_f64().unwrap_or(f64::MAX);
    assert!(before > 50.0, "200 agents heartbeating were counted: {report}");
    // Catches retries that do not wait at all (tens of times the settled rate). Measured on an
    // idle machine: 1.8-2.1x with the agents' growing, jittered waits, 3.1x when each retried
    // every 500 ms as they once did (docs/benchmarks.md); under a loaded CI the server answers
    // in bursts and one quarter second has read 2.7x, so the line is drawn above both.
    assert!(
        peak <= 4.0 * before,
        "a stampede: {peak:.0} requests/s after the restart against {before:.0} before: {report}"
    );
}
