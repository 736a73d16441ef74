//! A broker on Redis pub/sub, for nodes that share one Redis.
//!
//! The broker is three parts: this file (its configuration and the [`Broker`] calls),
//! [`commands`] (the command connection and when a failed command may be sent again) and
//! [`subscriber`] (the task that owns the subscription connection); [`reply`] reads what
//! the scripts answer. How to reach Redis, the key names and the scripts themselves are in
//! [`crate::redis`].
//!
//! # Channel names
//!
//! The broker channel `c` travels on the Redis channel `<prefix>ch:{c}`, and the prefix
//! defaults to `sessionhub:`: the personal channel `user:42` is `sessionhub:ch:{user:42}`.
//! The braces make `c` the hash tag, so each channel maps to one cluster slot and the same
//! names keep working with Redis Cluster's sharded pub/sub (see [`crate::redis::keys`]).
//!
//! # Connections
//!
//! Each node holds two connections. PUBLISH and PING go over a multiplexed command
//! connection. Subscriptions live on a connection of their own, owned by one background
//! task. Because every node has exactly one subscription connection, the subscriber count
//! that PUBLISH returns is the number of nodes the message reached.
//!
//! The task keeps the set of channels the hub asked for, updated in call order, and brings
//! the connection to that set with SUBSCRIBE and UNSUBSCRIBE rounds. When the connection
//! drops, the task reports the broker unhealthy, reconnects with jittered exponential
//! backoff, subscribes to the whole set again in one SUBSCRIBE, makes sure the command
//! connection is a live one too (see below), and only then reports healthy again. Messages
//! published while a node is disconnected do not reach it: Redis pub/sub is
//! fire-and-forget, and PUBLISH's count does not include that node. So after a
//! reconnection the task tells the sink to resync: clients recover what they missed from
//! the history.
//!
//! The command connection cannot notice on its own that Redis went away: it is replaced
//! only after a command has failed on it. Two things keep that failure away from callers.
//! When the subscription task has (re)connected, it PINGs over the command connection
//! before reporting healthy, so a dead connection has been replaced by then. And a command
//! that fails because the connection was lost is sent once more, on a fresh one, when
//! sending it twice cannot do harm (see `commands::Retry`): always for PING and recover, for a
//! publish only with an idempotency key or when the error proves Redis never got it.
//! Retries stay within the same deadline (`commands::COMMAND_TIMEOUT`).
//!
//! Each command connection, when it opens, asks Redis who it is (`INFO server`: the
//! `run_id` of the process) and whether it keeps every write (`CONFIG GET`: `appendonly
//! yes` and `appendfsync always`). A TCP connection talks to one Redis process for its whole
//! life, so what it learned stays true for every command sent over it; the history scripts
//! get the answer as an argument instead of asking Redis on every publish.
//!
//! # History
//!
//! A publish is one Lua script (`src/redis/scripts/broker_publish.lua`) on keys that share the channel's hash tag:
//! `<prefix>ch:{c}:meta` (hash: `e` epoch, `t` top offset; expires [`HistoryConfig::meta_ttl`]
//! after its last use), `<prefix>ch:{c}:history` (a stream of entries with ids
//! `<offset>-0` and one field `d`, the data, trimmed to about [`HistoryConfig::size`]
//! entries, of which recovery serves the last `size`; expires [`HistoryConfig::ttl`] after
//! the last publish) and, with an idempotency key,
//! `<prefix>ch:{c}:idem:<key>` (the first publish's offset). The script assigns the next
//! offset, appends, and PUBLISHes `<offset>:<epoch>:<data>`, so the history and the live
//! stream can never disagree. A channel whose meta is gone (Redis lost its data, or the
//! channel was idle past the meta TTL) starts a new epoch, which tells clients that what
//! they remember no longer applies.
//!
//! A publish kept out of history ([`HistoryConfig::size`] 0, or
//! [`PublishOptions::history`] false) is a bare PUBLISH of `0::<data>`; with an idempotency
//! key, a short script that sets only the key and publishes if it was new.

mod batch;
mod commands;
mod reply;
mod sharded;
mod subscriber;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::redis::Script;
use async_trait::async_trait;
use futures_util::FutureExt;
use futures_util::future::{self, BoxFuture};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tungstenite::Utf8Bytes;

use self::commands::{Commands, Retry, Route, ping_commands, run};
use self::reply::{StreamEntries, parse_entries, parse_receipt, parse_unkept_receipt};
use self::sharded::Sharded;
use self::subscriber::Subscriber;
use super::link::{LinkState, Request};
use super::{
    BatchItem, Broker, Deliver, Epochs, HistoryConfig, HistoryPage, HistoryQuery, PublishOptions,
    Receipt, Recovery, StreamPosition, publish_one_by_one,
};
use crate::error::BrokerError;
use crate::redis::scripts::PublishSettings;
use crate::redis::{Keys, Mode, RedisConfig, scripts};

