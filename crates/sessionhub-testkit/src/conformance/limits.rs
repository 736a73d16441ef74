//! The `RateLimiter` contract: a bucket allows a burst of its rate's count, then refuses
//! with how long to wait, and allows again once that much time has passed; buckets are
//! independent; and concurrent takes from one bucket are counted exactly (no two takes
//! see the same room, which is what a limit shared by many nodes relies on).
//!
//! A [`LimitsFixture`] is the limiter under test and what keeps it working.
//! [`limits_conformance!`](crate::limits_conformance) runs [`checks`] against a backend.

use std::sync::Arc;
use std::time::Duration;

use sessionhub::limits::{RateLimiter, Verdict};

/// Upper bound for one test, setup included.
pub const LIMIT: Duration = Duration::from_secs(30);

/// A rate limiter and whatever must live as long as it does.
pub struct LimitsFixture {
    limiter: Arc<dyn RateLimiter>,
    _guard: super::Guard,
}

impl LimitsFixture {
    /// `limiter`, kept working by `guard` (a server; `()` when it needs nothing).
    pub fn new(limiter: Arc<dyn RateLimiter>, guard: impl std::any::Any + Send) -> Self {
        Self {
            limiter,
            _guard: Box::new(guard),
        }
    }
}

/// The checks, one `pub async fn` each.
pub mod checks {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use sessionhub::limits::{Rate, Verdict};

    use super::{LimitsFixture, allowed, take};

    /// A fresh bucket allows its count at once, then refuses, saying to wait no longer
    /// than one interval.
    pub async fn a_burst_of_the_count_passes_then_stops(fixture: &LimitsFixture) {
        let rate: Rate = "5/m".parse().unwrap();
        for i in 0..5 {
            assert!(
                allowed(fixture, "connect:ip:10.0.0.1", rate).await,
                "take {i}"
            );
        }
        match take(fixture, "connect:ip:10.0.0.1", rate).await {
            Verdict::Limited { retry_after } => {
                assert!(retry_after > Duration::ZERO, "{retry_after:?}");
                assert!(retry_after <= rate.interval(), "{retry_after:?}");
            }
            Verdict::Allowed => panic!("the sixth take of 5/m passed"),
        }
    }

    /// Buckets do not share their room: another key has its own.
    pub async fn buckets_are_independent(fixture: &LimitsFixture) {
        let rate: Rate = "2/m".parse().unwrap();
        for _ in 0..2 {
            assert!(allowed(fixture, "login:user:alice", rate).await);
        }
        assert!(!allowed(fixture, "login:user:alice", rate).await);
        assert!(allowed(fixture, "login:user:bob", rate).await);
        assert!(allowed(fixture, "login:ip:alice", rate).await);
    }

    /// A refused bucket allows one more after one interval, not a whole new burst.
    pub async fn room_comes_back_one_interval_at_a_time(fixture: &LimitsFixture) {
        let rate: Rate = "4/s".parse().unwrap();
        for _ in 0..4 {
            assert!(allowed(fixture, "publish:user:u", rate).await);
        }
        let Verdict::Limited { retry_after } = take(fixture, "publish:user:u", rate).await else {
            panic!("the fifth take of 4/s passed");
        };
        tokio::time::sleep(retry_after + Duration::from_millis(20)).await;
        assert!(allowed(fixture, "publish:user:u", rate).await);
        assert!(!allowed(fixture, "publish:user:u", rate).await);
    }

    /// Many takes at once from one bucket: exactly the count pass.
    pub async fn concurrent_takes_are_counted_exactly(fixture: &LimitsFixture) {
        let rate: Rate = "20/h".parse().unwrap();
        let passed = Arc::new(AtomicUsize::new(0));
        let takes = (0..100).map(|_| {
            let limiter = fixture.limiter.clone();
            let passed = passed.clone();
            tokio::spawn(async move {
                let verdict = limiter.take("connect:user:many", rate).await.unwrap();
                if verdict == Verdict::Allowed {
                    passed.fetch_add(1, Ordering::SeqCst);
                }
            })
        });
        for take in takes.collect::<Vec<_>>() {
            take.await.unwrap();
        }
        assert_eq!(passed.load(Ordering::SeqCst), 20);
    }
}

async fn take(fixture: &LimitsFixture, bucket: &str, rate: sessionhub::limits::Rate) -> Verdict {
    fixture
        .limiter
        .take(bucket, rate)
        .await
        .expect("the limiter answers")
}

async fn allowed(fixture: &LimitsFixture, bucket: &str, rate: sessionhub::limits::Rate) -> bool {
    take(fixture, bucket, rate).await == Verdict::Allowed
}

/// Runs every check of [`checks`] against the limiter `$factory` returns (an `async fn() ->
/// LimitsFixture`), one test each.
#[macro_export]
macro_rules! limits_conformance {
    ($factory:path) => {
        $crate::__conformance_tests!(
            suite: limits,
            worker_threads: 2,
            factory: $factory,
            fixture => &fixture,
            checks: [
                a_burst_of_the_count_passes_then_stops,
                buckets_are_independent,
                room_comes_back_one_interval_at_a_time,
                concurrent_takes_are_counted_exactly,
            ]
        );
    };
}
