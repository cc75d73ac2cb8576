//! The routing table: an immutable snapshot built from the control plane's route watch and
//! swapped atomically. Per-server state (health, failures, in-flight) lives in a registry that
//! outlives snapshots, so a swap never forgets what was learned about a server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::{RouteSnapshot, RuleTarget};
use berth_core::AppSpec;
use berth_core::spec::{Balance, HealthSpec};

use crate::metrics::ClusterMetrics;
use crate::rules::Script;

/// A server failing this many requests in a row is ejected for `PASSIVE_EJECT`.
pub const PASSIVE_MAX_FAILS: u32 = 3;
pub const PASSIVE_EJECT: Duration = Duration::from_secs(10);
/// New servers ramp up to their full weight over this long, unless their app says otherwise.
pub const SLOW_START: Duration = Duration::from_secs(5);

pub use berth_core::now_ms;

/// What the router has learned about one server, shared by every thread and every snapshot.
#[derive(Debug)]
pub struct ServerState {
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    /// Active check verdict: true while the server passes (or has no check).
    pub up: AtomicBool,
    pub rise: AtomicU32,
    pub fall: AtomicU32,
    /// Consecutive failed proxied requests.
    pub passive_fails: AtomicU32,
    pub last_fail_ms: AtomicI64,
    /// Drained through the admin API: no new requests.
    pub drained: AtomicBool,
    pub last_modified_ms: AtomicI64,
    pub msg: Mutex<String>,
    pub first_seen: Instant,
    /// Past slow start: the clock need not be read again.
    warm: AtomicBool,
}

impl ServerState {
    fn new() -> Self {
        ServerState {
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            up: AtomicBool::new(true),
            rise: AtomicU32::new(0),
            fall: AtomicU32::new(0),
            passive_fails: AtomicU32::new(0),
            last_fail_ms: AtomicI64::new(0),
            drained: AtomicBool::new(false),
            last_modified_ms: AtomicI64::new(now_ms()),
            msg: Mutex::new(String::new()),
            first_seen: Instant::now(),
            warm: AtomicBool::new(false),
        }
    }

    /// A server seen just now: at the start of its slow start.
    #[cfg(test)]
    pub fn fresh_for_tests() -> Self {
        Self::new()
    }

    #[cfg(test)]
    pub fn for_tests() -> Self {
        let mut s = Self::new();
        s.first_seen = Instant::now().checked_sub(SLOW_START).unwrap_or_else(Instant::now);
        s
    }

    pub fn set_msg(&self, text: &str) {
        let mut msg = self.msg.lock().unwrap_or_else(|p| p.into_inner());
        if *msg != text {
            text.clone_into(&mut msg);
        }
    }

    pub fn msg(&self) -> String {
        self.msg.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn passive_ejected(&self) -> bool {
        self.passive_fails.load(Ordering::Relaxed) >= PASSIVE_MAX_FAILS
            && now_ms() - self.last_fail_ms.load(Ordering::Relaxed) < PASSIVE_EJECT.as_millis() as i64
    }

    pub fn record_failure(&self, why: &str) {
        self.passive_fails.fetch_add(1, Ordering::Relaxed);
        self.last_fail_ms.store(now_ms(), Ordering::Relaxed);
        self.set_msg(why);
    }

    pub fn record_success(&self) {
        if self.passive_fails.swap(0, Ordering::Relaxed) > 0 {
            self.set_msg("");
        }
    }

    /// Share of the full weight during a slow start of `slow_start`, in (0, 1].
    pub fn warmup(&self, slow_start: Duration) -> f64 {
        if self.warm.load(Ordering::Relaxed) || slow_start.is_zero() {
            return 1.0;
        }
        let share = (self.first_seen.elapsed().as_secs_f64() / slow_start.as_secs_f64()).clamp(0.1, 1.0);
        if share >= 1.0 {
            self.warm.store(true, Ordering::Relaxed);
        }
        share
    }
}

/// One server of a cluster, as of this snapshot.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port`; also the key of the workers' connection pools.
    pub addr: Arc<str>,
    pub instance: Option<String>,
    pub weight: u32,
    /// The platform considers it running and healthy.
    pub ready: bool,
    /// The platform is stopping it.
    pub draining: bool,
    pub state: Arc<ServerState>,
}

impl Upstream {
    /// `ineligible().is_none()`, without building the reason: this runs for every request.
    pub fn eligible(&self) -> bool {
        self.ready
            && !self.draining
            && !self.state.drained.load(Ordering::Relaxed)
            && self.state.up.load(Ordering::Relaxed)
            && !self.state.passive_ejected()
    }

