//! `berth up`, `berth server`, `berth agent`: the long-running processes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use berth_agent::{Agent, AgentConfig, DriverChoice, PullPolicy};
use berth_core::Dur;
use berth_router::{Router, RouterConfig};
use berth_server::{Server, ServerConfig, Tuning};

use super::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverArg {
    Auto,
    Docker,
    Exec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullArg {
    Missing,
    Never,
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/berth"),
        None => PathBuf::from(".berth"),
    }
}

fn parse_range(text: &str) -> Result<(u16, u16), String> {
    let (low, high) = text.split_once('-').ok_or_else(|| format!("`{text}` is not a range like 20000-29999"))?;
    let low: u16 = low.trim().parse().map_err(|_| format!("`{low}` is not a port"))?;
    let high: u16 = high.trim().parse().map_err(|_| format!("`{high}` is not a port"))?;
    if low == 0 || low > high {
        return Err(format!("`{text}` is an empty range"));
    }
    Ok((low, high))
}

/// A pool's name: what `berth pool set` and constraints on `pool` name it by.
fn parse_pool(text: &str) -> Result<String, String> {
    berth_core::spec::check_label(text).map(|()| text.to_string())
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text.split_once('=').ok_or_else(|| format!("`{text}` is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("`{text}` has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

pub(crate) fn parse_dur(text: &str) -> Result<Dur, String> {
    Dur::parse(text)
}

/// The secret agents join the cluster with.
#[derive(Debug, clap::Args)]
pub struct JoinTokenOptions {
    /// The cluster's join secret. A server without one makes one at first start and keeps it in
    /// <data-dir>/join.token (mode 0600); an agent presents it once and keeps a credential of its own.
    #[arg(long = "join-token", env = "BERTH_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// Read the join token from this file (its first line), so that it does not show in `ps`.
    #[arg(long = "join-token-file", conflicts_with = "join_token")]
    join_token_file: Option<PathBuf>,
}

impl JoinTokenOptions {
    fn token(&self) -> anyhow::Result<Option<String>> {
        read_token(self.join_token.as_ref(), self.join_token_file.as_deref(), "--join-token-file")
    }
}

/// A secret given on the command line, or the first line of a file.
fn read_token(given: Option<&String>, file: Option<&std::path::Path>, flag: &str) -> anyhow::Result<Option<String>> {
    let Some(path) = file else {
        return Ok(given.cloned());
    };
    let text = super::read_capped(path, 4096, "a token file").context(flag.to_string())?;
    match text.lines().next().map(str::trim).filter(|t| !t.is_empty()) {
        Some(token) => Ok(Some(token.to_string())),
        None => anyhow::bail!("{flag} {}: the file is empty", path.display()),
    }
}

#[derive(Debug, clap::Args)]
pub struct NodeOptions {
    /// Address this node's instances answer on; published ports bind to it.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    /// Which drivers to offer: docker when an engine answers (auto), or only one.
    #[arg(long, value_enum, default_value_t = DriverArg::Auto)]
    driver: DriverArg,
    /// Host ports handed out to instances.
    #[arg(long, value_parser = parse_range, default_value = "20000-29999")]
    ports: (u16, u16),
    /// Cores offered to instances (default: all).
    #[arg(long)]
    cpu: Option<f64>,
    /// MiB offered to instances (default: all).
    #[arg(long)]
    memory: Option<u64>,
    /// Pull images that are not on the node, or never pull.
    #[arg(long, value_enum, default_value_t = PullArg::Missing)]
    pull: PullArg,
    /// A KEY=VALUE label for constraints; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The pool this node joins: groups bound to it place here first (`berth pool set`).
    #[arg(long, value_parser = parse_pool, default_value = berth_core::SHARED_POOL)]
    pool: String,
    /// Name of this node (default: the machine's hostname).
    #[arg(long)]
    hostname: Option<String>,
    /// How often each instance's cpu, memory, disk and network use is sampled.
    #[arg(long, value_parser = parse_dur, default_value = "5s")]
    metrics_interval: Dur,
}

impl NodeOptions {
    /// `trust`: the CA file and CA fingerprint the agent trusts an https:// server by.
    fn config(
        &self,
        server: &str,
        data_dir: PathBuf,
        join_token: Option<String>,
        trust: (Option<PathBuf>, Option<String>),
    ) -> anyhow::Result<AgentConfig> {
        if let Some(cpu) = self.cpu {
            anyhow::ensure!(cpu.is_finite() && cpu > 0.0, "--cpu: {cpu} is not a positive number of cores");
        }
        anyhow::ensure!(
            self.address.parse::<std::net::IpAddr>().is_ok(),
            "--address: `{}` is not an IP address",
            self.address
        );
        let hostname = self.hostname.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        });
        Ok(AgentConfig {
            server: server.to_string(),
            data_dir,
            hostname,
            address: self.address.clone(),
            cpu: self.cpu,
            memory: self.memory,
            ports: self.ports,
            labels: self.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
            pool: self.pool.clone(),
            driver: match self.driver {
                DriverArg::Auto => DriverChoice::Auto,
                DriverArg::Docker => DriverChoice::Docker,
                DriverArg::Exec => DriverChoice::Exec,
            },
            pull: match self.pull {
                PullArg::Missing => PullPolicy::Missing,
                PullArg::Never => PullPolicy::Never,
            },
            heartbeat: Duration::from_secs(2),
            metrics_interval: self.metrics_interval.as_duration().max(Duration::from_millis(200)),
            join_token,
            ca_file: trust.0,
            ca_fingerprint: trust.1,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct ServerOptions {
    /// Where state is kept.
    #[arg(long, default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// Where the records are kept: redb://PATH (default DATA_DIR/server/state.redb, for one
    /// server) or etcd://HOST:PORT[,HOST:PORT...] (an etcd cluster several servers share).
    #[arg(long, env = "BERTH_STORE")]
    store: Option<String>,
    /// In an etcd store, every key Berth writes starts with this.
    #[arg(long, default_value = "/berth")]
    store_prefix: String,
    /// The etcd members' --max-txn-ops (etcd's default is 128): larger changes are made in steps.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(16..))]
    store_max_txn_ops: u32,
    #[command(flatten)]
    store_tls: StoreTlsOptions,
    /// This server's name among those sharing a store (default: one made at first start and
    /// kept in DATA_DIR/server/server.id).
    #[arg(long)]
    server_id: Option<String>,
    /// The URL the other servers sharing the store reach this one's API at (default: the
    /// scheme and --api address).
    #[arg(long)]
    advertise: Option<String>,
    /// Address of the /v1 API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    api: String,
    /// A node silent this long is disconnected, and its instances are replaced (after their
    /// app's `max_disconnect`). Agents beat three times per timeout; in a cluster too large for
    /// that at 250 beats a second, beats come further apart and the timeout stretches.
    #[arg(long, value_parser = parse_dur, default_value = "5s")]
    node_timeout: Dur,
    /// Size of one app log file before it rotates (`64KiB`, `8MiB`, or bytes).
    #[arg(long, value_parser = parse_size, default_value = "8MiB")]
    log_file_size: u64,
    /// Log files kept per app, the current one included: an app's logs never take more than
    /// `--log-files` x `--log-file-size` on disk.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    log_files: u16,
    /// Forward every app's log lines here too (repeatable): syslog+tcp://HOST:PORT,
    /// syslog+udp://HOST:PORT or http://HOST:PORT/PATH (JSON lines).
    #[arg(long = "log-sink", value_parser = berth_core::Output::parse_logs)]
    log_sinks: Vec<berth_core::Output>,
    /// Send every alert here (repeatable; apps add their own with `alert_webhooks`):
    /// http://HOST/PATH posts each as JSON, alertmanager+http://HOST:PORT uses Alertmanager's v2 API.
    #[arg(long = "alert-webhook", value_parser = berth_core::Output::parse_alerts)]
    alert_webhooks: Vec<berth_core::Output>,
    /// Send alerts to this Prometheus Alertmanager too (its v2 API), e.g. http://127.0.0.1:9093;
    /// the same as --alert-webhook alertmanager+URL.
    #[arg(long, value_parser = parse_alertmanager)]
    alertmanager: Option<berth_core::Output>,
    /// A threshold rule for every app (repeatable): METRIC>VALUE[/FOR], e.g. cpu>90/5m.
    #[arg(long = "alert-rule", value_parser = berth_core::AlertRule::parse)]
    alert_rules: Vec<berth_core::AlertRule>,
    /// A firing alert is sent again this often.
    #[arg(long, value_parser = parse_dur, default_value = "4h")]
    alert_repeat: Dur,
    /// Every app answers as NAME.GROUP.<domain> on the routers; those names are reserved to it.
    #[arg(long, default_value = "berth.local", value_parser = parse_domain)]
    domain: String,
    /// Serve plain HTTP beyond loopback (tokens would cross the network in clear text): only on
    /// a network you trust. Without it, a server beyond loopback serves HTTPS.
    #[arg(long, conflicts_with_all = ["tls", "api_tls_cert"])]
    insecure_unauthenticated: bool,
    /// Serve HTTPS on loopback too, with a CA of the server's own (made at first start in
    /// DATA_DIR/tls; its fingerprint is printed). Beyond loopback this is the default.
    #[arg(long)]
    tls: bool,
    /// Serve the API's HTTPS with this certificate chain (PEM) of your own PKI, with
    /// --api-tls-key (`berth server` also takes them as --tls-cert and --tls-key).
    #[arg(long, requires = "api_tls_key")]
    api_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --api-tls-cert.
    #[arg(long, requires = "api_tls_cert")]
    api_tls_key: Option<PathBuf>,
    /// A further DNS name or IP address the made server certificate is for (repeatable);
    /// localhost, loopback, the hostname and the --api address are always in it.
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
    /// The key secrets are sealed with (made at first start when missing; default
    /// DATA_DIR/secrets.key). Keep it, and its backups, apart from the data dir's.
    #[arg(long, env = "BERTH_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    #[command(flatten)]
    join: JoinTokenOptions,
}

/// TLS to an etcd store's members (as Kubernetes' --etcd-cafile, --etcd-certfile, --etcd-keyfile).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreTlsOptions {
    /// The CA the etcd members' certificates are signed by: talk to them over TLS.
    #[arg(long, env = "BERTH_STORE_CA_FILE")]
    store_ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for members started with --client-cert-auth, with --store-key-file.
    #[arg(long, requires_all = ["store_key_file", "store_ca_file"], env = "BERTH_STORE_CERT_FILE")]
    store_cert_file: Option<PathBuf>,
    /// The private key (PEM) of --store-cert-file.
    #[arg(long, requires = "store_cert_file", env = "BERTH_STORE_KEY_FILE")]
    store_key_file: Option<PathBuf>,
}

impl StoreTlsOptions {
    pub fn tls(&self) -> Option<berth_store::EtcdTls> {
        let ca = self.store_ca_file.clone()?;
        let identity = self.store_cert_file.clone().zip(self.store_key_file.clone());
        Some(berth_store::EtcdTls { ca, identity })
    }
}

fn parse_domain(text: &str) -> Result<String, String> {
    let domain = berth_server::normal_domain(text);
    let ok = !domain.is_empty()
        && domain.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if ok { Ok(domain) } else { Err(format!("`{text}` is not a domain name")) }
}

fn parse_alertmanager(text: &str) -> Result<berth_core::Output, String> {
    let named = if text.starts_with("alertmanager+") { text.to_string() } else { format!("alertmanager+{text}") };
    berth_core::Output::parse_alerts(&named)
}

pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits.parse().map_err(|_| format!("`{text}` is not a size like 64KiB or 8MiB"))?;
    let factor = match unit {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use B, KiB, MiB or GiB)")),
    };
    n.checked_mul(factor).filter(|b| *b >= 1024).ok_or_else(|| format!("`{text}` must be at least 1KiB"))
}

impl ServerOptions {
    fn config(&self) -> anyhow::Result<ServerConfig> {
        Ok(ServerConfig {
            join_token: self.join.token()?,
            join_token_file: self.data_dir.join(berth_server::JOIN_TOKEN_FILE),
            admin_token_file: self.data_dir.join(berth_server::ADMIN_TOKEN_FILE),
            secrets_key_file: self
                .secrets_key_file
                .clone()
                .unwrap_or_else(|| self.data_dir.join(berth_server::SECRETS_KEY_FILE)),
            data_dir: self.data_dir.join("server"),
            store: self
                .store
                .as_deref()
                .map(|url| {
                    let max = self.store_max_txn_ops as usize;
                    berth_server::StoreLocation::parse(url, &self.store_prefix, max, self.store_tls.tls())
                })
                .transpose()
                .map_err(|e| anyhow::anyhow!("--store: {e}"))?,
            server_id: self.server_id.clone(),
            advertise: self.advertise.clone(),
            api_addr: self.api.clone(),
            domain: self.domain.clone(),
            insecure_unauthenticated: self.insecure_unauthenticated,
            tls: match (&self.api_tls_cert, &self.api_tls_key) {
                (Some(cert), Some(key)) => berth_server::Tls::Files { cert: cert.clone(), key: key.clone() },
                _ if self.tls || !self.tls_names.is_empty() => {
                    berth_server::Tls::Own { dir: self.data_dir.join("tls"), names: self.tls_names.clone() }
                }
                _ => berth_server::Tls::Off,
            },
            tuning: Tuning {
                node_timeout: self.node_timeout.as_duration(),
                logs: berth_server::LogLimits { file_bytes: self.log_file_size, files: self.log_files as usize },
                ..Tuning::default()
            },
            log_sinks: self.log_sinks.clone(),
            alerts: berth_server::AlertConfig {
                outputs: self.alert_webhooks.iter().chain(&self.alertmanager).cloned().collect(),
                rules: self.alert_rules.clone(),
                repeat: self.alert_repeat.as_duration(),
                ..Default::default()
            },
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct RouterOptions {
    /// Where the router serves traffic.
    #[arg(long = "http", default_value = "127.0.0.1:8080")]
    http: String,
    /// The router's admin API.
    #[arg(long = "router-admin", default_value = "127.0.0.1:7071")]
    admin: String,
    /// Bearer token the admin API requires (needed when it is not on loopback).
    #[arg(long = "admin-token", env = "BERTH_ROUTER_TOKEN")]
    admin_token: Option<String>,
    /// Read the admin token from this file (its first line), so that it does not show in `ps`.
    #[arg(long = "admin-token-file", conflicts_with = "admin_token")]
    admin_token_file: Option<PathBuf>,
    /// Serve the apps whose `zones` include this one (and apps with no zones).
    #[arg(long, default_value = "default")]
    zone: String,
    /// JSON-lines access log, or `off` (`berth up` writes DATA_DIR/router/access.log unless off).
    #[arg(long = "access-log")]
    access_log: Option<PathBuf>,
    /// Size of the access log before it rotates (`64KiB`, `64MiB`, or bytes).
    #[arg(long = "access-log-size", value_parser = parse_size, default_value = "64MiB")]
    access_log_size: u64,
    /// Access log files kept, the current one included.
    #[arg(long = "access-log-files", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    access_log_files: u16,
    /// Router worker threads (default: one per core).
    #[arg(long = "router-workers")]
    workers: Option<usize>,
    /// The largest request body the router accepts (`1MiB`, `16MiB`, or bytes); a larger one gets
    /// 413. Bodies up to 1 MiB are held so that a failed try can go to another instance; larger
    /// ones stream to the upstream as they arrive.
    #[arg(long = "max-body-size", value_parser = parse_size, default_value = "16MiB")]
    max_body_size: u64,
    /// Where the router serves HTTPS (with --tls-cert and --tls-key).
    #[arg(long = "https", default_value = "127.0.0.1:8443")]
    https: String,
    /// PEM certificate chain for HTTPS.
    #[arg(long = "tls-cert", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long = "tls-key", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl RouterOptions {
    fn token(&self) -> anyhow::Result<Option<String>> {
        read_token(self.admin_token.as_ref(), self.admin_token_file.as_deref(), "--admin-token-file")
    }

    /// The router's configuration; `(dir, token)`: where it keeps its credential, and the join
    /// token it gets one with; `trust`: the CA file and fingerprint it trusts the server by.
    fn config(
        &self,
        server: &str,
        default_log: Option<PathBuf>,
        domain: Option<String>,
        (dir, join_token): (PathBuf, Option<String>),
        trust: (Option<PathBuf>, Option<String>),
    ) -> anyhow::Result<RouterConfig> {
        Ok(RouterConfig {
            server: server.to_string(),
            credential_file: dir.join(berth_api::join::CREDENTIAL_FILE),
            join_token,
            ca_file: trust.0,
            ca_fingerprint: trust.1,
            http: self.http.clone(),
            admin: self.admin.clone(),
            admin_token: self.token()?,
            zone: self.zone.clone(),
            domain,
            // `--access-log off` turns off even `berth up`'s default log.
            access_log: match &self.access_log {
                Some(path) if path.as_os_str() == "off" => None,
                Some(path) => Some(path.clone()),
                None => default_log,
            },
            access_log_limit: berth_router::LogLimit {
                bytes: self.access_log_size,
                files: usize::from(self.access_log_files),
            },
            workers: self.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            max_body: usize::try_from(self.max_body_size).unwrap_or(usize::MAX),
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => {
                    Some(berth_router::TlsConfig { listen: self.https.clone(), cert: cert.clone(), key: key.clone() })
                }
                _ => None,
            },
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    server: ServerOptions,
    #[command(flatten)]
    node: NodeOptions,
    #[command(flatten)]
    router: RouterOptions,
    /// Run without the router.
    #[arg(long)]
    no_router: bool,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RouterArgs {
    #[command(subcommand)]
    pub action: Option<super::router::RouterAction>,
    /// Where the router keeps its credential (in `router/`).
    #[arg(long, default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    #[command(flatten)]
    router: RouterOptions,
    #[command(flatten)]
    join: JoinTokenOptions,
    /// For the first join to an https:// server: trust the CA of this SHA-256 fingerprint (the
    /// server prints it); the CA itself comes with the join and is kept.
    #[arg(long, env = "BERTH_CA_FINGERPRINT")]
    ca_fingerprint: Option<String>,
    /// Every app also answers as NAME.GROUP.<domain> (default: the server's `--domain`).
    #[arg(long, value_parser = parse_domain)]
    domain: Option<String>,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    pub action: Option<super::server::ServerAction>,
    #[command(flatten)]
    server: ServerOptions,
    /// As --api-tls-cert: the API's certificate chain (PEM), with --tls-key.
    #[arg(long, requires = "tls_key", conflicts_with = "api_tls_cert")]
    tls_cert: Option<PathBuf>,
    /// As --api-tls-key.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Where the agent keeps its node id, its credential and process state.
    #[arg(long, default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    #[command(flatten)]
    node: NodeOptions,
    #[command(flatten)]
    join: JoinTokenOptions,
    /// For the first join to an https:// server: trust the CA of this SHA-256 fingerprint (the
    /// server prints it); the CA itself comes with the join and is kept.
    #[arg(long, env = "BERTH_CA_FINGERPRINT")]
    ca_fingerprint: Option<String>,
}

async fn until_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

pub async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let server = Server::start(args.server.config()?).await.context("starting the server")?;
    let url = server.url();
    // Its own agent and router join as any other, with the server's token and CA handed over.
    let token = Some(server.join_token.clone());
    let ca_file = server.tls.as_ref().and_then(|t| t.ca_file.clone());
    let agent_config = args.node.config(&url, args.server.data_dir.join("agent"), token, (ca_file.clone(), None))?;
    let mut agent = Agent::start(agent_config).await.context("starting the agent")?;
    let mut router = if args.no_router {
        None
    } else {
        let log = args.server.data_dir.join("router/access.log");
        let joining = (args.server.data_dir.join("router"), Some(server.join_token.clone()));
        let config = args.router.config(&url, Some(log), None, joining, (ca_file.clone(), None))?;
        Some(Router::start(config).await.context("starting the router")?)
    };
    let drivers: Vec<String> = agent.drivers.iter().map(|d| d.to_string()).collect();
    let routing = router
        .as_ref()
        .map(|r| {
            let https = r.https_addr.map(|a| format!(", https://{a}")).unwrap_or_default();
            format!(", router http://{}{https} (admin http://{})", r.http_addr, r.admin_addr)
        })
        .unwrap_or_default();
    eprintln!(
        "Berth is up: API {url}{routing}, node {} (drivers: {}), data in {}",
        agent.node_id,
        drivers.join(", "),
        args.server.data_dir.display()
    );
    eprintln!(
        "The console: {url}/ui/ (sign in with the admin token in {})",
        args.server.data_dir.join(berth_server::ADMIN_TOKEN_FILE).display()
    );
    say_tls(&server);
    save_local_context(&url, &args.server.data_dir.join(berth_server::ADMIN_TOKEN_FILE), ca_file.as_deref());
    let router_refused = async {
        match router.as_mut() {
            Some(r) => r.refused().await,
            None => std::future::pending().await,
        }
    };
    let refused = tokio::select! {
        () = until_signal() => None,
        why = agent.refused() => Some(format!("the agent was refused: {why}")),
        why = router_refused => Some(format!("the router was refused: {why}")),
    };
    eprintln!("stopping; instances keep running and are adopted on the next start");
    if let Some(r) = router {
        r.stop().await;
    }
    agent.stop().await;
    server.stop().await;
    match refused {
        Some(why) => anyhow::bail!("{why}"),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Saves this machine's platform as the CLI's `local` context, made current, so that the CLI
/// works here with no flag. Said, not fatal, when it cannot be.
fn save_local_context(url: &str, admin_token_file: &std::path::Path, ca_file: Option<&std::path::Path>) {
    let save = || -> anyhow::Result<std::path::PathBuf> {
        let path = crate::context::path().ok_or_else(|| anyhow::anyhow!("no HOME to keep it in"))?;
        let token = std::fs::read_to_string(admin_token_file)
            .with_context(|| format!("cannot read {}", admin_token_file.display()))?;
        let ca = match ca_file {
            Some(file) => {
                Some(std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?)
            }
            None => None,
        };
        let mut config = crate::context::Config::load(&path)?;
        let local = crate::context::Context { server: url.to_string(), token: Some(token.trim().to_string()), ca };
        config.contexts.insert("local".into(), local);
        config.current = Some("local".into());
        config.save(&path)?;
        Ok(path)
    };
    match save() {
        Ok(path) => eprintln!("The CLI acts here as admin: context `local` saved in {}", path.display()),
        Err(e) => eprintln!(
            "The CLI's context was not saved ({e:#}); pass --token with the token in {}",
            admin_token_file.display()
        ),
    }
}

pub async fn server(mut args: ServerArgs) -> anyhow::Result<ExitCode> {
    if args.tls_cert.is_some() {
        (args.server.api_tls_cert, args.server.api_tls_key) = (args.tls_cert.take(), args.tls_key.take());
    }
    let server = Server::start(args.server.config()?).await.context("starting the server")?;
    eprintln!(
        "Berth server: API {}, data in {}; the console at {}/ui/",
        server.url(),
        args.server.data_dir.display(),
        server.url()
    );
    say_tls(&server);
    let admin = args.server.data_dir.join(berth_server::ADMIN_TOKEN_FILE);
    if admin.exists() {
        eprintln!("The admin token is in {} (berth --token, BERTH_TOKEN, or berth context add)", admin.display());
    }
    if args.server.join.join_token.is_none() && args.server.join.join_token_file.is_none() {
        let file = args.server.data_dir.join(berth_server::JOIN_TOKEN_FILE);
        eprintln!("Agents join with the token in {} (berth agent --join-token-file FILE)", file.display());
    }
    until_signal().await;
    server.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// How agents, routers and people trust the server's HTTPS, when it serves HTTPS.
fn say_tls(server: &Server) {
    let Some(tls) = &server.tls else { return };
    match (&tls.ca_file, &tls.ca_fingerprint) {
        (Some(file), Some(fingerprint)) => eprintln!(
            "TLS: the server's CA is {} ({fingerprint}{}); agents and routers join with --ca-fingerprint {fingerprint}, people use --ca-file {} or berth context add --ca-file",
            file.display(),
            if tls.made { ", made now" } else { "" },
            file.display()
        ),
        _ => eprintln!("TLS: with the given certificate; clients trust its CA with --ca-file"),
    }
}

pub async fn agent(args: AgentArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let token = args.join.token()?;
    let trust = (ctx.ca_file.clone(), args.ca_fingerprint.clone());
    let mut agent = Agent::start(args.node.config(&ctx.server, args.data_dir.join("agent"), token, trust)?)
        .await
        .context("starting the agent")?;
    eprintln!("Berth agent: node {} joined {}", agent.node_id, ctx.server);
    let refused = tokio::select! {
        () = until_signal() => None,
        why = agent.refused() => Some(why),
    };
    agent.stop().await;
    match refused {
        // Retrying cannot help a revoked or wrong credential: exit non-zero and say why.
        Some(why) => anyhow::bail!("{why}"),
        None => Ok(ExitCode::SUCCESS),
    }
}

pub async fn router(args: RouterArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let joining = (args.data_dir.join("router"), args.join.token()?);
    let trust = (ctx.ca_file.clone(), args.ca_fingerprint.clone());
    let mut router = Router::start(args.router.config(&ctx.server, None, args.domain, joining, trust)?)
        .await
        .context("starting the router")?;
    eprintln!(
        "Berth router: http://{} (admin http://{}), following {}",
        router.http_addr, router.admin_addr, ctx.server
    );
    let refused = tokio::select! {
        () = until_signal() => None,
        why = router.refused() => Some(why),
    };
    router.stop().await;
    match refused {
        // Removed (`berth router rm`): stop serving rather than serve a table nobody updates.
        Some(why) => anyhow::bail!("{why}"),
        None => Ok(ExitCode::SUCCESS),
    }
}
