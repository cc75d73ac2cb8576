use berth_core::job::{Attempt, JobSpec, RunOf};
use berth_core::spec::DriverKind;
use berth_core::{Dur, NodeStatus};

use super::*;
use crate::reconcile::tests::node;
use crate::reconcile::{Snapshot, reconcile};

const SEC: Millis = 1000;

fn job(name: &str, extra: &str) -> Job {
    let text = format!("kind: job\ngroup: g\nname: {name}\ndriver: exec\ncommand: 'true'\n{extra}");
    let spec = JobSpec::from_yaml(&text, None).unwrap();
    Job {
        spec,
        version: 1,
        created_at: 0,
        updated_at: 0,
        schedule_from: 0,
        scheduled_through: 0,
        runs: 0,
        suspended: false,
        destroying: false,
        parents_seen: Default::default(),
        stats: Default::default(),
    }
}

fn run(job: &Job, number: u64, at: Millis, state: RunState) -> Run {
    Run::new(job, number, at, Trigger::Schedule, state)
}

/// A run with a live (or ended) attempt on n1.
fn attempt(mut run: Run, inst: &str) -> Run {
    run.state = RunState::Running;
    run.attempts.push(Attempt {
        instance: inst.into(),
        node: "n1".into(),
        placed_at: run.scheduled_at,
        started_at: None,
        finished_at: None,
        exit_code: None,
        result: None,
        succeeded: false,
    });
    run
}

fn instance(id: &str, job: &str, at: Millis, state: InstanceState) -> Instance {
    let mut i = crate::reconcile::tests::inst(id, 1, state);
    i.app = format!("g/{job}");
    i.driver = DriverKind::Exec;
    i.run = Some(RunOf { scheduled_at: at, attempt: 1 });
    i.observed.started_at = Some(at);
    i
}

fn plan_at(jobs: Vec<Job>, runs: Vec<Run>, instances: Vec<Instance>, now: Millis) -> Plan {
    let mut n = node("n1");
    n.last_heartbeat = now;
    let snapshot = Snapshot { nodes: vec![n], jobs, runs, instances, ..Default::default() };
    // Nodes stay in time: the checks asserted are the jobs'.
    reconcile(&snapshot, now, Settings { node_timeout_ms: 3_600_000_000, ..Settings::default() })
}

fn job_actions(plan: &Plan) -> Vec<&JobAction> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Job(j) => Some(j),
            _ => None,
        })
        .collect()
}

fn new_runs(plan: &Plan) -> Vec<(Millis, RunState)> {
    job_actions(plan)
        .into_iter()
        .filter_map(|a| match a {
            JobAction::NewRun { scheduled_at, state, .. } => Some((*scheduled_at, *state)),
            _ => None,
        })
        .collect()
}

fn placed(plan: &Plan) -> Vec<Millis> {
    job_actions(plan)
        .into_iter()
        .filter_map(|a| match a {
            JobAction::Place { run, .. } => Some(*run),
            _ => None,
        })
        .collect()
}

#[test]
fn a_due_run_is_recorded_and_placed_in_one_pass_and_the_next_time_is_the_check() {
    let j = job("tick", "schedule: R//PT2S\n");
    let plan = plan_at(vec![j], vec![], vec![], 2 * SEC + 5);
    assert_eq!(new_runs(&plan), [(2 * SEC, RunState::Pending)]);
    assert_eq!(placed(&plan), [2 * SEC]);
    assert_eq!(plan.check_at, Some(4 * SEC), "woken for the next time");
    let Some(JobAction::NewRun { through, .. }) = job_actions(&plan).first().copied() else { panic!() };
    assert_eq!(*through, Some(2 * SEC), "the schedule moves past it in the same write");
}

#[test]
fn nothing_is_due_before_its_time_and_the_through_mark_is_never_run_again() {
    let mut j = job("tick", "schedule: R//PT2S\n");
    let plan = plan_at(vec![j.clone()], vec![], vec![], 2 * SEC - 1);
    assert!(new_runs(&plan).is_empty());
    assert_eq!(plan.check_at, Some(2 * SEC));
    j.scheduled_through = 2 * SEC;
    let plan = plan_at(vec![j], vec![], vec![], 2 * SEC + 500);
    assert!(new_runs(&plan).is_empty(), "2 s was dealt with already");
}

