//! The `/v1` HTTP contract between server, agents and the CLI: request and response bodies,
//! the error body, and a typed client. Documented in `docs/openapi.yaml`.

pub mod exec_stream;
pub mod probe;

use std::collections::BTreeMap;
use std::time::Duration;

use berth_core::spec::DriverKind;
use berth_core::{AppSpec, AppVersion, Deployment, Event, Instance, InstanceState, Millis, Node, Resources, SpecError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Header carrying the store revision a response reflects; pass it back as `?index=` to block
/// until something newer exists.
pub const INDEX_HEADER: &str = "x-berth-index";

/// Every non-2xx response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<SpecError>,
}

/// An instance as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    #[serde(flatten)]
    pub instance: Instance,
    /// `host:port` where the first port answers.
    pub address: Option<String>,
}

impl From<Instance> for InstanceView {
    fn from(instance: Instance) -> Self {
        InstanceView { address: instance.address(), instance }
    }
}

/// Instance counts by state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub staging: usize,
    pub starting: usize,
    pub running: usize,
    pub failed: usize,
    pub stopped: usize,
    /// Live instances the platform is stopping.
    pub stopping: usize,
}

impl Counts {
    pub fn of<'a>(instances: impl Iterator<Item = &'a Instance>) -> Counts {
        let mut c = Counts::default();
        for i in instances {
            if i.state.is_live() && i.desired == berth_core::Desired::Stop {
                c.stopping += 1;
                continue;
            }
            match i.state {
                InstanceState::Staging => c.staging += 1,
                InstanceState::Starting => c.starting += 1,
                InstanceState::Running => c.running += 1,
                InstanceState::Failed => c.failed += 1,
                InstanceState::Stopped => c.stopped += 1,
            }
        }
        c
    }
}

/// An app with its live and recent instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub id: String,
    pub name: String,
    pub group: String,
    pub version: u64,
    /// Desired instances.
    pub desired: u32,
    pub image: Option<String>,
    pub spec: AppSpec,
    pub counts: Counts,
    /// Current-version instances running and ready, and no old version left.
    pub deployed: bool,
    pub destroying: bool,
    /// The latest deployment, running or ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Deployment>,
    /// Set while instances keep failing in a row: what the last one died of, and its last words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_loop: Option<CrashLoop>,
    /// The last version whose deployment ended with every instance healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_version: Option<u64>,
    /// Earlier versions with the current spec, whose instances count as current.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alike: Vec<u64>,
    /// Why instances are missing, when they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// The same as data, with its kind (a launch backoff, or each node's rejection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<berth_core::reason::Waiting>,
    pub instances: Vec<InstanceView>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl AppStatus {
    /// Whether instances of `version` run the current spec (as `App::is_current` decides).
    pub fn is_current(&self, version: u64) -> bool {
        version == self.version || self.alike.contains(&version)
    }
}

/// An app whose instances keep failing, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrashLoop {
    /// Failures in a row (each one a restart, as a new instance).
    pub failures: u32,
    /// No new instance is launched before this (the backoff).
    pub next_launch_at: Millis,
    /// The latest failed instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_log: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRequest {
    pub spec: AppSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployResponse {
    pub created: bool,
    /// False when the spec equals the current one.
    pub changed: bool,
    pub version: u64,
    pub app: AppStatus,
}

/// How a change treats a deployment in progress, and whether it starts as a canary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeOptions {
    /// Supersede a deployment in progress instead of being refused.
    pub force: bool,
    /// Start this many new instances beside the old ones and wait for `promote`.
    pub canary: Option<u32>,
}

impl ChangeOptions {
    fn query(&self) -> String {
        let mut parts = Vec::new();
        if self.force {
            parts.push("force=true".to_string());
        }
        if let Some(n) = self.canary {
            parts.push(format!("canary={n}"));
        }
        if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub instances: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeRequest {
    pub image: String,
}

/// Largest rule script the server stores, in bytes.
pub const MAX_RULE_SCRIPT: usize = 64 * 1024;

/// What an agent says about itself when it joins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub id: String,
    pub hostname: String,
    pub address: String,
    pub resources: Resources,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub drivers: Vec<DriverKind>,
}

/// An instance a node must run (or stop), with the spec of its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub instance: Instance,
    pub spec: AppSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    pub index: u64,
    pub assignments: Vec<Assignment>,
}

