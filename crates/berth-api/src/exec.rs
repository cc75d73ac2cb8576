//! Commands inside instances: the request and the collected result (streams: `exec_stream`).

use serde::{Deserialize, Serialize};

use crate::exec_stream;

/// A command to run inside a live instance (`berth app NAME exec`), as the server hands it to
/// the instance's agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Set by the server; the agent answers under it.
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub instance: String,
    pub command: Vec<String>,
    /// How long the command may run, in ms (default 60 s). A streamed command runs until it
    /// ends or its client goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Keep the command's stdin open for the client's input (`exec -i`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// Run the command on a terminal (`exec -t`); its output then comes as one stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// The client's terminal size when the command starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<exec_stream::TermSize>,
    /// Set by the server: the agent attaches a stream (`/v1/nodes/{id}/execs/{exec}/stream`)
    /// instead of answering with the collected output.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// What a command run in an instance did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Why it could not run at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
