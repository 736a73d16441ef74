//! One clock for the whole process: microseconds since it was first read. Publishers stamp
//! messages with it and clients read it on arrival, so latencies need no clock sync.

use std::sync::OnceLock;

use tokio::time::Instant;

static BASE: OnceLock<std::time::Instant> = OnceLock::new();

fn base() -> std::time::Instant {
    *BASE.get_or_init(std::time::Instant::now)
}

/// Microseconds since the clock started.
pub(crate) fn now_us() -> u64 {
    base().elapsed().as_micros() as u64
}

/// `at` in microseconds since the clock started (0 if before).
pub(crate) fn us_of(at: Instant) -> u64 {
    at.into_std().saturating_duration_since(base()).as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn instants_and_now_agree() {
        let a = now_us();
        let later = Instant::now() + Duration::from_millis(5);
        let b = us_of(later);
        assert!(b >= a + 5_000, "{a} {b}");
        assert!(b < a + 5_000_000);
    }
}
