//! `/v1/instances`: the list, and one instance restarted or stopped.

use axum::Extension;
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use berth_api::InstanceView;
use berth_core::Level;
use berth_store::Txn;
use berth_store::state::{Subject, app_key, encode, instance_key};

use super::apps::{ChangeQuery, refused};
use super::cas::{self, Attempt};
use super::error::{ApiError, ApiResult, indexed};
use crate::deployments;
use crate::{Shared, now_ms};
use berth_plan::deploy::{self, Refusal};

/// Stops one instance (draining it first); the app's count is unchanged, so a fresh one takes
/// its place under the usual health gates, as deleting a pod does.
pub(super) async fn restart_instance(AxState(shared): AxState<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let (index, value) = cas::retry(&shared.state, &format!("instance {id}"), || {
        let current = shared.state.instance(&id)?.ok_or_else(|| ApiError::not_found(&format!("instance {id}")))?;
        let mut inst = current.value;
        if !inst.state.is_live() || inst.desired == berth_core::Desired::Stop {
            return Err(ApiError::new(StatusCode::CONFLICT, format!("instance {id} is {} already", inst.state)));
        }
        inst.desired = berth_core::Desired::Stop;
        inst.set_reason(berth_core::Reason::RestartRequested);
        let txn = Txn::default().expect(instance_key(&id), current.mod_revision).put(instance_key(&id), encode(&inst));
        let subject = Subject::instance(&inst.app, &id, &inst.node);
        let txn = shared.state.with_event(
            txn,
            now_ms(),
            Level::Info,
            "instance.restart",
            subject,
            "restart requested; a new instance replaces it".into(),
        );
        Ok(Attempt::Write(txn, InstanceView::from(inst)))
    })?;
    Ok(indexed(index, &value))
}

/// Stops one instance for good: the app is scaled down by one, and this is the one that goes
/// (drained first). Refused while another deployment runs, unless `force`.
pub(super) async fn stop_instance(
    AxState(shared): AxState<Shared>,
    Path(id): Path<String>,
    Query(opts): Query<ChangeQuery>,
) -> ApiResult<Response> {
    let (index, value) = cas::retry(&shared.state, &format!("instance {id}"), || {
        let now = now_ms();
        let current = shared.state.instance(&id)?.ok_or_else(|| ApiError::not_found(&format!("instance {id}")))?;
        let mut inst = current.value;
        if !inst.state.is_live() || inst.desired == berth_core::Desired::Stop {
            return Err(ApiError::new(StatusCode::CONFLICT, format!("instance {id} is {} already", inst.state)));
        }
        let app_rec = shared.state.app(&inst.app)?.ok_or_else(|| ApiError::not_found(&format!("app {}", inst.app)))?;
        let mut app = app_rec.value;
        if !opts.force
            && let Some(b) = deploy::busy(&app, now)
        {
            return Err(refused(Refusal::Busy(b)));
        }
        let n = app.instances.saturating_sub(1);
        let mut txn = Txn::default()
            .expect(app_key(&inst.app), app_rec.mod_revision)
            .expect(instance_key(&id), current.mod_revision);
        let effects = deploy::scale(&mut app, n, now);
        txn = deployments::write(&shared.state, txn, &inst.app, effects, now)?;
        inst.desired = berth_core::Desired::Stop;
        inst.set_reason(berth_core::Reason::StopRequested);
        txn = txn.put(app_key(&inst.app), encode(&app)).put(instance_key(&id), encode(&inst));
        let subject = Subject::instance(&inst.app, &id, &inst.node);
        let msg = format!("stopped on request; {} now runs {n}", inst.app);
        txn = shared.state.with_event(txn, now, Level::Info, "instance.stop", subject, msg);
        Ok(Attempt::Write(txn, InstanceView::from(inst)))
    })?;
    Ok(indexed(index, &value))
}

pub(super) async fn list_instances(
    AxState(shared): AxState<Shared>,
    Extension(actor): Extension<super::tokens::Actor>,
) -> ApiResult<Response> {
    let index = shared.state.store().revision();
    let cut_off = shared.cut_off_nodes()?;
    let all: Vec<InstanceView> = shared
        .instances()?
        .iter()
        .filter(|i| actor.sees_app(&i.app))
        .map(|i| InstanceView::new(i.clone(), cut_off.contains(&i.node)))
        .collect();
    Ok(indexed(index, &all))
}