/// What an agent observed of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub id: String,
    pub state: InstanceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    /// The last lines a failed instance wrote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_log: Vec<String>,
    /// The instance could not start because another process holds these of its host ports:
    /// a placement failure, not a crash of the app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taken_ports: Vec<u16>,
    /// `reason` as data. Absent from an older agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<berth_core::Reason>,
}

impl InstanceReport {
    /// Says why, in data and in words.
    pub fn because(mut self, why: berth_core::Reason) -> Self {
        self.reason = Some(why.to_string());
        self.cause = Some(why);
        self
    }
}

/// A command to run inside a live instance (`berth app NAME exec`), as the server hands it to
/// the instance's agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Set by the server; the agent answers under it.
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub instance: String,
    pub command: Vec<String>,
    /// How long the command may run, in ms (default 60 s). A streamed command runs until it
    /// ends or its client goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Keep the command's stdin open for the client's input (`exec -i`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// Run the command on a terminal (`exec -t`); its output then comes as one stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// The client's terminal size when the command starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<exec_stream::TermSize>,
    /// Set by the server: the agent attaches a stream (`/v1/nodes/{id}/execs/{exec}/stream`)
    /// instead of answering with the collected output.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// What a command run in an instance did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Why it could not run at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What an agent says with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// Every port of the node's range it last found held by another process. Absent from an
    /// older agent, which leaves the node's record as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_ports: Option<Vec<u16>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRequest {
    pub reports: Vec<InstanceReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: Node,
    /// Resources promised to live instances.
    pub allocated: AllocatedResources,
    pub instances: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocatedResources {
    pub cpu: f64,
    pub memory: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused: its own words (the status is in `status()`, not in the message).
    #[error("{}", body.error)]
    Api { status: u16, body: ErrorBody },
    #[error(
        "cannot reach the Berth server at {url}: {why}\n  start one with `berth up`, or point at yours with --server URL or BERTH_SERVER"
    )]
    Unreachable { url: String, why: String },
    #[error("unexpected answer from {url}: {why}")]
    Decode { url: String, why: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A server's refusal: its JSON error body, or its words when it sent none.
fn refusal(status: reqwest::StatusCode, bytes: &[u8]) -> ClientError {
    let body = serde_json::from_slice(bytes)
        .unwrap_or_else(|_| ErrorBody { error: String::from_utf8_lossy(bytes).trim().to_string(), details: vec![] });
    ClientError::Api { status: status.as_u16(), body }
}

/// A typed `/v1` client.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

/// A response body with the store index it reflects.
#[derive(Debug, Clone)]
pub struct Indexed<T> {
    pub index: u64,
    pub value: T,
}

impl Client {
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ClientError::Unreachable { url: base.into(), why: e.to_string() })?;
        Ok(Client { base: base.trim_end_matches('/').to_string(), http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<Indexed<T>, ClientError> {
        let resp = req.send().await.map_err(|e| ClientError::Unreachable { url: url.into(), why: root_cause(&e) })?;
        let status = resp.status();
        let index =
            resp.headers().get(INDEX_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
        let bytes =
            resp.bytes().await.map_err(|e| ClientError::Unreachable { url: url.into(), why: root_cause(&e) })?;
        if !status.is_success() {
            return Err(refusal(status, &bytes));
        }
        let value =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode { url: url.into(), why: e.to_string() })?;
        Ok(Indexed { index, value })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Indexed<T>, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url), &url).await
    }

    /// A blocking read: returns once the store moves past `index` or `wait` passes.
    async fn get_after<T: DeserializeOwned>(
        &self,
        path: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<T>, ClientError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{path}{sep}index={index}&wait={}ms", self.base, wait.as_millis());
        self.send(self.http.get(&url).timeout(wait + Duration::from_secs(10)), &url).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<Indexed<T>, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.post(&url).json(body), &url).await
    }

    async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<Indexed<T>, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.put(&url).json(body), &url).await
    }

    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        Ok(self.get("/v1/health").await?.value)
    }

    pub async fn apps(&self) -> Result<Vec<AppStatus>, ClientError> {
        Ok(self.get("/v1/apps").await?.value)
    }

    pub async fn app(&self, id: &str) -> Result<Indexed<AppStatus>, ClientError> {
        self.get(&format!("/v1/apps/{id}")).await
    }

    pub async fn app_after(&self, id: &str, index: u64, wait: Duration) -> Result<Indexed<AppStatus>, ClientError> {
        self.get_after(&format!("/v1/apps/{id}"), index, wait).await
    }

    pub async fn deploy(&self, spec: &AppSpec, opts: ChangeOptions) -> Result<DeployResponse, ClientError> {
        let path = format!("/v1/apps/{}{}", spec.id(), opts.query());
        Ok(self.put(&path, &DeployRequest { spec: spec.clone() }).await?.value)
    }

    /// Replaces one instance with a fresh one.
    pub async fn restart_instance(&self, id: &str) -> Result<InstanceView, ClientError> {
        Ok(self.post(&format!("/v1/instances/{id}/restart"), &serde_json::json!({})).await?.value)
    }

    /// Runs a command in a live instance and returns what it did.
    pub async fn exec(&self, instance: &str, command: Vec<String>) -> Result<ExecResult, ClientError> {
        let req = ExecRequest { instance: instance.into(), command, ..Default::default() };
        Ok(self.post(&format!("/v1/instances/{instance}/exec"), &req).await?.value)
    }

    /// Starts a command in a live instance as a stream of frames (`exec_stream`): its input,
    /// output, terminal size and exit travel on the returned connection.
    pub async fn exec_stream(&self, instance: &str, req: &ExecRequest) -> Result<reqwest::Upgraded, ClientError> {
        self.post_upgrade(&format!("/v1/instances/{instance}/exec"), req).await
    }

    /// An agent's side of a streamed command the server handed it.
    pub async fn exec_attach(&self, node: &str, exec: &str) -> Result<reqwest::Upgraded, ClientError> {
        self.post_upgrade(&format!("/v1/nodes/{node}/execs/{exec}/stream"), &serde_json::json!({})).await
    }

    /// POSTs `body` asking to switch the connection to an exec stream.
    async fn post_upgrade<B: Serialize>(&self, path: &str, body: &B) -> Result<reqwest::Upgraded, ClientError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: reqwest::Error| ClientError::Unreachable { url: url.clone(), why: root_cause(&e) };
        let resp = self
            .http
            .post(&url)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, exec_stream::PROTOCOL)
            .json(body)
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        if status != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            return Err(refusal(status, &resp.bytes().await.map_err(unreachable)?));
        }
        resp.upgrade().await.map_err(unreachable)
    }

    /// Commands waiting for this node's agent, after waiting up to `wait` for one.
    pub async fn execs(&self, node: &str, wait: Duration) -> Result<Vec<ExecRequest>, ClientError> {
        let secs = wait.as_secs().max(1);
        Ok(self.get(&format!("/v1/nodes/{node}/execs?wait={secs}s")).await?.value)
    }

    /// An agent's answer to a command.
    pub async fn exec_result(&self, node: &str, result: &ExecResult) -> Result<(), ClientError> {
        self.post::<_, serde_json::Value>(&format!("/v1/nodes/{node}/execs/{}", result.id), result).await?;
        Ok(())
    }

    /// Stops one instance for good: its app runs one fewer.
    pub async fn stop_instance(&self, id: &str, opts: ChangeOptions) -> Result<InstanceView, ClientError> {
        Ok(self.post(&format!("/v1/instances/{id}/stop{}", opts.query()), &serde_json::json!({})).await?.value)
    }

    /// What deploying `spec` would do (`POST /v1/plan`), as the server sees it now.
    pub async fn plan(&self, spec: &AppSpec) -> Result<serde_json::Value, ClientError> {
        Ok(self.post("/v1/plan", &DeployRequest { spec: spec.clone() }).await?.value)
    }

    pub async fn scale(&self, id: &str, instances: u32, opts: ChangeOptions) -> Result<DeployResponse, ClientError> {
        Ok(self.post(&format!("/v1/apps/{id}/scale{}", opts.query()), &ScaleRequest { instances }).await?.value)
    }

    pub async fn upgrade(&self, id: &str, image: &str, opts: ChangeOptions) -> Result<DeployResponse, ClientError> {
        let path = format!("/v1/apps/{id}/upgrade{}", opts.query());
        Ok(self.post(&path, &UpgradeRequest { image: image.into() }).await?.value)
    }

    pub async fn restart(&self, id: &str, opts: ChangeOptions) -> Result<DeployResponse, ClientError> {
        Ok(self.post(&format!("/v1/apps/{id}/restart{}", opts.query()), &serde_json::json!({})).await?.value)
    }

    /// Sends a node's collected log lines.
    pub async fn ship_logs(&self, node: &str, batch: &LogBatch) -> Result<(), ClientError> {
        self.post::<_, serde_json::Value>(&format!("/v1/nodes/{node}/logs"), batch).await?;
        Ok(())
    }

    /// An app's log lines, merged over its instances in time order; with `follow`, `on_line` keeps
    /// being called as lines come until the server closes the stream or `on_line` returns false.
    pub async fn logs(
        &self,
        id: &str,
        query: &LogQuery,
        mut on_line: impl FnMut(LogLine) -> bool,
    ) -> Result<(), ClientError> {
        let url = format!("{}/v1/apps/{id}/logs", self.base);
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(since) = query.since {
            params.push(("since", since.to_string()));
        }
        if let Some(tail) = query.tail {
            params.push(("tail", tail.to_string()));
        }
        if let Some(instance) = &query.instance {
            params.push(("instance", instance.clone()));
        }
        if let Some(grep) = &query.grep {
            params.push(("grep", grep.clone()));
        }
        if query.follow {
            params.push(("follow", "true".into()));
        }
        let full = reqwest::Url::parse_with_params(&url, &params)
            .map_err(|e| ClientError::Unreachable { url: url.clone(), why: e.to_string() })?;
        let unreachable = |e: reqwest::Error| ClientError::Unreachable { url: url.clone(), why: root_cause(&e) };
        let mut resp = self.http.get(full).send().await.map_err(unreachable)?;
        if !resp.status().is_success() {
            let status = resp.status();
            let bytes = resp.bytes().await.map_err(unreachable)?;
            let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
                error: String::from_utf8_lossy(&bytes).trim().to_string(),
                details: vec![],
            });
            return Err(ClientError::Api { status: status.as_u16(), body });
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            pending.extend_from_slice(chunk.as_ref());
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if line.len() <= 1 {
                    continue; // a keep-alive newline
                }
                let Ok(parsed) = serde_json::from_slice::<LogLine>(&line) else { continue };
                if !on_line(parsed) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// A node's resource samples.
    pub async fn ship_metrics(&self, node: &str, report: &MetricsReport) -> Result<(), ClientError> {
        self.post::<_, serde_json::Value>(&format!("/v1/nodes/{node}/metrics"), report).await?;
        Ok(())
    }

    /// Use per app, node and cluster; with `app`, that app's instances too.
    pub async fn usage(&self, app: Option<&str>) -> Result<Usage, ClientError> {
        match app {
            Some(id) => Ok(self.get(&format!("/v1/apps/{id}/usage")).await?.value),
            None => Ok(self.get("/v1/usage").await?.value),
        }
    }

    pub async fn alerts(&self) -> Result<AlertList, ClientError> {
        Ok(self.get("/v1/alerts").await?.value)
    }

    /// A router's periodic report.
    pub async fn router_report(&self, id: &str, report: &RouterReport) -> Result<(), ClientError> {
        self.post::<_, serde_json::Value>(&format!("/v1/routers/{id}"), report).await?;
        Ok(())
    }

    /// The routers heard from, with the store index of the answer.
    pub async fn routers(&self) -> Result<Indexed<Vec<RouterView>>, ClientError> {
        self.get("/v1/routers").await
    }

    /// Whether routers are done with a stopping instance.
    pub async fn drain_status(&self, instance: &str) -> Result<DrainStatus, ClientError> {
        let url = format!("{}/v1/instances/{instance}/drain", self.base);
        Ok(self.send(self.http.get(&url), &url).await?.value)
    }

    /// Finishes a canary deployment.
    pub async fn promote(&self, id: &str) -> Result<DeployResponse, ClientError> {
        Ok(self.post(&format!("/v1/apps/{id}/promote"), &serde_json::json!({})).await?.value)
    }

    /// Back to `version`, or to the one before the current.
    pub async fn rollback(&self, id: &str, version: Option<u64>) -> Result<DeployResponse, ClientError> {
        Ok(self.post(&format!("/v1/apps/{id}/rollback"), &serde_json::json!({ "version": version })).await?.value)
    }

    pub async fn destroy(&self, id: &str) -> Result<AppStatus, ClientError> {
        let url = format!("{}/v1/apps/{id}", self.base);
        Ok(self.send(self.http.delete(&url), &url).await?.value)
    }

    pub async fn versions(&self, id: &str) -> Result<Vec<AppVersion>, ClientError> {
        Ok(self.get(&format!("/v1/apps/{id}/versions")).await?.value)
    }

    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        Ok(self.get("/v1/nodes").await?.value)
    }

    pub async fn events(&self, after: u64, limit: usize) -> Result<Vec<Event>, ClientError> {
        Ok(self.get(&format!("/v1/events?after={after}&limit={limit}")).await?.value)
    }

    pub async fn events_after(
        &self,
        after: u64,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<Vec<Event>>, ClientError> {
        self.get_after(&format!("/v1/events?after={after}&limit=1000"), index, wait).await
    }

    pub async fn register(&self, req: &RegisterRequest) -> Result<Node, ClientError> {
        Ok(self.post("/v1/nodes", req).await?.value)
    }

    pub async fn heartbeat(&self, node: &str, beat: &HeartbeatRequest) -> Result<(), ClientError> {
        self.post::<_, serde_json::Value>(&format!("/v1/nodes/{node}/heartbeat"), beat).await?;
        Ok(())
    }

    pub async fn assignments(&self, node: &str, index: u64, wait: Duration) -> Result<Assignments, ClientError> {
        Ok(self.get_after(&format!("/v1/nodes/{node}/assignments"), index, wait).await?.value)
    }

    pub async fn report(&self, node: &str, reports: Vec<InstanceReport>) -> Result<(), ClientError> {
        self.post::<_, serde_json::Value>(&format!("/v1/nodes/{node}/reports"), &ReportRequest { reports }).await?;
        Ok(())
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// One line an instance wrote, as collected by its node's agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// When the agent read it (the engine's timestamp for Docker), ms since the epoch.
    pub t: Millis,
    /// `GROUP/NAME`.
    pub app: String,
    pub instance: String,
    pub node: String,
    pub stream: LogStream,
    pub line: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// A batch of lines from one node, with what the node had to drop since its last batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogBatch {
    pub lines: Vec<LogLine>,
    /// Lines dropped per instance because the node's buffer for it was full.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dropped: BTreeMap<String, u64>,
}

/// Which lines `logs` returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogQuery {
    /// Only lines at or after this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Millis>,
    /// At most this many of the latest lines (before following).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// A regular expression the line must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grep: Option<String>,
    /// Keep the response open and send new lines as they come.
    #[serde(default)]
    pub follow: bool,
}

