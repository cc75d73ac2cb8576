//! Alert evaluation, pure: from what the platform knows now (apps, nodes, samples, router
//! traffic, new events) and what the evaluator remembers (thresholds crossed and since when,
//! alerts firing, recent ones), the conditions that hold, and then the notices to send. No
//! store, no clock, no network: `mod.rs` gathers the input and sends the notices.

use std::collections::{BTreeMap, HashMap, VecDeque};

use berth_api::{Alert, AlertStatus, RouterCounts};
use berth_core::{AlertMetric, AlertRule, App, DeploymentState, Event, Millis, Node, NodeStatus};

/// Recent alerts kept for `berth alerts`.
const KEEP_RECENT: usize = 200;
/// Router counts are compared over this window for 5xx rate and latency.
pub(crate) const WINDOW_MS: i64 = 10_000;
/// A failing rule is told as an event at most this often per app.
const RULE_EVENT_EVERY_MS: i64 = 60_000;

/// What the evaluator remembers between evaluations.
#[derive(Default)]
pub(crate) struct AlertState {
    pub(crate) firing: BTreeMap<String, (Alert, Millis)>,
    /// Since when each threshold has been crossed, for `for:`.
    pub(crate) pending: HashMap<String, Millis>,
    pub(crate) recent: VecDeque<Alert>,
    /// Router totals per app over the last window.
    pub(crate) traffic: HashMap<String, VecDeque<(Millis, RouterCounts)>>,
    pub(crate) last_event: u64,
    /// When each app's failing rules were last told as an event.
    pub(crate) rule_events: HashMap<String, Millis>,
}

/// Per app over the last window: requests, 5xx answers, total latency ms, and requests its rules
/// failed on, by failure (in the order of `RULE_FAILURES`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Traffic {
    pub(crate) total: u64,
    pub(crate) errors: u64,
    pub(crate) ms: f64,
    pub(crate) rule_failures: [u64; 3],
}

/// An app's running instances' use, as the threshold rules read it: cpu as their mean, memory as
/// the fullest one's share of its limit. Summed where the samples are kept (`UsageStore::loads`),
/// so that an evaluation neither copies ten thousand samples nor scans them once per app.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct AppLoad {
    pub(crate) instances: usize,
    pub(crate) cpu_percent_sum: f64,
    /// Percent of its memory limit, of the instance closest to it; none without limits.
    pub(crate) memory_percent_max: Option<f64>,
}

impl AppLoad {
    /// Adds one instance's cpu rate, and its memory against its limit when it has one.
    pub(crate) fn add(&mut self, cpu_percent: f64, memory_bytes: u64, memory_limit_bytes: Option<u64>) {
        self.instances += 1;
        self.cpu_percent_sum += cpu_percent;
        if let Some(limit) = memory_limit_bytes {
            let pct = memory_bytes as f64 / limit as f64 * 100.0;
            self.memory_percent_max = Some(self.memory_percent_max.map_or(pct, |m| m.max(pct)));
        }
    }
}

/// Everything an evaluation looks at.
pub(crate) struct Input<'a> {
    pub(crate) apps: &'a [App],
    pub(crate) nodes: &'a [Node],
    /// Each app's use, from the fresh samples of its instances that run now.
    pub(crate) loads: &'a HashMap<String, AppLoad>,
    pub(crate) traffic: &'a HashMap<String, Traffic>,
    /// Each app's rule policy on failure (`open` when it has none).
    pub(crate) rule_policy: &'a HashMap<String, &'static str>,
    /// Events since the last evaluation.
    pub(crate) events: &'a [Event],
    /// Server-wide threshold rules, for every app.
    pub(crate) rules: &'a [AlertRule],
    /// Each job's own alert webhooks.
    pub(crate) job_hooks: &'a HashMap<String, Vec<String>>,
}

/// A condition seen in one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seen {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) app: Option<String>,
    pub(crate) node: Option<String>,
    pub(crate) value: Option<f64>,
    pub(crate) threshold: Option<f64>,
    pub(crate) text: String,
    /// Fires once and ends by itself (an OOM kill is an event, not a state).
    pub(crate) one_shot: bool,
    /// Apps' own webhooks.
    pub(crate) webhooks: Vec<String>,
}

/// What one evaluation found.
#[derive(Debug, Default)]
pub(crate) struct Evaluation {
    pub(crate) seen: Vec<Seen>,
    /// `rules.failing` events to write now: (app, text).
    pub(crate) rule_events: Vec<(String, String)>,
}

