//! The request path: Host -> cluster -> rules -> pick -> forward, with bounded retries on
//! another server when a connect fails or an idempotent request fails before any response.
//!
//! Two fronts share it. HTTP/1 clients (cleartext or TLS) are served by [`Proxy::serve_h1`],
//! which owns the client connection and the upstream connection and moves bytes between them in
//! one task, as nginx does: no per-request task hop, no header map. HTTP/2 clients are served
//! by hyper ([`Proxy::handle_h2`]). Upstreams always get HTTP/1.1 from the same exchange code.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use berth_core::spec::{Balance, HashOn};

use crate::balance;
use crate::h1::{self, ClientBody, Forward, Framing, Head};
use crate::metrics::ClusterMetrics;
use crate::rules::{self, Action, RequestView};
use crate::table::{Cluster, ServerState, Table, now_ms};
use crate::upstream::{self, BodyPump, Buf, Pool, PumpError};

/// Bodies of the admin API's responses.
pub type Body = BoxBody<Bytes, hyper::Error>;
/// Bodies of proxied HTTP/2 responses.
pub type H2Body = UnsyncBoxBody<Bytes, io::Error>;

/// Largest request body the router buffers (so a failed try can be retried elsewhere), unless
/// set with [`Proxy::with_max_body`].
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// Most servers one request is tried on.
const MAX_TRIES: usize = 3;
/// Retries stop once a request has been going this long.
const RETRY_BUDGET: Duration = Duration::from_secs(5);
/// A client connection may idle this long between requests, and take this long to send a head.
const CLIENT_IDLE: Duration = Duration::from_secs(75);
/// Longest wait between two reads of a request body.
const CLIENT_BODY_STALL: Duration = Duration::from_secs(60);
/// Longest a write to a client may wait (nginx's `send_timeout`): a client that stops reading
/// must not hold its task, its upstream connection, or an instance's drain for ever.
pub const CLIENT_SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// What every worker thread shares: the table and the access log. Each worker has its own
/// upstream connection pool ([`Pool`]).
pub struct Proxy {
    pub table: ArcSwap<Table>,
    access: Option<mpsc::Sender<String>>,
    pub access_drops: AtomicU64,
    send_timeout: Duration,
    max_body: usize,
}

/// A request as both fronts present it to routing.
pub struct RequestInfo<'a> {
    pub method: &'a str,
    /// Path and query, as received.
    pub target: &'a str,
    /// Lowercase, without port.
    pub host: &'a str,
    pub headers: &'a [(&'a [u8], &'a [u8])],
    pub remote: SocketAddr,
}

/// A response the router makes itself: an error, a denial or a redirect.
#[derive(Debug)]
pub struct Local {
    pub status: u16,
    pub body: String,
    pub location: Option<String>,
}

impl Local {
    fn json(status: u16, value: serde_json::Value) -> Local {
        Local { status, body: value.to_string(), location: None }
    }

    /// The same answer on an HTTP/1 connection.
    fn write_h1(&self, out: &mut Vec<u8>, keep_alive: bool) {
        h1::write_local(out, self.status, &self.body, self.location.as_deref(), keep_alive);
    }

    fn into_hyper<E>(self) -> Response<UnsyncBoxBody<Bytes, E>> {
        let mut resp = Response::new(Full::new(Bytes::from(self.body)).map_err(|never| match never {}).boxed_unsync());
        *resp.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(v) = self.location.and_then(|url| HeaderValue::from_str(&url).ok()) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        resp
    }
}

/// Where routing sends a request that the router does not answer itself.
pub struct Plan {
    pub cluster: Arc<Cluster>,
    pub rewrite: Option<String>,
    pub set_headers: Vec<(String, String)>,
    /// The hash key, for a hashing cluster.
    pub key: Option<String>,
}

pub enum Decision {
    Local(Local),
    Forward(Plan),
}

/// A response head from an upstream, with the request counted in flight until it is dropped.
pub struct Forwarded {
    pub response: upstream::Response,
    pub guard: InFlight,
}

/// The access log's view of a request; built only when the access log is on.
pub struct Log {
    remote: SocketAddr,
    method: String,
    host: String,
    path: String,
    cluster: Option<String>,
}

/// The request's host as routing keys it: lowercase, without port or trailing dot.
pub fn normalize_host(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    let host = if text.starts_with('[') {
        // An IPv6 literal keeps its brackets; only a port after them goes.
        text.rsplit_once("]:").map_or(text, |(h, _)| &text[..h.len() + 1])
    } else {
        match text.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => text,
        }
    };
    let host = host.trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn header_value<'a>(headers: &[(&'a [u8], &'a [u8])], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| *v)
}