/// One instance's resource use at one moment, as its node's agent sampled it. Byte and CPU
/// counters are cumulative since the instance started; the server turns them into rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSample {
    pub instance: String,
    pub app: String,
    pub t: Millis,
    /// CPU time used since start, in seconds (all processes of the instance).
    pub cpu_seconds: f64,
    /// Memory in use (the cgroup's usage for Docker, the resident set for exec).
    pub memory_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_rx_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_tx_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    pub samples: Vec<InstanceSample>,
}

/// An instance's latest use, with rates from its last two samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceUsage {
    pub instance: String,
    pub app: String,
    pub node: String,
    pub t: Millis,
    /// Percent of one core.
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_rx_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_tx_bytes: Option<u64>,
    /// Times an instance of the app failed since the server started (a restart each).
    pub restarts: u64,
}

/// One instance's use over time (`GET /v1/apps/G/N/usage/history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceHistory {
    pub instance: String,
    pub points: Vec<UsagePoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsagePoint {
    pub t: Millis,
    /// Percent of one core since the previous point.
    pub cpu_percent: f64,
    pub memory_bytes: u64,
}

/// An app's use: the sum of its instances.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppUsage {
    pub app: String,
    pub instances: usize,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub restarts: u64,
    /// Reserved by the spec: cores and bytes.
    pub cpu_allocated: f64,
    pub memory_allocated_bytes: u64,
}

