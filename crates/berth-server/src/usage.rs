//! Resource use: agents' samples kept in memory (a bounded window per instance), summed per app,
//! node and cluster beside what specs allocate; and `GET /metrics` in Prometheus' text format.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use berth_api::{AppUsage, CapacityUsage, InstanceSample, InstanceUsage, Usage};
use berth_core::{App, Instance, InstanceState, Millis};

use crate::alerts::AppLoad;
use crate::{Shared, lock, now_ms};
/// Samples kept per instance at full resolution (an hour at the default 5 s interval).
const KEEP_SAMPLES: usize = 720;

/// Beyond that, one sample per `COARSE_STEP_MS`, for `KEEP_COARSE` of them (three hours).
const COARSE_STEP_MS: i64 = 15_000;

const KEEP_COARSE: usize = 720;

const KEEP_MS: i64 = 3 * 3_600_000;

const PRUNE_EVERY_MS: i64 = 60_000;

/// The fine window's span.
const FINE_MS: i64 = 3_600_000;

/// A sample older than this no longer counts as the instance's current use.
const STALE_MS: i64 = 30_000;

#[derive(Default)]
pub(crate) struct UsageStore {
    tracks: Mutex<HashMap<String, Track>>,
    /// When tracks gone quiet were last dropped: once a minute, not at each of a thousand
    /// agents' reports. Read and written under the `tracks` lock.
    pruned_at: AtomicI64,
    /// Failures per app since the server started (each one a restart).
    restarts: Mutex<HashMap<String, u64>>,
}

/// One instance's readings: the latest in full, and its cpu and memory over time. A point is
/// 24 bytes where a full sample is about ten times that: 10,000 instances keep three hours in
/// about 350 MB instead of 2.6 GB.
struct Track {
    node: String,
    latest: InstanceSample,
    /// Every reading of the last hour.
    fine: VecDeque<Point>,
    /// One reading per `COARSE_STEP_MS` for the last three hours.
    coarse: VecDeque<Point>,
}

/// What the history keeps of a reading.
#[derive(Debug, Clone, Copy)]
struct Point {
    t: Millis,
    cpu_seconds: f64,
    memory_bytes: u64,
}

impl Point {
    fn of(s: &InstanceSample) -> Point {
        Point { t: s.t, cpu_seconds: s.cpu_seconds, memory_bytes: s.memory_bytes }
    }
}

impl Track {
    /// Percent of one core between its last two readings.
    fn cpu_percent(&self) -> f64 {
        let last = &self.latest;
        let q = &self.fine;
        match q.len().checked_sub(2).and_then(|i| q.get(i)) {
            Some(prev) if last.t > prev.t => {
                ((last.cpu_seconds - prev.cpu_seconds) / ((last.t - prev.t) as f64 / 1000.0) * 100.0).max(0.0)
            }
            _ => 0.0,
        }
    }
}

/// Appends to a bounded window, dropping its oldest.
fn push_bounded(q: &mut VecDeque<Point>, p: Point, keep: usize) {
    if q.len() == keep {
        q.pop_front();
    }
    q.push_back(p);
}

impl UsageStore {
    /// Keeps a node's samples; what each instance's network counters grew by since its previous
    /// sample goes to its app's `traffic`.
    pub fn record(&self, node: &str, samples: Vec<InstanceSample>, traffic: &crate::traffic::TrafficStore) {
        let mut tracks = lock(&self.tracks);
        let now = now_ms();
        if now - self.pruned_at.load(Ordering::Relaxed) >= PRUNE_EVERY_MS {
            tracks.retain(|_, t| now - t.latest.t < KEEP_MS);
            self.pruned_at.store(now, Ordering::Relaxed);
        }
        for s in samples {
            let point = Point::of(&s);
            let Some(track) = tracks.get_mut(&s.instance) else {
                let track = Track {
                    node: node.to_string(),
                    fine: VecDeque::from([point]),
                    coarse: VecDeque::from([point]),
                    latest: s,
                };
                tracks.insert(track.latest.instance.clone(), track);
                continue;
            };
            if track.node != node {
                track.node = node.to_string();
            }
            // A sample no newer than the last says nothing new (a node's reading was reused).
            if s.t <= track.latest.t {
                continue;
            }
            // Counters that went down belong to a restarted process: nothing to count across it.
            let grew = |new: Option<u64>, old: Option<u64>| match (new, old) {
                (Some(n), Some(o)) if n >= o => n - o,
                _ => 0,
            };
            traffic.network(
                &s.app,
                s.t,
                grew(s.net_rx_bytes, track.latest.net_rx_bytes),
                grew(s.net_tx_bytes, track.latest.net_tx_bytes),
                now,
            );
            // Older than an hour, the fine window starts again.
            if track.fine.back().is_some_and(|last| s.t - last.t >= FINE_MS) {
                track.fine.clear();
            }
            push_bounded(&mut track.fine, point, KEEP_SAMPLES);
            if track.coarse.back().is_none_or(|last| s.t - last.t >= COARSE_STEP_MS) {
                push_bounded(&mut track.coarse, point, KEEP_COARSE);
            }
            track.latest = s;
        }
    }

