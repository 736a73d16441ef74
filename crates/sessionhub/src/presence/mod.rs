//! Who is online, on this node or across the cluster.
//!
//! On one node the hub's registry knows ([`LocalPresence`]). With many nodes
//! ([`RedisPresence`]) each one publishes a snapshot of its own connections to Redis under a
//! key with a TTL and refreshes it while alive, so a node that dies (SIGKILL, power loss)
//! drops out of the count when its key expires rather than haunting it forever.

mod local;
mod redis;

pub use self::local::LocalPresence;
pub use self::redis::{RedisPresence, SNAPSHOT_TTL};

use async_trait::async_trait;

pub use crate::error::PresenceError;
use crate::hub::Online;

/// Counts what is connected, on this node or across the cluster.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Connections and distinct users.
    async fn online(&self) -> Result<Online, PresenceError>;
}
