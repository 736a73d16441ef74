//! One set of checks every broker must pass, run against the embedded `LocalBroker` and
//! against `RedisBroker` on a real `redis-server` of each test's own: delivery and
//! subscriptions, then channel history (offsets, epochs, recovery, idempotency). Then what
//! only a cross-node broker can show: several nodes, selective subscription, history shared
//! between nodes, and what happens when Redis restarts or loses its data.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures_util::future::join_all;
use sessionhub::broker::{
    Broker, Deliver, HistoryConfig, LocalBroker, Publication, PublishOptions, Receipt, Recovery,
    RedisBroker, RedisBrokerConfig, StreamPosition,
};
use sessionhub_testkit::RedisServer;
use tokio::time::{Instant, sleep, timeout};

/// Every operation is bounded: a broker that hangs fails the test instead of stalling it.
const BOUND: Duration = Duration::from_secs(5);
/// And so is every test as a whole.
const TEST_BOUND: Duration = Duration::from_secs(30);
/// How long to watch for a message that must not come.
const QUIET: Duration = Duration::from_millis(200);

/// Runs a whole test within [`TEST_BOUND`].
async fn within<T>(test: impl Future<Output = T>) -> T {
    timeout(TEST_BOUND, test)
        .await
        .expect("the test finished within its bound")
}

/// Called when the broker asks for a resync; what it returns is recorded with the call.
type Probe = Box<dyn Fn() -> String + Send + Sync>;

/// A delivery sink that behaves like the hub's registry: it takes publications only for
/// channels it has members on, and records every call to it separately, so that a check
/// can tell "the node was sent it" from "a member took it". Resyncs are recorded too.
#[derive(Default)]
struct Recorder {
    members: Mutex<HashSet<String>>,
    taken: Mutex<Vec<(String, Publication)>>,
    calls: AtomicUsize,
    /// One entry per resync, with what the probe (if set) said at that moment.
    resyncs: Mutex<Vec<Option<String>>>,
    resync_probe: OnceLock<Probe>,
}

impl Deliver for Recorder {
    fn deliver(&self, channel: &str, publication: Publication) -> usize {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.members.lock().unwrap().contains(channel) {
            return 0;
        }
        self.taken
            .lock()
            .unwrap()
            .push((channel.to_owned(), publication));
        1
    }

    fn resync(&self) {
        let probed = self.resync_probe.get().map(|probe| probe());
        self.resyncs.lock().unwrap().push(probed);
    }
}

impl Recorder {
    fn taken(&self) -> Vec<(String, Publication)> {
        self.taken.lock().unwrap().clone()
    }

    fn publications_on(&self, channel: &str) -> Vec<Publication> {
        self.taken()
            .into_iter()
            .filter(|(c, _)| c == channel)
            .map(|(_, p)| p)
            .collect()
    }

