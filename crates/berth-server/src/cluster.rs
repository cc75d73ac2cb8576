//! Servers sharing a store, and which one leads.
//!
//! Alone (redb), a server leads from the start. On etcd every server campaigns through etcd's
//! election API with a lease of its own; the elected one runs the control loops (reconcile, node
//! loss, alerts, output checks) and every write it makes compares its leadership key, so that
//! once its lease has lapsed and another server leads, none of its writes lands (`Fence`). The
//! others hand every request to the leader (`relay.rs`), as Nomad's followers forward to theirs:
//! what a single server keeps in memory (heartbeats, logs, usage, exec sessions) stays in one
//! place, and a new leader starts from the store as a restarted server does.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use berth_core::Millis;
use berth_store::state::Fence;
use berth_store::{Compare, StoreError};
use etcd_client::{Client, GetOptions, ProclaimOptions, PutOptions, ResignOptions};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::{Shared, now_ms};

/// The leader's lease: a leader killed without a word is replaced this long after its last
/// keep-alive (the goal is 5 s). It must outlast an etcd member's death: up to a
/// keep-alive period before it, one lost to the dead member, and etcd electing a new leader
/// among the others (its default election timeout is 1 s, randomised up to 2 s).
const LEASE_TTL_SECS: i64 = 4;
/// How often the lease is kept alive, and how long an answer may take before the member is
/// taken for gone: eight chances before it lapses.
const KEEPALIVE_EVERY: Duration = Duration::from_millis(500);
/// After a failed keep-alive, the pause before the next member is tried (one refusing at once,
/// while etcd has no leader, is not asked in a tight loop).
const KEEPALIVE_RETRY: Duration = Duration::from_millis(100);
/// How often each server says it is alive (`last_seen`).
const REGISTER_EVERY: Duration = Duration::from_secs(2);
/// Where the campaign's keys are, under the store's prefix: the mirror sees them, and the fence
/// compares one like any record.
const ELECTION: &str = "leader";

/// What a candidate's key under `leader/` holds; the elected one proclaims it with `since`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Candidate {
    pub id: String,
    pub api: String,
    #[serde(default)]
    pub since: Option<Millis>,
}

/// What each server writes about itself, beside the store's prefix (not in it: written every two
/// seconds, it would wake every watcher of the store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Presence {
    id: String,
    api: String,
    started_at: Millis,
    last_seen: Millis,
}

/// The etcd cluster the servers share, for the election and the servers' presence: a client
/// per member, and the one in use; a failed request moves on to the next member, as the store
/// does (tonic's balancer kept sending to a member just killed).
#[derive(Clone)]
pub(crate) struct EtcdLink {
    pub clients: Arc<Vec<Client>>,
    pub at: Arc<std::sync::atomic::AtomicUsize>,
    /// The store's prefix, `/berth/`.
    pub prefix: String,
}

impl EtcdLink {
    /// The member in use.
    fn client(&self) -> Client {
        self.clients[self.at.load(Ordering::Relaxed) % self.clients.len()].clone()
    }

    /// After a failure: the next member.
    fn move_on(&self) {
        self.at.fetch_add(1, Ordering::Relaxed);
    }

    fn presence_prefix(&self) -> String {
        format!("{}.servers/", self.prefix.trim_end_matches('/'))
    }
}

/// This server among the others.
pub(crate) struct Cluster {
    pub id: String,
    /// Its API's URL, as the others reach it.
    pub api: String,
    pub started_at: Millis,
    /// The store's URL, for messages.
    pub store: String,
    /// None: alone.
    pub etcd: Option<EtcdLink>,
}

impl Cluster {
    pub fn alone(&self) -> bool {
        self.etcd.is_none()
    }

    /// Whether this server acts now: alone, or elected and its lease alive.
    pub fn leads(&self, shared: &Shared) -> bool {
        !shared.state.follows()
    }

    /// The elected server as the store says: the candidate that proclaimed itself.
    pub fn leader(&self, shared: &Shared) -> Result<Option<Candidate>, StoreError> {
        if self.alone() {
            return Ok(Some(Candidate { id: self.id.clone(), api: self.api.clone(), since: Some(self.started_at) }));
        }
        let candidates = shared.state.records::<Candidate>(&format!("{ELECTION}/"))?;
        Ok(candidates.into_iter().map(|c| c.value).filter(|c| c.since.is_some()).max_by_key(|c| c.since))
    }

    /// `GET /v1/cluster`.
    pub async fn view(&self, shared: &Shared) -> Result<berth_api::ClusterView, StoreError> {
        let leader = self.leader(shared)?;
        let mut servers = match &self.etcd {
            None => vec![Presence {
                id: self.id.clone(),
                api: self.api.clone(),
                started_at: self.started_at,
                last_seen: now_ms(),
            }],
            Some(link) => present(link).await?,
        };
        servers.sort_by(|a, b| a.id.cmp(&b.id));
        let leader_id = leader.as_ref().map(|l| l.id.clone());
        Ok(berth_api::ClusterView {
            self_id: self.id.clone(),
            since: leader.and_then(|l| l.since),
            servers: servers
                .into_iter()
                .map(|p| berth_api::ServerView {
                    leader: leader_id.as_deref() == Some(p.id.as_str()),
                    id: p.id,
                    api: p.api,
                    last_seen: p.last_seen,
                })
                .collect(),
            leader: leader_id,
        })
    }
}

