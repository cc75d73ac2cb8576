//! Jobs: containers that run on a schedule (Chronos's repeating intervals, or cron) or after
//! other jobs, to an end. The spec, the records kept of a job and of each of its runs.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::duration::Dur;
use crate::model::Millis;
use crate::schedule::Schedule;
use crate::spec::{self, AppSpec, Command, Constraint, DriverKind, EnvValue, NetworkMode, SpecError, SpecErrors};

/// `kind: job`: what marks a spec as a job's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    #[default]
    Job,
}

/// What happens when a run is due while an earlier one still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    /// Both run.
    #[default]
    Allow,
    /// The new one is skipped, and recorded as skipped.
    Forbid,
    /// The running one is stopped, and the new one starts.
    Replace,
}

impl Concurrency {
    pub fn as_str(self) -> &'static str {
        match self {
            Concurrency::Allow => "allow",
            Concurrency::Forbid => "forbid",
            Concurrency::Replace => "replace",
        }
    }
}

fn default_retry_backoff() -> Dur {
    Dur::secs(10)
}
fn default_starting_deadline() -> Dur {
    Dur::secs(60)
}
fn default_history() -> u32 {
    50
}

/// One job as its owner writes it: what to run (as an app's instance), and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub kind: JobKind,
    pub group: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    /// Cores; fractions allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default)]
    pub network: NetworkMode,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, EnvValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "spec::constraint_list")]
    pub constraints: Vec<Constraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<DriverKind>,
    #[serde(default = "spec::default_pids")]
    pub pids: u32,
    /// Time between SIGTERM and SIGKILL when a run is stopped.
    #[serde(default = "spec::default_stop_timeout")]
    pub stop_timeout: Dur,
    /// `R[n]/start/period` (ISO 8601, as Chronos) or a 5-field cron expression. A job with
    /// `after` and no schedule runs only after its parents (or by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The IANA zone the schedule's wall-clock times are in (UTC when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_time_zone: Option<String>,
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Attempts after the first when a run fails.
    #[serde(default)]
    pub retries: u32,
    /// The wait before the first retry; each next one waits twice as long (at most 5 minutes).
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff: Dur,
    /// An attempt running longer is stopped and counts as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// A run that could not start within this long of its scheduled time is recorded as missed.
    #[serde(default = "default_starting_deadline")]
    pub starting_deadline: Dur,
    /// Finished runs kept for history and statistics.
    #[serde(default = "default_history")]
    pub history: u32,
    /// Parent jobs (`NAME` in the same group, or `GROUP/NAME`): the job runs once all their
    /// latest runs have succeeded, newer than its own last trigger.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Where the job's log lines are forwarded besides Berth's own store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_sinks: Vec<String>,
    /// Where its alerts (failed and missed runs) go besides the server-wide outputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_webhooks: Vec<String>,
}

/// Retries wait at most this long.
pub const MAX_RETRY_BACKOFF_MS: i64 = 300_000;
/// Most finished runs a job may keep.
pub const MAX_HISTORY: u32 = 1000;

impl JobSpec {
    /// Parses and validates YAML text; `file` names the source in errors.
    pub fn from_yaml(text: &str, file: Option<&str>) -> Result<JobSpec, SpecErrors> {
        let spec: JobSpec = spec::read_yaml(text, file, |_| None)?;
        spec.validate().map_err(|errors| spec::located(errors, text, file))?;
        Ok(spec)
    }

