//! Why things end, as data: one description of a process's exit, shared by the agent that sees
//! it and the server that reports it, and the reasons an instance stops or fails. The records
//! keep the data (`cause`) beside the words people read (`reason`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Dur;
use crate::model::NoDriver;
use crate::spec::DriverKind;

/// Why an instance stopped, failed, or was stopped; `kind` names it for scripts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The app wants fewer instances.
    ScaledDown,
    /// A new version's instance takes its place.
    Replaced,
    /// Blue-green: the previous set is kept without traffic only for `rollback_window`.
    RollbackWindowOver,
    AppDestroyed,
    /// Its app is no longer in the store.
    AppGone,
    /// Never healthy within `healthy_deadline`.
    NotHealthyInTime {
        deadline: Dur,
    },
    RestartRequested,
    StopRequested,
    /// Told to stop while it was being started.
    StoppedBeforeStart,
    /// Its node stopped heartbeating (records from before nodes were told disconnected).
    NodeLost {
        node: String,
    },
    /// Its node was cut off and came back; a replacement placed meanwhile is in service.
    ReplacedWhileDisconnected {
        node: String,
    },
    /// Its node was cut off and came back with it in service before its replacement was.
    OriginalBack {
        node: String,
    },
    /// Its node is drained, and a replacement is in service elsewhere.
    NodeDrained {
        node: String,
    },
    /// Its node's drain reached its deadline before it could move.
    DrainDeadline {
        node: String,
    },
    /// It ended on its own.
    Exited(Exit),
    /// Another process on the node holds some of its host ports.
    PortsTaken {
        ports: Vec<u16>,
    },
    /// Its health check fails (while it starts, or now): the check's last result.
    HealthCheck {
        result: String,
    },
    /// It failed its health checks and was stopped.
    Unhealthy {
        result: String,
    },
    /// The runtime could not start it.
    StartFailed {
        error: String,
    },
    /// The node has no driver of this kind.
    NoDriver {
        driver: DriverKind,
    },
    /// A job's attempt ran past the job's `timeout`.
    TimedOut {
        timeout: Dur,
    },
    /// A job's run was stopped: replaced, destroyed, or on request.
    RunStopped {
        why: crate::job::RunReason,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::ScaledDown => f.write_str("scaled down"),
            Reason::Replaced => f.write_str("replaced by a new version"),
            Reason::RollbackWindowOver => f.write_str("blue-green rollback window over"),
            Reason::AppDestroyed => f.write_str("app destroyed"),
            Reason::AppGone => f.write_str("app no longer exists"),
            Reason::NotHealthyInTime { deadline } => write!(f, "not healthy within healthy_deadline ({deadline})"),
            Reason::RestartRequested => f.write_str("restarted on request"),
            Reason::StopRequested => f.write_str("stopped on request"),
            Reason::StoppedBeforeStart => f.write_str("stopped before it started"),
            Reason::NodeLost { node } => write!(f, "node {node} lost"),
            Reason::ReplacedWhileDisconnected { node } => {
                write!(f, "replaced while node {node} was disconnected, and the replacement is in service")
            }
            Reason::OriginalBack { node } => {
                write!(f, "node {node} is back, with the instance this one replaced in service")
            }
            Reason::NodeDrained { node } => write!(f, "moved off node {node}, which is draining"),
            Reason::DrainDeadline { node } => write!(f, "node {node}'s drain reached its deadline"),
            Reason::Exited(exit) => exit.fmt(f),
            Reason::PortsTaken { ports } => {
                let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                write!(f, "host port {} held by another process on this node", list.join(", "))
            }
            Reason::HealthCheck { result } => write!(f, "health check: {result}"),
            Reason::Unhealthy { result } | Reason::StartFailed { error: result } => f.write_str(result),
            Reason::NoDriver { driver } => write!(f, "this node has no {driver} driver"),
            Reason::TimedOut { timeout } => write!(f, "ran past its timeout ({timeout})"),
            Reason::RunStopped { why } => why.fmt(f),
        }
    }
}

/// How an instance's process or container ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub oom_killed: bool,
    /// Extra words from the runtime (a signal, an engine error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.oom_killed {
            return f.write_str("OOM-killed: over its memory limit");
        }
        match self.exit_code {
            // Shells and engines report death by signal N as 128 + N.
            Some(code) if (129..=192).contains(&code) && self.detail.is_none() => {
                write!(f, "exited with code {code} (signal {})", code - 128)?;
            }
            Some(code) => write!(f, "exited with code {code}")?,
            None => f.write_str("exited")?,
        }
        match &self.detail {
            Some(d) => write!(f, " ({d})"),
            None => Ok(()),
        }
    }
}

