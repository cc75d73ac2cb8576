//! Deployments, decided in one place: start, supersede, promote, end, roll back, failures counted
//! against them, the busy check, the rollback target, and the judgement of a running one.
//!
//! Every function edits the `App` it is given and returns the other writes that go with it as
//! `Effect`s (a new version record, an outcome on a version, an event). The server turns an app
//! and its effects into one store transaction; nothing here reads the store or the clock.

use std::fmt;

use berth_core::{
    App, AppSpec, AppVersion, Backoff, Deployment, DeploymentKind, DeploymentState, Instance, Level, Millis, Outcome,
    Strategy,
};

/// A write that goes with a changed app, in the same transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A new numbered version of the app's spec.
    Version(Box<AppVersion>),
    /// How a version's deployment ended, written on that version's record.
    Outcome { version: u64, outcome: Outcome },
    /// An event about the app.
    Event { level: Level, kind: &'static str, message: String },
}

fn event(level: Level, kind: &'static str, message: String) -> Effect {
    Effect::Event { level, kind, message }
}

/// A change a person (or a script) asks for.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new spec; `keep_scale` keeps the current instance count; `change` says what changed
    /// when it is not the diff of the specs (a restart, a rollback).
    Spec {
        spec: Box<AppSpec>,
        keep_scale: bool,
        kind: DeploymentKind,
        change: Option<String>,
    },
    Scale(u32),
    /// Finish a canary deployment: roll it out to every instance.
    Promote,
}

/// How a change treats a deployment already in progress, and whether it starts as a canary.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChangeOptions {
    pub force: bool,
    pub canary: Option<u32>,
}

/// What a change does: the app to write (`changed`), whether it is new, and what goes with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub app: App,
    pub created: bool,
    pub changed: bool,
    pub effects: Vec<Effect>,
}

/// Why a change is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    NotFound { app: String },
    Destroying { app: String },
    NoCanary { app: String },
    Busy(Busy),
    Canary { n: u32, max: u32 },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotFound { app } => write!(f, "app {app} not found"),
            Refusal::Destroying { app } => write!(f, "app {app} is being destroyed; wait until it is gone"),
            Refusal::NoCanary { app } => write!(f, "{app} has no canary waiting to be promoted"),
            Refusal::Busy(b) => b.fmt(f),
            Refusal::Canary { n, max } => {
                write!(f, "canary: {n} must be between 1 and {max} (one less than instances)")
            }
        }
    }
}

/// A deployment in progress that a change would supersede.
#[derive(Debug, Clone, PartialEq)]
pub struct Busy {
    pub app: String,
    pub version: u64,
    pub kind: DeploymentKind,
    pub canary: bool,
    /// Seconds since it started.
    pub age: i64,
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.canary { "a canary of" } else { "a deployment of" };
        write!(
            f,
            "{} is in the middle of {what} v{} ({}, started {}s ago); wait for it, `promote` or `rollback` it, \
             or pass --force to supersede it",
            self.app,
            self.version,
            self.kind.as_str(),
            self.age
        )
    }
}

/// The deployment in progress, if any, that a change without `force` must wait for.
pub fn busy(app: &App, now: Millis) -> Option<Busy> {
    let d = app.active_deployment()?;
    Some(Busy {
        app: app.id(),
        version: d.version,
        kind: d.kind,
        canary: d.canary.is_some(),
        age: (now - d.started_at).max(0) / 1000,
    })
}

/// Specs that differ at most in their instance count: a scale, not a new version.
pub fn same_ignoring_scale(a: &AppSpec, b: &AppSpec) -> bool {
    let mut a = a.clone();
    a.instances = b.instances;
    &a == b
}

