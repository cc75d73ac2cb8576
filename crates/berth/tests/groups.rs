//! Groups with quotas (issue 17, item 3): a deploy, scale or upgrade that would pass its group's
//! quota, the extra instances of a deployment included, is refused before anything changes and
//! says which quota, the usage and the ask; privileged instances and host networking need the
//! group to allow them.

use berth_testkit::Platform;
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn spec(group: &str, name: &str, instances: u32, extra: &str) -> String {
    let bin = berth_testkit::image::testapp_binary();
    format!(
        "group: {group}\nname: {name}\ndriver: exec\ninstances: {instances}\ncommand: [{}, --version, v1]\n{extra}",
        bin.display()
    )
}

fn said(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_refuse_what_would_pass_them_before_anything_changes() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    p.cli_ok(&["group", "create", "shop", "--instances", "3", "--cpu", "1", "--memory", "1GiB"]).await;
    let web = p.write("web.yaml", &spec("shop", "web", 2, "cpu: 0.25\nmemory: 64\n"));
    p.cli_ok(&["deploy", "-f", &web, "--timeout", "60"]).await;
    let groups: Value = serde_json::from_str(&p.cli_ok(&["group", "ls", "-o", "json"]).await).unwrap();
    let shop = groups.as_array().unwrap().iter().find(|g| g["name"] == "shop").cloned().unwrap();
    assert_eq!((shop["usage"]["instances"].as_u64(), shop["quota"]["instances"].as_u64()), (Some(2), Some(3)));
    assert_eq!((shop["usage"]["cpu"].as_f64(), shop["usage"]["memory"].as_u64()), (Some(0.5), Some(128)), "{shop}");
    let table = p.cli_ok(&["group", "ls"]).await;
    assert!(table.contains("0.50/1.00") && table.contains("2/3"), "{table}");

    // Scaling past the quota: refused, saying the quota, the usage and the ask; nothing changed.
    let out = p.cli(&["app", "web", "scale", "4"]).await;
    assert!(!out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("group shop's instances quota is 3: its other apps reserve 0, and this asks 4"),
        "{}",
        said(&out)
    );
    // An upgrade runs a new set beside the old one (max_over_capacity 1.0): 2 + 2 > 3.
    let upgraded = p.write("web2.yaml", &spec("shop", "web", 2, "cpu: 0.25\nmemory: 64\nenvironment: {V: \"2\"}\n"));
    let out = p.cli(&["deploy", "-f", &upgraded, "--timeout", "30"]).await;
    assert!(
        said(&out).contains("this asks 4 (with 2 instance(s) on top while it deploys)"),
        "the rolling surge counts: {}",
        said(&out)
    );
    let status = p.status("web").await;
    assert_eq!((status["desired"].as_u64(), status["version"].as_u64()), (Some(2), Some(1)), "{status}");
    // An app that does not say its cpu cannot join a group with a cpu quota.
    let bare = p.write("bare.yaml", &spec("shop", "bare", 1, ""));
    let out = p.cli(&["deploy", "-f", &bare]).await;
    assert!(said(&out).contains("cpu: group shop has a cpu quota"), "{}", said(&out));
    // Raised, the same upgrade goes through.
    p.cli_ok(&["group", "set", "shop", "--instances", "4"]).await;
    p.cli_ok(&["deploy", "-f", &upgraded, "--timeout", "60"]).await;
    assert_eq!(p.status("web").await["version"], 2);

    // Privileged instances need the group to allow them.
    let root = p.write("root.yaml", &spec("ops", "root", 1, "privileged: true\n"));
    let out = p.cli(&["deploy", "-f", &root]).await;
    assert!(
        said(&out).contains(
            "privileged: group ops does not allow privileged instances (berth group set ops --allow privileged)"
        ),
        "{}",
        said(&out)
    );
    let (status, _) = p.request("GET", "/v1/apps/ops/root", "application/json", "").await;
    assert_eq!(status, 404, "refused before anything was written");
    p.cli_ok(&["group", "set", "ops", "--allow", "privileged"]).await;
    p.cli_ok(&["deploy", "-f", &root, "--timeout", "60"]).await;
    let events = p.cli_ok(&["events", "-n", "500"]).await;
    assert!(events.contains("group ops"), "{events}");
}
