//! Builds the API's views of apps and nodes from stored records.

use berth_api::{AllocatedResources, AppStatus, Counts, CrashLoop, InstanceView, NodeView};
use std::collections::{HashMap, HashSet};

use berth_core::{Allocation, App, Desired, Instance, InstanceState, Node};

/// `app` with its instances; those on the `cut_off` nodes show as unreachable, and count as
/// neither ready nor live until their node is back.
pub(crate) fn app_status<'a>(
    app: &App,
    instances: impl IntoIterator<Item = &'a Instance>,
    pending: Option<&berth_plan::Pending>,
    cut_off: &HashSet<String>,
) -> AppStatus {
    let unreachable = |i: &Instance| cut_off.contains(&i.node);
    let id = app.id();
    let mut mine: Vec<&Instance> = instances.into_iter().filter(|i| i.app == id).collect();
    // Live first (oldest first), then the recently ended (newest first).
    mine.sort_by_key(|i| {
        let live = i.state.is_live();
        (!live, if live { i.created_at } else { -i.observed.finished_at.unwrap_or(i.created_at) })
    });
    let current_ready = mine
        .iter()
        .filter(|i| app.is_current(i.version) && i.desired == Desired::Run && i.is_ready() && !unreachable(i))
        .count();
    let others_live = mine
        .iter()
        .any(|i| i.state.is_live() && !unreachable(i) && (!app.is_current(i.version) || i.desired == Desired::Stop));
    let crash_loop = app.backoff.crash_looping().then(|| {
        let last = mine
            .iter()
            .filter(|i| i.state == InstanceState::Failed)
            .max_by_key(|i| i.observed.finished_at.unwrap_or(i.created_at));
        CrashLoop {
            failures: app.backoff.failures,
            next_launch_at: app.backoff.not_before,
            instance: last.map(|i| i.id.clone()),
            reason: last.and_then(|i| i.observed.reason.clone()),
            exit_code: last.and_then(|i| i.observed.exit_code),
            oom_killed: last.is_some_and(|i| i.observed.oom_killed),
            last_log: last.map(|i| i.observed.last_log.clone()).unwrap_or_default(),
        }
    });
    AppStatus {
        crash_loop,
        name: app.spec.name.clone(),
        group: app.spec.group.clone(),
        version: app.version,
        desired: app.instances,
        image: app.spec.image.clone(),
        spec: app.spec.clone(),
        counts: Counts::of(mine.iter().copied(), unreachable),
        deployed: !app.destroying && current_ready == app.instances as usize && !others_live,
        destroying: app.destroying,
        deployment: app.deployment.clone(),
        stable_version: app.stable_version,
        alike: app.alike.clone(),
        pending: pending.map(|p| format!("{} instance(s) waiting: {}", p.missing, p.why)),
        waiting: pending.map(|p| p.why.clone()),
        instances: mine.into_iter().map(|i| InstanceView::new(i.clone(), unreachable(i))).collect(),
        created_at: app.created_at,
        updated_at: app.updated_at,
        id,
    }
}

/// A node with what its live instances hold (each at what it was placed with, or, placed before
/// that was recorded, at its app's spec) and use (`used`: instance id to cpu cores and MiB).
pub(crate) fn node_view<'a>(
    node: Node,
    instances: impl IntoIterator<Item = &'a Instance>,
    specs: &dyn Fn(&str) -> Option<Allocation>,
    used: &HashMap<String, (f64, u64)>,
) -> NodeView {
    let live: Vec<&Instance> = instances.into_iter().filter(|i| i.node == node.id && i.state.is_live()).collect();
    let mut allocated = AllocatedResources::default();
    let mut in_use = AllocatedResources::default();
    for inst in &live {
        if let Some(held) = inst.allocated.or_else(|| specs(&inst.app)) {
            allocated.cpu += held.cpu;
            allocated.memory += held.memory;
        }
        if let Some((cpu, memory)) = used.get(&inst.id) {
            in_use.cpu += cpu;
            in_use.memory += memory;
        }
    }
    NodeView { instances: live.len(), state: node.state(), allocated, used: in_use, node }
}
