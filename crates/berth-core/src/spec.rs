//! The app spec (`berth.yaml`): the seed's UPONE fields plus Berth's own, parsed and validated
//! with errors that name the file, line, column, key, and the closest valid key.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::duration::Dur;

/// One app as its owner writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    pub group: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default = "default_instances")]
    pub instances: u32,
    /// Cores; fractions allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default)]
    pub network: NetworkMode,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    /// Container ports, in order; the first one is the instance's address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Variables by name: a value, or `{secret: NAME}`, a secret of the app's group that only the
    /// instance's environment ever sees.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, EnvValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    /// `host[:container_port]` names by which the router serves the app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "constraint_list")]
    pub constraints: Vec<Constraint>,
    /// Which driver runs the instances; unset lets the node choose (docker when it has an engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<DriverKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    #[serde(default)]
    pub upgrade: UpgradeSpec,
    /// Max processes inside one instance; guards the host's pid space.
    #[serde(default = "default_pids")]
    pub pids: u32,
    /// Time between SIGTERM and SIGKILL when an instance is stopped.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: Dur,
    /// Longest wait, before SIGTERM, for the requests routers still have in flight to a stopping
    /// instance; the wait ends as soon as every router reports none.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Dur,
    /// How routers spread requests over the instances.
    #[serde(default)]
    pub balance: Balance,
    /// Where instances go among the nodes that can take them: `spread` (the default: the node
    /// with the fewest of the app's instances, then the least loaded) or `binpack` (the fullest
    /// node that still fits, leaving whole nodes free).
    #[serde(default, skip_serializing_if = "PlacementStrategy::is_spread")]
    pub placement: PlacementStrategy,
    /// A new instance's share of requests ramps up to its full weight over this long (`0s` turns
    /// slow start off), so caches and JITs warm before the instance takes its full load.
    #[serde(default = "default_slow_start")]
    pub slow_start: Dur,
    /// How long instances on a node cut off from the server are kept, counted as running,
    /// before replacements are placed elsewhere (as Nomad's `max_client_disconnect`): for apps
    /// whose instances should ride out a flaky link rather than move. `0s`, the default,
    /// replaces them as soon as the node is marked disconnected.
    #[serde(default, skip_serializing_if = "Dur::is_zero")]
    pub max_disconnect: Dur,
    /// Where the app's log lines are forwarded, besides Berth's own store (see `Output`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_sinks: Vec<String>,
    /// Threshold alerts on the app's metrics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertRule>,
    /// Where the app's alerts go besides the server-wide outputs: `http://...` webhooks or
    /// `alertmanager+http://HOST:PORT` (see `Output`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_webhooks: Vec<String>,
}

/// `{metric: cpu, above: 80, for: 1m}`: fires once the metric stayed above the threshold that long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub metric: AlertMetric,
    pub above: f64,
    #[serde(default, rename = "for")]
    pub for_: Dur,
}

/// What a threshold alert watches, per app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AlertMetric {
    /// Mean CPU use of the app's instances, in percent of one core.
    #[serde(rename = "cpu")]
    Cpu,
    /// Highest memory use of an instance, in percent of its limit.
    #[serde(rename = "memory")]
    Memory,
    /// Instance failures in a row.
    #[serde(rename = "restarts")]
    Restarts,
    /// Share of 5xx answers through the routers, in percent, over the last 10 s.
    #[serde(rename = "5xx_rate")]
    ErrorRate,
    /// Mean time routers took to answer, in ms, over the last 10 s.
    #[serde(rename = "latency")]
    Latency,
}

impl AlertMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertMetric::Cpu => "cpu",
            AlertMetric::Memory => "memory",
            AlertMetric::Restarts => "restarts",
            AlertMetric::ErrorRate => "5xx_rate",
            AlertMetric::Latency => "latency",
        }
    }
}

impl AlertRule {
    /// `cpu>80`, `5xx_rate>5/30s`: a server-wide rule as a flag writes it.
    pub fn parse(text: &str) -> Result<AlertRule, String> {
        let hint = "expected METRIC>VALUE[/FOR], like cpu>80/1m (metrics: cpu, memory, restarts, 5xx_rate, latency)";
        let (metric, rest) = text.split_once('>').ok_or_else(|| format!("`{text}`: {hint}"))?;
        let (value, for_) = match rest.split_once('/') {
            Some((v, f)) => (v, Dur::parse(f).map_err(|e| format!("`{text}`: {e}"))?),
            None => (rest, Dur(0)),
        };
        let metric = match metric.trim() {
            "cpu" => AlertMetric::Cpu,
            "memory" => AlertMetric::Memory,
            "restarts" => AlertMetric::Restarts,
            "5xx_rate" => AlertMetric::ErrorRate,
            "latency" => AlertMetric::Latency,
            other => return Err(format!("`{text}`: unknown metric `{other}`; {hint}")),
        };
        let above = value.trim().parse::<f64>().map_err(|_| format!("`{text}`: `{value}` is not a number"))?;
        Ok(AlertRule { metric, above, for_ })
    }
}

/// How a router picks an instance for a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balance {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest requests in flight (per unit of weight).
    LeastConn,
    /// Consistent hashing on a request key: the same key keeps reaching the same instance.
    Hash(HashOn),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(String),
    Cookie(String),
    ClientIp,
}

