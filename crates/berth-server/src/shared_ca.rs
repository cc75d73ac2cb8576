//! One CA for the servers sharing a store. The first server to serve HTTPS with a CA of its own
//! publishes it in the store (`config/tls-ca`), its key sealed with the secrets key that every
//! one of them holds and the store never does; the others sign their certificates with it. An
//! agent that pinned the CA at its join then trusts every server.

use std::path::Path;

use berth_store::{Store, StoreError, Txn};
use serde::{Deserialize, Serialize};

use crate::ServerError;
use crate::secrets::{SecretRecord, SecretsKey};

const KEY: &str = "config/tls-ca";

#[derive(Debug, Serialize, Deserialize)]
struct SharedCa {
    cert: String,
    /// The CA's private key, PEM, sealed.
    key: SecretRecord,
}

fn unreadable(why: impl std::fmt::Display) -> ServerError {
    ServerError::Tls(berth_tls::TlsError::Config(format!("the servers' shared CA ({KEY}): {why}")))
}

/// This server's identity under the store's CA, publishing its own when there is none yet.
pub(crate) fn identity(
    store: &dyn Store,
    secrets: &SecretsKey,
    dir: &Path,
    names: &[String],
) -> Result<berth_tls::Identity, ServerError> {
    for _ in 0..3 {
        if let Some(entry) = store.get(KEY)? {
            let shared: SharedCa = serde_json::from_slice(&entry.value).map_err(unreadable)?;
            let key_pem = secrets.open(&shared.key).map_err(unreadable)?;
            let ca = berth_tls::CaFiles { cert_pem: shared.cert, key_pem };
            return Ok(berth_tls::identity_under(dir, names, &ca)?);
        }
        let identity = berth_tls::own_identity(dir, names)?;
        let ca = berth_tls::read_ca(dir)?;
        let sealed = secrets.seal("berth", "tls-ca", 1, &ca.key_pem, crate::now_ms());
        let record = serde_json::to_vec(&SharedCa { cert: ca.cert_pem, key: sealed }).unwrap_or_default();
        match store.commit(Txn::default().expect(KEY, 0).put(KEY, record)) {
            Ok(_) => {
                tracing::info!(ca = %identity.ca_fingerprint, "this server's CA is now every server's");
                return Ok(identity);
            }
            // Another server published first: take its CA, once this server's view has it.
            Err(StoreError::Conflict(_)) => std::thread::sleep(std::time::Duration::from_millis(100)),
            Err(e) => return Err(e.into()),
        }
    }
    Err(unreadable("it changed three times while this server read it"))
}
