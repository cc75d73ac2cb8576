//! `/v1` handlers. Every write is one compare-and-swap transaction: acknowledged means durable,
//! rejected means nothing changed.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use berth_api::{
    AppStatus, Assignment, Assignments, DeployRequest, DeployResponse, ErrorBody, HeartbeatRequest, INDEX_HEADER,
    InstanceView, RegisterRequest, ReportRequest, ScaleRequest, UpgradeRequest,
};
use berth_core::{
    App, AppSpec, AppVersion, Backoff, DeploymentKind, DeploymentState, Dur, Instance, InstanceState, Level, Node,
    NodeStatus, SpecError,
};
use berth_store::state::{Subject, app_key, encode, instance_key, node_key, version_key};
use berth_store::{StoreError, Txn};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::{Shared, deployments, lock, now_ms, routes, views};

pub(crate) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/apps", get(list_apps))
        .route("/v1/plan", post(plan))
        .route("/v1/apps/{group}/{name}", get(get_app).put(deploy).delete(destroy))
        .route("/v1/apps/{group}/{name}/scale", post(scale))
        .route("/v1/apps/{group}/{name}/upgrade", post(upgrade))
        .route("/v1/apps/{group}/{name}/restart", post(restart))
        .route("/v1/apps/{group}/{name}/rollback", post(rollback))
        .route("/v1/apps/{group}/{name}/promote", post(promote))
        .route("/v1/apps/{group}/{name}/versions", get(versions))
        .route("/v1/apps/{group}/{name}/logs", get(crate::logs::http::query))
        .route("/v1/logs/sinks", get(crate::logs::http::sinks))
        .route("/v1/usage", get(crate::usage::all))
        .route("/v1/alerts", get(crate::alerts::list))
        .route("/v1/apps/{group}/{name}/usage", get(crate::usage::one_app))
        .route("/v1/apps/{group}/{name}/usage/history", get(crate::usage::history))
        .route("/v1/nodes/{id}/metrics", post(crate::usage::ingest))
        .route("/metrics", get(crate::usage::prometheus))
        .route(
            "/v1/nodes/{id}/logs",
            post(crate::logs::http::ingest).layer(axum::extract::DefaultBodyLimit::max(16 << 20)),
        )
        .route("/v1/instances", get(list_instances))
        .route("/v1/instances/{id}/restart", post(restart_instance))
        .route("/v1/instances/{id}/stop", post(stop_instance))
        .route("/v1/instances/{id}/exec", post(crate::exec::run))
        .route("/v1/nodes/{id}/execs", get(crate::exec::take))
        .route("/v1/nodes/{id}/execs/{exec}", post(crate::exec::answer))
        .route("/v1/nodes/{id}/execs/{exec}/stream", post(crate::exec::attach))
        .route("/v1/instances/{id}/drain", get(routes::drain_status))
        .route("/v1/routers", get(routes::list_routers))
        .route("/v1/routers/{id}", post(routes::router_report))
        .route("/v1/nodes", get(list_nodes).post(register))
        .route("/v1/nodes/{id}/heartbeat", post(heartbeat))
        .route("/v1/nodes/{id}/assignments", get(assignments))
        .route("/v1/nodes/{id}/reports", post(reports))
        .route("/v1/events", get(events))
        .route("/v1/routes", get(routes::routes))
        .route("/v1/upstreams", get(routes::list_upstreams))
        .route("/v1/upstreams/{name}", axum::routing::put(routes::put_upstream).delete(routes::delete_upstream))
        .route(
            "/v1/upstreams/{name}/rules",
            get(routes::get_upstream_rules).put(routes::set_upstream_rules).delete(routes::delete_upstream_rules),
        )
        .route(
            "/v1/apps/{group}/{name}/rules",
            get(routes::get_app_rules).put(routes::set_app_rules).delete(routes::delete_app_rules),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see docs/openapi.yaml") })
        .layer(axum::middleware::map_response(json_errors))
        .with_state(shared)
}

/// A JSON error response.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, body: ErrorBody { error: message.into(), details: vec![] } }
    }
    pub(crate) fn invalid(message: impl Into<String>, details: Vec<SpecError>) -> Self {
        ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, body: ErrorBody { error: message.into(), details } }
    }
    pub(crate) fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, format!("{e}; retry")),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// A JSON body tagged with the store index it reflects.
pub(crate) fn indexed<T: serde::Serialize>(index: u64, value: &T) -> Response {
    let mut resp = axum::Json(value).into_response();
    if let Ok(v) = HeaderValue::from_str(&index.to_string()) {
        resp.headers_mut().insert(INDEX_HEADER, v);
    }
    resp
}

