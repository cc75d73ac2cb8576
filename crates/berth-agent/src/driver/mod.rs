//! Drivers run instances. Each has the same shape: start, adopt what survived a restart, wait
//! for exit, stop (SIGTERM, grace, SIGKILL) and remove.

pub mod docker;
pub mod exec;
pub(crate) mod fake;
pub(crate) mod session;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_api::{Assignment, ExecRequest, ExecResult};
use berth_core::Exit;
use berth_core::spec::{DriverKind, NetworkMode};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::logs::{LogBuffers, Origin};
use crate::metrics::Reading;
pub(crate) use session::Fut;
use session::Session;

pub use docker::DockerDriver;
pub use exec::ExecDriver;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{0}")]
    Start(String),
    #[error("docker engine: {0}")]
    Docker(String),
    #[error("{0}")]
    Io(String),
}

/// The runtime's handle on a started instance: a container id or a process group.
#[derive(Debug, Clone, PartialEq)]
pub struct Handle {
    pub instance: String,
    pub id: String,
}

/// What every driver does, whatever its engine: start, adopt what survived a restart, wait for
/// exit, stop (SIGTERM, grace, SIGKILL), and its instances' output, use and commands.
pub(crate) trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> DriverKind;
    fn start<'a>(
        &'a self,
        a: &'a Assignment,
        env: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Result<Handle, DriverError>>;
    /// Waits until the instance exits.
    fn wait<'a>(&'a self, handle: &'a Handle) -> Fut<'a, Exit>;
    /// SIGTERM, up to `grace`, then SIGKILL; then the runtime's leftovers are removed.
    fn stop<'a>(&'a self, handle: &'a Handle, grace: Duration) -> Fut<'a, Result<(), DriverError>>;
    /// Forgets an instance that has ended and whose output is collected (its files, its log
    /// cursor). Without this every launch leaves something behind.
    fn remove_leftovers(&self, instance: &str, cursors: &Path);
    /// The last lines an ended instance wrote.
    fn tail<'a>(&'a self, handle: &'a Handle, lines: usize) -> Fut<'a, Vec<String>>;
    /// Starts collecting the instance's output into `sink` until it ends (`ended` turns true).
    fn collect_logs(
        &self,
        handle: &Handle,
        origin: Origin,
        sink: LogBuffers,
        ended: watch::Receiver<bool>,
        cursors: &Path,
    ) -> JoinHandle<()>;
    /// One resource reading of a live instance.
    fn read_usage<'a>(&'a self, handle: &'a Handle) -> Fut<'a, Option<Reading>>;
    /// Runs a command inside the instance and collects what it did.
    fn run_collected<'a>(
        &'a self,
        handle: &'a Handle,
        command: &'a [String],
        env: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Result<ExecResult, String>>;
    /// Starts a command inside the instance, attached as a session.
    fn attach<'a>(
        &'a self,
        handle: &'a Handle,
        req: &'a ExecRequest,
        env: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Result<Session, String>>;
    /// Instances that outlived the agent.
    fn survivors(&self) -> Fut<'_, Result<Vec<Handle>, DriverError>>;
    /// Whether the engine behind the driver answers (a driver without one always does).
    fn ping(&self) -> Fut<'_, Result<(), DriverError>> {
        Box::pin(async { Ok(()) })
    }
}

/// One of the node's drivers.
#[derive(Clone)]
pub struct Driver(Arc<dyn Runtime>);

impl Driver {
    pub(crate) fn new(runtime: impl Runtime) -> Driver {
        Driver(Arc::new(runtime))
    }

    pub fn kind(&self) -> DriverKind {
        self.0.kind()
    }

    pub async fn start(&self, a: &Assignment, env: &BTreeMap<String, String>) -> Result<Handle, DriverError> {
        self.0.start(a, env).await
    }

    pub async fn wait(&self, handle: &Handle) -> Exit {
        self.0.wait(handle).await
    }

    pub async fn stop(&self, handle: &Handle, grace: Duration) -> Result<(), DriverError> {
        self.0.stop(handle, grace).await
    }

