//! The control plane: the `/v1` API over the store, and the loop that reconciles desired
//! state with what the agents report.

mod alerts;
mod apply;
mod cluster;
mod deployments;
mod exec;
mod forward;
mod hosts;
mod http;
mod jobs;
mod logs;
mod outputs;
mod reconciler;
mod relay;
mod routes;
mod secrets;
mod shared_ca;
mod traffic;
mod usage;
mod views;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::Millis;
use berth_store::{RedbStore, State, Store, StoreError};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use alerts::AlertConfig;
pub use http::credentials::JOIN_TOKEN_FILE;
pub use http::tokens::ADMIN_TOKEN_FILE;
pub use logs::LogLimits;
pub use reconciler::Tuning;
pub use secrets::SECRETS_KEY_FILE;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("join token: {0}")]
    JoinToken(#[from] http::credentials::JoinTokenError),
    #[error("admin token: {0}")]
    AdminToken(#[from] http::tokens::AdminTokenError),
    #[error("secrets key: {0}")]
    SecretsKey(#[from] secrets::SecretsKeyError),
    #[error("TLS: {0}")]
    Tls(#[from] berth_tls::TlsError),
}

/// How the API is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Plain HTTP: on loopback, or beyond it when `insecure_unauthenticated` says so.
    Off,
    /// HTTPS with a CA of the server's own and a certificate it signs for `names` (and for
    /// localhost and the API's address), made at first start under `dir`.
    Own { dir: PathBuf, names: Vec<String> },
    /// HTTPS with a chain and key of the operator's own PKI (PEM files).
    Files { cert: PathBuf, key: PathBuf },
}

impl Tls {
    /// What is served: tokens never cross a network in clear text unless the operator says so,
    /// so beyond loopback `Off` is HTTPS with a CA of the server's own (beside its `data_dir`).
    fn chosen(&self, loopback: bool, insecure: bool, data_dir: &std::path::Path) -> Tls {
        match self {
            Tls::Off if !loopback && !insecure => Tls::Own { dir: data_dir.with_file_name("tls"), names: vec![] },
            other => other.clone(),
        }
    }
}

/// The API's TLS as it runs: what agents and people trust it by.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The CA's certificate file, when the server made its own.
    pub ca_file: Option<PathBuf>,
    /// `sha256:HEX` of that CA: what `berth agent --ca-fingerprint` pins.
    pub ca_fingerprint: Option<String>,
    /// Made at this start.
    pub made: bool,
}

/// Where the records are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded database, one file: one server, the default.
    Redb(PathBuf),
    /// An etcd cluster: what several servers share.
    Etcd(berth_store::EtcdConfig),
}

impl StoreLocation {
    /// `redb://PATH` or `etcd://HOST:PORT[,HOST:PORT...]` (with `prefix`, and the members'
    /// `max_txn_ops`; etcd over TLS with `tls`).
    pub fn parse(
        url: &str,
        prefix: &str,
        max_txn_ops: usize,
        tls: Option<berth_store::EtcdTls>,
    ) -> Result<Self, StoreError> {
        if let Some(path) = url.strip_prefix("redb://") {
            if tls.is_some() {
                return Err(StoreError::Backend("the etcd TLS flags are for an etcd:// store".into()));
            }
            if path.is_empty() {
                return Err(StoreError::Backend(format!("`{url}`: a redb store is written redb://PATH")));
            }
            return Ok(StoreLocation::Redb(PathBuf::from(path)));
        }
        if url.starts_with("etcd://") {
            let mut config = berth_store::EtcdConfig::parse(url, prefix)?;
            config.max_txn_ops = max_txn_ops;
            config.tls = tls;
            return Ok(StoreLocation::Etcd(config));
        }
        Err(StoreError::Backend(format!("`{url}`: a store is redb://PATH or etcd://HOST:PORT[,HOST:PORT...]")))
    }

    /// `redb:///path` or `etcd://a:2379,...`, for messages.
    pub fn url(&self) -> String {
        match self {
            StoreLocation::Redb(path) => format!("redb://{}", path.display()),
            StoreLocation::Etcd(config) => config.url(),
        }
    }