/// The request's key for a hashing cluster: a header, a cookie, or the client's address.
fn hash_key(cluster: &Cluster, headers: &[(&[u8], &[u8])], remote: SocketAddr) -> Option<String> {
    let Balance::Hash(on) = &cluster.balance else {
        return None;
    };
    match on {
        HashOn::Header(name) => {
            header_value(headers, name).and_then(|v| std::str::from_utf8(v).ok()).map(str::to_string)
        }
        HashOn::Cookie(name) => headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"cookie"))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .find_map(|line| {
                line.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then(|| v.to_string())
                })
            }),
        HashOn::ClientIp => Some(remote.ip().to_string()),
    }
}

fn is_idempotent(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE")
}

/// Counts a request in flight on its server and cluster until dropped (when the body ends).
pub struct InFlight {
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

impl Proxy {
    pub fn new(access: Option<mpsc::Sender<String>>) -> Proxy {
        Proxy {
            table: ArcSwap::from_pointee(Table::default()),
            access,
            access_drops: AtomicU64::new(0),
            send_timeout: CLIENT_SEND_TIMEOUT,
            max_body: MAX_BODY,
        }
    }

    /// The largest request body accepted ([`MAX_BODY`] unless set); a larger one gets 413.
    pub fn with_max_body(mut self, bytes: usize) -> Proxy {
        self.max_body = bytes;
        self
    }

    /// How long a write to an HTTP/1 client may wait ([`CLIENT_SEND_TIMEOUT`] unless set).
    pub fn with_send_timeout(mut self, timeout: Duration) -> Proxy {
        self.send_timeout = timeout;
        self
    }

    fn log_for(&self, req: &RequestInfo<'_>) -> Option<Log> {
        self.access.as_ref()?;
        Some(Log {
            remote: req.remote,
            method: req.method.to_string(),
            host: req.host.to_string(),
            path: req.target.to_string(),
            cluster: None,
        })
    }

