//! `/v1/groups`: quotas and what a group allows, kept under `groups/NAME`; the check every
//! change to an app passes (`fits`).

use std::collections::BTreeMap;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use berth_api::{GroupRequest, GroupView};
use berth_core::groups::{Demand, Group};
use berth_core::spec::{AppSpec, check_label};
use berth_core::{App, Level};
use berth_store::Txn;
use berth_store::state::{Subject, encode};

use super::error::{ApiError, ApiResult, indexed, parse_json};
use super::tokens::Actor;
use crate::{Shared, now_ms};

pub fn group_key(name: &str) -> String {
    format!("groups/{name}")
}

/// What each group's apps reserve now.
fn usage(apps: &[App]) -> BTreeMap<String, (Demand, usize)> {
    let mut by: BTreeMap<String, (Demand, usize)> = BTreeMap::new();
    for app in apps.iter().filter(|a| !a.destroying) {
        let entry = by.entry(app.spec.group.clone()).or_default();
        entry.0 = entry.0.plus(Demand::of(&app.spec, app.instances));
        entry.1 += 1;
    }
    by
}

/// Whether `spec` (app `id`), at its count and with `surge` on top while it deploys, fits its
/// group: refused with what was asked, before anything is written.
pub(crate) fn fits(shared: &Shared, id: &str, spec: &AppSpec, surge: u32) -> ApiResult<()> {
    let group = shared.state.record::<Group>(&group_key(&spec.group))?.map(|g| g.value).unwrap_or_default();
    let others = shared
        .state
        .apps()?
        .into_iter()
        .map(|a| a.value)
        .filter(|a| a.spec.group == spec.group && a.id() != id && !a.destroying)
        .fold(Demand::default(), |sum, a| sum.plus(Demand::of(&a.spec, a.instances)));
    berth_plan::quota::check(&spec.group, &group.quota, &group.allow, others, spec, surge)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
}

pub(super) async fn list(AxState(shared): AxState<Shared>, Extension(actor): Extension<Actor>) -> ApiResult<Response> {
    let index = shared.state.store().revision();
    let apps: Vec<App> = shared.state.apps()?.into_iter().map(|a| a.value).collect();
    let used = usage(&apps);
    let mut groups: BTreeMap<String, Group> =
        shared.state.records::<Group>("groups/")?.into_iter().map(|g| (g.value.name.clone(), g.value)).collect();
    for name in used.keys() {
        groups.entry(name.clone()).or_insert_with(|| Group { name: name.clone(), ..Group::default() });
    }
    let views: Vec<GroupView> = groups
        .into_values()
        .filter(|g| actor.grant().sees(&g.name))
        .map(|g| {
            let (usage, apps) = used.get(&g.name).copied().unwrap_or_default();
            GroupView { name: g.name, quota: g.quota, allow: g.allow, usage, apps }
        })
        .collect();
    Ok(indexed(index, &views))
}

pub(super) async fn create(AxState(shared): AxState<Shared>, body: Bytes) -> ApiResult<Response> {
    let req: GroupRequest = parse_json(&body)?;
    let name = req.name.clone().ok_or_else(|| ApiError::invalid_field("name", "a group needs a name"))?;
    write(&shared, &name, req, true)
}

pub(super) async fn set(
    AxState(shared): AxState<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: GroupRequest = parse_json(&body)?;
    write(&shared, &name, req, false)
}

fn write(shared: &Shared, name: &str, req: GroupRequest, create: bool) -> ApiResult<Response> {
    check_label(name).map_err(|e| ApiError::invalid_field("name", &e))?;
    if req.cpu.is_some_and(|c| !c.is_finite() || c < 0.0) {
        return Err(ApiError::invalid_field("cpu", "must be a number of cores, 0 or more"));
    }
    let key = group_key(name);
    let found = shared.state.record::<Group>(&key)?;
    if create && found.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("group {name} exists; change it with `berth group set`"),
        ));
    }
    let rev = found.as_ref().map_or(0, |f| f.mod_revision);
    let mut group = found.map(|f| f.value).unwrap_or_else(|| Group { name: name.to_string(), ..Group::default() });
    if let Some(cpu) = req.cpu {
        group.quota.cpu = Some(cpu);
    }
    if let Some(memory) = req.memory {
        group.quota.memory = Some(memory);
    }
    if let Some(instances) = req.instances {
        group.quota.instances = Some(instances);
    }
    if let Some(mut allow) = req.allow {
        allow.sort();
        allow.dedup();
        group.allow = allow;
    }
    let now = now_ms();
    let msg = format!("group {name}: quota {:?}, allows {:?}", group.quota, group.allow);
    let txn = Txn::default().expect(key.clone(), rev).put(key, encode(&group));
    let txn = shared.state.with_event(txn, now, Level::Info, "group.set", Subject::default(), msg);
    let index = shared.state.commit(txn)?;
    let apps: Vec<App> = shared.state.apps()?.into_iter().map(|a| a.value).collect();
    let (usage, apps) = usage(&apps).get(name).copied().unwrap_or_default();
    Ok(indexed(index, &GroupView { name: group.name, quota: group.quota, allow: group.allow, usage, apps }))
}
