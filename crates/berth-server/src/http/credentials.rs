//! Who may act as a node. Every server has a join secret; an agent presents it once
//! (`POST /v1/join`) and gets a credential of its own, `ID.SECRET`, which it keeps in its data
//! dir and sends with every request from then on, loopback included (a TCP port is open to
//! every local user). The store keeps a SHA-256 digest of each secret, never the secret.
//! `berth node rm` revokes a credential.

use std::path::Path;

use axum::body::Bytes;
use axum::extract::{RawPathParams, Request, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use berth_api::{JoinReply, JoinRequest, Member};
use berth_core::{Level, Millis};
use berth_store::Txn;
use berth_store::state::{Subject, encode};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult, indexed, parse_json};
use crate::{Shared, now_ms};

/// Where a server keeps the join token it generated.
pub const JOIN_TOKEN_FILE: &str = "join.token";

pub fn credential_key(id: &str) -> String {
    format!("credentials/{id}")
}

pub fn revoked_key(id: &str) -> String {
    format!("revoked/{id}")
}

/// A member's credential as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    pub id: String,
    pub kind: Member,
    /// SHA-256 of the secret, hex.
    pub digest: String,
    pub issued_at: Millis,
}

/// A revoked credential: its member is refused with a message that says so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revoked {
    pub at: Millis,
}

/// Who a request comes from, once its credential checked out.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub id: String,
    pub kind: Member,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    #[error("the join token is empty")]
    Empty,
    #[error("the join token has whitespace in it")]
    Whitespace,
    #[error("cannot read or write {0}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
}

/// The join token: `given`, else the one kept at `path`, else a new one written there (mode
/// 0600), as k3s does with its node token.
pub fn join_token(path: &Path, given: Option<String>) -> Result<String, JoinTokenError> {
    if let Some(token) = given {
        return check_token(token);
    }
    let path = path.to_path_buf();
    match std::fs::read_to_string(&path) {
        Ok(text) => return check_token(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(JoinTokenError::Io(path, e)),
    }
    let token = format!("berth-join-{}", hex(&rand::random::<[u8; 32]>()));
    write_private(&path, &token).map_err(|e| JoinTokenError::Io(path.clone(), e))?;
    Ok(token)
}

/// Writes a secret to `path` as a line, readable by its owner only (`berth_tls::write_private`).
pub(crate) fn write_private(path: &Path, secret: &str) -> std::io::Result<()> {
    berth_tls::write_private(path, &format!("{secret}\n"))
}

fn check_token(token: String) -> Result<String, JoinTokenError> {
    if token.is_empty() {
        return Err(JoinTokenError::Empty);
    }
    if token.chars().any(char::is_whitespace) {
        return Err(JoinTokenError::Whitespace);
    }
    Ok(token)
}

/// Lower-case hex, into one string: every agent request digests its credential.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

pub fn digest(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// Whether `given` is the join token, compared through digests so that the time taken says
/// nothing about how much of it matched.
fn is_join_token(shared: &Shared, given: &str) -> bool {
    *digest(given) == *shared.join_digest
}

/// A new secret for `id`: the credential to hand out and the record to keep.
pub fn mint(id: &str, kind: Member, now: Millis) -> (String, Credential) {
    let secret = hex(&rand::random::<[u8; 32]>());
    let record = Credential { id: id.to_string(), kind, digest: digest(&secret), issued_at: now };
    (format!("{id}.{secret}"), record)
}

fn refuse(why: String) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, why)
}

/// Checks the bearer credential of a request only `kind` makes: a known, unrevoked credential
/// of that kind whose secret matches, acting as the member in the path (when the path names
/// one). The caller goes into the request's extensions.
pub async fn members_only(
    AxState((shared, kind)): AxState<(Shared, Member)>,
    params: RawPathParams,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(bearer) = bearer(req.headers()) else {
        let who = match kind {
            Member::Agent => "agents, which join with the server's join token (berth agent --join-token-file",
            Member::Router => "routers, which join with the server's join token (berth router --join-token-file",
        };
        let why = format!("no credential: this endpoint is for {who}; the server keeps it in <data-dir>/join.token)");
        return refuse(why).into_response();
    };
    let caller = match check_member(&shared, bearer, kind) {
        Ok(caller) => caller,
        Err(refused) => return refused.into_response(),
    };
    if let Some((_, id)) = params.iter().find(|(name, _)| *name == "id")
        && id != caller.id
    {
        let why = format!("the credential of {} cannot act for {id}", caller.id);
        return ApiError::new(StatusCode::FORBIDDEN, why).into_response();
    }
    req.extensions_mut().insert(caller.clone());
    let mut resp = next.run(req).await;
    // For the audit log, which writes who a member's refused or audited request came from.
    resp.extensions_mut().insert(caller);
    resp
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    Some(value.strip_prefix("Bearer ")?.trim())
}

