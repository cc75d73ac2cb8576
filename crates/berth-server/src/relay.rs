//! A server that does not lead hands every request to the one that does, and its answer back:
//! agents, routers and people may talk to any server. Bodies stream both ways (blocking reads
//! wait at the leader), and an upgraded connection (`exec`) is joined end to end.

use axum::extract::{Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Shared;
use crate::http::error_response;

/// Set on a relayed request, naming the server that relayed it: a server that does not lead
/// either answers 503 rather than relaying it again.
pub(crate) const RELAYED: &str = "x-berth-relayed-by";

/// The address of the client a relayed request came from (`IP:PORT`), with `PROOF`.
pub(crate) const FORWARDED_FOR: &str = "x-forwarded-for";
/// That the relaying server holds the servers' shared key: HMAC of its id and the client.
pub(crate) const PROOF: &str = "x-berth-relay-proof";

/// Who sent a request: its peer, or, for a request a server proved it relayed, the client that
/// server had, and that server's id.
pub(crate) fn client_of(
    shared: &Shared,
    headers: &HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> (Option<std::net::SocketAddr>, Option<String>) {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let (Some(by), Some(client), Some(proof)) = (text(RELAYED), text(FORWARDED_FOR), text(PROOF))
        && shared.secrets.relay_proven(by, client, proof)
        && let Ok(client) = client.parse()
    {
        return (Some(client), Some(by.to_string()));
    }
    (peer, None)
}

/// What every server answers itself.
fn local(path: &str) -> bool {
    matches!(path, "/v1/health" | "/v1/cluster")
}

pub(crate) async fn to_leader(AxState(shared): AxState<Shared>, req: Request, next: Next) -> Response {
    if shared.cluster.alone() || local(req.uri().path()) || shared.cluster.leads(&shared) {
        return next.run(req).await;
    }
    // Retry-After: the request was not looked at, and a leader is a few seconds away; clients
    // send it again by themselves.
    let unavailable = |why: String| {
        let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, why);
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    };
    if let Some(by) = req.headers().get(RELAYED) {
        let by = String::from_utf8_lossy(by.as_bytes()).into_owned();
        return unavailable(format!("relayed by {by}, but this server does not lead either; retry shortly"));
    }
    let leader = match shared.cluster.leader(&shared) {
        Ok(Some(leader)) if leader.id != shared.cluster.id => leader,
        // No one leads (an election, or the store without a quorum): reads answer from what this
        // server last saw of the store; changes wait for a leader.
        _ if req.method() == Method::GET || req.method() == Method::HEAD => return next.run(req).await,
        _ => {
            return unavailable(format!(
                "no server leads now: an election is under way, or the store {} is unavailable; retry shortly",
                shared.cluster.store
            ));
        }
    };
    match relay(&shared, &leader.api, req).await {
        Ok(response) => response,
        Err(e) => error_response(
            StatusCode::BAD_GATEWAY,
            format!("the leader {} at {} did not answer: {e}; retry shortly", leader.id, leader.api),
        ),
    }
}

/// Headers of one hop only: not passed on (RFC 9110, 7.6.1).
fn hop_by_hop(name: &header::HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::TRAILER
        || name == header::HOST
        || name == header::CONTENT_LENGTH
        || name == header::PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
}

fn passed_on(headers: &HeaderMap) -> HeaderMap {
    headers.iter().filter(|(name, _)| !hop_by_hop(name)).map(|(n, v)| (n.clone(), v.clone())).collect()
}

async fn relay(shared: &Shared, api: &str, mut req: Request) -> Result<Response, reqwest::Error> {
    let upgrading = req.headers().contains_key(header::UPGRADE);
    let on_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", api.trim_end_matches('/'));
    let mut headers = passed_on(req.headers());
    // Who the client is, for the leader's audit log and its limit on refusals: proven, or not
    // believed.
    let peer = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0);
    let (client, _) = client_of(shared, req.headers(), peer);
    headers.remove(FORWARDED_FOR);
    headers.remove(PROOF);
    if let (Ok(me), Some(client)) = (HeaderValue::from_str(&shared.cluster.id), client) {
        let proof = shared.secrets.relay_proof(&shared.cluster.id, &client.to_string());
        headers.insert(RELAYED, me);
        if let (Ok(client), Ok(proof)) = (HeaderValue::from_str(&client.to_string()), HeaderValue::from_str(&proof)) {
            headers.insert(FORWARDED_FOR, client);
            headers.insert(PROOF, proof);
        }
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let method = req.method().clone();
    let body = reqwest::Body::wrap_stream(req.into_body().into_data_stream());
    let answer = shared.relay.request(method, url).headers(headers).body(body).send().await?;
    let status = answer.status();
    let mut out_headers = passed_on(answer.headers());
    if status == StatusCode::SWITCHING_PROTOCOLS
        && let Some(on_upgrade) = on_upgrade
    {
        out_headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        tokio::spawn(async move {
            let (Ok(theirs), Ok(ours)) = (answer.upgrade().await, on_upgrade.await) else { return };
            let mut ours = hyper_util::rt::TokioIo::new(ours);
            let mut theirs = theirs;
            let _ = tokio::io::copy_bidirectional(&mut ours, &mut theirs).await;
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        *response.headers_mut() = out_headers;
        return Ok(response);
    }
    let mut response = Response::new(axum::body::Body::from_stream(answer.bytes_stream()));
    *response.status_mut() = status;
    *response.headers_mut() = out_headers;
    Ok(response)
}
