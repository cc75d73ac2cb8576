//! Resource use: agents post samples; people read use per app, node and cluster, history, and
//! Prometheus' `/metrics`.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use berth_api::MetricsReport;
use berth_core::Millis;

use super::error::{ApiError, ApiResult, indexed, parse_json};
use crate::usage::{exposition, usage};
use crate::{Shared, lock};

pub(crate) async fn ingest(
    AxState(shared): AxState<Shared>,
    Path(node): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let report: MetricsReport = parse_json(&body)?;
    // A node that beats is known (its beat checked its record, and `node rm` forgets it): only
    // another one costs a read of its record.
    let beating = lock(&shared.heartbeats).contains_key(&node);
    if !beating {
        shared.state.node(&node)?.ok_or_else(|| ApiError::not_found(&format!("node {node}")))?;
    }
    shared.usage.record(&node, report.samples, &shared.traffic);
    Ok(indexed(shared.state.store().revision(), &serde_json::json!({"ok": true})))
}

pub(crate) async fn all(
    AxState(shared): AxState<Shared>,
    Extension(actor): Extension<super::tokens::Actor>,
) -> ApiResult<Response> {
    let mut all = usage(&shared, None)?;
    all.apps.retain(|a| actor.sees_app(&a.app));
    all.instances.retain(|i| actor.sees_app(&i.app));
    Ok(indexed(shared.state.store().revision(), &all))
}

pub(crate) async fn one_app(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = format!("{group}/{name}");
    super::apps::existing(&shared.state, &id)?;
    Ok(indexed(shared.state.store().revision(), &usage(&shared, Some(&id))?))
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct HistoryQuery {
    /// Only points at or after this time (ms since the epoch).
    #[serde(default)]
    since: Millis,
}

pub(crate) async fn history(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<HistoryQuery>,
) -> ApiResult<Response> {
    let id = format!("{group}/{name}");
    super::apps::existing(&shared.state, &id)?;
    Ok(indexed(shared.state.store().revision(), &shared.usage.history(&id, q.since)))
}

/// The app's requests, latency and bytes over the last hour, in steps.
pub(crate) async fn traffic(
    AxState(shared): AxState<Shared>,
    Path((group, name)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<HistoryQuery>,
) -> ApiResult<Response> {
    let id = format!("{group}/{name}");
    super::apps::existing(&shared.state, &id)?;
    Ok(indexed(shared.state.store().revision(), &shared.traffic.history(&id, q.since)))
}

/// Prometheus' text exposition format, version 0.0.4.
pub(crate) async fn prometheus(AxState(shared): AxState<Shared>) -> ApiResult<Response> {
    let text = exposition(&shared)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}