    /// `GROUP/NAME`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.group, self.name)
    }

    /// The parents as `GROUP/NAME`.
    pub fn parents(&self) -> Vec<String> {
        self.after.iter().map(|p| if p.contains('/') { p.clone() } else { format!("{}/{p}", self.group) }).collect()
    }

    /// The schedule, parsed (validation has checked it parses).
    pub fn parsed_schedule(&self) -> Option<Result<Schedule, String>> {
        self.schedule.as_deref().map(|s| Schedule::parse(s, self.schedule_time_zone.as_deref()))
    }

    /// What one attempt runs: an app's single instance, with no ports, health or router.
    pub fn task(&self) -> AppSpec {
        AppSpec {
            group: self.group.clone(),
            name: self.name.clone(),
            image: self.image.clone(),
            instances: 1,
            cpu: self.cpu,
            memory: self.memory,
            network: self.network,
            privileged: self.privileged,
            command: self.command.clone(),
            ports: Vec::new(),
            environment: self.environment.clone(),
            zones: Vec::new(),
            services: Vec::new(),
            constraints: self.constraints.clone(),
            driver: self.driver,
            health: None,
            upgrade: Default::default(),
            pids: self.pids,
            stop_timeout: self.stop_timeout,
            drain_timeout: Dur(0),
            balance: Default::default(),
            placement: Default::default(),
            slow_start: Dur(0),
            max_disconnect: Dur(0),
            log_sinks: self.log_sinks.clone(),
            alerts: Vec::new(),
            alert_webhooks: self.alert_webhooks.clone(),
        }
    }

    /// The wait before retry `n` (from 1): `retry_backoff` doubled each time, at most 5 minutes.
    pub fn retry_delay_ms(&self, n: u32) -> i64 {
        let base = i64::try_from(self.retry_backoff.0).unwrap_or(i64::MAX);
        let factor = 1i64.checked_shl(n.saturating_sub(1).min(30)).unwrap_or(i64::MAX);
        base.saturating_mul(factor).min(MAX_RETRY_BACKOFF_MS.max(base))
    }

    /// Checks meaning after the shape is known: what runs (as an app's would be checked), the
    /// schedule, and the job's own fields.
    pub fn validate(&self) -> Result<(), SpecErrors> {
        let mut errors = match self.task().validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.0,
        };
        let mut fail = |field: &str, message: String| {
            errors.push(SpecError {
                file: None,
                line: None,
                column: None,
                field: field.into(),
                message,
                suggestion: None,
            });
        };
        if let Some(zone) = &self.schedule_time_zone
            && let Err(why) = crate::schedule::parse_zone(zone)
        {
            fail("schedule_time_zone", why);
        }
        match (&self.schedule, self.after.is_empty()) {
            (None, true) => fail("schedule", "required: an ISO 8601 repeating interval (R/2024-01-01T06:00:00Z/PT2H), a cron expression (0 6 * * *), or `after: [job]`".into()),
            (Some(s), _) => {
                // A bad zone is said once, above.
                let zone = self.schedule_time_zone.as_deref().filter(|z| crate::schedule::parse_zone(z).is_ok());
                if let Err(why) = Schedule::parse(s, zone) {
                    fail("schedule", why);
                }
            }
            (None, false) => {}
        }
        if self.history == 0 || self.history > MAX_HISTORY {
            fail("history", format!("{} runs: keep 1 to {MAX_HISTORY}", self.history));
        }
        if self.retries > 100 {
            fail("retries", format!("{} is more than the 100 allowed", self.retries));
        }
        if self.retry_backoff.0 == 0 {
            fail("retry_backoff", "must be more than 0".into());
        }
        if let Some(t) = self.timeout
            && t.0 == 0
        {
            fail("timeout", "must be more than 0 (leave it out for no timeout)".into());
        }
        if self.starting_deadline < Dur::secs(1) {
            fail("starting_deadline", "must be at least 1s".into());
        }
        let me = self.id();
        for (i, parent) in self.after.iter().enumerate() {
            let full = if parent.contains('/') { parent.clone() } else { format!("{}/{parent}", self.group) };
            let ok = full
                .split_once('/')
                .is_some_and(|(g, n)| spec::check_label(g).is_ok() && spec::check_label(n).is_ok() && !n.contains('/'));
            if !ok {
                fail(&format!("after[{i}]"), format!("`{parent}` is not a job name (NAME or GROUP/NAME)"));
            } else if full == me {
                fail(&format!("after[{i}]"), "a job cannot run after itself".into());
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(SpecErrors(errors)) }
    }
}

/// A spec file's document: an app's (the default) or a job's (`kind: job`).
#[derive(Debug, Clone, PartialEq)]
pub enum SpecDoc {
    App(Box<AppSpec>),
    Job(Box<JobSpec>),
}

impl SpecDoc {
    /// Reads a spec of either kind, by its top-level `kind` (`app` when absent).
    pub fn from_yaml(text: &str, file: Option<&str>) -> Result<SpecDoc, SpecErrors> {
        let kind = top_level_kind(text);
        match kind.as_ref().map(|(k, _)| k.as_str()) {
            None => AppSpec::from_yaml(text, file).map(|s| SpecDoc::App(Box::new(s))),
            Some("job") => JobSpec::from_yaml(text, file).map(|s| SpecDoc::Job(Box::new(s))),
            Some("app") => {
                // An app's spec has no `kind` key of its own: read it without that line.
                let Some((_, line)) = kind else { return Err(SpecErrors(Vec::new())) };
                let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                spec::blank_block(&mut lines, line - 1);
                AppSpec::from_yaml(&lines.join("\n"), file).map(|s| SpecDoc::App(Box::new(s)))
            }
            Some(other) => Err(SpecErrors(vec![SpecError {
                file: file.map(str::to_string),
                line: kind.as_ref().map(|(_, l)| *l as u64),
                column: Some(1),
                field: "kind".into(),
                message: format!("`{other}` is not one of app, job"),
                suggestion: spec::closest(other, &["app", "job"]).map(str::to_string),
            }])),
        }
    }

