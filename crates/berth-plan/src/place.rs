//! Placement: which node runs a new instance. Feasibility filters record why each node was
//! rejected; ranking spreads an app's instances and then the load.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use rustc_hash::FxHashMap;

use berth_core::reason::{NodeRejection, Rejection, Unplaceable};
use berth_core::spec::{ConstraintOp, DriverKind, NetworkMode, PlacementStrategy};

use crate::constraints::{Spread, attribute};
use berth_core::{Allocation, AppSpec, Eligibility, Instance, Node, NodeStatus, Pools, SHARED_POOL};

/// A decided placement.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub node: String,
    pub host: String,
    pub driver: DriverKind,
    pub host_ports: Vec<u16>,
    /// On a node of the shared pool, borrowed because the app's own pools were full.
    pub borrowed: bool,
}

/// Usage of every node by node id. FxHash: the scheduler looks nodes up by id for every node it
/// weighs, and SipHash was a fifth of its time.
pub type Usage = FxHashMap<String, NodeUsage>;

/// Usage of one node by live instances, tracked while a plan places several instances.
#[derive(Debug, Clone, Default)]
pub struct NodeUsage {
    pub cpu: f64,
    pub memory: u64,
    ports: BTreeSet<u16>,
    /// From a start port, the first one not in `ports` (at or after it): kept up to date as
    /// ports are added, so finding free ports does not walk past every used one each time.
    first_free: std::cell::Cell<Option<(u16, u16)>>,
    /// Live instances per app on this node.
    pub per_app: FxHashMap<String, usize>,
}

impl NodeUsage {
    pub fn add(&mut self, app: &str, held: Allocation, host_ports: &[u16]) {
        self.cpu += held.cpu;
        self.memory += held.memory;
        self.add_ports(host_ports);
        *self.per_app.entry(app.to_string()).or_default() += 1;
    }

    pub fn add_ports(&mut self, ports: &[u16]) {
        self.ports.extend(ports.iter().copied());
        if let Some((from, mut next)) = self.first_free.get() {
            while self.ports.contains(&next) && next < u16::MAX {
                next += 1;
            }
            self.first_free.set(Some((from, next)));
        }
    }

    pub fn holds(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }

    /// The first port at or after `from` that no instance holds.
    fn first_free_from(&self, from: u16) -> u16 {
        if let Some((start, next)) = self.first_free.get()
            && start == from
        {
            return next;
        }
        let mut next = from;
        for p in self.ports.range(from..) {
            if *p != next {
                break;
            }
            next = next.saturating_add(1);
        }
        self.first_free.set(Some((from, next)));
        next
    }
}

/// Usage of every node by the given live instances: each at what it was placed with, or, placed
/// before that was recorded, at its app's spec looked up by app.
pub fn usage<'a>(
    instances: impl Iterator<Item = &'a Instance>,
    spec_of: impl Fn(&str) -> Option<&'a AppSpec>,
) -> Usage {
    let mut out = Usage::default();
    for inst in instances.filter(|i| i.state.is_live()) {
        let entry = out.entry(inst.node.clone()).or_default();
        match inst.allocated.or_else(|| spec_of(&inst.app).map(Allocation::of)) {
            Some(held) => entry.add(&inst.app, held, &inst.host_ports),
            None => entry.add_ports(&inst.host_ports),
        }
    }
    out
}

/// How many host ports an instance of `spec` needs on a node with `driver`.
pub fn ports_needed(spec: &AppSpec, driver: DriverKind) -> usize {
    match (driver, spec.network) {
        (_, NetworkMode::None) => 0,
        // A plain process always gets at least `PORT`.
        (DriverKind::Exec, _) => spec.ports.len().max(1),
        (DriverKind::Docker, _) => spec.ports.len(),
    }
}

/// Picks a node for one instance of `app`, or says why no node fits, node by node.
pub fn place(
    app: &str,
    spec: &AppSpec,
    nodes: &[&Node],
    usage: &Usage,
    pools: &Pools,
) -> Result<Placement, Unplaceable> {
    Placer::new(app, spec, nodes, usage, pools).place(usage)
}