impl Balance {
    pub fn parse(text: &str) -> Result<Balance, String> {
        let hint = "expected round_robin, least_conn, hash:header:NAME, hash:cookie:NAME or hash:ip";
        match text.split(':').collect::<Vec<_>>().as_slice() {
            ["round_robin"] => Ok(Balance::RoundRobin),
            ["least_conn"] => Ok(Balance::LeastConn),
            ["hash", "ip"] => Ok(Balance::Hash(HashOn::ClientIp)),
            ["hash", "header", name] if !name.is_empty() => {
                Ok(Balance::Hash(HashOn::Header(name.to_ascii_lowercase())))
            }
            ["hash", "cookie", name] if !name.is_empty() => Ok(Balance::Hash(HashOn::Cookie((*name).to_string()))),
            _ => Err(format!("`{text}`: {hint}")),
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Balance::RoundRobin => f.write_str("round_robin"),
            Balance::LeastConn => f.write_str("least_conn"),
            Balance::Hash(HashOn::Header(h)) => write!(f, "hash:header:{h}"),
            Balance::Hash(HashOn::Cookie(c)) => write!(f, "hash:cookie:{c}"),
            Balance::Hash(HashOn::ClientIp) => f.write_str("hash:ip"),
        }
    }
}

impl Serialize for Balance {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Balance {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Balance::parse(&text).map_err(de::Error::custom)
    }
}

fn default_instances() -> u32 {
    1
}
pub(crate) fn default_pids() -> u32 {
    1024
}
pub(crate) fn default_stop_timeout() -> Dur {
    Dur::secs(10)
}
fn default_drain_timeout() -> Dur {
    Dur::secs(30)
}
pub fn default_slow_start() -> Dur {
    Dur::secs(5)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementStrategy {
    #[default]
    Spread,
    Binpack,
}

impl PlacementStrategy {
    fn is_spread(&self) -> bool {
        *self == PlacementStrategy::Spread
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Bridge,
    Host,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    Docker,
    Exec,
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DriverKind::Docker => "docker",
            DriverKind::Exec => "exec",
        })
    }
}

/// A string runs under `/bin/sh -c`; a list is exec'd as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

impl Command {
    /// The argv that runs this command.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
            Command::Exec(args) => args.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// HTTP path probed with GET; any 2xx or 3xx is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// A TCP connect is enough.
    #[serde(default)]
    pub tcp: bool,
    /// Which of the app's ports is probed (index into `ports`).
    #[serde(default)]
    pub port_index: usize,
    // What `berth init` writes: a spec that says only `health: {http: /}` behaves the same.
    #[serde(default = "HealthSpec::default_interval")]
    pub interval: Dur,
    #[serde(default = "HealthSpec::default_timeout")]
    pub timeout: Dur,
    #[serde(default = "HealthSpec::default_grace")]
    pub grace: Dur,
    #[serde(default = "HealthSpec::default_max_failures")]
    pub max_failures: u32,
}

impl HealthSpec {
    fn default_interval() -> Dur {
        Dur::secs(10)
    }
    fn default_timeout() -> Dur {
        Dur::secs(2)
    }
    fn default_grace() -> Dur {
        Dur::secs(30)
    }
    fn default_max_failures() -> u32 {
        3
    }
}

/// How a deployment replaces instances: Marathon's `upgradeStrategy` plus Nomad's health gates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeSpec {
    #[serde(default)]
    pub strategy: Strategy,
    /// Fraction of `instances` that must stay healthy during a deployment.
    #[serde(default = "one")]
    pub min_health_capacity: f64,
    /// Fraction of `instances` that may run on top during a deployment.
    #[serde(default = "one")]
    pub max_over_capacity: f64,
    /// A new instance takes traffic, and counts as healthy, only once it stayed healthy this long.
    #[serde(default = "UpgradeSpec::default_min_healthy_time")]
    pub min_healthy_time: Dur,
    /// An instance not healthy this long after it was placed is replaced, and counts as failed.
    #[serde(default = "UpgradeSpec::default_healthy_deadline")]
    pub healthy_deadline: Dur,
    /// A deployment with no instance turning healthy for this long fails.
    #[serde(default = "UpgradeSpec::default_progress_deadline")]
    pub progress_deadline: Dur,
    /// A failed deployment goes back to the last version that ran healthy.
    #[serde(default = "yes")]
    pub auto_rollback: bool,
    /// Blue-green: how long the previous set is kept (without traffic) for an instant rollback.
    #[serde(default = "UpgradeSpec::default_rollback_window")]
    pub rollback_window: Dur,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Replace instances a few at a time, within the capacity bounds.
    #[default]
    Rolling,
    /// Bring a full new set up, then switch all traffic to it at once.
    BlueGreen,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

impl UpgradeSpec {
    fn default_min_healthy_time() -> Dur {
        Dur::secs(10)
    }
    fn default_healthy_deadline() -> Dur {
        Dur::secs(300)
    }
    fn default_progress_deadline() -> Dur {
        Dur::secs(600)
    }
    fn default_rollback_window() -> Dur {
        Dur::secs(600)
    }
}

impl Default for UpgradeSpec {
    fn default() -> Self {
        UpgradeSpec {
            strategy: Strategy::Rolling,
            min_health_capacity: 1.0,
            max_over_capacity: 1.0,
            min_healthy_time: Self::default_min_healthy_time(),
            healthy_deadline: Self::default_healthy_deadline(),
            progress_deadline: Self::default_progress_deadline(),
            auto_rollback: true,
            rollback_window: Self::default_rollback_window(),
        }
    }
}

/// Marathon's `field:OPERATOR[:value]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub field: String,
    pub op: ConstraintOp,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConstraintOp {
    Unique,
    Cluster,
    GroupBy,
    Like,
    Unlike,
    MaxPer,
}

