//! Who may use the API. Every request but `/v1/health` and `/v1/join` carries a bearer token,
//! loopback included: a TCP port is open to every local user. A token is `ID.SECRET`; the store
//! keeps its id, name, role and groups, and a SHA-256 digest of the secret, never the secret.
//! At first start the server makes an admin token and writes it once to
//! `<data-dir>/admin.token` (mode 0600), as it does its join token. Agents and routers use their
//! own credentials (`credentials.rs`) on their own endpoints.

use std::path::Path as FsPath;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Request, State as AxState};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use berth_core::access::{Grant, Need, Role, Scope};
use berth_core::{Level, Millis};
use berth_store::Txn;
use berth_store::state::{Subject, encode};
use serde::{Deserialize, Serialize};

use super::credentials::{bearer, digest, hex};
use super::error::{ApiError, ApiResult, indexed, parse_json};
use crate::{Shared, now_ms};
use berth_api::{TokenCreated, TokenRequest, TokenView};

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
pub fn bootstrap(shared: &Shared, path: &FsPath) -> Result<bool, AdminTokenError> {
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
    TokenOr(berth_api::Member, Need, Of),
    Token(Need, Of),
}

/// Where a request's group comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Of {
    /// The `{group}` in its path.
    Group,
    /// The app of the instance `{id}` in its path.
    Instance,
    /// No one group: every token may ask, and lists are filtered to the token's groups.
    Any,
    /// Every group at once, unfiltered.
    Every,
}

/// Everything needs an admin token unless listed here: a route added later is closed by default.
fn needs(method: &Method, route: &str) -> Needs {
    use Need::{Admin, Change, Read};
    let read = method == Method::GET;
    let change = if read { Read } else { Change };
    match (method, route) {
        (_, "/v1/health" | "/v1/join") => Needs::Nothing,
        // The console checks its session itself: without one a page is the sign-in form.
        (_, r) if r == "/ui" || r.starts_with("/ui/") => Needs::Nothing,
        (&Method::POST, "/v1/nodes" | "/v1/routers/{id}") | (&Method::GET, "/v1/routes") => Needs::Member,
        (
            _,
            "/v1/nodes/{id}/heartbeat"
            | "/v1/nodes/{id}/assignments"
            | "/v1/nodes/{id}/instances/{instance}/secrets"
            | "/v1/nodes/{id}/reports"
            | "/v1/nodes/{id}/metrics"
            | "/v1/nodes/{id}/logs"
            | "/v1/nodes/{id}/execs"
            | "/v1/nodes/{id}/execs/{exec}"
            | "/v1/nodes/{id}/execs/{exec}/stream",
        ) => Needs::Member,
        (&Method::GET, "/v1/instances/{id}/drain") => Needs::TokenOr(berth_api::Member::Agent, Read, Of::Instance),
        // Routers read upstreams and rules for their admin API; changes come with the caller's
        // own token, which the router passes on.
        (&Method::GET, "/v1/apps/{group}/{name}/rules") => Needs::TokenOr(berth_api::Member::Router, Read, Of::Group),
        (&Method::GET, "/v1/upstreams" | "/v1/upstreams/{name}" | "/v1/upstreams/{name}/rules") => {
            Needs::TokenOr(berth_api::Member::Router, Read, Of::Any)
        }
        (_, "/v1/upstreams" | "/v1/upstreams/{name}" | "/v1/upstreams/{name}/rules") => Needs::Token(Admin, Of::Any),
        (_, r) if r.starts_with("/v1/apps/{group}/{name}") || r.starts_with("/v1/jobs/{group}/{name}") => {
            Needs::Token(change, Of::Group)
        }
        // A deployer sets its groups' secrets; no answer carries a value, so a viewer may list.
        (&Method::PUT | &Method::DELETE, "/v1/secrets/{group}/{name}") => Needs::Token(Change, Of::Group),
        (&Method::POST, "/v1/instances/{id}/restart" | "/v1/instances/{id}/stop" | "/v1/instances/{id}/exec") => {
            Needs::Token(Change, Of::Instance)
        }
        (&Method::GET, "/metrics" | "/v1/nodes/{id}") => Needs::Token(Read, Of::Every),
        (
            &Method::GET,
            "/v1/apps" | "/v1/jobs" | "/v1/instances" | "/v1/events" | "/v1/usage" | "/v1/alerts" | "/v1/nodes"
            | "/v1/pools" | "/v1/routers" | "/v1/logs/sinks" | "/v1/outputs" | "/v1/groups" | "/v1/secrets"
            | "/v1/audit" | "/v1/cluster",
        ) => Needs::Token(Read, Of::Any),
        // A plan changes nothing; the spec it reads names its own group.
        (&Method::POST, "/v1/plan") => Needs::Token(Read, Of::Any),
        _ => Needs::Token(Admin, Of::Any),
    }
}

