//! Commands run inside live instances (`berth app NAME exec`). Agents have no listener: the
//! server queues a command for the instance's node, the node's agent takes it with a blocking
//! read, runs it through its driver, and posts the result, which answers the waiting client.
//!
//! A streamed command (`exec -i`/`-t`, or any client that asks to upgrade) is queued the same
//! way, but the agent answers by upgrading a connection of its own; the server then switches the
//! client's connection too and joins the two, so input, output and the exit flow both ways as
//! the frames of `berth_api::exec_stream`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use berth_api::{ExecRequest, ExecResult};
use hyper::upgrade::Upgraded;
use tokio::sync::{Notify, oneshot};

use crate::lock;
/// Longest a command may run when the client does not say.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest a command may be given.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// Longest a command waits for its agent to take it.
pub(crate) const TAKE_WITHIN: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(crate) struct Execs {
    pub(crate) queued: Mutex<HashMap<String, Vec<ExecRequest>>>,
    pub(crate) waiting: Mutex<HashMap<String, oneshot::Sender<ExecResult>>>,
    /// Streamed commands waiting for their agent's connection, with the node that must bring it.
    pub(crate) attaching: Mutex<HashMap<String, (String, oneshot::Sender<Upgraded>)>>,
    /// Wakes a node's blocking read when a command is queued for it.
    pub(crate) arrived: Mutex<HashMap<String, std::sync::Arc<Notify>>>,
}

impl Execs {
    pub(crate) fn queue(&self, node: &str, req: ExecRequest) {
        lock(&self.queued).entry(node.to_string()).or_default().push(req);
        self.notify(node).notify_one();
    }

    /// Takes back a command its agent did not take: it must not run later, when nobody waits
    /// for it any more.
    pub(crate) fn unqueue(&self, node: &str, id: &str) {
        if let Some(q) = lock(&self.queued).get_mut(node) {
            q.retain(|r| r.id != id);
        }
    }

    pub(crate) fn notify(&self, node: &str) -> std::sync::Arc<Notify> {
        lock(&self.arrived).entry(node.to_string()).or_default().clone()
    }
}

pub(crate) fn new_id() -> String {
    format!("x{:016x}", rand::random::<u64>())
}