#[test]
fn a_server_down_across_many_times_records_one_missed_entry_and_runs_only_the_latest() {
    let j = job("tick", "schedule: R//PT2S\nstarting_deadline: 5s\n");
    // Down from 0 to 61 s: 30 times passed; 60 s is within the deadline.
    let plan = plan_at(vec![j.clone()], vec![], vec![], 61 * SEC);
    assert_eq!(new_runs(&plan), [(2 * SEC, RunState::Missed), (60 * SEC, RunState::Pending)]);
    let Some(JobAction::NewRun { reason: Some(RunReason::Missed { count, .. }), .. }) =
        job_actions(&plan).first().copied()
    else {
        panic!()
    };
    assert_eq!(*count, 29);
    assert_eq!(placed(&plan), [60 * SEC], "no burst of catch-up runs");

    // Past the deadline of the latest too: all of them missed, nothing runs.
    let j = job("daily", "schedule: '0 6 * * *'\nstarting_deadline: 60s\n");
    let six = 6 * 3600 * SEC;
    let plan = plan_at(vec![j], vec![], vec![], six + 2 * 60 * SEC);
    assert_eq!(new_runs(&plan), [(six, RunState::Missed)]);
    assert!(placed(&plan).is_empty());
}

#[test]
fn forbid_skips_while_a_run_goes_and_replace_stops_it() {
    let mut j = job("long", "schedule: R//PT2S\nconcurrency: forbid\n");
    j.scheduled_through = 2 * SEC;
    j.runs = 1;
    let going = attempt(run(&j, 1, 2 * SEC, RunState::Running), "a1");
    let live = instance("a1", "long", 2 * SEC, InstanceState::Running);
    let plan = plan_at(vec![j.clone()], vec![going.clone()], vec![live.clone()], 4 * SEC + 1);
    assert_eq!(new_runs(&plan), [(4 * SEC, RunState::Skipped)]);
    assert!(placed(&plan).is_empty());

    j.spec.concurrency = Concurrency::Replace;
    let plan = plan_at(vec![j.clone()], vec![going.clone()], vec![live.clone()], 4 * SEC + 1);
    assert_eq!(new_runs(&plan), [(4 * SEC, RunState::Pending)]);
    assert!(job_actions(&plan).iter().any(|a| matches!(a,
        JobAction::StopRun { run, why: RunReason::ReplacedBy { number: 2 }, .. } if *run == 2 * SEC)));
    assert_eq!(placed(&plan), [4 * SEC]);

    j.spec.concurrency = Concurrency::Allow;
    let plan = plan_at(vec![j], vec![going], vec![live], 4 * SEC + 1);
    assert_eq!(placed(&plan), [4 * SEC], "allow: both run");
}

fn ended(plan: &Plan) -> Vec<&AttemptEnd> {
    job_actions(plan)
        .into_iter()
        .filter_map(|a| match a {
            JobAction::AttemptEnded { end, .. } => Some(end),
            _ => None,
        })
        .collect()
}

#[test]
fn a_failed_attempt_is_retried_with_backoff_then_the_run_fails() {
    let mut j = job("flaky", "schedule: R//PT1H\nretries: 2\nretry_backoff: 1s\n");
    j.scheduled_through = 3600 * SEC;
    let at = 3600 * SEC;
    let mut failed = instance("a1", "flaky", at, InstanceState::Failed);
    failed.observed.exit_code = Some(3);
    failed.observed.because(Reason::Exited(berth_core::Exit { exit_code: Some(3), ..Default::default() }));
    let r = attempt(run(&j, 1, at, RunState::Running), "a1");
    let now = at + 10 * SEC;
    let plan = plan_at(vec![j.clone()], vec![r.clone()], vec![failed.clone()], now);
    assert_eq!(ended(&plan)[0].next, Next::Retry { at: now + SEC });
    assert_eq!(ended(&plan)[0].exit_code, Some(3));

    // The second failure waits twice as long.
    let mut r2 = r.clone();
    r2.attempts[0].finished_at = Some(now);
    let r2 = attempt(r2, "a1");
    let plan = plan_at(vec![j.clone()], vec![r2.clone()], vec![failed.clone()], now);
    assert_eq!(ended(&plan)[0].next, Next::Retry { at: now + 2 * SEC });

    // The third is the last one allowed.
    let mut r3 = r2.clone();
    r3.attempts[1].finished_at = Some(now);
    let r3 = attempt(r3, "a1");
    let plan = plan_at(vec![j.clone()], vec![r3], vec![failed.clone()], now);
    assert_eq!(ended(&plan)[0].next, Next::End(RunState::Failed));

    // A pending retry is placed at its time, not before.
    let mut waiting = r.clone();
    waiting.attempts[0].finished_at = Some(now);
    waiting.state = RunState::Pending;
    waiting.retry_at = Some(now + SEC);
    let plan = plan_at(vec![j.clone()], vec![waiting.clone()], vec![], now + 500);
    assert!(placed(&plan).is_empty());
    assert_eq!(plan.check_at, Some(now + SEC));
    let plan = plan_at(vec![j], vec![waiting], vec![], now + SEC);
    assert_eq!(placed(&plan), [at]);
}

