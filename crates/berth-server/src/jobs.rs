//! The store side of jobs: the planner's job actions written into the reconcile transaction,
//! each guarded by the revisions of the records it read. A run is created once: its key must be
//! absent, and the job record that numbers it and moves its schedule is compared in the same
//! transaction.

use std::collections::HashMap;

use berth_core::job::{Attempt, RunReason};
use berth_core::{Allocation, Desired, Instance, Job, Level, Millis, Reason, Run, RunOf, RunState};
use berth_plan::Snapshot;
use berth_plan::jobs::{JobAction, Next};
use berth_store::Txn;
use berth_store::state::{POOLS_KEY, State, Subject, encode, instance_key, job_key, run_key, runs_prefix};

use crate::apply::{Revisions, placed, random_suffix};

/// Event kinds a job's runs write; the alerts read the failed and missed ones.
pub(crate) const RUN_FAILED: &str = "run.failed";
pub(crate) const RUN_MISSED: &str = "run.missed";

/// Jobs and runs as one plan changes them, written once at the end.
pub(crate) struct JobWrites<'s> {
    snapshot: &'s Snapshot,
    revisions: &'s Revisions,
    jobs: HashMap<String, Job>,
    runs: HashMap<(String, Millis), Run>,
    removed: Vec<String>,
}

impl<'s> JobWrites<'s> {
    pub(crate) fn new(snapshot: &'s Snapshot, revisions: &'s Revisions) -> Self {
        JobWrites { snapshot, revisions, jobs: HashMap::new(), runs: HashMap::new(), removed: Vec::new() }
    }

    fn job(&mut self, id: &str) -> Option<&mut Job> {
        if !self.jobs.contains_key(id) {
            let job = self.snapshot.jobs.iter().find(|j| j.id() == id)?;
            self.jobs.insert(id.to_string(), job.clone());
        }
        self.jobs.get_mut(id)
    }

    fn run(&mut self, job: &str, at: Millis) -> Option<&mut Run> {
        let key = (job.to_string(), at);
        if !self.runs.contains_key(&key) {
            let run = self.snapshot.runs.iter().find(|r| r.job == job && r.scheduled_at == at)?;
            self.runs.insert(key.clone(), run.clone());
        }
        self.runs.get_mut(&key)
    }

