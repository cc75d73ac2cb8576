//! The store side of reconcile: a snapshot of the records with the revision that wrote each, and
//! a plan applied as one store transaction guarded by those revisions.

use std::collections::HashMap;

use berth_core::{
    Allocation, App, Desired, Drain, DrainState, Eligibility, Instance, InstanceState, Level, Millis, NodeStatus,
    Quarantine,
};
use berth_plan::{Action, Snapshot, deploy};
use berth_store::state::{POOLS_KEY, Subject, app_key, encode, instance_key, node_key, run_key, version_key};
use berth_store::{StoreError, Txn};

use crate::{Shared, deployments};

/// The revision that last wrote each record in a snapshot, for compare-and-swap on apply.
#[derive(Debug, Default)]
pub(crate) struct Revisions {
    pub apps: HashMap<String, u64>,
    pub instances: HashMap<String, u64>,
    pub nodes: HashMap<String, u64>,
    pub pools: u64,
    /// Jobs by id, runs by key.
    pub jobs: HashMap<String, u64>,
    pub runs: HashMap<String, u64>,
}

pub(crate) fn snapshot(shared: &Shared) -> Result<(Snapshot, Revisions), StoreError> {
    let state = &shared.state;
    let apps = state.apps()?;
    let instances = state.instances()?;
    let nodes: Vec<_> = state
        .nodes()?
        .into_iter()
        .map(|mut n| {
            n.value = shared.with_heartbeat(n.value);
            n
        })
        .collect();
    let pools = state.pools()?;
    let jobs = state.jobs()?;
    let runs = state.runs()?;
    let revisions = Revisions {
        jobs: jobs.iter().map(|j| (j.value.id(), j.mod_revision)).collect(),
        runs: runs.iter().map(|r| (run_key(&r.value.job, r.value.scheduled_at), r.mod_revision)).collect(),
        pools: pools.mod_revision,
        apps: apps.iter().map(|a| (a.value.id(), a.mod_revision)).collect(),
        instances: instances.versioned().map(|i| (i.value.id.clone(), i.mod_revision)).collect(),
        nodes: nodes.iter().map(|n| (n.value.id.clone(), n.mod_revision)).collect(),
    };
    Ok((
        Snapshot {
            apps: apps.into_iter().map(|v| v.value).collect(),
            instances: instances.iter().cloned().collect(),
            nodes: nodes.into_iter().map(|v| v.value).collect(),
            pools: pools.value,
            jobs: jobs.into_iter().map(|v| v.value).collect(),
            runs: runs.into_iter().map(|v| v.value).collect(),
        },
        revisions,
    ))
}

/// A new instance record, staging where `placement` put it; `run` for a job's attempt.
pub(crate) fn placed(
    id: &str,
    app: &str,
    version: u64,
    placement: &berth_plan::Placement,
    allocated: Allocation,
    run: Option<berth_core::RunOf>,
    now: Millis,
) -> Instance {
    Instance {
        id: id.to_string(),
        app: app.to_string(),
        version,
        node: placement.node.clone(),
        driver: placement.driver,
        state: InstanceState::Staging,
        desired: Desired::Run,
        host_ports: placement.host_ports.clone(),
        host: placement.host.clone(),
        observed: Default::default(),
        created_at: now,
        healthy_since: None,
        in_service: false,
        allocated: Some(allocated),
        borrowed: placement.borrowed,
        run,
    }
}

/// A short random id: unique enough for instances, readable in a table.
pub(crate) fn random_suffix() -> String {
    format!("{:010x}", rand::random::<u64>() & 0xff_ffff_ffff)
}

