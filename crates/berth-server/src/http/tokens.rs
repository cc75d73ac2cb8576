//! Who may use the API. Every request but `/v1/health` and `/v1/join` carries a bearer token,
//! loopback included: a TCP port is open to every local user. A token is `ID.SECRET`; the store
//! keeps its id, name, role and groups, and a SHA-256 digest of the secret, never the secret.
//! At first start the server makes an admin token and writes it once to
//! `<data-dir>/admin.token` (mode 0600), as it does its join token. Agents and routers use their
//! own credentials (`credentials.rs`) on their own endpoints.

use std::path::Path;

use axum::extract::{MatchedPath, Request, State as AxState};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use berth_core::access::Role;
use berth_core::{Level, Millis};
use berth_store::Txn;
use berth_store::state::{Subject, encode};
use serde::{Deserialize, Serialize};

use super::credentials::{bearer, digest, hex};
use super::error::ApiError;
use crate::{Shared, lock, now_ms};

/// Where a server writes the admin token it made at first start.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

pub fn token_key(id: &str) -> String {
    format!("tokens/{id}")
}

/// An API token as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    /// Who or what holds it (`admin`, `ci`): the audit log's actor.
    pub name: String,
    pub role: Role,
    /// The groups it acts in; empty: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// SHA-256 of the secret, hex.
    pub digest: String,
    pub created_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Millis>,
}

/// Who a user request comes from, once its token checked out; in the request's extensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Actor {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("{0}: not a token (expected ID.SECRET, as the server writes it)")]
    Malformed(std::path::PathBuf),
    #[error("cannot read or write {0}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
}

/// A new token: the text to hand out once and the record to keep.
pub fn mint(name: &str, role: Role, groups: Vec<String>, now: Millis, ttl_ms: Option<i64>) -> (String, ApiToken) {
    let id = format!("tok-{}", hex(&rand::random::<[u8; 6]>()));
    let secret = hex(&rand::random::<[u8; 32]>());
    let record = ApiToken {
        id: id.clone(),
        name: name.to_string(),
        role,
        groups,
        digest: digest(&secret),
        created_at: now,
        expires_at: ttl_ms.map(|ttl| now.saturating_add(ttl)),
    };
    (format!("{id}.{secret}"), record)
}

/// At first start (no token in the store), the admin token: the one at `path` when a crash came
/// between writing it and keeping its record, else a new one written there first (mode 0600,
/// aside then renamed). Returns the path when a token was made or taken up.
pub fn bootstrap(shared: &Shared, path: &Path) -> Result<bool, AdminTokenError> {
    if !shared.state.records::<ApiToken>("tokens/")?.is_empty() {
        return Ok(false);
    }
    let now = now_ms();
    let record = match std::fs::read_to_string(path) {
        Ok(text) => {
            let (id, secret) =
                text.trim().rsplit_once('.').ok_or_else(|| AdminTokenError::Malformed(path.to_path_buf()))?;
            if !id.starts_with("tok-") || secret.is_empty() {
                return Err(AdminTokenError::Malformed(path.to_path_buf()));
            }
            ApiToken {
                id: id.to_string(),
                name: "admin".into(),
                role: Role::Admin,
                groups: vec![],
                digest: digest(secret),
                created_at: now,
                expires_at: None,
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (token, record) = mint("admin", Role::Admin, vec![], now, None);
            super::credentials::write_private(path, &token).map_err(|e| AdminTokenError::Io(path.to_path_buf(), e))?;
            record
        }
        Err(e) => return Err(AdminTokenError::Io(path.to_path_buf(), e)),
    };
    let msg = format!("admin token {} made at first start and written to {}", record.id, path.display());
    let txn = Txn::default().put(token_key(&record.id), encode(&record));
    let txn = shared.state.with_event(txn, now, Level::Info, "token.created", Subject::default(), msg);
    shared.state.commit(txn)?;
    Ok(true)
}

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Health and joining.
    Nothing,
    /// An agent's or router's credential, checked by `credentials::members_only` on the route.
    Member,
    /// A user's token, or a member's credential: agents ask whether an instance is drained;
    /// routers carry their admin API's changes to static upstreams and rules.
    TokenOr(berth_api::Member),
    Token,
}

/// Everything needs a token unless listed here: a route added later is closed by default.
fn needs(method: &Method, route: &str) -> Needs {
    match (method, route) {
        (_, "/v1/health" | "/v1/join") => Needs::Nothing,
        (&Method::POST, "/v1/nodes" | "/v1/routers/{id}") | (&Method::GET, "/v1/routes") => Needs::Member,
        (
            _,
            "/v1/nodes/{id}/heartbeat"
            | "/v1/nodes/{id}/assignments"
            | "/v1/nodes/{id}/reports"
            | "/v1/nodes/{id}/metrics"
            | "/v1/nodes/{id}/logs"
            | "/v1/nodes/{id}/execs"
            | "/v1/nodes/{id}/execs/{exec}"
            | "/v1/nodes/{id}/execs/{exec}/stream",
        ) => Needs::Member,
        (&Method::GET, "/v1/instances/{id}/drain") => Needs::TokenOr(berth_api::Member::Agent),
        (
            _,
            "/v1/upstreams" | "/v1/upstreams/{name}" | "/v1/upstreams/{name}/rules" | "/v1/apps/{group}/{name}/rules",
        ) => Needs::TokenOr(berth_api::Member::Router),
        _ => Needs::Token,
    }
}

