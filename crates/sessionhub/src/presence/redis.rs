//! Presence across every node that shares a Redis.
//!
//! Keys (all in the `{presence}` hash slot, so that one script writes and one MGET reads
//! them on Redis Cluster too; `scripts/presence_*.lua`):
//! - `<prefix>presence:{presence}:nodes`: sorted set of node ids, scored by the time (ms)
//!   their snapshot expires; used to find the live nodes without SCAN.
//! - `<prefix>presence:{presence}:node:<node id>`: JSON `{"online": n, "users": [ids]}`,
//!   with a TTL of [`SNAPSHOT_TTL`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ::redis::{AsyncCommands, ScriptInvocation};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Presence;
use crate::error::PresenceError;
use crate::hub::{Hub, Online};
use crate::redis::{Keys, Managed, Reconnect, RedisConfig, scripts};
use crate::store::now_ms;

/// How long a node's snapshot outlives its last refresh.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(10);
/// How often a node refreshes its snapshot even when nothing changed.
const REFRESH: Duration = Duration::from_secs(3);
/// How often a node checks for changes to publish.
const CHANGE_CHECK: Duration = Duration::from_millis(250);

#[derive(Serialize, Deserialize)]
struct Snapshot {
    online: usize,
    users: Vec<String>,
}

/// Presence across every node that shares a Redis.
pub struct RedisPresence {
    connection: Managed,
    nodes_key: String,
    keys: Keys,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("nodes_key", &self.nodes_key)
            .finish_non_exhaustive()
    }
}

impl RedisPresence {
    /// Sets up presence on `url` (keys under `prefix`); it connects on first use, so a node
    /// can start while Redis is down. Fails only for an invalid URL.
    pub fn new(url: &str, prefix: &str) -> Result<Self, PresenceError> {
        let config = RedisConfig::new(url).map_err(|e| PresenceError::unavailable("redis", e))?;
        Self::lazy(&config.prefix(prefix))
    }

    /// Sets up presence on `config`'s Redis; it connects on first use.
    pub fn lazy(config: &RedisConfig) -> Result<Self, PresenceError> {
        let connection = Managed::lazy(config, Reconnect::PRESENCE).map_err(unavailable)?;
        let keys = config.keys();
        Ok(Self {
            connection,
            nodes_key: keys.presence_nodes(),
            keys: keys.clone(),
        })
    }

    /// A command failed: tell the connection (it may have to find a new primary).
    fn failed(&self, e: ::redis::RedisError) -> PresenceError {
        self.connection.failed(&e);
        unavailable(e)
    }

    /// Publishes `hub`'s snapshot whenever it changes (at most every 250 ms) and at least
    /// every 3 s, until `stop` is cancelled; then withdraws it so the count drops at once.
    /// Await the returned handle after cancelling to know the withdrawal is done.
    pub fn spawn_heartbeat(
        self: Arc<Self>,
        hub: Hub,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut published: Option<(u64, tokio::time::Instant)> = None;
            let mut tick = tokio::time::interval(CHANGE_CHECK);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let generation = hub.generation();
                let due =
                    published.is_none_or(|(g, at)| g != generation || at.elapsed() >= REFRESH);
                if !due {
                    continue;
                }
                match self.publish(&hub).await {
                    Ok(()) => published = Some((generation, tokio::time::Instant::now())),
                    Err(e) => {
                        tracing::warn!(error = %e, "presence snapshot not published; retrying")
                    }
                }
            }
            if let Err(e) = self.withdraw(hub.node_id()).await {
                tracing::warn!(error = %e, "presence snapshot not withdrawn; it expires on its own");
            }
        })
    }

    async fn publish(&self, hub: &Hub) -> Result<(), PresenceError> {
        let online = hub.online();
        let snapshot = Snapshot {
            online: online.online,
            users: hub.users(),
        };
        let json = serde_json::to_string(&snapshot).expect("snapshots serialize");
        let now = now_ms();
        let ttl = SNAPSHOT_TTL.as_millis() as u64;
        let mut invocation = scripts::PRESENCE_PUBLISH.prepare_invoke();
        invocation
            .key(&self.nodes_key)
            .key(self.keys.presence_node(hub.node_id()))
            .arg(hub.node_id())
            .arg(json)
            .arg(ttl)
            .arg(now + ttl)
            .arg(now);
        self.invoke(&invocation).await
    }

    async fn withdraw(&self, node_id: &str) -> Result<(), PresenceError> {
        let mut invocation = scripts::PRESENCE_WITHDRAW.prepare_invoke();
        invocation
            .key(&self.nodes_key)
            .key(self.keys.presence_node(node_id))
            .arg(node_id);
        self.invoke(&invocation).await
    }

    async fn invoke(&self, invocation: &ScriptInvocation<'_>) -> Result<(), PresenceError> {
        let mut connection = self.connection.get().await.map_err(unavailable)?;
        invocation
            .invoke_async::<()>(&mut connection)
            .await
            .map_err(|e| self.failed(e))
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn online(&self) -> Result<Online, PresenceError> {
        let mut connection = self.connection.get().await.map_err(unavailable)?;
        let nodes: Vec<String> = connection
            .zrangebyscore(&self.nodes_key, now_ms(), "+inf")
            .await
            .map_err(|e| self.failed(e))?;
        if nodes.is_empty() {
            return Ok(Online::default());
        }
        let keys: Vec<String> = nodes.iter().map(|n| self.keys.presence_node(n)).collect();
        let snapshots: Vec<Option<String>> =
            connection.mget(&keys).await.map_err(|e| self.failed(e))?;
        let mut online = 0;
        let mut users = HashSet::new();
        for snapshot in snapshots.into_iter().flatten() {
            let Ok(snapshot) = serde_json::from_str::<Snapshot>(&snapshot) else {
                tracing::warn!("skipping an undecodable presence snapshot");
                continue;
            };
            online += snapshot.online;
            users.extend(snapshot.users);
        }
        Ok(Online {
            online,
            users: users.len(),
        })
    }
}

fn unavailable(e: ::redis::RedisError) -> PresenceError {
    PresenceError::unavailable("redis", e)
}
