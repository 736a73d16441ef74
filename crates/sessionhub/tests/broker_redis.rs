//! `RedisBroker`, on a `redis-server` of each test's own (never port 6379): the broker
//! conformance suite (`sessionhub_testkit::conformance::broker`), then what only a
//! cross-node broker can show: several nodes, selective subscription, history shared
//! between nodes, channel names, and what happens when Redis stalls, restarts or loses its
//! data. It runs past 700 lines because each of those is a real Redis brought into that state
//! its own way, and they read best side by side.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use sessionhub::broker::{
    BatchItem, Broker, Deliver, HistoryConfig, PublishOptions, RedisBroker, RedisBrokerConfig,
};
use sessionhub::redis::IDLE_CHECK;
use sessionhub_testkit::conformance::broker::{
    BOUND, BrokerFixture, BrokerNode, Probe, QUIET, Recorder, at, checks, keyed, position,
    publication, wait_ready, within,
};
use sessionhub_testkit::{Balancer, RedisServer, redis_command};
use tokio::time::{Instant, sleep, timeout};

async fn redis() -> BrokerFixture {
    let server = RedisServer::start_async().await;
    let url = server.url();
    fixture_on(server, url)
}

/// Nodes on `url` (served by `server`), each a broker of its own.
fn fixture_on(server: RedisServer, url: String) -> BrokerFixture {
    BrokerFixture::new(server, move |sink, history| {
        let url = url.clone();
        async move { redis_broker(&url, history, sink).await as Arc<dyn Broker> }
    })
}

sessionhub_testkit::broker_conformance!(redis);

/// A broker on `url` keeping `history` and delivering into `sink`, waited for until it is
/// ready.
async fn redis_broker(
    url: &str,
    history: HistoryConfig,
    sink: Arc<dyn Deliver>,
) -> Arc<RedisBroker> {
    let broker = RedisBrokerConfig::new(url)
        .unwrap()
        .history(history)
        .start(sink);
    wait_ready(&*broker).await;
    broker
}

/// A node on `redis`, waited for until its subscription connection is up.
async fn redis_node(redis: &RedisServer) -> (BrokerNode, Arc<RedisBroker>) {
    let sink = Arc::new(Recorder::default());
    let broker = RedisBroker::connect(&redis.url(), "sessionhub:", sink.clone())
        .await
        .expect("connecting to the test's redis");
    let node = BrokerNode {
        broker: broker.clone(),
        sink,
    };
    (node, broker)
}

/// What a command connection learns about Redis (its run_id, whether it keeps every write)
/// it learns once, when it opens: a publish is the script and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publishes_ask_redis_nothing_but_the_script() {
    within(async {
        let redis = RedisServer::start().unwrap();
        let (node, _broker) = redis_node(&redis).await;
        node.join("room:asks").await;
        // Opens the command connection, which asks INFO and CONFIG GET.
        node.publish("room:asks", "0").await;
        let (calls, ()) = redis
            .calls_during(async {
                for n in 1..=20 {
                    node.publish("room:asks", &n.to_string()).await;
                }
            })
            .await
            .unwrap();
        assert_eq!(calls.get("evalsha"), Some(&20), "{calls:?}");
        assert_eq!(
            calls.get("info"),
            Some(&1),
            "only the INFO that measured: {calls:?}"
        );
        assert!(!calls.contains_key("config|get"), "{calls:?}");
    })
    .await;
}

