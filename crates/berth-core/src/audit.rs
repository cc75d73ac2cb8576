//! The audit log: who asked for what, from where, when, and what came of it. Every change to the
//! cluster is an entry, and every refused attempt, reads included; the server appends them to
//! the store under `audit/SEQ`.

use serde::{Deserialize, Serialize};

use crate::Millis;
use crate::access::Role;

/// What came of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Answered with success.
    Done,
    /// Refused: no or a wrong credential (401), outside the token's role or groups (403).
    Refused,
    /// Let through, and failed: invalid, over a quota, in conflict, or an error.
    Failed,
}

impl Outcome {
    /// From the answer's status: 401 and 403 refuse, any other 4xx or 5xx fails.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            401 | 403 => Outcome::Refused,
            s if s >= 400 => Outcome::Failed,
            _ => Outcome::Done,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// One entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: Millis,
    /// Who: the token's name, a member's id (an agent or router), or `anonymous`.
    pub actor: String,
    /// The token's id, when a token was given and known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The peer's address (`IP:PORT`).
    pub address: String,
    /// `app.deploy`, `secret.set`, `token.create`, ... (the method and route when unnamed).
    pub action: String,
    /// The group it acted in, when one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// What it acted on: `shop/web`, an instance, a token, a node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub outcome: Outcome,
    /// The HTTP status answered.
    pub status: u16,
    /// Why it was refused or failed: the answer's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What changed: an app's version diff (`{version, from, changes: [{field, from, to}]}`), else
    /// the request's body (a secret's value never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// Refused attempts from the same address not written before this one (kept to a few a
    /// minute per address, so that a flood of bad requests cannot fill the store).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub suppressed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
