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
//!
//! A join may carry a member limit ([`NodeChange::limit`], a Pusher app's
//! `max_presence_members`): the backend checks it in the same step as the join (one script
//! with Redis), so that joins racing on many nodes never overshoot it, and refuses the join
//! ([`Transition::Refused`]) rather than count it.
//!
//! A member may carry info (JSON text, e.g. a Pusher presence channel's `user_info`): the
//! info given with the user's first connection to the channel cluster-wide, kept until their
//! last connection is gone (or reaped with a dead node), as Pusher does.

mod local;
mod redis;

pub use self::local::LocalPresence;
pub use self::redis::{LIVENESS_TTL, RedisPresence};

use async_trait::async_trait;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

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
    /// What the user's first connection to the channel told about them (a Pusher member's
    /// `user_info`), if anything: any JSON value, left out when there is none. Held here
    /// as JSON text.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_info"
    )]
    #[schema(value_type = Option<serde_json::Value>)]
    pub info: Option<String>,
}

/// A member's info as the JSON it holds (as a JSON string if it holds none, which only a
/// change made without [`info_json`] can give).
fn serialize_info<S: Serializer>(info: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match info {
        Some(info) => raw_info(info).serialize(serializer),
        None => serializer.serialize_none(),
    }
}

/// `info` as raw JSON: itself if it is JSON, else a JSON string of it, so that a frame
/// carrying it is always JSON.
pub(crate) fn raw_info(info: &str) -> Box<RawValue> {
    RawValue::from_string(info.to_owned())
        .unwrap_or_else(|_| serde_json::value::to_raw_value(info).expect("a string serializes"))
}

/// `info` made JSON text: itself if it is JSON, else a JSON string of it (a caller handing
/// over plain text gets it back as text, not lost and not breaking a frame).
pub(crate) fn info_json(info: String) -> String {
    if serde_json::from_str::<&RawValue>(&info).is_ok() {
        info
    } else {
        serde_json::to_string(&info).expect("a string serializes")
    }
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
    /// The user's info (JSON text) on the node, if any, sent with every change that adds
    /// connections: the backend keeps it if the change makes the user join the channel
    /// cluster-wide (a node that was reaped while alive rejoins with it), and drops it when
    /// the user leaves.
    pub info: Option<&'a str>,
    /// Most users the channel may have: a change that would make the user join past it is
    /// refused ([`Transition::Refused`]) and changes nothing, decided atomically with the
    /// join so that joins racing on several nodes never overshoot. A user already on the
    /// channel may always add connections. `None`: no limit.
    pub limit: Option<usize>,
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
    /// The user would have joined, but the channel has its [`NodeChange::limit`] of users
    /// already: the user stays off it, and the node must take its connection back.
    Refused,
}
