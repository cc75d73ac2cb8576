//! The records Berth keeps: apps and their versions (desired), instances and nodes (actual), events.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::{AppSpec, DriverKind};

/// Milliseconds since the Unix epoch; the one clock unit in stored records.
pub type Millis = i64;

/// An app: its current spec, version, and desired instance count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    pub spec: AppSpec,
    /// Bumped by every change of the spec and by a restart.
    pub version: u64,
    /// Desired instances; starts at `spec.instances`, moved by `scale`.
    pub instances: u32,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Set by `destroy`: instances are stopped, then the app is removed.
    #[serde(default)]
    pub destroying: bool,
    #[serde(default)]
    pub backoff: Backoff,
    /// Earlier versions with the same spec as the current one (a rollback brings them back):
    /// their instances count as current and are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alike: Vec<u64>,
    /// The last version whose deployment ended with every instance healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_version: Option<u64>,
    /// The latest deployment, running or ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Deployment>,
}

impl App {
    pub fn id(&self) -> String {
        self.spec.id()
    }

    /// Whether instances of `version` run the current spec.
    pub fn is_current(&self, version: u64) -> bool {
        version == self.version || self.alike.contains(&version)
    }

    /// The deployment in progress, if any.
    pub fn active_deployment(&self) -> Option<&Deployment> {
        self.deployment.as_ref().filter(|d| d.state == DeploymentState::Running)
    }

    /// Whether the router sends requests to ready instances of `version`. Everything ready serves,
    /// except around a blue-green switch: before it only the old set, after it only the new one.
    pub fn serves(&self, version: u64) -> bool {
        match &self.deployment {
            Some(d) if d.blue_green && d.from_version.is_some() => match d.state {
                DeploymentState::Running if d.switched_at.is_none() => !self.is_current(version),
                _ => self.is_current(version),
            },
            _ => true,
        }
    }
}

