//! The data plane: one front door routing by Host across live instances, fed by the control
//! plane's route watch, with health checks, Lua rules and an admin API.

pub mod access_log;
pub mod admin;
pub mod balance;
mod discovery;
pub mod h1;
mod health;
pub mod metrics;
pub mod proxy;
use berth_rules as rules;
pub mod table;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use berth_api::{Client, Member};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::access_log::AccessLog;
pub use crate::access_log::LogLimit;
use crate::proxy::{Body, Proxy};
use crate::table::{Registry, Scope};
use crate::upstream::{Buf, Pool};

/// A client has this long to finish its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// A cleartext client has this long to send the bytes that tell HTTP/2's preface from HTTP/1.
const FIRST_BYTES: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("--router-admin {0} is not on loopback: set an admin token")]
    AdminNeedsToken(String),
    #[error("access log {0}: {1}")]
    AccessLog(PathBuf, std::io::Error),
    #[error(transparent)]
    Client(#[from] berth_api::ClientError),
    #[error(transparent)]
    Join(#[from] berth_api::join::JoinError),
}

#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The control plane to follow.
    pub server: String,
    /// Where the router keeps its credential, got once with `join_token`.
    pub credential_file: PathBuf,
    /// What to trust of an `https://` server (see `berth_api::join::member_trust`): a CA file,
    /// else the CA kept when joining, else this CA fingerprint for the first join.
    pub ca_file: Option<PathBuf>,
    pub ca_fingerprint: Option<String>,
    /// The server's join token, presented when there is no credential yet.
    pub join_token: Option<String>,
    pub http: String,
    pub admin: String,
    pub admin_token: Option<String>,
    pub zone: String,
    /// Every app answers as `NAME.GROUP.<domain>`; none: the server's.
    pub domain: Option<String>,
    /// JSON-lines access log; none when unset.
    pub access_log: Option<PathBuf>,
    /// How big the access log grows before it rotates, and how many files are kept (the
    /// current one included): it never takes more than `bytes` x `files` on disk.
    pub access_log_limit: LogLimit,
    /// Worker threads serving traffic, each with its own runtime, listener and upstream pool.
    pub workers: usize,
    /// The largest request body accepted (bodies are buffered so that a retry can resend them).
    pub max_body: usize,
    /// HTTPS, terminated here with these PEM files.
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub listen: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A TLS acceptor for the certificate chain and key in PEM files, offering HTTP/2 and HTTP/1.1.
fn tls_acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, RouterError> {
    berth_tls::acceptor(&tls.cert, &tls.key).map_err(|e| RouterError::Tls(e.to_string()))
}

pub struct Router {
    pub http_addr: SocketAddr,
    pub https_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    access: Option<Arc<AccessLog>>,
    /// Why the server refused this router's credential, once it did (`berth router rm`).
    refused: watch::Receiver<Option<String>>,
}

/// A listening socket that other workers can bind too (`SO_REUSEPORT`): the kernel spreads
/// connections over them. Must run inside a runtime.
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Binds `listen` (resolving port 0 here, so every worker shares the port) and starts `count`
/// workers on it; returns the bound address. With `tls`, the workers terminate HTTPS.
async fn start_workers(
    listen: &str,
    count: usize,
    tls: Option<TlsAcceptor>,
    proxy: &Arc<Proxy>,
    shutdown: &watch::Receiver<bool>,
    workers: &mut Vec<std::thread::JoinHandle<()>>,
) -> Result<SocketAddr, RouterError> {
    let err = |e| RouterError::Listen(listen.to_string(), e);
    let wanted = tokio::net::lookup_host(listen)
        .await
        .map_err(err)?
        .next()
        .ok_or_else(|| RouterError::Listen(listen.to_string(), std::io::ErrorKind::NotFound.into()))?;
    let listener = reuseport_listener(wanted).map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    let mut first = Some(listener.into_std().map_err(err)?);
    let kind = if tls.is_some() { "https" } else { "http" };
    for index in 0..count.max(1) {
        let name = format!("berth-{kind}-{index}");
        workers
            .push(spawn_worker(name, first.take(), addr, tls.clone(), proxy.clone(), shutdown.clone()).map_err(err)?);
    }
    Ok(addr)
}

/// One traffic worker: a thread with a single-threaded runtime, so a request, its upstream
/// connection and their wakeups never cross threads (the nginx worker model).
fn spawn_worker(
    name: String,
    listener: Option<std::net::TcpListener>,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let index = name.clone();
    std::thread::Builder::new().name(name).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, worker = index, "cannot start a router worker");
                return;
            }
        };
        runtime.block_on(async move {
            let listener = match listener {
                Some(l) => TcpListener::from_std(l),
                None => reuseport_listener(addr),
            };
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, worker = index, %addr, "router worker cannot listen");
                    return;
                }
            };
            let pool = Arc::new(Pool::default());
            tokio::spawn(upstream::sweep_forever(pool.clone()));
            serve_traffic(listener, tls, shutdown, proxy, pool).await;
        });
    })
}

