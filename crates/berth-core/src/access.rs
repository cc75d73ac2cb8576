//! Who may do what: API tokens carry a role, scoped to groups or to all of them. Pure: the server
//! decides with these, the CLI shows them.

use serde::{Deserialize, Serialize};

/// What a token may do, from most to least.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, tokens, groups, nodes, pools and static upstreams included.
    Admin,
    /// Deploys, scales, upgrades, rolls back, restarts and sets rules in its groups, and reads
    /// their logs, metrics and events.
    Deployer,
    /// Reads its groups, never a secret's value.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deployer => "deployer",
            Role::Viewer => "viewer",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
