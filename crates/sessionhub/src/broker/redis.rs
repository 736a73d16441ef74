//! A broker on Redis pub/sub, for nodes that share one Redis.
//!
//! # Channel names
//!
//! The broker channel `c` travels on the Redis channel `<prefix>ch:{c}`, and the prefix
//! defaults to `sessionhub:`: the personal channel `user:42` is `sessionhub:ch:{user:42}`.
//! The braces make `c` the hash tag, so each channel maps to one cluster slot and the same
//! names keep working with Redis Cluster's sharded pub/sub. A prefix of its own keeps
//! deployments that share one Redis apart; it must not contain `{`, which would move the
//! hash tag into the prefix.
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
//! sending it twice cannot do harm (see `Retry`): always for PING and recover, for a
//! publish only with an idempotency key or when the error proves Redis never got it.
//! Retries stay within the same [`COMMAND_TIMEOUT`].
//!
//! Each command connection, when it opens, asks Redis who it is (`INFO server`: the
//! `run_id` of the process) and whether it keeps every write (`CONFIG GET`: `appendonly
//! yes` and `appendfsync always`). A TCP connection talks to one Redis process for its whole
//! life, so what it learned stays true for every command sent over it; the history scripts
//! get the answer as an argument instead of asking Redis on every publish.
//!
//! # History
//!
//! A publish is one Lua script on keys that share the channel's hash tag:
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

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use futures_util::future::{self, BoxFuture};
use futures_util::{FutureExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::{AsyncConnectionConfig, Msg, RedisError, RedisResult};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior, timeout, timeout_at};

use super::{
    Broker, Deliver, Epochs, HistoryConfig, Publication, PublishOptions, Receipt, Recovery,
    StreamPosition,
};
use crate::error::BrokerError;

/// The prefix of every Redis channel name unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "sessionhub:";

/// One attempt to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// One reply on the command connection, once connected.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The whole of one PUBLISH, recover or PING, including waiting for a reconnection in
/// progress and a retry: the caller hears about an outage within this, never later.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long `subscribe` waits for Redis to confirm.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the task waits for one SUBSCRIBE/UNSUBSCRIBE round before it gives the
/// connection up. Longer than `SUBSCRIBE_TIMEOUT`: resubscribing every channel after a
/// reconnection may take a while.
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the idle subscription connection is probed. A connection whose peer vanished
/// without closing it (a host that lost power, a partition) never ends its stream, so only
/// an unanswered PING reveals it.
const PING_INTERVAL: Duration = Duration::from_secs(2);
/// How long a probe may go unanswered.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// First delay before reconnecting.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The delay stops doubling here; with jitter one wait is at most 1.5 times this.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

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
    client: redis::Client,
    prefix: String,
    history: HistoryConfig,
}

impl RedisBrokerConfig {
    /// Checks `url` (`redis://`, or `rediss://` for TLS) without connecting.
    pub fn new(url: &str) -> Result<Self, BrokerError> {
        let client = redis::Client::open(url)
            .map_err(|e| BrokerError::Unavailable(format!("invalid redis URL: {e}")))?;
        Ok(Self {
            client,
            prefix: DEFAULT_PREFIX.to_owned(),
            history: HistoryConfig::default(),
        })
    }

    /// Replaces how much history each channel keeps.
    pub fn history(mut self, history: HistoryConfig) -> Self {
        self.history = history;
        self
    }