/// Why one node cannot take an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rejection {
    /// Silent past the node timeout.
    #[serde(alias = "node_down")]
    Disconnected,
    /// Its instances are being moved off.
    Draining,
    /// The engine behind the driver the app needs there stopped answering.
    DriverDown {
        driver: crate::spec::DriverKind,
    },
    /// An operator marked it ineligible for new instances.
    Ineligible,
    /// It is in a pool the app's group does not place in (`wanted`: the group's pools).
    Pool {
        pool: String,
        wanted: String,
    },
    NoDriver {
        why: NoDriver,
    },
    Cpu {
        free: f64,
        needed: f64,
    },
    /// MiB.
    Memory {
        free: u64,
        needed: u64,
    },
    /// A placement constraint the node does not meet, and what the node has.
    Constraint {
        constraint: String,
        found: String,
    },
    /// Host ports: how many are free in the node's range (`held` taken by other processes).
    Ports {
        free: usize,
        low: u16,
        high: u16,
        held: usize,
        needed: usize,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Disconnected => f.write_str("node is disconnected"),
            Rejection::Draining => f.write_str("node is draining"),
            Rejection::DriverDown { driver } => write!(f, "the node's {driver} engine does not answer"),
            Rejection::Ineligible => f.write_str("node is ineligible"),
            Rejection::Pool { pool, wanted } => write!(f, "in pool {pool}; the group places in {wanted}"),
            Rejection::NoDriver { why } => why.fmt(f),
            Rejection::Cpu { free, needed } => write!(f, "cpu: {free:.2} free, {needed} needed"),
            Rejection::Memory { free, needed } => write!(f, "memory: {free} MiB free, {needed} needed"),
            Rejection::Constraint { constraint, found } => write!(f, "{constraint}: {found}"),
            Rejection::Ports { free, low, high, held, needed } => {
                let held = if *held > 0 { format!(" ({held} held by other processes)") } else { String::new() };
                write!(f, "ports: {free} free in {low}-{high}{held}, {needed} needed")
            }
        }
    }
}

/// A node that cannot take an instance, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRejection {
    /// The node's hostname.
    pub node: String,
    #[serde(flatten)]
    pub why: Rejection,
}

impl fmt::Display for NodeRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.node, self.why)
    }
}

/// Why an instance cannot be placed anywhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Unplaceable {
    NoReadyNode,
    /// Every ready node refused: how many for each kind of reason, most first, and the first
    /// few nodes with their own words, so that 10,000 nodes do not make 10,000 lines.
    Refused {
        filtered: Vec<Filtered>,
        nodes: Vec<NodeRejection>,
    },
}

/// Nodes refused for one kind of reason: a resource, or one constraint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filtered {
    pub reason: String,
    pub nodes: usize,
}

/// Nodes kept as examples of a refusal.
const EXAMPLES: usize = 10;

impl Rejection {
    /// The kind of reason, for counting nodes: `memory`, or a constraint as written.
    pub fn class(&self) -> String {
        match self {
            Rejection::Disconnected => "node disconnected".into(),
            Rejection::Draining => "draining".into(),
            Rejection::DriverDown { driver } => format!("{driver} down"),
            Rejection::Ineligible => "ineligible".into(),
            Rejection::Pool { .. } => "pool".into(),
            Rejection::NoDriver { .. } => "driver".into(),
            Rejection::Cpu { .. } => "cpu".into(),
            Rejection::Memory { .. } => "memory".into(),
            Rejection::Constraint { constraint, .. } => constraint.clone(),
            Rejection::Ports { .. } => "ports".into(),
        }
    }
}

impl Unplaceable {
    /// Every node refused, each for its reason.
    pub fn refused(all: Vec<NodeRejection>) -> Unplaceable {
        let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
        for r in &all {
            *counts.entry(r.why.class()).or_default() += 1;
        }
        let mut filtered: Vec<Filtered> =
            counts.into_iter().map(|(reason, nodes)| Filtered { reason, nodes }).collect();
        filtered.sort_by(|a, b| b.nodes.cmp(&a.nodes).then_with(|| a.reason.cmp(&b.reason)));
        Unplaceable::Refused { filtered, nodes: all.into_iter().take(EXAMPLES).collect() }
    }

    /// For people: the node's own line when one refused, else one line per kind of reason.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Unplaceable::NoReadyNode => vec!["no ready node".into()],
            Unplaceable::Refused { filtered, nodes } if filtered.iter().map(|f| f.nodes).sum::<usize>() > 1 => filtered
                .iter()
                .map(|f| {
                    let s = if f.nodes == 1 { "" } else { "s" };
                    let example = nodes.iter().find(|n| n.why.class() == f.reason).map(|n| format!(" (e.g. {n})"));
                    format!("{} node{s} filtered by {}{}", f.nodes, f.reason, example.unwrap_or_default())
                })
                .collect(),
            Unplaceable::Refused { nodes, .. } => nodes.iter().map(ToString::to_string).collect(),
        }
    }
}

impl fmt::Display for Unplaceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("; "))
    }
}

