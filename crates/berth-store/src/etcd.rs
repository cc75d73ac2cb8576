//! The `Store` on an etcd cluster: what three servers and more share (`--store etcd://`).
//!
//! Writes are etcd transactions: the `Txn`'s compares become mod-revision compares, its ops puts
//! and deletes, and `Ok` means etcd's quorum committed them. Reads come from a mirror of the
//! prefix kept by one etcd watch, as Kubernetes' API servers keep their watch cache: the server
//! reads its records many times a second (every agent's wake-up), which over the network would be
//! a round trip each. A commit returns once the mirror holds it, so a server reads its own
//! writes; another server's writes arrive within the watch's latency, and a write based on a stale
//! read fails its compare as it does on redb.
//!
//! The `Store` trait is synchronous (redb is), etcd's client is not: the client runs on a small
//! runtime of its own, and callers wait for its answers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::sync::watch;
use tonic::Code as tonic_code;

use crate::{Entry, KeyMap, Op, Store, StoreError, Txn, page_of};

/// etcd's own default for `--max-txn-ops`: a transaction with more compares or ops is refused.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// How long a request may take before the store counts as unavailable: etcd answers in
/// milliseconds while it has a quorum, and holds requests without one.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);
/// How long one member is given before the next is tried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long commit markers are kept: a write is sent again, at most, for `REQUEST_TIMEOUT`.
const MARKERS_KEPT: Duration = Duration::from_secs(600);
/// How often an idle connection to a member is pinged: etcd closes the connection of a client
/// that pings more often than its `--grpc-keepalive-min-time` (5 s).
pub const KEEPALIVE_PING: Duration = Duration::from_secs(6);
/// Keys read at once while loading the mirror: a page stays well under gRPC's 4 MiB messages.
const PAGE: i64 = 500;

/// Where the store is and how it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `HOST:PORT` or `http://HOST:PORT` of each member.
    pub endpoints: Vec<String>,
    /// Every key Berth writes starts with this (`/berth/`).
    pub prefix: String,
    /// The members' `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// TLS to the members (their `--cert-file` and `--trusted-ca-file`); none: plain gRPC.
    pub tls: Option<EtcdTls>,
}

/// What a server presents to etcd and trusts of it (PEM files), as Kubernetes' `--etcd-cafile`,
/// `--etcd-certfile` and `--etcd-keyfile`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA the members' certificates are signed by.
    pub ca: std::path::PathBuf,
    /// A client certificate and key, for members started with `--client-cert-auth`.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl EtcdConfig {
    /// From `etcd://HOST:PORT[,HOST:PORT...]` and a prefix (a trailing `/` is added).
    pub fn parse(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            StoreError::Backend(format!("`{url}`: an etcd store is written etcd://HOST:PORT[,HOST:PORT...]"))
        })?;
        let endpoints: Vec<String> = rest.split(',').map(|e| e.trim().trim_end_matches('/').to_string()).collect();
        if let Some(bad) = endpoints.iter().find(|e| e.is_empty() || e.contains('/') || !e.contains(':')) {
            return Err(StoreError::Backend(format!("`{url}`: `{bad}` is not HOST:PORT")));
        }
        let mut prefix = prefix.trim().to_string();
        if prefix.is_empty() {
            return Err(StoreError::Backend("the store prefix is empty: every key would be Berth's".into()));
        }
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(EtcdConfig { endpoints, prefix, max_txn_ops: DEFAULT_MAX_TXN_OPS, tls: None })
    }

    /// How every client of the members connects: timeouts, keep-alives, TLS.
    pub fn connect_options(&self) -> Result<ConnectOptions, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(KEEPALIVE_PING, Duration::from_secs(3))
            // A member cut off from the others refuses, rather than answering with what it last knew.
            .with_require_leader(true);
        if let Some(tls) = &self.tls {
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|e| StoreError::Backend(format!("etcd TLS: {}: {e}", path.display())))
            };
            let mut config =
                etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(config);
        }
        Ok(options)
    }

    /// `etcd://a:2379,b:2379` as given, for messages.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "etcd+tls" } else { "etcd" };
        format!("{scheme}://{}", self.endpoints.join(","))
    }
}

