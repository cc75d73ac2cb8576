//! `/v1/alerts`: what fires now and what fired lately.

use axum::extract::State as AxState;
use axum::response::Response;
use berth_api::AlertList;

use super::error::{ApiResult, indexed};
use crate::{Shared, lock};

pub(crate) async fn list(AxState(shared): AxState<Shared>) -> ApiResult<Response> {
    let state = lock(&shared.alerts);
    let list = AlertList {
        firing: state.firing.values().map(|(a, _)| a.clone()).collect(),
        recent: state.recent.iter().cloned().collect(),
    };
    drop(state);
    Ok(indexed(shared.state.store().revision(), &list))
}
