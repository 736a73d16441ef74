//! `RedisRateLimiter`, buckets shared by every node: the rate limiter conformance suite
//! (`sessionhub_testkit::conformance::limits`) on one `redis-server` and on a Redis Cluster
//! of the test's own, then what only a shared limiter shows: two nodes draw from one
//! bucket, and while Redis is down each node keeps a limit of its own
//! (`FallbackRateLimiter`) and goes back to the shared buckets when Redis returns.

use std::sync::Arc;
use std::time::Duration;

use sessionhub::limits::{FallbackRateLimiter, Rate, RateLimiter, RedisRateLimiter, Verdict};
use sessionhub::redis::RedisConfig;
use sessionhub_testkit::conformance::limits::LimitsFixture;
use sessionhub_testkit::conformance::within;
use sessionhub_testkit::{RedisCluster, RedisServer};

const LIMIT: Duration = Duration::from_secs(30);

fn limiter(url: &str) -> Arc<RedisRateLimiter> {
    Arc::new(RedisRateLimiter::lazy(&RedisConfig::new(url).unwrap()).unwrap())
}

mod standalone {
    use super::*;

    async fn redis() -> LimitsFixture {
        let server = RedisServer::start_async().await;
        LimitsFixture::new(limiter(&server.url()), server)
    }

    sessionhub_testkit::limits_conformance!(redis);
}

mod cluster {
    use super::*;

    async fn cluster() -> LimitsFixture {
        let (cluster, prefix) = RedisCluster::shared().await;
        let config = RedisConfig::cluster(&cluster.urls())
            .unwrap()
            .prefix(&prefix);
        let limiter = Arc::new(RedisRateLimiter::lazy(&config).unwrap());
        LimitsFixture::new(limiter, cluster)
    }

    sessionhub_testkit::limits_conformance!(cluster);
}

async fn allowed(limiter: &dyn RateLimiter, bucket: &str, rate: Rate) -> bool {
    limiter.take(bucket, rate).await.unwrap() == Verdict::Allowed
}

/// Two nodes (two limiters on one Redis) taking turns share one bucket: together they get
/// the count, not twice it.
#[tokio::test]
async fn nodes_draw_from_one_bucket() {
    within(LIMIT, async {
        let server = RedisServer::start_async().await;
        let (a, b) = (limiter(&server.url()), limiter(&server.url()));
        let rate: Rate = "6/m".parse().unwrap();
        let mut passed = 0;
        for i in 0..12 {
            let node: &dyn RateLimiter = if i % 2 == 0 { &*a } else { &*b };
            passed += usize::from(allowed(node, "connect:ip:10.1.1.1", rate).await);
        }
        assert_eq!(passed, 6);
    })
    .await;
}

/// Redis down: takes fail on the Redis limiter, and the fallback keeps a limit of the node's
/// own (the count, on this node) instead of refusing or letting everything through. Redis
/// back: the shared bucket counts again, from where Redis left it.
#[tokio::test]
async fn a_node_keeps_a_limit_of_its_own_while_redis_is_down() {
    within(LIMIT, async {
        let mut server = RedisServer::start_async().await;
        let redis = limiter(&server.url());
        let node = FallbackRateLimiter::new(redis.clone());
        let rate: Rate = "3/m".parse().unwrap();
        assert!(allowed(&node, "login:ip:10.2.2.2", rate).await);

        server.stop();
        assert!(redis.take("login:ip:10.2.2.2", rate).await.is_err());
        let passed = {
            let mut passed = 0;
            for _ in 0..10 {
                passed += usize::from(allowed(&node, "login:ip:10.2.2.2", rate).await);
            }
            passed
        };
        assert_eq!(passed, 3, "the node's own bucket, fresh, allows the count");

        server.restart().unwrap();
        // The restarted server keeps nothing: its bucket starts fresh, and is shared again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while redis.take("probe", rate).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Redis did not come back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let other = limiter(&server.url());
        for _ in 0..3 {
            assert!(allowed(&*other, "login:ip:10.2.2.2", rate).await);
        }
        assert!(!allowed(&node, "login:ip:10.2.2.2", rate).await);
    })
    .await;
}
