//! The audit log's writer and reader. A layer around every request writes one entry for each
//! change a user asks for (whatever came of it), each agent read of secret values, each join,
//! and each refused attempt (401, 403), reads and members' requests included. The entry is
//! written before the answer goes: a client that saw its change done finds it in the log.
//! Only a crash between the change's commit and the entry's loses an entry, never the change.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Query, Request, State as AxState};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use berth_core::audit::{AuditEntry, Outcome};
use berth_core::{Millis, lock};
use serde::Deserialize;
use serde_json::{Value, json};

use super::credentials::Caller;
use super::error::{ApiError, ApiResult, WaitQuery, indexed, wait_for};
use super::tokens::Actor;
use crate::{Shared, now_ms};

/// The largest body a change carries (axum's default limit for the handlers behind).
const MAX_BODY: usize = 2 << 20;
/// A request's body kept as the entry's detail up to this size; larger, only its size.
const MAX_DETAIL: usize = 8 << 10;
/// Unauthenticated attempts (401) written per address and minute; the rest are counted into
/// the next one written.
const REFUSALS_PER_MINUTE: u32 = 20;

/// What becomes of a request in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An entry whatever its answer: a user's change, a join, an agent's read of secret values.
    Always,
    /// An entry only when refused (401, 403): reads and members' routine requests.
    IfRefused,
}

fn kind(method: &Method, route: &str) -> Kind {
    match (method, route) {
        (&Method::GET, "/v1/nodes/{id}/instances/{instance}/secrets" | "/v1/store/export") => Kind::Always,
        (&Method::GET | &Method::HEAD, _) => Kind::IfRefused,
        // A plan changes nothing.
        (&Method::POST, "/v1/plan") => Kind::IfRefused,
        (_, "/v1/join") => Kind::Always,
        (m, r) if super::tokens::is_member_route(m, r) => Kind::IfRefused,
        _ => Kind::Always,
    }
}

/// The action's name, as `berth audit` shows it.
fn action(method: &Method, route: &str) -> String {
    let named = match (method, route) {
        (&Method::PUT, "/v1/apps/{group}/{name}") => "app.deploy",
        (&Method::DELETE, "/v1/apps/{group}/{name}") => "app.destroy",
        (&Method::POST, "/v1/apps/{group}/{name}/scale") => "app.scale",
        (&Method::POST, "/v1/apps/{group}/{name}/upgrade") => "app.upgrade",
        (&Method::POST, "/v1/apps/{group}/{name}/restart") => "app.restart",
        (&Method::POST, "/v1/apps/{group}/{name}/rollback") => "app.rollback",
        (&Method::POST, "/v1/apps/{group}/{name}/promote") => "app.promote",
        (&Method::PUT, "/v1/apps/{group}/{name}/rules") => "app.rules.set",
        (&Method::DELETE, "/v1/apps/{group}/{name}/rules") => "app.rules.delete",
        (&Method::POST, "/v1/instances/{id}/restart") => "instance.restart",
        (&Method::POST, "/v1/instances/{id}/stop") => "instance.stop",
        (&Method::POST, "/v1/instances/{id}/exec") => "instance.exec",
        (&Method::POST, "/v1/tokens") => "token.create",
        (&Method::DELETE, "/v1/tokens/{id}") => "token.revoke",
        (&Method::POST, "/v1/groups") => "group.create",
        (&Method::PUT, "/v1/groups/{group}") => "group.set",
        (&Method::PUT, "/v1/secrets/{group}/{name}") => "secret.set",
        (&Method::DELETE, "/v1/secrets/{group}/{name}") => "secret.delete",
        (&Method::GET, "/v1/nodes/{id}/instances/{instance}/secrets") => "secret.read",
        (&Method::GET, "/v1/store/export") => "store.export",
        (&Method::POST, "/v1/join") => "member.join",
        (&Method::DELETE, "/v1/nodes/{id}") => "node.remove",
        (&Method::DELETE, "/v1/routers/{id}") => "router.remove",
        (&Method::POST, "/v1/nodes/{id}/drain") => "node.drain",
        (&Method::POST, "/v1/nodes/{id}/eligibility") => "node.eligibility",
        (&Method::PUT, "/v1/pools/{pool}") => "pool.set",
        (&Method::PUT, "/v1/pools/groups/{group}") => "pool.group",
        (&Method::PUT, "/v1/upstreams/{name}") => "upstream.set",
        (&Method::DELETE, "/v1/upstreams/{name}") => "upstream.delete",
        (&Method::PUT, "/v1/upstreams/{name}/rules") => "upstream.rules.set",
        (&Method::DELETE, "/v1/upstreams/{name}/rules") => "upstream.rules.delete",
        _ => return format!("{method} {route}"),
    };
    named.to_string()
}

