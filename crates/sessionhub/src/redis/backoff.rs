//! Delays between reconnection attempts.

use std::time::Duration;

/// Delays between reconnection attempts: doubling from `min` up to `max`, each spread by
/// ±50% so that nodes which lost Redis together do not all come back in the same instant.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    base: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            base: min,
        }
    }

    /// The next delay, with jitter from the OS's randomness.
    pub(crate) fn next(&mut self) -> Duration {
        self.next_delay(unit_random())
    }

    /// The next delay; `unit` is uniform in `[0, 1)`.
    fn next_delay(&mut self, unit: f64) -> Duration {
        let delay = self.base.mul_f64(0.5 + unit.clamp(0.0, 1.0));
        self.base = self.base.saturating_mul(2).min(self.max);
        delay
    }

    /// Starts over from `min`, after a connection that worked.
    pub(crate) fn reset(&mut self) {
        self.base = self.min;
    }
}

/// Uniform in `[0, 1)`; the middle if the OS cannot provide randomness (jitter is a
/// nicety, not a correctness requirement).
fn unit_random() -> f64 {
    getrandom::u32().map_or(0.5, |r| f64::from(r) / (f64::from(u32::MAX) + 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay(0.5)).collect();
        let ms: Vec<_> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn backoff_jitter_stays_within_half_either_side() {
        let mut low = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut high = low.clone();
        assert_eq!(low.next_delay(0.0), Duration::from_millis(50));
        assert!(high.next_delay(0.999_999) < Duration::from_millis(150));
        // Out-of-range input cannot push a delay past the band.
        assert!(
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).next_delay(7.0)
                <= Duration::from_millis(150)
        );
        for _ in 0..1000 {
            let d = Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next();
            assert!(d >= Duration::from_millis(500) && d < Duration::from_millis(1500));
        }
    }

    #[test]
    fn backoff_resets_after_success() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        for _ in 0..10 {
            backoff.next_delay(0.5);
        }
        backoff.reset();
        assert_eq!(backoff.next_delay(0.5), Duration::from_millis(50));
    }
}