    fn log(&self, l: Option<&Log>, status: u16, started: Instant, upstream: Option<&str>, tries: usize) {
        let (Some(tx), Some(l)) = (&self.access, l) else { return };
        let line = serde_json::json!({
            "ts": now_ms(),
            "remote": l.remote.to_string(),
            "method": l.method,
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

    /// Routes a request: an answer of the router's own, or where to forward it.
    pub fn decide(&self, table: &Table, req: &RequestInfo<'_>, started: Instant, log: &mut Option<Log>) -> Decision {
        let Some(mut cluster) = table.lookup(req.host).cloned() else {
            self.log(log.as_ref(), 404, started, None, 0);
            return Decision::Local(Local::json(
                404,
                serde_json::json!({"error": "no route for this host", "host": req.host}),
            ));
        };
        if let Some(l) = log.as_mut() {
            l.cluster = Some(cluster.name.clone());
        }
        let mut rewrite = None;
        let mut set_headers = Vec::new();
        if let Some(loaded) = cluster.rules.clone() {
            let (path, query) = req.target.split_once('?').unwrap_or((req.target, ""));
            let view = RequestView {
                method: req.method,
                path,
                query,
                host: req.host,
                remote: Some(req.remote.ip()),
                headers: req.headers,
            };
            match rules::run(&loaded.script, &view) {
                Err(e) => {
                    cluster.metrics.rule_failures[e.kind.index()].fetch_add(1, Ordering::Relaxed);
                    if loaded.script.report_due() {
                        tracing::warn!(cluster = %cluster.name, error = %e, kind = ?e.kind, on_error = loaded.on_error.as_str(),
                                       "request rule failed");
                    }
                    // Open: the request goes on as if there were no rule. Closed: refused, and
                    // the client learns nothing of the script's internals.
                    if loaded.on_error == berth_api::RuleOnError::Closed {
                        self.log(log.as_ref(), 500, started, None, 0);
                        cluster.metrics.observe(500, started.elapsed());
                        return Decision::Local(Local::json(500, serde_json::json!({"error": "request rule failed"})));
                    }
                }
                Ok(outcome) => {
                    match outcome.action {
                        Action::Pass => {}
                        Action::Deny { status, message } => {
                            let status = if StatusCode::from_u16(status).is_ok() { status } else { 403 };
                            cluster.metrics.denied.fetch_add(1, Ordering::Relaxed);
                            cluster.metrics.observe(status, started.elapsed());
                            self.log(log.as_ref(), status, started, None, 0);
                            return Decision::Local(Local::json(status, serde_json::json!({"error": message})));
                        }
                        Action::Redirect { url, status } => {
                            let status = if StatusCode::from_u16(status).is_ok() { status } else { 302 };
                            cluster.metrics.observe(status, started.elapsed());
                            self.log(log.as_ref(), status, started, None, 0);
                            let ok = HeaderValue::from_str(&url).is_ok();
                            let mut local = Local::json(status, serde_json::json!({"location": url}));
                            local.location = ok.then_some(url);
                            return Decision::Local(local);
                        }
                        Action::Route(name) => match table.by_route_name(&name) {
                            Some(c) => cluster = c.clone(),
                            None => {
                                self.log(log.as_ref(), 502, started, None, 0);
                                return Decision::Local(Local::json(
                                    502,
                                    serde_json::json!({"error": format!("a rule routed to `{name}`, which is not an upstream here")}),
                                ));
                            }
                        },
                    }
                    rewrite = outcome.rewrite;
                    // Only valid names and values reach the wire.
                    set_headers = outcome.set_headers;
                    set_headers.retain(|(k, v)| {
                        berth_rules::header::is_name(k.as_bytes()) && berth_rules::header::is_value(v.as_bytes())
                    });
                }
            }
        }
        let key = hash_key(&cluster, req.headers, req.remote);
        Decision::Forward(Plan { cluster, rewrite, set_headers, key })
    }

    /// Sends a prepared request to the cluster's servers in turn until one answers.
    /// A body too large to hold comes from `pump`: only a failed connection, which sent nothing,
    /// is tried again.
    pub async fn forward<'p>(
        &self,
        pool: &Pool,
        plan: &Plan,
        request: upstream::Request<'_>,
        mut pump: Option<&mut (dyn BodyPump + 'p)>,
        started: Instant,
        log: Option<&Log>,
    ) -> Result<Forwarded, Local> {
        let idempotent = request.resend;
        let cluster = &plan.cluster;
        let mut tried = [usize::MAX; MAX_TRIES];
        let mut tries = 0;
        let max_tries = MAX_TRIES.min(cluster.servers.len()).max(1);
        let mut last_error: Option<String> = None;
        while let Some(pick) = balance::pick(cluster, &tried[..tries], plan.key.as_deref()) {
            tried[tries] = pick.index;
            tries += 1;
            let server = &cluster.servers[pick.index];
            if pick.fail_open {
                cluster.metrics.fail_open.fetch_add(1, Ordering::Relaxed);
            }
            let guard = InFlight::new(server.state.clone(), cluster.metrics.clone());
            match pool.exchange(&server.addr, request, pump.as_deref_mut()).await {
                Ok(response) => {
                    server.state.record_success();
                    let status = response.head.status;
                    cluster.metrics.observe(status, started.elapsed());
                    self.log(log, status, started, Some(&server.addr), tries);
                    return Ok(Forwarded { response, guard });
                }
                Err(upstream::ExchangeError { client: Some(status), message, .. }) => {
                    // The client's fault, not the server's.
                    cluster.metrics.observe(status, started.elapsed());
                    self.log(log, status, started, Some(&server.addr), tries);
                    return Err(Local::json(status, serde_json::json!({"error": message})));
                }
                Err(e) if e.timeout && !e.connect => {
                    let why = format!("{}: {}", server.addr, e.message);
                    server.state.record_failure(&why);
                    cluster.metrics.observe(504, started.elapsed());
                    self.log(log, 504, started, Some(&server.addr), tries);
                    return Err(Local::json(504, serde_json::json!({"error": why})));
                }
                Err(e) => {
                    let why = format!("{}: {}", server.addr, e.message);
                    server.state.record_failure(&why);
                    last_error = Some(why);
                    drop(guard);
                    let may_retry = (e.connect || idempotent) && tries < max_tries && started.elapsed() < RETRY_BUDGET;
                    if may_retry {
                        cluster.metrics.retries.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    break;
                }
            }
        }
        cluster.metrics.observe(502, started.elapsed());
        self.log(log, 502, started, None, tries);
        let why = last_error.unwrap_or_else(|| "no server is available".into());
        Err(Local::json(502, serde_json::json!({"error": why, "cluster": cluster.name})))
    }

    /// Serves an HTTP/1 client connection until it ends. `buf` holds what was already read.
    pub async fn serve_h1<S>(self: Arc<Self>, pool: Arc<Pool>, mut io: S, mut buf: Buf, remote: SocketAddr, https: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut head = Head::default();
        let mut wire = Vec::with_capacity(1024);
        let mut out = Vec::with_capacity(8 * 1024);
        let mut scratch = Vec::new();
        loop {
            wire.clear();
            out.clear();
            let step = self
                .h1_exchange(&pool, &mut io, &mut buf, &mut head, &mut wire, &mut out, &mut scratch, remote, https)
                .await;
            // Closed, timed out or broken: nothing more can be said on this connection.
            if !matches!(step, Ok(true)) {
                return;
            }
            // One large upload or answer must not stay allocated for the life of a keep-alive
            // connection.
            for v in [&mut wire, &mut out, &mut scratch] {
                release_if_large(v);
            }
        }
    }

    /// One request and its response on an HTTP/1 connection; `Ok(true)` when the connection
    /// may carry another, `Err` when the client or the upstream broke off mid-way.
    #[allow(clippy::too_many_arguments)]
    async fn h1_exchange<S>(
        &self,
        pool: &Arc<Pool>,
        io: &mut S,
        buf: &mut Buf,
        head: &mut Head,
        wire: &mut Vec<u8>,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
        remote: SocketAddr,
        https: bool,
    ) -> io::Result<bool>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        // The head, within the idle allowance.
        let read_head = async {
            loop {
                if !buf.is_empty() {
                    match h1::parse_request(buf.filled(), head) {
                        Ok(Some(())) => return Ok(true),
                        Ok(None) => {}
                        Err(e) => return Err(e),
                    }
                }
                if buf.fill(io).await.unwrap_or(0) == 0 {
                    return Ok(false);
                }
            }
        };
        match tokio::time::timeout(CLIENT_IDLE, read_head).await {
            Err(_) | Ok(Ok(false)) => return Ok(false),
            Ok(Ok(true)) => {}
            Ok(Err(e)) => {
                let status = if matches!(e, h1::HeadError::TooLarge) { 431 } else { 400 };
                h1::write_local(out, status, &serde_json::json!({"error": e.to_string()}).to_string(), None, false);
                send(io, out, self.send_timeout).await?;
                return Ok(false);
            }
        }
        let started = Instant::now();
        let table = self.table.load_full();
        let bytes = buf.filled();
        let method = head.method.get(bytes);
        let raw_target = head.target.get(bytes);
        let minor = head.minor;
        let pairs: Vec<(&[u8], &[u8])> = head.pairs(bytes).collect();
        let meta = h1::meta(pairs.iter().copied());
        let mut keep_alive = if minor >= 1 { !meta.close } else { meta.keep_alive };
        let refuse = |out: &mut Vec<u8>, status: u16, why: &str| {
            h1::write_local(out, status, &serde_json::json!({"error": why}).to_string(), None, false);
        };
        let framing = match h1::request_framing(&meta) {
            Ok(f) => f,
            Err(why) => {
                refuse(out, 400, &format!("bad request: {why}"));
                send(io, out, self.send_timeout).await?;
                return Ok(false);
            }
        };
        // RFC 9112 3.2: more than one Host is refused; routers behind us could pick either.
        if pairs.iter().filter(|(n, _)| n.eq_ignore_ascii_case(b"host")).count() > 1 {
            refuse(out, 400, "bad request: more than one Host header");
            send(io, out, self.send_timeout).await?;
            return Ok(false);
        }
        // An absolute-form target (`GET http://host/path`) names the host itself.
        let (host_value, target) = match absolute_form(raw_target) {
            Some((authority, path)) => (Some(authority), path),
            None => (header_value(&pairs, "host"), raw_target),
        };
        let (Some(host_value), Ok(method_text), Ok(target_text)) =
            (host_value, std::str::from_utf8(method), std::str::from_utf8(target))
        else {
            refuse(out, 400, "no Host header, or a request line that is not text");
            send(io, out, self.send_timeout).await?;
            return Ok(false);
        };
        let Some(host) = normalize_host(host_value) else {
            refuse(out, 400, "an empty Host header");
            send(io, out, self.send_timeout).await?;
            return Ok(false);
        };
        let info = RequestInfo { method: method_text, target: target_text, host: &host, headers: &pairs, remote };
        let mut log = self.log_for(&info);
        let plan = match self.decide(&table, &info, started, &mut log) {
            Decision::Forward(plan) => plan,
            Decision::Local(local) => {
                // The body was not read: the connection can only go on if there is none.
                let body_unread = framing != Framing::None;
                keep_alive &= !body_unread;
                local.write_h1(out, keep_alive);
                buf.consume(head.len);
                send(io, out, self.send_timeout).await?;
                if body_unread {
                    linger(io).await;
                }
                return Ok(keep_alive);
            }
        };
        let upgrade = if meta.upgrade { header_value(&pairs, "upgrade") } else { None };
        let forward = Forward {
            method,
            target: plan.rewrite.as_deref().map_or(target, str::as_bytes),
            host: host_value,
            client_ip: remote.ip(),
            https,
            set: &plan.set_headers,
            upgrade,
        };
        h1::write_upstream_head(wire, &forward, pairs.iter().copied());
        let idempotent = is_idempotent(method);
        let head_request = method == b"HEAD";
        let wants_length = h1::wants_length(method);
        let upgrading = upgrade.is_some();
        drop(pairs);
        buf.consume(head.len);

        // A body up to HOLD_BODY_UP_TO is held whole, so that a failed try can be sent again
        // elsewhere; a larger one streams to the upstream as it arrives.
        scratch.clear();
        if framing != Framing::None && meta.expect_continue && minor >= 1 {
            send(io, b"HTTP/1.1 100 Continue\r\n\r\n", self.send_timeout).await?;
        }
        let rest = match read_request_body(io, buf, framing, scratch, self.max_body, HOLD_BODY_UP_TO).await? {
            BodyRead::Refused(status) => {
                refuse(out, status, if status == 413 { "request body too large" } else { "malformed request body" });
                send(io, out, self.send_timeout).await?;
                linger(io).await;
                return Ok(false);
            }
            BodyRead::Whole => {
                h1::end_upstream_head(wire, wants_length, scratch.len());
                wire.extend_from_slice(scratch);
                None
            }
            BodyRead::Stream(rest) => {
                match rest {
                    StreamRest::Length(n) => h1::end_upstream_head_streamed(wire, Some(n)),
                    StreamRest::Chunked(_) => {
                        h1::end_upstream_head_streamed(wire, None);
                        h1::write_chunk(wire, scratch);
                    }
                }
                Some(rest)
            }
        };

        let streaming = rest.is_some();
        let request =
            upstream::Request { bytes: wire, head: head_request, upgrade: upgrading, resend: idempotent && !streaming };
        let (forwarded, body_read) = match rest {
            None => (self.forward(pool, &plan, request, None, started, log.as_ref()).await, true),
            Some(rest) => {
                let held = scratch.len() as u64;
                let mut pump = ClientPump {
                    io: &mut *io,
                    buf: &mut *buf,
                    rest,
                    sent: held,
                    max_body: self.max_body as u64,
                    decoded: Vec::new(),
                    framed: Vec::new(),
                    done: false,
                };
                let forwarded = self.forward(pool, &plan, request, Some(&mut pump), started, log.as_ref()).await;
                (forwarded, pump.done)
            }
        };
        // The rest of a body that was not read stands between this request and the next.
        keep_alive &= body_read;
        let forwarded = match forwarded {
            Ok(f) => f,
            Err(local) => {
                local.write_h1(out, keep_alive);
                send(io, out, self.send_timeout).await?;
                if !body_read {
                    linger(io).await;
                }
                return Ok(keep_alive);
            }
        };
        let Forwarded { response, guard } = forwarded;
        let status = response.head.status;
        if status == 101 && upgrading {
            h1::write_client_head(
                out,
                status,
                response.head.reason.get(response.head_bytes()),
                response.pairs(),
                ClientBody::None,
                true,
                minor,
            );
            let (early, mut upstream) = response.into_upgraded();
            out.extend_from_slice(&early);
            send(io, out, self.send_timeout).await?;
            if !buf.is_empty() {
                upstream.write_all(buf.filled()).await?;
            }
            let _ = tokio::io::copy_bidirectional(io, &mut upstream).await;
            drop(guard);
            return Ok(false);
        }
        let body = ClientBody::for_client(response.framing, minor);
        if body == ClientBody::UntilClose {
            keep_alive = false;
        }
        h1::write_client_head(
            out,
            status,
            response.head.reason.get(response.head_bytes()),
            response.pairs(),
            body,
            keep_alive,
            minor,
        );
        let mut reader = response.into_body(pool);
        // Body bytes go out with the head when they are already here: one write for most answers.
        let chunked = body == ClientBody::Chunked;
        loop {
            if chunked {
                scratch.clear();
                reader.take_buffered(scratch)?;
                h1::write_chunk(out, scratch);
            } else {
                reader.take_buffered(out)?;
            }
            if reader.done() {
                if chunked {
                    out.extend_from_slice(h1::LAST_CHUNK);
                }
                send(io, out, self.send_timeout).await?;
                break;
            }
            if !out.is_empty() {
                send(io, out, self.send_timeout).await?;
                out.clear();
            }
            reader.fill().await?;
        }
        drop(guard);
        Ok(keep_alive)
    }

    /// Serves one HTTP/2 request (hyper parses HTTP/2; the upstream exchange is shared).
    pub async fn handle_h2(
        self: Arc<Self>,
        pool: Arc<Pool>,
        req: Request<Incoming>,
        remote: SocketAddr,
        https: bool,
    ) -> Result<Response<H2Body>, Infallible> {
        let started = Instant::now();
        let table = self.table.load_full();
        let (parts, body) = req.into_parts();
        let host_value: Option<&[u8]> = match parts.uri.authority() {
            Some(a) => Some(a.as_str().as_bytes()),
            None => parts.headers.get(header::HOST).map(HeaderValue::as_bytes),
        };
        let Some((host_value, host)) = host_value.and_then(|v| Some((v, normalize_host(v)?))) else {
            return Ok(Local::json(400, serde_json::json!({"error": "no Host header"})).into_hyper());
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let method = parts.method.as_str();
        let pairs: Vec<(&[u8], &[u8])> =
            parts.headers.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())).collect();
        let info = RequestInfo { method, target, host: &host, headers: &pairs, remote };
        let mut log = self.log_for(&info);
        let plan = match self.decide(&table, &info, started, &mut log) {
            Decision::Forward(plan) => plan,
            Decision::Local(local) => return Ok(local.into_hyper()),
        };
        let mut wire = Vec::with_capacity(1024);
        let forward = Forward {
            method: method.as_bytes(),
            target: plan.rewrite.as_deref().unwrap_or(target).as_bytes(),
            host: host_value,
            client_ip: remote.ip(),
            https,
            set: &plan.set_headers,
            upgrade: None,
        };
        h1::write_upstream_head(&mut wire, &forward, pairs.iter().copied());
        drop(pairs);
        // As on HTTP/1: held up to HOLD_BODY_UP_TO, streamed on (chunked) beyond it.
        let mut body = body;
        let mut held = Vec::new();
        let mut more = false;
        loop {
            let data = match next_frame(&mut body).await {
                Ok(Some(data)) => data,
                Ok(None) => break,
                Err((status, why)) => {
                    self.log(log.as_ref(), status, started, None, 0);
                    return Ok(Local::json(status, serde_json::json!({"error": why})).into_hyper());
                }
            };
            held.extend_from_slice(&data);
            if held.len() > self.max_body {
                self.log(log.as_ref(), 413, started, None, 0);
                return Ok(Local::json(413, serde_json::json!({"error": "request body too large"})).into_hyper());
            }
            if held.len() > HOLD_BODY_UP_TO {
                more = true;
                break;
            }
        }
        let request = |wire| upstream::Request {
            bytes: wire,
            head: parts.method == hyper::Method::HEAD,
            upgrade: false,
            resend: is_idempotent(method.as_bytes()) && !more,
        };
        let forwarded = if more {
            h1::end_upstream_head_streamed(&mut wire, None);
            h1::write_chunk(&mut wire, &held);
            let mut pump = H2Pump { body, sent: held.len() as u64, max_body: self.max_body as u64, framed: Vec::new() };
            self.forward(&pool, &plan, request(&wire), Some(&mut pump), started, log.as_ref()).await
        } else {
            h1::end_upstream_head(&mut wire, h1::wants_length(method.as_bytes()), held.len());
            wire.extend_from_slice(&held);
            self.forward(&pool, &plan, request(&wire), None, started, log.as_ref()).await
        };
        let Forwarded { response, guard } = match forwarded {
            Ok(f) => f,
            Err(local) => return Ok(local.into_hyper()),
        };
        let mut out = Response::builder().status(response.head.status);
        let framing = response.framing;
        let connection = h1::ConnectionHeaders::of(response.pairs());
        for (name, value) in response.pairs() {
            let is_length = name.eq_ignore_ascii_case(b"content-length");
            // HTTP/2 has no connection-specific headers; a length passes only when it frames the body.
            let keep =
                !connection.contains(name) && (!is_length || matches!(framing, Framing::Length(_) | Framing::None));
            if keep && let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                out = out.header(n, v);
            }
        }
        drop(connection);
        let reader = response.into_body(&pool);
        let frames = futures_util::stream::unfold((reader, guard, false), |(mut reader, guard, ended)| async move {
            if ended {
                return None;
            }
            let mut chunk = Vec::new();
            loop {
                if let Err(e) = reader.take_buffered(&mut chunk) {
                    return Some((Err(e), (reader, guard, true)));
                }
                if !chunk.is_empty() || reader.done() {
                    break;
                }
                if let Err(e) = reader.fill().await {
                    return Some((Err(e), (reader, guard, true)));
                }
            }
            if chunk.is_empty() {
                return None;
            }
            let ended = reader.done();
            Some((Ok(Frame::data(Bytes::from(chunk))), (reader, guard, ended)))
        });
        let body = StreamBody::new(frames).boxed_unsync();
        Ok(out.body(body).unwrap_or_else(|_| {
            Local::json(502, serde_json::json!({"error": "the upstream's response head could not be passed on"}))
                .into_hyper()
        }))
    }
}

/// Buffers a connection keeps between requests; a larger one is given back after use.
const KEEP_BUFFER: usize = 64 * 1024;

fn release_if_large(v: &mut Vec<u8>) {
    if v.capacity() > KEEP_BUFFER {
        *v = Vec::new();
    }
}

/// `http://host[:port]/path?query` split into the authority and the rest (`/` when empty; a
/// bare `?query` is kept, and the upstream head gets the `/` in front of it).
fn absolute_form(target: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = target.strip_prefix(b"http://").or_else(|| target.strip_prefix(b"https://"))?;
    match rest.iter().position(|b| *b == b'/' || *b == b'?') {
        Some(i) => Some((&rest[..i], &rest[i..])),
        None => Some((rest, b"/")),
    }
}

/// Request bodies up to this size are held whole (and may be sent again on another server);
/// larger ones stream from the client to the upstream, so memory does not grow with them.
const HOLD_BODY_UP_TO: usize = 1 << 20;

/// What reading a request body came to.
enum BodyRead {
    /// All of it is in `body`.
    Whole,
    /// Refused before anything was sent: 413 for too large, 400 for malformed.
    Refused(u16),
    /// Too large to hold: `body` has what was decoded so far, the rest is still to come.
    Stream(StreamRest),
}

/// The part of a streamed body still to read from the client.
enum StreamRest {
    Length(u64),
    Chunked(h1::Chunked),
}

/// Reads a request body into `body`, up to `hold` bytes; `Err` when the client went away.
async fn read_request_body<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Buf,
    framing: Framing,
    body: &mut Vec<u8>,
    max_body: usize,
    hold: usize,
) -> io::Result<BodyRead> {
    match framing {
        Framing::None | Framing::Close => Ok(BodyRead::Whole),
        Framing::Length(n) => {
            if n > max_body as u64 {
                return Ok(BodyRead::Refused(413));
            }
            if n > hold as u64 {
                return Ok(BodyRead::Stream(StreamRest::Length(n)));
            }
            let n = n as usize;
            loop {
                let take = (n - body.len()).min(buf.filled().len());
                body.extend_from_slice(&buf.filled()[..take]);
                buf.consume(take);
                if body.len() == n {
                    return Ok(BodyRead::Whole);
                }
                fill_within(io, buf).await?;
            }
        }
        Framing::Chunked => {
            // A client's chunk lines must end in CRLF: a bare LF is how smuggling starts.
            let mut decoder = h1::Chunked::strict();
            loop {
                let used = match decoder.decode(buf.filled(), body) {
                    Ok(used) => used,
                    Err(_) => return Ok(BodyRead::Refused(400)),
                };
                buf.consume(used);
                if body.len() > max_body {
                    return Ok(BodyRead::Refused(413));
                }
                if decoder.done() {
                    return Ok(BodyRead::Whole);
                }
                if body.len() > hold {
                    return Ok(BodyRead::Stream(StreamRest::Chunked(decoder)));
                }
                fill_within(io, buf).await?;
            }
        }
    }
}

/// Moves the rest of a client's request body to the upstream as it arrives: as it came when it
/// has a length, re-chunked after decoding when it is chunked (so a malformed or too large body
/// is still caught).
struct ClientPump<'c, S> {
    io: &'c mut S,
    buf: &'c mut Buf,
    rest: StreamRest,
    /// Body bytes sent or held so far, against `max_body`.
    sent: u64,
    max_body: u64,
    decoded: Vec<u8>,
    framed: Vec<u8>,
    /// The whole body went upstream: the client connection is where the next request starts.
    done: bool,
}