/// Allocated (what specs reserve) beside used (what instances take), per node and in all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacityUsage {
    pub name: String,
    pub cpu_cores: f64,
    pub cpu_allocated: f64,
    pub cpu_used: f64,
    pub memory_bytes: u64,
    pub memory_allocated_bytes: u64,
    pub memory_used_bytes: u64,
}

/// What `berth top` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub apps: Vec<AppUsage>,
    pub nodes: Vec<CapacityUsage>,
    pub cluster: CapacityUsage,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceUsage>,
}

/// An alert: a rule or a built-in condition that fired, with what it saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `APP:NAME` or `node:ID:NAME`: one alert per subject and rule at a time.
    pub id: String,
    /// `cpu`, `memory`, `restarts`, `5xx_rate`, `latency`, `crash_loop`, `oom_killed`, `node_lost`,
    /// `deployment_failed`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub severity: String,
    pub status: AlertStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// One line for people, like "shop/web is critical, cpu usage is 86.05".
    pub text: String,
    pub started_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Millis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// `GET /v1/alerts`: what fires now, and what fired lately (newest first).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertList {
    pub firing: Vec<Alert>,
    pub recent: Vec<Alert>,
}

/// What a router tells the control plane, every fraction of a second: which table it serves and
/// what it still has in flight to instances being stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterReport {
    /// The route snapshot index the router has applied.
    pub index: u64,
    pub zone: String,
    pub admin: String,
    /// Requests in flight per draining instance.
    #[serde(default)]
    pub in_flight: BTreeMap<String, u64>,
    /// Requests served per app (`GROUP/NAME`) or static upstream, since the router started.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, RouterCounts>,
    /// Access-log lines dropped since the router started, because its disk did not keep up.
    #[serde(default)]
    pub access_log_dropped: u64,
}

