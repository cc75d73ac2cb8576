//! What a deploy of a spec would do, without doing it (`berth plan`, `deploy --dry-run`): the
//! spec's changes field by field, whether it resets a count set by `scale`, the deployment's
//! steps, and whether every instance can be placed now.

use berth_core::spec::Strategy;
use berth_core::{Allocation, App, AppSpec, DeploymentKind, Instance, Node, NodeStatus, Pools};
use serde::Serialize;
use serde_json::Value;

use berth_core::reason::Unplaceable;

use crate::place::{self, Usage};
use crate::rolling;

/// One field that changes, by its dotted path (`health.interval`, `environment.TZ`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: String,
    /// Absent when the field is new.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    /// Absent when the field goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preview {
    pub app: String,
    /// The app's version now, when it exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// A new version would be made (the spec differs beyond its instance count).
    pub new_version: bool,
    /// Spec fields that change (the instance count is in `instances`).
    pub changes: Vec<FieldChange>,
    /// Instances now and after.
    pub instances: (u32, u32),
    /// The count now was set by `scale`, and this spec sets another: deploying undoes it.
    pub resets_scale: bool,
    /// What the deployment would do, in order, for people.
    pub steps: Vec<String>,
    /// Instances of the new spec that fit on the ready nodes now, beside everything else.
    pub placeable: u32,
    /// Why the rest do not fit, node by node, for people.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unplaceable: Vec<String>,
    /// The same as data: each node's rejection with its kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_unplaceable: Option<Unplaceable>,
    /// A new version's first step, taken while the old instances still hold their resources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_step: Option<FirstStep>,
}

/// The peak of a deployment: new instances starting beside the old ones they replace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FirstStep {
    /// New instances the step starts.
    pub start: u32,
    /// Old instances it stops at the same time (a rolling update above its health floor); they
    /// hold their resources until drained.
    pub stop: u32,
    /// Of `start`, how many fit beside every instance running now.
    pub placeable: u32,
    /// Nothing new fits and nothing old may stop first: the deployment would wait for room.
    pub stalls: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unplaceable: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_unplaceable: Option<Unplaceable>,
}

impl Preview {
    /// Anything to do at all.
    pub fn changes_anything(&self) -> bool {
        self.new_version || self.instances.0 != self.instances.1
    }
}

/// The preview of deploying `spec` over `current` (none: a new app), given the nodes, every
/// instance now, and the spec each app's instances run.
pub fn preview<'a, I>(
    current: Option<&App>,
    spec: &AppSpec,
    nodes: &[Node],
    instances: I,
    spec_of: impl Fn(&str) -> Option<&'a AppSpec>,
    pools: &Pools,
) -> Preview
where
    I: IntoIterator<Item = &'a Instance>,
    I::IntoIter: Clone,
{
    let instances = instances.into_iter();
    let id = spec.id();
    let changes = match current {
        Some(app) => diff(&app.spec, spec),
        None => Vec::new(),
    };
    let now = current.map_or(0, |a| a.instances);
    let new_version = current.is_none() || !changes.is_empty();
    let resets_scale = current.is_some_and(|a| {
        a.instances != spec.instances && a.deployment.as_ref().is_some_and(|d| d.kind == DeploymentKind::Scale)
    });
    let steps = steps(current.is_some(), new_version, now, spec);

    let ready: Vec<&Node> = nodes.iter().filter(|n| n.status == NodeStatus::Ready).collect();
    // In the end the new version's instances replace this app's: count everything else as it is.
    let others = place::usage(instances.clone().filter(|i| i.app != id), &spec_of);
    let (placeable, why_unplaceable) = fit(&id, spec, &ready, others, spec.instances, pools);
    let first_step = first_step(current.filter(|_| new_version), spec).map(|(start, stop)| {
        // At the peak, every instance now (this app's old ones too) still holds what it has.
        let all = place::usage(instances, &spec_of);
        let (placeable, why_unplaceable) = fit(&id, spec, &ready, all, start, pools);
        let stalls = match spec.upgrade.strategy {
            // Blue-green stops nothing old before every new instance is healthy.
            Strategy::BlueGreen => placeable < start,
            Strategy::Rolling => placeable == 0 && stop == 0 && start > 0,
        };
        let unplaceable = why_unplaceable.as_ref().map(Unplaceable::lines).unwrap_or_default();
        FirstStep { start, stop, placeable, stalls, unplaceable, why_unplaceable }
    });
    Preview {
        app: id,
        version: current.map(|a| a.version),
        new_version,
        changes,
        instances: (now, spec.instances),
        resets_scale,
        steps,
        placeable,
        unplaceable: why_unplaceable.as_ref().map(Unplaceable::lines).unwrap_or_default(),
        why_unplaceable,
        first_step,
    }
}

