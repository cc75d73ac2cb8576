//! The typed `/v1` client.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use berth_core::{AppSpec, AppVersion, Event, Node, Pools};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    AlertList, AppStatus, Assignments, ChangeOptions, ClientError, DeployRequest, DeployResponse, DrainRequest,
    DrainStatus, EligibilityRequest, ErrorBody, ExecRequest, ExecResult, GroupPoolsRequest, HeartbeatReply,
    HeartbeatRequest, InstanceReport, InstanceView, JoinReply, JoinRequest, LogBatch, LogLine, LogQuery, MetricsReport,
    NodeDetail, NodeView, PoolSettingsRequest, PoolView, RegisterRequest, ReportRequest, RouteSnapshot, RouterReport,
    RouterView, RuleOnError, RuleScript, RuleTarget, ScaleRequest, StaticUpstream, UpgradeRequest, UpstreamRequest,
    Usage, exec_stream,
};

/// Header carrying the store revision a response reflects; pass it back as `?index=` to block
/// until something newer exists.
pub const INDEX_HEADER: &str = "x-berth-index";

/// The servers a client may talk to (`--server a,b,c`), and the one it talks to now: a request
/// that cannot connect goes to the next, and the client stays there.
#[derive(Debug)]
struct Servers {
    urls: Vec<String>,
    current: AtomicUsize,
}

impl Servers {
    fn parse(list: &str) -> Result<Servers, ClientError> {
        let urls: Vec<String> =
            list.split(',').map(|u| u.trim().trim_end_matches('/').to_string()).filter(|u| !u.is_empty()).collect();
        if urls.is_empty() {
            return Err(ClientError::Unreachable { url: list.into(), why: "no server address given".into() });
        }
        Ok(Servers { urls, current: AtomicUsize::new(0) })
    }

    fn current(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// Moves on from `failed` (unless another request already did) and returns where to now.
    fn next_after(&self, failed: &str) -> &str {
        let at = self.current.load(Ordering::Relaxed) % self.urls.len();
        if self.urls[at] == failed {
            let _ = self.current.compare_exchange(at, (at + 1) % self.urls.len(), Ordering::Relaxed, Ordering::Relaxed);
        }
        self.current()
    }
}

/// How long a request is sent again while no server leads (an election takes about 3 s).
const BETWEEN_LEADERS: Duration = Duration::from_secs(15);

/// A typed `/v1` client.
#[derive(Debug, Clone)]
pub struct Client {
    servers: Arc<Servers>,
    http: reqwest::Client,
    /// An agent's or router's own credential (`ID.SECRET`), sent as the bearer.
    credential: Option<String>,
    /// A bound on requests that set none of their own (`with_request_timeout`).
    request_timeout: Option<Duration>,
}

/// A response body with the store index it reflects.
#[derive(Debug, Clone)]
pub struct Indexed<T> {
    pub index: u64,
    pub value: T,
}

impl Client {
    /// A client of a plain-HTTP server (an `https://` one is refused: it needs `with_trust`).
    /// `base` may list several servers sharing a store, comma-separated.
    pub fn new(base: &str) -> Result<Self, ClientError> {
        Self::with_trust(base, &berth_tls::Trust::Nothing)
    }

    /// A client trusting `trust` for an `https://` server: Berth's servers have Berth's CAs, so no
    /// system roots.
    pub fn with_trust(base: &str, trust: &berth_tls::Trust) -> Result<Self, ClientError> {
        let unusable = |why: String| ClientError::Unreachable { url: base.into(), why };
        let http = berth_tls::http_builder_trusting(trust)
            .map_err(|e| unusable(e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| unusable(e.to_string()))?;
        Ok(Client { servers: Arc::new(Servers::parse(base)?), http, credential: None, request_timeout: None })
    }

    /// This client, sending `credential` (from `join`) with every request.
    pub fn with_credential(mut self, credential: String) -> Self {
        self.credential = Some(credential);
        self
    }

    /// This client, giving up on a request after `timeout` unless the request says otherwise
    /// (a blocking read waits as long as it asked to). For agents and routers: a connection a
    /// partition silenced would otherwise hold a request, and whatever waits on it, for good.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credential {
            Some(c) => req.bearer_auth(c),
            None => req,
        }
    }