    /// Why this server may not take a new request, if it may not.
    pub fn ineligible(&self) -> Option<String> {
        if self.draining {
            return Some("draining: the platform is stopping it".into());
        }
        if self.state.drained.load(Ordering::Relaxed) {
            return Some("drained through the admin API".into());
        }
        if !self.ready {
            return Some("not ready: starting, or unhealthy in the platform".into());
        }
        if !self.state.up.load(Ordering::Relaxed) {
            return Some(format!("failing its active health check: {}", self.state.msg()));
        }
        if self.state.passive_ejected() {
            return Some(format!(
                "ejected after {} failed requests in a row",
                self.state.passive_fails.load(Ordering::Relaxed)
            ));
        }
        None
    }
}

/// How a cluster's servers are probed by the router.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub http: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl Check {
    fn from_spec(h: &HealthSpec) -> Check {
        Check {
            http: h.http.clone(),
            interval: h.interval.as_duration().max(Duration::from_millis(100)),
            timeout: h.timeout.as_duration(),
            rise: 2,
            fall: h.max_failures.max(1),
        }
    }

    /// Static upstreams get a TCP check.
    fn tcp_default() -> Check {
        Check { http: None, interval: Duration::from_secs(2), timeout: Duration::from_secs(1), rise: 2, fall: 2 }
    }

    pub fn as_health_spec(&self) -> HealthSpec {
        HealthSpec {
            http: self.http.clone(),
            tcp: self.http.is_none(),
            port_index: 0,
            interval: berth_core::Dur(self.interval.as_millis() as u64),
            timeout: berth_core::Dur(self.timeout.as_millis() as u64),
            grace: berth_core::Dur(0),
            max_failures: self.fall,
        }
    }
}

/// A script as the router holds it: the version in force, and the last load error if a newer one failed.
#[derive(Debug, Clone)]
pub struct LoadedRules {
    pub target: RuleTarget,
    pub script: Script,
    /// What a request gets when the script fails on it.
    pub on_error: berth_api::RuleOnError,
    pub loaded_at: i64,
    pub error: Option<String>,
}

/// A set of servers reached under one name.
#[derive(Debug)]
pub struct Cluster {
    /// `cls:GROUP/NAME` (first port), `cls:GROUP/NAME:PORT`, or `cls:UPSTREAM`.
    pub name: String,
    /// What `route()` in a rule names it by: an app id or a static upstream name.
    pub route_name: String,
    pub servers: Vec<Upstream>,
    pub check: Option<Check>,
    pub rules: Option<Arc<LoadedRules>>,
    pub metrics: Arc<ClusterMetrics>,
    pub balance: Balance,
    /// Consistent-hash ring (point, server index), sorted; empty unless balance is a hash.
    pub ring: Vec<(u64, usize)>,
    /// Where least-conn starts scanning, so ties rotate.
    pub rotor: std::sync::atomic::AtomicUsize,
    /// How long a new server ramps up to its full weight.
    pub slow_start: Duration,
}

/// Virtual nodes per unit of weight on a hash ring.
const RING_POINTS: u32 = 160;