    pub fn id(&self) -> String {
        match self {
            SpecDoc::App(s) => s.id(),
            SpecDoc::Job(s) => s.id(),
        }
    }
}

/// The document's top-level `kind` and its line (1-based), when written as a plain string.
fn top_level_kind(text: &str) -> Option<(String, usize)> {
    let places = spec::key_locations(text);
    let (_, line, _) = places.iter().find(|(k, _, _)| k == "kind")?;
    let line = usize::try_from(*line).ok()?;
    let written = text.lines().nth(line.checked_sub(1)?)?;
    let value = written.split_once(':')?.1;
    let value = value.split(" #").next().unwrap_or(value).trim().trim_matches(['"', '\'']);
    Some((value.to_string(), line))
}

/// A job: its spec, whether it is paused, where its schedule stands, and its run counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub spec: JobSpec,
    /// Bumped by every change of the spec.
    pub version: u64,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// When the current schedule was deployed: a repeating interval without a start counts
    /// from here.
    pub schedule_from: Millis,
    /// Scheduled times up to here have been dealt with (run, skipped or recorded missed).
    pub scheduled_through: Millis,
    /// Runs numbered so far; the next run is number `runs + 1`.
    #[serde(default)]
    pub runs: u64,
    #[serde(default)]
    pub suspended: bool,
    /// Set by `destroy`: runs are stopped, then the job and its history are removed.
    #[serde(default)]
    pub destroying: bool,
    /// Each parent's run number that last triggered this job (`after`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parents_seen: BTreeMap<String, u64>,
    /// Every run that ended, counted by outcome and duration, for `/metrics` (never pruned).
    #[serde(default)]
    pub stats: RunStats,
}

impl Job {
    pub fn id(&self) -> String {
        self.spec.id()
    }
}

/// Upper bounds, in seconds, of the run-duration histogram's buckets (`+Inf` beyond).
pub const DURATION_BUCKETS: [f64; 12] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0];

/// Counts of a job's ended runs, kept on the job record in the transaction that ends each run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStats {
    /// Runs by outcome (`succeeded`, `failed`, `missed`, `skipped`, `stopped`).
    #[serde(default)]
    pub outcomes: BTreeMap<String, u64>,
    /// Runs that ran, by duration: `buckets[i]` counts those up to `DURATION_BUCKETS[i]`, not
    /// cumulative; the last counts those beyond.
    #[serde(default)]
    pub buckets: Vec<u64>,
    #[serde(default)]
    pub duration_sum_ms: u64,
    #[serde(default)]
    pub duration_count: u64,
}

impl RunStats {
    /// Counts one ended run: its outcome, and how long it ran when it ran.
    pub fn record(&mut self, state: RunState, duration_ms: Option<i64>) {
        *self.outcomes.entry(state.as_str().to_string()).or_default() += 1;
        if let Some(ms) = duration_ms {
            let ms = u64::try_from(ms).unwrap_or(0);
            if self.buckets.len() != DURATION_BUCKETS.len() + 1 {
                self.buckets.resize(DURATION_BUCKETS.len() + 1, 0);
            }
            let secs = ms as f64 / 1000.0;
            let at = DURATION_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(DURATION_BUCKETS.len());
            self.buckets[at] += 1;
            self.duration_sum_ms += ms;
            self.duration_count += 1;
        }
    }
}