    /// Replaces the channel name prefix (default [`DEFAULT_PREFIX`]).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Starts the broker; it connects in the background. Until the first subscription
    /// connection is up, [`Broker::ping`] fails and `subscribe` waits for it (bounded).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, since it spawns the subscription task.
    pub fn start(self, sink: Arc<dyn Deliver>) -> Arc<RedisBroker> {
        let commands = Commands::new(self.client.clone());
        let names = ChannelNames::new(&self.prefix);
        let (requests, inbox) = mpsc::unbounded_channel();
        let state = Arc::new(LinkState {
            healthy: watch::Sender::new(false),
            reconnects: AtomicU64::new(0),
        });
        let task = Subscriber {
            client: self.client,
            commands: commands.clone(),
            names: names.clone(),
            sink,
            inbox,
            state: state.clone(),
            wanted: HashSet::new(),
            dirty: false,
            waiting: Vec::new(),
        };
        tokio::spawn(task.run());
        Arc::new(RedisBroker {
            commands,
            requests,
            names,
            state,
            publish_script: redis::Script::new(&publish_script(&self.history)),
            unkept_script: redis::Script::new(UNKEPT_SCRIPT),
            history: self.history,
            recover_script: redis::Script::new(RECOVER_SCRIPT),
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
    names: ChannelNames,
    state: Arc<LinkState>,
    history: HistoryConfig,
    publish_script: redis::Script,
    unkept_script: redis::Script,
    recover_script: redis::Script,
    epochs: Epochs,
}

/// The channel's epoch, started afresh when there is none, or when the epoch was started by
/// another Redis process than `run` (the `run_id` of the Redis the command connection talks
/// to): a Redis that restarted from a snapshot, or a replica promoted after a failover, may
/// have lost the newest publications while keeping the epoch, and reusing their offsets in
/// the same epoch would let clients skip publications silently. A Redis whose every write
/// is on disk before it is answered (`appendonly yes`, `appendfsync always`) loses nothing
/// on a restart, so there the broker passes `run` = "" and histories survive restarts.
macro_rules! epoch_lua {
    () => {
        r#"
local function epoch_of(meta, stream, fresh, run)
  local current = redis.call('HMGET', meta, 'e', 'r')
  local epoch = current[1]
  if epoch and run ~= '' and current[2] ~= run then
    epoch = false
  end
  if not epoch then
    epoch = fresh
    redis.call('DEL', meta, stream)
    redis.call('HSET', meta, 'e', epoch, 't', 0, 'r', run)
  end
  return epoch
end
"#
    };
}

/// Assigns the next offset, appends to the capped history and publishes, atomically.
/// KEYS: meta, history stream, idempotency key (or "" for none).
/// ARGV: data, pub/sub channel, new epoch, the Redis `run_id` to bind the epoch to ("" for
/// none). A publish kept out of history does not come here: it is a bare PUBLISH.
/// Returns `<offset>:<epoch>:<nodes>:<duplicate 0/1>` as one string: redis-rs parses a RESP
/// array at ~1 000 instructions an element, and this reply comes once per publish.
///
/// Redis runs this on every publish (~77 000 instructions, callgrind), so it is kept lean:
/// the history settings are constants in the script's text, not arguments (each argument is
/// a Lua string and table slot made on every call), and the offset becomes text once, with
/// `%d` (Lua's own number-to-text is `%.14g`, ~2 000 instructions each time).
fn publish_script(history: &HistoryConfig) -> String {
    format!(
        "local SIZE, TTL, META_TTL, IDEM = '{size}', '{ttl}', '{meta_ttl}', '{idem}'\n{epoch}{body}",
        size = history.size,
        ttl = history.ttl.as_millis(),
        meta_ttl = history.meta_ttl.as_millis(),
        idem = history.idempotency_window.as_millis(),
        epoch = epoch_lua!(),
        body = r#"
local epoch = epoch_of(KEYS[1], KEYS[2], ARGV[3], ARGV[4])
if KEYS[3] ~= '' then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    return seen .. ':' .. epoch .. ':0:1'
  end
end
local offset = string.format('%d', redis.call('HINCRBY', KEYS[1], 't', 1))
redis.call('PEXPIRE', KEYS[1], META_TTL)
-- '~' trims whole stream nodes only, several times cheaper than an exact cap; the stream
-- may hold a few more entries than `size`, and recovery serves only the last `size`.
redis.call('XADD', KEYS[2], 'MAXLEN', '~', SIZE, offset .. '-0', 'd', ARGV[1])
redis.call('PEXPIRE', KEYS[2], TTL)
if KEYS[3] ~= '' then
  redis.call('SET', KEYS[3], offset, 'PX', IDEM)
end
local nodes = redis.call('PUBLISH', ARGV[2], offset .. ':' .. epoch .. ':' .. ARGV[1])
return offset .. ':' .. epoch .. ':' .. string.format('%d', nodes) .. ':0'
"#
    )
}

/// Publishes a publication kept out of history once per idempotency key.
/// KEYS: idempotency key. ARGV: the `0::<data>` payload, pub/sub channel, window ms.
/// Returns `<nodes>:<duplicate 0/1>`.
const UNKEPT_SCRIPT: &str = r#"
if redis.call('SET', KEYS[1], '0', 'NX', 'PX', ARGV[3]) then
  return string.format('%d', redis.call('PUBLISH', ARGV[2], ARGV[1])) .. ':0'
end
return '0:1'
"#;

/// Reads a channel's position and, if the caller's epoch matches, the history after its
/// offset; starts an epoch for a channel without a valid one.
/// KEYS: meta, history stream. ARGV: since epoch ("" for none), since offset, new epoch,
/// meta ttl ms, the Redis `run_id` to bind the epoch to ("" for none), history size.
/// Returns {epoch, top offset, XRANGE entries}.
const RECOVER_SCRIPT: &str = concat!(
    epoch_lua!(),
    r#"
local epoch = epoch_of(KEYS[1], KEYS[2], ARGV[3], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local top = tonumber(redis.call('HGET', KEYS[1], 't'))
local entries = {}
local since = tonumber(ARGV[2])
if ARGV[1] ~= '' and ARGV[1] == epoch and since < top and top - since <= tonumber(ARGV[6]) then
  entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[2] .. '-0', '+')
end
return {epoch, top, entries}
"#
);

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
            Err(_) => Err(BrokerError::Unavailable(format!(
                "could not reach redis within {SUBSCRIBE_TIMEOUT:?}"
            ))),
        }
    }

