//! Jobs: deploy, list, status with history and run-time percentiles, run now, suspend, resume,
//! destroy.

use berth_core::job::{Concurrency, RunStats};
use berth_core::{JobSpec, Millis, Run};
use serde::{Deserialize, Serialize};

/// `PUT /v1/jobs/{group}/{name}` as JSON (YAML is sent as is, `kind: job`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDeployRequest {
    pub spec: JobSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDeployResponse {
    pub created: bool,
    /// False when the spec equals the current one.
    pub changed: bool,
    pub version: u64,
    pub job: JobStatus,
}

/// Run times over the runs kept, from their process start to their end (ms), nearest rank.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Durations {
    /// Runs that ran (succeeded or failed) among those kept.
    pub count: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<i64>,
}

impl JobStatus {
    /// When it runs, for people: its schedule and zone, and its parents.
    pub fn schedule_text(&self) -> String {
        let mut text = self.schedule.clone().unwrap_or_default();
        if let Some(zone) = &self.schedule_time_zone {
            text.push_str(&format!(" ({zone})"));
        }
        if !self.after.is_empty() {
            if !text.is_empty() {
                text.push_str(", ");
            }
            text.push_str(&format!("after {}", self.after.join(" and ")));
        }
        text
    }
}

/// A job as `berth job ls` and `berth job NAME status` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: String,
    pub group: String,
    pub name: String,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_time_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    pub concurrency: Concurrency,
    pub suspended: bool,
    pub destroying: bool,
    /// When the schedule runs it next; unset when suspended, done, or parents-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<Millis>,
    /// Runs going now (pending or running).
    pub active: usize,
    /// The latest run that ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Run>,
    /// Succeeded among the kept runs that ran or were missed (0 to 1); unset before any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    pub durations: Durations,
    /// Every run ever ended, by outcome and duration (as `/metrics`).
    pub stats: RunStats,
    /// The runs kept, newest first (`GET /v1/jobs/{group}/{name}` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<Run>,
    pub spec: JobSpec,
}
