//! `/v1/secrets`: values an app's environment refers to (`environment: {X: {secret: NAME}}`),
//! sealed under `secrets/GROUP/NAME` (`crate::secrets`). The API never answers with a value, but
//! to the agent starting an instance that refers to one, on the node it is placed on.

use std::collections::BTreeMap;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use berth_api::{InstanceSecrets, SecretRequest, SecretView};
use berth_core::spec::{AppSpec, check_label, check_secret_name};
use berth_core::{App, Level};
use berth_store::Txn;
use berth_store::state::{Subject, encode};

use super::cas::{self, Attempt};
use super::error::{ApiError, ApiResult, indexed, parse_json};
use super::tokens::Actor;
use crate::secrets::{SecretRecord, secret_key};
use crate::{Shared, now_ms};

/// The largest value a secret holds: a key or a certificate fits; a process's whole environment
/// may take 1 MiB at most.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

fn view(record: &SecretRecord, apps: &[App]) -> SecretView {
    SecretView {
        group: record.group.clone(),
        name: record.name.clone(),
        version: record.version,
        created_at: record.created_at,
        updated_at: record.updated_at,
        used_by: users(apps, &record.group, &record.name),
    }
}

/// The apps (`GROUP/NAME`) whose current spec refers to secret `group/name`.
fn users(apps: &[App], group: &str, name: &str) -> Vec<String> {
    apps.iter()
        .filter(|a| a.spec.group == group && !a.destroying)
        .filter(|a| a.spec.environment.values().any(|v| v.secret() == Some(name)))
        .map(App::id)
        .collect()
}

fn checked_names(group: &str, name: &str) -> ApiResult<()> {
    check_label(group).map_err(|why| ApiError::invalid_field("group", &why))?;
    check_secret_name(name).map_err(|why| ApiError::invalid_field("name", &why))
}

/// `GET /v1/secrets`: the secrets of the token's groups, never a value.
pub(super) async fn list(AxState(shared): AxState<Shared>, Extension(actor): Extension<Actor>) -> ApiResult<Response> {
    let index = shared.state.store().revision();
    let apps: Vec<App> = shared.state.apps()?.into_iter().map(|a| a.value).collect();
    let secrets: Vec<SecretView> = shared
        .state
        .records::<SecretRecord>("secrets/")?
        .iter()
        .filter(|r| actor.grant().sees(&r.value.group))
        .map(|r| view(&r.value, &apps))
        .collect();
    Ok(indexed(index, &secrets))
}

/// `PUT /v1/secrets/{group}/{name}`: seals the value, as version 1 or the next.
pub(super) async fn set(
    AxState(shared): AxState<Shared>,
    Extension(actor): Extension<Actor>,
    Path((group, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    checked_names(&group, &name)?;
    let req: SecretRequest = parse_json(&body)?;
    if req.value.len() > MAX_SECRET_BYTES {
        let why = format!("{} KiB; a secret holds at most {} KiB", req.value.len() / 1024, MAX_SECRET_BYTES / 1024);
        return Err(ApiError::invalid_field("value", &why));
    }
    if let Some(at) = req.value.find('\0') {
        return Err(ApiError::invalid_field(
            "value",
            &format!("has a NUL byte (at byte {at}), which no environment can hold"),
        ));
    }
    let key = secret_key(&group, &name);
    let (index, record) = cas::retry(&shared.state, &format!("secret {group}/{name}"), || {
        let now = now_ms();
        let existing = shared.state.record::<SecretRecord>(&key)?;
        let version = existing.as_ref().map_or(1, |e| e.value.version + 1);
        let mut record = shared.secrets.seal(&group, &name, version, &req.value, now);
        if let Some(e) = &existing {
            record.created_at = e.value.created_at;
        }
        let msg = format!("secret {group}/{name} set (version {version}) by {} ({})", actor.id, actor.name);
        let txn = Txn::default().expect(&key, existing.map_or(0, |e| e.mod_revision)).put(&key, encode(&record));
        let txn = shared.state.with_event(txn, now, Level::Info, "secret.set", Subject::default(), msg);
        Ok(Attempt::Write(txn, record))
    })?;
    let apps: Vec<App> = shared.state.apps()?.into_iter().map(|a| a.value).collect();
    Ok(indexed(index, &view(&record, &apps)))
}

/// `DELETE /v1/secrets/{group}/{name}`: refused while an app refers to it.
pub(super) async fn delete(
    AxState(shared): AxState<Shared>,
    Extension(actor): Extension<Actor>,
    Path((group, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    checked_names(&group, &name)?;
    let key = secret_key(&group, &name);
    let (index, gone) = cas::retry(&shared.state, &format!("secret {group}/{name}"), || {
        let Some(existing) = shared.state.record::<SecretRecord>(&key)? else {
            return Err(ApiError::not_found(&format!("secret {group}/{name}")));
        };
        let apps: Vec<App> = shared.state.apps()?.into_iter().map(|a| a.value).collect();
        let used = users(&apps, &group, &name);
        if !used.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "secret {group}/{name} is in use by {}: take it out of their environment first",
                    used.join(", ")
                ),
            ));
        }
        // A deploy that starts to use it writes the record again (`claim`), which fails this.
        let txn = Txn::default().expect(&key, existing.mod_revision).delete(&key);
        let msg = format!("secret {group}/{name} deleted by {} ({})", actor.id, actor.name);
        let txn = shared.state.with_event(txn, now_ms(), Level::Info, "secret.deleted", Subject::default(), msg);
        Ok(Attempt::Write(txn, existing.value))
    })?;
    Ok(indexed(index, &view(&gone, &[])))
}

/// Adds to a change of an app whose spec refers to secrets the guard that they exist, and writes
/// each again unchanged, so that a `secret rm` racing the change fails its own guard. A missing
/// one refuses the change, naming the variable.
pub(crate) fn claim(shared: &Shared, mut txn: Txn, spec: &AppSpec) -> ApiResult<Txn> {
    for (var, value) in &spec.environment {
        let Some(name) = value.secret() else { continue };
        let key = secret_key(&spec.group, name);
        let Some(entry) = shared.state.store().get(&key)? else {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "environment.{var}: secret {name} does not exist in group {}: berth secret set {}/{name}",
                    spec.group, spec.group
                ),
            ));
        };
        txn = txn.expect(&key, entry.mod_revision).put(&key, entry.value);
    }
    Ok(txn)
}

/// `GET /v1/nodes/{id}/instances/{instance}/secrets`, for the agent of node `id` (checked by the
/// route's layer): the values the instance's environment refers to, when it is placed there.
pub(super) async fn for_instance(
    AxState(shared): AxState<Shared>,
    Path((node, instance)): Path<(String, String)>,
) -> ApiResult<Response> {
    let index = shared.state.store().revision();
    let Some(inst) = shared.state.instance(&instance)?.map(|r| r.value).filter(|i| i.node == node) else {
        return Err(ApiError::not_found(&format!("instance {instance} on node {node}")));
    };
    let Some(spec) = shared.state.spec_of(&inst)? else {
        return Err(ApiError::not_found(&format!("app {}", inst.app)));
    };
    let mut environment = BTreeMap::new();
    for (var, value) in &spec.environment {
        let Some(name) = value.secret() else { continue };
        let Some(record) = shared.state.record::<SecretRecord>(&secret_key(&spec.group, name))? else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("environment.{var}: secret {}/{name} no longer exists", spec.group),
            ));
        };
        let opened = shared
            .secrets
            .open(&record.value)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        environment.insert(var.clone(), opened);
    }
    Ok(indexed(index, &InstanceSecrets { environment }))
}
