//! Versions and deployments: the one place that starts, ends and supersedes them, used by the API
//! (a user's change) and by the reconciler (an automatic rollback, a deployment that ended).

use berth_core::{
    App, AppSpec, AppVersion, Backoff, Deployment, DeploymentKind, DeploymentState, Level, Millis, Outcome, Strategy,
};
use berth_store::state::{State, Subject, encode, version_key};
use berth_store::{StoreError, Txn};

/// Specs that differ at most in their instance count: a scale, not a new version.
pub(crate) fn same_ignoring_scale(a: &AppSpec, b: &AppSpec) -> bool {
    let mut a = a.clone();
    a.instances = b.instances;
    &a == b
}

/// Records how `version`'s deployment ended on its stored version.
fn with_outcome(state: &State, txn: Txn, app: &str, version: u64, outcome: Outcome) -> Result<Txn, StoreError> {
    let Some(mut record) = state.record::<AppVersion>(&version_key(app, version))?.map(|v| v.value) else {
        return Ok(txn);
    };
    record.outcome = Some(outcome);
    Ok(txn.put(version_key(app, version), encode(&record)))
}

/// Starts a deployment of the app as it now stands (after a scale, or on creation).
pub(crate) fn start(app: &mut App, kind: DeploymentKind, from_version: Option<u64>, now: Millis) {
    let mut d = Deployment::start(kind, from_version, app.version, now);
    d.blue_green = app.spec.upgrade.strategy == Strategy::BlueGreen && from_version.is_some();
    app.deployment = Some(d);
}

/// Marks the running deployment, if any, as superseded by a newer change.
pub(crate) fn supersede(state: &State, mut txn: Txn, app: &mut App, by: &str, now: Millis) -> Result<Txn, StoreError> {
    let id = app.id();
    let Some(d) = app.deployment.as_mut().filter(|d| d.state == DeploymentState::Running) else {
        return Ok(txn);
    };
    d.state = DeploymentState::Superseded;
    d.finished_at = Some(now);
    d.message = Some(format!("superseded by {by}"));
    if d.from_version != Some(d.version) && d.kind != DeploymentKind::Scale {
        let outcome = Outcome { state: d.state, at: now, message: d.message.clone() };
        txn = with_outcome(state, txn, &id, d.version, outcome)?;
    }
    let msg = format!("v{} deployment superseded by {by}", d.version);
    Ok(state.with_event(txn, now, Level::Warn, "deployment.superseded", Subject::app(&id), msg))
}

/// Makes `spec` the app's new numbered version and starts its deployment.
pub(crate) fn new_version(
    state: &State,
    mut txn: Txn,
    app: &mut App,
    spec: AppSpec,
    change: String,
    kind: DeploymentKind,
    now: Millis,
) -> Result<Txn, StoreError> {
    let id = app.id();
    let from = app.version;
    txn = supersede(state, txn, app, &format!("v{}", from + 1), now)?;
    // Instances of an earlier version with this very spec are kept, unless asked to restart.
    app.alike = if kind == DeploymentKind::Restart {
        Vec::new()
    } else {
        state.versions(&id)?.into_iter().filter(|v| same_ignoring_scale(&v.spec, &spec)).map(|v| v.version).collect()
    };
    app.version += 1;
    app.instances = spec.instances;
    app.spec = spec.clone();
    app.backoff = Backoff::default();
    app.updated_at = now;
    let record = AppVersion {
        app: id.clone(),
        version: app.version,
        spec,
        created_at: now,
        change: change.clone(),
        outcome: None,
    };
    txn = txn.put(version_key(&id, app.version), encode(&record));
    start(app, kind, Some(from), now);
    let level = if kind == DeploymentKind::AutoRollback { Level::Error } else { Level::Info };
    Ok(state.with_event(txn, now, level, "app.updated", Subject::app(&id), format!("v{}: {change}", app.version)))
}

/// Ends the running deployment; a success makes its version the stable one.
pub(crate) fn end(
    state: &State,
    mut txn: Txn,
    app: &mut App,
    outcome: DeploymentState,
    message: String,
    now: Millis,
) -> Result<Txn, StoreError> {
    let id = app.id();
    let Some(d) = app.deployment.as_mut().filter(|d| d.state == DeploymentState::Running) else {
        return Ok(txn);
    };
    d.state = outcome;
    d.finished_at = Some(now);
    d.message = Some(message.clone());
    let version = d.version;
    let kind = d.kind;
    if kind != DeploymentKind::Scale {
        txn = with_outcome(
            state,
            txn,
            &id,
            version,
            Outcome { state: outcome, at: now, message: Some(message.clone()) },
        )?;
    }
    let (level, event) = match outcome {
        DeploymentState::Succeeded => {
            app.stable_version = Some(version);
            (Level::Info, "deployment.succeeded")
        }
        DeploymentState::RolledBack => (Level::Error, "deployment.rolled_back"),
        _ => (Level::Error, "deployment.failed"),
    };
    Ok(state.with_event(txn, now, level, event, Subject::app(&id), format!("{} v{version}: {message}", kind.as_str())))
}

/// The deployment failed: the last stable version's spec becomes current again, as a new version.
pub(crate) fn roll_back(
    state: &State,
    mut txn: Txn,
    app: &mut App,
    to_version: u64,
    reason: String,
    now: Millis,
) -> Result<Txn, StoreError> {
    let id = app.id();
    let Some(target) = state.record::<AppVersion>(&version_key(&id, to_version))?.map(|v| v.value) else {
        return end(
            state,
            txn,
            app,
            DeploymentState::Failed,
            format!("{reason}; v{to_version} to roll back to is gone"),
            now,
        );
    };
    let failed = app.version;
    txn = end(state, txn, app, DeploymentState::RolledBack, format!("{reason}; rolling back to v{to_version}"), now)?;
    let mut spec = target.spec;
    spec.instances = app.instances;
    let change = format!("automatic rollback to v{to_version} after v{failed} failed");
    new_version(state, txn, app, spec, change, DeploymentKind::AutoRollback, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_only_differences_are_alike() {
        let a = AppSpec::from_yaml("group: g\nname: n\nimage: i\ninstances: 2\n", None).unwrap();
        let mut b = a.clone();
        b.instances = 5;
        assert!(same_ignoring_scale(&a, &b));
        b.image = Some("j".into());
        assert!(!same_ignoring_scale(&a, &b));
    }
}