/// What a request names in its path: the group it acts in and its target.
fn subject(shared: &Shared, route: &str, path: &str) -> (Option<String>, Option<String>) {
    let param = |name: &str| super::tokens::path_param(route, path, name).map(str::to_string);
    match (param("group"), param("name"), param("id"), param("instance")) {
        (Some(g), Some(n), _, _) => (Some(g.clone()), Some(format!("{g}/{n}"))),
        (Some(g), None, _, _) => (Some(g.clone()), Some(g)),
        (None, _, Some(node), Some(instance)) => (group_of(shared, &instance), Some(format!("{node}/{instance}"))),
        (None, _, Some(id), None) if route.starts_with("/v1/instances/") => (group_of(shared, &id), Some(id)),
        (None, name, id, _) => (None, id.or(name).or_else(|| param("pool"))),
    }
}

fn group_of(shared: &Shared, instance: &str) -> Option<String> {
    // An entry is written even when the store cannot say: without the group, then.
    super::tokens::group_of(shared, instance).ok().flatten()
}

/// The app a route changes, and its version and count before.
fn app_of(shared: &Shared, route: &str, path: &str) -> Option<(String, Option<berth_core::App>)> {
    if !route.starts_with("/v1/apps/{group}/{name}") {
        return None;
    }
    let group = super::tokens::path_param(route, path, "group")?;
    let name = super::tokens::path_param(route, path, "name")?;
    let id = format!("{group}/{name}");
    let before = shared.state.app(&id).ok().flatten().map(|a| a.value);
    Some((id, before))
}

/// What an app change did: its version and count before and after, and the fields that moved.
fn app_change(before: Option<&berth_core::App>, after: Option<&berth_core::App>) -> Option<Value> {
    let mut out = serde_json::Map::new();
    match (before, after) {
        (None, None) => return None,
        (None, Some(a)) => {
            out.insert("created".into(), json!(true));
            out.insert("version".into(), json!(a.version));
            out.insert("instances".into(), json!(a.instances));
        }
        (Some(_), None) => {
            out.insert("destroyed".into(), json!(true));
        }
        (Some(b), Some(a)) => {
            if a.destroying && !b.destroying {
                out.insert("destroyed".into(), json!(true));
            }
            if a.version != b.version {
                out.insert("version".into(), json!({"from": b.version, "to": a.version}));
                let changes = berth_plan::preview::diff(&b.spec, &a.spec);
                out.insert("changes".into(), serde_json::to_value(changes).unwrap_or_default());
            }
            if a.instances != b.instances {
                out.insert("instances".into(), json!({"from": b.instances, "to": a.instances}));
            }
        }
    }
    Some(Value::Object(out))
}

/// A request's body as an entry keeps it: JSON as it came (a secret's value hidden), else its
/// size; large ones by their size only.
fn body_detail(route: &str, content_type: Option<&str>, body: &Bytes) -> Option<Value> {
    if body.is_empty() {
        return None;
    }
    let is_json = content_type.is_none_or(|ct| ct.starts_with("application/json"));
    let parsed = if is_json && body.len() <= MAX_DETAIL { serde_json::from_slice::<Value>(body).ok() } else { None };
    match parsed {
        Some(mut v) => {
            if route.starts_with("/v1/secrets/")
                && let Some(value) = v.get_mut("value")
            {
                *value = json!("<hidden>");
            }
            Some(v)
        }
        None => Some(json!({ "bytes": body.len() })),
    }
}

/// Who a request came from: the token or member the inner layers let through (they put it in
/// the answer's extensions), else what its bearer claims, else no one.
fn who(resp: &Response, claimed: Option<&str>) -> (String, Option<String>, Option<berth_core::access::Role>) {
    if let Some(actor) = resp.extensions().get::<Actor>() {
        return (actor.name.clone(), Some(actor.id.clone()), Some(actor.role));
    }
    if let Some(caller) = resp.extensions().get::<Caller>() {
        return (caller.id.clone(), None, None);
    }
    match claimed {
        Some(id) => (format!("{id} (unverified)"), None, None),
        None => ("anonymous".into(), None, None),
    }
}

/// The id part of an `Authorization: Bearer ID.SECRET` (`tok-ID` or a member's id), never
/// its secret.
fn claimed_id(authorization: &str) -> Option<String> {
    let bearer = authorization.strip_prefix("Bearer ")?.trim();
    let id = bearer.rsplit_once('.').map_or("", |(id, _)| id);
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ok.then(|| id.to_string())
}