    /// An app's instances over the last three hours: coarse points first, then every sample of
    /// the last hour, with the cpu rate between consecutive points.
    pub fn history(&self, app: &str, since: Millis) -> Vec<berth_api::InstanceHistory> {
        let tracks = lock(&self.tracks);
        let mut out = Vec::new();
        for (instance, track) in tracks.iter().filter(|(_, t)| t.latest.app == app) {
            let fine_start = track.fine.front().map_or(i64::MAX, |p| p.t);
            let merged: Vec<&Point> = track
                .coarse
                .iter()
                .filter(|p| p.t < fine_start)
                .chain(track.fine.iter())
                .filter(|p| p.t >= since)
                .collect();
            let points = merged
                .windows(2)
                .map(|w| berth_api::UsagePoint {
                    t: w[1].t,
                    cpu_percent: ((w[1].cpu_seconds - w[0].cpu_seconds) / ((w[1].t - w[0].t).max(1) as f64 / 1000.0)
                        * 100.0)
                        .max(0.0),
                    memory_bytes: w[1].memory_bytes,
                })
                .collect();
            out.push(berth_api::InstanceHistory { instance: instance.clone(), points });
        }
        out.sort_by(|a, b| a.instance.cmp(&b.instance));
        out
    }

    /// Each instance's cpu time used, from its latest reading.
    pub fn cpu_seconds(&self) -> HashMap<String, f64> {
        lock(&self.tracks).iter().map(|(id, t)| (id.clone(), t.latest.cpu_seconds)).collect()
    }

    pub fn count_restart(&self, app: &str) {
        *lock(&self.restarts).entry(app.to_string()).or_default() += 1;
    }

    pub fn restarts(&self) -> HashMap<String, u64> {
        lock(&self.restarts).clone()
    }

    /// The use of each app, summed from the fresh samples of the instances `runs` says run now,
    /// for the alert rules: no sample is copied.
    pub fn loads(&self, now: Millis, runs: impl Fn(&str) -> bool) -> HashMap<String, AppLoad> {
        let mut loads: HashMap<String, AppLoad> = HashMap::new();
        for (id, track) in lock(&self.tracks).iter() {
            let last = &track.latest;
            if now - last.t >= STALE_MS || !runs(id) {
                continue;
            }
            let load = match loads.get_mut(&last.app) {
                Some(load) => load,
                None => loads.entry(last.app.clone()).or_default(),
            };
            load.add(track.cpu_percent(), last.memory_bytes, last.memory_limit_bytes);
        }
        loads
    }

    /// The latest use of each instance with a fresh sample, rates from its last two samples.
    pub fn current(&self, now: Millis) -> HashMap<String, InstanceUsage> {
        let restarts = self.restarts();
        lock(&self.tracks)
            .iter()
            .filter_map(|(id, track)| {
                let last = Some(&track.latest).filter(|s| now - s.t < STALE_MS)?;
                let node = &track.node;
                let cpu_percent = track.cpu_percent();
                Some((
                    id.clone(),
                    InstanceUsage {
                        instance: id.clone(),
                        app: last.app.clone(),
                        node: node.clone(),
                        t: last.t,
                        cpu_percent,
                        memory_bytes: last.memory_bytes,
                        memory_limit_bytes: last.memory_limit_bytes,
                        rss_bytes: last.rss_bytes,
                        block_read_bytes: last.block_read_bytes,
                        block_write_bytes: last.block_write_bytes,
                        net_rx_bytes: last.net_rx_bytes,
                        net_tx_bytes: last.net_tx_bytes,
                        restarts: restarts.get(&last.app).copied().unwrap_or(0),
                    },
                ))
            })
            .collect()
    }
}