impl<S: AsyncRead + Unpin + Send> BodyPump for ClientPump<'_, S> {
    fn pump<'a>(
        &'a mut self,
        upstream: &'a mut TcpStream,
    ) -> Pin<Box<dyn Future<Output = Result<(), PumpError>> + Send + 'a>> {
        Box::pin(async move {
            match &mut self.rest {
                StreamRest::Length(left) => {
                    while *left > 0 {
                        if self.buf.is_empty() {
                            fill_within(self.io, self.buf).await.map_err(client_failed)?;
                        }
                        let take = (*left).min(self.buf.filled().len() as u64) as usize;
                        write_upstream(upstream, &self.buf.filled()[..take]).await?;
                        self.buf.consume(take);
                        *left -= take as u64;
                    }
                }
                StreamRest::Chunked(decoder) => loop {
                    self.decoded.clear();
                    let used = decoder
                        .decode(self.buf.filled(), &mut self.decoded)
                        .map_err(|_| PumpError::Client(400, "malformed request body".into()))?;
                    self.buf.consume(used);
                    send_chunk(upstream, &mut self.framed, &self.decoded, &mut self.sent, self.max_body).await?;
                    if decoder.done() {
                        write_upstream(upstream, h1::LAST_CHUNK).await?;
                        break;
                    }
                    fill_within(self.io, self.buf).await.map_err(client_failed)?;
                },
            }
            self.done = true;
            Ok(())
        })
    }
}