/// Refused attempts per address in the current minute: how many were written and how many not.
#[derive(Default)]
pub(crate) struct Refusals(HashMap<IpAddr, (Millis, u32, u64)>);

impl Refusals {
    /// Whether to write this refusal, and how many before it were not written.
    fn admit(&mut self, ip: IpAddr, now: Millis) -> Option<u64> {
        if self.0.len() > 10_000 {
            self.0.retain(|_, (since, _, skipped)| now - *since < 60_000 || *skipped > 0);
        }
        let (since, written, skipped) = self.0.entry(ip).or_insert((now, 0, 0));
        if now - *since >= 60_000 {
            (*since, *written) = (now, 0);
        }
        if *written >= REFUSALS_PER_MINUTE {
            *skipped += 1;
            return None;
        }
        *written += 1;
        Some(std::mem::take(skipped))
    }
}

/// The layer: see the module's comment.
pub(super) async fn record(
    AxState(shared): AxState<Shared>,
    route: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(a)| *a);
    let Some(route) = route else { return next.run(req).await };
    // A request another server relayed is the client's, as that server proves.
    let (address, via) = crate::relay::client_of(&shared, req.headers(), peer);
    let route = route.as_str();
    let method = req.method().clone();
    let kind = kind(&method, route);
    // Cheap copies (shared bytes): most requests are never written, and need nothing more.
    let uri = req.uri().clone();
    let bearer = req.headers().get(header::AUTHORIZATION).cloned();
    let (req, body) = if kind == Kind::Always && method != Method::GET {
        let (parts, body) = req.into_parts();
        match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(bytes) => (Request::from_parts(parts, Body::from(bytes.clone())), Some(bytes)),
            Err(_) => {
                let why = format!("the body is too large: at most {} MiB", MAX_BODY >> 20);
                return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, why).into_response();
            }
        }
    } else {
        (req, None)
    };
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let path = uri.path();
    let app = if kind == Kind::Always { app_of(&shared, route, path) } else { None };
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let outcome = Outcome::of_status(status);
    if kind == Kind::IfRefused && outcome != Outcome::Refused {
        return resp;
    }
    let now = now_ms();
    let mut suppressed = 0;
    // Only those who could not say who they are are kept to a few a minute: a token refused 403
    // is known, and answers for what it tries.
    if status == 401
        && let Some(addr) = address
    {
        match lock(&shared.refusals).admit(addr.ip(), now) {
            Some(skipped) => suppressed = skipped,
            None => return resp,
        }
    }
    // The error a failed or refused answer carries: small JSON, read and put back.
    let (resp, reason) = if status >= 400 { error_of(resp).await } else { (resp, None) };
    let claimed = bearer.as_ref().and_then(|b| b.to_str().ok()).and_then(claimed_id);
    let (actor, actor_id, role) = who(&resp, claimed.as_deref());
    let (group, target) = subject(&shared, route, path);
    let detail = match &app {
        Some((id, before)) if outcome == Outcome::Done => {
            let after = shared.state.app(id).ok().flatten().map(|a| a.value);
            app_change(before.as_ref(), after.as_ref())
        }
        _ => body.as_ref().and_then(|b| body_detail(route, content_type.as_deref(), b)),
    };
    let entry = AuditEntry {
        seq: 0,
        at: now,
        actor,
        actor_id,
        role,
        address: match (address, via) {
            (Some(a), Some(server)) => format!("{a} (via {server})"),
            (Some(a), None) => a.to_string(),
            (None, _) => "unknown".into(),
        },
        action: action(&method, route),
        group,
        target,
        outcome,
        status,
        reason,
        detail,
        suppressed,
    };
    if let Err(e) = shared.state.append_audit(entry) {
        tracing::error!(error = %e, route, "cannot append to the audit log");
    }
    resp
}

async fn error_of(resp: Response) -> (Response, Option<String>) {
    let (parts, body) = resp.into_parts();
    match axum::body::to_bytes(body, 64 << 10).await {
        Ok(bytes) => {
            let reason = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string));
            (Response::from_parts(parts, Body::from(bytes)), reason)
        }
        Err(_) => (Response::from_parts(parts, Body::empty()), None),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct AuditQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    group: Option<String>,
    /// Milliseconds since the epoch: entries at or after it.
    since: Option<Millis>,
    index: Option<u64>,
    wait: Option<String>,
}

