//! Rate limit buckets in Redis, shared by every node: one script call per take
//! (`scripts/limits_take.lua`), on Redis' clock.

use async_trait::async_trait;

use super::{Rate, RateLimiter, Verdict};
use crate::error::LimitError;
use crate::redis::{Keys, Managed, Reconnect, RedisConfig, scripts};

/// Buckets in Redis (one server, Sentinel or Cluster: each bucket is one key), so that a
/// limit holds across every node. Wrap it in [`super::FallbackRateLimiter`] to keep a
/// limit while Redis is down.
pub struct RedisRateLimiter {
    connection: Managed,
    keys: Keys,
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter").finish_non_exhaustive()
    }
}

impl RedisRateLimiter {
    /// Buckets on `config`'s Redis; it connects on first use, so a node can start while
    /// Redis is down.
    pub fn lazy(config: &RedisConfig) -> Result<Self, LimitError> {
        let connection = Managed::lazy(config, Reconnect::LIMITS).map_err(unavailable)?;
        Ok(Self {
            connection,
            keys: config.keys().clone(),
        })
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn take(&self, bucket: &str, rate: Rate) -> Result<Verdict, LimitError> {
        let interval = rate.interval().as_micros().max(1);
        let tolerance = rate.period.as_micros().saturating_sub(interval);
        let mut invocation = scripts::LIMITS_TAKE.prepare_invoke();
        invocation
            .key(self.keys.rate(bucket))
            .arg(interval as u64)
            .arg(tolerance as u64);
        let mut connection = self.connection.get().await.map_err(unavailable)?;
        let wait_us: u64 = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| {
                self.connection.failed(&e);
                unavailable(e)
            })?;
        Ok(match wait_us {
            0 => Verdict::Allowed,
            us => Verdict::Limited {
                retry_after: std::time::Duration::from_micros(us),
            },
        })
    }
}

fn unavailable(e: ::redis::RedisError) -> LimitError {
    LimitError::unavailable("redis", e)
}
