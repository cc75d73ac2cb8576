//! The server's HTTP layer: the `/v1` route table and one file of handlers per resource. The
//! domain modules beside it (store records, deployments, logs, usage, alerts, routes, exec) know
//! nothing of HTTP; handlers read and write through them.

mod alerts;
mod apps;
pub(crate) mod audit;
mod cas;
mod console;
pub(crate) mod credentials;
mod error;
mod events;
mod exec;
mod groups;
mod instances;
mod jobs;
mod logs;
mod nodes;
mod pools;
mod routes;
mod secrets;
pub(crate) mod tokens;
mod usage;

use axum::Router;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post, put};

use berth_api::Member;

use crate::Shared;
use error::{ApiError, ApiResult, indexed, json_errors};

pub(crate) fn router(shared: Shared) -> Router {
    // What only agents call takes an agent's own credential, acting as the node in the path.
    let agent = axum::middleware::from_fn_with_state((shared.clone(), Member::Agent), credentials::members_only);
    let router = axum::middleware::from_fn_with_state((shared.clone(), Member::Router), credentials::members_only);
    Router::new()
        .route("/ui", get(|| async { axum::response::Redirect::to("/ui/") }))
        .route("/ui/", get(console::overview))
        .route("/ui/login", get(console::login_page).post(console::login))
        .route("/ui/logout", post(console::logout))
        .route("/ui/apps", get(console::apps))
        .route("/ui/apps/{group}/{name}", get(console::app))
        .route("/ui/nodes", get(console::nodes))
        .route("/ui/nodes/{id}", get(console::node))
        .route("/ui/jobs", get(console::jobs))
        .route("/ui/jobs/{group}/{name}", get(console::job))
        .route("/ui/events", get(console::events))
        .route("/ui/assets/{*path}", get(console::asset))
        .route("/v1/join", post(credentials::join))
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/v1/health", get(health))
        .route("/v1/cluster", get(cluster))
        .route("/v1/store/export", get(export_store))
        .route("/v1/apps", get(apps::list_apps))
        .route("/v1/plan", post(apps::plan))
        .route("/v1/apps/{group}/{name}", get(apps::get_app).put(apps::deploy).delete(apps::destroy))
        .route("/v1/apps/{group}/{name}/scale", post(apps::scale))
        .route("/v1/apps/{group}/{name}/upgrade", post(apps::upgrade))
        .route("/v1/apps/{group}/{name}/restart", post(apps::restart))
        .route("/v1/apps/{group}/{name}/rollback", post(apps::rollback))
        .route("/v1/apps/{group}/{name}/promote", post(apps::promote))
        .route("/v1/apps/{group}/{name}/versions", get(apps::versions))
        .route("/v1/apps/{group}/{name}/logs", get(logs::query))
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/jobs/{group}/{name}", get(jobs::get).put(jobs::deploy).delete(jobs::destroy))
        .route("/v1/jobs/{group}/{name}/run", post(jobs::run_now))
        .route("/v1/jobs/{group}/{name}/suspend", post(jobs::suspend))
        .route("/v1/jobs/{group}/{name}/resume", post(jobs::resume))
        .route("/v1/jobs/{group}/{name}/logs", get(logs::job_query))
        .route("/v1/logs/sinks", get(logs::sinks))
        .route("/v1/usage", get(usage::all))
        .route("/v1/alerts", get(alerts::list))
        .route("/v1/outputs", get(logs::outputs))
        .route("/v1/apps/{group}/{name}/usage", get(usage::one_app))
        .route("/v1/apps/{group}/{name}/usage/history", get(usage::history))
        .route("/v1/apps/{group}/{name}/traffic", get(usage::traffic))
        .route("/v1/nodes/{id}/metrics", post(usage::ingest).route_layer(agent.clone()))
        .route("/metrics", get(usage::prometheus))
        .route(
            "/v1/nodes/{id}/logs",
            post(logs::ingest).layer(axum::extract::DefaultBodyLimit::max(16 << 20)).route_layer(agent.clone()),
        )
        .route("/v1/instances", get(instances::list_instances))
        .route("/v1/instances/{id}/restart", post(instances::restart_instance))
        .route("/v1/instances/{id}/stop", post(instances::stop_instance))
        .route("/v1/instances/{id}/exec", post(exec::run))
        .route("/v1/nodes/{id}/execs", get(exec::take).route_layer(agent.clone()))
        .route("/v1/nodes/{id}/execs/{exec}", post(exec::answer).route_layer(agent.clone()))
        .route("/v1/nodes/{id}/execs/{exec}/stream", post(exec::attach).route_layer(agent.clone()))
        .route("/v1/instances/{id}/drain", get(routes::drain_status))
        .route("/v1/routers", get(routes::list_routers))
        .route(
            "/v1/routers/{id}",
            post(routes::router_report).route_layer(router.clone()).delete(routes::remove_router),
        )
        .route("/v1/nodes", get(nodes::list_nodes).merge(post(nodes::register).route_layer(agent.clone())))
        .route("/v1/nodes/{id}", get(nodes::node_detail).delete(nodes::remove))
        .route("/v1/pools", get(pools::list))
        .route("/v1/groups", get(groups::list).post(groups::create))
        .route("/v1/groups/{group}", put(groups::set))
        .route("/v1/pools/groups/{group}", put(pools::set_group))
        .route("/v1/pools/{pool}", put(pools::set_pool))
        .route("/v1/nodes/{id}/drain", post(nodes::drain))
        .route("/v1/nodes/{id}/eligibility", post(nodes::eligibility))
        .route("/v1/nodes/{id}/heartbeat", post(nodes::heartbeat).route_layer(agent.clone()))
        .route("/v1/nodes/{id}/assignments", get(nodes::assignments).route_layer(agent.clone()))
        .route("/v1/nodes/{id}/instances/{instance}/secrets", get(secrets::for_instance).route_layer(agent.clone()))
        .route("/v1/secrets", get(secrets::list))
        .route("/v1/audit", get(audit::list))
        .route("/v1/secrets/{group}/{name}", put(secrets::set).delete(secrets::delete))
        .route("/v1/nodes/{id}/reports", post(nodes::reports).route_layer(agent))
        .route("/v1/events", get(events::events))
        .route("/v1/routes", get(routes::routes).route_layer(router))
        .route("/v1/upstreams", get(routes::list_upstreams))
        .route("/v1/upstreams/{name}", axum::routing::put(routes::put_upstream).delete(routes::delete_upstream))
        .route(
            "/v1/upstreams/{name}/rules",
            get(routes::get_upstream_rules).put(routes::set_upstream_rules).delete(routes::delete_upstream_rules),
        )
        .route(
            "/v1/apps/{group}/{name}/rules",
            get(routes::get_app_rules).put(routes::set_app_rules).delete(routes::delete_app_rules),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see docs/openapi.yaml") })
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), tokens::authenticate))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), audit::record))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), count_requests))
        // Outermost: a server that does not lead hands the request on whole, unread.
        .layer(axum::middleware::from_fn_with_state(shared.clone(), crate::relay::to_leader))
        .with_state(shared)
}

