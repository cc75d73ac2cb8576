//! The plumbing every handler shares: the JSON error, responses tagged with the store index,
//! strict JSON bodies, and blocking reads.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_api::{ErrorBody, INDEX_HEADER};
use berth_core::{Dur, SpecError};
use berth_store::StoreError;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::Shared;

/// A JSON error response.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    /// Sent again by clients a moment later (`Retry-After`): nothing was done, and a leader is
    /// seconds away.
    retry_after: bool,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, body: ErrorBody { error: message.into(), details: vec![] }, retry_after: false }
    }
    pub(crate) fn invalid(message: impl Into<String>, details: Vec<SpecError>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: ErrorBody { error: message.into(), details },
            retry_after: false,
        }
    }
    /// A body field at fault: 400, saying which.
    pub(crate) fn invalid_field(field: &str, why: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, format!("{field}: {why}"))
    }
    /// What the error says, for people.
    pub(crate) fn message(&self) -> &str {
        &self.body.error
    }
    pub(crate) fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, format!("{e}; retry")),
            // Another server may answer, or this one a moment later.
            StoreError::Unavailable(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            // This server stopped leading as it wrote: nothing landed, and another leads soon.
            StoreError::NotLeader(_) => {
                ApiError { retry_after: true, ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()) }
            }
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// A JSON body tagged with the store index it reflects.
pub(crate) fn indexed<T: serde::Serialize>(index: u64, value: &T) -> Response {
    let mut resp = axum::Json(value).into_response();
    if let Ok(v) = HeaderValue::from_str(&index.to_string()) {
        resp.headers_mut().insert(INDEX_HEADER, v);
    }
    resp
}

/// Every refusal is the documented JSON error, also those axum writes itself in plain text (a
/// body over the limit, a method a path does not take, an unreadable path parameter).
pub(super) async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json") || ct.starts_with("text/html"));
    // JSON, and the console's pages (a sign-in refused is a page that says why).
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.map(|b| String::from_utf8_lossy(&b).trim().to_string());
    let reason = status.canonical_reason().unwrap_or("error").to_ascii_lowercase();
    let message = match text {
        Ok(t) if status == StatusCode::PAYLOAD_TOO_LARGE => format!("request body too large: {t}"),
        Ok(t) if !t.is_empty() => t,
        _ => reason,
    };
    let mut out = ApiError::new(status, message).into_response();
    for (name, value) in parts.headers.iter().filter(|(n, _)| *n == header::ALLOW) {
        out.headers_mut().insert(name, value.clone());
    }
    out
}

/// Parses a JSON body; an error names the line, the column and the field at fault
/// (`spec.instances`), so a wrong type says where it is.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => de.end().map(|()| v).map_err(|e| (".".to_string(), e)),
        Err(e) => Err((e.path().to_string(), e.into_inner())),
    };
    value.map_err(|(path, inner)| {
        let (line, column) = (inner.line() as u64, inner.column() as u64);
        let at = if path == "." { String::new() } else { format!("`{path}`: ") };
        let detail = SpecError {
            file: None,
            line: Some(line),
            column: Some(column),
            field: if path == "." { String::new() } else { path.clone() },
            message: inner.to_string(),
            suggestion: None,
        };
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody {
                error: format!("request body, line {line} column {column}: {at}{inner}"),
                details: vec![detail],
            },
            retry_after: false,
        }
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct WaitQuery {
    pub index: Option<u64>,
    pub wait: Option<String>,
}

/// Blocks until the store is past `index` or `wait` elapses; returns the index to answer with.
pub(crate) async fn wait_for(shared: &Shared, q: &WaitQuery) -> ApiResult<u64> {
    wait_until(shared, q, |_| Ok(true)).await
}

/// Blocks until, with the store past `index`, `moved(index)` says what the caller reads has
/// changed since, or `wait` elapses; returns the index to answer with. A write wakes every
/// waiter, and each asks `moved` (cheap) before it reads anything.
pub(crate) async fn wait_until(
    shared: &Shared,
    q: &WaitQuery,
    moved: impl Fn(u64) -> Result<bool, berth_store::StoreError>,
) -> ApiResult<u64> {
    let store = shared.state.store();
    if let Some(index) = q.index {
        let wait = match &q.wait {
            Some(text) => Dur::parse(text).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("wait: {e}")))?,
            None => Dur::secs(30),
        };
        let deadline = tokio::time::Instant::now() + wait.as_duration().min(Duration::from_secs(300));
        let mut rx = store.watch();
        loop {
            let at = *rx.borrow_and_update();
            // An index past the store's is another store's (a platform moved onto etcd, whose
            // revisions start again): answer at once, and the caller carries on from ours.
            if at > index && moved(index)? || at < index {
                break;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                break;
            }
        }
    }
    // Read the index before the data so a change in between is never missed.
    Ok(store.revision())
}
