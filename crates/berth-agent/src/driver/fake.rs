//! A driver whose instances are entries in memory that run until a test ends them or
//! the agent stops them: supervisors are tested without an engine or a process, and `berth bench
//! cluster` runs many simulated nodes on one machine.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::{Assignment, ExecRequest, ExecResult};
use berth_core::Exit;
use berth_core::spec::DriverKind;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::session::Session;
use super::{Driver, DriverError, Fut, Handle, Runtime};
use crate::lock;
use crate::logs::{LogBuffers, Origin};
use crate::metrics::Reading;

#[derive(Default)]
struct State {
    exits: HashMap<String, watch::Sender<Option<Exit>>>,
    /// When each was started, for its simulated readings.
    started_at: HashMap<String, i64>,
    started: Vec<String>,
    stopped: Vec<String>,
    /// Instances whose leftovers were removed.
    cleared: Vec<String>,
}

/// The test's side of a fake driver.
#[derive(Clone, Default)]
pub(crate) struct FakeDriver {
    state: Arc<Mutex<State>>,
    /// What `tail` answers.
    last_lines: Vec<String>,
}

impl FakeDriver {
    #[cfg(test)]
    /// A fake whose instances' last lines (`tail`) are these.
    pub(crate) fn with_last_lines(lines: &[&str]) -> FakeDriver {
        FakeDriver { last_lines: lines.iter().map(|l| l.to_string()).collect(), ..FakeDriver::default() }
    }

    pub(crate) fn driver(&self) -> Driver {
        Driver::new(self.clone())
    }

    #[cfg(test)]
    /// Ends a running instance as if its process exited so.
    pub(crate) fn exit(&self, instance: &str, exit: Exit) {
        if let Some(tx) = lock(&self.state).exits.get(instance) {
            let _ = tx.send(Some(exit));
        }
    }

    #[cfg(test)]
    pub(crate) fn started(&self) -> Vec<String> {
        lock(&self.state).started.clone()
    }

    #[cfg(test)]
    pub(crate) fn stopped(&self) -> Vec<String> {
        lock(&self.state).stopped.clone()
    }

    #[cfg(test)]
    pub(crate) fn cleared(&self) -> Vec<String> {
        lock(&self.state).cleared.clone()
    }
}

impl Runtime for FakeDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Exec
    }
    fn start<'a>(&'a self, a: &'a Assignment, _: &'a BTreeMap<String, String>) -> Fut<'a, Result<Handle, DriverError>> {
        let id = a.instance.id.clone();
        let mut state = lock(&self.state);
        state.started.push(id.clone());
        state.exits.insert(id.clone(), watch::channel(None).0);
        state.started_at.insert(id.clone(), berth_core::now_ms());
        Box::pin(async move { Ok(Handle { id: format!("fake-{id}"), instance: id }) })
    }
    fn wait<'a>(&'a self, handle: &'a Handle) -> Fut<'a, Exit> {
        let rx = lock(&self.state).exits.get(&handle.instance).map(watch::Sender::subscribe);
        Box::pin(async move {
            let Some(mut rx) = rx else { return Exit::default() };
            match rx.wait_for(Option::is_some).await {
                Ok(exit) => exit.clone().unwrap_or_default(),
                Err(_) => Exit::default(),
            }
        })
    }
    fn stop<'a>(&'a self, handle: &'a Handle, _: Duration) -> Fut<'a, Result<(), DriverError>> {
        let mut state = lock(&self.state);
        state.stopped.push(handle.instance.clone());
        if let Some(tx) = state.exits.get(&handle.instance) {
            // SIGTERM, as a shell reports it.
            let _ = tx.send(Some(Exit { exit_code: Some(143), ..Default::default() }));
        }
        Box::pin(async { Ok(()) })
    }
    fn remove_leftovers(&self, instance: &str, _: &Path) {
        lock(&self.state).cleared.push(instance.to_string());
    }
    fn tail<'a>(&'a self, _: &'a Handle, lines: usize) -> Fut<'a, Vec<String>> {
        let last: Vec<String> = self.last_lines.iter().rev().take(lines).rev().cloned().collect();
        Box::pin(async move { last })
    }
    fn collect_logs(&self, _: &Handle, _: Origin, _: LogBuffers, _: watch::Receiver<bool>, _: &Path) -> JoinHandle<()> {
        tokio::spawn(async {})
    }
    /// What a process at 1 % of a core and 8 MiB reads: the server takes a simulated node's
    /// samples as it takes a real one's.
    fn read_usage<'a>(&'a self, handle: &'a Handle) -> Fut<'a, Option<Reading>> {
        let started_at = lock(&self.state).started_at.get(&handle.instance).copied();
        Box::pin(async move {
            let now = berth_core::now_ms();
            let cpu_seconds = (now - started_at?) as f64 / 1000.0 * 0.01;
            Some(Reading {
                taken_at: now,
                cpu_seconds,
                memory_bytes: 8 << 20,
                memory_limit_bytes: Some(8 << 20),
                rss_bytes: Some(8 << 20),
                block_read_bytes: 0,
                block_write_bytes: 0,
                net_rx_bytes: None,
                net_tx_bytes: None,
            })
        })
    }
    fn run_collected<'a>(
        &'a self,
        _: &'a Handle,
        command: &'a [String],
        _: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Result<ExecResult, String>> {
        Box::pin(async move { Ok(ExecResult { exit_code: Some(0), stdout: command.join(" "), ..Default::default() }) })
    }
    fn attach<'a>(
        &'a self,
        _: &'a Handle,
        _: &'a ExecRequest,
        _: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Result<Session, String>> {
        Box::pin(async { Err("the fake driver has no sessions".to_string()) })
    }
    fn survivors(&self) -> Fut<'_, Result<Vec<Handle>, DriverError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