/// Checks every request's token, but for the routes that need none or a member's credential.
/// The actor goes into the request's extensions.
pub async fn authenticate(
    AxState(shared): AxState<Shared>,
    route: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = route.as_ref().map_or("", |r| r.as_str());
    let need = needs(req.method(), route);
    if route.is_empty() || matches!(need, Needs::Nothing | Needs::Member) {
        return next.run(req).await;
    }
    let Some(token) = bearer(req.headers()) else {
        return refuse("no token: pass --token or set BERTH_TOKEN (the server wrote its admin token to <data-dir>/admin.token; `berth up` saves it in the CLI's context)").into_response();
    };
    if let Needs::TokenOr(member) = need
        && !token.starts_with("tok-")
    {
        return match super::credentials::check_member(&shared, token, member) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                next.run(req).await
            }
            Err(refused) => refused.into_response(),
        };
    }
    match check(&shared, token, now_ms()) {
        Ok(actor) => {
            req.extensions_mut().insert(actor);
            next.run(req).await
        }
        Err(refused) => refused.into_response(),
    }
}

fn refuse(why: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, why)
}

fn check(shared: &Shared, bearer: &str, now: Millis) -> Result<Actor, ApiError> {
    let Some((id, secret)) = bearer.rsplit_once('.').filter(|(id, _)| id.starts_with("tok-")) else {
        return Err(refuse("malformed token: expected tok-ID.SECRET, as `berth token create` prints it"));
    };
    // Read before the record: a change in between clears what is kept at the next look.
    let revision = shared.state.store().revision();
    let known = lock(&shared.seen).at(revision).and_then(|seen| seen.tokens.get(id).cloned());
    let known = match known {
        Some(known) => known,
        None => match shared.state.record::<ApiToken>(&token_key(id))? {
            Some(found) => {
                if let Some(seen) = lock(&shared.seen).at(revision) {
                    seen.tokens.insert(id.to_string(), found.value.clone());
                }
                found.value
            }
            None => {
                return Err(refuse(&format!("unknown token {id}: revoked, or never made by this server")));
            }
        },
    };
    if digest(secret) != known.digest {
        return Err(refuse(&format!("wrong secret for token {id}")));
    }
    if known.expires_at.is_some_and(|at| at <= now) {
        return Err(refuse(&format!("token {id} ({}) has expired", known.name)));
    }
    Ok(Actor { id: known.id, name: known.name, role: known.role, groups: known.groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_needs_a_token_unless_listed() {
        assert_eq!(needs(&Method::GET, "/v1/health"), Needs::Nothing);
        assert_eq!(needs(&Method::POST, "/v1/join"), Needs::Nothing);
        assert_eq!(needs(&Method::GET, "/v1/nodes"), Needs::Token);
        assert_eq!(needs(&Method::POST, "/v1/nodes"), Needs::Member);
        assert_eq!(needs(&Method::POST, "/v1/nodes/{id}/heartbeat"), Needs::Member);
        assert_eq!(needs(&Method::GET, "/v1/routes"), Needs::Member);
        assert_eq!(needs(&Method::POST, "/v1/routers/{id}"), Needs::Member);
        assert_eq!(needs(&Method::GET, "/v1/routers"), Needs::Token);
        assert_eq!(needs(&Method::GET, "/v1/instances/{id}/drain"), Needs::TokenOr(berth_api::Member::Agent));
        assert_eq!(needs(&Method::PUT, "/v1/upstreams/{name}"), Needs::TokenOr(berth_api::Member::Router));
        assert_eq!(needs(&Method::DELETE, "/v1/apps/{group}/{name}"), Needs::Token);
        assert_eq!(needs(&Method::GET, "/metrics"), Needs::Token);
        assert_eq!(needs(&Method::GET, "/v1/some/route/added/later"), Needs::Token);
    }

    #[test]
    fn a_minted_token_keeps_only_its_digest_and_expires_when_asked() {
        let (token, record) = mint("ci", Role::Deployer, vec!["shop".into()], 1_000, Some(60_000));
        let (id, secret) = token.rsplit_once('.').unwrap();
        assert_eq!((id, record.digest.as_str()), (record.id.as_str(), digest(secret).as_str()));
        assert!(!serde_json::to_string(&record).unwrap().contains(secret));
        assert_eq!(record.expires_at, Some(61_000));
    }
}