/// Clusters up to this size are ranked whole; beyond it a placement ranks a sample.
const RANK_ALL_UP_TO: usize = 256;

/// Nodes of the app's own pools: tried first.
const OWN: usize = 0;
/// The shared pool, borrowed from when the app's own pools are full.
const BORROWED: usize = 1;
/// Nodes in pools the app may not use.
const OUTSIDE: usize = 2;

/// Places the instances one app needs in a pass, as Nomad's scheduler does: what its
/// constraints count is computed once and kept up to date, and in a large cluster a placement
/// ranks the first few feasible nodes from a point that moves on with every placement (about
/// twice log2 of the node count), instead of every node. GROUP_BY still weighs every node.
/// Nodes of the app's own pools come first; only when none of them fits does it borrow from the
/// shared pool. Deterministic: the same state and the same order of calls give the same
/// placements.
pub struct Placer<'a> {
    app: &'a str,
    spec: &'a AppSpec,
    nodes: &'a [&'a Node],
    spread: Spread<'a>,
    held: Allocation,
    cursor: usize,
    /// For one GROUP_BY: its field, and the nodes (by index) of the app's own pools offering
    /// each value.
    groups: Option<(&'a str, BTreeMap<&'a str, Vec<usize>>)>,
    /// Per tier (own pools, then borrowed), the nodes not yet refused, by index. Within a pass a
    /// refusal lasts: the app's placements only take room and add to the counts its constraints
    /// cap, so a refused node is not looked at again (a filling cluster does not slow every
    /// placement down).
    tiers: [Vec<usize>; 2],
    tier_of: Vec<usize>,
    refused: Vec<bool>,
    /// Each node's cpu for placement: what it has times its pool's over-subscription.
    cpu: Vec<f64>,
    /// The pools the app places in, for saying why the others were not used.
    own_pools: Vec<&'a str>,
    /// Each node's value of each constraint's field (node by node, constraints in order), read
    /// once: looking them up for every check was most of a constrained placement's cost.
    values: Vec<Option<&'a str>>,
}

