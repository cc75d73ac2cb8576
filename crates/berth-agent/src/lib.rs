//! The node agent: joins the pool, heartbeats, follows its assignments through a blocking watch,
//! and runs each instance through a driver.

pub mod driver;
pub mod logs;
pub mod metrics;
pub mod ports;
mod report;
mod runner;
mod sync;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use berth_api::{Assignment, Client, ClientError, HeartbeatRequest, InstanceReport, RegisterRequest};
use berth_core::retry::Retry;
use berth_core::spec::DriverKind;
use berth_core::{InstanceState, Reason, Resources};
use tokio::sync::{mpsc, watch};

pub use driver::docker::PullPolicy;
use driver::{DockerDriver, Driver, ExecDriver, Handle};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("--driver docker, but no Docker engine answers: {0}")]
    NoDocker(String),
    #[error("data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Join(#[from] berth_api::join::JoinError),
}

/// Which drivers the node offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChoice {
    /// Docker when an engine answers, and exec always.
    Auto,
    Docker,
    Exec,
    /// Instances kept in memory only, running until stopped: for `berth bench cluster`, which
    /// measures the control plane with many nodes on one machine.
    Simulated,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: String,
    pub data_dir: PathBuf,
    pub hostname: String,
    /// Where this node's instances answer; published ports bind here.
    pub address: String,
    pub cpu: Option<f64>,
    pub memory: Option<u64>,
    pub ports: (u16, u16),
    pub labels: BTreeMap<String, String>,
    /// The pool the node joins.
    pub pool: String,
    pub driver: DriverChoice,
    pub pull: PullPolicy,
    pub heartbeat: Duration,
    /// How often each instance's resource use is sampled.
    pub metrics_interval: Duration,
    /// What to trust of an `https://` server (see `berth_api::join::member_trust`): a CA file,
    /// else the CA kept when joining, else this CA fingerprint for the first join.
    pub ca_file: Option<PathBuf>,
    pub ca_fingerprint: Option<String>,
    /// The server's join token, presented once when the data dir holds no credential yet.
    pub join_token: Option<String>,
}

/// A running agent.
pub struct Agent {
    pub node_id: String,
    pub drivers: Vec<DriverKind>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Why the server refused this agent's credential, once it did (revoked by `berth node rm`).
    refused: watch::Receiver<Option<String>>,
}

fn node_id(data_dir: &std::path::Path) -> Result<String, AgentError> {
    let path = data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_string();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let id = format!("node-{}", random_hex());
    let tmp = data_dir.join("node-id.tmp");
    std::fs::write(&tmp, &id).and_then(|()| std::fs::rename(&tmp, &path)).map_err(|e| AgentError::DataDir(path, e))?;
    Ok(id)
}

fn random_hex() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn total_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(1024, |kib| kib / 1024)
}

