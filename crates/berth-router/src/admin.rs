//! The admin API, in Slardar's shapes: status, static upstreams, explain, Lua scripts, drain.
//! Changes go through the control plane's store, so they survive restarts and reach every router.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use berth_api::{Client, RuleTarget, UpstreamRequest};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::balance;
use crate::proxy::{Body, Proxy};
use crate::rules;
use crate::table::Table;

pub struct Admin {
    pub proxy: Arc<Proxy>,
    pub registry: Arc<crate::table::Registry>,
    pub client: Client,
    pub token: Option<String>,
    pub applied: watch::Receiver<u64>,
}

fn reply(status: StatusCode, value: Value) -> Response<Body> {
    let mut resp = Response::new(
        http_body_util::Full::new(hyper::body::Bytes::from(value.to_string()))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    reply(status, json!({"error": message.into()}))
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Slardar's `/status`: per cluster, each server with weight, status, message and failures.
pub fn status(table: &Table) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("generation".into(), json!(table.generation));
    out.insert("applied_at".into(), json!(table.applied_at));
    out.insert("index".into(), json!(table.index));
    for (name, cluster) in &table.clusters {
        let servers: Vec<Value> = cluster
            .servers
            .iter()
            .map(|s| {
                let st = &s.state;
                let status = if s.ineligible().is_some()
                    && (s.draining || !s.ready || !st.up.load(Ordering::Relaxed) || st.passive_ejected())
                {
                    "err"
                } else if st.passive_fails.load(Ordering::Relaxed) > 0 || st.drained.load(Ordering::Relaxed) {
                    "unstable"
                } else {
                    "ok"
                };
                json!({
                    "server": &*s.addr,
                    "weight": s.weight,
                    "status": status,
                    "msg": s.ineligible().unwrap_or_else(|| st.msg()),
                    "fail_num": st.passive_fails.load(Ordering::Relaxed) + st.fall.load(Ordering::Relaxed),
                    "lastmodified": st.last_modified_ms.load(Ordering::Relaxed),
                    "instance": s.instance,
                    "in_flight": st.in_flight.load(Ordering::Relaxed),
                    "requests": st.requests.load(Ordering::Relaxed),
                })
            })
            .collect();
        out.insert(name.clone(), Value::Array(servers));
    }
    Value::Object(out)
}

/// Which cluster and rule match `host` and `path`, each server's eligibility, and the pick.
pub fn explain(table: &Table, host: &str, path: &str, method: &str) -> Value {
    let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
    let Some(cluster) = table.lookup(&host) else {
        let known: Vec<&String> = table.hosts.keys().collect();
        return json!({"host": host, "path": path, "matched": false, "why": "no cluster serves this host", "hosts": known});
    };
    let mut rule = Value::Null;
    let mut target = cluster.clone();
    if let Some(loaded) = &cluster.rules {
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        let view = rules::RequestView { method, path: p, query: q, host: &host, remote: None, headers: &[] };
        let decision = match rules::run(&loaded.script, &view) {
            Ok(o) => {
                if let rules::RuleAction::Route(name) = &o.action
                    && let Some(c) = table.by_route_name(name)
                {
                    target = c.clone();
                }
                json!({"action": format!("{:?}", o.action), "rewrite": o.rewrite, "set_headers": o.set_headers})
            }
            Err(e) => json!({"error": e.to_string(), "failure": berth_api::RULE_FAILURES[e.kind.index()],
                             "on_error": loaded.on_error}),
        };
        rule = json!({
            "target": loaded.target.to_string(),
            "version": loaded.script.version(),
            "engine": loaded.script.engine(),
            "on_error": loaded.on_error,
            "decision": decision,
        });
    }
    let candidates: Vec<Value> = target
        .servers
        .iter()
        .map(|s| json!({"server": &*s.addr, "instance": s.instance, "eligible": s.ineligible().is_none(), "why": s.ineligible()}))
        .collect();
    let picked = balance::pick(&target, &[], None)
        .map(|p| json!({"server": &*target.servers[p.index].addr, "fail_open": p.fail_open}));
    json!({
        "host": host,
        "path": path,
        "matched": true,
        "cluster": cluster.name,
        "routed_to": target.name,
        "rule": rule,
        "candidates": candidates,
        "picked": picked,
        "balance": target.balance.to_string(),
    })
}

/// `GET` tells an instance's drain state; `POST` drains it (refused when it is the last server
/// that takes traffic in one of its clusters, unless `force`); `DELETE` takes it back.
fn drain(table: &Table, instance: &str, method: &Method, force: bool) -> Response<Body> {
    let mut servers = Vec::new();
    for cluster in table.clusters.values() {
        for s in cluster.servers.iter().filter(|s| s.instance.as_deref() == Some(instance)) {
            servers.push((cluster, s));
        }
    }
    if servers.is_empty() {
        return error(StatusCode::NOT_FOUND, format!("instance {instance} is not routed here"));
    }
    if *method == Method::POST && !force {
        for (cluster, _) in &servers {
            let others = cluster
                .servers
                .iter()
                .filter(|s| s.instance.as_deref() != Some(instance) && s.ineligible().is_none())
                .count();
            if others == 0 {
                return error(
                    StatusCode::CONFLICT,
                    format!(
                        "instance {instance} is the last server of {} that takes traffic: draining it would \
                         leave the app unreachable; add ?force=true to drain it anyway",
                        cluster.route_name
                    ),
                );
            }
        }
    }
    let mut in_flight = 0;
    let mut drained = false;
    for (_, s) in &servers {
        match *method {
            Method::POST => s.state.drained.store(true, Ordering::Relaxed),
            Method::DELETE => s.state.drained.store(false, Ordering::Relaxed),
            _ => {}
        }
        drained |= s.state.drained.load(Ordering::Relaxed);
        in_flight += s.state.in_flight.load(Ordering::Relaxed);
    }
    reply(
        StatusCode::OK,
        json!({"instance": instance, "draining": drained, "in_flight": in_flight, "idle": in_flight == 0}),
    )
}

/// `Authorization: Bearer <token>`, the scheme in any case (RFC 9110 11.1), the token compared in
/// constant time.
fn no_caller_token() -> Response<Body> {
    error(
        StatusCode::UNAUTHORIZED,
        "a change to upstreams or rules goes to the server with your own API token: send it as `X-Berth-Token: TOKEN` (or as `Authorization: Bearer TOKEN` when this router has no --admin-token)",
    )
}

/// The caller's Berth API token: `X-Berth-Token`, or the bearer when this router has no admin
/// token of its own (the bearer is then not this router's).
fn caller_token(headers: &hyper::HeaderMap, router_has_token: bool) -> Option<String> {
    if let Some(v) = headers.get("x-berth-token").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    if router_has_token {
        return None;
    }
    let value = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

fn bearer_matches(headers: &hyper::HeaderMap, token: &str) -> bool {
    let Some((scheme, given)) =
        headers.get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().split_once(' '))
    else {
        return false;
    };
    let given = given.trim().as_bytes();
    scheme.eq_ignore_ascii_case("bearer")
        && given.len() == token.len()
        && given.iter().zip(token.as_bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn loopback_host(headers: &hyper::HeaderMap) -> bool {
    let Some(host) = headers.get(hyper::header::HOST).and_then(|v| v.to_str().ok()) else {
        // HTTP/1.0 without Host: no browser sends that.
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or(v6, |(h, _)| h),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A Content-Type outside the CORS-safelisted three (and present).
fn preflighted_type(headers: &hyper::HeaderMap) -> bool {
    let Some(ct) = headers.get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    !essence.is_empty()
        && !matches!(essence.as_str(), "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data")
}

fn lua_target(parts: &[&str]) -> Option<RuleTarget> {
    match parts {
        ["app", group, name] => Some(RuleTarget::App(format!("{group}/{name}"))),
        ["upstream", name] => Some(RuleTarget::Upstream((*name).to_string())),
        _ => None,
    }
}

impl Admin {
    /// Waits (briefly) until this router has applied what the control plane acknowledged.
    async fn applied(&self, until: impl Fn(&Table) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut rx = self.applied.clone();
        loop {
            if until(&self.proxy.table.load()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return false;
            }
        }
    }

    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        match &self.token {
            Some(token) if !bearer_matches(req.headers(), token) => {
                return Ok(error(StatusCode::UNAUTHORIZED, "this admin API needs `Authorization: Bearer <token>`"));
            }
            Some(_) => {}
            // Without a token only loopback can reach it; a page that rebinds its own name to
            // 127.0.0.1 still sends its own name as Host, and is refused.
            None if !loopback_host(req.headers()) => {
                return Ok(error(
                    StatusCode::FORBIDDEN,
                    "without an admin token this API answers only to Host: 127.0.0.1, [::1] or localhost",
                ));
            }
            None => {}
        }
        let method = req.method().clone();
        // A change must come with a body type a browser cannot send cross-site without asking
        // first (a CORS preflight), so no web page can drain or reroute through a simple request.
        // DELETE needs no body: a browser always asks first for it.
        if matches!(method, Method::POST | Method::PUT) && !preflighted_type(req.headers()) {
            return Ok(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a change needs `Content-Type: application/json` (or text/x-lua for a script)",
            ));
        }
        let path = req.uri().path().to_string();
        let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|p| !p.is_empty()).collect();
        let table = self.proxy.table.load_full();
        // Changes to upstreams and rules are the server's: they go there with the caller's own
        // API token, which the server checks as it does any other, never with this router's.
        let caller = caller_token(req.headers(), self.token.is_some());
        let as_caller = || caller.as_ref().map(|token| self.client.clone().with_credential(token.clone()));
        let resp = match (&method, parts.as_slice()) {
            (&Method::GET, ["status"]) => reply(StatusCode::OK, status(&table)),
            (&Method::GET, ["metrics"]) => {
                let clusters: BTreeMap<String, Value> = self
                    .registry
                    .all_metrics()
                    .into_iter()
                    .map(|(name, m)| (name, serde_json::to_value(m.view()).unwrap_or_default()))
                    .collect();
                reply(StatusCode::OK, json!({"clusters": clusters, "access_log_drops": self.proxy.access_dropped()}))
            }
            (&Method::GET, ["explain"]) => match query_param(&req, "host") {
                Some(host) => {
                    let path = query_param(&req, "path").unwrap_or_else(|| "/".into());
                    let method = query_param(&req, "method").unwrap_or_else(|| "GET".into());
                    reply(StatusCode::OK, explain(&table, &host, &path, &method))
                }
                None => error(StatusCode::BAD_REQUEST, "explain needs ?host=H (and optionally &path=P&method=M)"),
            },
            (&Method::GET, ["upstreams"]) => match self.client.upstreams().await {
                Ok(list) => reply(StatusCode::OK, serde_json::to_value(list).unwrap_or_default()),
                Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
            },
            (&Method::PUT, ["upstream", name]) => {
                let name = name.to_string();
                let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return Ok(error(StatusCode::BAD_REQUEST, e.to_string())),
                };
                let parsed: UpstreamRequest = match serde_json::from_slice(&body) {
                    Ok(p) => p,
                    Err(e) => {
                        return Ok(error(
                            StatusCode::BAD_REQUEST,
                            format!("body, line {} column {}: {e}", e.line(), e.column()),
                        ));
                    }
                };
                let Some(client) = as_caller() else { return Ok(no_caller_token()) };
                match client.put_upstream(&name, &parsed).await {
                    Ok(up) => {
                        let want = format!("cls:{name}");
                        let applied = self
                            .applied(|t| t.clusters.get(&want).is_some_and(|c| c.servers.len() == up.servers.len()))
                            .await;
                        reply(StatusCode::OK, json!({"upstream": up, "applied": applied}))
                    }
                    Err(e) => error(
                        StatusCode::from_u16(e.status().unwrap_or(502)).unwrap_or(StatusCode::BAD_GATEWAY),
                        e.to_string(),
                    ),
                }
            }
            (&Method::DELETE, ["upstream", name]) => {
                let name = name.to_string();
                let Some(client) = as_caller() else { return Ok(no_caller_token()) };
                match client.delete_upstream(&name).await {
                    Ok(()) => {
                        let want = format!("cls:{name}");
                        let applied = self.applied(|t| !t.clusters.contains_key(&want)).await;
                        reply(StatusCode::OK, json!({"deleted": name, "applied": applied}))
                    }
                    Err(e) => error(
                        StatusCode::from_u16(e.status().unwrap_or(502)).unwrap_or(StatusCode::BAD_GATEWAY),
                        e.to_string(),
                    ),
                }
            }
            (&Method::GET, ["lua"]) => {
                let scripts: Vec<Value> = table
                    .scripts
                    .iter()
                    .map(|r| {
                        json!({"target": r.target, "version": r.script.version(), "engine": r.script.engine(),
                               "on_error": r.on_error, "overruns": r.script.overruns(),
                               "suspended": r.script.suspended(), "loaded_at": r.loaded_at, "error": r.error})
                    })
                    .collect();
                reply(StatusCode::OK, Value::Array(scripts))
            }
            (&Method::PUT, ["lua", rest @ ..]) => {
                let Some(target) = lua_target(rest) else {
                    return Ok(error(StatusCode::NOT_FOUND, "use /lua/app/GROUP/NAME or /lua/upstream/NAME"));
                };
                let on_error = match query_param(&req, "on_error").map(|v| v.parse::<berth_api::RuleOnError>()) {
                    None => None,
                    Some(Ok(o)) => Some(o),
                    Some(Err(e)) => return Ok(error(StatusCode::BAD_REQUEST, e)),
                };
                let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return Ok(error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())),
                };
                let source = String::from_utf8_lossy(&body).into_owned();
                if let Err(e) = rules::check(&source) {
                    return Ok(reply(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"error": format!("the script does not compile: {e}"), "line": e.line}),
                    ));
                }
                let Some(client) = as_caller() else { return Ok(no_caller_token()) };
                match client.set_rules(&target, &source, on_error).await {
                    Ok(_) => {
                        let version = rules::Script::new(&source).map(|s| s.version()).unwrap_or_default();
                        let applied = self
                            .applied(|t| {
                                // A change of policy alone keeps the version: wait for the policy too.
                                t.scripts.iter().any(|r| {
                                    r.target == target
                                        && r.script.version() == version
                                        && on_error.is_none_or(|o| r.on_error == o)
                                })
                            })
                            .await;
                        reply(StatusCode::OK, json!({"target": target, "version": version, "applied": applied}))
                    }
                    Err(e) => error(
                        StatusCode::from_u16(e.status().unwrap_or(502)).unwrap_or(StatusCode::BAD_GATEWAY),
                        e.to_string(),
                    ),
                }
            }
            (&Method::DELETE, ["lua", rest @ ..]) => match lua_target(rest) {
                Some(target) => match as_caller() {
                    None => no_caller_token(),
                    Some(client) => match client.delete_rules(&target).await {
                        Ok(()) => reply(StatusCode::OK, json!({"deleted": target})),
                        Err(e) => error(
                            StatusCode::from_u16(e.status().unwrap_or(502)).unwrap_or(StatusCode::BAD_GATEWAY),
                            e.to_string(),
                        ),
                    },
                },
                None => error(StatusCode::NOT_FOUND, "use /lua/app/GROUP/NAME or /lua/upstream/NAME"),
            },
            (&Method::GET | &Method::POST | &Method::DELETE, ["drain", instance]) => {
                let force = query_param(&req, "force").is_some_and(|v| v.is_empty() || v == "true" || v == "1");
                drain(&table, instance, &method, force)
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "admin endpoints: GET /status /metrics /upstreams /explain?host= /lua /drain/INSTANCE; PUT|DELETE /upstream/NAME /lua/app/G/N /lua/upstream/NAME; POST|DELETE /drain/INSTANCE",
            ),
        };
        Ok(resp)
    }
}
