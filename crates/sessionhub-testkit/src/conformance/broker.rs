//! The `Broker` contract: delivery and subscriptions, then channel history (offsets,
//! epochs, recovery, idempotency), as the hub relies on them.
//!
//! A check works with nodes: a [`BrokerNode`] is a broker and the [`Recorder`] it delivers
//! into, which takes publications only for the channels it has members on, as the hub's
//! registry does. A [`BrokerFixture`] starts nodes on one backend: for a cross-node broker,
//! each node is a broker of its own on the shared server. One subject, the contract, in one
//! file so that a backend author reads it in one go.
//!
//! [`broker_conformance!`](crate::broker_conformance) runs [`checks`] against a backend.
//! The nodes and helpers here serve a backend's own tests too (several nodes, outages).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sessionhub::broker::{
    BatchItem, Broker, Deliver, Envelope, HistoryConfig, HistoryPage, HistoryQuery, Publication,
    PublishOptions, Receipt, Recovery, StreamPosition,
};
use tokio::time::{Instant, sleep, timeout};

/// Every operation is bounded: a broker that hangs fails the test instead of stalling it.
pub const BOUND: Duration = Duration::from_secs(5);
/// And so is every test as a whole, setup included.
pub const LIMIT: Duration = Duration::from_secs(30);
/// How long to watch for a message that must not come.
pub const QUIET: Duration = Duration::from_millis(200);

/// Runs a whole test within [`LIMIT`].
pub async fn within<T>(test: impl Future<Output = T>) -> T {
    super::within(LIMIT, test).await
}

/// Called when the broker asks for a resync; what it returns is recorded with the call.
pub type Probe = Box<dyn Fn() -> String + Send + Sync>;

/// A delivery sink that behaves like the hub's registry: it takes publications only for
/// channels it has members on, and records every call to it separately, so that a check
/// can tell "the node was sent it" from "a member took it". Resyncs are recorded too.
#[derive(Default)]
pub struct Recorder {
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
    /// Gives `channel` a member, without subscribing (see [`BrokerNode::join`]).
    pub fn add_member(&self, channel: &str) {
        self.members.lock().unwrap().insert(channel.to_owned());
    }

    /// Sets what to ask at each resync (once); hands `probe` back if one was set.
    pub fn set_resync_probe(&self, probe: Probe) -> Result<(), Probe> {
        self.resync_probe.set(probe)
    }

    /// Every publication a member took, with its channel, in order.
    pub fn taken(&self) -> Vec<(String, Publication)> {
        self.taken.lock().unwrap().clone()
    }

    /// The publications members of `channel` took, in order.
    pub fn publications_on(&self, channel: &str) -> Vec<Publication> {
        self.taken()
            .into_iter()
            .filter(|(c, _)| c == channel)
            .map(|(_, p)| p)
            .collect()
    }

    /// The data of the publications members of `channel` took, in order.
    pub fn taken_on(&self, channel: &str) -> Vec<String> {
        self.publications_on(channel)
            .into_iter()
            .map(|p| p.data.as_str().to_owned())
            .collect()
    }

    /// Deliveries the broker made, taken or not.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// One entry per resync the broker asked for, with what the probe said then.
    pub fn resyncs(&self) -> Vec<Option<String>> {
        self.resyncs.lock().unwrap().clone()
    }
}

/// One node: a broker and the sink it delivers to.
pub struct BrokerNode {
    /// The broker under test.
    pub broker: Arc<dyn Broker>,
    /// What it delivered.
    pub sink: Arc<Recorder>,
}

impl BrokerNode {
    /// What the hub does for a channel's first member: add it, then subscribe.
    pub async fn join(&self, channel: &str) {
        self.sink.add_member(channel);
        timeout(BOUND, self.broker.subscribe(channel))
            .await
            .expect("subscribe is bounded")
            .expect("subscribe succeeds");
    }

    /// What the hub does when a channel's last member leaves.
    pub fn leave(&self, channel: &str) {
        self.sink.members.lock().unwrap().remove(channel);
        self.broker.unsubscribe(channel);
    }

    /// Publishes with history, as the hub does for channels.
    pub async fn publish(&self, channel: &str, payload: &str) -> Receipt {
        self.publish_with(channel, payload, &PublishOptions::with_history())
            .await
    }