/// A router as the control plane last heard from it (`GET /v1/routers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterView {
    pub id: String,
    pub zone: String,
    pub admin: String,
    /// The route snapshot index it has applied.
    pub index: u64,
    pub seen_ms_ago: i64,
    /// Heard from recently enough to count: it holds up drains and deploys wait for it.
    pub live: bool,
    #[serde(default)]
    pub in_flight: BTreeMap<String, u64>,
}

/// A router's cumulative counts for one app.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouterCounts {
    /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx (router errors count as 5xx).
    pub by_class: [u64; 5],
    /// Latency histogram: requests per bucket of `LATENCY_BOUNDS_MS`, then those above the last.
    pub latency: Vec<u64>,
    pub latency_sum_ms: f64,
    pub in_flight: u64,
    /// Requests whose rule gave no decision, by reason in [`RULE_FAILURES`]' order.
    #[serde(default)]
    pub rule_failures: [u64; 3],
}

/// Why a rule gave no decision: it raised an error, it ran out of its budget, or it was not run
/// because it had (suspended).
pub const RULE_FAILURES: [&str; 3] = ["error", "overrun", "suspended"];

impl RouterCounts {
    /// Adds another router's (or cluster's) counts to these.
    pub fn add(&mut self, other: &RouterCounts) {
        for (a, b) in self.by_class.iter_mut().zip(other.by_class) {
            *a += b;
        }
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
        self.latency_sum_ms += other.latency_sum_ms;
        self.in_flight += other.in_flight;
        for (a, b) in self.rule_failures.iter_mut().zip(other.rule_failures) {
            *a += b;
        }
    }
}

