//! `berth bench api` and `berth bench failover`, small: they run against real servers on redb and
//! on a real three-member etcd, and report figures that add up.

use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn etcd_installed(test: &str) -> bool {
    berth_testkit::etcd::etcd_binary(test).is_some()
}

fn report(args: &[&str]) -> Value {
    let out = std::process::Command::new(BERTH).args(args).args(["-o", "json"]).output().expect("berth runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).expect("one JSON report")
}

#[test]
fn bench_api_writes_to_redb_and_to_etcd_and_compares_them() {
    if !etcd_installed("bench_api") {
        return;
    }
    let r = report(&["bench", "api", "--clients", "2", "--seconds", "2"]);
    for store in ["redb", "etcd"] {
        let f = &r[store];
        assert!(f["writes"].as_u64().is_some_and(|w| w > 4), "{store} wrote: {r}");
        assert_eq!(f["failed"], 0, "{store}: {r}");
        assert!(f["p99_ms"].as_f64().unwrap_or(0.0) >= f["p50_ms"].as_f64().unwrap_or(f64::MAX), "{r}");
    }
    let ratio = r["etcd_over_redb_throughput"].as_f64().expect("ratio");
    let computed = r["etcd"]["writes_per_second"].as_f64().unwrap() / r["redb"]["writes_per_second"].as_f64().unwrap();
    assert!((ratio - computed).abs() < 1e-9, "{r}");
}

#[test]
fn bench_failover_kills_the_leader_and_times_the_next() {
    if !etcd_installed("bench_failover") {
        return;
    }
    let r = report(&["bench", "failover", "--kills", "2"]);
    let seconds: Vec<f64> = r["seconds"].as_array().expect("seconds").iter().filter_map(Value::as_f64).collect();
    assert_eq!(seconds.len(), 2, "{r}");
    assert!(seconds.iter().all(|s| *s > 0.0 && *s < 10.0), "each new leader within 10 s: {r}");
    assert_eq!(r["max_seconds"].as_f64(), seconds.iter().copied().reduce(f64::max), "{r}");
}
