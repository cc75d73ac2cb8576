//! TLS (issue 17, item 6): a server with `--tls` (the default beyond loopback) makes a CA and a
//! server certificate at first start and prints the CA's fingerprint; an agent pins it for its
//! first join, is handed the CA and keeps it; one that pins another CA is refused; the CLI trusts
//! the CA through --ca-file or its context; a server given --tls-cert/--tls-key serves those.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use berth_testkit::{free_port, port_block, wait_until};
use serde_json::Value;
use tokio::process::{Child, Command};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

struct Cluster {
    dir: tempfile::TempDir,
    url: String,
    server: Option<Child>,
}

/// Instances outlive their agent by design; a test leaves none behind.
impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(agents) = std::fs::read_dir(self.dir.path()) {
            for agent in agents.flatten() {
                berth_testkit::platform::kill_exec_instances(&agent.path().join("agent/exec"));
            }
        }
    }
}

impl Cluster {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spawn(&self, log: &str, args: &[&str]) -> Child {
        let log = std::fs::File::create(self.path(log)).unwrap();
        Command::new(BERTH)
            .args(args)
            .env_remove("BERTH_SERVER")
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_CA_FILE")
            .env("BERTH_CONFIG", self.path("cli-config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// A server on a free loopback port, with `extra` flags, answering on its health endpoint.
    async fn start(extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut c = Cluster { dir, url: format!("https://{addr}"), server: None };
        let data = c.path("data").display().to_string();
        let mut args = vec!["server", "--api", &addr, "--data-dir", &data];
        args.extend_from_slice(extra);
        c.server = Some(c.spawn("server.log", &args));
        let log = c.path("server.log");
        wait_until("the server serves HTTPS", Duration::from_secs(20), || async {
            std::fs::read_to_string(&log).unwrap_or_default().contains("berth server listening").then_some(())
        })
        .await;
        c
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.path("data/admin.token")).unwrap().trim().to_string()
    }

    /// The CLI against this server, as `args` says what it trusts.
    async fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(BERTH)
            .args(args)
            .env("BERTH_SERVER", &self.url)
            .env("BERTH_TOKEN", self.admin_token())
            .env_remove("BERTH_CA_FILE")
            .env("BERTH_CONFIG", self.path("cli-config.toml"))
            .output()
            .await
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    fn agent(&self, name: &str, extra: &[&str]) -> Child {
        let data = self.path(name).display().to_string();
        let token = self.path("data/join.token").display().to_string();
        let (first, last) = port_block();
        let ports = format!("{first}-{last}");
        let mut args = vec![
            "agent",
            "--server",
            &self.url,
            "--data-dir",
            &data,
            "--join-token-file",
            &token,
            "--driver",
            "exec",
            "--hostname",
            name,
            "--ports",
            &ports,
        ];
        args.extend_from_slice(extra);
        self.spawn(&format!("{name}.log"), &args)
    }
}

fn ca_fingerprint(ca: &Path) -> String {
    berth_tls::fingerprint(&berth_tls::certs_from_pem(ca).unwrap()[0])
}

async fn exits(child: &mut Child) -> bool {
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the agent exits instead of retrying")
        .unwrap();
    status.success()
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_pin_the_servers_own_ca_and_an_untrusted_one_is_refused() {
    let c = Cluster::start(&["--tls"]).await;
    let ca = c.path("data/tls/ca.pem");
    let fingerprint = ca_fingerprint(&ca);
    let log = std::fs::read_to_string(c.path("server.log")).unwrap();
    assert!(log.contains(&fingerprint), "the server prints its CA's fingerprint:\n{log}");
    let ca_file = ca.display().to_string();

    // Plain HTTP is not served; an https client that trusts nothing is refused, and told how.
    let plain = berth_tls::http().get(c.url.replace("https", "http") + "/v1/health").send().await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true), "no plain HTTP on the TLS port");
    let (ok, said) = c.cli(&["app", "ls"]).await;
    assert!(!ok && said.contains("is not trusted") && said.contains("--ca-file"), "{said}");
    let (ok, said) = c.cli(&["--ca-file", &ca_file, "app", "ls", "-o", "json"]).await;
    assert!(ok && said.trim() == "[]", "{said}");