fn value_text(metric: AlertMetric, value: f64) -> String {
    match metric {
        AlertMetric::Cpu => format!("cpu usage is {value:.2}"),
        AlertMetric::Memory => format!("memory usage is {value:.2}% of its limit"),
        AlertMetric::Restarts => format!("{value:.0} failures in a row"),
        AlertMetric::ErrorRate => format!("5xx rate is {value:.2}%"),
        AlertMetric::Latency => format!("latency is {value:.2} ms"),
    }
}

/// Every condition that holds now.
pub(crate) fn evaluate(input: &Input, state: &mut AlertState, now: Millis) -> Evaluation {
    let mut out = Evaluation::default();
    for app in input.apps.iter().filter(|a| !a.destroying) {
        let id = app.id();
        let hooks = app.spec.alert_webhooks.clone();
        let base = |name: &str, text: String| Seen {
            id: format!("{id}:{name}"),
            name: name.to_string(),
            app: Some(id.clone()),
            node: None,
            value: None,
            threshold: None,
            text,
            one_shot: false,
            webhooks: hooks.clone(),
        };
        if app.backoff.crash_looping() {
            let mut s =
                base("crash_loop", format!("{id} is critical, crash loop: {} failures in a row", app.backoff.failures));
            s.value = Some(f64::from(app.backoff.failures));
            out.seen.push(s);
        }
        if let Some(d) = &app.deployment
            && matches!(d.state, DeploymentState::Failed | DeploymentState::RolledBack)
        {
            let verb = if d.state == DeploymentState::Failed { "failed" } else { "was rolled back" };
            let why = d.message.clone().unwrap_or_default();
            out.seen.push(base(
                "deployment_failed",
                format!("{id} is critical, the deployment of v{} {verb}: {why}", d.version),
            ));
        }
        let traffic = input.traffic.get(&id);
        // Its rules raised or ran out of budget on requests in the last window: those requests were
        // served as if there were no rule (or refused, if closed), which nobody chose.
        if let Some(t) = traffic
            && let failed @ 1.. = t.rule_failures[0] + t.rule_failures[1]
        {
            let text = format!(
                "{id} is warning, its rules failed on {failed} request(s) in the last {}s ({} raised, {} ran out of budget; on_error {})",
                WINDOW_MS / 1000,
                t.rule_failures[0],
                t.rule_failures[1],
                input.rule_policy.get(&id).copied().unwrap_or("open"),
            );
            let mut s = base("rule_failing", text.clone());
            s.value = Some(failed as f64);
            out.seen.push(s);
            let last = state.rule_events.entry(id.clone()).or_insert(i64::MIN / 2);
            if now - *last >= RULE_EVENT_EVERY_MS {
                *last = now;
                out.rule_events.push((id.clone(), text));
            }
        }
        let load = input.loads.get(&id).copied().unwrap_or_default();
        for rule in app.spec.alerts.iter().chain(input.rules.iter()) {
            let value = match rule.metric {
                AlertMetric::Cpu if load.instances > 0 => Some(load.cpu_percent_sum / load.instances as f64),
                AlertMetric::Cpu => Some(0.0),
                AlertMetric::Memory => load.memory_percent_max,
                AlertMetric::Restarts => Some(f64::from(app.backoff.failures)),
                AlertMetric::ErrorRate => {
                    traffic.map(|t| if t.total == 0 { 0.0 } else { t.errors as f64 / t.total as f64 * 100.0 })
                }
                AlertMetric::Latency => traffic.map(|t| if t.total == 0 { 0.0 } else { t.ms / t.total as f64 }),
            };
            let Some(value) = value else { continue };
            let key = format!("{id}:{}", rule.metric.as_str());
            if value > rule.above {
                let since = *state.pending.entry(key).or_insert(now);
                if now - since >= rule.for_.as_millis() as i64 {
                    let mut s =
                        base(rule.metric.as_str(), format!("{id} is critical, {}", value_text(rule.metric, value)));
                    s.value = Some(value);
                    s.threshold = Some(rule.above);
                    out.seen.push(s);
                }
            } else {
                state.pending.remove(&key);
            }
        }
    }
    // A node alert fires while the node is in the state, and resolves when it leaves it.
    let node_alert = |n: &berth_core::Node, name: &str, text: String| Seen {
        id: format!("node:{}:{name}", n.id),
        name: name.into(),
        app: None,
        node: Some(n.id.clone()),
        value: None,
        threshold: None,
        text,
        one_shot: false,
        webhooks: Vec::new(),
    };
    for n in input.nodes {
        if n.status == NodeStatus::Disconnected {
            let text = format!("node {} ({}) is disconnected: no heartbeat", n.id, n.hostname);
            out.seen.push(node_alert(n, "node_lost", text));
        }
        if let Some(q) = n.quarantine.as_ref().filter(|q| q.is_active()) {
            let text = format!("node {} ({}) is quarantined: {}", n.id, n.hostname, q.why);
            out.seen.push(node_alert(n, "node_quarantined", text));
        }
    }
    // A job's run that failed (after its retries) or was missed alerts once, with the job's own
    // webhooks.
    for e in input.events.iter().filter(|e| e.kind == crate::jobs::RUN_FAILED || e.kind == crate::jobs::RUN_MISSED) {
        let job = e.app.clone().unwrap_or_default();
        let name = if e.kind == crate::jobs::RUN_FAILED { "job_run_failed" } else { "job_run_missed" };
        out.seen.push(Seen {
            id: format!("{job}:{name}:{}", e.seq),
            name: name.into(),
            app: Some(job.clone()),
            node: e.node.clone(),
            value: None,
            threshold: None,
            text: format!("{job} is critical, {}", e.message.strip_prefix(&format!("{job} ")).unwrap_or(&e.message)),
            one_shot: true,
            webhooks: input.job_hooks.get(&job).cloned().unwrap_or_default(),
        });
    }
    // OOM kills are events: each one alerts once.
    for e in input.events.iter().filter(|e| e.kind == "instance.oom_killed") {
        let app = e.app.clone().unwrap_or_default();
        let instance = e.instance.clone().unwrap_or_default();
        let hooks =
            input.apps.iter().find(|a| a.id() == app).map(|a| a.spec.alert_webhooks.clone()).unwrap_or_default();
        out.seen.push(Seen {
            id: format!("{app}:oom_killed:{instance}"),
            name: "oom_killed".into(),
            app: Some(app.clone()),
            node: e.node.clone(),
            value: None,
            threshold: None,
            text: format!("{app} is critical, instance {instance} was OOM-killed: {}", e.message),
            one_shot: true,
            webhooks: hooks,
        });
    }
    out
}