    /// Opens the store (for redb: creating its directory and file).
    pub fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            StoreLocation::Redb(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
                }
                Arc::new(RedbStore::open(path)?)
            }
            StoreLocation::Etcd(config) => Arc::new(berth_store::EtcdStore::connect(config.clone())?),
        })
    }

    /// For the election and the servers' presence: a client of every member (the store's own
    /// client runs on a runtime of its own, for its synchronous reads).
    async fn link(&self) -> Result<Option<cluster::EtcdLink>, StoreError> {
        let StoreLocation::Etcd(config) = self else { return Ok(None) };
        let mut clients = Vec::new();
        for endpoint in &config.endpoints {
            // Lazy: a member down now is tried when a request comes.
            let client = etcd_client::Client::connect([endpoint], Some(config.connect_options()?))
                .await
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", config.url())))?;
            clients.push(client);
        }
        Ok(Some(cluster::EtcdLink { clients: Arc::new(clients), at: Arc::default(), prefix: config.prefix.clone() }))
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Where the records are; none: `data_dir/state.redb`.
    pub store: Option<StoreLocation>,
    /// This server's name among those sharing a store; none: the one in `data_dir/server.id`,
    /// made at first start.
    pub server_id: Option<String>,
    /// The URL the other servers reach this one's API at; none: `SCHEME://` the bound address.
    pub advertise: Option<String>,
    pub api_addr: String,
    pub tuning: Tuning,
    /// Sinks every app's log lines are forwarded to.
    pub log_sinks: Vec<berth_core::Output>,
    pub alerts: AlertConfig,
    /// Every app answers as `NAME.GROUP.<domain>` on the routers; those names are its own.
    pub domain: String,
    /// Serve the API in plain HTTP beyond loopback: tokens cross the network in clear text.
    pub insecure_unauthenticated: bool,
    /// HTTPS, or not. Beyond loopback, `Off` becomes `Own` unless `insecure_unauthenticated`.
    pub tls: Tls,
    /// The secret agents join with (`--join-token`); none: the one kept in `join_token_file`,
    /// made at first start.
    pub join_token: Option<String>,
    /// Where a made join token is kept (`<data-dir>/join.token`).
    pub join_token_file: PathBuf,
    /// Where the admin token made at first start is written (`<data-dir>/admin.token`).
    pub admin_token_file: PathBuf,
    /// The key secrets are sealed with, kept apart from the store (`<data-dir>/secrets.key`,
    /// made at first start).
    pub secrets_key_file: PathBuf,
}

/// Shared by handlers and the reconcile loop. One allocation behind an `Arc`: axum clones the
/// state for every request (and once more for each middleware), and cloning every field, some
/// of them strings and vectors, cost 9 % of the server's CPU with 1,000 agents.
#[derive(Clone)]
pub(crate) struct Shared(Arc<Parts>);

