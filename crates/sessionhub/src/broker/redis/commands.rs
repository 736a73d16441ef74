//! A Redis broker's command connections, and when a failed command may be sent again.
//!
//! One connection to the one Redis (or the primary the Sentinels name); on a Redis
//! Cluster, one to each primary that owns the slot of a channel published to, picked with
//! the broker's slot map ([`Topology`]). A command goes to the owner of its channel's slot
//! ([`Route::Key`]): every key a publish script touches, and the channel it publishes on,
//! share the channel's hash tag.
//!
//! A connection cannot notice on its own that Redis went away: it is replaced only after a
//! command has failed on it. The subscriber PINGs before reporting healthy, and [`run`]
//! sends a command once more on a fresh connection when that cannot do harm (see
//! [`Retry`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{RedisError, RedisResult};
use tokio::time::{Instant, timeout_at};

use crate::error::BrokerError;
use crate::redis::cluster::{Node, Topology, is_redirect, slot};
use crate::redis::idle::LastUse;
use crate::redis::{Mode, RedisConfig, bounded, is_not_primary};

/// The whole of one PUBLISH, recover or PING, including waiting for a reconnection in
/// progress and a retry: the caller hears about an outage within this, never later.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(1500);

/// The command connections: each opened on first use, replaced after a command failed in
/// a way that means it is dead. Each [`Link`] knows the Redis process it talks to.
#[derive(Clone)]
pub(super) struct Commands {
    redis: RedisConfig,
    /// The slot map on a Redis Cluster; `None` for one server.
    topology: Option<Arc<Topology>>,
    /// The live links by server: one server's under `""`, a cluster's by primary.
    links: Arc<Mutex<HashMap<Node, Link>>>,
    /// Held while a connection is being opened, so that a burst of commands after an
    /// outage opens one connection, not one each.
    opening: Arc<tokio::sync::Mutex<()>>,
    /// Links opened so far: the next one's generation.
    opened: Arc<AtomicU64>,
}

/// Where a command goes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Route<'a> {
    /// To the server that owns this key's slot (on one server: that server).
    Key(&'a str),
    /// To this cluster primary.
    Node(&'a Node),
}

/// One command connection and what it learned when it opened.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) connection: MultiplexedConnection,
    /// The scripts' `run` argument: the `run_id` of the Redis process, or "" when that
    /// Redis keeps every write on disk before answering, so its histories survive
    /// restarts.
    pub(super) bind: Arc<str>,
    /// The server, as [`Commands`] files it.
    server: Node,
    /// Tells this link from the one that replaces it.
    generation: u64,
    /// When a command last went out on it: one left idle is PINGed first.
    used: Arc<LastUse>,
}