impl<'a> Placer<'a> {
    pub fn new(app: &'a str, spec: &'a AppSpec, nodes: &'a [&'a Node], usage: &Usage, pools: &'a Pools) -> Self {
        let spread = Spread::of(app, &spec.constraints, nodes, usage);
        let (own_pools, borrow) = pools.of_group(&spec.group);
        let tier_of: Vec<usize> = nodes
            .iter()
            .map(|n| {
                if own_pools.contains(&n.pool.as_str()) {
                    OWN
                } else if borrow && n.pool == SHARED_POOL {
                    BORROWED
                } else {
                    OUTSIDE
                }
            })
            .collect();
        let group_bys: Vec<&str> =
            spec.constraints.iter().filter(|c| c.op == ConstraintOp::GroupBy).map(|c| c.field.as_str()).collect();
        let groups = match group_bys.as_slice() {
            [field] => {
                let mut by_value: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
                for (i, node) in nodes.iter().enumerate().filter(|(i, _)| tier_of[*i] == OWN) {
                    if let Some(value) = attribute(node, field) {
                        by_value.entry(value).or_default().push(i);
                    }
                }
                Some((*field, by_value))
            }
            _ => None,
        };
        let tier = |t: usize| (0..nodes.len()).filter(|i| tier_of[*i] == t).collect();
        let tiers = [tier(OWN), tier(BORROWED)];
        let refused = vec![false; nodes.len()];
        let cpu = nodes.iter().map(|n| n.resources.cpu * pools.cpu_factor(&n.pool)).collect();
        let values = nodes.iter().flat_map(|n| spread.values_of(n)).collect();
        Placer {
            app,
            spec,
            nodes,
            spread,
            held: Allocation::of(spec),
            cursor: 0,
            groups,
            tiers,
            tier_of,
            refused,
            cpu,
            own_pools,
            values,
        }
    }

    fn sample(&self) -> usize {
        let n = self.nodes.len();
        if n <= RANK_ALL_UP_TO || (self.spread.has_group_by() && self.groups.is_none()) {
            n
        } else {
            2 * (usize::BITS - n.leading_zeros()) as usize
        }
    }

    fn check(&self, i: usize, usage: &Usage) -> Result<DriverKind, Rejection> {
        let node = self.nodes[i];
        if self.tier_of[i] == OUTSIDE {
            return Err(Rejection::Pool { pool: node.pool.clone(), wanted: self.own_pools.join(",") });
        }
        let empty = NodeUsage::default();
        let used = usage.get(&node.id).unwrap_or(&empty);
        let k = self.spec.constraints.len();
        feasible(self.spec, node, self.cpu[i], used, (&self.spread, &self.values[i * k..(i + 1) * k]))
    }

    /// One GROUP_BY: feasible nodes of the emptiest values first (the fewest of the app's
    /// instances), so only the nodes of those values are looked at.
    fn group_candidates(&mut self, usage: &Usage, wanted: usize) -> Vec<(DriverKind, usize)> {
        let Some((field, mut by_value)) = self.groups.take() else { return Vec::new() };
        let mut values: Vec<(usize, &str)> = by_value.keys().map(|v| (self.spread.count(field, v), *v)).collect();
        values.sort_unstable();
        let mut found = Vec::new();
        let mut floor = None;
        let mut emptied = false;
        for (count, value) in values {
            if floor.is_some_and(|f| count > f) || found.len() >= wanted {
                break;
            }
            let Some(members) = by_value.get_mut(value) else { continue };
            if self.gather(members, usage, wanted, &mut found) > 0 {
                floor = Some(count);
            }
            emptied |= members.is_empty();
        }
        if emptied {
            by_value.retain(|_, members| !members.is_empty());
        }
        self.groups = Some((field, by_value));
        // GROUP_BY:n with fewer values offered than expected: the missing ones hold none.
        if self.spread.expects_missing_values() {
            found.retain(|(_, i)| self.spread.even(&[self.nodes[*i]]).1.is_empty());
        }
        found
    }

    /// Up to `wanted` feasible nodes of one tier, from the cursor on.
    fn scan(&mut self, tier: usize, usage: &Usage, wanted: usize) -> Vec<(DriverKind, usize)> {
        let mut candidates = Vec::with_capacity(wanted.min(64));
        let mut members = std::mem::take(&mut self.tiers[tier]);
        self.gather(&mut members, usage, wanted, &mut candidates);
        self.tiers[tier] = members;
        candidates
    }

    /// Feasible nodes of `members` (by index, from the cursor on) into `out` until it holds
    /// `wanted`; returns how many it added. The nodes it refuses are marked and dropped from
    /// `members`, only when there are some: a pass over every node is what a placement must
    /// not cost.
    fn gather(
        &mut self,
        members: &mut Vec<usize>,
        usage: &Usage,
        wanted: usize,
        out: &mut Vec<(DriverKind, usize)>,
    ) -> usize {
        let before = out.len();
        let mut any_refused = false;
        for k in 0..members.len() {
            if out.len() >= wanted {
                break;
            }
            let i = members[(self.cursor + k) % members.len()];
            match self.check(i, usage) {
                Ok(driver) => out.push((driver, i)),
                Err(_) => {
                    self.refused[i] = true;
                    any_refused = true;
                }
            }
        }
        if any_refused {
            members.retain(|i| !self.refused[*i]);
        }
        out.len() - before
    }

    /// A node for one more instance, given the nodes' use now (with the instances this placer
    /// already placed); or why none fits.
    pub fn place(&mut self, usage: &Usage) -> Result<Placement, Unplaceable> {
        let n = self.nodes.len();
        if n == 0 {
            return Err(Unplaceable::NoReadyNode);
        }
        let wanted = self.sample();
        for tier in [OWN, BORROWED] {
            let indexed = tier == OWN && self.groups.is_some();
            let mut candidates =
                if indexed { self.group_candidates(usage, wanted) } else { self.scan(tier, usage, wanted) };
            // GROUP_BY weighs the values of the nodes that have room, so it runs on the candidates.
            if self.spread.has_group_by() && !indexed {
                let fit: Vec<&Node> = candidates.iter().map(|(_, i)| self.nodes[*i]).collect();
                let out: HashSet<&str> = self.spread.even(&fit).1.iter().map(|(node, _, _)| node.id.as_str()).collect();
                candidates.retain(|(_, i)| !out.contains(self.nodes[*i].id.as_str()));
            }
            let best = candidates
                .into_iter()
                .map(|(driver, i)| {
                    let used = usage.get(&self.nodes[i].id);
                    (score(self.spec.placement, self.nodes[i], self.cpu[i], used, self.app, self.held), driver, i)
                })
                .min_by(|a, b| a.0.cmp(&b.0));
            if let Some((_, driver, i)) = best {
                let node = self.nodes[i];
                let empty = NodeUsage::default();
                let mut placement = placement(self.spec, node, driver, usage.get(&node.id).unwrap_or(&empty));
                self.spread.record(node);
                self.cursor = (self.cursor + 1) % n;
                placement.borrowed = tier == BORROWED;
                return Ok(placement);
            }
        }
        Err(self.why(usage))
    }

    /// Nothing fits: now say why, node by node (the only time the words are needed).
    fn why(&self, usage: &Usage) -> Unplaceable {
        let mut refused = Vec::new();
        let mut fit = Vec::new();
        for i in 0..self.nodes.len() {
            match self.check(i, usage) {
                Ok(_) => fit.push(self.nodes[i]),
                Err(why) => refused.push(NodeRejection { node: self.nodes[i].hostname.clone(), why }),
            }
        }
        for (node, c, found) in self.spread.even(&fit).1 {
            let why = Rejection::Constraint { constraint: c.to_string(), found };
            refused.push(NodeRejection { node: node.hostname.clone(), why });
        }
        Unplaceable::refused(refused)
    }
}