    /// How many times the subscription connection was restored after it had been lost.
    pub fn reconnects(&self) -> u64 {
        self.state.reconnects.load(Ordering::Relaxed)
    }

    /// The Redis channel that carries the broker channel `channel`.
    pub fn redis_channel(&self, channel: &str) -> String {
        self.names.redis(channel)
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
        let redis_channel = self.names.redis(channel);
        let payload = format!("0::{}", data.as_str());
        let (nodes, duplicate) = match idempotency {
            None => {
                let nodes: usize = run(&self.commands, "publish", retry, |mut link| {
                    let mut command = redis::cmd("PUBLISH");
                    command.arg(&redis_channel).arg(&payload);
                    async move { command.query_async(&mut link.connection).await }
                })
                .await?;
                (nodes, false)
            }
            Some(idempotency) => {
                let window = self.history.idempotency_window.as_millis() as u64;
                let reply: String = run(&self.commands, "publish", retry, |mut link| {
                    let mut invocation = self.unkept_script.prepare_invoke();
                    invocation
                        .key(idempotency)
                        .arg(&payload)
                        .arg(&redis_channel)
                        .arg(window);
                    async move { invocation.invoke_async(&mut link.connection).await }
                })
                .await?;
                parse_unkept_receipt(&reply).ok_or_else(|| {
                    BrokerError::Unavailable(format!("redis publish: unexpected reply {reply:?}"))
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
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(
        &self,
        channel: &str,
        data: Utf8Bytes,
        options: &PublishOptions,
    ) -> Result<Receipt, BrokerError> {
        let names = &self.names;
        let idempotency = options
            .idempotency_key
            .as_ref()
            .map(|key| names.key(channel, &format!("idem:{key}")));
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
        let idempotency = idempotency.unwrap_or_default();
        let (meta, history) = (names.key(channel, "meta"), names.key(channel, "history"));
        let redis_channel = names.redis(channel);
        let epoch = self.epochs.next();
        let reply: String = run(&self.commands, "publish", retry, |mut link| {
            let mut invocation = self.publish_script.prepare_invoke();
            invocation
                .key(&meta)
                .key(&history)
                .key(&idempotency)
                .arg(data.as_str())
                .arg(&redis_channel)
                .arg(&epoch)
                .arg(&*link.bind);
            async move { invocation.invoke_async(&mut link.connection).await }
        })
        .await?;
        parse_receipt(&reply).ok_or_else(|| {
            BrokerError::Unavailable(format!("redis publish: unexpected reply {reply:?}"))
        })
    }

    async fn recover(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
    ) -> Result<Recovery, BrokerError> {
        if !self.history.keeps_history() {
            return Ok(Recovery::without_history(since));
        }
        let names = &self.names;
        let (meta, history) = (names.key(channel, "meta"), names.key(channel, "history"));
        let fresh = self.epochs.next();
        // Running it twice is harmless: a second run finds the epoch the first one created.
        let (epoch, offset, entries): (String, u64, Vec<(String, Vec<(String, String)>)>) = run(
            &self.commands,
            "recover",
            Retry::OnLostConnection,
            |mut link| {
                let mut invocation = self.recover_script.prepare_invoke();
                invocation
                    .key(&meta)
                    .key(&history)
                    .arg(since.map_or("", |s| s.epoch.as_str()))
                    .arg(since.map_or(0, |s| s.offset))
                    .arg(&fresh)
                    .arg(self.history.meta_ttl.as_millis() as u64)
                    .arg(&*link.bind)
                    .arg(self.history.size);
                async move { invocation.invoke_async(&mut link.connection).await }
            },
        )
        .await?;
        let epoch: Arc<str> = epoch.into();
        let mut publications = Vec::with_capacity(entries.len());
        for (id, fields) in entries {
            let at = id.split('-').next().and_then(|o| o.parse().ok());
            let data = fields.into_iter().find(|(f, _)| f == "d").map(|(_, d)| d);
            let (Some(at), Some(data)) = (at, data) else {
                // Not ours: treat the history as unusable rather than guess, but still
                // tell the channel's real position.
                return Ok(Recovery {
                    epoch,
                    offset,
                    recovered: false,
                    publications: Vec::new(),
                });
            };
            publications.push(Publication {
                offset: at,
                epoch: epoch.clone(),
                data: data.into(),
            });
        }
        Ok(Recovery::decide(epoch, offset, since, publications))
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
                Err(_) => Err(BrokerError::Unavailable(format!(
                    "redis did not confirm SUBSCRIBE within {SUBSCRIBE_TIMEOUT:?}"
                ))),
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
            return Err(BrokerError::Unavailable(
                "the redis subscription connection is down".to_owned(),
            ));
        }
        ping_commands(&self.commands).await
    }
}

/// The command connection: opened on first use, replaced after a command failed in a way
/// that means it is dead. Each [`Link`] knows the Redis process it talks to.
#[derive(Clone)]
struct Commands {
    client: redis::Client,
    current: Arc<Mutex<Option<Link>>>,
    /// Held while a connection is being opened, so that a burst of commands after an
    /// outage opens one connection, not one each.
    opening: Arc<tokio::sync::Mutex<()>>,
    /// Links opened so far: the next one's generation.
    opened: Arc<AtomicU64>,
}

/// One command connection and what it learned when it opened.
#[derive(Clone)]
struct Link {
    connection: MultiplexedConnection,
    /// The scripts' `run` argument: the `run_id` of the Redis process, or "" when that
    /// Redis keeps every write on disk before answering, so its histories survive
    /// restarts.
    bind: Arc<str>,
    /// Tells this link from the one that replaces it.
    generation: u64,
}

impl Commands {
    fn new(client: redis::Client) -> Self {
        Self {
            client,
            current: Arc::new(Mutex::new(None)),
            opening: Arc::new(tokio::sync::Mutex::new(())),
            opened: Arc::new(AtomicU64::new(0)),
        }
    }

    fn current(&self) -> Option<Link> {
        self.current.lock().expect("never poisoned").clone()
    }

    /// The live link, opening one if there is none.
    async fn link(&self) -> RedisResult<Link> {
        if let Some(link) = self.current() {
            return Ok(link);
        }
        let _opening = self.opening.lock().await;
        if let Some(link) = self.current() {
            return Ok(link);
        }
        // Counted apart from `current`, which is empty after a failure: a late error from
        // the old link must not be taken for one of its replacement.
        let generation = self.opened.fetch_add(1, Ordering::Relaxed);
        let link = self.open(generation).await?;
        *self.current.lock().expect("never poisoned") = Some(link.clone());
        Ok(link)
    }

    /// Forgets `link` after `error` if the error means the connection is dead; the next
    /// command opens a new one.
    fn failed(&self, link: &Link, error: &RedisError) {
        if !error.is_unrecoverable_error() {
            return;
        }
        let mut current = self.current.lock().expect("never poisoned");
        if current
            .as_ref()
            .is_some_and(|l| l.generation == link.generation)
        {
            *current = None;
        }
    }

    async fn open(&self, generation: u64) -> RedisResult<Link> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut connection)
            .await?;
        let run_id = info
            .lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(str::trim)
            .unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync");
        // A map over RESP3, pairs in an array over RESP2: both read as a map.
        type Config = HashMap<String, String>;
        let durable = match pipe.query_async::<(Config, Config)>(&mut connection).await {
            Ok((appendonly, appendfsync)) => {
                appendonly.get("appendonly").map(String::as_str) == Some("yes")
                    && appendfsync.get("appendfsync").map(String::as_str) == Some("always")
            }
            // Redis answered with an error: CONFIG is refused or renamed (managed services
            // often do that). Not durable is the safe answer.
            Err(e) if e.code().is_some() => false,
            Err(e) => return Err(e),
        };
        if !durable && run_id.is_empty() {
            // Some Redis-compatible servers leave it out; nothing then tells a restart.
            tracing::warn!(
                "redis broker: redis may lose writes on a restart and INFO names no run_id: \
                 history epochs cannot be bound to the redis process, so a restart that loses \
                 writes may let recovering clients skip publications"
            );
        } else if !durable {
            tracing::debug!(
                run_id,
                "redis broker: redis may lose writes on a restart; epochs are bound to its run_id"
            );
        }
        Ok(Link {
            connection,
            bind: if durable { "".into() } else { run_id.into() },
            generation,
        })
    }
}

/// PINGs over the command connection (retried once on a lost connection).
async fn ping_commands(commands: &Commands) -> Result<(), BrokerError> {
    let _: String = run(
        commands,
        "PING",
        Retry::OnLostConnection,
        |mut link| async move { redis::cmd("PING").query_async(&mut link.connection).await },
    )
    .await?;
    Ok(())
}

/// Whether a command that failed may be sent again: once, on a connection opened in place
/// of the one that failed, and within the same [`COMMAND_TIMEOUT`].
///
/// A retry must never publish twice. redis-rs cannot always say whether a failed command
/// reached Redis: "broken pipe" is what it reports both for a connection that was already
/// dead when the command was handed to it (nothing was sent: the case after Redis
/// restarted) and for one that died with the command in flight (the script may have run).
/// A timeout or an error reply comes after sending. So for a publish without an
/// idempotency key only a refused connection counts as proof that nothing was sent; a
/// publish with a key may be repeated after any lost connection, because the script
/// records the key atomically with the publication, and a second run finds it and returns
/// the first offset, marked duplicate, without publishing (as long as the idempotency
/// window is longer than [`COMMAND_TIMEOUT`]). Timeouts are never retried: Redis is slow
/// rather than gone, and the deadline would leave too little time anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Running the command twice is harmless: PING, recover, a publish with an
    /// idempotency key.
    OnLostConnection,
    /// A publish without an idempotency key: a second run would publish it twice.
    IfNeverSent,
}

impl Retry {
    fn allows(self, error: &RedisError) -> bool {
        match self {
            Self::OnLostConnection => {
                error.is_connection_refusal()
                    || (error.is_connection_dropped() && !error.is_timeout())
            }
            Self::IfNeverSent => error.is_connection_refusal(),
        }
    }
}

/// Runs one command on the command connection with the hard bound of [`COMMAND_TIMEOUT`],
/// making one more attempt if `retry` allows it for the first one's error.
async fn run<T, F, Fut>(
    commands: &Commands,
    command: &str,
    retry: Retry,
    attempt: F,
) -> Result<T, BrokerError>
where
    F: Fn(Link) -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let failed = |e: RedisError| BrokerError::Unavailable(format!("redis {command}: {e}"));
    let timed_out = || {
        BrokerError::Unavailable(format!(
            "redis {command}: no reply within {COMMAND_TIMEOUT:?}"
        ))
    };
    let once = async |retry: Option<Retry>| -> Result<RedisResult<T>, RedisError> {
        let link = commands.link().await?;
        let result = attempt(link.clone()).await;
        if let Err(e) = &result {
            commands.failed(&link, e);
            if retry.is_some_and(|r| r.allows(e)) {
                return Err(result.err().expect("an error"));
            }
        }
        Ok(result)
    };
    match timeout_at(deadline, once(Some(retry))).await {
        Ok(Ok(Ok(value))) => return Ok(value),
        Ok(Ok(Err(e))) => return Err(failed(e)),
        Ok(Err(e)) if retry.allows(&e) => {
            tracing::debug!(error = %e, command, "redis broker: connection lost, sending again");
        }
        // Opening a connection failed in a way that does not allow another try.
        Ok(Err(e)) => return Err(failed(e)),
        Err(_) => return Err(timed_out()),
    }
    match timeout_at(deadline, once(None)).await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(e)) | Err(e)) => Err(failed(e)),
        Err(_) => Err(timed_out()),
    }
}

