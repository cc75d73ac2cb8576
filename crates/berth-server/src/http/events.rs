//! `/v1/events`: the event log, with blocking reads.

use axum::extract::{Query, State as AxState};
use axum::response::Response;
use serde::Deserialize;

use super::error::{ApiResult, WaitQuery, indexed, wait_for};
use crate::Shared;

#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    index: Option<u64>,
    wait: Option<String>,
}

pub(super) async fn events(AxState(shared): AxState<Shared>, Query(q): Query<EventsQuery>) -> ApiResult<Response> {
    let index = wait_for(&shared, &WaitQuery { index: q.index, wait: q.wait.clone() }).await?;
    let events = shared.state.events(q.after, q.limit.unwrap_or(200).min(10_000))?;
    Ok(indexed(index, &events))
}
