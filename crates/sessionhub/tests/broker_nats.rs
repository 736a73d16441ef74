//! `NatsBroker`, on a `nats-server -js` of each test's own (never port 4222): the broker
//! conformance suite (`sessionhub_testkit::conformance::broker`), then what only a
//! cross-node broker can show: several nodes, selective subscription, history shared
//! between nodes, and what happens when nats-server restarts.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use sessionhub::broker::{
    Broker, Deliver, HistoryConfig, NatsBroker, NatsBrokerConfig, Publication, PublishOptions,
};
use sessionhub_testkit::NatsServer;
use sessionhub_testkit::conformance::broker::{
    BOUND, BrokerFixture, BrokerNode, QUIET, Recorder, at, keyed, position, wait_ready, within,
};
use tokio::time::{Instant, sleep, timeout};

async fn nats() -> BrokerFixture {
    let server = NatsServer::start_async().await;
    let url = server.url();
    BrokerFixture::new(server, move |sink, history| {
        let url = url.clone();
        async move { nats_broker(&url, history, sink).await as Arc<dyn Broker> }
    })
}

sessionhub_testkit::broker_conformance!(nats);

/// A broker on `url` keeping `history` and delivering into `sink`, waited for until it is
/// ready.
async fn nats_broker(url: &str, history: HistoryConfig, sink: Arc<dyn Deliver>) -> Arc<NatsBroker> {
    let broker = NatsBrokerConfig::new(url)
        .unwrap()
        .history(history)
        .start(sink);
    wait_ready(&*broker).await;
    broker
}

/// A node on `server` with the default history, waited for until it is ready.
async fn nats_node(server: &NatsServer) -> (BrokerNode, Arc<NatsBroker>) {
    let sink = Arc::new(Recorder::default());
    let broker = nats_broker(&server.url(), HistoryConfig::default(), sink.clone()).await;
    let node = BrokerNode {
        broker: broker.clone(),
        sink,
    };
    (node, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_node_receives_only_its_channels() {
    within(async {
        let server = NatsServer::start_async().await;
        let (a, _) = nats_node(&server).await;
        let (b, _) = nats_node(&server).await;
        a.join("user:a").await;
        b.join("user:b").await;
        assert_eq!(a.publish("user:b", "for b").await.nodes, 1);
        assert_eq!(b.expect_taken("user:b", 1).await, ["for b"]);
        sleep(QUIET).await;
        // Not merely ignored: the server never sent it to node a (the sink counts every
        // delivery, taken or not).
        assert_eq!(a.sink.calls(), 0, "node a is not subscribed to user:b");
        // Channel names that hold subject syntax stay apart.
        a.join("room:x.y").await;
        b.join("room:*").await;
        assert_eq!(b.publish("room:x.y", "dots").await.nodes, 1);
        assert_eq!(a.publish("room:*", "star").await.nodes, 1);
        assert_eq!(a.expect_taken("room:x.y", 1).await, ["dots"]);
        assert_eq!(b.expect_taken("room:*", 1).await, ["star"]);
        sleep(QUIET).await;
        assert_eq!(
            (a.sink.calls(), b.sink.calls()),
            (1, 2),
            "each exactly its own"
        );
    })
    .await;
}

/// Both nodes receive; the count is a lower bound (a node that answers the probe later
/// than the publisher waits is not counted), never more than the nodes subscribed, and
/// counts both when they answer in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_two_nodes_on_one_channel_both_receive_and_are_counted() {
    within(async {
        let server = NatsServer::start_async().await;
        let (a, _) = nats_node(&server).await;
        let (b, _) = nats_node(&server).await;
        a.join("user:erin").await;
        b.join("user:erin").await;
        let mut counts = Vec::new();
        for n in 1..=5 {
            let receipt = a.publish("user:erin", &n.to_string()).await;
            assert_eq!(receipt.connections, None);
            counts.push(receipt.nodes);
            assert_eq!(a.expect_taken("user:erin", n).await.len(), n);
            assert_eq!(b.expect_taken("user:erin", n).await.len(), n);
        }
        // Under a loaded test run a second answer may come late once; not five times.
        assert!(
            counts.iter().all(|&nodes| (1..=2).contains(&nodes)),
            "{counts:?}"
        );
        assert!(counts.contains(&2), "{counts:?}");
    })
    .await;
}

/// Nodes publishing to one channel at once share its offsets: the compare-and-set on the
/// subject's last sequence leaves no gap and no duplicate, and every node delivers in
/// offset order what the history holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_nodes_publishing_at_once_share_one_sequence_of_offsets() {
    within(async {
        const EACH: u64 = 40;
        let server = NatsServer::start_async().await;
        let (a, _) = nats_node(&server).await;
        let (b, _) = nats_node(&server).await;
        let channel = "room:shared";
        a.join(channel).await;
        b.join(channel).await;
        let publishes = |node: &BrokerNode, name: &'static str| {
            let broker = node.broker.clone();
            (0..EACH).map(move |i| {
                let broker = broker.clone();
                async move {
                    let data = format!("\"{name}{i}\"");
                    let receipt = timeout(
                        BOUND,
                        broker.publish(
                            channel,
                            data.clone().into(),
                            &PublishOptions::with_history(),
                        ),
                    )
                    .await
                    .expect("bounded")
                    .expect("publish succeeds");
                    (receipt, data)
                }
            })
        };
        let sent = join_all(publishes(&a, "a").chain(publishes(&b, "b"))).await;
        let mut offsets: Vec<u64> = sent.iter().map(|(r, _)| r.offset).collect();
        offsets.sort_unstable();
        assert_eq!(
            offsets,
            (1..=2 * EACH).collect::<Vec<_>>(),
            "no gap, no duplicate"
        );
        let epoch = sent[0].0.epoch.clone();
        assert!(sent.iter().all(|(r, _)| r.epoch == epoch), "one epoch");
        for node in [&a, &b] {
            let live = node.expect_publications(channel, 2 * EACH as usize).await;
            let live_offsets: Vec<u64> = live.iter().map(|p| p.offset).collect();
            assert_eq!(
                live_offsets,
                (1..=2 * EACH).collect::<Vec<_>>(),
                "in offset order"
            );
        }
        let recovered = b.recover(channel, Some(&at(&epoch, 0))).await;
        assert!(recovered.recovered);
        assert_eq!(recovered.publications, a.sink.publications_on(channel));
        // An idempotency key is the channel's, whichever node sees it again.
        let first = a.publish_with(channel, "\"k\"", &keyed("k")).await;
        let again = b.publish_with(channel, "\"k again\"", &keyed("k")).await;
        assert!(again.duplicate);
        assert_eq!((again.offset, &again.epoch), (first.offset, &first.epoch));
    })
    .await;
}

