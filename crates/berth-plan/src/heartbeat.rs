//! How often agents heartbeat, and how long a silent node stays connected. The server decides
//! both from the size of the cluster and tells each agent in its heartbeat reply, so that its
//! heartbeat load stays bounded as the cluster grows (as Nomad scales its heartbeat TTL), and so
//! that no node is timed out by a server that expects beats faster than the agent sends them.

/// Beats that fit in a timeout: a node is cut off only after missing this many in a row.
pub const BEATS_PER_TIMEOUT: i64 = 3;
/// The most heartbeats per second the server asks for, whatever the size of the cluster.
pub const MAX_BEATS_PER_SECOND: i64 = 250;
/// No agent is asked to beat more often than this, however short the timeout.
pub const MIN_INTERVAL_MS: i64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Each agent beats at least this often.
    pub interval_ms: i64,
    /// A node silent this long is disconnected: the configured timeout, stretched when the
    /// cluster is large enough that beats come further apart.
    pub timeout_ms: i64,
}

/// The schedule for `nodes` nodes under a configured node timeout.
pub fn schedule(nodes: usize, configured_timeout_ms: i64) -> Schedule {
    let nodes = i64::try_from(nodes).unwrap_or(i64::MAX);
    let spread = nodes.saturating_mul(1000) / MAX_BEATS_PER_SECOND;
    let interval_ms = (configured_timeout_ms / BEATS_PER_TIMEOUT).max(spread).max(MIN_INTERVAL_MS);
    Schedule { interval_ms, timeout_ms: configured_timeout_ms.max(interval_ms.saturating_mul(BEATS_PER_TIMEOUT)) }
}

/// The most metric reports per second the server asks for: each agent sends its instances'
/// latest samples in one report, every 5 s by default; a large cluster spaces them out further.
pub const MAX_METRIC_REPORTS_PER_SECOND: i64 = 100;

/// The least time between two metric reports of one agent in a cluster of `nodes` (0: as often
/// as the agent is configured to).
pub fn metrics_spacing_ms(nodes: usize) -> i64 {
    i64::try_from(nodes).unwrap_or(i64::MAX).saturating_mul(1000) / MAX_METRIC_REPORTS_PER_SECOND
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_clusters_beat_three_times_per_timeout_and_large_ones_stretch_it() {
        assert_eq!(schedule(3, 6_000), Schedule { interval_ms: 2_000, timeout_ms: 6_000 });
        assert_eq!(schedule(1_000, 6_000), Schedule { interval_ms: 4_000, timeout_ms: 12_000 });
        assert_eq!(schedule(1_000, 15_000), Schedule { interval_ms: 5_000, timeout_ms: 15_000 });
        assert_eq!(schedule(1, 30), Schedule { interval_ms: MIN_INTERVAL_MS, timeout_ms: 300 });
    }

    #[test]
    fn metric_reports_spread_out_from_500_nodes() {
        // Under the 5 s default until 500 nodes; 1,000 nodes report every 10 s.
        assert_eq!((metrics_spacing_ms(0), metrics_spacing_ms(100)), (0, 1_000));
        assert_eq!((metrics_spacing_ms(500), metrics_spacing_ms(1_000)), (5_000, 10_000));
    }

    proptest! {
        #[test]
        fn every_node_has_three_beats_before_its_timeout_and_the_rate_is_capped(
            nodes in 0usize..100_000,
            timeout in 1i64..600_000,
        ) {
            let s = schedule(nodes, timeout);
            prop_assert!(s.timeout_ms >= timeout);
            prop_assert!(s.interval_ms * BEATS_PER_TIMEOUT <= s.timeout_ms);
            // Beats per second across the cluster, rounded as the division rounds.
            prop_assert!(nodes as i64 * 1000 / s.interval_ms <= MAX_BEATS_PER_SECOND);
        }

        #[test]
        fn metric_reports_across_the_cluster_stay_under_the_cap(nodes in 1usize..100_000, every in 1i64..60_000) {
            // Each agent reports every `every` ms or the spacing, whichever is longer: never more
            // often across the cluster than the cap, unless the agents' own interval is longer.
            let spaced = metrics_spacing_ms(nodes).max(every);
            prop_assert!(nodes as i64 * 1000 / spaced <= MAX_METRIC_REPORTS_PER_SECOND.max(nodes as i64 * 1000 / every));
            prop_assert!(nodes as i64 * 1000 / metrics_spacing_ms(nodes) <= MAX_METRIC_REPORTS_PER_SECOND);
        }

        #[test]
        fn a_growing_cluster_never_shortens_the_timeout(nodes in 0usize..100_000, timeout in 1i64..600_000) {
            prop_assert!(schedule(nodes + 1, timeout).timeout_ms >= schedule(nodes, timeout).timeout_ms);
        }
    }
}
