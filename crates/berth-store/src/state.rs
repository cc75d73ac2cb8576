//! Typed access to the store: the key layout and JSON encoding of Berth's records live here only.
//!
//! Layout: `apps/GROUP/NAME`, `versions/GROUP/NAME/VVVVVVVVVV`, `instances/ID`, `nodes/ID`,
//! `events/SSSSSSSSSSSSSSSSSSSS`, `config/pools`. Values are JSON.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use berth_core::{App, AppVersion, Event, Instance, Level, Millis, Node, Pools, lock};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Compare, Entry, Op, Store, StoreError, Txn};

/// How a writer numbers events and audit entries: numbers are microseconds-ish (the time in
/// milliseconds x 1000, then counting), and servers sharing a store each take the numbers of one
/// residue (`slot` modulo `stride`), so two never write the same key.
#[derive(Debug, Clone, Copy)]
struct Numbering {
    slot: u64,
    stride: u64,
}

impl Default for Numbering {
    fn default() -> Self {
        Numbering { slot: 0, stride: 1 }
    }
}

impl Numbering {
    /// The first number of this writer's after `last` and at least `floor`.
    fn next(self, last: u64, floor: u64) -> u64 {
        let at_least = floor.max(last.saturating_add(1));
        let offset = (self.slot + self.stride - at_least % self.stride) % self.stride;
        at_least.saturating_add(offset)
    }
}

/// Whether, and on what condition, this server writes to a store it shares with others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Fence {
    /// The only server: every write goes through.
    #[default]
    Alone,
    /// The leader: every write also compares the leadership key, so that once another server
    /// has taken over, none of this one's writes lands.
    Leading(Compare),
    /// Not the leader: writes are refused here (followers hand requests to the leader).
    Following,
}

