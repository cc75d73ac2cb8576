//! Deployment step arithmetic with Marathon's `upgradeStrategy` semantics.

/// What one reconcile step may do while old and new versions coexist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Old instances that may be stopped now, on top of old ones that are not ready.
    pub stop_ready_old: usize,
    /// New instances that may be started now.
    pub start_new: usize,
}

/// Counts going into a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Desired instances.
    pub target: usize,
    /// Live instances of the new version (staging, starting or running).
    pub new_live: usize,
    /// Live old instances.
    pub old_live: usize,
    /// Ready instances (both versions).
    pub ready: usize,
    /// Ready old instances.
    pub old_ready: usize,
}

/// `min_health` and `max_over` are fractions of `target`, as in Marathon.
pub fn step(c: Counts, min_health: f64, max_over: f64) -> Step {
    let target = c.target as f64;
    let min_healthy = (target * min_health).ceil() as usize;
    let mut max_capacity = (target * (1.0 + max_over)).floor() as usize;
    let live = c.new_live + c.old_live;
    // Marathon: with no room either way, allow one instance over to make progress at all.
    if min_healthy == max_capacity && max_capacity <= live {
        max_capacity += 1;
    }
    // Non-ready old instances leave first and cost no health; ready ones only above the floor.
    let stop_ready_old = c.ready.saturating_sub(min_healthy).min(c.old_ready);
    let live_after = live - (c.old_live - c.old_ready) - stop_ready_old;
    let start_new = max_capacity.saturating_sub(live_after).min(c.target.saturating_sub(c.new_live));
    Step { stop_ready_old, start_new }
}

/// Floor of ready instances a deployment keeps, and the ceiling of live ones.
pub fn bounds(target: usize, min_health: f64, max_over: f64) -> (usize, usize) {
    let min_healthy = (target as f64 * min_health).ceil() as usize;
    let max_capacity = (target as f64 * (1.0 + max_over)).floor() as usize;
    (min_healthy, max_capacity.max(min_healthy + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs a deployment to the end: each round new instances become ready and stopped ones leave.
    fn simulate(target: usize, min_health: f64, max_over: f64) -> (usize, usize, usize) {
        let (mut old_ready, mut new_ready) = (target, 0usize);
        let mut min_seen = usize::MAX;
        let mut max_live = 0;
        for round in 0..(4 * target + 4) {
            if old_ready == 0 && new_ready == target {
                return (min_seen, max_live, round);
            }
            let c =
                Counts { target, new_live: new_ready, old_live: old_ready, ready: old_ready + new_ready, old_ready };
            let s = step(c, min_health, max_over);
            old_ready -= s.stop_ready_old;
            min_seen = min_seen.min(old_ready + new_ready);
            max_live = max_live.max(old_ready + new_ready + s.start_new);
            new_ready += s.start_new;
        }
        panic!("deployment of {target} with {min_health}/{max_over} did not finish");
    }

    #[test]
    fn one_zero_keeps_full_capacity_with_one_extra() {
        let (min_seen, max_live, _) = simulate(4, 1.0, 0.0);
        assert_eq!(min_seen, 4);
        assert_eq!(max_live, 5);
    }

    #[test]
    fn half_capacity_goes_fast() {
        let (min_seen, _, rounds) = simulate(10, 0.5, 0.0);
        assert_eq!(min_seen, 5);
        assert!(rounds <= 3, "{rounds}");
    }

    proptest! {
        #[test]
        fn marathon_bounds_hold(target in 1usize..40, combo in 0usize..3) {
            let (min_health, max_over) = [(1.0, 0.0), (0.9, 0.0), (1.0, 0.1)][combo];
            let (floor, ceiling) = bounds(target, min_health, max_over);
            let (min_seen, max_live, _) = simulate(target, min_health, max_over);
            prop_assert!(min_seen >= floor, "ready fell to {min_seen} under {floor}");
            prop_assert!(max_live <= ceiling, "live rose to {max_live} over {ceiling}");
        }

        #[test]
        fn any_fractions_finish(target in 1usize..30, min_health in 0.0f64..=1.0, max_over in 0.0f64..=1.0) {
            let (min_seen, _, _) = simulate(target, min_health, max_over);
            prop_assert!(min_seen >= (target as f64 * min_health).ceil() as usize);
        }
    }
}
