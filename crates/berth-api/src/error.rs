//! The error every refusal carries, and what a client makes of one.

use berth_core::SpecError;
use serde::{Deserialize, Serialize};

/// Every non-2xx response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<SpecError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused: its own words (the status is in `status()`, not in the message).
    #[error("{}", body.error)]
    Api { status: u16, body: ErrorBody },
    #[error(
        "cannot reach the Berth server at {url}: {why}\n  start one with `berth up`, or point at yours with --server URL or BERTH_SERVER"
    )]
    Unreachable { url: String, why: String },
    #[error("unexpected answer from {url}: {why}")]
    Decode { url: String, why: String },
    /// The server's certificate is not trusted here: retrying cannot help.
    #[error(
        "the Berth server at {url} is not trusted: {why}\n  trust its CA with --ca-file (BERTH_CA_FILE, or the context's ca), or pin it with --ca-fingerprint (the server prints its CA fingerprint at first start)"
    )]
    Untrusted { url: String, why: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A refusal of who the caller is (a wrong, missing or revoked credential): retrying cannot
    /// help, so a member (agent or router) stops and says why.
    pub fn is_refusal(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }
}
