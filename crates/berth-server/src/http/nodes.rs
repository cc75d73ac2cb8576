//! `/v1/nodes`: agents register, heartbeat, watch their assignments and report their instances.

use std::collections::{BTreeSet, HashMap};

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use berth_api::{
    Assignment, Assignments, DrainRequest, EligibilityRequest, HeartbeatReply, HeartbeatRequest, InstanceView,
    NodeDetail, NodeView, RegisterRequest, ReportRequest,
};
use berth_core::spec::DriverKind;
use berth_core::{
    Allocation, App, AppSpec, Drain, DrainState, Eligibility, Instance, InstanceState, Level, Node, NodeStatus,
};
use berth_store::Txn;
use berth_store::state::{Subject, app_key, encode, instance_key, node_key};

use berth_plan::deploy;

use super::cas::{self, Attempt};
use super::credentials;
use super::error::{ApiError, ApiResult, WaitQuery, indexed, parse_json, wait_for, wait_until};
use crate::deployments;
use crate::{Shared, lock, now_ms, views};

pub(super) async fn list_nodes(AxState(shared): AxState<Shared>) -> ApiResult<Response> {
    let index = shared.state.store().revision();
    let nodes = node_views(&shared, shared.state.nodes()?.into_iter().map(|n| n.value).collect())?;
    Ok(indexed(index, &nodes))
}

/// Views of the given nodes, each with what its live instances hold and use.
pub(super) fn node_views(shared: &Shared, nodes: Vec<Node>) -> Result<Vec<NodeView>, ApiError> {
    let instances = shared.instances()?;
    let specs: HashMap<String, Allocation> =
        shared.state.apps()?.into_iter().map(|a| (a.value.id(), Allocation::of(&a.value.spec))).collect();
    let used: HashMap<String, (f64, u64)> = shared
        .usage
        .current(now_ms())
        .into_iter()
        .map(|(id, u)| (id, (u.cpu_percent / 100.0, u.memory_bytes >> 20)))
        .collect();
    // Grouped once: a node list is one pass over the instances, not one per node.
    let mut live: HashMap<&str, Vec<&Instance>> = HashMap::new();
    for inst in instances.iter().filter(|i| i.state.is_live()) {
        live.entry(inst.node.as_str()).or_default().push(inst);
    }
    Ok(nodes
        .into_iter()
        .map(|n| {
            let mine = live.get(n.id.as_str()).map(Vec::as_slice).unwrap_or_default();
            views::node_view(shared.with_heartbeat(n), mine.iter().copied(), &|app| specs.get(app).copied(), &used)
        })
        .collect())
}

/// A node named by id, or by hostname when that names one node.
pub(super) fn find_node(shared: &Shared, name: &str) -> Result<berth_store::state::Versioned<Node>, ApiError> {
    if let Some(node) = shared.state.node(name)? {
        return Ok(node);
    }
    let mut by_host: Vec<_> = shared.state.nodes()?.into_iter().filter(|n| n.value.hostname == name).collect();
    match by_host.len() {
        1 => Ok(by_host.remove(0)),
        0 => Err(ApiError::not_found(&format!("node {name}"))),
        n => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{n} nodes have hostname {name}: name one by id (berth node ls)"),
        )),
    }
}

pub(super) fn detail(shared: &Shared, node: Node) -> Result<NodeDetail, ApiError> {
    let id = node.id.clone();
    let Some(view) = node_views(shared, vec![node])?.pop() else {
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "node view missing"));
    };
    let live = shared
        .instances()?
        .iter()
        .filter(|i| i.node == id && i.state.is_live())
        .map(|i| InstanceView::new(i.clone(), view.node.status == NodeStatus::Disconnected))
        .collect();
    Ok(NodeDetail { view, live })
}

pub(super) async fn node_detail(
    AxState(shared): AxState<Shared>,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    let index = wait_for(&shared, &q).await?;
    let node = find_node(&shared, &name)?.value;
    Ok(indexed(index, &detail(&shared, node)?))
}

