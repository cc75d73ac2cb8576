//! Logs over HTTP: agents ship lines in, people read and follow them out.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::Response;
use berth_api::{LogBatch, LogLine, LogQuery};
use tokio::sync::broadcast::error::RecvError;

use super::error::{ApiError, ApiResult, indexed, parse_json};
use crate::Shared;
use crate::logs::Filter;

/// Most lines one answer returns before following.
const MAX_TAIL: usize = 100_000;

pub(crate) async fn ingest(
    AxState(shared): AxState<Shared>,
    Path(node): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let batch: LogBatch = parse_json(&body)?;
    shared.state.node(&node)?.ok_or_else(|| ApiError::not_found(&format!("node {node}")))?;
    let mut by_app: HashMap<&str, Vec<LogLine>> = HashMap::new();
    for line in &batch.lines {
        by_app.entry(line.app.as_str()).or_default().push(line.clone());
    }
    for (app, lines) in by_app {
        // Only apps and jobs the store knows get a directory: the name comes from the wire.
        let sinks = match shared.state.app(app)? {
            Some(record) => record.value.spec.log_sinks,
            None => match shared.state.job(app)? {
                Some(record) => record.value.spec.log_sinks,
                None => continue,
            },
        };
        shared.forwarders.forward(app, &sinks, &lines, &shared.shutdown);
        let store = shared.logs.clone();
        let app = app.to_string();
        tokio::task::spawn_blocking(move || store.append(&app, &lines))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("writing logs: {e}")))?;
    }
    shared.logs.count_dropped(&batch.dropped);
    Ok(indexed(shared.state.store().revision(), &serde_json::json!({"ok": true})))
}

/// Every log sink in use: sent, dropped, queued, and the last error.
pub(crate) async fn sinks(AxState(shared): AxState<Shared>) -> ApiResult<Response> {
    Ok(indexed(shared.state.store().revision(), &shared.forwarders.status()))
}

fn ndjson(line: &LogLine) -> Bytes {
    let mut buf = serde_json::to_vec(line).unwrap_or_default();
    buf.push(b'\n');
    Bytes::from(buf)
}

pub(crate) async fn query(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    let id = format!("{group}/{name}");
    super::apps::existing(&shared.state, &id)?;
    if q.run.is_some() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "run: apps have no runs; jobs do (/v1/jobs/...)"));
    }
    let instances = q.instance.clone().map(|i| vec![i]);
    serve(shared, id, q, instances).await
}

/// `GET /v1/jobs/{group}/{name}/logs`: a job's lines, of one run's attempts with `run=N`.
pub(crate) async fn job_query(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    let id = format!("{group}/{name}");
    shared.state.job(&id)?.ok_or_else(|| ApiError::not_found(&format!("job {id}")))?;
    let mut instances = q.instance.clone().map(|i| vec![i]);
    if let Some(number) = q.run {
        // A run that never started has no attempt, and no line of it matches.
        instances.get_or_insert_with(Vec::new).extend(super::jobs::attempts_of(&shared, &id, number)?);
    }
    serve(shared, id, q, instances).await
}

async fn serve(shared: Shared, id: String, q: LogQuery, instances: Option<Vec<String>>) -> ApiResult<Response> {
    let grep = q
        .grep
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("grep: not a regular expression: {e}")))?;
    let filter = Filter { since: q.since, instances, grep };
    let tail = q.tail.unwrap_or(MAX_TAIL).min(MAX_TAIL);
    let store = shared.logs.clone();
    let (filter, stored, live) = tokio::task::spawn_blocking(move || {
        let mut snap = store.snapshot(&id)?;
        let stored = snap.read(&filter, tail);
        Ok::<_, std::io::Error>((filter, stored, snap.live))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reading logs: {e}")))?;

    let head = futures_util::stream::iter(stored.into_iter().map(|l| Ok::<_, std::io::Error>(ndjson(&l))));
    let body = if q.follow {
        // New lines as they come; an empty line now and then finds out when the reader left.
        let live = futures_util::stream::unfold((live, filter), |(mut live, filter)| async move {
            loop {
                match tokio::time::timeout(Duration::from_secs(15), live.recv()).await {
                    Ok(Ok(line)) if filter.keeps(&line) => {
                        return Some((Ok(ndjson(&line)), (live, filter)));
                    }
                    Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => continue,
                    Ok(Err(RecvError::Closed)) => return None,
                    Err(_) => return Some((Ok(Bytes::from_static(b"\n")), (live, filter))),
                }
            }
        });
        Body::from_stream(futures_util::StreamExt::chain(head, live))
    } else {
        Body::from_stream(head)
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `GET /v1/outputs`: every output in use (log sinks, webhooks, Alertmanagers), with whether its
/// last check could reach it.
pub(crate) async fn outputs(AxState(shared): AxState<Shared>) -> ApiResult<Response> {
    let all: Vec<berth_api::OutputStatus> = crate::lock(&shared.outputs).values().cloned().collect();
    Ok(indexed(shared.state.store().revision(), &all))
}
