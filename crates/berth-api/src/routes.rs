//! What routers follow and report: the route snapshot, static upstreams, rule scripts, drains.

use std::collections::BTreeMap;

use berth_core::Millis;
use serde::{Deserialize, Serialize};

/// Largest rule script the server stores, in bytes.
pub const MAX_RULE_SCRIPT: usize = 64 * 1024;

/// What a router tells the control plane, every fraction of a second: which table it serves and
/// what it still has in flight to instances being stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterReport {
    /// The route snapshot index the router has applied.
    pub index: u64,
    pub zone: String,
    pub admin: String,
    /// Requests in flight per draining instance.
    #[serde(default)]
    pub in_flight: BTreeMap<String, u64>,
    /// Requests served per app (`GROUP/NAME`) or static upstream, since the router started.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, RouterCounts>,
    /// Access-log lines dropped since the router started, because its disk did not keep up.
    #[serde(default)]
    pub access_log_dropped: u64,
}

/// A router as the control plane last heard from it (`GET /v1/routers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterView {
    pub id: String,
    pub zone: String,
    pub admin: String,
    /// The route snapshot index it has applied.
    pub index: u64,
    pub seen_ms_ago: i64,
    /// Heard from recently enough to count: it holds up drains and deploys wait for it.
    pub live: bool,
    #[serde(default)]
    pub in_flight: BTreeMap<String, u64>,
}

/// A router's cumulative counts for one app.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouterCounts {
    /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx (router errors count as 5xx).
    pub by_class: [u64; 5],
    /// Latency histogram: requests per bucket of `LATENCY_BOUNDS_MS`, then those above the last.
    pub latency: Vec<u64>,
    pub latency_sum_ms: f64,
    pub in_flight: u64,
    /// Requests whose rule gave no decision, by reason in [`RULE_FAILURES`]' order.
    #[serde(default)]
    pub rule_failures: [u64; 3],
}

/// Why a rule gave no decision: it raised an error, it ran out of its budget, or it was not run
/// because it had (suspended).
pub const RULE_FAILURES: [&str; 3] = ["error", "overrun", "suspended"];

impl RouterCounts {
    /// Adds another router's (or cluster's) counts to these.
    pub fn add(&mut self, other: &RouterCounts) {
        for (a, b) in self.by_class.iter_mut().zip(other.by_class) {
            *a += b;
        }
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
        self.latency_sum_ms += other.latency_sum_ms;
        self.in_flight += other.in_flight;
        for (a, b) in self.rule_failures.iter_mut().zip(other.rule_failures) {
            *a += b;
        }
    }
}

/// Upper bounds (ms) of the latency buckets routers keep; one more bucket holds everything above.
pub const LATENCY_BOUNDS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

/// The latency under which a share `q` (0..=1) of requests fell, from a histogram over
/// [`LATENCY_BOUNDS_MS`]: linear within its bucket, as Prometheus' `histogram_quantile`; a rank in
/// the last, unbounded bucket answers that bucket's lower bound. `None` without requests.
pub fn latency_quantile(histogram: &[u64], q: f64) -> Option<f64> {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, n) in histogram.iter().enumerate() {
        let lower = if i == 0 { 0.0 } else { LATENCY_BOUNDS_MS[i - 1] as f64 };
        let Some(upper) = LATENCY_BOUNDS_MS.get(i).map(|b| *b as f64) else {
            return Some(lower);
        };
        if *n > 0 && (below + n) as f64 >= rank {
            return Some(lower + (upper - lower) * ((rank - below as f64) / *n as f64));
        }
        below += n;
    }
    LATENCY_BOUNDS_MS.last().map(|b| *b as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        assert_eq!(latency_quantile(&[], 0.95), None);
        assert_eq!(latency_quantile(&[0; 13], 0.5), None);
        // 100 requests, all in (5, 10] ms: the median is half way.
        let mut h = vec![0u64; 13];
        h[3] = 100;
        assert_eq!(latency_quantile(&h, 0.5), Some(7.5));
        assert_eq!(latency_quantile(&h, 1.0), Some(10.0));
        // 90 fast ones under 1 ms and 10 slow ones in (100, 250]: p95 sits in the slow bucket.
        let mut h = vec![0u64; 13];
        h[0] = 90;
        h[7] = 10;
        assert_eq!(latency_quantile(&h, 0.95), Some(175.0));
        assert!(latency_quantile(&h, 0.5).is_some_and(|v| v < 1.0));
        // Above the last bound there is no upper edge: the answer is the bound.
        let mut h = vec![0u64; 13];
        h[12] = 5;
        assert_eq!(latency_quantile(&h, 0.99), Some(5000.0));
    }
}

