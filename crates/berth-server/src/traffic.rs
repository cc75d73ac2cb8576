//! Each app's traffic over the last hour, in memory, in steps of ten seconds: requests, errors
//! and latency from the routers' reports, bytes from the agents' samples. Routers and agents send
//! running totals; what a step holds is the growth between two reports of the same source, so a
//! restarted router (whose totals start again at zero) or a server that just started (which has
//! no earlier report to compare with) never shows up as a burst.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use berth_api::{AppTraffic, RouterCounts, TrafficStep};
use berth_core::Millis;

use crate::lock;

pub(crate) const STEP_MS: i64 = 10_000;

/// An hour of steps.
const KEEP_MS: i64 = 3_600_000;

/// How often apps and routers gone quiet are forgotten.
const PRUNE_EVERY_MS: i64 = 60_000;

/// Buckets of the latency histogram: one per bound, and one above the last.
const BUCKETS: usize = berth_api::LATENCY_BOUNDS_MS.len() + 1;

#[derive(Default)]
pub(crate) struct TrafficStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    apps: HashMap<String, VecDeque<Step>>,
    pruned_at: Millis,
}

/// One step of one app. Counts within ten seconds fit in 32 bits.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    t: Millis,
    requests: u64,
    errors: u64,
    latency_sum_ms: f64,
    latency: [u32; BUCKETS],
    net_rx_bytes: u64,
    net_tx_bytes: u64,
}

impl Step {
    fn at(t: Millis) -> Step {
        Step { t, requests: 0, errors: 0, latency_sum_ms: 0.0, latency: [0; BUCKETS], net_rx_bytes: 0, net_tx_bytes: 0 }
    }
}

/// Growth from `old` to `new` totals; all of `new` when they went down, that is, when the router
/// started again and `new` is all there is since.
fn growth(old: &RouterCounts, new: &RouterCounts) -> RouterCounts {
    let went_down = new.by_class.iter().zip(old.by_class).any(|(n, o)| *n < o)
        || new.latency.len() < old.latency.len()
        || new.latency.iter().zip(&old.latency).any(|(n, o)| n < o);
    if went_down {
        return new.clone();
    }
    let mut by_class = [0u64; 5];
    for (i, d) in by_class.iter_mut().enumerate() {
        *d = new.by_class[i] - old.by_class[i];
    }
    RouterCounts {
        by_class,
        latency: new.latency.iter().zip(old.latency.iter().chain(std::iter::repeat(&0))).map(|(n, o)| n - o).collect(),
        latency_sum_ms: (new.latency_sum_ms - old.latency_sum_ms).max(0.0),
        in_flight: new.in_flight,
        rule_failures: [0; 3],
    }
}

impl Inner {
    /// The app's step holding `t`, made if it is new; `None` when `t` is older than what is kept.
    fn step(&mut self, app: &str, t: Millis, now: Millis) -> Option<&mut Step> {
        let start = t - t.rem_euclid(STEP_MS);
        if start <= now - KEEP_MS {
            return None;
        }
        let steps = self.apps.entry(app.to_string()).or_default();
        while steps.front().is_some_and(|s| s.t <= now - KEEP_MS) {
            steps.pop_front();
        }
        // Reports come in time order but an agent's sample may lag a router's: look from the end.
        let at = steps.iter().rposition(|s| s.t <= start);
        match at {
            Some(i) if steps[i].t == start => steps.get_mut(i),
            Some(i) => {
                steps.insert(i + 1, Step::at(start));
                steps.get_mut(i + 1)
            }
            None => {
                steps.push_front(Step::at(start));
                steps.front_mut()
            }
        }
    }

    fn prune(&mut self, now: Millis) {
        if now - self.pruned_at < PRUNE_EVERY_MS {
            return;
        }
        self.pruned_at = now;
        self.apps.retain(|_, steps| steps.back().is_some_and(|s| s.t > now - KEEP_MS));
    }
}

impl TrafficStore {
    /// A router's running totals per app as it reported them at `now`, after `previous`, its
    /// report before (kept with the routers' reports). A router seen for the first time gives
    /// only the base to count from.
    pub fn router_report(
        &self,
        previous: Option<&BTreeMap<String, RouterCounts>>,
        totals: &BTreeMap<String, RouterCounts>,
        now: Millis,
    ) {
        let Some(previous) = previous else { return };
        let mut inner = lock(&self.inner);
        inner.prune(now);
        for (app, counts) in totals {
            let delta = match previous.get(app) {
                Some(old) => growth(old, counts),
                None => counts.clone(),
            };
            let requests: u64 = delta.by_class.iter().sum();
            if requests == 0 {
                continue;
            }
            let Some(step) = inner.step(app, now, now) else { continue };
            step.requests += requests;
            step.errors += delta.by_class[4];
            step.latency_sum_ms += delta.latency_sum_ms;
            for (bucket, n) in step.latency.iter_mut().zip(&delta.latency) {
                *bucket = bucket.saturating_add(u32::try_from(*n).unwrap_or(u32::MAX));
            }
        }
    }

    /// Bytes an app's instance received and sent between two of its samples, the later at `t`.
    pub fn network(&self, app: &str, t: Millis, rx: u64, tx: u64, now: Millis) {
        if rx == 0 && tx == 0 {
            return;
        }
        let mut inner = lock(&self.inner);
        inner.prune(now);
        if let Some(step) = inner.step(app, t, now) {
            step.net_rx_bytes += rx;
            step.net_tx_bytes += tx;
        }
    }

