//! Moving a whole store: every record out as JSON (`berth store export`), and into an empty store
//! of another kind (`berth store import`), a transaction at a time.

use serde::{Deserialize, Serialize};

use crate::{Store, StoreError, Txn};

/// What `export` writes and `import` reads.
pub const FORMAT: &str = "berth-store/1";

/// Keys that belong to the running servers, not to the platform: the election's candidates and
/// the servers' numbering slots are made again by the servers that run on the new store.
fn servers_own(key: &str) -> bool {
    ["leader/", "writers/"].iter().any(|p| key.starts_with(p))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Export {
    pub format: String,
    /// The store revision the records were read at.
    pub revision: u64,
    pub records: Vec<Record>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    /// The record as stored: JSON.
    pub value: serde_json::Value,
}

/// Every record of `store` but the servers' own, in key order.
pub fn export(store: &dyn Store) -> Result<Export, StoreError> {
    let revision = store.revision();
    let mut records = Vec::new();
    for entry in store.list("")? {
        if servers_own(&entry.key) {
            continue;
        }
        let value = serde_json::from_slice(&entry.value)
            .map_err(|e| StoreError::Corrupt { key: entry.key.clone(), why: e.to_string() })?;
        records.push(Record { key: entry.key, value });
    }
    Ok(Export { format: FORMAT.into(), revision, records })
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not a Berth store export: format `{0}` (this berth reads {FORMAT})")]
    Format(String),
    #[error("the store already holds {0} record(s) (first: `{1}`): import only into an empty store")]
    NotEmpty(usize, String),
    #[error("record {index} has an empty key")]
    EmptyKey { index: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes every record into `store`, which must hold none, `per_txn` records a transaction (each
/// creates its keys: a record that appeared meanwhile fails the import rather than being
/// overwritten). `progress` hears how many are written so far.
pub fn import(
    store: &dyn Store,
    export: &Export,
    per_txn: usize,
    mut progress: impl FnMut(usize),
) -> Result<usize, ImportError> {
    if export.format != FORMAT {
        return Err(ImportError::Format(export.format.clone()));
    }
    if let Some(index) = export.records.iter().position(|r| r.key.is_empty()) {
        return Err(ImportError::EmptyKey { index });
    }
    let held: Vec<String> = store.list("")?.into_iter().map(|e| e.key).filter(|k| !servers_own(k)).collect();
    if let Some(first) = held.first() {
        return Err(ImportError::NotEmpty(held.len(), first.clone()));
    }
    let mut written = 0;
    for chunk in export.records.chunks(per_txn.max(1)) {
        let txn = chunk.iter().fold(Txn::default(), |txn, r| {
            let value = serde_json::to_vec(&r.value).unwrap_or_default();
            txn.expect(r.key.clone(), 0).put(r.key.clone(), value)
        });
        store.commit(txn)?;
        written += chunk.len();
        progress(written);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[test]
    fn a_store_moves_whole_into_an_empty_one_and_never_over_another() {
        let from = MemoryStore::default();
        let txn = (0..250)
            .fold(Txn::default(), |t, i| t.put(format!("instances/i{i:03}"), format!("{{\"n\":{i}}}").into_bytes()));
        from.commit(txn.put("apps/g/a", b"{\"spec\":1}".to_vec()).put("leader/1", b"{}".to_vec())).unwrap();
        let out = export(&from).unwrap();
        assert_eq!(out.records.len(), 251, "every record but the servers' own");
        let text = serde_json::to_string(&out).unwrap();
        let back: Export = serde_json::from_str(&text).unwrap();

        let to = MemoryStore::default();
        let mut seen = Vec::new();
        assert_eq!(import(&to, &back, 100, |n| seen.push(n)).unwrap(), 251);
        assert_eq!(seen, [100, 200, 251], "a transaction at a time");
        assert_eq!(to.get("apps/g/a").unwrap().unwrap().value, b"{\"spec\":1}");
        assert!(to.get("leader/1").unwrap().is_none());
        // Into a store that holds records: refused, nothing written.
        let again = import(&to, &back, 100, |_| {});
        assert!(matches!(again, Err(ImportError::NotEmpty(251, _))), "{again:?}");
        let wrong = Export { format: "other/9".into(), ..back };
        assert!(matches!(import(&MemoryStore::default(), &wrong, 100, |_| {}), Err(ImportError::Format(_))));
    }
}