impl std::ops::Deref for Shared {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

pub(crate) struct Parts {
    pub state: State,
    /// Last heartbeat per node, kept in memory: heartbeats are frequent and need not survive a restart.
    pub heartbeats: Arc<Mutex<HashMap<String, Millis>>>,
    /// Why an app's instances are missing, from the last reconcile.
    pub pending: Arc<Mutex<HashMap<String, berth_plan::Pending>>>,
    /// Each router's last report and when it came, in memory: routers report several times a second.
    pub routers: Arc<Mutex<HashMap<String, (Millis, berth_api::RouterReport)>>>,
    pub logs: Arc<logs::LogStore>,
    pub forwarders: Arc<forward::Forwarders>,
    pub usage: Arc<usage::UsageStore>,
    /// Each app's requests, latency and bytes over the last hour, for the console's charts.
    pub traffic: Arc<traffic::TrafficStore>,
    pub alerts: Arc<Mutex<alerts::AlertState>>,
    pub alert_config: AlertConfig,
    /// Each output's last health check, by its name (`outputs.rs`).
    pub outputs: Arc<Mutex<std::collections::BTreeMap<String, berth_api::OutputStatus>>>,
    /// Turns true when the server stops; background tasks started on demand watch it.
    pub shutdown: watch::Receiver<bool>,
    pub started_at: Millis,
    pub tuning: Tuning,
    /// The routers' wildcard domain (see `ServerConfig::domain`).
    pub domain: String,
    /// Commands on their way to instances and back.
    pub execs: Arc<exec::Execs>,
    /// SHA-256 of the join token, hex.
    pub join_digest: Arc<str>,
    /// Credentials and heartbeats already checked against the store at a revision: while the
    /// store has not moved, the same answer holds without reading it again.
    pub seen: Mutex<Seen>,
    /// Requests answered since start, per method, route and status class (`/metrics`): how hard
    /// the agents and clients press on the server, as after a restart.
    pub requests: Mutex<RequestCounts>,
    /// What secrets are sealed with.
    pub secrets: secrets::SecretsKey,
    /// Unauthenticated attempts written to the audit log lately, per address.
    pub refusals: Mutex<http::audit::Refusals>,
    /// The CA the server made for its TLS, PEM: handed to members when they join.
    pub ca_pem: Option<String>,
    /// This server among those sharing the store.
    pub cluster: cluster::Cluster,
    /// Requests handed to the leader go through this client (`relay.rs`).
    pub relay: reqwest::Client,
}

/// Requests by route template (`/v1/nodes/{id}/heartbeat`, or `unmatched`), then by method and
/// status class (2 for 2xx, ...). Looked up by the route's text: counting allocates nothing.
pub(crate) type RequestCounts = HashMap<String, HashMap<(axum::http::Method, u16), u64>>;

/// What a heartbeat says: the ports taken and the drivers down.
pub(crate) type Beat = (Option<Vec<u16>>, Option<Vec<berth_core::spec::DriverKind>>);

/// What agents' requests last found in the store, valid while its revision stays the same.
#[derive(Default)]
pub(crate) struct Seen {
    pub revision: u64,
    /// Member id to its credential record.
    pub credentials: HashMap<String, http::credentials::Credential>,
    /// API token id to its record.
    pub tokens: HashMap<String, http::tokens::ApiToken>,
    /// Node id to what its last heartbeat said (ports taken, drivers down), once the node's
    /// record agreed.
    pub beats: HashMap<String, Beat>,
    /// Every node record, decoded: alerts, route snapshots and statuses ask for them.
    pub nodes: Option<Arc<Vec<berth_core::Node>>>,
}

impl Seen {
    /// What was seen as of `revision`, forgetting all of it when the store moved past it; none
    /// when `revision` is older than what is kept (that knowledge is stale already).
    pub fn at(&mut self, revision: u64) -> Option<&mut Self> {
        if revision < self.revision {
            return None;
        }
        if revision > self.revision {
            self.revision = revision;
            self.credentials.clear();
            self.tokens.clear();
            self.beats.clear();
            self.nodes = None;
        }
        Some(self)
    }
}

/// What the server proves and checks identities with.
pub(crate) struct Keys {
    /// SHA-256 of the join token, hex.
    pub join_digest: String,
    pub secrets: secrets::SecretsKey,
    /// The CA the server made for its TLS, PEM.
    pub ca_pem: Option<String>,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        tuning: Tuning,
        log_dir: PathBuf,
        log_sinks: Vec<berth_core::Output>,
        alert_config: AlertConfig,
        shutdown: watch::Receiver<bool>,
        (domain, keys): (String, Keys),
        (cluster, relay): (cluster::Cluster, reqwest::Client),
    ) -> Result<Self, StoreError> {
        let Keys { join_digest, secrets, ca_pem } = keys;
        Ok(Shared(Arc::new(Parts {
            logs: Arc::new(logs::LogStore::new(log_dir, tuning.logs)),
            forwarders: Arc::new(forward::Forwarders::new(log_sinks)),
            usage: Arc::default(),
            traffic: Arc::default(),
            alerts: Arc::default(),
            alert_config,
            outputs: Arc::default(),
            shutdown,
            state: State::new(store)?,
            heartbeats: Arc::default(),
            pending: Arc::default(),
            routers: Arc::default(),
            started_at: now_ms(),
            tuning,
            domain,
            execs: Arc::default(),
            join_digest: Arc::from(join_digest),
            seen: Mutex::default(),
            requests: Mutex::default(),
            secrets,
            refusals: Mutex::default(),
            ca_pem,
            cluster,
            relay,
        })))
    }
}

pub(crate) use berth_core::lock;
pub use berth_core::now_ms;

impl Shared {
    /// Every instance record, at least as new as the store's revision when called, shared with
    /// every other reader of that revision.
    pub(crate) fn instances(&self) -> Result<berth_store::state::InstanceSet, StoreError> {
        self.state.instances()
    }

