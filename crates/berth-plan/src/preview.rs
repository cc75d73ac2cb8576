//! What a deploy of a spec would do, without doing it (`berth plan`, `deploy --dry-run`): the
//! spec's changes field by field, whether it resets a count set by `scale`, the deployment's
//! steps, and whether every instance can be placed now.

use std::collections::HashMap;

use berth_core::spec::Strategy;
use berth_core::{App, AppSpec, DeploymentKind, Instance, Node, NodeStatus};
use serde::Serialize;
use serde_json::Value;

use crate::place::{self, NodeUsage};

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
    /// Why the rest do not fit, node by node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unplaceable: Vec<String>,
}

impl Preview {
    /// Anything to do at all.
    pub fn changes_anything(&self) -> bool {
        self.new_version || self.instances.0 != self.instances.1
    }
}

/// The preview of deploying `spec` over `current` (none: a new app), given the nodes, every
/// instance now, and the spec each app's instances run.
pub fn preview<'a>(
    current: Option<&App>,
    spec: &AppSpec,
    nodes: &[Node],
    instances: &'a [Instance],
    spec_of: impl Fn(&str) -> Option<&'a AppSpec>,
) -> Preview {
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

    // The new version's instances replace this app's: count everything else as it is.
    let usage = place::usage(instances.iter().filter(|i| i.app != id), spec_of);
    let mut usage: HashMap<String, NodeUsage> = usage;
    let ready: Vec<&Node> = nodes.iter().filter(|n| n.status == NodeStatus::Ready).collect();
    let mut placeable = 0;
    let mut unplaceable = Vec::new();
    for _ in 0..spec.instances {
        match place::place(&id, spec, &ready, &usage) {
            Ok(p) => {
                usage.entry(p.node.clone()).or_default().add(&id, spec, &p.host_ports);
                placeable += 1;
            }
            Err(reasons) => {
                unplaceable = reasons;
                break;
            }
        }
    }
    Preview {
        app: id,
        version: current.map(|a| a.version),
        new_version,
        changes,
        instances: (now, spec.instances),
        resets_scale,
        steps,
        placeable,
        unplaceable,
    }
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
        let p = preview(Some(&current), &spec("instances: 2\n"), &[node(4096)], &[], |_| None);
        assert!(p.resets_scale && !p.new_version && p.changes_anything(), "{p:?}");
        assert_eq!(p.instances, (3, 2));
        assert_eq!(p.steps, ["stop 1 instance(s), draining each first"]);
        let after_update = app(spec("instances: 2\n"), 3, DeploymentKind::Update);
        assert!(!preview(Some(&after_update), &spec("instances: 2\n"), &[node(4096)], &[], |_| None).resets_scale);
    }

    #[test]
    fn no_change_and_placement_are_told() {
        let current = app(spec("instances: 2\n"), 2, DeploymentKind::Update);
        let same = preview(Some(&current), &spec("instances: 2\n"), &[node(4096)], &[], |_| None);
        assert!(!same.changes_anything());
        // 3 x 512 MiB on a 1200 MiB node: two fit.
        let p = preview(None, &spec("instances: 3\n"), &[node(1200)], &[], |_| None);
        assert_eq!(p.placeable, 2);
        assert!(p.unplaceable[0].contains("memory"), "{:?}", p.unplaceable);
        assert!(p.steps[0].starts_with("start 3 instance(s)"));
    }
}
