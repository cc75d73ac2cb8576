//! `/v1/groups`: each group's quota, what it allows, and what its apps reserve now.

use berth_core::groups::{Allow, Demand, Quota};
use serde::{Deserialize, Serialize};

/// `POST /v1/groups` (with `name`) and `PUT /v1/groups/{group}`: only what is given changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<Allow>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupView {
    pub name: String,
    pub quota: Quota,
    #[serde(default)]
    pub allow: Vec<Allow>,
    /// What its apps reserve now: their instances times each one's cpu and memory.
    pub usage: Demand,
    pub apps: usize,
}