/// `POST /v1/join`: the join token as the bearer buys a credential for the member named. A
/// member that joins again (its credential file lost) gets a new secret; the old one stops
/// working. A revoked member can join again only this way, with the join token.
pub(crate) async fn join(AxState(shared): AxState<Shared>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    let Some(token) = bearer(&headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no join token: pass the server's join token (berth agent --join-token-file; the server keeps it in <data-dir>/join.token)",
        ));
    };
    if !is_join_token(&shared, token) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong join token: it is not this server's (see <data-dir>/join.token on the server)",
        ));
    }
    let req: JoinRequest = parse_json(&body)?;
    if req.id.is_empty() || req.id.contains('/') || req.id.chars().any(char::is_whitespace) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "id: must be non-empty, with no / and no spaces"));
    }
    let now = now_ms();
    let (credential, record) = mint(&req.id, req.kind, now);
    let txn = Txn::default().put(credential_key(&req.id), encode(&record)).delete(revoked_key(&req.id));
    let msg = format!("{:?} {} joined with the join token and got a credential of its own", req.kind, req.id);
    let subject = match req.kind {
        Member::Agent => Subject::node(&req.id),
        Member::Router => Subject::default(),
    };
    let txn = shared.state.with_event(txn, now, Level::Info, "member.joined", subject, msg);
    let index = shared.state.commit(txn)?;
    Ok(indexed(index, &JoinReply { id: req.id, credential, ca: shared.ca_pem.clone() }))
}

/// A member's credential of the `kind` expected.
pub(crate) fn check_member(shared: &Shared, bearer: &str, kind: Member) -> Result<Caller, ApiError> {
    let caller = check(shared, bearer)?;
    if caller.kind != kind {
        return Err(refuse(format!("credential {}: a {:?} credential, not a {kind:?}'s", caller.id, caller.kind)));
    }
    Ok(caller)
}

fn check(shared: &Shared, bearer: &str) -> Result<Caller, ApiError> {
    // A refusal first says whether the bearer was the join token; a credential that checks out
    // never pays for that second digest.
    let refused = |why: String| {
        if is_join_token(shared, bearer) {
            return refuse("the join token is for joining (POST /v1/join), not a credential".into());
        }
        refuse(why)
    };
    let Some((id, secret)) = bearer.rsplit_once('.') else {
        return Err(refused("malformed credential: expected ID.SECRET, as /v1/join hands out".into()));
    };
    let Some(known) = shared.seen_record(|seen| &mut seen.credentials, id, &credential_key(id))? else {
        let why = match shared.state.record::<Revoked>(&revoked_key(id))? {
            Some(r) => format!(
                "the credential of {id} was revoked (berth node rm or berth router rm) at {}; join again with the join token after removing the member's credential file",
                chrono::DateTime::from_timestamp_millis(r.value.at).map(|t| t.to_rfc3339()).unwrap_or_default()
            ),
            None => format!("unknown credential: {id} never joined this server (join with its join token)"),
        };
        return Err(refused(why));
    };
    if digest(secret) != known.digest {
        return Err(refused(format!("wrong credential for {id}")));
    }
    Ok(Caller { id: known.id, kind: known.kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_token_is_made_once_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOIN_TOKEN_FILE);
        let made = join_token(&path, None).unwrap();
        assert!(made.starts_with("berth-join-") && made.len() > 60, "{made}");
        let meta = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(join_token(&path, None).unwrap(), made, "the same token after a restart");
        assert_eq!(join_token(&path, Some("given".into())).unwrap(), "given");
        assert!(matches!(join_token(&path, Some(String::new())), Err(JoinTokenError::Empty)));
        assert!(matches!(join_token(&path, Some("a b".into())), Err(JoinTokenError::Whitespace)));
    }

    #[test]
    fn hex_is_two_lower_case_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn a_minted_credential_names_its_member_and_only_its_digest_is_kept() {
        let (credential, record) = mint("node-1", Member::Agent, 5);
        let (id, secret) = credential.rsplit_once('.').unwrap();
        assert_eq!(id, "node-1");
        assert_eq!(record.digest, digest(secret));
        assert!(!serde_json::to_string(&record).unwrap().contains(secret));
        assert_ne!(mint("node-1", Member::Agent, 5).0, credential, "each secret is new");
    }
}
