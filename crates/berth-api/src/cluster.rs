//! `/v1/cluster`: the servers sharing a store, and which one leads.

use berth_core::Millis;
use serde::{Deserialize, Serialize};

/// `GET /v1/cluster`, answered by every server alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The server that answered.
    #[serde(rename = "self")]
    pub self_id: String,
    /// The leader, when one is elected.
    pub leader: Option<String>,
    /// When it was elected (ms since the epoch).
    pub since: Option<Millis>,
    pub servers: Vec<ServerView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerView {
    pub id: String,
    /// Its API's URL, as it told the others.
    pub api: String,
    pub leader: bool,
    /// When it last said it was alive (ms since the epoch).
    pub last_seen: Millis,
}
