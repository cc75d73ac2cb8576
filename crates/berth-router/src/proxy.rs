//! The request path: Host -> cluster -> rules -> pick -> forward, with bounded retries on
//! another server when a connect fails or an idempotent request fails before any response.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

use berth_core::spec::{Balance, HashOn};

use crate::balance;
use crate::metrics::ClusterMetrics;
use crate::rules::{self, Action, RequestView};
use crate::table::{Cluster, ServerState, Table, now_ms};

pub type Body = BoxBody<Bytes, hyper::Error>;

/// Largest request body the router buffers (so a failed try can be retried elsewhere).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Most servers one request is tried on.
const MAX_TRIES: usize = 3;
/// Retries stop once a request has been going this long.
const RETRY_BUDGET: Duration = Duration::from_secs(5);
/// Longest wait for an upstream's response headers.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// What every worker thread shares: the table and the access log. Each worker has its own
/// upstream connection pool (see [`upstream_client`]).
pub struct Proxy {
    pub table: ArcSwap<Table>,
    access: Option<mpsc::Sender<String>>,
    pub access_drops: AtomicU64,
}

pub type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive pool to upstreams, for the worker thread it is created on.
pub fn upstream_client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .retry_canceled_requests(true)
        .build(connector)
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed()
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The request's host, lowercased, without port.
fn host_of<B>(req: &Request<B>) -> Option<String> {
    let raw = req.uri().host().map(str::to_string).or_else(|| {
        let h = req.headers().get(header::HOST)?.to_str().ok()?;
        Some(match h.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_string(),
            _ => h.to_string(),
        })
    })?;
    Some(raw.trim_end_matches('.').to_ascii_lowercase())
}