fn task_stopped() -> BrokerError {
    BrokerError::Unavailable("the redis subscription task has stopped".to_owned())
}

/// Maps broker channels to Redis channels and back.
#[derive(Debug, Clone)]
struct ChannelNames {
    /// `<prefix>ch:{`: everything before the channel.
    head: String,
}

impl ChannelNames {
    fn new(prefix: &str) -> Self {
        Self {
            head: format!("{prefix}ch:{{"),
        }
    }

    // Built by hand rather than with `format!`, which cost ~900 instructions a name and
    // four names a publish (callgrind).
    fn redis(&self, channel: &str) -> String {
        self.join(&[channel, "}"])
    }

    /// A key of the channel's history, in the channel's hash slot.
    fn key(&self, channel: &str, suffix: &str) -> String {
        self.join(&[channel, "}:", suffix])
    }

    fn join(&self, parts: &[&str]) -> String {
        let len = self.head.len() + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut name = String::with_capacity(len);
        name.push_str(&self.head);
        for part in parts {
            name.push_str(part);
        }
        name
    }

    fn broker<'a>(&self, redis: &'a str) -> Option<&'a str> {
        redis.strip_prefix(self.head.as_str())?.strip_suffix('}')
    }
}

/// What the subscription task tells the broker handles.
struct LinkState {
    /// Subscribed to every wanted channel on a live connection.
    healthy: watch::Sender<bool>,
    reconnects: AtomicU64,
}