/// Accepts until shutdown, handing each connection to `conn`.
async fn accept_loop<F, Fut>(listener: TcpListener, mut shutdown: watch::Receiver<bool>, conn: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(conn(stream, remote));
    }
}

/// Traffic: HTTP/1 on the router's own path, HTTP/2 (prior knowledge on cleartext, ALPN `h2`
/// over TLS) through hyper.
async fn serve_traffic(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
    proxy: Arc<Proxy>,
    pool: Arc<Pool>,
) {
    accept_loop(listener, shutdown, move |stream, remote| {
        let (proxy, pool, tls) = (proxy.clone(), pool.clone(), tls.clone());
        async move {
            let Some(acceptor) = tls else {
                let mut stream = stream;
                let mut buf = Buf::with_capacity(8 * 1024);
                // Read until the bytes either are the HTTP/2 preface or cannot become it.
                while buf.filled().len() < h1::H2_PREFACE.len() && h1::H2_PREFACE.starts_with(buf.filled()) {
                    match tokio::time::timeout(FIRST_BYTES, buf.fill(&mut stream)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    }
                }
                if buf.filled().starts_with(h1::H2_PREFACE) {
                    serve_h2(proxy, pool, Prefixed { prefix: buf.take(), pos: 0, inner: stream }, remote, false).await;
                } else {
                    proxy.serve_h1(pool, stream, buf, remote, false).await;
                }
                return;
            };
            let secure = match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                Ok(Ok(secure)) => secure,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %remote, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            if secure.get_ref().1.alpn_protocol() == Some(b"h2") {
                serve_h2(proxy, pool, secure, remote, true).await;
            } else {
                proxy.serve_h1(pool, secure, Buf::with_capacity(8 * 1024), remote, true).await;
            }
        }
    })
    .await;
}

async fn serve_h2<S>(proxy: Arc<Proxy>, pool: Arc<Pool>, io: S, remote: SocketAddr, https: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| proxy.clone().handle_h2(pool.clone(), req, remote, https));
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), svc);
    if let Err(e) = served.await {
        tracing::debug!(error = %e, %remote, "HTTP/2 connection ended with an error");
    }
}

/// A stream whose first bytes were already read: they are read again first.
struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(out.remaining());
            out.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The admin API, served by hyper (HTTP/1 and HTTP/2).
async fn serve<F, Fut>(listener: TcpListener, handler: F, shutdown: watch::Receiver<bool>)
where
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<hyper::Response<Body>, std::convert::Infallible>> + Send + 'static,
{
    accept_loop(listener, shutdown, move |stream, remote| {
        let handler = handler.clone();
        async move {
            let svc = service_fn(&handler);
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
        }
    })
    .await;
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// This machine's name, for the router's id at the control plane.
fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "router".into())
}

