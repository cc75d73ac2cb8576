//! Follows the control plane's route watch and swaps in a new table when routes change.

use berth_core::retry::Retry;
use std::sync::Arc;
use std::time::Duration;

use berth_api::Client;
use tokio::sync::watch;

use crate::health::Checker;
use crate::proxy::Proxy;
use crate::table::{self, Registry, Scope};

/// Runs until shutdown. While the control plane is away the last table keeps serving.
pub async fn follow(
    client: Client,
    proxy: Arc<Proxy>,
    registry: Arc<Registry>,
    scope: Scope,
    applied: watch::Sender<u64>,
    refused: watch::Sender<Option<String>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut index = 0;
    let mut generation = 0;
    let mut last: Option<String> = None;
    let mut checker = Checker::default();
    // Every router lost the same server at once: they come back spread out, not in one instant.
    let mut retry = Retry::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        let result = tokio::select! {
            r = client.routes(index, Duration::from_secs(30)) => r,
            _ = shutdown.changed() => break,
        };
        match result {
            Ok(mut snapshot) => {
                retry.succeeded();
                index = snapshot.index;
                // The index moves with every store write; only a change of routes is a new generation.
                let at = snapshot.index;
                snapshot.index = 0;
                let body = serde_json::to_string(&snapshot).unwrap_or_default();
                if last.as_deref() != Some(body.as_str()) {
                    generation += 1;
                    snapshot.index = at;
                    let table = table::build(&snapshot, &scope, &registry, generation);
                    checker.follow(&table);
                    proxy.table.store(Arc::new(table));
                    tracing::debug!(generation, index = at, "routes applied");
                    last = Some(body);
                }
                applied.send_replace(at);
            }
            // Removed (`berth router rm`) or never let in: retrying cannot help.
            Err(e) if e.is_refusal() => {
                tracing::error!(error = %e, "the server refused this router");
                refused.send_replace(Some(e.to_string()));
                break;
            }
            Err(e) => {
                // Resumed from the same index on the next server (see the agent's watch).
                tracing::warn!(error = %e, "watching routes failed; serving the last table");
                tokio::select! {
                    _ = tokio::time::sleep(retry.next_delay(rand::random())) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
    }
    checker.stop();
}

/// Who reports: the router's id, its zone and its admin API's address.
pub struct Reporter {
    pub id: String,
    pub zone: String,
    pub admin: String,
}

/// Tells the control plane, several times a second, which table this router serves and what it
/// still has in flight to draining instances: agents wait on that before they send SIGTERM.
pub async fn report(
    client: Client,
    who: Reporter,
    proxy: Arc<Proxy>,
    applied: watch::Receiver<u64>,
    refused: watch::Sender<Option<String>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Reporter { id, zone, admin } = who;
    loop {
        let table = proxy.table.load();
        let mut in_flight = std::collections::BTreeMap::new();
        for cluster in table.clusters.values() {
            for server in cluster.servers.iter().filter(|s| s.draining) {
                if let Some(instance) = &server.instance {
                    let n = server.state.in_flight.load(std::sync::atomic::Ordering::Relaxed);
                    *in_flight.entry(instance.clone()).or_insert(0) += n;
                }
            }
        }
        let mut requests: std::collections::BTreeMap<String, berth_api::RouterCounts> = Default::default();
        for cluster in table.clusters.values() {
            // An app's clusters (one per port) add up under the app's id.
            let app = cluster.route_name.split(':').next().unwrap_or(&cluster.route_name).to_string();
            requests.entry(app).or_default().add(&cluster.metrics.counts());
        }
        let report = berth_api::RouterReport {
            index: *applied.borrow(),
            zone: zone.clone(),
            admin: admin.clone(),
            in_flight,
            requests,
            access_log_dropped: proxy.access_dropped(),
        };
        match client.router_report(&id, &report).await {
            Err(e) if e.is_refusal() => {
                tracing::error!(error = %e, "the server refused this router's report");
                refused.send_replace(Some(e.to_string()));
                break;
            }
            Err(e) => tracing::debug!(error = %e, "reporting to the control plane failed"),
            Ok(()) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(REPORT_EVERY) => {}
            _ = shutdown.changed() => break,
        }
    }
}

/// How often a router reports; drains end within about this much after the last request.
pub const REPORT_EVERY: Duration = Duration::from_millis(200);
