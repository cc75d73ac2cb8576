//! Alerts: built-in conditions (crash loop, OOM kill, node lost, deployment failed or rolled back)
//! and threshold rules (per app in the spec, or server-wide), evaluated every second. An alert
//! fires once, is repeated while it lasts, and says when it is resolved; notices go to webhooks
//! (JSON with a line for people) and to Prometheus' Alertmanager (its v2 API).

mod evaluate;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use berth_api::{Alert, AlertStatus};
use berth_core::{AlertRule, App, Millis, Output};
use tokio::sync::watch;

pub(crate) use evaluate::{AlertState, AppLoad};
use evaluate::{Input, Traffic, WINDOW_MS, evaluate, reconcile};

use crate::{Shared, lock, now_ms};

/// How alerts are sent.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// Every alert goes to these (`--alert-webhook`, `--alertmanager`): webhooks and Alertmanagers.
    pub outputs: Vec<Output>,
    /// Threshold rules for every app (`--alert-rule`).
    pub rules: Vec<AlertRule>,
    /// A firing alert is sent again this often.
    pub repeat: Duration,
    pub interval: Duration,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            outputs: Vec::new(),
            rules: Vec::new(),
            repeat: Duration::from_secs(4 * 3600),
            interval: Duration::from_secs(1),
        }
    }
}

pub(crate) async fn run(shared: Shared, mut shutdown: watch::Receiver<bool>) {
    let http = berth_tls::http_builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
    let config = shared.alert_config.clone();
    let mut last_am_push = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = shutdown.changed() => return,
        }
        let now = now_ms();
        let notices = match evaluate_now(&shared, &config, now) {
            Ok(notices) => notices,
            Err(e) => {
                tracing::warn!(error = %e, "evaluating alerts failed");
                continue;
            }
        };
        for (alert, app_outputs) in notices {
            match alert.status {
                AlertStatus::Firing => tracing::warn!(alert = %alert.id, text = %alert.text, "alert firing"),
                AlertStatus::Resolved => tracing::info!(alert = %alert.id, "alert resolved"),
            }
            // An app's own outputs were checked when its spec was accepted.
            let own = app_outputs.iter().filter_map(|o| Output::parse_alerts(o).ok());
            for output in config.outputs.iter().cloned().chain(own) {
                tokio::spawn(send(http.clone(), output, vec![alert.clone()]));
            }
        }
        // Alertmanager forgets alerts not sent again for a while: resend what fires.
        if now - last_am_push >= 30_000 {
            last_am_push = now;
            let firing: Vec<Alert> = lock(&shared.alerts).firing.values().map(|(a, _)| a.clone()).collect();
            for output in config.outputs.iter().filter(|o| matches!(o, Output::Alertmanager { .. })) {
                if !firing.is_empty() {
                    tokio::spawn(send(http.clone(), output.clone(), firing.clone()));
                }
            }
        }
    }
}

/// Gathers what the platform knows now, evaluates it (`evaluate.rs`), writes the events it calls
/// for, and returns the notices to send.
fn evaluate_now(
    shared: &Shared,
    config: &AlertConfig,
    now: Millis,
) -> Result<Vec<(Alert, Vec<String>)>, berth_store::StoreError> {
    let apps: Vec<App> = shared.state.apps()?.into_iter().map(|a| a.value).collect();
    let nodes = shared.nodes()?;
    let instances = shared.instances()?;
    let live: HashSet<&str> = instances
        .iter()
        .filter(|i| i.state.is_live() && i.desired == berth_core::Desired::Run)
        .map(|i| i.id.as_str())
        .collect();
    // Only instances that still run: an ended one's last sample says nothing about now.
    let loads = shared.usage.loads(now, |id| live.contains(id));
    let traffic = traffic_window(shared, now);
    let rule_policy: HashMap<String, &'static str> = traffic
        .iter()
        .filter(|(_, t)| t.rule_failures.iter().any(|n| *n > 0))
        .map(|(app, _)| (app.clone(), rule_policy(shared, app)))
        .collect();
    let after = lock(&shared.alerts).last_event;
    let events = shared.state.events(after, 10_000)?;
    let job_hooks: HashMap<String, Vec<String>> =
        shared.state.jobs()?.into_iter().map(|j| (j.value.id(), j.value.spec.alert_webhooks)).collect();
    let mut hooks: HashMap<String, Vec<String>> =
        apps.iter().map(|a| (a.id(), a.spec.alert_webhooks.clone())).collect();
    hooks.extend(job_hooks.iter().map(|(k, v)| (k.clone(), v.clone())));
    let input = Input {
        apps: &apps,
        nodes: &nodes,
        loads: &loads,
        traffic: &traffic,
        rule_policy: &rule_policy,
        events: &events,
        rules: &config.rules,
        job_hooks: &job_hooks,
    };
    let mut state = lock(&shared.alerts);
    if let Some(last) = events.last() {
        state.last_event = last.seq;
    }
    let evaluation = evaluate(&input, &mut state, now);
    let notices = reconcile(&mut state, evaluation.seen, config.repeat.as_millis() as i64, &hooks, now);
    drop(state);
    if !evaluation.rule_events.is_empty() {
        let mut txn = berth_store::Txn::default();
        for (app, text) in evaluation.rule_events {
            let subject = berth_store::state::Subject::app(&app);
            txn = shared.state.with_event(txn, now, berth_core::Level::Warn, "rules.failing", subject, text);
        }
        shared.state.commit(txn)?;
    }
    Ok(notices)
}

/// An app's rule policy on failure, for people.
fn rule_policy(shared: &Shared, app: &str) -> &'static str {
    let key = berth_store::state::rules_key("app", app);
    match shared.state.record::<berth_api::RuleScript>(&key) {
        Ok(Some(r)) => r.value.on_error.as_str(),
        _ => "open",
    }
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

/// Sends notices to one alert output.
async fn send(http: reqwest::Client, output: Output, alerts: Vec<Alert>) {
    match output {
        Output::Webhook { url } => {
            for alert in alerts {
                post_webhook(http.clone(), url.clone(), alert).await;
            }
        }
        Output::Alertmanager { url } => post_alertmanager(http, url, alerts).await,
        // Parsed as alert outputs: these never reach here.
        Output::Syslog { .. } | Output::Http { .. } => {}
    }
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