/// Decides a change to the app `id` (`current`: its record, if it exists). `versions` are its
/// stored versions: a new version keeps the instances of any with the same spec.
pub fn decide(
    current: Option<&App>,
    id: &str,
    change: Change,
    opts: ChangeOptions,
    versions: &[AppVersion],
    now: Millis,
) -> Result<Decision, Refusal> {
    let mut effects = Vec::new();
    let unchanged = |app: &App| Ok(Decision { app: app.clone(), created: false, changed: false, effects: Vec::new() });
    let Some(current) = current else {
        let Change::Spec { spec, .. } = change else { return Err(Refusal::NotFound { app: id.to_string() }) };
        let spec = *spec;
        let mut app = App {
            spec: spec.clone(),
            version: 1,
            instances: spec.instances,
            created_at: now,
            updated_at: now,
            destroying: false,
            backoff: Backoff::default(),
            alike: Vec::new(),
            stable_version: None,
            deployment: None,
        };
        start(&mut app, DeploymentKind::Create, None, now);
        let instances = spec.instances;
        effects.push(Effect::Version(Box::new(AppVersion {
            app: id.to_string(),
            version: 1,
            spec,
            created_at: now,
            change: "created".into(),
            outcome: None,
        })));
        effects.push(event(Level::Info, "app.created", format!("created v1 with {instances} instance(s)")));
        return Ok(Decision { app, created: true, changed: true, effects });
    };
    if current.destroying {
        return Err(Refusal::Destroying { app: id.to_string() });
    }
    let mut app = current.clone();
    let refuse_if_busy = |app: &App| match busy(app, now) {
        Some(b) if !opts.force => Err(Refusal::Busy(b)),
        _ => Ok(()),
    };
    match change {
        Change::Promote => effects = promote(&mut app, now)?,
        Change::Spec { spec, keep_scale, kind, change } => {
            let mut spec = *spec;
            if keep_scale {
                spec.instances = app.instances;
            }
            let same = kind != DeploymentKind::Restart && same_ignoring_scale(&app.spec, &spec);
            if same && app.instances == spec.instances {
                return unchanged(&app);
            }
            // Rolling back is the way out of a deployment, so it never waits for one.
            if kind != DeploymentKind::Rollback {
                refuse_if_busy(&app)?;
            }
            if same {
                effects = scale(&mut app, spec.instances, now);
            } else {
                let text = change.unwrap_or_else(|| describe_change(&app.spec, &spec));
                effects = new_version(&mut app, spec, text, kind, versions, now);
                if let Some(n) = opts.canary {
                    if n == 0 || n >= app.instances {
                        return Err(Refusal::Canary { n, max: app.instances.saturating_sub(1) });
                    }
                    if let Some(d) = app.deployment.as_mut() {
                        d.canary = Some(n);
                        d.blue_green = false;
                    }
                }
            }
        }
        Change::Scale(n) => {
            if app.instances == n {
                return unchanged(&app);
            }
            refuse_if_busy(&app)?;
            effects = scale(&mut app, n, now);
        }
    }
    Ok(Decision { app, created: false, changed: true, effects })
}

/// History's one line for a change: each top-level key that differs, from and to.
pub fn describe_change(old: &AppSpec, new: &AppSpec) -> String {
    let (serde_json::Value::Object(a), serde_json::Value::Object(b)) =
        (serde_json::to_value(old).unwrap_or_default(), serde_json::to_value(new).unwrap_or_default())
    else {
        return "changed".into();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).filter(|k| *k != "instances").collect();
    keys.sort();
    keys.dedup();
    let short = |v: Option<&serde_json::Value>| {
        let text = v.map_or("unset".to_string(), |v| v.to_string());
        if text.len() > 60 { format!("{}...", &text[..text.floor_char_boundary(57)]) } else { text }
    };
    let parts: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} -> {}", short(a.get(k)), short(b.get(k))))
        .collect();
    if parts.is_empty() { "no change".into() } else { parts.join("; ") }
}

/// Starts a deployment of the app as it now stands (after a scale, or on creation).
pub fn start(app: &mut App, kind: DeploymentKind, from_version: Option<u64>, now: Millis) {
    let mut d = Deployment::start(kind, from_version, app.version, now);
    d.blue_green = app.spec.upgrade.strategy == Strategy::BlueGreen && from_version.is_some();
    app.deployment = Some(d);
}

/// Marks the running deployment, if any, as superseded by a newer change.
pub fn supersede(app: &mut App, by: &str, now: Millis) -> Vec<Effect> {
    let Some(d) = app.deployment.as_mut().filter(|d| d.state == DeploymentState::Running) else {
        return Vec::new();
    };
    d.state = DeploymentState::Superseded;
    d.finished_at = Some(now);
    d.message = Some(format!("superseded by {by}"));
    let mut effects = Vec::new();
    if d.from_version != Some(d.version) && d.kind != DeploymentKind::Scale {
        let outcome = Outcome { state: d.state, at: now, message: d.message.clone() };
        effects.push(Effect::Outcome { version: d.version, outcome });
    }
    effects.push(event(Level::Warn, "deployment.superseded", format!("v{} deployment superseded by {by}", d.version)));
    effects
}

