//! The CLI's rough edges, as a new user meets them: `-n 0`, a filter that matches nothing, an app
//! with no rules, errors in people's words (and in JSON under `-o json`), `--since` as people write it.

use berth_testkit::{Platform, wait_until};
use serde_json::Value;
use std::time::Duration;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_says_what_is_wrong_and_does_what_people_expect() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let spec = "group: ops\nname: talk\ndriver: exec\ncommand: [sh, -c, \"echo hello-from-talk; exec sleep 300\"]\n";
    let file = p.write("talk.yaml", spec);
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    wait_until("the app's line in its logs", Duration::from_secs(10), || async {
        p.cli_ok(&["app", "talk", "logs"]).await.contains("hello-from-talk").then_some(())
    })
    .await;

    // `-n 0`: nothing of the past, as docker and kubectl do.
    assert_eq!(p.cli_ok(&["app", "talk", "logs", "-n", "0"]).await, "");
    // `--since` as people write it: days, and a time.
    assert!(p.cli_ok(&["app", "talk", "logs", "--since", "1d"]).await.contains("hello-from-talk"));
    assert!(p.cli_ok(&["app", "talk", "logs", "--since", "2020-01-01T00:00:00Z"]).await.contains("hello-from-talk"));
    // A filter that matches nothing is an error that says what there is.
    let out = p.cli(&["app", "talk", "logs", "--instance", "zzz"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("has no instance `zzz`; its instances: talk-"), "{err}");
    // No rules: said plainly, with what to do.
    let out = p.cli(&["app", "talk", "rules", "show"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("ops/talk has no rules; set them with `berth app talk rules set FILE`"),
        "{err}"
    );
    // The server's refusals in its own words, without an HTTP code in front.
    let out = p.cli(&["app", "talk", "scale", "99999"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: instances: 99999 is more than") && !err.contains("422"), "{err}");
    // Under `-o json`, the error is JSON on stdout.
    let out = p.cli(&["app", "talk", "scale", "99999", "-o", "json"]).await;
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("a JSON error");
    assert_eq!(v["status"], 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("more than the 10000 allowed"), "{v}");
}
