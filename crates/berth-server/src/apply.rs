//! Applies a plan as one store transaction, guarded by the revisions it was planned from.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use berth_core::{App, Desired, Instance, InstanceState, Level, Millis, NodeStatus};
use berth_plan::{Action, Snapshot};
use berth_store::state::{Subject, app_key, encode, instance_key, node_key, version_key};
use berth_store::{StoreError, Txn};

use crate::Shared;
use crate::reconciler::Revisions;

/// A short random id: unique enough for instances, readable in a table.
pub(crate) fn random_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    format!("{:010x}", h.finish() & 0xff_ffff_ffff)
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
    let guard_instance =
        |txn: Txn, id: &str| txn.expect(instance_key(id), revisions.instances.get(id).copied().unwrap_or(0));
    let guard_app = |txn: Txn, id: &str| txn.expect(app_key(id), revisions.apps.get(id).copied().unwrap_or(0));

    for action in actions {
        match action {
            Action::Place { app, version, placement } => {
                let Some(a) = apps.get(app) else { continue };
                let id = format!("{}-{}", a.spec.name, random_suffix());
                let inst = Instance {
                    id: id.clone(),
                    app: app.clone(),
                    version: *version,
                    node: placement.node.clone(),
                    driver: placement.driver,
                    state: InstanceState::Staging,
                    desired: Desired::Run,
                    host_ports: placement.host_ports.clone(),
                    host: placement.host.clone(),
                    healthy: None,
                    exit_code: None,
                    oom_killed: false,
                    reason: None,
                    created_at: now,
                    started_at: None,
                    finished_at: None,
                    handle: None,
                };
                txn = guard_app(txn, app).expect(instance_key(&id), 0).put(instance_key(&id), encode(&inst));
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
            Action::Stop { instance, reason } => {
                let Some(inst) = instances.get(instance.as_str()) else {
                    continue;
                };
                let mut next = (*inst).clone();
                next.desired = Desired::Stop;
                next.reason = Some(reason.clone());
                txn = guard_instance(txn, instance).put(instance_key(instance), encode(&next));
                let subject = Subject::instance(&inst.app, instance, &inst.node);
                txn = state.with_event(txn, now, Level::Info, "instance.stopping", subject, reason.clone());
            }
            Action::Fail { instance, reason } => {
                let Some(inst) = instances.get(instance.as_str()) else {
                    continue;
                };
                let mut next = (*inst).clone();
                next.state = InstanceState::Failed;
                next.reason = Some(reason.clone());
                next.finished_at = Some(now);
                next.healthy = None;
                txn = guard_instance(txn, instance).put(instance_key(instance), encode(&next));
                let subject = Subject::instance(&inst.app, instance, &inst.node);
                txn = state.with_event(txn, now, Level::Error, "instance.failed", subject, reason.clone());
            }
            Action::NodeDown { node } => {
                let Some(n) = snapshot.nodes.iter().find(|n| &n.id == node) else {
                    continue;
                };
                let mut next = n.clone();
                next.status = NodeStatus::Down;
                let rev = revisions.nodes.get(node).copied().unwrap_or(0);
                txn = txn.expect(node_key(node), rev).put(node_key(node), encode(&next));
                let since = (now - n.last_heartbeat) / 1000;
                txn = state.with_event(
                    txn,
                    now,
                    Level::Error,
                    "node.lost",
                    Subject::node(node),
                    format!("no heartbeat for {since}s"),
                );
            }
            Action::Forget { instance } => {
                txn = guard_instance(txn, instance).delete(instance_key(instance));
            }
            Action::ResetBackoff { app } => {
                let Some(a) = apps.get(app) else { continue };
                let mut next = (*a).clone();
                next.backoff = Default::default();
                txn = guard_app(txn, app).put(app_key(app), encode(&next));
            }
            Action::RemoveApp { app } => {
                let Some(a) = apps.get(app) else { continue };
                txn = guard_app(txn, app).delete(app_key(app));
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
    // The same app key may be guarded by several actions: keep one compare per key.
    txn.compares.sort_by(|a, b| a.key.cmp(&b.key));
    txn.compares.dedup();
    state.commit(txn)
}
