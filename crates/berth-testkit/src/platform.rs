//! `berth up` as a real process with its own data directory, API port and host-port range.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

/// Polls `check` every 100 ms until it returns `Some`, failing the test after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_until_or(what, timeout, check, String::new).await
}

/// As [`wait_until`]; a timeout also prints what `explain` says (a process's log, say).
pub async fn wait_until_or<T, F, Fut>(what: &str, timeout: Duration, mut check: F, explain: impl Fn() -> String) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}\n{}", explain());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    // The kernel may hand the same port to two binds of port 0 in a row once the first is let
    // go: a platform's API and router once got one port between them. A port is given out once
    // per test process.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no port that this test process has not used already");
}

/// What the testapp instance at `address` answers on `/`: its instance, version and app.
pub async fn instance_answer(address: &str) -> Value {
    let text = berth_tls::http()
        .get(format!("http://{address}/"))
        .send()
        .await
        .expect("instance answers")
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{address} answered {text}: {e}"))
}

/// A block of 100 host ports below the kernel's ephemeral range, free right now and never handed
/// to another platform of this test process (tests in one binary run in parallel).
pub fn port_block() -> (u16, u16) {
    use std::hash::{BuildHasher, Hasher};
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..200 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let base = 20_000 + (h.finish() % 120) as u16 * 100;
        let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
        if taken.contains(&base) {
            continue;
        }
        let free = (base..base + 10).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            taken.push(base);
            return (base, base + 99);
        }
    }
    panic!("no free block of host ports in 20000-31999");
}

pub struct Platform {
    bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub api: String,
    api_addr: String,
    pub ports: (u16, u16),
    /// The router's traffic and admin addresses (`host:port`).
    pub http: String,
    pub admin: String,
    driver: String,
    extra: Vec<String>,
    /// Split mode: more arguments for `berth agent`.
    agent_extra: Vec<String>,
    /// `berth up`, or in split mode `berth server`.
    child: Option<Child>,
    /// Split mode: `berth agent` and `berth router` as processes of their own.
    split: Option<Vec<Child>>,
    pub node_id: String,
    client: reqwest::Client,
    /// Benchmarks: Berth's processes each start in a session of their own (`setsid`), so that
    /// the kernel's autogroups do not give them the load generator's CPU share.
    own_session: bool,
}

impl Platform {
    /// Starts `berth up` with `--driver driver` and waits until its node is ready.
    pub async fn start(bin: &Path, driver: &str) -> Platform {
        Self::start_with(bin, driver, port_block()).await
    }

    /// As `start`, with more arguments for `berth up`.
    pub async fn start_args(bin: &Path, driver: &str, extra: &[String]) -> Platform {
        Self::launch(bin, driver, port_block(), extra).await
    }

    /// As `start`, with the host-port range given.
    pub async fn start_with(bin: &Path, driver: &str, ports: (u16, u16)) -> Platform {
        Self::launch(bin, driver, ports, &[]).await
    }

    /// Server, agent and router as three processes, so that one can die alone.
    pub async fn start_split(bin: &Path, driver: &str) -> Platform {
        Self::start_split_args(bin, driver, &[], &[]).await
    }

    /// As `start_split`, with more arguments for `berth server` and for `berth agent`.
    pub async fn start_split_args(
        bin: &Path,
        driver: &str,
        server_extra: &[String],
        agent_extra: &[String],
    ) -> Platform {
        Self::start_split_ports(bin, driver, port_block(), server_extra, agent_extra).await
    }

    /// As `start_split_args`, with the host-port range given.
    pub async fn start_split_ports(
        bin: &Path,
        driver: &str,
        ports: (u16, u16),
        server_extra: &[String],
        agent_extra: &[String],
    ) -> Platform {
        let mut p = Self::new(bin, driver, ports, server_extra);
        p.agent_extra = agent_extra.to_vec();
        p.split = Some(Vec::new());
        p.spawn();
        p.wait_ready().await;
        p
    }

    /// As `start_with`, for a benchmark: `berth up` in a session of its own.
    pub async fn start_in_own_session(bin: &Path, driver: &str, ports: (u16, u16)) -> Platform {
        let mut p = Self::new(bin, driver, ports, &[]);
        p.own_session = true;
        p.spawn();
        p.wait_ready().await;
        p
    }

