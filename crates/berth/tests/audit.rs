//! The audit log (issue 17, item 5): every change is written with who (the token's name and id),
//! when, from which address and what (an app's version diff, or the request), refused attempts
//! too; `berth audit [--group] [--since] [-f] [-o json]` reads it, to each token its own groups.

use std::time::Duration;

use berth_testkit::Platform;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn spec(group: &str, name: &str, extra: &str) -> String {
    let bin = berth_testkit::image::testapp_binary();
    format!("group: {group}\nname: {name}\ndriver: exec\ninstances: 1\ncommand: [{}]\n{extra}", bin.display())
}

fn said(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

async fn token(p: &Platform, role: &str, group: &str, name: &str) -> String {
    let out = p.cli_ok(&["token", "create", "--role", role, "--group", group, "--name", name, "-o", "json"]).await;
    serde_json::from_str::<Value>(&out).unwrap()["token"].as_str().unwrap().to_string()
}

async fn audit(p: &Platform, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "-o", "json"];
    all.extend_from_slice(args);
    serde_json::from_str::<Value>(&p.cli_ok(&all).await).unwrap().as_array().cloned().unwrap()
}

fn find<'a>(entries: &'a [Value], action: &str, outcome: &str, actor: &str) -> &'a Value {
    entries
        .iter()
        .find(|e| e["action"] == action && e["outcome"] == outcome && e["actor"] == actor)
        .unwrap_or_else(|| panic!("no {outcome} {action} by {actor} in:\n{entries:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_change_and_every_refused_attempt_is_in_the_audit_log() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let ci = token(&p, "deployer", "shop", "ci").await;
    let viewer = token(&p, "viewer", "shop", "eve").await;
    p.cli_ok(&["group", "create", "shop", "--instances", "2"]).await;

    // Followed from here on, as JSON lines.
    let mut follow = tokio::process::Command::new(BERTH)
        .args(["audit", "-f", "-o", "json", "--group", "shop", "--since", "1m"])
        .env("BERTH_SERVER", &p.api)
        .env("BERTH_TOKEN", p.admin_token())
        .env("BERTH_CONFIG", p.cli_config())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();

    // A deploy and an upgrade by the deployer: done, with the version diff.
    let web = p.write("web.yaml", &spec("shop", "web", "environment: {V: \"1\"}\n"));
    p.cli_ok(&["--token", &ci, "deploy", "-f", &web, "--timeout", "60"]).await;
    let web2 = p.write(
        "web2.yaml",
        &spec("shop", "web", "environment: {V: \"2\"}\nupgrade: {max_over_capacity: 0.0, min_healthy_time: 0s}\n"),
    );
    p.cli_ok(&["--token", &ci, "deploy", "-f", &web2, "--timeout", "60"]).await;
    // Refused: a viewer's deploy, the deployer in another group, no token, a wrong one.
    let out = p.cli(&["--token", &viewer, "app", "web", "scale", "1"]).await;
    assert!(!out.status.success(), "{}", said(&out));
    let pay = p.write("pay.yaml", &spec("pay", "api", ""));
    let out = p.cli(&["--token", &ci, "deploy", "-f", &pay]).await;
    assert!(said(&out).contains("cannot act in group pay"), "{}", said(&out));
    let http = berth_tls::http();
    let resp = http.delete(format!("{}/v1/apps/shop/web", p.api)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let (id, _) = ci.rsplit_once('.').unwrap();
    let resp = http.get(format!("{}/v1/apps", p.api)).bearer_auth(format!("{id}.wrong")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // Failed: over the instance quota; a privileged spec the group does not allow.
    let out = p.cli(&["--token", &ci, "app", "web", "scale", "5"]).await;
    assert!(said(&out).contains("instances quota is 2"), "{}", said(&out));
    let root = p.write("root.yaml", &spec("shop", "root", "privileged: true\n"));
    let out = p.cli(&["--token", &ci, "deploy", "-f", &root]).await;
    assert!(said(&out).contains("does not allow privileged"), "{}", said(&out));
    // A secret: its value is never written.
    let out = p.cli_with_input(&["--token", &ci, "secret", "set", "shop/db_password"], b"pa55-audit-xyz").await;
    assert!(out.status.success(), "{}", said(&out));

    let entries = audit(&p, &[]).await;
    for e in &entries {
        for field in ["actor", "action", "address", "at", "outcome", "status"] {
            assert!(!e[field].is_null(), "{field} missing from {e}");
        }
    }
    let deploy = find(&entries, "app.deploy", "done", "ci");
    assert_eq!((deploy["group"].as_str(), deploy["target"].as_str()), (Some("shop"), Some("shop/web")), "{deploy}");
    assert_eq!(deploy["actor_id"].as_str(), Some(id), "{deploy}");
    assert!(deploy["address"].as_str().unwrap().starts_with("127.0.0.1:"), "{deploy}");
    let upgrade = entries
        .iter()
        .find(|e| e["action"] == "app.deploy" && e["detail"]["version"]["to"] == 2)
        .unwrap_or_else(|| panic!("the upgrade's diff:\n{entries:#?}"));
    let changes = upgrade["detail"]["changes"].as_array().unwrap();
    assert!(changes.iter().any(|c| c["field"] == "environment.V" && c["from"] == "1" && c["to"] == "2"), "{upgrade}");
    let viewer_scale = find(&entries, "app.scale", "refused", "eve");
    assert_eq!(viewer_scale["status"], 403);
    assert!(viewer_scale["reason"].as_str().unwrap().contains("a viewer token cannot change apps"), "{viewer_scale}");
    // The CLI reads the app first: that read is what is refused (and a read refused is written).
    let elsewhere = entries.iter().find(|e| e["group"] == "pay" && e["actor"] == "ci").expect("the refusal in pay");
    assert_eq!((elsewhere["outcome"].as_str(), elsewhere["target"].as_str()), (Some("refused"), Some("pay/api")));
    assert!(elsewhere["reason"].as_str().unwrap().contains("cannot act in group pay"), "{elsewhere}");
    let anonymous = find(&entries, "app.destroy", "refused", "anonymous");
    assert_eq!(anonymous["status"], 401, "{anonymous}");
    let wrong = find(&entries, "GET /v1/apps", "refused", &format!("{id} (unverified)"));
    assert!(wrong["reason"].as_str().unwrap().contains("wrong secret"), "{wrong}");
    let quota = find(&entries, "app.scale", "failed", "ci");
    assert!(quota["reason"].as_str().unwrap().contains("instances quota is 2"), "{quota}");
    assert_eq!(quota["detail"]["instances"], 5, "the request is the detail of what failed: {quota}");
    let privileged = find(&entries, "app.deploy", "failed", "ci");
    assert!(privileged["reason"].as_str().unwrap().contains("privileged"), "{privileged}");
    let secret = find(&entries, "secret.set", "done", "ci");
    assert_eq!(secret["target"], "shop/db_password");
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains("pa55-audit-xyz"), "a secret's value is never audited");
    assert!(!text.contains(".wrong") && !text.contains(ci.rsplit_once('.').unwrap().1), "no token secret either");

    // Filters: by group, and to each token its groups.
    let pay_only = audit(&p, &["--group", "pay"]).await;
    assert!(!pay_only.is_empty() && pay_only.iter().all(|e| e["group"] == "pay"), "{pay_only:#?}");
    let out = p.cli(&["--token", &viewer, "audit", "-o", "json"]).await;
    let seen: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", said(&out)));
    assert!(!seen.is_empty() && seen.iter().all(|e| e["group"] == "shop"), "{seen:#?}");
    assert!(audit(&p, &["--since", "1ms"]).await.len() < entries.len(), "--since leaves the older out");

    // The follower saw the shop entries as they were written, in order, as JSON lines.
    let mut followed = Vec::new();
    while !followed.iter().any(|e: &Value| e["action"] == "secret.set") {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the follower prints within 30 s")
            .unwrap()
            .expect("the follower keeps running");
        followed.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    assert!(followed.iter().all(|e| e["group"] == "shop"), "{followed:#?}");
    assert!(followed.windows(2).all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()), "{followed:#?}");
    assert_eq!(followed[0]["action"], "app.deploy", "{followed:#?}");
}
