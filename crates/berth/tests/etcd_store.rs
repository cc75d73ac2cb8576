//! `berth server --store etcd://...`: the records live in a real three-member etcd cluster, apps
//! run on the real Docker engine, and the server survives SIGKILL and the loss of etcd members.

use std::time::Duration;

use berth_testkit::etcd::EtcdCluster;
use berth_testkit::{Platform, docker_or_skip, node_containers, test_images, wait_until};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn spec(image: &str, instances: u32) -> String {
    format!(
        "group: shop\nname: web\nimage: {image}\ninstances: {instances}\ncpu: 0.1\nmemory: 32\nports: [8080]\n\
         health:\n  http: /health\n  interval: 200ms\n  timeout: 1s\n  grace: 5s\nupgrade:\n  min_healthy_time: 0s\n"
    )
}

async fn running(p: &Platform) -> Vec<String> {
    let status = p.status("web").await;
    let mut ids: Vec<String> = status["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["state"] == "running")
        .filter_map(|i| i["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_on_etcd_runs_apps_and_survives_its_own_death_and_an_etcd_members() {
    let Some(docker) = docker_or_skip("a_server_on_etcd_runs_apps").await else { return };
    let Some(mut etcd) = EtcdCluster::start("a_server_on_etcd_runs_apps", 3) else { return };
    let images = test_images(&docker).await;
    let store = vec!["--store".to_string(), etcd.url(), "--store-prefix".into(), "/berth-test".into()];
    let mut p = Platform::start_split_args(BERTH.as_ref(), "docker", &store, &[]).await;
    let file = p.write("berth.yaml", &spec(&images.v1, 2));
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "60"]).await;
    let before = running(&p).await;
    assert_eq!(before.len(), 2);
    assert!(
        !p.data_dir().join("server/state.redb").exists(),
        "the records are in etcd, not in an embedded database beside the server"
    );

    // SIGKILL of the server: a new one reads everything back from etcd and changes nothing.
    p.restart().await;
    assert_eq!(running(&p).await, before, "the same instances, not new ones");
    assert_eq!(node_containers(&docker, &p.node_id).await.len(), 2, "no container started twice");
    let history: Value = serde_json::from_str(&p.cli_ok(&["app", "web", "history", "-o", "json"]).await).unwrap();
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");

    // One etcd member of three lost: deploys go on.
    etcd.kill(0);
    p.cli_ok(&["app", "web", "scale", "3", "--timeout", "60"]).await;
    assert_eq!(running(&p).await.len(), 3);

    // Two lost: a change is refused with a 503 naming the store; reads answer what was known.
    etcd.kill(1);
    let refused = p.cli(&["app", "web", "scale", "1", "--timeout", "30"]).await;
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(!refused.status.success(), "a change without an etcd quorum: {said}");
    assert!(said.contains("unavailable") && said.contains("etcd://"), "says the store is unavailable: {said}");
    assert_eq!(p.status("web").await["desired"], 3, "reads still answer");

    // A member back: changes go through again.
    tokio::task::block_in_place(|| etcd.restart(1));
    let scaled = wait_until("a change to go through again", Duration::from_secs(60), || async {
        p.cli(&["app", "web", "scale", "1", "--timeout", "60"]).await.status.success().then_some(())
    });
    scaled.await;
    // The refused change may have been applied once etcd had its quorum back (it was not
    // acknowledged, and said so): either way the app ends at one instance.
    wait_until("one instance left", Duration::from_secs(60), || async { (running(&p).await.len() == 1).then_some(()) })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_box_moves_onto_etcd_and_its_instances_keep_running() {
    let Some(docker) = docker_or_skip("a_single_box_moves_onto_etcd").await else { return };
    let Some(etcd) = EtcdCluster::start("a_single_box_moves_onto_etcd", 3) else { return };
    let images = test_images(&docker).await;
    // A single box on redb, as `berth up` makes it, with server, agent and router apart.
    let mut p = Platform::start_split(BERTH.as_ref(), "docker").await;
    let file = p.write("berth.yaml", &format!("{}services: [web.test]\n", spec(&images.v1, 2)));
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "60"]).await;
    let before = running(&p).await;
    let started = |docker: bollard::Docker, ids: Vec<String>| async move {
        let mut at = Vec::new();
        for id in ids {
            let info = docker.inspect_container(&format!("berth-{id}"), None).await.expect("inspect");
            at.push(info.state.and_then(|s| s.started_at).unwrap_or_default());
        }
        at
    };
    let started_before = started(docker.clone(), before.clone()).await;
    let load = berth_testkit::Load::start(&p.http, "web.test", 2, Some(Duration::from_millis(5)));
    wait_until("traffic to flow", Duration::from_secs(10), || async {
        (load.versions_since_mark().values().sum::<u64>() > 50).then_some(())
    })
    .await;

    // Export, stop the box's server, import into etcd, start a server on etcd at the same address.
    let export = p.cli_ok(&["store", "export"]).await;
    let exported: Value = serde_json::from_str(&export).expect("an export is JSON");
    assert_eq!(exported["format"], "berth-store/1");
    let export_file = p.write("state.json", &export);
    p.kill9().await;
    let url = etcd.url();
    let out = p.cli(&["store", "import", "--store", &url, "--store-prefix", "/moved", "-f", &export_file]).await;
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "import: {said}");
    assert!(said.contains("records imported into etcd://"), "{said}");
    let again = p.cli(&["store", "import", "--store", &url, "--store-prefix", "/moved", "-f", &export_file]).await;
    assert!(!again.status.success(), "a second import into the same store is refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("import only into an empty store"));
    p.set_extra_args(&["--store".into(), url, "--store-prefix".into(), "/moved".into()]);
    p.restart().await;

    // The same instances, never restarted, and the platform goes on from where it was.
    assert_eq!(running(&p).await, before, "the same instances");
    assert_eq!(started(docker.clone(), before.clone()).await, started_before, "no container restarted");
    let history: Value = serde_json::from_str(&p.cli_ok(&["app", "web", "history", "-o", "json"]).await).unwrap();
    assert_eq!(history.as_array().map(Vec::len), Some(1), "its versions came along: {history}");
    p.cli_ok(&["app", "web", "scale", "3", "--timeout", "60"]).await;
    assert_eq!(running(&p).await.len(), 3);
    load.mark();
    wait_until("traffic after the move", Duration::from_secs(10), || async {
        (load.versions_since_mark().values().sum::<u64>() > 100).then_some(())
    })
    .await;
    let report = load.finish().await;
    report.assert_clean(200);
}
