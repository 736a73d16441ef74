//! One set of checks every broker must pass, run against the embedded `LocalBroker` and
//! against `RedisBroker` on a real `redis-server` of each test's own; then what only a
//! cross-node broker can show: several nodes, selective subscription, and recovery from a
//! Redis restart.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures_util::future::join_all;
use sessionhub::broker::{Broker, Deliver, LocalBroker, RedisBroker, RedisBrokerConfig};
use sessionhub_testkit::RedisServer;
use tokio::time::{Instant, sleep, timeout};

/// Every check is bounded: a broker that hangs fails the test instead of stalling it.
const BOUND: Duration = Duration::from_secs(5);
/// How long to watch for a message that must not come.
const QUIET: Duration = Duration::from_millis(200);

/// A delivery sink that behaves like the hub's registry: it takes messages only for
/// channels it has members on, and records every call to it separately, so that a check
/// can tell "the node was sent it" from "a member took it".
#[derive(Default)]
struct Recorder {
    members: Mutex<HashSet<String>>,
    taken: Mutex<Vec<(String, String)>>,
    calls: AtomicUsize,
}

impl Deliver for Recorder {
    fn deliver(&self, channel: &str, payload: &Utf8Bytes) -> usize {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.members.lock().unwrap().contains(channel) {
            return 0;
        }
        self.taken
            .lock()
            .unwrap()
            .push((channel.to_owned(), payload.as_str().to_owned()));
        1
    }
}

impl Recorder {
    fn taken(&self) -> Vec<(String, String)> {
        self.taken.lock().unwrap().clone()
    }

