//! Reconcile: compare desired apps with actual instances and nodes, and plan the moves.

use std::collections::HashMap;

use std::collections::HashSet;

use berth_core::{
    Allocation, App, DeploymentState, Desired, DrainState, Instance, InstanceState, Millis, Node, NodeStatus, Pools,
    Reason,
};

use berth_core::reason::Waiting;

use crate::deploy::{self, Verdict};
use crate::place::{self, Placement};
use crate::rolling::{self, Counts};

/// What the planner reads.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub apps: Vec<App>,
    pub instances: Vec<Instance>,
    pub nodes: Vec<Node>,
    pub pools: Pools,
    pub jobs: Vec<berth_core::Job>,
    /// Every job's runs kept: active ones and history.
    pub runs: Vec<berth_core::Run>,
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// A node that has not heartbeat for this long is lost.
    pub node_timeout_ms: i64,
    /// Heartbeats are not expected before this (the server just started).
    pub heartbeat_grace_until: Millis,
    /// Terminal instances kept per app for status and history.
    pub keep_terminal: usize,
    /// An instance ready for this long resets its app's launch backoff.
    pub backoff_reset_ms: i64,
    /// New instances placed in one pass at most; the next pass, at once, places more. One
    /// transaction of 10,000 new records would hold them all in memory at once, and agents start
    /// the first ones while later ones are still being placed.
    pub max_placements: usize,
    /// When a node is put aside for failing apps that run healthy elsewhere.
    pub quarantine: crate::quarantine::Rules,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node_timeout_ms: 5_000,
            heartbeat_grace_until: 0,
            keep_terminal: 10,
            backoff_reset_ms: 30_000,
            max_placements: 1_000,
            quarantine: crate::quarantine::Rules::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create a new instance of `app` at `version` there.
    Place {
        app: String,
        version: u64,
        placement: Placement,
    },
    /// Ask the node to stop a live instance.
    Stop {
        instance: String,
        reason: Reason,
    },
    /// Stop an instance that never turned healthy in time; it counts as a failure of its app.
    Expire {
        instance: String,
        reason: Reason,
    },
    /// The instance stayed healthy for `min_healthy_time`: it takes traffic from now on.
    Admit {
        instance: String,
    },
    /// The deployment ends (succeeded or failed, with no rollback).
    EndDeployment {
        app: String,
        state: DeploymentState,
        message: String,
    },
    /// The deployment failed: make `to_version`'s spec current again as a new version.
    AutoRollback {
        app: String,
        to_version: u64,
        reason: String,
    },
    /// Blue-green: move all traffic to the new set at once.
    Switch {
        app: String,
    },
    /// A node silent past the timeout is marked disconnected (dead or cut off: nothing tells).
    NodeDisconnected {
        node: String,
    },
    /// A node where apps that run healthy elsewhere keep failing is put aside: made ineligible
    /// and drained, through the gates.
    Quarantine {
        node: String,
        why: String,
    },
    /// A node's drain ends: nothing is left on it, or its deadline came (what was left is
    /// stopped by the same plan).
    EndDrain {
        node: String,
        state: DrainState,
        /// Live instances still on the node.
        left: usize,
    },
    /// Drop a terminal instance record nobody needs any more.
    Forget {
        instance: String,
    },
    ResetBackoff {
        app: String,
    },
    /// A destroyed app whose instances are all gone.
    RemoveApp {
        app: String,
    },
    /// A job's run, attempt or record (see `jobs`).
    Job(crate::jobs::JobAction),
}

/// An app that wants more instances than could be placed, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub app: String,
    pub missing: usize,
    pub why: Waiting,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub pending: Vec<Pending>,
    /// Reconcile again no later than this, even if nothing changes.
    pub check_at: Option<Millis>,
    /// Instances this plan places.
    placed: usize,
}

impl Plan {
    pub(crate) fn check_by(&mut self, at: Millis) {
        self.check_at = Some(self.check_at.map_or(at, |c| c.min(at)));
    }

    pub(crate) fn placed_count(&self) -> usize {
        self.placed
    }

    pub(crate) fn count_placed(&mut self) {
        self.placed += 1;
    }
}

/// Live instances that the platform still wants.
fn wanted(i: &Instance) -> bool {
    i.state.is_live() && i.desired == Desired::Run
}

