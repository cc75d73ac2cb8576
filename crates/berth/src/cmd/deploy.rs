//! `berth deploy` and the live progress every changing command shows.

use berth_core::reason::Waiting;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use berth_api::{AppStatus, ChangeOptions, Client, DeployResponse};
use berth_core::{DeploymentKind, DeploymentState, Desired, InstanceState};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Ctx, default_spec_path, spec};
use crate::output::{self, Format};

/// How a changing command waits.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Return once the server has accepted the change.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds (exit code 1).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// How a change meets a deployment in progress.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ForceArg {
    /// Supersede a deployment in progress instead of being refused.
    #[arg(long)]
    pub force: bool,
}

/// A change of the spec: optionally as a canary.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ChangeArgs {
    #[command(flatten)]
    pub force: ForceArg,
    /// Start N new instances beside the old ones and wait for `berth app NAME promote`.
    #[arg(long, value_name = "N")]
    pub canary: Option<u32>,
}

impl ChangeArgs {
    pub fn options(self) -> ChangeOptions {
        ChangeOptions { force: self.force.force, canary: self.canary }
    }
}

impl ForceArg {
    pub fn options(self) -> ChangeOptions {
        ChangeOptions { force: self.force, canary: None }
    }
}

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The spec to deploy.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    #[command(flatten)]
    change: ChangeArgs,
    #[command(flatten)]
    wait: WaitArgs,
    /// Show what the deploy would do (as `berth plan`) and change nothing.
    #[arg(long)]
    dry_run: bool,
}

pub async fn deploy(args: DeployArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let path = args.file.unwrap_or_else(default_spec_path);
    if let Ok(Ok(berth_core::SpecDoc::Job(job))) = spec::load_doc(&path) {
        return deploy_job(*job, args.dry_run, ctx).await;
    }
    if args.dry_run {
        return plan_file(&path, ctx).await;
    }
    apply_file(&path, None, args.change, &args.wait, ctx).await
}