/// Every server's presence, from the first member that answers.
async fn present(link: &EtcdLink) -> Result<Vec<Presence>, StoreError> {
    let mut failed = String::new();
    for _ in 0..link.clients.len() {
        let read = link.client().kv_client().get(link.presence_prefix(), Some(GetOptions::new().with_prefix())).await;
        match tokio::time::timeout(Duration::from_secs(2), async { read }).await {
            Ok(Ok(found)) => {
                return Ok(found.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect());
            }
            Ok(Err(e)) => failed = e.to_string(),
            Err(_) => failed = "no answer within 2s".into(),
        }
        link.move_on();
    }
    Err(StoreError::Unavailable(format!("etcd: {failed}")))
}

/// The loops only the leader runs, started at its election and stopped when it ends.
pub(crate) fn start_loops(shared: &Shared, since: Millis) -> Vec<JoinHandle<()>> {
    let shutdown = shared.shutdown.clone();
    // Events from before this start were alerted on (or not) by the previous run; those the
    // first reconcile pass writes (a run missed while the server was down) are new.
    crate::lock(&shared.alerts).last_event = shared.state.last_event_seq();
    vec![
        tokio::spawn(crate::reconciler::run(shared.clone(), since, shutdown.clone())),
        tokio::spawn(crate::alerts::run(shared.clone(), shutdown.clone())),
        tokio::spawn(crate::outputs::run(shared.clone(), shutdown)),
    ]
}

/// Returns when the server stops.
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// How a term ended.
enum Term {
    /// The lease lapsed (or was never elected before it did): campaign again.
    Lapsed,
    /// The server stops.
    Stopped,
}