impl Agent {
    pub async fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| AgentError::DataDir(dir.clone(), e))?;
        let id = node_id(&dir)?;

        let mut drivers = Vec::new();
        if matches!(config.driver, DriverChoice::Auto | DriverChoice::Docker) {
            match DockerDriver::connect(&id, &config.address, config.pull).await {
                Ok(d) => drivers.push(Driver::new(d)),
                Err(e) if config.driver == DriverChoice::Docker => {
                    return Err(AgentError::NoDocker(e.to_string()));
                }
                Err(e) => {
                    tracing::info!(error = %e, "no Docker engine; running with the exec driver only");
                }
            }
        }
        if matches!(config.driver, DriverChoice::Auto | DriverChoice::Exec) {
            drivers.push(Driver::new(ExecDriver::new(dir.clone())));
        }
        if config.driver == DriverChoice::Simulated {
            drivers.push(driver::fake::FakeDriver::default().driver());
        }
        let kinds: Vec<DriverKind> = drivers.iter().map(Driver::kind).collect();

        let file = dir.join(berth_api::join::CREDENTIAL_FILE);
        let trust = berth_api::join::member_trust(&file, config.ca_file.as_deref(), config.ca_fingerprint.as_deref())?;
        let client = Client::with_trust(&config.server, &trust)?;
        let token = config.join_token.as_deref();
        let credential = berth_api::join::load_or_join(&client, &file, &id, berth_api::Member::Agent, token).await?;
        let client = client.with_credential(credential).with_request_timeout(REQUEST_TIMEOUT);
        let register = RegisterRequest {
            id: id.clone(),
            hostname: config.hostname.clone(),
            address: config.address.clone(),
            resources: Resources {
                cpu: config.cpu.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()) as f64),
                memory: config.memory.unwrap_or_else(total_memory_mib),
                ports: config.ports,
            },
            labels: config.labels.clone(),
            pool: config.pool.clone(),
            drivers: kinds.clone(),
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (node_tx, node_rx) = watch::channel(id.clone());
        drop(node_tx);
        let (reporter, report_task) = report::spawn(client.clone(), node_rx, shutdown_rx.clone());
        let sink = logs::LogBuffers::default();
        let shipper = tokio::spawn(logs::ship(client.clone(), id.clone(), sink.clone(), shutdown_rx.clone()));
        let metrics = metrics::MetricsSink::default();
        let metrics_shipper = tokio::spawn(metrics::ship(
            client.clone(),
            id.clone(),
            metrics.clone(),
            config.metrics_interval,
            shutdown_rx.clone(),
        ));
        let services = runner::Services {
            client: client.clone(),
            logs: sink,
            metrics,
            metrics_interval: config.metrics_interval,
            node: id.clone(),
            cursors: dir.join("log-cursors"),
            taken: ports::TakenPorts::default(),
            live: runner::LiveInstances::default(),
        };
        // Bumped when heartbeats get through again after failing: the long watches restart, as
        // a connection that a partition cut silently would hold them until they time out.
        let (reconnected, reconnected_rx) = watch::channel(0u64);
        let execs = tokio::spawn(run_execs(
            client.clone(),
            id.clone(),
            services.live.clone(),
            (shutdown_rx.clone(), reconnected_rx),
        ));
        let (refused_tx, refused) = watch::channel(None);
        let main = tokio::spawn(run(
            client,
            register,
            drivers,
            reporter,
            config.heartbeat,
            services,
            (shutdown_rx, refused_tx, reconnected),
        ));
        tracing::info!(node = %id, drivers = ?kinds, "berth agent started");
        Ok(Agent {
            node_id: id,
            drivers: kinds,
            shutdown,
            tasks: vec![main, report_task, shipper, metrics_shipper, execs],
            refused,
        })
    }

    /// Waits until the server refuses this agent's credential, and says why. An agent refused
    /// stops following its assignments; its process should exit non-zero rather than retry.
    pub async fn refused(&mut self) -> String {
        match self.refused.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The agent's loop ended without a refusal: wait for the caller's own signal.
            Err(_) => std::future::pending().await,
        }
    }

    /// Stops the agent's loops. Instances keep running; a new agent adopts them.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// How long any other request to the server may take: a partition that silences a connection
/// must not hold the reports, logs or drains waiting on it for good.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a watch of assignments or commands waits for news before asking again: long, as
/// Nomad's blocking queries and Kubernetes' watches do, since any change answers at once and a
/// re-ask of 1,000 agents every 30 s cost a third of an idle server's CPU. Cut by up to a
/// sixteenth at random so that agents started together do not re-ask together.
fn watch_wait() -> Duration {
    Duration::from_secs(300).mul_f64(1.0 - rand::random::<f64>() / 16.0)
}

/// The interval the server asked for, within sane bounds; `fallback` when it gave none.
fn beat_interval(asked_ms: u64, fallback: Duration) -> Duration {
    if asked_ms == 0 {
        return fallback;
    }
    Duration::from_millis(asked_ms).clamp(Duration::from_millis(100), Duration::from_secs(300))
}