/// Every name a route takes from its path, checked by its rule: groups, app and pool names are
/// DNS labels; a secret's name may also hold underscores; ids are letters, digits, `.`, `_`
/// and `-`, never `.` or `..` alone.
fn checked_params(route: &str, path: &str) -> Result<(), ApiError> {
    use berth_core::spec::{check_label, check_secret_name};
    let bad = |param: &str, why: String| ApiError::new(StatusCode::BAD_REQUEST, format!("{param}: {why}"));
    for (template, value) in route.split('/').zip(path.split('/')) {
        let Some(param) = template.strip_prefix('{').and_then(|t| t.strip_suffix('}')) else { continue };
        let value = percent_decoded(value);
        match param {
            "group" | "pool" => check_label(&value).map_err(|why| bad(param, why))?,
            "name" if route.starts_with("/v1/secrets/") => check_secret_name(&value).map_err(|why| bad(param, why))?,
            "name" if ["/v1/apps/", "/v1/jobs/", "/ui/apps/", "/ui/jobs/"].iter().any(|p| route.starts_with(p)) => {
                check_label(&value).map_err(|why| bad(param, why))?;
            }
            _ => {
                let ok = !value.is_empty()
                    && value.len() <= 253
                    && value != "."
                    && value != ".."
                    && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                if !ok {
                    let why = format!("`{value}` must be 1-253 letters, digits, dots, dashes or underscores");
                    return Err(bad(param, why));
                }
            }
        }
    }
    Ok(())
}

/// A path segment as a handler sees it: `%2E%2E` is `..`.
fn percent_decoded(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The group of instance `id`'s app; none when there is no such instance.
pub(super) fn group_of(shared: &Shared, id: &str) -> Result<Option<String>, berth_store::StoreError> {
    Ok(shared.state.instance(id)?.and_then(|found| found.value.app.split_once('/').map(|(g, _)| g.to_string())))
}

/// Whether a route is an agent's or router's own (their credential, not a user's token).
pub(super) fn is_member_route(method: &Method, route: &str) -> bool {
    needs(method, route) == Needs::Member
}

/// The value of `{name}` in `path`, matched against the route `template`.
pub(super) fn path_param<'p>(template: &str, path: &'p str, name: &str) -> Option<&'p str> {
    let wanted = format!("{{{name}}}");
    template.split('/').zip(path.split('/')).find(|(t, _)| *t == wanted).map(|(_, v)| v)
}

/// Checks every request's token, and what its role and groups allow, but for the routes that
/// need none or a member's credential. The actor goes into the request's extensions.
pub async fn authenticate(
    AxState(shared): AxState<Shared>,
    route: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = route.as_ref().map_or("", |r| r.as_str());
    // Names from outside are checked before anything uses them, a path on disk included.
    if let Err(bad) = checked_params(route, req.uri().path()) {
        return bad.into_response();
    }
    let (need, of, member) = match needs(req.method(), route) {
        _ if route.is_empty() => return next.run(req).await,
        Needs::Nothing | Needs::Member => return next.run(req).await,
        Needs::TokenOr(member, need, of) => (need, of, Some(member)),
        Needs::Token(need, of) => (need, of, None),
    };
    let Some(token) = bearer(req.headers()) else {
        // The console's pages call the API with their session, and every change carries the
        // session's CSRF token.
        match super::console::session_of(&shared, req.headers()) {
            Ok(Some((session, actor))) => {
                if req.method() != Method::GET && !super::console::csrf_ok(&session, req.headers()) {
                    let why = "a change made with a console session needs its CSRF token (X-Berth-CSRF)";
                    let mut refused = ApiError::new(StatusCode::FORBIDDEN, why).into_response();
                    refused.extensions_mut().insert(actor);
                    return refused;
                }
                return admit(&shared, actor, route, need, of, req, next).await;
            }
            Ok(None) => {}
            Err(e) => return e.into_response(),
        }
        return refuse("no token: pass --token or set BERTH_TOKEN (the server wrote its admin token to <data-dir>/admin.token; `berth up` saves it in the CLI's context)").into_response();
    };
    if let Some(member) = member
        && !token.starts_with("tok-")
    {
        return match super::credentials::check_member(&shared, token, member) {
            Ok(caller) => {
                req.extensions_mut().insert(caller.clone());
                let mut resp = next.run(req).await;
                resp.extensions_mut().insert(caller);
                resp
            }
            Err(refused) => refused.into_response(),
        };
    }
    let actor = match check(&shared, token, now_ms()) {
        Ok(actor) => actor,
        Err(refused) => return refused.into_response(),
    };
    admit(&shared, actor, route, need, of, req, next).await
}