    /// Publishes with `options`; panics on failure or after [`BOUND`].
    pub async fn publish_with(
        &self,
        channel: &str,
        payload: &str,
        options: &PublishOptions,
    ) -> Receipt {
        timeout(
            BOUND,
            self.broker
                .publish(channel, payload.to_owned().into(), options),
        )
        .await
        .expect("publish is bounded")
        .expect("publish succeeds")
    }

    /// Recovers `channel` since `since`; panics on failure or after [`BOUND`].
    pub async fn recover(&self, channel: &str, since: Option<&StreamPosition>) -> Recovery {
        timeout(BOUND, self.broker.recover(channel, since))
            .await
            .expect("recover is bounded")
            .expect("recover succeeds")
    }

    /// Reads a page of `channel`'s history; panics on failure or after [`BOUND`].
    pub async fn history(&self, channel: &str, query: HistoryQuery) -> HistoryPage {
        timeout(BOUND, self.broker.history(channel, &query))
            .await
            .expect("history is bounded")
            .expect("history succeeds")
    }

    /// Waits until `channel` has taken `count` publications.
    pub async fn expect_publications(&self, channel: &str, count: usize) -> Vec<Publication> {
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
    pub async fn expect_taken(&self, channel: &str, count: usize) -> Vec<String> {
        self.expect_publications(channel, count)
            .await
            .into_iter()
            .map(|p| p.data.as_str().to_owned())
            .collect()
    }
}

/// Starts a broker delivering into the sink, keeping the history given.
type Connect = Box<dyn Fn(Arc<dyn Deliver>, HistoryConfig) -> BoxFuture<'static, Arc<dyn Broker>>>;

/// Where the checks run: starts nodes on one backend (for a cross-node broker, each a
/// broker of its own on the shared server), kept working by a guard.
pub struct BrokerFixture {
    connect: Connect,
    _guard: super::Guard,
}

impl BrokerFixture {
    /// Nodes made by `connect`, which starts a broker delivering into the sink it is given
    /// and keeping the history given, and returns it once it is ready; `guard` keeps the
    /// backend alive (`()` when it needs nothing).
    pub fn new<F, B>(guard: impl std::any::Any + Send, connect: F) -> Self
    where
        F: Fn(Arc<dyn Deliver>, HistoryConfig) -> B + 'static,
        B: Future<Output = Arc<dyn Broker>> + Send + 'static,
    {
        Self {
            connect: Box::new(move |sink, history| Box::pin(connect(sink, history))),
            _guard: Box::new(guard),
        }
    }

    /// A node with the default history.
    pub async fn node(&self) -> BrokerNode {
        self.node_with(HistoryConfig::default()).await
    }

    /// A node keeping `history`.
    pub async fn node_with(&self, history: HistoryConfig) -> BrokerNode {
        let sink = Arc::new(Recorder::default());
        BrokerNode {
            broker: (self.connect)(sink.clone(), history).await,
            sink,
        }
    }
}

/// A history of `size` publications kept for `ttl`, otherwise the defaults.
pub fn history(size: usize, ttl: Duration) -> HistoryConfig {
    HistoryConfig {
        size,
        ttl,
        ..HistoryConfig::default()
    }
}

/// The position of a client that saw the publication behind `receipt`.
pub fn position(receipt: &Receipt) -> StreamPosition {
    at(&receipt.epoch, receipt.offset)
}

/// The position `offset` in `epoch`.
pub fn at(epoch: &str, offset: u64) -> StreamPosition {
    StreamPosition {
        epoch: epoch.to_owned(),
        offset,
    }
}

/// A history query: after `since`, at most `limit`, newest first if `reverse`.
pub fn page(since: Option<StreamPosition>, limit: usize, reverse: bool) -> HistoryQuery {
    HistoryQuery {
        since,
        limit,
        reverse,
    }
}

/// The offsets of `publications`, in their order.
pub fn offsets(publications: &[Publication]) -> Vec<u64> {
    publications.iter().map(|p| p.offset).collect()
}

/// The publication a receipt stands for.
pub fn publication(receipt: &Receipt, data: &str) -> Publication {
    Publication {
        offset: receipt.offset,
        epoch: receipt.epoch.clone(),
        data: data.to_owned().into(),
    }
}

/// Publishing with history and the idempotency key `key`.
pub fn keyed(key: &str) -> PublishOptions {
    PublishOptions {
        history: true,
        idempotency_key: Some(key.to_owned()),
    }
}

/// Waits until `broker` reports ready.
pub async fn wait_ready(broker: &dyn Broker) {
    let deadline = Instant::now() + BOUND;
    while broker.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the broker never became ready");
        sleep(Duration::from_millis(5)).await;
    }
}

