//! Deployments under constant load through the router, on exec and on Docker: a rolling upgrade,
//! scale up and down, a killed instance, and a broken version rolled back automatically, all with
//! zero failed requests.

use std::time::Duration;

use berth_testkit::{Load, Platform, docker_or_skip, test_images, wait_until};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// Health and gates shared by every version in these tests.
const GATES: &str = "health:\n  http: /health\n  interval: 200ms\n  timeout: 1s\n  grace: 5s\n  max_failures: 2\n\
                     upgrade:\n  min_healthy_time: 300ms\n  progress_deadline: 20s\n";

/// The spec of a version: `label` is what the instances answer as `version`; extra args break it.
type SpecFn = Box<dyn Fn(&str, Option<&str>) -> String>;

/// How a test names, runs and kills instances of one driver.
struct Driver {
    spec: SpecFn,
    kill: Kill,
}

enum Kill {
    /// `kill -9` of the instance's pid.
    Process,
    /// `docker kill` of its container.
    Container(bollard::Docker),
}

impl Kill {
    async fn kill(&self, inst: &Value) {
        match self {
            Kill::Process => {
                let pid = inst["handle"].as_str().unwrap_or_default();
                let status = std::process::Command::new("kill").args(["-9", pid]).status().unwrap();
                assert!(status.success(), "kill -9 {pid}");
            }
            Kill::Container(docker) => {
                let name = format!("berth-{}", inst["id"].as_str().unwrap_or_default());
                docker.kill_container(&name, None::<bollard::query_parameters::KillContainerOptions>).await.unwrap();
            }
        }
    }
}

fn exec_driver() -> Driver {
    let bin = berth_testkit::image::testapp_binary();
    Driver {
        spec: Box::new(move |label, extra_args| {
            let extra = extra_args.map(|a| format!(", {a}")).unwrap_or_default();
            format!(
                "group: shop\nname: cart\ndriver: exec\ninstances: 4\ncommand: [{}, --version, {label}{extra}]\n\
                 services: [cart.test]\n{GATES}",
                bin.display()
            )
        }),
        kill: Kill::Process,
    }
}

async fn instances_in_service(p: &Platform) -> Vec<Value> {
    p.live("cart").await.into_iter().filter(|i| i["in_service"] == true && i["desired"] == "run").collect()
}

