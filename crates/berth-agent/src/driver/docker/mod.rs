//! The docker driver: the real Docker Engine through bollard. Containers carry Berth's labels,
//! so a restarted agent finds them again instead of starting duplicates.

pub(crate) mod commands;
pub(crate) mod logs;
pub(crate) mod stats;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use berth_api::Assignment;
use berth_core::spec::NetworkMode;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::StreamExt;

use std::path::Path;

use berth_api::{ExecRequest, ExecResult};
use berth_core::spec::DriverKind;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::session::Session;
use super::{DriverError, Exit, Fut, Handle, Runtime};
use crate::logs::{LogBuffers, Origin};
use crate::metrics::Reading;

pub const LABEL_INSTANCE: &str = "berth.instance";
pub const LABEL_APP: &str = "berth.app";
pub const LABEL_GROUP: &str = "berth.group";
pub const LABEL_VERSION: &str = "berth.version";
pub const LABEL_NODE: &str = "berth.node";

/// When to pull an image that is not on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Missing,
    Never,
}

#[derive(Clone)]
pub struct DockerDriver {
    docker: Docker,
    node: String,
    /// Address published ports bind to.
    publish_ip: String,
    pull: PullPolicy,
}

fn engine(e: bollard::errors::Error) -> DriverError {
    DriverError::Docker(e.to_string())
}

pub fn container_name(instance: &str) -> String {
    format!("berth-{instance}")
}

impl DockerDriver {
    /// Connects to the local engine and agrees on an API version; fails when no engine answers.
    pub async fn connect(node: &str, publish_ip: &str, pull: PullPolicy) -> Result<Self, DriverError> {
        let docker = Docker::connect_with_local_defaults().map_err(engine)?;
        let docker = tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version())
            .await
            .map_err(|_| DriverError::Docker("no answer within 5s".into()))?
            .map_err(engine)?;
        docker.ping().await.map_err(engine)?;
        Ok(DockerDriver { docker, node: node.to_string(), publish_ip: publish_ip.to_string(), pull })
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    async fn ensure_image(&self, image: &str) -> Result<(), DriverError> {
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        if self.pull == PullPolicy::Never {
            return Err(DriverError::Start(format!("image `{image}` is not on this node and pulling is off")));
        }
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(step) = pull.next().await {
            step.map_err(|e| {
                DriverError::Start(format!("image `{image}` is not on this node and cannot be pulled: {e}"))
            })?;
        }
        Ok(())
    }