pub fn hash64(text: &str) -> u64 {
    // FNV-1a then a finalizer: stable across processes and releases, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

fn ring(balance: &Balance, servers: &[Upstream]) -> Vec<(u64, usize)> {
    if !matches!(balance, Balance::Hash(_)) {
        return Vec::new();
    }
    let mut points: Vec<(u64, usize)> = servers
        .iter()
        .enumerate()
        .flat_map(|(i, s)| (0..RING_POINTS * s.weight.max(1)).map(move |n| (hash64(&format!("{}#{n}", s.addr)), i)))
        .collect();
    points.sort_unstable();
    points
}

impl Cluster {
    pub(crate) fn new(
        name: String,
        route_name: String,
        servers: Vec<Upstream>,
        balance: Balance,
        check: Option<Check>,
        rules: Option<Arc<LoadedRules>>,
        metrics: Arc<ClusterMetrics>,
    ) -> Cluster {
        Cluster {
            ring: ring(&balance, &servers),
            rotor: std::sync::atomic::AtomicUsize::new(0),
            slow_start: SLOW_START,
            name,
            route_name,
            servers,
            balance,
            check,
            rules,
            metrics,
        }
    }
}

#[derive(Debug, Default)]
pub struct Table {
    pub generation: u64,
    pub index: u64,
    pub applied_at: i64,
    pub hosts: HashMap<String, Arc<Cluster>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    pub scripts: Vec<Arc<LoadedRules>>,
}

impl Table {
    pub fn lookup(&self, host: &str) -> Option<&Arc<Cluster>> {
        self.hosts.get(host)
    }

    pub fn by_route_name(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.values().find(|c| c.route_name == name)
    }
}

/// State that outlives snapshots.
#[derive(Default)]
pub struct Registry {
    servers: Mutex<HashMap<String, Arc<ServerState>>>,
    metrics: Mutex<HashMap<String, Arc<ClusterMetrics>>>,
    rules: Mutex<HashMap<RuleTarget, Arc<LoadedRules>>>,
}

impl Registry {
    fn server(&self, cluster: &str, addr: &str) -> Arc<ServerState> {
        let mut map = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(format!("{cluster}|{addr}")).or_insert_with(|| Arc::new(ServerState::new())).clone()
    }

    fn metrics(&self, cluster: &str) -> Arc<ClusterMetrics> {
        let mut map = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(cluster.to_string()).or_default().clone()
    }

    pub fn all_metrics(&self) -> Vec<(String, Arc<ClusterMetrics>)> {
        let map = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The script for `target` from `source`: the cached one when unchanged; on a load error the
    /// previous version stays in force and carries the error.
    fn rules(&self, target: &RuleTarget, stored: &berth_api::RuleScript) -> Option<Arc<LoadedRules>> {
        let mut map = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let previous = map.get(target).cloned();
        if let Some(p) = &previous
            && *p.script.source == *stored.source
        {
            if p.on_error == stored.on_error {
                return previous;
            }
            // Only the policy changed: the same script (and its suspension state) goes on.
            let next = Arc::new(LoadedRules { on_error: stored.on_error, ..(**p).clone() });
            map.insert(target.clone(), next.clone());
            return Some(next);
        }
        let next = match Script::new(&stored.source) {
            Ok(script) => Arc::new(LoadedRules {
                target: target.clone(),
                script,
                on_error: stored.on_error,
                loaded_at: now_ms(),
                error: None,
            }),
            Err(e) => {
                tracing::error!(%target, error = %e, "rule script rejected; the previous one stays in force");
                let p = previous.as_ref()?;
                let error = Some(format!("version of {} rejected: {e}", stored.updated_at));
                Arc::new(LoadedRules { error, ..(**p).clone() })
            }
        };
        map.insert(target.clone(), next.clone());
        Some(next)
    }

    /// Forgets servers and scripts that no snapshot mentions any more.
    fn retain(&self, live_servers: &HashSet<String>, live_targets: &HashSet<RuleTarget>) {
        self.servers.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| live_servers.contains(k));
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| live_targets.contains(k));
    }
}

/// Where this router serves.
#[derive(Debug, Clone)]
pub struct Scope {
    pub zone: String,
    /// Wildcard domain: every app answers as `NAME.GROUP.<domain>`; none: the server's.
    pub domain: Option<String>,
}

