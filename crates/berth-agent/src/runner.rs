//! One supervisor per instance: start or adopt it, watch its health and its exit, stop it when
//! asked, and say what happened.

use std::time::{Duration, Instant};

use berth_api::{Assignment, Client, InstanceReport};
use berth_core::spec::DriverKind;
use berth_core::{InstanceState, Reason};
use tokio::sync::{mpsc, watch};

use crate::driver::{Driver, Handle, instance_env};
use crate::logs::{LogBuffers, Origin};
use crate::ports::{self, TakenPorts};
use crate::report::Reporter;
use berth_probe as health;

use crate::now_ms;

/// A failed start because another process holds some of the instance's ports.
fn port_taken(id: &str, held: Vec<u16>) -> InstanceReport {
    InstanceReport { taken_ports: held.clone(), ..InstanceReport::new(id, InstanceState::Failed) }
        .finished(now_ms())
        .because(Reason::PortsTaken { ports: held })
}

/// Runs until the instance ends; sends its id on `done` when it has.
pub async fn supervise(
    a: Assignment,
    driver: Driver,
    adopted: Option<Handle>,
    reports: Reporter,
    mut stop: watch::Receiver<bool>,
    done: mpsc::UnboundedSender<String>,
    services: Services,
) {
    let id = a.instance.id.clone();
    run(&a, &driver, adopted, &reports, &mut stop, &services).await;
    let _ = done.send(id);
}

async fn run(
    a: &Assignment,
    driver: &Driver,
    adopted: Option<Handle>,
    reports: &Reporter,
    stop: &mut watch::Receiver<bool>,
    services: &Services,
) {
    let id = a.instance.id.as_str();
    let grace = a.spec.stop_timeout.as_duration();
    let was_adopted = adopted.is_some();
    // Read once: the start is given them, and `exec` runs commands with them.
    let secrets = secrets_of(a, services).await;
    let handle = match adopted {
        Some(h) => {
            tracing::info!(instance = id, handle = %h.id, "adopted instance that outlived the agent");
            h
        }
        None => {
            let held = ports::held(&a.instance.host_ports);
            if !held.is_empty() {
                tracing::warn!(instance = id, ports = ?held, "host ports held by another process; not starting");
                services.taken.add(&held);
                reports.send(port_taken(id, held));
                return;
            }
            let secrets = match &secrets {
                Ok(secrets) => secrets,
                Err(e) => {
                    tracing::warn!(instance = id, error = %e, "cannot read the instance's secrets; not starting");
                    let error = format!("cannot read its secrets: {e}");
                    reports.send(
                        InstanceReport::new(id, InstanceState::Failed)
                            .finished(now_ms())
                            .because(Reason::StartFailed { error }),
                    );
                    return;
                }
            };
            let env = instance_env(a, driver.kind(), secrets);
            let started = tokio::select! {
                started = driver.start(a, &env) => started,
                changed = stop.changed() => {
                    if changed.is_err() {
                        // The agent is going away: whatever the start left, the next agent adopts
                        // or clears as a survivor.
                        return;
                    }
                    reports.send(InstanceReport::new(id, InstanceState::Stopped).finished(now_ms()).because(Reason::StoppedBeforeStart));
                    return;
                }
            };
            match started {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(instance = id, error = %e, "start failed");
                    // Taken between the check and the start (Docker's proxy could not bind).
                    let held = ports::held(&a.instance.host_ports);
                    if !held.is_empty() {
                        services.taken.add(&held);
                        reports.send(port_taken(id, held));
                        driver.remove_leftovers(id, &services.cursors);
                        return;
                    }
                    reports.send(
                        InstanceReport::new(id, InstanceState::Failed)
                            .finished(now_ms())
                            .because(Reason::StartFailed { error: e.to_string() }),
                    );
                    driver.remove_leftovers(id, &services.cursors);
                    return;
                }
            }
        }
    };
    // Reachable by `exec` while it runs, with the environment it was started with.
    let secrets = secrets.unwrap_or_else(|e| {
        tracing::warn!(instance = id, error = %e, "cannot read the adopted instance's secrets: commands run without them");
        Default::default()
    });
    let env = instance_env(a, driver.kind(), &secrets);
    crate::lock(&services.live).insert(id.to_string(), (driver.clone(), handle.clone(), env));
    let started_at = if was_adopted { a.instance.observed.started_at.unwrap_or_else(now_ms) } else { now_ms() };
    let mut base = InstanceReport::new(id, InstanceState::Starting);
    base.observed.handle = Some(handle.id.clone());
    base.observed.started_at = Some(started_at);
    match &a.spec.health {
        None => reports.send(InstanceReport { state: InstanceState::Running, ..base.clone() }),
        // An adopted instance keeps its state until its health says otherwise.
        Some(_) if was_adopted && a.instance.state == InstanceState::Running => {}
        Some(_) => reports.send(base.clone()),
    }

    let origin = Origin { app: a.instance.app.clone(), instance: id.to_string(), node: services.node.clone() };
    let (ended_tx, ended_rx) = watch::channel(false);
    let collector = driver.collect_logs(&handle, origin, services.logs.clone(), ended_rx.clone(), &services.cursors);
    let sampler =
        tokio::spawn(sample(driver.clone(), handle.clone(), a.instance.app.clone(), services.clone(), ended_rx));
    let ended = run_to_end(a, driver, &handle, reports, stop, services, &base, was_adopted, grace).await;
    // The last lines are read before the collector goes.
    let _ = ended_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), collector).await;
    sampler.abort();
    crate::lock(&services.live).remove(id);
    // Its last lines are reported and its output collected: nothing of it is needed any more.
    // One left running keeps what the next agent needs to adopt it (its proc.json, its cursors).
    if ended == Ended::Yes {
        driver.remove_leftovers(id, &services.cursors);
    }
}

