//! The web console's pages: the API's views (apps, nodes, jobs, events, alerts, pools) rendered
//! as HTML by askama templates, and the stylesheet and script they load, embedded in the binary.
//! Pure: data in, text out. The server (`berth-server/src/http/console.rs`) signs people in,
//! gathers the views as the API does for their token, and serves what this crate renders.

use askama::Template;
use berth_api::{Alert, AppStatus, JobStatus, NodeDetail, NodeView, PoolView};
use berth_core::{AppVersion, Event, Millis, Run};

/// The console's static files (`assets/`), served under `/ui/assets/`.
#[derive(rust_embed::RustEmbed)]
#[folder = "assets/"]
pub struct Assets;

/// A file of `Assets`: its bytes, content type, and an entity tag (its SHA-256, hex) for
/// revalidation.
pub fn asset(path: &str) -> Option<(std::borrow::Cow<'static, [u8]>, &'static str, String)> {
    let file = Assets::get(path)?;
    let tag: String = file.metadata.sha256_hash().iter().map(|b| format!("{b:02x}")).collect();
    let kind = match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    };
    Some((file.data, kind, format!("\"{tag}\"")))
}

/// Who is signed in, and what the page may offer them.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The token's name and role, for the header.
    pub name: String,
    pub role: String,
    /// Sent back with every change the page makes (`X-Berth-CSRF`).
    pub csrf: String,
}

/// The sections of the console, for the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Apps,
    Nodes,
    Jobs,
    Events,
}

impl Section {
    fn all() -> [(Section, &'static str, &'static str); 5] {
        [
            (Section::Overview, "/ui/", "Overview"),
            (Section::Apps, "/ui/apps", "Apps"),
            (Section::Nodes, "/ui/nodes", "Nodes"),
            (Section::Jobs, "/ui/jobs", "Jobs"),
            (Section::Events, "/ui/events", "Events"),
        ]
    }
}

struct NavLink {
    href: &'static str,
    label: &'static str,
    current: bool,
}

#[derive(Template)]
#[template(path = "page.html")]
struct PageTemplate<'a> {
    title: &'a str,
    nav: Vec<NavLink>,
    viewer: &'a Viewer,
    /// The page's own path: the script asks it for fresh content (`?fragment=1&index=N`).
    path: &'a str,
    index: u64,
    live: &'a str,
    /// Parts that stay as they are while the live part is refreshed (a log being followed).
    fixed: &'a str,
}

/// A whole page: the header, the live part and the fixed part.
pub struct Page {
    pub title: String,
    pub section: Section,
    pub path: String,
    pub index: u64,
    pub live: String,
    pub fixed: String,
}