/// `GET /v1/audit`: entries after `after` (or from `since`), oldest first, filtered to `group`
/// and to the token's groups (entries of no group: tokens of every group only).
pub(super) async fn list(
    AxState(shared): AxState<Shared>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Response> {
    let index = wait_for(&shared, &WaitQuery { index: q.index, wait: q.wait.clone() }).await?;
    let limit = q.limit.unwrap_or(200).clamp(1, 10_000);
    let from_since = q.since.map_or(0, |ms| u64::try_from(ms).unwrap_or(0).saturating_mul(1000).saturating_sub(1));
    let mut after = q.after.max(from_since);
    let shown = |e: &AuditEntry| {
        let mine = match &e.group {
            Some(g) => actor.grant().sees(g),
            None => actor.sees_all(),
        };
        mine && q.group.as_ref().is_none_or(|g| e.group.as_ref() == Some(g))
    };
    let mut out = Vec::new();
    // Pages until enough are found or none are left, so that a follower's cursor moves on.
    loop {
        let page = shared.state.audit(after, limit)?;
        let Some(last) = page.last().map(|e| e.seq) else { break };
        after = last;
        out.extend(page.into_iter().filter(|e| shown(e)));
        if out.len() >= limit {
            out.truncate(limit);
            break;
        }
    }
    Ok(indexed(index, &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secrets_value_is_hidden_and_large_or_odd_bodies_are_kept_by_size() {
        let body = Bytes::from_static(br#"{"value":"hunter2"}"#);
        let kept = body_detail("/v1/secrets/{group}/{name}", Some("application/json"), &body).unwrap();
        assert_eq!(kept, json!({"value": "<hidden>"}));
        let scale = Bytes::from_static(br#"{"instances":5}"#);
        assert_eq!(body_detail("/v1/apps/{group}/{name}/scale", None, &scale), Some(json!({"instances": 5})));
        let yaml = Bytes::from_static(b"group: g\nname: n\n");
        assert_eq!(body_detail("/v1/apps/{group}/{name}", Some("application/yaml"), &yaml), Some(json!({"bytes": 17})));
        let big = Bytes::from(format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_DETAIL)));
        assert_eq!(body_detail("/v1/groups", None, &big), Some(json!({"bytes": big.len()})));
        assert_eq!(body_detail("/v1/tokens", None, &Bytes::new()), None);
    }

    #[test]
    fn only_the_id_of_a_bearer_is_kept() {
        assert_eq!(claimed_id("Bearer tok-abc.s3cret").as_deref(), Some("tok-abc"));
        assert_eq!(claimed_id("Bearer node-1.s3cret").as_deref(), Some("node-1"));
        assert_eq!(claimed_id("Bearer s3cret-without-id"), None);
        assert_eq!(claimed_id("Bearer a b.c"), None, "no free text from outside");
        assert_eq!(claimed_id("Basic dXNlcg=="), None);
    }

    #[test]
    fn unauthenticated_attempts_are_kept_to_a_few_a_minute_per_address_and_counted() {
        let mut refusals = Refusals::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..REFUSALS_PER_MINUTE {
            assert_eq!(refusals.admit(ip, 1_000), Some(0));
        }
        assert_eq!(refusals.admit(ip, 2_000), None);
        assert_eq!(refusals.admit(ip, 3_000), None);
        assert_eq!(refusals.admit(other, 3_000), Some(0), "each address its own");
        assert_eq!(refusals.admit(ip, 61_000), Some(2), "a minute on, the next says how many were not written");
        assert_eq!(refusals.admit(ip, 61_001), Some(0));
    }

    #[test]
    fn an_app_change_is_written_as_its_version_diff() {
        let spec = |v: &str| {
            berth_core::AppSpec::from_yaml(&format!("group: g\nname: n\nimage: i\nenvironment: {{V: '{v}'}}\n"), None)
                .unwrap()
        };
        let app = |version: u64, instances: u32, v: &str| berth_core::App {
            spec: spec(v),
            version,
            instances,
            created_at: 0,
            updated_at: 0,
            destroying: false,
            backoff: Default::default(),
            alike: vec![],
            stable_version: None,
            deployment: None,
        };
        let changed = app_change(Some(&app(1, 2, "1")), Some(&app(2, 3, "2"))).unwrap();
        assert_eq!(changed["version"], json!({"from": 1, "to": 2}));
        assert_eq!(changed["instances"], json!({"from": 2, "to": 3}));
        assert_eq!(changed["changes"], json!([{"field": "environment.V", "from": "1", "to": "2"}]));
        assert_eq!(app_change(None, Some(&app(1, 1, "1"))).unwrap()["created"], true);
        assert_eq!(app_change(Some(&app(1, 1, "1")), None).unwrap()["destroyed"], true);
        assert_eq!(app_change(None, None), None);
    }
}
