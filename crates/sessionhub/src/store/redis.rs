//! Session records in Redis (cluster mode).

/// Session records in Redis. Filled in by cluster mode.
pub struct RedisStore;
