//! `berth job ...`: scheduled jobs, their runs and their history.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use berth_api::JobStatus;
use berth_core::{Run, RunState};

use super::Ctx;
use crate::output::{self, Format, ago, table};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = false, subcommand_negates_reqs = false)]
pub struct JobArgs {
    /// The job (NAME, or GROUP/NAME), or `ls` to list every job.
    name: String,
    #[command(subcommand)]
    action: Option<JobAction>,
}

#[derive(Debug, clap::Subcommand)]
pub enum JobAction {
    /// Its schedule, next run, last result and the latest runs (the default).
    Status,
    /// Every run kept: when, how long, how it ended, where; and the p50/p95/p99 run time.
    History,
    /// Output of its runs, each line prefixed with its attempt's instance.
    Logs(JobLogsArgs),
    /// Start a run now, whatever the schedule.
    Run {
        /// Follow the run until it ends; the exit code is 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit code 1).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// No scheduled run starts until `resume` (a run going now goes on).
    Suspend,
    /// Back on schedule from the next time due; what fell due while suspended is not run.
    Resume,
    /// Stop its runs and forget it, with its history.
    Destroy,
}

#[derive(Debug, clap::Args)]
pub struct JobLogsArgs {
    /// Keep printing new lines as runs write them.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only this run's lines (its number, as `history` shows).
    #[arg(long)]
    run: Option<u64>,
    /// Only lines from this long ago on (`30s`, `10m`, `1h`, `2d`) or from this time on.
    #[arg(long, value_parser = super::parse_since)]
    since: Option<i64>,
    /// The last N lines (default 200, or every line since `--since`).
    #[arg(long, short = 'n')]
    tail: Option<usize>,
    /// Only lines matching this regular expression.
    #[arg(long)]
    grep: Option<String>,
    /// Print each line's time.
    #[arg(short = 't', long)]
    timestamps: bool,
}

pub async fn run(args: JobArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    if args.name == "ls" && args.action.is_none() {
        return list(&client, ctx).await;
    }
    let id = resolve(&client, &args.name).await?;
    match args.action.unwrap_or(JobAction::Status) {
        JobAction::Status => show(&client.job(&id).await?, false, ctx),
        JobAction::History => show(&client.job(&id).await?, true, ctx),
        JobAction::Logs(a) => {
            let query = berth_api::LogQuery {
                since: a.since,
                tail: a.tail.or(if a.since.is_some() { None } else { Some(200) }),
                instance: None,
                grep: a.grep,
                follow: a.follow,
                run: a.run,
            };
            super::app::print_logs(&client, &id, true, query, a.timestamps, ctx).await
        }
        JobAction::Run { wait, timeout } => {
            let run = client.run_job(&id).await?;
            if !wait {
                match ctx.format {
                    Format::Json => println!("{}", output::json(&run)?),
                    Format::Table => println!("{id}: run {} started", run.number),
                }
                return Ok(ExitCode::SUCCESS);
            }
            follow_run(&client, &id, run.number, Duration::from_secs(timeout), ctx).await
        }
        JobAction::Suspend => act(&client, &id, "suspend", ctx).await,
        JobAction::Resume => act(&client, &id, "resume", ctx).await,
        JobAction::Destroy => {
            let status = client.destroy_job(&id).await?;
            match ctx.format {
                Format::Json => println!("{}", output::json(&status)?),
                Format::Table => println!("{id}: destroying (its runs are stopped, then it is gone)"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `NAME` in a single group, or `GROUP/NAME`.
async fn resolve(client: &berth_api::Client, name: &str) -> anyhow::Result<String> {
    if name.contains('/') {
        return Ok(name.to_string());
    }
    let jobs = client.jobs().await?;
    let matches: Vec<String> = jobs.iter().filter(|j| j.name == name).map(|j| j.id.clone()).collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => {
            let known: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
            let hint =
                berth_core::spec::closest(name, &known).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default();
            anyhow::bail!("no job named `{name}`{hint}")
        }
        _ => anyhow::bail!("`{name}` is in several groups ({}); say GROUP/NAME", matches.join(", ")),
    }
}

async fn act(client: &berth_api::Client, id: &str, action: &str, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let status = client.job_action(id, action).await?;
    match ctx.format {
        Format::Json => println!("{}", output::json(&status)?),
        Format::Table => {
            let next = status.next_run.map(|t| format!("; next run {}", when(t))).unwrap_or_default();
            println!("{id}: {}{next}", if status.suspended { "suspended" } else { "on schedule" });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for run `number` to end, saying when it is placed and how it ended.
async fn follow_run(
    client: &berth_api::Client,
    id: &str,
    number: u64,
    timeout: Duration,
    ctx: &Ctx,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut index = 0;
    let mut said = None;
    loop {
        let remaining = timeout.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            anyhow::bail!("run {number} of {id} has not ended after {}s", timeout.as_secs());
        }
        let answer = client.job_after(id, index, remaining.min(Duration::from_secs(30))).await?;
        index = answer.index;
        let Some(run) = answer.value.runs.iter().find(|r| r.number == number) else {
            anyhow::bail!("run {number} of {id} is no longer kept");
        };
        if ctx.format == Format::Table && said != Some(run.state) {
            said = Some(run.state);
            if run.state.is_active() {
                let node = run.node().map(|n| format!(" on {n}")).unwrap_or_default();
                eprintln!("run {number}: {}{node}", run.state);
            }
        }
        if !run.state.is_active() {
            match ctx.format {
                Format::Json => println!("{}", output::json(run)?),
                Format::Table => println!("{id}: run {number} {}", outcome(run)),
            }
            return Ok(if run.state == RunState::Succeeded { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
    }
}

async fn list(client: &berth_api::Client, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let jobs = client.jobs().await?;
    if ctx.format == Format::Json {
        println!("{}", output::json(&jobs)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.schedule_text(),
                if j.suspended { "suspended".into() } else { j.next_run.map_or("-".into(), when) },
                j.last.as_ref().map_or("-".into(), |r| format!("{} {}", r.state, ago(r.finished_at.unwrap_or(0)))),
                j.success_rate.map_or("-".into(), |r| format!("{:.0}%", r * 100.0)),
                j.active.to_string(),
                j.durations.p50_ms.map_or("-".into(), millis),
            ]
        })
        .collect();
    println!("{}", table(&["JOB", "SCHEDULE", "NEXT RUN", "LAST", "SUCCESS", "ACTIVE", "P50"], rows));
    Ok(ExitCode::SUCCESS)
}

/// A time to come (`in 12s`) or past (`3s ago`), with the wall clock.
fn when(t: i64) -> String {
    let now = berth_server::now_ms();
    let rel = if t >= now { format!("in {}", millis(t - now)) } else { ago(t) };
    format!("{} ({rel})", output::clock(t))
}

fn millis(ms: i64) -> String {
    match ms {
        ..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

fn outcome(run: &Run) -> String {
    let mut text = run.state.to_string();
    if let Some(code) = run.exit_code() {
        text.push_str(&format!(" (exit {code})"));
    }
    if let Some(d) = run.duration_ms() {
        text.push_str(&format!(" in {}", millis(d)));
    }
    if let Some(why) = &run.reason {
        text.push_str(&format!(": {why}"));
    }
    text
}

fn show(j: &JobStatus, history: bool, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    if ctx.format == Format::Json {
        println!("{}", output::json(j)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut state = if j.destroying {
        "destroying".to_string()
    } else if j.suspended {
        "suspended".to_string()
    } else {
        "on schedule".to_string()
    };
    if j.active > 0 {
        state.push_str(&format!(", {} run(s) going", j.active));
    }
    println!("job:          {} (v{})", j.id, j.version);
    println!("schedule:     {}", j.schedule_text());
    println!("state:        {state}");
    println!("concurrency:  {}", j.concurrency.as_str());
    println!("next run:     {}", j.next_run.map_or("-".into(), when));
    if let Some(last) = &j.last {
        println!("last run:     {} {}", last.number, outcome(last));
    }
    let rate = j.success_rate.map_or("-".into(), |r| format!("{:.1}%", r * 100.0));
    println!("success:      {rate} of the kept runs");
    let d = &j.durations;
    let p = |v: Option<i64>| v.map_or("-".into(), millis);
    println!(
        "run time:     p50 {}  p95 {}  p99 {}  max {}  ({} runs)",
        p(d.p50_ms),
        p(d.p95_ms),
        p(d.p99_ms),
        p(d.max_ms),
        d.count
    );
    let shown: Vec<&Run> = if history { j.runs.iter().collect() } else { j.runs.iter().take(10).collect() };
    if shown.is_empty() {
        println!("\nno runs yet");
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    let rows = shown
        .iter()
        .map(|r| {
            let delay = r.started_at.map_or("-".into(), |s| millis(s - r.scheduled_at));
            vec![
                r.number.to_string(),
                output::clock(r.scheduled_at),
                r.trigger.as_str().into(),
                r.state.to_string(),
                r.duration_ms().map_or("-".into(), millis),
                r.exit_code().map_or("-".into(), |c| c.to_string()),
                r.node().unwrap_or("-").to_string(),
                r.attempts.len().to_string(),
                delay,
                r.reason.as_ref().map_or(String::new(), ToString::to_string),
            ]
        })
        .collect();
    let headers = ["RUN", "SCHEDULED", "BY", "STATE", "DURATION", "EXIT", "NODE", "ATTEMPTS", "DELAY", "REASON"];
    println!("{}", table(&headers, rows));
    if !history && j.runs.len() > shown.len() {
        println!("({} more: berth job {} history)", j.runs.len() - shown.len(), j.id);
    }
    Ok(ExitCode::SUCCESS)
}
