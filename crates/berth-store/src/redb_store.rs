//! The embedded, crash-safe `Store`: one redb file under the data directory.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use crate::{Entry, Op, Store, StoreError, Txn, check_compares};

/// key -> (mod_revision, value)
const KV: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

/// redb's page cache. Its default (1 GiB) keeps every page the server touched, which is all of a
/// 34 MiB store with 10,000 instances; the server reads its hot records (instances) from its own
/// decoded copy, so the pages need not stay.
const CACHE_BYTES: usize = 16 << 20;

pub struct RedbStore {
    db: Database,
    notify: watch::Sender<u64>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        // Create the tables once so readers never see them missing.
        let txn = db.begin_write().map_err(backend)?;
        let revision = {
            txn.open_table(KV).map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            meta.get(REVISION).map_err(backend)?.map_or(0, |v| v.value())
        };
        txn.commit().map_err(backend)?;
        Ok(RedbStore { db, notify: watch::channel(revision).0 })
    }
}

impl Store for RedbStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(KV).map_err(backend)?;
        Ok(table.get(key).map_err(backend)?.map(|v| {
            let (rev, bytes) = v.value();
            Entry { key: key.to_string(), value: bytes.to_vec(), mod_revision: rev }
        }))
    }

    fn list_from(&self, prefix: &str, after: &str, limit: usize) -> Result<Vec<Entry>, StoreError> {
        use std::ops::Bound;
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(KV).map_err(backend)?;
        let mut out = Vec::new();
        let start = if after >= prefix { Bound::Excluded(after) } else { Bound::Included(prefix) };
        for item in table.range::<&str>((start, Bound::Unbounded)).map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let key = k.value();
            if !key.starts_with(prefix) || out.len() == limit {
                break;
            }
            let (rev, bytes) = v.value();
            out.push(Entry { key: key.to_string(), value: bytes.to_vec(), mod_revision: rev });
        }
        Ok(out)
    }

    fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        let write = self.db.begin_write().map_err(backend)?;
        let revision = {
            let mut kv = write.open_table(KV).map_err(backend)?;
            let mut meta = write.open_table(META).map_err(backend)?;
            let current = meta.get(REVISION).map_err(backend)?.map_or(0, |v| v.value());
            check_compares(&txn.compares, |k| Ok(kv.get(k).map_err(backend)?.map_or(0, |v| v.value().0)))?;
            if txn.ops.is_empty() {
                return Ok(current);
            }
            let revision = current + 1;
            for op in &txn.ops {
                match op {
                    Op::Put { key, value } => {
                        kv.insert(key.as_str(), (revision, value.as_slice())).map_err(backend)?;
                    }
                    Op::Delete { key } => {
                        kv.remove(key.as_str()).map_err(backend)?;
                    }
                    Op::DeleteRange { from, to } => {
                        let keys = kv
                            .range::<&str>(from.as_str()..to.as_str())
                            .map_err(backend)?
                            .map(|item| item.map(|(k, _)| k.value().to_string()))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(backend)?;
                        for key in keys {
                            kv.remove(key.as_str()).map_err(backend)?;
                        }
                    }
                }
            }
            meta.insert(REVISION, revision).map_err(backend)?;
            revision
        };
        // Durability::Immediate is redb's default: commit returns after fsync.
        write.commit().map_err(backend)?;
        self.notify.send_replace(revision);
        Ok(revision)
    }

    fn revision(&self) -> u64 {
        *self.notify.borrow()
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }
}