    async fn launch(bin: &Path, driver: &str, ports: (u16, u16), extra: &[String]) -> Platform {
        let mut p = Self::new(bin, driver, ports, extra);
        p.spawn();
        p.wait_ready().await;
        p
    }

    fn new(bin: &Path, driver: &str, ports: (u16, u16), extra: &[String]) -> Platform {
        let port = free_port();
        Platform {
            bin: bin.to_path_buf(),
            dir: tempfile::tempdir().expect("tempdir"),
            api: format!("http://127.0.0.1:{port}"),
            api_addr: format!("127.0.0.1:{port}"),
            ports,
            http: format!("127.0.0.1:{}", free_port()),
            admin: format!("127.0.0.1:{}", free_port()),
            driver: driver.to_string(),
            extra: extra.to_vec(),
            agent_extra: Vec::new(),
            child: None,
            split: None,
            node_id: String::new(),
            client: berth_tls::http(),
            own_session: false,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The CLI's contexts for this platform (`BERTH_CONFIG`): `berth up` saves its own there,
    /// never in the HOME of whoever runs the tests.
    pub fn cli_config(&self) -> PathBuf {
        self.dir.path().join("cli-config.toml")
    }

    /// The admin token the server made at first start (`<data-dir>/admin.token`).
    pub fn admin_token(&self) -> String {
        let path = self.data_dir().join("admin.token");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
    }

    /// What the CLI is run with here: the contexts file and the admin token, when there is one.
    fn cli_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("BERTH_CONFIG", self.cli_config().display().to_string())];
        if let Ok(token) = std::fs::read_to_string(self.data_dir().join("admin.token")) {
            env.push(("BERTH_TOKEN", token.trim().to_string()));
        }
        env
    }