/// Reports the broker down when the task ends for any reason, a panic included, so that
/// readiness cannot stay green with nobody reading the subscription connection.
struct DownOnExit(Arc<LinkState>);

impl Drop for DownOnExit {
    fn drop(&mut self) {
        self.0.healthy.send_replace(false);
    }
}

type Ack = oneshot::Sender<Result<(), BrokerError>>;

enum Request {
    Subscribe { channel: String, done: Ack },
    Unsubscribe { channel: String },
}

/// How one connection's lifetime ended.
enum Ended {
    /// Every broker handle is gone.
    Shutdown,
    /// The connection never became healthy (refused, timed out, SUBSCRIBE failed).
    Refused(String),
    /// A healthy connection broke.
    Lost(String),
}

/// One SUBSCRIBE/UNSUBSCRIBE exchange in flight.
struct Round {
    subscribe: Vec<String>,
    unsubscribe: Vec<String>,
    /// Subscribers whose request was applied before the round started.
    acks: Vec<Ack>,
    confirmed: BoxFuture<'static, Result<(), String>>,
}

/// The background task that owns the subscription connection.
///
/// It moves between three states: connecting (one attempt), connected (the first round
/// resubscribes everything; once it is confirmed the broker is healthy), and backing off
/// after a failure. Requests are applied to `wanted` in every state, so call order is kept
/// whether or not Redis is there.
struct Subscriber {
    client: redis::Client,
    /// The broker's command connection, checked before each new connection reports
    /// healthy.
    commands: Commands,
    names: ChannelNames,
    sink: Arc<dyn Deliver>,
    inbox: mpsc::UnboundedReceiver<Request>,
    state: Arc<LinkState>,
    /// The channels the hub wants, as its calls left them.
    wanted: HashSet<String>,
    /// `wanted` changed since the last round started.
    dirty: bool,
    /// Subscribers waiting for the next round.
    waiting: Vec<Ack>,
}

