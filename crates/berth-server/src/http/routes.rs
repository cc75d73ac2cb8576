//! What routers follow: `/v1/routes` (a blocking watch), static upstreams, rule scripts, router
//! reports and drains.

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use berth_api::{RuleOnError, RuleScript, RuleTarget, StaticUpstream, UpstreamRequest};
use std::collections::BTreeMap;

use berth_core::hosts::HostOwner;
use berth_core::{Desired, Level};
use berth_store::Txn;
use berth_store::state::{Subject, encode, rules_key, upstream_key};

use super::cas::{self, Attempt};
use super::error::{ApiError, ApiResult, WaitQuery, indexed, parse_json, wait_for};
use crate::routes::{ROUTER_SILENCE_MS, route_snapshot};
use crate::{Shared, now_ms};

use berth_api::MAX_RULE_SCRIPT as MAX_SCRIPT;

pub(crate) async fn routes(
    AxState(shared): AxState<Shared>,
    axum::extract::Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    let index = wait_for(&shared, &q).await?;
    let snapshot = route_snapshot(&shared)?;
    Ok(indexed(index.max(snapshot.index), &snapshot))
}

fn check_upstream_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("upstream name `{name}` must be a lowercase host name (it is the Host the router serves)"),
        ))
    }
}

pub(crate) async fn list_upstreams(AxState(shared): AxState<Shared>) -> ApiResult<Response> {
    let index = shared.state.store().revision();
    let all: Vec<StaticUpstream> = shared.state.records("upstreams/")?.into_iter().map(|v| v.value).collect();
    Ok(indexed(index, &all))
}

pub(crate) async fn put_upstream(
    AxState(shared): AxState<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    check_upstream_name(&name)?;
    let req: UpstreamRequest = parse_json(&body)?;
    if req.servers.is_empty() {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "servers: at least one server is needed"));
    }
    for (i, s) in req.servers.iter().enumerate() {
        if s.host.trim().is_empty() || s.host.contains(char::is_whitespace) || s.host.contains('/') {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("servers[{i}].host: `{}` is not a host", s.host),
            ));
        }
        if s.port == 0 {
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("servers[{i}].port: 0 is not a port")));
        }
        if !(1..=1000).contains(&s.weight) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("servers[{i}].weight: {} is not in 1..1000", s.weight),
            ));
        }
    }
    let now = now_ms();
    let upstream = StaticUpstream { name: name.clone(), servers: req.servers, balance: req.balance, updated_at: now };
    let servers: Vec<String> = upstream.servers.iter().map(|s| format!("{}:{}", s.host, s.port)).collect();
    let owner = HostOwner::Upstream(name.clone());
    let (index, ()) = cas::retry(&shared.state, &format!("host {name}"), || {
        let wanted = BTreeMap::from([(name.clone(), 0)]);
        let txn = match crate::hosts::claim(&shared.state, Txn::default(), &owner, &wanted, &shared.domain)? {
            Ok(txn) => txn,
            Err((_, conflict)) => return Err(ApiError::new(StatusCode::CONFLICT, conflict.to_string())),
        };
        let txn = txn.put(upstream_key(&name), encode(&upstream));
        let txn = shared.state.with_event(
            txn,
            now,
            Level::Info,
            "upstream.set",
            Subject::default(),
            format!("{name}: {}", servers.join(", ")),
        );
        Ok(Attempt::Write(txn, ()))
    })?;
    Ok(indexed(index, &upstream))
}

pub(crate) async fn delete_upstream(AxState(shared): AxState<Shared>, Path(name): Path<String>) -> ApiResult<Response> {
    if shared.state.record::<StaticUpstream>(&upstream_key(&name))?.is_none() {
        return Err(ApiError::not_found(&format!("upstream {name}")));
    }
    let txn = Txn::default().delete(upstream_key(&name)).delete(rules_key("upstream", &name));
    let txn = crate::hosts::release(&shared.state, txn, &HostOwner::Upstream(name.clone()))?;
    let txn = shared.state.with_event(txn, now_ms(), Level::Info, "upstream.deleted", Subject::default(), name.clone());
    let index = shared.state.commit(txn)?;
    Ok(indexed(index, &serde_json::json!({"deleted": name})))
}

fn target_key(shared: &Shared, target: &RuleTarget) -> ApiResult<String> {
    match target {
        RuleTarget::App(id) => {
            super::apps::existing(&shared.state, id)?;
            Ok(rules_key("app", id))
        }
        RuleTarget::Upstream(name) => {
            shared
                .state
                .record::<StaticUpstream>(&upstream_key(name))?
                .ok_or_else(|| ApiError::not_found(&format!("upstream {name}")))?;
            Ok(rules_key("upstream", name))
        }
    }
}

