//! The agent's own credential: read from its data dir, or got once from the server with the
//! join token and kept there (mode 0600) for every later start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_api::{Client, ClientError, JoinRequest, Member};
use berth_core::retry::Retry;

use crate::AgentError;

pub const CREDENTIAL_FILE: &str = "credential";

/// The credential kept in `dir`, or a new one from the server when there is none. Waits for an
/// unreachable server (it may be starting); a refusal is final.
pub async fn load_or_join(
    client: &Client,
    dir: &Path,
    id: &str,
    join_token: Option<&str>,
) -> Result<String, AgentError> {
    let path = dir.join(CREDENTIAL_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AgentError::DataDir(path, e)),
    }
    let Some(token) = join_token else {
        return Err(AgentError::NoJoinToken(path));
    };
    let req = JoinRequest { id: id.to_string(), kind: Member::Agent };
    let mut retry = Retry::new(Duration::from_millis(100), Duration::from_secs(3));
    let reply = loop {
        match client.join(token, &req).await {
            Ok(reply) => break reply,
            Err(e @ ClientError::Api { .. }) => return Err(AgentError::Refused(e.to_string())),
            Err(e) => tracing::warn!(error = %e, "joining the server failed; retrying"),
        }
        tokio::time::sleep(retry.next_delay(rand::random())).await;
    };
    keep(&path, &reply.credential).map_err(|e| AgentError::DataDir(path.clone(), e))?;
    tracing::info!(node = %id, file = %path.display(), "joined with the join token; credential kept");
    Ok(reply.credential)
}

/// Written aside (0600) and renamed: a crash leaves the old file or the new, never half of one.
fn keep(path: &PathBuf, credential: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(credential.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
