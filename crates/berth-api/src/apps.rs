//! Apps: status with instances and counts, deploy, scale and upgrade bodies.

use berth_core::{AppSpec, Deployment, Instance, InstanceState, Millis};
use serde::{Deserialize, Serialize};

/// An instance as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    #[serde(flatten)]
    pub instance: Instance,
    /// `host:port` where the first port answers.
    pub address: Option<String>,
    /// Its node is disconnected: `state` is the last one known, and routers send it nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unreachable: bool,
}

impl InstanceView {
    /// `instance`, on a node that is disconnected when `unreachable`.
    pub fn new(instance: Instance, unreachable: bool) -> Self {
        InstanceView { address: instance.address(), unreachable: unreachable && instance.state.is_live(), instance }
    }
}

impl From<Instance> for InstanceView {
    fn from(instance: Instance) -> Self {
        InstanceView::new(instance, false)
    }
}

/// Instance counts by state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub staging: usize,
    pub starting: usize,
    pub running: usize,
    pub failed: usize,
    pub stopped: usize,
    /// Live instances the platform is stopping.
    pub stopping: usize,
    /// Live instances on disconnected nodes, in no other count: nothing says what they are doing.
    #[serde(default)]
    pub unknown: usize,
}

impl Counts {
    /// Counts `instances`; those for which `unreachable` holds count as unknown while live.
    pub fn of<'a>(instances: impl Iterator<Item = &'a Instance>, unreachable: impl Fn(&Instance) -> bool) -> Counts {
        let mut c = Counts::default();
        for i in instances {
            if i.state.is_live() && unreachable(i) {
                c.unknown += 1;
                continue;
            }
            if i.state.is_live() && i.desired == berth_core::Desired::Stop {
                c.stopping += 1;
                continue;
            }
            match i.state {
                InstanceState::Staging => c.staging += 1,
                InstanceState::Starting => c.starting += 1,
                InstanceState::Running => c.running += 1,
                InstanceState::Failed => c.failed += 1,
                InstanceState::Stopped | InstanceState::Succeeded => c.stopped += 1,
            }
        }
        c
    }
}

/// An app with its live and recent instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub id: String,
    pub name: String,
    pub group: String,
    pub version: u64,
    /// Desired instances.
    pub desired: u32,
    pub image: Option<String>,
    pub spec: AppSpec,
    pub counts: Counts,
    /// Current-version instances running and ready, and no old version left.
    pub deployed: bool,
    pub destroying: bool,
    /// The latest deployment, running or ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Deployment>,
    /// Set while instances keep failing in a row: what the last one died of, and its last words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_loop: Option<CrashLoop>,
    /// The last version whose deployment ended with every instance healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_version: Option<u64>,
    /// Earlier versions with the current spec, whose instances count as current.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alike: Vec<u64>,
    /// Why instances are missing, when they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// The same as data, with its kind (a launch backoff, or each node's rejection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<berth_core::reason::Waiting>,
    pub instances: Vec<InstanceView>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl AppStatus {
    /// Whether instances of `version` run the current spec (as `App::is_current` decides).
    pub fn is_current(&self, version: u64) -> bool {
        version == self.version || self.alike.contains(&version)
    }
}

/// An app whose instances keep failing, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrashLoop {
    /// Failures in a row (each one a restart, as a new instance).
    pub failures: u32,
    /// No new instance is launched before this (the backoff).
    pub next_launch_at: Millis,
    /// The latest failed instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_log: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRequest {
    pub spec: AppSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployResponse {
    pub created: bool,
    /// False when the spec equals the current one.
    pub changed: bool,
    pub version: u64,
    pub app: AppStatus,
}

/// How a change treats a deployment in progress, and whether it starts as a canary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeOptions {
    /// Supersede a deployment in progress instead of being refused.
    pub force: bool,
    /// Start this many new instances beside the old ones and wait for `promote`.
    pub canary: Option<u32>,
}

impl ChangeOptions {
    pub(crate) fn query(&self) -> String {
        let mut parts = Vec::new();
        if self.force {
            parts.push("force=true".to_string());
        }
        if let Some(n) = self.canary {
            parts.push(format!("canary={n}"));
        }
        if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub instances: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeRequest {
    pub image: String,
}