    /// Every node record, decoded once per store revision and kept for it, as `seen_record`
    /// does: any write forgets it. Alerts, routes and statuses ask every second or more.
    pub(crate) fn nodes(&self) -> Result<Arc<Vec<berth_core::Node>>, StoreError> {
        let revision = self.state.store().revision();
        if let Some(known) = lock(&self.seen).at(revision).and_then(|seen| seen.nodes.clone()) {
            return Ok(known);
        }
        let nodes: Arc<Vec<berth_core::Node>> = Arc::new(self.state.nodes()?.into_iter().map(|n| n.value).collect());
        if let Some(seen) = lock(&self.seen).at(revision) {
            seen.nodes = Some(nodes.clone());
        }
        Ok(nodes)
    }

    /// The nodes marked disconnected.
    pub(crate) fn cut_off_nodes(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        Ok(self
            .nodes()?
            .iter()
            .filter(|n| n.status == berth_core::NodeStatus::Disconnected)
            .map(|n| n.id.clone())
            .collect())
    }

    /// The record at `key`, from what was already read at the store's current revision when it
    /// can be (`kept` picks which map of `Seen`), else from the store, then kept. The revision is
    /// read before the record: a write in between clears what is kept at the next look.
    pub(crate) fn seen_record<T: Clone + serde::de::DeserializeOwned>(
        &self,
        kept: fn(&mut Seen) -> &mut HashMap<String, T>,
        id: &str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let revision = self.state.store().revision();
        if let Some(known) = lock(&self.seen).at(revision).and_then(|seen| kept(seen).get(id).cloned()) {
            return Ok(Some(known));
        }
        let Some(found) = self.state.record::<T>(key)? else { return Ok(None) };
        if let Some(seen) = lock(&self.seen).at(revision) {
            kept(seen).insert(id.to_string(), found.value.clone());
        }
        Ok(Some(found.value))
    }

    pub(crate) fn with_heartbeat(&self, mut node: berth_core::Node) -> berth_core::Node {
        if let Some(beat) = lock(&self.heartbeats).get(&node.id) {
            node.last_heartbeat = node.last_heartbeat.max(*beat);
        }
        node
    }
}

/// The file a server keeps its id in, under its data dir.
pub const SERVER_ID_FILE: &str = "server.id";

/// This server's id: the one given, else the one kept in the data dir, else a new one kept there.
fn server_id(config: &ServerConfig) -> Result<String, ServerError> {
    if let Some(id) = &config.server_id {
        return Ok(id.clone());
    }
    let path = config.data_dir.join(SERVER_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ServerError::DataDir(path, e)),
    }
    let id = format!("server-{:08x}", rand::random::<u32>());
    std::fs::write(&path, format!("{id}\n")).map_err(|e| ServerError::DataDir(path, e))?;
    Ok(id)
}

/// The names a made server certificate is good for: loopback's, this machine's, the API's
/// address when it names one, and those asked for.
fn certificate_names(api_addr: &str, asked: &[String]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        names.push(host.trim().to_string());
    }
    let host = api_addr.rsplit_once(':').map_or(api_addr, |(h, _)| h).trim_matches(['[', ']']);
    let unspecified = host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified());
    if !host.is_empty() && !unspecified {
        names.push(host.to_string());
    }
    names.extend(asked.iter().cloned());
    names.retain(|n| !n.is_empty());
    names.sort();
    names.dedup();
    names
}

/// The API over TLS: each connection's handshake, then HTTP/1.1 or HTTP/2 (by ALPN), with the
/// peer's address for the audit log. Stops taking connections when the server stops.
async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an API connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                tower::ServiceExt::oneshot(app.clone(), req)
            });
            let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, %peer, "API connection ended with an error");
            }
        });
    }
}

/// How many secrets the store holds, and the key the first was sealed with; none when it holds
/// none (a new key may then be made).
fn sealed_secrets(store: &dyn Store) -> Result<Option<(usize, String)>, StoreError> {
    let entries = store.list("secrets/")?;
    let Some(first) = entries.first() else { return Ok(None) };
    let record: secrets::SecretRecord = serde_json::from_slice(&first.value)
        .map_err(|e| StoreError::Corrupt { key: first.key.clone(), why: e.to_string() })?;
    Ok(Some((entries.len(), record.key_id)))
}