impl ConstraintOp {
    const NAMES: [&'static str; 6] = ["UNIQUE", "CLUSTER", "GROUP_BY", "LIKE", "UNLIKE", "MAX_PER"];

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "UNIQUE" => ConstraintOp::Unique,
            "CLUSTER" => ConstraintOp::Cluster,
            "GROUP_BY" => ConstraintOp::GroupBy,
            "LIKE" => ConstraintOp::Like,
            "UNLIKE" => ConstraintOp::Unlike,
            "MAX_PER" => ConstraintOp::MaxPer,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

impl Constraint {
    /// Parses `hostname:UNIQUE`, `rack:CLUSTER:a`, `rack:GROUP_BY:3`, `hostname:LIKE:web.*`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.splitn(3, ':');
        let field = parts.next().unwrap_or_default().trim();
        let op_text = parts.next().map(str::trim).unwrap_or_default();
        let value = parts.next().map(|v| v.trim().to_string());
        if field.is_empty() {
            return Err(format!("constraint `{text}` has no field (expected field:OPERATOR[:value])"));
        }
        let op = ConstraintOp::parse(op_text).ok_or_else(|| {
            let hint =
                closest(op_text, &ConstraintOp::NAMES).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default();
            format!(
                "constraint `{text}`: unknown operator `{op_text}`{hint}; expected one of {}",
                ConstraintOp::NAMES.join(", ")
            )
        })?;
        // CLUSTER alone pins the app to wherever its first instance goes.
        let needs_value = matches!(op, ConstraintOp::Like | ConstraintOp::Unlike | ConstraintOp::MaxPer);
        match (&value, needs_value) {
            (None, true) => {
                return Err(format!("constraint `{text}`: {} needs a value", op.name()));
            }
            (Some(_), false) if op == ConstraintOp::Unique => {
                return Err(format!("constraint `{text}`: UNIQUE takes no value"));
            }
            _ => {}
        }
        if matches!(op, ConstraintOp::MaxPer | ConstraintOp::GroupBy)
            && let Some(v) = &value
            && v.parse::<u32>().map_or(true, |n| n == 0)
        {
            return Err(format!("constraint `{text}`: {} takes a positive number, not `{v}`", op.name()));
        }
        if matches!(op, ConstraintOp::Like | ConstraintOp::Unlike)
            && let Some(v) = &value
            && let Err(e) = regex::Regex::new(&format!("^(?:{v})$"))
        {
            let why = e.to_string().lines().last().unwrap_or_default().trim().to_string();
            return Err(format!("constraint `{text}`: `{v}` is not a regular expression ({why})"));
        }
        Ok(Constraint { field: field.to_string(), op, value })
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.field, self.op.name())?;
        if let Some(v) = &self.value {
            write!(f, ":{v}")?;
        }
        Ok(())
    }
}

impl Serialize for Constraint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Constraint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Constraint::parse(&text).map_err(de::Error::custom)
    }
}

/// Accepts `constraints` as one string, a list of strings, or Marathon's list of lists.
pub(crate) fn constraint_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Constraint>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        Text(String),
        Parts(Vec<String>),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<Item>),
    }
    let items = match OneOrMany::deserialize(d)? {
        OneOrMany::One(text) => vec![text],
        OneOrMany::Many(items) => items
            .into_iter()
            .map(|item| match item {
                Item::Text(text) => text,
                Item::Parts(parts) => parts.join(":"),
            })
            .collect(),
    };
    items.iter().map(|text| Constraint::parse(text).map_err(de::Error::custom)).collect()
}

/// Environment values may be written as numbers or booleans; they reach the process as text.
/// One variable of an app's environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum EnvValue {
    /// Text as written; numbers and booleans become their text.
    Value(String),
    /// The value of the app's group's secret of this name, read when an instance starts.
    Secret { secret: String },
}

impl EnvValue {
    /// The secret it names, if it names one.
    pub fn secret(&self) -> Option<&str> {
        match self {
            EnvValue::Secret { secret } => Some(secret),
            EnvValue::Value(_) => None,
        }
    }

    /// The plain value, if it is one.
    pub fn value(&self) -> Option<&str> {
        match self {
            EnvValue::Value(v) => Some(v),
            EnvValue::Secret { .. } => None,
        }
    }
}

impl From<&str> for EnvValue {
    fn from(v: &str) -> Self {
        EnvValue::Value(v.to_string())
    }
}

impl From<String> for EnvValue {
    fn from(v: String) -> Self {
        EnvValue::Value(v)
    }
}

impl PartialEq<&str> for EnvValue {
    fn eq(&self, other: &&str) -> bool {
        self.value() == Some(*other)
    }
}

/// As `berth app env` shows it: a secret by its name, never a value.
impl fmt::Display for EnvValue {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            EnvValue::Value(v) => f.write_str(v),
            EnvValue::Secret { secret } => write!(f, "<secret {secret}>"),
        }
    }
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EnvVisitor;
        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean, or {secret: NAME}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue::Value(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue::Value(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue::Value(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue::Value(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue::Value(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<EnvValue, A::Error> {
                let mut secret = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "secret" {
                        return Err(de::Error::unknown_field(&key, &["secret"]));
                    }
                    if secret.is_some() {
                        return Err(de::Error::duplicate_field("secret"));
                    }
                    secret = Some(map.next_value::<String>()?);
                }
                secret.map(|secret| EnvValue::Secret { secret }).ok_or_else(|| de::Error::missing_field("secret"))
            }
        }
        d.deserialize_any(EnvVisitor)
    }
}

/// Checks a secret's name: what a DNS label allows, and underscores (`db_password`).
pub fn check_secret_name(name: &str) -> Result<(), String> {
    check_label(&name.replace('_', "-")).map_err(|_| {
        if name.is_empty() {
            "must not be empty".to_string()
        } else if name.len() > 63 {
            format!("`{name}` is longer than 63 characters")
        } else {
            format!("`{name}` must be lowercase letters, digits, and inner dashes or underscores")
        }
    })
}

/// One problem in a spec, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
    /// Dotted path of the key at fault (`health.interval`), empty for the whole document.
    pub field: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut place = self.file.clone().unwrap_or_default();
        if let Some(line) = self.line {
            if !place.is_empty() {
                place.push(':');
            }
            place.push_str(&line.to_string());
            if let Some(col) = self.column {
                place.push_str(&format!(":{col}"));
            }
        }
        if !place.is_empty() {
            write!(f, "{place}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "`{}`: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean `{s}`?)")?;
        }
        Ok(())
    }
}

