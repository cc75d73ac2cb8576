//! Metrics end to end: a CPU-burning, memory-holding app shows its use in `top` on exec and on
//! Docker; `/metrics` passes `promtool check metrics`, and a real Prometheus scrapes it.

use std::time::Duration;

use berth_testkit::{Platform, docker_or_skip, free_port, test_images, wait_until};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn fast_sampling() -> Vec<String> {
    vec!["--metrics-interval".into(), "500ms".into()]
}

async fn usage_of(p: &Platform, app: &str) -> Value {
    serde_json::from_str(&p.cli_ok(&["app", app, "top", "-o", "json"]).await).expect("top -o json")
}

/// Waits until the app's single instance burns most of a core and holds at least `mib` MiB.
async fn burns_and_holds(p: &Platform, app: &str, mib: u64) -> Value {
    wait_until("the app's use to show", Duration::from_secs(30), || async {
        let u = usage_of(p, app).await;
        let i = u["instances"].get(0)?.clone();
        let cpu = i["cpu_percent"].as_f64()?;
        let mem = i["memory_bytes"].as_u64()?;
        (cpu > 50.0 && mem >= mib << 20).then_some(u)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_use_shows_in_top_and_metrics_pass_promtool_and_prometheus() {
    let p = Platform::start_args(BERTH.as_ref(), "exec", &fast_sampling()).await;
    let bin = berth_testkit::image::testapp_binary();
    let spec = format!(
        "group: lab\nname: burn\ndriver: exec\ncpu: 1\nmemory: 256\ncommand: [{}, --burn-cpu, --alloc-mb, \"64\"]\n\
         upgrade:\n  min_healthy_time: 0s\n",
        bin.display()
    );
    p.cli_ok(&["deploy", "-f", &p.write("burn.yaml", &spec), "--timeout", "30"]).await;
    let u = burns_and_holds(&p, "burn", 64).await;
    assert_eq!(u["apps"][0]["app"], "lab/burn");
    assert!(u["apps"][0]["cpu_percent"].as_f64().unwrap() > 50.0, "{u}");
    assert_eq!(u["apps"][0]["cpu_allocated"], 1.0);

    // The samples are kept: the history shows the burn over time.
    let history = wait_until("a few points of history", Duration::from_secs(10), || async {
        let h = p.get("/v1/apps/lab/burn/usage/history").await.ok()?;
        (h[0]["points"].as_array()?.len() >= 3).then_some(h)
    })
    .await;
    let points = history[0]["points"].as_array().expect("points");
    assert!(points.windows(2).all(|w| w[0]["t"].as_i64() < w[1]["t"].as_i64()), "in time order: {history}");
    assert!(points.last().unwrap()["cpu_percent"].as_f64().unwrap() > 50.0, "{history}");

    // The cluster view: allocated beside used.
    let all: Value = serde_json::from_str(&p.cli_ok(&["top", "-o", "json"]).await).unwrap();
    let cluster = &all["cluster"];
    assert_eq!(cluster["cpu_allocated"], 1.0, "{all}");
    assert!(cluster["cpu_used"].as_f64().unwrap() > 0.5, "{all}");
    assert!(cluster["memory_used_bytes"].as_u64().unwrap() >= 64 << 20, "{all}");
    let table = p.cli_ok(&["top", "--once"]).await;
    assert!(table.contains("cluster") && table.contains("lab/burn"), "{table}");

    // Prometheus' exposition format, checked by Prometheus' own linter.
    let unauthenticated = berth_tls::http().get(format!("{}/metrics", p.api)).send().await.unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401, "metrics name apps and nodes: a token reads them");
    let text = berth_tls::http()
        .get(format!("{}/metrics", p.api))
        .bearer_auth(p.admin_token())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("berth_apps 1"), "{text}");
    assert!(text.contains("berth_instances{state=\"running\"} 1"), "{text}");
    assert!(text.contains("berth_app_cpu_percent{app=\"lab/burn\"}"), "{text}");
    promtool_check(&text);
    prometheus_scrapes(&p).await;
}

fn promtool_check(text: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        assert!(std::env::var("BERTH_REQUIRE_DOCKER").is_err(), "promtool is required (apt-get install prometheus)");
        eprintln!("SKIPPED promtool check: promtool is not installed");
        return;
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus scrapes `/metrics` and answers a query about Berth's series.
async fn prometheus_scrapes(p: &Platform) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let target = p.api.trim_start_matches("http://");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: berth\n    metrics_path: /metrics\n    \
             authorization:\n      credentials_file: {}\n    \
             static_configs:\n      - targets: ['{target}']\n",
            p.data_dir().join("admin.token").display()
        ),
    )
    .unwrap();
    let Ok(child) = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        assert!(std::env::var("BERTH_REQUIRE_DOCKER").is_err(), "prometheus is required (apt-get install prometheus)");
        eprintln!("SKIPPED Prometheus scrape: prometheus is not installed");
        return;
    };
    let _guard = Killed(child);
    let url = format!("http://127.0.0.1:{port}/api/v1/query?query=berth_app_instances");
    let answer = wait_until("Prometheus to have scraped Berth", Duration::from_secs(60), || async {
        let v: Value = berth_tls::http().get(&url).send().await.ok()?.json().await.ok()?;
        let result = v["data"]["result"].as_array()?.first()?.clone();
        (result["metric"]["app"] == "lab/burn").then_some(result)
    })
    .await;
    assert_eq!(answer["value"][1], "1", "{answer}");
    let health = format!("http://127.0.0.1:{port}/api/v1/targets");
    let targets: Value = berth_tls::http().get(&health).send().await.unwrap().json().await.unwrap();
    assert_eq!(targets["data"]["activeTargets"][0]["health"], "up", "{targets}");
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_use_shows_in_top_with_limits_and_network() {
    let Some(docker) = docker_or_skip("docker_use_shows_in_top_with_limits_and_network").await else {
        return;
    };
    let images = test_images(&docker).await;
    let p = Platform::start_args(BERTH.as_ref(), "docker", &fast_sampling()).await;
    let spec = format!(
        "group: lab\nname: burn\nimage: {}\ncpu: 1\nmemory: 128\nports: [8080]\ncommand: [\"--burn-cpu\", \"--alloc-mb\", \"48\"]\n\
         services: [burn.test]\nupgrade:\n  min_healthy_time: 0s\n",
        images.v1
    );
    p.cli_ok(&["deploy", "-f", &p.write("burn.yaml", &spec), "--timeout", "60"]).await;
    let u = burns_and_holds(&p, "burn", 48).await;
    let i = &u["instances"][0];
    assert_eq!(i["memory_limit_bytes"], 128u64 << 20, "the engine's limit is the spec's: {u}");
    assert!(i["net_rx_bytes"].is_u64(), "network counters come from the engine: {u}");
    assert!(i["cpu_percent"].as_f64().unwrap() <= 110.0, "cpu: 1 caps it at one core: {u}");
    // Requests through the router show in the app's traffic: the routers' counts, and the bytes
    // the container's interface moved, from the engine's counters.
    for _ in 0..20 {
        let (status, body) = p.via_router("burn.test", "/").await.expect("the router answers");
        assert_eq!(status, 200, "{body}");
    }
    wait_until("requests and bytes in the app's traffic", Duration::from_secs(30), || async {
        let t = p.get("/v1/apps/lab/burn/traffic").await.ok()?;
        let steps = t["steps"].as_array()?;
        let sum = |field: &str| steps.iter().filter_map(|s| s[field].as_u64()).sum::<u64>();
        (sum("requests") >= 20 && sum("net_rx_bytes") > 0 && sum("net_tx_bytes") > 0).then_some(())
    })
    .await;
}