/// On etcd: says this server is alive, and campaigns, leads and campaigns again until the server
/// stops.
pub(crate) async fn run(shared: Shared, link: EtcdLink) {
    tokio::spawn(register(shared.clone(), link.clone()));
    loop {
        shared.state.set_fence(Fence::Following);
        match lead_once(&shared, &link).await {
            Ok(Term::Stopped) => return,
            Ok(Term::Lapsed) => tracing::warn!(server = %shared.cluster.id, "the lease lapsed: not leading"),
            Err(e) => {
                tracing::warn!(error = %e, "campaigning for leadership failed; again shortly, through another member");
                link.move_on();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        if *shared.shutdown.borrow() {
            return;
        }
    }
}

/// Every `REGISTER_EVERY`: this server's presence, with the time.
async fn register(shared: Shared, link: EtcdLink) {
    let mut shutdown = shared.shutdown.clone();
    let key = format!("{}{}", link.presence_prefix(), shared.cluster.id);
    loop {
        let presence = Presence {
            id: shared.cluster.id.clone(),
            api: shared.cluster.api.clone(),
            started_at: shared.cluster.started_at,
            last_seen: now_ms(),
        };
        let value = serde_json::to_vec(&presence).unwrap_or_default();
        if let Err(e) = link.client().kv_client().put(key.clone(), value, None::<PutOptions>).await {
            tracing::debug!(error = %e, "saying this server is alive failed");
            link.move_on();
        }
        tokio::select! {
            _ = tokio::time::sleep(REGISTER_EVERY) => {}
            _ = stopping(&mut shutdown) => return,
        }
    }
}

/// Until when the lease is surely alive: the time a keep-alive was sent plus the TTL etcd
/// granted with it. Past it, another server may lead.
struct Lease {
    id: i64,
    alive_until: Arc<AtomicI64>,
    keeper: JoinHandle<()>,
}

impl Lease {
    async fn grant(link: &EtcdLink) -> Result<Lease, etcd_client::Error> {
        let mut client = link.client();
        let link = link.clone();
        let sent = now_ms();
        let granted = client.lease_grant(LEASE_TTL_SECS, None).await?;
        let id = granted.id();
        let alive_until = Arc::new(AtomicI64::new(sent + granted.ttl() * 1000));
        let (keeper, acks) = client.lease_keep_alive(id).await?;
        let until = alive_until.clone();
        // Its own turn through the members: the link's is moved by the other tasks too, and two
        // moves at once could bring this one back to the member that just died.
        let mut member = link.at.load(Ordering::Relaxed);
        let keeper = tokio::spawn(async move {
            let mut stream = Some((keeper, acks));
            let mut wait = KEEPALIVE_EVERY;
            loop {
                tokio::time::sleep(wait).await;
                let sent = now_ms();
                // A member that died may leave the stream silent rather than broken.
                let acked = match stream.as_mut() {
                    Some((keeper, acks)) => tokio::time::timeout(KEEPALIVE_EVERY, async {
                        keeper.keep_alive().await?;
                        acks.message().await
                    })
                    .await
                    .unwrap_or(Ok(None)),
                    None => Ok(None),
                };
                match acked {
                    Ok(Some(ack)) if ack.ttl() > 0 => {
                        until.store(sent + ack.ttl() * 1000, Ordering::SeqCst);
                        wait = KEEPALIVE_EVERY;
                    }
                    // TTL 0: etcd let the lease go; it is gone for good.
                    Ok(Some(_)) => return,
                    // The member the stream went to is gone (or the stream ended, or etcd has no
                    // leader yet): the next member, tried almost at once.
                    failed => {
                        if let Err(e) = &failed {
                            tracing::debug!(error = %e, "keeping the leader's lease alive failed; reconnecting");
                        }
                        member = member.wrapping_add(1);
                        let mut client = link.clients[member % link.clients.len()].clone();
                        stream = match tokio::time::timeout(KEEPALIVE_EVERY, client.lease_keep_alive(id)).await {
                            Ok(Ok(opened)) => Some(opened),
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "reopening the lease's keep-alive failed");
                                None
                            }
                            Err(_) => {
                                tracing::debug!("reopening the lease's keep-alive took too long");
                                None
                            }
                        };
                        wait = KEEPALIVE_RETRY;
                    }
                }
            }
        });
        Ok(Lease { id, alive_until, keeper })
    }

    /// Returns once the lease may have lapsed.
    async fn lapsed(&self) {
        loop {
            let left = self.alive_until.load(Ordering::SeqCst) - now_ms();
            if left <= 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(left.clamp(10, 100) as u64)).await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// A candidate key of this server's from before a restart (same id, another lease) would hold
/// the election until its lease ran out: its process is gone, so its lease is revoked now and a
/// restarted leader leads again at once. (Were it alive, revoking its key fences it off.)
async fn forget_former_self(shared: &Shared, client: &mut Client, current: i64) {
    let Ok(entries) = shared.state.store().list(&format!("{ELECTION}/")) else { return };
    for entry in entries {
        let Ok(candidate) = serde_json::from_slice::<Candidate>(&entry.value) else { continue };
        let lease = entry.key.rsplit('/').next().and_then(|hex| i64::from_str_radix(hex, 16).ok());
        if let Some(lease) = lease.filter(|l| candidate.id == shared.cluster.id && *l != current) {
            tracing::info!(lease = format!("{lease:x}"), "revoking this server's candidacy from before its restart");
            let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
        }
    }
}

/// One term: a lease, a campaign, and, once elected, leading until the lease lapses or the server
/// stops.
async fn lead_once(shared: &Shared, link: &EtcdLink) -> Result<Term, etcd_client::Error> {
    let mut client = link.client();
    let mut stop = shared.shutdown.clone();
    let lease = Lease::grant(link).await?;
    let name = format!("{}{ELECTION}", link.prefix);
    forget_former_self(shared, &mut client, lease.id).await;
    let me = Candidate { id: shared.cluster.id.clone(), api: shared.cluster.api.clone(), since: None };
    let campaign = client.campaign(name.as_str(), serde_json::to_vec(&me).unwrap_or_default(), lease.id);
    let elected = tokio::select! {
        elected = campaign => elected?,
        _ = lease.lapsed() => return Ok(Term::Lapsed),
        _ = stopping(&mut stop) => {
            let _ = tokio::time::timeout(Duration::from_secs(2), link.client().lease_revoke(lease.id)).await;
            return Ok(Term::Stopped);
        }
    };
    let Some(key) = elected.leader().cloned() else {
        return Err(etcd_client::Error::ElectError("etcd elected no key".into()));
    };
    let since = now_ms();
    let proclaimed = Candidate { since: Some(since), ..me };
    let options = ProclaimOptions::new().with_leader(key.clone());
    let answer = client.proclaim(serde_json::to_vec(&proclaimed).unwrap_or_default(), Some(options)).await?;
    let revision = answer.header().map_or(0, |h| h.revision());
    let relative = String::from_utf8_lossy(key.key().get(link.prefix.len()..).unwrap_or_default()).into_owned();
    shared.state.set_fence(Fence::Leading(Compare {
        key: relative.clone(),
        mod_revision: u64::try_from(revision).unwrap_or(0),
    }));
    tracing::info!(server = %shared.cluster.id, key = %relative, revision, "elected leader");
    let loops = start_loops(shared, since);
    let term = tokio::select! {
        _ = lease.lapsed() => Term::Lapsed,
        _ = stopping(&mut stop) => Term::Stopped,
    };
    // Stops acting before anything else: from here no write of this server's lands.
    shared.state.set_fence(Fence::Following);
    for task in &loops {
        task.abort();
    }
    // Stepping down at once lets another server lead without waiting out the lease (when etcd
    // can still be reached).
    let resign = client.resign(Some(ResignOptions::new().with_leader(key)));
    let _ = tokio::time::timeout(Duration::from_secs(1), resign).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease.id)).await;
    Ok(term)
}