    /// A request builder to this platform with the admin token.
    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match std::fs::read_to_string(self.data_dir().join("admin.token")) {
            Ok(token) => req.bearer_auth(token.trim()),
            Err(_) => req,
        }
    }

    /// The file with the join token the server is started with and its agents join with.
    pub fn join_token_file(&self) -> PathBuf {
        let path = self.dir.path().join("join.token");
        if !path.exists() {
            let token = format!("test-join-{}-{}", std::process::id(), self.api_addr.replace([':', '.'], "-"));
            std::fs::write(&path, token).expect("write the join token");
        }
        path
    }

    fn process(&self, log_name: &str, args: &[String]) -> Child {
        self.process_env(log_name, args, &[])
    }

    fn process_env(&self, log_name: &str, args: &[String], env: &[(&str, &str)]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log_name))
            .expect("log file");
        let mut command = if self.own_session {
            // setsid execs the program in the same process (the child leads no group yet).
            let mut c = Command::new("setsid");
            c.arg(&self.bin);
            c
        } else {
            Command::new(&self.bin)
        };
        command
            .args(args)
            .env("BERTH_LOG", "info,berth_agent=debug")
            .env("BERTH_SERVER", &self.api)
            .env("BERTH_CONFIG", self.cli_config())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn berth")
    }

    fn spawn(&mut self) {
        let data = self.data_dir().display().to_string();
        let strings = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let router = strings(&["--http", &self.http, "--router-admin", &self.admin, "--domain", "berth.test"]);
        let token = self.join_token_file().display().to_string();
        if self.split.is_none() {
            let mut args = strings(&["up", "--data-dir", &data, "--api", &self.api_addr, "--join-token-file", &token]);
            args.extend(self.node_args());
            args.extend(router);
            args.extend(self.extra.iter().cloned());
            self.child = Some(self.process("berth-up.log", &args));
            return;
        }
        let mut server = strings(&["server", "--data-dir", &data, "--api", &self.api_addr, "--domain", "berth.test"]);
        if !self.extra.iter().any(|a| a.starts_with("--join-token")) {
            server.extend(strings(&["--join-token-file", &token]));
        }
        server.extend(self.extra.iter().cloned());
        self.child = Some(self.process("berth-server.log", &server));
        if self.split.as_ref().is_some_and(Vec::is_empty) {
            let agent = self.agent_process();
            let mut router_args = strings(&["router", "--data-dir", &data, "--join-token-file", &token]);
            router_args.extend(router);
            let children = vec![agent, self.process("berth-router.log", &router_args)];
            self.split = Some(children);
        }
    }

    /// The node's flags, the same for `berth up` and `berth agent`.
    fn node_args(&self) -> Vec<String> {
        let ports = format!("{}-{}", self.ports.0, self.ports.1);
        ["--driver", &self.driver, "--pull", "never", "--ports", &ports].iter().map(|x| x.to_string()).collect()
    }

    fn agent_process(&self) -> Child {
        let mut args: Vec<String> = vec!["agent".into(), "--data-dir".into(), self.data_dir().display().to_string()];
        args.extend(self.node_args());
        if !self.agent_extra.iter().any(|a| a.starts_with("--join-token")) {
            args.extend(["--join-token-file".to_string(), self.join_token_file().display().to_string()]);
        }
        args.extend(self.agent_extra.iter().cloned());
        self.process("berth-agent.log", &args)
    }

    /// Another node: a `berth agent` of its own (data dir, host-port block, `--hostname NAME`)
    /// joined to this platform's server, with `extra` flags (`--label rack=r1`). It stops when
    /// the returned child is dropped; its output goes to `agent-NAME.log`.
    pub fn add_agent(&self, name: &str, extra: &[&str]) -> Child {
        self.add_agent_env(name, extra, &[])
    }

    /// As `add_agent`, with more environment for the agent (`DOCKER_HOST`).
    pub fn add_agent_env(&self, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Child {
        let data = self.dir.path().join("agents").join(name);
        let ports = port_block();
        let mut args: Vec<String> = vec!["agent".into(), "--data-dir".into(), data.display().to_string()];
        let ports = format!("{}-{}", ports.0, ports.1);
        args.extend(
            ["--driver", &self.driver, "--pull", "never", "--ports", &ports, "--hostname", name].map(String::from),
        );
        if !extra.iter().any(|a| a.starts_with("--join-token")) {
            args.extend(["--join-token-file".to_string(), self.join_token_file().display().to_string()]);
        }
        args.extend(extra.iter().map(|x| x.to_string()));
        self.process_env(&format!("agent-{name}.log"), &args, env)
    }

    /// A machine dies: SIGKILL of the agent `add_agent(name)` started and of every exec
    /// instance it started, all at once.
    /// With the Docker driver, its containers are killed (`docker kill`), left on the engine as
    /// a dead machine's would be until the platform is dropped.
    pub async fn kill_machine(&self, name: &str, agent: &mut Child) {
        let _ = agent.start_kill();
        let data = self.dir.path().join("agents").join(name);
        kill_exec_instances(&data.join("agent/exec"));
        if let Some(node) = agent_node_id(&data) {
            docker_containers(&node, &["kill"]);
        }
        let _ = agent.wait().await;
    }

    /// Split mode: starts the agent again (after `kill_agent`); it keeps its node id.
    pub fn restart_agent(&mut self) {
        let agent = self.agent_process();
        if let Some(children) = self.split.as_mut()
            && let Some(slot) = children.first_mut()
        {
            *slot = agent;
        }
    }

    /// Split mode: SIGKILL of the agent alone (its node goes silent).
    pub async fn kill_agent(&mut self) {
        if let Some(agent) = self.split.as_mut().and_then(|c| c.first_mut()) {
            let _ = agent.start_kill();
            let _ = agent.wait().await;
        }
    }

    /// Split mode: waits up to `within` for the `berth router` process to exit, and returns how
    /// it did; panics if it is still running then.
    pub async fn router_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let router = self.split.as_mut().and_then(|c| c.get_mut(1)).expect("split mode has a router process");
        tokio::time::timeout(within, router.wait())
            .await
            .unwrap_or_else(|_| panic!("the router still runs after {within:?}"))
            .expect("wait for the router")
    }

    /// Split mode: the `berth agent` process id.
    pub fn agent_pid(&self) -> Option<u32> {
        self.split.as_ref().and_then(|c| c.first()).and_then(Child::id)
    }

    /// The `berth up` process id (in split mode: the server's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The platform's own logs, for failure messages.
    pub fn log(&self) -> String {
        ["berth-up.log", "berth-server.log", "berth-agent.log", "berth-router.log"]
            .iter()
            .filter_map(|name| std::fs::read_to_string(self.dir.path().join(name)).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn wait_ready(&mut self) {
        // A platform that does not come up says why: its own log, not only a timeout.
        let log = || format!("its log:\n{}", tail(&self.log(), 40));
        let node = wait_until_or(
            "berth up to answer with a ready node",
            Duration::from_secs(20),
            || async {
                let nodes = self.get("/v1/nodes").await.ok()?;
                let ready = nodes.as_array()?.iter().find(|n| n["status"] == "ready")?;
                ready["id"].as_str().map(str::to_string)
            },
            log,
        )
        .await;
        // Every platform here runs a router: ready means it has reported, so a deploy waits for
        // it to route the change (`deploy` waits for the live routers it knows of).
        wait_until_or(
            "the router to report to the control plane",
            Duration::from_secs(20),
            || async {
                let routers = self.get("/v1/routers").await.ok()?;
                routers.as_array()?.iter().any(|r| r["live"] == true).then_some(())
            },
            log,
        )
        .await;
        self.node_id = node;
    }

    /// GET a `/v1` path and decode the JSON body; `Err` carries the status and body.
    pub async fn get(&self, path: &str) -> Result<Value, String> {
        let resp =
            self.authed(self.client.get(format!("{}{path}", self.api))).send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if status.is_success() { Ok(body) } else { Err(format!("{status}: {body}")) }
    }

    /// GET of a text from the API (`/metrics`), as admin.
    pub async fn get_text(&self, path: &str) -> String {
        let resp = self.authed(self.client.get(format!("{}{path}", self.api))).send().await.expect("the API answers");
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.text().await.expect("a text")
    }

    /// GET from the router's admin API.
    pub async fn admin_get(&self, path: &str) -> Value {
        let resp = self.client.get(format!("http://{}{path}", self.admin)).send().await.expect("admin answers");
        resp.json().await.expect("admin JSON")
    }

    /// A request to the router's admin API; returns the status and the JSON body.
    pub async fn admin_request(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = self
            .authed(self.client.request(method, format!("http://{}{path}", self.admin)))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("admin");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// GET through the router with a Host header; returns the status and the body text.
    pub async fn via_router(&self, host: &str, path: &str) -> Result<(u16, String), String> {
        let resp = self
            .client
            .get(format!("http://{}{path}", self.http))
            .header("host", host)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.map_err(|e| e.to_string())?))
    }

    /// Sends a raw request; returns the status and the JSON body.
    pub async fn request(&self, method: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = self
            .authed(self.client.request(method, format!("{}{path}", self.api)))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The `berth` CLI against this platform with a terminal of its own (`script` gives it a
    /// pty): stdin and stdout are piped to the test, through that terminal.
    pub fn cli_in_terminal(&self, args: &str) -> tokio::process::Child {
        self.terminal_running(&format!("{} {args}", self.bin.display()))
    }

    /// As `cli_in_terminal`, on a terminal of `cols` x `rows` cells.
    pub fn cli_in_sized_terminal(&self, args: &str, cols: u16, rows: u16) -> tokio::process::Child {
        self.terminal_running(&format!("stty cols {cols} rows {rows}; {} {args}", self.bin.display()))
    }

    fn terminal_running(&self, line: &str) -> tokio::process::Child {
        Command::new("script")
            .args(["-qec", line, "/dev/null"])
            .env("BERTH_SERVER", &self.api)
            .envs(self.cli_env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("script (util-linux)")
    }

    /// Runs the `berth` CLI against this platform.
    pub async fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("BERTH_SERVER", &self.api)
            .envs(self.cli_env())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run berth")
    }

    /// Runs the `berth` CLI with `input` on its stdin, closed after it.
    pub async fn cli_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        use tokio::io::AsyncWriteExt;
        let mut child = Command::new(&self.bin)
            .args(args)
            .env("BERTH_SERVER", &self.api)
            .envs(self.cli_env())
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run berth");
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(input).await.expect("write the CLI's input");
        drop(stdin);
        child.wait_with_output().await.expect("run berth")
    }

    /// Runs the CLI, fails the test unless it exits 0, and returns stdout.
    pub async fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args).await;
        assert!(
            out.status.success(),
            "berth {args:?} failed ({}):\nstdout: {}\nstderr: {}\nplatform log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `berth app NAME status -o json`.
    pub async fn status(&self, app: &str) -> Value {
        let out = self.cli_ok(&["app", app, "status", "-o", "json"]).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status of {app} is not JSON ({e}): {out}"))
    }

    /// Writes a file into the platform's directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path.display().to_string()
    }

    /// SIGKILL of `berth up` (in split mode: of the server alone): no chance to flush or say goodbye.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("kill berth up");
            let _ = child.wait().await;
        }
    }

    /// SIGTERM of `berth up` (in split mode: of the server): its exit status, or none when it is
    /// still running after `within` (it is then killed).
    pub async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()?).ok()?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).ok()?;
        match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                None
            }
        }
    }

    /// From the next (re)start on, `berth up` (in split mode: the server) takes these arguments
    /// beside its own instead of those it was started with.
    pub fn set_extra_args(&mut self, extra: &[String]) {
        self.extra = extra.to_vec();
    }

    /// Starts `berth up` (in split mode: the server) again on the same data directory and ports.
    pub async fn restart(&mut self) {
        self.kill9().await;
        self.spawn();
        self.wait_ready().await;
    }

    /// Starts `berth up` (in split mode: the server) again after `kill9`, on the same data
    /// directory and ports: for a test that keeps it down for a while first.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again after kill9");
        self.spawn();
        self.wait_ready().await;
    }

    /// hostname -> node id of the nodes in state `ready`, once there are `n` of them.
    pub async fn ready_nodes(&self, n: usize) -> std::collections::BTreeMap<String, String> {
        wait_until("every node ready", Duration::from_secs(20), || async {
            let all: Vec<Value> = serde_json::from_value(self.get("/v1/nodes").await.ok()?).ok()?;
            let ready: std::collections::BTreeMap<String, String> = all
                .iter()
                .filter(|n| n["state"] == "ready")
                .map(|n| {
                    let field = |k: &str| n[k].as_str().unwrap_or_default().to_string();
                    (field("hostname"), field("id"))
                })
                .collect();
            (ready.len() == n).then_some(ready)
        })
        .await
    }

    /// Live (staging, starting, running) instances of `app`, by id.
    pub async fn live(&self, app: &str) -> Vec<Value> {
        let s = self.status(app).await;
        s["instances"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter(|i| {
                        matches!(i["state"].as_str(), Some("staging" | "starting" | "running")) && i["desired"] == "run"
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Platform {
    fn drop(&mut self) {
        for child in self.child.iter_mut().chain(self.split.iter_mut().flatten()) {
            let _ = child.start_kill();
        }
        // Instances outlive Berth by design; a test leaves none behind, on any of its nodes.
        if !self.node_id.is_empty() {
            docker_containers(&self.node_id, &["rm", "-f"]);
        }
        if let Ok(added) = std::fs::read_dir(self.dir.path().join("agents")) {
            for agent in added.flatten() {
                if let Some(node) = agent_node_id(&agent.path()) {
                    docker_containers(&node, &["rm", "-f"]);
                }
            }
        }
        // The platform's own agent, and every agent a test added (`add_agent`).
        kill_exec_instances(&self.data_dir().join("agent/exec"));
        if let Ok(added) = std::fs::read_dir(self.dir.path().join("agents")) {
            for agent in added.flatten() {
                kill_exec_instances(&agent.path().join("agent/exec"));
            }
        }
    }
}

/// The node id of the agent whose data dir is `data`, from the credential it keeps.
fn agent_node_id(data: &Path) -> Option<String> {
    let credential = std::fs::read_to_string(data.join("agent").join(berth_api::join::CREDENTIAL_FILE)).ok()?;
    berth_api::join::credential_id(credential.trim()).map(str::to_string)
}

/// Removes, when dropped, every container of Berth's node: for tests that run their agents
/// without a `Platform`, whose drop does the same. Instances outlive Berth by design.
pub struct NodeContainers(pub String);

impl Drop for NodeContainers {
    fn drop(&mut self) {
        docker_containers(&self.0, &["rm", "-f"]);
    }
}

/// Runs `docker <command> <ids>` on every container (running or not) of Berth's node `node`.
fn docker_containers(node: &str, command: &[&str]) {
    let filter = format!("label=berth.node={node}");
    let Ok(out) = std::process::Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output() else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
    if !ids.is_empty() {
        let _ = std::process::Command::new("docker").args(command).args(&ids).output();
    }
}

/// SIGKILL to the process group of every exec instance whose state is under `dir` (an agent's
/// `<data-dir>/agent/exec`): for tests that run agents without a `Platform`, whose drop does it.
pub fn kill_exec_instances(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("proc.json")) else {
            continue;
        };
        let Ok(state) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if let Some(pid) = state["pid"].as_i64().filter(|p| *p > 1) {
            let _ = std::process::Command::new("kill").args(["-9", "--", &format!("-{pid}")]).output();
        }
    }
}
