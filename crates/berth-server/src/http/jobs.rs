//! `/v1/jobs`: deploy, list, status and history, run now, suspend, resume, destroy, logs. Every
//! write is one compare-and-swap transaction on the job record.

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use berth_api::{Durations, JobDeployRequest, JobDeployResponse, JobStatus};
use berth_core::job::Trigger;
use berth_core::{Job, JobSpec, Level, Millis, Run, RunState, SpecDoc};
use berth_store::Txn;
use berth_store::state::Versioned;
use berth_store::state::{Subject, encode, job_key, run_key};

use super::cas::{self, Attempt};
use super::error::{ApiError, ApiResult, WaitQuery, indexed, parse_json, wait_for};
use super::tokens::Actor;
use crate::{Shared, now_ms};

fn job_id(group: &str, name: &str) -> String {
    format!("{group}/{name}")
}

/// A job's view: its schedule, next run, last result, success rate and run-time percentiles
/// over the runs kept; with every kept run when `with_runs`.
pub(crate) fn status(job: &Job, runs: &[Run], with_runs: bool) -> JobStatus {
    use berth_plan::jobs::percentile;
    let mut ran: Vec<i64> = runs
        .iter()
        .filter(|r| matches!(r.state, RunState::Succeeded | RunState::Failed))
        .filter_map(Run::duration_ms)
        .collect();
    ran.sort_unstable();
    let judged: Vec<&Run> =
        runs.iter().filter(|r| matches!(r.state, RunState::Succeeded | RunState::Failed | RunState::Missed)).collect();
    let succeeded = judged.iter().filter(|r| r.state == RunState::Succeeded).count();
    let last = runs.iter().filter(|r| !r.state.is_active()).max_by_key(|r| r.number).cloned();
    let mut newest: Vec<Run> = if with_runs { runs.to_vec() } else { Vec::new() };
    newest.sort_by_key(|r| std::cmp::Reverse(r.number));
    JobStatus {
        id: job.id(),
        group: job.spec.group.clone(),
        name: job.spec.name.clone(),
        version: job.version,
        schedule: job.spec.schedule.clone(),
        schedule_time_zone: job.spec.schedule_time_zone.clone(),
        after: job.spec.parents(),
        concurrency: job.spec.concurrency,
        suspended: job.suspended,
        destroying: job.destroying,
        next_run: berth_plan::jobs::next_run(job),
        active: runs.iter().filter(|r| r.state.is_active()).count(),
        last,
        success_rate: (!judged.is_empty()).then(|| succeeded as f64 / judged.len() as f64),
        durations: Durations {
            count: ran.len(),
            p50_ms: percentile(&ran, 50.0),
            p95_ms: percentile(&ran, 95.0),
            p99_ms: percentile(&ran, 99.0),
            max_ms: ran.last().copied(),
        },
        stats: job.stats.clone(),
        runs: newest,
        spec: job.spec.clone(),
    }
}

fn values<T>(records: Vec<Versioned<T>>) -> Vec<T> {
    records.into_iter().map(|v| v.value).collect()
}

pub(super) fn status_of(shared: &Shared, id: &str) -> ApiResult<JobStatus> {
    let job = shared.state.job(id)?.ok_or_else(|| ApiError::not_found(&format!("job {id}")))?;
    Ok(status(&job.value, &values(shared.state.runs_of(id)?), true))
}

pub(super) async fn list(
    AxState(shared): AxState<Shared>,
    axum::Extension(actor): axum::Extension<Actor>,
) -> ApiResult<Response> {
    let index = shared.state.store().revision();
    Ok(indexed(index, &visible(&shared, &actor)?))
}

/// Every job of the token's groups, without their runs.
pub(super) fn visible(shared: &Shared, actor: &Actor) -> ApiResult<Vec<JobStatus>> {
    let runs = values(shared.state.runs()?);
    let jobs: Vec<JobStatus> = shared
        .state
        .jobs()?
        .into_iter()
        .filter(|j| actor.grant().sees(&j.value.spec.group))
        .map(|j| {
            let id = j.value.id();
            let own: Vec<Run> = runs.iter().filter(|r| r.job == id).cloned().collect();
            status(&j.value, &own, false)
        })
        .collect();
    Ok(jobs)
}