/// Starts, repeats (every `repeat_ms` while it lasts) and resolves alerts; returns the notices to
/// send, each with the app's own webhooks (`hooks` for the resolved ones).
pub(crate) fn reconcile(
    state: &mut AlertState,
    seen: Vec<Seen>,
    repeat_ms: i64,
    hooks: &HashMap<String, Vec<String>>,
    now: Millis,
) -> Vec<(Alert, Vec<String>)> {
    let mut notices = Vec::new();
    let mut still: Vec<String> = Vec::new();
    for s in seen {
        still.push(s.id.clone());
        if let Some((alert, last_sent)) = state.firing.get_mut(&s.id) {
            alert.value = s.value;
            alert.text = s.text;
            if now - *last_sent >= repeat_ms {
                *last_sent = now;
                notices.push((alert.clone(), s.webhooks));
            }
            continue;
        }
        if s.one_shot && state.recent.iter().any(|a| a.id == s.id) {
            continue;
        }
        let alert = Alert {
            id: s.id.clone(),
            name: s.name,
            app: s.app,
            node: s.node,
            severity: "critical".into(),
            status: AlertStatus::Firing,
            value: s.value,
            threshold: s.threshold,
            text: s.text,
            started_at: now,
            resolved_at: None,
        };
        notices.push((alert.clone(), s.webhooks));
        if s.one_shot {
            push_recent(&mut state.recent, alert);
        } else {
            state.firing.insert(s.id, (alert, now));
        }
    }
    let ended: Vec<String> = state.firing.keys().filter(|id| !still.contains(id)).cloned().collect();
    for id in ended {
        if let Some((mut alert, _)) = state.firing.remove(&id) {
            alert.status = AlertStatus::Resolved;
            alert.resolved_at = Some(now);
            alert.text = resolved_text(&alert);
            let webhooks = alert.app.as_ref().and_then(|a| hooks.get(a)).cloned().unwrap_or_default();
            notices.push((alert.clone(), webhooks));
            push_recent(&mut state.recent, alert);
        }
    }
    notices
}

fn resolved_text(alert: &Alert) -> String {
    let subject = alert.app.clone().or_else(|| alert.node.as_ref().map(|n| format!("node {n}"))).unwrap_or_default();
    format!("{subject} is resolved: {}", alert.name.replace('_', " "))
}