/// Every refusal is the documented JSON error, also those axum writes itself in plain text (a
/// body over the limit, a method a path does not take, an unreadable path parameter).
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.map(|b| String::from_utf8_lossy(&b).trim().to_string());
    let reason = status.canonical_reason().unwrap_or("error").to_ascii_lowercase();
    let message = match text {
        Ok(t) if status == StatusCode::PAYLOAD_TOO_LARGE => format!("request body too large: {t}"),
        Ok(t) if !t.is_empty() => t,
        _ => reason,
    };
    let mut out = ApiError::new(status, message).into_response();
    for (name, value) in parts.headers.iter().filter(|(n, _)| *n == header::ALLOW) {
        out.headers_mut().insert(name, value.clone());
    }
    out
}

/// Parses a JSON body; an error names the line, the column and the field at fault
/// (`spec.instances`), so a wrong type says where it is.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => de.end().map(|()| v).map_err(|e| (".".to_string(), e)),
        Err(e) => Err((e.path().to_string(), e.into_inner())),
    };
    value.map_err(|(path, inner)| {
        let (line, column) = (inner.line() as u64, inner.column() as u64);
        let at = if path == "." { String::new() } else { format!("`{path}`: ") };
        let detail = SpecError {
            file: None,
            line: Some(line),
            column: Some(column),
            field: if path == "." { String::new() } else { path.clone() },
            message: inner.to_string(),
            suggestion: None,
        };
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody {
                error: format!("request body, line {line} column {column}: {at}{inner}"),
                details: vec![detail],
            },
        }
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct WaitQuery {
    pub index: Option<u64>,
    pub wait: Option<String>,
}

/// Blocks until the store is past `index` or `wait` elapses; returns the index to answer with.
pub(crate) async fn wait_for(shared: &Shared, q: &WaitQuery) -> ApiResult<u64> {
    let store = shared.state.store();
    if let Some(index) = q.index {
        let wait = match &q.wait {
            Some(text) => Dur::parse(text).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("wait: {e}")))?,
            None => Dur::secs(30),
        };
        let wait = wait.as_duration().min(Duration::from_secs(300));
        let mut rx = store.watch();
        let _ = tokio::time::timeout(wait, rx.wait_for(|rev| *rev > index)).await;
    }
    // Read the index before the data so a change in between is never missed.
    Ok(store.revision())
}

async fn health(AxState(shared): AxState<Shared>) -> Response {
    let revision = shared.state.store().revision();
    indexed(revision, &serde_json::json!({"status": "ok", "revision": revision}))
}

fn app_id(group: &str, name: &str) -> String {
    format!("{group}/{name}")
}

fn status_of(shared: &Shared, id: &str) -> ApiResult<AppStatus> {
    let app = shared.state.app(id)?.ok_or_else(|| ApiError::not_found(&format!("app {id}")))?;
    let instances = shared.instances()?;
    let pending = lock(&shared.pending).get(id).cloned();
    Ok(views::app_status(&app.value, &instances, pending))
}

async fn list_apps(AxState(shared): AxState<Shared>) -> ApiResult<Response> {
    let index = shared.state.store().revision();
    let instances = shared.instances()?;
    let pending = lock(&shared.pending).clone();
    let apps: Vec<AppStatus> = shared
        .state
        .apps()?
        .into_iter()
        .map(|a| {
            let id = a.value.id();
            views::app_status(&a.value, &instances, pending.get(&id).cloned())
        })
        .collect();
    Ok(indexed(index, &apps))
}

async fn get_app(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    let index = wait_for(&shared, &q).await?;
    Ok(indexed(index, &status_of(&shared, &app_id(&group, &name))?))
}

async fn versions(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = app_id(&group, &name);
    shared.state.app(&id)?.ok_or_else(|| ApiError::not_found(&format!("app {id}")))?;
    Ok(indexed(shared.state.store().revision(), &shared.state.versions(&id)?))
}

/// The top-level keys whose values differ, as `key: old -> new`.
fn describe_change(old: &AppSpec, new: &AppSpec) -> String {
    let (serde_json::Value::Object(a), serde_json::Value::Object(b)) =
        (serde_json::to_value(old).unwrap_or_default(), serde_json::to_value(new).unwrap_or_default())
    else {
        return "changed".into();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).filter(|k| *k != "instances").collect();
    keys.sort();
    keys.dedup();
    let short = |v: Option<&serde_json::Value>| {
        let text = v.map_or("unset".to_string(), |v| v.to_string());
        if text.len() > 60 { format!("{}...", &text[..text.floor_char_boundary(57)]) } else { text }
    };
    let parts: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} -> {}", short(a.get(k)), short(b.get(k))))
        .collect();
    if parts.is_empty() { "no change".into() } else { parts.join("; ") }
}

enum Change {
    /// A new spec version; `keep_scale` keeps the current instance count.
    Spec {
        spec: Box<AppSpec>,
        keep_scale: bool,
        kind: DeploymentKind,
        /// What changed, when it is not the diff of the specs (restart, rollback).
        change: Option<String>,
    },
    Scale(u32),
    /// Finish a canary deployment.
    Promote,
}