/// Starts a drain: the node takes no new instance, and the reconciler moves its instances off
/// through the deployment gates. Draining a draining node changes only its deadline.
pub(super) async fn drain(
    AxState(shared): AxState<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: DrainRequest = if body.is_empty() { DrainRequest::default() } else { parse_json(&body)? };
    change_node(&shared, &name, "node.draining", |node, now| {
        if node.status == NodeStatus::Disconnected {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("node {} is disconnected: its instances are already being replaced", node.hostname),
            ));
        }
        let deadline_at = req.deadline.map(|d| now + d.as_millis() as i64);
        let live = shared.instances()?.iter().filter(|i| i.node == node.id && i.state.is_live()).count();
        let msg = match node.drain.as_mut().filter(|d| d.is_running()) {
            Some(running) => {
                running.deadline_at = deadline_at;
                format!("drain deadline now {}", req.deadline.map_or("none".into(), |d| d.to_string()))
            }
            None => {
                node.drain = Some(Drain::started(now, deadline_at, live));
                let deadline = req.deadline.map_or(String::new(), |d| format!(", deadline {d}"));
                format!("draining: {live} instance(s) to move{deadline}")
            }
        };
        node.eligibility = Eligibility::Ineligible;
        Ok(Some(msg))
    })
}

/// Marks a node eligible for new instances (cancelling a running drain) or ineligible.
pub(super) async fn eligibility(
    AxState(shared): AxState<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: EligibilityRequest = parse_json(&body)?;
    change_node(&shared, &name, "node.eligibility", |node, now| {
        let eligibility = if req.eligible { Eligibility::Eligible } else { Eligibility::Ineligible };
        let cancel = req.eligible && node.is_draining();
        let release = req.eligible && node.is_quarantined();
        if node.eligibility == eligibility && !cancel && !release {
            return Ok(None);
        }
        node.eligibility = eligibility;
        let mut msg = format!("{eligibility}");
        if let Some(q) = node.quarantine.as_mut().filter(|_| release) {
            // Failures from before now are forgiven: only new ones can put it aside again.
            q.released_at = Some(now);
            msg.push_str("; quarantine lifted");
        }
        if let Some(drain) = node.drain.as_mut().filter(|_| cancel) {
            drain.state = DrainState::Cancelled;
            drain.ended_at = Some(now);
            msg.push_str("; drain cancelled");
        }
        Ok(Some(msg))
    })
}

/// An operator's change to a node's record: `change` edits a copy and says what it did (nothing:
/// no write), committed guarded by the revision read, with a `kind` event; answers with the node.
fn change_node(
    shared: &Shared,
    name: &str,
    kind: &str,
    change: impl Fn(&mut Node, berth_core::Millis) -> ApiResult<Option<String>>,
) -> ApiResult<Response> {
    let (index, node) = cas::retry(&shared.state, &format!("node {name}"), || {
        let current = find_node(shared, name)?;
        let mut node = current.value.clone();
        let now = now_ms();
        let Some(msg) = change(&mut node, now)? else { return Ok(Attempt::Done(node)) };
        let key = node_key(&node.id);
        let txn = Txn::default().expect(key.clone(), current.mod_revision).put(key, encode(&node));
        let txn = shared.state.with_event(txn, now, Level::Info, kind, Subject::node(&node.id), msg);
        Ok(Attempt::Write(txn, node))
    })?;
    Ok(indexed(index, &detail(shared, node)?))
}

/// `?force=true` on `DELETE /v1/nodes/{node}`.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