impl Subscriber {
    async fn run(mut self) {
        let _down = DownOnExit(self.state.clone());
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        // Set after a loss, until the next healthy connection: that one counts as a
        // reconnection.
        let mut recovering = false;
        let mut failed_attempts = 0_u32;
        loop {
            match self.connection(recovering).await {
                Ended::Shutdown => return,
                Ended::Lost(reason) => {
                    self.state.healthy.send_replace(false);
                    tracing::warn!(%reason, "redis broker: subscription connection lost, reconnecting");
                    backoff.reset();
                    recovering = true;
                    failed_attempts = 0;
                }
                Ended::Refused(reason) => {
                    failed_attempts += 1;
                    // Every failure during a long outage would flood the log.
                    if failed_attempts == 1 {
                        tracing::warn!(%reason, "redis broker: cannot connect, retrying");
                    } else {
                        tracing::debug!(%reason, failed_attempts, "redis broker: still cannot connect");
                    }
                }
            }
            self.fail_waiting();
            if self.back_off(backoff.next_delay(unit_random())).await {
                return;
            }
        }
    }

    /// Opens a connection, brings it to `wanted`, and serves it until it breaks.
    async fn connection(&mut self, recovering: bool) -> Ended {
        let client = self.client.clone();
        let connecting = timeout(
            CONNECT_TIMEOUT,
            async move { client.get_async_pubsub().await },
        );
        tokio::pin!(connecting);
        let pubsub = loop {
            tokio::select! {
                connected = &mut connecting => match connected {
                    Ok(Ok(pubsub)) => break pubsub,
                    Ok(Err(e)) => return Ended::Refused(e.to_string()),
                    Err(_) => return Ended::Refused(format!("no connection within {CONNECT_TIMEOUT:?}")),
                },
                request = self.inbox.recv() => match request {
                    Some(request) => self.apply(request),
                    None => return Ended::Shutdown,
                },
            }
        };
        // The stream ends when the connection does: redis-rs drops its sender when the
        // socket closes or fails, so `None` is the drop signal.
        let (sink, mut messages) = pubsub.split();
        let mut subscribed = HashSet::new();
        let mut healthy = false;
        let ended = |healthy: bool, reason: String| {
            if healthy {
                Ended::Lost(reason)
            } else {
                Ended::Refused(reason)
            }
        };
        let mut round: Option<Round> = None;
        let mut probe: Option<BoxFuture<'static, Result<(), String>>> = None;
        let mut probes = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
        probes.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if round.is_none() && (!healthy || self.dirty || !self.waiting.is_empty()) {
                // The first round of a connection also checks the command connection.
                round = Some(self.start_round(&sink, &subscribed, !healthy));
            }
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => self.deliver(&message),
                    None => return ended(healthy, "connection closed".to_owned()),
                },
                request = self.inbox.recv() => match request {
                    Some(request) => self.apply(request),
                    None => return Ended::Shutdown,
                },
                confirmed = async { (&mut round.as_mut().unwrap().confirmed).await }, if round.is_some() => {
                    let Round { subscribe, unsubscribe, acks, .. } = round.take().unwrap();
                    if let Err(reason) = confirmed {
                        for ack in acks {
                            let _ = ack.send(Err(BrokerError::Unavailable(reason.clone())));
                        }
                        return ended(healthy, reason);
                    }
                    for channel in &unsubscribe {
                        subscribed.remove(channel);
                    }
                    subscribed.extend(subscribe);
                    for ack in acks {
                        let _ = ack.send(Ok(()));
                    }
                    if !healthy {
                        healthy = true;
                        self.state.healthy.send_replace(true);
                        if recovering {
                            self.state.reconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(channels = subscribed.len(), "redis broker: reconnected and resubscribed");
                            // Whatever was published while we were away never reached us.
                            self.sink.resync();
                        } else {
                            tracing::info!(channels = subscribed.len(), "redis broker: connected");
                        }
                    }
                },
                _ = probes.tick(), if probe.is_none() => {
                    let mut sink = sink.clone();
                    probe = Some(async move {
                        match timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err(e)) => Err(format!("PING failed: {e}")),
                            Err(_) => Err(format!("no PING reply within {PING_TIMEOUT:?}")),
                        }
                    }.boxed());
                },
                answered = async { probe.as_mut().unwrap().await }, if probe.is_some() => {
                    probe = None;
                    if let Err(reason) = answered {
                        return ended(healthy, reason);
                    }
                },
            }
        }
    }

    fn apply(&mut self, request: Request) {
        match request {
            Request::Subscribe { channel, done } => {
                self.dirty |= self.wanted.insert(channel);
                self.waiting.push(done);
            }
            Request::Unsubscribe { channel } => {
                self.dirty |= self.wanted.remove(&channel);
            }
        }
    }

    /// Sends what it takes to bring `subscribed` to `wanted`; everything missing goes in
    /// one SUBSCRIBE, which after a reconnection is every wanted channel.
    ///
    /// With `check_commands`, a confirmed round then PINGs over the command connection: if
    /// Redis went away, that connection is dead too, and it is replaced only after
    /// a command failed on it. Paying for that here, before the broker reports healthy,
    /// keeps the failure away from the first publish, which could not always be retried.
    /// The round does not fail if the PING does: [`Broker::ping`] reports that half.
    fn start_round(
        &mut self,
        sink: &PubSubSink,
        subscribed: &HashSet<String>,
        check_commands: bool,
    ) -> Round {
        self.dirty = false;
        let subscribe: Vec<String> = self.wanted.difference(subscribed).cloned().collect();
        let unsubscribe: Vec<String> = subscribed.difference(&self.wanted).cloned().collect();
        let to_redis = |channels: &[String]| -> Vec<String> {
            channels.iter().map(|c| self.names.redis(c)).collect()
        };
        let (on, off) = (to_redis(&subscribe), to_redis(&unsubscribe));
        let (mut sink_on, mut sink_off) = (sink.clone(), sink.clone());
        let commands = check_commands.then(|| self.commands.clone());
        let confirmed = async move {
            let exchange = future::try_join(
                async {
                    match on.is_empty() {
                        true => Ok(()),
                        false => sink_on.subscribe(&on).await,
                    }
                },
                async {
                    match off.is_empty() {
                        true => Ok(()),
                        false => sink_off.unsubscribe(&off).await,
                    }
                },
            );
            let exchanged = timeout(ROUND_TIMEOUT, exchange).await;
            if let (Ok(Ok(_)), Some(commands)) = (&exchanged, commands)
                && let Err(e) = ping_commands(&commands).await
            {
                tracing::debug!(error = %e, "redis broker: the command connection is not ready");
            }
            match exchanged {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("SUBSCRIBE failed: {e}")),
                Err(_) => Err(format!("SUBSCRIBE not confirmed within {ROUND_TIMEOUT:?}")),
            }
        }
        .boxed();
        Round {
            subscribe,
            unsubscribe,
            acks: std::mem::take(&mut self.waiting),
            confirmed,
        }
    }

    fn deliver(&self, message: &Msg) {
        let Some(channel) = self.names.broker(message.get_channel_name()) else {
            tracing::debug!(
                channel = message.get_channel_name(),
                "redis broker: message on a foreign channel"
            );
            return;
        };
        // Messages already on the wire when an UNSUBSCRIBE went out still arrive.
        if !self.wanted.contains(channel) {
            return;
        }
        match std::str::from_utf8(message.get_payload_bytes())
            .ok()
            .and_then(parse_envelope)
        {
            Some(publication) => {
                self.sink.deliver(channel, publication);
            }
            None => tracing::warn!(channel, "redis broker: dropped a malformed payload"),
        }
    }

    fn fail_waiting(&mut self) {
        for ack in self.waiting.drain(..) {
            let _ = ack.send(Err(BrokerError::Unavailable(
                "redis is unreachable, reconnecting".to_owned(),
            )));
        }
    }

    /// Waits `delay`, applying requests meanwhile; subscribers fail at once since Redis is
    /// known to be down. Returns whether the broker was dropped.
    async fn back_off(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return false,
                request = self.inbox.recv() => match request {
                    Some(request) => {
                        self.apply(request);
                        self.fail_waiting();
                    }
                    None => return true,
                },
            }
        }
    }
}