    /// Adds one job action to `txn`.
    pub(crate) fn apply(
        &mut self,
        state: &State,
        mut txn: Txn,
        action: &JobAction,
        instances: &HashMap<&str, &Instance>,
        now: Millis,
    ) -> Txn {
        match action {
            JobAction::NewRun { job, scheduled_at, trigger, state: run_state, reason, through, parents_seen } => {
                let Some(j) = self.job(job) else { return txn };
                j.runs += 1;
                if let Some(t) = through {
                    j.scheduled_through = j.scheduled_through.max(*t);
                }
                if let Some(seen) = parents_seen {
                    j.parents_seen.clone_from(seen);
                }
                let mut run = Run::new(j, j.runs, *scheduled_at, *trigger, *run_state);
                run.reason.clone_from(reason);
                if !run_state.is_active() {
                    run.finished_at = Some(now);
                    j.stats.record(*run_state, None);
                }
                let number = run.number;
                // Created, never overwritten: the run's time is its identity.
                let key = run_key(job, *scheduled_at);
                txn = txn.expect(key, 0);
                self.runs.insert((job.clone(), *scheduled_at), run);
                match (run_state, reason) {
                    (RunState::Missed, Some(why)) => {
                        let text = format!("{job} run {number} missed: {why}");
                        txn = state.with_event(txn, now, Level::Error, RUN_MISSED, Subject::app(job), text);
                    }
                    (RunState::Skipped, Some(why)) => {
                        let text = format!("run {number} {why}");
                        txn = state.with_event(txn, now, Level::Info, "run.skipped", Subject::app(job), text);
                    }
                    _ => {}
                }
            }
            JobAction::Place { job, run, placement } => {
                let Some(j) = self.job(job) else { return txn };
                let task = j.spec.task();
                let version = j.version;
                let name = j.spec.name.clone();
                let Some(r) = self.run(job, *run) else { return txn };
                let attempt = u32::try_from(r.attempts.len() + 1).unwrap_or(u32::MAX);
                let id = format!("{name}-{}", random_suffix());
                let run_of = Some(RunOf { scheduled_at: *run, attempt });
                let inst = placed(&id, job, version, placement, Allocation::of(&task), run_of, now);
                r.attempts.push(Attempt {
                    instance: id.clone(),
                    node: placement.node.clone(),
                    placed_at: now,
                    started_at: None,
                    finished_at: None,
                    exit_code: None,
                    result: None,
                    succeeded: false,
                });
                r.state = RunState::Running;
                r.retry_at = None;
                let number = r.number;
                txn = txn
                    .expect(POOLS_KEY, self.revisions.pools)
                    .expect(instance_key(&id), 0)
                    .put(instance_key(&id), encode(&inst));
                let msg = format!("run {number} attempt {attempt} placed on {} ({})", placement.node, placement.driver);
                txn = state.with_event(
                    txn,
                    now,
                    Level::Info,
                    "run.placed",
                    Subject::instance(job, &id, &placement.node),
                    msg,
                );
            }
            JobAction::AttemptEnded { job, run, instance, end } => {
                let instance_rev = self.revisions.instances.get(instance.as_str()).copied().unwrap_or(0);
                let Some(r) = self.run(job, *run) else { return txn };
                if let Some(a) = r.attempts.iter_mut().rev().find(|a| &a.instance == instance) {
                    a.started_at = end.started_at.or(a.started_at);
                    a.finished_at = Some(end.finished_at);
                    a.exit_code = end.exit_code;
                    a.result = Some(if end.succeeded { "succeeded".into() } else { end.why.clone() });
                    a.succeeded = end.succeeded;
                }
                if r.started_at.is_none() {
                    r.started_at = end.started_at;
                }
                let attempts = u32::try_from(r.attempts.len()).unwrap_or(u32::MAX);
                let mut ended = None;
                match end.next {
                    Next::Retry { at } => {
                        r.state = RunState::Pending;
                        r.retry_at = Some(at);
                    }
                    Next::End(outcome) => {
                        r.state = outcome;
                        r.finished_at = Some(end.finished_at);
                        r.reason = match outcome {
                            RunState::Failed => Some(RunReason::AttemptFailed { attempts, why: end.why.clone() }),
                            RunState::Stopped => r.stopping.clone(),
                            _ => None,
                        };
                        ended = Some((outcome, r.duration_ms(), r.number, r.reason.clone()));
                    }
                }
                if let Some((outcome, duration, number, reason)) = ended {
                    if let Some(j) = self.job(job) {
                        j.stats.record(outcome, duration);
                    }
                    if outcome == RunState::Failed {
                        let why = reason.map(|r| r.to_string()).unwrap_or_default();
                        let text = format!("{job} run {number} failed: {why}");
                        txn = state.with_event(txn, now, Level::Error, RUN_FAILED, Subject::app(job), text);
                    }
                }
                if let Some(inst) = instances.get(instance.as_str()) {
                    txn = txn.expect(instance_key(instance), instance_rev);
                    if inst.state.is_terminal() {
                        txn = txn.delete(instance_key(instance));
                    } else {
                        // On a node cut off: stopped when it comes back, forgotten once ended.
                        let mut next = (*inst).clone();
                        next.desired = Desired::Stop;
                        next.set_reason(Reason::NodeLost { node: inst.node.clone() });
                        txn = txn.put(instance_key(instance), encode(&next));
                    }
                }
            }
            JobAction::StopRun { job, run, instance, why } => {
                let rev = self.revisions.instances.get(instance.as_str()).copied().unwrap_or(0);
                let Some(r) = self.run(job, *run) else { return txn };
                r.stopping = Some(why.clone());
                if let Some(inst) = instances.get(instance.as_str()) {
                    let mut next = (*inst).clone();
                    next.desired = Desired::Stop;
                    next.set_reason(Reason::RunStopped { why: why.clone() });
                    txn = txn.expect(instance_key(instance), rev).put(instance_key(instance), encode(&next));
                    let text = format!("stopping run {}: {why}", r.number);
                    let subject = Subject::instance(job, instance, &inst.node);
                    txn = state.with_event(txn, now, Level::Info, "run.stopping", subject, text);
                }
            }
            JobAction::EndRun { job, run, state: outcome, reason } => {
                let Some(r) = self.run(job, *run) else { return txn };
                r.state = *outcome;
                r.reason.clone_from(reason);
                r.finished_at = Some(now);
                let (number, duration) = (r.number, r.duration_ms());
                if let Some(j) = self.job(job) {
                    j.stats.record(*outcome, duration);
                }
                if *outcome == RunState::Missed {
                    let why = reason.as_ref().map(ToString::to_string).unwrap_or_default();
                    let text = format!("{job} run {number} missed: {why}");
                    txn = state.with_event(txn, now, Level::Error, RUN_MISSED, Subject::app(job), text);
                }
            }
            JobAction::ForgetRun { job, run } => {
                let key = run_key(job, *run);
                let rev = self.revisions.runs.get(&key).copied().unwrap_or(0);
                txn = txn.expect(key.clone(), rev).delete(key);
            }
            JobAction::RemoveJob { job } => {
                let rev = self.revisions.jobs.get(job).copied().unwrap_or(0);
                let prefix = runs_prefix(job);
                let end = format!("{}0", &prefix[..prefix.len() - 1]);
                txn = txn.expect(job_key(job), rev).delete(job_key(job)).delete_range(prefix, end);
                self.removed.push(job.clone());
                txn = state.with_event(
                    txn,
                    now,
                    Level::Info,
                    "job.destroyed",
                    Subject::app(job),
                    "its runs stopped and its history removed".into(),
                );
            }
        }
        txn
    }

    /// Writes every job and run changed, each guarded by the revision it was read at.
    pub(crate) fn finish(self, mut txn: Txn) -> Txn {
        for (id, job) in self.jobs {
            if self.removed.contains(&id) {
                continue;
            }
            let rev = self.revisions.jobs.get(&id).copied().unwrap_or(0);
            txn = txn.expect(job_key(&id), rev).put(job_key(&id), encode(&job));
        }
        for ((job, at), run) in self.runs {
            if self.removed.contains(&job) {
                continue;
            }
            let key = run_key(&job, at);
            let rev = self.revisions.runs.get(&key).copied().unwrap_or(0);
            txn = txn.expect(key.clone(), rev).put(key, encode(&run));
        }
        txn
    }
}
