//! Marathon's placement constraints, on any node attribute: `hostname`, or any of the agent's
//! `--label`s. Pure: whether one more instance of an app may go to a node, given where the app's
//! instances are now.
//!
//! - `UNIQUE`: at most one instance per value of the attribute.
//! - `CLUSTER:v`: only where the attribute is `v`; `CLUSTER` alone: wherever the app's first
//!   instance went (it pins the value).
//! - `GROUP_BY[:n]`: spread evenly over the attribute's values (`n` of them expected): among the
//!   nodes that can take the instance, those whose value holds the fewest instances qualify (a
//!   value whose nodes are all full does not hold the others back).
//! - `LIKE:re` / `UNLIKE:re`: the value matches (does not match) the regex, whole.
//! - `MAX_PER:n`: at most `n` instances per value.
//!
//! A node without the attribute fails every operator but `UNLIKE`, as in Marathon.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;

use berth_core::Node;
use berth_core::spec::{Constraint, ConstraintOp};
use regex::Regex;

use crate::place::Usage;

/// A node's value of `field`.
pub fn attribute<'a>(node: &'a Node, field: &str) -> Option<&'a str> {
    match field {
        "hostname" => Some(node.hostname.as_str()),
        "pool" => Some(node.pool.as_str()),
        _ => node.labels.get(field).map(String::as_str),
    }
}

/// Where an app's instances are, counted per value of each attribute its constraints name, and
/// the values the nodes offer; with each regex compiled once.
pub struct Spread<'a> {
    constraints: &'a [Constraint],
    counts: FxHashMap<&'a str, FxHashMap<String, usize>>,
    values: FxHashMap<&'a str, BTreeSet<String>>,
    regexes: Vec<Option<Regex>>,
}

impl<'a> Spread<'a> {
    pub fn of(app: &str, constraints: &'a [Constraint], nodes: &[&Node], usage: &Usage) -> Self {
        let mut counts: FxHashMap<&str, FxHashMap<String, usize>> = FxHashMap::default();
        let mut values: FxHashMap<&str, BTreeSet<String>> = FxHashMap::default();
        let fields: BTreeSet<&str> = constraints.iter().map(|c| c.field.as_str()).collect();
        for field in fields {
            for node in nodes {
                let Some(value) = attribute(node, field) else { continue };
                values.entry(field).or_default().insert(value.to_string());
                let here = usage.get(&node.id).and_then(|u| u.per_app.get(app)).copied().unwrap_or(0);
                *counts.entry(field).or_default().entry(value.to_string()).or_default() += here;
            }
        }
        // Checked when the spec was read: a pattern that does not compile matches nothing.
        let regexes = constraints
            .iter()
            .map(|c| match c.op {
                ConstraintOp::Like | ConstraintOp::Unlike => {
                    c.value.as_deref().and_then(|v| Regex::new(&format!("^(?:{v})$")).ok())
                }
                _ => None,
            })
            .collect();
        Spread { constraints, counts, values, regexes }
    }

    /// One more of the app's instances went to `node`.
    pub fn record(&mut self, node: &Node) {
        for (field, counts) in &mut self.counts {
            if let Some(value) = attribute(node, field) {
                // A value seen before (nearly always) costs no allocation.
                match counts.get_mut(value) {
                    Some(n) => *n += 1,
                    None => {
                        counts.insert(value.to_string(), 1);
                    }
                }
            }
        }
    }

    pub fn count(&self, field: &str, value: &str) -> usize {
        self.counts.get(field).and_then(|c| c.get(value)).copied().unwrap_or(0)
    }

    /// The first constraint the node fails, with what the node has, or `Ok` when it meets them
    /// all; `GROUP_BY` only checks that the node has the attribute (see `even`).
    pub fn check(&self, node: &Node) -> Result<(), (&'a Constraint, String)> {
        let values: Vec<Option<&str>> = self.values_of(node).collect();
        self.check_values(&values)
    }

