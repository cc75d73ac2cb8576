//! `/v1/apps`: deploy, scale, upgrade, restart, promote, roll back, destroy, plan; status and
//! versions. Every write is one compare-and-swap transaction: acknowledged means durable,
//! rejected means nothing changed.

use std::collections::HashMap;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use berth_api::{AppStatus, DeployRequest, DeployResponse, ScaleRequest, UpgradeRequest};
use berth_core::{AppSpec, DeploymentKind, Level, Node};
use berth_store::Txn;
use berth_store::state::{Subject, app_key, encode};
use serde::Deserialize;

use super::cas::{self, Attempt};
use super::error::{ApiError, ApiResult, WaitQuery, indexed, parse_json, wait_for};
use super::tokens::Actor;
use berth_plan::deploy::{self, Change, ChangeOptions, Refusal, RollbackRefusal};

use crate::{Shared, deployments, lock, now_ms, views};

/// The app's record, or 404 naming it.
pub(super) fn existing(
    state: &berth_store::state::State,
    id: &str,
) -> ApiResult<berth_store::state::Versioned<berth_core::App>> {
    state.app(id)?.ok_or_else(|| ApiError::not_found(&format!("app {id}")))
}

fn app_id(group: &str, name: &str) -> String {
    format!("{group}/{name}")
}

pub(super) fn status_of(shared: &Shared, id: &str) -> ApiResult<AppStatus> {
    let app = existing(&shared.state, id)?;
    let instances = shared.instances()?;
    let pending = lock(&shared.pending).get(id).cloned();
    Ok(views::app_status(&app.value, instances.iter(), pending.as_ref(), &shared.cut_off_nodes()?))
}

pub(super) async fn list_apps(
    AxState(shared): AxState<Shared>,
    Extension(actor): Extension<Actor>,
) -> ApiResult<Response> {
    let index = shared.state.store().revision();
    Ok(indexed(index, &visible(&shared, &actor)?))
}

/// Every app of the token's groups, as `GET /v1/apps` lists them.
pub(super) fn visible(shared: &Shared, actor: &Actor) -> ApiResult<Vec<AppStatus>> {
    let instances = shared.instances()?;
    let pending = lock(&shared.pending).clone();
    let cut_off = shared.cut_off_nodes()?;
    let apps: Vec<AppStatus> = shared
        .state
        .apps()?
        .into_iter()
        .filter(|a| actor.grant().sees(&a.value.spec.group))
        .map(|a| {
            let id = a.value.id();
            views::app_status(&a.value, instances.iter(), pending.get(&id), &cut_off)
        })
        .collect();
    Ok(apps)
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
    existing(&shared.state, &id)?;
    Ok(indexed(shared.state.store().revision(), &shared.state.versions(&id)?))
}

/// How a change treats a deployment already in progress, and whether it starts as a canary.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangeQuery {
    #[serde(default)]
    pub(crate) force: bool,
    canary: Option<u32>,
}

impl ChangeQuery {
    pub(crate) fn options(&self) -> ChangeOptions {
        ChangeOptions { force: self.force, canary: self.canary }
    }
}