/// `DELETE /v1/nodes/{node}` (`berth node rm`): the node's record goes, and so do the records of
/// its live instances (replaced elsewhere); its credential is revoked, so its agent is refused
/// from then on and exits. A node still connected with live instances is refused unless
/// `force` (drain it first): its agent would leave them running, out of Berth's sight.
pub(super) async fn remove(
    AxState(shared): AxState<Shared>,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<Response> {
    let (index, node) = cas::retry(&shared.state, &format!("node {name}"), || {
        let current = find_node(&shared, &name)?;
        let node = current.value.clone();
        let instances = shared.instances()?;
        let live: Vec<&berth_store::state::Versioned<Instance>> =
            instances.versioned().filter(|i| i.value.node == node.id && i.value.state.is_live()).collect();
        if node.status == NodeStatus::Ready && !live.is_empty() && !q.force {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "node {} is connected with {} live instance(s): drain it first (berth node drain {}), or force",
                    node.hostname,
                    live.len(),
                    node.hostname
                ),
            ));
        }
        let now = now_ms();
        let mut txn = Txn::default()
            .expect(node_key(&node.id), current.mod_revision)
            .delete(node_key(&node.id))
            .delete(credentials::credential_key(&node.id))
            .put(credentials::revoked_key(&node.id), encode(&credentials::Revoked { at: now }));
        for inst in &live {
            let key = instance_key(&inst.value.id);
            txn = txn.expect(key.clone(), inst.mod_revision).delete(key);
        }
        let msg = format!(
            "{} removed and its credential revoked; {} live instance record(s) dropped",
            node.hostname,
            live.len()
        );
        let txn = shared.state.with_event(txn, now, Level::Warn, "node.removed", Subject::node(&node.id), msg);
        Ok(Attempt::Write(txn, node))
    })?;
    lock(&shared.heartbeats).remove(&node.id);
    Ok(indexed(index, &node))
}

pub(super) async fn register(
    AxState(shared): AxState<Shared>,
    Extension(caller): Extension<credentials::Caller>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: RegisterRequest = parse_json(&body)?;
    if req.id.is_empty() || req.id.contains('/') {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "id: must be non-empty and contain no /"));
    }
    if req.id != caller.id {
        let why = format!("the credential of node {} cannot register node {}", caller.id, req.id);
        return Err(ApiError::new(StatusCode::FORBIDDEN, why));
    }
    if let Err(why) = berth_core::spec::check_label(&req.pool) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("pool: {why}")));
    }
    if req.resources.ports.0 > req.resources.ports.1 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "resources.ports: the range is empty"));
    }
    let now = now_ms();
    let (index, node) = cas::retry(&shared.state, "node record", || {
        let existing = shared.state.node(&req.id)?;
        let rev = existing.as_ref().map_or(0, |v| v.mod_revision);
        let node = Node {
            id: req.id.clone(),
            hostname: req.hostname.clone(),
            address: req.address.clone(),
            resources: req.resources.clone(),
            labels: req.labels.clone(),
            pool: req.pool.clone(),
            drivers: req.drivers.clone(),
            status: NodeStatus::Ready,
            registered_at: existing.as_ref().map_or(now, |v| v.value.registered_at),
            last_heartbeat: now,
            // The agent's next heartbeat says which are still held.
            taken_ports: existing.as_ref().map(|v| v.value.taken_ports.clone()).unwrap_or_default(),
            // An operator's choices outlive the agent's restarts.
            eligibility: existing.as_ref().map(|v| v.value.eligibility).unwrap_or_default(),
            drain: existing.as_ref().and_then(|v| v.value.drain.clone()),
            disconnected_at: existing.as_ref().and_then(|v| v.value.disconnected_at),
            quarantine: existing.as_ref().and_then(|v| v.value.quarantine.clone()),
            // The agent's next heartbeat says which engines answer.
            drivers_down: existing.as_ref().map(|v| v.value.drivers_down.clone()).unwrap_or_default(),
        };
        let kind = if existing.is_some() { "node.rejoined" } else { "node.registered" };
        let drivers: Vec<String> = node.drivers.iter().map(|d| d.to_string()).collect();
        let msg = format!(
            "{} at {} ({} cpu, {} MiB, drivers {}, pool {})",
            node.hostname,
            node.address,
            node.resources.cpu,
            node.resources.memory,
            drivers.join(","),
            node.pool
        );
        let txn = Txn::default().expect(node_key(&node.id), rev).put(node_key(&node.id), encode(&node));
        let txn = shared.state.with_event(txn, now, Level::Info, kind, Subject::node(&node.id), msg);
        Ok(Attempt::Write(txn, node))
    })?;
    lock(&shared.heartbeats).insert(node.id.clone(), now);
    Ok(indexed(index, &node))
}

