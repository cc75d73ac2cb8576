//! Secrets sealed at rest. Each value is sealed with ChaCha20-Poly1305 (ring, already the tree's
//! one crypto provider) under a key that lives in its own file, apart from the store: a copy of
//! the store alone, or an etcd snapshot later, gives no value away. The sealed text is bound to
//! the secret's group, name and version, so that it cannot be moved to another record.

use std::path::{Path, PathBuf};

use berth_core::Millis;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

use crate::http::credentials::{hex, write_private};

/// Where a server keeps the key it made at first start, beside its join token.
pub const SECRETS_KEY_FILE: &str = "secrets.key";

pub fn secret_key(group: &str, name: &str) -> String {
    format!("secrets/{group}/{name}")
}

/// A secret as the store keeps it: sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub group: String,
    pub name: String,
    pub version: u64,
    /// Which key sealed it (`SecretsKey::id`): a server with another key says so, not "corrupt".
    pub key_id: String,
    /// Hex.
    pub nonce: String,
    /// The sealed value and its tag, hex.
    pub sealed: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsKeyError {
    #[error("cannot read or write {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: not a secrets key (expected 64 hex digits, as the server writes it)")]
    Malformed(PathBuf),
    #[error(
        "{path} is missing, and the store holds {count} secret(s) sealed with key {key_id}: restore that file (or pass --secrets-key-file), else they cannot be opened"
    )]
    Missing { path: PathBuf, count: usize, key_id: String },
    #[error(
        "{path} holds key {found}, and the store's {count} secret(s) are sealed with key {key_id}: every server sharing a store needs the same --secrets-key-file"
    )]
    Other { path: PathBuf, found: String, count: usize, key_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error(
        "secret {0} was sealed with key {1}, and this server has key {2}: start it with the key file it was sealed with"
    )]
    OtherKey(String, String, String),
    #[error("secret {0} does not open: its record was altered, or moved from another secret")]
    Tampered(String),
}

/// The key secrets are sealed with. Never printed.
pub struct SecretsKey {
    key: LessSafeKey,
    id: String,
    /// Servers prove to each other with it that they relayed a request (`relay.rs`): they share
    /// the secrets key, agents and routers never have it.
    relay: ring::hmac::Key,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretsKey({})", self.id)
    }
}

impl SecretsKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let mut named = b"berth secrets key\0".to_vec();
        named.extend_from_slice(bytes);
        let id = hex(&ring::digest::digest(&ring::digest::SHA256, &named).as_ref()[..8]);
        // A 32-byte key is what ChaCha20-Poly1305 takes: this cannot fail.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).unwrap_or_else(|_| unreachable!("32-byte key"));
        let mut relay_key = b"berth relay key\0".to_vec();
        relay_key.extend_from_slice(bytes);
        let relay = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            ring::digest::digest(&ring::digest::SHA256, &relay_key).as_ref(),
        );
        SecretsKey { key: LessSafeKey::new(unbound), id, relay }
    }

    /// What a server sends with a request it relays for `client`.
    pub fn relay_proof(&self, relayed_by: &str, client: &str) -> String {
        hex(ring::hmac::sign(&self.relay, format!("{relayed_by}\n{client}").as_bytes()).as_ref())
    }

    /// Whether `proof` is a server's, for `relayed_by` and `client`.
    pub fn relay_proven(&self, relayed_by: &str, client: &str, proof: &str) -> bool {
        unhex(proof).is_some_and(|tag| {
            ring::hmac::verify(&self.relay, format!("{relayed_by}\n{client}").as_bytes(), &tag).is_ok()
        })
    }

    /// The key at `path`, or, when there is none and the store holds no secret yet (`sealed`
    /// says how many it holds and with which key), a new one written there (mode 0600).
    pub fn load_or_make(path: &Path, sealed: Option<(usize, String)>) -> Result<Self, SecretsKeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = unhex(text.trim()).ok_or_else(|| SecretsKeyError::Malformed(path.to_path_buf()))?;
                let bytes: [u8; 32] = bytes.try_into().map_err(|_| SecretsKeyError::Malformed(path.to_path_buf()))?;
                let key = Self::from_bytes(&bytes);
                match sealed {
                    // The first secret's key: secrets sealed under another key are refused here
                    // rather than when an agent needs one.
                    Some((count, key_id)) if key_id != key.id => {
                        Err(SecretsKeyError::Other { path: path.to_path_buf(), found: key.id.clone(), count, key_id })
                    }
                    _ => Ok(key),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some((count, key_id)) = sealed {
                    return Err(SecretsKeyError::Missing { path: path.to_path_buf(), count, key_id });
                }
                let bytes = rand::random::<[u8; 32]>();
                write_private(path, &hex(&bytes)).map_err(|e| SecretsKeyError::Io(path.to_path_buf(), e))?;
                Ok(Self::from_bytes(&bytes))
            }
            Err(e) => Err(SecretsKeyError::Io(path.to_path_buf(), e)),
        }
    }

    /// A short fingerprint of the key, kept with each sealed value.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `value` as version `version` of `group/name`.
    pub fn seal(&self, group: &str, name: &str, version: u64, value: &str, now: Millis) -> SecretRecord {
        let nonce = rand::random::<[u8; NONCE_LEN]>();
        let mut sealed = value.as_bytes().to_vec();
        // Sealing fails only for inputs larger than ChaCha20 allows (256 GiB); bodies are capped.
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad(group, name, version), &mut sealed)
            .unwrap_or_else(|_| unreachable!("value within ChaCha20's bound"));
        SecretRecord {
            group: group.to_string(),
            name: name.to_string(),
            version,
            key_id: self.id.clone(),
            nonce: hex(&nonce),
            sealed: hex(&sealed),
            created_at: now,
            updated_at: now,
        }
    }

    /// The value of a sealed secret.
    pub fn open(&self, record: &SecretRecord) -> Result<String, OpenError> {
        let full = format!("{}/{}", record.group, record.name);
        if record.key_id != self.id {
            return Err(OpenError::OtherKey(full, record.key_id.clone(), self.id.clone()));
        }
        let tampered = || OpenError::Tampered(full.clone());
        let nonce: [u8; NONCE_LEN] = unhex(&record.nonce).and_then(|n| n.try_into().ok()).ok_or_else(tampered)?;
        let mut sealed = unhex(&record.sealed).ok_or_else(tampered)?;
        let aad = aad(&record.group, &record.name, record.version);
        let plain =
            self.key.open_in_place(Nonce::assume_unique_for_key(nonce), aad, &mut sealed).map_err(|_| tampered())?;
        String::from_utf8(plain.to_vec()).map_err(|_| tampered())
    }
}

