//! Secrets (issue 17, item 4): `berth secret set GROUP/NAME` seals a value the spec refers to
//! (`environment: {X: {secret: NAME}}`); it reaches the instance's environment on the real Docker
//! engine, and appears nowhere else: not in any API answer, not in the store's file.

use std::time::Duration;

use berth_testkit::{Platform, docker_or_skip, test_images, wait_until};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn said(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The testapp answers `/` with `APP_VERSION` from its environment: the secret's value, here.
fn spec(image: &str) -> String {
    format!(
        "group: shop\nname: web\nimage: {image}\ninstances: 1\nports: [8080]\n\
         environment:\n  APP_VERSION: {{secret: app_version}}\n  PLAIN: visible\n\
         health:\n  http: /health\n  interval: 200ms\n  grace: 5s\n"
    )
}

async fn served_version(p: &Platform) -> String {
    let status = p.status("web").await;
    let running: Vec<&Value> =
        status["instances"].as_array().unwrap().iter().filter(|i| i["state"] == "running").collect();
    assert_eq!(running.len(), 1, "{status:#}");
    let address = running[0]["address"].as_str().expect("address");
    let answer: Value = berth_tls::http().get(format!("http://{address}/")).send().await.unwrap().json().await.unwrap();
    answer["version"].as_str().unwrap_or_default().to_string()
}

fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files_under(&path, out) } else { out.push(path) }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_reaches_the_instance_and_nothing_else_shows_it() {
    let Some(docker) = docker_or_skip("a_secret_reaches_the_instance_and_nothing_else_shows_it").await else {
        return;
    };
    let images = test_images(&docker).await;
    let p = Platform::start(BERTH.as_ref(), "docker").await;
    let file = p.write("web.yaml", &spec(&images.v1));

    // Deploying before the secret exists is refused, naming the variable; nothing is written.
    let out = p.cli(&["deploy", "-f", &file]).await;
    assert!(
        !out.status.success()
            && said(&out).contains("environment.APP_VERSION: secret app_version does not exist in group shop"),
        "{}",
        said(&out)
    );
    let (status, _) = p.request("GET", "/v1/apps/shop/web", "application/json", "").await;
    assert_eq!(status, 404, "refused before anything was written");

    let value = "s3cr3t-7f1c9e";
    let out = p.cli_with_input(&["secret", "set", "shop/app_version"], format!("{value}\n").as_bytes()).await;
    assert!(out.status.success(), "{}", said(&out));
    assert!(!said(&out).contains(value), "{}", said(&out));
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "90"]).await;
    // Piped with its newline, sealed without it, and handed to the process as it was set.
    assert_eq!(served_version(&p).await, value);

    // Nowhere else: not in what the API answers to any reader, the CLI's JSON and tables ...
    let mut seen = String::new();
    for args in [
        &["app", "web", "status", "-o", "json"][..],
        &["app", "ls", "-o", "json"],
        &["app", "web", "history", "-o", "json"],
        &["app", "web", "env", "ls"],
        &["app", "web", "env", "ls", "-o", "json"],
        &["secret", "ls", "-o", "json"],
        &["secret", "ls"],
        &["events", "-n", "500", "-o", "json"],
        &["node", "ls", "-o", "json"],
        &["plan", "-f", &file],
    ] {
        seen.push_str(&p.cli_ok(args).await);
    }
    for path in ["/v1/apps", "/v1/apps/shop/web", "/v1/apps/shop/web/versions", "/v1/instances", "/v1/secrets"] {
        seen.push_str(&p.get_text(path).await);
    }
    assert!(seen.contains("app_version") && seen.contains("visible"), "the reference and plain values do show");
    assert!(!seen.contains(value), "the value shows somewhere:\n{seen}");
    let env = p.cli_ok(&["app", "web", "env", "ls"]).await;
    assert!(env.contains("APP_VERSION=<secret app_version>"), "{env}");
    let listed: Value = serde_json::from_str(&p.cli_ok(&["secret", "ls", "-o", "json"]).await).unwrap();
    assert_eq!(listed[0]["used_by"][0], "shop/web", "{listed}");
    assert_eq!(listed[0]["version"], 1, "{listed}");
    // ... nor in any file Berth keeps: the store holds it sealed. (The app's own output is its
    // to print: the testapp logs its version when it starts.)
    let mut files = Vec::new();
    files_under(&p.data_dir(), &mut files);
    files.retain(|f| !f.components().any(|c| c.as_os_str() == "logs"));
    assert!(files.iter().any(|f| f.extension().is_some_and(|e| e == "redb")), "the store is under the data dir");
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        assert!(!bytes.windows(value.len()).any(|w| w == value.as_bytes()), "{} holds the value in clear", f.display());
    }

    // The agent's read of the values is audited (never the values); a user's token gets none.
    let audit: Value = serde_json::from_str(&p.cli_ok(&["audit", "-o", "json"]).await).unwrap();
    let read = audit.as_array().unwrap().iter().find(|e| e["action"] == "secret.read").expect("the read is audited");
    assert_eq!((read["actor"].as_str(), read["outcome"].as_str()), (Some(p.node_id.as_str()), Some("done")), "{read}");
    assert!(!audit.to_string().contains(value), "{audit}");
    let id = p.status("web").await["instances"][0]["id"].as_str().unwrap().to_string();
    let (status, body) =
        p.request("GET", &format!("/v1/nodes/{}/instances/{id}/secrets", p.node_id), "application/json", "").await;
    assert_eq!(status, 401, "{body}");

    // A viewer lists names only and cannot set; a deployer of another group cannot touch it.
    let viewer: Value = serde_json::from_str(
        &p.cli_ok(&["token", "create", "--role", "viewer", "--group", "shop", "-o", "json"]).await,
    )
    .unwrap();
    let viewer = viewer["token"].as_str().unwrap().to_string();
    let out = p.cli(&["--token", &viewer, "secret", "ls", "-o", "json"]).await;
    assert!(
        out.status.success() && said(&out).contains("app_version") && !said(&out).contains(value),
        "{}",
        said(&out)
    );
    let out = p.cli_with_input(&["--token", &viewer, "secret", "set", "shop/app_version"], b"x").await;
    assert!(said(&out).contains("a viewer token cannot change apps"), "{}", said(&out));
    let pay: Value = serde_json::from_str(
        &p.cli_ok(&["token", "create", "--role", "deployer", "--group", "pay", "-o", "json"]).await,
    )
    .unwrap();
    let pay = pay["token"].as_str().unwrap().to_string();
    let out = p.cli(&["--token", &pay, "secret", "rm", "shop/app_version"]).await;
    assert!(said(&out).contains("cannot act in group shop"), "{}", said(&out));
    let out = p.cli(&["--token", &pay, "secret", "ls", "-o", "json"]).await;
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).ok(), Some(Value::Array(vec![])), "{}", said(&out));

    // In use, it cannot be removed; a new value reaches the instances that start after it.
    let out = p.cli(&["secret", "rm", "shop/app_version"]).await;
    assert!(said(&out).contains("secret shop/app_version is in use by shop/web"), "{}", said(&out));
    let rotated = p.write("rotated.txt", "rotated-93b2");
    p.cli_ok(&["secret", "set", "shop/app_version", "--from-file", &rotated]).await;
    p.cli_ok(&["app", "web", "restart", "--timeout", "90"]).await;
    wait_until("the restarted instance serves the new value", Duration::from_secs(60), || async {
        (served_version(&p).await == "rotated-93b2").then_some(())
    })
    .await;
    let events = p.cli_ok(&["events", "-n", "500"]).await;
    assert!(events.contains("secret shop/app_version set (version 2)"), "{events}");

    // Out of use, it goes.
    let plain = p.write("plain.yaml", &spec(&images.v1).replace("{secret: app_version}", "v9"));
    p.cli_ok(&["deploy", "-f", &plain, "--timeout", "90"]).await;
    p.cli_ok(&["secret", "rm", "shop/app_version"]).await;
    assert_eq!(p.cli_ok(&["secret", "ls", "-o", "json"]).await.trim(), "[]");
}