/// How a change treats a deployment already in progress, and whether it starts as a canary.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangeQuery {
    #[serde(default)]
    force: bool,
    canary: Option<u32>,
}

fn busy(app: &App, id: &str, now: i64) -> Option<ApiError> {
    let d = app.active_deployment()?;
    let age = (now - d.started_at).max(0) / 1000;
    let what = if d.canary.is_some() { "a canary of" } else { "a deployment of" };
    Some(ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "{id} is in the middle of {what} v{} ({}, started {age}s ago); wait for it, `promote` or \
             `rollback` it, or pass --force to supersede it",
            d.version,
            d.kind.as_str()
        ),
    ))
}

/// Applies a change to an app under compare-and-swap, retrying when a concurrent write won.
fn change_app(shared: &Shared, id: &str, change: Change, opts: &ChangeQuery) -> ApiResult<DeployResponse> {
    for _ in 0..8 {
        let now = now_ms();
        let state = &shared.state;
        let existing = state.app(id)?;
        let expected_rev = existing.as_ref().map_or(0, |v| v.mod_revision);
        let mut txn = Txn::default().expect(app_key(id), expected_rev);
        let unchanged = |app: &App| -> ApiResult<DeployResponse> {
            Ok(DeployResponse { created: false, changed: false, version: app.version, app: status_of(shared, id)? })
        };
        let (app, created) = match (existing, &change) {
            (None, Change::Spec { spec, .. }) => {
                let mut app = App {
                    spec: (**spec).clone(),
                    version: 1,
                    instances: spec.instances,
                    created_at: now,
                    updated_at: now,
                    destroying: false,
                    backoff: Backoff::default(),
                    alike: Vec::new(),
                    stable_version: None,
                    deployment: None,
                };
                deployments::start(&mut app, DeploymentKind::Create, None, now);
                let version = AppVersion {
                    app: id.into(),
                    version: 1,
                    spec: (**spec).clone(),
                    created_at: now,
                    change: "created".into(),
                    outcome: None,
                };
                txn = txn.put(version_key(id, 1), encode(&version));
                let msg = format!("created v1 with {} instance(s)", spec.instances);
                txn = state.with_event(txn, now, Level::Info, "app.created", Subject::app(id), msg);
                (app, true)
            }
            (None, _) => return Err(ApiError::not_found(&format!("app {id}"))),
            (Some(current), _) if current.value.destroying => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("app {id} is being destroyed; wait until it is gone"),
                ));
            }
            (Some(current), Change::Promote) => {
                let mut app = current.value;
                let Some(d) =
                    app.deployment.as_mut().filter(|d| d.state == DeploymentState::Running && d.canary.is_some())
                else {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!("{id} has no canary waiting to be promoted"),
                    ));
                };
                d.canary = None;
                d.progress_at = now;
                let msg = format!("canary of v{} promoted: rolling out to every instance", d.version);
                txn = state.with_event(txn, now, Level::Info, "deployment.promoted", Subject::app(id), msg);
                (app, false)
            }
            (Some(current), Change::Spec { spec, keep_scale, kind, change }) => {
                let mut app = current.value;
                let mut spec = (**spec).clone();
                if *keep_scale {
                    spec.instances = app.instances;
                }
                let same = *kind != DeploymentKind::Restart && deployments::same_ignoring_scale(&app.spec, &spec);
                if same && app.instances == spec.instances {
                    return unchanged(&app);
                }
                // Rolling back is the way out of a deployment, so it never waits for one.
                if !opts.force
                    && *kind != DeploymentKind::Rollback
                    && let Some(e) = busy(&app, id, now)
                {
                    return Err(e);
                }
                if same {
                    txn = scale_to(state, txn, &mut app, spec.instances, now)?;
                } else {
                    let text = change.clone().unwrap_or_else(|| describe_change(&app.spec, &spec));
                    txn = deployments::new_version(state, txn, &mut app, spec, text, *kind, now)?;
                    if let Some(n) = opts.canary {
                        if n == 0 || n >= app.instances {
                            return Err(ApiError::new(
                                StatusCode::UNPROCESSABLE_ENTITY,
                                format!(
                                    "canary: {n} must be between 1 and {} (one less than instances)",
                                    app.instances.saturating_sub(1)
                                ),
                            ));
                        }
                        if let Some(d) = app.deployment.as_mut() {
                            d.canary = Some(n);
                            d.blue_green = false;
                        }
                    }
                }
                (app, false)
            }
            (Some(current), Change::Scale(n)) => {
                let mut app = current.value;
                if app.instances == *n {
                    return unchanged(&app);
                }
                if !opts.force
                    && let Some(e) = busy(&app, id, now)
                {
                    return Err(e);
                }
                txn = scale_to(state, txn, &mut app, *n, now)?;
                (app, false)
            }
        };
        if let Change::Spec { .. } = &change {
            let owner = berth_core::hosts::HostOwner::App(id.to_string());
            txn = match crate::hosts::claim(state, txn, &owner, &crate::hosts::of_spec(&app.spec), &shared.domain)? {
                Ok(txn) => txn,
                Err((index, conflict)) => {
                    return Err(ApiError::new(StatusCode::CONFLICT, format!("services[{index}]: {conflict}")));
                }
            };
        }
        txn = txn.put(app_key(id), encode(&app));
        match state.commit(txn) {
            Ok(_) => {
                let status = status_of(shared, id)?;
                return Ok(DeployResponse { created, changed: true, version: app.version, app: status });
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(StatusCode::CONFLICT, format!("app {id} is changing too fast; retry")))
}