/// A restarted nats-server: health red during the outage and publishes refused at once,
/// then green again with every subscription back and a resync asked for; the history
/// starts a new epoch (the server is a new process, which may have lost its newest
/// messages), and a client coming back with an old position is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_is_reported_then_recovered_with_resubscription() {
    within(async {
        let mut server = NatsServer::start_async().await;
        let (node, broker) = nats_node(&server).await;
        node.join("user:grace").await;
        let before = node.publish("user:grace", "\"before\"").await;
        assert_eq!(node.expect_taken("user:grace", 1).await, ["\"before\""]);

        tokio::task::block_in_place(|| server.kill());
        let deadline = Instant::now() + BOUND;
        while broker.ping().await.is_ok() {
            assert!(Instant::now() < deadline, "ping stayed green without NATS");
            sleep(Duration::from_millis(10)).await;
        }
        // A publish while NATS is away fails at once, and is never sent later.
        let started = Instant::now();
        let refused = broker
            .publish(
                "user:grace",
                "\"lost\"".into(),
                &PublishOptions::with_history(),
            )
            .await;
        assert!(refused.is_err(), "{refused:?}");
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        let unkept = broker
            .publish(
                "user:grace",
                "\"lost too\"".into(),
                &PublishOptions::default(),
            )
            .await;
        assert!(unkept.is_err(), "{unkept:?}");
        assert!(node.broker.recover("user:grace", None).await.is_err());
        assert!(node.sink.resyncs().is_empty(), "nothing to resync yet");

        let outage = Instant::now();
        tokio::task::block_in_place(|| server.restart()).unwrap();
        wait_ready(&*broker).await;
        let back = outage.elapsed();
        assert_eq!(broker.reconnects(), 1);
        assert_eq!(
            node.sink.resyncs().len(),
            1,
            "one resync after the reconnection"
        );

        // Resubscribed: a publish reaches the node again, in a new epoch.
        let after = node.publish("user:grace", "\"after\"").await;
        assert_eq!(after.nodes, 1);
        assert_eq!(
            node.expect_taken("user:grace", 2).await,
            ["\"before\"", "\"after\""],
            "nothing published during the outage arrives"
        );
        assert_ne!(
            after.epoch, before.epoch,
            "a restarted server starts a new epoch"
        );
        assert_eq!(after.offset, 1);
        let old = node.recover("user:grace", Some(&position(&before))).await;
        assert!(!old.recovered && old.publications.is_empty(), "{old:?}");
        assert_eq!((old.epoch.clone(), old.offset), (after.epoch.clone(), 1));
        eprintln!("nats-server back and the broker ready {back:?} after the restart began");
    })
    .await;
}