/// Builds the table for `scope` from a route snapshot.
pub fn build(snapshot: &RouteSnapshot, scope: &Scope, registry: &Registry, generation: u64) -> Table {
    let mut table = Table { generation, index: snapshot.index, applied_at: now_ms(), ..Default::default() };
    let mut live_servers = HashSet::new();
    let mut live_targets = HashSet::new();
    let scripts: HashMap<&RuleTarget, &berth_api::RuleScript> = snapshot.rules.iter().map(|r| (&r.target, r)).collect();
    let mut rules_for = |target: RuleTarget| {
        let script = scripts.get(&target)?;
        live_targets.insert(target.clone());
        registry.rules(&target, script)
    };
    let domain = scope.domain.as_deref().unwrap_or(&snapshot.domain);
    // An app's own name is its own: no service or upstream can take it, whatever the snapshot
    // says (the server refuses such claims; this holds against an older or confused one).
    let own_name = |app: &berth_api::RouteApp| format!("{}.{}.{domain}", app.name, app.group);
    let reserved: HashSet<String> = snapshot.apps.iter().map(own_name).collect();

    for app in &snapshot.apps {
        if !(app.zones.is_empty() || app.zones.iter().any(|z| z == &scope.zone)) {
            continue;
        }
        let rules = rules_for(RuleTarget::App(app.id.clone()));
        // One cluster per container port the app is reached on.
        let mut by_port: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for service in &app.services {
            let host = service.rsplit_once(':').map_or(service.as_str(), |(h, _)| h).to_ascii_lowercase();
            if reserved.contains(&host) && host != own_name(app) {
                continue;
            }
            let port = AppSpec::service_port(service, &app.ports);
            let index = port.and_then(|p| app.ports.iter().position(|x| *x == p)).unwrap_or(0);
            by_port.entry(index).or_default().push(host);
        }
        if !app.ports.is_empty() || app.instances.iter().any(|i| !i.host_ports.is_empty()) {
            by_port.entry(0).or_default().push(own_name(app));
        }
        for (index, hosts) in by_port {
            let name = if index == 0 {
                format!("cls:{}", app.id)
            } else {
                format!("cls:{}:{}", app.id, app.ports.get(index).copied().unwrap_or_default())
            };
            let servers: Vec<Upstream> = app
                .instances
                .iter()
                .filter_map(|i| {
                    let port = i.host_ports.get(index)?;
                    let addr = format!("{}:{port}", i.host);
                    live_servers.insert(format!("{name}|{addr}"));
                    Some(Upstream {
                        state: registry.server(&name, &addr),
                        addr: addr.into(),
                        instance: Some(i.id.clone()),
                        weight: 1,
                        ready: i.ready,
                        draining: i.draining,
                    })
                })
                .collect();
            let route_name = if index == 0 { app.id.clone() } else { format!("{}:{index}", app.id) };
            let check = app.health.as_ref().map(Check::from_spec);
            let metrics = registry.metrics(&name);
            let mut cluster =
                Cluster::new(name.clone(), route_name, servers, app.balance.clone(), check, rules.clone(), metrics);
            cluster.slow_start = app.slow_start.as_duration();
            let cluster = Arc::new(cluster);
            for host in hosts {
                // The first claim stands; an app's own name always wins.
                if reserved.contains(&host) {
                    table.hosts.insert(host, cluster.clone());
                } else {
                    table.hosts.entry(host).or_insert_with(|| cluster.clone());
                }
            }
            table.clusters.insert(name, cluster);
        }
        if let Some(r) = rules {
            table.scripts.push(r);
        }
    }

    for up in &snapshot.upstreams {
        let name = format!("cls:{}", up.name);
        let servers: Vec<Upstream> = up
            .servers
            .iter()
            .map(|s| {
                let addr = format!("{}:{}", s.host, s.port);
                live_servers.insert(format!("{name}|{addr}"));
                Upstream {
                    state: registry.server(&name, &addr),
                    addr: addr.into(),
                    instance: None,
                    weight: s.weight,
                    ready: true,
                    draining: false,
                }
            })
            .collect();
        let rules = rules_for(RuleTarget::Upstream(up.name.clone()));
        if let Some(r) = &rules {
            table.scripts.push(r.clone());
        }
        let metrics = registry.metrics(&name);
        let cluster = Arc::new(Cluster::new(
            name.clone(),
            up.name.clone(),
            servers,
            up.balance.clone(),
            Some(Check::tcp_default()),
            rules,
            metrics,
        ));
        table.hosts.entry(up.name.to_ascii_lowercase()).or_insert_with(|| cluster.clone());
        table.clusters.insert(name, cluster);
    }
    registry.retain(&live_servers, &live_targets);
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::{RouteApp, RouteInstance, StaticUpstream, UpstreamServer};

    fn app(group: &str, name: &str, services: &[&str], port: u16) -> RouteApp {
        RouteApp {
            id: format!("{group}/{name}"),
            name: name.into(),
            group: group.into(),
            zones: vec![],
            services: services.iter().map(|s| s.to_string()).collect(),
            ports: vec![80],
            health: None,
            balance: Default::default(),
            slow_start: Default::default(),
            instances: vec![RouteInstance {
                id: format!("{name}-1"),
                version: 1,
                host: "127.0.0.1".into(),
                host_ports: vec![port],
                ready: true,
                draining: false,
            }],
        }
    }

    /// Whatever a snapshot holds, an app's own name reaches that app, and a name two claim
    /// goes to the first, not to whoever comes last.
    #[test]
    fn an_apps_own_name_cannot_be_taken_and_the_first_claim_stands() {
        let snapshot = RouteSnapshot {
            index: 1,
            apps: vec![
                app("demo", "web", &[], 1),
                app("evil", "steal", &["web.demo.example.test", "shop.example.com"], 2),
                app("late", "shop", &["shop.example.com"], 3),
            ],
            upstreams: vec![StaticUpstream {
                name: "web.demo.example.test".into(),
                servers: vec![UpstreamServer { host: "127.0.0.1".into(), port: 4, weight: 1 }],
                balance: Default::default(),
                updated_at: 0,
            }],
            rules: vec![],
            domain: "example.test".into(),
        };
        let scope = Scope { zone: "default".into(), domain: None };
        let table = build(&snapshot, &scope, &Registry::default(), 1);
        let owner = |host: &str| table.lookup(host).map(|c| c.name.clone());
        assert_eq!(owner("web.demo.example.test").as_deref(), Some("cls:demo/web"));
        assert_eq!(owner("steal.evil.example.test").as_deref(), Some("cls:evil/steal"));
        assert_eq!(owner("shop.example.com").as_deref(), Some("cls:evil/steal"));
        // A router given its own domain serves the apps there instead.
        let own = Scope { zone: "default".into(), domain: Some("berth.local".into()) };
        let table = build(&snapshot, &own, &Registry::default(), 2);
        assert!(table.lookup("web.demo.berth.local").is_some());
        assert_eq!(table.lookup("web.demo.example.test").map(|c| c.name.as_str()), Some("cls:evil/steal"));
    }
}