/// A new instance count. A version rollout in progress keeps going toward the new count;
/// otherwise the scale is a deployment of its own, under the same health gates.
fn scale_to(state: &berth_store::state::State, mut txn: Txn, app: &mut App, n: u32, now: i64) -> ApiResult<Txn> {
    let id = app.id();
    let msg = format!("scaled from {} to {n}", app.instances);
    txn = state.with_event(txn, now, Level::Info, "app.scaled", Subject::app(&id), msg);
    app.instances = n;
    app.spec.instances = n;
    app.backoff = Backoff::default();
    app.updated_at = now;
    if app.active_deployment().is_none_or(|d| d.kind == DeploymentKind::Scale) {
        txn = deployments::supersede(state, txn, app, &format!("scale to {n}"), now)?;
        deployments::start(app, DeploymentKind::Scale, None, now);
    }
    Ok(txn)
}

fn checked_spec(spec: AppSpec) -> ApiResult<AppSpec> {
    spec.validate().map_err(|e| ApiError::invalid(format!("invalid spec: {e}"), e.0))?;
    Ok(spec)
}

/// A spec sent as YAML (by its content type) or as a JSON `DeployRequest`, validated.
fn spec_of_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<AppSpec> {
    let is_yaml = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.contains("yaml"));
    if is_yaml {
        let text =
            std::str::from_utf8(body).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "spec is not UTF-8"))?;
        AppSpec::from_yaml(text, None).map_err(|e| ApiError::invalid(format!("invalid spec: {e}"), e.0))
    } else {
        checked_spec(parse_json::<DeployRequest>(body)?.spec)
    }
}

/// What deploying a spec would do, changing nothing: `berth plan`, `deploy --dry-run`.
async fn plan(AxState(shared): AxState<Shared>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    let spec = spec_of_body(&headers, &body)?;
    let id = spec.id();
    let current = shared.state.app(&id)?.map(|v| v.value);
    let nodes: Vec<Node> = shared.state.nodes()?.into_iter().map(|n| shared.with_heartbeat(n.value)).collect();
    let instances = shared.instances()?;
    let apps: HashMap<String, AppSpec> =
        shared.state.apps()?.into_iter().map(|a| (a.value.id(), a.value.spec)).collect();
    let preview = berth_plan::preview::preview(current.as_ref(), &spec, &nodes, &instances, |app| apps.get(app));
    let mut out =
        serde_json::to_value(&preview).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // What a deploy would be refused for.
    let owner = berth_core::hosts::HostOwner::App(id.clone());
    if let Err((index, conflict)) =
        crate::hosts::claim(&shared.state, Txn::default(), &owner, &crate::hosts::of_spec(&spec), &shared.domain)?
    {
        out["refused"] = serde_json::json!(format!("services[{index}]: {conflict}"));
    } else if current.as_ref().is_some_and(|a| a.destroying) {
        out["refused"] = serde_json::json!(format!("app {id} is being destroyed"));
    }
    Ok(indexed(shared.state.store().revision(), &out))
}

async fn deploy(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
    Query(opts): Query<ChangeQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let spec = spec_of_body(&headers, &body)?;
    let id = app_id(&group, &name);
    if spec.id() != id {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the spec is for {} but the path names {id}", spec.id()),
        ));
    }
    let change = Change::Spec { spec: Box::new(spec), keep_scale: false, kind: DeploymentKind::Update, change: None };
    let resp = change_app(&shared, &id, change, &opts)?;
    let status = if resp.created { StatusCode::CREATED } else { StatusCode::OK };
    let mut out = indexed(shared.state.store().revision(), &resp);
    *out.status_mut() = status;
    Ok(out)
}

async fn scale(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
    Query(opts): Query<ChangeQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: ScaleRequest = parse_json(&body)?;
    if req.instances > 10_000 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("instances: {} is more than the 10000 allowed", req.instances),
        ));
    }
    let resp = change_app(&shared, &app_id(&group, &name), Change::Scale(req.instances), &opts)?;
    Ok(indexed(shared.state.store().revision(), &resp))
}

