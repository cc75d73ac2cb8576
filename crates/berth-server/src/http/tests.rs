//! The OpenAPI document and the router agree: every documented path and method is served.

use crate::{Server, ServerConfig, Tuning};

async fn start(dir: &tempfile::TempDir, tuning: Tuning) -> Server {
    let config = ServerConfig {
        store: None,
        server_id: None,
        advertise: None,
        data_dir: dir.path().to_path_buf(),
        api_addr: "127.0.0.1:0".into(),
        tuning,
        log_sinks: vec![],
        alerts: Default::default(),
        domain: "berth.local".into(),
        insecure_unauthenticated: false,
        tls: crate::Tls::Off,
        join_token: Some("test-join-token".into()),
        join_token_file: dir.path().join("join.token"),
        admin_token_file: dir.path().join("admin.token"),
        secrets_key_file: dir.path().join("secrets.key"),
    };
    Server::start(config).await.unwrap()
}

fn admin_token(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("admin.token")).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blocking_read_from_an_index_past_the_store_answers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, Tuning::default()).await;
    let started = std::time::Instant::now();
    let answer = berth_tls::http()
        .get(format!("http://{}/v1/events?index=999999999&wait=20s", server.addr))
        .bearer_auth(admin_token(&dir))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());
    let index: u64 = answer.headers()["x-berth-index"].to_str().unwrap().parse().unwrap();
    assert!(index < 999_999_999, "answered with the store's own index: {index}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "at once, not after the wait");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_route_is_served() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.yaml")).expect("openapi.yaml");
    let doc: serde_json::Value = serde_saphyr::from_str(&doc).expect("openapi.yaml is valid YAML");
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, Tuning::default()).await;
    let http = berth_tls::http();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 12, "{} paths documented", paths.len());
    for (path, ops) in paths {
        let concrete = path.replace("{group}", "g").replace("{name}", "n").replace("{id}", "x");
        for method in ops.as_object().unwrap().keys().filter(|k| *k != "parameters") {
            let url = format!("http://{}{concrete}", server.addr);
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = http
                .request(m, &url)
                .bearer_auth(admin_token(&dir))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path} is documented but not allowed");
            assert!(
                !body["error"].as_str().unwrap_or_default().contains("no such endpoint"),
                "{method} {path} is documented but not routed"
            );
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_heartbeat_reply_says_when_to_beat_next_from_the_node_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, Tuning { node_timeout: std::time::Duration::from_secs(3), ..Tuning::default() }).await;
    let client = berth_api::Client::new(&format!("http://{}", server.addr)).unwrap();
    let joined = client
        .join("test-join-token", &berth_api::JoinRequest { id: "n1".into(), kind: berth_api::Member::Agent })
        .await
        .unwrap();
    let client = client.with_credential(joined.credential);
    let node = berth_api::RegisterRequest {
        id: "n1".into(),
        hostname: "n1".into(),
        address: "127.0.0.1".into(),
        resources: berth_core::Resources { cpu: 1.0, memory: 512, ports: (30_000, 30_010) },
        labels: Default::default(),
        pool: berth_core::SHARED_POOL.into(),
        drivers: vec![],
    };
    client.register(&node).await.unwrap();
    let reply = client.heartbeat("n1", &Default::default()).await.unwrap();
    // Three beats per timeout: a node is cut off only after missing three in a row.
    assert_eq!((reply.interval_ms, reply.timeout_ms), (1_000, 3_000), "{reply:?}");
    // One node may report its metrics as often as it likes (every 10 ms would still be 100/s).
    assert_eq!(reply.metrics_every_ms, 10, "{reply:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_by_route_method_and_status_class() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, Tuning::default()).await;
    let http = berth_tls::http();
    let base = format!("http://{}", server.addr);
    for _ in 0..3 {
        assert!(http.get(format!("{base}/v1/health")).send().await.unwrap().status().is_success());
    }
    // No credential: refused, and counted as such under the route's template.
    let refused = http.post(format!("{base}/v1/nodes/n1/heartbeat")).body("{}").send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(http.get(format!("{base}/v1/nope")).send().await.unwrap().status().as_u16(), 404);
    let text =
        http.get(format!("{base}/metrics")).bearer_auth(admin_token(&dir)).send().await.unwrap().text().await.unwrap();
    for line in [
        "berth_server_requests_total{method=\"GET\",route=\"/v1/health\",code=\"2xx\"} 3",
        "berth_server_requests_total{method=\"POST\",route=\"/v1/nodes/{id}/heartbeat\",code=\"4xx\"} 1",
        "berth_server_requests_total{method=\"GET\",route=\"unmatched\",code=\"4xx\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_but_health_and_join_needs_a_token_and_the_first_start_writes_the_admins() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, Tuning::default()).await;
    let http = berth_tls::http();
    let base = format!("http://{}", server.addr);
    let token = admin_token(&dir);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("admin.token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only its owner reads the admin token");
    assert!(http.get(format!("{base}/v1/health")).send().await.unwrap().status().is_success());
    let (id, _) = token.rsplit_once('.').unwrap();
    for (bearer, status, says) in [
        (None, 401, "no token: pass --token or set BERTH_TOKEN".to_string()),
        (Some("garbage".to_string()), 401, "malformed token".into()),
        (Some(format!("{id}.wrong")), 401, format!("wrong secret for token {id}")),
        (Some("tok-000000000000.x".to_string()), 401, "unknown token tok-000000000000".into()),
        (Some(token.clone()), 200, String::new()),
    ] {
        for path in ["/v1/apps", "/metrics", "/v1/nodes", "/v1/events"] {
            let req = http.get(format!("{base}{path}"));
            let req = match &bearer {
                Some(b) => req.bearer_auth(b),
                None => req,
            };
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status().as_u16(), status, "{path} with {bearer:?}");
            let text = resp.text().await.unwrap();
            assert!(text.contains(&says), "{path} with {bearer:?}: {text}");
        }
    }
    let deleted = http.delete(format!("{base}/v1/apps/g/n")).send().await.unwrap();
    assert_eq!(deleted.status().as_u16(), 401, "a change without a token changes nothing");
    server.stop().await;
    // A restart keeps the token: it is made once.
    let again = start(&dir, Tuning::default()).await;
    assert_eq!(admin_token(&dir), token);
    let resp = http.get(format!("http://{}/v1/apps", again.addr)).bearer_auth(&token).send().await.unwrap();
    assert!(resp.status().is_success());
    again.stop().await;
}