fn push_recent(recent: &mut VecDeque<Alert>, alert: Alert) {
    recent.push_front(alert);
    recent.truncate(KEEP_RECENT);
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::{AppSpec, Backoff, Level, Resources};

    fn app(extra: &str) -> App {
        let spec = AppSpec::from_yaml(&format!("group: g\nname: web\nimage: i\n{extra}"), None).unwrap();
        App {
            instances: spec.instances,
            spec,
            version: 1,
            created_at: 0,
            updated_at: 0,
            destroying: false,
            backoff: Backoff::default(),
            alike: Vec::new(),
            stable_version: None,
            deployment: None,
        }
    }

    /// One instance of g/web at `cpu_percent`.
    fn usage(cpu_percent: f64) -> HashMap<String, AppLoad> {
        let mut load = AppLoad::default();
        load.add(cpu_percent, 0, None);
        HashMap::from([("g/web".to_string(), load)])
    }

    struct World {
        apps: Vec<App>,
        nodes: Vec<Node>,
        usage: HashMap<String, AppLoad>,
        traffic: HashMap<String, Traffic>,
        events: Vec<Event>,
    }

    impl World {
        fn new(apps: Vec<App>) -> World {
            World { apps, nodes: Vec::new(), usage: HashMap::new(), traffic: HashMap::new(), events: Vec::new() }
        }
        fn evaluate(&self, state: &mut AlertState, now: Millis) -> Evaluation {
            let policy = HashMap::new();
            let job_hooks = HashMap::from([("ops/backup".to_string(), vec!["http://127.0.0.1:9/hook".to_string()])]);
            let input = Input {
                apps: &self.apps,
                nodes: &self.nodes,
                loads: &self.usage,
                traffic: &self.traffic,
                rule_policy: &policy,
                events: &self.events,
                rules: &[],
                job_hooks: &job_hooks,
            };
            evaluate(&input, state, now)
        }
    }

    #[test]
    fn a_failed_or_missed_run_alerts_once_with_the_jobs_webhooks() {
        let mut world = World::new(vec![]);
        let event = |seq: u64, kind: &str, message: &str| Event {
            seq,
            time: 0,
            level: berth_core::Level::Error,
            kind: kind.into(),
            app: Some("ops/backup".into()),
            instance: None,
            node: None,
            message: message.into(),
        };
        world.events = vec![
            event(1, crate::jobs::RUN_FAILED, "ops/backup run 3 failed: failed after 2 attempts: exited with code 3"),
            event(2, crate::jobs::RUN_MISSED, "ops/backup run 4 missed: not started within starting_deadline (1m)"),
        ];
        let mut state = AlertState::default();
        let seen = world.evaluate(&mut state, 0).seen;
        assert_eq!(names_of(&seen), ["job_run_failed", "job_run_missed"]);
        assert!(seen.iter().all(|s| s.one_shot && s.webhooks == ["http://127.0.0.1:9/hook"]));
        assert_eq!(seen[0].text, "ops/backup is critical, run 3 failed: failed after 2 attempts: exited with code 3");
    }

    fn names_of(seen: &[Seen]) -> Vec<&str> {
        seen.iter().map(|s| s.name.as_str()).collect()
    }

    fn names(e: &Evaluation) -> Vec<&str> {
        e.seen.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn a_threshold_fires_only_after_its_for_and_forgets_when_it_drops() {
        let mut world = World::new(vec![app("alerts:\n  - metric: cpu\n    above: 80\n    for: 30s\n")]);
        world.usage = usage(95.0);
        let mut state = AlertState::default();
        assert!(world.evaluate(&mut state, 1_000).seen.is_empty(), "crossed, but not for 30s yet");
        assert!(world.evaluate(&mut state, 30_999).seen.is_empty());
        let fired = world.evaluate(&mut state, 31_000);
        assert_eq!(names(&fired), ["cpu"]);
        assert_eq!((fired.seen[0].value, fired.seen[0].threshold), (Some(95.0), Some(80.0)));
        assert_eq!(fired.seen[0].text, "g/web is critical, cpu usage is 95.00");
        world.usage = usage(10.0);
        assert!(world.evaluate(&mut state, 32_000).seen.is_empty());
        world.usage = usage(95.0);
        assert!(world.evaluate(&mut state, 33_000).seen.is_empty(), "the 30s start again");
    }

    #[test]
    fn built_in_conditions_are_seen() {
        let mut looping = app("");
        looping.backoff = Backoff { failures: 3, not_before: 0, last_failure_at: 0 };
        let mut world = World::new(vec![looping]);
        world.nodes = vec![Node {
            id: "n1".into(),
            hostname: "h1".into(),
            address: "127.0.0.1".into(),
            resources: Resources { cpu: 1.0, memory: 1, ports: (1, 2) },
            labels: Default::default(),
            drivers: Vec::new(),
            status: NodeStatus::Disconnected,
            registered_at: 0,
            last_heartbeat: 0,
            taken_ports: Default::default(),
            pool: berth_core::SHARED_POOL.into(),
            eligibility: Default::default(),
            drain: None,
            disconnected_at: None,
            quarantine: None,
            drivers_down: Default::default(),
        }];
        let mut aside = world.nodes[0].clone();
        aside.id = "n2".into();
        aside.status = NodeStatus::Ready;
        aside.quarantine = Some(berth_core::Quarantine { at: 0, why: "apps fail here".into(), released_at: None });
        world.nodes.push(aside);
        world.events = vec![Event {
            seq: 1,
            time: 0,
            level: Level::Error,
            kind: "instance.oom_killed".into(),
            app: Some("g/web".into()),
            instance: Some("web-1".into()),
            node: Some("n1".into()),
            message: "OOM-killed: over its memory limit".into(),
        }];
        let e = world.evaluate(&mut AlertState::default(), 0);
        assert_eq!(names(&e), ["crash_loop", "node_lost", "node_quarantined", "oom_killed"]);
        assert!(e.seen[2].text.contains("is quarantined: apps fail here"), "{:?}", e.seen[2]);
        assert!(e.seen[3].one_shot);
    }

    #[test]
    fn failing_rules_alert_and_are_told_once_a_minute() {
        let mut world = World::new(vec![app("")]);
        world.traffic.insert("g/web".into(), Traffic { rule_failures: [2, 1, 0], ..Traffic::default() });
        let mut state = AlertState::default();
        let first = world.evaluate(&mut state, 0);
        assert_eq!(names(&first), ["rule_failing"]);
        assert_eq!(first.seen[0].value, Some(3.0));
        assert_eq!(first.rule_events.len(), 1);
        assert!(world.evaluate(&mut state, 59_999).rule_events.is_empty());
        assert_eq!(world.evaluate(&mut state, 60_000).rule_events.len(), 1);
    }

    #[test]
    fn an_alert_fires_repeats_and_resolves() {
        let seen = |id: &str, one_shot| Seen {
            id: id.into(),
            name: "crash_loop".into(),
            app: Some("g/web".into()),
            node: None,
            value: None,
            threshold: None,
            text: "g/web is critical".into(),
            one_shot,
            webhooks: vec!["http://127.0.0.1:9/hook".into()],
        };
        let hooks = HashMap::from([("g/web".to_string(), vec!["http://127.0.0.1:9/hook".to_string()])]);
        let mut state = AlertState::default();
        let fired = reconcile(&mut state, vec![seen("a", false)], 1_000, &hooks, 0);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].0.status, AlertStatus::Firing);
        assert!(reconcile(&mut state, vec![seen("a", false)], 1_000, &hooks, 500).is_empty(), "not yet due again");
        assert_eq!(reconcile(&mut state, vec![seen("a", false)], 1_000, &hooks, 1_000).len(), 1, "repeated");
        let resolved = reconcile(&mut state, vec![], 1_000, &hooks, 2_000);
        assert_eq!(resolved[0].0.status, AlertStatus::Resolved);
        assert_eq!(resolved[0].0.text, "g/web is resolved: crash loop");
        assert_eq!(resolved[0].1, hooks["g/web"], "the app's own hooks hear it too");
        // A one-shot alert fires once however often it is seen.
        assert_eq!(reconcile(&mut state, vec![seen("oom", true)], 1_000, &hooks, 3_000).len(), 1);
        assert!(reconcile(&mut state, vec![seen("oom", true)], 1_000, &hooks, 9_000).is_empty());
    }

    #[test]
    fn an_apps_load_is_its_mean_cpu_and_its_fullest_memory() {
        let mut load = AppLoad::default();
        load.add(30.0, 50, Some(100));
        load.add(90.0, 10, None);
        load.add(60.0, 90, Some(100));
        assert_eq!(load.instances, 3);
        assert!((load.cpu_percent_sum / 3.0 - 60.0).abs() < 1e-9);
        assert_eq!(load.memory_percent_max, Some(90.0));
        let mut no_limits = AppLoad::default();
        no_limits.add(1.0, 10, None);
        assert_eq!(no_limits.memory_percent_max, None);
    }
}