const MIB: u64 = 1 << 20;

/// Use per app, node and cluster, from live instances and their fresh samples.
pub(crate) fn usage(shared: &Shared, only_app: Option<&str>) -> Result<Usage, berth_store::StoreError> {
    let apps: Vec<App> = shared.state.apps()?.into_iter().map(|a| a.value).collect();
    let instances = shared.instances()?;
    let current = shared.usage.current(now_ms());
    usage_of(shared, &apps, instances.iter(), &current, only_app)
}

/// `usage` over records and samples the caller already holds.
fn usage_of<'a>(
    shared: &Shared,
    apps: &[App],
    instances: impl IntoIterator<Item = &'a Instance>,
    current: &HashMap<String, InstanceUsage>,
    only_app: Option<&str>,
) -> Result<Usage, berth_store::StoreError> {
    let instances: Vec<&Instance> = instances.into_iter().filter(|i| i.state.is_live()).collect();
    let nodes = shared.state.nodes()?;
    let restarts = shared.usage.restarts();
    let spec_of: HashMap<String, &App> = apps.iter().map(|a| (a.id(), a)).collect();

    let mut by_app: BTreeMap<String, AppUsage> = BTreeMap::new();
    let mut by_node: BTreeMap<String, CapacityUsage> = BTreeMap::new();
    for n in &nodes {
        let n = &n.value;
        by_node.insert(
            n.id.clone(),
            CapacityUsage {
                name: n.id.clone(),
                cpu_cores: n.resources.cpu,
                memory_bytes: n.resources.memory * MIB,
                ..Default::default()
            },
        );
    }
    for app in apps {
        by_app.insert(
            app.id(),
            AppUsage { app: app.id(), restarts: restarts.get(&app.id()).copied().unwrap_or(0), ..Default::default() },
        );
    }
    let mut shown = Vec::new();
    for inst in &instances {
        let Some(app) = spec_of.get(&inst.app) else { continue };
        // What the instance holds: its own version's size, not the app's newest spec.
        let held = inst.allocated.unwrap_or_else(|| berth_core::Allocation::of(&app.spec));
        let (cpu_alloc, mem_alloc) = (held.cpu, held.memory * MIB);
        let used = current.get(&inst.id);
        if let Some(a) = by_app.get_mut(&inst.app) {
            a.instances += 1;
            a.cpu_allocated += cpu_alloc;
            a.memory_allocated_bytes += mem_alloc;
            if let Some(u) = used {
                a.cpu_percent += u.cpu_percent;
                a.memory_bytes += u.memory_bytes;
                a.memory_limit_bytes += u.memory_limit_bytes.unwrap_or(0);
                a.block_read_bytes += u.block_read_bytes;
                a.block_write_bytes += u.block_write_bytes;
                a.net_rx_bytes += u.net_rx_bytes.unwrap_or(0);
                a.net_tx_bytes += u.net_tx_bytes.unwrap_or(0);
            }
        }
        if let Some(n) = by_node.get_mut(&inst.node) {
            n.cpu_allocated += cpu_alloc;
            n.memory_allocated_bytes += mem_alloc;
            if let Some(u) = used {
                n.cpu_used += u.cpu_percent / 100.0;
                n.memory_used_bytes += u.memory_bytes;
            }
        }
        if only_app == Some(inst.app.as_str())
            && let Some(u) = used
        {
            shown.push(u.clone());
        }
    }
    let mut cluster = CapacityUsage { name: "cluster".into(), ..Default::default() };
    for n in by_node.values() {
        cluster.cpu_cores += n.cpu_cores;
        cluster.cpu_allocated += n.cpu_allocated;
        cluster.cpu_used += n.cpu_used;
        cluster.memory_bytes += n.memory_bytes;
        cluster.memory_allocated_bytes += n.memory_allocated_bytes;
        cluster.memory_used_bytes += n.memory_used_bytes;
    }
    shown.sort_by(|a, b| a.instance.cmp(&b.instance));
    Ok(Usage {
        apps: by_app.into_values().filter(|a| only_app.is_none_or(|id| a.app == id)).collect(),
        nodes: by_node.into_values().collect(),
        cluster,
        instances: shown,
    })
}