/// A refused change in HTTP's words.
pub(crate) fn refused(r: Refusal) -> ApiError {
    let status = match r {
        Refusal::NotFound { .. } => StatusCode::NOT_FOUND,
        Refusal::Canary { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Refusal::Destroying { .. } | Refusal::NoCanary { .. } | Refusal::Busy(_) => StatusCode::CONFLICT,
    };
    ApiError::new(status, r.to_string())
}

/// Applies a change to an app under compare-and-swap: the decision is `deploy::decide`'s, the
/// host names it claims and its effects go into the same transaction as the app.
fn change_app(shared: &Shared, id: &str, change: Change, opts: &ChangeQuery) -> ApiResult<DeployResponse> {
    let state = &shared.state;
    let (_, (created, changed, version)) = cas::retry(state, &format!("app {id}"), || {
        let now = now_ms();
        let existing = state.app(id)?;
        // Only a new spec needs the stored versions (its instances keep those of an identical one).
        let versions = if matches!(change, Change::Spec { .. }) { state.versions(id)? } else { Vec::new() };
        let expected_rev = existing.as_ref().map_or(0, |v| v.mod_revision);
        let current = existing.map(|v| v.value);
        let decision =
            deploy::decide(current.as_ref(), id, change.clone(), opts.options(), &versions, now).map_err(refused)?;
        if !decision.changed {
            return Ok(Attempt::Done((false, false, decision.app.version)));
        }
        fits_group(shared, id, current.as_ref(), &decision.app, opts.options().canary.unwrap_or(0))?;
        let mut txn = Txn::default().expect(app_key(id), expected_rev);
        txn = super::secrets::claim(shared, txn, &decision.app.spec)?;
        txn = deployments::write(state, txn, id, decision.effects, now)?;
        if let Change::Spec { .. } = &change {
            let owner = berth_core::hosts::HostOwner::App(id.to_string());
            let names = crate::hosts::of_spec(&decision.app.spec);
            txn = match crate::hosts::claim(state, txn, &owner, &names, &shared.domain)? {
                Ok(txn) => txn,
                Err((index, conflict)) => {
                    return Err(ApiError::new(StatusCode::CONFLICT, format!("services[{index}]: {conflict}")));
                }
            };
        }
        txn = txn.put(app_key(id), encode(&decision.app));
        Ok(Attempt::Write(txn, (decision.created, true, decision.app.version)))
    })?;
    Ok(DeployResponse { created, changed, version, app: status_of(shared, id)? })
}

/// Whether the app after a change fits its group's quota and what the group allows, counting
/// the instances a new version runs on top while it deploys. A change that asks no more than
/// the app held before passes, so that a group over a lowered quota can still scale down.
fn fits_group(
    shared: &Shared,
    id: &str,
    before: Option<&berth_core::App>,
    after: &berth_core::App,
    canary: u32,
) -> ApiResult<()> {
    use berth_plan::quota::{Demand, surge};
    let new_version = before.is_some_and(|b| b.version != after.version);
    let mut spec = after.spec.clone();
    spec.instances = after.instances;
    let extra = surge(&spec, new_version, canary);
    if let Some(b) = before.filter(|b| b.spec == after.spec) {
        let (was, asks) = (Demand::of(&b.spec, b.instances), Demand::of(&spec, spec.instances + extra));
        if asks.cpu <= was.cpu && asks.memory <= was.memory && asks.instances <= was.instances {
            return Ok(());
        }
    }
    super::groups::fits(shared, id, &spec, extra)
}

fn checked_spec(spec: AppSpec) -> ApiResult<AppSpec> {
    spec.validate().map_err(|e| ApiError::invalid(format!("invalid spec: {e}"), e.0))?;
    Ok(spec)
}

/// A spec sent as YAML (by its content type) or as a JSON `DeployRequest`, validated.
pub(super) fn spec_of_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<AppSpec> {
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
    let pools = shared.state.pools()?.value;
    let apps: HashMap<String, AppSpec> =
        shared.state.apps()?.into_iter().map(|a| (a.value.id(), a.value.spec)).collect();
    let preview =
        berth_plan::preview::preview(current.as_ref(), &spec, &nodes, instances.iter(), |app| apps.get(app), &pools);
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
    if shared.state.job(&id)?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("a job is named {id}: a job and an app share their names (logs, metrics); choose another"),
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
    let current = existing(&shared.state, &id)?;
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
    let current = existing(&shared.state, &id)?;
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
    let current = existing(&shared.state, &id)?.value;
    let versions = shared.state.versions(&id)?;
    let old = deploy::rollback_target(&current, &versions, req.version).map_err(|r| match r {
        RollbackRefusal::NoSuchVersion { .. } => ApiError::new(StatusCode::NOT_FOUND, r.to_string()),
        _ => ApiError::new(StatusCode::CONFLICT, r.to_string()),
    })?;
    let target = old.version;
    let change = Change::Spec {
        spec: Box::new(old.spec.clone()),
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
        let current = existing(&shared.state, &id)?;
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
