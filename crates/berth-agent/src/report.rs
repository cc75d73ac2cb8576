//! Reports flow to the server in batches; the latest word on each instance is kept until the
//! server has acknowledged it, so nothing is lost while the server is away.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_api::{Client, InstanceReport};
use berth_core::retry::Retry;
use tokio::sync::{mpsc, watch};

#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::UnboundedSender<InstanceReport>,
}

impl Reporter {
    /// A reporter whose reports the test reads.
    #[cfg(test)]
    pub(crate) fn capture() -> (Reporter, mpsc::UnboundedReceiver<InstanceReport>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Reporter { tx }, rx)
    }

    pub fn send(&self, report: InstanceReport) {
        // The receiver lives as long as the agent; a send after shutdown has nobody to tell.
        let _ = self.tx.send(report);
    }
}

/// Folds a newer report into an older one, keeping facts the newer one does not repeat.
fn merge(old: InstanceReport, new: InstanceReport) -> InstanceReport {
    // The words and the data of a reason travel together.
    let (old, mut new) = (old.observed, new);
    let seen = &mut new.observed;
    if seen.reason.is_none() {
        (seen.reason, seen.cause) = (old.reason, old.cause);
    }
    seen.handle = seen.handle.take().or(old.handle);
    seen.started_at = seen.started_at.or(old.started_at);
    seen.exit_code = seen.exit_code.or(old.exit_code);
    seen.oom_killed |= old.oom_killed;
    new
}

pub fn spawn(
    client: Client,
    node: watch::Receiver<String>,
    mut shutdown: watch::Receiver<bool>,
) -> (Reporter, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<InstanceReport>();
    let task = tokio::spawn(async move {
        let mut pending: BTreeMap<String, InstanceReport> = BTreeMap::new();
        let mut retry = Retry::new(Duration::from_millis(250), Duration::from_secs(5));
        loop {
            if pending.is_empty() {
                tokio::select! {
                    next = rx.recv() => match next {
                        Some(r) => { pending.insert(r.id.clone(), r); }
                        None => return,
                    },
                    _ = shutdown.changed() => return,
                }
            }
            while let Ok(r) = rx.try_recv() {
                let merged = match pending.remove(&r.id) {
                    Some(old) => merge(old, r),
                    None => r,
                };
                pending.insert(merged.id.clone(), merged);
            }
            let batch: Vec<InstanceReport> = pending.values().cloned().collect();
            let node_id = node.borrow().clone();
            // Bounded: a link that drops packets silently must not hold the reports back.
            let sent = tokio::time::timeout(Duration::from_secs(10), client.report(&node_id, batch.clone())).await;
            match sent.unwrap_or_else(|_| {
                let why = "no answer in 10s".to_string();
                Err(berth_api::ClientError::Unreachable { url: client.base().to_string(), why })
            }) {
                Ok(()) => {
                    retry.succeeded();
                    for sent in batch {
                        if pending.get(&sent.id) == Some(&sent) {
                            pending.remove(&sent.id);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reporting to the server failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(retry.next_delay(rand::random())) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    });
    (Reporter { tx }, task)
}
