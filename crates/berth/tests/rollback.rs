//! `berth app NAME rollback [VERSION]`: an earlier spec becomes current again, as a new version.

use berth_testkit::Platform;
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn spec(marker: &str) -> String {
    let bin = berth_testkit::image::testapp_binary();
    format!(
        "group: ops\nname: roll\ndriver: exec\ninstances: 2\ncommand: [{}, --version, {marker}]\n\
         health:\n  http: /health\n  interval: 200ms\n  timeout: 1s\nupgrade:\n  min_healthy_time: 0s\n",
        bin.display()
    )
}

async fn versions_served(p: &Platform) -> Vec<String> {
    let mut out = Vec::new();
    for inst in p.live("roll").await {
        let addr = inst["address"].as_str().unwrap();
        let v: Value = berth_tls::http().get(format!("http://{addr}/")).send().await.unwrap().json().await.unwrap();
        out.push(v["version"].as_str().unwrap().to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_restores_an_earlier_spec_as_a_new_version() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let one = p.write("one.yaml", &spec("one"));
    let two = p.write("two.yaml", &spec("two"));
    p.cli_ok(&["deploy", "-f", &one, "--timeout", "30"]).await;
    p.cli_ok(&["app", "roll", "sync", "-f", &two, "--timeout", "30"]).await;
    p.cli_ok(&["app", "roll", "scale", "3", "--timeout", "30"]).await;
    assert_eq!(versions_served(&p).await, ["two", "two", "two"]);

    let out = p.cli_ok(&["app", "roll", "rollback", "--timeout", "30", "-o", "json"]).await;
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["version"], 3, "a rollback is a new version; history is not rewritten");
    assert_eq!(status["desired"], 3, "the present scale is kept");
    assert_eq!(versions_served(&p).await, ["one", "one", "one"]);
    let versions: Value = serde_json::from_str(&p.cli_ok(&["app", "roll", "history", "-o", "json"]).await).unwrap();
    assert_eq!(versions[2]["change"], "rollback to v1");

    // Back to an explicit version, and the refusals.
    p.cli_ok(&["app", "roll", "rollback", "2", "--timeout", "30"]).await;
    assert_eq!(versions_served(&p).await, ["two", "two", "two"]);
    let out = p.cli(&["app", "roll", "rollback", "99"]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("version 99 of ops/roll"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = p.cli(&["app", "roll", "rollback", "4"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already the current version"));
    assert_eq!(p.status("roll").await["version"], 4, "a refused rollback changes nothing");
}