/// How many of `count` instances of `spec` fit on `ready` beside `usage`, and why no more do.
fn fit(
    id: &str,
    spec: &AppSpec,
    ready: &[&Node],
    mut usage: Usage,
    count: u32,
    pools: &Pools,
) -> (u32, Option<Unplaceable>) {
    let mut placed = 0;
    let mut placer = place::Placer::new(id, spec, ready, &usage, pools);
    for _ in 0..count {
        match placer.place(&usage) {
            Ok(p) => {
                usage.entry(p.node.clone()).or_default().add(id, Allocation::of(spec), &p.host_ports);
                placed += 1;
            }
            Err(why) => return (placed, Some(why)),
        }
    }
    (placed, None)
}

/// The new instances a new version's first step starts and the old ones it stops, as the
/// planner decides them (`rolling::step` with every old instance ready).
fn first_step(current: Option<&App>, spec: &AppSpec) -> Option<(u32, u32)> {
    let now = current?.instances as usize;
    if now == 0 {
        return None;
    }
    let target = spec.instances as usize;
    let up = &spec.upgrade;
    let (start, stop) = match up.strategy {
        Strategy::BlueGreen => (target, 0),
        Strategy::Rolling => {
            let counts = rolling::Counts { target, new_live: 0, old_live: now, ready: now, old_ready: now };
            let step = rolling::step(counts, up.min_health_capacity, up.max_over_capacity);
            (step.start_new, step.stop_ready_old)
        }
    };
    Some((start as u32, stop as u32))
}

fn steps(exists: bool, new_version: bool, now: u32, spec: &AppSpec) -> Vec<String> {
    let n = spec.instances;
    let up = &spec.upgrade;
    let healthy = format!("healthy for {}", up.min_healthy_time);
    if !exists {
        return vec![format!("start {n} instance(s); each takes traffic once {healthy}")];
    }
    if !new_version {
        return match n.cmp(&now) {
            std::cmp::Ordering::Greater => vec![format!("start {} instance(s), each {healthy}", n - now)],
            std::cmp::Ordering::Less => vec![format!("stop {} instance(s), draining each first", now - n)],
            std::cmp::Ordering::Equal => vec!["nothing".into()],
        };
    }
    match up.strategy {
        Strategy::BlueGreen => vec![
            format!("start {n} new instance(s) beside the {now} old ones"),
            format!("once all are {healthy}, move all traffic to them at once"),
            format!("stop the {now} old instance(s), draining each first"),
        ],
        Strategy::Rolling => {
            let surge = ((f64::from(n) * up.max_over_capacity).floor() as u32).max(1);
            let keep = (f64::from(n) * up.min_health_capacity).ceil() as u32;
            let mut out = vec![format!(
                "replace {now} instance(s) with {n}: up to {surge} new at a time, keeping at least {keep} healthy"
            )];
            out.push(format!("a new instance takes traffic once {healthy}; old ones drain before they stop"));
            if up.auto_rollback {
                out.push(format!(
                    "a new instance not healthy within {} fails the deployment, which then rolls back",
                    up.healthy_deadline
                ));
            }
            out
        }
    }
}

/// Fields that differ between two specs, by dotted path, the instance count aside.
pub fn diff(old: &AppSpec, new: &AppSpec) -> Vec<FieldChange> {
    let (a, b) = (serde_json::to_value(old).unwrap_or_default(), serde_json::to_value(new).unwrap_or_default());
    let mut out = Vec::new();
    walk("", Some(&a), Some(&b), &mut out);
    out.retain(|c| c.field != "instances");
    out
}

