//! Who is online, on this node or across the cluster, and who is on each presence channel.
//!
//! On one node the hub's registry knows ([`LocalPresence`]). With many nodes
//! ([`RedisPresence`]) each node sends Redis what changed (users gained and lost, each
//! user's connections on a presence channel) and refreshes one liveness entry; a node that
//! dies (SIGKILL, power loss) stops refreshing it, and a survivor removes what the dead node
//! held and announces its users' leaves, rather than letting them haunt the counts forever.
//!
//! Channel presence is reported to the backend by the hub ([`crate::hub::Hub::track_presence`]),
//! one change at a time and in order; the backend answers whether the change made the user
//! join or leave the channel cluster-wide, and the hub announces that to the channel's
//! subscribers.

mod local;
mod redis;

pub use self::local::LocalPresence;
pub use self::redis::{LIVENESS_TTL, RedisPresence};

use async_trait::async_trait;
use serde::Serialize;

pub use crate::error::PresenceError;
use crate::hub::Online;
use crate::protocol::UserId;

/// Counts what is connected, on this node or across the cluster, and who is on each
/// presence channel.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Connections and distinct users.
    async fn online(&self) -> Result<Online, PresenceError>;

    /// The users on presence channel `channel`, each with their connections to it, in no
    /// particular order.
    async fn members(&self, channel: &str) -> Result<Vec<Member>, PresenceError>;

    /// How many users and connections are on presence channel `channel`; cheaper than
    /// [`Presence::members`].
    async fn stats(&self, channel: &str) -> Result<ChannelStats, PresenceError>;

    /// A user's connections to a presence channel on one node changed; answers whether that
    /// made the user join or leave the channel cluster-wide. The hub calls it one change at
    /// a time, in the order the changes happened on the node.
    async fn update(&self, change: &NodeChange<'_>) -> Result<Transition, PresenceError>;
}

/// Which channels have presence: those whose name starts with one of the prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceChannels(Vec<String>);

impl PresenceChannels {
    /// Channels starting with any of `prefixes` have presence (an empty prefix: all).
    pub fn new(prefixes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self(prefixes.into_iter().map(Into::into).collect())
    }

    /// Whether `channel` has presence.
    pub fn covers(&self, channel: &str) -> bool {
        self.0
            .iter()
            .any(|prefix| channel.starts_with(prefix.as_str()))
    }

    /// Whether no channel has presence.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One user on a presence channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Member {
    /// The user.
    pub user: String,
    /// The user's connections to the channel, on every node.
    pub connections: usize,
}

/// The size of a presence channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ChannelStats {
    /// Distinct users.
    pub users: usize,
    /// Connections.
    pub connections: usize,
}

/// A change of one user's connections to a presence channel on one node.
#[derive(Debug, Clone, Copy)]
pub struct NodeChange<'a> {
    /// The node.
    pub node: &'a str,
    /// The channel.
    pub channel: &'a str,
    /// The user.
    pub user: &'a UserId,
    /// The user's connections to the channel on the node before the change.
    pub was: usize,
    /// And after it. Absolute, so that a backend may apply a change twice safely.
    pub now: usize,
}

/// What a change did to a channel's presence cluster-wide. A join or leave carries the
/// channel's presence version after it: joins and leaves announced by different nodes may
/// reach a subscriber out of order, and the version tells which came last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The user's first connection to the channel on any node.
    Joined(u64),
    /// The user's last connection to the channel on every node is gone.
    Left(u64),
    /// The user was and stays on the channel (or was and stays off it).
    Unchanged,
}