/// Registers, retrying while the server cannot be reached; false once stopping or refused (said
/// on `refused`).
async fn register(
    client: &Client,
    req: &RegisterRequest,
    shutdown: &mut watch::Receiver<bool>,
    refused: &watch::Sender<Option<String>>,
) -> bool {
    let mut retry = Retry::new(Duration::from_millis(100), Duration::from_secs(3));
    loop {
        match client.register(req).await {
            Ok(_) => return true,
            Err(e) if e.is_refusal() => {
                tracing::error!(error = %e, "the server refused this agent");
                refused.send_replace(Some(e.to_string()));
                return false;
            }
            Err(e) => tracing::warn!(error = %e, "registering with the server failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(retry.next_delay(rand::random())) => {}
            _ = shutdown.changed() => return false,
        }
    }
}

async fn run(
    client: Client,
    req: RegisterRequest,
    drivers: Vec<Driver>,
    reporter: report::Reporter,
    heartbeat: Duration,
    services: runner::Services,
    // Turns true when the agent stops; says why when the server refuses it; bumped when beats
    // get through again after failing.
    (mut shutdown, refused, reconnected): (watch::Receiver<bool>, watch::Sender<Option<String>>, watch::Sender<u64>),
) {
    let mut poll_reconnected = reconnected.subscribe();
    if !register(&client, &req, &mut shutdown, &refused).await {
        return;
    }
    let node = req.id.clone();
    let mut survivors: HashMap<String, (Handle, Driver)> = HashMap::new();
    for d in &drivers {
        match d.survivors().await {
            Ok(found) => survivors.extend(found.into_iter().map(|h| (h.instance.clone(), (h, d.clone())))),
            Err(e) => {
                tracing::warn!(driver = %d.kind(), error = %e, "listing surviving instances failed");
            }
        }
    }

    // Assignments arrive through a blocking watch on the server.
    let (assign_tx, mut assign_rx) = mpsc::channel::<Vec<Assignment>>(4);
    let poll_client = client.clone();
    let poll_node = node.clone();
    let mut poll_shutdown = shutdown.clone();
    let re_register = std::sync::Arc::new(tokio::sync::Notify::new());
    let poll_register = re_register.clone();
    tokio::spawn(async move {
        let mut index = 0;
        let mut retry = Retry::new(Duration::from_millis(250), Duration::from_secs(5));
        loop {
            let result = tokio::select! {
                r = poll_client.assignments(&poll_node, index, watch_wait()) => r,
                _ = poll_shutdown.changed() => return,
                back = poll_reconnected.changed() => {
                    if back.is_err() {
                        return; // the agent's loop ended
                    }
                    // Back after a cut: ask afresh over a new request.
                    index = 0;
                    continue;
                }
            };
            match result {
                Ok(a) => {
                    retry.succeeded();
                    index = a.index;
                    if assign_tx.send(a.assignments).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if e.status() == Some(404) {
                        poll_register.notify_one();
                    }
                    // Carried on from the same index, on whichever server answers next: the servers
                    // share the store's revisions (and one that does not knows the index is not
                    // its own, and answers at once).
                    tracing::warn!(error = %e, "watching assignments failed; retrying");
                    tokio::time::sleep(retry.next_delay(rand::random())).await;
                }
            }
        }
    });

    // The server says how often to beat (it spaces beats out as the cluster grows); until it
    // has, the configured interval. Each wait is cut by up to a tenth at random, so that beats
    // never come late and agents started together drift apart.
    let mut interval = heartbeat;
    let next_beat = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(next_beat);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut sync = sync::Sync::new(survivors.iter().map(|(id, (_, d))| (id.clone(), d.kind())));
    let kinds: Vec<DriverKind> = drivers.iter().map(Driver::kind).collect();
    let mut stops: HashMap<String, watch::Sender<bool>> = HashMap::new();
    let mut beats_failing = false;

    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = &mut next_beat => {
                let mut down = Vec::new();
                for d in &drivers {
                    if !d.answers().await {
                        down.push(d.kind());
                    }
                }
                let beat = HeartbeatRequest { taken_ports: Some(services.taken.recheck()), drivers_down: Some(down) };
                // Bounded: a link that drops packets silently must not hold the loop.
                let answered = tokio::time::timeout(interval, client.heartbeat(&node, &beat)).await;
                let failed = !matches!(answered, Ok(Ok(_)));
                if beats_failing && !failed {
                    reconnected.send_modify(|n| *n += 1);
                }
                beats_failing = failed;
                match answered {
                    Ok(Ok(reply)) => {
                        interval = beat_interval(reply.interval_ms, heartbeat);
                        services.metrics.space_out(reply.metrics_every_ms.min(300_000));
                    }
                    Ok(Err(e)) if e.is_refusal() => {
                        tracing::error!(error = %e, "the server refused this agent");
                        refused.send_replace(Some(e.to_string()));
                        return;
                    }
                    Ok(Err(e)) if matches!(e.status(), Some(404 | 410)) => {
                        if !register(&client, &req, &mut shutdown, &refused).await {
                            return;
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "heartbeat failed"),
                    Err(_) => tracing::warn!(after = ?interval, "heartbeat unanswered"),
                }
                let wait = interval.mul_f64(1.0 - rand::random::<f64>() / 10.0);
                next_beat.as_mut().reset(tokio::time::Instant::now() + wait);
            }
            _ = re_register.notified() => {
                if !register(&client, &req, &mut shutdown, &refused).await {
                    return;
                }
            }
            Some(id) = done_rx.recv() => {
                stops.remove(&id);
                sync.ended(&id);
            }
            Some(assignments) = assign_rx.recv() => {
                let by_id: HashMap<&str, &Assignment> = assignments.iter().map(|a| (a.instance.id.as_str(), a)).collect();
                for command in sync.assign(&assignments, &kinds) {
                    match command {
                        sync::Command::Start { id, driver, adopt } => {
                            let Some(a) = by_id.get(id.as_str()) else { continue };
                            let adopted = if adopt { survivors.remove(&id) } else { None };
                            let found = adopted.as_ref().map(|(_, d)| d.clone()).or_else(|| drivers.iter().find(|d| d.kind() == driver).cloned());
                            let Some(found) = found else {
                                reporter.send(failed(&id, Reason::NoDriver { driver }));
                                continue;
                            };
                            let driver = found;
                            let (stop_tx, stop_rx) = watch::channel(false);
                            stops.insert(id, stop_tx);
                            tokio::spawn(runner::supervise((*a).clone(), driver, adopted.map(|(h, _)| h), reporter.clone(), stop_rx, done_tx.clone(), services.clone()));
                        }
                        sync::Command::NoDriver { id, driver } => reporter.send(failed(&id, Reason::NoDriver { driver })),
                        sync::Command::Stop { id } => {
                            if let Some(stop) = stops.get(&id) {
                                let _ = stop.send(true);
                            }
                        }
                        sync::Command::StopSurvivor { id, grace } => {
                            let Some((handle, driver)) = survivors.remove(&id) else { continue };
                            let reporter = reporter.clone();
                            tokio::spawn(async move {
                                let _ = driver.stop(&handle, grace).await;
                                reporter.send(stopped(&handle.instance));
                            });
                        }
                        sync::Command::ReportStopped { id } => reporter.send(stopped(&id)),
                        sync::Command::StopOrphan { id } => {
                            let Some((handle, driver)) = survivors.remove(&id) else { continue };
                            tracing::info!(instance = %id, "stopping an orphan the server does not know");
                            tokio::spawn(async move {
                                let _ = driver.stop(&handle, Duration::from_secs(10)).await;
                            });
                        }
                    }
                }
            }
        }
    }
}