/// Lets a request whose caller is known through, if its role and groups allow what the route
/// needs; the actor goes into the request's and the response's extensions.
async fn admit(
    shared: &Shared,
    actor: Actor,
    route: &str,
    need: Need,
    of: Of,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    let group = match of {
        Of::Group => path_param(route, &path, "group").map(str::to_string),
        // No such instance: the handler says so.
        Of::Instance => match path_param(route, &path, "id").map(|id| group_of(shared, id)) {
            Some(Ok(group)) => group,
            Some(Err(e)) => return ApiError::from(e).into_response(),
            None => None,
        },
        Of::Any | Of::Every => None,
    };
    let scope = match (&group, of) {
        (Some(g), _) => Scope::Group(g),
        (None, Of::Every) => Scope::Every,
        _ => Scope::Any,
    };
    if let Err(denied) = actor.grant().allows(need, scope) {
        let why = format!("token {} ({}): {denied}", actor.id, actor.name);
        let mut refused = ApiError::new(StatusCode::FORBIDDEN, why).into_response();
        // For the audit log, which writes who was refused.
        refused.extensions_mut().insert(actor);
        return refused;
    }
    req.extensions_mut().insert(actor.clone());
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(actor);
    resp
}

impl Actor {
    /// Who acts with `token`.
    pub fn of(token: ApiToken) -> Actor {
        Actor { id: token.id, name: token.name, role: token.role, groups: token.groups }
    }

    pub fn grant(&self) -> Grant<'_> {
        Grant { role: self.role, groups: &self.groups }
    }

    /// Whether what belongs to app `GROUP/NAME` is shown to this token.
    pub fn sees_app(&self, app: &str) -> bool {
        self.grant().sees(app.split_once('/').map_or(app, |(group, _)| group))
    }

    /// Whether what belongs to no app (a node's news) is shown: to tokens of every group.
    pub fn sees_all(&self) -> bool {
        self.role == Role::Admin || self.groups.is_empty()
    }
}

fn view(t: &ApiToken) -> TokenView {
    TokenView {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role,
        groups: t.groups.clone(),
        created_at: t.created_at,
        expires_at: t.expires_at,
    }
}

/// `POST /v1/tokens`: a new token, its secret in the answer only.
pub(crate) async fn create(
    AxState(shared): AxState<Shared>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: TokenRequest = parse_json(&body)?;
    let bad = |why: String| ApiError::new(StatusCode::BAD_REQUEST, why);
    berth_core::spec::check_label(&req.name).map_err(|e| bad(format!("name: {e}")))?;
    for group in &req.groups {
        berth_core::spec::check_label(group).map_err(|e| bad(format!("groups: {group}: {e}")))?;
    }
    if req.role == Role::Admin && !req.groups.is_empty() {
        return Err(bad("groups: an admin token acts in every group; give deployer or viewer for a group".into()));
    }
    let now = now_ms();
    let ttl = req.ttl_seconds.map(|s| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX));
    let (token, record) = mint(&req.name, req.role, req.groups.clone(), now, ttl);
    let msg = format!(
        "token {} ({}, {}{}) made by {} ({})",
        record.id,
        record.name,
        record.role,
        if record.groups.is_empty() { String::new() } else { format!(" of {}", record.groups.join(", ")) },
        actor.id,
        actor.name
    );
    let txn = Txn::default().put(token_key(&record.id), encode(&record));
    let txn = shared.state.with_event(txn, now, Level::Info, "token.created", Subject::default(), msg);
    let index = shared.state.commit(txn)?;
    Ok(indexed(index, &TokenCreated { token, view: view(&record) }))
}

