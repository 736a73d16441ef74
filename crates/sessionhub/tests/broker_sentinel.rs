//! `RedisBroker` through Redis Sentinel (a primary, a replica and three Sentinels of each
//! test's own, never port 6379): the broker conformance suite
//! (`sessionhub_testkit::conformance::broker`), then failovers. After a failover a node
//! must find the new primary, resubscribe, tell its clients to recover, and start new
//! epochs (the promoted replica may lack the newest publications); and a primary demoted
//! while it stays up must not keep subscribers it no longer publishes to.

use std::time::Duration;

use sessionhub::broker::PublishOptions;
use sessionhub::redis::RedisConfig;
use sessionhub_testkit::conformance::broker::{BrokerFixture, BrokerNode, position, redis_nodes};
use sessionhub_testkit::{RedisSentinel, redis_command};

/// A failover test's bound: Sentinel needs ~1 s to call the primary down and a few more to
/// promote the replica.
const FAILOVER_LIMIT: Duration = Duration::from_secs(60);
/// How long a node may take to follow the primary once the Sentinels name it.
const FOLLOW: Duration = Duration::from_secs(10);

fn config(redis: &RedisSentinel) -> RedisConfig {
    RedisConfig::sentinel(&redis.sentinel_addrs(), redis.master_name()).unwrap()
}

async fn sentinel() -> BrokerFixture {
    let redis = RedisSentinel::start_lean().await;
    redis_nodes(config(&redis), redis)
}

sessionhub_testkit::broker_conformance!(sentinel);

async fn publish_until_taken(
    publisher: &BrokerNode,
    subscriber: &BrokerNode,
    channel: &str,
) -> (String, String) {
    sessionhub_testkit::conformance::broker::publish_until_taken(
        publisher, subscriber, channel, FOLLOW,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_followed_and_clients_told_to_recover() {
    tokio::time::timeout(FAILOVER_LIMIT, async {
        let mut redis = RedisSentinel::start_async().await;
        let old = redis.primary_port();
        // The test keeps the servers, to fail them over.
        let backend = redis_nodes(config(&redis), ());
        let (subscriber, publisher) = (backend.node().await, backend.node().await);
        subscriber.join("news").await;
        let before = publisher.publish("news", "\"before\"").await;
        subscriber.expect_taken("news", 1).await;

        redis.kill_primary().unwrap();
        redis
            .wait_for_new_primary(old, Duration::from_secs(30))
            .unwrap();

        let (_, epoch) = publish_until_taken(&publisher, &subscriber, "news").await;
        // The promoted replica is another Redis process: what a client remembers from the
        // old primary's epoch cannot be trusted, so it starts over rather than skip.
        assert_ne!(epoch, before.epoch.to_string());
        let recovery = publisher.recover("news", Some(&position(&before))).await;
        assert!(!recovery.recovered, "{recovery:?}");
        assert!(
            !subscriber.sink.resyncs().is_empty(),
            "the node did not ask for a resync"
        );
        subscriber.broker.ping().await.unwrap();
    })
    .await
    .expect("the test did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_does_not_strand_its_subscribers() {
    tokio::time::timeout(FAILOVER_LIMIT, async {
        let redis = RedisSentinel::start_async().await;
        let old = redis.current_primary_port().unwrap();
        // The test keeps the servers, to fail them over.
        let backend = redis_nodes(config(&redis), ());
        let subscriber = backend.node().await;
        subscriber.join("news").await;

        // Sentinel does not close the old primary's connections: only the node's own
        // check that its server is still the primary moves the subscription. A node that
        // starts after the failover publishes on the new primary, so what it publishes
        // reaches the subscriber only once it has moved.
        redis.failover().unwrap();
        redis
            .wait_for_new_primary(old, Duration::from_secs(30))
            .unwrap();
        let publisher = backend.node().await;
        publish_until_taken(&publisher, &subscriber, "news").await;
        assert!(
            !subscriber.sink.resyncs().is_empty(),
            "the node did not ask for a resync"
        );
    })
    .await
    .expect("the test did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_refused_by_the_old_primary_is_sent_to_the_new_one() {
    tokio::time::timeout(FAILOVER_LIMIT, async {
        let redis = RedisSentinel::start_async().await;
        let old = redis.current_primary_port().unwrap();
        // Cut off from its promoted replica, the old primary refuses writes (NOREPLICAS)
        // instead of taking them; the Sentinels demote it only ~10 s later.
        let setting = "CONFIG SET min-replicas-to-write 1";
        assert_eq!(redis_command(old, setting).unwrap().trim(), "+OK");
        let backend = redis_nodes(config(&redis), ());
        let publisher = backend.node().await;
        publisher.publish("news", "\"before\"").await;

        redis.failover().unwrap();
        redis
            .wait_for_new_primary(old, Duration::from_secs(30))
            .unwrap();
        let subscriber = backend.node().await;
        subscriber.join("news").await;
        // The first publish after the failover goes to the old primary, is refused, and is
        // sent once more, to the new one: the caller sees one success, not an error.
        let options = PublishOptions::with_history();
        let receipt = publisher
            .broker
            .publish("news", "\"after\"".into(), &options)
            .await
            .expect("the refused publish is sent again to the new primary");
        assert_eq!(receipt.nodes, 1, "{receipt:?}");
        subscriber.expect_taken("news", 1).await;
    })
    .await
    .expect("the test did not finish in time");
}

/// The subscriber asks the Sentinels every 2 s whether its server is still the primary, on
/// one kept connection per Sentinel, not a new one each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_check_keeps_its_sentinel_connection() {
    tokio::time::timeout(FAILOVER_LIMIT, async {
        let redis = RedisSentinel::start_lean().await;
        let backend = redis_nodes(config(&redis), ());
        let node = backend.node().await;
        node.join("news").await;
        let sentinel = redis.sentinel_addrs()[0].clone();
        let received = || {
            let sentinel = sentinel.clone();
            async move {
                let client = ::redis::Client::open(format!("redis://{sentinel}")).unwrap();
                let mut connection = client.get_multiplexed_async_connection().await.unwrap();
                let stats: String = ::redis::cmd("INFO")
                    .arg("stats")
                    .query_async(&mut connection)
                    .await
                    .unwrap();
                stats
                    .lines()
                    .find_map(|l| l.strip_prefix("total_connections_received:"))
                    .unwrap()
                    .trim()
                    .parse::<u64>()
                    .unwrap()
            }
        };
        let before = received().await;
        // Three checks at least.
        tokio::time::sleep(Duration::from_millis(6500)).await;
        let after = received().await;
        // One for our own second question, at most one more for the node.
        assert!(after - before <= 2, "{} new connections", after - before);
    })
    .await
    .expect("the test did not finish in time");
}
