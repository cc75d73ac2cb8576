//! Where Berth keeps desired state, actual state and events: an etcd-shaped `Store`
//! (keys, revisions, conditional transactions, watch) with an embedded redb backend.

#[cfg(feature = "etcd")]
pub mod etcd;
mod memory;
mod redb_store;
pub mod state;
pub mod transfer;

use tokio::sync::watch;

#[cfg(feature = "etcd")]
pub use etcd::{EtcdConfig, EtcdStore, EtcdTls};
pub use memory::MemoryStore;
pub use redb_store::RedbStore;
pub use state::State;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store backend: {0}")]
    Backend(String),
    #[error("transaction conflict on `{0}`: it changed since it was read")]
    Conflict(String),
    #[error("stored value under `{key}` is unreadable: {why}")]
    Corrupt { key: String, why: String },
    /// The store cannot take writes now (an etcd cluster without a quorum, or out of reach);
    /// what was read before still answers.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// This server no longer leads the servers sharing the store (its leadership key changed), or
    /// never did: it writes nothing.
    #[error("this server is not the leader (it was fenced off by `{0}`); another server takes the write")]
    NotLeader(String),
    /// More compares or ops in one transaction than the store takes (etcd's `--max-txn-ops`).
    #[error("a transaction of {ops} operations is more than the store takes at once ({limit})")]
    TooLarge { ops: usize, limit: usize },
}

/// One key and its value, with the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// Every key from `from` up to (not including) `to`.
    DeleteRange {
        from: String,
        to: String,
    },
}

/// A precondition: `key` was last written at `mod_revision` (0 means it must be absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub mod_revision: u64,
}

/// All-or-nothing: every compare holds, then every op applies under one new revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn put(mut self, key: impl Into<String>, value: Vec<u8>) -> Self {
        self.ops.push(Op::Put { key: key.into(), value });
        self
    }
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }
    pub fn delete_range(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.ops.push(Op::DeleteRange { from: from.into(), to: to.into() });
        self
    }
    pub fn expect(mut self, key: impl Into<String>, mod_revision: u64) -> Self {
        self.compares.push(Compare { key: key.into(), mod_revision });
        self
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The storage seam. A commit that returns `Ok` is durable: it survives SIGKILL and power loss.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;
    /// Keys that start with `prefix` and sort after `after` (`""`: from the first), in key order,
    /// at most `limit` of them: a page read without reading what comes before it.
    fn list_from(&self, prefix: &str, after: &str, limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// Every key that starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        self.list_from(prefix, "", usize::MAX)
    }
    /// Applies `txn` atomically and returns the new revision, or `Conflict` when a compare fails.
    fn commit(&self, txn: Txn) -> Result<u64, StoreError>;
    /// The revision of the last commit.
    fn revision(&self) -> u64;
    /// Wakes whenever the revision moves; readers then re-read what they watch.
    fn watch(&self) -> watch::Receiver<u64>;
}

/// Keys in memory, each with the revision that last wrote it: the memory store's, and the etcd
/// store's mirror.
pub(crate) type KeyMap = std::collections::BTreeMap<String, (u64, Vec<u8>)>;

/// `Store::list_from` over a `KeyMap`.
pub(crate) fn page_of(data: &KeyMap, prefix: &str, after: &str, limit: usize) -> Vec<Entry> {
    use std::ops::Bound;
    let start = if after >= prefix { Bound::Excluded(after) } else { Bound::Included(prefix) };
    data.range::<str, _>((start, Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix))
        .take(limit)
        .map(|(k, (rev, v))| Entry { key: k.clone(), value: v.clone(), mod_revision: *rev })
        .collect()
}

/// Checks compares against a lookup, shared by backends.
pub(crate) fn check_compares(
    compares: &[Compare],
    current: impl Fn(&str) -> Result<u64, StoreError>,
) -> Result<(), StoreError> {
    for c in compares {
        if current(&c.key)? != c.mod_revision {
            return Err(StoreError::Conflict(c.key.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod contract_tests;