/// A feasible node's rank: lower is better. Ties go to the node id, so the same state always
/// gives the same choice.
type Score<'n> = (usize, i64, &'n str);

/// Spread: the fewest of the app's instances first, then the least loaded after placing.
/// Binpack: the most loaded after placing, so that whole nodes stay free.
fn score<'n>(
    strategy: PlacementStrategy,
    node: &'n Node,
    cpu: f64,
    used: Option<&NodeUsage>,
    app: &str,
    held: Allocation,
) -> Score<'n> {
    let (used_cpu, used_memory, mine) =
        used.map_or((0.0, 0, 0), |u| (u.cpu, u.memory, u.per_app.get(app).copied().unwrap_or(0)));
    let load = load_per_mille(cpu, node.resources.memory, used_cpu + held.cpu, used_memory + held.memory) as i64;
    match strategy {
        PlacementStrategy::Spread => (mine, load, node.id.as_str()),
        PlacementStrategy::Binpack => (0, -load, node.id.as_str()),
    }
}

/// Per mille of cpu plus per mille of memory in use, of what a node offers.
fn load_per_mille(cpu_capacity: f64, memory_capacity: u64, cpu: f64, memory: u64) -> u64 {
    let cpu = if cpu_capacity > 0.0 { cpu / cpu_capacity } else { 0.0 };
    let mem = if memory_capacity > 0 { memory as f64 / memory_capacity as f64 } else { 0.0 };
    ((cpu + mem) * 500.0) as u64
}

