//! The same contract, run against every backend.

use super::*;

/// A backend's name, the store, and what keeps it alive (its directory, its etcd).
type Backend = (&'static str, Box<dyn Store>, Box<dyn std::any::Any>);

fn backends(test: &str) -> Vec<Backend> {
    let dir = tempfile::tempdir().expect("tempdir");
    let redb = RedbStore::open(&dir.path().join("state.redb")).expect("open redb");
    let mut all: Vec<Backend> =
        vec![("memory", Box::new(MemoryStore::default()), Box::new(())), ("redb", Box::new(redb), Box::new(dir))];
    if let Some(cluster) = berth_testkit::etcd::EtcdCluster::start(test, 1) {
        let config = EtcdConfig::parse(&cluster.url(), "/berth-test").expect("etcd url");
        let store = EtcdStore::connect(config).expect("connect to etcd");
        all.push(("etcd", Box::new(store), Box::new(cluster)));
    }
    all
}

#[test]
fn put_get_list_delete() {
    for (name, store, _keep) in backends("put_get_list_delete") {
        let r1 = store.commit(Txn::default().put("apps/a", b"1".to_vec()).put("apps/b", b"2".to_vec())).unwrap();
        let r2 = store.commit(Txn::default().put("nodes/x", b"3".to_vec())).unwrap();
        assert!(r2 > r1, "{name}: revisions increase");
        assert_eq!(store.get("apps/a").unwrap().unwrap().value, b"1", "{name}");
        assert_eq!(store.get("apps/a").unwrap().unwrap().mod_revision, r1, "{name}");
        let keys: Vec<_> = store.list("apps/").unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["apps/a", "apps/b"], "{name}: prefix only, in order");
        store.commit(Txn::default().delete("apps/a")).unwrap();
        assert!(store.get("apps/a").unwrap().is_none(), "{name}");
        assert_eq!(store.revision(), r2 + 1, "{name}");
    }
}

#[test]
fn list_from_reads_one_page_after_a_key() {
    for (name, store, _keep) in backends("list_from_reads_one_page_after_a_key") {
        let txn =
            ["e/1", "e/2", "e/3", "e/4", "f/1", "d/9"].iter().fold(Txn::default(), |t, k| t.put(*k, b"x".to_vec()));
        store.commit(txn).unwrap();
        let keys = |after: &str, limit: usize| -> Vec<String> {
            store.list_from("e/", after, limit).unwrap().into_iter().map(|e| e.key).collect()
        };
        assert_eq!(keys("", 10), ["e/1", "e/2", "e/3", "e/4"], "{name}: from the first");
        assert_eq!(keys("e/2", 10), ["e/3", "e/4"], "{name}: strictly after");
        assert_eq!(keys("e/1", 2), ["e/2", "e/3"], "{name}: at most limit");
        assert_eq!(keys("e/25", 10), ["e/3", "e/4"], "{name}: after a key that is not there");
        assert!(keys("e/4", 10).is_empty(), "{name}: nothing after the last");
        assert!(keys("e/1", 0).is_empty(), "{name}");
        assert_eq!(keys("a", 1), ["e/1"], "{name}: a key before the prefix starts at the prefix");
    }
}

#[test]
fn failed_compare_applies_nothing() {
    for (name, store, _keep) in backends("failed_compare_applies_nothing") {
        let rev = store.commit(Txn::default().put("k", b"v1".to_vec())).unwrap();
        let stale = Txn::default().expect("k", rev - 1).put("k", b"v2".to_vec()).put("other", b"x".to_vec());
        assert!(matches!(store.commit(stale), Err(StoreError::Conflict(_))), "{name}");
        assert_eq!(store.get("k").unwrap().unwrap().value, b"v1", "{name}");
        assert!(store.get("other").unwrap().is_none(), "{name}: all or nothing");
        let create_only = Txn::default().expect("k", 0).put("k", b"v3".to_vec());
        assert!(store.commit(create_only).is_err(), "{name}: 0 means absent");
        assert!(store.commit(Txn::default().expect("k", rev).put("k", b"v4".to_vec())).is_ok(), "{name}");
    }
}

#[tokio::test]
async fn watch_wakes_on_commit() {
    for (name, store, _keep) in backends("watch_wakes_on_commit") {
        let mut rx = store.watch();
        let before = *rx.borrow_and_update();
        store.commit(Txn::default().put("k", b"v".to_vec())).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), rx.changed()).await.expect(name).unwrap();
        assert_eq!(*rx.borrow(), before + 1, "{name}");
    }
}

#[test]
fn a_range_delete_takes_what_is_between_and_nothing_else() {
    for (name, store, _keep) in backends("a_range_delete_takes_what_is_between_and_nothing_else") {
        let txn = ["e/1", "e/2", "e/3", "f/1", "d/1"].iter().fold(Txn::default(), |t, k| t.put(*k, b"x".to_vec()));
        store.commit(txn).unwrap();
        store.commit(Txn::default().delete_range("e/", "e/3")).unwrap();
        let keys: Vec<_> = store.list("").unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["d/1", "e/3", "f/1"], "{name}");
    }
}

#[test]
fn a_failed_compare_names_the_key_that_changed() {
    for (name, store, _keep) in backends("a_failed_compare_names_the_key_that_changed") {
        let r1 = store.commit(Txn::default().put("a", b"1".to_vec()).put("b", b"1".to_vec())).unwrap();
        store.commit(Txn::default().put("b", b"2".to_vec())).unwrap();
        let stale = Txn::default().expect("a", r1).expect("b", r1).put("a", b"3".to_vec());
        match store.commit(stale) {
            Err(StoreError::Conflict(key)) => assert_eq!(key, "b", "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn redb_keeps_state_and_revision_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let rev = {
        let store = RedbStore::open(&path).unwrap();
        store.commit(Txn::default().put("apps/a", b"kept".to_vec())).unwrap()
    };
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.revision(), rev);
    assert_eq!(store.get("apps/a").unwrap().unwrap().value, b"kept");
}