/// Every problem found in one spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl AppSpec {
    /// Parses and validates YAML text; `file` names the source in errors.
    pub fn from_yaml(text: &str, file: Option<&str>) -> Result<AppSpec, SpecErrors> {
        let spec: AppSpec = read_yaml(text, file, nested_parent)?;
        spec.validate().map_err(|errors| located(errors, text, file))?;
        Ok(spec)
    }

    /// `GROUP/NAME`: the app's identity.
    pub fn id(&self) -> String {
        format!("{}/{}", self.group, self.name)
    }

    /// Checks meaning after the shape is known: names, ranges, cross-field rules.
    pub fn validate(&self) -> Result<(), SpecErrors> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: String| {
            errors.push(SpecError {
                file: None,
                line: None,
                column: None,
                field: field.into(),
                message,
                suggestion: None,
            });
        };
        for (field, value) in [("group", &self.group), ("name", &self.name)] {
            if let Err(why) = check_label(value) {
                fail(field, why);
            }
        }
        match (&self.image, self.driver, &self.command) {
            (None, Some(DriverKind::Exec), Some(_)) => {}
            (None, Some(DriverKind::Exec), None) => fail("command", "driver `exec` needs a command".into()),
            (None, _, _) => fail("image", "required (or use `driver: exec` with a `command`)".into()),
            (Some(image), _, _) if let Err(why) = check_image(image) => {
                fail("image", format!("`{}` is not an image reference: {why}", image.escape_debug()));
            }
            (Some(_), Some(DriverKind::Exec), None) => fail("command", "driver `exec` needs a command".into()),
            _ => {}
        }
        if self.instances > 10_000 {
            fail("instances", format!("{} is more than the 10000 allowed", self.instances));
        }
        if let Some(cpu) = self.cpu
            && !(cpu.is_finite() && cpu > 0.0 && cpu <= 1024.0)
        {
            fail("cpu", format!("{cpu} cores is out of range (0 < cpu <= 1024)"));
        }
        if let Some(mem) = self.memory {
            // Docker refuses limits under 6 MiB.
            if !(6..=4 * 1024 * 1024).contains(&mem) {
                fail("memory", format!("{mem} MiB is out of range (6 to 4194304)"));
            }
        }
        if let Some(Command::Exec(args)) = &self.command
            && args.is_empty()
        {
            fail("command", "an empty list runs nothing".into());
        }
        // What execve(2) can never take: a NUL inside a string, one string over the kernel's
        // 128 KiB, or all of them over what the stack leaves for them.
        let mut arg_bytes = 0usize;
        match &self.command {
            Some(Command::Exec(args)) => {
                for (i, arg) in args.iter().enumerate() {
                    if let Err(why) = check_exec_string(arg) {
                        fail(&format!("command[{i}]"), why);
                    }
                    arg_bytes += arg.len() + 1;
                }
            }
            Some(Command::Shell(line)) => {
                if let Err(why) = check_exec_string(line) {
                    fail("command", why);
                }
                arg_bytes += line.len() + 1;
            }
            None => {}
        }
        for (key, value) in &self.environment {
            match value {
                EnvValue::Value(value) => {
                    if let Err(why) = check_exec_string(&format!("{key}={value}")) {
                        fail(&format!("environment.{key}"), why);
                    }
                    arg_bytes += key.len() + value.len() + 2;
                }
                // Its size is known where the secret is: the server checks it at deploy.
                EnvValue::Secret { secret } => {
                    if let Err(why) = check_secret_name(secret) {
                        fail(&format!("environment.{key}.secret"), why);
                    }
                    arg_bytes += key.len() + 2;
                }
            }
        }
        if arg_bytes > MAX_EXEC_TOTAL {
            fail(
                "environment",
                format!(
                    "command and environment take {} KiB; at most {} KiB can be passed to a process",
                    arg_bytes / 1024,
                    MAX_EXEC_TOTAL / 1024
                ),
            );
        }
        for (field, value, max) in [
            ("stop_timeout", self.stop_timeout, Dur::secs(3600)),
            ("drain_timeout", self.drain_timeout, Dur::secs(3600)),
        ] {
            if value > max {
                fail(field, format!("{value} is longer than the {max} allowed"));
            }
        }
        if let Some(Command::Shell(line)) = &self.command
            && line.trim().is_empty()
        {
            fail("command", "an empty command runs nothing".into());
        }
        let mut seen = Vec::new();
        for port in &self.ports {
            if *port == 0 {
                fail("ports", "port 0 is not a port".into());
            } else if seen.contains(port) {
                fail("ports", format!("port {port} is listed twice"));
            }
            seen.push(*port);
        }
        if self.network == NetworkMode::None && !self.ports.is_empty() {
            fail("ports", "`network: none` cannot publish ports".into());
        }
        for key in self.environment.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                fail("environment", format!("`{key}` is not a valid variable name"));
            }
        }
        for zone in &self.zones {
            if let Err(why) = check_label(zone.replace('_', "-").as_str()) {
                fail("zones", format!("zone `{zone}`: {why}"));
            }
        }
        let mut hosts = std::collections::BTreeSet::new();
        for (i, service) in self.services.iter().enumerate() {
            if let Err(why) = check_service(service, self.reachable_ports()) {
                fail("services", why);
            } else if !hosts.insert(crate::hosts::service_host(service)) {
                // One host reaches one port: a second entry would silently win over the first.
                fail(&format!("services[{i}]"), format!("host of `{service}` is already listed"));
            }
        }
        if let Some(health) = &self.health {
            match (&health.http, health.tcp) {
                (Some(_), true) => fail("health", "choose one of `http` and `tcp`".into()),
                (None, false) => fail("health", "set `http: /path` or `tcp: true`".into()),
                (Some(path), false) if !path.starts_with('/') => {
                    fail("health.http", format!("`{path}` must start with /"));
                }
                _ => {}
            }
            // An exec instance always gets `PORT`, even with no `ports` listed.
            let probe_ports = self.reachable_ports();
            if probe_ports == 0 {
                fail("health", "a health check needs at least one port in `ports`".into());
            } else if health.port_index >= probe_ports {
                fail(
                    "health.port_index",
                    format!("{} but only {} port(s) listed", health.port_index, self.ports.len()),
                );
            }
            if health.interval.0 == 0 {
                fail("health.interval", "must be more than 0".into());
            }
            if health.timeout.0 == 0 {
                fail("health.timeout", "must be more than 0".into());
            }
            if health.max_failures == 0 {
                fail("health.max_failures", "must be at least 1".into());
            }
        }
        for (field, value) in [
            ("upgrade.min_health_capacity", self.upgrade.min_health_capacity),
            ("upgrade.max_over_capacity", self.upgrade.max_over_capacity),
        ] {
            if !(0.0..=1.0).contains(&value) {
                fail(field, format!("{value} is not a fraction between 0 and 1"));
            }
        }
        for (i, hook) in self.alert_webhooks.iter().enumerate() {
            if let Err(why) = crate::Output::parse_alerts(hook) {
                fail(&format!("alert_webhooks[{i}]"), why);
            }
        }
        for (i, rule) in self.alerts.iter().enumerate() {
            if !rule.above.is_finite() || rule.above < 0.0 {
                fail(&format!("alerts[{i}].above"), format!("{} is not a threshold (a number from 0 up)", rule.above));
            }
        }
        for (i, sink) in self.log_sinks.iter().enumerate() {
            if let Err(why) = crate::Output::parse_logs(sink) {
                fail(&format!("log_sinks[{i}]"), why);
            }
        }
        let up = &self.upgrade;
        if up.healthy_deadline.0 == 0 {
            fail("upgrade.healthy_deadline", "must be more than 0".into());
        } else if up.min_healthy_time >= up.healthy_deadline {
            fail(
                "upgrade.min_healthy_time",
                format!(
                    "{} is not shorter than healthy_deadline ({}): no instance could ever count as healthy",
                    up.min_healthy_time, up.healthy_deadline
                ),
            );
        }
        if up.progress_deadline < Dur::secs(1) {
            fail("upgrade.progress_deadline", "must be at least 1s".into());
        }
        if self.pids == 0 {
            fail("pids", "must be at least 1".into());
        }
        if errors.is_empty() { Ok(()) } else { Err(SpecErrors(errors)) }
    }

    /// How many ports an instance can be reached on: the listed ones, and at least `PORT` for exec.
    pub fn reachable_ports(&self) -> usize {
        if self.driver == Some(DriverKind::Exec) { self.ports.len().max(1) } else { self.ports.len() }
    }

    /// Things that are allowed but probably not meant, for the CLI to print.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for service in &self.services {
            if let Some(port) = AppSpec::service_port(service, &self.ports)
                && !self.ports.contains(&port)
                && self.network == NetworkMode::Bridge
            {
                out.push(format!(
                        "services: `{service}` names port {port}, which is not in `ports`: it is not published in bridge mode"
                    ));
            }
        }
        out
    }

    /// The container port a service name routes to: its explicit port, else the first port.
    pub fn service_port(service: &str, ports: &[u16]) -> Option<u16> {
        match service.rsplit_once(':') {
            Some((_, port)) => port.parse().ok(),
            None => ports.first().copied(),
        }
    }
}