async fn get_rules(shared: Shared, target: RuleTarget) -> ApiResult<Response> {
    let key = target_key(&shared, &target)?;
    let script =
        shared.state.record::<RuleScript>(&key)?.ok_or_else(|| ApiError::not_found(&format!("rules for {target}")))?;
    Ok(indexed(shared.state.store().revision(), &script.value))
}

/// `?on_error=open|closed` on a PUT of rules.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct RulesQuery {
    on_error: Option<RuleOnError>,
}

async fn set_rules(shared: Shared, target: RuleTarget, query: RulesQuery, body: Bytes) -> ApiResult<Response> {
    let key = target_key(&shared, &target)?;
    if body.len() > MAX_SCRIPT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a script may be at most {MAX_SCRIPT} bytes"),
        ));
    }
    let source = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the script is not UTF-8"))?;
    if source.trim().is_empty() {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "the script is empty; delete the rules instead"));
    }
    // A refused script's error, at the field `script` and its line.
    let refuse = |what: String, e: berth_rules::RuleError| {
        let detail = berth_core::SpecError {
            file: None,
            line: e.line.map(u64::from),
            column: None,
            field: "script".into(),
            message: e.message.clone(),
            suggestion: None,
        };
        ApiError::invalid(format!("the script {what}: {}", e.message), vec![detail])
    };
    // Routers would refuse it and keep the previous script: refuse it here, where the writer hears.
    let compiled = berth_rules::Script::new(&source).map_err(|e| refuse("does not compile".into(), e))?;
    // Nor one that raises on a plain `GET /`: it would fail every such request.
    let host = match &target {
        RuleTarget::App(id) => {
            let (group, name) = id.split_once('/').unwrap_or(("", id));
            format!("{name}.{group}.{}", shared.domain)
        }
        RuleTarget::Upstream(name) => name.clone(),
    };
    berth_rules::try_on(&compiled, &berth_rules::TrialRequest::sample(&host))
        .map_err(|e| refuse(format!("fails on GET / to {host}"), e))?;
    // Not given, the policy stays what it was: updating a script does not quietly reopen it.
    let on_error = match query.on_error {
        Some(o) => o,
        None => shared.state.record::<RuleScript>(&key)?.map(|r| r.value.on_error).unwrap_or_default(),
    };
    let now = now_ms();
    let script = RuleScript { target: target.clone(), source, updated_at: now, on_error };
    let subject = match &target {
        RuleTarget::App(id) => Subject::app(id),
        RuleTarget::Upstream(_) => Subject::default(),
    };
    let txn = Txn::default().put(key, encode(&script));
    let txn = shared.state.with_event(
        txn,
        now,
        Level::Info,
        "rules.set",
        subject,
        format!("rules for {target} set ({} bytes, on_error {})", script.source.len(), on_error.as_str()),
    );
    let index = shared.state.commit(txn)?;
    Ok(indexed(index, &script))
}

async fn delete_rules(shared: Shared, target: RuleTarget) -> ApiResult<Response> {
    let key = target_key(&shared, &target)?;
    if shared.state.record::<RuleScript>(&key)?.is_none() {
        return Err(ApiError::not_found(&format!("rules for {target}")));
    }
    let txn = shared.state.with_event(
        Txn::default().delete(key),
        now_ms(),
        Level::Info,
        "rules.deleted",
        Subject::default(),
        format!("rules for {target} removed"),
    );
    let index = shared.state.commit(txn)?;
    Ok(indexed(index, &serde_json::json!({"deleted": target.to_string()})))
}

pub(crate) async fn get_app_rules(
    AxState(s): AxState<Shared>,
    Path((g, n)): Path<(String, String)>,
) -> ApiResult<Response> {
    get_rules(s, RuleTarget::App(format!("{g}/{n}"))).await
}

pub(crate) async fn set_app_rules(
    AxState(s): AxState<Shared>,
    Path((g, n)): Path<(String, String)>,
    Query(q): Query<RulesQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    set_rules(s, RuleTarget::App(format!("{g}/{n}")), q, body).await
}

pub(crate) async fn delete_app_rules(
    AxState(s): AxState<Shared>,
    Path((g, n)): Path<(String, String)>,
) -> ApiResult<Response> {
    delete_rules(s, RuleTarget::App(format!("{g}/{n}"))).await
}

pub(crate) async fn get_upstream_rules(AxState(s): AxState<Shared>, Path(name): Path<String>) -> ApiResult<Response> {
    get_rules(s, RuleTarget::Upstream(name)).await
}