impl Page {
    pub fn render(&self, viewer: &Viewer) -> String {
        let nav = Section::all()
            .into_iter()
            .map(|(s, href, label)| NavLink { href, label, current: s == self.section })
            .collect();
        PageTemplate {
            title: &self.title,
            nav,
            viewer,
            path: &self.path,
            index: self.index,
            live: &self.live,
            fixed: &self.fixed,
        }
        .render()
        .unwrap_or_else(|e| format!("rendering failed: {e}"))
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginTemplate<'a> {
    error: Option<&'a str>,
}

/// The sign-in page, with why the last try failed.
pub fn login(error: Option<&str>) -> String {
    LoginTemplate { error }.render().unwrap_or_default()
}

fn render(t: impl Template) -> String {
    t.render().unwrap_or_else(|e| format!("<p class=error>rendering failed: {e}</p>"))
}

/// `12s ago`, `3m ago` from `now`, as the CLI says it.
pub use berth_core::ago;

/// A time as UTC wall clock.
pub fn clock(t: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(t).map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

fn millis(ms: i64) -> String {
    match ms {
        ..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{}m{}s", ms / 60_000, ms % 60_000 / 1000),
    }
}

fn percent(part: f64, whole: f64) -> u32 {
    if whole <= 0.0 { 0 } else { ((part / whole) * 100.0).clamp(0.0, 100.0).round() as u32 }
}

// ---- overview ----

struct Capacity {
    name: String,
    nodes: String,
    cpu: String,
    cpu_alloc_pct: u32,
    cpu_used_pct: u32,
    memory: String,
    mem_alloc_pct: u32,
    mem_used_pct: u32,
}

struct Count {
    label: String,
    n: usize,
    tone: &'static str,
}

struct EventRow {
    seq: u64,
    time: String,
    level: String,
    kind: String,
    subject: String,
    message: String,
}

struct AlertRow {
    name: String,
    text: String,
    since: String,
    severity: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewTemplate {
    pools: Vec<Capacity>,
    nodes: Vec<Count>,
    apps: Vec<Count>,
    alerts: Vec<AlertRow>,
    events: Vec<EventRow>,
}

fn capacity(p: &PoolView) -> Capacity {
    Capacity {
        name: p.name.clone(),
        nodes: format!("{} of {} ready", p.ready, p.nodes),
        cpu: format!("{:.2} allocated, {:.2} used of {:.1} cores", p.cpu.allocated, p.cpu.used, p.cpu.capacity),
        cpu_alloc_pct: percent(p.cpu.allocated, p.cpu.placeable.max(p.cpu.capacity)),
        cpu_used_pct: percent(p.cpu.used, p.cpu.capacity),
        memory: format!(
            "{:.0} MiB allocated, {:.0} MiB used of {:.0} MiB",
            p.memory.allocated, p.memory.used, p.memory.capacity
        ),
        mem_alloc_pct: percent(p.memory.allocated, p.memory.capacity),
        mem_used_pct: percent(p.memory.used, p.memory.capacity),
    }
}

fn event_rows(events: &[Event], now: Millis) -> Vec<EventRow> {
    events
        .iter()
        .rev()
        .map(|e| EventRow {
            seq: e.seq,
            time: ago(e.time, now),
            level: format!("{:?}", e.level).to_lowercase(),
            kind: e.kind.clone(),
            subject: e.app.clone().or_else(|| e.node.clone()).unwrap_or_default(),
            message: e.message.clone(),
        })
        .collect()
}

fn alert_rows(alerts: &[Alert], now: Millis) -> Vec<AlertRow> {
    alerts
        .iter()
        .map(|a| AlertRow {
            name: a.name.clone(),
            text: a.text.clone(),
            since: ago(a.started_at, now),
            severity: a.severity.clone(),
        })
        .collect()
}

/// The app's one-word state, and the tone it is shown in.
fn app_state(a: &AppStatus) -> (&'static str, &'static str) {
    if a.destroying {
        ("destroying", "muted")
    } else if a.crash_loop.is_some() {
        ("crash-looping", "bad")
    } else if a.deployment.as_ref().is_some_and(|d| d.state == berth_core::DeploymentState::Running) {
        ("deploying", "busy")
    } else if a.deployed && a.counts.running >= a.desired as usize {
        ("running", "good")
    } else if a.desired == 0 {
        ("stopped", "muted")
    } else {
        ("degraded", "bad")
    }
}

/// What the overview shows.
pub struct Overview<'a> {
    pub pools: &'a [PoolView],
    pub nodes: &'a [NodeView],
    pub apps: &'a [AppStatus],
    pub alerts: &'a [Alert],
    pub events: &'a [Event],
    pub now: Millis,
}

pub fn overview(o: &Overview) -> String {
    let mut nodes: Vec<Count> = Vec::new();
    for (label, tone) in [("ready", "good"), ("draining", "busy"), ("ineligible", "muted"), ("disconnected", "bad")] {
        let n = o.nodes.iter().filter(|v| format!("{:?}", v.state).to_lowercase() == label).count();
        nodes.push(Count { label: label.into(), n, tone });
    }
    let mut apps: Vec<Count> = Vec::new();
    for (label, tone) in [
        ("running", "good"),
        ("deploying", "busy"),
        ("degraded", "bad"),
        ("crash-looping", "bad"),
        ("stopped", "muted"),
    ] {
        let n = o.apps.iter().filter(|a| app_state(a).0 == label).count();
        apps.push(Count { label: label.into(), n, tone });
    }
    render(OverviewTemplate {
        pools: o.pools.iter().map(capacity).collect(),
        nodes,
        apps,
        alerts: alert_rows(o.alerts, o.now),
        events: event_rows(o.events, o.now),
    })
}

// ---- apps ----

struct AppRow {
    id: String,
    running: String,
    version: u64,
    state: &'static str,
    tone: &'static str,
    deployment: String,
    image: String,
}

#[derive(Template)]
#[template(path = "apps.html")]
struct AppsTemplate {
    rows: Vec<AppRow>,
    groups: Vec<String>,
    group: String,
}

/// Every app the viewer sees, of `group` when one is chosen.
pub fn apps(list: &[AppStatus], group: Option<&str>) -> String {
    let mut groups: Vec<String> = list.iter().map(|a| a.group.clone()).collect();
    groups.sort();
    groups.dedup();
    let rows = list
        .iter()
        .filter(|a| group.is_none_or(|g| a.group == g))
        .map(|a| {
            let (state, tone) = app_state(a);
            AppRow {
                id: a.id.clone(),
                running: format!("{}/{}", a.counts.running, a.desired),
                version: a.version,
                state,
                tone,
                deployment: a.deployment.as_ref().map_or("-".into(), |d| format!("{} {}", d.kind.as_str(), d.state)),
                image: a.image.clone().unwrap_or_else(|| "(exec)".into()),
            }
        })
        .collect();
    render(AppsTemplate { rows, groups, group: group.unwrap_or_default().to_string() })
}

struct InstanceRow {
    id: String,
    app: String,
    state: String,
    tone: &'static str,
    node: String,
    address: String,
    version: u64,
    since: String,
    reason: String,
    exit: String,
}

struct VersionRow {
    version: u64,
    at: String,
    change: String,
    outcome: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "app.html")]
struct AppTemplate<'a> {
    a: &'a AppStatus,
    state: &'static str,
    tone: &'static str,
    deployment: String,
    progress: String,
    canary: bool,
    crash: String,
    pending: String,
    instances: Vec<InstanceRow>,
    versions: Vec<VersionRow>,
    can_change: bool,
    charts: String,
}

