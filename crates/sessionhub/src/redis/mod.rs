//! How sessionhub talks to Redis: the one place that opens connections to it.
//!
//! The session store ([`crate::store::RedisStore`]), the broker
//! ([`crate::broker::RedisBroker`]) and presence ([`crate::presence::RedisPresence`]) all
//! build on a [`RedisConfig`]: the URL (or the Sentinels) parsed once into a [`Mode`], one
//! TLS setup, one set of timeouts, and the key prefix. A new way to reach Redis is a new
//! [`Mode`] here, not a change in three components. Under Sentinel, every
//! connection is opened to the primary the Sentinels name at that moment, and `managed.rs`
//! (the store's and presence's self-reconnecting connection) and the broker give up a
//! connection whose server is no longer the primary.
//!
//! - `keys.rs`: every key and channel name, with the hash tags that keep each operation in
//!   one cluster slot.
//! - `scripts.rs`: the Lua scripts, one `.lua` file each under `scripts/`.
//! - `backoff.rs`: the jittered exponential backoff between reconnection attempts.
//! - `idle.rs`: when a connection was last used; one left idle is PINGed before a command
//!   that must not run twice.
//! - `cluster.rs`: the hash slot function and the broker's map of which primary owns which
//!   slot in a Redis Cluster.

pub(crate) mod backoff;
pub(crate) mod cluster;
pub(crate) mod idle;
pub(crate) mod keys;
pub(crate) mod scripts;

mod managed;

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManagerConfig, MultiplexedConnection, PubSub};
use ::redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    RedisError, RedisResult, Value,
};

pub use self::idle::IDLE_CHECK;
pub use self::keys::DEFAULT_PREFIX;
pub(crate) use self::keys::Keys;
pub(crate) use self::managed::Managed;

/// One attempt to open a connection, for every connection sessionhub opens.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// One reply on a connection that is not a session store's (see [`Reconnect::SESSIONS`]).
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Asking the Sentinels where the primary is, and checking with it that it is one.
pub(crate) const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How Redis is deployed, as the configuration says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// One Redis server (or a proxy that looks like one), from a `redis://` or `rediss://`
    /// URL.
    Standalone,
    /// A primary and its replicas watched by Redis Sentinel: every connection is opened to
    /// the primary the Sentinels name at that moment, and is given up when it stops being
    /// the primary (see [`RedisConfig::sentinel`]).
    Sentinel,
    /// A Redis Cluster, found through seed nodes (see [`RedisConfig::cluster`]): every key and
    /// channel goes to the primary that owns its hash slot, and pushes use sharded pub/sub.
    Cluster,
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
    target: Target,
    keys: Keys,
}

/// Where connections go.
#[derive(Clone)]
enum Target {
    Standalone(Box<Client>),
    Sentinel(Arc<Sentinels>),
    /// The seed nodes of a Redis Cluster, the first one's credentials and TLS for every node.
    Cluster(Arc<[ConnectionInfo]>),
}

/// The Sentinels to ask, and what to ask them.
///
/// Asked with `SENTINEL get-master-addr-by-name`, as Redis' guide for Sentinel clients says,
/// not with redis-rs' `Sentinel` (which reads `SENTINEL MASTERS`): with that, a store kept
/// reaching the old primary for ~10 s after a `SENTINEL FAILOVER` in our tests, and an old
/// primary that is still up passes the `ROLE` check, so its writes would be lost.
struct Sentinels {
    sentinels: Vec<Client>,
    /// A connection to each Sentinel, once one was opened, kept for the next question:
    /// every node's subscriber asks every 2 s.
    connections: Vec<std::sync::Mutex<Option<MultiplexedConnection>>>,
    master: String,
    /// What the primary is reached with: the first Sentinel's URL, whose credentials and
    /// TLS it shares, with the address replaced.
    primary: ConnectionInfo,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Not the client: its connection info may hold a password.
            Self::Standalone(_) => f.write_str("Standalone"),
            Self::Sentinel(s) => f
                .debug_struct("Sentinel")
                .field("master", &s.master)
                .finish(),
            Self::Cluster(seeds) => f
                .debug_struct("Cluster")
                .field("seeds", &seeds.len())
                .finish(),
        }
    }
}