/// `GET /v1/tokens`: every token, never a secret.
pub(crate) async fn list(AxState(shared): AxState<Shared>) -> ApiResult<Response> {
    let revision = shared.state.store().revision();
    let tokens: Vec<TokenView> = shared.state.records::<ApiToken>("tokens/")?.iter().map(|t| view(&t.value)).collect();
    Ok(indexed(revision, &tokens))
}

/// `DELETE /v1/tokens/{id}`: refused from then on. The last admin token stays: without it
/// nobody could make another.
pub(crate) async fn revoke(
    AxState(shared): AxState<Shared>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let now = now_ms();
    let all = shared.state.records::<ApiToken>("tokens/")?;
    let Some(found) = all.iter().find(|t| t.value.id == id) else {
        return Err(ApiError::not_found(&format!("token {id}")));
    };
    let admins = all.iter().filter(|t| t.value.role == Role::Admin && t.value.expires_at.is_none_or(|at| at > now));
    if found.value.role == Role::Admin && admins.count() <= 1 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "token {id} is the last admin token: make another (berth token create --role admin) before revoking it"
            ),
        ));
    }
    let msg = format!("token {id} ({}) revoked by {} ({})", found.value.name, actor.id, actor.name);
    let txn = Txn::default().expect(token_key(&id), found.mod_revision).delete(token_key(&id));
    let txn = shared.state.with_event(txn, now, Level::Info, "token.revoked", Subject::default(), msg);
    let index = shared.state.commit(txn)?;
    Ok(indexed(index, &view(&found.value)))
}

fn refuse(why: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, why)
}

pub(super) fn check(shared: &Shared, bearer: &str, now: Millis) -> Result<Actor, ApiError> {
    token_of(shared, bearer, now).map(Actor::of)
}

