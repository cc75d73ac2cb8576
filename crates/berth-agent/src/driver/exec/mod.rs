//! The exec driver: a plain process in its own process group, output to files under the data
//! directory, found again after a restart through a small state file.

pub(crate) mod commands;
pub(crate) mod logs;
pub(crate) mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::Assignment;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use std::path::Path;

use berth_api::{ExecRequest, ExecResult};
use berth_core::spec::DriverKind;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::session::Session;
use super::{DriverError, Exit, Fut, Handle, Runtime};
use crate::logs::{LogBuffers, Origin};
use crate::metrics::Reading;

/// Environment variables passed through from the agent to every process.
const INHERITED: [&str; 6] = ["PATH", "HOME", "USER", "LANG", "TMPDIR", "TZ"];

#[derive(Clone)]
pub struct ExecDriver {
    dir: PathBuf,
    children: Arc<Mutex<BTreeMap<String, tokio::process::Child>>>,
}

/// What lets a later agent recognise its process: pid plus the kernel's start time for that pid.
#[derive(Debug, Serialize, Deserialize)]
struct ProcState {
    pid: i32,
    start_ticks: u64,
}

fn io(e: impl std::fmt::Display) -> DriverError {
    DriverError::Io(e.to_string())
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot.
fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); a zombie has exited already.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl ExecDriver {
    pub fn new(data_dir: PathBuf) -> Self {
        ExecDriver { dir: data_dir.join("exec"), children: Arc::default() }
    }

    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    pub async fn start(&self, a: &Assignment, env: &BTreeMap<String, String>) -> Result<Handle, DriverError> {
        let id = &a.instance.id;
        let command =
            a.spec.command.as_ref().ok_or_else(|| DriverError::Start("the exec driver needs a command".into()))?;
        let argv = command.argv();
        let dir = self.instance_dir(id);
        std::fs::create_dir_all(&dir).map_err(io)?;
        let open = |name: &str| std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)).map_err(io);
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(INHERITED.iter().filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))))
            .envs(env)
            .current_dir(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(open("stdout.log")?)
            .stderr(open("stderr.log")?)
            // Its own group: stop signals reach every process it forked, and the agent's
            // terminal signals do not.
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd.spawn().map_err(|e| DriverError::Start(format!("cannot run `{}`: {e}", argv[0])))?;
        let pid = child.id().ok_or_else(|| DriverError::Start("process exited at once".into()))? as i32;
        let state = ProcState { pid, start_ticks: start_ticks(pid).unwrap_or(0) };
        std::fs::write(dir.join("proc.json"), serde_json::to_vec(&state).map_err(io)?).map_err(io)?;
        self.children.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), child);
        Ok(Handle { instance: id.clone(), id: pid.to_string() })
    }

    pub async fn wait(&self, handle: &Handle) -> Exit {
        let child = self.children.lock().unwrap_or_else(|p| p.into_inner()).remove(&handle.instance);
        match child {
            Some(mut child) => match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    let signal = status
                        .signal()
                        .map(|s| Signal::try_from(s).map_or(format!("signal {s}"), |sig| format!("killed by {sig}")));
                    let code = status.code().map(i64::from).or(status.signal().map(|s| 128 + i64::from(s)));
                    Exit { exit_code: code, oom_killed: false, detail: signal }
                }
                Err(e) => Exit { exit_code: None, oom_killed: false, detail: Some(format!("wait failed: {e}")) },
            },
            // Adopted after a restart: not our child, so poll until its pid is gone or reused.
            None => {
                let pid: i32 = handle.id.parse().unwrap_or(0);
                let ticks = self.recorded(&handle.instance).map(|s| s.start_ticks);
                loop {
                    if pid <= 0 || start_ticks(pid) != ticks || ticks.is_none() {
                        return Exit {
                            exit_code: None,
                            oom_killed: false,
                            detail: Some("exit code unknown: adopted after an agent restart".into()),
                        };
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    fn recorded(&self, id: &str) -> Option<ProcState> {
        let bytes = std::fs::read(self.instance_dir(id).join("proc.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn alive(&self, id: &str) -> Option<i32> {
        let state = self.recorded(id)?;
        (state.pid > 0 && start_ticks(state.pid) == Some(state.start_ticks)).then_some(state.pid)
    }

    pub async fn stop(&self, handle: &Handle, grace: Duration) -> Result<(), DriverError> {
        if let Some(pid) = self.alive(&handle.instance) {
            let group = Pid::from_raw(pid);
            let _ = killpg(group, Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + grace;
            while self.alive(&handle.instance).is_some() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if self.alive(&handle.instance).is_some() {
                let _ = killpg(group, Signal::SIGKILL);
            }
        }
        // Reap our own child so it does not linger as a zombie.
        let child = self.children.lock().unwrap_or_else(|p| p.into_inner()).remove(&handle.instance);
        if let Some(mut child) = child {
            let _ = child.wait().await;
        }
        let _ = std::fs::remove_file(self.instance_dir(&handle.instance).join("proc.json"));
        Ok(())
    }

    /// The processes that outlived the agent. The directories of those that did not are removed:
    /// their instances are gone, and each launch leaves one.
    pub async fn survivors(&self) -> Result<Vec<Handle>, DriverError> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(out);
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().to_string();
            match self.alive(&id) {
                Some(pid) => out.push(Handle { instance: id, id: pid.to_string() }),
                None => self.remove(&id),
            }
        }
        Ok(out)
    }

    /// Removes an ended instance's directory (its output files), once its lines are collected.
    pub fn remove(&self, id: &str) {
        let dir = self.instance_dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(instance = %id, error = %e, "removing an ended instance's directory failed");
        }
    }

    /// Where an instance's output goes.
    pub fn log_path(&self, id: &str, stream: &str) -> PathBuf {
        self.instance_dir(id).join(format!("{stream}.log"))
    }

    /// The last `lines` of output, stderr after stdout (the two files keep no common clock).
    pub async fn tail(&self, handle: &Handle, lines: usize) -> Vec<String> {
        let mut out = Vec::new();
        for stream in ["stdout", "stderr"] {
            out.extend(tail_file(&self.log_path(&handle.instance, stream), lines));
        }
        let skip = out.len().saturating_sub(lines);
        out.split_off(skip)
    }
}

/// The last lines of a file, reading only its end.
fn tail_file(path: &std::path::Path, lines: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    const WINDOW: u64 = 16 * 1024;
    let Ok(mut file) = std::fs::File::open(path) else { return Vec::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(WINDOW);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if file.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut all: Vec<&str> = text.lines().collect();
    if start > 0 && !all.is_empty() {
        all.remove(0); // a partial first line
    }
    all[all.len().saturating_sub(lines)..].iter().map(|l| l.to_string()).collect()
}

impl Runtime for ExecDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Exec
    }
    fn start<'a>(
        &'a self,
        a: &'a Assignment,
        env: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Result<Handle, DriverError>> {
        Box::pin(ExecDriver::start(self, a, env))
    }
    fn wait<'a>(&'a self, handle: &'a Handle) -> Fut<'a, Exit> {
        Box::pin(ExecDriver::wait(self, handle))
    }
    fn stop<'a>(&'a self, handle: &'a Handle, grace: Duration) -> Fut<'a, Result<(), DriverError>> {
        Box::pin(ExecDriver::stop(self, handle, grace))
    }
    fn remove_leftovers(&self, instance: &str, _cursors: &Path) {
        self.remove(instance);
    }
    fn tail<'a>(&'a self, handle: &'a Handle, lines: usize) -> Fut<'a, Vec<String>> {
        Box::pin(ExecDriver::tail(self, handle, lines))
    }
    fn collect_logs(
        &self,
        handle: &Handle,
        origin: Origin,
        sink: LogBuffers,
        ended: watch::Receiver<bool>,
        _cursors: &Path,
    ) -> JoinHandle<()> {
        tokio::spawn(logs::follow_files(self.instance_dir(&handle.instance), origin, sink, ended))
    }
    fn read_usage<'a>(&'a self, handle: &'a Handle) -> Fut<'a, Option<Reading>> {
        let leader: Option<i32> = handle.id.parse().ok();
        Box::pin(async move {
            let leader = leader?;
            tokio::task::spawn_blocking(move || stats::read_process_group(leader)).await.ok()?
        })
    }
    fn run_collected<'a>(
        &'a self,
        handle: &'a Handle,
        command: &'a [String],
        env: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Result<ExecResult, String>> {
        let dir = self.instance_dir(&handle.instance);
        Box::pin(async move { commands::collected(&dir, command, env).await })
    }
    fn attach<'a>(
        &'a self,
        handle: &'a Handle,
        req: &'a ExecRequest,
        env: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Result<Session, String>> {
        let session = commands::attached(&self.instance_dir(&handle.instance), req, env);
        Box::pin(async move { session })
    }
    fn survivors(&self) -> Fut<'_, Result<Vec<Handle>, DriverError>> {
        Box::pin(ExecDriver::survivors(self))
    }
}