/// A batch is one pipeline: one round trip (one read event in Redis) for many items, and
/// still whole after Redis forgot the script (SCRIPT FLUSH), which costs one more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_batch_is_one_round_trip() {
    within(async {
        let redis = RedisServer::start().unwrap();
        let (node, _broker) = redis_node(&redis).await;
        node.publish("room:warm", "0").await;
        let items: Vec<BatchItem> = (1..=10)
            .map(|n| BatchItem {
                channel: format!("room:{}", n % 3),
                data: n.to_string().into(),
                idempotency_key: None,
            })
            .collect();
        // Read events during `work`, less what measuring costs (its own connections).
        let reads = || redis.total_reads().unwrap();
        let measuring = {
            let before = reads();
            reads() - before
        };
        let batch = async || {
            let before = reads();
            let results = node.broker.publish_batch(&items).await;
            let offsets: Vec<u64> = results.iter().map(|r| r.as_ref().unwrap().offset).collect();
            (reads() - before - measuring, offsets)
        };
        let (spent, offsets) = batch().await;
        assert_eq!(
            offsets,
            [1, 1, 1, 2, 2, 2, 3, 3, 3, 4],
            "in order per channel"
        );
        // The subscription's PING (every 2 s) may add one.
        assert!(spent <= 2, "{spent} round trips for one batch");

        redis.command("SCRIPT FLUSH").unwrap();
        let (spent, offsets) = batch().await;
        assert_eq!(
            offsets,
            [5, 4, 4, 6, 5, 5, 7, 6, 6, 8],
            "after the first batch's"
        );
        assert!(spent <= 3, "{spent} round trips after SCRIPT FLUSH");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unsubscribed_node_is_sent_nothing() {
    within(async {
        let redis = RedisServer::start().unwrap();
        let (node, _) = redis_node(&redis).await;
        node.join("user:dave").await;
        node.leave("user:dave");
        node.join("user:fence").await;
        let receipt = node.publish("user:dave", "after leaving").await;
        sleep(QUIET).await;
        // Not merely ignored: Redis never sent it to this node. (The sink alone cannot tell:
        // the broker drops what it no longer wants before the sink sees it.)
        assert_eq!(receipt.nodes, 0, "Redis still sends user:dave to this node");
        assert_eq!(node.sink.calls(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_nodes_on_one_channel_both_receive() {
    within(async {
        let redis = RedisServer::start().unwrap();
        let (a, _) = redis_node(&redis).await;
        let (b, _) = redis_node(&redis).await;
        a.join("user:erin").await;
        b.join("user:erin").await;
        let receipt = a.publish("user:erin", "to both").await;
        assert_eq!(receipt.nodes, 2);
        assert_eq!(
            receipt.connections, None,
            "a node cannot count others' sockets"
        );
        assert_eq!(a.expect_taken("user:erin", 1).await, ["to both"]);
        assert_eq!(b.expect_taken("user:erin", 1).await, ["to both"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_node_receives_only_its_channels() {
    within(async {
        let redis = RedisServer::start().unwrap();
        let (a, _) = redis_node(&redis).await;
        let (b, _) = redis_node(&redis).await;
        a.join("user:a").await;
        b.join("user:b").await;
        assert_eq!(a.publish("user:b", "for b").await.nodes, 1);
        assert_eq!(b.expect_taken("user:b", 1).await, ["for b"]);
        sleep(QUIET).await;
        assert_eq!(a.sink.calls(), 0, "node a is not subscribed to user:b");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_channel_names_use_the_prefix_and_a_hash_tag() {
    within(async {
        let redis = RedisServer::start().unwrap();
        let sink = Arc::new(Recorder::default());
        let broker = RedisBroker::connect(&redis.url(), "app:", sink.clone())
            .await
            .unwrap();
        assert_eq!(broker.redis_channel("user:f"), "app:ch:{user:f}");
        let node = BrokerNode {
            broker: broker.clone(),
            sink,
        };
        node.join("user:f").await;
        // Another program publishing on the documented name, in the documented envelope
        // `<offset>:<epoch>:<data>`, reaches the node.
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let nodes: usize = redis::cmd("PUBLISH")
            .arg("app:ch:{user:f}")
            .arg("0::from outside")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(nodes, 1);
        assert_eq!(node.expect_taken("user:f", 1).await, ["from outside"]);
        // The default prefix is a different namespace.
        let nodes: usize = redis::cmd("PUBLISH")
            .arg("sessionhub:ch:{user:f}")
            .arg("0::elsewhere")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(nodes, 0);
        // History keys live under the prefix, in the channel's hash slot.
        node.publish("user:f", "kept").await;
        let kind: String = redis::cmd("TYPE")
            .arg("app:ch:{user:f}:history")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(kind, "stream");
        let kind: String = redis::cmd("TYPE")
            .arg("app:ch:{user:f}:meta")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(kind, "hash");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_drops_payloads_that_are_not_utf8_and_keeps_going() {
    within(async {
        let redis = RedisServer::start().unwrap();
        let (node, broker) = redis_node(&redis).await;
        node.join("user:g").await;
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        // Not UTF-8, then UTF-8 but not an envelope: both dropped, nothing else affected.
        for payload in [&[b'0', b':', b':', 0xff, 0xfe, b'x'][..], b"no envelope"] {
            let _: usize = redis::cmd("PUBLISH")
                .arg(broker.redis_channel("user:g"))
                .arg(payload)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        node.publish("user:g", "valid").await;
        assert_eq!(node.expect_taken("user:g", 1).await, ["valid"]);
        sleep(QUIET).await;
        assert_eq!(node.sink.taken_on("user:g"), ["valid"]);
        assert!(broker.ping().await.is_ok());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dropping_the_broker_closes_its_subscription() {
    within(async {
        let redis = RedisServer::start().unwrap();
        let (a, _) = redis_node(&redis).await;
        let (b, b_broker) = redis_node(&redis).await;
        a.join("user:h").await;
        b.join("user:h").await;
        assert_eq!(a.publish("user:h", "1").await.nodes, 2);
        drop(b);
        drop(b_broker);
        let deadline = Instant::now() + BOUND;
        while a.publish("user:h", "2").await.nodes != 1 {
            assert!(
                Instant::now() < deadline,
                "node b's subscription outlived it"
            );
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_at_start_is_reported_not_hidden() {
    within(async {
        let mut redis = RedisServer::start().unwrap();
        let url = redis.url();
        redis.stop();
        let started = Instant::now();
        let sink = Arc::new(Recorder::default());
        assert!(
            RedisBroker::connect(&url, "sessionhub:", sink.clone())
                .await
                .is_err()
        );
        let broker = RedisBrokerConfig::new(&url).unwrap().start(sink.clone());
        assert!(broker.ping().await.is_err());
        assert!(broker.subscribe("user:i").await.is_err());
        let options = PublishOptions::with_history();
        assert!(
            broker
                .publish("user:i", "x".into(), &options)
                .await
                .is_err()
        );
        assert!(broker.recover("user:i", None).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(8));
        // Once Redis appears the broker comes up on its own.
        redis.restart().unwrap();
        wait_ready(&*broker).await;
        assert_eq!(
            broker.reconnects(),
            0,
            "a first connection is not a reconnection"
        );
        assert!(sink.resyncs().is_empty(), "nor does it call for a resync");
    })
    .await;
}

#[test]
fn redis_url_is_checked_up_front() {
    assert!(RedisBrokerConfig::new("not a url").is_err());
    assert!(RedisBrokerConfig::new("http://127.0.0.1:1").is_err());
    assert!(RedisBrokerConfig::new("redis://127.0.0.1:1").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_reported_then_recovered_with_resubscription() {
    within(async {
        let mut redis = RedisServer::start().unwrap();
        let (node, broker) = redis_node(&redis).await;
        let (other, _) = redis_node(&redis).await;
        node.join("user:j").await;
        node.join("user:k").await;
        assert_eq!(other.publish("user:j", "before").await.nodes, 1);
        node.expect_taken("user:j", 1).await;

        redis.stop();
        let stopped = Instant::now();
        let options = PublishOptions::with_history();
        let failed = timeout(
            Duration::from_secs(2),
            node.broker.publish("user:j", "while down".into(), &options),
        )
        .await
        .expect("publish reports an outage within 2 s");
        assert!(failed.is_err(), "publish while Redis is down: {failed:?}");
        let deadline = stopped + Duration::from_secs(2);
        while timeout(Duration::from_secs(2), broker.ping())
            .await
            .expect("ping is bounded")
            .is_ok()
        {
            assert!(
                Instant::now() < deadline,
                "ping stayed green with Redis down"
            );
            sleep(Duration::from_millis(20)).await;
        }

        redis.restart().unwrap();
        let restarted = Instant::now();
        while timeout(Duration::from_secs(2), broker.ping())
            .await
            .expect("ping is bounded")
            .is_err()
        {
            assert!(
                restarted.elapsed() < Duration::from_secs(2),
                "not ready within 2 s of Redis coming back"
            );
            sleep(Duration::from_millis(20)).await;
        }
        assert!(broker.reconnects() >= 1);
        // Nothing re-subscribed from here: the broker did it itself, for every channel.
        // `other` may need a moment longer to notice its own connection was replaced.
        let deadline = Instant::now() + BOUND;
        loop {
            match other
                .broker
                .publish("user:k", "after".into(), &options)
                .await
            {
                Ok(receipt) if receipt.nodes == 1 => break,
                _ => {
                    assert!(Instant::now() < deadline, "publish did not recover");
                    sleep(Duration::from_millis(20)).await;
                }
            }
        }
        assert_eq!(node.expect_taken("user:k", 1).await, ["after"]);
        assert_eq!(node.publish("user:j", "after").await.nodes, 1);
        assert_eq!(node.expect_taken("user:j", 2).await, ["before", "after"]);
    })
    .await;
}

/// Closes the broker's command connection from Redis' side (the subscription is not a
/// `normal` client), as Redis' `timeout` or a proxy would.
fn kill_the_command_connection(redis: &RedisServer) {
    let reply = redis.command("CLIENT KILL TYPE normal").unwrap();
    assert!(
        reply.starts_with(":1"),
        "killed the command connection: {reply}"
    );
}

/// After the idle check's interval without a command, a command connection that Redis
/// closed meanwhile (its `timeout` setting) is found by a PING and replaced: a publish
/// without a key, which is never sent twice, goes out on the new one, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publish_after_an_idle_spell_goes_out_on_a_live_connection() {
    within(async {
        let redis = RedisServer::start().unwrap();
        let (node, _broker) = redis_node(&redis).await;
        let channel = "room:idle";
        node.join(channel).await;
        node.publish(channel, "{\"n\":1}").await;
        kill_the_command_connection(&redis);
        sleep(IDLE_CHECK + Duration::from_millis(100)).await;
        assert_eq!(node.publish(channel, "{\"n\":2}").await.offset, 2);
        assert_eq!(
            node.expect_taken(channel, 2).await,
            ["{\"n\":1}", "{\"n\":2}"]
        );
    })
    .await;
}

/// A command connection that goes silent (a firewall or NAT forgot it: no FIN, no RST) is
/// replaced after one reply timeout, and a harmless command is sent again on the new one
/// within the command bound; a publish without a key that timed out is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_silent_command_connection_is_replaced_after_one_timeout() {
    within(async {
        let redis = RedisServer::start().unwrap();
        let balancer =
            Balancer::start(&[format!("127.0.0.1:{}", redis.port()).parse().unwrap()]).unwrap();
        let url = format!("redis://{}", balancer.addr());
        let sink = Arc::new(Recorder::default());
        let broker = RedisBroker::connect(&url, "sessionhub:", sink.clone())
            .await
            .expect("connecting through the balancer");
        let node = BrokerNode {
            broker: broker.clone(),
            sink,
        };
        let channel = "room:silent";
        node.join(channel).await;
        let first = node.publish(channel, "{\"n\":1}").await;

        balancer.silence();
        let started = Instant::now();
        let recovery = node.recover(channel, Some(&position(&first))).await;
        assert!(recovery.recovered, "recovered on a new connection");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "the first attempt waited for its reply timeout: {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let keyed_receipt = node.publish_with(channel, "{\"n\":2}", &keyed("k")).await;
        assert_eq!(keyed_receipt.offset, 2);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "the silent connection was replaced, not used again: {:?}",
            started.elapsed()
        );

        balancer.silence();
        let plain = node
            .broker
            .publish(channel, "{\"n\":3}".into(), &PublishOptions::with_history())
            .await;
        let error = plain.expect_err("a publish without a key is not sent twice");
        assert!(error.to_string().contains("timed out"), "{error}");
        assert_eq!(
            node.recover(channel, None).await.offset,
            2,
            "nothing published"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unresponsive_server_is_detected_and_recovered() {
    within(async {
        let redis = RedisServer::start().unwrap();
        let (node, broker) = redis_node(&redis).await;
        node.join("user:l").await;
        // Every client stalls, but no connection closes: only unanswered commands tell.
        assert!(
            redis
                .command("CLIENT PAUSE 4000 ALL")
                .unwrap()
                .starts_with("+OK")
        );
        let paused = Instant::now();
        let ping = timeout(Duration::from_secs(2), broker.ping())
            .await
            .expect("ping is bounded while Redis stalls");
        assert!(ping.is_err());
        // The subscription connection's own probe gives it up and a fresh one takes over
        // once Redis answers again.
        let deadline = paused + Duration::from_secs(10);
        while broker.reconnects() == 0 || broker.ping().await.is_err() {
            assert!(Instant::now() < deadline, "never recovered from the stall");
            sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(node.publish("user:l", "after the stall").await.nodes, 1);
        assert_eq!(node.expect_taken("user:l", 1).await, ["after the stall"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_resp3_urls_work_too() {
    within(async {
        let server = RedisServer::start().unwrap();
        let url = format!("{}/?protocol=resp3", server.url());
        let sink = Arc::new(Recorder::default());
        let broker = RedisBroker::connect(&url, "sessionhub:", sink.clone())
            .await
            .unwrap();
        let node = BrokerNode { broker, sink };
        checks::quick_resubscription_on(&node).await;
        let backend = fixture_on(server, url);
        checks::publish_reaches_subscriber_byte_for_byte(&backend).await;
        checks::recover_returns_exactly_the_missed_publications(&backend).await;
        checks::an_idempotency_key_publishes_once(&backend).await;
        checks::publishes_without_history_have_no_offset_and_are_not_kept(&backend).await;
    })
    .await;
}

/// Two nodes on one Redis share one history: what one publishes, the other delivers and
/// recovers identically, and an idempotency key seen by one holds for the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_nodes_share_one_history() {
    within(async {
        let redis = RedisServer::start().unwrap();
        let (a, _) = redis_node(&redis).await;
        let (b, _) = redis_node(&redis).await;
        let channel = "room:shared";
        b.join(channel).await;
        let mut sent = Vec::new();
        for payload in ["{\"n\":1}", "{\"text\":\"日本語 🚀\"}", "\"a:b:c\""] {
            let receipt = a.publish(channel, payload).await;
            assert_eq!(receipt.nodes, 1, "b took it");
            sent.push(publication(&receipt, payload));
        }
        assert_eq!(b.expect_publications(channel, 3).await, sent);
        let since = at(&sent[0].epoch, 0);
        let from_a = a.recover(channel, Some(&since)).await;
        let from_b = b.recover(channel, Some(&since)).await;
        assert!(from_b.recovered);
        assert_eq!(from_b.publications, sent);
        assert_eq!(from_a, from_b, "the same history from either node");
        let position = b.recover(channel, None).await;
        assert_eq!((&position.epoch, position.offset), (&sent[0].epoch, 3));

        let first = a.publish_with(channel, "{\"once\":1}", &keyed("k")).await;
        let again = b.publish_with(channel, "{\"once\":2}", &keyed("k")).await;
        assert_eq!((first.offset, first.duplicate), (4, false));
        assert_eq!((again.offset, again.duplicate), (4, true));
        b.expect_publications(channel, 4).await;
        sleep(QUIET).await;
        assert_eq!(b.sink.publications_on(channel).len(), 4, "published once");
    })
    .await;
}

/// Redis forgetting everything (FLUSHALL) starts every channel in a new epoch, which
/// clients see as "not recovered" rather than as a history that silently restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_its_data_starts_a_new_epoch() {
    within(async {
        let redis = RedisServer::start().unwrap();
        let (node, _) = redis_node(&redis).await;
        let channel = "room:lost";
        node.join(channel).await;
        node.publish(channel, "1").await;
        let before = node.publish(channel, "2").await;
        assert!(redis.command("FLUSHALL").unwrap().starts_with("+OK"));

        let after = node.publish(channel, "3").await;
        assert_eq!(after.offset, 1, "offsets start over");
        assert_ne!(after.epoch, before.epoch, "in a new epoch");
        let recovery = node.recover(channel, Some(&position(&before))).await;
        assert!(!recovery.recovered);
        assert!(recovery.publications.is_empty());
        assert_eq!((&recovery.epoch, recovery.offset), (&after.epoch, 1));
        let live = node.expect_publications(channel, 3).await;
        assert_eq!(live[2], publication(&after, "3"));
        let fresh = node.recover(channel, Some(&position(&after))).await;
        assert!(fresh.recovered && fresh.publications.is_empty());

        // A channel only recovered from, never published on, gets a new epoch as well.
        let asked = node.recover("room:quiet", None).await;
        assert!(redis.command("FLUSHALL").unwrap().starts_with("+OK"));
        let asked_again = node.recover("room:quiet", None).await;
        assert_ne!(asked_again.epoch, asked.epoch);
        let stale = node.recover("room:quiet", Some(&at(&asked.epoch, 0))).await;
        assert!(!stale.recovered);
    })
    .await;
}

/// A publish retried with its idempotency key after the channel's epoch changed (a
/// failover, or the meta hash lost while the key survived) is answered with the offset and
/// epoch it was first published under, not that offset in the new epoch, where it may name
/// another publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_retried_key_keeps_its_first_epoch_across_an_epoch_change() {
    within(async {
        let redis = RedisServer::start().unwrap();
        let (node, broker) = redis_node(&redis).await;
        let channel = "room:moved";
        node.join(channel).await;
        let first = node.publish_with(channel, "1", &keyed("k1")).await;
        let meta = format!("{}:meta", broker.redis_channel(channel));
        assert!(
            redis
                .command(&format!("DEL {meta}"))
                .unwrap()
                .starts_with(':')
        );

        let other = node.publish(channel, "2").await;
        assert_ne!(other.epoch, first.epoch);
        assert_eq!(other.offset, 1, "the new epoch starts over");
        let again = node.publish_with(channel, "1", &keyed("k1")).await;
        assert!(again.duplicate);
        assert_eq!((again.offset, &again.epoch), (first.offset, &first.epoch));
    })
    .await;
}

/// A restarted (empty) Redis: the broker resubscribes, and only then tells the sink to
/// resync, once; the old positions are not recovered, and history works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_calls_for_a_resync_once_resubscribed() {
    within(async {
        let mut redis = RedisServer::start().unwrap();
        let (node, broker) = redis_node(&redis).await;
        let channel = "room:restart";
        node.join(channel).await;
        node.join("room:probe").await;
        // At the moment the sink is told to resync, does Redis deliver to this node?
        let (port, probe_channel) = (redis.port(), broker.redis_channel("room:probe"));
        let probe: Probe = Box::new(move || {
            // Runs inside the broker, which must not panic: what went wrong is the answer.
            redis_command(port, &format!("PUBLISH {probe_channel} 0::probe"))
                .unwrap_or_else(|e| format!("error: {e}"))
        });
        assert!(node.sink.set_resync_probe(probe).is_ok());
        let before = node.publish(channel, "{\"n\":1}").await;
        // Delivered before Redis dies (it may answer a publish before writing it out).
        node.expect_taken(channel, 1).await;

        redis.restart().unwrap();
        let deadline = Instant::now() + BOUND;
        while node.sink.resyncs().is_empty() {
            assert!(Instant::now() < deadline, "no resync after the restart");
            sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            node.sink.resyncs(),
            [Some(":1\r\n".to_owned())],
            "one resync, once this node was subscribed again"
        );
        assert_eq!(broker.reconnects(), 1);
        assert_eq!(node.expect_taken("room:probe", 1).await, ["probe"]);

        let recovery = node.recover(channel, Some(&position(&before))).await;
        assert!(!recovery.recovered, "Redis lost the history");
        assert!(recovery.publications.is_empty());
        assert_ne!(recovery.epoch, before.epoch);
        assert_eq!(recovery.offset, 0);
        let after = node.publish(channel, "{\"n\":2}").await;
        assert_eq!((&after.epoch, after.offset), (&recovery.epoch, 1));
        assert_eq!(
            node.expect_publications(channel, 2).await,
            [
                publication(&before, "{\"n\":1}"),
                publication(&after, "{\"n\":2}")
            ]
        );
        let since = node.recover(channel, Some(&at(&recovery.epoch, 0))).await;
        assert!(since.recovered);
        assert_eq!(since.publications, [publication(&after, "{\"n\":2}")]);
        sleep(QUIET).await;
        assert_eq!(node.sink.resyncs().len(), 1, "still one");
    })
    .await;
}

/// Every operation reports an outage within two seconds, whether or not it may retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_every_operation_within_two_seconds() {
    async fn fails_fast<T: Debug, E: Debug>(what: &str, op: impl Future<Output = Result<T, E>>) {
        let started = Instant::now();
        let result = timeout(Duration::from_secs(2), op)
            .await
            .unwrap_or_else(|_| panic!("{what} hung with Redis down"));
        assert!(result.is_err(), "{what} with Redis down: {result:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "{what}");
    }

    within(async {
        let mut redis = RedisServer::start().unwrap();
        let (node, broker) = redis_node(&redis).await;
        node.join("room:down").await;
        node.publish("room:down", "1").await;
        redis.stop();
        let (plain, history) = (PublishOptions::default(), PublishOptions::with_history());
        let key = keyed("k");
        let b = &node.broker;
        fails_fast("publish", b.publish("room:down", "2".into(), &history)).await;
        fails_fast("keyed publish", b.publish("room:down", "2".into(), &key)).await;
        fails_fast("plain publish", b.publish("room:down", "2".into(), &plain)).await;
        fails_fast("recover", b.recover("room:down", None)).await;
        fails_fast("ping", broker.ping()).await;
        // And again, now that the command connection's replacement was refused too.
        fails_fast("publish", b.publish("room:down", "2".into(), &history)).await;
        fails_fast("keyed publish", b.publish("room:down", "2".into(), &key)).await;
        fails_fast("recover", b.recover("room:down", None)).await;
    })
    .await;
}

/// The command connection cannot tell by itself that Redis went away: the first command
/// after a restart used to fail with "broken pipe". Once the broker says it is back, the
/// very first command of each kind succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_first_command_after_a_restart_succeeds() {
    within(async {
        let mut redis = RedisServer::start().unwrap();
        let (node, broker) = redis_node(&redis).await;
        let channel = "room:first";
        node.join(channel).await;
        node.publish(channel, "0").await;
        // Redis may die after answering a publish but before writing it to subscribers:
        // each publication is waited for before the next restart.

        // Waits for the broker to be back without touching the command connection.
        async fn restart(redis: &mut RedisServer, broker: &RedisBroker) {
            let reconnects = broker.reconnects();
            redis.restart().unwrap();
            let deadline = Instant::now() + BOUND;
            while broker.reconnects() == reconnects {
                assert!(Instant::now() < deadline, "the broker did not reconnect");
                sleep(Duration::from_millis(5)).await;
            }
        }
        let history = PublishOptions::with_history();

        // A publish without a key, which the broker could not safely retry, comes first.
        node.expect_taken(channel, 1).await;
        restart(&mut redis, &broker).await;
        let first = timeout(BOUND, node.broker.publish(channel, "1".into(), &history))
            .await
            .expect("bounded")
            .expect("the first publish after a restart succeeds");
        assert_eq!(first.offset, 1, "Redis came back empty");

        node.expect_taken(channel, 2).await;
        restart(&mut redis, &broker).await;
        let recovery = timeout(BOUND, node.broker.recover(channel, None))
            .await
            .expect("bounded");
        assert!(
            recovery.is_ok(),
            "the first recover after a restart: {recovery:?}"
        );

        restart(&mut redis, &broker).await;
        let ping = broker.ping().await;
        assert!(ping.is_ok(), "the first ping after a restart: {ping:?}");
        let next = timeout(BOUND, node.broker.publish(channel, "2".into(), &history))
            .await
            .expect("bounded")
            .expect("the first publish after ping succeeds");
        assert_eq!(next.offset, 1);
        assert_eq!(node.expect_taken(channel, 3).await, ["0", "1", "2"]);
    })
    .await;
}

/// When only the command connection is lost (Redis closed it; the subscription lives on,
/// so nothing warns the broker), a command that can safely be sent twice is retried once,
/// on a fresh connection; a publish without a key is not, since "broken pipe" may also mean
/// it reached Redis: it succeeds, or fails without having been published.
///
/// A command sent just as redis-rs' connection task ends on the FIN hears nothing until its
/// reply times out (tokio-rs/tokio#7714; 1 to 2 runs in 100 here): the retry after a
/// timeout is what keeps the harmless ones from failing then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_command_connection_is_retried_only_when_harmless() {
    within(async {
        let redis = RedisServer::start().unwrap();
        let (node, broker) = redis_node(&redis).await;
        let channel = "room:killed";
        node.join(channel).await;
        let first = node.publish(channel, "{\"n\":1}").await;
        let kill = || kill_the_command_connection(&redis);

        kill();
        let recovery = node.recover(channel, Some(&position(&first))).await;
        assert!(recovery.recovered);
        kill();
        let ping = broker.ping().await;
        assert!(ping.is_ok(), "PING is retried: {ping:?}");
        kill();
        let keyed_receipt = node.publish_with(channel, "{\"n\":2}", &keyed("k")).await;
        assert!(
            !keyed_receipt.duplicate,
            "published once: {keyed_receipt:?}"
        );
        assert_eq!(keyed_receipt.offset, 2, "a keyed publish is published once");

        kill();
        let plain = node
            .broker
            .publish(channel, "{\"n\":3}".into(), &PublishOptions::with_history())
            .await;
        let top = node.recover(channel, None).await.offset;
        match plain {
            Ok(receipt) => assert_eq!(receipt.offset, 3),
            Err(_) => assert_eq!(top, 2, "a failed publish was not published"),
        }
        let expected = if top == 3 {
            vec!["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]
        } else {
            vec!["{\"n\":1}", "{\"n\":2}"]
        };
        assert_eq!(node.expect_taken(channel, expected.len()).await, expected);
        sleep(QUIET).await;
        assert_eq!(node.sink.taken_on(channel), expected, "nothing twice");
        assert_eq!(broker.reconnects(), 0, "the subscription was never lost");
        assert!(node.sink.resyncs().is_empty());
    })
    .await;
}
