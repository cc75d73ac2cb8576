//! Picking a server among the eligible ones: smooth weighted round robin (nginx's algorithm)
//! with slow start, least connections, or consistent hashing on a request key; when none is
//! eligible, fail open to the least bad (Slardar's `protected`).

use std::sync::atomic::Ordering;

use berth_core::spec::Balance;

use crate::table::{Cluster, Upstream, hash64};

/// Which server to try, and whether it was a fail-open choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub fail_open: bool,
}

/// Picks a server of `cluster`, skipping `tried`; `key` is the request's hash key, when the
/// cluster hashes. `None` when nothing is left to try.
pub fn pick(cluster: &Cluster, tried: &[usize], key: Option<&str>) -> Option<Pick> {
    let ok = |i: usize| !tried.contains(&i) && cluster.servers[i].eligible();
    let picked = match (&cluster.balance, key) {
        // Round robin, the default, walks the servers in place: nothing to allocate per request.
        (Balance::RoundRobin, _) | (Balance::Hash(_), None) => smooth_weighted(cluster, ok),
        (balance, key) => {
            let eligible: Vec<usize> = (0..cluster.servers.len()).filter(|i| ok(*i)).collect();
            match (balance, key) {
                _ if eligible.is_empty() => None,
                (Balance::LeastConn, _) => Some(least_conn(cluster, &eligible)),
                (_, Some(key)) => Some(on_ring(cluster, &eligible, key)),
                _ => None,
            }
        }
    };
    if let Some(index) = picked {
        return Some(Pick { index, fail_open: false });
    }
    // Nothing eligible at all (not just tried): better a doubtful server than a certain error.
    let any_eligible = cluster.servers.iter().any(Upstream::eligible);
    if any_eligible {
        return None;
    }
    cluster
        .servers
        .iter()
        .enumerate()
        .filter(|(i, s)| !tried.contains(i) && !s.draining && !s.state.drained.load(Ordering::Relaxed))
        .min_by_key(|(_, s)| {
            (!s.ready, !s.state.up.load(Ordering::Relaxed), s.state.passive_fails.load(Ordering::Relaxed))
        })
        .map(|(index, _)| Pick { index, fail_open: true })
}

/// Fewest in flight per unit of weight; ties rotate so equal servers share the load.
fn least_conn(cluster: &Cluster, eligible: &[usize]) -> usize {
    let start = cluster.rotor.fetch_add(1, Ordering::Relaxed);
    let n = eligible.len();
    (0..n)
        .map(|k| eligible[(start + k) % n])
        .min_by(|a, b| {
            let load = |i: &usize| {
                let s = &cluster.servers[*i];
                s.state.in_flight.load(Ordering::Relaxed) as f64 / f64::from(s.weight.max(1))
            };
            load(a).total_cmp(&load(b))
        })
        .unwrap_or(eligible[0])
}

/// The first eligible server clockwise from the key's point: a key keeps its server while the
/// server lives, and only the keys of a server that leaves move.
fn on_ring(cluster: &Cluster, eligible: &[usize], key: &str) -> usize {
    let ring = &cluster.ring;
    if ring.is_empty() {
        return eligible[0];
    }
    let h = hash64(key);
    let start = ring.partition_point(|(point, _)| *point < h);
    (0..ring.len()).map(|k| ring[(start + k) % ring.len()].1).find(|i| eligible.contains(i)).unwrap_or(eligible[0])
}

thread_local! {
    /// Smooth weighted round robin's current weights, per worker thread and cluster: each worker
    /// rotates on its own (as each nginx worker does), so no lock or shared cache line is touched.
    static SWRR: std::cell::RefCell<std::collections::HashMap<usize, Vec<i64>>> = Default::default();
}

