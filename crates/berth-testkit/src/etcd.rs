//! A real etcd cluster for a test: Debian's `etcd` members on free loopback ports, each with its
//! own data directory, that a test can kill and start again.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

pub struct EtcdCluster {
    pub dir: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    /// Clients must come over TLS with a certificate of this CA's (`start_tls`).
    tls: Option<EtcdTlsFiles>,
}

/// What a TLS cluster was started with, PEM: its CA, and a certificate and key (for
/// `127.0.0.1`) that the members serve and that clients may present too.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    /// Plain HTTP `/health`, apart from the client port (which may be TLS).
    metrics: u16,
    child: Option<Child>,
}

/// The etcd binary, or `None` (the test is skipped) when it is not installed; in CI
/// (`BERTH_REQUIRE_DOCKER=1`, which requires every real part) a missing etcd fails the test.
pub fn etcd_binary(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("BERTH_REQUIRE_DOCKER").is_err(),
            "{test}: etcd is not installed (Debian: apt-get install etcd-server)"
        );
        eprintln!("skipping {test}: etcd is not installed (Debian: apt-get install etcd-server)");
    }
    found
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster answers; `None` when etcd is missing.
    pub fn start(test: &str, size: usize) -> Option<EtcdCluster> {
        Self::launch(test, size, false)
    }

    /// As `start`, the members serving clients over TLS only, with client certificates required
    /// (`--client-cert-auth`): see `tls_files`.
    pub fn start_tls(test: &str, size: usize) -> Option<EtcdCluster> {
        Self::launch(test, size, true)
    }

    /// The CA, certificate and key of a cluster started with `start_tls`.
    pub fn tls_files(&self) -> Option<&EtcdTlsFiles> {
        self.tls.as_ref()
    }

    fn launch(test: &str, size: usize, tls: bool) -> Option<EtcdCluster> {
        etcd_binary(test)?;
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = tls.then(|| {
            let tls_dir = dir.path().join("tls");
            let made = berth_tls::own_identity(&tls_dir, &["127.0.0.1".into(), "localhost".into()]).expect("TLS files");
            EtcdTlsFiles { ca: tls_dir.join(berth_tls::CA_FILE), cert: made.cert, key: made.key }
        });
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                metrics: free_port(),
                child: None,
            })
            .collect();
        let initial_cluster =
            members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer)).collect::<Vec<_>>().join(",");
        let token = format!("berth-test-{}", dir.path().file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
        let mut cluster = EtcdCluster { dir, members, initial_cluster, token, tls };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait_healthy(i);
        }
        Some(cluster)
    }

    fn spawn(&mut self, i: usize) {
        let data = self.dir.path().join(&self.members[i].name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", self.members[i].name)))
            .expect("etcd log file");
        let m = &self.members[i];
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command.arg("--cert-file").arg(&tls.cert).arg("--key-file").arg(&tls.key);
            command.arg("--trusted-ca-file").arg(&tls.ca).arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{}", m.metrics)])
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    /// `etcd://127.0.0.1:A,127.0.0.1:B,...`: what `berth server --store` takes.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// Each member's client address, `127.0.0.1:PORT`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("127.0.0.1:{}", m.client)).collect()
    }

    /// SIGKILL to member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory, and waits until it answers.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i);
    }

    /// Starts member `i` again without waiting: while it is the only one, it cannot answer.
    pub fn start_member(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Waits until member `i` says it is healthy (it has a leader and takes requests).
    pub fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !health(self.members[i].metrics) {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.members[i].name)))
                    .unwrap_or_default();
                panic!("etcd member {} did not become healthy in 30 s; its log:\n{log}", self.members[i].name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// etcd's `/health`: true once the member has a leader.
fn health(port: u16) -> bool {
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(3)));
    if conn.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer.replace(' ', "").contains("\"health\":\"true\"")
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