/// For fuzzing (`berth-fuzz api`): what the API does with a request body it is sent.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses `body` as every request body the API takes (none may panic); returns how many
    /// read it as theirs.
    pub fn parse_every_body(body: &[u8]) -> usize {
        crate::http::parse_every_body(body)
    }
}

/// A domain as the routers match it: lower case, no leading or trailing dot.
pub fn normal_domain(domain: &str) -> String {
    domain.trim_matches('.').to_ascii_lowercase()
}

/// A running control plane.
pub struct Server {
    pub addr: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    pub tls: Option<TlsInfo>,
    /// The secret agents join with.
    pub join_token: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Opens the store under `data_dir`, binds the API and starts the reconcile loop.
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        // Refused before anything listens: the API deploys commands.
        let loopback = std::net::ToSocketAddrs::to_socket_addrs(&config.api_addr.as_str())
            .map(|mut addrs| addrs.all(|a| a.ip().is_loopback()))
            .unwrap_or(true);
        std::fs::create_dir_all(&config.data_dir).map_err(|e| ServerError::DataDir(config.data_dir.clone(), e))?;
        let location = config.store.clone().unwrap_or_else(|| StoreLocation::Redb(config.data_dir.join("state.redb")));
        // The etcd client's own runtime is started and waited for from here.
        let store = tokio::task::spawn_blocking(move || location.open().map(|s| (s, location)))
            .await
            .map_err(|e| StoreError::Backend(format!("opening the store: {e}")))??;
        let (store, location) = store;
        let server_id = server_id(&config)?;
        tracing::info!(store = %location.url(), revision = store.revision(), server = %server_id, "store open");
        // Made before the port opens: whoever sees the port answer finds the token file there.
        let join_token = http::credentials::join_token(&config.join_token_file, config.join_token.clone())?;
        let secrets_key = secrets::SecretsKey::load_or_make(&config.secrets_key_file, sealed_secrets(&*store)?)?;
        tracing::info!(key = secrets_key.id(), path = %config.secrets_key_file.display(), "secrets are sealed with this key");
        let tls = config.tls.chosen(loopback, config.insecure_unauthenticated, &config.data_dir);
        let (acceptor, tls_info, ca_pem) = match &tls {
            Tls::Off => (None, None, None),
            Tls::Files { cert, key } => {
                let info = TlsInfo { ca_file: None, ca_fingerprint: None, made: false };
                (Some(berth_tls::acceptor(cert, key)?), Some(info), None)
            }
            Tls::Own { dir, names } => {
                let names = certificate_names(&config.api_addr, names);
                let identity = match location {
                    // Servers sharing a store share one CA: whoever trusts one trusts them all.
                    StoreLocation::Etcd(_) => shared_ca::identity(&*store, &secrets_key, dir, &names)?,
                    StoreLocation::Redb(_) => berth_tls::own_identity(dir, &names)?,
                };
                let info = TlsInfo {
                    ca_file: Some(dir.join(berth_tls::CA_FILE)),
                    ca_fingerprint: Some(identity.ca_fingerprint.clone()),
                    made: identity.made,
                };
                if identity.made {
                    tracing::info!(ca = %identity.ca_fingerprint, dir = %dir.display(), "made a CA and a server certificate");
                }
                (Some(berth_tls::acceptor(&identity.cert, &identity.key)?), Some(info), Some(identity.ca_pem))
            }
        };
        let listener =
            TcpListener::bind(&config.api_addr).await.map_err(|e| ServerError::Listen(config.api_addr.clone(), e))?;
        let addr = listener.local_addr().map_err(|e| ServerError::Listen(config.api_addr.clone(), e))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let scheme = if tls_info.is_some() { "https" } else { "http" };
        let etcd = location.link().await?;
        let cluster = cluster::Cluster {
            id: server_id.clone(),
            api: config.advertise.clone().unwrap_or_else(|| format!("{scheme}://{addr}")),
            started_at: now_ms(),
            store: location.url(),
            etcd,
        };
        // The leader is trusted as this server is: by the CA it made (servers sharing a store
        // share their TLS directory, or the operator's certificate).
        let relay_trust = match (&tls, &ca_pem) {
            (_, Some(pem)) => berth_tls::Trust::Ca(pem.clone()),
            (Tls::Files { cert, .. }, None) => berth_tls::Trust::ca_file(cert)?,
            _ => berth_tls::Trust::Nothing,
        };
        let relay = berth_tls::http_builder_trusting(&relay_trust)?
            .connect_timeout(Duration::from_secs(3))
            .http1_only()
            .build()
            .map_err(|e| StoreError::Backend(format!("the relay's HTTP client: {e}")))?;
        let shared = Shared::new(
            store,
            config.tuning,
            config.data_dir.join("logs"),
            config.log_sinks.clone(),
            config.alerts.clone(),
            shutdown_rx.clone(),
            (
                normal_domain(&config.domain),
                Keys { join_digest: http::credentials::digest(&join_token), secrets: secrets_key, ca_pem },
            ),
            (cluster, relay),
        )?;
        if matches!(location, StoreLocation::Etcd(_)) {
            let slot = shared.state.claim_writer_slot(&server_id)?;
            tracing::debug!(slot, "numbering events and audit entries in this server's slot");
        }
        hosts::backfill(&shared.state, &shared.domain, now_ms())?;
        if http::tokens::bootstrap(&shared, &config.admin_token_file)? {
            tracing::info!(path = %config.admin_token_file.display(), "admin token written");
        }