/// A DNS label: what group, app and pool names must be.
pub fn check_label(value: &str) -> Result<(), String> {
    let ok_chars = value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if value.is_empty() {
        Err("must not be empty".into())
    } else if value.len() > 63 {
        Err(format!("`{value}` is longer than 63 characters"))
    } else if !ok_chars || value.starts_with('-') || value.ends_with('-') {
        Err(format!("`{value}` must be lowercase letters, digits and inner dashes"))
    } else {
        Ok(())
    }
}

/// One string execve(2) takes: the kernel's MAX_ARG_STRLEN, its terminating NUL included.
const MAX_EXEC_STRING: usize = 128 * 1024;
/// Everything a process is started with; the kernel allows a quarter of the stack limit (2 MiB
/// under the usual 8 MiB), and the runtime adds its own variables.
const MAX_EXEC_TOTAL: usize = 1024 * 1024;

fn check_exec_string(text: &str) -> Result<(), String> {
    if let Some(at) = text.find('\0') {
        return Err(format!("contains a NUL byte (at byte {at}), which no process can be given"));
    }
    if text.len() + 1 > MAX_EXEC_STRING {
        return Err(format!("is {} KiB; one string passed to a process may be at most 128 KiB", text.len() / 1024));
    }
    Ok(())
}

/// `[registry[:port]/]path[:tag][@digest]`, as the Docker reference grammar has it: printable
/// ASCII, no empty or dot-led path component (so no `..`), lower-case path, a tag of at most 128.
fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("it is empty".into());
    }
    if let Some(c) = image.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{} is not allowed",
            if c == '\0' { "a NUL byte".into() } else { format!("`{}`", c.escape_debug()) }
        ));
    }
    if image.len() > 4096 {
        return Err("it is longer than 4096 characters".into());
    }
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let ok = d.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty() && hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !ok {
            return Err(format!("digest `{d}` is not ALGORITHM:HEX"));
        }
    }
    // A `:` after the last `/` starts the tag; one before it is a registry port.
    let (path, tag) = match name.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, Some(t)),
        _ => (name, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && !t.starts_with(['.', '-'])
            && t.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Err(format!("tag `{t}` is not a tag"));
        }
    }
    let parts: Vec<&str> = path.split('/').collect();
    let registry = parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost");
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err("it has an empty path component".into());
        }
        if i == 0 && registry {
            if !part.chars().all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c)) || part.starts_with(['.', '-']) {
                return Err(format!("registry `{part}` is not a host name"));
            }
            continue;
        }
        let ok = part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(format!(
                "path component `{part}` must be lower-case letters and digits, separated by . _ or -"
            ));
        }
    }
    Ok(())
}

