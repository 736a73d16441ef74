//! `RedisBroker` on a Redis Cluster (three primaries with a replica each, of each test's
//! own on free ports): the broker conformance suite (`sessionhub_testkit::conformance::
//! broker`), then what breaks sharded pub/sub in other clients (docs/cluster.md): channels
//! in many slots resubscribed after a killed primary fails over (CROSSSLOT, MOVED), a slot
//! migrated in place (the server's `sunsubscribe`), a replica promoted while the old
//! primary stays up. In each, a node must end up subscribed where every channel lives, ask
//! its clients to recover, and start new epochs where a promoted replica may lack writes.

use std::collections::HashMap;
use std::time::Duration;

use sessionhub::broker::{BatchItem, Broker};
use sessionhub::redis::{IDLE_CHECK, RedisConfig};
use sessionhub_testkit::conformance::broker::{
    BrokerFixture, position, publish_until_taken, redis_nodes,
};
use sessionhub_testkit::{RedisCluster, redis_command};
use tokio::time::{Instant, sleep};

/// A fault test's bound: a failover takes ~4 s, the cluster's start ~3 s.
const FAULT_LIMIT: Duration = Duration::from_secs(60);
/// How long a node may take to follow a change once the cluster has settled: the probe
/// reads the slot map every 2 s.
const FOLLOW: Duration = Duration::from_secs(10);

fn config(cluster: &RedisCluster) -> RedisConfig {
    RedisConfig::cluster(&cluster.urls()).unwrap()
}

async fn cluster() -> BrokerFixture {
    let cluster = RedisCluster::start_async().await;
    redis_nodes(config(&cluster), cluster)
}

sessionhub_testkit::broker_conformance!(cluster);

/// `count` channel names whose slots are spread over every primary, with the port of the
/// primary serving each.
fn spread_channels(cluster: &RedisCluster, count: usize) -> Vec<(String, u16)> {
    (0..count)
        .map(|i| {
            let channel = format!("room:{i}");
            let redis_channel = format!("{}ch:{{{channel}}}", sessionhub::redis::DEFAULT_PREFIX);
            let slot = cluster.slot_of(&redis_channel).unwrap();
            (channel, cluster.primary_for_slot(slot).unwrap())
        })
        .collect()
}

/// The shard channels each node on `ports` holds subscriptions for.
async fn shard_channels(ports: &[u16]) -> HashMap<u16, Vec<String>> {
    let mut held = HashMap::new();
    for &port in ports {
        let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
            continue;
        };
        let channels: Vec<String> = ::redis::cmd("PUBSUB")
            .arg("SHARDCHANNELS")
            .query_async(&mut connection)
            .await
            .unwrap();
        held.insert(port, channels);
    }
    held
}

/// How many client connections on `port` hold sharded subscriptions.
async fn sharded_subscribers(port: u16) -> usize {
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let list: String = ::redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut connection)
        .await
        .unwrap();
    list.lines()
        .filter(|line| {
            line.split(' ')
                .any(|field| field.starts_with("ssub=") && field != "ssub=0")
        })
        .count()
}

/// Waits until `broker` reports ready again, failing after [`FOLLOW`].
async fn ready_again(broker: &dyn Broker) {
    let deadline = Instant::now() + FOLLOW;
    while broker.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the broker did not recover");
        sleep(Duration::from_millis(50)).await;
    }
}

