//! The cluster scheduler end to end: a server and three agents as separate processes, each its
//! own `--hostname` and `--label`s, and the constraints people write (issue 14).

use std::collections::BTreeMap;
use std::time::Duration;

use berth_testkit::{Platform, wait_until};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// How many live instances of `app` run on each hostname.
async fn spread(p: &Platform, app: &str, hosts: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for inst in p.live(app).await {
        let node = inst["node"].as_str().unwrap_or_default();
        let host = hosts.iter().find(|(_, id)| *id == node).map(|(h, _)| h.clone()).unwrap_or_default();
        *out.entry(host).or_default() += 1;
    }
    out
}

fn spec(name: &str, instances: u32, constraints: &str) -> String {
    format!(
        "group: ops\nname: {name}\ndriver: exec\ncommand: [sleep, \"300\"]\ninstances: {instances}\nconstraints: {constraints}\nupgrade:\n  min_healthy_time: 0s\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_constraint_is_enforced_on_any_label() {
    let agent = ["--hostname".to_string(), "h0".to_string(), "--label".to_string(), "rack=r0".to_string()];
    let p = Platform::start_split_args(BERTH.as_ref(), "exec", &[], &agent).await;
    let _h1 = p.add_agent("h1", &["--label", "rack=r1"]);
    let _h2 = p.add_agent("h2", &["--label", "rack=r1"]);
    let hosts = p.ready_nodes(3).await;

    // LIKE: all four on the r1 nodes (before, two of four landed on r0).
    p.cli_ok(&["deploy", "-f", &p.write("like.yaml", &spec("like", 4, "[\"rack:LIKE:r1\"]")), "--timeout", "30"]).await;
    let on = spread(&p, "like", &hosts).await;
    assert_eq!(on.get("h0"), None, "{on:?}");
    assert_eq!(on.values().sum::<usize>(), 4, "{on:?}");

    // GROUP_BY: the racks hold two each, whatever the nodes per rack.
    p.cli_ok(&["deploy", "-f", &p.write("even.yaml", &spec("even", 4, "[\"rack:GROUP_BY\"]")), "--timeout", "30"])
        .await;
    let on = spread(&p, "even", &hosts).await;
    assert_eq!(on.get("h0"), Some(&2), "{on:?}");
    assert_eq!(on.get("h1").unwrap_or(&0) + on.get("h2").unwrap_or(&0), 2, "{on:?}");

    // UNLIKE and MAX_PER on a label, in one spec: never r0, at most one per rack.
    let both = spec("capped", 2, "[\"rack:UNLIKE:r0\", \"rack:MAX_PER:1\"]");
    p.cli_ok(&["deploy", "-f", &p.write("capped.yaml", &both), "--no-wait"]).await;
    let waiting = wait_until("one instance placed, one refused", Duration::from_secs(20), || async {
        let status = p.status("capped").await;
        (p.live("capped").await.len() == 1 && status["waiting"]["kind"] == "unplaceable").then_some(status)
    })
    .await;
    let nodes_said = &waiting["waiting"]["why"]["nodes"];
    let said: Vec<String> =
        nodes_said.as_array().unwrap().iter().map(|n| n["found"].as_str().unwrap_or_default().to_string()).collect();
    assert!(said.iter().any(|f| f.contains("rack r0")), "h0 refused for its rack: {said:?}");
    assert!(
        said.iter().any(|f| f.contains("rack r1 already runs 1")),
        "the other r1 node refused by MAX_PER: {said:?}"
    );
    assert_eq!(spread(&p, "capped", &hosts).await.get("h0"), None);

    // CLUSTER alone pins the app to the rack of its first instance.
    p.cli_ok(&["deploy", "-f", &p.write("pinned.yaml", &spec("pinned", 3, "[\"rack:CLUSTER\"]")), "--timeout", "30"])
        .await;
    let on = spread(&p, "pinned", &hosts).await;
    let racks: std::collections::BTreeSet<&str> = on.keys().map(|h| if h == "h0" { "r0" } else { "r1" }).collect();
    assert_eq!(racks.len(), 1, "one rack: {on:?}");

    // Four with hostname:UNIQUE on three nodes cannot all be placed: deploy says so at once with
    // the counts, instead of waiting out its timeout.
    let began = std::time::Instant::now();
    let out =
        p.cli(&["deploy", "-f", &p.write("four.yaml", &spec("four", 4, "hostname:UNIQUE")), "--timeout", "120"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(began.elapsed() < Duration::from_secs(60), "it did not wait out the timeout: {:?}", began.elapsed());
    assert!(err.contains("4 wanted, 3 placed") && err.contains("3 nodes filtered by hostname:UNIQUE"), "{err}");
    // `app NAME why` says the same whenever asked, and as data.
    let why = p.cli_ok(&["app", "four", "why"]).await;
    assert!(
        why.contains("3 of 4 wanted instance(s) placed") && why.contains("3 nodes filtered by hostname:UNIQUE"),
        "{why}"
    );
    let data: Value = serde_json::from_str(&p.cli_ok(&["app", "four", "why", "-o", "json"]).await).unwrap();
    assert_eq!(
        data["waiting"]["why"]["filtered"][0],
        serde_json::json!({"reason": "hostname:UNIQUE", "nodes": 3}),
        "{data}"
    );
    let fine = p.cli_ok(&["app", "like", "why"]).await;
    assert!(fine.contains("nothing waits: 4 of 4"), "{fine}");
}

/// An instance of 0.5 cpu.
fn half_cpu(group: &str, name: &str, instances: u32) -> String {
    format!(
        "group: {group}\nname: {name}\ndriver: exec\ncommand: [sleep, \"300\"]\ninstances: {instances}\ncpu: 0.5\n\
         upgrade:\n  min_healthy_time: 0s\n"
    )
}

/// Pools (issue 14 item 4): four agents of one core each, in pools `web` (two), `default` and
/// `batch`. A group bound to `web` fills it, then borrows from the shared pool, never from
/// `batch`; over-subscribing `web` lets it take more; an unbound group stays in `default`.
#[tokio::test(flavor = "multi_thread")]
async fn groups_place_in_their_pools_first_and_borrow_from_the_shared_one() {
    let agent: Vec<String> = ["--hostname", "w0", "--pool", "web", "--cpu", "1"].map(String::from).to_vec();
    let p = Platform::start_split_args(BERTH.as_ref(), "exec", &[], &agent).await;
    let _w1 = p.add_agent("w1", &["--pool", "web", "--cpu", "1"]);
    let _s0 = p.add_agent("s0", &["--cpu", "1"]);
    let _b0 = p.add_agent("b0", &["--pool", "batch", "--cpu", "1"]);
    let hosts = p.ready_nodes(4).await;
    let nodes: Value = serde_json::from_str(&p.cli_ok(&["node", "ls", "-o", "json"]).await).unwrap();
    let pool_of =
        |host: &str| nodes.as_array().unwrap().iter().find(|n| n["hostname"] == host).unwrap()["pool"].clone();
    assert_eq!((pool_of("w0"), pool_of("s0"), pool_of("b0")), ("web".into(), "default".into(), "batch".into()));

    p.cli_ok(&["pool", "set", "shop", "web"]).await;
    // Four fill web's two cores; the fifth and sixth borrow s0's; b0 is another business's.
    p.cli_ok(&["deploy", "-f", &p.write("cart.yaml", &half_cpu("shop", "cart", 6)), "--timeout", "30"]).await;
    let on = spread(&p, "cart", &hosts).await;
    assert_eq!(on, BTreeMap::from([("w0".into(), 2), ("w1".into(), 2), ("s0".into(), 2)]), "{on:?}");
    let borrowed: Vec<String> = p
        .live("cart")
        .await
        .iter()
        .filter(|i| i["borrowed"] == true)
        .map(|i| i["node"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(borrowed, [hosts["s0"].clone(), hosts["s0"].clone()], "the two on s0 say they borrow");
    let status = p.cli_ok(&["app", "cart", "status"]).await;
    assert_eq!(status.matches("(borrowed)").count(), 2, "{status}");
    let pools: Value = serde_json::from_str(&p.cli_ok(&["pool", "ls", "-o", "json"]).await).unwrap();
    let pool = |name: &str| pools.as_array().unwrap().iter().find(|p| p["name"] == name).unwrap().clone();
    assert_eq!(pool("web")["cpu"]["allocated"], 2.0, "{pools}");
    assert_eq!(pool("web")["groups"], serde_json::json!(["shop"]), "{pools}");
    assert_eq!(pool("default")["borrowed"], 2, "{pools}");
    assert_eq!(pool("batch")["cpu"]["allocated"], 0.0, "{pools}");

    // The seventh has nowhere to go, and says why per kind of node.
    let out = p.cli(&["app", "cart", "scale", "7", "--timeout", "30"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("3 nodes filtered by cpu") && stderr.contains("1 node filtered by pool"), "{stderr}");

    // Over-subscribed at 2x, web's two cores take four more: the seventh lands in web.
    p.cli_ok(&["pool", "oversubscribe", "web", "2"]).await;
    // Placed, and the scale to seven done (in service past its min_healthy_time): a scale
    // down in the middle of it would be refused as a deployment in progress.
    wait_until("the seventh placed in web and in service", Duration::from_secs(30), || async {
        let on = spread(&p, "cart", &hosts).await;
        let placed = on.get("w0").unwrap_or(&0) + on.get("w1").unwrap_or(&0) == 5;
        let status = p.status("cart").await;
        (placed && status["deployment"]["state"] != "running").then_some(())
    })
    .await;
    let bad = p.cli(&["pool", "oversubscribe", "web", "0"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cpu_oversubscription: 0 is not in (0, 10]"));

    // Scaling down gives borrowed room back first; an unbound group stays in the shared pool.
    p.cli_ok(&["app", "cart", "scale", "5", "--timeout", "30"]).await;
    assert_eq!(spread(&p, "cart", &hosts).await.get("s0"), None, "the borrowed ones went first");
    p.cli_ok(&["deploy", "-f", &p.write("tool.yaml", &half_cpu("ops", "tool", 1)), "--timeout", "30"]).await;
    assert_eq!(spread(&p, "tool", &hosts).await, BTreeMap::from([("s0".into(), 1)]));
}
