//! `/v1/secrets`: values an app's environment refers to (`{secret: NAME}`), kept sealed. No
//! answer ever carries a value but the one to the agent starting an instance that needs it.

use std::collections::BTreeMap;

use berth_core::Millis;
use serde::{Deserialize, Serialize};

/// `PUT /v1/secrets/{group}/{name}`: the value to seal.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretRequest {
    pub value: String,
}

/// Never printed: a request's value is the secret itself.
impl std::fmt::Debug for SecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretRequest { value: <hidden> }")
    }
}

/// A secret as the API shows it: never its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretView {
    pub group: String,
    pub name: String,
    /// 1 when set first, one more at each change.
    pub version: u64,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Apps (`GROUP/NAME`) whose current version refers to it.
    #[serde(default)]
    pub used_by: Vec<String>,
}

/// `GET /v1/nodes/{id}/instances/{instance}/secrets`: the values of the secrets the instance's
/// environment refers to, by variable name; for the agent of the node it is placed on only.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceSecrets {
    pub environment: BTreeMap<String, String>,
}

impl std::fmt::Debug for InstanceSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceSecrets").field("variables", &self.environment.keys().collect::<Vec<_>>()).finish()
    }
}
