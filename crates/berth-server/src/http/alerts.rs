//! `/v1/alerts`: what fires now and what fired lately.

use axum::extract::State as AxState;
use axum::response::Response;
use berth_api::AlertList;

use super::error::{ApiResult, indexed};
use crate::{Shared, lock};

pub(crate) async fn list(
    AxState(shared): AxState<Shared>,
    axum::Extension(actor): axum::Extension<super::tokens::Actor>,
) -> ApiResult<Response> {
    Ok(indexed(shared.state.store().revision(), &visible(&shared, &actor)))
}

/// The alerts the token may see: of its groups' apps, and of nodes for tokens of every group.
pub(super) fn visible(shared: &Shared, actor: &super::tokens::Actor) -> AlertList {
    let shown = |a: &&berth_api::Alert| match &a.app {
        Some(app) => actor.sees_app(app),
        None => actor.sees_all(),
    };
    let state = lock(&shared.alerts);
    let list = AlertList {
        firing: state.firing.values().map(|(a, _)| a).filter(shown).cloned().collect(),
        recent: state.recent.iter().filter(shown).cloned().collect(),
    };
    drop(state);
    list
}