pub(super) async fn get(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    let index = wait_for(&shared, &q).await?;
    Ok(indexed(index, &status_of(&shared, &job_id(&group, &name))?))
}

/// A job spec sent as YAML (`kind: job`) or as a JSON `JobDeployRequest`, validated.
fn spec_of_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<JobSpec> {
    let is_yaml = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.contains("yaml"));
    let invalid = |e: berth_core::SpecErrors| ApiError::invalid(format!("invalid spec: {e}"), e.0);
    if is_yaml {
        let text =
            std::str::from_utf8(body).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "spec is not UTF-8"))?;
        match SpecDoc::from_yaml(text, None).map_err(invalid)? {
            SpecDoc::Job(spec) => Ok(*spec),
            SpecDoc::App(_) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "this is an app's spec; a job's says `kind: job` (apps deploy under /v1/apps)",
            )),
        }
    } else {
        let spec = parse_json::<JobDeployRequest>(body)?.spec;
        spec.validate().map_err(invalid)?;
        Ok(spec)
    }
}

pub(super) async fn deploy(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let spec = spec_of_body(&headers, &body)?;
    let id = job_id(&group, &name);
    if spec.id() != id {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the spec is for {} but the path names {id}", spec.id()),
        ));
    }
    if shared.state.app(&id)?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("an app is named {id}: a job and an app share their names (logs, metrics); choose another"),
        ));
    }
    let state = &shared.state;
    let (_, (created, changed, version)) = cas::retry(state, &format!("job {id}"), || {
        let now = now_ms();
        let existing = state.job(&id)?;
        let rev = existing.as_ref().map_or(0, |v| v.mod_revision);
        let job = match existing.map(|v| v.value) {
            Some(j) if j.destroying => {
                return Err(ApiError::new(StatusCode::CONFLICT, format!("job {id} is being destroyed")));
            }
            Some(j) if j.spec == spec => return Ok(Attempt::Done((false, false, j.version))),
            Some(mut j) => {
                let new_schedule =
                    j.spec.schedule != spec.schedule || j.spec.schedule_time_zone != spec.schedule_time_zone;
                if new_schedule {
                    // A new schedule counts from now: nothing before it is due or missed.
                    j.schedule_from = now;
                    j.scheduled_through = now - 1;
                }
                j.spec = spec.clone();
                j.version += 1;
                j.updated_at = now;
                j
            }
            None => Job {
                spec: spec.clone(),
                version: 1,
                created_at: now,
                updated_at: now,
                schedule_from: now,
                // Just before the deploy: a repeating interval without a start runs at once.
                scheduled_through: now - 1,
                runs: 0,
                suspended: false,
                destroying: false,
                parents_seen: Default::default(),
                stats: Default::default(),
            },
        };
        let created = job.version == 1;
        let mut txn = Txn::default().expect(job_key(&id), rev).put(job_key(&id), encode(&job));
        let task = job.spec.task();
        // A run takes a place as one instance of the group's: quota, privileged, host network.
        super::groups::fits(&shared, &id, &task, 0)?;
        txn = super::secrets::claim(&shared, txn, &task)?;
        let verb = if created { "created" } else { "changed" };
        let text = format!("v{} {verb}: {}", job.version, job.spec.schedule.as_deref().unwrap_or("after parents"));
        txn = state.with_event(txn, now, Level::Info, "job.deployed", Subject::app(&id), text);
        Ok(Attempt::Write(txn, (created, true, job.version)))
    })?;
    let resp = JobDeployResponse { created, changed, version, job: status_of(&shared, &id)? };
    let mut out = indexed(shared.state.store().revision(), &resp);
    if created {
        *out.status_mut() = StatusCode::CREATED;
    }
    Ok(out)
}

