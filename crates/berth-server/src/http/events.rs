//! `/v1/events`: the event log, with blocking reads.

use axum::Extension;
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

pub(super) async fn events(
    AxState(shared): AxState<Shared>,
    Extension(actor): Extension<super::tokens::Actor>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Response> {
    let index = wait_for(&shared, &WaitQuery { index: q.index, wait: q.wait.clone() }).await?;
    let limit = q.limit.unwrap_or(200).min(10_000);
    Ok(indexed(index, &visible(&shared, &actor, q.after, limit)?))
}

/// Events after `after` the token may see, at most `limit`.
pub(super) fn visible(
    shared: &Shared,
    actor: &super::tokens::Actor,
    after: u64,
    limit: usize,
) -> ApiResult<Vec<berth_core::Event>> {
    if actor.sees_all() {
        return Ok(shared.state.events(after, limit)?);
    }
    // A token of some groups sees their apps' events only: pages are read until enough are
    // found or none are left, so that a follower's cursor always moves on.
    let mut seen = Vec::new();
    let mut after = after;
    loop {
        let page = shared.state.events(after, limit)?;
        let Some(last) = page.last().map(|e| e.seq) else { break };
        after = last;
        seen.extend(page.into_iter().filter(|e| e.app.as_deref().is_some_and(|a| actor.sees_app(a))));
        if seen.len() >= limit {
            seen.truncate(limit);
            break;
        }
    }
    Ok(seen)
}