/// A new instance count. A version rollout in progress keeps going toward the new count;
/// otherwise the scale is a deployment of its own, under the same health gates.
pub fn scale(app: &mut App, n: u32, now: Millis) -> Vec<Effect> {
    let mut effects = vec![event(Level::Info, "app.scaled", format!("scaled from {} to {n}", app.instances))];
    app.instances = n;
    app.spec.instances = n;
    app.backoff = Backoff::default();
    app.updated_at = now;
    if app.active_deployment().is_none_or(|d| d.kind == DeploymentKind::Scale) {
        effects.extend(supersede(app, &format!("scale to {n}"), now));
        start(app, DeploymentKind::Scale, None, now);
    }
    effects
}

/// Makes `spec` the app's new numbered version and starts its deployment. Instances of an
/// earlier version (among `versions`) with this very spec are kept, unless it is a restart.
pub fn new_version(
    app: &mut App,
    spec: AppSpec,
    change: String,
    kind: DeploymentKind,
    versions: &[AppVersion],
    now: Millis,
) -> Vec<Effect> {
    let from = app.version;
    let mut effects = supersede(app, &format!("v{}", from + 1), now);
    app.alike = if kind == DeploymentKind::Restart {
        Vec::new()
    } else {
        versions.iter().filter(|v| same_ignoring_scale(&v.spec, &spec)).map(|v| v.version).collect()
    };
    app.version += 1;
    app.instances = spec.instances;
    app.spec = spec.clone();
    app.backoff = Backoff::default();
    app.updated_at = now;
    effects.push(Effect::Version(Box::new(AppVersion {
        app: app.id(),
        version: app.version,
        spec,
        created_at: now,
        change: change.clone(),
        outcome: None,
    })));
    start(app, kind, Some(from), now);
    let level = if kind == DeploymentKind::AutoRollback { Level::Error } else { Level::Info };
    effects.push(event(level, "app.updated", format!("v{}: {change}", app.version)));
    effects
}

/// Ends the running deployment; a success makes its version the stable one.
pub fn end(app: &mut App, outcome: DeploymentState, message: String, now: Millis) -> Vec<Effect> {
    let Some(d) = app.deployment.as_mut().filter(|d| d.state == DeploymentState::Running) else {
        return Vec::new();
    };
    d.state = outcome;
    d.finished_at = Some(now);
    d.message = Some(message.clone());
    let (version, kind) = (d.version, d.kind);
    let mut effects = Vec::new();
    if kind != DeploymentKind::Scale {
        effects.push(Effect::Outcome {
            version,
            outcome: Outcome { state: outcome, at: now, message: Some(message.clone()) },
        });
    }
    let (level, name) = match outcome {
        DeploymentState::Succeeded => {
            app.stable_version = Some(version);
            (Level::Info, "deployment.succeeded")
        }
        DeploymentState::RolledBack => (Level::Error, "deployment.rolled_back"),
        _ => (Level::Error, "deployment.failed"),
    };
    effects.push(event(level, name, format!("{} v{version}: {message}", kind.as_str())));
    effects
}

/// The deployment failed: `to_version`'s spec (`target`, its stored record) becomes current
/// again as a new version. Without the record the deployment just fails.
pub fn roll_back(
    app: &mut App,
    target: Option<&AppVersion>,
    to_version: u64,
    reason: String,
    versions: &[AppVersion],
    now: Millis,
) -> Vec<Effect> {
    let Some(target) = target else {
        let why = format!("{reason}; v{to_version} to roll back to is gone");
        return end(app, DeploymentState::Failed, why, now);
    };
    let failed = app.version;
    let mut effects = end(app, DeploymentState::RolledBack, format!("{reason}; rolling back to v{to_version}"), now);
    let mut spec = target.spec.clone();
    spec.instances = app.instances;
    let change = format!("automatic rollback to v{to_version} after v{failed} failed");
    effects.extend(new_version(app, spec, change, DeploymentKind::AutoRollback, versions, now));
    effects
}

/// Finishes a canary: the deployment goes on to every instance.
pub fn promote(app: &mut App, now: Millis) -> Result<Vec<Effect>, Refusal> {
    let id = app.id();
    let Some(d) = app.deployment.as_mut().filter(|d| d.state == DeploymentState::Running && d.canary.is_some()) else {
        return Err(Refusal::NoCanary { app: id });
    };
    d.canary = None;
    d.progress_at = now;
    let message = format!("canary of v{} promoted: rolling out to every instance", d.version);
    Ok(vec![event(Level::Info, "deployment.promoted", message)])
}

