//! The etcd store against a real three-member cluster: two stores (two servers) sharing it, one
//! member lost, the quorum lost and regained.

use std::time::{Duration, Instant};

use berth_store::{EtcdConfig, EtcdStore, Store, StoreError, Txn};
use berth_testkit::etcd::EtcdCluster;

fn connect(cluster: &EtcdCluster) -> EtcdStore {
    EtcdStore::connect(EtcdConfig::parse(&cluster.url(), "/berth").expect("url")).expect("connect")
}

/// Polls `check` (bounded) until it holds.
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_servers_see_each_others_writes_and_a_stale_write_fails() {
    let Some(cluster) = EtcdCluster::start("two_servers_see_each_others_writes", 3) else { return };
    let (a, b) = (connect(&cluster), connect(&cluster));
    let r1 = a.commit(Txn::default().put("apps/g/web", b"v1".to_vec())).unwrap();
    eventually("b sees a's write", || b.get("apps/g/web").unwrap().is_some_and(|e| e.mod_revision == r1));
    assert!(b.revision() >= r1);
    // a writes again; b, still holding the first revision, loses its compare-and-swap.
    let r2 = a.commit(Txn::default().expect("apps/g/web", r1).put("apps/g/web", b"v2".to_vec())).unwrap();
    let stale = b.commit(Txn::default().expect("apps/g/web", r1).put("apps/g/web", b"b's".to_vec()));
    assert!(matches!(stale, Err(StoreError::Conflict(ref k)) if k == "apps/g/web"), "{stale:?}");
    eventually("b sees a's second write", || b.get("apps/g/web").unwrap().is_some_and(|e| e.value == b"v2"));
    assert_eq!(a.get("apps/g/web").unwrap().unwrap().mod_revision, r2);
    // A third store reads everything at start, under the prefix only.
    let c = connect(&cluster);
    let keys: Vec<_> = c.list("").unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["apps/g/web"]);
    // The limit on one transaction is said before anything is sent.
    let big = (0..200).fold(Txn::default(), |t, i| t.put(format!("k/{i}"), vec![]));
    assert!(matches!(a.commit(big), Err(StoreError::TooLarge { limit: 128, .. })));
}

#[test]
fn one_member_lost_goes_unnoticed_and_a_lost_quorum_refuses_writes_until_it_returns() {
    let Some(mut cluster) = EtcdCluster::start("a_lost_quorum_refuses_writes", 3) else { return };
    let store = connect(&cluster);
    let other = connect(&cluster);
    store.commit(Txn::default().put("before", b"1".to_vec())).unwrap();

    // One of three: every write still commits, and the watch goes on.
    cluster.kill(0);
    for i in 0..20 {
        let rev = store.commit(Txn::default().put(format!("one-lost/{i}"), b"x".to_vec())).unwrap_or_else(|e| {
            panic!("write {i} with one member of three down: {e}");
        });
        eventually("the other store follows", || other.revision() >= rev);
    }

    // Two of three: writes fail, saying the store is unavailable; reads answer what was known.
    cluster.kill(1);
    let started = Instant::now();
    let refused = store.commit(Txn::default().put("no-quorum", b"x".to_vec()));
    match &refused {
        Err(StoreError::Unavailable(why)) => {
            assert!(why.contains("etcd://"), "names the store: {why}");
            // Maybe applied: the member that took it may commit it once it has a quorum again.
            assert!(why.contains("not acknowledged"), "says what became of the write: {why}");
        }
        other => panic!("a write without a quorum: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15), "refused in {:?}", started.elapsed());
    assert_eq!(store.get("before").unwrap().map(|e| e.value), Some(b"1".to_vec()));
    assert_eq!(store.list("one-lost/").unwrap().len(), 20);

    // A member back: writes go through again and both stores follow them.
    cluster.restart(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let rev = loop {
        match store.commit(Txn::default().put("after", b"2".to_vec())) {
            Ok(rev) => break rev,
            Err(e) => assert!(Instant::now() < deadline, "writes did not resume: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eventually("the other store's watch resumes", || {
        other.get("after").unwrap().is_some_and(|e| e.mod_revision == rev)
    });
}

#[test]
fn a_stale_leaders_write_is_refused_by_etcd() {
    use berth_store::state::{Fence, State};
    use std::sync::Arc;
    let Some(cluster) = EtcdCluster::start("a_stale_leaders_write_is_refused", 3) else { return };
    let (a, b): (Arc<dyn Store>, Arc<dyn Store>) = (Arc::new(connect(&cluster)), Arc::new(connect(&cluster)));
    // Server a leads: its leadership key, and every write of its compares it.
    let elected = a.commit(Txn::default().put("leader/a", b"{\"id\":\"a\"}".to_vec())).unwrap();
    let leader = State::new(a.clone()).unwrap();
    leader.set_fence(Fence::Leading(berth_store::Compare { key: "leader/a".into(), mod_revision: elected }));
    leader.commit(Txn::default().put("apps/g/web", b"{\"by\":\"a\"}".to_vec())).expect("the leader writes");
    // Its lease lapses (the key goes) and server b is elected and writes.
    b.commit(Txn::default().delete("leader/a").put("leader/b", b"{\"id\":\"b\"}".to_vec())).unwrap();
    b.commit(Txn::default().put("apps/g/web", b"{\"by\":\"b\"}".to_vec())).unwrap();
    // a, not yet aware, writes on: etcd refuses, and nothing of it lands.
    let stale =
        leader.commit(Txn::default().put("apps/g/web", b"{\"by\":\"stale a\"}".to_vec()).put("apps/g/x", vec![]));
    assert!(matches!(stale, Err(StoreError::NotLeader(ref k)) if k == "leader/a"), "{stale:?}");
    eventually("b's write seen by a", || a.get("apps/g/web").unwrap().is_some_and(|e| e.value == b"{\"by\":\"b\"}"));
    assert!(b.get("apps/g/x").unwrap().is_none(), "all or nothing");
}

#[test]
fn over_tls_a_client_certificate_is_required_and_enough() {
    let Some(cluster) = EtcdCluster::start_tls("over_tls_a_client_certificate_is_required", 1) else { return };
    let files = cluster.tls_files().expect("a TLS cluster").clone();
    let config = |tls: Option<berth_store::EtcdTls>| {
        let mut config = EtcdConfig::parse(&cluster.url(), "/berth").expect("url");
        config.tls = tls;
        config
    };
    let full = berth_store::EtcdTls { ca: files.ca.clone(), identity: Some((files.cert.clone(), files.key.clone())) };
    let store = EtcdStore::connect(config(Some(full))).expect("connects with the CA and a client certificate");
    let rev = store.commit(Txn::default().put("apps/g/web", b"{}".to_vec())).expect("writes over TLS");
    assert_eq!(store.get("apps/g/web").unwrap().map(|e| e.mod_revision), Some(rev));
    assert!(store.config().url().starts_with("etcd+tls://"), "{}", store.config().url());
    // Without a client certificate, or without TLS at all, the members refuse.
    let no_identity = berth_store::EtcdTls { ca: files.ca.clone(), identity: None };
    assert!(EtcdStore::connect(config(Some(no_identity))).is_err(), "a client certificate is required");
    assert!(EtcdStore::connect(config(None)).is_err(), "plain gRPC is refused");
}