/// Writers' slots, `writers/NN`: which server numbers with which residue.
const WRITERS: &str = "writers/";
/// Servers sharing a store at most (slots); each still numbers 15 events a millisecond.
pub const MAX_WRITERS: u64 = 64;

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
pub fn job_key(job_id: &str) -> String {
    format!("jobs/{job_id}")
}
/// A run's key sorts by its scheduled time, its identity.
pub fn run_key(job_id: &str, scheduled_at: i64) -> String {
    format!("runs/{job_id}/{:015}", scheduled_at.max(0))
}
/// Every run of a job, for a range delete.
pub fn runs_prefix(job_id: &str) -> String {
    format!("runs/{job_id}/")
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
fn audit_key(seq: u64) -> String {
    format!("audit/{seq:020}")
}

const INSTANCES: &str = "instances/";

/// The store seen through Berth's records.
#[derive(Clone)]
pub struct State {
    store: Arc<dyn Store>,
    last_event_seq: Arc<AtomicU64>,
    last_audit_seq: Arc<AtomicU64>,
    /// This writer's numbers for events and audit entries (see `Numbering`).
    numbering: Arc<Mutex<Numbering>>,
    /// Who may write, among servers sharing the store.
    fence: Arc<Mutex<Fence>>,
    /// Held across a commit and the cache update that follows it, so that the cache moves
    /// through the revisions in order and a reader can wait out a commit in flight.
    commits: Arc<Mutex<()>>,
    instances: Arc<Mutex<InstanceCache>>,
}

/// The instance records, decoded once and then kept in step with every commit made through this
/// `State`: a write decodes what it changes, and readers share the rest instead of decoding the
/// whole table (10,000 records at 100 agents' every wake-up).
#[derive(Default)]
struct InstanceCache {
    /// The store revision the records are at; `None` until first read, or after a write the
    /// cache could not follow (it is then read again whole).
    revision: Option<u64>,
    records: BTreeMap<String, Arc<Versioned<Instance>>>,
    /// `records` as one list, built at the first read after a change.
    listed: Option<InstanceSet>,
    /// The ids of each node's records.
    by_node: HashMap<String, BTreeSet<String>>,
    /// The revision that last changed a record on each node (placed there, or moved or removed
    /// from there); a node not listed has not changed since `read_at`.
    node_changed: HashMap<String, u64>,
    /// The revision the records were last read whole at.
    read_at: u64,
}

impl InstanceCache {
    fn touch(&mut self, node: &str, id: &str, revision: u64, present: bool) {
        if node.is_empty() {
            return;
        }
        self.node_changed.insert(node.to_string(), revision);
        let ids = self.by_node.entry(node.to_string()).or_default();
        if present {
            ids.insert(id.to_string());
        } else {
            ids.remove(id);
            if ids.is_empty() {
                self.by_node.remove(node);
            }
        }
    }
}

/// What a commit does to one instance record.
enum Change {
    Put(Box<Instance>),
    Delete,
    /// Written as something that does not decode as an instance.
    Unreadable,
}

/// Every instance record at one store revision, shared by whoever reads that revision.
#[derive(Debug, Clone, Default)]
pub struct InstanceSet(Arc<Vec<Arc<Versioned<Instance>>>>);

impl InstanceSet {
    pub fn iter(&self) -> impl Iterator<Item = &Instance> + Clone {
        self.0.iter().map(|v| &v.value)
    }
    /// With the revision that last wrote each record, for compare-and-swap.
    pub fn versioned(&self) -> impl Iterator<Item = &Versioned<Instance>> {
        self.0.iter().map(|v| v.as_ref())
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
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
        let last_audit = store.list("audit/")?.last().and_then(|e| e.key["audit/".len()..].parse().ok()).unwrap_or(0);
        Ok(State {
            store,
            last_event_seq: Arc::new(AtomicU64::new(last)),
            last_audit_seq: Arc::new(AtomicU64::new(last_audit)),
            numbering: Arc::default(),
            fence: Arc::default(),
            commits: Arc::default(),
            instances: Arc::default(),
        })
    }

    /// The instance cache at the store's revision as of this call, or newer.
    fn fresh_instances(&self) -> Result<MutexGuard<'_, InstanceCache>, StoreError> {
        let wanted = self.store.revision();
        {
            let cache = lock(&self.instances);
            if cache.revision.is_some_and(|at| at >= wanted) {
                return Ok(cache);
            }
        }
        // A commit in flight updates the cache before it lets go of `commits`.
        let _commits = lock(&self.commits);
        let mut cache = lock(&self.instances);
        let now = self.store.revision();
        if cache.revision.is_some_and(|at| at >= now) {
            return Ok(cache);
        }
        // Behind a write it did not see (or never read): read the table again, once.
        let mut records = BTreeMap::new();
        let mut by_node: HashMap<String, BTreeSet<String>> = HashMap::new();
        for entry in self.store.list(INSTANCES)? {
            let id = entry.key[INSTANCES.len()..].to_string();
            let record: Versioned<Instance> = decode(entry)?;
            if !record.value.node.is_empty() {
                by_node.entry(record.value.node.clone()).or_default().insert(id.clone());
            }
            records.insert(id, Arc::new(record));
        }
        // What changed meanwhile is not known: every node counts as changed now.
        *cache = InstanceCache {
            revision: Some(now),
            records,
            listed: None,
            by_node,
            node_changed: HashMap::new(),
            read_at: now,
        };
        Ok(cache)
    }

    /// Takes the next number of this writer's after `last` and at least `floor`.
    fn number(&self, last: &AtomicU64, floor: u64) -> u64 {
        let numbering = *lock(&self.numbering);
        let mut taken = floor;
        let _ = last.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |prev| {
            taken = numbering.next(prev, floor);
            Some(taken)
        });
        taken
    }

    /// For a store several servers share: takes this server's slot (`writers/NN` naming
    /// `server`, kept across its restarts), so that its events and audit entries are numbered
    /// apart from the others'. Returns the slot.
    pub fn claim_writer_slot(&self, server: &str) -> Result<u64, StoreError> {
        // Slots another server took as this one tried (its write may not have reached this
        // server's view yet).
        let mut lost = BTreeSet::new();
        loop {
            let held = self.store.list(WRITERS)?;
            if let Some(mine) = held.iter().find(|e| e.value == server.as_bytes()) {
                let slot = mine.key[WRITERS.len()..].parse().unwrap_or(0);
                *lock(&self.numbering) = Numbering { slot, stride: MAX_WRITERS };
                return Ok(slot);
            }
            let taken: BTreeSet<u64> = held.iter().filter_map(|e| e.key[WRITERS.len()..].parse().ok()).collect();
            let Some(free) = (0..MAX_WRITERS).find(|n| !taken.contains(n) && !lost.contains(n)) else {
                return Err(StoreError::Backend(format!(
                    "{MAX_WRITERS} servers have written to this store already (keys {WRITERS}NN): remove the \
                     ones of servers that are gone"
                )));
            };
            let key = format!("{WRITERS}{free:02}");
            match self.commit(Txn::default().expect(key.clone(), 0).put(key, server.as_bytes().to_vec())) {
                Ok(_) => {
                    *lock(&self.numbering) = Numbering { slot: free, stride: MAX_WRITERS };
                    return Ok(free);
                }
                Err(StoreError::Conflict(_)) => {
                    lost.insert(free);
                }
                Err(e) => return Err(e),
            }
        }
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
    /// The spec instances of `version` run: that version's, else (its record pruned) the app's
    /// current one; none when the app is gone.
    pub fn spec_at(&self, app_id: &str, version: u64) -> Result<Option<berth_core::AppSpec>, StoreError> {
        if let Some(v) = self.get::<AppVersion>(&version_key(app_id, version))? {
            return Ok(Some(v.value.spec));
        }
        Ok(self.app(app_id)?.map(|app| app.value.spec))
    }
    /// The spec an instance runs: its app's at its version, or its job's task for a job's
    /// attempt; none when that is gone.
    pub fn spec_of(&self, inst: &Instance) -> Result<Option<berth_core::AppSpec>, StoreError> {
        if inst.run.is_some() {
            return Ok(self.job(&inst.app)?.map(|j| j.value.spec.task()));
        }
        self.spec_at(&inst.app, inst.version)
    }
    /// Every instance record, at least as new as the store's revision when called.
    pub fn instances(&self) -> Result<InstanceSet, StoreError> {
        let mut cache = self.fresh_instances()?;
        let cache = &mut *cache;
        let listed =
            cache.listed.get_or_insert_with(|| InstanceSet(Arc::new(cache.records.values().cloned().collect())));
        Ok(listed.clone())
    }
    /// The records on one node, at least as new as the store's revision when called.
    pub fn instances_on(&self, node: &str) -> Result<Vec<Arc<Versioned<Instance>>>, StoreError> {
        let cache = self.fresh_instances()?;
        let ids = cache.by_node.get(node).into_iter().flatten();
        Ok(ids.filter_map(|id| cache.records.get(id).cloned()).collect())
    }

    /// The last revision that changed any record on `node` (or, for all that is known, may
    /// have): a node's watcher wakes for its own changes only.
    pub fn node_changed_at(&self, node: &str) -> Result<u64, StoreError> {
        let cache = self.fresh_instances()?;
        Ok(cache.node_changed.get(node).copied().unwrap_or(cache.read_at).max(cache.read_at))
    }

    pub fn instance(&self, id: &str) -> Result<Option<Versioned<Instance>>, StoreError> {
        Ok(self.fresh_instances()?.records.get(id).map(|v| v.as_ref().clone()))
    }
    pub fn jobs(&self) -> Result<Vec<Versioned<berth_core::Job>>, StoreError> {
        self.list("jobs/")
    }
    pub fn job(&self, job_id: &str) -> Result<Option<Versioned<berth_core::Job>>, StoreError> {
        self.get(&job_key(job_id))
    }
    /// Every job's runs, by job and then scheduled time.
    pub fn runs(&self) -> Result<Vec<Versioned<berth_core::Run>>, StoreError> {
        self.list("runs/")
    }
    /// One job's runs, oldest first.
    pub fn runs_of(&self, job_id: &str) -> Result<Vec<Versioned<berth_core::Run>>, StoreError> {
        self.list(&runs_prefix(job_id))
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
        let page = self.store.list_from("events/", &event_key(after_seq), limit)?;
        page.into_iter().map(|e| decode(e).map(|v: Versioned<Event>| v.value)).collect()
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
        let seq = self.number(&self.last_event_seq, floor);
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

    /// Appends an audit entry, numbered here (after every earlier one, and at least the time in
    /// microseconds, as events are); returns its number.
    pub fn append_audit(&self, mut entry: berth_core::audit::AuditEntry) -> Result<u64, StoreError> {
        let floor = u64::try_from(entry.at).unwrap_or(0).saturating_mul(1000);
        // Created, never overwritten: a number taken already (by a server that lost its slot)
        // is passed over.
        for _ in 0..16 {
            let seq = self.number(&self.last_audit_seq, floor);
            entry.seq = seq;
            let key = audit_key(seq);
            match self.commit(Txn::default().expect(key.clone(), 0).put(key, encode(&entry))) {
                Err(StoreError::Conflict(_)) => continue,
                done => return done.map(|_| seq),
            }
        }
        Err(StoreError::Conflict("audit/".into()))
    }

    /// Audit entries after `after_seq`, oldest first, at most `limit`.
    pub fn audit(&self, after_seq: u64, limit: usize) -> Result<Vec<berth_core::audit::AuditEntry>, StoreError> {
        let page = self.store.list_from("audit/", &audit_key(after_seq), limit)?;
        page.into_iter().map(|e| decode(e).map(|v: Versioned<berth_core::audit::AuditEntry>| v.value)).collect()
    }

    /// Drops the oldest audit entries beyond `keep`.
    pub fn prune_audit(&self, keep: usize) -> Result<usize, StoreError> {
        self.prune("audit/", keep)
    }

    /// Drops the oldest events beyond `keep`.
    pub fn prune_events(&self, keep: usize) -> Result<usize, StoreError> {
        self.prune("events/", keep)
    }

    fn prune(&self, prefix: &str, keep: usize) -> Result<usize, StoreError> {
        let keys: Vec<String> = self.store.list(prefix)?.into_iter().map(|e| e.key).collect();
        if keys.len() <= keep {
            return Ok(0);
        }
        let drop = keys.len() - keep;
        // One range, not a delete per key: etcd takes 128 operations in a transaction.
        let txn = match keys.get(drop) {
            Some(first_kept) => Txn::default().delete_range(prefix, first_kept.as_str()),
            None => Txn::default().delete_range(prefix, format!("{prefix}\u{10ffff}")),
        };
        self.commit(txn)?;
        Ok(drop)
    }

    /// Sets who may write from here: when this server is elected, and when it stops leading.
    pub fn set_fence(&self, fence: Fence) {
        *lock(&self.fence) = fence;
    }

    /// Whether this server follows (writes nothing), read without copying the fence: asked on
    /// every request a leader answers.
    pub fn follows(&self) -> bool {
        matches!(*lock(&self.fence), Fence::Following)
    }

    pub fn commit(&self, mut txn: Txn) -> Result<u64, StoreError> {
        let fence = match &*lock(&self.fence) {
            Fence::Alone => None,
            Fence::Leading(compare) => Some(compare.clone()),
            Fence::Following => return Err(StoreError::NotLeader("following".into())),
        };
        if let Some(fence) = &fence {
            txn.compares.push(fence.clone());
        }
        match self.commit_unfenced(txn) {
            Err(StoreError::Conflict(key)) if fence.as_ref().is_some_and(|f| f.key == key) => {
                Err(StoreError::NotLeader(key))
            }
            done => done,
        }
    }

    fn commit_unfenced(&self, txn: Txn) -> Result<u64, StoreError> {
        // Decoded before the commit, outside the lock.
        let changed: Vec<(String, Change)> = txn
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Put { key, value } => key.strip_prefix(INSTANCES).map(|id| {
                    let change = serde_json::from_slice(value).map_or(Change::Unreadable, |i| Change::Put(Box::new(i)));
                    (id.to_string(), change)
                }),
                Op::Delete { key } => key.strip_prefix(INSTANCES).map(|id| (id.to_string(), Change::Delete)),
                // Which records a range held is not known here: read them again.
                Op::DeleteRange { from, to } => (from.as_str() < "instances0" && to.as_str() > INSTANCES)
                    .then(|| (String::new(), Change::Unreadable)),
            })
            .collect();
        let _commits = lock(&self.commits);
        let before = self.store.revision();
        let revision = self.store.commit(txn)?;
        if revision == before {
            return Ok(revision);
        }
        let mut cache = lock(&self.instances);
        // Follow the commit only from the revision just before it; anything else reads again.
        if cache.revision != Some(before) || revision != before + 1 {
            cache.revision = None;
            return Ok(revision);
        }
        for (id, change) in changed {
            match change {
                Change::Put(value) => {
                    let node = value.node.clone();
                    let old =
                        cache.records.insert(id.clone(), Arc::new(Versioned { value: *value, mod_revision: revision }));
                    if let Some(old) = old.filter(|o| o.value.node != node) {
                        cache.touch(&old.value.node, &id, revision, false);
                    }
                    cache.touch(&node, &id, revision, true);
                }
                Change::Delete => {
                    if let Some(old) = cache.records.remove(&id) {
                        cache.touch(&old.value.node, &id, revision, false);
                    }
                }
                // Read again whole, which reports it.
                Change::Unreadable => {
                    cache.revision = None;
                    return Ok(revision);
                }
            }
            cache.listed = None;
        }
        cache.revision = Some(revision);
        Ok(revision)
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
    fn a_fenced_leader_writes_nothing_once_its_key_has_changed() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let state = State::new(store.clone()).unwrap();
        let elected = store.commit(Txn::default().put("leader/a", b"a".to_vec())).unwrap();
        state.set_fence(Fence::Leading(Compare { key: "leader/a".into(), mod_revision: elected }));
        state.commit(Txn::default().put(app_key("g/a"), b"{}".to_vec())).expect("the leader writes");
        // Its lease expired and the key went; another server was elected.
        store.commit(Txn::default().delete("leader/a").put("leader/b", b"b".to_vec())).unwrap();
        let refused = state.commit(Txn::default().put(app_key("g/a"), b"{\"stale\":1}".to_vec()));
        assert!(matches!(refused, Err(StoreError::NotLeader(ref k)) if k == "leader/a"), "{refused:?}");
        assert_eq!(store.get(&app_key("g/a")).unwrap().unwrap().value, b"{}", "nothing of it landed");
        state.set_fence(Fence::Following);
        assert!(matches!(state.commit(Txn::default().put("x", vec![])), Err(StoreError::NotLeader(_))));
    }

    #[test]
    fn writers_number_apart_and_in_order() {
        let n = Numbering { slot: 3, stride: 64 };
        assert_eq!(n.next(0, 1000), 1027, "the first number of slot 3 from the floor");
        assert_eq!(n.next(1027, 1000), 1091, "then the next of its residue");
        assert_eq!(n.next(1091, 5000), 5059, "the clock moved on: from the new floor");
        assert_eq!(Numbering::default().next(7, 5), 8, "alone: every number");
        // Two servers sharing a store take two slots, and keep theirs across restarts.
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let (a, b) = (State::new(store.clone()).unwrap(), State::new(store.clone()).unwrap());
        assert_eq!((a.claim_writer_slot("a").unwrap(), b.claim_writer_slot("b").unwrap()), (0, 1));
        assert_eq!(State::new(store.clone()).unwrap().claim_writer_slot("b").unwrap(), 1);
        let mut seqs = BTreeSet::new();
        for state in [&a, &b, &a, &b] {
            for i in 0..50 {
                let txn =
                    state.with_event(Txn::default(), 1000, Level::Info, "test", Subject::app("g/a"), format!("e{i}"));
                state.commit(txn).unwrap();
            }
        }
        let events = a.events(0, 1000).unwrap();
        seqs.extend(events.iter().map(|e| e.seq));
        assert_eq!((events.len(), seqs.len()), (200, 200), "no event overwrote another");
    }

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

    fn instance(id: &str, node: &str) -> Instance {
        serde_json::from_value(serde_json::json!({
            "id": id, "app": "g/web", "version": 1, "node": node, "driver": "exec", "state": "staging",
            "desired": "run", "host_ports": [], "host": "127.0.0.1", "created_at": 0
        }))
        .unwrap()
    }

    fn seen(state: &State) -> Vec<(String, String, u64)> {
        state
            .instances()
            .unwrap()
            .versioned()
            .map(|v| (v.value.id.clone(), v.value.node.clone(), v.mod_revision))
            .collect()
    }

    fn on(state: &State, node: &str) -> Vec<String> {
        state.instances_on(node).unwrap().iter().map(|v| v.value.id.clone()).collect()
    }

    #[test]
    fn each_node_knows_its_records_and_when_they_last_changed() {
        let state = State::new(Arc::new(MemoryStore::default())).unwrap();
        let r0 = state.store().revision();
        assert_eq!(state.node_changed_at("n1").unwrap(), r0, "before anything: as of the first read");
        let r1 = state.commit(Txn::default().put(instance_key("a"), encode(&instance("a", "n1")))).unwrap();
        let r2 = state.commit(Txn::default().put(instance_key("b"), encode(&instance("b", "n2")))).unwrap();
        assert_eq!((state.node_changed_at("n1").unwrap(), state.node_changed_at("n2").unwrap()), (r1, r2));
        // Writes elsewhere leave a node's mark where it was.
        state.commit(Txn::default().put(node_key("n1"), b"{}".to_vec())).unwrap();
        assert_eq!(state.node_changed_at("n1").unwrap(), r1);
        // A record that moves changes both nodes; one deleted changes its own.
        let r4 = state.commit(Txn::default().put(instance_key("a"), encode(&instance("a", "n2")))).unwrap();
        assert_eq!((state.node_changed_at("n1").unwrap(), state.node_changed_at("n2").unwrap()), (r4, r4));
        assert_eq!((on(&state, "n1"), on(&state, "n2")), (vec![], vec!["a".to_string(), "b".to_string()]));
        let r5 = state.commit(Txn::default().delete(instance_key("b"))).unwrap();
        assert_eq!((state.node_changed_at("n1").unwrap(), state.node_changed_at("n2").unwrap()), (r4, r5));
        assert_eq!(on(&state, "n2"), vec!["a".to_string()]);
        // Read whole again (a write it did not follow): every node counts as changed then.
        state.store().commit(Txn::default().put(instance_key("c"), encode(&instance("c", "n3")))).unwrap();
        let r6 = state.store().revision();
        assert_eq!(state.node_changed_at("n1").unwrap(), r6);
        assert_eq!(on(&state, "n3"), vec!["c".to_string()]);
    }

    #[test]
    fn instance_reads_follow_every_commit() {
        let state = State::new(Arc::new(MemoryStore::default())).unwrap();
        assert!(state.instances().unwrap().is_empty());
        let r1 = state.commit(Txn::default().put(instance_key("a"), encode(&instance("a", "n1")))).unwrap();
        let r2 = state.commit(Txn::default().put(instance_key("b"), encode(&instance("b", "n1")))).unwrap();
        let held = state.instances().unwrap();
        assert_eq!(seen(&state), [("a".into(), "n1".into(), r1), ("b".into(), "n1".into(), r2)]);
        // A write that is not about instances moves the revision and changes none of them.
        state.commit(Txn::default().put(node_key("n1"), b"{}".to_vec())).unwrap();
        let r4 = state.commit(Txn::default().put(instance_key("a"), encode(&instance("a", "n2")))).unwrap();
        let r5 = state.commit(Txn::default().delete(instance_key("b"))).unwrap();
        assert_eq!(seen(&state), [("a".into(), "n2".into(), r4)]);
        assert_eq!(state.instance("a").unwrap().map(|v| (v.value.node, v.mod_revision)), Some(("n2".into(), r4)));
        assert!(state.instance("b").unwrap().is_none());
        assert_eq!(held.len(), 2, "a reader keeps the revision it read");
        // A failed compare writes nothing and changes nothing.
        let refused = state.commit(Txn::default().expect(instance_key("a"), r1).delete(instance_key("a")));
        assert!(matches!(refused, Err(StoreError::Conflict(_))));
        assert_eq!(seen(&state), [("a".into(), "n2".into(), r4)]);
        assert_eq!(state.store().revision(), r5);
    }

    #[test]
    fn concurrent_writers_and_readers_always_read_their_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::new(Arc::new(crate::RedbStore::open(&dir.path().join("db")).unwrap())).unwrap();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let state = &state;
                scope.spawn(move || {
                    for i in 0..50 {
                        let id = format!("t{t}-{i}");
                        let rev =
                            state.commit(Txn::default().put(instance_key(&id), encode(&instance(&id, "n1")))).unwrap();
                        let read = state.instance(&id).unwrap().map(|v| v.mod_revision);
                        assert_eq!(read, Some(rev), "{id} read back after its commit");
                        assert!(state.instances().unwrap().iter().any(|i| i.id == id));
                    }
                });
            }
        });
        let stored: Vec<(String, u64)> = state
            .store()
            .list(INSTANCES)
            .unwrap()
            .into_iter()
            .map(|e| (e.key[INSTANCES.len()..].to_string(), e.mod_revision))
            .collect();
        let cached: Vec<(String, u64)> =
            state.instances().unwrap().versioned().map(|v| (v.value.id.clone(), v.mod_revision)).collect();
        assert_eq!(cached.len(), 200);
        assert_eq!(cached, stored);
    }

    #[test]
    fn a_write_made_beside_the_state_is_still_read() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let state = State::new(store.clone()).unwrap();
        state.commit(Txn::default().put(instance_key("a"), encode(&instance("a", "n1")))).unwrap();
        assert_eq!(state.instances().unwrap().len(), 1);
        let r = store.commit(Txn::default().put(instance_key("b"), encode(&instance("b", "n1")))).unwrap();
        assert_eq!(state.instance("b").unwrap().map(|v| v.mod_revision), Some(r));
        // ... and the state's own next write, made after it, is followed from there.
        state.commit(Txn::default().delete(instance_key("a"))).unwrap();
        assert_eq!(seen(&state), [("b".into(), "n1".into(), r)]);
    }

    #[test]
    fn an_unreadable_instance_record_is_an_error_not_a_gap() {
        let state = State::new(Arc::new(MemoryStore::default())).unwrap();
        state.commit(Txn::default().put(instance_key("a"), encode(&instance("a", "n1")))).unwrap();
        state.commit(Txn::default().put(instance_key("bad"), b"{not json".to_vec())).unwrap();
        let err = state.instances().unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt { key, .. } if key == "instances/bad"), "{err}");
    }
}
