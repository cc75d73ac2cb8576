//! Active health checks: one probe loop per server, so a dead host never delays the others.
//! Verdicts flip after `rise` passes or `fall` failures in a row.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::task::JoinHandle;

use crate::table::{Check, ServerState, Table, now_ms};

/// The probe loops, keyed by server and check, adjusted to each new table.
#[derive(Default)]
pub struct Checker {
    loops: HashMap<String, JoinHandle<()>>,
}

impl Checker {
    /// Starts loops for servers that are new in `table`, stops those that left.
    pub fn follow(&mut self, table: &Table) {
        let mut wanted: HashMap<String, (String, Check, Arc<ServerState>)> = HashMap::new();
        for cluster in table.clusters.values() {
            let Some(check) = &cluster.check else {
                continue;
            };
            for s in &cluster.servers {
                // Only what the platform already calls ready: a starting instance would fail
                // its first probes and start out marked down.
                if s.draining || !s.ready {
                    continue;
                }
                let key = format!("{}|{}|{check:?}", cluster.name, s.addr);
                wanted.insert(key, (s.addr.to_string(), check.clone(), s.state.clone()));
            }
        }
        self.loops.retain(|key, handle| {
            let keep = wanted.contains_key(key);
            if !keep {
                handle.abort();
            }
            keep
        });
        for (key, (addr, check, state)) in wanted {
            self.loops.entry(key).or_insert_with(|| tokio::spawn(probe_loop(addr, check, state)));
        }
    }

    pub fn stop(&mut self) {
        for (_, handle) in self.loops.drain() {
            handle.abort();
        }
    }
}

async fn probe_loop(addr: String, check: Check, state: Arc<ServerState>) {
    let spec = check.as_health_spec();
    let Some((host, port)) = addr.rsplit_once(':').and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
    else {
        return;
    };
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match berth_probe::probe(&spec, &host, port).await {
            Ok(()) => {
                state.fall.store(0, Ordering::Relaxed);
                if state.passive_fails.load(Ordering::Relaxed) == 0 {
                    state.set_msg("");
                }
                let rise = state.rise.fetch_add(1, Ordering::Relaxed) + 1;
                if !state.up.load(Ordering::Relaxed) && rise >= check.rise {
                    state.up.store(true, Ordering::Relaxed);
                    state.last_modified_ms.store(now_ms(), Ordering::Relaxed);
                    state.set_msg("");
                    tracing::info!(server = %addr, "active check: up");
                }
            }
            Err(why) => {
                state.rise.store(0, Ordering::Relaxed);
                let fall = state.fall.fetch_add(1, Ordering::Relaxed) + 1;
                state.set_msg(&why.to_string());
                if state.up.load(Ordering::Relaxed) && fall >= check.fall {
                    state.up.store(false, Ordering::Relaxed);
                    state.last_modified_ms.store(now_ms(), Ordering::Relaxed);
                    tracing::warn!(server = %addr, %why, "active check: down");
                }
            }
        }
    }
}
