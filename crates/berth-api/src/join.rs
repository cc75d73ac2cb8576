//! A member's own credential (agent or router): read from its file, or got once from the
//! server with the join token and kept in that file (mode 0600) for every later start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_core::retry::Retry;

use crate::{Client, ClientError, JoinRequest, Member};

/// The file a member keeps its credential in, in its data dir.
pub const CREDENTIAL_FILE: &str = "credential";
/// The server's CA, as the join handed it, beside the credential.
pub const CA_FILE: &str = "ca.pem";

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "no credential in {0} and no join token: pass --join-token-file FILE or --join-token TOKEN (the server keeps its token in <data-dir>/join.token)"
    )]
    NoToken(PathBuf),
    #[error("the server refused to let {id} join: {why}")]
    Refused { id: String, why: ClientError },
    #[error("{0}: {1}")]
    File(PathBuf, std::io::Error),
    #[error(transparent)]
    Tls(#[from] berth_tls::TlsError),
}

/// What a member trusts of an `https://` server: the CA file it was given, else the CA it kept
/// when it joined (beside `credential_file`), else the CA fingerprint it was given (for its
/// first join), else nothing.
pub fn member_trust(
    credential_file: &Path,
    ca_file: Option<&Path>,
    fingerprint: Option<&str>,
) -> Result<berth_tls::Trust, JoinError> {
    if let Some(path) = ca_file {
        return Ok(berth_tls::Trust::ca_file(path)?);
    }
    let kept = credential_file.with_file_name(CA_FILE);
    if kept.exists() {
        return Ok(berth_tls::Trust::ca_file(&kept)?);
    }
    match fingerprint {
        Some(fp) => Ok(berth_tls::Trust::pinned(fp)?),
        None => Ok(berth_tls::Trust::Nothing),
    }
}

/// The credential in `file`, or a new one for `id` from the server when there is none. Waits
/// for an unreachable server (it may be starting); a refusal is final.
pub async fn load_or_join(
    client: &Client,
    file: &Path,
    id: &str,
    kind: Member,
    join_token: Option<&str>,
) -> Result<String, JoinError> {
    match std::fs::read_to_string(file) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(JoinError::File(file.to_path_buf(), e)),
    }
    let Some(token) = join_token else {
        return Err(JoinError::NoToken(file.to_path_buf()));
    };
    let req = JoinRequest { id: id.to_string(), kind };
    let mut retry = Retry::new(Duration::from_millis(100), Duration::from_secs(3));
    let reply = loop {
        match client.join(token, &req).await {
            Ok(reply) => break reply,
            // Not a refusal: the servers are between leaders, or the leader is out of reach.
            Err(e @ ClientError::Api { status: 502 | 503, .. }) => {
                tracing::warn!(error = %e, "joining the server failed; retrying");
            }
            Err(why @ (ClientError::Api { .. } | ClientError::Untrusted { .. })) => {
                return Err(JoinError::Refused { id: id.to_string(), why });
            }
            Err(e) => tracing::warn!(error = %e, "joining the server failed; retrying"),
        }
        tokio::time::sleep(retry.next_delay(rand::random())).await;
    };
    // The CA first: a crash before the credential is kept joins again, and keeps it again.
    if let Some(ca) = &reply.ca {
        let path = file.with_file_name(CA_FILE);
        keep(&path, ca).map_err(|e| JoinError::File(path, e))?;
    }
    keep(file, &reply.credential).map_err(|e| JoinError::File(file.to_path_buf(), e))?;
    tracing::info!(%id, file = %file.display(), "joined with the join token; credential kept");
    Ok(reply.credential)
}

/// The member id a credential (`ID.SECRET`) acts as.
pub fn credential_id(credential: &str) -> Option<&str> {
    credential.rsplit_once('.').map(|(id, _)| id)
}

/// Written aside (0600) and renamed: a crash leaves the old file or the new, never half of one.
fn keep(path: &Path, credential: &str) -> std::io::Result<()> {
    berth_tls::write_private(path, credential)
}