    /// The node's value of each constraint's field, in the constraints' order: what
    /// `check_values` takes, so that a placer reads each node's attributes once per pass.
    pub fn values_of<'n>(&self, node: &'n Node) -> impl Iterator<Item = Option<&'n str>> + use<'n, 'a, '_> {
        self.constraints.iter().map(move |c| attribute(node, &c.field))
    }

    /// As `check`, for a node whose values are `values` (from `values_of`).
    pub fn check_values(&self, values: &[Option<&str>]) -> Result<(), (&'a Constraint, String)> {
        for ((c, regex), value) in self.constraints.iter().zip(&self.regexes).zip(values) {
            if let Err(found) = self.check_one(c, regex.as_ref(), *value) {
                return Err((c, found));
            }
        }
        Ok(())
    }

    fn check_one(&self, c: &Constraint, regex: Option<&Regex>, value: Option<&str>) -> Result<(), String> {
        let field = c.field.as_str();
        let Some(value) = value else {
            return if c.op == ConstraintOp::Unlike { Ok(()) } else { Err(format!("node has no {field}")) };
        };
        // Counted only for the operators that cap a value: the lookup is most of a check's cost.
        let here = || self.count(field, value);
        let number = || c.value.as_deref().and_then(|v| v.parse::<usize>().ok());
        match c.op {
            ConstraintOp::Unique if here() > 0 => Err(format!("{field} {value} already runs one")),
            ConstraintOp::MaxPer if here() >= number().unwrap_or(1) => {
                Err(format!("{field} {value} already runs {}", here()))
            }
            ConstraintOp::Cluster => match c.value.as_deref() {
                Some(wanted) if wanted != value => Err(format!("node has {field} {value}")),
                Some(_) => Ok(()),
                None => {
                    let pinned: Vec<&str> = self
                        .counts
                        .get(field)
                        .into_iter()
                        .flatten()
                        .filter(|(_, n)| **n > 0)
                        .map(|(v, _)| v.as_str())
                        .collect();
                    if pinned.is_empty() || pinned.contains(&value) {
                        Ok(())
                    } else {
                        Err(format!("node has {field} {value}; the app is pinned to {}", pinned.join(", ")))
                    }
                }
            },
            ConstraintOp::GroupBy => Ok(()),
            ConstraintOp::Like if !regex.is_some_and(|r| r.is_match(value)) => Err(format!("node has {field} {value}")),
            ConstraintOp::Unlike if regex.is_none_or(|r| r.is_match(value)) => Err(format!("node has {field} {value}")),
            _ => Ok(()),
        }
    }
}