/// Takes the commands the server queues for this node's instances (`berth app NAME exec`), runs
/// each through its instance's driver, and answers with what it did.
async fn run_execs(
    client: Client,
    node: String,
    live: runner::LiveInstances,
    (mut shutdown, mut reconnected): (watch::Receiver<bool>, watch::Receiver<u64>),
) {
    let mut retry = Retry::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        let taken = tokio::select! {
            t = client.execs(&node, watch_wait()) => t,
            _ = shutdown.changed() => return,
            back = reconnected.changed() => match back {
                Ok(()) => continue,
                Err(_) => return, // the agent's loop ended
            },
        };
        let requests = match taken {
            Ok(r) => {
                retry.succeeded();
                r
            }
            Err(e) => {
                tracing::debug!(error = %e, "taking exec requests failed; retrying");
                tokio::time::sleep(retry.next_delay(rand::random())).await;
                continue;
            }
        };
        for req in requests {
            let (client, node) = (client.clone(), node.clone());
            let found = lock(&live).get(&req.instance).cloned();
            if req.stream {
                tokio::spawn(attach_exec(client, node, found, req));
                continue;
            }
            tokio::spawn(async move {
                let timeout = Duration::from_millis(req.timeout_ms.unwrap_or(60_000));
                let mut result = match found {
                    Some((driver, handle, env)) => driver.exec(&handle, &req.command, &env, timeout).await,
                    None => berth_api::ExecResult {
                        error: Some(format!("instance {} is not running on this node", req.instance)),
                        ..Default::default()
                    },
                };
                result.id = req.id.clone();
                if let Err(e) = client.exec_result(&node, &result).await {
                    tracing::warn!(error = %e, exec = %req.id, "answering an exec failed");
                }
            });
        }
    }
}

/// Brings the connection for a streamed command and runs it there.
async fn attach_exec(client: Client, node: String, found: Option<runner::LiveEntry>, req: berth_api::ExecRequest) {
    let io = match client.exec_attach(&node, &req.id).await {
        Ok(io) => io,
        Err(e) => {
            tracing::warn!(error = %e, exec = %req.id, "attaching an exec stream failed");
            return;
        }
    };
    match found {
        Some((driver, handle, env)) => driver.exec_session(&handle, &req, &env, io).await,
        None => {
            let why = format!("instance {} is not running on this node", req.instance);
            driver::session::pump(io, Err(why)).await;
        }
    }
}

fn failed(id: &str, why: Reason) -> InstanceReport {
    InstanceReport::new(id, InstanceState::Failed).because(why)
}

fn stopped(id: &str) -> InstanceReport {
    InstanceReport::new(id, InstanceState::Stopped)
}

pub(crate) use berth_core::{lock, now_ms};
