//! Follows the control plane's route watch and swaps in a new table when routes change.

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
    mut shutdown: watch::Receiver<bool>,
) {
    let mut index = 0;
    let mut generation = 0;
    let mut last: Option<String> = None;
    let mut checker = Checker::default();
    loop {
        let result = tokio::select! {
            r = client.routes(index, Duration::from_secs(30)) => r,
            _ = shutdown.changed() => break,
        };
        match result {
            Ok(mut snapshot) => {
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
            Err(e) => {
                tracing::warn!(error = %e, "watching routes failed; serving the last table");
                index = 0;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
    }
    checker.stop();
}