fn instance_rows<'i>(list: impl Iterator<Item = &'i berth_api::InstanceView>, now: Millis) -> Vec<InstanceRow> {
    list.map(|v| {
        let i = &v.instance;
        let tone = match i.state {
            berth_core::InstanceState::Running if i.in_service => "good",
            berth_core::InstanceState::Running | berth_core::InstanceState::Starting => "busy",
            berth_core::InstanceState::Failed => "bad",
            _ => "muted",
        };
        let mut state = i.state.to_string();
        if v.unreachable {
            state.push_str(" (unreachable)");
        } else if i.state.is_live() && i.desired == berth_core::Desired::Stop {
            state.push_str(" (stopping)");
        }
        InstanceRow {
            id: i.id.clone(),
            app: i.app.clone(),
            state,
            tone,
            node: i.node.clone(),
            address: v.address.clone().unwrap_or_default(),
            version: i.version,
            since: ago(i.observed.started_at.unwrap_or(i.created_at), now),
            reason: i.observed.reason.clone().unwrap_or_default(),
            exit: i.observed.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        }
    })
    .collect()
}

/// One app: its instances, deployment, versions, charts (rendered by `chart`); its actions when
/// `can_change`.
pub fn app(a: &AppStatus, versions: &[AppVersion], can_change: bool, charts: String, now: Millis) -> String {
    let (state, tone) = app_state(a);
    let deployment = a.deployment.as_ref().map_or(String::new(), |d| {
        let from = d.from_version.map(|v| format!("v{v} to ")).unwrap_or_default();
        format!("{} {from}v{}: {} (started {})", d.kind.as_str(), d.version, d.state, ago(d.started_at, now))
    });
    let current = a.instances.iter().filter(|v| a.is_current(v.instance.version) && v.instance.state.is_live());
    let ready = current.clone().filter(|v| v.instance.is_ready()).count();
    let progress = format!("{ready} of {} ready at v{}", a.desired, a.version);
    let crash = a.crash_loop.as_ref().map_or(String::new(), |c| {
        format!("{} failures in a row: {}", c.failures, c.reason.clone().unwrap_or_default())
    });
    let mut instances: Vec<&berth_api::InstanceView> = a.instances.iter().collect();
    instances.sort_by_key(|v| (v.instance.state.is_terminal(), std::cmp::Reverse(v.instance.created_at)));
    let versions = versions
        .iter()
        .rev()
        .map(|v| VersionRow {
            version: v.version,
            at: clock(v.created_at),
            change: v.change.clone(),
            outcome: v.outcome.as_ref().map_or("-".into(), |o| o.state.to_string()),
            current: a.is_current(v.version),
        })
        .collect();
    render(AppTemplate {
        a,
        state,
        tone,
        deployment,
        progress,
        canary: a
            .deployment
            .as_ref()
            .is_some_and(|d| d.canary.is_some() && d.state == berth_core::DeploymentState::Running),
        crash,
        pending: a.pending.clone().unwrap_or_default(),
        instances: instance_rows(instances.into_iter(), now),
        versions,
        can_change,
        charts,
    })
}

