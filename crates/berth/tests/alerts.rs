//! Alerts end to end: a CPU-burning app fires its cpu rule to its webhook and resolves once it
//! stops; a crash-looping app fires a crash-loop alert to the server-wide webhook; a real
//! Alertmanager receives the alerts.

use std::time::Duration;

use berth_testkit::{Platform, Receiver, free_port, wait_until};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// The alert bodies a webhook received.
fn alerts_at(hook: &Receiver) -> Vec<Value> {
    hook.bodies().iter().filter_map(|(body, _)| serde_json::from_slice(body).ok()).collect()
}

fn posted(hook: &Receiver, name: &str, status: &str) -> Option<Value> {
    alerts_at(hook).into_iter().find(|b| b["name"] == name && b["status"] == status)
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's Alertmanager on a free port, or None (skipped) when it is not installed.
fn alertmanager(dir: &std::path::Path) -> Option<(Killed, u16)> {
    let (port, cluster) = (free_port(), free_port());
    let config = dir.join("alertmanager.yml");
    std::fs::write(&config, "route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n").unwrap();
    let child = std::process::Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("am").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!("--cluster.listen-address=127.0.0.1:{cluster}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match child {
        Ok(c) => Some((Killed(c), port)),
        Err(_) => {
            assert!(
                std::env::var("BERTH_REQUIRE_DOCKER").is_err(),
                "prometheus-alertmanager is required (apt-get install prometheus-alertmanager)"
            );
            eprintln!("SKIPPED Alertmanager: prometheus-alertmanager is not installed");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_rule_fires_and_resolves_crash_loop_fires_and_alertmanager_receives() {
    let dir = tempfile::tempdir().unwrap();
    let am = alertmanager(dir.path());
    let (server_wide, per_app) = (Receiver::start().await, Receiver::start().await);
    let (global_port, app_port) = (server_wide.port, per_app.port);
    let mut args = vec![
        "--metrics-interval".to_string(),
        "500ms".into(),
        "--alert-webhook".into(),
        format!("http://127.0.0.1:{global_port}/hook"),
    ];
    if let Some((_, port)) = &am {
        args.extend(["--alertmanager".to_string(), format!("http://127.0.0.1:{port}")]);
    }
    let p = Platform::start_args(BERTH.as_ref(), "exec", &args).await;
    let bin = berth_testkit::image::testapp_binary();
    let burn = |burning: bool| {
        format!(
            "group: lab\nname: hot\ndriver: exec\ncommand: [{}{}]\nupgrade:\n  min_healthy_time: 0s\n\
             alerts:\n  - {{metric: cpu, above: 50, for: 2s}}\nalert_webhooks: [\"http://127.0.0.1:{app_port}/hook\"]\n",
            bin.display(),
            if burning { ", --burn-cpu" } else { "" }
        )
    };
    p.cli_ok(&["deploy", "-f", &p.write("hot.yaml", &burn(true)), "--timeout", "30"]).await;

    // The cpu rule fires, to the app's webhook and the server-wide one, in the seed's words.
    let fired =
        wait_until("the cpu alert", Duration::from_secs(30), || async { posted(&per_app, "cpu", "firing") }).await;
    let text = fired["text"].as_str().unwrap();
    assert!(text.starts_with("lab/hot is critical, cpu usage is "), "{text}");
    assert!(fired["value"].as_f64().unwrap() > 50.0 && fired["threshold"] == 50.0, "{fired}");
    wait_until("the server-wide webhook too", Duration::from_secs(5), || async {
        posted(&server_wide, "cpu", "firing")
    })
    .await;
    let listed: Value = serde_json::from_str(&p.cli_ok(&["alerts", "-o", "json"]).await).unwrap();
    assert_eq!(listed["firing"][0]["id"], "lab/hot:cpu", "{listed}");
    // Firing once, not every evaluation.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let firing_posts = alerts_at(&per_app).iter().filter(|b| b["name"] == "cpu" && b["status"] == "firing").count();
    assert_eq!(firing_posts, 1, "deduplicated");

    // It stops burning: the alert resolves.
    p.cli_ok(&["deploy", "-f", &p.write("hot.yaml", &burn(false)), "--timeout", "30"]).await;
    let resolved = wait_until("the cpu alert to resolve", Duration::from_secs(30), || async {
        posted(&per_app, "cpu", "resolved")
    })
    .await;
    assert_eq!(resolved["text"], "lab/hot is resolved: cpu");

    // A crash loop fires through the server-wide webhook.
    let crashy =
        format!("group: lab\nname: crashy\ndriver: exec\ncommand: [{}, --crash-after-ms, \"50\"]\n", bin.display());
    p.cli_ok(&["deploy", "-f", &p.write("crashy.yaml", &crashy), "--no-wait"]).await;
    let looped = wait_until("the crash-loop alert", Duration::from_secs(30), || async {
        posted(&server_wide, "crash_loop", "firing")
    })
    .await;
    assert!(looped["text"].as_str().unwrap().starts_with("lab/crashy is critical, crash loop: "), "{looped}");
    assert!(posted(&per_app, "crash_loop", "firing").is_none(), "another app's webhook hears nothing of it");

    // Alertmanager holds the alerts with their labels and text.
    if let Some((_, port)) = am {
        let url = format!("http://127.0.0.1:{port}/api/v2/alerts");
        let alerts = wait_until("Alertmanager to hold the crash-loop alert", Duration::from_secs(30), || async {
            let v: Value = berth_tls::http().get(&url).send().await.ok()?.json().await.ok()?;
            v.as_array()?.iter().any(|a| a["labels"]["alertname"] == "crash_loop").then_some(v)
        })
        .await;
        let alert = alerts.as_array().unwrap().iter().find(|a| a["labels"]["alertname"] == "crash_loop").unwrap();
        assert_eq!(alert["labels"]["app"], "lab/crashy");
        assert!(alert["annotations"]["summary"].as_str().unwrap().contains("crash loop"), "{alert}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_node_alerts_and_resolves_when_it_returns() {
    let hooks = Receiver::start().await;
    let port = hooks.port;
    let server =
        ["--node-timeout".to_string(), "2s".into(), "--alert-webhook".into(), format!("http://127.0.0.1:{port}/h")];
    let mut p = Platform::start_split_args(BERTH.as_ref(), "exec", &server, &[]).await;
    p.kill_agent().await;
    let lost =
        wait_until("the node-lost alert", Duration::from_secs(30), || async { posted(&hooks, "node_lost", "firing") })
            .await;
    assert_eq!(lost["node"], p.node_id.as_str(), "{lost}");
    assert!(lost["text"].as_str().unwrap().contains("is disconnected"), "{lost}");
    p.restart_agent();
    let back = wait_until("the node-lost alert to resolve", Duration::from_secs(30), || async {
        posted(&hooks, "node_lost", "resolved")
    })
    .await;
    assert_eq!(back["node"], p.node_id.as_str(), "{back}");
}