/// The request's key for a hashing cluster: a header, a cookie, or the client's address.
fn hash_key(cluster: &Cluster, headers: &HeaderMap, remote: SocketAddr) -> Option<String> {
    let Balance::Hash(on) = &cluster.balance else {
        return None;
    };
    match on {
        HashOn::Header(name) => headers.get(name.as_str()).and_then(|v| v.to_str().ok()).map(str::to_string),
        HashOn::Cookie(name) => {
            headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
                line.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then(|| v.to_string())
                })
            })
        }
        HashOn::ClientIp => Some(remote.ip().to_string()),
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// The client's address as a header value, formatted on the stack.
fn ip_header(ip: std::net::IpAddr) -> Option<HeaderValue> {
    use std::io::Write;
    let mut buf = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    write!(cursor, "{ip}").ok()?;
    let n = cursor.position() as usize;
    HeaderValue::from_bytes(&buf[..n]).ok()
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none: look once before removing anything.
    if !headers.keys().any(|k| is_hop_by_hop(k) || k == header::CONNECTION) {
        return;
    }
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Counts a request in flight on its server and cluster until dropped (when the body ends).
struct InFlight {
    server: Arc<ServerState>,
    metrics: Arc<ClusterMetrics>,
}

impl InFlight {
    fn new(server: Arc<ServerState>, metrics: Arc<ClusterMetrics>) -> Self {
        server.in_flight.fetch_add(1, Ordering::Relaxed);
        server.requests.fetch_add(1, Ordering::Relaxed);
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { server, metrics }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.server.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream body that keeps its request counted in flight until it is done.
struct Tracked {
    inner: Incoming,
    _guard: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

struct Log<'a> {
    remote: SocketAddr,
    method: &'a Method,
    host: &'a str,
    path: &'a str,
    cluster: Option<&'a str>,
}

impl Proxy {
    pub fn new(access: Option<mpsc::Sender<String>>) -> Proxy {
        Proxy { table: ArcSwap::from_pointee(Table::default()), access, access_drops: AtomicU64::new(0) }
    }

    fn log(&self, l: &Log<'_>, status: u16, started: Instant, upstream: Option<&str>, tries: usize) {
        let Some(tx) = &self.access else { return };
        let line = serde_json::json!({
            "ts": now_ms(),
            "remote": l.remote.to_string(),
            "method": l.method.as_str(),
            "host": l.host,
            "path": l.path,
            "status": status,
            "ms": started.elapsed().as_secs_f64() * 1000.0,
            "cluster": l.cluster,
            "upstream": upstream,
            "tries": tries,
        });
        // A slow disk must not slow requests: drop and count instead.
        if tx.try_send(line.to_string()).is_err() {
            self.access_drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        client: UpstreamClient,
        req: Request<Incoming>,
        remote: SocketAddr,
        https: bool,
    ) -> Result<Response<Body>, Infallible> {
        let started = Instant::now();
        let table = self.table.load_full();
        let method = req.method().clone();
        // A Uri clone shares its bytes: the path is borrowed from it, not copied.
        let uri = req.uri().clone();
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let Some(host) = host_of(&req) else {
            return Ok(json(StatusCode::BAD_REQUEST, serde_json::json!({"error": "no Host header"})));
        };
        let mut log = Log { remote, method: &method, host: &host, path, cluster: None };
        let Some(mut cluster) = table.lookup(&host).cloned() else {
            self.log(&log, 404, started, None, 0);
            return Ok(json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "no route for this host", "host": host}),
            ));
        };
        // Only an access log needs the name as text.
        let cluster_name = self.access.as_ref().map(|_| cluster.name.clone());
        log.cluster = cluster_name.as_deref();

        let mut rewrite = None;
        let mut extra_headers = Vec::new();
        if let Some(loaded) = cluster.rules.clone() {
            let headers = req.headers();
            let lookup = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let view = RequestView {
                method: method.as_str(),
                path: req.uri().path(),
                query: req.uri().query().unwrap_or_default(),
                host: &host,
                remote: Some(remote.ip()),
                header: &lookup,
            };
            match rules::run(&loaded.script, &view) {
                Err(e) => {
                    tracing::warn!(cluster = %cluster.name, error = %e, "rule script failed");
                    self.log(&log, 500, started, None, 0);
                    cluster.metrics.observe(500, started.elapsed());
                    return Ok(json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        serde_json::json!({"error": format!("request rule failed: {e}")}),
                    ));
                }
                Ok(outcome) => {
                    match outcome.action {
                        Action::Pass => {}
                        Action::Deny { status, message } => {
                            cluster.metrics.denied.fetch_add(1, Ordering::Relaxed);
                            cluster.metrics.observe(status, started.elapsed());
                            self.log(&log, status, started, None, 0);
                            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
                            return Ok(json(status, serde_json::json!({"error": message})));
                        }
                        Action::Redirect { url, status } => {
                            cluster.metrics.observe(status, started.elapsed());
                            self.log(&log, status, started, None, 0);
                            let mut resp = json(
                                StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND),
                                serde_json::json!({"location": url}),
                            );
                            if let Ok(v) = HeaderValue::from_str(&url) {
                                resp.headers_mut().insert(header::LOCATION, v);
                            }
                            return Ok(resp);
                        }
                        Action::Route(name) => match table.by_route_name(&name) {
                            Some(c) => cluster = c.clone(),
                            None => {
                                self.log(&log, 502, started, None, 0);
                                return Ok(json(
                                    StatusCode::BAD_GATEWAY,
                                    serde_json::json!({"error": format!("a rule routed to `{name}`, which is not an upstream here")}),
                                ));
                            }
                        },
                    }
                    rewrite = outcome.rewrite;
                    extra_headers = outcome.set_headers;
                }
            }
        }

        if is_upgrade(&req) {
            return Ok(self.upgrade(&client, req, &cluster, remote, &host, &log, started).await);
        }

        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                let too_big = e.downcast_ref::<http_body_util::LengthLimitError>().is_some();
                let status = if too_big { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
                self.log(&log, status.as_u16(), started, None, 0);
                return Ok(json(status, serde_json::json!({"error": format!("reading the request body: {e}")})));
            }
        };
        let idempotent = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
        );
        let target = match rewrite {
            Some(p) => p.parse::<hyper::http::uri::PathAndQuery>().ok(),
            None => {
                Some(uri.path_and_query().cloned().unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/")))
            }
        };
        let Some(target) = target else {
            return Ok(json(StatusCode::BAD_REQUEST, serde_json::json!({"error": "bad request path"})));
        };
        // The headers every try sends, prepared once: hop-by-hop ones out, X-Forwarded-* in.
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        let host_value = match headers.get(header::HOST) {
            Some(v) => Some(v.clone()),
            None => HeaderValue::from_str(&host).ok(),
        };
        if let Some(v) = &host_value {
            headers.insert(header::HOST, v.clone());
            headers.insert("x-forwarded-host", v.clone());
        }
        let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", remote.ip())).ok(),
            None => ip_header(remote.ip()),
        };
        if let Some(v) = forwarded {
            headers.insert("x-forwarded-for", v);
        }
        headers.insert("x-forwarded-proto", HeaderValue::from_static(if https { "https" } else { "http" }));
        for (k, v) in &extra_headers {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                headers.insert(k, v);
            }
        }
        let key = hash_key(&cluster, &headers, remote);
        let mut tried = [usize::MAX; MAX_TRIES];
        let mut tries = 0;
        let max_tries = MAX_TRIES.min(cluster.servers.len()).max(1);
        let mut last_error: Option<String> = None;
        while let Some(pick) = balance::pick(&cluster, &tried[..tries], key.as_deref()) {
            tried[tries] = pick.index;
            tries += 1;
            let server = &cluster.servers[pick.index];
            if pick.fail_open {
                cluster.metrics.fail_open.fetch_add(1, Ordering::Relaxed);
            }
            let mut up = Request::new(Full::new(body.clone()));
            *up.method_mut() = parts.method.clone();
            *up.version_mut() = Version::HTTP_11;
            // The last possible try takes the headers; earlier ones keep them for a retry.
            *up.headers_mut() = if tries == max_tries { std::mem::take(&mut headers) } else { headers.clone() };
            let mut uri_parts = hyper::http::uri::Parts::default();
            uri_parts.scheme = Some(hyper::http::uri::Scheme::HTTP);
            uri_parts.authority = server.authority.clone();
            uri_parts.path_and_query = Some(target.clone());
            match hyper::Uri::from_parts(uri_parts) {
                Ok(u) => *up.uri_mut() = u,
                Err(_) => {
                    return Ok(json(StatusCode::BAD_REQUEST, serde_json::json!({"error": "bad request path"})));
                }
            }

            let guard = InFlight::new(server.state.clone(), cluster.metrics.clone());
            match tokio::time::timeout(RESPONSE_TIMEOUT, client.request(up)).await {
                Ok(Ok(resp)) => {
                    server.state.record_success();
                    let (mut rparts, rbody) = resp.into_parts();
                    strip_hop_by_hop(&mut rparts.headers);
                    let status = rparts.status.as_u16();
                    cluster.metrics.observe(status, started.elapsed());
                    self.log(&log, status, started, Some(&server.addr), tries);
                    let body = Tracked { inner: rbody, _guard: guard }.boxed();
                    return Ok(Response::from_parts(rparts, body));
                }
                Ok(Err(e)) => {
                    let connect = e.is_connect();
                    let why = format!("{}: {}", server.addr, root_cause(&e));
                    server.state.record_failure(&why);
                    last_error = Some(why);
                    drop(guard);
                    let may_retry = (connect || idempotent) && tries < max_tries && started.elapsed() < RETRY_BUDGET;
                    if may_retry {
                        cluster.metrics.retries.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    break;
                }
                Err(_) => {
                    let why = format!("{}: no response within {}s", server.addr, RESPONSE_TIMEOUT.as_secs());
                    server.state.record_failure(&why);
                    cluster.metrics.observe(504, started.elapsed());
                    self.log(&log, 504, started, Some(&server.addr), tries);
                    return Ok(json(StatusCode::GATEWAY_TIMEOUT, serde_json::json!({"error": why})));
                }
            }
        }
        cluster.metrics.observe(502, started.elapsed());
        self.log(&log, 502, started, None, tries);
        let why = last_error.unwrap_or_else(|| "no server is available".into());
        Ok(json(StatusCode::BAD_GATEWAY, serde_json::json!({"error": why, "cluster": cluster.name})))
    }

    /// WebSocket and other upgrades: forwarded once, then bytes are copied both ways.
    #[allow(clippy::too_many_arguments)]
    async fn upgrade(
        &self,
        client: &UpstreamClient,
        mut req: Request<Incoming>,
        cluster: &Arc<Cluster>,
        remote: SocketAddr,
        host: &str,
        log: &Log<'_>,
        started: Instant,
    ) -> Response<Body> {
        let Some(pick) = balance::pick(cluster, &[], hash_key(cluster, req.headers(), remote).as_deref()) else {
            self.log(log, 502, started, None, 0);
            return json(StatusCode::BAD_GATEWAY, serde_json::json!({"error": "no server is available"}));
        };
        let server = cluster.servers[pick.index].clone();
        let client_side = hyper::upgrade::on(&mut req);
        let mut up = Request::new(Full::new(Bytes::new()));
        *up.method_mut() = req.method().clone();
        *up.headers_mut() = req.headers().clone();
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        match format!("http://{}{path}", server.addr).parse() {
            Ok(u) => *up.uri_mut() = u,
            Err(_) => {
                return json(StatusCode::BAD_REQUEST, serde_json::json!({"error": "bad request path"}));
            }
        }
        if let Ok(v) = HeaderValue::from_str(&remote.ip().to_string()) {
            up.headers_mut().insert("x-forwarded-for", v);
        }
        if let Ok(v) = HeaderValue::from_str(host) {
            up.headers_mut().insert(header::HOST, v);
        }
        let guard = InFlight::new(server.state.clone(), cluster.metrics.clone());
        let mut resp = match client.request(up).await {
            Ok(r) => r,
            Err(e) => {
                server.state.record_failure(&root_cause(&e));
                self.log(log, 502, started, Some(&server.addr), 1);
                return json(
                    StatusCode::BAD_GATEWAY,
                    serde_json::json!({"error": format!("{}: {}", server.addr, root_cause(&e))}),
                );
            }
        };
        let status = resp.status();
        self.log(log, status.as_u16(), started, Some(&server.addr), 1);
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let (parts, body) = resp.into_parts();
            return Response::from_parts(parts, Tracked { inner: body, _guard: guard }.boxed());
        }
        let upstream_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let _guard = guard;
            if let (Ok(client), Ok(upstream)) = tokio::join!(client_side, upstream_side) {
                let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(upstream)).await;
            }
        });
        let mut out = Response::new(Empty::new().map_err(|never: Infallible| match never {}).boxed());
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *out.headers_mut() = resp.headers().clone();
        out
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