fn smooth_weighted(cluster: &Cluster, ok: impl Fn(usize) -> bool) -> Option<usize> {
    // Tables are rebuilt on change: a cluster's address is its identity while it lives.
    let key = cluster as *const Cluster as usize;
    SWRR.with(|all| {
        let mut all = all.borrow_mut();
        if all.len() > 1024 {
            all.clear();
        }
        let current = all.entry(key).or_default();
        if current.len() != cluster.servers.len() {
            current.clear();
            current.resize(cluster.servers.len(), 0);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, s) in cluster.servers.iter().enumerate() {
            if !ok(i) {
                continue;
            }
            let weight = ((f64::from(s.weight) * 100.0 * s.state.warmup(cluster.slow_start)) as i64).max(1);
            current[i] += weight;
            total += weight;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        current[best] -= total;
        Some(best)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use berth_core::spec::HashOn;

    use super::*;
    use crate::table::{ServerState, Upstream};

    /// One warm server and one seen just now, under a slow start of `slow_start`: how many of
    /// 1000 picks the new one gets.
    fn new_server_share(slow_start: Duration) -> usize {
        let mut c = cluster(&[1, 1]);
        c.servers[1].state = Arc::new(ServerState::fresh_for_tests());
        c.slow_start = slow_start;
        (0..1000).filter(|_| pick(&c, &[], None).map(|p| p.index) == Some(1)).count()
    }

    #[test]
    fn a_new_server_ramps_up_unless_slow_start_is_off() {
        let ramping = new_server_share(Duration::from_secs(5));
        assert!(ramping < 150, "a server seen just now gets a small share: {ramping} of 1000");
        let off = new_server_share(Duration::ZERO);
        assert!((450..=550).contains(&off), "with slow start off it gets its full share at once: {off} of 1000");
    }

    fn cluster(weights: &[u32]) -> Cluster {
        cluster_with(weights, Balance::RoundRobin)
    }

    fn cluster_with(weights: &[u32], balance: Balance) -> Cluster {
        let servers = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let state = Arc::new(ServerState::for_tests());
                Upstream {
                    addr: format!("10.0.0.{i}:80").into(),
                    instance: None,
                    weight: *w,
                    ready: true,
                    draining: false,
                    state,
                }
            })
            .collect::<Vec<_>>();
        Cluster::new("cls:t".into(), "t".into(), servers, balance, None, None, Default::default())
    }

    fn counts(c: &Cluster, n: usize) -> Vec<usize> {
        let mut out = vec![0; c.servers.len()];
        for _ in 0..n {
            out[pick(c, &[], None).unwrap().index] += 1;
        }
        out
    }

    #[test]
    fn smooth_weighted_round_robin_follows_weights() {
        let c = cluster(&[5, 1, 1]);
        assert_eq!(counts(&c, 700), vec![500, 100, 100]);
        // Smooth: the heavy server never takes 5 in a row at the start of a cycle like plain WRR.
        let seq: Vec<usize> = (0..7).map(|_| pick(&c, &[], None).unwrap().index).collect();
        assert!(seq.windows(5).all(|w| w.iter().any(|i| *i != 0)), "{seq:?}");
    }

    #[test]
    fn ineligible_servers_are_skipped_and_tried_ones_too() {
        let mut c = cluster(&[1, 1, 1]);
        c.servers[1].draining = true;
        c.servers[2].state.up.store(false, Ordering::Relaxed);
        assert_eq!(counts(&c, 10), vec![10, 0, 0]);
        assert_eq!(pick(&c, &[0], None), None, "nothing else eligible; not a fail-open case");
    }

    #[test]
    fn all_down_fails_open_to_the_least_bad() {
        let c = cluster(&[1, 1]);
        for s in &c.servers {
            s.state.up.store(false, Ordering::Relaxed);
        }
        c.servers[0].state.passive_fails.store(5, Ordering::Relaxed);
        assert_eq!(pick(&c, &[], None), Some(Pick { index: 1, fail_open: true }));
    }

    #[test]
    fn least_conn_prefers_the_idle_server() {
        let c = cluster_with(&[1, 1, 1], Balance::LeastConn);
        c.servers[0].state.in_flight.store(5, Ordering::Relaxed);
        c.servers[2].state.in_flight.store(1, Ordering::Relaxed);
        assert_eq!(pick(&c, &[], None).unwrap().index, 1);
        c.servers[1].state.in_flight.store(1, Ordering::Relaxed);
        let picks: std::collections::HashSet<usize> = (0..6).map(|_| pick(&c, &[], None).unwrap().index).collect();
        assert_eq!(picks, [1, 2].into_iter().collect(), "ties rotate");
    }

    #[test]
    fn hashing_is_sticky_and_moves_only_the_lost_servers_keys() {
        let c = cluster_with(&[1, 1, 1, 1], Balance::Hash(HashOn::ClientIp));
        let keys: Vec<String> = (0..400).map(|i| format!("10.1.{}.{}", i / 200, i % 200)).collect();
        let before: Vec<usize> = keys.iter().map(|k| pick(&c, &[], Some(k)).unwrap().index).collect();
        let again: Vec<usize> = keys.iter().map(|k| pick(&c, &[], Some(k)).unwrap().index).collect();
        assert_eq!(before, again, "the same key reaches the same server");
        let mut spread = [0usize; 4];
        before.iter().for_each(|i| spread[*i] += 1);
        assert!(spread.iter().all(|n| *n > 50), "keys spread over servers: {spread:?}");
        c.servers[2].state.up.store(false, Ordering::Relaxed);
        for (k, b) in keys.iter().zip(&before) {
            let now = pick(&c, &[], Some(k)).unwrap().index;
            if *b != 2 {
                assert_eq!(now, *b, "keys of live servers stay put");
            } else {
                assert_ne!(now, 2);
            }
        }
    }
}
