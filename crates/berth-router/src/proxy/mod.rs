//! The request path: Host -> cluster -> rules -> pick -> forward, with bounded retries on
//! another server when a connect fails or an idempotent request fails before any response.
//!
//! Two fronts share it. HTTP/1 clients (cleartext or TLS) are served by [`Proxy::serve_h1`],
//! which owns the client connection and the upstream connection and moves bytes between them in
//! one task, as nginx does: no per-request task hop, no header map. HTTP/2 clients are served
//! by hyper ([`Proxy::handle_h2`]). Upstreams always get HTTP/1.1 from the same exchange code.
//!
//! Laid out as Pingora keeps its protocols apart from its proxy logic: [`decide`] routes (Host,
//! rules, hash key), [`forward`] sends to a cluster's servers with bounded retries, [`h1_front`]
//! is the HTTP/1 client session, [`h2_front`] the HTTP/2 front, and [`body`] moves request bodies.
//! The access log lives in [`crate::access_log`].

mod body;
mod decide;
mod forward;
mod h1_front;
mod h2_front;

use body::*;
pub use decide::normalize_host;
use decide::*;
use forward::*;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
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

use berth_core::spec::{Balance, HashOn};

use crate::access_log::{AccessLog, Ending};
use crate::balance;
use crate::h1::{self, ClientBody, Forward, Framing, Head};
use crate::metrics::ClusterMetrics;
use crate::rules::{self, RequestView, RuleAction};
use crate::table::{Cluster, ServerState, Table};
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
    access: Option<Arc<AccessLog>>,
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
pub struct Forwarding {
    pub cluster: Arc<Cluster>,
    pub rewrite: Option<String>,
    pub set_headers: Vec<(String, String)>,
    /// The hash key, for a hashing cluster.
    pub key: Option<String>,
}

pub enum Decision {
    Local(Local),
    Forward(Forwarding),
}

/// A response head from an upstream, with the request counted in flight until it is dropped.
pub struct Forwarded {
    pub response: upstream::Response,
    pub guard: InFlight,
}

/// A request's access-log line while it is served; only when the access log is on. What is
/// known when the request arrives is written at once; the rest when it ends.
pub struct Log {
    line: Vec<u8>,
    started: Instant,
    /// The cluster that served it, once routing chose one.
    cluster: Option<Arc<Cluster>>,
    /// The server that answered, once one did.
    upstream: Option<Arc<str>>,
    tries: usize,
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
    pub fn new(access: Option<Arc<AccessLog>>) -> Proxy {
        Proxy {
            table: ArcSwap::from_pointee(Table::default()),
            access,
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

    /// Lines the access log dropped because the disk did not keep up.
    pub fn access_dropped(&self) -> u64 {
        self.access.as_ref().map_or(0, |a| a.dropped())
    }

    /// Starts a request's access-log line in `line` (a buffer the caller reuses), when the log is on.
    fn log_for(&self, req: &RequestInfo<'_>, mut line: Vec<u8>, started: Instant) -> Option<Log> {
        self.access.as_ref()?;
        AccessLog::begin(&mut line, req.remote, req.method, req.host, req.target);
        Some(Log { line, started, cluster: None, upstream: None, tries: 0 })
    }

    /// Ends a request's line with how it ended; gives the buffer back for the next request.
    fn log_end(&self, log: Option<Log>, status: u16, bytes: u64) -> Vec<u8> {
        let (Some(access), Some(mut l)) = (&self.access, log) else { return Vec::new() };
        let cluster = l.cluster.as_deref();
        let end = Ending {
            status,
            bytes,
            started: l.started,
            cluster: cluster.map(|c| c.name.as_str()),
            app: cluster.map(|c| c.route_name.as_str()),
            upstream: l.upstream.as_deref(),
            tries: l.tries,
        };
        access.finish(&mut l.line, &end);
        l.line
    }
}
