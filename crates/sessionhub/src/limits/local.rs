//! Rate limit buckets in this node's memory.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, RateLimiter as Governor};

use super::{Rate, RateLimiter, Verdict};
use crate::error::LimitError;

/// How many buckets one rate keeps before it forgets the full ones (a full bucket is the
/// same as none): without that, a scan from many addresses would grow the map forever.
const TRACKED_BUCKETS: usize = 10_000;

/// Buckets in this node's memory (GCRA, by `governor`): the limit on one node, and each
/// node's own while Redis is down.
#[derive(Default)]
pub struct LocalRateLimiter {
    /// One keyed limiter per rate: a handful, one per configured limit.
    by_rate: Mutex<HashMap<Rate, DefaultKeyedRateLimiter<String>>>,
}

impl std::fmt::Debug for LocalRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRateLimiter").finish_non_exhaustive()
    }
}

impl LocalRateLimiter {
    fn take_now(&self, bucket: &str, rate: Rate) -> Verdict {
        let mut by_rate = self.by_rate.lock().expect("never poisoned");
        let limiter = by_rate
            .entry(rate)
            .or_insert_with(|| Governor::keyed(rate.quota()));
        if limiter.len() > TRACKED_BUCKETS {
            limiter.retain_recent();
        }
        match limiter.check_key(&bucket.to_owned()) {
            Ok(()) => Verdict::Allowed,
            Err(not_until) => Verdict::Limited {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            },
        }
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn take(&self, bucket: &str, rate: Rate) -> Result<Verdict, LimitError> {
        Ok(self.take_now(bucket, rate))
    }
}