#[test]
fn exit_zero_ends_the_run_succeeded() {
    let j = job("ok", "schedule: R//PT1H\nretries: 3\n");
    let at = 3600 * SEC;
    let r = attempt(run(&j, 1, at, RunState::Running), "a1");
    let done = instance("a1", "ok", at, InstanceState::Succeeded);
    let plan = plan_at(vec![j], vec![r], vec![done], at + 5 * SEC);
    assert_eq!(ended(&plan)[0].next, Next::End(RunState::Succeeded));
    assert!(ended(&plan)[0].succeeded);
}

#[test]
fn an_attempt_past_its_timeout_is_stopped_and_one_on_a_cut_off_node_counts_as_failed() {
    let j = job("slow", "schedule: R//PT1H\ntimeout: 5s\n");
    let at = 3600 * SEC;
    let r = attempt(run(&j, 1, at, RunState::Running), "a1");
    let live = instance("a1", "slow", at, InstanceState::Running);
    let plan = plan_at(vec![j.clone()], vec![r.clone()], vec![live.clone()], at + 4 * SEC);
    assert_eq!(plan.check_at, Some(at + 5 * SEC));
    let plan = plan_at(vec![j.clone()], vec![r.clone()], vec![live.clone()], at + 5 * SEC);
    assert!(plan.actions.iter().any(|a| matches!(a,
        Action::Stop { instance, reason: Reason::TimedOut { timeout } } if instance == "a1" && *timeout == Dur::secs(5))));

    let mut n = node("n1");
    n.status = NodeStatus::Disconnected;
    n.disconnected_at = Some(at + SEC);
    let snapshot =
        Snapshot { nodes: vec![n], jobs: vec![j], runs: vec![r], instances: vec![live], ..Default::default() };
    let plan = reconcile(&snapshot, at + 2 * SEC, Settings::default());
    let end = ended(&plan);
    assert_eq!(end[0].next, Next::End(RunState::Failed));
    assert!(end[0].why.contains("lost"), "{}", end[0].why);
}

#[test]
fn a_child_runs_once_after_all_its_parents_latest_runs_succeeded() {
    let a = job("extract", "schedule: R//PT1H\n");
    let b = job("fetch", "schedule: R//PT1H\n");
    let mut child = job("load", "after: [extract, fetch]\n");
    let ok = |j: &Job, n: u64| run(j, n, n as Millis * SEC, RunState::Succeeded);
    let runs = vec![ok(&a, 1), ok(&b, 1)];
    let plan = plan_at(vec![a.clone(), b.clone(), child.clone()], runs.clone(), vec![], 10 * SEC);
    let triggered: Vec<&JobAction> = job_actions(&plan)
        .into_iter()
        .filter(|x| matches!(x, JobAction::NewRun { trigger: Trigger::Parents, .. }))
        .collect();
    assert_eq!(triggered.len(), 1);
    let JobAction::NewRun { parents_seen: Some(seen), .. } = triggered[0] else { panic!() };
    assert_eq!(seen.values().copied().collect::<Vec<_>>(), [1, 1]);

    // Marked seen: no second trigger for the same parents' runs.
    child.parents_seen = seen.clone();
    let plan = plan_at(vec![a.clone(), b.clone(), child.clone()], runs.clone(), vec![], 11 * SEC);
    assert!(new_runs(&plan).is_empty());

    // One parent ran again but failed: nothing.
    let mut failed = run(&a, 2, 20 * SEC, RunState::Failed);
    failed.finished_at = Some(21 * SEC);
    let runs = vec![ok(&a, 1), failed, ok(&b, 1), ok(&b, 2)];
    let plan = plan_at(vec![a, b, child], runs, vec![], 30 * SEC);
    assert!(new_runs(&plan).is_empty());
}