/// Upper bounds (ms) of the latency buckets routers keep; one more bucket holds everything above.
pub const LATENCY_BOUNDS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

/// Whether routers are done with a stopping instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainStatus {
    pub instance: String,
    /// No router sends it new requests and none has any in flight to it.
    pub drained: bool,
    pub in_flight: u64,
    /// Routers heard from recently.
    pub routers: usize,
    /// Why it is not drained yet, per router.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
}

/// Everything a router needs, as of one store index: apps with their instances, static upstreams, rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteSnapshot {
    pub index: u64,
    pub apps: Vec<RouteApp>,
    pub upstreams: Vec<StaticUpstream>,
    pub rules: Vec<RuleScript>,
    /// Every app answers as `NAME.GROUP.<domain>`, unless a router is given its own.
    #[serde(default = "default_domain")]
    pub domain: String,
}

fn default_domain() -> String {
    "berth.local".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteApp {
    pub id: String,
    pub name: String,
    pub group: String,
    pub zones: Vec<String>,
    pub services: Vec<String>,
    /// Container ports, in the order of each instance's `host_ports`.
    pub ports: Vec<u16>,
    pub health: Option<berth_core::spec::HealthSpec>,
    #[serde(default)]
    pub balance: berth_core::spec::Balance,
    /// How long a new instance ramps up to its full weight.
    #[serde(default = "berth_core::spec::default_slow_start")]
    pub slow_start: berth_core::Dur,
    pub instances: Vec<RouteInstance>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteInstance {
    pub id: String,
    pub version: u64,
    pub host: String,
    pub host_ports: Vec<u16>,
    /// Running and healthy (when checked): may take new requests.
    pub ready: bool,
    /// Being stopped: no new requests, in-flight ones finish.
    pub draining: bool,
}

/// A service that is not a Berth app, routed by Host `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaticUpstream {
    pub name: String,
    pub servers: Vec<UpstreamServer>,
    #[serde(default)]
    pub balance: berth_core::spec::Balance,
    #[serde(default)]
    pub updated_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamServer {
    pub host: String,
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamRequest {
    pub servers: Vec<UpstreamServer>,
    #[serde(default)]
    pub balance: berth_core::spec::Balance,
}

/// What a rule script is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum RuleTarget {
    /// `GROUP/NAME`.
    App(String),
    Upstream(String),
}

impl std::fmt::Display for RuleTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleTarget::App(id) => write!(f, "app {id}"),
            RuleTarget::Upstream(name) => write!(f, "upstream {name}"),
        }
    }
}

