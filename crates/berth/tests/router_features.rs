//! Router features beyond plain routing: zones, consistent hashing, protocol upgrades, HTTP/2,
//! draining through the admin API, and the admin token rule.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use berth_testkit::{Platform, wait_until};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn spec(name: &str, instances: u32, extra: &str) -> String {
    let bin = berth_testkit::image::testapp_binary();
    format!(
        "group: lab\nname: {name}\ndriver: exec\ninstances: {instances}\ncommand: [{}]\n{extra}\
         health:\n  http: /health\n  interval: 200ms\n  timeout: 1s\nupgrade:\n  min_healthy_time: 0s\n",
        bin.display()
    )
}

async fn wait_routed(p: &Platform, cluster: &str, n: usize) {
    wait_until(&format!("{cluster} to have {n} servers"), Duration::from_secs(10), || async {
        (p.admin_get("/status").await[cluster].as_array().map(Vec::len) == Some(n)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn zones_decide_which_router_serves_an_app() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let elsewhere = p.write("a.yaml", &spec("elsewhere", 1, "services: [elsewhere.test]\nzones: [edge]\n"));
    let here = p.write("b.yaml", &spec("here", 1, "services: [here.test]\nzones: [edge, default]\n"));
    p.cli_ok(&["deploy", "-f", &elsewhere, "--timeout", "30"]).await;
    p.cli_ok(&["deploy", "-f", &here, "--timeout", "30"]).await;
    wait_routed(&p, "cls:lab/here", 1).await;
    assert_eq!(p.via_router("here.test", "/").await.unwrap().0, 200);
    assert_eq!(
        p.via_router("elsewhere.test", "/").await.unwrap().0,
        404,
        "an app of zone `edge` only is not served here"
    );
    assert!(p.admin_get("/status").await.get("cls:lab/elsewhere").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn hashing_on_a_header_keeps_a_user_on_one_instance() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let file = p.write("h.yaml", &spec("sticky", 3, "services: [sticky.test]\nbalance: hash:header:X-User\n"));
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    wait_routed(&p, "cls:lab/sticky", 3).await;
    let client = berth_tls::http();
    let mut owner: HashMap<String, HashSet<String>> = HashMap::new();
    for round in 0..5 {
        for user in 0..20 {
            let r = client
                .get(format!("http://{}/", p.http))
                .header("host", "sticky.test")
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            let v: Value = r.json().await.unwrap();
            owner.entry(format!("user-{user}")).or_default().insert(v["instance"].as_str().unwrap().to_string());
            let _ = round;
        }
    }
    assert!(owner.values().all(|s| s.len() == 1), "each user stays on one instance: {owner:?}");
    let used: HashSet<&String> = owner.values().flatten().collect();
    assert!(used.len() >= 2, "users spread over instances: {used:?}");
    let explain = p.admin_get("/explain?host=sticky.test").await;
    assert_eq!(explain["balance"], "hash:header:x-user");
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrades_http2_and_draining() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let file = p.write("u.yaml", &spec("up", 2, "services: [up.test]\n"));
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    wait_routed(&p, "cls:lab/up", 2).await;

    // A protocol upgrade passes through and bytes flow both ways.
    let mut conn = tokio::net::TcpStream::connect(&p.http).await.unwrap();
    conn.write_all(b"GET /echo HTTP/1.1\r\nHost: up.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 1024];
    let n = conn.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    conn.write_all(b"ping through berth").await.unwrap();
    let mut echo = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut echo)).await.unwrap().unwrap();
    assert_eq!(&echo[..n], b"ping through berth");
    drop(conn);

    // HTTP/2 from the client (cleartext, prior knowledge); HTTP/1.1 to the instance.
    // In HTTP/2 the host travels as :authority, so address the app by name and resolve it here.
    let router: std::net::SocketAddr = p.http.parse().unwrap();
    let h2 = berth_tls::http_builder().http2_prior_knowledge().resolve("up.test", router).build().unwrap();
    let r = h2.get(format!("http://up.test:{}/", router.port())).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);

    // Drain one instance through the admin API: it gets no new request, and says when it is idle.
    let live = p.live("up").await;
    let drained = live[0]["id"].as_str().unwrap().to_string();
    let (status, answer) = p.admin_request("POST", &format!("/drain/{drained}"), "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["draining"], true);
    for _ in 0..20 {
        let (_, body) = p.via_router("up.test", "/").await.unwrap();
        assert!(!body.contains(&drained), "a drained instance got a request");
    }
    let (_, answer) = p.admin_request("GET", &format!("/drain/{drained}"), "").await;
    assert_eq!(answer["in_flight"], 0);
    assert_eq!(answer["idle"], true);
    let (status, _) = p.admin_request("POST", "/drain/no-such-instance", "").await;
    assert_eq!(status, 404);

    // Reading a drain state changes nothing; the last instance taking traffic is kept unless forced.
    let other = live[1]["id"].as_str().unwrap().to_string();
    let (_, answer) = p.admin_request("GET", &format!("/drain/{other}"), "").await;
    assert_eq!(answer["draining"], false, "{answer}");
    let (status, answer) = p.admin_request("POST", &format!("/drain/{other}"), "").await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("force"), "{answer}");
    let (_, body) = p.via_router("up.test", "/").await.unwrap();
    assert!(body.contains(&other), "the last instance still serves: {body}");
    let (status, _) = p.admin_request("POST", &format!("/drain/{other}?force=true"), "").await;
    assert_eq!(status, 200);
    let (code, body) = p.via_router("up.test", "/").await.unwrap();
    assert_eq!(code, 502, "both drained on purpose: {body}");
    assert!(body.contains("no server is available"), "{body}");
    // DELETE undoes a drain.
    for id in [&drained, &other] {
        let (status, answer) = p.admin_request("DELETE", &format!("/drain/{id}"), "").await;
        assert_eq!((status, &answer["draining"]), (200, &Value::Bool(false)), "{answer}");
    }
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let (code, body) = p.via_router("up.test", "/").await.unwrap();
        assert_eq!(code, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        seen.insert(v["instance"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "both serve again: {seen:?}");

    // No change through a request a web page could send: a simple POST (no or a form content
    // type), or any request under another Host name (DNS rebinding).
    let http = berth_tls::http();
    let url = format!("http://{}/drain/{drained}", p.admin);
    for ct in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let mut req = http.post(&url).body("x");
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        assert_eq!(req.send().await.unwrap().status(), 415, "{ct:?}");
    }
    let resp = http.get(format!("http://{}/status", p.admin)).header("host", "evil.example:7071").send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let (_, answer) = p.admin_request("GET", &format!("/drain/{drained}"), "").await;
    assert_eq!(answer["draining"], false, "nothing drained it: {answer}");
}

/// The admin token is read from a file, so it does not show in `ps`; the scheme is matched in
/// any case, and a wrong or missing token is refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_token_comes_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let p = Platform::start_args(
        BERTH.as_ref(),
        "exec",
        &["--admin-token-file".to_string(), token_file.display().to_string()],
    )
    .await;
    let http = berth_tls::http();
    let status = |auth: Option<&'static str>| {
        let mut req = http.get(format!("http://{}/status", p.admin));
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    wait_until("the router's admin API", Duration::from_secs(10), || async {
        (status(Some("Bearer s3cret-token")).await == 200).then_some(())
    })
    .await;
    assert_eq!(status(Some("bearer s3cret-token")).await, 200);
    assert_eq!(status(Some("BEARER  s3cret-token")).await, 200);
    assert_eq!(status(Some("Bearer s3cret-tokeN")).await, 401);
    assert_eq!(status(None).await, 401);
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", p.pid().unwrap())).unwrap();
    assert!(!cmdline.contains("s3cret"), "the token is not on the command line");

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out = tokio::process::Command::new(BERTH)
        .args(["router", "--server", "http://127.0.0.1:9", "--http", "127.0.0.1:0", "--router-admin", "127.0.0.1:0"])
        .arg("--admin-token-file")
        .arg(&empty)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the file is empty"));
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_off_loopback_needs_a_token() {
    let out = tokio::process::Command::new(BERTH)
        .args(["router", "--server", "http://127.0.0.1:9", "--http", "127.0.0.1:0", "--router-admin", "0.0.0.0:0"])
        .env_remove("BERTH_ROUTER_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not on loopback: set an admin token"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_is_terminated_with_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=secure.test"])
        .args(["-addext", "subjectAltName=DNS:secure.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let https_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let extra = vec![
        "--https".to_string(),
        format!("127.0.0.1:{https_port}"),
        "--tls-cert".to_string(),
        cert.display().to_string(),
        "--tls-key".to_string(),
        key.display().to_string(),
    ];
    let p = Platform::start_args(BERTH.as_ref(), "exec", &extra).await;
    let file = p.write("s.yaml", &spec("secure", 1, "services: [secure.test]\n"));
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    wait_routed(&p, "cls:lab/secure", 1).await;
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", flag, "--cacert"])
            .arg(&cert)
            .args(["--resolve", &format!("secure.test:{https_port}:127.0.0.1"), "-w", "\n%{http_version}"])
            .arg(format!("https://secure.test:{https_port}/"))
            .output()
            .await
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "curl {flag}: {}", String::from_utf8_lossy(&out.stderr));
        let (body, seen) = text.rsplit_once('\n').unwrap();
        assert_eq!(seen, version, "ALPN agreed on HTTP/{version}");
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["app"], "secure");
        assert_eq!(v["proto"], "https", "the instance learns the client came over TLS");
    }
    let (_, plain) = p.via_router("secure.test", "/").await.unwrap();
    assert!(plain.contains("\"proto\":\"http\""), "{plain}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tls_settings_are_refused_with_the_reason() {
    let run = |args: &'static [&'static str]| async move {
        let out = tokio::process::Command::new(BERTH)
            .args([
                "router",
                "--server",
                "http://127.0.0.1:9",
                "--http",
                "127.0.0.1:0",
                "--router-admin",
                "127.0.0.1:0",
            ])
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--tls-cert", "/no/such/cert.pem", "--tls-key", "/no/such/key.pem"]).await;
    assert!(err.contains("TLS: certificate /no/such/cert.pem"), "{err}");
    let err = run(&["--tls-cert", "/no/such/cert.pem"]).await;
    assert!(err.contains("--tls-key"), "a certificate without a key is refused: {err}");
}
