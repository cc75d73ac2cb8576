//! `/v1/apps`: deploy, scale, upgrade, restart, promote, roll back, destroy, plan; status and
//! versions. Every write is one compare-and-swap transaction: acknowledged means durable,
//! rejected means nothing changed.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use berth_api::{AppStatus, DeployRequest, DeployResponse, ScaleRequest, UpgradeRequest};
use berth_core::{App, AppSpec, AppVersion, Backoff, DeploymentKind, DeploymentState, Level, Node};
use berth_store::Txn;
use berth_store::state::{Subject, app_key, encode, version_key};
use serde::Deserialize;

use super::cas::{self, Attempt};
use super::error::{ApiError, ApiResult, WaitQuery, indexed, parse_json, wait_for};
use crate::{Shared, deployments, lock, now_ms, views};

fn app_id(group: &str, name: &str) -> String {
    format!("{group}/{name}")
}

fn status_of(shared: &Shared, id: &str) -> ApiResult<AppStatus> {
    let app = shared.state.app(id)?.ok_or_else(|| ApiError::not_found(&format!("app {id}")))?;
    let instances = shared.instances()?;
    let pending = lock(&shared.pending).get(id).cloned();
    Ok(views::app_status(&app.value, &instances, pending))
}

pub(super) async fn list_apps(AxState(shared): AxState<Shared>) -> ApiResult<Response> {
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

pub(super) async fn get_app(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    let index = wait_for(&shared, &q).await?;
    Ok(indexed(index, &status_of(&shared, &app_id(&group, &name))?))
}

pub(super) async fn versions(
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
    pub(crate) force: bool,
    canary: Option<u32>,
}

pub(crate) fn busy(app: &App, id: &str, now: i64) -> Option<ApiError> {
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
    let (_, (created, changed, version)) = cas::retry(&shared.state, &format!("app {id}"), || {
        let now = now_ms();
        let state = &shared.state;
        let existing = state.app(id)?;
        let expected_rev = existing.as_ref().map_or(0, |v| v.mod_revision);
        let mut txn = Txn::default().expect(app_key(id), expected_rev);
        let unchanged = |app: &App| Ok(Attempt::Done((false, false, app.version)));
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
        Ok(Attempt::Write(txn, (created, true, app.version)))
    })?;
    Ok(DeployResponse { created, changed, version, app: status_of(shared, id)? })
}

/// A new instance count. A version rollout in progress keeps going toward the new count;
/// otherwise the scale is a deployment of its own, under the same health gates.
pub(crate) fn scale_to(
    state: &berth_store::state::State,
    mut txn: Txn,
    app: &mut App,
    n: u32,
    now: i64,
) -> ApiResult<Txn> {
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
pub(super) async fn plan(AxState(shared): AxState<Shared>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
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

pub(super) async fn deploy(
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

pub(super) async fn scale(
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

pub(super) async fn upgrade(
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

pub(super) async fn restart(
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

pub(super) async fn promote(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let resp = change_app(&shared, &app_id(&group, &name), Change::Promote, &ChangeQuery::default())?;
    Ok(indexed(shared.state.store().revision(), &resp))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RollbackRequest {
    /// The version to go back to; by default the latest earlier version that ran healthy.
    version: Option<u64>,
}

/// Makes a stored version's spec current again, as a new version (history is never rewritten),
/// keeping the app's present scale. A deployment in progress (a canary too) is abandoned.
pub(super) async fn rollback(
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

pub(super) async fn destroy(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = app_id(&group, &name);
    let (index, ()) = cas::retry(&shared.state, &format!("app {id}"), || {
        let current = shared.state.app(&id)?.ok_or_else(|| ApiError::not_found(&format!("app {id}")))?;
        if current.value.destroying {
            return Ok(Attempt::Done(()));
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
        Ok(Attempt::Write(txn, ()))
    })?;
    Ok(indexed(index, &status_of(&shared, &id)?))
}