/// Live views are for terminals: into a pipe `top` prints one plain snapshot and ends (`--watch`
/// keeps going, still plain), on a terminal it redraws until `q`, and `berth up`'s own log
/// carries no colour codes into its file.
#[tokio::test(flavor = "multi_thread")]
async fn top_into_a_pipe_is_plain_and_ends_and_q_quits_on_a_terminal() {
    use tokio::io::AsyncWriteExt;
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    for args in [&["top"][..], &["app", "nope", "top"][..]] {
        let out = tokio::time::timeout(Duration::from_secs(10), p.cli(args)).await.expect("top ends when piped");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(!text.contains('\x1b'), "no screen-control bytes in a pipe: {text:?}");
        if args.len() == 1 {
            assert!(out.status.success() && text.contains("NODE"), "{text}");
        }
    }

    let mut watch = tokio::process::Command::new(BERTH)
        .args(["top", "--watch", "--every", "1"])
        .env("BERTH_SERVER", &p.api)
        .env("BERTH_TOKEN", p.admin_token())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let seen = collect(watch.stdout.take().unwrap());
    let text = wait_until("two snapshots from --watch", Duration::from_secs(10), || async {
        let text = seen.lock().unwrap().clone();
        (text.matches("NODE").count() >= 2).then_some(text)
    })
    .await;
    assert!(!text.contains('\x1b'), "{text:?}");
    watch.kill().await.unwrap();

    // A terminal (from `script`): the view redraws until `q`.
    let mut live = p.cli_in_terminal("top --every 1");
    let screen = collect(live.stdout.take().unwrap());
    wait_until("the live view", Duration::from_secs(10), || async {
        screen.lock().unwrap().contains("(q to quit)").then_some(())
    })
    .await;
    live.stdin.as_mut().unwrap().write_all(b"q").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), live.wait()).await.expect("q quits").unwrap();
    assert!(status.success(), "{status:?}");

    assert!(!p.log().contains('\x1b'), "berth up's log file has no colour codes");
}

/// Everything a child writes to `out`, as it comes.
fn collect(mut out: tokio::process::ChildStdout) -> std::sync::Arc<std::sync::Mutex<String>> {
    use tokio::io::AsyncReadExt;
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = text.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}
