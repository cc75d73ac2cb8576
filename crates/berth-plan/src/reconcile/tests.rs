use std::collections::BTreeMap;

use berth_core::spec::DriverKind;
use berth_core::{AppSpec, Backoff, Resources};

use super::*;

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        hostname: id.into(),
        address: "127.0.0.1".into(),
        resources: Resources { cpu: 4.0, memory: 4096, ports: (31000, 31999) },
        labels: BTreeMap::new(),
        drivers: vec![DriverKind::Docker, DriverKind::Exec],
        status: NodeStatus::Ready,
        registered_at: 0,
        last_heartbeat: 1_000,
    }
}

fn app(instances: u32, version: u64, extra: &str) -> App {
    let spec = AppSpec::from_yaml(&format!("group: g\nname: web\nimage: i\nports: [80]\n{extra}"), None).unwrap();
    App { spec, version, instances, created_at: 0, updated_at: 0, destroying: false, backoff: Backoff::default() }
}

fn inst(id: &str, version: u64, state: InstanceState) -> Instance {
    Instance {
        id: id.into(),
        app: "g/web".into(),
        version,
        node: "n1".into(),
        driver: DriverKind::Docker,
        state,
        desired: Desired::Run,
        host_ports: vec![31000 + id.len() as u16],
        host: "127.0.0.1".into(),
        healthy: None,
        exit_code: None,
        oom_killed: false,
        reason: None,
        created_at: 0,
        started_at: Some(0),
        finished_at: None,
        handle: None,
    }
}

fn run(snapshot: &Snapshot, now: Millis) -> Plan {
    reconcile(snapshot, now, Settings { heartbeat_grace_until: 0, ..Settings::default() })
}

fn places(plan: &Plan) -> usize {
    plan.actions.iter().filter(|a| matches!(a, Action::Place { .. })).count()
}

fn stops(plan: &Plan) -> Vec<&str> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Stop { instance, .. } => Some(instance.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn places_missing_instances_on_distinct_ports() {
    let snap = Snapshot { apps: vec![app(3, 1, "")], instances: vec![], nodes: vec![node("n1")] };
    let plan = run(&snap, 2_000);
    assert_eq!(places(&plan), 3);
    let mut ports: Vec<u16> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Place { placement, .. } => Some(placement.host_ports[0]),
            _ => None,
        })
        .collect();
    ports.dedup();
    assert_eq!(ports.len(), 3, "each instance has its own host port");
}

#[test]
fn steady_state_plans_nothing() {
    let snap = Snapshot {
        apps: vec![app(2, 1, "")],
        instances: vec![inst("a", 1, InstanceState::Running), inst("bb", 1, InstanceState::Starting)],
        nodes: vec![node("n1")],
    };
    let plan = run(&snap, 2_000);
    assert!(plan.actions.is_empty(), "{plan:?}");
}

#[test]
fn scale_down_stops_the_least_useful_first() {
    let snap = Snapshot {
        apps: vec![app(1, 1, "")],
        instances: vec![inst("a", 1, InstanceState::Running), inst("bb", 1, InstanceState::Staging)],
        nodes: vec![node("n1")],
    };
    assert_eq!(stops(&run(&snap, 2_000)), ["bb"]);
}

#[test]
fn failed_instances_are_replaced_after_backoff() {
    let mut a = app(1, 1, "");
    a.backoff = Backoff { failures: 1, not_before: 3_000 };
    let mut dead = inst("a", 1, InstanceState::Failed);
    dead.finished_at = Some(2_000);
    let snap = Snapshot { apps: vec![a], instances: vec![dead], nodes: vec![node("n1")] };
    let early = run(&snap, 2_500);
    assert_eq!(places(&early), 0);
    assert_eq!(early.check_at, Some(3_000));
    assert!(early.pending[0].reasons[0].contains("backoff"));
    assert_eq!(places(&run(&snap, 3_000)), 1);
}