pub fn reconcile(snapshot: &Snapshot, now: Millis, settings: Settings) -> Plan {
    let mut plan = Plan::default();

    // Nodes that stopped heartbeating are disconnected: dead or cut off, nothing tells which.
    let mut cut_off_now = Vec::new();
    for node in &snapshot.nodes {
        let last = node.last_heartbeat.max(settings.heartbeat_grace_until);
        if node.status == NodeStatus::Ready {
            if now - last >= settings.node_timeout_ms {
                plan.actions.push(Action::NodeDisconnected { node: node.id.clone() });
                cut_off_now.push(node.id.as_str());
            } else {
                plan.check_by(last + settings.node_timeout_ms);
            }
        }
    }
    for bad in crate::quarantine::bad_nodes(&snapshot.nodes, &snapshot.instances, now, &settings.quarantine) {
        if !cut_off_now.contains(&bad.node.as_str()) {
            let why = bad.why(&settings.quarantine);
            plan.actions.push(Action::Quarantine { node: bad.node, why });
        }
    }
    let specs: HashMap<String, &berth_core::AppSpec> = snapshot.apps.iter().map(|a| (a.id(), &a.spec)).collect();
    // What runs there is out of reach: left as it was (the agent keeps it running), counted as
    // running for its app's `max_disconnect`, then left out so that replacements are placed. If
    // the node comes back, the scale-down below picks one set of the two.
    let cut_off: HashMap<&str, Millis> = snapshot
        .nodes
        .iter()
        .filter_map(|n| match n.status {
            NodeStatus::Disconnected => Some((n.id.as_str(), n.disconnected_at.unwrap_or(n.last_heartbeat))),
            NodeStatus::Ready if cut_off_now.contains(&n.id.as_str()) => Some((n.id.as_str(), now)),
            NodeStatus::Ready => None,
        })
        .collect();
    let mut out_of_reach: HashSet<&str> = HashSet::new();
    for inst in snapshot.instances.iter().filter(|i| i.state.is_live()) {
        let Some(since) = cut_off.get(inst.node.as_str()) else { continue };
        let wait = specs.get(&inst.app).map_or(0, |s| s.max_disconnect.as_millis() as i64);
        if now >= since + wait {
            out_of_reach.insert(inst.id.as_str());
        } else {
            plan.check_by(since + wait);
        }
    }
    let alive = |i: &&Instance| !out_of_reach.contains(i.id.as_str());
    let draining = drains(snapshot, &cut_off_now, |i| alive(&i), now, &mut plan);

    let mut usage = place::usage(snapshot.instances.iter().filter(alive), |app| specs.get(app).copied());
    let ready_nodes: Vec<&Node> = snapshot
        .nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Ready && !cut_off_now.contains(&n.id.as_str()))
        .collect();
    // Instances that lived through their node's cut: the first to go when the app has one set
    // too many (they came back beside their replacements).
    let survivors: HashSet<&str> = {
        let back: HashMap<&str, &Node> = ready_nodes.iter().map(|n| (n.id.as_str(), *n)).collect();
        snapshot
            .instances
            .iter()
            .filter(|i| i.state.is_live() && back.get(i.node.as_str()).is_some_and(|n| n.was_cut_off_under(i)))
            .map(|i| i.id.as_str())
            .collect()
    };

    let mut by_app: HashMap<&str, Vec<&Instance>> = HashMap::new();
    // Jobs' attempts run to an end: the jobs' planner follows them, whatever their node.
    let attempts: Vec<&Instance> = snapshot.instances.iter().filter(|i| i.run.is_some()).collect();
    for inst in snapshot.instances.iter().filter(alive).filter(|i| i.run.is_none()) {
        by_app.entry(inst.app.as_str()).or_default().push(inst);
    }

    for app in &snapshot.apps {
        let id = app.id();
        let instances = by_app.remove(id.as_str()).unwrap_or_default();
        reconcile_app(
            app,
            &id,
            &instances,
            (&ready_nodes, &snapshot.pools),
            (&draining, &survivors),
            &mut usage,
            now,
            settings,
            &mut plan,
        );
    }
    let by_id: HashMap<&str, &Instance> = attempts.iter().map(|i| (i.id.as_str(), *i)).collect();
    let ctx = crate::jobs::Ctx { nodes: &ready_nodes, pools: &snapshot.pools, cut_off: &cut_off, instances: &by_id };
    crate::jobs::plan(&snapshot.jobs, &snapshot.runs, &ctx, &mut usage, now, settings, &mut plan);
    // Instances whose app is gone.
    for (_, instances) in by_app {
        for inst in instances {
            if wanted(inst) {
                plan.actions.push(Action::Stop { instance: inst.id.clone(), reason: Reason::AppGone });
            } else if inst.state.is_terminal() {
                plan.actions.push(Action::Forget { instance: inst.id.clone() });
            }
        }
    }
    plan
}

