//! Drivers run instances. Each has the same shape: start, adopt what survived a restart, wait
//! for exit, stop (SIGTERM, grace, SIGKILL) and remove.

pub mod docker;
pub mod exec;
pub(crate) mod session;

use std::collections::BTreeMap;

use berth_api::Assignment;
use berth_core::Exit;
use berth_core::spec::{DriverKind, NetworkMode};

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

/// One of the node's drivers.
#[derive(Clone)]
pub enum Driver {
    Docker(DockerDriver),
    Exec(ExecDriver),
}

impl Driver {
    pub fn kind(&self) -> DriverKind {
        match self {
            Driver::Docker(_) => DriverKind::Docker,
            Driver::Exec(_) => DriverKind::Exec,
        }
    }

    pub async fn start(&self, a: &Assignment, env: &BTreeMap<String, String>) -> Result<Handle, DriverError> {
        match self {
            Driver::Docker(d) => d.start(a, env).await,
            Driver::Exec(d) => d.start(a, env).await,
        }
    }

    /// Waits until the instance exits.
    pub async fn wait(&self, handle: &Handle) -> Exit {
        match self {
            Driver::Docker(d) => d.wait(handle).await,
            Driver::Exec(d) => d.wait(handle).await,
        }
    }

    /// SIGTERM, up to `grace`, then SIGKILL; then the runtime's leftovers are removed.
    pub async fn stop(&self, handle: &Handle, grace: std::time::Duration) -> Result<(), DriverError> {
        match self {
            Driver::Docker(d) => d.stop(handle, grace).await,
            Driver::Exec(d) => d.stop(handle, grace).await,
        }
    }

    /// Forgets an instance that has ended and whose output is collected: the exec driver's
    /// directory, the Docker log cursor. Without this every launch leaves something behind.
    pub fn remove_leftovers(&self, instance: &str, cursors: &std::path::Path) {
        match self {
            Driver::Docker(_) => {
                let _ = std::fs::remove_file(cursors.join(instance));
            }
            Driver::Exec(d) => d.remove(instance),
        }
    }

    /// The last lines an ended instance wrote, for its failure report (cut to 200 bytes each).
    pub async fn tail(&self, handle: &Handle, lines: usize) -> Vec<String> {
        let all = match self {
            Driver::Docker(d) => d.tail(handle, lines).await,
            Driver::Exec(d) => d.tail(handle, lines).await,
        };
        all.into_iter()
            .map(|mut l| {
                if l.len() > 200 {
                    l.truncate(l.floor_char_boundary(200));
                }
                l
            })
            .collect()
    }

    /// Starts collecting the instance's output into `sink` until it ends (`ended` turns true).
    pub fn collect_logs(
        &self,
        handle: &Handle,
        origin: crate::logs::Origin,
        sink: crate::logs::LogSink,
        ended: tokio::sync::watch::Receiver<bool>,
        cursors: &std::path::Path,
    ) -> tokio::task::JoinHandle<()> {
        match self {
            Driver::Docker(d) => {
                let _ = std::fs::create_dir_all(cursors);
                let cursor = cursors.join(&handle.instance);
                tokio::spawn(docker::logs::follow_container(
                    d.client().clone(),
                    handle.id.clone(),
                    origin,
                    sink,
                    cursor,
                ))
            }
            Driver::Exec(d) => {
                tokio::spawn(exec::logs::follow_files(d.instance_dir(&handle.instance), origin, sink, ended))
            }
        }
    }

    /// One resource reading of a live instance.
    pub async fn read_usage(&self, handle: &Handle) -> Option<crate::metrics::Reading> {
        match self {
            Driver::Docker(d) => docker::stats::read_container(d.client(), &handle.id).await,
            Driver::Exec(_) => {
                let leader: i32 = handle.id.parse().ok()?;
                tokio::task::spawn_blocking(move || exec::stats::read_process_group(leader)).await.ok()?
            }
        }
    }

    /// Runs `command` inside the instance: `docker exec` for a container; for a process, the
    /// command with the instance's environment in its working directory. Output is capped at
    /// 1 MiB a stream; the command is killed at `timeout`.
    pub async fn exec(
        &self,
        handle: &Handle,
        command: &[String],
        env: &BTreeMap<String, String>,
        timeout: std::time::Duration,
    ) -> berth_api::ExecResult {
        let ran = tokio::time::timeout(timeout, async {
            match self {
                Driver::Docker(d) => docker::commands::collected(d.client(), &handle.id, command).await,
                Driver::Exec(d) => exec::commands::collected(&d.instance_dir(&handle.instance), command, env).await,
            }
        })
        .await;
        match ran {
            Ok(Ok(result)) => result,
            Ok(Err(why)) => berth_api::ExecResult { error: Some(why), ..Default::default() },
            Err(_) => berth_api::ExecResult {
                error: Some(format!("killed after {}s", timeout.as_secs())),
                ..Default::default()
            },
        }
    }

    /// Runs a streamed command (`exec -i`/`-t`) inside the instance, joined to `io` until it
    /// ends or the client goes.
    pub async fn exec_session<IO>(
        &self,
        handle: &Handle,
        req: &berth_api::ExecRequest,
        env: &BTreeMap<String, String>,
        io: IO,
    ) where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let session = match self {
            Driver::Docker(d) => docker::commands::attached(d.client(), &handle.id, req).await,
            Driver::Exec(d) => exec::commands::attached(&d.instance_dir(&handle.instance), req, env),
        };
        session::pump(io, session).await;
    }

    /// Instances that outlived the agent, by instance id.
    pub async fn survivors(&self) -> Result<Vec<Handle>, DriverError> {
        match self {
            Driver::Docker(d) => d.survivors().await,
            Driver::Exec(d) => d.survivors().await,
        }
    }
}

/// The environment every instance gets: the spec's, Berth's identity, ports, and the host's TZ.
pub fn instance_env(a: &Assignment, driver: DriverKind) -> BTreeMap<String, String> {
    let spec = &a.spec;
    let inst = &a.instance;
    let mut env = spec.environment.clone();
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