impl Sentinels {
    /// The primary the first Sentinel that knows names, as what to connect to.
    async fn named(&self) -> RedisResult<ConnectionInfo> {
        let mut last = None;
        for (sentinel, kept) in self.sentinels.iter().zip(&self.connections) {
            match self.ask(sentinel, kept).await {
                Ok(Some((host, port))) => return Ok(at(&self.primary, host, port)),
                Ok(None) => {
                    last = Some(RedisError::from((
                        ErrorKind::InvalidClientConfig,
                        "a Sentinel does not know the master name",
                    )))
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one Sentinel"))
    }

    async fn ask(
        &self,
        sentinel: &Client,
        kept: &std::sync::Mutex<Option<MultiplexedConnection>>,
    ) -> RedisResult<Option<(String, u16)>> {
        let cached = kept.lock().expect("never poisoned").clone();
        let mut connection = match cached {
            Some(connection) => connection,
            None => {
                let connection = sentinel
                    .get_multiplexed_async_connection_with_config(&bounded())
                    .await?;
                *kept.lock().expect("never poisoned") = Some(connection.clone());
                connection
            }
        };
        let asked = ::redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async(&mut connection)
            .await;
        if asked.is_err() {
            // Whatever went wrong, the next question starts on a new connection.
            *kept.lock().expect("never poisoned") = None;
        }
        asked
    }

    /// The primary the Sentinels name, once it confirms (`ROLE`) that it is one: a
    /// Sentinel may name it a moment before its promotion is done.
    async fn primary(&self) -> RedisResult<Client> {
        let client = Client::open(self.named().await?)?;
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&bounded())
            .await?;
        let role: Vec<Value> = ::redis::cmd("ROLE").query_async(&mut connection).await?;
        match role.first() {
            Some(Value::BulkString(role)) if role == b"master" => Ok(client),
            _ => Err(RedisError::from((
                ErrorKind::Io,
                "the server the Sentinels name is not a primary yet",
            ))),
        }
    }
}

/// `info` (credentials, TLS) with its address replaced by `host:port`: how a server that
/// the Sentinels or the cluster name is reached.
pub(crate) fn at(info: &ConnectionInfo, host: String, port: u16) -> ConnectionInfo {
    let addr = match info.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    info.clone().set_addr(addr)
}

/// The connect and reply bounds of a connection sessionhub opens without a
/// `ConnectionManager`.
pub(crate) fn bounded() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
}

impl RedisConfig {
    /// Checks `url` (`redis://`, or `rediss://` for TLS verified against the system's root
    /// certificates) without connecting. Keys go under [`DEFAULT_PREFIX`] unless
    /// [`prefix`](Self::prefix) says otherwise.
    pub fn new(url: &str) -> Result<Self, InvalidConfig> {
        install_tls_provider();
        let client = Client::open(url).map_err(InvalidConfig)?;
        Ok(Self {
            target: Target::Standalone(Box::new(client)),
            keys: Keys::new(DEFAULT_PREFIX),
        })
    }

    /// Finds the primary named `master` through the Sentinels at `sentinels`, each
    /// `HOST:PORT` or a `redis://` / `rediss://` URL, without connecting. The primary is
    /// reached with the first Sentinel URL's credentials and TLS (`rediss://:pw@host:port`
    /// sets both for the Sentinels and the primary).
    ///
    /// Every connection asks the Sentinels afresh when it opens, and a connection to a
    /// server that is no longer the primary is given up: a write it refuses (`READONLY`,
    /// `NOREPLICAS`) or, for subscriptions, a check every 2 s that the Sentinels still name
    /// the same primary. redis-rs alone resolves the primary only once.
    pub fn sentinel(sentinels: &[impl AsRef<str>], master: &str) -> Result<Self, InvalidConfig> {
        install_tls_provider();
        let invalid = |what: &'static str| {
            InvalidConfig(RedisError::from((ErrorKind::InvalidClientConfig, what)))
        };
        if master.is_empty() {
            return Err(invalid("the Sentinel master name is empty"));
        }
        let infos = node_infos(sentinels)?;
        let primary = infos
            .first()
            .cloned()
            .ok_or_else(|| invalid("no Sentinel address given"))?;
        let sentinels = infos
            .into_iter()
            .map(Client::open)
            .collect::<RedisResult<Vec<_>>>()
            .map_err(InvalidConfig)?;
        Ok(Self {
            target: Target::Sentinel(Arc::new(Sentinels {
                connections: sentinels.iter().map(|_| Default::default()).collect(),
                sentinels,
                master: master.to_owned(),
                primary,
            })),
            keys: Keys::new(DEFAULT_PREFIX),
        })
    }