/// Ends the drains with nothing left to move, and those past their deadline (stopping what is
/// left); returns the nodes still draining. A node lost in this pass is left to the next, which
/// finds it down with nothing live.
fn drains<'s>(
    snapshot: &'s Snapshot,
    lost: &[&str],
    alive: impl Fn(&Instance) -> bool,
    now: Millis,
    plan: &mut Plan,
) -> HashSet<&'s str> {
    let mut draining = HashSet::new();
    for node in snapshot.nodes.iter().filter(|n| n.is_draining() && !lost.contains(&n.id.as_str())) {
        let left: Vec<&Instance> =
            snapshot.instances.iter().filter(|i| i.node == node.id && i.state.is_live() && alive(i)).collect();
        let deadline = node.drain.as_ref().and_then(|d| d.deadline_at);
        let state = if left.is_empty() {
            DrainState::Complete
        } else if deadline.is_some_and(|at| now >= at) {
            for inst in left.iter().filter(|i| wanted(i)) {
                let reason = Reason::DrainDeadline { node: node.hostname.clone() };
                plan.actions.push(Action::Stop { instance: inst.id.clone(), reason });
            }
            DrainState::DeadlineReached
        } else {
            if let Some(at) = deadline {
                plan.check_by(at);
            }
            draining.insert(node.id.as_str());
            continue;
        };
        plan.actions.push(Action::EndDrain { node: node.id.clone(), state, left: left.len() });
    }
    draining
}