    pub async fn start(&self, a: &Assignment, env: &BTreeMap<String, String>) -> Result<Handle, DriverError> {
        let spec = &a.spec;
        let inst = &a.instance;
        let image =
            spec.image.as_deref().ok_or_else(|| DriverError::Start("the docker driver needs an image".into()))?;
        self.ensure_image(image).await?;

        let labels = HashMap::from([
            (LABEL_INSTANCE.to_string(), inst.id.clone()),
            (LABEL_APP.to_string(), spec.name.clone()),
            (LABEL_GROUP.to_string(), spec.group.clone()),
            (LABEL_VERSION.to_string(), inst.version.to_string()),
            (LABEL_NODE.to_string(), self.node.clone()),
        ]);
        let bridged = spec.network == NetworkMode::Bridge;
        let mut port_bindings = HashMap::new();
        if bridged {
            for (container_port, host_port) in spec.ports.iter().zip(&inst.host_ports) {
                port_bindings.insert(
                    format!("{container_port}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some(self.publish_ip.clone()),
                        host_port: Some(host_port.to_string()),
                    }]),
                );
            }
        }
        let memory = spec.memory.map(|mib| (mib * 1024 * 1024) as i64);
        let host_config = HostConfig {
            nano_cpus: spec.cpu.map(|c| (c * 1e9) as i64),
            memory,
            // No swap on top: a container over its limit is OOM-killed, and says so.
            memory_swap: memory,
            pids_limit: Some(i64::from(spec.pids)),
            network_mode: Some(
                match spec.network {
                    NetworkMode::Bridge => "bridge",
                    NetworkMode::Host => "host",
                    NetworkMode::None => "none",
                }
                .into(),
            ),
            privileged: Some(spec.privileged),
            // An init as PID 1 forwards SIGTERM (a bare binary as PID 1 ignores it) and reaps zombies.
            init: Some(true),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            // The agent ships every line; the engine keeps a bounded copy for `docker logs`.
            log_config: Some(bollard::models::HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), "10m".to_string()),
                    ("max-file".to_string(), "2".to_string()),
                ])),
            }),
            ..Default::default()
        };
        let config = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: spec.command.as_ref().map(|c| c.argv()),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            exposed_ports: bridged.then(|| spec.ports.iter().map(|p| format!("{p}/tcp")).collect()),
            stop_timeout: Some((spec.stop_timeout.as_millis() / 1000).max(1) as i64),
            host_config: Some(host_config),
            ..Default::default()
        };
        let name = container_name(&inst.id);
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = match self.docker.create_container(Some(options.clone()), config.clone()).await {
            Ok(c) => c,
            // A container left from an earlier attempt of this same instance: replace it.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => {
                self.remove(&name).await;
                self.docker.create_container(Some(options), config).await.map_err(engine)?
            }
            Err(e) => return Err(DriverError::Start(format!("cannot create container: {e}"))),
        };
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            self.remove(&created.id).await;
            return Err(DriverError::Start(format!("cannot start container: {e}")));
        }
        Ok(Handle { instance: inst.id.clone(), id: created.id })
    }

    pub async fn wait(&self, handle: &Handle) -> Exit {
        // The stream ends when the container stops; its result carries no OOM flag, so inspect after.
        let mut stream = self.docker.wait_container(&handle.id, None);
        while stream.next().await.is_some() {}
        loop {
            match self.docker.inspect_container(&handle.id, None).await {
                Ok(info) => {
                    let state = info.state.unwrap_or_default();
                    if state.running == Some(true) {
                        // The wait stream broke while the container still runs (engine restart): wait again.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let mut again = self.docker.wait_container(&handle.id, None);
                        while again.next().await.is_some() {}
                        continue;
                    }
                    let mut oom_killed = state.oom_killed.unwrap_or(false);
                    // The engine records an OOM kill from a separate event that can land just after
                    // the exit: a SIGKILL exit gets a short second look before it is called plain.
                    if state.exit_code == Some(137) && !oom_killed {
                        oom_killed = self.oom_flag_settles(&handle.id).await;
                    }
                    return Exit {
                        exit_code: state.exit_code,
                        oom_killed,
                        detail: state.error.filter(|e| !e.is_empty()),
                    };
                }
                Err(e) => {
                    return Exit { exit_code: None, oom_killed: false, detail: Some(format!("container gone: {e}")) };
                }
            }
        }
    }

    async fn oom_flag_settles(&self, id: &str) -> bool {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            match self.docker.inspect_container(id, None).await {
                Ok(info) if info.state.as_ref().and_then(|s| s.oom_killed) == Some(true) => {
                    return true;
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    async fn remove(&self, id: &str) {
        let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        if let Err(e) = self.docker.remove_container(id, Some(options)).await {
            tracing::debug!(container = id, error = %e, "remove failed");
        }
    }

    pub async fn stop(&self, handle: &Handle, grace: Duration) -> Result<(), DriverError> {
        let secs = grace.as_secs().max(1) as i32;
        let options = StopContainerOptionsBuilder::new().t(secs).build();
        match self.docker.stop_container(&handle.id, Some(options)).await {
            Ok(()) => {}
            // 304: already stopped; 404: already gone.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304 | 404, .. }) => {}
            Err(e) => return Err(engine(e)),
        }
        self.remove(&handle.id).await;
        Ok(())
    }

    /// The last `lines` of the container's output, as the engine kept it.
    pub async fn tail(&self, handle: &Handle, lines: usize) -> Vec<String> {
        let options = bollard::query_parameters::LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut stream = self.docker.logs(&handle.id, Some(options));
        let mut out = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            let text = String::from_utf8_lossy(&chunk.into_bytes()).into_owned();
            out.extend(text.lines().map(str::to_string));
        }
        let skip = out.len().saturating_sub(lines);
        out.split_off(skip)
    }

    pub async fn survivors(&self) -> Result<Vec<Handle>, DriverError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_NODE}={}", self.node)])]);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let containers = self.docker.list_containers(Some(options)).await.map_err(engine)?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let instance = c.labels.as_ref()?.get(LABEL_INSTANCE)?.clone();
                Some(Handle { instance, id: c.id? })
            })
            .collect())
    }
}

impl Runtime for DockerDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Docker
    }
    fn start<'a>(
        &'a self,
        a: &'a Assignment,
        env: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Result<Handle, DriverError>> {
        Box::pin(DockerDriver::start(self, a, env))
    }
    fn wait<'a>(&'a self, handle: &'a Handle) -> Fut<'a, Exit> {
        Box::pin(DockerDriver::wait(self, handle))
    }
    fn stop<'a>(&'a self, handle: &'a Handle, grace: Duration) -> Fut<'a, Result<(), DriverError>> {
        Box::pin(DockerDriver::stop(self, handle, grace))
    }
    fn remove_leftovers(&self, instance: &str, cursors: &Path) {
        let _ = std::fs::remove_file(cursors.join(instance));
    }
    fn tail<'a>(&'a self, handle: &'a Handle, lines: usize) -> Fut<'a, Vec<String>> {
        Box::pin(DockerDriver::tail(self, handle, lines))
    }
    fn collect_logs(
        &self,
        handle: &Handle,
        origin: Origin,
        sink: LogBuffers,
        _ended: watch::Receiver<bool>,
        cursors: &Path,
    ) -> JoinHandle<()> {
        let _ = std::fs::create_dir_all(cursors);
        let cursor = cursors.join(&handle.instance);
        tokio::spawn(logs::follow_container(self.docker.clone(), handle.id.clone(), origin, sink, cursor))
    }
    fn read_usage<'a>(&'a self, handle: &'a Handle) -> Fut<'a, Option<Reading>> {
        Box::pin(stats::read_container(&self.docker, &handle.id))
    }
    fn run_collected<'a>(
        &'a self,
        handle: &'a Handle,
        command: &'a [String],
        _env: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Result<ExecResult, String>> {
        Box::pin(commands::collected(&self.docker, &handle.id, command))
    }
    fn attach<'a>(
        &'a self,
        handle: &'a Handle,
        req: &'a ExecRequest,
        _env: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Result<Session, String>> {
        Box::pin(commands::attached(&self.docker, &handle.id, req))
    }
    fn survivors(&self) -> Fut<'_, Result<Vec<Handle>, DriverError>> {
        Box::pin(DockerDriver::survivors(self))
    }
    fn ping(&self) -> Fut<'_, Result<(), DriverError>> {
        Box::pin(async move { self.docker.ping().await.map(|_| ()).map_err(engine) })
    }
}
