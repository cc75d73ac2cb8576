//! The router end to end: Host routing, distribution, no failed request while instances die and
//! apps scale, static upstreams, status and explain, Lua rules.

use std::collections::HashMap;
use std::time::Duration;

use berth_testkit::{Load, Platform, docker_or_skip, test_images, wait_until};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn exec_spec(name: &str, instances: u32, host: &str) -> String {
    let bin = berth_testkit::image::testapp_binary();
    format!(
        "group: shop\nname: {name}\ndriver: exec\ninstances: {instances}\ncommand: [{}]\nservices: [{host}]\n\
         health:\n  http: /health\n  interval: 200ms\n  timeout: 1s\nupgrade:\n  min_healthy_time: 0s\n",
        bin.display()
    )
}

async fn instance_of(p: &Platform, host: &str) -> String {
    let (status, body) = p.via_router(host, "/").await.expect("router answers");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["instance"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_host_and_drops_nothing_while_instances_die_and_scale() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let file = p.write("web.yaml", &exec_spec("web", 3, "shop.test"));
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;

    // By Host, by the wildcard name, and an unknown host.
    let ids: Vec<String> = p.live("web").await.iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    wait_until("the router to know all three instances", Duration::from_secs(5), || async {
        let status = p.admin_get("/status").await;
        (status["cls:shop/web"].as_array().map(Vec::len) == Some(3)).then_some(())
    })
    .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        *seen.entry(instance_of(&p, "shop.test").await).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "every instance gets traffic: {seen:?}");
    assert!(seen.values().all(|n| *n >= 6), "round robin spreads evenly: {seen:?}");
    assert!(ids.contains(&instance_of(&p, "web.shop.berth.test").await), "NAME.GROUP.<domain> routes too");
    let (status, body) = p.via_router("nobody.test", "/").await.unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("no route"), "{body}");

    let load = Load::start(&p.http, "shop.test", 8, None);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Kill an instance under load.
    let victim = p.live("web").await[0].clone();
    let pid = victim["handle"].as_str().unwrap().to_string();
    std::process::Command::new("kill").args(["-9", &pid]).status().unwrap();
    wait_until("a replacement", Duration::from_secs(20), || async {
        let live = p.live("web").await;
        let running = live.iter().filter(|i| i["state"] == "running").count();
        (running == 3 && !live.iter().any(|i| i["id"] == victim["id"])).then_some(())
    })
    .await;

    // Scale up and down under load.
    p.cli_ok(&["app", "web", "scale", "5", "--timeout", "30"]).await;
    p.cli_ok(&["app", "web", "scale", "2", "--timeout", "30"]).await;
    wait_until("scaled-down instances to stop", Duration::from_secs(20), || async {
        let s = p.status("web").await;
        (s["counts"]["stopping"] == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.finish().await;
    report.assert_clean(300);
    let ok = report.ok;

    let metrics = p.admin_get("/metrics").await;
    let web = &metrics["clusters"]["cls:shop/web"];
    assert!(web["requests"][1][1].as_u64().unwrap() >= ok, "2xx counted: {web}");
    let log = std::fs::read_to_string(p.data_dir().join("router/access.log")).unwrap_or_default();
    let line: Value = serde_json::from_str(log.lines().last().expect("access log lines")).unwrap();
    assert_eq!(line["host"], "shop.test");
    assert!(line["ms"].as_f64().is_some() && line["upstream"].is_string(), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_instances_killed_under_load_drop_nothing() {
    let Some(docker) = docker_or_skip("docker_instances_killed_under_load_drop_nothing").await else {
        return;
    };
    let images = test_images(&docker).await;
    let p = Platform::start(BERTH.as_ref(), "docker").await;
    let spec = format!(
        "group: shop\nname: api\nimage: {}\ninstances: 3\nports: [8080]\nservices: [api.test]\n\
         health:\n  http: /health\n  interval: 200ms\n  timeout: 1s\nupgrade:\n  min_healthy_time: 0s\n",
        images.v1
    );
    let file = p.write("api.yaml", &spec);
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "60"]).await;
    wait_until("the router to know the instances", Duration::from_secs(5), || async {
        (p.admin_get("/status").await["cls:shop/api"].as_array().map(Vec::len) == Some(3)).then_some(())
    })
    .await;
    let load = Load::start(&p.http, "api.test", 8, None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim = p.live("api").await[0]["id"].as_str().unwrap().to_string();
    docker
        .kill_container(&format!("berth-{victim}"), None::<bollard::query_parameters::KillContainerOptions>)
        .await
        .unwrap();
    p.cli_ok(&["app", "api", "scale", "4", "--timeout", "60"]).await;
    p.cli_ok(&["app", "api", "scale", "2", "--timeout", "60"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    load.finish().await.assert_clean(200);
}

#[tokio::test(flavor = "multi_thread")]
async fn static_upstreams_status_and_explain() {
    let mut p = Platform::start(BERTH.as_ref(), "exec").await;
    // A service that is not a Berth app: the test app started by hand.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut outside = std::process::Command::new(berth_testkit::image::testapp_binary())
        .args(["--port", &port.to_string(), "--version", "legacy"])
        .spawn()
        .unwrap();
    let body = format!("{{\"servers\": [{{\"host\": \"127.0.0.1\", \"port\": {port}, \"weight\": 2}}]}}");
    // The router passes a change on with the caller's own API token, never with its own.
    let anonymous = berth_tls::http()
        .put(format!("http://{}/upstream/legacy.test", p.admin))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert!(anonymous.text().await.unwrap().contains("with your own API token"));
    let (status, answer) = p.admin_request("PUT", "/upstream/legacy.test", &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["applied"], true, "the admin API answers once the router applied it");
    let (status, text) = p.via_router("legacy.test", "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("legacy"), "{text}");

    let status_page = p.admin_get("/status").await;
    let servers = status_page["cls:legacy.test"].as_array().expect("Slardar shape: cls:<name> -> list");
    for key in ["server", "weight", "status", "msg", "fail_num", "lastmodified"] {
        assert!(servers[0].get(key).is_some(), "status lacks {key}: {status_page}");
    }
    assert_eq!(servers[0]["weight"], 2);
    assert_eq!(servers[0]["status"], "ok");
    assert!(status_page["generation"].as_u64().unwrap() >= 1 && status_page["applied_at"].as_i64().is_some());

    let explain = p.admin_get("/explain?host=legacy.test&path=/x").await;
    assert_eq!(explain["cluster"], "cls:legacy.test");
    assert_eq!(explain["candidates"][0]["eligible"], true);
    assert_eq!(explain["picked"]["server"], format!("127.0.0.1:{port}"));
    let (bad, _) = p.admin_request("PUT", "/upstream/Bad_Name", &body).await;
    assert_eq!(bad, 422);
    let (bad, _) = p.admin_request("PUT", "/upstream/x.test", "{\"servers\": [{\"host\": \"h\", \"port\": 0}]}").await;
    assert_eq!(bad, 422);

    // Stored by the control plane: a restart keeps it.
    p.restart().await;
    let (status, _) = wait_until("the upstream after a restart", Duration::from_secs(10), || async {
        p.via_router("legacy.test", "/").await.ok().filter(|(s, _)| *s == 200)
    })
    .await;
    assert_eq!(status, 200);

    // A dead upstream is marked down by the active check, and fails open rather than 404.
    outside.kill().unwrap();
    let _ = outside.wait();
    wait_until("the active check to mark it down", Duration::from_secs(15), || async {
        let s = p.admin_get("/status").await;
        (s["cls:legacy.test"][0]["status"] == "err").then_some(())
    })
    .await;
    let explain = p.admin_get("/explain?host=legacy.test").await;
    assert_eq!(explain["picked"]["fail_open"], true, "{explain}");

    let (status, _) = p.admin_request("DELETE", "/upstream/legacy.test", "").await;
    assert_eq!(status, 200);
    assert_eq!(p.via_router("legacy.test", "/").await.unwrap().0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn lua_rules_deny_rewrite_reject_bad_scripts_and_stop_endless_loops() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let file = p.write("web.yaml", &exec_spec("web", 1, "rules.test"));
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    let rules = p.write(
        "rules.lua",
        "if req.method == \"DELETE\" then return deny(403, \"no deletes here\") end\n\
         if req.path == \"/r\" then rewrite(\"/health\") end\n",
    );
    let set = p.cli_ok(&["app", "web", "rules", "set", &rules]).await;
    assert!(set.contains("runs natively"), "{set}");
    let client = berth_tls::http();
    let url = format!("http://{}/anything", p.http);
    let denied = wait_until("the rule to be applied", Duration::from_secs(5), || async {
        let r = client.delete(&url).header("host", "rules.test").send().await.ok()?;
        (r.status() == 403).then_some(r)
    })
    .await;
    assert!(denied.text().await.unwrap().contains("no deletes here"));
    let (status, body) = p.via_router("rules.test", "/r").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("healthy"), "rewritten to /health: {body}");
    let (status, _) = p.via_router("rules.test", "/").await.unwrap();
    assert_eq!(status, 200);

    // A syntax error is refused with its line; the old rule stays in force.
    let broken = p.write("broken.lua", "local a = 1\nif a then\n  return deny(403\nend\n");
    let out = p.cli(&["app", "web", "rules", "set", &broken]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.lua:4:"), "{err}");
    let (status, answer) = p.admin_request("PUT", "/lua/app/shop/web", "return deny(\n").await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["line"], 2);
    // ... and by the control plane's API itself, which stores nothing.
    let (status, answer) = p.request("PUT", "/v1/apps/shop/web/rules", "text/x-lua", "return deny(\n").await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        (&answer["details"][0]["field"], &answer["details"][0]["line"]),
        (&Value::from("script"), &Value::from(2))
    );
    let r = client.delete(&url).header("host", "rules.test").send().await.unwrap();
    assert_eq!(r.status(), 403, "the previous rule is still in force");
    let lua = p.admin_get("/lua").await;
    assert_eq!(lua[0]["target"]["name"], "shop/web");
    assert_eq!(lua[0]["version"].as_str().unwrap().len(), 16);
    assert_eq!(lua[0]["engine"], "native", "a rule of comparisons and calls runs without the VM: {lua}");

    // A rule that needs the VM (a loop over a table) runs there, with the same API.
    let needs_vm = "for _, prefix in ipairs({'/adm', '/root'}) do\n\
                    if req.path:sub(1, #prefix) == prefix then return deny(401, 'admins only') end\nend";
    let (status, answer) = p.admin_request("PUT", "/lua/app/shop/web", needs_vm).await;
    assert_eq!(status, 200, "{answer}");
    let (status, body) = wait_until("the VM rule to be applied", Duration::from_secs(5), || async {
        p.via_router("rules.test", "/admin").await.ok().filter(|(s, _)| *s == 401)
    })
    .await;
    assert_eq!(status, 401);
    assert!(body.contains("admins only"), "{body}");
    assert_eq!(p.admin_get("/lua").await[0]["engine"], "lua");

    // An endless loop is cut off by its budget, quickly; the router lives on. By default a
    // failing rule fails open: the request is served as if there were no rule.
    let (status, answer) = p.admin_request("PUT", "/lua/app/shop/web", "while true do end").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["applied"], true);
    let started = std::time::Instant::now();
    let (status, body) = p.via_router("rules.test", "/").await.unwrap();
    assert_eq!(status, 200, "served as if there were no rule: {body}");
    assert!(started.elapsed() < Duration::from_secs(2), "cut off quickly: {:?}", started.elapsed());
    let lua = p.admin_get("/lua").await;
    assert_eq!(lua[0]["on_error"], "open", "{lua}");
    assert!(lua[0]["overruns"].as_u64().unwrap() >= 1, "{lua}");
    // Closed: refused with 500, and the body says nothing of the script.
    // Only the policy changes (the script is the same): `applied` still means the router has it.
    let (status, answer) = p.admin_request("PUT", "/lua/app/shop/web?on_error=closed", "while true do end").await;
    assert_eq!((status, &answer["applied"]), (200, &Value::Bool(true)), "{answer}");
    let (code, body) = p.via_router("rules.test", "/").await.unwrap();
    assert_eq!(code, 500, "closed from the first request after the answer: {body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), serde_json::json!({"error": "request rule failed"}));
    let metrics = p.admin_get("/metrics").await;
    let web = &metrics["clusters"]["cls:shop/web"];
    let failed = web["rule_overruns"].as_u64().unwrap() + web["rule_suspended"].as_u64().unwrap();
    assert!(failed >= 2, "every failed request is counted: {web}");

    p.cli_ok(&["app", "web", "rules", "rm"]).await;
    wait_until("rules removed", Duration::from_secs(5), || async {
        p.via_router("rules.test", "/").await.ok().filter(|(s, _)| *s == 200)
    })
    .await;
}

/// A rule some requests make pathological (a pattern that backtracks for ever, in the VM and in
/// a native rule) costs its own app a budget per request at most, then is suspended: another
/// app's requests are answered all along, and `berth up` stops on SIGTERM while the attack goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_pathological_rule_delays_no_other_app_and_shutdown_completes() {
    let mut p = Platform::start(BERTH.as_ref(), "exec").await;
    for (name, host) in [("vm", "vm.test"), ("native", "native.test"), ("calm", "calm.test")] {
        let file = p.write(&format!("{name}.yaml"), &exec_spec(name, 1, host));
        p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    }
    let vm_rule = "local i = string.find((\"a\"):rep(50000), \".-.-.-.-.-b\") return deny(200, tostring(i))";
    let native_rule = "if req.path:find(\"^/api/.-/.-/.-/admin\") then return deny(403, \"no admin\") end";
    for (app, rule) in [("shop/vm", vm_rule), ("shop/native", native_rule)] {
        let (status, answer) = p.admin_request("PUT", &format!("/lua/app/{app}?on_error=closed"), rule).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["applied"], true, "{answer}");
    }
    // Four clients keep sending each bad app what makes its rule pathological.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attack_path = format!("/api/{}", "/".repeat(1600));
    let mut attackers = Vec::new();
    for i in 0..4 {
        let (stop, url, path) = (stop.clone(), format!("http://{}", p.http), attack_path.clone());
        let host = if i % 2 == 0 { "vm.test" } else { "native.test" };
        attackers.push(tokio::spawn(async move {
            let client = berth_tls::http_builder().timeout(Duration::from_secs(30)).build().unwrap();
            let mut refused = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client.get(format!("{url}{path}")).header("host", host).send().await;
                if r.is_ok_and(|r| r.status() == 500) {
                    refused += 1;
                }
            }
            refused
        }));
    }
    // The calm app answers every request, each within a bound far below an unbounded rule's
    // seconds (before budgets counted pattern steps, these timed out).
    let client = berth_tls::http_builder().timeout(Duration::from_secs(2)).build().unwrap();
    for i in 0..60 {
        let r = client.get(format!("http://{}/", p.http)).header("host", "calm.test").send().await;
        let status = r.map(|r| r.status().as_u16()).map_err(|e| e.to_string());
        assert_eq!(status, Ok(200), "request {i} to the calm app");
    }
    // The attacked rules did run out of their budget (the calm requests may all have been answered
    // before the first attack's budget was spent).
    wait_until("both attacked rules to overrun", Duration::from_secs(10), || async {
        let lua = p.admin_get("/lua").await;
        lua.as_array()?.iter().all(|s| s["overruns"].as_u64().is_some_and(|n| n >= 1)).then_some(())
    })
    .await;
    // SIGTERM stops it while the rules are still being attacked.
    let status = p.terminate(Duration::from_secs(20)).await;
    assert!(
        status.is_some(),
        "berth up did not stop on SIGTERM: {}",
        p.log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for a in attackers {
        // A closed rule refuses what it cannot decide.
        assert!(a.await.unwrap() > 0, "the attacked rules answered 500");
    }
}

/// `deploy` returns once every live router routes the change, so the first request after it finds
/// the app. A router that lags is named rather than waited on for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_returns_once_every_live_router_routes_it() {
    let p = Platform::start_split(BERTH.as_ref(), "exec").await;
    let first = p.write("web.yaml", &exec_spec("web", 1, "first.test"));
    p.cli_ok(&["deploy", "-f", &first, "--timeout", "30"]).await;
    // No waiting here: the router process applied the change before `deploy` returned.
    let (status, body) = p.via_router("first.test", "/").await.unwrap();
    assert_eq!(status, 200, "the first request after deploy: {body}");

    // A router that reports an old index for as long as the deploy runs holds it up, then is named.
    // It joins as any router does, with the join token.
    let token = std::fs::read_to_string(p.join_token_file()).unwrap();
    let joined: Value = berth_tls::http()
        .post(format!("{}/v1/join", p.api))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({"id": "stale-router", "kind": "router"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let credential = joined["credential"].as_str().expect("a credential").to_string();
    let stale = tokio::spawn({
        let url = format!("{}/v1/routers/stale-router", p.api);
        async move {
            let client = berth_tls::http();
            let report = serde_json::json!({"index": 1, "zone": "default", "admin": "127.0.0.1:9"});
            loop {
                let _ = client.post(&url).bearer_auth(&credential).json(&report).send().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    wait_until("the stale router to be listed", Duration::from_secs(5), || async {
        let routers: Value = p.get("/v1/routers").await.ok()?;
        routers.as_array()?.iter().any(|r| r["id"] == "stale-router" && r["live"] == true).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    let second = p.write("api.yaml", &exec_spec("api", 1, "second.test"));
    let out = p.cli(&["deploy", "-f", &second, "--timeout", "30"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the deployment itself succeeded: {err}");
    assert!(err.contains("router(s) stale-router have not applied index"), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(5), "it waited for the stale router");
    stale.abort();
}

/// A host name has one owner. An app's own NAME.GROUP.<domain> name cannot be taken by another
/// app or a static upstream, a name one app serves cannot be claimed by a second, and a name is
/// free again once its owner is gone.
#[tokio::test(flavor = "multi_thread")]
async fn host_names_have_one_owner() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let p = &p;
    let deploy = |name: &str, host: &str| {
        let file = p.write(&format!("{name}.yaml"), &exec_spec(name, 1, host));
        async move { p.cli(&["deploy", "-f", &file, "--timeout", "30"]).await }
    };
    assert!(deploy("web", "web.test").await.status.success());
    wait_until("the router to route web", Duration::from_secs(10), || async {
        p.via_router("web.shop.berth.test", "/").await.ok().filter(|(s, _)| *s == 200)
    })
    .await;

    // Another app may not list web's own name.
    let out = deploy("steal", "web.shop.berth.test").await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("services[0]") && err.contains("reserved for app shop/web"), "{err}");
    assert!(p.get("/v1/apps/shop/steal").await.is_err(), "nothing of the refused app is kept");

    // Two apps, one name: the second is refused with the owner's name.
    assert!(deploy("front", "store.test").await.status.success());
    let out = deploy("front2", "store.test").await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && err.contains("already belongs to app shop/front"), "{err}");

    // A static upstream can take neither an app's own name nor one an app serves.
    let body = r#"{"servers":[{"host":"127.0.0.1","port":9}]}"#;
    let (status, v) = p.request("PUT", "/v1/upstreams/web.shop.berth.test", "application/json", body).await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("reserved for app shop/web"), "{v}");
    let (status, v) = p.request("PUT", "/v1/upstreams/store.test", "application/json", body).await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("already belongs to app shop/front"), "{v}");
    // ... and an app cannot take an upstream's name.
    let (status, v) = p.request("PUT", "/v1/upstreams/legacy.test", "application/json", body).await;
    assert_eq!(status, 200, "{v}");
    let out = deploy("front3", "legacy.test").await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && err.contains("already belongs to static upstream legacy.test"), "{err}");
    let (code, body) = p.via_router("web.shop.berth.test", "/").await.unwrap();
    assert_eq!(code, 200, "web still answers on its name: {body}");

    // Once its owner is gone, a name is free.
    p.cli_ok(&["app", "front", "destroy"]).await;
    wait_until("front to be gone", Duration::from_secs(30), || async {
        p.get("/v1/apps/shop/front").await.is_err().then_some(())
    })
    .await;
    assert!(deploy("front2", "store.test").await.status.success());
    let (status, _) = p.request("DELETE", "/v1/upstreams/legacy.test", "application/json", "").await;
    assert_eq!(status, 200);
    assert!(deploy("front3", "legacy.test").await.status.success());
}

/// The access log holds every request of a burst once the router has stopped cleanly, with the
/// fields a person needs; `--access-log off` writes none.
#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_holds_every_request_and_can_be_off() {
    let mut p = Platform::start(BERTH.as_ref(), "exec").await;
    let file = p.write("web.yaml", &exec_spec("web", 2, "log.test"));
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    wait_until("the router to route log.test", Duration::from_secs(10), || async {
        p.via_router("log.test", "/").await.ok().filter(|(s, _)| *s == 200)
    })
    .await;
    let log_path = p.data_dir().join("router/access.log");
    let before = std::fs::read_to_string(&log_path).unwrap_or_default().lines().count();
    const BURST: usize = 400;
    let client = berth_tls::http();
    let sends = (0..BURST).map(|n| {
        let client = client.clone();
        let url = format!("http://{}/?burst={n}", p.http);
        async move { client.get(url).header("host", "log.test").send().await.map(|r| r.status().as_u16()) }
    });
    let statuses = futures_util::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| matches!(s, Ok(200))), "{statuses:?}");
    let (code, _) = p.via_router("nobody.test", "/missing").await.unwrap();
    assert_eq!(code, 404);
    assert!(p.terminate(Duration::from_secs(20)).await.is_some_and(|s| s.success()), "a clean stop");

    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = text.lines().skip(before).map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let burst: Vec<&Value> =
        lines.iter().filter(|l| l["path"].as_str().is_some_and(|p| p.starts_with("/?burst="))).collect();
    assert_eq!(burst.len(), BURST, "every request of the burst is logged");
    let one = burst[0];
    for field in ["ts", "remote", "method", "host", "path", "status", "bytes", "ms", "upstream", "app", "cluster"] {
        assert!(!one[field].is_null(), "{field} in {one}");
    }
    assert_eq!((one["status"].as_u64(), one["app"].as_str()), (Some(200), Some("shop/web")), "{one}");
    assert!(one["bytes"].as_u64().unwrap() > 0, "{one}");
    let missing = lines.iter().find(|l| l["host"] == "nobody.test").expect("the 404 is logged too");
    assert_eq!((missing["status"].as_u64(), missing["upstream"].is_null()), (Some(404), true), "{missing}");

    // Without a clean stop: lines reach the file on their own within the flush interval, so a
    // kill -9 loses at most the last 100 ms of them.
    p.restart().await;
    wait_until("the router to route log.test again", Duration::from_secs(10), || async {
        p.via_router("log.test", "/").await.ok().filter(|(s, _)| *s == 200)
    })
    .await;
    for n in 0..50 {
        let (status, _) = p.via_router("log.test", &format!("/?unflushed={n}")).await.unwrap();
        assert_eq!(status, 200);
    }
    let count =
        || std::fs::read_to_string(&log_path).unwrap_or_default().lines().filter(|l| l.contains("?unflushed=")).count();
    // The writer's 100 ms tick, with room for a loaded machine.
    wait_until("the lines in the file with the router still running", Duration::from_secs(2), || async {
        (count() == 50).then_some(())
    })
    .await;
    p.kill9().await;
    assert_eq!(count(), 50, "a kill -9 took none of them");

    let q = Platform::start_args(BERTH.as_ref(), "exec", &["--access-log".into(), "off".into()]).await;
    let file = q.write("web.yaml", &exec_spec("web", 1, "off.test"));
    q.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    wait_until("the router to route off.test", Duration::from_secs(10), || async {
        q.via_router("off.test", "/").await.ok().filter(|(s, _)| *s == 200)
    })
    .await;
    assert!(!q.data_dir().join("router/access.log").exists(), "--access-log off writes no log");
}

/// A script that raises is refused before it is in force: on `GET /` by default, on the requests
/// given with `--test`, and by the API itself; the rules in force stay as they were.
#[tokio::test(flavor = "multi_thread")]
async fn a_rule_that_raises_is_refused_before_it_is_in_force() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let file = p.write("web.yaml", &exec_spec("web", 1, "trial.test"));
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    let typo = p.write("typo.lua", "local a = 1\nreturn denny(403)\n");
    let out = p.cli(&["app", "web", "rules", "set", &typo]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("typo.lua:2:") && err.contains("denny") && err.contains("on GET /"), "{err}");
    assert!(p.cli(&["app", "web", "rules", "show"]).await.status.code() != Some(0), "nothing was stored");

    let guarded = p.write("guarded.lua", "if req.path == '/admin' then return denny(403) end\n");
    let out = p.cli(&["app", "web", "rules", "set", &guarded, "--test", "GET /admin Host: trial.test"]).await;
    assert!(!out.status.success(), "the given request reaches the typo");
    let good = p.write("good.lua", "if req.path == '/admin' then return deny(403, 'admins only') end\n");
    let out = p
        .cli_ok(&["app", "web", "rules", "set", &good, "--test", "GET /admin Host: trial.test", "--test", "GET /"])
        .await;
    assert!(out.contains("GET /admin: deny 403 \"admins only\"") && out.contains("GET /: pass"), "{out}");

    let (status, body) = p.request("PUT", "/v1/apps/shop/web/rules", "text/x-lua", "return denny(403)").await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("fails on GET /"), "{body}");
    let shown = p.cli_ok(&["app", "web", "rules", "show"]).await;
    assert!(shown.contains("admins only"), "the good rule is still in force: {shown}");
}

/// A rule that raises at run time on some requests anyway serves them as if it were absent, with
/// no trace to the client, and is told: an alert while it fails, and an event.
#[tokio::test(flavor = "multi_thread")]
async fn a_rule_failing_at_run_time_fails_open_and_raises_an_alert_and_an_event() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let file = p.write("web.yaml", &exec_spec("web", 1, "boom.test"));
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    // `GET /` passes (so the script is accepted); `/?boom` reaches the typo.
    let rule = p.write("boom.lua", "if req.query == 'boom' then return denny(403) end\n");
    p.cli_ok(&["app", "web", "rules", "set", &rule]).await;
    wait_until("the rule in force", Duration::from_secs(5), || async {
        let lua = p.admin_get("/lua").await;
        lua.as_array().is_some_and(|a| !a.is_empty()).then_some(())
    })
    .await;
    for _ in 0..5 {
        let (status, body) = p.via_router("boom.test", "/?boom").await.unwrap();
        assert_eq!(status, 200, "served as if there were no rule: {body}");
        assert!(!body.contains("denny") && !body.contains("stack"), "{body}");
    }
    // Traffic goes on, as it would: the alert compares the failures of the last seconds.
    let alert = wait_until("the rule_failing alert", Duration::from_secs(15), || async {
        let (status, _) = p.via_router("boom.test", "/?boom").await.ok()?;
        assert_eq!(status, 200);
        let alerts = p.get("/v1/alerts").await.ok()?;
        alerts["firing"].as_array()?.iter().find(|a| a["name"] == "rule_failing").cloned()
    })
    .await;
    assert_eq!(alert["app"], "shop/web", "{alert}");
    assert!(alert["text"].as_str().unwrap().contains("raised"), "{alert}");
    let events = p.cli_ok(&["events", "--app", "web"]).await;
    assert!(events.contains("rules.failing"), "{events}");
}
