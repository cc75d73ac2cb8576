//! An in-memory `Store` for unit tests and benchmarks; same contract, no durability.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::{Entry, KeyMap, Op, Store, StoreError, Txn, check_compares, page_of};

pub struct MemoryStore {
    inner: Mutex<Inner>,
    notify: watch::Sender<u64>,
}

struct Inner {
    revision: u64,
    data: KeyMap,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore { inner: Mutex::new(Inner { revision: 0, data: BTreeMap::new() }), notify: watch::channel(0).0 }
    }
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-written: every write is one insert.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.lock().data.get(key).map(|(rev, v)| Entry { key: key.into(), value: v.clone(), mod_revision: *rev }))
    }

    fn list_from(&self, prefix: &str, after: &str, limit: usize) -> Result<Vec<Entry>, StoreError> {
        Ok(page_of(&self.lock().data, prefix, after, limit))
    }

    fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        check_compares(&txn.compares, |k| Ok(inner.data.get(k).map_or(0, |(r, _)| *r)))?;
        if txn.ops.is_empty() {
            return Ok(inner.revision);
        }
        inner.revision += 1;
        let rev = inner.revision;
        for op in txn.ops {
            match op {
                Op::Put { key, value } => {
                    inner.data.insert(key, (rev, value));
                }
                Op::Delete { key } => {
                    inner.data.remove(&key);
                }
                Op::DeleteRange { from, to } => {
                    let keys: Vec<String> = inner.data.range(from..to).map(|(k, _)| k.clone()).collect();
                    for key in keys {
                        inner.data.remove(&key);
                    }
                }
            }
        }
        drop(inner);
        self.notify.send_replace(rev);
        Ok(rev)
    }

    fn revision(&self) -> u64 {
        self.lock().revision
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }
}
