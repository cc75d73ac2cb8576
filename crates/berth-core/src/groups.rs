//! Groups: what each may reserve at once (its quota) and what it lets its apps do beyond the
//! usual. Plain data; `berth_plan::quota` decides with it.

use serde::{Deserialize, Serialize};

use crate::spec::AppSpec;

/// What a group may reserve at once; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
}

/// What some instances reserve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    pub cpu: f64,
    /// MiB.
    pub memory: u64,
    pub instances: u32,
}

impl Demand {
    /// `instances` instances of `spec`.
    pub fn of(spec: &AppSpec, instances: u32) -> Demand {
        Demand {
            cpu: spec.cpu.unwrap_or(0.0) * f64::from(instances),
            memory: spec.memory.unwrap_or(0).saturating_mul(u64::from(instances)),
            instances,
        }
    }

    pub fn plus(self, other: Demand) -> Demand {
        Demand {
            cpu: self.cpu + other.cpu,
            memory: self.memory.saturating_add(other.memory),
            instances: self.instances.saturating_add(other.instances),
        }
    }
}

/// What a group lets its apps do beyond the usual.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allow {
    /// `privileged: true`: the instance as root of its machine.
    Privileged,
    /// `network: host`: the machine's own network.
    HostNetwork,
}

impl Allow {
    pub fn as_str(self) -> &'static str {
        match self {
            Allow::Privileged => "privileged",
            Allow::HostNetwork => "host-network",
        }
    }
}

/// A group as the store keeps it (`groups/NAME`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    #[serde(default)]
    pub quota: Quota,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Allow>,
}