#[test]
fn lost_node_fails_its_instances_and_they_move() {
    let mut n1 = node("n1");
    n1.last_heartbeat = 0;
    let mut n2 = node("n2");
    n2.last_heartbeat = 20_000;
    let snap = Snapshot {
        apps: vec![app(1, 1, "")],
        instances: vec![inst("a", 1, InstanceState::Running)],
        nodes: vec![n1, n2],
    };
    let plan = run(&snap, 20_000);
    assert!(plan.actions.contains(&Action::NodeDown { node: "n1".into() }));
    assert!(plan.actions.iter().any(|a| matches!(a, Action::Fail { instance, .. } if instance == "a")));
    let placed: Vec<_> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Place { placement, .. } => Some(placement.node.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(placed, ["n2"]);
}

#[test]
fn heartbeat_grace_protects_nodes_after_server_restart() {
    let mut n1 = node("n1");
    n1.last_heartbeat = 0;
    let snap = Snapshot { apps: vec![], instances: vec![], nodes: vec![n1] };
    let plan = reconcile(&snap, 20_000, Settings { heartbeat_grace_until: 19_000, ..Settings::default() });
    assert!(plan.actions.is_empty());
    assert_eq!(plan.check_at, Some(34_000));
}

#[test]
fn rolling_upgrade_keeps_capacity() {
    let mut old: Vec<Instance> =
        ["a", "bb", "ccc", "dddd"].iter().map(|id| inst(id, 1, InstanceState::Running)).collect();
    let snap = Snapshot {
        apps: vec![app(4, 2, "upgrade:\n  max_over_capacity: 0\n")],
        instances: old.clone(),
        nodes: vec![node("n1")],
    };
    let plan = run(&snap, 2_000);
    assert_eq!(places(&plan), 1, "1/0 starts one extra");
    assert!(stops(&plan).is_empty(), "no healthy old instance leaves before a new one is ready");
    old.push(inst("eeeee", 2, InstanceState::Running));
    let snap = Snapshot { instances: old, ..snap };
    let plan = run(&snap, 3_000);
    assert_eq!(stops(&plan).len(), 1);
    assert_eq!(places(&plan), 1);
}

#[test]
fn destroy_stops_everything_then_removes() {
    let mut a = app(2, 1, "");
    a.destroying = true;
    let snap = Snapshot {
        apps: vec![a.clone()],
        instances: vec![inst("a", 1, InstanceState::Running)],
        nodes: vec![node("n1")],
    };
    let plan = run(&snap, 2_000);
    assert_eq!(stops(&plan), ["a"]);
    assert!(!plan.actions.contains(&Action::RemoveApp { app: "g/web".into() }));
    let snap =
        Snapshot { apps: vec![a], instances: vec![inst("a", 1, InstanceState::Stopped)], nodes: vec![node("n1")] };
    let plan = run(&snap, 2_000);
    assert!(plan.actions.contains(&Action::RemoveApp { app: "g/web".into() }));
    assert!(plan.actions.contains(&Action::Forget { instance: "a".into() }));
}

#[test]
fn unplaceable_instances_say_why() {
    let snap = Snapshot { apps: vec![app(2, 1, "cpu: 3\n")], instances: vec![], nodes: vec![node("n1")] };
    let plan = run(&snap, 2_000);
    assert_eq!(places(&plan), 1);
    assert_eq!(plan.pending[0].missing, 1);
    assert!(plan.pending[0].reasons[0].contains("cpu"), "{:?}", plan.pending);
}

#[test]
fn old_terminal_records_are_forgotten() {
    let mut instances: Vec<Instance> = (0..15)
        .map(|n| {
            let mut i = inst(&format!("x{n}"), 1, InstanceState::Failed);
            i.finished_at = Some(n);
            i
        })
        .collect();
    instances.push(inst("live", 1, InstanceState::Running));
    let snap = Snapshot { apps: vec![app(1, 1, "")], instances, nodes: vec![node("n1")] };
    let forgotten = run(&snap, 2_000).actions.iter().filter(|a| matches!(a, Action::Forget { .. })).count();
    assert_eq!(forgotten, 5);
}