/// Blue-green: all traffic moves to the new set at once, which ends its deployment.
pub fn switch(app: &mut App, now: Millis) -> Vec<Effect> {
    let Some(d) = app.deployment.as_mut() else { return Vec::new() };
    d.switched_at = Some(now);
    d.progress_at = now;
    let version = d.version;
    let mut effects =
        vec![event(Level::Info, "deployment.switched", format!("all traffic moved to v{version} at once"))];
    effects.extend(end(app, DeploymentState::Succeeded, format!("blue-green switch to v{version}"), now));
    effects
}

/// An instance of `version` went into service: the deployment made progress.
pub fn admitted(app: &mut App, version: u64, now: Millis) {
    if app.is_current(version)
        && let Some(d) = app.deployment.as_mut()
    {
        d.progress_at = now;
    }
}

/// A failure the platform did not ask for: slows the next launch, and counts against the running
/// deployment when the instance was one of its new ones. Says so when the app just entered a
/// crash loop.
pub fn count_failure(app: &mut App, version: u64, why: &str, now: Millis) -> Vec<Effect> {
    app.backoff = app.backoff.after_failure(now);
    if app.is_current(version)
        && let Some(d) = app.deployment.as_mut().filter(|d| d.state == DeploymentState::Running)
    {
        d.failures += 1;
        d.last_failure = Some(why.to_string());
    }
    if app.backoff.failures != Backoff::CRASH_LOOP_AFTER {
        return Vec::new();
    }
    let message = format!(
        "crash loop: {} failures in a row, last: {why}; next launch in {} ms",
        app.backoff.failures,
        (app.backoff.not_before - now).max(0)
    );
    vec![event(Level::Error, "app.crash_loop", message)]
}

/// Why a rollback cannot go where asked.
#[derive(Debug, Clone, PartialEq)]
pub enum RollbackRefusal {
    /// Nothing earlier differs from the current spec.
    NoEarlier {
        app: String,
        current: u64,
    },
    AlreadyCurrent {
        app: String,
        version: u64,
    },
    NoSuchVersion {
        app: String,
        version: u64,
        latest: u64,
    },
}

impl fmt::Display for RollbackRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RollbackRefusal::NoEarlier { app, current } => {
                write!(f, "{app} has no earlier version that differs from v{current}")
            }
            RollbackRefusal::AlreadyCurrent { app, version } => {
                write!(f, "v{version} is already the current version of {app}")
            }
            RollbackRefusal::NoSuchVersion { app, version, latest } => {
                write!(f, "version {version} of {app} (it has 1 to {latest}) not found")
            }
        }
    }
}

/// The version a rollback goes to: the one asked for, or else the latest earlier version that
/// differs from the current spec and ran healthy, or else the latest earlier one that differs.
pub fn rollback_target<'a>(
    app: &App,
    versions: &'a [AppVersion],
    requested: Option<u64>,
) -> Result<&'a AppVersion, RollbackRefusal> {
    let id = app.id();
    let target = match requested {
        Some(v) => v,
        None => {
            let earlier: Vec<&AppVersion> = versions
                .iter()
                .filter(|v| v.version < app.version && !same_ignoring_scale(&v.spec, &app.spec))
                .collect();
            let stable = earlier
                .iter()
                .filter(|v| v.outcome.as_ref().is_some_and(|o| o.state == DeploymentState::Succeeded))
                .map(|v| v.version)
                .max();
            stable
                .or_else(|| earlier.iter().map(|v| v.version).max())
                .ok_or(RollbackRefusal::NoEarlier { app: id.clone(), current: app.version })?
        }
    };
    if target == app.version {
        return Err(RollbackRefusal::AlreadyCurrent { app: id, version: target });
    }
    versions.iter().find(|v| v.version == target).ok_or(RollbackRefusal::NoSuchVersion {
        app: id,
        version: target,
        latest: app.version,
    })
}

/// Failures of new instances that fail a deployment at once, before its progress deadline.
pub fn failure_budget(target: usize) -> u32 {
    target.max(3) as u32
}

/// The judgement of a running deployment.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Blue-green: the new set is whole and ready; move all traffic to it.
    Switch,
    Succeeded {
        message: String,
    },
    /// Failed; it rolls back to `roll_back_to` when there is a stable version to return to.
    Failed {
        reason: String,
        roll_back_to: Option<u64>,
    },
}