/// Why instances an app wants are not placed yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Waiting {
    /// Its launches are slowed after failures in a row.
    Backoff { failures: u32, next_in_ms: i64 },
    /// No node can take one.
    Unplaceable { why: Unplaceable },
}

impl Waiting {
    /// Whether `other` says the same thing, countdowns aside: only a new kind of reason is news.
    pub fn same_news(&self, other: &Waiting) -> bool {
        match (self, other) {
            (Waiting::Backoff { failures: a, .. }, Waiting::Backoff { failures: b, .. }) => a == b,
            (Waiting::Unplaceable { why: a }, Waiting::Unplaceable { why: b }) => match (a, b) {
                (Unplaceable::Refused { filtered: a, .. }, Unplaceable::Refused { filtered: b, .. }) => a == b,
                (a, b) => a == b,
            },
            _ => false,
        }
    }
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Waiting::Backoff { failures, next_in_ms } => {
                write!(f, "launch backoff after {failures} failure(s): next try in {next_in_ms} ms")
            }
            Waiting::Unplaceable { why } => why.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_data_with_a_kind_and_words() {
        let lost = Reason::NodeLost { node: "n1".into() };
        assert_eq!(lost.to_string(), "node n1 lost");
        let json = serde_json::to_value(&lost).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "node_lost", "node": "n1"}));
        let exited = Reason::Exited(Exit { exit_code: Some(3), ..Default::default() });
        let json = serde_json::to_value(&exited).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "exited", "exit_code": 3, "oom_killed": false}));
        assert_eq!(serde_json::from_value::<Reason>(json).unwrap(), exited);
        assert_eq!(
            Reason::PortsTaken { ports: vec![80, 81] }.to_string(),
            "host port 80, 81 held by another process on this node"
        );
    }

    #[test]
    fn waiting_is_news_only_when_its_kind_changes() {
        let backoff = |failures, next_in_ms| Waiting::Backoff { failures, next_in_ms };
        assert!(backoff(2, 900).same_news(&backoff(2, 300)), "a countdown is not news");
        assert!(!backoff(2, 900).same_news(&backoff(3, 900)));
        let refused =
            |why| Waiting::Unplaceable { why: Unplaceable::refused(vec![NodeRejection { node: "h1".into(), why }]) };
        let memory = |free| refused(Rejection::Memory { free, needed: 512 });
        assert!(memory(100).same_news(&memory(200)));
        assert!(!memory(100).same_news(&refused(Rejection::Disconnected)));
        assert!(!memory(100).same_news(&backoff(1, 10)));
        assert_eq!(memory(100).to_string(), "h1: memory: 100 MiB free, 512 needed");
        let json = serde_json::to_value(memory(100)).unwrap();
        assert_eq!(
            json["why"]["nodes"][0],
            serde_json::json!({"node": "h1", "kind": "memory", "free": 100, "needed": 512})
        );
    }

    #[test]
    fn many_refusing_nodes_are_counted_by_reason() {
        let unique = |n: usize| NodeRejection {
            node: format!("h{n}"),
            why: Rejection::Constraint {
                constraint: "hostname:UNIQUE".into(),
                found: "hostname h already runs one".into(),
            },
        };
        let memory =
            |n: usize| NodeRejection { node: format!("m{n}"), why: Rejection::Memory { free: 10, needed: 64 } };
        let many = Unplaceable::refused((0..3).map(unique).chain((0..2).map(memory)).collect());
        let lines = many.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("3 nodes filtered by hostname:UNIQUE (e.g. h0: "), "{lines:?}");
        assert!(lines[1].starts_with("2 nodes filtered by memory"), "{lines:?}");
        let Unplaceable::Refused { filtered, nodes } = &many else { panic!("refused") };
        assert_eq!((filtered[0].nodes, nodes.len()), (3, 5));
        // 20,000 nodes keep ten examples and the counts.
        let huge = Unplaceable::refused((0..20_000).map(memory).collect());
        let Unplaceable::Refused { filtered, nodes } = &huge else { panic!("refused") };
        assert_eq!((filtered.len(), filtered[0].nodes, nodes.len()), (1, 20_000, 10));
        // A few nodes keep their own lines.
        assert_eq!(Unplaceable::refused(vec![memory(1)]).lines(), ["m1: memory: 10 MiB free, 64 needed"]);
    }

    #[test]
    fn an_exit_says_code_signal_or_oom() {
        let exit = |code, oom, detail: Option<&str>| {
            Exit { exit_code: code, oom_killed: oom, detail: detail.map(str::to_string) }.to_string()
        };
        assert_eq!(exit(Some(3), false, None), "exited with code 3");
        assert_eq!(exit(Some(137), false, None), "exited with code 137 (signal 9)");
        assert_eq!(exit(Some(137), true, None), "OOM-killed: over its memory limit");
        assert_eq!(exit(None, false, Some("adopted")), "exited (adopted)");
    }
}