/// How long `subscribe` waits for Redis to confirm.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a [`RedisBroker`] connects and how it names its channels.
///
/// Validating the URL is separate from starting so that a node can reject a bad URL up
/// front and still build its broker inside [`crate::hub::Hub::with_broker`]:
///
/// ```no_run
/// # async fn run() -> Result<(), sessionhub::error::BrokerError> {
/// use sessionhub::broker::RedisBrokerConfig;
/// use sessionhub::hub::Hub;
///
/// let config = RedisBrokerConfig::new("redis://127.0.0.1:6379")?.prefix("myapp:");
/// let hub = Hub::with_broker("node-1", |sink| config.start(sink));
/// # let _ = hub;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RedisBrokerConfig {
    redis: RedisConfig,
    history: HistoryConfig,
}

/// A broker on `redis`, with the default [`HistoryConfig`].
impl From<RedisConfig> for RedisBrokerConfig {
    fn from(redis: RedisConfig) -> Self {
        Self {
            redis,
            history: HistoryConfig::default(),
        }
    }
}

impl RedisBrokerConfig {
    /// Checks `url` (`redis://`, or `rediss://` for TLS) without connecting.
    pub fn new(url: &str) -> Result<Self, BrokerError> {
        let redis = RedisConfig::new(url).map_err(|e| BrokerError::unavailable("redis", e))?;
        Ok(redis.into())
    }

    /// Replaces how much history each channel keeps.
    pub fn history(mut self, history: HistoryConfig) -> Self {
        self.history = history;
        self
    }

    /// Replaces the channel name prefix (default [`crate::redis::DEFAULT_PREFIX`]).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.redis = self.redis.prefix(prefix);
        self
    }

    /// Starts the broker; it connects in the background. Until the first subscription
    /// connection is up, [`Broker::ping`] fails and `subscribe` waits for it (bounded).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, since it spawns the subscription task.
    pub fn start(self, sink: Arc<dyn Deliver>) -> Arc<RedisBroker> {
        let topology = self.redis.topology().map(Arc::new);
        let commands = Commands::new(self.redis.clone(), topology.clone());
        let keys = self.redis.keys().clone();
        let publish = match self.redis.mode() {
            Mode::Cluster => "SPUBLISH",
            _ => "PUBLISH",
        };
        let (requests, inbox) = mpsc::unbounded_channel();
        let state = Arc::new(LinkState::new());
        match topology {
            Some(topology) => {
                let (commands, keys) = (commands.clone(), keys.clone());
                Sharded::spawn(topology, commands, keys, sink, inbox, state.clone());
            }
            None => Subscriber::spawn(self.redis, commands.clone(), sink, inbox, state.clone()),
        }
        let publish_text = scripts::broker_publish_text(PublishSettings {
            size: self.history.size,
            ttl_ms: self.history.ttl.as_millis(),
            meta_ttl_ms: self.history.meta_ttl.as_millis(),
            idem_ms: self.history.idempotency_window.as_millis(),
            command: publish,
        });
        Arc::new(RedisBroker {
            commands,
            requests,
            keys,
            state,
            publish_script: Script::new(&publish_text),
            publish_text,
            publish,
            history: self.history,
            epochs: Epochs::new(),
        })
    }
}

/// The broker of a node among many: channels are Redis pub/sub channels.
///
/// The broker channel `c` is the Redis channel `<prefix>ch:{c}` (`sessionhub:ch:{c}` by
/// default; the braces make `c` the cluster hash tag). PUBLISH goes over a command
/// connection; subscriptions live on a second connection owned by a background task, so
/// [`Receipt::nodes`] counts the nodes that took a message. When the subscription
/// connection drops, [`Broker::ping`] fails until the task has reconnected (jittered
/// exponential backoff, 50 ms doubling to 1 s) and subscribed to every channel again.
///
/// Dropping the last handle stops the task and closes both connections.
pub struct RedisBroker {
    commands: Commands,
    requests: mpsc::UnboundedSender<Request>,
    keys: Keys,
    state: Arc<LinkState>,
    history: HistoryConfig,
    /// Made per broker: the history settings are part of its text.
    publish_script: Script,
    /// Its text, to load it where a pipeline found it missing.
    publish_text: String,
    /// `PUBLISH`, or `SPUBLISH` on a Redis Cluster.
    publish: &'static str,
    epochs: Epochs,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("keys", &self.keys)
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects to `url` with channel names under `prefix`, and waits until the
    /// subscription connection is up; fails if Redis cannot be reached within about two
    /// seconds. Use [`RedisBrokerConfig`] to start without waiting.
    pub async fn connect(
        url: &str,
        prefix: &str,
        sink: Arc<dyn Deliver>,
    ) -> Result<Arc<Self>, BrokerError> {
        let broker = RedisBrokerConfig::new(url)?.prefix(prefix).start(sink);
        let mut healthy = broker.state.healthy.subscribe();
        match timeout(SUBSCRIBE_TIMEOUT, healthy.wait_for(|up| *up)).await {
            Ok(Ok(_)) => Ok(broker),
            Ok(Err(_)) => Err(task_stopped()),
            Err(_) => Err(BrokerError::unavailable(
                "redis",
                format!("not reached within {SUBSCRIBE_TIMEOUT:?}"),
            )),
        }
    }