    /// The app's steps from `since`.
    pub fn history(&self, app: &str, since: Millis) -> AppTraffic {
        let inner = lock(&self.inner);
        let steps = inner.apps.get(app).map(|steps| {
            steps
                .iter()
                .filter(|s| s.t + STEP_MS > since)
                .map(|s| {
                    let histogram: Vec<u64> = s.latency.iter().map(|n| u64::from(*n)).collect();
                    TrafficStep {
                        t: s.t,
                        requests: s.requests,
                        errors: s.errors,
                        latency_mean_ms: (s.requests > 0).then(|| s.latency_sum_ms / s.requests as f64),
                        latency_p95_ms: berth_api::latency_quantile(&histogram, 0.95),
                        net_rx_bytes: s.net_rx_bytes,
                        net_tx_bytes: s.net_tx_bytes,
                    }
                })
                .collect()
        });
        AppTraffic { step_ms: STEP_MS, steps: steps.unwrap_or_default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(ok: u64, errors: u64, ms_each: f64, bucket: usize) -> RouterCounts {
        let mut latency = vec![0; BUCKETS];
        latency[bucket] = ok + errors;
        RouterCounts {
            by_class: [0, ok, 0, 0, errors],
            latency,
            latency_sum_ms: (ok + errors) as f64 * ms_each,
            in_flight: 0,
            rule_failures: [0; 3],
        }
    }

    fn report(app: &str, c: RouterCounts) -> BTreeMap<String, RouterCounts> {
        BTreeMap::from([(app.to_string(), c)])
    }

    /// Routers' reports, each after its own one before, as `router_report`'s handler keeps them.
    #[derive(Default)]
    struct Routers(HashMap<String, BTreeMap<String, RouterCounts>>);

    impl Routers {
        fn send(&mut self, store: &TrafficStore, router: &str, totals: BTreeMap<String, RouterCounts>, now: Millis) {
            store.router_report(self.0.get(router), &totals, now);
            self.0.insert(router.to_string(), totals);
        }
    }

    const T0: Millis = 1_000_000_000;

    #[test]
    fn a_step_holds_what_grew_between_reports() {
        let store = TrafficStore::default();
        let mut routers = Routers::default();
        // The first report is the base: what was served before it is not counted.
        routers.send(&store, "r1", report("g/a", counts(500, 0, 2.0, 2)), T0);
        assert!(store.history("g/a", 0).steps.is_empty());
        routers.send(&store, "r1", report("g/a", counts(600, 10, 2.0, 2)), T0 + 1_000);
        routers.send(&store, "r1", report("g/a", counts(700, 10, 2.0, 2)), T0 + 2_000);
        // Another router adds to the same step.
        routers.send(&store, "r2", report("g/a", counts(0, 0, 0.0, 0)), T0 + 1_000);
        routers.send(&store, "r2", report("g/a", counts(50, 0, 2.0, 2)), T0 + 2_000);
        let t = store.history("g/a", 0);
        assert_eq!(t.step_ms, STEP_MS);
        assert_eq!(t.steps.len(), 1);
        let s = &t.steps[0];
        assert_eq!(s.t, T0 - T0.rem_euclid(STEP_MS));
        assert_eq!((s.requests, s.errors), (260, 10));
        assert_eq!(s.latency_mean_ms, Some(2.0));
        // All of them in the (2, 5] ms bucket.
        assert!(s.latency_p95_ms.is_some_and(|p| p > 2.0 && p <= 5.0));
    }

    #[test]
    fn a_restarted_router_counts_from_zero_not_backwards() {
        let store = TrafficStore::default();
        let mut routers = Routers::default();
        routers.send(&store, "r1", report("g/a", counts(1_000, 0, 1.0, 1)), T0);
        routers.send(&store, "r1", report("g/a", counts(30, 0, 1.0, 1)), T0 + 1_000);
        assert_eq!(store.history("g/a", 0).steps[0].requests, 30);
    }

    #[test]
    fn steps_follow_time_and_an_hour_is_kept() {
        let store = TrafficStore::default();
        let mut routers = Routers::default();
        routers.send(&store, "r1", report("g/a", counts(0, 0, 1.0, 1)), T0);
        for i in 1..=400 {
            routers.send(&store, "r1", report("g/a", counts(i, 0, 1.0, 1)), T0 + i as i64 * STEP_MS);
        }
        let t = store.history("g/a", 0);
        // One request per step, and only the last hour of them.
        assert_eq!(t.steps.len(), (KEEP_MS / STEP_MS) as usize);
        assert!(t.steps.iter().all(|s| s.requests == 1));
        assert!(t.steps.windows(2).all(|w| w[1].t - w[0].t == STEP_MS));
        let since = T0 + 390 * STEP_MS;
        assert_eq!(store.history("g/a", since).steps.len(), 11);
    }

    #[test]
    fn bytes_land_in_the_step_of_their_sample_even_when_late() {
        let store = TrafficStore::default();
        let now = T0 + 5 * STEP_MS;
        store.network("g/a", T0 + 3 * STEP_MS, 100, 10, now);
        // A sample from two steps earlier arrives after.
        store.network("g/a", T0 + STEP_MS, 7, 1, now);
        store.network("g/a", T0 + 3 * STEP_MS + 1, 5, 5, now);
        store.network("g/a", now - KEEP_MS - STEP_MS, 1_000, 1_000, now);
        let t = store.history("g/a", 0);
        let bytes: Vec<(u64, u64)> = t.steps.iter().map(|s| (s.net_rx_bytes, s.net_tx_bytes)).collect();
        assert_eq!(bytes, vec![(7, 1), (105, 15)]);
        assert!(t.steps.iter().all(|s| s.requests == 0 && s.latency_mean_ms.is_none()));
        assert!(store.history("g/other", 0).steps.is_empty());
    }
}