impl Commands {
    pub(super) fn new(redis: RedisConfig, topology: Option<Arc<Topology>>) -> Self {
        Self {
            redis,
            topology,
            links: Arc::new(Mutex::new(HashMap::new())),
            opening: Arc::new(tokio::sync::Mutex::new(())),
            opened: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Drops every link, whatever state it is in: the subscriber found that its server is
    /// no longer the primary, which a command sent there might not notice (a replica takes
    /// a bare PUBLISH).
    pub(super) fn forget(&self) {
        self.links.lock().expect("never poisoned").clear();
    }

    /// The cluster's primaries as the slot map names them (read again if out of date);
    /// `None` for one server.
    pub(super) async fn primaries(&self) -> Option<RedisResult<Vec<Node>>> {
        let topology = self.topology.as_ref()?;
        Some(topology.current().await.map(|map| map.primaries()))
    }

    /// The server a command on `route` goes to.
    pub(super) async fn server(&self, route: Route<'_>) -> RedisResult<Node> {
        match (&self.topology, route) {
            (None, _) => Ok(Node::from("")),
            (Some(topology), Route::Key(key)) => topology.owner(slot(key)).await,
            (Some(_), Route::Node(node)) => Ok(node.clone()),
        }
    }

    fn current(&self, server: &str) -> Option<Link> {
        self.links
            .lock()
            .expect("never poisoned")
            .get(server)
            .cloned()
    }

    /// The live link to the server of `route`, opening one if there is none. A link left
    /// idle for [`IDLE_CHECK`](crate::redis::idle::IDLE_CHECK) is PINGed first and replaced
    /// if that fails, so that a publish that must not be sent twice does not find out that
    /// Redis closed it meanwhile (see [`crate::redis::idle`]).
    async fn link(&self, route: Route<'_>) -> RedisResult<Link> {
        let server = self.server(route).await?;
        if let Some(link) = self.current(&server) {
            if !link.used.touch() {
                return Ok(link);
            }
            let pinged = ::redis::cmd("PING")
                .query_async::<()>(&mut link.connection.clone())
                .await;
            match pinged {
                Ok(()) => return Ok(link),
                Err(e) => self.failed(&link, &e),
            }
        }
        let _opening = self.opening.lock().await;
        if let Some(link) = self.current(&server) {
            return Ok(link);
        }
        // Counted apart from `links`, which lacks the server after a failure: a late error
        // from the old link must not be taken for one of its replacement.
        let generation = self.opened.fetch_add(1, Ordering::Relaxed);
        let link = match self.open(&server, generation).await {
            Ok(link) => link,
            Err(e) => {
                // The primary may be gone, its slots handed to a replica.
                if let Some(topology) = &self.topology {
                    topology.invalidate();
                }
                return Err(e);
            }
        };
        let mut links = self.links.lock().expect("never poisoned");
        links.insert(server, link.clone());
        Ok(link)
    }

    /// Forgets `link` after `error` if the error means the connection is dead or may be,
    /// and on a cluster the slot map if it means the map is out of date; the next command
    /// opens a new connection, or reads the map again.
    fn failed(&self, link: &Link, error: &RedisError) {
        let dead = error.is_unrecoverable_error()
            || error.is_connection_refusal()
            // A server that refuses writes was demoted by a failover: the next link asks
            // the Sentinels, or the cluster, for the primary.
            || is_not_primary(error)
            // A connection can be gone without saying so (see [`Retry`]); a new one costs a
            // round trip, and a late reply on the old one is not waited for anyway.
            || error.is_timeout();
        if let Some(topology) = &self.topology
            && (dead || is_redirect(error))
        {
            topology.invalidate();
        }
        if !dead {
            return;
        }
        let mut links = self.links.lock().expect("never poisoned");
        if links
            .get(&link.server)
            .is_some_and(|l| l.generation == link.generation)
        {
            links.remove(&link.server);
        }
    }

    async fn open(&self, server: &Node, generation: u64) -> RedisResult<Link> {
        let mut connection = match &self.topology {
            None => self.redis.multiplexed().await?,
            Some(topology) => {
                topology
                    .client(server)?
                    .get_multiplexed_async_connection_with_config(&bounded())
                    .await?
            }
        };
        let info: String = ::redis::cmd("INFO")
            .arg("server")
            .query_async(&mut connection)
            .await?;
        let run_id = info
            .lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(str::trim)
            .unwrap_or_default();
        // Under Sentinel or on a cluster, a failover may promote a replica that lacks the
        // newest writes, whatever the disks keep (replication is asynchronous): the epoch
        // stays bound to the primary's run_id there, so a failover always starts new epochs.
        let durable = self.redis.mode() == Mode::Standalone && durable(&mut connection).await?;
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
            server: server.clone(),
            generation,
            used: Arc::new(LastUse::now()),
        })
    }
}