fn check_service(service: &str, reachable_ports: usize) -> Result<(), String> {
    let (host, port) = match service.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (service, None),
    };
    let host_ok = !host.is_empty()
        && host
            .split('.')
            .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*'));
    if !host_ok {
        return Err(format!("`{service}` is not a host name"));
    }
    match port {
        Some(port) => match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(()),
            _ => Err(format!("`{service}`: `{port}` is not a port")),
        },
        None if reachable_ports == 0 => Err(format!("`{service}` needs a port in `ports` to route to")),
        None => Ok(()),
    }
}

/// The block a nested app key belongs under, when written at the top.
fn nested_parent(key: &str) -> Option<&'static str> {
    match key {
        "http" | "tcp" | "interval" | "timeout" | "grace" | "max_failures" | "port_index" => Some("health"),
        "strategy"
        | "min_health_capacity"
        | "max_over_capacity"
        | "min_healthy_time"
        | "healthy_deadline"
        | "progress_deadline"
        | "auto_rollback"
        | "rollback_window" => Some("upgrade"),
        _ => None,
    }
}

/// Places errors found by validation (which knows fields, not lines) in the text.
pub(crate) fn located(mut errors: SpecErrors, text: &str, file: Option<&str>) -> SpecErrors {
    let places = key_locations(text);
    for e in &mut errors.0 {
        e.file = file.map(str::to_string);
        if let Some((line, col)) = locate(&places, &e.field) {
            e.line = Some(line);
            e.column = Some(col);
        }
    }
    errors
}

/// Reads a spec document of any kind with every mistake located: the file, line, column, key,
/// and the closest valid key. `parent_of` names the block a key belongs under when it was
/// written at the top (it lost its indentation).
pub(crate) fn read_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: Option<&str>,
    parent_of: fn(&str) -> Option<&'static str>,
) -> Result<T, SpecErrors> {
    // Read whole first, every alias followed: a document past the limits (an alias bomb,
    // deep nesting) is refused for that alone, before anything is read twice.
    if let Err(e) = serde_saphyr::from_str_with_options::<serde_json::Value>(text, yaml_options())
        && past_limit(&e)
    {
        let mut error = yaml_error(&e, file);
        error.message = format!(
            "the document is past what a spec may take (50,000 values once aliases are followed, 1,000 aliases, 32 levels of nesting): {}",
            error.message
        );
        return Err(SpecErrors(vec![error]));
    }
    // Every mistake at once: after an error, the lines it is about are blanked (line numbers
    // stay) and the rest is read again, until the text parses or nothing more can be set aside.
    let mut working: Vec<String> = text.lines().map(str::to_string).collect();
    let mut found: Vec<SpecError> = Vec::new();
    let mut blanked: Vec<String> = Vec::new();
    let parsed = loop {
        let current = working.join("\n");
        match serde_saphyr::from_str_with_options::<T>(&current, yaml_options()) {
            Ok(spec) => break Some(spec),
            Err(e) => {
                let places = key_locations(&current);
                let mut error = yaml_error(&e, file);
                if error.field.is_empty() {
                    error.field = key_at(&places, error.line, error.column).unwrap_or_default();
                } else if let Some(path) = full_path(&places, &error.field, error.line) {
                    // `http` under a mis-indented block is named by where it is: `health.http`.
                    error.field = path;
                }
                if error.message == "unknown key"
                    && error.suggestion.is_none()
                    && !error.field.contains('.')
                    && let Some(parent) = parent_of(&error.field)
                {
                    // A nested key written at the top: it lost its indentation.
                    error.message = format!("unknown key here; `{}` belongs under `{parent}:`, indented", error.field);
                }
                if error.message.starts_with("expected a") {
                    // `memory: 64MB`: numbers carry their unit in the key's meaning.
                    let unit = match error.field.as_str() {
                        "memory" => Some("memory is in MiB, written as a bare number: memory: 64"),
                        "cpu" => Some("cpu is in cores, written as a bare number: cpu: 0.5"),
                        _ => None,
                    };
                    if let Some(unit) = unit {
                        error.message = format!("{}; {unit}", error.message);
                    }
                }
                // A key set aside because of an earlier error is not also "missing".
                let echo = error.message == "required key is missing" && blanked.contains(&error.field);
                let line = error.line.map(|l| l as usize).filter(|l| *l >= 1 && *l <= working.len());
                if !echo {
                    found.push(error.clone());
                }
                let Some(line) = line.filter(|_| found.len() < MAX_ERRORS && !echo) else { break None };
                let key = working[line - 1].trim_start().split(':').next().unwrap_or_default().trim().to_string();
                blanked.push(if error.field.is_empty() { key } else { error.field.clone() });
                blank_block(&mut working, line - 1);
            }
        }
    };
    match parsed {
        Some(spec) if found.is_empty() => Ok(spec),
        _ => Err(SpecErrors(found)),
    }
}