#[derive(Template)]
#[template(path = "logs.html")]
struct LogsTemplate<'a> {
    source: &'a str,
    instances: Vec<String>,
}

/// The log panel: followed live by the script from `source` (an NDJSON stream of the API).
pub fn logs_panel(source: &str, instances: Vec<String>) -> String {
    render(LogsTemplate { source, instances })
}

// ---- charts ----

/// One line of a chart: its name and its points (time, value).
pub struct Series {
    pub label: String,
    pub points: Vec<(Millis, f64)>,
}

/// Colours of a chart's lines, in turn.
const LINE_COLOURS: [&str; 6] = ["#1f5fbf", "#16794a", "#b3261e", "#8a5a00", "#6a3fb5", "#0f7c86"];

/// The shortest time a chart spans.
const MIN_SPAN_MS: Millis = 5 * 60_000;

/// Series with fewer points than this also get a dot at each.
const DOTS_UNDER: usize = 30;

/// A line chart as inline SVG, drawn here (no chart library): `series` over `from..to`, the
/// value axis from 0 to the largest value, labelled in `unit`; `empty` says why there is nothing
/// when no series has a point. Drawn or empty, a chart takes the same room, so live data arriving
/// moves nothing around it.
pub fn chart(title: &str, unit: &str, empty: &str, series: &[Series], from: Millis, to: Millis) -> String {
    const W: f64 = 600.0;
    const H: f64 = 160.0;
    const PAD: f64 = 4.0;
    let mut legend = String::from("<ul class=legend>");
    for (i, s) in series.iter().enumerate() {
        legend.push_str(&format!(
            "<li><span style=\"background:{}\"></span>{}</li>",
            LINE_COLOURS[i % LINE_COLOURS.len()],
            escape(&s.label)
        ));
    }
    legend.push_str("</ul>");
    if series.iter().all(|s| s.points.iter().all(|p| p.0 < from)) {
        // An empty box would look like a flat line at zero.
        return format!(
            "<figure class=chart><figcaption>{}</figcaption><div class=empty>{}</div>{legend}</figure>",
            escape(title),
            escape(empty)
        );
    }
    // The axis starts at the first point, so that a young app's minutes are not squeezed into
    // the right edge of an hour, but spans at least `MIN_SPAN_MS`.
    let first = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).filter(|t| *t >= from).min().unwrap_or(from);
    let from = first.min(to - MIN_SPAN_MS).max(from);
    let minutes = ((to - from) as f64 / 60_000.0).round();
    let max = series.iter().flat_map(|s| s.points.iter().filter(|p| p.0 >= from).map(|p| p.1)).fold(0.0_f64, f64::max);
    let top = if max <= 0.0 { 1.0 } else { max * 1.1 };
    let span = (to - from).max(1) as f64;
    let x = |t: Millis| PAD + ((t - from) as f64 / span) * (W - 2.0 * PAD);
    let y = |v: f64| H - PAD - (v / top) * (H - 2.0 * PAD);
    let mut out = format!(
        "<figure class=chart><figcaption>{} <span class=muted>(up to {:.1} {}, last {minutes} min)</span></figcaption>\
         <svg viewBox=\"0 0 {W} {H}\" preserveAspectRatio=\"none\" role=img aria-label=\"{}\">\
         <line x1=0 y1={H} x2={W} y2={H} class=axis />",
        escape(title),
        max,
        escape(unit),
        escape(title)
    );
    for (i, s) in series.iter().enumerate() {
        let points: Vec<String> =
            s.points.iter().filter(|p| p.0 >= from).map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
        if points.is_empty() {
            continue;
        }
        let colour = LINE_COLOURS[i % LINE_COLOURS.len()];
        out.push_str(&format!(
            "<polyline fill=none stroke=\"{colour}\" stroke-width=1.5 vector-effect=non-scaling-stroke points=\"{}\"><title>{}</title></polyline>",
            points.join(" "),
            escape(&s.label)
        ));
        // A few points over an hour are too short a line to see (one is none): each gets a dot,
        // a round cap on a zero-length stroke, which stays round however the box is stretched.
        if points.len() < DOTS_UNDER {
            let dots: String = points.iter().map(|p| format!("M{p}h0")).collect();
            out.push_str(&format!(
                "<path d=\"{dots}\" stroke=\"{colour}\" stroke-width=5 stroke-linecap=round vector-effect=non-scaling-stroke />"
            ));
        }
    }
    out.push_str("</svg>");
    out.push_str(&legend);
    out.push_str("</figure>");
    out
}

