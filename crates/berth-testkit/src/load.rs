//! Steady GET traffic through a router from several keep-alive clients, counting every failure
//! and which app version answered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

#[derive(Default)]
struct Tally {
    failures: Vec<String>,
    /// Answers per `version` field of the body, since the last `mark`.
    versions_since_mark: BTreeMap<String, u64>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tally: Arc<Mutex<Tally>>,
    flips: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a finished load saw.
pub struct LoadReport {
    pub ok: u64,
    pub failures: Vec<String>,
    pub versions_since_mark: BTreeMap<String, u64>,
}

impl LoadReport {
    /// Panics with the first failures when any request failed, or when too few ran.
    pub fn assert_clean(&self, at_least: u64) {
        assert!(self.ok >= at_least, "the load ran ({} requests, wanted {at_least})", self.ok);
        assert!(
            self.failures.is_empty(),
            "{} of {} requests failed: {:?}",
            self.failures.len(),
            self.ok as usize + self.failures.len(),
            &self.failures[..self.failures.len().min(5)]
        );
    }
}

fn lock(t: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

impl Load {
    /// `clients` loops; each waits `pause` between requests (none: as fast as answers come).
    pub fn start(router: &str, host: &str, clients: usize, pause: Option<Duration>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let flips = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, tally, flips) = (stop.clone(), ok.clone(), tally.clone(), flips.clone());
                let url = format!("http://{router}/");
                let host = host.to_string();
                tokio::spawn(async move {
                    let client = berth_tls::http();
                    let mut last_version: Option<String> = None;
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).header("host", &host).send().await {
                            Ok(r) if r.status().is_success() => {
                                let body = r.bytes().await.unwrap_or_default();
                                ok.fetch_add(1, Ordering::Relaxed);
                                let version = serde_json::from_slice::<Value>(&body)
                                    .ok()
                                    .and_then(|v| v["version"].as_str().map(str::to_string))
                                    .unwrap_or_default();
                                if last_version.as_ref().is_some_and(|last| *last != version) {
                                    flips.fetch_add(1, Ordering::Relaxed);
                                }
                                *lock(&tally).versions_since_mark.entry(version.clone()).or_default() += 1;
                                last_version = Some(version);
                            }
                            Ok(r) => {
                                let status = r.status();
                                let body = r.text().await.unwrap_or_default();
                                lock(&tally).failures.push(format!("{status}: {body}"));
                            }
                            Err(e) => lock(&tally).failures.push(format!("error: {e}")),
                        }
                        if let Some(pause) = pause {
                            tokio::time::sleep(pause).await;
                        }
                    }
                })
            })
            .collect();
        Load { stop, ok, tally, flips, tasks }
    }

    /// Starts counting versions afresh (say, once an upgrade finished).
    pub fn mark(&self) {
        lock(&self.tally).versions_since_mark.clear();
    }

    /// Versions seen since the last mark.
    pub fn versions_since_mark(&self) -> BTreeMap<String, u64> {
        lock(&self.tally).versions_since_mark.clone()
    }

    /// Times a client's answer came from another version than its previous answer.
    pub fn flips(&self) -> u64 {
        self.flips.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> Vec<String> {
        lock(&self.tally).failures.clone()
    }

    pub async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let tally = std::mem::take(&mut *lock(&self.tally));
        LoadReport {
            ok: self.ok.load(Ordering::Relaxed),
            failures: tally.failures,
            versions_since_mark: tally.versions_since_mark,
        }
    }
}
