//! The reconcile loop: snapshot, plan, apply, then sleep until the store moves or the plan's
//! next check is due.

use std::time::Duration;

use berth_core::Level;
use berth_plan::{Settings, reconcile};
use berth_store::StoreError;
use berth_store::state::Subject;
use tokio::sync::watch;

use crate::{Shared, apply, lock, now_ms};

/// Timing knobs of the control plane.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// A node silent this long is lost.
    pub node_timeout: Duration,
    /// Longest sleep between reconciles when nothing happens.
    pub idle_interval: Duration,
    /// Events kept in the store.
    pub keep_events: usize,
    /// Audit entries kept, the newest.
    pub keep_audit: usize,
    /// Log kept per app on disk.
    pub logs: crate::logs::LogLimits,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            node_timeout: Duration::from_secs(5),
            idle_interval: Duration::from_secs(5),
            keep_events: 10_000,
            keep_audit: 100_000,
            logs: crate::logs::LogLimits::default(),
        }
    }
}

/// Runs while this server leads, which it has since `since`: every node gets a full timeout from
/// then, as after a restart (heartbeats are kept in memory, by whoever leads).
pub(crate) async fn run(shared: Shared, since: berth_core::Millis, mut shutdown: watch::Receiver<bool>) {
    let mut changes = shared.state.store().watch();
    let settings = |shared: &Shared| Settings {
        node_timeout_ms: shared.tuning.node_timeout.as_millis() as i64,
        heartbeat_grace_until: since,
        ..Settings::default()
    };
    let mut passes: u64 = 0;
    loop {
        changes.borrow_and_update();
        let now = now_ms();
        let next_check = match pass(&shared, now, settings(&shared)) {
            Ok(check_at) => check_at,
            Err(StoreError::Conflict(key)) => {
                tracing::debug!(%key, "reconcile raced a write; planning again");
                continue;
            }
            // Another server leads now; this loop is being stopped.
            Err(StoreError::NotLeader(_)) => return,
            Err(e) => {
                tracing::error!(error = %e, "reconcile failed");
                Some(now + 1000)
            }
        };
        passes += 1;
        if passes.is_multiple_of(500)
            && let Err(e) = shared.state.prune_events(shared.tuning.keep_events)
        {
            tracing::warn!(error = %e, "pruning events failed");
        }
        if passes.is_multiple_of(500)
            && let Err(e) = shared.state.prune_audit(shared.tuning.keep_audit)
        {
            tracing::warn!(error = %e, "pruning the audit log failed");
        }
        let idle = shared.tuning.idle_interval.as_millis() as i64;
        let wait_ms = next_check.map_or(idle, |at| (at - now_ms()).clamp(0, idle));
        tokio::select! {
            _ = changes.changed() => {
                // Let a burst of writes land before planning again.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One reconcile: returns when to check again.
fn pass(shared: &Shared, now: i64, mut settings: Settings) -> Result<Option<i64>, StoreError> {
    let (snapshot, revisions) = apply::snapshot(shared)?;
    // Agents are told to beat further apart in a large cluster; the timeout follows.
    settings.node_timeout_ms =
        berth_plan::heartbeat::schedule(snapshot.nodes.len(), settings.node_timeout_ms).timeout_ms;
    let plan = reconcile(&snapshot, now, settings);
    // A plan larger than the store takes in one transaction (etcd: 128 operations) is applied
    // in steps: the first actions now, the rest planned again at once from what they left.
    let mut take = plan.actions.len();
    while take > 0 {
        match apply::apply(shared, &snapshot, &revisions, &plan.actions[..take], now) {
            Err(StoreError::TooLarge { .. }) if take > 1 => take /= 2,
            applied => {
                applied?;
                break;
            }
        }
    }
    record_pending(shared, &plan.pending, now)?;
    if take < plan.actions.len() {
        return Ok(Some(now));
    }
    Ok(plan.check_at)
}

/// Keeps why each app waits, and writes an event when that is news.
fn record_pending(shared: &Shared, pending: &[berth_plan::Pending], now: i64) -> Result<(), StoreError> {
    let mut known = lock(&shared.pending);
    let current: std::collections::HashMap<String, berth_plan::Pending> =
        pending.iter().map(|p| (p.app.clone(), p.clone())).collect();
    let mut txn = berth_store::Txn::default();
    for (app, p) in &current {
        // Backoff countdowns change every pass; only a new kind of reason is news.
        let news = known.get(app).is_none_or(|old| old.missing != p.missing || !old.why.same_news(&p.why));
        if news {
            let text = format!("{} instance(s) waiting: {}", p.missing, p.why);
            txn = shared.state.with_event(txn, now, Level::Warn, "app.pending", Subject::app(app), text);
        }
    }
    *known = current;
    drop(known);
    if !txn.is_empty() {
        shared.state.commit(txn)?;
    }
    Ok(())
}
