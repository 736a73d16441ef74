//! `LocalRateLimiter`, each node's own buckets: the rate limiter conformance suite
//! (`sessionhub_testkit::conformance::limits`).

use std::sync::Arc;

use sessionhub::limits::LocalRateLimiter;
use sessionhub_testkit::conformance::limits::LimitsFixture;

async fn local() -> LimitsFixture {
    LimitsFixture::new(Arc::new(LocalRateLimiter::default()), ())
}

sessionhub_testkit::limits_conformance!(local);
