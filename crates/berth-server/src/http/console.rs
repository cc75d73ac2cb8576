//! The web console at `/ui/`: sign-in with an API token, a session in an HttpOnly, SameSite
//! cookie, and the pages `berth-console` renders from the same views the API answers with, for
//! what the token may see. Changes are made by the page's script through the `/v1` API with the
//! session (and its CSRF token in a header), so they pass the same checks and the same audit as
//! the CLI's.

use axum::Form;
use axum::body::Body;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_console::{Page, Section, Viewer};
use berth_core::Millis;
use berth_core::access::{Need, Scope};
use berth_store::Txn;
use berth_store::state::{encode, rules_key};
use serde::{Deserialize, Serialize};

use super::credentials::{digest, hex};
use super::error::{ApiError, ApiResult, WaitQuery, wait_for};
use super::tokens::{Actor, ApiToken, token_key};
use crate::{Shared, now_ms};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "berth_session";
/// The header a page's changes carry the session's CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-berth-csrf";
/// A session lasts this long (less when its token expires first).
const SESSION_MS: Millis = 12 * 3600 * 1000;

/// A signed-in browser, as the store keeps it under the digest of its cookie.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Session {
    pub token: String,
    pub csrf: String,
    pub created_at: Millis,
    pub expires_at: Millis,
}

fn session_key(cookie: &str) -> String {
    format!("sessions/{}", digest(cookie))
}

fn random_secret() -> String {
    hex(&rand::random::<[u8; 32]>())
}

/// The session cookie's value, if the request carries one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == COOKIE && !v.is_empty()).then_some(v)
    })
}

/// The session a request's cookie names and the token it acts as, while both are valid.
pub(crate) fn session_of(shared: &Shared, headers: &HeaderMap) -> Result<Option<(Session, Actor)>, ApiError> {
    let Some(value) = cookie(headers) else { return Ok(None) };
    let now = now_ms();
    let Some(session) = shared.state.record::<Session>(&session_key(value))?.map(|s| s.value) else {
        return Ok(None);
    };
    if session.expires_at <= now {
        return Ok(None);
    }
    let Some(token) = shared.state.record::<ApiToken>(&token_key(&session.token))?.map(|t| t.value) else {
        // Revoked: its sessions end with it.
        return Ok(None);
    };
    if token.expires_at.is_some_and(|at| at <= now) {
        return Ok(None);
    }
    Ok(Some((session, Actor::of(token))))
}

/// The keys of the sessions past their time.
fn expired_sessions(shared: &Shared, now: Millis) -> Result<Vec<String>, berth_store::StoreError> {
    Ok(shared
        .state
        .store()
        .list("sessions/")?
        .into_iter()
        .filter(|e| serde_json::from_slice::<Session>(&e.value).map_or(true, |s| s.expires_at <= now))
        .map(|e| e.key)
        .take(100)
        .collect())
}

/// Whether a change sent with a session carries its CSRF token: a page of another site can
/// send the cookie (SameSite aside), never this header.
pub(crate) fn csrf_ok(session: &Session, headers: &HeaderMap) -> bool {
    headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).is_some_and(|v| v == session.csrf)
}

fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Nothing but this server's own files, and never in a frame.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