/// One move of an app from what runs to what is wanted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub kind: DeploymentKind,
    /// The version being replaced; unset when nothing ran before or only the scale changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<u64>,
    pub version: u64,
    pub state: DeploymentState,
    pub started_at: Millis,
    /// Last time an instance turned healthy (or the start): the progress deadline counts from here.
    pub progress_at: Millis,
    /// Instances of the new version that failed during this deployment.
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Canary: hold at this many new instances beside the old until `promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u32>,
    #[serde(default)]
    pub blue_green: bool,
    /// Blue-green: when traffic moved to the new set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    /// How it ended, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Deployment {
    pub fn start(kind: DeploymentKind, from_version: Option<u64>, version: u64, now: Millis) -> Deployment {
        Deployment {
            kind,
            from_version,
            version,
            state: DeploymentState::Running,
            started_at: now,
            progress_at: now,
            failures: 0,
            last_failure: None,
            canary: None,
            blue_green: false,
            switched_at: None,
            finished_at: None,
            message: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentKind {
    Create,
    Update,
    Scale,
    Restart,
    Rollback,
    AutoRollback,
}

impl DeploymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentKind::Create => "create",
            DeploymentKind::Update => "update",
            DeploymentKind::Scale => "scale",
            DeploymentKind::Restart => "restart",
            DeploymentKind::Rollback => "rollback",
            DeploymentKind::AutoRollback => "auto-rollback",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentState {
    Running,
    Succeeded,
    Failed,
    /// Failed, and the app went back to its last stable version.
    RolledBack,
    /// A newer change took over before it ended.
    Superseded,
}

impl DeploymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Running => "running",
            DeploymentState::Succeeded => "succeeded",
            DeploymentState::Failed => "failed",
            DeploymentState::RolledBack => "rolled-back",
            DeploymentState::Superseded => "superseded",
        }
    }
}

impl fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Marathon's launch backoff: each failure multiplies the delay before the next launch.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Backoff {
    /// Consecutive failures since the app last ran healthy.
    pub failures: u32,
    /// No replacement is launched before this time.
    pub not_before: Millis,
    /// When the last of those failures happened. Only an instance launched after it, ready
    /// long enough, ends the backoff: a sibling that was healthy all along says nothing about
    /// the slot that keeps failing.
    #[serde(default)]
    pub last_failure_at: Millis,
}

impl Backoff {
    pub const BASE_MS: f64 = 1000.0;
    pub const FACTOR: f64 = 1.15;
    pub const MAX_MS: f64 = 300_000.0;
    /// Consecutive failures from which the app is shown, and alerted on, as crash-looping.
    pub const CRASH_LOOP_AFTER: u32 = 3;

    pub fn crash_looping(&self) -> bool {
        self.failures >= Self::CRASH_LOOP_AFTER
    }

    /// The delay after `failures` consecutive failures: 1 s x 1.15^(n-1), capped at 5 minutes.
    pub fn delay_ms(failures: u32) -> i64 {
        if failures == 0 {
            return 0;
        }
        let exp = i32::try_from(failures - 1).unwrap_or(i32::MAX);
        (Self::BASE_MS * Self::FACTOR.powi(exp)).min(Self::MAX_MS) as i64
    }

    pub fn after_failure(self, now: Millis) -> Backoff {
        let failures = self.failures.saturating_add(1);
        Backoff { failures, not_before: now + Self::delay_ms(failures), last_failure_at: now }
    }
}

/// One stored version of an app's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppVersion {
    pub app: String,
    pub version: u64,
    pub spec: AppSpec,
    pub created_at: Millis,
    /// What changed from the previous version, for people.
    pub change: String,
    /// How this version's deployment ended; unset while it runs or when it never had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub state: DeploymentState,
    pub at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Lifecycle of one instance, as the issue names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Placed on a node, not yet started there.
    Staging,
    /// Process or container started; health not yet passed.
    Starting,
    /// Up, and healthy when a health check is set.
    Running,
    /// Exited on its own, was OOM-killed, failed health, or its node was lost.
    Failed,
    /// Stopped on purpose.
    Stopped,
    /// A job's attempt that ended with exit code 0.
    Succeeded,
}

impl InstanceState {
    pub fn is_terminal(self) -> bool {
        matches!(self, InstanceState::Failed | InstanceState::Stopped | InstanceState::Succeeded)
    }

    pub fn is_live(self) -> bool {
        !self.is_terminal()
    }

    /// Legal moves; anything else is a stale or confused report and is ignored.
    pub fn can_become(self, next: InstanceState) -> bool {
        use InstanceState::*;
        match (self, next) {
            (a, b) if a == b => true,
            (Staging, Starting | Running | Failed | Stopped | Succeeded) => true,
            (Starting, Running | Failed | Stopped | Succeeded) => true,
            (Running, Starting | Failed | Stopped | Succeeded) => true,
            // A terminal instance never comes back; its replacement is a new instance.
            (Failed | Stopped | Succeeded, _) => false,
            _ => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Staging => "staging",
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Failed => "failed",
            InstanceState::Stopped => "stopped",
            InstanceState::Succeeded => "succeeded",
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the control plane wants of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Run,
    Stop,
}

/// What an instance holds on its node: its version's cpu and memory when it was placed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    #[serde(default)]
    pub cpu: f64,
    /// MiB.
    #[serde(default)]
    pub memory: u64,
}

impl Allocation {
    pub fn of(spec: &AppSpec) -> Allocation {
        Allocation { cpu: spec.cpu.unwrap_or(0.0), memory: spec.memory.unwrap_or(0) }
    }
}

/// One running (or once running) copy of an app on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    /// `GROUP/NAME`.
    pub app: String,
    pub version: u64,
    pub node: String,
    pub driver: DriverKind,
    pub state: InstanceState,
    pub desired: Desired,
    /// Host ports, one per spec port (or one for `PORT` when the spec lists none and the driver is exec).
    pub host_ports: Vec<u16>,
    /// Address of the node, where `host_ports` answer.
    pub host: String,
    /// What its node reports of it: health, exit, reason, handle, times, last lines.
    #[serde(flatten)]
    pub observed: Observed,
    pub created_at: Millis,
    /// Since when it has been running and healthy without a break.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_since: Option<Millis>,
    /// Healthy for the app's `min_healthy_time`: takes traffic and counts toward deployments.
    #[serde(default)]
    pub in_service: bool,
    /// Its version's cpu and memory, recorded when placed, so that a node's use counts an old
    /// version's instance at its own size during a deployment. Absent on instances placed by an
    /// older server: they count at their app's current spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<Allocation>,
    /// Placed in the shared pool because its group's own pools were full.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub borrowed: bool,
    /// Set on a job's attempt (`app` is then the job): which run, which attempt. It runs to
    /// an end and is never replaced by the reconciler of apps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<crate::job::RunOf>,
}

/// What a node observes of an instance: the part of its record an agent reports
/// (`InstanceReport`) and the server keeps (`Instance`), one definition for both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub oom_killed: bool,
    /// Why the instance is failed or stopped, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `reason` as data, with its kind. Absent for reasons from an older agent or server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<crate::Reason>,
    /// The runtime's own handle (container id, pid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    /// The last lines it wrote, when it failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_log: Vec<String>,
}

impl Observed {
    /// Says why, in data (`cause`) and in words (`reason`).
    pub fn because(&mut self, why: crate::Reason) {
        self.reason = Some(why.to_string());
        self.cause = Some(why);
    }

    /// Takes what a node newly says (`news`) of an instance that is `live` or not: its health as
    /// said, facts it does not repeat kept, a reason replaced by a new one or cleared once a live
    /// instance's check passes again, and at most 20 last lines.
    pub fn take_news(&mut self, news: &Observed, live: bool) {
        self.healthy = news.healthy;
        self.exit_code = news.exit_code.or(self.exit_code);
        self.oom_killed |= news.oom_killed;
        if news.reason.is_some() {
            self.reason.clone_from(&news.reason);
            self.cause.clone_from(&news.cause);
        } else if news.healthy == Some(true) && live {
            // Its check passes again: the failure it was showing is over.
            self.reason = None;
            self.cause = None;
        }
        if !news.last_log.is_empty() {
            self.last_log = news.last_log.iter().take(20).cloned().collect();
        }
        self.handle = news.handle.clone().or(self.handle.take());
        self.started_at = news.started_at.or(self.started_at);
        self.finished_at = news.finished_at.or(self.finished_at);
    }
}

impl Instance {
    /// Says why, in data (`cause`) and in words (`reason`).
    pub fn set_reason(&mut self, why: crate::Reason) {
        self.observed.because(why);
    }

    pub fn clear_reason(&mut self) {
        self.observed.reason = None;
        self.observed.cause = None;
    }

    /// `host:port` where the first port answers.
    pub fn address(&self) -> Option<String> {
        self.host_ports.first().map(|p| format!("{}:{p}", self.host))
    }

    /// Running and not known unhealthy (it may still be serving its `min_healthy_time`).
    pub fn is_up(&self) -> bool {
        self.state == InstanceState::Running && self.observed.healthy != Some(false)
    }

    /// Ready for traffic: up, and up long enough to be put in service.
    pub fn is_ready(&self) -> bool {
        self.is_up() && self.in_service
    }
}

/// Resources a node offers to instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu: f64,
    /// MiB.
    pub memory: u64,
    /// Inclusive host-port range handed out to instances.
    pub ports: (u16, u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Ready,
    /// Silent past the node timeout: dead or cut off, the server cannot tell. Its instances are
    /// replaced (after their app's `max_disconnect`); if it comes back, one set survives.
    #[serde(alias = "down")]
    Disconnected,
}

/// The shared pool: nodes started without `--pool`, where unbound groups place and from which
/// bound groups borrow when their own pools are full.
pub const SHARED_POOL: &str = "default";

fn shared_pool() -> String {
    SHARED_POOL.to_string()
}

/// Pools of nodes as operators set them (Vipshop's pools per business): which groups place in
/// which pools, and how far each pool's cpu may be promised beyond what its nodes have.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pools {
    /// Group -> the pools its apps place in first.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Pool -> the factor its nodes' cpu counts for in placement (1 when absent): at 1.5 a
    /// 4-cpu node takes 6 cpu of instances, betting that they do not all use what they ask.
    #[serde(default)]
    pub cpu_oversubscription: BTreeMap<String, f64>,
}

impl Pools {
    pub fn cpu_factor(&self, pool: &str) -> f64 {
        self.cpu_oversubscription.get(pool).copied().unwrap_or(1.0)
    }

    /// Where a group's apps go: the pools tried first, and whether they may then borrow from the
    /// shared pool. An unbound group has the shared pool only.
    pub fn of_group(&self, group: &str) -> (Vec<&str>, bool) {
        match self.groups.get(group).filter(|pools| !pools.is_empty()) {
            Some(pools) => (pools.iter().map(String::as_str).collect(), !pools.iter().any(|p| p == SHARED_POOL)),
            None => (vec![SHARED_POOL], false),
        }
    }
}

/// Whether new instances may be placed on a node: an operator's choice, kept across the agent's
/// restarts and re-registrations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Eligibility {
    #[default]
    Eligible,
    Ineligible,
}

impl fmt::Display for Eligibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Eligibility::Eligible => "eligible",
            Eligibility::Ineligible => "ineligible",
        })
    }
}

/// How a drain went, or goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainState {
    /// Instances are being moved off.
    Running,
    /// Every instance moved off.
    Complete,
    /// The deadline came first: what was left was stopped.
    DeadlineReached,
    /// Made eligible again before it ended.
    Cancelled,
}

/// A drain: every instance moved off a node through the deployment gates (a replacement is in
/// service elsewhere before the instance it replaces leaves).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    pub state: DrainState,
    pub started_at: Millis,
    /// What is left is stopped at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<Millis>,
    /// Live instances on the node when the drain began.
    pub instances: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Millis>,
}

impl Drain {
    /// A drain begun at `now` of the node's `instances` live ones, with its deadline if any.
    pub fn started(now: Millis, deadline_at: Option<Millis>, instances: usize) -> Drain {
        Drain { state: DrainState::Running, started_at: now, deadline_at, instances, ended_at: None }
    }

    pub fn is_running(&self) -> bool {
        self.state == DrainState::Running
    }
}

/// A node as people see it: disconnected, draining, ineligible or ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Ready,
    Draining,
    Ineligible,
    #[serde(alias = "down")]
    Disconnected,
    /// Put aside by the server for failing apps that run healthy elsewhere.
    Quarantined,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Ready => "ready",
            NodeState::Draining => "draining",
            NodeState::Ineligible => "ineligible",
            NodeState::Disconnected => "disconnected",
            NodeState::Quarantined => "quarantined",
        })
    }
}

/// A machine in the pool, as its agent registered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub hostname: String,
    /// Where the node's instances answer.
    pub address: String,
    pub resources: Resources,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Drivers the node can run, best first.
    pub drivers: Vec<DriverKind>,
    pub status: NodeStatus,
    pub registered_at: Millis,
    pub last_heartbeat: Millis,
    /// Ports of the node's range that another process holds, as its agent last found them:
    /// never handed to an instance until the agent finds them free again.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub taken_ports: BTreeSet<u16>,
    /// The pool it joined (`--pool`).
    #[serde(default = "shared_pool")]
    pub pool: String,
    #[serde(default)]
    pub eligibility: Eligibility,
    /// The last drain, running or ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
    /// When it was last marked disconnected (kept once it is back: instances older than this
    /// lived through the cut, and are the first to go when one set of two must).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnected_at: Option<Millis>,
    /// The last time it was put aside for failing apps that run healthy elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Quarantine>,
    /// Drivers whose engine stopped answering, as its agent last found them: nothing new is
    /// placed on them until they answer again.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub drivers_down: BTreeSet<DriverKind>,
}

/// A node put aside by the server: made ineligible and drained, until an operator makes it
/// eligible again (`released_at`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantine {
    pub at: Millis,
    pub why: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<Millis>,
}

impl Quarantine {
    pub fn is_active(&self) -> bool {
        self.released_at.is_none()
    }
}

impl Node {
    /// Whether `inst`, placed on this node, was there when the node was last cut off.
    pub fn was_cut_off_under(&self, inst: &Instance) -> bool {
        self.disconnected_at.is_some_and(|at| at > inst.created_at)
    }

    /// Whether the server may put it aside: an eligible node, not draining, not aside already.
    pub fn can_be_quarantined(&self) -> bool {
        self.eligibility == Eligibility::Eligible && !self.is_draining() && !self.is_quarantined()
    }

    pub fn is_quarantined(&self) -> bool {
        self.quarantine.as_ref().is_some_and(Quarantine::is_active)
    }

    pub fn state(&self) -> NodeState {
        match self.status {
            NodeStatus::Disconnected => NodeState::Disconnected,
            NodeStatus::Ready if self.is_quarantined() => NodeState::Quarantined,
            NodeStatus::Ready if self.is_draining() => NodeState::Draining,
            NodeStatus::Ready if self.eligibility == Eligibility::Ineligible => NodeState::Ineligible,
            NodeStatus::Ready => NodeState::Ready,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.drain.as_ref().is_some_and(Drain::is_running)
    }

    /// The driver this node uses for `spec`, or why it cannot run it.
    pub fn driver_for(&self, spec: &AppSpec) -> Result<DriverKind, NoDriver> {
        match spec.driver {
            Some(kind) if self.drivers.contains(&kind) => Ok(kind),
            Some(kind) => Err(NoDriver::Named(kind)),
            None => {
                let runnable = |kind: &DriverKind| match kind {
                    DriverKind::Docker => spec.image.is_some(),
                    DriverKind::Exec => spec.command.is_some(),
                };
                self.drivers.iter().copied().find(runnable).ok_or(NoDriver::NoneRuns)
            }
        }
    }
}

/// Why a node cannot run an app at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoDriver {
    /// The spec names a driver the node lacks.
    Named(DriverKind),
    /// The spec names none, and none of the node's can run it.
    NoneRuns,
}

impl fmt::Display for NoDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoDriver::Named(kind) => write!(f, "node has no {kind} driver"),
            NoDriver::NoneRuns => {
                f.write_str("node has no driver that can run this app (docker needs an engine; exec needs a command)")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// Something that happened, kept in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub time: Millis,
    pub level: Level,
    /// Short machine name: `app.created`, `instance.failed`, `node.lost`, ...
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_s_news_keeps_what_it_does_not_repeat() {
        let mut seen =
            Observed { handle: Some("c1".into()), started_at: Some(5), exit_code: Some(3), ..Default::default() };
        seen.because(crate::Reason::HealthCheck { result: "GET / answered 503".into() });
        // Healthy again, saying nothing else: the reason goes, the facts stay.
        seen.take_news(&Observed { healthy: Some(true), ..Default::default() }, true);
        assert_eq!((seen.reason.as_deref(), seen.cause.as_ref()), (None, None));
        assert_eq!((seen.handle.as_deref(), seen.started_at, seen.exit_code), (Some("c1"), Some(5), Some(3)));
        // A new reason replaces it, with its data; last lines are kept to 20.
        let mut news =
            Observed { last_log: (0..30).map(|i| i.to_string()).collect(), oom_killed: true, ..Default::default() };
        news.because(crate::Reason::Exited(crate::Exit { exit_code: Some(137), oom_killed: true, detail: None }));
        seen.take_news(&news, false);
        assert_eq!(seen.reason.as_deref(), Some("OOM-killed: over its memory limit"));
        assert!(seen.oom_killed && seen.last_log.len() == 20);
        // A live instance stays unhealthy with its reason until its check passes.
        seen.take_news(&Observed { healthy: Some(false), ..Default::default() }, true);
        assert!(seen.reason.is_some());
    }

    #[test]
    fn backoff_follows_marathon() {
        assert_eq!(Backoff::delay_ms(0), 0);
        assert_eq!(Backoff::delay_ms(1), 1000);
        assert_eq!(Backoff::delay_ms(2), 1150);
        assert_eq!(Backoff::delay_ms(3), 1322);
        assert_eq!(Backoff::delay_ms(200), 300_000);
        let b = Backoff::default().after_failure(10_000).after_failure(20_000);
        assert_eq!(b, Backoff { failures: 2, not_before: 21_150, last_failure_at: 20_000 });
    }

    #[test]
    fn terminal_states_are_final() {
        use InstanceState::*;
        assert!(Staging.can_become(Running));
        assert!(Running.can_become(Failed));
        assert!(!Failed.can_become(Running));
        assert!(!Stopped.can_become(Starting));
        assert!(!Running.can_become(Staging));
    }

    #[test]
    fn node_picks_a_driver_that_can_run_the_app() {
        let spec = AppSpec::from_yaml("group: g\nname: n\nimage: i\n", None).unwrap();
        let mut node = Node {
            id: "n1".into(),
            hostname: "h".into(),
            address: "127.0.0.1".into(),
            resources: Resources { cpu: 1.0, memory: 1024, ports: (20000, 20100) },
            labels: BTreeMap::new(),
            drivers: vec![DriverKind::Exec],
            status: NodeStatus::Ready,
            registered_at: 0,
            last_heartbeat: 0,
            taken_ports: Default::default(),
            pool: crate::SHARED_POOL.into(),
            eligibility: Default::default(),
            drain: None,
            disconnected_at: None,
            quarantine: None,
            drivers_down: Default::default(),
        };
        assert!(node.driver_for(&spec).is_err(), "image-only app needs docker");
        node.drivers = vec![DriverKind::Docker, DriverKind::Exec];
        assert_eq!(node.driver_for(&spec), Ok(DriverKind::Docker));
    }
}
