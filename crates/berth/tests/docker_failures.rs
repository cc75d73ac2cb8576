//! What goes wrong on the real Docker engine: killed containers, OOM, a server killed mid-deploy.

use std::collections::HashSet;
use std::time::Duration;

use berth_testkit::{Platform, docker_or_skip, node_containers, test_images, wait_until};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn instances(status: &Value) -> &Vec<Value> {
    status["instances"].as_array().expect("instances")
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_container_is_replaced() {
    let Some(docker) = docker_or_skip("killed_container_is_replaced").await else {
        return;
    };
    let images = test_images(&docker).await;
    let p = Platform::start(BERTH.as_ref(), "docker").await;
    let file = p.write(
        "berth.yaml",
        &format!(
            "group: ops\nname: api\nimage: {}\ninstances: 2\nports: [8080]\nupgrade:\n  min_healthy_time: 0s\n",
            images.v1
        ),
    );
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "60"]).await;
    let before = p.live("api").await;
    let victim = before[0]["id"].as_str().unwrap().to_string();

    docker
        .kill_container(&format!("berth-{victim}"), None::<bollard::query_parameters::KillContainerOptions>)
        .await
        .expect("docker kill");

    let status = wait_until("the killed instance to be replaced", Duration::from_secs(30), || async {
        let s = p.status("api").await;
        let running: Vec<&Value> = instances(&s).iter().filter(|i| i["state"] == "running").collect();
        (running.len() == 2 && !running.iter().any(|i| i["id"] == victim.as_str())).then_some(s)
    })
    .await;
    let dead =
        instances(&status).iter().find(|i| i["id"] == victim.as_str()).expect("the killed instance is kept in status");
    assert_eq!(dead["state"], "failed");
    assert_eq!(dead["exit_code"], 137, "{dead}");
    assert!(dead["reason"].as_str().unwrap().contains("137"), "{dead}");
    let events = p.cli_ok(&["events", "--app", "api"]).await;
    assert!(events.contains("instance.failed") && events.contains("launch backoff"), "{events}");
    // Its log cursor goes with it; the live instances keep theirs.
    let cursors = p.data_dir().join("agent").join("log-cursors");
    wait_until("the dead instance's log cursor to be removed", Duration::from_secs(10), || async {
        (!cursors.join(&victim).exists()).then_some(())
    })
    .await;
    let running: Vec<String> = instances(&status)
        .iter()
        .filter(|i| i["state"] == "running")
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    wait_until("every running container's cursor", Duration::from_secs(10), || async {
        running.iter().all(|id| cursors.join(id).exists()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_hog_is_reported_as_oom_killed() {
    let Some(docker) = docker_or_skip("memory_hog_is_reported_as_oom_killed").await else {
        return;
    };
    let images = test_images(&docker).await;
    let p = Platform::start(BERTH.as_ref(), "docker").await;
    let file = p.write(
        "hog.yaml",
        &format!(
            "group: ops\nname: hog\nimage: {}\nmemory: 16\ncommand: [\"--alloc-mb\", \"200\"]\nports: [8080]\n\
             health:\n  http: /health\n  interval: 200ms\n  timeout: 1s\nupgrade:\n  min_healthy_time: 0s\n",
            images.v1
        ),
    );
    // Never becomes healthy: `deploy` must give up and say why, with a non-zero exit.
    let out = p.cli(&["deploy", "-f", &file, "--timeout", "60"]).await;
    assert!(!out.status.success(), "a deploy whose instances are OOM-killed fails");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OOM"), "deploy says why: {stderr}");
    let status = p.status("hog").await;
    let oom = instances(&status).iter().find(|i| i["oom_killed"] == true).expect("an OOM-killed instance");
    assert_eq!(oom["state"], "failed");
    assert!(oom["reason"].as_str().unwrap().contains("OOM"), "{oom}");
    let events = p.cli_ok(&["events", "--app", "hog"]).await;
    assert!(events.contains("OOM-killed"), "{events}");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_killed_mid_deploy_resumes_without_duplicates() {
    let Some(docker) = docker_or_skip("server_killed_mid_deploy_resumes_without_duplicates").await else {
        return;
    };
    let images = test_images(&docker).await;
    let mut p = Platform::start(BERTH.as_ref(), "docker").await;
    let file = p.write(
        "slow.yaml",
        &format!(
            "group: ops\nname: slow\nimage: {}\ninstances: 4\nports: [8080]\ncommand: [\"--start-delay-ms\", \"1500\"]\n\
             health:\n  http: /health\n  interval: 200ms\n  timeout: 1s\n  grace: 10s\nupgrade:\n  min_healthy_time: 0s\n",
            images.v1
        ),
    );
    p.cli_ok(&["deploy", "-f", &file, "--no-wait"]).await;
    // Wait for the agent to have started some containers, then SIGKILL everything of Berth.
    wait_until("containers to be created", Duration::from_secs(20), || async {
        (!node_containers(&docker, &p.node_id).await.is_empty()).then_some(())
    })
    .await;
    p.kill9().await;
    p.restart().await;

    let status = wait_until("all four instances running after the restart", Duration::from_secs(60), || async {
        let s = p.status("slow").await;
        (instances(&s).iter().filter(|i| i["state"] == "running").count() == 4).then_some(s)
    })
    .await;
    assert_eq!(status["version"], 1, "the accepted deploy survived");
    let live: HashSet<String> = instances(&status)
        .iter()
        .filter(|i| i["state"] == "running")
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    let on_engine = wait_until("no container beyond the live instances", Duration::from_secs(30), || async {
        let c = node_containers(&docker, &p.node_id).await;
        (c.len() == 4).then_some(c)
    })
    .await;
    assert_eq!(
        on_engine.into_iter().collect::<HashSet<_>>(),
        live,
        "each live instance is one container, no duplicates"
    );
}

/// A host port another process listens on is never published for a container: the instance
/// lands on another port at once, with no failed container and no crash loop.
#[tokio::test(flavor = "multi_thread")]
async fn a_held_host_port_is_skipped_for_containers() {
    let Some(docker) = docker_or_skip("a_held_host_port_is_skipped_for_containers").await else {
        return;
    };
    let images = test_images(&docker).await;
    let p = Platform::start(BERTH.as_ref(), "docker").await;
    let held_port = p.ports.0;
    let _held = std::net::TcpListener::bind(("127.0.0.1", held_port)).expect("hold a port");
    let file = p.write(
        "berth.yaml",
        &format!(
            "group: ops\nname: held\nimage: {}\ninstances: 2\nports: [8080]\nupgrade:\n  min_healthy_time: 0s\n",
            images.v1
        ),
    );
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "60"]).await;
    let live = p.live("held").await;
    assert_eq!(live.len(), 2);
    for inst in &live {
        let address = inst["address"].as_str().unwrap();
        assert!(!address.ends_with(&format!(":{held_port}")), "{live:?}");
        let answer = berth_tls::http().get(format!("http://{address}/")).send().await.expect("the container answers");
        assert_eq!(answer.status(), 200);
    }
    let events = p.cli_ok(&["events", "--app", "held"]).await;
    assert!(events.contains("instance.port_taken") && !events.contains("instance.failed"), "{events}");
    assert!(p.status("held").await.get("crash_loop").is_none());
}
