//! Draining a node end to end (issue 14): a server, a router and three agents as separate
//! processes; a drain under constant load through the router moves every instance off with zero
//! failed requests, the node takes nothing new until made eligible, and a drain that cannot
//! finish stops what is left at its deadline.

use std::time::Duration;

use berth_testkit::{Load, Platform, wait_until};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn cart(instances: u32) -> String {
    let bin = berth_testkit::image::testapp_binary();
    format!(
        "group: shop\nname: cart\ndriver: exec\ninstances: {instances}\ncommand: [{}, --version, v1]\n\
         services: [cart.test]\nhealth:\n  http: /health\n  interval: 200ms\n  timeout: 1s\n\
         upgrade:\n  min_healthy_time: 300ms\n",
        bin.display()
    )
}

async fn on_node(p: &Platform, app: &str, node: &str) -> usize {
    p.live(app).await.iter().filter(|i| i["node"] == node).count()
}

async fn node_json(p: &Platform, node: &str) -> Value {
    serde_json::from_str(&p.cli_ok(&["node", "status", node, "-o", "json"]).await).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_under_load_moves_everything_off_with_no_failed_request() {
    let agent = ["--hostname".to_string(), "h0".to_string()];
    let p = Platform::start_split_args(BERTH.as_ref(), "exec", &[], &agent).await;
    let _h1 = p.add_agent("h1", &[]);
    let _h2 = p.add_agent("h2", &[]);
    let hosts = p.ready_nodes(3).await;
    let h0 = hosts["h0"].clone();

    // Six spread over three nodes: two on h0.
    p.cli_ok(&["deploy", "-f", &p.write("cart.yaml", &cart(6)), "--timeout", "60"]).await;
    assert_eq!(on_node(&p, "cart", &h0).await, 2);
    let load = Load::start(&p.http, "cart.test", 4, Some(Duration::from_millis(5)));
    wait_until("traffic to flow", Duration::from_secs(10), || async {
        (load.versions_since_mark().values().sum::<u64>() > 50).then_some(())
    })
    .await;

    let out = p.cli_ok(&["node", "drain", "h0"]).await;
    assert!(out.contains("drain: complete, 2 instance(s) moved off"), "{out}");
    assert_eq!(on_node(&p, "cart", &h0).await, 0, "nothing left on h0");
    let live = p.live("cart").await;
    assert_eq!(live.iter().filter(|i| i["in_service"] == true).count(), 6, "all six in service elsewhere");
    let reasons: Vec<Value> = p.status("cart").await["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["node"] == h0.as_str())
        .map(|i| i["reason"].clone())
        .collect();
    assert!(reasons.iter().all(|r| r.as_str().unwrap_or_default().contains("draining")), "{reasons:?}");

    // Drained, the node stays out of placement until made eligible.
    let node = node_json(&p, "h0").await;
    assert_eq!(node["state"], "ineligible", "{node}");
    assert_eq!(node["drain"]["state"], "complete", "{node}");
    assert_eq!(node["drain"]["instances"], 2, "{node}");
    p.cli_ok(&["app", "cart", "scale", "7", "--timeout", "60"]).await;
    assert_eq!(on_node(&p, "cart", &h0).await, 0, "an ineligible node takes nothing new");
    p.cli_ok(&["node", "undrain", "h0"]).await;
    assert_eq!(node_json(&p, "h0").await["state"], "ready");
    p.cli_ok(&["app", "cart", "scale", "8", "--timeout", "60"]).await;
    assert_eq!(on_node(&p, "cart", &h0).await, 1, "spread puts the next one on the emptiest node");

    let report = load.finish().await;
    report.assert_clean(500);

    // An instance pinned to h0 cannot move: at the deadline it is stopped, and drain says so.
    let pinned = "group: ops\nname: pinned\ndriver: exec\ncommand: [sleep, \"300\"]\n\
                  constraints: [\"hostname:CLUSTER:h0\"]\nupgrade:\n  min_healthy_time: 0s\n";
    p.cli_ok(&["deploy", "-f", &p.write("pinned.yaml", pinned), "--timeout", "30"]).await;
    let out = p.cli(&["node", "drain", "h0", "--deadline", "2s"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a drain cut short by its deadline exits non-zero: {stdout}");
    assert!(stdout.contains("drain: deadline reached"), "{stdout}");
    wait_until("the pinned instance to stop", Duration::from_secs(20), || async {
        (on_node(&p, "pinned", &h0).await == 0).then_some(())
    })
    .await;
    let events = p.cli_ok(&["events", "-o", "json"]).await;
    assert!(events.contains("drain deadline reached: "), "{events}");
    // Drained, h0 is ineligible: the pinned app waits, and says why.
    let status = p.status("pinned").await;
    assert!(status["pending"].as_str().unwrap_or_default().contains("ineligible"), "{status}");
}