/// The prefix's keys as last seen by the watch, without the prefix.
#[derive(Default)]
struct Mirror {
    revision: u64,
    data: KeyMap,
}

/// A client per member, and the one that answered last: a request goes there first and moves on
/// when it fails (tonic's balancer kept sending to a member just killed).
struct Members {
    clients: Vec<Client>,
    preferred: AtomicUsize,
}

/// Whether a failed request may be sent again, to another member: not when etcd refused it as
/// malformed or too large, which no member would take.
fn retryable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => !matches!(
            status.code(),
            tonic_code::InvalidArgument
                | tonic_code::ResourceExhausted
                | tonic_code::FailedPrecondition
                | tonic_code::PermissionDenied
                | tonic_code::Unauthenticated
        ),
        _ => true,
    }
}

impl Members {
    /// Sends the request to one member after another until one answers or `budget` is spent.
    /// Only for requests that may be applied twice: reads, watches, and writes made idempotent
    /// by their commit marker.
    async fn call<T, F, Fut>(&self, config: &EtcdConfig, budget: Duration, f: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let deadline = tokio::time::Instant::now() + budget;
        let mut i = self.preferred.load(Ordering::Relaxed) % n;
        let mut tries = 0;
        loop {
            let failed = match tokio::time::timeout_at(deadline, f(self.clients[i].clone())).await {
                Ok(Ok(answer)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(answer);
                }
                Ok(Err(e)) => e,
                Err(_) => return Err(lost(config, format!("no answer within {}s", budget.as_secs()))),
            };
            tracing::debug!(error = %failed, member = %config.endpoints[i], "etcd request failed");
            tries += 1;
            i = (i + 1) % n;
            self.preferred.store(i, Ordering::Relaxed);
            if !retryable(&failed) || tokio::time::Instant::now() >= deadline {
                return Err(lost(config, failed));
            }
            // Around the ring once at full speed, then paced: an election takes a second or so.
            if tries >= n {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

pub struct EtcdStore {
    config: EtcdConfig,
    members: Arc<Members>,
    /// Markers made, to make the next one differ.
    markers: AtomicU64,
    mirror: Arc<RwLock<Mirror>>,
    notify: watch::Sender<u64>,
    runtime: Option<tokio::runtime::Runtime>,
}

fn lost(config: &EtcdConfig, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", config.url()))
}

fn read(mirror: &RwLock<Mirror>) -> std::sync::RwLockReadGuard<'_, Mirror> {
    // Every write to the mirror is whole before the lock is let go: a poisoned lock holds no
    // half-applied change.
    mirror.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write(mirror: &RwLock<Mirror>) -> std::sync::RwLockWriteGuard<'_, Mirror> {
    mirror.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn revision_of(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

impl EtcdStore {
    /// Connects, reads the prefix whole and starts following it.
    pub fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("berth-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot start the etcd client's runtime: {e}")))?;
        // One try at one member: a write forwarded to a leader that just died is never answered,
        // and the next member is tried after this long.
        let options = config.connect_options()?.with_timeout(ATTEMPT_TIMEOUT);
        let mirror: Arc<RwLock<Mirror>> = Arc::default();
        let members = {
            let (moved, options) = (config.clone(), options.clone());
            wait(
                &runtime,
                async move {
                    let mut clients = Vec::new();
                    for endpoint in &moved.endpoints {
                        // Lazy: a member down now is tried when a request comes.
                        clients.push(
                            Client::connect([endpoint], Some(options.clone())).await.map_err(|e| lost(&moved, e))?,
                        );
                    }
                    Ok::<_, StoreError>(Arc::new(Members { clients, preferred: AtomicUsize::new(0) }))
                },
                &config,
                REQUEST_TIMEOUT,
            )??
        };
        let revision = {
            let (moved, mirror, members) = (config.clone(), mirror.clone(), members.clone());
            wait(&runtime, async move { load(&members, &moved, &mirror).await }, &config, REQUEST_TIMEOUT * 2)??
        };
        let notify = watch::channel(revision).0;
        runtime.spawn(follow(members.clone(), config.clone(), mirror.clone(), notify.clone(), revision));
        runtime.spawn(drop_old_markers(members.clone(), config.clone()));
        Ok(EtcdStore { config, members, markers: AtomicU64::new(0), mirror, notify, runtime: Some(runtime) })
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.config.prefix)
    }

    /// A key no other write uses, beside the prefix (not in it: the mirror never sees markers),
    /// named by the time so that old ones are dropped by range.
    fn marker(&self) -> String {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(self.markers.fetch_add(1, Ordering::Relaxed));
        format!("{}{:013}-{:016x}", markers_prefix(&self.config), now_ms(), h.finish())
    }

    fn block<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let runtime = self.runtime.as_ref().ok_or_else(|| lost(&self.config, "the store is closed"))?;
        // Longer than the requests' own budget, which says better what went wrong.
        wait(runtime, fut, &self.config, REQUEST_TIMEOUT + Duration::from_secs(1))
    }