    fn taken_on(&self, channel: &str) -> Vec<String> {
        self.taken()
            .into_iter()
            .filter(|(c, _)| c == channel)
            .map(|(_, p)| p)
            .collect()
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// One node: a broker and the sink it delivers to.
struct Node {
    broker: Arc<dyn Broker>,
    sink: Arc<Recorder>,
}

impl Node {
    /// What the hub does for a channel's first member: add it, then subscribe.
    async fn join(&self, channel: &str) {
        self.sink.members.lock().unwrap().insert(channel.to_owned());
        timeout(BOUND, self.broker.subscribe(channel))
            .await
            .expect("subscribe is bounded")
            .expect("subscribe succeeds");
    }

    /// What the hub does when a channel's last member leaves.
    fn leave(&self, channel: &str) {
        self.sink.members.lock().unwrap().remove(channel);
        self.broker.unsubscribe(channel);
    }

    async fn publish(&self, channel: &str, payload: &str) -> sessionhub::broker::Receipt {
        timeout(
            BOUND,
            self.broker.publish(channel, Utf8Bytes::from(payload)),
        )
        .await
        .expect("publish is bounded")
        .expect("publish succeeds")
    }

    /// Waits until `channel` has taken `count` messages.
    async fn expect_taken(&self, channel: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + BOUND;
        loop {
            let taken = self.sink.taken_on(channel);
            if taken.len() >= count {
                return taken;
            }
            assert!(
                Instant::now() < deadline,
                "{channel}: {} of {count} messages arrived",
                taken.len()
            );
            sleep(Duration::from_millis(5)).await;
        }
    }
}

fn local_node() -> Node {
    let sink = Arc::new(Recorder::default());
    Node {
        broker: Arc::new(LocalBroker::new(sink.clone())),
        sink,
    }
}

/// A node on `redis`, waited for until its subscription connection is up.
async fn redis_node(redis: &RedisServer) -> (Node, Arc<RedisBroker>) {
    let sink = Arc::new(Recorder::default());
    let broker = RedisBroker::connect(&redis.url(), "sessionhub:", sink.clone())
        .await
        .expect("connecting to the test's redis");
    let node = Node {
        broker: broker.clone(),
        sink,
    };
    (node, broker)
}

/// The checks every broker passes, on one node.
mod check {
    use super::*;

    pub(super) async fn publish_reaches_subscriber_byte_for_byte(node: &Node) {
        node.join("user:alice").await;
        let payload = "{\"text\":\"héllo wörld ✓ 日本語 🚀\",\"raw\":\"a\\nb\\t\\\"c\\\"\"}";
        let receipt = node.publish("user:alice", payload).await;
        assert_eq!(receipt.nodes, 1);
        let taken = node.expect_taken("user:alice", 1).await;
        assert_eq!(taken, [payload]);
        // The empty payload is a payload too.
        node.publish("user:alice", "").await;
        assert_eq!(node.expect_taken("user:alice", 2).await, [payload, ""]);
    }

    pub(super) async fn unsubscribed_channel_receives_nothing(node: &Node) {
        let never = node.publish("user:nobody", "lost").await;
        assert_eq!(never.nodes, 0, "a channel nobody joined reaches no node");
        node.join("user:bob").await;
        node.leave("user:bob");
        // Unsubscribing is queued, not awaited; a publish after it may not reach the node
        // once Redis has processed it, which an awaited subscribe of another channel proves.
        node.join("user:fence").await;
        let left = node.publish("user:bob", "after leaving").await;
        assert_eq!(left.nodes, 0, "a channel left reaches no node");
        sleep(QUIET).await;
        assert!(node.sink.taken_on("user:bob").is_empty());
    }

    pub(super) async fn quick_resubscription_ends_subscribed(node: &Node) {
        // In call order without awaiting in between, as joins and leaves race in the hub.
        let first = node.broker.subscribe("user:carol");
        node.broker.unsubscribe("user:carol");
        let second = node.broker.subscribe("user:carol");
        node.sink
            .members
            .lock()
            .unwrap()
            .insert("user:carol".to_owned());
        let _ = timeout(BOUND, first).await.expect("bounded");
        timeout(BOUND, second)
            .await
            .expect("bounded")
            .expect("the last subscribe succeeds");
        for round in 0..20 {
            node.leave("user:carol");
            node.join("user:carol").await;
            let receipt = node.publish("user:carol", &format!("round {round}")).await;
            assert_eq!(receipt.nodes, 1, "round {round}");
            // Taken before the next leave, or the member it was for would be gone.
            let taken = node.expect_taken("user:carol", round + 1).await;
            assert_eq!(taken.last(), Some(&format!("round {round}")));
        }
    }

    pub(super) async fn many_channels(node: &Node) {
        let channels: Vec<String> = (0..300).map(|i| format!("user:many-{i}")).collect();
        join_all(channels.iter().map(|c| node.join(c))).await;
        let receipts = join_all(channels.iter().map(|c| node.publish(c, c))).await;
        assert!(receipts.iter().all(|r| r.nodes == 1), "{receipts:?}");
        for channel in &channels {
            assert_eq!(node.expect_taken(channel, 1).await, [channel.as_str()]);
        }
        sleep(QUIET).await;
        assert_eq!(node.sink.taken().len(), channels.len(), "each exactly once");
    }
}

/// Runs a check against both brokers, each test on its own broker (and Redis).
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod local_broker {
            $(
                #[tokio::test]
                async fn $name() {
                    super::check::$name(&super::local_node()).await;
                }
            )*
        }
        mod redis_broker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let redis = sessionhub_testkit::RedisServer::start().unwrap();
                    let (node, _) = super::redis_node(&redis).await;
                    super::check::$name(&node).await;
                }
            )*
        }
    };
}