impl Spread<'_> {
    pub fn has_group_by(&self) -> bool {
        self.constraints.iter().any(|c| c.op == ConstraintOp::GroupBy)
    }

    /// Some `GROUP_BY:n` expects more values than the nodes offer: the missing ones hold none, so
    /// `even` may refuse even a lone candidate.
    pub fn expects_missing_values(&self) -> bool {
        self.constraints.iter().filter(|c| c.op == ConstraintOp::GroupBy).any(|c| {
            let offered = self.values.get(c.field.as_str()).map_or(0, BTreeSet::len);
            c.value.as_deref().and_then(|v| v.parse::<usize>().ok()).is_some_and(|expected| expected > offered)
        })
    }

    /// `GROUP_BY`: of `candidates` (the nodes that can take the instance otherwise), the ones
    /// whose value holds the fewest of the app's instances; the others with why. Values expected
    /// (`GROUP_BY:n`) but offered by no node count as holding none.
    pub fn even<'n>(&self, candidates: &[&'n Node]) -> (Vec<&'n Node>, Vec<(&'n Node, &Constraint, String)>) {
        let mut kept: Vec<&Node> = candidates.to_vec();
        let mut refused = Vec::new();
        for c in self.constraints.iter().filter(|c| c.op == ConstraintOp::GroupBy) {
            let field = c.field.as_str();
            let offered = self.values.get(field).map_or(0, BTreeSet::len);
            let expected = c.value.as_deref().and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
            let floor = if expected > offered {
                0
            } else {
                kept.iter().filter_map(|n| attribute(n, field)).map(|v| self.count(field, v)).min().unwrap_or(0)
            };
            kept.retain(|n| {
                let value = attribute(n, field).unwrap_or_default();
                let here = self.count(field, value);
                if here > floor {
                    refused.push((*n, c, format!("{field} {value} runs {here}, another value runs {floor}")));
                }
                here <= floor
            });
        }
        (kept, refused)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use berth_core::Resources;
    use berth_core::spec::DriverKind;
    use proptest::prelude::*;

    use crate::place::NodeUsage;

    use super::*;

    fn node(id: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            id: id.into(),
            hostname: id.into(),
            address: "127.0.0.1".into(),
            resources: Resources { cpu: 64.0, memory: 1 << 20, ports: (30000, 39999) },
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            drivers: vec![DriverKind::Exec],
            status: berth_core::NodeStatus::Ready,
            registered_at: 0,
            last_heartbeat: 0,
            taken_ports: Default::default(),
            pool: berth_core::SHARED_POOL.into(),
            eligibility: Default::default(),
            drain: None,
            disconnected_at: None,
            quarantine: None,
            drivers_down: Default::default(),
        }
    }

    fn parse(text: &str) -> Vec<Constraint> {
        text.split(',').map(|c| Constraint::parse(c).unwrap()).collect()
    }

    fn running(per_node: &[(&str, usize)]) -> Usage {
        per_node
            .iter()
            .map(|(n, k)| {
                let mut u = NodeUsage::default();
                u.per_app.insert("g/web".into(), *k);
                (n.to_string(), u)
            })
            .collect()
    }

    fn allowed(constraints: &str, nodes: &[Node], usage: &Usage) -> Vec<String> {
        let cs = parse(constraints);
        let refs: Vec<&Node> = nodes.iter().collect();
        let spread = Spread::of("g/web", &cs, &refs, usage);
        let passing: Vec<&Node> = refs.iter().copied().filter(|n| spread.check(n).is_ok()).collect();
        spread.even(&passing).0.iter().map(|n| n.id.clone()).collect()
    }

    fn racks() -> Vec<Node> {
        vec![node("a", &[("rack", "r0")]), node("b", &[("rack", "r1")]), node("c", &[("rack", "r1")]), node("d", &[])]
    }

    #[test]
    fn every_operator_on_a_label() {
        let none = Usage::default();
        assert_eq!(allowed("rack:LIKE:r1", &racks(), &none), ["b", "c"]);
        assert_eq!(allowed("rack:UNLIKE:r1", &racks(), &none), ["a", "d"], "no rack at all passes UNLIKE");
        assert_eq!(allowed("rack:CLUSTER:r0", &racks(), &none), ["a"]);
        assert_eq!(allowed("rack:UNIQUE", &racks(), &running(&[("b", 1)])), ["a"], "r1 has one; d has no rack");
        assert_eq!(allowed("rack:MAX_PER:2", &racks(), &running(&[("b", 1), ("c", 1)])), ["a"]);
        assert_eq!(allowed("rack:MAX_PER:2", &racks(), &running(&[("b", 1)])), ["a", "b", "c"]);
        assert_eq!(allowed("hostname:UNIQUE", &racks(), &running(&[("a", 1)])), ["b", "c", "d"]);
        assert_eq!(allowed("hostname:LIKE:[ab]", &racks(), &none), ["a", "b"], "a whole match");
    }

    #[test]
    fn two_constraints_on_one_field_count_each_instance_once() {
        let usage = running(&[("b", 1)]);
        assert_eq!(allowed("rack:UNLIKE:r0,rack:MAX_PER:2", &racks(), &usage), ["b", "c"], "d has no rack for MAX_PER");
        assert_eq!(allowed("rack:UNLIKE:r0,rack:MAX_PER:1", &racks(), &usage), Vec::<String>::new());
    }

    #[test]
    fn group_by_is_not_held_back_by_a_value_with_no_room() {
        // r0's only node cannot take more (it is not a candidate): r1 keeps filling.
        let nodes = racks();
        let refs: Vec<&Node> = nodes.iter().collect();
        let cs = parse("rack:GROUP_BY");
        let usage = running(&[("a", 1), ("b", 1), ("c", 1)]);
        let spread = Spread::of("g/web", &cs, &refs, &usage);
        let (kept, refused) = spread.even(&[&nodes[1], &nodes[2]]);
        assert_eq!(kept.len(), 2, "{refused:?}");
    }

    #[test]
    fn cluster_without_a_value_pins_the_first_placement() {
        assert_eq!(allowed("rack:CLUSTER", &racks(), &Usage::default()), ["a", "b", "c"], "any rack first");
        assert_eq!(allowed("rack:CLUSTER", &racks(), &running(&[("c", 1)])), ["b", "c"], "then r1 only");
    }

    #[test]
    fn group_by_fills_the_emptiest_value_first() {
        assert_eq!(allowed("rack:GROUP_BY", &racks(), &running(&[("a", 1)])), ["b", "c"]);
        assert_eq!(allowed("rack:GROUP_BY", &racks(), &running(&[("a", 1), ("b", 1)])), ["a", "b", "c"]);
        // Three racks expected, two offered: the missing one holds none, so no rack qualifies
        // once both offered ones run one.
        assert_eq!(allowed("rack:GROUP_BY:3", &racks(), &running(&[("a", 1), ("b", 1)])), Vec::<String>::new());
    }

    proptest! {
        /// Placing one instance at a time, always on an allowed node: GROUP_BY keeps the racks
        /// within one of each other, UNIQUE never puts two on a rack, MAX_PER:n never n + 1.
        #[test]
        fn placements_keep_every_operator(racks in 1usize..5, nodes in 1usize..12, picks in proptest::collection::vec(0usize..1000, 1..30)) {
            let nodes: Vec<Node> = (0..nodes).map(|i| node(&format!("n{i}"), &[("rack", &format!("r{}", i % racks))])).collect();
            for constraints in ["rack:GROUP_BY", "rack:UNIQUE", "rack:MAX_PER:2"] {
                let mut usage: Usage = Usage::default();
                for pick in &picks {
                    let ok = allowed(constraints, &nodes, &usage);
                    if ok.is_empty() {
                        break;
                    }
                    let chosen = &ok[pick % ok.len()];
                    *usage.entry(chosen.clone()).or_default().per_app.entry("g/web".into()).or_default() += 1;
                }
                let mut per_rack = vec![0usize; racks];
                for (i, n) in nodes.iter().enumerate() {
                    per_rack[i % racks] += usage.get(&n.id).and_then(|u| u.per_app.get("g/web")).copied().unwrap_or(0);
                }
                let offered: Vec<usize> = (0..racks.min(nodes.len())).map(|r| per_rack[r]).collect();
                match constraints {
                    "rack:GROUP_BY" => prop_assert!(offered.iter().max().unwrap() - offered.iter().min().unwrap() <= 1, "{offered:?}"),
                    "rack:UNIQUE" => prop_assert!(offered.iter().all(|n| *n <= 1), "{offered:?}"),
                    _ => prop_assert!(offered.iter().all(|n| *n <= 2), "{offered:?}"),
                }
            }
        }
    }
}
