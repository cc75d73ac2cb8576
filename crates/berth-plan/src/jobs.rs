//! Jobs: which runs are due, which are missed or skipped, which attempts ended, retry, time
//! out or must stop, and what history goes. Pure: a snapshot and `now` in, actions out.
//!
//! A run's identity is its scheduled time. The planner only ever asks for a run at a time past
//! the job's `scheduled_through`, and the store creates it in the same guarded transaction that
//! moves `scheduled_through`, so no time runs twice, whoever leads and however often it plans.

use std::collections::{BTreeMap, HashMap, HashSet};

use berth_core::job::{Concurrency, RunReason, Trigger};
use berth_core::reason::Waiting;
use berth_core::schedule::Schedule;
use berth_core::{Allocation, Desired, Instance, InstanceState, Job, Millis, Node, Pools, Reason, Run, RunState};
use chrono::{DateTime, Utc};

use crate::place::{self, Placement};
use crate::reconcile::{Action, Pending, Plan, Settings};

/// Scheduled times counted in one pass at most: a schedule every second over a day of downtime
/// is 86,400. Past it the rest is counted by the next pass (the store has moved).
const MAX_DUE_PER_PASS: u64 = 100_000;

/// What the planner asks of the store for a job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobAction {
    /// Record a run (due, or missed, or skipped) at `scheduled_at`, numbered next; move the
    /// job's schedule through `through` and its parents' marks to `parents_seen`, when set.
    NewRun {
        job: String,
        scheduled_at: Millis,
        trigger: Trigger,
        state: RunState,
        reason: Option<RunReason>,
        through: Option<Millis>,
        parents_seen: Option<BTreeMap<String, u64>>,
    },
    /// Start an attempt of a pending run there.
    Place { job: String, run: Millis, placement: Placement },
    /// The run's current attempt ended (its instance is terminal, or its node is cut off).
    AttemptEnded { job: String, run: Millis, instance: String, end: AttemptEnd },
    /// Stop a run's live attempt, and end the run as stopped for `why` when it ends.
    StopRun { job: String, run: Millis, instance: String, why: RunReason },
    /// End a run that has no live attempt.
    EndRun { job: String, run: Millis, state: RunState, reason: Option<RunReason> },
    /// Drop a finished run past the job's `history`.
    ForgetRun { job: String, run: Millis },
    /// A destroyed job with nothing left running.
    RemoveJob { job: String },
}

/// How an attempt ended, read off its instance, and what comes next for its run.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEnd {
    pub succeeded: bool,
    pub exit_code: Option<i64>,
    pub started_at: Option<Millis>,
    pub finished_at: Millis,
    pub why: String,
    pub next: Next,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// Place another attempt from this time.
    Retry { at: Millis },
    /// The run ends so.
    End(RunState),
}

fn to_utc(ms: Millis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The scheduled times in `(after, now]`: how many, the first and the last; and the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub count: u64,
    pub first: Option<Millis>,
    pub last: Option<Millis>,
    pub next: Option<Millis>,
}

pub fn due(schedule: &Schedule, after: Millis, from: Millis, now: Millis) -> Due {
    let mut d = Due { count: 0, first: None, last: None, next: None };
    let mut t = after;
    while d.count < MAX_DUE_PER_PASS {
        match schedule.next_after(to_utc(t), to_utc(from)).map(|n| n.timestamp_millis()) {
            Some(n) if n <= now => {
                d.count += 1;
                d.first.get_or_insert(n);
                d.last = Some(n);
                t = n;
            }
            next => {
                d.next = next;
                break;
            }
        }
    }
    d
}

/// What `plan` needs besides the jobs: the nodes, the room on them, and the instances.
pub(crate) struct Ctx<'a> {
    pub nodes: &'a [&'a Node],
    pub pools: &'a Pools,
    pub cut_off: &'a HashMap<&'a str, Millis>,
    pub instances: &'a HashMap<&'a str, &'a Instance>,
}

