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
