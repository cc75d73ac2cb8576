//! API tokens: `berth token create|ls|revoke`, for admins.

use berth_core::Millis;
use berth_core::access::Role;
use serde::{Deserialize, Serialize};

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRequest {
    /// Who or what holds it (`ci`, `alice`): the audit log's actor.
    pub name: String,
    pub role: Role,
    /// The groups it acts in; none: every group.
    #[serde(default)]
    pub groups: Vec<String>,
    /// It stops working this many seconds after it is made; none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub groups: Vec<String>,
    pub created_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Millis>,
}

/// The answer to `POST /v1/tokens`: the token itself, shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
    #[serde(flatten)]
    pub view: TokenView,
}