/// Whether the running deployment is done (its instances in service, the replaced ones gone) or
/// failed, and then whether it rolls back; with the time to judge again when nothing happens.
/// `new` and `old` are the live instances of the current version and of the replaced ones.
pub fn judge(
    app: &App,
    new: &[&Instance],
    old: &[&Instance],
    stopping: bool,
    now: Millis,
) -> (Option<Verdict>, Option<Millis>) {
    let Some(d) = app.active_deployment() else { return (None, None) };
    let target = app.instances as usize;
    let ready = new.iter().filter(|i| i.is_ready()).count();
    if d.blue_green && d.switched_at.is_none() && !old.is_empty() {
        if ready >= target {
            return (Some(Verdict::Switch), None);
        }
    } else if d.canary.is_none() && old.is_empty() && !stopping && ready == target && new.len() == target {
        return (Some(Verdict::Succeeded { message: format!("{target} instance(s) healthy") }), None);
    }
    let upgrade = &app.spec.upgrade;
    let waiting_for_promote = d.canary.is_some_and(|n| ready >= (n as usize).min(target));
    let deadline = d.progress_at + upgrade.progress_deadline.as_millis() as i64;
    let reason = if d.failures >= failure_budget(target) {
        let last = d.last_failure.clone().unwrap_or_default();
        format!("{} instance(s) of v{} failed; last: {last}", d.failures, d.version)
    } else if waiting_for_promote {
        return (None, None);
    } else if now >= deadline {
        format!("no instance turned healthy within progress_deadline ({})", upgrade.progress_deadline)
    } else {
        return (None, Some(deadline));
    };
    (Some(Verdict::Failed { roll_back_to: rollback_on_failure(app), reason }), None)
}