conformance!(
    publish_reaches_subscriber_byte_for_byte,
    unsubscribed_channel_receives_nothing,
    quick_resubscription_ends_subscribed,
    many_channels,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unsubscribed_node_is_sent_nothing() {
    let redis = RedisServer::start().unwrap();
    let (node, _) = redis_node(&redis).await;
    node.join("user:dave").await;
    node.leave("user:dave");
    node.join("user:fence").await;
    node.publish("user:dave", "after leaving").await;
    sleep(QUIET).await;
    // Not merely ignored by the sink: Redis never sent it to this node.
    assert_eq!(node.sink.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_nodes_on_one_channel_both_receive() {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_node_receives_only_its_channels() {
    let redis = RedisServer::start().unwrap();
    let (a, _) = redis_node(&redis).await;
    let (b, _) = redis_node(&redis).await;
    a.join("user:a").await;
    b.join("user:b").await;
    assert_eq!(a.publish("user:b", "for b").await.nodes, 1);
    assert_eq!(b.expect_taken("user:b", 1).await, ["for b"]);
    sleep(QUIET).await;
    assert_eq!(a.sink.calls(), 0, "node a is not subscribed to user:b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_channel_names_use_the_prefix_and_a_hash_tag() {
    let redis = RedisServer::start().unwrap();
    let sink = Arc::new(Recorder::default());
    let broker = RedisBroker::connect(&redis.url(), "app:", sink.clone())
        .await
        .unwrap();
    assert_eq!(broker.redis_channel("user:f"), "app:ch:{user:f}");
    let node = Node {
        broker: broker.clone(),
        sink,
    };
    node.join("user:f").await;
    // Another program publishing on the documented name reaches the node.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let nodes: usize = redis::cmd("PUBLISH")
        .arg("app:ch:{user:f}")
        .arg("from outside")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(nodes, 1);
    assert_eq!(node.expect_taken("user:f", 1).await, ["from outside"]);
    // The default prefix is a different namespace.
    let nodes: usize = redis::cmd("PUBLISH")
        .arg("sessionhub:ch:{user:f}")
        .arg("elsewhere")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(nodes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_drops_payloads_that_are_not_utf8_and_keeps_going() {
    let redis = RedisServer::start().unwrap();
    let (node, broker) = redis_node(&redis).await;
    node.join("user:g").await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: usize = redis::cmd("PUBLISH")
        .arg(broker.redis_channel("user:g"))
        .arg(&[0xff_u8, 0xfe, b'x'][..])
        .query_async(&mut conn)
        .await
        .unwrap();
    node.publish("user:g", "valid").await;
    assert_eq!(node.expect_taken("user:g", 1).await, ["valid"]);
    sleep(QUIET).await;
    assert_eq!(node.sink.taken_on("user:g"), ["valid"]);
    assert!(broker.ping().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dropping_the_broker_closes_its_subscription() {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_at_start_is_reported_not_hidden() {
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
    let broker = RedisBrokerConfig::new(&url).unwrap().start(sink);
    assert!(broker.ping().await.is_err());
    assert!(broker.subscribe("user:i").await.is_err());
    assert!(broker.publish("user:i", "x".into()).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(8));
    // Once Redis appears the broker comes up on its own.
    redis.restart().unwrap();
    let deadline = Instant::now() + BOUND;
    while broker.ping().await.is_err() {
        assert!(Instant::now() < deadline, "broker did not come up");
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        broker.reconnects(),
        0,
        "a first connection is not a reconnection"
    );
}

#[test]
fn redis_url_is_checked_up_front() {
    assert!(RedisBrokerConfig::new("not a url").is_err());
    assert!(RedisBrokerConfig::new("http://127.0.0.1:1").is_err());
    assert!(RedisBrokerConfig::new("redis://127.0.0.1:1").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_reported_then_recovered_with_resubscription() {
    let mut redis = RedisServer::start().unwrap();
    let (node, broker) = redis_node(&redis).await;
    let (other, _) = redis_node(&redis).await;
    node.join("user:j").await;
    node.join("user:k").await;
    assert_eq!(other.publish("user:j", "before").await.nodes, 1);
    node.expect_taken("user:j", 1).await;

    redis.stop();
    let stopped = Instant::now();
    let failed = timeout(
        Duration::from_secs(2),
        node.broker.publish("user:j", "while down".into()),
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
        match other.broker.publish("user:k", "after".into()).await {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unresponsive_server_is_detected_and_recovered() {
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
    // The subscription connection's own probe gives it up and a fresh one takes over once
    // Redis answers again.
    let deadline = paused + Duration::from_secs(10);
    while broker.reconnects() == 0 || broker.ping().await.is_err() {
        assert!(Instant::now() < deadline, "never recovered from the stall");
        sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(node.publish("user:l", "after the stall").await.nodes, 1);
    assert_eq!(node.expect_taken("user:l", 1).await, ["after the stall"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_resp3_urls_work_too() {
    let redis = RedisServer::start().unwrap();
    let sink = Arc::new(Recorder::default());
    let url = format!("{}/?protocol=resp3", redis.url());
    let broker = RedisBroker::connect(&url, "sessionhub:", sink.clone())
        .await
        .unwrap();
    let node = Node { broker, sink };
    check::publish_reaches_subscriber_byte_for_byte(&node).await;
    check::quick_resubscription_ends_subscribed(&node).await;
}