/// How a run came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Schedule,
    /// `berth job NAME run`.
    Manual,
    /// Its parents' latest runs all succeeded.
    Parents,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::Parents => "parents",
        }
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Waiting to be placed: just due, or between a failed attempt and its retry.
    Pending,
    /// An attempt is placed and runs.
    Running,
    Succeeded,
    /// Its last attempt failed and no retry is left.
    Failed,
    /// It could not start within `starting_deadline` of its time.
    Missed,
    /// `concurrency: forbid` and an earlier run was still going.
    Skipped,
    /// Stopped on purpose: replaced by a newer run, or the job was destroyed.
    Stopped,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Missed => "missed",
            RunState::Skipped => "skipped",
            RunState::Stopped => "stopped",
        }
    }

    pub fn is_active(self) -> bool {
        matches!(self, RunState::Pending | RunState::Running)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a run ended as it did, or waits, as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunReason {
    /// Its last attempt failed: why.
    AttemptFailed {
        attempts: u32,
        why: String,
    },
    /// The server was down (or the job could not be placed) past `starting_deadline`; `count`
    /// scheduled times from `first` on are recorded by this one entry.
    Missed {
        count: u64,
        first: Millis,
        deadline: Dur,
    },
    /// Waited for a place past `starting_deadline`.
    NotPlaced {
        why: String,
        deadline: Dur,
    },
    /// `concurrency: forbid` while run `number` was going.
    Overlap {
        number: u64,
    },
    /// `concurrency: replace`: run `number` took its place.
    ReplacedBy {
        number: u64,
    },
    JobDestroyed,
    /// Stopped on request (`berth job NAME stop`, or suspend with `--stop`).
    StopRequested,
}

impl fmt::Display for RunReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunReason::AttemptFailed { attempts, why } if *attempts > 1 => {
                write!(f, "failed after {attempts} attempts: {why}")
            }
            RunReason::AttemptFailed { why, .. } => f.write_str(why),
            RunReason::Missed { count, deadline, .. } if *count > 1 => {
                write!(f, "{count} scheduled runs missed: not started within starting_deadline ({deadline})")
            }
            RunReason::Missed { deadline, .. } => write!(f, "not started within starting_deadline ({deadline})"),
            RunReason::NotPlaced { why, deadline } => {
                write!(f, "not placed within starting_deadline ({deadline}): {why}")
            }
            RunReason::Overlap { number } => write!(f, "skipped: run {number} was still going (concurrency: forbid)"),
            RunReason::ReplacedBy { number } => write!(f, "replaced by run {number} (concurrency: replace)"),
            RunReason::JobDestroyed => f.write_str("job destroyed"),
            RunReason::StopRequested => f.write_str("stopped on request"),
        }
    }
}

/// One attempt of a run: an instance placed on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub instance: String,
    pub node: String,
    pub placed_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// How it ended, for people; unset while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default)]
    pub succeeded: bool,
}

/// One run of a job, identified by its scheduled time: created once, in the transaction that
/// moves the job's schedule past that time, so it never starts twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// `GROUP/NAME` of the job.
    pub job: String,
    /// 1, 2, ...: `berth job NAME logs --run N`.
    pub number: u64,
    /// Its identity: the time it was due (a manual or parent-triggered run: when triggered).
    pub scheduled_at: Millis,
    pub trigger: Trigger,
    pub state: RunState,
    /// The job's version it runs.
    pub version: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// A retry is not placed before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Millis>,
    /// Set when the run is told to stop (replaced, destroyed): it is not retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping: Option<RunReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RunReason>,
    /// When its first attempt's process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
}

impl Run {
    pub fn new(job: &Job, number: u64, scheduled_at: Millis, trigger: Trigger, state: RunState) -> Run {
        Run {
            job: job.id(),
            number,
            scheduled_at,
            trigger,
            state,
            version: job.version,
            attempts: Vec::new(),
            retry_at: None,
            stopping: None,
            reason: None,
            started_at: None,
            finished_at: None,
        }
    }

    /// From its first process start to its end.
    pub fn duration_ms(&self) -> Option<i64> {
        Some(self.finished_at? - self.started_at?)
    }

    /// The attempt running now (the last one, while the run is active).
    pub fn current_attempt(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| a.finished_at.is_none())
    }

    /// The node of its last attempt.
    pub fn node(&self) -> Option<&str> {
        self.attempts.last().map(|a| a.node.as_str())
    }

    pub fn exit_code(&self) -> Option<i64> {
        self.attempts.last().and_then(|a| a.exit_code)
    }
}