#[derive(Template)]
#[template(path = "rules.html")]
struct RulesTemplate<'a> {
    api: &'a str,
    source: &'a str,
    can_change: bool,
}

/// The app's Lua rules: shown, and edited and saved (`PUT api`) when `can_change`; a refused
/// script's error is shown at its line by the script.
pub fn rules_panel(api: &str, source: &str, can_change: bool) -> String {
    render(RulesTemplate { api, source, can_change })
}

// ---- nodes ----

struct NodeRow {
    id: String,
    hostname: String,
    state: String,
    tone: &'static str,
    pool: String,
    cpu: String,
    memory: String,
    instances: usize,
    heartbeat: String,
}

fn node_row(v: &NodeView, now: Millis) -> NodeRow {
    let state = format!("{:?}", v.state).to_lowercase();
    let tone = match state.as_str() {
        "ready" => "good",
        "disconnected" => "bad",
        "draining" => "busy",
        _ => "muted",
    };
    let n = &v.node;
    NodeRow {
        id: n.id.clone(),
        hostname: n.hostname.clone(),
        state,
        tone,
        pool: n.pool.clone(),
        cpu: format!("{:.2} / {:.2} / {:.1}", v.allocated.cpu, v.used.cpu, n.resources.cpu),
        memory: format!("{} / {} / {} MiB", v.allocated.memory, v.used.memory, n.resources.memory),
        instances: v.instances,
        heartbeat: ago(n.last_heartbeat, now),
    }
}

#[derive(Template)]
#[template(path = "nodes.html")]
struct NodesTemplate {
    rows: Vec<NodeRow>,
}

pub fn nodes(list: &[NodeView], now: Millis) -> String {
    render(NodesTemplate { rows: list.iter().map(|v| node_row(v, now)).collect() })
}

#[derive(Template)]
#[template(path = "node.html")]
struct NodeTemplate {
    n: NodeRow,
    labels: String,
    drivers: String,
    eligible: bool,
    instances: Vec<InstanceRow>,
    can_change: bool,
}

pub fn node(d: &NodeDetail, can_change: bool, now: Millis) -> String {
    let n = &d.view.node;
    let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let drivers: Vec<String> = n.drivers.iter().map(ToString::to_string).collect();
    let instances = instance_rows(d.live.iter(), now);
    render(NodeTemplate {
        n: node_row(&d.view, now),
        labels: labels.join(", "),
        drivers: drivers.join(", "),
        eligible: n.eligibility == berth_core::Eligibility::Eligible,
        instances,
        can_change,
    })
}

// ---- jobs ----

struct JobRow {
    id: String,
    schedule: String,
    next: String,
    last: String,
    tone: &'static str,
    success: String,
    active: usize,
    p50: String,
}

fn run_tone(r: &Run) -> &'static str {
    match r.state {
        berth_core::RunState::Succeeded => "good",
        berth_core::RunState::Failed | berth_core::RunState::Missed => "bad",
        berth_core::RunState::Running | berth_core::RunState::Pending => "busy",
        _ => "muted",
    }
}