/// Routers' request counts per app, summed over the routers heard from in the last minute.
pub(crate) fn router_totals(shared: &Shared, now: Millis) -> BTreeMap<String, berth_api::RouterCounts> {
    let mut totals: BTreeMap<String, berth_api::RouterCounts> = BTreeMap::new();
    for (at, report) in lock(&shared.routers).values() {
        if now - at > 60_000 {
            continue;
        }
        for (app, c) in &report.requests {
            totals.entry(app.clone()).or_default().add(c);
        }
    }
    totals
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

/// One metric family over a list of things: how to read each thing's value, if it has one.
struct Series<'a, T> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: &'a dyn Fn(&T) -> Option<f64>,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    /// Each series, one sample per thing, in the things' order.
    fn families<'t, T: 't>(
        &mut self,
        series: &[Series<T>],
        things: impl Iterator<Item = &'t T> + Clone,
        labels: impl Fn(&'t T) -> Vec<(&'static str, &'t str)>,
    ) {
        for s in series {
            self.head(s.name, s.kind, s.help);
            for thing in things.clone() {
                if let Some(v) = (s.value)(thing) {
                    self.sample(s.name, &labels(thing), v);
                }
            }
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
        let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
        let _ = writeln!(self.out, "{name}{labels} {value}");
    }
}

/// Jobs' runs by outcome and their run-time histogram, from the counts kept on each job record
/// (so they survive restarts and leader changes, as counters must).
fn job_families(f: &mut Family<'_>, jobs: &[berth_core::Job]) {
    use berth_core::job::DURATION_BUCKETS;
    f.head("berth_jobs", "gauge", "Jobs the control plane knows.");
    f.sample("berth_jobs", &[], jobs.len() as f64);
    f.head("berth_job_runs_total", "counter", "Runs of a job that ended, by outcome.");
    for job in jobs {
        let id = job.id();
        for outcome in ["succeeded", "failed", "missed", "skipped", "stopped"] {
            let n = job.stats.outcomes.get(outcome).copied().unwrap_or(0);
            f.sample("berth_job_runs_total", &[("job", &id), ("outcome", outcome)], n as f64);
        }
    }
    f.head("berth_job_run_duration_seconds", "histogram", "How long a job's runs ran, from process start to end.");
    for job in jobs {
        let id = job.id();
        let stats = &job.stats;
        let mut cumulative = 0u64;
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += stats.buckets.get(i).copied().unwrap_or(0);
            let le = bound.to_string();
            f.sample("berth_job_run_duration_seconds_bucket", &[("job", &id), ("le", &le)], cumulative as f64);
        }
        f.sample("berth_job_run_duration_seconds_bucket", &[("job", &id), ("le", "+Inf")], stats.duration_count as f64);
        f.sample("berth_job_run_duration_seconds_sum", &[("job", &id)], stats.duration_sum_ms as f64 / 1000.0);
        f.sample("berth_job_run_duration_seconds_count", &[("job", &id)], stats.duration_count as f64);
    }
}

pub(crate) fn exposition(shared: &Shared) -> Result<String, berth_store::StoreError> {
    let apps: Vec<App> = shared.state.apps()?.into_iter().map(|a| a.value).collect();
    let instances = shared.instances()?;
    let current = shared.usage.current(now_ms());
    let u = usage_of(shared, &apps, instances.iter(), &current, None)?;
    let mut out = String::new();
    let mut f = Family { out: &mut out };

    f.head("berth_apps", "gauge", "Apps the control plane knows.");
    f.sample("berth_apps", &[], apps.len() as f64);

    f.head("berth_instances", "gauge", "Instances by state.");
    for state in [
        InstanceState::Staging,
        InstanceState::Starting,
        InstanceState::Running,
        InstanceState::Failed,
        InstanceState::Stopped,
        InstanceState::Succeeded,
    ] {
        let n = instances.iter().filter(|i| i.state == state).count();
        f.sample("berth_instances", &[("state", state.as_str())], n as f64);
    }

    job_families(&mut f, &shared.state.jobs()?.into_iter().map(|j| j.value).collect::<Vec<_>>());

    f.head("berth_output_up", "gauge", "Whether an output (log sink, webhook, Alertmanager) answered its last check.");
    for o in lock(&shared.outputs).values() {
        f.sample(
            "berth_output_up",
            &[("output", o.output.as_str()), ("carries", o.carries.as_str())],
            f64::from(u8::from(o.healthy)),
        );
    }

    f.head("berth_deployments", "gauge", "Apps by the state of their latest deployment.");
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for app in &apps {
        if let Some(d) = &app.deployment {
            *by_state.entry(d.state.as_str()).or_default() += 1;
        }
    }
    for state in ["running", "succeeded", "failed", "rolled-back", "superseded"] {
        f.sample("berth_deployments", &[("state", state)], by_state.get(state).copied().unwrap_or(0) as f64);
    }

    let per_app: [Series<AppUsage>; 4] = [
        Series {
            name: "berth_app_restarts_total",
            kind: "counter",
            help: "Instance failures per app since the server started.",
            value: &|a| Some(a.restarts as f64),
        },
        Series {
            name: "berth_app_instances",
            kind: "gauge",
            help: "Live instances per app.",
            value: &|a| Some(a.instances as f64),
        },
        Series {
            name: "berth_app_cpu_percent",
            kind: "gauge",
            help: "CPU use of an app's instances, in percent of one core.",
            value: &|a| Some(a.cpu_percent),
        },
        Series {
            name: "berth_app_memory_bytes",
            kind: "gauge",
            help: "Memory in use by an app's instances.",
            value: &|a| Some(a.memory_bytes as f64),
        },
    ];
    f.families(&per_app, u.apps.iter(), |a| vec![("app", &a.app)]);

    let mut live: Vec<&InstanceUsage> = current.values().collect();
    live.sort_by(|a, b| a.instance.cmp(&b.instance));
    let cpu_seconds = shared.usage.cpu_seconds();
    // A counter the runtime does not give (network for exec) is left out, not reported as 0.
    let per_instance: [Series<InstanceUsage>; 7] = [
        Series {
            name: "berth_instance_cpu_seconds_total",
            kind: "counter",
            help: "CPU time an instance has used.",
            value: &|i| Some(cpu_seconds.get(&i.instance).copied().unwrap_or(0.0)),
        },
        Series {
            name: "berth_instance_memory_bytes",
            kind: "gauge",
            help: "Memory an instance uses.",
            value: &|i| Some(i.memory_bytes as f64),
        },
        Series {
            name: "berth_instance_memory_limit_bytes",
            kind: "gauge",
            help: "An instance's memory limit.",
            value: &|i| i.memory_limit_bytes.map(|v| v as f64),
        },
        Series {
            name: "berth_instance_block_read_bytes_total",
            kind: "counter",
            help: "Bytes an instance has read from block devices.",
            value: &|i| Some(i.block_read_bytes as f64),
        },
        Series {
            name: "berth_instance_block_write_bytes_total",
            kind: "counter",
            help: "Bytes an instance has written to block devices.",
            value: &|i| Some(i.block_write_bytes as f64),
        },
        Series {
            name: "berth_instance_network_receive_bytes_total",
            kind: "counter",
            help: "Bytes an instance has received.",
            value: &|i| i.net_rx_bytes.map(|v| v as f64),
        },
        Series {
            name: "berth_instance_network_transmit_bytes_total",
            kind: "counter",
            help: "Bytes an instance has sent.",
            value: &|i| i.net_tx_bytes.map(|v| v as f64),
        },
    ];
    f.families(&per_instance, live.iter().copied(), |i| {
        vec![("app", &i.app), ("instance", &i.instance), ("node", &i.node)]
    });

    let per_node: [Series<CapacityUsage>; 6] = [
        Series {
            name: "berth_node_cpu_cores",
            kind: "gauge",
            help: "Cores a node offers.",
            value: &|n| Some(n.cpu_cores),
        },
        Series {
            name: "berth_node_cpu_allocated_cores",
            kind: "gauge",
            help: "Cores the specs of a node's instances reserve.",
            value: &|n| Some(n.cpu_allocated),
        },
        Series {
            name: "berth_node_cpu_used_cores",
            kind: "gauge",
            help: "Cores a node's instances use.",
            value: &|n| Some(n.cpu_used),
        },
        Series {
            name: "berth_node_memory_bytes",
            kind: "gauge",
            help: "Memory a node offers.",
            value: &|n| Some(n.memory_bytes as f64),
        },
        Series {
            name: "berth_node_memory_allocated_bytes",
            kind: "gauge",
            help: "Memory the specs of a node's instances reserve.",
            value: &|n| Some(n.memory_allocated_bytes as f64),
        },
        Series {
            name: "berth_node_memory_used_bytes",
            kind: "gauge",
            help: "Memory a node's instances use.",
            value: &|n| Some(n.memory_used_bytes as f64),
        },
    ];
    f.families(&per_node, u.nodes.iter(), |n| vec![("node", &n.name)]);

    let totals = router_totals(shared, now_ms());
    f.head("berth_router_requests_total", "counter", "Requests routers answered, per app and status class.");
    for (app, c) in &totals {
        for (class, n) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().zip(c.by_class) {
            f.sample("berth_router_requests_total", &[("app", app), ("code", class)], n as f64);
        }
    }
    f.head(
        "berth_router_rule_failures_total",
        "counter",
        "Requests whose Lua rule gave no decision, per app and reason (error, overrun, suspended).",
    );
    for (app, c) in &totals {
        for (reason, n) in berth_api::RULE_FAILURES.iter().zip(c.rule_failures) {
            f.sample("berth_router_rule_failures_total", &[("app", app), ("reason", reason)], n as f64);
        }
    }
    f.head("berth_router_requests_in_flight", "gauge", "Requests routers have in flight, per app.");
    for (app, c) in &totals {
        f.sample("berth_router_requests_in_flight", &[("app", app)], c.in_flight as f64);
    }
    f.head("berth_router_request_duration_seconds", "histogram", "Time routers took to answer, per app.");
    for (app, c) in &totals {
        let mut cumulative = 0u64;
        for (i, n) in c.latency.iter().enumerate() {
            cumulative += n;
            let le =
                berth_api::LATENCY_BOUNDS_MS.get(i).map_or("+Inf".to_string(), |ms| format!("{}", *ms as f64 / 1000.0));
            f.sample("berth_router_request_duration_seconds_bucket", &[("app", app), ("le", &le)], cumulative as f64);
        }
        f.sample("berth_router_request_duration_seconds_sum", &[("app", app)], c.latency_sum_ms / 1000.0);
        f.sample("berth_router_request_duration_seconds_count", &[("app", app)], cumulative as f64);
    }
    f.head(
        "berth_router_access_log_dropped_total",
        "counter",
        "Access-log lines a router dropped because its disk did not keep up.",
    );
    let now = now_ms();
    for (router, (at, report)) in lock(&shared.routers).iter() {
        if now - at <= 60_000 {
            f.sample("berth_router_access_log_dropped_total", &[("router", router)], report.access_log_dropped as f64);
        }
    }
    f.head(
        "berth_server_requests_total",
        "counter",
        "Requests the server answered, per method, route and status class.",
    );
    let mut requests: Vec<(String, axum::http::Method, u16, u64)> = lock(&shared.requests)
        .iter()
        .flat_map(|(route, counts)| counts.iter().map(|((m, c), n)| (route.clone(), m.clone(), *c, *n)))
        .collect();
    requests.sort_by(|a, b| (&a.0, a.1.as_str(), a.2).cmp(&(&b.0, b.1.as_str(), b.2)));
    for (route, method, class, n) in &requests {
        let code = format!("{class}xx");
        f.sample(
            "berth_server_requests_total",
            &[("method", method.as_str()), ("route", route), ("code", &code)],
            *n as f64,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: Millis, cpu_seconds: f64) -> InstanceSample {
        InstanceSample {
            instance: "i".into(),
            app: "g/a".into(),
            t,
            cpu_seconds,
            memory_bytes: 1,
            memory_limit_bytes: None,
            rss_bytes: None,
            block_read_bytes: 0,
            block_write_bytes: 0,
            net_rx_bytes: None,
            net_tx_bytes: None,
        }
    }

    #[test]
    fn cpu_rate_comes_from_distinct_readings() {
        let store = UsageStore::default();
        let traffic = crate::traffic::TrafficStore::default();
        let now = now_ms();
        store.record("n", vec![sample(now - 1000, 10.0)], &traffic);
        store.record("n", vec![sample(now, 10.5)], &traffic);
        // The same reading again (a cached /proc pass) must not turn the rate into zero.
        store.record("n", vec![sample(now, 10.5)], &traffic);
        let u = store.current(now);
        assert!((u["i"].cpu_percent - 50.0).abs() < 0.01, "{:?}", u["i"]);
    }

    #[test]
    fn history_keeps_an_hour_of_every_sample_then_one_per_15_s_for_three_hours() {
        let store = UsageStore::default();
        let traffic = crate::traffic::TrafficStore::default();
        let now = now_ms();
        // Four hours at 5 s, a core busy all along: cpu time grows 5 s per sample.
        let count = 4 * 720;
        let start = now - (count - 1) * 5_000;
        for k in 0..count {
            store.record("n", vec![sample(start + k * 5_000, (k * 5) as f64)], &traffic);
        }
        let tracks = lock(&store.tracks);
        assert_eq!(tracks["i"].fine.len(), KEEP_SAMPLES);
        assert_eq!(tracks["i"].coarse.len(), KEEP_COARSE);
        drop(tracks);
        let history = store.history("g/a", 0);
        let points = &history[0].points;
        let fine_start = now - (KEEP_SAMPLES as i64 - 1) * 5_000;
        let coarse: Vec<&berth_api::UsagePoint> = points.iter().filter(|p| p.t <= fine_start).collect();
        assert!(coarse.windows(2).all(|w| w[1].t - w[0].t == COARSE_STEP_MS), "one per 15 s before the last hour");
        assert!(points.iter().filter(|p| p.t > fine_start).all(|p| (p.cpu_percent - 100.0).abs() < 0.01));
        assert!(now - points[0].t <= KEEP_MS && now - points[0].t > KEEP_MS - 60_000, "three hours back");
        assert_eq!(points.last().map(|p| p.t), Some(now));
        assert!(store.history("g/other", 0).is_empty());
        assert_eq!(std::mem::size_of::<Point>(), 24, "what an hour of 10,000 instances costs depends on it");
    }

    #[test]
    fn network_growth_between_samples_goes_to_the_app_traffic() {
        let store = UsageStore::default();
        let traffic = crate::traffic::TrafficStore::default();
        let now = now_ms();
        let with_net = |t: Millis, rx: u64, tx: u64| InstanceSample {
            net_rx_bytes: Some(rx),
            net_tx_bytes: Some(tx),
            ..sample(t, 1.0)
        };
        // The first sample is the base; the third comes from a restarted process (lower counters).
        store.record("n", vec![with_net(now - 3_000, 1_000, 500)], &traffic);
        store.record("n", vec![with_net(now - 2_000, 1_600, 700)], &traffic);
        store.record("n", vec![with_net(now - 1_000, 50, 20)], &traffic);
        store.record("n", vec![with_net(now, 80, 30)], &traffic);
        let steps = traffic.history("g/a", 0).steps;
        let rx: u64 = steps.iter().map(|s| s.net_rx_bytes).sum();
        let tx: u64 = steps.iter().map(|s| s.net_tx_bytes).sum();
        assert_eq!((rx, tx), (600 + 30, 200 + 10));
    }
}
