//! Presence of a single node.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::{ChannelStats, Member, NodeChange, Presence, Transition};
use crate::error::PresenceError;
use crate::hub::{Hub, Online, Registry};

/// Presence of a single node: the hub's own registry, which is the whole truth, so a
/// change is a join or a leave exactly when it is one on this node. Who is on each channel
/// is kept in the registry too, as the changes answered it: the registry counts a connection
/// as soon as it joins, before a member limit may refuse it.
pub struct LocalPresence {
    registry: Arc<Registry>,
    version: AtomicU64,
}

impl LocalPresence {
    /// The presence of `hub`'s connections.
    pub fn new(hub: &Hub) -> Self {
        Self {
            registry: hub.registry(),
            version: AtomicU64::new(0),
        }
    }

    /// The registry's members of `channel` that were admitted (a refused join's connection
    /// is counted there until it is taken back).
    fn admitted_members(&self, channel: &str) -> Vec<Member> {
        let mut members = self.registry.members(channel);
        let admitted = self.registry.admitted.lock().unwrap();
        let users = admitted.get(channel);
        members.retain(|m| users.is_some_and(|u| u.contains(&m.user)));
        members
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
        Ok(self.registry.online())
    }

    async fn members(&self, channel: &str) -> Result<Vec<Member>, PresenceError> {
        Ok(self.admitted_members(channel))
    }

    async fn stats(&self, channel: &str) -> Result<ChannelStats, PresenceError> {
        let members = self.admitted_members(channel);
        Ok(ChannelStats {
            users: members.len(),
            connections: members.iter().map(|m| m.connections).sum(),
        })
    }

    async fn update(&self, change: &NodeChange<'_>) -> Result<Transition, PresenceError> {
        let version = || self.version.fetch_add(1, Ordering::Relaxed) + 1;
        let mut admitted = self.registry.admitted.lock().unwrap();
        let users = admitted.entry(change.channel.to_owned()).or_default();
        let user = change.user.as_str();
        let on = users.contains(user);
        let transition = if change.now > 0 && !on {
            if change.limit.is_some_and(|limit| users.len() >= limit) {
                Transition::Refused
            } else {
                users.insert(user.to_owned());
                Transition::Joined(version())
            }
        } else if change.now == 0 && on {
            users.remove(user);
            Transition::Left(version())
        } else {
            Transition::Unchanged
        };
        if users.is_empty() {
            admitted.remove(change.channel);
        }
        Ok(transition)
    }
}