/// A Lua request rule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleScript {
    pub target: RuleTarget,
    pub source: String,
    pub updated_at: Millis,
    /// What a request gets when the rule fails on it (an error, a spent budget).
    #[serde(default)]
    pub on_error: RuleOnError,
}

/// What a router does with a request whose rule raised an error or ran out of its budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleOnError {
    /// Serve it as if there were no rule (Slardar's checkups do the same): a broken rule does
    /// not take the app down.
    #[default]
    Open,
    /// Refuse it with 500: for rules that guard something.
    Closed,
}

impl RuleOnError {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleOnError::Open => "open",
            RuleOnError::Closed => "closed",
        }
    }
}

impl std::str::FromStr for RuleOnError {
    type Err = String;
    fn from_str(s: &str) -> Result<RuleOnError, String> {
        match s {
            "open" => Ok(RuleOnError::Open),
            "closed" => Ok(RuleOnError::Closed),
            other => Err(format!("on_error is `open` or `closed`, not `{other}`")),
        }
    }
}

impl Client {
    pub async fn routes(&self, index: u64, wait: Duration) -> Result<RouteSnapshot, ClientError> {
        Ok(self.get_after("/v1/routes", index, wait).await?.value)
    }

    pub async fn upstreams(&self) -> Result<Vec<StaticUpstream>, ClientError> {
        Ok(self.get("/v1/upstreams").await?.value)
    }

    pub async fn put_upstream(&self, name: &str, req: &UpstreamRequest) -> Result<StaticUpstream, ClientError> {
        Ok(self.put(&format!("/v1/upstreams/{name}"), req).await?.value)
    }

    pub async fn delete_upstream(&self, name: &str) -> Result<(), ClientError> {
        let url = format!("{}/v1/upstreams/{name}", self.base);
        self.send::<serde_json::Value>(self.http.delete(&url), &url).await?;
        Ok(())
    }

    fn rules_path(target: &RuleTarget) -> String {
        match target {
            RuleTarget::App(id) => format!("/v1/apps/{id}/rules"),
            RuleTarget::Upstream(name) => format!("/v1/upstreams/{name}/rules"),
        }
    }

    pub async fn rules(&self, target: &RuleTarget) -> Result<RuleScript, ClientError> {
        Ok(self.get(&Self::rules_path(target)).await?.value)
    }

    /// Puts a script in force; `on_error` none keeps the policy the target had (open at first).
    pub async fn set_rules(
        &self,
        target: &RuleTarget,
        source: &str,
        on_error: Option<RuleOnError>,
    ) -> Result<RuleScript, ClientError> {
        let query = on_error.map(|o| format!("?on_error={}", o.as_str())).unwrap_or_default();
        let url = format!("{}{}{query}", self.base, Self::rules_path(target));
        let req = self.http.put(&url).header("content-type", "text/x-lua").body(source.to_string());
        Ok(self.send(req, &url).await?.value)
    }

    pub async fn delete_rules(&self, target: &RuleTarget) -> Result<(), ClientError> {
        let url = format!("{}{}", self.base, Self::rules_path(target));
        self.send::<serde_json::Value>(self.http.delete(&url), &url).await?;
        Ok(())
    }
}