    /// How many times the subscription connection was restored after it had been lost.
    pub fn reconnects(&self) -> u64 {
        self.state.reconnects.load(Ordering::Relaxed)
    }

    /// The Redis channel that carries the broker channel `channel`, for tests that watch
    /// Redis directly.
    #[doc(hidden)]
    pub fn redis_channel(&self, channel: &str) -> String {
        self.keys.channel(channel)
    }

    /// A publish kept out of history: `0::<data>` (offset 0, epoch ""), with no stream or
    /// meta key behind it. Without an idempotency key, a bare PUBLISH; with one, a small
    /// script that remembers the key and publishes only if it is new.
    /// `idempotency` is the key's Redis key; `retry` is decided by it, as for any publish.
    async fn publish_unkept(
        &self,
        channel: &str,
        data: Utf8Bytes,
        idempotency: Option<&str>,
        retry: Retry,
    ) -> Result<Receipt, BrokerError> {
        let redis_channel = self.keys.channel(channel);
        let payload = format!("0::{}", data.as_str());
        let (nodes, duplicate) = match idempotency {
            None => {
                let route = Route::Key(&redis_channel);
                let nodes: usize = run(&self.commands, "publish", retry, route, |mut link| {
                    let mut command = ::redis::cmd(self.publish);
                    command.arg(&redis_channel).arg(&payload);
                    async move { command.query_async(&mut link.connection).await }
                })
                .await?;
                (nodes, false)
            }
            Some(idempotency) => {
                let window = self.history.idempotency_window.as_millis() as u64;
                let route = Route::Key(idempotency);
                let reply: String = run(&self.commands, "publish", retry, route, |mut link| {
                    let mut invocation = scripts::BROKER_PUBLISH_UNKEPT.prepare_invoke();
                    invocation
                        .key(idempotency)
                        .arg(&payload)
                        .arg(&redis_channel)
                        .arg(window)
                        .arg(self.publish);
                    async move { invocation.invoke_async(&mut link.connection).await }
                })
                .await?;
                parse_unkept_receipt(&reply).ok_or_else(|| {
                    BrokerError::unavailable("redis publish", format!("unexpected reply {reply:?}"))
                })?
            }
        };
        Ok(Receipt {
            offset: 0,
            epoch: "".into(),
            nodes,
            connections: None,
            duplicate,
        })
    }

