//! A broker on NATS: core NATS carries publications to the nodes that want them,
//! JetStream keeps the channel history.
//!
//! The broker is these parts: this file (its configuration and the [`Broker`] calls),
//! [`subjects`] (channel names as NATS subjects), [`headers`] (what a message carries
//! besides its data), [`history`] (the streams, offsets, epochs, recovery), [`subscriber`]
//! (the task that owns the subscriptions and the broker's health), [`order`] (live
//! publications back in offset order) and [`census`] (counting the nodes a publication
//! reaches).
//!
//! # Subjects
//!
//! The channel `c` is the subject `<prefix>.ch.<token>` for live delivery, where the
//! prefix defaults to `sessionhub` and `<token>` is `c` encoded into one subject token
//! (`user:42` is `user_3A42`, see [`subjects`]). A node subscribes, with one core NATS
//! subscription each, to the channels its sockets need and to nothing else: no wildcard,
//! so the server sends a node only its channels.
//!
//! # Publishing
//!
//! A publication kept in history goes to JetStream, on `<prefix>.h.<token>`, which the
//! stream `<prefix>_history` captures. The message's headers carry the channel offset
//! and epoch the broker assigned, and a compare-and-set on the channel's last stream
//! sequence makes the server refuse it if another publication got there first (then the
//! broker reads again and retries, which is safe since nothing was stored). Once stored,
//! the stream republishes it to the live subject, headers included, so live delivery and
//! history carry the same offset and epoch, in offset order (a node puts copies that
//! crossed on the way back in order, see [`order`]), and a refused message reaches
//! nobody. Details and the reasons are in [`history`].
//!
//! An idempotency key becomes the message's `Nats-Msg-Id`, and the stream's duplicate
//! window is [`HistoryConfig::idempotency_window`]: JetStream refuses a second message
//! with the key and names the first one's sequence, whose offset the receipt returns,
//! marked duplicate.
//!
//! A publication kept out of history ([`HistoryConfig::size`] 0 or
//! [`PublishOptions::history`] false) is a core NATS publish to the live subject, without
//! offset or epoch, followed by a round trip, so that the server has it before the caller
//! is told so; with an idempotency key it goes through the small stream `<prefix>_keys`
//! instead, which remembers the key and republishes the message like the history stream.
//!
//! NATS does not tell a publisher how many subscribers took a message, so each publish
//! sends a probe just before it, and [`Receipt::nodes`] counts the nodes that answer (see
//! [`census`]): a lower bound, at the price of a few milliseconds, or of one round trip
//! when no node is subscribed.
//!
//! # Outages
//!
//! async-nats reconnects on its own (jittered backoff, 50 ms doubling to 1 s here) and
//! sends its subscriptions again. Core NATS keeps nothing for a node that is away, so
//! after a reconnection the broker tells the sink to resync and clients recover from the
//! history. Meanwhile [`Broker::ping`] fails, and every publish and recovery fails at once
//! (the broker refuses to queue them in the client, which would send them after it had
//! reported them failed). A publish or recovery whose answer does not come within 1.5 s
//! fails; the broker never sends a publish again by itself, except after a refusal that
//! proves nothing was stored.
//!
//! A nats-server restart starts a new epoch on every channel (see [`history`]: the file
//! store may lose its newest messages in a crash), so clients that come back are told
//! `recovered: false`.

mod census;
mod headers;
mod history;
mod order;
mod subjects;
mod subscriber;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tungstenite::Utf8Bytes;

use self::census::Census;
use self::history::{COMMAND_TIMEOUT, History, Outcome};
use self::subjects::Subjects;
use self::subscriber::{SUBSCRIBE_TIMEOUT, Subscriber};
use super::link::{LinkState, Request};
use super::{
    Broker, Deliver, HistoryConfig, HistoryPage, HistoryQuery, PublishOptions, Receipt, Recovery,
    StreamPosition,
};
use crate::error::BrokerError;
use crate::redis::backoff::Backoff;

/// Delays between reconnection attempts (as the Redis broker's).
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Where a [`NatsBroker`] connects, how it names its subjects, and how much history it
/// keeps.
///
/// Validating is separate from starting so that a node can reject a bad URL up front and
/// still build its broker inside [`crate::hub::Hub::with_broker`]:
///
/// ```no_run
/// # async fn run() -> Result<(), sessionhub::error::BrokerError> {
/// use sessionhub::broker::NatsBrokerConfig;
/// use sessionhub::hub::Hub;
///
/// let config = NatsBrokerConfig::new("nats://127.0.0.1:4222")?.prefix("myapp")?;
/// let hub = Hub::with_broker("node-1", |sink| config.start(sink));
/// # let _ = hub;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct NatsBrokerConfig {
    servers: Vec<ServerAddr>,
    subjects: Subjects,
    history: HistoryConfig,
    probe_wait: Duration,
}