#[test]
fn history_keeps_the_newest_finished_runs() {
    let mut j = job("tick", "schedule: R//PT1H\nhistory: 2\n");
    j.scheduled_through = 10 * 3600 * SEC;
    let runs: Vec<Run> = (1..=4).map(|n| run(&j, n, n as Millis * 3600 * SEC, RunState::Succeeded)).collect();
    let plan = plan_at(vec![j], runs, vec![], 10 * 3600 * SEC + 1);
    let forgotten: Vec<Millis> = job_actions(&plan)
        .into_iter()
        .filter_map(|a| match a {
            JobAction::ForgetRun { run, .. } => Some(*run / (3600 * SEC)),
            _ => None,
        })
        .collect();
    assert_eq!(forgotten, [1, 2]);
}

#[test]
fn a_destroyed_job_stops_its_runs_then_goes() {
    let mut j = job("tick", "schedule: R//PT2S\n");
    j.destroying = true;
    let r = attempt(run(&j, 1, 2 * SEC, RunState::Running), "a1");
    let live = instance("a1", "tick", 2 * SEC, InstanceState::Running);
    let plan = plan_at(vec![j.clone()], vec![r.clone()], vec![live], 3 * SEC);
    assert!(job_actions(&plan).iter().any(|a| matches!(a, JobAction::StopRun { why: RunReason::JobDestroyed, .. })));
    assert!(!job_actions(&plan).iter().any(|a| matches!(a, JobAction::RemoveJob { .. })));
    assert!(new_runs(&plan).is_empty(), "a destroyed job starts nothing");
    let plan = plan_at(vec![j], vec![], vec![], 3 * SEC);
    assert!(job_actions(&plan).iter().any(|a| matches!(a, JobAction::RemoveJob { .. })));
}

#[test]
fn a_leftover_attempt_is_stopped_or_forgotten_and_never_counted_as_an_app() {
    let j = job("tick", "schedule: R//PT1H\n");
    let stray = instance("s1", "tick", SEC, InstanceState::Running);
    let done = instance("s2", "gone", SEC, InstanceState::Succeeded);
    let plan = plan_at(vec![j], vec![], vec![stray, done], 2 * SEC);
    assert!(plan.actions.iter().any(|a| matches!(a, Action::Stop { instance, .. } if instance == "s1")));
    assert!(plan.actions.iter().any(|a| matches!(a, Action::Forget { instance } if instance == "s2")));
}

#[test]
fn a_run_that_cannot_be_placed_within_its_deadline_is_missed() {
    let j = job("big", "schedule: R//PT1H\ncpu: 64\nstarting_deadline: 10s\n");
    let at = 3600 * SEC;
    let mut j2 = j.clone();
    j2.scheduled_through = at;
    let pending = run(&j2, 1, at, RunState::Pending);
    let plan = plan_at(vec![j2.clone()], vec![pending.clone()], vec![], at + 5 * SEC);
    assert_eq!(plan.pending.len(), 1);
    assert_eq!(plan.check_at, Some(at + 10 * SEC + 1));
    let plan = plan_at(vec![j2], vec![pending], vec![], at + 11 * SEC);
    assert!(job_actions(&plan).iter().any(|a| matches!(
        a,
        JobAction::EndRun { state: RunState::Missed, reason: Some(RunReason::NotPlaced { .. }), .. }
    )));
}

#[test]
fn due_counts_every_time_passed_and_names_the_next() {
    let s = Schedule::parse("R//PT2S", None).unwrap();
    let d = due(&s, 0, 0, 9 * SEC);
    assert_eq!(d, Due { count: 4, first: Some(2 * SEC), last: Some(8 * SEC), next: Some(10 * SEC) });
    let s = Schedule::parse("R3//PT2S", None).unwrap();
    // A new job's schedule stands just before its deploy: a start-less interval runs at once.
    let d = due(&s, -1, 0, 60 * SEC);
    assert_eq!(
        (d.count, d.first, d.last, d.next),
        (3, Some(0), Some(4 * SEC), None),
        "R3: three runs, from the deploy"
    );
}

#[test]
fn percentiles_by_nearest_rank() {
    let v: Vec<i64> = (1..=100).collect();
    assert_eq!(percentile(&v, 50.0), Some(50));
    assert_eq!(percentile(&v, 99.0), Some(99));
    assert_eq!(percentile(&[7], 95.0), Some(7));
    assert_eq!(percentile(&[], 50.0), None);
}