/// An error answer in the API's JSON shape, for layers outside the handlers.
pub(crate) fn error_response(status: StatusCode, message: String) -> Response {
    axum::response::IntoResponse::into_response(ApiError::new(status, message))
}

/// `GET /v1/store/export`: every record, for `berth store import` into another store.
async fn export_store(AxState(shared): AxState<Shared>) -> ApiResult<axum::Json<berth_store::transfer::Export>> {
    Ok(axum::Json(berth_store::transfer::export(&**shared.state.store())?))
}

/// `GET /v1/cluster`: the servers sharing the store and the leader, from any of them.
async fn cluster(AxState(shared): AxState<Shared>) -> ApiResult<axum::Json<berth_api::ClusterView>> {
    Ok(axum::Json(shared.cluster.view(&shared).await?))
}

/// Counts every answer by method, route template and status class, for `/metrics`.
async fn count_requests(
    AxState(shared): AxState<Shared>,
    route: Option<axum::extract::MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().clone();
    let response = next.run(req).await;
    let class = response.status().as_u16() / 100;
    let route = route.as_ref().map_or("unmatched", |r| r.as_str());
    let mut counts = crate::lock(&shared.requests);
    let by_route = match counts.get_mut(route) {
        Some(found) => found,
        None => counts.entry(route.to_string()).or_default(),
    };
    *by_route.entry((method, class)).or_default() += 1;
    response
}

async fn health(AxState(shared): AxState<Shared>) -> Response {
    let revision = shared.state.store().revision();
    indexed(revision, &serde_json::json!({"status": "ok", "revision": revision}))
}

#[cfg(test)]
mod tests;

/// Every request body the API parses, read from `body` as each would be: strict JSON into each
/// body type, a deploy as YAML and as JSON, each spec checked. For fuzzing: none may panic.
/// Returns how many read it as theirs.
pub(crate) fn parse_every_body(body: &[u8]) -> usize {
    use error::parse_json;
    let bytes = axum::body::Bytes::copy_from_slice(body);
    let parsed = [
        parse_json::<berth_api::ScaleRequest>(&bytes).is_ok(),
        parse_json::<berth_api::UpgradeRequest>(&bytes).is_ok(),
        parse_json::<berth_api::DrainRequest>(&bytes).is_ok(),
        parse_json::<berth_api::EligibilityRequest>(&bytes).is_ok(),
        parse_json::<berth_api::GroupPoolsRequest>(&bytes).is_ok(),
        parse_json::<berth_api::PoolSettingsRequest>(&bytes).is_ok(),
        parse_json::<berth_api::UpstreamRequest>(&bytes).is_ok(),
        parse_json::<berth_api::GroupRequest>(&bytes).is_ok(),
        parse_json::<berth_api::TokenRequest>(&bytes).is_ok(),
        parse_json::<berth_api::SecretRequest>(&bytes).is_ok(),
        parse_json::<berth_api::JoinRequest>(&bytes).is_ok(),
        parse_json::<berth_api::RegisterRequest>(&bytes).is_ok(),
        parse_json::<berth_api::HeartbeatRequest>(&bytes).is_ok(),
        parse_json::<berth_api::ReportRequest>(&bytes).is_ok(),
        parse_json::<berth_api::LogBatch>(&bytes).is_ok(),
        parse_json::<berth_api::MetricsReport>(&bytes).is_ok(),
        parse_json::<berth_api::ExecRequest>(&bytes).is_ok(),
    ];
    let mut count = parsed.iter().filter(|ok| **ok).count();
    for content_type in ["application/yaml", "application/json"] {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static(content_type));
        count += usize::from(apps::spec_of_body(&headers, &bytes).is_ok());
    }
    count
}