    /// Reaches the Redis Cluster that the seed nodes `seeds` belong to, each `HOST:PORT` or
    /// a `redis://` / `rediss://` URL, without connecting. Every node is reached with the
    /// first seed URL's credentials and TLS. Any live seed is enough: the nodes and the
    /// slots they own are asked from the cluster, and asked again after a failover, a
    /// resharding or a `MOVED` reply.
    ///
    /// Session and presence commands go through redis-rs' cluster client, with its own
    /// resending switched off: `managed.rs` follows `MOVED` and `ASK` and sends a command
    /// again only when the cluster says it did not run. The broker keeps its own connection
    /// to each primary it needs and its own slot map, so that a sharded subscription is
    /// never sent to the wrong node nor batched across slots (see `broker::redis`).
    pub fn cluster(seeds: &[impl AsRef<str>]) -> Result<Self, InvalidConfig> {
        install_tls_provider();
        let seeds = node_infos(seeds)?;
        if seeds.is_empty() {
            return Err(InvalidConfig(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "no Redis Cluster seed node given",
            ))));
        }
        Ok(Self {
            target: Target::Cluster(seeds.into()),
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
        match self.target {
            Target::Standalone(_) => Mode::Standalone,
            Target::Sentinel(_) => Mode::Sentinel,
            Target::Cluster(_) => Mode::Cluster,
        }
    }

    /// A new slot map of the cluster in [`Mode::Cluster`], not read yet; `None` in the
    /// other modes.
    pub(crate) fn topology(&self) -> Option<cluster::Topology> {
        match &self.target {
            Target::Cluster(seeds) => Some(cluster::Topology::new(seeds.clone())),
            _ => None,
        }
    }

    /// The seed nodes in [`Mode::Cluster`]; `None` in the other modes.
    pub(crate) fn cluster_seeds(&self) -> Option<&[ConnectionInfo]> {
        match &self.target {
            Target::Cluster(seeds) => Some(seeds),
            _ => None,
        }
    }

    /// The names of keys and channels under this configuration's prefix.
    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A client for the server to connect to now: the one server, or the primary the
    /// Sentinels name (checked with `ROLE` to be one).
    pub(crate) async fn client(&self) -> RedisResult<Client> {
        match &self.target {
            Target::Standalone(client) => Ok(Client::clone(client)),
            Target::Sentinel(target) => {
                match tokio::time::timeout(RESOLVE_TIMEOUT, target.primary()).await {
                    Ok(resolved) => resolved,
                    Err(_) => Err(timed_out("no primary from the Sentinels", RESOLVE_TIMEOUT)),
                }
            }
            Target::Cluster(_) => Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "a Redis Cluster has no one server: connect to the node that owns the slot",
            ))),
        }
    }

    /// The one server's client in [`Mode::Standalone`], known without asking anyone;
    /// `None` where the server must be asked for.
    fn standalone_client(&self) -> Option<Client> {
        match &self.target {
            Target::Standalone(client) => Some(Client::clone(client)),
            Target::Sentinel(_) | Target::Cluster(_) => None,
        }
    }

    /// Where the Sentinels say the primary is now, for a connection that must leave a
    /// server once it is no longer the primary; `None` in a mode where the server never
    /// changes.
    pub(crate) async fn primary(&self) -> RedisResult<Option<String>> {
        match &self.target {
            Target::Standalone(_) | Target::Cluster(_) => Ok(None),
            Target::Sentinel(target) => {
                match tokio::time::timeout(RESOLVE_TIMEOUT, target.named()).await {
                    Ok(named) => Ok(Some(named?.addr().to_string())),
                    Err(_) => Err(timed_out("no primary from the Sentinels", RESOLVE_TIMEOUT)),
                }
            }
        }
    }

    /// A multiplexed connection that does not reconnect: its owner decides when to replace
    /// it (see `broker::redis::commands`).
    pub(crate) async fn multiplexed(&self) -> RedisResult<MultiplexedConnection> {
        self.client()
            .await?
            .get_multiplexed_async_connection_with_config(&bounded())
            .await
    }

    /// A connection for SUBSCRIBE, bounded by [`CONNECT_TIMEOUT`], and the address of the
    /// server it went to.
    pub(crate) async fn pubsub(&self) -> RedisResult<(PubSub, String)> {
        let client = self.client().await?;
        match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
            Ok(connected) => Ok((connected?, address(&client))),
            Err(_) => Err(timed_out("no connection", CONNECT_TIMEOUT)),
        }
    }
}