/// A sink whose deliveries block until `open` is called (or it is dropped): a node too
/// slow to read.
struct Stuck {
    recorder: Recorder,
    gate: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Stuck {
    fn open(&self) {
        *self.gate.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

/// Opens the gate when the test ends, even by a panic, so that the runtime can stop.
struct OpenOnDrop(Arc<Stuck>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

impl Deliver for Stuck {
    fn deliver(&self, channel: &str, publication: Publication) -> usize {
        // Off the runtime's worker: a worker blocked in place would hold the tasks queued
        // on it, the client's among them.
        tokio::task::block_in_place(|| {
            let open = self.gate.lock().unwrap();
            drop(self.opened.wait_while(open, |open| !*open).unwrap());
        });
        self.recorder.deliver(channel, publication)
    }

    fn resync(&self) {
        self.recorder.resync();
    }
}

/// A subscription whose buffer overflows loses messages (core NATS at most once, the
/// client's buffer full): the broker asks for a resync, once, so that clients recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_an_overflowing_subscription_asks_for_a_resync() {
    within(async {
        let server = NatsServer::start_async().await;
        let sink = Arc::new(Stuck {
            recorder: Recorder::default(),
            gate: std::sync::Mutex::new(false),
            opened: std::sync::Condvar::new(),
        });
        let _open = OpenOnDrop(sink.clone());
        let broker = nats_broker(&server.url(), HistoryConfig::default(), sink.clone()).await;
        sink.recorder.add_member("user:ivan");
        timeout(BOUND, broker.subscribe("user:ivan"))
            .await
            .unwrap()
            .unwrap();
        // More than async-nats buffers per subscription (65 536), sent raw to the live
        // subject while the node is stuck on the first one.
        const SENT: usize = 70_000;
        let subject = broker.live_subject("user:ivan");
        let port = server.port();
        tokio::task::spawn_blocking(move || raw_publish(port, &subject, SENT))
            .await
            .unwrap()
            .unwrap();
        let deadline = Instant::now() + BOUND;
        while sink.recorder.resyncs().is_empty() {
            assert!(Instant::now() < deadline, "no resync after an overflow");
            sleep(Duration::from_millis(10)).await;
        }
        sink.open();
        sleep(QUIET).await;
        let taken = sink.recorder.taken_on("user:ivan").len();
        assert!(taken < SENT, "{taken} of {SENT}: some were dropped");
        assert_eq!(sink.recorder.resyncs().len(), 1, "one resync per overflow");
    })
    .await;
}

/// Publishes `count` messages `{}` to `subject` over a plain NATS connection, and waits
/// until the server has them all (PING/PONG).
fn raw_publish(port: u16, subject: &str, count: usize) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(BOUND))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?; // INFO
    let mut writer = std::io::BufWriter::new(stream);
    writer.write_all(b"CONNECT {\"verbose\":false}\r\n")?;
    for _ in 0..count {
        write!(writer, "PUB {subject} 2\r\n{{}}\r\n")?;
    }
    writer.write_all(b"PING\r\n")?;
    writer.flush()?;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line.starts_with("PONG") || line.is_empty() {
            return Ok(());
        }
    }
}