fn see_other(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

pub(super) async fn login_page() -> Response {
    html(StatusCode::OK, berth_console::login(None))
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

/// `POST /ui/login`: a valid token starts a session; a wrong one gets the form again, and no
/// cookie.
pub(super) async fn login(AxState(shared): AxState<Shared>, Form(form): Form<LoginForm>) -> ApiResult<Response> {
    let now = now_ms();
    let token = match super::tokens::token_of(&shared, form.token.trim(), now) {
        Ok(token) => token,
        Err(refused) => {
            return Ok(html(StatusCode::UNAUTHORIZED, berth_console::login(Some(refused.message()))));
        }
    };
    let expires_at = token.expires_at.map_or(now + SESSION_MS, |at| at.min(now + SESSION_MS));
    let actor = Actor::of(token);
    let value = random_secret();
    let session = Session { token: actor.id.clone(), csrf: random_secret(), created_at: now, expires_at };
    let key = session_key(&value);
    let mut txn = Txn::default().expect(key.clone(), 0).put(key, encode(&session));
    // Sessions past their time go as new ones come (a hundred at a time: etcd's transactions
    // are bounded).
    for key in expired_sessions(&shared, now)? {
        txn = txn.delete(key);
    }
    shared.state.commit(txn)?;
    let secure = if shared.cluster.api.starts_with("https://") { "; Secure" } else { "" };
    let max_age = (expires_at - now) / 1000;
    let set = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    let mut resp = see_other("/ui/");
    if let Ok(v) = HeaderValue::from_str(&set) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    // For the audit log: who signed in.
    resp.extensions_mut().insert(actor);
    Ok(resp)
}

#[derive(Deserialize)]
pub(super) struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/logout`: ends the session (the form carries its CSRF token).
pub(super) async fn logout(
    AxState(shared): AxState<Shared>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> ApiResult<Response> {
    if let (Some(value), Some((session, actor))) = (cookie(&headers), session_of(&shared, &headers)?) {
        if session.csrf != form.csrf {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "sign out from the console's own page"));
        }
        shared.state.commit(Txn::default().delete(session_key(value)))?;
        let mut resp = see_other("/ui/login");
        let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
        if let Ok(v) = HeaderValue::from_str(&clear) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        resp.extensions_mut().insert(actor);
        return Ok(resp);
    }
    Ok(see_other("/ui/login"))
}

/// The console's stylesheet and script: revalidated by their tag, so a page load after the
/// first asks and gets 304 instead of the files.
pub(super) async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    let Some((bytes, kind, tag)) = berth_console::asset(&path) else { return StatusCode::NOT_FOUND.into_response() };
    let fresh = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v == tag);
    let mut resp =
        if fresh { StatusCode::NOT_MODIFIED.into_response() } else { Response::new(Body::from(bytes.into_owned())) };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    resp
}

/// What a page is asked: only its live part (`fragment`), after the store passes `index`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct PageQuery {
    #[serde(default)]
    fragment: Option<u8>,
    index: Option<u64>,
    wait: Option<String>,
    group: Option<String>,
}

/// A page's content for a signed-in viewer.
struct Content {
    title: String,
    section: Section,
    live: String,
    fixed: String,
}

/// Serves a page: the sign-in form without a session (401 for the script's refreshes), else
/// the content `make` renders for the token, whole or only its live part.
async fn serve(
    shared: Shared,
    headers: HeaderMap,
    q: PageQuery,
    path: String,
    make: impl FnOnce(&Shared, &Actor, Millis) -> ApiResult<Content>,
) -> ApiResult<Response> {
    let Some((session, actor)) = session_of(&shared, &headers)? else {
        if q.fragment.is_some() {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "the session has ended: sign in again"));
        }
        return Ok(see_other("/ui/login"));
    };
    let index = wait_for(&shared, &WaitQuery { index: q.index, wait: q.wait.clone() }).await?;
    let content = match make(&shared, &actor, now_ms()) {
        Ok(c) => c,
        Err(e) if q.fragment.is_none() => Content {
            title: "Not shown".into(),
            section: Section::Overview,
            live: berth_console::notice(e.message()),
            fixed: String::new(),
        },
        Err(e) => return Err(e),
    };
    let mut resp = if q.fragment.is_some() {
        html(StatusCode::OK, content.live)
    } else {
        let viewer = Viewer { name: actor.name.clone(), role: actor.role.to_string(), csrf: session.csrf };
        let page = Page {
            title: content.title,
            section: content.section,
            path,
            index,
            live: content.live,
            fixed: content.fixed,
        };
        html(StatusCode::OK, page.render(&viewer))
    };
    if let Ok(v) = HeaderValue::from_str(&index.to_string()) {
        resp.headers_mut().insert(berth_api::INDEX_HEADER, v);
    }
    resp.extensions_mut().insert(actor);
    Ok(resp)
}

/// The event number from which events are at most `ago` ms old: events are numbered from
/// their time in microseconds.
fn events_since(now: Millis, ago: Millis) -> u64 {
    u64::try_from(now - ago).unwrap_or(0).saturating_mul(1000)
}

fn may(actor: &Actor, need: Need, group: &str) -> bool {
    actor.grant().allows(need, Scope::Group(group)).is_ok()
}

fn refused(actor: &Actor, what: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, format!("token {} ({}) may not see {what}", actor.id, actor.name))
}

pub(super) async fn overview(
    AxState(shared): AxState<Shared>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    serve(shared, headers, q, "/ui/".into(), |shared, actor, now| {
        let pools = super::pools::views(shared)?;
        let nodes = super::nodes::node_views(shared, shared.state.nodes()?.into_iter().map(|n| n.value).collect())?;
        let apps = super::apps::visible(shared, actor)?;
        let alerts = super::alerts::visible(shared, actor).firing;
        let events = super::events::visible(shared, actor, events_since(now, 24 * 3600 * 1000), 10_000)?;
        let events = &events[events.len().saturating_sub(15)..];
        let live = berth_console::overview(&berth_console::Overview {
            pools: &pools,
            nodes: &nodes,
            apps: &apps,
            alerts: &alerts,
            events,
            now,
        });
        Ok(Content { title: "Overview".into(), section: Section::Overview, live, fixed: String::new() })
    })
    .await
}

pub(super) async fn apps(
    AxState(shared): AxState<Shared>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    let group = q.group.clone().filter(|g| !g.is_empty());
    let path = match &group {
        Some(g) => format!("/ui/apps?group={g}"),
        None => "/ui/apps".into(),
    };
    serve(shared, headers, q, path, move |shared, actor, _| {
        let list = super::apps::visible(shared, actor)?;
        let live = berth_console::apps(&list, group.as_deref());
        Ok(Content { title: "Apps".into(), section: Section::Apps, live, fixed: String::new() })
    })
    .await
}

pub(super) async fn app(
    AxState(shared): AxState<Shared>,
    headers: HeaderMap,
    Path((group, name)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    let id = format!("{group}/{name}");
    let path = format!("/ui/apps/{id}");
    serve(shared, headers, q, path, move |shared, actor, now| {
        if !may(actor, Need::Read, &group) {
            return Err(refused(actor, &format!("group {group}")));
        }
        let status = super::apps::status_of(shared, &id)?;
        let versions = shared.state.versions(&id)?;
        let charts = charts(shared, &id, now);
        let change = may(actor, Need::Change, &group);
        let live = berth_console::app(&status, &versions, change, charts, now);
        let instances = status.instances.iter().map(|v| v.instance.id.clone()).collect();
        let rules = shared.state.record::<berth_api::RuleScript>(&rules_key("app", &id))?.map(|r| r.value.source);
        let mut fixed =
            berth_console::rules_panel(&format!("/v1/apps/{id}/rules"), rules.as_deref().unwrap_or(""), change);
        fixed.push_str(&berth_console::logs_panel(&format!("/v1/apps/{id}/logs"), instances));
        Ok(Content { title: id.clone(), section: Section::Apps, live, fixed })
    })
    .await
}

/// The app's last hour as charts: cpu and memory a line per instance, from the agents' samples;
/// requests, latency and network for the app, from the routers' reports and the samples.
fn charts(shared: &Shared, app: &str, now: Millis) -> String {
    use berth_console::{Series, chart};
    let from = now - 3600 * 1000;
    let history = shared.usage.history(app, from);
    let series = |value: &dyn Fn(&berth_api::UsagePoint) -> f64| -> Vec<Series> {
        history
            .iter()
            .map(|h| Series { label: h.instance.clone(), points: h.points.iter().map(|p| (p.t, value(p))).collect() })
            .collect()
    };
    let no_samples = "No samples yet: agents send them every few seconds.";
    let cpu = chart("cpu", "% of a core", no_samples, &series(&|p| p.cpu_percent), from, now);
    let memory = chart("memory", "MiB", no_samples, &series(&|p| p.memory_bytes as f64 / 1048576.0), from, now);
    let traffic = shared.traffic.history(app, from);
    let step = traffic.step_ms;
    // Steps left out held nothing: from the first step on, the charts of counts show them as zero.
    let dense: Vec<berth_api::TrafficStep> = match traffic.steps.first() {
        None => Vec::new(),
        Some(first) => {
            let mut steps = traffic.steps.iter().peekable();
            (first.t..=now)
                .step_by(step.max(1) as usize)
                .map(|t| match steps.next_if(|s| s.t == t) {
                    Some(s) => s.clone(),
                    None => berth_api::TrafficStep { t, ..Default::default() },
                })
                .collect()
        }
    };
    // Each step as a rate over the time it covered: the current one has not ended yet.
    let seconds = |t: Millis| (step.min(now - t).max(1000)) as f64 / 1000.0;
    let line = |label: &str, value: &dyn Fn(&berth_api::TrafficStep) -> Option<f64>| Series {
        label: label.into(),
        points: dense.iter().filter_map(|s| value(s).map(|v| ((s.t + step).min(now), v))).collect(),
    };
    let none = |s: &[Series]| s.iter().all(|s| s.points.iter().all(|p| p.1 == 0.0));
    let mut requests = vec![
        line("all", &|s| Some(s.requests as f64 / seconds(s.t))),
        line("5xx", &|s| Some(s.errors as f64 / seconds(s.t))),
    ];
    let mut network = vec![
        line("received", &|s| Some(s.net_rx_bytes as f64 / 1024.0 / seconds(s.t))),
        line("sent", &|s| Some(s.net_tx_bytes as f64 / 1024.0 / seconds(s.t))),
    ];
    // All zero is nothing to draw: the chart says so instead of a flat line.
    for series in [&mut requests, &mut network] {
        if none(series) {
            series.iter_mut().for_each(|s| s.points.clear());
        }
    }
    let no_requests = "No requests through the routers in the last hour.";
    let requests = chart("requests", "per second", no_requests, &requests, from, now);
    let latency = chart(
        "latency",
        "ms",
        no_requests,
        &[line("mean", &|s| s.latency_mean_ms), line("p95", &|s| s.latency_p95_ms)],
        from,
        now,
    );
    let network = chart("network", "KiB/s", "No network use counted in the last hour.", &network, from, now);
    format!("{cpu}{memory}{requests}{latency}{network}")
}

pub(super) async fn nodes(
    AxState(shared): AxState<Shared>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    serve(shared, headers, q, "/ui/nodes".into(), |shared, _, now| {
        let list = super::nodes::node_views(shared, shared.state.nodes()?.into_iter().map(|n| n.value).collect())?;
        Ok(Content {
            title: "Nodes".into(),
            section: Section::Nodes,
            live: berth_console::nodes(&list, now),
            fixed: String::new(),
        })
    })
    .await
}

pub(super) async fn node(
    AxState(shared): AxState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    let path = format!("/ui/nodes/{id}");
    serve(shared, headers, q, path, move |shared, actor, now| {
        // As `GET /v1/nodes/{id}`: what runs on a node belongs to every group.
        if actor.grant().allows(Need::Read, Scope::Every).is_err() {
            return Err(refused(actor, "a node's instances (they belong to every group)"));
        }
        let node = super::nodes::find_node(shared, &id)?.value;
        let title = format!("Node {}", node.hostname);
        let detail = super::nodes::detail(shared, node)?;
        let can_change = actor.grant().allows(Need::Admin, Scope::Any).is_ok();
        Ok(Content {
            title,
            section: Section::Nodes,
            live: berth_console::node(&detail, can_change, now),
            fixed: String::new(),
        })
    })
    .await
}

pub(super) async fn jobs(
    AxState(shared): AxState<Shared>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    serve(shared, headers, q, "/ui/jobs".into(), |shared, actor, now| {
        let list = super::jobs::visible(shared, actor)?;
        Ok(Content {
            title: "Jobs".into(),
            section: Section::Jobs,
            live: berth_console::jobs(&list, now),
            fixed: String::new(),
        })
    })
    .await
}

pub(super) async fn job(
    AxState(shared): AxState<Shared>,
    headers: HeaderMap,
    Path((group, name)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    let id = format!("{group}/{name}");
    let path = format!("/ui/jobs/{id}");
    serve(shared, headers, q, path, move |shared, actor, now| {
        if !may(actor, Need::Read, &group) {
            return Err(refused(actor, &format!("group {group}")));
        }
        let status = super::jobs::status_of(shared, &id)?;
        let live = berth_console::job(&status, may(actor, Need::Change, &group), now);
        let fixed = berth_console::logs_panel(&format!("/v1/jobs/{id}/logs"), Vec::new());
        Ok(Content { title: id.clone(), section: Section::Jobs, live, fixed })
    })
    .await
}

pub(super) async fn events(
    AxState(shared): AxState<Shared>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    serve(shared, headers, q, "/ui/events".into(), |shared, actor, now| {
        let events = super::events::visible(shared, actor, events_since(now, 24 * 3600 * 1000), 10_000)?;
        let events = &events[events.len().saturating_sub(200)..];
        let alerts = super::alerts::visible(shared, actor);
        let live = berth_console::events(events, &alerts.firing, &alerts.recent, now);
        Ok(Content { title: "Events and alerts".into(), section: Section::Events, live, fixed: String::new() })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; berth_session=abc; b=2"));
        assert_eq!(cookie(&headers), Some("abc"));
        headers.insert(header::COOKIE, HeaderValue::from_static("berth_session="));
        assert_eq!(cookie(&headers), None);
    }
}
