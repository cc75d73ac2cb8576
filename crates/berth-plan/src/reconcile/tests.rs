use std::collections::BTreeMap;

use berth_core::spec::DriverKind;
use berth_core::{AppSpec, Backoff, Deployment, DeploymentKind, DeploymentState, Resources};

use super::*;

pub(crate) fn node(id: &str) -> Node {
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
        taken_ports: Default::default(),
        pool: berth_core::SHARED_POOL.into(),
        eligibility: Default::default(),
        drain: None,
        disconnected_at: None,
        quarantine: None,
        drivers_down: Default::default(),
    }
}

fn app(instances: u32, version: u64, extra: &str) -> App {
    let spec = AppSpec::from_yaml(&format!("group: g\nname: web\nimage: i\nports: [80]\n{extra}"), None).unwrap();
    App {
        spec,
        version,
        instances,
        created_at: 0,
        updated_at: 0,
        destroying: false,
        backoff: Backoff::default(),
        alike: vec![],
        stable_version: None,
        deployment: None,
    }
}

pub(crate) fn inst(id: &str, version: u64, state: InstanceState) -> Instance {
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
        observed: berth_core::Observed { started_at: Some(0), ..Default::default() },
        created_at: 0,
        healthy_since: Some(0),
        in_service: state == InstanceState::Running,
        allocated: None,
        borrowed: false,
        run: None,
    }
}

/// The tests' times are written for a 15 s node timeout.
fn settings() -> Settings {
    Settings { heartbeat_grace_until: 0, node_timeout_ms: 15_000, ..Settings::default() }
}

fn run(snapshot: &Snapshot, now: Millis) -> Plan {
    reconcile(snapshot, now, settings())
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
    let snap = Snapshot {
        apps: vec![app(3, 1, "")],
        instances: vec![],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
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
fn a_large_placement_is_split_across_passes_that_follow_at_once() {
    let mut snap = Snapshot {
        apps: vec![app(7, 1, "")],
        instances: vec![],
        nodes: vec![node("n1"), node("n2")],
        pools: Default::default(),
        ..Default::default()
    };
    let settings = Settings { max_placements: 3, ..settings() };
    let mut per_pass = Vec::new();
    for pass in 0..5 {
        let plan = reconcile(&snap, 2_000, settings);
        if places(&plan) == 0 {
            assert!(plan.check_at.is_none_or(|at| at > 2_000), "nothing left to place: no pass at once");
            break;
        }
        per_pass.push(places(&plan));
        assert!(plan.pending.is_empty(), "held back for the next pass is not unplaceable: {:?}", plan.pending);
        if snap.instances.len() + places(&plan) < 7 {
            assert_eq!(plan.check_at, Some(2_000), "the next pass comes at once");
        }
        for (k, action) in plan.actions.iter().enumerate() {
            if let Action::Place { placement, .. } = action {
                let mut i = inst(&format!("p{pass}-{k}"), 1, InstanceState::Staging);
                i.node = placement.node.clone();
                i.host_ports = placement.host_ports.clone();
                snap.instances.push(i);
            }
        }
    }
    assert_eq!(per_pass, [3, 3, 1]);
}

#[test]
fn steady_state_plans_nothing() {
    let snap = Snapshot {
        apps: vec![app(2, 1, "")],
        instances: vec![inst("a", 1, InstanceState::Running), inst("bb", 1, InstanceState::Starting)],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
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
        pools: Default::default(),
        ..Default::default()
    };
    assert_eq!(stops(&run(&snap, 2_000)), ["bb"]);
}

#[test]
fn failed_instances_are_replaced_after_backoff() {
    let mut a = app(1, 1, "");
    a.backoff = Backoff { failures: 1, not_before: 3_000, last_failure_at: 2_000 };
    let mut dead = inst("a", 1, InstanceState::Failed);
    dead.observed.finished_at = Some(2_000);
    let snap = Snapshot {
        apps: vec![a],
        instances: vec![dead],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    let early = run(&snap, 2_500);
    assert_eq!(places(&early), 0);
    assert_eq!(early.check_at, Some(3_000));
    assert!(matches!(early.pending[0].why, Waiting::Backoff { failures: 1, next_in_ms: 500 }), "{:?}", early.pending);
    assert_eq!(places(&run(&snap, 3_000)), 1);
}

fn placed_on(plan: &Plan) -> Vec<&str> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Place { placement, .. } => Some(placement.node.as_str()),
            _ => None,
        })
        .collect()
}