/// The address `client` connects to, as `host:port`.
fn address(client: &Client) -> String {
    client.get_connection_info().addr().to_string()
}

/// Sentinel or cluster node addresses, each `HOST:PORT` (for `redis://HOST:PORT`) or a URL.
fn node_infos(nodes: &[impl AsRef<str>]) -> Result<Vec<ConnectionInfo>, InvalidConfig> {
    nodes
        .iter()
        .map(|node| node_url(node.as_ref()).into_connection_info())
        .collect::<RedisResult<Vec<ConnectionInfo>>>()
        .map_err(InvalidConfig)
}

/// A node address as a URL: `HOST:PORT` means `redis://HOST:PORT`.
fn node_url(node: &str) -> String {
    if node.contains("://") {
        node.to_owned()
    } else {
        format!("redis://{node}")
    }
}

pub(crate) fn timed_out(what: &str, after: Duration) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} within {after:?}"),
    ))
}

/// Whether `error` is a write the server refused because it is not (or no longer) a
/// primary that may take writes: `READONLY` from a replica, or `NOREPLICAS` from a primary
/// configured with `min-replicas-to-write` that lost its replicas (as an old primary does
/// when its replica is promoted). Nothing was written, so the command may be sent again,
/// to the primary the Sentinels name now.
pub(crate) fn is_not_primary(error: &RedisError) -> bool {
    matches!(error.code(), Some("READONLY" | "NOREPLICAS"))
}

/// rustls needs a process-wide crypto provider for `rediss://`. Installing fails only if the
/// application installed one already, which is then used instead.
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
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

    /// Rate limit takes, on the way to every connect and client publish: no retry and a
    /// short wait, since a node that cannot ask Redis takes from its own buckets instead
    /// (`limits::FallbackRateLimiter`) rather than hold the client.
    pub(crate) const LIMITS: Self = Self {
        retries: 0,
        max_delay: None,
        response_timeout: Duration::from_millis(250),
    };

    pub(super) fn config(self) -> ConnectionManagerConfig {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_configuration_is_checked_up_front() {
        let none: &[&str] = &[];
        assert!(RedisConfig::sentinel(none, "mymaster").is_err());
        assert!(RedisConfig::sentinel(&["127.0.0.1:26379"], "").is_err());
        assert!(RedisConfig::sentinel(&["http://127.0.0.1:26379"], "mymaster").is_err());
        let config = RedisConfig::sentinel(&["127.0.0.1:26379", "redis://h:1"], "m").unwrap();
        assert_eq!(config.mode(), Mode::Sentinel);
        assert_eq!(
            RedisConfig::new("redis://h:1").unwrap().mode(),
            Mode::Standalone
        );
    }

    #[test]
    fn a_cluster_configuration_is_checked_up_front() {
        let none: &[&str] = &[];
        assert!(RedisConfig::cluster(none).is_err());
        assert!(RedisConfig::cluster(&["http://127.0.0.1:7000"]).is_err());
        let config = RedisConfig::cluster(&["127.0.0.1:7000", "redis://h:7001"]).unwrap();
        assert_eq!(config.mode(), Mode::Cluster);
        assert_eq!(config.cluster_seeds().map(<[_]>::len), Some(2));
    }

    #[test]
    fn node_addresses_may_be_urls() {
        assert_eq!(node_url("10.0.0.5:26379"), "redis://10.0.0.5:26379");
        assert_eq!(node_url("rediss://:pw@h:1"), "rediss://:pw@h:1");
    }
}