/// Whether `node` can take one more instance of `spec`, its cpu counted as `cpu`.
fn feasible(
    spec: &AppSpec,
    node: &Node,
    cpu: f64,
    used: &NodeUsage,
    (spread, values): (&Spread, &[Option<&str>]),
) -> Result<DriverKind, Rejection> {
    if node.status != NodeStatus::Ready {
        return Err(Rejection::Disconnected);
    }
    if node.is_draining() {
        return Err(Rejection::Draining);
    }
    if node.eligibility == Eligibility::Ineligible {
        return Err(Rejection::Ineligible);
    }
    let driver = node.driver_for(spec).map_err(|why| Rejection::NoDriver { why })?;
    if node.drivers_down.contains(&driver) {
        return Err(Rejection::DriverDown { driver });
    }
    let needed = spec.cpu.unwrap_or(0.0);
    if used.cpu + needed > cpu + 1e-9 {
        return Err(Rejection::Cpu { free: (cpu - used.cpu).max(0.0), needed });
    }
    let memory = spec.memory.unwrap_or(0);
    if used.memory + memory > node.resources.memory {
        return Err(Rejection::Memory { free: node.resources.memory.saturating_sub(used.memory), needed: memory });
    }
    if let Err((c, found)) = spread.check_values(values) {
        return Err(Rejection::Constraint { constraint: c.to_string(), found });
    }
    let wanted = ports_needed(spec, driver);
    let (low, high) = node.resources.ports;
    let free = |p: &u16| !used.holds(*p) && !node.taken_ports.contains(p);
    // Ports below the first free one are all in use: no need to look at them again.
    let start = used.first_free_from(low).max(low);
    // Counted, not collected: only the node chosen gets its ports (and its `Placement`).
    let found = (start..=high).filter(free).take(wanted).count();
    if found < wanted {
        let held = node.taken_ports.range(low..=high).count();
        return Err(Rejection::Ports { free: found, low, high, held, needed: wanted });
    }
    Ok(driver)
}

