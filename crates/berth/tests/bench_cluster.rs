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