/// Reads the unkept publish script's `<nodes>:<duplicate>`.
fn parse_unkept_receipt(reply: &str) -> Option<(usize, bool)> {
    let (nodes, duplicate) = reply.split_once(':')?;
    let duplicate = match duplicate {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    Some((nodes.parse().ok()?, duplicate))
}

/// Reads the publish script's `<offset>:<epoch>:<nodes>:<duplicate>`.
fn parse_receipt(reply: &str) -> Option<Receipt> {
    let mut parts = reply.split(':');
    let receipt = Receipt {
        offset: parts.next()?.parse().ok()?,
        epoch: parts.next()?.into(),
        nodes: parts.next()?.parse().ok()?,
        connections: None,
        duplicate: match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        },
    };
    parts.next().is_none().then_some(receipt)
}

/// Splits `<offset>:<epoch>:<data>` as the publish script sends it.
fn parse_envelope(text: &str) -> Option<Publication> {
    let (offset, rest) = text.split_once(':')?;
    let (epoch, data) = rest.split_once(':')?;
    Some(Publication {
        offset: offset.parse().ok()?,
        epoch: epoch.into(),
        data: data.into(),
    })
}

/// Delays between reconnection attempts: doubling from `min` up to `max`, each spread by
/// ±50% so that nodes which lost Redis together do not all come back in the same instant.
#[derive(Debug, Clone)]
struct Backoff {
    min: Duration,
    max: Duration,
    base: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            base: min,
        }
    }

    /// The next delay; `unit` is uniform in `[0, 1)`.
    fn next_delay(&mut self, unit: f64) -> Duration {
        let delay = self.base.mul_f64(0.5 + unit.clamp(0.0, 1.0));
        self.base = self.base.saturating_mul(2).min(self.max);
        delay
    }

    /// Starts over from `min`, after a connection that worked.
    fn reset(&mut self) {
        self.base = self.min;
    }
}