/// The token a bearer stands for: known, its secret right, not expired.
pub(super) fn token_of(shared: &Shared, bearer: &str, now: Millis) -> Result<ApiToken, ApiError> {
    let Some((id, secret)) = bearer.rsplit_once('.').filter(|(id, _)| id.starts_with("tok-")) else {
        return Err(refuse("malformed token: expected tok-ID.SECRET, as `berth token create` prints it"));
    };
    let Some(known) = shared.seen_record(|seen| &mut seen.tokens, id, &token_key(id))? else {
        return Err(refuse(&format!("unknown token {id}: revoked, or never made by this server")));
    };
    if digest(secret) != known.digest {
        return Err(refuse(&format!("wrong secret for token {id}")));
    }
    if known.expires_at.is_some_and(|at| at <= now) {
        return Err(refuse(&format!("token {id} ({}) has expired", known.name)));
    }
    Ok(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_needs_an_admin_token_unless_listed() {
        use Need::{Admin, Change, Read};
        assert_eq!(needs(&Method::GET, "/v1/health"), Needs::Nothing);
        assert_eq!(needs(&Method::POST, "/v1/join"), Needs::Nothing);
        assert_eq!(needs(&Method::GET, "/v1/nodes"), Needs::Token(Read, Of::Any));
        assert_eq!(needs(&Method::POST, "/v1/nodes"), Needs::Member);
        assert_eq!(needs(&Method::POST, "/v1/nodes/{id}/heartbeat"), Needs::Member);
        assert_eq!(needs(&Method::GET, "/v1/routes"), Needs::Member);
        assert_eq!(needs(&Method::POST, "/v1/routers/{id}"), Needs::Member);
        assert_eq!(needs(&Method::GET, "/v1/routers"), Needs::Token(Read, Of::Any));
        let drain = Needs::TokenOr(berth_api::Member::Agent, Read, Of::Instance);
        assert_eq!(needs(&Method::GET, "/v1/instances/{id}/drain"), drain);
        assert_eq!(needs(&Method::GET, "/v1/upstreams"), Needs::TokenOr(berth_api::Member::Router, Read, Of::Any));
        assert_eq!(needs(&Method::PUT, "/v1/upstreams/{name}"), Needs::Token(Admin, Of::Any));
        assert_eq!(needs(&Method::PUT, "/v1/apps/{group}/{name}/rules"), Needs::Token(Change, Of::Group));
        assert_eq!(needs(&Method::DELETE, "/v1/apps/{group}/{name}"), Needs::Token(Change, Of::Group));
        assert_eq!(needs(&Method::GET, "/v1/apps/{group}/{name}/logs"), Needs::Token(Read, Of::Group));
        assert_eq!(needs(&Method::POST, "/v1/jobs/{group}/{name}/run"), Needs::Token(Change, Of::Group));
        assert_eq!(needs(&Method::GET, "/v1/jobs/{group}/{name}"), Needs::Token(Read, Of::Group));
        assert_eq!(needs(&Method::GET, "/v1/jobs"), Needs::Token(Read, Of::Any));
        // The console's pages check their session themselves (the sign-in form without one).
        assert_eq!(needs(&Method::GET, "/ui/apps/{group}/{name}"), Needs::Nothing);
        assert_eq!(needs(&Method::POST, "/ui/login"), Needs::Nothing);
        assert_eq!(needs(&Method::GET, "/uix"), Needs::Token(Admin, Of::Any));
        assert_eq!(needs(&Method::POST, "/v1/instances/{id}/exec"), Needs::Token(Change, Of::Instance));
        assert_eq!(needs(&Method::GET, "/metrics"), Needs::Token(Read, Of::Every));
        assert_eq!(needs(&Method::POST, "/v1/nodes/{id}/drain"), Needs::Token(Admin, Of::Any));
        assert_eq!(needs(&Method::PUT, "/v1/pools/groups/{group}"), Needs::Token(Admin, Of::Any));
        assert_eq!(needs(&Method::POST, "/v1/tokens"), Needs::Token(Admin, Of::Any));
        assert_eq!(needs(&Method::PUT, "/v1/secrets/{group}/{name}"), Needs::Token(Change, Of::Group));
        assert_eq!(needs(&Method::GET, "/v1/secrets"), Needs::Token(Read, Of::Any));
        assert_eq!(needs(&Method::GET, "/v1/nodes/{id}/instances/{instance}/secrets"), Needs::Member);
        assert_eq!(needs(&Method::GET, "/v1/some/route/added/later"), Needs::Token(Admin, Of::Any));
    }

    #[test]
    fn names_in_paths_are_checked_before_use() {
        let app = "/v1/apps/{group}/{name}/logs";
        assert!(checked_params(app, "/v1/apps/shop/web/logs").is_ok());
        for (path, says) in [
            ("/v1/apps/%2E%2E/web/logs", "group: `..` must be lowercase"),
            ("/v1/apps/shop/..%2Fetc/logs", "name: `../etc` must be lowercase"),
            ("/v1/apps/Shop/web/logs", "group: `Shop`"),
        ] {
            let err = checked_params(app, path).unwrap_err();
            assert!(format!("{err:?}").contains(says), "{path}: {err:?}");
            assert_eq!(err.into_response().status(), StatusCode::BAD_REQUEST, "{path}");
        }
        assert!(checked_params("/v1/secrets/{group}/{name}", "/v1/secrets/shop/db_password").is_ok());
        assert!(checked_params("/v1/nodes/{id}", "/v1/nodes/node-1a2b").is_ok());
        assert!(checked_params("/v1/nodes/{id}", "/v1/nodes/..").is_err());
        assert!(checked_params("/v1/tokens/{id}", "/v1/tokens/tok-1%2F2").is_err());
    }

    #[test]
    fn path_params_come_from_the_route_template() {
        let route = "/v1/apps/{group}/{name}/scale";
        assert_eq!(path_param(route, "/v1/apps/shop/web/scale", "group"), Some("shop"));
        assert_eq!(path_param(route, "/v1/apps/shop/web/scale", "name"), Some("web"));
        assert_eq!(path_param(route, "/v1/apps/shop/web/scale", "id"), None);
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