    // An agent pinning another CA is refused, and exits saying so.
    let mut wrong = c.agent("wrong", &["--ca-fingerprint", &format!("sha256:{}", "ab".repeat(32))]);
    assert!(!exits(&mut wrong).await, "refused");
    let said = std::fs::read_to_string(c.path("wrong.log")).unwrap();
    assert!(said.contains("not the one pinned"), "{said}");

    // Pinning the right one, an agent joins, keeps the CA it is handed, and runs instances.
    let mut h1 = c.agent("h1", &["--ca-fingerprint", &fingerprint]);
    let kept = c.path("h1/agent/ca.pem");
    wait_until("the agent keeps the CA", Duration::from_secs(20), || async { kept.exists().then_some(()) }).await;
    assert_eq!(ca_fingerprint(&kept), fingerprint);
    let nodes = || async {
        let (ok, said) = c.cli(&["--ca-file", &ca_file, "node", "ls", "-o", "json"]).await;
        let nodes: Value = serde_json::from_str(&said).ok()?;
        (ok && nodes.as_array()?.iter().any(|n| n["hostname"] == "h1" && n["status"] == "ready")).then_some(())
    };
    wait_until("h1 is ready", Duration::from_secs(30), nodes).await;
    let bin = berth_testkit::image::testapp_binary();
    let spec = c.path("web.yaml");
    std::fs::write(&spec, format!("group: shop\nname: web\ndriver: exec\ncommand: [{}]\n", bin.display())).unwrap();
    let spec = spec.display().to_string();
    let (ok, said) = c.cli(&["--ca-file", &ca_file, "deploy", "-f", &spec, "--timeout", "60"]).await;
    assert!(ok, "{said}");

    // Started again with no flag, it trusts the CA it kept.
    h1.kill().await.unwrap();
    let _h1 = c.agent("h1", &[]);
    let log = c.path("h1.log");
    wait_until("h1 starts again", Duration::from_secs(20), || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains("berth agent started").then_some(())
    })
    .await;
    wait_until("h1 is ready again", Duration::from_secs(30), nodes).await;

    // A context carries the CA: the CLI then needs no flag.
    let (ok, said) = c.cli(&["--ca-file", &ca_file, "context", "add", "tls"]).await;
    assert!(ok, "{said}");
    let (ok, said) = c.cli(&["app", "ls", "-o", "json"]).await;
    assert!(ok && said.contains("shop/web"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_serves_the_certificate_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir.path()).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=ops CA", "-keyout", "ca.key", "-out", "ca.pem"];
    ca.extend(ec);
    ca.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"]);
    openssl(&ca);
    let mut csr = vec!["req", "-new", "-subj", "/CN=berth", "-keyout", "server.key", "-out", "server.csr"];
    csr.extend(ec);
    openssl(&csr);
    std::fs::write(dir.path().join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    let cert = dir.path().join("server.pem").display().to_string();
    let key = dir.path().join("server.key").display().to_string();
    let c = Cluster::start(&["--tls-cert", &cert, "--tls-key", &key]).await;
    assert!(!c.path("data/tls").exists(), "no CA of its own when given a certificate");
    let ca = dir.path().join("ca.pem").display().to_string();
    let (ok, said) = c.cli(&["--ca-file", &ca, "app", "ls", "-o", "json"]).await;
    assert!(ok && said.trim() == "[]", "{said}");
    let other = c.path("data/admin.token").display().to_string();
    let (ok, said) = c.cli(&["--ca-file", &other, "app", "ls"]).await;
    assert!(!ok && said.contains("--ca-file"), "a file with no certificate is refused: {said}");
}