/// Plans every job. `ctx.instances` are the live and ended instances that are jobs' attempts.
pub(crate) fn plan(
    jobs: &[Job],
    runs: &[Run],
    ctx: &Ctx<'_>,
    usage: &mut place::Usage,
    now: Millis,
    settings: Settings,
    plan: &mut Plan,
) {
    let mut by_job: HashMap<&str, Vec<&Run>> = HashMap::new();
    for run in runs {
        by_job.entry(run.job.as_str()).or_default().push(run);
    }
    for list in by_job.values_mut() {
        list.sort_by_key(|r| r.number);
    }
    let ids: HashMap<String, &Job> = jobs.iter().map(|j| (j.id(), j)).collect();
    // Attempts the runs still count on; any other job instance is left over.
    let mut current: HashSet<&str> = HashSet::new();
    for job in jobs {
        let id = job.id();
        let job_runs = by_job.get(id.as_str()).map(Vec::as_slice).unwrap_or_default();
        for run in job_runs.iter().filter(|r| r.state.is_active()) {
            if let Some(a) = run.current_attempt() {
                current.insert(a.instance.as_str());
            }
        }
        plan_job(job, &id, job_runs, &by_job, &ids, ctx, usage, now, settings, plan);
    }
    let mut attempts: Vec<&Instance> = ctx.instances.values().copied().collect();
    attempts.sort_by(|a, b| a.id.cmp(&b.id));
    for inst in attempts {
        if current.contains(inst.id.as_str()) {
            continue;
        }
        if inst.state.is_terminal() {
            plan.actions.push(Action::Forget { instance: inst.id.clone() });
        } else if inst.desired == Desired::Run {
            let reason = match ids.get(&inst.app) {
                None => Reason::RunStopped { why: RunReason::JobDestroyed },
                Some(_) => Reason::NodeLost { node: inst.node.clone() },
            };
            plan.actions.push(Action::Stop { instance: inst.id.clone(), reason });
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_job(
    job: &Job,
    id: &str,
    runs: &[&Run],
    by_job: &HashMap<&str, Vec<&Run>>,
    jobs: &HashMap<String, &Job>,
    ctx: &Ctx<'_>,
    usage: &mut place::Usage,
    now: Millis,
    settings: Settings,
    plan: &mut Plan,
) {
    let spec = &job.spec;
    let act = |plan: &mut Plan, a: JobAction| plan.actions.push(Action::Job(a));
    let active: Vec<&Run> = runs.iter().copied().filter(|r| r.state.is_active()).collect();

    // Attempts that ended, ran too long, or stand on a node cut off.
    let mut live: Vec<(&Run, &Instance)> = Vec::new();
    for run in &active {
        let Some(attempt) = run.current_attempt() else { continue };
        let inst = ctx.instances.get(attempt.instance.as_str()).copied();
        let ended = match inst {
            None => Some(("its instance record is gone".to_string(), None, false, None)),
            Some(i) if i.state.is_terminal() => Some((
                i.observed.reason.clone().unwrap_or_else(|| i.state.to_string()),
                i.observed.exit_code,
                i.state == InstanceState::Succeeded,
                i.observed.finished_at,
            )),
            Some(i) if ctx.cut_off.contains_key(i.node.as_str()) => {
                Some((Reason::NodeLost { node: i.node.clone() }.to_string(), None, false, None))
            }
            Some(i) => {
                live.push((run, i));
                None
            }
        };
        let Some((why, exit_code, succeeded, finished_at)) = ended else { continue };
        let attempts = u32::try_from(run.attempts.len()).unwrap_or(u32::MAX);
        let next = if succeeded {
            Next::End(RunState::Succeeded)
        } else if run.stopping.is_some() {
            Next::End(RunState::Stopped)
        } else if attempts <= spec.retries && !job.destroying {
            let at = now + spec.retry_delay_ms(attempts);
            plan.check_by(at);
            Next::Retry { at }
        } else {
            Next::End(RunState::Failed)
        };
        let end = AttemptEnd {
            succeeded,
            exit_code,
            started_at: inst.and_then(|i| i.observed.started_at),
            finished_at: finished_at.unwrap_or(now),
            why,
            next,
        };
        act(
            plan,
            JobAction::AttemptEnded { job: id.into(), run: run.scheduled_at, instance: attempt.instance.clone(), end },
        );
    }
    // Still running: past the timeout it is stopped (and fails); a destroyed job stops it.
    for (run, inst) in &live {
        if inst.desired == Desired::Stop {
            continue;
        }
        if job.destroying {
            let why = RunReason::JobDestroyed;
            act(plan, JobAction::StopRun { job: id.into(), run: run.scheduled_at, instance: inst.id.clone(), why });
            continue;
        }
        if let Some(timeout) = spec.timeout {
            let since = inst.observed.started_at.unwrap_or(inst.created_at);
            let at = since + timeout.as_millis() as i64;
            if now >= at {
                plan.actions.push(Action::Stop { instance: inst.id.clone(), reason: Reason::TimedOut { timeout } });
            } else {
                plan.check_by(at);
            }
        }
    }

    if job.destroying {
        for run in active.iter().filter(|r| r.current_attempt().is_none()) {
            let reason = Some(RunReason::JobDestroyed);
            act(plan, JobAction::EndRun { job: id.into(), run: run.scheduled_at, state: RunState::Stopped, reason });
        }
        let anything_live = ctx.instances.values().any(|i| i.app == id && i.run.is_some() && i.state.is_live());
        if live.is_empty() && !anything_live {
            act(plan, JobAction::RemoveJob { job: id.into() });
        }
        return;
    }

    // New runs: the schedule's, and the parents'.
    let mut new_number = job.runs;
    let running_now: Vec<&Run> = active.iter().copied().filter(|r| r.stopping.is_none()).collect();
    let mut starts: Vec<Millis> = Vec::new();
    if !job.suspended {
        if let Some(Ok(schedule)) = spec.parsed_schedule() {
            let d = due(&schedule, job.scheduled_through, job.schedule_from, now);
            if let Some(last) = d.last {
                let deadline = spec.starting_deadline;
                let in_time = now - last <= deadline.as_millis() as i64;
                let missed = if in_time { d.count - 1 } else { d.count };
                if missed > 0 {
                    let first = d.first.unwrap_or(last);
                    new_number += 1;
                    act(
                        plan,
                        JobAction::NewRun {
                            job: id.into(),
                            scheduled_at: first,
                            trigger: Trigger::Schedule,
                            state: RunState::Missed,
                            reason: Some(RunReason::Missed { count: missed, first, deadline }),
                            through: Some(last),
                            parents_seen: None,
                        },
                    );
                }
                if in_time {
                    new_number += 1;
                    let (state, reason) = admit(spec.concurrency, &running_now, new_number, id, plan);
                    if state == RunState::Pending {
                        starts.push(last);
                    }
                    act(
                        plan,
                        JobAction::NewRun {
                            job: id.into(),
                            scheduled_at: last,
                            trigger: Trigger::Schedule,
                            state,
                            reason,
                            through: Some(last),
                            parents_seen: None,
                        },
                    );
                }
            }
            if let Some(next) = d.next {
                plan.check_by(next);
            }
        }
        if let Some(seen) = parents_done(job, by_job, jobs) {
            // Identity: now, after any run of this pass.
            let at = starts.last().map_or(now, |l| (*l + 1).max(now));
            new_number += 1;
            let (state, reason) = admit(spec.concurrency, &running_now, new_number, id, plan);
            if state == RunState::Pending {
                starts.push(at);
            }
            act(
                plan,
                JobAction::NewRun {
                    job: id.into(),
                    scheduled_at: at,
                    trigger: Trigger::Parents,
                    state,
                    reason,
                    through: None,
                    parents_seen: Some(seen),
                },
            );
        }
    }

    // Placement: runs waiting for their first attempt or a retry, then the new ones.
    let mut waiting: Vec<(Millis, bool)> = Vec::new();
    for run in active.iter().filter(|r| r.state == RunState::Pending && r.current_attempt().is_none()) {
        if run.stopping.is_some() {
            let reason = run.stopping.clone();
            act(plan, JobAction::EndRun { job: id.into(), run: run.scheduled_at, state: RunState::Stopped, reason });
            continue;
        }
        match run.retry_at {
            Some(at) if at > now => plan.check_by(at),
            _ => waiting.push((run.scheduled_at, run.attempts.is_empty())),
        }
    }
    waiting.extend(starts.iter().map(|at| (*at, true)));
    if waiting.is_empty() {
        prune_history(job, id, runs, plan);
        return;
    }
    let task = spec.task();
    let mut placer = place::Placer::new(id, &task, ctx.nodes, usage, ctx.pools);
    for (run, first) in waiting {
        let deadline_at = run + spec.starting_deadline.as_millis() as i64;
        let result = if plan.placed_count() >= settings.max_placements {
            plan.check_by(now);
            continue;
        } else {
            placer.place(usage)
        };
        match result {
            Ok(placement) => {
                usage.entry(placement.node.clone()).or_default().add(id, Allocation::of(&task), &placement.host_ports);
                plan.count_placed();
                act(plan, JobAction::Place { job: id.into(), run, placement });
            }
            Err(why) if first && now > deadline_at => {
                let reason = Some(RunReason::NotPlaced { why: why.to_string(), deadline: spec.starting_deadline });
                act(plan, JobAction::EndRun { job: id.into(), run, state: RunState::Missed, reason });
            }
            Err(why) => {
                if first {
                    plan.check_by(deadline_at + 1);
                }
                plan.pending.push(Pending { app: id.into(), missing: 1, why: Waiting::Unplaceable { why } });
            }
        }
    }
    prune_history(job, id, runs, plan);
}

/// Whether a new run starts, given the runs going and the job's `concurrency`: `replace` stops
/// them here.
fn admit(
    concurrency: Concurrency,
    running: &[&Run],
    number: u64,
    job: &str,
    plan: &mut Plan,
) -> (RunState, Option<RunReason>) {
    let Some(oldest) = running.first() else { return (RunState::Pending, None) };
    match concurrency {
        Concurrency::Allow => (RunState::Pending, None),
        Concurrency::Forbid => (RunState::Skipped, Some(RunReason::Overlap { number: oldest.number })),
        Concurrency::Replace => {
            for run in running {
                let why = RunReason::ReplacedBy { number };
                let action = match run.current_attempt() {
                    Some(a) => {
                        JobAction::StopRun { job: job.into(), run: run.scheduled_at, instance: a.instance.clone(), why }
                    }
                    None => JobAction::EndRun {
                        job: job.into(),
                        run: run.scheduled_at,
                        state: RunState::Stopped,
                        reason: Some(why),
                    },
                };
                plan.actions.push(Action::Job(action));
            }
            (RunState::Pending, None)
        }
    }
}

/// The parents' run numbers, when every parent's latest run that ran succeeded and is newer
/// than the one that last triggered this job.
fn parents_done(
    job: &Job,
    by_job: &HashMap<&str, Vec<&Run>>,
    jobs: &HashMap<String, &Job>,
) -> Option<BTreeMap<String, u64>> {
    let parents = job.spec.parents();
    if parents.is_empty() {
        return None;
    }
    let mut seen = BTreeMap::new();
    for parent in parents {
        jobs.get(&parent)?;
        let latest = by_job.get(parent.as_str())?.iter().rev().find(|r| {
            matches!(r.state, RunState::Succeeded | RunState::Failed | RunState::Stopped | RunState::Missed)
        })?;
        let before = job.parents_seen.get(&parent).copied().unwrap_or(0);
        if latest.state != RunState::Succeeded || latest.number <= before {
            return None;
        }
        seen.insert(parent, latest.number);
    }
    Some(seen)
}

/// Finished runs past `history`, oldest first.
fn prune_history(job: &Job, id: &str, runs: &[&Run], plan: &mut Plan) {
    let finished: Vec<&&Run> = runs.iter().filter(|r| !r.state.is_active()).collect();
    let keep = job.spec.history as usize;
    if finished.len() > keep {
        for run in &finished[..finished.len() - keep] {
            plan.actions.push(Action::Job(JobAction::ForgetRun { job: id.into(), run: run.scheduled_at }));
        }
    }
}

/// When the schedule runs the job next (in the past when it is due and not yet dealt with);
/// none when suspended, destroyed, done, or run by its parents only.
pub fn next_run(job: &Job) -> Option<Millis> {
    if job.suspended || job.destroying {
        return None;
    }
    let schedule = job.spec.parsed_schedule()?.ok()?;
    schedule.next_after(to_utc(job.scheduled_through), to_utc(job.schedule_from)).map(|t| t.timestamp_millis())
}

/// The percentile `p` (0 to 100) of durations, nearest rank.
pub fn percentile(sorted_ms: &[i64], p: f64) -> Option<i64> {
    if sorted_ms.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted_ms.len() as f64).ceil() as usize;
    sorted_ms.get(rank.clamp(1, sorted_ms.len()) - 1).copied()
}

#[cfg(test)]
mod tests;
