//! Typed access to the store: the key layout and JSON encoding of Berth's records live here only.
//!
//! Layout: `apps/GROUP/NAME`, `versions/GROUP/NAME/VVVVVVVVVV`, `instances/ID`, `nodes/ID`,
//! `events/SSSSSSSSSSSSSSSSSSSS`, `config/pools`. Values are JSON.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_core::{App, AppVersion, Event, Instance, Level, Millis, Node, Pools};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Entry, Store, StoreError, Txn};

/// A record and the revision that last wrote it, for compare-and-swap writes.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    pub mod_revision: u64,
}

pub fn app_key(app_id: &str) -> String {
    format!("apps/{app_id}")
}
pub fn version_key(app_id: &str, version: u64) -> String {
    format!("versions/{app_id}/{version:010}")
}
pub fn instance_key(id: &str) -> String {
    format!("instances/{id}")
}
pub fn node_key(id: &str) -> String {
    format!("nodes/{id}")
}
pub fn upstream_key(name: &str) -> String {
    format!("upstreams/{name}")
}
/// Who owns a host name the routers serve.
pub fn host_key(host: &str) -> String {
    format!("hosts/{host}")
}
/// `rules/app/GROUP/NAME` or `rules/upstream/NAME`.
pub fn rules_key(kind: &str, name: &str) -> String {
    format!("rules/{kind}/{name}")
}
/// The pools' settings: one record, so a change to them is one compare-and-swap.
pub const POOLS_KEY: &str = "config/pools";
fn event_key(seq: u64) -> String {
    format!("events/{seq:020}")
}

/// The store seen through Berth's records.
#[derive(Clone)]
pub struct State {
    store: Arc<dyn Store>,
    last_event_seq: Arc<AtomicU64>,
}

fn decode<T: DeserializeOwned>(entry: Entry) -> Result<Versioned<T>, StoreError> {
    serde_json::from_slice(&entry.value)
        .map(|value| Versioned { value, mod_revision: entry.mod_revision })
        .map_err(|e| StoreError::Corrupt { key: entry.key, why: e.to_string() })
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Our records are plain data: serialization cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

impl State {
    pub fn new(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let last = store.list("events/")?.last().and_then(|e| e.key["events/".len()..].parse().ok()).unwrap_or(0);
        Ok(State { store, last_event_seq: Arc::new(AtomicU64::new(last)) })
    }

    /// The sequence number of the newest event written (0 before any).
    pub fn last_event_seq(&self) -> u64 {
        self.last_event_seq.load(Ordering::SeqCst)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<Versioned<T>>, StoreError> {
        self.store.list(prefix)?.into_iter().map(decode).collect()
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Versioned<T>>, StoreError> {
        self.store.get(key)?.map(decode).transpose()
    }

    pub fn apps(&self) -> Result<Vec<Versioned<App>>, StoreError> {
        self.list("apps/")
    }
    pub fn app(&self, app_id: &str) -> Result<Option<Versioned<App>>, StoreError> {
        self.get(&app_key(app_id))
    }
    pub fn versions(&self, app_id: &str) -> Result<Vec<AppVersion>, StoreError> {
        Ok(self.list(&format!("versions/{app_id}/"))?.into_iter().map(|v: Versioned<AppVersion>| v.value).collect())
    }
    pub fn instances(&self) -> Result<Vec<Versioned<Instance>>, StoreError> {
        self.list("instances/")
    }
    pub fn instance(&self, id: &str) -> Result<Option<Versioned<Instance>>, StoreError> {
        self.get(&instance_key(id))
    }
    pub fn nodes(&self) -> Result<Vec<Versioned<Node>>, StoreError> {
        self.list("nodes/")
    }
    pub fn node(&self, id: &str) -> Result<Option<Versioned<Node>>, StoreError> {
        self.get(&node_key(id))
    }
    /// The pools' settings (revision 0: never set).
    pub fn pools(&self) -> Result<Versioned<Pools>, StoreError> {
        Ok(self.get(POOLS_KEY)?.unwrap_or(Versioned { value: Pools::default(), mod_revision: 0 }))
    }

    /// Raw JSON records under a prefix, for record kinds defined outside core (upstreams, rules).
    pub fn records<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<Versioned<T>>, StoreError> {
        self.list(prefix)
    }

    pub fn record<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Versioned<T>>, StoreError> {
        self.get(key)
    }

    /// Events after `after_seq`, oldest first, at most `limit`.
    pub fn events(&self, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let all = self.store.list("events/")?;
        let start = all.partition_point(|e| e.key <= event_key(after_seq));
        all.into_iter().skip(start).take(limit).map(|e| decode(e).map(|v: Versioned<Event>| v.value)).collect()
    }

    /// Adds an event to `txn`; it is stored if and only if the txn commits.
    pub fn with_event(
        &self,
        txn: Txn,
        now: Millis,
        level: Level,
        kind: &str,
        subject: Subject<'_>,
        message: String,
    ) -> Txn {
        let floor = u64::try_from(now).unwrap_or(0).saturating_mul(1000);
        let seq = self
            .last_event_seq
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(floor.max(last + 1)))
            .map_or(floor, |last| floor.max(last + 1));
        let event = Event {
            seq,
            time: now,
            level,
            kind: kind.to_string(),
            app: subject.app.map(str::to_string),
            instance: subject.instance.map(str::to_string),
            node: subject.node.map(str::to_string),
            message,
        };
        txn.put(event_key(seq), encode(&event))
    }

    /// Drops the oldest events beyond `keep`.
    pub fn prune_events(&self, keep: usize) -> Result<usize, StoreError> {
        let keys: Vec<String> = self.store.list("events/")?.into_iter().map(|e| e.key).collect();
        if keys.len() <= keep {
            return Ok(0);
        }
        let drop = keys.len() - keep;
        let txn = keys.into_iter().take(drop).fold(Txn::default(), |txn, key| txn.delete(key));
        self.store.commit(txn)?;
        Ok(drop)
    }

    pub fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        self.store.commit(txn)
    }
}

/// What an event is about.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    pub app: Option<&'a str>,
    pub instance: Option<&'a str>,
    pub node: Option<&'a str>,
}

impl<'a> Subject<'a> {
    pub fn app(app: &'a str) -> Self {
        Subject { app: Some(app), ..Default::default() }
    }
    pub fn instance(app: &'a str, instance: &'a str, node: &'a str) -> Self {
        Subject { app: Some(app), instance: Some(instance), node: Some(node) }
    }
    pub fn node(node: &'a str) -> Self {
        Subject { node: Some(node), ..Default::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[test]
    fn events_are_ordered_and_paged() {
        let state = State::new(Arc::new(MemoryStore::default())).unwrap();
        for i in 0..5 {
            let txn = state.with_event(Txn::default(), 1000, Level::Info, "test", Subject::app("g/a"), format!("e{i}"));
            state.commit(txn).unwrap();
        }
        let all = state.events(0, 100).unwrap();
        let messages: Vec<_> = all.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["e0", "e1", "e2", "e3", "e4"], "same millisecond keeps order");
        let after = state.events(all[2].seq, 1).unwrap();
        assert_eq!(after[0].message, "e3");
        assert_eq!(state.prune_events(2).unwrap(), 3);
        assert_eq!(state.events(0, 100).unwrap().len(), 2);
    }
}