    /// Runs `script` (recover or history) on `channel`'s meta and history: it starts the
    /// channel's epoch if it has none, and answers the epoch, the top offset and the entries
    /// after `since`. `extra` are the script's arguments after the common ones. Running it
    /// twice is harmless: a second run finds the epoch the first one created.
    async fn read_history(
        &self,
        channel: &str,
        command: &str,
        script: &Script,
        since: Option<&StreamPosition>,
        extra: &[u64],
    ) -> Result<(String, u64, StreamEntries), BrokerError> {
        let keys = &self.keys;
        let (meta, history) = (
            keys.channel_key(channel, "meta"),
            keys.channel_key(channel, "history"),
        );
        let fresh = self.epochs.next();
        run(
            &self.commands,
            command,
            Retry::OnLostConnection,
            Route::Key(&meta),
            |mut link| {
                let mut invocation = script.prepare_invoke();
                invocation
                    .key(&meta)
                    .key(&history)
                    .arg(since.map_or("", |s| s.epoch.as_str()))
                    .arg(since.map_or(0, |s| s.offset))
                    .arg(&fresh)
                    .arg(self.history.meta_ttl.as_millis() as u64)
                    .arg(&*link.bind);
                for arg in extra {
                    invocation.arg(*arg);
                }
                async move { invocation.invoke_async(&mut link.connection).await }
            },
        )
        .await
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(
        &self,
        channel: &str,
        data: Utf8Bytes,
        options: &PublishOptions,
    ) -> Result<Receipt, BrokerError> {
        let keys = &self.keys;
        let idempotency = options
            .idempotency_key
            .as_ref()
            .map(|key| keys.channel_key(channel, &format!("idem:{key}")));
        // With a key, a second run of the script finds it and publishes nothing, so a
        // retry is harmless; without one, only an attempt that never reached Redis may be
        // repeated.
        let retry = if idempotency.is_some() {
            Retry::OnLostConnection
        } else {
            Retry::IfNeverSent
        };
        if !options.history || !self.history.keeps_history() {
            return self
                .publish_unkept(channel, data, idempotency.as_deref(), retry)
                .await;
        }
        let (meta, history) = (
            keys.channel_key(channel, "meta"),
            keys.channel_key(channel, "history"),
        );
        let redis_channel = keys.channel(channel);
        let epoch = self.epochs.next();
        let route = Route::Key(&meta);
        let reply: String = run(&self.commands, "publish", retry, route, |mut link| {
            let mut invocation = self.publish_script.prepare_invoke();
            invocation.key(&meta).key(&history);
            if let Some(idempotency) = &idempotency {
                invocation.key(idempotency);
            }
            invocation
                .arg(data.as_str())
                .arg(&redis_channel)
                .arg(&epoch)
                .arg(&*link.bind);
            async move { invocation.invoke_async(&mut link.connection).await }
        })
        .await?;
        parse_receipt(&reply).ok_or_else(|| {
            BrokerError::unavailable("redis publish", format!("unexpected reply {reply:?}"))
        })
    }

    async fn publish_batch(&self, items: &[BatchItem]) -> Vec<Result<Receipt, BrokerError>> {
        if !self.history.keeps_history() {
            // Bare PUBLISHes or key-only scripts: one by one, as `publish` sends them.
            return publish_one_by_one(self, items).await;
        }
        batch::publish(self, items).await
    }

    async fn recover(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
    ) -> Result<Recovery, BrokerError> {
        if !self.history.keeps_history() {
            return Ok(Recovery::without_history(since));
        }
        let size = self.history.size as u64;
        let (epoch, offset, entries) = self
            .read_history(channel, "recover", &scripts::BROKER_RECOVER, since, &[size])
            .await?;
        let epoch: Arc<str> = epoch.into();
        let Some(publications) = parse_entries(&epoch, entries) else {
            // Not ours: treat the history as unusable rather than guess, but still tell the
            // channel's real position.
            return Ok(Recovery {
                epoch,
                offset,
                recovered: false,
                publications: Vec::new(),
            });
        };
        Ok(Recovery::decide(epoch, offset, since, publications))
    }

    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        if !self.history.keeps_history() {
            return Ok(HistoryPage::without_history());
        }
        let limit = query.limit.min(self.history.size) as u64;
        let extra = [limit, u64::from(query.reverse), self.history.size as u64];
        let (epoch, offset, entries) = self
            .read_history(
                channel,
                "history",
                &scripts::BROKER_HISTORY,
                query.since.as_ref(),
                &extra,
            )
            .await?;
        let epoch: Arc<str> = epoch.into();
        let publications = parse_entries(&epoch, entries).ok_or_else(|| {
            BrokerError::unavailable("redis history", "an entry the broker did not write")
        })?;
        Ok(HistoryPage {
            epoch,
            offset,
            publications,
        })
    }

    fn subscribe(&self, channel: &str) -> BoxFuture<'static, Result<(), BrokerError>> {
        let (done, confirmed) = oneshot::channel();
        let request = Request::Subscribe {
            channel: channel.to_owned(),
            done,
        };
        if self.requests.send(request).is_err() {
            return future::ready(Err(task_stopped())).boxed();
        }
        async move {
            match timeout(SUBSCRIBE_TIMEOUT, confirmed).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(task_stopped()),
                Err(_) => Err(BrokerError::unavailable(
                    "redis",
                    format!("SUBSCRIBE not confirmed within {SUBSCRIBE_TIMEOUT:?}"),
                )),
            }
        }
        .boxed()
    }

    fn unsubscribe(&self, channel: &str) {
        // A stopped task has no subscriptions left to drop.
        let _ = self.requests.send(Request::Unsubscribe {
            channel: channel.to_owned(),
        });
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        // Publishing may work while this node hears nothing; readiness covers both halves.
        if !*self.state.healthy.borrow() {
            return Err(BrokerError::unavailable(
                "redis",
                "the subscription connection is down",
            ));
        }
        ping_commands(&self.commands).await
    }
}

fn task_stopped() -> BrokerError {
    BrokerError::unavailable("redis", "the subscription task has stopped")
}
