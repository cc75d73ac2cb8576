//! Nodes and their agents: registration, heartbeats, assignments and instance reports.

use std::collections::BTreeMap;

use berth_core::spec::DriverKind;
use berth_core::{AppSpec, Dur, Instance, InstanceState, Millis, Node, NodeState, Resources};
use serde::{Deserialize, Serialize};

/// What an agent says about itself when it joins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub id: String,
    pub hostname: String,
    pub address: String,
    pub resources: Resources,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub drivers: Vec<DriverKind>,
    /// The pool it joins; an older agent's node is in the shared pool.
    #[serde(default = "shared_pool")]
    pub pool: String,
}

fn shared_pool() -> String {
    berth_core::SHARED_POOL.to_string()
}

/// An instance a node must run (or stop), with the spec of its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub instance: Instance,
    pub spec: AppSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    pub index: u64,
    pub assignments: Vec<Assignment>,
}

/// What an agent observed of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub id: String,
    pub state: InstanceState,
    #[serde(flatten)]
    pub observed: berth_core::Observed,
    /// The instance could not start because another process holds these of its host ports:
    /// a placement failure, not a crash of the app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taken_ports: Vec<u16>,
}

impl InstanceReport {
    /// A report of the instance's state, saying nothing else yet.
    pub fn new(id: &str, state: InstanceState) -> Self {
        InstanceReport { id: id.to_string(), state, observed: Default::default(), taken_ports: Vec::new() }
    }

    pub fn with_state(mut self, state: InstanceState) -> Self {
        self.state = state;
        self
    }

    pub fn healthy(mut self, healthy: Option<bool>) -> Self {
        self.observed.healthy = healthy;
        self
    }

    pub fn finished(mut self, at: Millis) -> Self {
        self.observed.finished_at = Some(at);
        self
    }

    /// The last lines it wrote, for a failure.
    pub fn last_log(mut self, lines: Vec<String>) -> Self {
        self.observed.last_log = lines;
        self
    }

    /// How it ended: its code, and an OOM kill.
    pub fn exited(mut self, exit: &berth_core::Exit) -> Self {
        self.observed.exit_code = exit.exit_code;
        self.observed.oom_killed = exit.oom_killed;
        self
    }

    /// Says why, in data and in words.
    pub fn because(mut self, why: berth_core::Reason) -> Self {
        self.observed.because(why);
        self
    }
}

/// What an agent says with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// Every port of the node's range it last found held by another process. Absent from an
    /// older agent, which leaves the node's record as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_ports: Option<Vec<u16>>,
    /// The node's drivers whose engine did not answer (Docker stopped, its socket gone).
    /// Absent from an older agent, which leaves the node's record as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drivers_down: Option<Vec<berth_core::spec::DriverKind>>,
}

/// The server's answer to a heartbeat: when to beat next. The server spaces beats out as the
/// cluster grows, and times a node out only after it missed several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub ok: bool,
    /// Beat again within this many milliseconds.
    pub interval_ms: u64,
    /// A node silent this long is cut off.
    pub timeout_ms: u64,
    /// Send metric reports at most this often (0: as configured); a large cluster spaces them.
    #[serde(default)]
    pub metrics_every_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRequest {
    pub reports: Vec<InstanceReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: Node,
    /// Ready, draining, ineligible or down.
    pub state: NodeState,
    /// Resources promised to live instances.
    pub allocated: AllocatedResources,
    /// Resources the live instances use, from their latest samples.
    #[serde(default)]
    pub used: AllocatedResources,
    pub instances: usize,
}

/// `GET /v1/nodes/{node}`: a node and what runs on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeDetail {
    #[serde(flatten)]
    pub view: NodeView,
    /// Its live instances.
    pub live: Vec<crate::InstanceView>,
}

/// `POST /v1/nodes/{node}/drain`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrainRequest {
    /// What is still on the node this long after the drain began is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Dur>,
}

/// `POST /v1/nodes/{node}/eligibility`: made eligible, a node takes new instances again (and a
/// running drain is cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EligibilityRequest {
    pub eligible: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocatedResources {
    pub cpu: f64,
    pub memory: u64,
}

/// `GET /v1/pools`: each pool with its nodes, the groups bound to it and its capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolView {
    pub name: String,
    /// Nodes in the pool, and how many of them are ready.
    pub nodes: usize,
    pub ready: usize,
    /// Groups that place here first.
    pub groups: Vec<String>,
    pub cpu_oversubscription: f64,
    /// Cores: promised to live instances, used by them, what the nodes have, and what placement
    /// may promise (what they have times the over-subscription).
    pub cpu: PoolCapacity,
    /// MiB: promised, used, what the nodes have (never over-subscribed).
    pub memory: PoolCapacity,
    /// Live instances placed here borrowed from another group's full pools.
    pub borrowed: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolCapacity {
    pub allocated: f64,
    pub used: f64,
    pub capacity: f64,
    pub placeable: f64,
}

/// `PUT /v1/pools/groups/{group}`: the pools a group places in first (none: the shared pool).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupPoolsRequest {
    pub pools: Vec<String>,
}

/// `PUT /v1/pools/{pool}`: how far the pool's cpu may be promised beyond what its nodes have.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PoolSettingsRequest {
    pub cpu_oversubscription: f64,
}

/// What joins the cluster: an agent (a node) or a router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Member {
    Agent,
    Router,
}

/// `POST /v1/join`, with the server's join token as the bearer: asks for a credential of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The node id (or router id) the credential acts as.
    pub id: String,
    pub kind: Member,
}

/// The credential `JoinRequest` asked for: `ID.SECRET`, sent as the bearer from then on. The
/// server keeps only a digest of it; this is the one time it is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinReply {
    pub id: String,
    pub credential: String,
    /// The server's CA, PEM, when it serves TLS with a CA of its own: kept beside the
    /// credential and trusted from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}