pub(crate) async fn set_upstream_rules(
    AxState(s): AxState<Shared>,
    Path(name): Path<String>,
    Query(q): Query<RulesQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    set_rules(s, RuleTarget::Upstream(name), q, body).await
}

pub(crate) async fn delete_upstream_rules(
    AxState(s): AxState<Shared>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    delete_rules(s, RuleTarget::Upstream(name)).await
}

pub(crate) async fn router_report(
    AxState(shared): AxState<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let report: berth_api::RouterReport = parse_json(&body)?;
    let now = now_ms();
    let mut routers = crate::lock(&shared.routers);
    routers.retain(|_, (at, _)| now - *at < ROUTER_SILENCE_MS * 30);
    // What each app's traffic grew by since this router's report before.
    shared.traffic.router_report(routers.get(&id).map(|(_, r)| &r.requests), &report.requests, now);
    routers.insert(id, (now, report));
    drop(routers);
    Ok(indexed(shared.state.store().revision(), &serde_json::json!({"ok": true})))
}

pub(crate) async fn list_routers(AxState(shared): AxState<Shared>) -> ApiResult<Response> {
    let now = now_ms();
    let routers: Vec<berth_api::RouterView> = crate::lock(&shared.routers)
        .iter()
        .map(|(id, (at, r))| berth_api::RouterView {
            id: id.clone(),
            zone: r.zone.clone(),
            admin: r.admin.clone(),
            index: r.index,
            seen_ms_ago: now - at,
            live: now - at < ROUTER_SILENCE_MS,
            in_flight: r.in_flight.clone(),
        })
        .collect();
    Ok(indexed(shared.state.store().revision(), &routers))
}

/// `DELETE /v1/routers/{id}` (`berth router rm`): the router's credential is revoked, so it is
/// refused from then on and its process exits; it is forgotten by drains and deploys at once.
pub(crate) async fn remove_router(AxState(shared): AxState<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    use super::credentials::{Credential, Revoked, credential_key, revoked_key};
    let (index, ()) = cas::retry(&shared.state, &format!("router {id}"), || {
        let key = credential_key(&id);
        let current = shared
            .state
            .record::<Credential>(&key)?
            .filter(|c| c.value.kind == berth_api::Member::Router)
            .ok_or_else(|| ApiError::not_found(&format!("router {id} (berth router ls names them)")))?;
        let now = now_ms();
        let txn = Txn::default()
            .expect(key.clone(), current.mod_revision)
            .delete(key)
            .put(revoked_key(&id), encode(&Revoked { at: now }));
        let msg = format!("router {id} removed and its credential revoked");
        let txn = shared.state.with_event(txn, now, Level::Warn, "router.removed", Subject::default(), msg);
        Ok(Attempt::Write(txn, ()))
    })?;
    crate::lock(&shared.routers).remove(&id);
    Ok(indexed(index, &serde_json::json!({"id": id, "revoked": true})))
}

/// Drained when every live router has applied the table in which the instance is stopping and has
/// nothing in flight to it. Right after a server start, routers are given time to report first.
pub(crate) async fn drain_status(AxState(shared): AxState<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let record = shared.state.instance(&id)?.ok_or_else(|| ApiError::not_found(&format!("instance {id}")))?;
    let now = now_ms();
    let stopping = record.value.desired == Desired::Stop || record.value.state.is_terminal();
    let mut waiting_for = Vec::new();
    let mut in_flight = 0;
    let routers = crate::lock(&shared.routers);
    let live: Vec<_> = routers.iter().filter(|(_, (at, _))| now - *at < ROUTER_SILENCE_MS).collect();
    if !stopping {
        waiting_for.push("the instance is not being stopped".to_string());
    }
    if live.is_empty() && now - shared.started_at < ROUTER_SILENCE_MS {
        waiting_for.push("the server just started; waiting for routers to report".to_string());
    }
    for (router, (_, report)) in &live {
        if report.index < record.mod_revision {
            waiting_for.push(format!("router {router} has not applied index {} yet", record.mod_revision));
        } else if let Some(n) = report.in_flight.get(&id).filter(|n| **n > 0) {
            in_flight += n;
            waiting_for.push(format!("router {router} has {n} request(s) in flight"));
        }
    }
    let status = berth_api::DrainStatus {
        instance: id,
        drained: waiting_for.is_empty(),
        in_flight,
        routers: live.len(),
        waiting_for,
    };
    drop(routers);
    Ok(indexed(shared.state.store().revision(), &status))
}
