//! Joining safely (issue 15): an agent presents the server's join token once and keeps a
//! credential of its own (0600 in its data dir), sent with every request from then on; what an
//! agent calls refuses a missing, wrong, misused or revoked credential with 401 and says which;
//! an agent with no or a wrong token, or a revoked credential, exits non-zero instead of retrying.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use berth_testkit::{Platform, wait_until};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

async fn heartbeat(p: &Platform, node: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut req = berth_tls::http().post(format!("{}/v1/nodes/{node}/heartbeat", p.api)).json(&serde_json::json!({}));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or_default())
}

fn error(body: &Value) -> String {
    body["error"].as_str().unwrap_or_default().to_string()
}

/// Waits for `child` to exit, and returns whether it succeeded and its log.
async fn exits(p: &Platform, child: &mut tokio::process::Child, log: &str) -> (bool, String) {
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the agent exits instead of retrying")
        .unwrap();
    (status.success(), std::fs::read_to_string(p.dir.path().join(log)).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_join_with_the_token_and_act_only_as_themselves() {
    let p = Platform::start_split(BERTH.as_ref(), "exec").await;
    let _h1 = p.add_agent("h1", &[]);
    let hosts = p.ready_nodes(2).await;
    let h1 = hosts["h1"].clone();

    // Each agent keeps its own credential, readable by its user alone.
    let file = p.dir.path().join("agents/h1/agent/credential");
    let credential = std::fs::read_to_string(&file).unwrap();
    assert!(credential.starts_with(&format!("{h1}.")), "{credential}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

    // Loopback is no exception: a local process without the credential is refused, and told why.
    let (status, body) = heartbeat(&p, &h1, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(error(&body).contains("no credential"), "{body}");
    let token = std::fs::read_to_string(p.join_token_file()).unwrap();
    let (status, body) = heartbeat(&p, &h1, Some(token.trim())).await;
    assert_eq!(status, 401);
    assert!(error(&body).contains("join token is for joining"), "{body}");
    let (id, _) = credential.rsplit_once('.').unwrap();
    let (status, body) = heartbeat(&p, &h1, Some(&format!("{id}.0000"))).await;
    assert_eq!(status, 401);
    assert!(error(&body).contains(&format!("wrong credential for {h1}")), "{body}");
    let (status, body) = heartbeat(&p, &p.node_id, Some(&credential)).await;
    assert_eq!(status, 403, "one node's credential cannot act for another: {body}");
    assert_eq!(heartbeat(&p, &h1, Some(&credential)).await.0, 200);
    // Joining takes the token itself.
    let resp = berth_tls::http()
        .post(format!("{}/v1/join", p.api))
        .bearer_auth("not-the-token")
        .json(&serde_json::json!({"id": "sneaky", "kind": "agent"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(resp.text().await.unwrap().contains("wrong join token"));
    // Routers too: the split platform's router joined and keeps its own.
    let router = std::fs::read_to_string(p.data_dir().join("router/credential")).unwrap();
    let api = p.api.clone();
    let routes = |bearer: Option<String>| {
        let url = format!("{api}/v1/routes");
        async move {
            let mut req = berth_tls::http().get(url);
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (status, body) = routes(None).await;
    assert!(status == 401 && body.contains("for routers"), "{status} {body}");
    let (status, body) = routes(Some(credential.clone())).await;
    assert!(status == 401 && body.contains("not a Router's"), "an agent's credential is not a router's: {body}");
    assert_eq!(routes(Some(router)).await.0, 200);
    // The user-facing API is unchanged by this (its own credentials are issue 17).
    assert!(p.get("/v1/nodes").await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_without_the_right_token_exits_non_zero_and_says_why() {
    let p = Platform::start_split(BERTH.as_ref(), "exec").await;
    let mut wrong = p.add_agent("wrong", &["--join-token", "not-the-token"]);
    let (ok, log) = exits(&p, &mut wrong, "agent-wrong.log").await;
    assert!(!ok && log.contains("wrong join token"), "{log}");

    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(BERTH)
        .args(["agent", "--server", &p.api, "--driver", "exec", "--data-dir"])
        .arg(dir.path())
        .env_remove("BERTH_JOIN_TOKEN")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no join token"), "{err}");
    assert_eq!(p.ready_nodes(1).await.len(), 1, "neither joined");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_node_is_refused_and_its_agent_exits() {
    let p = Platform::start_split(BERTH.as_ref(), "exec").await;
    let mut h1 = p.add_agent("h1", &[]);
    p.ready_nodes(2).await;
    let bin = berth_testkit::image::testapp_binary();
    let spec = format!(
        "group: shop\nname: cart\ndriver: exec\ninstances: 2\ncommand: [{}]\nconstraints: [\"hostname:UNIQUE\"]\n\
         upgrade:\n  min_healthy_time: 0s\n",
        bin.display()
    );
    p.cli_ok(&["deploy", "-f", &p.write("cart.yaml", &spec), "--timeout", "60"]).await;

    // Connected with a live instance: removing it would leave that running out of sight.
    let out = p.cli(&["node", "rm", "h1"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("drain it first"), "{err}");
    // Pinned one per node, its instance cannot move: the drain's deadline stops it.
    p.cli(&["node", "drain", "h1", "--deadline", "1s"]).await;
    wait_until("nothing live on h1", Duration::from_secs(20), || async {
        let node: Value = serde_json::from_str(&p.cli_ok(&["node", "status", "h1", "-o", "json"]).await).ok()?;
        (node["instances"] == 0).then_some(())
    })
    .await;
    let out = p.cli_ok(&["node", "rm", "h1"]).await;
    assert!(out.contains("credential is revoked"), "{out}");

    let (ok, log) = exits(&p, &mut h1, "agent-h1.log").await;
    assert!(!ok && log.contains("revoked"), "{log}");
    // Started again with the same data dir, it is refused at once: the credential stays revoked.
    let mut again = p.add_agent("h1", &[]);
    let (ok, log) = exits(&p, &mut again, "agent-h1.log").await;
    assert!(!ok && log.matches("revoked").count() >= 2, "{log}");
    let nodes: Vec<Value> = serde_json::from_value(p.get("/v1/nodes").await.unwrap()).unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let events = p.cli_ok(&["events", "-o", "json"]).await;
    assert!(events.contains("node.removed"), "{events}");
    wait_until("cart whole on the node left", Duration::from_secs(10), || async {
        (p.status("cart").await["counts"]["running"] == 1).then_some(())
    })
    .await;
}

/// A router removed with `berth router rm` is refused from then on: it stops serving and exits
/// non-zero, rather than serve a table nobody updates any more.
#[tokio::test(flavor = "multi_thread")]
async fn a_removed_router_is_refused_stops_serving_and_exits() {
    let mut p = Platform::start_split(BERTH.as_ref(), "exec").await;
    let bin = berth_testkit::image::testapp_binary();
    let spec = format!(
        "group: shop\nname: cart\ndriver: exec\ninstances: 1\ncommand: [{}]\nservices: [cart.test]\n\
         upgrade:\n  min_healthy_time: 0s\n",
        bin.display()
    );
    p.cli_ok(&["deploy", "-f", &p.write("cart.yaml", &spec), "--timeout", "60"]).await;
    wait_until("the router serving cart", Duration::from_secs(20), || async {
        matches!(p.via_router("cart.test", "/").await, Ok((200, _))).then_some(())
    })
    .await;

    let routers: Vec<Value> = serde_json::from_str(&p.cli_ok(&["router", "ls", "-o", "json"]).await).unwrap();
    assert_eq!(routers.len(), 1, "{routers:?}");
    let id = routers[0]["id"].as_str().expect("the router's id").to_string();
    assert_eq!(routers[0]["live"], true, "{routers:?}");
    let table = p.cli_ok(&["router", "ls"]).await;
    assert!(table.contains("ROUTER") && table.contains(&id), "{table}");

    // An unknown id says so.
    let out = p.cli(&["router", "rm", "no-such-router"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no-such-router"), "{err}");
    let out = p.cli_ok(&["router", "rm", &id]).await;
    assert!(out.contains("revoked"), "{out}");

    let status = p.router_exit(Duration::from_secs(20)).await;
    assert!(!status.success(), "a removed router exits non-zero");
    let log = std::fs::read_to_string(p.dir.path().join("berth-router.log")).unwrap_or_default();
    assert!(log.contains("revoked"), "the router says why: {log}");
    assert!(p.via_router("cart.test", "/").await.is_err(), "nothing serves on its port any more");
    let routers: Vec<Value> = serde_json::from_str(&p.cli_ok(&["router", "ls", "-o", "json"]).await).unwrap();
    assert!(routers.is_empty(), "{routers:?}");
    let events = p.cli_ok(&["events", "-o", "json"]).await;
    assert!(events.contains("router.removed"), "{events}");
    let audit = p.cli_ok(&["audit", "--since", "5m"]).await;
    assert!(audit.contains("router.remove"), "{audit}");
}
