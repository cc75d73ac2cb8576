//! Nodes and their agents: registration, heartbeats, assignments and instance reports.

use std::collections::BTreeMap;

use berth_core::spec::DriverKind;
use berth_core::{AppSpec, Instance, InstanceState, Millis, Node, Resources};
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    /// The last lines a failed instance wrote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_log: Vec<String>,
    /// The instance could not start because another process holds these of its host ports:
    /// a placement failure, not a crash of the app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taken_ports: Vec<u16>,
    /// `reason` as data. Absent from an older agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<berth_core::Reason>,
}

impl InstanceReport {
    /// Says why, in data and in words.
    pub fn because(mut self, why: berth_core::Reason) -> Self {
        self.reason = Some(why.to_string());
        self.cause = Some(why);
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRequest {
    pub reports: Vec<InstanceReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: Node,
    /// Resources promised to live instances.
    pub allocated: AllocatedResources,
    pub instances: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocatedResources {
    pub cpu: f64,
    pub memory: u64,
}