    /// Presents the server's join token and gets a credential of one's own.
    pub async fn join(&self, token: &str, req: &JoinRequest) -> Result<JoinReply, ClientError> {
        let url = format!("{}/v1/join", self.base());
        Ok(self.send(self.http.post(&url).bearer_auth(token).json(req), &url).await?.value)
    }

    /// The server requests go to now.
    pub fn base(&self) -> &str {
        self.servers.current()
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<Indexed<T>, ClientError> {
        let req = if self.credential.is_some() { self.authorized(req) } else { req };
        let unreachable = |e: reqwest::Error| unreachable(url, &e);
        let (http, req) = req.build_split();
        let mut req = req.map_err(unreachable)?;
        if let Some(bound) = self.request_timeout {
            req.timeout_mut().get_or_insert(bound);
        }
        let resp = self.execute(&http, req, url).await.map_err(unreachable)?;
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

    /// Sends `req`, and again while the servers answer 503 with `Retry-After` (between leaders:
    /// the request was not looked at), for up to `BETWEEN_LEADERS`.
    async fn execute(
        &self,
        http: &reqwest::Client,
        req: reqwest::Request,
        url: &str,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let deadline = tokio::time::Instant::now() + BETWEEN_LEADERS;
        let mut req = req;
        loop {
            let again = req.try_clone();
            let answer = self.execute_once(http, req, url).await?;
            let retry_after = answer.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                && answer.headers().contains_key(reqwest::header::RETRY_AFTER);
            match again {
                Some(again) if retry_after && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    req = again;
                }
                _ => return Ok(answer),
            }
        }
    }

    /// Sends `req`; when no connection to its server can be made (the request never left), to
    /// each other server in turn. A request that was sent is never sent again here.
    async fn execute_once(
        &self,
        http: &reqwest::Client,
        req: reqwest::Request,
        url: &str,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let again = req.try_clone();
        let failed = match http.execute(req).await {
            Err(e) if e.is_connect() && self.servers.urls.len() > 1 => e,
            done => return done,
        };
        let (Some(mut again), Some(mut from)) =
            (again, self.servers.urls.iter().find(|b| url.starts_with(b.as_str())).cloned())
        else {
            return Err(failed);
        };
        let mut last = failed;
        for _ in 1..self.servers.urls.len() {
            let to = self.servers.next_after(&from).to_string();
            let Ok(moved) = format!("{to}{}", &url[from.len()..]).parse() else { break };
            *again.url_mut() = moved;
            let next = again.try_clone();
            match http.execute(again).await {
                Err(e) if e.is_connect() => last = e,
                done => return done,
            }
            match next {
                Some(next) => again = next,
                None => break,
            }
            from = to;
        }
        Err(last)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Indexed<T>, ClientError> {
        let url = format!("{}{path}", self.base());
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
        let url = format!("{}{path}{sep}index={index}&wait={}ms", self.base(), wait.as_millis());
        self.send(self.http.get(&url).timeout(wait + Duration::from_secs(10)), &url).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<Indexed<T>, ClientError> {
        let url = format!("{}{path}", self.base());
        self.send(self.http.post(&url).json(body), &url).await
    }

    async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<Indexed<T>, ClientError> {
        let url = format!("{}{path}", self.base());
        self.send(self.http.put(&url).json(body), &url).await
    }

    pub async fn groups(&self) -> Result<Vec<crate::GroupView>, ClientError> {
        Ok(self.get("/v1/groups").await?.value)
    }

    /// Makes a group (`create`) or changes what is given of one (`set`, making it if need be).
    pub async fn set_group(
        &self,
        name: &str,
        req: &crate::GroupRequest,
        create: bool,
    ) -> Result<crate::GroupView, ClientError> {
        if create {
            let req = crate::GroupRequest { name: Some(name.to_string()), ..req.clone() };
            Ok(self.post("/v1/groups", &req).await?.value)
        } else {
            Ok(self.put(&format!("/v1/groups/{name}"), req).await?.value)
        }
    }

    /// Makes an API token (admins only); the answer holds the token, shown this once.
    pub async fn create_token(&self, req: &crate::TokenRequest) -> Result<crate::TokenCreated, ClientError> {
        Ok(self.post("/v1/tokens", req).await?.value)
    }

    pub async fn tokens(&self) -> Result<Vec<crate::TokenView>, ClientError> {
        Ok(self.get("/v1/tokens").await?.value)
    }

    /// Revokes a token: it is refused from then on.
    pub async fn revoke_token(&self, id: &str) -> Result<crate::TokenView, ClientError> {
        let url = format!("{}/v1/tokens/{id}", self.base());
        Ok(self.send(self.http.delete(&url), &url).await?.value)
    }

    /// Seals `value` as secret `group/name`, made or replaced.
    pub async fn set_secret(&self, group: &str, name: &str, value: String) -> Result<crate::SecretView, ClientError> {
        Ok(self.put(&format!("/v1/secrets/{group}/{name}"), &crate::SecretRequest { value }).await?.value)
    }

    /// Every secret the token's groups have (names and versions, never values).
    pub async fn secrets(&self) -> Result<Vec<crate::SecretView>, ClientError> {
        Ok(self.get("/v1/secrets").await?.value)
    }

    pub async fn delete_secret(&self, group: &str, name: &str) -> Result<crate::SecretView, ClientError> {
        let url = format!("{}/v1/secrets/{group}/{name}", self.base());
        Ok(self.send(self.http.delete(&url), &url).await?.value)
    }

    /// For an agent: the secret values instance `instance`, placed on `node`, starts with.
    pub async fn instance_secrets(&self, node: &str, instance: &str) -> Result<crate::InstanceSecrets, ClientError> {
        Ok(self.get(&format!("/v1/nodes/{node}/instances/{instance}/secrets")).await?.value)
    }

    /// The server's own metrics, in Prometheus' text format (`GET /metrics`).
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let url = format!("{}/metrics", self.base());
        let unreachable = |e: reqwest::Error| ClientError::Unreachable { url: url.clone(), why: root_cause(&e) };
        let resp = self.authorized(self.http.get(&url)).send().await.map_err(unreachable)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(refusal(status, &bytes));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
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

    pub async fn jobs(&self) -> Result<Vec<crate::JobStatus>, ClientError> {
        Ok(self.get("/v1/jobs").await?.value)
    }

    /// A job with every run kept, newest first.
    pub async fn job(&self, id: &str) -> Result<crate::JobStatus, ClientError> {
        Ok(self.get(&format!("/v1/jobs/{id}")).await?.value)
    }

    pub async fn job_after(
        &self,
        id: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<crate::JobStatus>, ClientError> {
        self.get_after(&format!("/v1/jobs/{id}"), index, wait).await
    }

    pub async fn deploy_job(&self, spec: &berth_core::JobSpec) -> Result<crate::JobDeployResponse, ClientError> {
        let req = crate::JobDeployRequest { spec: spec.clone() };
        Ok(self.put(&format!("/v1/jobs/{}", spec.id()), &req).await?.value)
    }

    /// Starts a run now; answers it.
    pub async fn run_job(&self, id: &str) -> Result<berth_core::Run, ClientError> {
        Ok(self.post(&format!("/v1/jobs/{id}/run"), &serde_json::json!({})).await?.value)
    }

    /// `suspend`, `resume`.
    pub async fn job_action(&self, id: &str, action: &str) -> Result<crate::JobStatus, ClientError> {
        Ok(self.post(&format!("/v1/jobs/{id}/{action}"), &serde_json::json!({})).await?.value)
    }

    pub async fn destroy_job(&self, id: &str) -> Result<crate::JobStatus, ClientError> {
        let url = format!("{}/v1/jobs/{id}", self.base());
        Ok(self.send(self.http.delete(&url), &url).await?.value)
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
        let url = format!("{}{path}", self.base());
        let unreachable = |e: reqwest::Error| ClientError::Unreachable { url: url.clone(), why: root_cause(&e) };
        let resp = self
            .authorized(self.http.post(&url))
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
        let url = format!("{}/v1/nodes/{node}/execs?wait={secs}s", self.base());
        Ok(self.send(self.http.get(&url).timeout(wait + Duration::from_secs(10)), &url).await?.value)
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
        on_line: impl FnMut(LogLine) -> bool,
    ) -> Result<(), ClientError> {
        self.stream_logs(format!("{}/v1/apps/{id}/logs", self.base()), query, on_line).await
    }

    /// A job's log lines (of one run with `query.run`), as `logs` streams an app's.
    pub async fn job_logs(
        &self,
        id: &str,
        query: &LogQuery,
        on_line: impl FnMut(LogLine) -> bool,
    ) -> Result<(), ClientError> {
        self.stream_logs(format!("{}/v1/jobs/{id}/logs", self.base()), query, on_line).await
    }

    async fn stream_logs(
        &self,
        url: String,
        query: &LogQuery,
        mut on_line: impl FnMut(LogLine) -> bool,
    ) -> Result<(), ClientError> {
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
        if let Some(run) = query.run {
            params.push(("run", run.to_string()));
        }
        let full = reqwest::Url::parse_with_params(&url, &params)
            .map_err(|e| ClientError::Unreachable { url: url.clone(), why: e.to_string() })?;
        let unreachable = |e: reqwest::Error| ClientError::Unreachable { url: url.clone(), why: root_cause(&e) };
        let mut resp = self.authorized(self.http.get(full)).send().await.map_err(unreachable)?;
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

    /// Revokes a router's credential (`berth router rm`): it is refused from then on and exits.
    pub async fn remove_router(&self, id: &str) -> Result<(), ClientError> {
        let url = format!("{}/v1/routers/{id}", self.base());
        self.send::<serde_json::Value>(self.http.delete(&url), &url).await?;
        Ok(())
    }

    /// The routers heard from, with the store index of the answer.
    pub async fn routers(&self) -> Result<Indexed<Vec<RouterView>>, ClientError> {
        self.get("/v1/routers").await
    }

    /// Whether routers are done with a stopping instance.
    pub async fn drain_status(&self, instance: &str) -> Result<DrainStatus, ClientError> {
        let url = format!("{}/v1/instances/{instance}/drain", self.base());
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
        let url = format!("{}/v1/apps/{id}", self.base());
        Ok(self.send(self.http.delete(&url), &url).await?.value)
    }

    pub async fn versions(&self, id: &str) -> Result<Vec<AppVersion>, ClientError> {
        Ok(self.get(&format!("/v1/apps/{id}/versions")).await?.value)
    }

    /// Every record of the store (`berth store export`), as JSON.
    pub async fn export_store(&self) -> Result<serde_json::Value, ClientError> {
        Ok(self.get("/v1/store/export").await?.value)
    }

    /// The servers sharing the store, and which one leads.
    pub async fn cluster(&self) -> Result<crate::ClusterView, ClientError> {
        Ok(self.get("/v1/cluster").await?.value)
    }

    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        Ok(self.get("/v1/nodes").await?.value)
    }

    /// A node by id or hostname, with its live instances.
    pub async fn node(&self, node: &str) -> Result<NodeDetail, ClientError> {
        Ok(self.get(&format!("/v1/nodes/{node}")).await?.value)
    }

    /// A blocking read of a node: returns once the store moves past `index` or `wait` passes.
    pub async fn node_after(&self, node: &str, index: u64, wait: Duration) -> Result<Indexed<NodeDetail>, ClientError> {
        self.get_after(&format!("/v1/nodes/{node}"), index, wait).await
    }

    pub async fn pools(&self) -> Result<Vec<PoolView>, ClientError> {
        Ok(self.get("/v1/pools").await?.value)
    }

    /// Binds `group` to `pools` (none: unbinds it); answers with every pool's setting.
    pub async fn set_group_pools(&self, group: &str, pools: Vec<String>) -> Result<Pools, ClientError> {
        Ok(self.put(&format!("/v1/pools/groups/{group}"), &GroupPoolsRequest { pools }).await?.value)
    }

    pub async fn set_pool(&self, pool: &str, req: &PoolSettingsRequest) -> Result<Pools, ClientError> {
        Ok(self.put(&format!("/v1/pools/{pool}"), req).await?.value)
    }

    pub async fn drain_node(&self, node: &str, req: &DrainRequest) -> Result<NodeDetail, ClientError> {
        Ok(self.post(&format!("/v1/nodes/{node}/drain"), req).await?.value)
    }

    /// Removes a node and revokes its credential (`force`: even with live instances).
    pub async fn remove_node(&self, node: &str, force: bool) -> Result<Node, ClientError> {
        let url = format!("{}/v1/nodes/{node}?force={force}", self.base());
        Ok(self.send(self.http.delete(&url), &url).await?.value)
    }

    pub async fn set_eligibility(&self, node: &str, eligible: bool) -> Result<NodeDetail, ClientError> {
        Ok(self.post(&format!("/v1/nodes/{node}/eligibility"), &EligibilityRequest { eligible }).await?.value)
    }

    /// Audit entries after `after` (or at or after `since`, ms), of `group` when given.
    pub async fn audit(
        &self,
        after: u64,
        since: Option<i64>,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<berth_core::audit::AuditEntry>, ClientError> {
        Ok(self.get(&Self::audit_path(after, since, group, limit)).await?.value)
    }

    /// A blocking read of the audit entries after `after`, once the store moves past `index`.
    pub async fn audit_after(
        &self,
        after: u64,
        group: Option<&str>,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<Vec<berth_core::audit::AuditEntry>>, ClientError> {
        self.get_after(&Self::audit_path(after, None, group, 1000), index, wait).await
    }

    fn audit_path(after: u64, since: Option<i64>, group: Option<&str>, limit: usize) -> String {
        let mut path = format!("/v1/audit?after={after}&limit={limit}");
        if let Some(since) = since {
            path.push_str(&format!("&since={since}"));
        }
        if let Some(group) = group {
            path.push_str(&format!("&group={group}"));
        }
        path
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

    pub async fn heartbeat(&self, node: &str, beat: &HeartbeatRequest) -> Result<HeartbeatReply, ClientError> {
        Ok(self.post(&format!("/v1/nodes/{node}/heartbeat"), beat).await?.value)
    }

    pub async fn assignments(&self, node: &str, index: u64, wait: Duration) -> Result<Assignments, ClientError> {
        Ok(self.get_after(&format!("/v1/nodes/{node}/assignments"), index, wait).await?.value)
    }

    pub async fn report(&self, node: &str, reports: Vec<InstanceReport>) -> Result<(), ClientError> {
        self.post::<_, serde_json::Value>(&format!("/v1/nodes/{node}/reports"), &ReportRequest { reports }).await?;
        Ok(())
    }

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
        let url = format!("{}/v1/upstreams/{name}", self.base());
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
        let url = format!("{}{}{query}", self.base(), Self::rules_path(target));
        let req = self.http.put(&url).header("content-type", "text/x-lua").body(source.to_string());
        Ok(self.send(req, &url).await?.value)
    }

    pub async fn delete_rules(&self, target: &RuleTarget) -> Result<(), ClientError> {
        let url = format!("{}{}", self.base(), Self::rules_path(target));
        self.send::<serde_json::Value>(self.http.delete(&url), &url).await?;
        Ok(())
    }
}

/// Why a request got no answer: an untrusted certificate apart, as retrying cannot help it.
fn unreachable(url: &str, e: &reqwest::Error) -> ClientError {
    let why = root_cause(e);
    let untrusted = ["invalid peer certificate", "CA is not the one pinned"];
    if untrusted.iter().any(|w| why.contains(w)) {
        ClientError::Untrusted { url: url.into(), why }
    } else {
        ClientError::Unreachable { url: url.into(), why }
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A server's refusal: its JSON error body, or its words when it sent none.
fn refusal(status: reqwest::StatusCode, bytes: &[u8]) -> ClientError {
    let body = serde_json::from_slice(bytes)
        .unwrap_or_else(|_| ErrorBody { error: String::from_utf8_lossy(bytes).trim().to_string(), details: vec![] });
    ClientError::Api { status: status.as_u16(), body }
}

#[cfg(test)]
mod tests {
    use super::Servers;

    #[test]
    fn a_server_list_moves_on_from_the_one_that_failed_once() {
        let servers = Servers::parse(" http://a:1/, http://b:2 ,,http://c:3").unwrap();
        assert_eq!(servers.urls, ["http://a:1", "http://b:2", "http://c:3"]);
        assert_eq!(servers.current(), "http://a:1");
        assert_eq!(servers.next_after("http://a:1"), "http://b:2");
        // Another request that failed on a at the same time does not skip b.
        assert_eq!(servers.next_after("http://a:1"), "http://b:2");
        assert_eq!(servers.next_after("http://b:2"), "http://c:3");
        assert_eq!(servers.next_after("http://c:3"), "http://a:1", "around the ring");
        assert!(Servers::parse(" , ").is_err());
    }
}