/// The rest of an HTTP/2 request body, re-chunked for the upstream as its frames arrive.
struct H2Pump {
    body: Incoming,
    sent: u64,
    max_body: u64,
    framed: Vec<u8>,
}

impl BodyPump for H2Pump {
    fn pump<'a>(
        &'a mut self,
        upstream: &'a mut TcpStream,
    ) -> Pin<Box<dyn Future<Output = Result<(), PumpError>> + Send + 'a>> {
        Box::pin(async move {
            while let Some(data) = next_frame(&mut self.body).await.map_err(|(s, why)| PumpError::Client(s, why))? {
                send_chunk(upstream, &mut self.framed, &data, &mut self.sent, self.max_body).await?;
            }
            write_upstream(upstream, h1::LAST_CHUNK).await
        })
    }
}

/// The next data of an HTTP/2 request body, none at its end (trailers are dropped). A client
/// that sends nothing for `CLIENT_BODY_STALL` gets 408, a broken body 400.
async fn next_frame(body: &mut Incoming) -> Result<Option<Bytes>, (u16, String)> {
    loop {
        match tokio::time::timeout(CLIENT_BODY_STALL, body.frame()).await {
            Err(_) => return Err(stalled()),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err((400, format!("reading the request body: {e}"))),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// Longest a closing connection keeps reading what its client still sends.
const LINGER_TOTAL: Duration = Duration::from_secs(10);
/// A closing connection whose client has been quiet this long is closed at once.
const LINGER_QUIET: Duration = Duration::from_secs(2);

/// Closes a connection whose request body was not all read, as nginx's lingering close does:
/// the answer has gone, the write side is shut, and what the client still sends is read and
/// dropped for a while. Closing with unread data makes the kernel send a reset, which can
/// destroy the answer before the client reads it.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) {
    let _ = io.shutdown().await;
    let deadline = Instant::now() + LINGER_TOTAL;
    let mut sink = vec![0u8; 16 * 1024];
    while Instant::now() < deadline {
        match tokio::time::timeout(LINGER_QUIET, io.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// A client that sent none of its body for `CLIENT_BODY_STALL`.
fn stalled() -> (u16, String) {
    (408, format!("the client sent nothing for {}s", CLIENT_BODY_STALL.as_secs()))
}

fn client_failed(e: io::Error) -> PumpError {
    if e.kind() == io::ErrorKind::TimedOut {
        let (status, why) = stalled();
        PumpError::Client(status, why)
    } else {
        PumpError::Client(400, format!("the request body ended early: {e}"))
    }
}

/// Counts decoded body bytes against the limit and sends them upstream as one chunk.
async fn send_chunk(
    upstream: &mut TcpStream,
    framed: &mut Vec<u8>,
    data: &[u8],
    sent: &mut u64,
    max_body: u64,
) -> Result<(), PumpError> {
    *sent += data.len() as u64;
    if *sent > max_body {
        return Err(PumpError::Client(413, "request body too large".into()));
    }
    if data.is_empty() {
        return Ok(());
    }
    framed.clear();
    h1::write_chunk(framed, data);
    write_upstream(upstream, framed).await
}

/// One write of a streamed body, bounded like an exchange: an upstream that stops reading is stuck.
async fn write_upstream(upstream: &mut TcpStream, bytes: &[u8]) -> Result<(), PumpError> {
    match tokio::time::timeout(upstream::RESPONSE_TIMEOUT, upstream.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(PumpError::Upstream(e.to_string())),
        Err(_) => Err(PumpError::Upstream(format!("stopped reading for {}s", upstream::RESPONSE_TIMEOUT.as_secs()))),
    }
}

/// Writes to a client within `timeout`. Most writes complete at once: only one that has to wait
/// gets a timer (making one reads the clock and the runtime handle).
async fn send<S: AsyncWrite + Unpin>(io: &mut S, bytes: &[u8], timeout: Duration) -> io::Result<()> {
    let mut write = std::pin::pin!(io.write_all(bytes));
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    if let Poll::Ready(done) = first {
        return done;
    }
    match tokio::time::timeout(timeout, write).await {
        Ok(written) => written,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")),
    }
}

async fn fill_within<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Buf) -> io::Result<()> {
    match tokio::time::timeout(CLIENT_BODY_STALL, buf.fill(io)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized_for_routing() {
        assert_eq!(normalize_host(b"Shop.Example.COM:8080").as_deref(), Some("shop.example.com"));
        assert_eq!(normalize_host(b"a.test.").as_deref(), Some("a.test"));
        assert_eq!(normalize_host(b"[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host(b"").as_deref(), None);
    }

    #[test]
    fn large_buffers_are_given_back_small_ones_kept() {
        let mut small = Vec::with_capacity(1024);
        small.extend_from_slice(b"x");
        release_if_large(&mut small);
        assert!(small.capacity() >= 1024, "a small buffer is kept for the next request");
        let mut large = vec![0u8; 16 << 20];
        release_if_large(&mut large);
        assert_eq!(large.capacity(), 0);
    }

    #[test]
    fn absolute_form_targets_carry_their_host() {
        assert_eq!(absolute_form(b"http://a.test:81/x?y"), Some((&b"a.test:81"[..], &b"/x?y"[..])));
        assert_eq!(absolute_form(b"http://a.test"), Some((&b"a.test"[..], &b"/"[..])));
        assert_eq!(absolute_form(b"http://a.test?q=1"), Some((&b"a.test"[..], &b"?q=1"[..])));
        assert_eq!(absolute_form(b"/x"), None);
    }
}
