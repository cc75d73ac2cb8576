//! The core scenario on the real Docker engine: deploy 3, scale 5 and 1, upgrade, destroy.

use std::time::Duration;

use berth_testkit::{Platform, docker_or_skip, instance_answer, node_containers, test_images, wait_until};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn spec(image: &str, instances: u32) -> String {
    format!(
        "group: shop\nname: web\nimage: {image}\ninstances: {instances}\ncpu: 0.1\nmemory: 32\nports: [8080]\n\
         health:\n  http: /health\n  interval: 200ms\n  timeout: 1s\n  grace: 5s\nupgrade:\n  min_healthy_time: 0s\n"
    )
}

/// Every live instance answers at its address with its own id and the expected version.
async fn check_instances(p: &Platform, want: usize, version: &str) -> Vec<String> {
    let status = p.status("web").await;
    assert_eq!(status["desired"], want as u64);
    let live: Vec<&Value> =
        status["instances"].as_array().unwrap().iter().filter(|i| i["state"] == "running").collect();
    assert_eq!(live.len(), want, "{status:#}");
    let mut ids = Vec::new();
    for inst in live {
        let address = inst["address"].as_str().expect("address");
        let answer = instance_answer(address).await;
        assert_eq!(answer["instance"], inst["id"], "the instance at {address} is the one Berth says");
        assert_eq!(answer["version"], version);
        ids.push(inst["id"].as_str().unwrap().to_string());
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_scale_upgrade_destroy_on_docker() {
    let Some(docker) = docker_or_skip("deploy_scale_upgrade_destroy_on_docker").await else {
        return;
    };
    let images = test_images(&docker).await;
    let p = Platform::start(BERTH.as_ref(), "docker").await;
    let file = p.write("berth.yaml", &spec(&images.v1, 3));

    p.cli_ok(&["deploy", "-f", &file, "--timeout", "60"]).await;
    let first = check_instances(&p, 3, "v1").await;
    assert_eq!(node_containers(&docker, &p.node_id).await.len(), 3, "one container per instance");

    // Limits and identity reach the container.
    let name = format!("berth-{}", first[0]);
    let info = docker.inspect_container(&name, None).await.expect("inspect");
    let host = info.host_config.expect("host config");
    assert_eq!(host.memory, Some(32 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(100_000_000));
    assert!(host.pids_limit.unwrap_or(0) > 0, "a pids limit is set");
    let labels = info.config.and_then(|c| c.labels).expect("labels");
    assert_eq!(labels["berth.app"], "web");
    assert_eq!(labels["berth.group"], "shop");
    assert_eq!(labels["berth.instance"], first[0]);

    p.cli_ok(&["app", "web", "scale", "5", "--timeout", "60"]).await;
    let five = check_instances(&p, 5, "v1").await;
    assert!(first.iter().all(|id| five.contains(id)), "scaling up keeps the running instances");

    p.cli_ok(&["app", "shop/web", "scale", "1", "--timeout", "60"]).await;
    check_instances(&p, 1, "v1").await;
    wait_until("scaled-down containers to be removed", Duration::from_secs(30), || async {
        (node_containers(&docker, &p.node_id).await.len() == 1).then_some(())
    })
    .await;

    p.cli_ok(&["app", "web", "upgrade", &images.v2, "--timeout", "60"]).await;
    let upgraded = check_instances(&p, 1, "v2").await;
    let status = p.status("web").await;
    assert_eq!(status["version"], 2);
    assert_eq!(
        status["instances"].as_array().unwrap().iter().find(|i| i["id"] == upgraded[0].as_str()).unwrap()["version"],
        2
    );
    let versions: Value = serde_json::from_str(&p.cli_ok(&["app", "web", "history", "-o", "json"]).await).unwrap();
    assert_eq!(versions.as_array().unwrap().len(), 2);
    assert!(versions[1]["change"].as_str().unwrap().contains("image"), "{versions}");

    p.cli_ok(&["app", "web", "destroy", "--timeout", "60"]).await;
    assert!(node_containers(&docker, &p.node_id).await.is_empty(), "destroy removes every container");
    let apps: Value = serde_json::from_str(&p.cli_ok(&["app", "ls", "-o", "json"]).await).unwrap();
    assert_eq!(apps, Value::Array(vec![]));
    let events = p.cli_ok(&["events", "-n", "500"]).await;
    for kind in ["app.created", "app.scaled", "app.updated", "instance.running", "app.destroyed"] {
        assert!(events.contains(kind), "events lack {kind}:\n{events}");
    }
}

/// `app NAME exec` on a container is `docker exec`: the image's own program, its output apart,
/// its exit code.
#[tokio::test(flavor = "multi_thread")]
async fn exec_in_a_container() {
    let Some(docker) = docker_or_skip("exec_in_a_container").await else {
        return;
    };
    let images = test_images(&docker).await;
    let p = Platform::start(BERTH.as_ref(), "docker").await;
    let spec =
        format!("group: ops\nname: boxed\nimage: {}\nports: [8080]\nupgrade:\n  min_healthy_time: 0s\n", images.v1);
    p.cli_ok(&["deploy", "-f", &p.write("boxed.yaml", &spec), "--timeout", "60"]).await;
    let out = p.cli(&["app", "boxed", "exec", "--", "/berth-testapp", "--bogus"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("usage: berth-testapp"), "{stderr}");

    // -i: the client's stdin reaches the container's program, and its end closes the program's.
    let echo = ["app", "boxed", "exec", "-i", "--", "/berth-testapp", "--echo-stdin", "--exit-code", "6"];
    let out = p.cli_with_input(&echo, b"hello\nworld\n").await;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert_eq!(stdout, "tty=false\ngot: hello\ngot: world\n");
    assert_eq!(stderr.trim(), "stdin closed");

    // -t: a terminal in the container; ^D on it is the end of input. Keys are typed once the
    // program is up, as a person would: typed earlier, the local terminal would still be cooked.
    let mut term = p.cli_in_sized_terminal("app boxed exec -it -- /berth-testapp --echo-stdin", 100, 30);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut screen = term.stdout.take().unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("tty=true") {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(30), screen.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "the session ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    term.stdin.as_mut().unwrap().write_all(b"typed\r\x04").await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), screen.read_to_end(&mut seen)).await.unwrap().unwrap();
    let out = term.wait().await.unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("got: typed") && text.contains("stdin closed"), "{text}");
    assert_eq!(out.code(), Some(3), "{text}");
}
