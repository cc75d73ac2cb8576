//! `/v1/instances/{id}/exec` and the agents' side of it: a command queued for its node, taken,
//! answered, or streamed over two upgraded connections joined by the server.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, Query, State as AxState};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::Response;
use berth_api::exec_stream::PROTOCOL;
use berth_api::{ExecRequest, ExecResult};
use berth_core::InstanceState;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::error::{ApiError, ApiResult, indexed, parse_json};
use crate::exec::{DEFAULT_TIMEOUT, MAX_TIMEOUT, TAKE_WITHIN, new_id};
use crate::{Shared, lock};

/// A request's wish to become an exec stream: the connection to take over once the server has
/// answered `101 Switching Protocols`.
pub(crate) struct StreamUpgrade(Option<OnUpgrade>);

impl<S: Send + Sync> FromRequestParts<S> for StreamUpgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let asked =
            parts.headers.get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(PROTOCOL.as_bytes()));
        if !asked {
            return Ok(StreamUpgrade(None));
        }
        match parts.extensions.remove::<OnUpgrade>() {
            Some(on) => Ok(StreamUpgrade(Some(on))),
            None => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("an {PROTOCOL} stream needs an HTTP/1.1 connection"),
            )),
        }
    }
}

fn switching() -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
    resp.headers_mut().insert(header::UPGRADE, header::HeaderValue::from_static(PROTOCOL));
    resp
}

/// `POST /v1/instances/{id}/exec`: runs the command and answers with what it did, or, asked to
/// upgrade, switches to a stream joined to the agent's.
pub(crate) async fn run(
    AxState(shared): AxState<Shared>,
    Path(id): Path<String>,
    StreamUpgrade(upgrade): StreamUpgrade,
    body: Bytes,
) -> ApiResult<Response> {
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
    req.id = new_id();
    req.instance = id.clone();
    if let Some(client) = upgrade {
        return streamed(&shared, req, &inst.node, client).await;
    }
    let timeout = req.timeout_ms.map_or(DEFAULT_TIMEOUT, Duration::from_millis).min(MAX_TIMEOUT);
    req.timeout_ms = Some(timeout.as_millis() as u64);
    let (tx, rx) = oneshot::channel();
    lock(&shared.execs.waiting).insert(req.id.clone(), tx);
    shared.execs.queue(&inst.node, req.clone());
    let answered = tokio::time::timeout(timeout + TAKE_WITHIN, rx).await;
    lock(&shared.execs.waiting).remove(&req.id);
    shared.execs.unqueue(&inst.node, &req.id);
    match answered {
        Ok(Ok(result)) => Ok(indexed(shared.state.store().revision(), &result)),
        _ => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the agent of node {} did not answer within {}s", inst.node, (timeout + TAKE_WITHIN).as_secs()),
        )),
    }
}

/// Queues a streamed command and, once its agent has attached, switches the client's connection
/// and joins the two for as long as either side keeps its end open.
async fn streamed(shared: &Shared, mut req: ExecRequest, node: &str, client: OnUpgrade) -> ApiResult<Response> {
    req.stream = true;
    req.timeout_ms = None;
    let (tx, rx) = oneshot::channel();
    lock(&shared.execs.attaching).insert(req.id.clone(), (node.to_string(), tx));
    shared.execs.queue(node, req.clone());
    let attached = tokio::time::timeout(TAKE_WITHIN, rx).await;
    lock(&shared.execs.attaching).remove(&req.id);
    shared.execs.unqueue(node, &req.id);
    let Ok(Ok(agent)) = attached else {
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the agent of node {node} did not attach within {}s", TAKE_WITHIN.as_secs()),
        ));
    };
    let exec = req.id;
    tokio::spawn(async move {
        match client.await {
            Ok(client) => {
                let joined = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(agent)).await;
                tracing::debug!(exec = %exec, ?joined, "exec stream ended");
            }
            Err(e) => tracing::debug!(exec = %exec, error = %e, "the client left before its exec stream began"),
        }
    });
    Ok(switching())
}

/// `POST /v1/nodes/{id}/execs/{exec}/stream`: an agent brings the connection for a streamed
/// command it took.
pub(crate) async fn attach(
    AxState(shared): AxState<Shared>,
    Path((node, exec)): Path<(String, String)>,
    StreamUpgrade(upgrade): StreamUpgrade,
) -> ApiResult<Response> {
    let Some(upgrade) = upgrade else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("attach with `Upgrade: {PROTOCOL}`")));
    };
    let tx = {
        let mut attaching = lock(&shared.execs.attaching);
        match attaching.get(&exec) {
            Some((owner, _)) if *owner == node => attaching.remove(&exec).map(|(_, tx)| tx),
            _ => None,
        }
    };
    let Some(tx) = tx else {
        return Err(ApiError::not_found(&format!("streamed exec {exec} for node {node}")));
    };
    tokio::spawn(async move {
        if let Ok(agent) = upgrade.await {
            let _ = tx.send(agent);
        }
    });
    Ok(switching())
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
    let deadline = tokio::time::Instant::now() + wait.min(Duration::from_secs(300));
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