/// Creates or changes a job: no instance runs until its schedule says so.
async fn deploy_job(spec: berth_core::JobSpec, dry_run: bool, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    let id = spec.id();
    if dry_run {
        let current = match client.job(&id).await {
            Ok(j) => Some(j),
            Err(e) if e.status() == Some(404) => None,
            Err(e) => return Err(e.into()),
        };
        let change = match &current {
            None => format!("{id}: a new job, version 1"),
            Some(j) if j.spec == spec => format!("{id}: version {} stays", j.version),
            Some(j) => format!("{id}: version {} -> {}", j.version, j.version + 1),
        };
        let changes = current.as_ref().is_none_or(|j| j.spec != spec);
        match ctx.format {
            Format::Json => println!("{}", output::json(&serde_json::json!({"job": id, "changes": changes}))?),
            Format::Table => println!("{change}"),
        }
        return Ok(if changes { ExitCode::from(2) } else { ExitCode::SUCCESS });
    }
    let resp = client.deploy_job(&spec).await?;
    match ctx.format {
        Format::Json => println!("{}", output::json(&resp)?),
        Format::Table => {
            let verb = match (resp.created, resp.changed) {
                (true, _) => "created",
                (false, true) => "changed",
                (false, false) => "unchanged",
            };
            let next = resp.job.next_run.map(|t| format!("; next run at {}", output::clock(t))).unwrap_or_default();
            println!("job {id} v{} {verb}{next}", resp.version);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The spec to plan.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
}

pub async fn plan(args: PlanArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    plan_file(&args.file.unwrap_or_else(default_spec_path), ctx).await
}

/// What deploying the spec in `path` would do, changing nothing. Exit code 0 when nothing would
/// change, 2 when something would (Nomad's convention), 1 on an error.
async fn plan_file(path: &std::path::Path, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let spec = load_valid(path)?;
    let p = ctx.client()?.plan(&spec).await?;
    let changes = p["new_version"] == true || p["instances"][0] != p["instances"][1];
    match ctx.format {
        Format::Json => println!("{}", output::json(&p)?),
        Format::Table => print!("{}", plan_text(&p)),
    }
    if let Some(why) = p["refused"].as_str() {
        anyhow::bail!("the deploy would be refused: {why}");
    }
    Ok(if changes { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

fn plan_text(p: &serde_json::Value) -> String {
    let mut out = String::new();
    let app = p["app"].as_str().unwrap_or_default();
    let (now, then) = (p["instances"][0].as_u64().unwrap_or(0), p["instances"][1].as_u64().unwrap_or(0));
    match p["version"].as_u64() {
        None => out.push_str(&format!("{app}: a new app, version 1, {then} instance(s)\n")),
        Some(v) if p["new_version"] == true => out.push_str(&format!("{app}: version {v} -> {}\n", v + 1)),
        Some(v) => out.push_str(&format!("{app}: version {v} stays\n")),
    }
    let short = |v: &serde_json::Value| {
        if v.is_null() {
            return "unset".to_string();
        }
        let text = v.to_string();
        if text.len() > 60 { format!("{}...", &text[..text.floor_char_boundary(57)]) } else { text }
    };
    for c in p["changes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  ~ {}: {} -> {}\n",
            c["field"].as_str().unwrap_or("?"),
            short(&c["from"]),
            short(&c["to"])
        ));
    }
    if now != then && p["version"].is_u64() {
        let flag = if p["resets_scale"] == true { "   <- undoes the count set by `scale`" } else { "" };
        out.push_str(&format!("  ~ instances: {now} -> {then}{flag}\n"));
    }
    out.push_str("steps:\n");
    for step in p["steps"].as_array().into_iter().flatten() {
        out.push_str(&format!("  - {}\n", step.as_str().unwrap_or_default()));
    }
    let placeable = p["placeable"].as_u64().unwrap_or(0);
    if placeable >= then {
        out.push_str(&format!("placement: all {then} instance(s) fit on the ready nodes now\n"));
    } else {
        out.push_str(&format!("placement: only {placeable} of {then} instance(s) fit now:\n"));
        for why in p["unplaceable"].as_array().into_iter().flatten() {
            out.push_str(&format!("  - {}\n", why.as_str().unwrap_or_default()));
        }
    }
    let first = &p["first_step"];
    if let (Some(start), Some(fit)) = (first["start"].as_u64(), first["placeable"].as_u64()) {
        let stop = first["stop"].as_u64().unwrap_or(0);
        let stopping = if stop > 0 { format!(", {stop} of them stopping") } else { String::new() };
        let fits = if fit >= start { "all fit".to_string() } else { format!("only {fit} fit") };
        out.push_str(&format!("first step: {start} new beside the {now} old{stopping}: {fits}\n"));
        if fit < start {
            for why in first["unplaceable"].as_array().into_iter().flatten() {
                out.push_str(&format!("  - {}\n", why.as_str().unwrap_or_default()));
            }
        }
        if first["stalls"] == true {
            out.push_str(
                "  the deployment would wait for room: free some on the nodes, or let it stop old instances \
                 first (a lower upgrade.min_health_capacity, or rolling instead of blue-green)\n",
            );
        }
    }
    out
}

/// The spec in `path`, or every problem in it, printed.
fn load_valid(path: &std::path::Path) -> anyhow::Result<berth_core::AppSpec> {
    match spec::load(path)? {
        Ok(spec) => Ok(spec),
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            anyhow::bail!("{} is not a valid spec; nothing was deployed", path.display());
        }
    }
}

/// Deploys the spec in `path`; `expect_id` guards `app NAME sync` against the wrong file.
pub async fn apply_file(
    path: &std::path::Path,
    expect_id: Option<&str>,
    change: ChangeArgs,
    wait: &WaitArgs,
    ctx: &Ctx,
) -> anyhow::Result<ExitCode> {
    let spec = load_valid(path)?;
    if let Some(id) = expect_id {
        anyhow::ensure!(spec.id() == id, "{} describes {}, not {id}", path.display(), spec.id());
    }
    for w in spec.warnings() {
        eprintln!("warning: {w}");
    }
    let client = ctx.client()?;
    // A count set by `scale` that this spec undoes is said, not done silently.
    let before = match client.app(&spec.id()).await {
        Ok(s) => Some(s.value),
        Err(e) if e.status() == Some(404) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(b) = &before
        && b.desired != spec.instances
        && b.deployment.as_ref().is_some_and(|d| d.kind == DeploymentKind::Scale)
    {
        eprintln!(
            "note: this spec sets {} instance(s); it undoes `scale`, which set {} (put instances: {} in the spec to keep them)",
            spec.instances, b.desired, b.desired
        );
    }
    let resp = client.deploy(&spec, change.options()).await?;
    let verb = if resp.created {
        "created"
    } else if resp.changed {
        "updated"
    } else {
        "unchanged"
    };
    eprintln!("{} {verb}: version {}, {} instance(s) wanted", spec.id(), resp.version, resp.app.desired);
    finish(&client, resp, wait, ctx).await
}

/// After a change was accepted: follow it (unless --no-wait) and print the outcome.
pub async fn finish(client: &Client, resp: DeployResponse, wait: &WaitArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let (ok, status) = match &resp.app.deployment {
        Some(d) if !wait.no_wait && resp.changed => {
            let (ok, status) = follow(client, &resp.app.id, d.started_at, Duration::from_secs(wait.timeout)).await?;
            if ok {
                wait_for_routers(client).await?;
            }
            (ok, status)
        }
        _ => (true, resp.app),
    };
    match ctx.format {
        Format::Json => println!("{}", output::json(&status)?),
        Format::Table => println!("{}", super::status::status_table(&status)),
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Longest a finished change waits for routers to route by it.
const ROUTERS_CATCH_UP: Duration = Duration::from_secs(5);

/// A change is done when it is routed: waits until every live router has applied the store as it
/// is now, so that a request sent once `deploy` returns finds the new routes. A router that does
/// not catch up in time is named, and the command still succeeds: the deployment did.
async fn wait_for_routers(client: &Client) -> anyhow::Result<()> {
    let first = client.routers().await?;
    let (target, mut routers) = (first.index, first.value);
    let clock = Instant::now();
    let pb = progress_bar();
    loop {
        let behind: Vec<&str> = routers.iter().filter(|r| r.live && r.index < target).map(|r| r.id.as_str()).collect();
        if behind.is_empty() {
            pb.finish_and_clear();
            return Ok(());
        }
        if clock.elapsed() >= ROUTERS_CATCH_UP {
            pb.finish_and_clear();
            eprintln!(
                "warning: router(s) {} have not applied index {target} after {}s; they route by the previous table until they do",
                behind.join(", "),
                ROUTERS_CATCH_UP.as_secs()
            );
            return Ok(());
        }
        pb.set_message(format!("waiting for {} router(s) to apply the change", behind.len()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        routers = client.routers().await?.value;
    }
}

pub(crate) fn progress_bar() -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// A line above the spinner; printed even when stderr is not a terminal (the spinner is not).
pub(crate) fn say(pb: &ProgressBar, line: String) {
    pb.suspend(|| eprintln!("{line}"));
}

/// Where a deployment stands, counted from an app's status.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    healthy: usize,
    starting: usize,
    old: usize,
    draining: usize,
}

fn tally(status: &AppStatus) -> Tally {
    let mut t = Tally::default();
    for view in &status.instances {
        let i = &view.instance;
        if !i.state.is_live() {
            continue;
        }
        if i.desired == Desired::Stop {
            t.draining += 1;
        } else if !status.is_current(i.version) {
            t.old += 1;
        } else if i.is_ready() {
            t.healthy += 1;
        } else {
            t.starting += 1;
        }
    }
    t
}

/// How long nothing may be placeable, with nothing leaving to make room, before a deploy says so
/// and stops waiting.
const UNPLACEABLE_GRACE: Duration = Duration::from_secs(5);

/// Shows a deployment's progress until it ends: true when it succeeded (or its canary is up).
/// A deployment that failed, rolled back or timed out is false.
pub async fn follow(
    client: &Client,
    id: &str,
    started_at: i64,
    timeout: Duration,
) -> anyhow::Result<(bool, AppStatus)> {
    let clock = Instant::now();
    let pb = progress_bar();
    let mut seen: HashMap<String, (InstanceState, bool, Desired)> = HashMap::new();
    let mut index = 0;
    // The deployment followed; an automatic rollback is followed too, but the command still fails.
    let mut following = started_at;
    let mut failure: Option<String> = None;
    let mut outage = false;
    // Since when nothing could be placed, nothing moved, and nothing was leaving to make room.
    let mut stuck: Option<(Instant, (usize, usize, usize))> = None;
    loop {
        let asked =
            if index == 0 { client.app(id).await } else { client.app_after(id, index, Duration::from_secs(1)).await };
        let answer = match asked {
            Ok(a) => a,
            // The server restarting does not end the deployment: keep following once it is back.
            Err(e) if e.status().is_none() && clock.elapsed() < timeout => {
                if !outage {
                    pb.suspend(|| eprintln!("note: lost the server ({e}); reconnecting"));
                    outage = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                index = 0;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        outage = false;
        index = answer.index;
        let status = answer.value;
        for view in &status.instances {
            let inst = &view.instance;
            let key = (inst.state, inst.in_service, inst.desired);
            let news = seen.get(&inst.id) != Some(&key)
                && (inst.state.is_live() || seen.contains_key(&inst.id) || inst.created_at >= started_at);
            if news {
                let what = match (inst.state, inst.desired) {
                    (s, Desired::Stop) if s.is_live() => "draining".to_string(),
                    (InstanceState::Running, _) if inst.is_ready() => "healthy".to_string(),
                    (InstanceState::Running, _) if inst.is_up() => "warming".to_string(),
                    (s, _) => s.to_string(),
                };
                let detail = if inst.state.is_terminal() || inst.desired == Desired::Stop {
                    inst.observed.reason.clone().unwrap_or_default()
                } else {
                    view.address.clone().unwrap_or_default()
                };
                say(&pb, format!("  {:<24} v{:<3} {:<9} {detail}", inst.id, inst.version, what));
                seen.insert(inst.id.clone(), key);
            }
        }
        let Some(d) = status.deployment.clone() else {
            pb.finish_and_clear();
            return Ok((failure.is_none(), status));
        };
        if d.started_at != following {
            if d.kind == DeploymentKind::AutoRollback && failure.is_none() {
                let why = status_reason(client, id, d.from_version).await;
                say(&pb, format!("{id} v{}: deployment failed: {why}", d.from_version.unwrap_or_default()));
                say(&pb, format!("{id}: rolling back automatically as v{}", d.version));
                failure = Some(why);
                following = d.started_at;
            } else if failure.is_none() {
                pb.finish_and_clear();
                eprintln!(
                    "{id}: a newer change (v{}, {}) took over; follow it with `berth app {} status`",
                    d.version,
                    d.kind.as_str(),
                    status.name
                );
                return Ok((false, status));
            }
        }
        let t = tally(&status);
        let mut msg = format!(
            "{id} v{} {}: new {}/{} healthy, {} starting, old {}, draining {}",
            d.version,
            d.kind.as_str(),
            t.healthy,
            status.desired,
            t.starting,
            t.old,
            t.draining
        );
        if d.failures > 0 {
            msg.push_str(&format!(", {} failed", d.failures));
        }
        if let Some(p) = &status.pending {
            msg.push_str(&format!(" | {p}"));
        }
        pb.set_message(msg);
        let took = clock.elapsed().as_secs_f64();
        // Say so at once when what is left cannot be placed, instead of waiting out the timeout.
        let unplaceable = match &status.waiting {
            Some(Waiting::Unplaceable { why }) if t.draining == 0 && d.state == DeploymentState::Running => Some(why),
            _ => None,
        };
        let counts = (t.healthy, t.starting, t.old);
        stuck = match (unplaceable, stuck) {
            (Some(_), Some((since, was))) if was == counts => Some((since, was)),
            (Some(_), _) => Some((Instant::now(), counts)),
            (None, _) => None,
        };
        if let (Some(why), Some((since, _))) = (unplaceable, stuck)
            && since.elapsed() >= UNPLACEABLE_GRACE
        {
            pb.finish_and_clear();
            let placed = t.healthy + t.starting;
            eprintln!("{id} v{}: {} wanted, {placed} placed; no node can take the rest:", d.version, status.desired);
            for line in why.lines() {
                eprintln!("  - {line}");
            }
            eprintln!(
                "the deployment goes on and places them when room appears: add nodes, free some, or change the spec; `berth app {} watch` follows it",
                status.name
            );
            return Ok((false, status));
        }
        match d.state {
            DeploymentState::Running => {
                if let Some(n) = d.canary
                    && t.healthy >= n as usize
                {
                    pb.finish_and_clear();
                    eprintln!(
                        "{id} v{}: canary of {n} healthy beside {} old in {took:.1}s; `berth app {} promote` rolls it out, `rollback` abandons it",
                        d.version, t.old, status.name
                    );
                    return Ok((true, status));
                }
            }
            DeploymentState::Succeeded => {
                pb.finish_and_clear();
                let text = d.message.clone().unwrap_or_default();
                match &failure {
                    Some(why) => eprintln!(
                        "{id}: rolled back to a healthy version in {took:.1}s ({text}); the deployment had failed: {why}"
                    ),
                    None => {
                        let from = d
                            .from_version
                            .filter(|f| *f != d.version)
                            .map(|f| format!(" (from v{f})"))
                            .unwrap_or_default();
                        eprintln!("{id} v{}{from}: {text} in {took:.1}s", d.version);
                    }
                }
                return Ok((failure.is_none(), status));
            }
            DeploymentState::RolledBack => {}
            state => {
                pb.finish_and_clear();
                eprintln!("{id} v{}: deployment {state}: {}", d.version, d.message.clone().unwrap_or_default());
                return Ok((false, status));
            }
        }
        if clock.elapsed() >= timeout {
            pb.finish_and_clear();
            eprintln!(
                "{id} v{}: still deploying after {}s ({}/{} healthy); it goes on: `berth app {} status`",
                d.version,
                timeout.as_secs(),
                t.healthy,
                status.desired,
                status.name
            );
            return Ok((false, status));
        }
    }
}

/// Why the version's deployment ended, from its stored outcome.
async fn status_reason(client: &Client, id: &str, version: Option<u64>) -> String {
    let Some(version) = version else { return "failed".into() };
    match client.versions(id).await {
        Ok(versions) => versions
            .into_iter()
            .find(|v| v.version == version)
            .and_then(|v| v.outcome.and_then(|o| o.message))
            .unwrap_or_else(|| "failed".into()),
        Err(e) => e.to_string(),
    }
}