/// A batch over channels on every primary is one pipeline, one round trip, per primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_round_trip_per_primary() {
    tokio::time::timeout(FAULT_LIMIT, async {
        let cluster = RedisCluster::start_async().await;
        let channels = spread_channels(&cluster, 30);
        let backend = redis_nodes(config(&cluster), ());
        let node = backend.node().await;
        let items: Vec<BatchItem> = channels
            .iter()
            .map(|(channel, _)| BatchItem {
                channel: channel.clone(),
                data: "1".into(),
                idempotency_key: None,
            })
            .collect();
        // Loads the script on every primary and opens the links.
        assert!(
            node.broker
                .publish_batch(&items)
                .await
                .iter()
                .all(Result::is_ok)
        );
        let primaries = cluster.primaries().unwrap();
        let reads = || -> Vec<u64> {
            primaries
                .iter()
                .map(|&p| sessionhub_testkit::redis_reads(p).unwrap())
                .collect()
        };
        let (before, again) = (reads(), reads());
        let measuring: Vec<u64> = again.iter().zip(&before).map(|(a, b)| a - b).collect();
        let results = node.broker.publish_batch(&items).await;
        let after = reads();
        let offsets: Vec<u64> = results.iter().map(|r| r.as_ref().unwrap().offset).collect();
        assert_eq!(offsets, vec![2; items.len()]);
        for (i, &port) in primaries.iter().enumerate() {
            let owned = channels.iter().filter(|(_, p)| *p == port).count();
            assert!(
                owned >= 5,
                "the channels spread over primary {port}: {owned}"
            );
            // A replica's REPLCONF ACK (every second) or a slot-map read may add one.
            let spent = after[i] - again[i] - measuring[i];
            assert!(
                spent <= 2,
                "{spent} round trips to primary {port} for {owned} items"
            );
        }
    })
    .await
    .expect("the test did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscription_connection_per_primary_and_channels_in_many_slots() {
    tokio::time::timeout(FAULT_LIMIT, async {
        let cluster = RedisCluster::start_async().await;
        let channels = spread_channels(&cluster, 40);
        let backend = redis_nodes(config(&cluster), ());
        let (subscriber, publisher) = (backend.node().await, backend.node().await);
        for (channel, _) in &channels {
            subscriber.join(channel).await;
        }
        for (channel, _) in &channels {
            publisher.publish(channel, "\"hello\"").await;
        }
        for (channel, _) in &channels {
            subscriber.expect_taken(channel, 1).await;
        }
        // Every primary holds exactly its own channels, on one connection of this node.
        let primaries = cluster.primaries().unwrap();
        let held = shard_channels(&primaries).await;
        for &port in &primaries {
            let mut expected: Vec<String> = channels
                .iter()
                .filter(|(_, owner)| *owner == port)
                .map(|(c, _)| format!("{}ch:{{{c}}}", sessionhub::redis::DEFAULT_PREFIX))
                .collect();
            expected.sort();
            let mut actual = held[&port].clone();
            actual.sort();
            assert_eq!(actual, expected, "primary {port}");
            assert!(!expected.is_empty(), "the channels cover primary {port}");
            assert_eq!(sharded_subscribers(port).await, 1, "primary {port}");
        }
        // Leaving every channel of a primary closes its connection there.
        for (channel, _) in channels.iter().filter(|(_, p)| *p == primaries[0]) {
            subscriber.leave(channel);
        }
        let deadline = Instant::now() + FOLLOW;
        while sharded_subscribers(primaries[0]).await != 0 {
            assert!(Instant::now() < deadline, "the idle connection stayed");
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the test did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_followed_on_every_slot_and_clients_told_to_recover() {
    tokio::time::timeout(FAULT_LIMIT, async {
        let mut cluster = RedisCluster::start_async().await;
        let channels = spread_channels(&cluster, 30);
        let backend = redis_nodes(config(&cluster), ());
        let (subscriber, publisher) = (backend.node().await, backend.node().await);
        for (channel, _) in &channels {
            subscriber.join(channel).await;
        }
        let victim = channels[0].1;
        let mut before = HashMap::new();
        for (channel, _) in &channels {
            before.insert(
                channel.clone(),
                publisher.publish(channel, "\"before\"").await,
            );
        }
        for (channel, _) in &channels {
            subscriber.expect_taken(channel, 1).await;
        }

        cluster.kill(victim).unwrap();
        // The node notices at once (the connection closes) and is not ready meanwhile.
        let deadline = Instant::now() + FOLLOW;
        while subscriber.broker.ping().await.is_ok() {
            assert!(Instant::now() < deadline, "still ready with a primary gone");
            sleep(Duration::from_millis(20)).await;
        }
        let successor = cluster
            .wait_for_failover(victim, Duration::from_secs(30))
            .unwrap();

        for (channel, owner) in &channels {
            let (_, epoch) = publish_until_taken(&publisher, &subscriber, channel, FOLLOW).await;
            let old = &before[channel];
            if *owner == victim {
                // Another Redis process: what clients remember cannot be trusted there.
                assert_ne!(epoch, old.epoch.to_string(), "{channel}");
                let recovery = publisher.recover(channel, Some(&position(old))).await;
                assert!(!recovery.recovered, "{channel}: {recovery:?}");
            } else {
                assert_eq!(epoch, old.epoch.to_string(), "{channel}");
            }
        }
        assert!(
            !subscriber.sink.resyncs().is_empty(),
            "the node did not ask for a resync"
        );
        let held = shard_channels(&[successor]).await;
        let moved = channels.iter().filter(|(_, p)| *p == victim).count();
        assert_eq!(held[&successor].len(), moved);
        ready_again(&*subscriber.broker).await;
    })
    .await
    .expect("the test did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_slot_is_followed() {
    tokio::time::timeout(FAULT_LIMIT, async {
        let cluster = RedisCluster::start_async().await;
        let backend = redis_nodes(config(&cluster), ());
        let (subscriber, publisher) = (backend.node().await, backend.node().await);
        let (channel, from) = spread_channels(&cluster, 1).remove(0);
        // A neighbour in another slot of the same primary stays where it is.
        let neighbour = spread_channels(&cluster, 40)
            .into_iter()
            .find(|(c, p)| *p == from && *c != channel)
            .unwrap()
            .0;
        subscriber.join(&channel).await;
        subscriber.join(&neighbour).await;
        publisher.publish(&channel, "\"before\"").await;
        subscriber.expect_taken(&channel, 1).await;

        let redis_channel = format!("{}ch:{{{channel}}}", sessionhub::redis::DEFAULT_PREFIX);
        let slot = cluster.slot_of(&redis_channel).unwrap();
        let to = *cluster
            .primaries()
            .unwrap()
            .iter()
            .find(|&&p| p != from)
            .unwrap();
        cluster.migrate_slot(slot, to).unwrap();

        // The history moved with the slot's keys, but to another Redis process, which the
        // epoch is bound to: a client is told its position is gone (docs/cluster.md).
        let (_, epoch) = publish_until_taken(&publisher, &subscriber, &channel, FOLLOW).await;
        let first = &subscriber.sink.publications_on(&channel)[0];
        assert_ne!(epoch, first.epoch.to_string());
        let since = sessionhub_testkit::conformance::broker::at(&first.epoch, first.offset);
        assert!(!publisher.recover(&channel, Some(&since)).await.recovered);
        publish_until_taken(&publisher, &subscriber, &neighbour, FOLLOW).await;
        let held = shard_channels(&[from, to]).await;
        assert!(held[&to].contains(&redis_channel), "{held:?}");
        assert!(!held[&from].contains(&redis_channel), "{held:?}");
        assert!(
            !subscriber.sink.resyncs().is_empty(),
            "the node did not ask for a resync"
        );
    })
    .await
    .expect("the test did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_promoted_while_the_old_primary_is_up_is_followed() {
    tokio::time::timeout(FAULT_LIMIT, async {
        let cluster = RedisCluster::start_async().await;
        let backend = redis_nodes(config(&cluster), ());
        let (subscriber, publisher) = (backend.node().await, backend.node().await);
        let (channel, old) = spread_channels(&cluster, 1).remove(0);
        subscriber.join(&channel).await;
        let before = publisher.publish(&channel, "\"before\"").await;
        subscriber.expect_taken(&channel, 1).await;

        // A manual failover: the replica takes over, the old primary stays up as its
        // replica.
        let replica = replica_of(&cluster, old).await;
        let reply = sessionhub_testkit::redis_command(replica, "CLUSTER FAILOVER").unwrap();
        assert_eq!(reply.trim(), "+OK");
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.primaries().unwrap().contains(&old) {
            assert!(Instant::now() < deadline, "the failover did not happen");
            sleep(Duration::from_millis(50)).await;
        }

        let (_, epoch) = publish_until_taken(&publisher, &subscriber, &channel, FOLLOW).await;
        assert_ne!(epoch, before.epoch.to_string());
        // Redis 7.0 keeps the demoted primary's sharded subscribers, and they still get
        // the shard's messages through replication; the node moves to the new primary
        // when its periodic read of the slot map names it, before the old one could be
        // moved to another shard and strand them (redis #12558).
        let redis_channel = format!("{}ch:{{{channel}}}", sessionhub::redis::DEFAULT_PREFIX);
        let deadline = Instant::now() + FOLLOW;
        loop {
            let held = shard_channels(&[replica, old]).await;
            if held[&replica].contains(&redis_channel) && held[&old].is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still subscribed where it was: {held:?}"
            );
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the test did not finish in time");
}

/// The port of a replica of the primary on `primary`.
async fn replica_of(cluster: &RedisCluster, primary: u16) -> u16 {
    for port in cluster.ports() {
        if port == primary {
            continue;
        }
        let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = ::redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut connection)
            .await
            .unwrap();
        if info.contains(&format!("master_port:{primary}")) {
            return port;
        }
    }
    panic!("no replica of {primary}");
}

/// After the idle check's interval without a command, command connections the primaries
/// closed meanwhile (their `timeout` setting) are found by a PING and replaced: a publish
/// without a key, which is never sent twice, goes out on a new one, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_after_an_idle_spell_goes_out_on_a_live_connection() {
    tokio::time::timeout(FAULT_LIMIT, async {
        let cluster = RedisCluster::start_async().await;
        let backend = redis_nodes(config(&cluster), ());
        let node = backend.node().await;
        let (channel, _) = spread_channels(&cluster, 1).remove(0);
        node.join(&channel).await;
        node.publish(&channel, "1").await;
        for port in cluster.primaries().unwrap() {
            let reply = redis_command(port, "CLIENT KILL TYPE normal").unwrap();
            assert!(reply.starts_with(':'), "{reply}");
        }
        sleep(IDLE_CHECK + Duration::from_millis(100)).await;
        assert_eq!(node.publish(&channel, "2").await.offset, 2);
        assert_eq!(node.expect_taken(&channel, 2).await, ["1", "2"]);
    })
    .await
    .expect("the test did not finish in time");
}