async fn upgrade(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
    Query(opts): Query<ChangeQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: UpgradeRequest = parse_json(&body)?;
    let id = app_id(&group, &name);
    let current = shared.state.app(&id)?.ok_or_else(|| ApiError::not_found(&format!("app {id}")))?;
    let mut spec = current.value.spec;
    spec.image = Some(req.image);
    let spec = checked_spec(spec)?;
    let change = Change::Spec { spec: Box::new(spec), keep_scale: true, kind: DeploymentKind::Update, change: None };
    let resp = change_app(&shared, &id, change, &opts)?;
    Ok(indexed(shared.state.store().revision(), &resp))
}

async fn restart(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
    Query(opts): Query<ChangeQuery>,
) -> ApiResult<Response> {
    let id = app_id(&group, &name);
    let current = shared.state.app(&id)?.ok_or_else(|| ApiError::not_found(&format!("app {id}")))?;
    let change = Change::Spec {
        spec: Box::new(current.value.spec),
        keep_scale: true,
        kind: DeploymentKind::Restart,
        change: Some("rolling restart".into()),
    };
    let resp = change_app(&shared, &id, change, &opts)?;
    Ok(indexed(shared.state.store().revision(), &resp))
}

async fn promote(AxState(shared): AxState<Shared>, Path((group, name)): Path<(String, String)>) -> ApiResult<Response> {
    let resp = change_app(&shared, &app_id(&group, &name), Change::Promote, &ChangeQuery::default())?;
    Ok(indexed(shared.state.store().revision(), &resp))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    /// The version to go back to; by default the latest earlier version that ran healthy.
    version: Option<u64>,
}

/// Makes a stored version's spec current again, as a new version (history is never rewritten),
/// keeping the app's present scale. A deployment in progress (a canary too) is abandoned.
async fn rollback(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: RollbackRequest =
        if body.iter().all(u8::is_ascii_whitespace) { RollbackRequest::default() } else { parse_json(&body)? };
    let id = app_id(&group, &name);
    let current = shared.state.app(&id)?.ok_or_else(|| ApiError::not_found(&format!("app {id}")))?.value;
    let versions = shared.state.versions(&id)?;
    let target = match req.version {
        Some(v) => v,
        None => {
            let earlier: Vec<&AppVersion> = versions
                .iter()
                .filter(|v| v.version < current.version && !deployments::same_ignoring_scale(&v.spec, &current.spec))
                .collect();
            let stable = earlier
                .iter()
                .filter(|v| v.outcome.as_ref().is_some_and(|o| o.state == DeploymentState::Succeeded))
                .map(|v| v.version)
                .max();
            stable.or_else(|| earlier.iter().map(|v| v.version).max()).ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    format!("{id} has no earlier version that differs from v{}", current.version),
                )
            })?
        }
    };
    if target == current.version {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("v{target} is already the current version of {id}")));
    }
    let Some(old) = versions.into_iter().find(|v| v.version == target) else {
        return Err(ApiError::not_found(&format!("version {target} of {id} (it has 1 to {})", current.version)));
    };
    let change = Change::Spec {
        spec: Box::new(old.spec),
        keep_scale: true,
        kind: DeploymentKind::Rollback,
        change: Some(format!("rollback to v{target}")),
    };
    let resp = change_app(&shared, &id, change, &ChangeQuery::default())?;
    Ok(indexed(shared.state.store().revision(), &resp))
}

