//! Every request is authenticated (issue 17, item 1): `berth up` makes an admin token, keeps only
//! its digest, writes it once to `<data-dir>/admin.token` and saves a CLI context, so that the
//! CLI on that machine works with no flag; a missing or wrong token is refused with 401 and a
//! hint, and nothing changes.

use std::process::Output;

use berth_testkit::Platform;
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// The CLI as a user at that machine runs it: no BERTH_SERVER, no BERTH_TOKEN, only the
/// contexts file (`berth up` wrote it) and `env`.
async fn berth(p: &Platform, args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::process::Command::new(BERTH)
        .args(args)
        .env_remove("BERTH_SERVER")
        .env_remove("BERTH_TOKEN")
        .env("BERTH_CONFIG", p.cli_config())
        .env("HOME", p.dir.path())
        .envs(env.iter().copied())
        .output()
        .await
        .expect("berth runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_works_after_berth_up_with_no_flag_and_a_missing_or_wrong_token_is_refused() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let bin = berth_testkit::image::testapp_binary();
    let spec = p.write("web.yaml", &format!("group: shop\nname: web\ndriver: exec\ncommand: [{}]\n", bin.display()));

    // The context `berth up` saved: the CLI deploys and lists with no flag at all.
    let out = berth(&p, &["deploy", "-f", &spec, "--timeout", "60"], &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = berth(&p, &["app", "ls", "-o", "json"], &[]).await;
    assert!(out.status.success() && text(&out).contains("shop/web"), "{}", text(&out));
    let out = berth(&p, &["context", "ls", "-o", "json"], &[]).await;
    let contexts: Value = serde_json::from_slice(&out.stdout).expect("contexts as JSON");
    assert_eq!(contexts[0]["name"], "local", "{contexts}");
    assert_eq!((contexts[0]["current"].as_bool(), contexts[0]["token"].as_bool()), (Some(true), Some(true)));
    assert_eq!(contexts[0]["server"], p.api.as_str());
    assert!(!text(&out).contains("tok-"), "the token itself is never shown: {}", text(&out));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p.cli_config()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the contexts hold a token: only their owner reads them");

    // A wrong token, then none: 401 with a hint, and the app stays as it was.
    let (id, _) = p.admin_token().rsplit_once('.').map(|(i, s)| (i.to_string(), s.to_string())).unwrap();
    let wrong = format!("{id}.not-the-secret");
    let out = berth(&p, &["app", "web", "scale", "3"], &[("BERTH_TOKEN", &wrong)]).await;
    assert!(!out.status.success() && text(&out).contains(&format!("wrong secret for token {id}")), "{}", text(&out));
    let elsewhere = tempfile::tempdir().unwrap();
    let none = elsewhere.path().join("none.toml");
    let out = berth(
        &p,
        &["app", "web", "destroy", "--yes"],
        &[("BERTH_SERVER", &p.api), ("BERTH_CONFIG", &none.display().to_string())],
    )
    .await;
    assert!(
        !out.status.success() && text(&out).contains("no token: pass --token or set BERTH_TOKEN"),
        "{}",
        text(&out)
    );
    let (status, body) = p.request("GET", "/v1/apps/shop/web", "application/json", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["desired"], 1, "nothing changed: {body}");

    // Straight at the API: no token, no answer but 401.
    let raw = berth_tls::http();
    for (method, path) in [("GET", "/v1/apps"), ("DELETE", "/v1/apps/shop/web"), ("GET", "/v1/events")] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = raw.request(m, format!("{}{path}", p.api)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{method} {path}");
    }
    assert_eq!(p.request("GET", "/v1/apps/shop/web", "application/json", "").await.0, 200, "still there");
}

#[tokio::test(flavor = "multi_thread")]
async fn contexts_switch_between_clusters_and_a_contexts_token_goes_to_its_own_server_only() {
    let a = Platform::start(BERTH.as_ref(), "exec").await;
    let b = Platform::start_split(BERTH.as_ref(), "exec").await;
    // b's token, added by hand beside the `local` context `berth up` wrote for a.
    let token_file = b.data_dir().join("admin.token");
    let out =
        berth(&a, &["context", "add", "b", "--token-file", &token_file.display().to_string(), "--server", &b.api], &[])
            .await;
    assert!(out.status.success(), "{}", text(&out));
    let nodes = |out: &Output| -> Vec<String> {
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array().into_iter().flatten().filter_map(|n| n["id"].as_str().map(String::from)).collect()
    };
    let on_b = berth(&a, &["node", "ls", "-o", "json"], &[]).await;
    assert_eq!(nodes(&on_b), vec![b.node_id.clone()], "{}", text(&on_b));
    let out = berth(&a, &["context", "use", "local"], &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let on_a = berth(&a, &["node", "ls", "-o", "json"], &[]).await;
    assert_eq!(nodes(&on_a), vec![a.node_id.clone()], "{}", text(&on_a));
    // Pointed elsewhere with --server, the CLI does not hand that server the context's token.
    let out = berth(&a, &["node", "ls", "--server", &b.api], &[]).await;
    assert!(!out.status.success() && text(&out).contains("no token"), "{}", text(&out));
    let out = berth(&a, &["context", "use", "nowhere"], &[]).await;
    assert!(!out.status.success() && text(&out).contains("no context nowhere; known: b, local"), "{}", text(&out));
}

/// Issue 17, item 2: roles scoped to groups. An admin makes a deployer and a viewer of `shop`;
/// neither reaches `pay`, the viewer changes nothing, only the admin manages tokens and nodes,
/// and a revoked or expired token is refused.
#[tokio::test(flavor = "multi_thread")]
async fn roles_scoped_to_groups_decide_who_does_what_and_say_why() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let bin = berth_testkit::image::testapp_binary();
    for (group, name) in [("shop", "web"), ("pay", "api")] {
        let spec = format!("group: {group}\nname: {name}\ndriver: exec\ncommand: [{}]\n", bin.display());
        p.cli_ok(&["deploy", "-f", &p.write(&format!("{name}.yaml"), &spec), "--timeout", "60"]).await;
    }
    let made = |out: String| -> (String, String) {
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        (v["token"].as_str().unwrap().to_string(), v["id"].as_str().unwrap().to_string())
    };
    let out =
        p.cli_ok(&["token", "create", "--role", "deployer", "--group", "shop", "--name", "ci", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["role"].as_str(), v["groups"].clone()), (Some("deployer"), serde_json::json!(["shop"])), "{v}");
    let (deployer, deployer_id) = made(out);
    let (viewer, _) = made(
        p.cli_ok(&["token", "create", "--role", "viewer", "--group", "shop", "--name", "eve", "-o", "json"]).await,
    );
    let as_ = |token: &str| vec![("BERTH_SERVER", p.api.clone()), ("BERTH_TOKEN", token.to_string())];
    let run = |token: String, args: Vec<&'static str>| {
        let env = as_(&token);
        let p = &p;
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            berth(p, &args, &env).await
        }
    };

    // The deployer: its own group, yes; the other group, 403 naming the group and the role.
    let out = run(deployer.clone(), vec!["app", "shop/web", "scale", "2", "--timeout", "60"]).await;
    assert!(out.status.success(), "{}", text(&out));
    for args in [
        vec!["app", "pay/api", "status"],
        vec!["app", "pay/api", "scale", "3"],
        vec!["app", "pay/api", "destroy", "--yes"],
        vec!["app", "pay/api", "logs"],
    ] {
        let out = run(deployer.clone(), args.clone()).await;
        let said = text(&out);
        assert!(!out.status.success(), "{args:?}: {said}");
        assert!(said.contains("a deployer token of group(s) shop cannot act in group pay"), "{args:?}: {said}");
    }
    let listed = run(deployer.clone(), vec!["app", "ls", "-o", "json"]).await;
    assert!(text(&listed).contains("shop/web") && !text(&listed).contains("pay/api"), "{}", text(&listed));
    let events = run(deployer.clone(), vec!["events", "-o", "json", "-n", "500"]).await;
    assert!(events.status.success() && text(&events).contains("shop/web"), "{}", text(&events));
    assert!(!text(&events).contains("pay/api"), "another group's events: {}", text(&events));
    for args in [vec!["token", "ls"], vec!["node", "drain", "x"]] {
        let out = run(deployer.clone(), args.clone()).await;
        assert!(text(&out).contains("only an admin token can"), "{args:?}: {}", text(&out));
    }

    // The viewer reads its group and changes nothing.
    let out = run(viewer.clone(), vec!["app", "shop/web", "status"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = run(viewer.clone(), vec!["app", "shop/web", "scale", "1"]).await;
    assert!(text(&out).contains("a viewer token cannot change apps"), "{}", text(&out));
    assert_eq!(p.status("shop/web").await["desired"], 2, "the viewer's scale changed nothing");

    // The admin lists tokens, never their secrets, and revokes one: it is refused from then on.
    let listed = p.cli_ok(&["token", "ls", "-o", "json"]).await;
    let tokens: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(tokens.as_array().map(Vec::len), Some(3), "{listed}");
    let secret = deployer.rsplit_once('.').unwrap().1;
    assert!(!listed.contains(secret), "{listed}");
    p.cli_ok(&["token", "revoke", &deployer_id]).await;
    let out = run(deployer.clone(), vec!["app", "ls"]).await;
    assert!(text(&out).contains(&format!("unknown token {deployer_id}")), "{}", text(&out));
    // The last admin token stays: without it nobody could make another.
    let admin_id = p.admin_token().split_once('.').unwrap().0.to_string();
    let out = p.cli(&["token", "revoke", &admin_id]).await;
    assert!(text(&out).contains("is the last admin token"), "{}", text(&out));
    // A token with a time to live stops working when it is up.
    let (brief, brief_id) =
        made(p.cli_ok(&["token", "create", "--role", "viewer", "--ttl", "1s", "--name", "brief", "-o", "json"]).await);
    berth_testkit::wait_until("the brief token to expire", std::time::Duration::from_secs(10), || {
        let run = &run;
        let brief = brief.clone();
        async move {
            let out = run(brief, vec!["app", "ls"]).await;
            text(&out).contains("has expired").then_some(())
        }
    })
    .await;
    assert!(p.cli_ok(&["events", "-n", "500"]).await.contains(&format!("token {brief_id} (brief")));
}