fn stops_why(plan: &Plan) -> Vec<(&str, &Reason)> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Stop { instance, reason } => Some((instance.as_str(), reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_silent_node_is_disconnected_and_its_instances_are_replaced_not_failed() {
    let mut n1 = node("n1");
    n1.last_heartbeat = 0;
    let mut n2 = node("n2");
    n2.last_heartbeat = 20_000;
    let snap = Snapshot {
        apps: vec![app(1, 1, "")],
        instances: vec![inst("a", 1, InstanceState::Running)],
        nodes: vec![n1, n2],
        pools: Default::default(),
        ..Default::default()
    };
    let plan = run(&snap, 20_000);
    assert!(plan.actions.contains(&Action::NodeDisconnected { node: "n1".into() }));
    // The instance is left as it was: the agent may well be running it still.
    assert!(!plan.actions.iter().any(|a| matches!(a, Action::Stop { .. } | Action::Expire { .. })), "{plan:?}");
    assert_eq!(placed_on(&plan), ["n2"]);
}

/// `a` on n1, cut off at 20 s, with n2 ready beside it; the app waits `max_disconnect`.
fn cut_off(extra: &str) -> Snapshot {
    let mut n1 = node("n1");
    n1.status = NodeStatus::Disconnected;
    n1.last_heartbeat = 5_000;
    n1.disconnected_at = Some(20_000);
    let mut n2 = node("n2");
    n2.last_heartbeat = 60_000;
    Snapshot {
        apps: vec![app(1, 1, extra)],
        instances: vec![inst("a", 1, InstanceState::Running)],
        nodes: vec![n1, n2],
        pools: Default::default(),
        ..Default::default()
    }
}

#[test]
fn max_disconnect_keeps_the_originals_until_it_is_over() {
    let snap = cut_off("max_disconnect: 30s\n");
    let early = run(&snap, 25_000);
    assert_eq!(places(&early), 0, "{early:?}");
    assert_eq!(early.check_at.map(|at| at <= 50_000), Some(true), "the end of the wait is checked");
    assert_eq!(placed_on(&run(&snap, 50_000)), ["n2"]);
    // Without it, the replacement comes as soon as the node is disconnected.
    assert_eq!(placed_on(&run(&cut_off(""), 25_000)), ["n2"]);
}

/// n1 back at 40 s after its cut at 20 s, with its original `a` and the replacement `rep` (in
/// the state given) on n2.
fn back(replacement: InstanceState, ready: bool) -> Snapshot {
    let mut snap = cut_off("");
    snap.nodes[0].status = NodeStatus::Ready;
    snap.nodes[0].last_heartbeat = 40_000;
    let mut rep = inst("rep", 1, replacement);
    rep.node = "n2".into();
    rep.created_at = 21_000;
    rep.healthy_since = ready.then_some(25_000);
    rep.in_service = ready;
    snap.instances.push(rep);
    snap
}

#[test]
fn a_node_back_loses_its_originals_when_their_replacements_are_in_service() {
    let plan = run(&back(InstanceState::Running, true), 40_000);
    assert_eq!(stops_why(&plan), [("a", &Reason::ReplacedWhileDisconnected { node: "n1".into() })], "{plan:?}");
    assert_eq!(places(&plan), 0);
}

#[test]
fn a_node_back_keeps_its_originals_when_their_replacements_are_not_in_service() {
    for state in [InstanceState::Staging, InstanceState::Starting] {
        let plan = run(&back(state, false), 40_000);
        assert_eq!(stops_why(&plan), [("rep", &Reason::OriginalBack { node: "n1".into() })], "{state:?}: {plan:?}");
    }
}

proptest::proptest! {
    /// However many instances of each set are ready when the node comes back, the app is cut
    /// back to its count, keeping every ready instance it can, and the originals go first.
    #[test]
    fn one_set_survives_a_node_coming_back(
        originals in proptest::collection::vec(proptest::bool::ANY, 1..5),
        replacements in proptest::collection::vec(0u8..3, 1..5),
    ) {
        let n = originals.len().min(replacements.len());
        let mut snap = back(InstanceState::Running, true);
        snap.apps[0].instances = n as u32;
        snap.instances.clear();
        for (k, ready) in originals.iter().take(n).enumerate() {
            let mut o = inst(&format!("o{k}"), 1, InstanceState::Running);
            o.created_at = 1_000;
            o.healthy_since = ready.then_some(2_000);
            o.in_service = *ready;
            snap.instances.push(o);
        }
        for (k, state) in replacements.iter().take(n).enumerate() {
            let state = [InstanceState::Staging, InstanceState::Starting, InstanceState::Running][*state as usize];
            let mut r = inst(&format!("r{k}"), 1, state);
            r.node = "n2".into();
            r.created_at = 21_000;
            r.in_service = state == InstanceState::Running;
            snap.instances.push(r);
        }
        let plan = run(&snap, 40_000);
        let stopped = stops(&plan);
        proptest::prop_assert_eq!(stopped.len(), n, "{:?}", plan);
        let kept: Vec<&Instance> = snap.instances.iter().filter(|i| !stopped.contains(&i.id.as_str())).collect();
        let ready_total = snap.instances.iter().filter(|i| i.is_ready()).count();
        proptest::prop_assert_eq!(kept.iter().filter(|i| i.is_ready()).count(), ready_total.min(n));
        // Ready replacements are kept before ready originals.
        let ready_replacements = snap.instances.iter().filter(|i| i.node == "n2" && i.is_ready()).count();
        let kept_replacements = kept.iter().filter(|i| i.node == "n2" && i.is_ready()).count();
        proptest::prop_assert_eq!(kept_replacements, ready_replacements);
    }
}

#[test]
fn heartbeat_grace_protects_nodes_after_server_restart() {
    let mut n1 = node("n1");
    n1.last_heartbeat = 0;
    let snap =
        Snapshot { apps: vec![], instances: vec![], nodes: vec![n1], pools: Default::default(), ..Default::default() };
    let plan = reconcile(&snap, 20_000, Settings { heartbeat_grace_until: 19_000, ..settings() });
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
        pools: Default::default(),
        ..Default::default()
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
fn an_old_version_counts_at_what_it_was_placed_with() {
    // v1 ran 64 MiB; v2 wants 3000 MiB on a 4096 MiB node. Beside the old instance at its own
    // size the new one fits; counted at the new spec's size, it would not.
    let mut old = inst("a", 1, InstanceState::Running);
    old.allocated = Some(Allocation { cpu: 0.0, memory: 64 });
    let snap = Snapshot {
        apps: vec![app(1, 2, "memory: 3000\nupgrade:\n  max_over_capacity: 0\n")],
        instances: vec![old.clone()],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    assert_eq!(places(&run(&snap, 2_000)), 1);
    // An instance placed by an older server, with nothing recorded, counts at its app's spec.
    old.allocated = None;
    let snap = Snapshot { instances: vec![old], ..snap };
    let plan = run(&snap, 2_000);
    assert_eq!(places(&plan), 0);
    assert!(plan.pending[0].why.to_string().contains("memory"), "{:?}", plan.pending);
}

#[test]
fn scaling_up_moves_no_running_instance() {
    let running: Vec<Instance> = ["a", "bb"].iter().map(|id| inst(id, 1, InstanceState::Running)).collect();
    let mut app = app(4, 1, "");
    app.deployment = Some(Deployment::start(DeploymentKind::Scale, None, 1, 0));
    let snap = Snapshot {
        apps: vec![app],
        instances: running,
        nodes: vec![node("n1"), node("n2")],
        pools: Default::default(),
        ..Default::default()
    };
    let plan = run(&snap, 2_000);
    assert_eq!(places(&plan), 2);
    assert!(stops(&plan).is_empty(), "{:?}", plan.actions);
}

#[test]
fn destroy_stops_everything_then_removes() {
    let mut a = app(2, 1, "");
    a.destroying = true;
    let snap = Snapshot {
        apps: vec![a.clone()],
        instances: vec![inst("a", 1, InstanceState::Running)],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    let plan = run(&snap, 2_000);
    assert_eq!(stops(&plan), ["a"]);
    assert!(!plan.actions.contains(&Action::RemoveApp { app: "g/web".into() }));
    let snap = Snapshot {
        apps: vec![a],
        instances: vec![inst("a", 1, InstanceState::Stopped)],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    let plan = run(&snap, 2_000);
    assert!(plan.actions.contains(&Action::RemoveApp { app: "g/web".into() }));
    assert!(plan.actions.contains(&Action::Forget { instance: "a".into() }));
}

#[test]
fn unplaceable_instances_say_why() {
    let snap = Snapshot {
        apps: vec![app(2, 1, "cpu: 3\n")],
        instances: vec![],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    let plan = run(&snap, 2_000);
    assert_eq!(places(&plan), 1);
    assert_eq!(plan.pending[0].missing, 1);
    assert!(plan.pending[0].why.to_string().contains("cpu"), "{:?}", plan.pending);
}

#[test]
fn old_terminal_records_are_forgotten() {
    let mut instances: Vec<Instance> = (0..15)
        .map(|n| {
            let mut i = inst(&format!("x{n}"), 1, InstanceState::Failed);
            i.observed.finished_at = Some(n);
            i
        })
        .collect();
    instances.push(inst("live", 1, InstanceState::Running));
    let snap = Snapshot {
        apps: vec![app(1, 1, "")],
        instances,
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    let forgotten = run(&snap, 2_000).actions.iter().filter(|a| matches!(a, Action::Forget { .. })).count();
    assert_eq!(forgotten, 5);
}

/// Planning late in time with nodes that kept heartbeating.
fn live_run(snapshot: &Snapshot, now: Millis) -> Plan {
    reconcile(snapshot, now, Settings { heartbeat_grace_until: now, ..settings() })
}

fn deploying(mut a: App, from: u64, now: Millis) -> App {
    a.deployment = Some(Deployment::start(DeploymentKind::Update, Some(from), a.version, now));
    a
}

fn has<F: Fn(&Action) -> bool>(plan: &Plan, f: F) -> bool {
    plan.actions.iter().any(f)
}

#[test]
fn a_new_instance_takes_traffic_only_after_min_healthy_time() {
    let mut fresh = inst("a", 1, InstanceState::Running);
    fresh.in_service = false;
    fresh.healthy_since = Some(1_000);
    let snap = Snapshot {
        apps: vec![app(1, 1, "")],
        instances: vec![fresh],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    let early = live_run(&snap, 5_000);
    assert!(!has(&early, |a| matches!(a, Action::Admit { .. })), "{early:?}");
    assert_eq!(early.check_at, Some(11_000), "checks again when the 10 s default is up");
    assert!(has(&live_run(&snap, 11_000), |a| matches!(a, Action::Admit { instance } if instance == "a")));
}

#[test]
fn an_instance_never_healthy_by_its_deadline_is_expired() {
    let stuck = inst("a", 1, InstanceState::Starting);
    let snap = Snapshot {
        apps: vec![app(1, 1, "upgrade:\n  healthy_deadline: 30s\n")],
        instances: vec![stuck],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    assert!(!has(&live_run(&snap, 29_999), |a| matches!(a, Action::Expire { .. })));
    let plan = live_run(&snap, 30_000);
    assert!(has(
        &plan,
        |a| matches!(a, Action::Expire { instance, reason: Reason::NotHealthyInTime { deadline } } if instance == "a" && deadline.to_string() == "30s")
    ));
}

#[test]
fn a_deployment_ends_when_every_new_instance_is_in_service() {
    let a = deploying(app(2, 2, ""), 1, 0);
    let mut snap = Snapshot {
        apps: vec![a],
        instances: vec![inst("a", 2, InstanceState::Running), inst("bb", 1, InstanceState::Running)],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    let ended = |p: &Plan| has(p, |a| matches!(a, Action::EndDeployment { state: DeploymentState::Succeeded, .. }));
    assert!(!ended(&live_run(&snap, 1_000)), "an old instance is still there");
    snap.instances[1] = inst("bb", 2, InstanceState::Running);
    snap.instances[1].in_service = false;
    assert!(!ended(&live_run(&snap, 1_000)), "a new instance is not in service yet");
    snap.instances[1].in_service = true;
    let mut draining = inst("ccc", 1, InstanceState::Running);
    draining.desired = Desired::Stop;
    snap.instances.push(draining);
    assert!(!ended(&live_run(&snap, 1_000)), "a replaced instance is still draining");
    snap.instances[2].state = InstanceState::Stopped;
    assert!(ended(&live_run(&snap, 1_000)));
}

#[test]
fn a_failing_deployment_rolls_back_to_the_stable_version() {
    let mut a = deploying(app(4, 3, ""), 2, 0);
    a.stable_version = Some(2);
    let d = a.deployment.as_mut().unwrap();
    d.failures = 4;
    d.last_failure = Some("exited with code 3".into());
    let snap = Snapshot {
        apps: vec![a.clone()],
        instances: vec![],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    let plan = live_run(&snap, 1_000);
    assert!(
        has(&plan, |x| matches!(x, Action::AutoRollback { to_version: 2, reason, .. } if reason.contains("code 3"))),
        "{plan:?}"
    );
    a.spec.upgrade.auto_rollback = false;
    let snap = Snapshot { apps: vec![a], ..snap };
    assert!(has(&live_run(&snap, 1_000), |x| matches!(
        x,
        Action::EndDeployment { state: DeploymentState::Failed, .. }
    )));
}

#[test]
fn a_deployment_with_no_progress_fails_at_its_deadline() {
    let mut a = deploying(app(1, 2, "upgrade:\n  progress_deadline: 20s\n"), 1, 1_000);
    a.stable_version = Some(1);
    let snap = Snapshot {
        apps: vec![a],
        instances: vec![inst("a", 1, InstanceState::Running), inst("bb", 2, InstanceState::Starting)],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    let before = live_run(&snap, 20_999);
    assert!(!has(&before, |x| matches!(x, Action::AutoRollback { .. })));
    assert!(before.check_at.is_some_and(|t| t <= 21_000));
    assert!(has(&live_run(&snap, 21_000), |x| matches!(x, Action::AutoRollback { to_version: 1, .. })));
}

#[test]
fn a_rollback_that_fails_does_not_roll_back_again() {
    let mut a = deploying(app(1, 3, ""), 2, 0);
    a.alike = vec![1];
    a.stable_version = Some(1);
    a.deployment.as_mut().unwrap().failures = 3;
    let snap = Snapshot {
        apps: vec![a],
        instances: vec![],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    let plan = live_run(&snap, 1_000);
    assert!(!has(&plan, |x| matches!(x, Action::AutoRollback { .. })));
    assert!(has(&plan, |x| matches!(x, Action::EndDeployment { state: DeploymentState::Failed, .. })));
}

#[test]
fn instances_of_an_alike_version_are_current() {
    let mut a = app(2, 3, "");
    a.alike = vec![1];
    let snap = Snapshot {
        apps: vec![a],
        instances: vec![inst("a", 1, InstanceState::Running), inst("bb", 1, InstanceState::Running)],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    let plan = live_run(&snap, 1_000);
    assert!(plan.actions.is_empty(), "rolling back to v1's spec keeps v1's instances: {plan:?}");
}

#[test]
fn a_canary_grows_to_its_share_and_waits() {
    let mut a = deploying(app(4, 2, "upgrade:\n  progress_deadline: 5s\n"), 1, 0);
    a.deployment.as_mut().unwrap().canary = Some(1);
    let old: Vec<Instance> = ["a", "bb", "ccc", "dddd"].iter().map(|id| inst(id, 1, InstanceState::Running)).collect();
    let snap = Snapshot {
        apps: vec![a],
        instances: old.clone(),
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    let plan = live_run(&snap, 1_000);
    assert_eq!(places(&plan), 1);
    assert!(stops(&plan).is_empty());
    let mut with_canary = old;
    with_canary.push(inst("eeeee", 2, InstanceState::Running));
    let snap = Snapshot { instances: with_canary, ..snap };
    let plan = live_run(&snap, 60_000);
    assert!(plan.actions.is_empty(), "a healthy canary waits for promote, past any deadline: {plan:?}");
}

#[test]
fn blue_green_switches_at_once_and_keeps_the_old_set_for_the_window() {
    let mut a = deploying(app(2, 2, "upgrade:\n  strategy: blue-green\n  rollback_window: 60s\n"), 1, 0);
    a.deployment.as_mut().unwrap().blue_green = true;
    let old = vec![inst("a", 1, InstanceState::Running), inst("bb", 1, InstanceState::Running)];
    let snap = Snapshot {
        apps: vec![a.clone()],
        instances: old.clone(),
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    let plan = live_run(&snap, 1_000);
    assert_eq!(places(&plan), 2, "a whole new set");
    assert!(stops(&plan).is_empty());
    assert!(a.serves(1) && !a.serves(2), "the old set keeps all traffic before the switch");

    let mut both = old.clone();
    both.push(inst("ccc", 2, InstanceState::Running));
    both.push(inst("dddd", 2, InstanceState::Running));
    let snap = Snapshot { instances: both.clone(), ..snap };
    assert!(has(&live_run(&snap, 2_000), |x| matches!(x, Action::Switch { .. })));

    let d = a.deployment.as_mut().unwrap();
    d.switched_at = Some(2_000);
    d.state = DeploymentState::Succeeded;
    assert!(!a.serves(1) && a.serves(2), "after the switch only the new set");
    let snap = Snapshot {
        apps: vec![a],
        instances: both,
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    let kept = live_run(&snap, 30_000);
    assert!(stops(&kept).is_empty(), "old set kept inside the window: {kept:?}");
    assert!(stops(&live_run(&snap, 61_999)).is_empty());
    assert_eq!(stops(&live_run(&snap, 62_000)), ["a", "bb"]);
}

/// Runs the planner every 100 ms over `seconds`, for an app with `healthy` instances that never
/// fail and `failing` slots whose every instance exits `fail_after_ms` after launch, applying its
/// moves as the server would. Returns the launch times of the failing slots.
fn simulate_crash_loop(healthy: u32, failing: u32, fail_after_ms: i64, seconds: i64) -> Vec<Millis> {
    let mut a = app(healthy + failing, 1, "");
    let mut instances: Vec<Instance> = (0..healthy)
        .map(|i| {
            let mut x = inst(&format!("h{i}"), 1, InstanceState::Running);
            x.created_at = -600_000;
            x.observed.started_at = Some(-600_000);
            x.healthy_since = Some(-600_000);
            x
        })
        .collect();
    let settings = settings();
    let mut launches = Vec::new();
    let mut n = 0;
    let mut node = node("n1");
    for tick in 0..seconds * 10 {
        let now = tick * 100;
        node.last_heartbeat = now;
        // Launched instances fail on time, as the agent reports them.
        for x in instances.iter_mut().filter(|x| x.id.starts_with('f') && x.state.is_live()) {
            if now >= x.created_at + fail_after_ms {
                x.state = InstanceState::Failed;
                x.observed.finished_at = Some(now);
                a.backoff = a.backoff.after_failure(now);
            }
        }
        let snap = Snapshot {
            apps: vec![a.clone()],
            instances: instances.clone(),
            nodes: vec![node.clone()],
            pools: Default::default(),
            ..Default::default()
        };
        for action in reconcile(&snap, now, settings).actions {
            match action {
                Action::Place { placement, .. } => {
                    n += 1;
                    let mut x = inst(&format!("f{n}"), 1, InstanceState::Running);
                    x.host_ports = placement.host_ports;
                    (x.created_at, x.observed.started_at, x.healthy_since, x.in_service) =
                        (now, Some(now), None, false);
                    instances.push(x);
                    launches.push(now);
                }
                Action::ResetBackoff { .. } => a.backoff = Backoff::default(),
                Action::Forget { instance } => instances.retain(|x| x.id != instance),
                _ => {}
            }
        }
    }
    launches
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Whatever healthy siblings do, each failing slot launches at most once per backoff step:
    /// over the run, no more than the steps of the backoff curve that fit in it.
    #[test]
    fn backoff_holds_per_failing_slot_beside_healthy_siblings(
        healthy in 0u32..4,
        failing in 1u32..4,
        fail_after_ms in 100i64..3_000,
    ) {
        let seconds = 120;
        let launches = simulate_crash_loop(healthy, failing, fail_after_ms, seconds);
        // Steps of the curve that fit in the run, counting each slot's own failures only (the
        // app's counter grows faster when several slots fail, so this bounds from above).
        let (mut steps, mut elapsed) = (1usize, 0i64);
        while elapsed <= seconds * 1000 {
            elapsed += Backoff::delay_ms(steps as u32) + fail_after_ms;
            steps += 1;
        }
        let bound = failing as usize * steps;
        proptest::prop_assert!(
            launches.len() <= bound,
            "{} launches for {failing} failing slot(s) beside {healthy} healthy, bound {bound}",
            launches.len()
        );
        // And the failing slots do keep being retried: a crash loop is not given up on.
        proptest::prop_assert!(launches.len() >= failing as usize * 3);
    }
}

#[test]
fn a_replacement_that_stays_healthy_ends_the_backoff() {
    let mut a = app(2, 1, "");
    a.backoff = Backoff { failures: 5, not_before: 9_000, last_failure_at: 1_000 };
    let mut old = inst("old", 1, InstanceState::Running);
    old.created_at = -100_000;
    let mut fresh = inst("fresh", 1, InstanceState::Running);
    (fresh.created_at, fresh.observed.started_at) = (9_000, Some(9_000));
    let reset = |plan: &Plan| has(plan, |a| matches!(a, Action::ResetBackoff { .. }));
    let snap = Snapshot {
        apps: vec![a.clone()],
        instances: vec![old.clone()],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    assert!(!reset(&live_run(&snap, 100_000)), "a sibling healthy all along does not end it");
    let snap = Snapshot {
        apps: vec![a],
        instances: vec![old, fresh],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    assert!(!reset(&live_run(&snap, 30_000)), "not before 30 s of health");
    assert!(reset(&live_run(&snap, 39_000)), "the relaunched slot healthy for 30 s ends it");
}

fn draining(mut n: Node, deadline_at: Option<Millis>) -> Node {
    n.eligibility = berth_core::Eligibility::Ineligible;
    n.drain = Some(berth_core::Drain {
        state: DrainState::Running,
        started_at: 0,
        deadline_at,
        instances: 0,
        ended_at: None,
    });
    n
}

/// Plays a drain out: stopped instances leave at once, placed ones are ready two rounds later.
/// Returns the fewest ready instances seen and the drain's end.
fn simulate_drain(target: u32, max_over: f64) -> (usize, Option<(DrainState, usize)>, Snapshot) {
    let mut snap = Snapshot {
        apps: vec![app(target, 1, &format!("upgrade: {{max_over_capacity: {max_over}}}"))],
        instances: (0..target).map(|k| inst(&format!("i{k}"), 1, InstanceState::Running)).collect(),
        nodes: vec![draining(node("n1"), None), node("n2")],
        pools: Default::default(),
        ..Default::default()
    };
    let mut fewest_ready = usize::MAX;
    for round in 0..50 {
        let plan = run(&snap, 2_000);
        for action in &plan.actions {
            match action {
                Action::Stop { instance, reason } => {
                    assert!(matches!(reason, Reason::NodeDrained { .. }), "{reason:?}");
                    snap.instances.retain(|i| &i.id != instance);
                }
                Action::Place { placement, .. } => {
                    assert_eq!(placement.node, "n2", "nothing goes back on a draining node");
                    let mut i = inst(&format!("r{round}-{}", snap.instances.len()), 1, InstanceState::Running);
                    i.node = placement.node.clone();
                    i.in_service = false;
                    i.created_at = round;
                    snap.instances.push(i);
                }
                Action::EndDrain { state, left, .. } => return (fewest_ready, Some((*state, *left)), snap),
                _ => {}
            }
        }
        // Counted once the stops are done, before any newcomer becomes ready.
        fewest_ready = fewest_ready.min(snap.instances.iter().filter(|i| i.is_ready()).count());
        for i in snap.instances.iter_mut().filter(|i| i.created_at < round) {
            i.in_service = true;
        }
    }
    (fewest_ready, None, snap)
}

#[test]
fn a_drain_moves_every_instance_with_no_ready_capacity_lost() {
    for (target, max_over) in [(1, 0.0), (3, 0.0), (3, 1.0), (5, 0.2)] {
        let (fewest_ready, end, snap) = simulate_drain(target, max_over);
        assert_eq!(fewest_ready, target as usize, "{target} at {max_over}: capacity kept");
        assert_eq!(end, Some((DrainState::Complete, 0)), "{target} at {max_over}");
        assert!(snap.instances.iter().all(|i| i.node == "n2"));
        assert_eq!(snap.instances.len(), target as usize);
    }
}

#[test]
fn a_drain_past_its_deadline_stops_what_is_left() {
    let mut snap = Snapshot {
        apps: vec![app(2, 1, "")],
        instances: vec![inst("a", 1, InstanceState::Running), inst("b", 1, InstanceState::Running)],
        nodes: vec![draining(node("n1"), Some(5_000)), node("n2")],
        pools: Default::default(),
        ..Default::default()
    };
    let before = run(&snap, 2_000);
    assert_eq!(before.check_at.map(|at| at <= 5_000), Some(true), "the deadline is checked");
    assert!(!has(&before, |a| matches!(a, Action::EndDrain { .. })));
    snap.nodes[1].status = NodeStatus::Disconnected;
    snap.nodes[1].last_heartbeat = 10_000;
    let plan = run(&snap, 6_000);
    let deadline_stops =
        plan.actions.iter().filter(|a| matches!(a, Action::Stop { reason: Reason::DrainDeadline { .. }, .. })).count();
    assert_eq!(deadline_stops, 2, "{plan:?}");
    assert!(has(&plan, |a| matches!(a, Action::EndDrain { state: DrainState::DeadlineReached, left: 2, .. })));
}

#[test]
fn ineligible_and_draining_nodes_take_no_new_instance() {
    let mut n1 = node("n1");
    n1.eligibility = berth_core::Eligibility::Ineligible;
    let snap = Snapshot {
        apps: vec![app(1, 1, "")],
        instances: vec![],
        nodes: vec![n1, draining(node("n2"), None)],
        pools: Default::default(),
        ..Default::default()
    };
    let plan = run(&snap, 2_000);
    assert_eq!(places(&plan), 0);
    let why = plan.pending[0].why.to_string();
    assert!(why.contains("ineligible") && why.contains("draining"), "{why}");
    // A drain with nothing on the node ends at once.
    assert!(has(&plan, |a| matches!(a, Action::EndDrain { state: DrainState::Complete, left: 0, .. })));
}

#[test]
fn scale_down_gives_borrowed_room_back_first() {
    let mut borrowed = inst("b", 1, InstanceState::Running);
    borrowed.borrowed = true;
    borrowed.created_at = -5;
    let mut newer = inst("n", 1, InstanceState::Running);
    newer.created_at = 10;
    let snap = Snapshot {
        apps: vec![app(1, 1, "")],
        instances: vec![borrowed, newer],
        nodes: vec![node("n1")],
        pools: Default::default(),
        ..Default::default()
    };
    assert_eq!(stops(&run(&snap, 2_000)), ["b"], "the borrowed one goes, though older");
}

#[test]
fn a_node_failing_apps_that_run_healthy_elsewhere_is_quarantined() {
    let mut second = app(1, 1, "");
    second.spec.name = "api".into();
    let mut instances = Vec::new();
    for (app_id, tag) in [("g/web", "w"), ("g/api", "a")] {
        let mut ok = inst(&format!("{tag}-ok"), 1, InstanceState::Running);
        ok.app = app_id.into();
        ok.node = "n2".into();
        instances.push(ok);
        for k in 0..3 {
            let mut failed = inst(&format!("{tag}-{k}"), 1, InstanceState::Failed);
            failed.app = app_id.into();
            failed.observed.finished_at = Some(1_500);
            instances.push(failed);
        }
    }
    let mut n2 = node("n2");
    n2.last_heartbeat = 2_000;
    let snap = Snapshot {
        apps: vec![app(1, 1, ""), second],
        instances,
        nodes: vec![node("n1"), n2],
        pools: Default::default(),
        ..Default::default()
    };
    let plan = run(&snap, 2_000);
    let quarantined: Vec<&Action> = plan.actions.iter().filter(|a| matches!(a, Action::Quarantine { .. })).collect();
    assert_eq!(quarantined.len(), 1, "{plan:?}");
    assert!(matches!(quarantined[0], Action::Quarantine { node, why } if node == "n1" && why.contains("2 apps")));
}
