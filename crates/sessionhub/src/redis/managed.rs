//! A connection that reconnects by itself, follows the primary under Sentinel, and routes by
//! slot on a Redis Cluster.
//!
//! redis-rs' `ConnectionManager` reconnects to the address it was made with, and so keeps
//! knocking on a primary that died or was demoted by a failover. [`Managed`] keeps one
//! `ConnectionManager` and, in [`Mode::Sentinel`](super::Mode::Sentinel), drops it when a
//! command says its server is gone or no longer the primary, so that the next command asks
//! the Sentinels again. With one Redis server it is just the `ConnectionManager`.
//!
//! In [`Mode::Cluster`](super::Mode::Cluster) it is redis-rs' cluster client, which keeps a
//! connection to every node, sends each command to the primary that owns its first key's
//! slot (`EVALSHA` included: every session and presence script touches one slot), and reads
//! the slot map again after a `MOVED` or a lost node. Callers see one type, [`Connection`],
//! so scripts, commands and pipelines are sent the same way in every mode.
//!
//! # No command runs twice
//!
//! Left to itself, the cluster client sends a command again when its connection drops or its
//! reply times out (up to 16 times). Such a command may have run: a primary killed after it
//! ran a script (and replicated it) but before the reply left, or a reply merely late. A
//! session update sent twice adds its increments twice, and a rotation's second step sent
//! twice finds its own record and reports the new id taken (measured: with the client's own
//! retries, an increment whose reply the server dropped ran 9 times; `store_cluster.rs`
//! `a_command_whose_reply_is_lost_runs_once`). `ConnectionManager` never
//! resends, and the store's contract (exact increments) relies on that. So the cluster client
//! is built with no retries of its own, and [`Cluster`] sends a command again only when the
//! server said it did not run it:
//! - `MOVED`: the slot map was out of date; the client reads it again before it sends the
//!   next command, and the command is routed again by the new map.
//! - `ASK`: the slot is moving and this key has left already; the command is sent to the
//!   node named, after `ASKING`, as Redis' cluster specification asks.
//! - `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`, `READONLY`, and no connection to
//!   send it on: sent again after a short wait, within the [`Reconnect`] budget.
//!
//! A lost connection or a timeout is the caller's error ([`StoreError::Unavailable`] for the
//! store), as it is with one server.
//!
//! [`StoreError::Unavailable`]: crate::error::StoreError::Unavailable

use std::sync::Mutex;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::SingleNodeRoutingInfo;
use ::redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, RetryMethod, Value};

use super::idle::LastUse;
use super::{CONNECT_TIMEOUT, Mode, Reconnect, RedisConfig, is_not_primary};

/// How many redirections (`MOVED`, `ASK`) one command follows: a slot map read after a
/// `MOVED` may still be stale for a moment, and a moving slot answers `ASK` then `MOVED`.
const MAX_REDIRECTS: usize = 5;
/// The first wait before a command the cluster refused is sent again; it doubles up to the
/// [`Reconnect`] budget's longest delay.
const MIN_DELAY: Duration = Duration::from_millis(100);

/// A self-reconnecting connection for the session store and presence.
pub(crate) struct Managed {
    config: RedisConfig,
    reconnect: Reconnect,
    /// With one server, the connection for good: no lock on the way to it (a session
    /// request's hot path).
    fixed: Option<ConnectionManager>,
    /// Under Sentinel, the connection to the primary as last found, if any.
    current: Mutex<Option<ConnectionManager>>,
    /// Held while a connection is being set up, so that a burst of commands after a
    /// failover asks the Sentinels once, not once each.
    opening: tokio::sync::Mutex<()>,
    /// On a Redis Cluster, the client, and its connection once the first command asked for
    /// it (it starts a task, which needs the runtime).
    /// Replaced when a PING fails (see [`Managed::ping`]).
    cluster: Option<(ClusterClient, Mutex<Option<Cluster>>)>,
    /// When a command last asked for the connection: one left idle is PINGed first.
    used: LastUse,
}

impl Managed {
    /// A connection opened on first use, so a node can start while Redis is down.
    pub(crate) fn lazy(config: &RedisConfig, reconnect: Reconnect) -> RedisResult<Self> {
        let fixed = match config.standalone_client() {
            Some(client) => Some(ConnectionManager::new_lazy_with_config(
                client,
                reconnect.config(),
            )?),
            None => None,
        };
        let mut managed = Self::with(config, reconnect, fixed);
        if let Some(seeds) = config.cluster_seeds() {
            managed.cluster = Some((cluster_client(seeds, reconnect)?, Mutex::new(None)));
        }
        Ok(managed)
    }