impl NatsBrokerConfig {
    /// The default subject prefix.
    pub const DEFAULT_PREFIX: &str = subjects::DEFAULT_PREFIX;

    /// The longest a publish waits for nodes to answer its probe, by default. A publish
    /// waits this long only if no answer comes sooner although some node is subscribed
    /// (with none, the server says so at once): a node stalled, or starved of CPU. With
    /// 100 ms, a node on a test machine busy with 19 NATS tests at once (2 cores, one test
    /// pushing 70 000 messages) was now and then not counted.
    pub const DEFAULT_PROBE_WAIT: Duration = Duration::from_millis(500);

    /// Checks `urls` (comma-separated `nats://host:port`, `tls://` for TLS; credentials
    /// may be in the URL) without connecting.
    pub fn new(urls: &str) -> Result<Self, BrokerError> {
        let servers = urls
            .split(',')
            .map(|url| ServerAddr::from_str(url.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BrokerError::unavailable("nats url", e))?;
        Ok(Self {
            servers,
            subjects: Subjects::new(Self::DEFAULT_PREFIX)?,
            history: HistoryConfig::default(),
            probe_wait: Self::DEFAULT_PROBE_WAIT,
        })
    }

    /// Replaces the subject prefix (default [`Self::DEFAULT_PREFIX`]): tokens of ASCII letters,
    /// digits, `-` and `_`, separated by `.`. Stream names are derived from it.
    pub fn prefix(mut self, prefix: &str) -> Result<Self, BrokerError> {
        self.subjects = Subjects::new(prefix)?;
        Ok(self)
    }

    /// Replaces how much history each channel keeps. Every node on the same prefix
    /// should keep the same: the streams' limits are set by the node that started last.
    pub fn history(mut self, history: HistoryConfig) -> Self {
        self.history = history;
        self
    }

    /// Replaces the longest a publish waits for nodes to answer its probe
    /// (default [`Self::DEFAULT_PROBE_WAIT`]); [`Receipt::nodes`] counts those that did.
    pub fn probe_wait(mut self, wait: Duration) -> Self {
        self.probe_wait = wait;
        self
    }

    /// Starts the broker; it connects in the background and keeps reconnecting. Until it
    /// is connected and the streams are in place, [`Broker::ping`] fails, and so do
    /// publishes, recoveries and subscribes.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, since it spawns the connection and subscription tasks.
    pub fn start(self, sink: Arc<dyn Deliver>) -> Arc<NatsBroker> {
        let (events, events_inbox) = mpsc::unbounded_channel();
        let options = ConnectOptions::new()
            .name("sessionhub")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    let _ = events.send(event);
                }
            });
        // With `retry_on_initial_connect`, connecting does no I/O before it returns: it
        // spawns the connection task, which connects in the background.
        let client = options
            .connect(self.servers)
            .now_or_never()
            .expect("connect returns at once with retry_on_initial_connect")
            .expect("the server addresses were checked by NatsBrokerConfig::new");
        let history = Arc::new(History::new(
            client.clone(),
            self.subjects.clone(),
            self.history,
        ));
        let (requests, inbox) = mpsc::unbounded_channel();
        let state = Arc::new(LinkState::new());
        Subscriber::spawn(
            client.clone(),
            history.clone(),
            self.subjects.clone(),
            sink,
            inbox,
            events_inbox,
            state.clone(),
        );
        Arc::new(NatsBroker {
            client,
            history,
            subjects: self.subjects,
            requests,
            state,
            probe_wait: self.probe_wait,
        })
    }
}

/// Waits until the server has processed everything this client sent before: a request to
/// a fresh inbox nobody listens on, which the server answers "no responders" in order with
/// the rest. (async-nats's `flush` only writes the client's buffer to the socket.)
pub(super) async fn round_trip(client: &async_nats::Client) -> Result<(), BrokerError> {
    use async_nats::RequestErrorKind;
    match client.request(client.new_inbox(), Bytes::new()).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
        Err(e) => Err(BrokerError::unavailable("nats round trip", e)),
    }
}