/// Most errors one file reports: past this, fix some and look again.
const MAX_ERRORS: usize = 20;

/// Whether reading stopped at one of `yaml_options`' limits (under the alias or snippet that
/// led there).
fn past_limit(mut e: &serde_saphyr::Error) -> bool {
    use serde_saphyr::Error;
    while let Error::AliasError { error, .. } | Error::WithSnippet { error, .. } = e {
        e = error;
    }
    matches!(
        e,
        Error::Budget { .. } | Error::AliasReplayLimitExceeded { .. } | Error::AliasExpansionLimitExceeded { .. }
    )
}

/// What a spec may take to read: far more than any real spec needs, and little enough that an
/// alias bomb or a deeply nested document is refused quickly, saying which limit it passed.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = 100_000;
    budget.max_nodes = 50_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_recorded_anchor_events = 100_000;
    budget.max_recorded_anchor_bytes = 4 << 20;
    budget.max_depth = 32;
    budget.flow_nesting_limit = 32;
    budget.max_documents = 1;
    budget.max_total_scalar_bytes = 4 << 20;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Blanks line `at` (0-based) and the lines under it that are indented deeper: the key and its
/// whole value. A parent left with nothing under it goes too, or its empty value would be read
/// as a second mistake (`upgrade:` with no keys is not a mapping).
pub(crate) fn blank_block(lines: &mut [String], at: usize) {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let is_text = |l: &str| !l.trim().is_empty() && !l.trim_start().starts_with('#');
    let base = indent(&lines[at]);
    lines[at].clear();
    for l in lines.iter_mut().skip(at + 1) {
        if !is_text(l) {
            continue;
        }
        if indent(l) <= base {
            break;
        }
        l.clear();
    }
    if base == 0 {
        return;
    }
    let Some(parent) = (0..at).rev().find(|&i| is_text(&lines[i]) && indent(&lines[i]) < base) else { return };
    let opens_block = lines[parent].trim_end().ends_with(':');
    let parent_indent = indent(&lines[parent]);
    let children_left =
        lines.iter().skip(parent + 1).filter(|l| is_text(l)).take_while(|l| indent(l) > parent_indent).next().is_some();
    if opens_block && !children_left {
        blank_block(lines, parent);
    }
}

/// The dotted path of the key `name` written on `line`, when it is nested.
fn full_path(places: &[(String, u64, u64)], name: &str, line: Option<u64>) -> Option<String> {
    let line = line?;
    places
        .iter()
        .find(|(path, l, _)| *l == line && (path == name || path.ends_with(&format!(".{name}"))))
        .map(|(path, _, _)| path.clone())
}

fn yaml_error(e: &serde_saphyr::Error, file: Option<&str>) -> SpecError {
    let location = e.location();
    let (field, message, suggestion) = match e.without_snippet() {
        serde_saphyr::Error::SerdeUnknownField { field, expected, .. } => {
            let suggestion = closest(field, expected).map(str::to_string);
            (field.clone(), "unknown key".to_string(), suggestion)
        }
        serde_saphyr::Error::SerdeMissingField { field, .. } => {
            (field.to_string(), "required key is missing".to_string(), None)
        }
        serde_saphyr::Error::Message { msg, .. } => (String::new(), plain_words(&first_line(msg)), None),
        other => (String::new(), plain_words(&first_line(&other.to_string())), None),
    };
    let (message, suggestion) = explain(message, suggestion);
    SpecError {
        file: file.map(str::to_string),
        line: location.as_ref().map(|l| l.line()).filter(|l| *l > 0),
        column: location.as_ref().map(|l| l.column()).filter(|c| *c > 0),
        field,
        message,
        suggestion,
    }
}

/// The parser's words for the common YAML traps, in the writer's terms, with what to do.
fn explain(message: String, suggestion: Option<String>) -> (String, Option<String>) {
    if message.starts_with("mapping values are not allowed") {
        return (
            "a `: ` inside a value starts a new key; quote the value, e.g. command: \"echo 'a: b'\"".into(),
            suggestion,
        );
    }
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest).trim();
        return (format!("`{key}` is written twice in the same block; keep one"), suggestion);
    }
    // `unknown variant `exce`, expected one of docker, exec`: a did-you-mean.
    if let Some(rest) = message.strip_prefix("unknown variant `")
        && let Some((written, expected)) = rest.split_once("`, expected one of ")
    {
        let options: Vec<&str> = expected.split(',').map(|o| o.trim().trim_matches('`')).collect();
        let close = closest(written, &options).map(str::to_string);
        return (format!("`{written}` is not one of {}", options.join(", ")), close.or(suggestion));
    }
    (message, suggestion)
}

/// Rust type names mean nothing to the person writing YAML.
fn plain_words(message: &str) -> String {
    match message {
        "invalid u8" | "invalid u16" | "invalid u32" | "invalid u64" | "invalid usize" => {
            "expected a whole number, 0 or more".into()
        }
        "invalid i32" | "invalid i64" => "expected a whole number".into(),
        "invalid f64" | "invalid f32" => "expected a number".into(),
        other => other.to_string(),
    }
}

/// The library's message without the place, which we print ourselves in one format.
fn first_line(message: &str) -> String {
    let mut line = message.lines().next().unwrap_or(message).trim();
    line = line.strip_prefix("error: ").unwrap_or(line);
    if let Some(rest) = line.strip_prefix("line ")
        && let Some((_, after)) = rest.split_once(": ")
    {
        line = after;
    }
    match line.find(" at line ") {
        Some(i) => line[..i].to_string(),
        None => line.to_string(),
    }
}