/// The placement of one instance of `spec` on a node `feasible` accepted with `driver`.
fn placement(spec: &AppSpec, node: &Node, driver: DriverKind, used: &NodeUsage) -> Placement {
    let (low, high) = node.resources.ports;
    let free = |p: &u16| !used.holds(*p) && !node.taken_ports.contains(p);
    let start = used.first_free_from(low).max(low);
    let host_ports = (start..=high).filter(free).take(ports_needed(spec, driver)).collect();
    Placement { node: node.id.clone(), host: node.address.clone(), driver, host_ports, borrowed: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::Resources;
    use std::collections::BTreeMap;

    /// Placement with no pools set: every node is in the shared pool.
    fn place(app: &str, spec: &AppSpec, nodes: &[&Node], usage: &Usage) -> Result<Placement, Unplaceable> {
        super::place(app, spec, nodes, usage, &Pools::default())
    }

    pub(super) fn node(id: &str, cpu: f64) -> Node {
        Node {
            id: id.into(),
            hostname: format!("host-{id}"),
            address: "127.0.0.1".into(),
            resources: Resources { cpu, memory: 1024, ports: (30000, 30009) },
            labels: BTreeMap::from([("rack".to_string(), format!("r-{id}"))]),
            drivers: vec![DriverKind::Docker, DriverKind::Exec],
            status: NodeStatus::Ready,
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

    fn spec(extra: &str) -> AppSpec {
        AppSpec::from_yaml(
            &format!("group: g\nname: web\nimage: i\nports: [80, 81]\ncpu: 0.5\nmemory: 100\n{extra}"),
            None,
        )
        .unwrap()
    }

    #[test]
    fn a_node_whose_engine_does_not_answer_takes_nothing_for_it() {
        let mut down = node("a", 4.0);
        down.drivers_down.insert(DriverKind::Docker);
        let up = node("b", 4.0);
        let placed = place("g/web", &spec(""), &[&down, &up], &Usage::default()).unwrap();
        assert_eq!(placed.node, "b");
        let why = place("g/web", &spec(""), &[&down], &Usage::default()).unwrap_err().to_string();
        assert!(why.contains("docker engine does not answer"), "{why}");
    }

    #[test]
    fn spreads_and_explains() {
        let (a, b) = (node("a", 1.0), node("b", 1.0));
        let nodes = [&a, &b];
        let s = spec("");
        let mut usage = Usage::default();
        let first = place("g/web", &s, &nodes, &usage).unwrap();
        usage.entry(first.node.clone()).or_insert_with(NodeUsage::default).add(
            "g/web",
            Allocation::of(&s),
            &first.host_ports,
        );
        let second = place("g/web", &s, &nodes, &usage).unwrap();
        assert_ne!(first.node, second.node, "spread across nodes");
        assert_eq!(first.host_ports, vec![30000, 30001]);
        usage.entry(second.node.clone()).or_insert_with(NodeUsage::default).add(
            "g/web",
            Allocation::of(&s),
            &second.host_ports,
        );
        let third = place("g/web", &s, &nodes, &usage).unwrap();
        assert_eq!(third.host_ports, vec![30002, 30003], "ports in use are skipped");
        usage.entry(third.node.clone()).or_insert_with(NodeUsage::default).add(
            "g/web",
            Allocation::of(&s),
            &third.host_ports,
        );
        usage.entry(if third.node == "a" { "b".into() } else { "a".into() }).or_insert_with(NodeUsage::default).add(
            "g/web",
            Allocation::of(&s),
            &[30004, 30005],
        );
        let Unplaceable::Refused { nodes: refused, .. } = place("g/web", &s, &nodes, &usage).unwrap_err() else {
            panic!("two nodes refuse, each with its reason")
        };
        assert_eq!(refused.len(), 2);
        assert_eq!(refused[0].why, Rejection::Cpu { free: 0.0, needed: 0.5 });
        assert!(refused[0].to_string().ends_with("cpu: 0.00 free, 0.5 needed"), "{refused:?}");
        assert_eq!(place("g/web", &s, &[], &usage), Err(Unplaceable::NoReadyNode));
    }

    /// Places `n` instances one after another, as a reconcile pass does.
    fn place_n(s: &AppSpec, nodes: &[&Node], n: usize) -> Vec<String> {
        let mut usage = Usage::default();
        (0..n)
            .map(|_| {
                let p = place("g/web", s, nodes, &usage).unwrap();
                usage.entry(p.node.clone()).or_default().add("g/web", Allocation::of(s), &p.host_ports);
                p.node
            })
            .collect()
    }

    #[test]
    fn binpack_fills_a_node_before_the_next_and_spread_alternates() {
        let (a, b) = (node("a", 4.0), node("b", 4.0));
        let packed = place_n(&spec("placement: binpack\n"), &[&a, &b], 3);
        assert_eq!(packed, ["a", "a", "a"], "the fullest node that fits");
        let spread = place_n(&spec(""), &[&a, &b], 4);
        assert_eq!(spread, ["a", "b", "a", "b"]);
        // Full at 1 cpu (two of 0.5): binpack then moves to the next node.
        let (c, d) = (node("c", 1.0), node("d", 1.0));
        assert_eq!(place_n(&spec("placement: binpack\n"), &[&c, &d], 3), ["c", "c", "d"]);
    }

    #[test]
    fn a_large_cluster_ranks_a_sample_and_still_spreads_evenly() {
        let nodes: Vec<Node> = (0..1000).map(|i| node(&format!("n{i:04}"), 8.0)).collect();
        let refs: Vec<&Node> = nodes.iter().collect();
        let s = spec("");
        let mut usage = Usage::default();
        let pools = Pools::default();
        let mut placer = Placer::new("g/web", &s, &refs, &usage, &pools);
        for _ in 0..2000 {
            let p = placer.place(&usage).unwrap();
            usage.entry(p.node.clone()).or_default().add("g/web", Allocation::of(&s), &p.host_ports);
        }
        let per_node: Vec<usize> = nodes.iter().map(|n| usage.get(&n.id).map_or(0, |u| u.per_app["g/web"])).collect();
        assert_eq!((per_node.iter().min(), per_node.iter().max()), (Some(&2), Some(&2)), "two on every node");
    }

    #[test]
    fn group_by_spreads_over_racks_of_any_size_and_goes_on_when_one_is_full() {
        let mut nodes: Vec<Node> = Vec::new();
        for (i, rack) in ["r0", "r1", "r1", "r1", "r1", "r1", "r2", "r2"].iter().enumerate() {
            let mut n = node(&format!("n{i}"), if *rack == "r0" { 1.0 } else { 8.0 });
            n.labels.insert("rack".into(), rack.to_string());
            nodes.push(n);
        }
        let refs: Vec<&Node> = nodes.iter().collect();
        let s = spec("constraints: rack:GROUP_BY\n");
        let mut usage = Usage::default();
        let pools = Pools::default();
        let mut placer = Placer::new("g/web", &s, &refs, &usage, &pools);
        let mut per_rack: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..12 {
            let p = placer.place(&usage).unwrap();
            let rack = nodes.iter().find(|n| n.id == p.node).unwrap().labels["rack"].clone();
            *per_rack.entry(rack).or_default() += 1;
            usage.entry(p.node.clone()).or_default().add("g/web", Allocation::of(&s), &p.host_ports);
        }
        // r0's one node takes two (1 cpu of 0.5 each); then r1 and r2 share the rest evenly.
        assert_eq!(per_rack, BTreeMap::from([("r0".into(), 2), ("r1".into(), 5), ("r2".into(), 5)]));
    }

    #[test]
    fn the_same_state_gives_the_same_choice_whatever_the_node_order() {
        let (a, b, c) = (node("a", 2.0), node("b", 2.0), node("c", 2.0));
        for s in [spec(""), spec("placement: binpack\n")] {
            assert_eq!(place_n(&s, &[&a, &b, &c], 5), place_n(&s, &[&c, &a, &b], 5));
        }
    }

    #[test]
    fn hostname_unique_allows_one_per_node() {
        let a = node("a", 8.0);
        let s = spec("constraints: hostname:UNIQUE\n");
        let mut usage = Usage::default();
        let p = place("g/web", &s, &[&a], &usage).unwrap();
        usage.entry(p.node).or_insert_with(NodeUsage::default).add("g/web", Allocation::of(&s), &p.host_ports);
        let why = place("g/web", &s, &[&a], &usage).unwrap_err().lines();
        assert!(why[0].contains("hostname:UNIQUE"), "{why:?}");
        assert!(place("g/other", &s, &[&a], &usage).is_ok(), "other apps are not affected");
    }

    #[test]
    fn cluster_and_ports_and_drivers() {
        let (a, b) = (node("a", 8.0), node("b", 8.0));
        let s = spec("constraints: rack:CLUSTER:r-b\n");
        assert_eq!(place("g/web", &s, &[&a, &b], &Usage::default()).unwrap().node, "b");
        let mut exec_only = node("c", 8.0);
        exec_only.drivers = vec![DriverKind::Exec];
        let why = place("g/web", &spec(""), &[&exec_only], &Usage::default()).unwrap_err().lines();
        assert!(why[0].contains("driver"), "{why:?}");
        let mut full = NodeUsage::default();
        full.add_ports(&(30000..=30008).collect::<Vec<_>>());
        let why = place("g/web", &spec(""), &[&a], &Usage::from_iter([("a".to_string(), full)])).unwrap_err().lines();
        assert!(why[0].contains("ports: 1 free"), "{why:?}");
    }

    #[test]
    fn the_first_free_port_is_kept_as_ports_are_taken() {
        let mut u = NodeUsage::default();
        u.add_ports(&[5, 6, 8]);
        assert_eq!(u.first_free_from(5), 7);
        u.add_ports(&[7]);
        assert_eq!(u.first_free_from(5), 9, "8 was taken already");
        assert_eq!(u.first_free_from(3), 3, "another start is looked up afresh");
    }

    #[test]
    fn ports_held_by_other_processes_are_never_handed_out() {
        let mut a = node("a", 8.0);
        a.taken_ports.extend([30000, 30002]);
        let s = spec("");
        let p = place("g/web", &s, &[&a], &Usage::default()).unwrap();
        assert_eq!(p.host_ports, vec![30001, 30003]);
        a.taken_ports.extend(30003..=30009);
        let why = place("g/web", &s, &[&a], &Usage::default()).unwrap_err().lines();
        assert!(why[0].contains("ports: 1 free in 30000-30009 (9 held by other processes), 2 needed"), "{why:?}");
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    fn node(id: &str, pool: &str, cpu: f64) -> Node {
        Node { hostname: id.into(), pool: pool.into(), ..super::tests::node(id, cpu) }
    }

    fn spec(group: &str) -> AppSpec {
        AppSpec::from_yaml(
            &format!("group: {group}\nname: web\ndriver: exec\ncommand: [x]\ncpu: 0.5\nmemory: 10\n"),
            None,
        )
        .unwrap()
    }

    /// Places `n` instances in one pass; each as (node, borrowed), or the refusal that stopped it.
    fn place_n(s: &AppSpec, nodes: &[&Node], pools: &Pools, n: usize) -> (Vec<(String, bool)>, Option<Unplaceable>) {
        let mut usage = Usage::default();
        let mut placer = Placer::new("g/web", s, nodes, &usage, pools);
        let mut out = Vec::new();
        for _ in 0..n {
            match placer.place(&usage) {
                Ok(p) => {
                    usage.entry(p.node.clone()).or_default().add("g/web", Allocation::of(s), &p.host_ports);
                    out.push((p.node, p.borrowed));
                }
                Err(why) => return (out, Some(why)),
            }
        }
        (out, None)
    }

    #[test]
    fn a_bound_group_fills_its_pools_then_borrows_from_the_shared_one_and_never_takes_another() {
        let (web, shared, batch) = (node("web1", "web", 1.0), node("any1", SHARED_POOL, 1.0), node("b1", "batch", 8.0));
        let nodes = [&batch, &shared, &web];
        let pools = Pools { groups: BTreeMap::from([("shop".into(), vec!["web".into()])]), ..Default::default() };
        let (placed, why) = place_n(&spec("shop"), &nodes, &pools, 5);
        assert_eq!(
            placed,
            [("web1".into(), false), ("web1".into(), false), ("any1".into(), true), ("any1".into(), true)],
            "its own pool first (1 cpu: two of 0.5), then the shared pool, borrowed"
        );
        let why = why.expect("the fifth does not fit").lines().join("\n");
        assert!(why.contains("in pool batch; the group places in web"), "{why}");
    }

    #[test]
    fn an_unbound_group_stays_in_the_shared_pool() {
        let (shared, batch) = (node("any1", SHARED_POOL, 1.0), node("b1", "batch", 8.0));
        let (placed, why) = place_n(&spec("shop"), &[&batch, &shared], &Pools::default(), 3);
        assert_eq!(placed, [("any1".into(), false), ("any1".into(), false)]);
        let Some(Unplaceable::Refused { filtered, .. }) = why else { panic!("refused") };
        let classes: Vec<&str> = filtered.iter().map(|f| f.reason.as_str()).collect();
        assert_eq!(classes, ["cpu", "pool"], "{filtered:?}");
        // A group bound to the shared pool itself does not borrow: it is home.
        let pools = Pools { groups: BTreeMap::from([("shop".into(), vec![SHARED_POOL.into()])]), ..Default::default() };
        assert!(place_n(&spec("shop"), &[&shared], &pools, 1).0.iter().all(|(_, borrowed)| !borrowed));
    }

    #[test]
    fn a_pool_over_subscribed_promises_more_cpu_than_its_nodes_have() {
        let web = node("web1", "web", 1.0);
        let mut pools = Pools { groups: BTreeMap::from([("shop".into(), vec!["web".into()])]), ..Default::default() };
        assert_eq!(place_n(&spec("shop"), &[&web], &pools, 10).0.len(), 2, "1 cpu: two of 0.5");
        pools.cpu_oversubscription.insert("web".into(), 2.0);
        let (placed, why) = place_n(&spec("shop"), &[&web], &pools, 10);
        assert_eq!(placed.len(), 4, "at 2x, 1 cpu takes four of 0.5");
        let why = why.expect("the fifth does not fit").lines().join("\n");
        assert!(why.contains("cpu: 0.00 free"), "{why}");
    }

    #[test]
    fn pool_is_an_attribute_constraints_can_name() {
        let (a, b) = (node("a", SHARED_POOL, 4.0), node("b", SHARED_POOL, 4.0));
        let s = AppSpec::from_yaml(
            "group: g\nname: web\ndriver: exec\ncommand: [x]\ncpu: 0.5\nconstraints: [\"pool:LIKE:default\", \"hostname:UNIQUE\"]\n",
            None,
        )
        .unwrap();
        assert_eq!(place_n(&s, &[&a, &b], &Pools::default(), 3).0.len(), 2);
    }
}