pub(super) async fn heartbeat(
    AxState(shared): AxState<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let beat: HeartbeatRequest = if body.is_empty() { HeartbeatRequest::default() } else { parse_json(&body)? };
    let nodes = lock(&shared.heartbeats).len();
    let schedule = berth_plan::heartbeat::schedule(nodes, shared.tuning.node_timeout.as_millis() as i64);
    let reply = HeartbeatReply {
        ok: true,
        interval_ms: schedule.interval_ms.unsigned_abs(),
        timeout_ms: schedule.timeout_ms.unsigned_abs(),
        metrics_every_ms: berth_plan::heartbeat::metrics_spacing_ms(nodes).unsigned_abs(),
    };
    // Most beats change nothing: when the store has not moved since this node's last beat was
    // checked against its record, and the beat says the same, the answer is the same.
    let taken = beat.taken_ports.as_ref().map(|t| t.iter().copied().collect::<BTreeSet<u16>>());
    let down = beat.drivers_down.as_ref().map(|d| d.iter().copied().collect::<BTreeSet<DriverKind>>());
    let said =
        (taken.as_ref().map(|t| t.iter().copied().collect()), down.as_ref().map(|d| d.iter().copied().collect()));
    let revision = shared.state.store().revision();
    if lock(&shared.seen).at(revision).is_some_and(|seen| seen.beats.get(&id) == Some(&said)) {
        lock(&shared.heartbeats).insert(id, now_ms());
        return Ok(indexed(revision, &reply));
    }
    let (index, wrote) = cas::retry(&shared.state, &format!("node {id}"), || {
        let node = shared.state.node(&id)?.ok_or_else(|| ApiError::not_found(&format!("node {id}")))?;
        let now = now_ms();
        lock(&shared.heartbeats).insert(id.clone(), now);
        let mut next = node.value.clone();
        let mut txn = Txn::default();
        if next.status == NodeStatus::Disconnected {
            // Back from a cut: the reconciler keeps one set of its instances and their replacements.
            next.status = NodeStatus::Ready;
            let away = (now - node.value.disconnected_at.unwrap_or(node.value.last_heartbeat)) / 1000;
            let msg = format!("heartbeating again, {away}s after it was marked disconnected");
            txn = shared.state.with_event(txn, now, Level::Info, "node.reconnected", Subject::node(&id), msg);
        }
        if let Some(taken) = taken.clone().filter(|t| *t != next.taken_ports) {
            // Only what changed is written: most heartbeats touch nothing in the store.
            let freed: Vec<String> = next.taken_ports.difference(&taken).map(u16::to_string).collect();
            next.taken_ports = taken;
            if !freed.is_empty() {
                let msg =
                    format!("port(s) {} no longer held by another process: free for instances again", freed.join(", "));
                txn = shared.state.with_event(txn, now, Level::Info, "node.ports_freed", Subject::node(&id), msg);
            }
        }
        if let Some(down) = down.clone().filter(|d| *d != next.drivers_down) {
            let (lost, back): (Vec<_>, Vec<_>) = (
                down.difference(&next.drivers_down).map(ToString::to_string).collect(),
                next.drivers_down.difference(&down).map(ToString::to_string).collect(),
            );
            if !lost.is_empty() {
                let msg = format!("{} engine not answering: no new instance goes to it here", lost.join(", "));
                txn = shared.state.with_event(txn, now, Level::Error, "node.driver_down", Subject::node(&id), msg);
            }
            if !back.is_empty() {
                let msg = format!("{} engine answering again", back.join(", "));
                txn = shared.state.with_event(txn, now, Level::Info, "node.driver_back", Subject::node(&id), msg);
            }
            next.drivers_down = down;
        }
        if next == node.value {
            return Ok(Attempt::Done(false));
        }
        if next.status != node.value.status {
            // The record's heartbeat says when it came back; in between, the in-memory ones do.
            next.last_heartbeat = now;
        }
        let txn = txn.expect(node_key(&id), node.mod_revision).put(node_key(&id), encode(&next));
        Ok(Attempt::Write(txn, true))
    })?;
    // The record agrees with this beat as of the revision read before it (nothing written), or
    // as of its own commit: a later write anywhere clears this.
    if let Some(seen) = lock(&shared.seen).at(if wrote { index } else { revision }) {
        seen.beats.insert(id, said);
    }
    Ok(indexed(index, &reply))
}