/// The valid key nearest to what was written, if it is near enough to be a typo.
pub fn closest<'a>(written: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let written = written.to_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(&written, &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= (c.len().max(written.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Where each key of the document sits, as `(dotted.path, line, column)`.
pub(crate) fn key_locations(text: &str) -> Vec<(String, u64, u64)> {
    #[derive(Default)]
    struct Tree(Vec<(String, u64, u64)>);
    impl<'de> Deserialize<'de> for Tree {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct TreeVisitor;
            impl<'de> Visitor<'de> for TreeVisitor {
                type Value = Tree;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("any YAML")
                }
                fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
                    let mut out = Vec::new();
                    while let Some(key) = map.next_key::<serde_saphyr::Spanned<String>>()? {
                        let at = key.referenced;
                        out.push((key.value.clone(), at.line(), at.column()));
                        let inner: Tree = map.next_value()?;
                        out.extend(inner.0.into_iter().map(|(k, l, c)| (format!("{}.{k}", key.value), l, c)));
                    }
                    Ok(Tree(out))
                }
                fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
                    while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                    Ok(Tree::default())
                }
                fn visit_bool<E>(self, _: bool) -> Result<Tree, E> {
                    Ok(Tree::default())
                }
                fn visit_i64<E>(self, _: i64) -> Result<Tree, E> {
                    Ok(Tree::default())
                }
                fn visit_u64<E>(self, _: u64) -> Result<Tree, E> {
                    Ok(Tree::default())
                }
                fn visit_f64<E>(self, _: f64) -> Result<Tree, E> {
                    Ok(Tree::default())
                }
                fn visit_str<E>(self, _: &str) -> Result<Tree, E> {
                    Ok(Tree::default())
                }
                fn visit_unit<E>(self) -> Result<Tree, E> {
                    Ok(Tree::default())
                }
                fn visit_none<E>(self) -> Result<Tree, E> {
                    Ok(Tree::default())
                }
            }
            d.deserialize_any(TreeVisitor)
        }
    }
    serde_saphyr::from_str_with_options::<Tree>(text, yaml_options()).map(|t| t.0).unwrap_or_default()
}

/// The deepest key written on `line` left of `column`: the key whose value is at fault.
fn key_at(places: &[(String, u64, u64)], line: Option<u64>, column: Option<u64>) -> Option<String> {
    let (line, column) = (line?, column.unwrap_or(u64::MAX));
    places
        .iter()
        .filter(|(_, l, c)| *l == line && *c < column)
        .max_by_key(|(_, _, c)| *c)
        .map(|(key, _, _)| key.clone())
}

/// The location of `field`, or of its nearest written parent.
fn locate(places: &[(String, u64, u64)], field: &str) -> Option<(u64, u64)> {
    let mut path = field;
    loop {
        if let Some((_, l, c)) = places.iter().find(|(k, _, _)| k == path) {
            return Some((*l, *c));
        }
        // `services[1]`: list entries are not located, their key is.
        path = match path.strip_suffix(']').and_then(|p| p.rsplit_once('[')) {
            Some((parent, _)) => parent,
            None => path.rsplit_once('.')?.0,
        };
    }
}

/// A commented starter spec, as `berth init` writes it.
pub fn starter(group: &str, name: &str) -> String {
    format!(
        r#"# Berth app spec. `berth validate` checks it; `berth deploy` runs it.
# required
group: {group}          # business group the app belongs to
name: {name}            # unique within the group: lowercase, digits, dashes
image: nginx            # container image (or `driver: exec` with a `command`)
# optional
instances: 1            # how many copies to run
cpu: 0.1                # cores, fractions allowed
memory: 64              # MiB; the instance is OOM-killed above it
network: bridge         # bridge | host | none
# command: /bin/sh -c 'exec my-server'   # a string runs under /bin/sh -c; a list is exec'd as is
ports:
  - 80                  # container ports; the first is the instance's address
environment:
  APP_ENV: production
# zones: [default]               # router zones that publish the app
# services: [{name}.example.com] # host names the router serves it under
# constraints: [hostname:UNIQUE] # at most one instance per node; also CLUSTER, GROUP_BY, LIKE,
#                                # UNLIKE, MAX_PER on hostname or any agent --label (rack:GROUP_BY)
# placement: spread              # or binpack: fill the fullest node that fits first
# balance: round_robin           # or least_conn, hash:header:X-User, hash:cookie:session, hash:ip
# slow_start: 5s                 # a new instance ramps up to its full share of requests (0s: off)
# max_disconnect: 0s             # keep instances of a node cut off this long before replacing them
health:
  http: /               # or `tcp: true`
  interval: 10s
  timeout: 2s
  grace: 30s
  max_failures: 3
upgrade:
  min_health_capacity: 1.0   # fraction that must stay healthy while upgrading
  max_over_capacity: 1.0     # fraction that may run on top while upgrading
  min_healthy_time: 10s      # healthy this long before a new instance takes traffic
  healthy_deadline: 5m       # not healthy by then: the instance counts as failed
  progress_deadline: 10m     # no instance turned healthy for this long: the deployment fails
  auto_rollback: true        # a failed deployment goes back to the last healthy version
  # strategy: blue-green     # full new set, then one atomic switch (rolling by default)
  # rollback_window: 10m     # blue-green: keep the old set this long for an instant rollback
# drain_timeout: 30s         # a stopping instance finishes its in-flight requests, up to this long
# stop_timeout: 10s          # then SIGTERM, and SIGKILL after this
# log_sinks: [syslog+tcp://127.0.0.1:514, http://127.0.0.1:9880/logs]   # forward logs there too
# alerts:                      # cpu, memory (% of limit), restarts, 5xx_rate (%), latency (ms)
#   - {{metric: cpu, above: 80, for: 1m}}
# alert_webhooks: [http://chat.example.com/hooks/berth]   # or alertmanager+http://HOST:9093
"#
    )
}

#[cfg(test)]
mod tests;
