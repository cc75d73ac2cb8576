//! Alerts: built-in conditions (crash loop, OOM kill, node lost, deployment failed or rolled back)
//! and threshold rules (per app in the spec, or server-wide), evaluated every second. An alert
//! fires once, is repeated while it lasts, and says when it is resolved; notices go to webhooks
//! (JSON with a line for people) and to Prometheus' Alertmanager (its v2 API).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use berth_api::{Alert, AlertStatus, RouterCounts};
use berth_core::{AlertMetric, AlertRule, DeploymentState, Millis, NodeStatus};
use tokio::sync::watch;

use crate::{Shared, lock, now_ms};
/// How alerts are sent.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// Every alert goes here (`--alert-webhook`).
    pub webhooks: Vec<String>,
    /// Prometheus Alertmanager base URL (`--alertmanager`).
    pub alertmanager: Option<String>,
    /// Threshold rules for every app (`--alert-rule`).
    pub rules: Vec<AlertRule>,
    /// A firing alert is sent again this often.
    pub repeat: Duration,
    pub interval: Duration,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            webhooks: Vec::new(),
            alertmanager: None,
            rules: Vec::new(),
            repeat: Duration::from_secs(4 * 3600),
            interval: Duration::from_secs(1),
        }
    }
}

const KEEP_RECENT: usize = 200;

/// Router counts are compared over this window for 5xx rate and latency.
const WINDOW_MS: i64 = 10_000;

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

/// A failing rule is told as an event at most this often per app.
const RULE_EVENT_EVERY_MS: i64 = 60_000;

/// A condition seen in one evaluation.
struct Seen {
    id: String,
    name: String,
    app: Option<String>,
    node: Option<String>,
    value: Option<f64>,
    threshold: Option<f64>,
    text: String,
    /// Fires once and ends by itself (an OOM kill is an event, not a state).
    one_shot: bool,
    /// Apps' own webhooks.
    webhooks: Vec<String>,
}