    /// Waits (boundedly) until the mirror holds `revision`: what this server wrote, it reads.
    fn caught_up(&self, revision: u64) {
        if read(&self.mirror).revision >= revision {
            return;
        }
        let mut rx = self.notify.subscribe();
        let waited = self.block(async move {
            tokio::time::timeout(REQUEST_TIMEOUT, rx.wait_for(|at| *at >= revision)).await.is_ok()
        });
        if !matches!(waited, Ok(true)) {
            tracing::warn!(revision, store = %self.config.url(), "the store's watch is behind a commit it made");
        }
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropped from async code too, where a runtime may not block on its tasks.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `fut` on the client's runtime and waits for it from any thread, in or out of async code.
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    fut: impl std::future::Future<Output = T> + Send + 'static,
    config: &EtcdConfig,
    limit: Duration,
) -> Result<T, StoreError> {
    // A std channel: its receiver blocks any thread without asking tokio, whose own would refuse
    // inside async code.
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = tx.send(tokio::time::timeout(limit, fut).await);
    });
    // A runtime's worker says it blocks first (other tasks move off it); a current-thread runtime
    // (in tests) just waits, which is safe: the answer comes from the client's own runtime.
    let receive = move || rx.recv().ok();
    let answer = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(receive),
        _ => receive(),
    };
    match answer {
        Some(Ok(value)) => Ok(value),
        Some(Err(_)) => Err(lost(config, format!("no answer within {}s", limit.as_secs()))),
        None => Err(lost(config, "the store is closing")),
    }
}

/// `/berth.txn/` beside `/berth/`.
fn markers_prefix(config: &EtcdConfig) -> String {
    format!("{}.txn/", config.prefix.trim_end_matches('/'))
}

fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// Every minute, drops the markers of writes older than `MARKERS_KEPT`: none is sent again.
async fn drop_old_markers(members: Arc<Members>, config: EtcdConfig) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let from = markers_prefix(&config);
        let to = format!("{from}{:013}", now_ms().saturating_sub(MARKERS_KEPT.as_millis()));
        let dropped =
            members
                .call(&config, REQUEST_TIMEOUT, |client| {
                    let (from, to) = (from.clone(), to.clone());
                    async move {
                        client.kv_client().delete(from, Some(etcd_client::DeleteOptions::new().with_range(to))).await
                    }
                })
                .await;
        if let Err(e) = dropped {
            tracing::debug!(error = %e, "dropping old commit markers failed");
        }
    }
}

