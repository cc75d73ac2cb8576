//! Log lines: what agents ship and what a query asks for.

use std::collections::BTreeMap;

use berth_core::Millis;
use serde::{Deserialize, Serialize};

/// One line an instance wrote, as collected by its node's agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// When the agent read it (the engine's timestamp for Docker), ms since the epoch.
    pub t: Millis,
    /// `GROUP/NAME`.
    pub app: String,
    pub instance: String,
    pub node: String,
    pub stream: LogStream,
    pub line: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// A batch of lines from one node, with what the node had to drop since its last batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogBatch {
    pub lines: Vec<LogLine>,
    /// Lines dropped per instance because the node's buffer for it was full.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dropped: BTreeMap<String, u64>,
}

/// Which lines `logs` returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogQuery {
    /// Only lines at or after this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Millis>,
    /// At most this many of the latest lines (before following).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// A regular expression the line must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grep: Option<String>,
    /// Keep the response open and send new lines as they come.
    #[serde(default)]
    pub follow: bool,
    /// A job's run, by number: the lines of its attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<u64>,
}

/// An output (a log sink, a webhook, an Alertmanager) and whether it can be reached
/// (`GET /v1/outputs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputStatus {
    /// As written in a flag or a spec: `syslog+tcp://HOST:PORT`, `http://...`, `alertmanager+http://...`.
    pub output: String,
    /// `logs` or `alerts`.
    pub carries: String,
    /// Server-wide (a flag), or the apps whose spec names it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<String>,
    /// Whether its last check could connect to it.
    pub healthy: bool,
    pub checked_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
