//! Commands run inside live instances (`berth app NAME exec`). Agents have no listener: the
//! server queues a command for the instance's node, the node's agent takes it with a blocking
//! read, runs it through its driver, and posts the result, which answers the waiting client.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use berth_api::{ExecRequest, ExecResult};
use berth_core::InstanceState;
use serde::Deserialize;
use tokio::sync::{Notify, oneshot};

use crate::api::{ApiError, ApiResult, indexed, parse_json};
use crate::{Shared, lock};

/// Longest a command may run when the client does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a command may be given.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest a command waits for its agent to take it.
const TAKE_WITHIN: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(crate) struct Execs {
    queued: Mutex<HashMap<String, Vec<ExecRequest>>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<ExecResult>>>,
    /// Wakes a node's blocking read when a command is queued for it.
    arrived: Mutex<HashMap<String, std::sync::Arc<Notify>>>,
}

impl Execs {
    fn notify(&self, node: &str) -> std::sync::Arc<Notify> {
        lock(&self.arrived).entry(node.to_string()).or_default().clone()
    }
}

fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    format!("x{:016x}", h.finish())
}

/// `POST /v1/instances/{id}/exec`: runs the command and answers with what it did.
pub(crate) async fn run(AxState(shared): AxState<Shared>, Path(id): Path<String>, body: Bytes) -> ApiResult<Response> {
    let mut req: ExecRequest = parse_json(&body)?;
    if req.command.is_empty() || req.command.iter().any(|a| a.contains('\0')) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "command: give a program and its arguments, without NUL bytes",
        ));
    }
    let inst = shared.state.instance(&id)?.ok_or_else(|| ApiError::not_found(&format!("instance {id}")))?.value;
    if !matches!(inst.state, InstanceState::Running | InstanceState::Starting) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("instance {id} is {}: nothing runs to exec in", inst.state),
        ));
    }
    let timeout = req.timeout_ms.map_or(DEFAULT_TIMEOUT, Duration::from_millis).min(MAX_TIMEOUT);
    req.id = new_id();
    req.instance = id.clone();
    req.timeout_ms = Some(timeout.as_millis() as u64);
    let (tx, rx) = oneshot::channel();
    lock(&shared.execs.waiting).insert(req.id.clone(), tx);
    lock(&shared.execs.queued).entry(inst.node.clone()).or_default().push(req.clone());
    shared.execs.notify(&inst.node).notify_one();
    let answered = tokio::time::timeout(timeout + TAKE_WITHIN, rx).await;
    lock(&shared.execs.waiting).remove(&req.id);
    // Not taken: it must not run later, when nobody waits for it any more.
    if let Some(q) = lock(&shared.execs.queued).get_mut(&inst.node) {
        q.retain(|r| r.id != req.id);
    }
    match answered {
        Ok(Ok(result)) => Ok(indexed(shared.state.store().revision(), &result)),
        _ => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the agent of node {} did not answer within {}s", inst.node, (timeout + TAKE_WITHIN).as_secs()),
        )),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct TakeQuery {
    wait: Option<String>,
}

/// `GET /v1/nodes/{id}/execs?wait=30s`: the commands queued for a node's agent.
pub(crate) async fn take(
    AxState(shared): AxState<Shared>,
    Path(node): Path<String>,
    Query(q): Query<TakeQuery>,
) -> ApiResult<Response> {
    let wait =
        q.wait.as_deref().and_then(|w| berth_core::Dur::parse(w).ok()).map_or(Duration::ZERO, |d| d.as_duration());
    let arrived = shared.execs.notify(&node);
    let deadline = tokio::time::Instant::now() + wait.min(Duration::from_secs(60));
    loop {
        let taken: Vec<ExecRequest> = lock(&shared.execs.queued).remove(&node).unwrap_or_default();
        if !taken.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(indexed(shared.state.store().revision(), &taken));
        }
        if tokio::time::timeout_at(deadline, arrived.notified()).await.is_err() {
            return Ok(indexed(shared.state.store().revision(), &Vec::<ExecRequest>::new()));
        }
    }
}

/// `POST /v1/nodes/{id}/execs/{exec}`: an agent's answer.
pub(crate) async fn answer(
    AxState(shared): AxState<Shared>,
    Path((_node, exec)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let mut result: ExecResult = parse_json(&body)?;
    result.id = exec.clone();
    if let Some(tx) = lock(&shared.execs.waiting).remove(&exec) {
        let _ = tx.send(result);
    }
    Ok(indexed(shared.state.store().revision(), &serde_json::json!({"ok": true})))
}