async fn destroy(AxState(shared): AxState<Shared>, Path((group, name)): Path<(String, String)>) -> ApiResult<Response> {
    let id = app_id(&group, &name);
    for _ in 0..8 {
        let current = shared.state.app(&id)?.ok_or_else(|| ApiError::not_found(&format!("app {id}")))?;
        if current.value.destroying {
            break;
        }
        let mut app = current.value;
        app.destroying = true;
        app.updated_at = now_ms();
        let txn = Txn::default().expect(app_key(&id), current.mod_revision).put(app_key(&id), encode(&app));
        let txn = shared.state.with_event(
            txn,
            now_ms(),
            Level::Info,
            "app.destroying",
            Subject::app(&id),
            "stopping all instances".into(),
        );
        match shared.state.commit(txn) {
            Ok(_) => break,
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(indexed(shared.state.store().revision(), &status_of(&shared, &id)?))
}

/// Stops one instance (draining it first); the app's count is unchanged, so a fresh one takes
/// its place under the usual health gates, as deleting a pod does.
async fn restart_instance(AxState(shared): AxState<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    for _ in 0..8 {
        let current = shared.state.instance(&id)?.ok_or_else(|| ApiError::not_found(&format!("instance {id}")))?;
        let mut inst = current.value;
        if !inst.state.is_live() || inst.desired == berth_core::Desired::Stop {
            return Err(ApiError::new(StatusCode::CONFLICT, format!("instance {id} is {} already", inst.state)));
        }
        inst.desired = berth_core::Desired::Stop;
        inst.reason = Some("restarted on request".into());
        let txn = Txn::default().expect(instance_key(&id), current.mod_revision).put(instance_key(&id), encode(&inst));
        let subject = Subject::instance(&inst.app, &id, &inst.node);
        let txn = shared.state.with_event(
            txn,
            now_ms(),
            Level::Info,
            "instance.restart",
            subject,
            "restart requested; a new instance replaces it".into(),
        );
        match shared.state.commit(txn) {
            Ok(index) => return Ok(indexed(index, &InstanceView::from(inst))),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(StatusCode::CONFLICT, format!("instance {id} is changing too fast; retry")))
}

/// Stops one instance for good: the app is scaled down by one, and this is the one that goes
/// (drained first). Refused while another deployment runs, unless `force`.
async fn stop_instance(
    AxState(shared): AxState<Shared>,
    Path(id): Path<String>,
    Query(opts): Query<ChangeQuery>,
) -> ApiResult<Response> {
    for _ in 0..8 {
        let now = now_ms();
        let current = shared.state.instance(&id)?.ok_or_else(|| ApiError::not_found(&format!("instance {id}")))?;
        let mut inst = current.value;
        if !inst.state.is_live() || inst.desired == berth_core::Desired::Stop {
            return Err(ApiError::new(StatusCode::CONFLICT, format!("instance {id} is {} already", inst.state)));
        }
        let app_rec = shared.state.app(&inst.app)?.ok_or_else(|| ApiError::not_found(&format!("app {}", inst.app)))?;
        let mut app = app_rec.value;
        if !opts.force
            && let Some(e) = busy(&app, &inst.app, now)
        {
            return Err(e);
        }
        let n = app.instances.saturating_sub(1);
        let mut txn = Txn::default()
            .expect(app_key(&inst.app), app_rec.mod_revision)
            .expect(instance_key(&id), current.mod_revision);
        txn = scale_to(&shared.state, txn, &mut app, n, now)?;
        inst.desired = berth_core::Desired::Stop;
        inst.reason = Some("stopped on request".into());
        txn = txn.put(app_key(&inst.app), encode(&app)).put(instance_key(&id), encode(&inst));
        let subject = Subject::instance(&inst.app, &id, &inst.node);
        let msg = format!("stopped on request; {} now runs {n}", inst.app);
        txn = shared.state.with_event(txn, now, Level::Info, "instance.stop", subject, msg);
        match shared.state.commit(txn) {
            Ok(index) => return Ok(indexed(index, &InstanceView::from(inst))),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(StatusCode::CONFLICT, format!("instance {id} is changing too fast; retry")))
}

async fn list_instances(AxState(shared): AxState<Shared>) -> ApiResult<Response> {
    let index = shared.state.store().revision();
    let all: Vec<InstanceView> = shared.state.instances()?.into_iter().map(|v| v.value.into()).collect();
    Ok(indexed(index, &all))
}

async fn list_nodes(AxState(shared): AxState<Shared>) -> ApiResult<Response> {
    let index = shared.state.store().revision();
    let instances = shared.instances()?;
    let specs: HashMap<String, (f64, u64)> = shared
        .state
        .apps()?
        .into_iter()
        .map(|a| (a.value.id(), (a.value.spec.cpu.unwrap_or(0.0), a.value.spec.memory.unwrap_or(0))))
        .collect();
    let nodes: Vec<_> = shared
        .state
        .nodes()?
        .into_iter()
        .map(|n| views::node_view(shared.with_heartbeat(n.value), &instances, &|app| specs.get(app).copied()))
        .collect();
    Ok(indexed(index, &nodes))
}

async fn register(AxState(shared): AxState<Shared>, body: Bytes) -> ApiResult<Response> {
    let req: RegisterRequest = parse_json(&body)?;
    if req.id.is_empty() || req.id.contains('/') {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "id: must be non-empty and contain no /"));
    }
    if req.resources.ports.0 > req.resources.ports.1 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "resources.ports: the range is empty"));
    }
    let now = now_ms();
    for _ in 0..8 {
        let existing = shared.state.node(&req.id)?;
        let rev = existing.as_ref().map_or(0, |v| v.mod_revision);
        let node = Node {
            id: req.id.clone(),
            hostname: req.hostname.clone(),
            address: req.address.clone(),
            resources: req.resources.clone(),
            labels: req.labels.clone(),
            drivers: req.drivers.clone(),
            status: NodeStatus::Ready,
            registered_at: existing.as_ref().map_or(now, |v| v.value.registered_at),
            last_heartbeat: now,
            // The agent's next heartbeat says which are still held.
            taken_ports: existing.as_ref().map(|v| v.value.taken_ports.clone()).unwrap_or_default(),
        };
        let kind = if existing.is_some() { "node.rejoined" } else { "node.registered" };
        let drivers: Vec<String> = node.drivers.iter().map(|d| d.to_string()).collect();
        let msg = format!(
            "{} at {} ({} cpu, {} MiB, drivers {})",
            node.hostname,
            node.address,
            node.resources.cpu,
            node.resources.memory,
            drivers.join(",")
        );
        let txn = Txn::default().expect(node_key(&node.id), rev).put(node_key(&node.id), encode(&node));
        let txn = shared.state.with_event(txn, now, Level::Info, kind, Subject::node(&node.id), msg);
        match shared.state.commit(txn) {
            Ok(index) => {
                lock(&shared.heartbeats).insert(node.id.clone(), now);
                return Ok(indexed(index, &node));
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(StatusCode::CONFLICT, "node record is changing too fast; retry"))
}

async fn heartbeat(AxState(shared): AxState<Shared>, Path(id): Path<String>, body: Bytes) -> ApiResult<Response> {
    let beat: HeartbeatRequest = if body.is_empty() { HeartbeatRequest::default() } else { parse_json(&body)? };
    for _ in 0..8 {
        let node = shared.state.node(&id)?.ok_or_else(|| ApiError::not_found(&format!("node {id}")))?;
        let now = now_ms();
        if node.value.status == NodeStatus::Down {
            // A lost node is back: it must register again so its record and resources are fresh.
            return Err(ApiError::new(StatusCode::GONE, format!("node {id} was marked lost; register again")));
        }
        lock(&shared.heartbeats).insert(id.clone(), now);
        let Some(taken) = beat.taken_ports.as_ref().map(|t| t.iter().copied().collect::<BTreeSet<u16>>()) else {
            break;
        };
        if taken == node.value.taken_ports {
            break;
        }
        // Only what changed is written: most heartbeats touch nothing in the store.
        let freed: Vec<String> = node.value.taken_ports.difference(&taken).map(u16::to_string).collect();
        let mut next = node.value.clone();
        next.taken_ports = taken;
        let mut txn = Txn::default().expect(node_key(&id), node.mod_revision).put(node_key(&id), encode(&next));
        if !freed.is_empty() {
            let msg =
                format!("port(s) {} no longer held by another process: free for instances again", freed.join(", "));
            txn = shared.state.with_event(txn, now, Level::Info, "node.ports_freed", Subject::node(&id), msg);
        }
        match shared.state.commit(txn) {
            Ok(_) => break,
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(indexed(shared.state.store().revision(), &serde_json::json!({"ok": true})))
}

async fn assignments(
    AxState(shared): AxState<Shared>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    let index = wait_for(&shared, &q).await?;
    shared.state.node(&id)?.ok_or_else(|| ApiError::not_found(&format!("node {id}")))?;
    let mut specs: HashMap<(String, u64), AppSpec> = HashMap::new();
    let mut out = Vec::new();
    for inst in shared.state.instances()?.into_iter().map(|v| v.value) {
        if inst.node != id || !inst.state.is_live() {
            continue;
        }
        let key = (inst.app.clone(), inst.version);
        if !specs.contains_key(&key) {
            let versions = shared.state.versions(&inst.app)?;
            let spec = match versions.into_iter().find(|v| v.version == inst.version) {
                Some(v) => v.spec,
                None => match shared.state.app(&inst.app)? {
                    Some(app) => app.value.spec,
                    None => continue,
                },
            };
            specs.insert(key.clone(), spec);
        }
        out.push(Assignment { spec: specs[&key].clone(), instance: inst });
    }
    Ok(indexed(index, &Assignments { index, assignments: out }))
}

fn failure_text(inst: &Instance) -> String {
    if inst.oom_killed {
        return "OOM-killed: the instance went over its memory limit".into();
    }
    match (&inst.reason, inst.exit_code) {
        (Some(reason), _) => reason.clone(),
        (None, Some(code)) => format!("exited with code {code}"),
        (None, None) => "failed".into(),
    }
}

async fn reports(AxState(shared): AxState<Shared>, Path(node): Path<String>, body: Bytes) -> ApiResult<Response> {
    let req: ReportRequest = parse_json(&body)?;
    for _ in 0..8 {
        let now = now_ms();
        let mut txn = Txn::default();
        let mut backoffs: HashMap<String, (App, u64)> = HashMap::new();
        let mut restarted: Vec<String> = Vec::new();
        let mut taken: BTreeSet<u16> = BTreeSet::new();
        for report in &req.reports {
            let Some(current) = shared.state.instance(&report.id)? else {
                continue;
            };
            let mut inst = current.value.clone();
            if inst.node != node || !inst.state.can_become(report.state) {
                continue;
            }
            let before = inst.clone();
            inst.state = report.state;
            inst.healthy = report.healthy;
            inst.exit_code = report.exit_code.or(inst.exit_code);
            inst.oom_killed |= report.oom_killed;
            if report.reason.is_some() {
                inst.reason = report.reason.clone();
            } else if report.healthy == Some(true) && inst.state.is_live() {
                // Its check passes again: the failure it was showing is over.
                inst.reason = None;
            }
            if !report.last_log.is_empty() {
                inst.last_log = report.last_log.iter().take(20).cloned().collect();
            }
            inst.handle = report.handle.clone().or(inst.handle);
            inst.started_at = report.started_at.or(inst.started_at);
            inst.finished_at = report.finished_at.or(inst.finished_at);
            if inst.state.is_terminal() && inst.finished_at.is_none() {
                inst.finished_at = Some(now);
            }
            // A break in health restarts the min_healthy_time clock.
            if !inst.is_up() {
                inst.healthy_since = None;
            } else if inst.healthy_since.is_none() {
                inst.healthy_since = Some(now);
            }
            if inst == before {
                continue;
            }
            txn = txn.expect(instance_key(&inst.id), current.mod_revision).put(instance_key(&inst.id), encode(&inst));
            let subject = Subject::instance(&inst.app, &inst.id, &node);
            // Another process holds one of its ports: the placement failed, the app did not.
            let port_taken = inst.state == InstanceState::Failed && !report.taken_ports.is_empty();
            if port_taken {
                taken.extend(report.taken_ports.iter().copied());
            }
            if before.state != inst.state {
                let (level, kind, msg) = match inst.state {
                    InstanceState::Failed if port_taken => {
                        (Level::Warn, "instance.port_taken", format!("{}; placing it again", failure_text(&inst)))
                    }
                    InstanceState::Failed if inst.oom_killed => {
                        (Level::Error, "instance.oom_killed", failure_text(&inst))
                    }
                    InstanceState::Failed => (Level::Error, "instance.failed", failure_text(&inst)),
                    InstanceState::Running => {
                        (Level::Info, "instance.running", format!("running at {}", inst.address().unwrap_or_default()))
                    }
                    InstanceState::Starting => {
                        (Level::Info, "instance.starting", "started; waiting for health".to_string())
                    }
                    InstanceState::Stopped => {
                        (Level::Info, "instance.stopped", inst.reason.clone().unwrap_or_else(|| "stopped".into()))
                    }
                    InstanceState::Staging => continue,
                };
                txn = shared.state.with_event(txn, now, level, kind, subject, msg);
                // A failure the platform did not ask for slows the next launch.
                if inst.state == InstanceState::Failed && inst.desired == berth_core::Desired::Run && !port_taken {
                    if !backoffs.contains_key(&inst.app)
                        && let Some(app) = shared.state.app(&inst.app)?
                    {
                        backoffs.insert(inst.app.clone(), (app.value, app.mod_revision));
                    }
                    restarted.push(inst.app.clone());
                    if let Some((app, _)) = backoffs.get_mut(&inst.app)
                        && crate::apply::count_failure(app, inst.version, &failure_text(&inst), now)
                    {
                        txn = crate::apply::with_crash_loop_event(&shared.state, txn, app, &failure_text(&inst), now);
                    }
                }
            }
        }
        for (id, (app, rev)) in backoffs {
            txn = txn.expect(app_key(&id), rev).put(app_key(&id), encode(&app));
        }
        // In the same commit as the failure, so the next placement already steers clear of them.
        if !taken.is_empty()
            && let Some(current) = shared.state.node(&node)?
            && !taken.is_subset(&current.value.taken_ports)
        {
            let mut next = current.value.clone();
            next.taken_ports.extend(taken);
            txn = txn.expect(node_key(&node), current.mod_revision).put(node_key(&node), encode(&next));
        }
        if txn.is_empty() {
            break;
        }
        match shared.state.commit(txn) {
            Ok(_) => {
                for app in &restarted {
                    shared.usage.count_restart(app);
                }
                break;
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    lock(&shared.heartbeats).insert(node, now_ms());
    Ok(indexed(shared.state.store().revision(), &serde_json::json!({"ok": true})))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    index: Option<u64>,
    wait: Option<String>,
}

async fn events(AxState(shared): AxState<Shared>, Query(q): Query<EventsQuery>) -> ApiResult<Response> {
    let index = wait_for(&shared, &WaitQuery { index: q.index, wait: q.wait.clone() }).await?;
    let events = shared.state.events(q.after, q.limit.unwrap_or(200).min(10_000))?;
    Ok(indexed(index, &events))
}

#[cfg(test)]
mod tests;
