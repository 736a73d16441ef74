//! The Redis `SessionStore` through Redis Sentinel (a primary, a replica and three
//! Sentinels of each test's own, never port 6379): the store conformance suite
//! (`sessionhub_testkit::conformance::store`), then failovers: a killed primary, and one
//! demoted while it stays up, where redis-rs alone would keep writing to the old address.

use std::sync::Arc;
use std::time::Duration;

use ::redis::AsyncCommands;
use serde_json::json;
use sessionhub::error::StoreError;
use sessionhub::redis::RedisConfig;
use sessionhub::session::SessionId;
use sessionhub::store::{RedisStore, SessionStore, Updated};
use sessionhub_testkit::conformance::store::{StoreFixture, TTL, created, incr};
use sessionhub_testkit::{RedisSentinel, redis_command};
use tokio::time::{Instant, sleep};

/// A failover test's bound: Sentinel needs ~1 s to call the primary down and a few more to
/// promote the replica.
const FAILOVER_LIMIT: Duration = Duration::from_secs(60);
/// How long the store may take to find the new primary once the Sentinels name it.
const FOLLOW: Duration = Duration::from_secs(10);
/// How long it may take when the old primary refuses writes from the start: well before
/// the ~10 s the Sentinels take to demote it.
const MOVE_ON: Duration = Duration::from_secs(3);

fn config(redis: &RedisSentinel) -> RedisConfig {
    RedisConfig::sentinel(&redis.sentinel_addrs(), redis.master_name()).unwrap()
}

async fn sentinel() -> StoreFixture {
    let redis = RedisSentinel::start_lean().await;
    let store = RedisStore::lazy(&config(&redis)).unwrap();
    StoreFixture::new(Arc::new(store), redis)
}

sessionhub_testkit::store_conformance!(sentinel);

/// Waits until the primary at `port` has handed every write so far to its replica, so that
/// a failover cannot lose them (Redis replicates asynchronously; see docs/cluster.md).
fn replicated(port: u16) {
    let reply = redis_command(port, "WAIT 1 5000").unwrap();
    assert_eq!(reply.trim(), ":1", "the replica did not take the writes");
}

/// Increments `n` of `id` as soon as the store reaches a primary again, failing the test
/// if that takes longer than `within`; meanwhile every failure must be `Unavailable`.
async fn update_once_back(
    store: &RedisStore,
    id: &SessionId,
    delta: i64,
    within: Duration,
) -> Updated {
    let deadline = Instant::now() + within;
    loop {
        match store.update(id, &[incr("n", delta)], TTL).await {
            Ok(updated) => return updated,
            Err(StoreError::Unavailable(e)) => {
                assert!(Instant::now() < deadline, "still no primary: {e}");
                sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("not an outage: {e}"),
        }
    }
}

/// Session `id`'s attribute `n` as the server on `port` holds it.
async fn stored_n(redis: &RedisSentinel, port: u16, id: &SessionId) -> String {
    let mut raw = ::redis::Client::open(redis.url_of(port))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("sessionhub:session:{{{}}}", id.as_str());
    raw.hget(key, "a:n").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_outlive_a_killed_primary() {
    tokio::time::timeout(FAILOVER_LIMIT, async {
        let mut redis = RedisSentinel::start_async().await;
        let store = RedisStore::lazy(&config(&redis)).unwrap();
        let (id, _) = created(&store, json!({"n": 1})).await;
        assert_eq!(
            store.update(&id, &[incr("n", 1)], TTL).await.unwrap(),
            Updated::Applied(vec![2])
        );
        replicated(redis.primary_port());

        let old = redis.kill_primary().unwrap();
        let new = redis
            .wait_for_new_primary(old, Duration::from_secs(30))
            .unwrap();
        assert_ne!(new, old);

        // Neither lost nor counted twice, and written on the new primary.
        assert_eq!(
            update_once_back(&store, &id, 1, FOLLOW).await,
            Updated::Applied(vec![3])
        );
        let record = store.load(&id, TTL).await.unwrap().expect("the session");
        assert_eq!(record.attributes["n"], json!(3));
    })
    .await
    .expect("the test did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_is_left_for_the_new_one() {
    tokio::time::timeout(FAILOVER_LIMIT, async {
        let redis = RedisSentinel::start_async().await;
        let store = RedisStore::lazy(&config(&redis)).unwrap();
        let (id, _) = created(&store, json!({"n": 1})).await;
        replicated(redis.primary_port());

        // The old primary stays up as a replica and keeps the store's connection open:
        // its writes are refused (READONLY), which must send the store to the new one.
        // (Until the Sentinels have turned it into a replica it still takes writes, which
        // its resync with the new primary then drops: docs/cluster.md says how
        // `min-replicas-to-write` bounds that window. This test starts after it.)
        let old = redis.current_primary_port().unwrap();
        redis.failover().unwrap();
        let new = redis
            .wait_for_new_primary(old, Duration::from_secs(30))
            .unwrap();
        redis
            .wait_for_demotion(old, Duration::from_secs(30))
            .unwrap();

        assert_eq!(
            update_once_back(&store, &id, 1, FOLLOW).await,
            Updated::Applied(vec![2])
        );
        // On the new primary, not merely somewhere.
        assert_eq!(stored_n(&redis, new, &id).await, "2");
    })
    .await
    .expect("the test did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_min_replicas_to_write_a_demoted_primary_loses_no_write() {
    tokio::time::timeout(FAILOVER_LIMIT, async {
        let redis = RedisSentinel::start_async().await;
        let store = RedisStore::lazy(&config(&redis)).unwrap();
        let old = redis.current_primary_port().unwrap();
        let setting = "CONFIG SET min-replicas-to-write 1";
        assert_eq!(redis_command(old, setting).unwrap().trim(), "+OK");
        let (id, _) = created(&store, json!({"n": 1})).await;
        replicated(old);

        // No waiting for the old primary to be demoted this time: cut off from its replica
        // (promoted), it refuses writes (NOREPLICAS), and the store moves on at once.
        redis.failover().unwrap();
        let new = redis
            .wait_for_new_primary(old, Duration::from_secs(30))
            .unwrap();
        assert_eq!(
            update_once_back(&store, &id, 1, MOVE_ON).await,
            Updated::Applied(vec![2])
        );
        assert_eq!(
            stored_n(&redis, new, &id).await,
            "2",
            "the write went to the old primary and was lost"
        );
    })
    .await
    .expect("the test did not finish in time");
}