    /// A connection opened now: fails if Redis cannot be reached.
    pub(crate) async fn now(config: &RedisConfig, reconnect: Reconnect) -> RedisResult<Self> {
        let client = config.client().await?;
        let connection = ConnectionManager::new_with_config(client, reconnect.config()).await?;
        let mut managed = Self::with(config, reconnect, None);
        match config.mode() {
            Mode::Standalone => managed.fixed = Some(connection),
            Mode::Sentinel | Mode::Cluster => managed.current = Mutex::new(Some(connection)),
        }
        Ok(managed)
    }

    fn with(config: &RedisConfig, reconnect: Reconnect, fixed: Option<ConnectionManager>) -> Self {
        Self {
            config: config.clone(),
            reconnect,
            fixed,
            current: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            cluster: None,
            used: LastUse::now(),
        }
    }

    fn current(&self) -> Option<ConnectionManager> {
        self.current.lock().expect("never poisoned").clone()
    }

    /// The connection to send a command on (a cheap clone sharing it). After
    /// [`IDLE_CHECK`](super::idle::IDLE_CHECK) without a command it is PINGed first, so that
    /// a connection Redis or a proxy closed meanwhile is replaced before the command goes out
    /// (see [`super::idle`]); a failed PING is left for the command to report.
    pub(crate) async fn get(&self) -> RedisResult<Connection> {
        if self.used.touch() {
            let _ = self.ping_on(self.connection().await?).await;
        }
        self.connection().await
    }

    async fn connection(&self) -> RedisResult<Connection> {
        if let Some(connection) = &self.fixed {
            return Ok(Connection::Server(connection.clone()));
        }
        if let Some((client, connection)) = &self.cluster {
            // Connects in the background: the first commands wait for the slot map, and
            // fail (then try the seeds again) while no seed answers.
            let mut connection = connection.lock().expect("never poisoned");
            let connection = connection.get_or_insert_with(|| {
                let config = ::redis::cluster::ClusterConfig::new();
                Cluster::new(
                    client.get_pending_async_connection_with_config(config),
                    self.reconnect,
                )
            });
            return Ok(Connection::Cluster(connection.clone()));
        }
        if let Some(connection) = self.current() {
            return Ok(Connection::Server(connection));
        }
        let _opening = self.opening.lock().await;
        if let Some(connection) = self.current() {
            return Ok(Connection::Server(connection));
        }
        let client = self.config.client().await?;
        let connection = ConnectionManager::new_lazy_with_config(client, self.reconnect.config())?;
        *self.current.lock().expect("never poisoned") = Some(connection.clone());
        Ok(Connection::Server(connection))
    }

    /// PINGs the server, or on a cluster every primary. On a cluster a failed PING also
    /// gives up the connection, so that the next command starts from a new slot map: a PING
    /// goes to every primary at once, and such a request failing does not make redis-rs read
    /// the map again, so after a failover it would keep PINGing the dead primary (and a
    /// node without session traffic would stay unready for good).
    pub(crate) async fn ping(&self) -> RedisResult<()> {
        self.used.touch();
        self.ping_on(self.connection().await?).await
    }

    async fn ping_on(&self, mut connection: Connection) -> RedisResult<()> {
        let pinged = ::redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await;
        if let (Err(_), Some((_, current))) = (&pinged, &self.cluster) {
            *current.lock().expect("never poisoned") = None;
        }
        if let Err(e) = &pinged {
            self.failed(e);
        }
        pinged
    }

    /// Whether `error` says that the command did not run: the cluster refused it (`MOVED`,
    /// `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`, `READONLY`) or there was no
    /// connection to send it on. Any other error may come after the command ran.
    pub(crate) fn refused(error: &RedisError) -> bool {
        matches!(
            error.retry_method(),
            RetryMethod::MovedRedirect
                | RetryMethod::AskRedirect
                | RetryMethod::WaitAndRetry
                | RetryMethod::RefreshSlotsAndRetry
                | RetryMethod::ReconnectFromInitialConnections
        )
    }