/// Drain: instances on draining nodes leave as an old version's do in a rolling step that keeps
/// all `target` instances ready (at least one replacement starts however tight the room), so a
/// replacement is in service before the instance it replaces is stopped. Returns the stops and how
/// many replacements to start.
fn migrate<'i>(
    target: usize,
    staying: &[&'i Instance],
    moving: &[&'i Instance],
    max_over: f64,
) -> (Vec<(&'i Instance, Reason)>, usize) {
    let drained = |i: &Instance| Reason::NodeDrained { node: i.node.clone() };
    let (ready, unready): (Vec<&Instance>, Vec<&Instance>) = moving.iter().partition(|i| i.is_ready());
    let counts = Counts {
        target,
        new_live: staying.len(),
        old_live: moving.len(),
        ready: ready.len() + staying.iter().filter(|i| i.is_ready()).count(),
        old_ready: ready.len(),
    };
    let step = rolling::step(counts, 1.0, max_over);
    let mut stops: Vec<(&Instance, Reason)> = unready.into_iter().map(|i| (i, drained(i))).collect();
    stops.extend(ready.into_iter().take(step.stop_ready_old).map(|i| (i, drained(i))));
    (stops, step.start_new)
}

#[allow(clippy::too_many_arguments)]
fn reconcile_app(
    app: &App,
    id: &str,
    instances: &[&Instance],
    (nodes, pools): (&[&Node], &Pools),
    (draining, survivors): (&HashSet<&str>, &HashSet<&str>),
    usage: &mut place::Usage,
    now: Millis,
    settings: Settings,
    plan: &mut Plan,
) {
    let live: Vec<&Instance> = instances.iter().copied().filter(|i| wanted(i)).collect();

    if app.destroying {
        for inst in &live {
            plan.actions.push(Action::Stop { instance: inst.id.clone(), reason: Reason::AppDestroyed });
        }
        if instances.iter().all(|i| i.state.is_terminal()) {
            plan.actions.extend(instances.iter().map(|i| Action::Forget { instance: i.id.clone() }));
            plan.actions.push(Action::RemoveApp { app: id.to_string() });
        }
        return;
    }

    forget_old_terminal(instances, settings.keep_terminal, plan);

    // A healthy stretch of an instance launched since the last failure ends the launch backoff;
    // siblings that never failed do not, or a failing slot beside them would relaunch at once.
    if app.backoff.failures > 0 {
        let steady_since = live
            .iter()
            .filter(|i| i.is_ready() && i.created_at > app.backoff.last_failure_at)
            .filter_map(|i| i.observed.started_at)
            .min();
        match steady_since {
            Some(t) if now - t >= settings.backoff_reset_ms => {
                plan.actions.push(Action::ResetBackoff { app: id.to_string() });
            }
            Some(t) => plan.check_by(t + settings.backoff_reset_ms),
            None => {}
        }
    }

    admit_and_expire(app, &live, now, plan);

    let target = app.instances as usize;
    let (new, mut old): (Vec<&Instance>, Vec<&Instance>) = live.iter().partition(|i| app.is_current(i.version));
    let mut stops: Vec<(&Instance, Reason)> = Vec::new();
    let mut start = 0usize;

    // Blue-green keeps the previous set, without traffic, for the rollback window.
    if let Some(d) = &app.deployment
        && d.blue_green
        && let Some(switched) = d.switched_at
        && !old.is_empty()
    {
        let until = switched + app.spec.upgrade.rollback_window.as_millis() as i64;
        if now >= until {
            stops.extend(old.iter().map(|i| (*i, Reason::RollbackWindowOver)));
        } else {
            plan.check_by(until);
        }
        old.clear();
    }
    let active = app.active_deployment();
    let canary = active.and_then(|d| d.canary).map(|n| n as usize);
    let blue_green_pending = active.is_some_and(|d| d.blue_green && d.switched_at.is_none());

    let moving: Vec<&Instance> = new.iter().copied().filter(|i| draining.contains(i.node.as_str())).collect();
    if old.is_empty() && !moving.is_empty() {
        let staying: Vec<&Instance> = new.iter().copied().filter(|i| !draining.contains(i.node.as_str())).collect();
        let (drained, replacements) = migrate(target, &staying, &moving, app.spec.upgrade.max_over_capacity);
        stops.extend(drained);
        start = replacements;
    } else if old.is_empty() {
        if new.len() > target {
            // Scale down: drop the least useful first (not started, then not ready, then those
            // back from a cut node beside their replacements, then those borrowing another
            // pool's room, then newest). So when a cut node is back, its instances stay only if
            // their replacements are not in service yet, and never both sets go.
            let mut extra = new.clone();
            let survived = |i: &Instance| survivors.contains(i.id.as_str());
            extra.sort_by_key(|i| {
                let ready = (i.state == InstanceState::Running, i.is_ready());
                (ready, !survived(i), !i.borrowed, std::cmp::Reverse(i.created_at))
            });
            let back = new.iter().find(|i| survived(i)).map(|i| i.node.clone());
            stops.extend(extra.into_iter().take(new.len() - target).map(|i| {
                let reason = match &back {
                    Some(_) if survived(i) => Reason::ReplacedWhileDisconnected { node: i.node.clone() },
                    Some(node) => Reason::OriginalBack { node: node.clone() },
                    None => Reason::ScaledDown,
                };
                (i, reason)
            }));
        } else {
            start = target - new.len();
        }
    } else if let Some(n) = canary {
        // Canary: the old set stays whole; the new one grows to its share and waits for `promote`.
        start = n.min(target).saturating_sub(new.len());
    } else if blue_green_pending {
        // Blue-green: a whole new set beside the old, which keeps all traffic until the switch.
        start = target.saturating_sub(new.len());
    } else {
        let old_ready = old.iter().filter(|i| i.is_ready()).count();
        let counts = Counts {
            target,
            new_live: new.len(),
            old_live: old.len(),
            ready: old_ready + new.iter().filter(|i| i.is_ready()).count(),
            old_ready,
        };
        let step = rolling::step(counts, app.spec.upgrade.min_health_capacity, app.spec.upgrade.max_over_capacity);
        stops.extend(old.iter().filter(|i| !i.is_ready()).map(|i| (*i, Reason::Replaced)));
        let mut ready_old: Vec<&Instance> = old.iter().copied().filter(|i| i.is_ready()).collect();
        ready_old.sort_by_key(|i| i.version);
        stops.extend(ready_old.into_iter().take(step.stop_ready_old).map(|i| (i, Reason::Replaced)));
        start = step.start_new;
        if new.len() > target {
            stops.extend(new.iter().skip(target).map(|i| (*i, Reason::ScaledDown)));
        }
    }
    let stopping = instances.iter().any(|i| i.state.is_live() && i.desired == Desired::Stop);
    let (verdict, check_at) = deploy::judge(app, &new, &old, stopping, now);
    if let Some(at) = check_at {
        plan.check_by(at);
    }
    let app_id = id.to_string();
    match verdict {
        Some(Verdict::Switch) => plan.actions.push(Action::Switch { app: app_id }),
        Some(Verdict::Succeeded { message }) => {
            plan.actions.push(Action::EndDeployment { app: app_id, state: DeploymentState::Succeeded, message });
        }
        Some(Verdict::Failed { reason, roll_back_to: Some(to_version) }) => {
            plan.actions.push(Action::AutoRollback { app: app_id, to_version, reason });
        }
        Some(Verdict::Failed { reason, roll_back_to: None }) => {
            plan.actions.push(Action::EndDeployment { app: app_id, state: DeploymentState::Failed, message: reason });
        }
        None => {}
    }

    for (inst, reason) in stops {
        plan.actions.push(Action::Stop { instance: inst.id.clone(), reason });
    }
    if start == 0 {
        return;
    }
    if app.backoff.failures > 0 && now < app.backoff.not_before {
        plan.check_by(app.backoff.not_before);
        plan.pending.push(Pending {
            app: id.to_string(),
            missing: start,
            why: Waiting::Backoff { failures: app.backoff.failures, next_in_ms: app.backoff.not_before - now },
        });
        return;
    }
    let mut placer = place::Placer::new(id, &app.spec, nodes, usage, pools);
    for placed in 0..start {
        if plan.placed == settings.max_placements {
            // The rest in the next pass, which comes at once.
            plan.check_by(now);
            break;
        }
        match placer.place(usage) {
            Ok(placement) => {
                usage.entry(placement.node.clone()).or_default().add(
                    id,
                    Allocation::of(&app.spec),
                    &placement.host_ports,
                );
                plan.actions.push(Action::Place { app: id.to_string(), version: app.version, placement });
                plan.placed += 1;
            }
            Err(why) => {
                let why = Waiting::Unplaceable { why };
                plan.pending.push(Pending { app: id.to_string(), missing: start - placed, why });
                break;
            }
        }
    }
}

/// Puts instances in service once healthy for `min_healthy_time`, and gives up on those that
/// stay unhealthy past `healthy_deadline`.
fn admit_and_expire(app: &App, live: &[&Instance], now: Millis, plan: &mut Plan) {
    let upgrade = &app.spec.upgrade;
    for inst in live.iter().filter(|i| !i.in_service) {
        if inst.is_up() {
            let since = inst.healthy_since.or(inst.observed.started_at).unwrap_or(now);
            let at = since + upgrade.min_healthy_time.as_millis() as i64;
            if now >= at {
                plan.actions.push(Action::Admit { instance: inst.id.clone() });
                continue;
            }
            plan.check_by(at);
        }
        let deadline = inst.created_at + upgrade.healthy_deadline.as_millis() as i64;
        if now >= deadline {
            plan.actions.push(Action::Expire {
                instance: inst.id.clone(),
                reason: Reason::NotHealthyInTime { deadline: upgrade.healthy_deadline },
            });
        } else {
            plan.check_by(deadline);
        }
    }
}

fn forget_old_terminal(instances: &[&Instance], keep: usize, plan: &mut Plan) {
    let mut terminal: Vec<&Instance> = instances.iter().copied().filter(|i| i.state.is_terminal()).collect();
    if terminal.len() > keep {
        terminal.sort_by_key(|i| std::cmp::Reverse(i.observed.finished_at.unwrap_or(i.created_at)));
        plan.actions.extend(terminal.into_iter().skip(keep).map(|i| Action::Forget { instance: i.id.clone() }));
    }
}

#[cfg(test)]
pub(crate) mod tests;