/// Whether routers are done with a stopping instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainStatus {
    pub instance: String,
    /// No router sends it new requests and none has any in flight to it.
    pub drained: bool,
    pub in_flight: u64,
    /// Routers heard from recently.
    pub routers: usize,
    /// Why it is not drained yet, per router.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
}

/// Everything a router needs, as of one store index: apps with their instances, static upstreams, rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteSnapshot {
    pub index: u64,
    pub apps: Vec<RouteApp>,
    pub upstreams: Vec<StaticUpstream>,
    pub rules: Vec<RuleScript>,
    /// Every app answers as `NAME.GROUP.<domain>`, unless a router is given its own.
    #[serde(default = "default_domain")]
    pub domain: String,
}

fn default_domain() -> String {
    "berth.local".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteApp {
    pub id: String,
    pub name: String,
    pub group: String,
    pub zones: Vec<String>,
    pub services: Vec<String>,
    /// Container ports, in the order of each instance's `host_ports`.
    pub ports: Vec<u16>,
    pub health: Option<berth_core::spec::HealthSpec>,
    #[serde(default)]
    pub balance: berth_core::spec::Balance,
    /// How long a new instance ramps up to its full weight.
    #[serde(default = "berth_core::spec::default_slow_start")]
    pub slow_start: berth_core::Dur,
    pub instances: Vec<RouteInstance>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteInstance {
    pub id: String,
    pub version: u64,
    pub host: String,
    pub host_ports: Vec<u16>,
    /// Running and healthy (when checked): may take new requests.
    pub ready: bool,
    /// Being stopped: no new requests, in-flight ones finish.
    pub draining: bool,
}

/// A service that is not a Berth app, routed by Host `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaticUpstream {
    pub name: String,
    pub servers: Vec<UpstreamServer>,
    #[serde(default)]
    pub balance: berth_core::spec::Balance,
    #[serde(default)]
    pub updated_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamServer {
    pub host: String,
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamRequest {
    pub servers: Vec<UpstreamServer>,
    #[serde(default)]
    pub balance: berth_core::spec::Balance,
}

/// What a rule script is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum RuleTarget {
    /// `GROUP/NAME`.
    App(String),
    Upstream(String),
}

impl std::fmt::Display for RuleTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleTarget::App(id) => write!(f, "app {id}"),
            RuleTarget::Upstream(name) => write!(f, "upstream {name}"),
        }
    }
}

/// A Lua request rule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleScript {
    pub target: RuleTarget,
    pub source: String,
    pub updated_at: Millis,
    /// What a request gets when the rule fails on it (an error, a spent budget).
    #[serde(default)]
    pub on_error: RuleOnError,
}

/// What a router does with a request whose rule raised an error or ran out of its budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleOnError {
    /// Serve it as if there were no rule (Slardar's checkups do the same): a broken rule does
    /// not take the app down.
    #[default]
    Open,
    /// Refuse it with 500: for rules that guard something.
    Closed,
}

impl RuleOnError {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleOnError::Open => "open",
            RuleOnError::Closed => "closed",
        }
    }
}

impl std::str::FromStr for RuleOnError {
    type Err = String;
    fn from_str(s: &str) -> Result<RuleOnError, String> {
        match s {
            "open" => Ok(RuleOnError::Open),
            "closed" => Ok(RuleOnError::Closed),
            other => Err(format!("on_error is `open` or `closed`, not `{other}`")),
        }
    }
}