pub(super) async fn assignments(
    AxState(shared): AxState<Shared>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    // A write elsewhere wakes this watch only to look at when this node last changed: with 1,000
    // nodes, reading every instance for each of them at each write was most of an idle
    // server's work.
    let index = wait_until(&shared, &q, |index| Ok(shared.state.node_changed_at(&id)? > index)).await?;
    shared.state.node(&id)?.ok_or_else(|| ApiError::not_found(&format!("node {id}")))?;
    let mut specs: HashMap<(String, u64), AppSpec> = HashMap::new();
    let mut out = Vec::new();
    for record in shared.state.instances_on(&id)? {
        let inst = &record.value;
        if !inst.state.is_live() {
            continue;
        }
        let key = (inst.app.clone(), inst.version);
        if !specs.contains_key(&key) {
            let Some(spec) = shared.state.spec_of(inst)? else { continue };
            specs.insert(key.clone(), spec);
        }
        out.push(Assignment { spec: specs[&key].clone(), instance: inst.clone() });
    }
    Ok(indexed(index, &Assignments { index, assignments: out }))
}

fn failure_text(inst: &Instance) -> String {
    // The agent's own words when it gave some; an OOM kill says so whatever else was said.
    let exit =
        berth_core::Exit { exit_code: inst.observed.exit_code, oom_killed: inst.observed.oom_killed, detail: None };
    match &inst.observed.reason {
        Some(reason) if !inst.observed.oom_killed => reason.clone(),
        _ => exit.to_string(),
    }
}

pub(super) async fn reports(
    AxState(shared): AxState<Shared>,
    Path(node): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: ReportRequest = parse_json(&body)?;
    let (index, restarted) = cas::retry(&shared.state, &format!("the records of node {node}"), || {
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
            inst.observed.take_news(&report.observed, inst.state.is_live());
            if inst.state.is_terminal() && inst.observed.finished_at.is_none() {
                inst.observed.finished_at = Some(now);
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
                    InstanceState::Failed if inst.observed.oom_killed => {
                        (Level::Error, "instance.oom_killed", failure_text(&inst))
                    }
                    InstanceState::Failed => (Level::Error, "instance.failed", failure_text(&inst)),
                    InstanceState::Running => {
                        (Level::Info, "instance.running", format!("running at {}", inst.address().unwrap_or_default()))
                    }
                    InstanceState::Starting => {
                        (Level::Info, "instance.starting", "started; waiting for health".to_string())
                    }
                    InstanceState::Stopped => (
                        Level::Info,
                        "instance.stopped",
                        inst.observed.reason.clone().unwrap_or_else(|| "stopped".into()),
                    ),
                    InstanceState::Succeeded => (Level::Info, "instance.succeeded", "exited with code 0".to_string()),
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
                    if let Some((app, _)) = backoffs.get_mut(&inst.app) {
                        let effects = deploy::count_failure(app, inst.version, &failure_text(&inst), now);
                        txn = deployments::write(&shared.state, txn, &inst.app, effects, now)?;
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
            return Ok(Attempt::Done(Vec::new()));
        }
        Ok(Attempt::Write(txn, restarted))
    })?;
    for app in &restarted {
        shared.usage.count_restart(app);
    }
    lock(&shared.heartbeats).insert(node, now_ms());
    Ok(indexed(index, &serde_json::json!({"ok": true})))
}