impl Router {
    pub async fn start(config: RouterConfig) -> Result<Router, RouterError> {
        // Settle everything that can be refused before anything starts.
        let acceptor = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let admin = TcpListener::bind(&config.admin).await.map_err(|e| RouterError::Listen(config.admin.clone(), e))?;
        let admin_addr = admin.local_addr().map_err(|e| RouterError::Listen(config.admin.clone(), e))?;
        if !is_loopback(&admin_addr) && config.admin_token.is_none() {
            return Err(RouterError::AdminNeedsToken(admin_addr.to_string()));
        }
        let mut tasks = Vec::new();
        // A shard per worker thread, HTTP/1 and TLS fronts alike, plus room for the admin's.
        let access = match &config.access_log {
            Some(path) => Some(
                AccessLog::open(path, config.access_log_limit, 2 * config.workers + 2)
                    .map_err(|e| RouterError::AccessLog(path.clone(), e))?,
            ),
            None => None,
        };
        // A router is known by its credential once it has one; its first id names its machine
        // and admin port.
        let trust = berth_api::join::member_trust(
            &config.credential_file,
            config.ca_file.as_deref(),
            config.ca_fingerprint.as_deref(),
        )?;
        let client = Client::with_trust(&config.server, &trust)?;
        let first_id = format!("{}-{}", host_name(), admin_addr.port());
        let token = config.join_token.as_deref();
        let credential =
            berth_api::join::load_or_join(&client, &config.credential_file, &first_id, Member::Router, token).await?;
        let router_id = berth_api::join::credential_id(&credential).unwrap_or(&first_id).to_string();
        let client = client.with_credential(credential).with_request_timeout(Duration::from_secs(15));
        let proxy = Arc::new(Proxy::new(access.clone()).with_max_body(config.max_body));
        let registry = Arc::new(Registry::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (applied_tx, applied_rx) = watch::channel(0u64);
        let (refused_tx, refused) = watch::channel(None);
        let scope = Scope {
            zone: config.zone.clone(),
            domain: config.domain.as_deref().map(|d| d.trim_matches('.').to_ascii_lowercase()),
        };
        tasks.push(tokio::spawn(discovery::follow(
            client.clone(),
            proxy.clone(),
            registry.clone(),
            scope,
            applied_tx,
            refused_tx.clone(),
            shutdown_rx.clone(),
        )));
        let mut workers = Vec::new();
        let count = config.workers;
        let http_addr = start_workers(&config.http, count, None, &proxy, &shutdown_rx, &mut workers).await?;
        let https_addr = match (&config.tls, acceptor) {
            (Some(tls), Some(acceptor)) => {
                Some(start_workers(&tls.listen, count, Some(acceptor), &proxy, &shutdown_rx, &mut workers).await?)
            }
            _ => None,
        };
        let reporter = discovery::Reporter { id: router_id, zone: config.zone.clone(), admin: admin_addr.to_string() };
        tasks.push(tokio::spawn(discovery::report(
            client.clone(),
            reporter,
            proxy.clone(),
            applied_rx.clone(),
            refused_tx,
            shutdown_rx.clone(),
        )));
        let admin_state =
            Arc::new(admin::Admin { proxy, registry, client, token: config.admin_token.clone(), applied: applied_rx });
        tasks.push(tokio::spawn(serve(admin, move |req| admin_state.clone().handle(req), shutdown_rx)));
        tracing::info!(%http_addr, %admin_addr, zone = %config.zone, domain = config.domain.as_deref().unwrap_or("the server's"), "berth router listening");
        Ok(Router { http_addr, https_addr, admin_addr, shutdown, tasks, workers, access, refused })
    }

    /// Waits until the server refuses this router's credential, and says why. A removed router
    /// should stop serving: its process exits non-zero rather than serve a table it no longer
    /// follows.
    pub async fn refused(&mut self) -> String {
        match self.refused.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        let workers = self.workers;
        let joined = tokio::task::spawn_blocking(move || workers.into_iter().for_each(|w| drop(w.join())));
        let _ = tokio::time::timeout(Duration::from_secs(5), joined).await;
        // The workers are done: every line they finished reaches the file.
        if let Some(access) = self.access {
            let _ = tokio::task::spawn_blocking(move || access.close()).await;
        }
    }
}