fn aad(group: &str, name: &str, version: u64) -> Aad<Vec<u8>> {
    Aad::from(format!("berth secret {group}/{name} v{version}").into_bytes())
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_only_and_hides_its_text() {
        let key = SecretsKey::from_bytes(&[7; 32]);
        let record = key.seal("shop", "db_password", 1, "hunter2-hunter2", 5);
        assert!(!serde_json::to_string(&record).unwrap().contains("hunter2"));
        assert!(!record.sealed.contains(&hex(b"hunter2")));
        assert_eq!(key.open(&record).unwrap(), "hunter2-hunter2");
        // Two seals of one value differ: the nonce is new each time.
        assert_ne!(key.seal("shop", "db_password", 1, "hunter2-hunter2", 5).sealed, record.sealed);

        let other = SecretsKey::from_bytes(&[8; 32]);
        assert!(matches!(other.open(&record), Err(OpenError::OtherKey(..))));
        let forged = SecretRecord { key_id: other.id().to_string(), ..record.clone() };
        assert!(matches!(other.open(&forged), Err(OpenError::Tampered(_))));
    }

    #[test]
    fn only_a_holder_of_the_key_proves_it_relayed_a_request() {
        let (key, other) = (SecretsKey::from_bytes(&[7; 32]), SecretsKey::from_bytes(&[8; 32]));
        let proof = key.relay_proof("s1", "10.0.0.9:5123");
        assert!(key.relay_proven("s1", "10.0.0.9:5123", &proof));
        assert!(!key.relay_proven("s1", "10.0.0.8:5123", &proof), "another client");
        assert!(!key.relay_proven("s2", "10.0.0.9:5123", &proof), "another server");
        assert!(!other.relay_proven("s1", "10.0.0.9:5123", &proof), "another key");
        assert!(!key.relay_proven("s1", "10.0.0.9:5123", "zz"));
    }

    #[test]
    fn a_sealed_value_moved_to_another_secret_or_version_does_not_open() {
        let key = SecretsKey::from_bytes(&[7; 32]);
        let record = key.seal("shop", "db_password", 2, "s3cret", 5);
        for moved in [
            SecretRecord { group: "pay".into(), ..record.clone() },
            SecretRecord { name: "api_key".into(), ..record.clone() },
            SecretRecord { version: 1, ..record.clone() },
        ] {
            assert_eq!(key.open(&moved), Err(OpenError::Tampered(format!("{}/{}", moved.group, moved.name))));
        }
        let mut flipped = record.clone();
        flipped.sealed.replace_range(0..2, if &record.sealed[0..2] == "00" { "01" } else { "00" });
        assert!(matches!(key.open(&flipped), Err(OpenError::Tampered(_))));
    }

    #[test]
    fn the_key_file_is_made_once_kept_private_and_never_remade_over_sealed_secrets() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SECRETS_KEY_FILE);
        let made = SecretsKey::load_or_make(&path, None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = SecretsKey::load_or_make(&path, Some((1, made.id().to_string()))).unwrap();
        assert_eq!(again.id(), made.id());
        // Another server's key over this store's secrets: refused at start, naming both keys.
        let other = SecretsKey::load_or_make(&path, Some((2, "0123456789abcdef".into()))).unwrap_err();
        let said = other.to_string();
        assert!(said.contains(made.id()) && said.contains("0123456789abcdef") && said.contains("same"), "{said}");
        std::fs::remove_file(&path).unwrap();
        let missing = SecretsKey::load_or_make(&path, Some((3, made.id().to_string()))).unwrap_err();
        assert!(missing.to_string().contains("3 secret(s) sealed with key"), "{missing}");
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(SecretsKey::load_or_make(&path, None), Err(SecretsKeyError::Malformed(_))));
    }
}