fn walk(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<FieldChange>) {
    // An absent map (an empty one is not written) is an empty map: name the keys inside it.
    let empty = Value::Object(serde_json::Map::new());
    let (a, b) = match (a, b) {
        (None, Some(Value::Object(_))) => (Some(&empty), b),
        (Some(Value::Object(_)), None) => (a, Some(&empty)),
        other => other,
    };
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let sub = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                walk(&sub, x.get(k), y.get(k), out);
            }
        }
        (x, y) if x != y => {
            // An unset optional field and a null one are the same.
            let (x, y) = (x.filter(|v| !v.is_null()), y.filter(|v| !v.is_null()));
            if x != y {
                out.push(FieldChange { field: path.to_string(), from: x.cloned(), to: y.cloned() });
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::{Backoff, Deployment, DeploymentState, Resources};
    use std::collections::BTreeMap;

    fn spec(extra: &str) -> AppSpec {
        AppSpec::from_yaml(&format!("group: g\nname: web\nimage: i:1\nports: [80]\nmemory: 512\n{extra}"), None)
            .unwrap()
    }

    fn app(spec: AppSpec, instances: u32, last: DeploymentKind) -> App {
        App {
            spec,
            version: 4,
            instances,
            created_at: 0,
            updated_at: 0,
            destroying: false,
            backoff: Backoff::default(),
            alike: Vec::new(),
            stable_version: None,
            deployment: Some(Deployment {
                kind: last,
                state: DeploymentState::Succeeded,
                ..Deployment::start(last, None, 4, 0)
            }),
        }
    }

    fn node(memory: u64) -> Node {
        Node {
            id: "n1".into(),
            hostname: "h1".into(),
            address: "127.0.0.1".into(),
            resources: Resources { cpu: 8.0, memory, ports: (30000, 30099) },
            labels: BTreeMap::new(),
            drivers: vec![berth_core::spec::DriverKind::Docker],
            status: NodeStatus::Ready,
            registered_at: 0,
            last_heartbeat: 0,
            taken_ports: Default::default(),
            pool: berth_core::SHARED_POOL.into(),
            eligibility: Default::default(),
            drain: None,
            disconnected_at: None,
            quarantine: None,
            drivers_down: Default::default(),
        }
    }

    #[test]
    fn fields_that_change_are_named_by_path() {
        let old = spec("environment:\n  A: '1'\nhealth:\n  http: /\n");
        let new = spec("environment:\n  A: '2'\n  B: x\nhealth:\n  http: /health\n");
        let fields: Vec<String> = diff(&old, &new).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["environment.A", "environment.B", "health.http"]);
        assert!(diff(&old, &old).is_empty());
    }

    #[test]
    fn a_deploy_that_undoes_a_scale_is_flagged() {
        let current = app(spec("instances: 2\n"), 3, DeploymentKind::Scale);
        let p = preview(Some(&current), &spec("instances: 2\n"), &[node(4096)], &[], |_| None, &Pools::default());
        assert!(p.resets_scale && !p.new_version && p.changes_anything(), "{p:?}");
        assert_eq!(p.instances, (3, 2));
        assert_eq!(p.steps, ["stop 1 instance(s), draining each first"]);
        let after_update = app(spec("instances: 2\n"), 3, DeploymentKind::Update);
        assert!(
            !preview(Some(&after_update), &spec("instances: 2\n"), &[node(4096)], &[], |_| None, &Pools::default())
                .resets_scale
        );
    }

    fn running(app: &str, n: usize) -> Vec<Instance> {
        (0..n)
            .map(|i| {
                serde_json::from_value(serde_json::json!({
                    "id": format!("{app}-{i}"), "app": app, "version": 4, "node": "n1", "driver": "docker",
                    "state": "running", "desired": "run", "host_ports": [30000 + i], "host": "127.0.0.1",
                    "created_at": 0
                }))
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn a_first_step_with_no_room_beside_the_old_instances_is_told() {
        // Three old 512 MiB instances on a 1600 MiB node: the new version fits once they are gone,
        // but a rolling update that keeps all three healthy needs a fourth beside them first.
        let current = app(spec("instances: 3\n"), 3, DeploymentKind::Update);
        let old = running("g/web", 3);
        let strict =
            spec("instances: 3\ncommand: [serve]\nupgrade:\n  min_health_capacity: 1.0\n  max_over_capacity: 0\n");
        let p = preview(Some(&current), &strict, &[node(1600)], &old, |_| Some(&current.spec), &Pools::default());
        assert_eq!(p.placeable, 3, "in the end all fit");
        let first = p.first_step.expect("a new version has a first step");
        assert_eq!((first.start, first.stop, first.placeable, first.stalls), (1, 0, 0, true), "{first:?}");
        assert!(first.unplaceable[0].contains("memory"), "{first:?}");

        // Allowed to go down to two healthy, it stops one old instance and makes room.
        let loose =
            spec("instances: 3\ncommand: [serve]\nupgrade:\n  min_health_capacity: 0.5\n  max_over_capacity: 0\n");
        let first = preview(Some(&current), &loose, &[node(1600)], &old, |_| Some(&current.spec), &Pools::default())
            .first_step
            .unwrap();
        assert!(first.stop > 0 && !first.stalls, "{first:?}");

        // Blue-green needs every new instance beside every old one.
        let bg = spec("instances: 3\ncommand: [serve]\nupgrade:\n  strategy: blue-green\n");
        let first = preview(Some(&current), &bg, &[node(3100)], &old, |_| Some(&current.spec), &Pools::default())
            .first_step
            .unwrap();
        assert_eq!((first.start, first.placeable, first.stalls), (3, 3, false), "{first:?}");
        let first = preview(Some(&current), &bg, &[node(2600)], &old, |_| Some(&current.spec), &Pools::default())
            .first_step
            .unwrap();
        assert_eq!((first.placeable, first.stalls), (2, true), "{first:?}");

        // A scale makes no new version, so there is no replacement step.
        assert!(
            preview(Some(&current), &spec("instances: 4\n"), &[node(4096)], &old, |_| None, &Pools::default())
                .first_step
                .is_none()
        );
    }

    #[test]
    fn no_change_and_placement_are_told() {
        let current = app(spec("instances: 2\n"), 2, DeploymentKind::Update);
        let same = preview(Some(&current), &spec("instances: 2\n"), &[node(4096)], &[], |_| None, &Pools::default());
        assert!(!same.changes_anything());
        // 3 x 512 MiB on a 1200 MiB node: two fit.
        let p = preview(None, &spec("instances: 3\n"), &[node(1200)], &[], |_| None, &Pools::default());
        assert_eq!(p.placeable, 2);
        assert!(p.unplaceable[0].contains("memory"), "{:?}", p.unplaceable);
        assert!(p.steps[0].starts_with("start 3 instance(s)"));
    }
}