    fn taken_on(&self, channel: &str) -> Vec<String> {
        self.publications_on(channel)
            .into_iter()
            .map(|p| p.data.as_str().to_owned())
            .collect()
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn resyncs(&self) -> Vec<Option<String>> {
        self.resyncs.lock().unwrap().clone()
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

    /// Publishes with history, as the hub does for channels.
    async fn publish(&self, channel: &str, payload: &str) -> Receipt {
        self.publish_with(channel, payload, &PublishOptions::with_history())
            .await
    }

    async fn publish_with(
        &self,
        channel: &str,
        payload: &str,
        options: &PublishOptions,
    ) -> Receipt {
        timeout(
            BOUND,
            self.broker
                .publish(channel, Utf8Bytes::from(payload), options),
        )
        .await
        .expect("publish is bounded")
        .expect("publish succeeds")
    }

    async fn recover(&self, channel: &str, since: Option<&StreamPosition>) -> Recovery {
        timeout(BOUND, self.broker.recover(channel, since))
            .await
            .expect("recover is bounded")
            .expect("recover succeeds")
    }

    /// Waits until `channel` has taken `count` publications.
    async fn expect_publications(&self, channel: &str, count: usize) -> Vec<Publication> {
        let deadline = Instant::now() + BOUND;
        loop {
            let taken = self.sink.publications_on(channel);
            if taken.len() >= count {
                return taken;
            }
            assert!(
                Instant::now() < deadline,
                "{channel}: {} of {count} publications arrived",
                taken.len()
            );
            sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `channel` has taken `count` publications; their data.
    async fn expect_taken(&self, channel: &str, count: usize) -> Vec<String> {
        self.expect_publications(channel, count)
            .await
            .into_iter()
            .map(|p| p.data.as_str().to_owned())
            .collect()
    }
}

/// Where the checks run: the embedded broker, or a Redis of the test's own.
enum Backend {
    Local,
    Redis { _server: RedisServer, url: String },
}

impl Backend {
    fn redis() -> Self {
        let server = RedisServer::start().unwrap();
        let url = server.url();
        Self::Redis {
            _server: server,
            url,
        }
    }

    /// A node with the default history.
    async fn node(&self) -> Node {
        self.node_with(HistoryConfig::default()).await
    }

    /// A node keeping `history`; each Redis node is a broker of its own on the shared Redis.
    async fn node_with(&self, history: HistoryConfig) -> Node {
        match self {
            Self::Local => {
                let sink = Arc::new(Recorder::default());
                Node {
                    broker: Arc::new(LocalBroker::with_history(sink.clone(), history)),
                    sink,
                }
            }
            Self::Redis { url, .. } => redis_node_with(url, history).await.0,
        }
    }
}

/// A history of `size` publications kept for `ttl`, otherwise the defaults.
fn history(size: usize, ttl: Duration) -> HistoryConfig {
    HistoryConfig {
        size,
        ttl,
        ..HistoryConfig::default()
    }
}

/// The position of a client that saw the publication behind `receipt`.
fn position(receipt: &Receipt) -> StreamPosition {
    at(&receipt.epoch, receipt.offset)
}

fn at(epoch: &str, offset: u64) -> StreamPosition {
    StreamPosition {
        epoch: epoch.to_owned(),
        offset,
    }
}

/// The publication a receipt stands for.
fn publication(receipt: &Receipt, data: &str) -> Publication {
    Publication {
        offset: receipt.offset,
        epoch: receipt.epoch.clone(),
        data: Utf8Bytes::from(data),
    }
}

fn keyed(key: &str) -> PublishOptions {
    PublishOptions {
        history: true,
        idempotency_key: Some(key.to_owned()),
    }
}

/// Waits until `broker` reports ready.
async fn wait_ready(broker: &dyn Broker) {
    let deadline = Instant::now() + BOUND;
    while broker.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the broker never became ready");
        sleep(Duration::from_millis(5)).await;
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

/// A node on `url` keeping `history`, waited for until it is ready.
async fn redis_node_with(url: &str, history: HistoryConfig) -> (Node, Arc<RedisBroker>) {
    let sink = Arc::new(Recorder::default());
    let broker = RedisBrokerConfig::new(url)
        .unwrap()
        .history(history)
        .start(sink.clone());
    wait_ready(&*broker).await;
    let node = Node {
        broker: broker.clone(),
        sink,
    };
    (node, broker)
}

/// One inline command to the Redis on `port`, from any thread: the first reply line, or
/// what went wrong (it runs inside the broker, which must not panic).
fn raw_command(port: u16, command: &str) -> String {
    let exchange = || -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(format!("{command}\r\n").as_bytes())?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Ok(line)
    };
    exchange().unwrap_or_else(|e| format!("error: {e}"))
}

/// The checks every broker passes.
mod check {
    use super::*;

    pub(super) async fn publish_reaches_subscriber_byte_for_byte(backend: &Backend) {
        let node = backend.node().await;
        node.join("user:alice").await;
        let payload = "{\"text\":\"héllo wörld ✓ 日本語 🚀\",\"raw\":\"a\\nb\\t\\\"c\\\"\"}";
        let receipt = node.publish("user:alice", payload).await;
        assert_eq!(receipt.nodes, 1);
        let taken = node.expect_taken("user:alice", 1).await;
        assert_eq!(taken, [payload]);
        // The empty payload is a payload too.
        node.publish("user:alice", "").await;
        assert_eq!(node.expect_taken("user:alice", 2).await, [payload, ""]);
        // And so is one that looks like the Redis envelope.
        node.publish("user:alice", "7:epoch:data").await;
        assert_eq!(
            node.expect_taken("user:alice", 3).await,
            [payload, "", "7:epoch:data"]
        );
        assert!(node.sink.resyncs().is_empty(), "nothing was missed");
    }

    pub(super) async fn unsubscribed_channel_receives_nothing(backend: &Backend) {
        let node = backend.node().await;
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

    pub(super) async fn quick_resubscription_ends_subscribed(backend: &Backend) {
        let node = backend.node().await;
        quick_resubscription_on(&node).await;
    }

    pub(super) async fn quick_resubscription_on(node: &Node) {
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

    pub(super) async fn many_channels(backend: &Backend) {
        let node = backend.node().await;
        let channels: Vec<String> = (0..300).map(|i| format!("user:many-{i}")).collect();
        join_all(channels.iter().map(|c| node.join(c))).await;
        let receipts = join_all(channels.iter().map(|c| node.publish(c, c))).await;
        assert!(receipts.iter().all(|r| r.nodes == 1), "{receipts:?}");
        assert!(
            receipts.iter().all(|r| r.offset == 1),
            "each channel counts on its own"
        );
        for channel in &channels {
            assert_eq!(node.expect_taken(channel, 1).await, [channel.as_str()]);
        }
        sleep(QUIET).await;
        assert_eq!(node.sink.taken().len(), channels.len(), "each exactly once");
    }

    pub(super) async fn offsets_count_from_one_per_channel_and_live_matches_receipts(
        backend: &Backend,
    ) {
        let node = backend.node().await;
        node.join("room:a").await;
        node.join("room:b").await;
        let mut sent: HashMap<&str, Vec<(Receipt, String)>> = HashMap::new();
        // Interleaved, so that one channel's publishes cannot move the other's offsets.
        for (i, channel) in ["room:a", "room:b", "room:a", "room:a", "room:b", "room:a"]
            .into_iter()
            .enumerate()
        {
            let data = format!("{{\"i\":{i}}}");
            let receipt = node.publish(channel, &data).await;
            sent.entry(channel).or_default().push((receipt, data));
        }
        for (channel, expected) in [("room:a", vec![1, 2, 3, 4]), ("room:b", vec![1, 2])] {
            let sent = &sent[channel];
            let offsets: Vec<u64> = sent.iter().map(|(r, _)| r.offset).collect();
            assert_eq!(offsets, expected, "{channel}");
            let epoch = &sent[0].0.epoch;
            assert!(!epoch.is_empty(), "a channel with history has an epoch");
            for (receipt, _) in sent {
                assert_eq!(&receipt.epoch, epoch, "{channel}: one epoch throughout");
                assert!(!receipt.duplicate);
                assert_eq!(receipt.nodes, 1);
            }
            // Every live publication carries what its receipt said, byte for byte.
            let live = node.expect_publications(channel, sent.len()).await;
            let receipts: Vec<Publication> =
                sent.iter().map(|(r, data)| publication(r, data)).collect();
            assert_eq!(live, receipts, "{channel}");
        }
        sleep(QUIET).await;
        assert_eq!(node.sink.taken().len(), 6, "each exactly once");
    }

    pub(super) async fn recover_without_a_position_starts_a_stable_epoch(backend: &Backend) {
        let node = backend.node().await;
        node.join("room:new").await;
        let first = node.recover("room:new", None).await;
        assert!(first.recovered);
        assert_eq!(first.offset, 0, "nothing published yet");
        assert!(!first.epoch.is_empty(), "asking starts the channel's epoch");
        assert!(first.publications.is_empty());
        let again = node.recover("room:new", None).await;
        assert_eq!(again, first, "the epoch stays put between calls");
        // The position handed out is valid: recovering from it is recovering nothing.
        let start = at(&first.epoch, first.offset);
        let from_start = node.recover("room:new", Some(&start)).await;
        assert!(from_start.recovered && from_start.publications.is_empty());

        let receipt = node.publish("room:new", "{\"n\":1}").await;
        assert_eq!(receipt.offset, 1);
        assert_eq!(
            receipt.epoch, first.epoch,
            "a publish keeps the epoch recover created"
        );
        let now = node.recover("room:new", None).await;
        assert_eq!((now.epoch.clone(), now.offset), (first.epoch.clone(), 1));
        assert!(now.recovered);
        assert!(
            now.publications.is_empty(),
            "without a position nothing is replayed"
        );
        let missed = node.recover("room:new", Some(&start)).await;
        assert!(missed.recovered);
        assert_eq!(missed.publications, [publication(&receipt, "{\"n\":1}")]);
        assert_eq!(
            node.expect_publications("room:new", 1).await,
            [publication(&receipt, "{\"n\":1}")]
        );
    }

    pub(super) async fn recover_returns_exactly_the_missed_publications(backend: &Backend) {
        let node = backend.node().await;
        let channel = "room:missed";
        node.publish(channel, "{\"n\":1}").await;
        let seen = node.publish(channel, "{\"n\":2}").await;
        let payloads = [
            "{\"text\":\"héllo wörld ✓ 日本語 🚀\"}",
            "{\"colons\":\"1:2:3\",\"raw\":\"a\\nb\\t\\\"c\\\"\\u0000\"}",
            "\"\"",
            "",
            "[1, 2,\n 3]",
        ];
        let mut missed = Vec::new();
        for payload in payloads {
            let receipt = node.publish(channel, payload).await;
            missed.push(publication(&receipt, payload));
        }
        let top = 2 + payloads.len() as u64;
        let recovery = node.recover(channel, Some(&position(&seen))).await;
        assert!(recovery.recovered);
        assert_eq!(
            (recovery.epoch.clone(), recovery.offset),
            (seen.epoch.clone(), top)
        );
        assert_eq!(recovery.publications, missed, "in order, byte for byte");
        let offsets: Vec<u64> = recovery.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, (3..=top).collect::<Vec<_>>());

        let everything = node.recover(channel, Some(&at(&seen.epoch, 0))).await;
        assert!(everything.recovered);
        assert_eq!(everything.publications.len() as u64, top);
        assert_eq!(everything.publications[2..], missed[..]);

        let up_to_date = node.recover(channel, Some(&at(&seen.epoch, top))).await;
        assert!(up_to_date.recovered, "an up-to-date client missed nothing");
        assert!(up_to_date.publications.is_empty());
        assert_eq!(up_to_date.offset, top);

        let ahead = node.recover(channel, Some(&at(&seen.epoch, top + 1))).await;
        assert!(
            !ahead.recovered && ahead.publications.is_empty(),
            "a position past the top is from another history"
        );
    }

    pub(super) async fn a_gap_wider_than_the_history_is_not_recovered(backend: &Backend) {
        let node = backend
            .node_with(history(5, HistoryConfig::default().ttl))
            .await;
        let channel = "room:gap";
        let mut sent = Vec::new();
        for n in 1..=8 {
            let data = format!("{{\"n\":{n}}}");
            let receipt = node.publish(channel, &data).await;
            assert_eq!(receipt.offset, n);
            sent.push(publication(&receipt, &data));
        }
        let epoch = sent[0].epoch.to_string();
        // Exactly as many missed as the history holds: all of them.
        let whole = node.recover(channel, Some(&at(&epoch, 3))).await;
        assert!(whole.recovered);
        assert_eq!(whole.publications, sent[3..]);
        // One more than it holds: nothing, never the last five.
        for since in [2, 1, 0] {
            let gap = node.recover(channel, Some(&at(&epoch, since))).await;
            assert!(!gap.recovered, "since {since}");
            assert!(gap.publications.is_empty(), "since {since}: never partial");
            assert_eq!((&*gap.epoch, gap.offset), (epoch.as_str(), 8));
        }
    }

    pub(super) async fn expired_history_is_not_recovered_but_the_position_outlives_it(
        backend: &Backend,
    ) {
        let node = backend
            .node_with(history(100, Duration::from_millis(300)))
            .await;
        let channel = "room:expiring";
        let mut sent = Vec::new();
        for n in 1..=3 {
            let data = format!("{{\"n\":{n}}}");
            sent.push(publication(&node.publish(channel, &data).await, &data));
        }
        let epoch = sent[0].epoch.to_string();
        let fresh = node.recover(channel, Some(&at(&epoch, 1))).await;
        assert!(fresh.recovered, "within the TTL");
        assert_eq!(fresh.publications, sent[1..]);

        sleep(Duration::from_millis(700)).await;
        let behind = node.recover(channel, Some(&at(&epoch, 1))).await;
        assert!(!behind.recovered, "the publications it missed have expired");
        assert!(behind.publications.is_empty());
        assert_eq!((&*behind.epoch, behind.offset), (epoch.as_str(), 3));
        let at_top = node.recover(channel, Some(&at(&epoch, 3))).await;
        assert!(
            at_top.recovered && at_top.publications.is_empty(),
            "a client at the top missed nothing: the position outlives the history"
        );
        let position = node.recover(channel, None).await;
        assert_eq!((&*position.epoch, position.offset), (epoch.as_str(), 3));

        // The history goes on from where it was.
        let next = node.publish(channel, "{\"n\":4}").await;
        assert_eq!((&*next.epoch, next.offset), (epoch.as_str(), 4));
        let after = node.recover(channel, Some(&at(&epoch, 3))).await;
        assert!(after.recovered);
        assert_eq!(after.publications, [publication(&next, "{\"n\":4}")]);
    }

    pub(super) async fn another_epoch_is_not_recovered(backend: &Backend) {
        let node = backend.node().await;
        let channel = "room:epochs";
        node.publish(channel, "1").await;
        let top = node.publish(channel, "2").await;
        for since in [at("not-the-epoch", 0), at("not-the-epoch", 2), at("", 0)] {
            let recovery = node.recover(channel, Some(&since)).await;
            assert!(!recovery.recovered, "{since:?}");
            assert!(recovery.publications.is_empty(), "{since:?}");
            assert_eq!(
                (recovery.epoch.clone(), recovery.offset),
                (top.epoch.clone(), 2),
                "the current position, to start over from"
            );
        }
    }

    pub(super) async fn an_idempotency_key_publishes_once(backend: &Backend) {
        let node = backend.node().await;
        let channel = "room:idem";
        node.join(channel).await;
        let first = node.publish_with(channel, "{\"v\":1}", &keyed("k1")).await;
        assert_eq!((first.offset, first.duplicate, first.nodes), (1, false, 1));
        let again = node
            .publish_with(channel, "{\"v\":\"again\"}", &keyed("k1"))
            .await;
        assert!(again.duplicate, "the same key again");
        assert_eq!((again.offset, &again.epoch), (1, &first.epoch));
        assert_eq!(again.nodes, 0, "nothing was published this time");
        let other = node.publish_with(channel, "{\"v\":2}", &keyed("k2")).await;
        assert_eq!((other.offset, other.duplicate), (2, false));

        let expected = [
            publication(&first, "{\"v\":1}"),
            publication(&other, "{\"v\":2}"),
        ];
        assert_eq!(node.expect_publications(channel, 2).await, expected);
        sleep(QUIET).await;
        assert_eq!(node.sink.publications_on(channel), expected, "once each");
        let history = node.recover(channel, Some(&at(&first.epoch, 0))).await;
        assert!(history.recovered);
        assert_eq!(history.publications, expected);

        // Keys belong to their channel.
        let elsewhere = node
            .publish_with("room:idem-other", "{\"v\":1}", &keyed("k1"))
            .await;
        assert_eq!((elsewhere.offset, elsewhere.duplicate), (1, false));
    }

    pub(super) async fn publishes_without_history_have_no_offset_and_are_not_kept(
        backend: &Backend,
    ) {
        let node = backend.node().await;
        let channel = "room:plain";
        node.join(channel).await;
        let plain = PublishOptions::default();
        let receipt = node.publish_with(channel, "{\"p\":1}", &plain).await;
        assert_eq!((receipt.offset, &*receipt.epoch), (0, ""));
        assert_eq!((receipt.nodes, receipt.duplicate), (1, false));
        let live = node.expect_publications(channel, 1).await;
        assert_eq!(live, [publication(&receipt, "{\"p\":1}")]);
        assert_eq!(
            node.recover(channel, None).await.offset,
            0,
            "not in history"
        );

        let kept = node.publish(channel, "{\"h\":1}").await;
        let unkept = node.publish_with(channel, "{\"p\":2}", &plain).await;
        let kept_too = node.publish(channel, "{\"h\":2}").await;
        assert_eq!(
            [kept.offset, unkept.offset, kept_too.offset],
            [1, 0, 2],
            "publishes without history take no offset"
        );
        let offsets: Vec<u64> = node
            .expect_publications(channel, 4)
            .await
            .iter()
            .map(|p| p.offset)
            .collect();
        assert_eq!(offsets, [0, 1, 0, 2]);
        let history = node.recover(channel, Some(&at(&kept.epoch, 0))).await;
        assert!(history.recovered);
        assert_eq!(
            history.publications,
            [
                publication(&kept, "{\"h\":1}"),
                publication(&kept_too, "{\"h\":2}")
            ]
        );
    }

    pub(super) async fn a_broker_without_history_publishes_unnumbered_and_recovers_nothing(
        backend: &Backend,
    ) {
        let node = backend
            .node_with(history(0, HistoryConfig::default().ttl))
            .await;
        let channel = "room:bare";
        node.join(channel).await;
        // Asked for history, it has none to give: the publish is delivered, unnumbered.
        let first = node.publish(channel, "{\"n\":1}").await;
        let second = node.publish(channel, "{\"n\":2}").await;
        for receipt in [&first, &second] {
            assert_eq!((receipt.offset, &*receipt.epoch), (0, ""));
            assert_eq!((receipt.nodes, receipt.duplicate), (1, false));
        }
        let live = node.expect_publications(channel, 2).await;
        assert_eq!(
            live,
            [
                publication(&first, "{\"n\":1}"),
                publication(&second, "{\"n\":2}")
            ]
        );
        let fresh = node.recover(channel, None).await;
        assert_eq!((&*fresh.epoch, fresh.offset), ("", 0));
        // Whoever comes back with a position may have missed anything.
        let back = node.recover(channel, Some(&at("", 0))).await;
        assert!(!back.recovered, "{back:?}");
        assert!(back.publications.is_empty(), "{back:?}");
        // An idempotency key is still honoured: the retry publishes nothing.
        let first = node.publish_with(channel, "{\"n\":3}", &keyed("k1")).await;
        assert_eq!((first.offset, first.duplicate, first.nodes), (0, false, 1));
        let again = node.publish_with(channel, "{\"n\":4}", &keyed("k1")).await;
        assert_eq!(
            (again.offset, &*again.epoch, again.duplicate),
            (0, "", true)
        );
        let other = node.publish_with(channel, "{\"n\":5}", &keyed("k2")).await;
        assert!(!other.duplicate);
        let live = node.expect_publications(channel, 4).await;
        assert_eq!(
            live[2..]
                .iter()
                .map(|p| p.data.as_str())
                .collect::<Vec<_>>(),
            ["{\"n\":3}", "{\"n\":5}"]
        );
    }

    pub(super) async fn concurrent_publishes_take_consecutive_offsets_in_order(backend: &Backend) {
        const COUNT: u64 = 200;
        let node = backend.node().await;
        let channel = "room:busy";
        node.join(channel).await;
        let tasks = (0..COUNT).map(|i| {
            let broker = node.broker.clone();
            tokio::spawn(async move {
                let data = format!("{{\"i\":{i}}}");
                let options = PublishOptions::with_history();
                let receipt = broker
                    .publish(channel, Utf8Bytes::from(data.clone()), &options)
                    .await
                    .expect("publish succeeds");
                (receipt, data)
            })
        });
        let sent: Vec<(Receipt, String)> = timeout(BOUND, join_all(tasks))
            .await
            .expect("publishes are bounded")
            .into_iter()
            .map(|joined| joined.expect("the publish task did not panic"))
            .collect();
        let mut offsets: Vec<u64> = sent.iter().map(|(r, _)| r.offset).collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (1..=COUNT).collect::<Vec<_>>(), "no gaps, no dups");
        let epoch = sent[0].0.epoch.clone();
        assert!(sent.iter().all(|(r, _)| r.epoch == epoch));
        let by_offset: HashMap<u64, &str> =
            sent.iter().map(|(r, d)| (r.offset, d.as_str())).collect();

        let live = node.expect_publications(channel, COUNT as usize).await;
        sleep(QUIET).await;
        let live_offsets: Vec<u64> = live.iter().map(|p| p.offset).collect();
        assert_eq!(
            live_offsets,
            (1..=COUNT).collect::<Vec<_>>(),
            "delivered in offset order, each once"
        );
        assert_eq!(node.sink.publications_on(channel).len(), COUNT as usize);
        for p in &live {
            assert_eq!(p.epoch, epoch);
            assert_eq!(p.data.as_str(), by_offset[&p.offset], "offset {}", p.offset);
        }
        // The default history holds the last 100: exactly those, as delivered.
        let last = node.recover(channel, Some(&at(&epoch, COUNT - 100))).await;
        assert!(last.recovered);
        assert_eq!(last.publications, live[(COUNT - 100) as usize..]);
    }
}

/// Runs a check against both brokers, each test on its own broker (and Redis).
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod local_broker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::within(super::check::$name(&super::Backend::Local)).await;
                }
            )*
        }
        mod redis_broker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = super::Backend::redis();
                    super::within(super::check::$name(&backend)).await;
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
    offsets_count_from_one_per_channel_and_live_matches_receipts,
    recover_without_a_position_starts_a_stable_epoch,
    recover_returns_exactly_the_missed_publications,
    a_gap_wider_than_the_history_is_not_recovered,
    expired_history_is_not_recovered_but_the_position_outlives_it,
    another_epoch_is_not_recovered,
    an_idempotency_key_publishes_once,
    publishes_without_history_have_no_offset_and_are_not_kept,
    a_broker_without_history_publishes_unnumbered_and_recovers_nothing,
    concurrent_publishes_take_consecutive_offsets_in_order,
);

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
        let node = Node {
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
        let node = Node { broker, sink };
        check::quick_resubscription_on(&node).await;
        let backend = Backend::Redis {
            _server: server,
            url,
        };
        check::publish_reaches_subscriber_byte_for_byte(&backend).await;
        check::recover_returns_exactly_the_missed_publications(&backend).await;
        check::an_idempotency_key_publishes_once(&backend).await;
        check::publishes_without_history_have_no_offset_and_are_not_kept(&backend).await;
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
        let probe: Probe =
            Box::new(move || raw_command(port, &format!("PUBLISH {probe_channel} 0::probe")));
        assert!(node.sink.resync_probe.set(probe).is_ok());
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_command_connection_is_retried_only_when_harmless() {
    within(async {
        let redis = RedisServer::start().unwrap();
        let (node, broker) = redis_node(&redis).await;
        let channel = "room:killed";
        node.join(channel).await;
        let first = node.publish(channel, "{\"n\":1}").await;
        let kill = || {
            let reply = redis.command("CLIENT KILL TYPE normal").unwrap();
            assert!(
                reply.starts_with(":1"),
                "killed the command connection: {reply}"
            );
        };

        kill();
        let recovery = node.recover(channel, Some(&position(&first))).await;
        assert!(recovery.recovered);
        kill();
        assert!(broker.ping().await.is_ok(), "PING is retried");
        kill();
        let keyed_receipt = node.publish_with(channel, "{\"n\":2}", &keyed("k")).await;
        assert_eq!(
            (keyed_receipt.offset, keyed_receipt.duplicate),
            (2, false),
            "a keyed publish is retried, and published once"
        );

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
