//! Bad requests get a 4xx JSON error and change nothing.

use berth_testkit::Platform;
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_and_change_nothing() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let (status, body) = p.request("PUT", "/v1/apps/g/web", "application/json", "{\"spec\": ").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("line 1"), "{body}");

    let bad_spec = r#"{"spec": {"group": "g", "name": "web", "driver": "exec", "command": ["x"], "cpu": -2}}"#;
    let (status, body) = p.request("PUT", "/v1/apps/g/web", "application/json", bad_spec).await;
    assert_eq!(status, 422);
    assert_eq!(body["details"][0]["field"], "cpu", "{body}");

    let (status, body) =
        p.request("PUT", "/v1/apps/g/web", "application/yaml", "group: g\nname: web\nimage: i\nportz: [1]\n").await;
    assert_eq!(status, 422);
    assert_eq!(body["details"][0]["suggestion"], "ports", "{body}");
    assert_eq!(body["details"][0]["line"], 4, "{body}");

    let (status, _) = p.request("PUT", "/v1/apps/g/other", "application/yaml", "group: g\nname: web\nimage: i\n").await;
    assert_eq!(status, 400, "the path and the spec must name the same app");

    let (status, body) = p.request("POST", "/v1/apps/g/nope/scale", "application/json", "{\"instances\": 2}").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("g/nope"));

    let (status, _) = p.request("GET", "/v1/no/such/thing", "application/json", "").await;
    assert_eq!(status, 404);

    assert_eq!(p.get("/v1/apps").await.unwrap(), Value::Array(vec![]), "nothing was half-applied");

    // A valid YAML body is accepted as is; scaling beyond the limit is refused and keeps the count.
    let spec = "group: g\nname: web\ndriver: exec\ncommand: [/bin/sleep, \"300\"]\ninstances: 0\n";
    let (status, body) = p.request("PUT", "/v1/apps/g/web", "application/yaml", spec).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = p.request("POST", "/v1/apps/g/web/scale", "application/json", "{\"instances\": 100000}").await;
    assert_eq!(status, 422);
    assert_eq!(p.get("/v1/apps/g/web").await.unwrap()["desired"], 0);
    let (status, body) =
        p.request("POST", "/v1/apps/g/web/scale", "application/json", "{\"instances\": \"two\"}").await;
    assert_eq!(status, 400);
    assert_eq!(body["details"][0]["field"], "instances", "a wrong type names its field: {body}");

    // A spec of the wrong type says where, by field, line and column.
    let typed = "{\"spec\": {\"group\": \"g\", \"name\": \"web\",\n \"instances\": \"five\"}}";
    let (status, body) = p.request("PUT", "/v1/apps/g/web", "application/json", typed).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["details"][0]["field"], "spec.instances", "{body}");
    assert_eq!(body["details"][0]["line"], 2, "{body}");
    assert!(body["error"].as_str().unwrap().contains("`spec.instances`: invalid type"), "{body}");

    // Refusals axum writes itself come as the documented JSON error too.
    // Just over the 2 MiB limit: the server reads all of it before refusing, so closing leaves
    // nothing unread (a body it had not read would make the close a reset, racing the answer).
    let huge = format!("{{\"spec\": \"{}\"}}", "x".repeat(2 << 20));
    let (status, body) = p.request("PUT", "/v1/apps/g/web", "application/json", &huge).await;
    assert_eq!(status, 413);
    assert!(body["error"].as_str().unwrap().contains("too large"), "{body}");
    let (status, body) = p.request("PATCH", "/v1/apps/g/web", "application/json", "{}").await;
    assert_eq!(status, 405);
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(p.get("/v1/apps/g/web").await.unwrap()["desired"], 0, "nothing changed");
}

/// A request sent as written: HTTP clients resolve `..` and `%2E%2E` before sending; an
/// attacker's does not.
async fn raw(p: &Platform, method: &str, path: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = p.api.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        p.admin_token()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::String(body.to_string())))
}

/// Hostile input (issue 17, item 7): names that could reach a path on disk are refused by their
/// rule, by `berth validate` and by the API, before anything uses them; an alias bomb is refused
/// saying which limit it passed.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_names_and_documents_are_refused_with_the_rule() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    for path in [
        "/v1/apps/%2E%2E/web/logs",
        "/v1/apps/shop/..%2F..%2Fetc/logs",
        "/v1/apps/shop/web%2F..%2Fpay/versions",
        "/v1/secrets/shop/..%2Fkey",
        "/v1/nodes/..",
    ] {
        let (status, body) = raw(&p, "GET", path).await;
        assert_eq!(status, 400, "{path}: {body}");
        let said = body["error"].as_str().unwrap_or_default();
        assert!(said.contains("must be") && said.contains(".."), "{path}: {body}");
    }
    let (status, body) = raw(&p, "DELETE", "/v1/secrets/shop/a%2Fb").await;
    assert_eq!(status, 400, "{body}");

    for (name, spec) in
        [("dots.yaml", "group: shop\nname: ../etc\nimage: i\n"), ("slash.yaml", "group: a/b\nname: web\nimage: i\n")]
    {
        let file = p.write(name, spec);
        let out = p.cli(&["validate", "-f", &file]).await;
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success() && said.contains("must be lowercase letters, digits and inner dashes"), "{said}");
        let (status, body) = p.request("POST", "/v1/plan", "application/yaml", spec).await;
        assert!(status == 422 || status == 400, "{status} {body}");
    }

    let mut bomb = String::from("group: g\nname: n\nimage: i\nx0: &x0 [a, a, a, a, a, a, a, a, a, a]\n");
    for i in 1..9 {
        bomb.push_str(&format!("x{i}: &x{i} [{}]\n", vec![format!("*x{}", i - 1); 10].join(", ")));
    }
    let (status, body) = p.request("PUT", "/v1/apps/g/n", "application/yaml", &bomb).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("past what a spec may take"), "{body}");
    assert_eq!(p.get("/v1/apps").await.unwrap(), Value::Array(vec![]), "nothing was written");
}