/// The scenario the issue names, on one driver.
async fn upgrade_scale_kill_and_roll_back(p: &Platform, driver: &Driver, broken_args: &str) {
    let v1 = p.write("v1.yaml", &(driver.spec)("v1", None));
    p.cli_ok(&["deploy", "-f", &v1, "--timeout", "60"]).await;
    let load = Load::start(&p.http, "cart.test", 4, Some(Duration::from_millis(5)));
    wait_until("traffic to flow", Duration::from_secs(10), || async {
        (load.versions_since_mark().values().sum::<u64>() > 50).then_some(())
    })
    .await;

    // Rolling upgrade v1 -> v2: afterwards every answer comes from v2.
    let v2 = p.write("v2.yaml", &(driver.spec)("v2", None));
    p.cli_ok(&["deploy", "-f", &v2, "--timeout", "90"]).await;
    load.mark();
    wait_until("v2 answers", Duration::from_secs(5), || async {
        (load.versions_since_mark().values().sum::<u64>() > 100).then_some(())
    })
    .await;
    let seen = load.versions_since_mark();
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["v2"], "after the upgrade only v2 answers: {seen:?}");

    // Scale 4 -> 8 -> 2 under the same gates.
    p.cli_ok(&["app", "cart", "scale", "8", "--timeout", "90"]).await;
    assert_eq!(instances_in_service(p).await.len(), 8);
    p.cli_ok(&["app", "cart", "scale", "2", "--timeout", "90"]).await;

    // Kill one; it is replaced and the router never sends a request into the hole.
    let victim = instances_in_service(p).await[0].clone();
    driver.kill.kill(&victim).await;
    wait_until("the killed instance to be replaced", Duration::from_secs(30), || async {
        let live = instances_in_service(p).await;
        (live.len() == 2 && !live.iter().any(|i| i["id"] == victim["id"])).then_some(())
    })
    .await;

    // A broken v3 fails its deployment and is rolled back to v2, automatically.
    let v3 = p.write("v3.yaml", &(driver.spec)("v3", Some(broken_args)));
    let out = p.cli(&["deploy", "-f", &v3, "--timeout", "90"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a deployment that rolled back exits non-zero: {stderr}");
    assert!(stderr.contains("rolling back automatically"), "{stderr}");
    let status = p.status("cart").await;
    assert_eq!(status["version"], 4, "the rollback is a new version");
    assert_eq!(status["deployment"]["kind"], "auto-rollback");
    assert_eq!(status["deployment"]["state"], "succeeded");
    let history: Value = serde_json::from_str(&p.cli_ok(&["app", "cart", "history", "-o", "json"]).await).unwrap();
    assert_eq!(history[1]["outcome"]["state"], "succeeded", "{history}");
    assert_eq!(history[2]["outcome"]["state"], "rolled-back", "{history}");
    assert_eq!(history[3]["change"], "automatic rollback to v2 after v3 failed");
    load.mark();
    wait_until("answers after the rollback", Duration::from_secs(5), || async {
        (load.versions_since_mark().values().sum::<u64>() > 100).then_some(())
    })
    .await;
    let report = load.finish().await;
    assert_eq!(report.versions_since_mark.keys().collect::<Vec<_>>(), ["v2"], "{:?}", report.versions_since_mark);
    report.assert_clean(1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_rollout_under_load_drops_nothing_and_rolls_back_a_crash_loop() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    upgrade_scale_kill_and_roll_back(&p, &exec_driver(), "--crash-after-ms, \"150\", --exit-code, \"3\"").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_rollout_under_load_drops_nothing_and_rolls_back_a_never_healthy_version() {
    let Some(docker) = docker_or_skip("docker_rollout_under_load_drops_nothing_and_rolls_back").await else {
        return;
    };
    let images = test_images(&docker).await;
    let p = Platform::start(BERTH.as_ref(), "docker").await;
    let driver = Driver {
        spec: Box::new(move |label, extra_args| {
            // The image decides the answered version: v3 runs v2's image with a failing health.
            let image = if label == "v1" { &images.v1 } else { &images.v2 };
            let command = extra_args.map(|a| format!("command: [{a}]\n")).unwrap_or_default();
            format!(
                "group: shop\nname: cart\nimage: {image}\ninstances: 4\nports: [8080]\n{command}\
                 services: [cart.test]\n{GATES}"
            )
        }),
        kill: Kill::Container(docker.clone()),
    };
    upgrade_scale_kill_and_roll_back(&p, &driver, "--fail-health").await;
}

fn exec_spec(label: &str, instances: u32, upgrade: &str) -> String {
    let bin = berth_testkit::image::testapp_binary();
    format!(
        "group: shop\nname: cart\ndriver: exec\ninstances: {instances}\ncommand: [{}, --version, {label}]\n\
         services: [cart.test]\nhealth:\n  http: /health\n  interval: 200ms\n  timeout: 1s\n\
         upgrade:\n  min_healthy_time: 200ms\n{upgrade}",
        bin.display()
    )
}

async fn wait_for_answers(load: &Load, n: u64) {
    wait_until("answers through the router", Duration::from_secs(10), || async {
        (load.versions_since_mark().values().sum::<u64>() >= n).then_some(())
    })
    .await;
}

async fn wait_for_flips(load: &Load, n: u64) {
    wait_until("every client to see the switch", Duration::from_secs(10), || async {
        (load.flips() >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_takes_its_share_then_promote_or_rollback() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    p.cli_ok(&["deploy", "-f", &p.write("v1.yaml", &exec_spec("v1", 3, "")), "--timeout", "30"]).await;
    let load = Load::start(&p.http, "cart.test", 4, Some(Duration::from_millis(5)));
    wait_for_answers(&load, 50).await;

    // One canary beside three old: it gets about a quarter of the requests.
    let v2 = p.write("v2.yaml", &exec_spec("v2", 3, ""));
    let out = p.cli(&["deploy", "-f", &v2, "--canary", "1", "--timeout", "30"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("promote"), "the CLI says what comes next: {stderr}");
    let status = p.status("cart").await;
    assert_eq!(status["deployment"]["canary"], 1);
    assert_eq!(status["deployment"]["state"], "running");
    let busy = p.cli(&["app", "cart", "scale", "5"]).await;
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("--force"), "a second change is refused with the way out");
    load.mark();
    wait_for_answers(&load, 800).await;
    let seen = load.versions_since_mark();
    let share = seen.get("v2").copied().unwrap_or(0) as f64 / seen.values().sum::<u64>() as f64;
    assert!((0.12..0.40).contains(&share), "the canary's share is about 1/4: {seen:?}");

    // Promote: the rollout finishes, every answer is v2.
    p.cli_ok(&["app", "cart", "promote", "--timeout", "30"]).await;
    load.mark();
    wait_for_answers(&load, 100).await;
    assert_eq!(load.versions_since_mark().keys().collect::<Vec<_>>(), ["v2"]);

    // A v3 canary abandoned by rollback: back to v2 with no v3 left.
    let v3 = p.write("v3.yaml", &exec_spec("v3", 3, ""));
    p.cli_ok(&["deploy", "-f", &v3, "--canary", "2", "--timeout", "30"]).await;
    let out = p.cli_ok(&["app", "cart", "rollback", "--timeout", "30", "-o", "json"]).await;
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["spec"]["command"][2], "v2", "rolled back to the last stable version");
    load.mark();
    wait_for_answers(&load, 100).await;
    assert_eq!(load.versions_since_mark().keys().collect::<Vec<_>>(), ["v2"]);
    load.finish().await.assert_clean(1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn blue_green_switches_all_traffic_at_once_and_rolls_back_instantly() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let bg = "  strategy: blue-green\n  rollback_window: 5m\n";
    p.cli_ok(&["deploy", "-f", &p.write("v1.yaml", &exec_spec("v1", 3, bg)), "--timeout", "30"]).await;
    let blue: Vec<Value> = p.live("cart").await;
    let load = Load::start(&p.http, "cart.test", 4, Some(Duration::from_millis(5)));
    wait_for_answers(&load, 50).await;

    p.cli_ok(&["deploy", "-f", &p.write("v2.yaml", &exec_spec("v2", 3, bg)), "--timeout", "30"]).await;
    // Routers follow the switch within moments; once every client has seen v2, no v1 may answer.
    wait_for_flips(&load, 4).await;
    load.mark();
    wait_for_answers(&load, 100).await;
    assert_eq!(load.versions_since_mark().keys().collect::<Vec<_>>(), ["v2"]);
    assert_eq!(load.flips(), 4, "each client saw v1, then only v2: one atomic switch");
    // The blue set is kept, without traffic, for the rollback window.
    let status = p.status("cart").await;
    let kept = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["version"] == 1 && i["state"] == "running" && i["desired"] == "run")
        .count();
    assert_eq!(kept, 3, "{status:#}");

    // Rollback inside the window: the blue set takes the traffic back at once, no new instance.
    p.cli_ok(&["app", "cart", "rollback", "--timeout", "30"]).await;
    wait_for_flips(&load, 8).await;
    load.mark();
    wait_for_answers(&load, 100).await;
    assert_eq!(load.versions_since_mark().keys().collect::<Vec<_>>(), ["v1"]);
    assert_eq!(load.flips(), 8, "one more atomic switch per client");
    let mut serving: Vec<String> = p.live("cart").await.iter().map(|i| i["id"].to_string()).collect();
    let mut before: Vec<String> = blue.iter().map(|i| i["id"].to_string()).collect();
    serving.retain(|id| before.contains(id));
    before.sort();
    serving.sort();
    assert_eq!(serving, before, "the blue instances came back as they were");
    load.finish().await.assert_clean(300);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_survives_the_server_being_killed() {
    let mut p = Platform::start_split(BERTH.as_ref(), "exec").await;
    let one_at_a_time = "  max_over_capacity: 0.25\n";
    p.cli_ok(&["deploy", "-f", &p.write("v1.yaml", &exec_spec("v1", 4, one_at_a_time)), "--timeout", "30"]).await;
    let load = Load::start(&p.http, "cart.test", 4, Some(Duration::from_millis(5)));
    wait_for_answers(&load, 50).await;

    // v2 starts slowly, so the rollout is mid-way when the server dies.
    let slow_v2 =
        exec_spec("v2", 4, one_at_a_time).replace("--version, v2]", "--version, v2, --start-delay-ms, \"700\"]");
    p.cli_ok(&["deploy", "-f", &p.write("v2.yaml", &slow_v2), "--no-wait"]).await;
    wait_until("the rollout to be under way", Duration::from_secs(30), || async {
        let s = p.status("cart").await;
        let live = s["instances"].as_array().cloned().unwrap_or_default();
        let new_in_service = live.iter().filter(|i| i["version"] == 2 && i["in_service"] == true).count();
        let old_live = live.iter().filter(|i| i["version"] == 1 && i["state"] == "running").count();
        (new_in_service >= 1 && old_live >= 2).then_some(())
    })
    .await;
    p.kill9().await;
    // Routers and agents carry on alone: traffic still flows while no server answers.
    load.mark();
    wait_for_answers(&load, 200).await;
    p.restart().await;

    let status = wait_until("the rollout to finish after the restart", Duration::from_secs(60), || async {
        let s = p.status("cart").await;
        (s["deployment"]["version"] == 2 && s["deployment"]["state"] == "succeeded").then_some(s)
    })
    .await;
    assert_eq!(status["deployment"]["kind"], "update", "the same deployment resumed: {status:#}");
    wait_until("only v2 to answer", Duration::from_secs(10), || async {
        load.mark();
        tokio::time::sleep(Duration::from_millis(200)).await;
        (load.versions_since_mark().keys().collect::<Vec<_>>() == ["v2"]).then_some(())
    })
    .await;
    load.finish().await.assert_clean(500);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_instance_finishes_its_in_flight_requests_before_sigterm() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let with_drain = "drain_timeout: 20s\n";
    p.cli_ok(&["deploy", "-f", &p.write("v1.yaml", &(exec_spec("v1", 1, "") + with_drain)), "--timeout", "30"]).await;
    let old = p.live("cart").await[0]["id"].as_str().unwrap().to_string();

    // A 2.5 s request is on its way to v1 when v2 replaces it.
    let http = p.http.clone();
    let slow = tokio::spawn(async move {
        let resp = berth_tls::http()
            .get(format!("http://{http}/slow?ms=2500"))
            .header("host", "cart.test")
            .send()
            .await
            .expect("the slow request is answered");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or_default();
        (status, body, berth_server::now_ms())
    });
    wait_until("the slow request to be in flight", Duration::from_secs(5), || async {
        let (_, answer) = p.admin_request("GET", &format!("/drain/{old}"), "").await;
        (answer["in_flight"] == 1).then_some(())
    })
    .await;
    p.cli_ok(&["deploy", "-f", &p.write("v2.yaml", &(exec_spec("v2", 1, "") + with_drain)), "--timeout", "30"]).await;

    let (status, body, answered_at) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["instance"], old.as_str(), "the old instance itself answered, not a retry elsewhere: {body}");
    assert_eq!(body["version"], "v1");
    let events: Vec<Value> =
        serde_json::from_str(&p.cli_ok(&["events", "--app", "cart", "-o", "json", "-n", "500"]).await).unwrap();
    let at = |kind: &str| {
        events.iter().find(|e| e["kind"] == kind && e["instance"] == old.as_str()).and_then(|e| e["time"].as_i64())
    };
    let (stopping, stopped) = (at("instance.stopping").unwrap(), at("instance.stopped").unwrap());
    assert!(stopped - stopping >= 1500, "the drain waited for the request ({} ms)", stopped - stopping);
    assert!(stopped >= answered_at - 50, "SIGTERM came only after the answer");
    assert!(stopped - answered_at < 1500, "and soon after it ({} ms), not at the 20 s timeout", stopped - answered_at);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_deployment_at_a_time_unless_forced() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    p.cli_ok(&["deploy", "-f", &p.write("v1.yaml", &exec_spec("v1", 2, "")), "--timeout", "30"]).await;
    // v2 never turns healthy, and its deadlines are long: its deployment stays in progress.
    let stuck =
        exec_spec("v2", 2, "  progress_deadline: 10m\n").replace("--version, v2]", "--version, v2, --fail-health]");
    p.cli_ok(&["deploy", "-f", &p.write("v2.yaml", &stuck), "--no-wait"]).await;

    let v3 = p.write("v3.yaml", &exec_spec("v3", 2, ""));
    let refused = p.cli(&["deploy", "-f", &v3, "--no-wait"]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("in the middle of a deployment of v2") && stderr.contains("--force"), "{stderr}");
    assert_eq!(p.status("cart").await["version"], 2, "a refused change changes nothing");

    p.cli_ok(&["deploy", "-f", &v3, "--force", "--timeout", "30"]).await;
    let history: Value = serde_json::from_str(&p.cli_ok(&["app", "cart", "history", "-o", "json"]).await).unwrap();
    assert_eq!(history[1]["outcome"]["state"], "superseded", "{history}");
    assert_eq!(history[2]["outcome"]["state"], "succeeded", "{history}");
    let live = p.live("cart").await;
    assert!(live.iter().all(|i| i["version"] == 3), "v2's instances are gone: {live:#?}");
}
