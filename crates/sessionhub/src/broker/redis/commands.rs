//! A Redis broker's command connection, and when a failed command may be sent again.
//!
//! The command connection cannot notice on its own that Redis went away: it is replaced
//! only after a command has failed on it. The subscriber PINGs it before reporting healthy,
//! and [`run`] sends a command once more on a fresh connection when that cannot do harm
//! (see [`Retry`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{RedisError, RedisResult};
use tokio::time::{Instant, timeout_at};

use crate::error::BrokerError;
use crate::redis::{Mode, RedisConfig, is_not_primary};

/// The whole of one PUBLISH, recover or PING, including waiting for a reconnection in
/// progress and a retry: the caller hears about an outage within this, never later.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(1500);

/// The command connection: opened on first use, replaced after a command failed in a way
/// that means it is dead. Each [`Link`] knows the Redis process it talks to.
#[derive(Clone)]
pub(super) struct Commands {
    redis: RedisConfig,
    current: Arc<Mutex<Option<Link>>>,
    /// Held while a connection is being opened, so that a burst of commands after an
    /// outage opens one connection, not one each.
    opening: Arc<tokio::sync::Mutex<()>>,
    /// Links opened so far: the next one's generation.
    opened: Arc<AtomicU64>,
}

/// One command connection and what it learned when it opened.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) connection: MultiplexedConnection,
    /// The scripts' `run` argument: the `run_id` of the Redis process, or "" when that
    /// Redis keeps every write on disk before answering, so its histories survive
    /// restarts.
    pub(super) bind: Arc<str>,
    /// Tells this link from the one that replaces it.
    generation: u64,
}

impl Commands {
    pub(super) fn new(redis: RedisConfig) -> Self {
        Self {
            redis,
            current: Arc::new(Mutex::new(None)),
            opening: Arc::new(tokio::sync::Mutex::new(())),
            opened: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Drops the current link, whatever state it is in: the subscriber found that its
    /// server is no longer the primary, which a command sent there might not notice (a
    /// replica takes a bare PUBLISH).
    pub(super) fn forget(&self) {
        *self.current.lock().expect("never poisoned") = None;
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
        // A server that refuses writes was demoted by a failover: the next link asks the
        // Sentinels for the primary.
        if !error.is_unrecoverable_error() && !is_not_primary(error) {
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
        let mut connection = self.redis.multiplexed().await?;
        let info: String = ::redis::cmd("INFO")
            .arg("server")
            .query_async(&mut connection)
            .await?;
        let run_id = info
            .lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(str::trim)
            .unwrap_or_default();
        // Under Sentinel a failover may promote a replica that lacks the newest writes,
        // whatever the disks keep (replication is asynchronous): the epoch stays bound to
        // the primary's run_id there, so a failover always starts new epochs.
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
            generation,
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

/// PINGs over the command connection (retried once on a lost connection).
pub(super) async fn ping_commands(commands: &Commands) -> Result<(), BrokerError> {
    let _: String = run(
        commands,
        "PING",
        Retry::OnLostConnection,
        |mut link| async move { ::redis::cmd("PING").query_async(&mut link.connection).await },
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
                    || (error.is_connection_dropped() && !error.is_timeout())
            }
            // A READONLY refusal wrote nothing, and every publish script writes before it
            // publishes (a bare PUBLISH is never refused so: replicas take it).
            Self::IfNeverSent => error.is_connection_refusal() || is_not_primary(error),
        }
    }
}

/// Runs one command on the command connection with the hard bound of [`COMMAND_TIMEOUT`],
/// making one more attempt if `retry` allows it for the first one's error.
pub(super) async fn run<T, F, Fut>(
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
    let failed = |e: RedisError| BrokerError::unavailable(format!("redis {command}"), e);
    let timed_out = || {
        BrokerError::unavailable(
            format!("redis {command}"),
            format!("no reply within {COMMAND_TIMEOUT:?}"),
        )
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
