//! Bad nodes leave by themselves: a node where instances of two or more apps keep failing while
//! the same apps run healthy on other nodes is put aside (made ineligible and drained), with
//! the reason. One app failing everywhere is that app's fault, not the node's; one app failing
//! on one node may be its own bad luck; several healthy-elsewhere apps failing on one node is
//! the node.

use std::collections::{BTreeMap, HashMap, HashSet};

use berth_core::{Instance, InstanceState, Millis, Node, NodeStatus, Reason};

#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Failures older than this are forgiven.
    pub window_ms: i64,
    /// Failures of one app on the node that count it as failing there.
    pub failures_per_app: usize,
    /// Apps failing there (and healthy elsewhere) that make the node bad.
    pub apps: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { window_ms: 10 * 60_000, failures_per_app: 3, apps: 2 }
    }
}

/// A node to put aside, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub node: String,
    /// Each app failing there, with its failures in the window.
    pub apps: BTreeMap<String, usize>,
}

impl Verdict {
    pub fn why(&self, rules: &Rules) -> String {
        let each: Vec<String> = self.apps.iter().map(|(app, n)| format!("{app} {n} times")).collect();
        format!(
            "instances of {} apps failed here within {} min while running healthy on other nodes: {}",
            self.apps.len(),
            rules.window_ms / 60_000,
            each.join(", ")
        )
    }
}

/// Whether a failure says something about the node it ran on (a lost node or a stop does not).
fn counts(inst: &Instance) -> bool {
    inst.state == InstanceState::Failed && !matches!(inst.observed.cause, Some(Reason::NodeLost { .. }))
}

/// The nodes to put aside now. A node already quarantined, not ready or not eligible is left as
/// it is; failures from before a node's last release from quarantine are forgiven.
pub fn bad_nodes<'a>(
    nodes: &[Node],
    instances: impl IntoIterator<Item = &'a Instance>,
    now: Millis,
    rules: &Rules,
) -> Vec<Verdict> {
    let mut healthy_on: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut failures: HashMap<(&str, &str), usize> = HashMap::new();
    let forgiven: HashMap<&str, Millis> =
        nodes.iter().filter_map(|n| Some((n.id.as_str(), n.quarantine.as_ref()?.released_at?))).collect();
    for inst in instances {
        if inst.state.is_live() && inst.is_ready() {
            healthy_on.entry(inst.app.as_str()).or_default().insert(inst.node.as_str());
        } else if counts(inst) {
            let at = inst.observed.finished_at.unwrap_or(inst.created_at);
            let since = forgiven.get(inst.node.as_str()).copied().unwrap_or(Millis::MIN);
            if now - at <= rules.window_ms && at > since {
                *failures.entry((inst.node.as_str(), inst.app.as_str())).or_default() += 1;
            }
        }
    }
    let mut out = Vec::new();
    for node in nodes.iter().filter(|n| n.status == NodeStatus::Ready && n.can_be_quarantined()) {
        let apps: BTreeMap<String, usize> = failures
            .iter()
            .filter(|((n, _), count)| *n == node.id && **count >= rules.failures_per_app)
            .filter(|((_, app), _)| healthy_on.get(app).is_some_and(|on| on.iter().any(|other| *other != node.id)))
            .map(|((_, app), count)| (app.to_string(), *count))
            .collect();
        if apps.len() >= rules.apps {
            out.push(Verdict { node: node.id.clone(), apps });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::tests::node;
    use berth_core::Quarantine;

    fn inst(id: &str, app: &str, node: &str, state: InstanceState, at: Millis) -> Instance {
        let mut i = crate::reconcile::tests::inst(id, 1, state);
        (i.app, i.node, i.observed.finished_at) = (app.into(), node.into(), Some(at));
        i
    }

    /// `per_app` failures of each of `apps` on `bad`, each app running healthy on `good`.
    fn cluster(apps: &[&str], per_app: usize) -> Vec<Instance> {
        let mut out = Vec::new();
        for app in apps {
            out.push(inst(&format!("{app}-ok"), app, "good", InstanceState::Running, 0));
            for k in 0..per_app {
                out.push(inst(&format!("{app}-{k}"), app, "bad", InstanceState::Failed, 50_000 + k as i64));
            }
        }
        out
    }

    #[test]
    fn two_apps_failing_on_one_node_and_healthy_elsewhere_put_it_aside() {
        let nodes = [node("good"), node("bad")];
        let found = bad_nodes(&nodes, &cluster(&["a", "b"], 3), 60_000, &Rules::default());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].node, "bad");
        let why = found[0].why(&Rules::default());
        assert!(why.contains("a 3 times, b 3 times") && why.contains("2 apps"), "{why}");
    }

    #[test]
    fn one_app_or_too_few_failures_or_old_ones_are_not_the_node() {
        let nodes = [node("good"), node("bad")];
        let rules = Rules::default();
        assert!(bad_nodes(&nodes, &cluster(&["a"], 9), 60_000, &rules).is_empty(), "one app is the app");
        assert!(bad_nodes(&nodes, &cluster(&["a", "b"], 2), 60_000, &rules).is_empty(), "two failures each");
        let late = 50_000 + rules.window_ms + 10;
        assert!(bad_nodes(&nodes, &cluster(&["a", "b"], 3), late, &rules).is_empty(), "forgiven with time");
    }

    #[test]
    fn apps_failing_everywhere_are_their_own_fault() {
        let nodes = [node("good"), node("bad")];
        let mut all = cluster(&["a", "b"], 3);
        all.retain(|i| i.node == "bad");
        assert!(bad_nodes(&nodes, &all, 60_000, &Rules::default()).is_empty());
    }

    #[test]
    fn a_released_node_is_judged_on_what_failed_since() {
        let mut bad = node("bad");
        bad.quarantine = Some(Quarantine { at: 40_000, why: "x".into(), released_at: Some(55_000) });
        let nodes = [node("good"), bad];
        assert!(bad_nodes(&nodes, &cluster(&["a", "b"], 3), 60_000, &Rules::default()).is_empty());
        bad = node("bad");
        bad.quarantine = Some(Quarantine { at: 40_000, why: "x".into(), released_at: None });
        let nodes = [node("good"), bad];
        assert!(bad_nodes(&nodes, &cluster(&["a", "b"], 3), 60_000, &Rules::default()).is_empty(), "already aside");
    }
}