/// Nodes with a Redis broker each on `config` (one server, Sentinel or Cluster), ready
/// before a check gets them; `guard` keeps the servers alive.
pub fn redis_nodes(
    config: sessionhub::redis::RedisConfig,
    guard: impl std::any::Any + Send,
) -> BrokerFixture {
    BrokerFixture::new(guard, move |sink, history| {
        let config = config.clone();
        async move {
            let broker = sessionhub::broker::RedisBrokerConfig::from(config)
                .history(history)
                .start(sink);
            wait_ready(&*broker).await;
            broker as Arc<dyn Broker>
        }
    })
}

/// Publishes on `channel` from `publisher` until `subscriber` takes it, each try with its
/// own payload so that a late delivery of an earlier try is not mistaken for it; fails the
/// test after `within`. For outages: it returns once the path from one node to the other
/// works again, with the payload that arrived and its receipt's epoch.
pub async fn publish_until_taken(
    publisher: &BrokerNode,
    subscriber: &BrokerNode,
    channel: &str,
    within: Duration,
) -> (String, String) {
    let deadline = Instant::now() + within;
    for attempt in 0.. {
        assert!(
            Instant::now() < deadline,
            "no publication on {channel} got through within {within:?}"
        );
        let payload = format!("\"after-{attempt}\"");
        let options = PublishOptions::with_history();
        if let Ok(receipt) = publisher
            .broker
            .publish(channel, payload.clone().into(), &options)
            .await
        {
            sleep(Duration::from_millis(300)).await;
            if subscriber.sink.taken_on(channel).contains(&payload) {
                return (payload, receipt.epoch.to_string());
            }
        } else {
            sleep(Duration::from_millis(100)).await;
        }
    }
    unreachable!("the loop returns or fails")
}

/// The checks, each given the fixture to start its nodes from.
pub mod checks {
    use super::*;

    use std::collections::HashMap;

    use futures_util::future::join_all;