fn job_row(j: &JobStatus, now: Millis) -> JobRow {
    JobRow {
        id: j.id.clone(),
        schedule: j.schedule_text(),
        next: if j.suspended { "suspended".into() } else { j.next_run.map_or("-".into(), clock) },
        last: j.last.as_ref().map_or("-".into(), |r| format!("{} {}", r.state, ago(r.finished_at.unwrap_or(0), now))),
        tone: j.last.as_ref().map_or("muted", run_tone),
        success: j.success_rate.map_or("-".into(), |r| format!("{:.0}%", r * 100.0)),
        active: j.active,
        p50: j.durations.p50_ms.map_or("-".into(), millis),
    }
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsTemplate {
    rows: Vec<JobRow>,
}

pub fn jobs(list: &[JobStatus], now: Millis) -> String {
    render(JobsTemplate { rows: list.iter().map(|j| job_row(j, now)).collect() })
}

struct RunRow {
    number: u64,
    scheduled: String,
    trigger: &'static str,
    state: String,
    tone: &'static str,
    duration: String,
    exit: String,
    node: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobTemplate {
    j: JobRow,
    suspended: bool,
    durations: String,
    runs: Vec<RunRow>,
    can_change: bool,
}

pub fn job(j: &JobStatus, can_change: bool, now: Millis) -> String {
    let d = &j.durations;
    let p = |v: Option<i64>| v.map_or("-".into(), millis);
    let durations = format!("p50 {}, p95 {}, p99 {} over {} runs", p(d.p50_ms), p(d.p95_ms), p(d.p99_ms), d.count);
    let runs = j
        .runs
        .iter()
        .map(|r| RunRow {
            number: r.number,
            scheduled: clock(r.scheduled_at),
            trigger: r.trigger.as_str(),
            state: r.state.to_string(),
            tone: run_tone(r),
            duration: r.duration_ms().map_or("-".into(), millis),
            exit: r.exit_code().map(|c| c.to_string()).unwrap_or_default(),
            node: r.node().unwrap_or_default().to_string(),
            reason: r.reason.as_ref().map(ToString::to_string).unwrap_or_default(),
        })
        .collect();
    render(JobTemplate { j: job_row(j, now), suspended: j.suspended, durations, runs, can_change })
}

// ---- events ----

#[derive(Template)]
#[template(path = "events.html")]
struct EventsTemplate {
    firing: Vec<AlertRow>,
    recent: Vec<AlertRow>,
    events: Vec<EventRow>,
}

pub fn events(events: &[Event], firing: &[Alert], recent: &[Alert], now: Millis) -> String {
    render(EventsTemplate {
        firing: alert_rows(firing, now),
        recent: alert_rows(recent, now),
        events: event_rows(events, now),
    })
}

/// A message in place of a page: not found, refused.
pub fn notice(text: &str) -> String {
    format!("<section class=notice><p>{}</p></section>", escape(text))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_it_did_not_write() {
        let e = Event {
            seq: 1,
            time: 0,
            level: berth_core::Level::Info,
            kind: "app.created".into(),
            app: Some("g/<script>".into()),
            instance: None,
            node: None,
            message: "<img src=x onerror=alert(1)>".into(),
        };
        let html = events(&[e], &[], &[], 1000);
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&#60;img") || html.contains("&lt;img"), "{html}");
        assert!(notice("<b>").contains("&lt;b&gt;"));
    }

    #[test]
    fn a_chart_draws_each_series_within_its_box() {
        let s = |label: &str, points: Vec<(Millis, f64)>| Series { label: label.into(), points };
        let svg = chart(
            "cpu",
            "%",
            "none",
            &[s("web-1", vec![(0, 0.0), (500, 50.0), (1000, 100.0)]), s("web-<2>", vec![])],
            0,
            1000,
        );
        assert!(svg.contains("points=\"4.0,156.0 300.0,"), "{svg}");
        assert!(svg.contains("up to 100.0 %"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 1, "an empty series draws nothing");
        assert!(svg.contains("d=\"M4.0,156.0h0M300.0,"), "few points are dotted: {svg}");
        assert!(svg.contains("web-&lt;2&gt;"), "labels are escaped: {svg}");
        // An hour's axis starts at the first point, five minutes back at least.
        let hour = 3_600_000;
        let young = chart("cpu", "%", "none", &[s("web-1", vec![(hour - 60_000, 1.0), (hour, 2.0)])], 0, hour);
        assert!(young.contains("last 5 min") && young.contains("points=\"477.6,"), "{young}");
        let old = chart("cpu", "%", "none", &[s("web-1", vec![(600_000, 1.0), (hour, 2.0)])], 0, hour);
        assert!(old.contains("last 50 min") && old.contains("points=\"4.0,"), "{old}");
        let none = chart("cpu", "%", "No samples yet", &[s("web-1", vec![])], 0, 1000);
        assert!(none.contains("No samples yet") && !none.contains("<svg"), "{none}");
        // The same room either way: a caption, a box, a legend.
        for html in [&svg, &none] {
            assert_eq!(html.matches("<figcaption>").count(), 1, "{html}");
            assert_eq!(html.matches("<ul class=legend>").count(), 1, "{html}");
        }
    }

    #[test]
    fn assets_are_embedded_with_their_type() {
        let (css, kind, tag) = asset("console.css").expect("the stylesheet");
        assert_eq!(tag.len(), 66, "a quoted SHA-256: {tag}");
        assert!(!css.is_empty());
        assert_eq!(kind, "text/css; charset=utf-8");
        assert!(asset("console.js").is_some());
        assert!(asset("../Cargo.toml").is_none());
    }
}