pub(crate) fn apply(
    shared: &Shared,
    snapshot: &Snapshot,
    revisions: &Revisions,
    actions: &[Action],
    now: Millis,
) -> Result<u64, StoreError> {
    let state = &shared.state;
    let instances: HashMap<&str, &Instance> = snapshot.instances.iter().map(|i| (i.id.as_str(), i)).collect();
    let apps: HashMap<String, &App> = snapshot.apps.iter().map(|a| (a.id(), a)).collect();
    let mut txn = Txn::default();
    // Several actions may change one app: they all edit one copy, written once at the end.
    let mut changed_apps: HashMap<String, App> = HashMap::new();
    let guard_instance =
        |txn: Txn, id: &str| txn.expect(instance_key(id), revisions.instances.get(id).copied().unwrap_or(0));
    let guard_app = |txn: Txn, id: &str| txn.expect(app_key(id), revisions.apps.get(id).copied().unwrap_or(0));
    let mut jobs = crate::jobs::JobWrites::new(snapshot, revisions);

    for action in actions {
        match action {
            Action::Job(a) => txn = jobs.apply(state, txn, a, &instances, now),
            Action::Place { app, version, placement } => {
                let Some(a) = apps.get(app) else { continue };
                let id = format!("{}-{}", a.spec.name, random_suffix());
                let inst = placed(&id, app, *version, placement, Allocation::of(&a.spec), None, now);
                // Placed by the pools as they were read: a change to them meanwhile plans again.
                txn = guard_app(txn, app)
                    .expect(POOLS_KEY, revisions.pools)
                    .expect(instance_key(&id), 0)
                    .put(instance_key(&id), encode(&inst));
                let msg = format!(
                    "placed v{version} on {} ({}, ports {:?})",
                    placement.node, placement.driver, placement.host_ports
                );
                txn = state.with_event(
                    txn,
                    now,
                    Level::Info,
                    "instance.placed",
                    Subject::instance(app, &id, &placement.node),
                    msg,
                );
            }
            // An expired instance is stopped like any other, and counts as a failure of its app.
            Action::Stop { instance, reason } | Action::Expire { instance, reason } => {
                let Some(inst) = instances.get(instance.as_str()) else {
                    continue;
                };
                let mut next = (*inst).clone();
                next.desired = Desired::Stop;
                next.set_reason(reason.clone());
                txn = guard_instance(txn, instance).put(instance_key(instance), encode(&next));
                let subject = Subject::instance(&inst.app, instance, &inst.node);
                let expired = matches!(action, Action::Expire { .. });
                if expired && let Some(app) = app_mut(&mut changed_apps, &apps, &inst.app) {
                    let effects = deploy::count_failure(app, inst.version, &reason.to_string(), now);
                    txn = deployments::write(state, txn, &inst.app, effects, now)?;
                }
                let (level, kind) =
                    if expired { (Level::Warn, "instance.unhealthy") } else { (Level::Info, "instance.stopping") };
                txn = state.with_event(txn, now, level, kind, subject, reason.to_string());
            }
            Action::Admit { instance } => {
                let Some(inst) = instances.get(instance.as_str()) else {
                    continue;
                };
                let mut next = (*inst).clone();
                next.in_service = true;
                txn = guard_instance(txn, instance).put(instance_key(instance), encode(&next));
                if let Some(app) = app_mut(&mut changed_apps, &apps, &inst.app) {
                    deploy::admitted(app, inst.version, now);
                }
                let subject = Subject::instance(&inst.app, instance, &inst.node);
                let msg = format!("v{} in service at {}", inst.version, inst.address().unwrap_or_default());
                txn = state.with_event(txn, now, Level::Info, "instance.ready", subject, msg);
            }
            Action::EndDeployment { app, state: outcome, message } => {
                let Some(a) = app_mut(&mut changed_apps, &apps, app) else { continue };
                let effects = deploy::end(a, *outcome, message.clone(), now);
                txn = deployments::write(state, txn, app, effects, now)?;
            }
            Action::AutoRollback { app, to_version, reason } => {
                let Some(a) = app_mut(&mut changed_apps, &apps, app) else { continue };
                let versions = state.versions(app)?;
                let target = versions.iter().find(|v| v.version == *to_version);
                let effects = deploy::roll_back(a, target, *to_version, reason.clone(), &versions, now);
                txn = deployments::write(state, txn, app, effects, now)?;
                // The old spec's names are taken back where still free; one another owner took
                // meanwhile stays theirs (the route snapshot serves a name to its claimant only).
                let owner = berth_core::hosts::HostOwner::App(app.clone());
                let free = crate::hosts::free_for(state, &owner, crate::hosts::of_spec(&a.spec), &shared.domain)?;
                if let Ok(claimed) = crate::hosts::claim(state, txn.clone(), &owner, &free, &shared.domain)? {
                    txn = claimed;
                }
            }
            Action::Switch { app } => {
                let Some(a) = app_mut(&mut changed_apps, &apps, app) else { continue };
                let effects = deploy::switch(a, now);
                txn = deployments::write(state, txn, app, effects, now)?;
            }
            Action::NodeDisconnected { node } => {
                let Some(n) = snapshot.nodes.iter().find(|n| &n.id == node) else {
                    continue;
                };
                let mut next = n.clone();
                next.status = NodeStatus::Disconnected;
                next.disconnected_at = Some(now);
                let rev = revisions.nodes.get(node).copied().unwrap_or(0);
                txn = txn.expect(node_key(node), rev).put(node_key(node), encode(&next));
                let since = (now - n.last_heartbeat) / 1000;
                let live = snapshot.instances.iter().filter(|i| &i.node == node && i.state.is_live()).count();
                txn = state.with_event(
                    txn,
                    now,
                    Level::Error,
                    "node.disconnected",
                    Subject::node(node),
                    format!(
                        "no heartbeat for {since}s: dead or cut off; its {live} live instance(s) are replaced once their app's max_disconnect is over"
                    ),
                );
            }
            Action::Quarantine { node, why } => {
                let Some(n) = snapshot.nodes.iter().find(|n| &n.id == node) else {
                    continue;
                };
                let mut next = n.clone();
                let live = snapshot.instances.iter().filter(|i| &i.node == node && i.state.is_live()).count();
                next.eligibility = Eligibility::Ineligible;
                next.drain = Some(Drain::started(now, None, live));
                next.quarantine = Some(Quarantine { at: now, why: why.clone(), released_at: None });
                let rev = revisions.nodes.get(node).copied().unwrap_or(0);
                txn = txn.expect(node_key(node), rev).put(node_key(node), encode(&next));
                let msg = format!(
                    "quarantined: {why}; its {live} instance(s) move off through the gates (berth node eligible {} brings it back)",
                    n.hostname
                );
                txn = state.with_event(txn, now, Level::Error, "node.quarantined", Subject::node(node), msg);
            }
            Action::EndDrain { node, state: outcome, left } => {
                let Some(n) = snapshot.nodes.iter().find(|n| &n.id == node) else {
                    continue;
                };
                let mut next = n.clone();
                let Some(drain) = next.drain.as_mut() else { continue };
                drain.state = *outcome;
                drain.ended_at = Some(now);
                let (level, msg) = match outcome {
                    DrainState::DeadlineReached => {
                        (Level::Warn, format!("drain deadline reached: {left} instance(s) left were stopped"))
                    }
                    _ => (Level::Info, format!("drained: {} instance(s) moved off", drain.instances)),
                };
                let rev = revisions.nodes.get(node).copied().unwrap_or(0);
                txn = txn.expect(node_key(node), rev).put(node_key(node), encode(&next));
                txn = state.with_event(txn, now, level, "node.drained", Subject::node(node), msg);
            }
            Action::Forget { instance } => {
                txn = guard_instance(txn, instance).delete(instance_key(instance));
            }
            Action::ResetBackoff { app } => {
                let Some(a) = app_mut(&mut changed_apps, &apps, app) else { continue };
                a.backoff = Default::default();
            }
            Action::RemoveApp { app } => {
                let Some(a) = apps.get(app) else { continue };
                txn = guard_app(txn, app).delete(app_key(app));
                txn = crate::hosts::release(state, txn, &berth_core::hosts::HostOwner::App(app.clone()))?;
                for v in 1..=a.version {
                    txn = txn.delete(version_key(app, v));
                }
                txn = state.with_event(
                    txn,
                    now,
                    Level::Info,
                    "app.destroyed",
                    Subject::app(app),
                    "all instances stopped".into(),
                );
            }
        }
    }
    txn = jobs.finish(txn);
    for (id, app) in changed_apps {
        txn = guard_app(txn, &id).put(app_key(&id), encode(&app));
    }
    // The same app key may be guarded by several actions: keep one compare per key.
    txn.compares.sort_by(|a, b| a.key.cmp(&b.key));
    txn.compares.dedup();
    state.commit(txn)
}

fn app_mut<'a>(changed: &'a mut HashMap<String, App>, apps: &HashMap<String, &App>, id: &str) -> Option<&'a mut App> {
    if !changed.contains_key(id) {
        changed.insert(id.to_string(), (*apps.get(id)?).clone());
    }
    changed.get_mut(id)
}