    pub fn remove_leftovers(&self, instance: &str, cursors: &Path) {
        self.0.remove_leftovers(instance, cursors);
    }

    /// The last lines an ended instance wrote, for its failure report (cut to 200 bytes each).
    pub async fn tail(&self, handle: &Handle, lines: usize) -> Vec<String> {
        let mut all = self.0.tail(handle, lines).await;
        for l in &mut all {
            if l.len() > 200 {
                l.truncate(l.floor_char_boundary(200));
            }
        }
        all
    }

    pub fn collect_logs(
        &self,
        handle: &Handle,
        origin: Origin,
        sink: LogBuffers,
        ended: watch::Receiver<bool>,
        cursors: &Path,
    ) -> JoinHandle<()> {
        self.0.collect_logs(handle, origin, sink, ended, cursors)
    }

    pub async fn read_usage(&self, handle: &Handle) -> Option<Reading> {
        self.0.read_usage(handle).await
    }

    /// Runs `command` inside the instance: `docker exec` for a container; for a process, the
    /// command with the instance's environment in its working directory. Output is capped at
    /// 1 MiB a stream; the command is killed at `timeout`.
    pub async fn exec(
        &self,
        handle: &Handle,
        command: &[String],
        env: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> ExecResult {
        match tokio::time::timeout(timeout, self.0.run_collected(handle, command, env)).await {
            Ok(Ok(result)) => result,
            Ok(Err(why)) => ExecResult { error: Some(why), ..Default::default() },
            Err(_) => ExecResult { error: Some(format!("killed after {}s", timeout.as_secs())), ..Default::default() },
        }
    }

    /// Runs a streamed command (`exec -i`/`-t`) inside the instance, joined to `io` until it
    /// ends or the client goes.
    pub async fn exec_session<IO>(&self, handle: &Handle, req: &ExecRequest, env: &BTreeMap<String, String>, io: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        session::pump(io, self.0.attach(handle, req, env).await).await;
    }

    /// Instances that outlived the agent, by instance id.
    /// Whether its engine answers within a second.
    pub async fn answers(&self) -> bool {
        matches!(tokio::time::timeout(Duration::from_secs(1), self.0.ping()).await, Ok(Ok(())))
    }

    pub async fn survivors(&self) -> Result<Vec<Handle>, DriverError> {
        self.0.survivors().await
    }
}

/// The environment every instance gets: the spec's, its secrets' values (`secrets`, by
/// variable), Berth's identity, ports, and the host's TZ.
pub fn instance_env(
    a: &Assignment,
    driver: DriverKind,
    secrets: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let spec = &a.spec;
    let inst = &a.instance;
    let mut env: BTreeMap<String, String> = spec
        .environment
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.value().or_else(|| secrets.get(k).map(String::as_str))?.to_string())))
        .collect();
    env.insert("BERTH_APP".into(), spec.name.clone());
    env.insert("BERTH_GROUP".into(), spec.group.clone());
    env.insert("BERTH_INSTANCE_ID".into(), inst.id.clone());
    env.insert("BERTH_VERSION".into(), inst.version.to_string());
    env.insert("BERTH_HOST".into(), inst.host.clone());
    // PORTn is the port the process must listen on: the container port behind a bridge,
    // the host port everywhere else.
    let bridged = driver == DriverKind::Docker && spec.network == NetworkMode::Bridge;
    let listen: Vec<u16> = if bridged { spec.ports.clone() } else { inst.host_ports.clone() };
    for (i, port) in listen.iter().enumerate() {
        env.insert(format!("PORT{i}"), port.to_string());
    }
    if let Some(first) = listen.first() {
        env.insert("PORT".into(), first.to_string());
    }
    for (i, port) in inst.host_ports.iter().enumerate() {
        env.insert(format!("BERTH_HOST_PORT{i}"), port.to_string());
    }
    if !env.contains_key("TZ")
        && let Some(tz) = host_timezone()
    {
        env.insert("TZ".into(), tz);
    }
    env
}

fn host_timezone() -> Option<String> {
    std::env::var("TZ").ok().filter(|tz| !tz.is_empty()).or_else(|| {
        std::fs::read_to_string("/etc/timezone").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
    })
}
