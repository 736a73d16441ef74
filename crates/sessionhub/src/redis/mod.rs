//! How sessionhub talks to Redis: the one place that opens connections to it.
//!
//! The session store ([`crate::store::RedisStore`]), the broker
//! ([`crate::broker::RedisBroker`]) and presence ([`crate::presence::RedisPresence`]) all
//! build on a [`RedisConfig`]: the URL parsed once into a [`Mode`], one TLS setup, one set
//! of timeouts, and the key prefix. A new way to reach Redis (Sentinel, Cluster) is a new
//! [`Mode`] here, not a change in three components.
//!
//! - [`keys`]: every key and channel name, with the hash tags that keep each operation in
//!   one cluster slot.
//! - [`scripts`]: the Lua scripts, one `.lua` file each under `scripts/`.
//! - [`backoff`]: the jittered exponential backoff between reconnection attempts.

pub(crate) mod backoff;
pub(crate) mod keys;
pub(crate) mod scripts;

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, PubSub};
use ::redis::{AsyncConnectionConfig, RedisResult};

pub use self::keys::DEFAULT_PREFIX;
pub(crate) use self::keys::Keys;

/// One attempt to open a connection, for every connection sessionhub opens.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// One reply on a connection that is not a session store's (see [`Reconnect::SESSIONS`]).
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How Redis is deployed, as the configuration says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// One Redis server (or a proxy that looks like one), from a `redis://` or `rediss://`
    /// URL.
    Standalone,
}

/// The configuration is not usable: an invalid URL, or one for another protocol. The
/// message never contains the URL, which may carry a password.
#[derive(Debug, thiserror::Error)]
#[error("invalid redis URL: {0}")]
pub struct InvalidConfig(#[source] ::redis::RedisError);

/// Where Redis is and how to name keys in it; checked without connecting.
///
/// Parse it once and build every component from it:
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use sessionhub::broker::RedisBrokerConfig;
/// use sessionhub::hub::Hub;
/// use sessionhub::presence::RedisPresence;
/// use sessionhub::redis::RedisConfig;
/// use sessionhub::store::RedisStore;
///
/// let redis = RedisConfig::new("redis://127.0.0.1:6379")?.prefix("myapp:");
/// let store = RedisStore::lazy(&redis);
/// let broker = RedisBrokerConfig::from(redis.clone());
/// let hub = Hub::with_broker("node-1", |sink| broker.start(sink));
/// let presence = RedisPresence::lazy(&redis);
/// # let _ = (store, hub, presence);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RedisConfig {
    client: ::redis::Client,
    mode: Mode,
    keys: Keys,
}

impl RedisConfig {
    /// Checks `url` (`redis://`, or `rediss://` for TLS verified against the system's root
    /// certificates) without connecting. Keys go under [`DEFAULT_PREFIX`] unless
    /// [`prefix`](Self::prefix) says otherwise.
    pub fn new(url: &str) -> Result<Self, InvalidConfig> {
        // rustls needs a process-wide crypto provider for `rediss://`. Installing fails only
        // if the application installed one already, which is then used instead.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = ::redis::Client::open(url).map_err(InvalidConfig)?;
        Ok(Self {
            client,
            mode: Mode::Standalone,
            keys: Keys::new(DEFAULT_PREFIX),
        })
    }

    /// Puts every key and channel under `prefix`, which keeps deployments that share one
    /// Redis apart. It must not contain `{`, which would move the hash tags into it.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.keys = Keys::new(prefix);
        self
    }

    /// How Redis is deployed.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The names of keys and channels under this configuration's prefix.
    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A connection that reconnects by itself (redis-rs' `ConnectionManager`), opened on
    /// first use, so a node can start while Redis is down.
    pub(crate) fn managed(&self, reconnect: Reconnect) -> RedisResult<ConnectionManager> {
        ConnectionManager::new_lazy_with_config(self.client.clone(), reconnect.config())
    }

    /// Like [`managed`](Self::managed), connected now: fails if Redis cannot be reached.
    pub(crate) async fn managed_now(&self, reconnect: Reconnect) -> RedisResult<ConnectionManager> {
        ConnectionManager::new_with_config(self.client.clone(), reconnect.config()).await
    }

    /// A multiplexed connection that does not reconnect: its owner decides when to replace
    /// it (see `broker::redis::commands`).
    pub(crate) async fn multiplexed(&self) -> RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// A connection for SUBSCRIBE, bounded by [`CONNECT_TIMEOUT`].
    pub(crate) async fn pubsub(&self) -> RedisResult<PubSub> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub()).await {
            Ok(connected) => connected,
            Err(_) => Err(::redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {CONNECT_TIMEOUT:?}"),
            ))),
        }
    }
}

/// How a self-reconnecting connection retries while Redis is away. Every caller waits for
/// a reconnection in progress, so the budget is what one request may be held for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reconnect {
    retries: usize,
    /// The delays grow from 100 ms (redis-rs' exponential backoff) up to this.
    max_delay: Option<Duration>,
    response_timeout: Duration,
}

impl Reconnect {
    /// Session requests: redis-rs' default (6 retries) holds each request for ~10 s while
    /// Redis is down; a short budget rides out a blip and answers 503 fast during an outage.
    /// Replies within redis-rs' default 500 ms: a session script is one short step.
    pub(crate) const SESSIONS: Self = Self {
        retries: 2,
        max_delay: Some(Duration::from_millis(400)),
        response_timeout: Duration::from_millis(500),
    };

    /// Presence heartbeats and counts: one retry; a heartbeat that fails is sent again on
    /// the next tick anyway.
    pub(crate) const PRESENCE: Self = Self {
        retries: 1,
        max_delay: None,
        response_timeout: RESPONSE_TIMEOUT,
    };

    fn config(self) -> ConnectionManagerConfig {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(self.retries)
            .set_min_delay(Duration::from_millis(100))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.response_timeout));
        match self.max_delay {
            Some(max) => config.set_max_delay(max),
            None => config,
        }
    }
}
