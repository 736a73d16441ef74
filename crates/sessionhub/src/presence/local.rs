//! Presence of a single node.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::{ChannelStats, Member, NodeChange, Presence, Transition};
use crate::error::PresenceError;
use crate::hub::{Hub, Online, Registry};

/// Presence of a single node: the hub's own registry, which is the whole truth, so a
/// change is a join or a leave exactly when it is one on this node.
pub struct LocalPresence(Arc<Registry>, AtomicU64);

impl LocalPresence {
    /// The presence of `hub`'s connections.
    pub fn new(hub: &Hub) -> Self {
        Self(hub.registry(), AtomicU64::new(0))
    }
}

impl std::fmt::Debug for LocalPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPresence").finish_non_exhaustive()
    }
}

#[async_trait]
impl Presence for LocalPresence {
    async fn online(&self) -> Result<Online, PresenceError> {
        Ok(self.0.online())
    }

    async fn members(&self, channel: &str) -> Result<Vec<Member>, PresenceError> {
        Ok(self.0.members(channel))
    }

    async fn stats(&self, channel: &str) -> Result<ChannelStats, PresenceError> {
        let members = self.0.members(channel);
        Ok(ChannelStats {
            users: members.len(),
            connections: members.iter().map(|m| m.connections).sum(),
        })
    }

    async fn update(&self, change: &NodeChange<'_>) -> Result<Transition, PresenceError> {
        let version = || self.1.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(match (change.was, change.now) {
            (0, 1..) => Transition::Joined(version()),
            (1.., 0) => Transition::Left(version()),
            _ => Transition::Unchanged,
        })
    }
}
