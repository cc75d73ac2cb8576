//! Every output's health (log sinks, webhooks, Alertmanagers), checked as Vector checks its
//! sinks: a connect to where it sends, when the server starts and then every 30 s, so that an
//! output nobody can reach is known before a line or an alert is lost to it. A change is told as
//! an event; the state is `GET /v1/outputs` and `berth_output_up` on `/metrics`.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_api::OutputStatus;
use berth_core::{Carries, Level, Output};
use berth_store::state::Subject;
use tokio::sync::watch;

use crate::{Shared, lock, now_ms};

const CHECK_EVERY: Duration = Duration::from_secs(30);
const CONNECT_WITHIN: Duration = Duration::from_secs(2);

/// Connects to where `output` sends (a UDP syslog only resolves its address: it has nothing to
/// connect to).
pub(crate) async fn check(output: &Output) -> Result<(), String> {
    let Some(addr) = output.address() else { return Err("no address to reach".into()) };
    if matches!(output, Output::Syslog { udp: true, .. }) {
        let mut found = tokio::net::lookup_host(&addr).await.map_err(|e| format!("resolving {addr}: {e}"))?;
        return found.next().map(|_| ()).ok_or_else(|| format!("{addr} resolves to nothing"));
    }
    match tokio::time::timeout(CONNECT_WITHIN, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
        Err(_) => Err(format!("connect {addr}: no answer within {}s", CONNECT_WITHIN.as_secs())),
    }
}

/// Every output in use, with the apps that name it (none: a server-wide one).
fn in_use(shared: &Shared) -> BTreeMap<String, (Output, Vec<String>)> {
    let mut out: BTreeMap<String, (Output, Vec<String>)> = BTreeMap::new();
    for o in shared.forwarders.global.iter().chain(&shared.alert_config.outputs) {
        out.entry(o.to_string()).or_insert_with(|| (o.clone(), Vec::new()));
    }
    for app in shared.state.apps().unwrap_or_default().into_iter().map(|a| a.value) {
        let logs = app.spec.log_sinks.iter().filter_map(|s| Output::parse_logs(s).ok());
        let alerts = app.spec.alert_webhooks.iter().filter_map(|s| Output::parse_alerts(s).ok());
        for o in logs.chain(alerts) {
            out.entry(o.to_string()).or_insert_with(|| (o.clone(), Vec::new())).1.push(app.id());
        }
    }
    out
}

pub(crate) async fn run(shared: Shared, mut shutdown: watch::Receiver<bool>) {
    loop {
        let outputs = in_use(&shared);
        let checks = outputs.into_iter().map(|(name, (output, apps))| async move {
            let result = check(&output).await;
            let carries = match output.carries() {
                Carries::Logs => "logs",
                Carries::Alerts => "alerts",
            };
            OutputStatus {
                output: name,
                carries: carries.into(),
                apps,
                healthy: result.is_ok(),
                checked_at: now_ms(),
                error: result.err(),
            }
        });
        let statuses = futures_util::future::join_all(checks).await;
        record(&shared, statuses);
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Keeps the new statuses and tells the changes as events.
fn record(shared: &Shared, statuses: Vec<OutputStatus>) {
    let mut txn = berth_store::Txn::default();
    {
        let mut known = lock(&shared.outputs);
        for s in &statuses {
            let was = known.get(&s.output).map(|k| k.healthy);
            if was == Some(s.healthy) || (was.is_none() && s.healthy) {
                continue;
            }
            let (level, kind, msg) = if s.healthy {
                (Level::Info, "output.reachable", format!("{} is reachable again", s.output))
            } else {
                let why = s.error.clone().unwrap_or_default();
                (Level::Warn, "output.unreachable", format!("{} cannot be reached: {why}", s.output))
            };
            txn = shared.state.with_event(txn, s.checked_at, level, kind, Subject::default(), msg);
        }
        *known = statuses.into_iter().map(|s| (s.output.clone(), s)).collect();
    }
    if !txn.is_empty()
        && let Err(e) = shared.state.commit(txn)
    {
        tracing::warn!(error = %e, "recording output health failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_connects_where_the_output_sends() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Output::parse_logs(&format!("syslog+tcp://127.0.0.1:{port}")).unwrap();
        assert_eq!(check(&up).await, Ok(()));
        drop(listener);
        let down = Output::parse_alerts(&format!("http://127.0.0.1:{port}/hook")).unwrap();
        let err = check(&down).await.unwrap_err();
        assert!(err.starts_with(&format!("connect 127.0.0.1:{port}")), "{err}");
        let udp = Output::parse_logs("syslog+udp://127.0.0.1:9").unwrap();
        assert_eq!(check(&udp).await, Ok(()), "nothing to connect to: resolving is the check");
    }
}
