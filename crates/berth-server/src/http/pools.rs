//! `/v1/pools`: which groups place in which pools, each pool's cpu over-subscription, and what
//! each pool holds.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use berth_api::{GroupPoolsRequest, PoolCapacity, PoolSettingsRequest, PoolView};
use berth_core::spec::check_label;
use berth_core::{Level, NodeStatus, Pools, SHARED_POOL};
use berth_store::Txn;
use berth_store::state::{POOLS_KEY, Subject, encode};

use super::cas::{self, Attempt};
use super::error::{ApiError, ApiResult, indexed, parse_json};
use crate::{Shared, now_ms};

/// Over-subscription beyond this is a typo more likely than a plan.
const MAX_OVERSUBSCRIPTION: f64 = 10.0;

pub(super) async fn list(AxState(shared): AxState<Shared>) -> ApiResult<Response> {
    let index = shared.state.store().revision();
    Ok(indexed(index, &views(&shared)?))
}

/// Each pool with its nodes, groups and capacity, as `GET /v1/pools` lists them.
pub(super) fn views(shared: &Shared) -> ApiResult<Vec<PoolView>> {
    let pools = shared.state.pools()?.value;
    // Each node's allocated and used as `berth node ls` counts them, summed per pool.
    let nodes = super::nodes::node_views(shared, shared.state.nodes()?.into_iter().map(|n| n.value).collect())?;

    let mut views: BTreeMap<String, PoolView> = BTreeMap::new();
    let view = |name: &str| PoolView {
        name: name.to_string(),
        nodes: 0,
        ready: 0,
        groups: pools.groups.iter().filter(|(_, p)| p.iter().any(|p| p == name)).map(|(g, _)| g.clone()).collect(),
        cpu_oversubscription: pools.cpu_factor(name),
        cpu: PoolCapacity::default(),
        memory: PoolCapacity::default(),
        borrowed: 0,
    };
    // Every pool a node is in, a group is bound to, or a factor is set for; the shared one always.
    let named = std::iter::once(SHARED_POOL)
        .chain(pools.groups.values().flatten().map(String::as_str))
        .chain(pools.cpu_oversubscription.keys().map(String::as_str));
    for name in named {
        views.entry(name.to_string()).or_insert_with(|| view(name));
    }
    let instances = shared.instances()?;
    let mut borrowed: HashMap<&str, usize> = HashMap::new();
    for inst in instances.iter().filter(|i| i.borrowed && i.state.is_live()) {
        *borrowed.entry(inst.node.as_str()).or_default() += 1;
    }
    for node in &nodes {
        let n = &node.node;
        let v = views.entry(n.pool.clone()).or_insert_with(|| view(&n.pool));
        v.nodes += 1;
        if n.status == NodeStatus::Ready {
            v.ready += 1;
        }
        v.cpu.capacity += n.resources.cpu;
        v.cpu.placeable += n.resources.cpu * pools.cpu_factor(&n.pool);
        v.cpu.allocated += node.allocated.cpu;
        v.cpu.used += node.used.cpu;
        v.memory.capacity += n.resources.memory as f64;
        v.memory.placeable += n.resources.memory as f64;
        v.memory.allocated += node.allocated.memory as f64;
        v.memory.used += node.used.memory as f64;
        v.borrowed += borrowed.get(n.id.as_str()).copied().unwrap_or(0);
    }
    Ok(views.into_values().collect())
}

/// Binds a group to the pools its apps place in first; an empty list unbinds it (back to the
/// shared pool). Instances already placed stay where they are.
pub(super) async fn set_group(
    AxState(shared): AxState<Shared>,
    Path(group): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: GroupPoolsRequest = parse_json(&body)?;
    check_label(&group).map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, format!("group: {why}")))?;
    for (i, pool) in req.pools.iter().enumerate() {
        check_label(pool).map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, format!("pools[{i}]: {why}")))?;
    }
    let mut wanted = req.pools.clone();
    wanted.dedup();
    write(&shared, |pools| {
        let msg = if wanted.is_empty() {
            pools.groups.remove(&group).map(|_| format!("group {group} places in the shared pool again"))
        } else if pools.groups.get(&group) == Some(&wanted) {
            None
        } else {
            let msg = format!("group {group} places in pool(s) {} first", wanted.join(", "));
            pools.groups.insert(group.clone(), wanted.clone());
            Some(msg)
        };
        Ok(msg)
    })
}

/// Sets a pool's cpu over-subscription: 1.5 lets its nodes take instances asking half again
/// the cores they have (Wepiao's 70 % allocated against 30 % used).
pub(super) async fn set_pool(
    AxState(shared): AxState<Shared>,
    Path(pool): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: PoolSettingsRequest = parse_json(&body)?;
    check_label(&pool).map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, format!("pool: {why}")))?;
    let factor = req.cpu_oversubscription;
    if !(factor.is_finite() && factor > 0.0 && factor <= MAX_OVERSUBSCRIPTION) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("cpu_oversubscription: {factor} is not in (0, {MAX_OVERSUBSCRIPTION}]"),
        ));
    }
    write(&shared, |pools| {
        if pools.cpu_factor(&pool) == factor {
            return Ok(None);
        }
        if factor == 1.0 {
            pools.cpu_oversubscription.remove(&pool);
        } else {
            pools.cpu_oversubscription.insert(pool.clone(), factor);
        }
        Ok(Some(format!("pool {pool}: cpu over-subscription {factor}")))
    })
}

/// Changes the pools' record with `change` (which says what it did, or nothing when nothing
/// changed), guarded by the revision read, with an event; answers with the record.
fn write(shared: &Shared, change: impl Fn(&mut Pools) -> ApiResult<Option<String>>) -> ApiResult<Response> {
    let (index, pools) = cas::retry(&shared.state, "the pools' settings", || {
        let current = shared.state.pools()?;
        let mut pools = current.value.clone();
        let Some(msg) = change(&mut pools)? else { return Ok(Attempt::Done(pools)) };
        let txn = Txn::default().expect(POOLS_KEY, current.mod_revision).put(POOLS_KEY, encode(&pools));
        let txn = shared.state.with_event(txn, now_ms(), Level::Info, "pool.changed", Subject::default(), msg);
        Ok(Attempt::Write(txn, pools))
    })?;
    Ok(indexed(index, &pools))
}