/// Which run an instance is an attempt of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOf {
    pub scheduled_at: Millis,
    /// 1 for the first attempt.
    pub attempt: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(extra: &str) -> Result<JobSpec, SpecErrors> {
        JobSpec::from_yaml(
            &format!("kind: job\ngroup: ops\nname: backup\ndriver: exec\ncommand: echo hi\n{extra}"),
            Some("job.yaml"),
        )
    }

    #[test]
    fn a_job_reads_with_its_schedule_and_defaults() {
        let spec = job("schedule: R/2016-11-07T06:00:00Z/PT2H\nschedule_time_zone: Europe/Berlin\n").unwrap();
        assert_eq!(spec.concurrency, Concurrency::Allow);
        assert_eq!(spec.starting_deadline, Dur::secs(60));
        assert_eq!(spec.history, 50);
        assert!(matches!(spec.parsed_schedule(), Some(Ok(Schedule::Repeating(_)))));
        let task = spec.task();
        assert_eq!((task.instances, task.ports.len(), task.health.is_none()), (1, 0, true));
    }

    #[test]
    fn mistakes_are_located_with_a_suggestion() {
        let e = job("schedule: '*/5 * * *'\nconcurency: forbid\n").unwrap_err();
        let unknown = e.0.iter().find(|e| e.field == "concurency").unwrap();
        assert_eq!((unknown.line, unknown.suggestion.as_deref()), (Some(7), Some("concurrency")));
        let e = job("schedule: '*/5 * * *'\n").unwrap_err();
        assert_eq!(e.0[0].field, "schedule");
        assert_eq!(e.0[0].line, Some(6));
        assert!(e.0[0].message.contains("5 fields"), "{}", e.0[0].message);
        let e = job("schedule: '0 6 * * *'\nschedule_time_zone: Europe/Berln\n").unwrap_err();
        assert_eq!(e.0.len(), 1, "a bad zone is said once: {e}");
        assert!(e.0[0].message.contains("Europe/Berlin"), "{e}");
        let e = job("schedule: '0 6 * * *'\nconcurrency: forbd\n").unwrap_err();
        assert_eq!(e.0[0].suggestion.as_deref(), Some("forbid"), "{e}");
        let e = job("").unwrap_err();
        assert!(e.to_string().contains("`schedule`: required"), "{e}");
        let e = job("after: [backup]\n").unwrap_err();
        assert!(e.to_string().contains("after itself"), "{e}");
        let e = job("schedule: R//PT1S\nhistory: 0\nretry_backoff: 0s\ntimeout: 0s\n").unwrap_err();
        let fields: Vec<&str> = e.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["history", "retry_backoff", "timeout"]);
    }

    #[test]
    fn what_runs_is_checked_as_an_apps_instance() {
        let e = JobSpec::from_yaml("kind: job\ngroup: ops\nname: b\nschedule: R//PT1S\nmemory: 2\n", None).unwrap_err();
        assert_eq!(e.0[0].field, "image", "{e}");
        assert!(e.0.iter().any(|e| e.field == "memory" && e.line == Some(5)), "{e}");
    }

    #[test]
    fn the_kind_picks_the_spec() {
        let app = SpecDoc::from_yaml("kind: app\ngroup: a\nname: b\nimage: nginx\n", None).unwrap();
        assert!(matches!(app, SpecDoc::App(_)));
        let app = SpecDoc::from_yaml("group: a\nname: b\nimage: nginx\n", None).unwrap();
        assert!(matches!(app, SpecDoc::App(_)));
        let job = SpecDoc::from_yaml("kind: job # nightly\ngroup: a\nname: b\nimage: x\nschedule: 0 1 * * *\n", None);
        assert!(matches!(job, Ok(SpecDoc::Job(_))), "{job:?}");
        let e = SpecDoc::from_yaml("group: a\nname: b\nkind: jbo\nimage: x\n", Some("f.yaml")).unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].suggestion.as_deref()), (Some(3), Some("job")));
        let e = SpecDoc::from_yaml("kind: app\ngroup: a\nname: b\nimagee: x\n", None).unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].field.as_str()), (Some(4), "imagee"), "line numbers stay");
    }

    #[test]
    fn retries_back_off_doubling_up_to_five_minutes() {
        let spec = job("schedule: R//PT1S\nretry_backoff: 10s\n").unwrap();
        let delays: Vec<i64> = (1..=7).map(|n| spec.retry_delay_ms(n)).collect();
        assert_eq!(delays, [10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000]);
        assert_eq!(spec.retry_delay_ms(1000), 300_000);
    }

    #[test]
    fn stats_count_outcomes_and_durations() {
        let mut s = RunStats::default();
        s.record(RunState::Succeeded, Some(700));
        s.record(RunState::Failed, Some(20_000_000));
        s.record(RunState::Missed, None);
        assert_eq!(s.outcomes.get("succeeded"), Some(&1));
        assert_eq!(s.buckets[2], 1, "0.7 s is in the 1 s bucket");
        assert_eq!(s.buckets[DURATION_BUCKETS.len()], 1, "past the last bound");
        assert_eq!((s.duration_count, s.duration_sum_ms), (2, 20_000_700));
    }
}