/// Changes the job record under compare-and-swap; `change` returns false when nothing changes.
fn change_job(
    shared: &Shared,
    id: &str,
    event: (&str, &str),
    change: impl Fn(&mut Job, Millis) -> ApiResult<bool>,
) -> ApiResult<Response> {
    let (index, ()) = cas::retry(&shared.state, &format!("job {id}"), || {
        let now = now_ms();
        let current = shared.state.job(id)?.ok_or_else(|| ApiError::not_found(&format!("job {id}")))?;
        let mut job = current.value;
        if !change(&mut job, now)? {
            return Ok(Attempt::Done(()));
        }
        job.updated_at = now;
        let txn = Txn::default().expect(job_key(id), current.mod_revision).put(job_key(id), encode(&job));
        let txn = shared.state.with_event(txn, now, Level::Info, event.0, Subject::app(id), event.1.to_string());
        Ok(Attempt::Write(txn, ()))
    })?;
    Ok(indexed(index, &status_of(shared, id)?))
}

fn not_destroying(job: &Job) -> ApiResult<()> {
    if job.destroying {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("job {} is being destroyed", job.id())));
    }
    Ok(())
}

pub(super) async fn suspend(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    change_job(&shared, &job_id(&group, &name), ("job.suspended", "no scheduled run starts until resumed"), |job, _| {
        not_destroying(job)?;
        Ok(!std::mem::replace(&mut job.suspended, true))
    })
}

pub(super) async fn resume(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    change_job(&shared, &job_id(&group, &name), ("job.resumed", "runs from the next scheduled time"), |job, now| {
        not_destroying(job)?;
        if !job.suspended {
            return Ok(false);
        }
        job.suspended = false;
        // What fell due while suspended was not wanted: neither run nor missed.
        job.scheduled_through = job.scheduled_through.max(now);
        Ok(true)
    })
}

pub(super) async fn destroy(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    change_job(&shared, &job_id(&group, &name), ("job.destroying", "stopping its runs"), |job, _| {
        Ok(!std::mem::replace(&mut job.destroying, true))
    })
}

/// `POST /v1/jobs/{group}/{name}/run`: a run now, whatever the schedule (and `concurrency`),
/// as Kubernetes' `create job --from`. Answers the run.
pub(super) async fn run_now(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = job_id(&group, &name);
    let (index, run) = cas::retry(&shared.state, &format!("job {id}"), || {
        let now = now_ms();
        let current = shared.state.job(&id)?.ok_or_else(|| ApiError::not_found(&format!("job {id}")))?;
        let mut job = current.value;
        not_destroying(&job)?;
        // Its time is its identity: the first free millisecond from now.
        let taken: std::collections::HashSet<Millis> =
            shared.state.runs_of(&id)?.into_iter().map(|r| r.value.scheduled_at).collect();
        let at = (now..).find(|t| !taken.contains(t)).unwrap_or(now);
        job.runs += 1;
        job.updated_at = now;
        let run = Run::new(&job, job.runs, at, Trigger::Manual, RunState::Pending);
        let key = run_key(&id, at);
        let mut txn = Txn::default()
            .expect(job_key(&id), current.mod_revision)
            .put(job_key(&id), encode(&job))
            .expect(key.clone(), 0)
            .put(key, encode(&run));
        let text = format!("run {} started by hand", run.number);
        txn = shared.state.with_event(txn, now, Level::Info, "run.requested", Subject::app(&id), text);
        Ok(Attempt::Write(txn, run))
    })?;
    let mut out = indexed(index, &run);
    *out.status_mut() = StatusCode::CREATED;
    Ok(out)
}

/// The instances of a job's run `number` (its attempts), for `logs --run N`.
pub(super) fn attempts_of(shared: &Shared, id: &str, number: u64) -> ApiResult<Vec<String>> {
    let runs = shared.state.runs_of(id)?;
    let run = runs
        .into_iter()
        .map(|r| r.value)
        .find(|r| r.number == number)
        .ok_or_else(|| ApiError::not_found(&format!("run {number} of job {id} (not kept, or not yet)")))?;
    Ok(run.attempts.into_iter().map(|a| a.instance).collect())
}
