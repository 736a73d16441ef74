//! Who is online across the cluster.
//!
//! On one node the hub's registry knows. With many nodes each one publishes a snapshot of
//! its own connections to Redis under a key with a TTL and refreshes it while alive, so a
//! node that dies (SIGKILL, power loss) drops out of the count when its key expires rather
//! than haunting it forever.
//!
//! Keys (all in the `{presence}` hash slot, so one MGET reads them on Redis Cluster too):
//! - `<prefix>presence:{presence}:nodes`: sorted set of node ids, scored by the time (ms)
//!   their snapshot expires; used to find the live nodes without SCAN.
//! - `<prefix>presence:{presence}:node:<node id>`: JSON `{"online": n, "users": [ids]}`,
//!   with a TTL of [`SNAPSHOT_TTL`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::error::BrokerError;
use crate::hub::{Hub, Online};
use crate::store::now_ms;

/// How long a node's snapshot outlives its last refresh.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(10);
/// How often a node refreshes its snapshot even when nothing changed.
const REFRESH: Duration = Duration::from_secs(3);
/// How often a node checks for changes to publish.
const CHANGE_CHECK: Duration = Duration::from_millis(250);

/// Counts what is connected, on this node or across the cluster.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Connections and distinct users.
    async fn online(&self) -> Result<Online, BrokerError>;
}

/// Presence of a single node: the hub's own registry.
pub struct LocalPresence(pub Hub);

#[async_trait]
impl Presence for LocalPresence {
    async fn online(&self) -> Result<Online, BrokerError> {
        Ok(self.0.online())
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    online: usize,
    users: Vec<String>,
}

/// Presence across every node that shares a Redis.
pub struct RedisPresence {
    connection: ConnectionManager,
    nodes_key: String,
    node_key_prefix: String,
}

impl RedisPresence {
    /// Sets up presence on `url` (keys under `prefix`); it connects on first use, so a node
    /// can start while Redis is down. Fails only for an invalid URL.
    pub fn new(url: &str, prefix: &str) -> Result<Self, BrokerError> {
        let client = redis::Client::open(url)
            .map_err(|e| BrokerError::Unavailable(format!("invalid redis url: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)));
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
        Ok(Self {
            connection,
            nodes_key: format!("{prefix}presence:{{presence}}:nodes"),
            node_key_prefix: format!("{prefix}presence:{{presence}}:node:"),
        })
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

    async fn publish(&self, hub: &Hub) -> Result<(), BrokerError> {
        let online = hub.online();
        let snapshot = Snapshot {
            online: online.online,
            users: hub.users(),
        };
        let json = serde_json::to_string(&snapshot).expect("snapshots serialize");
        let now = now_ms();
        let ttl = SNAPSHOT_TTL.as_millis() as u64;
        let key = format!("{}{}", self.node_key_prefix, hub.node_id());
        let mut connection = self.connection.clone();
        redis::pipe()
            .atomic()
            .set_options(
                &key,
                json,
                redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(ttl)),
            )
            .ignore()
            .zadd(&self.nodes_key, hub.node_id(), now + ttl)
            .ignore()
            .zrembyscore(&self.nodes_key, "-inf", now)
            .ignore()
            .query_async::<()>(&mut connection)
            .await
            .map_err(unavailable)
    }

    async fn withdraw(&self, node_id: &str) -> Result<(), BrokerError> {
        let key = format!("{}{node_id}", self.node_key_prefix);
        let mut connection = self.connection.clone();
        redis::pipe()
            .atomic()
            .del(&key)
            .ignore()
            .zrem(&self.nodes_key, node_id)
            .ignore()
            .query_async::<()>(&mut connection)
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn online(&self) -> Result<Online, BrokerError> {
        let mut connection = self.connection.clone();
        let nodes: Vec<String> = connection
            .zrangebyscore(&self.nodes_key, now_ms(), "+inf")
            .await
            .map_err(unavailable)?;
        if nodes.is_empty() {
            return Ok(Online::default());
        }
        let keys: Vec<String> = nodes
            .iter()
            .map(|n| format!("{}{n}", self.node_key_prefix))
            .collect();
        let snapshots: Vec<Option<String>> = connection.mget(&keys).await.map_err(unavailable)?;
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

fn unavailable(e: redis::RedisError) -> BrokerError {
    BrokerError::Unavailable(format!("presence: {e}"))
}