    /// Tells the connection that a command on it failed with `error`. Under Sentinel, an
    /// error that means the server is gone or is no longer the primary makes the next
    /// command ask the Sentinels again; with one server, `ConnectionManager` reconnects by
    /// itself, and on a cluster the cluster client does.
    pub(crate) fn failed(&self, error: &::redis::RedisError) {
        if self.fixed.is_some() || self.cluster.is_some() {
            return;
        }
        if error.is_unrecoverable_error()
            || error.is_connection_refusal()
            || error.is_connection_dropped()
            || error.is_timeout()
            || is_not_primary(error)
        {
            *self.current.lock().expect("never poisoned") = None;
        }
    }
}

/// The cluster client for `seeds`, with the budget's timeouts and no retries of its own
/// (see the module doc). The first seed's credentials and TLS are every node's.
fn cluster_client(
    seeds: &[::redis::ConnectionInfo],
    reconnect: Reconnect,
) -> RedisResult<ClusterClient> {
    ClusterClientBuilder::new(seeds.to_vec())
        .retries(0)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(reconnect.response_timeout)
        .build()
}

/// What the store and presence send commands on: one server's connection (standalone, or
/// the primary the Sentinels named), or a Redis Cluster's.
#[derive(Clone)]
pub(crate) enum Connection {
    /// One server.
    Server(ConnectionManager),
    /// A Redis Cluster: each command goes to the owner of its key's slot.
    Cluster(Cluster),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Server(connection) => connection.req_packed_command(cmd),
            Self::Cluster(cluster) => Box::pin(cluster.send(cmd)),
        }
    }

    /// Pipelines are sent as they are, never again: some of their commands may have run.
    /// The store and presence send none on a cluster, where a transaction refused midway
    /// comes back as `EXECABORT`, which does not make redis-rs read the slot map again
    /// (`scripts/presence_beat.lua`).
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Server(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(cluster) => cluster
                .connection
                .req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(connection) => connection.get_db(),
            Self::Cluster(cluster) => cluster.connection.get_db(),
        }
    }
}

/// redis-rs' cluster connection, and the resending of commands the cluster refused.
#[derive(Clone)]
pub(crate) struct Cluster {
    connection: ClusterConnection,
    /// How many times a refused command is sent again after a wait.
    retries: usize,
    /// The longest wait before that.
    max_delay: Duration,
}

impl Cluster {
    fn new(connection: ClusterConnection, reconnect: Reconnect) -> Self {
        Self {
            connection,
            retries: reconnect.retries,
            max_delay: reconnect.max_delay.unwrap_or(Duration::from_secs(1)),
        }
    }

    /// Sends `cmd`, and again while the cluster answers that it did not run it (see the
    /// module doc).
    async fn send(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let (mut redirects, mut retries, mut delay) = (0, 0, MIN_DELAY);
        let mut result = self.connection.req_packed_command(cmd).await;
        loop {
            // Errors that need no action from the client come back as values.
            let error = match result {
                Ok(Value::ServerError(error)) => RedisError::from(error),
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if !Managed::refused(&error) {
                return Err(error);
            }
            result = match error.retry_method() {
                RetryMethod::MovedRedirect if redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    self.connection.req_packed_command(cmd).await
                }
                RetryMethod::AskRedirect if redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    self.asking(cmd, &error).await
                }
                RetryMethod::MovedRedirect | RetryMethod::AskRedirect => return Err(error),
                _ if retries < self.retries => {
                    retries += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.max_delay);
                    self.connection.req_packed_command(cmd).await
                }
                _ => return Err(error),
            };
        }
    }

    /// Sends `cmd` to the node an `ASK` reply named, right after `ASKING` on the same
    /// connection; `ask`'s error again if it names no node.
    async fn asking(&mut self, cmd: &Cmd, ask: &RedisError) -> RedisResult<Value> {
        let Some((host, port)) = ask
            .redirect_node()
            .and_then(|(node, _slot)| node.rsplit_once(':'))
            .and_then(|(host, port)| Some((host.to_owned(), port.parse().ok()?)))
        else {
            return Err(ask.clone());
        };
        let mut pipeline = ::redis::pipe();
        pipeline.cmd("ASKING").ignore().add_command(cmd.clone());
        let route = SingleNodeRoutingInfo::ByAddress { host, port };
        let mut values = self
            .connection
            .route_pipeline(pipeline, 1, 1, route)
            .await?;
        values
            .pop()
            .ok_or_else(|| RedisError::from((::redis::ErrorKind::Client, "no reply after ASKING")))
    }
}
