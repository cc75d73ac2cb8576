//! Waits between attempts to reach a peer that is away: growing, capped and jittered, so that
//! the agents and routers that lost the same server do not all come back in the same instant.
//! Pure: the caller supplies the randomness and does the sleeping.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Retry {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Retry {
    pub fn new(first: Duration, max: Duration) -> Retry {
        Retry { first, max: max.max(first), failures: 0 }
    }

    /// The wait after one more failure: between half and all of `first` doubled per failure so
    /// far (at most `max`), placed by `unit`, a random number in [0, 1).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let cap = self.first.saturating_mul(1u32 << self.failures.min(20)).min(self.max);
        self.failures = self.failures.saturating_add(1);
        cap.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// The peer answered: the next failure starts from `first` again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn delays_grow_stay_capped_and_spread(units in proptest::collection::vec(0.0f64..1.0, 1..40)) {
            let (first, max) = (Duration::from_millis(100), Duration::from_secs(5));
            let mut retry = Retry::new(first, max);
            for (n, unit) in units.iter().enumerate() {
                let cap = first.saturating_mul(1u32 << n.min(20)).min(max);
                let delay = retry.next_delay(*unit);
                prop_assert!(delay >= cap / 2 && delay <= cap, "failure {n}: {delay:?} outside {cap:?}/2..{cap:?}");
            }
            retry.succeeded();
            prop_assert!(retry.next_delay(0.999) <= first);
        }
    }

    #[test]
    fn two_clients_that_fail_together_come_back_apart() {
        let mut a = Retry::new(Duration::from_millis(500), Duration::from_secs(10));
        let mut b = a.clone();
        assert_ne!(a.next_delay(0.1), b.next_delay(0.9));
    }
}