pub(crate) async fn run(shared: Shared, mut shutdown: watch::Receiver<bool>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
    let config = shared.alert_config.clone();
    let mut last_am_push = 0;
    // Events from before this start were alerted on (or not) by the previous run.
    lock(&shared.alerts).last_event = shared.state.last_event_seq();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = shutdown.changed() => return,
        }
        let now = now_ms();
        let seen = match evaluate(&shared, &config, now) {
            Ok(seen) => seen,
            Err(e) => {
                tracing::warn!(error = %e, "evaluating alerts failed");
                continue;
            }
        };
        let notices = reconcile(&shared, &config, seen, now);
        for (alert, webhooks) in notices {
            for hook in config.webhooks.iter().chain(webhooks.iter()) {
                tokio::spawn(post_webhook(http.clone(), hook.clone(), alert.clone()));
            }
            if let Some(am) = &config.alertmanager {
                tokio::spawn(post_alertmanager(http.clone(), am.clone(), vec![alert.clone()]));
            }
        }
        // Alertmanager forgets alerts not sent again for a while: resend what fires.
        if let Some(am) = &config.alertmanager
            && now - last_am_push >= 30_000
        {
            last_am_push = now;
            let firing: Vec<Alert> = lock(&shared.alerts).firing.values().map(|(a, _)| a.clone()).collect();
            if !firing.is_empty() {
                tokio::spawn(post_alertmanager(http.clone(), am.clone(), firing));
            }
        }
    }
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
fn evaluate(shared: &Shared, config: &AlertConfig, now: Millis) -> Result<Vec<Seen>, berth_store::StoreError> {
    let apps: Vec<berth_core::App> = shared.state.apps()?.into_iter().map(|a| a.value).collect();
    let nodes = shared.state.nodes()?;
    let live: std::collections::HashSet<String> = shared
        .instances()?
        .into_iter()
        .filter(|i| i.state.is_live() && i.desired == berth_core::Desired::Run)
        .map(|i| i.id)
        .collect();
    // Only instances that still run: an ended one's last sample says nothing about now.
    let usage: HashMap<String, berth_api::InstanceUsage> =
        shared.usage.current(now).into_iter().filter(|(id, _)| live.contains(id)).collect();
    let traffic = traffic_window(shared, now);
    let mut seen = Vec::new();
    for app in apps.iter().filter(|a| !a.destroying) {
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
            seen.push(s);
        }
        if let Some(d) = &app.deployment
            && matches!(d.state, DeploymentState::Failed | DeploymentState::RolledBack)
        {
            let verb = if d.state == DeploymentState::Failed { "failed" } else { "was rolled back" };
            let why = d.message.clone().unwrap_or_default();
            seen.push(base(
                "deployment_failed",
                format!("{id} is critical, the deployment of v{} {verb}: {why}", d.version),
            ));
        }
        // Its rules raised or ran out of budget on requests in the last window: those requests were
        // served as if there were no rule (or refused, if closed), which nobody chose.
        if let Some(t) = traffic.get(&id)
            && let failed @ 1.. = t.rule_failures[0] + t.rule_failures[1]
        {
            let text = format!(
                "{id} is warning, its rules failed on {failed} request(s) in the last {}s ({} raised, {} ran out of budget; on_error {})",
                WINDOW_MS / 1000,
                t.rule_failures[0],
                t.rule_failures[1],
                rule_policy(shared, &id),
            );
            let mut s = base("rule_failing", text.clone());
            s.value = Some(failed as f64);
            seen.push(s);
            let due = {
                let mut state = lock(&shared.alerts);
                let last = state.rule_events.entry(id.clone()).or_insert(i64::MIN / 2);
                let due = now - *last >= RULE_EVENT_EVERY_MS;
                if due {
                    *last = now;
                }
                due
            };
            if due {
                let txn = shared.state.with_event(
                    berth_store::Txn::default(),
                    now,
                    berth_core::Level::Warn,
                    "rules.failing",
                    berth_store::state::Subject::app(&id),
                    text,
                );
                shared.state.commit(txn)?;
            }
        }
        let mine: Vec<&berth_api::InstanceUsage> = usage.values().filter(|u| u.app == id).collect();
        for rule in app.spec.alerts.iter().chain(config.rules.iter()) {
            let value = match rule.metric {
                AlertMetric::Cpu if !mine.is_empty() => {
                    Some(mine.iter().map(|u| u.cpu_percent).sum::<f64>() / mine.len() as f64)
                }
                AlertMetric::Cpu => Some(0.0),
                AlertMetric::Memory => mine
                    .iter()
                    .filter_map(|u| u.memory_limit_bytes.map(|l| u.memory_bytes as f64 / l as f64 * 100.0))
                    .reduce(f64::max),
                AlertMetric::Restarts => Some(f64::from(app.backoff.failures)),
                AlertMetric::ErrorRate => {
                    traffic.get(&id).map(|t| if t.total == 0 { 0.0 } else { t.errors as f64 / t.total as f64 * 100.0 })
                }
                AlertMetric::Latency => {
                    traffic.get(&id).map(|t| if t.total == 0 { 0.0 } else { t.ms / t.total as f64 })
                }
            };
            let Some(value) = value else { continue };
            let key = format!("{id}:{}", rule.metric.as_str());
            if value > rule.above {
                let since = *lock(&shared.alerts).pending.entry(key.clone()).or_insert(now);
                if now - since >= rule.for_.as_millis() as i64 {
                    let mut s =
                        base(rule.metric.as_str(), format!("{id} is critical, {}", value_text(rule.metric, value)));
                    s.value = Some(value);
                    s.threshold = Some(rule.above);
                    seen.push(s);
                }
            } else {
                lock(&shared.alerts).pending.remove(&key);
            }
        }
    }
    for n in nodes.iter().map(|n| &n.value).filter(|n| n.status == NodeStatus::Down) {
        seen.push(Seen {
            id: format!("node:{}:node_lost", n.id),
            name: "node_lost".into(),
            app: None,
            node: Some(n.id.clone()),
            value: None,
            threshold: None,
            text: format!("node {} ({}) is lost: no heartbeat", n.id, n.hostname),
            one_shot: false,
            webhooks: Vec::new(),
        });
    }
    // OOM kills are events: each one alerts once.
    let after = lock(&shared.alerts).last_event;
    let events = shared.state.events(after, 10_000)?;
    if let Some(last) = events.last() {
        lock(&shared.alerts).last_event = last.seq;
    }
    for e in events.iter().filter(|e| e.kind == "instance.oom_killed") {
        let app = e.app.clone().unwrap_or_default();
        let instance = e.instance.clone().unwrap_or_default();
        let hooks = apps.iter().find(|a| a.id() == app).map(|a| a.spec.alert_webhooks.clone()).unwrap_or_default();
        seen.push(Seen {
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
    Ok(seen)
}

/// An app's rule policy on failure, for people.
fn rule_policy(shared: &Shared, app: &str) -> &'static str {
    let key = berth_store::state::rules_key("app", app);
    match shared.state.record::<berth_api::RuleScript>(&key) {
        Ok(Some(r)) => r.value.on_error.as_str(),
        _ => "open",
    }
}

/// Per app over the last window: requests, 5xx answers, total latency ms, and requests its rules
/// failed on, by failure (in the order of `RULE_FAILURES`).
struct Traffic {
    total: u64,
    errors: u64,
    ms: f64,
    rule_failures: [u64; 3],
}

fn traffic_window(shared: &Shared, now: Millis) -> HashMap<String, Traffic> {
    let totals = crate::usage::router_totals(shared, now);
    let mut state = lock(&shared.alerts);
    let mut out = HashMap::new();
    for (app, counts) in totals {
        let history = state.traffic.entry(app.clone()).or_default();
        history.push_back((now, counts.clone()));
        while history.front().is_some_and(|(t, _)| now - t > WINDOW_MS) && history.len() > 1 {
            history.pop_front();
        }
        let Some((_, old)) = history.front() else { continue };
        let total: u64 = counts.by_class.iter().sum::<u64>().saturating_sub(old.by_class.iter().sum());
        let errors = counts.by_class[4].saturating_sub(old.by_class[4]);
        let ms = (counts.latency_sum_ms - old.latency_sum_ms).max(0.0);
        let mut rule_failures = [0u64; 3];
        for (i, f) in rule_failures.iter_mut().enumerate() {
            *f = counts.rule_failures[i].saturating_sub(old.rule_failures[i]);
        }
        out.insert(app, Traffic { total, errors, ms, rule_failures });
    }
    out
}

/// Starts, repeats and resolves alerts; returns the notices to send.
fn reconcile(shared: &Shared, config: &AlertConfig, seen: Vec<Seen>, now: Millis) -> Vec<(Alert, Vec<String>)> {
    let mut state = lock(&shared.alerts);
    let mut notices = Vec::new();
    let mut still: Vec<String> = Vec::new();
    for s in seen {
        still.push(s.id.clone());
        if let Some((alert, last_sent)) = state.firing.get_mut(&s.id) {
            alert.value = s.value;
            alert.text = s.text;
            if now - *last_sent >= config.repeat.as_millis() as i64 {
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
        tracing::warn!(alert = %alert.id, text = %alert.text, "alert firing");
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
            tracing::info!(alert = %alert.id, "alert resolved");
            let hooks = hooks_of(shared, alert.app.as_deref());
            notices.push((alert.clone(), hooks));
            push_recent(&mut state.recent, alert);
        }
    }
    notices
}

fn resolved_text(alert: &Alert) -> String {
    let subject = alert.app.clone().or_else(|| alert.node.as_ref().map(|n| format!("node {n}"))).unwrap_or_default();
    format!("{subject} is resolved: {}", alert.name.replace('_', " "))
}

fn hooks_of(shared: &Shared, app: Option<&str>) -> Vec<String> {
    app.and_then(|id| shared.state.app(id).ok().flatten()).map(|a| a.value.spec.alert_webhooks).unwrap_or_default()
}

fn push_recent(recent: &mut VecDeque<Alert>, alert: Alert) {
    recent.push_front(alert);
    recent.truncate(KEEP_RECENT);
}

/// Posts an alert as JSON; a few tries with backoff, then it is logged as lost.
async fn post_webhook(http: reqwest::Client, url: String, alert: Alert) {
    for attempt in 0..3u32 {
        match http.post(&url).json(&alert).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::debug!(%url, status = %r.status(), "alert webhook refused"),
            Err(e) => tracing::debug!(%url, error = %e, "alert webhook unreachable"),
        }
        tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt))).await;
    }
    tracing::warn!(%url, alert = %alert.id, "alert webhook failed three times; notice lost");
}

fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_default()
}

/// Alertmanager's v2 API: labels name the alert, the text goes in the summary.
async fn post_alertmanager(http: reqwest::Client, base: String, alerts: Vec<Alert>) {
    let body: Vec<serde_json::Value> = alerts
        .iter()
        .map(|a| {
            let mut labels = serde_json::json!({"alertname": a.name, "severity": a.severity, "source": "berth"});
            if let Some(app) = &a.app {
                labels["app"] = app.clone().into();
            }
            if let Some(node) = &a.node {
                labels["node"] = node.clone().into();
            }
            let mut alert = serde_json::json!({
                "labels": labels,
                "annotations": {"summary": a.text},
                "startsAt": rfc3339(a.started_at),
            });
            if let Some(end) = a.resolved_at {
                alert["endsAt"] = rfc3339(end).into();
            }
            alert
        })
        .collect();
    let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
    for attempt in 0..3u32 {
        match http.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::debug!(%url, status = %r.status(), "alertmanager refused alerts"),
            Err(e) => tracing::debug!(%url, error = %e, "alertmanager unreachable"),
        }
        tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt))).await;
    }
    tracing::warn!(%url, "alertmanager failed three times; alerts not delivered");
}
