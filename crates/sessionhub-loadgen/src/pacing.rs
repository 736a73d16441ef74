//! Open-loop pacing: message `i` is due at `start + i / rate`, whatever happened to the
//! messages before it. Workers take the next index from a shared counter, wait until it is
//! due (or send at once when behind) and stop at the first index due after the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A fixed-rate schedule of messages over a window.
#[derive(Debug)]
pub(crate) struct Schedule {
    start: Instant,
    rate: f64,
    window: Duration,
    next: AtomicU64,
}

impl Schedule {
    /// `rate` messages per second from `start` for `window`.
    pub(crate) fn new(start: Instant, rate: f64, window: Duration) -> Self {
        assert!(rate > 0.0, "rate must be positive");
        Self {
            start,
            rate,
            window,
            next: AtomicU64::new(0),
        }
    }

    /// When message `index` is due, as an offset from the start.
    pub(crate) fn offset(&self, index: u64) -> Duration {
        Duration::from_secs_f64(index as f64 / self.rate)
    }

    /// How many messages the window holds.
    pub(crate) fn total(&self) -> u64 {
        (self.window.as_secs_f64() * self.rate).ceil() as u64
    }

    /// Claims the next message: its index and when it is due; `None` once the window is
    /// used up.
    pub(crate) fn claim(&self) -> Option<(u64, Instant)> {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        (index < self.total()).then(|| (index, self.start + self.offset(index)))
    }

    /// Messages claimed so far (at most [`Self::total`]).
    pub(crate) fn claimed(&self) -> u64 {
        self.next.load(Ordering::Relaxed).min(self.total())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_messages_evenly() {
        let start = Instant::now();
        let s = Schedule::new(start, 1000.0, Duration::from_secs(2));
        assert_eq!(s.total(), 2000);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_millis(1));
        assert_eq!(s.offset(1000), Duration::from_secs(1));
    }

    #[test]
    fn claims_every_index_once_then_stops() {
        let start = Instant::now();
        let s = Schedule::new(start, 10.0, Duration::from_millis(500));
        let claimed: Vec<_> = std::iter::from_fn(|| s.claim()).collect();
        assert_eq!(claimed.len(), 5);
        for (i, (index, due)) in claimed.iter().enumerate() {
            assert_eq!(*index, i as u64);
            assert_eq!(*due, start + Duration::from_millis(100 * i as u64));
        }
        assert_eq!(s.claim(), None);
        assert_eq!(s.claimed(), 5);
    }

    #[test]
    fn fractional_rates_round_up() {
        let s = Schedule::new(Instant::now(), 2.5, Duration::from_secs(1));
        assert_eq!(s.total(), 3);
    }

    #[test]
    fn concurrent_claims_do_not_overlap() {
        let s = std::sync::Arc::new(Schedule::new(
            Instant::now(),
            100_000.0,
            Duration::from_secs(1),
        ));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || std::iter::from_fn(|| s.claim()).count())
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 100_000);
    }
}