/// The jittered exponential backoff of the Redis broker, as async-nats asks for it: by
/// the number of attempts so far.
fn reconnect_delay(attempts: usize) -> Duration {
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    // The delay stops growing long before 16 attempts.
    let mut delay = backoff.next();
    for _ in 1..attempts.min(16) {
        delay = backoff.next();
    }
    delay
}

/// The broker of a node among many on NATS: core NATS subjects for delivery, JetStream
/// for history (`src/broker/nats/mod.rs` and the files beside it explain the design).
///
/// Dropping the last handle stops its tasks and closes the connection.
pub struct NatsBroker {
    client: async_nats::Client,
    history: Arc<History>,
    subjects: Subjects,
    requests: mpsc::UnboundedSender<Request>,
    state: Arc<LinkState>,
    probe_wait: Duration,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("subjects", &self.subjects)
            .field("history", self.history.config())
            .finish_non_exhaustive()
    }
}

impl NatsBroker {
    /// How many times the connection was restored after it had been lost.
    pub fn reconnects(&self) -> u64 {
        self.state.reconnects.load(Ordering::Relaxed)
    }

    /// The subject that carries `channel` to the nodes, for tests that watch NATS
    /// directly.
    #[doc(hidden)]
    pub fn live_subject(&self, channel: &str) -> String {
        self.subjects.live(channel)
    }

    /// A core NATS publish to the live subject, confirmed by a round trip.
    async fn publish_core(&self, channel: &str, data: Bytes) -> Result<Outcome, BrokerError> {
        self.history.connected()?;
        let sent = async {
            self.client
                .publish(self.subjects.live(channel), data)
                .await
                .map_err(|e| BrokerError::unavailable("nats publish", e))?;
            round_trip(&self.client).await
        };
        timeout(COMMAND_TIMEOUT, sent).await.unwrap_or_else(|_| {
            Err(BrokerError::unavailable(
                "nats publish",
                format!("not confirmed within {COMMAND_TIMEOUT:?}"),
            ))
        })?;
        Ok(Outcome {
            offset: 0,
            epoch: "".into(),
            duplicate: false,
        })
    }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn publish(
        &self,
        channel: &str,
        data: Utf8Bytes,
        options: &PublishOptions,
    ) -> Result<Receipt, BrokerError> {
        self.history.connected()?;
        let census = Census::ask(&self.client, self.subjects.live(channel)).await?;
        let data = Bytes::from(data);
        let key = options.idempotency_key.as_deref();
        let outcome = if options.history && self.history.config().keeps_history() {
            self.history.publish(channel, data, key).await?
        } else if let Some(key) = key {
            self.history.publish_keyed(channel, data, key).await?
        } else {
            self.publish_core(channel, data).await?
        };
        let nodes = match outcome.duplicate {
            // Nothing was delivered.
            true => 0,
            false => census.count(self.probe_wait).await,
        };
        Ok(Receipt {
            nodes,
            connections: None,
            offset: outcome.offset,
            epoch: outcome.epoch,
            duplicate: outcome.duplicate,
        })
    }

    async fn recover(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
    ) -> Result<Recovery, BrokerError> {
        if !self.history.config().keeps_history() {
            return Ok(Recovery::without_history(since));
        }
        self.history.recover(channel, since).await
    }

    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        if !self.history.config().keeps_history() {
            return Ok(HistoryPage::without_history());
        }
        self.history.page(channel, query).await
    }

    fn subscribe(&self, channel: &str) -> BoxFuture<'static, Result<(), BrokerError>> {
        let (done, confirmed) = oneshot::channel();
        let queued = self.requests.send(Request::Subscribe {
            channel: channel.to_owned(),
            done,
        });
        async move {
            queued.map_err(|_| task_stopped())?;
            match timeout(SUBSCRIBE_TIMEOUT + COMMAND_TIMEOUT, confirmed).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(task_stopped()),
                Err(_) => Err(BrokerError::unavailable(
                    "nats subscribe",
                    "not confirmed in time",
                )),
            }
        }
        .boxed()
    }

    fn unsubscribe(&self, channel: &str) {
        let _ = self.requests.send(Request::Unsubscribe {
            channel: channel.to_owned(),
        });
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        self.history.connected()?;
        if *self.state.healthy.borrow() {
            Ok(())
        } else {
            Err(BrokerError::unavailable(
                "nats",
                "connected, not ready yet (resubscribing, or the streams are not in place)",
            ))
        }
    }
}

fn task_stopped() -> BrokerError {
    BrokerError::unavailable("nats", "the subscription task stopped")
}