/// Where a failed deployment returns to: the last stable version, when the spec asks for it and
/// that version is not what runs now. A rollback's own failure therefore never rolls back again:
/// the stable version is the one it restored.
pub fn rollback_on_failure(app: &App) -> Option<u64> {
    app.stable_version.filter(|stable| app.spec.upgrade.auto_rollback && !app.is_current(*stable))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::{
        App, AppSpec, AppVersion, Change, ChangeOptions, Decision, DeploymentKind, DeploymentState, Effect, Millis,
        Outcome, Refusal, RollbackRefusal, count_failure, decide, end, roll_back, rollback_on_failure, rollback_target,
        switch,
    };

    fn spec(extra: &str) -> AppSpec {
        let image = if extra.contains("image:") { "" } else { "image: i:1\n" };
        AppSpec::from_yaml(&format!("group: g\nname: web\n{image}instances: 3\n{extra}"), None).unwrap()
    }

    /// The app's versions as the store keeps them, updated by effects as the server writes them.
    #[derive(Debug, Default, Clone)]
    struct Store {
        versions: BTreeMap<u64, AppVersion>,
        events: Vec<&'static str>,
    }

    impl Store {
        fn write(&mut self, effects: Vec<Effect>) {
            for e in effects {
                match e {
                    Effect::Version(v) => {
                        self.versions.insert(v.version, *v);
                    }
                    Effect::Outcome { version, outcome } => {
                        if let Some(v) = self.versions.get_mut(&version) {
                            v.outcome = Some(outcome);
                        }
                    }
                    Effect::Event { kind, .. } => self.events.push(kind),
                }
            }
        }
        fn list(&self) -> Vec<AppVersion> {
            self.versions.values().cloned().collect()
        }
    }

    fn created(store: &mut Store, spec: AppSpec) -> App {
        let change =
            Change::Spec { spec: Box::new(spec), keep_scale: false, kind: DeploymentKind::Update, change: None };
        let d = decide(None, "g/web", change, ChangeOptions::default(), &[], 0).unwrap();
        store.write(d.effects);
        d.app
    }

    fn update(app: &App, spec: AppSpec, opts: ChangeOptions, store: &[AppVersion]) -> Result<Decision, Refusal> {
        let change =
            Change::Spec { spec: Box::new(spec), keep_scale: false, kind: DeploymentKind::Update, change: None };
        decide(Some(app), "g/web", change, opts, store, 1_000)
    }

    #[test]
    fn a_new_app_is_version_one_with_a_create_deployment() {
        let mut store = Store::default();
        let app = created(&mut store, spec(""));
        assert_eq!((app.version, app.instances), (1, 3));
        let d = app.active_deployment().unwrap();
        assert_eq!((d.kind, d.from_version), (DeploymentKind::Create, None));
        assert_eq!(store.versions[&1].change, "created");
        assert_eq!(store.events, ["app.created"]);
        let refused = decide(None, "g/web", Change::Scale(2), ChangeOptions::default(), &[], 0).unwrap_err();
        assert_eq!(refused.to_string(), "app g/web not found");
    }

    #[test]
    fn a_change_waits_for_a_running_deployment_unless_forced() {
        let mut store = Store::default();
        let app = created(&mut store, spec(""));
        let busy = update(&app, spec("command: [x]\n"), ChangeOptions::default(), &store.list()).unwrap_err();
        assert!(
            busy.to_string().starts_with("g/web is in the middle of a deployment of v1 (create, started 1s ago)"),
            "{busy}"
        );
        let forced = ChangeOptions { force: true, canary: None };
        let d = update(&app, spec("command: [x]\n"), forced, &store.list()).unwrap();
        store.write(d.effects);
        assert_eq!(d.app.version, 2);
        assert_eq!(store.versions[&1].outcome.as_ref().unwrap().state, DeploymentState::Superseded);
        assert_eq!(store.versions[&2].change, "command: unset -> [\"x\"]");
        // The same spec again changes nothing; a canary must leave an old instance.
        assert!(!update(&d.app, spec("command: [x]\n"), forced, &store.list()).unwrap().changed);
        let canary = ChangeOptions { force: true, canary: Some(3) };
        assert_eq!(update(&d.app, spec(""), canary, &store.list()), Err(Refusal::Canary { n: 3, max: 2 }));
    }

    #[test]
    fn a_rollback_goes_to_the_latest_version_that_ran_healthy() {
        let mut store = Store::default();
        let mut app = created(&mut store, spec(""));
        store.write(end(&mut app, DeploymentState::Succeeded, "ok".into(), 10));
        for image in ["i:2", "i:3"] {
            let d = update(
                &app,
                spec(&format!("image: {image}\n")),
                ChangeOptions { force: true, canary: None },
                &store.list(),
            )
            .unwrap();
            store.write(d.effects);
            app = d.app;
        }
        // v2 was superseded by v3, so v1 is the one that ran healthy.
        let versions = store.list();
        assert_eq!(rollback_target(&app, &versions, None).unwrap().version, 1);
        assert_eq!(rollback_target(&app, &versions, Some(2)).unwrap().version, 2);
        assert_eq!(
            rollback_target(&app, &versions, Some(3)),
            Err(RollbackRefusal::AlreadyCurrent { app: "g/web".into(), version: 3 })
        );
        assert_eq!(
            rollback_target(&app, &versions, Some(9)).unwrap_err().to_string(),
            "version 9 of g/web (it has 1 to 3) not found"
        );
    }

    #[test]
    fn the_third_failure_in_a_row_is_a_crash_loop() {
        let mut store = Store::default();
        let mut app = created(&mut store, spec(""));
        for n in 1..=4 {
            let effects = count_failure(&mut app, 1, "exit 3", n * 1000);
            let looping = effects.iter().any(|e| matches!(e, Effect::Event { kind: "app.crash_loop", .. }));
            assert_eq!(looping, n == 3, "failure {n}");
        }
        assert_eq!(app.active_deployment().unwrap().failures, 4);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Deploy { variant: u8, force: bool, canary: bool },
        Scale { n: u32, force: bool },
        Restart { force: bool },
        Promote,
        Rollback,
        Fail,
        Succeed,
        Switch,
        InstanceFails,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4, any::<bool>(), any::<bool>()).prop_map(|(variant, force, canary)| Op::Deploy {
                variant,
                force,
                canary
            }),
            (1u32..5, any::<bool>()).prop_map(|(n, force)| Op::Scale { n, force }),
            any::<bool>().prop_map(|force| Op::Restart { force }),
            Just(Op::Promote),
            Just(Op::Rollback),
            Just(Op::Fail),
            Just(Op::Succeed),
            Just(Op::Switch),
            Just(Op::InstanceFails),
        ]
    }

    fn variant(n: u8) -> AppSpec {
        match n {
            0 => spec(""),
            1 => spec("image: i:2\n"),
            2 => spec("image: i:3\nupgrade:\n  strategy: blue-green\n"),
            _ => spec("image: i:4\nupgrade:\n  auto_rollback: false\n"),
        }
    }

    /// One step as the API or the reconciler would take it; refusals change nothing.
    fn step(app: &mut App, store: &mut Store, op: &Op, now: Millis) {
        let versions = store.list();
        let decided = |change: Change, opts: ChangeOptions| decide(Some(app), "g/web", change, opts, &versions, now);
        let decision = match op.clone() {
            Op::Deploy { variant: v, force, canary } => {
                let opts = ChangeOptions { force, canary: canary.then_some(1) };
                decided(
                    Change::Spec {
                        spec: Box::new(variant(v)),
                        keep_scale: false,
                        kind: DeploymentKind::Update,
                        change: None,
                    },
                    opts,
                )
            }
            Op::Scale { n, force } => decided(Change::Scale(n), ChangeOptions { force, canary: None }),
            Op::Restart { force } => {
                let spec = Box::new(app.spec.clone());
                let change = Change::Spec { spec, keep_scale: true, kind: DeploymentKind::Restart, change: None };
                decided(change, ChangeOptions { force, canary: None })
            }
            Op::Promote => decided(Change::Promote, ChangeOptions::default()),
            Op::Rollback => match rollback_target(app, &versions, None) {
                Ok(target) => {
                    let spec = Box::new(target.spec.clone());
                    let change = Change::Spec { spec, keep_scale: true, kind: DeploymentKind::Rollback, change: None };
                    decided(change, ChangeOptions::default())
                }
                Err(_) => return,
            },
            Op::Fail => {
                let Some(d) = app.active_deployment() else { return };
                let kind = d.kind;
                let to = rollback_on_failure(app);
                assert!(
                    !(kind == DeploymentKind::AutoRollback && to.is_some()),
                    "an automatic rollback that fails rolls back again: {app:?}"
                );
                let effects = match to {
                    Some(v) => {
                        roll_back(app, versions.iter().find(|x| x.version == v), v, "failed".into(), &versions, now)
                    }
                    None => end(app, DeploymentState::Failed, "failed".into(), now),
                };
                store.write(effects);
                return;
            }
            Op::Succeed => {
                let effects = end(app, DeploymentState::Succeeded, "healthy".into(), now);
                store.write(effects);
                return;
            }
            Op::Switch => {
                if app.active_deployment().is_some_and(|d| d.blue_green) {
                    store.write(switch(app, now));
                }
                return;
            }
            Op::InstanceFails => {
                let version = app.version;
                store.write(count_failure(app, version, "exit 1", now));
                return;
            }
        };
        if let Ok(d) = decision {
            store.write(d.effects);
            *app = d.app;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever people and the reconciler do in whatever order: at most one deployment runs
        /// (every version but the current one has ended, with its outcome written), outcomes never
        /// change once written (a superseded deployment never ends as succeeded), every ended
        /// deployment's outcome is on its version, and an automatic rollback never rolls back again
        /// (asserted in `step`).
        #[test]
        fn deployments_keep_their_invariants(ops in proptest::collection::vec(op(), 1..40)) {
            let mut store = Store::default();
            let mut app = created(&mut store, spec(""));
            for (i, op) in ops.iter().enumerate() {
                let before: BTreeMap<u64, Option<Outcome>> =
                    store.versions.iter().map(|(v, r)| (*v, r.outcome.clone())).collect();
                step(&mut app, &mut store, op, 1_000 * (i as i64 + 1));
                for (v, record) in &store.versions {
                    if *v != app.version {
                        prop_assert!(record.outcome.is_some(), "v{v} never ended, after {op:?}: {app:?}");
                    }
                    if let Some(Some(was)) = before.get(v) {
                        prop_assert_eq!(record.outcome.as_ref(), Some(was), "v{}'s outcome changed after {:?}", v, op);
                    }
                }
                if let Some(d) = &app.deployment {
                    if d.state == DeploymentState::Running {
                        prop_assert_eq!(d.version, app.version);
                        prop_assert!(store.versions[&app.version].outcome.is_none() || d.kind == DeploymentKind::Scale);
                    } else if d.kind != DeploymentKind::Scale {
                        let written = store.versions[&d.version].outcome.as_ref().map(|o| o.state);
                        prop_assert_eq!(written, Some(d.state), "v{} ended without its outcome: {:?}", d.version, app);
                    }
                }
            }
        }
    }
}