    /// A publish reaches a subscribed node byte for byte, the empty payload and one that
    /// looks like an envelope included.
    pub async fn publish_reaches_subscriber_byte_for_byte(backend: &BrokerFixture) {
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

    /// A publication's [`Envelope`] (Pusher's event name, excluded socket, sender) comes back
    /// whole from delivery, recovery and history, with its data byte for byte: the envelope
    /// travels inside the payload, so a backend keeps it only if it keeps every byte, the
    /// separators (U+001E) included.
    pub async fn an_envelope_survives_delivery_recovery_and_history(backend: &BrokerFixture) {
        let node = backend.node().await;
        let channel = "cache-room.envelope";
        node.join(channel).await;
        let before = node.publish(channel, "{\"n\":0}").await;
        let envelope = Envelope {
            event: Some("client-typing".into()),
            except: Some("1234.5678".into()),
            user: Some("u\u{1e}1".into()),
            at: Some(1_765_000_000_000),
        };
        let data = "{\"text\":\"héllo \\u001e ✓\",\"n\":1}";
        let payload = envelope.wrap(data);
        node.publish(channel, &payload).await;
        let opened = |payload: &str| Envelope::open(payload.to_owned().into());
        let check = |what: &str, payload: &str| {
            let (got, rest) = opened(payload);
            assert_eq!(got.as_ref(), Some(&envelope), "{what}: the envelope");
            assert_eq!(rest.as_str(), data, "{what}: the data");
        };
        let taken = node.expect_taken(channel, 2).await;
        check("delivered", &taken[1]);
        let recovery = node.recover(channel, Some(&position(&before))).await;
        assert!(recovery.recovered);
        assert_eq!(recovery.publications.len(), 1);
        check("recovered", &recovery.publications[0].data);
        let newest = node.history(channel, page(None, 1, true)).await;
        assert_eq!(newest.publications.len(), 1);
        check("history", &newest.publications[0].data);
    }

    /// A channel nobody joined, or that was left, reaches no node.
    pub async fn unsubscribed_channel_receives_nothing(backend: &BrokerFixture) {
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

    /// Subscribe, unsubscribe and subscribe again without waiting end subscribed.
    pub async fn quick_resubscription_ends_subscribed(backend: &BrokerFixture) {
        let node = backend.node().await;
        quick_resubscription_on(&node).await;
    }

    /// The body of [`quick_resubscription_ends_subscribed`], on a given node.
    pub async fn quick_resubscription_on(node: &BrokerNode) {
        // In call order without awaiting in between, as joins and leaves race in the hub.
        let first = node.broker.subscribe("user:carol");
        node.broker.unsubscribe("user:carol");
        let second = node.broker.subscribe("user:carol");
        node.sink.add_member("user:carol");
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

    /// Hundreds of channels on one node: each delivers exactly once, and counts its own
    /// offsets.
    pub async fn many_channels(backend: &BrokerFixture) {
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

    /// Offsets count from 1 per channel in one epoch, and every live publication carries what
    /// its receipt said.
    pub async fn offsets_count_from_one_per_channel_and_live_matches_receipts(
        backend: &BrokerFixture,
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

    /// `recover` without a position starts the channel's epoch, which publishes then keep.
    pub async fn recover_without_a_position_starts_a_stable_epoch(backend: &BrokerFixture) {
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

    /// `recover` from a position returns exactly what was published after it, in order.
    pub async fn recover_returns_exactly_the_missed_publications(backend: &BrokerFixture) {
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

    /// A gap wider than the history recovers nothing, never part of it.
    pub async fn a_gap_wider_than_the_history_is_not_recovered(backend: &BrokerFixture) {
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

    /// Expired history is not recovered, but the channel's position outlives it.
    pub async fn expired_history_is_not_recovered_but_the_position_outlives_it(
        backend: &BrokerFixture,
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

    /// A position from another epoch is not recovered.
    pub async fn another_epoch_is_not_recovered(backend: &BrokerFixture) {
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

    /// A publish with an idempotency key seen before publishes nothing; keys belong to their
    /// channel.
    pub async fn an_idempotency_key_publishes_once(backend: &BrokerFixture) {
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

    /// A publish without history takes no offset and is not kept.
    pub async fn publishes_without_history_have_no_offset_and_are_not_kept(
        backend: &BrokerFixture,
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

    /// A broker keeping no history publishes unnumbered, recovers nothing, and still honours
    /// idempotency keys.
    pub async fn a_broker_without_history_publishes_unnumbered_and_recovers_nothing(
        backend: &BrokerFixture,
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

    /// `history` pages through what a channel keeps: oldest or newest first, after a
    /// position, at most a limit, with the channel's position.
    pub async fn history_pages_oldest_or_newest_first(backend: &BrokerFixture) {
        let node = backend.node().await;
        let channel = "room:pages";
        let empty = node.history(channel, page(None, 10, false)).await;
        assert_eq!(empty.offset, 0);
        assert!(empty.publications.is_empty());
        let mut sent = Vec::new();
        for n in 1..=5 {
            let data = format!("{{\"n\":{n}}}");
            sent.push(publication(&node.publish(channel, &data).await, &data));
        }
        let epoch = sent[0].epoch.to_string();
        assert_eq!(epoch, *empty.epoch, "the epoch history started is kept");
        let all = node.history(channel, page(None, 10, false)).await;
        assert_eq!((&*all.epoch, all.offset), (epoch.as_str(), 5));
        assert_eq!(all.publications, sent, "oldest first, byte for byte");
        let cases = [
            (page(None, 2, false), vec![1, 2]),
            (page(None, 2, true), vec![5, 4]),
            (page(None, 10, true), vec![5, 4, 3, 2, 1]),
            (page(Some(at(&epoch, 3)), 10, false), vec![4, 5]),
            (page(Some(at(&epoch, 1)), 2, false), vec![2, 3]),
            (page(Some(at(&epoch, 3)), 10, true), vec![5, 4]),
            (page(Some(at(&epoch, 1)), 1, true), vec![5]),
            (page(Some(at(&epoch, 5)), 10, false), vec![]),
            (page(None, 0, false), vec![]),
            (page(Some(at("another", 0)), 10, false), vec![]),
        ];
        for (query, expected) in cases {
            let got = node.history(channel, query.clone()).await;
            assert_eq!(offsets(&got.publications), expected, "{query:?}");
            assert_eq!((&*got.epoch, got.offset), (epoch.as_str(), 5), "{query:?}");
        }
    }

    /// Unlike `recover`, `history` gives the part of the history still kept.
    pub async fn history_gives_what_is_still_kept(backend: &BrokerFixture) {
        let node = backend
            .node_with(history(3, HistoryConfig::default().ttl))
            .await;
        let channel = "room:kept";
        let mut epoch = String::new();
        for n in 1..=6 {
            epoch = node
                .publish(channel, &n.to_string())
                .await
                .epoch
                .to_string();
        }
        let since = Some(at(&epoch, 1));
        let oldest = node.history(channel, page(since.clone(), 10, false)).await;
        assert_eq!(offsets(&oldest.publications), [4, 5, 6]);
        assert_eq!(oldest.publications[0].data.as_str(), "4");
        let newest = node.history(channel, page(since, 2, true)).await;
        assert_eq!(offsets(&newest.publications), [6, 5]);

        let bare = backend
            .node_with(history(0, HistoryConfig::default().ttl))
            .await;
        bare.publish("room:unkept", "1").await;
        let none = bare.history("room:unkept", page(None, 10, false)).await;
        assert_eq!((&*none.epoch, none.offset), ("", 0));
        assert!(none.publications.is_empty());
    }

    /// A batch publishes every item, in order per channel, with one result each, in order;
    /// live subscribers get them as from single publishes.
    pub async fn a_batch_publishes_each_item_in_order(backend: &BrokerFixture) {
        let node = backend.node().await;
        node.join("room:batch-a").await;
        node.join("room:batch-b").await;
        let item = |channel: &str, data: &str, key: Option<&str>| BatchItem {
            channel: channel.to_owned(),
            data: data.to_owned().into(),
            idempotency_key: key.map(str::to_owned),
        };
        node.publish("room:batch-b", "0").await;
        let items = [
            item("room:batch-a", "1", None),
            item("room:batch-b", "2", Some("k")),
            item("room:batch-a", "3", None),
            item("room:batch-b", "4", Some("k")),
            item("room:batch-c", "5", None),
        ];
        let results = timeout(BOUND, node.broker.publish_batch(&items))
            .await
            .expect("a batch is bounded");
        let receipts: Vec<(u64, bool)> = results
            .iter()
            .map(|r| {
                let receipt = r.as_ref().expect("each item is published");
                (receipt.offset, receipt.duplicate)
            })
            .collect();
        assert_eq!(
            receipts,
            [(1, false), (2, false), (2, false), (2, true), (1, false)],
            "offsets in order per channel; a repeated key publishes once"
        );
        let a = node.expect_publications("room:batch-a", 2).await;
        assert_eq!(offsets(&a), [1, 2]);
        let b = node.expect_publications("room:batch-b", 2).await;
        assert_eq!(
            b.iter().map(|p| p.data.as_str()).collect::<Vec<_>>(),
            ["0", "2"]
        );
        let kept = node.history("room:batch-a", page(None, 10, false)).await;
        assert_eq!(kept.publications, a, "kept as delivered");
    }

    /// Concurrent publishes take consecutive offsets and are delivered in offset order.
    pub async fn concurrent_publishes_take_consecutive_offsets_in_order(backend: &BrokerFixture) {
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
                    .publish(channel, data.clone().into(), &options)
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

/// Runs every broker check against the backend `$factory` returns, one test each:
/// `sessionhub_testkit::broker_conformance!(my_factory);` where
/// `async fn my_factory() -> BrokerFixture`. See [`conformance`](crate::conformance).
#[macro_export]
macro_rules! broker_conformance {
    ($factory:path) => {
        $crate::__conformance_tests!(
            suite: broker,
            worker_threads: 2,
            factory: $factory,
            fixture => &fixture,
            checks: [
                publish_reaches_subscriber_byte_for_byte,
                an_envelope_survives_delivery_recovery_and_history,
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
                history_pages_oldest_or_newest_first,
                history_gives_what_is_still_kept,
                a_batch_publishes_each_item_in_order,
            ]
        );
    };
}
