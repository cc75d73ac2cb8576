//! Alerts as the API lists them.

use berth_core::Millis;
use serde::{Deserialize, Serialize};

/// An alert: a rule or a built-in condition that fired, with what it saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `APP:NAME` or `node:ID:NAME`: one alert per subject and rule at a time.
    pub id: String,
    /// `cpu`, `memory`, `restarts`, `5xx_rate`, `latency`, `crash_loop`, `oom_killed`, `node_lost`,
    /// `deployment_failed`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub severity: String,
    pub status: AlertStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// One line for people, like "shop/web is critical, cpu usage is 86.05".
    pub text: String,
    pub started_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Millis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// `GET /v1/alerts`: what fires now, and what fired lately (newest first).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertList {
    pub firing: Vec<Alert>,
    pub recent: Vec<Alert>,
}