/// Uniform in `[0, 1)`; the middle if the OS cannot provide randomness (jitter is a
/// nicety, not a correctness requirement).
fn unit_random() -> f64 {
    getrandom::u32().map_or(0.5, |r| f64::from(r) / (f64::from(u32::MAX) + 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay(0.5)).collect();
        let ms: Vec<_> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn backoff_jitter_stays_within_half_either_side() {
        let mut low = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut high = low.clone();
        assert_eq!(low.next_delay(0.0), Duration::from_millis(50));
        assert!(high.next_delay(0.999_999) < Duration::from_millis(150));
        // Out-of-range input cannot push a delay past the band.
        assert!(
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).next_delay(7.0)
                <= Duration::from_millis(150)
        );
        for _ in 0..1000 {
            let d = Backoff::new(Duration::from_secs(1), Duration::from_secs(1))
                .next_delay(unit_random());
            assert!(d >= Duration::from_millis(500) && d < Duration::from_millis(1500));
        }
    }

    #[test]
    fn backoff_resets_after_success() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        for _ in 0..10 {
            backoff.next_delay(0.5);
        }
        backoff.reset();
        assert_eq!(backoff.next_delay(0.5), Duration::from_millis(50));
    }

    #[test]
    fn publish_replies_parse_whole_or_not_at_all() {
        let receipt = parse_receipt("12:e1-3f:2:0").unwrap();
        assert_eq!(
            (
                receipt.offset,
                &*receipt.epoch,
                receipt.nodes,
                receipt.duplicate
            ),
            (12, "e1-3f", 2, false)
        );
        assert!(parse_receipt("4:e:0:1").unwrap().duplicate);
        assert_eq!(&*parse_receipt("0::3:0").unwrap().epoch, "");
        for bad in ["", "1:e:2", "1:e:2:0:9", "x:e:2:0", "1:e:-1:0", "1:e:2:2"] {
            assert!(parse_receipt(bad).is_none(), "{bad:?}");
        }
        assert_eq!(parse_unkept_receipt("3:0"), Some((3, false)));
        assert_eq!(parse_unkept_receipt("0:1"), Some((0, true)));
        for bad in ["", "3", "3:2", "x:0", "3:0:1", "-1:0"] {
            assert!(parse_unkept_receipt(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn channel_names_carry_the_channel_as_hash_tag() {
        let names = ChannelNames::new(DEFAULT_PREFIX);
        assert_eq!(names.redis("user:42"), "sessionhub:ch:{user:42}");
        assert_eq!(names.broker("sessionhub:ch:{user:42}"), Some("user:42"));
        // Braces inside a channel survive the round trip.
        assert_eq!(names.broker(&names.redis("a}b{c")), Some("a}b{c"));
        assert_eq!(names.broker("other:ch:{user:42}"), None);
        assert_eq!(names.broker("sessionhub:ch:{user:42"), None);
    }
}