/// The values of the secrets the instance's environment refers to, from the server (which hands
/// them to this node's agent only, for an instance placed here); none asked when it has none.
async fn secrets_of(
    a: &Assignment,
    services: &Services,
) -> Result<std::collections::BTreeMap<String, String>, berth_api::ClientError> {
    if a.spec.environment.values().all(|v| v.secret().is_none()) {
        return Ok(Default::default());
    }
    Ok(services.client.instance_secrets(&services.node, &a.instance.id).await?.environment)
}

/// Whether the instance ended, or was left running because the agent is going away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Yes,
    LeftRunning,
}

/// Samples the instance's resource use every interval until it ends.
async fn sample(driver: Driver, handle: Handle, app: String, services: Services, mut ended: watch::Receiver<bool>) {
    loop {
        if let Some(reading) = driver.read_usage(&handle).await {
            services.metrics.record(reading.into_sample(&app, &handle.instance));
        }
        tokio::select! {
            _ = tokio::time::sleep(services.metrics_interval) => {}
            _ = ended.changed() => return,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_to_end(
    a: &Assignment,
    driver: &Driver,
    handle: &Handle,
    reports: &Reporter,
    stop: &mut watch::Receiver<bool>,
    services: &Services,
    base: &InstanceReport,
    was_adopted: bool,
    grace: Duration,
) -> Ended {
    let id = a.instance.id.as_str();
    let exited = driver.wait(handle);
    let unhealthy = watch_health(a, reports, base, was_adopted);
    tokio::pin!(exited, unhealthy);
    tokio::select! {
        exit = &mut exited => {
            tracing::info!(instance = id, reason = %exit, "instance ended");
            let last_log = driver.tail(handle, LAST_LOG_LINES).await;
            // A process binds its ports itself: one that lost a port to another process between
            // the check and its bind exits, and the port is still held now that it is gone.
            let held = if driver.kind() == DriverKind::Exec { ports::held(&a.instance.host_ports) } else { Vec::new() };
            if !held.is_empty() {
                services.taken.add(&held);
                let taken = port_taken(id, held);
                let mut failed = base.clone().with_state(InstanceState::Failed).last_log(last_log);
                failed.observed.exit_code = exit.exit_code;
                failed.observed.reason = taken.observed.reason;
                failed.observed.cause = taken.observed.cause;
                failed.observed.finished_at = taken.observed.finished_at;
                failed.taken_ports = taken.taken_ports;
                reports.send(failed);
            } else {
                // A job's attempt is meant to end: code 0 is its success.
                let ok = a.instance.run.is_some() && exit.exit_code == Some(0) && !exit.oom_killed;
                let state = if ok { InstanceState::Succeeded } else { InstanceState::Failed };
                reports.send(
                    base.clone()
                        .with_state(state)
                        .exited(&exit)
                        .last_log(last_log)
                        .finished(now_ms())
                        .because(Reason::Exited(exit)),
                );
            }
            // Clear what the runtime keeps of it (a stopped container).
            let _ = driver.stop(handle, Duration::from_millis(1)).await;
        }
        why = &mut unhealthy => {
            tracing::info!(instance = id, %why, "instance unhealthy; stopping it");
            let last_log = driver.tail(handle, LAST_LOG_LINES).await;
            if let Err(e) = driver.stop(handle, grace).await {
                tracing::warn!(instance = id, error = %e, "stop failed");
            }
            reports.send(
                base.clone()
                    .with_state(InstanceState::Failed)
                    .healthy(Some(false))
                    .last_log(last_log)
                    .finished(now_ms())
                    .because(Reason::Unhealthy { result: why }),
            );
        }
        changed = stop.changed() => {
            if changed.is_err() {
                // The agent is going away, not the instance: instances outlive Berth, and the
                // next agent adopts it. Stopping it here would also drain every instance at once.
                return Ended::LeftRunning;
            }
            // Routers stop choosing a stopping instance at once; what they already sent finishes
            // before the signal.
            if !a.instance.host_ports.is_empty() {
                wait_for_drain(&services.client, id, a.spec.drain_timeout.as_duration()).await;
            }
            if let Err(e) = driver.stop(handle, grace).await {
                tracing::warn!(instance = id, error = %e, "stop failed");
            }
            reports.send(base.clone().with_state(InstanceState::Stopped).finished(now_ms()));
        }
    }
    Ended::Yes
}

/// What every supervisor shares: the control plane, the log buffers, and where cursors live.
#[derive(Clone)]
pub struct Services {
    pub client: Client,
    pub logs: LogBuffers,
    pub metrics: crate::metrics::MetricsSink,
    pub metrics_interval: Duration,
    pub node: String,
    pub cursors: std::path::PathBuf,
    pub taken: TakenPorts,
    /// Instances running now, for `exec`: their driver, handle and environment.
    pub live: LiveInstances,
}

pub type LiveInstances = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, LiveEntry>>>;

/// A running instance's driver, handle and environment.
pub type LiveEntry = (Driver, Handle, std::collections::BTreeMap<String, String>);

/// Waits until every router has stopped sending the instance requests and has none in flight to
/// it, up to `timeout`. A control plane that cannot answer leaves the timeout to decide.
async fn wait_for_drain(client: &Client, id: &str, timeout: Duration) {
    let started = std::time::Instant::now();
    let mut last = String::new();
    while started.elapsed() < timeout {
        match client.drain_status(id).await {
            Ok(s) if s.drained => {
                tracing::debug!(instance = id, took_ms = started.elapsed().as_millis() as u64, "drained");
                return;
            }
            Ok(s) => last = s.waiting_for.join("; "),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(DRAIN_POLL.min(timeout.saturating_sub(started.elapsed()))).await;
    }
    tracing::info!(instance = id, waiting_for = %last, "drain timeout reached; stopping anyway");
}

/// How often a stopping instance asks whether routers are done with it.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// A check that keeps failing the same way has its reason said again this often.
const REASON_EVERY: Duration = Duration::from_secs(10);

/// Lines of output kept with a failed instance, for `status` to show why it died.
const LAST_LOG_LINES: usize = 10;

/// Probes until the instance fails its check `max_failures` times in a row; never returns
/// when there is no check. Failures inside the grace period do not count until the first pass.
async fn watch_health(a: &Assignment, reports: &Reporter, base: &InstanceReport, was_adopted: bool) -> String {
    let Some(spec) = a.spec.health.clone() else {
        return std::future::pending().await;
    };
    let Some(port) = a.instance.host_ports.get(spec.port_index).copied() else {
        return std::future::pending().await;
    };
    let host = a.instance.host.clone();
    let begun = Instant::now();
    let mut passed_once = was_adopted && a.instance.observed.healthy == Some(true);
    let mut healthy_said: Option<bool> = None;
    let mut failures = 0u32;
    // The last failure said, so that a check failing the same way is not reported every probe.
    let mut reason_said: Option<(health::Kind, Instant)> = None;
    loop {
        match health::probe(&spec, &host, port).await {
            Ok(()) => {
                failures = 0;
                passed_once = true;
                reason_said = None;
                if healthy_said != Some(true) {
                    reports.send(base.clone().with_state(InstanceState::Running).healthy(Some(true)));
                    healthy_said = Some(true);
                }
            }
            Err(why) => {
                // The instance's reason while it starts or is unhealthy: why its check fails.
                let kind = why.kind();
                let stale = reason_said.as_ref().is_none_or(|(k, at)| *k != kind || at.elapsed() >= REASON_EVERY);
                if stale {
                    let state = if passed_once { InstanceState::Running } else { InstanceState::Starting };
                    let healthy = passed_once.then_some(false).or(base.observed.healthy);
                    reports.send(
                        base.clone()
                            .with_state(state)
                            .healthy(healthy)
                            .because(Reason::HealthCheck { result: why.to_string() }),
                    );
                    reason_said = Some((kind, Instant::now()));
                    if passed_once {
                        healthy_said = Some(false);
                    }
                }
                let in_grace = !passed_once && begun.elapsed() < spec.grace.as_duration();
                if !in_grace {
                    failures += 1;
                    if failures >= spec.max_failures {
                        return format!("health check failed {failures} time(s) in a row: {why}");
                    }
                    if healthy_said != Some(false) && passed_once {
                        reports.send(base.clone().with_state(InstanceState::Running).healthy(Some(false)));
                        healthy_said = Some(false);
                    }
                }
            }
        }
        tokio::time::sleep(health::interval(&spec, passed_once)).await;
    }
}

#[cfg(test)]
mod tests {
    use berth_core::{Exit, Instance, Reason};
    use tokio::sync::mpsc::UnboundedReceiver;

    use super::*;
    use crate::driver::fake::FakeDriver;

    fn assignment(id: &str) -> Assignment {
        let spec =
            berth_core::AppSpec::from_yaml("group: g\nname: web\ndriver: exec\ncommand: [x]\nnetwork: none\n", None)
                .unwrap();
        let instance: Instance = serde_json::from_value(serde_json::json!({
            "id": id, "app": "g/web", "version": 1, "node": "n1", "driver": "exec", "state": "staging",
            "desired": "run", "host_ports": [], "host": "127.0.0.1", "created_at": 0
        }))
        .unwrap();
        Assignment { spec, instance }
    }

    fn services(dir: &std::path::Path) -> Services {
        Services {
            // Never called: the instances have no ports to drain.
            client: Client::new("http://127.0.0.1:9").unwrap(),
            logs: LogBuffers::default(),
            metrics: crate::metrics::MetricsSink::default(),
            metrics_interval: Duration::from_secs(3600),
            node: "n1".into(),
            cursors: dir.to_path_buf(),
            taken: TakenPorts::default(),
            live: LiveInstances::default(),
        }
    }

    async fn next(reports: &mut UnboundedReceiver<InstanceReport>) -> InstanceReport {
        tokio::time::timeout(Duration::from_secs(5), reports.recv()).await.expect("a report in time").expect("a report")
    }

    #[tokio::test]
    async fn an_instance_that_exits_is_reported_failed_with_how_it_ended() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeDriver::with_last_lines(&["boom"]);
        let (reporter, mut reports) = Reporter::capture();
        let (_stop_tx, stop) = watch::channel(false);
        let (done_tx, mut done) = mpsc::unbounded_channel();
        let sv = services(dir.path());
        let task = tokio::spawn(supervise(assignment("a"), fake.driver(), None, reporter, stop, done_tx, sv.clone()));
        assert_eq!(next(&mut reports).await.state, InstanceState::Running, "no health check: running once started");
        assert!(crate::lock(&sv.live).contains_key("a"), "reachable by exec while it runs");
        fake.exit("a", Exit { exit_code: Some(3), ..Default::default() });
        let failed = next(&mut reports).await;
        assert_eq!(failed.state, InstanceState::Failed);
        assert_eq!(failed.observed.cause, Some(Reason::Exited(Exit { exit_code: Some(3), ..Default::default() })));
        assert_eq!(
            (failed.observed.reason.as_deref(), failed.observed.last_log.as_slice()),
            (Some("exited with code 3"), &["boom".to_string()][..])
        );
        assert_eq!(done.recv().await.as_deref(), Some("a"));
        task.await.unwrap();
        assert!(!crate::lock(&sv.live).contains_key("a"));
        assert_eq!(fake.started(), ["a"]);
    }

    #[tokio::test]
    async fn a_stopped_instance_is_stopped_through_its_driver_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeDriver::default();
        let (reporter, mut reports) = Reporter::capture();
        let (stop_tx, stop) = watch::channel(false);
        let (done_tx, mut done) = mpsc::unbounded_channel();
        tokio::spawn(supervise(assignment("b"), fake.driver(), None, reporter, stop, done_tx, services(dir.path())));
        assert_eq!(next(&mut reports).await.state, InstanceState::Running);
        stop_tx.send(true).unwrap();
        assert_eq!(next(&mut reports).await.state, InstanceState::Stopped);
        assert_eq!(done.recv().await.as_deref(), Some("b"));
        assert_eq!(fake.stopped(), ["b"]);
        assert_eq!(fake.cleared(), ["b"]);
    }

    #[tokio::test]
    async fn an_agent_going_away_leaves_its_instances_running_for_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeDriver::default();
        let (reporter, mut reports) = Reporter::capture();
        let (stop_tx, stop) = watch::channel(false);
        let (done_tx, mut done) = mpsc::unbounded_channel();
        let sv = services(dir.path());
        tokio::spawn(supervise(assignment("c"), fake.driver(), None, reporter, stop, done_tx, sv.clone()));
        assert_eq!(next(&mut reports).await.state, InstanceState::Running);
        // What the agent's shutdown does: its end of every instance's stop channel goes.
        drop(stop_tx);
        assert_eq!(done.recv().await.as_deref(), Some("c"));
        assert!(fake.stopped().is_empty(), "left running, not stopped: {:?}", fake.stopped());
        assert!(reports.try_recv().is_err(), "nothing reported: the instance did not change");
        assert!(fake.cleared().is_empty(), "what adoption needs is kept: {:?}", fake.cleared());
    }
}