        let app = http::router(shared.clone());
        let mut http_shutdown = shutdown_rx.clone();
        let http = match acceptor {
            Some(acceptor) => tokio::spawn(serve_tls(listener, acceptor, app, shutdown_rx.clone())),
            None => tokio::spawn(async move {
                // As a make-service the router is shared by every connection; served as it is, axum
                // would rebuild its route table for each one (18 KB a connection, 100 agents).
                // With each connection's peer address, for the audit log.
                let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                    .with_graceful_shutdown(async move {
                        let _ = http_shutdown.wait_for(|stop| *stop).await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "api server stopped");
                }
            }),
        };
        let mut tasks = vec![http];
        match shared.cluster.etcd.clone() {
            // Alone, this server leads from the start.
            None => tasks.extend(cluster::start_loops(&shared, shared.started_at)),
            Some(link) => tasks.push(tokio::spawn(cluster::run(shared.clone(), link))),
        }
        tracing::info!(%addr, server = %shared.cluster.id, "berth server listening");
        Ok(Server { addr, scheme, tls: tls_info, join_token, shutdown, tasks })
    }

    /// The API's URL: `https://ADDR` or `http://ADDR`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

#[cfg(test)]
mod tls_tests {
    use super::Tls;
    use std::path::Path;

    #[test]
    fn beyond_loopback_the_api_is_https_unless_told_otherwise() {
        let data = Path::new("/d/server");
        let own = Tls::Own { dir: "/d/tls".into(), names: vec![] };
        assert_eq!(Tls::Off.chosen(true, false, data), Tls::Off, "loopback: plain, as berth up on a laptop");
        assert_eq!(Tls::Off.chosen(false, false, data), own);
        assert_eq!(Tls::Off.chosen(false, true, data), Tls::Off, "--insecure-unauthenticated");
        let files = Tls::Files { cert: "c".into(), key: "k".into() };
        assert_eq!(files.chosen(false, false, data), files);
    }

    #[test]
    fn a_made_certificate_names_loopback_this_machine_and_the_api_address() {
        let names = super::certificate_names("10.1.2.3:7070", &["berth.example".into()]);
        for name in ["localhost", "127.0.0.1", "::1", "10.1.2.3", "berth.example"] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        assert!(!super::certificate_names("0.0.0.0:7070", &[]).iter().any(|n| n == "0.0.0.0"));
        assert!(super::certificate_names("[::1]:7070", &[]).iter().any(|n| n == "::1"));
    }
}

#[cfg(test)]
mod seen_tests {
    use super::Seen;

    #[test]
    fn what_was_seen_holds_until_the_store_moves_and_stale_knowledge_is_not_kept() {
        let mut seen = Seen::default();
        seen.at(5).unwrap().beats.insert("n1".into(), (None, None));
        assert!(seen.at(5).unwrap().beats.contains_key("n1"));
        assert!(seen.at(4).is_none(), "read before what is kept: not recorded");
        assert!(seen.at(5).unwrap().beats.contains_key("n1"), "and it cleared nothing");
        assert!(seen.at(6).unwrap().beats.is_empty(), "any write forgets it all");
    }
}
