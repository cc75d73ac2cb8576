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
    let raw = reqwest::Client::new();
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