/// Reads the prefix whole into the mirror, page by page at one revision; returns that revision.
async fn load(members: &Members, config: &EtcdConfig, mirror: &RwLock<Mirror>) -> Result<u64, StoreError> {
    let end = prefix_end(config.prefix.as_bytes());
    let mut data = BTreeMap::new();
    let mut from = config.prefix.as_bytes().to_vec();
    let mut at = 0;
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if at > 0 {
            options = options.with_revision(at);
        }
        let page = members
            .call(config, REQUEST_TIMEOUT, |client| {
                let (from, options) = (from.clone(), options.clone());
                async move { client.kv_client().get(from, Some(options)).await }
            })
            .await?;
        if at == 0 {
            at = page.header().map_or(0, |h| h.revision());
        }
        for kv in page.kvs() {
            let key = String::from_utf8_lossy(&kv.key()[config.prefix.len()..]).into_owned();
            data.insert(key, (revision_of(kv.mod_revision()), kv.value().to_vec()));
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    let revision = revision_of(at);
    *write(mirror) = Mirror { revision, data };
    Ok(revision)
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Keeps the mirror in step with etcd for as long as the runtime runs: watches from the revision
/// after the one the mirror holds, again after any break, and reads whole again when etcd has
/// compacted the revisions it would have to replay.
async fn follow(
    members: Arc<Members>,
    config: EtcdConfig,
    mirror: Arc<RwLock<Mirror>>,
    notify: watch::Sender<u64>,
    from: u64,
) {
    let mut next = from + 1;
    let mut pause = Duration::from_millis(100);
    loop {
        match watch_once(&members, &config, &mirror, &notify, next).await {
            Ok(Resume::From(at)) => next = at,
            Ok(Resume::Reload) => match load(&members, &config, &mirror).await {
                Ok(revision) => {
                    tracing::warn!(revision, store = %config.url(), "etcd compacted past the watch: read the store whole again");
                    notify.send_replace(revision);
                    next = revision + 1;
                }
                Err(e) => tracing::warn!(error = %e, "reading the store whole failed"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "the store's watch broke; watching again");
                next = read(&mirror).revision + 1;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        }
        pause = Duration::from_millis(100);
    }
}

enum Resume {
    From(u64),
    Reload,
}

async fn watch_once(
    members: &Members,
    config: &EtcdConfig,
    mirror: &RwLock<Mirror>,
    notify: &watch::Sender<u64>,
    start: u64,
) -> Result<Resume, StoreError> {
    let options = WatchOptions::new()
        .with_range(prefix_end(config.prefix.as_bytes()))
        .with_start_revision(i64::try_from(start).unwrap_or(i64::MAX))
        .with_progress_notify();
    let mut stream = members
        .call(config, REQUEST_TIMEOUT, |client| {
            let options = options.clone();
            async move {
                let mut watcher = client.watch_client().max_decoding_message_size(64 << 20);
                watcher.watch(config.prefix.as_bytes(), Some(options)).await
            }
        })
        .await?;
    loop {
        let Some(response) = stream.message().await.map_err(|e| lost(config, e))? else {
            return Ok(Resume::From(read(mirror).revision + 1));
        };
        if response.compact_revision() > 0 {
            return Ok(Resume::Reload);
        }
        if response.canceled() {
            return Err(lost(config, format!("watch canceled: {}", response.cancel_reason())));
        }
        let events = response.events();
        let moved = {
            let mut mirror = write(mirror);
            for event in events {
                let Some(kv) = event.kv() else { continue };
                let Some(key) = kv.key().get(config.prefix.len()..) else { continue };
                let key = String::from_utf8_lossy(key).into_owned();
                let revision = revision_of(kv.mod_revision());
                match event.event_type() {
                    EventType::Put => {
                        mirror.data.insert(key, (revision, kv.value().to_vec()));
                    }
                    EventType::Delete => {
                        mirror.data.remove(&key);
                    }
                }
                mirror.revision = mirror.revision.max(revision);
            }
            // A progress notice (no events, not the watch's creation) says every event up to
            // its header's revision has been sent; a batch of events may stop short of it.
            if events.is_empty()
                && !response.created()
                && let Some(header) = response.header()
            {
                mirror.revision = mirror.revision.max(revision_of(header.revision()));
            }
            mirror.revision
        };
        if moved > *notify.borrow() {
            notify.send_replace(moved);
        }
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(read(&self.mirror).data.get(key).map(|(rev, v)| Entry {
            key: key.to_string(),
            value: v.clone(),
            mod_revision: *rev,
        }))
    }

    fn list_from(&self, prefix: &str, after: &str, limit: usize) -> Result<Vec<Entry>, StoreError> {
        Ok(page_of(&read(&self.mirror).data, prefix, after, limit))
    }

    fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        // The marker adds a compare and an op.
        let size = txn.compares.len().max(txn.ops.len()) + 1;
        if size > self.config.max_txn_ops {
            return Err(StoreError::TooLarge { ops: size, limit: self.config.max_txn_ops });
        }
        // Every write carries a marker of its own that must not exist yet: sent again after an
        // answer was lost (a member died with it), it applies at most once, and the marker says
        // whether it had.
        let marker = self.marker();
        let mut compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|c| {
                let revision = i64::try_from(c.mod_revision).unwrap_or(i64::MAX);
                EtcdCompare::mod_revision(self.key(&c.key), CompareOp::Equal, revision)
            })
            .collect();
        compares.push(EtcdCompare::create_revision(marker.clone(), CompareOp::Equal, 0));
        let mut ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(self.key(key), value.clone(), None),
                Op::Delete { key } => TxnOp::delete(self.key(key), None),
                Op::DeleteRange { from, to } => {
                    TxnOp::delete(self.key(from), Some(etcd_client::DeleteOptions::new().with_range(self.key(to))))
                }
            })
            .collect();
        ops.push(TxnOp::put(marker.clone(), Vec::new(), None));
        // When a compare fails, read what was compared: which key changed, or the marker of this
        // very write, applied by an earlier try.
        let mut reads: Vec<TxnOp> = txn.compares.iter().map(|c| TxnOp::get(self.key(&c.key), None)).collect();
        reads.push(TxnOp::get(marker, None));
        let request = etcd_client::Txn::new().when(compares).and_then(ops).or_else(reads);
        let (members, config) = (self.members.clone(), self.config.clone());
        let response = self.block(async move {
            members
                .call(&config, REQUEST_TIMEOUT, |client| {
                    let request = request.clone();
                    async move { client.kv_client().txn(request).await }
                })
                .await
                .map_err(|e| match e {
                    StoreError::Unavailable(why) => StoreError::Unavailable(format!(
                        "{why}; the write was not acknowledged (it may yet be applied, once)"
                    )),
                    other => other,
                })
        })??;
        let revision = if response.succeeded() {
            revision_of(response.header().map_or(0, |h| h.revision()))
        } else {
            let found: Vec<u64> = response
                .op_responses()
                .into_iter()
                .map(|r| match r {
                    TxnOpResponse::Get(get) => get.kvs().first().map_or(0, |kv| revision_of(kv.mod_revision())),
                    _ => 0,
                })
                .collect();
            match found.last() {
                Some(&applied) if applied > 0 => applied,
                _ => {
                    let changed = txn.compares.iter().zip(&found).find(|(c, found)| c.mod_revision != **found);
                    let key =
                        changed.map(|(c, _)| c).or(txn.compares.first()).map_or_else(String::new, |c| c.key.clone());
                    return Err(StoreError::Conflict(key));
                }
            }
        };
        if !txn.ops.is_empty() {
            self.caught_up(revision);
        }
        Ok(revision)
    }

    fn revision(&self) -> u64 {
        read(&self.mirror).revision
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_every_member_and_prefixes_end_in_a_slash() {
        let c = EtcdConfig::parse("etcd://127.0.0.1:2379,127.0.0.1:2380", "/berth").unwrap();
        assert_eq!(c.endpoints, ["127.0.0.1:2379", "127.0.0.1:2380"]);
        assert_eq!(c.prefix, "/berth/");
        assert_eq!(c.url(), "etcd://127.0.0.1:2379,127.0.0.1:2380");
        for bad in ["http://a:1", "etcd://", "etcd://a", "etcd://a:1,,b:2", "etcd://a:1/x"] {
            assert!(EtcdConfig::parse(bad, "/berth").is_err(), "{bad}");
        }
        assert!(EtcdConfig::parse("etcd://a:1", " ").is_err());
    }

    #[test]
    fn a_prefix_ends_before_the_next_one() {
        assert_eq!(prefix_end(b"/berth/"), b"/berth0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