/// Whether the Redis behind `connection` keeps every write before answering
/// (`appendonly yes`, `appendfsync always`), so that a restart loses nothing.
async fn durable(connection: &mut MultiplexedConnection) -> RedisResult<bool> {
    let mut pipe = ::redis::pipe();
    pipe.cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync");
    // A map over RESP3, pairs in an array over RESP2: both read as a map.
    type Config = HashMap<String, String>;
    match pipe.query_async::<(Config, Config)>(connection).await {
        Ok((appendonly, appendfsync)) => Ok(appendonly.get("appendonly").map(String::as_str)
            == Some("yes")
            && appendfsync.get("appendfsync").map(String::as_str) == Some("always")),
        // Redis answered with an error: CONFIG is refused or renamed (managed services
        // often do that). Not durable is the safe answer.
        Err(e) if e.code().is_some() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sends the pipeline `build` makes for the link (with `ignore_errors`, so that each
/// command answers for itself) in one round trip to the server `route` names, within
/// [`COMMAND_TIMEOUT`]; never sent again.
pub(super) async fn pipeline<T: ::redis::FromRedisValue>(
    commands: &Commands,
    route: Route<'_>,
    build: impl FnOnce(&Link) -> ::redis::Pipeline,
) -> Result<Vec<RedisResult<T>>, BrokerError> {
    let failed = |e: RedisError| BrokerError::unavailable("redis pipeline", e);
    let attempt = async {
        let mut link = commands.link(route).await.map_err(failed)?;
        let answers = build(&link).query_async(&mut link.connection).await;
        if let Err(e) = &answers {
            commands.failed(&link, e);
        }
        answers.map_err(failed)
    };
    timeout_at(Instant::now() + COMMAND_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(BrokerError::unavailable(
                "redis pipeline",
                format!("no reply within {COMMAND_TIMEOUT:?}"),
            ))
        })
}

/// PINGs over the command connection (retried once on a lost connection); on a cluster,
/// every primary, since a publish may go to any of them.
pub(super) async fn ping_commands(commands: &Commands) -> Result<(), BrokerError> {
    let ping = |route| {
        run(
            commands,
            "PING",
            Retry::OnLostConnection,
            route,
            |mut link| async move {
                ::redis::cmd("PING")
                    .query_async::<String>(&mut link.connection)
                    .await
            },
        )
    };
    match commands.primaries().await {
        None => ping(Route::Key("")).await.map(drop),
        Some(Err(e)) => Err(BrokerError::unavailable("redis cluster", e)),
        Some(Ok(primaries)) => {
            futures_util::future::try_join_all(primaries.iter().map(|node| ping(Route::Node(node))))
                .await
                .map(drop)
        }
    }
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
/// window is longer than [`COMMAND_TIMEOUT`]).
///
/// A harmless command is also sent again after its reply timed out, in what is left of
/// [`COMMAND_TIMEOUT`], because a connection can be lost without an error to show for it:
/// - a firewall or NAT that forgets an idle connection drops its packets without a FIN;
/// - a command handed to redis-rs just as its connection task ends on the server's FIN
///   (Redis closed an idle client, `CLIENT KILL`) waits for the reply timeout, not for
///   "broken pipe": the request sits in a tokio channel whose receiver is already gone
///   (tokio-rs/tokio#7714). Measured: 1 to 2 commands in 100 sent right after a
///   `CLIENT KILL`.
///
/// Redis that is merely slow then gets the command twice, which a harmless command allows;
/// a publish without a key is never sent again after a timeout, since it may have run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
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
                    || is_not_primary(error)
                    || is_redirect(error)
                    || error.is_connection_dropped()
                    || error.is_timeout()
            }
            // A READONLY refusal wrote nothing, and every publish script writes before it
            // publishes (a bare PUBLISH is never refused so: replicas take it); a cluster
            // node that does not own the slot runs nothing.
            Self::IfNeverSent => {
                error.is_connection_refusal() || is_not_primary(error) || is_redirect(error)
            }
        }
    }
}

/// Runs one command on the command connection of `route` with the hard bound of
/// [`COMMAND_TIMEOUT`], making one more attempt if `retry` allows it for the first one's
/// error (after a redirect, to the owner the refreshed slot map names).
pub(super) async fn run<T, F, Fut>(
    commands: &Commands,
    command: &str,
    retry: Retry,
    route: Route<'_>,
    attempt: F,
) -> Result<T, BrokerError>
where
    F: Fn(Link) -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let failed = |e: RedisError| BrokerError::unavailable(format!("redis {command}"), e);
    let timed_out = || {
        BrokerError::unavailable(
            format!("redis {command}"),
            format!("no reply within {COMMAND_TIMEOUT:?}"),
        )
    };
    let once = async |retry: Option<Retry>| -> Result<RedisResult<T>, RedisError> {
        let link = commands.link(route).await?;
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
