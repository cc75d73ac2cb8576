//! Picking a server: smooth weighted round robin over the eligible ones (nginx's algorithm),
//! with slow start; when none is eligible, fail open to the least bad (Slardar's `protected`).

use std::sync::atomic::Ordering;

use crate::table::Cluster;

/// Which server to try, and whether it was a fail-open choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub fail_open: bool,
}

/// Picks a server of `cluster`, skipping `tried`. `None` when nothing is left to try.
pub fn pick(cluster: &Cluster, tried: &[usize]) -> Option<Pick> {
    let eligible: Vec<usize> = (0..cluster.servers.len())
        .filter(|i| !tried.contains(i) && cluster.servers[*i].ineligible().is_none())
        .collect();
    if !eligible.is_empty() {
        return Some(Pick {
            index: smooth_weighted(cluster, &eligible),
            fail_open: false,
        });
    }
    // Nothing eligible at all (not just tried): better a doubtful server than a certain error.
    let any_eligible = cluster.servers.iter().any(|s| s.ineligible().is_none());
    if any_eligible {
        return None;
    }
    cluster
        .servers
        .iter()
        .enumerate()
        .filter(|(i, s)| {
            !tried.contains(i) && !s.draining && !s.state.drained.load(Ordering::Relaxed)
        })
        .min_by_key(|(_, s)| {
            (
                !s.ready,
                !s.state.up.load(Ordering::Relaxed),
                s.state.passive_fails.load(Ordering::Relaxed),
            )
        })
        .map(|(index, _)| Pick {
            index,
            fail_open: true,
        })
}

fn smooth_weighted(cluster: &Cluster, eligible: &[usize]) -> usize {
    let mut current = cluster.swrr.lock().unwrap_or_else(|p| p.into_inner());
    if current.len() != cluster.servers.len() {
        current.resize(cluster.servers.len(), 0);
    }
    let mut total = 0i64;
    let mut best = eligible[0];
    for &i in eligible {
        let s = &cluster.servers[i];
        let weight = ((f64::from(s.weight) * 100.0 * s.state.warmup()) as i64).max(1);
        current[i] += weight;
        total += weight;
        if current[i] > current[best] {
            best = i;
        }
    }
    current[best] -= total;
    best
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::table::{ServerState, Upstream};

    fn cluster(weights: &[u32]) -> Cluster {
        let servers = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let state = Arc::new(ServerState::for_tests());
                Upstream {
                    addr: format!("10.0.0.{i}:80"),
                    instance: None,
                    weight: *w,
                    ready: true,
                    draining: false,
                    state,
                }
            })
            .collect::<Vec<_>>();
        Cluster {
            name: "cls:t".into(),
            route_name: "t".into(),
            swrr: Mutex::new(vec![0; servers.len()]),
            servers,
            check: None,
            rules: None,
            metrics: Default::default(),
        }
    }

    fn counts(c: &Cluster, n: usize) -> Vec<usize> {
        let mut out = vec![0; c.servers.len()];
        for _ in 0..n {
            out[pick(c, &[]).unwrap().index] += 1;
        }
        out
    }

    #[test]
    fn smooth_weighted_round_robin_follows_weights() {
        let c = cluster(&[5, 1, 1]);
        assert_eq!(counts(&c, 700), vec![500, 100, 100]);
        // Smooth: the heavy server never takes 5 in a row at the start of a cycle like plain WRR.
        let seq: Vec<usize> = (0..7).map(|_| pick(&c, &[]).unwrap().index).collect();
        assert!(seq.windows(5).all(|w| w.iter().any(|i| *i != 0)), "{seq:?}");
    }

    #[test]
    fn ineligible_servers_are_skipped_and_tried_ones_too() {
        let mut c = cluster(&[1, 1, 1]);
        c.servers[1].draining = true;
        c.servers[2].state.up.store(false, Ordering::Relaxed);
        assert_eq!(counts(&c, 10), vec![10, 0, 0]);
        assert_eq!(
            pick(&c, &[0]),
            None,
            "nothing else eligible; not a fail-open case"
        );
    }

    #[test]
    fn all_down_fails_open_to_the_least_bad() {
        let c = cluster(&[1, 1]);
        for s in &c.servers {
            s.state.up.store(false, Ordering::Relaxed);
        }
        c.servers[0].state.passive_fails.store(5, Ordering::Relaxed);
        assert_eq!(
            pick(&c, &[]),
            Some(Pick {
                index: 1,
                fail_open: true
            })
        );
    }
}
